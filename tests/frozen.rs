//! Frozen markets end to end: the daemon in this process against the simulator on 127.0.0.1
//! and a real PostgreSQL. One market stops updating on its live connection (the simulator's
//! `freeze` fault) while the exchange keeps changing it; tickd must find it by checking its
//! quiet markets against the REST API, ask for it afresh without reconnecting, record it in
//! `feed_events` and alert once. Markets that are merely quiet must be left alone, with the
//! checks within the feed's REST budget.
//!
//! Every wait is a bounded poll of something an operator sees; nothing sleeps.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::app::{TestApp, log_text, spawn_app};
use common::daemon::{DaemonConfig, feed_events, serve, texts, toml_str, wait_until};
use common::hooks::Hooks;
use common::pg::TestDb;
use common::stream::metric;
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tickd::feed::frozen::check_rate;
use tickd::tick::BookSnapshot;
use tokio::time::Instant;

/// How long a daemon may take to connect, subscribe and build its books.
const LIVE: Duration = Duration::from_secs(60);
/// How long a finding, an alert or a recovery may take once its condition is real.
const NOTICE: Duration = Duration::from_secs(60);
/// How long a daemon may take to stop.
const STOP: Duration = Duration::from_secs(30);

/// The feed's `rest_rate` in these tests (the default).
const REST_RATE: u32 = 10;

/// A simulator of `markets` at `rate` events per second, with rare heartbeats and no
/// lifecycle noise.
fn simulator(markets: Vec<String>, rate: u32) -> Simulator {
    Simulator::start(SimConfig {
        markets,
        rate,
        heartbeat: Duration::from_secs(60),
        lifecycle_every: 0,
        ..SimConfig::default()
    })
}

/// A daemon config whose alerts go to `hook`, and whose markets are checked after
/// `quiet_after` without updates.
fn config(dir: &std::path::Path, db: &TestDb, sim_url: &str, markets: &[String], hook: &str) -> DaemonConfig {
    let mut config = DaemonConfig::new(&dir.join("state"), &db.url, sim_url, markets);
    config
        .alerts("webhook_url", &toml_str(hook))
        .alerts("resolve_after", "\"1s\"")
        .feed("rest_rate", &REST_RATE.to_string());
    config
}

/// tickd's book of `market` now (from the connection that follows it), if it trusts one.
async fn book_of(app: &TestApp, market: &str) -> Option<BookSnapshot> {
    for (_, handle) in app.health.feeds.all() {
        if handle.markets().contains(market) {
            return handle.books().await.into_iter().find(|(m, _)| &**m == market).map(|(_, b)| b);
        }
    }
    None
}

/// Waits until the webhook has accepted a notice of `kind` in `state`.
async fn wait_posted(hooks: &Hooks, kind: &str, state: &str) {
    let what = format!("a {state} {kind} notice at the webhook");
    wait_until(&what, NOTICE, || async { !hooks.accepted_of(kind, state).is_empty() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_market_among_fifty_live_ones_is_found_resynced_without_a_reconnect_and_alerted_once() {
    // Arrange: 51 markets at about 20 updates a second each, so that only a frozen one is
    // ever quiet for the 2 s that make a market worth a check.
    let db = TestDb::new().await;
    let markets = market_names(51);
    let sim = simulator(markets.clone(), 1000);
    let dir = tempfile::tempdir().expect("temp dir");
    let (hooks, hook) = Hooks::serve(0).await;
    let mut config = config(dir.path(), &db, &serve(&sim).await, &markets, &hook);
    config.feed("market_quiet_after", "\"2s\"");
    let mut app = spawn_app(dir.path(), "tickd", &config).await;
    let addr = app.dashboard();
    app.wait_live(1, LIVE).await;
    let connections = sim.stats().connections_total;
    let frozen = markets[17].clone();

    // Act: the market stops updating on tickd's connection while it keeps trading.
    sim.freeze(&frozen);
    wait_posted(&hooks, "market_frozen", "firing").await;
    wait_posted(&hooks, "market_frozen", "resolved").await;
    // Then the exchange stops, so that tickd's book can be compared with its final state.
    sim.pause();
    let final_book = sim.book(&frozen);
    wait_until("tickd's book of the frozen market to equal the exchange's", NOTICE, || async {
        book_of(&app, &frozen).await == final_book
    })
    .await;
    // The trades the exchange executed in the frozen market and never sent to tickd.
    let sent: HashSet<String> = sim.trades_sent().into_iter().collect();
    let missed: HashSet<String> = sim
        .trades_executed()
        .into_iter()
        .filter(|(market, id, _)| *market == frozen && !sent.contains(id))
        .map(|(_, id, _)| id)
        .collect();
    let stored_of_frozen = format!("SELECT trade_id || ' ' || source FROM trades WHERE market = '{frozen}'");
    wait_until("the frozen market's missed trades recovered", NOTICE, || async {
        let stored: HashSet<String> = texts(&db.url, &stored_of_frozen).await.into_iter().collect();
        missed.iter().all(|id| stored.contains(&format!("{id} rest")))
    })
    .await;
    let counters = [
        metric(addr, r#"tickd_feed_markets_frozen_total{feed="sim",conn="0"}"#).await,
        metric(addr, r#"tickd_feed_markets_frozen{feed="sim",conn="0"}"#).await,
    ];
    let window = texts(
        &db.url,
        &format!(
            "SELECT kind || ' ' || recovered FROM gaps(now() - interval '1 hour', now()) WHERE market = '{frozen}'"
        ),
    )
    .await;
    let coverage = texts(
        &db.url,
        &format!(
            "SELECT windows_missing || ' ' || windows_recovered || ' ' || (trades_recovered >= {}) \
             FROM coverage('{frozen}', now() - interval '1 hour', now())",
            missed.len()
        ),
    )
    .await;
    let events = feed_events(&db.url).await;
    app.stop(STOP).await.unwrap_or_else(|e| panic!("a clean stop: {e}; log:\n{}", log_text()));

    // Assert: found once, by its first check and the one confirming it.
    let found: Vec<_> = events.iter().filter(|e| e.event == "market_frozen").collect();
    assert_eq!(found.len(), 1, "one market_frozen row: {found:?}");
    let row = &found[0].detail;
    assert_eq!(row["checks"], 2, "found by its first check and one confirmation: {row}");
    assert!(row["quiet_ms"].as_u64().is_some_and(|ms| ms >= 2000), "{row}");
    assert!(row["book_differs"] == true || row["missed_trades"].as_u64().is_some_and(|n| n > 0), "{row}");
    assert!(row["backfill_from_us"].as_i64() < row["backfill_to_us"].as_i64(), "a window to backfill: {row}");
    let market_of_row = texts(&db.url, "SELECT market FROM feed_events WHERE event = 'market_frozen'").await;
    assert_eq!(market_of_row, std::slice::from_ref(&frozen));
    // Resynced on the same connection: no new connection, one `connected` row, and the
    // market asked for afresh with `get_snapshot`.
    assert_eq!(sim.stats().connections_total, connections, "no reconnect");
    assert_eq!(events.iter().filter(|e| e.event == "connected").count(), 1);
    let asked = sim.commands_received().into_iter().any(|(_, c)| {
        c["params"]["action"] == "get_snapshot"
            && c["params"]["market_tickers"] == serde_json::json!([frozen])
    });
    assert!(asked, "a get_snapshot of the frozen market");
    // One incident: one alert and one recovery, nothing else alerted.
    let firing = hooks.accepted_of("market_frozen", "firing");
    let resolved = hooks.accepted_of("market_frozen", "resolved");
    assert_eq!((firing.len(), resolved.len()), (1, 1), "{:?}", hooks.all());
    assert_eq!(firing[0]["source"], "sim/0");
    assert_eq!(firing[0]["id"], resolved[0]["id"], "an alert and its recovery share an id");
    assert!(firing[0]["message"].as_str().is_some_and(|m| m.contains(&frozen)), "{}", firing[0]);
    assert_eq!(hooks.accepted().len(), 2, "nothing else was alerted: {:?}", hooks.all());
    assert_eq!(counters, [Some(1.0), Some(0.0)], "found once, none frozen now");
    // Its trades of the window were recovered over REST, each stored once, and the window is
    // shown as recovered in gaps() and coverage().
    assert!(!missed.is_empty(), "the exchange traded the market while it was frozen");
    let duplicated = texts(
        &db.url,
        &format!("SELECT trade_id FROM trades WHERE market = '{frozen}' GROUP BY 1 HAVING count(*) > 1"),
    )
    .await;
    assert_eq!(duplicated, Vec::<String>::new(), "each trade stored once");
    // Its book was stale until the fresh snapshot came: book changes are never recovered.
    assert_eq!(window, ["frozen true", "stale false"], "the frozen window, recovered, then the resync");
    assert_eq!(coverage, ["0 1 true"], "coverage counts the frozen window as recovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_quiet_markets_raise_no_alert_and_their_checks_stay_within_the_rest_budget() {
    // Arrange: 1,000 markets on which nothing happens (two connections of 500), each worth a
    // check after 1 s of quiet: far more checks are due than the budget allows.
    let db = TestDb::new().await;
    let markets = market_names(1000);
    let sim = simulator(markets.clone(), 1);
    sim.pause();
    let dir = tempfile::tempdir().expect("temp dir");
    let (hooks, hook) = Hooks::serve(0).await;
    let mut config = config(dir.path(), &db, &serve(&sim).await, &markets, &hook);
    // The feed is quiet by nature: `feed_stale` is not what this test is about.
    config.feed("market_quiet_after", "\"1s\"").feed("stale_after", "\"0s\"");
    let mut app = spawn_app(dir.path(), "tickd", &config).await;
    let addr = app.dashboard();
    app.wait_live(2, LIVE).await;
    let checks =
        |app: &TestApp| -> u64 { app.health.snapshot().conns.iter().map(|c| c.counts.market_checks).sum() };

    // Act: let the checks run for a while.
    let started = Instant::now();
    let requests_before = sim.stats().rest_requests;
    let checks_before = checks(&app);
    app.wait("30 more checks of quiet markets", NOTICE, |app| checks(app) >= checks_before + 30).await;
    let requests = sim.stats().rest_requests - requests_before;
    let elapsed = started.elapsed();
    let frozen_total = metric(addr, r#"tickd_feed_markets_frozen_total{feed="sim",conn="0"}"#).await;
    let events = feed_events(&db.url).await;
    app.stop(STOP).await.unwrap_or_else(|e| panic!("a clean stop: {e}; log:\n{}", log_text()));

    // Assert: nothing found, nothing alerted.
    assert_eq!(events.iter().filter(|e| e.event == "market_frozen").count(), 0);
    assert_eq!(frozen_total, Some(0.0));
    assert!(hooks.all().is_empty(), "no alert: {:?}", hooks.all());
    // Within the checks' share of the budget: a second's burst, then their rate. (An upper
    // bound from the configuration, not a speed: more time only loosens it.)
    let share = u64::from(check_rate(REST_RATE));
    let allowed = share * (elapsed.as_secs() + 2);
    assert!(requests > 0, "the checks asked REST");
    assert!(
        requests <= allowed,
        "{requests} REST requests in {elapsed:?}: more than the checks' {share}/s (allowed {allowed})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulators_freeze_stops_one_markets_updates_until_its_snapshot_is_asked_for() {
    // Arrange: a feed (no REST checks) following three busy markets.
    let sim_cfg =
        SimConfig { markets: market_names(3), rate: 600, lifecycle_every: 0, ..SimConfig::default() };
    let h = common::Harness::start(sim_cfg, common::Transport::Tcp, |_| {}).await;
    h.wait_live(1, LIVE).await;
    let frozen = h.markets[1].clone();
    let of = |market: &str, ticks: &[std::sync::Arc<tickd::tick::Tick>]| {
        ticks
            .iter()
            .filter(|t| &*t.market == market && !matches!(t.kind, tickd::tick::TickKind::Feed(_)))
            .count()
    };

    // Act: freeze one market, and let the others run on past the switch.
    h.sim.freeze(&frozen);
    let others = h.markets[0].clone();
    let settled = h.ticks.all().len();
    h.ticks
        .wait_until("the other markets to keep updating", NOTICE, |t| {
            (of(&others, t) > of(&others, &t[..settled]) + 200).then_some(())
        })
        .await;
    let before = h.ticks.all();
    let book_before = h.sim.book(&frozen);
    h.ticks
        .wait_until("another 200 updates of the other markets", NOTICE, |t| {
            (of(&others, t) > of(&others, &before) + 200).then_some(())
        })
        .await;
    let during = h.ticks.all();
    let book_moved = h.sim.book(&frozen);
    // The client asks for every book afresh: the frozen market's snapshot, then its updates.
    assert!(h.handle.refresh_books(), "asked");
    h.ticks
        .wait_until("the frozen market to update again", NOTICE, |t| {
            (of(&frozen, t) > of(&frozen, &during) + 5).then_some(())
        })
        .await;

    // Assert: nothing of it came while frozen (after the switch reached the connection),
    // although the exchange changed it.
    assert_eq!(of(&frozen, &during), of(&frozen, &before), "no update of the frozen market while frozen");
    assert!(book_moved.is_some() && book_moved != book_before, "the exchange changed its book meanwhile");
    h.stop().await;
}
