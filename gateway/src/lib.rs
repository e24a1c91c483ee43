//! `ward-gateway`: the I/O side of a Ward gateway.
//!
//! Today it holds the nftables apply step; the `wardd` daemon (tunnels,
//! listeners, admin API, reload) grows here next.
//!
//! # Layout
//! - [`nft`]: apply a compiled ruleset with one `nft -j -f -` transaction,
//!   read the table back, read counters.
//!
//! # What this crate does not do
//! It does not decide policy: every decision comes from `ward-policy`'s pure
//! compile and authorization functions.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod nft;
