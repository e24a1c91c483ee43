//! A device segment behind its router, as it is before any gateway, and
//! the bridge that splits its cable (`tests/tests/bridge.rs`, the
//! transparent-insertion benchmark).
//!
//! ```text
//!  ct   10.20.0.17 ─┐                         ┌ rtr seg 10.20.0.1 ─ lan0 192.0.2.1 ┐
//!  pump 10.20.0.18 ─┤ (before: rtr's ports)   │                                    ├ lan ─ hub ─ srv (PACS .5, HL7 .6)
//!                   └ edge dev0/dev1 ═ br-ward ═ up0 ┘        edge lan0 192.0.2.10 ┘
//! ```

use std::path::PathBuf;

use ward_pki::Kind;

use crate::harness::{TempDir, TestCa, Wardd};
use crate::netns::Netns;
use crate::topology::{ip, veth};

/// The segment's site policy: the edge a bridge, the hub in front of the
/// servers, a CT and a pump with their flows, the vendor's maintenance flow.
pub const POLICY: &str = r#"version = 1
trust_domain = "st-mary.example"

[gateways.edge-br]
device_interfaces = ["dev0", "dev1"]
lan_address = "192.0.2.10"
insertion = "bridge"
bridge = { name = "br-ward", uplink = "up0", mac = "02:00:00:00:00:fe", router_mac = "02:00:00:00:01:01" }

[gateways.hub-dc-01]
lan_address = "192.0.2.20"

[devices.ct]
gateway = "edge-br"
interface = "dev0"
ip = "10.20.0.17"
mac = "02:00:00:00:00:17"

[devices.pump]
gateway = "edge-br"
interface = "dev1"
ip = "10.20.0.18"
mac = "02:00:00:00:00:18"

[services.pacs]
address = "203.0.113.5:104"
via = "hub-dc-01"
protocol = "dicom"

[services.hl7-engine]
address = "203.0.113.6:2575"
via = "hub-dc-01"
protocol = "hl7"

[[flows]]
name = "ct-to-pacs"
from = "ct"
to = "pacs"
transport = "quic"

[[flows]]
name = "pump-to-hl7"
from = "pump"
to = "hl7-engine"

[clients.vendor]

[[exceptions]]
name = "ntp"
devices = ["ct"]
to = "192.0.2.123"
protocol = "udp"
port = 123
justification = "The CT timestamps its images; its firmware cannot tunnel NTP."

[[flows]]
name = "vendor-pump"
from = "vendor"
to = "pump"
port = 24105
"#;

/// The namespaces and files of one segment.
pub struct Segment {
    /// Scratch directory.
    pub dir: TempDir,
    /// Site CA.
    pub ca: TestCa,
    /// Certificates: edge-br, hub-dc-01, client vendor.
    pub certs: Vec<ward_pki::Issued>,
    /// CT scanner (10.20.0.17).
    pub ct: Netns,
    /// Infusion pump (10.20.0.18).
    pub pump: Netns,
    /// The segment's router (10.20.0.1).
    pub rtr: Netns,
    /// The hospital LAN.
    pub lan: Netns,
    /// Edge gateway (bridge).
    pub edge: Netns,
    /// Hub gateway.
    pub hub: Netns,
    /// Servers: PACS 203.0.113.5, HL7 engine .6.
    pub srv: Netns,
}

impl Segment {
    /// The segment as it is before any gateway: devices on the router's
    /// bridge, the router on the LAN, the hub routing to the servers.
    pub fn build() -> Option<Segment> {
        let ns = |t: &str| Netns::new(&format!("br-{t}")).ok();
        let (ct, pump, rtr, lan, edge, hub, srv) = (
            ns("ct")?,
            ns("pump")?,
            ns("rtr")?,
            ns("lan")?,
            ns("edge")?,
            ns("hub")?,
            ns("srv")?,
        );
        ip(&rtr, "link add seg type bridge");
        ip(&rtr, "link set seg address 02:00:00:00:01:01");
        ip(&rtr, "link set seg up");
        ip(&rtr, "addr add 10.20.0.1/24 dev seg");
        for (dev, port, addr, mac) in [
            (&ct, "to-ct", "10.20.0.17/24", "02:00:00:00:00:17"),
            (&pump, "to-pump", "10.20.0.18/24", "02:00:00:00:00:18"),
        ] {
            veth(dev, "eth0", &rtr, port);
            ip(dev, &format!("link set eth0 address {mac}"));
            ip(dev, &format!("addr add {addr} dev eth0"));
            ip(dev, "route add default via 10.20.0.1");
            dev.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            ip(&rtr, &format!("link set {port} master seg"));
        }
        ip(&lan, "link add br0 type bridge");
        ip(&lan, "link set br0 up");
        for (gw, port, addr) in [
            (&rtr, "to-rtr", "192.0.2.1/24"),
            (&edge, "to-edge", "192.0.2.10/24"),
            (&hub, "to-hub", "192.0.2.20/24"),
        ] {
            veth(gw, "lan0", &lan, port);
            ip(&lan, &format!("link set {port} master br0"));
            ip(gw, &format!("addr add {addr} dev lan0"));
        }
        ip(&lan, "addr add 192.0.2.50/24 dev br0");
        ip(&lan, "addr add 192.0.2.123/24 dev br0");
        // LAN hosts reach the device segment through its router.
        ip(&lan, "route add 10.20.0.0/24 via 192.0.2.1");
        veth(&hub, "srv0", &srv, "eth0");
        ip(&hub, "addr add 203.0.113.1/24 dev srv0");
        ip(&srv, "addr add 203.0.113.5/24 dev eth0");
        ip(&srv, "addr add 203.0.113.6/24 dev eth0");
        ip(&srv, "route add default via 203.0.113.1");
        ip(&rtr, "route add 203.0.113.0/24 via 192.0.2.20");
        ip(&hub, "route add 10.20.0.0/24 via 192.0.2.1");
        for r in [&rtr, &hub] {
            r.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        }
        let dir = TempDir::new("bridge");
        let mut ca = TestCa::new(&dir, "st-mary.example");
        let certs = vec![
            ca.issue(Kind::Gateway, "edge-br"),
            ca.issue(Kind::Gateway, "hub-dc-01"),
            ca.issue(Kind::Client, "vendor"),
        ];
        std::fs::write(dir.join("policy.toml"), POLICY).expect("policy");
        Some(Segment {
            dir,
            ca,
            certs,
            ct,
            pump,
            rtr,
            lan,
            edge,
            hub,
            srv,
        })
    }

    /// Split the cable: the devices' ports move from the router to the
    /// gateway, which bridges them with a new uplink to the router's bridge.
    /// The router's address and MAC stay; the devices are not touched.
    pub fn insert_bridge(&self) {
        for (port, dev_port) in [("to-ct", "dev0"), ("to-pump", "dev1")] {
            ip(
                &self.rtr,
                &format!("link set {port} netns {}", self.edge.name()),
            );
            ip(&self.edge, &format!("link set {port} name {dev_port}"));
        }
        veth(&self.edge, "up0", &self.rtr, "to-edge");
        ip(&self.rtr, "link set to-edge master seg");
        ip(&self.edge, "link add br-ward type bridge");
        ip(&self.edge, "link set br-ward address 02:00:00:00:00:fe");
        for port in ["dev0", "dev1", "up0"] {
            ip(&self.edge, &format!("link set {port} master br-ward"));
            ip(&self.edge, &format!("link set {port} up"));
        }
        ip(&self.edge, "link set br-ward up");
    }

    /// Write gateway `name`'s configuration.
    pub fn config(&self, name: &str) -> PathBuf {
        let cert = self
            .certs
            .iter()
            .find(|c| c.name == name)
            .expect("a gateway certificate");
        let cfg = self.dir.join(&format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "gateway = \"{name}\"\npolicy = \"{}\"\nstate_dir = \"{}\"\nadmin_socket = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\ncrl = \"{}\"\n[limits]\nhandshake_timeout = \"5s\"\ndrain_timeout = \"2s\"\n[nft]\napply = true\n",
                self.dir.join("policy.toml").display(),
                self.dir.join(&format!("state-{name}")).display(),
                self.dir.join(&format!("{name}.sock")).display(),
                self.ca.ca.cert_path().display(),
                cert.cert.display(),
                cert.key.display(),
                self.ca.ca.crl_path().display(),
            ),
        )
        .expect("config");
        cfg
    }

    /// Start gateway `name` in `ns` (killed on drop).
    pub fn start(&self, name: &str, ns: &Netns) -> Wardd {
        let cfg = self.config(name);
        Wardd::start_in(ns.name(), &cfg, &self.dir.join(&format!("{name}.log")))
    }

    /// Start gateway `name` in `ns` where it must refuse: exit code and log.
    pub fn start_fails(&self, name: &str, ns: &Netns) -> (Option<i32>, String) {
        let cfg = self.config(name);
        Wardd::start_fails_in(ns, &cfg, &self.dir.join(&format!("{name}-refused.log")))
    }
}
