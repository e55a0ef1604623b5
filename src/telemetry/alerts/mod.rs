//! The alert registry: each incident is one alert and, once it is over, one recovery notice.
//!
//! Every part of the daemon raises alerts here, without knowing who decides or delivers:
//! - a feed actor raises `max_reconnects` and `credentials_rejected` through its [`Alerter`],
//!   and resolves them once its connection has stayed healthy for `backoff.healthy_after`; it
//!   raises `book_unrecoverable` when its protocol session gives up resyncing a book for a
//!   while, and resolves it once every book of the connection is sound again; it raises
//!   `market_frozen` when a market stopped updating while REST showed it changing, and
//!   resolves it once every such market of the connection updates again;
//! - the store writer sends its one-shot notices (`spool_full`, `store_schema`,
//!   `batch_rejected`, `spool_unreadable`: no incident, no recovery);
//! - the NATS publisher opens `nats_unreachable` while it spools and resolves it once the
//!   spool is replayed, and sends the one-shot `nats_loss` when its spool is full;
//! - the alert monitor ([`crate::ops::alerts`]) raises and resolves `feed_stale`,
//!   `database_unreachable`, `spool_filling` and `rest_unreachable` from the daemon's health.
//!
//! An open incident is keyed by (kind, source); raising it again while open does nothing.
//! Every notice is one log line (error when firing, warn when resolved, with `alert`, `source`
//! and `feed`), counted in [`AlertMetrics`] (`/metrics`), handed to `alert_command` and queued
//! for an outlet (the webhook, which [`crate::ops::alerts`] starts); nothing here ever waits
//! for a receiver.
//!
//! Across restarts: the open incidents are kept in `state_dir/alerts.json` ([`kept`]), written
//! anew after every change and at stop. A stop with incidents open sends one `open_at_stop`
//! notice for each ([`AlertRegistry::stopping`]). The next run takes them back as *carried
//! over*: still open, with their id and start, until judged again. Raising one then sends its
//! alert again (same id: the condition outlived the restart); resolving it sends its recovery.
//! Whoever raises a kind judges it again: the feed actors adopt theirs
//! ([`AlertRegistry::open_kinds`]; a feed actor restarted after a panic does the same), and
//! the alert monitor its own.

pub mod alerter;
pub mod kept;
pub mod notice;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::tick::{ConnId, now_micros};
use notice::{Notice, NoticeState, run_command};

pub use alerter::Alerter;

/// A feed connection delivers no market data while connected.
pub const FEED_STALE: &str = "feed_stale";
/// The store cannot reach (or cannot use) the database.
pub const DATABASE_UNREACHABLE: &str = "database_unreachable";
/// The spool is filling towards `spool_max_bytes`.
pub const SPOOL_FILLING: &str = "spool_filling";
/// A feed connection failed `max_reconnects` times in a row.
pub const MAX_RECONNECTS: &str = "max_reconnects";
/// The exchange rejected a feed's credentials (HTTP 401).
pub const CREDENTIALS_REJECTED: &str = "credentials_rejected";
/// A feed's REST requests have been failing for `alerts.rest_unreachable_after`.
pub const REST_UNREACHABLE: &str = "rest_unreachable";
/// A market's book stayed crossed or negative after its fresh snapshots: it is kept stale and
/// tried again later. One incident per connection, resolved once no book of it is stale.
pub const BOOK_UNRECOVERABLE: &str = "book_unrecoverable";
/// A market of a live connection stopped updating while the exchange's REST API showed it
/// changing; tickd asked for it afresh. One incident per connection, resolved once every
/// market found frozen on it updates again or agrees with REST, and none has been frozen for
/// `market_quiet_after` since.
pub const MARKET_FROZEN: &str = "market_frozen";

/// The NATS publisher cannot reach the servers (or its stream): ticks go to its spool. Opened
/// when the spooling begins, resolved once the spool is replayed.
pub const NATS_UNREACHABLE: &str = "nats_unreachable";
/// The NATS publisher's spool was full: ticks were not published (one-shot, with a `nats_loss`
/// row in the gap ledger).
pub const NATS_LOSS: &str = "nats_loss";

/// The source of the store's alerts.
pub const STORE: &str = "store";
/// The source of the NATS publisher's alerts.
pub const NATS: &str = "nats";

/// Alert counters for `/metrics`, per (kind, source), and the webhook's outcomes.
#[derive(Debug, Default)]
pub struct AlertMetrics {
    series: Mutex<BTreeMap<(String, String), Series>>,
    /// Notices the webhook accepted (2xx).
    pub webhook_delivered: AtomicU64,
    /// Notices the webhook never accepted (retries exhausted, a final answer, or stopping).
    pub webhook_failed: AtomicU64,
    /// Notices dropped because the webhook queue was full.
    pub webhook_dropped: AtomicU64,
    /// Runs of `alert_command` that failed, timed out or could not start.
    pub command_failures: AtomicU64,
}

/// The counts of one (kind, source).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Series {
    /// Alerts raised (incidents opened, and one-shot store alerts).
    pub fired: u64,
    /// Incidents resolved.
    pub resolved: u64,
    /// An incident is open now.
    pub active: bool,
}

impl AlertMetrics {
    /// Every (kind, source) seen so far, sorted.
    pub fn series(&self) -> Vec<((String, String), Series)> {
        lock(&self.series).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn update(&self, kind: &str, source: &str, f: impl FnOnce(&mut Series)) {
        f(lock(&self.series).entry((kind.to_owned(), source.to_owned())).or_default());
    }
}

/// Locks `m`; a panic elsewhere while it was held leaves plain data behind, still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An open incident.
#[derive(Clone, Debug)]
struct Open {
    feed: String,
    started_us: i64,
    /// Its alert's message, for the notice at stop.
    message: String,
    /// Carried over from the last run and not judged again yet.
    carried_over: bool,
}

struct Inner {
    /// Open incidents by (kind, source).
    open: Mutex<BTreeMap<(String, String), Open>>,
    metrics: Arc<AlertMetrics>,
    command: Option<PathBuf>,
    /// Queue of the webhook task, when a webhook is configured.
    webhook: Option<mpsc::Sender<Notice>>,
    /// Stops the webhook task (after a bounded drain).
    close: CancellationToken,
    webhook_task: Mutex<Option<JoinHandle<()>>>,
    /// Where the open incidents are kept across restarts, once [`AlertRegistry::keep_in`] set it.
    kept: Mutex<Option<PathBuf>>,
    /// Held while the kept file is written, so that writes do not interleave.
    writing: Mutex<()>,
}

/// The alert registry: open incidents, their metrics, the command and an outlet (the webhook).
/// Cheap to clone; every clone is the same registry.
#[derive(Clone)]
pub struct AlertRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AlertRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertRegistry").field("active", &self.active()).finish()
    }
}

impl Default for AlertRegistry {
    fn default() -> Self {
        AlertRegistry::with_command(None)
    }
}

impl AlertRegistry {
    /// A registry whose notices go to the log, its metrics and `command`; no webhook, no task.
    pub fn with_command(command: Option<PathBuf>) -> AlertRegistry {
        Self::build(command, None)
    }

    /// A registry whose notices also go to an outlet's queue (the webhook's), which the
    /// caller then drains in a task of its own: see [`AlertRegistry::outlet`] and
    /// [`AlertRegistry::set_outlet_task`].
    pub fn with_outlet(command: Option<PathBuf>, queue: mpsc::Sender<Notice>) -> AlertRegistry {
        Self::build(command, Some(queue))
    }

    /// What an outlet's task needs: the token that tells it to stop (after a bounded drain)
    /// and the counters of its deliveries.
    pub fn outlet(&self) -> (CancellationToken, Arc<AlertMetrics>) {
        (self.inner.close.clone(), self.inner.metrics.clone())
    }

    /// The outlet's task, awaited by [`AlertRegistry::close`].
    pub fn set_outlet_task(&self, task: JoinHandle<()>) {
        *lock(&self.inner.webhook_task) = Some(task);
    }

    fn build(command: Option<PathBuf>, webhook: Option<mpsc::Sender<Notice>>) -> AlertRegistry {
        AlertRegistry {
            inner: Arc::new(Inner {
                open: Mutex::default(),
                metrics: Arc::default(),
                command,
                webhook,
                close: CancellationToken::new(),
                webhook_task: Mutex::default(),
                kept: Mutex::default(),
                writing: Mutex::default(),
            }),
        }
    }

    /// An [`Alerter`] for feeds and the store that raises through this registry.
    pub fn alerter(&self) -> Alerter {
        Alerter::routed(self.clone())
    }

    /// The counters for `/metrics`.
    pub fn metrics(&self) -> Arc<AlertMetrics> {
        self.inner.metrics.clone()
    }

    /// The open incidents as `kind:source` (`feed_stale:kalshi/1`, `database_unreachable:store`),
    /// sorted; for a status line.
    pub fn active(&self) -> Vec<String> {
        lock(&self.inner.open).keys().map(|(kind, source)| format!("{kind}:{source}")).collect()
    }

    /// Opens an incident about `source` (`kalshi/0`, `store`) and sends its alert. Returns
    /// false, and sends nothing, when one of this kind is already open for it. One carried
    /// over from the last run is raised again: its alert is sent anew with its first id and
    /// start, since the condition outlived the restart.
    pub fn fire(&self, kind: &str, source: &str, message: &str) -> bool {
        let now = now_micros();
        let feed = ConnId::feed_of(source).to_owned();
        let (started_us, carried_over) = {
            let mut open = lock(&self.inner.open);
            let key = (kind.to_owned(), source.to_owned());
            match open.get_mut(&key) {
                Some(known) if !known.carried_over => return false,
                Some(known) => {
                    known.carried_over = false;
                    known.message = message.to_owned();
                    (known.started_us, true)
                }
                None => {
                    let incident = Open {
                        feed: feed.clone(),
                        started_us: now,
                        message: message.to_owned(),
                        carried_over: false,
                    };
                    open.insert(key, incident);
                    (now, false)
                }
            }
        };
        self.inner.metrics.update(kind, source, |s| {
            s.fired += 1;
            s.active = true;
        });
        error!(alert = kind, %source, %feed, detail = %message, carried_over, "Alert raised.");
        self.dispatch(Notice::new(kind, source, &feed, NoticeState::Firing, message, started_us, now));
        self.persist();
        true
    }

    /// Closes the open incident of `kind` about `source` and sends its recovery. Returns false,
    /// and sends nothing, when none is open.
    pub fn resolve(&self, kind: &str, source: &str, message: &str) -> bool {
        let Some(open) = lock(&self.inner.open).remove(&(kind.to_owned(), source.to_owned())) else {
            return false;
        };
        let now = now_micros();
        self.inner.metrics.update(kind, source, |s| {
            s.resolved += 1;
            s.active = false;
        });
        let notice =
            Notice::new(kind, source, &open.feed, NoticeState::Resolved, message, open.started_us, now);
        warn!(
            alert = kind,
            %source,
            feed = %open.feed,
            detail = %message,
            open_s = notice.duration_seconds.unwrap_or(0),
            "Alert resolved."
        );
        self.dispatch(notice);
        self.persist();
        true
    }

    /// The kinds open about `source`, for an actor that starts (again) and judges them from
    /// now on: after a panic, or after a restart that carried them over.
    pub fn open_kinds(&self, source: &str) -> Vec<String> {
        lock(&self.inner.open).keys().filter(|(_, s)| s == source).map(|(k, _)| k.clone()).collect()
    }

    /// The incidents carried over from the last run and not judged again yet, as
    /// (kind, source, how long open so far).
    pub fn carried_over(&self) -> Vec<(String, String, Duration)> {
        let now = now_micros();
        lock(&self.inner.open)
            .iter()
            .filter(|(_, open)| open.carried_over)
            .map(|((kind, source), open)| {
                let open_for = u64::try_from(now.saturating_sub(open.started_us)).unwrap_or(0);
                (kind.clone(), source.clone(), Duration::from_micros(open_for))
            })
            .collect()
    }

    /// Keeps the open incidents in `file` from now on (written after every change), and takes
    /// back those a previous run left open there, as carried over. Returns how many it took
    /// back. A file that cannot be read is logged and replaced.
    pub fn keep_in(&self, file: PathBuf) -> usize {
        let taken = match kept::read(&file) {
            Ok(incidents) => incidents,
            Err(e) => {
                warn!(file = %file.display(), error = %e, "Alerts left open by the last run cannot be read; they are not judged again.");
                Vec::new()
            }
        };
        let mut count = 0;
        {
            let mut open = lock(&self.inner.open);
            for incident in taken {
                let key = (incident.kind.clone(), incident.source.clone());
                if open.contains_key(&key) {
                    continue;
                }
                warn!(alert = %incident.kind, source = %incident.source, feed = %incident.feed, detail = %incident.message, "Alert left open by the last run; judged again.");
                self.inner.metrics.update(&incident.kind, &incident.source, |s| s.active = true);
                let known = Open {
                    feed: incident.feed,
                    started_us: incident.started_us,
                    message: incident.message,
                    carried_over: true,
                };
                open.insert(key, known);
                count += 1;
            }
        }
        *lock(&self.inner.kept) = Some(file);
        count
    }

    /// tickd is stopping: one `open_at_stop` notice for every incident still open, and the
    /// open incidents written to the kept file for the next run. Call once nothing raises or
    /// resolves any more, before [`AlertRegistry::close`].
    pub async fn stopping(&self) {
        let now = now_micros();
        let open: Vec<((String, String), Open)> =
            lock(&self.inner.open).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for ((kind, source), open) in open {
            let message = format!(
                "tickd is stopping with this alert open ({}); the next start resolves it or raises it again",
                open.message
            );
            warn!(alert = %kind, %source, feed = %open.feed, detail = %open.message, "Alert still open as tickd stops.");
            self.dispatch(Notice::new(
                &kind,
                &source,
                &open.feed,
                NoticeState::OpenAtStop,
                &message,
                open.started_us,
                now,
            ));
        }
        let registry = self.clone();
        // File I/O, off the async workers; awaited, so that the file is whole before exit.
        if let Err(e) = tokio::task::spawn_blocking(move || registry.write_kept()).await {
            error!(error = %e, "Keeping the open alerts failed.");
        }
    }

    /// Writes the open incidents to the kept file, soon and off the caller's thread (on the
    /// runtime's blocking pool; in place without a runtime).
    fn persist(&self) {
        if lock(&self.inner.kept).is_none() {
            return;
        }
        let registry = self.clone();
        match tokio::runtime::Handle::try_current() {
            // Each write takes the set as it is when it runs, so the last one is the newest.
            Ok(runtime) => drop(runtime.spawn_blocking(move || registry.write_kept())),
            Err(_) => registry.write_kept(),
        }
    }

    /// Writes the open incidents as they are now to the kept file, atomically.
    fn write_kept(&self) {
        let Some(file) = lock(&self.inner.kept).clone() else { return };
        let _writing = lock(&self.inner.writing);
        let incidents: Vec<kept::KeptIncident> = lock(&self.inner.open)
            .iter()
            .map(|((kind, source), open)| kept::KeptIncident {
                kind: kind.clone(),
                source: source.clone(),
                feed: open.feed.clone(),
                started_us: open.started_us,
                message: open.message.clone(),
            })
            .collect();
        // Nothing open, and nothing kept from before: no file to make.
        if incidents.is_empty() && !file.exists() {
            return;
        }
        if let Err(e) = kept::write(&file, &incidents) {
            error!(file = %file.display(), error = %e, "Open alerts could not be kept; a restart now would forget them.");
        }
    }

    /// A one-shot alert (no incident, no recovery), such as the store's `spool_full`: counted
    /// and sent. Logging is the caller's.
    pub fn event(&self, kind: &str, source: &str, message: &str) {
        let now = now_micros();
        let feed = ConnId::feed_of(source).to_owned();
        self.inner.metrics.update(kind, source, |s| s.fired += 1);
        self.dispatch(Notice::new(kind, source, &feed, NoticeState::Firing, message, now, now));
    }

    /// Resolves every open incident about `source`.
    pub fn resolve_all(&self, source: &str, message: &str) {
        let kinds: Vec<String> =
            lock(&self.inner.open).keys().filter(|(_, s)| s == source).map(|(k, _)| k.clone()).collect();
        for kind in kinds {
            self.resolve(&kind, source, message);
        }
    }

    /// Runs the command and queues the webhook; never waits.
    fn dispatch(&self, notice: Notice) {
        if let Some(command) = &self.inner.command {
            run_command(command, &notice, self.inner.metrics.clone());
        }
        if let Some(tx) = &self.inner.webhook {
            match tx.try_send(notice) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(notice)) => {
                    self.inner.metrics.webhook_dropped.fetch_add(1, Ordering::Relaxed);
                    error!(alert = %notice.kind, source = %notice.source, state = notice.state.as_str(), queued = tx.max_capacity(), "Alert webhook queue full; this notice is dropped.");
                }
                Err(mpsc::error::TrySendError::Closed(notice)) => {
                    self.inner.metrics.webhook_dropped.fetch_add(1, Ordering::Relaxed);
                    warn!(alert = %notice.kind, source = %notice.source, state = notice.state.as_str(), "Alert webhook stopped; this notice is not posted.");
                }
            }
        }
    }

    /// Stops the webhook task, which first delivers what is queued for at most
    /// `ops::alerts::webhook::DRAIN_LIMIT`. Later notices still reach the log, metrics and command.
    pub async fn close(&self) {
        self.inner.close.cancel();
        let task = lock(&self.inner.webhook_task).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            error!(error = %e, "Alert webhook task ended abnormally.");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn an_incident_is_raised_once_resolved_once_and_listed_while_open() {
        let monitor = AlertRegistry::default();

        assert!(monitor.fire(MAX_RECONNECTS, "kalshi/1", "10 failures"));
        assert!(!monitor.fire(MAX_RECONNECTS, "kalshi/1", "again"), "already open");
        assert!(monitor.fire(FEED_STALE, "kalshi/0", "silent"));
        assert_eq!(monitor.active(), ["feed_stale:kalshi/0", "max_reconnects:kalshi/1"]);
        assert!(monitor.resolve(MAX_RECONNECTS, "kalshi/1", "healthy"));
        assert!(!monitor.resolve(MAX_RECONNECTS, "kalshi/1", "healthy"), "nothing open");
        monitor.event("spool_full", STORE, "dropping");

        assert_eq!(monitor.active(), ["feed_stale:kalshi/0"]);
        let series: HashMap<_, _> = monitor.metrics().series().into_iter().collect();
        let get = |k: &str, s: &str| series[&(k.to_owned(), s.to_owned())];
        assert_eq!(get(MAX_RECONNECTS, "kalshi/1"), Series { fired: 1, resolved: 1, active: false });
        assert_eq!(get(FEED_STALE, "kalshi/0"), Series { fired: 1, resolved: 0, active: true });
        assert_eq!(get("spool_full", STORE), Series { fired: 1, resolved: 0, active: false });
    }
}
