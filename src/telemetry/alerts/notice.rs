//! One alert or recovery as it leaves tickd: the webhook's JSON body and the environment of
//! `alert_command`.
//!
//! The command runs detached with the details in its environment: `TICKD_ALERT_KIND`,
//! `TICKD_ALERT_STATE` (`firing`, `resolved`, or `open_at_stop` when tickd stops with the
//! incident open), `TICKD_ALERT_SOURCE` (`kalshi/0`,
//! `store`), `TICKD_ALERT_FEED` (the feed's name, or `store`), `TICKD_ALERT_MESSAGE`,
//! `TICKD_ALERT_TIME` (seconds since the Unix epoch) and `TICKD_ALERT_ID` (the same for an
//! alert and its recovery). A command that hangs is killed after [`COMMAND_TIMEOUT`]; its
//! failure is logged and counted, never fatal.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tracing::warn;

use super::AlertMetrics;
use crate::tick::Rfc3339Millis;

/// How long an alert command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a notice opens or closes an incident, or says tickd stops while it is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeState {
    /// Something is wrong (sent again, with the same id, when the next run finds it still so).
    Firing,
    /// It is over.
    Resolved,
    /// tickd is stopping with the incident still open: no one watches it until the next run,
    /// which resolves it or raises it again (same id).
    OpenAtStop,
}

impl NoticeState {
    /// `firing`, `resolved` or `open_at_stop`.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeState::Firing => "firing",
            NoticeState::Resolved => "resolved",
            NoticeState::OpenAtStop => "open_at_stop",
        }
    }
}

/// One alert or recovery: the webhook posts it as JSON, the command gets it in its
/// environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Notice {
    /// `kind:source:start`, the same for an alert and its recovery.
    pub id: String,
    /// `feed_stale`, `database_unreachable`, `spool_filling`, `max_reconnects`...
    pub kind: String,
    /// What it is about: a feed connection (`kalshi/0`) or `store`.
    pub source: String,
    /// The feed's name (`kalshi`), or `store`.
    pub feed: String,
    /// `firing` or `resolved`.
    pub state: NoticeState,
    /// Details for a human.
    pub message: String,
    /// When this notice was made, RFC 3339 UTC.
    pub time: String,
    /// When the incident started (its alert), RFC 3339 UTC.
    pub started: String,
    /// For a recovery, or an incident open as tickd stops, how long the alert has been open, in
    /// whole seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u64>,
    /// The machine's host name.
    pub host: String,
    /// When this notice was made, µs since the Unix epoch.
    #[serde(skip)]
    pub time_us: i64,
}

impl Notice {
    /// A notice about `source` made at `time_us`, for an incident that started at `started_us`.
    pub fn new(
        kind: &str,
        source: &str,
        feed: &str,
        state: NoticeState,
        message: &str,
        started_us: i64,
        time_us: i64,
    ) -> Notice {
        let duration_seconds = (state != NoticeState::Firing)
            .then(|| u64::try_from(time_us.saturating_sub(started_us) / 1_000_000).unwrap_or(0));
        Notice {
            id: format!("{kind}:{source}:{started_us}"),
            kind: kind.to_owned(),
            source: source.to_owned(),
            feed: feed.to_owned(),
            state,
            message: message.to_owned(),
            time: rfc3339(time_us),
            started: rfc3339(started_us),
            duration_seconds,
            host: host_name().to_owned(),
            time_us,
        }
    }

    /// The webhook's body.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, integers and an enum: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The command's environment.
    pub fn env(&self) -> [(&'static str, String); 7] {
        [
            ("TICKD_ALERT_KIND", self.kind.clone()),
            ("TICKD_ALERT_STATE", self.state.as_str().to_owned()),
            ("TICKD_ALERT_SOURCE", self.source.clone()),
            ("TICKD_ALERT_FEED", self.feed.clone()),
            ("TICKD_ALERT_MESSAGE", self.message.clone()),
            ("TICKD_ALERT_TIME", self.time_us.div_euclid(1_000_000).to_string()),
            ("TICKD_ALERT_ID", self.id.clone()),
        ]
    }
}

/// Runs `command` for `notice`, detached: its exit is awaited (at most [`COMMAND_TIMEOUT`])
/// on a task of its own, and a failure is logged and counted in `metrics`.
pub fn run_command(command: &Path, notice: &Notice, metrics: Arc<AlertMetrics>) {
    let mut cmd = tokio::process::Command::new(command);
    cmd.envs(notice.env())
        .stdin(std::process::Stdio::null())
        // Only tickd itself speaks to systemd.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .kill_on_drop(true);
    let command = command.to_owned();
    let (kind, source) = (notice.kind.clone(), notice.source.clone());
    let failed = move |why: &dyn std::fmt::Display| {
        metrics.command_failures.fetch_add(1, Ordering::Relaxed);
        warn!(alert = %kind, %source, command = %command.display(), error = %why, "Alert command failed.");
    };
    match cmd.spawn() {
        Ok(mut child) => {
            tokio::spawn(async move {
                match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
                    Ok(Ok(status)) if status.success() => {}
                    Ok(Ok(status)) => failed(&status),
                    Ok(Err(e)) => failed(&e),
                    Err(_) => failed(&format!("still running after {COMMAND_TIMEOUT:?}; killed")),
                }
            });
        }
        Err(e) => failed(&format!("cannot start: {e}")),
    }
}

/// This machine's name, read once (`/proc/sys/kernel/hostname`, else `/etc/hostname`); empty
/// when neither can be read.
pub fn host_name() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    })
}

/// µs since the Unix epoch as RFC 3339 UTC with milliseconds (`2022-11-22T20:44:01.000Z`).
pub fn rfc3339(us: i64) -> String {
    Rfc3339Millis(us.div_euclid(1000)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_669_149_841_000_000), "2022-11-22T20:44:01.000Z");
        assert_eq!(rfc3339(951_782_400_123_456), "2000-02-29T00:00:00.123Z");
    }

    #[test]
    fn an_alert_and_its_recovery_share_an_id_and_the_recovery_says_how_long() {
        let start = 1_700_000_000_000_000;
        let firing =
            Notice::new("feed_stale", "kalshi/1", "kalshi", NoticeState::Firing, "no data", start, start);
        let resolved = Notice::new(
            "feed_stale",
            "kalshi/1",
            "kalshi",
            NoticeState::Resolved,
            "data again",
            start,
            start + 95_500_000,
        );

        let json: serde_json::Value = serde_json::from_slice(&resolved.to_json()).unwrap();

        assert_eq!(firing.id, resolved.id);
        assert_eq!(json["kind"], "feed_stale");
        assert_eq!(json["source"], "kalshi/1");
        assert_eq!(json["feed"], "kalshi");
        assert_eq!(json["state"], "resolved");
        assert_eq!(json["message"], "data again");
        assert_eq!(json["time"], "2023-11-14T22:14:55.500Z");
        assert_eq!(json["started"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json["duration_seconds"], 95);
        assert!(json.get("time_us").is_none());
        let fired: serde_json::Value = serde_json::from_slice(&firing.to_json()).unwrap();
        assert!(fired.get("duration_seconds").is_none(), "{fired}");
        let env: std::collections::HashMap<_, _> = resolved.env().into_iter().collect();
        assert_eq!(env["TICKD_ALERT_STATE"], "resolved");
        assert_eq!(env["TICKD_ALERT_TIME"], "1700000095");
        assert_eq!(env["TICKD_ALERT_FEED"], "kalshi");
    }
}
