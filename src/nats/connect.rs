//! Reaching NATS: the client connection of `[nats]` (servers, credentials, TLS) and the
//! stream tickd publishes to, created when absent and checked when present.

use std::time::Duration;

use async_nats::jetstream::{self, ErrorCode, stream};
use async_nats::{Client, ConnectOptions, Event};
use tracing::{error, info, warn};

use crate::config::NatsSettings;

/// How long a JetStream request (a publish's acknowledgement, a stream lookup) may take before
/// it counts as failed: the longest a slow server holds a publish before it is spooled.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest wait between two attempts to reach the servers. The client backs off up to it,
/// so wrong credentials or a server that is down never make a tight loop.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(8);

/// Connects to the servers of `settings`. Returns at once: the client connects (and reconnects)
/// in the background, forever, backing off between attempts; [`Client::connection_state`] says
/// whether it is connected now. `name` goes to the servers (`tickd run`, `tickd record`).
pub async fn connect(settings: &NatsSettings, name: &str) -> anyhow::Result<Client> {
    let mut opts = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(REQUEST_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .reconnect_delay_callback(|attempts| {
            // 100 ms doubling to MAX_RECONNECT_DELAY.
            let exp = u32::try_from(attempts.min(10)).unwrap_or(10);
            Duration::from_millis(100 * 2u64.pow(exp)).min(MAX_RECONNECT_DELAY)
        })
        .event_callback(|event| async move {
            match event {
                Event::Connected => info!("Connected to NATS."),
                Event::Disconnected => warn!("Disconnected from NATS; reconnecting."),
                Event::ClientError(e) => warn!(error = %e, "NATS client error."),
                Event::ServerError(e) => error!(error = %e, "NATS server error."),
                other => info!(event = %other, "NATS connection event."),
            }
        });
    if let Some(path) = settings.creds_path() {
        opts = opts
            .credentials_file(&path)
            .await
            .map_err(|e| anyhow::anyhow!("nats.creds_file {}: {e}", path.display()))?;
    }
    if let Some(token) = settings.token().map_err(|e| anyhow::anyhow!("nats.token_file: {e}"))? {
        opts = opts.token(token);
    }
    if let Some(ca) = settings.ca_path() {
        opts = opts.add_root_certificates(ca);
    }
    if settings.url.iter().any(|u| u.starts_with("tls://")) {
        opts = opts.require_tls(true);
    }
    opts.connect(settings.url.as_slice())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS ({}): {e}", settings.url.join(", ")))
}

/// A JetStream context on `client` with tickd's request timeout and an acknowledgement window
/// of `max_in_flight` publishes.
pub fn jetstream(client: Client, max_in_flight: usize) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .max_ack_inflight(max_in_flight)
        .backpressure_on_inflight(true)
        .build(client)
}

/// Why the stream cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream exists with other settings; tickd does not change a stream it did not just
    /// create.
    #[error(
        "NATS stream `{stream}` exists with other settings than [nats] asks for: {differences}; \
         change the stream (nats stream edit {stream}) or the [nats] settings"
    )]
    Mismatch {
        /// The stream's name.
        stream: String,
        /// `key: stream has X, config asks for Y`, for each setting that differs.
        differences: String,
    },
    /// The servers did not answer, or refused.
    #[error("NATS stream `{stream}`: {message}")]
    Request {
        /// The stream's name.
        stream: String,
        /// What went wrong.
        message: String,
    },
}

/// The stream `settings` describe.
pub fn stream_config(settings: &NatsSettings) -> stream::Config {
    stream::Config {
        name: settings.stream.clone(),
        subjects: vec![format!("{}.>", settings.subject_prefix)],
        max_age: settings.max_age,
        max_bytes: settings.max_bytes.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// Creates the stream of `settings`, or checks that the one there has its settings.
pub async fn ensure_stream(js: &jetstream::Context, settings: &NatsSettings) -> Result<(), StreamError> {
    let want = stream_config(settings);
    let request = |e: &dyn std::fmt::Display| StreamError::Request {
        stream: settings.stream.clone(),
        message: e.to_string(),
    };
    match js.get_stream(&settings.stream).await {
        Ok(mut found) => {
            let info = found.info().await.map_err(|e| request(&e))?;
            let differences = differences(&info.config, &want);
            if differences.is_empty() {
                Ok(())
            } else {
                Err(StreamError::Mismatch {
                    stream: settings.stream.clone(),
                    differences: differences.join("; "),
                })
            }
        }
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            js.create_stream(want).await.map_err(|e| request(&e))?;
            info!(stream = %settings.stream, "Created the NATS stream.");
            Ok(())
        }
        Err(e) => Err(request(&e)),
    }
}

/// What differs between the stream found and the one wanted, in the config's words.
fn differences(found: &stream::Config, want: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut differ = |key: &str, has: String, asks: String| {
        if has != asks {
            out.push(format!("{key}: the stream has {has}, the config asks for {asks}"));
        }
    };
    differ("subjects", format!("{:?}", found.subjects), format!("{:?}", want.subjects));
    differ(
        "max_age",
        humantime::format_duration(found.max_age).to_string(),
        humantime::format_duration(want.max_age).to_string(),
    );
    let bytes = |b: i64| if b < 0 { "no limit".to_owned() } else { b.to_string() };
    differ("max_bytes", bytes(found.max_bytes), bytes(want.max_bytes));
    differ("replicas", found.num_replicas.to_string(), want.num_replicas.to_string());
    differ(
        "duplicate_window",
        humantime::format_duration(found.duplicate_window).to_string(),
        humantime::format_duration(want.duplicate_window).to_string(),
    );
    out
}
