//! A two-gateway site on loopback: an edge gateway in front of "devices" (the
//! test process and its peers on 127.0.0.1) and a hub in front of the servers.
//! No root needed: nft is not applied here (the namespace tests do that).

use std::net::SocketAddr;
use std::path::PathBuf;

use ward_pki::{Issued, Kind};

use crate::harness::{TempDir, TestCa, Wardd, free_port, write_config};

/// Trust domain of test sites.
pub const TRUST_DOMAIN: &str = "test.example";

/// Addresses and files of a loopback site.
pub struct Site {
    /// Scratch directory.
    pub dir: TempDir,
    /// The site CA.
    pub ca: TestCa,
    /// Policy file.
    pub policy: PathBuf,
    /// Edge gateway certificate.
    pub edge_cert: Issued,
    /// Hub gateway certificate.
    pub hub_cert: Issued,
    /// Edge's tunnel server (unused by flows, bound because nothing routes through it).
    pub hub_tunnel: SocketAddr,
    /// PACS (cleartext storescp behind the hub).
    pub pacs: SocketAddr,
    /// HL7 engine behind the hub.
    pub hl7: SocketAddr,
    /// Echo server behind the hub.
    pub echo: SocketAddr,
    /// A PACS that speaks TLS itself (storescp --enable-tls).
    pub pacs_tls: SocketAddr,
    /// The maintenance port of the monitor device (cleartext storescp).
    pub monitor: SocketAddr,
    /// Edge listener: DICOM to the PACS over a TCP tunnel.
    pub dicom_tcp: SocketAddr,
    /// Edge listener: DICOM to the PACS over a QUIC tunnel.
    pub dicom_quic: SocketAddr,
    /// Edge listener: HL7 to the engine.
    pub hl7_listen: SocketAddr,
    /// Edge listener: echo (TCP tunnel).
    pub echo_tcp: SocketAddr,
    /// Edge listener: echo (QUIC tunnel).
    pub echo_quic: SocketAddr,
    /// Edge listener: DICOM to the TLS PACS (plain → tls).
    pub dicom_native: SocketAddr,
    /// Edge listener: DICOM through the hub to the TLS PACS (the hub's leg is TLS).
    pub dicom_hub_tls: SocketAddr,
    /// Edge TLS client listener: vendor → monitor (tls → plain).
    pub access: SocketAddr,
    /// Directory with the PACS vendor's CA and server certificate.
    pub pacs_pki: PathBuf,
}

/// Everything about a test site's policy that tests vary.
#[derive(Debug, Clone, Default)]
pub struct SiteOptions {
    /// Extra TOML appended to the policy.
    pub extra_policy: String,
    /// Maintenance window of the vendor's access, e.g. `{ days = ["tue"], start = "02:00", end = "04:00" }`.
    pub window: Option<String>,
}

impl Site {
    /// Lay out a site: CA, certificates, ports, the PACS vendor's own CA, and
    /// the policy. Nothing runs yet.
    pub fn new(tag: &str, opts: &SiteOptions) -> Site {
        let dir = TempDir::new(tag);
        let mut ca = TestCa::new(&dir, TRUST_DOMAIN);
        // Each gateway gets its own copy, as an installed gateway would: the
        // CA may reissue a name later without touching running gateways.
        let edge_cert = install(&dir, ca.issue(Kind::Gateway, "edge-01"));
        let hub_cert = install(&dir, ca.issue(Kind::Gateway, "hub-dc-01"));
        let lo = "127.0.0.1";
        let at = |ip: &str| SocketAddr::new(ip.parse().expect("ip"), free_port(ip));
        let hub_tunnel = at("127.0.2.1");
        let edge_tunnel_port = free_port("127.0.3.1");
        let (pacs, hl7, echo, pacs_tls) = (at(lo), at(lo), at(lo), at(lo));
        let monitor = at("127.0.0.4");
        let listen = || at("127.0.1.1");
        let (dicom_tcp, dicom_quic, hl7_listen, echo_tcp, echo_quic, dicom_native) =
            (listen(), listen(), listen(), listen(), listen(), listen());
        let dicom_hub_tls = listen();
        let access = at("127.0.3.1");
        let pacs_pki = dir.join("pacs-vendor");
        make_pacs_vendor_pki(&pacs_pki);
        let window = opts
            .window
            .as_ref()
            .map(|w| format!("window = {w}\n"))
            .unwrap_or_default();
        let policy_text = format!(
            r#"version = 1
trust_domain = "{TRUST_DOMAIN}"

[gateways.edge-01]
device_interfaces = ["lo"]
lan_address = "127.0.3.1"
tunnel_port = {edge_tunnel_port}

[gateways.hub-dc-01]
lan_address = "{hub_ip}"
tunnel_port = {hub_port}

[devices.modality-1]
gateway = "edge-01"
interface = "lo"
ip = "127.0.0.1"
mac = "02:00:00:00:00:01"
class = "imaging"

[devices.monitor-1]
gateway = "edge-01"
interface = "lo"
ip = "127.0.0.4"
mac = "02:00:00:00:00:04"
class = "monitoring"

[services.pacs]
address = "{pacs}"
via = "hub-dc-01"
protocol = "dicom"

[services.hl7-engine]
address = "{hl7}"
via = "hub-dc-01"
protocol = "hl7"

[services.echo]
address = "{echo}"
via = "hub-dc-01"

[services.echo-quic]
address = "{echo}"
via = "hub-dc-01"

[services.pacs-tls]
address = "{pacs_tls}"
tls = {{ ca = "{pacs_ca}", server_name = "pacs.test" }}
protocol = "dicom"

[services.pacs-tls-hub]
address = "{pacs_tls}"
via = "hub-dc-01"
tls = {{ ca = "{pacs_ca}", server_name = "pacs.test" }}
protocol = "dicom"

[clients.vendor]
[clients.clinician]

[[flows]]
name = "dicom-tcp"
from = "modality-1"
to = "pacs"
listen = "{dicom_tcp}"
transport = "tcp"

[[flows]]
name = "dicom-quic"
from = "modality-1"
to = "pacs"
listen = "{dicom_quic}"
transport = "quic"

[[flows]]
name = "hl7"
from = "modality-1"
to = "hl7-engine"
listen = "{hl7_listen}"

[[flows]]
name = "echo-tcp"
from = "modality-1"
to = "echo"
listen = "{echo_tcp}"

[[flows]]
name = "echo-quic"
from = "modality-1"
to = "echo-quic"
listen = "{echo_quic}"
transport = "quic"

[[flows]]
name = "dicom-native-tls"
from = "modality-1"
to = "pacs-tls"
listen = "{dicom_native}"

[[flows]]
name = "dicom-hub-tls"
from = "modality-1"
to = "pacs-tls-hub"
listen = "{dicom_hub_tls}"

[[flows]]
name = "vendor-maintenance"
from = "vendor"
to = "monitor-1"
port = {monitor_port}
listen = "{access}"
{window}
{extra}
"#,
            hub_ip = hub_tunnel.ip(),
            hub_port = hub_tunnel.port(),
            pacs_ca = pacs_pki.join("ca.crt").display(),
            monitor_port = monitor.port(),
            extra = opts.extra_policy,
        );
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, policy_text).expect("write policy");
        Site {
            dir,
            ca,
            policy,
            edge_cert,
            hub_cert,
            hub_tunnel,
            pacs,
            hl7,
            echo,
            pacs_tls,
            monitor,
            dicom_tcp,
            dicom_quic,
            hl7_listen,
            echo_tcp,
            echo_quic,
            dicom_native,
            dicom_hub_tls,
            access,
            pacs_pki,
        }
    }

    /// Start the hub gateway.
    pub fn start_hub(&self) -> Wardd {
        self.start_hub_with("")
    }

    /// Start the hub gateway with `extra` in its configuration.
    pub fn start_hub_with(&self, extra: &str) -> Wardd {
        let config = self.dir.join("hub.toml");
        write_config(
            &config,
            "hub-dc-01",
            &self.policy,
            &self.hub_cert,
            &self.ca,
            extra,
        );
        Wardd::start(&config, &self.dir.join("hub.log"))
    }

    /// Start the edge gateway; `extra` is added to its configuration.
    pub fn start_edge(&self, extra: &str) -> Wardd {
        let config = self.dir.join("edge.toml");
        let extra = format!("quic_bind = \"127.0.3.1\"\n{extra}");
        write_config(
            &config,
            "edge-01",
            &self.policy,
            &self.edge_cert,
            &self.ca,
            &extra,
        );
        Wardd::start(&config, &self.dir.join("edge.log"))
    }
}

fn install(dir: &TempDir, mut issued: Issued) -> Issued {
    let to = dir.join(&format!("tls-{}", issued.name));
    std::fs::create_dir_all(&to).expect("tls dir");
    for (from, name) in [
        (&mut issued.cert, "gateway.crt"),
        (&mut issued.key, "gateway.key"),
    ] {
        let dest = to.join(name);
        std::fs::copy(&*from, &dest).expect("copy certificate");
        *from = dest;
    }
    issued
}

/// The PACS vendor's own CA and a server certificate for `pacs.test`, as a
/// TLS-capable PACS would have; Ward trusts this CA only for that service.
fn make_pacs_vendor_pki(dir: &std::path::Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).expect("pacs pki dir");
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.distinguished_name
        .push(DnType::CommonName, "PACS vendor CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(2);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let key = KeyPair::generate().expect("key");
    let mut srv = CertificateParams::new(vec!["pacs.test".to_owned()]).expect("params");
    srv.distinguished_name.push(DnType::CommonName, "pacs.test");
    srv.not_before = now - time::Duration::hours(1);
    srv.not_after = now + time::Duration::days(2);
    let issuer = Issuer::from_params(&ca, &ca_key);
    let srv_cert = srv.signed_by(&key, &issuer).expect("server cert");
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).expect("write");
    std::fs::write(dir.join("server.crt"), srv_cert.pem()).expect("write");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write");
}
