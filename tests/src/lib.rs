//! Ward's test harness: network namespaces, synthetic policies, and (as the
//! product grows) the daemon builder and real protocol peers.
//!
//! # Layout
//! - [`netns`]: network namespaces that clean up after themselves, and the
//!   skip-or-fail rule for tests that need root.
//! - [`synthetic`]: generated site policies of any size, for benchmarks.
//! - [`harness`]: temp dirs, the test CA, real `wardd` processes.
//! - [`inproc`]: gateways inside the test process, for fast data-path,
//!   reload and drain tests.
//! - [`peers`]: dcmtk, the `hl7` package's MLLP tools, an echo server.
//! - [`site`]: a two-gateway site on loopback.
//! - [`otlp`]: an OTLP/HTTP receiver for the telemetry tests.
//! - [`topology`]: the example hospital in network namespaces.
//!
//! # What this crate does not do
//! It is not shipped: `publish = false`, and nothing in `wardd` depends on it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod harness;
pub mod inproc;
pub mod load;
pub mod netns;
pub mod otlp;
pub mod peers;
pub mod segment;
pub mod site;
pub mod synthetic;
pub mod topology;
