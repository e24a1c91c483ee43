//! The sequence every leg shares once it knows its flow: admit (the flow's
//! connection limit, the registry entry the admin API lists and reload
//! re-checks), audit, relay, log how it ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use ward_api::audit::{AuditEvent, FlowAction};

use super::registry::{Grant, Live, LiveGuard, SourceGuard};
use super::state::ProxyState;
use crate::transport::relay::{self, Counters, End, Sink, Source, Totals};

/// A connection matched to a flow: who it is, for the registry, the logs
/// and the audit trail.
#[derive(Debug, Clone)]
pub struct Matched {
    /// Flow name.
    pub flow: String,
    /// Device id.
    pub device: String,
    /// Peer identity, when the leg has one.
    pub peer: Option<String>,
    /// Serial of the peer's certificate, when it presented one.
    pub peer_serial: Option<String>,
    /// Source address.
    pub src: SocketAddr,
    /// The decision's inputs.
    pub grant: Grant,
}

impl Matched {
    /// An audit record of this connection.
    pub fn event(&self, action: FlowAction, reason: Option<String>) -> AuditEvent {
        AuditEvent::Flow {
            action,
            leg: self.grant.leg(),
            flow: Some(self.flow.clone()),
            device: Some(self.device.clone()),
            peer: self.peer.clone(),
            src: self.src.to_string(),
            dst: match &self.grant {
                Grant::Outbound { dst, .. } => Some(dst.to_string()),
                _ => None,
            },
            reason,
        }
    }
}

/// The audit record of a connection refused before it was matched to an
/// admitted flow: no route, or a policy decision against it.
pub fn refused(
    leg: ward_policy::Leg,
    src: SocketAddr,
    dst: Option<SocketAddr>,
    flow: Option<&str>,
    device: Option<&str>,
    peer: Option<&str>,
    reason: &dyn std::fmt::Display,
) -> AuditEvent {
    AuditEvent::Flow {
        action: FlowAction::Denied,
        leg,
        flow: flow.map(str::to_owned),
        device: device.map(str::to_owned),
        peer: peer.map(str::to_owned),
        src: src.to_string(),
        dst: dst.map(|d| d.to_string()),
        reason: Some(reason.to_string()),
    }
}

/// An admitted connection: counted against its flow's limit and listed in
/// the registry until dropped.
pub struct Admitted {
    _guard: LiveGuard,
    counters: Arc<Counters>,
    totals: Arc<Totals>,
    /// Cancelled when Ward cuts this connection (reload, quarantine, drain).
    pub cancel: CancellationToken,
}

/// Take a connection slot of `src` (`limits.max_connections_per_source`);
/// `None`, logged, when all are taken.
pub fn source_slot(state: &ProxyState, src: SocketAddr) -> Option<SourceGuard> {
    let slot = state
        .registry
        .acquire_source(src.ip(), state.limits.max_connections_per_source);
    if slot.is_none() {
        warn!(%src, reason = "too many connections from this source", "connection refused");
    }
    slot
}

/// Admit `m` if its flow has fewer than `max` connections open. On refusal
/// the flow's denied counter rises and the refusal is logged and audited.
pub fn admit(
    state: &ProxyState,
    m: &Matched,
    max: u32,
    cut: &CancellationToken,
) -> Option<Admitted> {
    let counters = Arc::new(Counters::default());
    let cancel = cut.child_token();
    let live = Live {
        flow: m.flow.clone(),
        grant: m.grant.clone(),
        device: m.device.clone(),
        peer: m.peer.clone(),
        peer_serial: m.peer_serial.clone(),
        source: m.src,
        started: SystemTime::now(),
        counters: counters.clone(),
        cancel: cancel.clone(),
    };
    let Some(guard) = state.registry.open(live, max) else {
        state.registry.denied(&m.flow);
        warn!(
            reason = "flow connection limit reached",
            limit = max,
            "connection refused"
        );
        state.audit.record(m.event(
            FlowAction::Denied,
            Some(format!("flow connection limit ({max}) reached")),
        ));
        return None;
    };
    Some(Admitted {
        _guard: guard,
        counters,
        totals: state.registry.flow(&m.flow).bytes.clone(),
        cancel,
    })
}

impl Admitted {
    /// Relay between `near` (device or client side) and `far` until both
    /// ends close, the idle timeout, an error or a cut; log how it ended.
    pub async fn relay(
        self,
        near: (impl Source, impl Sink),
        far: (impl Source, impl Sink),
        idle: Duration,
    ) {
        let end = relay::relay(near, far, idle, self.counters, self.totals, self.cancel).await;
        match end {
            End::Done => debug!("closed"),
            End::Idle => debug!("closed: idle timeout"),
            End::Cancelled => info!("closed: cut by the gateway"),
            End::Error(e) => debug!(error = %e, "closed by error"),
        }
    }
}

/// A TCP connect to a far end failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Refused, unreachable, or another socket error.
    #[error("connect to {addr} failed: {source}")]
    Failed {
        /// Far address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Not connected within the flow's `connect_timeout`.
    #[error("connect to {0} timed out")]
    TimedOut(SocketAddr),
}

/// TCP connect within `within`, with Nagle off (clinical protocols are
/// request/response; latency matters more than packet count).
pub async fn tcp_connect(addr: SocketAddr, within: Duration) -> Result<TcpStream, ConnectError> {
    let s = tokio::time::timeout(within, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::TimedOut(addr))?
        .map_err(|source| ConnectError::Failed { addr, source })?;
    let _ = s.set_nodelay(true);
    Ok(s)
}
