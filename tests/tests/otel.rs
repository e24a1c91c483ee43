//! OpenTelemetry: spans of tunnels reach a real OTLP receiver with their flow
//! and peer attributes; without a collector wardd runs normally.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ward_tests::harness::free_port;
use ward_tests::peers::echo_server;
use ward_tests::site::{Site, SiteOptions};

fn echo_once(addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s.write_all(b"otel").expect("write");
    let mut b = [0u8; 4];
    s.read_exact(&mut b).expect("echo");
}

#[test]
fn tunnel_spans_reach_the_collector() {
    let (collector, received) = ward_tests::otlp::start();
    let site = Site::new("otel", &SiteOptions::default());
    echo_server(site.echo);
    let otlp =
        format!("[telemetry]\notlp_endpoint = \"http://{collector}\"\nmetrics_interval = \"1s\"\n");
    let _hub = site.start_hub_with(&otlp);
    let _edge = site.start_edge(&otlp);
    echo_once(site.echo_tcp);
    echo_once(site.echo_quic);
    let start = Instant::now();
    loop {
        {
            let r = received.lock().expect("lock");
            let tunnel = |leg: &str, flow: &str| {
                r.spans.iter().any(|s| {
                    s.name == "tunnel"
                        && s.attributes.get("leg").map(String::as_str) == Some(leg)
                        && s.attributes.get("flow").map(String::as_str) == Some(flow)
                        && s.attributes
                            .get("peer")
                            .is_some_and(|p| p.starts_with("spiffe://test.example/gateway/"))
                })
            };
            let done = tunnel("outbound", "echo-tcp")
                && tunnel("tunnel", "echo-tcp")
                && tunnel("outbound", "echo-quic")
                && r.metrics.iter().any(|m| m == "ward.tunnels.opened");
            if done {
                let hub_span = r
                    .spans
                    .iter()
                    .find(|s| s.attributes.get("leg").map(String::as_str) == Some("tunnel"))
                    .expect("span");
                assert_eq!(
                    hub_span.resource.get("service.name").map(String::as_str),
                    Some("wardd")
                );
                assert_eq!(
                    hub_span.resource.get("ward.gateway").map(String::as_str),
                    Some("hub-dc-01")
                );
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "spans did not arrive: {:?}",
                r.spans
                    .iter()
                    .map(|s| (&s.name, &s.attributes))
                    .collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn runs_without_a_collector() {
    let site = Site::new("otel-absent", &SiteOptions::default());
    echo_server(site.echo);
    // Nothing listens here.
    let nowhere = format!(
        "[telemetry]\notlp_endpoint = \"http://127.0.0.1:{}\"\n",
        free_port("127.0.0.1")
    );
    let _hub = site.start_hub_with(&nowhere);
    let _edge = site.start_edge(&nowhere);
    for _ in 0..3 {
        echo_once(site.echo_tcp);
    }
    std::thread::sleep(Duration::from_secs(2));
    echo_once(site.echo_quic);
}
