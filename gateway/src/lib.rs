//! `ward-gateway`: the Ward gateway daemon, `wardd`.
//!
//! A gateway runs its part of the compiled site policy: listeners towards
//! devices and clients, mutual-TLS tunnels to peer gateways over TCP or QUIC
//! (`ward/1`), authorization of every connection at both ends against its own
//! plan, and the nftables ruleset.
//!
//! # Layout
//! - [`config`]: figment layers into a validated [`config::Config`].
//! - [`daemon`]: start (validate before binding), TLS file watch, shutdown.
//! - [`control`]: reload, runtime quarantine, the admin views; [`admin`]: the
//!   admin API on a Unix socket; [`audit`]: the hash-chained audit trail;
//!   [`forward`]: the trail as syslog over TLS; [`metrics`]: Prometheus text.
//! - [`server`]: the listener kinds and the tunnel server; [`quic`]: the QUIC transport.
//! - [`proto`]: the `ward/1` open frame; [`relay`]: both-way copy with half-close,
//!   idle timeout and counters; [`registry`]: live connections and limits.
//! - [`tls`]: certificates, CRL and rustls configs; [`bufio`]: large socket
//!   reads under TLS; [`nft`]: ruleset apply.
//! - [`telemetry`]: logging setup.
//!
//! # What this crate does not do
//! It does not decide policy: every decision comes from `ward-policy`'s pure
//! compile and authorization functions. It never logs payload bytes or key
//! material.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod bufio;
pub mod config;
pub mod control;
pub mod daemon;
pub mod forward;
pub mod metrics;
pub mod nft;
pub mod proto;
pub mod quic;
pub mod registry;
pub mod relay;
pub mod server;
pub mod telemetry;
pub mod tls;
