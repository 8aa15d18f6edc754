//! etcd's command line, environment and config file, turned into one
//! [`Config`] (etcd's `etcdmain/config.go` and `pkg/flags`).
//!
//! Parsing follows Go's `flag` package, not a GNU-style parser: `-name x`,
//! `--name x` and `--name=x` are the same; a boolean never takes the next
//! argument (`--x false` leaves `false` as a stray argument); parsing stops at
//! the first non-flag; errors are Go's exact strings. clap cannot express
//! single-dash long flags for every option, Go's boolean rule, or those error
//! texts, so this is a small table-driven parser over `table::FLAGS`.
//!
//! Order of work, as in etcd: flags (exit 2 on a syntax error; `-h` exits 0)
//! → stray argument check → `--version` → `--config-file`/`ETCD_CONFIG_FILE`
//! (then YAML only) → `ETCD_*` variables for flags not given → conflict and
//! unknown-variable checks → etcd's flag-path fixes → [`Config::validate`].
//!
//! - `table`: the flag table (names, setters, help entries).
//! - `values`: Go value syntax (bools, base-0 integers, durations, `%q`).

mod table;
mod values;

use std::collections::BTreeSet;
use std::io::Write;

use oxcd_server::config::{Config, ConfigError};

use table::{apply, env_key, lookup, Setter};
pub(crate) use table::{FlagDef, Section, FLAGS};
use values::go_quote;

/// The etcd release whose behaviour oxcd reproduces; tools parse the first
/// `--version` line for it.
pub const ETCD_VERSION: &str = "3.4.23";

/// Severity of a [`Notice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeLevel {
    /// Informational (`recognized and used environment variable ...`).
    Info,
    /// Warning (`unrecognized environment variable ...`).
    Warn,
}

/// A message etcd would log while parsing. Parsing runs before the logger
/// exists (its settings come from the parse), so these are returned for
/// the caller to log once logging is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Severity.
    pub level: NoticeLevel,
    /// etcd's wording.
    pub message: String,
}

/// A successful parse.
#[derive(Debug)]
pub struct Parsed {
    /// The validated configuration.
    pub config: Config,
    /// Messages to log, in order.
    pub notices: Vec<Notice>,
}

/// What `main` should do next.
#[derive(Debug)]
pub enum ParseOutcome {
    /// Start the server with this configuration.
    Run(Box<Parsed>),
    /// Exit with this code; everything to print has been printed
    /// (0: `--help`/`--version`; 1: bad configuration; 2: bad flag syntax).
    Exit(i32),
}

/// Parses `args` (without the program name) and `env` (all variables, in
/// order) like etcd, writing help/version to stdout and errors to stderr.
/// Never exits the process.
#[must_use]
#[allow(clippy::needless_pass_by_value)] // owned, as `std::env::args().skip(1).collect()` gives
pub fn parse(args: Vec<String>, env: Vec<(String, String)>) -> ParseOutcome {
    parse_to(&args, &env, &mut std::io::stdout(), &mut std::io::stderr())
}

/// [`parse`] with explicit output streams (for tests).
pub fn parse_to(
    args: &[String],
    env: &[(String, String)],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ParseOutcome {
    let mut p = Parser::default();
    match p.parse_args(args) {
        Ok(()) => {}
        Err(ArgError::Help) => {
            // Go prints the usage line to stderr, then etcd the flag list to stdout.
            let _ = writeln!(err, "{}", crate::help::USAGE);
            let _ = write!(out, "{}", crate::help::flags_text());
            return ParseOutcome::Exit(0);
        }
        Err(ArgError::Syntax(msg)) => {
            let _ = writeln!(err, "{msg}");
            let _ = writeln!(err, "{}", crate::help::USAGE);
            return ParseOutcome::Exit(2);
        }
    }
    if let Some(arg) = p.rest.first().cloned() {
        return p.fail(err, &format!("'{arg}' is not a valid flag"));
    }
    if p.version {
        let _ = write!(out, "{}", version_text());
        return ParseOutcome::Exit(0);
    }
    if p.config_file.is_empty() {
        p.config_file = lookup_env(env, "ETCD_CONFIG_FILE")
            .unwrap_or_default()
            .to_string();
    }
    if !p.config_file.is_empty() {
        return p.load_file(err);
    }
    p.load_command_line(env, err)
}

/// Why the environment stopped the start.
enum EnvProblem {
    /// A variable shadows a flag given on the command line (critical in etcd).
    Conflict(String),
    /// A variable's value does not parse.
    BadValue(String),
}

/// Go-style argument errors.
enum ArgError {
    /// `-h`, `-help`, `--help`.
    Help,
    /// Anything Go's `flag` package rejects; the text is Go's.
    Syntax(String),
}

#[derive(Default)]
struct Parser {
    cfg: Config,
    /// Flags given on the command line (or taken from the environment).
    set: BTreeSet<&'static str>,
    /// Arguments left after the first non-flag.
    rest: Vec<String>,
    config_file: String,
    version: bool,
    notices: Vec<Notice>,
}

impl Parser {
    /// Go's `FlagSet.Parse`.
    fn parse_args(&mut self, args: &[String]) -> Result<(), ArgError> {
        let mut i = 0;
        while i < args.len() {
            let s = args[i].as_str();
            if s.len() < 2 || !s.starts_with('-') {
                break;
            }
            let dashes = if s.starts_with("--") { 2 } else { 1 };
            if s == "--" {
                i += 1;
                break;
            }
            i += 1;
            let body = &s[dashes..];
            if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
                return Err(ArgError::Syntax(format!("bad flag syntax: {s}")));
            }
            let (name, inline) = match body.find('=') {
                Some(eq) => (&body[..eq], Some(&body[eq + 1..])),
                None => (body, None),
            };
            let Some(def) = lookup(name) else {
                if name == "help" || name == "h" {
                    return Err(ArgError::Help);
                }
                return Err(ArgError::Syntax(format!(
                    "flag provided but not defined: -{name}"
                )));
            };
            let value = if def.setter.is_bool() {
                inline.unwrap_or("true").to_string()
            } else if let Some(v) = inline {
                v.to_string()
            } else if let Some(next) = args.get(i) {
                i += 1;
                next.clone()
            } else {
                return Err(ArgError::Syntax(format!("flag needs an argument: -{name}")));
            };
            self.set_flag(def, &value).map_err(|why| {
                ArgError::Syntax(if def.setter.is_bool() {
                    format!(
                        "invalid boolean value {} for -{name}: {why}",
                        go_quote(&value)
                    )
                } else {
                    format!("invalid value {} for flag -{name}: {why}", go_quote(&value))
                })
            })?;
        }
        self.rest = args[i..].to_vec();
        Ok(())
    }

    /// Go's `Flag.Value.Set` plus `FlagSet` bookkeeping.
    fn set_flag(&mut self, def: &'static FlagDef, value: &str) -> Result<(), String> {
        match def.setter {
            Setter::ConfigFile => self.config_file = value.to_string(),
            Setter::Version => self.version = values::go_bool(value)?,
            Setter::Ignored => self.notice(
                NoticeLevel::Warn,
                format!("flag \"-{}\" is no longer supported - ignoring.", def.name),
            ),
            _ => apply(def, &mut self.cfg, value)?,
        }
        self.set.insert(def.name);
        Ok(())
    }

    fn notice(&mut self, level: NoticeLevel, message: String) {
        self.notices.push(Notice { level, message });
    }

    /// Prints what was noticed so far and etcd's flag error; exit 1.
    fn fail(self, err: &mut dyn Write, msg: &str) -> ParseOutcome {
        write_notices(err, &self.notices);
        let _ = writeln!(err, "E | error verifying flags, {msg}. See 'oxcd --help'.");
        ParseOutcome::Exit(1)
    }

    fn load_file(mut self, err: &mut dyn Write) -> ParseOutcome {
        let path = self.config_file.clone();
        self.notice(
            NoticeLevel::Info,
            format!(
                "Loading server configuration from {}. Other configuration command line flags and environment variables will be ignored if provided.",
                go_quote(&path)
            ),
        );
        match Config::from_yaml_file(&path) {
            Ok(config) => ParseOutcome::Run(Box::new(Parsed {
                config,
                notices: self.notices,
            })),
            Err(e) => self.fail(err, &e.to_string()),
        }
    }

    /// etcd's `SetFlagsFromEnv` + `verifyEnv`: `ETCD_*` values for flags not
    /// given on the command line, then the conflict and unknown-name checks.
    fn apply_env(&mut self, env: &[(String, String)]) -> Result<(), EnvProblem> {
        let already_set: BTreeSet<String> = self.set.iter().map(|n| env_key(n)).collect();
        let mut used = BTreeSet::new();
        let mut bad_value = None;
        // Go visits flags in name order; the last failing one is reported.
        let mut by_name: Vec<&'static FlagDef> = FLAGS.iter().collect();
        by_name.sort_by_key(|d| d.name);
        for def in by_name {
            let key = env_key(def.name);
            if already_set.contains(&key) {
                continue;
            }
            let Some(val) = lookup_env(env, &key).filter(|v| !v.is_empty()) else {
                continue;
            };
            used.insert(key.clone());
            match self.set_flag(def, val) {
                Ok(()) => self.notice(
                    NoticeLevel::Info,
                    format!("recognized and used environment variable {key}={val}"),
                ),
                Err(why) => {
                    bad_value = Some(format!("invalid value {} for {key}: {why}", go_quote(val)));
                }
            }
        }
        for (key, val) in env {
            if used.contains(key) {
                continue;
            }
            if already_set.contains(key) {
                return Err(EnvProblem::Conflict(format!(
                    "conflicting environment variable {} is shadowed by corresponding command-line flag (either unset environment variable or disable flag)",
                    go_quote(key)
                )));
            }
            if key.starts_with("ETCD_") {
                self.notice(
                    NoticeLevel::Warn,
                    format!("unrecognized environment variable {key}={val}"),
                );
            }
        }
        bad_value.map_or(Ok(()), |msg| Err(EnvProblem::BadValue(msg)))
    }

    fn load_command_line(mut self, env: &[(String, String)], err: &mut dyn Write) -> ParseOutcome {
        match self.apply_env(env) {
            Ok(()) => {}
            Err(EnvProblem::Conflict(msg)) => {
                write_notices(err, &self.notices);
                let _ = writeln!(err, "C | {msg}");
                return ParseOutcome::Exit(1);
            }
            Err(EnvProblem::BadValue(msg)) => return self.fail(err, &msg),
        }
        self.flag_path_fixes();
        match self.cfg.validate() {
            Ok(()) => {}
            Err(ConfigError::UnsetAdvertiseClientUrls) if self.cfg.may_be_proxy() => {}
            Err(e @ ConfigError::UnsetAdvertiseClientUrls) => {
                let out = self.fail(err, &e.to_string());
                let _ = writeln!(
                    err,
                    "E | When listening on specific address(es), this etcd process must advertise accessible url(s) to each connected client."
                );
                return out;
            }
            Err(e) => return self.fail(err, &e.to_string()),
        }
        ParseOutcome::Run(Box::new(Parsed {
            config: self.cfg,
            notices: self.notices,
        }))
    }

    /// etcdmain's command-line-only adjustments.
    fn flag_path_fixes(&mut self) {
        let missing_ac =
            self.set.contains("listen-client-urls") && !self.set.contains("advertise-client-urls");
        if missing_ac && !self.cfg.may_be_proxy() {
            self.cfg.advertise_client_urls.clear();
        }
        let discovering = !self.cfg.discovery.is_empty()
            || !self.cfg.discovery_srv.is_empty()
            || !self.cfg.discovery_srv_name.is_empty();
        if discovering && !self.set.contains("initial-cluster") {
            self.cfg.initial_cluster.clear();
        }
    }
}

/// Like `os.Getenv`: the first entry for `key`.
fn lookup_env<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn write_notices(err: &mut dyn Write, notices: &[Notice]) {
    for n in notices {
        let tag = match n.level {
            NoticeLevel::Info => 'I',
            NoticeLevel::Warn => 'W',
        };
        let _ = writeln!(err, "{tag} | {}", n.message);
    }
}

/// The four `--version` lines. The first carries the etcd version oxcd is
/// compatible with, because tools parse it.
#[must_use]
pub fn version_text() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!(
        "etcd Version: {ETCD_VERSION}\nGit SHA: oxcd-{}\nGo Version: rust\nGo OS/Arch: {}/{arch}\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
    )
}

#[cfg(test)]
mod tests;
