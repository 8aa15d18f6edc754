//! TLS for client and peer listeners (etcd's `pkg/transport`), on rustls.
//!
//! * `--cert-file/--key-file`: the server identity, PEM.
//! * `--trusted-ca-file` + `--client-cert-auth`: clients must present a
//!   certificate signed by one of the CAs.
//! * `--auto-tls`: a self-signed certificate generated once into
//!   `<data-dir>/fixtures/{client,peer}/` and reused on restart.
//! * `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname` (and
//!   `--client-cert-allowed-hostname`): on top of chain verification, the
//!   client's leaf certificate must carry that CN, or be valid for that
//!   host name (Go's `x509.Certificate.VerifyHostname`), as in etcd's
//!   `transport.TLSInfo.ServerConfig`. A mismatch fails the handshake with
//!   a `bad certificate` alert and is logged as etcd's
//!   `client certificate authentication failed`.
//!
//! ALPN offers `h2` and `http/1.1` so gRPC and the JSON gateway share a port.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a listener needs to know to speak TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// PEM certificate chain presented to clients.
    pub cert_file: Option<PathBuf>,
    /// PEM private key for `cert_file`.
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle that client certificates must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require and verify client certificates.
    pub client_cert_auth: bool,
    /// `--peer-cert-allowed-cn`: the verified client leaf's CN must equal it.
    pub allowed_cn: Option<String>,
    /// `--peer-cert-allowed-hostname`: the verified client leaf must be
    /// valid for this host name or IP address.
    pub allowed_hostname: Option<String>,
    /// `--client-crl-file` / `--peer-crl-file`: revoked client certificates.
    pub crl_file: Option<PathBuf>,
    /// Cipher suites and TLS versions.
    pub policy: suites::TlsPolicy,
}

/// Failures building a TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("could not load {what} from {path}: {source}")]
    Pem {
        /// Which file this was (cert, key, CA).
        what: &'static str,
        /// Path of the file.
        path: PathBuf,
        /// The underlying parse or I/O error.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the combination.
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA bundle was unusable for client verification.
    #[error("TLS client verification setup failed: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Writing self-signed certificates failed.
    #[error("could not write self-signed certificate to {path}: {source}")]
    Write {
        /// Where it was being written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("could not generate self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Both an allowed CN and an allowed host name were given.
    #[error(
        "AllowedCN and AllowedHostname are mutually exclusive (cn={cn:?}, hostname={hostname:?})"
    )]
    AllowedConflict {
        /// The allowed CN.
        cn: String,
        /// The allowed host name.
        hostname: String,
    },
    /// `--cipher-suites`, `--tls-*-version` or the CRL file are unusable.
    #[error("{0}")]
    Policy(String),
    /// HTTPS requested but no certificate given.
    #[error(
        "TLS requested but no certificate/key given (use --cert-file/--key-file or --auto-tls)"
    )]
    Missing,
}

impl TlsSettings {
    /// Whether any server certificate is configured.
    pub fn has_cert(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    /// Builds the rustls server configuration.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else {
            return Err(TlsError::Missing);
        };
        let allowed = self.allowed_client()?;
        let certs = load_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
            what: "private key",
            path: key.clone(),
            source,
        })?;
        let resolved = self.policy.resolve().map_err(TlsError::Policy)?;
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(tls12) = &resolved.tls12_suites {
            provider
                .cipher_suites
                .retain(|s| s.version() == &rustls::version::TLS13 || tls12.contains(s));
        }
        let provider = Arc::new(provider);
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&resolved.versions)?;
        let builder = match (&self.trusted_ca_file, self.client_cert_auth) {
            (Some(ca), true) => {
                let mut roots = RootCertStore::empty();
                let trusted = load_certs(ca)?;
                for c in &trusted {
                    roots.add(c.clone())?;
                }
                let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()?;
                let revoked = match &self.crl_file {
                    Some(crl) => Some(crl::Revoked::load(crl).map_err(TlsError::Policy)?),
                    None => None,
                };
                builder.with_client_cert_verifier(Arc::new(CheckedClientVerifier {
                    inner,
                    trusted,
                    allowed,
                    revoked,
                }))
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The extra client-certificate rule, if any (etcd refuses both at once).
    fn allowed_client(&self) -> Result<Option<AllowedClient>, TlsError> {
        let nonempty = |o: &Option<String>| o.clone().filter(|s| !s.is_empty());
        match (nonempty(&self.allowed_cn), nonempty(&self.allowed_hostname)) {
            (Some(cn), Some(hostname)) => Err(TlsError::AllowedConflict { cn, hostname }),
            (Some(cn), None) => Ok(Some(AllowedClient::CommonName(cn))),
            (None, Some(h)) => Ok(Some(AllowedClient::Hostname(h))),
            (None, None) => Ok(None),
        }
    }
}

/// Which verified client certificates a listener accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedClient {
    /// The leaf's subject CN must equal this exactly.
    CommonName(String),
    /// The leaf must be valid for this host name or IP address.
    Hostname(String),
}

/// The subject CN of a DER certificate as Go's `pkix.Name` reads it (the
/// last CN attribute); `""` when it has none, `None` if it does not parse.
pub fn leaf_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .last()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Some(cn)
}

impl AllowedClient {
    /// Whether the DER leaf certificate `der` satisfies the rule. An
    /// unparsable certificate never does.
    pub fn permits(&self, der: &[u8]) -> bool {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return false;
        };
        match self {
            Self::CommonName(cn) => leaf_cn(der).is_some_and(|got| &got == cn),
            Self::Hostname(host) => {
                let (mut dns, mut ips) = (Vec::new(), Vec::new());
                if let Ok(Some(san)) = cert.subject_alternative_name() {
                    for name in &san.value.general_names {
                        match name {
                            x509_parser::extensions::GeneralName::DNSName(d) => dns.push(*d),
                            x509_parser::extensions::GeneralName::IPAddress(b) => {
                                if let Some(ip) = ip_from_bytes(b) {
                                    ips.push(ip);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                verify_hostname(host, &dns, &ips)
            }
        }
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Go's `x509.Certificate.VerifyHostname` (no legacy CN fallback): an IP
/// address (optionally in brackets) must be among the IP SANs (IPv4 equal
/// to its IPv4-mapped IPv6 form); a name must match a DNS SAN, case-
/// insensitively, ignoring one trailing dot, with `*` allowed as the whole
/// leftmost label of the pattern.
fn verify_hostname(host: &str, dns: &[&str], ips: &[IpAddr]) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return ips.iter().any(|c| c.to_canonical() == ip.to_canonical());
    }
    let host = host.to_ascii_lowercase();
    let valid = valid_hostname(&host);
    dns.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        if valid {
            match_hostnames(&pattern, &host)
        } else {
            !host.is_empty() && host != "." && pattern == host
        }
    })
}

fn valid_hostname(host: &str) -> bool {
    let h = host.strip_suffix('.').unwrap_or(host);
    !h.is_empty()
        && h.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b':')
        })
}

fn match_hostnames(pattern: &str, host: &str) -> bool {
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    let host = host.strip_suffix('.').unwrap_or(host);
    if pattern.is_empty() || host.is_empty() {
        return false;
    }
    let (p, h): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), host.split('.').collect());
    p.len() == h.len()
        && p.iter()
            .zip(&h)
            .enumerate()
            .all(|(i, (p, h))| (i == 0 && *p == "*") || p == h)
}

/// Chain verification by `inner`, then the [`AllowedClient`] rule on the
/// leaf and the revocation list. A rule mismatch is reported as a name
/// mismatch, which rustls answers with the `bad certificate` alert Go
/// sends, and which `oxcd_raft::tls_error` words as `client certificate
/// authentication failed`; a revoked certificate as revoked.
///
/// A client certificate that is itself one of the trusted CA certificates
/// is accepted as Go accepts it (a self-signed certificate used as its own
/// CA, as etcd's `CommonName-root` fixture); webpki refuses a CA as an end
/// entity.
#[derive(Debug)]
struct CheckedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    /// The `--trusted-ca-file` certificates.
    trusted: Vec<CertificateDer<'static>>,
    allowed: Option<AllowedClient>,
    revoked: Option<crl::Revoked>,
}

/// Whether the DER certificate is within its validity period at `now`.
fn valid_at(der: &[u8], now: UnixTime) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let v = cert.validity();
    v.not_before.timestamp() <= now && now <= v.not_after.timestamp()
}

impl ClientCertVerifier for CheckedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => v,
            Err(_) if self.trusted.iter().any(|t| t == end_entity) && valid_at(end_entity, now) => {
                ClientCertVerified::assertion()
            }
            Err(e) => return Err(e),
        };
        if self
            .allowed
            .as_ref()
            .is_some_and(|a| !a.permits(end_entity))
        {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        if let Some(revoked) = &self.revoked {
            let chain: Vec<&CertificateDer<'_>> =
                std::iter::once(end_entity).chain(intermediates).collect();
            if let Err(e) = revoked.check(&chain) {
                tracing::warn!("rejected connection: {e}");
                return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
            }
        }
        Ok(verified)
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

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |source| TlsError::Pem {
        what: "certificates",
        path: path.to_path_buf(),
        source,
    };
    CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)
}

/// A TLS client configuration for dialling members (the gRPC proxy's
/// `--cacert`, `--cert`/`--key`, `--insecure-skip-tls-verify`), speaking
/// HTTP/2. Without a CA the server is verified against nothing: only
/// `skip_verify` makes that acceptable, otherwise it is an error.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
    skip_verify: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    if skip_verify {
        let pem = match identity {
            Some((cert, key)) => {
                let read = |path: &Path, what: &'static str| {
                    std::fs::read(path).map_err(|e| TlsError::Pem {
                        what,
                        path: path.to_path_buf(),
                        source: rustls::pki_types::pem::Error::Io(e),
                    })
                };
                Some((read(cert, "certificates")?, read(key, "private key")?))
            }
            None => None,
        };
        return Ok(oxcd_raft::transport::skip_verify_config(pem)?);
    }
    let Some(ca) = ca else {
        return Err(TlsError::Policy(
            "a TLS connection to the cluster needs --cacert (or --insecure-skip-tls-verify)".into(),
        ));
    };
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => {
            let certs = load_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
                what: "private key",
                path: key.to_path_buf(),
                source,
            })?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Creates (or reuses) a self-signed certificate in `dir` valid for
/// `hosts`, as etcd's `--auto-tls` does, and returns settings using it.
pub fn self_signed(dir: &Path, hosts: &[String]) -> Result<TlsSettings, TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let usable = cert_path.exists() && key_path.exists() && signing_key_usable(&key_path);
    if !usable && key_path.exists() {
        // etcd's own auto-TLS keys are ECDSA P-521, which rustls cannot
        // sign with (a data dir etcd used, then oxcd): a new pair, which
        // etcd reads as well, replaces it. Peers do not verify these.
        tracing::warn!(
            file = %key_path.display(),
            "the self-signed key cannot be used (etcd's P-521?); generating a new certificate"
        );
    }
    if !usable {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
        let mut names = hosts.to_vec();
        if names.is_empty() {
            names.push("localhost".into());
        }
        let ck = rcgen::generate_simple_self_signed(names)?;
        std::fs::write(&cert_path, ck.cert.pem()).map_err(write_err(&cert_path))?;
        std::fs::write(&key_path, ck.signing_key.serialize_pem()).map_err(write_err(&key_path))?;
    }
    Ok(TlsSettings {
        cert_file: Some(cert_path),
        key_file: Some(key_path),
        ..TlsSettings::default()
    })
}

/// Whether rustls can sign with the PEM key at `path`.
fn signing_key_usable(path: &Path) -> bool {
    use rustls::pki_types::pem::PemObject;
    std::fs::read(path)
        .ok()
        .and_then(|pem| rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem).ok())
        .is_some_and(|key| rustls::crypto::ring::sign::any_supported_type(&key).is_ok())
}

mod crl;
pub mod suites;

#[cfg(test)]
mod tests;
