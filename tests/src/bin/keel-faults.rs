//! `keel-faults`: the Jepsen-style fault-injection run (see `keel_tests::faults` and
//! docs/TESTING.md). Run from the repository root, as root (iptables):
//!
//! ```text
//! cargo run -p keel-tests --release --bin keel-faults -- \
//!     --nemesis kill,pause,partition --workload queue --time-limit 60
//! keel-faults --check-history /tmp/keel-faults/…/history.jsonl   # re-check a saved run
//! ```
//!
//! The last line printed states the number of anomalies; the exit status is 0 when
//! there are none, 1 when there are, 2 when the harness itself failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use keel_tests::checker::history::History;
use keel_tests::checker::queue::{check_with, CheckOptions};
use keel_tests::faults::queue::ConsumerMode;
use keel_tests::faults::schedule::{Nemesis, Timing};
use keel_tests::faults::{self, RunOptions, Topology, WorkloadKind};

/// Default recovery bound; docs/TESTING.md says why this much.
const DEFAULT_RECOVERY_BOUND_SECS: u64 = 30;

#[derive(Clone, Copy, ValueEnum)]
enum WorkloadArg {
    Queue,
    Txn,
}

#[derive(Clone, Copy, ValueEnum)]
enum TopologyArg {
    Combined,
    Split,
}

#[derive(Clone, Copy, ValueEnum)]
enum ConsumersArg {
    Assign,
    Group,
    Both,
}

#[derive(Parser)]
#[command(
    name = "keel-faults",
    about = "Jepsen-style fault injection against a real keel cluster, with a checker and a report"
)]
struct Cli {
    /// Faults, comma-separated: kill, pause, partition, lose-unsynced, corrupt, voters,
    /// reassign; or disk (lose-unsynced,corrupt), membership (voters,reassign), all, none.
    #[arg(long, default_value = "kill,pause,partition")]
    nemesis: String,
    /// The client workload (txn is not available yet).
    #[arg(long, value_enum, default_value = "queue")]
    workload: WorkloadArg,
    /// Seconds of faults, from the start of the workload.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Seed of the schedule and every random choice (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes of a combined cluster, or brokers of a split one (3 controllers more).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// combined: every node is broker and controller; split: controller-only and
    /// broker-only processes.
    #[arg(long, value_enum, default_value = "combined")]
    topology: TopologyArg,
    /// assign: consumers assign partitions themselves and rewind now and then; group:
    /// they subscribe as one consumer group, commit, and leave and rejoin now and then;
    /// both: every other consumer (the first, third, ...) is a group member.
    #[arg(long, value_enum, default_value = "both")]
    consumers: ConsumersArg,
    /// Producer instances.
    #[arg(long, default_value_t = 3)]
    producers: usize,
    /// Consumer instances.
    #[arg(long, default_value_t = 3)]
    readers: usize,
    /// Sends per second over all producers.
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
    /// Topics.
    #[arg(long, default_value_t = 2)]
    topics: usize,
    /// Partitions per topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Shortest and longest fault, seconds.
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [4, 10])]
    fault_secs: Vec<u64>,
    /// Shortest and longest pause between faults (after recovery), seconds.
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [3, 6])]
    quiet_secs: Vec<u64>,
    /// Every partition must acknowledge a write within this many seconds of every heal.
    #[arg(long, default_value_t = DEFAULT_RECOVERY_BOUND_SECS)]
    recovery_bound: u64,
    /// librdkafka's message.timeout.ms, in seconds. Large, as librdkafka recommends:
    /// when queued messages time out, the idempotent producer bumps its epoch and
    /// resends what it had not seen acknowledged under new sequence numbers, which
    /// the broker cannot recognise as retries (duplicates when the first attempt was
    /// written; see librdkafka's INTRODUCTION.md, "Message timeout considerations").
    #[arg(long, default_value_t = 60)]
    message_timeout: u64,
    /// Seconds of workload before the first fault.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Address block: nodes listen on 127.0.<block>.<10+id>.
    #[arg(long, default_value_t = 100)]
    block: u8,
    /// Directory for the report, history, plot and nodes (default:
    /// /tmp/keel-faults/<nemeses>-seed<seed>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the nodes' data directories even when no anomaly was found.
    #[arg(long)]
    keep_data: bool,
    /// Only check a saved history file and print the checker's report.
    #[arg(long, value_name = "HISTORY.jsonl")]
    check_history: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEEL_FAULTS_LOG")
                // librdkafka's own log lines (through the rdkafka crate) report every
                // broker going away, which faults do all the time; they are off unless asked.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,rdkafka=off,librdkafka=off")
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(anomalies) => {
            if anomalies == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("keel-faults: {e:#}");
            println!("anomalies: unknown (the harness failed: {e})");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<usize> {
    let bound = Duration::from_secs(cli.recovery_bound);
    if let Some(path) = &cli.check_history {
        let text = std::fs::read_to_string(path)?;
        let history = History::parse_jsonl(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let report = check_with(
            &history,
            &CheckOptions {
                recovery_bound: Some(bound),
            },
        );
        println!("{report}");
        return Ok(report.anomaly_count());
    }
    let nemeses = Nemesis::parse_list(&cli.nemesis).map_err(anyhow::Error::msg)?;
    let seed = cli.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let names = if nemeses.is_empty() {
        "none".to_string()
    } else {
        nemeses
            .iter()
            .map(|n| n.name())
            .collect::<Vec<_>>()
            .join(",")
    };
    let out = cli.out.clone().unwrap_or_else(|| {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from("/tmp/keel-faults").join(format!("{names}-seed{seed}-{stamp}"))
    });
    let secs = |v: &[u64]| {
        (
            Duration::from_secs(v[0]),
            Duration::from_secs(v[1].max(v[0])),
        )
    };
    let (fault_min, fault_max) = secs(&cli.fault_secs);
    let (quiet_min, quiet_max) = secs(&cli.quiet_secs);
    let options = RunOptions {
        nemeses,
        workload: match cli.workload {
            WorkloadArg::Queue => WorkloadKind::Queue,
            WorkloadArg::Txn => WorkloadKind::Txn,
        },
        time_limit: Duration::from_secs(cli.time_limit),
        seed,
        nodes: cli.nodes,
        topology: match cli.topology {
            TopologyArg::Combined => Topology::Combined,
            TopologyArg::Split => Topology::Split,
        },
        consumer_mode: match cli.consumers {
            ConsumersArg::Assign => ConsumerMode::Assign,
            ConsumersArg::Group => ConsumerMode::Group,
            ConsumersArg::Both => ConsumerMode::Both,
        },
        producers: cli.producers.max(1),
        consumers: cli.readers,
        rate: cli.rate,
        topics: cli.topics.max(1),
        partitions: cli.partitions.max(1),
        timing: Timing {
            fault_min,
            fault_max,
            quiet_min,
            quiet_max,
        },
        recovery_bound: bound,
        message_timeout: Duration::from_secs(cli.message_timeout),
        warmup: Duration::from_secs(cli.warmup),
        block: cli.block,
        out,
        keep_data: cli.keep_data,
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
    };
    eprintln!(
        "keel-faults: nemeses {names}, seed {seed}, output in {}",
        options.out.display()
    );
    let outcome = faults::run(&options)?;
    print!("{}", outcome.text);
    Ok(outcome.anomalies)
}
