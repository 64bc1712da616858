//! Broker heartbeats: keep this broker's session with the active controller alive,
//! report how far it has applied the metadata log (the controller unfences a broker
//! once it has caught up), and carry the controlled-shutdown request on SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_raft::controller::{
    ControllerError, ControllerRequest, ControllerResponse, HeartbeatReply,
};
use tokio::sync::watch;

use crate::broker::Broker;
use crate::cluster::registration;

/// Longest a single heartbeat may wait for the controller's answer.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a SIGTERM waits for the controller to move this broker's leaderships away.
pub const CONTROLLED_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// This broker's view of its own session, updated by every heartbeat.
pub struct Session {
    fenced: AtomicBool,
    want_shutdown: AtomicBool,
    state: watch::Sender<Option<HeartbeatReply>>,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            fenced: AtomicBool::new(true),
            want_shutdown: AtomicBool::new(false),
            state: watch::Sender::new(None),
        }
    }
}

impl Session {
    /// Whether the controller last said this broker is fenced.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    fn record(&self, reply: HeartbeatReply) {
        self.fenced.store(reply.is_fenced, Ordering::Release);
        self.state.send_replace(Some(reply));
    }

    /// Waits until the controller reports this broker unfenced.
    pub async fn wait_unfenced(&self, timeout: Duration) -> bool {
        let mut rx = self.state.subscribe();
        tokio::time::timeout(
            timeout,
            rx.wait_for(|r| r.as_ref().is_some_and(|r| !r.is_fenced)),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }
}

/// Sends one heartbeat; re-registers if the controller forgot this broker's epoch.
pub async fn beat(broker: &Broker) -> Result<HeartbeatReply, String> {
    let session = &broker.session;
    let req = ControllerRequest::BrokerHeartbeat {
        broker_id: broker.config.node_id,
        broker_epoch: broker.broker_epoch(),
        current_metadata_offset: broker.image().last_applied_index,
        want_fence: false,
        want_shutdown: session.want_shutdown.load(Ordering::Acquire),
    };
    match broker
        .quorum
        .submit_with_timeout(req, HEARTBEAT_TIMEOUT)
        .await
    {
        Ok(ControllerResponse::BrokerHeartbeat(Ok(reply))) => {
            session.record(reply.clone());
            Ok(reply)
        }
        Ok(ControllerResponse::BrokerHeartbeat(Err(ControllerError::StaleBrokerEpoch(msg)))) => {
            tracing::warn!(
                "controller no longer knows this broker's epoch ({msg}); registering again"
            );
            registration::register(broker)
                .await
                .map(|_| HeartbeatReply {
                    is_caught_up: false,
                    is_fenced: true,
                    should_shut_down: false,
                })
        }
        Ok(ControllerResponse::BrokerHeartbeat(Err(e))) => Err(format!("heartbeat refused: {e}")),
        Ok(other) => Err(format!("unexpected controller answer {other:?}")),
        Err(e) => Err(format!("heartbeat failed: {e}")),
    }
}

/// Heartbeats every `broker.heartbeat.interval.ms` until shutdown.
pub async fn run(broker: Arc<Broker>) {
    let mut shutdown = broker.shutdown_signal();
    let mut ticker = tokio::time::interval(broker.config.broker_heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        match beat(&broker).await {
            Ok(reply) => {
                if failing {
                    tracing::info!(
                        fenced = reply.is_fenced,
                        "heartbeats reach the controller again"
                    );
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("{e}");
                }
                failing = true;
            }
        }
    }
}

/// Controlled shutdown: asks the controller to move this broker's leaderships away and
/// waits (bounded) until it says the broker leads nothing that could move.
pub async fn controlled_shutdown(broker: &Broker) {
    broker.session.want_shutdown.store(true, Ordering::Release);
    let deadline = tokio::time::Instant::now() + CONTROLLED_SHUTDOWN_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        match beat(broker).await {
            Ok(reply) if reply.should_shut_down => {
                tracing::info!("controlled shutdown: leaderships moved away");
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("controlled shutdown heartbeat: {e}"),
        }
        tokio::time::sleep(
            broker
                .config
                .broker_heartbeat_interval
                .min(Duration::from_millis(500)),
        )
        .await;
    }
    tracing::warn!(
        "controlled shutdown did not complete in {CONTROLLED_SHUTDOWN_TIMEOUT:?}; stopping anyway"
    );
}
