//! The log directory: where partition directories live, how they are named, and the
//! per-directory checkpoint of recovery points.
//!
//! `<data>/<topic>-<partition>/` holds a partition's segments and a `partition.metadata`
//! file naming its topic id, so a directory left by a deleted topic is never mistaken
//! for a newer topic of the same name.

use std::path::{Path, PathBuf};

use keel_storage::checkpoint;
use keel_storage::fs::Filesystem;
use uuid::Uuid;

/// File in the log directory holding every partition's recovery point.
pub const RECOVERY_POINT_CHECKPOINT_FILE: &str = "recovery-point-offset-checkpoint";
/// File in the log directory holding every partition's high watermark.
pub const REPLICATION_OFFSET_CHECKPOINT_FILE: &str = "replication-offset-checkpoint";
/// File in a partition directory naming its topic id.
pub const PARTITION_METADATA_FILE: &str = "partition.metadata";

/// Directory of one partition.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

/// Splits a directory name `<topic>-<partition>` (the topic may contain `-`).
pub fn parse_partition_dir_name(name: &str) -> Option<(String, i32)> {
    let (topic, partition) = name.rsplit_once('-')?;
    if topic.is_empty() || partition.is_empty() || !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((topic.to_string(), partition.parse().ok()?))
}

/// Writes `partition.metadata` (Kafka's format: version and topic id) atomically.
///
/// # Errors
/// I/O errors.
pub fn write_partition_metadata(
    fs: &dyn Filesystem,
    dir: &Path,
    topic_id: Uuid,
) -> std::io::Result<()> {
    let text = format!("version: 0\ntopic_id: {topic_id}\n");
    checkpoint::write_atomic(fs, &dir.join(PARTITION_METADATA_FILE), text.as_bytes())
}

/// Reads the topic id from `partition.metadata`, `None` if missing or unreadable.
pub fn read_partition_metadata(fs: &dyn Filesystem, dir: &Path) -> Option<Uuid> {
    let bytes = checkpoint::read_file(fs, &dir.join(PARTITION_METADATA_FILE)).ok()??;
    let text = String::from_utf8(bytes).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("topic_id:"))
        .and_then(|id| Uuid::parse_str(id.trim()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_with_dashes_parse_from_the_last_dash() {
        assert_eq!(
            parse_partition_dir_name("my-topic-12"),
            Some(("my-topic".into(), 12))
        );
        assert_eq!(parse_partition_dir_name("t-0"), Some(("t".into(), 0)));
        assert_eq!(parse_partition_dir_name("meta"), None);
        assert_eq!(parse_partition_dir_name("t-"), None);
        assert_eq!(parse_partition_dir_name("-3"), None);
        assert_eq!(parse_partition_dir_name("t-1x"), None);
    }

    #[test]
    fn partition_metadata_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let fs = keel_storage::fs::StdFs;
        let id = Uuid::new_v4();
        write_partition_metadata(&fs, dir.path(), id).unwrap();
        assert_eq!(read_partition_metadata(&fs, dir.path()), Some(id));
    }
}
