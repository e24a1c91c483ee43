//! How people and tools watch and steer a running gateway: one HTTP serve
//! loop ([`http`]) for the admin API on its Unix socket ([`admin`]) and the
//! Prometheus page ([`metrics`]); logging and OpenTelemetry export
//! ([`telemetry`]).

pub mod admin;
pub mod http;
pub mod metrics;
pub mod telemetry;
