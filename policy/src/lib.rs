//! Ward's site policy: the one source of truth for every gateway of a site.
//!
//! The pipeline is `parse` (TOML with source spans) → [`validate`] (every
//! diagnostic, each with file:line:column and key path) → [`compile`] (pure and
//! deterministic, one gateway's [`Plan`]: listeners, routes, authorization
//! tables) → [`nft::render`] (the nftables batch for `nft -j -f -`). Per-connection decisions are the pure functions
//! [`Plan::route`], [`Plan::authorize_tunnel`] and [`Plan::authorize_client`].
//!
//! The policy file format is documented in the repository's README.
//!
//! # Layout
//! - [`diag`]: diagnostics, source locations, did-you-mean.
//! - [`model`]: the typed policy.
//! - `parse`: TOML to [`Policy`].
//! - `validate`: semantic checks.
//! - `compile`: [`Plan`] and authorization.
//! - [`nft`]: the nftables ruleset of a plan.
//! - [`diff`]: what changes between two policies.
//!
//! # What this crate does not do
//! No I/O of any kind: it reads no files, runs no `nft`, has no clock and no
//! async runtime. Callers pass text in and get data out; "today" and "now"
//! (for end-of-support dates and maintenance windows) are parameters.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod diag;
pub mod diff;
pub mod model;
pub mod nft;
pub mod observe;

mod compile;
mod parse;
mod validate;

pub use compile::{
    AccessRule, CompileError, Denied, DevicePlan, ExceptionPlan, Inventory, Leg, Listener,
    OutboundFlow, Plan, Route, Target, TunnelFlow, compile, device_counter,
};
pub use diag::{Diagnostic, Severity};
pub use model::Policy;
pub use parse::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_TUNNEL_PORT,
    MAX_ID_LEN, parse, parse_duration, parse_partial,
};
pub use validate::{ValidateOptions, validate};

/// Parse and validate in one step. On success returns the policy and its
/// warnings; on failure every error (and warning) found: key and value
/// errors, and what validation finds in the rest of the file beside them
/// (only a file that is not TOML stops at its syntax error).
pub fn load(
    file: &str,
    text: &str,
    opts: &ValidateOptions,
) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
    let (policy, mut diags) = parse_partial(file, text)?;
    diags.extend(validate(&policy, opts));
    if diags.iter().any(|d| d.severity == Severity::Error) {
        Err(diags)
    } else {
        Ok((policy, diags))
    }
}

#[cfg(test)]
mod tests;
