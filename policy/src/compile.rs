//! The pure compile step: one gateway's part of the site policy, and the
//! per-connection authorization decisions made against it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::model::*;

/// Compile failed for a reason validation cannot see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// The policy has no gateway of that name.
    #[error("gateway \"{name}\" is not defined in the policy{}", help.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    UnknownGateway {
        /// The name asked for.
        name: String,
        /// A suggestion.
        help: Option<String>,
    },
}

/// A duration as the policy writes it, in its largest exact unit (`30m`, not `1800s`).
pub(crate) fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&crate::model::format_duration(*d))
}

/// Everything one gateway needs to run: listeners, routes and authorization
/// tables. Deterministic for a given policy; [`crate::nft::render`] turns it
/// into the gateway's nftables ruleset.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// This gateway's name.
    pub gateway: String,
    /// This gateway's SPIFFE identity.
    pub identity: String,
    /// The site's trust domain.
    pub trust_domain: String,
    /// Enforce or monitor.
    pub mode: Mode,
    /// Address of the `ward/1` tunnel server (TLS on TCP and QUIC on UDP),
    /// present when some flow is reached through this gateway.
    pub tunnel_server: Option<SocketAddr>,
    /// Addresses to listen on, sorted.
    pub listeners: Vec<Listener>,
    /// Flow lookup by (source device address, original destination), sorted.
    pub routes: Vec<Route>,
    /// Flows this gateway opens, by name.
    pub outbound: BTreeMap<String, OutboundFlow>,
    /// Flows peers may open through this gateway's tunnel server, by name.
    pub tunnels: BTreeMap<String, TunnelFlow>,
    /// Inbound access rules for TLS client listeners.
    pub access: Vec<AccessRule>,
    /// Devices behind this gateway, by id.
    pub devices: BTreeMap<String, DevicePlan>,
    /// Raw exceptions for devices behind this gateway.
    pub exceptions: Vec<ExceptionPlan>,
    /// Interfaces facing devices.
    pub device_interfaces: Vec<String>,
    /// How this gateway is inserted in front of its devices.
    pub insertion: Insertion,
    /// Routed insertion: the router addresses it holds on its device ports.
    pub routers: Vec<(IpAddr, u8)>,
    /// Loopback address of the transparent listener, when some flow is
    /// intercepted (its connections' local address is the original destination).
    pub transparent_listener: Option<SocketAddr>,
    /// Bridge insertion: the bridge in the cable.
    pub bridge: Option<Bridge>,
    /// This gateway's address on the hospital LAN.
    pub lan_address: IpAddr,
    /// Learning data: every device flow recorded in per-device nft sets
    /// (off in bridge insertion, whose bridged frames the inet table never
    /// sees; see `nft::OBSERVE_SET_SIZE`).
    pub observe: bool,
}

/// The three legs of a connection through a gateway (DESIGN §3.1). One
/// vocabulary from the plan's listeners through the daemon's files, the admin
/// API, metrics labels and audit records.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Leg {
    /// Cleartext from a device → this gateway → a tunnel or a TLS server.
    Outbound,
    /// A peer gateway's `ward/1` tunnel → this gateway → the flow's target.
    Tunnel,
    /// A TLS client with a certificate → this gateway → a device port.
    Access,
}

impl Leg {
    /// Lower-case name, as in metrics labels and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Leg::Outbound => "outbound",
            Leg::Tunnel => "tunnel",
            Leg::Access => "access",
        }
    }
}

impl std::fmt::Display for Leg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One listening address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Listener {
    /// Where to bind.
    pub addr: SocketAddr,
    /// The leg its connections start: [`Leg::Outbound`] (cleartext from
    /// devices) or [`Leg::Access`] (TLS with a required client certificate).
    /// The tunnel server is [`Plan::tunnel_server`], not a listener.
    pub leg: Leg,
}

/// One entry of the route table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Route {
    /// Source device address.
    pub src: IpAddr,
    /// Destination the device asked for (the listener, or later the original
    /// destination of a transparently intercepted connection).
    pub dst: SocketAddr,
    /// Flow name.
    pub flow: String,
    /// Intercepted at the original destination (routed insertion), not
    /// connected to a listener of this gateway.
    pub transparent: bool,
}

/// Where an outbound flow goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    /// Through a `ward/1` tunnel to a peer gateway.
    Tunnel {
        /// Peer gateway name.
        gateway: String,
        /// Peer gateway identity, checked in its certificate.
        identity: String,
        /// Peer's tunnel server.
        addr: SocketAddr,
        /// TCP or QUIC.
        transport: Transport,
    },
    /// Straight to a server that speaks TLS.
    Tls {
        /// Server address.
        addr: SocketAddr,
        /// Name to verify.
        server_name: String,
        /// CA file.
        ca: String,
    },
}

/// A flow this gateway opens on behalf of a device (or, for a return flow,
/// of a server connecting back to a device behind a peer gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboundFlow {
    /// Flow name.
    pub name: String,
    /// Device id.
    pub device: String,
    /// Device address.
    pub source: IpAddr,
    /// Listener address the device connects to.
    pub listen: SocketAddr,
    /// Service name.
    pub service: String,
    /// Application protocol.
    pub protocol: Protocol,
    /// Where it goes.
    pub target: Target,
    /// The connecting side speaks TLS itself (a TLS server opening a return
    /// association): this gateway terminates it with its own certificate and
    /// requires the client's, verified by this CA and carrying this name.
    pub client_tls: Option<TlsTarget>,
    /// Idle timeout.
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// Connect timeout.
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// Concurrent connection limit.
    pub max_connections: u32,
    /// What the device may say inside the flow, checked where its
    /// cleartext enters (this gateway).
    pub guard: Option<Guard>,
}

/// A flow a peer gateway may open to a local target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelFlow {
    /// Flow name.
    pub name: String,
    /// The only identity that may open it.
    pub peer: String,
    /// Source device id, as the opener must state it.
    pub device: String,
    /// Whether that device is quarantined.
    pub quarantined: bool,
    /// Service name.
    pub service: String,
    /// The server on this gateway's side.
    pub target: SocketAddr,
    /// The server speaks TLS itself: connect it over TLS, verified by this CA
    /// and name, presenting this gateway's certificate. `None`: cleartext.
    pub tls: Option<TlsTarget>,
    /// Application protocol.
    pub protocol: Protocol,
    /// Idle timeout.
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// Connect timeout.
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// Concurrent connection limit.
    pub max_connections: u32,
}

/// Inbound access: a client identity to a device port through a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessRule {
    /// Flow name.
    pub flow: String,
    /// TLS listener address.
    pub listen: SocketAddr,
    /// Client name.
    pub client: String,
    /// Identity required in the client certificate.
    pub identity: String,
    /// Device id.
    pub device: String,
    /// Device address and port.
    pub target: SocketAddr,
    /// Maintenance window, if limited.
    pub window: Option<Window>,
    /// Idle timeout.
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// Connect timeout.
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// Concurrent connection limit.
    pub max_connections: u32,
    /// What the client may say to the device, checked where its cleartext
    /// enters (this gateway, after TLS).
    pub guard: Option<Guard>,
}

/// A device behind this gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DevicePlan {
    /// Id.
    pub id: String,
    /// Address.
    pub ip: IpAddr,
    /// MAC.
    pub mac: Mac,
    /// Interface.
    pub interface: String,
    /// Quarantined: all traffic dropped.
    pub quarantined: bool,
    /// Name of its nft drop counter.
    pub counter: String,
    /// Inventory record.
    pub inventory: Inventory,
}

/// What the policy says about a device beyond its addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Inventory {
    /// Human-readable name.
    pub name: Option<String>,
    /// Device class.
    pub class: Option<String>,
    /// Manufacturer.
    pub vendor: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Firmware.
    pub firmware: Option<String>,
    /// Support stage (kebab-case, IMDRF N70).
    pub support: Option<String>,
    /// End of support, YYYY-MM-DD.
    pub support_ends: Option<String>,
    /// Known vulnerabilities.
    pub vulnerabilities: Vec<String>,
}

/// A raw exception, resolved to addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExceptionPlan {
    /// Name.
    pub name: String,
    /// Source device addresses.
    pub sources: Vec<IpAddr>,
    /// Destination.
    pub to: ExceptionTarget,
    /// Protocol.
    pub protocol: L4,
    /// Port.
    pub port: Option<u16>,
}

/// Why a connection is refused. Each has a stable wire code for `ward/1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Denied {
    /// No flow for this source and destination.
    #[error("no flow for this source and destination")]
    NoRoute,
    /// The device is quarantined.
    #[error("device is quarantined")]
    Quarantined,
    /// This gateway knows no such flow.
    #[error("flow is not known to this gateway")]
    UnknownFlow,
    /// The peer's identity may not open this flow.
    #[error("peer identity may not open this flow")]
    WrongPeer,
    /// The source device stated does not match the flow.
    #[error("source device does not match the flow")]
    WrongDevice,
    /// Outside the flow's maintenance window.
    #[error("outside the flow's maintenance window")]
    OutsideWindow,
}

impl Denied {
    /// Stable reason code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Denied::NoRoute => 1,
            Denied::Quarantined => 2,
            Denied::UnknownFlow => 3,
            Denied::WrongPeer => 4,
            Denied::WrongDevice => 5,
            Denied::OutsideWindow => 6,
        }
    }

    /// The reason for a wire code, if known.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Denied::NoRoute,
            2 => Denied::Quarantined,
            3 => Denied::UnknownFlow,
            4 => Denied::WrongPeer,
            5 => Denied::WrongDevice,
            6 => Denied::OutsideWindow,
            _ => return None,
        })
    }
}

impl Plan {
    /// The CA file of every service this gateway connects over TLS (an
    /// outbound flow's direct server, or the server behind this hub) or
    /// accepts TLS from (a return flow's server), by service name.
    pub fn service_cas(&self) -> BTreeMap<&str, &str> {
        let direct = self.outbound.values().filter_map(|f| match &f.target {
            Target::Tls { ca, .. } => Some((f.service.as_str(), ca.as_str())),
            Target::Tunnel { .. } => None,
        });
        let returning = self.outbound.values().filter_map(|f| {
            f.client_tls
                .as_ref()
                .map(|t| (f.service.as_str(), t.ca.as_str()))
        });
        let behind = self
            .tunnels
            .values()
            .filter_map(|f| f.tls.as_ref().map(|t| (f.service.as_str(), t.ca.as_str())));
        direct.chain(returning).chain(behind).collect()
    }

    /// Opener side: which flow a device's connection belongs to.
    pub fn route(&self, src: IpAddr, dst: SocketAddr) -> Result<&OutboundFlow, Denied> {
        let i = self
            .routes
            .binary_search_by(|r| (r.src, r.dst).cmp(&(src, dst)))
            .map_err(|_| Denied::NoRoute)?;
        let flow = self
            .outbound
            .get(&self.routes[i].flow)
            .ok_or(Denied::NoRoute)?;
        if self
            .devices
            .get(&flow.device)
            .is_some_and(|d| d.quarantined)
        {
            return Err(Denied::Quarantined);
        }
        Ok(flow)
    }

    /// Receiver side: may `peer` open `flow` for `device`? Decided on this
    /// gateway's own plan, whatever the opener decided.
    pub fn authorize_tunnel(
        &self,
        peer: &str,
        flow: &str,
        device: &str,
    ) -> Result<&TunnelFlow, Denied> {
        let f = self.tunnels.get(flow).ok_or(Denied::UnknownFlow)?;
        if f.peer != peer {
            return Err(Denied::WrongPeer);
        }
        if f.device != device {
            return Err(Denied::WrongDevice);
        }
        if f.quarantined {
            return Err(Denied::Quarantined);
        }
        Ok(f)
    }

    /// TLS client listener: may the client with identity `peer`, connected to
    /// `listen`, reach its device now (`at`, supplied by the caller)?
    pub fn authorize_client(
        &self,
        peer: &str,
        listen: SocketAddr,
        at: jiff::Timestamp,
    ) -> Result<&AccessRule, Denied> {
        let mut at_listener = self.access.iter().filter(|a| a.listen == listen).peekable();
        if at_listener.peek().is_none() {
            return Err(Denied::NoRoute);
        }
        let rule = at_listener
            .find(|a| a.identity == peer)
            .ok_or(Denied::WrongPeer)?;
        if self
            .devices
            .get(&rule.device)
            .is_some_and(|d| d.quarantined)
        {
            return Err(Denied::Quarantined);
        }
        match &rule.window {
            Some(w) if !w.contains(at) => Err(Denied::OutsideWindow),
            _ => Ok(rule),
        }
    }

    /// This plan with `devices` quarantined in addition to what the policy
    /// quarantines (an admin's runtime action): the devices' flags, the
    /// tunnel flows of those devices (and so its rendered ruleset). Unknown ids are ignored.
    pub fn with_quarantine<'a>(&self, devices: impl IntoIterator<Item = &'a str>) -> Plan {
        let mut plan = self.clone();
        for id in devices {
            if let Some(d) = plan.devices.get_mut(id)
                && !d.quarantined
            {
                d.quarantined = true;
            }
            for t in plan.tunnels.values_mut().filter(|t| t.device == id) {
                t.quarantined = true;
            }
        }
        plan
    }
}

/// nft counter name of a device's drops.
pub fn device_counter(id: &str) -> String {
    format!("dev_{id}")
}

/// Compile `gateway`'s part of a validated policy.
///
/// Run [`crate::validate`] first: compile skips entries whose references do not
/// resolve rather than reporting them.
pub fn compile(policy: &Policy, gateway: &str) -> Result<Plan, CompileError> {
    let Some(gw) = policy.gateways.get(gateway) else {
        return Err(CompileError::UnknownGateway {
            name: gateway.to_owned(),
            help: crate::diag::did_you_mean(gateway, policy.gateways.keys().map(String::as_str)),
        });
    };
    let quarantined = |id: &str| policy.quarantine.iter().any(|q| q.value == id);

    let devices: BTreeMap<String, DevicePlan> = policy
        .devices
        .values()
        .filter(|d| d.gateway.value == gateway)
        .map(|d| {
            (
                d.id.value.clone(),
                DevicePlan {
                    id: d.id.value.clone(),
                    ip: d.ip.value,
                    mac: d.mac.value,
                    interface: d.interface.value.clone(),
                    quarantined: quarantined(&d.id.value),
                    counter: device_counter(&d.id.value),
                    inventory: Inventory {
                        name: d.name.clone(),
                        class: d.class.clone(),
                        vendor: d.vendor.clone(),
                        model: d.model.clone(),
                        firmware: d.firmware.clone(),
                        support: d.support.as_ref().and_then(|s| {
                            serde_json::to_value(s.stage)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                        }),
                        support_ends: d
                            .support
                            .as_ref()
                            .and_then(|s| s.ends.map(|e| e.to_string())),
                        vulnerabilities: d.vulnerabilities.clone(),
                    },
                },
            )
        })
        .collect();

    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    let mut outbound = BTreeMap::new();
    let mut tunnels = BTreeMap::new();
    let mut access = Vec::new();
    let mut tunnel_server = None;

    for f in &policy.flows {
        match &f.kind {
            FlowKind::Outbound { device, service } => {
                let (Some(dev), Some(svc)) = (
                    policy.devices.get(&device.value),
                    policy.services.get(&service.value),
                ) else {
                    continue;
                };
                if dev.gateway.value == gateway {
                    let target = match (&svc.via, &svc.tls) {
                        (Some(via), _) => {
                            let Some(peer) = policy.gateways.get(&via.value) else {
                                continue;
                            };
                            Target::Tunnel {
                                gateway: via.value.clone(),
                                identity: policy.gateway_identity(&via.value),
                                addr: SocketAddr::new(peer.lan_address.value, peer.tunnel_port),
                                transport: f.transport,
                            }
                        }
                        (None, Some(tls)) => Target::Tls {
                            addr: svc.address.value,
                            server_name: tls.server_name.clone(),
                            ca: tls.ca.clone(),
                        },
                        (None, None) => continue,
                    };
                    if !f.transparent {
                        listeners.push(Listener {
                            addr: f.listen.value,
                            leg: Leg::Outbound,
                        });
                    }
                    routes.push(Route {
                        src: dev.ip.value,
                        dst: f.listen.value,
                        flow: f.name.value.clone(),
                        transparent: f.transparent,
                    });
                    outbound.insert(
                        f.name.value.clone(),
                        OutboundFlow {
                            name: f.name.value.clone(),
                            device: dev.id.value.clone(),
                            source: dev.ip.value,
                            listen: f.listen.value,
                            service: svc.name.value.clone(),
                            protocol: svc.protocol,
                            target,
                            client_tls: None,
                            idle_timeout: f.idle_timeout,
                            connect_timeout: f.connect_timeout,
                            max_connections: f.max_connections,
                            guard: f.guard.as_ref().map(|g| g.value.clone()),
                        },
                    );
                }
                if let Some(via) = &svc.via
                    && via.value == gateway
                {
                    tunnel_server = Some(SocketAddr::new(gw.lan_address.value, gw.tunnel_port));
                    tunnels.insert(
                        f.name.value.clone(),
                        TunnelFlow {
                            name: f.name.value.clone(),
                            peer: policy.gateway_identity(&dev.gateway.value),
                            device: dev.id.value.clone(),
                            quarantined: quarantined(&dev.id.value),
                            service: svc.name.value.clone(),
                            target: svc.address.value,
                            tls: svc.tls.as_ref().map(|t| t.value.clone()),
                            protocol: svc.protocol,
                            idle_timeout: f.idle_timeout,
                            connect_timeout: f.connect_timeout,
                            max_connections: f.max_connections,
                        },
                    );
                }
            }
            FlowKind::Return {
                service,
                device,
                port,
            } => {
                let (Some(dev), Some(svc)) = (
                    policy.devices.get(&device.value),
                    policy.services.get(&service.value),
                ) else {
                    continue;
                };
                let Some(via) = &svc.via else { continue };
                if via.value == gateway {
                    let Some(peer) = policy.gateways.get(&dev.gateway.value) else {
                        continue;
                    };
                    listeners.push(Listener {
                        addr: f.listen.value,
                        leg: Leg::Outbound,
                    });
                    routes.push(Route {
                        src: svc.address.value.ip(),
                        dst: f.listen.value,
                        flow: f.name.value.clone(),
                        transparent: false,
                    });
                    outbound.insert(
                        f.name.value.clone(),
                        OutboundFlow {
                            name: f.name.value.clone(),
                            device: dev.id.value.clone(),
                            source: svc.address.value.ip(),
                            listen: f.listen.value,
                            service: svc.name.value.clone(),
                            protocol: svc.protocol,
                            target: Target::Tunnel {
                                gateway: dev.gateway.value.clone(),
                                identity: policy.gateway_identity(&dev.gateway.value),
                                addr: SocketAddr::new(peer.lan_address.value, peer.tunnel_port),
                                transport: f.transport,
                            },
                            client_tls: svc.tls.as_ref().map(|t| t.value.clone()),
                            idle_timeout: f.idle_timeout,
                            connect_timeout: f.connect_timeout,
                            max_connections: f.max_connections,
                            guard: None,
                        },
                    );
                }
                if dev.gateway.value == gateway {
                    tunnel_server = Some(SocketAddr::new(gw.lan_address.value, gw.tunnel_port));
                    tunnels.insert(
                        f.name.value.clone(),
                        TunnelFlow {
                            name: f.name.value.clone(),
                            peer: policy.gateway_identity(&via.value),
                            device: dev.id.value.clone(),
                            quarantined: quarantined(&dev.id.value),
                            service: svc.name.value.clone(),
                            target: SocketAddr::new(dev.ip.value, *port),
                            tls: None,
                            protocol: svc.protocol,
                            idle_timeout: f.idle_timeout,
                            connect_timeout: f.connect_timeout,
                            max_connections: f.max_connections,
                        },
                    );
                }
            }
            FlowKind::Inbound {
                client,
                device,
                port,
                window,
            } => {
                let Some(dev) = policy.devices.get(&device.value) else {
                    continue;
                };
                if dev.gateway.value != gateway {
                    continue;
                }
                listeners.push(Listener {
                    addr: f.listen.value,
                    leg: Leg::Access,
                });
                access.push(AccessRule {
                    flow: f.name.value.clone(),
                    listen: f.listen.value,
                    client: client.value.clone(),
                    identity: policy.client_identity(&client.value),
                    device: dev.id.value.clone(),
                    target: SocketAddr::new(dev.ip.value, *port),
                    window: window.clone().map(|mut w| {
                        // The window's own zone, else the gateway's, else the site's.
                        w.tz =
                            w.tz.or_else(|| gw.tz.as_ref().map(|t| t.value.clone()))
                                .or_else(|| policy.tz.as_ref().map(|t| t.value.clone()))
                                .or_else(|| Some(DEFAULT_TZ.to_owned()));
                        w
                    }),
                    idle_timeout: f.idle_timeout,
                    connect_timeout: f.connect_timeout,
                    max_connections: f.max_connections,
                    guard: f.guard.as_ref().map(|g| g.value.clone()),
                });
            }
        }
    }
    listeners.sort();
    listeners.dedup();
    routes.sort();
    access.sort_by(|a, b| (a.listen, &a.identity).cmp(&(b.listen, &b.identity)));

    let exceptions = policy
        .exceptions
        .iter()
        .filter_map(|e| {
            let mut sources: Vec<IpAddr> = e
                .devices
                .iter()
                .filter_map(|d| devices.get(&d.value).map(|d| d.ip))
                .collect();
            sources.sort();
            sources.dedup();
            (!sources.is_empty()).then(|| ExceptionPlan {
                name: e.name.value.clone(),
                sources,
                to: e.to.value,
                protocol: e.protocol,
                port: e.port,
            })
        })
        .collect();

    let transparent_listener = routes
        .iter()
        .any(|r| r.transparent)
        .then(|| SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), gw.transparent_port));
    let plan = Plan {
        gateway: gateway.to_owned(),
        identity: policy.gateway_identity(gateway),
        trust_domain: policy.trust_domain.value.clone(),
        mode: policy.mode,
        tunnel_server,
        listeners,
        routes,
        outbound,
        tunnels,
        access,
        devices,
        exceptions,
        device_interfaces: gw
            .device_interfaces
            .iter()
            .map(|i| i.value.clone())
            .collect(),
        insertion: gw.insertion,
        routers: gw.routers.iter().map(|r| r.value).collect(),
        transparent_listener,
        bridge: gw.bridge.as_ref().map(|b| b.value.clone()),
        lan_address: gw.lan_address.value,
        observe: gw.observe && gw.insertion != Insertion::Bridge,
    };
    Ok(plan)
}
