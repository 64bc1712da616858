//! Pure controller tests: no network, no disk, no clock. Each test replays the records the
//! controller returns into an image, exactly as the quorum would.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use uuid::Uuid;

use super::*;
use crate::records::MetadataBatch;

/// An image plus a deterministic context: uuids 1000, 1001, ...; `random` always `pick`;
/// the clock reads `now_ms`.
pub(super) struct Harness {
    pub image: MetadataImage,
    pub config: ControllerConfig,
    pub sessions: BrokerSessions,
    pub next_uuid: u128,
    pub pick: u64,
    pub index: u64,
    pub now_ms: i64,
    /// Every committed batch, in log order (entry `i` is at log index `i + 1`).
    pub log: Vec<Vec<MetadataRecord>>,
}

impl Harness {
    pub fn new() -> Self {
        Harness {
            image: MetadataImage::new(),
            config: ControllerConfig::default(),
            sessions: BrokerSessions::new(),
            next_uuid: 1000,
            pick: 0,
            index: 0,
            now_ms: 1_700_000_000_000,
            log: Vec::new(),
        }
    }

    /// A harness for a cluster with heartbeats: brokers register fenced.
    pub fn with_heartbeats() -> Self {
        let mut h = Harness::new();
        h.config.register_brokers_unfenced = false;
        h
    }

    /// Applies `records` as the next log entry, as the quorum would after committing them,
    /// and tells the sessions about committed registrations.
    pub fn commit(&mut self, records: &[MetadataRecord]) {
        if records.is_empty() {
            return;
        }
        self.index += 1;
        self.image
            .apply_batch(self.index, &MetadataBatch::new(records.to_vec()));
        self.log.push(records.to_vec());
        for r in records {
            if let MetadataRecord::RegisterBroker {
                broker_id,
                broker_epoch,
                ..
            } = r
            {
                self.sessions
                    .registration_committed(*broker_id, *broker_epoch, self.index);
            }
        }
    }

    pub fn with_brokers(n: i32) -> Self {
        let mut h = Harness::new();
        for id in 0..n {
            let resp = h.run(register(id));
            assert!(
                matches!(resp, ControllerResponse::RegisterBroker(Ok(_))),
                "{resp:?}"
            );
        }
        h
    }

    /// Handles `req`, applies its records as one batch, returns records and response.
    pub fn handle(&mut self, req: ControllerRequest) -> (Vec<MetadataRecord>, ControllerResponse) {
        let next = &mut self.next_uuid;
        let mut new_uuid = || {
            *next += 1;
            Uuid::from_u128(*next)
        };
        let pick = self.pick;
        let mut random = move |n: u64| pick % n.max(1);
        let mut ctx = ControllerContext {
            now_ms: self.now_ms,
            new_uuid: &mut new_uuid,
            random: &mut random,
        };
        let (records, resp) = handle(&self.image, &self.config, &mut self.sessions, &mut ctx, req);
        self.commit(&records);
        (records, resp)
    }

    /// Runs the periodic session check at the current time and commits what it decides.
    pub fn tick(&mut self) -> Vec<MetadataRecord> {
        let records =
            fence_expired_brokers(&self.image, &self.config, &mut self.sessions, self.now_ms);
        self.commit(&records);
        records
    }

    pub fn run(&mut self, req: ControllerRequest) -> ControllerResponse {
        self.handle(req).1
    }

    pub fn create(&mut self, topics: Vec<NewTopic>) -> Vec<CreateTopicResult> {
        match self.run(ControllerRequest::CreateTopics {
            topics,
            validate_only: false,
        }) {
            ControllerResponse::CreateTopics(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn create_one(&mut self, topic: NewTopic) -> Result<CreatedTopic, ControllerError> {
        let mut r = self.create(vec![topic]);
        assert_eq!(r.len(), 1);
        r.remove(0).result
    }

    fn fence(&mut self, broker_id: i32) {
        let epoch = self.image.brokers[&broker_id].broker_epoch;
        self.index += 1;
        self.image.apply_batch(
            self.index,
            &MetadataBatch::new(vec![MetadataRecord::FenceBroker {
                broker_id,
                broker_epoch: epoch,
            }]),
        );
    }

    fn alter(
        &mut self,
        resources: Vec<AlterConfigsResource>,
    ) -> Vec<(ConfigResource, Result<(), ControllerError>)> {
        match self.run(ControllerRequest::IncrementalAlterConfigs {
            resources,
            validate_only: false,
        }) {
            ControllerResponse::AlterConfigs(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn create_partitions(
        &mut self,
        topics: Vec<NewPartitions>,
        validate_only: bool,
    ) -> Vec<(String, Result<(), ControllerError>)> {
        match self.run(ControllerRequest::CreatePartitions {
            topics,
            validate_only,
        }) {
            ControllerResponse::CreatePartitions(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn delete(&mut self, topics: Vec<TopicRef>) -> Vec<DeleteTopicResult> {
        match self.run(ControllerRequest::DeleteTopics { topics }) {
            ControllerResponse::DeleteTopics(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub(super) fn register(broker_id: i32) -> ControllerRequest {
    ControllerRequest::RegisterBroker {
        broker_id,
        incarnation_id: Uuid::from_u128(500 + broker_id as u128),
        endpoints: vec![BrokerEndpoint {
            listener: "PLAINTEXT".to_string(),
            host: format!("127.0.0.{}", broker_id + 1),
            port: 9092,
        }],
        rack: None,
    }
}

pub(super) fn topic(name: &str, partitions: i32, rf: i16) -> NewTopic {
    NewTopic {
        name: name.to_string(),
        num_partitions: partitions,
        replication_factor: rf,
        assignments: BTreeMap::new(),
        configs: BTreeMap::new(),
    }
}

pub(super) fn manual(name: &str, assignments: &[&[i32]]) -> NewTopic {
    NewTopic {
        name: name.to_string(),
        num_partitions: -1,
        replication_factor: -1,
        assignments: assignments
            .iter()
            .enumerate()
            .map(|(i, r)| (i as i32, r.to_vec()))
            .collect(),
        configs: BTreeMap::new(),
    }
}

fn set(name: &str, value: &str) -> AlterConfigOp {
    AlterConfigOp {
        name: name.to_string(),
        op: AlterOp::Set,
        value: Some(value.to_string()),
    }
}

fn op(name: &str, op: AlterOp, value: Option<&str>) -> AlterConfigOp {
    AlterConfigOp {
        name: name.to_string(),
        op,
        value: value.map(str::to_string),
    }
}

fn topic_resource(name: &str, ops: Vec<AlterConfigOp>) -> AlterConfigsResource {
    AlterConfigsResource {
        resource: ConfigResource::Topic(name.to_string()),
        ops,
    }
}

#[test]
fn create_topic_places_partitions_round_robin_with_leader_first_replica() {
    let mut h = Harness::with_brokers(3);
    h.pick = 1;
    let created = h.create_one(topic("orders", 4, 2)).unwrap();
    assert_eq!(created.num_partitions, 4);
    assert_eq!(created.replication_factor, 2);
    let t = h.image.topic_by_name("orders").unwrap();
    assert_eq!(t.topic_id, created.topic_id);
    let replicas: Vec<Vec<i32>> = t.partitions.values().map(|p| p.replicas.clone()).collect();
    assert_eq!(
        replicas,
        vec![vec![1, 2], vec![2, 0], vec![0, 1], vec![1, 2]]
    );
    for p in t.partitions.values() {
        assert_eq!(p.leader, p.replicas[0]);
        assert_eq!(p.isr, p.replicas);
        assert_eq!((p.leader_epoch, p.partition_epoch), (0, 0));
    }
}

#[test]
fn create_topic_twice_answers_topic_already_exists() {
    let mut h = Harness::with_brokers(1);
    h.create_one(topic("orders", 1, 1)).unwrap();
    let (records, resp) = h.handle(ControllerRequest::CreateTopics {
        topics: vec![topic("orders", 1, 1)],
        validate_only: false,
    });
    assert!(records.is_empty());
    let ControllerResponse::CreateTopics(r) = resp else {
        panic!()
    };
    assert!(
        matches!(&r[0].result, Err(ControllerError::TopicAlreadyExists(m)) if m.contains("orders")),
        "{r:?}"
    );
}

#[test]
fn duplicate_topic_names_in_one_request_fail_both_with_invalid_request() {
    let mut h = Harness::with_brokers(1);
    let r = h.create(vec![
        topic("dup", 1, 1),
        topic("other", 1, 1),
        topic("dup", 2, 1),
    ]);
    assert!(matches!(
        r[0].result,
        Err(ControllerError::InvalidRequest(_))
    ));
    assert!(r[1].result.is_ok());
    assert!(matches!(
        r[2].result,
        Err(ControllerError::InvalidRequest(_))
    ));
    assert!(h.image.topic_by_name("dup").is_none());
}

#[test]
fn invalid_topic_names_answer_invalid_topic() {
    let mut h = Harness::with_brokers(1);
    let long = "x".repeat(MAX_TOPIC_NAME_CHARS + 1);
    for name in [
        "",
        ".",
        "..",
        "has space",
        "slash/",
        "ümlaut",
        "tab\t",
        long.as_str(),
    ] {
        let err = h.create_one(topic(name, 1, 1)).unwrap_err();
        assert!(
            matches!(err, ControllerError::InvalidTopic(_)),
            "{name:?}: {err}"
        );
    }
    assert!(h.image.topics.is_empty());
    let max = "y".repeat(MAX_TOPIC_NAME_CHARS);
    h.create_one(topic(&max, 1, 1)).unwrap();
    h.create_one(topic("a-Z_0.9", 1, 1)).unwrap();
}

#[test]
fn topic_names_differing_only_by_dot_and_underscore_collide() {
    let mut h = Harness::with_brokers(1);
    h.create_one(topic("metrics.cpu", 1, 1)).unwrap();
    let err = h.create_one(topic("metrics_cpu", 1, 1)).unwrap_err();
    assert!(
        matches!(&err, ControllerError::InvalidTopic(m) if m.contains("metrics.cpu")),
        "{err}"
    );
    // within one request, the first wins
    let r = h.create(vec![topic("a_b", 1, 1), topic("a.b", 1, 1)]);
    assert!(r[0].result.is_ok());
    assert!(
        matches!(&r[1].result, Err(ControllerError::InvalidTopic(m)) if m.contains("a_b")),
        "{r:?}"
    );
}

#[test]
fn the_metadata_topic_cannot_be_created_and_compaction_lags_must_be_ordered() {
    let mut h = Harness::with_brokers(1);
    let err = h.create_one(topic("__cluster_metadata", 1, 1)).unwrap_err();
    assert!(matches!(err, ControllerError::InvalidRequest(_)), "{err}");
    let mut lagged = topic("lagged", 1, 1);
    lagged
        .configs
        .insert("min.compaction.lag.ms".into(), "5000".into());
    lagged
        .configs
        .insert("max.compaction.lag.ms".into(), "1000".into());
    let err = h.create_one(lagged.clone()).unwrap_err();
    assert!(
        matches!(&err, ControllerError::InvalidConfig(m) if m.contains("min.compaction.lag.ms")),
        "{err}"
    );
    lagged
        .configs
        .insert("max.compaction.lag.ms".into(), "5000".into());
    h.create_one(lagged).unwrap();
    assert_eq!(h.image.topics.len(), 1);
}

#[test]
fn non_positive_partition_counts_answer_invalid_partitions() {
    let mut h = Harness::with_brokers(1);
    for n in [0, -2, i32::MIN] {
        let err = h.create_one(topic("t", n, 1)).unwrap_err();
        assert!(
            matches!(err, ControllerError::InvalidPartitions(_)),
            "{n}: {err}"
        );
    }
}

#[test]
fn replication_factor_above_unfenced_brokers_answers_invalid_replication_factor() {
    let mut h = Harness::with_brokers(3);
    h.fence(2);
    let err = h.create_one(topic("t", 1, 3)).unwrap_err();
    assert!(
        matches!(&err, ControllerError::InvalidReplicationFactor(m) if m.contains("only 2 broker(s)")),
        "{err}"
    );
    for rf in [0, -2] {
        let err = h.create_one(topic("t", 1, rf)).unwrap_err();
        assert!(
            matches!(err, ControllerError::InvalidReplicationFactor(_)),
            "{rf}: {err}"
        );
    }
    // No broker at all.
    let mut empty = Harness::new();
    assert!(matches!(
        empty.create_one(topic("t", 1, 1)),
        Err(ControllerError::InvalidReplicationFactor(_))
    ));
    // The fenced broker is never chosen.
    let created = h.create_one(topic("t", 6, 2)).unwrap();
    assert_eq!(created.num_partitions, 6);
    let t = h.image.topic_by_name("t").unwrap();
    assert!(t.partitions.values().all(|p| !p.replicas.contains(&2)));
}

#[test]
fn defaults_for_partitions_and_replication_factor_come_from_config() {
    let mut h = Harness::with_brokers(3);
    h.config.default_num_partitions = 3;
    h.config.default_replication_factor = 2;
    let created = h.create_one(topic("t", -1, -1)).unwrap();
    assert_eq!((created.num_partitions, created.replication_factor), (3, 2));
    assert_eq!(h.image.topic_by_name("t").unwrap().partitions.len(), 3);
}

#[test]
fn manual_assignment_with_partition_count_or_rf_set_answers_invalid_request() {
    let mut h = Harness::with_brokers(2);
    let mut t = manual("t", &[&[0, 1]]);
    t.num_partitions = 1;
    assert!(matches!(
        h.create_one(t),
        Err(ControllerError::InvalidRequest(_))
    ));
    let mut t = manual("t", &[&[0, 1]]);
    t.replication_factor = 2;
    assert!(matches!(
        h.create_one(t),
        Err(ControllerError::InvalidRequest(_))
    ));
}

#[test]
fn inconsistent_manual_assignments_answer_invalid_replica_assignment() {
    let mut h = Harness::with_brokers(3);
    let cases: Vec<NewTopic> = vec![
        manual("t", &[&[0, 1], &[1]]),
        manual("t", &[&[0, 0]]),
        manual("t", &[&[0, 7]]),
        manual("t", &[&[]]),
        {
            let mut t = manual("t", &[&[0]]);
            t.assignments = BTreeMap::from([(0, vec![0]), (2, vec![1])]);
            t
        },
    ];
    for t in cases {
        let a = t.assignments.clone();
        let err = h.create_one(t).unwrap_err();
        assert!(
            matches!(err, ControllerError::InvalidReplicaAssignment(_)),
            "{a:?}: {err}"
        );
    }
    assert!(h.image.topics.is_empty());
}

#[test]
fn manual_assignment_leader_is_first_unfenced_replica() {
    let mut h = Harness::with_brokers(3);
    h.fence(2);
    let created = h
        .create_one(manual("t", &[&[2, 0, 1], &[1, 2, 0]]))
        .unwrap();
    assert_eq!((created.num_partitions, created.replication_factor), (2, 3));
    let t = h.image.topic_by_name("t").unwrap();
    assert_eq!(t.partitions[&0].replicas, vec![2, 0, 1]);
    assert_eq!(t.partitions[&0].isr, vec![0, 1]);
    assert_eq!(t.partitions[&0].leader, 0);
    assert_eq!(t.partitions[&1].leader, 1);
    // all replicas fenced
    let err = h.create_one(manual("u", &[&[2]])).unwrap_err();
    assert!(
        matches!(err, ControllerError::InvalidReplicaAssignment(_)),
        "{err}"
    );
}

#[test]
fn invalid_config_in_create_topics_answers_invalid_config_and_creates_nothing() {
    let mut h = Harness::with_brokers(1);
    let mut t = topic("t", 1, 1);
    t.configs
        .insert("retention.ms".to_string(), "soon".to_string());
    let err = h.create_one(t).unwrap_err();
    assert!(
        matches!(&err, ControllerError::InvalidConfig(m) if m.contains("retention.ms")),
        "{err}"
    );
    let mut t = topic("t", 1, 1);
    t.configs
        .insert("no.such.config".to_string(), "1".to_string());
    assert!(matches!(
        h.create_one(t),
        Err(ControllerError::InvalidConfig(_))
    ));
    assert!(h.image.topics.is_empty() && h.image.configs.is_empty());

    let mut t = topic("t", 1, 1);
    t.configs
        .insert("cleanup.policy".to_string(), "compact".to_string());
    let created = h.create_one(t).unwrap();
    assert_eq!(
        created.configs.get("cleanup.policy").map(String::as_str),
        Some("compact")
    );
    assert_eq!(
        h.image
            .topic_configs("t")
            .get("cleanup.policy")
            .map(String::as_str),
        Some("compact")
    );
}

#[test]
fn validate_only_writes_nothing_but_answers_the_same() {
    let mut h = Harness::with_brokers(2);
    h.create_one(topic("exists", 1, 2)).unwrap();
    let before = h.image.clone();
    let topics = vec![
        topic("new", 3, 2),
        topic("exists", 1, 1),
        topic("bad name", 1, 1),
        topic("rf", 1, 5),
    ];

    let mut dry = Harness::with_brokers(2);
    dry.create_one(topic("exists", 1, 2)).unwrap();
    let (records, dry_resp) = dry.handle(ControllerRequest::CreateTopics {
        topics: topics.clone(),
        validate_only: true,
    });
    assert!(records.is_empty());
    assert_eq!(dry.image, before);

    let (_, real_resp) = h.handle(ControllerRequest::CreateTopics {
        topics,
        validate_only: false,
    });
    assert_eq!(
        dry_resp, real_resp,
        "validate_only must answer exactly like the real request"
    );

    // CreatePartitions and AlterConfigs too.
    let before = h.image.clone();
    let r = h.create_partitions(
        vec![NewPartitions {
            name: "new".to_string(),
            count: 5,
            assignments: None,
        }],
        true,
    );
    assert!(r[0].1.is_ok());
    let (records, _) = h.handle(ControllerRequest::IncrementalAlterConfigs {
        resources: vec![topic_resource("new", vec![set("retention.ms", "1000")])],
        validate_only: true,
    });
    assert!(records.is_empty());
    let (records, _) = h.handle(ControllerRequest::AlterConfigs {
        resources: vec![(
            ConfigResource::Topic("new".to_string()),
            vec![("retention.ms".to_string(), "1".to_string())],
        )],
        validate_only: true,
    });
    assert!(records.is_empty());
    assert_eq!(h.image, before);
}

#[test]
fn too_many_partitions_in_one_request_is_a_policy_violation() {
    let mut h = Harness::with_brokers(1);
    h.config.max_partitions_per_request = 10;
    let r = h.create(vec![topic("a", 6, 1), topic("b", 5, 1)]);
    for t in &r {
        assert!(
            matches!(t.result, Err(ControllerError::PolicyViolation(_))),
            "{r:?}"
        );
    }
    assert!(h.image.topics.is_empty());
    h.create_one(topic("a", 10, 1)).unwrap();
}

#[test]
fn create_partitions_increases_the_partition_count() {
    let mut h = Harness::with_brokers(3);
    h.create_one(topic("t", 2, 2)).unwrap();
    let r = h.create_partitions(
        vec![NewPartitions {
            name: "t".to_string(),
            count: 5,
            assignments: None,
        }],
        false,
    );
    assert!(r[0].1.is_ok(), "{r:?}");
    let t = h.image.topic_by_name("t").unwrap();
    assert_eq!(
        t.partitions.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    for p in t.partitions.values() {
        assert_eq!(p.replicas.len(), 2);
        assert_eq!(p.leader, p.replicas[0]);
    }
}

#[test]
fn create_partitions_refuses_a_decrease_or_the_same_count() {
    let mut h = Harness::with_brokers(1);
    h.create_one(topic("t", 3, 1)).unwrap();
    let r = h.create_partitions(
        vec![NewPartitions {
            name: "t".to_string(),
            count: 2,
            assignments: None,
        }],
        false,
    );
    assert!(
        matches!(&r[0].1, Err(ControllerError::InvalidPartitions(m)) if m == "Topic currently has 3 partitions, which is higher than the requested 2."),
        "{r:?}"
    );
    let r = h.create_partitions(
        vec![NewPartitions {
            name: "t".to_string(),
            count: 3,
            assignments: None,
        }],
        false,
    );
    assert!(
        matches!(&r[0].1, Err(ControllerError::InvalidPartitions(m)) if m.contains("which is equal to the requested 3")),
        "{r:?}"
    );
    let r = h.create_partitions(
        vec![NewPartitions {
            name: "nope".to_string(),
            count: 3,
            assignments: None,
        }],
        false,
    );
    assert!(matches!(
        r[0].1,
        Err(ControllerError::UnknownTopicOrPartition(_))
    ));
    assert_eq!(h.image.topic_by_name("t").unwrap().partitions.len(), 3);
}

#[test]
fn create_partitions_with_manual_assignments_checks_count_and_replication_factor() {
    let mut h = Harness::with_brokers(3);
    h.create_one(topic("t", 1, 2)).unwrap();
    let add = |assignments: Vec<Vec<i32>>| NewPartitions {
        name: "t".to_string(),
        count: 3,
        assignments: Some(assignments),
    };
    for bad in [
        vec![vec![0, 1]],
        vec![vec![0, 1], vec![2]],
        vec![vec![0, 1], vec![2, 2]],
        vec![vec![0, 1], vec![2, 9]],
    ] {
        let r = h.create_partitions(vec![add(bad.clone())], false);
        assert!(
            matches!(r[0].1, Err(ControllerError::InvalidReplicaAssignment(_))),
            "{bad:?}: {r:?}"
        );
    }
    let r = h.create_partitions(vec![add(vec![vec![2, 0], vec![1, 2]])], false);
    assert!(r[0].1.is_ok(), "{r:?}");
    let t = h.image.topic_by_name("t").unwrap();
    assert_eq!(t.partitions[&1].replicas, vec![2, 0]);
    assert_eq!(t.partitions[&2].leader, 1);
}

#[test]
fn delete_topic_removes_its_partitions_and_config_overrides() {
    let mut h = Harness::with_brokers(1);
    let mut t = topic("t", 2, 1);
    t.configs
        .insert("retention.ms".to_string(), "1000".to_string());
    let id = h.create_one(t).unwrap().topic_id;
    h.create_one(topic("keep", 1, 1)).unwrap();
    let r = h.delete(vec![TopicRef::Name("t".to_string())]);
    assert_eq!(
        r,
        vec![DeleteTopicResult {
            name: Some("t".to_string()),
            topic_id: Some(id),
            result: Ok(())
        }]
    );
    assert!(h.image.topic_by_name("t").is_none());
    assert!(!h.image.topics.contains_key(&id));
    assert!(!h
        .image
        .configs
        .contains_key(&ConfigResource::Topic("t".to_string())));
    assert!(h.image.topic_by_name("keep").is_some());

    // Re-created under the same name: a new id and none of the old overrides.
    let again = h.create_one(topic("t", 1, 1)).unwrap();
    assert_ne!(again.topic_id, id);
    assert!(h.image.topic_configs("t").is_empty());

    // ...and by id.
    let r = h.delete(vec![TopicRef::Id(again.topic_id)]);
    assert_eq!(r[0].name.as_deref(), Some("t"));
    assert!(r[0].result.is_ok());
    assert!(h.image.topic_by_name("t").is_none());
}

#[test]
fn delete_unknown_topics_answers_unknown_topic_or_id() {
    let mut h = Harness::with_brokers(1);
    let id = Uuid::from_u128(42);
    let r = h.delete(vec![TopicRef::Name("ghost".to_string()), TopicRef::Id(id)]);
    assert!(
        matches!(&r[0].result, Err(ControllerError::UnknownTopicOrPartition(m)) if m.contains("ghost"))
    );
    assert_eq!(r[0].name.as_deref(), Some("ghost"));
    assert_eq!(r[1].result, Err(ControllerError::UnknownTopicId(id)));
    assert_eq!(r[1].topic_id, Some(id));
}

#[test]
fn deleting_one_topic_twice_in_a_request_is_an_invalid_request() {
    let mut h = Harness::with_brokers(1);
    let id = h.create_one(topic("t", 1, 1)).unwrap().topic_id;
    let (records, resp) = h.handle(ControllerRequest::DeleteTopics {
        topics: vec![TopicRef::Name("t".to_string()), TopicRef::Id(id)],
    });
    assert!(records.is_empty());
    let ControllerResponse::DeleteTopics(r) = resp else {
        panic!()
    };
    assert!(
        r.iter()
            .all(|t| matches!(t.result, Err(ControllerError::InvalidRequest(_)))),
        "{r:?}"
    );
    assert!(h.image.topic_by_name("t").is_some());
}

#[test]
fn incremental_alter_configs_sets_deletes_appends_and_subtracts() {
    let mut h = Harness::with_brokers(1);
    h.create_one(topic("t", 1, 1)).unwrap();
    let r = h.alter(vec![topic_resource(
        "t",
        vec![
            set("retention.ms", "1000"),
            op("cleanup.policy", AlterOp::Append, Some("compact")),
        ],
    )]);
    assert!(r[0].1.is_ok(), "{r:?}");
    let configs = h.image.topic_configs("t");
    assert_eq!(
        configs.get("retention.ms").map(String::as_str),
        Some("1000")
    );
    // Append starts from the default ("delete").
    assert_eq!(
        configs.get("cleanup.policy").map(String::as_str),
        Some("delete,compact")
    );

    let r = h.alter(vec![topic_resource(
        "t",
        vec![
            op("retention.ms", AlterOp::Delete, None),
            op("cleanup.policy", AlterOp::Subtract, Some("delete")),
        ],
    )]);
    assert!(r[0].1.is_ok(), "{r:?}");
    let configs = h.image.topic_configs("t");
    assert_eq!(configs.len(), 1);
    assert_eq!(
        configs.get("cleanup.policy").map(String::as_str),
        Some("compact")
    );

    // Setting the value it already has writes no record.
    let (records, _) = h.handle(ControllerRequest::IncrementalAlterConfigs {
        resources: vec![topic_resource("t", vec![set("cleanup.policy", "compact")])],
        validate_only: false,
    });
    assert!(records.is_empty());
}

#[test]
fn incremental_alter_configs_rejects_bad_operations_and_changes_nothing() {
    let mut h = Harness::with_brokers(1);
    h.create_one(topic("t", 1, 1)).unwrap();
    let cases = vec![
        (
            vec![set("retention.ms", "1000"), set("segment.bytes", "tiny")],
            "invalid value",
        ),
        (
            vec![op("retention.ms", AlterOp::Append, Some("5"))],
            "append on a non-list",
        ),
        (vec![set("bogus", "1")], "unknown name"),
        (
            vec![op("retention.ms", AlterOp::Set, None)],
            "missing value",
        ),
        (
            vec![
                set("retention.ms", "1"),
                op("retention.ms", AlterOp::Delete, None),
            ],
            "duplicate key",
        ),
    ];
    for (ops, why) in cases {
        let r = h.alter(vec![topic_resource("t", ops)]);
        assert!(r[0].1.is_err(), "{why}: {r:?}");
        assert!(h.image.topic_configs("t").is_empty(), "{why}");
    }
    let r = h.alter(vec![topic_resource(
        "ghost",
        vec![set("retention.ms", "1")],
    )]);
    assert!(matches!(
        r[0].1,
        Err(ControllerError::UnknownTopicOrPartition(_))
    ));
    let r = h.alter(vec![
        topic_resource("t", vec![set("retention.ms", "1")]),
        topic_resource("t", vec![set("retention.ms", "2")]),
    ]);
    assert!(r
        .iter()
        .all(|(_, res)| matches!(res, Err(ControllerError::InvalidRequest(_)))));
}

#[test]
fn legacy_alter_configs_replaces_the_whole_override_set() {
    let mut h = Harness::with_brokers(1);
    let mut t = topic("t", 1, 1);
    t.configs
        .insert("retention.ms".to_string(), "1000".to_string());
    t.configs
        .insert("segment.ms".to_string(), "2000".to_string());
    h.create_one(t).unwrap();
    let resp = h.run(ControllerRequest::AlterConfigs {
        resources: vec![(
            ConfigResource::Topic("t".to_string()),
            vec![
                ("segment.ms".to_string(), "3000".to_string()),
                ("cleanup.policy".to_string(), "compact".to_string()),
            ],
        )],
        validate_only: false,
    });
    assert!(
        matches!(&resp, ControllerResponse::AlterConfigs(r) if r[0].1.is_ok()),
        "{resp:?}"
    );
    let expected: BTreeMap<String, String> =
        [("cleanup.policy", "compact"), ("segment.ms", "3000")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    assert_eq!(h.image.topic_configs("t"), expected);
}

#[test]
fn broker_configs_are_kept_per_broker_and_cluster_wide() {
    let mut h = Harness::with_brokers(1);
    let r = h.alter(vec![
        AlterConfigsResource {
            resource: ConfigResource::Broker(None),
            ops: vec![set("log.retention.ms", "5000")],
        },
        AlterConfigsResource {
            resource: ConfigResource::Broker(Some(0)),
            ops: vec![set("log.cleaner.threads", "2")],
        },
    ]);
    assert!(r.iter().all(|(_, res)| res.is_ok()), "{r:?}");
    assert_eq!(
        h.image.configs[&ConfigResource::Broker(None)]["log.retention.ms"],
        "5000"
    );
    assert_eq!(
        h.image.configs[&ConfigResource::Broker(Some(0))]["log.cleaner.threads"],
        "2"
    );
}

#[test]
fn broker_registration_is_unfenced_and_a_new_incarnation_bumps_the_epoch() {
    let mut h = Harness::new();
    let ControllerResponse::RegisterBroker(Ok(e1)) = h.run(register(1)) else {
        panic!()
    };
    let ControllerResponse::RegisterBroker(Ok(e2)) = h.run(register(2)) else {
        panic!()
    };
    assert_ne!(e1, e2);
    assert!(!h.image.brokers[&1].fenced);

    // A retry of the same registration gets the same epoch and writes nothing.
    let (records, resp) = h.handle(register(1));
    assert!(records.is_empty());
    assert_eq!(resp, ControllerResponse::RegisterBroker(Ok(e1)));

    // A restarted broker (new incarnation) gets a higher epoch.
    let ControllerRequest::RegisterBroker {
        endpoints, rack, ..
    } = register(1)
    else {
        panic!()
    };
    let resp = h.run(ControllerRequest::RegisterBroker {
        broker_id: 1,
        incarnation_id: Uuid::from_u128(9999),
        endpoints,
        rack,
    });
    let ControllerResponse::RegisterBroker(Ok(e3)) = resp else {
        panic!()
    };
    assert!(e3 > e2 && e3 > e1);
    assert_eq!(h.image.brokers[&1].broker_epoch, e3);

    let resp = h.run(register(-1));
    assert!(matches!(
        resp,
        ControllerResponse::RegisterBroker(Err(ControllerError::InvalidRequest(_)))
    ));
}

#[test]
fn producer_id_blocks_never_overlap() {
    let mut h = Harness::with_brokers(3);
    let mut blocks: Vec<(i64, i64)> = Vec::new();
    for i in 0..50 {
        let broker_id = i % 3;
        let broker_epoch = h.image.brokers[&broker_id].broker_epoch;
        let ControllerResponse::AllocateProducerIds(Ok(b)) =
            h.run(ControllerRequest::AllocateProducerIds {
                broker_id,
                broker_epoch,
            })
        else {
            panic!()
        };
        assert_eq!(b.size, DEFAULT_PRODUCER_ID_BLOCK_SIZE);
        blocks.push((b.first_producer_id, b.first_producer_id + b.size));
    }
    for pair in blocks.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "{pair:?} overlap");
    }
    assert_eq!(blocks[0].0, 0);
    assert_eq!(h.image.next_producer_id, blocks[49].1);
}

#[test]
fn allocate_producer_ids_needs_a_registered_broker_with_its_current_epoch() {
    let mut h = Harness::with_brokers(1);
    let epoch = h.image.brokers[&0].broker_epoch;
    let r = h.run(ControllerRequest::AllocateProducerIds {
        broker_id: 0,
        broker_epoch: epoch + 1,
    });
    assert!(matches!(
        r,
        ControllerResponse::AllocateProducerIds(Err(ControllerError::StaleBrokerEpoch(_)))
    ));
    let r = h.run(ControllerRequest::AllocateProducerIds {
        broker_id: 7,
        broker_epoch: 0,
    });
    assert!(matches!(
        r,
        ControllerResponse::AllocateProducerIds(Err(ControllerError::StaleBrokerEpoch(_)))
    ));
    h.image.next_producer_id = i64::MAX - 10;
    let r = h.run(ControllerRequest::AllocateProducerIds {
        broker_id: 0,
        broker_epoch: epoch,
    });
    assert!(matches!(
        r,
        ControllerResponse::AllocateProducerIds(Err(ControllerError::ProducerIdsExhausted(_)))
    ));
}

#[test]
fn topic_ids_are_unique_even_if_the_uuid_source_repeats() {
    let mut h = Harness::with_brokers(1);
    let ids = [
        Uuid::from_u128(77),
        Uuid::from_u128(77),
        Uuid::nil(),
        Uuid::from_u128(78),
    ];
    let mut i = 0;
    let mut new_uuid = || {
        let id = ids[i.min(ids.len() - 1)];
        i += 1;
        id
    };
    let mut random = |_n: u64| 0;
    let mut ctx = ControllerContext {
        now_ms: 0,
        new_uuid: &mut new_uuid,
        random: &mut random,
    };
    let (records, resp) = handle(
        &h.image,
        &h.config,
        &mut h.sessions,
        &mut ctx,
        ControllerRequest::CreateTopics {
            topics: vec![topic("a", 1, 1), topic("b", 1, 1)],
            validate_only: false,
        },
    );
    let ControllerResponse::CreateTopics(r) = resp else {
        panic!()
    };
    let got: BTreeSet<Uuid> = r
        .iter()
        .map(|t| t.result.as_ref().unwrap().topic_id)
        .collect();
    assert_eq!(
        got,
        BTreeSet::from([Uuid::from_u128(77), Uuid::from_u128(78)])
    );
    h.image.apply_batch(1, &MetadataBatch::new(records));
    assert_eq!(h.image.topics.len(), 2);
}

#[test]
fn controller_records_replay_to_the_state_it_answered() {
    // Everything the controller said it did is visible in the image it produced.
    let mut h = Harness::with_brokers(3);
    let mut t = topic("orders", 3, 3);
    t.configs
        .insert("min.insync.replicas".to_string(), "2".to_string());
    let created = h.create_one(t).unwrap();
    let img = h.image.topic_by_name("orders").unwrap();
    assert_eq!(img.topic_id, created.topic_id);
    assert_eq!(img.partitions.len() as i32, created.num_partitions);
    assert!(img
        .partitions
        .values()
        .all(|p| p.replicas.len() as i16 == created.replication_factor));
    assert_eq!(h.image.topic_configs("orders"), created.configs);
}
