//! Learning data against a policy: which rule of a compiled [`Plan`] lets a
//! flow a device was seen with through, if any. The daemon judges what it
//! records against the plan in force; `wardctl policy simulate` judges the
//! same records against a candidate, with the same function.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::compile::{DevicePlan, ExceptionPlan, Plan};
use crate::model::{ExceptionTarget, L4};

/// IP protocol numbers of the keys.
pub const ICMP: u8 = 1;
/// TCP.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;

/// What a learning set records: the original direction of a flow.
/// `port` is the destination port, or for ICMP `type × 256 + code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlowKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub proto: u8,
    /// Destination port, or ICMP type × 256 + code.
    pub port: u16,
}

impl FlowKey {
    /// The protocol's name (`tcp`, `udp`, `icmp`, else its number).
    pub fn proto_name(&self) -> String {
        match self.proto {
            TCP => "tcp".into(),
            UDP => "udp".into(),
            ICMP => "icmp".into(),
            n => n.to_string(),
        }
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            ICMP => write!(
                f,
                "{} -> {} icmp type {} code {}",
                self.src,
                self.dst,
                self.port >> 8,
                self.port & 0xff
            ),
            _ => write!(
                f,
                "{} -> {}:{}/{}",
                self.src,
                self.dst,
                self.port,
                self.proto_name()
            ),
        }
    }
}

/// Which way a recorded flow goes, seen from its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The device opened it.
    Out,
    /// Something opened it to the device.
    In,
}

/// What a policy says of a flow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "by", content = "rule", rename_all = "kebab-case")]
pub enum Judgement {
    /// Carried by this flow (its listener or its interception).
    Flow(String),
    /// Let through by this raw exception.
    Exception(String),
    /// No rule allows it (dropped in enforce mode, counted in monitor mode).
    Denied,
    /// The device is quarantined.
    Quarantined,
}

impl Judgement {
    /// Allowed by some rule.
    pub fn allowed(&self) -> bool {
        matches!(self, Judgement::Flow(_) | Judgement::Exception(_))
    }
}

impl fmt::Display for Judgement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Judgement::Flow(n) => write!(f, "flow {n}"),
            Judgement::Exception(n) => write!(f, "exception {n}"),
            Judgement::Denied => f.write_str("denied"),
            Judgement::Quarantined => f.write_str("quarantined"),
        }
    }
}

impl Plan {
    /// The device a key belongs to (its source, else its destination) and
    /// which way the flow goes.
    pub fn device_of(&self, key: &FlowKey) -> Option<(&DevicePlan, Direction)> {
        let by_ip = |ip: Ipv4Addr| self.devices.values().find(|d| d.ip == IpAddr::V4(ip));
        by_ip(key.src)
            .map(|d| (d, Direction::Out))
            .or_else(|| by_ip(key.dst).map(|d| (d, Direction::In)))
    }

    /// What this plan does with a flow: the rule that lets it through, the
    /// same decision the ruleset and the data path make. A flow to a
    /// device is only ever allowed through a gateway's listener (the
    /// gateway opens the device leg itself), so what reaches a device
    /// directly is denied.
    pub fn judge(&self, key: &FlowKey) -> Judgement {
        let Some((device, direction)) = self.device_of(key) else {
            return Judgement::Denied;
        };
        if device.quarantined {
            return Judgement::Quarantined;
        }
        if direction == Direction::In {
            return Judgement::Denied;
        }
        if key.proto == TCP {
            let dst = SocketAddr::new(IpAddr::V4(key.dst), key.port);
            if let Ok(flow) = self.route(IpAddr::V4(key.src), dst) {
                return Judgement::Flow(flow.name.clone());
            }
        }
        self.exceptions
            .iter()
            .find(|e| self.exception_allows(e, key))
            .map_or(Judgement::Denied, |e| Judgement::Exception(e.name.clone()))
    }

    fn exception_allows(&self, e: &ExceptionPlan, key: &FlowKey) -> bool {
        let proto = match e.protocol {
            L4::Tcp => TCP,
            L4::Udp => UDP,
            L4::Icmp => ICMP,
        };
        let dst = IpAddr::V4(key.dst);
        let to = match e.to {
            ExceptionTarget::Gateway => self.own_addresses().contains(&dst),
            ExceptionTarget::Net { addr, prefix } => in_prefix(dst, addr, prefix),
        };
        e.sources.contains(&IpAddr::V4(key.src))
            && to
            && proto == key.proto
            && (proto == ICMP || e.port.is_none_or(|p| p == key.port))
    }

    /// Addresses the gateway holds, as far as the plan knows them: its LAN
    /// address, its router addresses, its listeners'.
    pub fn own_addresses(&self) -> Vec<IpAddr> {
        let mut v = vec![self.lan_address];
        v.extend(self.routers.iter().map(|r| r.0));
        v.extend(self.listeners.iter().map(|l| l.addr.ip()));
        v.extend(
            self.routes
                .iter()
                .filter(|r| !r.transparent)
                .map(|r| r.dst.ip()),
        );
        v
    }
}

fn in_prefix(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}
