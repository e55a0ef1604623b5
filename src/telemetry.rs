//! Logging setup: `tracing` events to stderr, as human-readable text or one JSON object per
//! line.
//!
//! In: the `[log]` settings and `RUST_LOG`. Out: the process-wide `tracing` subscriber. The
//! format and level are fixed at start; a config reload does not change them.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber: `log.format` decides text or JSON, `log.level` the filter
/// unless `RUST_LOG` is set and valid. Text has ANSI colours only when stderr is a terminal
/// (never in the journal). Only the first call installs anything; later calls do nothing.
pub fn init(log: &LogSettings) {
    let (filter, rust_log_error) = filter(log);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // `try_init` fails only when a subscriber is already installed: keep that one.
    let installed = match log.format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let (Ok(()), Some(error)) = (installed, rust_log_error) {
        tracing::warn!(%error, level = %log.level, "RUST_LOG is not a valid filter; using log.level.");
    }
}

/// `RUST_LOG` when set and valid, else `log.level`, else `info` (validation has already
/// rejected a bad `log.level`, the fallback only guards the unvalidated path). Also returns
/// why `RUST_LOG` was ignored, to be logged once logging works.
fn filter(log: &LogSettings) -> (EnvFilter, Option<String>) {
    let mut rust_log_error = None;
    if let Some(env) = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty()) {
        match EnvFilter::try_new(&env) {
            Ok(filter) => return (filter, None),
            Err(e) => rust_log_error = Some(e.to_string()),
        }
    }
    let mut filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // PostgreSQL's NOTICEs ("relation already exists, skipping" on every migration check)
    // are not news; a level that names sqlx itself decides otherwise.
    if !log.level.contains("sqlx")
        && let Ok(quiet) = "sqlx::postgres::notice=warn".parse()
    {
        filter = filter.add_directive(quiet);
    }
    (filter, rust_log_error)
}
