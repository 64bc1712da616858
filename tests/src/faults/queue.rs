//! The queue workload through librdkafka (the `rdkafka` crate): producers send unique
//! integers with acks=all and idempotence on, consumers poll them (by explicit
//! assignment, or subscribed to a consumer group), and a final phase assigns every
//! partition, seeks to the beginning and reads to the end. Every operation goes into
//! the history as invoke / ok / fail / info.
//!
//! How librdkafka's outcomes map to the history: a delivery report without error is
//! `ok` at its offset; with an error, librdkafka's own persistence status decides
//! (`rd_kafka_message_status`): NOT_PERSISTED (never sent, or refused before being
//! written) is `fail`, anything else (timeouts, lost connections) is `info` — the
//! value may or may not be in the log, as in Jepsen.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::bindings as rdsys;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::recorder::Recorder;
use super::rng::Rng;
use crate::checker::history::{AssignedPartition, Event, EventType, Record};
use crate::checker::queue::TopicPartition;

/// Process ids: producers count up from here, ...
const FIRST_PRODUCER_PROCESS: u64 = 1;
/// ... consumers from here ...
const FIRST_CONSUMER_PROCESS: u64 = 1_001;
/// ... and the final reader uses this one.
pub const FINAL_READER_PROCESS: u64 = 1_000_000;
/// How long one poll operation collects records.
const POLL_OP_TIME: Duration = Duration::from_millis(100);
/// Most records one poll operation returns.
const POLL_OP_MAX_RECORDS: usize = 500;
/// How often a producer serves delivery reports while pacing itself.
const PRODUCER_POLL_SLICE: Duration = Duration::from_millis(5);
/// How long stopping producers wait for outstanding delivery reports.
pub const PRODUCER_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// librdkafka's request.timeout.ms (also the Produce timeout an acks=all waits).
const CLIENT_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Environment variable naming librdkafka `debug` contexts for the producers and
/// consumers (e.g. `eos`, `cgrp`); their lines go to the harness's stderr.
const CLIENT_DEBUG_ENV: &str = "KEEL_FAULTS_CLIENT_DEBUG";
/// How long closing a group consumer (leaving its group) may take before its worker
/// gives up on it and goes on with a new consumer: librdkafka's close has no bound of
/// its own, and once never returned (see `close_bounded`).
const CONSUMER_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest and longest time between a consumer's rewinds (assign mode).
const REWIND_EVERY_MS: (u64, u64) = (4_000, 12_000);
/// How often a group consumer commits its position.
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// Shortest and longest time between a group consumer leaving and joining again.
const RESTART_EVERY_MS: (u64, u64) = (8_000, 20_000);
/// The consumer group of the workload's subscribed consumers.
pub const GROUP: &str = "keel-faults";
/// Bound on one metadata or watermark query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How consumers get their partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerMode {
    /// Every consumer assigns every partition itself and rewinds now and then.
    Assign,
    /// Consumers subscribe as one consumer group, commit offsets, and now and then
    /// leave and join again (so partitions change hands).
    Group,
    /// Every other consumer is a group member (the first one is), the rest assign.
    Both,
}

impl ConsumerMode {
    /// The mode of the `index`th consumer under this setting.
    pub fn of_consumer(self, index: usize) -> ConsumerMode {
        match self {
            ConsumerMode::Both if index % 2 == 0 => ConsumerMode::Group,
            ConsumerMode::Both => ConsumerMode::Assign,
            mode => mode,
        }
    }
}

/// The workload's shape.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Every broker's client address, comma-separated.
    pub bootstrap: String,
    /// Topic names.
    pub topics: Vec<String>,
    /// Partitions per topic.
    pub partitions: i32,
    /// Producer instances (each a thread with its own librdkafka producer).
    pub producers: usize,
    /// Consumer instances.
    pub consumers: usize,
    /// How consumers get partitions.
    pub consumer_mode: ConsumerMode,
    /// Sends per second over all producers.
    pub sends_per_sec: f64,
    /// Most unacknowledged sends per producer and partition; a partition at the limit
    /// is skipped, so an unavailable partition does not stall the others.
    pub max_in_flight_per_partition: usize,
    /// librdkafka's message.timeout.ms: how long a send may take before it is given
    /// up (and recorded as info).
    pub message_timeout: Duration,
    /// Seeds the consumers' rewinds.
    pub seed: u64,
}

impl QueueConfig {
    /// Every topic-partition of the workload.
    pub fn topic_partitions(&self) -> Vec<TopicPartition> {
        self.topics
            .iter()
            .flat_map(|t| (0..self.partitions).map(move |p| (t.clone(), p)))
            .collect()
    }
}

/// Client-side errors seen during the run, by kind, for the report.
#[derive(Debug, Default)]
pub struct ClientErrors {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl ClientErrors {
    fn add(&self, what: String) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(what).or_default() += 1;
    }

    /// Every kind with its count.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn base_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        .set("retry.backoff.ms", "100")
        .set("retry.backoff.max.ms", "1000")
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("topic.metadata.refresh.interval.ms", "5000");
    c
}

// ---------------------------------------------------------------- producers

struct ProducerCtx {
    recorder: Arc<Recorder>,
    process: u64,
    index: HashMap<TopicPartition, usize>,
    in_flight: Vec<AtomicUsize>,
    errors: Arc<ClientErrors>,
}

impl ClientContext for ProducerCtx {
    /// librdkafka's own log lines (its `debug` contexts when `KEEL_FAULTS_CLIENT_DEBUG`
    /// names some, e.g. `eos` for idempotence state: epoch bumps, sequence errors), on
    /// the harness's stderr with the producer's process number.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        eprintln!(
            "librdkafka producer {} {level:?} {fac}: {log_message}",
            self.process
        );
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, value: usize) {
        let value = value as u64;
        let (topic, partition) = match result {
            Ok(m) => (m.topic().to_string(), m.partition()),
            Err((_, m)) => (m.topic().to_string(), m.partition()),
        };
        match result {
            Ok(m) => {
                // librdkafka reports an implicitly acked message with offset -1001.
                let offset = m.offset().max(-1);
                self.recorder
                    .record(|t| Event::send_ok(self.process, t, &topic, partition, value, offset));
            }
            Err((e, m)) => {
                // SAFETY: the message pointer is valid for the duration of the callback.
                let status = unsafe { rdsys::rd_kafka_message_status(m.ptr()) };
                let definite =
                    status == rdsys::rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED;
                self.errors.add(format!(
                    "send {}: {e}",
                    if definite { "failed" } else { "unknown" }
                ));
                self.recorder.record(|t| {
                    if definite {
                        Event::send_fail(self.process, t, &topic, partition, value)
                    } else {
                        Event::send_info(self.process, t, &topic, partition, value)
                    }
                });
            }
        }
        if let Some(i) = self.index.get(&(topic, partition)) {
            self.in_flight[*i].fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn producer_config(cfg: &QueueConfig) -> ClientConfig {
    let mut c = base_config(&cfg.bootstrap);
    c.set("acks", "all")
        .set("request.timeout.ms", CLIENT_REQUEST_TIMEOUT_MS.to_string())
        .set("enable.idempotence", "true")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "2")
        .set(
            "message.timeout.ms",
            cfg.message_timeout.as_millis().to_string(),
        );
    set_client_debug(&mut c);
    c
}

/// The librdkafka `debug` contexts named by `KEEL_FAULTS_CLIENT_DEBUG`, if any.
fn client_debug() -> Option<String> {
    std::env::var(CLIENT_DEBUG_ENV)
        .ok()
        .filter(|contexts| !contexts.is_empty())
}

fn set_client_debug(c: &mut ClientConfig) {
    if let Some(contexts) = client_debug() {
        c.set("debug", contexts)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
}

struct ProducerWorker {
    cfg: QueueConfig,
    recorder: Arc<Recorder>,
    errors: Arc<ClientErrors>,
    values: Arc<AtomicU64>,
    processes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    offset: usize,
}

impl ProducerWorker {
    fn create(&self, process: u64) -> anyhow::Result<BaseProducer<ProducerCtx>> {
        let tps = self.cfg.topic_partitions();
        let ctx = ProducerCtx {
            recorder: Arc::clone(&self.recorder),
            process,
            index: tps
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, tp)| (tp, i))
                .collect(),
            in_flight: tps.iter().map(|_| AtomicUsize::new(0)).collect(),
            errors: Arc::clone(&self.errors),
        };
        producer_config(&self.cfg)
            .create_with_context(ctx)
            .context("creating a producer")
    }

    fn run(self) -> anyhow::Result<()> {
        let tps = self.cfg.topic_partitions();
        let per_producer = (self.cfg.sends_per_sec / self.cfg.producers as f64).max(0.1);
        let interval = Duration::from_secs_f64(1.0 / per_producer);
        let mut process = self.processes.fetch_add(1, Ordering::AcqRel);
        let mut producer = self.create(process)?;
        let mut next_tp = self.offset;
        let mut next_send = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            producer.poll(Duration::ZERO);
            if let Some((code, reason)) = producer.client().fatal_error() {
                // Jepsen's rule for a crashed client: its process is done, a new one
                // takes over. Dropping the producer reports what it still held.
                self.errors.add(format!("producer fatal error: {code:?}"));
                tracing::warn!(
                    process,
                    "producer fatal error {code:?}: {reason}; recreating it"
                );
                drop(producer);
                process = self.processes.fetch_add(1, Ordering::AcqRel);
                producer = self.create(process)?;
                continue;
            }
            let now = Instant::now();
            if now < next_send {
                producer.poll((next_send - now).min(PRODUCER_POLL_SLICE));
                continue;
            }
            next_send += interval;
            if next_send + Duration::from_secs(1) < now {
                // After a stall, do not try to catch up in a burst.
                next_send = now;
            }
            let in_flight = &producer.context().in_flight;
            let Some(i) = (0..tps.len()).map(|k| (next_tp + k) % tps.len()).find(|i| {
                in_flight[*i].load(Ordering::Acquire) < self.cfg.max_in_flight_per_partition
            }) else {
                continue;
            };
            next_tp = i + 1;
            let (topic, partition) = &tps[i];
            let value = self.values.fetch_add(1, Ordering::AcqRel);
            let payload = value.to_string();
            in_flight[i].fetch_add(1, Ordering::AcqRel);
            self.recorder
                .record(|t| Event::send_invoke(process, t, topic, *partition, value));
            let record = BaseRecord::<(), String, usize>::with_opaque_to(topic, value as usize)
                .partition(*partition)
                .payload(&payload);
            if let Err((e, _)) = producer.send(record) {
                // Refused before it was queued: definitely not written.
                in_flight[i].fetch_sub(1, Ordering::AcqRel);
                self.errors.add(format!("send refused locally: {e}"));
                self.recorder
                    .record(|t| Event::send_fail(process, t, topic, *partition, value));
            }
        }
        // Drain: wait for what is in flight, then drop, which purges the rest (their
        // delivery reports say whether they may have been written).
        let _ = producer.flush(PRODUCER_DRAIN_TIMEOUT);
        drop(producer);
        Ok(())
    }
}

// ---------------------------------------------------------------- consumers

/// The next offset to read of each partition a consumer holds, as far as it knows.
type Positions = Mutex<HashMap<TopicPartition, i64>>;

fn lock_positions(p: &Positions) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, i64>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

struct ConsumerCtx {
    recorder: Arc<Recorder>,
    errors: Arc<ClientErrors>,
    process: u64,
    /// The consumer group, for subscribed consumers.
    group: Option<String>,
    positions: Positions,
    /// Records of the poll operation in progress, not yet in the history.
    pending: Mutex<Vec<Record>>,
    /// Whether a poll operation is in progress (its `invoke` is recorded).
    in_poll: AtomicBool,
    /// Set when this consumer's worker gave up on closing it and went on with a new
    /// one: whatever this consumer still does stays out of the history.
    abandoned: AtomicBool,
    /// Whether librdkafka's log lines go to stderr (debug contexts were asked for).
    log_to_stderr: bool,
}

impl ConsumerCtx {
    fn new(
        recorder: &Arc<Recorder>,
        errors: &Arc<ClientErrors>,
        process: u64,
        group: Option<String>,
    ) -> Self {
        ConsumerCtx {
            recorder: Arc::clone(recorder),
            errors: Arc::clone(errors),
            process,
            group,
            positions: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            in_poll: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            log_to_stderr: client_debug().is_some(),
        }
    }

    /// Takes the records collected so far in this poll operation.
    fn take_pending(&self) -> Vec<Record> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records `event` (a rebalance) inside the history in its true place: a poll
    /// operation in progress is completed with the records it got before the
    /// rebalance, and a new one started after it.
    fn record_between_polls(&self, event: impl FnOnce(u64) -> Event) {
        let split = self.in_poll.load(Ordering::Acquire);
        if split {
            let records = self.take_pending();
            self.recorder
                .record(|t| Event::poll_ok(self.process, t, records, false));
        }
        self.recorder.record(event);
        if split {
            self.recorder
                .record(|t| Event::poll_invoke(self.process, t, false));
        }
    }
}

impl ClientContext for ConsumerCtx {
    /// librdkafka's own log lines, on the harness's stderr with the consumer's process
    /// number, when `KEEL_FAULTS_CLIENT_DEBUG` names debug contexts.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        if self.log_to_stderr {
            eprintln!(
                "librdkafka consumer {} {level:?} {fac}: {log_message}",
                self.process
            );
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<AssignedPartition> {
    tpl.elements()
        .iter()
        .map(|e| AssignedPartition::new(e.topic(), e.partition(), -1))
        .collect()
}

impl ConsumerContext for ConsumerCtx {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Some(group) = &self.group else {
            return;
        };
        if self.abandoned.load(Ordering::Acquire) {
            return;
        }
        // Revoked partitions leave this consumer's positions (it must not commit them);
        // assigned ones start at the group's committed offset, which the history names
        // only through the group's commits.
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = partitions_of(tpl);
                {
                    let mut positions = lock_positions(&self.positions);
                    for p in &parts {
                        positions.remove(&(p.topic.clone(), p.partition));
                    }
                }
                self.record_between_polls(|t| Event::group_assign(self.process, t, group, parts));
            }
            Rebalance::Revoke(tpl) => {
                let parts = partitions_of(tpl);
                {
                    let mut positions = lock_positions(&self.positions);
                    for p in &parts {
                        positions.remove(&(p.topic.clone(), p.partition));
                    }
                }
                self.record_between_polls(|t| Event::revoke(self.process, t, group, parts));
            }
            Rebalance::Error(e) => self.errors.add(format!("rebalance: {e}")),
        }
    }
}

fn consumer_config(cfg: &QueueConfig, group: &str, mode: ConsumerMode) -> ClientConfig {
    let mut c = base_config(&cfg.bootstrap);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.error.backoff.ms", "100")
        .set("fetch.queue.backoff.ms", "10")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000");
    set_client_debug(&mut c);
    // With explicit assignment a correct broker never answers OFFSET_OUT_OF_RANGE for
    // an offset that was readable: make librdkafka tell us instead of silently
    // jumping (the runner counts these and seeks back explicitly). A group member
    // without a committed offset starts at the log start.
    c.set(
        "auto.offset.reset",
        match mode {
            ConsumerMode::Assign => "error",
            ConsumerMode::Group | ConsumerMode::Both => "earliest",
        },
    );
    c
}

/// The payload as the integer it carries; `u64::MAX` (never sent) if it is not one,
/// so a mangled record shows up as an unknown value.
fn value_of(payload: Option<&[u8]>) -> u64 {
    payload
        .and_then(|p| std::str::from_utf8(p).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

/// One poll operation: records its `invoke`, collects records for up to `max_time`
/// (noting each one's next offset as this consumer's position at once, so a rebalance
/// during the operation sees it), and records the `ok` with what was collected since
/// the start or since a rebalance split the operation. Returns every record collected
/// and the first error.
fn poll_op(
    consumer: &BaseConsumer<ConsumerCtx>,
    max_time: Duration,
    final_read: bool,
) -> (Vec<Record>, Option<KafkaError>) {
    let ctx = consumer.context();
    ctx.recorder
        .record(|t| Event::poll_invoke(ctx.process, t, final_read));
    ctx.in_poll.store(true, Ordering::Release);
    let deadline = Instant::now() + max_time;
    let mut all = Vec::new();
    let mut error = None;
    while all.len() < POLL_OP_MAX_RECORDS {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match consumer.poll(left) {
            None => break,
            Some(Ok(m)) => {
                let r = Record::new(m.topic(), m.partition(), m.offset(), value_of(m.payload()));
                lock_positions(&ctx.positions).insert((r.topic.clone(), r.partition), r.offset + 1);
                ctx.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(r.clone());
                all.push(r);
            }
            Some(Err(e)) => {
                error = Some(e);
                break;
            }
        }
    }
    ctx.in_poll.store(false, Ordering::Release);
    let records = ctx.take_pending();
    ctx.recorder
        .record(|t| Event::poll_ok(ctx.process, t, records, final_read));
    (all, error)
}

fn assignment(positions: &[(TopicPartition, Option<i64>)]) -> anyhow::Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), at) in positions {
        let offset = match at {
            Some(o) => Offset::Offset(*o),
            None => Offset::Beginning,
        };
        tpl.add_partition_offset(topic, *partition, offset)?;
    }
    Ok(tpl)
}

fn record_assign(recorder: &Recorder, process: u64, positions: &[(TopicPartition, Option<i64>)]) {
    let parts: Vec<AssignedPartition> = positions
        .iter()
        .map(|((t, p), at)| AssignedPartition::new(t, *p, at.unwrap_or(0)))
        .collect();
    recorder.record(|t| Event::assign(process, t, parts));
}

struct ConsumerWorker {
    cfg: QueueConfig,
    /// This worker's own mode (never `Both`).
    mode: ConsumerMode,
    recorder: Arc<Recorder>,
    errors: Arc<ClientErrors>,
    stop: Arc<AtomicBool>,
    process: u64,
    rng: Rng,
}

impl ConsumerWorker {
    fn create(&self) -> anyhow::Result<BaseConsumer<ConsumerCtx>> {
        let group = match self.mode {
            ConsumerMode::Assign => format!("keel-faults-assign-{}", self.process),
            ConsumerMode::Group | ConsumerMode::Both => GROUP.to_string(),
        };
        let consumer: BaseConsumer<ConsumerCtx> = consumer_config(&self.cfg, &group, self.mode)
            .create_with_context(ConsumerCtx::new(
                &self.recorder,
                &self.errors,
                self.process,
                (self.mode != ConsumerMode::Assign).then_some(group),
            ))
            .context("creating a consumer")?;
        match self.mode {
            ConsumerMode::Assign => {
                let positions: Vec<_> = self
                    .cfg
                    .topic_partitions()
                    .into_iter()
                    .map(|tp| (tp, None))
                    .collect();
                record_assign(&self.recorder, self.process, &positions);
                consumer.assign(&assignment(&positions)?)?;
            }
            ConsumerMode::Group | ConsumerMode::Both => {
                let topics: Vec<&str> = self.cfg.topics.iter().map(String::as_str).collect();
                consumer.subscribe(&topics)?;
            }
        }
        Ok(consumer)
    }

    /// Commits this member's positions of the partitions it holds, synchronously:
    /// librdkafka reports an asynchronous manual commit's outcome only to an
    /// `offset_commit_cb`, which the rdkafka crate does not set. A commit waiting for
    /// a coordinator gives up after session.timeout.ms, so this blocks boundedly.
    fn commit(&self, consumer: &BaseConsumer<ConsumerCtx>) -> anyhow::Result<()> {
        let Some(group) = &consumer.context().group else {
            return Ok(());
        };
        let positions: Vec<(TopicPartition, i64)> = lock_positions(&consumer.context().positions)
            .iter()
            .map(|(tp, o)| (tp.clone(), *o))
            .collect();
        if positions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        let mut parts = Vec::new();
        for ((topic, partition), offset) in &positions {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
            parts.push(AssignedPartition::new(topic, *partition, *offset));
        }
        self.recorder
            .record(|t| Event::commit(self.process, t, EventType::Invoke, group, parts.clone()));
        // Any error is recorded as unknown: a commit that timed out may still have
        // been applied, and the checker relies only on the acknowledged ones.
        let outcome = match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => EventType::Ok,
            Err(e) => {
                self.errors.add(format!("commit: {e}"));
                EventType::Info
            }
        };
        self.recorder
            .record(|t| Event::commit(self.process, t, outcome, group, parts));
        Ok(())
    }

    fn run(mut self) -> anyhow::Result<()> {
        let mode = self.mode;
        let mut consumer = self.create()?;
        let tps = self.cfg.topic_partitions();
        let mut next_rewind = Instant::now() + self.rewind_delay();
        let mut next_restart = Instant::now() + self.restart_delay();
        let mut last_commit = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            let (_, error) = poll_op(&consumer, POLL_OP_TIME, false);
            if let Some(e) = error {
                let reset = matches!(
                    &e,
                    KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)
                );
                self.errors.add(format!("consumer: {e}"));
                if reset && mode == ConsumerMode::Assign {
                    // Seek every partition back to where this consumer was.
                    tracing::warn!(process = self.process, "offset reset by the broker: {e}");
                    let known = lock_positions(&consumer.context().positions).clone();
                    let positions: Vec<_> = tps
                        .iter()
                        .map(|tp| (tp.clone(), known.get(tp).copied()))
                        .collect();
                    record_assign(&self.recorder, self.process, &positions);
                    consumer.assign(&assignment(&positions)?)?;
                }
            }
            match mode {
                ConsumerMode::Assign if Instant::now() >= next_rewind => {
                    next_rewind = Instant::now() + self.rewind_delay();
                    let victim = self.rng.below(tps.len());
                    let mut known = lock_positions(&consumer.context().positions).clone();
                    let positions: Vec<_> = tps
                        .iter()
                        .enumerate()
                        .map(|(i, tp)| {
                            let at = known.get(tp).copied();
                            if i == victim {
                                let to = at.map(|n| self.rng.between(0, n.max(0) as u64) as i64);
                                (tp.clone(), to)
                            } else {
                                (tp.clone(), at)
                            }
                        })
                        .collect();
                    // Where this consumer now is, should the broker reset it.
                    for (tp, at) in &positions {
                        if let Some(o) = at {
                            known.insert(tp.clone(), *o);
                        }
                    }
                    *lock_positions(&consumer.context().positions) = known;
                    record_assign(&self.recorder, self.process, &positions);
                    consumer.assign(&assignment(&positions)?)?;
                }
                ConsumerMode::Group if Instant::now() >= next_restart => {
                    // Leave the group and join again as a new member: the group
                    // rebalances twice, and partitions change hands.
                    next_restart = Instant::now() + self.restart_delay();
                    self.commit(&consumer)?;
                    close_bounded(consumer, &self.errors);
                    consumer = self.create()?;
                }
                ConsumerMode::Group if last_commit.elapsed() >= COMMIT_EVERY => {
                    last_commit = Instant::now();
                    self.commit(&consumer)?;
                }
                _ => {}
            }
        }
        close_bounded(consumer, &self.errors);
        Ok(())
    }

    fn rewind_delay(&mut self) -> Duration {
        Duration::from_millis(self.rng.between(REWIND_EVERY_MS.0, REWIND_EVERY_MS.1))
    }

    fn restart_delay(&mut self) -> Duration {
        Duration::from_millis(self.rng.between(RESTART_EVERY_MS.0, RESTART_EVERY_MS.1))
    }
}

// ---------------------------------------------------------------- the workload

/// Running producer and consumer threads.
pub struct Workload {
    cfg: QueueConfig,
    recorder: Arc<Recorder>,
    /// Client errors by kind.
    pub errors: Arc<ClientErrors>,
    stop_producers: Arc<AtomicBool>,
    stop_consumers: Arc<AtomicBool>,
    producers: Vec<JoinHandle<anyhow::Result<()>>>,
    consumers: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Workload {
    /// Starts every producer and consumer thread.
    ///
    /// # Errors
    /// A thread cannot be spawned.
    pub fn start(cfg: &QueueConfig, recorder: Arc<Recorder>) -> anyhow::Result<Self> {
        let errors = Arc::new(ClientErrors::default());
        let stop_producers = Arc::new(AtomicBool::new(false));
        let stop_consumers = Arc::new(AtomicBool::new(false));
        let values = Arc::new(AtomicU64::new(0));
        let processes = Arc::new(AtomicU64::new(FIRST_PRODUCER_PROCESS));
        let mut producers = Vec::new();
        for i in 0..cfg.producers {
            let worker = ProducerWorker {
                cfg: cfg.clone(),
                recorder: Arc::clone(&recorder),
                errors: Arc::clone(&errors),
                values: Arc::clone(&values),
                processes: Arc::clone(&processes),
                stop: Arc::clone(&stop_producers),
                offset: i,
            };
            producers.push(
                std::thread::Builder::new()
                    .name(format!("producer-{i}"))
                    .spawn(move || worker.run())?,
            );
        }
        let mut rng = Rng::new(cfg.seed ^ 0xC0A5_0000);
        let mut consumers = Vec::new();
        for i in 0..cfg.consumers {
            let worker = ConsumerWorker {
                cfg: cfg.clone(),
                mode: cfg.consumer_mode.of_consumer(i),
                recorder: Arc::clone(&recorder),
                errors: Arc::clone(&errors),
                stop: Arc::clone(&stop_consumers),
                process: FIRST_CONSUMER_PROCESS + i as u64,
                rng: Rng::new(rng.next_u64()),
            };
            consumers.push(
                std::thread::Builder::new()
                    .name(format!("consumer-{i}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok(Workload {
            cfg: cfg.clone(),
            recorder,
            errors,
            stop_producers,
            stop_consumers,
            producers,
            consumers,
        })
    }

    /// Stops the producers and waits for their last delivery reports.
    ///
    /// # Errors
    /// A producer thread failed.
    pub fn stop_producers(&mut self) -> anyhow::Result<()> {
        self.stop_producers.store(true, Ordering::Release);
        join_all(std::mem::take(&mut self.producers), "producer")
    }

    /// Stops the consumers.
    ///
    /// # Errors
    /// A consumer thread failed.
    pub fn stop_consumers(&mut self) -> anyhow::Result<()> {
        self.stop_consumers.store(true, Ordering::Release);
        join_all(std::mem::take(&mut self.consumers), "consumer")
    }

    /// Whether some worker thread has already ended (with an error).
    pub fn failed_worker(&mut self) -> Option<String> {
        for (kind, list) in [("producer", &self.producers), ("consumer", &self.consumers)] {
            if let Some(i) = list.iter().position(|h| h.is_finished()) {
                return Some(format!("{kind} {i} ended early"));
            }
        }
        None
    }

    /// The final phase: assigns every partition from the beginning and reads up to
    /// each one's high watermark (taken once, after the producers stopped).
    ///
    /// # Errors
    /// The consumer cannot be created; an incomplete read is not an error but a
    /// [`FinalRead`] with `complete == false`.
    pub fn final_read(&self, timeout: Duration) -> anyhow::Result<FinalRead> {
        final_read(&self.cfg, &self.recorder, &self.errors, timeout)
    }
}

/// Closes `consumer` (for a group member: leaves the group) on a thread of its own and
/// waits up to `CONSUMER_CLOSE_TIMEOUT` for it. librdkafka's close waits for the
/// group to let the member go, and once never returned: in a 10-minute split-all run
/// (seed 404) a member closing just after its coordinator had been killed and
/// restarted stayed in the close for the rest of the run, and the run could not
/// stop. A consumer that does not close in time is left to its thread, marked
/// abandoned so nothing it does later enters the history, and counted among the
/// client errors of the report.
fn close_bounded(consumer: BaseConsumer<ConsumerCtx>, errors: &ClientErrors) {
    let ctx = Arc::clone(consumer.context());
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let closer = std::thread::Builder::new()
        .name(format!("close-{}", ctx.process))
        .spawn(move || {
            drop(consumer);
            // The receiver may have given up already; nothing to tell then.
            let _ = done_tx.send(());
        });
    if let Err(e) = closer {
        errors.add(format!("consumer close: no thread: {e}"));
        return;
    }
    if done_rx.recv_timeout(CONSUMER_CLOSE_TIMEOUT).is_err() {
        ctx.abandoned.store(true, Ordering::Release);
        tracing::warn!(
            process = ctx.process,
            "consumer did not close within {CONSUMER_CLOSE_TIMEOUT:?}; abandoned"
        );
        errors.add(format!(
            "consumer close: not finished within {CONSUMER_CLOSE_TIMEOUT:?}, abandoned"
        ));
    }
}

fn join_all(handles: Vec<JoinHandle<anyhow::Result<()>>>, kind: &str) -> anyhow::Result<()> {
    let mut first_error = None;
    for (i, h) in handles.into_iter().enumerate() {
        let result = match h.join() {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("panicked")),
        };
        if let Err(e) = result {
            first_error.get_or_insert_with(|| anyhow::anyhow!("{kind} {i}: {e:#}"));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// What the final phase read.
#[derive(Debug, Clone, Default)]
pub struct FinalRead {
    /// Every partition was read up to its high watermark.
    pub complete: bool,
    /// Per partition: high watermark, and the next offset the read reached.
    pub partitions: BTreeMap<TopicPartition, (i64, i64)>,
    /// Records read.
    pub records: u64,
    /// Why it stopped short, if it did.
    pub problem: Option<String>,
}

fn final_read(
    cfg: &QueueConfig,
    recorder: &Arc<Recorder>,
    errors: &ClientErrors,
    timeout: Duration,
) -> anyhow::Result<FinalRead> {
    let deadline = Instant::now() + timeout;
    let process = FINAL_READER_PROCESS;
    let consumer: BaseConsumer<ConsumerCtx> =
        consumer_config(cfg, "keel-faults-final", ConsumerMode::Assign)
            .create_with_context(ConsumerCtx::new(
                recorder,
                &Arc::new(ClientErrors::default()),
                process,
                None,
            ))
            .context("creating the final reader")?;
    let tps = cfg.topic_partitions();
    let mut out = FinalRead::default();
    let mut high: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    for tp in &tps {
        loop {
            match consumer.fetch_watermarks(&tp.0, tp.1, QUERY_TIMEOUT) {
                Ok((_, hw)) => {
                    high.insert(tp.clone(), hw);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    errors.add(format!("final read watermarks: {e}"));
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    out.problem = Some(format!("no high watermark for {}/{}: {e}", tp.0, tp.1));
                    return Ok(out);
                }
            }
        }
    }
    let positions: Vec<_> = tps.iter().map(|tp| (tp.clone(), None)).collect();
    record_assign(recorder, process, &positions);
    consumer.assign(&assignment(&positions)?)?;
    let mut reached: BTreeMap<TopicPartition, i64> = tps.iter().map(|tp| (tp.clone(), 0)).collect();
    let done = |reached: &BTreeMap<TopicPartition, i64>| {
        high.iter()
            .all(|(tp, hw)| reached.get(tp).is_some_and(|r| r >= hw))
    };
    while !done(&reached) {
        if Instant::now() >= deadline {
            break;
        }
        let (records, error) = poll_op(&consumer, POLL_OP_TIME * 5, true);
        for r in &records {
            let tp = (r.topic.clone(), r.partition);
            let e = reached.entry(tp).or_default();
            *e = (*e).max(r.offset + 1);
        }
        out.records += records.len() as u64;
        if let Some(e) = error {
            errors.add(format!("final read: {e}"));
            if matches!(
                &e,
                KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)
            ) {
                // Seek back to where the read was and go on.
                let positions: Vec<_> = tps
                    .iter()
                    .map(|tp| (tp.clone(), reached.get(tp).copied().filter(|o| *o > 0)))
                    .collect();
                record_assign(recorder, process, &positions);
                consumer.assign(&assignment(&positions)?)?;
            }
        }
    }
    out.complete = done(&reached);
    for (tp, hw) in &high {
        out.partitions
            .insert(tp.clone(), (*hw, reached.get(tp).copied().unwrap_or(0)));
    }
    if !out.complete {
        let short: Vec<String> = out
            .partitions
            .iter()
            .filter(|(_, (hw, r))| r < hw)
            .map(|((t, p), (hw, r))| format!("{t}/{p} read to {r} of {hw}"))
            .collect();
        out.problem = Some(format!(
            "not read to the end within {timeout:?}: {}",
            short.join(", ")
        ));
    }
    close_bounded(consumer, errors);
    Ok(out)
}

/// Checks that every topic exists with `partitions` partitions, each with a leader,
/// as librdkafka sees the cluster.
///
/// # Errors
/// Metadata unavailable, or a topic missing or without leaders.
pub fn check_topics_ready(cfg: &QueueConfig) -> anyhow::Result<()> {
    let consumer: BaseConsumer = base_config(&cfg.bootstrap)
        .create()
        .context("creating a metadata client")?;
    for topic in &cfg.topics {
        let md = consumer.fetch_metadata(Some(topic), QUERY_TIMEOUT)?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            bail!("topic {topic} not in metadata");
        };
        if t.partitions().len() != cfg.partitions as usize
            || t.partitions().iter().any(|p| p.leader() < 0)
        {
            bail!(
                "topic {topic} not ready: {} partitions",
                t.partitions().len()
            );
        }
    }
    Ok(())
}
