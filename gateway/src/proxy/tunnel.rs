//! The tunnel leg: the `ward/1` tunnel server. A peer gateway opens a tunnel
//! (a TLS connection, or a stream of its QUIC connection), sends one open
//! frame; this gateway authorizes it against its own plan, connects the
//! flow's target, answers, and relays.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};
use ward_api::audit::FlowAction;
use ward_policy::{Denied, Leg, TunnelFlow};

use super::conn::{self, Matched, tcp_connect};
use super::handshake::{self, Expect, PeerId};
use super::outbound::{FarError, connect_tls_server};
use super::registry::{Grant, server_of};
use super::state::ProxyState;
use crate::transport::bufio::ChunkedTcp;
use crate::transport::frame::{self, Answer, DenyReason, Open};
use crate::transport::relay::{self, IntoSink, IntoSource};

impl From<Denied> for DenyReason {
    fn from(d: Denied) -> DenyReason {
        match d {
            Denied::NoRoute => DenyReason::NoRoute,
            Denied::Quarantined => DenyReason::Quarantined,
            Denied::UnknownFlow => DenyReason::UnknownFlow,
            Denied::WrongPeer => DenyReason::WrongPeer,
            Denied::WrongDevice => DenyReason::WrongDevice,
            Denied::OutsideWindow => DenyReason::OutsideWindow,
            // A reason a newer policy crate adds travels by its code.
            other => DenyReason::from_code(other.code()),
        }
    }
}

/// Serve one TLS connection accepted by the tunnel server.
pub async fn serve_tcp(
    stream: TcpStream,
    src: SocketAddr,
    state: Arc<ProxyState>,
    cut: CancellationToken,
) {
    let config = state.tls().tunnel_server.clone();
    let Some((tls, peer)) =
        handshake::accept_tls(&state, config, stream, src, Leg::Tunnel, Expect::Spiffe).await
    else {
        return;
    };
    let (r, w) = tokio::io::split(tls);
    serve_stream(r, w, peer, src, state, cut).await;
}

/// Serve one QUIC connection of a peer gateway: one tunnel per stream.
///
/// At shutdown (`shutdown`) the connection takes no new tunnels: streams
/// opened from then on are refused at once with [`DenyReason::ShuttingDown`],
/// the open ones run on, and the connection closes when the last of them
/// ends, or at the cut (`cut`), whichever comes first. An idle connection
/// therefore closes as soon as shutdown begins.
pub async fn serve_quic(
    incoming: quinn::Incoming,
    listener: SocketAddr,
    state: Arc<ProxyState>,
    shutdown: CancellationToken,
    cut: CancellationToken,
) {
    let src = incoming.remote_address();
    let Some((connection, peer)) = handshake::accept_quic(&state, incoming, listener).await else {
        return;
    };
    debug!(peer = %peer.identity, peer_addr = %src, "quic connection up");
    let streams = TaskTracker::new();
    let mut draining = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                streams.close();
            }
            () = streams.wait(), if draining => {
                connection.close(0u32.into(), b"shutdown");
                return;
            }
            () = cut.cancelled() => {
                connection.close(0u32.into(), b"shutdown");
                return;
            }
            s = connection.accept_bi() => match s {
                Ok((mut send, _recv)) if draining => {
                    debug!(peer = %peer.identity, "tunnel refused: shutting down");
                    let _ = frame::write_frame(&mut send, &Answer::Deny(DenyReason::ShuttingDown).encode()).await;
                    let _ = send.finish();
                }
                Ok((send, recv)) => {
                    streams.spawn(serve_stream(recv, send, peer.clone(), src, state.clone(), cut.clone()));
                }
                Err(e) => {
                    debug!(peer = %peer.identity, reason = %e, "quic connection closed");
                    return;
                }
            },
        }
    }
}

async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, reason: DenyReason) {
    let _ = frame::write_frame(w, &Answer::Deny(reason).encode()).await;
}

/// The server behind a tunnel flow: cleartext, or TLS when the service
/// speaks it (boxed: the TLS stream is over a kilobyte).
enum Server {
    Plain(TcpStream),
    Tls(Box<TlsStream<ChunkedTcp>>),
}

async fn connect_server(flow: &TunnelFlow, state: &ProxyState) -> Result<Server, FarError> {
    match &flow.tls {
        None => Ok(Server::Plain(
            tcp_connect(flow.target, flow.connect_timeout).await?,
        )),
        Some(t) => Ok(Server::Tls(Box::new(
            connect_tls_server(
                &state.tls(),
                flow.target,
                &t.server_name,
                &t.ca,
                flow.connect_timeout,
                state.limits.handshake_timeout,
            )
            .await?,
        ))),
    }
}

/// Serve one tunnel (a TLS connection, or one QUIC stream): read the open
/// frame, authorize it against this gateway's own plan, connect the target,
/// answer, relay.
async fn serve_stream<R, W>(
    mut r: R,
    mut w: W,
    peer: PeerId,
    peer_addr: SocketAddr,
    state: Arc<ProxyState>,
    cut: CancellationToken,
) where
    R: AsyncRead + Unpin + IntoSource,
    W: AsyncWrite + Unpin + IntoSink,
{
    let open = match timeout(state.limits.handshake_timeout, frame::read_frame(&mut r)).await {
        Ok(Ok(body)) => Open::decode(&body).map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no open frame in time".to_owned()),
    };
    let open = match open {
        Ok(o) => o,
        Err(reason) => {
            warn!(peer = %peer.identity, %peer_addr, %reason, "tunnel refused: bad open frame");
            return;
        }
    };
    let span = info_span!("tunnel", flow = %open.flow, peer = %peer.identity, src = %open.source, leg = %Leg::Tunnel);
    async move {
        let flow = match state
            .plan()
            .authorize_tunnel(&peer.identity, &open.flow, &open.device)
        {
            Ok(f) => f.clone(),
            Err(denied) => {
                state.registry.denied(&open.flow);
                warn!(device = %open.device, reason = %denied, "tunnel refused");
                state.audit.record(conn::refused(
                    Leg::Tunnel,
                    open.source,
                    None,
                    Some(&open.flow),
                    Some(&open.device),
                    Some(&peer.identity),
                    &denied,
                ));
                refuse(&mut w, denied.into()).await;
                return;
            }
        };
        let m = Matched {
            flow: open.flow.clone(),
            device: open.device.clone(),
            peer: Some(peer.identity.clone()),
            peer_serial: peer.serial.clone(),
            src: open.source,
            grant: Grant::Tunnel {
                device: open.device.clone(),
                server: server_of(&flow),
            },
        };
        let Some(admitted) = conn::admit(&state, &m, flow.max_connections, &cut) else {
            refuse(&mut w, DenyReason::Limit).await;
            return;
        };
        let server = match connect_server(&flow, &state).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "tunnel refused: target unreachable");
                state
                    .audit
                    .record(m.event(FlowAction::Failed, Some(e.to_string())));
                refuse(&mut w, DenyReason::TargetUnreachable).await;
                return;
            }
        };
        if let Err(e) = frame::write_frame(&mut w, &Answer::Accept.encode()).await {
            debug!(error = %e, "peer went away before the accept");
            return;
        }
        debug!("tunnel opened");
        state.audit.record(m.event(FlowAction::Allowed, None));
        let peer_side = (r.into_source(), w.into_sink());
        match server {
            Server::Plain(s) => {
                admitted
                    .relay(peer_side, relay::io(s.into_split()), flow.idle_timeout)
                    .await
            }
            Server::Tls(s) => {
                admitted
                    .relay(
                        peer_side,
                        relay::io(tokio::io::split(*s)),
                        flow.idle_timeout,
                    )
                    .await
            }
        }
    }
    .instrument(span)
    .await
}
