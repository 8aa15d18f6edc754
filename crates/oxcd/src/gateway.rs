//! `oxcd gateway start`: etcd's `gateway start` flags and checks, then the
//! L4 gateway of `oxcd-proxy`.
//!
//! Flags may come before or after `start`, as `--flag value` or
//! `--flag=value`; `--endpoints` takes a comma-separated list and may be
//! repeated. With `--discovery-srv` the endpoints come from DNS SRV records
//! (`--endpoints` is the fall-back when none pass the checks).

use std::process::ExitCode;
use std::time::Duration;

use oxcd_proxy::gateway::{self, GatewayConfig};

use crate::srv_discovery::{discover, Srv};

const USAGE: &str = "usage: oxcd gateway start [--endpoints host:port,...] [--listen-addr 127.0.0.1:23790] [--retry-delay 1m0s]";

/// Runs `oxcd gateway …` with the arguments after `gateway`.
pub fn main(args: &[String]) -> ExitCode {
    match parse(args) {
        Ok(Some((cfg, srv))) => serve(cfg, srv),
        Ok(None) => {
            eprintln!("{USAGE}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("Error: {e}\n{USAGE}");
            ExitCode::from(1)
        }
    }
}

/// The configuration and the SRV discovery to run, `None` without the
/// `start` subcommand.
fn parse(args: &[String]) -> Result<Option<(GatewayConfig, Srv)>, String> {
    let mut listen = "127.0.0.1:23790".to_string();
    let mut endpoints: Vec<String> = Vec::new();
    let mut retry = "1m0s".to_string();
    let mut srv = Srv::default();
    let scanned = crate::proxy_flags::scan(
        args,
        &[
            "listen-addr",
            "endpoints",
            "retry-delay",
            "discovery-srv",
            "discovery-srv-name",
            "trusted-ca-file",
        ],
        &["insecure-discovery"],
    )?;
    for (flag, value) in scanned.flags {
        match flag.as_str() {
            "listen-addr" => listen = value,
            "endpoints" => endpoints.extend(crate::proxy_flags::list(&value)),
            "retry-delay" => retry = value,
            "discovery-srv" => srv.domain = value,
            "discovery-srv-name" => srv.name = value,
            "trusted-ca-file" => srv.ca = (!value.is_empty()).then(|| value.into()),
            "insecure-discovery" => srv.insecure = crate::proxy_flags::boolean(&flag, &value)?,
            other => return Err(format!("unknown flag: --{other}")),
        }
    }
    if !scanned.start {
        return Ok(None);
    }
    if srv.domain.is_empty() && (!srv.name.is_empty() || srv.insecure || srv.ca.is_some()) {
        eprintln!("oxcd gateway: --discovery-srv-name, --insecure-discovery and --trusted-ca-file only apply with --discovery-srv; they have no effect here");
    }
    if endpoints.is_empty() {
        endpoints.push("127.0.0.1:2379".into());
    }
    let endpoints: Vec<String> = endpoints.iter().map(|e| strip_scheme(e)).collect();
    let nanos = oxcd_server::config::duration::parse_go_duration(&retry)
        .map_err(|e| format!("invalid argument {retry:?} for \"--retry-delay\" flag: {e}"))?;
    let retry_delay = Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    Ok(Some((
        GatewayConfig {
            listen_addr: listen,
            endpoints,
            retry_delay,
        },
        srv,
    )))
}

/// `http://h:p` → `h:p` (the gateway proxies TCP, as etcd's `stripSchema`).
fn strip_scheme(ep: &str) -> String {
    match ep.split_once("://") {
        Some((_, rest)) => rest.trim_end_matches('/').to_string(),
        None => ep.to_string(),
    }
}

/// etcd refuses an endpoint that resolves to the gateway's own address.
fn check_not_self(listen: &str, endpoints: &[String]) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let mine: Vec<std::net::SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|_| format!("failed to validate listen address: {listen}"))?
        .collect();
    for ep in endpoints {
        let addrs = ep
            .to_socket_addrs()
            .map_err(|_| format!("error parsing endpoint {ep:?}"))?;
        for a in addrs {
            if mine.contains(&a) {
                return Err(format!(
                    "SRV or endpoint ({ep}->{a}) should not resolve to the gateway listen addr ({listen})"
                ));
            }
        }
    }
    Ok(())
}

/// Replaces the endpoints with the SRV records' when discovery is asked
/// for and finds any that pass its checks.
async fn discovered(mut cfg: GatewayConfig, srv: &Srv) -> Result<GatewayConfig, String> {
    if srv.domain.is_empty() {
        return Ok(cfg);
    }
    let found = discover(srv, "etcdmain/gateway.go").await?;
    if !found.is_empty() {
        cfg.endpoints = found.iter().map(|e| strip_scheme(e)).collect();
    }
    Ok(cfg)
}

fn serve(cfg: GatewayConfig, srv: Srv) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oxcd gateway: {e}");
            return ExitCode::from(1);
        }
    };
    let cfg = match rt.block_on(discovered(cfg, &srv)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    // etcd prints this one on stdout.
    if let Err(e) = check_not_self(&cfg.listen_addr, &cfg.endpoints) {
        println!("{e}");
        return ExitCode::from(1);
    }
    let result = rt.block_on(gateway::run(cfg, async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oxcd gateway: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_before_or_after_start_as_etcd_takes_them() {
        let cfg = parse(&args(&[
            "--endpoints=http://127.0.0.1:1,127.0.0.1:2",
            "start",
            "--listen-addr",
            "127.0.0.1:9",
            "--retry-delay=5s",
        ]))
        .unwrap()
        .unwrap()
        .0;
        assert_eq!(cfg.endpoints, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(cfg.listen_addr, "127.0.0.1:9");
        assert_eq!(cfg.retry_delay, Duration::from_secs(5));
        let d = parse(&args(&["start"])).unwrap().unwrap().0;
        assert_eq!(d.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(d.listen_addr, "127.0.0.1:23790");
        assert_eq!(d.retry_delay, Duration::from_secs(60));
        assert!(parse(&args(&["--endpoints=a:1"])).unwrap().is_none());
    }

    #[test]
    fn refusals() {
        let (_, srv) = parse(&args(&["start", "--discovery-srv", "example.com"]))
            .unwrap()
            .unwrap();
        assert_eq!(srv.domain, "example.com");
        let err = parse(&args(&["start", "--bogus"])).unwrap_err();
        assert!(err.contains("unknown flag"), "{err}");
        let err = check_not_self("127.0.0.1:23790", &["127.0.0.1:23790".into()]).unwrap_err();
        assert!(err.contains("should not resolve to the gateway"), "{err}");
        let err = parse(&args(&["start", "--retry-delay=5"])).unwrap_err();
        assert!(err.contains("missing unit"), "{err}");
    }
}
