//! The Jepsen-style fault harness behind `keel-faults`: a cluster of real `keel`
//! processes, a queue workload through librdkafka, nemeses on a seeded schedule, the
//! checker over the recorded history, and a report.
//!
//! A run, in order: start the cluster and create the topics; start producers and
//! consumers; after a warm-up, take the schedule's steps until the time limit (each
//! step: fault, hold, heal, wait until every partition acknowledges a write again or
//! the recovery bound passes, quiet); heal everything; stop the producers; read every
//! partition from the beginning to its high watermark; check the history; write
//! `report.txt`, `history.jsonl` and `plot.svg` into the run's directory, beside every
//! node's directory and log.
//!
//! Black-box: the harness knows the Kafka protocol (through librdkafka), the `keel`
//! CLI, process ids and, for the disk faults, the files of a stopped node.

pub mod cleanup;
pub mod disk;
pub mod nemesis;
pub mod net;
pub mod plot;
pub mod queue;
pub mod recorder;
pub mod rng;
pub mod schedule;
pub mod view;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::checker::history::History;
use crate::checker::queue::{check_with, CheckOptions, Report};
use crate::cluster::{Cluster, Role};
use nemesis::Nemesis as Nemeses;
use queue::{ConsumerMode, FinalRead, QueueConfig, Workload};
use recorder::Recorder;
use schedule::{Nemesis, Planner, Shape, Timing};

/// How long the cluster may take to have every partition led and in sync, at the
/// start and before the final read.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the first acknowledgement on every partition may take.
const FIRST_ACKS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the final read may take.
const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(180);
/// How often the history file is flushed and progress printed while waiting.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// The controllers of a split-roles cluster.
const SPLIT_CONTROLLERS: usize = 3;
/// Replication factor of the workload's topics (fewer if fewer brokers).
const REPLICATION_FACTOR: usize = 3;

/// Broker settings of every fault run. Faults must resolve within seconds, so
/// fencing and ISR shrinking are quicker than Kafka's defaults; segments are small so
/// that runs roll segments, and recovery points are written often so that crashes
/// land on both sides of them.
pub const SERVER_SETTINGS: &[&str] = &[
    "broker.session.timeout.ms=6000",
    "broker.heartbeat.interval.ms=500",
    "replica.lag.time.max.ms=5000",
    "min.insync.replicas=2",
    "default.replication.factor=3",
    "auto.create.topics.enable=false",
    "log.segment.bytes=262144",
    "log.flush.offset.checkpoint.interval.ms=5000",
    "leader.imbalance.check.interval.seconds=15",
];

/// Which client workload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// Unique integers through producers and consumers.
    Queue,
    /// Transactions (not available: keel has no transactions yet).
    Txn,
}

/// Which processes run what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Every node is broker and controller voter.
    Combined,
    /// Three controller-only voters plus `nodes` broker-only nodes.
    Split,
}

/// Everything a run is told.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Enabled nemeses (empty: no faults).
    pub nemeses: Vec<Nemesis>,
    /// The workload.
    pub workload: WorkloadKind,
    /// Length of the fault phase, from the start of the workload.
    pub time_limit: Duration,
    /// Seed of the schedule and every random choice.
    pub seed: u64,
    /// Nodes (combined), or brokers (split).
    pub nodes: usize,
    /// Combined or split roles.
    pub topology: Topology,
    /// How consumers get partitions.
    pub consumer_mode: ConsumerMode,
    /// Producer instances.
    pub producers: usize,
    /// Consumer instances.
    pub consumers: usize,
    /// Sends per second over all producers.
    pub rate: f64,
    /// Topics of the workload.
    pub topics: usize,
    /// Partitions per topic.
    pub partitions: i32,
    /// Fault and quiet durations.
    pub timing: Timing,
    /// Every partition must acknowledge a write within this long of every heal.
    pub recovery_bound: Duration,
    /// librdkafka's message.timeout.ms.
    pub message_timeout: Duration,
    /// Time before the first fault.
    pub warmup: Duration,
    /// Address block: nodes listen on 127.0.<block>.<10+id>.
    pub block: u8,
    /// Directory for the report, history, plot and node directories.
    pub out: PathBuf,
    /// Keep node data directories even when the run is clean.
    pub keep_data: bool,
    /// The command line, for the report.
    pub command_line: String,
}

/// What a run found.
pub struct Outcome {
    /// The checker's report.
    pub report: Report,
    /// Anomalies in all: the checker's, nodes that exited on their own, an
    /// incomplete final read.
    pub anomalies: usize,
    /// The text report (its last line states the anomaly count).
    pub text: String,
}

fn roles(options: &RunOptions) -> Vec<Role> {
    match options.topology {
        Topology::Combined => vec![Role::Combined; options.nodes],
        Topology::Split => {
            let mut r = vec![Role::Controller; SPLIT_CONTROLLERS];
            r.extend(std::iter::repeat_n(Role::Broker, options.nodes));
            r
        }
    }
}

fn progress(recorder: &Recorder, what: &str) {
    let c = recorder.counters();
    eprintln!(
        "[{:>6.1} s] {what} (sends {} acked {} failed {} unknown {}, read {})",
        recorder.now_ns() as f64 / 1e9,
        c.sends,
        c.acked,
        c.failed,
        c.unknown,
        c.read
    );
}

/// Sleeps `d`, flushing the history now and then.
fn wait(recorder: &Recorder, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::thread::sleep(FLUSH_INTERVAL.min(until.saturating_duration_since(Instant::now())));
        let _ = recorder.flush();
    }
}

/// Runs one fault run and writes its report; see the module docs.
///
/// # Errors
/// The harness itself failed (the cluster never started, the history cannot be
/// written); anomalies are not errors but the [`Outcome`].
pub fn run(options: &RunOptions) -> anyhow::Result<Outcome> {
    if options.workload == WorkloadKind::Txn {
        bail!(
            "the txn workload is not available: keel does not implement transactions yet \
             (InitProducerId with a transactional id, AddPartitionsToTxn, EndTxn)"
        );
    }
    if options.nodes < REPLICATION_FACTOR {
        bail!(
            "--nodes {}: the queue workload needs at least 3 brokers (RF=3)",
            options.nodes
        );
    }
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let comment = format!("keel-faults-{}", options.block);
    let leftovers = cleanup::install(&comment)?;
    if leftovers > 0 {
        eprintln!("removed {leftovers} iptables rules left by an earlier run ({comment})");
    }

    let mut args: Vec<String> = SERVER_SETTINGS
        .iter()
        .flat_map(|s| ["--set".to_string(), s.to_string()])
        .collect();
    let volatile = options.nemeses.contains(&Nemesis::LoseUnsynced);
    if volatile {
        args.push("--test-volatile-writes".into());
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let roles = roles(options);
    eprintln!(
        "starting {} nodes ({:?}) on 127.0.{}.x in {}",
        roles.len(),
        options.topology,
        options.block,
        options.out.display()
    );
    let cluster_dir = options.out.join("cluster");
    let mut cluster = Cluster::start_in(&cluster_dir, options.block, &roles, &arg_refs)
        .context("starting the cluster")?;
    for (id, node) in &cluster.nodes {
        cleanup::track(*id, node.pid());
    }
    let brokers = cluster.broker_ids();
    let bootstrap = brokers
        .iter()
        .map(|id| cluster.client(*id))
        .collect::<Vec<_>>()
        .join(",");
    let topics: Vec<String> = (0..options.topics).map(|i| format!("queue-{i}")).collect();
    let rf = REPLICATION_FACTOR.min(brokers.len());
    for t in &topics {
        cluster
            .create_topic(brokers[0], t, options.partitions, rf as i16)
            .with_context(|| format!("creating topic {t}"))?;
    }
    let cfg = QueueConfig {
        bootstrap: bootstrap.clone(),
        topics: topics.clone(),
        partitions: options.partitions,
        producers: options.producers,
        consumers: options.consumers,
        consumer_mode: options.consumer_mode,
        sends_per_sec: options.rate,
        max_in_flight_per_partition: 10,
        message_timeout: options.message_timeout,
        seed: options.seed,
    };
    let history_path = options.out.join("history.jsonl");
    let recorder = Arc::new(Recorder::create(&history_path)?);
    let mut nemesis = Nemeses::new(
        &mut cluster,
        Arc::clone(&recorder),
        &bootstrap,
        &topics,
        &comment,
    )?;
    nemesis
        .view()
        .wait_healthy(HEALTHY_TIMEOUT)
        .context("the new cluster's partitions")?;
    queue::check_topics_ready(&cfg)?;

    let tps = cfg.topic_partitions();
    let mut workload = Workload::start(&cfg, Arc::clone(&recorder))?;
    if !recorder.wait_acked_since(&tps, 0, FIRST_ACKS_TIMEOUT) {
        bail!(
            "no acknowledgement on {:?} within {FIRST_ACKS_TIMEOUT:?} of starting the workload",
            recorder.unacked_since(&tps, 0)
        );
    }
    progress(&recorder, "workload running");
    wait(&recorder, options.warmup);

    let shape = Shape {
        nodes: roles.len(),
        split_roles: options.topology == Topology::Split,
    };
    let mut planner = Planner::new(options.seed, &options.nemeses, options.timing, shape);
    let phase_end = recorder.started() + options.time_limit;
    let mut steps = 0usize;
    let mut notes_during_run: Vec<String> = Vec::new();
    while let Some(step) = planner.next_step() {
        if Instant::now() + step.duration >= phase_end {
            break;
        }
        steps += 1;
        progress(
            &recorder,
            &format!(
                "step {steps}: {:?} for {:.1} s",
                step.fault,
                step.duration.as_secs_f64()
            ),
        );
        nemesis.run_step(&step);
        let healed = recorder.now_ns();
        let recovered = recorder.wait_acked_since(&tps, healed, options.recovery_bound);
        nemesis.restart_crashed();
        progress(
            &recorder,
            &if recovered {
                format!(
                    "healed; writable again after {:.1} s",
                    (recorder.now_ns() - healed) as f64 / 1e9
                )
            } else {
                format!(
                    "healed; NOT writable within {:?}: {:?}",
                    options.recovery_bound,
                    recorder.unacked_since(&tps, healed)
                )
            },
        );
        if let Some(w) = workload.failed_worker() {
            notes_during_run.push(w);
            break;
        }
        wait(&recorder, step.quiet);
    }
    let remaining = phase_end.saturating_duration_since(Instant::now());
    wait(&recorder, remaining);

    // The end: heal, let writes resume, stop writing, read everything.
    nemesis.heal_everything();
    let healed = recorder.now_ns();
    let recovered = recorder.wait_acked_since(&tps, healed, options.recovery_bound);
    nemesis.restart_crashed();
    progress(
        &recorder,
        &format!("final heal; writable again: {recovered}; stopping producers"),
    );
    let producer_result = workload.stop_producers();
    let healthy = nemesis
        .view()
        .wait_healthy(HEALTHY_TIMEOUT)
        .map(|_| ())
        .map_err(|e| format!("{e:#}"));
    progress(&recorder, "final read");
    let final_read = workload.final_read(FINAL_READ_TIMEOUT)?;
    let consumer_result = workload.stop_consumers();
    let quorum = nemesis.quorum_summary();
    nemesis.restart_crashed();
    let crashes = std::mem::take(&mut nemesis.crashes);
    let mut notes = std::mem::take(&mut nemesis.notes);
    notes.extend(notes_during_run);
    if let Err(e) = producer_result {
        notes.push(format!("producers: {e:#}"));
    }
    if let Err(e) = consumer_result {
        notes.push(format!("consumers: {e:#}"));
    }

    drop(nemesis);
    recorder.flush()?;
    let client_errors = workload.errors.snapshot();
    drop(workload);

    let text = std::fs::read_to_string(&history_path)
        .with_context(|| format!("reading {}", history_path.display()))?;
    let history = History::parse_jsonl(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = check_with(
        &history,
        &CheckOptions {
            recovery_bound: Some(options.recovery_bound),
        },
    );
    let title = format!(
        "keel-faults --nemesis {} --seed {} ({} nodes, {:?})",
        nemesis_list(&options.nemeses),
        options.seed,
        roles.len(),
        options.topology
    );
    let svg = plot::svg(&history, &report.availability, &title);
    std::fs::write(options.out.join("plot.svg"), svg)?;
    for (id, when, tail) in &crashes {
        std::fs::write(
            options.out.join(format!("crash-node{id}-{when}.log")),
            tail.as_bytes(),
        )?;
    }
    let incomplete = usize::from(!final_read.complete);
    // A replica that never returns to the ISR after every fault healed is a liveness
    // failure of replication, though no client sees it.
    let unsynced = usize::from(healthy.is_err());
    let anomalies = report.anomaly_count() + crashes.len() + incomplete + unsynced;
    let text = render(
        options,
        &report,
        &final_read,
        &crashes,
        &notes,
        &client_errors,
        &quorum,
        &healthy,
        &recorder.started_utc(),
        steps,
        volatile,
        anomalies,
    );
    std::fs::write(options.out.join("report.txt"), &text)?;
    drop(cluster);
    // Data directories are evidence: kept when something looked wrong.
    if anomalies == 0 && notes.is_empty() && !options.keep_data {
        for id in roles.iter().enumerate().map(|(i, _)| i + 1) {
            let _ = std::fs::remove_dir_all(cluster_dir.join(format!("node{id}")).join("data"));
        }
    }
    Ok(Outcome {
        report,
        anomalies,
        text,
    })
}

fn nemesis_list(nemeses: &[Nemesis]) -> String {
    if nemeses.is_empty() {
        return "none".into();
    }
    nemeses
        .iter()
        .map(|n| n.name())
        .collect::<Vec<_>>()
        .join(",")
}

#[allow(clippy::too_many_arguments)]
fn render(
    options: &RunOptions,
    report: &Report,
    final_read: &FinalRead,
    crashes: &[(u64, u64, String)],
    notes: &[String],
    client_errors: &std::collections::BTreeMap<String, u64>,
    quorum: &str,
    healthy: &Result<(), String>,
    started_utc: &str,
    steps: usize,
    volatile: bool,
    anomalies: usize,
) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "keel-faults report");
    let _ = writeln!(t, "command: {}", options.command_line);
    let _ = writeln!(
        t,
        "nemeses: {}; seed {}; {} {} nodes{}; workload queue ({:?} consumers); {} faults in {:.0} s",
        nemesis_list(&options.nemeses),
        options.seed,
        options.nodes,
        match options.topology {
            Topology::Combined => "combined",
            Topology::Split => "broker-only (+3 controllers)",
        },
        if volatile { ", unsynced writes kept in memory (--test-volatile-writes)" } else { "" },
        options.consumer_mode,
        steps,
        options.time_limit.as_secs_f64()
    );
    let _ = writeln!(
        t,
        "workload: {} producers, {} consumers, {:.0} sends/s, {} topics x {} partitions, RF 3, acks=all, idempotence on, min.insync.replicas=2",
        options.producers, options.consumers, options.rate, options.topics, options.partitions
    );
    let _ = writeln!(
        t,
        "files: {}/{{history.jsonl,plot.svg,report.txt,cluster/node*/keel.log}}",
        options.out.display()
    );
    let _ = writeln!(
        t,
        "time 0 of the history: {started_utc} (node logs use the same clock)"
    );
    let _ = writeln!(t, "quorum at the end: {quorum}");
    let _ = writeln!(
        t,
        "final read: {} ({} records)",
        if final_read.complete {
            "every partition read to its high watermark".to_string()
        } else {
            format!(
                "INCOMPLETE: {}",
                final_read.problem.clone().unwrap_or_default()
            )
        },
        final_read.records
    );
    if !client_errors.is_empty() {
        let _ = writeln!(t, "client errors (expected under faults; not anomalies):");
        for (what, n) in client_errors {
            let _ = writeln!(t, "  {n:>7}  {what}");
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(t, "harness notes:");
        for n in notes {
            let _ = writeln!(t, "  {n}");
        }
    }
    let _ = writeln!(
        t,
        "replication after the final heal: {}",
        match healthy {
            Ok(()) => format!("every replica back in the ISR within {HEALTHY_TIMEOUT:?}"),
            Err(e) => format!("NOT HEALED: {e}"),
        }
    );
    let _ = writeln!(t, "nodes that exited on their own: {}", crashes.len());
    for (id, when, tail) in crashes {
        let last = tail.lines().last().unwrap_or_default();
        let _ = writeln!(
            t,
            "  node {id}, found at {:.1} s: {last}",
            *when as f64 / 1e9
        );
    }
    let _ = writeln!(t, "---- checker ----");
    let checker = report.to_string();
    // The checker's own last line counts only its anomalies; the run's total follows.
    for line in checker.lines().filter(|l| !l.starts_with("anomalies: ")) {
        let _ = writeln!(t, "{line}");
    }
    let _ = writeln!(t, "node exited on its own: {}", crashes.len());
    let _ = writeln!(
        t,
        "incomplete final read: {}",
        usize::from(!final_read.complete)
    );
    let _ = writeln!(
        t,
        "replicas not back in sync: {}",
        usize::from(healthy.is_err())
    );
    let _ = writeln!(t, "anomalies: {anomalies}");
    t
}
