//! `--enable-log-rotation` with `--log-rotation-config-json` (etcd 3.5):
//! the one log file is rotated by size the way etcd's lumberjack sink
//! does it, so the same config and the same log-shipping globs work:
//!
//! - when a write would take the file past `maxsize` MiB (100 when 0), the
//!   file is renamed to `<name>-<UTC time 2006-01-02T15-04-05.000><ext>`
//!   (local time with `"localtime": true`) and a new one is started;
//! - backups beyond `maxbackups` (0: keep all) and older than `maxage`
//!   days (0: keep) are removed, the newest kept; with `"compress": true`
//!   backups are gzipped (`….gz`) and the original removed.
//!
//! A write larger than `maxsize` on its own is refused, as lumberjack does.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// etcd's `ErrLogRotationInvalidLogOutput`.
pub const INVALID_OUTPUT: &str =
    "--log-outputs requires a single file path when --log-rotate-config-json is defined";

/// The rotation settings of `--log-rotation-config-json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(default)]
pub struct RotationConfig {
    /// Megabytes (MiB) before a file is rotated; 0 means 100.
    pub maxsize: u64,
    /// Days a backup is kept; 0 keeps it regardless of age.
    pub maxage: u64,
    /// Backups kept; 0 keeps all.
    pub maxbackups: u64,
    /// Backup names in local time instead of UTC.
    pub localtime: bool,
    /// Gzip backups.
    pub compress: bool,
}

impl RotationConfig {
    /// Parses the JSON with etcd's error wording.
    pub fn parse(json: &str) -> Result<RotationConfig, String> {
        serde_json::from_str(json).map_err(|e| match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("improperly formatted log rotation config: {e}")
            }
            serde_json::error::Category::Data => format!("invalid log rotation config: {e}"),
            serde_json::error::Category::Io => {
                format!("fail to unmarshal log rotation config: {e}")
            }
        })
    }

    fn max_bytes(&self) -> u64 {
        let mb = if self.maxsize == 0 { 100 } else { self.maxsize };
        mb.saturating_mul(1024 * 1024)
    }
}

/// Checks etcd's rule: rotation needs exactly one file among the outputs.
pub fn check_outputs(outputs: &[String]) -> Result<(), String> {
    let files = outputs
        .iter()
        .filter(|o| !matches!(o.as_str(), "default" | "stderr" | "stdout"))
        .count();
    if (outputs.len() == 1 && files == 0) || files > 1 {
        return Err(INVALID_OUTPUT.into());
    }
    Ok(())
}

/// A log file that rotates itself.
#[derive(Debug)]
pub struct Rotating {
    path: PathBuf,
    cfg: RotationConfig,
    file: Option<File>,
    size: u64,
}

impl Rotating {
    /// Opens (appends to) `path`.
    pub fn open(path: &Path, cfg: RotationConfig) -> io::Result<Rotating> {
        let mut r = Rotating {
            path: path.to_path_buf(),
            cfg,
            file: None,
            size: 0,
        };
        r.open_existing()?;
        Ok(r)
    }

    fn open_existing(&mut self) -> io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = f.metadata()?.len();
        self.file = Some(f);
        Ok(())
    }

    /// Moves the current file aside and starts a new one, then prunes.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.path.exists() {
            fs::rename(&self.path, self.backup_name(SystemTime::now()))?;
        }
        self.open_existing()?;
        self.prune();
        Ok(())
    }

    fn split_name(&self) -> (PathBuf, String, String) {
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let file = self
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (stem, ext) = match file.rfind('.') {
            Some(i) if i > 0 => (file[..i].to_string(), file[i..].to_string()),
            _ => (file.clone(), String::new()),
        };
        (dir, stem, ext)
    }

    fn backup_name(&self, at: SystemTime) -> PathBuf {
        let (dir, stem, ext) = self.split_name();
        dir.join(format!("{stem}-{}{ext}", stamp(at, self.cfg.localtime)))
    }

    /// Removes backups beyond the count and age limits, compresses the
    /// rest when asked. Failures are left for the next rotation: logging
    /// must go on.
    fn prune(&self) {
        let (dir, stem, ext) = self.split_name();
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        let prefix = format!("{stem}-");
        // Backup names sort by time: the stamp is fixed-width.
        let mut backups: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let rest = name.strip_prefix(&prefix)?;
                let stamp = rest
                    .strip_suffix(&format!("{ext}.gz"))
                    .or_else(|| rest.strip_suffix(ext.as_str()))?;
                (stamp.len() == STAMP_LEN).then(|| (stamp.to_string(), e.path()))
            })
            .collect();
        backups.sort_by(|a, b| b.0.cmp(&a.0));
        let cutoff = (self.cfg.maxage > 0).then(|| {
            SystemTime::now() - Duration::from_secs(self.cfg.maxage.saturating_mul(86_400))
        });
        for (i, (_, path)) in backups.iter().enumerate() {
            let too_many = self.cfg.maxbackups > 0 && i as u64 >= self.cfg.maxbackups;
            let too_old = cutoff.is_some_and(|c| {
                fs::metadata(path)
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m < c)
            });
            if too_many || too_old {
                let _ = fs::remove_file(path);
            } else if self.cfg.compress && path.extension().is_none_or(|e| e != "gz") {
                let _ = gzip(path);
            }
        }
    }
}

/// Length of `2006-01-02T15-04-05.000`.
const STAMP_LEN: usize = 23;

/// lumberjack's backup time stamp.
fn stamp(at: SystemTime, local: bool) -> String {
    let t = time::OffsetDateTime::from(at);
    let t = if local {
        time::UtcOffset::from_whole_seconds(local_offset(t.unix_timestamp()))
            .map_or(t, |o| t.to_offset(o))
    } else {
        t
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}.{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The local time zone's offset from UTC at `unix` seconds, from the C
/// library (the `time` crate refuses to read it once threads run).
fn local_offset(unix: i64) -> i32 {
    let t = unix as libc::time_t;
    // SAFETY: `tm` is plain data that `localtime_r` fills; both pointers
    // are valid for the call, and `localtime_r` is the thread-safe form.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let filled = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if filled {
        i32::try_from(tm.tm_gmtoff).unwrap_or(0)
    } else {
        0
    }
}

/// Compresses `path` to `path.gz`, then removes `path`.
fn gzip(path: &Path) -> io::Result<()> {
    let mut gz_name = path.as_os_str().to_owned();
    gz_name.push(".gz");
    let mut input = File::open(path)?;
    let out = File::create(&gz_name)?;
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    io::copy(&mut input, &mut enc)?;
    enc.finish()?.sync_all()?;
    fs::remove_file(path)
}

impl Write for Rotating {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let max = self.cfg.max_bytes();
        if buf.len() as u64 > max {
            return Err(io::Error::other(format!(
                "write length {} exceeds maximum file size {max}",
                buf.len()
            )));
        }
        if self.file.is_none() || self.size + buf.len() as u64 > max {
            self.rotate()?;
        }
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("log file not open"))?;
        f.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backups(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "etcd.log")
            .collect();
        v.sort();
        v
    }

    #[test]
    fn config_parses_with_etcds_defaults_and_errors() {
        let d = RotationConfig::parse(
            r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#,
        )
        .unwrap();
        assert_eq!(d.max_bytes(), 100 << 20);
        assert_eq!(RotationConfig::parse("{}").unwrap().max_bytes(), 100 << 20);
        let e = RotationConfig::parse("{").unwrap_err();
        assert!(
            e.starts_with("improperly formatted log rotation config"),
            "{e}"
        );
        let e = RotationConfig::parse(r#"{"maxsize": "big"}"#).unwrap_err();
        assert!(e.starts_with("invalid log rotation config"), "{e}");
        assert!(check_outputs(&["/var/log/etcd.log".into()]).is_ok());
        assert!(check_outputs(&["stderr".into(), "/x.log".into()]).is_ok());
        assert_eq!(
            check_outputs(&["stderr".into()]).unwrap_err(),
            INVALID_OUTPUT
        );
        assert!(check_outputs(&["/a.log".into(), "/b.log".into()]).is_err());
    }

    #[test]
    fn rotates_by_size_and_keeps_max_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.log");
        let cfg = RotationConfig {
            maxsize: 1,
            maxbackups: 2,
            ..Default::default()
        };
        let mut r = Rotating::open(&path, cfg).unwrap();
        let line = vec![b'x'; 400 * 1024];
        for _ in 0..3 {
            r.write_all(&line).unwrap();
        }
        // 1.2 MiB does not fit in 1 MiB: one rotation so far.
        assert_eq!(backups(dir.path()).len(), 1);
        assert_eq!(fs::metadata(&path).unwrap().len(), 400 * 1024);
        for _ in 0..12 {
            r.write_all(&line).unwrap();
            // Distinct millisecond stamps for distinct backups.
            std::thread::sleep(Duration::from_millis(2));
        }
        let b = backups(dir.path());
        assert_eq!(b.len(), 2, "{b:?}");
        for name in &b {
            assert!(
                name.starts_with("etcd-") && name.ends_with(".log"),
                "{name}"
            );
            assert_eq!(
                name.len(),
                "etcd-".len() + STAMP_LEN + ".log".len(),
                "{name}"
            );
        }
        assert!(r.write_all(&vec![b'y'; 2 << 20]).is_err());
    }

    #[test]
    fn compresses_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.log");
        let cfg = RotationConfig {
            maxsize: 1,
            compress: true,
            ..Default::default()
        };
        let mut r = Rotating::open(&path, cfg).unwrap();
        let line = vec![b'z'; 700 * 1024];
        r.write_all(&line).unwrap();
        r.write_all(&line).unwrap();
        let b = backups(dir.path());
        assert_eq!(b.len(), 1, "{b:?}");
        assert!(b[0].ends_with(".log.gz"), "{b:?}");
        let gz = fs::read(dir.path().join(&b[0])).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out).unwrap();
        assert_eq!(out, line);
    }
}
