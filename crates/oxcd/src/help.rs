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
