//! The broker's configuration: one struct, every default and limit named here.
//!
//! Values come from three layers, later ones winning: the built-in defaults below,
//! a TOML file (`--config FILE`), and `--set key=value` pairs. Keys are Kafka's own
//! names (`log.segment.bytes`, `message.max.bytes`, …) so operators can reuse what
//! they know. Unknown keys and unparsable values are rejected with a message naming
//! the key, never ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_storage::{CleanupPolicy, LogConfig, TimestampType};

/// Default address clients connect to.
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:9092";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Smallest `log.cleaner.dedupe.buffer.size` accepted: 1 MiB (Kafka's floor too).
pub const MIN_DEDUPE_BUFFER_BYTES: i64 = 1 << 20;

/// How appended data is made durable before it is acknowledged and exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Group commit: acks=all is answered and the high watermark advances only over
    /// fsynced bytes. The default.
    Always,
    /// Kafka's own behaviour: data is fsynced on segment roll and every
    /// `log.flush.interval.ms`; the high watermark follows the log end.
    Interval,
}

/// One broker key: its name, default, and a one-line description for `DescribeConfigs`.
pub struct BrokerKey {
    /// Kafka's name for the key.
    pub name: &'static str,
    /// Default value as text.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

/// Every broker key keel understands. Topic-level defaults (`log.segment.bytes`, …)
/// are here under their broker names; the topic names live in `keel_raft::topic_config`.
pub const BROKER_KEYS: &[BrokerKey] = &[
    BrokerKey { name: "node.id", default: "1", doc: "This node's id." },
    BrokerKey { name: "process.roles", default: "broker,controller", doc: "What this node runs: broker, controller, or both (comma-separated)." },
    BrokerKey { name: "controller.quorum.voters", default: "", doc: "The controller voters as id@host:port,… (empty: this node alone, a single combined node)." },
    BrokerKey { name: "controller.listener", default: "", doc: "IP:port this node binds for controller and metadata traffic (required with controller.quorum.voters)." },
    BrokerKey { name: "controller.quorum.election.timeout.ms", default: "1000", doc: "Lower bound of the randomized Raft election timeout; the upper bound is twice this." },
    BrokerKey { name: "broker.rack", default: "", doc: "Rack of this broker, for rack-aware replica placement (empty: none)." },
    BrokerKey { name: "broker.session.timeout.ms", default: "9000", doc: "A broker that has not heartbeated to the active controller for this long is fenced." },
    BrokerKey { name: "replica.lag.time.max.ms", default: "30000", doc: "A follower that has not caught up with the leader for this long leaves the ISR." },
    BrokerKey { name: "replica.fetch.max.bytes", default: "1048576", doc: "Bytes a follower asks for per partition in one fetch (at least one batch is always returned)." },
    BrokerKey { name: "replica.fetch.response.max.bytes", default: "10485760", doc: "Bytes a follower asks for per fetch across partitions." },
    BrokerKey { name: "replica.fetch.wait.max.ms", default: "500", doc: "How long a follower's fetch may wait on the leader for new data." },
    BrokerKey { name: "replica.fetch.backoff.ms", default: "200", doc: "How long a follower waits after a failed fetch before trying again." },
    BrokerKey { name: "auto.leader.rebalance.enable", default: "true", doc: "The active controller moves leadership back to each partition's preferred replica (the first) when it is in sync." },
    BrokerKey { name: "leader.imbalance.check.interval.seconds", default: "300", doc: "How often the active controller looks for partitions not led by their preferred replica." },
    BrokerKey { name: "broker.heartbeat.interval.ms", default: "2000", doc: "How often a broker heartbeats to the active controller." },
    BrokerKey { name: "auto.create.topics.enable", default: "true", doc: "Create a topic when a client asks for its metadata and it does not exist." },
    BrokerKey { name: "num.partitions", default: "1", doc: "Partitions of an auto-created topic or of a CreateTopics without a count." },
    BrokerKey { name: "default.replication.factor", default: "1", doc: "Replication factor of topics created without one." },
    BrokerKey { name: "message.max.bytes", default: "1048588", doc: "Largest record batch a topic accepts, unless the topic sets max.message.bytes." },
    BrokerKey { name: "socket.request.max.bytes", default: "104857600", doc: "Largest request frame; a larger one closes the connection." },
    BrokerKey { name: "queued.max.requests.per.connection", default: "100", doc: "Requests of one connection in flight before the broker stops reading from it." },
    BrokerKey { name: "connections.max.idle.ms", default: "600000", doc: "Idle connections are closed after this long." },
    BrokerKey { name: "fetch.max.bytes", default: "57671680", doc: "Upper bound on the bytes one Fetch response carries." },
    BrokerKey { name: "max.incremental.fetch.session.cache.slots", default: "1000", doc: "Incremental fetch sessions kept per broker." },
    BrokerKey { name: "log.segment.bytes", default: "1073741824", doc: "Default segment.bytes of topics." },
    BrokerKey { name: "log.roll.ms", default: "604800000", doc: "Default segment.ms of topics." },
    BrokerKey { name: "log.index.size.max.bytes", default: "10485760", doc: "Default segment.index.bytes of topics." },
    BrokerKey { name: "log.index.interval.bytes", default: "4096", doc: "Default index.interval.bytes of topics." },
    BrokerKey { name: "log.retention.ms", default: "604800000", doc: "Default retention.ms of topics." },
    BrokerKey { name: "log.retention.bytes", default: "-1", doc: "Default retention.bytes of topics." },
    BrokerKey { name: "log.cleanup.policy", default: "delete", doc: "Default cleanup.policy of topics." },
    BrokerKey { name: "log.message.timestamp.type", default: "CreateTime", doc: "Default message.timestamp.type of topics." },
    BrokerKey { name: "min.insync.replicas", default: "1", doc: "Default min.insync.replicas of topics." },
    BrokerKey { name: "log.retention.check.interval.ms", default: "300000", doc: "How often retention and time-based rolls run." },
    BrokerKey { name: "log.cleaner.enable", default: "true", doc: "Run the log cleaner, which compacts topics with cleanup.policy=compact." },
    BrokerKey { name: "log.cleaner.backoff.ms", default: "15000", doc: "How long the cleaner sleeps when no log needs compacting." },
    BrokerKey { name: "log.cleaner.dedupe.buffer.size", default: "134217728", doc: "Bytes of keys and offsets one compaction may map; a larger dirty section is compacted in several passes." },
    BrokerKey { name: "log.cleaner.min.cleanable.ratio", default: "0.5", doc: "Default min.cleanable.dirty.ratio of topics." },
    BrokerKey { name: "log.cleaner.delete.retention.ms", default: "86400000", doc: "Default delete.retention.ms of topics." },
    BrokerKey { name: "log.cleaner.min.compaction.lag.ms", default: "0", doc: "Default min.compaction.lag.ms of topics." },
    BrokerKey { name: "log.cleaner.max.compaction.lag.ms", default: "9223372036854775807", doc: "Default max.compaction.lag.ms of topics." },
    BrokerKey { name: "log.flush.policy", default: "always", doc: "always: acknowledge acks=all and advance the high watermark only over fsynced bytes (group commit); interval: Kafka's behaviour." },
    BrokerKey { name: "log.flush.interval.ms", default: "1000", doc: "With log.flush.policy=interval, how often dirty logs are fsynced." },
    BrokerKey { name: "log.flush.offset.checkpoint.interval.ms", default: "60000", doc: "How often recovery points are written." },
    BrokerKey { name: "producer.id.expiration.ms", default: "86400000", doc: "Idempotent producer state idle longer than this is dropped." },
    BrokerKey { name: "offsets.topic.num.partitions", default: "50", doc: "Partitions of __consumer_offsets, fixed when it is created." },
    BrokerKey { name: "offsets.topic.replication.factor", default: "3", doc: "Replication factor of __consumer_offsets (capped at the brokers there are when it is created)." },
    BrokerKey { name: "offsets.topic.segment.bytes", default: "104857600", doc: "segment.bytes of __consumer_offsets." },
    BrokerKey { name: "offsets.commit.timeout.ms", default: "5000", doc: "How long an offset commit (or group metadata write) waits to be replicated before it fails with REQUEST_TIMED_OUT." },
    BrokerKey { name: "offsets.retention.minutes", default: "10080", doc: "Committed offsets of an empty group (or, without group management, since their commit) are kept this long." },
    BrokerKey { name: "offsets.retention.check.interval.ms", default: "600000", doc: "How often expired offsets are looked for." },
    BrokerKey { name: "offsets.load.buffer.size", default: "5242880", doc: "Bytes read at a time when loading an offsets partition." },
    BrokerKey { name: "offset.metadata.max.bytes", default: "4096", doc: "Longest metadata string an offset commit may carry." },
    BrokerKey { name: "group.min.session.timeout.ms", default: "6000", doc: "Shortest session timeout a group member may ask for." },
    BrokerKey { name: "group.max.session.timeout.ms", default: "1800000", doc: "Longest session timeout a group member may ask for." },
    BrokerKey { name: "group.initial.rebalance.delay.ms", default: "3000", doc: "How long the first rebalance of an empty group waits for more members to join." },
    BrokerKey { name: "group.max.size", default: "2147483647", doc: "Most members a group may have." },
    BrokerKey { name: "request.timeout.max.ms", default: "300000", doc: "Upper bound on the time a request waits (acks=all, long polls)." },
    BrokerKey { name: "producer.sequence.gap.grace.ms", default: "60000", doc: "For this long after a broker becomes a partition's leader, an idempotent batch that skips sequences is answered NOT_LEADER_OR_FOLLOWER (retriable) instead of OUT_OF_ORDER_SEQUENCE_NUMBER: the skipped batch may still be on its way through the previous leader." },
];

/// Errors in configuration, each naming the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The key is not one keel knows.
    #[error("unknown config key `{0}` (see `keel server --help` and docs/OPERATIONS.md for the keys keel understands)")]
    UnknownKey(String),
    /// The value does not parse or is out of range.
    #[error("invalid value `{value}` for `{key}`: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    /// `--set` without `=`.
    #[error("`--set {0}` must have the form key=value")]
    MalformedSet(String),
    /// The TOML file could not be read or parsed.
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// The broker's effective configuration.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Whether this node serves Kafka clients and hosts partitions.
    pub is_broker: bool,
    /// Whether this node is a controller voter.
    pub is_controller: bool,
    /// The controller voters: node id -> controller address (host:port).
    pub voters: BTreeMap<u64, String>,
    /// Address for controller traffic; `None` for a single node alone.
    pub controller_listen: Option<SocketAddr>,
    pub election_timeout_ms: u64,
    pub rack: Option<String>,
    pub broker_session_timeout: Duration,
    pub broker_heartbeat_interval: Duration,
    pub replica_lag_time_max: Duration,
    pub auto_leader_rebalance: bool,
    pub leader_imbalance_check_interval: Duration,
    pub replica_fetch_max_bytes: i32,
    pub replica_fetch_response_max_bytes: i32,
    pub replica_fetch_wait_max: Duration,
    pub replica_fetch_backoff: Duration,
    pub advertise_host: String,
    pub advertise_port: u16,
    pub auto_create_topics: bool,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    pub socket_request_max_bytes: usize,
    pub queued_max_requests_per_connection: usize,
    pub connections_max_idle: Duration,
    pub fetch_max_bytes: usize,
    pub fetch_session_cache_slots: usize,
    pub flush_policy: FlushPolicy,
    pub flush_interval: Duration,
    pub retention_check_interval: Duration,
    pub recovery_point_checkpoint_interval: Duration,
    pub request_timeout_max: Duration,
    /// How long after taking up a leadership a sequence gap is answered as retriable.
    pub producer_sequence_gap_grace: Duration,
    /// `log.cleaner.enable`.
    pub cleaner_enable: bool,
    /// `log.cleaner.backoff.ms`.
    pub cleaner_backoff: Duration,
    /// `log.cleaner.dedupe.buffer.size`.
    pub cleaner_dedupe_buffer_bytes: usize,
    /// Topic defaults derived from the `log.*` keys.
    pub log_defaults: LogConfig,
    pub min_insync_replicas: i32,
    pub cleanup_policy: String,
    /// Consumer group and offsets settings.
    pub groups: GroupSettings,
    /// Every key with its effective value, as text, for DescribeConfigs.
    pub raw: BTreeMap<String, String>,
    /// The keys set explicitly (file or `--set`), for DescribeConfigs' source field.
    pub explicit: BTreeMap<String, String>,
    /// Test only (`keel server --test-volatile-writes`): partition log writes stay in
    /// process memory until fsynced (`keel_storage::fs::VolatileFs`), so SIGKILL loses
    /// what a power loss would. Never a config key: no operator should set it.
    pub test_volatile_writes: bool,
}

impl BrokerConfig {
    /// Builds the configuration from defaults, an optional TOML file and `--set` pairs.
    ///
    /// # Errors
    /// Unknown keys, malformed pairs, unreadable files and invalid values.
    pub fn build(
        file: Option<&Path>,
        sets: &[String],
        data_dir: PathBuf,
        listen: SocketAddr,
        advertise: Option<(String, u16)>,
    ) -> Result<Self, ConfigError> {
        let mut explicit = BTreeMap::new();
        if let Some(path) = file {
            for (k, v) in read_toml(path)? {
                explicit.insert(k, v);
            }
        }
        for pair in sets {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| ConfigError::MalformedSet(pair.clone()))?;
            explicit.insert(k.trim().to_string(), v.trim().to_string());
        }
        let mut raw: BTreeMap<String, String> = BROKER_KEYS
            .iter()
            .map(|k| (k.name.to_string(), k.default.to_string()))
            .collect();
        for (k, v) in &explicit {
            if !raw.contains_key(k) {
                return Err(ConfigError::UnknownKey(k.clone()));
            }
            raw.insert(k.clone(), v.clone());
        }
        let get = |k: &str| raw.get(k).cloned().unwrap_or_default();
        let (advertise_host, advertise_port) =
            advertise.unwrap_or_else(|| (listen.ip().to_string(), listen.port()));
        let flush_policy = match get("log.flush.policy").as_str() {
            "always" => FlushPolicy::Always,
            "interval" => FlushPolicy::Interval,
            other => {
                return Err(invalid(
                    "log.flush.policy",
                    other,
                    "expected `always` or `interval`",
                ))
            }
        };
        let timestamp_type = match get("log.message.timestamp.type").as_str() {
            "CreateTime" => TimestampType::CreateTime,
            "LogAppendTime" => TimestampType::LogAppendTime,
            other => {
                return Err(invalid(
                    "log.message.timestamp.type",
                    other,
                    "expected `CreateTime` or `LogAppendTime`",
                ))
            }
        };
        let log_defaults = LogConfig {
            segment_bytes: parse_ranged(&raw, "log.segment.bytes", 1024, i32::MAX as i64)? as u64,
            segment_ms: parse_ranged(&raw, "log.roll.ms", 1, i64::MAX)?,
            segment_index_bytes: parse_ranged(
                &raw,
                "log.index.size.max.bytes",
                4096,
                i32::MAX as i64,
            )? as u64,
            index_interval_bytes: parse_ranged(
                &raw,
                "log.index.interval.bytes",
                0,
                i32::MAX as i64,
            )? as u64,
            retention_ms: parse_ranged(&raw, "log.retention.ms", -1, i64::MAX)?,
            retention_bytes: parse_ranged(&raw, "log.retention.bytes", -1, i64::MAX)?,
            max_message_bytes: parse_ranged(&raw, "message.max.bytes", 0, i32::MAX as i64)? as u32,
            message_timestamp_type: timestamp_type,
            cleanup_policy: CleanupPolicy::parse(&get("log.cleanup.policy")).ok_or_else(|| {
                invalid(
                    "log.cleanup.policy",
                    &get("log.cleanup.policy"),
                    "expected a list of `delete` and `compact`",
                )
            })?,
            delete_retention_ms: parse_ranged(
                &raw,
                "log.cleaner.delete.retention.ms",
                0,
                i64::MAX,
            )?,
            min_cleanable_dirty_ratio: parse_ratio(&raw, "log.cleaner.min.cleanable.ratio")?,
            min_compaction_lag_ms: parse_ranged(
                &raw,
                "log.cleaner.min.compaction.lag.ms",
                0,
                i64::MAX,
            )?,
            max_compaction_lag_ms: parse_ranged(
                &raw,
                "log.cleaner.max.compaction.lag.ms",
                1,
                i64::MAX,
            )?,
            ..LogConfig::default()
        };
        let cleanup_policy = get("log.cleanup.policy");
        let node_id = parse_ranged(&raw, "node.id", 0, i32::MAX as i64)? as i32;
        let cluster = parse_cluster(&raw, node_id)?;
        Ok(BrokerConfig {
            is_broker: cluster.is_broker,
            is_controller: cluster.is_controller,
            voters: cluster.voters,
            controller_listen: cluster.controller_listen,
            election_timeout_ms: parse_ranged(
                &raw,
                "controller.quorum.election.timeout.ms",
                100,
                600_000,
            )? as u64,
            rack: Some(get("broker.rack")).filter(|r| !r.is_empty()),
            broker_session_timeout: ms(parse_ranged(
                &raw,
                "broker.session.timeout.ms",
                100,
                i64::MAX,
            )?),
            broker_heartbeat_interval: ms(parse_ranged(
                &raw,
                "broker.heartbeat.interval.ms",
                10,
                i64::MAX,
            )?),
            replica_lag_time_max: ms(parse_ranged(&raw, "replica.lag.time.max.ms", 1, i64::MAX)?),
            auto_leader_rebalance: parse_bool(&raw, "auto.leader.rebalance.enable")?,
            leader_imbalance_check_interval: Duration::from_secs(parse_ranged(
                &raw,
                "leader.imbalance.check.interval.seconds",
                1,
                i64::from(u32::MAX),
            )? as u64),
            replica_fetch_max_bytes: parse_ranged(
                &raw,
                "replica.fetch.max.bytes",
                1024,
                i32::MAX as i64,
            )? as i32,
            replica_fetch_response_max_bytes: parse_ranged(
                &raw,
                "replica.fetch.response.max.bytes",
                1024,
                i32::MAX as i64,
            )? as i32,
            replica_fetch_wait_max: ms(parse_ranged(&raw, "replica.fetch.wait.max.ms", 0, 60_000)?),
            replica_fetch_backoff: ms(parse_ranged(&raw, "replica.fetch.backoff.ms", 1, 60_000)?),
            node_id,
            data_dir,
            listen,
            advertise_host,
            advertise_port,
            auto_create_topics: parse_bool(&raw, "auto.create.topics.enable")?,
            num_partitions: parse_ranged(&raw, "num.partitions", 1, i32::MAX as i64)? as i32,
            default_replication_factor: parse_ranged(
                &raw,
                "default.replication.factor",
                1,
                i16::MAX as i64,
            )? as i16,
            socket_request_max_bytes: parse_ranged(
                &raw,
                "socket.request.max.bytes",
                1024,
                i32::MAX as i64,
            )? as usize,
            queued_max_requests_per_connection: parse_ranged(
                &raw,
                "queued.max.requests.per.connection",
                1,
                100_000,
            )? as usize,
            connections_max_idle: ms(parse_ranged(&raw, "connections.max.idle.ms", 1, i64::MAX)?),
            fetch_max_bytes: parse_ranged(&raw, "fetch.max.bytes", 1024, i32::MAX as i64)? as usize,
            fetch_session_cache_slots: parse_ranged(
                &raw,
                "max.incremental.fetch.session.cache.slots",
                0,
                1_000_000,
            )? as usize,
            flush_policy,
            flush_interval: ms(parse_ranged(&raw, "log.flush.interval.ms", 1, i64::MAX)?),
            retention_check_interval: ms(parse_ranged(
                &raw,
                "log.retention.check.interval.ms",
                1,
                i64::MAX,
            )?),
            recovery_point_checkpoint_interval: ms(parse_ranged(
                &raw,
                "log.flush.offset.checkpoint.interval.ms",
                1,
                i64::MAX,
            )?),
            request_timeout_max: ms(parse_ranged(&raw, "request.timeout.max.ms", 1, i64::MAX)?),
            producer_sequence_gap_grace: ms(parse_ranged(
                &raw,
                "producer.sequence.gap.grace.ms",
                0,
                i64::MAX,
            )?),
            cleaner_enable: parse_bool(&raw, "log.cleaner.enable")?,
            cleaner_backoff: ms(parse_ranged(&raw, "log.cleaner.backoff.ms", 1, i64::MAX)?),
            cleaner_dedupe_buffer_bytes: parse_ranged(
                &raw,
                "log.cleaner.dedupe.buffer.size",
                MIN_DEDUPE_BUFFER_BYTES,
                i64::MAX,
            )? as usize,
            log_defaults,
            min_insync_replicas: parse_ranged(&raw, "min.insync.replicas", 1, i32::MAX as i64)?
                as i32,
            cleanup_policy,
            groups: parse_groups(&raw)?,
            raw,
            explicit,
            test_volatile_writes: false,
        })
    }

    /// The `host:port` clients are told to connect to.
    pub fn advertised(&self) -> String {
        format!("{}:{}", self.advertise_host, self.advertise_port)
    }

    /// The broker-level default value of a topic config, as text, if the topic key has
    /// a broker synonym keel knows.
    pub fn topic_default(&self, broker_synonym: &str) -> Option<&str> {
        self.raw.get(broker_synonym).map(String::as_str)
    }
}

/// Consumer group and `__consumer_offsets` settings (the `group.*` and `offsets.*` keys).
#[derive(Clone, Debug)]
pub struct GroupSettings {
    pub offsets_topic_num_partitions: i32,
    pub offsets_topic_replication_factor: i16,
    pub offsets_topic_segment_bytes: i64,
    pub offsets_commit_timeout: Duration,
    pub offsets_retention_ms: i64,
    pub offsets_retention_check_interval: Duration,
    pub offsets_load_buffer_bytes: usize,
    pub offset_metadata_max_bytes: usize,
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub initial_rebalance_delay_ms: i32,
    pub max_size: usize,
}

fn parse_groups(raw: &BTreeMap<String, String>) -> Result<GroupSettings, ConfigError> {
    let int_max = i32::MAX as i64;
    let min_session = parse_ranged(raw, "group.min.session.timeout.ms", 1, int_max)? as i32;
    let max_session = parse_ranged(raw, "group.max.session.timeout.ms", 1, int_max)? as i32;
    if max_session < min_session {
        return Err(invalid(
            "group.max.session.timeout.ms",
            &max_session.to_string(),
            "must be at least group.min.session.timeout.ms",
        ));
    }
    Ok(GroupSettings {
        offsets_topic_num_partitions: parse_ranged(raw, "offsets.topic.num.partitions", 1, 100_000)?
            as i32,
        offsets_topic_replication_factor: parse_ranged(
            raw,
            "offsets.topic.replication.factor",
            1,
            i16::MAX as i64,
        )? as i16,
        offsets_topic_segment_bytes: parse_ranged(
            raw,
            "offsets.topic.segment.bytes",
            1024,
            int_max,
        )?,
        offsets_commit_timeout: ms(parse_ranged(raw, "offsets.commit.timeout.ms", 1, int_max)?),
        offsets_retention_ms: parse_ranged(raw, "offsets.retention.minutes", 1, int_max)?
            .saturating_mul(60_000),
        offsets_retention_check_interval: ms(parse_ranged(
            raw,
            "offsets.retention.check.interval.ms",
            1,
            i64::MAX,
        )?),
        offsets_load_buffer_bytes: parse_ranged(raw, "offsets.load.buffer.size", 1024, int_max)?
            as usize,
        offset_metadata_max_bytes: parse_ranged(raw, "offset.metadata.max.bytes", 0, int_max)?
            as usize,
        min_session_timeout_ms: min_session,
        max_session_timeout_ms: max_session,
        initial_rebalance_delay_ms: parse_ranged(
            raw,
            "group.initial.rebalance.delay.ms",
            0,
            int_max,
        )? as i32,
        max_size: parse_ranged(raw, "group.max.size", 1, int_max)? as usize,
    })
}

struct ClusterSettings {
    is_broker: bool,
    is_controller: bool,
    voters: BTreeMap<u64, String>,
    controller_listen: Option<SocketAddr>,
}

/// Parses roles, voters and the controller listener, and checks they agree.
fn parse_cluster(
    raw: &BTreeMap<String, String>,
    node_id: i32,
) -> Result<ClusterSettings, ConfigError> {
    let roles_text = raw.get("process.roles").cloned().unwrap_or_default();
    let (mut is_broker, mut is_controller) = (false, false);
    for role in roles_text.split(',').map(str::trim) {
        match role {
            "broker" => is_broker = true,
            "controller" => is_controller = true,
            other => {
                return Err(invalid(
                    "process.roles",
                    &roles_text,
                    &format!(
                        "unknown role `{other}`; expected broker, controller or broker,controller"
                    ),
                ))
            }
        }
    }
    let voters_text = raw
        .get("controller.quorum.voters")
        .cloned()
        .unwrap_or_default();
    let mut voters = BTreeMap::new();
    for entry in voters_text
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let bad = |why: &str| {
            invalid(
                "controller.quorum.voters",
                &voters_text,
                &format!("`{entry}`: {why}"),
            )
        };
        let (id, addr) = entry
            .split_once('@')
            .ok_or_else(|| bad("expected id@host:port"))?;
        let id: u64 = id.parse().map_err(|_| bad("the id is not a number"))?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| bad("expected id@host:port"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad("expected id@host:port"));
        }
        if voters.insert(id, addr.to_string()).is_some() {
            return Err(bad("node id listed twice"));
        }
    }
    let listen_text = raw.get("controller.listener").cloned().unwrap_or_default();
    let controller_listen = if listen_text.is_empty() {
        None
    } else {
        Some(listen_text.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "controller.listener",
                &listen_text,
                "expected IP:PORT (--controller-listen)",
            )
        })?)
    };
    if voters.is_empty() {
        // The zero-config single node: this node is the only voter.
        if !(is_broker && is_controller) {
            return Err(invalid(
                "process.roles",
                &roles_text,
                "a node without controller.quorum.voters must be broker,controller (a single combined node)",
            ));
        }
        voters.insert(
            node_id as u64,
            controller_listen.map(|a| a.to_string()).unwrap_or_default(),
        );
    } else {
        // A controller that is not among the initial voters joins as an observer and
        // becomes a voter through `keel cluster add-voter`; the voter set then lives in
        // the metadata log, and this list only tells a starting node whom to contact.
        let listed = voters.contains_key(&(node_id as u64));
        if !is_controller && listed {
            return Err(invalid(
                "process.roles",
                &roles_text,
                &format!("node {node_id} is listed as a voter but lacks the controller role"),
            ));
        }
        if controller_listen.is_none() {
            return Err(invalid(
                "controller.listener",
                "",
                "required when controller.quorum.voters is set (--controller-listen HOST:PORT)",
            ));
        }
    }
    Ok(ClusterSettings {
        is_broker,
        is_controller,
        voters,
        controller_listen,
    })
}

fn ms(v: i64) -> Duration {
    Duration::from_millis(v.max(0) as u64)
}

fn invalid(key: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_ranged(
    raw: &BTreeMap<String, String>,
    key: &str,
    min: i64,
    max: i64,
) -> Result<i64, ConfigError> {
    let text = raw.get(key).map(String::as_str).unwrap_or("");
    let v: i64 = text
        .parse()
        .map_err(|_| invalid(key, text, "expected an integer"))?;
    if v < min || v > max {
        return Err(invalid(
            key,
            text,
            &format!("must be between {min} and {max}"),
        ));
    }
    Ok(v)
}

/// A fraction in `[0, 1]`.
fn parse_ratio(raw: &BTreeMap<String, String>, key: &str) -> Result<f64, ConfigError> {
    let text = raw.get(key).map(String::as_str).unwrap_or("");
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(invalid(key, text, "expected a number between 0 and 1")),
    }
}

fn parse_bool(raw: &BTreeMap<String, String>, key: &str) -> Result<bool, ConfigError> {
    let text = raw.get(key).map(String::as_str).unwrap_or("");
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, text, "expected `true` or `false`")),
    }
}

/// Reads a TOML file into flat `dotted.key = value` text pairs. Nested tables are
/// flattened (`[log] segment.bytes = 1` is `log.segment.bytes`).
fn read_toml(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let mut out = Vec::new();
    flatten("", &table, &mut out, path)?;
    Ok(out)
}

fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut Vec<(String, String)>,
    path: &Path,
) -> Result<(), ConfigError> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let text = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Table(t) => {
                flatten(&key, t, out, path)?;
                continue;
            }
            other => {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    reason: format!("key `{key}` has an unsupported value {other}"),
                })
            }
        };
        out.push((key, text));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(sets: &[&str]) -> Result<BrokerConfig, ConfigError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        BrokerConfig::build(
            None,
            &sets,
            PathBuf::from("./data"),
            DEFAULT_LISTEN_ADDR.parse().unwrap(),
            None,
        )
    }

    #[test]
    fn defaults_are_durable_and_listen_on_loopback() {
        let c = build(&[]).unwrap();
        assert_eq!(c.flush_policy, FlushPolicy::Always);
        assert_eq!(c.advertised(), "127.0.0.1:9092");
        assert_eq!(c.log_defaults.segment_bytes, 1 << 30);
    }

    #[test]
    fn set_overrides_a_topic_default() {
        let c = build(&["log.segment.bytes=1048576"]).unwrap();
        assert_eq!(c.log_defaults.segment_bytes, 1048576);
        assert!(c.explicit.contains_key("log.segment.bytes"));
    }

    #[test]
    fn cleaner_keys_have_kafkas_defaults_and_reach_the_topic_defaults() {
        let c = build(&[]).unwrap();
        assert!(c.cleaner_enable);
        assert_eq!(c.cleaner_backoff, Duration::from_millis(15_000));
        assert_eq!(c.cleaner_dedupe_buffer_bytes, 128 << 20);
        assert_eq!(c.log_defaults.cleanup_policy, CleanupPolicy::DELETE);
        assert_eq!(c.log_defaults.delete_retention_ms, 86_400_000);
        assert_eq!(c.log_defaults.min_cleanable_dirty_ratio, 0.5);
        assert_eq!(c.log_defaults.max_compaction_lag_ms, i64::MAX);
        let c = build(&[
            "log.cleanup.policy=compact,delete",
            "log.cleaner.min.cleanable.ratio=0.01",
            "log.cleaner.backoff.ms=200",
        ])
        .unwrap();
        assert_eq!(
            c.log_defaults.cleanup_policy,
            CleanupPolicy {
                delete: true,
                compact: true
            }
        );
        assert_eq!(c.log_defaults.min_cleanable_dirty_ratio, 0.01);
        assert_eq!(c.cleaner_backoff, Duration::from_millis(200));
        for bad in [
            "log.cleanup.policy=shred",
            "log.cleaner.min.cleanable.ratio=1.5",
            "log.cleaner.dedupe.buffer.size=10",
        ] {
            let key = bad.split('=').next().unwrap();
            let err = build(&[bad]).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let err = build(&["log.segmnt.bytes=1"]).unwrap_err().to_string();
        assert!(err.contains("log.segmnt.bytes"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = build(&["num.partitions=zero"]).unwrap_err().to_string();
        assert!(err.contains("num.partitions"), "{err}");
        let err = build(&["log.flush.policy=sometimes"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.flush.policy"), "{err}");
        assert!(matches!(
            build(&["novalue"]),
            Err(ConfigError::MalformedSet(_))
        ));
    }

    #[test]
    fn a_three_voter_cluster_parses_and_checks_roles_against_voters() {
        let voters =
            "controller.quorum.voters=1@127.0.0.11:9093,2@127.0.0.12:9093,3@127.0.0.13:9093";
        let c = build(&["node.id=2", voters, "controller.listener=127.0.0.12:9093"]).unwrap();
        assert!(c.is_broker && c.is_controller);
        assert_eq!(c.voters.len(), 3);
        assert_eq!(c.voters[&2], "127.0.0.12:9093");
        let broker_only = build(&[
            "node.id=4",
            voters,
            "process.roles=broker",
            "controller.listener=127.0.0.14:9093",
        ]);
        assert!(broker_only.is_ok());
        let err = build(&[
            "node.id=3",
            voters,
            "process.roles=broker",
            "controller.listener=127.0.0.13:9093",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("lacks the controller role"), "{err}");
        let err = build(&["node.id=1", voters]).unwrap_err().to_string();
        assert!(err.contains("controller.listener"), "{err}");
        let err = build(&["controller.quorum.voters=1@nohostport"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("id@host:port"), "{err}");
        let err = build(&["process.roles=broker,cook"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cook"), "{err}");
    }

    #[test]
    fn the_default_is_one_combined_node_voting_for_itself() {
        let c = build(&[]).unwrap();
        assert!(c.is_broker && c.is_controller);
        assert_eq!(c.voters.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert!(c.controller_listen.is_none());
    }

    #[test]
    fn toml_tables_flatten_to_dotted_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.toml");
        std::fs::write(
            &path,
            "[log]\n\"segment.bytes\" = 2048\n\"num.partitions\" = 3\n",
        )
        .unwrap();
        // "log.num.partitions" is not a key: the error must say so.
        let err = BrokerConfig::build(
            Some(&path),
            &[],
            PathBuf::from("d"),
            DEFAULT_LISTEN_ADDR.parse().unwrap(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("log.num.partitions"), "{err}");
        std::fs::write(
            &path,
            "\"num.partitions\" = 3\n[log]\n\"segment.bytes\" = 2048\n",
        )
        .unwrap();
        let c = BrokerConfig::build(
            Some(&path),
            &["num.partitions=4".into()],
            PathBuf::from("d"),
            DEFAULT_LISTEN_ADDR.parse().unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(c.log_defaults.segment_bytes, 2048);
        assert_eq!(c.num_partitions, 4, "--set wins over the file");
    }
}
