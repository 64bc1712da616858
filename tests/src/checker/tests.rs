//! The checker's own tests: hand-made histories with exactly one planted anomaly,
//! and seeded random histories of a simulated log.

use std::collections::BTreeMap;

use std::time::Duration;

use super::availability::Recovery;
use super::history::{AssignedPartition, Event, EventType, History, NemesisAction, Op, Record};
use super::queue::{check, check_with, AnomalyKind, CheckOptions, Report};

const FINAL: u64 = 99;
/// The recovery bound of every check here.
const BOUND: Duration = Duration::from_secs(30);
const OPTIONS: CheckOptions = CheckOptions {
    recovery_bound: Some(BOUND),
};

/// Builds histories with a clock that advances by one microsecond per event.
#[derive(Default)]
struct Builder {
    history: History,
    time_ns: u64,
}

impl Builder {
    fn tick(&mut self) -> u64 {
        self.time_ns += 1_000;
        self.time_ns
    }

    fn push(&mut self, event: Event) {
        self.history.push(event);
    }

    fn sent(&mut self, process: u64, tp: (&str, i32), value: u64, offset: i64) {
        let t = self.tick();
        self.push(Event::send_invoke(process, t, tp.0, tp.1, value));
        let t = self.tick();
        self.push(Event::send_ok(process, t, tp.0, tp.1, value, offset));
    }

    fn sent_info(&mut self, process: u64, tp: (&str, i32), value: u64) {
        let t = self.tick();
        self.push(Event::send_invoke(process, t, tp.0, tp.1, value));
        let t = self.tick();
        self.push(Event::send_info(process, t, tp.0, tp.1, value));
    }

    fn sent_fail(&mut self, process: u64, tp: (&str, i32), value: u64) {
        let t = self.tick();
        self.push(Event::send_invoke(process, t, tp.0, tp.1, value));
        let t = self.tick();
        self.push(Event::send_fail(process, t, tp.0, tp.1, value));
    }

    fn assign(&mut self, process: u64, tp: (&str, i32), offset: i64) {
        let t = self.tick();
        self.push(Event::assign(
            process,
            t,
            vec![AssignedPartition::new(tp.0, tp.1, offset)],
        ));
    }

    /// A rebalance of `group` handing `tp` to `process`.
    fn group_assign(&mut self, process: u64, group: &str, tp: (&str, i32)) {
        let t = self.tick();
        self.push(Event::group_assign(
            process,
            t,
            group,
            vec![AssignedPartition::new(tp.0, tp.1, -1)],
        ));
    }

    /// A rebalance of `group` taking `tp` from `process`.
    fn revoke(&mut self, process: u64, group: &str, tp: (&str, i32)) {
        let t = self.tick();
        self.push(Event::revoke(
            process,
            t,
            group,
            vec![AssignedPartition::new(tp.0, tp.1, -1)],
        ));
    }

    /// A commit of `offset` for `tp` by `process`, invoked and completed as `outcome`.
    fn commit(
        &mut self,
        process: u64,
        group: &str,
        tp: (&str, i32),
        offset: i64,
        outcome: EventType,
    ) {
        for event_type in [EventType::Invoke, outcome] {
            let t = self.tick();
            self.push(Event::commit(
                process,
                t,
                event_type,
                group,
                vec![AssignedPartition::new(tp.0, tp.1, offset)],
            ));
        }
    }

    /// One poll returning `(offset, value)` records of `tp`.
    fn read(&mut self, process: u64, tp: (&str, i32), records: &[(i64, u64)], final_read: bool) {
        let t = self.tick();
        self.push(Event::poll_invoke(process, t, final_read));
        let records = records
            .iter()
            .map(|&(offset, value)| Record::new(tp.0, tp.1, offset, value))
            .collect();
        let t = self.tick();
        self.push(Event::poll_ok(process, t, records, final_read));
    }

    /// The final phase: seek `tp` to the beginning and read `records`.
    fn final_read(&mut self, tp: (&str, i32), records: &[(i64, u64)]) {
        self.assign(FINAL, tp, 0);
        self.read(FINAL, tp, records, true);
    }

    /// Moves the clock forward by `d`.
    fn wait(&mut self, d: Duration) {
        self.time_ns += d.as_nanos() as u64;
    }

    fn nemesis(&mut self, action: NemesisAction, fault: &str) {
        let t = self.tick();
        self.push(Event::nemesis(t, action, fault, "planted"));
    }

    fn check(&self) -> Report {
        check_with(&self.history, &OPTIONS)
    }
}

const T0: (&str, i32) = ("t", 0);
const T1: (&str, i32) = ("t", 1);

/// Asserts the report holds exactly `count` anomalies of `kind` and no other.
fn assert_only(report: &Report, kind: AnomalyKind, count: usize) {
    for k in AnomalyKind::ALL {
        let expected = if k == kind { count } else { 0 };
        assert_eq!(
            report.count(k),
            expected,
            "{} count wrong in report:\n{report}",
            k.name()
        );
    }
    assert_eq!(report.anomaly_count(), count, "{report}");
}

fn assert_clean(report: &Report) {
    assert!(report.is_clean(), "expected a clean report:\n{report}");
    assert_eq!(report.anomaly_count(), 0);
}

#[test]
fn clean_history_passes_and_report_ends_with_anomaly_count() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent(2, T0, 2, 1);
    b.sent(1, T1, 3, 0);
    b.assign(10, T0, -1);
    b.read(10, T0, &[(0, 1)], false);
    b.read(10, T0, &[(1, 2)], false);
    b.final_read(T0, &[(0, 1), (1, 2)]);
    b.final_read(T1, &[(0, 3)]);
    let report = b.check();
    assert_clean(&report);
    assert_eq!(report.sends.ok, 3);
    assert_eq!(report.final_read_polls, 2);
    assert_eq!(report.final_read_values, 3);
    let text = report.to_string();
    assert_eq!(text.lines().last(), Some("anomalies: 0"), "{text}");
}

#[test]
fn acked_write_missing_from_final_read_is_lost() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent(1, T0, 2, 1);
    b.final_read(T0, &[(0, 1)]);
    let report = b.check();
    assert_only(&report, AnomalyKind::LostWrite, 1);
    let text = report.to_string();
    assert!(text.contains("value 2 acked at t/0:1"), "{text}");
    assert_eq!(text.lines().last(), Some("anomalies: 1"), "{text}");
}

#[test]
fn acks_without_an_offset_are_checked_for_loss_but_not_for_position() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent(1, T0, 2, -1);
    b.sent(1, T0, 3, -1);
    b.final_read(T0, &[(0, 1), (1, 2)]);
    let report = b.check();
    assert_only(&report, AnomalyKind::LostWrite, 1);
    assert_eq!(report.acks_without_offset, 2);
    assert!(
        report.to_string().contains("value 3 acked at t/0:-1"),
        "{report}"
    );
}

#[test]
fn acknowledged_value_read_again_at_a_second_offset_is_duplicate() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent(1, T0, 2, 1);
    b.final_read(T0, &[(0, 1), (1, 2), (2, 1)]);
    assert_only(&b.check(), AnomalyKind::Duplicate, 1);
}

#[test]
fn two_readers_seeing_different_values_at_one_offset_is_inconsistent() {
    let mut b = Builder::default();
    b.sent_info(1, T0, 1);
    b.sent_info(2, T0, 2);
    b.read(10, T0, &[(0, 1)], false);
    b.final_read(T0, &[(0, 2)]);
    assert_only(&b.check(), AnomalyKind::InconsistentOffset, 1);
}

#[test]
fn read_disagreeing_with_an_ack_is_inconsistent() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 5);
    b.sent_info(2, T0, 2);
    b.read(10, T0, &[(5, 2)], false);
    b.assign(FINAL, T0, -1);
    b.read(FINAL, T0, &[(5, 1)], true);
    let report = b.check();
    assert_only(&report, AnomalyKind::InconsistentOffset, 1);
    assert!(
        report.to_string().contains("t/0:5 holds different values"),
        "{report}"
    );
}

#[test]
fn offset_going_backwards_without_assign_is_nonmonotonic() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent(1, T0, 2, 1);
    b.sent(1, T0, 3, 2);
    b.read(10, T0, &[(0, 1), (1, 2)], false);
    b.read(10, T0, &[(1, 2), (2, 3)], false);
    b.final_read(T0, &[(0, 1), (1, 2), (2, 3)]);
    assert_only(&b.check(), AnomalyKind::NonmonotonicPoll, 1);
}

#[test]
fn jump_over_an_offset_someone_read_is_skipped_poll() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent(1, T0, 2, 1);
    b.sent(1, T0, 3, 2);
    b.read(10, T0, &[(0, 1)], false);
    b.read(10, T0, &[(2, 3)], false);
    b.final_read(T0, &[(0, 1), (1, 2), (2, 3)]);
    let report = b.check();
    assert_only(&report, AnomalyKind::SkippedPoll, 1);
    assert!(
        report.to_string().contains("skipping records at [1]"),
        "{report}"
    );
}

#[test]
fn jump_over_an_offset_nobody_ever_read_is_fine() {
    // Offset 1 is a control record (e.g. a transaction marker): no reader sees it.
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent(1, T0, 2, 2);
    b.read(10, T0, &[(0, 1)], false);
    b.read(10, T0, &[(2, 2)], false);
    b.final_read(T0, &[(0, 1), (2, 2)]);
    assert_clean(&b.check());
}

#[test]
fn info_or_pending_send_absent_from_final_read_is_not_lost() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent_info(1, T0, 2);
    let t = b.tick();
    b.push(Event::send_invoke(2, t, "t", 0, 3));
    b.final_read(T0, &[(0, 1)]);
    let report = b.check();
    assert_clean(&report);
    assert_eq!(report.sends.info, 1);
    assert_eq!(report.sends.pending(), 1);
}

#[test]
fn info_send_present_in_final_read_is_fine() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent_info(1, T0, 2);
    b.final_read(T0, &[(0, 1), (1, 2)]);
    assert_clean(&b.check());
}

#[test]
fn failed_send_that_was_read_is_flagged() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent_fail(1, T0, 2);
    b.final_read(T0, &[(0, 1), (1, 2)]);
    let report = b.check();
    assert_only(&report, AnomalyKind::FailedWriteRead, 1);
    assert_eq!(report.sends.fail, 1);
}

#[test]
fn failed_send_never_read_is_fine() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent_fail(1, T0, 2);
    b.final_read(T0, &[(0, 1)]);
    assert_clean(&b.check());
}

#[test]
fn read_of_a_value_never_sent_is_unknown_value() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.final_read(T0, &[(0, 1), (1, 777)]);
    assert_only(&b.check(), AnomalyKind::UnknownValue, 1);
}

#[test]
fn assign_resets_monotonicity_and_skip_expectations() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent(1, T0, 2, 1);
    b.sent(1, T0, 3, 2);
    b.read(10, T0, &[(0, 1), (1, 2), (2, 3)], false);
    b.assign(10, T0, 0);
    b.read(10, T0, &[(0, 1), (1, 2)], false);
    b.assign(10, T0, -1);
    b.read(10, T0, &[(2, 3)], false);
    b.assign(10, T0, -1);
    b.read(10, T0, &[(0, 1)], false);
    b.final_read(T0, &[(0, 1), (1, 2), (2, 3)]);
    assert_clean(&b.check());
}

#[test]
fn reading_before_the_seek_position_is_nonmonotonic() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent(1, T0, 2, 1);
    b.assign(10, T0, 1);
    b.read(10, T0, &[(0, 1)], false);
    b.final_read(T0, &[(0, 1), (1, 2)]);
    assert_only(&b.check(), AnomalyKind::NonmonotonicPoll, 1);
}

#[test]
fn assign_of_another_partition_does_not_reset_this_one() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent(1, T0, 2, 1);
    b.read(10, T0, &[(0, 1), (1, 2)], false);
    b.assign(10, T1, 0);
    b.read(10, T0, &[(0, 1)], false);
    b.final_read(T0, &[(0, 1), (1, 2)]);
    assert_only(&b.check(), AnomalyKind::NonmonotonicPoll, 1);
}

/// Five records in T0 read by member 10 of group g, which commits `committed` and
/// loses the partition to member 11.
fn handed_over(committed: i64, outcome: EventType) -> Builder {
    let mut b = Builder::default();
    for v in 0..5 {
        b.sent(1, T0, v + 1, v as i64);
    }
    b.group_assign(10, "g", T0);
    b.read(10, T0, &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)], false);
    b.commit(10, "g", T0, committed, outcome);
    b.revoke(10, "g", T0);
    b.group_assign(11, "g", T0);
    b
}

const FIVE: [(i64, u64); 5] = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)];

#[test]
fn a_new_member_starting_at_the_committed_offset_or_below_an_uncertain_one_is_fine() {
    // Re-reading what the previous owner read but did not commit is a rebalance,
    // not a nonmonotonic poll.
    let mut b = handed_over(3, EventType::Ok);
    b.read(11, T0, &[(3, 4), (4, 5)], false);
    b.final_read(T0, &FIVE);
    assert_clean(&b.check());
    // A commit of unknown outcome may or may not have been applied.
    let mut b = handed_over(5, EventType::Info);
    b.read(11, T0, &[(2, 3), (3, 4)], false);
    b.final_read(T0, &FIVE);
    assert_clean(&b.check());
}

#[test]
fn a_new_member_starting_below_an_acknowledged_commit_is_lost_commit() {
    let mut b = handed_over(4, EventType::Ok);
    b.read(11, T0, &[(2, 3), (3, 4), (4, 5)], false);
    b.final_read(T0, &FIVE);
    let report = b.check();
    assert_only(&report, AnomalyKind::LostCommit, 1);
    assert!(
        report.to_string().contains("started at 2 below offset 4"),
        "{report}"
    );
}

#[test]
fn the_last_acknowledged_commit_not_the_highest_is_the_committed_offset() {
    // A client may commit a lower offset again; the coordinator keeps the last one.
    let mut b = handed_over(4, EventType::Ok);
    b.revoke(11, "g", T0);
    b.group_assign(10, "g", T0);
    b.commit(10, "g", T0, 2, EventType::Ok);
    b.revoke(10, "g", T0);
    b.group_assign(11, "g", T0);
    b.read(11, T0, &[(2, 3), (3, 4), (4, 5)], false);
    b.final_read(T0, &FIVE);
    assert_clean(&b.check());
    // After a commit of unknown outcome the committed offset is not known.
    let mut b = handed_over(4, EventType::Ok);
    b.commit(10, "g", T0, 1, EventType::Info);
    b.revoke(11, "g", T0);
    b.group_assign(12, "g", T0);
    b.read(12, T0, &[(1, 2)], false);
    b.final_read(T0, &FIVE);
    assert_clean(&b.check());
}

#[test]
fn a_new_member_starting_past_every_commit_skips() {
    let mut b = handed_over(2, EventType::Ok);
    b.read(11, T0, &[(4, 5)], false);
    b.final_read(T0, &FIVE);
    assert_only(&b.check(), AnomalyKind::SkippedPoll, 1);
    // With no commit at all, the member starts at the log start.
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent(1, T0, 2, 1);
    b.read(12, T0, &[(0, 1)], false);
    b.group_assign(11, "g", T0);
    b.read(11, T0, &[(1, 2)], false);
    b.final_read(T0, &[(0, 1), (1, 2)]);
    assert_only(&b.check(), AnomalyKind::SkippedPoll, 1);
}

#[test]
fn within_one_group_assignment_polls_must_still_rise_without_gaps() {
    let mut b = handed_over(3, EventType::Ok);
    b.read(11, T0, &[(3, 4), (4, 5)], false);
    b.read(11, T0, &[(3, 4)], false);
    b.final_read(T0, &FIVE);
    assert_only(&b.check(), AnomalyKind::NonmonotonicPoll, 1);
    let mut b = handed_over(1, EventType::Ok);
    b.read(11, T0, &[(1, 2), (3, 4)], false);
    b.final_read(T0, &FIVE);
    assert_only(&b.check(), AnomalyKind::SkippedPoll, 1);
}

#[test]
fn records_after_a_revoke_are_not_checked_against_the_old_position() {
    // Member 10 loses T0, gets it back, and starts at the committed offset again.
    let mut b = handed_over(3, EventType::Ok);
    b.revoke(11, "g", T0);
    b.group_assign(10, "g", T0);
    b.read(10, T0, &[(3, 4)], false);
    b.final_read(T0, &FIVE);
    assert_clean(&b.check());
}

#[test]
fn jsonl_round_trips_every_event_kind() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent_info(1, T1, 2);
    b.sent_fail(2, T0, 3);
    b.assign(10, T0, -1);
    b.read(10, T0, &[(0, 1)], false);
    b.group_assign(11, "g", T0);
    b.commit(11, "g", T0, 1, EventType::Fail);
    b.commit(11, "g", T0, 1, EventType::Ok);
    b.revoke(11, "g", T0);
    let t = b.tick();
    b.push(Event {
        process: 10,
        event_type: EventType::Info,
        time_ns: t,
        op: Op::Poll {
            records: Vec::new(),
            final_read: false,
        },
    });
    b.final_read(T0, &[(0, 1)]);
    let text = b.history.to_jsonl();
    assert_eq!(text.lines().count(), b.history.events.len());
    let parsed = History::parse_jsonl(&text).expect("own output parses");
    assert_eq!(parsed, b.history);
    assert_eq!(parsed.to_jsonl(), text);
}

#[test]
fn jsonl_parses_the_documented_format() {
    let text = r#"
{"process": 1, "type": "invoke", "f": "send", "time_ns": 10, "value": {"topic": "t", "partition": 0, "value": 7}}
{"process": 1, "type": "ok", "f": "send", "time_ns": 20, "value": {"topic": "t", "partition": 0, "value": 7, "offset": 3}}
{"process": 5, "type": "ok", "f": "assign", "time_ns": 25, "value": {"partitions": [{"topic": "t", "partition": 0, "offset": -1}]}}
{"process": 5, "type": "invoke", "f": "poll", "time_ns": 30, "value": null, "final_read": true}
{"process": 5, "type": "ok", "f": "poll", "time_ns": 40, "value": [{"topic": "t", "partition": 0, "offset": 3, "value": 7}], "final_read": true}
"#;
    let history = History::parse_jsonl(text).expect("documented format parses");
    assert_eq!(history.events.len(), 5);
    assert_eq!(history.events[1], Event::send_ok(1, 20, "t", 0, 7, 3),);
    assert_eq!(
        history.events[4],
        Event::poll_ok(5, 40, vec![Record::new("t", 0, 3, 7)], true),
    );
    assert_clean(&check(&history));
}

#[test]
fn jsonl_errors_name_the_line() {
    let good = r#"{"process": 1, "type": "invoke", "f": "send", "time_ns": 10, "value": {"topic": "t", "partition": 0, "value": 7}}"#;
    let ok_without_offset = r#"{"process": 1, "type": "ok", "f": "send", "time_ns": 20, "value": {"topic": "t", "partition": 0, "value": 7}}"#;
    let err = History::parse_jsonl(&format!("{good}\n{ok_without_offset}\n")).unwrap_err();
    assert!(err.starts_with("line 2:"), "{err}");
    let err = History::parse_jsonl("{not json").unwrap_err();
    assert!(err.starts_with("line 1:"), "{err}");
    let bad_type = good.replace("invoke", "maybe");
    let err = History::parse_jsonl(&bad_type).unwrap_err();
    assert!(err.contains("unknown type"), "{err}");
}

// ---- randomized: a simulated log, a clean history, one planted anomaly ----

/// A tiny deterministic PRNG (xorshift64*) so the test replays from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
}

type Tp = (String, i32);
/// Per partition, what sits at each offset: a value, or a control record (None).
type Logs = BTreeMap<Tp, Vec<Option<u64>>>;

const RANDOM_STEPS: usize = 600;
const RANDOM_SEEDS: u64 = 25;
const PRODUCERS: u64 = 4;
const CONSUMERS: u64 = 3;
const CONSUMER_BASE: u64 = 10;
const MAX_RECORDS_PER_POLL: usize = 6;
const PLANT_PROCESS: u64 = 500;

fn all_tps() -> Vec<Tp> {
    let mut tps = Vec::new();
    for topic in ["a", "b"] {
        for partition in 0..2 {
            tps.push((topic.to_string(), partition));
        }
    }
    tps
}

/// A history of producers and consumers over a correct simulated log, with fails,
/// infos, pending sends, control records, seeks and a final read.
fn clean_random_history(rng: &mut Rng) -> (Builder, Logs, u64) {
    let tps = all_tps();
    let mut logs: Logs = tps.iter().map(|tp| (tp.clone(), Vec::new())).collect();
    let mut b = Builder::default();
    let mut next_value = 1u64;
    let mut positions: BTreeMap<(u64, Tp), usize> = BTreeMap::new();
    for c in 0..CONSUMERS {
        let process = CONSUMER_BASE + c;
        let t = b.tick();
        let parts = tps
            .iter()
            .map(|(t, p)| AssignedPartition::new(t, *p, 0))
            .collect();
        b.push(Event::assign(process, t, parts));
        for tp in &tps {
            positions.insert((process, tp.clone()), 0);
        }
    }
    for _ in 0..RANDOM_STEPS {
        let roll = rng.below(100);
        if roll < 50 {
            let process = rng.below(PRODUCERS as usize) as u64;
            let tp = &tps[rng.below(tps.len())];
            let value = next_value;
            next_value += 1;
            let log = logs.get_mut(tp).expect("known partition");
            if rng.percent(10) {
                log.push(None);
            }
            let t = b.tick();
            b.push(Event::send_invoke(process, t, &tp.0, tp.1, value));
            let t = b.tick();
            let outcome = rng.below(100);
            if outcome < 80 {
                log.push(Some(value));
                let offset = (log.len() - 1) as i64;
                b.push(Event::send_ok(process, t, &tp.0, tp.1, value, offset));
            } else if outcome < 88 {
                b.push(Event::send_fail(process, t, &tp.0, tp.1, value));
            } else {
                if rng.percent(50) {
                    log.push(Some(value));
                }
                if outcome < 96 {
                    b.push(Event::send_info(process, t, &tp.0, tp.1, value));
                }
            }
        } else if roll < 90 {
            let process = CONSUMER_BASE + rng.below(CONSUMERS as usize) as u64;
            let t = b.tick();
            b.push(Event::poll_invoke(process, t, false));
            let t = b.tick();
            if rng.percent(10) {
                b.push(Event {
                    process,
                    event_type: EventType::Fail,
                    time_ns: t,
                    op: Op::Poll {
                        records: Vec::new(),
                        final_read: false,
                    },
                });
                continue;
            }
            let mut records = Vec::new();
            let limit = 1 + rng.below(MAX_RECORDS_PER_POLL);
            // Records from up to two partitions, interleaved per partition in order.
            for _ in 0..2 {
                let tp = &tps[rng.below(tps.len())];
                let position = positions.get_mut(&(process, tp.clone())).expect("assigned");
                let log = &logs[tp];
                while *position < log.len() && records.len() < limit {
                    if let Some(value) = log[*position] {
                        records.push(Record::new(&tp.0, tp.1, *position as i64, value));
                    }
                    *position += 1;
                }
            }
            b.push(Event::poll_ok(process, t, records, false));
        } else {
            let process = CONSUMER_BASE + rng.below(CONSUMERS as usize) as u64;
            let tp = &tps[rng.below(tps.len())];
            let new_position = rng.below(logs[tp].len() + 1);
            positions.insert((process, tp.clone()), new_position);
            let recorded = if rng.percent(30) {
                -1
            } else {
                new_position as i64
            };
            b.assign(process, (&tp.0, tp.1), recorded);
        }
    }
    for (tp, log) in &logs {
        b.assign(FINAL, (&tp.0, tp.1), 0);
        let records: Vec<(i64, u64)> = log
            .iter()
            .enumerate()
            .filter_map(|(offset, v)| v.map(|v| (offset as i64, v)))
            .collect();
        for chunk in records.chunks(7) {
            b.read(FINAL, (&tp.0, tp.1), chunk, true);
        }
    }
    (b, logs, next_value)
}

/// (offset, value) of every record in `tp`'s log.
fn records_of(logs: &Logs, tp: &Tp) -> Vec<(i64, u64)> {
    logs[tp]
        .iter()
        .enumerate()
        .filter_map(|(offset, v)| v.map(|v| (offset as i64, v)))
        .collect()
}

/// A partition holding at least `n` records.
fn tp_with_records(rng: &mut Rng, logs: &Logs, n: usize) -> Tp {
    let candidates: Vec<&Tp> = logs
        .keys()
        .filter(|tp| records_of(logs, tp).len() >= n)
        .collect();
    assert!(
        !candidates.is_empty(),
        "simulation produced no partition with {n} records"
    );
    candidates[rng.below(candidates.len())].clone()
}

/// Plants one anomaly of `kind` into a clean history.
fn plant(kind: AnomalyKind, rng: &mut Rng, b: &mut Builder, logs: &Logs, fresh_value: u64) {
    match kind {
        AnomalyKind::LostWrite => {
            let tp = tp_with_records(rng, logs, 0);
            let offset = (logs[&tp].len() + 5) as i64;
            b.sent(PLANT_PROCESS, (&tp.0, tp.1), fresh_value, offset);
        }
        AnomalyKind::FailedWriteRead => {
            let acked: Vec<usize> = b
                .history
                .events
                .iter()
                .enumerate()
                .filter(|(_, e)| e.event_type == EventType::Ok && matches!(e.op, Op::Send(_)))
                .map(|(i, _)| i)
                .collect();
            let index = acked[rng.below(acked.len())];
            let event = &mut b.history.events[index];
            event.event_type = EventType::Fail;
            if let Op::Send(send) = &mut event.op {
                send.offset = None;
            }
        }
        AnomalyKind::UnknownValue => {
            let tp = tp_with_records(rng, logs, 0);
            let offset = (logs[&tp].len() + 7) as i64;
            b.read(
                PLANT_PROCESS,
                (&tp.0, tp.1),
                &[(offset, fresh_value)],
                false,
            );
        }
        AnomalyKind::Duplicate => {
            let tp = tp_with_records(rng, logs, 1);
            let records = records_of(logs, &tp);
            let (_, value) = records[rng.below(records.len())];
            let offset = (logs[&tp].len() + 3) as i64;
            b.read(PLANT_PROCESS, (&tp.0, tp.1), &[(offset, value)], false);
        }
        AnomalyKind::InconsistentOffset => {
            let tp = tp_with_records(rng, logs, 1);
            let records = records_of(logs, &tp);
            let (offset, _) = records[rng.below(records.len())];
            b.sent_info(PLANT_PROCESS, (&tp.0, tp.1), fresh_value);
            b.read(
                PLANT_PROCESS + 1,
                (&tp.0, tp.1),
                &[(offset, fresh_value)],
                false,
            );
        }
        AnomalyKind::NonmonotonicPoll => {
            let tp = tp_with_records(rng, logs, 2);
            let records = records_of(logs, &tp);
            let first = rng.below(records.len() - 1);
            let second = first + 1 + rng.below(records.len() - first - 1);
            b.read(
                PLANT_PROCESS,
                (&tp.0, tp.1),
                &[records[second], records[first]],
                false,
            );
        }
        AnomalyKind::LostCommit => {
            // A commit acknowledged at the log's end, then a member handed the
            // partition that starts at the first record again.
            let tp = tp_with_records(rng, logs, 1);
            let records = records_of(logs, &tp);
            let end = records[records.len() - 1].0 + 1;
            b.commit(PLANT_PROCESS, "planted", (&tp.0, tp.1), end, EventType::Ok);
            b.group_assign(PLANT_PROCESS + 1, "planted", (&tp.0, tp.1));
            b.read(PLANT_PROCESS + 1, (&tp.0, tp.1), &[records[0]], false);
        }
        AnomalyKind::SlowRecovery => {
            // A fault at the end after which nothing is acknowledged for longer than
            // the bound: the only send after the heal has an unknown outcome.
            let tp = tp_with_records(rng, logs, 0);
            b.nemesis(NemesisAction::Start, "kill");
            b.nemesis(NemesisAction::Heal, "kill");
            b.wait(BOUND + Duration::from_secs(1));
            b.sent_info(PLANT_PROCESS, (&tp.0, tp.1), fresh_value);
        }
        AnomalyKind::SkippedPoll => {
            let tp = tp_with_records(rng, logs, 3);
            let records = records_of(logs, &tp);
            let first = rng.below(records.len() - 2);
            let third = first + 2 + rng.below(records.len() - first - 2);
            b.read(
                PLANT_PROCESS,
                (&tp.0, tp.1),
                &[records[first], records[third]],
                false,
            );
        }
    }
}

#[test]
fn random_clean_histories_pass_and_each_planted_anomaly_is_found_alone() {
    for seed in 1..=RANDOM_SEEDS {
        let mut rng = Rng::new(seed);
        let (clean, logs, fresh_value) = clean_random_history(&mut rng);
        let report = clean.check();
        assert!(
            report.is_clean(),
            "seed {seed}: clean history flagged:\n{report}"
        );
        assert!(
            report.sends.ok > 0 && report.sends.fail > 0 && report.sends.info > 0,
            "seed {seed}: {report}"
        );
        assert!(report.final_read_values > 0, "seed {seed}");
        // The history file format carries everything the checker needs.
        let reparsed = History::parse_jsonl(&clean.history.to_jsonl()).expect("round trip");
        assert_eq!(check_with(&reparsed, &OPTIONS), report, "seed {seed}");

        for kind in AnomalyKind::ALL {
            let mut planted = Builder {
                history: clean.history.clone(),
                time_ns: clean.time_ns,
            };
            plant(kind, &mut rng, &mut planted, &logs, fresh_value);
            let report = planted.check();
            for k in AnomalyKind::ALL {
                let expected = usize::from(k == kind);
                assert_eq!(
                    report.count(k),
                    expected,
                    "seed {seed}, planted {}: {} count wrong:\n{report}",
                    kind.name(),
                    k.name()
                );
            }
            assert_eq!(
                report.to_string().lines().last(),
                Some("anomalies: 1"),
                "seed {seed}"
            );
        }
    }
}

/// A clean history with one fault: sends to both partitions before, none acknowledged
/// during, and acknowledgements resuming `t0_after` and `t1_after` after the heal.
fn one_fault(t0_after: Duration, t1_after: Duration) -> Builder {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.sent(1, T1, 2, 0);
    b.nemesis(NemesisAction::Start, "partition");
    b.sent_info(1, T0, 3);
    b.wait(Duration::from_secs(5));
    b.nemesis(NemesisAction::Heal, "partition");
    let heal = b.time_ns;
    let (first, second) = if t0_after <= t1_after {
        ((T0, t0_after, 4), (T1, t1_after, 5))
    } else {
        ((T1, t1_after, 5), (T0, t0_after, 4))
    };
    for (tp, after, value) in [first, second] {
        let t = b.tick();
        b.push(Event::send_invoke(2, t, tp.0, tp.1, value));
        b.time_ns = heal + after.as_nanos() as u64;
        let t = b.tick();
        b.push(Event::send_ok(2, t, tp.0, tp.1, value, 1));
    }
    b.final_read(T0, &[(0, 1), (1, 4)]);
    b.final_read(T1, &[(0, 2), (1, 5)]);
    b
}

#[test]
fn recovery_is_the_slowest_partitions_first_ack_after_the_heal() {
    let b = one_fault(Duration::from_secs(2), Duration::from_secs(7));
    let report = b.check();
    assert_clean(&report);
    let windows = &report.availability.windows;
    assert_eq!(windows.len(), 1);
    let w = &windows[0];
    assert_eq!(w.fault, "partition");
    assert!(w.healed);
    assert_eq!((w.sends.invoked, w.sends.ok, w.sends.info), (1, 0, 1));
    assert_eq!(w.sends.ok_share(), Some(0.0));
    match &w.recovery {
        Recovery::Recovered { after, slowest } => {
            assert!(
                *after >= Duration::from_secs(7) && *after < Duration::from_secs(8),
                "{after:?}"
            );
            assert_eq!(slowest, &("t".to_string(), 1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(report.availability.baseline.invoked, 4);
    let text = report.to_string();
    assert!(text.contains("fault 1 partition at"), "{text}");
    assert!(text.contains("slowest t/1"), "{text}");
}

#[test]
fn partition_unwritable_longer_than_the_bound_after_the_heal_is_slow_recovery() {
    let b = one_fault(Duration::from_secs(1), BOUND + Duration::from_secs(5));
    let report = b.check();
    assert_only(&report, AnomalyKind::SlowRecovery, 1);
    let text = report.to_string();
    assert!(text.contains("t/1 acknowledged no write for 35"), "{text}");
    // Without a bound the same history passes.
    assert!(check(&b.history).is_clean());
}

#[test]
fn recovery_cut_short_by_the_next_fault_is_undetermined_not_an_anomaly() {
    let mut b = Builder::default();
    b.sent(1, T0, 1, 0);
    b.nemesis(NemesisAction::Start, "kill");
    b.nemesis(NemesisAction::Heal, "kill");
    b.wait(Duration::from_secs(3));
    b.nemesis(NemesisAction::Start, "pause");
    b.wait(Duration::from_secs(3));
    b.nemesis(NemesisAction::Heal, "pause");
    b.sent(1, T0, 2, 1);
    b.final_read(T0, &[(0, 1), (1, 2)]);
    let report = b.check();
    assert_clean(&report);
    let windows = &report.availability.windows;
    assert!(
        matches!(&windows[0].recovery, Recovery::Undetermined { unrecovered, .. } if unrecovered.len() == 1),
        "{:?}",
        windows[0]
    );
    assert!(matches!(windows[1].recovery, Recovery::Recovered { .. }));
}

#[test]
fn nemesis_events_round_trip_and_do_not_disturb_the_queue_checks() {
    let b = one_fault(Duration::from_secs(1), Duration::from_secs(1));
    let text = b.history.to_jsonl();
    assert!(
        text.contains(r#""f":"nemesis""#) && text.contains(r#""action":"heal""#),
        "{text}"
    );
    let parsed = History::parse_jsonl(&text).unwrap();
    assert_eq!(parsed, b.history);
    assert_eq!(check_with(&parsed, &OPTIONS), b.check());
}
