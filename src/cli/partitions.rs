//! `keel partitions reassign|list-reassignments|elect-leaders`, over the Kafka protocol.

use anyhow::{bail, Context};
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, BrokerId, ElectLeadersRequest,
    ListPartitionReassignmentsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::client::KafkaClient;
use super::topics::{check, ADMIN_TIMEOUT_MS, CLI_CLIENT_ID};

/// AlterPartitionReassignments version the CLI sends.
const REASSIGN_VERSION: i16 = 0;
/// ListPartitionReassignments version the CLI sends.
const LIST_VERSION: i16 = 0;
/// ElectLeaders version the CLI sends (election types).
const ELECT_VERSION: i16 = 1;

/// One `keel partitions` action.
pub enum PartitionsCommand {
    /// Move a partition to the given brokers (`None`: cancel a reassignment).
    Reassign {
        topic: String,
        partition: i32,
        replicas: Option<Vec<i32>>,
    },
    /// List reassignments in progress.
    ListReassignments,
    /// Elect the preferred (or, unclean, any) leader of a topic's partitions.
    ElectLeaders {
        topic: String,
        partition: Option<i32>,
        unclean: bool,
    },
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Parses a comma-separated broker id list.
///
/// # Errors
/// A list that is empty or holds something other than broker ids.
pub fn parse_replicas(list: &str) -> anyhow::Result<Vec<i32>> {
    let ids: Vec<i32> = list
        .split(',')
        .map(|id| {
            id.trim()
                .parse()
                .with_context(|| format!("--replicas: {id:?} is not a broker id"))
        })
        .collect::<anyhow::Result<_>>()?;
    if ids.is_empty() {
        bail!("--replicas needs at least one broker id");
    }
    Ok(ids)
}

/// Runs one command against `bootstrap`, printing results to stdout.
///
/// # Errors
/// Connection failures and any Kafka error the broker answers, named.
pub async fn run(bootstrap: &str, cmd: PartitionsCommand) -> anyhow::Result<()> {
    let mut client = KafkaClient::connect(bootstrap, CLI_CLIENT_ID).await?;
    match cmd {
        PartitionsCommand::Reassign {
            topic,
            partition,
            replicas,
        } => {
            let cancel = replicas.is_none();
            let req = AlterPartitionReassignmentsRequest::default()
                .with_timeout_ms(ADMIN_TIMEOUT_MS)
                .with_topics(vec![ReassignableTopic::default()
                    .with_name(TopicName(s(&topic)))
                    .with_partitions(vec![ReassignablePartition::default()
                        .with_partition_index(partition)
                        .with_replicas(
                            replicas.map(|r| r.into_iter().map(BrokerId).collect()),
                        )])]);
            let resp = client.call(&req, REASSIGN_VERSION).await?;
            check(resp.error_code, resp.error_message.as_ref(), "reassignment")?;
            for t in &resp.responses {
                for p in &t.partitions {
                    check(
                        p.error_code,
                        p.error_message.as_ref(),
                        &format!("reassigning {topic}-{}", p.partition_index),
                    )?;
                }
            }
            if cancel {
                println!("Cancelled the reassignment of {topic}-{partition}.");
            } else {
                println!("Reassignment of {topic}-{partition} started.");
            }
        }
        PartitionsCommand::ListReassignments => {
            let req = ListPartitionReassignmentsRequest::default()
                .with_timeout_ms(ADMIN_TIMEOUT_MS)
                .with_topics(None);
            let resp = client.call(&req, LIST_VERSION).await?;
            check(
                resp.error_code,
                resp.error_message.as_ref(),
                "listing reassignments",
            )?;
            let ids = |v: &[BrokerId]| {
                v.iter()
                    .map(|b| b.0.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            for t in &resp.topics {
                for p in &t.partitions {
                    println!(
                        "Topic: {}\tPartition: {}\tReplicas: {}\tAdding: {}\tRemoving: {}",
                        t.name.0.as_str(),
                        p.partition_index,
                        ids(&p.replicas),
                        ids(&p.adding_replicas),
                        ids(&p.removing_replicas)
                    );
                }
            }
        }
        PartitionsCommand::ElectLeaders {
            topic,
            partition,
            unclean,
        } => {
            let partitions = match partition {
                Some(p) => vec![p],
                None => super::topics::partition_ids(&mut client, &topic).await?,
            };
            let req = ElectLeadersRequest::default()
                .with_timeout_ms(ADMIN_TIMEOUT_MS)
                .with_election_type(i8::from(unclean))
                .with_topic_partitions(Some(vec![TopicPartitions::default()
                    .with_topic(TopicName(s(&topic)))
                    .with_partitions(partitions)]));
            let resp = client.call(&req, ELECT_VERSION).await?;
            for t in &resp.replica_election_results {
                for p in &t.partition_result {
                    let name = format!("{}-{}", t.topic.0.as_str(), p.partition_id);
                    match check(p.error_code, p.error_message.as_ref(), &name) {
                        Ok(()) => println!("Elected a new leader for {name}."),
                        Err(e) => println!("{e}"),
                    }
                }
            }
        }
    }
    Ok(())
}
