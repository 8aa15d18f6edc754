//! `oxcd --help`: the usage summary (printed to stderr on `-h` and after a
//! flag error, as etcd does) and the flag list (stdout on `-h`), rendered
//! from the one flag table so it cannot drift from what the parser accepts.

use std::fmt::Write as _;

use crate::flags::{Section, FLAGS};

/// Usage summary.
pub const USAGE: &str = "Usage:

  oxcd [flags]
    Start an etcd-compatible server.

  oxcd --version
    Print version information and exit.

  oxcd -h | --help
    Print this help and exit.

  oxcd --config-file <path>
    Take every setting from a YAML file; other flags and ETCD_* variables are then ignored.

  oxcd snapshot status <file> [-w table|json|simple]
    Report an etcd snapshot or backend file as etcdctl snapshot status does.

  oxcd snapshot restore <file> [--name N] [--data-dir D] [--wal-dir W] [--initial-cluster C]
      [--initial-cluster-token T] [--initial-advertise-peer-urls U] [--skip-hash-check]
    Restore an etcd snapshot into a new oxcd data directory (etcdctl snapshot restore's flags).

  oxcd export-etcd --data-dir <oxcd data dir> [--wal-dir W] --out <dir>
    Write a stopped member's data directory as an etcd 3.4 one.

  oxcd gateway start [--endpoints host:port,...] [--listen-addr 127.0.0.1:23790] [--retry-delay 1m0s]
    Run etcd's L4 gateway: client connections go round robin to the endpoints that answer.

  A data directory written by etcd 3.4 is imported on the first start; etcd's files are kept
  in <data-dir>/member.etcd.
";

/// The flag list, grouped by section, each flag with its default.
#[must_use]
pub fn flags_text() -> String {
    let mut s = String::from(
        "\nEvery flag can also be set through an environment variable: ETCD_ followed by the\n\
         flag name in upper case with '-' replaced by '_' (for example ETCD_INITIAL_CLUSTER).\n\
         A flag and its variable must not both be set. Booleans are turned off with --flag=false.\n",
    );
    for section in Section::ORDER {
        let _ = write!(s, "\n{}:\n", section.title());
        for def in FLAGS.iter().filter(|d| d.section == section) {
            let _ = writeln!(s, "  --{} '{}'\n    {}", def.name, def.default, def.help);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_visible_flag() {
        let text = flags_text();
        for def in FLAGS.iter().filter(|d| d.section != Section::Hidden) {
            assert!(
                text.contains(&format!("  --{} '", def.name)),
                "--{} missing",
                def.name
            );
        }
        assert!(text.contains("  --name 'default'\n"));
        assert!(!text.contains("--test.coverprofile"));
    }
}
