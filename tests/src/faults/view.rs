//! What the nemesis needs to know about the cluster to aim a fault: partition leaders
//! and replicas (from a broker's Metadata answer, through librdkafka) and the active
//! controller and voters (from `keel cluster status`). Black-box: the Kafka protocol
//! and the CLI only.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::checker::queue::TopicPartition;
use crate::cluster::Cluster;

/// Bound on one metadata request.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// One partition as a broker's metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Topic and partition.
    pub tp: TopicPartition,
    /// Leader id, -1 if none.
    pub leader: i64,
    /// Replica ids, preferred first.
    pub replicas: Vec<u64>,
    /// In-sync replica ids.
    pub isr: Vec<u64>,
}

/// A librdkafka metadata client over every broker.
pub struct View {
    client: BaseConsumer,
    topics: Vec<String>,
}

impl View {
    /// A client bootstrapping from `bootstrap` that describes `topics`.
    ///
    /// # Errors
    /// librdkafka refuses the configuration.
    pub fn new(bootstrap: &str, topics: &[String]) -> anyhow::Result<Self> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("reconnect.backoff.max.ms", "1000")
            .set("socket.connection.setup.timeout.ms", "3000")
            .create()
            .context("creating the metadata client")?;
        Ok(View {
            client,
            topics: topics.to_vec(),
        })
    }

    /// Every partition of the workload's topics.
    ///
    /// # Errors
    /// No broker answered.
    pub fn partitions(&self) -> anyhow::Result<Vec<PartitionInfo>> {
        let mut out = Vec::new();
        for topic in &self.topics {
            let md = self
                .client
                .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                .with_context(|| format!("metadata of {topic}"))?;
            for t in md.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    out.push(PartitionInfo {
                        tp: (topic.clone(), p.id()),
                        leader: i64::from(p.leader()),
                        replicas: p.replicas().iter().map(|r| *r as u64).collect(),
                        isr: p.isr().iter().map(|r| *r as u64).collect(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Waits until every partition has a leader and all its replicas in sync;
    /// returns what was last seen if `timeout` passes first.
    ///
    /// # Errors
    /// The partitions as last seen, when not healthy in time.
    pub fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<Vec<PartitionInfo>> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            match self.partitions() {
                Ok(parts)
                    if !parts.is_empty()
                        && parts
                            .iter()
                            .all(|p| p.leader >= 0 && p.isr.len() == p.replicas.len()) =>
                {
                    return Ok(parts);
                }
                Ok(parts) => last = format!("{parts:?}"),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                bail!("partitions not fully in sync after {timeout:?}: {last}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The quorum as `keel cluster status` through node `via` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumView {
    /// The active controller.
    pub leader: Option<u64>,
    /// Current voters.
    pub voters: Vec<u64>,
    /// Whether every member reported the same metadata image.
    pub images_identical: bool,
}

/// Parses `keel cluster status` output.
pub fn parse_status(text: &str) -> QuorumView {
    let mut view = QuorumView::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Controller: ") {
            view.leader = rest.split('\t').next().and_then(|s| s.parse().ok());
        } else if let Some(rest) = line.strip_prefix("Node: ") {
            if line.contains("\tRole: voter") {
                if let Some(id) = rest.split('\t').next().and_then(|s| s.parse().ok()) {
                    view.voters.push(id);
                }
            }
        } else if line == "Images: identical" {
            view.images_identical = true;
        }
    }
    view
}

/// The quorum as the first of `candidates` that answers sees it.
pub fn quorum(cluster: &Cluster, candidates: &[u64]) -> Option<QuorumView> {
    for id in candidates {
        let controller = cluster.controller(*id);
        if let Ok(text) = cluster.cli(&["cluster", "--controller", &controller, "status"]) {
            let view = parse_status(&text);
            if view.leader.is_some() {
                return Some(view);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_output_gives_leader_voters_and_image_agreement() {
        let text = "ClusterId: abc\n\
            Controller: 2\tTerm: 4\tCommitted: 88\tMembershipChanging: false\n\
            Node: 1\tRole: voter\tAddress: 127.0.100.11:9093\tMatched: 88\tLag: 0\tLastContactMs: 3\tApplied: 88\tDigest: 00ff\n\
            Node: 2\tRole: voter\tAddress: 127.0.100.12:9093\tMatched: 88\tLag: 0\tLastContactMs: 0\tApplied: 88\tDigest: 00ff\n\
            Node: 4\tRole: observer\tAddress: 127.0.100.14:9093\tMatched: 88\tLag: 0\tLastContactMs: 1\tApplied: 88\tDigest: 00ff\n\
            Images: identical\n";
        let view = parse_status(text);
        assert_eq!(view.leader, Some(2));
        assert_eq!(view.voters, vec![1, 2]);
        assert!(view.images_identical);
        assert!(!parse_status("Controller: -\tTerm: 1\nImages: DIFFERENT\n").images_identical);
        assert_eq!(parse_status("Controller: -\tTerm: 1\n").leader, None);
    }
}
