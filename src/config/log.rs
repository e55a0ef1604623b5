//! `[log]`: the log line format and the `tracing` filter.

use serde::{Deserialize, Serialize};

use super::Problems;

/// Logging output.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `auto` (the default: `journald` when stderr is the systemd journal, else `text`),
    /// `text` (human-readable), `json` (one object per line) or `journald` (native journal
    /// fields; text on stderr, with a warning, when the journal cannot be reached).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `tickd=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `Journald` when stderr is the journal (systemd sets `JOURNAL_STREAM` to its device and
    /// inode), else `Text`.
    #[default]
    Auto,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr; span fields (`feed`, `conn`) merged into `fields`.
    Json,
    /// Straight to the systemd journal, every field a journal field (`F_FEED`, `F_CONN`...).
    Journald,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { format: LogFormat::Auto, level: "info".into() }
    }
}

impl LogSettings {
    /// Checks that `level` is a `tracing` filter.
    pub(super) fn validate_into(&self, problems: &mut Problems) {
        let level = self.level.trim();
        if level.is_empty() {
            problems.push("log.level", "is empty; use e.g. `info` or `tickd=debug,info`");
        } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
            problems.push("log.level", format!("`{level}` is not a tracing filter: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{problem_keys, valid};

    #[test]
    fn the_log_level_must_be_a_tracing_filter() {
        for (level, ok) in [("info", true), ("tickd=debug,info", true), ("tickd=loud", false), ("", false)] {
            let mut settings = valid();
            settings.log.level = level.into();
            let expected: &[&str] = if ok { &[] } else { &["log.level"] };
            assert_eq!(problem_keys(&settings), expected, "level {level:?}");
        }
    }
}
