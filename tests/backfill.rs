//! Backfill end to end: the simulator keeps trading while tickd cannot hear it (a dropped
//! connection, refused handshakes, tickd stopped), and tickd takes those trades back over the
//! REST API. Each test has its own simulator (on 127.0.0.1), database and state directory,
//! runs the daemon in this process ([`spawn_app`]), and asserts on what a user sees: rows in
//! `trades` and `feed_events`, `gaps()` and `coverage()`, REST requests the simulator served,
//! the daemon's counters.
//!
//! "Every trade executed" is [`Simulator::trades_executed`]: what the exchange traded, whoever
//! was listening. A test starts its simulator paused and resumes it once tickd is live, so that
//! every trade of the run happened while tickd followed the markets (before that, tickd had
//! recorded nothing it could have missed). "Received live" is [`Simulator::trades_sent`]: the
//! trades written to a socket, which all reach tickd (see `store_e2e.rs`).
//!
//! The outages last 20 s and 30 s of real time, as an outage is what these tests are about;
//! every other wait is a bounded poll of state.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::app::{TestApp, spawn_app};
use common::daemon::{DaemonConfig, scalar, serve, texts};
use common::pg::TestDb;
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tickd::feed::backfill::FETCHES_IN_FLIGHT;
use tickd::telemetry::backfill::BackfillMetrics;
use tickd::telemetry::metrics::FeedState;
use tickd::telemetry::rest::{Endpoint, Outcome};

/// How long the daemon may take to connect, subscribe and build its books.
const LIVE: Duration = Duration::from_secs(60);
/// How long a backfill may take, REST retries included.
const BACKFILLED: Duration = Duration::from_secs(90);
/// How long the database may take to hold what the simulator did.
const SETTLE: Duration = Duration::from_secs(60);
/// Attempts per REST call: the first and the REST client's retries.
const ATTEMPTS_PER_CALL: u64 = 6;

/// A paused simulator of three markets trading about 40 times a second once resumed, whose
/// heartbeats are too rare to matter.
fn simulator() -> Simulator {
    let sim = Simulator::start(SimConfig {
        markets: market_names(3),
        rate: 200,
        heartbeat: Duration::from_secs(60),
        ..SimConfig::default()
    });
    sim.pause();
    sim
}

/// The daemon on `db`, following every market of `sim` at `sim_url`, in `dir`.
async fn daemon(dir: &std::path::Path, name: &str, db: &TestDb, sim_url: &str) -> TestApp {
    let config = DaemonConfig::new(&dir.join("state"), &db.url, sim_url, &market_names(3));
    spawn_app(dir, name, &config).await
}

/// Starts trading once tickd is live; returns the trades executed before (none of the run).
async fn start_trading(app: &TestApp, sim: &Simulator) -> HashSet<String> {
    app.wait_live(1, LIVE).await;
    let before = sim.trades_executed().into_iter().map(|(_, id, _)| id).collect();
    sim.resume();
    before
}

/// Rows in `trades`, 0 before tickd created the table.
async fn trade_count(url: &str) -> i64 {
    if !common::daemon::migrated(url).await {
        return 0;
    }
    scalar(url, "SELECT count(*) FROM trades").await
}

/// The feed's backfill counters.
fn backfill_count(app: &TestApp, counter: impl Fn(&BackfillMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
    app.health.backfill.all().iter().map(|(_, m)| BackfillMetrics::get(counter(m))).sum()
}

/// Waits until the backfill has taken every window it was given (none pending), having been
/// given at least `windows`.
async fn wait_backfill_idle(app: &TestApp, windows: u64) {
    app.wait("the backfill idle", BACKFILLED, |app| {
        backfill_count(app, |m| &m.windows) >= windows && backfill_count(app, |m| &m.pending) == 0
    })
    .await;
}

/// `backfill` rows of `cause` in the ledger: (complete, found, new, attempt, retry_at_us, ts).
async fn backfill_rows(url: &str, cause: &str) -> Vec<(bool, i64, i64, i64, Option<i64>, i64)> {
    let mut conn = common::daemon::connect(url).await;
    let rows: Vec<(bool, i64, i64, i64, Option<i64>, i64)> = sqlx::query_as(
        "SELECT (detail->>'complete')::boolean, (detail->>'found')::bigint, (detail->>'new')::bigint, \
                (detail->>'attempt')::bigint, (detail->>'retry_at_us')::bigint, \
                (extract(epoch FROM ts) * 1000000)::bigint \
         FROM feed_events WHERE event = 'backfill' AND detail->>'cause' = $1 ORDER BY ts",
    )
    .bind(cause)
    .fetch_all(&mut conn)
    .await
    .expect("backfill rows");
    rows
}

/// Waits until a `backfill` row of `cause` says its window is complete.
async fn wait_backfill_complete(app: &TestApp, url: &str, cause: &str) {
    app.wait_until(&format!("a complete {cause} backfill"), BACKFILLED, || async {
        common::daemon::migrated(url).await && backfill_rows(url, cause).await.iter().any(|r| r.0)
    })
    .await;
}

/// Every trade in `trades`: id → (source, number of rows).
async fn stored_sources(url: &str) -> HashMap<String, (String, usize)> {
    let mut stored: HashMap<String, (String, usize)> = HashMap::new();
    for row in texts(url, "SELECT trade_id || ' ' || source FROM trades").await {
        let (id, source) = row.split_once(' ').expect("id and source");
        stored.entry(id.to_owned()).or_insert_with(|| (source.to_owned(), 0)).1 += 1;
    }
    stored
}

/// Pauses the simulator, waits until it has written all it generated and until every trade
/// it executed in the run is stored; returns those trades and the ones written to tickd.
async fn settle(
    app: &TestApp,
    sim: &Simulator,
    url: &str,
    before: &HashSet<String>,
) -> (Vec<String>, HashSet<String>) {
    sim.pause();
    common::daemon::wait_caught_up(sim, SETTLE).await;
    let executed: Vec<String> =
        sim.trades_executed().into_iter().map(|(_, id, _)| id).filter(|id| !before.contains(id)).collect();
    app.wait_until("every trade executed stored", SETTLE, || async {
        let stored = stored_sources(url).await;
        executed.iter().all(|id| stored.contains_key(id))
    })
    .await;
    (executed, sim.trades_sent().into_iter().collect())
}

/// Every trade executed is stored exactly once; those never written to tickd came from REST,
/// those written came live. Returns how many came from REST.
fn assert_each_once_by_source(
    stored: &HashMap<String, (String, usize)>,
    executed: &[String],
    sent: &HashSet<String>,
) -> usize {
    let mut recovered = 0;
    for id in executed {
        let (source, rows) = &stored[id];
        assert_eq!(*rows, 1, "trade {id} stored {rows} times");
        let want = if sent.contains(id) { "ws" } else { "rest" };
        assert_eq!(source, want, "trade {id}: received live = {}", sent.contains(id));
        recovered += usize::from(want == "rest");
    }
    let executed: HashSet<&String> = executed.iter().collect();
    let extra: Vec<&String> = stored.keys().filter(|id| !executed.contains(id)).collect();
    assert!(extra.is_empty(), "trades stored that the run never executed: {extra:?}");
    recovered
}

/// `(kind, recovered)` of every `gaps()` window of the run.
async fn gap_windows(url: &str) -> Vec<(String, bool)> {
    let mut conn = common::daemon::connect(url).await;
    sqlx::query_as("SELECT kind, recovered FROM gaps(now() - interval '1 hour', now() + interval '1 hour')")
        .fetch_all(&mut conn)
        .await
        .expect("gaps")
}

#[tokio::test]
async fn trades_executed_while_dropped_and_refused_are_stored_each_once_those_of_the_outage_from_rest() {
    // Arrange: tickd live on a trading simulator.
    let dir = tempfile::tempdir().expect("temp dir");
    let db = TestDb::new().await;
    let sim = simulator();
    let url = serve(&sim).await;
    let app = daemon(dir.path(), "dropped", &db, &url).await;
    let before = start_trading(&app, &sim).await;
    app.wait_until("trades stored", SETTLE, || async { trade_count(&db.url).await > 20 }).await;

    // Act: the connection drops, and every handshake is refused for 20 s while trading goes on.
    sim.refuse_handshakes(1_000_000);
    sim.drop_all();
    app.wait_health("the connection lost", LIVE, |s| s.conns.iter().all(|c| c.state != FeedState::Live))
        .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(sim.stats().handshakes_refused > 0, "handshakes were refused");
    sim.refuse_handshakes(0);
    wait_backfill_complete(&app, &db.url, "disconnect").await;
    let (executed, sent) = settle(&app, &sim, &db.url, &before).await;

    // Assert: every trade of the run once, those of the outage from REST; the window complete
    // and recovered.
    let recovered = assert_each_once_by_source(&stored_sources(&db.url).await, &executed, &sent);
    assert!(recovered > 0, "the outage had trades to recover");
    let rows = backfill_rows(&db.url, "disconnect").await;
    let complete = rows.iter().find(|r| r.0).expect("a complete row");
    assert!(complete.2 >= recovered as i64, "the row counts the new trades: {complete:?}");
    let windows = gap_windows(&db.url).await;
    assert!(windows.contains(&("disconnected".into(), true)), "the disconnect shows recovered: {windows:?}");
    assert!(!windows.contains(&("disconnected".into(), false)), "no disconnect stays missing: {windows:?}");
}

#[tokio::test]
async fn trades_executed_while_tickd_was_stopped_are_backfilled_when_it_starts_again() {
    // Arrange: tickd recording a trading simulator.
    let dir = tempfile::tempdir().expect("temp dir");
    let db = TestDb::new().await;
    let sim = simulator();
    let url = serve(&sim).await;
    let mut first = daemon(dir.path(), "first", &db, &url).await;
    let before = start_trading(&first, &sim).await;
    first.wait_until("trades stored", SETTLE, || async { trade_count(&db.url).await > 20 }).await;

    // Act: tickd stops for 30 s while the simulator trades, then starts again. (Trading pauses
    // while it stops: a trade written to a socket tickd no longer reads is neither received nor
    // missed by the simulator's count.)
    sim.pause();
    common::daemon::wait_sent_trades_stored(&sim, &db.url, SETTLE).await;
    first.stop(SETTLE).await.expect("a clean stop");
    drop(first);
    sim.resume();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let second = daemon(dir.path(), "second", &db, &url).await;
    wait_backfill_complete(&second, &db.url, "start").await;
    let (executed, sent) = settle(&second, &sim, &db.url, &before).await;

    // Assert: the stop's trades came from REST, each once; the stop's window is recovered.
    let recovered = assert_each_once_by_source(&stored_sources(&db.url).await, &executed, &sent);
    assert!(recovered > 0, "the stop had trades to recover");
    let windows = gap_windows(&db.url).await;
    assert!(windows.contains(&("disconnected".into(), true)), "the stop shows recovered: {windows:?}");
}

#[tokio::test]
async fn a_backfill_through_rate_limits_and_server_errors_is_retried_and_completes() {
    // Arrange: tickd live and trading, its start backfill done; the REST API will answer
    // 429 twice and then 503 twice.
    let dir = tempfile::tempdir().expect("temp dir");
    let db = TestDb::new().await;
    let sim = simulator();
    let url = serve(&sim).await;
    let app = daemon(dir.path(), "throttled", &db, &url).await;
    let before = start_trading(&app, &sim).await;
    wait_backfill_idle(&app, 1).await;
    sim.rest_throttle(2, None);
    sim.rest_fail(2, 503);

    // Act: the connection drops; trades go on.
    sim.drop_all();
    wait_backfill_complete(&app, &db.url, "disconnect").await;
    let (executed, sent) = settle(&app, &sim, &db.url, &before).await;

    // Assert: the failures were retried within the first attempt, which completed.
    let stats = sim.stats();
    assert_eq!((stats.rest_throttled, stats.rest_failed), (2, 2), "every fault was served");
    let rest = app.health.rest.all();
    let metrics = &rest[0].1;
    assert_eq!(metrics.requests(Endpoint::Trades, Outcome::RateLimited), 2);
    assert_eq!(metrics.requests(Endpoint::Trades, Outcome::ServerError), 2);
    let rows = backfill_rows(&db.url, "disconnect").await;
    assert_eq!(rows.len(), 1, "one attempt: {rows:?}");
    assert!(rows[0].0 && rows[0].3 == 1, "complete at the first attempt: {rows:?}");
    assert_each_once_by_source(&stored_sources(&db.url).await, &executed, &sent);
}

#[tokio::test]
async fn with_the_rest_api_down_a_window_stays_missing_without_a_tight_loop_and_the_next_start_takes_it_up() {
    // Arrange: tickd live and trading, its start backfill done; then every REST request fails.
    let dir = tempfile::tempdir().expect("temp dir");
    let db = TestDb::new().await;
    let sim = simulator();
    let url = serve(&sim).await;
    let app = daemon(dir.path(), "rest-down", &db, &url).await;
    let before = start_trading(&app, &sim).await;
    wait_backfill_idle(&app, 1).await;
    let requests_before = sim.stats().rest_requests;
    sim.rest_fail(u32::MAX, 503);

    // Act: the connection drops and comes back; its backfill cannot reach the REST API.
    sim.drop_all();
    app.wait_until("a failed backfill attempt", BACKFILLED, || async {
        backfill_rows(&db.url, "disconnect").await.iter().any(|r| !r.0)
    })
    .await;
    let requests = sim.stats().rest_requests - requests_before;

    // Assert: one attempt's calls (each with its retries) and no more; the next attempt waits
    // at least 30 s; the window stays missing in gaps() and coverage().
    assert!(requests > 0, "the backfill asked the REST API");
    assert!(
        requests <= FETCHES_IN_FLIGHT as u64 * ATTEMPTS_PER_CALL,
        "{requests} REST requests for one attempt of at most {FETCHES_IN_FLIGHT} calls"
    );
    let rows = backfill_rows(&db.url, "disconnect").await;
    let (complete, _, new, attempt, retry_at_us, ts) = rows[0];
    assert!(!complete && new == 0 && attempt == 1, "{rows:?}");
    let retry_in = retry_at_us.expect("a next attempt") - ts;
    assert!(retry_in >= 30_000_000, "the next attempt waits {retry_in} µs");
    assert!(backfill_count(&app, |m| &m.failed_attempts) >= 1);
    let windows = gap_windows(&db.url).await;
    assert!(windows.contains(&("disconnected".into(), false)), "the disconnect stays missing: {windows:?}");
    assert!(!windows.contains(&("disconnected".into(), true)), "nothing shows recovered: {windows:?}");
    let market = &market_names(1)[0];
    let (missing, recovered): (i64, i64) = {
        let mut conn = common::daemon::connect(&db.url).await;
        sqlx::query_as(
            "SELECT windows_missing, windows_recovered \
             FROM coverage($1, now() - interval '1 hour', now() + interval '1 hour')",
        )
        .bind(market)
        .fetch_one(&mut conn)
        .await
        .expect("coverage")
    };
    assert_eq!((missing, recovered), (1, 0), "coverage of {market}");

    // Then tickd stops with the window still missing, the REST API comes back, and the next
    // start takes the window up again: every trade of the run is stored once and nothing
    // stays missing.
    sim.pause();
    common::daemon::wait_sent_trades_stored(&sim, &db.url, SETTLE).await;
    let mut app = app;
    app.stop(SETTLE).await.expect("a clean stop");
    drop(app);
    sim.rest_fail(0, 503);
    let second = daemon(dir.path(), "rest-back", &db, &url).await;
    app_resumed(&second, &db.url).await;
    let (executed, sent) = settle(&second, &sim, &db.url, &before).await;
    assert_each_once_by_source(&stored_sources(&db.url).await, &executed, &sent);
    let windows = gap_windows(&db.url).await;
    assert!(!windows.iter().any(|(_, recovered)| !recovered), "every window recovered: {windows:?}");
}

/// Waits until the first `disconnect` window, left incomplete by an earlier run, is complete.
async fn app_resumed(app: &TestApp, url: &str) {
    app.wait_until("the earlier run's window taken up and complete", BACKFILLED, || async {
        gap_windows(url)
            .await
            .iter()
            .filter(|(kind, _)| kind == "disconnected")
            .all(|(_, recovered)| *recovered)
    })
    .await;
}
