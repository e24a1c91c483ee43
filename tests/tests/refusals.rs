//! Every refusal of the data path, each with its reason in the log and no
//! other flow disturbed: a tunnel opened first must still echo at the end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_gateway::transport::frame::{self as proto, Answer, DenyReason, Open};
use ward_gateway::transport::tls::{TlsMaterial, TlsPaths};
use ward_pki::{Issued, Kind};
use ward_tests::harness::{TempDir, TestCa, Wardd};
use ward_tests::peers::echo_server;
use ward_tests::site::{Site, SiteOptions, TRUST_DOMAIN};

/// A connection through the edge's echo listener that must survive everything.
struct Bystander(TcpStream);

impl Bystander {
    fn open(addr: SocketAddr) -> Bystander {
        let s = TcpStream::connect(addr).expect("connect echo listener");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut b = Bystander(s);
        b.check("hello");
        b
    }

    fn check(&mut self, what: &str) {
        self.0.write_all(what.as_bytes()).expect("bystander write");
        let mut buf = vec![0u8; what.len()];
        self.0
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("bystander tunnel broke ({what}): {e}"));
        assert_eq!(buf, what.as_bytes());
    }
}

fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-alpn", "ward/1"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn paths(ca: &TestCa, cert: &Issued) -> TlsPaths {
    TlsPaths {
        ca: ca.ca.cert_path(),
        cert: cert.cert.clone(),
        key: cert.key.clone(),
        crl: None,
    }
}

/// Open a `ward/1` tunnel to the hub as `cert`, send `frame`, return the answer.
fn raw_open(hub: SocketAddr, tls: &TlsMaterial, frame: &[u8]) -> Result<Answer, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = tls
            .peer_client(&format!("spiffe://{TRUST_DOMAIN}/gateway/hub-dc-01"))
            .map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(hub)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("hub-dc-01").expect("name");
        let mut s = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(frame).await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        let body = proto::read_frame(&mut s).await.map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(200), s.read_to_end(&mut rest)).await;
        Answer::decode(&body).map_err(|e| e.to_string())
    })
}

fn wait_for(w: &mut Wardd, needle: &str) {
    w.wait_log(needle, Duration::from_secs(10));
}

/// Refusals at the tunnel server: no certificate, a foreign CA, an expired
/// certificate, a revoked one, TLS 1.2, a valid identity opening a flow it may
/// not, a garbage open frame. The bystander tunnel keeps working throughout.
#[test]
fn tunnel_server_refusals() {
    let mut site = Site::new("refusals", &SiteOptions::default());
    echo_server(site.echo);
    let mut hub = site.start_hub();
    let _edge = site.start_edge("");
    let mut bystander = Bystander::open(site.echo_tcp);
    let hub_addr = site.hub_tunnel;
    let ca_file = site.ca.ca.cert_path();
    let ca_arg = ca_file.to_str().expect("utf8");

    // 1. No client certificate.
    // In TLS 1.3 the client finishes its side before the server checks for a
    // certificate; the refusal shows in the hub's log.
    s_client(hub_addr, &["-tls1_3", "-CAfile", ca_arg]);
    wait_for(&mut hub, "peer sent no certificates");
    bystander.check("after no-cert");

    // 2. A certificate from another CA, with the right identity.
    let other_dir = TempDir::new("other-ca");
    let mut other = TestCa::new(&other_dir, TRUST_DOMAIN);
    let foreign = other.issue(Kind::Gateway, "edge-01");
    s_client(
        hub_addr,
        &[
            "-tls1_3",
            "-cert",
            foreign.cert.to_str().expect("utf8"),
            "-key",
            foreign.key.to_str().expect("utf8"),
        ],
    );
    // Another Ward CA of the same trust domain has a name of its own (it
    // carries its key id): the certificate is from an unknown issuer, not
    // one whose signature fails.
    wait_for(&mut hub, "invalid peer certificate: UnknownIssuer");
    assert!(
        !hub.log().contains("BadSignature"),
        "a foreign Ward CA read as a bad signature"
    );
    bystander.check("after foreign CA");

    // 3. An expired certificate.
    let expired = site.ca.issue_expired(Kind::Gateway, "edge-01");
    s_client(
        hub_addr,
        &[
            "-tls1_3",
            "-cert",
            expired.cert.to_str().expect("utf8"),
            "-key",
            expired.key.to_str().expect("utf8"),
        ],
    );
    wait_for(&mut hub, "certificate expired");
    bystander.check("after expired");

    // 4. TLS 1.2 offered to the ward/1 port (with a valid certificate).
    let edge = site.edge_cert.clone();
    let out = s_client(
        hub_addr,
        &[
            "-tls1_2",
            "-cert",
            edge.cert.to_str().expect("utf8"),
            "-key",
            edge.key.to_str().expect("utf8"),
        ],
    );
    assert!(
        out.contains("alert") || out.contains("error"),
        "TLS 1.2 was not refused: {out}"
    );
    wait_for(&mut hub, "peer is incompatible");
    bystander.check("after tls 1.2");

    // 5. A valid identity the policy does not allow on this flow.
    let edge2 = site.ca.issue(Kind::Gateway, "edge-02");
    let tls2 =
        TlsMaterial::load(&paths(&site.ca, &edge2), &edge2_identity()).expect("edge-02 material");
    let open = Open {
        flow: "dicom-tcp".into(),
        device: "modality-1".into(),
        source: "127.0.0.1:5000".parse().expect("addr"),
    };
    let answer = raw_open(hub_addr, &tls2, &open.encode()).expect("an answer");
    assert_eq!(answer, Answer::Deny(DenyReason::WrongPeer));
    wait_for(&mut hub, "peer identity may not open this flow");
    // The right identity with an unknown flow.
    let tls1 = TlsMaterial::load(
        &paths(&site.ca, &edge),
        &format!("spiffe://{TRUST_DOMAIN}/gateway/edge-01"),
    )
    .expect("edge material");
    let unknown = Open {
        flow: "no-such-flow".into(),
        ..open.clone()
    };
    assert_eq!(
        raw_open(hub_addr, &tls1, &unknown.encode()).expect("answer"),
        Answer::Deny(DenyReason::UnknownFlow)
    );
    bystander.check("after wrong identity");

    // 6. Garbage instead of an open frame.
    let garbage = raw_open(hub_addr, &tls1, b"\x00\x10GET / HTTP/1.1\r\n\r\n");
    assert!(garbage.is_err(), "garbage got an answer: {garbage:?}");
    wait_for(&mut hub, "bad open frame");
    bystander.check("after garbage");

    // 7. Revoked: revoke edge-02, the hub reloads the CRL and refuses it in the handshake.
    site.ca.ca.revoke(&edge2.serial).expect("revoke");
    wait_for(&mut hub, "certificates and CRL reloaded");
    let again = raw_open(hub_addr, &tls2, &open.encode());
    assert!(again.is_err(), "revoked certificate got through: {again:?}");
    wait_for(&mut hub, "Revoked");
    bystander.check("after revoked");
}

fn edge2_identity() -> String {
    format!("spiffe://{TRUST_DOMAIN}/gateway/edge-02")
}
