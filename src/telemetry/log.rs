//! Logging setup: `tracing` events as human-readable text or one JSON object per line on
//! stderr, or straight to the systemd journal.
//!
//! In: the `[log]` settings, `RUST_LOG` and `JOURNAL_STREAM`. Out: the process-wide `tracing`
//! subscriber. The format and level are fixed at start; a config reload does not change them.
//!
//! Events inside a span carry the span's fields in every format: each feed connection runs in
//! a `feed` span with `feed` and `conn` ([`conn_span`]), so its lines say which
//! connection they are about without repeating it at every call. Text shows the span as a
//! prefix (`feed{feed=kalshi conn=0}:`), JSON merges its fields into `fields` (so that
//! `fields.feed` is found in one place), journald sends them as journal fields (`F_FEED`).

use std::fmt;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber, info};
use tracing_log::NormalizeEvent;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSettings};
use crate::telemetry::metrics::{FeedMetricsSnapshot, FeedState};
use crate::tick::{ConnId, now_micros};

/// Installs the global subscriber: `log.format` decides the output, `log.level` the filter
/// unless `RUST_LOG` is set and valid. Text has ANSI colours only when stderr is a terminal.
/// A journal that cannot be reached falls back to text on stderr with a warning: logging
/// never stops the start. Only the first call installs anything; later calls do nothing.
pub fn init(log: &LogSettings) {
    let (filter, rust_log_error) = filter(log);
    let format = match log.format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    let mut journal_error = None;
    // `try_init` fails only when a subscriber is already installed: keep that one.
    let installed = match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .try_init()
            .is_ok(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(journal) => {
                let journal = journal.with_priority_mappings(priorities());
                tracing_subscriber::registry().with(filter).with(journal).try_init().is_ok()
            }
            Err(e) => {
                journal_error = Some(e);
                init_text(filter)
            }
        },
        LogFormat::Text | LogFormat::Auto => init_text(filter),
    };
    if !installed {
        return;
    }
    if let Some(error) = journal_error {
        tracing::warn!(%error, "The systemd journal (/run/systemd/journal/socket) cannot be reached; logging text to stderr instead.");
    }
    if let Some(error) = rust_log_error {
        tracing::warn!(%error, level = %log.level, "RUST_LOG is not a valid filter; using log.level.");
    }
}

fn init_text(filter: EnvFilter) -> bool {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .is_ok()
}

/// Journal priorities by level, as syslog means them: `info` is informational (6), not the
/// crate's default of notice (5), so that `journalctl -p notice` shows warnings and errors.
fn priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// Whether stderr is the journal: systemd sets `JOURNAL_STREAM` to `<device>:<inode>` of the
/// stream it connects a service's stderr to, and a process that inherited the variable but
/// writes elsewhere (a shell started from a unit, a pipe) has another file there.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(fd).metadata() else { return false };
    stream.to_str().is_some_and(|s| names_stream(s, meta.dev(), meta.ino()))
}

/// Whether a `JOURNAL_STREAM` value names the file with `dev` and `ino`.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    value.split_once(':').is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// Targets whose most detailed lines would hold a secret, and the most detailed level they
/// may log at whatever the filter says: tungstenite traces a client handshake's whole request,
/// and with it the signed `KALSHI-ACCESS-SIGNATURE` header, which opens a connection as us
/// for as long as its timestamp is accepted.
const SECRET_TARGETS: [&str; 1] = ["tungstenite::handshake::client=debug"];

/// `RUST_LOG` when set and valid, else `log.level`, else `info` (validation has already
/// rejected a bad `log.level`, the fallback only guards the unvalidated path), with
/// [`SECRET_TARGETS`] capped. Also returns why `RUST_LOG` was ignored, to be logged once
/// logging works.
fn filter(log: &LogSettings) -> (EnvFilter, Option<String>) {
    let mut rust_log_error = None;
    let mut from_env = None;
    if let Some(env) = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty()) {
        match EnvFilter::try_new(&env) {
            Ok(filter) => from_env = Some(filter),
            Err(e) => rust_log_error = Some(e.to_string()),
        }
    }
    let mut filter = match from_env {
        Some(filter) => filter,
        None => {
            let mut filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
            // PostgreSQL's NOTICEs ("relation already exists, skipping" on every migration
            // check) are not news; a level that names sqlx itself decides otherwise.
            if !log.level.contains("sqlx")
                && let Ok(quiet) = "sqlx::postgres::notice=warn".parse()
            {
                filter = filter.add_directive(quiet);
            }
            filter
        }
    };
    // Added last, so that they replace a directive for the same target; and only when the
    // filter lets some trace line through, since a directive also raises a target that the
    // filter had kept quieter (`info` would otherwise show tungstenite's debug lines).
    let traces = filter.max_level_hint().is_none_or(|hint| hint >= LevelFilter::TRACE);
    for cap in SECRET_TARGETS.iter().filter(|_| traces) {
        if let Ok(cap) = cap.parse() {
            filter = filter.add_directive(cap);
        }
    }
    (filter, rust_log_error)
}

/// One JSON object per event: `{"timestamp", "level", "fields", "target"}`, where `fields`
/// holds the message, then the fields of every enclosing span (outermost first), then the
/// event's own fields; an event field replaces a span field of the same name. (The stock JSON
/// format of `tracing-subscriber` puts span fields under `span` and `spans` instead, where a
/// query for `fields.feed` would not find them.)
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events from the `log` crate (tungstenite, rustls) carry their real target in fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut own = JsonVisitor::default();
        event.record(&mut own);

        let mut fields: Vec<(String, Value)> = Vec::new();
        if let Some(i) = own.0.iter().position(|(name, _)| name == "message") {
            fields.push(own.0.remove(i));
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                // With `JsonFields`, a span's recorded fields are a JSON object.
                let Some(recorded) = extensions.get::<FormattedFields<N>>() else { continue };
                if let Ok(map) = serde_json::from_str::<serde_json::Map<String, Value>>(recorded) {
                    for (name, value) in map {
                        if own.0.iter().all(|(n, _)| *n != name) {
                            fields.retain(|(n, _)| *n != name);
                            fields.push((name, value));
                        }
                    }
                }
            }
        }
        fields.append(&mut own.0);

        let mut timestamp = String::new();
        if SystemTime.format_time(&mut Writer::new(&mut timestamp)).is_err() {
            timestamp.clear();
        }
        // Written by hand rather than through a `serde_json::Map`, which would sort the keys:
        // the message first reads better.
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":");
        line.push_str(&Value::from(timestamp).to_string());
        line.push_str(",\"level\":");
        line.push_str(&Value::from(meta.level().as_str()).to_string());
        line.push_str(",\"fields\":{");
        for (i, (name, value)) in fields.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&Value::from(name.as_str()).to_string());
            line.push(':');
            line.push_str(&value.to_string());
        }
        line.push_str("},\"target\":");
        line.push_str(&Value::from(meta.target()).to_string());
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// An event's fields as JSON values, in the order they were recorded. Numbers and booleans
/// stay numbers and booleans; everything else is its `Display` or `Debug` text. The `log.*`
/// fields of events from the `log` crate are left out (they are in the metadata).
#[derive(Default)]
struct JsonVisitor(Vec<(String, Value)>);

impl JsonVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        if !field.name().starts_with("log.") {
            self.0.push((field.name().to_owned(), value));
        }
    }
}

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

/// The span of one feed connection: every line logged while it is entered carries `feed`
/// (the feed's name) and `conn` (the connection's index), in text, JSON and the journal alike.
/// The actor runs in it, so its lines and the protocol session's need not name the feed.
///
/// At error level, so that it exists under any filter that lets an event through: a span
/// the filter disables records no fields, and a warning under `level = "warn"` would then say
/// nothing of its feed.
pub fn conn_span(conn: &ConnId) -> tracing::Span {
    tracing::error_span!("feed", feed = %conn.feed, conn = conn.index)
}

/// Logs a connection's state and what it carried since start, as `message`: the periodic
/// summary and the line of a stopped actor share these fields. Call it inside the
/// connection's [`conn_span`].
pub fn log_counts(message: &'static str, state: FeedState, s: &FeedMetricsSnapshot) {
    let age_ms = s.last_frame_age_us(now_micros()).map_or(-1, |us| us / 1000);
    info!(
        state = state.as_str(),
        frames = s.frames,
        trades = s.trades,
        quotes = s.quotes,
        deltas = s.deltas,
        snapshots = s.snapshots,
        lifecycle = s.lifecycles,
        gaps = s.gaps,
        resyncs = s.resyncs,
        reconnects = s.connects.saturating_sub(1),
        parse_errors = s.parse_errors,
        last_frame_age_ms = age_ms,
        "{message}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_cap_applies_only_to_filters_that_trace() {
        let shown = |level: &str| {
            let (filter, _) = filter(&LogSettings { level: level.into(), ..LogSettings::default() });
            filter.to_string()
        };
        // `RUST_LOG` wins over `log.level`; without it the level decides.
        if std::env::var_os("RUST_LOG").is_some() {
            return;
        }
        assert!(!shown("info").contains("tungstenite"), "info must not raise tungstenite to debug");
        assert!(!shown("debug").contains("tungstenite"));
        assert!(shown("trace").contains("tungstenite::handshake::client=debug"));
        assert!(shown("info,tungstenite=trace").contains("tungstenite::handshake::client=debug"));
    }

    #[test]
    fn journal_stream_names_a_device_and_inode() {
        assert!(names_stream("8:12345", 8, 12345));
        assert!(!names_stream("8:12345", 8, 12346));
        assert!(!names_stream("9:12345", 8, 12345));
        assert!(!names_stream("", 8, 12345));
        assert!(!names_stream("8", 8, 12345));
        assert!(!names_stream("x:y", 8, 12345));
    }
}
