//! `keel-bench`: produce and consume benchmarks against any Kafka-compatible broker,
//! through librdkafka (the `rdkafka` crate), in the spirit of Kafka's
//! `kafka-producer-perf-test` / `kafka-consumer-perf-test` and librdkafka's
//! `rdkafka_performance`.
//!
//! ```text
//! keel-bench produce --bootstrap-server 127.0.0.1:9092 --topic bench --records 10000000 \
//!     --record-size 100 --partitions 1 --acks 1 --linger-ms 5 --batch-size 1000000
//! keel-bench consume --bootstrap-server 127.0.0.1:9092 --topic bench --records 10000000
//! ```
//!
//! Latency: for produce, from the moment librdkafka accepted the record (`send`) to its
//! delivery report, measured on one record in 16; for consume, end to end, from the record's CreateTime timestamp
//! (set by the producer's librdkafka when it accepted the record, millisecond
//! resolution) to the moment the consumer's application receives it. When the records
//! were produced long before the consume run, that is their age, not a latency.
//!
//! `--json` adds one machine-readable line, which `tests/bench/run.sh` parses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use keel_tests::latency::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::bindings as rdsys;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// How long topic creation and metadata propagation may take.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `flush` may wait for the last delivery reports.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(300);
/// Wait for queue space when librdkafka's local queue is full.
const QUEUE_FULL_POLL: Duration = Duration::from_millis(1);
/// Serve delivery reports after this many sends even when the queue has room.
const SENDS_PER_POLL: u64 = 1024;
/// The latency of one record in this many is measured (as Kafka's producer perf test
/// samples): reading the clock for every record costs the client more than it
/// costs the broker to store it.
const LATENCY_SAMPLE_EVERY: u64 = 16;
/// Delivery opaque of a record whose latency is not measured.
const NOT_SAMPLED: usize = 0;
/// Default bound on the producer's local queue (librdkafka's default is 100,000).
const DEFAULT_QUEUE_BUFFERING_MAX_MESSAGES: u64 = 1_000_000;
/// A consumer that receives nothing for this long gives up.
const CONSUME_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one consumer poll blocks, in milliseconds.
const CONSUME_POLL_MS: i32 = 100;
/// fetch.queue.backoff.ms of the consumer (librdkafka's default is 1000).
const CONSUME_FETCH_QUEUE_BACKOFF_MS: u64 = 10;
/// Records taken from librdkafka per call.
const CONSUME_BATCH_RECORDS: usize = 10_000;
/// Decimal megabyte, as Kafka's perf tools report MB/s.
const BYTES_PER_MB: f64 = 1_000_000.0;

#[derive(Parser)]
#[command(
    name = "keel-bench",
    about = "Produce/consume benchmark through librdkafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send records as fast as the producer can, and report throughput and latency.
    Produce(ProduceArgs),
    /// Read records from the beginning of every partition as fast as possible.
    Consume(ConsumeArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// A broker to bootstrap from.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_server: String,
    /// The topic.
    #[arg(long, default_value = "keel-bench")]
    topic: String,
    /// Records to send or read (in total, over all producers).
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Extra librdkafka property; repeatable (like rdkafka_performance's -X).
    #[arg(short = 'X', long = "prop", value_name = "KEY=VALUE")]
    props: Vec<String>,
    /// Also print one JSON line with every figure.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    /// Bytes of each record's value (no key).
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Partitions to create the topic with, if it does not exist.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Replication factor to create the topic with, if it does not exist.
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    /// acks: 0, 1 or all (-1).
    #[arg(long, default_value = "1")]
    acks: String,
    /// linger.ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// batch.size in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    batch_size: u64,
    /// Producer instances, each on its own thread with its own connections.
    #[arg(long, default_value_t = 1)]
    producers: u64,
    /// compression.codec.
    #[arg(long, default_value = "none")]
    compression: String,
}

#[derive(Args)]
struct ConsumeArgs {
    #[command(flatten)]
    common: Common,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Produce(a) => produce(a),
        Command::Consume(a) => consume(a),
    }
}

fn apply_props(config: &mut ClientConfig, props: &[String]) -> anyhow::Result<()> {
    for p in props {
        let Some((k, v)) = p.split_once('=') else {
            bail!("-X {p}: expected KEY=VALUE");
        };
        config.set(k, v);
    }
    Ok(())
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// Figures of one run, printed as text and optionally as JSON.
struct Report {
    mode: &'static str,
    records: u64,
    bytes: u64,
    elapsed: Duration,
    latency: Histogram,
    latency_kind: &'static str,
    errors: u64,
}

impl Report {
    fn print(&self, json: bool, extra: serde_json::Value) {
        let secs = self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let rps = self.records as f64 / secs;
        let mbps = self.bytes as f64 / secs / BYTES_PER_MB;
        let ms = |q: f64| self.latency.quantile(q) as f64 / 1000.0;
        println!(
            "{} {} records ({} value bytes) in {:.2} s: {:.0} records/s, {:.2} MB/s; \
             {} latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {} errors",
            self.mode,
            self.records,
            self.bytes,
            secs,
            rps,
            mbps,
            self.latency_kind,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            ms(1.0),
            self.errors
        );
        if json {
            let mut v = serde_json::json!({
                "mode": self.mode,
                "records": self.records,
                "value_bytes": self.bytes,
                "seconds": secs,
                "records_per_sec": rps,
                "mb_per_sec": mbps,
                "latency": self.latency_kind,
                "latency_p50_ms": ms(0.5),
                "latency_p99_ms": ms(0.99),
                "latency_p999_ms": ms(0.999),
                "latency_max_ms": ms(1.0),
                "errors": self.errors,
            });
            if let (Some(map), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
                map.extend(more);
            }
            println!("{v}");
        }
    }
}

/// Creates the topic unless it exists, then waits until every partition has a leader.
fn ensure_topic(common: &Common, partitions: i32, replication_factor: i32) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &common.bootstrap_server);
    let admin: AdminClient<DefaultClientContext> = config.create().context("admin client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let topic = NewTopic::new(
        &common.topic,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
    let opts = AdminOptions::new().operation_timeout(Some(TOPIC_READY_TIMEOUT));
    let results = runtime.block_on(admin.create_topics([&topic], &opts))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic {t}: {e}"),
        }
    }
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    loop {
        let md = admin
            .inner()
            .fetch_metadata(Some(&common.topic), Duration::from_secs(5))?;
        let ready = md.topics().iter().any(|t| {
            t.name() == common.topic
                && t.error().is_none()
                && !t.partitions().is_empty()
                && t.partitions().iter().all(|p| p.leader() >= 0)
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("topic {} has no leader for every partition", common.topic);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Counts deliveries and records the latency of sampled records; a sampled record's
/// opaque is 1 + its send time in nanoseconds since `start`, others carry `NOT_SAMPLED`.
struct DeliveryStats {
    start: Instant,
    latency: Histogram,
    delivered: AtomicU64,
    errors: AtomicU64,
}

impl ClientContext for DeliveryStats {}

impl ProducerContext for DeliveryStats {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: usize) {
        match result {
            Ok(_) => {
                if sent != NOT_SAMPLED {
                    let now_ns = self.start.elapsed().as_nanos() as u64;
                    let sent_ns = (sent - 1) as u64;
                    self.latency.record(now_ns.saturating_sub(sent_ns) / 1000);
                }
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("keel-bench: delivery failed: {e}");
                }
            }
        }
    }
}

fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let acks = match args.acks.as_str() {
        "0" | "1" => args.acks.clone(),
        "all" | "-1" => "all".to_string(),
        other => bail!("--acks {other}: expected 0, 1 or all"),
    };
    ensure_topic(common, args.partitions, args.replication_factor)?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &common.bootstrap_server)
        .set("acks", &acks)
        .set("linger.ms", args.linger_ms.to_string())
        .set("batch.size", args.batch_size.to_string())
        .set("compression.codec", &args.compression)
        .set(
            "queue.buffering.max.messages",
            DEFAULT_QUEUE_BUFFERING_MAX_MESSAGES.to_string(),
        );
    apply_props(&mut config, &common.props)?;

    let start = Instant::now();
    let producers = args.producers.max(1);
    let payload: Arc<Vec<u8>> = Arc::new(
        (0..args.record_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect(),
    );
    let mut threads = Vec::new();
    for p in 0..producers {
        let share = common.records / producers + u64::from(p < common.records % producers);
        let config = config.clone();
        let topic = common.topic.clone();
        let payload = Arc::clone(&payload);
        threads.push(std::thread::spawn(move || {
            produce_one(&config, &topic, share, &payload, start)
        }));
    }
    let mut stats = Vec::new();
    for t in threads {
        match t.join() {
            Ok(r) => stats.push(r?),
            Err(_) => bail!("a producer thread panicked"),
        }
    }
    let elapsed = start.elapsed();
    let latency = Histogram::new();
    let mut delivered = 0;
    let mut errors = 0;
    for s in &stats {
        latency.merge(&s.latency);
        delivered += s.delivered.load(Ordering::Relaxed);
        errors += s.errors.load(Ordering::Relaxed);
    }
    Report {
        mode: "produce",
        records: delivered,
        bytes: delivered * args.record_size as u64,
        elapsed,
        latency,
        latency_kind: "send-to-delivery-report",
        errors,
    }
    .print(
        common.json,
        serde_json::json!({
            "record_size": args.record_size,
            "partitions": args.partitions,
            "acks": acks,
            "linger_ms": args.linger_ms,
            "batch_size": args.batch_size,
            "producers": producers,
        }),
    );
    if errors > 0 {
        bail!("{errors} records were not delivered");
    }
    Ok(())
}

fn produce_one(
    config: &ClientConfig,
    topic: &str,
    records: u64,
    payload: &[u8],
    start: Instant,
) -> anyhow::Result<Arc<DeliveryStats>> {
    let producer: BaseProducer<DeliveryStats> = config
        .create_with_context(DeliveryStats {
            start,
            latency: Histogram::new(),
            delivered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
        .context("producer")?;
    let stats = Arc::clone(producer.context());
    let topic = TopicHandle::new(&producer, topic)?;
    for i in 0..records {
        let sampled = i % LATENCY_SAMPLE_EVERY == 0;
        loop {
            let opaque = if sampled {
                start.elapsed().as_nanos() as usize + 1
            } else {
                NOT_SAMPLED
            };
            match topic.send(payload, opaque) {
                Ok(()) => break,
                Err(RDKafkaErrorCode::QueueFull) => producer.poll(QUEUE_FULL_POLL),
                Err(e) => bail!("send: {e}"),
            }
        }
        if i % SENDS_PER_POLL == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    drop(topic);
    producer.flush(FLUSH_TIMEOUT).context("flush")?;
    Ok(stats)
}

fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &common.bootstrap_server)
        // librdkafka's assign() needs a group id; it is never joined or committed to.
        .set("group.id", "keel-bench-unused")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // librdkafka stops fetching while its local queue holds queued.min.messages and
        // then waits fetch.queue.backoff.ms (default 1000) before looking again: a
        // consumer faster than that default would sit idle most of each second.
        .set(
            "fetch.queue.backoff.ms",
            CONSUME_FETCH_QUEUE_BACKOFF_MS.to_string(),
        );
    apply_props(&mut config, &common.props)?;
    let consumer: BaseConsumer = config.create().context("consumer")?;
    let md = consumer
        .fetch_metadata(Some(&common.topic), TOPIC_READY_TIMEOUT)
        .context("metadata")?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == common.topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {} has no partitions", common.topic);
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&common.topic, *p, Offset::Beginning)?;
    }
    let start = Instant::now();
    consumer.assign(&tpl)?;
    let latency = Histogram::new();
    let mut received = 0u64;
    let mut bytes = 0u64;
    let mut errors = 0u64;
    let mut last_progress = Instant::now();
    let queue = ConsumerQueue::of(&consumer)?;
    let mut batch = Vec::with_capacity(CONSUME_BATCH_RECORDS);
    while received < common.records {
        queue.next_batch(&mut batch);
        if batch.is_empty() {
            if last_progress.elapsed() > CONSUME_IDLE_TIMEOUT {
                bail!("received nothing for {CONSUME_IDLE_TIMEOUT:?} after {received} records");
            }
            continue;
        }
        // One clock read per batch: a batch is served in microseconds, far below the
        // timestamps' millisecond resolution.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for m in batch.drain(..) {
            match m {
                Ok((len, timestamp_ms)) => {
                    received += 1;
                    bytes += len as u64;
                    if timestamp_ms >= 0 {
                        latency.record(micros(Duration::from_millis(
                            now_ms.saturating_sub(timestamp_ms).max(0) as u64,
                        )));
                    }
                }
                Err(e) => {
                    errors += 1;
                    eprintln!("keel-bench: consume error: {e}");
                }
            }
        }
        last_progress = Instant::now();
    }
    let elapsed = start.elapsed();
    Report {
        mode: "consume",
        records: received,
        bytes,
        elapsed,
        latency,
        latency_kind: "end-to-end-from-record-timestamp",
        errors,
    }
    .print(
        common.json,
        serde_json::json!({ "partitions": partitions.len() }),
    );
    Ok(())
}

/// The consumer's message queue, read in batches through librdkafka's C API
/// (`rd_kafka_consume_batch_queue`), as `rdkafka_performance` does: the `rdkafka`
/// crate's per-message `poll` costs several clock reads and an event per record, which
/// would make the client, not the broker, the limit of a consume benchmark.
struct ConsumerQueue<'a> {
    queue: *mut rdsys::rd_kafka_queue_t,
    /// The queue must not outlive the consumer.
    _consumer: std::marker::PhantomData<&'a BaseConsumer>,
}

impl<'a> ConsumerQueue<'a> {
    fn of(consumer: &'a BaseConsumer) -> anyhow::Result<Self> {
        // SAFETY: the native handle is valid while `consumer` lives, which the lifetime
        // ties this queue to; the returned queue is owned and destroyed in `drop`.
        let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        if queue.is_null() {
            bail!("librdkafka returned no consumer queue");
        }
        Ok(Self {
            queue,
            _consumer: std::marker::PhantomData,
        })
    }

    /// Waits up to `CONSUME_POLL_MS` and appends the (value length, CreateTime ms or -1)
    /// of each record received, or its error, to `out`.
    fn next_batch(&self, out: &mut Vec<Result<(usize, i64), String>>) {
        let mut messages: [*mut rdsys::rd_kafka_message_t; CONSUME_BATCH_RECORDS] =
            [std::ptr::null_mut(); CONSUME_BATCH_RECORDS];
        // SAFETY: `messages` has room for the count passed; librdkafka fills the first
        // `n` entries with messages we own and destroy below, each exactly once.
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue,
                CONSUME_POLL_MS,
                messages.as_mut_ptr(),
                CONSUME_BATCH_RECORDS,
            )
        };
        for &m in messages.iter().take(n.max(0) as usize) {
            // SAFETY: `m` is a valid message until destroyed at the end of this block.
            unsafe {
                let msg = &*m;
                if msg.err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    let mut kind =
                        rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
                    let ts = rdsys::rd_kafka_message_timestamp(m, &mut kind);
                    let create_time =
                        kind == rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME;
                    out.push(Ok((msg.len, if create_time { ts } else { -1 })));
                } else {
                    out.push(Err(format!("{:?}", msg.err)));
                }
                rdsys::rd_kafka_message_destroy(m);
            }
        }
    }
}

impl Drop for ConsumerQueue<'_> {
    fn drop(&mut self) {
        // SAFETY: the queue was obtained in `of` and is destroyed once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue) }
    }
}

/// A librdkafka topic handle for `rd_kafka_produce`, as `rdkafka_performance` sends:
/// the `rdkafka` crate's `send` looks the topic up by name (a C string allocation and
/// a locked lookup) for every record, which would make the client the limit. Delivery
/// reports still go through the crate's `ProducerContext::delivery`, which receives the
/// opaque passed here.
struct TopicHandle<'a> {
    topic: *mut rdsys::rd_kafka_topic_t,
    /// The handle must not outlive the producer.
    _producer: std::marker::PhantomData<&'a BaseProducer<DeliveryStats>>,
}

impl<'a> TopicHandle<'a> {
    fn new(producer: &'a BaseProducer<DeliveryStats>, name: &str) -> anyhow::Result<Self> {
        let cname = std::ffi::CString::new(name).context("topic name")?;
        // SAFETY: the native handle is valid while `producer` lives (tied by the
        // lifetime); librdkafka copies the name; the handle is destroyed in `drop`.
        let topic = unsafe {
            rdsys::rd_kafka_topic_new(
                producer.client().native_ptr(),
                cname.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        if topic.is_null() {
            bail!("librdkafka refused topic {name}");
        }
        Ok(Self {
            topic,
            _producer: std::marker::PhantomData,
        })
    }

    /// Enqueues one record (value only, copied by librdkafka, partition chosen by the
    /// configured partitioner).
    fn send(&self, payload: &[u8], opaque: usize) -> Result<(), RDKafkaErrorCode> {
        // SAFETY: `payload` is valid for the call and copied (RD_KAFKA_MSG_F_COPY);
        // the opaque is a plain integer handed back to the delivery callback.
        let rc = unsafe {
            rdsys::rd_kafka_produce(
                self.topic,
                rdkafka::producer::PARTITION_UA,
                rdsys::RD_KAFKA_MSG_F_COPY,
                payload.as_ptr() as *mut std::ffi::c_void,
                payload.len(),
                std::ptr::null(),
                0,
                opaque as *mut std::ffi::c_void,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: reads librdkafka's thread-local last error, set by the failed call.
        let err = unsafe { rdsys::rd_kafka_last_error() };
        Err(err.into())
    }
}

impl Drop for TopicHandle<'_> {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once, while the producer still lives.
        unsafe { rdsys::rd_kafka_topic_destroy(self.topic) }
    }
}
