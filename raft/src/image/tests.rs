//! Replay tests: the image is a pure, deterministic function of the record sequence.

use proptest::prelude::*;

use super::*;

/// Records over a small universe of ids and names, so that random sequences interact
/// (registrations then fencing of the same broker, configs of existing topics, ...).
pub(crate) fn arb_record() -> impl Strategy<Value = MetadataRecord> {
    let broker = 0..4i32;
    let epoch = 0..4i64;
    let topic_id = (0..4u128).prop_map(Uuid::from_u128);
    let name = prop::sample::select(vec!["a", "b", "a.b", "a_b", ""]).prop_map(str::to_string);
    let partition = -1..4i32;
    let ids = prop::collection::vec(-1..5i32, 0..4);
    let resource = prop_oneof![
        name.clone().prop_map(ConfigResource::Topic),
        prop::option::of(broker.clone()).prop_map(ConfigResource::Broker),
    ];
    let config_name =
        prop::sample::select(vec!["retention.ms", "cleanup.policy", "x"]).prop_map(str::to_string);
    let value =
        prop::option::of(prop::sample::select(vec!["1", "compact", ""]).prop_map(str::to_string));
    prop_oneof![
        (
            broker.clone(),
            any::<u128>(),
            epoch.clone(),
            prop::option::of(name.clone()),
            any::<bool>()
        )
            .prop_map(|(broker_id, inc, broker_epoch, rack, fenced)| {
                MetadataRecord::RegisterBroker {
                    broker_id,
                    incarnation_id: Uuid::from_u128(inc),
                    broker_epoch,
                    endpoints: vec![BrokerEndpoint {
                        listener: "PLAINTEXT".to_string(),
                        host: "h".to_string(),
                        port: 9092,
                    }],
                    rack,
                    fenced,
                }
            }),
        (broker.clone(), epoch.clone()).prop_map(|(broker_id, broker_epoch)| {
            MetadataRecord::UnregisterBroker {
                broker_id,
                broker_epoch,
            }
        }),
        (broker.clone(), epoch.clone()).prop_map(|(broker_id, broker_epoch)| {
            MetadataRecord::FenceBroker {
                broker_id,
                broker_epoch,
            }
        }),
        (broker.clone(), epoch.clone()).prop_map(|(broker_id, broker_epoch)| {
            MetadataRecord::UnfenceBroker {
                broker_id,
                broker_epoch,
            }
        }),
        (name.clone(), topic_id.clone())
            .prop_map(|(name, topic_id)| MetadataRecord::Topic { name, topic_id }),
        topic_id
            .clone()
            .prop_map(|topic_id| MetadataRecord::RemoveTopic { topic_id }),
        (
            topic_id.clone(),
            partition.clone(),
            ids.clone(),
            ids.clone(),
            -1..4i32,
            any::<i32>(),
            any::<i32>()
        )
            .prop_map(
                |(topic_id, partition, replicas, isr, leader, leader_epoch, partition_epoch)| {
                    MetadataRecord::Partition {
                        topic_id,
                        partition,
                        replicas,
                        isr,
                        leader,
                        leader_epoch,
                        partition_epoch,
                    }
                }
            ),
        (
            topic_id.clone(),
            partition.clone(),
            prop::option::of(-1..4i32),
            prop::option::of(ids.clone()),
            prop::option::of(ids)
        )
            .prop_map(|(topic_id, partition, leader, isr, replicas)| {
                MetadataRecord::PartitionChange {
                    topic_id,
                    partition,
                    leader,
                    isr,
                    replicas,
                }
            }),
        (resource, config_name, value).prop_map(|(resource, name, value)| MetadataRecord::Config {
            resource,
            name,
            value
        }),
        (broker, epoch, any::<i64>()).prop_map(|(broker_id, broker_epoch, next_producer_id)| {
            MetadataRecord::ProducerIds {
                broker_id,
                broker_epoch,
                next_producer_id,
            }
        }),
        (name.clone(), any::<i16>())
            .prop_map(|(name, level)| MetadataRecord::FeatureLevel { name, level }),
        name.prop_map(|cluster_id| MetadataRecord::ClusterId { cluster_id }),
        (
            topic_id,
            partition,
            prop::option::of(prop::collection::vec(-1..5i32, 0..4))
        )
            .prop_map(|(topic_id, partition, target)| {
                MetadataRecord::PartitionReassignment {
                    topic_id,
                    partition,
                    target,
                }
            }),
    ]
}

/// Splits `records` into batches at the given cut points and replays them one batch per
/// log index.
fn replay_in_batches(records: &[MetadataRecord], cuts: &[usize]) -> MetadataImage {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (records.len() + 1)).collect();
    points.push(0);
    points.push(records.len());
    points.sort_unstable();
    points.dedup();
    let mut image = MetadataImage::new();
    for (i, w) in points.windows(2).enumerate() {
        image.apply_batch(
            i as u64 + 1,
            &MetadataBatch::new(records[w[0]..w[1]].to_vec()),
        );
    }
    image
}

fn check_name_index(image: &MetadataImage) {
    assert_eq!(image.topic_ids_by_name.len(), image.topics.len());
    for (name, id) in &image.topic_ids_by_name {
        assert_eq!(&image.topics[id].name, name);
    }
    for resource in image.configs.keys() {
        if let ConfigResource::Topic(name) = resource {
            assert!(
                image.topic_ids_by_name.contains_key(name),
                "configs of missing topic {name}"
            );
        }
    }
    assert!(image.configs.values().all(|c| !c.is_empty()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// `apply` never panics and keeps its indexes consistent, whatever it is fed.
    #[test]
    fn apply_never_panics_on_arbitrary_record_sequences(records in prop::collection::vec(arb_record(), 0..80)) {
        let mut image = MetadataImage::new();
        for r in &records {
            image.apply(r);
            check_name_index(&image);
        }
    }

    /// Replaying one record at a time, all at once, or in arbitrary chunks ends in the same
    /// image (and digest), because an image is a function of the record sequence only.
    #[test]
    fn replay_in_chunks_gives_the_same_image_as_replay_from_zero(
        records in prop::collection::vec(arb_record(), 0..80),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut from_zero = MetadataImage::new();
        for r in &records {
            from_zero.apply(r);
        }
        let chunked = replay_in_batches(&records, &cuts);
        from_zero.last_applied_index = chunked.last_applied_index;
        prop_assert_eq!(&from_zero, &chunked);
        prop_assert_eq!(from_zero.digest(), chunked.digest());
    }

    /// A clone replayed with the same suffix stays equal: resuming from a persisted
    /// image is the same as replaying everything.
    #[test]
    fn resuming_from_an_intermediate_image_equals_full_replay(
        prefix in prop::collection::vec(arb_record(), 0..40),
        suffix in prop::collection::vec(arb_record(), 0..40),
    ) {
        let mut full = MetadataImage::new();
        for r in prefix.iter().chain(&suffix) {
            full.apply(r);
        }
        let mut resumed = MetadataImage::new();
        for r in &prefix {
            resumed.apply(r);
        }
        let mut resumed = resumed.clone();
        for r in &suffix {
            resumed.apply(r);
        }
        prop_assert_eq!(full.digest(), resumed.digest());
    }
}

fn t(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

#[test]
fn remove_topic_removes_its_partitions_name_and_configs() {
    let mut image = MetadataImage::new();
    image.apply(&MetadataRecord::Topic {
        name: "a".to_string(),
        topic_id: t(1),
    });
    image.apply(&MetadataRecord::Partition {
        topic_id: t(1),
        partition: 0,
        replicas: vec![1],
        isr: vec![1],
        leader: 1,
        leader_epoch: 0,
        partition_epoch: 0,
    });
    image.apply(&MetadataRecord::Config {
        resource: ConfigResource::Topic("a".to_string()),
        name: "retention.ms".to_string(),
        value: Some("5".to_string()),
    });
    assert_eq!(image.topic_configs("a").len(), 1);
    image.apply(&MetadataRecord::RemoveTopic { topic_id: t(1) });
    assert!(
        image.topics.is_empty() && image.topic_ids_by_name.is_empty() && image.configs.is_empty()
    );
    assert_eq!(image, MetadataImage::new());
}

#[test]
fn partition_change_bumps_partition_epoch_and_leader_epoch_on_a_new_leader() {
    let mut image = MetadataImage::new();
    image.apply(&MetadataRecord::Topic {
        name: "a".to_string(),
        topic_id: t(1),
    });
    image.apply(&MetadataRecord::Partition {
        topic_id: t(1),
        partition: 0,
        replicas: vec![1, 2],
        isr: vec![1, 2],
        leader: 1,
        leader_epoch: 0,
        partition_epoch: 0,
    });
    let change = |leader, isr: Option<Vec<i32>>| MetadataRecord::PartitionChange {
        topic_id: t(1),
        partition: 0,
        leader,
        isr,
        replicas: None,
    };
    image.apply(&change(None, Some(vec![1])));
    let p = &image.topics[&t(1)].partitions[&0];
    assert_eq!(
        (p.leader, p.leader_epoch, p.partition_epoch, p.isr.clone()),
        (1, 0, 1, vec![1])
    );
    image.apply(&change(Some(1), None));
    let p = &image.topics[&t(1)].partitions[&0];
    assert_eq!(
        (p.leader_epoch, p.partition_epoch),
        (0, 2),
        "same leader: no new leader epoch"
    );
    image.apply(&change(Some(2), Some(vec![2])));
    let p = &image.topics[&t(1)].partitions[&0];
    assert_eq!((p.leader, p.leader_epoch, p.partition_epoch), (2, 1, 3));
}

#[test]
fn broker_records_with_a_stale_epoch_are_ignored() {
    let mut image = MetadataImage::new();
    let reg = |epoch| MetadataRecord::RegisterBroker {
        broker_id: 1,
        incarnation_id: t(9),
        broker_epoch: epoch,
        endpoints: vec![],
        rack: None,
        fenced: false,
    };
    image.apply(&reg(5));
    assert_eq!(image.next_broker_epoch, 6);
    image.apply(&MetadataRecord::FenceBroker {
        broker_id: 1,
        broker_epoch: 4,
    });
    assert!(!image.brokers[&1].fenced);
    image.apply(&MetadataRecord::FenceBroker {
        broker_id: 1,
        broker_epoch: 5,
    });
    assert!(image.brokers[&1].fenced);
    image.apply(&reg(3));
    assert_eq!(
        image.brokers[&1].broker_epoch, 5,
        "older registration ignored"
    );
    image.apply(&MetadataRecord::UnregisterBroker {
        broker_id: 1,
        broker_epoch: 4,
    });
    assert!(image.brokers.contains_key(&1));
    image.apply(&MetadataRecord::UnregisterBroker {
        broker_id: 1,
        broker_epoch: 5,
    });
    assert!(image.brokers.is_empty());
}

#[test]
fn records_for_unknown_topics_are_ignored() {
    let mut image = MetadataImage::new();
    image.apply(&MetadataRecord::Config {
        resource: ConfigResource::Topic("ghost".to_string()),
        name: "retention.ms".to_string(),
        value: Some("1".to_string()),
    });
    image.apply(&MetadataRecord::Partition {
        topic_id: t(3),
        partition: 0,
        replicas: vec![],
        isr: vec![],
        leader: -1,
        leader_epoch: 0,
        partition_epoch: 0,
    });
    image.apply(&MetadataRecord::Topic {
        name: "a".to_string(),
        topic_id: t(1),
    });
    image.apply(&MetadataRecord::Topic {
        name: "a".to_string(),
        topic_id: t(2),
    });
    image.apply(&MetadataRecord::Topic {
        name: "b".to_string(),
        topic_id: t(1),
    });
    assert_eq!(image.topics.len(), 1);
    assert_eq!(image.topic_by_name("a").map(|t| t.topic_id), Some(t(1)));
    assert!(image.configs.is_empty());
}

#[test]
fn digest_is_stable_and_sensitive() {
    // A fixed value: the digest must not change between builds or Rust versions, or two
    // nodes on different versions would look divergent.
    assert_eq!(MetadataImage::new().digest(), EMPTY_IMAGE_DIGEST);
    let mut a = MetadataImage::new();
    a.apply(&MetadataRecord::Topic {
        name: "ab".to_string(),
        topic_id: t(1),
    });
    let mut b = MetadataImage::new();
    b.apply(&MetadataRecord::Topic {
        name: "a".to_string(),
        topic_id: t(1),
    });
    assert_ne!(a.digest(), b.digest());
    let mut c = a.clone();
    c.mark_applied(1);
    assert_ne!(a.digest(), c.digest());
    let mut d = a.clone();
    d.apply(&MetadataRecord::ClusterId {
        cluster_id: "abc".to_string(),
    });
    assert_ne!(a.digest(), d.digest());
}

#[test]
fn the_cluster_id_is_set_once_and_never_changes() {
    let mut image = MetadataImage::new();
    image.apply(&MetadataRecord::ClusterId {
        cluster_id: "first".to_string(),
    });
    image.apply(&MetadataRecord::ClusterId {
        cluster_id: "second".to_string(),
    });
    assert_eq!(image.cluster_id.as_deref(), Some("first"));
}

const EMPTY_IMAGE_DIGEST: u64 = 13_380_826_962_402_805_797;
