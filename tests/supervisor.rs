//! The supervisor against the simulator: sharding, live reloads and panic restarts.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{InMemory, poll_until, test_feed_settings};
use tickd::bus::BusBuilder;
use tickd::config::{BusSettings, Settings};
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tickd::feed::supervisor::{Handles, Supervisor, SupervisorDeps};
use tickd::feed::{BoxIo, Connect};
use tickd::telemetry::alerts::{AlertRegistry, Alerter, Series};
use tickd::telemetry::metrics::FeedState;
use tickd::telemetry::rest::RestFeeds;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(60);

struct Running {
    handles: Handles,
    rest: RestFeeds,
    reload: mpsc::Sender<Settings>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tickd::feed::supervisor::SupervisorError>>,
}

fn settings(markets: &[String], cap: usize) -> Settings {
    let mut feed = test_feed_settings("ws://sim.invalid/trade-api/ws/v2", markets);
    feed.max_markets_per_connection = cap;
    Settings { feeds: vec![feed], ..Settings::default() }
}

async fn start(settings: &Settings, connector: Arc<dyn Connect>) -> Running {
    start_alerting(settings, connector, Alerter::default()).await
}

/// Like [`start`], raising alerts through `alerter`.
async fn start_alerting(settings: &Settings, connector: Arc<dyn Connect>, alerter: Alerter) -> Running {
    let mut builder = BusBuilder::new(&BusSettings { lossless_capacity: 1 << 16, lossy_capacity: 16 });
    let mut rx = builder.lossless();
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let shutdown = CancellationToken::new();
    let deps = SupervisorDeps {
        bus: builder.build(),
        shutdown: shutdown.clone(),
        connector,
        jitter_seed: Some(1),
        alerter,
        handles: Default::default(),
        rest: RestFeeds::default(),
        backfill: Default::default(),
        pool: None,
    };
    let rest = deps.rest.clone();
    let sup = Supervisor::start(settings, deps).expect("starts");
    assert!(settings.feeds.iter().all(|f| sup.rest_client(&f.name).is_some()), "a REST client per feed");
    let handles = sup.handles();
    let (reload, rx) = mpsc::channel(4);
    let task = tokio::spawn(sup.run(rx));
    Running { handles, rest, reload, shutdown, task }
}

fn all_live(handles: &Handles, n: usize) -> bool {
    let all = handles.all();
    all.len() == n && all.iter().all(|(_, h)| h.metrics.state() == FeedState::Live)
}

fn subscribes(sim: &Simulator, channel: &str) -> Vec<(u64, usize)> {
    sim.commands_received()
        .into_iter()
        .filter(|(_, c)| c["cmd"] == "subscribe" && c["params"]["channels"][0] == channel)
        .map(|(conn, c)| (conn, c["params"]["market_tickers"].as_array().map_or(0, Vec::len)))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_long_market_list_is_spread_over_connections_with_lifecycle_on_one() {
    let markets = market_names(7);
    let sim = Simulator::start(SimConfig { markets: markets.clone(), rate: 50, ..SimConfig::default() });
    let run = start(&settings(&markets, 3), Arc::new(InMemory(sim.clone()))).await;

    let handles = run.handles.clone();
    poll_until("three live connections", LIMIT, || all_live(&handles, 3)).await;

    let mut sizes: Vec<usize> = subscribes(&sim, "orderbook_delta").into_iter().map(|(_, n)| n).collect();
    sizes.sort();
    assert_eq!(sizes, vec![1, 3, 3]);
    assert_eq!(subscribes(&sim, "market_lifecycle_v2").len(), 1, "lifecycle covers every market once");
    assert_eq!(sim.stats().connections_open, 3);
    let ids: Vec<String> = run.handles.all().into_iter().map(|(id, _)| id.to_string()).collect();
    assert_eq!(ids, vec!["sim/0", "sim/1", "sim/2"]);
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_reload_with_new_markets_updates_subscriptions_without_reconnecting() {
    let markets = market_names(8);
    let sim = Simulator::start(SimConfig { markets: markets.clone(), rate: 50, ..SimConfig::default() });
    let run = start(&settings(&markets[..4], 5), Arc::new(InMemory(sim.clone()))).await;
    let handles = run.handles.clone();
    poll_until("one live connection", LIMIT, || all_live(&handles, 1)).await;
    let connects_before = sim.stats().connections_total;

    // Remove one market, add four: five stay on the first connection, two open a second one.
    // The REST budget changes too, which needs no reconnect either.
    let mut next: Vec<String> = markets[1..8].to_vec();
    next.sort();
    let mut new_settings = settings(&next, 5);
    new_settings.feeds[0].rest_rate = 3;
    run.reload.send(new_settings).await.unwrap();

    let (s, h) = (sim.clone(), run.handles.clone());
    poll_until("markets moved", LIMIT, || {
        let actions: Vec<String> = s
            .commands_received()
            .iter()
            .filter(|(_, c)| c["cmd"] == "update_subscription")
            .filter_map(|(_, c)| c["params"]["action"].as_str().map(str::to_owned))
            .collect();
        actions.contains(&"add_markets".into())
            && actions.contains(&"delete_markets".into())
            && all_live(&h, 2)
    })
    .await;
    assert_eq!(sim.stats().connections_total, connects_before + 1, "only the new shard connects");
    let mut followed: Vec<String> = Vec::new();
    for (_, handle) in run.handles.all() {
        followed.extend(handle.books().await.into_iter().map(|(m, _)| m.to_string()));
    }
    followed.sort();
    assert_eq!(followed, next);
    let rest_feeds: Vec<String> = run.rest.all().into_iter().map(|(f, _)| f.to_string()).collect();
    assert_eq!(rest_feeds, ["sim"], "the feed's REST telemetry is listed for /metrics and alerts");
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
}

/// Panics on the first connection attempt, then connects to the simulator.
struct PanicsOnce {
    inner: InMemory,
    calls: AtomicU32,
}

impl Connect for PanicsOnce {
    fn open<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<BoxIo>> + Send + 'a>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("injected connector failure");
        }
        self.inner.open(host, port)
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicked_feed_actor_is_restarted() {
    let markets = market_names(2);
    let sim = Simulator::start(SimConfig { markets: markets.clone(), rate: 50, ..SimConfig::default() });
    let connector = Arc::new(PanicsOnce { inner: InMemory(sim.clone()), calls: AtomicU32::new(0) });
    let run = start(&settings(&markets, 10), connector.clone()).await;

    let handles = run.handles.clone();
    poll_until("live after the restart", LIMIT, || all_live(&handles, 1)).await;
    assert_eq!(connector.calls.load(Ordering::SeqCst), 2, "one panic, one restart");
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
}

/// Refuses the first `refuse` attempts, panics on the next one, then connects to the simulator.
struct RefusesThenPanics {
    inner: InMemory,
    refuse: u32,
    calls: AtomicU32,
}

impl Connect for RefusesThenPanics {
    fn open<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<BoxIo>> + Send + 'a>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call == self.refuse {
            panic!("injected connector failure");
        }
        if call < self.refuse {
            let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "injected refusal");
            return Box::pin(async move { Err(refused) });
        }
        self.inner.open(host, port)
    }
}

#[tokio::test(start_paused = true)]
async fn a_feed_actor_restarted_after_a_panic_keeps_its_open_alert_and_resolves_it_once() {
    // Arrange: three refusals raise `max_reconnects`; the actor panics; the new one connects
    // and stays healthy, which is the end of the incident the old one opened.
    let markets = market_names(2);
    let sim = Simulator::start(SimConfig { markets: markets.clone(), rate: 50, ..SimConfig::default() });
    let connector =
        Arc::new(RefusesThenPanics { inner: InMemory(sim.clone()), refuse: 3, calls: AtomicU32::new(0) });
    let mut settings = settings(&markets, 10);
    settings.feeds[0].max_reconnects = 3;
    let registry = AlertRegistry::default();

    // Act
    let run = start_alerting(&settings, connector.clone(), registry.alerter()).await;
    let r = registry.clone();
    poll_until("the alert raised before the panic", LIMIT, || !r.active().is_empty()).await;
    let handles = run.handles.clone();
    poll_until("live after the restart", LIMIT, || all_live(&handles, 1)).await;
    poll_until("the alert resolved", LIMIT, || r.active().is_empty()).await;

    // Assert: what /metrics shows of the incident: raised once, resolved once.
    assert_eq!(connector.calls.load(Ordering::SeqCst), 5, "3 refused, a panic, connected");
    let series: Vec<((String, String), Series)> = registry.metrics().series();
    assert_eq!(
        series,
        [(
            ("max_reconnects".to_string(), "sim/0".to_string()),
            Series { fired: 1, resolved: 1, active: false }
        )]
    );
    run.shutdown.cancel();
    run.task.await.unwrap().unwrap();
}
