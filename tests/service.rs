//! `tickd run` as a systemd `Type=notify` service, end to end: the real binary with
//! `NOTIFY_SOCKET` naming a datagram socket the test binds (systemd's end), the simulator on
//! 127.0.0.1 and a database of the test's own. Asserts what systemd would hear: READY, STATUS,
//! WATCHDOG, RELOADING and STOPPING, in order, and watchdog pings that stop while the store
//! writer is stuck inside a statement.
//!
//! Every wait is bounded and ends as soon as the datagram it waits for arrives. Only the
//! assertion that pings stay away while the writer is stuck watches a window of time: an
//! absence cannot be awaited.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use common::daemon::{Daemon, DaemonConfig, connect, serve};
use common::pg::TestDb;
use sqlx::{Connection as _, Executor as _};
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tickd::ops::systemd::{decode, monotonic_usec};
use tokio::net::UnixDatagram;
use tokio::time::{Instant, timeout_at};

/// How long a daemon may take to connect, subscribe and report its feed live.
const LIVE: Duration = Duration::from_secs(60);
/// How long a daemon may take to exit after SIGTERM.
const STOP: Duration = Duration::from_secs(30);
/// `WATCHDOG_USEC` for these tests: pings every second, and a loop that shows no progress for
/// more than two seconds is stuck.
const WATCHDOG: Duration = Duration::from_secs(2);

/// One datagram as systemd would read it.
#[derive(Clone, Debug)]
struct Datagram {
    fields: Vec<(String, String)>,
}

impl Datagram {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn has(&self, key: &str) -> bool {
        self.get(key) == Some("1")
    }
}

/// systemd's end of the notification socket: a datagram socket in the test's directory, and
/// every datagram read from it so far.
struct Systemd {
    socket: UnixDatagram,
    seen: Vec<Datagram>,
}

impl Systemd {
    fn bind(dir: &Path) -> Systemd {
        let socket = UnixDatagram::bind(dir.join("notify")).expect("binding the notification socket");
        Systemd { socket, seen: Vec::new() }
    }

    /// The environment that makes `tickd run` report here with a watchdog of [`WATCHDOG`].
    fn env(&self, dir: &Path) -> (std::path::PathBuf, String) {
        (dir.join("notify"), WATCHDOG.as_micros().to_string())
    }

    /// The next datagram, or `None` once `deadline` passes.
    async fn next(&mut self, deadline: Instant) -> Option<Datagram> {
        let mut buf = vec![0u8; 4096];
        let n = timeout_at(deadline, self.socket.recv(&mut buf)).await.ok()?.expect("reading a datagram");
        let text = String::from_utf8(buf[..n].to_vec()).expect("datagrams are UTF-8");
        let fields = decode(&text).into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        let datagram = Datagram { fields };
        self.seen.push(datagram.clone());
        Some(datagram)
    }

    /// Reads until a datagram matches `pred` and returns its index in [`Systemd::seen`];
    /// panics naming `what`, with everything heard and the daemon's log, after `limit`.
    async fn wait_for(
        &mut self,
        daemon: &Daemon,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Datagram) -> bool,
    ) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            match self.next(deadline).await {
                Some(d) if pred(&d) => return self.seen.len() - 1,
                Some(_) => {}
                None => panic!(
                    "systemd heard no {what} within {limit:?}; it heard {:#?}\nlog:\n{}",
                    self.seen,
                    daemon.log_text()
                ),
            }
        }
    }

    /// Reads everything still queued (the daemon has exited).
    async fn drain(&mut self) {
        while self.next(Instant::now() + Duration::from_millis(200)).await.is_some() {}
    }
}

fn status_contains(d: &Datagram, text: &str) -> bool {
    d.get("STATUS").is_some_and(|s| s.contains(text))
}

/// A simulator of `markets` markets at `rate` events per second.
fn simulator(markets: usize, rate: u32) -> Simulator {
    Simulator::start(SimConfig {
        markets: market_names(markets),
        rate,
        heartbeat: Duration::from_secs(60),
        ..SimConfig::default()
    })
}

/// Starts `tickd run` reporting to `systemd`.
fn start(dir: &Path, config: &DaemonConfig, systemd: &Systemd) -> Daemon {
    let (socket, usec) = systemd.env(dir);
    let envs = [("NOTIFY_SOCKET", socket.as_os_str()), ("WATCHDOG_USEC", OsStr::new(&usec))];
    Daemon::start_with_env(dir, "tickd", config, &envs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_watchdog_reloading_and_stopping_in_order() {
    // Arrange
    let db = TestDb::new().await;
    let sim = simulator(5, 50);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = DaemonConfig::new(&dir.path().join("state"), &db.url, &serve(&sim).await, &sim.markets());
    let mut systemd = Systemd::bind(dir.path());

    // Act: start, wait for the feed to be live, reload, stop.
    let mut daemon = start(dir.path(), &config, &systemd);
    let ready = systemd.wait_for(&daemon, "READY=1", LIVE, |d| d.has("READY")).await;
    let live = systemd
        .wait_for(&daemon, "a status with the feed live", LIVE, |d| status_contains(d, "1/1 feeds live"))
        .await;
    let ping = systemd.wait_for(&daemon, "WATCHDOG=1", LIVE, |d| d.has("WATCHDOG")).await;

    let before_reload = monotonic_usec();
    daemon.hang_up();
    let reloading = systemd.wait_for(&daemon, "RELOADING=1", LIVE, |d| d.has("RELOADING")).await;
    let reload_ready = systemd.wait_for(&daemon, "READY=1 after the reload", LIVE, |d| d.has("READY")).await;
    let after_reload = monotonic_usec();
    let ping_after_reload =
        systemd.wait_for(&daemon, "WATCHDOG=1 after the reload", LIVE, |d| d.has("WATCHDOG")).await;

    daemon.terminate();
    let stopping = systemd.wait_for(&daemon, "STOPPING=1", STOP, |d| d.has("STOPPING")).await;
    let exit = daemon.wait_exit(STOP).await;
    systemd.drain().await;

    // Assert
    let seen = &systemd.seen;
    assert_eq!(ready, 0, "READY=1 comes first: {seen:#?}");
    assert!(seen[ready].get("STATUS").is_some_and(|s| s.contains("feeds live")), "{seen:#?}");
    assert!(ready < live && live < ping, "READY, then STATUS, then WATCHDOG: {seen:#?}");

    let at: u64 = seen[reloading]
        .get("MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("RELOADING=1 without a numeric MONOTONIC_USEC: {:?}", seen[reloading]));
    assert!(
        (before_reload..=after_reload).contains(&at),
        "MONOTONIC_USEC {at} outside the reload: {seen:#?}"
    );
    assert!(reloading < reload_ready && reload_ready < stopping, "{seen:#?}");
    assert_eq!(
        seen[..reloading].iter().filter(|d| d.has("READY")).count(),
        1,
        "one READY=1 before the reload: {seen:#?}"
    );
    assert!(ping_after_reload < stopping);

    assert!(
        seen[stopping + 1..].iter().all(|d| !d.has("READY") && !d.has("WATCHDOG")),
        "nothing but STOPPING after STOPPING=1: {seen:#?}"
    );
    assert_eq!(exit, Some(0), "log:\n{}", daemon.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_stop_while_the_store_writer_is_stuck_in_a_statement_and_resume_after() {
    // Arrange: a write may take as long as it likes, so that a locked table holds the writer
    // inside its statement instead of timing it out.
    let db = TestDb::new().await;
    let sim = simulator(10, 200);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config =
        DaemonConfig::new(&dir.path().join("state"), &db.url, &serve(&sim).await, &sim.markets());
    config.store("write_timeout", "\"10min\"");
    let mut systemd = Systemd::bind(dir.path());
    let mut daemon = start(dir.path(), &config, &systemd);
    systemd
        .wait_for(&daemon, "a status with the feed live and the store ready", LIVE, |d| {
            status_contains(d, "1/1 feeds live; store ready")
        })
        .await;
    systemd.wait_for(&daemon, "WATCHDOG=1", LIVE, |d| d.has("WATCHDOG")).await;

    let withheld_before = daemon.count(|l| l.message().starts_with("Watchdog withheld"));

    // Act: `trades` locked in an open transaction. The writer writes a batch in one statement
    // that names every tick table, `trades` among them, so its next write waits for the lock
    // (and holds nothing this transaction waits for: no deadlock).
    let mut lock = connect(&db.url).await;
    lock.execute("BEGIN").await.expect("BEGIN");
    lock.execute("LOCK TABLE trades IN ACCESS EXCLUSIVE MODE").await.expect("LOCK TABLE");
    let withheld = systemd
        .wait_for(&daemon, "a status naming the stuck writer", LIVE, |d| {
            status_contains(d, "watchdog withheld: store writer stuck")
        })
        .await;
    // Three watchdog timeouts with the writer still stuck: systemd would have restarted tickd.
    let window_end = Instant::now() + 3 * WATCHDOG;
    while systemd.next(window_end).await.is_some() {}
    let pings_while_stuck = systemd.seen[withheld..].iter().filter(|d| d.has("WATCHDOG")).count();
    let statuses_while_stuck = systemd.seen[withheld..].iter().filter(|d| d.get("STATUS").is_some()).count();

    lock.execute("ROLLBACK").await.expect("ROLLBACK");
    let resumed =
        systemd.wait_for(&daemon, "WATCHDOG=1 after the lock is gone", LIVE, |d| d.has("WATCHDOG")).await;
    let _ = lock.close().await;
    let exit = daemon.stop(STOP).await;

    // Assert
    assert_eq!(pings_while_stuck, 0, "pings while the writer was stuck: {:#?}", &systemd.seen[withheld..]);
    assert!(statuses_while_stuck >= 1);
    let error = daemon
        .last("Watchdog withheld: a loop made no progress for longer than the watchdog allows; systemd restarts tickd unless it recovers.")
        .unwrap_or_else(|| panic!("no error line for the withheld watchdog; log:\n{}", daemon.log_text()));
    assert_eq!(error.level(), "ERROR");
    assert!(error.str("stuck").starts_with("store writer"), "{}", error.raw);
    assert_eq!(
        daemon.count(|l| l.message().starts_with("Watchdog withheld")),
        withheld_before + 1,
        "the stuck writer is logged once"
    );
    assert!(daemon.last("Every loop makes progress again; watchdog pings resumed.").is_some());
    assert!(
        systemd.seen[resumed..].iter().all(|d| !status_contains(d, "withheld")),
        "no stuck loop reported after the pings resumed: {:#?}",
        &systemd.seen[resumed..]
    );
    assert_eq!(exit, Some(0), "log:\n{}", daemon.log_text());
}
