//! The corrupt-tail fault: damage the end of a partition's last segment on a stopped
//! node, only above the node's recovery point.
//!
//! A broker re-validates every batch above its recovery point on start and cuts the
//! log at the first bad one; below the recovery point damage is an error it reports
//! and refuses to start on (docs/ARCHITECTURE.md, "Storage"). Damage below the
//! recovery point is bit rot, which neither keel nor Kafka claims to survive, so the
//! fault stays above it: what it models is a torn or scribbled tail after a crash.
//! Finding batch boundaries needs only the first 12 bytes of each RecordBatch
//! (baseOffset, batchLength).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::rng::Rng;

/// Bytes of a RecordBatch before its `batchLength` field ends.
const BATCH_LENGTH_END: usize = 12;
/// Most bytes one scribble overwrites.
const MAX_SCRIBBLE_BYTES: usize = 1024;
/// Most junk bytes appended.
const MAX_JUNK_BYTES: usize = 256;
/// Name of the per-log-directory recovery point checkpoint.
pub const RECOVERY_POINT_FILE: &str = "recovery-point-offset-checkpoint";

/// One batch's place in a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBounds {
    /// The batch's base offset.
    pub base_offset: i64,
    /// Its first byte.
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
}

/// The whole batches at the start of `segment`, stopping at the first that is cut
/// short or framed impossibly.
pub fn batches(segment: &[u8]) -> Vec<BatchBounds> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + BATCH_LENGTH_END <= segment.len() {
        let mut base = [0u8; 8];
        base.copy_from_slice(&segment[at..at + 8]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&segment[at + 8..at + 12]);
        let length = i32::from_be_bytes(len);
        if length <= 0 {
            break;
        }
        let end = at + BATCH_LENGTH_END + length as usize;
        if end > segment.len() {
            break;
        }
        out.push(BatchBounds {
            base_offset: i64::from_be_bytes(base),
            start: at,
            end,
        });
        at = end;
    }
    out
}

/// What to do to a segment's tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// XOR `len` bytes from `at` with 0x5a.
    Scribble {
        /// First byte damaged.
        at: usize,
        /// Bytes damaged.
        len: usize,
    },
    /// Cut the file to `len` bytes (inside a batch: a torn write).
    Truncate {
        /// New length.
        len: usize,
    },
    /// Append `len` bytes of junk.
    Junk {
        /// Bytes appended.
        len: usize,
    },
}

impl Damage {
    /// Applies the damage to `bytes`.
    pub fn apply(&self, bytes: &mut Vec<u8>, rng: &mut Rng) {
        match *self {
            Damage::Scribble { at, len } => {
                for b in &mut bytes[at..at + len] {
                    *b ^= 0x5a;
                }
            }
            Damage::Truncate { len } => bytes.truncate(len),
            Damage::Junk { len } => bytes.extend((0..len).map(|_| rng.next_u64() as u8)),
        }
    }

    /// A short description for the history.
    pub fn describe(&self) -> String {
        match self {
            Damage::Scribble { at, len } => format!("scribbled over {len} bytes at byte {at}"),
            Damage::Truncate { len } => format!("cut to {len} bytes"),
            Damage::Junk { len } => format!("appended {len} junk bytes"),
        }
    }
}

/// Chooses damage confined to the batches at or above `recovery_point` (an offset) of
/// a segment whose batches are `bounds` and whose length is `len`; `None` when no
/// batch lies at or above it. Junk after the last batch is always safe.
pub fn plan(
    bounds: &[BatchBounds],
    len: usize,
    recovery_point: i64,
    rng: &mut Rng,
) -> Option<Damage> {
    let first = bounds
        .iter()
        .position(|b| b.base_offset >= recovery_point)?;
    let from = bounds[first].start;
    let span = len - from;
    if span == 0 {
        return None;
    }
    Some(match rng.below(3) {
        0 => {
            let n = 1 + rng.below(span.min(MAX_SCRIBBLE_BYTES));
            let at = from + rng.below(span - n + 1);
            Damage::Scribble { at, len: n }
        }
        1 => Damage::Truncate {
            len: from + rng.below(span),
        },
        _ => Damage::Junk {
            len: 1 + rng.below(MAX_JUNK_BYTES),
        },
    })
}

/// The recovery point of `topic`-`partition` in `data_dir`'s checkpoint (0 if absent).
///
/// # Errors
/// A malformed checkpoint file.
pub fn recovery_point(data_dir: &Path, topic: &str, partition: i32) -> anyhow::Result<i64> {
    let entries = keel_storage::checkpoint::read_offsets(
        &keel_storage::fs::StdFs,
        &data_dir.join(RECOVERY_POINT_FILE),
    )?;
    Ok(entries
        .into_iter()
        .find(|(t, p, _)| t == topic && *p == partition)
        .map_or(0, |(_, _, o)| o))
}

/// The last segment file of `topic`-`partition` in `data_dir`.
///
/// # Errors
/// The partition directory is missing or holds no segment.
pub fn last_segment(data_dir: &Path, topic: &str, partition: i32) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join(format!("{topic}-{partition}"));
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    match logs.pop() {
        Some(p) => Ok(p),
        None => bail!("{} holds no segment", dir.display()),
    }
}

/// Damages the last segment of `topic`-`partition` on a stopped node's `data_dir`
/// above its recovery point; returns what was done, or `None` if nothing lies above it.
///
/// # Errors
/// Unreadable files.
pub fn corrupt_tail(
    data_dir: &Path,
    topic: &str,
    partition: i32,
    rng: &mut Rng,
) -> anyhow::Result<Option<String>> {
    let rp = recovery_point(data_dir, topic, partition)?;
    let segment = last_segment(data_dir, topic, partition)?;
    let mut bytes = std::fs::read(&segment).with_context(|| segment.display().to_string())?;
    let bounds = batches(&bytes);
    let Some(damage) = plan(&bounds, bytes.len(), rp, rng) else {
        return Ok(None);
    };
    damage.apply(&mut bytes, rng);
    std::fs::write(&segment, &bytes).with_context(|| segment.display().to_string())?;
    let name = segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Some(format!(
        "{topic}-{partition}/{name} {} (recovery point {rp}, {} batches)",
        damage.describe(),
        bounds.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake segment of batches with the given base offsets and body lengths.
    fn segment(batches: &[(i64, usize)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (base, body) in batches {
            out.extend_from_slice(&base.to_be_bytes());
            out.extend_from_slice(&(*body as i32).to_be_bytes());
            out.extend(std::iter::repeat_n(0xab, *body));
        }
        out
    }

    #[test]
    fn batch_bounds_stop_at_a_torn_batch() {
        let mut bytes = segment(&[(0, 50), (3, 20), (7, 100)]);
        bytes.truncate(bytes.len() - 10);
        assert_eq!(
            batches(&bytes),
            vec![
                BatchBounds {
                    base_offset: 0,
                    start: 0,
                    end: 62
                },
                BatchBounds {
                    base_offset: 3,
                    start: 62,
                    end: 94
                },
            ]
        );
    }

    #[test]
    fn damage_never_touches_bytes_below_the_recovery_point() {
        let bytes = segment(&[(0, 50), (3, 20), (7, 100), (9, 40)]);
        let bounds = batches(&bytes);
        let protected = bounds[2].start; // batches 0 and 3 are below recovery point 7
        for seed in 0..500 {
            let mut rng = Rng::new(seed);
            let damage = plan(&bounds, bytes.len(), 7, &mut rng).expect("batches above");
            let mut damaged = bytes.clone();
            damage.apply(&mut damaged, &mut rng);
            assert_eq!(
                &damaged[..protected],
                &bytes[..protected],
                "seed {seed}: {damage:?}"
            );
            assert_ne!(damaged, bytes, "seed {seed}: {damage:?} changed nothing");
        }
    }

    #[test]
    fn nothing_above_the_recovery_point_means_no_damage() {
        let bytes = segment(&[(0, 50), (3, 20)]);
        assert_eq!(
            plan(&batches(&bytes), bytes.len(), 5, &mut Rng::new(1)),
            None
        );
    }
}
