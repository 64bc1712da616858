//! keel-metadata-bench: how fast a committed metadata change reaches every broker.
//!
//! Starts a cluster of real `keel` processes on loopback (3 combined voters and, by
//! default, 2 broker-only observers), then repeatedly creates a topic through one broker
//! while a poller per broker asks its own broker for that topic's metadata in a tight
//! loop. For each change it reports the time from sending CreateTopics to the answer
//! (the change is committed and applied on the answering broker) and to the moment
//! every broker shows it. Percentiles over all iterations are printed at the end.
//!
//! `cargo run --release -p keel-tests --bin keel-metadata-bench -- [--iterations N] [--observers N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{CreateTopicsRequest, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use keel::cli::client::KafkaClient;
use keel_tests::cluster::{Cluster, Role};

/// Address block of the benchmark cluster (127.0.<block>.x).
const BENCH_BLOCK: u8 = 60;
const DEFAULT_ITERATIONS: usize = 200;
const DEFAULT_OBSERVERS: usize = 2;
/// Give up on one change after this long.
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(10);

fn arg(args: &[String], flag: &str, default: usize) -> anyhow::Result<usize> {
    match args.iter().position(|a| a == flag) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .context(format!("{flag} needs a value"))?
            .parse()
            .context(format!("{flag} needs a number")),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<34} n={:<5} p50={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
    );
}

async fn visible(client: &mut KafkaClient, topic: &str) -> anyhow::Result<bool> {
    let req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]))
        .with_allow_auto_topic_creation(false);
    let resp = client.call(&req, 12).await?;
    Ok(resp
        .topics
        .first()
        .is_some_and(|t| t.error_code == 0 && !t.partitions.is_empty()))
}

async fn run(
    iterations: usize,
    brokers: Vec<String>,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut admin = KafkaClient::connect(&brokers[0], "metadata-bench").await?;
    let mut pollers = Vec::new();
    for b in &brokers {
        pollers.push(Arc::new(tokio::sync::Mutex::new(
            KafkaClient::connect(b, "metadata-bench-poll").await?,
        )));
    }
    let (mut acked, mut everywhere) = (Vec::new(), Vec::new());
    for i in 0..iterations {
        let topic = format!("propagation-{i}");
        let start = Instant::now();
        let watchers: Vec<_> = pollers
            .iter()
            .map(|p| {
                let p = p.clone();
                let topic = topic.clone();
                tokio::spawn(async move {
                    let mut client = p.lock().await;
                    while start.elapsed() < VISIBILITY_TIMEOUT {
                        if visible(&mut client, &topic).await? {
                            return Ok(start.elapsed());
                        }
                    }
                    bail!("{topic} not visible after {VISIBILITY_TIMEOUT:?}")
                })
            })
            .collect();
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.clone())))
                .with_num_partitions(1)
                .with_replication_factor(1)]);
        let resp = admin.call(&req, 7).await?;
        acked.push(start.elapsed());
        if resp.topics.iter().any(|t| t.error_code != 0) {
            bail!("creating {topic} failed: {:?}", resp.topics);
        }
        let mut slowest = Duration::ZERO;
        for w in watchers {
            slowest = slowest.max(w.await??);
        }
        everywhere.push(slowest);
    }
    Ok((acked, everywhere))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let iterations = arg(&args, "--iterations", DEFAULT_ITERATIONS)?;
    let observers = arg(&args, "--observers", DEFAULT_OBSERVERS)?;
    let mut roles = vec![Role::Combined; 3];
    roles.extend(std::iter::repeat_n(Role::Broker, observers));
    eprintln!(
        "starting {} nodes (3 voters, {observers} broker-only observers)",
        roles.len()
    );
    let cluster = Cluster::start(BENCH_BLOCK, &roles, &[])?;
    let brokers: Vec<String> = cluster
        .broker_ids()
        .into_iter()
        .map(|id| cluster.client(id))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (acked, everywhere) = runtime.block_on(run(iterations, brokers.clone()))?;
    println!(
        "metadata propagation on {} brokers, {iterations} topic creations:",
        brokers.len()
    );
    report("CreateTopics answered", acked);
    report("visible on every broker", everywhere);
    Ok(())
}
