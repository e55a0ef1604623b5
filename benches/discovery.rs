//! Discovery of a large series against the simulator: how long until every market is live,
//! and how many REST requests it took.
//!
//! One simulator (its own runtime) serves `DISCOVERY_MARKETS` markets (5,000 by default) of
//! one series over TCP on 127.0.0.1, REST and WebSocket on one port. The daemon runs in this
//! process as `tickd run` builds it ([`App`]), with one feed that names only the series, no
//! store and no dashboard, every other key at its default (`rest_rate = 10`,
//! `max_markets_per_connection = 500`, all three market channels). From `App::run` on, its
//! health is read every millisecond:
//!
//! - *listed*: the feed's connections carry every market (discovery listed them and the
//!   supervisor spread them over connections);
//! - *live*: every connection is live: each subscription acknowledged and every book built
//!   from its snapshot.
//!
//! Each run starts a fresh simulator and daemon; `DISCOVERY_RUNS` runs (5 by default).
//!
//! Run: `cargo bench --bench discovery` (optional env: `DISCOVERY_MARKETS`, `DISCOVERY_RUNS`).

use std::time::{Duration, Instant};

use tickd::app::App;
use tickd::config::{FeedSettings, Settings};
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tickd::telemetry::metrics::FeedState;
use tokio_util::sync::CancellationToken;

/// Longest a run may take before it is reported as stuck.
const LIMIT: Duration = Duration::from_secs(300);

struct Run {
    listed: Duration,
    live: Duration,
    connections: usize,
    rest_requests: u64,
    sim_connections: u64,
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn one_run(markets: usize, seed: u64) -> Run {
    let sim = Simulator::start(SimConfig {
        seed,
        markets: market_names(markets),
        rate: 200,
        heartbeat: Duration::from_secs(3600),
        ..SimConfig::default()
    });
    let addr = sim.bind("127.0.0.1:0".parse().expect("an address")).await.expect("the simulator binds");
    let mut feed = FeedSettings::new("sim", sim.url(addr));
    feed.series = vec!["SIM".into()];
    let mut settings = Settings { feeds: vec![feed], ..Settings::default() };
    settings.dashboard.enabled = false;
    settings.state_dir = std::env::temp_dir().join(format!("tickd-bench-discovery-{}", std::process::id()));
    settings.validate().expect("valid settings");

    let app = App::build(settings).await.expect("the app builds");
    let health = app.health();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(app.run(shutdown.clone()));
    let mut listed = None;
    let live = loop {
        let snapshot = health.snapshot();
        let assigned: u64 = snapshot.conns.iter().map(|c| c.counts.markets).sum();
        if listed.is_none() && assigned == markets as u64 {
            listed = Some(started.elapsed());
        }
        if listed.is_some() && snapshot.conns.iter().all(|c| c.state == FeedState::Live) {
            break (started.elapsed(), snapshot.conns.len());
        }
        assert!(started.elapsed() < LIMIT, "not live after {LIMIT:?}: {assigned} markets assigned");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let stats = sim.stats();
    shutdown.cancel();
    let _ = task.await;
    sim.shutdown();
    Run {
        listed: listed.unwrap_or_default(),
        live: live.0,
        connections: live.1,
        rest_requests: stats.rest_requests,
        sim_connections: stats.connections_total,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --all-targets` and nextest run bench binaries too: list nothing, run nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let markets = env_or("DISCOVERY_MARKETS", 5000);
    let runs = env_or("DISCOVERY_RUNS", 5).max(1);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut all = Vec::new();
    for n in 0..runs {
        let run = rt.block_on(one_run(markets, n as u64 + 1));
        println!(
            "run {}: listed {:.0} ms, live {:.0} ms, {} connections, {} REST requests, {} WebSocket connections",
            n + 1,
            ms(run.listed),
            ms(run.live),
            run.connections,
            run.rest_requests,
            run.sim_connections
        );
        all.push(run);
    }
    let listed: Vec<f64> = all.iter().map(|r| ms(r.listed)).collect();
    let live: Vec<f64> = all.iter().map(|r| ms(r.live)).collect();
    println!(
        "discovery of {markets} markets, {runs} runs: listed median {:.0} ms (min {:.0}, max {:.0}); \
         all live median {:.0} ms (min {:.0}, max {:.0}); REST requests {:?}",
        median(listed.clone()),
        listed.iter().copied().fold(f64::INFINITY, f64::min),
        listed.iter().copied().fold(0.0, f64::max),
        median(live.clone()),
        live.iter().copied().fold(f64::INFINITY, f64::min),
        live.iter().copied().fold(0.0, f64::max),
        all.iter().map(|r| r.rest_requests).collect::<Vec<_>>(),
    );
}
