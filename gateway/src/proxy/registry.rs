//! Live connections and per-flow statistics: what the admin API lists, what
//! reload and revocation close, and where the connection limits are kept.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use ward_api::audit::HandshakeFailure;
use ward_policy::Leg;

use crate::transport::relay::{Counters, Totals};

/// What a connection was admitted on: the inputs of the policy decision
/// that let it in, so the same decision can be taken again on a new plan
/// (`ward_policy::Plan::route`, `authorize_tunnel`, `authorize_client`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// A device's connection to `dst` (its listener, or the original destination).
    Outbound {
        /// Destination the device asked for.
        dst: SocketAddr,
        /// Where the flow went when admitted: the peer gateway's identity
        /// and tunnel server, or the TLS server's name and address.
        far: String,
    },
    /// A peer gateway's tunnel for `device`.
    Tunnel {
        /// Device id the open frame named.
        device: String,
        /// The server it was connected to ([`server_of`]).
        server: String,
    },
    /// A client's connection to the access listener `listener`.
    Access {
        /// The listener's address.
        listener: SocketAddr,
        /// The device port it was connected to.
        target: SocketAddr,
    },
}

/// Where an outbound flow goes, as compared across reloads: the peer or
/// server and its address (not the transport, which may change under a
/// live connection without changing who is reached).
pub fn far_of(target: &ward_policy::Target) -> String {
    match target {
        ward_policy::Target::Tunnel { identity, addr, .. } => format!("{identity} at {addr}"),
        ward_policy::Target::Tls {
            server_name, addr, ..
        } => format!("{server_name} at {addr}"),
    }
}

/// Which server a tunnel flow connects, as compared across reloads: its
/// address, and for a TLS server the name verified (a new name or CA is
/// another server as far as trust goes).
pub fn server_of(flow: &ward_policy::TunnelFlow) -> String {
    match &flow.tls {
        Some(tls) => format!(
            "{} at {} (tls, ca {})",
            tls.server_name, flow.target, tls.ca
        ),
        None => flow.target.to_string(),
    }
}

impl Grant {
    /// The leg this grant belongs to.
    pub fn leg(&self) -> Leg {
        match self {
            Grant::Outbound { .. } => Leg::Outbound,
            Grant::Tunnel { .. } => Leg::Tunnel,
            Grant::Access { .. } => Leg::Access,
        }
    }
}

/// Counters of one flow, over all its connections.
#[derive(Debug, Default)]
pub struct FlowStats {
    /// Connections admitted since start.
    pub opened: AtomicU64,
    /// Connections refused since start (policy, limits, far end unreachable).
    pub denied: AtomicU64,
    /// Messages the flow's guard refused (or, in monitor mode, would have).
    pub guard_refusals: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Bytes of every connection of the flow since start, per direction.
    pub bytes: Arc<Totals>,
    /// When a connection last opened (Unix seconds; 0: never).
    pub last_opened: AtomicU64,
    /// What the flow's protocol said (guarded flows, and in learning).
    pub facts: Arc<crate::guard::facts::Facts>,
}

/// One live connection.
#[derive(Debug, Clone)]
pub struct Live {
    /// Flow name.
    pub flow: String,
    /// What it was admitted on (its leg, and the decision's inputs).
    pub grant: Grant,
    /// Device id.
    pub device: String,
    /// Peer identity: the peer gateway or client (SPIFFE id), or the server
    /// name of a TLS server.
    pub peer: Option<String>,
    /// Serial of the peer's certificate.
    pub peer_serial: Option<String>,
    /// Source address: the device, the client, or (tunnel leg) the
    /// opener's device as its open frame stated it.
    pub source: SocketAddr,
    /// When it opened.
    pub started: SystemTime,
    /// Bytes so far.
    pub counters: Arc<Counters>,
    /// Cancels this connection.
    pub cancel: CancellationToken,
}

/// All live connections and flow statistics of a gateway.
#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
    flows: Mutex<HashMap<String, Arc<FlowStats>>>,
    sources: Mutex<HashMap<IpAddr, u32>>,
    handshakes: Mutex<HashMap<(Leg, HandshakeFailure), u64>>,
    carried: Mutex<HashMap<CarriedKey, Carried>>,
}

/// (device, flow, leg, peer) of [`Carried`].
pub type CarriedKey = (String, String, Leg, String);

/// Most (device, flow, leg, peer) aggregates kept; connections of others
/// still count in the flow statistics.
pub const MAX_CARRIED: usize = 4096;

/// Connections a gateway carried for a device since start, per flow, leg
/// and peer (learning data; ended connections' bytes included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// Connections opened.
    pub connections: u64,
    /// Bytes of ended connections towards the far end.
    pub bytes_up: u64,
    /// Bytes of ended connections towards the device.
    pub bytes_down: u64,
    /// First opened (Unix seconds).
    pub first: u64,
    /// Last opened or ended (Unix seconds).
    pub last: u64,
}

fn carried_key(l: &Live) -> CarriedKey {
    (
        l.device.clone(),
        l.flow.clone(),
        l.grant.leg(),
        l.peer.clone().unwrap_or_default(),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Removes its connection from the registry when dropped.
#[derive(Debug)]
pub struct LiveGuard {
    registry: Arc<Registry>,
    id: u64,
    stats: Arc<FlowStats>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        let ended = self
            .registry
            .live
            .lock()
            .expect("registry lock poisoned")
            .remove(&self.id);
        if let Some(l) = ended {
            let mut carried = self
                .registry
                .carried
                .lock()
                .expect("registry lock poisoned");
            if let Some(c) = carried.get_mut(&carried_key(&l)) {
                c.bytes_up += l.counters.up.load(Ordering::Relaxed);
                c.bytes_down += l.counters.down.load(Ordering::Relaxed);
                c.last = unix_now();
            }
        }
    }
}

/// Holds one connection slot of a source address.
#[derive(Debug)]
pub struct SourceGuard {
    registry: Arc<Registry>,
    ip: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut s = self
            .registry
            .sources
            .lock()
            .expect("registry lock poisoned");
        if let Some(n) = s.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.remove(&self.ip);
            }
        }
    }
}

impl Registry {
    /// Statistics of `flow`, created on first use.
    pub fn flow(&self, flow: &str) -> Arc<FlowStats> {
        let mut flows = self.flows.lock().expect("registry lock poisoned");
        // Every connection asks: the name is copied only the first time.
        if let Some(s) = flows.get(flow) {
            return s.clone();
        }
        flows.entry(flow.to_owned()).or_default().clone()
    }

    /// Take a connection slot of `ip`, if fewer than `max` are in use.
    pub fn acquire_source(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<SourceGuard> {
        let mut s = self.sources.lock().expect("registry lock poisoned");
        let n = s.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceGuard {
            registry: self.clone(),
            ip,
        })
    }

    /// Register a connection of `flow` if the flow has fewer than `max` open.
    pub fn open(self: &Arc<Self>, live: Live, max: u32) -> Option<LiveGuard> {
        let stats = self.flow(&live.flow);
        let prev = stats.active.fetch_add(1, Ordering::Relaxed);
        if prev >= u64::from(max) {
            stats.active.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        stats.opened.fetch_add(1, Ordering::Relaxed);
        let now = unix_now();
        stats.last_opened.store(now, Ordering::Relaxed);
        {
            let mut carried = self.carried.lock().expect("registry lock poisoned");
            let key = carried_key(&live);
            if carried.len() < MAX_CARRIED || carried.contains_key(&key) {
                let c = carried.entry(key).or_insert(Carried {
                    first: now,
                    ..Carried::default()
                });
                c.connections += 1;
                c.last = now;
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .expect("registry lock poisoned")
            .insert(id, live);
        Some(LiveGuard {
            registry: self.clone(),
            id,
            stats,
        })
    }

    /// Count a refused connection of `flow`.
    pub fn denied(&self, flow: &str) {
        self.flow(flow).denied.fetch_add(1, Ordering::Relaxed);
    }

    /// Cancel every live connection matching `pred`; returns them.
    pub fn cancel_where(&self, pred: impl Fn(&Live) -> bool) -> Vec<Live> {
        let live = self.live.lock().expect("registry lock poisoned");
        let hit: Vec<Live> = live.values().filter(|l| pred(l)).cloned().collect();
        for l in &hit {
            l.cancel.cancel();
        }
        hit
    }

    /// Connections carried since start per (device, flow, leg, peer),
    /// the live ones' bytes so far included.
    pub fn carried(&self) -> Vec<(CarriedKey, Carried)> {
        let mut all = self.carried.lock().expect("registry lock poisoned").clone();
        for l in self.snapshot() {
            if let Some(c) = all.get_mut(&carried_key(&l)) {
                c.bytes_up += l.counters.up.load(Ordering::Relaxed);
                c.bytes_down += l.counters.down.load(Ordering::Relaxed);
            }
        }
        all.into_iter().collect()
    }

    /// A copy of every live connection.
    pub fn snapshot(&self) -> Vec<Live> {
        self.live
            .lock()
            .expect("registry lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Count a failed handshake on `leg` by reason.
    pub fn handshake_failed(&self, leg: Leg, reason: HandshakeFailure) {
        *self
            .handshakes
            .lock()
            .expect("registry lock poisoned")
            .entry((leg, reason))
            .or_default() += 1;
    }

    /// Failed handshakes by leg and reason, sorted.
    pub fn handshake_failures(&self) -> Vec<((Leg, HandshakeFailure), u64)> {
        let mut v: Vec<_> = self
            .handshakes
            .lock()
            .expect("registry lock poisoned")
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        v.sort();
        v
    }

    /// Statistics of every flow seen.
    pub fn flow_stats(&self) -> Vec<(String, Arc<FlowStats>)> {
        let mut v: Vec<_> = self
            .flows
            .lock()
            .expect("registry lock poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
