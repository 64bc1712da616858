//! `keel cluster status|add-voter|remove-voter`: the metadata quorum as operators see it.
//!
//! `status` asks one controller listener for the quorum's view (leader, term, voters
//! with their lag), then asks every member for its own applied index and image
//! digest, so a glance shows whether all nodes hold the same metadata; with
//! `--bootstrap-server` it also lists the registered brokers and whether each is fenced.

use std::time::Duration;

use anyhow::bail;
use kafka_protocol::messages::DescribeClusterRequest;
use keel_raft::quorum::{MemberRole, MetadataQuorum, QuorumStatus};

use super::client::KafkaClient;
use super::topics::CLI_CLIENT_ID;

/// How long the CLI waits for the status of the node it was pointed at.
pub const CLUSTER_CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it waits for each other member's own status: a frozen or partitioned node
/// must not stall the report.
pub const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a voter change may take (the new voter must catch up first).
pub const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

/// One `keel cluster` action.
pub enum ClusterCommand {
    /// Print the quorum, each member's digest, and the brokers.
    Status {
        controller: String,
        bootstrap: Option<String>,
    },
    /// Add a controller voter.
    AddVoter {
        controller: String,
        node_id: u64,
        node_address: String,
    },
    /// Remove a controller voter.
    RemoveVoter { controller: String, node_id: u64 },
}

fn fmt_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string())
}

/// Runs one command, printing to stdout.
///
/// # Errors
/// Unreachable nodes, refused membership changes.
pub async fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status {
            controller,
            bootstrap,
        } => status(&controller, bootstrap.as_deref()).await,
        ClusterCommand::AddVoter {
            controller,
            node_id,
            node_address,
        } => {
            MetadataQuorum::remote_add_voter(
                &controller,
                node_id,
                &node_address,
                MEMBERSHIP_CHANGE_TIMEOUT,
            )
            .await?;
            println!("Node {node_id} ({node_address}) is now a controller voter.");
            Ok(())
        }
        ClusterCommand::RemoveVoter {
            controller,
            node_id,
        } => {
            MetadataQuorum::remote_remove_voter(&controller, node_id, MEMBERSHIP_CHANGE_TIMEOUT)
                .await?;
            println!("Node {node_id} is no longer a controller voter.");
            Ok(())
        }
    }
}

async fn status(controller: &str, bootstrap: Option<&str>) -> anyhow::Result<()> {
    let first = MetadataQuorum::remote_status(controller, CLUSTER_CLI_TIMEOUT).await?;
    // The leader knows every member's lag; ask it when the first node is not it.
    let leader_view: QuorumStatus = match first.leader_id.filter(|l| *l != first.node_id) {
        Some(leader) => {
            let addr = first.voters.get(&leader).cloned().unwrap_or_default();
            match MetadataQuorum::remote_status(&addr, MEMBER_STATUS_TIMEOUT).await {
                Ok(s) => s,
                Err(_) => first.clone(),
            }
        }
        None => first.clone(),
    };
    println!("ClusterId: {}", fmt_opt(leader_view.cluster_id.as_deref()));
    println!(
        "Controller: {}\tTerm: {}\tCommitted: {}\tMembershipChanging: {}",
        fmt_opt(leader_view.leader_id),
        leader_view.current_term,
        fmt_opt(leader_view.committed_index),
        leader_view.membership_changing
    );
    // Every member's own view, asked concurrently.
    let views = futures::future::join_all(leader_view.members.iter().map(|m| {
        let addr = m.addr.clone();
        let own = (m.node_id == leader_view.node_id).then(|| leader_view.clone());
        async move {
            match own {
                Some(v) => Ok(v),
                None => MetadataQuorum::remote_status(&addr, MEMBER_STATUS_TIMEOUT).await,
            }
        }
    }))
    .await;
    let mut digests = Vec::new();
    for (member, own) in leader_view.members.iter().zip(views) {
        let role = match member.role {
            MemberRole::Voter => "voter",
            MemberRole::Observer => "observer",
        };
        let (applied, digest) = match &own {
            Ok(s) => {
                digests.push(s.image_digest);
                (
                    s.last_applied_index.to_string(),
                    format!("{:016x}", s.image_digest),
                )
            }
            Err(e) => ("-".to_string(), format!("unreachable ({e})")),
        };
        println!(
            "Node: {}\tRole: {role}\tAddress: {}\tMatched: {}\tLag: {}\tLastContactMs: {}\tApplied: {applied}\tDigest: {digest}",
            member.node_id,
            member.addr,
            fmt_opt(member.matched_index),
            fmt_opt(member.lag),
            fmt_opt(member.last_contact_ms),
        );
    }
    let identical = !digests.is_empty() && digests.iter().all(|d| *d == digests[0]);
    println!(
        "Images: {}",
        if digests.len() < leader_view.members.len() {
            "some nodes unreachable"
        } else if identical {
            "identical"
        } else {
            "DIFFERENT"
        }
    );
    if let Some(bootstrap) = bootstrap {
        let mut client = KafkaClient::connect(bootstrap, CLI_CLIENT_ID).await?;
        let resp = client
            .call(
                &DescribeClusterRequest::default().with_include_fenced_brokers(true),
                2,
            )
            .await?;
        if resp.error_code != 0 {
            bail!("DescribeCluster failed with error code {}", resp.error_code);
        }
        for b in resp.brokers {
            println!(
                "Broker: {}\tAddress: {}:{}\tRack: {}\tState: {}",
                b.broker_id.0,
                b.host.as_str(),
                b.port,
                b.rack.as_ref().map(|r| r.as_str()).unwrap_or("-"),
                if b.is_fenced { "fenced" } else { "unfenced" }
            );
        }
    }
    Ok(())
}
