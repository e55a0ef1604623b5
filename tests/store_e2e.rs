//! The whole system, end to end: the simulator (in this process, on 127.0.0.1) feeds the
//! daemon, which records into PostgreSQL. Each test has its own database (or its own server,
//! where the test stops it), its own state directory and its own simulator, and asserts on
//! what an operator sees: rows, the store's counters, log lines and exit codes.
//!
//! Most tests run the daemon in this process ([`spawn_app`]: the very `App` that `tickd run`
//! runs, from the same config file). They stop it with its token, which is what SIGTERM does,
//! and a clean stop (`Ok`) is what exit code 0 reports; a restart is one app stopped and
//! another spawned on the same state directory. The `tickd` binary still runs as a child
//! process where the process is what is tested: SIGTERM under load and with the database
//! away, each with its exit code, and `tickd migrate`'s exit codes (the `tickd run` part of
//! that test runs in this process).
//!
//! "Every trade sent" means [`Simulator::trades_sent`]: the trades written to a client socket.
//! After the simulator drops a socket, everything written to it still reaches tickd: the
//! kernel delivers queued bytes before the FIN, and only unread bytes on the simulator's side
//! would turn the close into a reset. Once subscribed, tickd sends nothing (its pings are a
//! minute apart in these configs, as are the simulator's), so there is none, and a trade
//! written is a trade received. Before comparing, a test pauses the simulator and waits until
//! it has caught up ([`Simulator::caught_up`]): from then on `trades_sent` is final.
//!
//! Every wait is a bounded poll of state, never of log wording: the store's state and
//! counters (the app's [`tickd::ops::health::Health`], or a process's `/metrics`), rows, spool
//! files, the simulator. Log lines are read once a wait is over, for what they say. Only the
//! thirty-second outage sleeps, since the outage itself is what it tests.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::app::{TestApp, log_lines, log_text, spawn_app};
use common::daemon::{
    Daemon, DaemonConfig, EventRow, LogLine, event_count, feed_events, migrated, run_command, scalar, serve,
    spool_segments, stopped_on, texts, us, wait_caught_up, wait_sent_trades_stored, write_config,
};
use common::pg::{TestDb, private_server};
use common::stream::http_get;
use sqlx::{AssertSqlSafe, Row};
use tickd::dev::localpg::{LocalPg, LocalPgOptions};
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tickd::store::StoreState;
use tickd::tick::now_micros;

/// How long a daemon may take to connect, subscribe and build its books.
const LIVE: Duration = Duration::from_secs(60);
/// How long a daemon may take to stop: a process to exit after SIGTERM, an app after its
/// token.
const STOP: Duration = Duration::from_secs(30);
/// How long the database may take to catch up with what the simulator wrote.
const SETTLE: Duration = Duration::from_secs(60);

/// A simulator of `markets` at `rate` events per second, whose heartbeats are too rare to
/// matter (see the module doc).
fn simulator(markets: Vec<String>, rate: u32) -> Simulator {
    Simulator::start(SimConfig { markets, rate, heartbeat: Duration::from_secs(60), ..SimConfig::default() })
}

/// A test's own directory: config files, logs and the state directory.
fn workdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Rows in `trades`, 0 before tickd created the table.
async fn trade_count(url: &str) -> i64 {
    if !migrated(url).await {
        return 0;
    }
    scalar(url, "SELECT count(*) FROM trades").await
}

/// Whether `url` holds `lives` live events and more than `trades` trades.
async fn live_with_trades(url: &str, lives: i64, trades: i64) -> bool {
    event_count(url, "live").await >= lives && trade_count(url).await > trades
}

/// Waits until `url` holds `lives` live events (one per connection that went live).
async fn wait_live(app: &TestApp, url: &str, lives: i64) {
    let what = format!("{lives} live event(s)");
    app.wait_until(&what, LIVE, || async { event_count(url, "live").await >= lives }).await;
}

/// Waits until `url` holds `lives` live events and more than `trades` trades.
async fn wait_live_with_trades(app: &TestApp, url: &str, lives: i64, trades: i64) {
    let what = format!("{lives} live event(s) and more than {trades} trades");
    app.wait_until(&what, LIVE, || live_with_trades(url, lives, trades)).await;
}

/// Waits until the store writes directly again with an empty spool, having replayed more
/// than `replayed_before` ticks from it: what an outage spooled is in the database.
async fn wait_spool_replayed(app: &TestApp, replayed_before: u64) {
    app.wait_until("the spool replayed", SETTLE, || async {
        app.store_state() == Some(StoreState::Ready)
            && app.store_count(|m| &m.spool_batches) == 0
            && app.store_count(|m| &m.replayed) > replayed_before
    })
    .await;
}

/// The `spool_full` alerts the store has raised so far, as the alert registry counts them
/// (one per loss incident).
fn spool_full_alerts(app: &TestApp) -> u64 {
    let series = app.health.alerts.metrics().series();
    series
        .iter()
        .find(|((kind, source), _)| kind == "spool_full" && source == "store")
        .map_or(0, |(_, s)| s.fired)
}

/// The last log line of the in-process daemon whose message is `message`.
fn last_line(message: &str) -> LogLine {
    log_lines()
        .into_iter()
        .rev()
        .find(|l| l.message() == message)
        .unwrap_or_else(|| panic!("no line {message:?}; log:\n{}", log_text()))
}

/// Checks that `app` (`which` run) stopped cleanly, as `tickd run` does when it exits 0.
fn assert_clean_stop(stopped: &anyhow::Result<()>, which: &str) {
    assert!(stopped.is_ok(), "{which} stops cleanly: {stopped:?}; log:\n{}", log_text());
}

/// One scrape of a `tickd run` process's `/metrics`.
struct Scrape(String);

impl Scrape {
    /// Reads `/metrics` from the dashboard at `addr`.
    async fn of(addr: SocketAddr) -> Scrape {
        let page = http_get(addr, "/metrics", &[]).await;
        assert_eq!(page.status, 200, "{page:?}");
        Scrape(page.body)
    }

    /// The sum of the samples of `name` whose labels include each of `labels`
    /// (`kind="trade"`); 0 without any.
    fn sum(&self, name: &str, labels: &[&str]) -> u64 {
        let samples = self.0.lines().filter(|l| !l.starts_with('#')).filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = series.split_once('{').unwrap_or((series, ""));
            let wanted = metric == name && labels.iter().all(|l| label_text.contains(l));
            if wanted { value.parse::<f64>().ok() } else { None }
        });
        samples.sum::<f64>() as u64
    }

    /// Whether the store is in `state` (its `tickd_store_state` sample is 1).
    fn store_is(&self, state: StoreState) -> bool {
        self.sum("tickd_store_state", &[&format!("state=\"{}\"", state.as_str())]) == 1
    }
}

/// Scrapes `/metrics` of `daemon` (its dashboard at `addr`) until `cond` holds; panics naming
/// `what`, with the log, after `limit` or once the process has exited. Returns a scrape taken
/// then.
async fn wait_metrics(
    daemon: &mut Daemon,
    addr: SocketAddr,
    what: &str,
    limit: Duration,
    cond: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let cond = &cond;
    daemon.wait_until(what, limit, || async move { cond(&Scrape::of(addr).await) }).await;
    Scrape::of(addr).await
}

/// The receive time of the newest tick stored, in µs.
async fn newest_receive_time(url: &str) -> i64 {
    let newest = |table: &str| format!("(SELECT max(recv_ts) FROM {table})");
    let tables = ["trades", "quotes", "book_snapshots", "book_deltas", "lifecycle_events"];
    let sql = format!(
        "SELECT {} FROM (SELECT greatest({}, (SELECT max(ts) FROM feed_events)) AS t) newest",
        us("t"),
        tables.map(newest).join(", ")
    );
    scalar(url, &sql).await
}

/// The trades stored as received live (`source = 'ws'`): those a connection delivered. The
/// others were recovered over the REST API after a window the stream missed (see
/// `backfill.rs`), which these tests check only for being trades the exchange executed.
async fn live_trade_ids(url: &str) -> Vec<String> {
    texts(url, "SELECT trade_id FROM trades WHERE source = 'ws'").await
}

/// Every trade stored from the REST API is one the simulator executed and never sent.
async fn assert_recovered_were_missed(url: &str, sim: &Simulator, sent: &[String]) {
    let sent: HashSet<&String> = sent.iter().collect();
    let executed: HashSet<String> = sim.trades_executed().into_iter().map(|(_, id, _)| id).collect();
    for id in texts(url, "SELECT trade_id FROM trades WHERE source = 'rest'").await {
        assert!(
            executed.contains(&id) && !sent.contains(&id),
            "trade {id} recovered, but sent or never executed"
        );
    }
}

/// The same trades on both sides, each once.
fn assert_same_trades(stored: &[String], sent: &[String]) {
    let stored_set: HashSet<&String> = stored.iter().collect();
    let sent_set: HashSet<&String> = sent.iter().collect();
    let missing: Vec<&&String> = sent_set.difference(&stored_set).collect();
    let extra: Vec<&&String> = stored_set.difference(&sent_set).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} trades sent but not stored (e.g. {:?}); {} stored but never sent (e.g. {:?})",
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(sent.len(), sent_set.len(), "the simulator wrote some trade twice");
    assert_eq!(stored.len(), stored_set.len(), "some trade is stored twice");
}

/// `count(*) - count(DISTINCT trade_id)` of `trades`: 0 when no trade is stored twice.
async fn duplicate_trades(url: &str) -> i64 {
    scalar(url, "SELECT count(*) - count(DISTINCT trade_id) FROM trades").await
}

/// An exact `timestamptz` literal for µs since the Unix epoch.
fn at(us: i64) -> String {
    format!("(timestamptz 'epoch' + {us} * interval '1 microsecond')")
}

/// One row of `gaps()`; times in µs.
#[derive(Debug)]
struct Gap {
    kind: String,
    started: i64,
    ended: Option<i64>,
    detail: serde_json::Value,
}

/// The rows of `gaps()` from `from` to `to` (µs).
async fn gaps(url: &str, from: i64, to: i64) -> Vec<Gap> {
    let mut conn = common::daemon::connect(url).await;
    let sql = format!(
        "SELECT kind, {}, {}, detail::text FROM gaps({}, {})",
        us("started"),
        us("ended"),
        at(from),
        at(to)
    );
    let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut conn).await.expect("gaps()");
    rows.iter()
        .map(|r| Gap {
            kind: r.get(0),
            started: r.get(1),
            ended: r.get(2),
            detail: serde_json::from_str(&r.get::<String, _>(3)).expect("detail is JSON"),
        })
        .collect()
}

/// The first event named `event` at or after `from`.
fn first<'a>(events: &'a [EventRow], event: &str, from: i64) -> &'a EventRow {
    events
        .iter()
        .find(|e| e.event == event && e.ts >= from)
        .unwrap_or_else(|| panic!("no `{event}` at or after {from} in {events:#?}"))
}

/// A port of 127.0.0.1 where nothing listens (bound, then released), for a server started
/// later. Below Linux's ephemeral range (32768 and up), so that no client socket of this run
/// takes it meanwhile.
fn free_port() -> u16 {
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_768;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trade_sent_to_a_connected_feed_is_stored_once_across_a_dropped_connection_and_a_restart() {
    // Arrange
    let db = TestDb::new().await;
    let sim = simulator(market_names(50), 1000);
    let dir = workdir();
    let config = DaemonConfig::new(&dir.path().join("state"), &db.url, &serve(&sim).await, &sim.markets());

    // Act: run A sees a dropped connection, reconnects and stops cleanly once everything
    // written is stored; run B carries on with the same database and state directory.
    let mut a = spawn_app(dir.path(), "a", &config).await;
    wait_live_with_trades(&a, &db.url, 1, 100).await;
    let before_drop = trade_count(&db.url).await;
    let dropped_at = now_micros();
    sim.drop_all();
    wait_live_with_trades(&a, &db.url, 2, before_drop + 100).await;
    sim.pause();
    wait_sent_trades_stored(&sim, &db.url, SETTLE).await;
    let a_stopped = a.stop(STOP).await;

    let b_started_at = now_micros();
    let mut b = spawn_app(dir.path(), "b", &config).await;
    wait_live(&b, &db.url, 3).await;
    let before_resume = trade_count(&db.url).await;
    sim.resume();
    wait_live_with_trades(&b, &db.url, 3, before_resume + 100).await;
    sim.pause();
    let sent = wait_sent_trades_stored(&sim, &db.url, SETTLE).await;
    let b_stopped = b.stop(STOP).await;

    // Assert
    assert_clean_stop(&a_stopped, "run A");
    assert_clean_stop(&b_stopped, "run B");
    assert_same_trades(&live_trade_ids(&db.url).await, &sent);
    assert_recovered_were_missed(&db.url, &sim, &sent).await;
    assert_eq!(duplicate_trades(&db.url).await, 0);
    let events = feed_events(&db.url).await;
    let drop = first(&events, "disconnected", dropped_at);
    assert!(drop.ts < b_started_at, "the drop is recorded during run A: {drop:?}");
    assert!(
        drop.reason.as_deref().is_some_and(|r| !r.is_empty() && r != "shutdown"),
        "the drop has a reason: {drop:?}"
    );
    let lives: Vec<i64> = events.iter().filter(|e| e.event == "live").map(|e| e.ts).collect();
    let live_in = |from: i64, to: i64| lives.iter().any(|&ts| from < ts && ts < to);
    assert!(live_in(0, drop.ts), "run A is live before the drop at {}: {lives:?}", drop.ts);
    assert!(live_in(drop.ts, b_started_at), "run A is live again after the drop at {}: {lives:?}", drop.ts);
    assert!(live_in(b_started_at, i64::MAX), "run B is live after its start at {b_started_at}: {lives:?}");
    let clean_stop =
        events.iter().filter(|e| e.event == "disconnected" && e.reason.as_deref() == Some("shutdown"));
    assert_eq!(clean_stop.count(), 2, "each run records its stop as a disconnect: {events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_read_as_the_connection_drops_are_stored_even_if_the_daemon_stops_before_reconnecting() {
    // Arrange: a busy feed, so that the last read before the drop carries trades too.
    let db = TestDb::new().await;
    let sim = simulator(market_names(20), 2000);
    let dir = workdir();
    let config = DaemonConfig::new(&dir.path().join("state"), &db.url, &serve(&sim).await, &sim.markets());
    let mut app = spawn_app(dir.path(), "tickd", &config).await;
    wait_live_with_trades(&app, &db.url, 1, 200).await;

    // Act: the exchange drops the connection and refuses every new one; stop meanwhile (the
    // token is what SIGTERM cancels).
    sim.refuse_handshakes(u32::MAX);
    sim.drop_all();
    app.wait_until("the connection gone", LIVE, || {
        let open = sim.stats().connections_open;
        async move { open == 0 }
    })
    .await;
    let sent = sim.trades_sent();
    app.wait_until("a refused reconnect", LIVE, || async {
        scalar(&db.url, "SELECT count(*) FROM feed_events WHERE reason LIKE '%HTTP 503%'").await > 0
    })
    .await;
    let stopped = app.stop(STOP).await;

    // Assert
    assert_clean_stop(&stopped, "the app");
    assert_same_trades(&live_trade_ids(&db.url).await, &sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_seconds_without_the_database_lose_and_duplicate_nothing_and_leave_the_spool_empty() {
    // Arrange
    let pg = private_server().await;
    let url = pg.create_database("tickd").await.expect("database");
    let sim = simulator(market_names(10), 1000);
    let dir = workdir();
    let state = dir.path().join("state");
    let config = DaemonConfig::new(&state, &url, &serve(&sim).await, &sim.markets());
    let mut app = spawn_app(dir.path(), "tickd", &config).await;
    wait_live_with_trades(&app, &url, 1, 100).await;
    app.wait_store(StoreState::Ready, LIVE).await;
    let spooled_before = app.store_count(|m| &m.spooled);
    let replayed_before = app.store_count(|m| &m.replayed);

    // Act
    let down_at = now_micros();
    pg.stop().await.expect("server stops");
    // This one needs the wall clock: a real outage, with ticks arriving all along.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let spooled_during_outage = app.store_count(|m| &m.spooled) - spooled_before;
    pg.restart().await.expect("server restarts");
    let up_at = now_micros();
    wait_spool_replayed(&app, replayed_before).await;
    let replayed = app.store_count(|m| &m.replayed) - replayed_before;
    let replay_batches = app.store_count(|m| &m.replayed_batches);
    let replay_records = app.store_count(|m| &m.replayed_records);
    sim.pause();
    let sent = wait_sent_trades_stored(&sim, &url, SETTLE).await;
    let stopped = app.stop(STOP).await;

    // Assert
    assert_clean_stop(&stopped, "the app");
    assert!(spooled_during_outage > 10_000, "ticks spooled during the outage: {spooled_during_outage}");
    // Records were spooled small (a batch per `batch_age` at 1,000 events/s); the replay wrote
    // them merged, close to `batch_size` (5,000) ticks a statement.
    assert!(
        replay_batches > 0 && replayed / replay_batches >= 1_000 && replay_records >= 10 * replay_batches,
        "the spool drained in full batches: {replayed} ticks from {replay_records} records in {replay_batches} writes"
    );
    assert_same_trades(&live_trade_ids(&url).await, &sent);
    assert_eq!(duplicate_trades(&url).await, 0);
    let writer = last_line("Store writer stopped.");
    assert_eq!((writer.u64("lost"), writer.u64("spooled_batches")), (0, 0), "{}", writer.raw);
    assert_eq!(spool_segments(&state), Vec::<std::path::PathBuf>::new(), "the spool is drained");
    assert_eq!(event_count(&url, "store_loss").await, 0);
    let outage = gaps(&url, down_at, up_at).await;
    assert!(outage.is_empty(), "nothing is missing during the outage, and gaps() says so: {outage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_full_spool_the_trades_missing_are_exactly_those_the_store_loss_rows_record() {
    // Arrange: a 1 MiB spool against a busy feed fills in seconds. The feed is quiet until
    // the store is ready, so that nothing arriving while the first probe migrates the
    // database can fill it before the outage.
    let pg = private_server().await;
    let url = pg.create_database("tickd").await.expect("database");
    let sim = simulator(market_names(10), 3000);
    sim.pause();
    let dir = workdir();
    let mut config = DaemonConfig::new(&dir.path().join("state"), &url, &serve(&sim).await, &sim.markets());
    config.store("spool_max_bytes", "1048576");
    let mut app = spawn_app(dir.path(), "tickd", &config).await;
    wait_live(&app, &url, 1).await;
    app.wait_store(StoreState::Ready, LIVE).await;
    sim.resume();
    wait_live_with_trades(&app, &url, 1, 100).await;
    let dropped_before = (spool_full_alerts(&app), app.store_count(|m| &m.lost));
    let replayed_before = app.store_count(|m| &m.replayed);

    // Act: keep the database away until the spool is full and ticks are being dropped.
    // The writer stores ticks in the order they were received, so none received up to the
    // newest one committed now can be lost.
    let committed_to = newest_receive_time(&url).await;
    pg.stop().await.expect("server stops");
    app.wait_until("the spool_full alert", SETTLE, || async {
        spool_full_alerts(&app) > 0 && app.store_state() == Some(StoreState::Spooling)
    })
    .await;
    pg.restart().await.expect("server restarts");
    app.wait_until("the database back", SETTLE, || async { app.store_state() != Some(StoreState::Spooling) })
        .await;
    let up_at = now_micros();
    app.wait_until("the loss recorded", SETTLE, || async { event_count(&url, "store_loss").await > 0 }).await;
    wait_spool_replayed(&app, replayed_before).await;
    sim.pause();
    let sent = wait_caught_up(&sim, SETTLE).await;
    let last = sent.last().expect("trades were sent").clone();
    app.wait_until("the last trade sent to be stored", SETTLE, || async {
        live_trade_ids(&url).await.contains(&last)
    })
    .await;
    let stopped = app.stop(STOP).await;

    // Assert
    assert_clean_stop(&stopped, "the app");
    assert_eq!(dropped_before, (0, 0), "nothing was dropped before the outage");
    let alert = log_lines().into_iter().find(|l| l.str("alert") == "spool_full").expect("the alert's line");
    assert_eq!(alert.level(), "ERROR", "{}", alert.raw);
    assert_eq!(duplicate_trades(&url).await, 0);
    let stored: HashSet<String> = live_trade_ids(&url).await.into_iter().collect();
    assert!(stored.iter().all(|t| sent.contains(t)), "only trades that were sent are stored");
    let missing: Vec<&String> = sent.iter().filter(|t| !stored.contains(*t)).collect();
    let recorded = scalar(
        &url,
        "SELECT sum((detail->>'trades')::bigint)::int8 FROM feed_events WHERE event = 'store_loss'",
    )
    .await;
    assert!(!missing.is_empty(), "the full spool dropped trades");
    assert_eq!(missing.len() as i64, recorded, "trades missing vs trades the store_loss rows count");
    let lost = last_line("Store writer stopped.").u64("lost");
    let recorded_ticks = scalar(
        &url,
        "SELECT sum((detail->>'ticks')::bigint)::int8 FROM feed_events WHERE event = 'store_loss'",
    )
    .await;
    assert_eq!(recorded_ticks, lost as i64, "every tick lost is recorded");

    // Each run of missing trades was received between the stored trades around it (receive
    // times only grow along one connection); a loss window must cover part of that span.
    // Every window lies between the newest tick committed before the outage and the
    // database's return.
    let windows: Vec<Gap> =
        gaps(&url, committed_to, now_micros()).await.into_iter().filter(|g| g.kind == "store_loss").collect();
    assert!(!windows.is_empty(), "gaps() lists the loss");
    for w in &windows {
        let ended = w.ended.expect("a loss window has an end");
        assert!(
            committed_to < w.started && ended <= up_at,
            "{w:?} lies within the outage ({committed_to}, {up_at}]"
        );
    }
    let recv: HashMap<String, i64> = {
        let sql = format!("SELECT trade_id || ' ' || {} FROM trades", us("recv_ts"));
        texts(&url, &sql)
            .await
            .iter()
            .map(|row| {
                let (id, ts) = row.split_once(' ').expect("id and time");
                (id.to_owned(), ts.parse().expect("µs"))
            })
            .collect()
    };
    let mut before = i64::MIN;
    let mut run = 0;
    for trade in &sent {
        match recv.get(trade) {
            Some(&ts) => {
                if run > 0 {
                    let covered =
                        windows.iter().any(|w| w.started < ts && w.ended.is_some_and(|e| e > before));
                    assert!(
                        covered,
                        "{run} missing trades received in ({before}, {ts}) are in no window: {windows:?}"
                    );
                }
                before = ts;
                run = 0;
            }
            None => run += 1,
        }
    }
    assert_eq!(run, 0, "the last trades sent are stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_commits_every_tick_received_before_the_process_exits_0() {
    // Arrange: a process, since SIGTERM and the exit code are what this tests.
    let db = TestDb::new().await;
    let sim = simulator(market_names(20), 3000);
    let dir = workdir();
    let mut config =
        DaemonConfig::new(&dir.path().join("state"), &db.url, &serve(&sim).await, &sim.markets());
    // A write abandoned at its time limit may still commit, and its replay then finds the rows
    // there already (counted as duplicates, not inserted); a generous limit keeps the count of
    // inserted rows exact on a loaded machine.
    config.store("write_timeout", "\"30s\"");
    let mut daemon = Daemon::start(dir.path(), "tickd", &config);
    let addr = daemon.dashboard_addr(LIVE).await;
    let what = "a live event and more than 500 trades";
    daemon.wait_until(what, LIVE, || live_with_trades(&db.url, 1, 500)).await;
    // Ticks that arrive before the first probe has migrated the database are spooled, and
    // replayed once it has; from then on nothing is spooled while the database answers.
    let ready = wait_metrics(&mut daemon, addr, "the store writing directly", LIVE, |m| {
        m.store_is(StoreState::Ready)
    })
    .await;
    let spooled_before = ready.sum("tickd_store_spooled_total", &[]);

    // Act: stop in full flow.
    let exit = daemon.stop(STOP).await;

    // Assert
    assert_eq!(exit, Some(0), "exit code; log:\n{}", daemon.log_text());
    let writer = daemon.last("Store writer stopped.").expect("the writer's last line");
    let stopped = daemon.last("tickd stopped.").expect("the last line");
    let feed = daemon.last("Feed stopped.").expect("the feed's last line");
    let (received, committed, published) =
        (writer.u64("received"), writer.u64("committed"), stopped.u64("published"));
    assert_eq!((received, committed), (published, published), "{}\n{}", writer.raw, stopped.raw);
    let (spooled, lost, left) = (writer.u64("spooled"), writer.u64("lost"), writer.u64("spooled_batches"));
    assert_eq!(
        (spooled, lost, left),
        (spooled_before, 0, 0),
        "the stop spooled and lost nothing: {}",
        writer.raw
    );
    let rows = scalar(
        &db.url,
        "SELECT ((SELECT count(*) FROM trades) + (SELECT count(*) FROM quotes) \
                + (SELECT count(*) FROM book_snapshots) + (SELECT count(*) FROM book_deltas) \
                + (SELECT count(*) FROM lifecycle_events) + (SELECT count(*) FROM feed_events))::int8",
    )
    .await;
    assert_eq!(rows, writer.u64("inserted") as i64, "rows in the database vs rows inserted");
    // The feed reads one socket in order, so the trades it received are the first ones sent.
    let stored = live_trade_ids(&db.url).await;
    assert_eq!(stored.len() as u64, feed.u64("trades"), "trades stored vs trades received; {}", feed.raw);
    let sent = sim.trades_sent();
    assert!(sent.len() >= stored.len(), "{} sent, {} stored", sent.len(), stored.len());
    assert_same_trades(&stored, &sent[..stored.len()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_gap_and_a_reconnect_show_up_in_feed_events_and_gaps_with_their_times() {
    // Arrange: the order book is the only sequenced channel, so the skip makes one gap.
    let db = TestDb::new().await;
    let sim = simulator(market_names(3), 500);
    let dir = workdir();
    let mut config =
        DaemonConfig::new(&dir.path().join("state"), &db.url, &serve(&sim).await, &sim.markets());
    config.feed("channels", "[\"orderbook_delta\"]").feed("lifecycle", "false");
    let mut app = spawn_app(dir.path(), "tickd", &config).await;
    wait_live(&app, &db.url, 1).await;

    // Act
    let gap_before = now_micros();
    sim.skip_seq(5);
    app.wait_until("the gap repaired", LIVE, || async { event_count(&db.url, "resynced").await >= 1 }).await;
    let gap_after = now_micros();
    let drop_before = now_micros();
    sim.drop_all();
    let live_again =
        format!("SELECT count(*) FROM feed_events WHERE event = 'live' AND ts > {}", at(drop_before));
    app.wait_until("live again", LIVE, || async { scalar(&db.url, &live_again).await > 0 }).await;
    let drop_after = now_micros();
    let stopped = app.stop(STOP).await;

    // Assert
    assert_clean_stop(&stopped, "the app");
    let events = feed_events(&db.url).await;
    let gap_rows: Vec<&EventRow> = events.iter().filter(|e| e.event == "gap").collect();
    assert_eq!(gap_rows.len(), 1, "{events:#?}");
    let gap = gap_rows[0];
    let book_sid = events
        .iter()
        .find(|e| e.event == "subscribed" && e.detail["channel"] == "orderbook_delta" && e.ts < gap.ts)
        .and_then(|e| e.sid);
    assert_eq!(gap.sid, book_sid, "the gap is on the order book's subscription: {gap:?}");
    let (expected, got) = (gap.expected.expect("expected"), gap.got.expect("got"));
    assert_eq!(expected + 5, got, "{gap:?}");
    assert!(gap_before <= gap.ts && gap.ts <= gap_after, "{gap:?} within [{gap_before}, {gap_after}]");
    let resynced = first(&events, "resynced", gap.ts);
    assert!(resynced.ts <= gap_after, "{resynced:?}");

    let disconnected = first(&events, "disconnected", drop_before);
    let connecting = first(&events, "connecting", disconnected.ts);
    let connected = first(&events, "connected", connecting.ts);
    let live = first(&events, "live", connected.ts);
    assert!(disconnected.reason.as_deref().is_some_and(|r| !r.is_empty()), "{disconnected:?}");
    assert!(
        drop_before <= disconnected.ts
            && disconnected.ts < connecting.ts
            && connecting.ts < connected.ts
            && connected.ts < live.ts
            && live.ts <= drop_after,
        "disconnected, connecting, connected, live in order within [{drop_before}, {drop_after}]: \
         {disconnected:?} {connecting:?} {connected:?} {live:?}"
    );

    let windows = gaps(&db.url, gap_before, drop_after).await;
    let seq_gap = windows.iter().find(|g| g.kind == "seq_gap").unwrap_or_else(|| panic!("{windows:#?}"));
    assert_eq!((seq_gap.started, seq_gap.ended), (gap.ts, Some(resynced.ts)), "{seq_gap:?}");
    assert_eq!(
        (seq_gap.detail["expected"].as_i64(), seq_gap.detail["got"].as_i64()),
        (Some(expected), Some(got))
    );
    let outage = windows.iter().find(|g| g.kind == "disconnected").unwrap_or_else(|| panic!("{windows:#?}"));
    assert_eq!((outage.started, outage.ended), (disconnected.ts, Some(live.ts)), "{outage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_unreachable_at_start_the_daemon_spools_says_why_and_catches_up_when_it_appears() {
    // Arrange: the config names a server that is not there yet.
    let port = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/tickd");
    let sim = simulator(market_names(5), 500);
    let dir = workdir();
    let state = dir.path().join("state");
    let config = DaemonConfig::new(&state, &url, &serve(&sim).await, &sim.markets());
    let mut app = spawn_app(dir.path(), "tickd", &config).await;

    // Act
    app.wait_store(StoreState::Spooling, LIVE).await;
    app.wait_until("spool segments", LIVE, || async {
        app.store_count(|m| &m.spool_batches) > 0 && !spool_segments(&state).is_empty()
    })
    .await;
    let pg =
        LocalPg::start(LocalPgOptions { data_dir: None, port: Some(port) }).await.expect("server starts");
    pg.create_database("tickd").await.expect("database");
    wait_spool_replayed(&app, 0).await;
    wait_live_with_trades(&app, &url, 1, 100).await;
    sim.pause();
    let sent = wait_sent_trades_stored(&sim, &url, SETTLE).await;
    let stopped = app.stop(STOP).await;

    // Assert
    let not_ready = last_line("Store not ready: the database is unreachable; spooling ticks to disk.");
    assert_eq!(not_ready.level(), "WARN", "{}", not_ready.raw);
    assert!(not_ready.str("error").contains("Connection refused"), "the warning says why: {}", not_ready.raw);
    assert!(not_ready.str("spool").ends_with("state/spool"), "and where the ticks go: {}", not_ready.raw);
    let reachable = log_lines().iter().any(|l| l.message() == "Database reachable; writing.");
    assert!(reachable, "the log says when the database answers; log:\n{}", log_text());
    assert_clean_stop(&stopped, "the app");
    assert_same_trades(&live_trade_ids(&url).await, &sent);
    assert_eq!(duplicate_trades(&url).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_stopped_while_the_database_is_unreachable_exits_0_and_the_next_run_stores_its_spool() {
    // Arrange: processes, since the exit codes are what this tests.
    let port = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/tickd");
    let sim = simulator(market_names(5), 500);
    let dir = workdir();
    let state = dir.path().join("state");
    let config = DaemonConfig::new(&state, &url, &serve(&sim).await, &sim.markets());
    let mut a = Daemon::start(dir.path(), "a", &config);
    let a_addr = a.dashboard_addr(LIVE).await;
    wait_metrics(&mut a, a_addr, "the store spooling more than 100 ticks", LIVE, |m| {
        m.store_is(StoreState::Spooling) && m.sum("tickd_store_spooled_total", &[]) > 100
    })
    .await;

    // Act: stop while the database is still away (once the feed has read every trade
    // written), then start again once it is there.
    sim.pause();
    let written = wait_caught_up(&sim, SETTLE).await.len() as u64;
    wait_metrics(&mut a, a_addr, "the feed to have read every trade written", SETTLE, |m| {
        m.sum("tickd_feed_ticks_total", &["kind=\"trade\""]) == written
    })
    .await;
    let a_exit = a.stop(STOP).await;
    let pg =
        LocalPg::start(LocalPgOptions { data_dir: None, port: Some(port) }).await.expect("server starts");
    pg.create_database("tickd").await.expect("database");
    let mut b = Daemon::start(dir.path(), "b", &config);
    let b_addr = b.dashboard_addr(LIVE).await;
    wait_metrics(&mut b, b_addr, "the spool replayed", SETTLE, |m| {
        m.store_is(StoreState::Ready)
            && m.sum("tickd_store_spool_batches", &[]) == 0
            && m.sum("tickd_store_replayed_total", &[]) > 0
    })
    .await;
    let sent = wait_sent_trades_stored(&sim, &url, SETTLE).await;
    let b_exit = b.stop(STOP).await;

    // Assert
    assert_eq!(a_exit, Some(0), "exit code of the run without a database; log:\n{}", a.log_text());
    let not_ready = a
        .last("Store not ready: the database is unreachable; spooling ticks to disk.")
        .unwrap_or_else(|| panic!("run A says why it spools; log:\n{}", a.log_text()));
    assert_eq!(not_ready.level(), "WARN", "{}", not_ready.raw);
    let a_writer = a.last("Store writer stopped.").expect("the writer's last line");
    assert_eq!(a_writer.u64("received"), a_writer.u64("spooled"), "all kept in the spool: {}", a_writer.raw);
    assert!(a_writer.u64("spooled_batches") > 0, "{}", a_writer.raw);
    assert!(
        b.last("Spool holds batches from an earlier run; they are replayed once the database answers.")
            .is_some()
    );
    assert_eq!(b_exit, Some(0), "exit code; log:\n{}", b.log_text());
    assert_same_trades(&live_trade_ids(&url).await, &sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_a_database_whose_schema_was_changed_by_hand_fails_and_says_what_changed() {
    // Arrange: (a) someone made `trades` first; (b) someone dropped a column after tickd
    // migrated. `tickd migrate` runs as a process (its exit code is what it answers);
    // `tickd run` runs in this process.
    let made_by_hand = TestDb::new().await;
    sqlx::raw_sql("CREATE TABLE trades (id int)")
        .execute(&mut made_by_hand.connect().await)
        .await
        .expect("create");
    let altered = TestDb::new().await;
    let sim = simulator(market_names(3), 500);
    let dir = workdir();
    let state = dir.path().join("state");
    let sim_url = serve(&sim).await;
    let config_a = DaemonConfig::new(&state, &made_by_hand.url, &sim_url, &sim.markets());
    let config_b = DaemonConfig::new(&state, &altered.url, &sim_url, &sim.markets());
    let file_a = write_config(dir.path(), "a", &config_a.toml());
    let file_b = write_config(dir.path(), "b", &config_b.toml());
    let (first_exit, first_err) = run_command("migrate", &file_b);
    assert_eq!(first_exit, Some(0), "a good migrate: {first_err}");
    sqlx::raw_sql("ALTER TABLE trades DROP COLUMN block")
        .execute(&mut altered.connect().await)
        .await
        .expect("alter");

    // Act
    let (a_exit, a_err) = run_command("migrate", &file_a);
    let (b_exit, b_err) = run_command("migrate", &file_b);
    let mut app = spawn_app(dir.path(), "run", &config_b).await;
    app.wait_store(StoreState::Spooling, LIVE).await;
    app.wait_until("spool segments", LIVE, || async {
        app.store_count(|m| &m.spool_batches) > 0 && !spool_segments(&state).is_empty()
    })
    .await;
    // It goes on running, spooling: more batches spooled after the spool began show it alive.
    let batches = app.store_count(|m| &m.spool_batches);
    app.wait_until("two more batches spooled", LIVE, || async {
        app.store_count(|m| &m.spool_batches) >= batches + 2
    })
    .await;
    let still_running = app.running();
    let stopped = app.stop(STOP).await;

    // Assert
    assert_eq!(a_exit, Some(1), "{a_err}");
    let a_error = stopped_on(&a_err);
    assert!(a_error.contains(r#"relation "trades" already exists"#), "names the relation: {a_err}");
    assert!(a_error.contains("did not create") && a_error.contains("changed by hand"), "{a_err}");
    assert_eq!(b_exit, Some(1), "{b_err}");
    let b_error = stopped_on(&b_err);
    assert!(b_error.contains("table `trades`: column `block` (boolean) is missing"), "{b_err}");
    assert!(still_running, "tickd run keeps running; log:\n{}", log_text());
    let not_ready = last_line(
        "Store not ready: the database cannot be used until this is fixed; spooling ticks to disk.",
    );
    assert_eq!(not_ready.level(), "ERROR", "{}", not_ready.raw);
    assert!(not_ready.str("error").contains("column `block`"), "{}", not_ready.raw);
    assert_clean_stop(&stopped, "tickd run");
    let writer = last_line("Store writer stopped.");
    assert!(
        writer.u64("spooled") > 0 && writer.u64("spooled_batches") > 0,
        "ticks kept in the spool: {}",
        writer.raw
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_market_ticker_with_unusual_characters_is_stored_as_is() {
    // Arrange
    let ticker = "KX-ÜÑÎ'\"\\;--%_/€-1";
    let db = TestDb::new().await;
    let sim = simulator(vec![ticker.to_owned()], 500);
    let dir = workdir();
    let config =
        DaemonConfig::new(&dir.path().join("state"), &db.url, &serve(&sim).await, &[ticker.to_owned()]);

    // Act
    let mut app = spawn_app(dir.path(), "tickd", &config).await;
    let fewest = "SELECT least((SELECT count(*) FROM trades), (SELECT count(*) FROM quotes), \
                  (SELECT count(*) FROM book_deltas))";
    app.wait_until("trades, quotes and deltas", LIVE, || async {
        migrated(&db.url).await && scalar(&db.url, fewest).await >= 3
    })
    .await;
    let stopped = app.stop(STOP).await;

    // Assert
    assert_clean_stop(&stopped, "the app");
    for table in ["trades", "quotes", "book_snapshots", "book_deltas", "markets"] {
        let markets = texts(&db.url, &format!("SELECT DISTINCT market FROM {table}")).await;
        assert_eq!(markets, [ticker], "{table}");
    }
}
