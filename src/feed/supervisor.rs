//! The supervisor: one feed actor per connection, market sharding, restarts and reloads.
//!
//! Each configured feed becomes one or more connections: a market list longer than
//! `max_markets_per_connection` is spread over several (`name/0`, `name/1`, ...). Only the
//! first connection of a feed carries `market_lifecycle_v2`, which covers every market.
//! Actors run in one `JoinSet`; an actor that panics is logged as a panic and restarted
//! after a growing delay, with the markets it had. A reload applies market changes to the
//! running actors with `update_subscription` (no reconnect): removed markets leave their
//! connection, new ones fill connections with room, then new connections. Other changes to a
//! running feed need a restart and are logged as such; feeds added or removed start or stop.
//!
//! Each feed also gets one REST client ([`RestClient`]: its request budget, signing key and
//! metrics), for what needs the exchange's REST API; a reload that changes `rest_url`,
//! `rest_rate` or `rest_timeout` replaces it at once (its counters carry on). The feed's
//! connections check their quiet markets with it ([`crate::feed::frozen`]), within one share
//! of its budget for all of them together.
//!
//! A feed with `backfill` (and the `trade` channel) gets a backfill task ([`backfill`]) in
//! the same `JoinSet`, which its connections hand the windows they may have missed trades in;
//! it runs with the store's database and the feed's REST client, replaced like the others on
//! a reload that changes the REST settings.
//!
//! A feed with `series` or `events` also gets a discovery task ([`discovery`]) in the same
//! `JoinSet`: it sends the markets it finds, and the supervisor follows the feed's `markets`
//! together with them, applied like a reload's market changes. A reload that changes what
//! discovery does (series, events, its intervals, the REST settings) starts a new run of it,
//! which keeps the markets found so far that still belong to what the feed follows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::bus::Bus;
use crate::config::{FeedSettings, Settings};
use crate::feed::backfill::{self, BackfillContext, BackfillHandle};
use crate::feed::discovery::{self, Discovered, DiscoveryConfig, DiscoveryContext};
use crate::feed::frozen::CheckRest;
use crate::feed::{Connect, FeedConfig, FeedContext, FeedExit, FeedHandle, feed};
use crate::kalshi::rest::{RestClient, RestConfig};
use crate::kalshi::sign::Credentials;
use crate::telemetry::alerts::Alerter;
use crate::telemetry::backfill::BackfillFeeds;
use crate::telemetry::metrics::FeedMetrics;
use crate::telemetry::rest::RestFeeds;
use crate::tick::{ConnId, Name};

/// The most a panicked actor waits before its restart.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// A discovery that panics sooner than this after its start is not started again (it would
/// only panic again), until a reload.
const MIN_DISCOVERY_LIFE: Duration = Duration::from_secs(10);

/// Discovered market lists queued for the supervisor, from every feed's discovery. When full,
/// a discovery task waits (its next list replaces this one anyway).
const DISCOVERED_QUEUE: usize = 16;

/// Why the supervisor stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A feed's signing key could not be loaded.
    #[error("feed {feed}: {reason}")]
    Credentials {
        /// The feed.
        feed: String,
        /// What went wrong.
        reason: String,
    },
    /// A feed reached `max_reconnects` with `on_max_reconnects = "exit"`.
    #[error("feed connection {0} gave up after too many reconnects; exiting as configured")]
    FeedGaveUp(ConnId),
}

/// What the supervisor's actors share.
#[derive(Clone)]
pub struct SupervisorDeps {
    /// Where ticks go.
    pub bus: Bus,
    /// Cancelled at shutdown; each actor gets a child token.
    pub shutdown: CancellationToken,
    /// How byte streams are opened (TCP in production).
    pub connector: Arc<dyn Connect>,
    /// Seed for backoff jitter (tests); `None` seeds each actor from the OS.
    pub jitter_seed: Option<u64>,
    /// How feeds raise and resolve alerts (`AlertRegistry::alerter` in `tickd run`).
    pub alerter: Alerter,
    /// Where the running connections are listed for whoever reads them (the daemon's health).
    pub handles: Handles,
    /// Where each feed's REST telemetry is listed (the daemon's health).
    pub rest: RestFeeds,
    /// Where each feed's backfill telemetry is listed (the daemon's health).
    pub backfill: BackfillFeeds,
    /// The store's database, for the backfill's reads (newest stored trade per market,
    /// trades stored already); `None` without a store.
    pub pool: Option<sqlx::PgPool>,
}

/// A running connection as the supervisor sees it.
struct Conn {
    cfg: FeedConfig,
    handle: FeedHandle,
    cancel: CancellationToken,
    task: Id,
    restarts: u32,
}

/// The handles of running connections, readable while the supervisor runs.
#[derive(Clone, Default)]
pub struct Handles(Arc<Mutex<BTreeMap<ConnId, FeedHandle>>>);

impl Handles {
    /// Every running connection, by id.
    pub fn all(&self) -> Vec<(ConnId, FeedHandle)> {
        self.0.lock().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }

    fn set(&self, id: ConnId, handle: Option<FeedHandle>) {
        if let Ok(mut map) = self.0.lock() {
            match handle {
                Some(h) => map.insert(id, h),
                None => map.remove(&id),
            };
        }
    }
}

/// A feed's running discovery.
struct DiscoveryRun {
    /// Its number; lists from older runs are ignored.
    run: u64,
    /// Its task in the actors' `JoinSet`.
    task: Id,
    /// When it started.
    started: tokio::time::Instant,
    /// It panicked and was not started again (its markets stay followed).
    dead: bool,
    cancel: CancellationToken,
    /// The markets it found last.
    markets: Vec<String>,
}

/// One actor per connection.
pub struct Supervisor {
    deps: SupervisorDeps,
    alerter: Alerter,
    feeds: Vec<FeedSettings>,
    conns: BTreeMap<ConnId, Conn>,
    tasks: JoinSet<FeedExit>,
    task_ids: HashMap<Id, ConnId>,
    handles: Handles,
    /// Each feed's REST client, by feed name.
    rest: BTreeMap<String, RestClient>,
    /// Each feed's frozen-market checks (its REST client and their share of its budget), by
    /// feed name.
    checks: BTreeMap<String, CheckRest>,
    /// Counts applied reloads, for whoever reports that a reload is done (systemd).
    reloaded: watch::Sender<u64>,
    /// Each discovering feed's discovery, by feed name.
    discovery: BTreeMap<String, DiscoveryRun>,
    /// Discovery runs started so far (numbers them).
    discovery_runs: u64,
    /// Discovery tasks send here; the receiver is taken by `run`.
    discovered_tx: mpsc::Sender<Discovered>,
    discovered_rx: Option<mpsc::Receiver<Discovered>>,
    /// Each backfilling feed's backfill, by feed name.
    backfills: BTreeMap<String, BackfillRun>,
}

/// A feed's running backfill.
struct BackfillRun {
    handle: BackfillHandle,
    /// Where a reload sends the feed's new REST client.
    rest: watch::Sender<RestClient>,
    /// Its task in the actors' `JoinSet`.
    task: Id,
    cancel: CancellationToken,
}

impl Supervisor {
    /// Starts every configured feed.
    pub fn start(settings: &Settings, deps: SupervisorDeps) -> Result<Supervisor, SupervisorError> {
        // Bounded: a discovery task waits while the supervisor applies earlier lists.
        let (discovered_tx, discovered_rx) = mpsc::channel(DISCOVERED_QUEUE);
        let mut sup = Supervisor {
            alerter: deps.alerter.clone(),
            handles: deps.handles.clone(),
            deps,
            feeds: Vec::new(),
            conns: BTreeMap::new(),
            tasks: JoinSet::new(),
            task_ids: HashMap::new(),
            rest: BTreeMap::new(),
            checks: BTreeMap::new(),
            reloaded: watch::Sender::new(0),
            discovery: BTreeMap::new(),
            discovery_runs: 0,
            discovered_tx,
            discovered_rx: Some(discovered_rx),
            backfills: BTreeMap::new(),
        };
        for feed in &settings.feeds {
            sup.start_feed(feed.clone())?;
        }
        Ok(sup)
    }

    /// The running connections' handles.
    pub fn handles(&self) -> Handles {
        self.handles.clone()
    }

    /// The REST client of `feed` (`None` for a feed that is not running, or whose client could
    /// not be built: logged at its start).
    pub fn rest_client(&self, feed: &str) -> Option<RestClient> {
        self.rest.get(feed).cloned()
    }

    /// The number of reloads applied so far; changes once each reload has been applied.
    pub fn reloads_applied(&self) -> watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    /// Runs until shutdown (then waits for every actor), applying reloads as they come.
    pub async fn run(mut self, mut reload: mpsc::Receiver<Settings>) -> Result<(), SupervisorError> {
        let mut reload_open = true;
        // `self` keeps a sender for new discovery runs, so this never reports closed.
        let mut discovered = self.discovered_rx.take().unwrap_or_else(|| mpsc::channel(1).1);
        loop {
            tokio::select! {
                // Shutdown: actors see the same token; wait for all of them below.
                _ = self.deps.shutdown.cancelled() => break,
                // A new configuration (SIGHUP).
                settings = reload.recv(), if reload_open => match settings {
                    Some(settings) => {
                        self.reload(&settings).await;
                        self.reloaded.send_modify(|n| *n += 1);
                    }
                    None => reload_open = false,
                },
                // A feed's discovery found a new market list (cancel-safe).
                Some(found) = discovered.recv() => self.on_discovered(found).await,
                // An actor finished: shutdown, give-up, or a panic to restart.
                Some(joined) = self.tasks.join_next_with_id() => {
                    if let Some(err) = self.on_joined(joined) {
                        self.deps.shutdown.cancel();
                        self.drain().await;
                        return Err(err);
                    }
                }
            }
        }
        self.drain().await;
        Ok(())
    }

    async fn drain(&mut self) {
        while self.tasks.join_next().await.is_some() {}
        for id in self.conns.keys() {
            self.handles.set(id.clone(), None);
        }
        info!("All feeds stopped.");
    }

    fn on_joined(
        &mut self,
        joined: Result<(Id, FeedExit), tokio::task::JoinError>,
    ) -> Option<SupervisorError> {
        let (task, outcome) = match joined {
            Ok((task, exit)) => (task, Ok(exit)),
            Err(e) => (e.id(), Err(e)),
        };
        let Some(name) = self.task_ids.remove(&task) else {
            if let Some((feed, _)) = self.backfills.iter().find(|(_, b)| b.task == task)
                && let Err(e) = &outcome
                && e.is_panic()
            {
                // Its connections' windows are counted as dropped from now on; a restart
                // starts it again.
                error!(feed, error = %e, "Backfill panicked; this feed's missed trades are no longer fetched.");
            }
            self.on_discovery_joined(task, outcome.err());
            return None;
        };
        match outcome {
            Ok(FeedExit::Shutdown) => None,
            Ok(FeedExit::GaveUp) => {
                warn!(feed = %name.feed, conn = name.index, "Feed connection stopped after giving up, as configured.");
                None
            }
            Ok(FeedExit::ExitProcess) => Some(SupervisorError::FeedGaveUp(name)),
            Err(e) if e.is_panic() => {
                let conn = self.conns.get_mut(&name)?;
                conn.restarts += 1;
                let delay = Duration::from_secs(1u64 << conn.restarts.min(5)).min(MAX_RESTART_DELAY);
                error!(
                    feed = %name.feed,
                    conn = name.index,
                    restarts = conn.restarts,
                    delay_ms = delay.as_millis() as u64,
                    "Feed actor panicked; restarting it."
                );
                let cfg = conn.cfg.clone();
                let restarts = conn.restarts;
                self.spawn(cfg, Some(delay), restarts);
                None
            }
            Err(_) => None,
        }
    }

    fn start_feed(&mut self, settings: FeedSettings) -> Result<(), SupervisorError> {
        let credentials = load_credentials(&settings)?;
        self.set_rest_client(&settings, credentials.clone());
        self.start_backfill(&settings);
        self.start_discovery(&settings);
        let shards = shard(&settings.markets, settings.max_markets_per_connection);
        for (n, markets) in shards.into_iter().enumerate() {
            let cfg = FeedConfig {
                conn: ConnId::new(settings.name.as_str(), n),
                settings: settings.clone(),
                markets,
                lifecycle: n == 0 && settings.lifecycle,
                credentials: credentials.clone(),
            };
            self.spawn(cfg, None, 0);
        }
        self.feeds.push(settings);
        Ok(())
    }

    /// Builds (or replaces) the feed's REST client. One that cannot be built leaves the feed
    /// without REST, which its WebSocket stream does not need; the error is logged.
    fn set_rest_client(&mut self, settings: &FeedSettings, credentials: Option<Arc<Credentials>>) {
        let metrics = self.deps.rest.register(&Name::from(settings.name.as_str()));
        match RestConfig::for_feed(settings, credentials).and_then(|cfg| RestClient::new(cfg, metrics)) {
            Ok(client) => {
                let cfg = client.config();
                info!(feed = settings.name, rest_url = %cfg.base, rate = cfg.rate, "REST client ready.");
                self.checks.insert(settings.name.clone(), CheckRest::new(client.clone()));
                self.rest.insert(settings.name.clone(), client);
            }
            Err(e) => {
                error!(feed = settings.name, error = %e, "No REST client for this feed; its stream goes on.");
                self.rest.remove(&settings.name);
                self.checks.remove(&settings.name);
            }
        }
    }

    /// Starts the feed's backfill when it has `backfill`, the `trade` channel and a REST
    /// client.
    fn start_backfill(&mut self, settings: &FeedSettings) {
        if !settings.backfill || !settings.channels.iter().any(|c| c == "trade") {
            return;
        }
        let Some(rest) = self.rest.get(&settings.name).cloned() else {
            error!(feed = settings.name, "No REST client: trades missed by the stream cannot be backfilled.");
            return;
        };
        let cancel = self.deps.shutdown.child_token();
        let feed = Name::from(settings.name.as_str());
        let (rest_tx, rest) = watch::channel(rest);
        let ctx = BackfillContext {
            metrics: self.deps.backfill.register(&feed),
            feed,
            bus: self.deps.bus.clone(),
            rest,
            pool: self.deps.pool.clone(),
            shutdown: cancel.clone(),
            max_window: settings.backfill_max_window,
        };
        let (handle, run) = backfill::backfill(ctx);
        // In the actors' JoinSet, so that the stop waits for it (it publishes on the bus).
        let task = self
            .tasks
            .spawn(async move {
                run.await;
                FeedExit::Shutdown
            })
            .id();
        self.backfills.insert(settings.name.clone(), BackfillRun { handle, rest: rest_tx, task, cancel });
    }

    /// Starts (or restarts) the feed's discovery when it follows series or events; stops it
    /// when it does not. The markets found by an earlier run stay until the new one reports.
    fn start_discovery(&mut self, settings: &FeedSettings) {
        let kept = self.stop_discovery(&settings.name);
        if !settings.discovers() {
            return;
        }
        let Some(rest) = self.rest.get(&settings.name).cloned() else {
            error!(
                feed = settings.name,
                "No REST client: the markets of `series` and `events` cannot be listed; only `markets` are followed."
            );
            return;
        };
        self.discovery_runs += 1;
        let run = self.discovery_runs;
        let cancel = self.deps.shutdown.child_token();
        let ctx = DiscoveryContext {
            bus: self.deps.bus.clone(),
            rest,
            shutdown: cancel.clone(),
            updates: self.discovered_tx.clone(),
            run,
            initial: kept.clone(),
        };
        let cfg = DiscoveryConfig::for_feed(settings);
        info!(
            feed = settings.name,
            series = cfg.series.len(),
            events = cfg.events.len(),
            "Discovering markets."
        );
        // In the actors' JoinSet, so that the stop waits for it (it publishes on the bus); its
        // id is not a connection's, so its exit is told apart (`on_discovery_joined`).
        let task = self
            .tasks
            .spawn(async move {
                discovery::run(cfg, ctx).await;
                FeedExit::Shutdown
            })
            .id();
        self.discovery.insert(
            settings.name.clone(),
            DiscoveryRun {
                run,
                task,
                started: tokio::time::Instant::now(),
                dead: false,
                cancel,
                markets: kept,
            },
        );
    }

    /// Stops the feed's discovery; returns the markets it had found.
    fn stop_discovery(&mut self, feed: &str) -> Vec<String> {
        match self.discovery.remove(feed) {
            Some(d) => {
                d.cancel.cancel();
                d.markets
            }
            None => Vec::new(),
        }
    }

    /// A task that is no connection ended: a feed's discovery that panicked is logged and
    /// started again (its markets stay followed meanwhile), unless it panicked within
    /// [`MIN_DISCOVERY_LIFE`] of its start, which would only repeat; one that stopped did so on
    /// request.
    fn on_discovery_joined(&mut self, task: Id, error: Option<tokio::task::JoinError>) {
        let Some((feed, started)) =
            self.discovery.iter().find(|(_, d)| d.task == task).map(|(f, d)| (f.clone(), d.started))
        else {
            return;
        };
        let Some(e) = error.filter(|e| e.is_panic()) else { return };
        if started.elapsed() < MIN_DISCOVERY_LIFE {
            error!(feed, error = %e, "Market discovery panicked at once; its markets stay followed, and a reload starts it again.");
            if let Some(d) = self.discovery.get_mut(&feed) {
                d.dead = true;
            }
            return;
        }
        error!(feed, error = %e, "Market discovery panicked; starting it again.");
        if let Some(settings) = self.feeds.iter().find(|f| f.name == feed).cloned() {
            self.start_discovery(&settings);
        }
    }

    /// A discovery run's new list: followed with the feed's static markets.
    async fn on_discovered(&mut self, found: Discovered) {
        let Some(d) = self.discovery.get_mut(&found.feed) else { return };
        if d.run != found.run || d.markets == found.markets {
            return;
        }
        d.markets = found.markets;
        if let Some(feed) = self.feeds.iter().find(|f| f.name == found.feed).cloned() {
            self.apply_markets(&feed).await;
        }
    }

    /// What a feed follows: its `markets`, then those discovered (each once).
    fn wanted(&self, feed: &FeedSettings) -> Vec<String> {
        let mut wanted = feed.markets.clone();
        if let Some(d) = self.discovery.get(&feed.name) {
            let fixed: HashSet<&String> = feed.markets.iter().collect();
            wanted.extend(d.markets.iter().filter(|m| !fixed.contains(m)).cloned());
        }
        wanted
    }

    fn spawn(&mut self, cfg: FeedConfig, delay: Option<Duration>, restarts: u32) {
        let cancel = self.deps.shutdown.child_token();
        let metrics = self.conns.get(&cfg.conn).map(|c| c.handle.metrics.clone()).unwrap_or_default();
        let ctx = FeedContext {
            bus: self.deps.bus.clone(),
            shutdown: cancel.clone(),
            metrics: metrics.clone(),
            connector: self.deps.connector.clone(),
            alerter: self.alerter.clone(),
            jitter_seed: self.deps.jitter_seed,
            checks: self.checks.get(cfg.conn.feed.as_ref()).cloned(),
            backfill: self.backfills.get(&*cfg.conn.feed).map(|b| b.handle.clone()),
        };
        let (handle, run) = feed(cfg.clone(), ctx);
        let task = self
            .tasks
            .spawn(async move {
                if let Some(delay) = delay {
                    // The panicked run's last promise no longer holds; this sleep is the loop.
                    metrics.beat.turn_within(delay);
                    tokio::time::sleep(delay).await;
                }
                run.await
            })
            .id();
        let id = cfg.conn.clone();
        self.task_ids.insert(task, id.clone());
        self.handles.set(id.clone(), Some(handle.clone()));
        self.conns.insert(id, Conn { cfg, handle, cancel, task, restarts });
    }

    fn stop_conn(&mut self, id: &ConnId) {
        if let Some(conn) = self.conns.remove(id) {
            info!(feed = %id.feed, conn = id.index, "Stopping feed connection.");
            conn.cancel.cancel();
            // The task is still joined by `run`; forget its name so its exit is not reported.
            self.task_ids.remove(&conn.task);
            self.handles.set(id.clone(), None);
        }
    }

    /// Applies a new configuration without reconnecting what does not need it.
    pub async fn reload(&mut self, settings: &Settings) {
        info!(feeds = settings.feeds.len(), "Reloading configuration.");
        let new_names: HashSet<&str> = settings.feeds.iter().map(|f| f.name.as_str()).collect();
        let old = std::mem::take(&mut self.feeds);
        for feed in &old {
            if !new_names.contains(feed.name.as_str()) {
                let ids: Vec<ConnId> = self.conn_ids(&feed.name);
                for id in ids {
                    self.stop_conn(&id);
                }
                self.rest.remove(&feed.name);
                self.checks.remove(&feed.name);
                self.deps.rest.remove(&feed.name);
                self.stop_discovery(&feed.name);
                if let Some(b) = self.backfills.remove(&feed.name) {
                    b.cancel.cancel();
                    self.deps.backfill.remove(&feed.name);
                }
            }
        }
        for new in &settings.feeds {
            match old.iter().find(|f| f.name == new.name) {
                None => {
                    if let Err(e) = self.start_feed(new.clone()) {
                        error!(feed = new.name, error = %e, "New feed not started.");
                    }
                }
                Some(current) => {
                    let mut kept = current.clone();
                    if !same_except_live(current, new) {
                        warn!(
                            feed = new.name,
                            "Connection settings changed; they take effect after a restart. Applying market and REST changes only."
                        );
                    }
                    let stopped = self.discovery.get(&new.name).is_none_or(|d| d.dead);
                    let rediscover = !same_rest(current, new)
                        || !same_discovery(current, new)
                        || (new.discovers() && stopped);
                    if !same_rest(current, new) {
                        (kept.rest_url, kept.rest_rate, kept.rest_timeout) =
                            (new.rest_url.clone(), new.rest_rate, new.rest_timeout);
                        // The key the feed started with (a key change waits for a restart).
                        match load_credentials(&kept) {
                            Ok(credentials) => {
                                self.set_rest_client(&kept, credentials);
                                if let (Some(b), Some(client)) =
                                    (self.backfills.get(&new.name), self.rest.get(&new.name))
                                {
                                    b.rest.send_replace(client.clone());
                                }
                                let checks = self.checks.get(&new.name).cloned();
                                for id in self.conn_ids(&new.name) {
                                    if let Some(conn) = self.conns.get(&id) {
                                        conn.handle.set_checks(checks.clone()).await;
                                    }
                                }
                            }
                            Err(e) => error!(feed = new.name, error = %e, "REST settings not applied."),
                        }
                    }
                    kept.markets = new.markets.clone();
                    (kept.series, kept.events) = (new.series.clone(), new.events.clone());
                    (kept.discovery_interval, kept.settled_grace) =
                        (new.discovery_interval, new.settled_grace);
                    if rediscover {
                        self.start_discovery(&kept);
                    }
                    self.apply_markets(&kept).await;
                    self.feeds.push(kept);
                }
            }
        }
    }

    /// Spreads a feed's new market list over its connections, keeping markets where they are.
    async fn apply_markets(&mut self, feed: &FeedSettings) {
        let current: Vec<Shard> = self
            .conn_ids(&feed.name)
            .into_iter()
            .filter_map(|id| self.conns.get(&id).map(|c| (id.clone(), c.cfg.markets.clone())))
            .collect();
        let wanted = self.wanted(feed);
        let (plan, extra) = plan_markets(current, &wanted, feed.max_markets_per_connection);
        for (n, (id, markets)) in plan.into_iter().enumerate() {
            if markets.is_empty() && n > 0 {
                self.stop_conn(&id);
                continue;
            }
            if let Some(conn) = self.conns.get_mut(&id)
                && conn.cfg.markets != markets
            {
                conn.cfg.markets = markets.clone();
                conn.handle.set_markets(markets).await;
            }
        }
        let credentials = self
            .conns
            .values()
            .find(|c| c.cfg.settings.name == feed.name)
            .and_then(|c| c.cfg.credentials.clone());
        for markets in extra {
            let n =
                (0..).find(|n| !self.conns.contains_key(&ConnId::new(feed.name.as_str(), *n))).unwrap_or(0);
            let cfg = FeedConfig {
                conn: ConnId::new(feed.name.as_str(), n),
                settings: feed.clone(),
                markets,
                lifecycle: false,
                credentials: credentials.clone(),
            };
            self.spawn(cfg, None, 0);
        }
    }

    fn conn_ids(&self, feed: &str) -> Vec<ConnId> {
        self.conns.iter().filter(|(_, c)| c.cfg.settings.name == feed).map(|(id, _)| id.clone()).collect()
    }
}

/// The metrics of every running connection (for summaries and Prometheus).
pub fn metrics_of(handles: &Handles) -> Vec<(ConnId, Arc<FeedMetrics>)> {
    handles.all().into_iter().map(|(id, h)| (id, h.metrics)).collect()
}

/// One connection's id and market list.
pub type Shard = (ConnId, Vec<String>);

/// Moves connections from their current market lists to `wanted`: markets stay where they are,
/// removed ones leave, new ones fill connections with room (up to `cap`) in order. Returns the
/// new list per existing connection, and the lists of connections to open for what is left.
pub fn plan_markets(current: Vec<Shard>, wanted: &[String], cap: usize) -> (Vec<Shard>, Vec<Vec<String>>) {
    let cap = cap.max(1);
    let wanted_set: HashSet<&String> = wanted.iter().collect();
    let mut plan = current;
    let mut placed: HashSet<String> = HashSet::new();
    for (_, markets) in &mut plan {
        markets.retain(|m| wanted_set.contains(m) && placed.insert(m.clone()));
    }
    let mut fresh: Vec<String> = wanted.iter().filter(|m| !placed.contains(*m)).cloned().collect();
    fresh.reverse();
    for (_, markets) in &mut plan {
        while markets.len() < cap
            && let Some(m) = fresh.pop()
        {
            markets.push(m);
        }
    }
    fresh.reverse();
    let extra = fresh.chunks(cap).map(<[String]>::to_vec).collect();
    (plan, extra)
}

/// Splits a market list into chunks of at most `cap` (always at least one, maybe empty).
pub fn shard(markets: &[String], cap: usize) -> Vec<Vec<String>> {
    if markets.is_empty() {
        return vec![Vec::new()];
    }
    markets.chunks(cap.max(1)).map(<[String]>::to_vec).collect()
}

/// Whether two settings of one feed differ only in what a reload applies live: the markets,
/// what discovery follows and the REST settings.
fn same_except_live(a: &FeedSettings, b: &FeedSettings) -> bool {
    let mut a = a.clone();
    a.markets = b.markets.clone();
    (a.series, a.events) = (b.series.clone(), b.events.clone());
    (a.discovery_interval, a.settled_grace) = (b.discovery_interval, b.settled_grace);
    (a.rest_url, a.rest_rate, a.rest_timeout) = (b.rest_url.clone(), b.rest_rate, b.rest_timeout);
    &a == b
}

/// Whether discovery follows the same series and events the same way in both, and describes
/// the same static markets.
fn same_discovery(a: &FeedSettings, b: &FeedSettings) -> bool {
    (&a.series, &a.events, &a.markets, a.discovery_interval, a.settled_grace)
        == (&b.series, &b.events, &b.markets, b.discovery_interval, b.settled_grace)
}

/// Whether the REST settings of two settings of one feed are the same.
fn same_rest(a: &FeedSettings, b: &FeedSettings) -> bool {
    (&a.rest_url, a.rest_rate, a.rest_timeout) == (&b.rest_url, b.rest_rate, b.rest_timeout)
}

/// The feed's signing key: the one validation loaded, or, for settings that were never
/// validated, read now.
fn load_credentials(settings: &FeedSettings) -> Result<Option<Arc<Credentials>>, SupervisorError> {
    settings
        .signing_key()
        .map_err(|reason| SupervisorError::Credentials { feed: settings.name.clone(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_market_lists_are_spread_over_connections() {
        let markets: Vec<String> = (0..7).map(|n| format!("M{n}")).collect();
        let shards = shard(&markets, 3);
        assert_eq!(shards.len(), 3);
        assert_eq!(shards[2], vec!["M6".to_string()]);
        assert_eq!(shard(&[], 3), vec![Vec::<String>::new()]);
    }

    #[test]
    fn a_new_market_list_keeps_markets_on_their_connection_and_fills_the_rest() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let current =
            vec![(ConnId::new("f", 0), names(&["A", "B", "C"])), (ConnId::new("f", 1), names(&["D"]))];
        let (plan, extra) = plan_markets(current, &names(&["B", "D", "E", "F", "G", "H"]), 3);
        assert_eq!(plan[0].1, names(&["B", "E", "F"]));
        assert_eq!(plan[1].1, names(&["D", "G", "H"]));
        assert!(extra.is_empty());
        let (plan, extra) = plan_markets(plan, &names(&["B", "X", "Y", "Z", "W"]), 2);
        assert_eq!((plan[0].1.clone(), plan[1].1.clone()), (names(&["B", "X"]), names(&["Y", "Z"])));
        assert_eq!(extra, vec![names(&["W"])]);
    }
}
