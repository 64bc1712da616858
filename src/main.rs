//! The `keel` command: `keel server` runs a node; `keel topics …` administers one.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use keel::cli::cluster::{self, ClusterCommand};
use keel::cli::groups::{self, GroupsCommand, ResetTo};
use keel::cli::partitions::{self, PartitionsCommand};
use keel::cli::topics::{self, TopicsCommand};
use keel::config::{BrokerConfig, DEFAULT_DATA_DIR, DEFAULT_LISTEN_ADDR};

/// Environment variable holding the log filter (tracing's EnvFilter syntax).
const LOG_ENV: &str = "KEEL_LOG";

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "A Kafka-compatible streaming broker with a Raft metadata quorum"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (by default one combined broker + controller, data in ./data,
    /// clients on 127.0.0.1:9092).
    Server(ServerArgs),
    /// Create, list, describe, delete and alter topics of a running cluster.
    Topics(TopicsArgs),
    /// Inspect the metadata quorum and change its voters.
    Cluster(ClusterArgs),
    /// Move partition replicas between brokers and elect leaders.
    Partitions(PartitionsArgs),
    /// List, describe and delete consumer groups; reset their offsets.
    Groups(GroupsArgs),
}

#[derive(Args)]
struct GroupsArgs {
    /// A broker of the cluster.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_LISTEN_ADDR, global = true)]
    bootstrap_server: String,
    #[command(subcommand)]
    action: GroupsAction,
}

#[derive(Subcommand)]
enum GroupsAction {
    /// List every group with its state.
    List,
    /// Show a group's state, members, and per partition its offset, log end and lag.
    Describe {
        #[arg(long)]
        group: String,
    },
    /// Delete an empty group and its committed offsets.
    Delete {
        #[arg(long)]
        group: String,
    },
    /// Move an inactive group's committed offsets (prints the plan; --execute commits it).
    ResetOffsets {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
        /// Partitions, comma-separated (all of the topic's by default).
        #[arg(long, value_name = "P,P,…")]
        partitions: Option<String>,
        /// To each partition's first offset.
        #[arg(long, group = "target")]
        to_earliest: bool,
        /// To each partition's log end.
        #[arg(long, group = "target")]
        to_latest: bool,
        /// To this offset (clamped into the log).
        #[arg(long, group = "target", value_name = "OFFSET")]
        to_offset: Option<i64>,
        /// By this many records from the committed offset (negative: back).
        #[arg(long, group = "target", value_name = "N", allow_hyphen_values = true)]
        shift_by: Option<i64>,
        /// Commit the offsets (without it, only print them).
        #[arg(long)]
        execute: bool,
    },
}

#[derive(Args)]
struct PartitionsArgs {
    /// A broker of the cluster.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_LISTEN_ADDR, global = true)]
    bootstrap_server: String,
    #[command(subcommand)]
    action: PartitionsAction,
}

#[derive(Subcommand)]
enum PartitionsAction {
    /// Move a partition's replicas to the given brokers (the first becomes the
    /// preferred leader) while it keeps serving; or cancel a move with --cancel.
    Reassign {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        /// The target brokers, comma-separated.
        #[arg(long, value_name = "ID,ID,…", required_unless_present = "cancel")]
        replicas: Option<String>,
        /// Cancel the reassignment in progress.
        #[arg(long, conflicts_with = "replicas")]
        cancel: bool,
    },
    /// List reassignments in progress.
    ListReassignments,
    /// Move leadership to the preferred replica (or, with --unclean, elect any live
    /// replica of a leaderless partition, which may lose acknowledged records).
    ElectLeaders {
        #[arg(long)]
        topic: String,
        /// One partition (all of the topic's by default).
        #[arg(long)]
        partition: Option<i32>,
        #[arg(long)]
        unclean: bool,
    },
}

#[derive(Args)]
struct ClusterArgs {
    /// The controller listener of any node of the cluster.
    #[arg(long, value_name = "HOST:PORT", global = true)]
    controller: Option<String>,
    #[command(subcommand)]
    action: ClusterAction,
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Print the controller leader, term, voters with their lag, every node's metadata
    /// digest and, with --bootstrap-server, the brokers and whether they are fenced.
    Status {
        /// A broker's client address, to list registered brokers.
        #[arg(long, value_name = "HOST:PORT")]
        bootstrap_server: Option<String>,
    },
    /// Add a controller voter (the node must be running, as an observer or a voter-to-be).
    AddVoter {
        #[arg(long)]
        node_id: u64,
        /// The new voter's controller listener.
        #[arg(long, value_name = "HOST:PORT")]
        node_address: String,
    },
    /// Remove a controller voter.
    RemoveVoter {
        #[arg(long)]
        node_id: u64,
    },
}

#[derive(Args)]
struct ServerArgs {
    /// Directory holding this node's logs and metadata.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Address to accept Kafka clients on.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_LISTEN_ADDR)]
    listen: String,
    /// Address clients are told to connect to (default: the listen address).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// TOML file of broker configs under their Kafka names.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A broker or topic-default config under its Kafka name; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// This node's id (also settable as node.id).
    #[arg(long, value_name = "N")]
    node_id: Option<i32>,
    /// What this node runs: broker, controller, or broker,controller (process.roles).
    #[arg(long, value_name = "ROLES")]
    roles: Option<String>,
    /// Address this node binds for controller and metadata traffic (controller.listener).
    #[arg(long, value_name = "IP:PORT")]
    controller_listen: Option<String>,
    /// The controller voters, id@host:port,… (controller.quorum.voters).
    #[arg(long, value_name = "ID@HOST:PORT,…")]
    controller_quorum_voters: Option<String>,
    /// Test only: keep partition log writes in memory until fsynced, so that SIGKILL
    /// loses exactly the unsynced bytes, as a power loss would (the fault harness).
    #[arg(long, hide = true)]
    test_volatile_writes: bool,
}

#[derive(Args)]
struct TopicsArgs {
    /// A broker of the cluster.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_LISTEN_ADDR, global = true)]
    bootstrap_server: String,
    #[command(subcommand)]
    action: TopicsAction,
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create a topic.
    Create {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partitions: Option<i32>,
        #[arg(long)]
        replication_factor: Option<i16>,
        /// A topic config KEY=VALUE; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topic names.
    List,
    /// Describe a topic's partitions and config overrides (all topics without --topic).
    Describe {
        #[arg(long)]
        topic: Option<String>,
    },
    /// Delete a topic.
    Delete {
        #[arg(long)]
        topic: String,
    },
    /// Add partitions or change configs.
    Alter {
        #[arg(long)]
        topic: String,
        /// New total partition count.
        #[arg(long)]
        partitions: Option<i32>,
        /// A topic config to set, KEY=VALUE; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// A topic config override to remove; repeatable.
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_configs: Vec<String>,
    },
}

fn parse_addr(flag: &str, text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("{flag} {text}: {e} (expected HOST:PORT)"))?
        .next()
        .ok_or_else(|| format!("{flag} {text}: resolves to no address"))
}

fn parse_advertise(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("--advertise {text}: expected HOST:PORT"))?;
    let port = port
        .parse()
        .map_err(|_| format!("--advertise {text}: `{port}` is not a port"))?;
    if host.is_empty() {
        return Err(format!("--advertise {text}: empty host"));
    }
    Ok((
        host.trim_matches(|c| c == '[' || c == ']').to_string(),
        port,
    ))
}

fn reset_target(
    earliest: bool,
    latest: bool,
    offset: Option<i64>,
    shift: Option<i64>,
) -> anyhow::Result<ResetTo> {
    match (earliest, latest, offset, shift) {
        (true, _, _, _) => Ok(ResetTo::Earliest),
        (_, true, _, _) => Ok(ResetTo::Latest),
        (_, _, Some(o), _) => Ok(ResetTo::Offset(o)),
        (_, _, _, Some(d)) => Ok(ResetTo::ShiftBy(d)),
        _ => Err(anyhow::Error::msg(
            "reset-offsets needs one of --to-earliest, --to-latest, --to-offset N, --shift-by N",
        )),
    }
}

fn parse_partitions(list: &str) -> anyhow::Result<Vec<i32>> {
    list.split(',')
        .map(|p| {
            p.trim().parse::<i32>().map_err(|_| {
                anyhow::Error::msg(format!("--partitions: {p:?} is not a partition number"))
            })
        })
        .collect()
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn server_config(args: ServerArgs) -> Result<BrokerConfig, String> {
    let listen = parse_addr("--listen", &args.listen)?;
    let advertise = args.advertise.as_deref().map(parse_advertise).transpose()?;
    let mut sets = args.sets;
    // Flags are shorthands for config keys and win over the file and --set.
    if let Some(id) = args.node_id {
        sets.push(format!("node.id={id}"));
    }
    if let Some(roles) = args.roles {
        sets.push(format!("process.roles={roles}"));
    }
    if let Some(addr) = args.controller_listen {
        sets.push(format!("controller.listener={addr}"));
    }
    if let Some(voters) = args.controller_quorum_voters {
        sets.push(format!("controller.quorum.voters={voters}"));
    }
    let mut config = BrokerConfig::build(
        args.config.as_deref(),
        &sets,
        args.data_dir,
        listen,
        advertise,
    )
    .map_err(|e| e.to_string())?;
    config.test_volatile_writes = args.test_volatile_writes;
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Server(args) => match server_config(args) {
            Ok(config) => runtime.block_on(keel::server::run(config)),
            Err(e) => Err(anyhow::Error::msg(e)),
        },
        Command::Topics(args) => {
            let cmd = match args.action {
                TopicsAction::Create {
                    topic,
                    partitions,
                    replication_factor,
                    configs,
                } => TopicsCommand::Create {
                    topic,
                    partitions,
                    replication_factor,
                    configs,
                },
                TopicsAction::List => TopicsCommand::List,
                TopicsAction::Describe { topic } => TopicsCommand::Describe { topic },
                TopicsAction::Delete { topic } => TopicsCommand::Delete { topic },
                TopicsAction::Alter {
                    topic,
                    partitions,
                    configs,
                    delete_configs,
                } => TopicsCommand::Alter {
                    topic,
                    partitions,
                    configs,
                    delete_configs,
                },
            };
            runtime.block_on(topics::run(&args.bootstrap_server, cmd))
        }
        Command::Partitions(args) => {
            let cmd = match args.action {
                PartitionsAction::Reassign {
                    topic,
                    partition,
                    replicas,
                    cancel: _,
                } => match replicas
                    .as_deref()
                    .map(partitions::parse_replicas)
                    .transpose()
                {
                    Ok(replicas) => Ok(PartitionsCommand::Reassign {
                        topic,
                        partition,
                        replicas,
                    }),
                    Err(e) => Err(e),
                },
                PartitionsAction::ListReassignments => Ok(PartitionsCommand::ListReassignments),
                PartitionsAction::ElectLeaders {
                    topic,
                    partition,
                    unclean,
                } => Ok(PartitionsCommand::ElectLeaders {
                    topic,
                    partition,
                    unclean,
                }),
            };
            cmd.and_then(|cmd| runtime.block_on(partitions::run(&args.bootstrap_server, cmd)))
        }
        Command::Groups(args) => {
            let cmd = match args.action {
                GroupsAction::List => Ok(GroupsCommand::List),
                GroupsAction::Describe { group } => Ok(GroupsCommand::Describe { group }),
                GroupsAction::Delete { group } => Ok(GroupsCommand::Delete { group }),
                GroupsAction::ResetOffsets {
                    group,
                    topic,
                    partitions,
                    to_earliest,
                    to_latest,
                    to_offset,
                    shift_by,
                    execute,
                } => reset_target(to_earliest, to_latest, to_offset, shift_by).and_then(|to| {
                    let partitions = partitions.as_deref().map(parse_partitions).transpose()?;
                    Ok(GroupsCommand::ResetOffsets {
                        group,
                        topic,
                        partitions,
                        to,
                        execute,
                    })
                }),
            };
            cmd.and_then(|cmd| runtime.block_on(groups::run(&args.bootstrap_server, cmd)))
        }
        Command::Cluster(args) => match args.controller {
            None => Err(anyhow::Error::msg(
                "--controller HOST:PORT (a node's controller listener) is required",
            )),
            Some(controller) => {
                let cmd = match args.action {
                    ClusterAction::Status { bootstrap_server } => ClusterCommand::Status {
                        controller,
                        bootstrap: bootstrap_server,
                    },
                    ClusterAction::AddVoter {
                        node_id,
                        node_address,
                    } => ClusterCommand::AddVoter {
                        controller,
                        node_id,
                        node_address,
                    },
                    ClusterAction::RemoveVoter { node_id } => ClusterCommand::RemoveVoter {
                        controller,
                        node_id,
                    },
                };
                runtime.block_on(cluster::run(cmd))
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
