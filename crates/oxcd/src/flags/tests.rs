//! Table-driven tests of the command line, environment and config-file
//! rules; expected strings were checked against etcd 3.4.23.

use std::path::PathBuf;
use std::time::Duration;

use oxcd_server::config::{urls_string, ClusterState};

use super::*;

struct Run {
    outcome: ParseOutcome,
    out: String,
    err: String,
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let args: Vec<String> = args.iter().map(|s| (*s).to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = parse_to(&args, &env, &mut out, &mut err);
    Run {
        outcome,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

fn parsed(args: &[&str], env: &[(&str, &str)]) -> Parsed {
    let r = run(args, env);
    match r.outcome {
        ParseOutcome::Run(p) => *p,
        ParseOutcome::Exit(code) => panic!("{args:?}: exit {code}, stderr: {}", r.err),
    }
}

fn exit_code(r: &Run) -> i32 {
    match r.outcome {
        ParseOutcome::Exit(code) => code,
        ParseOutcome::Run(_) => panic!("expected exit, got run"),
    }
}

fn messages(p: &Parsed, level: NoticeLevel) -> Vec<&str> {
    p.notices
        .iter()
        .filter(|n| n.level == level)
        .map(|n| n.message.as_str())
        .collect()
}

#[test]
fn flag_spellings_are_equivalent() {
    for args in [
        &["-name", "x"][..],
        &["--name", "x"],
        &["--name=x"],
        &["-name=x"],
        &["--name=y", "--name=x"],
    ] {
        assert_eq!(parsed(args, &[]).config.name, "x", "{args:?}");
    }
}

#[test]
fn typed_values() {
    let c = parsed(
        &[
            "--strict-reconfig-check=false",
            "--pre-vote",
            "--grpc-keepalive-min-time",
            "3s",
            "--backend-batch-interval=100ms",
            "--snapshot-count=0x10",
            "--quota-backend-bytes=-1",
            "--max-concurrent-streams=100",
            "--initial-cluster-state=existing",
            "--listen-peer-urls=http://127.0.0.1:2380,http://127.0.0.1:12380",
            "--cors=*",
            "--host-whitelist=a,b",
            "--log-outputs=stdout,stderr,stdout",
            "--cipher-suites=A,B",
            "--peer-cert-allowed-cn=node",
            "--client-cert-auth",
        ],
        &[],
    )
    .config;
    assert!(!c.strict_reconfig_check);
    assert!(c.pre_vote);
    assert_eq!(c.grpc_keepalive_min_time, Duration::from_secs(3));
    assert_eq!(c.backend_batch_interval, Duration::from_millis(100));
    assert_eq!(c.snapshot_count, 16);
    assert_eq!(c.quota_backend_bytes, -1);
    assert_eq!(c.max_concurrent_streams, 100);
    assert_eq!(c.initial_cluster_state, ClusterState::Existing);
    assert_eq!(
        urls_string(&c.listen_peer_urls),
        "http://127.0.0.1:12380,http://127.0.0.1:2380"
    );
    assert_eq!(c.host_whitelist.iter().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(c.log_outputs, ["stderr", "stdout"]);
    assert_eq!(c.cipher_suites, ["A", "B"]);
    assert_eq!(c.peer_tls.allowed_cn, "node");
    assert!(c.client_tls.client_cert_auth);
}

#[test]
fn syntax_errors_exit_2_with_go_text() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "flag provided but not defined: -bogus"),
        (&["-bogus=1"], "flag provided but not defined: -bogus"),
        (&["--name"], "flag needs an argument: -name"),
        (&["---name=x"], "bad flag syntax: ---name=x"),
        (&["-=x"], "bad flag syntax: -=x"),
        (&["--snapshot-count=abc"], "invalid value \"abc\" for flag -snapshot-count: parse error"),
        (&["--heartbeat-interval=-1"], "invalid value \"-1\" for flag -heartbeat-interval: parse error"),
        (
            &["--strict-reconfig-check=maybe"],
            "invalid boolean value \"maybe\" for -strict-reconfig-check: parse error",
        ),
        (&["--backend-batch-interval=5"], "invalid value \"5\" for flag -backend-batch-interval: parse error"),
        (
            &["--initial-cluster-state=bad"],
            "invalid value \"bad\" for flag -initial-cluster-state: invalid value",
        ),
        (
            &["--max-concurrent-streams=99999999999"],
            "invalid value \"99999999999\" for flag -max-concurrent-streams: strconv.ParseUint: parsing \"99999999999\": value out of range",
        ),
        (
            &["--advertise-client-urls=http://127.0.0.1:2379/x"],
            "invalid value \"http://127.0.0.1:2379/x\" for flag -advertise-client-urls: URL must not contain a path: http://127.0.0.1:2379/x",
        ),
        (
            &["--listen-client-urls=ftp://127.0.0.1:1"],
            "invalid value \"ftp://127.0.0.1:1\" for flag -listen-client-urls: URL scheme must be http, https, unix, or unixs: ftp://127.0.0.1:1",
        ),
    ];
    for (args, want) in cases {
        let r = run(args, &[]);
        assert_eq!(exit_code(&r), 2, "{args:?}");
        assert!(
            r.err.starts_with(&format!("{want}\nUsage:\n")),
            "{args:?}: {}",
            r.err
        );
        assert!(r.out.is_empty());
    }
}

#[test]
fn configuration_errors_exit_1() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (&["foo"], &[], "'foo' is not a valid flag"),
        (&["--strict-reconfig-check", "false"], &[], "'false' is not a valid flag"),
        (&["--", "--name=x"], &[], "'--name=x' is not a valid flag"),
        (
            &["--listen-client-urls=http://127.0.0.1:1"],
            &[],
            "--advertise-client-urls is required when --listen-client-urls is set explicitly",
        ),
        (
            &[],
            &[("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:1")],
            "--advertise-client-urls is required when --listen-client-urls is set explicitly",
        ),
        (
            &["--election-timeout=400"],
            &[],
            "--election-timeout[400ms] should be at least as 5 times as --heartbeat-interval[100ms]",
        ),
        (
            &["--listen-peer-urls=http://example.com:2380"],
            &[],
            "expected IP in URL for binding (http://example.com:2380)",
        ),
        (&["--auto-compaction-mode=x"], &[], "unknown auto-compaction-mode \"x\""),
        (
            &["--experimental-enable-lease-checkpoint-persist"],
            &[],
            "setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint",
        ),
        (&[], &[("ETCD_SNAPSHOT_COUNT", "abc")], "invalid value \"abc\" for ETCD_SNAPSHOT_COUNT: parse error"),
        (
            &[],
            &[("ETCD_INITIAL_CLUSTER_STATE", "bad")],
            "invalid value \"bad\" for ETCD_INITIAL_CLUSTER_STATE: invalid value",
        ),
        (
            &["--name=x"],
            &[("ETCD_NAME", "")],
            "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)",
        ),
    ];
    for (args, env, want) in cases {
        let r = run(args, env);
        assert_eq!(exit_code(&r), 1, "{args:?} {env:?}");
        assert!(r.err.contains(want), "{args:?} {env:?}: {}", r.err);
    }
}

#[test]
fn help_and_version_exit_0() {
    for flag in ["-h", "--help", "-help"] {
        let r = run(&[flag], &[]);
        assert_eq!(exit_code(&r), 0);
        assert!(r.err.starts_with("Usage:"));
        assert!(r.out.contains("  --name 'default'\n"));
    }
    let r = run(&["--version"], &[]);
    assert_eq!(exit_code(&r), 0);
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], "etcd Version: 3.4.23");
    assert!(lines[1].starts_with("Git SHA: "));
    assert!(lines[3].starts_with("Go OS/Arch: "));
}

#[test]
fn environment_is_used_and_reported() {
    let p = parsed(
        &["--data-dir=/d"],
        &[
            ("ETCD_NAME", "n1"),
            ("ETCD_SNAPSHOT_COUNT", ""),
            ("ETCD_PRE_VOTE", "true"),
            ("ETCD_GRPC_KEEPALIVE_TIMEOUT", "1s"),
            ("ETCD_FOO", "1"),
            ("ETCDCTL_API", "3"),
            ("PATH", "/bin"),
        ],
    );
    assert_eq!(p.config.name, "n1");
    assert!(p.config.pre_vote);
    assert_eq!(p.config.snapshot_count, 100_000);
    assert_eq!(p.config.grpc_keepalive_timeout, Duration::from_secs(1));
    assert_eq!(p.config.initial_cluster, "n1=http://localhost:2380");
    let info = messages(&p, NoticeLevel::Info);
    assert!(info.contains(&"recognized and used environment variable ETCD_NAME=n1"));
    assert!(info.contains(&"recognized and used environment variable ETCD_PRE_VOTE=true"));
    assert_eq!(
        messages(&p, NoticeLevel::Warn),
        [
            "unrecognized environment variable ETCD_SNAPSHOT_COUNT=",
            "unrecognized environment variable ETCD_FOO=1"
        ]
    );
}

#[test]
fn legacy_flags_are_ignored_with_a_warning() {
    let p = parsed(&["-v", "--force=1", "--name", "n"], &[("ETCD_VV", "1")]);
    assert_eq!(p.config.name, "n");
    let warn = messages(&p, NoticeLevel::Warn);
    assert!(warn.contains(&"flag \"-v\" is no longer supported - ignoring."));
    assert!(warn.contains(&"flag \"-force\" is no longer supported - ignoring."));
    assert!(warn.contains(&"flag \"-vv\" is no longer supported - ignoring."));
}

#[test]
fn flag_path_defaults() {
    let c = parsed(&["--name=n1"], &[]).config;
    assert_eq!(c.data_dir, PathBuf::from("n1.etcd"));
    assert_eq!(c.initial_cluster, "n1=http://localhost:2380");
    let c = parsed(&["--discovery-srv=example.com"], &[]).config;
    assert!(c.initial_cluster.is_empty());
    let c = parsed(
        &[
            "--listen-client-urls=http://127.0.0.1:1",
            "--advertise-client-urls=http://127.0.0.1:1",
        ],
        &[],
    )
    .config;
    assert_eq!(urls_string(&c.advertise_client_urls), "http://127.0.0.1:1");
}

#[test]
fn config_file_overrides_flags_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etcd.yml");
    std::fs::write(
        &path,
        "name: from-file\n\
         grpc-keepalive-interval: 1000000000\n\
         listen-client-urls: http://127.0.0.1:12379\n\
         client-transport-security:\n  cert-file: /c.crt\n  key-file: /c.key\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let env = [
        ("ETCD_NAME", "from-env"),
        ("ETCD_FOO", "1"),
        ("ETCD_SNAPSHOT_COUNT", "abc"),
    ];
    for (args, env) in [
        (vec!["--config-file", file, "--name=from-flag"], &env[..]),
        (
            vec!["--name=from-flag"],
            &[("ETCD_CONFIG_FILE", file), ("ETCD_NAME", "x")][..],
        ),
    ] {
        let p = parsed(&args, env);
        assert_eq!(p.config.name, "from-file");
        assert_eq!(p.config.grpc_keepalive_interval, Duration::from_secs(1));
        assert_eq!(p.config.client_tls.cert_file, PathBuf::from("/c.crt"));
        // The YAML path keeps the default advertise URL.
        assert_eq!(
            urls_string(&p.config.advertise_client_urls),
            "http://localhost:2379"
        );
        assert_eq!(
            messages(&p, NoticeLevel::Info),
            [format!(
                "Loading server configuration from \"{file}\". Other configuration command line flags and environment variables will be ignored if provided."
            )]
        );
        assert!(messages(&p, NoticeLevel::Warn).is_empty());
    }
}

#[test]
fn config_file_errors_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yml");
    std::fs::write(&path, "grpc-keepalive-min-time: 5s\n").unwrap();
    let r = run(&["--config-file", path.to_str().unwrap()], &[]);
    assert_eq!(exit_code(&r), 1);
    assert!(r.err.contains("Loading server configuration from"));
    assert!(r.err.contains(
        "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal string into Go struct field configYAML.grpc-keepalive-min-time of type time.Duration"
    ));
    let r = run(&["--config-file=/nonexistent/x.yml"], &[]);
    assert_eq!(exit_code(&r), 1);
    assert!(r
        .err
        .contains("open /nonexistent/x.yml: no such file or directory"));
}
