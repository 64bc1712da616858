//! Multi-node quorum tests: several [`MetadataQuorum`]s in one process, talking controller
//! RPC over real TCP, each on its own 127.0.0.x loopback address (which is also the source
//! address of its outgoing connections). The tests run one at a time (they share the CPU
//! with elections and timeouts) and each uses its own 127.0.<n>.x range.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use tempfile::TempDir;
use uuid::Uuid;

use super::*;
use crate::controller::ControllerError;
use crate::controller::HeartbeatReply;
use crate::controller::NewTopic;
use crate::records::BrokerEndpoint;

const ELECTION_MIN_MS: u64 = 500;
const ELECTION_MAX_MS: u64 = 1000;
const HEARTBEAT_MS: u64 = 100;
/// Generous bound for anything that should happen "soon" (elections, replication).
const SETTLE: Duration = Duration::from_secs(20);

/// The cluster tests take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A free port on `ip` (bound and released; the tests run one at a time).
fn free_addr(ip: Ipv4Addr) -> SocketAddr {
    let l = std::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), 0)).unwrap();
    l.local_addr().unwrap()
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nodes of one test cluster: voters 1..=n plus any observers, each on 127.0.<net>.<id>.
struct Cluster {
    _dir: TempDir,
    root: std::path::PathBuf,
    net: u8,
    voters: BTreeMap<NodeId, String>,
    addrs: BTreeMap<NodeId, SocketAddr>,
    nodes: BTreeMap<NodeId, MetadataQuorum>,
    tweak: fn(&mut QuorumConfig),
}

fn no_tweak(_: &mut QuorumConfig) {}

impl Cluster {
    fn new(net: u8, voters: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cluster {
            root: dir.path().to_path_buf(),
            _dir: dir,
            net,
            voters: BTreeMap::new(),
            addrs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            tweak: no_tweak,
        };
        for id in 1..=voters {
            let addr = c.addr(id);
            c.voters.insert(id, addr.to_string());
        }
        c
    }

    fn addr(&mut self, id: NodeId) -> SocketAddr {
        let net = self.net;
        *self
            .addrs
            .entry(id)
            .or_insert_with(|| free_addr(Ipv4Addr::new(127, 0, net, id as u8)))
    }

    fn config(&mut self, id: NodeId) -> QuorumConfig {
        let listen = self.addr(id);
        let mut cfg = QuorumConfig {
            node_id: id,
            dir: node_dir(&self.root, id),
            voters: self.voters.clone(),
            controller: ControllerConfig::default(),
            election_timeout_min_ms: ELECTION_MIN_MS,
            election_timeout_max_ms: ELECTION_MAX_MS,
            heartbeat_interval_ms: HEARTBEAT_MS,
            snapshot_every_entries: DEFAULT_SNAPSHOT_EVERY_ENTRIES,
            controller_listen: Some(listen),
            cluster_id: None,
        };
        (self.tweak)(&mut cfg);
        cfg
    }

    async fn start(&mut self, id: NodeId) -> MetadataQuorum {
        let cfg = self.config(id);
        let q = MetadataQuorum::open(cfg).await.expect("open node");
        self.nodes.insert(id, q.clone());
        q
    }

    /// Opens every voter at once, as a cold start of the whole cluster does.
    async fn start_voters(&mut self) {
        let mut opening = Vec::new();
        let ids: Vec<NodeId> = self.voters.keys().copied().collect();
        for id in ids {
            let cfg = self.config(id);
            opening.push((id, tokio::spawn(MetadataQuorum::open(cfg))));
        }
        for (id, task) in opening {
            let q = task.await.unwrap().expect("open voter");
            self.nodes.insert(id, q);
        }
    }

    async fn stop(&mut self, id: NodeId) {
        if let Some(q) = self.nodes.remove(&id) {
            q.shutdown().await.unwrap();
        }
    }

    async fn stop_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    fn node(&self, id: NodeId) -> &MetadataQuorum {
        &self.nodes[&id]
    }

    /// The leader all running voters agree on, once they do (a node that knows no
    /// membership yet counts as a voter that has to agree too): exactly one of them is
    /// leader and every one names it.
    async fn agreed_leader(&self) -> NodeId {
        let deadline = Instant::now() + SETTLE;
        loop {
            let statuses: Vec<QuorumStatus> = self
                .nodes
                .values()
                .map(|q| q.status())
                .filter(|s| s.member_role == MemberRole::Voter || s.voters.is_empty())
                .collect();
            let leaders: Vec<NodeId> = statuses
                .iter()
                .filter(|s| s.role == QuorumRole::Leader)
                .map(|s| s.node_id)
                .collect();
            if let [leader] = leaders[..] {
                if statuses.iter().all(|s| s.leader_id == Some(leader)) {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "voters never agreed on one leader: {:?}",
                statuses
                    .iter()
                    .map(|s| (s.node_id, s.role, s.leader_id, s.current_term))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running node applied the leader's image.
    async fn converged(&self) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let views: Vec<(NodeId, u64, u64)> = self
                .nodes
                .values()
                .map(|q| {
                    let s = q.status();
                    (s.node_id, s.last_applied_index, s.image_digest)
                })
                .collect();
            let leader_index = self
                .nodes
                .values()
                .map(|q| q.status())
                .find(|s| s.role == QuorumRole::Leader)
                .and_then(|s| s.committed_index);
            let same = views
                .windows(2)
                .all(|w| w[0].1 == w[1].1 && w[0].2 == w[1].2);
            if same && leader_index.is_some_and(|i| views.iter().all(|v| v.1 >= i)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes never converged: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn node_dir(root: &Path, id: NodeId) -> std::path::PathBuf {
    root.join(format!("node-{id}"))
}

fn endpoint(port: u16) -> Vec<BrokerEndpoint> {
    vec![BrokerEndpoint {
        listener: "PLAINTEXT".to_string(),
        host: "127.0.0.1".to_string(),
        port,
    }]
}

async fn register(q: &MetadataQuorum, broker_id: i32) -> i64 {
    match q
        .submit(ControllerRequest::RegisterBroker {
            broker_id,
            incarnation_id: Uuid::new_v4(),
            endpoints: endpoint(9092),
            rack: None,
        })
        .await
    {
        Ok(ControllerResponse::RegisterBroker(Ok(epoch))) => epoch,
        other => panic!("registration failed: {other:?}"),
    }
}

async fn create_topic(q: &MetadataQuorum, name: &str) -> Result<Uuid, ControllerError> {
    let resp = q
        .submit(ControllerRequest::CreateTopics {
            topics: vec![NewTopic {
                name: name.to_string(),
                num_partitions: 1,
                replication_factor: 1,
                assignments: BTreeMap::new(),
                configs: BTreeMap::new(),
            }],
            validate_only: false,
        })
        .await
        .expect("submit");
    match resp {
        ControllerResponse::CreateTopics(mut r) => r.remove(0).result.map(|c| c.topic_id),
        other => panic!("unexpected {other:?}"),
    }
}

fn has_topic(q: &MetadataQuorum, name: &str) -> bool {
    q.image().borrow().topic_by_name(name).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outgoing_controller_connections_use_the_listener_ip_as_source() {
    let _serial = serial().await;
    let server = tokio::net::TcpListener::bind("127.0.9.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap().to_string();
    let accept = tokio::spawn(async move {
        let (_stream, peer) = server.accept().await.unwrap();
        peer
    });
    let client = RpcClient::new(
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 9, 7))),
        std::sync::Arc::new(transport::Anonymous),
    );
    // The server never answers; only the connection's source matters here.
    let _ = client
        .call(
            &server_addr,
            RequestBody::Status,
            Instant::now() + Duration::from_millis(300),
        )
        .await;
    let peer = accept.await.unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 9, 7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_on_the_controller_port_is_refused_without_harm() {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let _serial = serial().await;
    let mut c = Cluster::new(10, 1);
    c.start_voters().await;
    c.agreed_leader().await;
    let addr = c.addrs[&1];
    // An absurd frame length: the connection is closed.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // A well-framed but undecodable request: answered with an error, node still fine.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 3, 0x7f, 0x7f, 0x7f]).await.unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    assert!(u32::from_be_bytes(len) > 0);
    let status = MetadataQuorum::remote_status(&addr.to_string(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status.role, QuorumRole::Leader);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_voters_started_at_once_elect_exactly_one_leader_and_share_a_cluster_id() {
    let _serial = serial().await;
    let mut c = Cluster::new(11, 5);
    c.start_voters().await;
    let leader = c.agreed_leader().await;
    let term = c.node(leader).status().current_term;
    for q in c.nodes.values() {
        let s = q.status();
        assert_eq!(
            (s.leader_id, s.current_term),
            (Some(leader), term),
            "{s:#?}"
        );
        assert_eq!(s.voters.len(), 5);
        assert_eq!(s.member_role, MemberRole::Voter);
    }
    let id = c
        .node(leader)
        .wait_cluster_id(SETTLE)
        .await
        .expect("cluster id");
    assert_eq!(id.len(), 22, "{id}");
    for q in c.nodes.values() {
        assert_eq!(q.wait_cluster_id(SETTLE).await.unwrap(), id);
    }
    c.converged().await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_on_a_follower_is_forwarded_to_the_leader() {
    let _serial = serial().await;
    let mut c = Cluster::new(12, 3);
    c.start_voters().await;
    let leader = c.agreed_leader().await;
    let follower = *c.nodes.keys().find(|id| **id != leader).unwrap();
    let q = c.node(follower).clone();
    register(&q, 1).await;
    create_topic(&q, "forwarded")
        .await
        .expect("created through a follower");
    assert!(
        has_topic(&q, "forwarded"),
        "submit returns once this node applied its own change"
    );
    // The same name again, through the other follower: the controller's answer comes back.
    let other = *c
        .nodes
        .keys()
        .find(|id| **id != leader && **id != follower)
        .unwrap();
    let again = create_topic(c.node(other), "forwarded").await;
    assert!(
        matches!(again, Err(ControllerError::TopicAlreadyExists(_))),
        "{again:?}"
    );
    wait_until("every node has the topic", SETTLE, || {
        c.nodes.values().all(|q| has_topic(q, "forwarded"))
    })
    .await;
    c.converged().await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_is_elected_within_two_election_timeouts_after_the_leader_stops() {
    let _serial = serial().await;
    let mut c = Cluster::new(13, 3);
    c.start_voters().await;
    let old = c.agreed_leader().await;
    register(c.node(old), 1).await;
    create_topic(c.node(old), "before").await.unwrap();
    c.converged().await;

    let stopped_at = Instant::now();
    c.stop(old).await;
    let new = c.agreed_leader().await;
    let took = stopped_at.elapsed();
    assert_ne!(new, old);
    assert!(
        took < Duration::from_millis(2 * ELECTION_MAX_MS),
        "new leader after {took:?}"
    );
    eprintln!("new leader {new} elected {took:?} after leader {old} stopped");

    // The survivors take writes; the old leader comes back as a follower and catches up.
    let survivor = *c.nodes.keys().next().unwrap();
    create_topic(c.node(survivor), "after").await.unwrap();
    c.start(old).await;
    wait_until("the old leader has the new topic", SETTLE, || {
        has_topic(c.node(old), "after")
    })
    .await;
    assert_eq!(c.agreed_leader().await, new);
    c.converged().await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_observer_joins_as_a_learner_follows_the_log_and_forwards_submits() {
    let _serial = serial().await;
    let mut c = Cluster::new(14, 3);
    c.start_voters().await;
    let leader = c.agreed_leader().await;
    register(c.node(leader), 1).await;
    create_topic(c.node(leader), "early").await.unwrap();

    let observer = c.start(10).await;
    observer
        .wait_until_leader_known(SETTLE)
        .await
        .expect("observer learns the leader");
    wait_until("the observer has the early topic", SETTLE, || {
        has_topic(&observer, "early")
    })
    .await;
    let s = observer.status();
    assert_eq!(s.member_role, MemberRole::Observer);
    assert_eq!(s.role, QuorumRole::Learner);
    assert!(s.cluster_id.is_some());

    create_topic(&observer, "from-observer")
        .await
        .expect("forwarded");
    assert!(has_topic(&observer, "from-observer"));
    wait_until("everyone has the observer's topic", SETTLE, || {
        c.nodes.values().all(|q| has_topic(q, "from-observer"))
    })
    .await;
    c.converged().await;

    let leader_view = c.node(c.agreed_leader().await).status();
    assert_eq!(
        leader_view.observers.get(&10),
        Some(&c.addrs[&10].to_string())
    );
    let member = leader_view
        .members
        .iter()
        .find(|m| m.node_id == 10)
        .expect("observer in the leader's members");
    assert_eq!(member.role, MemberRole::Observer);
    assert_eq!(member.lag, Some(0));
    assert!(
        member.last_contact_ms.is_some_and(|ms| ms < 5_000),
        "{member:?}"
    );

    // Restarted, the observer is already a member and resumes from its own store.
    c.stop(10).await;
    create_topic(c.node(leader), "while-away").await.unwrap();
    let observer = c.start(10).await;
    wait_until("the restarted observer catches up", SETTLE, || {
        has_topic(&observer, "while-away")
    })
    .await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_missed_purged_entries_catches_up_through_a_snapshot() {
    let _serial = serial().await;
    let mut c = Cluster::new(15, 3);
    c.tweak = |cfg| cfg.snapshot_every_entries = 10;
    c.start_voters().await;
    let leader = c.agreed_leader().await;
    let lagging = *c.nodes.keys().find(|id| **id != leader).unwrap();
    register(c.node(leader), 1).await;
    c.converged().await;
    let lagging_last = c.node(lagging).status().last_log_index.unwrap_or(0);
    c.stop(lagging).await;

    for i in 0..60 {
        create_topic(c.node(leader), &format!("t{i}"))
            .await
            .unwrap();
    }
    let raft = c.node(leader).inner.raft.clone();
    wait_until(
        "the leader purged entries the lagging node lacks",
        SETTLE,
        || {
            raft.metrics()
                .borrow()
                .purged
                .is_some_and(|p| p.index > lagging_last + 1)
        },
    )
    .await;

    let q = c.start(lagging).await;
    wait_until("the lagging node has every topic", SETTLE, || {
        q.image().borrow().topics.len() == 60
    })
    .await;
    let snapshot = q.inner.raft.metrics().borrow().snapshot;
    assert!(
        snapshot.is_some_and(|s| s.index > lagging_last),
        "installed snapshot: {snapshot:?}"
    );
    c.converged().await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn voters_are_added_and_removed_at_run_time_from_any_node() {
    let _serial = serial().await;
    let mut c = Cluster::new(16, 3);
    c.start_voters().await;
    let leader = c.agreed_leader().await;
    register(c.node(leader), 1).await;
    create_topic(c.node(leader), "t").await.unwrap();

    // Node 4 starts as an observer and is promoted, asked through a follower.
    c.start(4).await;
    let follower = *c
        .nodes
        .keys()
        .find(|id| **id != leader && **id != 4)
        .unwrap();
    let addr4 = c.addrs[&4].to_string();
    c.node(follower)
        .add_voter(4, &addr4)
        .await
        .expect("add voter");
    wait_until("every node sees four voters", SETTLE, || {
        c.nodes.values().all(|q| {
            let s = q.status();
            s.voters.len() == 4 && !s.membership_changing
        })
    })
    .await;
    assert_eq!(c.node(4).status().member_role, MemberRole::Voter);
    // Adding it again is a no-op; another address for its id is refused.
    c.node(4).add_voter(4, &addr4).await.unwrap();
    let clash = c.node(4).add_voter(4, "127.0.16.99:1").await;
    assert!(
        matches!(clash, Err(QuorumError::Membership(_))),
        "{clash:?}"
    );

    // Remove the current leader through a tool call on node 4.
    let leader = c.agreed_leader().await;
    MetadataQuorum::remote_remove_voter(&addr4, leader, SETTLE)
        .await
        .expect("remove voter");
    wait_until(
        "the removed leader is an observer everywhere",
        SETTLE,
        || {
            c.nodes.values().all(|q| {
                let s = q.status();
                s.voters.len() == 3
                    && !s.voters.contains_key(&leader)
                    && s.observers.contains_key(&leader)
            })
        },
    )
    .await;
    let new_leader = c.agreed_leader().await;
    assert_ne!(new_leader, leader);
    create_topic(c.node(leader), "after-removal")
        .await
        .expect("a removed voter still forwards");
    wait_until("node 4 has the topic", SETTLE, || {
        has_topic(c.node(4), "after-removal")
    })
    .await;

    // Shrink to one voter; the last one cannot go.
    let followers: Vec<NodeId> = c
        .node(new_leader)
        .status()
        .voters
        .keys()
        .copied()
        .filter(|id| *id != new_leader)
        .collect();
    for id in followers {
        c.node(4)
            .remove_voter(id)
            .await
            .expect("remove a follower voter");
    }
    let s = c.node(new_leader).status();
    assert_eq!(
        s.voters.keys().copied().collect::<Vec<_>>(),
        vec![new_leader]
    );
    let refused = c.node(4).remove_voter(new_leader).await;
    assert!(
        matches!(refused, Err(QuorumError::Membership(ref m)) if m.contains("only voter")),
        "{refused:?}"
    );
    create_topic(c.node(4), "single-voter")
        .await
        .expect("one voter still commits");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_of_different_clusters_refuse_each_other_with_a_clear_error() {
    let _serial = serial().await;
    let mut c = Cluster::new(17, 3);
    c.start_voters().await;
    let leader = c.agreed_leader().await;
    let cluster_id = c.node(leader).wait_cluster_id(SETTLE).await.unwrap();

    // An observer that believes it belongs to another cluster cannot join.
    let mut cfg = c.config(20);
    cfg.cluster_id = Some("OtherClusterAAAAAAAAAA".to_string());
    let stranger = MetadataQuorum::open(cfg).await.unwrap();
    let err = stranger
        .wait_until_leader_known(SETTLE)
        .await
        .expect_err("joined another cluster");
    let QuorumError::ClusterIdMismatch(msg) = &err else {
        panic!("expected ClusterIdMismatch, got {err}")
    };
    assert!(
        msg.contains("OtherClusterAAAAAAAAAA") && msg.contains(&cluster_id),
        "{msg}"
    );
    assert!(matches!(
        stranger
            .submit(ControllerRequest::DeleteTopics { topics: vec![] })
            .await,
        Err(QuorumError::ClusterIdMismatch(_))
    ));
    stranger.shutdown().await.unwrap();

    // A voter restarted with another cluster id in its meta.properties refuses to open.
    let follower = *c.nodes.keys().find(|id| **id != leader).unwrap();
    c.stop(follower).await;
    let mut cfg = c.config(follower);
    cfg.cluster_id = Some("SomeoneElseAAAAAAAAAAA".to_string());
    match MetadataQuorum::open(cfg).await {
        Err(QuorumError::ClusterIdMismatch(msg)) => {
            assert!(
                msg.contains(&cluster_id) && msg.contains("SomeoneElse"),
                "{msg}"
            )
        }
        Err(other) => panic!("expected ClusterIdMismatch, got {other}"),
        Ok(_) => panic!("opened with another cluster id"),
    }
    // With the right one it rejoins.
    let mut cfg = c.config(follower);
    cfg.cluster_id = Some(cluster_id.clone());
    let q = MetadataQuorum::open(cfg).await.unwrap();
    c.nodes.insert(follower, q);
    c.converged().await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_status_shows_every_node_and_unreachable_nodes_fail_fast() {
    let _serial = serial().await;
    let mut c = Cluster::new(18, 3);
    c.start_voters().await;
    let leader = c.agreed_leader().await;
    register(c.node(leader), 1).await;
    c.converged().await;
    let mut digests = Vec::new();
    for (id, addr) in c.addrs.clone() {
        let s = MetadataQuorum::remote_status(&addr.to_string(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(s.node_id, id);
        assert_eq!(s.leader_id, Some(leader));
        assert_eq!(s.controller_addr, Some(addr.to_string()));
        digests.push(s.image_digest);
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    let leader_status = c.node(leader).status();
    assert!(leader_status
        .members
        .iter()
        .all(|m| m.matched_index.is_some() && m.lag.is_some()));

    let nobody = free_addr(Ipv4Addr::new(127, 0, 18, 50)).to_string();
    let started = Instant::now();
    let err = MetadataQuorum::remote_status(&nobody, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, QuorumError::Unreachable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brokers_are_unfenced_by_heartbeats_through_any_node_and_fenced_when_silent() {
    let _serial = serial().await;
    let mut c = Cluster::new(19, 3);
    c.tweak = |cfg| {
        cfg.controller.register_brokers_unfenced = false;
        cfg.controller.broker_session_timeout_ms = 1_500;
    };
    c.start_voters().await;
    let leader = c.agreed_leader().await;
    let follower = c
        .node(*c.nodes.keys().find(|id| **id != leader).unwrap())
        .clone();
    let epoch = register(&follower, 7).await;
    wait_until("the follower applied the registration", SETTLE, || {
        follower.image().borrow().brokers.contains_key(&7)
    })
    .await;
    assert!(follower.image().borrow().brokers[&7].fenced);
    let heartbeat = |offset: u64| ControllerRequest::BrokerHeartbeat {
        broker_id: 7,
        broker_epoch: epoch,
        current_metadata_offset: offset,
        want_fence: false,
        want_shutdown: false,
    };
    let offset = follower.status().last_applied_index;
    let reply = follower.submit(heartbeat(offset)).await.unwrap();
    let ControllerResponse::BrokerHeartbeat(Ok(HeartbeatReply {
        is_fenced: false,
        is_caught_up: true,
        ..
    })) = reply
    else {
        panic!("not unfenced: {reply:?}")
    };
    // Silent for longer than the session timeout: the active controller fences it.
    wait_until("the silent broker is fenced", SETTLE, || {
        follower.image().borrow().brokers[&7].fenced
    })
    .await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_without_a_reachable_leader_fails_within_its_timeout() {
    let _serial = serial().await;
    let mut c = Cluster::new(21, 3);
    // Only one of three voters runs: no quorum, no leader.
    let q = c.start(1).await;
    let started = Instant::now();
    let r = q
        .submit_with_timeout(
            ControllerRequest::DeleteTopics { topics: vec![] },
            Duration::from_millis(1_500),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(r, Err(QuorumError::NotController { leader_id: None }));
    assert!(
        took >= Duration::from_millis(1_400) && took < Duration::from_millis(2_500),
        "{took:?}"
    );
    c.stop_all().await;
}
