//! Edge and hub gateways inside the test process (`ward_gateway::daemon`),
//! on loopback: the three legs, refusals, re-authorization after a reload,
//! and the drain, checked in seconds. The process-level and namespace suites
//! stay the proof with real peers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ward_api::Leg;
use ward_api::audit::{AuditEvent, FlowAction};
use ward_gateway::transport::tls::{TlsMaterial, TlsPaths};
use ward_pki::Kind;
use ward_tests::harness::write_config;
use ward_tests::inproc::InProcess;
use ward_tests::peers::echo_server;
use ward_tests::site::{Site, SiteOptions, TRUST_DOMAIN};

/// Write the hub's and edge's configuration with `drain` as drain timeout,
/// and start both in this process.
async fn start(site: &Site, drain: &str) -> (InProcess, InProcess) {
    let config = |name: &str, cert, extra: &str| {
        let path = site.dir.join(&format!("{name}.toml"));
        write_config(&path, name, &site.policy, cert, &site.ca, extra);
        let text = std::fs::read_to_string(&path).expect("config");
        let text = text.replace(
            "drain_timeout = \"2s\"",
            &format!("drain_timeout = \"{drain}\""),
        );
        assert!(text.contains(drain), "drain timeout set");
        std::fs::write(&path, text).expect("config");
        path
    };
    let hub = InProcess::start(&config("hub-dc-01", &site.hub_cert, "")).await;
    let edge = InProcess::start(&config(
        "edge-01",
        &site.edge_cert,
        "quic_bind = \"127.0.3.1\"",
    ))
    .await;
    (hub, edge)
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Echo `what` through `s`; Err when the connection is gone.
async fn echo<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    s: &mut S,
    what: &str,
) -> Result<(), String> {
    s.write_all(what.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; what.len()];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) if buf == what.as_bytes() => Ok(()),
        Ok(Ok(_)) => Err("echo differs".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no echo within 5 s".into()),
    }
}

/// Whether the far side closes `s` within `within`.
async fn closed_within<S: AsyncReadExt + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A TLS client with the site certificate of client `name`, connected to
/// the edge's access listener.
async fn access_client(site: &mut Site, name: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    let issued = site.ca.issue(Kind::Client, name);
    let tls = TlsMaterial::load(
        &TlsPaths {
            ca: site.ca.ca.cert_path(),
            cert: issued.cert.clone(),
            key: issued.key.clone(),
            crl: None,
        },
        &format!("spiffe://{TRUST_DOMAIN}/client/{name}"),
    )
    .expect("client tls");
    let config = tls
        .peer_client(&format!("spiffe://{TRUST_DOMAIN}/gateway/edge-01"))
        .expect("client config");
    let tcp = connect(site.access).await;
    tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("edge-01").expect("name"),
            tcp,
        )
        .await
        .expect("tls handshake with the access listener")
}

fn flow_events(g: &InProcess, action: FlowAction) -> Vec<AuditEvent> {
    g.audit()
        .into_iter()
        .filter(|e| matches!(e, AuditEvent::Flow { action: a, .. } if *a == action))
        .collect()
}

/// Poll `f` until it holds, for at most five seconds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 5 s: {what}");
}

/// The three legs carry bytes in one process: outbound and tunnel over TCP
/// and QUIC, access over TLS with a client certificate; the admin view
/// names each connection's leg; a client whose identity the flow does not
/// name is refused and the refusal audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_legs_in_process() {
    let mut site = Site::new("inproc-legs", &SiteOptions::default());
    echo_server(site.echo);
    echo_server(site.monitor);
    let (hub, edge) = start(&site, "2s").await;

    let mut tcp = connect(site.echo_tcp).await;
    echo(&mut tcp, "over a tcp tunnel")
        .await
        .expect("tcp tunnel");
    let mut quic = connect(site.echo_quic).await;
    echo(&mut quic, "over a quic tunnel")
        .await
        .expect("quic tunnel");
    let mut vendor = access_client(&mut site, "vendor").await;
    echo(&mut vendor, "vendor to monitor")
        .await
        .expect("access leg");

    let legs = |g: &InProcess| {
        let mut v: Vec<(String, Leg)> = g
            .control()
            .flows()
            .into_iter()
            .map(|f| (f.flow, f.leg))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        legs(&edge),
        vec![
            ("echo-quic".into(), Leg::Outbound),
            ("echo-tcp".into(), Leg::Outbound),
            ("vendor-maintenance".into(), Leg::Access),
        ]
    );
    assert_eq!(
        legs(&hub),
        vec![
            ("echo-quic".into(), Leg::Tunnel),
            ("echo-tcp".into(), Leg::Tunnel),
        ]
    );

    let mut clinician = access_client(&mut site, "clinician").await;
    assert!(
        echo(&mut clinician, "clinician").await.is_err(),
        "a client the flow does not name reached the monitor"
    );
    let denied = flow_events(&edge, FlowAction::Denied);
    assert!(
        denied.iter().any(|e| matches!(e, AuditEvent::Flow { leg: Leg::Access, peer: Some(p), .. } if p.ends_with("/client/clinician"))),
        "{denied:?}"
    );
    let allowed = flow_events(&hub, FlowAction::Allowed);
    assert_eq!(allowed.len(), 2, "{allowed:?}");
}

/// After a reload, live connections are re-checked with the policy's own
/// decisions: the vendor's session ends when the flow names another client
/// (the flow's name unchanged), with an audited reason, while the device's
/// tunnels the new policy still allows keep running; when a service moves,
/// the hub cuts the tunnel to its old address; a runtime quarantine then
/// cuts the device's tunnels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reauthorizes_live_connections() {
    let mut site = Site::new("inproc-reauth", &SiteOptions::default());
    echo_server(site.echo);
    echo_server(site.monitor);
    let (hub, edge) = start(&site, "2s").await;
    let mut tcp = connect(site.echo_tcp).await;
    echo(&mut tcp, "before").await.expect("tcp tunnel");
    let mut quic = connect(site.echo_quic).await;
    echo(&mut quic, "before").await.expect("quic tunnel");
    let mut vendor = access_client(&mut site, "vendor").await;
    echo(&mut vendor, "before").await.expect("access leg");

    let policy = std::fs::read_to_string(&site.policy).expect("policy");
    let changed = policy.replace(
        "from = \"vendor\"\nto = \"monitor-1\"",
        "from = \"clinician\"\nto = \"monitor-1\"",
    );
    assert_ne!(policy, changed, "the policy names the vendor's flow");
    std::fs::write(&site.policy, changed).expect("write policy");
    let r = edge.control().reload("test").await;
    assert!(r.ok, "{r:?}");

    assert!(
        closed_within(&mut vendor, Duration::from_secs(5)).await,
        "the vendor's session outlived the policy that allowed it"
    );
    echo(&mut tcp, "after")
        .await
        .expect("tcp tunnel still allowed");
    echo(&mut quic, "after")
        .await
        .expect("quic tunnel still allowed");
    let closed = flow_events(&edge, FlowAction::Closed);
    assert!(
        matches!(closed.as_slice(), [AuditEvent::Flow { leg: Leg::Access, flow: Some(f), reason: Some(r), .. }]
            if f == "vendor-maintenance" && r.contains("peer identity may not open this flow")),
        "{closed:?}"
    );

    // The echo service moves: the hub cuts the tunnel to the old address
    // (the QUIC flow's service did not move), and a new connection reaches
    // the new one.
    let moved = SocketAddr::new(site.echo.ip(), ward_tests::harness::free_port("127.0.0.1"));
    echo_server(moved);
    let policy = std::fs::read_to_string(&site.policy).expect("policy");
    let old = format!("[services.echo]\naddress = \"{}\"", site.echo);
    assert!(
        policy.contains(&old),
        "the policy names the echo service's address"
    );
    std::fs::write(
        &site.policy,
        policy.replace(&old, &format!("[services.echo]\naddress = \"{moved}\"")),
    )
    .expect("write policy");
    let r = hub.control().reload("test").await;
    assert!(r.ok, "{r:?}");
    let r = edge.control().reload("test").await;
    assert!(r.ok, "{r:?}");
    assert!(
        closed_within(&mut tcp, Duration::from_secs(5)).await,
        "a tunnel to the old address outlived the move"
    );
    echo(&mut quic, "after the move")
        .await
        .expect("quic tunnel to an unmoved service");
    let moved_cut = flow_events(&hub, FlowAction::Closed);
    assert!(
        matches!(moved_cut.as_slice(), [AuditEvent::Flow { leg: Leg::Tunnel, flow: Some(f), reason: Some(r), .. }]
            if f == "echo-tcp" && r.contains("target moved") && r.contains(&moved.to_string())),
        "{moved_cut:?}"
    );
    let mut tcp = connect(site.echo_tcp).await;
    echo(&mut tcp, "to the new address")
        .await
        .expect("tcp tunnel after the move");

    edge.control()
        .quarantine("modality-1", 0)
        .await
        .expect("quarantine");
    assert!(
        closed_within(&mut tcp, Duration::from_secs(5)).await,
        "tcp tunnel survived the quarantine"
    );
    assert!(
        closed_within(&mut quic, Duration::from_secs(5)).await,
        "quic tunnel survived the quarantine"
    );
    let closed = flow_events(&edge, FlowAction::Closed);
    assert_eq!(
        closed
            .iter()
            .filter(|e| matches!(e, AuditEvent::Flow { reason: Some(r), .. } if r.contains("device is quarantined")))
            .count(),
        2,
        "{closed:?}"
    );
}

/// A hub whose only QUIC peer connection is idle (keep-alives, no tunnel)
/// stops at once instead of waiting out the drain period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_quic_peer_does_not_hold_the_drain() {
    let site = Site::new("inproc-idle", &SiteOptions::default());
    echo_server(site.echo);
    let (mut hub, edge) = start(&site, "10s").await;
    let mut quic = connect(site.echo_quic).await;
    echo(&mut quic, "once").await.expect("quic tunnel");
    drop(quic);
    let control = hub.control().clone();
    eventually("the hub's tunnel closed", || control.flows().is_empty()).await;
    assert_eq!(
        edge.control().proxy().quic.path_stats().len(),
        1,
        "the edge's pooled QUIC connection to the hub is up"
    );

    let t0 = hub.begin_stop();
    let took = hub.stopped(t0).await;
    assert!(took < Duration::from_secs(1), "hub took {took:?} to stop");
}

/// During the drain an open QUIC tunnel keeps carrying bytes, a new tunnel
/// on the same connection is refused at once, and what is still open at
/// the end of the drain period is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_open_quic_tunnels_refuses_new_ones_and_cuts_at_the_end() {
    let site = Site::new("inproc-drain", &SiteOptions::default());
    echo_server(site.echo);
    let (mut hub, edge) = start(&site, "3s").await;
    let mut open = connect(site.echo_quic).await;
    echo(&mut open, "before").await.expect("quic tunnel");

    let t0 = hub.begin_stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    echo(&mut open, "during the drain")
        .await
        .expect("open tunnel runs on during the drain");

    let mut late = connect(site.echo_quic).await;
    let _ = late.write_all(b"late").await;
    assert!(
        closed_within(&mut late, Duration::from_secs(2)).await,
        "a tunnel opened during the drain was not refused"
    );
    let failed = flow_events(&edge, FlowAction::Failed);
    assert!(
        failed.iter().any(|e| matches!(e, AuditEvent::Flow { reason: Some(r), .. } if r.contains("peer is shutting down"))),
        "{failed:?}"
    );

    let took = hub.stopped(t0).await;
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(8),
        "hub stopped after {took:?}, drain timeout 3 s"
    );
    assert!(
        closed_within(&mut open, Duration::from_secs(3)).await,
        "the tunnel still open at the end of the drain was not cut"
    );
}

/// A QUIC tunnel that ends inside the drain period completes, and the hub
/// stops right after it, well before the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ends_when_the_last_quic_tunnel_does() {
    let site = Site::new("inproc-drain-end", &SiteOptions::default());
    echo_server(site.echo);
    let (mut hub, _edge) = start(&site, "10s").await;
    let mut open = connect(site.echo_quic).await;
    echo(&mut open, "before").await.expect("quic tunnel");

    let t0 = hub.begin_stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    echo(&mut open, "last words")
        .await
        .expect("open tunnel runs on during the drain");
    drop(open);
    let took = hub.stopped(t0).await;
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "hub stopped after {took:?} (tunnel closed at 0.5 s, drain timeout 10 s)"
    );
}
