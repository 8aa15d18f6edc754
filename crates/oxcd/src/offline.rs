//! Offline subcommands in the style of etcd 3.5's `etcdutl`, run without a
//! server: `oxcd snapshot status FILE [-w table|json|simple]`.

use std::process::ExitCode;

use oxcd_etcd_format::bolt::{BoltFile, SnapshotStatus};

/// Runs `oxcd snapshot …` with the arguments after `snapshot`.
pub fn snapshot(args: &[String]) -> ExitCode {
    let usage = "usage: oxcd snapshot status <filename> [-w table|json|simple]";
    match args.first().map(String::as_str) {
        Some("status") => {}
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
