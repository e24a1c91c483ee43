//! Audit forwarding: the local trail's records sent as RFC 5424 syslog
//! messages over TLS with RFC 5425 octet-counting framing, as IHE ATNA audit
//! repositories expect.
//!
//! The local trail is the spool: records are always written there first, and
//! the forwarder sends from the position it reached (kept in
//! `state_dir/audit.forwarded`). While the receiver is down, records wait in
//! the trail; when it returns they are delivered in order. Syslog over TLS
//! has no acknowledgements, so after a broken connection the forwarder
//! resends the last [`RESEND`] records: delivery is at least once, and a
//! repeated record carries the same `seq`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use ward_api::audit::Link;

use crate::config::AuditForward;
use crate::transport::tls::TlsMaterial;

/// Records resent after a broken connection.
pub const RESEND: u64 = 64;
/// Connect and TLS handshake with the receiver, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A quiet link is probed this often, so a receiver that went away is
/// noticed and the records wait in the trail.
const PROBE: Duration = Duration::from_secs(1);
/// First and largest wait between connection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));

fn frame(hostname: &str, record: &str) -> Vec<u8> {
    // PRI 85 = facility 10 (security/authorization) * 8 + severity 5 (notice).
    let ts = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".into());
    let msg = format!("<85>1 {ts} {hostname} wardd - audit - {record}");
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

fn read_position(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Records of the trail after `after`, as (seq, line).
fn pending(trail: &std::path::Path, after: u64) -> Vec<(u64, String)> {
    let Ok(f) = std::fs::File::open(trail) else {
        return Vec::new();
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Link>(&l).ok().map(|k| (k.seq, l)))
        .filter(|(seq, _)| *seq > after)
        .collect()
}

/// What the forwarder needs.
pub struct Forwarder {
    /// The local trail.
    pub trail: PathBuf,
    /// Where the position reached is kept (`audit.forwarded` inside it).
    pub state_dir: PathBuf,
    /// The receiver.
    pub target: AuditForward,
    /// HOSTNAME of the syslog messages: the gateway's name.
    pub hostname: String,
    /// Notified whenever a record is appended.
    pub wake: Arc<Notify>,
    /// The gateway's TLS material in force (its certificate is the client
    /// certificate towards the receiver).
    pub tls: watch::Receiver<Arc<TlsMaterial>>,
}

/// Forward the trail until `shutdown`.
pub fn spawn_forwarder(tracker: &TaskTracker, f: Forwarder, shutdown: CancellationToken) {
    let Forwarder {
        trail,
        state_dir,
        target,
        hostname,
        wake,
        tls,
    } = f;
    tracker.spawn(async move {
        let pos_file = state_dir.join("audit.forwarded");
        let mut sent = read_position(&pos_file);
        let mut backoff = BACKOFF.0;
        // Every connection but the first follows a failure, after which the
        // last records may not have arrived.
        let mut first = true;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let connect = async {
                let tls = tls.borrow().clone();
                let config = tls
                    .service_client(&target.ca, &target.server_name)
                    .map_err(|e| e.to_string())?;
                let tcp =
                    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr))
                        .await
                        .map_err(|_| "connect timed out".to_owned())?
                        .map_err(|e| e.to_string())?;
                let name =
                    ServerName::try_from(target.server_name.clone()).map_err(|e| e.to_string())?;
                tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    TlsConnector::from(config).connect(name, tcp),
                )
                .await
                .map_err(|_| "tls handshake timed out".to_owned())?
                .map_err(|e| e.to_string())
            };
            let mut stream = tokio::select! {
                () = shutdown.cancelled() => return,
                r = connect => match r {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(receiver = %target.addr, error = %e, spooled_after = sent, "audit receiver unreachable; records stay in the local trail");
                        tokio::select! { () = shutdown.cancelled() => return, () = tokio::time::sleep(backoff) => {} }
                        backoff = (backoff * 2).min(BACKOFF.1);
                        continue;
                    }
                },
            };
            backoff = BACKOFF.0;
            if !first {
                sent = sent.saturating_sub(RESEND);
            }
            first = false;
            info!(receiver = %target.addr, from_seq = sent + 1, "audit forwarding connected");
            'conn: loop {
                let batch = pending(&trail, sent);
                for (seq, line) in &batch {
                    if let Err(e) = stream.write_all(&frame(&hostname, line)).await {
                        warn!(receiver = %target.addr, error = %e, "audit forwarding broke; will resend");
                        break 'conn;
                    }
                    sent = *seq;
                }
                if !batch.is_empty() {
                    if let Err(e) = stream.flush().await {
                        warn!(error = %e, "audit forwarding broke; will resend");
                        break 'conn;
                    }
                    let _ = std::fs::write(&pos_file, sent.to_string());
                    debug!(sent, "audit records forwarded");
                }
                tokio::select! {
                    () = shutdown.cancelled() => { let _ = stream.shutdown().await; return; }
                    () = wake.notified() => {}
                    () = tokio::time::sleep(PROBE) => {}
                }
            }
        }
    });
}
