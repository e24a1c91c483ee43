//! Accepting TLS and QUIC handshakes that require a client certificate, with
//! one failure path for both: bounded in time and in concurrent handshakes;
//! every failure logged, counted by classified reason and audited.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, CertificateError};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::warn;
use ward_api::audit::{AuditEvent, HandshakeAction, HandshakeFailure};
use ward_policy::Leg;

use super::state::ProxyState;
use crate::transport::bufio::ChunkedTcp;

/// Who is on the other end of an accepted handshake.
#[derive(Debug, Clone)]
pub struct PeerId {
    /// SPIFFE identity from the certificate's URI SAN.
    pub identity: String,
    /// The certificate's serial (lower-case hex), to match against the CRL.
    pub serial: Option<String>,
}

impl PeerId {
    /// The identity of a verified certificate chain, if its leaf has one.
    pub fn of(certs: Option<&[CertificateDer<'static>]>) -> Option<PeerId> {
        let info = ward_pki::inspect(certs?.first()?)?;
        Some(PeerId {
            identity: info.identity?,
            serial: Some(info.serial),
        })
    }
}

/// Classify a rustls error.
pub fn classify(e: &rustls::Error) -> HandshakeFailure {
    use rustls::Error as E;
    match e {
        E::NoCertificatesPresented => HandshakeFailure::NoCertificate,
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => HandshakeFailure::UnknownIssuer,
            CertificateError::BadSignature => HandshakeFailure::BadSignature,
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => HandshakeFailure::Expired,
            CertificateError::Revoked => HandshakeFailure::Revoked,
            _ => HandshakeFailure::Other,
        },
        E::PeerIncompatible(_)
        | E::NoApplicationProtocol
        | E::InappropriateHandshakeMessage { .. } => HandshakeFailure::Protocol,
        E::AlertReceived(a) => classify_alert(*a),
        _ => HandshakeFailure::Other,
    }
}

/// Classify the TLS alert a handshake ended with (what QUIC reports, as a
/// crypto error code, when rustls refused the peer).
pub fn classify_alert(a: AlertDescription) -> HandshakeFailure {
    match a {
        AlertDescription::CertificateRequired => HandshakeFailure::NoCertificate,
        AlertDescription::UnknownCA => HandshakeFailure::UnknownIssuer,
        AlertDescription::DecryptError => HandshakeFailure::BadSignature,
        AlertDescription::CertificateExpired => HandshakeFailure::Expired,
        AlertDescription::CertificateRevoked => HandshakeFailure::Revoked,
        AlertDescription::ProtocolVersion
        | AlertDescription::HandshakeFailure
        | AlertDescription::NoApplicationProtocol
        | AlertDescription::InsufficientSecurity => HandshakeFailure::Protocol,
        _ => HandshakeFailure::Other,
    }
}

fn classify_io(e: &std::io::Error) -> HandshakeFailure {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map_or(HandshakeFailure::Other, classify)
}

fn classify_quic(e: &quinn::ConnectionError) -> HandshakeFailure {
    match e {
        quinn::ConnectionError::TransportError(t) => {
            // Crypto errors are 0x100 + the TLS alert (RFC 9001 §4.8).
            let code = u64::from(t.code);
            match u8::try_from(code.wrapping_sub(0x100)) {
                Ok(alert) if code >= 0x100 => classify_alert(AlertDescription::from(alert)),
                _ => HandshakeFailure::Protocol,
            }
        }
        quinn::ConnectionError::TimedOut => HandshakeFailure::Timeout,
        _ => HandshakeFailure::Other,
    }
}

/// The one failure path: log, count, audit.
fn failed(
    state: &ProxyState,
    leg: Leg,
    src: SocketAddr,
    listener: SocketAddr,
    reason: HandshakeFailure,
    detail: String,
) {
    warn!(%leg, peer = %src, %listener, reason = reason.as_str(), detail = %detail, "handshake failed");
    state.registry.handshake_failed(leg, reason);
    state.audit.record(AuditEvent::Handshake {
        action: HandshakeAction::Failed,
        leg,
        src: src.to_string(),
        listener: listener.to_string(),
        reason,
        detail,
    });
}

/// Who a client certificate must name.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// A SPIFFE identity of the site (gateways and clients).
    Spiffe,
    /// A server's DNS name or IP address (a TLS server connecting back
    /// through a return flow), as its service's `server_name` gives it.
    Name(&'a str),
}

impl Expect<'_> {
    fn identify(self, certs: Option<&[CertificateDer<'static>]>) -> Result<PeerId, String> {
        match self {
            Expect::Spiffe => {
                PeerId::of(certs).ok_or_else(|| "certificate has no SPIFFE identity".to_owned())
            }
            Expect::Name(name) => {
                let leaf = certs
                    .and_then(|c| c.first())
                    .ok_or_else(|| "no certificate".to_owned())?;
                let server = ServerName::try_from(name).map_err(|e| format!("{name:?}: {e}"))?;
                webpki::EndEntityCert::try_from(leaf)
                    .and_then(|c| c.verify_is_valid_for_subject_name(&server))
                    .map_err(|e| format!("certificate is not for {name}: {e}"))?;
                Ok(PeerId {
                    identity: name.to_owned(),
                    serial: ward_pki::inspect(leaf).map(|i| i.serial),
                })
            }
        }
    }
}

/// Complete a TLS handshake with a required client certificate on a
/// connection accepted by a `leg` listener; the certificate must name what
/// `expect` says.
pub async fn accept_tls(
    state: &ProxyState,
    config: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    src: SocketAddr,
    leg: Leg,
    expect: Expect<'_>,
) -> Option<(TlsStream<ChunkedTcp>, PeerId)> {
    let listener = stream.local_addr().ok()?;
    let Ok(permit) = state.handshakes.try_acquire() else {
        failed(
            state,
            leg,
            src,
            listener,
            HandshakeFailure::Busy,
            "too many handshakes in progress".into(),
        );
        return None;
    };
    let accept = TlsAcceptor::from(config).accept(ChunkedTcp::new(stream));
    let result = timeout(state.limits.handshake_timeout, accept).await;
    drop(permit);
    let (reason, detail) = match result {
        Ok(Ok(tls)) => match expect.identify(tls.get_ref().1.peer_certificates()) {
            Ok(peer) => return Some((tls, peer)),
            Err(detail) => (HandshakeFailure::NoIdentity, detail),
        },
        Ok(Err(e)) => (classify_io(&e), e.to_string()),
        Err(_) => (HandshakeFailure::Timeout, "handshake timed out".to_owned()),
    };
    failed(state, leg, src, listener, reason, detail);
    None
}

/// Complete a QUIC handshake on the tunnel server.
pub async fn accept_quic(
    state: &ProxyState,
    incoming: quinn::Incoming,
    listener: SocketAddr,
) -> Option<(quinn::Connection, PeerId)> {
    let src = incoming.remote_address();
    let leg = Leg::Tunnel;
    let Ok(permit) = state.handshakes.try_acquire() else {
        failed(
            state,
            leg,
            src,
            listener,
            HandshakeFailure::Busy,
            "too many handshakes in progress".into(),
        );
        incoming.refuse();
        return None;
    };
    let result = timeout(state.limits.handshake_timeout, async {
        incoming.accept()?.await
    })
    .await;
    drop(permit);
    let (reason, detail) = match result {
        Ok(Ok(conn)) => {
            let certs = conn
                .peer_identity()
                .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok());
            match PeerId::of(certs.as_deref().map(Vec::as_slice)) {
                Some(peer) => return Some((conn, peer)),
                None => {
                    conn.close(1u32.into(), b"no identity");
                    (
                        HandshakeFailure::NoIdentity,
                        "certificate has no SPIFFE identity".to_owned(),
                    )
                }
            }
        }
        Ok(Err(e)) => (classify_quic(&e), e.to_string()),
        Err(_) => (HandshakeFailure::Timeout, "handshake timed out".to_owned()),
    };
    failed(state, leg, src, listener, reason, detail);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rustls' certificate errors map to the reasons the metrics and audit
    /// trail use, and QUIC's crypto codes to the same ones.
    #[test]
    fn classifies_rustls_errors_and_quic_alerts() {
        let cert = rustls::Error::InvalidCertificate;
        for (error, want) in [
            (
                rustls::Error::NoCertificatesPresented,
                HandshakeFailure::NoCertificate,
            ),
            (
                cert(CertificateError::UnknownIssuer),
                HandshakeFailure::UnknownIssuer,
            ),
            (
                cert(CertificateError::BadSignature),
                HandshakeFailure::BadSignature,
            ),
            (cert(CertificateError::Expired), HandshakeFailure::Expired),
            (cert(CertificateError::Revoked), HandshakeFailure::Revoked),
            (
                rustls::Error::NoApplicationProtocol,
                HandshakeFailure::Protocol,
            ),
        ] {
            assert_eq!(classify(&error), want, "{error}");
        }
        // tokio-rustls hands the rustls error over inside an io::Error.
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            cert(CertificateError::Revoked),
        );
        assert_eq!(classify_io(&io), HandshakeFailure::Revoked);
        for (alert, want) in [
            (AlertDescription::UnknownCA, HandshakeFailure::UnknownIssuer),
            (
                AlertDescription::CertificateRequired,
                HandshakeFailure::NoCertificate,
            ),
            (
                AlertDescription::CertificateRevoked,
                HandshakeFailure::Revoked,
            ),
        ] {
            let e = quinn::ConnectionError::TransportError(quinn_proto::TransportError {
                code: quinn_proto::TransportErrorCode::crypto(u8::from(alert)),
                frame: None,
                reason: String::new(),
            });
            assert_eq!(classify_quic(&e), want, "{alert:?}");
        }
    }
}
