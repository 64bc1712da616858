//! Availability of a run, from its history alone: how sends fared in each fault
//! window, and how long after each fault healed every partition accepted acks=all
//! writes again.
//!
//! Unavailability during a fault is reported, not judged: a partition whose leader is
//! cut off from its followers is meant to refuse acks=all writes. What is judged is
//! recovery: once a fault heals, every partition must acknowledge a send within the
//! recovery bound (a [`SlowRecovery`](super::queue::Anomaly::SlowRecovery) anomaly
//! otherwise).
//!
//! Definitions, all over the history's monotonic clock:
//! - a fault window runs from a nemesis `start` to its `heal`;
//! - a send belongs to the window it was invoked in; `ok share` is the share of those
//!   sends that ended `ok` (pending and `info` count as not ok);
//! - acks/s counts `ok` completions inside the window, per second of the window;
//! - the baseline is the same figures outside every window (before the first fault,
//!   between faults, after the last), from the first to the last send;
//! - the recovery time after a heal is, over every partition any send went to, the
//!   longest wait from the heal to that partition's first `ok` completion. It is
//!   measured up to the next fault's start; if a partition had not recovered by then
//!   (or by the end of the history), the recovery is *undetermined* unless that gap is
//!   already longer than the bound, which is then an anomaly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use super::history::{EventType, History, NemesisAction, Op};
use super::queue::TopicPartition;

/// Nanoseconds per millisecond.
const NS_PER_MS: f64 = 1_000_000.0;
/// Nanoseconds per second.
const NS_PER_S: f64 = 1_000_000_000.0;

/// Latency figures of `ok` sends, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    /// Figures of `samples` (nanoseconds); `None` when there are none.
    pub fn of(samples: &mut [u64]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[index.min(samples.len() - 1)] as f64 / NS_PER_MS
        };
        Some(Latency {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

/// How sends fared over some stretch of time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SendStats {
    /// Sends invoked in the stretch.
    pub invoked: usize,
    /// Of those, how many ended `ok`.
    pub ok: usize,
    /// ... `fail`.
    pub fail: usize,
    /// ... `info` (unknown outcome).
    pub info: usize,
    /// `ok` completions inside the stretch, per second of it.
    pub acks_per_sec: f64,
    /// Latency (invoke to `ok`) of the sends invoked in the stretch that ended `ok`.
    pub latency: Option<Latency>,
}

impl SendStats {
    /// Share of invoked sends that ended `ok`, or `None` if none were invoked.
    pub fn ok_share(&self) -> Option<f64> {
        (self.invoked > 0).then(|| self.ok as f64 / self.invoked as f64)
    }
}

/// How long until writes were acknowledged again after a heal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Every partition acknowledged a send within this long of the heal; the slowest
    /// partition is named.
    Recovered {
        /// Heal to the slowest partition's first `ok`.
        after: Duration,
        /// That partition.
        slowest: TopicPartition,
    },
    /// Some partitions had not acknowledged anything by the next fault (or the end of
    /// the history), `waited` after the heal.
    Undetermined {
        /// Heal to the next fault or the end of the history.
        waited: Duration,
        /// The partitions without an `ok` in that time.
        unrecovered: Vec<TopicPartition>,
    },
}

impl Recovery {
    /// How long the run waited for recovery, whichever way it ended.
    pub fn waited(&self) -> Duration {
        match self {
            Recovery::Recovered { after, .. } => *after,
            Recovery::Undetermined { waited, .. } => *waited,
        }
    }
}

/// One fault window's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The fault's name.
    pub fault: String,
    /// What the nemesis did to start it.
    pub detail: String,
    /// When it started.
    pub start_ns: u64,
    /// When it healed (the end of the history if it never did).
    pub heal_ns: u64,
    /// Whether a heal was recorded.
    pub healed: bool,
    /// Sends invoked during the window.
    pub sends: SendStats,
    /// Recovery after the heal.
    pub recovery: Recovery,
}

/// Availability figures of a whole run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Availability {
    /// Sends outside every fault window.
    pub baseline: SendStats,
    /// Every fault window, in order.
    pub windows: Vec<Window>,
}

/// A heal after which some partition acknowledged nothing for longer than the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowRecovery {
    /// The fault's name.
    pub fault: String,
    /// When it healed.
    pub heal_ns: u64,
    /// How long it took (or had taken without recovering).
    pub took: Duration,
    /// Whether every partition did recover eventually (after the bound).
    pub recovered: bool,
    /// The partitions that were slower than the bound.
    pub partitions: Vec<TopicPartition>,
    /// The bound.
    pub bound: Duration,
}

struct SendLife {
    invoke_ns: u64,
    tp: TopicPartition,
    end: Option<(EventType, u64)>,
}

/// Computes the availability figures; with a `bound`, also every heal after which a
/// partition stayed unwritable for longer than it.
pub fn analyze(history: &History, bound: Option<Duration>) -> (Availability, Vec<SlowRecovery>) {
    let mut sends: HashMap<u64, SendLife> = HashMap::new();
    let mut order: Vec<u64> = Vec::new();
    // (start, heal, fault, detail)
    let mut windows: Vec<(u64, Option<u64>, String, String)> = Vec::new();
    let end_ns = history.events.last().map_or(0, |e| e.time_ns);
    for event in &history.events {
        match &event.op {
            Op::Send(s) => match event.event_type {
                EventType::Invoke => {
                    order.push(s.value);
                    sends.insert(
                        s.value,
                        SendLife {
                            invoke_ns: event.time_ns,
                            tp: (s.topic.clone(), s.partition),
                            end: None,
                        },
                    );
                }
                t => {
                    if let Some(life) = sends.get_mut(&s.value) {
                        if life.end.is_none() {
                            life.end = Some((t, event.time_ns));
                        }
                    }
                }
            },
            Op::Nemesis {
                action,
                fault,
                detail,
            } => match action {
                NemesisAction::Start => {
                    windows.push((event.time_ns, None, fault.clone(), detail.clone()))
                }
                NemesisAction::Heal => {
                    if let Some(last) = windows.last_mut().filter(|w| w.1.is_none()) {
                        last.1 = Some(event.time_ns);
                    }
                }
            },
            Op::Poll { .. } | Op::Assign { .. } | Op::Revoke { .. } | Op::Commit { .. } => {}
        }
    }
    let lives: Vec<&SendLife> = order.iter().filter_map(|v| sends.get(v)).collect();
    let partitions: BTreeSet<TopicPartition> = lives.iter().map(|l| l.tp.clone()).collect();
    // Per partition, the times of ok completions, sorted.
    let mut oks: BTreeMap<TopicPartition, Vec<u64>> = BTreeMap::new();
    for life in &lives {
        if let Some((EventType::Ok, t)) = life.end {
            oks.entry(life.tp.clone()).or_default().push(t);
        }
    }
    for times in oks.values_mut() {
        times.sort_unstable();
    }

    let spans: Vec<(u64, u64)> = windows
        .iter()
        .map(|(s, h, _, _)| (*s, h.unwrap_or(end_ns)))
        .collect();
    let in_window = |t: u64| spans.iter().any(|(s, h)| t >= *s && t < *h);

    let mut availability = Availability::default();
    let first_send = lives.iter().map(|l| l.invoke_ns).min().unwrap_or(0);
    let last_send = lives
        .iter()
        .map(|l| l.end.map_or(l.invoke_ns, |(_, t)| t))
        .max()
        .unwrap_or(0);
    let in_windows_ns: u64 = spans
        .iter()
        .map(|(s, h)| h.min(&last_send).saturating_sub(*s.max(&first_send)))
        .sum();
    let baseline_ns = last_send
        .saturating_sub(first_send)
        .saturating_sub(in_windows_ns);
    availability.baseline = stats(
        lives.iter().copied().filter(|l| !in_window(l.invoke_ns)),
        |t| !in_window(t),
        baseline_ns,
    );

    let mut slow = Vec::new();
    for (index, (start, heal, fault, detail)) in windows.iter().enumerate() {
        let heal_ns = heal.unwrap_or(end_ns);
        let horizon = windows.get(index + 1).map_or(end_ns, |w| w.0);
        let sends = stats(
            lives
                .iter()
                .copied()
                .filter(|l| l.invoke_ns >= *start && l.invoke_ns < heal_ns),
            |t| t >= *start && t < heal_ns,
            heal_ns - start,
        );
        let recovery = recovery_after(heal_ns, horizon, &partitions, &oks);
        if let Some(bound) = bound {
            if let Some(s) = too_slow(fault, heal_ns, &recovery, horizon, &partitions, &oks, bound)
            {
                slow.push(s);
            }
        }
        availability.windows.push(Window {
            fault: fault.clone(),
            detail: detail.clone(),
            start_ns: *start,
            heal_ns,
            healed: heal.is_some(),
            sends,
            recovery,
        });
    }
    (availability, slow)
}

fn stats<'a>(
    lives: impl Iterator<Item = &'a SendLife>,
    completes_inside: impl Fn(u64) -> bool,
    span_ns: u64,
) -> SendStats {
    let mut s = SendStats::default();
    let mut latencies = Vec::new();
    let mut acks_inside = 0usize;
    for life in lives {
        s.invoked += 1;
        match life.end {
            Some((EventType::Ok, t)) => {
                s.ok += 1;
                latencies.push(t.saturating_sub(life.invoke_ns));
                if completes_inside(t) {
                    acks_inside += 1;
                }
            }
            Some((EventType::Fail, _)) => s.fail += 1,
            Some((EventType::Info, _)) => s.info += 1,
            _ => {}
        }
    }
    s.acks_per_sec = if span_ns == 0 {
        0.0
    } else {
        acks_inside as f64 / (span_ns as f64 / NS_PER_S)
    };
    s.latency = Latency::of(&mut latencies);
    s
}

/// First ok completion at or after `from` on `tp`.
fn first_ok(
    oks: &BTreeMap<TopicPartition, Vec<u64>>,
    tp: &TopicPartition,
    from: u64,
) -> Option<u64> {
    let times = oks.get(tp)?;
    let i = times.partition_point(|t| *t < from);
    times.get(i).copied()
}

fn recovery_after(
    heal_ns: u64,
    horizon_ns: u64,
    partitions: &BTreeSet<TopicPartition>,
    oks: &BTreeMap<TopicPartition, Vec<u64>>,
) -> Recovery {
    let mut slowest: Option<(u64, TopicPartition)> = None;
    let mut unrecovered = Vec::new();
    for tp in partitions {
        match first_ok(oks, tp, heal_ns).filter(|t| *t <= horizon_ns) {
            Some(t) => {
                if slowest.as_ref().is_none_or(|(s, _)| t > *s) {
                    slowest = Some((t, tp.clone()));
                }
            }
            None => unrecovered.push(tp.clone()),
        }
    }
    match slowest {
        Some((t, tp)) if unrecovered.is_empty() => Recovery::Recovered {
            after: Duration::from_nanos(t - heal_ns),
            slowest: tp,
        },
        _ => Recovery::Undetermined {
            waited: Duration::from_nanos(horizon_ns.saturating_sub(heal_ns)),
            unrecovered,
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn too_slow(
    fault: &str,
    heal_ns: u64,
    recovery: &Recovery,
    horizon_ns: u64,
    partitions: &BTreeSet<TopicPartition>,
    oks: &BTreeMap<TopicPartition, Vec<u64>>,
    bound: Duration,
) -> Option<SlowRecovery> {
    let bound_ns = bound.as_nanos() as u64;
    let (took, recovered, late) = match recovery {
        Recovery::Recovered { after, .. } => {
            if *after <= bound {
                return None;
            }
            let late = partitions
                .iter()
                .filter(|tp| first_ok(oks, tp, heal_ns).is_some_and(|t| t - heal_ns > bound_ns))
                .cloned()
                .collect();
            (*after, true, late)
        }
        Recovery::Undetermined {
            waited,
            unrecovered,
        } => {
            if horizon_ns.saturating_sub(heal_ns) <= bound_ns {
                return None;
            }
            (*waited, false, unrecovered.clone())
        }
    };
    Some(SlowRecovery {
        fault: fault.to_string(),
        heal_ns,
        took,
        recovered,
        partitions: late,
        bound,
    })
}

fn ms(ns: u64) -> f64 {
    ns as f64 / NS_PER_MS
}

fn share(s: &SendStats) -> String {
    s.ok_share()
        .map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0))
}

fn latency(s: &SendStats) -> String {
    s.latency.map_or("-".to_string(), |l| {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l.p50_ms, l.p99_ms, l.max_ms
        )
    })
}

fn tps(list: &[TopicPartition]) -> String {
    list.iter()
        .map(|(t, p)| format!("{t}/{p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.baseline;
        writeln!(
            f,
            "baseline (outside faults): {} sends, {} ok ({}), {:.0} acks/s, latency {}",
            b.invoked,
            b.ok,
            share(b),
            b.acks_per_sec,
            latency(b)
        )?;
        for (i, w) in self.windows.iter().enumerate() {
            let s = &w.sends;
            writeln!(
                f,
                "fault {} {} at {:.1} s for {:.1} s{}: {}",
                i + 1,
                w.fault,
                w.start_ns as f64 / NS_PER_S,
                (w.heal_ns - w.start_ns) as f64 / NS_PER_S,
                if w.healed { "" } else { " (never healed)" },
                w.detail
            )?;
            writeln!(
                f,
                "  sends: {} invoked, {} ok ({}), {} fail, {} info; {:.0} acks/s; latency {}",
                s.invoked,
                s.ok,
                share(s),
                s.fail,
                s.info,
                s.acks_per_sec,
                latency(s)
            )?;
            match &w.recovery {
                Recovery::Recovered { after, slowest } => writeln!(
                    f,
                    "  recovery: every partition acknowledged writes within {:.0} ms of the heal (slowest {}/{})",
                    ms(after.as_nanos() as u64),
                    slowest.0,
                    slowest.1
                )?,
                Recovery::Undetermined { waited, unrecovered } => writeln!(
                    f,
                    "  recovery: undetermined, {} without an ack {:.0} ms after the heal",
                    tps(unrecovered),
                    ms(waited.as_nanos() as u64)
                )?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for SlowRecovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "after the {} fault healed at {:.1} s, {} acknowledged no write for {:.1} s{} (bound {:.0} s)",
            self.fault,
            self.heal_ns as f64 / NS_PER_S,
            tps(&self.partitions),
            self.took.as_secs_f64(),
            if self.recovered { "" } else { " and never recovered" },
            self.bound.as_secs_f64()
        )
    }
}
