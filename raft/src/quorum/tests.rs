//! Tests of the async shell: openraft's storage suite against the RocksDB store, and a
//! single-voter quorum on a temporary directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use openraft::AnyError;
use openraft::RaftSnapshotBuilder;
use proptest::prelude::*;
use tempfile::TempDir;
use uuid::Uuid;

use super::state_machine::StateMachine;
use super::store::LogStore;
use super::types::StorageError;
use super::types::StorageIOError;
use super::types::TypeConfig;
use super::*;
use crate::controller::AlterConfigOp;
use crate::controller::AlterConfigsResource;
use crate::controller::AlterOp;
use crate::controller::ControllerError;
use crate::controller::NewTopic;
use crate::records::BrokerEndpoint;
use crate::records::ConfigResource;
use crate::records::MetadataBatch;

const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

struct RocksStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let io = |e: String| StorageError::from(StorageIOError::write(AnyError::error(e)));
        let dir = tempfile::tempdir().map_err(|e| io(e.to_string()))?;
        let db = store::open_db(dir.path()).map_err(|e| io(e.to_string()))?;
        let (sm, _image) = StateMachine::load(db.clone()).map_err(|e| io(e.to_string()))?;
        let log = LogStore::new(db, Arc::new(AtomicU64::new(store::NO_INDEX)));
        Ok((dir, log, sm))
    }
}

/// openraft's own conformance suite for `RaftLogStorage` + `RaftStateMachine`, every case
/// on a fresh RocksDB in a fresh temporary directory.
#[test]
fn openraft_storage_suite_passes_on_the_rocksdb_store() {
    Suite::test_all(RocksStoreBuilder).expect("openraft storage suite");
}

fn test_config(dir: &Path) -> QuorumConfig {
    QuorumConfig {
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        heartbeat_interval_ms: 50,
        ..QuorumConfig::single_node(1, dir)
    }
}

async fn open_leader(cfg: QuorumConfig) -> MetadataQuorum {
    let q = MetadataQuorum::open(cfg).await.expect("open quorum");
    q.wait_until_leader_known(LEADER_TIMEOUT)
        .await
        .expect("leader");
    q
}

fn new_topic(name: &str, partitions: i32) -> NewTopic {
    NewTopic {
        name: name.to_string(),
        num_partitions: partitions,
        replication_factor: 1,
        assignments: BTreeMap::new(),
        configs: BTreeMap::new(),
    }
}

async fn register_broker(q: &MetadataQuorum, broker_id: i32) -> i64 {
    let resp = q
        .submit(ControllerRequest::RegisterBroker {
            broker_id,
            incarnation_id: Uuid::new_v4(),
            endpoints: vec![BrokerEndpoint {
                listener: "PLAINTEXT".to_string(),
                host: "127.0.0.1".to_string(),
                port: 9092,
            }],
            rack: None,
        })
        .await
        .expect("register");
    match resp {
        ControllerResponse::RegisterBroker(Ok(epoch)) => epoch,
        other => panic!("unexpected {other:?}"),
    }
}

async fn create_topic(
    q: &MetadataQuorum,
    name: &str,
    partitions: i32,
) -> Result<Uuid, ControllerError> {
    let resp = q
        .submit(ControllerRequest::CreateTopics {
            topics: vec![new_topic(name, partitions)],
            validate_only: false,
        })
        .await
        .expect("submit");
    match resp {
        ControllerResponse::CreateTopics(mut r) => r.remove(0).result.map(|c| c.topic_id),
        other => panic!("unexpected {other:?}"),
    }
}

async fn set_topic_config(q: &MetadataQuorum, topic: &str, name: &str, value: &str) {
    let resp = q
        .submit(ControllerRequest::IncrementalAlterConfigs {
            resources: vec![AlterConfigsResource {
                resource: ConfigResource::Topic(topic.to_string()),
                ops: vec![AlterConfigOp {
                    name: name.to_string(),
                    op: AlterOp::Set,
                    value: Some(value.to_string()),
                }],
            }],
            validate_only: false,
        })
        .await
        .expect("submit");
    match resp {
        ControllerResponse::AlterConfigs(r) => assert!(r[0].1.is_ok(), "{r:?}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_voter_elects_itself_creates_a_topic_and_alters_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let q = open_leader(test_config(dir.path())).await;
    let status = q.status();
    assert_eq!(status.leader_id, Some(1));
    assert_eq!(status.role, QuorumRole::Leader);
    assert_eq!(status.voters, BTreeMap::from([(1, String::new())]));

    register_broker(&q, 1).await;
    let id = create_topic(&q, "orders", 3).await.expect("created");
    // Answered only after commit + apply: the image already shows the topic.
    let image = q.image().borrow().clone();
    let topic = image.topic_by_name("orders").expect("topic in image");
    assert_eq!(topic.topic_id, id);
    assert_eq!(topic.partitions.len(), 3);

    set_topic_config(&q, "orders", "retention.ms", "1000").await;
    assert_eq!(
        q.image()
            .borrow()
            .topic_configs("orders")
            .get("retention.ms")
            .map(String::as_str),
        Some("1000")
    );

    let again = create_topic(&q, "orders", 1).await;
    assert!(
        matches!(again, Err(ControllerError::TopicAlreadyExists(_))),
        "{again:?}"
    );

    let status = q.status();
    let image = q.image().borrow().clone();
    assert_eq!(status.last_log_index, Some(status.last_applied_index));
    assert_eq!(status.committed_index, Some(status.last_applied_index));
    assert_eq!(status.image_digest, image.digest());
    q.shutdown().await.unwrap();
    assert_eq!(
        q.submit(ControllerRequest::DeleteTopics { topics: vec![] })
            .await,
        Err(QuorumError::ShuttingDown)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_the_image_and_applied_index_from_rocksdb_without_replay() {
    let dir = tempfile::tempdir().unwrap();
    let q = open_leader(test_config(dir.path())).await;
    register_broker(&q, 1).await;
    create_topic(&q, "orders", 2).await.unwrap();
    set_topic_config(&q, "orders", "cleanup.policy", "compact").await;
    let before = q.status();
    q.shutdown().await.unwrap();

    // The state machine in RocksDB alone (no log replay) holds the image.
    {
        let db = store::open_db(dir.path()).unwrap();
        let (_sm, image) = StateMachine::load(db).unwrap();
        let image = image.borrow().clone();
        assert_eq!(image.last_applied_index, before.last_applied_index);
        assert_eq!(image.digest(), before.image_digest);
    }

    let q = MetadataQuorum::open(test_config(dir.path())).await.unwrap();
    // Straight after open, before anything new can be committed.
    let after = q.status();
    assert_eq!(after.last_applied_index, before.last_applied_index);
    assert_eq!(after.image_digest, before.image_digest);
    let image = q.image().borrow().clone();
    assert!(image.topic_by_name("orders").is_some());
    assert_eq!(
        image
            .topic_configs("orders")
            .get("cleanup.policy")
            .map(String::as_str),
        Some("compact")
    );

    q.wait_until_leader_known(LEADER_TIMEOUT).await.unwrap();
    assert!(matches!(
        create_topic(&q, "orders", 1).await,
        Err(ControllerError::TopicAlreadyExists(_))
    ));
    create_topic(&q, "payments", 1).await.unwrap();
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_directory_that_is_in_use_fails_with_directory_locked() {
    let dir = tempfile::tempdir().unwrap();
    let q = MetadataQuorum::open(test_config(dir.path())).await.unwrap();
    let second = MetadataQuorum::open(test_config(dir.path())).await;
    match second {
        Err(QuorumError::DirectoryLocked {
            dir: locked,
            detail,
        }) => {
            assert_eq!(locked, dir.path());
            assert!(!detail.is_empty());
        }
        Err(other) => panic!("expected DirectoryLocked, got {other}"),
        Ok(_) => panic!("opened a directory that is in use"),
    }
    q.shutdown().await.unwrap();
    // Released by shutdown.
    let q = MetadataQuorum::open(test_config(dir.path())).await.unwrap();
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_let_exactly_one_win() {
    let dir = tempfile::tempdir().unwrap();
    let q = open_leader(test_config(dir.path())).await;
    register_broker(&q, 1).await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let same = create_topic(&q, "contended", 1).await;
            let own = create_topic(&q, &format!("own-{i}"), 1).await;
            (same, own)
        }));
    }
    let mut winners = 0;
    for t in tasks {
        let (same, own) = t.await.unwrap();
        match same {
            Ok(_) => winners += 1,
            Err(ControllerError::TopicAlreadyExists(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
        own.expect("distinct names all succeed");
    }
    assert_eq!(winners, 1);
    let image = q.image().borrow().clone();
    assert_eq!(image.topics.len(), 33);
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_built_the_log_is_purged_and_restart_restores() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = QuorumConfig {
        snapshot_every_entries: 10,
        ..test_config(dir.path())
    };
    let q = open_leader(cfg.clone()).await;
    register_broker(&q, 1).await;
    for i in 0..45 {
        create_topic(&q, &format!("t{i}"), 1).await.unwrap();
    }
    let before = q.status();
    // Snapshot building and purging run in the background; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshot_index = loop {
        let m = q.inner.raft.metrics().borrow().clone();
        if let (Some(s), Some(p)) = (m.snapshot, m.purged) {
            if s.index >= 30 && p.index >= 10 {
                break s.index;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot/purge: {:?} {:?}",
            m.snapshot,
            m.purged
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    q.shutdown().await.unwrap();

    {
        let db = store::open_db(dir.path()).unwrap();
        let mut log = LogStore::new(db.clone(), Arc::new(AtomicU64::new(store::NO_INDEX)));
        let state = openraft::storage::RaftLogStorage::get_log_state(&mut log)
            .await
            .unwrap();
        assert!(
            state.last_purged_log_id.is_some_and(|p| p.index >= 10),
            "{state:?}"
        );
        let (mut sm, _) = StateMachine::load(db).unwrap();
        let snap = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("stored snapshot");
        assert!(snap
            .meta
            .last_log_id
            .is_some_and(|l| l.index >= snapshot_index));
    }

    let q = MetadataQuorum::open(cfg).await.unwrap();
    let after = q.status();
    assert_eq!(after.last_applied_index, before.last_applied_index);
    assert_eq!(after.image_digest, before.image_digest);
    q.wait_until_leader_known(LEADER_TIMEOUT).await.unwrap();
    create_topic(&q, "after-restart", 1).await.unwrap();
    assert_eq!(q.image().borrow().topics.len(), 46);
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_machine_value_fails_open_with_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let q = open_leader(test_config(dir.path())).await;
    register_broker(&q, 1).await;
    create_topic(&q, "orders", 1).await.unwrap();
    q.shutdown().await.unwrap();
    {
        let db = store::open_db(dir.path()).unwrap();
        let sm = db.cf_handle(store::CF_SM).unwrap();
        db.put_cf(sm, b"image/h", [0u8, 1, 0xfe, 0xfe]).unwrap();
    }
    match MetadataQuorum::open(test_config(dir.path())).await {
        Err(QuorumError::Corrupt(msg)) => assert!(msg.contains("image"), "{msg}"),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("opened a corrupt store"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_without_a_quorum_answers_not_controller() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = QuorumConfig {
        voters: BTreeMap::from([
            (1, "127.0.0.1:1".to_string()),
            (2, "127.0.0.2:1".to_string()),
        ]),
        ..test_config(dir.path())
    };
    let q = MetadataQuorum::open(cfg).await.unwrap();
    assert_eq!(
        q.wait_until_leader_known(Duration::from_millis(500)).await,
        Err(QuorumError::Timeout)
    );
    let r = q
        .submit(ControllerRequest::DeleteTopics { topics: vec![] })
        .await;
    assert_eq!(r, Err(QuorumError::NotController { leader_id: None }));
    assert_eq!(q.status().voters.len(), 2);
    q.shutdown().await.unwrap();
}

/// Applies `batches` (one per log index) to a fresh state machine in `dir`.
async fn apply_batches(
    dir: &Path,
    batches: &[Vec<crate::records::MetadataRecord>],
) -> (Arc<store::Db>, StateMachine) {
    let db = store::open_db(dir).unwrap();
    let (mut sm, _) = StateMachine::load(db.clone()).unwrap();
    let entries: Vec<types::Entry> = batches
        .iter()
        .enumerate()
        .map(|(i, records)| openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i as u64 + 1),
            payload: openraft::EntryPayload::Normal(MetadataBatch::new(records.clone())),
        })
        .collect();
    // Apply in two calls, so both "touched keys" bookkeeping and whole-batch writes are used.
    let mid = entries.len() / 2;
    sm.apply(entries[..mid].to_vec()).await.unwrap();
    sm.apply(entries[mid..].to_vec()).await.unwrap();
    (db, sm)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Writing only the image parts each record touched, then loading from RocksDB, gives
    /// exactly the image that was in memory; so does installing a snapshot of it elsewhere.
    #[test]
    fn persisted_image_reloads_to_the_same_image(
        batches in prop::collection::vec(prop::collection::vec(crate::image::tests::arb_record(), 0..8), 1..12),
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (db, mut sm) = apply_batches(dir.path(), &batches).await;
            let mut expected = MetadataImage::new();
            for (i, records) in batches.iter().enumerate() {
                expected.apply_batch(i as u64 + 1, &MetadataBatch::new(records.clone()));
            }
            let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            drop(sm);
            let (_sm, loaded) = StateMachine::load(db).unwrap();
            assert_eq!(*loaded.borrow().as_ref(), expected);

            let other = tempfile::tempdir().unwrap();
            let other_db = store::open_db(other.path()).unwrap();
            let (mut target, _) = StateMachine::load(other_db.clone()).unwrap();
            target.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
            drop(target);
            let (_t, installed) = StateMachine::load(other_db).unwrap();
            assert_eq!(*installed.borrow().as_ref(), expected);
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_records_its_configured_cluster_id_before_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = QuorumConfig {
        cluster_id: Some("MkU3OEVBNTcwNTJENDM2Qk".to_string()),
        ..test_config(dir.path())
    };
    let q = open_leader(cfg.clone()).await;
    // The first request already finds the cluster id in the log before its own records.
    register_broker(&q, 1).await;
    assert_eq!(q.cluster_id().as_deref(), Some("MkU3OEVBNTcwNTJENDM2Qk"));
    let id = q.wait_cluster_id(LEADER_TIMEOUT).await.unwrap();
    assert_eq!(q.status().cluster_id.as_deref(), Some(id.as_str()));
    q.shutdown().await.unwrap();

    // Reopened with another id in its meta.properties: refused, naming both.
    let other = QuorumConfig {
        cluster_id: Some("another".to_string()),
        ..cfg.clone()
    };
    match MetadataQuorum::open(other).await {
        Err(QuorumError::ClusterIdMismatch(msg)) => {
            assert!(msg.contains("another") && msg.contains(&id), "{msg}")
        }
        Err(e) => panic!("expected ClusterIdMismatch, got {e}"),
        Ok(_) => panic!("opened with another cluster id"),
    }
    // Without an id (a meta.properties written before ids were recorded) it opens.
    let q = MetadataQuorum::open(QuorumConfig {
        cluster_id: None,
        ..cfg
    })
    .await
    .unwrap();
    assert_eq!(q.cluster_id().as_deref(), Some(id.as_str()));
    q.shutdown().await.unwrap();
}
