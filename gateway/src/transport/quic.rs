//! QUIC transport: one connection per peer gateway, one bidirectional stream
//! per flow, so many flows share one handshake. A lost connection is
//! re-established on the next flow.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, TransportConfig, VarInt};
use tokio::sync::watch;
use tracing::{debug, info};

use super::tls::{TlsError, TlsMaterial};

/// Opening a QUIC stream to a peer gateway failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// No UDP socket could be bound for the client endpoint.
    #[error("cannot bind a quic client endpoint: {0}")]
    Bind(std::io::Error),
    /// The TLS material gives no usable client configuration.
    #[error("tls configuration: {0}")]
    Tls(#[from] TlsError),
    /// rustls' configuration has no cipher suite QUIC can use.
    #[error("quic client configuration: {0}")]
    Crypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The connection could not be started.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Peer address.
        addr: SocketAddr,
        /// Why.
        source: quinn::ConnectError,
    },
    /// The handshake failed.
    #[error("quic handshake with {addr} failed: {source}")]
    Handshake {
        /// Peer address.
        addr: SocketAddr,
        /// Why.
        source: quinn::ConnectionError,
    },
    /// The handshake did not complete in time.
    #[error("quic handshake with {0} timed out")]
    HandshakeTimeout(SocketAddr),
    /// The connection is up but a stream could not be opened on it.
    #[error("quic stream: {0}")]
    Stream(#[from] quinn::ConnectionError),
}

/// How long a closing endpoint waits for its peers to acknowledge the close
/// (`wait_idle`): long enough for a close frame to cross a LAN and be
/// acknowledged, short enough not to hold up a stop when a peer is gone.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Streams (flows) one peer may have open at once over one connection.
pub const MAX_STREAMS: u32 = 4096;
/// Keep-alive between gateways, well inside the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A silent peer is given up after this; new flows then reconnect.
const IDLE: Duration = Duration::from_secs(20);

fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(IDLE.try_into().expect("the idle timeout fits QUIC's")));
    // Path MTU discovery stays at quinn's defaults: it probes from 1200 up
    // to 1452-byte datagrams (a 1500-byte frame, IPv4 or IPv6). Jumbo
    // datagrams (8972 bytes, both ends accepting them) were measured: on the
    // reference machine they cost more CPU per byte, not less (3.55 against
    // 2.95 CPU-s/GiB over two hops), so they are not enabled.
    Arc::new(t)
}

/// The tunnel server's QUIC configuration from `tls`.
pub fn server_config(tls: &TlsMaterial) -> std::io::Result<quinn::ServerConfig> {
    let crypto = QuicServerConfig::try_from(tls.tunnel_server.clone())
        .map_err(|e| std::io::Error::other(format!("quic server tls config: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

/// A QUIC endpoint serving the tunnel server on `addr` (UDP).
///
/// `reset_key` keys stateless resets. It is kept across restarts (in the
/// state directory), so after a restart this gateway's resets are ones its
/// peers can verify: they drop the dead connection at once and reconnect,
/// instead of waiting for the idle timeout.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: &TlsMaterial,
    reset_key: &[u8],
) -> std::io::Result<Endpoint> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    // Connection ids carry a keyed check; with the key kept too, a restarted
    // endpoint recognises its predecessor's ids and answers them with a reset
    // instead of dropping them silently.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&reset_key[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket = udp_socket(addr)?;
    Endpoint::new(
        config,
        Some(server_config(tls)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Socket buffer asked for on each side of a QUIC endpoint. The kernel caps
/// it at `net.core.rmem_max`/`wmem_max` (the appliance image raises those).
const UDP_BUFFER: usize = 8 << 20;

/// A UDP socket for a QUIC endpoint, with buffers large enough that a burst
/// of full-size datagrams is not dropped before quinn reads it: on a fast
/// path every such drop is taken for congestion and halves the window.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer than asked still works.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The stateless-reset key in `state_dir`, created (0600) on first use.
pub fn reset_key(state_dir: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let path = state_dir.join("quic-reset.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() == 32 => return Ok(k),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{}: not a 32-byte key",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ));
        }
    }
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| std::io::Error::other("no randomness for the quic reset key"))?;
    std::fs::create_dir_all(state_dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", state_dir.display())))?;
    ward_pki::write_file(&path, &key, 0o600).map_err(std::io::Error::other)?;
    Ok(key.to_vec())
}

struct Peer {
    conn: Connection,
    serial: Option<String>,
}

/// Outgoing QUIC connections, one per peer gateway identity.
pub struct QuicPool {
    bind: SocketAddr,
    endpoint: Mutex<Option<Endpoint>>,
    /// The TLS material in force; when it changes, pooled connections are
    /// forgotten (their open streams finish) and new flows reconnect with it.
    tls: Mutex<watch::Receiver<Arc<TlsMaterial>>>,
    peers: tokio::sync::Mutex<HashMap<String, Peer>>,
}

impl QuicPool {
    /// A pool whose client endpoint binds `bind` on first use.
    pub fn new(bind: SocketAddr, tls: watch::Receiver<Arc<TlsMaterial>>) -> Self {
        QuicPool {
            bind,
            endpoint: Mutex::new(None),
            tls: Mutex::new(tls),
            peers: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The TLS material in force, and whether it changed since the last call.
    fn tls(&self) -> (Arc<TlsMaterial>, bool) {
        let mut rx = self.tls.lock().expect("quic tls lock poisoned");
        let changed = rx.has_changed().unwrap_or(false);
        (rx.borrow_and_update().clone(), changed)
    }

    fn endpoint(&self) -> Result<Endpoint, QuicError> {
        let mut ep = self.endpoint.lock().expect("quic endpoint lock poisoned");
        if let Some(e) = &*ep {
            return Ok(e.clone());
        }
        // Outside any flow's span: quinn's endpoint driver lives as long as
        // the pool, and would keep that span open (and unexported) forever.
        let _root = tracing::info_span!(parent: None, "quic_endpoint").entered();
        let e = udp_socket(self.bind)
            .or_else(|_| udp_socket(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)))
            .and_then(|socket| {
                let config = quinn::EndpointConfig::default();
                Endpoint::new(config, None, socket, Arc::new(quinn::TokioRuntime))
            })
            .map_err(QuicError::Bind)?;
        *ep = Some(e.clone());
        Ok(e)
    }

    /// Open a stream to the peer gateway `identity` at `addr`, connecting (or
    /// reconnecting) first when needed.
    pub async fn open_stream(
        &self,
        name: &str,
        identity: &str,
        addr: SocketAddr,
        handshake: Duration,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), QuicError> {
        let (tls, tls_changed) = self.tls();
        // Held across the connect so concurrent flows to one peer share one handshake.
        let mut peers = self.peers.lock().await;
        if tls_changed {
            // Connections made with the old material finish their streams.
            peers.clear();
        }
        if let Some(p) = peers.get(identity) {
            let conn = p.conn.clone();
            if conn.close_reason().is_none() {
                drop(peers);
                match conn.open_bi().await {
                    Ok(s) => return Ok(s),
                    Err(e) => {
                        info!(peer = identity, reason = %e, "quic connection lost; reconnecting")
                    }
                }
                peers = self.peers.lock().await;
            } else {
                info!(peer = identity, "quic connection lost; reconnecting");
            }
            if peers
                .get(identity)
                .is_some_and(|p| p.conn.stable_id() == conn.stable_id())
            {
                peers.remove(identity);
            }
        }
        if let Some(p) = peers.get(identity) {
            // Another flow reconnected meanwhile.
            let conn = p.conn.clone();
            drop(peers);
            return Ok(conn.open_bi().await?);
        }
        let crypto = QuicClientConfig::try_from(tls.peer_client(identity)?)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport());
        let endpoint = self.endpoint()?;
        let server_name = if name.is_empty() { "ward-peer" } else { name };
        // The connection outlives the flow that opened it: give its driver a
        // root span of its own rather than the flow's.
        let connecting = {
            let _root = tracing::info_span!(parent: None, "quic_peer", peer = identity).entered();
            endpoint
                .connect_with(config, addr, server_name)
                .map_err(|source| QuicError::Connect { addr, source })?
        };
        let conn = tokio::time::timeout(handshake, connecting)
            .await
            .map_err(|_| QuicError::HandshakeTimeout(addr))?
            .map_err(|source| QuicError::Handshake { addr, source })?;
        let serial = conn
            .peer_identity()
            .and_then(|id| {
                id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|certs| certs.first().and_then(|c| ward_pki::inspect(c)))
            .map(|i| i.serial);
        debug!(peer = identity, %addr, "quic connection up");
        peers.insert(
            identity.to_owned(),
            Peer {
                conn: conn.clone(),
                serial,
            },
        );
        drop(peers);
        Ok(conn.open_bi().await?)
    }

    /// Path figures of each live pooled connection, by peer identity; empty
    /// when a flow holds the pool at this instant (the next scrape sees them).
    pub fn path_stats(&self) -> Vec<(String, quinn::ConnectionStats)> {
        let Ok(peers) = self.peers.try_lock() else {
            return Vec::new();
        };
        let mut out: Vec<_> = peers
            .iter()
            .filter(|(_, p)| p.conn.close_reason().is_none())
            .map(|(id, p)| (id.clone(), p.conn.stats()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether the pooled connection to `identity` has closed.
    pub async fn is_lost(&self, identity: &str) -> bool {
        self.peers
            .lock()
            .await
            .get(identity)
            .is_none_or(|p| p.conn.close_reason().is_some())
    }

    /// Close connections to peers whose certificate `tls`'s CRL revokes.
    pub async fn close_revoked(&self, tls: &TlsMaterial) {
        let mut peers = self.peers.lock().await;
        {
            peers.retain(|id, p| {
                let revoked = p.serial.as_deref().is_some_and(|s| tls.is_revoked(s));
                if revoked {
                    info!(
                        peer = id.as_str(),
                        "closing quic connection: peer certificate revoked"
                    );
                    p.conn.close(2u32.into(), b"revoked");
                }
                !revoked
            });
        }
    }

    /// Close every connection and wait briefly for the peers to see it.
    pub async fn shutdown(&self) {
        let ep = self
            .endpoint
            .lock()
            .expect("quic endpoint lock poisoned")
            .clone();
        if let Some(ep) = ep {
            ep.close(0u32.into(), b"shutdown");
            let _ = tokio::time::timeout(CLOSE_GRACE, ep.wait_idle()).await;
        }
    }
}
