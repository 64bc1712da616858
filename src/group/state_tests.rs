//! Tests of the pure group state machine: the rebalance protocol step by step, and a
//! seeded simulation of many clients that checks the protocol's invariants.

use bytes::Bytes;

use super::error::GroupError;
use super::member::{JoinRequest, JoinResult, Output, PersistReason, Reply, SyncResult};
use super::state::{Group, GroupLimits, GroupState};

const LIMITS: GroupLimits = GroupLimits {
    min_session_timeout_ms: 6_000,
    max_session_timeout_ms: 1_800_000,
    initial_rebalance_delay_ms: 0,
    max_size: 100,
};

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;

fn join_req(member: &str, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        member_id: member.to_string(),
        instance_id: None,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
            .collect(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        require_known_member_id: true,
        supports_skip_assignment: false,
    }
}

fn joins(out: &[Output]) -> Vec<(String, JoinResult)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Join(m, r) => Some((m.clone(), r.clone())),
            _ => None,
        })
        .collect()
}

fn syncs(out: &[Output]) -> Vec<(String, SyncResult)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Sync(m, r) => Some((m.clone(), r.clone())),
            _ => None,
        })
        .collect()
}

fn persists(out: &[Output]) -> Vec<PersistReason> {
    out.iter()
        .filter_map(|o| match o {
            Output::Persist(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// A first join (v4+): MEMBER_ID_REQUIRED with an id, then the rejoin, which parks.
fn first_join(g: &mut Group, id: &str, now: i64) -> Vec<Output> {
    let (reply, out) = g.join(join_req("", &["range"]), id.to_string(), now);
    match reply {
        Reply::Now(r) => {
            assert_eq!(r.error, Some(GroupError::MemberIdRequired));
            assert_eq!(r.member_id, id);
        }
        other => panic!("{other:?}"),
    }
    assert!(out.is_empty());
    let (reply, out) = g.join(join_req(id, &["range"]), "unused".into(), now);
    assert_eq!(reply, Reply::Wait(id.to_string()));
    out
}

fn stable_group_of(ids: &[&str], now: i64) -> Group {
    let mut g = Group::new("g", LIMITS, now);
    for id in ids {
        let _ = first_join(&mut g, id, now);
    }
    // Every member not parked in the join phase rejoins, until the phase ends.
    while g.state() == GroupState::PreparingRebalance {
        let idle: Vec<String> = g
            .members()
            .values()
            .filter(|m| !m.awaiting_join)
            .map(|m| m.member_id.clone())
            .collect();
        for id in idle {
            let _ = g.join(join_req(&id, &["range"]), "unused".into(), now);
        }
    }
    assert_eq!(g.state(), GroupState::CompletingRebalance, "{g:?}");
    let leader = g.leader().unwrap().to_string();
    let generation = g.generation();
    let assignments: Vec<(String, Bytes)> = ids
        .iter()
        .map(|m| (m.to_string(), Bytes::from(format!("assign-{m}"))))
        .collect();
    let (reply, out) = g.sync(&leader, None, generation, None, None, assignments, now);
    assert_eq!(reply, Reply::Wait(leader.clone()));
    let reasons = persists(&out);
    assert_eq!(reasons, vec![PersistReason::Assignment { generation }]);
    let out = g.persisted(&reasons[0], Ok(()), now);
    assert_eq!(syncs(&out).len(), 1);
    assert_eq!(g.state(), GroupState::Stable);
    g
}

#[test]
fn a_single_member_gets_an_id_joins_leads_and_syncs_its_own_assignment() {
    let mut g = Group::new("g", LIMITS, 0);
    let out = first_join(&mut g, "m1", 0);
    let answered = joins(&out);
    assert_eq!(answered.len(), 1);
    let (m, r) = &answered[0];
    assert_eq!(m, "m1");
    assert_eq!(r.error, None);
    assert_eq!(r.generation, 1);
    assert_eq!(r.leader, "m1");
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    assert_eq!(r.members.len(), 1, "the leader gets the member list");
    assert_eq!(r.members[0].metadata, Bytes::from_static(b"meta-range"));
    assert_eq!(g.state(), GroupState::CompletingRebalance);

    let (reply, out) = g.sync(
        "m1",
        None,
        1,
        None,
        None,
        vec![("m1".into(), Bytes::from_static(b"a"))],
        5,
    );
    assert_eq!(reply, Reply::Wait("m1".into()));
    let out = g.persisted(&persists(&out)[0], Ok(()), 6);
    let synced = syncs(&out);
    assert_eq!(
        synced,
        vec![(
            "m1".to_string(),
            SyncResult {
                error: None,
                protocol_type: Some("consumer".into()),
                protocol_name: Some("range".into()),
                assignment: Bytes::from_static(b"a"),
            }
        )]
    );
    assert_eq!(g.state(), GroupState::Stable);
    assert_eq!(g.heartbeat("m1", None, 1, 7), Ok(()));
}

#[test]
fn the_join_phase_waits_for_every_known_member_and_only_the_leader_gets_members() {
    let mut g = stable_group_of(&["a"], 0);
    // A second member joins: the group prepares a rebalance and waits for "a".
    let out = first_join(&mut g, "b", 1);
    assert!(joins(&out).is_empty());
    assert_eq!(g.state(), GroupState::PreparingRebalance);
    assert_eq!(
        g.heartbeat("a", None, 1, 2),
        Err(GroupError::RebalanceInProgress)
    );
    let (reply, out) = g.join(join_req("a", &["range"]), "unused".into(), 3);
    assert_eq!(reply, Reply::Wait("a".into()));
    let answered = joins(&out);
    assert_eq!(answered.len(), 2);
    for (m, r) in &answered {
        assert_eq!(r.generation, 2);
        assert_eq!(r.leader, "a", "the old leader stays leader");
        assert_eq!(r.members.len(), if m == "a" { 2 } else { 0 });
    }
}

#[test]
fn a_member_that_does_not_rejoin_in_time_is_removed_when_the_rebalance_times_out() {
    let mut g = stable_group_of(&["a", "b"], 0);
    let (results, out) = g.leave(&[("zz".into(), None)], 1);
    assert_eq!(results, vec![Err(GroupError::UnknownMemberId("zz".into()))]);
    assert!(out.is_empty());
    // "a" rejoins with new protocols: rebalance; "b" never comes back.
    let (reply, out) = g.join(join_req("a", &["range", "roundrobin"]), "x".into(), 10);
    assert_eq!(reply, Reply::Wait("a".into()));
    assert!(joins(&out).is_empty());
    // "b" keeps heartbeating (told to rejoin each time) but never rejoins: only the
    // rebalance timeout removes it.
    let generation = g.generation();
    let mut t = 10;
    while t < 10 + i64::from(REBALANCE_MS) - 1 {
        assert_eq!(
            g.heartbeat("b", None, generation, t),
            Err(GroupError::RebalanceInProgress)
        );
        assert!(joins(&g.tick(t)).is_empty(), "at {t}");
        t += 5_000;
    }
    assert!(joins(&g.tick(10 + i64::from(REBALANCE_MS) - 1)).is_empty());
    let out = g.tick(10 + i64::from(REBALANCE_MS));
    let answered = joins(&out);
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].0, "a");
    assert_eq!(answered[0].1.generation, 3);
    assert!(!g.members().contains_key("b"));
}

#[test]
fn a_silent_member_expires_after_its_session_timeout_and_the_rest_rebalance() {
    let mut g = stable_group_of(&["a", "b"], 0);
    let t = i64::from(SESSION_MS);
    let generation = g.generation();
    assert_eq!(g.heartbeat("a", None, generation, t - 1), Ok(()));
    let out = g.tick(t);
    assert!(!g.members().contains_key("b"), "b expired");
    assert!(g.members().contains_key("a"), "a heartbeated");
    assert!(joins(&out).is_empty());
    assert_eq!(g.state(), GroupState::PreparingRebalance);
    assert_eq!(
        g.heartbeat("a", None, generation, t + 1),
        Err(GroupError::RebalanceInProgress)
    );
    let (_, out) = g.join(join_req("a", &["range"]), "x".into(), t + 2);
    assert_eq!(joins(&out)[0].1.generation, generation + 1);
}

#[test]
fn leaving_the_last_member_empties_the_group_and_stores_the_empty_generation() {
    let mut g = stable_group_of(&["a"], 0);
    let (results, out) = g.leave(&[("a".into(), None)], 1);
    assert_eq!(results, vec![Ok(())]);
    assert_eq!(
        persists(&out),
        vec![PersistReason::EmptyGeneration { generation: 2 }]
    );
    assert_eq!(g.state(), GroupState::Empty);
    assert_eq!(
        g.heartbeat("a", None, 1, 2),
        Err(GroupError::UnknownMemberId("a".into()))
    );
}

#[test]
fn stale_generations_unknown_members_and_the_sync_phase_are_fenced_from_commits() {
    let mut g = stable_group_of(&["a"], 0);
    assert_eq!(g.validate_offset_commit("a", None, 1, 1), Ok(()));
    assert_eq!(
        g.validate_offset_commit("a", None, 0, 1),
        Err(GroupError::IllegalGeneration { got: 0, current: 1 })
    );
    assert_eq!(
        g.validate_offset_commit("ghost", None, 1, 1),
        Err(GroupError::UnknownMemberId("ghost".into()))
    );
    assert_eq!(
        g.validate_offset_commit("", None, -1, 1),
        Err(GroupError::UnknownMemberId(String::new())),
        "a standalone commit to a group with members is refused"
    );
    // Preparing a rebalance: members of the current generation may still commit.
    let _ = first_join(&mut g, "b", 2);
    assert_eq!(g.validate_offset_commit("a", None, 1, 3), Ok(()));
    let (_, _) = g.join(join_req("a", &["range"]), "x".into(), 4);
    assert_eq!(g.state(), GroupState::CompletingRebalance);
    assert_eq!(
        g.validate_offset_commit("a", None, 2, 5),
        Err(GroupError::RebalanceInProgress)
    );
    // An empty group takes standalone commits.
    let mut empty = Group::new("e", LIMITS, 0);
    assert_eq!(empty.validate_offset_commit("", None, -1, 0), Ok(()));
}

#[test]
fn sync_checks_membership_generation_and_protocol() {
    let mut g = stable_group_of(&["a"], 0);
    let bad = |r: (Reply<SyncResult>, Vec<Output>)| match r.0 {
        Reply::Now(r) => r.error,
        Reply::Wait(_) => None,
    };
    assert_eq!(
        bad(g.sync("ghost", None, 1, None, None, vec![], 1)),
        Some(GroupError::UnknownMemberId("ghost".into()))
    );
    assert_eq!(
        bad(g.sync("a", None, 7, None, None, vec![], 1)),
        Some(GroupError::IllegalGeneration { got: 7, current: 1 })
    );
    assert!(matches!(
        bad(g.sync("a", None, 1, Some("connect"), None, vec![], 1)),
        Some(GroupError::InconsistentGroupProtocol(_))
    ));
    assert!(matches!(
        bad(g.sync("a", None, 1, None, Some("sticky"), vec![], 1)),
        Some(GroupError::InconsistentGroupProtocol(_))
    ));
    // Stable: the member gets its stored assignment at once.
    match g
        .sync("a", None, 1, Some("consumer"), Some("range"), vec![], 1)
        .0
    {
        Reply::Now(r) => assert_eq!(r.assignment, Bytes::from_static(b"assign-a")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn join_validation_refuses_bad_timeouts_and_protocols_it_cannot_agree_on() {
    let mut g = stable_group_of(&["a"], 0);
    let error = |g: &mut Group, req: JoinRequest| match g.join(req, "n".into(), 1).0 {
        Reply::Now(r) => r.error,
        Reply::Wait(_) => None,
    };
    let mut short = join_req("", &["range"]);
    short.session_timeout_ms = 10;
    assert_eq!(
        error(&mut g, short),
        Some(GroupError::InvalidSessionTimeout {
            got: 10,
            min: 6_000,
            max: 1_800_000
        })
    );
    assert!(matches!(
        error(&mut g, join_req("", &["roundrobin"])),
        Some(GroupError::InconsistentGroupProtocol(_))
    ));
    let mut other_type = join_req("", &["range"]);
    other_type.protocol_type = "connect".into();
    assert!(matches!(
        error(&mut g, other_type),
        Some(GroupError::InconsistentGroupProtocol(_))
    ));
    assert!(matches!(
        error(&mut g, join_req("", &[])),
        Some(GroupError::InconsistentGroupProtocol(_))
    ));
    assert_eq!(
        error(&mut g, join_req("ghost", &["range"])),
        Some(GroupError::UnknownMemberId("ghost".into()))
    );
}

#[test]
fn the_protocol_every_member_supports_and_most_prefer_is_selected() {
    let mut g = Group::new("g", LIMITS, 0);
    let (_, _) = g.join(join_req("", &["sticky", "range"]), "a".into(), 0);
    let (_, _) = g.join(join_req("a", &["sticky", "range"]), "x".into(), 0);
    // "a" alone: generation 1 with sticky.
    assert_eq!(g.protocol(), Some("sticky"));
    let (_, _) = g.join(join_req("", &["range", "roundrobin"]), "b".into(), 1);
    let (_, _) = g.join(join_req("b", &["range", "roundrobin"]), "x".into(), 1);
    let (_, _) = g.join(join_req("a", &["sticky", "range"]), "x".into(), 1);
    assert_eq!(g.generation(), 2);
    assert_eq!(
        g.protocol(),
        Some("range"),
        "the only protocol both support"
    );
}

#[test]
fn the_initial_delay_waits_for_more_members_and_extends_while_they_come() {
    let limits = GroupLimits {
        initial_rebalance_delay_ms: 3_000,
        ..LIMITS
    };
    let mut g = Group::new("g", limits, 0);
    let (_, _) = g.join(join_req("", &["range"]), "a".into(), 0);
    let (_, out) = g.join(join_req("a", &["range"]), "x".into(), 0);
    assert!(joins(&out).is_empty(), "the first join waits out the delay");
    let (_, _) = g.join(join_req("", &["range"]), "b".into(), 1_000);
    let (_, _) = g.join(join_req("b", &["range"]), "x".into(), 1_000);
    assert!(joins(&g.tick(2_999)).is_empty());
    // A member joined during the first delay: it is extended once more.
    assert!(joins(&g.tick(3_000)).is_empty());
    let answered = joins(&g.tick(6_000));
    assert_eq!(answered.len(), 2);
    assert!(answered.iter().all(|(_, r)| r.generation == 1));
}

#[test]
fn a_static_member_restarting_within_its_session_keeps_its_assignment_without_a_rebalance() {
    let mut g = Group::new("g", LIMITS, 0);
    let mut req = join_req("", &["range"]);
    req.instance_id = Some("host-1".into());
    let (reply, out) = g.join(req.clone(), "host-1-aaa".into(), 0);
    assert_eq!(
        reply,
        Reply::Wait("host-1-aaa".into()),
        "static members skip MEMBER_ID_REQUIRED"
    );
    assert_eq!(joins(&out)[0].1.generation, 1);
    let (_, out) = g.sync(
        "host-1-aaa",
        Some("host-1"),
        1,
        None,
        None,
        vec![("host-1-aaa".into(), Bytes::from_static(b"p0"))],
        1,
    );
    let _ = g.persisted(&persists(&out)[0], Ok(()), 1);
    assert_eq!(g.state(), GroupState::Stable);

    // The process restarts: same instance id, no member id.
    let (reply, out) = g.join(req, "host-1-bbb".into(), 5_000);
    assert_eq!(reply, Reply::Wait("host-1-bbb".into()));
    let reasons = persists(&out);
    assert!(
        matches!(&reasons[..], [PersistReason::StaticMemberReplaced { member_id, generation: 1, .. }] if member_id == "host-1-bbb")
    );
    let answered = joins(&g.persisted(&reasons[0], Ok(()), 5_001));
    assert_eq!(answered.len(), 1);
    let r = &answered[0].1;
    assert_eq!(r.generation, 1, "no new generation");
    assert_eq!(
        r.leader, "host-1-aaa",
        "told the old leader id, so it does not reassign"
    );
    assert_eq!(g.state(), GroupState::Stable);
    match g
        .sync("host-1-bbb", Some("host-1"), 1, None, None, vec![], 5_002)
        .0
    {
        Reply::Now(r) => assert_eq!(r.assignment, Bytes::from_static(b"p0")),
        other => panic!("{other:?}"),
    }
    // The old incarnation is fenced.
    assert!(matches!(
        g.heartbeat("host-1-aaa", Some("host-1"), 1, 5_003),
        Err(GroupError::FencedInstanceId { .. })
    ));
    assert_eq!(g.heartbeat("host-1-bbb", Some("host-1"), 1, 5_003), Ok(()));
}

#[test]
fn members_that_do_not_sync_in_time_are_removed_and_the_rest_rebalance() {
    let mut g = Group::new("g", LIMITS, 0);
    let _ = first_join(&mut g, "a", 0);
    let _ = first_join(&mut g, "b", 1);
    let (_, _) = g.join(join_req("a", &["range"]), "x".into(), 1);
    assert_eq!(g.state(), GroupState::CompletingRebalance);
    // Only "b" (a follower) syncs; the leader never does.
    let leader = g.leader().unwrap().to_string();
    let follower = if leader == "a" { "b" } else { "a" };
    let generation = g.generation();
    let (reply, _) = g.sync(follower, None, generation, None, None, vec![], 2);
    assert_eq!(reply, Reply::Wait(follower.to_string()));
    let out = g.tick(1 + i64::from(REBALANCE_MS));
    assert!(!g.members().contains_key(&leader));
    // The follower's parked sync is told to rejoin.
    assert_eq!(
        syncs(&out),
        vec![(
            follower.to_string(),
            SyncResult::error(GroupError::RebalanceInProgress)
        )]
    );
}

#[test]
fn a_failed_assignment_write_answers_the_parked_syncs_and_rebalances() {
    let mut g = Group::new("g", LIMITS, 0);
    let _ = first_join(&mut g, "a", 0);
    let (_, out) = g.sync("a", None, 1, None, None, vec![], 1);
    let out = g.persisted(&persists(&out)[0], Err(GroupError::NotCoordinator), 2);
    assert_eq!(
        syncs(&out),
        vec![(
            "a".to_string(),
            SyncResult::error(GroupError::NotCoordinator)
        )]
    );
    assert_eq!(g.state(), GroupState::PreparingRebalance);
}

#[test]
fn a_timed_out_assignment_write_is_coordinator_not_available_to_the_syncs() {
    let mut g = Group::new("g", LIMITS, 0);
    let _ = first_join(&mut g, "a", 0);
    let (_, out) = g.sync("a", None, 1, None, None, vec![], 1);
    let out = g.persisted(&persists(&out)[0], Err(GroupError::Timeout), 2);
    let answered = syncs(&out);
    assert_eq!(answered.len(), 1);
    assert!(
        matches!(
            answered[0].1.error,
            Some(GroupError::CoordinatorNotAvailable(_))
        ),
        "not REQUEST_TIMED_OUT, which Java clients do not retry here: {answered:?}"
    );
    assert_eq!(g.state(), GroupState::PreparingRebalance);
}

/// Session timeout of the static member of [`stable_group_of_one_static_member`].
const STATIC_SESSION_MS: i64 = 120_000;

/// What the static member of [`stable_group_of_one_static_member`] is assigned.
const STATIC_ASSIGNMENT: &[u8] = b"p0";

/// A JoinGroup of the static member `host-1` without a member id (a first join, or a
/// restart).
fn static_join_req() -> JoinRequest {
    let mut req = join_req("", &["range"]);
    req.instance_id = Some("host-1".into());
    req.session_timeout_ms = STATIC_SESSION_MS as i32;
    req
}

/// A stable group whose one member is static (`host-1`, member id `host-1-aaa`),
/// assigned [`STATIC_ASSIGNMENT`].
fn stable_group_of_one_static_member() -> Group {
    let mut g = Group::new("g", LIMITS, 0);
    let _ = g.join(static_join_req(), "host-1-aaa".into(), 0);
    let assignment = vec![("host-1-aaa".into(), Bytes::from_static(STATIC_ASSIGNMENT))];
    let (_, out) = g.sync("host-1-aaa", Some("host-1"), 1, None, None, assignment, 1);
    let _ = g.persisted(&persists(&out)[0], Ok(()), 1);
    g
}

/// KIP-814: a static leader restarting with JoinGroup v9 is told it leads, with the
/// members, and to skip the assignment; the group stays in its generation and the
/// leader's SyncGroup gets the assignment it had.
#[test]
fn a_static_leader_rejoining_with_v9_is_told_it_leads_and_to_skip_the_assignment() {
    let mut g = stable_group_of_one_static_member();
    let mut req = static_join_req();
    req.supports_skip_assignment = true;
    let (reply, out) = g.join(req, "host-1-bbb".into(), 5_000);
    assert_eq!(reply, Reply::Wait("host-1-bbb".into()));
    let reasons = persists(&out);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    let answered = joins(&g.persisted(&reasons[0], Ok(()), 5_001));
    assert_eq!(answered.len(), 1);
    let r = &answered[0].1;
    assert!(r.skip_assignment, "{r:?}");
    assert_eq!((r.leader.as_str(), r.generation), ("host-1-bbb", 1));
    assert_eq!(
        r.members
            .iter()
            .map(|m| m.member_id.as_str())
            .collect::<Vec<_>>(),
        vec!["host-1-bbb"]
    );
    assert_eq!(g.state(), GroupState::Stable);
    match g
        .sync("host-1-bbb", Some("host-1"), 1, None, None, vec![], 5_002)
        .0
    {
        Reply::Now(r) => assert_eq!(r.error, None, "{r:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!((g.state(), g.generation()), (GroupState::Stable, 1));
}

/// A static member's replacement whose write fails is undone, as in Kafka: the new
/// member id is fenced (unknown without the instance id), and the old incarnation
/// keeps its id, its leadership and its assignment.
#[test]
fn a_static_replacement_whose_write_fails_leaves_the_old_incarnation_in_place() {
    let mut g = stable_group_of_one_static_member();
    let (_, out) = g.join(static_join_req(), "host-1-bbb".into(), 5_000);
    let reasons = persists(&out);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    let answered = joins(&g.persisted(&reasons[0], Err(GroupError::NotCoordinator), 5_001));
    assert_eq!(answered.len(), 1);
    assert!(answered[0].1.error.is_some(), "{answered:?}");
    assert_eq!(g.state(), GroupState::Stable);
    assert_eq!(g.leader(), Some("host-1-aaa"));
    assert_eq!(g.heartbeat("host-1-aaa", Some("host-1"), 1, 5_002), Ok(()));
    assert!(matches!(
        g.heartbeat("host-1-bbb", Some("host-1"), 1, 5_002),
        Err(GroupError::FencedInstanceId { .. })
    ));
    assert!(matches!(
        g.heartbeat("host-1-bbb", None, 1, 5_002),
        Err(GroupError::UnknownMemberId(_))
    ));
    match g
        .sync("host-1-aaa", Some("host-1"), 1, None, None, vec![], 5_003)
        .0
    {
        Reply::Now(r) => assert_eq!(r.assignment, Bytes::from_static(STATIC_ASSIGNMENT)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_static_member_absent_from_a_rebalance_keeps_its_place_until_its_session_ends() {
    let mut g = stable_group_of_one_static_member();
    assert_eq!(g.state(), GroupState::Stable);
    // A dynamic member joins while the static one is away (restarting).
    let _ = first_join(&mut g, "b", 100);
    assert_eq!(g.state(), GroupState::PreparingRebalance);
    let out = g.tick(100 + i64::from(REBALANCE_MS));
    assert_eq!(g.state(), GroupState::CompletingRebalance);
    assert!(
        g.members().contains_key("host-1-aaa"),
        "a static member is not dropped at the end of the join phase"
    );
    let leader_answer = joins(&out)
        .into_iter()
        .find(|(_, r)| !r.members.is_empty())
        .expect("the leader gets the members");
    assert_eq!(
        leader_answer.0, "b",
        "the absent static leader cannot lead: the member that rejoined does"
    );
    assert_eq!(g.leader(), Some("b"));
    assert_eq!(
        leader_answer.1.members.len(),
        2,
        "it assigns the absent member too"
    );
    // Its session, restarted at the end of the join phase, decides.
    let _ = g.tick(100 + i64::from(REBALANCE_MS) + STATIC_SESSION_MS + 1);
    assert!(!g.members().contains_key("host-1-aaa"));
}

#[test]
fn a_join_phase_nobody_rejoined_waits_for_its_absent_static_members() {
    let mut g = stable_group_of_one_static_member();
    let generation = g.generation();
    // A dynamic member joins and leaves again while the static one is away.
    let _ = first_join(&mut g, "b", 100);
    let _ = g.leave(&[("b".to_string(), None)], 200);
    assert_eq!(g.state(), GroupState::PreparingRebalance);
    let _ = g.tick(100 + i64::from(REBALANCE_MS));
    assert_eq!(
        g.state(),
        GroupState::PreparingRebalance,
        "no generation without a member to lead it"
    );
    assert_eq!(g.generation(), generation);
    // The static member's session ends: the group is empty.
    let _ = g.tick(STATIC_SESSION_MS + 2);
    assert!(g.members().is_empty());
    assert_eq!(g.state(), GroupState::Empty);
}

#[test]
fn a_member_id_that_never_comes_back_does_not_start_a_rebalance() {
    let mut g = stable_group_of(&["a"], 0);
    let generation = g.generation();
    let (reply, _) = g.join(join_req("", &["range"]), "ghost".into(), 10);
    assert!(matches!(reply, Reply::Now(r) if r.error == Some(GroupError::MemberIdRequired)));
    // "a" heartbeats; "ghost" never rejoins and its id lapses.
    for t in (1_000..=3 * i64::from(SESSION_MS)).step_by(1_000) {
        assert_eq!(g.heartbeat("a", None, generation, t), Ok(()));
        let _ = g.tick(t);
    }
    assert_eq!(g.state(), GroupState::Stable);
    assert_eq!(g.generation(), generation);
    // Nor does one that leaves before it joins.
    let (reply, _) = g.join(join_req("", &["range"]), "ghost-2".into(), 40_000);
    assert!(matches!(reply, Reply::Now(_)));
    let (results, _) = g.leave(&[("ghost-2".to_string(), None)], 40_001);
    assert_eq!(results, vec![Ok(())]);
    assert_eq!(g.state(), GroupState::Stable);
}

#[test]
fn a_restored_group_is_stable_in_its_stored_generation() {
    let g = stable_group_of(&["a", "b"], 0);
    let stored = g.to_stored();
    let mut restored = Group::new("g", LIMITS, 100);
    restored.restore(stored, 100);
    assert_eq!(restored.state(), GroupState::Stable);
    assert_eq!(restored.generation(), g.generation());
    assert_eq!(restored.leader(), g.leader());
    assert_eq!(restored.heartbeat("a", None, g.generation(), 101), Ok(()));
    // A follower that rejoins unchanged after a coordinator failover: no rebalance.
    let follower = if g.leader() == Some("a") { "b" } else { "a" };
    match restored
        .join(join_req(follower, &["range"]), "x".into(), 102)
        .0
    {
        Reply::Now(r) => assert_eq!((r.error, r.generation), (None, g.generation())),
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------------------------ simulation

/// A tiny deterministic generator (the tests print their seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Debug, PartialEq)]
enum ClientPhase {
    Out,
    Joining,
    Syncing { generation: i32 },
    Member { generation: i32 },
}

struct Client {
    id: Option<String>,
    phase: ClientPhase,
    parked_join: bool,
    parked_sync: bool,
    assignment: Vec<u32>,
    alive: bool,
}

const PARTITIONS: u32 = 12;

/// Round-robin assignment by sorted member id, as the leader computes it.
fn assign(members: &[String]) -> Vec<(String, Bytes)> {
    let mut sorted = members.to_vec();
    sorted.sort();
    sorted
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let parts: Vec<u8> = (0..PARTITIONS)
                .filter(|p| *p as usize % sorted.len() == i)
                .map(|p| p as u8)
                .collect();
            (m.clone(), Bytes::from(parts))
        })
        .collect()
}

fn run_simulation(seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut g = Group::new(
        "sim",
        GroupLimits {
            initial_rebalance_delay_ms: 500,
            ..LIMITS
        },
        0,
    );
    let mut clients: Vec<Client> = (0..5)
        .map(|_| Client {
            id: None,
            phase: ClientPhase::Out,
            parked_join: false,
            parked_sync: false,
            assignment: vec![],
            alive: true,
        })
        .collect();
    let mut pending_persists: Vec<PersistReason> = Vec::new();
    let mut next_id = 0u32;
    let mut now = 0i64;
    let mut last_generation = 0;
    let mut leader_members: Option<(i32, Vec<String>)> = None;
    for step in 0..4_000 {
        now += rng.below(400) as i64;
        let mut outputs = Vec::new();
        let c = rng.below(clients.len() as u64) as usize;
        match rng.below(10) {
            0 if !pending_persists.is_empty() => {
                let r = pending_persists.remove(0);
                let ok = rng.below(8) != 0;
                let result = if ok { Ok(()) } else { Err(GroupError::Timeout) };
                outputs.extend(g.persisted(&r, result, now));
            }
            1 => outputs.extend(g.tick(now)),
            2 if rng.below(6) == 0 => {
                // Crash: the client forgets everything; its parked requests are lost.
                let cl = &mut clients[c];
                cl.alive = false;
                cl.phase = ClientPhase::Out;
                cl.assignment.clear();
            }
            3 if rng.below(4) == 0 && clients[c].id.is_some() && clients[c].alive => {
                let id = clients[c].id.clone().unwrap();
                let (_, out) = g.leave(&[(id, None)], now);
                outputs.extend(out);
                let cl = &mut clients[c];
                cl.id = None;
                cl.phase = ClientPhase::Out;
                cl.assignment.clear();
            }
            _ => {
                let cl = &mut clients[c];
                if !cl.alive {
                    if rng.below(3) == 0 {
                        *cl = Client {
                            id: None,
                            phase: ClientPhase::Out,
                            parked_join: false,
                            parked_sync: false,
                            assignment: vec![],
                            alive: true,
                        };
                    }
                } else if cl.parked_join || cl.parked_sync {
                    // Waiting.
                } else {
                    match cl.phase.clone() {
                        ClientPhase::Out | ClientPhase::Joining => {
                            next_id += 1;
                            let req = join_req(cl.id.as_deref().unwrap_or(""), &["range"]);
                            let (reply, out) = g.join(req, format!("m{next_id}"), now);
                            outputs.extend(out);
                            match reply {
                                Reply::Now(r) => apply_join(cl, r),
                                Reply::Wait(id) => {
                                    cl.id = Some(id);
                                    cl.parked_join = true;
                                    cl.phase = ClientPhase::Joining;
                                }
                            }
                        }
                        ClientPhase::Syncing { generation } => {
                            let id = cl.id.clone().unwrap();
                            let assignments = match &leader_members {
                                Some((gen, members))
                                    if *gen == generation && g.leader() == Some(id.as_str()) =>
                                {
                                    assign(members)
                                }
                                _ => vec![],
                            };
                            let (reply, out) =
                                g.sync(&id, None, generation, None, None, assignments, now);
                            outputs.extend(out);
                            match reply {
                                Reply::Now(r) => apply_sync(cl, generation, r),
                                Reply::Wait(_) => cl.parked_sync = true,
                            }
                        }
                        ClientPhase::Member { generation } => {
                            let id = cl.id.clone().unwrap();
                            if let Err(e) = g.heartbeat(&id, None, generation, now) {
                                match e {
                                    GroupError::RebalanceInProgress => {
                                        cl.phase = ClientPhase::Joining
                                    }
                                    _ => {
                                        cl.id = None;
                                        cl.phase = ClientPhase::Out;
                                    }
                                }
                                cl.assignment.clear();
                            }
                        }
                    }
                }
            }
        }
        // Deliver outputs to whoever is parked.
        for o in outputs {
            match o {
                Output::Persist(r) => pending_persists.push(r),
                Output::Join(member, r) => {
                    if r.error.is_none() && !r.members.is_empty() {
                        leader_members = Some((
                            r.generation,
                            r.members.iter().map(|m| m.member_id.clone()).collect(),
                        ));
                    }
                    if let Some(cl) = clients
                        .iter_mut()
                        .find(|c| c.id.as_deref() == Some(&member) && c.parked_join)
                    {
                        cl.parked_join = false;
                        if cl.alive {
                            apply_join(cl, r);
                        }
                    }
                }
                Output::Sync(member, r) => {
                    if let Some(cl) = clients
                        .iter_mut()
                        .find(|c| c.id.as_deref() == Some(&member) && c.parked_sync)
                    {
                        cl.parked_sync = false;
                        if cl.alive {
                            let generation = match cl.phase {
                                ClientPhase::Syncing { generation } => generation,
                                _ => -1,
                            };
                            apply_sync(cl, generation, r);
                        }
                    }
                }
            }
        }
        // Invariants.
        assert!(
            g.generation() >= last_generation,
            "seed {seed} step {step}: generation went back"
        );
        last_generation = g.generation();
        if let Some(leader) = g.leader() {
            assert!(
                g.members().contains_key(leader),
                "seed {seed} step {step}: leader {leader} is not a member"
            );
        }
        // No partition owned by two clients that both believe they are members of
        // the group's current generation.
        let mut owner = vec![None; PARTITIONS as usize];
        for (i, cl) in clients.iter().enumerate() {
            if let ClientPhase::Member { generation } = cl.phase {
                if generation != g.generation() || !cl.alive {
                    continue;
                }
                for p in &cl.assignment {
                    if let Some(other) = owner[*p as usize] {
                        panic!("seed {seed} step {step}: partition {p} owned by clients {other} and {i} in generation {generation}");
                    }
                    owner[*p as usize] = Some(i);
                }
            }
        }
    }
    assert!(
        last_generation > 3,
        "seed {seed}: the simulation barely rebalanced ({last_generation})"
    );
}

fn apply_join(cl: &mut Client, r: JoinResult) {
    match r.error {
        None => {
            cl.id = Some(r.member_id);
            cl.phase = ClientPhase::Syncing {
                generation: r.generation,
            };
        }
        Some(GroupError::MemberIdRequired) => {
            cl.id = Some(r.member_id);
            cl.phase = ClientPhase::Joining;
        }
        Some(GroupError::RebalanceInProgress) => cl.phase = ClientPhase::Joining,
        Some(_) => {
            cl.id = None;
            cl.phase = ClientPhase::Out;
        }
    }
}

fn apply_sync(cl: &mut Client, generation: i32, r: SyncResult) {
    match r.error {
        None => {
            cl.phase = ClientPhase::Member { generation };
            cl.assignment = r.assignment.iter().map(|b| u32::from(*b)).collect();
        }
        Some(GroupError::RebalanceInProgress) | Some(GroupError::IllegalGeneration { .. }) => {
            cl.phase = ClientPhase::Joining;
            cl.assignment.clear();
        }
        Some(_) => {
            cl.id = None;
            cl.phase = ClientPhase::Out;
            cl.assignment.clear();
        }
    }
}

#[test]
fn simulated_clients_never_own_a_partition_twice_in_one_generation() {
    let seeds: Vec<u64> = match std::env::var("KEEL_GROUP_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("KEEL_GROUP_SIM_SEED must be a number")],
        Err(_) => (1..=40).collect(),
    };
    for seed in seeds {
        println!("group simulation seed {seed}");
        run_simulation(seed);
    }
}
