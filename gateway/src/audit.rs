//! The local audit trail: append-only JSON lines, each linked to the one
//! before by its SHA-256 (`ward_api::audit`). Every flow decision, policy
//! change, admin action and certificate event is a record. Records never
//! carry payload bytes or key material.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};
use tracing::error;
use ward_api::audit::{GENESIS, Link, hash_line};

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

    /// Append a record of `kind` (`flow`, `handshake`, `policy`, `admin`,
    /// `certificate`) and `action`, with `fields`.
    pub fn record(&self, kind: &str, action: &str, fields: Value) {
        let mut inner = self.inner.lock().expect("audit lock poisoned");
        let mut m = Map::new();
        m.insert("seq".into(), Value::from(inner.seq + 1));
        m.insert("prev".into(), Value::from(inner.prev.clone()));
        m.insert(
            "time".into(),
            Value::from(
                time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            ),
        );
        m.insert("kind".into(), Value::from(kind));
        m.insert("action".into(), Value::from(action));
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        let mut line = Value::Object(m).to_string();
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
