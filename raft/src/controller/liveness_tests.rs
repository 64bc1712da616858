//! Pure controller tests of broker liveness (heartbeats, fencing, unfencing, controlled
//! shutdown, removal), AlterPartition and rack-aware placement. No network, disk or clock:
//! the harness's `now_ms` is the clock.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::tests::manual;
use super::tests::register;
use super::tests::topic;
use super::tests::Harness;
use super::*;
use crate::image::NO_LEADER;

const SESSION_MS: i64 = DEFAULT_BROKER_SESSION_TIMEOUT_MS as i64;

impl Harness {
    fn heartbeat_with(
        &mut self,
        broker_id: i32,
        offset: u64,
        want_fence: bool,
        want_shutdown: bool,
    ) -> (Vec<MetadataRecord>, Result<HeartbeatReply, ControllerError>) {
        let broker_epoch = self
            .image
            .brokers
            .get(&broker_id)
            .map_or(-1, |b| b.broker_epoch);
        let (records, resp) = self.handle(ControllerRequest::BrokerHeartbeat {
            broker_id,
            broker_epoch,
            current_metadata_offset: offset,
            want_fence,
            want_shutdown,
        });
        let ControllerResponse::BrokerHeartbeat(r) = resp else {
            panic!("unexpected {resp:?}")
        };
        (records, r)
    }

    /// A caught-up heartbeat from `broker_id`.
    fn alive(&mut self, broker_id: i32) -> HeartbeatReply {
        let offset = self.index;
        self.heartbeat_with(broker_id, offset, false, false)
            .1
            .unwrap()
    }

    /// A cluster with heartbeats and `n` registered, caught-up, unfenced brokers.
    fn live_brokers(n: i32) -> Self {
        let mut h = Harness::with_heartbeats();
        for id in 0..n {
            assert!(matches!(
                h.run(register(id)),
                ControllerResponse::RegisterBroker(Ok(_))
            ));
        }
        for id in 0..n {
            assert!(!h.alive(id).is_fenced);
        }
        h
    }

    fn partition(&self, name: &str, p: i32) -> PartitionImage {
        self.image.topic_by_name(name).unwrap().partitions[&p].clone()
    }

    fn alter_isr(
        &mut self,
        broker_id: i32,
        name: &str,
        p: i32,
        new_isr: Vec<i32>,
    ) -> Result<PartitionImage, ControllerError> {
        let part = self.partition(name, p);
        let topic_id = self.image.topic_by_name(name).unwrap().topic_id;
        self.alter_raw(
            broker_id,
            topic_id,
            p,
            part.leader_epoch,
            part.partition_epoch,
            new_isr,
        )
    }

    fn alter_raw(
        &mut self,
        broker_id: i32,
        topic_id: Uuid,
        partition: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        new_isr: Vec<i32>,
    ) -> Result<PartitionImage, ControllerError> {
        let broker_epoch = self
            .image
            .brokers
            .get(&broker_id)
            .map_or(-1, |b| b.broker_epoch);
        let resp = self.run(ControllerRequest::AlterPartition {
            broker_id,
            broker_epoch,
            topic_id,
            partition,
            leader_epoch,
            partition_epoch,
            new_isr,
        });
        let ControllerResponse::AlterPartition(r) = resp else {
            panic!("unexpected {resp:?}")
        };
        r
    }
}

fn register_in_rack(broker_id: i32, rack: &str) -> ControllerRequest {
    let ControllerRequest::RegisterBroker {
        incarnation_id,
        endpoints,
        ..
    } = register(broker_id)
    else {
        unreachable!()
    };
    ControllerRequest::RegisterBroker {
        broker_id,
        incarnation_id,
        endpoints,
        rack: Some(rack.to_string()),
    }
}

#[test]
fn a_broker_registers_fenced_and_is_unfenced_by_a_caught_up_heartbeat() {
    let mut h = Harness::with_heartbeats();
    h.run(register(0));
    let registered_at = h.index;
    assert!(h.image.brokers[&0].fenced);

    let (records, reply) = h.heartbeat_with(0, registered_at - 1, false, false);
    let reply = reply.unwrap();
    assert!(records.is_empty());
    assert!(reply.is_fenced && !reply.is_caught_up && !reply.should_shut_down);

    let (records, reply) = h.heartbeat_with(0, registered_at, false, false);
    let reply = reply.unwrap();
    assert_eq!(
        records,
        vec![MetadataRecord::UnfenceBroker {
            broker_id: 0,
            broker_epoch: h.image.brokers[&0].broker_epoch
        }]
    );
    assert!(!reply.is_fenced && reply.is_caught_up);
    assert!(!h.image.brokers[&0].fenced);
}

#[test]
fn a_heartbeat_with_an_unknown_broker_or_old_epoch_answers_stale_broker_epoch() {
    let mut h = Harness::live_brokers(1);
    let old = h.image.brokers[&0].broker_epoch;
    let (_, r) = h.heartbeat_with(7, 0, false, false);
    assert!(matches!(r, Err(ControllerError::StaleBrokerEpoch(m)) if m.contains("broker 7")));
    let ControllerRequest::RegisterBroker {
        endpoints, rack, ..
    } = register(0)
    else {
        unreachable!()
    };
    h.run(ControllerRequest::RegisterBroker {
        broker_id: 0,
        incarnation_id: Uuid::from_u128(42),
        endpoints,
        rack,
    });
    let (records, resp) = h.handle(ControllerRequest::BrokerHeartbeat {
        broker_id: 0,
        broker_epoch: old,
        current_metadata_offset: h.index,
        want_fence: false,
        want_shutdown: false,
    });
    assert!(records.is_empty());
    assert!(matches!(
        resp,
        ControllerResponse::BrokerHeartbeat(Err(ControllerError::StaleBrokerEpoch(_)))
    ));
}

#[test]
fn a_silent_broker_is_fenced_and_its_partitions_get_new_leaders_from_the_isr() {
    let mut h = Harness::live_brokers(3);
    h.create_one(topic("orders", 3, 3)).unwrap();
    let before: Vec<PartitionImage> = (0..3).map(|p| h.partition("orders", p)).collect();
    assert!(before.iter().any(|p| p.leader == 0));

    h.now_ms += SESSION_MS / 2;
    h.alive(1);
    h.alive(2);
    assert!(h.tick().is_empty(), "nobody is silent long enough yet");
    h.now_ms += SESSION_MS / 2 + 1;
    h.alive(1);
    h.alive(2);
    let records = h.tick();
    assert_eq!(
        records[0],
        MetadataRecord::FenceBroker {
            broker_id: 0,
            broker_epoch: h.image.brokers[&0].broker_epoch
        }
    );
    assert!(h.image.brokers[&0].fenced);
    assert!(!h.image.brokers[&1].fenced && !h.image.brokers[&2].fenced);
    for (p, old) in before.iter().enumerate() {
        let now = h.partition("orders", p as i32);
        assert!(!now.isr.contains(&0), "{now:?}");
        assert_ne!(now.leader, 0);
        assert!(now.isr.contains(&now.leader));
        assert_eq!(now.partition_epoch, old.partition_epoch + 1);
        if old.leader == 0 {
            // The first replica in replica order that is still in the ISR.
            let expected = old.replicas.iter().copied().find(|r| *r != 0).unwrap();
            assert_eq!(now.leader, expected);
            assert_eq!(now.leader_epoch, old.leader_epoch + 1);
        } else {
            assert_eq!(now.leader, old.leader);
            assert_eq!(now.leader_epoch, old.leader_epoch);
        }
    }
    // Fencing happens once.
    h.now_ms += SESSION_MS;
    h.alive(1);
    h.alive(2);
    assert!(h.tick().is_empty());
}

#[test]
fn the_last_isr_member_keeps_the_isr_when_fenced_and_leads_again_when_back() {
    let mut h = Harness::live_brokers(2);
    h.create_one(manual("solo", &[&[0]])).unwrap();
    h.now_ms += SESSION_MS + 1;
    h.alive(1);
    h.tick();
    let p = h.partition("solo", 0);
    assert_eq!(p.isr, vec![0], "the ISR never becomes empty");
    assert_eq!(p.leader, NO_LEADER);
    assert_eq!((p.leader_epoch, p.partition_epoch), (1, 1));

    // Broker 0 heartbeats again and has caught up: unfenced, and leads its partition.
    let reply = h.alive(0);
    assert!(!reply.is_fenced);
    let p = h.partition("solo", 0);
    assert_eq!(p.leader, 0);
    assert_eq!((p.leader_epoch, p.partition_epoch), (2, 2));
}

#[test]
fn brokers_fenced_in_one_tick_are_never_elected_in_turn() {
    let mut h = Harness::live_brokers(3);
    h.create_one(manual("t", &[&[0, 1, 2]])).unwrap();
    // 0 and 1 go silent and are fenced in the same tick: leadership moves past both.
    h.now_ms += SESSION_MS + 1;
    h.alive(2);
    h.tick();
    let p = h.partition("t", 0);
    assert_eq!(p.leader, 2);
    assert_eq!(p.isr, vec![2]);
}

#[test]
fn a_new_active_controller_starts_every_session_fresh() {
    let mut h = Harness::live_brokers(2);
    // Long after the last heartbeat, a new controller becomes active.
    h.now_ms += 10 * SESSION_MS;
    h.sessions = BrokerSessions::new();
    h.sessions.activate(&h.image, h.now_ms);
    assert!(h.tick().is_empty(), "a failover must not fence everyone");
    h.now_ms += SESSION_MS / 2;
    h.alive(1);
    h.now_ms += SESSION_MS / 2 + 1;
    let records = h.tick();
    assert!(h.image.brokers[&0].fenced);
    assert!(!h.image.brokers[&1].fenced);
    assert!(matches!(
        records[0],
        MetadataRecord::FenceBroker { broker_id: 0, .. }
    ));
    // A broker registered before the failover is caught up once it reached the
    // activation point.
    let reply = h.alive(0);
    assert!(reply.is_caught_up && !reply.is_fenced);
}

#[test]
fn without_heartbeats_silent_brokers_are_never_fenced() {
    let mut h = Harness::with_brokers(2);
    assert!(!h.image.brokers[&0].fenced);
    h.now_ms += 100 * SESSION_MS;
    assert!(h.tick().is_empty());
    assert!(!h.image.brokers[&0].fenced);
}

#[test]
fn want_fence_fences_the_broker_and_moves_its_leaderships() {
    let mut h = Harness::live_brokers(2);
    h.create_one(manual("t", &[&[0, 1]])).unwrap();
    let (records, reply) = h.heartbeat_with(0, h.index, true, false);
    assert!(reply.unwrap().is_fenced);
    assert!(matches!(
        records[0],
        MetadataRecord::FenceBroker { broker_id: 0, .. }
    ));
    let p = h.partition("t", 0);
    assert_eq!((p.leader, p.isr.clone()), (1, vec![1]));
    // Still wanting to be fenced: stays fenced, nothing written.
    let (records, reply) = h.heartbeat_with(0, h.index, true, false);
    assert!(records.is_empty() && reply.unwrap().is_fenced);
}

#[test]
fn controlled_shutdown_moves_leaderships_and_answers_should_shut_down() {
    let mut h = Harness::live_brokers(3);
    h.create_one(manual("rf3", &[&[0, 1, 2], &[1, 0, 2], &[2, 1, 0]]))
        .unwrap();
    h.create_one(manual("solo", &[&[0]])).unwrap();
    let (records, reply) = h.heartbeat_with(0, h.index, false, true);
    let reply = reply.unwrap();
    assert!(!records.is_empty());
    assert!(reply.should_shut_down, "it leads only what cannot move");
    assert!(!reply.is_fenced);
    let p0 = h.partition("rf3", 0);
    assert_eq!((p0.leader, p0.isr.clone()), (1, vec![1, 2]));
    assert_eq!(p0.leader_epoch, 1);
    for p in 1..3 {
        let part = h.partition("rf3", p);
        assert!(!part.isr.contains(&0), "{part:?}");
        assert_ne!(part.leader, 0);
    }
    // The only replica keeps leading and stays in the ISR.
    let solo = h.partition("solo", 0);
    assert_eq!((solo.leader, solo.isr.clone()), (0, vec![0]));

    // A broker in controlled shutdown is not elected and gets no new replicas.
    h.now_ms += SESSION_MS + 1;
    h.alive(0);
    h.alive(2);
    h.tick(); // fences 1
    let p1 = h.partition("rf3", 1);
    assert_eq!(p1.leader, 2);
    assert!(matches!(
        h.create_one(topic("new", 1, 2)),
        Err(ControllerError::InvalidReplicationFactor(_))
    ));
    // And it is not unfenced-and-elected by later heartbeats either.
    let (records, reply) = h.heartbeat_with(0, h.index, false, true);
    assert!(records.is_empty());
    assert!(reply.unwrap().should_shut_down);
}

#[test]
fn controlled_shutdown_keeps_leading_what_cannot_move() {
    let mut h = Harness::live_brokers(2);
    h.create_one(manual("t", &[&[0, 1]])).unwrap();
    // The only other ISR member is fenced: nowhere to move, so shutting down is fine.
    h.now_ms += SESSION_MS + 1;
    h.alive(0);
    h.tick();
    assert!(h.image.brokers[&1].fenced);
    let (_, reply) = h.heartbeat_with(0, h.index, false, true);
    assert!(reply.unwrap().should_shut_down);
    assert_eq!(h.partition("t", 0).leader, 0);
}

#[test]
fn unregister_broker_moves_leaderships_then_removes_the_registration() {
    let mut h = Harness::live_brokers(3);
    h.create_one(manual("t", &[&[0, 1, 2]])).unwrap();
    let (records, resp) = h.handle(ControllerRequest::UnregisterBroker { broker_id: 0 });
    assert_eq!(resp, ControllerResponse::UnregisterBroker(Ok(())));
    assert!(matches!(
        records.last(),
        Some(MetadataRecord::UnregisterBroker { broker_id: 0, .. })
    ));
    assert!(!h.image.brokers.contains_key(&0));
    let p = h.partition("t", 0);
    assert_eq!((p.leader, p.isr.clone()), (1, vec![1, 2]));
    assert!(matches!(
        h.run(ControllerRequest::UnregisterBroker { broker_id: 0 }),
        ControllerResponse::UnregisterBroker(Err(ControllerError::BrokerIdNotRegistered(_)))
    ));
}

#[test]
fn re_registering_an_unfenced_broker_fences_it_and_moves_its_leaderships() {
    let mut h = Harness::live_brokers(2);
    h.create_one(manual("t", &[&[0, 1]])).unwrap();
    let ControllerRequest::RegisterBroker {
        endpoints, rack, ..
    } = register(0)
    else {
        unreachable!()
    };
    let (records, _) = h.handle(ControllerRequest::RegisterBroker {
        broker_id: 0,
        incarnation_id: Uuid::from_u128(4242),
        endpoints,
        rack,
    });
    assert!(matches!(
        records.last(),
        Some(MetadataRecord::RegisterBroker { fenced: true, .. })
    ));
    assert!(h.image.brokers[&0].fenced);
    let p = h.partition("t", 0);
    assert_eq!((p.leader, p.isr.clone()), (1, vec![1]));
    // The new incarnation catches up and is unfenced; it rejoins the ISR only through its
    // leader's AlterPartition.
    assert!(!h.alive(0).is_fenced);
    assert_eq!(h.partition("t", 0).isr, vec![1]);
}

#[test]
fn alter_partition_changes_the_isr_by_compare_and_set() {
    let mut h = Harness::live_brokers(3);
    h.create_one(manual("t", &[&[0, 1, 2]])).unwrap();
    let id = h.image.topic_by_name("t").unwrap().topic_id;

    let shrunk = h.alter_isr(0, "t", 0, vec![0, 2]).unwrap();
    assert_eq!(shrunk, h.partition("t", 0));
    assert_eq!(
        (
            shrunk.isr.clone(),
            shrunk.partition_epoch,
            shrunk.leader_epoch
        ),
        (vec![0, 2], 1, 0)
    );

    // Same ISR again: nothing to write, the current state is the answer.
    let (records, resp) = h.handle(ControllerRequest::AlterPartition {
        broker_id: 0,
        broker_epoch: h.image.brokers[&0].broker_epoch,
        topic_id: id,
        partition: 0,
        leader_epoch: 0,
        partition_epoch: 1,
        new_isr: vec![0, 2],
    });
    assert!(records.is_empty());
    assert_eq!(resp, ControllerResponse::AlterPartition(Ok(shrunk.clone())));

    // A request built on the old partition epoch loses.
    assert!(matches!(
        h.alter_raw(0, id, 0, 0, 0, vec![0, 1, 2]),
        Err(ControllerError::InvalidUpdateVersion(_))
    ));
    assert!(matches!(
        h.alter_raw(0, id, 0, 5, 1, vec![0, 1, 2]),
        Err(ControllerError::FencedLeaderEpoch(_))
    ));
    assert!(matches!(
        h.alter_raw(1, id, 0, 0, 1, vec![0, 1, 2]),
        Err(ControllerError::NotLeaderOrFollower(_))
    ));
    assert!(matches!(
        h.alter_raw(0, Uuid::from_u128(1), 0, 0, 1, vec![0]),
        Err(ControllerError::UnknownTopicId(_))
    ));
    assert!(matches!(
        h.alter_raw(0, id, 9, 0, 1, vec![0]),
        Err(ControllerError::UnknownTopicOrPartition(_))
    ));
    for bad in [vec![], vec![0, 0], vec![0, 7], vec![1, 2]] {
        let e = h.alter_isr(0, "t", 0, bad.clone()).unwrap_err();
        assert!(
            matches!(e, ControllerError::InvalidRequest(_)),
            "{bad:?}: {e}"
        );
    }
    // A stale broker epoch.
    let resp = h.run(ControllerRequest::AlterPartition {
        broker_id: 0,
        broker_epoch: h.image.brokers[&0].broker_epoch - 1,
        topic_id: id,
        partition: 0,
        leader_epoch: 0,
        partition_epoch: 1,
        new_isr: vec![0],
    });
    assert!(matches!(
        resp,
        ControllerResponse::AlterPartition(Err(ControllerError::StaleBrokerEpoch(_)))
    ));

    // Expanding with a fenced broker is refused; with an unfenced one it works.
    h.now_ms += SESSION_MS + 1;
    h.alive(0);
    h.alive(2);
    h.tick();
    assert!(h.image.brokers[&1].fenced);
    assert!(matches!(
        h.alter_isr(0, "t", 0, vec![0, 1, 2]),
        Err(ControllerError::IneligibleReplica(m)) if m.contains("fenced")
    ));
    h.alive(1);
    let grown = h.alter_isr(0, "t", 0, vec![0, 1, 2]).unwrap();
    assert_eq!(grown.isr, vec![0, 1, 2]);
    assert_eq!(grown.partition_epoch, 2);
}

#[test]
fn rack_aware_placement_spreads_every_partition_over_racks_and_leaders_over_brokers() {
    let mut h = Harness::new();
    for (id, rack) in [(0, "a"), (1, "a"), (2, "b"), (3, "b"), (4, "c"), (5, "c")] {
        h.run(register_in_rack(id, rack));
    }
    h.pick = 3;
    h.create_one(topic("t", 6, 3)).unwrap();
    let t = h.image.topic_by_name("t").unwrap();
    let rack = |id: &i32| h.image.brokers[id].rack.clone();
    let mut leaders = BTreeSet::new();
    for p in t.partitions.values() {
        let racks: BTreeSet<_> = p.replicas.iter().map(rack).collect();
        assert_eq!(racks.len(), 3, "{p:?} is not spread over the 3 racks");
        leaders.insert(p.leader);
    }
    assert_eq!(leaders.len(), 6, "every broker leads one of 6 partitions");

    // More replicas than racks: every rack is used, then any broker.
    h.create_one(topic("wide", 4, 4)).unwrap();
    let rack = |id: &i32| h.image.brokers[id].rack.clone();
    for p in h.image.topic_by_name("wide").unwrap().partitions.values() {
        let racks: BTreeSet<_> = p.replicas.iter().map(rack).collect();
        assert_eq!(racks.len(), 3);
        let distinct: BTreeSet<_> = p.replicas.iter().collect();
        assert_eq!(distinct.len(), 4);
    }
}

#[test]
fn placement_without_racks_rotates_leaders_over_unfenced_brokers_only() {
    let mut h = Harness::live_brokers(4);
    h.now_ms += SESSION_MS + 1;
    for id in [0, 1, 3] {
        h.alive(id);
    }
    h.tick();
    h.create_one(topic("t", 6, 2)).unwrap();
    let t = h.image.topic_by_name("t").unwrap();
    let mut leaders = BTreeSet::new();
    for p in t.partitions.values() {
        assert!(
            !p.replicas.contains(&2),
            "fenced broker 2 got a replica: {p:?}"
        );
        leaders.insert(p.leader);
    }
    assert_eq!(leaders, BTreeSet::from([0, 1, 3]));
}
