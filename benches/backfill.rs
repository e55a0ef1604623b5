//! Backfill of an outage on 200 active markets against the simulator: how long until the
//! window is complete, how many REST requests it took, and whether every trade executed during
//! the outage was recovered.
//!
//! One simulator (REST and WebSocket on one port, TCP on 127.0.0.1) serves `BACKFILL_MARKETS`
//! markets (200). The daemon runs in this process as `tickd run` builds it ([`App`]), with one
//! feed following every market, a store on a private PostgreSQL (`DATABASE_URL` when set, as
//! an admin URL), `rest_rate = BACKFILL_REST_RATE` (20: Kalshi's Basic tier) and every other
//! key at its default. Once it is live and its start backfill done:
//!
//! 1. the simulator refuses handshakes and drops the connection; once tickd has noticed, it
//!    runs the trading of a 10-minute outage at once: `BACKFILL_TRADES_PER_MINUTE` (30)
//!    trades per market and minute, 60,000 trades for 200 markets, by running exchange events
//!    until that many trades were executed (the simulator's clock is real time, so their
//!    times fall within the few seconds the outage really lasts: the REST listings and pages
//!    are those of the 10-minute outage, the time span they cover is not);
//! 2. the markets keep trading at a tenth of the rate, handshakes are accepted again, and
//!    from then on the clock runs until the daemon's backfill has completed the window (its
//!    `completed` counter), and REST requests are counted; the window closes at the first
//!    trade after the resubscribe, as on a live exchange;
//! 3. the trades executed in the outage are looked up in `trades`: recovered / executed.
//!
//! Baseline, in the same run and against the same simulator: the same window listed the
//! simplest way, one market after the other with the API's default page size (100), through
//! a REST client with the same budget.
//!
//! Run: `cargo bench --bench backfill` (optional env: `BACKFILL_MARKETS`, `BACKFILL_RUNS`,
//! `BACKFILL_REST_RATE`, `BACKFILL_TRADES_PER_MINUTE`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection};
use tickd::app::App;
use tickd::config::{DatabaseUrl, FeedSettings, Settings, StoreSettings};
use tickd::dev::localpg::{LocalPg, LocalPgOptions};
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tickd::kalshi::rest::{RestClient, RestConfig, RetryPolicy, TradeFilter};
use tickd::ops::health::Health;
use tickd::telemetry::backfill::BackfillMetrics;
use tickd::telemetry::metrics::FeedState;
use tickd::tick::{Name, now_micros};
use tokio_util::sync::CancellationToken;

/// Longest a step may take before the run is reported as stuck.
const LIMIT: Duration = Duration::from_secs(600);
/// The outage's length, in trading.
const OUTAGE_MINUTES: usize = 10;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Run {
    complete: Duration,
    requests: u64,
    executed: usize,
    recovered: usize,
    baseline: Duration,
    baseline_requests: u64,
}

async fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < LIMIT, "not {what} after {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn completed(health: &Health) -> u64 {
    health.backfill.all().iter().map(|(_, m)| BackfillMetrics::get(&m.completed)).sum()
}

fn pending(health: &Health) -> u64 {
    health.backfill.all().iter().map(|(_, m)| BackfillMetrics::get(&m.pending)).sum()
}

async fn one_run(db_url: &str, markets: usize, rate: u32, per_minute: usize, seed: u64) -> Run {
    let names = market_names(markets);
    let sim = Simulator::start(SimConfig {
        seed,
        markets: names.clone(),
        rate: 2000,
        heartbeat: Duration::from_secs(3600),
        lifecycle_every: 0,
        ..SimConfig::default()
    });
    let addr = sim.bind("127.0.0.1:0".parse().expect("an address")).await.expect("the simulator binds");
    let mut feed = FeedSettings::new("sim", sim.url(addr));
    feed.markets = names.clone();
    feed.rest_rate = rate;
    feed.backoff.initial = Duration::from_millis(50);
    feed.backoff.max = Duration::from_millis(500);
    let mut settings = Settings { feeds: vec![feed.clone()], ..Settings::default() };
    settings.dashboard.enabled = false;
    let state = tempfile::tempdir().expect("state dir");
    settings.state_dir = state.path().to_owned();
    settings.store = Some(StoreSettings { url: DatabaseUrl::new(db_url), ..StoreSettings::default() });
    settings.validate().expect("valid settings");

    let app = App::build(settings).await.expect("the app builds");
    let health = app.health();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run(shutdown.clone()));
    let live = |h: &Health| {
        let s = h.snapshot();
        !s.conns.is_empty() && s.conns.iter().all(|c| c.state == FeedState::Live)
    };
    wait("live", || live(&health)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait("the start backfill done", || pending(&health) == 0).await;
    let done_before = completed(&health);

    // The outage: refused and dropped, then ten minutes of trading at once.
    sim.refuse_handshakes(u32::MAX);
    sim.drop_all();
    wait("disconnected", || !live(&health)).await;
    sim.pause();
    let outage_from_ms = now_micros() / 1000;
    let before: HashSet<String> = sim.trades_executed().into_iter().map(|(_, id, _)| id).collect();
    sim.resume();
    let target = markets * per_minute * OUTAGE_MINUTES;
    let mut executed: Vec<String> = Vec::new();
    while executed.len() < target {
        sim.generate(10_000);
        executed = sim
            .trades_executed()
            .into_iter()
            .map(|(_, id, _)| id)
            .filter(|id| !before.contains(id))
            .collect();
    }
    // Markets keep trading, at a tenth of the rate: the window closes at the first trade
    // after the resubscribe, as it does on a live exchange.
    sim.set_rate(200);
    let outage_to_ms = now_micros() / 1000;
    let requests_before = sim.stats().rest_requests;
    let started = Instant::now();
    sim.refuse_handshakes(0);
    wait("the outage backfilled", || completed(&health) > done_before).await;
    let complete = started.elapsed();
    let requests = sim.stats().rest_requests - requests_before;

    // What is stored of what was executed.
    let mut conn = PgConnection::connect(db_url).await.expect("connect");
    let deadline = Instant::now() + LIMIT;
    let recovered = loop {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM trades WHERE trade_id = ANY($1)")
            .bind(&executed)
            .fetch_one(&mut conn)
            .await
            .expect("count");
        if stored as usize >= executed.len() || Instant::now() > deadline {
            break stored as usize;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let _ = conn.close().await;
    shutdown.cancel();
    let _ = task.await;

    // The baseline: every market in turn, default page size, same budget.
    let client = RestClient::new(
        RestConfig {
            feed: Name::from("baseline"),
            base: feed.rest_base().expect("a REST base"),
            rate,
            timeout: Duration::from_secs(10),
            credentials: None,
            retry: RetryPolicy::default(),
        },
        Arc::default(),
    )
    .expect("a client");
    let requests_before = sim.stats().rest_requests;
    let started = Instant::now();
    let mut listed = 0;
    for market in &names {
        let filter = TradeFilter {
            ticker: Some(market.clone()),
            min_ts: Some(outage_from_ms / 1000 - 1),
            max_ts: Some(outage_to_ms / 1000 + 1),
            page_size: None,
        };
        listed += client.list_trades(&filter).await.expect("the baseline lists").len();
    }
    let baseline = started.elapsed();
    let baseline_requests = sim.stats().rest_requests - requests_before;
    assert!(listed >= executed.len(), "the baseline lists every trade of the outage");
    sim.shutdown();
    Run { complete, requests, executed: executed.len(), recovered, baseline, baseline_requests }
}

fn main() {
    // `cargo test --all-targets` and nextest run bench binaries too: list nothing, run nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let markets = env_or("BACKFILL_MARKETS", 200);
    let runs = env_or("BACKFILL_RUNS", 3).max(1);
    let rate = env_or("BACKFILL_REST_RATE", 20) as u32;
    let per_minute = env_or("BACKFILL_TRADES_PER_MINUTE", 30);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let (server, admin) = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => (None, url),
            _ => {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
                let options = LocalPgOptions { data_dir: Some(dir.path().join("data")), port: None };
                let server = LocalPg::start(options).await.expect("starting PostgreSQL");
                let url = server.url("postgres");
                (Some(server), url)
            }
        };
        let mut all = Vec::new();
        for n in 0..runs {
            let name = format!("tickd_bench_backfill_{}_{n}", std::process::id());
            let db_url = match &server {
                Some(server) => server.create_database(&name).await.expect("create database"),
                None => {
                    let mut conn = PgConnection::connect(&admin).await.expect("connect to DATABASE_URL");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
                        .execute(&mut conn)
                        .await
                        .expect("create database");
                    let mut url = url::Url::parse(&admin).expect("DATABASE_URL");
                    url.set_path(&name);
                    url.to_string()
                }
            };
            let run = one_run(&db_url, markets, rate, per_minute, n as u64 + 1).await;
            println!(
                "run {}: complete {:.2} s, {} REST requests, {}/{} trades recovered; baseline {:.2} s, {} requests",
                n + 1,
                run.complete.as_secs_f64(),
                run.requests,
                run.recovered,
                run.executed,
                run.baseline.as_secs_f64(),
                run.baseline_requests
            );
            all.push(run);
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let complete = median(all.iter().map(|r| r.complete.as_secs_f64()).collect());
        let baseline = median(all.iter().map(|r| r.baseline.as_secs_f64()).collect());
        let requests = median(all.iter().map(|r| r.requests as f64).collect());
        let baseline_requests = median(all.iter().map(|r| r.baseline_requests as f64).collect());
        let ratio = median(all.iter().map(|r| r.recovered as f64 / r.executed as f64).collect());
        println!(
            "backfill of a {OUTAGE_MINUTES}-minute outage on {markets} markets ({per_minute} trades/market/min, \
             rest_rate {rate}), {runs} runs: complete median {complete:.2} s, {requests:.0} REST requests, \
             recovered/executed {ratio:.4}; baseline {baseline:.2} s, {baseline_requests:.0} requests \
             (time ratio {:.2}, request ratio {:.2})",
            baseline / complete,
            baseline_requests / requests,
        );
    });
}
