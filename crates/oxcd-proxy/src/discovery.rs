//! `--discovery-srv`: the cluster's client endpoints from DNS SRV records,
//! as etcd's `pkg/srv` finds them: `_etcd-client-ssl._tcp.<domain>` (https)
//! and `_etcd-client._tcp.<domain>` (http), with `-<name>` appended to the
//! service for `--discovery-srv-name`. Names are resolved with the system's
//! resolver configuration (`/etc/resolv.conf`), as Go's resolver does.
//!
//! Without `--insecure-discovery` only https endpoints are kept, and only
//! those that complete a TLS handshake verified against the given CA for
//! their own host name — the name clients will verify. etcd's
//! `ValidateSecureEndpoints` only dials TCP; a member whose certificate
//! would fail every client is better dropped here, with the reason.

use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

/// A discovered endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// Whether it came from the `-ssl` service.
    pub https: bool,
    /// `host:port` (the SRV target without its final dot).
    pub hostport: String,
}

impl Discovered {
    /// As a URL, `http(s)://host:port`.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.hostport)
    }
}

/// Why discovery found nothing usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The resolver could not be set up from the system configuration.
    #[error("cannot read the system resolver configuration: {0}")]
    Resolver(String),
    /// Neither service has records (etcd's message).
    #[error("dns lookup errors: {0} and {1}")]
    Lookup(String, String),
}

/// etcd's `GetSRVService`.
fn service(scheme_https: bool, name: &str) -> String {
    let base = if scheme_https {
        "etcd-client-ssl"
    } else {
        "etcd-client"
    };
    if name.is_empty() {
        base.to_string()
    } else {
        format!("{base}-{name}")
    }
}

/// Looks up both services of `domain`; an error only when both fail.
pub async fn lookup(domain: &str, name: &str) -> Result<Vec<Discovered>, DiscoveryError> {
    let resolver = TokioResolver::builder_tokio()
        .and_then(|b| b.build())
        .map_err(|e| DiscoveryError::Resolver(e.to_string()))?;
    let domain = domain.trim_end_matches('.');
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for https in [true, false] {
        let query = format!("_{}._tcp.{domain}.", service(https, name));
        match resolver.srv_lookup(query.as_str()).await {
            Ok(l) => {
                for r in l.answers() {
                    if let RData::SRV(srv) = &r.data {
                        let host = srv.target.to_utf8();
                        let host = host.trim_end_matches('.');
                        found.push(Discovered {
                            https,
                            hostport: join_host_port(host, srv.port),
                        });
                    }
                }
            }
            Err(e) => errors.push(format!("lookup {query} on the system resolver: {e}")),
        }
    }
    if errors.len() == 2 {
        let second = errors.pop().unwrap_or_default();
        let first = errors.pop().unwrap_or_default();
        return Err(DiscoveryError::Lookup(first, second));
    }
    Ok(found)
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Keeps the endpoints that are https and answer a verified TLS handshake
/// for their host name (the check without `--insecure-discovery`); says
/// why each other one was dropped.
pub async fn secure_only(
    found: Vec<Discovered>,
    tls: Arc<rustls::ClientConfig>,
) -> (Vec<Discovered>, Vec<String>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for d in found {
        if !d.https {
            dropped.push(format!("{:?} is insecure", d.url()));
            continue;
        }
        let host = d
            .hostport
            .rsplit_once(':')
            .map_or(d.hostport.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let Ok(name) = rustls::pki_types::ServerName::try_from(host) else {
            dropped.push(format!("{:?} has no valid TLS server name", d.url()));
            continue;
        };
        let check = async {
            let tcp = tokio::net::TcpStream::connect(&d.hostport).await?;
            tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name.clone(), tcp)
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(Duration::from_secs(5), check).await {
            Ok(Ok(())) => kept.push(d),
            Ok(Err(e)) => dropped.push(format!("{}: {e}", d.url())),
            Err(_) => dropped.push(format!("{}: TLS handshake timed out", d.url())),
        }
    }
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_etcds() {
        assert_eq!(service(true, ""), "etcd-client-ssl");
        assert_eq!(service(false, ""), "etcd-client");
        assert_eq!(service(false, "prod"), "etcd-client-prod");
        assert_eq!(service(true, "prod"), "etcd-client-ssl-prod");
        assert_eq!(join_host_port("::1", 5), "[::1]:5");
        let d = Discovered {
            https: true,
            hostport: "m1.example.com:2379".into(),
        };
        assert_eq!(d.url(), "https://m1.example.com:2379");
    }
}
