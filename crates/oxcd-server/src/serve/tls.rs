//! TLS for client and peer listeners (etcd's `pkg/transport`), on rustls.
//!
//! * `--cert-file/--key-file`: the server identity, PEM.
//! * `--trusted-ca-file` + `--client-cert-auth`: clients must present a
//!   certificate signed by one of the CAs.
//! * `--auto-tls`: a self-signed certificate generated once into
//!   `<data-dir>/fixtures/{client,peer}/` and reused on restart.
//!
//! ALPN offers `h2` and `http/1.1` so gRPC and the JSON gateway share a port.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
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
        let certs = load_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
            what: "private key",
            path: key.clone(),
            source,
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match (&self.trusted_ca_file, self.client_cert_auth) {
            (Some(ca), true) => {
                let mut roots = RootCertStore::empty();
                for c in load_certs(ca)? {
                    roots.add(c)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
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

/// Creates (or reuses) a self-signed certificate in `dir` valid for
/// `hosts`, as etcd's `--auto-tls` does, and returns settings using it.
pub fn self_signed(dir: &Path, hosts: &[String]) -> Result<TlsSettings, TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !(cert_path.exists() && key_path.exists()) {
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
        trusted_ca_file: None,
        client_cert_auth: false,
    })
}
