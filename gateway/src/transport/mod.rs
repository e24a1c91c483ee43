//! Moving bytes between gateways, with no knowledge of listeners or policy:
//! the `ward/1` open frame ([`frame`]), TLS material and SPIFFE peer
//! verification ([`tls`]), QUIC endpoints and the per-peer connection pool
//! ([`quic`]), the both-way copy ([`relay`]) and large socket reads under TLS
//! ([`bufio`]).

pub mod bufio;
pub mod frame;
pub mod quic;
pub mod relay;
pub mod tls;
