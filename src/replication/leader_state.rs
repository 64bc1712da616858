//! The leader's view of a partition's replication, as plain data and pure functions:
//! follower progress, the high watermark, and when the ISR should change.
//!
//! No I/O, no clock (time comes in as `now_ms`), no locks: `Partition` owns one of
//! these behind its mutex and acts on what the functions return (sending an
//! AlterPartition to the controller, waking waiters). The rules are Kafka's:
//! - the high watermark is the smallest log end offset over the *maximal* ISR (the
//!   committed ISR plus replicas an in-flight AlterPartition adds), counting the
//!   leader's own offset as what is durable under `log.flush.policy=always`; it never
//!   goes down, and it does not advance while the committed ISR is smaller than
//!   `min.insync.replicas` (KIP-966);
//! - a follower is caught up when a fetch asks for at least what the leader had at its
//!   previous fetch; one not caught up for `replica.lag.time.max.ms` leaves the ISR;
//! - a follower outside the ISR that has reached the high watermark and the start of
//!   the current leader epoch joins it.

use std::collections::BTreeMap;

/// What the leader knows of one follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The follower's log end offset (its last fetch offset); -1 until it fetches in
    /// this leader epoch.
    pub log_end_offset: i64,
    /// When the follower was last caught up (ms).
    pub last_caught_up_ms: i64,
    /// The leader's log end offset at the follower's previous fetch.
    pub leader_end_at_last_fetch: i64,
    /// When the follower last fetched (ms).
    pub last_fetch_ms: i64,
    /// The follower's log start offset, as its last fetch reported it; -1 until it
    /// fetches in this leader epoch.
    pub log_start_offset: i64,
}

/// The leader's replication state of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderState {
    /// This broker.
    pub node_id: i32,
    /// The leader epoch this state belongs to.
    pub leader_epoch: i32,
    /// Partition epoch of the committed state (for AlterPartition's compare-and-set).
    pub partition_epoch: i32,
    /// Assigned replicas.
    pub replicas: Vec<i32>,
    /// Committed in-sync replicas.
    pub isr: Vec<i32>,
    /// ISR proposed to the controller and not yet answered.
    pub pending_isr: Option<Vec<i32>>,
    /// min.insync.replicas of the topic.
    pub min_insync_replicas: usize,
    /// replica.lag.time.max.ms.
    pub lag_time_max_ms: i64,
    /// First offset written in this leader epoch (followers must reach it to join).
    pub epoch_start_offset: i64,
    /// When this broker took up this leadership (ms).
    pub started_ms: i64,
    /// Followers by broker id.
    pub followers: BTreeMap<i32, FollowerProgress>,
    /// Current high watermark.
    pub high_watermark: i64,
    /// No ISR change is proposed before this time (ms): set when the controller
    /// refused one or could not be reached, so a refused change (a fenced replica that
    /// wants in) is not proposed again on every fetch.
    pub isr_retry_after_ms: i64,
}

impl LeaderState {
    /// A state for a leadership that starts now. Followers are unknown until they fetch
    /// (they count as caught up from now, so none is dropped before it could fetch).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        min_insync_replicas: usize,
        lag_time_max_ms: i64,
        epoch_start_offset: i64,
        high_watermark: i64,
        now_ms: i64,
    ) -> Self {
        let followers = replicas
            .iter()
            .filter(|r| **r != node_id)
            .map(|r| {
                (
                    *r,
                    FollowerProgress {
                        log_end_offset: -1,
                        last_caught_up_ms: now_ms,
                        leader_end_at_last_fetch: -1,
                        last_fetch_ms: -1,
                        log_start_offset: -1,
                    },
                )
            })
            .collect();
        LeaderState {
            node_id,
            leader_epoch,
            partition_epoch,
            replicas,
            isr,
            pending_isr: None,
            min_insync_replicas,
            lag_time_max_ms,
            epoch_start_offset,
            started_ms: now_ms,
            followers,
            high_watermark,
            isr_retry_after_ms: 0,
        }
    }

    /// Applies a committed partition state from the metadata image (same leader
    /// epoch): new replicas (a reassignment), ISR and partition epoch. Clears a pending
    /// ISR change that the image answers.
    pub fn apply_committed(
        &mut self,
        partition_epoch: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        now_ms: i64,
    ) {
        if partition_epoch < self.partition_epoch {
            return;
        }
        if self.pending_isr.as_ref().is_some_and(|p| *p == isr)
            || partition_epoch > self.partition_epoch
        {
            self.pending_isr = None;
        }
        for r in &replicas {
            if *r != self.node_id {
                self.followers.entry(*r).or_insert(FollowerProgress {
                    log_end_offset: -1,
                    last_caught_up_ms: now_ms,
                    leader_end_at_last_fetch: -1,
                    last_fetch_ms: -1,
                    log_start_offset: -1,
                });
            }
        }
        self.followers.retain(|id, _| replicas.contains(id));
        self.partition_epoch = partition_epoch;
        self.replicas = replicas;
        self.isr = isr;
    }

    /// Records a follower's fetch at `fetch_offset` while the leader's log ends at
    /// `leader_end`. Returns false for a broker that is not a follower of this
    /// partition.
    pub fn on_follower_fetch(
        &mut self,
        follower: i32,
        fetch_offset: i64,
        leader_end: i64,
        now_ms: i64,
    ) -> bool {
        let Some(f) = self.followers.get_mut(&follower) else {
            return false;
        };
        if fetch_offset >= leader_end {
            f.last_caught_up_ms = now_ms;
        } else if f.leader_end_at_last_fetch >= 0 && fetch_offset >= f.leader_end_at_last_fetch {
            // Caught up to where the leader was at the previous fetch: it keeps pace.
            f.last_caught_up_ms = f.last_fetch_ms.max(f.last_caught_up_ms);
        }
        f.log_end_offset = fetch_offset;
        f.leader_end_at_last_fetch = leader_end;
        f.last_fetch_ms = now_ms;
        true
    }

    /// Records the log start offset a follower's fetch reported. Returns whether it
    /// moved (a DeleteRecords waiting on the low watermark may be done).
    pub fn record_follower_log_start(&mut self, follower: i32, log_start_offset: i64) -> bool {
        match self.followers.get_mut(&follower) {
            Some(f) if f.log_start_offset != log_start_offset => {
                f.log_start_offset = log_start_offset;
                true
            }
            _ => false,
        }
    }

    /// The low watermark: the smallest log start offset over the leader (`own`) and
    /// the followers of the maximal ISR, which are the replicas that can become leader
    /// (a follower outside it learns the leader's log start from its fetches before it
    /// can rejoin). An ISR follower that has not fetched in this epoch counts as -1.
    /// A DeleteRecords is done when this covers its offset (Kafka's
    /// `lowWatermarkIfLeader`).
    pub fn low_watermark(&self, own: i64) -> i64 {
        self.maximal_isr()
            .into_iter()
            .filter(|r| *r != self.node_id)
            .map(|r| self.followers.get(&r).map_or(-1, |f| f.log_start_offset))
            .fold(own, i64::min)
    }

    /// The ISR the high watermark must respect: committed plus pending additions.
    pub fn maximal_isr(&self) -> Vec<i32> {
        let mut isr = self.isr.clone();
        if let Some(p) = &self.pending_isr {
            for r in p {
                if !isr.contains(r) {
                    isr.push(*r);
                }
            }
        }
        isr
    }

    /// Recomputes the high watermark given the leader's own acknowledgeable offset
    /// (its durable offset under `always`, its log end under `interval`). Returns the
    /// new value if it moved.
    pub fn update_high_watermark(&mut self, leader_offset: i64) -> Option<i64> {
        if self.isr.len() < self.min_insync_replicas {
            return None;
        }
        let mut hw = leader_offset;
        for r in self.maximal_isr() {
            if r == self.node_id {
                continue;
            }
            // An ISR member that has not fetched yet in this epoch holds the HW back.
            let leo = self
                .followers
                .get(&r)
                .map(|f| f.log_end_offset)
                .unwrap_or(-1);
            hw = hw.min(leo);
        }
        if hw > self.high_watermark {
            self.high_watermark = hw;
            Some(hw)
        } else {
            None
        }
    }

    /// The ISR change the leader should propose now, if any and none is in flight:
    /// lagging followers out, caught-up replicas in.
    pub fn isr_change(&self, leader_end: i64, now_ms: i64) -> Option<Vec<i32>> {
        if self.pending_isr.is_some() || now_ms < self.isr_retry_after_ms {
            return None;
        }
        let mut new_isr: Vec<i32> = self
            .isr
            .iter()
            .copied()
            .filter(|r| {
                *r == self.node_id
                    || self.followers.get(r).is_some_and(|f| {
                        now_ms - f.last_caught_up_ms <= self.lag_time_max_ms
                            || f.log_end_offset >= leader_end
                    })
            })
            .collect();
        for (id, f) in &self.followers {
            let joins = !new_isr.contains(id)
                && self.replicas.contains(id)
                && f.log_end_offset >= 0
                && f.log_end_offset >= self.high_watermark
                && f.log_end_offset >= self.epoch_start_offset;
            if joins {
                new_isr.push(*id);
            }
        }
        if !new_isr.contains(&self.node_id) {
            new_isr.insert(0, self.node_id);
        }
        let same = new_isr.len() == self.isr.len() && new_isr.iter().all(|r| self.isr.contains(r));
        (!same).then_some(new_isr)
    }

    /// Whether an acks=all produce may be accepted (KIP-966: enough in-sync replicas).
    pub fn has_min_insync(&self) -> bool {
        self.isr.len() >= self.min_insync_replicas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG_MS: i64 = 30_000;

    fn state(isr: &[i32], min_isr: usize) -> LeaderState {
        LeaderState::new(
            1,
            5,
            10,
            vec![1, 2, 3],
            isr.to_vec(),
            min_isr,
            LAG_MS,
            100,
            100,
            0,
        )
    }

    #[test]
    fn high_watermark_is_the_smallest_offset_over_the_isr_and_waits_for_unknown_followers() {
        let mut s = state(&[1, 2, 3], 1);
        assert_eq!(
            s.update_high_watermark(200),
            None,
            "followers unknown: held at 100"
        );
        s.on_follower_fetch(2, 150, 200, 10);
        assert_eq!(
            s.update_high_watermark(200),
            None,
            "follower 3 still unknown"
        );
        s.on_follower_fetch(3, 180, 200, 10);
        assert_eq!(s.update_high_watermark(200), Some(150));
        s.on_follower_fetch(2, 200, 200, 20);
        assert_eq!(
            s.update_high_watermark(190),
            Some(180),
            "the leader's own durable offset counts"
        );
    }

    #[test]
    fn low_watermark_is_the_smallest_log_start_over_the_leader_and_the_isr() {
        let mut s = state(&[1, 2], 1);
        assert_eq!(
            s.low_watermark(50),
            -1,
            "an ISR follower not yet heard from"
        );
        assert!(s.record_follower_log_start(2, 40));
        assert!(!s.record_follower_log_start(2, 40), "no move, no wake-up");
        assert_eq!(s.low_watermark(50), 40);
        assert!(s.record_follower_log_start(2, 60));
        assert_eq!(s.low_watermark(50), 50, "the leader's own start counts");
        // Replica 3 is outside the ISR: its start does not hold the low watermark.
        assert!(s.record_follower_log_start(3, 0));
        assert_eq!(s.low_watermark(50), 50);
        // Once an addition is in flight it does.
        s.pending_isr = Some(vec![1, 2, 3]);
        assert_eq!(s.low_watermark(50), 0);
        assert!(!s.record_follower_log_start(9, 70), "not a replica");
    }

    #[test]
    fn high_watermark_never_goes_down() {
        let mut s = state(&[1, 2], 1);
        s.on_follower_fetch(2, 150, 200, 10);
        assert_eq!(s.update_high_watermark(200), Some(150));
        s.on_follower_fetch(2, 120, 200, 11); // a truncated follower re-fetching
        assert_eq!(s.update_high_watermark(200), None);
        assert_eq!(s.high_watermark, 150);
    }

    #[test]
    fn high_watermark_does_not_advance_below_min_insync_replicas() {
        let mut s = state(&[1], 2);
        assert!(!s.has_min_insync());
        assert_eq!(
            s.update_high_watermark(500),
            None,
            "an ISR of one with min.insync=2 commits nothing"
        );
        s.apply_committed(11, vec![1, 2, 3], vec![1, 2], 0);
        s.on_follower_fetch(2, 300, 500, 1);
        assert_eq!(s.update_high_watermark(500), Some(300));
    }

    #[test]
    fn a_pending_isr_addition_counts_for_the_high_watermark_before_it_commits() {
        let mut s = state(&[1, 2], 1);
        s.on_follower_fetch(2, 400, 400, 1);
        s.pending_isr = Some(vec![1, 2, 3]);
        s.on_follower_fetch(3, 250, 400, 1);
        assert_eq!(
            s.update_high_watermark(400),
            Some(250),
            "maximal ISR includes 3"
        );
    }

    #[test]
    fn lagging_follower_leaves_the_isr_after_the_lag_time() {
        let mut s = state(&[1, 2, 3], 1);
        s.on_follower_fetch(2, 200, 200, 1_000);
        s.on_follower_fetch(3, 50, 200, 1_000);
        assert_eq!(
            s.isr_change(200, LAG_MS),
            None,
            "within the lag time of the leadership start"
        );
        s.on_follower_fetch(2, 200, 200, 1_000 + LAG_MS);
        assert_eq!(s.isr_change(200, 2_000 + LAG_MS), Some(vec![1, 2]));
    }

    #[test]
    fn no_isr_change_is_proposed_again_before_the_retry_time() {
        let mut s = state(&[1, 2], 1);
        s.on_follower_fetch(3, 100, 100, 1_000);
        assert_eq!(s.isr_change(100, 1_000), Some(vec![1, 2, 3]));
        // The controller refused it (broker 3 fenced): back off.
        s.isr_retry_after_ms = 1_500;
        assert_eq!(s.isr_change(100, 1_499), None, "within the backoff");
        assert_eq!(s.isr_change(100, 1_500), Some(vec![1, 2, 3]), "after it");
    }

    #[test]
    fn a_follower_that_keeps_pace_with_a_busy_leader_stays_in_sync() {
        let mut s = state(&[1, 2], 1);
        // The leader grows by 100 between fetches; the follower always asks for what
        // the leader had at its previous fetch.
        let mut now = 0;
        let mut leader_end = 100;
        for _ in 0..100 {
            now += 1_000;
            s.on_follower_fetch(2, leader_end - 100, leader_end, now);
            leader_end += 100;
        }
        assert_eq!(s.isr_change(leader_end, now + 1), None);
    }

    #[test]
    fn a_caught_up_follower_joins_only_past_the_high_watermark_and_epoch_start() {
        let mut s = state(&[1, 2], 1);
        s.on_follower_fetch(2, 300, 300, 1);
        s.update_high_watermark(300);
        s.on_follower_fetch(3, 90, 300, 1);
        assert_eq!(
            s.isr_change(300, 2),
            None,
            "3 is behind the epoch start and the HW"
        );
        s.on_follower_fetch(3, 300, 300, 3);
        assert_eq!(s.isr_change(300, 4), Some(vec![1, 2, 3]));
        s.pending_isr = Some(vec![1, 2, 3]);
        assert_eq!(s.isr_change(300, 5), None, "one change in flight at a time");
        s.apply_committed(11, vec![1, 2, 3], vec![1, 2, 3], 6);
        assert_eq!(s.pending_isr, None);
        assert_eq!(s.isr, vec![1, 2, 3]);
    }

    #[test]
    fn a_stale_committed_state_is_ignored_and_non_replicas_are_not_followers() {
        let mut s = state(&[1, 2, 3], 1);
        s.apply_committed(3, vec![1], vec![1], 0);
        assert_eq!(s.isr, vec![1, 2, 3]);
        assert!(!s.on_follower_fetch(9, 10, 10, 0));
    }
}
