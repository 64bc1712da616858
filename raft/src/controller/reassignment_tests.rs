//! Pure controller tests of partition reassignment (KIP-455), ElectLeaders and the
//! preferred-leader rebalance. No network, disk or clock.

use uuid::Uuid;

use super::tests::manual;
use super::tests::register;
use super::tests::Harness;
use super::*;
use crate::image::Reassignment;
use crate::image::NO_LEADER;
use crate::records::MetadataBatch;

impl Harness {
    /// Brokers `0..n` and topic "t" with one partition per entry of `assignments`.
    fn with_topic(n: i32, assignments: &[&[i32]]) -> (Self, Uuid) {
        let mut h = Harness::with_brokers(n);
        let created = h.create_one(manual("t", assignments)).unwrap();
        (h, created.topic_id)
    }

    fn state(&self, topic_id: Uuid, p: i32) -> PartitionImage {
        self.image.topics[&topic_id].partitions[&p].clone()
    }

    fn reassign(
        &mut self,
        topic_id: Uuid,
        partition: i32,
        target: Option<&[i32]>,
    ) -> Result<(), ControllerError> {
        let resp = self.run(ControllerRequest::AlterPartitionReassignments {
            topic_id,
            partition,
            target: target.map(<[i32]>::to_vec),
        });
        let ControllerResponse::AlterPartitionReassignments(r) = resp else {
            panic!("unexpected {resp:?}")
        };
        r
    }

    fn elect(
        &mut self,
        topic_id: Uuid,
        partition: i32,
        unclean: bool,
    ) -> Result<PartitionImage, ControllerError> {
        let resp = self.run(ControllerRequest::ElectLeaders {
            topic_id,
            partition,
            unclean,
        });
        let ControllerResponse::ElectLeaders(r) = resp else {
            panic!("unexpected {resp:?}")
        };
        r
    }

    /// AlterPartition from the partition's current leader, at its current epochs.
    fn leader_sets_isr(
        &mut self,
        topic_id: Uuid,
        partition: i32,
        new_isr: &[i32],
    ) -> Result<PartitionImage, ControllerError> {
        let p = self.state(topic_id, partition);
        let resp = self.run(ControllerRequest::AlterPartition {
            broker_id: p.leader,
            broker_epoch: self.image.brokers[&p.leader].broker_epoch,
            topic_id,
            partition,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr: new_isr.to_vec(),
        });
        let ControllerResponse::AlterPartition(r) = resp else {
            panic!("unexpected {resp:?}")
        };
        r
    }

    /// Fences `broker_id` the way a heartbeat asking for it does (leaderships move).
    fn fence_via_heartbeat(&mut self, broker_id: i32) {
        let resp = self.run(ControllerRequest::BrokerHeartbeat {
            broker_id,
            broker_epoch: self.image.brokers[&broker_id].broker_epoch,
            current_metadata_offset: self.index,
            want_fence: true,
            want_shutdown: false,
        });
        assert!(
            matches!(resp, ControllerResponse::BrokerHeartbeat(Ok(r)) if r.is_fenced),
            "{resp:?}"
        );
    }

    /// Unfences `broker_id` with a caught-up heartbeat.
    fn unfence_via_heartbeat(&mut self, broker_id: i32) {
        let resp = self.run(ControllerRequest::BrokerHeartbeat {
            broker_id,
            broker_epoch: self.image.brokers[&broker_id].broker_epoch,
            current_metadata_offset: self.index,
            want_fence: false,
            want_shutdown: false,
        });
        assert!(
            matches!(resp, ControllerResponse::BrokerHeartbeat(Ok(r)) if !r.is_fenced),
            "{resp:?}"
        );
    }

    /// Replays the whole log into a fresh image: it must equal the harness's image.
    fn assert_replay_matches(&self) {
        let mut replayed = MetadataImage::new();
        for (i, records) in self.log.iter().enumerate() {
            replayed.apply_batch(i as u64 + 1, &MetadataBatch::new(records.clone()));
        }
        assert_eq!(replayed, self.image);
        assert_eq!(replayed.digest(), self.image.digest());
    }
}

#[test]
fn reassignment_widens_replicas_then_completes_once_the_target_is_in_sync() {
    let (mut h, t) = Harness::with_topic(4, &[&[0, 1, 2]]);
    let before = h.state(t, 0);
    assert_eq!((before.leader, before.isr.clone()), (0, vec![0, 1, 2]));

    h.reassign(t, 0, Some(&[1, 2, 3])).unwrap();
    let during = h.state(t, 0);
    assert_eq!(during.replicas, vec![0, 1, 2, 3]);
    assert_eq!(during.isr, vec![0, 1, 2]);
    // The removing replica keeps leading until the reassignment completes.
    assert_eq!(
        (during.leader, during.leader_epoch),
        (0, before.leader_epoch)
    );
    assert_eq!(
        h.image.reassignment(&t, 0),
        Some(&Reassignment {
            target: vec![1, 2, 3],
            adding: vec![3],
            removing: vec![0],
        })
    );
    assert_eq!(h.image.reassignments().count(), 1);

    // The leader reports broker 3 caught up: the reassignment finishes.
    let answered = h.leader_sets_isr(t, 0, &[0, 1, 2, 3]).unwrap();
    let done = h.state(t, 0);
    assert_eq!(answered, done);
    assert_eq!(done.replicas, vec![1, 2, 3]);
    assert_eq!(done.isr, vec![1, 2, 3]);
    assert_eq!(done.leader, 1);
    assert_eq!(done.leader_epoch, before.leader_epoch + 1);
    assert_eq!(h.image.reassignment(&t, 0), None);
    assert_eq!(h.image.reassignments().count(), 0);
    h.assert_replay_matches();
}

#[test]
fn an_isr_change_that_leaves_a_target_replica_out_does_not_complete() {
    let (mut h, t) = Harness::with_topic(5, &[&[0, 1]]);
    h.reassign(t, 0, Some(&[2, 3])).unwrap();
    assert_eq!(h.state(t, 0).replicas, vec![0, 1, 2, 3]);
    h.leader_sets_isr(t, 0, &[0, 1, 2]).unwrap();
    let p = h.state(t, 0);
    assert_eq!((p.replicas.clone(), p.leader), (vec![0, 1, 2, 3], 0));
    assert!(h.image.reassignment(&t, 0).is_some());
    h.leader_sets_isr(t, 0, &[0, 1, 2, 3]).unwrap();
    let p = h.state(t, 0);
    assert_eq!((p.replicas, p.isr, p.leader), (vec![2, 3], vec![2, 3], 2));
    assert!(h.image.reassignment(&t, 0).is_none());
}

#[test]
fn a_target_already_in_sync_completes_at_once_and_keeps_a_leader_it_contains() {
    let (mut h, t) = Harness::with_topic(3, &[&[0, 1, 2]]);
    let before = h.state(t, 0);
    h.reassign(t, 0, Some(&[1, 0])).unwrap();
    let p = h.state(t, 0);
    assert_eq!((p.replicas, p.isr), (vec![1, 0], vec![0, 1]));
    assert_eq!((p.leader, p.leader_epoch), (0, before.leader_epoch));
    assert!(h.image.reassignment(&t, 0).is_none());
    h.assert_replay_matches();
}

#[test]
fn a_target_equal_to_the_replicas_is_a_no_op() {
    let (mut h, t) = Harness::with_topic(3, &[&[0, 1, 2]]);
    let (records, resp) = h.handle(ControllerRequest::AlterPartitionReassignments {
        topic_id: t,
        partition: 0,
        target: Some(vec![0, 1, 2]),
    });
    assert_eq!(
        resp,
        ControllerResponse::AlterPartitionReassignments(Ok(()))
    );
    assert!(records.is_empty());
}

#[test]
fn cancel_restores_the_original_replicas_and_isr() {
    let (mut h, t) = Harness::with_topic(5, &[&[0, 1, 2]]);
    let before = h.state(t, 0);
    h.reassign(t, 0, Some(&[3, 4])).unwrap();
    h.leader_sets_isr(t, 0, &[0, 1, 2, 3]).unwrap();
    assert_eq!(h.state(t, 0).replicas, vec![0, 1, 2, 3, 4]);

    h.reassign(t, 0, None).unwrap();
    let p = h.state(t, 0);
    assert_eq!(p.replicas, before.replicas);
    assert_eq!(p.isr, vec![0, 1, 2]);
    assert_eq!((p.leader, p.leader_epoch), (0, before.leader_epoch));
    assert!(h.image.reassignment(&t, 0).is_none());

    assert_eq!(
        h.reassign(t, 0, None),
        Err(ControllerError::NoReassignmentInProgress)
    );
    h.assert_replay_matches();
}

#[test]
fn cancel_moves_leadership_off_an_adding_replica() {
    let mut h = Harness::with_heartbeats();
    for id in 0..4 {
        h.run(register(id));
    }
    for id in 0..4 {
        h.unfence_via_heartbeat(id);
    }
    let t = h.create_one(manual("t", &[&[0, 1]])).unwrap().topic_id;
    h.reassign(t, 0, Some(&[2, 3])).unwrap();
    h.leader_sets_isr(t, 0, &[0, 1, 2]).unwrap();
    // 0 and 1 go: adding replica 2 ends up leading alone.
    h.fence_via_heartbeat(0);
    h.fence_via_heartbeat(1);
    let p = h.state(t, 0);
    assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
    // 1 comes back and catches up.
    h.unfence_via_heartbeat(1);
    h.leader_sets_isr(t, 0, &[2, 1]).unwrap();

    let epoch = h.state(t, 0).leader_epoch;
    h.reassign(t, 0, None).unwrap();
    let p = h.state(t, 0);
    assert_eq!((p.replicas, p.isr), (vec![0, 1], vec![1]));
    assert_eq!((p.leader, p.leader_epoch), (1, epoch + 1));
    h.assert_replay_matches();
}

#[test]
fn a_new_target_replaces_the_reassignment_in_progress() {
    let (mut h, t) = Harness::with_topic(5, &[&[0, 1]]);
    h.reassign(t, 0, Some(&[2, 3])).unwrap();
    h.leader_sets_isr(t, 0, &[0, 1, 2]).unwrap();
    h.reassign(t, 0, Some(&[1, 4])).unwrap();
    let p = h.state(t, 0);
    // Computed from the original replicas [0, 1]; 2 and 3 are no longer replicas.
    assert_eq!((p.replicas, p.isr), (vec![0, 1, 4], vec![0, 1]));
    assert_eq!(
        h.image.reassignment(&t, 0),
        Some(&Reassignment {
            target: vec![1, 4],
            adding: vec![4],
            removing: vec![0],
        })
    );
    h.assert_replay_matches();
}

#[test]
fn invalid_targets_are_refused_without_records() {
    let (mut h, t) = Harness::with_topic(3, &[&[0, 1, 2]]);
    let bad: [&[i32]; 3] = [&[], &[0, 0, 1], &[0, 1, 7]];
    for target in bad {
        let (records, resp) = h.handle(ControllerRequest::AlterPartitionReassignments {
            topic_id: t,
            partition: 0,
            target: Some(target.to_vec()),
        });
        assert!(records.is_empty(), "{target:?}");
        assert!(
            matches!(
                resp,
                ControllerResponse::AlterPartitionReassignments(Err(
                    ControllerError::InvalidReplicaAssignment(_)
                ))
            ),
            "{target:?}: {resp:?}"
        );
    }
    assert!(matches!(
        h.reassign(t, 5, Some(&[0])),
        Err(ControllerError::UnknownTopicOrPartition(_))
    ));
    let unknown = Uuid::from_u128(99);
    assert_eq!(
        h.reassign(unknown, 0, Some(&[0])),
        Err(ControllerError::UnknownTopicId(unknown))
    );
    assert_eq!(h.state(t, 0).replicas, vec![0, 1, 2]);
    assert!(h.image.reassignment(&t, 0).is_none());
}

#[test]
fn deleting_a_topic_drops_its_reassignments() {
    let (mut h, t) = Harness::with_topic(4, &[&[0, 1, 2]]);
    h.reassign(t, 0, Some(&[1, 2, 3])).unwrap();
    h.run(ControllerRequest::DeleteTopics {
        topics: vec![TopicRef::Id(t)],
    });
    assert_eq!(h.image.reassignments().count(), 0);
    h.assert_replay_matches();
}

#[test]
fn preferred_election_gives_leadership_back_to_the_first_replica() {
    let (mut h, t) = Harness::with_topic(3, &[&[0, 1, 2]]);
    h.fence_via_heartbeat(0);
    assert_eq!(h.state(t, 0).leader, 1);
    // 0 is back but not in the ISR yet.
    h.unfence_via_heartbeat(0);
    assert_eq!(
        h.elect(t, 0, false),
        Err(ControllerError::PreferredLeaderNotAvailable)
    );
    h.leader_sets_isr(t, 0, &[1, 2, 0]).unwrap();
    let epoch = h.state(t, 0).leader_epoch;
    let answered = h.elect(t, 0, false).unwrap();
    assert_eq!((answered.leader, answered.leader_epoch), (0, epoch + 1));
    assert_eq!(answered, h.state(t, 0));
    assert_eq!(
        h.elect(t, 0, false),
        Err(ControllerError::ElectionNotNeeded)
    );
}

#[test]
fn a_fenced_preferred_replica_is_not_available() {
    let (mut h, t) = Harness::with_topic(3, &[&[0, 1, 2]]);
    h.fence_via_heartbeat(1);
    h.fence_via_heartbeat(2);
    // 0 keeps leading; fence it too: the ISR keeps it (last member) but it is fenced.
    h.fence_via_heartbeat(0);
    let p = h.state(t, 0);
    assert_eq!((p.leader, p.isr), (NO_LEADER, vec![0]));
    assert_eq!(
        h.elect(t, 0, false),
        Err(ControllerError::PreferredLeaderNotAvailable)
    );
}

#[test]
fn unclean_election_only_when_leaderless_and_may_pick_a_replica_outside_the_isr() {
    let (mut h, t) = Harness::with_topic(3, &[&[0, 1, 2]]);
    assert_eq!(h.elect(t, 0, true), Err(ControllerError::ElectionNotNeeded));
    h.fence_via_heartbeat(1);
    h.fence_via_heartbeat(2);
    h.fence_via_heartbeat(0);
    assert_eq!(h.state(t, 0).isr, vec![0]);
    assert_eq!(
        h.elect(t, 0, true),
        Err(ControllerError::EligibleLeadersNotAvailable)
    );
    // 2 comes back; the only ISR member (0) is still fenced.
    h.unfence_via_heartbeat(2);
    assert_eq!(h.state(t, 0).leader, NO_LEADER);
    let p = h.elect(t, 0, true).unwrap();
    assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
    assert_eq!(p, h.state(t, 0));
    assert_eq!(h.elect(t, 0, true), Err(ControllerError::ElectionNotNeeded));
    h.assert_replay_matches();
}

#[test]
fn elections_for_unknown_partitions_are_refused() {
    let (mut h, t) = Harness::with_topic(1, &[&[0]]);
    assert!(matches!(
        h.elect(t, 3, false),
        Err(ControllerError::UnknownTopicOrPartition(_))
    ));
    let unknown = Uuid::from_u128(99);
    assert_eq!(
        h.elect(unknown, 0, true),
        Err(ControllerError::UnknownTopicId(unknown))
    );
}

#[test]
fn rebalance_moves_only_partitions_whose_preferred_replica_can_lead() {
    let (mut h, t) = Harness::with_topic(3, &[&[0, 1], &[1, 0], &[0, 2], &[2, 1]]);
    h.fence_via_heartbeat(0);
    h.unfence_via_heartbeat(0);
    // Partition 0 and 2 lost leader 0; only partition 0 gets 0 back into its ISR.
    h.leader_sets_isr(t, 0, &[1, 0]).unwrap();
    assert_eq!(h.state(t, 0).leader, 1);
    assert_eq!(h.state(t, 2).leader, 2);

    let records = preferred_leader_elections(&h.image, &h.sessions);
    assert_eq!(
        records,
        vec![MetadataRecord::PartitionChange {
            topic_id: t,
            partition: 0,
            leader: Some(0),
            isr: None,
            replicas: None,
        }]
    );
    h.commit(&records);
    assert_eq!(h.state(t, 0).leader, 0);
    assert!(preferred_leader_elections(&h.image, &h.sessions).is_empty());
}

#[test]
fn rebalance_leaves_partitions_being_reassigned_alone() {
    let (mut h, t) = Harness::with_topic(4, &[&[0, 1]]);
    h.fence_via_heartbeat(0);
    h.unfence_via_heartbeat(0);
    h.leader_sets_isr(t, 0, &[1, 0]).unwrap();
    h.reassign(t, 0, Some(&[0, 1, 3])).unwrap();
    assert!(h.image.reassignment(&t, 0).is_some());
    assert!(preferred_leader_elections(&h.image, &h.sessions).is_empty());
}

#[test]
fn rebalance_is_on_by_default_with_kafkas_interval() {
    let c = ControllerConfig::default();
    assert!(c.auto_leader_rebalance_enable);
    assert_eq!(c.leader_imbalance_check_interval_ms, 300_000);
}
