//! A multi-node keel cluster of real processes on loopback: node `i` listens for
//! clients on `127.0.<block>.<10+i>:9092` and for controller traffic on
//! `127.0.<block>.<10+i>:9093`, each with its own data directory and log. Tests pick
//! distinct blocks so they can run in parallel and partition nodes with iptables
//! without touching each other.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::clients::run;
use crate::node::{keel_binary, KeelNode};

/// Client port of every node.
pub const CLIENT_PORT: u16 = 9092;
/// Controller port of every node.
pub const CONTROLLER_PORT: u16 = 9093;
/// How long a fresh cluster may take to elect a controller and unfence its brokers.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Broker and controller voter.
    Combined,
    /// Controller voter only (no client listener).
    Controller,
    /// Broker only (follows the metadata log as an observer).
    Broker,
    /// Broker and controller, but not among the initial voters (a voter-to-be).
    SpareController,
}

/// A cluster under test.
pub struct Cluster {
    block: u8,
    voters: String,
    roles: BTreeMap<u64, Role>,
    extra: Vec<String>,
    /// Nodes by id.
    pub nodes: BTreeMap<u64, KeelNode>,
    root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts nodes `1..` with the given roles and extra server args, and waits until
    /// every broker answers clients.
    pub fn start(block: u8, roles: &[Role], extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("keel-cluster-").tempdir()?;
        let mut cluster = Self::start_in(dir.path(), block, roles, extra)?;
        cluster._tmp = Some(dir);
        Ok(cluster)
    }

    /// As [`Cluster::start`], with node `i`'s data and log under `<dir>/node<i>`,
    /// kept after the cluster is dropped.
    pub fn start_in(
        dir: &std::path::Path,
        block: u8,
        roles: &[Role],
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let roles: BTreeMap<u64, Role> = roles
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u64 + 1, *r))
            .collect();
        let voters = roles
            .iter()
            .filter(|(_, r)| matches!(r, Role::Combined | Role::Controller))
            .map(|(id, _)| format!("{id}@{}", controller_addr(block, *id)))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            block,
            voters,
            roles: roles.clone(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            nodes: BTreeMap::new(),
            root: dir.to_path_buf(),
            _tmp: None,
        };
        for id in roles.keys() {
            cluster.spawn(*id)?;
        }
        cluster.wait_brokers_ready()?;
        Ok(cluster)
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let role = self.roles[&id];
        let node_dir: PathBuf = self.root.join(format!("node{id}"));
        std::fs::create_dir_all(&node_dir)?;
        let roles = match role {
            Role::Combined | Role::SpareController => "broker,controller",
            Role::Controller => "controller",
            Role::Broker => "broker",
        };
        let id_text = id.to_string();
        let controller = controller_addr(self.block, id);
        let mut args: Vec<&str> = vec![
            "--node-id",
            &id_text,
            "--roles",
            roles,
            "--controller-listen",
            &controller,
            "--controller-quorum-voters",
            &self.voters,
        ];
        args.extend(self.extra.iter().map(String::as_str));
        let node = KeelNode::spawn(&node_dir, &client_addr(self.block, id), &args)?;
        self.nodes.insert(id, node);
        Ok(())
    }

    /// What node `id` runs.
    pub fn role(&self, id: u64) -> Option<Role> {
        self.roles.get(&id).copied()
    }

    /// Ids of the initial controller voters.
    pub fn voter_ids(&self) -> Vec<u64> {
        self.roles
            .iter()
            .filter(|(_, r)| matches!(r, Role::Combined | Role::Controller))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The directory holding every node's directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The log file of node `id`.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.root.join(format!("node{id}")).join("keel.log")
    }

    /// Ids of nodes that serve clients.
    pub fn broker_ids(&self) -> Vec<u64> {
        self.roles
            .iter()
            .filter(|(_, r)| **r != Role::Controller)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Waits until every running broker answers a Metadata request.
    pub fn wait_brokers_ready(&mut self) -> anyhow::Result<()> {
        for id in self.broker_ids() {
            let node = self.node(id);
            if node.is_running() {
                node.wait_ready().with_context(|| format!("node {id}"))?;
            }
        }
        Ok(())
    }

    /// A node by id.
    pub fn node(&mut self, id: u64) -> &mut KeelNode {
        self.nodes.get_mut(&id).expect("no such node")
    }

    /// The loopback IP of node `id`.
    pub fn ip(&self, id: u64) -> String {
        node_ip(self.block, id)
    }

    /// The client address of node `id`.
    pub fn client(&self, id: u64) -> String {
        client_addr(self.block, id)
    }

    /// The controller address of node `id`.
    pub fn controller(&self, id: u64) -> String {
        controller_addr(self.block, id)
    }

    /// SIGKILLs node `id`.
    pub fn kill9(&mut self, id: u64) {
        self.node(id).kill9();
    }

    /// Restarts node `id` (after kill9 or stop) without waiting for it.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.node(id).respawn()
    }

    /// Runs `keel <args>` and returns its stdout, failing on a non-zero exit.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = run(
            Command::new(keel_binary()).args(args),
            Duration::from_secs(60),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `keel cluster status` through node `via`'s controller listener.
    pub fn status(&self, via: u64) -> anyhow::Result<String> {
        let controller = self.controller(via);
        // Brokers are listed through `via` itself when it is one (a paused or cut-off
        // node elsewhere must not stall the report).
        let brokers = self.broker_ids();
        let bootstrap_id = if brokers.contains(&via) {
            Some(via)
        } else {
            brokers.first().copied()
        };
        let bootstrap = bootstrap_id.map(|id| self.client(id)).unwrap_or_default();
        self.cli(&[
            "cluster",
            "--controller",
            &controller,
            "status",
            "--bootstrap-server",
            &bootstrap,
        ])
    }

    /// The active controller as node `via` reports it.
    pub fn leader(&self, via: u64) -> Option<u64> {
        let status = self.status(via).ok()?;
        let line = status.lines().find(|l| l.starts_with("Controller: "))?;
        line.trim_start_matches("Controller: ")
            .split('\t')
            .next()?
            .parse()
            .ok()
    }

    /// Waits until node `via` reports a controller other than `not`.
    pub fn wait_leader(
        &self,
        via: u64,
        not: Option<u64>,
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(l) = self.leader(via).filter(|l| Some(*l) != not) {
                return Ok(l);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("node {via} reports no controller other than {not:?} after {timeout:?}")
    }

    /// Creates a topic through node `via`'s client address.
    pub fn create_topic(
        &self,
        via: u64,
        topic: &str,
        partitions: i32,
        rf: i16,
    ) -> anyhow::Result<()> {
        self.cli(&[
            "topics",
            "--bootstrap-server",
            &self.client(via),
            "create",
            "--topic",
            topic,
            "--partitions",
            &partitions.to_string(),
            "--replication-factor",
            &rf.to_string(),
        ])
        .map(|_| ())
    }

    /// `keel topics describe --topic` through node `via`.
    pub fn describe(&self, via: u64, topic: &str) -> anyhow::Result<String> {
        self.cli(&[
            "topics",
            "--bootstrap-server",
            &self.client(via),
            "describe",
            "--topic",
            topic,
        ])
    }

    /// Every node's log tails, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|(id, n)| format!("---- node {id} ----\n{}\n", n.log_tail()))
            .collect()
    }
}

/// Node `id`'s IP in `block`.
pub fn node_ip(block: u8, id: u64) -> String {
    format!("127.0.{block}.{}", 10 + id)
}

/// Node `id`'s client address in `block`.
pub fn client_addr(block: u8, id: u64) -> String {
    format!("{}:{CLIENT_PORT}", node_ip(block, id))
}

/// Node `id`'s controller address in `block`.
pub fn controller_addr(block: u8, id: u64) -> String {
    format!("{}:{CONTROLLER_PORT}", node_ip(block, id))
}

/// iptables rules that drop traffic between loopback addresses; removed on drop.
#[derive(Default)]
pub struct Partition {
    rules: Vec<(String, String)>,
}

/// Comment marking every rule a test adds, so leftovers can be found and removed.
pub const IPTABLES_COMMENT: &str = "keel-test";

impl Partition {
    /// Drops packets from `from` to `to` (one direction).
    pub fn block(&mut self, from: &str, to: &str) -> anyhow::Result<()> {
        iptables("-A", from, to)?;
        self.rules.push((from.to_string(), to.to_string()));
        Ok(())
    }

    /// Cuts `ip` off from every address in `others`, both directions.
    pub fn isolate(&mut self, ip: &str, others: &[String]) -> anyhow::Result<()> {
        for o in others {
            self.block(ip, o)?;
            self.block(o, ip)?;
        }
        Ok(())
    }

    /// Removes every rule this partition added.
    pub fn heal(&mut self) {
        for (from, to) in self.rules.drain(..) {
            if let Err(e) = iptables("-D", &from, &to) {
                eprintln!("cannot remove iptables rule {from} -> {to}: {e}");
            }
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

fn iptables(op: &str, from: &str, to: &str) -> anyhow::Result<()> {
    let status = Command::new("iptables")
        .args([
            op,
            "INPUT",
            "-s",
            from,
            "-d",
            to,
            "-m",
            "comment",
            "--comment",
            IPTABLES_COMMENT,
            "-j",
            "DROP",
        ])
        .status()
        .context("iptables (run tests/run.sh as root; it installs iptables)")?;
    if !status.success() {
        bail!("iptables {op} {from} -> {to} failed with {status}");
    }
    Ok(())
}
