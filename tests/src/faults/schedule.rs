//! Which faults a run injects, in which order and for how long: a pure function of
//! the seed and the enabled nemeses, so a run's schedule replays from its seed.
//!
//! Faults never overlap. Each [`Step`] is one fault held for `duration`, then healed;
//! the runner then waits for the cluster to take writes again (up to the recovery
//! bound) and for `quiet`, and takes the next step, until the time limit. Which node
//! a step hits is decided when it starts, from the cluster's state then (who leads)
//! and the step's own `pick_seed`, so a different leader does not shift later steps.

use std::fmt;
use std::time::Duration;

use super::rng::Rng;

/// A family of faults, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Nemesis {
    /// `kill -9` processes, restart them after the fault.
    Kill,
    /// SIGSTOP processes, SIGCONT them after the fault.
    Pause,
    /// iptables rules between node addresses.
    Partition,
    /// `kill -9` while every node keeps unsynced writes in memory: a power loss.
    LoseUnsynced,
    /// Damage the tail of a partition's last segment on a stopped node.
    Corrupt,
    /// Remove a controller voter, add it back after the fault.
    Voters,
    /// Move a partition's replicas to other brokers, and its leader to the new
    /// preferred replica.
    Reassign,
}

impl Nemesis {
    /// Every nemesis, in the order `all` expands to.
    pub const ALL: [Nemesis; 7] = [
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::Partition,
        Nemesis::LoseUnsynced,
        Nemesis::Corrupt,
        Nemesis::Voters,
        Nemesis::Reassign,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Partition => "partition",
            Nemesis::LoseUnsynced => "lose-unsynced",
            Nemesis::Corrupt => "corrupt",
            Nemesis::Voters => "voters",
            Nemesis::Reassign => "reassign",
        }
    }

    /// Parses a comma-separated list; `disk` = lose-unsynced,corrupt; `membership` =
    /// voters,reassign; `all` = every nemesis; `none` = no faults.
    ///
    /// # Errors
    /// An unknown name, listing the known ones.
    pub fn parse_list(text: &str) -> Result<Vec<Nemesis>, String> {
        let mut out: Vec<Nemesis> = Vec::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let add: Vec<Nemesis> = match name {
                "all" => Nemesis::ALL.to_vec(),
                "none" => Vec::new(),
                "disk" => vec![Nemesis::LoseUnsynced, Nemesis::Corrupt],
                "membership" => vec![Nemesis::Voters, Nemesis::Reassign],
                other => match Nemesis::ALL.iter().find(|n| n.name() == other) {
                    Some(n) => vec![*n],
                    None => {
                        let known: Vec<&str> = Nemesis::ALL.iter().map(|n| n.name()).collect();
                        return Err(format!(
                            "unknown nemesis {other:?}; known: {}, disk, membership, all, none",
                            known.join(", ")
                        ));
                    }
                },
            };
            for n in add {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Nemesis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which node (or nodes) a fault hits, decided at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Any node, chosen at random.
    Random,
    /// The active controller.
    ControllerLeader,
    /// The leader of a random partition of the workload's topics.
    PartitionLeader,
}

/// How many processes a kill takes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillScope {
    /// One node.
    One(Target),
    /// The largest minority of the nodes, at random.
    Minority,
    /// Every node at once.
    All,
}

/// A network partition's shape (see `net::grudge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One node cut off from every other node (clients still reach it).
    Isolate(Target),
    /// A random majority and minority that cannot reach each other.
    Halves,
    /// Two halves that cannot reach each other except through one node that reaches
    /// both.
    Bridge,
    /// A partition leader cut off from its followers only.
    LeaderFromFollowers,
    /// The active controller cut off from every broker, not from other controllers.
    ControllerFromBrokers,
}

/// One fault, as planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// See [`Nemesis::Kill`].
    Kill(KillScope),
    /// See [`Nemesis::Pause`].
    Pause(Target),
    /// See [`Nemesis::Partition`].
    Partition(Split),
    /// See [`Nemesis::LoseUnsynced`].
    LoseUnsynced(KillScope),
    /// See [`Nemesis::Corrupt`].
    Corrupt(Target),
    /// See [`Nemesis::Voters`]: the voter removed.
    Voters(Target),
    /// See [`Nemesis::Reassign`].
    Reassign,
}

impl Fault {
    /// The nemesis this fault belongs to.
    pub fn nemesis(&self) -> Nemesis {
        match self {
            Fault::Kill(_) => Nemesis::Kill,
            Fault::Pause(_) => Nemesis::Pause,
            Fault::Partition(_) => Nemesis::Partition,
            Fault::LoseUnsynced(_) => Nemesis::LoseUnsynced,
            Fault::Corrupt(_) => Nemesis::Corrupt,
            Fault::Voters(_) => Nemesis::Voters,
            Fault::Reassign => Nemesis::Reassign,
        }
    }
}

/// One step of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The fault.
    pub fault: Fault,
    /// How long it is held before healing.
    pub duration: Duration,
    /// How long to wait after the cluster recovered, before the next step.
    pub quiet: Duration,
    /// Seeds the run-time choices of this step (which node, which partition).
    pub pick_seed: u64,
}

/// Timing of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Shortest fault.
    pub fault_min: Duration,
    /// Longest fault.
    pub fault_max: Duration,
    /// Shortest wait between faults (after recovery).
    pub quiet_min: Duration,
    /// Longest wait between faults.
    pub quiet_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            fault_min: Duration::from_secs(4),
            fault_max: Duration::from_secs(10),
            quiet_min: Duration::from_secs(3),
            quiet_max: Duration::from_secs(6),
        }
    }
}

/// What a cluster can take: some faults need more nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Nodes in all.
    pub nodes: usize,
    /// Whether controllers and brokers are separate processes.
    pub split_roles: bool,
}

/// Yields the steps of a run, one at a time, from a seed.
#[derive(Debug, Clone)]
pub struct Planner {
    rng: Rng,
    nemeses: Vec<Nemesis>,
    timing: Timing,
    shape: Shape,
    /// Steps planned so far, so every enabled nemesis comes up early on.
    planned: usize,
}

impl Planner {
    /// A planner over `nemeses` (empty: no faults).
    pub fn new(seed: u64, nemeses: &[Nemesis], timing: Timing, shape: Shape) -> Self {
        let mut nemeses = nemeses.to_vec();
        let mut rng = Rng::new(seed);
        rng.shuffle(&mut nemeses);
        Planner {
            rng,
            nemeses,
            timing,
            shape,
            planned: 0,
        }
    }

    /// The next step, or `None` if no nemesis is enabled.
    pub fn next_step(&mut self) -> Option<Step> {
        if self.nemeses.is_empty() {
            return None;
        }
        // The first round goes through every enabled nemesis once (in a random order),
        // so even a short mixed run exercises each; after that, uniformly at random.
        let nemesis = if self.planned < self.nemeses.len() {
            self.nemeses[self.planned]
        } else {
            self.nemeses[self.rng.below(self.nemeses.len())]
        };
        self.planned += 1;
        let fault = self.variant(nemesis);
        let duration = self.duration(self.timing.fault_min, self.timing.fault_max);
        let quiet = self.duration(self.timing.quiet_min, self.timing.quiet_max);
        Some(Step {
            fault,
            duration,
            quiet,
            pick_seed: self.rng.next_u64(),
        })
    }

    fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        Duration::from_millis(
            self.rng
                .between(lo.as_millis() as u64, hi.as_millis() as u64),
        )
    }

    fn target(&mut self) -> Target {
        match self.rng.below(3) {
            0 => Target::Random,
            1 => Target::ControllerLeader,
            _ => Target::PartitionLeader,
        }
    }

    fn kill_scope(&mut self) -> KillScope {
        match self.rng.below(5) {
            0 | 1 => KillScope::One(self.target()),
            2 => KillScope::Minority,
            _ if self.rng.percent(50) => KillScope::All,
            _ => KillScope::One(Target::PartitionLeader),
        }
    }

    fn variant(&mut self, nemesis: Nemesis) -> Fault {
        match nemesis {
            Nemesis::Kill => Fault::Kill(self.kill_scope()),
            Nemesis::LoseUnsynced => Fault::LoseUnsynced(self.kill_scope()),
            Nemesis::Pause => Fault::Pause(self.target()),
            Nemesis::Partition => {
                let mut shapes = vec![
                    Split::Isolate(self.target()),
                    Split::Halves,
                    Split::Bridge,
                    Split::LeaderFromFollowers,
                ];
                if self.shape.split_roles {
                    shapes.push(Split::ControllerFromBrokers);
                }
                let shape = shapes[self.rng.below(shapes.len())];
                Fault::Partition(shape)
            }
            Nemesis::Corrupt => Fault::Corrupt(if self.rng.percent(50) {
                Target::PartitionLeader
            } else {
                Target::Random
            }),
            Nemesis::Voters => Fault::Voters(if self.rng.percent(50) {
                Target::ControllerLeader
            } else {
                Target::Random
            }),
            Nemesis::Reassign => Fault::Reassign,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        nodes: 3,
        split_roles: false,
    };

    #[test]
    fn nemesis_lists_parse_with_aliases_and_reject_unknown_names() {
        assert_eq!(
            Nemesis::parse_list("kill,pause,partition").unwrap(),
            vec![Nemesis::Kill, Nemesis::Pause, Nemesis::Partition]
        );
        assert_eq!(
            Nemesis::parse_list("disk,kill,corrupt").unwrap(),
            vec![Nemesis::LoseUnsynced, Nemesis::Corrupt, Nemesis::Kill]
        );
        assert_eq!(
            Nemesis::parse_list("all").unwrap().len(),
            Nemesis::ALL.len()
        );
        assert!(Nemesis::parse_list("none").unwrap().is_empty());
        let err = Nemesis::parse_list("kill,flood").unwrap_err();
        assert!(
            err.contains("\"flood\"") && err.contains("lose-unsynced"),
            "{err}"
        );
    }

    #[test]
    fn a_seed_replays_the_same_schedule_and_another_seed_differs() {
        let all = Nemesis::ALL;
        let steps = |seed| {
            let mut p = Planner::new(seed, &all, Timing::default(), SHAPE);
            (0..30).map(|_| p.next_step().unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(steps(42), steps(42));
        assert_ne!(steps(42), steps(43));
    }

    #[test]
    fn every_enabled_nemesis_comes_first_and_only_enabled_ones_appear() {
        let enabled = [Nemesis::Pause, Nemesis::Corrupt, Nemesis::Reassign];
        for seed in 0..50 {
            let mut p = Planner::new(seed, &enabled, Timing::default(), SHAPE);
            let steps: Vec<Step> = (0..20).map(|_| p.next_step().unwrap()).collect();
            let mut first: Vec<Nemesis> = steps[..3].iter().map(|s| s.fault.nemesis()).collect();
            first.sort();
            let mut want = enabled.to_vec();
            want.sort();
            assert_eq!(first, want, "seed {seed}");
            assert!(steps.iter().all(|s| enabled.contains(&s.fault.nemesis())));
        }
    }

    #[test]
    fn durations_stay_within_the_timing() {
        let timing = Timing::default();
        let mut p = Planner::new(5, &Nemesis::ALL, timing, SHAPE);
        for _ in 0..200 {
            let s = p.next_step().unwrap();
            assert!(s.duration >= timing.fault_min && s.duration <= timing.fault_max);
            assert!(s.quiet >= timing.quiet_min && s.quiet <= timing.quiet_max);
        }
    }

    #[test]
    fn controller_from_brokers_is_planned_only_with_split_roles() {
        let combined = |split_roles| {
            let mut p = Planner::new(
                9,
                &[Nemesis::Partition],
                Timing::default(),
                Shape {
                    nodes: 6,
                    split_roles,
                },
            );
            (0..300).any(|_| {
                p.next_step().unwrap().fault == Fault::Partition(Split::ControllerFromBrokers)
            })
        };
        assert!(!combined(false));
        assert!(combined(true));
    }

    #[test]
    fn no_nemesis_means_no_steps() {
        assert_eq!(
            Planner::new(1, &[], Timing::default(), SHAPE).next_step(),
            None
        );
    }
}
