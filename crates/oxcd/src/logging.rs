//! Logging as etcd does it: capnslog-style text lines (etcd 3.4's default,
//! `--logger capnslog`) or zap's JSON lines (`--logger zap`, etcd 3.5's
//! default), to every `--log-outputs` target (`default` and `stderr`,
//! `stdout`, or file paths, appended to), from `--log-level` up.
//!
//! capnslog: `2026-12-06 19:38:10.123456 I | embed: message key=value`.
//! zap: `{"level":"info","ts":"2026-12-06T19:38:10.123Z","caller":"oxcd-server/embed.rs:131","msg":"message","key":value}`,
//! field names with `-` where the code has `_`, as etcd spells them.
//!
//! Where etcd's two loggers word a line differently (the readiness lines
//! tooling greps, ETCD-FACTS §11.1), the event carries both: its message
//! is the capnslog text, printed alone as etcd prints it, and a `zap`
//! field the zap `msg`, with the event's other fields. `zap_only` and
//! `capnslog_only` events appear in one format only. A `target:` given
//! to the event is the capnslog package (`etcdserver/api`).

use oxcd_server::config::Config;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Sets up logging from the configuration.
///
/// # Errors
/// A `--log-outputs` file that cannot be opened, or an unknown `--logger`.
pub fn init(cfg: &Config) -> Result<(), String> {
    // `--debug` is the old spelling of `--log-level=debug`.
    let level = match cfg.log_level.as_str() {
        _ if cfg.debug => Level::DEBUG,
        "debug" => Level::DEBUG,
        "warn" => Level::WARN,
        "error" | "panic" | "fatal" => Level::ERROR,
        _ => Level::INFO,
    };
    // `--log-output` is the old spelling of `--log-outputs`.
    let default = Config::default().log_outputs;
    let names = if cfg.log_outputs == default && cfg.log_output_deprecated != default {
        &cfg.log_output_deprecated
    } else {
        &cfg.log_outputs
    };
    let rotation = if cfg.enable_log_rotation {
        crate::log_rotation::check_outputs(names)?;
        Some(crate::log_rotation::RotationConfig::parse(
            &cfg.log_rotation_config_json,
        )?)
    } else {
        None
    };
    let outputs = Outputs::open(names, rotation)?;
    let format = match cfg.logger.as_str() {
        "zap" => Style::Zap,
        "capnslog" | "" => Style::Capnslog,
        other => return Err(format!("unknown logger option {other:?}")),
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(outputs)
        .event_format(format)
        .init();
    Ok(())
}

/// Where log lines go.
#[derive(Clone)]
struct Outputs {
    sinks: Arc<Vec<Sink>>,
}

enum Sink {
    Stderr,
    Stdout,
    File(Mutex<File>),
    /// The one file of `--enable-log-rotation`.
    Rotating(Mutex<crate::log_rotation::Rotating>),
}

impl Outputs {
    fn open(
        names: &[String],
        rotation: Option<crate::log_rotation::RotationConfig>,
    ) -> Result<Outputs, String> {
        let mut sinks = Vec::new();
        for name in names {
            sinks.push(match name.as_str() {
                "default" | "stderr" => Sink::Stderr,
                "stdout" => Sink::Stdout,
                path if rotation.is_some() => {
                    let cfg = rotation.unwrap_or_default();
                    let r = crate::log_rotation::Rotating::open(std::path::Path::new(path), cfg)
                        .map_err(|e| format!("cannot open log output {path}: {e}"))?;
                    Sink::Rotating(Mutex::new(r))
                }
                path => {
                    let f = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| format!("cannot open log output {path}: {e}"))?;
                    Sink::File(Mutex::new(f))
                }
            });
        }
        if sinks.is_empty() {
            sinks.push(Sink::Stderr);
        }
        Ok(Outputs {
            sinks: Arc::new(sinks),
        })
    }
}

impl<'a> MakeWriter<'a> for Outputs {
    type Writer = Tee;

    fn make_writer(&'a self) -> Tee {
        Tee {
            sinks: self.sinks.clone(),
        }
    }
}

/// Writes each line to every sink (the formatter hands over whole lines).
struct Tee {
    sinks: Arc<Vec<Sink>>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for s in self.sinks.iter() {
            // A sink that fails (a full disk) must not stop the others.
            let _ = match s {
                Sink::Stderr => io::stderr().write_all(buf),
                Sink::Stdout => io::stdout().write_all(buf),
                Sink::File(f) => f
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write_all(buf),
                Sink::Rotating(f) => f
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write_all(buf),
            };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Style {
    Capnslog,
    Zap,
}

impl<S, N> FormatEvent<S, N> for Style
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let now = time::OffsetDateTime::now_utc();
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = match self {
            Style::Capnslog if fields.zap_only => return Ok(()),
            Style::Zap if fields.capnslog_only => return Ok(()),
            Style::Capnslog => capnslog_line(now, meta, &fields),
            Style::Zap => zap_line(now, meta, &fields),
        };
        w.write_str(&line)
    }
}

/// An event's message and fields, in the order they were given.
#[derive(Default)]
struct Fields {
    message: String,
    /// The zap wording of the message, when it differs.
    zap: Option<String>,
    zap_only: bool,
    capnslog_only: bool,
    rest: Vec<(&'static str, Value)>,
}

enum Value {
    Str(String),
    Num(String),
    Bool(bool),
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else if field.name() == "zap" {
            self.zap = Some(value.to_string());
        } else {
            self.rest
                .push((field.name(), Value::Str(value.to_string())));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest
            .push((field.name(), Value::Num(value.to_string())));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest
            .push((field.name(), Value::Num(value.to_string())));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.rest
                .push((field.name(), Value::Num(value.to_string())));
        } else {
            self.rest
                .push((field.name(), Value::Str(value.to_string())));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        match field.name() {
            "zap_only" => self.zap_only = value,
            "capnslog_only" => self.capnslog_only = value,
            name => self.rest.push((name, Value::Bool(value))),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.rest
                .push((field.name(), Value::Str(format!("{value:?}"))));
        }
    }
}

/// etcd's level letters: D I N W E C.
fn level_letter(level: &Level) -> char {
    match *level {
        Level::TRACE | Level::DEBUG => 'D',
        Level::INFO => 'I',
        Level::WARN => 'W',
        Level::ERROR => 'E',
    }
}

/// The capnslog package: the last part of the module path
/// (`oxcd_server::embed` → `embed`).
fn package(target: &str) -> &str {
    target.rsplit("::").next().unwrap_or(target)
}

/// `YYYY-MM-DD`, shared by both formats.
fn date(now: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    )
}

fn capnslog_line(now: time::OffsetDateTime, meta: &tracing::Metadata<'_>, f: &Fields) -> String {
    let mut line = format!(
        "{} {:02}:{:02}:{:02}.{:06} {} | {}: {}",
        date(now),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond(),
        level_letter(meta.level()),
        package(meta.target()),
        f.message,
    );
    // A line worded for each logger is complete in its capnslog text.
    let fields = if f.zap.is_some() {
        &[][..]
    } else {
        &f.rest[..]
    };
    for (k, v) in fields {
        let _ = match v {
            Value::Str(s) => write!(line, " {k}={s}"),
            Value::Num(n) => write!(line, " {k}={n}"),
            Value::Bool(b) => write!(line, " {k}={b}"),
        };
    }
    line.push('\n');
    line
}

/// `crates/oxcd-server/src/serve/http.rs` → `oxcd-server/serve/http.rs`.
fn caller(meta: &tracing::Metadata<'_>) -> String {
    let file = meta.file().unwrap_or("?");
    let file = file.rsplit_once("crates/").map_or(file, |(_, f)| f);
    let file = file.replacen("/src/", "/", 1);
    format!("{file}:{}", meta.line().unwrap_or(0))
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn zap_line(now: time::OffsetDateTime, meta: &tracing::Metadata<'_>, f: &Fields) -> String {
    let level = match *meta.level() {
        Level::TRACE | Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    };
    let ts = format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        date(now),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond(),
    );
    let mut line = format!(
        r#"{{"level":"{level}","ts":"{ts}","caller":{},"msg":{}"#,
        json_str(&caller(meta)),
        json_str(f.zap.as_deref().unwrap_or(&f.message)),
    );
    for (k, v) in &f.rest {
        let key = json_str(&k.replace('_', "-"));
        let _ = match v {
            Value::Str(s) => write!(line, ",{key}:{}", json_str(s)),
            Value::Num(n) => write!(line, ",{key}:{n}"),
            Value::Bool(b) => write!(line, ",{key}:{b}"),
        };
    }
    line.push_str("}\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_and_callers_read_like_etcds() {
        assert_eq!(package("oxcd_server::serve::http"), "http");
        assert_eq!(package("oxcd"), "oxcd");
        assert_eq!(
            "crates/oxcd-server/src/serve/http.rs"
                .rsplit_once("crates/")
                .map(|(_, f)| f.replacen("/src/", "/", 1)),
            Some("oxcd-server/serve/http.rs".to_string())
        );
    }

    #[test]
    fn zap_fields_are_json_with_dashes() {
        let mut f = Fields {
            message: "published \"m\"".into(),
            zap: None,
            zap_only: false,
            capnslog_only: false,
            rest: vec![
                ("cluster_id", Value::Str("1c45".into())),
                ("count", Value::Num("3".into())),
                ("ok", Value::Bool(true)),
            ],
        };
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let meta = tracing::Metadata::new(
            "e",
            "oxcd_server::embed",
            Level::INFO,
            Some("crates/oxcd-server/src/embed.rs"),
            Some(7),
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
            tracing::metadata::Kind::EVENT,
        );
        let line = zap_line(now, &meta, &f);
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["level"], "info");
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["caller"], "oxcd-server/embed.rs:7");
        assert_eq!(v["msg"], "published \"m\"");
        assert_eq!(v["cluster-id"], "1c45");
        assert_eq!(v["count"], 3);
        assert_eq!(v["ok"], true);
        assert_eq!(
            capnslog_line(now, &meta, &f),
            "1970-01-01 00:00:00.000000 I | embed: published \"m\" cluster_id=1c45 count=3 ok=true\n"
        );
        // Worded for each logger: zap's msg with the fields, capnslog's
        // text alone.
        f.zap = Some("published local member".into());
        let v: serde_json::Value = serde_json::from_str(&zap_line(now, &meta, &f)).expect("json");
        assert_eq!(v["msg"], "published local member");
        assert_eq!(v["cluster-id"], "1c45");
        assert_eq!(
            capnslog_line(now, &meta, &f),
            "1970-01-01 00:00:00.000000 I | embed: published \"m\"\n"
        );
    }

    struct Cs;
    impl tracing::callsite::Callsite for Cs {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unreachable!("not registered")
        }
    }
    static CALLSITE: Cs = Cs;
}
