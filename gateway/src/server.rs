//! The data path: listeners from the compiled plan, tunnels over TLS/TCP and
//! QUIC, authorization at both ends, relaying.
//!
//! Every accept loop and connection task is started by a named `spawn_*`
//! function on one [`TaskTracker`] and watches one [`CancellationToken`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};
use ward_policy::model::WeekTime;
use ward_policy::{ListenerKind, OutboundFlow, Plan, Target};

use crate::bufio::ChunkedTcp;
use crate::config::Limits;
use crate::proto::{self, Answer, Open};
use crate::quic::{self, QuicPool};
use crate::registry::{Leg, Live, Registry};
use crate::relay::{self, Counters, End};
use crate::tls::TlsMaterial;

/// Binding a listener failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    /// Address.
    pub addr: SocketAddr,
    /// Which listener.
    pub what: &'static str,
    /// Why.
    pub source: std::io::Error,
}

/// The clock used for maintenance windows.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// System time.
    System,
    /// A fixed time (Unix seconds), for tests.
    Fixed(i64),
}

impl Clock {
    /// Now, as a point in the UTC week.
    pub fn now(self) -> WeekTime {
        let secs = match self {
            Clock::System => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            Clock::Fixed(s) => s,
        };
        let days = secs.div_euclid(86_400);
        // 1970-01-01 was a Thursday (weekday 3, Monday = 0).
        WeekTime {
            weekday: ((days + 3).rem_euclid(7)) as u8,
            minute: (secs.rem_euclid(86_400) / 60) as u16,
        }
    }
}

/// State shared by every task of a running gateway.
pub struct Shared {
    plan: RwLock<Arc<Plan>>,
    tls: RwLock<Arc<TlsMaterial>>,
    /// Live connections and flow statistics.
    pub registry: Arc<Registry>,
    limits: Limits,
    handshakes: Semaphore,
    /// Outgoing QUIC connections, one per peer gateway.
    pub(crate) quic: QuicPool,
    quic_server: Option<quinn::Endpoint>,
    clock: Clock,
    /// The audit trail.
    pub audit: Arc<crate::audit::Audit>,
}

impl Shared {
    /// The plan in force.
    pub fn plan(&self) -> Arc<Plan> {
        self.plan.read().expect("plan lock poisoned").clone()
    }

    /// The TLS material in force.
    pub fn tls(&self) -> Arc<TlsMaterial> {
        self.tls.read().expect("tls lock poisoned").clone()
    }

    /// Swap in a new plan (after its ruleset was applied).
    pub fn set_plan(&self, plan: Arc<Plan>) {
        *self.plan.write().expect("plan lock poisoned") = plan;
    }

    /// Swap in new TLS material; new connections use it at once. QUIC
    /// connections to peers are re-established with it.
    pub fn set_tls(&self, tls: Arc<TlsMaterial>) {
        if let Some(ep) = &self.quic_server
            && let Err(e) = quic::reload_server(ep, &tls)
        {
            warn!(error = %e, "quic server keeps its previous tls material");
        }
        *self.tls.write().expect("tls lock poisoned") = tls.clone();
        self.quic.reset(tls);
    }

    /// Close live connections whose peer certificate the loaded CRL revokes.
    pub fn close_revoked(&self) -> usize {
        let tls = self.tls();
        let cut = self
            .registry
            .cancel_where(|l| l.peer_serial.as_deref().is_some_and(|s| tls.is_revoked(s)));
        for l in &cut {
            warn!(flow = %l.flow, peer = l.peer.as_deref().unwrap_or(""), src = %l.source, "closing tunnel: peer certificate revoked");
            self.audit.record("certificate", "revoked-peer-closed", serde_json::json!({"flow": l.flow, "peer": l.peer, "serial": l.peer_serial, "src": l.source.to_string()}));
        }
        self.quic.close_revoked(&tls);
        cut.len()
    }
}

/// A gateway with every listener bound, ready to run.
pub struct Gateway {
    shared: Arc<Shared>,
    plain: Vec<TcpListener>,
    access: Vec<TcpListener>,
    tunnel_tcp: Option<TcpListener>,
    tunnel_quic: Option<quinn::Endpoint>,
}

impl Gateway {
    /// Bind every listener the plan names. Nothing is served until [`Gateway::run`].
    pub async fn bind(
        plan: Arc<Plan>,
        tls: Arc<TlsMaterial>,
        limits: Limits,
        clock: Clock,
        quic_bind: Option<IpAddr>,
        reset_key: &[u8],
        audit: Arc<crate::audit::Audit>,
    ) -> Result<Gateway, BindError> {
        let mut plain = Vec::new();
        let mut access = Vec::new();
        for l in &plan.listeners {
            let what = match l.kind {
                ListenerKind::Plain => "device listener",
                ListenerKind::Tls => "tls client listener",
            };
            let listener = TcpListener::bind(l.addr)
                .await
                .map_err(|source| BindError {
                    addr: l.addr,
                    what,
                    source,
                })?;
            match l.kind {
                ListenerKind::Plain => plain.push(listener),
                ListenerKind::Tls => access.push(listener),
            }
        }
        let (tunnel_tcp, tunnel_quic) = match plan.tunnel_server {
            Some(addr) => {
                let tcp = TcpListener::bind(addr).await.map_err(|source| BindError {
                    addr,
                    what: "tunnel server (tls)",
                    source,
                })?;
                let ep =
                    quic::server_endpoint(addr, &tls, reset_key).map_err(|source| BindError {
                        addr,
                        what: "tunnel server (quic)",
                        source,
                    })?;
                (Some(tcp), Some(ep))
            }
            None => (None, None),
        };
        let client_bind = match quic_bind {
            Some(ip) => SocketAddr::new(ip, 0),
            None => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        };
        let quic = QuicPool::new(client_bind, tls.clone());
        let shared = Arc::new(Shared {
            plan: RwLock::new(plan),
            tls: RwLock::new(tls),
            registry: Arc::default(),
            handshakes: Semaphore::new(limits.max_handshakes as usize),
            limits,
            quic,
            quic_server: tunnel_quic.clone(),
            clock,
            audit,
        });
        Ok(Gateway {
            shared,
            plain,
            access,
            tunnel_tcp,
            tunnel_quic,
        })
    }

    /// Every bound address with what it is, for the banner and for tests.
    pub fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut v = Vec::new();
        for l in &self.plain {
            v.extend(l.local_addr().ok().map(|a| ("device", a)));
        }
        for l in &self.access {
            v.extend(l.local_addr().ok().map(|a| ("tls-client", a)));
        }
        if let Some(l) = &self.tunnel_tcp {
            v.extend(l.local_addr().ok().map(|a| ("tunnel-tls", a)));
        }
        if let Some(e) = &self.tunnel_quic {
            v.extend(e.local_addr().ok().map(|a| ("tunnel-quic", a)));
        }
        v
    }

    /// Shared state, for reload and the admin API.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serve until `shutdown` is cancelled, then stop accepting, give open
    /// connections `limits.drain_timeout` to finish, and cut the rest.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        // Connections watch their own token, cancelled only after the drain period.
        let conns = CancellationToken::new();
        let listen = |l, handle| {
            spawn_tcp_listener(
                &tracker,
                l,
                self.shared.clone(),
                shutdown.clone(),
                conns.clone(),
                handle,
            )
        };
        for l in self.plain {
            listen(l, Handler::Device);
        }
        for l in self.access {
            listen(l, Handler::Access);
        }
        if let Some(l) = self.tunnel_tcp {
            listen(l, Handler::Tunnel);
        }
        let quic_server = self.tunnel_quic.clone();
        if let Some(ep) = self.tunnel_quic {
            spawn_tunnel_quic_listener(
                &tracker,
                ep,
                self.shared.clone(),
                shutdown.clone(),
                conns.clone(),
            );
        }
        shutdown.cancelled().await;
        tracker.close();
        let open = self.shared.registry.snapshot().len();
        if open > 0 {
            info!(open, drain = ?self.shared.limits.drain_timeout, "shutdown: draining open connections");
        }
        if timeout(self.shared.limits.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            let cut = self.shared.registry.snapshot();
            warn!(cut = cut.len(), flows = ?cut.iter().map(|l| l.flow.as_str()).collect::<Vec<_>>(), "shutdown: drain period over, closing the remaining connections");
            conns.cancel();
            let _ = timeout(Duration::from_secs(2), tracker.wait()).await;
        }
        if let Some(ep) = quic_server {
            ep.close(0u32.into(), b"shutdown");
            let _ = timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
        self.shared.quic.shutdown().await;
    }
}

/// Back off after an accept error (e.g. out of file descriptors) instead of spinning.
async fn accept_backoff(attempt: &mut u32) {
    let ms = 10u64 << (*attempt).min(7);
    *attempt += 1;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// What a TCP listener's connections are.
#[derive(Debug, Clone, Copy)]
enum Handler {
    /// Cleartext from devices (plain → tunnel or tls).
    Device,
    /// `ward/1` over TLS from peer gateways.
    Tunnel,
    /// TLS from clients with certificates (tls → plain).
    Access,
}

/// The accept loop every TCP listener runs: back off on accept errors, stop
/// on shutdown, one task per connection with its own cancellation.
fn spawn_tcp_listener(
    tracker: &TaskTracker,
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    conns: CancellationToken,
    handler: Handler,
) {
    let t = tracker.clone();
    tracker.spawn(async move {
        let mut errors = 0;
        loop {
            let (stream, src) = tokio::select! {
                () = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => { errors = 0; x }
                    Err(e) => { warn!(error = %e, "accept failed"); accept_backoff(&mut errors).await; continue; }
                },
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            let cancel = conns.child_token();
            match handler {
                Handler::Device => {
                    // The listener's own address is the destination the device
                    // asked for; a transparent listener will yield the original
                    // destination here.
                    let Ok(dst) = stream.local_addr() else { continue };
                    t.spawn(handle_plain(stream, src, dst, shared, cancel));
                }
                Handler::Tunnel => {
                    t.spawn(handle_tunnel_tcp(stream, src, shared, cancel));
                }
                Handler::Access => {
                    t.spawn(handle_access(stream, src, shared, cancel));
                }
            }
        }
    });
}

/// Complete a TLS handshake with a required client certificate, bounded in
/// time and in concurrent handshakes; failures are logged, counted and
/// audited. Returns the stream with the peer's SPIFFE identity and serial.
async fn accept_tls(
    shared: &Shared,
    config: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    peer_addr: SocketAddr,
    listener: &str,
) -> Option<(
    tokio_rustls::server::TlsStream<ChunkedTcp>,
    String,
    Option<String>,
)> {
    let Ok(permit) = shared.handshakes.try_acquire() else {
        warn!(peer = %peer_addr, listener, reason = "too many handshakes in progress", "connection refused");
        return None;
    };
    let accept = TlsAcceptor::from(config).accept(ChunkedTcp::new(stream));
    let reason = match timeout(shared.limits.handshake_timeout, accept).await {
        Ok(Ok(tls)) => {
            drop(permit);
            let (peer, serial) = peer_of(tls.get_ref().1.peer_certificates());
            let Some(peer) = peer else {
                warn!(peer = %peer_addr, listener, reason = "certificate has no SPIFFE identity", "connection refused");
                return None;
            };
            return Some((tls, peer, serial));
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "handshake timed out".to_owned(),
    };
    warn!(peer = %peer_addr, listener, reason = %reason, "handshake failed");
    shared
        .registry
        .handshake_failed(crate::metrics::handshake_reason(&reason));
    shared.audit.record(
        "handshake",
        "failed",
        serde_json::json!({"listener": listener, "peer_addr": peer_addr.to_string(), "reason": reason}),
    );
    None
}

async fn handle_plain(
    stream: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let plan = shared.plan();
    let flow = match plan.route(src.ip(), dst) {
        Ok(f) => f.clone(),
        Err(denied) => {
            warn!(%src, %dst, reason = %denied, "device connection refused");
            shared.audit.record("flow", "denied", serde_json::json!({"leg": "outbound", "src": src.to_string(), "dst": dst.to_string(), "reason": denied.to_string()}));
            return;
        }
    };
    let peer = match &flow.target {
        Target::Tunnel { identity, .. } => identity.clone(),
        Target::Tls { server_name, .. } => server_name.clone(),
    };
    let span = info_span!("tunnel", flow = %flow.name, %peer, src = %src, leg = "outbound");
    async move {
        let Some(_source) = shared
            .registry
            .acquire_source(src.ip(), shared.limits.max_connections_per_source)
        else {
            shared.registry.denied(&flow.name);
            warn!(
                reason = "too many connections from this source",
                "device connection refused"
            );
            return;
        };
        let counters = Arc::new(Counters::default());
        let cancel = cancel.child_token();
        let live = Live {
            flow: flow.name.clone(),
            leg: Leg::Outbound,
            peer: match &flow.target {
                Target::Tunnel { identity, .. } => Some(identity.clone()),
                Target::Tls { server_name, .. } => Some(server_name.clone()),
            },
            peer_serial: None,
            source: src,
            started: SystemTime::now(),
            counters: counters.clone(),
            cancel: cancel.clone(),
        };
        let Some(_guard) = shared.registry.open(live, flow.max_connections) else {
            shared.registry.denied(&flow.name);
            warn!(
                reason = "flow connection limit reached",
                limit = flow.max_connections,
                "device connection refused"
            );
            return;
        };
        let totals = shared.registry.flow(&flow.name).bytes.clone();
        let device = stream.into_split();
        let far = connect_far(&flow, src, &shared).await;
        match &far {
            Ok(_) => shared.audit.record("flow", "allowed", serde_json::json!({"flow": flow.name, "leg": "outbound", "device": flow.device, "src": src.to_string()})),
            Err(e) => shared.audit.record("flow", "failed", serde_json::json!({"flow": flow.name, "leg": "outbound", "device": flow.device, "src": src.to_string(), "reason": e.to_string()})),
        }
        let far = match far {
            Ok(f) => f,
            Err(e) => {
                shared.registry.denied(&flow.name);
                warn!(error = %e, "flow not opened");
                return;
            }
        };
        debug!("far end connected");
        let (idle, device) = (flow.idle_timeout, relay::io(device));
        let end = match far {
            Far::Tls(s) | Far::Native(s) => {
                let far = relay::io(tokio::io::split(s));
                relay::relay(device, far, idle, counters, totals, cancel).await
            }
            Far::Quic(send, recv) => {
                relay::relay(device, (recv, send), idle, counters, totals, cancel).await
            }
        };
        log_end(&end);
    }
    .instrument(span)
    .await
}

fn log_end(end: &End) {
    match end {
        End::Done => debug!("closed"),
        End::Idle => debug!("closed: idle timeout"),
        End::Cancelled => info!("closed: cancelled"),
        End::Error(e) => debug!(error = %e, "closed by error"),
    }
}

enum Far {
    Tls(tokio_rustls::client::TlsStream<ChunkedTcp>),
    Native(tokio_rustls::client::TlsStream<ChunkedTcp>),
    Quic(quinn::SendStream, quinn::RecvStream),
}

/// Why the far end of an outbound flow could not be opened.
#[derive(Debug, thiserror::Error)]
enum FarError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("tls handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tls handshake with {0} timed out")]
    HandshakeTimeout(SocketAddr),
    #[error("tls configuration: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("quic: {0}")]
    Quic(String),
    #[error("peer {peer} did not answer the open frame: {reason}")]
    NoAnswer { peer: String, reason: String },
    #[error("peer {peer} denied the flow: {reason}")]
    Denied { peer: String, reason: String },
}

fn deny_reason(code: u8) -> String {
    match ward_policy::Denied::from_code(code) {
        Some(d) => d.to_string(),
        None if code == proto::DENY_TARGET_UNREACHABLE => "peer could not reach the target".into(),
        None if code == proto::DENY_LIMIT => "peer's connection limit reached".into(),
        None => format!("code {code}"),
    }
}

async fn tcp_connect(addr: SocketAddr, within: Duration) -> Result<TcpStream, FarError> {
    let s = timeout(within, TcpStream::connect(addr))
        .await
        .map_err(|_| FarError::ConnectTimeout(addr))?
        .map_err(|source| FarError::Connect { addr, source })?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

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
    proto::write_frame(w, &open.encode())
        .await
        .map_err(|e| no_answer(e.to_string()))?;
    let body = timeout(within, proto::read_frame(r))
        .await
        .map_err(|_| no_answer("timed out".into()))?
        .map_err(|e| no_answer(e.to_string()))?;
    match Answer::decode(&body).map_err(|e| no_answer(e.to_string()))? {
        Answer::Accept => Ok(()),
        Answer::Deny(code) => Err(FarError::Denied {
            peer: peer.to_owned(),
            reason: deny_reason(code),
        }),
    }
}

async fn connect_far(
    flow: &OutboundFlow,
    src: SocketAddr,
    shared: &Shared,
) -> Result<Far, FarError> {
    let tls = shared.tls();
    let hs = shared.limits.handshake_timeout;
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
                ward_policy::model::Transport::Tcp => {
                    let tcp = tcp_connect(*addr, flow.connect_timeout).await?;
                    let config = tls.peer_client(identity)?;
                    let name = ServerName::try_from(gateway.clone())
                        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
                    let stream = timeout(
                        hs,
                        TlsConnector::from(config).connect(name, ChunkedTcp::new(tcp)),
                    )
                    .await
                    .map_err(|_| FarError::HandshakeTimeout(*addr))?
                    .map_err(|source| FarError::Handshake {
                        addr: *addr,
                        source,
                    })?;
                    let (mut r, mut w) = tokio::io::split(stream);
                    open_and_wait(&mut r, &mut w, &open, identity, answer_within).await?;
                    Ok(Far::Tls(r.unsplit(w)))
                }
                ward_policy::model::Transport::Quic => {
                    // A pooled connection can die between opening the stream
                    // and the answer (a restarted peer resets it): then try
                    // once more, on a fresh connection.
                    let mut attempt = 0;
                    loop {
                        let (mut send, mut recv) = shared
                            .quic
                            .open_stream(gateway, identity, *addr, hs)
                            .await
                            .map_err(FarError::Quic)?;
                        match open_and_wait(&mut recv, &mut send, &open, identity, answer_within)
                            .await
                        {
                            Ok(()) => return Ok(Far::Quic(send, recv)),
                            Err(FarError::NoAnswer { reason, .. })
                                if attempt == 0 && shared.quic.is_lost(identity).await =>
                            {
                                debug!(
                                    reason,
                                    "quic connection lost before the answer; retrying on a new one"
                                );
                                attempt += 1;
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
            let tcp = tcp_connect(*addr, flow.connect_timeout).await?;
            let config = tls.service_client(std::path::Path::new(ca), server_name)?;
            let name = ServerName::try_from(server_name.clone())
                .map_err(|e| FarError::Quic(format!("bad server name {server_name:?}: {e}")))?;
            let stream = timeout(
                hs,
                TlsConnector::from(config).connect(name, ChunkedTcp::new(tcp)),
            )
            .await
            .map_err(|_| FarError::HandshakeTimeout(*addr))?
            .map_err(|source| FarError::Handshake {
                addr: *addr,
                source,
            })?;
            Ok(Far::Native(stream))
        }
    }
}

async fn handle_tunnel_tcp(
    stream: TcpStream,
    peer_addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let config = shared.tls().tunnel_server.clone();
    let Some((tls, peer, serial)) = accept_tls(&shared, config, stream, peer_addr, "tunnel").await
    else {
        return;
    };
    let (r, w) = tokio::io::split(tls);
    serve_tunnel_stream(r, w, peer, serial, peer_addr, shared, cancel).await;
}

fn peer_of(
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> (Option<String>, Option<String>) {
    match certs
        .and_then(|c| c.first())
        .and_then(|c| ward_pki::inspect(c))
    {
        Some(info) => (info.identity, Some(info.serial)),
        None => (None, None),
    }
}

/// Serve one tunnel stream (a TLS connection, or one QUIC stream): read the
/// open frame, authorize it against this gateway's own plan, connect the
/// target, answer, relay.
pub(crate) async fn serve_tunnel_stream<R, W>(
    mut r: R,
    mut w: W,
    peer: String,
    serial: Option<String>,
    peer_addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) where
    R: AsyncRead + Unpin + relay::IntoSource,
    W: AsyncWrite + Unpin + relay::IntoSink,
{
    let body = match timeout(shared.limits.handshake_timeout, proto::read_frame(&mut r)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            warn!(%peer, peer_addr = %peer_addr, reason = %e, "tunnel refused: bad open frame");
            return;
        }
        Err(_) => {
            warn!(%peer, peer_addr = %peer_addr, reason = "no open frame in time", "tunnel refused");
            return;
        }
    };
    let open = match Open::decode(&body) {
        Ok(o) => o,
        Err(e) => {
            warn!(%peer, peer_addr = %peer_addr, reason = %e, "tunnel refused: bad open frame");
            return;
        }
    };
    let span = info_span!("tunnel", flow = %open.flow, %peer, src = %open.source, leg = "tunnel");
    async move {
        let plan = shared.plan();
        let flow = match plan.authorize_tunnel(&peer, &open.flow, &open.device) {
            Ok(f) => f.clone(),
            Err(denied) => {
                shared.registry.denied(&open.flow);
                warn!(device = %open.device, reason = %denied, "tunnel refused");
                shared.audit.record("flow", "denied", serde_json::json!({"flow": open.flow, "leg": "tunnel", "peer": peer, "device": open.device, "src": open.source.to_string(), "reason": denied.to_string()}));
                let _ = proto::write_frame(&mut w, &Answer::Deny(denied.code()).encode()).await;
                return;
            }
        };
        let counters = Arc::new(Counters::default());
        let cancel = cancel.child_token();
        let live = Live {
            flow: flow.name.clone(),
            leg: Leg::Tunnel,
            peer: Some(peer.clone()),
            peer_serial: serial,
            source: open.source,
            started: SystemTime::now(),
            counters: counters.clone(),
            cancel: cancel.clone(),
        };
        let Some(_guard) = shared.registry.open(live, flow.max_connections) else {
            shared.registry.denied(&flow.name);
            warn!(reason = "flow connection limit reached", "tunnel refused");
            let _ = proto::write_frame(&mut w, &Answer::Deny(proto::DENY_LIMIT).encode()).await;
            return;
        };
        let target = match tcp_connect(flow.target, flow.connect_timeout).await {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "tunnel refused: target unreachable");
                let _ = proto::write_frame(
                    &mut w,
                    &Answer::Deny(proto::DENY_TARGET_UNREACHABLE).encode(),
                )
                .await;
                return;
            }
        };
        if let Err(e) = proto::write_frame(&mut w, &Answer::Accept.encode()).await {
            debug!(error = %e, "peer went away before the accept");
            return;
        }
        debug!("tunnel opened");
        shared.audit.record("flow", "allowed", serde_json::json!({"flow": flow.name, "leg": "tunnel", "peer": peer, "device": flow.device, "src": open.source.to_string()}));
        let totals = shared.registry.flow(&flow.name).bytes.clone();
        let end = relay::relay(
            (r.into_source(), w.into_sink()),
            relay::io(target.into_split()),
            flow.idle_timeout,
            counters,
            totals,
            cancel,
        )
        .await;
        log_end(&end);
    }
    .instrument(span)
    .await
}

fn spawn_tunnel_quic_listener(
    tracker: &TaskTracker,
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    conns: CancellationToken,
) {
    let t = tracker.clone();
    tracker.spawn(async move {
        loop {
            let incoming = tokio::select! {
                () = shutdown.cancelled() => return,
                i = endpoint.accept() => match i { Some(i) => i, None => return },
            };
            let shared = shared.clone();
            let cancel = conns.child_token();
            let t2 = t.clone();
            t.spawn(async move {
                let peer_addr = incoming.remote_address();
                let Ok(permit) = shared.handshakes.try_acquire() else {
                    warn!(peer = %peer_addr, reason = "too many handshakes in progress", "quic connection refused");
                    incoming.refuse();
                    return;
                };
                let conn = match timeout(shared.limits.handshake_timeout, async { incoming.accept()?.await }).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        shared.registry.handshake_failed(crate::metrics::handshake_reason(&e.to_string()));
                        warn!(peer = %peer_addr, reason = %e, "quic handshake failed");
                        return;
                    }
                    Err(_) => {
                        warn!(peer = %peer_addr, reason = "handshake timed out", "quic handshake failed");
                        return;
                    }
                };
                drop(permit);
                let certs = conn
                    .peer_identity()
                    .and_then(|id| id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok());
                let (peer, serial) = peer_of(certs.as_deref().map(|v| v.as_slice()));
                let Some(peer) = peer else {
                    warn!(peer = %peer_addr, reason = "certificate has no SPIFFE identity", "quic connection refused");
                    conn.close(1u32.into(), b"no identity");
                    return;
                };
                debug!(%peer, peer_addr = %peer_addr, "quic connection up");
                loop {
                    let (send, recv) = tokio::select! {
                        () = cancel.cancelled() => { conn.close(0u32.into(), b"shutdown"); return; }
                        s = conn.accept_bi() => match s {
                            Ok(s) => s,
                            Err(e) => { debug!(%peer, reason = %e, "quic connection closed"); return; }
                        },
                    };
                    let (shared, peer, serial, cancel) = (shared.clone(), peer.clone(), serial.clone(), cancel.clone());
                    t2.spawn(async move {
                        serve_tunnel_stream(recv, send, peer, serial, peer_addr, shared, cancel).await;
                    });
                }
            });
        }
    });
}

async fn handle_access(
    stream: TcpStream,
    src: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let Ok(listen) = stream.local_addr() else {
        return;
    };
    let Some(_source) = shared
        .registry
        .acquire_source(src.ip(), shared.limits.max_connections_per_source)
    else {
        warn!(%src, reason = "too many connections from this source", "client refused");
        return;
    };
    let config = shared.tls().access_server.clone();
    let Some((tls, peer, serial)) =
        accept_tls(&shared, config, stream, src, &listen.to_string()).await
    else {
        return;
    };
    let plan = shared.plan();
    let rule = match plan.authorize_client(&peer, listen, shared.clock.now()) {
        Ok(r) => r.clone(),
        Err(denied) => {
            warn!(%src, %listen, %peer, reason = %denied, "client refused");
            shared.audit.record("flow", "denied", serde_json::json!({"leg": "access", "listener": listen.to_string(), "peer": peer, "src": src.to_string(), "reason": denied.to_string()}));
            return;
        }
    };
    let span = info_span!("tunnel", flow = %rule.flow, %peer, src = %src, leg = "access");
    async move {
        let counters = Arc::new(Counters::default());
        let cancel = cancel.child_token();
        let live = Live {
            flow: rule.flow.clone(),
            leg: Leg::Access,
            peer: Some(peer.clone()),
            peer_serial: serial,
            source: src,
            started: SystemTime::now(),
            counters: counters.clone(),
            cancel: cancel.clone(),
        };
        let Some(_guard) = shared.registry.open(live, rule.max_connections) else {
            shared.registry.denied(&rule.flow);
            warn!(reason = "flow connection limit reached", "client refused");
            return;
        };
        let device = match tcp_connect(rule.target, rule.connect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "device unreachable");
                return;
            }
        };
        info!(device = %rule.device, "client connected to device");
        shared.audit.record("flow", "allowed", serde_json::json!({"flow": rule.flow, "leg": "access", "peer": peer, "device": rule.device, "src": src.to_string()}));
        let totals = shared.registry.flow(&rule.flow).bytes.clone();
        let end = relay::relay(
            relay::io(tokio::io::split(tls)),
            relay::io(device.into_split()),
            rule.idle_timeout,
            counters,
            totals,
            cancel,
        )
        .await;
        log_end(&end);
    }
    .instrument(span)
    .await
}

/// Unspecified IPv4, for callers that bind outgoing sockets.
pub const ANY_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
