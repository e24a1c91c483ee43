//! Prometheus text metrics on a loopback listener (`GET /metrics`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::Control;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: its HELP and TYPE lines, then a sample per row,
/// labelled `label="<the row's key>"`.
fn family<T, V: std::fmt::Display>(
    o: &mut String,
    (name, kind, help): (&str, &str, &str),
    label: &str,
    rows: &[(String, T)],
    value: impl Fn(&T) -> V,
) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (key, row) in rows {
        let _ = writeln!(o, "{name}{{{label}=\"{}\"}} {}", escape(key), value(row));
    }
}

/// The metrics page.
pub async fn render(control: &Control) -> String {
    let devices = control.devices().await;
    let mut o = String::new();
    let status = control.status().await;
    let _ = writeln!(
        o,
        "# HELP ward_info Gateway identity and mode.\n# TYPE ward_info gauge"
    );
    let _ = writeln!(
        o,
        "ward_info{{version=\"{}\",gateway=\"{}\",mode=\"{}\"}} 1",
        escape(&status.version),
        escape(&status.gateway),
        escape(&status.mode)
    );
    let _ = writeln!(
        o,
        "# HELP ward_policy_revision_info Revision of the plan in force, and the SHA-256 of the site policy it was compiled from.\n# TYPE ward_policy_revision_info gauge"
    );
    let _ = writeln!(
        o,
        "ward_policy_revision_info{{revision=\"{}\",policy_sha256=\"{}\"}} 1",
        escape(&status.revision),
        escape(&status.policy_sha256)
    );
    let (ok, rejected) = control.reload_counts();
    let _ = writeln!(
        o,
        "# HELP ward_reloads_total Reloads by result.\n# TYPE ward_reloads_total counter"
    );
    let _ = writeln!(o, "ward_reloads_total{{result=\"ok\"}} {ok}");
    let _ = writeln!(o, "ward_reloads_total{{result=\"rejected\"}} {rejected}");

    let stats = control.proxy().registry.flow_stats();
    let families: [(&str, &str, &str); 4] = [
        (
            "ward_tunnels_opened_total",
            "counter",
            "Connections accepted per flow.",
        ),
        (
            "ward_tunnels_denied_total",
            "counter",
            "Connections refused per flow.",
        ),
        ("ward_tunnels_active", "gauge", "Connections open per flow."),
        (
            "ward_guard_refusals_total",
            "counter",
            "Messages a flow's guard refused (monitor mode: would have refused).",
        ),
    ];
    let [opened, denied, active, guarded] = families;
    family(&mut o, guarded, "flow", &stats, |s| {
        s.guard_refusals.load(Ordering::Relaxed)
    });
    family(&mut o, opened, "flow", &stats, |s| {
        s.opened.load(Ordering::Relaxed)
    });
    family(&mut o, denied, "flow", &stats, |s| {
        s.denied.load(Ordering::Relaxed)
    });
    family(&mut o, active, "flow", &stats, |s| {
        s.active.load(Ordering::Relaxed)
    });
    let _ = writeln!(
        o,
        "# HELP ward_flow_bytes_total Bytes per flow and direction (up: from the device or client).\n# TYPE ward_flow_bytes_total counter"
    );
    for (flow, s) in &stats {
        let _ = writeln!(
            o,
            "ward_flow_bytes_total{{flow=\"{}\",direction=\"up\"}} {}",
            escape(flow),
            s.bytes.up.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "ward_flow_bytes_total{{flow=\"{}\",direction=\"down\"}} {}",
            escape(flow),
            s.bytes.down.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        o,
        "# HELP ward_handshake_failures_total Failed TLS and QUIC handshakes by leg and reason.\n# TYPE ward_handshake_failures_total counter"
    );
    for ((leg, reason), n) in control.proxy().registry.handshake_failures() {
        let _ = writeln!(
            o,
            "ward_handshake_failures_total{{leg=\"{leg}\",reason=\"{}\"}} {n}",
            reason.as_str()
        );
    }
    let _ = writeln!(
        o,
        "# HELP ward_device_drops_total Packets dropped per device (would-drop in monitor mode), from the nft counters.\n# TYPE ward_device_drops_total counter"
    );
    for d in &devices {
        let _ = writeln!(
            o,
            "ward_device_drops_total{{device=\"{}\"}} {}",
            escape(&d.id),
            d.drops
        );
    }
    let _ = writeln!(
        o,
        "# HELP ward_device_quarantined Whether a device is quarantined.\n# TYPE ward_device_quarantined gauge"
    );
    for d in &devices {
        let _ = writeln!(
            o,
            "ward_device_quarantined{{device=\"{}\"}} {}",
            escape(&d.id),
            u8::from(d.quarantined)
        );
    }
    // QUIC connections this gateway opened, one per peer gateway: what path
    // MTU discovery settled on (1452 where 1500-byte frames pass, less on a
    // path that loses the probes), round trip, losses and congestion events.
    let paths = control.proxy().quic.path_stats();
    let quic: [(&str, &str, &str); 4] = [
        (
            "ward_quic_path_mtu_bytes",
            "gauge",
            "Largest QUIC datagram payload the path to a peer gateway carries.",
        ),
        (
            "ward_quic_rtt_seconds",
            "gauge",
            "Smoothed round trip to a peer gateway over QUIC.",
        ),
        (
            "ward_quic_lost_packets_total",
            "counter",
            "QUIC packets to a peer gateway declared lost.",
        ),
        (
            "ward_quic_congestion_events_total",
            "counter",
            "Congestion events on the QUIC path to a peer gateway.",
        ),
    ];
    let [mtu, rtt, lost, congestion] = quic;
    family(&mut o, mtu, "peer", &paths, |p| p.path.current_mtu);
    family(&mut o, rtt, "peer", &paths, |p| p.path.rtt.as_secs_f64());
    family(&mut o, lost, "peer", &paths, |p| p.path.lost_packets);
    family(&mut o, congestion, "peer", &paths, |p| {
        p.path.congestion_events
    });
    // Learning mode: what the store holds and what it could not record.
    let observer = control.observer();
    let counts = observer.counts();
    let rows: Vec<(String, (u64, u64, u64))> = counts
        .into_iter()
        .map(|(id, f, o, e)| (id, (f, o, e)))
        .collect();
    for (name, kind, help, pick) in [
        (
            "ward_observed_flows",
            "gauge",
            "Flows a device was seen with, kept in the learning store.",
            (|c: &(u64, u64, u64)| c.0) as fn(&(u64, u64, u64)) -> u64,
        ),
        (
            "ward_observe_overflow_packets_total",
            "counter",
            "Packets a device's full learning set could not record.",
            |c| c.1,
        ),
        (
            "ward_observe_evicted_flows_total",
            "counter",
            "Flows the bounded learning store dropped (seen longest ago first).",
            |c| c.2,
        ),
    ] {
        family(&mut o, (name, kind, help), "device", &rows, pick);
    }
    let _ = writeln!(
        o,
        "# HELP ward_observe_nflog_lost_total First-seen events lost between the kernel and wardd.\n# TYPE ward_observe_nflog_lost_total counter\nward_observe_nflog_lost_total {}",
        observer.nflog_lost.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "# HELP ward_observe_poll_errors_total Reads of the learning sets that failed.\n# TYPE ward_observe_poll_errors_total counter\nward_observe_poll_errors_total {}",
        observer.poll_errors.load(Ordering::Relaxed)
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let _ = writeln!(
        o,
        "# HELP ward_certificate_expiry_seconds Seconds until the gateway's certificate expires.\n# TYPE ward_certificate_expiry_seconds gauge"
    );
    let _ = writeln!(
        o,
        "ward_certificate_expiry_seconds {}",
        status.certificate_not_after - now
    );
    o
}

/// Serve `/metrics` on `listener` until `shutdown`.
pub fn spawn_metrics(
    tracker: &TaskTracker,
    listener: TcpListener,
    control: Arc<Control>,
    shutdown: CancellationToken,
) {
    let handler = move |req: Request<Incoming>, _caller: Option<u32>| {
        let control = control.clone();
        async move {
            let resp = if req.uri().path() == "/metrics" {
                Response::builder()
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(Full::new(Bytes::from(render(&control).await)))
            } else {
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Full::new(Bytes::from_static(b"see /metrics\n")))
            };
            resp.expect("static response parts are valid")
        }
    };
    super::http::spawn_serve(tracker, "metrics", listener, handler, shutdown);
}
