//! `ward-gateway`: the Ward gateway daemon, `wardd`.
//!
//! A gateway runs its part of the compiled site policy: listeners towards
//! devices and clients, mutual-TLS tunnels to peer gateways over TCP or QUIC
//! (`ward/1`), authorization of every connection at both ends against its own
//! plan, and the nftables ruleset.
//!
//! # Layout
//! Layers, top to bottom; a module uses only layers below it and its own
//! folder, and the module graph has no cycle.
//! ```text
//! main.rs        arguments, logging, runtime, signals → shutdown future + reload stream
//! daemon.rs      start order (load → bind → apply → audit → READY), serve, drain
//! ops/           how the gateway is watched and steered
//!   http.rs        one hyper serve loop for the admin socket and the metrics port
//!   admin.rs       admin API routes; errors → HTTP status in one place
//!   metrics.rs     Prometheus text
//!   telemetry.rs   logging, OTLP export
//! control/       what changes a running gateway
//!   mod.rs         Control: the plan and TLS `watch` senders, reload, quarantine, views
//!   confirm.rs     policy apply with commit-confirm: pending state, rollback
//!   nft.rs         ruleset apply, counters and learning sets (`nft -j`)
//! observe/       learning mode: the bounded store of what each device talks to
//!   mod.rs         store, learning-set poller, snapshot with verdicts
//!   nflog.rs       first-seen events over netlink (NFLOG), loss counted
//! guard/         protocol parsers for guards inside a flow (issue 14, not yet wired):
//!   hl7.rs         MLLP frames, the MSH header, reject ACKs
//!   modbus.rs      MBAP frames, function and address range, exception responses
//! proxy/         the data path, one file per leg of DESIGN §3.1
//!   outbound.rs    device → tunnel or TLS server
//!   tunnel.rs      the `ward/1` tunnel server (TLS and QUIC) → target
//!   access.rs      TLS client → device
//!   handshake.rs   TLS/QUIC accept with client certificates, one failure path
//!   conn.rs        admit → relay → log, shared by the legs
//!   registry.rs    live connections, limits, statistics
//!   state.rs       ProxyState: what connection tasks read; re-authorization
//! audit/         the hash-chained trail (mod.rs), syslog-over-TLS forwarding (forward.rs)
//! config/        figment layers; load() → configuration + plan + TLS material
//! transport/     bytes between gateways; knows no listener and no policy
//!   frame.rs       the `ward/1` open frame and typed answers
//!   tls.rs         TLS material, SPIFFE verification
//!   quic.rs        QUIC endpoints, the per-peer pool
//!   relay.rs       both-way copy with half-close, idle timeout, counters
//!   bufio.rs       large socket reads under TLS
//! ```
//!
//! # What this crate does not do
//! It does not decide policy: every decision comes from `ward-policy`'s pure
//! compile and authorization functions. It never logs payload bytes or key
//! material.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod config;
pub mod control;
pub mod daemon;
pub mod guard;
pub mod observe;
pub mod ops;
pub mod proxy;
pub mod transport;
