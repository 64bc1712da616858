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
    /// The directory belongs to another cluster.
    #[error("data directory {path} belongs to cluster {on_disk}, but the metadata quorum is cluster {cluster}; a node cannot move between clusters")]
    ClusterMismatch {
        path: PathBuf,
        on_disk: String,
        cluster: String,
    },
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
    /// Cluster id, once known: read from `meta.properties`, or learned from the
    /// metadata quorum at first start and then written (`record_cluster_id`).
    pub cluster_id: Option<String>,
    /// Node id.
    pub node_id: i32,
    data_dir: PathBuf,
    _lock: File,
}

/// Locks `data_dir` (creating it if needed) and reads its `meta.properties`, if any.
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
    let cluster_id = match checkpoint::read_file(&StdFs, &path).map_err(io)? {
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
            Some(cluster_id)
        }
        None => None,
    };
    Ok(NodeIdentity {
        cluster_id,
        node_id,
        data_dir: data_dir.to_path_buf(),
        _lock: lock,
    })
}

impl NodeIdentity {
    /// Writes `meta.properties` once the cluster id is known (first start), or checks
    /// that it matches the one on disk.
    ///
    /// # Errors
    /// A different cluster id on disk, or an I/O error.
    pub fn record_cluster_id(&mut self, cluster_id: &str) -> Result<(), IdentityError> {
        match &self.cluster_id {
            Some(existing) if existing == cluster_id => Ok(()),
            Some(existing) => Err(IdentityError::ClusterMismatch {
                path: self.data_dir.clone(),
                on_disk: existing.clone(),
                cluster: cluster_id.to_string(),
            }),
            None => {
                let text = format!(
                    "#keel node identity; do not edit\nversion={META_PROPERTIES_VERSION}\ncluster.id={cluster_id}\nnode.id={}\n",
                    self.node_id
                );
                let path = self.data_dir.join(META_PROPERTIES_FILE);
                checkpoint::write_atomic(&StdFs, &path, text.as_bytes()).map_err(|e| {
                    IdentityError::Io {
                        path: self.data_dir.clone(),
                        reason: e.to_string(),
                    }
                })?;
                tracing::info!(cluster_id, node_id = self.node_id, dir = %self.data_dir.display(), "formatted new data directory");
                self.cluster_id = Some(cluster_id.to_string());
                Ok(())
            }
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
    fn identity_survives_restart_and_refuses_another_node_or_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let mut ident = prepare(dir.path(), 3).unwrap();
        assert_eq!(
            ident.cluster_id, None,
            "a fresh directory has no cluster yet"
        );
        let id = new_cluster_id();
        assert_eq!(id.len(), 22);
        ident.record_cluster_id(&id).unwrap();
        drop(ident);
        let mut again = prepare(dir.path(), 3).unwrap();
        assert_eq!(again.cluster_id.as_deref(), Some(id.as_str()));
        again.record_cluster_id(&id).unwrap();
        let err = again.record_cluster_id("another-cluster").unwrap_err();
        assert!(
            matches!(err, IdentityError::ClusterMismatch { .. }),
            "{err}"
        );
        drop(again);
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
