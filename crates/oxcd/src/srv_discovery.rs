//! `--discovery-srv` for `gateway start` and `grpc-proxy start`: the
//! endpoints DNS SRV records give (see `oxcd_proxy::discovery`), logged
//! and checked as etcd's `discoverEndpoints` does. No records at all is an
//! error that ends the process; records whose endpoints all fail the TLS
//! check leave the `--endpoints` list in use.

use std::path::{Path, PathBuf};

use oxcd_proxy::discovery;

/// What `--discovery-srv*`, `--insecure-discovery` and the CA say.
#[derive(Debug, Default, Clone)]
pub struct Srv {
    /// `--discovery-srv`: the domain (empty: no discovery).
    pub domain: String,
    /// `--discovery-srv-name`.
    pub name: String,
    /// `--insecure-discovery`: keep http endpoints, skip the TLS check.
    pub insecure: bool,
    /// The CA the TLS check trusts (`--trusted-ca-file` / `--cacert`).
    pub ca: Option<PathBuf>,
}

/// The system's CA bundle, which Go's TLS falls back to without a CA.
pub fn system_ca_bundle() -> Option<PathBuf> {
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// The discovered endpoints as URLs (`http(s)://host:port`); empty when
/// none passed the checks.
pub async fn discover(srv: &Srv, caller: &str) -> Result<Vec<String>, String> {
    let found = discovery::lookup(&srv.domain, &srv.name)
        .await
        .map_err(|e| e.to_string())?;
    let urls: Vec<String> = found.iter().map(|d| d.url()).collect();
    log(caller, "discovered cluster from SRV", &srv.domain, &urls);
    if srv.insecure {
        return Ok(urls);
    }
    log(
        caller,
        "validating discovered SRV endpoints",
        &srv.domain,
        &urls,
    );
    let ca = srv.ca.clone().or_else(system_ca_bundle);
    let tls = oxcd_server::serve::tls::client_config(ca.as_deref().map(Path::new), None, false)
        .map_err(|e| e.to_string())?;
    let (kept, dropped) = discovery::secure_only(found, tls).await;
    for why in dropped {
        eprintln!("oxcd: discovered endpoint dropped: {why}");
    }
    Ok(kept.iter().map(|d| d.url()).collect())
}

fn log(caller: &str, msg: &str, domain: &str, endpoints: &[String]) {
    oxcd_proxy::log::line(
        "info",
        caller,
        msg,
        serde_json::json!({ "srv-server": domain, "endpoints": endpoints }),
    );
}
