//! ListOffsets (2): earliest, latest, max-timestamp, and offset-for-timestamp.
//!
//! Lookups by timestamp find the first batch whose max timestamp reaches the target
//! through the time index, then walk that one batch's records to find the exact one:
//! the only place where keel reads inside a stored batch. Stored batches come from
//! producers, so the walk trusts nothing in them: counts and lengths only bound loops
//! over the bytes, and a compressed batch is inflated within a bound.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use keel_storage::batch::{walk_records, BatchHeader, TimestampType, RECORD_BATCH_HEADER_BYTES};

use super::{respond, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::RequestContext;
use crate::replication::Partition;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 1, max: 8 };

/// Special timestamp: the next offset (high watermark / last stable offset).
pub const LATEST_TIMESTAMP: i64 = -1;
/// Special timestamp: the log start offset.
pub const EARLIEST_TIMESTAMP: i64 = -2;
/// Special timestamp: the record with the largest timestamp (v7+).
pub const MAX_TIMESTAMP: i64 = -3;
/// Special timestamp: the earliest offset on local storage (v8+); no tiering here.
pub const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;

/// Answers every partition.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: ListOffsetsRequest) -> Pending {
    let version = ctx.api_version;
    respond(ctx, async move {
        let image = broker.image();
        let topics = req
            .topics
            .into_iter()
            .map(|topic| {
                let name = topic.name.0.to_string();
                let partitions = topic
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let resp = ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_timestamp(-1)
                            .with_offset(-1);
                        let meta = image
                            .topic_by_name(&name)
                            .and_then(|t| t.partitions.get(&p.partition_index));
                        if meta.is_none() {
                            return resp
                                .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                        }
                        let Some(replica) = broker.replicas.get_by_name(&name, p.partition_index)
                        else {
                            return resp.with_error_code(ResponseError::NotLeaderOrFollower.code());
                        };
                        let role = replica.role();
                        if let Some(e) = errors::check_leadership(p.current_leader_epoch, role) {
                            return resp.with_error_code(e.code());
                        }
                        // A timestamp lookup reads and may inflate batches: off the
                        // async workers, as the other blocking reads.
                        let reads_batches = p.timestamp >= 0 || p.timestamp == MAX_TIMESTAMP;
                        let found = if reads_batches {
                            tokio::task::block_in_place(|| lookup(&replica, p.timestamp))
                        } else {
                            lookup(&replica, p.timestamp)
                        };
                        match found {
                            Ok(Some((offset, timestamp))) => {
                                let resp = resp.with_offset(offset).with_timestamp(timestamp);
                                // The leader epoch field exists from v4: the current
                                // epoch for the latest offset, else the epoch the
                                // found offset was written in (Kafka's
                                // `fetchOffsetByTimestamp`), which a client validates
                                // its position against after a leader change.
                                if version < 4 {
                                    resp
                                } else if p.timestamp == LATEST_TIMESTAMP {
                                    resp.with_leader_epoch(role.epoch())
                                } else {
                                    resp.with_leader_epoch(
                                        replica.log().epoch_for_offset(offset).unwrap_or(-1),
                                    )
                                }
                            }
                            Ok(None) => resp,
                            Err(e) => resp.with_error_code(e.code()),
                        }
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(topic.name)
                    .with_partitions(partitions)
            })
            .collect();
        ListOffsetsResponse::default().with_topics(topics)
    })
}

/// (offset, timestamp) for a ListOffsets timestamp, `None` when no record qualifies.
///
/// A new leader's high watermark may still be below the start of its epoch (its
/// followers have not fetched in the epoch yet), lower than the one the previous
/// leader published: the latest offset, and a timestamp found at or past the high
/// watermark, are then OFFSET_NOT_AVAILABLE (retriable), as in Kafka's
/// `Partition.fetchOffsetForTimestamp`, rather than an answer that goes backwards.
fn lookup(replica: &Partition, timestamp: i64) -> Result<Option<(i64, i64)>, ResponseError> {
    let hw = replica.high_watermark();
    let lagging = replica.epoch_start_offset().is_some_and(|start| start > hw);
    let not_yet = |found: Option<(i64, i64)>| match found {
        None if lagging => Err(ResponseError::OffsetNotAvailable),
        found => Ok(found),
    };
    match timestamp {
        LATEST_TIMESTAMP if lagging => Err(ResponseError::OffsetNotAvailable),
        LATEST_TIMESTAMP => Ok(Some((hw, -1))),
        EARLIEST_TIMESTAMP | EARLIEST_LOCAL_TIMESTAMP => Ok(Some((replica.log_start_offset(), -1))),
        MAX_TIMESTAMP => {
            let log_start = replica.log_start_offset();
            let found = replica
                .log()
                .find_batch_with_max_timestamp()
                .map_err(|e| errors::log_error(&e))?;
            not_yet(
                found
                    .and_then(|(_, batch)| max_timestamp_record(batch, log_start))
                    .filter(|(o, _)| *o < hw),
            )
        }
        t if t < 0 => Err(ResponseError::InvalidRequest),
        t => {
            // Kafka's FileRecords.searchForTimestamp: the first record at or past the
            // log start with a timestamp at or after `t`, looking on past a batch
            // whose header promised one its records do not hold.
            let log_start = replica.log_start_offset();
            let mut from = log_start;
            let mut found = None;
            for _ in 0..MAX_TIMESTAMP_LOOKUP_BATCHES {
                if from >= hw {
                    break;
                }
                let batch = replica
                    .log()
                    .find_batch_by_timestamp_from(t, from)
                    .map_err(|e| errors::log_error(&e))?;
                let Some((_, batch)) = batch else { break };
                let next = BatchHeader::parse(&batch).map_or(i64::MAX, |h| h.last_offset() + 1);
                found = first_record_at_or_after(batch, t, log_start);
                if found.is_some() || next <= from {
                    break;
                }
                from = next;
            }
            not_yet(found.filter(|(o, _)| *o < hw))
        }
    }
}

/// Most batches one timestamp lookup reads past the first candidate (each candidate's
/// header promises a matching record; only a batch whose header overstates its records'
/// timestamps fails that promise, so this is rarely more than one).
pub const MAX_TIMESTAMP_LOOKUP_BATCHES: usize = 64;

/// Largest size one batch may inflate to in a timestamp lookup. Producers store
/// compressed batches as they are, so a batch of `max.message.bytes` can inflate a
/// thousandfold or more (a decompression bomb); past this the lookup answers from the
/// batch's header instead of reading its records.
pub const MAX_DECOMPRESSED_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Inflated bytes all timestamp lookups in flight may hold together, so concurrent
/// lookups cannot multiply the bound above; a lookup that would exceed it answers
/// from the batch's header too.
pub const MAX_INFLATED_BYTES_IN_FLIGHT: usize = 128 * 1024 * 1024;
/// log2 of the largest zstd window a lookup decodes with (the decoder allocates it).
const ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// Bytes inflated per read.
const INFLATE_CHUNK_BYTES: usize = 64 * 1024;
/// Compression codec ids in a batch's attributes.
const GZIP: u8 = 1;
const SNAPPY: u8 = 2;
const LZ4: u8 = 3;
const ZSTD: u8 = 4;
/// Kafka's snappy (xerial framing): magic, then version and compatible version.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

/// Inflated bytes currently held by lookups (see [`MAX_INFLATED_BYTES_IN_FLIGHT`]).
static INFLATED_BYTES_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// One lookup's share of a pool of inflated bytes ([`INFLATED_BYTES_IN_FLIGHT`]),
/// given back when dropped.
struct InflateBudget {
    pool: &'static AtomicUsize,
    held: usize,
}

impl InflateBudget {
    fn new() -> Self {
        InflateBudget {
            pool: &INFLATED_BYTES_IN_FLIGHT,
            held: 0,
        }
    }

    /// Takes `bytes` more, or explains why not.
    fn take(&mut self, bytes: usize) -> Result<(), String> {
        if self.held + bytes > MAX_DECOMPRESSED_BATCH_BYTES {
            return Err(format!(
                "inflates past {MAX_DECOMPRESSED_BATCH_BYTES} bytes"
            ));
        }
        let before = self.pool.fetch_add(bytes, Ordering::AcqRel);
        if before + bytes > MAX_INFLATED_BYTES_IN_FLIGHT {
            self.pool.fetch_sub(bytes, Ordering::AcqRel);
            return Err(format!(
                "lookups in flight already hold {before} inflated bytes"
            ));
        }
        self.held += bytes;
        Ok(())
    }
}

impl Drop for InflateBudget {
    fn drop(&mut self) {
        self.pool.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// Reads `r` to its end within `budget`.
fn read_bounded(r: &mut dyn Read, budget: &mut InflateBudget) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; INFLATE_CHUNK_BYTES];
    loop {
        let n = r.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(out);
        }
        budget.take(n)?;
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Appends one raw snappy block to `out`, within `budget`.
fn snappy_block(block: &[u8], out: &mut Vec<u8>, budget: &mut InflateBudget) -> Result<(), String> {
    let len = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
    budget.take(len)?;
    let start = out.len();
    out.resize(start + len, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| e.to_string())?;
    out.truncate(start + written);
    Ok(())
}

/// Kafka's snappy: xerial-framed blocks (`[u32 length][raw block]…` after a header),
/// or one raw block, as the Java client reads either.
fn snappy(data: &[u8], budget: &mut InflateBudget) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    if !data.starts_with(XERIAL_MAGIC) {
        snappy_block(data, &mut out, budget)?;
        return Ok(out);
    }
    let mut rest = data
        .get(XERIAL_HEADER_BYTES..)
        .ok_or("short xerial header")?;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or("short xerial block length")?;
        let len = u32::from_be_bytes(*len) as usize;
        let block = tail.get(..len).ok_or("xerial block past the batch")?;
        snappy_block(block, &mut out, budget)?;
        rest = &tail[len..];
    }
    Ok(out)
}

/// A compressed batch's records, inflated within `budget`.
fn decompress(codec: u8, data: &[u8], budget: &mut InflateBudget) -> Result<Vec<u8>, String> {
    match codec {
        GZIP => read_bounded(&mut flate2::read::MultiGzDecoder::new(data), budget),
        SNAPPY => snappy(data, budget),
        LZ4 => read_bounded(
            &mut lz4::Decoder::new(data).map_err(|e| e.to_string())?,
            budget,
        ),
        ZSTD => {
            let mut d = zstd::stream::read::Decoder::new(data).map_err(|e| e.to_string())?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| e.to_string())?;
            read_bounded(&mut d, budget)
        }
        other => Err(format!("unknown compression codec {other}")),
    }
}

/// Calls `visit(offset, timestamp)` for the batch's records in order until it returns
/// `false`. Records are walked in place (or in their inflated copy), never collected:
/// nothing is allocated from a count or length in the batch.
fn scan(batch: &[u8], mut visit: impl FnMut(i64, i64) -> bool) -> Result<BatchHeader, String> {
    let header = BatchHeader::parse(batch).map_err(|e| e.to_string())?;
    let body = batch
        .get(RECORD_BATCH_HEADER_BYTES..header.total_bytes())
        .ok_or("batch shorter than its length")?;
    let mut budget = InflateBudget::new();
    let inflated;
    let records = match header.compression() {
        0 => body,
        codec => {
            inflated = decompress(codec, body, &mut budget)?;
            &inflated[..]
        }
    };
    let log_append_time = header.timestamp_type() == TimestampType::LogAppendTime;
    walk_records(records, header.records_count, |r| {
        let offset = header.base_offset + i64::from(r.offset_delta);
        // Under LogAppendTime every record carries the batch's append time.
        let timestamp = if log_append_time {
            header.max_timestamp
        } else {
            header.base_timestamp.wrapping_add(r.timestamp_delta)
        };
        visit(offset, timestamp)
    })
    .map_err(|e| e.to_string())?;
    Ok(header)
}

/// The record `pick` chooses while scanning the records at or past `min_offset` (the
/// log start: a batch may straddle it), or — for a batch that cannot be scanned (it
/// does not decode, or it inflates past the bound) — the batch's first offset at or
/// past `min_offset` and its max timestamp, the nearest answer its header gives.
fn pick_record(
    batch: &[u8],
    min_offset: i64,
    mut pick: impl FnMut(i64, i64, &mut Option<(i64, i64)>) -> bool,
) -> Option<(i64, i64)> {
    let mut found = None;
    match scan(batch, |o, t| o < min_offset || pick(o, t, &mut found)) {
        Ok(_) => found,
        Err(e) => {
            tracing::warn!("cannot read a batch's records for a timestamp lookup: {e}");
            BatchHeader::parse(batch)
                .ok()
                .filter(|h| h.last_offset() >= min_offset)
                .map(|h| (h.base_offset.max(min_offset), h.max_timestamp))
        }
    }
}

fn first_record_at_or_after(batch: Bytes, ts: i64, min_offset: i64) -> Option<(i64, i64)> {
    pick_record(&batch, min_offset, |o, t, found| {
        if t >= ts {
            *found = Some((o, t));
            return false;
        }
        true
    })
}

fn max_timestamp_record(batch: Bytes, min_offset: i64) -> Option<(i64, i64)> {
    // The first record holding the largest timestamp, as Kafka answers.
    pick_record(&batch, min_offset, |o, t, best| {
        if best.is_none_or(|(_, bt)| t > bt) {
            *best = Some((o, t));
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType as KTimestampType,
    };
    use keel_storage::testing::BatchBuilder;

    fn encoded(compression: Compression, timestamps: &[i64]) -> Bytes {
        let records: Vec<Record> = timestamps
            .iter()
            .enumerate()
            .map(|(i, ts)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: KTimestampType::Creation,
                offset: 100 + i as i64,
                // The encoder starts a new batch where offset - sequence changes.
                sequence: i as i32 - 1,
                timestamp: *ts,
                key: None,
                value: Some(Bytes::from(vec![b'v'; 200])),
                headers: IndexMap::new(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.freeze()
    }

    /// A new leader whose high watermark is still below the start of its epoch (its
    /// followers have not fetched in it yet) answers the latest offset, and a time
    /// whose record lies past the high watermark, OFFSET_NOT_AVAILABLE; once a follower
    /// fetches to the log end both are answered. Offsets written in the old epoch
    /// carry that epoch.
    #[test]
    fn a_new_leader_below_its_epoch_start_answers_offset_not_available() {
        use std::path::Path;

        use keel_storage::fs::{FaultyFs, Filesystem};
        use keel_storage::{Log, LogConfig};

        use crate::config::FlushPolicy;
        use crate::replication::partition::ReplicaSettings;

        const NODE: i32 = 1;
        const FOLLOWER: i32 = 2;
        const T0: i64 = 1_000;
        let fs: Arc<dyn Filesystem> = Arc::new(FaultyFs::new());
        let (log, _) =
            Log::open(fs, Path::new("/data/t-0"), LogConfig::default(), 0, 0).expect("open");
        let p = Partition::new(
            "t".into(),
            uuid::Uuid::nil(),
            0,
            log,
            0,
            ReplicaSettings {
                node_id: NODE,
                policy: FlushPolicy::Interval,
                lag_time_max_ms: 10_000,
                min_insync_replicas: 1,
            },
        );
        assert!(p.become_follower(FOLLOWER, 3));
        let batch = BatchBuilder::new(10, 10)
            .leader_epoch(3)
            .timestamp(T0)
            .build();
        p.append_as_follower(3, &batch, 0)
            .expect("follower")
            .expect("append");
        p.update_follower_high_watermark(3, 5);
        p.become_leader(4, 2, vec![NODE, FOLLOWER], vec![NODE, FOLLOWER], 0);
        assert_eq!((p.high_watermark(), p.epoch_start_offset()), (5, Some(10)));

        let not_available = Err(ResponseError::OffsetNotAvailable);
        assert_eq!(lookup(&p, LATEST_TIMESTAMP), not_available);
        assert_eq!(lookup(&p, T0 + 7), not_available);
        assert_eq!(lookup(&p, MAX_TIMESTAMP), not_available);
        assert_eq!(lookup(&p, T0 + 2), Ok(Some((2, T0 + 2))));
        assert_eq!(lookup(&p, EARLIEST_TIMESTAMP), Ok(Some((0, -1))));

        p.on_follower_fetch(FOLLOWER, 10, 0, 1);
        assert_eq!(p.high_watermark(), 10);
        assert_eq!(lookup(&p, LATEST_TIMESTAMP), Ok(Some((10, -1))));
        assert_eq!(lookup(&p, T0 + 7), Ok(Some((7, T0 + 7))));
        assert_eq!(lookup(&p, MAX_TIMESTAMP), Ok(Some((9, T0 + 9))));
        assert_eq!(lookup(&p, T0 + 10), Ok(None), "no record that late");
        let log = p.log();
        assert_eq!(log.epoch_for_offset(7), Some(3));
        assert_eq!(log.epoch_for_offset(10), Some(4));
    }

    #[test]
    fn lookups_read_every_codec() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let batch = encoded(codec, &[50, 10, 70, 70, 30]);
            assert_eq!(
                first_record_at_or_after(batch.clone(), 60, 0),
                Some((102, 70)),
                "{codec:?}"
            );
            assert_eq!(
                first_record_at_or_after(batch.clone(), 5, 0),
                Some((100, 50))
            );
            assert_eq!(first_record_at_or_after(batch.clone(), 71, 0), None);
            assert_eq!(
                max_timestamp_record(batch.clone(), 0),
                Some((102, 70)),
                "{codec:?}"
            );
            // Records below the log start (DeleteRecords inside the batch) are not
            // answers.
            assert_eq!(
                first_record_at_or_after(batch.clone(), 60, 103),
                Some((103, 70)),
                "{codec:?}"
            );
            assert_eq!(
                first_record_at_or_after(batch.clone(), 5, 104),
                Some((104, 30))
            );
            assert_eq!(
                max_timestamp_record(batch, 103),
                Some((103, 70)),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn a_batch_that_lies_about_its_records_is_answered_from_its_header() {
        let mut batch = BatchBuilder::new(1, 8)
            .base_offset(40)
            .timestamp(1_000)
            .build();
        batch[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let batch = Bytes::from(batch);
        assert_eq!(
            first_record_at_or_after(batch.clone(), 0, 0),
            Some((40, 1_000))
        );
        assert_eq!(max_timestamp_record(batch.clone(), 0), Some((40, 1_000)));
        assert_eq!(
            max_timestamp_record(batch, 41),
            None,
            "wholly below the log start"
        );
    }

    #[test]
    fn a_decompression_bomb_is_not_inflated_past_the_bound() {
        // 128 MiB of zeros in a few kilobytes.
        let zeros = vec![0u8; 1 << 20];
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        for _ in 0..128 {
            std::io::Write::write_all(&mut enc, &zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
        let err = decompress(ZSTD, &bomb, &mut InflateBudget::new()).unwrap_err();
        assert!(err.contains("inflates past"), "{err}");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for _ in 0..128 {
            std::io::Write::write_all(&mut enc, &zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(decompress(GZIP, &bomb, &mut InflateBudget::new())
            .unwrap_err()
            .contains("inflates past"));
        // A raw snappy block that claims 4 GiB.
        let claim = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert!(decompress(SNAPPY, &claim, &mut InflateBudget::new()).is_err());
    }

    #[test]
    fn concurrent_lookups_share_one_inflation_budget() {
        static POOL: AtomicUsize = AtomicUsize::new(0);
        let budget = || InflateBudget {
            pool: &POOL,
            held: 0,
        };
        let per_lookup = MAX_DECOMPRESSED_BATCH_BYTES;
        let mut held: Vec<InflateBudget> = Vec::new();
        for _ in 0..MAX_INFLATED_BYTES_IN_FLIGHT / per_lookup {
            let mut b = budget();
            b.take(per_lookup).unwrap();
            held.push(b);
        }
        let mut late = budget();
        assert!(late.take(1).unwrap_err().contains("in flight"));
        // A lookup that finishes gives its share back.
        held.pop();
        late.take(per_lookup).unwrap();
        drop(held);
        drop(late);
        assert_eq!(POOL.load(Ordering::Acquire), 0);
    }
}
