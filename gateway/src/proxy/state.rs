//! What every connection task of the data path reads: the plan and TLS
//! material in force (receivers of the control layer's `watch` channels),
//! the registry of live connections, limits, the QUIC pool, the clock and the
//! audit trail.

use std::sync::Arc;

use tokio::sync::{Semaphore, watch};
use tracing::warn;
use ward_api::audit::{AuditEvent, FlowAction};
use ward_policy::{Denied, Plan};

use super::registry::{Grant, Live, Registry, far_of, server_of};
use crate::audit::Audit;
use crate::config::Limits;
use crate::transport::quic::QuicPool;
use crate::transport::tls::TlsMaterial;

/// The clock of maintenance windows.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// System time.
    System,
    /// System time shifted by this many seconds: a clock that started at
    /// `fake_now` and runs (tests only).
    Shifted(i64),
}

impl Clock {
    /// A clock that reads `unix_secs` now and runs from there.
    pub fn starting_at(unix_secs: i64) -> Clock {
        Clock::Shifted(unix_secs - jiff::Timestamp::now().as_second())
    }

    /// Now.
    pub fn now(self) -> jiff::Timestamp {
        let now = jiff::Timestamp::now();
        match self {
            Clock::System => now,
            Clock::Shifted(secs) => now
                .checked_add(jiff::SignedDuration::from_secs(secs))
                .unwrap_or(now),
        }
    }
}

/// The data path's view of a running gateway, shared by every connection task.
pub struct ProxyState {
    plan: watch::Receiver<Arc<Plan>>,
    tls: watch::Receiver<Arc<TlsMaterial>>,
    /// Live connections, flow statistics, handshake failures.
    pub registry: Arc<Registry>,
    /// Connection limits from the configuration.
    pub limits: Limits,
    /// Handshakes in progress (TLS and QUIC together), at most `limits.max_handshakes`.
    pub(crate) handshakes: Semaphore,
    /// Outgoing QUIC connections, one per peer gateway.
    pub quic: QuicPool,
    /// The clock of maintenance windows.
    pub clock: Clock,
    /// The audit trail.
    pub audit: Arc<Audit>,
}

/// Why re-checking took a live connection away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The new plan decides against it.
    Denied(Denied),
    /// The new plan sends the same source and destination to another flow.
    Rerouted(String),
    /// The flow now reaches another target (a service or device moved).
    Moved {
        /// Where the connection goes.
        from: String,
        /// Where the flow goes now.
        to: String,
    },
    /// The peer's certificate is on the CRL now in force.
    Certificate,
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Revoked::Denied(d) => write!(f, "no longer allowed: {d}"),
            Revoked::Rerouted(flow) => write!(f, "no longer allowed: now flow {flow:?}"),
            Revoked::Moved { from, to } => {
                write!(f, "the flow's target moved: now {to}, was {from}")
            }
            Revoked::Certificate => f.write_str("peer certificate revoked"),
        }
    }
}

impl ProxyState {
    /// State for a gateway whose plan and TLS material come from `plan` and `tls`.
    pub fn new(
        plan: watch::Receiver<Arc<Plan>>,
        tls: watch::Receiver<Arc<TlsMaterial>>,
        limits: Limits,
        clock: Clock,
        quic: QuicPool,
        audit: Arc<Audit>,
    ) -> ProxyState {
        ProxyState {
            plan,
            tls,
            registry: Arc::default(),
            handshakes: Semaphore::new(limits.max_handshakes as usize),
            limits,
            quic,
            clock,
            audit,
        }
    }

    /// The plan in force.
    pub fn plan(&self) -> Arc<Plan> {
        self.plan.borrow().clone()
    }

    /// The TLS material in force.
    pub fn tls(&self) -> Arc<TlsMaterial> {
        self.tls.borrow().clone()
    }

    /// A receiver of the TLS material in force, for tasks that follow changes.
    pub fn tls_receiver(&self) -> watch::Receiver<Arc<TlsMaterial>> {
        self.tls.clone()
    }

    /// Take the decision that admitted `live` again, on `plan` and `tls`.
    fn still_allowed(&self, plan: &Plan, tls: &TlsMaterial, live: &Live) -> Result<(), Revoked> {
        if live
            .peer_serial
            .as_deref()
            .is_some_and(|s| tls.is_revoked(s))
        {
            return Err(Revoked::Certificate);
        }
        let peer = live.peer.as_deref().unwrap_or("");
        // The flow the new plan gives, where it goes now, and where the
        // connection went when admitted.
        let (flow, now, then) = match &live.grant {
            Grant::Outbound { dst, far } => {
                let f = plan
                    .route(live.source.ip(), *dst)
                    .map_err(Revoked::Denied)?;
                (f.name.as_str(), far_of(&f.target), far.clone())
            }
            Grant::Tunnel { device, server } => {
                let f = plan
                    .authorize_tunnel(peer, &live.flow, device)
                    .map_err(Revoked::Denied)?;
                (f.name.as_str(), server_of(f), server.clone())
            }
            Grant::Access { listener, target } => {
                let a = plan
                    .authorize_client(peer, *listener, self.clock.now())
                    .map_err(Revoked::Denied)?;
                (a.flow.as_str(), a.target.to_string(), target.to_string())
            }
        };
        if flow != live.flow {
            return Err(Revoked::Rerouted(flow.to_owned()));
        }
        if now != then {
            return Err(Revoked::Moved {
                from: then,
                to: now,
            });
        }
        Ok(())
    }

    /// Re-check every live connection against the plan and TLS material in
    /// force, with the policy's own decision functions, and cut (and audit)
    /// each one no longer allowed; also closes pooled QUIC connections to
    /// revoked peers. Returns how many were cut.
    pub async fn recheck(&self) -> usize {
        let (plan, tls) = (self.plan(), self.tls());
        let mut cut = 0;
        for live in self.registry.snapshot() {
            if live.cancel.is_cancelled() {
                continue; // already cut (a concurrent re-check, or shutdown)
            }
            let Err(why) = self.still_allowed(&plan, &tls, &live) else {
                continue;
            };
            live.cancel.cancel();
            cut += 1;
            let leg = live.grant.leg();
            warn!(flow = %live.flow, %leg, src = %live.source, peer = live.peer.as_deref().unwrap_or(""), reason = %why, "closing connection");
            self.audit.record(AuditEvent::Flow {
                action: FlowAction::Closed,
                leg,
                flow: Some(live.flow.clone()),
                device: Some(live.device.clone()),
                peer: live.peer.clone(),
                src: live.source.to_string(),
                dst: match &live.grant {
                    Grant::Outbound { dst, .. } => Some(dst.to_string()),
                    _ => None,
                },
                reason: Some(why.to_string()),
            });
        }
        self.quic.close_revoked(&tls).await;
        cut
    }
}
