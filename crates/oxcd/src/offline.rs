//! Offline subcommands in the style of etcd 3.5's `etcdutl`, run without a
//! server: `oxcd snapshot status FILE [-w table|json|simple]` and
//! `oxcd snapshot restore FILE [etcdctl's restore flags]`, and
//! `oxcd export-etcd --data-dir D --out DIR` (an oxcd data directory as an
//! etcd 3.4 one).

use std::process::ExitCode;

use oxcd_etcd_format::bolt::{BoltFile, SnapshotStatus};

/// Runs `oxcd snapshot …` with the arguments after `snapshot`.
pub fn snapshot(args: &[String]) -> ExitCode {
    let usage = "usage: oxcd snapshot status <filename> [-w table|json|simple]\n       oxcd snapshot restore <filename> [--name N] [--data-dir D] [--wal-dir W] [--initial-cluster C] [--initial-cluster-token T] [--initial-advertise-peer-urls U] [--skip-hash-check]";
    match args.first().map(String::as_str) {
        Some("status") => {}
        Some("restore") => return restore(&args[1..], usage),
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(1);
        }
    }
    let mut file = None;
    let mut format = "simple".to_string();
    let mut rest = args[1..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "-w" | "--write-out" => format = rest.next().cloned().unwrap_or_default(),
            s if s.starts_with("--write-out=") => format = s["--write-out=".len()..].to_string(),
            s if !s.starts_with('-') && file.is_none() => file = Some(s.to_string()),
            other => {
                eprintln!("Error: unknown flag: {other}\n{usage}");
                return ExitCode::from(1);
            }
        }
    }
    let Some(file) = file else {
        eprintln!("Error: snapshot filename is required\n{usage}");
        return ExitCode::from(1);
    };
    let data = match std::fs::read(&file) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("Error: {file}: {e}");
            return ExitCode::from(1);
        }
    };
    let st = match BoltFile::parse(&data) {
        Ok(f) => f.status(),
        Err(e) => {
            eprintln!("Error: {file}: {e}");
            return ExitCode::from(1);
        }
    };
    match format.as_str() {
        "json" => println!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}",
            st.hash, st.revision, st.total_key, st.total_size
        ),
        "table" => print_table(&st),
        "simple" => println!(
            "{:x}, {}, {}, {}",
            st.hash,
            st.revision,
            st.total_key,
            human_bytes(st.total_size)
        ),
        other => {
            eprintln!("Error: unsupported output format: {other}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn print_table(st: &SnapshotStatus) {
    let cells = [
        format!("{:x}", st.hash),
        st.revision.to_string(),
        st.total_key.to_string(),
        human_bytes(st.total_size),
    ];
    let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
    let widths: Vec<usize> = heads
        .iter()
        .zip(&cells)
        .map(|(h, c)| h.len().max(c.len()) + 2)
        .collect();
    let line: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(*w)))
        .collect::<String>()
        + "+";
    println!("{line}");
    let row = |items: &[String]| {
        items
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("|{s:^w$}"))
            .collect::<String>()
            + "|"
    };
    println!("{}", row(&heads.map(String::from)));
    println!("{line}");
    println!("{}", row(&cells));
    println!("{line}");
}

/// Go's `humanize.Bytes`: SI units, one decimal below 10.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let v = n as f64 / 1000f64.powi(e as i32);
    let v = (v * 10.0 + 0.5).floor() / 10.0;
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[e.min(6)])
    } else {
        format!("{v:.0} {}", UNITS[e.min(6)])
    }
}

/// `oxcd snapshot restore`: the flags, defaults and messages of `etcdctl
/// snapshot restore` (etcd 3.4), writing an oxcd data directory.
fn restore(args: &[String], usage: &str) -> ExitCode {
    use oxcd_server::etcd_files::restore::{restore, RestoreOptions};
    let parsed = match Flags::parse(
        args,
        &[
            "--name",
            "--data-dir",
            "--wal-dir",
            "--initial-cluster",
            "--initial-cluster-token",
            "--initial-advertise-peer-urls",
        ],
        &["--skip-hash-check"],
    ) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("Error: {e}\n{usage}");
            return ExitCode::from(1);
        }
    };
    let name = parsed.value("--name", "default");
    let mut data_dir = parsed.value("--data-dir", "");
    let wal_dir = parsed.value("--wal-dir", "");
    let cluster = parsed.value("--initial-cluster", "default=http://localhost:2380");
    let token = parsed.value("--initial-cluster-token", "etcd-cluster");
    let peer_urls = parsed.value("--initial-advertise-peer-urls", "http://localhost:2380");
    let skip_hash_check = parsed.set("--skip-hash-check");
    let file = parsed.positional.first().cloned();
    let Some(file) = file else {
        eprintln!("Error: snapshot path must be provided\n{usage}");
        return ExitCode::from(1);
    };
    if data_dir.is_empty() {
        data_dir = format!("{name}.etcd");
    }
    let opts = RestoreOptions {
        snapshot: file.clone().into(),
        name,
        data_dir: data_dir.clone().into(),
        wal_dir: (!wal_dir.is_empty()).then(|| wal_dir.clone().into()),
        initial_cluster: cluster,
        initial_cluster_token: token,
        initial_advertise_peer_urls: peer_urls.split(',').map(str::to_string).collect(),
        skip_hash_check,
        rows_read: None,
    };
    let wal = if wal_dir.is_empty() {
        format!("{data_dir}/member/wal")
    } else {
        wal_dir
    };
    let dirs = serde_json::json!({
        "path": file,
        "wal-dir": wal,
        "data-dir": data_dir,
        "snap-dir": format!("{data_dir}/member/snap"),
    });
    log_line("restoring snapshot", &dirs);
    let restored = with_progress("restoring snapshot", |rows| {
        restore(&RestoreOptions {
            rows_read: Some(rows),
            ..opts
        })
    });
    match restored {
        Ok(r) => {
            for (id, urls) in &r.members {
                log_line(
                    "added member",
                    &serde_json::json!({
                        "cluster-id": format!("{:x}", r.cluster_id),
                        "local-member-id": "0",
                        "added-peer-id": format!("{id:x}"),
                        "added-peer-peer-urls": urls,
                    }),
                );
            }
            log_line("restored snapshot", &dirs);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Flags as etcdctl takes them: `--flag value` or `--flag=value`, boolean
/// flags alone or `=true|false`, and positional arguments.
struct Flags {
    values: std::collections::HashMap<String, String>,
    set: std::collections::HashSet<String>,
    positional: Vec<String>,
}

impl Flags {
    fn parse(args: &[String], valued: &[&str], boolean: &[&str]) -> Result<Flags, String> {
        let mut f = Flags {
            values: Default::default(),
            set: Default::default(),
            positional: Vec::new(),
        };
        let mut rest = args.iter();
        while let Some(a) = rest.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            if boolean.contains(&flag) {
                if inline.as_deref().is_none_or(|v| v == "true") {
                    f.set.insert(flag.to_string());
                }
            } else if valued.contains(&flag) {
                let v = inline
                    .or_else(|| rest.next().cloned())
                    .ok_or_else(|| format!("flag needs an argument: {flag}"))?;
                f.values.insert(flag.to_string(), v);
            } else if !flag.starts_with('-') {
                f.positional.push(a.clone());
            } else {
                return Err(format!("unknown flag: {flag}"));
            }
        }
        Ok(f)
    }

    fn value(&self, flag: &str, default: &str) -> String {
        self.values
            .get(flag)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    fn set(&self, flag: &str) -> bool {
        self.set.contains(flag)
    }
}

/// Runs `f` with a row counter, shown as a spinner with the rows done
/// and the time taken while it runs, when stderr is a terminal.
fn with_progress<T>(
    label: &str,
    f: impl FnOnce(std::sync::Arc<std::sync::atomic::AtomicU64>) -> T,
) -> T {
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let rows = Arc::new(AtomicU64::new(0));
    if !std::io::stderr().is_terminal() {
        return f(rows);
    }
    let done = Arc::new(AtomicBool::new(false));
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} {msg}: {pos} rows, {elapsed}")
    {
        bar.set_style(style);
    }
    bar.set_message(label.to_string());
    let drawer = {
        let (rows, done, bar) = (rows.clone(), done.clone(), bar.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                bar.set_position(rows.load(Ordering::Relaxed));
                bar.tick();
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let out = f(rows.clone());
    done.store(true, Ordering::Relaxed);
    let _ = drawer.join();
    bar.finish_and_clear();
    out
}

/// One zap-style JSON line on stderr, as etcdctl's restore logs.
fn log_line(msg: &str, fields: &serde_json::Value) {
    let mut line = serde_json::json!({
        "level": "info",
        "ts": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        "msg": msg,
    });
    if let (Some(l), Some(f)) = (line.as_object_mut(), fields.as_object()) {
        l.extend(f.clone());
    }
    eprintln!("{line}");
}

/// `oxcd export-etcd --data-dir D [--wal-dir W] --out DIR`.
pub fn export_etcd(args: &[String]) -> ExitCode {
    let usage = "usage: oxcd export-etcd --data-dir <oxcd data dir> [--wal-dir <dir>] --out <new etcd data dir>";
    let parsed = match Flags::parse(args, &["--data-dir", "--wal-dir", "--out"], &[]) {
        Ok(f) if f.positional.is_empty() => f,
        Ok(f) => {
            eprintln!("Error: unexpected argument: {}\n{usage}", f.positional[0]);
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("Error: {e}\n{usage}");
            return ExitCode::from(1);
        }
    };
    let (data_dir, wal_dir, out) = (
        parsed.value("--data-dir", ""),
        parsed.value("--wal-dir", ""),
        parsed.value("--out", ""),
    );
    if data_dir.is_empty() || out.is_empty() {
        eprintln!("Error: --data-dir and --out are required\n{usage}");
        return ExitCode::from(1);
    }
    let wal = (!wal_dir.is_empty()).then(|| std::path::PathBuf::from(&wal_dir));
    let exported = with_progress("exporting", |rows| {
        oxcd_server::etcd_files::export::export(
            data_dir.as_ref(),
            wal.as_deref(),
            out.as_ref(),
            Some(&*rows),
        )
    });
    match exported {
        Ok(x) => {
            println!(
                "exported member {:x} of cluster {:x} at raft index {} (term {}, {} members) to {out}; start etcd 3.4 there with this member's --name and URLs",
                x.member_id, x.cluster_id, x.index, x.term, x.members
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_print_like_humanize() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(2_100_000), "2.1 MB");
        assert_eq!(human_bytes(1_000_000_000), "1.0 GB");
    }
}
