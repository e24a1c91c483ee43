//! The outbound leg: a device's cleartext connection, routed by (source,
//! destination asked for) to its flow, carried through a `ward/1` tunnel to
//! the peer gateway (TLS over TCP, or a stream of the pooled QUIC
//! connection), or as TLS to a server that speaks TLS itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};
use ward_api::audit::FlowAction;
use ward_policy::model::Transport;
use ward_policy::{Leg, OutboundFlow, Target};

use super::conn::{self, ConnectError, Matched, tcp_connect};
use super::handshake::{self, Expect};
use super::registry::{Grant, far_of};
use super::state::ProxyState;
use crate::transport::bufio::ChunkedTcp;
use crate::transport::frame::{self, Answer, DenyReason, Open};
use crate::transport::quic::QuicError;
use crate::transport::relay;
use crate::transport::tls::{TlsError, TlsMaterial};

/// Why the far end of an outbound flow could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FarError {
    /// TCP connect failed or timed out.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The TLS handshake failed.
    #[error("tls handshake with {addr} failed: {source}")]
    Handshake {
        /// Far address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake did not complete within `limits.handshake_timeout`.
    #[error("tls handshake with {0} timed out")]
    HandshakeTimeout(SocketAddr),
    /// The TLS material gives no usable client configuration.
    #[error("tls configuration: {0}")]
    Tls(#[from] TlsError),
    /// The service's `server_name` is not a valid TLS server name.
    #[error("bad server name {name:?}: {reason}")]
    ServerName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// No QUIC stream to the peer gateway.
    #[error("quic: {0}")]
    Quic(#[from] QuicError),
    /// The peer gateway did not answer the open frame.
    #[error("peer {peer} did not answer the open frame: {reason}")]
    NoAnswer {
        /// Peer identity.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The peer gateway refused the flow.
    #[error("peer {peer} denied the flow: {reason}")]
    Denied {
        /// Peer identity.
        peer: String,
        /// Its reason.
        reason: DenyReason,
    },
}

/// The far end of an outbound flow. The TLS stream is boxed: it is over a
/// kilobyte, the QUIC pair 64 bytes.
enum Far {
    Tls(Box<TlsStream<ChunkedTcp>>),
    Quic(quinn::SendStream, quinn::RecvStream),
}

/// Serve one device connection accepted by an outbound listener; `dst` is
/// the destination the device asked for (the listener's address).
pub async fn serve(
    stream: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    state: Arc<ProxyState>,
    cut: CancellationToken,
) {
    let plan = state.plan();
    let flow = match plan.route(src.ip(), dst) {
        Ok(f) => f.clone(),
        Err(denied) => {
            warn!(%src, %dst, reason = %denied, "device connection refused");
            state.audit.record(conn::refused(
                Leg::Outbound,
                src,
                Some(dst),
                None,
                None,
                None,
                &denied,
            ));
            return;
        }
    };
    drop(plan);
    let peer = match &flow.target {
        Target::Tunnel { identity, .. } => identity.clone(),
        Target::Tls { server_name, .. } => server_name.clone(),
    };
    let span = info_span!("tunnel", flow = %flow.name, %peer, src = %src, leg = %Leg::Outbound);
    async move {
        let Some(_slot) = conn::source_slot(&state, src) else {
            state.registry.denied(&flow.name);
            return;
        };
        // A return flow from a TLS server: its TLS ends here, with its
        // certificate required and checked against its service's CA and name.
        let (near, near_serial) = match &flow.client_tls {
            None => (Near::Plain(stream), None),
            Some(t) => {
                let config = match state.tls().return_server(std::path::Path::new(&t.ca)) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "return flow refused: no TLS configuration");
                        return;
                    }
                };
                let expect = Expect::Name(&t.server_name);
                let Some((tls, who)) =
                    handshake::accept_tls(&state, config, stream, src, Leg::Outbound, expect).await
                else {
                    state.registry.denied(&flow.name);
                    return;
                };
                (Near::Tls(Box::new(tls)), who.serial)
            }
        };
        let m = Matched {
            flow: flow.name.clone(),
            device: flow.device.clone(),
            peer: Some(peer),
            peer_serial: near_serial,
            src,
            grant: Grant::Outbound {
                dst,
                far: far_of(&flow.target),
            },
        };
        let Some(admitted) = conn::admit(&state, &m, flow.max_connections, &cut) else {
            return;
        };
        let far = match connect_far(&flow, src, &state).await {
            Ok(f) => f,
            Err(e) => {
                state.registry.denied(&flow.name);
                warn!(error = %e, "flow not opened");
                state
                    .audit
                    .record(m.event(FlowAction::Failed, Some(e.to_string())));
                return;
            }
        };
        state.audit.record(m.event(FlowAction::Allowed, None));
        debug!("far end connected");
        let guard = Guard::of(&state, &m, flow.guard.clone(), Some(flow.protocol));
        match near {
            Near::Plain(s) => {
                relay_far(
                    admitted,
                    relay::io(s.into_split()),
                    far,
                    flow.idle_timeout,
                    guard,
                )
                .await
            }
            Near::Tls(s) => {
                relay_far(
                    admitted,
                    relay::io(tokio::io::split(*s)),
                    far,
                    flow.idle_timeout,
                    guard,
                )
                .await
            }
        }
    }
    .instrument(span)
    .await
}

/// The near end of an outbound connection: a device's cleartext, or a TLS
/// server's TLS on a return flow (boxed, like [`Far::Tls`]).
enum Near {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<ChunkedTcp>>),
}

/// A flow's guard for one connection.
pub(super) struct Guard {
    guard: Option<(ward_policy::model::Guard, crate::guard::stream::Report)>,
    monitor: bool,
    facts: Arc<crate::guard::facts::Facts>,
    /// No guard, but learning: the protocol whose facts to note.
    learn: Option<ward_policy::model::Guard>,
}

impl Guard {
    /// The flow's `guard`, if any; else, in monitor mode with learning on
    /// and a `protocol` a guard can read, that protocol's facts only.
    pub(super) fn of(
        state: &Arc<ProxyState>,
        m: &conn::Matched,
        guard: Option<ward_policy::model::Guard>,
        protocol: Option<ward_policy::model::Protocol>,
    ) -> Guard {
        use ward_policy::model::{self as p, Protocol};
        let plan = state.plan();
        let monitor = plan.mode == p::Mode::Monitor;
        let learn = match protocol {
            _ if guard.is_some() || !monitor || !plan.observe => None,
            Some(Protocol::Dicom) => Some(p::Guard::Dicom(p::DicomGuard::default())),
            Some(Protocol::Hl7) => Some(p::Guard::Hl7(p::Hl7Guard::default())),
            Some(Protocol::Modbus) => Some(p::Guard::Modbus(p::ModbusGuard::default())),
            _ => None,
        };
        let stats = state.registry.flow(&m.flow);
        Guard {
            monitor,
            facts: stats.facts.clone(),
            guard: guard.map(|g| (g, guard_report(state, m, stats))),
            learn,
        }
    }

    /// Wrap a connection's two directions.
    pub(super) fn wrap<U: relay::Source, D: relay::Source>(
        self,
        up: U,
        down: D,
    ) -> (
        crate::guard::stream::GuardedUp<U>,
        crate::guard::stream::Injecting<D>,
    ) {
        use crate::guard::stream;
        match self.learn {
            Some(protocol) => stream::learn(up, down, protocol, self.facts),
            None => stream::wrap(up, down, self.guard, self.monitor, Some(self.facts)),
        }
    }
}

/// Each message the guard refuses (or would): counted, logged, audited.
fn guard_report(
    state: &Arc<ProxyState>,
    m: &conn::Matched,
    stats: Arc<super::registry::FlowStats>,
) -> crate::guard::stream::Report {
    let (audit, m) = (state.audit.clone(), m.clone());
    let monitor = state.plan().mode == ward_policy::model::Mode::Monitor;
    Arc::new(move |reason: &str| {
        stats
            .guard_refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        warn!(reason, "guard refused a message");
        let action = if monitor {
            FlowAction::GuardWouldRefuse
        } else {
            FlowAction::GuardRefused
        };
        audit.record(m.event(action, Some(reason.to_owned())));
    })
}

async fn relay_far(
    admitted: conn::Admitted,
    near: (impl relay::Source, impl relay::Sink),
    far: Far,
    idle: Duration,
    g: Guard,
) {
    match far {
        Far::Tls(s) => {
            let (fr, fw) = relay::io(tokio::io::split(*s));
            let (up, down) = g.wrap(near.0, fr);
            admitted.relay((up, near.1), (down, fw), idle).await
        }
        Far::Quic(send, recv) => {
            let (up, down) = g.wrap(near.0, recv);
            admitted.relay((up, near.1), (down, send), idle).await
        }
    }
}

async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    addr: SocketAddr,
    connect_within: Duration,
    handshake_within: Duration,
) -> Result<TlsStream<ChunkedTcp>, FarError> {
    let tcp = tcp_connect(addr, connect_within).await?;
    timeout(
        handshake_within,
        TlsConnector::from(config).connect(name, ChunkedTcp::new(tcp)),
    )
    .await
    .map_err(|_| FarError::HandshakeTimeout(addr))?
    .map_err(|source| FarError::Handshake { addr, source })
}

/// Send the open frame and wait for the answer.
async fn open_and_wait<R, W>(
    r: &mut R,
    w: &mut W,
    open: &Open,
    peer: &str,
    within: Duration,
) -> Result<(), FarError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let no_answer = |reason: String| FarError::NoAnswer {
        peer: peer.to_owned(),
        reason,
    };
    frame::write_frame(w, &open.encode())
        .await
        .map_err(|e| no_answer(e.to_string()))?;
    let body = timeout(within, frame::read_frame(r))
        .await
        .map_err(|_| no_answer("timed out".into()))?
        .map_err(|e| no_answer(e.to_string()))?;
    match Answer::decode(&body).map_err(|e| no_answer(e.to_string()))? {
        Answer::Accept => Ok(()),
        Answer::Deny(reason) => Err(FarError::Denied {
            peer: peer.to_owned(),
            reason,
        }),
    }
}

async fn connect_far(
    flow: &OutboundFlow,
    src: SocketAddr,
    state: &ProxyState,
) -> Result<Far, FarError> {
    let tls = state.tls();
    let hs = state.limits.handshake_timeout;
    match &flow.target {
        Target::Tunnel {
            gateway,
            identity,
            addr,
            transport,
        } => {
            let open = Open {
                flow: flow.name.clone(),
                device: flow.device.clone(),
                source: src,
            };
            // The answer waits for the receiver's connect to the target.
            let answer_within = hs + flow.connect_timeout;
            match transport {
                Transport::Tcp => {
                    // The name plays no part in verification (the SPIFFE id
                    // does); it is only the SNI sent.
                    let name = ServerName::try_from(gateway.clone())
                        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
                    let stream = tls_connect(
                        tls.peer_client(identity)?,
                        name,
                        *addr,
                        flow.connect_timeout,
                        hs,
                    )
                    .await?;
                    let (mut r, mut w) = tokio::io::split(stream);
                    open_and_wait(&mut r, &mut w, &open, identity, answer_within).await?;
                    Ok(Far::Tls(Box::new(r.unsplit(w))))
                }
                Transport::Quic => {
                    // A pooled connection can die between opening the stream
                    // and the answer (a restarted peer resets it): then try
                    // once more, on a fresh connection.
                    let mut retried = false;
                    loop {
                        let (mut send, mut recv) =
                            state.quic.open_stream(gateway, identity, *addr, hs).await?;
                        match open_and_wait(&mut recv, &mut send, &open, identity, answer_within)
                            .await
                        {
                            Ok(()) => return Ok(Far::Quic(send, recv)),
                            Err(FarError::NoAnswer { reason, .. })
                                if !retried && state.quic.is_lost(identity).await =>
                            {
                                debug!(
                                    reason,
                                    "quic connection lost before the answer; retrying on a new one"
                                );
                                retried = true;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
        Target::Tls {
            addr,
            server_name,
            ca,
        } => {
            let stream =
                connect_tls_server(&tls, *addr, server_name, ca, flow.connect_timeout, hs).await?;
            Ok(Far::Tls(Box::new(stream)))
        }
    }
}

/// Connect a server that speaks TLS itself (an outbound flow's direct
/// target, or the server behind a hub): verified by its CA and name, with
/// this gateway's certificate presented.
pub(super) async fn connect_tls_server(
    tls: &TlsMaterial,
    addr: SocketAddr,
    server_name: &str,
    ca: &str,
    connect_within: Duration,
    handshake_within: Duration,
) -> Result<TlsStream<ChunkedTcp>, FarError> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| FarError::ServerName {
        name: server_name.to_owned(),
        reason: e.to_string(),
    })?;
    let config = tls.service_client(std::path::Path::new(ca), server_name)?;
    tls_connect(config, name, addr, connect_within, handshake_within).await
}
