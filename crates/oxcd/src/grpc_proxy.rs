//! `oxcd grpc-proxy start`: every flag of etcd 3.4's `grpc-proxy start`,
//! checked as etcd checks them, then the L7 proxy of `oxcd-proxy`.
//!
//! Flags that cannot act here say so on stderr instead of being ignored:
//! the experimental ordering and leasing flags, `--debug`, and the client
//! CA and CRL (etcd's proxy does not ask clients for certificates either)
//! warn. `--discovery-srv` takes the endpoints from DNS SRV records.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use oxcd_proxy::grpc_proxy::{self, GrpcProxyConfig};
use oxcd_server::serve::tls::{self, TlsSettings};

use crate::proxy_flags::{boolean, list, scan};
use crate::srv_discovery::{discover, system_ca_bundle, Srv};

const USAGE: &str = "usage: oxcd grpc-proxy start [--endpoints host:port,...] [--listen-addr 127.0.0.1:23790] [flags]";

/// Flags that take a value.
const VALUED: &[&str] = &[
    "listen-addr",
    "discovery-srv",
    "discovery-srv-name",
    "metrics-addr",
    "endpoints",
    "advertise-client-url",
    "resolver-prefix",
    "resolver-ttl",
    "namespace",
    "data-dir",
    "max-send-bytes",
    "max-recv-bytes",
    "cert",
    "key",
    "cacert",
    "cert-file",
    "key-file",
    "trusted-ca-file",
    "listen-cipher-suites",
    "client-crl-file",
    "experimental-leasing-prefix",
    "max-concurrent-streams",
];

/// Boolean flags (no separate value).
const BOOLS: &[&str] = &[
    "insecure-discovery",
    "enable-pprof",
    "insecure-skip-tls-verify",
    "auto-tls",
    "experimental-serializable-ordering",
    "debug",
];

/// The flags as given, before files are read.
#[derive(Debug)]
struct Flags {
    listen_addr: String,
    endpoints: Vec<String>,
    metrics_addr: String,
    advertise_client_url: String,
    resolver_prefix: String,
    resolver_ttl: i64,
    namespace: String,
    enable_pprof: bool,
    data_dir: PathBuf,
    max_send_bytes: usize,
    max_recv_bytes: usize,
    cert: String,
    key: String,
    cacert: String,
    insecure_skip_tls_verify: bool,
    cert_file: String,
    key_file: String,
    trusted_ca_file: String,
    listen_cipher_suites: Vec<String>,
    auto_tls: bool,
    client_crl_file: String,
    max_concurrent_streams: u32,
    /// `--discovery-srv`, `--discovery-srv-name`, `--insecure-discovery`.
    srv: Srv,
    /// Lines to print on stderr: flags that cannot act.
    warnings: Vec<String>,
}

impl Default for Flags {
    fn default() -> Flags {
        Flags {
            listen_addr: "127.0.0.1:23790".into(),
            endpoints: Vec::new(),
            metrics_addr: String::new(),
            advertise_client_url: "127.0.0.1:23790".into(),
            resolver_prefix: String::new(),
            resolver_ttl: 0,
            namespace: String::new(),
            enable_pprof: false,
            data_dir: PathBuf::from("default.proxy"),
            // etcd's defaults: 1.5 MiB out, math.MaxInt32 in.
            max_send_bytes: 1536 * 1024,
            max_recv_bytes: i32::MAX as usize,
            cert: String::new(),
            key: String::new(),
            cacert: String::new(),
            insecure_skip_tls_verify: false,
            cert_file: String::new(),
            key_file: String::new(),
            trusted_ca_file: String::new(),
            listen_cipher_suites: Vec::new(),
            auto_tls: false,
            client_crl_file: String::new(),
            max_concurrent_streams: u32::MAX,
            srv: Srv::default(),
            warnings: Vec::new(),
        }
    }
}

/// Runs `oxcd grpc-proxy …` with the arguments after `grpc-proxy`.
pub fn main(args: &[String]) -> ExitCode {
    let flags = match parse(args) {
        Ok(Some(f)) => f,
        Ok(None) => {
            eprintln!("{USAGE}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("Error: {e}\n{USAGE}");
            return ExitCode::from(1);
        }
    };
    for w in &flags.warnings {
        eprintln!("oxcd grpc-proxy: {w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oxcd grpc-proxy: {e}");
            return ExitCode::from(1);
        }
    };
    // The config is built inside the runtime: the pprof routes and the
    // proxy's tasks need one.
    rt.block_on(async move {
        let mut flags = flags;
        if !flags.srv.domain.is_empty() {
            flags.srv.ca = opt(&flags.cacert).map(Path::to_path_buf);
            match discover(&flags.srv, "etcdmain/grpc_proxy.go").await {
                Ok(found) if !found.is_empty() => flags.endpoints = found,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            }
        }
        let cfg = match config(flags) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        tokio::select! {
            r = grpc_proxy::run(cfg) => match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            },
            _ = terminated() => ExitCode::SUCCESS,
        }
    })
}

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The flags, `None` without the `start` subcommand.
fn parse(args: &[String]) -> Result<Option<Flags>, String> {
    let scanned = scan(args, VALUED, BOOLS)?;
    let mut f = Flags::default();
    let number = |name: &str, v: &str| -> Result<i64, String> {
        v.parse::<i64>()
            .map_err(|_| format!("invalid argument {v:?} for \"--{name}\" flag: strconv.ParseInt: parsing {v:?}: invalid syntax"))
    };
    for (name, v) in scanned.flags {
        match name.as_str() {
            "listen-addr" => f.listen_addr = v,
            "endpoints" => f.endpoints.extend(list(&v)),
            "metrics-addr" => f.metrics_addr = v,
            "advertise-client-url" => f.advertise_client_url = v,
            "resolver-prefix" => f.resolver_prefix = v,
            "resolver-ttl" => f.resolver_ttl = number(&name, &v)?,
            "namespace" => f.namespace = v,
            "enable-pprof" => f.enable_pprof = boolean(&name, &v)?,
            "data-dir" => f.data_dir = PathBuf::from(v),
            "max-send-bytes" => f.max_send_bytes = number(&name, &v)?.max(0) as usize,
            "max-recv-bytes" => f.max_recv_bytes = number(&name, &v)?.max(0) as usize,
            "cert" => f.cert = v,
            "key" => f.key = v,
            "cacert" => f.cacert = v,
            "insecure-skip-tls-verify" => f.insecure_skip_tls_verify = boolean(&name, &v)?,
            "cert-file" => f.cert_file = v,
            "key-file" => f.key_file = v,
            "trusted-ca-file" => f.trusted_ca_file = v,
            "listen-cipher-suites" => f.listen_cipher_suites = list(&v).collect(),
            "auto-tls" => f.auto_tls = boolean(&name, &v)?,
            "client-crl-file" => f.client_crl_file = v,
            "max-concurrent-streams" => {
                f.max_concurrent_streams = u32::try_from(number(&name, &v)?)
                    .map_err(|_| format!("invalid argument {v:?} for \"--{name}\" flag"))?
            }
            "discovery-srv" => f.srv.domain = v,
            "discovery-srv-name" => f.srv.name = v,
            "insecure-discovery" => f.srv.insecure = boolean(&name, &v)?,
            "experimental-serializable-ordering" => {
                if boolean(&name, &v)? {
                    f.warnings.push("--experimental-serializable-ordering is not supported; serializable reads are not held to increasing revisions across endpoint switches".into());
                }
            }
            "experimental-leasing-prefix" => {
                if !v.is_empty() {
                    f.warnings.push("--experimental-leasing-prefix is not supported; reads go to the cluster (or the range cache) as without it".into());
                }
            }
            "debug" => {
                if boolean(&name, &v)? {
                    f.warnings.push("--debug: the gRPC proxy has no debug-level log lines; logging is unchanged".into());
                }
            }
            other => return Err(format!("unknown flag: --{other}")),
        }
    }
    if !scanned.start {
        return Ok(None);
    }
    if f.srv.domain.is_empty() && (!f.srv.name.is_empty() || f.srv.insecure) {
        f.warnings.push("--discovery-srv-name and --insecure-discovery only apply with --discovery-srv; they have no effect here".into());
    }
    // etcd's checkArgs.
    if !f.resolver_prefix.is_empty() && f.resolver_ttl < 1 {
        return Err(format!("invalid resolver-ttl {}", f.resolver_ttl));
    }
    if f.resolver_prefix.is_empty() && f.resolver_ttl > 0 {
        return Err(format!("invalid resolver-prefix {:?}", f.resolver_prefix));
    }
    if !f.resolver_prefix.is_empty() && f.advertise_client_url.is_empty() {
        return Err(format!(
            "invalid advertise-client-url {:?}",
            f.advertise_client_url
        ));
    }
    if f.endpoints.is_empty() {
        f.endpoints.push("127.0.0.1:2379".into());
    }
    if !f.trusted_ca_file.is_empty() {
        f.warnings.push("--trusted-ca-file: the proxy does not ask clients for certificates (etcd's proxy does not either), so the CA is not used".into());
    }
    if !f.client_crl_file.is_empty() {
        f.warnings.push("--client-crl-file: the proxy does not ask clients for certificates, so there is nothing to revoke".into());
    }
    Ok(Some(f))
}

fn opt(s: &str) -> Option<&Path> {
    (!s.is_empty()).then(|| Path::new(s))
}

/// Reads the files the flags name and builds the proxy's configuration.
fn config(f: Flags) -> Result<GrpcProxyConfig, String> {
    let client_tls = client_tls(&f)?;
    let server_tls = server_tls(&f)?;
    let metrics_addr = if f.metrics_addr.is_empty() {
        None
    } else {
        let url = url_host(&f.metrics_addr)
            .ok_or_else(|| format!("cannot parse {:?}", f.metrics_addr))?;
        if url.1 && server_tls.is_none() {
            return Err(format!(
                "--metrics-addr {} is https but the proxy has no certificate (--cert-file/--key-file or --auto-tls)",
                f.metrics_addr
            ));
        }
        Some(url)
    };
    Ok(GrpcProxyConfig {
        listen_addr: f.listen_addr,
        endpoints: f.endpoints,
        client_tls,
        server_tls,
        metrics_addr,
        advertise_client_url: f.advertise_client_url,
        resolver_prefix: f.resolver_prefix,
        resolver_ttl: f.resolver_ttl,
        namespace: f.namespace,
        max_send_bytes: f.max_send_bytes,
        max_recv_bytes: f.max_recv_bytes,
        max_concurrent_streams: f.max_concurrent_streams,
        extra_routes: f.enable_pprof.then(oxcd_server::serve::pprof::routes),
    })
}

/// `http(s)://host:port` → (`host:port`, https).
fn url_host(url: &str) -> Option<(String, bool)> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let host = rest.split('/').next()?.to_string();
    (!host.is_empty()).then_some((host, https))
}

/// TLS to the cluster. As etcd's proxy, the certificate it presents must
/// have an empty Common Name: a member with client-certificate auth would
/// otherwise take every proxied request for that one user.
fn client_tls(f: &Flags) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    let any_https = f.endpoints.iter().any(|e| e.starts_with("https://"));
    let given = !(f.cacert.is_empty() && f.cert.is_empty() && f.key.is_empty());
    if !given && !f.insecure_skip_tls_verify && !any_https {
        return Ok(None);
    }
    let identity = match (opt(&f.cert), opt(&f.key)) {
        (Some(c), Some(k)) => {
            let pem = std::fs::read(c).map_err(|e| format!("open {}: {e}", c.display()))?;
            if let Some(cn) = leaf_common_name(&pem).filter(|cn| !cn.is_empty()) {
                return Err(format!("cert has non empty Common Name ({cn})"));
            }
            Some((c, k))
        }
        (None, None) => None,
        _ => return Err("--cert and --key must be given together".into()),
    };
    // No --cacert with an https endpoint: the system's CA bundle, as Go's
    // TLS uses.
    let ca = opt(&f.cacert)
        .map(Path::to_path_buf)
        .or_else(system_ca_bundle);
    if f.insecure_skip_tls_verify {
        eprintln!("oxcd grpc-proxy: --insecure-skip-tls-verify was given, this grpc proxy process skips authentication of etcd server TLS certificates. This option should be enabled only for testing purposes.");
    }
    tls::client_config(ca.as_deref(), identity, f.insecure_skip_tls_verify)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The leaf certificate's subject CN, if the PEM holds a certificate.
fn leaf_common_name(pem: &[u8]) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .next()?
        .ok()?;
    Some(tls::leaf_cn(&der).unwrap_or_default())
}

/// TLS to clients: the given certificate, or `--auto-tls`'s self-signed
/// one under `<data-dir>/fixtures/proxy`.
fn server_tls(f: &Flags) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    let mut settings = match (opt(&f.cert_file), opt(&f.key_file)) {
        (Some(c), Some(k)) => TlsSettings {
            cert_file: Some(c.to_path_buf()),
            key_file: Some(k.to_path_buf()),
            ..TlsSettings::default()
        },
        (None, None) if f.auto_tls => {
            let dir = f.data_dir.join("fixtures").join("proxy");
            let host = f
                .listen_addr
                .rsplit_once(':')
                .map_or(f.listen_addr.as_str(), |(h, _)| h)
                .to_string();
            tls::self_signed(&dir, &[host]).map_err(|e| e.to_string())?
        }
        (None, None) => {
            if !f.listen_cipher_suites.is_empty() {
                eprintln!("oxcd grpc-proxy: --listen-cipher-suites applies to TLS connections; the proxy listens without TLS (no --cert-file/--key-file or --auto-tls)");
            }
            return Ok(None);
        }
        _ => return Err("--cert-file and --key-file must be given together".into()),
    };
    settings.policy.cipher_suites = f.listen_cipher_suites.clone();
    settings
        .server_config()
        .map(Some)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn etcds_defaults_and_forms() {
        let f = parse(&args(&["start"])).unwrap().unwrap();
        assert_eq!(f.listen_addr, "127.0.0.1:23790");
        assert_eq!(f.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(f.advertise_client_url, "127.0.0.1:23790");
        assert_eq!(f.max_send_bytes, 1536 * 1024);
        let f = parse(&args(&[
            "start",
            "--endpoints=a:1,b:2",
            "--namespace",
            "/ns/",
            "--enable-pprof",
            "--listen-cipher-suites",
            "",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(f.endpoints, ["a:1", "b:2"]);
        assert_eq!(f.namespace, "/ns/");
        assert!(f.enable_pprof);
        assert!(f.listen_cipher_suites.is_empty());
        assert!(parse(&args(&["--endpoints=a:1"])).unwrap().is_none());
    }

    #[test]
    fn etcds_checks() {
        let e = parse(&args(&["start", "--resolver-prefix=p"])).unwrap_err();
        assert_eq!(e, "invalid resolver-ttl 0");
        let e = parse(&args(&["start", "--resolver-ttl=5"])).unwrap_err();
        assert_eq!(e, "invalid resolver-prefix \"\"");
        let e = parse(&args(&[
            "start",
            "--resolver-prefix=p",
            "--resolver-ttl=5",
            "--advertise-client-url=",
        ]))
        .unwrap_err();
        assert!(e.contains("invalid advertise-client-url"), "{e}");
        let f = parse(&args(&[
            "start",
            "--discovery-srv=x",
            "--insecure-discovery",
        ]))
        .unwrap()
        .unwrap();
        assert!(f.srv.insecure && f.srv.domain == "x");
        let f = parse(&args(&[
            "start",
            "--experimental-leasing-prefix=l",
            "--debug",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(f.warnings.len(), 2);
        assert!(parse(&args(&["start", "--no-such-flag=1"])).is_err());
    }

    #[test]
    fn metrics_addr_is_a_url() {
        assert_eq!(
            url_host("http://127.0.0.1:9"),
            Some(("127.0.0.1:9".into(), false))
        );
        assert_eq!(url_host("https://h:1/x"), Some(("h:1".into(), true)));
        assert_eq!(url_host("127.0.0.1:9"), None);
    }
}
