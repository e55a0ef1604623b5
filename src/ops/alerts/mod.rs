//! The alert monitor: it watches the daemon's health and turns conditions into incidents in
//! the alert registry ([`crate::telemetry::alerts`]), which logs, counts and delivers them.
//!
//! Kinds it raises and resolves:
//! - `feed_stale`: a feed connection is connected for `stale_after` without delivering market
//!   data (see [`incident::DataClock`]);
//! - `database_unreachable`: the store has not reached the database for
//!   `alerts.database_unreachable_after`;
//! - `spool_filling`: the spool holds `alerts.spool_warn_fraction` of `store.spool_max_bytes`;
//! - `rest_unreachable`: a feed's REST calls have failed, with no success since, for
//!   `alerts.rest_unreachable_after` (its client's "failing since", see
//!   [`crate::telemetry::rest`]). About the feed (`source` is its name), not a connection.
//!
//! The [`watch`] task samples the health every [`EVALUATE_EVERY`] and applies the rule of
//! [`incident`]. [`start`] builds the registry `tickd run` uses, with the [`webhook`] as its
//! outlet when one is configured.

pub mod incident;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::health::{Health, HealthSnapshot};
use crate::bus::Bus;
use crate::config::Settings;
use crate::store::{StoreMetrics, StoreState};
use crate::telemetry::alerts::alerter::alert_tick;
use crate::telemetry::alerts::{
    AlertRegistry, DATABASE_UNREACHABLE, FEED_STALE, REST_UNREACHABLE, SPOOL_FILLING, STORE, kept,
};
use crate::telemetry::metrics::{FeedMetrics, FeedState};
use crate::tick::{ConnId, Name};
use incident::{DataClock, Incident, Reading, Rule, Transition};
use webhook::{WEBHOOK_QUEUE, Webhook};

/// How often the monitor samples the health.
pub const EVALUATE_EVERY: Duration = Duration::from_secs(1);

/// Why alerting cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The webhook URL cannot be used (the message never shows the URL's secret parts).
    #[error("alerts.webhook_url: {0}")]
    Webhook(String),
}

/// The registry `tickd run` uses: `alert_command` and, when `[alerts]` names one, the
/// webhook, whose delivery task starts here (call inside the runtime); the open incidents are
/// kept in `state_dir` across restarts, and those the last run left open are taken back.
/// Start the monitoring itself with [`watch`] once the feeds and the store exist, and end with
/// [`AlertRegistry::stopping`] and [`AlertRegistry::close`].
pub fn start(settings: &Settings) -> Result<AlertRegistry, AlertError> {
    let alerts = &settings.alerts;
    let webhook = match alerts.load_webhook_url().map_err(AlertError::Webhook)? {
        Some(url) => Some(
            Webhook::new(&url, alerts.webhook_timeout, alerts.webhook_retries)
                .map_err(AlertError::Webhook)?,
        ),
        None => None,
    };
    let registry = match webhook {
        None => AlertRegistry::with_command(settings.alert_command.clone()),
        Some(hook) => {
            // Bounded: when full the newest notice is dropped, counted and logged (see the
            // registry's `dispatch`).
            let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
            let registry = AlertRegistry::with_outlet(settings.alert_command.clone(), tx);
            info!(webhook = %hook.shown(), "Alerts are posted to a webhook.");
            let (close, metrics) = registry.outlet();
            registry.set_outlet_task(webhook::spawn(hook, rx, close, metrics));
            registry
        }
    };
    // Incidents the last run left open are taken back before any feed starts, so that each
    // is judged again by what raised it.
    let carried = registry.keep_in(settings.state_dir.join(kept::FILE_NAME));
    if carried > 0 {
        info!(carried, "Alerts left open by the last run are judged again.");
    }
    Ok(registry)
}

/// Starts the task that samples the feed and store metrics every [`EVALUATE_EVERY`] and
/// raises and resolves `feed_stale`, `database_unreachable`, `spool_filling` and
/// `rest_unreachable` in `registry`. It ends when `ctx.shutdown` is cancelled; await the handle before closing the
/// bus, since it publishes on it.
pub fn watch(registry: &AlertRegistry, ctx: WatchContext) -> JoinHandle<()> {
    tokio::spawn(run_watch(registry.clone(), ctx))
}

/// What the monitoring task reads and where it publishes.
pub struct WatchContext {
    /// The thresholds.
    pub thresholds: Thresholds,
    /// The daemon's health: the feed connections and the store.
    pub health: Health,
    /// Where `feed_stale` alerts are published as `Alert` feed events (so that dashboards and
    /// `feed_events` show them).
    pub bus: Bus,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
}

/// The thresholds of the monitored kinds, from the settings (read at start; a feed added by
/// a reload gets `alerts.feed_stale_after`).
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// `alerts.resolve_after`.
    pub resolve_after: Duration,
    /// `alerts.database_unreachable_after`.
    pub database_unreachable_after: Duration,
    /// Spool bytes at which `spool_filling` fires; `None` without a store.
    pub spool_warn_bytes: Option<u64>,
    /// `store.spool_max_bytes`.
    pub spool_max_bytes: u64,
    /// `alerts.feed_stale_after`; zero is off.
    pub feed_stale_after: Duration,
    /// `alerts.rest_unreachable_after`.
    pub rest_unreachable_after: Duration,
    /// Per configured feed: its staleness threshold, `None` when off (zero, or a feed with no
    /// markets, whose lifecycle channel may rightly be quiet for hours).
    pub feeds: HashMap<String, Option<Duration>>,
}

impl Thresholds {
    /// The thresholds `settings` ask for.
    pub fn from_settings(settings: &Settings) -> Thresholds {
        let a = &settings.alerts;
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let feeds = settings
            .feeds
            .iter()
            .map(|f| {
                let after = match f.markets.is_empty() {
                    true => None,
                    false => nonzero(f.stale_after.unwrap_or(a.feed_stale_after)),
                };
                (f.name.clone(), after)
            })
            .collect();
        let max = settings.store.as_ref().map_or(0, |s| s.spool_max_bytes);
        Thresholds {
            resolve_after: a.resolve_after,
            database_unreachable_after: a.database_unreachable_after,
            spool_warn_bytes: settings
                .store
                .as_ref()
                .map(|s| ((s.spool_max_bytes as f64 * a.spool_warn_fraction).ceil() as u64).max(1)),
            spool_max_bytes: max,
            feed_stale_after: a.feed_stale_after,
            rest_unreachable_after: a.rest_unreachable_after,
            feeds,
        }
    }

    /// The staleness threshold of `feed`'s connections, `None` when off.
    pub fn stale_after(&self, feed: &str) -> Option<Duration> {
        match self.feeds.get(feed) {
            Some(after) => *after,
            None => (!self.feed_stale_after.is_zero()).then_some(self.feed_stale_after),
        }
    }
}

/// One sample of everything the monitor judges.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// The store, when there is one.
    pub store: Option<StoreSample>,
    /// Every running feed connection.
    pub conns: Vec<ConnSample>,
    /// Every feed's REST API.
    pub rest: Vec<RestSample>,
}

/// One feed's REST API at one instant.
#[derive(Clone, Debug)]
pub struct RestSample {
    /// The feed.
    pub feed: Name,
    /// How long its calls have been failing with no success since; `None` while the last call
    /// succeeded.
    pub failing_for: Option<Duration>,
    /// The last failure, for the alert's message.
    pub last_error: Option<String>,
}

/// The store at one instant.
#[derive(Clone, Copy, Debug)]
pub struct StoreSample {
    /// Its state.
    pub state: StoreState,
    /// Bytes in the spool.
    pub spool_bytes: u64,
}

/// One feed connection at one instant.
#[derive(Clone, Debug)]
pub struct ConnSample {
    /// `feed/n`.
    pub id: ConnId,
    /// Its state.
    pub state: FeedState,
    /// Market-data ticks published so far (trades, quotes, book snapshots and deltas,
    /// lifecycle events).
    pub data: u64,
}

impl Samples {
    /// Reads the metrics now.
    pub fn read(snapshot: &HealthSnapshot, store: Option<&StoreMetrics>) -> Samples {
        Samples {
            store: store
                .map(|m| StoreSample { state: m.state(), spool_bytes: StoreMetrics::get(&m.spool_bytes) }),
            conns: snapshot
                .conns
                .iter()
                .map(|c| {
                    let s = &c.counts;
                    ConnSample {
                        id: c.id.clone(),
                        state: c.state,
                        data: s.trades + s.quotes + s.snapshots + s.deltas + s.lifecycles,
                    }
                })
                .collect(),
            rest: snapshot
                .rest
                .iter()
                .map(|r| RestSample {
                    feed: r.feed.clone(),
                    failing_for: r.failing_since_us.map(|since| {
                        Duration::from_micros(u64::try_from(snapshot.at_us - since).unwrap_or(0))
                    }),
                    last_error: r.metrics.last_error(),
                })
                .collect(),
        }
    }
}

/// What the evaluator decided at one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Raise `kind` about `source`.
    Fire {
        /// The kind.
        kind: &'static str,
        /// `store` or `feed/n`.
        source: Name,
        /// Details.
        message: String,
    },
    /// Resolve `kind` about `source`.
    Resolve {
        /// The kind.
        kind: &'static str,
        /// `store` or `feed/n`.
        source: Name,
        /// Details.
        message: String,
    },
    /// A connection or a feed is no longer running (a reload removed it): whatever is open
    /// about it resolves.
    Gone {
        /// `feed/n`, or the feed's name.
        source: Name,
    },
}

struct ConnWatch {
    clock: DataClock,
    stale: Incident,
}

/// Judges samples: the monitored conditions and their incidents. Pure: time comes in.
pub struct Evaluator {
    t: Thresholds,
    database: Incident,
    spool: Incident,
    conns: BTreeMap<ConnId, ConnWatch>,
    /// `feed_stale` incidents carried over from the last run, until their connection's first
    /// sample.
    carried_stale: BTreeMap<ConnId, Incident>,
    /// `rest_unreachable`, by feed.
    rest: BTreeMap<Name, Incident>,
}

impl Evaluator {
    /// An evaluator with nothing open.
    pub fn new(thresholds: Thresholds) -> Evaluator {
        Evaluator {
            t: thresholds,
            database: Incident::default(),
            spool: Incident::default(),
            conns: BTreeMap::new(),
            carried_stale: BTreeMap::new(),
            rest: BTreeMap::new(),
        }
    }

    /// Takes over the incidents of the monitored kinds that the last run left open, as
    /// (kind, source, open for) at `now`: each resolves once its condition is clear for
    /// `resolve_after`, or fires again once it is bad. Returns those about what no longer
    /// runs (a feed no longer configured, a store no longer there), to resolve now; the feed
    /// actors' own kinds are theirs and are left alone.
    pub fn carry_over(&mut self, now: Instant, incidents: &[(String, String, Duration)]) -> Vec<Change> {
        let mut gone = Vec::new();
        for (kind, source, open_for) in incidents {
            let incident = Incident::carried_over(now, *open_for);
            let configured = source == STORE || self.t.feeds.contains_key(ConnId::feed_of(source));
            if !configured {
                gone.push(Change::Gone { source: Name::from(source.as_str()) });
                continue;
            }
            match (kind.as_str(), ConnId::parse(source)) {
                (DATABASE_UNREACHABLE, _) if source == STORE => self.database = incident,
                (SPOOL_FILLING, _) if source == STORE => self.spool = incident,
                (FEED_STALE, Some(conn)) => {
                    self.carried_stale.insert(conn, incident);
                }
                (REST_UNREACHABLE, None) => {
                    self.rest.insert(Name::from(source.as_str()), incident);
                }
                _ => {}
            }
        }
        gone.dedup();
        gone
    }

    /// Takes the samples read at `now`; returns the alerts to raise and resolve.
    pub fn step(&mut self, now: Instant, samples: &Samples) -> Vec<Change> {
        let mut changes = Vec::new();
        match samples.store {
            Some(store) => self.judge_store(now, store, &mut changes),
            None => self.judge_no_store(&mut changes),
        }
        for conn in &samples.conns {
            self.judge_conn(now, conn, &mut changes);
        }
        let gone: Vec<ConnId> =
            self.conns.keys().filter(|id| !samples.conns.iter().any(|c| &c.id == *id)).cloned().collect();
        for id in gone {
            self.conns.remove(&id);
            changes.push(Change::Gone { source: Name::from(id.to_string()) });
        }
        for rest in &samples.rest {
            self.judge_rest(now, rest, &mut changes);
        }
        let gone: Vec<Name> =
            self.rest.keys().filter(|f| !samples.rest.iter().any(|r| &r.feed == *f)).cloned().collect();
        for feed in gone {
            self.rest.remove(&feed);
            changes.push(Change::Gone { source: feed });
        }
        changes
    }

    fn judge_rest(&mut self, now: Instant, rest: &RestSample, changes: &mut Vec<Change>) {
        let after = self.t.rest_unreachable_after;
        // Failing, but not for long enough yet, says nothing either way: an open alert stays
        // open, and none opens.
        let reading = match rest.failing_for {
            None => Reading::Clear,
            Some(d) if d >= after => Reading::Bad,
            Some(_) => Reading::Unknown,
        };
        let rule = Rule { fire_after: Duration::ZERO, resolve_after: self.t.resolve_after };
        let incident = self.rest.entry(rest.feed.clone()).or_default();
        match incident.observe(reading, now, rule) {
            Some(Transition::Fire { .. }) => changes.push(Change::Fire {
                kind: REST_UNREACHABLE,
                source: rest.feed.clone(),
                message: format!(
                    "{}: REST requests have failed for {}s with no success since (last: {}); listing markets and fetching trades wait",
                    rest.feed,
                    rest.failing_for.unwrap_or_default().as_secs(),
                    rest.last_error.as_deref().unwrap_or("unknown")
                ),
            }),
            Some(Transition::Resolve { open_for }) => changes.push(Change::Resolve {
                kind: REST_UNREACHABLE,
                source: rest.feed.clone(),
                message: format!("{}: REST requests succeed again; alert open {}s", rest.feed, open_for.as_secs()),
            }),
            None => {}
        }
    }

    /// The store's incidents carried over from a run that had a store, in one that has none.
    fn judge_no_store(&mut self, changes: &mut Vec<Change>) {
        for (kind, incident) in [(DATABASE_UNREACHABLE, &mut self.database), (SPOOL_FILLING, &mut self.spool)]
        {
            if incident.is_open() {
                *incident = Incident::default();
                changes.push(Change::Resolve {
                    kind,
                    source: Name::from(STORE),
                    message: "no [store] is configured any more".into(),
                });
            }
        }
    }

    fn judge_store(&mut self, now: Instant, store: StoreSample, changes: &mut Vec<Change>) {
        let source: Name = Name::from(STORE);
        // `Starting` lasts until the first probe answers or fails (bounded by the store's
        // timeouts); a slow first migration is not an outage, and a failed probe turns into
        // `Spooling` at once.
        let reading = match store.state {
            StoreState::Spooling => Reading::Bad,
            StoreState::Ready | StoreState::Replaying => Reading::Clear,
            StoreState::Starting | StoreState::Stopped => Reading::Unknown,
        };
        let rule =
            Rule { fire_after: self.t.database_unreachable_after, resolve_after: self.t.resolve_after };
        match self.database.observe(reading, now, rule) {
            Some(Transition::Fire { bad_for }) => changes.push(Change::Fire {
                kind: DATABASE_UNREACHABLE,
                source: source.clone(),
                message: format!(
                    "the store has not reached the database for {}s (state {}); ticks go to the spool, which holds {} bytes",
                    bad_for.as_secs(),
                    store.state.as_str(),
                    store.spool_bytes
                ),
            }),
            Some(Transition::Resolve { open_for }) => changes.push(Change::Resolve {
                kind: DATABASE_UNREACHABLE,
                source: source.clone(),
                message: format!(
                    "the store reaches the database again (state {}); alert open {}s",
                    store.state.as_str(),
                    open_for.as_secs()
                ),
            }),
            None => {}
        }
        let Some(warn_at) = self.t.spool_warn_bytes else { return };
        let reading = match store.state {
            StoreState::Stopped => Reading::Unknown,
            _ if store.spool_bytes >= warn_at => Reading::Bad,
            _ => Reading::Clear,
        };
        let rule = Rule { fire_after: Duration::ZERO, resolve_after: self.t.resolve_after };
        match self.spool.observe(reading, now, rule) {
            Some(Transition::Fire { .. }) => changes.push(Change::Fire {
                kind: SPOOL_FILLING,
                source: source.clone(),
                message: format!(
                    "the spool holds {} bytes, {:.0}% of store.spool_max_bytes ({}); past that limit new ticks are dropped",
                    store.spool_bytes,
                    store.spool_bytes as f64 * 100.0 / self.t.spool_max_bytes.max(1) as f64,
                    self.t.spool_max_bytes
                ),
            }),
            Some(Transition::Resolve { open_for }) => changes.push(Change::Resolve {
                kind: SPOOL_FILLING,
                source,
                message: format!(
                    "the spool is back under {warn_at} bytes ({} now); alert open {}s",
                    store.spool_bytes,
                    open_for.as_secs()
                ),
            }),
            None => {}
        }
    }

    fn judge_conn(&mut self, now: Instant, conn: &ConnSample, changes: &mut Vec<Change>) {
        let connected = matches!(conn.state, FeedState::Subscribing | FeedState::Live | FeedState::Stale);
        let carried = self.carried_stale.remove(&conn.id);
        let watch = self.conns.entry(conn.id.clone()).or_insert_with(|| ConnWatch {
            clock: DataClock::new(conn.data, connected, now),
            stale: carried.unwrap_or_default(),
        });
        let silent = watch.clock.observe(conn.data, connected, now);
        let source = Name::from(conn.id.to_string());
        let Some(stale_after) = self.t.stale_after(&conn.id.feed) else {
            // Carried over from a run that checked this feed, in one that does not.
            if watch.stale.is_open() {
                watch.stale = Incident::default();
                let message = format!("{}: the staleness check is off for this feed now", conn.id);
                changes.push(Change::Resolve { kind: FEED_STALE, source, message });
            }
            return;
        };
        let reading = match (connected, silent >= stale_after) {
            (false, _) => Reading::Unknown,
            (true, true) => Reading::Bad,
            (true, false) => Reading::Clear,
        };
        let rule = Rule { fire_after: Duration::ZERO, resolve_after: self.t.resolve_after };
        match watch.stale.observe(reading, now, rule) {
            Some(Transition::Fire { .. }) => changes.push(Change::Fire {
                kind: FEED_STALE,
                source: source.clone(),
                message: format!(
                    "{}: connected ({}) but no market data for {}s (stale_after {}s)",
                    conn.id,
                    conn.state.as_str(),
                    silent.as_secs(),
                    stale_after.as_secs()
                ),
            }),
            Some(Transition::Resolve { open_for }) => changes.push(Change::Resolve {
                kind: FEED_STALE,
                source,
                message: format!(
                    "{}: market data flowing again; alert open {}s",
                    conn.id,
                    open_for.as_secs()
                ),
            }),
            None => {}
        }
    }
}

/// The monitoring loop: sample, judge, notify, every [`EVALUATE_EVERY`].
async fn run_watch(monitor: AlertRegistry, ctx: WatchContext) {
    let mut evaluator = Evaluator::new(ctx.thresholds.clone());
    // What the last run left open: judged again from here, or resolved now when what it was
    // about no longer runs.
    for change in evaluator.carry_over(Instant::now(), &monitor.carried_over()) {
        if let Change::Gone { source } = change {
            monitor.resolve_all(&source, &format!("{source}: no longer configured"));
        }
    }
    let mut every = tokio::time::interval(EVALUATE_EVERY);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Shutdown: stop judging. Open incidents stay open (no recovery is claimed).
            () = ctx.shutdown.cancelled() => return,
            // Time to sample again.
            _ = every.tick() => {}
        }
        let snapshot = ctx.health.snapshot();
        let samples = Samples::read(&snapshot, ctx.health.store.as_deref());
        // Stopping feeds leave `handles`; that is not a reload removing them.
        if ctx.shutdown.is_cancelled() {
            return;
        }
        for change in evaluator.step(Instant::now(), &samples) {
            match change {
                Change::Fire { kind, source, message } => {
                    if monitor.fire(kind, &source, &message) && kind == FEED_STALE {
                        let Some(conn) = ConnId::parse(&source) else { continue };
                        if let Some(c) = snapshot.conns.iter().find(|c| c.id == conn) {
                            FeedMetrics::inc(&c.metrics.alerts);
                        }
                        let tick = alert_tick(&conn, kind, &message);
                        tokio::select! {
                            // The store may be slow to take it; shutdown does not wait.
                            () = ctx.shutdown.cancelled() => return,
                            // The alert as a tick, for the store and the dashboards. Not
                            // cancel-safe: stopped while a full queue holds it up, the tick
                            // reaches only the consumers served before.
                            () = ctx.bus.publish(Arc::new(tick)) => {}
                        }
                    }
                }
                Change::Resolve { kind, source, message } => {
                    monitor.resolve(kind, &source, &message);
                }
                Change::Gone { source } => {
                    monitor.resolve_all(
                        &source,
                        &format!("{source}: no longer running (removed from the configuration)"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FeedSettings, StoreSettings};

    fn thresholds() -> Thresholds {
        let mut settings = Settings::default();
        let mut feed = FeedSettings::new("kalshi", "ws://x");
        feed.markets = vec!["A".into()];
        feed.stale_after = Some(Duration::from_secs(5));
        let mut quiet = FeedSettings::new("lifecycle", "ws://x");
        quiet.lifecycle = true;
        let mut off = FeedSettings::new("off", "ws://x");
        off.markets = vec!["B".into()];
        off.stale_after = Some(Duration::ZERO);
        settings.feeds = vec![feed, quiet, off];
        settings.store = Some(StoreSettings { spool_max_bytes: 1000, ..StoreSettings::default() });
        settings.alerts.spool_warn_fraction = 0.5;
        settings.alerts.resolve_after = Duration::from_secs(3);
        settings.alerts.database_unreachable_after = Duration::from_secs(10);
        settings.alerts.feed_stale_after = Duration::from_secs(60);
        settings.alerts.rest_unreachable_after = Duration::from_secs(10);
        Thresholds::from_settings(&settings)
    }

    fn conn(id: &str, state: FeedState, data: u64) -> ConnSample {
        ConnSample { id: ConnId::parse(id).expect("feed/n"), state, data }
    }

    fn kinds(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Fire { kind, source, .. } => format!("fire {kind} {source}"),
                Change::Resolve { kind, source, .. } => format!("resolve {kind} {source}"),
                Change::Gone { source } => format!("gone {source}"),
            })
            .collect()
    }

    #[test]
    fn thresholds_follow_the_feed_then_the_default_and_skip_feeds_without_markets() {
        let t = thresholds();
        assert_eq!(t.stale_after("kalshi"), Some(Duration::from_secs(5)));
        assert_eq!(t.stale_after("lifecycle"), None);
        assert_eq!(t.stale_after("off"), None);
        assert_eq!(t.stale_after("added-by-reload"), Some(Duration::from_secs(60)));
        assert_eq!(t.spool_warn_bytes, Some(500));
    }

    #[test]
    fn a_connected_feed_without_data_goes_stale_once_and_recovers_once_data_flows_long_enough() {
        let t0 = Instant::now();
        let mut e = Evaluator::new(thresholds());
        let mut log = Vec::new();
        // Data for 3 s, then 10 s of silence while live, then data again for 5 s.
        for s in 0..18u64 {
            let data = if s < 3 {
                s
            } else if s < 13 {
                2
            } else {
                s
            };
            let changes = e.step(
                t0 + Duration::from_secs(s),
                &Samples { conns: vec![conn("kalshi/0", FeedState::Live, data)], ..Samples::default() },
            );
            log.extend(kinds(&changes).into_iter().map(|c| format!("{s}: {c}")));
        }
        // Silent from 2 (the last change) + 5 s = 7; clear from 13, resolved 3 s later.
        assert_eq!(log, ["7: fire feed_stale kalshi/0", "16: resolve feed_stale kalshi/0"]);
    }

    #[test]
    fn a_feed_that_is_not_connected_is_not_stale_and_a_new_connection_gets_the_whole_threshold() {
        let t0 = Instant::now();
        let mut e = Evaluator::new(thresholds());
        let mut log = Vec::new();
        for s in 0..20u64 {
            // Backing off for 8 s (no data, not stale), connected from 8 and silent.
            let state = if s < 8 { FeedState::BackingOff } else { FeedState::Subscribing };
            let samples = Samples { conns: vec![conn("kalshi/0", state, 7)], ..Samples::default() };
            log.extend(
                kinds(&e.step(t0 + Duration::from_secs(s), &samples))
                    .into_iter()
                    .map(|c| format!("{s}: {c}")),
            );
        }
        assert_eq!(log, ["13: fire feed_stale kalshi/0"]);
    }

    #[test]
    fn connections_that_keep_dying_before_any_data_add_up_to_one_stale_feed() {
        let t0 = Instant::now();
        let mut e = Evaluator::new(thresholds());
        let mut log = Vec::new();
        // Each connection is live 4 s with no data (under the 5 s threshold), then backs off 2 s.
        for s in 0..40u64 {
            let state = if s % 6 < 4 { FeedState::Live } else { FeedState::BackingOff };
            let samples = Samples { conns: vec![conn("kalshi/0", state, 7)], ..Samples::default() };
            log.extend(
                kinds(&e.step(t0 + Duration::from_secs(s), &samples))
                    .into_iter()
                    .map(|c| format!("{s}: {c}")),
            );
        }
        // Live 0..3 (3 s counted), 6..9 (3 more): 5 s reached at 8; open until data flows.
        assert_eq!(log, ["8: fire feed_stale kalshi/0"]);
    }

    #[test]
    fn the_database_alert_waits_for_its_threshold_and_the_spool_alert_fires_at_its_level() {
        let t0 = Instant::now();
        let mut e = Evaluator::new(thresholds());
        let mut log = Vec::new();
        for s in 0..40u64 {
            // Up until 5, away until 25 (spool growing 40 bytes/s), then replaying it all by 30.
            let (state, spool) = match s {
                0..5 => (StoreState::Ready, 0),
                5..25 => (StoreState::Spooling, (s - 5) * 40),
                25..30 => (StoreState::Replaying, 800 - (s - 25) * 160),
                _ => (StoreState::Ready, 0),
            };
            let samples =
                Samples { store: Some(StoreSample { state, spool_bytes: spool }), ..Samples::default() };
            log.extend(
                kinds(&e.step(t0 + Duration::from_secs(s), &samples))
                    .into_iter()
                    .map(|c| format!("{s}: {c}")),
            );
        }
        assert_eq!(
            log,
            [
                "15: fire database_unreachable store",
                "18: fire spool_filling store",
                "28: resolve database_unreachable store",
                "30: resolve spool_filling store",
            ]
        );
    }

    #[test]
    fn rest_unreachable_fires_once_failing_long_enough_and_resolves_once_calls_succeed() {
        let t0 = Instant::now();
        let mut e = Evaluator::new(thresholds());
        let mut log = Vec::new();
        // Failing from 2 to 20 (a success at 8 breaks the first run), fine from 20.
        for s in 0..30u64 {
            let failing_for = match s {
                2..8 => Some(Duration::from_secs(s - 2)),
                8 => None,
                9..20 => Some(Duration::from_secs(s - 9)),
                _ => None,
            };
            let rest =
                RestSample { feed: Name::from("kalshi"), failing_for, last_error: Some("HTTP 503".into()) };
            let samples = Samples { rest: vec![rest], ..Samples::default() };
            log.extend(
                kinds(&e.step(t0 + Duration::from_secs(s), &samples))
                    .into_iter()
                    .map(|c| format!("{s}: {c}")),
            );
        }
        // 10 s of failing reached at 19; clear from 20, resolved 3 s later.
        assert_eq!(log, ["19: fire rest_unreachable kalshi", "23: resolve rest_unreachable kalshi"]);
        // A feed removed by a reload takes its alert with it.
        assert_eq!(kinds(&e.step(t0 + Duration::from_secs(31), &Samples::default())), ["gone kalshi"]);
    }

    #[test]
    fn a_removed_connection_is_reported_gone() {
        let t0 = Instant::now();
        let mut e = Evaluator::new(thresholds());
        let one = Samples { conns: vec![conn("kalshi/0", FeedState::Live, 1)], ..Samples::default() };
        assert_eq!(e.step(t0, &one), []);
        assert_eq!(kinds(&e.step(t0 + Duration::from_secs(1), &Samples::default())), ["gone kalshi/0"]);
    }
}
