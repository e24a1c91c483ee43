//! The data path: one file per leg of DESIGN §3.1 ([`outbound`], [`tunnel`],
//! [`access`]), the handshakes they share ([`handshake`]), the admit →
//! relay → log sequence ([`conn`]), live connections ([`registry`]) and the
//! state every task reads ([`state`]).
//!
//! [`Listeners::bind`] binds every socket the plan names and serves nothing;
//! [`Listeners::spawn`] starts one accept loop per socket on the daemon's
//! task tracker. Accept loops stop at `shutdown`; connections run on until
//! `cut`, which the daemon cancels when the drain period is over.

pub mod access;
pub mod conn;
pub mod handshake;
pub mod outbound;
pub mod registry;
pub mod state;
pub mod tunnel;
pub mod window;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;
use ward_policy::{Leg, Plan};

pub use state::{Clock, ProxyState};
pub use window::spawn_window_watch;

use crate::transport::quic::{self, CLOSE_GRACE};
use crate::transport::tls::TlsMaterial;

/// Binding a listener failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Which listener: `outbound`, `access`, `tunnel (tls)`, `tunnel (quic)`.
    pub what: &'static str,
    /// Why.
    pub source: std::io::Error,
}

/// Every socket of the data path, bound, nothing served yet.
pub struct Listeners {
    outbound: Vec<TcpListener>,
    /// Routed insertion: intercepted connections (an outbound leg whose
    /// local address is the original destination).
    transparent: Option<TcpListener>,
    access: Vec<TcpListener>,
    tunnel_tcp: Option<TcpListener>,
    tunnel_quic: Option<quinn::Endpoint>,
}

async fn bind_tcp(addr: SocketAddr, what: &'static str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, what, source })
}

/// The transparent listener of a routed gateway: loopback, `IP_TRANSPARENT`
/// (set before `bind`), so the tproxy rules can hand it connections to any
/// address; each accepted connection's local address is the destination the
/// device asked for. Needs CAP_NET_ADMIN.
fn bind_transparent(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let what = "transparent";
    let err = |source| BindError { addr, what, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_ip_transparent_v4(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

impl Listeners {
    /// Bind every listener `plan` names, and the tunnel server (TLS on TCP,
    /// QUIC on UDP) when it has one. `reset_key` keys QUIC stateless resets.
    pub async fn bind(
        plan: &Plan,
        tls: &TlsMaterial,
        reset_key: &[u8],
    ) -> Result<Listeners, BindError> {
        let mut l = Listeners {
            outbound: Vec::new(),
            transparent: None,
            access: Vec::new(),
            tunnel_tcp: None,
            tunnel_quic: None,
        };
        for listener in &plan.listeners {
            // The plan's listeners start outbound or access legs; the tunnel
            // server is `plan.tunnel_server`.
            match listener.leg {
                Leg::Access => l.access.push(bind_tcp(listener.addr, "access").await?),
                Leg::Outbound | Leg::Tunnel => {
                    l.outbound.push(bind_tcp(listener.addr, "outbound").await?)
                }
            }
        }
        if let Some(addr) = plan.transparent_listener {
            l.transparent = Some(bind_transparent(addr)?);
        }
        if let Some(addr) = plan.tunnel_server {
            l.tunnel_tcp = Some(bind_tcp(addr, "tunnel (tls)").await?);
            l.tunnel_quic = Some(quic::server_endpoint(addr, tls, reset_key).map_err(
                |source| BindError {
                    addr,
                    what: "tunnel (quic)",
                    source,
                },
            )?);
        }
        Ok(l)
    }

    /// Every bound address with its leg, for the banner and for tests.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        let tcp = |leg: &str, l: &TcpListener| l.local_addr().ok().map(|a| (leg.to_owned(), a));
        let mut v: Vec<_> = self
            .outbound
            .iter()
            .filter_map(|l| tcp("outbound", l))
            .collect();
        v.extend(
            self.transparent
                .iter()
                .filter_map(|l| tcp("transparent", l)),
        );
        v.extend(self.access.iter().filter_map(|l| tcp("access", l)));
        v.extend(self.tunnel_tcp.iter().filter_map(|l| tcp("tunnel-tls", l)));
        if let Some(e) = &self.tunnel_quic {
            v.extend(e.local_addr().ok().map(|a| ("tunnel-quic".to_owned(), a)));
        }
        v
    }

    /// Start every accept loop on `tracker`. Accept loops end at `shutdown`;
    /// connections at `cut`. The returned handle closes the QUIC endpoints
    /// once the connections are done.
    pub fn spawn(
        self,
        tracker: &TaskTracker,
        state: Arc<ProxyState>,
        shutdown: &CancellationToken,
        cut: &CancellationToken,
    ) -> Serving {
        let ctx = Ctx {
            tracker: tracker.clone(),
            state: state.clone(),
            shutdown: shutdown.clone(),
            cut: cut.clone(),
        };
        for l in self.outbound.into_iter().chain(self.transparent) {
            spawn_tcp_accept(&ctx, l, Leg::Outbound);
        }
        for l in self.access {
            spawn_tcp_accept(&ctx, l, Leg::Access);
        }
        if let Some(l) = self.tunnel_tcp {
            spawn_tcp_accept(&ctx, l, Leg::Tunnel);
        }
        if let Some(ep) = &self.tunnel_quic {
            spawn_quic_accept(&ctx, ep.clone());
            spawn_tls_follow(&ctx, ep.clone());
        }
        Serving {
            tunnel_quic: self.tunnel_quic,
            state,
        }
    }
}

/// A serving data path, to be closed after the drain.
pub struct Serving {
    tunnel_quic: Option<quinn::Endpoint>,
    state: Arc<ProxyState>,
}

impl Serving {
    /// Close the QUIC tunnel server and the pooled QUIC connections, giving
    /// peers [`CLOSE_GRACE`] to see the close.
    pub async fn close(self) {
        if let Some(ep) = self.tunnel_quic {
            ep.close(0u32.into(), b"shutdown");
            let _ = tokio::time::timeout(CLOSE_GRACE, ep.wait_idle()).await;
        }
        self.state.quic.shutdown().await;
    }
}

/// Back off after an accept error (e.g. out of file descriptors) instead of
/// spinning: 10 ms doubling to 1.28 s.
async fn accept_backoff(attempt: &mut u32) {
    let ms = 10u64 << (*attempt).min(7);
    *attempt += 1;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// What every accept loop holds: where tasks go, what they read, when
/// accepting stops (`shutdown`) and when connections are cut (`cut`).
#[derive(Clone)]
struct Ctx {
    tracker: TaskTracker,
    state: Arc<ProxyState>,
    shutdown: CancellationToken,
    cut: CancellationToken,
}

/// The accept loop of a TCP listener of `leg`: one task per connection.
fn spawn_tcp_accept(ctx: &Ctx, listener: TcpListener, leg: Leg) {
    let Ctx {
        tracker: t,
        state,
        shutdown,
        cut,
    } = ctx.clone();
    ctx.tracker.spawn(async move {
        let mut errors = 0;
        loop {
            let (stream, src): (TcpStream, SocketAddr) = tokio::select! {
                () = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => { errors = 0; x }
                    Err(e) => { warn!(error = %e, %leg, "accept failed"); accept_backoff(&mut errors).await; continue; }
                },
            };
            let _ = stream.set_nodelay(true);
            let (state, cut) = (state.clone(), cut.clone());
            match leg {
                Leg::Outbound => {
                    // The listener's own address is the destination the
                    // device asked for; a transparent listener will yield the
                    // original destination here.
                    let Ok(dst) = stream.local_addr() else { continue };
                    t.spawn(outbound::serve(stream, src, dst, state, cut));
                }
                Leg::Tunnel => {
                    t.spawn(tunnel::serve_tcp(stream, src, state, cut));
                }
                Leg::Access => {
                    t.spawn(access::serve(stream, src, state, cut));
                }
            }
        }
    });
}

/// The QUIC tunnel server's accept loop: one task per peer connection.
fn spawn_quic_accept(ctx: &Ctx, endpoint: quinn::Endpoint) {
    let Ctx {
        tracker: t,
        state,
        shutdown,
        cut,
    } = ctx.clone();
    ctx.tracker.spawn(async move {
        let Ok(listener) = endpoint.local_addr() else {
            return;
        };
        loop {
            let incoming = tokio::select! {
                () = shutdown.cancelled() => {
                    // Without a server configuration quinn refuses new
                    // connections at once; open ones drain (tunnel.rs).
                    endpoint.set_server_config(None);
                    return;
                }
                i = endpoint.accept() => match i { Some(i) => i, None => return },
            };
            t.spawn(tunnel::serve_quic(
                incoming,
                listener,
                state.clone(),
                shutdown.clone(),
                cut.clone(),
            ));
        }
    });
}

/// Install new TLS material on the QUIC tunnel server whenever the control
/// layer publishes it (TCP listeners read it per connection).
fn spawn_tls_follow(ctx: &Ctx, endpoint: quinn::Endpoint) {
    let (mut tls, shutdown) = (ctx.state.tls_receiver(), ctx.shutdown.clone());
    ctx.tracker.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = tls.changed() => if r.is_err() { return },
            }
            let material = tls.borrow_and_update().clone();
            match quic::server_config(&material) {
                Ok(c) => endpoint.set_server_config(Some(c)),
                Err(e) => warn!(error = %e, "quic tunnel server keeps its previous tls material"),
            }
        }
    });
}
