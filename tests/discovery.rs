//! Following markets by series and event, against the simulator: the daemon runs in this
//! process ([`spawn_app`]) with a feed that names `series` (and no or few `markets`), records
//! into PostgreSQL and serves `/metrics`.
//!
//! What a user sees is asserted: the commands the simulator received on each connection (which
//! markets were subscribed, added with `update_subscription` or deleted), its connection
//! counts (no reconnect), rows of `markets`, `trades` and `lifecycle_events`, and
//! `tickd_markets_followed`. No wait is a timing threshold: each polls for what a user would
//! see, with a generous limit. The grace timing itself runs on paused time in the unit tests of
//! `feed::discovery`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::app::{TestApp, spawn_app};
use common::daemon::{DaemonConfig, scalar, serve, texts, toml_str, wait_until};
use common::pg::TestDb;
use common::stream::{Client, http_get, subscribe};
use serde_json::json;
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tickd::store::StoreState;

/// How long anything may take to show.
const LIMIT: Duration = Duration::from_secs(90);
/// The dashboard token of every test daemon.
const TOKEN: &str = "discovery-token-0123456789abcdef";

/// A simulator of `markets`, heartbeats an hour apart.
fn simulator(cfg: SimConfig) -> Simulator {
    Simulator::start(SimConfig { heartbeat: Duration::from_secs(3600), ..cfg })
}

/// A simulator of `cfg` and a daemon in this process following `markets` on a feed `sim`,
/// with `tune` applied. The database comes first, so that the simulator's schedule starts
/// with the daemon.
async fn start(
    cfg: SimConfig,
    markets: &[String],
    tune: impl FnOnce(&mut DaemonConfig),
) -> (Simulator, TestApp, tempfile::TempDir) {
    let db = TestDb::new().await;
    let sim = simulator(cfg);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = DaemonConfig::new(&dir.path().join("state"), &db.url, &serve(&sim).await, markets);
    config.feed("ping_interval", &toml_str("1h")).dashboard("token", &toml_str(TOKEN));
    tune(&mut config);
    let app = spawn_app(dir.path(), "tickd", &config).await.with_db(db);
    // Migrated: the tables are there to query.
    app.wait_store(StoreState::Ready, LIMIT).await;
    (sim, app, dir)
}

fn db_url(app: &TestApp) -> String {
    app.db.as_ref().expect("the app's database").url.clone()
}

/// The markets each open simulator connection is subscribed to now, from the commands it
/// received: `subscribe` lists, `add_markets` and `delete_markets` updates, an `unsubscribe`
/// empties (tickd keeps one market list for every market channel of a connection).
fn subscribed(sim: &Simulator) -> BTreeMap<u64, BTreeSet<String>> {
    let open = sim.open_connections();
    let mut conns: BTreeMap<u64, BTreeSet<String>> = open.iter().map(|id| (*id, BTreeSet::new())).collect();
    let tickers = |c: &serde_json::Value| -> Vec<String> {
        c["params"]["market_tickers"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    for (conn, c) in sim.commands_received() {
        let Some(set) = conns.get_mut(&conn) else { continue };
        match (c["cmd"].as_str(), c["params"]["action"].as_str()) {
            (Some("subscribe"), _) => set.extend(tickers(&c)),
            (Some("update_subscription"), Some("add_markets")) => set.extend(tickers(&c)),
            (Some("update_subscription"), Some("delete_markets")) => {
                for t in tickers(&c) {
                    set.remove(&t);
                }
            }
            (Some("unsubscribe"), _) => set.clear(),
            _ => {}
        }
    }
    conns
}

/// Every market subscribed on any connection.
fn all_subscribed(sim: &Simulator) -> BTreeSet<String> {
    subscribed(sim).into_values().flatten().collect()
}

/// The markets named in `update_subscription` commands with `action`.
fn updated(sim: &Simulator, action: &str) -> BTreeSet<String> {
    sim.commands_received()
        .into_iter()
        .filter(|(_, c)| c["cmd"] == "update_subscription" && c["params"]["action"] == action)
        .flat_map(|(_, c)| {
            c["params"]["market_tickers"]
                .as_array()
                .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect()
}

/// A dashboard client subscribed to the lifecycle channel of every market.
async fn lifecycle_watcher(app: &TestApp) -> Client {
    let mut client = Client::connect(app.dashboard(), TOKEN).await;
    let reply = client.ask(subscribe(1, &["lifecycle"], json!("all")), LIMIT).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    client
}

/// `tickd_markets_followed{feed="sim"}` as `/metrics` shows it.
async fn followed_metric(addr: SocketAddr) -> Option<u64> {
    let body = http_get(addr, "/metrics", &[]).await.body;
    body.lines()
        .find_map(|l| l.strip_prefix("tickd_markets_followed{feed=\"sim\"} "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_configured_only_with_series_follows_every_open_market_of_the_series() {
    // Arrange: two series; the feed names one and no market.
    let ours: Vec<String> =
        ["KXA-E1-T10", "KXA-E1-T20", "KXA-E2-T10", "KXA-E3-B5"].map(String::from).to_vec();
    let theirs: Vec<String> = ["KXB-E1-T10", "KXAB-E1-T10"].map(String::from).to_vec();
    let cfg = SimConfig { markets: [ours.clone(), theirs].concat(), rate: 200, ..SimConfig::default() };

    // Act
    let (sim, app, _dir) = start(cfg, &[], |c| {
        c.feed("series", r#"["KXA"]"#);
    })
    .await;

    // Assert: subscribed to exactly the series' markets, counted in /metrics.
    let want: BTreeSet<String> = ours.iter().cloned().collect();
    wait_until("the series' markets subscribed", LIMIT, || {
        let now = all_subscribed(&sim);
        let want = want.clone();
        async move { now == want }
    })
    .await;
    let addr = app.dashboard();
    wait_until("/metrics to count 4 markets followed", LIMIT, || async move {
        followed_metric(addr).await == Some(4)
    })
    .await;
    // The markets table knows what they are.
    let url = db_url(&app);
    wait_until("the markets' series and events stored", LIMIT, || {
        let url = url.clone();
        async move {
            scalar(
                &url,
                "SELECT count(*) FROM markets WHERE series_ticker = 'KXA' AND event_ticker IS NOT NULL \
                 AND title IS NOT NULL AND status = 'active' AND close_time IS NOT NULL AND followed",
            )
            .await
                == 4
        }
    })
    .await;
    let events =
        texts(&url, "SELECT event_ticker FROM markets WHERE series_ticker = 'KXA' ORDER BY market").await;
    assert_eq!(events, ["KXA-E1", "KXA-E1", "KXA-E2", "KXA-E3"]);
    assert_eq!(
        scalar(
            &url,
            "SELECT count(*) FROM markets WHERE market IN ('KXB-E1-T10', 'KXAB-E1-T10') AND followed"
        )
        .await,
        0
    );
    // And SQL users can join ticks with them.
    wait_until("trades of the series stored and joined", LIMIT, || {
        let url = url.clone();
        async move {
            scalar(
                &url,
                "SELECT count(*) FROM trades t JOIN markets m USING (market) WHERE m.series_ticker = 'KXA'",
            )
            .await
                > 0
        }
    })
    .await;
    assert_eq!(sim.stats().connections_total, 1, "one connection, never reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_market_created_mid_run_is_subscribed_with_update_subscription_after_its_lifecycle_message() {
    // Arrange: a new event of two markets every 2 s; listings an hour apart, so only the
    // lifecycle messages can bring the new markets in.
    let cfg = SimConfig {
        markets: market_names(3),
        new_market_every: Some(Duration::from_secs(2)),
        ..SimConfig::default()
    };
    let (sim, app, _dir) = start(cfg, &[], |c| {
        c.feed("series", r#"["SIM"]"#).feed("discovery_interval", &toml_str("1h"));
    })
    .await;
    let mut dashboard = lifecycle_watcher(&app).await;
    wait_until("the first markets subscribed", LIMIT, || {
        let n = all_subscribed(&sim).len();
        async move { n >= 3 }
    })
    .await;
    // The listing is over (it brought the first markets); none other comes for an hour.
    let listings = sim.rest_requests().len();
    let before = all_subscribed(&sim);

    // Act: each round of the simulator creates an event of two markets.
    let added = wait_for(|| {
        updated(&sim, "add_markets").into_iter().filter(|m| !before.contains(m)).collect::<Vec<_>>()
    })
    .await;

    // Assert: added on the open connection, no reconnect, no listing in between.
    assert!(added.iter().all(|m| m.starts_with("SIM-R")), "{added:?}");
    assert!(added.iter().all(|m| all_subscribed(&sim).contains(m)));
    assert_eq!(sim.stats().connections_total, 1, "no reconnect");
    assert_eq!(sim.rest_requests().len(), listings, "no REST listing brought them");
    // The dashboard saw it come.
    let (frame, _) = dashboard
        .until("a market frame of a new market", LIMIT, |v| {
            v["type"] == "market"
                && v["followed"] == true
                && v["market"].as_str().is_some_and(|m| added.iter().any(|a| a == m))
        })
        .await;
    assert_eq!(frame["series"], "SIM", "{frame}");
    assert!(frame["event"].as_str().is_some_and(|e| e.starts_with("SIM-R")), "{frame}");
}

/// Polls `found` until it finds something (at most [`LIMIT`]).
async fn wait_for<T>(mut found: impl FnMut() -> Vec<T>) -> Vec<T> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let v = found();
        if !v.is_empty() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing found after {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_market_is_unsubscribed_after_the_grace_with_its_trades_up_to_settlement_stored() {
    // Arrange: markets close after three 1 s rounds, are determined a round later and settle
    // the round after; a grace of 3 s outlasts the settlement.
    let cfg = SimConfig {
        markets: market_names(2),
        rate: 400,
        new_market_every: Some(Duration::from_secs(1)),
        ..SimConfig::default()
    };
    let (sim, app, _dir) = start(cfg, &[], |c| {
        c.feed("series", r#"["SIM"]"#)
            .feed("discovery_interval", &toml_str("1h"))
            .feed("settled_grace", &toml_str("3s"));
    })
    .await;
    let url = db_url(&app);
    let market = "SIM-MKT-001".to_string();
    let mut dashboard = lifecycle_watcher(&app).await;

    // Act: wait for the market to leave.
    wait_until("SIM-MKT-001 deleted from the subscription", LIMIT, || {
        let gone = updated(&sim, "delete_markets").contains(&market);
        async move { gone }
    })
    .await;

    // Assert: it was still followed when it settled (its settlement is stored), and every
    // trade it made is stored.
    wait_until("the settlement stored", LIMIT, || {
        let url = url.clone();
        async move {
            scalar(
                &url,
                "SELECT count(*) FROM lifecycle_events WHERE market = 'SIM-MKT-001' AND event = 'settled'",
            )
            .await
                == 1
        }
    })
    .await;
    let rest = tickd::kalshi::rest::RestClient::new(
        tickd::kalshi::rest::RestConfig::for_feed(&app.settings.feeds[0], None).expect("REST config"),
        Default::default(),
    )
    .expect("REST client");
    let filter = tickd::kalshi::rest::TradeFilter { ticker: Some(market.clone()), ..Default::default() };
    // Its trades the simulator sent to tickd (it traded before tickd subscribed, too).
    let sent: BTreeSet<String> = sim.trades_sent().into_iter().collect();
    let traded: BTreeSet<String> = rest
        .list_trades(&filter)
        .await
        .expect("trades listed")
        .into_iter()
        .map(|t| t.trade_id)
        .filter(|id| sent.contains(id))
        .collect();
    assert!(!traded.is_empty(), "the market traded while followed");
    wait_until("every trade of SIM-MKT-001 stored", LIMIT, || {
        let url = url.clone();
        let traded = traded.clone();
        async move {
            let stored: BTreeSet<String> =
                texts(&url, "SELECT trade_id FROM trades WHERE market = 'SIM-MKT-001'")
                    .await
                    .into_iter()
                    .collect();
            traded.is_subset(&stored)
        }
    })
    .await;
    wait_until("the market shown as let go", LIMIT, || {
        let url = url.clone();
        async move {
            scalar(
                &url,
                "SELECT count(*) FROM markets WHERE market = 'SIM-MKT-001' AND status = 'finalized' AND NOT followed",
            )
            .await
                == 1
        }
    })
    .await;
    assert_eq!(sim.stats().connections_total, 1, "no reconnect");
    // The dashboard saw it go.
    let (frame, _) = dashboard
        .until("SIM-MKT-001 let go", LIMIT, |v| {
            v["type"] == "market" && v["market"] == "SIM-MKT-001" && v["followed"] == false
        })
        .await;
    assert_eq!(frame["feed"], "sim", "{frame}");
    // A dashboard that connects now gets the state of the markets followed, not of this one.
    let mut late = Client::connect(app.dashboard(), TOKEN).await;
    late.send(&subscribe(2, &["quotes", "book"], json!("all"))).await;
    late.send(&json!({"cmd": "ping", "id": 3})).await;
    let (_, before) = late.until("the pong", LIMIT, |v| v["type"] == "pong").await;
    assert!(before.iter().any(|v| v["state"] == true), "state of the followed markets: {before:?}");
    assert!(!before.iter().any(|v| v["market"] == "SIM-MKT-001"), "{before:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_series_applies_live() {
    // Arrange: following KXA.
    let markets: Vec<String> =
        ["KXA-E1-T1", "KXA-E1-T2", "KXB-E1-T1", "KXB-E2-T1"].map(String::from).to_vec();
    let cfg = SimConfig { markets, rate: 200, ..SimConfig::default() };
    let (sim, app, _dir) = start(cfg, &[], |c| {
        c.feed("series", r#"["KXA"]"#);
    })
    .await;
    let set = |v: &[&str]| v.iter().map(|m| m.to_string()).collect::<BTreeSet<String>>();
    let kxa = set(&["KXA-E1-T1", "KXA-E1-T2"]);
    wait_until("KXA followed", LIMIT, || {
        let ok = all_subscribed(&sim) == kxa;
        async move { ok }
    })
    .await;

    // Act: SIGHUP with KXB instead.
    let mut new = app.settings.clone();
    new.feeds[0].series = vec!["KXB".into()];
    app.reloads.send(new).await.expect("the app takes reloads");

    // Assert: KXB's markets replace KXA's on the same connection.
    let kxb = set(&["KXB-E1-T1", "KXB-E2-T1"]);
    wait_until("KXB followed instead", LIMIT, || {
        let ok = all_subscribed(&sim) == kxb;
        async move { ok }
    })
    .await;
    assert_eq!(sim.stats().connections_total, 1, "no reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_goes_through_rest_429s_and_5xx_and_the_stream_is_undisturbed() {
    // Arrange: one market followed by name, a series to discover; the REST API answers 429
    // twice, then 503 twice.
    let markets: Vec<String> =
        ["FIX-E1-T1", "KXA-E1-T1", "KXA-E1-T2", "KXA-E2-T1"].map(String::from).to_vec();
    let db = TestDb::new().await;
    let sim = simulator(SimConfig { markets, rate: 300, ..SimConfig::default() });
    sim.rest_throttle(2, None);
    sim.rest_fail(2, 503);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config =
        DaemonConfig::new(&dir.path().join("state"), &db.url, &serve(&sim).await, &["FIX-E1-T1".to_string()]);
    config.feed("ping_interval", &toml_str("1h")).feed("series", r#"["KXA"]"#);

    // Act
    let app = spawn_app(dir.path(), "tickd", &config).await.with_db(db);

    // Assert: discovery completed through the failures...
    let want: BTreeSet<String> =
        ["FIX-E1-T1", "KXA-E1-T1", "KXA-E1-T2", "KXA-E2-T1"].map(String::from).into_iter().collect();
    wait_until("every market followed", LIMIT, || {
        let now = all_subscribed(&sim);
        let want = want.clone();
        async move { now == want }
    })
    .await;
    let stats = sim.stats();
    assert_eq!((stats.rest_throttled, stats.rest_failed), (2, 2));
    let metrics = http_get(app.dashboard(), "/metrics", &[]).await.body;
    let retries: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("tickd_rest_retries_total{feed=\"sim\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<u64>().ok()))
        .sum();
    assert_eq!(retries, 4, "each failure tried again: {metrics}");
    // ...while the named market streamed on one connection from the start.
    let url = db_url(&app);
    wait_until("trades of the named market stored", LIMIT, || {
        let url = url.clone();
        async move { scalar(&url, "SELECT count(*) FROM trades WHERE market = 'FIX-E1-T1'").await > 0 }
    })
    .await;
    // The named market is described too: its event, title and that it is followed.
    let described = "SELECT count(*) FROM markets WHERE market = 'FIX-E1-T1' AND event_ticker = 'FIX-E1' \
                     AND title IS NOT NULL AND followed";
    let ok = tokio::time::timeout(LIMIT, async {
        while scalar(&url, described).await != 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let row = texts(
        &url,
        "SELECT concat_ws(' | ', market, event_ticker, series_ticker, title, status, followed) FROM markets",
    )
    .await;
    assert!(ok.is_ok(), "the named market not described: {row:?}");
    assert_eq!(sim.stats().connections_total, 1, "no reconnect");
    assert_eq!(
        scalar(&url, "SELECT count(*) FROM feed_events WHERE event IN ('disconnected', 'gap')").await,
        0,
        "no disconnect and no gap in the ledger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_markets_from_a_series_shard_over_connections_and_stay_correct_as_markets_come_and_go() {
    // Arrange: 2,500 markets of series SIM, at most 1,000 per connection; every 3 s the
    // simulator opens two markets, and after four rounds every first market is determined.
    let cfg = SimConfig {
        markets: market_names(2500),
        rate: 200,
        new_market_every: Some(Duration::from_secs(3)),
        ..SimConfig::default()
    };
    let (sim, app, _dir) = start(cfg, &[], |c| {
        c.feed("series", r#"["SIM"]"#)
            .feed("max_markets_per_connection", "1000")
            .feed("settled_grace", &toml_str("1s"))
            .feed("discovery_interval", &toml_str("1h"));
    })
    .await;
    let addr = app.dashboard();

    // Assert: spread over three connections, each market on one.
    wait_until("2,500 markets followed", LIMIT, || async move { followed_metric(addr).await >= Some(2500) })
        .await;
    let check_shards = |sim: &Simulator| {
        let conns = subscribed(sim);
        let total: usize = conns.values().map(BTreeSet::len).sum();
        let union: BTreeSet<&String> = conns.values().flatten().collect();
        assert_eq!(total, union.len(), "no market on two connections");
        assert!(
            conns.values().all(|s| s.len() <= 1000),
            "a connection over its cap: {:?}",
            conns.values().map(BTreeSet::len).collect::<Vec<_>>()
        );
        union.into_iter().cloned().collect::<BTreeSet<String>>()
    };
    wait_until("three connections", LIMIT, || {
        let n = sim.stats().connections_open;
        async move { n == 3 }
    })
    .await;
    check_shards(&sim);

    // Act: new markets come with each round; the first 2,500 go once determined.
    // Assert: the followed set becomes what the exchange has open: the scheduled markets, on
    // the connections that had room for them. The first connection carries the lifecycle
    // channel and stays; the second emptied and closed; the third holds the scheduled
    // markets.
    wait_until("only scheduled markets followed, on two connections", LIMIT, || {
        let now = all_subscribed(&sim);
        let open = sim.stats().connections_open;
        async move { open == 2 && now.contains("SIM-R0004-T33") && now.iter().all(|m| m.starts_with("SIM-R")) }
    })
    .await;
    let now = check_shards(&sim);
    assert!(now.len() >= 2 && now.len() <= 12, "{now:?}");
    assert_eq!(sim.stats().connections_total, 3, "no reconnect");
    wait_until("/metrics to count what is subscribed", LIMIT, || {
        let n = all_subscribed(&sim).len() as u64;
        async move { followed_metric(addr).await == Some(n) }
    })
    .await;
}
