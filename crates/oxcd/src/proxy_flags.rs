//! The command line of `gateway start` and `grpc-proxy start` as etcd's
//! cobra/pflag reads it: flags before or after `start`, `--flag value` or
//! `--flag=value` (one or two dashes), booleans as `--flag` or
//! `--flag=true|false`.

/// The flags given, in order, and whether `start` was.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Whether the `start` subcommand was given.
    pub start: bool,
    /// `(name, value)` pairs; a bare boolean reads `"true"`.
    pub flags: Vec<(String, String)>,
}

/// Splits `args`: `valued` names the flags that take a value, `bools` the
/// ones that need none; any other flag is refused as pflag refuses it.
pub fn scan(args: &[String], valued: &[&str], bools: &[&str]) -> Result<Scanned, String> {
    let mut out = Scanned::default();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        if !a.starts_with('-') {
            if a == "start" && !out.start {
                out.start = true;
                continue;
            }
            return Err(format!("unknown command {a:?}"));
        }
        let body = a.trim_start_matches('-');
        let (name, inline) = match body.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        if !valued.contains(&name.as_str()) && !bools.contains(&name.as_str()) {
            return Err(format!("unknown flag: --{name}"));
        }
        let value = match inline {
            Some(v) => v,
            None if bools.contains(&name.as_str()) => "true".to_string(),
            None => rest
                .next()
                .cloned()
                .ok_or_else(|| format!("flag needs an argument: --{name}"))?,
        };
        out.flags.push((name, value));
    }
    Ok(out)
}

/// A boolean flag's value as pflag parses it.
pub fn boolean(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" | "t" | "T" | "TRUE" | "True" => Ok(true),
        "false" | "0" | "f" | "F" | "FALSE" | "False" => Ok(false),
        other => Err(format!(
            "invalid argument {other:?} for \"--{name}\" flag: strconv.ParseBool: parsing {other:?}: invalid syntax"
        )),
    }
}

/// A comma-separated list flag's items (empty items dropped).
pub fn list(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pflag_forms() {
        let s = scan(
            &args(&["--a=1", "start", "-b", "2", "--flag", "--c="]),
            &["a", "b", "c"],
            &["flag"],
        )
        .unwrap();
        assert!(s.start);
        let f: Vec<(&str, &str)> = s
            .flags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(f, [("a", "1"), ("b", "2"), ("flag", "true"), ("c", "")]);
        assert!(scan(&args(&["--a"]), &["a"], &[]).is_err());
        assert!(scan(&args(&["stop"]), &[], &[]).is_err());
        let e = scan(&args(&["--bogus"]), &["a"], &[]).unwrap_err();
        assert_eq!(e, "unknown flag: --bogus");
        assert!(boolean("x", "false").is_ok_and(|b| !b));
        assert!(boolean("x", "maybe").is_err());
    }
}
