//! Certificate revocation lists (`--client-crl-file`, `--peer-crl-file`),
//! checked as etcd checks them: after the chain is verified, a connecting
//! client whose certificate (leaf or intermediate) has a serial number the
//! list revokes is refused. Like etcd, the file is read again when it
//! changes, so a revocation takes effect without a restart; unlike etcd,
//! it is parsed only then, not on every handshake.

use rustls::pki_types::CertificateDer;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

/// The revoked serial numbers of a CRL file.
#[derive(Debug)]
pub(crate) struct Revoked {
    path: PathBuf,
    /// The file's modification time and serials when last read.
    cache: Mutex<(Option<SystemTime>, HashSet<Vec<u8>>)>,
}

impl Revoked {
    /// Reads the list at `path` (PEM or DER); a file that does not parse
    /// is an error, so a bad list stops the member at start.
    pub(crate) fn load(path: &Path) -> Result<Revoked, String> {
        let (mtime, serials) = read(path)?;
        Ok(Revoked {
            path: path.to_path_buf(),
            cache: Mutex::new((mtime, serials)),
        })
    }

    /// Whether any of `certs` is revoked; re-reads the file if it changed.
    /// A list that cannot be read any more refuses everyone, as etcd's
    /// per-handshake read does.
    pub(crate) fn check(&self, certs: &[&CertificateDer<'_>]) -> Result<(), String> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if mtime != cache.0 {
            *cache = read(&self.path)?;
        }
        for der in certs {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                return Err("certificate does not parse".into());
            };
            if cache.1.contains(cert.raw_serial()) {
                return Err(format!(
                    "transport: certificate serial {} revoked",
                    hex(cert.raw_serial())
                ));
            }
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read(path: &Path) -> Result<(Option<SystemTime>, HashSet<Vec<u8>>), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read CRL {}: {e}", path.display()))?;
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let der = match x509_parser::pem::parse_x509_pem(&bytes) {
        Ok((_, pem)) => pem.contents,
        Err(_) => bytes,
    };
    let (_, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| format!("cannot parse CRL {}: {e}", path.display()))?;
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    Ok((mtime, serials))
}
