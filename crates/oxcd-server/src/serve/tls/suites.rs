//! `--cipher-suites`, `--tls-min-version` and `--tls-max-version`: Go's
//! names mapped to what rustls offers. Cipher suites choose among the
//! TLS 1.2 suites (Go does not let TLS 1.3's be configured either, and its
//! TLS 1.3 names are accepted and change nothing). A name etcd does not
//! know is a start-up error with etcd's wording; a name etcd knows but
//! rustls does not implement (CBC, RSA key exchange, RC4, 3DES) is
//! skipped with a warning, and an error if nothing is left.

use rustls::crypto::ring::cipher_suite as cs;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

/// Go's names of the TLS 1.2 suites rustls implements.
const SUPPORTED: &[(&str, SupportedCipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// Go's TLS 1.3 suite names: always on, not configurable.
const TLS13: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Suites Go knows (so etcd accepts) that rustls does not implement.
const UNSUPPORTED: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// The TLS policy of a listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsPolicy {
    /// `--cipher-suites` (Go names); empty keeps rustls's defaults.
    pub cipher_suites: Vec<String>,
    /// `--tls-min-version` (`TLS1.2`, `TLS1.3`; empty = TLS 1.2).
    pub min_version: String,
    /// `--tls-max-version` (empty = TLS 1.3).
    pub max_version: String,
}

/// What rustls is given: the TLS 1.2 suites (None = all) and the versions.
pub(crate) struct Resolved {
    pub(crate) tls12_suites: Option<Vec<SupportedCipherSuite>>,
    pub(crate) versions: Vec<&'static SupportedProtocolVersion>,
}

/// A TLS version flag as a number to compare (12, 13).
fn version(flag: &str, value: &str, default: u8) -> Result<u8, String> {
    match value {
        "" => Ok(default),
        "TLS1.0" | "TLS1.1" if flag == "min" => {
            tracing::warn!("--tls-min-version={value}: oxcd does not speak TLS below 1.2; TLS1.2 is the minimum");
            Ok(12)
        }
        "TLS1.2" => Ok(12),
        "TLS1.3" => Ok(13),
        other => Err(format!(
            "unexpected TLS version {other:?} (supported: TLS1.2, TLS1.3)"
        )),
    }
}

impl TlsPolicy {
    /// Resolves the flags; errors are start-up errors.
    pub(crate) fn resolve(&self) -> Result<Resolved, String> {
        let min = version("min", &self.min_version, 12)?;
        let max = version("max", &self.max_version, 13)?;
        if min > max {
            return Err(format!(
                "min version ({}) is greater than max version ({})",
                self.min_version, self.max_version
            ));
        }
        if min == 13 && !self.cipher_suites.is_empty() {
            return Err("cipher suites cannot be configured when only TLS1.3 is enabled".into());
        }
        let tls12_suites = if self.cipher_suites.is_empty() {
            None
        } else {
            let mut suites = Vec::new();
            for name in &self.cipher_suites {
                let name = name.trim();
                if let Some((_, s)) = SUPPORTED.iter().find(|(n, _)| *n == name) {
                    if !suites.contains(s) {
                        suites.push(*s);
                    }
                } else if TLS13.contains(&name) {
                    // Always on in TLS 1.3, as in Go.
                } else if UNSUPPORTED.contains(&name) {
                    tracing::warn!(
                        "cipher suite {name} is not implemented by oxcd (rustls); skipping it"
                    );
                } else {
                    return Err(format!("unexpected TLS cipher suite {name:?}"));
                }
            }
            if suites.is_empty() && max == 12 {
                return Err("none of --cipher-suites is implemented by oxcd: use ECDHE suites with AES-GCM or ChaCha20-Poly1305".into());
            }
            Some(suites)
        };
        let mut versions = Vec::new();
        if max >= 13 {
            versions.push(&rustls::version::TLS13);
        }
        if min <= 12 && tls12_suites.as_ref().is_none_or(|s| !s.is_empty()) {
            versions.push(&rustls::version::TLS12);
        }
        Ok(Resolved {
            tls12_suites,
            versions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(suites: &[&str], min: &str, max: &str) -> TlsPolicy {
        TlsPolicy {
            cipher_suites: suites.iter().map(|s| s.to_string()).collect(),
            min_version: min.into(),
            max_version: max.into(),
        }
    }

    #[test]
    fn go_names_map_to_rustls_suites() {
        let r = policy(
            &[
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            ],
            "",
            "",
        )
        .resolve()
        .unwrap();
        assert_eq!(r.tls12_suites.map(|s| s.len()), Some(2));
        assert_eq!(r.versions.len(), 2);
        let Err(e) = policy(&["TLS_BOGUS"], "", "").resolve() else {
            panic!()
        };
        assert_eq!(e, "unexpected TLS cipher suite \"TLS_BOGUS\"");
        // Known to Go, not to rustls: skipped, but not all of them.
        assert!(policy(
            &[
                "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ],
            "",
            ""
        )
        .resolve()
        .is_ok());
        assert!(
            policy(&["TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"], "", "TLS1.2")
                .resolve()
                .is_err()
        );
    }

    #[test]
    fn versions_are_checked() {
        let r = policy(&[], "TLS1.3", "").resolve().unwrap();
        assert_eq!(r.versions.len(), 1);
        assert!(policy(&[], "TLS1.3", "TLS1.2").resolve().is_err());
        assert!(
            policy(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"], "TLS1.3", "")
                .resolve()
                .is_err()
        );
        assert!(policy(&[], "SSL3", "").resolve().is_err());
        assert_eq!(
            policy(&[], "", "TLS1.2").resolve().unwrap().versions.len(),
            1
        );
    }
}
