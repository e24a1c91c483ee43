//! The audit trail's hash chain: JSON lines, each carrying the SHA-256 of the
//! line before it (`"prev"`, 64 zeros for the first) and a sequence number.
//! [`verify`] walks a trail and names the first record that was altered,
//! removed or reordered.
//!
//! The last record has no successor to vouch for it: forwarding to a remote
//! audit repository (syslog over TLS) is what anchors the end of the chain.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use ward_policy::Leg;

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Lower-case hex SHA-256 of one record line (without its newline).
pub fn hash_line(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// The chain fields every record has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Sequence number, from 1.
    pub seq: u64,
    /// Hash of the previous line.
    pub prev: String,
}

/// One line of the trail: the chain fields, the time, and the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Sequence number, from 1.
    pub seq: u64,
    /// SHA-256 (lower-case hex) of the line before; [`GENESIS`] for the first.
    pub prev: String,
    /// When it was written, RFC 3339 in UTC.
    pub time: String,
    /// What happened: `kind` and `action` plus the fields of that kind.
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// What an audit record says. Serialized flat into the record, tagged by
/// `kind`, each kind with an `action`. Field vocabulary, the same in every
/// kind: `leg` (`outbound`, `tunnel`, `access`), `flow` (the policy's flow
/// name), `device` (device id), `peer` (SPIFFE identity of the peer gateway
/// or client, or the TLS server name of an outbound TLS leg), `src` (the
/// connection's source address `ip:port`; on the tunnel leg, the opener's
/// device), `dst` (the address the source asked for), `listener` (the local
/// address that accepted it), `reason` (why, in words), `uid` (the admin's
/// Unix uid), `revision` (the plan revision in force afterwards). No payload
/// bytes, no key material, no patient data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AuditEvent {
    /// A connection decision: allowed, denied, failed to reach its far end,
    /// or closed by Ward (reload, revocation, quarantine).
    Flow {
        /// What happened.
        action: FlowAction,
        /// Which leg.
        leg: Leg,
        /// Flow name, when the connection was matched to one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow: Option<String>,
        /// Device id, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// Peer identity, when the leg has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
        /// Source address.
        src: String,
        /// Destination asked for, when it decided the flow.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dst: Option<String>,
        /// Why it was denied, failed or closed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A TLS or QUIC handshake failed.
    Handshake {
        /// Always `failed`.
        action: HandshakeAction,
        /// The leg of the listener (`tunnel` or `access`).
        leg: Leg,
        /// The remote address.
        src: String,
        /// The local address that accepted it.
        listener: String,
        /// Classified reason, as in `ward_handshake_failures_total{reason}`.
        reason: HandshakeFailure,
        /// The TLS stack's own words.
        detail: String,
    },
    /// A ruleset and plan were put in force, or a reload was refused.
    Policy {
        /// Applied or rejected.
        action: PolicyAction,
        /// What caused it: `start`, `SIGHUP`, `api uid=N`, `tls-files`.
        trigger: String,
        /// Revision in force afterwards.
        revision: String,
        /// Policy file, on start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
        /// SHA-256 of the site policy file in force afterwards.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy_sha256: Option<String>,
        /// Whether the ruleset was loaded into nftables (false only in tests).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nft: Option<bool>,
        /// Why a reload was rejected.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// A pending apply's deadline (Unix seconds).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        confirm_by: Option<u64>,
    },
    /// An admin request that changes state.
    Admin {
        /// Which verb.
        action: AdminAction,
        /// The caller's uid (SO_PEERCRED).
        uid: u32,
        /// The device acted on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// Connections closed by the action.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        closed: Option<usize>,
        /// Revision in force afterwards.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revision: Option<String>,
    },
    /// The gateway's certificates or CRL were reloaded.
    Certificate {
        /// Always `reloaded`.
        action: CertificateAction,
        /// Serials the CRL now lists.
        crl_entries: usize,
        /// Not-after of the gateway's certificate (Unix seconds).
        not_after: i64,
    },
}

/// `kind = "flow"` actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowAction {
    /// Authorized at this end and connected.
    Allowed,
    /// Refused by policy or a limit.
    Denied,
    /// Authorized, but the far end could not be opened.
    Failed,
    /// Cut by Ward while open: no longer allowed after a reload, peer revoked,
    /// device quarantined.
    Closed,
    /// A message inside the flow refused by its guard (answered the
    /// protocol's way; the connection stays). `reason` names the header
    /// facts only (e.g. the HL7 message type), never patient data.
    GuardRefused,
    /// Monitor mode: a message the guard would refuse, let through.
    GuardWouldRefuse,
}

/// `kind = "handshake"` actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HandshakeAction {
    /// The handshake did not complete.
    Failed,
}

/// `kind = "policy"` actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyAction {
    /// Put in force.
    Applied,
    /// Refused; the previous policy stays.
    Rejected,
    /// `wardctl policy apply --confirm-within`: in force, rolled back at
    /// `confirm_by` unless confirmed.
    PendingConfirm,
    /// `wardctl policy confirm`: the pending policy stays.
    Confirmed,
    /// Not confirmed in time: the previous policy is back in force.
    RolledBack,
    /// The rollback failed; the pending policy's ruleset stays in force
    /// and the rollback is retried.
    RollbackFailed,
}

/// `kind = "admin"` actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminAction {
    /// `POST /v1/reload`.
    Reload,
    /// `POST /v1/devices/{id}/quarantine`.
    Quarantine,
    /// `POST /v1/devices/{id}/release`.
    Release,
}

/// `kind = "certificate"` actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateAction {
    /// Certificates and CRL reloaded from their files.
    Reloaded,
}

/// Why a handshake failed, classified: the `reason` of handshake records
/// and of `ward_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HandshakeFailure {
    /// The client presented no certificate.
    NoCertificate,
    /// The certificate is not from the site CA.
    UnknownIssuer,
    /// A signature did not verify.
    BadSignature,
    /// The certificate expired (or is not valid yet).
    Expired,
    /// The certificate is on the CRL.
    Revoked,
    /// The certificate is valid but carries no SPIFFE identity.
    NoIdentity,
    /// Protocol version, ALPN or cipher mismatch.
    Protocol,
    /// Not completed within `limits.handshake_timeout`.
    Timeout,
    /// `limits.max_handshakes` were in progress.
    Busy,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::NoCertificate => "no-certificate",
            HandshakeFailure::UnknownIssuer => "unknown-issuer",
            HandshakeFailure::BadSignature => "bad-signature",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::Revoked => "revoked",
            HandshakeFailure::NoIdentity => "no-identity",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Busy => "busy",
            HandshakeFailure::Other => "other",
        }
    }
}

/// Where and how a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A line is not a record.
    #[error("line {line}: not an audit record: {reason}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// Why.
        reason: String,
    },
    /// A record's content changed after it was written.
    #[error("record {seq} (line {line}) was altered: the next record's link does not match it")]
    Altered {
        /// Its sequence number.
        seq: u64,
        /// Its line.
        line: usize,
    },
    /// Records are missing.
    #[error("record {first}{} missing before line {line}", if .last > .first { format!("..{} are", .last) } else { " is".to_owned() })]
    Removed {
        /// First missing sequence number.
        first: u64,
        /// Last missing sequence number.
        last: u64,
        /// Line where the gap shows.
        line: usize,
    },
    /// A record is out of order.
    #[error("record {seq} (line {line}) is out of order: expected record {expected}")]
    Reordered {
        /// Its sequence number.
        seq: u64,
        /// Its line.
        line: usize,
        /// What should have come.
        expected: u64,
    },
}

/// Verify a whole trail; the number of records on success.
///
/// A trail may start at any sequence number (older segments rotated away),
/// but from there every record must follow its predecessor.
pub fn verify(text: &str) -> Result<u64, ChainError> {
    // Sequence numbers present anywhere, to tell a gap from a reordering.
    let present: std::collections::HashSet<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Link>(l).ok().map(|k| k.seq))
        .collect();
    let mut prev: Option<(u64, usize, &str)> = None;
    let mut count = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let link: Link = serde_json::from_str(line).map_err(|e| ChainError::Malformed {
            line: n,
            reason: e.to_string(),
        })?;
        match prev {
            None => {
                if link.seq == 1 && link.prev != GENESIS {
                    return Err(ChainError::Malformed {
                        line: n,
                        reason: "the first record must link to the genesis hash".into(),
                    });
                }
            }
            Some((pseq, pline, ptext)) => {
                let expected = pseq + 1;
                if link.seq > expected {
                    if present.contains(&expected) {
                        return Err(ChainError::Reordered {
                            seq: link.seq,
                            line: n,
                            expected,
                        });
                    }
                    return Err(ChainError::Removed {
                        first: expected,
                        last: link.seq - 1,
                        line: n,
                    });
                }
                if link.seq < expected {
                    return Err(ChainError::Reordered {
                        seq: link.seq,
                        line: n,
                        expected,
                    });
                }
                if link.prev != hash_line(ptext) {
                    return Err(ChainError::Altered {
                        seq: pseq,
                        line: pline,
                    });
                }
            }
        }
        prev = Some((link.seq, n, line));
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(n: u64) -> Vec<String> {
        let mut lines = Vec::new();
        let mut prev = GENESIS.to_owned();
        for seq in 1..=n {
            let line = format!(
                r#"{{"seq":{seq},"prev":"{prev}","kind":"flow","action":"allowed","flow":"f{seq}"}}"#
            );
            prev = hash_line(&line);
            lines.push(line);
        }
        lines
    }

    /// An intact trail verifies.
    #[test]
    fn intact() {
        assert_eq!(verify(&trail(5).join("\n")), Ok(5));
    }

    /// Changing a record is caught at its successor and names it.
    #[test]
    fn altered() {
        let mut t = trail(5);
        t[2] = t[2].replace("\"f3\"", "\"evil\"");
        assert_eq!(
            verify(&t.join("\n")),
            Err(ChainError::Altered { seq: 3, line: 3 })
        );
    }

    /// Removing a record names the missing one.
    #[test]
    fn removed() {
        let mut t = trail(5);
        t.remove(1);
        assert_eq!(
            verify(&t.join("\n")),
            Err(ChainError::Removed {
                first: 2,
                last: 2,
                line: 2
            })
        );
    }

    /// Swapping two records names the first one out of place.
    #[test]
    fn reordered() {
        let mut t = trail(5);
        t.swap(2, 3);
        assert_eq!(
            verify(&t.join("\n")),
            Err(ChainError::Reordered {
                seq: 4,
                line: 3,
                expected: 3
            })
        );
    }

    /// Each error says which record, in words an auditor can act on.
    #[test]
    fn messages() {
        assert_eq!(
            ChainError::Removed {
                first: 2,
                last: 4,
                line: 2
            }
            .to_string(),
            "record 2..4 are missing before line 2"
        );
        assert_eq!(
            ChainError::Altered { seq: 3, line: 3 }.to_string(),
            "record 3 (line 3) was altered: the next record's link does not match it"
        );
    }
}
