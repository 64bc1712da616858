//! Carrying out a schedule's steps against a running cluster: aim the fault (which
//! node, which partition), start it, hold it, heal it, and record both ends in the
//! history. Everything a fault changes is undone by [`Nemesis::heal_everything`],
//! which the runner also calls on its way out.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cleanup;
use super::disk;
use super::net::{self, Cuts, Firewall};
use super::recorder::Recorder;
use super::rng::Rng;
use super::schedule::{Fault, KillScope, Split, Step, Target};
use super::view::{self, PartitionInfo, View};
use crate::checker::history::{Event, NemesisAction};
use crate::cluster::{Cluster, Role};

/// How long re-adding a removed voter is retried.
const READD_VOTER_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a reassignment may take to complete before the step gives up waiting.
const REASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(90);
/// Pause between checks while waiting on the cluster.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Something a fault did not manage (not an anomaly of the cluster: a CLI command
/// that failed, a fault with nothing to aim at), for the report.
pub type Note = String;

/// Applies faults to one cluster.
pub struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    recorder: Arc<Recorder>,
    view: View,
    firewall: Firewall,
    /// Nodes killed and not yet restarted.
    down: BTreeSet<u64>,
    /// Nodes stopped with SIGSTOP and not yet continued.
    paused: BTreeSet<u64>,
    /// Voters removed and not yet added back.
    removed_voters: BTreeSet<u64>,
    /// Problems carrying out faults.
    pub notes: Vec<Note>,
    /// Nodes found exited when they should have been running: (node, when, log tail).
    pub crashes: Vec<(u64, u64, String)>,
}

impl<'a> Nemesis<'a> {
    /// A nemesis over `cluster`, describing `topics` through `bootstrap`; iptables
    /// rules carry `comment`.
    ///
    /// # Errors
    /// The metadata client cannot be created.
    pub fn new(
        cluster: &'a mut Cluster,
        recorder: Arc<Recorder>,
        bootstrap: &str,
        topics: &[String],
        comment: &str,
    ) -> anyhow::Result<Self> {
        let view = View::new(bootstrap, topics)?;
        let nemesis = Nemesis {
            cluster,
            recorder,
            view,
            firewall: Firewall::new(comment),
            down: BTreeSet::new(),
            paused: BTreeSet::new(),
            removed_voters: BTreeSet::new(),
            notes: Vec::new(),
            crashes: Vec::new(),
        };
        nemesis.track_all();
        Ok(nemesis)
    }

    /// The metadata view of the cluster.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The cluster.
    pub fn cluster(&self) -> &Cluster {
        self.cluster
    }

    fn track_all(&self) {
        for (id, node) in &self.cluster.nodes {
            cleanup::track(*id, node.pid());
        }
    }

    fn all_nodes(&self) -> Vec<u64> {
        self.cluster.nodes.keys().copied().collect()
    }

    fn record(&self, action: NemesisAction, fault: &str, detail: &str) {
        tracing::info!("nemesis {action:?} {fault}: {detail}");
        self.recorder
            .record(|t| Event::nemesis(t, action, fault, detail));
    }

    fn note(&mut self, text: String) {
        tracing::warn!("nemesis: {text}");
        self.notes.push(text);
    }

    /// Current voters and leader, asked of nodes that are up.
    fn quorum(&self) -> Option<view::QuorumView> {
        let candidates: Vec<u64> = self
            .all_nodes()
            .into_iter()
            .filter(|id| self.cluster.role(*id) != Some(Role::Broker))
            .filter(|id| !self.down.contains(id) && !self.paused.contains(id))
            .collect();
        view::quorum(self.cluster, &candidates)
    }

    fn partitions(&self) -> Vec<PartitionInfo> {
        self.view.partitions().unwrap_or_default()
    }

    /// Resolves a target to a node (brokers only if `broker`).
    fn aim(&self, target: Target, rng: &mut Rng, broker: bool) -> (u64, String) {
        let pool: Vec<u64> = if broker {
            self.cluster.broker_ids()
        } else {
            self.all_nodes()
        };
        match target {
            Target::ControllerLeader => {
                if let Some(leader) = self.quorum().and_then(|q| q.leader) {
                    if pool.contains(&leader) {
                        return (leader, "the active controller".into());
                    }
                }
            }
            Target::PartitionLeader => {
                let parts: Vec<PartitionInfo> = self
                    .partitions()
                    .into_iter()
                    .filter(|p| p.leader >= 0)
                    .collect();
                if let Some(p) = rng.pick(&parts) {
                    return (p.leader as u64, format!("leader of {}/{}", p.tp.0, p.tp.1));
                }
            }
            Target::Random => {}
        }
        let node = rng.pick(&pool).copied().unwrap_or(1);
        (node, "a random node".into())
    }

    fn victims(&self, scope: KillScope, rng: &mut Rng) -> (Vec<u64>, String) {
        match scope {
            KillScope::One(target) => {
                let (node, why) = self.aim(target, rng, false);
                (vec![node], why)
            }
            KillScope::Minority => {
                let mut all = self.all_nodes();
                rng.shuffle(&mut all);
                let n = (all.len() - 1) / 2;
                let mut chosen = all[..n.max(1)].to_vec();
                chosen.sort_unstable();
                (chosen, "a minority".into())
            }
            KillScope::All => (self.all_nodes(), "every node".into()),
        }
    }

    fn kill(&mut self, nodes: &[u64]) {
        for id in nodes {
            self.cluster.kill9(*id);
            cleanup::track(*id, None);
            self.down.insert(*id);
        }
    }

    fn restart(&mut self, nodes: &[u64]) {
        for id in nodes {
            if let Err(e) = self.cluster.restart(*id) {
                self.note(format!("restarting node {id}: {e:#}"));
            }
            cleanup::track(*id, self.cluster.nodes[id].pid());
            self.down.remove(id);
        }
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    /// Runs one step: starts its fault, holds it for the step's duration, heals it.
    pub fn run_step(&mut self, step: &Step) {
        let mut rng = Rng::new(step.pick_seed);
        let name = step.fault.nemesis().name();
        match step.fault {
            Fault::Kill(scope) | Fault::LoseUnsynced(scope) => {
                let (nodes, why) = self.victims(scope, &mut rng);
                self.kill(&nodes);
                let what = if matches!(step.fault, Fault::LoseUnsynced(_)) {
                    "power loss (unsynced writes lost) of"
                } else {
                    "kill -9"
                };
                self.record(
                    NemesisAction::Start,
                    name,
                    &format!("{what} {} ({why})", ids(&nodes)),
                );
                self.sleep(step.duration);
                self.restart(&nodes);
                self.record(
                    NemesisAction::Heal,
                    name,
                    &format!("restarted {}", ids(&nodes)),
                );
            }
            Fault::Pause(target) => {
                let (node, why) = self.aim(target, &mut rng, false);
                self.cluster.node(node).pause();
                self.paused.insert(node);
                self.record(
                    NemesisAction::Start,
                    name,
                    &format!("SIGSTOP node {node} ({why})"),
                );
                self.sleep(step.duration);
                self.cluster.node(node).resume();
                self.paused.remove(&node);
                self.record(NemesisAction::Heal, name, &format!("SIGCONT node {node}"));
            }
            Fault::Partition(split) => {
                let (cuts, why) = self.cuts(split, &mut rng);
                let mut failed = None;
                for (from, to) in &cuts {
                    let (a, b) = (self.cluster.ip(*from), self.cluster.ip(*to));
                    if let Err(e) = self.firewall.drop(&a, &b) {
                        failed = Some(format!("{e:#}"));
                        break;
                    }
                }
                if let Some(e) = failed {
                    self.note(format!("partition not applied: {e}"));
                }
                self.record(
                    NemesisAction::Start,
                    name,
                    &format!("{why}: cut {}", net::describe(&cuts)),
                );
                self.sleep(step.duration);
                self.firewall.heal();
                self.record(NemesisAction::Heal, name, "removed every rule");
            }
            Fault::Corrupt(target) => self.corrupt(step, target, &mut rng),
            Fault::Voters(target) => self.voters(step, target, &mut rng),
            Fault::Reassign => self.reassign(step, &mut rng),
        }
    }

    fn cuts(&self, split: Split, rng: &mut Rng) -> (Cuts, String) {
        let all = self.all_nodes();
        match split {
            Split::Isolate(target) => {
                let (node, why) = self.aim(target, rng, false);
                (
                    net::isolate(node, &all),
                    format!("isolate node {node} ({why})"),
                )
            }
            Split::Halves => {
                let mut order = all.clone();
                rng.shuffle(&mut order);
                let minority: Vec<u64> = order[..(all.len() - 1) / 2].to_vec();
                (
                    net::halves(&minority, &all),
                    format!("minority {} from the majority", ids(&minority)),
                )
            }
            Split::Bridge => {
                let mut order = all.clone();
                rng.shuffle(&mut order);
                let middle = order[order.len() / 2];
                (net::bridge(&order), format!("bridge through node {middle}"))
            }
            Split::LeaderFromFollowers => {
                let parts: Vec<PartitionInfo> = self
                    .partitions()
                    .into_iter()
                    .filter(|p| p.leader >= 0)
                    .collect();
                match rng.pick(&parts) {
                    Some(p) => {
                        let leader = p.leader as u64;
                        let followers: Vec<u64> = p
                            .replicas
                            .iter()
                            .copied()
                            .filter(|r| *r != leader)
                            .collect();
                        (
                            net::between(&[leader], &followers),
                            format!(
                                "leader {leader} of {}/{} from its followers {}",
                                p.tp.0,
                                p.tp.1,
                                ids(&followers)
                            ),
                        )
                    }
                    None => {
                        let node = rng.pick(&all).copied().unwrap_or(1);
                        (
                            net::isolate(node, &all),
                            format!("isolate node {node} (no leader known)"),
                        )
                    }
                }
            }
            Split::ControllerFromBrokers => {
                let leader = self.quorum().and_then(|q| q.leader);
                let node = leader.unwrap_or_else(|| rng.pick(&all).copied().unwrap_or(1));
                let brokers = self.cluster.broker_ids();
                (
                    net::between(&[node], &brokers),
                    format!(
                        "active controller {node} from the brokers {}",
                        ids(&brokers)
                    ),
                )
            }
        }
    }

    fn corrupt(&mut self, step: &Step, target: Target, rng: &mut Rng) {
        let name = step.fault.nemesis().name();
        let (node, why) = self.aim(target, rng, true);
        let mut hosted: Vec<PartitionInfo> = self
            .partitions()
            .into_iter()
            .filter(|p| p.replicas.contains(&node))
            .collect();
        rng.shuffle(&mut hosted);
        self.kill(&[node]);
        let data = self.cluster.nodes[&node].data_dir.clone();
        let mut done = None;
        for p in &hosted {
            match disk::corrupt_tail(&data, &p.tp.0, p.tp.1, rng) {
                Ok(Some(what)) => {
                    done = Some(what);
                    break;
                }
                Ok(None) => {}
                Err(e) => self.note(format!(
                    "corrupting {}/{} on node {node}: {e:#}",
                    p.tp.0, p.tp.1
                )),
            }
        }
        let detail = match &done {
            Some(what) => format!("kill -9 node {node} ({why}) and damage {what}"),
            None => {
                format!("kill -9 node {node} ({why}); nothing above its recovery points to damage")
            }
        };
        self.record(NemesisAction::Start, name, &detail);
        self.sleep(step.duration);
        self.restart(&[node]);
        self.record(NemesisAction::Heal, name, &format!("restarted node {node}"));
    }

    fn voters(&mut self, step: &Step, target: Target, rng: &mut Rng) {
        let name = step.fault.nemesis().name();
        let Some(q) = self.quorum() else {
            self.note("voters: no controller answered; step skipped".into());
            return;
        };
        if q.voters.len() < 2 {
            self.note(format!("voters: only {:?} left; step skipped", q.voters));
            return;
        }
        let voter = match (target, q.leader) {
            (Target::ControllerLeader, Some(l)) if q.voters.contains(&l) => l,
            _ => *rng.pick(&q.voters).unwrap_or(&q.voters[0]),
        };
        let via = q
            .voters
            .iter()
            .copied()
            .find(|v| *v != voter)
            .unwrap_or(voter);
        let result = self.cluster.cli(&[
            "cluster",
            "--controller",
            &self.cluster.controller(via),
            "remove-voter",
            "--node-id",
            &voter.to_string(),
        ]);
        let detail = match &result {
            Ok(_) => {
                self.removed_voters.insert(voter);
                format!(
                    "removed voter {voter}{} (voters were {})",
                    if q.leader == Some(voter) {
                        ", the active controller"
                    } else {
                        ""
                    },
                    ids(&q.voters)
                )
            }
            Err(e) => format!("removing voter {voter} failed: {e:#}"),
        };
        if result.is_err() {
            self.note(detail.clone());
        }
        self.record(NemesisAction::Start, name, &detail);
        self.sleep(step.duration);
        let readded = self.readd_voters();
        self.record(NemesisAction::Heal, name, &readded);
    }

    /// Adds every removed voter back; returns what happened.
    fn readd_voters(&mut self) -> String {
        let mut done = Vec::new();
        for voter in self.removed_voters.clone() {
            let deadline = Instant::now() + READD_VOTER_TIMEOUT;
            loop {
                let via = self
                    .quorum()
                    .and_then(|q| q.voters.first().copied())
                    .unwrap_or(voter);
                let result = self.cluster.cli(&[
                    "cluster",
                    "--controller",
                    &self.cluster.controller(via),
                    "add-voter",
                    "--node-id",
                    &voter.to_string(),
                    "--node-address",
                    &self.cluster.controller(voter),
                ]);
                match result {
                    Ok(_) => {
                        self.removed_voters.remove(&voter);
                        done.push(format!("added voter {voter} back"));
                        break;
                    }
                    Err(e) if Instant::now() >= deadline => {
                        self.note(format!("adding voter {voter} back failed: {e:#}"));
                        done.push(format!("voter {voter} NOT added back"));
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_secs(1)),
                }
            }
        }
        if done.is_empty() {
            "nothing to add back".into()
        } else {
            done.join(", ")
        }
    }

    fn reassign(&mut self, step: &Step, rng: &mut Rng) {
        let name = step.fault.nemesis().name();
        let parts = self.partitions();
        let Some(p) = rng.pick(&parts).cloned() else {
            self.note("reassign: no partition known; step skipped".into());
            return;
        };
        let mut brokers = self.cluster.broker_ids();
        rng.shuffle(&mut brokers);
        let mut target: Vec<u64> = brokers[..p.replicas.len().min(brokers.len())].to_vec();
        if target == p.replicas {
            target.rotate_left(1);
        }
        let (topic, partition) = (&p.tp.0, p.tp.1);
        let bootstrap = self.first_up_broker();
        let result = self.cluster.cli(&[
            "partitions",
            "--bootstrap-server",
            &self.cluster.client(bootstrap),
            "reassign",
            "--topic",
            topic,
            "--partition",
            &partition.to_string(),
            "--replicas",
            &csv(&target),
        ]);
        let detail = match &result {
            Ok(_) => format!(
                "move {topic}/{partition} from {} to {}",
                ids(&p.replicas),
                ids(&target)
            ),
            Err(e) => format!("reassigning {topic}/{partition} failed: {e:#}"),
        };
        if result.is_err() {
            self.note(detail.clone());
        }
        self.record(NemesisAction::Start, name, &detail);
        let started = Instant::now();
        let deadline = started + REASSIGNMENT_TIMEOUT.max(step.duration);
        let mut complete = false;
        while result.is_ok() && Instant::now() < deadline {
            let listed = self.cluster.cli(&[
                "partitions",
                "--bootstrap-server",
                &self.cluster.client(bootstrap),
                "list-reassignments",
            ]);
            if listed.is_ok_and(|l| l.trim().is_empty()) {
                complete = true;
                break;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        if result.is_ok() && !complete {
            self.note(format!(
                "reassignment of {topic}/{partition} not complete after {:?}",
                started.elapsed()
            ));
        }
        // Hold at least the step's duration, then hand leadership to the new
        // preferred replica: a second leader change.
        let held = started.elapsed();
        if held < step.duration {
            self.sleep(step.duration - held);
        }
        let elected = self.cluster.cli(&[
            "partitions",
            "--bootstrap-server",
            &self.cluster.client(bootstrap),
            "elect-leaders",
            "--topic",
            topic,
            "--partition",
            &partition.to_string(),
        ]);
        let heal = format!(
            "reassignment {} after {:.1} s; preferred leader election: {}",
            if complete { "complete" } else { "NOT complete" },
            started.elapsed().as_secs_f64(),
            match elected {
                Ok(out) => out.trim().to_string(),
                Err(e) => format!("{e:#}"),
            }
        );
        self.record(NemesisAction::Heal, name, &heal);
    }

    fn first_up_broker(&self) -> u64 {
        self.cluster
            .broker_ids()
            .into_iter()
            .find(|id| !self.down.contains(id) && !self.paused.contains(id))
            .unwrap_or(1)
    }

    /// Finds nodes that exited on their own (a crash, or a refusal to start), records
    /// them with their log tail, and starts them again.
    pub fn restart_crashed(&mut self) {
        for id in self.all_nodes() {
            if self.down.contains(&id) {
                continue;
            }
            if !self.cluster.node(id).is_running() {
                let tail = self.cluster.nodes[&id].log_tail();
                let when = self.recorder.now_ns();
                tracing::error!("node {id} exited on its own; restarting it");
                self.crashes.push((id, when, tail));
                self.restart(&[id]);
            }
        }
    }

    /// Undoes whatever is still in effect: removes rules, continues paused nodes,
    /// restarts killed ones, adds removed voters back.
    pub fn heal_everything(&mut self) {
        self.firewall.heal();
        for id in std::mem::take(&mut self.paused) {
            self.cluster.node(id).resume();
        }
        let down: Vec<u64> = self.down.iter().copied().collect();
        self.restart(&down);
        if !self.removed_voters.is_empty() {
            let what = self.readd_voters();
            tracing::info!("final heal: {what}");
        }
    }

    /// Whether the quorum has its initial voters and identical images on every member.
    pub fn quorum_summary(&self) -> String {
        match self.quorum() {
            Some(q) => format!(
                "controller {}; voters {}; metadata images {}",
                q.leader.map_or("-".into(), |l| l.to_string()),
                ids(&q.voters),
                if q.images_identical {
                    "identical"
                } else {
                    "not identical (or a member unreachable)"
                }
            ),
            None => "no controller answered".into(),
        }
    }
}

impl Drop for Nemesis<'_> {
    fn drop(&mut self) {
        self.firewall.heal();
        for id in &self.paused {
            if let Some(n) = self.cluster.nodes.get(id) {
                n.resume();
            }
        }
    }
}

fn csv(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn ids(nodes: &[u64]) -> String {
    let list = csv(nodes);
    if nodes.len() == 1 {
        format!("node {list}")
    } else {
        format!("nodes {list}")
    }
}
