//! The queue workload's checker: a pure function from a [`History`] to a [`Report`].
//!
//! It reads nothing but the history (no clock, no cluster) so it can be tested with
//! hand-made histories and run again on a saved history file.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use super::availability::{self, Availability, SlowRecovery};
use super::history::{EventType, History, Op};

/// At most this many anomalies of one kind are printed by the text report.
pub const MAX_PRINTED_ANOMALIES_PER_KIND: usize = 20;

/// A topic and partition.
pub type TopicPartition = (String, i32);

/// Where an observation of a value at an offset came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A send's acknowledgement named the offset.
    Ack,
    /// A poll returned the record.
    Read,
}

/// One observation of `value` at `topic`/`partition`@`offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Value seen there.
    pub value: u64,
    /// Ack or read.
    pub source: Source,
    /// The process that saw it (first one, if several did).
    pub process: u64,
    /// When it was seen (first time, if several times).
    pub time_ns: u64,
}

impl fmt::Display for Witness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}/{}:{} ({:?} by process {} at {} ns)",
            self.value,
            self.topic,
            self.partition,
            self.offset,
            self.source,
            self.process,
            self.time_ns
        )
    }
}

/// The kind of an [`Anomaly`], for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnomalyKind {
    /// See [`Anomaly::LostWrite`].
    LostWrite,
    /// See [`Anomaly::FailedWriteRead`].
    FailedWriteRead,
    /// See [`Anomaly::UnknownValue`].
    UnknownValue,
    /// See [`Anomaly::Duplicate`].
    Duplicate,
    /// See [`Anomaly::InconsistentOffset`].
    InconsistentOffset,
    /// See [`Anomaly::NonmonotonicPoll`].
    NonmonotonicPoll,
    /// See [`Anomaly::SkippedPoll`].
    SkippedPoll,
    /// See [`Anomaly::LostCommit`].
    LostCommit,
    /// See [`Anomaly::SlowRecovery`].
    SlowRecovery,
}

impl AnomalyKind {
    /// Every kind, in report order.
    pub const ALL: [AnomalyKind; 9] = [
        AnomalyKind::LostWrite,
        AnomalyKind::FailedWriteRead,
        AnomalyKind::UnknownValue,
        AnomalyKind::Duplicate,
        AnomalyKind::InconsistentOffset,
        AnomalyKind::NonmonotonicPoll,
        AnomalyKind::SkippedPoll,
        AnomalyKind::LostCommit,
        AnomalyKind::SlowRecovery,
    ];

    /// The kind's name in the text report.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::LostWrite => "lost write",
            AnomalyKind::FailedWriteRead => "failed write read",
            AnomalyKind::UnknownValue => "unknown value",
            AnomalyKind::Duplicate => "duplicate",
            AnomalyKind::InconsistentOffset => "inconsistent offset",
            AnomalyKind::NonmonotonicPoll => "nonmonotonic poll",
            AnomalyKind::SkippedPoll => "skipped poll",
            AnomalyKind::LostCommit => "lost commit",
            AnomalyKind::SlowRecovery => "slow recovery",
        }
    }
}

/// One thing the history shows the broker did wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anomaly {
    /// A send completed `ok` but no final-read poll returned its value.
    LostWrite {
        /// The value.
        value: u64,
        /// Topic sent to.
        topic: String,
        /// Partition sent to.
        partition: i32,
        /// Offset the ack named.
        acked_offset: i64,
        /// The producer.
        process: u64,
        /// When the ack arrived.
        ack_time_ns: u64,
    },
    /// A send completed `fail` (a definite failure) but its value was read.
    ///
    /// Kept an anomaly, not a warning, as in Jepsen: a client that was told "not
    /// written" may retry and so duplicate, or report an error to its user for a
    /// write that happened. A Kafka client does report some timeouts as definite
    /// errors; the harness must record those as `info`, not `fail`.
    FailedWriteRead {
        /// The value.
        value: u64,
        /// The producer.
        process: u64,
        /// When the failure was reported.
        fail_time_ns: u64,
        /// Where it was read.
        read_at: Vec<Witness>,
    },
    /// A poll returned a value that no send ever carried.
    UnknownValue {
        /// Where it was read.
        read_at: Vec<Witness>,
    },
    /// One value at two or more positions, across all acks and reads.
    Duplicate {
        /// The value.
        value: u64,
        /// One witness per distinct position.
        positions: Vec<Witness>,
    },
    /// Two or more values at one position, across all acks and reads.
    InconsistentOffset {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// One witness per distinct (value, source).
        witnesses: Vec<Witness>,
    },
    /// A process's poll returned an offset at or below the last one it returned for
    /// that partition, with no `assign` of the partition in between.
    NonmonotonicPoll {
        /// The consumer.
        process: u64,
        /// When the poll completed.
        time_ns: u64,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The last offset returned before.
        previous_offset: i64,
        /// The offset returned now.
        offset: i64,
    },
    /// A process's poll jumped past offsets that some reader saw a record at, with
    /// no `assign` of the partition in between; or, for the first poll after a group
    /// rebalance assigned the partition, past every offset the group ever tried to
    /// commit (`previous_offset` is then that offset - 1).
    SkippedPoll {
        /// The consumer.
        process: u64,
        /// When the poll completed.
        time_ns: u64,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The last offset returned before.
        previous_offset: i64,
        /// The offset returned now.
        offset: i64,
        /// Offsets in between that hold a record (at most the first 10).
        skipped_offsets: Vec<i64>,
    },
    /// A group member's first poll after a rebalance assigned it a partition started
    /// below the offset the group's last commit before that rebalance was
    /// acknowledged for: the coordinator lost (or served a stale) committed offset.
    LostCommit {
        /// The consumer.
        process: u64,
        /// When the poll completed.
        time_ns: u64,
        /// The group.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The offset committed `ok` last before the assignment.
        committed_offset: i64,
        /// The process whose commit that was.
        committed_by: u64,
        /// The first offset read.
        offset: i64,
    },
    /// After a fault healed, some partition acknowledged no send for longer than the
    /// recovery bound (see [`availability`]).
    SlowRecovery(SlowRecovery),
}

/// At most this many skipped offsets are listed in one [`Anomaly::SkippedPoll`].
pub const MAX_LISTED_SKIPPED_OFFSETS: usize = 10;

impl Anomaly {
    /// This anomaly's kind.
    pub fn kind(&self) -> AnomalyKind {
        match self {
            Anomaly::LostWrite { .. } => AnomalyKind::LostWrite,
            Anomaly::FailedWriteRead { .. } => AnomalyKind::FailedWriteRead,
            Anomaly::UnknownValue { .. } => AnomalyKind::UnknownValue,
            Anomaly::Duplicate { .. } => AnomalyKind::Duplicate,
            Anomaly::InconsistentOffset { .. } => AnomalyKind::InconsistentOffset,
            Anomaly::NonmonotonicPoll { .. } => AnomalyKind::NonmonotonicPoll,
            Anomaly::SkippedPoll { .. } => AnomalyKind::SkippedPoll,
            Anomaly::LostCommit { .. } => AnomalyKind::LostCommit,
            Anomaly::SlowRecovery(_) => AnomalyKind::SlowRecovery,
        }
    }
}

fn join(witnesses: &[Witness]) -> String {
    witnesses
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::LostWrite { value, topic, partition, acked_offset, process, ack_time_ns } => write!(
                f,
                "value {value} acked at {topic}/{partition}:{acked_offset} (process {process}, {ack_time_ns} ns) never read by the final phase"
            ),
            Anomaly::FailedWriteRead { value, process, fail_time_ns, read_at } => write!(
                f,
                "value {value} failed (process {process}, {fail_time_ns} ns) but was read: {}",
                join(read_at)
            ),
            Anomaly::UnknownValue { read_at } => {
                write!(f, "read a value never sent: {}", join(read_at))
            }
            Anomaly::Duplicate { value, positions } => {
                write!(f, "value {value} at {} positions: {}", positions.len(), join(positions))
            }
            Anomaly::InconsistentOffset { topic, partition, offset, witnesses } => {
                write!(f, "{topic}/{partition}:{offset} holds different values: {}", join(witnesses))
            }
            Anomaly::NonmonotonicPoll { process, time_ns, topic, partition, previous_offset, offset } => write!(
                f,
                "process {process} at {time_ns} ns read {topic}/{partition}:{offset} after {previous_offset}"
            ),
            Anomaly::SkippedPoll { process, time_ns, topic, partition, previous_offset, offset, skipped_offsets } => write!(
                f,
                "process {process} at {time_ns} ns read {topic}/{partition}:{offset} after {previous_offset}, skipping records at {skipped_offsets:?}"
            ),
            Anomaly::LostCommit { process, time_ns, group, topic, partition, committed_offset, committed_by, offset } => write!(
                f,
                "process {process} at {time_ns} ns, assigned {topic}/{partition} by group {group}, started at {offset} below offset {committed_offset} committed ok by process {committed_by}"
            ),
            Anomaly::SlowRecovery(slow) => write!(f, "{slow}"),
        }
    }
}

/// How operations of one kind ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Operations started.
    pub invoked: usize,
    /// Completed `ok`.
    pub ok: usize,
    /// Completed `fail`.
    pub fail: usize,
    /// Completed `info` (unknown outcome).
    pub info: usize,
}

impl OutcomeCounts {
    fn add(&mut self, event_type: EventType) {
        match event_type {
            EventType::Invoke => self.invoked += 1,
            EventType::Ok => self.ok += 1,
            EventType::Fail => self.fail += 1,
            EventType::Info => self.info += 1,
        }
    }

    /// Invoked but never completed (the process crashed or the run ended).
    pub fn pending(&self) -> usize {
        self.invoked.saturating_sub(self.ok + self.fail + self.info)
    }
}

/// The checker's verdict: every anomaly found, and availability counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Every anomaly, grouped by kind in [`AnomalyKind::ALL`] order.
    pub anomalies: Vec<Anomaly>,
    /// How sends ended.
    pub sends: OutcomeCounts,
    /// How polls ended (final phase included).
    pub polls: OutcomeCounts,
    /// `ok` polls in the final phase.
    pub final_read_polls: usize,
    /// Distinct values the final phase read.
    pub final_read_values: usize,
    /// `ok` sends whose acknowledgement named no offset.
    pub acks_without_offset: usize,
    /// Sends per fault window and recovery after each heal.
    pub availability: Availability,
    /// The recovery bound the report was checked against, if any.
    pub recovery_bound: Option<std::time::Duration>,
}

impl Report {
    /// Number of anomalies of every kind.
    pub fn anomaly_count(&self) -> usize {
        self.anomalies.len()
    }

    /// No anomaly at all.
    pub fn is_clean(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// Number of anomalies of `kind`.
    pub fn count(&self, kind: AnomalyKind) -> usize {
        self.anomalies.iter().filter(|a| a.kind() == kind).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.sends;
        writeln!(
            f,
            "sends: {} invoked, {} ok, {} fail, {} info, {} pending",
            s.invoked,
            s.ok,
            s.fail,
            s.info,
            s.pending()
        )?;
        let p = &self.polls;
        writeln!(
            f,
            "polls: {} invoked, {} ok, {} fail, {} info, {} pending",
            p.invoked,
            p.ok,
            p.fail,
            p.info,
            p.pending()
        )?;
        writeln!(
            f,
            "final read: {} polls, {} distinct values",
            self.final_read_polls, self.final_read_values
        )?;
        if self.acks_without_offset > 0 {
            writeln!(
                f,
                "acknowledged without an offset (checked for loss only): {}",
                self.acks_without_offset
            )?;
        }
        write!(f, "{}", self.availability)?;
        match self.recovery_bound {
            Some(bound) => writeln!(
                f,
                "recovery bound: {:.0} s after each heal",
                bound.as_secs_f64()
            )?,
            None => writeln!(f, "recovery bound: not checked")?,
        }
        writeln!(
            f,
            "not checked: aborted and uncommitted reads (no transactions in the queue workload)"
        )?;
        for kind in AnomalyKind::ALL {
            let of_kind: Vec<&Anomaly> =
                self.anomalies.iter().filter(|a| a.kind() == kind).collect();
            writeln!(f, "{}: {}", kind.name(), of_kind.len())?;
            for anomaly in of_kind.iter().take(MAX_PRINTED_ANOMALIES_PER_KIND) {
                writeln!(f, "  {anomaly}")?;
            }
            if of_kind.len() > MAX_PRINTED_ANOMALIES_PER_KIND {
                writeln!(
                    f,
                    "  ... and {} more",
                    of_kind.len() - MAX_PRINTED_ANOMALIES_PER_KIND
                )?;
            }
        }
        write!(f, "anomalies: {}", self.anomaly_count())
    }
}

/// How a send ended, over all its completions: ok beats info beats fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SendOutcome {
    Pending,
    Fail,
    Info,
    Ok,
}

struct SendState {
    outcome: SendOutcome,
    process: u64,
    time_ns: u64,
    topic: String,
    partition: i32,
    acked_offset: i64,
}

/// What to check beyond the history's own consistency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Every partition must acknowledge a send within this long of each heal.
    pub recovery_bound: Option<std::time::Duration>,
}

/// Checks a queue-workload history without a recovery bound; see [`check_with`].
pub fn check(history: &History) -> Report {
    check_with(history, &CheckOptions::default())
}

/// Checks a queue-workload history; see [`Anomaly`] for what is checked.
///
/// Events are taken in the order the history lists them.
pub fn check_with(history: &History, options: &CheckOptions) -> Report {
    let mut report = Report {
        recovery_bound: options.recovery_bound,
        ..Report::default()
    };
    let mut sends: HashMap<u64, SendState> = HashMap::new();
    // First witness of each distinct (position, value, source).
    let mut witnesses: Vec<Witness> = Vec::new();
    let mut seen: HashSet<(TopicPartition, i64, u64, Source)> = HashSet::new();
    let mut final_values: HashSet<u64> = HashSet::new();
    // Offsets at which some reader saw a record, per partition.
    let mut read_offsets: HashMap<TopicPartition, BTreeSet<i64>> = HashMap::new();

    let mut witness = |w: Witness| {
        if seen.insert(((w.topic.clone(), w.partition), w.offset, w.value, w.source)) {
            witnesses.push(w);
        }
    };

    for event in &history.events {
        match &event.op {
            Op::Send(send) => {
                report.sends.add(event.event_type);
                let outcome = match event.event_type {
                    EventType::Invoke => SendOutcome::Pending,
                    EventType::Fail => SendOutcome::Fail,
                    EventType::Info => SendOutcome::Info,
                    EventType::Ok => SendOutcome::Ok,
                };
                let state = sends.entry(send.value).or_insert_with(|| SendState {
                    outcome: SendOutcome::Pending,
                    process: event.process,
                    time_ns: event.time_ns,
                    topic: send.topic.clone(),
                    partition: send.partition,
                    acked_offset: -1,
                });
                if outcome > state.outcome {
                    state.outcome = outcome;
                    state.process = event.process;
                    state.time_ns = event.time_ns;
                }
                // A negative offset is an acknowledgement that names none (librdkafka's
                // implicit acks): the value must be read, but its position is unknown.
                if let (EventType::Ok, Some(offset)) = (event.event_type, send.offset) {
                    if offset < 0 {
                        report.acks_without_offset += 1;
                        continue;
                    }
                    state.acked_offset = offset;
                    witness(Witness {
                        topic: send.topic.clone(),
                        partition: send.partition,
                        offset,
                        value: send.value,
                        source: Source::Ack,
                        process: event.process,
                        time_ns: event.time_ns,
                    });
                }
            }
            Op::Poll {
                records,
                final_read,
            } => {
                report.polls.add(event.event_type);
                if event.event_type != EventType::Ok {
                    continue;
                }
                if *final_read {
                    report.final_read_polls += 1;
                }
                for r in records {
                    if *final_read {
                        final_values.insert(r.value);
                    }
                    read_offsets
                        .entry((r.topic.clone(), r.partition))
                        .or_default()
                        .insert(r.offset);
                    witness(Witness {
                        topic: r.topic.clone(),
                        partition: r.partition,
                        offset: r.offset,
                        value: r.value,
                        source: Source::Read,
                        process: event.process,
                        time_ns: event.time_ns,
                    });
                }
            }
            Op::Assign { .. } | Op::Revoke { .. } | Op::Commit { .. } | Op::Nemesis { .. } => {}
        }
    }
    report.final_read_values = final_values.len();

    check_sends(&sends, &final_values, &witnesses, &mut report.anomalies);
    check_positions(&witnesses, &mut report.anomalies);
    check_polls(history, &read_offsets, &mut report.anomalies);
    let (availability, slow) = availability::analyze(history, options.recovery_bound);
    report.availability = availability;
    report
        .anomalies
        .extend(slow.into_iter().map(Anomaly::SlowRecovery));
    report.anomalies.sort_by_key(Anomaly::kind);
    report
}

/// Lost writes, failed writes that were read, and reads of values never sent.
fn check_sends(
    sends: &HashMap<u64, SendState>,
    final_values: &HashSet<u64>,
    witnesses: &[Witness],
    out: &mut Vec<Anomaly>,
) {
    let mut reads_by_value: BTreeMap<u64, Vec<Witness>> = BTreeMap::new();
    for w in witnesses.iter().filter(|w| w.source == Source::Read) {
        reads_by_value.entry(w.value).or_default().push(w.clone());
    }
    let mut values: Vec<&u64> = sends.keys().collect();
    values.sort();
    for value in values {
        let send = &sends[value];
        match send.outcome {
            SendOutcome::Ok if !final_values.contains(value) => out.push(Anomaly::LostWrite {
                value: *value,
                topic: send.topic.clone(),
                partition: send.partition,
                acked_offset: send.acked_offset,
                process: send.process,
                ack_time_ns: send.time_ns,
            }),
            SendOutcome::Fail => {
                if let Some(read_at) = reads_by_value.get(value) {
                    out.push(Anomaly::FailedWriteRead {
                        value: *value,
                        process: send.process,
                        fail_time_ns: send.time_ns,
                        read_at: read_at.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    for (value, read_at) in reads_by_value {
        if !sends.contains_key(&value) {
            out.push(Anomaly::UnknownValue { read_at });
        }
    }
}

/// A topic-partition offset.
type Position = (TopicPartition, i64);

/// Duplicates (one value, many positions) and inconsistent offsets (one position,
/// many values).
fn check_positions(witnesses: &[Witness], out: &mut Vec<Anomaly>) {
    let mut by_value: BTreeMap<u64, BTreeMap<Position, &Witness>> = BTreeMap::new();
    let mut by_position: BTreeMap<Position, BTreeMap<(u64, Source), &Witness>> = BTreeMap::new();
    for w in witnesses {
        let position = ((w.topic.clone(), w.partition), w.offset);
        by_value
            .entry(w.value)
            .or_default()
            .entry(position.clone())
            .or_insert(w);
        by_position
            .entry(position)
            .or_default()
            .entry((w.value, w.source))
            .or_insert(w);
    }
    for (value, positions) in by_value {
        if positions.len() > 1 {
            out.push(Anomaly::Duplicate {
                value,
                positions: positions.into_values().cloned().collect(),
            });
        }
    }
    for (((topic, partition), offset), seen) in by_position {
        let distinct_values: BTreeSet<u64> = seen.keys().map(|(v, _)| *v).collect();
        if distinct_values.len() > 1 {
            out.push(Anomaly::InconsistentOffset {
                topic,
                partition,
                offset,
                witnesses: seen.into_values().cloned().collect(),
            });
        }
    }
}

/// Offsets in `read_offsets` of `tp` in `from..to`, at most the listed maximum.
fn offsets_between(
    read_offsets: &HashMap<TopicPartition, BTreeSet<i64>>,
    tp: &TopicPartition,
    from: i64,
    to: i64,
) -> Vec<i64> {
    if from >= to {
        return Vec::new();
    }
    read_offsets
        .get(tp)
        .map(|offsets| {
            offsets
                .range(from..to)
                .take(MAX_LISTED_SKIPPED_OFFSETS)
                .copied()
                .collect()
        })
        .unwrap_or_default()
}

/// A partition a group rebalance handed to a process that has not read it since.
struct GroupStart {
    group: String,
    /// The offset the group had committed before the assignment, and by whom, when
    /// the history determines it.
    committed_ok: Option<(i64, u64)>,
}

/// Per process and partition: offsets must rise, and never jump over an offset
/// some reader saw a record at, unless an `assign` of the partition came between.
///
/// After a group rebalance assigns a partition, the member's first record of it must
/// lie between the group's committed offset at the assignment, when the history
/// determines it (the last acknowledged commit, none other in flight or of unknown
/// outcome since; [`Anomaly::LostCommit`] if below), and the highest offset the group ever tried to
/// commit before that read, or the log start when it tried none
/// ([`Anomaly::SkippedPoll`] if records were seen in between). From then on the
/// ordinary rule holds until the partition is revoked.
fn check_polls(
    history: &History,
    read_offsets: &HashMap<TopicPartition, BTreeSet<i64>>,
    out: &mut Vec<Anomaly>,
) {
    // process -> partition -> last offset returned (or the assigned position - 1).
    let mut last: HashMap<u64, HashMap<TopicPartition, i64>> = HashMap::new();
    // process -> partition -> a group assignment not yet read from.
    let mut starts: HashMap<u64, HashMap<TopicPartition, GroupStart>> = HashMap::new();
    // (group, partition) -> the committed offset and its committer, when the history
    // determines it: the last commit acknowledged while no other commit of the
    // partition was in flight, with no commit of unknown outcome since.
    let mut committed_ok: HashMap<(String, TopicPartition), (i64, u64)> = HashMap::new();
    // (group, partition) -> commits invoked and not yet completed.
    let mut in_flight: HashMap<(String, TopicPartition), usize> = HashMap::new();
    // (group, partition) -> highest offset any commit (whatever its outcome) carried.
    let mut commit_tried: HashMap<(String, TopicPartition), i64> = HashMap::new();
    for event in &history.events {
        if let Op::Commit { group, partitions } = &event.op {
            for p in partitions {
                let key = (group.clone(), (p.topic.clone(), p.partition));
                let flying = in_flight.entry(key.clone()).or_default();
                match event.event_type {
                    EventType::Invoke => *flying += 1,
                    EventType::Ok => {
                        *flying = flying.saturating_sub(1);
                        if *flying == 0 {
                            committed_ok.insert(key.clone(), (p.offset, event.process));
                        } else {
                            committed_ok.remove(&key);
                        }
                    }
                    EventType::Info => {
                        *flying = flying.saturating_sub(1);
                        committed_ok.remove(&key);
                    }
                    EventType::Fail => *flying = flying.saturating_sub(1),
                }
                let e = commit_tried.entry(key).or_insert(p.offset);
                *e = (*e).max(p.offset);
            }
            continue;
        }
        if event.event_type != EventType::Ok {
            continue;
        }
        let positions = last.entry(event.process).or_default();
        let group_starts = starts.entry(event.process).or_default();
        match &event.op {
            Op::Assign { partitions, group } => {
                for p in partitions {
                    let tp = (p.topic.clone(), p.partition);
                    group_starts.remove(&tp);
                    if let Some(g) = group {
                        positions.remove(&tp);
                        let key = (g.clone(), tp.clone());
                        let settled = in_flight.get(&key).is_none_or(|n| *n == 0);
                        let start = GroupStart {
                            group: g.clone(),
                            committed_ok: committed_ok.get(&key).copied().filter(|_| settled),
                        };
                        group_starts.insert(tp, start);
                    } else if p.offset >= 0 {
                        positions.insert(tp, p.offset - 1);
                    } else {
                        positions.remove(&tp);
                    }
                }
            }
            Op::Revoke { partitions, .. } => {
                for p in partitions {
                    let tp = (p.topic.clone(), p.partition);
                    positions.remove(&tp);
                    group_starts.remove(&tp);
                }
            }
            Op::Poll { records, .. } => {
                for r in records {
                    let tp = (r.topic.clone(), r.partition);
                    if let Some(start) = group_starts.remove(&tp) {
                        if let Some((committed, by)) =
                            start.committed_ok.filter(|(c, _)| r.offset < *c)
                        {
                            out.push(Anomaly::LostCommit {
                                process: event.process,
                                time_ns: event.time_ns,
                                group: start.group.clone(),
                                topic: r.topic.clone(),
                                partition: r.partition,
                                committed_offset: committed,
                                committed_by: by,
                                offset: r.offset,
                            });
                        } else {
                            let tried = commit_tried
                                .get(&(start.group.clone(), tp.clone()))
                                .copied()
                                .unwrap_or(0);
                            let skipped = offsets_between(read_offsets, &tp, tried, r.offset);
                            if !skipped.is_empty() {
                                out.push(Anomaly::SkippedPoll {
                                    process: event.process,
                                    time_ns: event.time_ns,
                                    topic: r.topic.clone(),
                                    partition: r.partition,
                                    previous_offset: tried - 1,
                                    offset: r.offset,
                                    skipped_offsets: skipped,
                                });
                            }
                        }
                    } else if let Some(&previous) = positions.get(&tp) {
                        if r.offset <= previous {
                            out.push(Anomaly::NonmonotonicPoll {
                                process: event.process,
                                time_ns: event.time_ns,
                                topic: r.topic.clone(),
                                partition: r.partition,
                                previous_offset: previous,
                                offset: r.offset,
                            });
                        } else {
                            let skipped =
                                offsets_between(read_offsets, &tp, previous + 1, r.offset);
                            if !skipped.is_empty() {
                                out.push(Anomaly::SkippedPoll {
                                    process: event.process,
                                    time_ns: event.time_ns,
                                    topic: r.topic.clone(),
                                    partition: r.partition,
                                    previous_offset: previous,
                                    offset: r.offset,
                                    skipped_offsets: skipped,
                                });
                            }
                        }
                    }
                    positions.insert(tp, r.offset);
                }
            }
            Op::Send(_) | Op::Nemesis { .. } | Op::Commit { .. } => {}
        }
    }
}
