//! Render a [`Plan`] as an nftables batch (table `inet ward`).
//!
//! # Ruleset shape
//!
//! ```text
//! table inet ward
//!   set quarantine4 (ipv4_addr), set quarantine_mac (ether_addr)
//!   set identity4 (ether_addr . ipv4_addr): each device's MAC with its address
//!   set listen4 (ipv4_addr . ipv4_addr . inet_service): device → its own listeners
//!   counter dev_<id> per device, counter unknown_src
//!   chain prerouting  (hook prerouting, priority -300, policy accept)
//!     quarantine → drop; on device interfaces: (MAC . IP) in identity4 →
//!     accept (anti-spoofing); a known MAC with another address → drop_<id> of
//!     the MAC's device; a known IP from an unknown MAC → drop_<id> of the
//!     IP's device; anything else → drop_unknown
//!   chain input       (hook input, priority 0, policy accept)
//!     quarantine → drop; established → accept; device → its own listeners
//!     (listen4) → accept; exceptions to the gateway → accept; rest of the
//!     device traffic → drop_<id>
//!   chain forward     (hook forward, priority 0, policy drop)
//!     quarantine → drop; established → accept; exceptions → accept;
//!     device → device (lateral) → drop_<id>; device → anything → drop_<id>;
//!     anything → device → drop_<id>; counted policy drop
//!   chain intercept   (hook prerouting, priority -150, routed insertion only)
//!     each intercepted flow (device port, source, original destination) →
//!     tproxy to the loopback transparent listener, mark TPROXY_MARK
//!   chain output      (hook output, priority 0, policy accept)
//!     quarantine → drop (cuts the gateway's own legs to the device)
//!   chain drop_<id>: count, log (rate limited), drop — or accept in monitor mode
//!   set obs_<id> per device (learning data, unless `observe = false`):
//!     dynamic, (source . destination . protocol . port) with a packet and
//!     byte counter per element, OBSERVE_SET_SIZE elements at most, each
//!     expiring OBSERVE_TIMEOUT after its last packet; ICMP keyed by
//!     type × 256 + code; counter obs_full_<id>: packets the full set missed
//!   chain observe     (hook prerouting, priority -190: after conntrack)
//!     the original direction of every connection from or to a device →
//!     obs_<id>: a new key is added, then one NFLOG message (group
//!     OBSERVE_GROUP); a known key is updated (counter, expiry); a packet
//!     the full set cannot take counts in obs_full_<id>
//! ```
//!
//! The batch adds, deletes and re-adds the table before filling it, so one
//! `nft -f` transaction replaces the whole table atomically whether or not it
//! existed (`flush table` would keep stale sets and chains).

use std::borrow::Cow;
use std::net::IpAddr;

use nftables::expr::{
    CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadBase, PayloadField, PayloadRaw,
    SetItem, Verdict,
};
use nftables::schema::{
    Chain, Counter as CounterObj, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetFlag,
    SetType, SetTypeValue, Table,
};
use nftables::stmt::{
    Counter, JumpTarget, Limit, Log, LogLevel, Mangle, Match, Operator, SetOp, Statement, TProxy,
    VerdictMap,
};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::compile::{DevicePlan, ExceptionPlan, Plan};
use crate::model::{ExceptionTarget, L4, Mode};

/// [`render`] as JSON, for `nft -j -f -`.
pub fn render_json(plan: &Plan) -> String {
    let objects: Vec<String> = render(plan)
        .objects
        .iter()
        .map(|o| match o {
            // The `nftables` crate has no field for a set's element
            // statements: each learning set gets its per-element counter here.
            NfObject::CmdObject(NfCmd::Add(NfListObject::Set(set)))
                if set.name.starts_with("obs_") =>
            {
                let mut v = serde_json::to_value(o).expect("nft schema types always serialize");
                v["add"]["set"]["stmt"] = serde_json::json!([{ "counter": null }]);
                v.to_string()
            }
            o => serde_json::to_string(o).expect("nft schema types always serialize"),
        })
        .collect();
    format!("{{\"nftables\":[{}]}}", objects.join(","))
}

/// Name of Ward's table (family `inet`).
pub const TABLE: &str = "ward";
/// Counter of packets from unknown sources on device interfaces.
pub const UNKNOWN_COUNTER: &str = "unknown_src";
/// Drop logs per device and chain are limited to this many per minute, so a
/// flooding device cannot flood the journal; the counters still see every packet.
pub const LOG_PER_MINUTE: u32 = 10;

type E = Expression<'static>;
type S = Statement<'static>;

fn s(x: impl Into<String>) -> E {
    Expression::String(Cow::Owned(x.into()))
}

fn meta(key: MetaKey) -> E {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn field(protocol: &'static str, field: &'static str) -> E {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn ct(key: &'static str) -> E {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn is(left: E, right: E) -> S {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn is_in(left: E, right: E) -> S {
    Statement::Match(Match {
        left,
        right,
        op: Operator::IN,
    })
}

fn set_of(items: impl IntoIterator<Item = E>) -> E {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

/// One value as itself, several as an anonymous set.
fn one_or_set(mut items: Vec<E>) -> E {
    if items.len() == 1 {
        items.remove(0)
    } else {
        set_of(items)
    }
}

fn goto(chain: String) -> S {
    Statement::Goto(JumpTarget {
        target: Cow::Owned(chain),
    })
}

fn vmap(key: E, pairs: Vec<(E, String)>) -> S {
    Statement::VerdictMap(VerdictMap {
        key,
        data: Expression::Named(NamedExpression::Set(
            pairs
                .into_iter()
                .map(|(k, chain)| {
                    SetItem::Mapping(
                        k,
                        Expression::Verdict(Verdict::Goto(JumpTarget {
                            target: Cow::Owned(chain),
                        })),
                    )
                })
                .collect(),
        )),
    })
}

fn counter() -> S {
    Statement::Counter(Counter::Anonymous(None))
}

fn accept() -> S {
    Statement::Accept(None)
}

fn drop() -> S {
    Statement::Drop(None)
}

/// Packet mark of intercepted connections; `ip rule add fwmark TPROXY_MARK
/// lookup TPROXY_TABLE` with a local default route in that table hands them
/// to the local stack (the transparent listener).
pub const TPROXY_MARK: u32 = 0x5741_0001;

/// Mark of frames a bridge diverts to the local stack. Distinct from
/// [`TPROXY_MARK`]: a diverted frame no transparent socket takes (wardd
/// stopped) is routed as it is, to the forward chain, and dropped there
/// without an answer, instead of reaching the local stack.
pub const BRIDGE_MARK: u32 = 0x5741_0002;

/// Elements of one device's learning set (`obs_<id>`): the kernel memory
/// bound of observation (about 200 bytes an element). Flows past it are
/// not recorded; their packets count in `obs_full_<id>`.
pub const OBSERVE_SET_SIZE: u32 = 4096;

/// A learning-set element expires this long after its last packet; the
/// daemon reads the sets far more often.
pub const OBSERVE_TIMEOUT_SECS: u32 = 3600;

/// NFLOG group of first-seen events (one message per new flow).
pub const OBSERVE_GROUP: u16 = 22337;

/// NFLOG prefix of first-seen events.
pub const OBSERVE_PREFIX: &str = "ward-obs";

/// A device's learning set.
pub fn observe_set(id: &str) -> String {
    format!("obs_{id}")
}

/// Packets a device's full learning set could not record.
pub fn observe_full_counter(id: &str) -> String {
    format!("obs_full_{id}")
}

/// Routing table of intercepted connections (see [`TPROXY_MARK`]).
pub const TPROXY_TABLE: u32 = 22337;

/// Chain that counts, logs and drops (or, in monitor mode, accepts) one device's traffic.
pub fn drop_chain(id: &str) -> String {
    format!("drop_{id}")
}

struct Batch {
    objects: Vec<NfObject<'static>>,
    family: NfFamily,
}

impl Batch {
    fn add(&mut self, o: NfListObject<'static>) {
        self.objects.push(NfObject::CmdObject(NfCmd::Add(o)));
    }

    fn chain(&mut self, name: &str, base: Option<(NfHook, i32, NfChainPolicy)>) {
        let (hook, prio, policy) = match base {
            Some((h, p, pol)) => (Some(h), Some(p), Some(pol)),
            None => (None, None, None),
        };
        self.add(NfListObject::Chain(Chain {
            family: self.family,
            table: TABLE.into(),
            name: Cow::Owned(name.to_owned()),
            _type: base.map(|_| NfChainType::Filter),
            hook,
            prio,
            policy,
            ..Chain::default()
        }));
    }

    fn rule(&mut self, chain: &str, comment: Option<&str>, expr: Vec<S>) {
        self.add(NfListObject::Rule(Rule {
            family: self.family,
            table: TABLE.into(),
            chain: Cow::Owned(chain.to_owned()),
            expr: expr.into(),
            handle: None,
            index: None,
            comment: comment.map(|c| Cow::Owned(c.to_owned())),
        }));
    }

    fn set(&mut self, name: &str, set_type: SetTypeValue<'static>, elem: Vec<E>) {
        self.add(NfListObject::Set(Box::new(Set {
            family: self.family,
            table: TABLE.into(),
            name: Cow::Owned(name.to_owned()),
            handle: None,
            set_type,
            policy: None,
            flags: None,
            elem: (!elem.is_empty()).then(|| elem.into()),
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        })));
    }

    /// An empty batch for table `ward` of `family` that starts by removing
    /// the table if it exists (add, then delete: the delete cannot fail).
    fn replacing(family: NfFamily) -> Batch {
        let mut b = Batch {
            objects: Vec::new(),
            family,
        };
        b.add(b.table());
        b.objects
            .push(NfObject::CmdObject(NfCmd::Delete(b.table())));
        b
    }

    fn table(&self) -> NfListObject<'static> {
        NfListObject::Table(Table {
            family: self.family,
            name: TABLE.into(),
            handle: None,
        })
    }

    /// The `identity` set of (MAC . address) pairs, each device's counter
    /// and drop chain, and the chain for unknown sources.
    fn device_drops(&mut self, devices: &[&DevicePlan], identity: &[E], verdict: &S) {
        self.set(
            "identity",
            SetTypeValue::Concatenated(vec![SetType::EtherAddr, SetType::Ipv4Addr].into()),
            identity.to_vec(),
        );
        for d in devices {
            self.counter(&d.counter);
        }
        self.counter(UNKNOWN_COUNTER);
        for d in devices {
            self.chain(&drop_chain(&d.id), None);
            drop_rules(self, &drop_chain(&d.id), &d.counter, &d.id, verdict);
        }
        self.chain("drop_unknown", None);
        drop_rules(self, "drop_unknown", UNKNOWN_COUNTER, "unknown", verdict);
    }

    fn counter(&mut self, name: &str) {
        self.add(NfListObject::Counter(CounterObj {
            family: self.family,
            table: TABLE.into(),
            name: Cow::Owned(name.to_owned()),
            handle: None,
            packets: None,
            bytes: None,
        }));
    }
}

/// The nftables batch that replaces table `inet ward` with `plan`'s ruleset
/// in one transaction.
pub fn render(plan: &Plan) -> Nftables<'static> {
    // add + delete + add: the delete cannot fail (the table exists by then),
    // and the whole replacement is one kernel transaction.
    let mut b = Batch::replacing(NfFamily::INet);
    b.add(b.table());

    let verdict = match plan.mode {
        Mode::Enforce => drop(),
        Mode::Monitor => accept(),
    };
    let devices: Vec<_> = plan.devices.values().collect();
    // Bridged frames never reach the inet hooks (br_netfilter is off); what
    // the bridge diverts to the local stack arrives on the bridge interface.
    let ifaces = match &plan.bridge {
        Some(br) => Some(s(br.name.clone())),
        None => (!plan.device_interfaces.is_empty())
            .then(|| one_or_set(plan.device_interfaces.iter().map(s).collect())),
    };
    let iif = |ifaces: &E| is(meta(MetaKey::Iifname), ifaces.clone());
    let oif = |ifaces: &E| is(meta(MetaKey::Oifname), ifaces.clone());
    let by_ip: Vec<(E, String)> = devices
        .iter()
        .map(|d| (s(d.ip.to_string()), drop_chain(&d.id)))
        .collect();

    // Sets.
    b.set(
        "quarantine4",
        SetTypeValue::Single(SetType::Ipv4Addr),
        devices
            .iter()
            .filter(|d| d.quarantined && d.ip.is_ipv4())
            .map(|d| s(d.ip.to_string()))
            .collect(),
    );
    b.set(
        "quarantine_mac",
        SetTypeValue::Single(SetType::EtherAddr),
        devices
            .iter()
            .filter(|d| d.quarantined)
            .map(|d| s(d.mac.to_string()))
            .collect(),
    );
    // (MAC . address) pairs a device may send with; (MAC . 0.0.0.0) too for
    // a device whose DHCP exception lets it ask for its address.
    let mut identity = Vec::new();
    for d in devices.iter().filter(|d| d.ip.is_ipv4()) {
        let pair = |ip: String| {
            Expression::Named(NamedExpression::Concat(vec![s(d.mac.to_string()), s(ip)]))
        };
        identity.push(pair(d.ip.to_string()));
        if plan
            .exceptions
            .iter()
            .any(|e| is_dhcp(e) && e.sources.contains(&d.ip))
        {
            identity.push(pair("0.0.0.0".to_owned()));
        }
    }
    b.set(
        "identity4",
        SetTypeValue::Concatenated(vec![SetType::EtherAddr, SetType::Ipv4Addr].into()),
        identity.clone(),
    );
    b.set(
        "listen4",
        SetTypeValue::Concatenated(
            vec![SetType::Ipv4Addr, SetType::Ipv4Addr, SetType::InetService].into(),
        ),
        plan.routes
            .iter()
            .filter(|r| r.src.is_ipv4() && r.dst.is_ipv4())
            .map(|r| {
                Expression::Named(NamedExpression::Concat(vec![
                    s(r.src.to_string()),
                    s(r.dst.ip().to_string()),
                    Expression::Number(u32::from(r.dst.port())),
                ]))
            })
            .collect(),
    );

    // Counters.
    for d in &devices {
        b.counter(&d.counter);
    }
    b.counter(UNKNOWN_COUNTER);

    // Chains first: rules below jump to them.
    b.chain(
        "prerouting",
        Some((NfHook::Prerouting, -300, NfChainPolicy::Accept)),
    );
    b.chain("input", Some((NfHook::Input, 0, NfChainPolicy::Accept)));
    if plan.transparent_listener.is_some() {
        b.chain(
            "intercept",
            Some((NfHook::Prerouting, -150, NfChainPolicy::Accept)),
        );
    }
    b.chain("forward", Some((NfHook::Forward, 0, NfChainPolicy::Drop)));
    b.chain("output", Some((NfHook::Output, 0, NfChainPolicy::Accept)));
    for d in &devices {
        b.chain(&drop_chain(&d.id), None);
    }
    b.chain("drop_unknown", None);

    // Per-device chains.
    for d in &devices {
        drop_rules(&mut b, &drop_chain(&d.id), &d.counter, &d.id, &verdict);
    }
    drop_rules(&mut b, "drop_unknown", UNKNOWN_COUNTER, "unknown", &verdict);

    let quarantine_src = || is(field("ip", "saddr"), s("@quarantine4"));
    let quarantine_dst = || is(field("ip", "daddr"), s("@quarantine4"));

    // prerouting
    b.rule(
        "prerouting",
        Some("quarantine"),
        vec![
            is(field("ether", "saddr"), s("@quarantine_mac")),
            counter(),
            drop(),
        ],
    );
    b.rule(
        "prerouting",
        Some("quarantine"),
        vec![quarantine_src(), counter(), drop()],
    );
    if let Some(ifs) = &ifaces {
        if !devices.is_empty() {
            b.rule(
                "prerouting",
                Some("anti-spoofing: each MAC with its own address"),
                vec![
                    iif(ifs),
                    is(
                        Expression::Named(NamedExpression::Concat(vec![
                            field("ether", "saddr"),
                            field("ip", "saddr"),
                        ])),
                        s("@identity4"),
                    ),
                    accept(),
                ],
            );
            b.rule(
                "prerouting",
                Some("known MAC with another address: spoofing"),
                vec![
                    iif(ifs),
                    vmap(
                        field("ether", "saddr"),
                        devices
                            .iter()
                            .map(|d| (s(d.mac.to_string()), drop_chain(&d.id)))
                            .collect(),
                    ),
                ],
            );
            b.rule(
                "prerouting",
                Some("known address from an unknown MAC"),
                vec![iif(ifs), vmap(field("ip", "saddr"), by_ip.clone())],
            );
        }
        b.rule(
            "prerouting",
            Some("unknown source"),
            vec![iif(ifs), goto("drop_unknown".to_owned())],
        );
    }

    // intercept: each intercepted flow's packets to the transparent listener,
    // marked so the fwmark rule routes them to the local stack. With no
    // listener (wardd stopped) the rule does not match, the packet is
    // forwarded, and the forward chain drops it: fail closed.
    if let (Some(listener), Some(ifs)) = (plan.transparent_listener, &ifaces) {
        for r in plan.routes.iter().filter(|r| r.transparent) {
            b.rule(
                "intercept",
                Some(&format!("flow {}", r.flow)),
                [iif(ifs)]
                    .into_iter()
                    .chain(
                        plan.bridge
                            .as_ref()
                            .map(|_| is(meta(MetaKey::Mark), E::Number(BRIDGE_MARK))),
                    )
                    .chain([
                        is(field("ip", "saddr"), s(r.src.to_string())),
                        is(field("ip", "daddr"), s(r.dst.ip().to_string())),
                        is(field("tcp", "dport"), E::Number(u32::from(r.dst.port()))),
                        Statement::TProxy(TProxy {
                            family: Some("ip".into()),
                            port: listener.port(),
                            addr: Some(listener.ip().to_string().into()),
                        }),
                        Statement::Mangle(Mangle {
                            key: meta(MetaKey::Mark),
                            value: E::Number(TPROXY_MARK),
                        }),
                        accept(),
                    ])
                    .collect(),
            );
        }
    }

    // input
    let established = || {
        is_in(
            ct("state"),
            Expression::List(vec![s("established"), s("related")]),
        )
    };
    b.rule(
        "input",
        Some("quarantine"),
        vec![quarantine_src(), counter(), drop()],
    );
    b.rule("input", None, vec![established(), accept()]);
    if let Some(ifs) = &ifaces {
        b.rule(
            "input",
            Some("device to its own listeners"),
            vec![
                iif(ifs),
                is(
                    Expression::Named(NamedExpression::Concat(vec![
                        field("ip", "saddr"),
                        field("ip", "daddr"),
                        field("tcp", "dport"),
                    ])),
                    s("@listen4"),
                ),
                accept(),
            ],
        );
        for e in plan
            .exceptions
            .iter()
            .filter(|e| e.to == ExceptionTarget::Gateway)
        {
            let mut sources: Vec<E> = e.sources.iter().map(|ip| s(ip.to_string())).collect();
            if is_dhcp(e) {
                sources.push(s("0.0.0.0"));
            }
            let mut expr = vec![iif(ifs), is(field("ip", "saddr"), one_or_set(sources))];
            expr.extend(proto_match(e));
            expr.push(accept());
            b.rule("input", Some(&format!("exception {}", e.name)), expr);
        }
        if !devices.is_empty() {
            b.rule(
                "input",
                Some("device to the gateway"),
                vec![iif(ifs), vmap(field("ip", "saddr"), by_ip.clone())],
            );
        }
        b.rule(
            "input",
            Some("unknown source"),
            vec![iif(ifs), goto("drop_unknown".to_owned())],
        );
    }

    // forward
    b.rule(
        "forward",
        Some("quarantine"),
        vec![quarantine_src(), counter(), drop()],
    );
    b.rule(
        "forward",
        Some("quarantine"),
        vec![quarantine_dst(), counter(), drop()],
    );
    b.rule("forward", None, vec![established(), accept()]);
    b.rule("forward", None, vec![is(ct("state"), s("invalid")), drop()]);
    if let Some(ifs) = &ifaces {
        for e in &plan.exceptions {
            let ExceptionTarget::Net { addr, prefix } = e.to else {
                continue;
            };
            let dst = prefix_expr(addr, prefix);
            let mut expr = vec![
                iif(ifs),
                is(
                    field("ip", "saddr"),
                    one_or_set(e.sources.iter().map(|ip| s(ip.to_string())).collect()),
                ),
                is(field("ip", "daddr"), dst),
            ];
            expr.extend(proto_match(e));
            expr.push(accept());
            b.rule("forward", Some(&format!("exception {}", e.name)), expr);
        }
        if !devices.is_empty() {
            b.rule(
                "forward",
                Some("lateral movement: device to device"),
                vec![
                    iif(ifs),
                    oif(ifs),
                    vmap(field("ip", "saddr"), by_ip.clone()),
                ],
            );
            b.rule(
                "forward",
                Some("device to the network: only tunnels leave"),
                vec![iif(ifs), vmap(field("ip", "saddr"), by_ip.clone())],
            );
            b.rule(
                "forward",
                Some("network to device: only tunnels arrive"),
                vec![oif(ifs), vmap(field("ip", "daddr"), by_ip.clone())],
            );
        }
        b.rule(
            "forward",
            Some("unknown source"),
            vec![iif(ifs), goto("drop_unknown".to_owned())],
        );
    }
    b.rule(
        "forward",
        Some("not a device flow: policy drop"),
        vec![counter()],
    );

    // output
    b.rule(
        "output",
        Some("quarantine"),
        vec![quarantine_dst(), counter(), drop()],
    );

    if plan.observe {
        render_observe(&mut b, &devices);
    }

    render_bridge(plan, &mut b.objects, &verdict, &identity);
    render_arp(plan, &mut b.objects, &verdict, &identity);

    Nftables {
        objects: b.objects.into(),
    }
}

/// Table `bridge ward`, replaced in the same transaction as `inet ward`
/// (and removed when the plan has no bridge). Recipe C1 and D of
/// `shared/notes/transparent-insertion.md`: on the device ports, only
/// (MAC . address) pairs of the policy pass, for IPv4 and ARP alike, every
/// other ethertype is dropped; each intercepted flow's frames, and frames to
/// the gateway's own address, are diverted to the local stack (addressed to
/// the bridge, marked); nothing else from a device crosses the bridge and
/// nothing reaches a device through it but ARP and the raw exceptions;
/// frames the gateway sends to a device carry the real router's MAC.
fn render_bridge(plan: &Plan, objects: &mut Vec<NfObject<'static>>, verdict: &S, identity: &[E]) {
    let mut b = Batch::replacing(NfFamily::Bridge);
    let Some(br) = &plan.bridge else {
        objects.extend(b.objects);
        return;
    };
    b.add(b.table());
    let devices: Vec<_> = plan.devices.values().collect();
    let ports = one_or_set(plan.device_interfaces.iter().map(s).collect());
    let iif = || is(meta(MetaKey::Iifname), ports.clone());
    let oif = || is(meta(MetaKey::Oifname), ports.clone());
    let by_mac: Vec<(E, String)> = devices
        .iter()
        .map(|d| (s(d.mac.to_string()), drop_chain(&d.id)))
        .collect();
    let pair = |l2: E, l3: E| {
        is(
            Expression::Named(NamedExpression::Concat(vec![l2, l3])),
            s("@identity"),
        )
    };
    b.set(
        "quarantine_mac",
        SetTypeValue::Single(SetType::EtherAddr),
        devices
            .iter()
            .filter(|d| d.quarantined)
            .map(|d| s(d.mac.to_string()))
            .collect(),
    );
    b.chain(
        "prerouting",
        Some((NfHook::Prerouting, -300, NfChainPolicy::Accept)),
    );
    b.chain("forward", Some((NfHook::Forward, 0, NfChainPolicy::Accept)));
    b.chain("input", Some((NfHook::Input, 0, NfChainPolicy::Accept)));
    b.chain("output", Some((NfHook::Output, 0, NfChainPolicy::Accept)));
    b.device_drops(&devices, identity, verdict);
    let by_ip: Vec<(E, String)> = devices
        .iter()
        .map(|d| (s(d.ip.to_string()), drop_chain(&d.id)))
        .collect();
    // Counted against the device the frame claims to be: its MAC's, else
    // (a known address from an unknown MAC) its address's.
    let by_source = |b: &mut Batch, chain: &str, comment: &str| {
        if !devices.is_empty() {
            b.rule(
                chain,
                Some(comment),
                vec![iif(), vmap(field("ether", "saddr"), by_mac.clone())],
            );
            b.rule(
                chain,
                Some(comment),
                vec![
                    iif(),
                    is(field("ether", "type"), s("ip")),
                    vmap(field("ip", "saddr"), by_ip.clone()),
                ],
            );
            b.rule(
                chain,
                Some(comment),
                vec![
                    iif(),
                    is(field("ether", "type"), s("arp")),
                    vmap(field("arp", "saddr ip"), by_ip.clone()),
                ],
            );
        }
        b.rule(
            chain,
            Some(comment),
            vec![iif(), goto("drop_unknown".to_owned())],
        );
    };

    // prerouting: quarantine, then the L2/L3 identity of every frame.
    b.rule(
        "prerouting",
        Some("quarantine"),
        vec![
            is(field("ether", "saddr"), s("@quarantine_mac")),
            counter(),
            drop(),
        ],
    );
    b.rule(
        "prerouting",
        Some("ARP only with the device's own pair"),
        vec![
            iif(),
            is(field("ether", "type"), s("arp")),
            pair(field("ether", "saddr"), field("arp", "saddr ip")),
            pair(field("arp", "saddr ether"), field("arp", "saddr ip")),
            accept(),
        ],
    );
    let divert = || {
        [
            Statement::Mangle(Mangle {
                key: meta(MetaKey::Pkttype),
                value: s("host"),
            }),
            Statement::Mangle(Mangle {
                key: field("ether", "daddr"),
                value: s(br.mac.to_string()),
            }),
            Statement::Mangle(Mangle {
                key: meta(MetaKey::Mark),
                value: E::Number(BRIDGE_MARK),
            }),
            accept(),
        ]
    };
    for r in plan.routes.iter().filter(|r| r.transparent) {
        let Some(d) = devices.iter().find(|d| d.ip == r.src) else {
            continue;
        };
        b.rule(
            "prerouting",
            Some(&format!("divert flow {}", r.flow)),
            [
                iif(),
                is(field("ether", "saddr"), s(d.mac.to_string())),
                is(field("ip", "saddr"), s(r.src.to_string())),
                is(field("ip", "daddr"), s(r.dst.ip().to_string())),
                is(field("tcp", "dport"), E::Number(u32::from(r.dst.port()))),
            ]
            .into_iter()
            .chain(divert())
            .collect(),
        );
    }
    b.rule(
        "prerouting",
        Some("to the gateway itself (inbound access, exceptions): its inet rules decide"),
        [
            iif(),
            pair(field("ether", "saddr"), field("ip", "saddr")),
            is(field("ip", "daddr"), s(plan.lan_address.to_string())),
        ]
        .into_iter()
        .chain(divert())
        .collect(),
    );
    b.rule(
        "prerouting",
        Some("IPv4 with the device's own pair: the forward chain decides"),
        vec![
            iif(),
            is(field("ether", "type"), s("ip")),
            pair(field("ether", "saddr"), field("ip", "saddr")),
            accept(),
        ],
    );
    by_source(&mut b, "prerouting", "spoofed, or not IPv4 or ARP");

    // forward: nothing from a device crosses the bridge but ARP and the raw
    // exceptions; nothing reaches a device but ARP and their answers.
    b.rule(
        "forward",
        Some("ARP (checked in prerouting)"),
        vec![iif(), is(field("ether", "type"), s("arp")), accept()],
    );
    for e in plan
        .exceptions
        .iter()
        .filter(|e| e.to != ExceptionTarget::Gateway)
    {
        let ExceptionTarget::Net { addr, prefix } = e.to else {
            continue;
        };
        let sources: Vec<E> = e.sources.iter().map(|ip| s(ip.to_string())).collect();
        let to = prefix_expr(addr, prefix);
        let mut out = vec![iif(), is(field("ip", "saddr"), one_or_set(sources.clone()))];
        out.push(is(field("ip", "daddr"), to.clone()));
        out.extend(proto_match(e));
        out.push(accept());
        b.rule("forward", Some(&format!("exception {}", e.name)), out);
        let mut back = vec![oif(), is(field("ip", "saddr"), to)];
        back.push(is(field("ip", "daddr"), one_or_set(sources)));
        back.extend(reply_match(e));
        back.push(accept());
        b.rule(
            "forward",
            Some(&format!("exception {} (answers)", e.name)),
            back,
        );
    }
    by_source(
        &mut b,
        "forward",
        "device to the network: only tunnels leave",
    );
    b.rule(
        "forward",
        Some("ARP to devices"),
        vec![oif(), is(field("ether", "type"), s("arp")), accept()],
    );
    if !devices.is_empty() {
        b.rule(
            "forward",
            Some("network to device: only tunnels arrive"),
            vec![oif(), vmap(field("ether", "daddr"), by_mac.clone())],
        );
    }
    b.rule(
        "forward",
        Some("network to device: only tunnels arrive"),
        vec![oif(), counter(), drop()],
    );

    // input: the diverted frames, and ARP; the rest is already accounted for.
    b.rule(
        "input",
        Some("diverted"),
        vec![
            iif(),
            is(meta(MetaKey::Mark), E::Number(BRIDGE_MARK)),
            accept(),
        ],
    );
    b.rule(
        "input",
        Some("ARP"),
        vec![iif(), is(field("ether", "type"), s("arp")), accept()],
    );
    b.rule("input", None, vec![iif(), drop()]);

    // output: to a device, the gateway looks like the real router.
    b.rule(
        "output",
        Some("stealth: the real router's MAC"),
        vec![
            oif(),
            is(field("ether", "type"), s("ip")),
            Statement::Mangle(Mangle {
                key: field("ether", "saddr"),
                value: s(br.router_mac.to_string()),
            }),
        ],
    );
    objects.extend(b.objects);
}

/// Table `arp ward`, replaced in the same transaction (removed for a
/// bridge, whose own table checks ARP): ARP that reaches the gateway on a
/// device port passes only with a (MAC . address) pair of the policy, in the
/// ARP header; anything else (a device claiming another's address, a
/// foreign MAC) is counted against the device it claims to be and dropped,
/// so the gateway's neighbour table cannot be poisoned from a device port.
fn render_arp(plan: &Plan, objects: &mut Vec<NfObject<'static>>, verdict: &S, identity: &[E]) {
    let mut b = Batch::replacing(NfFamily::ARP);
    if plan.bridge.is_some() || plan.device_interfaces.is_empty() {
        objects.extend(b.objects);
        return;
    }
    b.add(b.table());
    let devices: Vec<_> = plan.devices.values().collect();
    let ports = one_or_set(plan.device_interfaces.iter().map(s).collect());
    let iif = || is(meta(MetaKey::Iifname), ports.clone());
    b.chain("input", Some((NfHook::Input, 0, NfChainPolicy::Accept)));
    b.device_drops(&devices, identity, verdict);
    b.rule(
        "input",
        Some("the device's own pair"),
        vec![
            iif(),
            is(
                Expression::Named(NamedExpression::Concat(vec![
                    field("arp", "saddr ether"),
                    field("arp", "saddr ip"),
                ])),
                s("@identity"),
            ),
            accept(),
        ],
    );
    if !devices.is_empty() {
        b.rule(
            "input",
            Some("a device's MAC with another address"),
            vec![
                iif(),
                vmap(
                    field("arp", "saddr ether"),
                    devices
                        .iter()
                        .map(|d| (s(d.mac.to_string()), drop_chain(&d.id)))
                        .collect(),
                ),
            ],
        );
        b.rule(
            "input",
            Some("a device's address from another MAC"),
            vec![
                iif(),
                vmap(
                    field("arp", "saddr ip"),
                    devices
                        .iter()
                        .map(|d| (s(d.ip.to_string()), drop_chain(&d.id)))
                        .collect(),
                ),
            ],
        );
    }
    b.rule(
        "input",
        Some("unknown source"),
        vec![iif(), goto("drop_unknown".to_owned())],
    );
    objects.extend(b.objects);
}

/// An address or a prefix, as nft matches it.
fn prefix_expr(addr: IpAddr, prefix: u8) -> E {
    let full = if addr.is_ipv4() { 32 } else { 128 };
    if prefix == full {
        s(addr.to_string())
    } else {
        E::Named(NamedExpression::Prefix(nftables::expr::Prefix {
            addr: Box::new(s(addr.to_string())),
            len: u32::from(prefix),
        }))
    }
}

/// The answer direction of an exception's protocol and port.
fn reply_match(e: &ExceptionPlan) -> Vec<S> {
    match (e.protocol, e.port) {
        (L4::Icmp, _) => vec![is(meta(MetaKey::L4proto), s("icmp"))],
        (L4::Tcp, Some(p)) => vec![is(field("tcp", "sport"), Expression::Number(u32::from(p)))],
        (L4::Udp, Some(p)) => vec![is(field("udp", "sport"), Expression::Number(u32::from(p)))],
        (L4::Tcp, None) => vec![is(meta(MetaKey::L4proto), s("tcp"))],
        (L4::Udp, None) => vec![is(meta(MetaKey::L4proto), s("udp"))],
    }
}

/// The learning sets and the `observe` chain (see the module docs).
fn render_observe(b: &mut Batch, devices: &[&DevicePlan]) {
    let devices: Vec<_> = devices.iter().filter(|d| d.ip.is_ipv4()).collect();
    if devices.is_empty() {
        return;
    }
    for d in &devices {
        b.add(NfListObject::Set(Box::new(Set {
            family: b.family,
            table: TABLE.into(),
            name: Cow::Owned(observe_set(&d.id)),
            handle: None,
            set_type: SetTypeValue::Concatenated(
                vec![
                    SetType::Ipv4Addr,
                    SetType::Ipv4Addr,
                    SetType::InetProto,
                    SetType::InetService,
                ]
                .into(),
            ),
            policy: None,
            flags: Some([SetFlag::Timeout].into_iter().collect()),
            elem: None,
            timeout: Some(OBSERVE_TIMEOUT_SECS),
            gc_interval: None,
            size: Some(OBSERVE_SET_SIZE),
            comment: None,
        })));
        b.counter(&observe_full_counter(&d.id));
        b.chain(&format!("obs_{}", d.id), None);
    }
    b.chain(
        "observe",
        Some((NfHook::Prerouting, -190, NfChainPolicy::Accept)),
    );
    let by: Vec<(E, String)> = devices
        .iter()
        .map(|d| (s(d.ip.to_string()), format!("obs_{}", d.id)))
        .collect();
    let original = || is(ct("direction"), s("original"));
    b.rule(
        "observe",
        Some("from a device"),
        vec![original(), vmap(field("ip", "saddr"), by.clone())],
    );
    b.rule(
        "observe",
        Some("to a device"),
        vec![original(), vmap(field("ip", "daddr"), by)],
    );
    for d in &devices {
        let chain = format!("obs_{}", d.id);
        let set = format!("@{}", observe_set(&d.id));
        for (protos, last) in [
            (set_of([s("tcp"), s("udp")]), field("th", "dport")),
            (
                s("icmp"),
                Expression::Named(NamedExpression::Payload(Payload::PayloadRaw(PayloadRaw {
                    base: PayloadBase::TH,
                    offset: 0,
                    len: 16,
                }))),
            ),
        ] {
            let key = Expression::Named(NamedExpression::Concat(vec![
                field("ip", "saddr"),
                field("ip", "daddr"),
                meta(MetaKey::L4proto),
                last,
            ]));
            let update = || {
                Statement::Set(nftables::stmt::Set {
                    op: SetOp::Update,
                    elem: key.clone(),
                    set: set.clone().into(),
                })
            };
            // A new key: added (and counted), then one NFLOG message. When
            // the set is full the update fails and ends the rule: no
            // message for a flow the set does not hold.
            b.rule(
                &chain,
                Some("first seen"),
                vec![
                    is(meta(MetaKey::L4proto), protos.clone()),
                    Statement::Match(Match {
                        left: key.clone(),
                        right: s(set.clone()),
                        op: Operator::NEQ,
                    }),
                    update(),
                    Statement::Log(Some(Log {
                        prefix: Some(OBSERVE_PREFIX.into()),
                        group: Some(u32::from(OBSERVE_GROUP)),
                        snaplen: Some(64),
                        ..Log::new(None)
                    })),
                    Statement::Return(None),
                ],
            );
            b.rule(
                &chain,
                None,
                vec![
                    is(meta(MetaKey::L4proto), protos),
                    update(),
                    Statement::Return(None),
                ],
            );
        }
        // Reached by TCP, UDP and ICMP only when the update failed: the set is full.
        b.rule(
            &chain,
            Some("learning set full"),
            vec![
                is(
                    meta(MetaKey::L4proto),
                    set_of([s("tcp"), s("udp"), s("icmp")]),
                ),
                Statement::Counter(Counter::Named(Cow::Owned(observe_full_counter(&d.id)))),
            ],
        );
    }
}

fn drop_rules(b: &mut Batch, chain: &str, counter_name: &str, who: &str, verdict: &S) {
    // The counter comes before the limit, so it sees every packet; the limit
    // only thins the log.
    b.rule(
        chain,
        None,
        vec![
            Statement::Counter(Counter::Named(Cow::Owned(counter_name.to_owned()))),
            Statement::Limit(Limit {
                rate: LOG_PER_MINUTE,
                rate_unit: None,
                per: Some("minute".into()),
                burst: Some(5),
                burst_unit: None,
                inv: None,
            }),
            Statement::Log(Some(Log {
                prefix: Some(Cow::Owned(format!("ward drop {who}: "))),
                level: Some(LogLevel::Warn),
                ..Log::new(None)
            })),
        ],
    );
    b.rule(chain, None, vec![verdict.clone()]);
}

fn is_dhcp(e: &ExceptionPlan) -> bool {
    e.protocol == L4::Udp
        && e.port == Some(67)
        && match e.to {
            ExceptionTarget::Gateway => true,
            ExceptionTarget::Net { addr, .. } => addr == IpAddr::V4(ExceptionTarget::BROADCAST),
        }
}

fn proto_match(e: &ExceptionPlan) -> Vec<S> {
    match (e.protocol, e.port) {
        (L4::Icmp, _) => vec![is(meta(MetaKey::L4proto), s("icmp"))],
        (L4::Tcp, Some(p)) => vec![is(field("tcp", "dport"), Expression::Number(u32::from(p)))],
        (L4::Udp, Some(p)) => vec![is(field("udp", "dport"), Expression::Number(u32::from(p)))],
        (L4::Tcp, None) => vec![is(meta(MetaKey::L4proto), s("tcp"))],
        (L4::Udp, None) => vec![is(meta(MetaKey::L4proto), s("udp"))],
    }
}
