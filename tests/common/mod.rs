//! Test harness: a simulator, a feed actor against it, and everything the feed publishes.
#![allow(dead_code)]

pub mod app;
pub mod daemon;
pub mod hooks;
pub mod pg;
pub mod stream;
pub mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tickd::bus::{Bus, BusBuilder};
use tickd::config::{BusSettings, FeedSettings};
use tickd::dev::sim::{SimConfig, Simulator};
use tickd::feed::{BoxIo, Connect, FeedConfig, FeedContext, FeedExit, FeedHandle, TcpConnector, feed};
use tickd::telemetry::alerts::Alerter;
use tickd::telemetry::metrics::FeedMetrics;
use tickd::tick::{BookSnapshot, ConnId, FeedEvent, Tick, TickKind};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

/// Opens in-process streams to a simulator: no real I/O, so paused time stays exact.
pub struct InMemory(pub Simulator);

impl Connect for InMemory {
    fn open<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<BoxIo>> + Send + 'a>> {
        let stream = self.0.connect_in_memory();
        Box::pin(async move { Ok(Box::new(stream) as BoxIo) })
    }
}

/// How the feed reaches the simulator.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Real sockets on 127.0.0.1, port 0.
    Tcp,
    /// In-process pipes (paused-time tests).
    InMemory,
}

/// Every tick a feed published, with a way to wait for a condition on them.
#[derive(Clone, Default)]
pub struct Collected {
    ticks: Arc<Mutex<Vec<Arc<Tick>>>>,
    /// When each tick arrived, on tokio's clock (exact on paused time: the collector runs at
    /// the instant the feed publishes).
    arrived: Arc<Mutex<Vec<Instant>>>,
    notify: Arc<Notify>,
}

impl Collected {
    /// Waits until `check` returns `Some`, or panics naming `what` after `limit`.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&[Arc<Tick>]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check(&self.ticks.lock().unwrap()) {
                return v;
            }
            if timeout_at(deadline, notified).await.is_err() {
                let events: Vec<FeedEvent> = self.events();
                panic!("timed out after {limit:?} waiting for {what}; feed events so far: {events:?}");
            }
        }
    }

    /// Waits for a feed event matching `pred`, counting only events after the first `skip`.
    pub async fn wait_event(
        &self,
        what: &str,
        limit: Duration,
        skip: usize,
        pred: impl Fn(&FeedEvent) -> bool,
    ) -> FeedEvent {
        self.wait_until(what, limit, |ticks| feed_events(ticks).into_iter().skip(skip).find(|e| pred(e)))
            .await
    }

    /// Feed events so far, in order.
    pub fn events(&self) -> Vec<FeedEvent> {
        feed_events(&self.ticks.lock().unwrap())
    }

    /// Feed events so far, in order, each with the instant it arrived.
    pub fn timed_events(&self) -> Vec<(Instant, FeedEvent)> {
        let ticks = self.ticks.lock().unwrap();
        let arrived = self.arrived.lock().unwrap();
        ticks
            .iter()
            .zip(arrived.iter())
            .filter_map(|(t, at)| match &t.kind {
                TickKind::Feed(e) => Some((*at, e.clone())),
                _ => None,
            })
            .collect()
    }

    /// How many feed events so far.
    pub fn event_count(&self) -> usize {
        self.events().len()
    }

    /// Trade ids published so far, in order.
    pub fn trade_ids(&self) -> Vec<String> {
        self.ticks
            .lock()
            .unwrap()
            .iter()
            .filter_map(|t| match &t.kind {
                TickKind::Trade(trade) => Some(trade.trade_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// All ticks so far.
    pub fn all(&self) -> Vec<Arc<Tick>> {
        self.ticks.lock().unwrap().clone()
    }
}

/// Checks `cond` every 10 ms (of tokio time: virtual in paused tests) until it holds, or
/// panics naming `what` after `limit`. For conditions no tick announces (metrics, sim state).
pub async fn poll_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn feed_events(ticks: &[Arc<Tick>]) -> Vec<FeedEvent> {
    ticks
        .iter()
        .filter_map(|t| match &t.kind {
            TickKind::Feed(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// A simulator and one feed actor connected to it.
pub struct Harness {
    pub sim: Simulator,
    pub handle: FeedHandle,
    pub metrics: Arc<FeedMetrics>,
    pub ticks: Collected,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<FeedExit>,
    pub markets: Vec<String>,
    pub bus: Bus,
}

/// Feed settings for tests: quick backoff so real-time tests do not wait seconds.
pub fn test_feed_settings(url: &str, markets: &[String]) -> FeedSettings {
    let mut s = FeedSettings::new("sim", url);
    s.markets = markets.to_vec();
    s.backoff.initial = Duration::from_millis(50);
    s.backoff.max = Duration::from_millis(800);
    s.backoff.healthy_after = Duration::from_secs(2);
    s
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kalshi").join(name)
}

impl Harness {
    /// Starts a simulator with `sim_cfg` and a feed following its markets.
    pub async fn start(
        sim_cfg: SimConfig,
        transport: Transport,
        tune: impl FnOnce(&mut FeedSettings),
    ) -> Harness {
        Self::start_with(sim_cfg, transport, tune, |_| {}, None).await
    }

    /// Like [`Harness::start`], with a hook on the feed config (credentials, alerts).
    pub async fn start_with(
        sim_cfg: SimConfig,
        transport: Transport,
        tune: impl FnOnce(&mut FeedSettings),
        tune_cfg: impl FnOnce(&mut FeedConfig),
        alert_command: Option<PathBuf>,
    ) -> Harness {
        let markets = sim_cfg.markets.clone();
        let sim = Simulator::start(sim_cfg);
        let (url, connector): (String, Arc<dyn Connect>) = match transport {
            Transport::Tcp => {
                let addr = sim.bind("127.0.0.1:0".parse().unwrap()).await.expect("simulator binds");
                (sim.url(addr), Arc::new(TcpConnector))
            }
            Transport::InMemory => {
                ("ws://sim.invalid/trade-api/ws/v2".to_string(), Arc::new(InMemory(sim.clone())))
            }
        };
        let mut settings = test_feed_settings(&url, &markets);
        tune(&mut settings);
        let mut cfg = FeedConfig {
            conn: ConnId::new("sim", 0),
            markets: settings.markets.clone(),
            settings,
            lifecycle: true,
            credentials: None,
        };
        tune_cfg(&mut cfg);
        let mut builder = BusBuilder::new(&BusSettings { lossless_capacity: 1 << 16, lossy_capacity: 1024 });
        let mut rx = builder.lossless();
        let bus = builder.build();
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(FeedMetrics::default());
        let ctx = FeedContext {
            bus: bus.clone(),
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
            connector,
            alerter: Alerter::new(alert_command),
            jitter_seed: Some(7),
            checks: None,
            backfill: None,
        };
        let ticks = Collected::default();
        let sink = ticks.clone();
        tokio::spawn(async move {
            while let Some(tick) = rx.recv().await {
                sink.arrived.lock().unwrap().push(Instant::now());
                sink.ticks.lock().unwrap().push(tick);
                sink.notify.notify_waiters();
            }
        });
        let (handle, run) = feed(cfg, ctx);
        let task = tokio::spawn(run);
        Harness { sim, handle, metrics, ticks, shutdown, task, markets, bus }
    }

    /// Waits until the feed publishes `Live` for the `n`-th time (1-based).
    pub async fn wait_live(&self, n: usize, limit: Duration) {
        self.ticks
            .wait_until(&format!("Live #{n}"), limit, |ticks| {
                (feed_events(ticks).iter().filter(|e| matches!(e, FeedEvent::Live)).count() >= n)
                    .then_some(())
            })
            .await
    }

    /// Stops the exchange's market events and waits until the feed has read everything the
    /// exchange wrote before that: once the simulator has written all it generated before the
    /// pause, an unknown-type marker frame goes last on the same ordered stream, so once it is
    /// counted nothing older is in flight. (The simulator writes a marker ahead of updates it
    /// has not written yet, hence the wait for it to catch up first.)
    pub async fn quiesce(&self, limit: Duration) {
        self.sim.pause();
        let sim = self.sim.clone();
        poll_until("the simulator to write what it generated before its pause", limit, || sim.caught_up())
            .await;
        let before = self.metrics.snapshot().unknown_types;
        self.sim.send_unknown(1);
        let metrics = self.metrics.clone();
        poll_until("the marker frame", limit, || metrics.snapshot().unknown_types > before).await;
        // Everything the feed published before the marker must also have reached the collector.
        let published = self.bus.stats().published as usize;
        self.ticks
            .wait_until("the collector to catch up", limit, |t| (t.len() >= published).then_some(()))
            .await;
    }

    /// The feed's books and the simulator's books for every followed market.
    pub async fn books(&self) -> (BTreeMap<String, BookSnapshot>, BTreeMap<String, BookSnapshot>) {
        let ours: BTreeMap<String, BookSnapshot> =
            self.handle.books().await.into_iter().map(|(m, b)| (m.to_string(), b)).collect();
        let theirs: BTreeMap<String, BookSnapshot> =
            self.markets.iter().filter_map(|m| self.sim.book(m).map(|b| (m.clone(), b))).collect();
        (ours, theirs)
    }

    /// Asserts every followed market's book equals the exchange's.
    pub async fn assert_books_match(&self) {
        let (ours, theirs) = self.books().await;
        assert_eq!(theirs.len(), self.markets.len(), "the simulator knows every market");
        for (market, book) in &theirs {
            assert_eq!(ours.get(market), Some(book), "book of {market}");
        }
    }

    pub async fn stop(self) -> FeedExit {
        self.shutdown.cancel();
        self.task.await.expect("feed task ends without panicking")
    }
}
