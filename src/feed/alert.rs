//! Raising alerts: an error log, a metric, an `Alert` tick, and the configured command.
//!
//! The command (`alert_command`) runs detached with the details in its environment:
//! `TICKD_ALERT_FEED`, `TICKD_ALERT_KIND`, `TICKD_ALERT_MESSAGE`, `TICKD_ALERT_TIME`
//! (RFC 3339-ish seconds since the epoch). A command that hangs is killed after
//! [`COMMAND_TIMEOUT`]; its failure is logged, never fatal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, warn};

use crate::bus::Bus;
use crate::metrics::FeedMetrics;
use crate::tick::{FeedEvent, Name, Tick, TickKind, now_micros, recv_micros};

/// How long an alert command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Raises alerts for one feed.
#[derive(Clone, Debug, Default)]
pub struct Alerter {
    command: Option<PathBuf>,
}

impl Alerter {
    /// An alerter that runs `command` (if any) for every alert.
    pub fn new(command: Option<PathBuf>) -> Self {
        Alerter { command }
    }

    /// Logs, counts, publishes and runs the command for one alert.
    pub async fn raise(
        &self,
        feed: &Name,
        conn: u16,
        bus: &Bus,
        metrics: &FeedMetrics,
        kind: &str,
        message: &str,
    ) {
        error!(%feed, alert = kind, "{message}");
        FeedMetrics::inc(&metrics.alerts);
        let event = FeedEvent::Alert { kind: kind.to_owned(), message: message.to_owned() };
        let tick = Tick {
            feed: feed.clone(),
            conn,
            market: Arc::from(""),
            exch_ts: None,
            recv_ts: recv_micros(),
            kind: TickKind::Feed(event),
        };
        bus.publish(Arc::new(tick)).await;
        if let Some(command) = &self.command {
            self.spawn_command(command.clone(), feed, kind, message);
        }
    }

    /// Runs the alert command (if any) for an alert raised outside a feed, such as the
    /// store's; `source` goes in `TICKD_ALERT_FEED`. Logging and counting are the caller's.
    pub fn notify(&self, source: &Name, kind: &str, message: &str) {
        if let Some(command) = &self.command {
            self.spawn_command(command.clone(), source, kind, message);
        }
    }

    fn spawn_command(&self, command: PathBuf, feed: &Name, kind: &str, message: &str) {
        let mut cmd = tokio::process::Command::new(&command);
        cmd.env("TICKD_ALERT_FEED", &**feed)
            .env("TICKD_ALERT_KIND", kind)
            .env("TICKD_ALERT_MESSAGE", message)
            .env("TICKD_ALERT_TIME", (now_micros() / 1_000_000).to_string())
            .stdin(std::process::Stdio::null())
            // Only tickd itself speaks to systemd.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .kill_on_drop(true);
        let feed = feed.clone();
        tokio::spawn(async move {
            let outcome = match cmd.spawn() {
                Ok(mut child) => tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await,
                Err(e) => {
                    warn!(%feed, command = %command.display(), error = %e, "Alert command could not start.");
                    return;
                }
            };
            match outcome {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => {
                    warn!(%feed, command = %command.display(), %status, "Alert command failed.")
                }
                Ok(Err(e)) => {
                    warn!(%feed, command = %command.display(), error = %e, "Alert command failed.")
                }
                Err(_) => {
                    warn!(%feed, command = %command.display(), "Alert command timed out; killed.")
                }
            }
        });
    }
}
