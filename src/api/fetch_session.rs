//! Incremental fetch sessions (KIP-227): the broker remembers what a client fetches,
//! so later requests carry only the changes and responses only partitions with news.
//!
//! Request `(session_id, epoch)`: `(0, -1)` is a sessionless full fetch; `(0, 0)`
//! opens a session; `(S, -1)` closes S; `(S, 0)` closes S and opens a new one;
//! `(S, E>0)` is an incremental fetch that must carry S's next epoch.
//!
//! A session keeps its partitions in the order it reads them, and a partition that
//! returned records moves to the back (as in Kafka's `FetchSession`), so with more
//! partitions with data than one response holds, each gets its turn.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use uuid::Uuid;

/// Session epoch meaning "full fetch, no session".
pub const FINAL_EPOCH: i32 = -1;
/// Session epoch that opens a new session.
pub const INITIAL_EPOCH: i32 = 0;
/// A session unused this long may be evicted to make room.
pub const SESSION_IDLE_EVICTION: Duration = Duration::from_secs(120);

/// How a fetch request names its topics: by name before v13, by id from v13.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TopicKey {
    /// By name.
    Name(String),
    /// By topic id.
    Id(Uuid),
}

/// What the session remembers of one partition.
#[derive(Clone, Debug)]
pub struct SessionPartition {
    /// Topic as the client names it.
    pub topic: TopicKey,
    /// Partition index.
    pub partition: i32,
    /// Next offset the client wants.
    pub fetch_offset: i64,
    /// Byte limit for this partition.
    pub max_bytes: i32,
    /// Leader epoch the client believes current (-1: unknown).
    pub current_leader_epoch: i32,
    /// High watermark last sent (-1: never sent).
    pub last_high_watermark: i64,
    /// Log start offset last sent.
    pub last_log_start_offset: i64,
    /// Epoch of the last batch the fetcher holds (v12+, -1: unknown): the leader
    /// answers a follower whose log diverges from its own with the diverging epoch.
    pub last_fetched_epoch: i32,
    /// The fetcher's own log start offset (followers, v5+; -1 from consumers): what
    /// the leader's low watermark is made of.
    pub fetcher_log_start_offset: i64,
}

/// What one response told the client about one partition of a session.
#[derive(Clone, Debug)]
pub struct Sent {
    /// Topic as the client names it.
    pub topic: TopicKey,
    /// Partition index.
    pub partition: i32,
    /// High watermark sent (-1 after an error, so the partition is sent again).
    pub high_watermark: i64,
    /// Log start offset sent.
    pub log_start_offset: i64,
    /// Whether the response carried records for it.
    pub had_records: bool,
}

struct Session {
    next_epoch: i32,
    partitions: Vec<SessionPartition>,
    last_used: Instant,
}

impl Session {
    /// Position of each partition in `partitions`.
    fn index(&self) -> HashMap<(TopicKey, i32), usize> {
        self.partitions
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.topic.clone(), p.partition), i))
            .collect()
    }
}

/// A session's outcome for one request.
pub enum SessionUse {
    /// Full fetch; answer every requested partition. `session_id` is 0 when no
    /// session was opened.
    Full { session_id: i32 },
    /// Incremental fetch over these partitions; answer only those with news.
    Incremental {
        session_id: i32,
        partitions: Vec<SessionPartition>,
    },
    /// The request's session is unknown or its epoch wrong.
    Error(ResponseError),
}

/// The broker's fetch sessions, bounded by `max.incremental.fetch.session.cache.slots`.
pub struct FetchSessionCache {
    max_slots: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    sessions: HashMap<i32, Session>,
}

impl FetchSessionCache {
    /// An empty cache with room for `max_slots` sessions.
    pub fn new(max_slots: usize) -> Self {
        FetchSessionCache {
            max_slots,
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a request's session fields. `requested` are the partitions in the
    /// request (adds and updates for an incremental fetch), `forgotten` are removed.
    pub fn begin(
        &self,
        session_id: i32,
        epoch: i32,
        requested: Vec<SessionPartition>,
        forgotten: &[(TopicKey, i32)],
    ) -> SessionUse {
        let mut inner = self.lock();
        if epoch == FINAL_EPOCH || epoch == INITIAL_EPOCH {
            if session_id != 0 {
                inner.sessions.remove(&session_id);
            }
            if epoch == FINAL_EPOCH {
                return SessionUse::Full { session_id: 0 };
            }
            let Some(id) = self.allocate(&mut inner) else {
                return SessionUse::Full { session_id: 0 };
            };
            inner.sessions.insert(
                id,
                Session {
                    next_epoch: 1,
                    partitions: requested,
                    last_used: Instant::now(),
                },
            );
            return SessionUse::Full { session_id: id };
        }
        let Some(session) = inner.sessions.get_mut(&session_id) else {
            return SessionUse::Error(ResponseError::FetchSessionIdNotFound);
        };
        if session.next_epoch != epoch {
            return SessionUse::Error(ResponseError::InvalidFetchSessionEpoch);
        }
        session.next_epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
        session.last_used = Instant::now();
        if !forgotten.is_empty() {
            let forgotten: HashSet<(&TopicKey, i32)> =
                forgotten.iter().map(|(t, i)| (t, *i)).collect();
            session
                .partitions
                .retain(|p| !forgotten.contains(&(&p.topic, p.partition)));
        }
        let mut index = session.index();
        for r in requested {
            match index.get(&(r.topic.clone(), r.partition)) {
                Some(&i) => {
                    let p = &mut session.partitions[i];
                    p.fetch_offset = r.fetch_offset;
                    p.max_bytes = r.max_bytes;
                    p.current_leader_epoch = r.current_leader_epoch;
                    p.last_fetched_epoch = r.last_fetched_epoch;
                    p.fetcher_log_start_offset = r.fetcher_log_start_offset;
                }
                None => {
                    index.insert((r.topic.clone(), r.partition), session.partitions.len());
                    session.partitions.push(r);
                }
            }
        }
        if session.partitions.is_empty() {
            // Nothing left to fetch: the session closes and this fetch is sessionless
            // (answered with session id 0), as in Kafka's FetchManager.
            inner.sessions.remove(&session_id);
            return SessionUse::Full { session_id: 0 };
        }
        SessionUse::Incremental {
            session_id,
            partitions: session.partitions.clone(),
        }
    }

    /// Records what a response told the client, so the next incremental fetch
    /// reports only changes, and moves the partitions that returned records to the
    /// back of the session's order.
    pub fn record_sent(&self, session_id: i32, sent: &[Sent]) {
        if session_id == 0 || sent.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let Some(session) = inner.sessions.get_mut(&session_id) else {
            return;
        };
        let index = session.index();
        let mut served = HashSet::new();
        for s in sent {
            if let Some(&i) = index.get(&(s.topic.clone(), s.partition)) {
                let p = &mut session.partitions[i];
                p.last_high_watermark = s.high_watermark;
                p.last_log_start_offset = s.log_start_offset;
                if s.had_records {
                    served.insert(i);
                }
            }
        }
        if !served.is_empty() {
            let (back, front): (Vec<_>, Vec<_>) = std::mem::take(&mut session.partitions)
                .into_iter()
                .enumerate()
                .partition(|(i, _)| served.contains(i));
            session.partitions = front.into_iter().chain(back).map(|(_, p)| p).collect();
        }
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn allocate(&self, inner: &mut Inner) -> Option<i32> {
        if self.max_slots == 0 {
            return None;
        }
        if inner.sessions.len() >= self.max_slots {
            let oldest = inner
                .sessions
                .iter()
                .filter(|(_, s)| s.last_used.elapsed() >= SESSION_IDLE_EVICTION)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id)?;
            inner.sessions.remove(&oldest);
        }
        // Random ids, as Kafka's: after a restart, a client closing its old session
        // must not close another client's new one.
        loop {
            let id = (uuid::Uuid::new_v4().as_u128() as u32 & i32::MAX as u32) as i32;
            if id != 0 && !inner.sessions.contains_key(&id) {
                return Some(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(topic: &str, p: i32, offset: i64) -> SessionPartition {
        SessionPartition {
            last_fetched_epoch: -1,
            fetcher_log_start_offset: -1,
            topic: TopicKey::Name(topic.into()),
            partition: p,
            fetch_offset: offset,
            max_bytes: 1024,
            current_leader_epoch: -1,
            last_high_watermark: -1,
            last_log_start_offset: -1,
        }
    }

    #[test]
    fn a_session_opens_then_serves_incremental_fetches_in_epoch_order() {
        let cache = FetchSessionCache::new(10);
        let SessionUse::Full { session_id } =
            cache.begin(0, 0, vec![part("a", 0, 0), part("a", 1, 0)], &[])
        else {
            panic!("expected a full fetch")
        };
        assert_ne!(session_id, 0);
        // Epoch 1 adds nothing: both partitions still in the session.
        match cache.begin(session_id, 1, vec![], &[]) {
            SessionUse::Incremental { partitions, .. } => assert_eq!(partitions.len(), 2),
            _ => panic!("expected incremental"),
        }
        // Epoch 2 updates one offset and forgets the other.
        match cache.begin(
            session_id,
            2,
            vec![part("a", 0, 5)],
            &[(TopicKey::Name("a".into()), 1)],
        ) {
            SessionUse::Incremental { partitions, .. } => {
                assert_eq!(partitions.len(), 1);
                assert_eq!(partitions[0].fetch_offset, 5);
            }
            _ => panic!("expected incremental"),
        }
        // Replaying epoch 2 is refused.
        assert!(matches!(
            cache.begin(session_id, 2, vec![], &[]),
            SessionUse::Error(ResponseError::InvalidFetchSessionEpoch)
        ));
        // Forgetting the last partition closes the session; the fetch is sessionless.
        assert_eq!(cache.len(), 1);
        assert!(matches!(
            cache.begin(session_id, 3, vec![], &[(TopicKey::Name("a".into()), 0)]),
            SessionUse::Full { session_id: 0 }
        ));
        assert_eq!(cache.len(), 0);
        assert!(matches!(
            cache.begin(session_id, 4, vec![], &[]),
            SessionUse::Error(ResponseError::FetchSessionIdNotFound)
        ));
    }

    #[test]
    fn unknown_session_and_final_epoch() {
        let cache = FetchSessionCache::new(10);
        assert!(matches!(
            cache.begin(42, 1, vec![], &[]),
            SessionUse::Error(ResponseError::FetchSessionIdNotFound)
        ));
        assert!(matches!(
            cache.begin(0, -1, vec![], &[]),
            SessionUse::Full { session_id: 0 }
        ));
        let SessionUse::Full { session_id } = cache.begin(0, 0, vec![], &[]) else {
            panic!()
        };
        // Closing it.
        assert!(matches!(
            cache.begin(session_id, -1, vec![], &[]),
            SessionUse::Full { session_id: 0 }
        ));
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_opens_no_session_rather_than_evicting_a_busy_one() {
        let cache = FetchSessionCache::new(1);
        assert!(matches!(
            cache.begin(0, 0, vec![], &[]),
            SessionUse::Full { session_id } if session_id > 0
        ));
        assert!(matches!(
            cache.begin(0, 0, vec![], &[]),
            SessionUse::Full { session_id: 0 }
        ));
        assert_eq!(cache.len(), 1);
    }

    fn sent(topic: &str, p: i32, had_records: bool) -> Sent {
        Sent {
            topic: TopicKey::Name(topic.into()),
            partition: p,
            high_watermark: 10,
            log_start_offset: 0,
            had_records,
        }
    }

    fn order(cache: &FetchSessionCache, session_id: i32, epoch: i32) -> Vec<i32> {
        match cache.begin(session_id, epoch, vec![], &[]) {
            SessionUse::Incremental { partitions, .. } => {
                partitions.iter().map(|p| p.partition).collect()
            }
            _ => panic!("expected incremental"),
        }
    }

    #[test]
    fn partitions_that_returned_records_go_to_the_back_of_the_session() {
        let cache = FetchSessionCache::new(10);
        let parts = (0..4).map(|i| part("a", i, 0)).collect();
        let SessionUse::Full { session_id } = cache.begin(0, 0, parts, &[]) else {
            panic!("expected a full fetch")
        };
        // The first response filled its budget with partitions 0 and 1.
        cache.record_sent(
            session_id,
            &[sent("a", 0, true), sent("a", 1, true), sent("a", 2, false)],
        );
        assert_eq!(order(&cache, session_id, 1), vec![2, 3, 0, 1]);
        // Then 2 and 0 had records: 3 and 1 lead, the served ones follow in order.
        cache.record_sent(session_id, &[sent("a", 2, true), sent("a", 0, true)]);
        assert_eq!(order(&cache, session_id, 2), vec![3, 1, 2, 0]);
    }

    #[test]
    fn session_ids_are_not_a_sequence() {
        let cache = FetchSessionCache::new(100);
        let ids: Vec<i32> = (0..20)
            .map(|_| match cache.begin(0, 0, vec![], &[]) {
                SessionUse::Full { session_id } => session_id,
                _ => panic!("expected a full fetch"),
            })
            .collect();
        assert!(ids.iter().all(|id| *id > 0));
        let distinct: HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        assert!(ids.windows(2).any(|w| w[1] != w[0] + 1));
    }
}
