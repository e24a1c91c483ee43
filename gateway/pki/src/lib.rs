//! `ward-pki`: the site CA of a Ward deployment.
//!
//! A CA directory holds `ca.crt` and `ca.key` (ECDSA P-256, key mode 0600),
//! `index.json` (trust domain, every issued certificate, revocations, CRL
//! number), `crl.pem`, and the issued pairs under `issued/`. Identities are
//! SPIFFE URIs in the URI SAN: `spiffe://<trust-domain>/gateway/<name>` and
//! `spiffe://<trust-domain>/client/<name>`. Revocation works offline: the CRL
//! file is copied to gateways, which reload it.
//!
//! # Layout
//! - [`Ca`]: open, init, issue, revoke, CRL.
//! - [`CertInfo`] / [`inspect`]: read identity, serial and validity of a certificate.
//!
//! # What this crate does not do
//! No network enrollment and no hardware keys (later: one-time enrollment
//! tokens, TPM-held keys). It trusts the file system for the CA key.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// A PKI operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The directory holds no CA.
    #[error(
        "no CA in {dir} (create one with `wardctl ca init --trust-domain <domain> --dir {dir}`)"
    )]
    NoCa {
        /// The directory.
        dir: PathBuf,
    },
    /// `init` on a directory that already holds a CA.
    #[error("{dir} already holds a CA; refusing to overwrite it")]
    Exists {
        /// The directory.
        dir: PathBuf,
    },
    /// A file is not what it should be.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A name or trust domain is not acceptable.
    #[error("{0}")]
    BadName(String),
    /// Nothing matches the serial or name to revoke.
    #[error("no issued certificate matches {0:?}")]
    NotFound(String),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a certificate identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A Ward gateway (server and client of tunnels).
    Gateway,
    /// A client identity (vendor station, clinician tool).
    Client,
    /// A server that speaks TLS itself and also connects out with the same
    /// certificate (a PACS opening C-MOVE return associations): server and
    /// client auth, named by the DNS names and addresses it is reached at.
    Server,
}

impl Kind {
    /// Path segment in the SPIFFE id.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Client => "client",
            Kind::Server => "server",
        }
    }
}

/// One issued certificate, as recorded in `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Gateway or client.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// SPIFFE id.
    pub identity: String,
    /// Start of validity (RFC 3339).
    pub not_before: String,
    /// End of validity (RFC 3339).
    pub not_after: String,
    /// Certificate file.
    pub cert: PathBuf,
    /// Key file (mode 0600).
    pub key: PathBuf,
    /// When it was revoked (RFC 3339), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Index {
    trust_domain: String,
    crl_number: u64,
    issued: Vec<Issued>,
}

/// Validity window of a certificate to issue.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Not valid before.
    pub not_before: OffsetDateTime,
    /// Not valid after.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From now (less five minutes of clock skew) for `days` days.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(i64::from(days)),
        }
    }
}

/// Default validity of issued certificates.
pub const DEFAULT_DAYS: u32 = 365;
/// Validity of the CA certificate.
pub const CA_DAYS: u32 = 3650;
/// A CRL is valid this long; regenerate (any `revoke`, or `wardctl ca crl`) before then.
pub const CRL_DAYS: i64 = 30;

/// An open CA directory.
pub struct Ca {
    dir: PathBuf,
    index: Index,
    cert_pem: String,
    key: KeyPair,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("UTC times always format as RFC 3339")
}

/// Write `data` to `path` with `mode`, replacing it atomically (temp file + rename).
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

fn check_name(name: &str, what: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' || c == '.'
        })
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(format!(
            "{what} {name:?} is not valid: use lower-case letters, digits, '-', '_' or '.'"
        )))
    }
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    // RFC 5280: at most 20 octets, positive, unpredictable (CA/B BR: 64+ bits).
    let mut bytes = [0u8; 16];
    let path = Path::new("/dev/urandom");
    let mut f = fs::File::open(path).map_err(io(path))?;
    std::io::Read::read_exact(&mut f, &mut bytes).map_err(io(path))?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x40; // no leading zero byte: keeps the hex form stable
    Ok(SerialNumber::from_slice(&bytes))
}

/// First 8 bytes (hex) of the SHA-256 of a public key.
fn key_id(key: &KeyPair) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(key.public_key_raw())[..8])
}

/// Names a server certificate carries besides its SPIFFE id, for clients
/// that check the name they connect to (`ca issue --dns/--ip`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// DNS names.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ip: Vec<std::net::IpAddr>,
}

impl Ca {
    /// Create a CA in `dir` (created if missing, mode 0700) for `trust_domain`.
    pub fn init(dir: &Path, trust_domain: &str) -> Result<Ca, PkiError> {
        check_name(trust_domain, "trust domain")?;
        if dir.join("ca.key").exists() || dir.join("index.json").exists() {
            return Err(PkiError::Exists {
                dir: dir.to_owned(),
            });
        }
        fs::create_dir_all(dir.join("issued")).map_err(io(dir))?;
        set_mode(dir, 0o700)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        // The name carries a key id: every CA of a trust domain has a name of
        // its own, so a certificate from another Ward CA is an unknown issuer
        // to a gateway (with one shared name it read as a bad signature).
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Ward site CA {trust_domain} {}", key_id(&key)),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let v = Validity::days(CA_DAYS);
        params.not_before = v.not_before;
        params.not_after = v.not_after;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        write_file(&dir.join("ca.key"), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&dir.join("ca.crt"), cert.pem().as_bytes(), 0o644)?;
        let mut ca = Ca {
            dir: dir.to_owned(),
            index: Index {
                trust_domain: trust_domain.to_owned(),
                crl_number: 0,
                issued: Vec::new(),
            },
            cert_pem: cert.pem(),
            key,
        };
        ca.write_crl()?;
        Ok(ca)
    }

    /// Open the CA in `dir`.
    pub fn open(dir: &Path) -> Result<Ca, PkiError> {
        let index_path = dir.join("index.json");
        let key_path = dir.join("ca.key");
        if !key_path.exists() && !index_path.exists() {
            return Err(PkiError::NoCa {
                dir: dir.to_owned(),
            });
        }
        let index: Index = serde_json::from_slice(&fs::read(&index_path).map_err(io(&index_path))?)
            .map_err(|e| PkiError::Invalid {
                path: index_path.clone(),
                reason: e.to_string(),
            })?;
        let key_pem = fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Invalid {
            path: key_path.clone(),
            reason: format!("not a PEM private key: {e}"),
        })?;
        let cert_path = dir.join("ca.crt");
        let cert_pem = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        Ok(Ca {
            dir: dir.to_owned(),
            index,
            cert_pem,
            key,
        })
    }

    /// The site's trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.index.trust_domain
    }

    /// The CA certificate file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The CRL file.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    /// Everything issued so far.
    pub fn issued(&self) -> &[Issued] {
        &self.index.issued
    }

    /// Issue a certificate and key for `name`, valid for `validity`, written to
    /// `issued/<kind>-<name>.{crt,key}` (the key 0600). Reissuing a name
    /// replaces its files; the old certificate stays valid until revoked.
    pub fn issue(
        &mut self,
        kind: Kind,
        name: &str,
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        self.issue_with_names(kind, name, validity, &Names::default())
    }

    /// [`Ca::issue`] with DNS and IP names besides the SPIFFE id: a
    /// gateway's access listener then passes a standard TLS client's name
    /// check (Python's `ssl` defaults, `openssl s_client -verify_hostname`).
    pub fn issue_with_names(
        &mut self,
        kind: Kind,
        name: &str,
        validity: Validity,
        names: &Names,
    ) -> Result<Issued, PkiError> {
        check_name(name, kind.as_str())?;
        if kind == Kind::Server && names.dns.is_empty() && names.ip.is_empty() {
            return Err(PkiError::BadName(format!(
                "server certificate {name:?} needs the names clients check: --dns and/or --ip"
            )));
        }
        let identity = format!(
            "spiffe://{}/{}/{name}",
            self.index.trust_domain,
            kind.as_str()
        );
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, self.index.trust_domain.clone());
        params.subject_alt_names = vec![SanType::URI(identity.clone().try_into()?)];
        for d in &names.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.clone().try_into()?));
        }
        params
            .subject_alt_names
            .extend(names.ip.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match kind {
            Kind::Gateway | Kind::Server => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Kind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let serial = random_serial()?;
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        let stem = format!("{}-{name}", kind.as_str());
        let cert_path = self.dir.join("issued").join(format!("{stem}.crt"));
        let key_path = self.dir.join("issued").join(format!("{stem}.key"));
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        let issued = Issued {
            serial: serial_hex,
            kind,
            name: name.to_owned(),
            identity,
            not_before: rfc3339(validity.not_before),
            not_after: rfc3339(validity.not_after),
            cert: cert_path,
            key: key_path,
            revoked: None,
        };
        self.index.issued.push(issued.clone());
        self.save_index()?;
        Ok(issued)
    }

    /// Revoke by serial (hex) or by name (every unrevoked certificate of that
    /// name), then rewrite the CRL. Returns what was revoked.
    pub fn revoke(&mut self, serial_or_name: &str) -> Result<Vec<Issued>, PkiError> {
        let key = serial_or_name.to_ascii_lowercase();
        let now = rfc3339(OffsetDateTime::now_utc());
        let mut hit = Vec::new();
        for i in &mut self.index.issued {
            if i.revoked.is_none() && (i.serial == key || i.name == serial_or_name) {
                i.revoked = Some(now.clone());
                hit.push(i.clone());
            }
        }
        if hit.is_empty() {
            return Err(PkiError::NotFound(serial_or_name.to_owned()));
        }
        self.write_crl()?;
        Ok(hit)
    }

    /// Regenerate `crl.pem` from the index (new CRL number, fresh validity).
    pub fn write_crl(&mut self) -> Result<PathBuf, PkiError> {
        self.index.crl_number += 1;
        let now = OffsetDateTime::now_utc();
        let mut revoked = Vec::new();
        for i in self.index.issued.iter().filter(|i| i.revoked.is_some()) {
            let bytes = hex::decode(&i.serial).map_err(|e| PkiError::Invalid {
                path: self.dir.join("index.json"),
                reason: format!("serial {:?}: {e}", i.serial),
            })?;
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(CRL_DAYS),
            crl_number: SerialNumber::from(self.index.crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let crl = params.signed_by(&issuer)?;
        let path = self.crl_path();
        write_file(&path, crl.pem()?.as_bytes(), 0o644)?;
        self.save_index()?;
        Ok(path)
    }

    fn save_index(&self) -> Result<(), PkiError> {
        let json = serde_json::to_vec_pretty(&self.index).expect("index serializes");
        write_file(&self.dir.join("index.json"), &json, 0o600)
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// Identity, serial and validity read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// The SPIFFE id from the URI SAN, if there is exactly one `spiffe://` URI.
    pub identity: Option<String>,
    /// Serial, lower-case hex without leading zero bytes.
    pub serial: String,
    /// Not valid before (Unix seconds).
    pub not_before: i64,
    /// Not valid after (Unix seconds).
    pub not_after: i64,
}

/// Read a DER certificate's identity, serial and validity.
pub fn inspect(der: &[u8]) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut spiffe = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && uri.starts_with("spiffe://")
            {
                spiffe.push((*uri).to_owned());
            }
        }
    }
    let serial = cert.tbs_certificate.raw_serial();
    let serial = serial
        .iter()
        .position(|b| *b != 0)
        .map_or(&serial[serial.len().saturating_sub(1)..], |i| &serial[i..]);
    Some(CertInfo {
        identity: (spiffe.len() == 1).then(|| spiffe.remove(0)),
        serial: hex::encode(serial),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Serials listed in a DER CRL, lower-case hex.
pub fn crl_serials(der: &[u8]) -> Option<Vec<String>> {
    let (_, crl) = x509_parser::parse_x509_crl(der).ok()?;
    Some(
        crl.iter_revoked_certificates()
            .map(|r| {
                let s = r.raw_serial();
                let s = s
                    .iter()
                    .position(|b| *b != 0)
                    .map_or(&s[s.len().saturating_sub(1)..], |i| &s[i..]);
                hex::encode(s)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ward-pki-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// init writes a CA with a 0600 key and refuses to overwrite it.
    #[test]
    fn init_protects_key_and_refuses_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir("init");
        let ca = Ca::init(&dir, "st-mary.example").expect("init");
        assert_eq!(ca.trust_domain(), "st-mary.example");
        let mode = fs::metadata(dir.join("ca.key"))
            .expect("key")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            Ca::init(&dir, "other.example"),
            Err(PkiError::Exists { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    /// Issued certificates carry the SPIFFE id and the serial the index records;
    /// revocation lists that serial in the CRL.
    #[test]
    fn issue_and_revoke() {
        let dir = tempdir("issue");
        let mut ca = Ca::init(&dir, "st-mary.example").expect("init");
        let gw = ca
            .issue(Kind::Gateway, "edge-01", Validity::days(30))
            .expect("issue");
        let pem = fs::read_to_string(&gw.cert).expect("cert");
        let der = pem_to_der(&pem);
        let info = inspect(&der).expect("parse");
        assert_eq!(
            info.identity.as_deref(),
            Some("spiffe://st-mary.example/gateway/edge-01")
        );
        assert_eq!(info.serial, gw.serial);
        assert!(info.not_after - info.not_before > 29 * 86400);

        let reopened = Ca::open(&dir).expect("open");
        assert_eq!(reopened.issued().len(), 1);
        let mut ca = reopened;
        let revoked = ca.revoke("edge-01").expect("revoke");
        assert_eq!(revoked.len(), 1);
        let crl = pem_to_der(&fs::read_to_string(ca.crl_path()).expect("crl"));
        assert_eq!(
            crl_serials(&crl).expect("crl parses"),
            vec![gw.serial.clone()]
        );
        assert!(matches!(ca.revoke("edge-01"), Err(PkiError::NotFound(_))));
        let _ = fs::remove_dir_all(&dir);
    }

    /// A server certificate (a PACS that also connects out) needs the names
    /// its clients check, and carries both server and client auth.
    #[test]
    fn server_certificate() {
        let dir = tempdir("server");
        let mut ca = Ca::init(&dir, "st-mary.example").expect("init");
        let err = ca
            .issue(Kind::Server, "pacs", Validity::days(30))
            .expect_err("a server without names");
        assert!(err.to_string().contains("--dns"), "{err}");
        let names = Names {
            dns: vec!["pacs.st-mary.example".into()],
            ip: vec!["203.0.113.5".parse().expect("ip")],
        };
        let srv = ca
            .issue_with_names(Kind::Server, "pacs", Validity::days(30), &names)
            .expect("issue");
        let der = pem_to_der(&fs::read_to_string(&srv.cert).expect("cert"));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let eku = cert
            .extended_key_usage()
            .expect("eku ext")
            .expect("eku present")
            .value;
        assert!(eku.server_auth && eku.client_auth, "{eku:?}");
        assert_eq!(srv.identity, "spiffe://st-mary.example/server/pacs");
        let _ = fs::remove_dir_all(&dir);
    }

    /// Opening a directory without a CA says how to make one.
    #[test]
    fn open_missing() {
        let err = Ca::open(Path::new("/nonexistent/ward-ca"))
            .err()
            .expect("error");
        assert!(err.to_string().contains("wardctl ca init"), "{err}");
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        if pem.contains("X509 CRL") {
            return rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
                .expect("crl pem")
                .to_vec();
        }
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("cert pem")
            .to_vec()
    }
}
