//! The daemon in the test's own process: the very `App` that `tickd run` builds and runs, on
//! port 0, from the same config file a [`DaemonConfig`] renders. Tests read what the daemon
//! is doing from its [`Health`] (feed states, store state and counters, open alerts) instead
//! of from log wording, and stop it with a token instead of a signal.
//!
//! Tests about the process itself (signals, exit codes, systemd notifications, log output)
//! keep running the binary through [`super::daemon::Daemon`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tickd::app::{Addrs, App};
use tickd::config::Settings;
use tickd::ops::health::{Health, HealthSnapshot};
use tickd::ops::reload::load_settings;
use tickd::store::{StoreMetrics, StoreState};
use tickd::telemetry::metrics::{DashboardMetrics, FeedState};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use super::daemon::{DaemonConfig, LogLine, parse_log, write_config};
use super::pg::TestDb;

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(20);
/// How often [`TestApp::wait_until`] looks again: its conditions may open a database
/// connection each time.
const QUERY_POLL: Duration = Duration::from_millis(50);

/// A running daemon in this process.
pub struct TestApp {
    /// The addresses it bound.
    pub addrs: Addrs,
    /// Its health, readable while it runs.
    pub health: Health,
    /// Where reloaded settings go, as SIGHUP sends them.
    pub reloads: mpsc::Sender<Settings>,
    /// The settings it runs with.
    pub settings: Settings,
    /// The test's database, when the test handed it over.
    pub db: Option<TestDb>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Builds and runs the daemon from `config` (written to `dir/<name>.toml` and loaded as
/// `tickd run --config` loads it), and returns once it runs.
pub async fn spawn_app(dir: &Path, name: &str, config: &DaemonConfig) -> TestApp {
    init_logging();
    let path = write_config(dir, name, &config.toml());
    let settings = load_settings(Some(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    spawn_settings(settings).await
}

/// Builds and runs the daemon from `settings` as they are.
pub async fn spawn_settings(settings: Settings) -> TestApp {
    init_logging();
    let app = App::build(settings.clone()).await.unwrap_or_else(|e| panic!("building the app: {e:#}"));
    let shutdown = CancellationToken::new();
    let (addrs, health, reloads) = (app.addrs(), app.health(), app.reloads());
    let task = tokio::spawn(app.run(shutdown.clone()));
    TestApp { addrs, health, reloads, settings, db: None, shutdown, task: Some(task) }
}

impl TestApp {
    /// Keeps `db` alive with the app (and hands it back through [`TestApp::db`]).
    pub fn with_db(mut self, db: TestDb) -> TestApp {
        self.db = Some(db);
        self
    }

    /// The dashboard's address.
    pub fn dashboard(&self) -> SocketAddr {
        self.addrs.dashboard.expect("the dashboard is enabled")
    }

    /// The store's counters.
    pub fn store(&self) -> &StoreMetrics {
        self.health.store.as_deref().expect("a [store] is configured")
    }

    /// A store counter now.
    pub fn store_count(&self, counter: impl Fn(&StoreMetrics) -> &AtomicU64) -> u64 {
        counter(self.store()).load(Ordering::Relaxed)
    }

    /// Waits until `cond` holds for a snapshot of the daemon's health, or panics naming `what`
    /// with the last snapshot after `limit`.
    pub async fn wait_health(&self, what: &str, limit: Duration, cond: impl Fn(&HealthSnapshot) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let snapshot = self.health.snapshot();
            if cond(&snapshot) {
                return;
            }
            if Instant::now() >= deadline {
                let conns: Vec<String> =
                    snapshot.conns.iter().map(|c| format!("{} {}", c.id, c.state.as_str())).collect();
                panic!(
                    "timed out after {limit:?} waiting for {what}; connections: {conns:?}, store: {:?}",
                    self.store_state()
                );
            }
            sleep(POLL).await;
        }
    }

    /// Waits until `cond` holds, or panics naming `what` after `limit`.
    pub async fn wait(&self, what: &str, limit: Duration, cond: impl Fn(&TestApp) -> bool) {
        let deadline = Instant::now() + limit;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
            sleep(POLL).await;
        }
    }

    /// Waits until every one of at least `n` feed connections is live.
    pub async fn wait_live(&self, n: usize, limit: Duration) {
        self.wait_health(&format!("{n} live connection(s)"), limit, |s| {
            s.conns.len() >= n && s.conns.iter().all(|c| c.state == FeedState::Live)
        })
        .await;
    }

    /// Waits until the store is in `state`.
    pub async fn wait_store(&self, state: StoreState, limit: Duration) {
        self.wait(&format!("the store {}", state.as_str()), limit, |app| app.store().state() == state).await;
    }

    /// The store's state, if there is a store.
    pub fn store_state(&self) -> Option<StoreState> {
        self.health.store.as_ref().map(|m| m.state())
    }

    /// Whether the app is still running.
    pub fn running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops it as SIGTERM does and waits at most `limit` for the stop; returns how it ended.
    pub async fn stop(&mut self, limit: Duration) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.join(limit).await
    }

    /// Waits at most `limit` for the app to end by itself; returns how it ended.
    pub async fn join(&mut self, limit: Duration) -> anyhow::Result<()> {
        let task = self.task.take().expect("the app runs");
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => panic!("the app panicked: {e}"),
            Err(_) => panic!("the app did not stop within {limit:?}"),
        }
    }

    /// A dashboard counter now.
    pub fn dashboard_count(&self, counter: impl Fn(&DashboardMetrics) -> &AtomicU64) -> u64 {
        counter(&self.health.dashboard).load(Ordering::Relaxed)
    }

    /// Checks the async `cond` (a database query, say) every [`QUERY_POLL`] until it holds;
    /// panics naming `what`, with the log, after `limit` or as soon as the app has ended,
    /// since what it waits for can then never come.
    pub async fn wait_until<F: Future<Output = bool>>(
        &self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut() -> F,
    ) {
        let deadline = Instant::now() + limit;
        while !cond().await {
            assert!(self.running(), "the app ended while waiting for {what}; log:\n{}", log_text());
            if Instant::now() >= deadline {
                let conns: Vec<String> = self
                    .health
                    .snapshot()
                    .conns
                    .iter()
                    .map(|c| format!("{} {}", c.id, c.state.as_str()))
                    .collect();
                panic!(
                    "timed out after {limit:?} waiting for {what}; connections: {conns:?}, store: {:?}; log:\n{}",
                    self.store_state(),
                    log_text()
                );
            }
            sleep(QUERY_POLL).await;
        }
    }
}

impl Drop for TestApp {
    /// A test that failed half-way still stops the daemon's tasks.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Every log line of this process as JSON (one test per process under nextest), at
/// `RUST_LOG` or `info`: what an operator reads, for assertions, never for waits.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Appends to [`LOG`].
struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The daemon's own JSON lines (`log.format = "json"`), span fields merged into `fields`.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Capture)
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .event_format(tickd::telemetry::log::FlatJson)
        .try_init();
}

/// The log lines so far.
pub fn log_lines() -> Vec<LogLine> {
    parse_log(&log_text())
}

/// The log so far, as text (for failure messages).
pub fn log_text() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}
