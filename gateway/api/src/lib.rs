//! `ward-api`: the admin API's wire types, shared by `wardd` (which serves
//! them as JSON on its Unix socket) and `wardctl` (which prints them, as
//! tables or with `--json` as they are), so the two cannot drift apart.
//!
//! # Endpoints (HTTP/1.1, JSON, `/run/ward/admin.sock`)
//! - `GET /live`, `GET /ready`
//! - `GET /v1/status` → [`Status`]
//! - `GET /v1/devices` → `[Device]`, `GET /v1/devices/{id}` → [`Device`]
//! - `GET /v1/flows` → `[Flow]` (live connections)
//! - `GET /v1/policy` → the compiled plan of this gateway
//! - `GET /v1/observed[?since=SECONDS]` → [`observed::Observed`] (learning data)
//! - `GET /v1/evidence` → [`Evidence`] (what `wardctl report` shows of it)
//! - `POST /v1/reload` → [`ReloadResult`]
//! - `POST /v1/policy/apply` ([`ApplyRequest`]) → [`ApplyResult`]; `POST /v1/policy/confirm` → [`PendingConfirm`]
//! - `POST /v1/devices/{id}/quarantine`, `POST /v1/devices/{id}/release` → [`Device`]
//!
//! Errors are [`ApiError`] with a status code: 400 bad request, 404 unknown
//! path or device, 409 rejected (e.g. a reload that failed validation),
//! 500 internal.
//!
//! [`audit`] holds the audit trail's record types ([`audit::AuditEvent`]: the
//! schema SIEMs parse), its hash chain and its verification, shared by the
//! daemon that writes the trail and `wardctl audit`.
//!
//! # What this crate does not do
//! No I/O: it is data and pure functions only.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod observed;

use serde::{Deserialize, Serialize};
pub use ward_policy::{Inventory, Leg};

/// Default admin socket.
pub const DEFAULT_SOCKET: &str = "/run/ward/admin.sock";

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `wardd` version.
    pub version: String,
    /// Gateway name.
    pub gateway: String,
    /// Gateway identity.
    pub identity: String,
    /// `enforce` or `monitor`.
    pub mode: String,
    /// How the gateway is inserted in front of its devices: `explicit`
    /// (devices pointed at its listeners) or `routed` (it holds the device
    /// segments' router addresses and intercepts flows without `listen`).
    #[serde(default)]
    pub insertion: String,
    /// Policy file.
    pub policy_file: String,
    /// Revision of the plan in force: a SHA-256 prefix of this gateway's
    /// whole compiled plan (runtime quarantine included), so any change
    /// that changes a decision changes it.
    pub revision: String,
    /// SHA-256 of the site policy file the plan was compiled from.
    #[serde(default)]
    pub policy_sha256: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// The last reload, if any.
    pub last_reload: Option<ReloadResult>,
    /// Bound addresses, `kind=addr`.
    pub listeners: Vec<String>,
    /// Devices quarantined now (policy and runtime).
    pub quarantined: Vec<String>,
    /// Live connections.
    pub connections: usize,
    /// Expiry of the gateway's certificate (Unix seconds).
    pub certificate_not_after: i64,
    /// The policy file of the configuration (`policy_file` differs when
    /// `wardctl policy apply` put a policy in force).
    #[serde(default)]
    pub configured_policy: String,
    /// An apply waiting for `wardctl policy confirm`.
    #[serde(default)]
    pub pending_confirm: Option<PendingConfirm>,
}

/// `POST /v1/policy/apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The candidate policy's text.
    pub policy: String,
    /// Where it came from (for messages and the audit trail).
    pub source: String,
    /// Roll back unless confirmed within this many seconds.
    pub confirm_within_secs: Option<u64>,
}

/// Answer of `POST /v1/policy/apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// Revision in force now.
    pub revision: String,
    /// Revision before.
    pub previous_revision: String,
    /// Deadline of the confirmation (Unix seconds), if one is needed.
    pub confirm_by: Option<u64>,
}

/// An apply waiting for confirmation (`POST /v1/policy/confirm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingConfirm {
    /// Rolled back at this time (Unix seconds) unless confirmed.
    pub confirm_by: u64,
    /// Revision of the pending policy.
    pub revision: String,
    /// Revision it rolls back to.
    pub previous_revision: String,
    /// Where the candidate came from.
    pub source: String,
    /// When it was applied (Unix seconds), and by whom.
    pub applied_at: u64,
    /// The caller's uid.
    pub uid: u32,
}

/// Outcome of a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    /// Whether it was applied.
    pub ok: bool,
    /// When (Unix seconds).
    pub at: u64,
    /// What triggered it (`SIGHUP`, `api uid=N`).
    pub trigger: String,
    /// Revision in force afterwards.
    pub revision: String,
    /// Why it was rejected.
    pub error: Option<String>,
}

/// A device behind this gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Id.
    pub id: String,
    /// Address.
    pub ip: String,
    /// MAC.
    pub mac: String,
    /// Interface.
    pub interface: String,
    /// `enforce` or `monitor` (the gateway's mode applies to every device).
    pub mode: String,
    /// How the device reaches its flows: `explicit` (pointed at the
    /// gateway's listeners), `transparent` (its connections intercepted at
    /// their original destinations, the device unchanged), or `mixed`.
    #[serde(default)]
    pub insertion: String,
    /// Quarantined now.
    pub quarantined: bool,
    /// Packets dropped (or, in monitor mode, that would have been).
    pub drops: u64,
    /// Flows it may use.
    pub flows: Vec<String>,
    /// Live connections now.
    pub connections: usize,
    /// Last connection through Ward (Unix seconds), since start.
    pub last_seen: Option<u64>,
    /// Inventory.
    pub inventory: Inventory,
}

/// A live connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Flow name.
    pub flow: String,
    /// Which leg it is.
    pub leg: Leg,
    /// Peer identity (gateway, client or TLS server name).
    pub peer: Option<String>,
    /// Source address.
    pub source: String,
    /// Bytes from the device (or client) side.
    pub bytes_up: u64,
    /// Bytes towards the device (or client) side.
    pub bytes_down: u64,
    /// Seconds open.
    pub age_secs: u64,
    /// The maintenance window the connection lives in, when its flow has
    /// one: when it ends, and whether the warning period has begun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<FlowWindow>,
}

/// Where a live connection stands with its flow's maintenance window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowWindow {
    /// When the window ends and the connection is cut (RFC 3339, UTC).
    pub ends: String,
    /// Seconds until then.
    pub seconds_left: u64,
    /// The warning period before the end has begun.
    pub warned: bool,
}

/// Format version of [`Evidence`].
pub const EVIDENCE_FORMAT: u32 = 1;

/// `GET /v1/evidence`: a running gateway's word on its controls, for
/// `wardctl report` (directly, or through a file `wardctl evidence` wrote).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// [`EVIDENCE_FORMAT`].
    pub format: u32,
    /// When it was taken (Unix seconds).
    pub at: u64,
    /// The gateway's status.
    pub status: Status,
    /// Its devices, with drop counters since the ruleset was loaded.
    pub devices: Vec<Device>,
    /// Per device, packets dropped in the last 24 hours (or since the
    /// ruleset was last loaded, if later: its counters start then).
    pub drops_24h: Vec<DropWindow>,
    /// Live connections.
    pub flows: Vec<Flow>,
    /// TLS handshakes refused since start, by leg and reason.
    pub handshake_refusals: Vec<HandshakeRefusals>,
    /// The audit trail, verified.
    pub audit: AuditEvidence,
}

/// Drops of one device over a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropWindow {
    /// Device id.
    pub device: String,
    /// Packets dropped (in monitor mode: that would have been).
    pub packets: u64,
    /// Start of the window (Unix seconds).
    pub since: u64,
}

/// Handshakes refused on one leg for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeRefusals {
    /// Leg.
    pub leg: String,
    /// Reason (`unknown-ca`, `expired`, `revoked`, …).
    pub reason: String,
    /// Handshakes.
    pub count: u64,
}

/// The audit trail as the gateway verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvidence {
    /// The trail's file.
    pub file: String,
    /// Records whose hash chain was verified.
    pub records: u64,
    /// The chain holds from the first record to the last.
    pub intact: bool,
    /// Where and why it does not.
    pub error: Option<String>,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}
