//! TLS material and configurations: the gateway's identity, the site CA and
//! CRL, and the rustls configs each listener kind and outbound leg uses.
//!
//! Between gateways: TLS 1.3 only, ALPN `ward/1`, certificates from the site
//! CA on both sides, identities as SPIFFE URIs. The peer gateway's identity is
//! checked inside the handshake by [`SpiffeServerVerifier`]; client identities
//! are read after the handshake and authorized against the plan.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// ALPN protocol of Ward tunnels.
pub const ALPN_WARD: &[u8] = b"ward/1";

/// Loading or using TLS material failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{path}: {reason}")]
    Pem {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material.
    #[error("{what}: {source}")]
    Rustls {
        /// Which config.
        what: &'static str,
        /// Why.
        source: rustls::Error,
    },
    /// The certificate does not name the identity the plan expects.
    #[error("{path}: certificate identity is {found:?}, expected {expected:?}")]
    WrongIdentity {
        /// Certificate file.
        path: PathBuf,
        /// What the certificate says.
        found: Option<String>,
        /// What the plan says.
        expected: String,
    },
    /// Building a client verifier failed.
    #[error("{what}: {reason}")]
    Verifier {
        /// Which verifier.
        what: String,
        /// Why.
        reason: String,
    },
}

/// Paths of the gateway's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// Site CA certificate (PEM).
    pub ca: PathBuf,
    /// This gateway's certificate (PEM, chain allowed).
    pub cert: PathBuf,
    /// This gateway's key (PEM).
    pub key: PathBuf,
    /// Site CRL (PEM), optional.
    pub crl: Option<PathBuf>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = read(path)?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        reason: format!("no private key found: {e}"),
    })
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let data = read(path)?;
    CertificateRevocationListDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: format!("bad CRL PEM: {e}"),
        })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in load_certs(path)? {
        store.add(c).map_err(|source| TlsError::Rustls {
            what: "adding CA certificate",
            source,
        })?;
    }
    Ok(Arc::new(store))
}

/// Whether `path` holds at least one usable CA certificate.
pub fn check_ca(path: &Path) -> Result<(), TlsError> {
    roots(path).map(drop)
}

/// The SPIFFE id in a certificate's URI SAN.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<String> {
    ward_pki::inspect(cert).and_then(|i| i.identity)
}

/// Everything TLS a gateway needs, loaded from files, replaced as a whole on reload.
pub struct TlsMaterial {
    /// The gateway's own identity, from its certificate.
    pub identity: String,
    /// Serials the loaded CRL revokes (lower-case hex).
    pub revoked: HashSet<String>,
    /// Not-after of the gateway's own certificate (Unix seconds).
    pub not_after: i64,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// `ward/1` tunnel server: TLS 1.3 only, client certificate required.
    pub tunnel_server: Arc<ServerConfig>,
    /// TLS client listeners (tls → plain): TLS 1.2+, client certificate required.
    pub access_server: Arc<ServerConfig>,
    peer_clients: Mutex<BTreeMap<String, Arc<ClientConfig>>>,
    service_clients: Mutex<BTreeMap<(PathBuf, String), Arc<ClientConfig>>>,
    return_servers: Mutex<BTreeMap<PathBuf, Arc<ServerConfig>>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity)
            .field("revoked", &self.revoked.len())
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Load CA, certificate, key and CRL; `expected` is the identity the plan
    /// gives this gateway, and the certificate must carry it.
    pub fn load(paths: &TlsPaths, expected: &str) -> Result<TlsMaterial, TlsError> {
        let certs = load_certs(&paths.cert)?;
        let key = load_key(&paths.key)?;
        let info = ward_pki::inspect(&certs[0]).ok_or_else(|| TlsError::Pem {
            path: paths.cert.clone(),
            reason: "certificate does not parse".into(),
        })?;
        if info.identity.as_deref() != Some(expected) {
            return Err(TlsError::WrongIdentity {
                path: paths.cert.clone(),
                found: info.identity,
                expected: expected.to_owned(),
            });
        }
        let roots = roots(&paths.ca)?;
        let crls = match &paths.crl {
            Some(p) => load_crls(p)?,
            None => Vec::new(),
        };
        let mut revoked = HashSet::new();
        for c in &crls {
            revoked.extend(ward_pki::crl_serials(c).unwrap_or_default());
        }
        let client_verifier = |what: &str| {
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .with_crls(crls.clone())
                .build()
                .map_err(|e| TlsError::Verifier {
                    what: what.to_owned(),
                    reason: e.to_string(),
                })
        };
        let mut tunnel_server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                what: "tunnel server config",
                source,
            })?
            .with_client_cert_verifier(client_verifier("tunnel server")?)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|source| TlsError::Rustls {
                what: "tunnel server certificate",
                source,
            })?;
        tunnel_server.alpn_protocols = vec![ALPN_WARD.to_vec()];
        // No session resumption between gateways: every tunnel connection is a
        // full handshake with a fresh certificate check (and CRL) on both ends.
        tunnel_server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        tunnel_server.send_tls13_tickets = 0;

        let mut access_server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|source| TlsError::Rustls {
                what: "access server config",
                source,
            })?
            .with_client_cert_verifier(client_verifier("access server")?)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|source| TlsError::Rustls {
                what: "access server certificate",
                source,
            })?;
        access_server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        access_server.send_tls13_tickets = 0;

        Ok(TlsMaterial {
            identity: expected.to_owned(),
            revoked,
            not_after: info.not_after,
            certs,
            key,
            roots,
            crls,
            tunnel_server: Arc::new(tunnel_server),
            access_server: Arc::new(access_server),
            peer_clients: Mutex::new(BTreeMap::new()),
            service_clients: Mutex::new(BTreeMap::new()),
            return_servers: Mutex::new(BTreeMap::new()),
        })
    }

    /// Client config for a tunnel to the peer gateway with identity `peer`:
    /// TLS 1.3, ALPN `ward/1`, our certificate presented, the peer's chain,
    /// CRL and SPIFFE id checked in the handshake.
    pub fn peer_client(&self, peer: &str) -> Result<Arc<ClientConfig>, TlsError> {
        let mut cache = self.peer_clients.lock().expect("tls cache lock poisoned");
        if let Some(c) = cache.get(peer) {
            return Ok(c.clone());
        }
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .with_crls(self.crls.clone())
            .build()
            .map_err(|e| TlsError::Verifier {
                what: format!("verifier for {peer}"),
                reason: e.to_string(),
            })?;
        let verifier = Arc::new(SpiffeServerVerifier {
            inner,
            expected: peer.to_owned(),
        });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                what: "tunnel client config",
                source,
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|source| TlsError::Rustls {
                what: "tunnel client certificate",
                source,
            })?;
        config.alpn_protocols = vec![ALPN_WARD.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        cache.insert(peer.to_owned(), config.clone());
        Ok(config)
    }

    /// Client config for a server that speaks TLS itself (plain → tls): its
    /// CA from `ca`, TLS 1.2+, our certificate presented.
    pub fn service_client(
        &self,
        ca: &Path,
        server_name: &str,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let key = (ca.to_owned(), server_name.to_owned());
        let mut cache = self
            .service_clients
            .lock()
            .expect("tls cache lock poisoned");
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|source| TlsError::Rustls {
                what: "service client config",
                source,
            })?
            .with_root_certificates(roots(ca)?)
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|source| TlsError::Rustls {
                what: "service client certificate",
                source,
            })?;
        let config = Arc::new(config);
        cache.insert(key, config.clone());
        Ok(config)
    }

    /// Server config for a TLS server connecting back through a return
    /// flow (a PACS sending C-MOVE results): this gateway's certificate,
    /// TLS 1.2+, and the server's client certificate required, verified by
    /// the service's CA at `ca` (its name is checked after the handshake).
    pub fn return_server(&self, ca: &Path) -> Result<Arc<ServerConfig>, TlsError> {
        let mut cache = self.return_servers.lock().expect("tls cache lock poisoned");
        if let Some(c) = cache.get(ca) {
            return Ok(c.clone());
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
            .build()
            .map_err(|e| TlsError::Verifier {
                what: "return flow server".to_owned(),
                reason: e.to_string(),
            })?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|source| TlsError::Rustls {
                what: "return flow server config",
                source,
            })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|source| TlsError::Rustls {
                what: "return flow server certificate",
                source,
            })?;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let config = Arc::new(config);
        cache.insert(ca.to_owned(), config.clone());
        Ok(config)
    }

    /// Whether a peer certificate's serial is on the loaded CRL.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.contains(serial)
    }
}

/// Verifies a peer gateway: chain to the site CA, validity, CRL, then the
/// SPIFFE id in the URI SAN must be exactly the expected one. DNS names play
/// no part between gateways.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: String,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // rustls checks the chain, validity and revocation first and the name
        // last: a name error therefore means everything else passed. The name
        // given here never matches a SPIFFE certificate on purpose.
        let placeholder = ServerName::try_from("ward-peer.invalid").expect("static name is valid");
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            &placeholder,
            ocsp_response,
            now,
        ) {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        match identity_of(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            other => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(WrongPeer {
                    expected: self.expected.clone(),
                    found: other,
                })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The peer presented a valid certificate for another identity.
#[derive(Debug, thiserror::Error)]
#[error("peer identity is {found:?}, expected {expected}")]
pub struct WrongPeer {
    expected: String,
    found: Option<String>,
}
