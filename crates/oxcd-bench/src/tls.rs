//! TLS for `https://` endpoints, with etcd benchmark's flags: `--cacert`
//! verifies the server, `--cert`/`--key` present a client certificate (for
//! members run with `--client-cert-auth`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::cli::GlobalOpts;
use crate::error::BenchError;

/// The client configuration the flags ask for, or `None` when none of
/// `--cacert`, `--cert`, `--key` is given.
///
/// # Errors
/// `--cert` without `--key` (or the reverse), a certificate or key file
/// that cannot be read or parsed, or a client certificate without a CA.
pub fn client_config(opts: &GlobalOpts) -> Result<Option<Arc<ClientConfig>>, BenchError> {
    let (ca, cert, key) = (&opts.tls_cacert, &opts.tls_cert, &opts.tls_key);
    if ca.is_none() && cert.is_none() && key.is_none() {
        return Ok(None);
    }
    let Some(ca) = ca else {
        return Err(BenchError::InvalidArgs(
            "--cert/--key need --cacert to verify the server".into(),
        ));
    };
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c).map_err(|e| tls_error(ca, &e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BenchError::InvalidArgs(e.to_string()))?
        .with_root_certificates(roots);
    let mut cfg = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert)?;
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error(key, &e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| tls_error(cert, &e.to_string()))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(BenchError::InvalidArgs(
                "--cert and --key go together".into(),
            ))
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(Arc::new(cfg)))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BenchError> {
    let all = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, &e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, &e.to_string()))?;
    if all.is_empty() {
        return Err(tls_error(path, "no certificate in the file"));
    }
    Ok(all)
}

fn tls_error(path: &Path, why: &str) -> BenchError {
    BenchError::InvalidArgs(format!("{}: {why}", path.display()))
}

/// The same TLS settings for tonic's `Channel` (`--client tonic`), or
/// `None` without `--cacert`.
///
/// # Errors
/// A file that cannot be read; `--cert` without `--key`.
pub fn tonic_config(
    opts: &GlobalOpts,
) -> Result<Option<tonic::transport::ClientTlsConfig>, BenchError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let Some(ca) = &opts.tls_cacert else {
        return Ok(None);
    };
    let read = |p: &Path| std::fs::read(p).map_err(|e| tls_error(p, &e.to_string()));
    let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    match (&opts.tls_cert, &opts.tls_key) {
        (Some(cert), Some(key)) => {
            cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(BenchError::InvalidArgs(
                "--cert and --key go together".into(),
            ))
        }
    }
    Ok(Some(cfg))
}
