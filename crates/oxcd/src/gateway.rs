//! `oxcd gateway start`: etcd's `gateway start` flags and checks, then the
//! L4 gateway of `oxcd-proxy`.
//!
//! Flags may come before or after `start`, as `--flag value` or
//! `--flag=value`; `--endpoints` takes a comma-separated list and may be
//! repeated. DNS SRV discovery (`--discovery-srv`) is not built yet: it is
//! refused rather than ignored, and the flags that only act with it warn.

use std::process::ExitCode;
use std::time::Duration;

use oxcd_proxy::gateway::{self, GatewayConfig};

const USAGE: &str = "usage: oxcd gateway start [--endpoints host:port,...] [--listen-addr 127.0.0.1:23790] [--retry-delay 1m0s]";

/// Runs `oxcd gateway …` with the arguments after `gateway`.
pub fn main(args: &[String]) -> ExitCode {
    match parse(args) {
        Ok(Some(cfg)) => serve(cfg),
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

/// The configuration, `None` without the `start` subcommand.
fn parse(args: &[String]) -> Result<Option<GatewayConfig>, String> {
    let mut listen = "127.0.0.1:23790".to_string();
    let mut endpoints: Vec<String> = Vec::new();
    let mut retry = "1m0s".to_string();
    let mut srv = String::new();
    let mut only_with_srv = Vec::new();
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
            "discovery-srv" => srv = value,
            "discovery-srv-name" | "trusted-ca-file" | "insecure-discovery" => {
                only_with_srv.push(flag)
            }
            other => return Err(format!("unknown flag: --{other}")),
        }
    }
    if !scanned.start {
        return Ok(None);
    }
    if !srv.is_empty() {
        return Err(
            "--discovery-srv is not supported by this version of oxcd gateway; list the members with --endpoints".into(),
        );
    }
    for f in only_with_srv {
        eprintln!("oxcd gateway: --{f} only applies with --discovery-srv; it has no effect here");
    }
    if endpoints.is_empty() {
        endpoints.push("127.0.0.1:2379".into());
    }
    let endpoints: Vec<String> = endpoints.iter().map(|e| strip_scheme(e)).collect();
    let nanos = oxcd_server::config::duration::parse_go_duration(&retry)
        .map_err(|e| format!("invalid argument {retry:?} for \"--retry-delay\" flag: {e}"))?;
    let retry_delay = Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    check_not_self(&listen, &endpoints)?;
    Ok(Some(GatewayConfig {
        listen_addr: listen,
        endpoints,
        retry_delay,
    }))
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

fn serve(cfg: GatewayConfig) -> ExitCode {
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
        .unwrap();
        assert_eq!(cfg.endpoints, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(cfg.listen_addr, "127.0.0.1:9");
        assert_eq!(cfg.retry_delay, Duration::from_secs(5));
        let d = parse(&args(&["start"])).unwrap().unwrap();
        assert_eq!(d.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(d.listen_addr, "127.0.0.1:23790");
        assert_eq!(d.retry_delay, Duration::from_secs(60));
        assert!(parse(&args(&["--endpoints=a:1"])).unwrap().is_none());
    }

    #[test]
    fn refusals() {
        let err = parse(&args(&["start", "--discovery-srv", "example.com"])).unwrap_err();
        assert!(err.contains("not supported"), "{err}");
        let err = parse(&args(&["start", "--bogus"])).unwrap_err();
        assert!(err.contains("unknown flag"), "{err}");
        let err = parse(&args(&[
            "start",
            "--listen-addr=127.0.0.1:23790",
            "--endpoints=127.0.0.1:23790",
        ]))
        .unwrap_err();
        assert!(err.contains("should not resolve to the gateway"), "{err}");
        let err = parse(&args(&["start", "--retry-delay=5"])).unwrap_err();
        assert!(err.contains("missing unit"), "{err}");
    }
}
