//! Semantic checks: every reference resolves, nothing clashes, every
//! exception is justified. Returns all findings, errors and warnings.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use crate::diag::{Diagnostic, Diagnostics, Span, did_you_mean};
use crate::model::*;

/// Inputs to validation that are not in the policy itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidateOptions {
    /// Today's date, to judge end-of-support dates. `None` judges by stage only.
    pub today: Option<Date>,
}

/// Check `policy`; returns every error and warning, in source order.
pub fn validate(policy: &Policy, opts: &ValidateOptions) -> Vec<Diagnostic> {
    let mut d = Diagnostics::new(&policy.source);
    check_names(policy, &mut d);
    check_gateways(policy, &mut d);
    check_devices(policy, &mut d);
    check_services(policy, &mut d);
    check_flows(policy, &mut d);
    check_exceptions(policy, &mut d);
    check_quarantine(policy, &mut d);
    check_legacy(policy, opts, &mut d);
    d.into_vec()
}

/// A reference to an undefined name; silent when the name is declared but
/// could not be read (its own errors are reported where it is declared).
fn unknown(
    p: &Policy,
    d: &mut Diagnostics,
    span: &Span,
    key: String,
    what: &str,
    name: &str,
    candidates: impl IntoIterator<Item = impl AsRef<str>>,
) {
    if p.unreadable.contains(name) {
        return;
    }
    let candidates: Vec<String> = candidates
        .into_iter()
        .map(|c| c.as_ref().to_owned())
        .collect();
    let help = did_you_mean(name, candidates.iter().map(String::as_str));
    d.error_help(span, key, format!("{what} \"{name}\" is not defined"), help);
}

/// Flows name devices, services and clients alike, so one name must mean one thing.
fn check_names(p: &Policy, d: &mut Diagnostics) {
    for (name, s) in &p.services {
        if p.devices.contains_key(name) {
            d.error(
                &s.name.span,
                format!("services.{name}"),
                format!("\"{name}\" is already a device; flows could not tell them apart"),
            );
        }
    }
    for (name, c) in &p.clients {
        if p.devices.contains_key(name) || p.services.contains_key(name) {
            d.error(
                &c.name.span,
                format!("clients.{name}"),
                format!(
                    "\"{name}\" is already a device or service; flows could not tell them apart"
                ),
            );
        }
    }
}

fn check_gateways(p: &Policy, d: &mut Diagnostics) {
    let mut seen: HashMap<IpAddr, &str> = HashMap::new();
    for (name, g) in &p.gateways {
        if let Some(other) = seen.insert(g.lan_address.value, name) {
            d.error(
                &g.lan_address.span,
                format!("gateways.{name}.lan_address"),
                format!(
                    "{} is also the LAN address of gateway \"{other}\"",
                    g.lan_address.value
                ),
            );
        }
        let mut ifs: HashMap<&str, ()> = HashMap::new();
        for i in &g.device_interfaces {
            if ifs.insert(&i.value, ()).is_some() {
                d.error(
                    &i.span,
                    format!("gateways.{name}.device_interfaces"),
                    format!("interface \"{}\" is listed twice", i.value),
                );
            }
            if i.value.is_empty() || i.value.len() > 15 || i.value.contains(['/', ' ', '"']) {
                d.error(
                    &i.span,
                    format!("gateways.{name}.device_interfaces"),
                    format!("\"{}\" is not a valid Linux interface name", i.value),
                );
            }
        }
        check_routed(p, name, g, d);
    }
}

/// A routed gateway names the router address of every segment its devices
/// sit on; routers mean nothing to an explicit gateway.
fn check_routed(p: &Policy, name: &str, g: &Gateway, d: &mut Diagnostics) {
    let key = format!("gateways.{name}.routers");
    let bridge_key = format!("gateways.{name}.bridge");
    if g.insertion != Insertion::Bridge
        && let Some(b) = &g.bridge
    {
        d.error(
            &b.span,
            bridge_key.clone(),
            "bridge applies to insertion = \"bridge\" only",
        );
    }
    match g.insertion {
        Insertion::Explicit | Insertion::Bridge => {
            if let Some(r) = g.routers.first() {
                d.error(&r.span, key, "routers apply to insertion = \"routed\" only");
            }
            if g.insertion == Insertion::Bridge {
                match &g.bridge {
                    None => d.error(&g.name.span, bridge_key, format!("gateway \"{name}\" is a bridge: name it, its uplink and MACs: bridge = {{ name = \"br0\", uplink = \"up0\", mac = \"02:..\", router_mac = \"..\" }}")),
                    Some(b) => {
                        for (what, ifname) in [("name", &b.name), ("uplink", &b.uplink)] {
                            if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ', '"']) {
                                d.error(&b.span, format!("{bridge_key}.{what}"), format!("\"{ifname}\" is not a valid Linux interface name"));
                            }
                            if g.device_interfaces.iter().any(|i| &i.value == ifname) {
                                d.error(&b.span, format!("{bridge_key}.{what}"), format!("\"{ifname}\" is also a device interface; the bridge joins the device ports and one uplink"));
                            }
                        }
                        if g.device_interfaces.is_empty() {
                            d.error(&b.span, bridge_key, "a bridge needs device ports (device_interfaces) besides its uplink");
                        }
                    }
                }
            }
        }
        Insertion::Routed => {
            if g.routers.is_empty() {
                d.error(&g.name.span, key, format!("gateway \"{name}\" is routed: name the router addresses it holds on its device ports, e.g. routers = [\"198.51.100.1/28\"]"));
            }
            for dev in p.devices.values().filter(|dev| dev.gateway.value == name) {
                let on_segment = g.routers.iter().any(|r| same_net(r.value, dev.ip.value));
                if !on_segment && !g.routers.is_empty() {
                    d.error(&dev.ip.span, format!("devices.{}.ip", dev.id.value), format!("{} is on no segment whose router gateway \"{name}\" holds (routers: {})", dev.ip.value, g.routers.iter().map(|r| format!("{}/{}", r.value.0, r.value.1)).collect::<Vec<_>>().join(", ")));
                }
            }
        }
    }
}

/// Whether `ip` lies in the network of `router` (address and prefix).
fn same_net((router, prefix): (IpAddr, u8), ip: IpAddr) -> bool {
    match (router, ip) {
        (IpAddr::V4(r), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(r) & mask == u32::from(i) & mask && r != i
        }
        _ => false,
    }
}

fn check_devices(p: &Policy, d: &mut Diagnostics) {
    let mut ips: BTreeMap<IpAddr, (&str, u32)> = BTreeMap::new();
    let mut macs: BTreeMap<Mac, (&str, u32)> = BTreeMap::new();
    // Report the later of two clashing entries, naming the earlier one.
    let mut by_pos: Vec<&Device> = p.devices.values().collect();
    by_pos.sort_by_key(|dev| dev.id.span.start);
    for dev in by_pos {
        let id = dev.id.value.as_str();
        let line = p.source.locate(dev.id.span.start).0;
        match p.gateways.get(&dev.gateway.value) {
            None => unknown(
                p,
                d,
                &dev.gateway.span,
                format!("devices.{id}.gateway"),
                "gateway",
                &dev.gateway.value,
                p.gateways.keys(),
            ),
            Some(g) => {
                if !g
                    .device_interfaces
                    .iter()
                    .any(|i| i.value == dev.interface.value)
                {
                    let names: Vec<&str> = g
                        .device_interfaces
                        .iter()
                        .map(|i| i.value.as_str())
                        .collect();
                    let help =
                        did_you_mean(&dev.interface.value, names.iter().copied()).or_else(|| {
                            Some(format!(
                                "its device interfaces are: {}",
                                if names.is_empty() {
                                    "none".to_owned()
                                } else {
                                    names.join(", ")
                                }
                            ))
                        });
                    d.error_help(
                        &dev.interface.span,
                        format!("devices.{id}.interface"),
                        format!(
                            "gateway \"{}\" has no device interface \"{}\"",
                            g.name.value, dev.interface.value
                        ),
                        help,
                    );
                }
                if g.lan_address.value == dev.ip.value {
                    d.error(
                        &dev.ip.span,
                        format!("devices.{id}.ip"),
                        format!(
                            "{} is the LAN address of gateway \"{}\"",
                            dev.ip.value, g.name.value
                        ),
                    );
                }
            }
        }
        if let Some((other, l)) = ips.insert(dev.ip.value, (id, line)) {
            d.error(
                &dev.ip.span,
                format!("devices.{id}.ip"),
                format!(
                    "{} is also the address of device \"{other}\" (line {l})",
                    dev.ip.value
                ),
            );
        }
        if let Some((other, l)) = macs.insert(dev.mac.value, (id, line)) {
            d.error(
                &dev.mac.span,
                format!("devices.{id}.mac"),
                format!(
                    "{} is also the MAC of device \"{other}\" (line {l})",
                    dev.mac.value
                ),
            );
        }
        if dev.ip.value.is_unspecified()
            || dev.ip.value.is_multicast()
            || dev.ip.value == IpAddr::V4(ExceptionTarget::BROADCAST)
        {
            d.error(
                &dev.ip.span,
                format!("devices.{id}.ip"),
                format!("{} cannot be a device address", dev.ip.value),
            );
        }
    }
}

fn check_services(p: &Policy, d: &mut Diagnostics) {
    for (name, s) in &p.services {
        if let Some(via) = &s.via
            && !p.gateways.contains_key(&via.value)
        {
            unknown(
                p,
                d,
                &via.span,
                format!("services.{name}.via"),
                "gateway",
                &via.value,
                p.gateways.keys(),
            );
        }
    }
}

/// The gateway whose listener a flow uses: the device's, or for a return
/// flow the hub its service is reached through.
fn flow_gateway<'p>(p: &'p Policy, f: &Flow) -> Option<&'p str> {
    let device = match &f.kind {
        FlowKind::Outbound { device, .. } | FlowKind::Inbound { device, .. } => device,
        FlowKind::Return { service, .. } => {
            return p
                .services
                .get(&service.value)
                .and_then(|s| s.via.as_ref())
                .map(|v| v.value.as_str());
        }
    };
    p.devices
        .get(&device.value)
        .map(|dev| dev.gateway.value.as_str())
}

fn check_flows(p: &Policy, d: &mut Diagnostics) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    // (gateway, listen) → flows using it
    let mut listeners: BTreeMap<(&str, SocketAddr), Vec<&Flow>> = BTreeMap::new();
    for f in &p.flows {
        let key = format!("flows[{}]", f.index);
        if let Some(first) = names.insert(&f.name.value, f.index) {
            d.error(
                &f.name.span,
                format!("{key}.name"),
                format!(
                    "flow name \"{}\" is already used by flows[{first}]",
                    f.name.value
                ),
            );
        }
        if let Some(g) = &f.guard {
            match &f.kind {
                FlowKind::Outbound { service, .. } => {
                    if let Some(svc) = p.services.get(&service.value)
                        && svc.protocol != g.value.protocol()
                    {
                        d.error_help(
                            &g.span,
                            format!("{key}.guard"),
                            format!(
                                "flow \"{}\" has a {} guard, but service \"{}\" speaks {}",
                                f.name.value,
                                g.value.protocol(),
                                service.value,
                                svc.protocol
                            ),
                            Some("a DICOM guard names calling_ae_titles, called_ae_titles, sop_classes, commands; an HL7 guard message_types, sending_applications, sending_facilities; a Modbus guard functions, unit_ids, addresses".into()),
                        );
                    }
                }
                // A client's flow names a device port, not a service: the
                // guard's keys say the protocol.
                FlowKind::Inbound { .. } => {}
                FlowKind::Return { .. } => d.error(
                    &g.span,
                    format!("{key}.guard"),
                    "guards apply to the side that starts a conversation: a device's flow to a service, or a client's flow to a device; a return flow's server is guarded where it is",
                ),
            }
        }
        match &f.kind {
            FlowKind::Outbound { device, service } => {
                let dev = p.devices.get(&device.value);
                if dev.is_none() {
                    if p.clients.contains_key(&device.value) {
                        d.error(&device.span, format!("{key}.from"), format!("\"{}\" is a client; a client reaches a device (to = \"<device>\", port = <n>), not a service", device.value));
                    } else {
                        unknown(
                            p,
                            d,
                            &device.span,
                            format!("{key}.from"),
                            "device",
                            &device.value,
                            p.devices.keys(),
                        );
                    }
                }
                match p.services.get(&service.value) {
                    None if p.devices.contains_key(&service.value) => {
                        d.error(&service.span, format!("{key}.to"), format!("flows from one device to another are lateral movement; name a service, not device \"{}\"", service.value));
                    }
                    None => unknown(
                        p,
                        d,
                        &service.span,
                        format!("{key}.to"),
                        "service",
                        &service.value,
                        p.services.keys(),
                    ),
                    Some(s) => match &s.via {
                        Some(via) => {
                            if dev.is_some_and(|dev| dev.gateway.value == via.value) {
                                d.error(&service.span, format!("{key}.to"), format!("service \"{}\" is reached via \"{}\", the device's own gateway; a tunnel needs a peer gateway", service.value, via.value));
                            }
                        }
                        None => {
                            if f.transport == Transport::Quic {
                                d.error(&f.span, format!("{key}.transport"), format!("service \"{}\" speaks TLS itself and has no `via`; quic only carries tunnels between gateways", service.value));
                            }
                        }
                    },
                }
                if f.listen.value.ip().is_unspecified() {
                    d.error(&f.listen.span, format!("{key}.listen"), "listen needs the specific address the device is pointed at, not a wildcard");
                }
                if let Some(dev) = dev {
                    if f.listen.value.ip() == dev.ip.value {
                        d.error(
                            &f.listen.span,
                            format!("{key}.listen"),
                            format!("{} is the device's own address", f.listen.value.ip()),
                        );
                    }
                    if !f.listen.value.is_ipv4() {
                        d.error(
                            &f.listen.span,
                            format!("{key}.listen"),
                            "devices are IPv4; listen must be an IPv4 address",
                        );
                    }
                }
            }
            FlowKind::Return {
                service, device, ..
            } => {
                let dev = p.devices.get(&device.value);
                if dev.is_none() {
                    unknown(
                        p,
                        d,
                        &device.span,
                        format!("{key}.to"),
                        "device",
                        &device.value,
                        p.devices.keys(),
                    );
                }
                if let Some(s) = p.services.get(&service.value) {
                    match &s.via {
                        None => d.error(&service.span, format!("{key}.from"), format!("service \"{}\" has no `via`: a return flow comes through the hub in front of the server", service.value)),
                        Some(via) if dev.is_some_and(|dev| dev.gateway.value == via.value) => {
                            d.error(&service.span, format!("{key}.from"), format!("service \"{}\" is reached via \"{}\", the device's own gateway; a return flow needs a peer gateway", service.value, via.value));
                        }
                        Some(_) => {}
                    }
                }
                if f.listen.value.ip().is_unspecified() {
                    d.error(&f.listen.span, format!("{key}.listen"), "listen needs the specific hub address the server is pointed at, not a wildcard");
                }
            }
            FlowKind::Inbound { client, device, .. } => {
                if !p.clients.contains_key(&client.value) {
                    if p.devices.contains_key(&client.value) {
                        d.error(&client.span, format!("{key}.from"), format!("flows from one device to another are lateral movement; an inbound flow comes from a client, not device \"{}\"", client.value));
                    } else {
                        let help =
                            did_you_mean(&client.value, p.clients.keys().map(String::as_str))
                                .or_else(|| {
                                    Some(format!("declare it as [clients.{}]", client.value))
                                });
                        d.error_help(
                            &client.span,
                            format!("{key}.from"),
                            format!(
                                "client identity \"{}\" is not defined; an inbound flow needs one",
                                client.value
                            ),
                            help,
                        );
                    }
                }
                if !p.devices.contains_key(&device.value) {
                    unknown(
                        p,
                        d,
                        &device.span,
                        format!("{key}.to"),
                        "device",
                        &device.value,
                        p.devices.keys(),
                    );
                }
            }
        }
        if let Some(gw) = flow_gateway(p, f) {
            listeners.entry((gw, f.listen.value)).or_default().push(f);
            if let Some(g) = p.gateways.get(gw)
                && f.listen.value == SocketAddr::new(g.lan_address.value, g.tunnel_port)
            {
                d.error(
                    &f.listen.span,
                    format!("{key}.listen"),
                    format!(
                        "{} is gateway \"{gw}\"'s tunnel server address",
                        f.listen.value
                    ),
                );
            }
        }
    }
    for ((gw, addr), flows) in &listeners {
        for (i, f) in flows.iter().enumerate() {
            for g in &flows[..i] {
                let clash = match (&f.kind, &g.kind) {
                    (FlowKind::Outbound { device: a, .. }, FlowKind::Outbound { device: b, .. }) => {
                        (a.value == b.value).then(|| format!("device \"{}\" would reach two flows at one address", a.value))
                    }
                    (FlowKind::Return { service: a, .. }, FlowKind::Return { service: b, .. }) => {
                        (a.value == b.value).then(|| format!("service \"{}\" would reach two flows at one address", a.value))
                    }
                    (FlowKind::Return { .. }, FlowKind::Outbound { .. }) | (FlowKind::Outbound { .. }, FlowKind::Return { .. }) => None,
                    (FlowKind::Inbound { client: a, .. }, FlowKind::Inbound { client: b, .. }) => {
                        (a.value == b.value).then(|| format!("client \"{}\" would reach two flows at one address", a.value))
                    }
                    _ => Some("one address cannot be both a cleartext device listener and a TLS client listener".to_owned()),
                };
                if let Some(why) = clash {
                    d.error(
                        &f.listen.span,
                        format!("flows[{}].listen", f.index),
                        format!(
                            "{addr} on gateway \"{gw}\" clashes with flow \"{}\": {why}",
                            g.name.value
                        ),
                    );
                }
            }
        }
    }
}

fn check_exceptions(p: &Policy, d: &mut Diagnostics) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for e in &p.exceptions {
        let key = format!("exceptions[{}]", e.index);
        if let Some(first) = names.insert(&e.name.value, e.index) {
            d.error(
                &e.name.span,
                format!("{key}.name"),
                format!(
                    "exception name \"{}\" is already used by exceptions[{first}]",
                    e.name.value
                ),
            );
        }
        match &e.justification {
            None => d.error(&e.name.span, format!("{key}.justification"), format!("exception \"{}\" opens a path around the tunnels and needs a written justification", e.name.value)),
            Some(j) if j.value.trim().len() < 10 => d.error(&j.span, format!("{key}.justification"), "a justification must say why (at least 10 characters)"),
            Some(j) if j.value == TODO_JUSTIFICATION => d.warning(&j.span, format!("{key}.justification"), format!("exception \"{}\" was suggested from observed traffic; a person must write why it is needed", e.name.value)),
            Some(_) => {}
        }
        if e.devices.is_empty() {
            d.error(
                &e.name.span,
                format!("{key}.devices"),
                "an exception must name the devices it applies to",
            );
        }
        for dev in &e.devices {
            if !p.devices.contains_key(&dev.value) {
                unknown(
                    p,
                    d,
                    &dev.span,
                    format!("{key}.devices"),
                    "device",
                    &dev.value,
                    p.devices.keys(),
                );
            }
        }
        if e.protocol == L4::Icmp && e.port.is_some() {
            d.error(&e.name.span, format!("{key}.port"), "icmp has no ports");
        }
        if let ExceptionTarget::Net { addr, .. } = e.to.value
            && addr.is_ipv6()
        {
            d.error(
                &e.to.span,
                format!("{key}.to"),
                "devices are IPv4; an exception destination must be IPv4",
            );
        }
    }
}

fn check_quarantine(p: &Policy, d: &mut Diagnostics) {
    for q in &p.quarantine {
        if !p.devices.contains_key(&q.value) {
            unknown(
                p,
                d,
                &q.span,
                "quarantine".to_owned(),
                "device",
                &q.value,
                p.devices.keys(),
            );
        }
    }
}

/// A device that no longer gets fixes must be held tightly: warn where the
/// policy leaves it loosely held.
fn check_legacy(p: &Policy, opts: &ValidateOptions, d: &mut Diagnostics) {
    for (id, dev) in &p.devices {
        if !dev.past_end_of_support(opts.today) {
            continue;
        }
        let span = dev.support.as_ref().map_or(&dev.id.span, |s| &s.span);
        let key = format!("devices.{id}.support");
        if p.mode == Mode::Monitor {
            d.warning(span, key.clone(), format!("device \"{id}\" is past end of support but the policy is in monitor mode, so nothing restricts its flows"));
        }
        for e in p
            .exceptions
            .iter()
            .filter(|e| e.devices.iter().any(|x| &x.value == id))
        {
            let wide = match e.to.value {
                ExceptionTarget::Gateway => false,
                ExceptionTarget::Net { addr, prefix } => {
                    prefix < if addr.is_ipv4() { 24 } else { 64 }
                }
            };
            let any_port = e.port.is_none() && e.protocol != L4::Icmp;
            if wide || any_port {
                d.warning(span, key.clone(), format!("device \"{id}\" is past end of support but exception \"{}\" allows {} without restriction", e.name.value, if wide { "a wide destination" } else { "every port" }));
            }
        }
        for f in &p.flows {
            if let FlowKind::Inbound {
                device,
                window: None,
                ..
            } = &f.kind
                && &device.value == id
            {
                d.warning(span, key.clone(), format!("device \"{id}\" is past end of support but inbound flow \"{}\" has no maintenance window", f.name.value));
            }
        }
    }
}
