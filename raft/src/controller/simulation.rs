//! A seeded randomized simulation of the controller (VOPR-style).
//!
//! Thousands of steps of registrations, heartbeats (caught up or lagging, with and without
//! `want_fence` / `want_shutdown`), clock advances with session expiry, topic creations
//! (placed and manual) and deletions, partition additions, AlterPartition requests (good
//! and stale), broker removals, and controller restarts from a snapshot (the image
//! serialized and decoded, the sessions started afresh as on a failover). After every step
//! the invariants are checked:
//!
//! - a partition's replicas are distinct; its ISR is non-empty, distinct and a subset of
//!   the replicas;
//! - a leader is in the ISR and is a registered, unfenced broker (or there is none);
//! - no partition is leaderless while an eligible broker is in its ISR;
//! - leader epochs, partition epochs and broker epochs never go down;
//! - replaying every record from zero gives exactly the image;
//! - answers match the image (an AlterPartition's new state, a heartbeat's fenced flag).
//!
//! Each run prints its seed; `KEEL_SIM_SEED=<seed>` replays one seed, `KEEL_SIM_STEPS`
//! changes the number of steps.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use uuid::Uuid;

use super::liveness::leaderless_with_eligible_isr;
use super::tests::Harness;
use super::*;
use crate::codec;
use crate::image::NO_LEADER;
use crate::quorum::stored::SnapshotPayload;
use crate::quorum::stored::StoredMembership;

/// Steps per seed unless `KEEL_SIM_STEPS` says otherwise.
const DEFAULT_SIM_STEPS: usize = 3000;
/// Seeds per test run (when `KEEL_SIM_SEED` is not set).
const SEEDS_PER_RUN: usize = 3;
const SEED_ENV: &str = "KEEL_SIM_SEED";
const STEPS_ENV: &str = "KEEL_SIM_STEPS";
/// Broker ids the simulation uses.
const MAX_BROKERS: i32 = 6;
const TOPIC_NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];
const RACKS: [Option<&str>; 4] = [None, Some("r1"), Some("r2"), Some("r3")];

/// splitmix64: tiny, seedable, good enough to drive a simulation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.index(items.len()))
        }
    }
}

struct Sim {
    rng: Rng,
    h: Harness,
    seed: u64,
    step: usize,
    /// (topic, partition) -> (leader epoch, partition epoch) after the previous step.
    epochs: BTreeMap<(Uuid, i32), (i32, i32)>,
    /// broker id -> highest broker epoch seen.
    broker_epochs: BTreeMap<i32, i64>,
    /// Brokers (id, epoch) that asked for a controlled shutdown in that registration.
    shut_down: BTreeSet<(i32, i64)>,
    racks: BTreeMap<i32, Option<String>>,
    next_incarnation: u128,
    restarts: usize,
    fences: usize,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut h = Harness::with_heartbeats();
        h.pick = seed;
        Sim {
            rng: Rng(seed),
            h,
            seed,
            step: 0,
            epochs: BTreeMap::new(),
            broker_epochs: BTreeMap::new(),
            shut_down: BTreeSet::new(),
            racks: BTreeMap::new(),
            next_incarnation: 1,
            restarts: 0,
            fences: 0,
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "controller simulation seed {} step {}: {what}\n(replay with {SEED_ENV}={})",
            self.seed, self.step, self.seed
        )
    }

    fn registered(&self) -> Vec<i32> {
        self.h.image.brokers.keys().copied().collect()
    }

    fn partitions(&self) -> Vec<(Uuid, i32)> {
        self.h
            .image
            .topics
            .values()
            .flat_map(|t| t.partitions.keys().map(move |p| (t.topic_id, *p)))
            .collect()
    }

    fn act(&mut self) {
        self.h.pick = self.rng.next();
        match self.rng.below(100) {
            0..=7 => self.register(),
            8..=37 => self.heartbeat(),
            38..=52 => self.advance_clock(),
            53..=62 => self.create_topic(),
            63..=66 => self.delete_topic(),
            67..=69 => self.add_partitions(),
            70..=92 => self.alter_partition(),
            93..=94 => self.unregister(),
            _ => self.restart_controller(),
        }
    }

    fn register(&mut self) {
        let broker_id = self.rng.below(MAX_BROKERS as u64) as i32;
        let rack = self
            .racks
            .entry(broker_id)
            .or_insert_with(|| {
                let r = RACKS[(broker_id as usize) % RACKS.len()];
                r.map(str::to_string)
            })
            .clone();
        let incarnation = match self.h.image.brokers.get(&broker_id) {
            Some(b) if self.rng.chance(40) => b.incarnation_id,
            _ => {
                self.next_incarnation += 1;
                Uuid::from_u128(self.next_incarnation)
            }
        };
        let resp = self.h.run(ControllerRequest::RegisterBroker {
            broker_id,
            incarnation_id: incarnation,
            endpoints: vec![crate::records::BrokerEndpoint {
                listener: "PLAINTEXT".to_string(),
                host: format!("h{broker_id}"),
                port: 9092,
            }],
            rack,
        });
        match resp {
            ControllerResponse::RegisterBroker(Ok(epoch)) => {
                if self.h.image.brokers.get(&broker_id).map(|b| b.broker_epoch) != Some(epoch) {
                    self.fail(format!(
                        "registration answered epoch {epoch} but the image disagrees"
                    ));
                }
            }
            other => self.fail(format!("registration failed: {other:?}")),
        }
    }

    fn heartbeat(&mut self) {
        let Some(&broker_id) = self.rng.pick(&self.registered()) else {
            return;
        };
        let current = self.h.image.brokers[&broker_id].broker_epoch;
        let broker_epoch = if self.rng.chance(5) {
            current - 1
        } else {
            current
        };
        let offset = if self.rng.chance(80) {
            self.h.index
        } else {
            self.rng.below(self.h.index + 1)
        };
        let want_fence = self.rng.chance(3);
        let want_shutdown = self.rng.chance(4);
        if want_shutdown && broker_epoch == current {
            self.shut_down.insert((broker_id, current));
        }
        let resp = self.h.run(ControllerRequest::BrokerHeartbeat {
            broker_id,
            broker_epoch,
            current_metadata_offset: offset,
            want_fence,
            want_shutdown,
        });
        match resp {
            ControllerResponse::BrokerHeartbeat(Ok(reply)) => {
                if broker_epoch != current {
                    self.fail("a stale heartbeat was accepted".to_string());
                }
                let fenced = self.h.image.brokers[&broker_id].fenced;
                if reply.is_fenced != fenced {
                    self.fail(format!(
                        "heartbeat said fenced={} but the image says {fenced}",
                        reply.is_fenced
                    ));
                }
            }
            ControllerResponse::BrokerHeartbeat(Err(ControllerError::StaleBrokerEpoch(_)))
                if broker_epoch != current => {}
            other => self.fail(format!("heartbeat failed: {other:?}")),
        }
    }

    fn advance_clock(&mut self) {
        self.h.now_ms += self.rng.below(4_000) as i64;
        let before = self.h.image.brokers.values().filter(|b| b.fenced).count();
        self.h.tick();
        let after = self.h.image.brokers.values().filter(|b| b.fenced).count();
        self.fences += after.saturating_sub(before);
    }

    fn create_topic(&mut self) {
        let name = self.rng.pick(&TOPIC_NAMES).copied().unwrap_or("a");
        let registered = self.registered();
        let t = if self.rng.chance(20) && !registered.is_empty() {
            let rf = 1 + self.rng.index(registered.len().min(3));
            let partitions = 1 + self.rng.index(3);
            let mut assignments = BTreeMap::new();
            for p in 0..partitions {
                let mut replicas = registered.clone();
                let start = self.rng.index(replicas.len());
                replicas.rotate_left(start);
                replicas.truncate(rf);
                assignments.insert(p as i32, replicas);
            }
            NewTopic {
                name: name.to_string(),
                num_partitions: -1,
                replication_factor: -1,
                assignments,
                configs: BTreeMap::new(),
            }
        } else {
            NewTopic {
                name: name.to_string(),
                num_partitions: 1 + self.rng.below(4) as i32,
                replication_factor: 1 + self.rng.below(3) as i16,
                assignments: BTreeMap::new(),
                configs: BTreeMap::new(),
            }
        };
        let results = self.h.create(vec![t]);
        if let Some(Ok(created)) = results.first().map(|r| &r.result) {
            match self.h.image.topics.get(&created.topic_id) {
                Some(img) if img.partitions.len() as i32 == created.num_partitions => {}
                other => self.fail(format!(
                    "created topic {name} but the image holds {other:?}"
                )),
            }
        }
    }

    fn delete_topic(&mut self) {
        let name = self.rng.pick(&TOPIC_NAMES).copied().unwrap_or("a");
        self.h.run(ControllerRequest::DeleteTopics {
            topics: vec![TopicRef::Name(name.to_string())],
        });
        if self.h.image.topic_by_name(name).is_some() {
            self.fail(format!("topic {name} survived its deletion"));
        }
    }

    fn add_partitions(&mut self) {
        let names: Vec<String> = self.h.image.topic_ids_by_name.keys().cloned().collect();
        let Some(name) = self.rng.pick(&names).cloned() else {
            return;
        };
        let count = self
            .h
            .image
            .topic_by_name(&name)
            .map_or(0, |t| t.partitions.len()) as i32;
        self.h.run(ControllerRequest::CreatePartitions {
            topics: vec![NewPartitions {
                name,
                count: count + 1 + self.rng.below(2) as i32,
                assignments: None,
            }],
            validate_only: false,
        });
    }

    fn alter_partition(&mut self) {
        let Some(&(topic_id, partition)) = self.rng.pick(&self.partitions()) else {
            return;
        };
        let p = self.h.image.topics[&topic_id].partitions[&partition].clone();
        let requester = if p.leader != NO_LEADER && self.rng.chance(90) {
            p.leader
        } else {
            match self.rng.pick(&self.registered()) {
                Some(id) => *id,
                None => return,
            }
        };
        let Some(broker) = self.h.image.brokers.get(&requester) else {
            return;
        };
        let broker_epoch = broker.broker_epoch;
        let leader_epoch = if self.rng.chance(90) {
            p.leader_epoch
        } else {
            p.leader_epoch - 1
        };
        let partition_epoch = if self.rng.chance(85) {
            p.partition_epoch
        } else {
            p.partition_epoch + 1
        };
        let mut new_isr = p.isr.clone();
        match self.rng.below(3) {
            0 => {
                // Shrink: drop a follower.
                let followers: Vec<i32> =
                    new_isr.iter().copied().filter(|r| *r != p.leader).collect();
                if let Some(f) = self.rng.pick(&followers) {
                    new_isr.retain(|r| r != f);
                }
            }
            1 => {
                // Expand: add a replica not yet in sync.
                let outside: Vec<i32> = p
                    .replicas
                    .iter()
                    .copied()
                    .filter(|r| !new_isr.contains(r))
                    .collect();
                if let Some(r) = self.rng.pick(&outside) {
                    new_isr.push(*r);
                }
            }
            _ => {
                // Anything: a random subset of the replicas (or worse).
                new_isr = p
                    .replicas
                    .iter()
                    .copied()
                    .filter(|_| self.rng.chance(60))
                    .collect();
                if self.rng.chance(10) {
                    new_isr.push(MAX_BROKERS + 1);
                }
            }
        }
        let resp = self.h.run(ControllerRequest::AlterPartition {
            broker_id: requester,
            broker_epoch,
            topic_id,
            partition,
            leader_epoch,
            partition_epoch,
            new_isr: new_isr.clone(),
        });
        match resp {
            ControllerResponse::AlterPartition(Ok(state)) => {
                let now = &self.h.image.topics[&topic_id].partitions[&partition];
                if state != *now || now.isr != new_isr {
                    self.fail(format!(
                        "AlterPartition answered {state:?} but the image holds {now:?}"
                    ));
                }
                if leader_epoch != p.leader_epoch || partition_epoch != p.partition_epoch {
                    self.fail("AlterPartition with stale epochs was accepted".to_string());
                }
            }
            ControllerResponse::AlterPartition(Err(_)) => {}
            other => self.fail(format!("unexpected {other:?}")),
        }
    }

    fn unregister(&mut self) {
        let Some(&broker_id) = self.rng.pick(&self.registered()) else {
            return;
        };
        match self
            .h
            .run(ControllerRequest::UnregisterBroker { broker_id })
        {
            ControllerResponse::UnregisterBroker(Ok(())) => {}
            other => self.fail(format!("unregister failed: {other:?}")),
        }
    }

    /// The active controller restarts: the image is rebuilt from a serialized snapshot
    /// and the sessions start afresh, as on a failover.
    fn restart_controller(&mut self) {
        let payload = SnapshotPayload {
            last_applied: None,
            membership: StoredMembership {
                log_id: None,
                configs: Vec::new(),
                nodes: BTreeMap::new(),
            },
            image: self.h.image.clone(),
        };
        let bytes = codec::encode(&payload).unwrap_or_else(|e| self.fail(e.to_string()));
        let restored: SnapshotPayload =
            codec::decode(&bytes).unwrap_or_else(|e| self.fail(e.to_string()));
        if restored.image != self.h.image {
            self.fail("the image did not survive a snapshot round trip".to_string());
        }
        self.h.image = restored.image;
        self.h.sessions = BrokerSessions::new();
        self.h.sessions.activate(&self.h.image, self.h.now_ms);
        // Controlled shutdowns are in-memory state: forgotten with the old controller.
        self.restarts += 1;
    }

    fn check(&mut self) {
        let image = &self.h.image;
        for t in image.topics.values() {
            for (id, p) in &t.partitions {
                let name = format!("{}-{id}", t.name);
                let replicas: BTreeSet<i32> = p.replicas.iter().copied().collect();
                let isr: BTreeSet<i32> = p.isr.iter().copied().collect();
                if replicas.len() != p.replicas.len() || p.replicas.is_empty() {
                    self.fail(format!("{name}: bad replicas {p:?}"));
                }
                if p.isr.is_empty() || isr.len() != p.isr.len() || !isr.is_subset(&replicas) {
                    self.fail(format!(
                        "{name}: ISR is empty, repeats or is not a subset of the replicas: {p:?}"
                    ));
                }
                if p.leader != NO_LEADER {
                    if !isr.contains(&p.leader) {
                        self.fail(format!("{name}: leader not in the ISR: {p:?}"));
                    }
                    match image.brokers.get(&p.leader) {
                        Some(b) if !b.fenced => {}
                        other => self.fail(format!(
                            "{name}: leader is fenced or unregistered ({other:?}): {p:?}"
                        )),
                    }
                }
                if let Some((le, pe)) = self.epochs.get(&(t.topic_id, *id)) {
                    if p.leader_epoch < *le || p.partition_epoch < *pe {
                        self.fail(format!("{name}: epochs went down from ({le}, {pe}): {p:?}"));
                    }
                }
            }
        }
        self.epochs = image
            .topics
            .values()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |(id, p)| ((t.topic_id, *id), (p.leader_epoch, p.partition_epoch)))
            })
            .collect();
        for b in image.brokers.values() {
            if let Some(seen) = self.broker_epochs.get(&b.broker_id) {
                if b.broker_epoch < *seen {
                    self.fail(format!(
                        "broker {} epoch went down from {seen} to {}",
                        b.broker_id, b.broker_epoch
                    ));
                }
            }
        }
        for b in image.brokers.values() {
            self.broker_epochs.insert(b.broker_id, b.broker_epoch);
        }
        // Leaderless only while nobody eligible is in sync (brokers that were in
        // controlled shutdown are excluded: a restarted controller forgets that state).
        let mut sessions = self.h.sessions.clone();
        for (id, epoch) in &self.shut_down {
            if image
                .brokers
                .get(id)
                .is_some_and(|b| b.broker_epoch == *epoch)
            {
                sessions
                    .session_mut(*id, *epoch, self.h.now_ms)
                    .shutting_down = true;
            }
        }
        if let Some(p) = leaderless_with_eligible_isr(image, &sessions) {
            self.fail(format!(
                "leaderless partition with an eligible ISR member: {p}"
            ));
        }
        let mut replayed = MetadataImage::new();
        for (i, batch) in self.h.log.iter().enumerate() {
            for r in batch {
                replayed.apply(r);
            }
            replayed.mark_applied(i as u64 + 1);
        }
        if replayed != self.h.image {
            self.fail("replaying the records from zero gives another image".to_string());
        }
    }
}

fn run_seed(seed: u64, steps: usize) {
    eprintln!("controller simulation: seed {seed}, {steps} steps (replay with {SEED_ENV}={seed})");
    let mut sim = Sim::new(seed);
    for step in 0..steps {
        sim.step = step;
        sim.act();
        sim.check();
    }
    let partitions = sim.partitions().len();
    eprintln!(
        "controller simulation: seed {seed} done: {} log entries, {} brokers, {partitions} partitions, {} fences, {} controller restarts",
        sim.h.index,
        sim.h.image.brokers.len(),
        sim.fences,
        sim.restarts
    );
    assert!(
        sim.h.index > steps as u64 / 10,
        "the simulation wrote too little to mean much"
    );
}

#[test]
fn randomized_controller_simulation_keeps_partition_and_broker_invariants() {
    let steps = std::env::var(STEPS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SIM_STEPS);
    if let Some(seed) = std::env::var(SEED_ENV).ok().and_then(|s| s.parse().ok()) {
        run_seed(seed, steps);
        return;
    }
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    for i in 0..SEEDS_PER_RUN {
        run_seed(
            base.wrapping_add(i as u64)
                .wrapping_mul(0x2545_f491_4f6c_dd1d),
            steps,
        );
    }
}
