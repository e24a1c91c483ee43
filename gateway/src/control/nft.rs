//! Apply a ruleset with the real `nft`, in one transaction, reporting nft's
//! own error text.
//!
//! The `nftables` crate's apply helper drops nft's stderr, so `nft -j -f -` is
//! spawned here directly: when a batch is refused, the admin sees nft's reason.
//! nft applies a batch as one kernel transaction: if any command fails, nothing
//! of the batch takes effect and the previous table stays in place.

use std::ffi::OsString;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Applying or reading a ruleset failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// `nft` could not be started.
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        /// The program.
        program: OsString,
        /// Why.
        source: std::io::Error,
    },
    /// `nft` refused the batch; the previous ruleset is unchanged.
    #[error("nft refused the ruleset (previous ruleset kept): {stderr}")]
    Refused {
        /// Exit status.
        status: std::process::ExitStatus,
        /// What nft said.
        stderr: String,
    },
    /// `nft` printed something that is not the JSON asked for.
    #[error("nft output is not valid JSON: {0}")]
    BadOutput(serde_json::Error),
}

/// How to run `nft`: the program and any leading arguments, e.g.
/// `ip netns exec NS nft` in tests.
#[derive(Debug, Clone)]
pub struct Nft {
    program: OsString,
    prefix: Vec<OsString>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft {
            program: "nft".into(),
            prefix: Vec::new(),
        }
    }
}

/// Outcome of a successful apply.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// Wall time nft took, spawn to exit.
    pub elapsed: Duration,
}

impl Nft {
    /// Run `nft` inside network namespace `ns` (through `ip netns exec`).
    pub fn in_netns(ns: &str) -> Self {
        Nft {
            program: "ip".into(),
            prefix: vec!["netns".into(), "exec".into(), ns.into(), "nft".into()],
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.prefix);
        c
    }

    /// Apply a JSON batch (`nft -j -f -`) as one transaction.
    pub fn apply_json(&self, batch: &str) -> Result<Applied, ApplyError> {
        let start = Instant::now();
        let mut child = self
            .command()
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ApplyError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        // nft reads all of stdin before it answers, so writing first cannot
        // deadlock on a full stderr pipe.
        let write = child
            .stdin
            .take()
            .expect("stdin was piped")
            .write_all(batch.as_bytes());
        let out = child
            .wait_with_output()
            .map_err(|source| ApplyError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(ApplyError::Refused {
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        write.map_err(|source| ApplyError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        Ok(Applied {
            elapsed: start.elapsed(),
        })
    }

    /// `nft -j list table inet ward`, or `None` when the table does not exist.
    pub fn list_table(&self) -> Result<Option<serde_json::Value>, ApplyError> {
        self.list(&["list", "table", "inet", ward_policy::nft::TABLE])
    }

    /// `nft -j list counters table inet ward`: per-device drop counters.
    pub fn list_counters(&self) -> Result<Vec<CounterValue>, ApplyError> {
        let Some(v) = self.list(&["list", "counters", "table", "inet", ward_policy::nft::TABLE])?
        else {
            return Ok(Vec::new());
        };
        let items = v["nftables"].as_array().cloned().unwrap_or_default();
        Ok(items
            .iter()
            .filter_map(|o| {
                let c = o.get("counter")?;
                Some(CounterValue {
                    name: c["name"].as_str()?.to_owned(),
                    packets: c["packets"].as_u64().unwrap_or(0),
                    bytes: c["bytes"].as_u64().unwrap_or(0),
                })
            })
            .collect())
    }

    fn list(&self, args: &[&str]) -> Result<Option<serde_json::Value>, ApplyError> {
        let out = self
            .command()
            .arg("-j")
            .args(args)
            .output()
            .map_err(|source| ApplyError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(ApplyError::Refused {
                status: out.status,
                stderr,
            });
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(ApplyError::BadOutput)
    }
}

/// One named nft counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterValue {
    /// Counter name, e.g. `dev_ct-scanner-2`.
    pub name: String,
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted.
    pub bytes: u64,
}
