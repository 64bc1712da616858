//! Broker sessions: what the active controller remembers about each broker's heartbeats.
//!
//! This module owns [`BrokerSessions`], plain in-memory data on the active controller only
//! (never in the log: a new active controller starts every session afresh). It records the
//! last contact of each broker (in the caller's clock, milliseconds), the log index at
//! which the broker's registration was committed (so a heartbeat can tell whether the
//! broker has caught up), and whether the broker is in controlled shutdown. It reads no
//! clock itself: callers pass `now_ms`.

use std::collections::BTreeMap;

use crate::image::MetadataImage;

/// What the active controller knows about one registered broker's liveness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSession {
    /// The registration this session belongs to.
    pub broker_epoch: i64,
    /// When the broker was last heard from (registration or heartbeat), in ms.
    pub last_contact_ms: i64,
    /// Log index of the entry holding the registration, once it is known committed; the
    /// broker is caught up when its metadata offset reaches it.
    pub registered_at_index: Option<u64>,
    /// The broker asked for a controlled shutdown: it gets no new leaderships.
    pub shutting_down: bool,
}

/// The sessions of all registered brokers, kept by the active controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerSessions {
    sessions: BTreeMap<i32, BrokerSession>,
    /// Everything up to this log index was committed when this controller became active;
    /// a registration whose own index is unknown is no later than this.
    activated_at_index: u64,
}

impl BrokerSessions {
    /// No sessions: a controller that is not active (yet).
    pub fn new() -> Self {
        BrokerSessions::default()
    }

    /// Starts the sessions of a newly active controller: every broker registered in
    /// `image` (the committed image at activation) gets a fresh session that starts at
    /// `now_ms`, so a failover does not fence brokers that were heartbeating to the old
    /// controller. Their registrations are committed at or before the image's last
    /// applied index.
    pub fn activate(&mut self, image: &MetadataImage, now_ms: i64) {
        self.activated_at_index = image.last_applied_index;
        self.sessions = image
            .brokers
            .values()
            .map(|b| {
                (
                    b.broker_id,
                    BrokerSession {
                        broker_epoch: b.broker_epoch,
                        last_contact_ms: now_ms,
                        registered_at_index: Some(image.last_applied_index),
                        shutting_down: false,
                    },
                )
            })
            .collect();
    }

    /// Forgets every session (this controller is no longer active).
    pub fn clear(&mut self) {
        self.sessions.clear();
        self.activated_at_index = 0;
    }

    /// Notes that the registration of `broker_id` with `broker_epoch` was committed at
    /// `log_index`. Ignored if the broker registered again since.
    pub fn registration_committed(&mut self, broker_id: i32, broker_epoch: i64, log_index: u64) {
        if let Some(s) = self.sessions.get_mut(&broker_id) {
            if s.broker_epoch == broker_epoch {
                s.registered_at_index = Some(log_index);
            }
        }
    }

    /// The session of `broker_id`, if it has one.
    pub fn get(&self, broker_id: i32) -> Option<&BrokerSession> {
        self.sessions.get(&broker_id)
    }

    /// Whether `broker_id` is in controlled shutdown.
    pub fn is_shutting_down(&self, broker_id: i32) -> bool {
        self.sessions
            .get(&broker_id)
            .is_some_and(|s| s.shutting_down)
    }

    /// A new registration of `broker_id`: its session starts at `now_ms`; the index of
    /// the registration is unknown until [`Self::registration_committed`].
    pub(super) fn registered(&mut self, broker_id: i32, broker_epoch: i64, now_ms: i64) {
        self.sessions.insert(
            broker_id,
            BrokerSession {
                broker_epoch,
                last_contact_ms: now_ms,
                registered_at_index: None,
                shutting_down: false,
            },
        );
    }

    /// The session of a broker registered with `broker_epoch`, created if missing or
    /// belonging to another registration (then its registration is no later than the
    /// activation index, because this controller did not register it).
    pub(super) fn session_mut(
        &mut self,
        broker_id: i32,
        broker_epoch: i64,
        now_ms: i64,
    ) -> &mut BrokerSession {
        let activated_at_index = self.activated_at_index;
        let s = self
            .sessions
            .entry(broker_id)
            .or_insert_with(|| BrokerSession {
                broker_epoch,
                last_contact_ms: now_ms,
                registered_at_index: Some(activated_at_index),
                shutting_down: false,
            });
        if s.broker_epoch != broker_epoch {
            *s = BrokerSession {
                broker_epoch,
                last_contact_ms: now_ms,
                registered_at_index: Some(activated_at_index),
                shutting_down: false,
            };
        }
        s
    }

    pub(super) fn remove(&mut self, broker_id: i32) {
        self.sessions.remove(&broker_id);
    }

    /// Drops the sessions of brokers that are no longer registered in `image`.
    pub(super) fn retain_registered(&mut self, image: &MetadataImage) {
        self.sessions.retain(|id, s| {
            image
                .brokers
                .get(id)
                .is_some_and(|b| b.broker_epoch == s.broker_epoch)
        });
    }
}
