//! The local audit trail: append-only JSON lines, each linked to the one
//! before by its SHA-256 (`ward_api::audit`). Every flow decision, policy
//! change, admin action and certificate event is a typed record
//! ([`AuditEvent`]). Records never carry payload bytes or key material.
//! [`forward`] sends the trail on as syslog over TLS.

pub mod forward;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::error;
pub use ward_api::audit::AuditEvent;
use ward_api::audit::{GENESIS, Link, Record, hash_line};

struct Inner {
    file: File,
    seq: u64,
    prev: String,
}

/// The audit trail of one gateway.
pub struct Audit {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Notified on every record (wakes the forwarder).
    pub appended: std::sync::Arc<tokio::sync::Notify>,
}

impl Audit {
    /// Open (or create, mode 0640) the trail at `path` and continue its chain.
    pub fn open(path: &Path) -> std::io::Result<Audit> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (mut seq, mut prev) = (0, GENESIS.to_owned());
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                // Link to whatever the last line holds: if it was tampered
                // with, `wardctl audit verify` will say so at this record.
                prev = hash_line(&line);
                seq = serde_json::from_str::<Link>(&line).map_or(seq + 1, |l| l.seq);
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)?;
        Ok(Audit {
            path: path.to_owned(),
            inner: Mutex::new(Inner { file, seq, prev }),
            appended: Default::default(),
        })
    }

    /// The trail's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `event` as the next record of the chain.
    pub fn record(&self, event: AuditEvent) {
        let mut inner = self.inner.lock().expect("audit lock poisoned");
        let record = Record {
            seq: inner.seq + 1,
            prev: inner.prev.clone(),
            time: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            event,
        };
        let mut line = serde_json::to_string(&record).expect("audit records serialize");
        let hash = hash_line(&line);
        line.push('\n');
        // One write of the whole record (the file is opened for appending):
        // a crash never leaves half a line for the next record to follow.
        match inner.file.write_all(line.as_bytes()) {
            Ok(()) => {
                inner.seq += 1;
                inner.prev = hash;
                self.appended.notify_one();
            }
            Err(e) => {
                error!(error = %e, path = %self.path.display(), "cannot write the audit trail")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_api::audit::{FlowAction, Leg, verify};

    /// A trail written by release 0.1.0 (untyped records) keeps verifying
    /// after typed records are appended to it, and its old records still
    /// parse as [`Record`]s of the new schema.
    #[test]
    fn continues_a_trail_from_release_0_1_0() {
        let old = include_str!("../../api/tests/fixtures/audit-0.1.0-edge.jsonl");
        let dir = std::env::temp_dir().join(format!("ward-audit-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("audit.jsonl");
        std::fs::write(&path, old).expect("write old trail");
        let audit = Audit::open(&path).expect("open");
        audit.record(AuditEvent::Flow {
            action: FlowAction::Closed,
            leg: Leg::Outbound,
            flow: Some("echo-tcp".into()),
            device: Some("modality-1".into()),
            peer: None,
            src: "127.0.0.1:1".into(),
            dst: None,
            reason: Some("flow no longer in the policy".into()),
        });
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(verify(&text), Ok(11));
        let last: Record = serde_json::from_str(text.lines().last().expect("line")).expect("parse");
        assert_eq!(last.seq, 11);
        assert!(matches!(
            last.event,
            AuditEvent::Flow {
                action: FlowAction::Closed,
                ..
            }
        ));
        for line in old.lines() {
            let r: Result<Record, _> = serde_json::from_str(line);
            assert!(r.is_ok(), "{line}: {r:?}");
        }
        // The hub's trail of that release (with a handshake record, whose
        // fields changed: see the README's audit schema) still verifies.
        let hub = include_str!("../../api/tests/fixtures/audit-0.1.0-hub.jsonl");
        assert_eq!(verify(hub), Ok(6));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
