//! This node's identity on disk: an exclusive lock on the data directory and
//! `meta.properties` (cluster id and node id), written at first start and checked at
//! every start after.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use keel_storage::checkpoint;
use keel_storage::fs::StdFs;

/// Lock file in the data directory; held for the life of the process.
pub const LOCK_FILE: &str = ".lock";
/// Identity file in the data directory.
pub const META_PROPERTIES_FILE: &str = "meta.properties";
/// Version of `meta.properties` this code writes.
pub const META_PROPERTIES_VERSION: u32 = 1;

/// Problems with the data directory, each naming the path.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Another process holds the lock.
    #[error("data directory {0} is in use by another keel process (its lock file {0}/.lock is held); stop that process or choose another --data-dir")]
    InUse(PathBuf),
    /// The directory cannot be created, locked, read or written.
    #[error("data directory {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// `meta.properties` exists but cannot be parsed.
    #[error("data directory {path} is corrupt: {reason}; restore it from a replica or move it aside to start empty")]
    Corrupt { path: PathBuf, reason: String },
    /// The directory belongs to another node.
    #[error("data directory {path} belongs to node {on_disk}, but this node is {configured} (node.id); use that node's own directory")]
    NodeMismatch {
        path: PathBuf,
        on_disk: i32,
        configured: i32,
    },
}

/// A locked data directory and the identity stored in it.
pub struct NodeIdentity {
    /// Cluster id.
    pub cluster_id: String,
    /// Node id.
    pub node_id: i32,
    _lock: File,
}

/// Locks `data_dir` (creating it if needed) and reads or writes its `meta.properties`.
///
/// # Errors
/// The directory is in use, unreadable, corrupt, or another node's.
pub fn prepare(data_dir: &Path, node_id: i32) -> Result<NodeIdentity, IdentityError> {
    let io = |e: std::io::Error| IdentityError::Io {
        path: data_dir.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let lock_path = data_dir.join(LOCK_FILE);
    let mut lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(IdentityError::InUse(data_dir.to_path_buf()))
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let _ = lock.set_len(0);
    let _ = writeln!(lock, "{}", std::process::id());

    let path = data_dir.join(META_PROPERTIES_FILE);
    let corrupt = |reason: String| IdentityError::Corrupt {
        path: data_dir.to_path_buf(),
        reason,
    };
    match checkpoint::read_file(&StdFs, &path).map_err(io)? {
        Some(bytes) => {
            let text = String::from_utf8(bytes)
                .map_err(|_| corrupt("meta.properties is not text".into()))?;
            let props = parse_properties(&text);
            let cluster_id = props
                .get("cluster.id")
                .filter(|c| !c.is_empty())
                .ok_or_else(|| corrupt("meta.properties has no cluster.id".into()))?
                .clone();
            let on_disk: i32 = props
                .get("node.id")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| corrupt("meta.properties has no valid node.id".into()))?;
            if on_disk != node_id {
                return Err(IdentityError::NodeMismatch {
                    path: data_dir.to_path_buf(),
                    on_disk,
                    configured: node_id,
                });
            }
            Ok(NodeIdentity {
                cluster_id,
                node_id,
                _lock: lock,
            })
        }
        None => {
            let cluster_id = new_cluster_id();
            let text = format!(
                "#keel node identity; do not edit\nversion={META_PROPERTIES_VERSION}\ncluster.id={cluster_id}\nnode.id={node_id}\n"
            );
            checkpoint::write_atomic(&StdFs, &path, text.as_bytes()).map_err(io)?;
            tracing::info!(cluster_id, node_id, dir = %data_dir.display(), "formatted new data directory");
            Ok(NodeIdentity {
                cluster_id,
                node_id,
                _lock: lock,
            })
        }
    }
}

/// A new cluster id: 16 random bytes in URL-safe base64, as Kafka makes them.
pub fn new_cluster_id() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

fn parse_properties(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_process_on_the_same_dir_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let first = prepare(dir.path(), 1).unwrap();
        let err = prepare(dir.path(), 1).err().unwrap();
        assert!(matches!(err, IdentityError::InUse(_)));
        assert!(err.to_string().contains(&dir.path().display().to_string()));
        drop(first);
        let again = prepare(dir.path(), 1).unwrap();
        assert_eq!(again.node_id, 1);
    }

    #[test]
    fn identity_survives_restart_and_refuses_another_node() {
        let dir = tempfile::tempdir().unwrap();
        let id = prepare(dir.path(), 3).unwrap().cluster_id;
        assert_eq!(id.len(), 22);
        assert_eq!(prepare(dir.path(), 3).unwrap().cluster_id, id);
        assert!(matches!(
            prepare(dir.path(), 4),
            Err(IdentityError::NodeMismatch { on_disk: 3, .. })
        ));
    }

    #[test]
    fn corrupt_meta_properties_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(META_PROPERTIES_FILE), "garbage\n").unwrap();
        let err = prepare(dir.path(), 1).err().unwrap();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
    }
}
