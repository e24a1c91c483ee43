//! The audit trail's hash chain: JSON lines, each carrying the SHA-256 of the
//! line before it (`"prev"`, 64 zeros for the first) and a sequence number.
//! [`verify`] walks a trail and names the first record that was altered,
//! removed or reordered.
//!
//! The last record has no successor to vouch for it: forwarding to a remote
//! audit repository (syslog over TLS) is what anchors the end of the chain.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
