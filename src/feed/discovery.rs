//! Market discovery: which markets of a feed's `series` and `events` to follow, as they come
//! and go.
//!
//! One discovery task per feed that follows series or events, started and stopped by the
//! supervisor, which owns the sharding. The task:
//! 1. lists the markets of every series and event over the REST API, at start and every
//!    `discovery_interval` (a series by status, `unopened`, `open`, `paused` and `closed`, so
//!    that its settled past is never paged through; an event whole), and follows every one
//!    not settled;
//! 2. reads the feed's own `market_lifecycle_v2` ticks from the bus in between: a market of a
//!    followed series or event that is `created` or `activated` is followed at once; one that
//!    is `determined` or `settled` is let go `settled_grace` later, so its last trades and its
//!    settlement are recorded;
//! 3. sends the supervisor the whole discovered list each time it changes
//!    ([`Discovered`]); the supervisor adds the feed's static `markets` and spreads the union
//!    over connections with `update_subscription` (no reconnect);
//! 4. publishes on the bus what it learns of each market (a `market` tick: event, series,
//!    title, status, open and close times, and whether it is followed), for the store's
//!    `markets` table and the dashboard; the feed's own `markets` are described too (listed by
//!    ticker with each listing, read from the lifecycle), though the supervisor follows them
//!    whatever discovery finds.
//!
//! A market belongs to a followed series when its event is followed or its event's series is.
//! Events learn their series from REST listings of the series and from `event_lifecycle`;
//! when neither has said, the ticker is read the way Kalshi writes them: an event ticker
//! starts with its series and `-` (`KXBTCD-25DEC3117` is in `KXBTCD`), and a market ticker
//! with its event and `-` (for an `activated` whose `created` was not seen).
//!
//! While the REST API is down, the stream goes on with the markets already followed; a listing
//! that fails (after the REST client's own retries) is tried again after
//! [`RETRY_AFTER_FAILURE`] at most, and only a listing that completed lets go of markets it no
//! longer shows. When discovery missed lifecycle ticks (it fell behind the bus's ring), a
//! listing runs again soon ([`RELIST_AFTER_LAG`] after the last one started, at the earliest).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use crate::bus::{Bus, Lagged};
use crate::config::FeedSettings;
use crate::kalshi::lifecycle::{self, LifecycleNews, MarketChange};
use crate::kalshi::rest::{MAX_PAGE_SIZE, Market, MarketFilter, MarketStatus, RestClient, StatusFilter};
use crate::tick::{MarketInfo, Name, Tick, TickKind, recv_micros};

/// The longest wait before a failed listing is tried again (a shorter `discovery_interval`
/// wins).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// The least time between the start of a listing and one run because discovery fell behind
/// the bus: a daemon too busy to read its bus in time is not made busier by listing without
/// pause.
pub const RELIST_AFTER_LAG: Duration = Duration::from_secs(10);

/// Most ticks taken from the bus in one turn of the loop when they are already waiting.
const BURST: usize = 1024;

/// The statuses a series is listed by: every market not settled (`kalshi-rest.md` §4.1).
const LIVE_STATUSES: [StatusFilter; 4] =
    [StatusFilter::Unopened, StatusFilter::Open, StatusFilter::Paused, StatusFilter::Closed];

/// What a discovery task tells the supervisor: the feed's discovered markets, whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    /// The feed.
    pub feed: String,
    /// Which run of discovery for this feed sent it (a reload starts a new one; the supervisor
    /// ignores an older run's last words).
    pub run: u64,
    /// The markets found, sorted.
    pub markets: Vec<String>,
}

/// What a discovery task follows and how.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// The feed.
    pub feed: Name,
    /// Series to follow.
    pub series: Vec<String>,
    /// Events to follow.
    pub events: Vec<String>,
    /// The feed's own `markets`: described like the others (listed by ticker, read from the
    /// lifecycle), and followed by the supervisor whatever discovery finds.
    pub markets: Vec<String>,
    /// Time between REST listings.
    pub interval: Duration,
    /// How long a determined or settled market stays followed.
    pub grace: Duration,
}

impl DiscoveryConfig {
    /// The discovery settings of a feed.
    pub fn for_feed(settings: &FeedSettings) -> DiscoveryConfig {
        DiscoveryConfig {
            feed: Name::from(settings.name.as_str()),
            series: settings.series.clone(),
            events: settings.events.clone(),
            markets: settings.markets.clone(),
            interval: settings.discovery_interval,
            grace: settings.settled_grace,
        }
    }
}

/// What a discovery task runs with.
pub struct DiscoveryContext {
    /// Lifecycle ticks come from it; `market` ticks go onto it.
    pub bus: Bus,
    /// The feed's REST client.
    pub rest: RestClient,
    /// Cancelled when the feed stops or its discovery is replaced.
    pub shutdown: CancellationToken,
    /// Where the discovered list goes (the supervisor). Bounded; a full queue makes the task
    /// wait, which only delays its next change.
    pub updates: mpsc::Sender<Discovered>,
    /// This run's number, echoed in every [`Discovered`].
    pub run: u64,
    /// The markets an earlier run of this feed followed (a reload starts a new run): followed
    /// from the start when they still belong to a followed series or event (read from their
    /// tickers), so that a reload while the REST API is down loses none of them. A complete
    /// listing lets go of those it no longer shows, after the grace.
    pub initial: Vec<String>,
}

/// One discovered market.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// When it was added (a listing that started before cannot have seen it).
    added: Instant,
    /// When it is let go, once it is determined or settled or no longer listed.
    remove_at: Option<Instant>,
    /// Determined or settled: once let go, a later listing does not bring it back.
    done: bool,
}

/// The followed set and its rules, without I/O: time is passed in.
#[derive(Debug)]
pub struct Followed {
    series: BTreeSet<String>,
    events: BTreeSet<String>,
    grace: Duration,
    /// Event → series, as REST listings and `event_lifecycle` said.
    event_series: HashMap<String, String>,
    markets: BTreeMap<String, Entry>,
    /// Markets let go after they were determined or settled, while listings still show them.
    retired: HashSet<String>,
}

/// One market of a listing, as far as following goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The ticker.
    pub ticker: String,
    /// Its event, if known.
    pub event: Option<String>,
    /// Its series, if known.
    pub series: Option<String>,
    /// Determined or settled already: followed for `settled_grace` only.
    pub done: bool,
}

impl Followed {
    /// Nothing followed yet.
    pub fn new(series: &[String], events: &[String], grace: Duration) -> Followed {
        Followed {
            series: series.iter().cloned().collect(),
            events: events.iter().cloned().collect(),
            grace,
            event_series: HashMap::new(),
            markets: BTreeMap::new(),
            retired: HashSet::new(),
        }
    }

    /// The markets followed now, sorted.
    pub fn markets(&self) -> Vec<String> {
        self.markets.keys().cloned().collect()
    }

    /// Whether `market` is followed now.
    pub fn follows(&self, market: &str) -> bool {
        self.markets.contains_key(market)
    }

    /// Records that `event` is in `series`.
    pub fn learn_event(&mut self, event: &str, series: &str) {
        if self.event_series.get(event).map(String::as_str) != Some(series) {
            self.event_series.insert(event.to_owned(), series.to_owned());
        }
    }

    /// The series of `event`: as learned, else its ticker's first part.
    pub fn series_of<'a>(&'a self, event: &'a str) -> Option<&'a str> {
        self.event_series.get(event).map(String::as_str).or_else(|| event.split_once('-').map(|(s, _)| s))
    }

    /// Whether a market of `event` (or, without one, the market `ticker`) belongs to a
    /// followed series or event.
    pub fn belongs(&self, ticker: &str, event: Option<&str>) -> bool {
        match event {
            Some(e) => self.events.contains(e) || self.series_of(e).is_some_and(|s| self.series.contains(s)),
            None => {
                let prefixed = |group: &String| {
                    ticker.strip_prefix(group.as_str()).is_some_and(|rest| rest.starts_with('-'))
                };
                self.events.iter().any(prefixed) || self.series.iter().any(prefixed)
            }
        }
    }

    /// Takes a listing that started at `started`. Its markets are followed (those already let
    /// go after settling excepted); when it is `complete`, markets it no longer shows are let
    /// go after the grace (unless added after it started). Returns whether the set changed now.
    pub fn on_listing(&mut self, listed: &[Listed], complete: bool, started: Instant, now: Instant) -> bool {
        let mut changed = false;
        for m in listed {
            if let (Some(e), Some(s)) = (&m.event, &m.series) {
                self.learn_event(e, s);
            }
            if self.retired.contains(&m.ticker) {
                continue;
            }
            match self.markets.get_mut(&m.ticker) {
                None => {
                    let remove_at = m.done.then_some(now + self.grace);
                    self.markets.insert(m.ticker.clone(), Entry { added: now, remove_at, done: m.done });
                    changed = true;
                }
                Some(entry) => {
                    if m.done && !entry.done {
                        entry.done = true;
                        entry.remove_at = Some(entry.remove_at.unwrap_or(now + self.grace));
                    } else if !entry.done {
                        // Listed again: whatever absence was noticed before is over.
                        entry.remove_at = None;
                    }
                }
            }
        }
        if complete {
            let shown: HashSet<&str> = listed.iter().map(|m| m.ticker.as_str()).collect();
            for (ticker, entry) in &mut self.markets {
                if entry.remove_at.is_none() && entry.added <= started && !shown.contains(ticker.as_str()) {
                    entry.remove_at = Some(now + self.grace);
                }
            }
            self.retired.retain(|m| shown.contains(m.as_str()));
        }
        changed
    }

    /// A market of a followed series or event was created or activated: followed from now.
    /// Returns whether the set changed.
    pub fn on_opened(&mut self, ticker: &str, now: Instant) -> bool {
        if self.markets.contains_key(ticker) || self.retired.contains(ticker) {
            return false;
        }
        self.markets.insert(ticker.to_owned(), Entry { added: now, remove_at: None, done: false });
        true
    }

    /// A followed market was determined or settled: let go after the grace.
    pub fn on_done(&mut self, ticker: &str, now: Instant) {
        if let Some(entry) = self.markets.get_mut(ticker) {
            entry.done = true;
            entry.remove_at = Some(entry.remove_at.unwrap_or(now + self.grace));
        }
    }

    /// When the next market is due to be let go.
    pub fn next_removal(&self) -> Option<Instant> {
        self.markets.values().filter_map(|e| e.remove_at).min()
    }

    /// Lets go of every market due by `now`; returns them.
    pub fn remove_due(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .markets
            .iter()
            .filter(|(_, e)| e.remove_at.is_some_and(|at| at <= now))
            .map(|(t, _)| t.clone())
            .collect();
        for ticker in &due {
            if self.markets.remove(ticker).is_some_and(|e| e.done) {
                self.retired.insert(ticker.clone());
            }
        }
        due
    }
}

/// What one REST listing found.
struct Listing {
    markets: Vec<Market>,
    /// The feed's own markets, as listed by ticker.
    fixed: Vec<Market>,
    /// Every series and event was listed whole.
    complete: bool,
    started: Instant,
}

/// Runs discovery for one feed until its token is cancelled.
pub async fn run(cfg: DiscoveryConfig, ctx: DiscoveryContext) {
    let span = tracing::info_span!("discovery", feed = %cfg.feed);
    Discovery::new(cfg, ctx).run().instrument(span).await;
}

struct Discovery {
    cfg: DiscoveryConfig,
    ctx: DiscoveryContext,
    followed: Followed,
    /// The feed's own markets (`DiscoveryConfig::markets`).
    fixed: HashSet<String>,
    /// What was last published of each market, so that a listing publishes only news.
    known: HashMap<String, MarketInfo>,
}

impl Discovery {
    fn new(cfg: DiscoveryConfig, mut ctx: DiscoveryContext) -> Discovery {
        let mut followed = Followed::new(&cfg.series, &cfg.events, cfg.grace);
        let now = Instant::now();
        for ticker in std::mem::take(&mut ctx.initial) {
            if followed.belongs(&ticker, None) {
                followed.on_opened(&ticker, now);
            }
        }
        let fixed = cfg.markets.iter().cloned().collect();
        Discovery { cfg, ctx, followed, fixed, known: HashMap::new() }
    }

    async fn run(mut self) {
        // Subscribed before the first listing starts, so nothing announced after it is missed.
        let mut ticks = self.ctx.bus.lossy();
        // What an earlier run followed and no longer belongs goes now.
        self.send().await;
        let mut next_listing = Some(Instant::now());
        let mut listing: Option<JoinHandle<Listing>> = None;
        let mut last_started = Instant::now();
        // Ticks were missed while a listing ran: list again once it is over.
        let mut missed_during_listing = false;
        let far = || Instant::now() + Duration::from_secs(86_400);
        loop {
            let removal = self.followed.next_removal();
            tokio::select! {
                // The feed stopped or its discovery was replaced.
                _ = self.ctx.shutdown.cancelled() => break,
                // A listing is due: it runs as its own task while ticks keep being read.
                _ = sleep_until(next_listing.unwrap_or_else(far)), if next_listing.is_some() && listing.is_none() => {
                    next_listing = None;
                    last_started = Instant::now();
                    let groups = (self.cfg.series.clone(), self.cfg.events.clone());
                    let job = list(self.ctx.rest.clone(), groups, self.cfg.markets.clone());
                    listing = Some(tokio::spawn(job.in_current_span()));
                }
                // The listing ended (cancel-safe: the handle is polled by reference).
                done = async { listing.as_mut().expect("guarded by the branch condition").await }, if listing.is_some() => {
                    listing = None;
                    let wait = match done {
                        Ok(found) => {
                            let complete = found.complete;
                            self.on_listing(found).await;
                            if complete { self.cfg.interval } else { self.cfg.interval.min(RETRY_AFTER_FAILURE) }
                        }
                        Err(e) => {
                            warn!(error = %e, "Market listing ended abnormally.");
                            self.cfg.interval.min(RETRY_AFTER_FAILURE)
                        }
                    };
                    let mut at = Instant::now() + wait;
                    if std::mem::take(&mut missed_during_listing) {
                        at = at.min(Instant::now().max(last_started + RELIST_AFTER_LAG));
                    }
                    next_listing = Some(at);
                }
                // A market is due to be let go.
                _ = sleep_until(removal.unwrap_or_else(far)), if removal.is_some() => {
                    let gone = self.followed.remove_due(Instant::now());
                    if !gone.is_empty() {
                        info!(markets = gone.len(), first = %gone[0], "No longer following settled or delisted markets.");
                        for ticker in &gone {
                            self.publish(ticker, MarketInfo { followed: Some(false), ..MarketInfo::default() }).await;
                        }
                        self.send().await;
                    }
                }
                // Lifecycle ticks of this feed (cancel-safe). Ticks already waiting are taken in
                // the same turn (up to BURST), so that an event opening many markets at once
                // is one change for the supervisor.
                tick = ticks.recv() => {
                    let mut lagged = None;
                    match tick {
                        Ok(Some(tick)) => {
                            let mut changed = self.on_tick(&tick).await;
                            for _ in 1..BURST {
                                match ticks.recv().now_or_never() {
                                    Some(Ok(Some(tick))) => changed |= self.on_tick(&tick).await,
                                    Some(Err(Lagged(n))) => {
                                        lagged = Some(n);
                                        break;
                                    }
                                    // Nothing waiting (or the bus closed: the next turn sees it).
                                    _ => break,
                                }
                            }
                            if changed {
                                self.send().await;
                            }
                        }
                        // The bus is gone: the daemon is stopping.
                        Ok(None) => break,
                        Err(Lagged(n)) => lagged = Some(n),
                    }
                    if let Some(n) = lagged {
                        warn!(missed = n, "Discovery fell behind the bus; listing markets again.");
                        if listing.is_none() {
                            let soon = Instant::now().max(last_started + RELIST_AFTER_LAG);
                            next_listing = Some(next_listing.map_or(soon, |at| at.min(soon)));
                        } else {
                            missed_during_listing = true;
                        }
                    }
                }
            }
        }
        if let Some(listing) = listing {
            listing.abort();
        }
    }

    async fn on_listing(&mut self, found: Listing) {
        let now = Instant::now();
        let listed: Vec<Listed> = found
            .markets
            .iter()
            .filter(|m| !m.status.as_ref().is_some_and(MarketStatus::is_settled))
            .map(|m| Listed {
                ticker: m.ticker.clone(),
                event: m.event_ticker.clone(),
                series: m.series_ticker.clone(),
                done: matches!(m.status, Some(MarketStatus::Determined | MarketStatus::Amended)),
            })
            .collect();
        let before: HashSet<String> = self.followed.markets().into_iter().collect();
        let changed = self.followed.on_listing(&listed, found.complete, found.started, now);
        info!(
            listed = listed.len(),
            followed = self.followed.markets.len(),
            complete = found.complete,
            "Markets listed."
        );
        for m in found.markets.iter().chain(&found.fixed) {
            let mut info = MarketInfo {
                event: m.event_ticker.clone(),
                series: m.series_ticker.clone(),
                title: m.title.clone(),
                status: m.status.as_ref().map(|s| s.as_str().to_owned()),
                open_ms: m.open_ms,
                close_ms: m.close_ms,
                followed: None,
            };
            if info.series.is_none() {
                info.series = info.event.as_deref().and_then(|e| self.followed.event_series.get(e)).cloned();
            }
            if (self.followed.follows(&m.ticker) && !before.contains(&m.ticker))
                || self.fixed.contains(&m.ticker)
            {
                // Told once: `publish` passes on only what changed.
                info.followed = Some(true);
            }
            self.publish(&m.ticker, info).await;
        }
        if found.complete {
            // What is neither followed nor listed any more (settled) need not be remembered.
            let listed: HashSet<&str> =
                found.markets.iter().chain(&found.fixed).map(|m| m.ticker.as_str()).collect();
            let followed = &self.followed;
            self.known.retain(|t, _| listed.contains(t.as_str()) || followed.follows(t));
        }
        if changed {
            self.send().await;
        }
    }

    /// Takes one tick; returns whether the followed set changed (the caller tells the
    /// supervisor once for a burst).
    async fn on_tick(&mut self, tick: &Tick) -> bool {
        let TickKind::Lifecycle(l) = &tick.kind else { return false };
        if tick.feed != self.cfg.feed {
            return false;
        }
        let now = Instant::now();
        match lifecycle::read(&tick.market, l) {
            Some(LifecycleNews::Event { event, series: Some(series) }) => {
                self.followed.learn_event(&event, &series)
            }
            Some(LifecycleNews::Market { change, mut info }) => {
                let ticker = &*tick.market;
                let event = info.event.clone();
                let belongs = self.followed.follows(ticker)
                    || self.fixed.contains(ticker)
                    || self.followed.belongs(ticker, event.as_deref());
                if !belongs {
                    return false;
                }
                info.series = event.as_deref().and_then(|e| self.followed.series_of(e)).map(str::to_owned);
                match change {
                    MarketChange::Created | MarketChange::Activated => {
                        if self.followed.on_opened(ticker, now) {
                            info!(market = ticker, event = %l.event, "Following a new market.");
                            info.followed = Some(true);
                            self.publish(ticker, info).await;
                            return true;
                        }
                    }
                    MarketChange::Determined | MarketChange::Settled => {
                        if self.followed.follows(ticker) {
                            debug!(market = ticker, event = %l.event, grace_s = self.cfg.grace.as_secs(), "Market over; letting it go after the grace.");
                        }
                        self.followed.on_done(ticker, now);
                    }
                    MarketChange::Other => {}
                }
                self.publish(ticker, info).await;
            }
            _ => {}
        }
        false
    }

    /// Publishes what is new about `ticker` (nothing when it says nothing new).
    async fn publish(&mut self, ticker: &str, info: MarketInfo) {
        let known = self.known.entry(ticker.to_owned()).or_default();
        let mut news = MarketInfo::default();
        let mut any = false;
        macro_rules! take {
            ($($field:ident),*) => {$(
                if info.$field.is_some() && info.$field != known.$field {
                    news.$field = info.$field.clone();
                    known.$field = info.$field;
                    any = true;
                }
            )*};
        }
        take!(event, series, title, status, open_ms, close_ms, followed);
        if info.followed == Some(false) {
            // Let go: forget it, so that a comeback is told in full.
            self.known.remove(ticker);
        }
        if !any {
            return;
        }
        let tick = Tick {
            feed: self.cfg.feed.clone(),
            conn: 0,
            market: Name::from(ticker),
            exch_ts: None,
            recv_ts: recv_micros(),
            kind: TickKind::Market(news),
        };
        self.ctx.bus.publish(Arc::new(tick)).await;
    }

    /// Tells the supervisor the discovered list.
    async fn send(&self) {
        let update = Discovered {
            feed: self.cfg.feed.to_string(),
            run: self.ctx.run,
            markets: self.followed.markets(),
        };
        // Closed only when the supervisor is gone, at shutdown.
        let _ = self.ctx.updates.send(update).await;
    }
}

/// Most tickers asked for in one request for the feed's own markets (a comma-separated query
/// value; 100 tickers keep the URL a few KB).
const TICKERS_PER_REQUEST: usize = 100;

/// Lists every market of `series` (by live status) and `events`, and the feed's own `fixed`
/// markets by ticker; a failure leaves the listing incomplete, with what was found (a failure
/// of the feed's own markets only leaves them undescribed until the next listing).
async fn list(rest: RestClient, (series, events): (Vec<String>, Vec<String>), fixed: Vec<String>) -> Listing {
    let started = Instant::now();
    let mut markets = Vec::new();
    let mut complete = true;
    let mut filters = Vec::new();
    for s in &series {
        for status in LIVE_STATUSES {
            filters.push(MarketFilter {
                series_ticker: Some(s.clone()),
                status: Some(status),
                ..MarketFilter::default()
            });
        }
    }
    filters.extend(events.iter().map(|e| MarketFilter::event(e.clone())));
    let mut seen = HashSet::new();
    for mut filter in filters {
        filter.page_size = Some(MAX_PAGE_SIZE);
        match rest.list_markets(&filter).await {
            Ok(found) => markets.extend(found.into_iter().filter(|m| seen.insert(m.ticker.clone()))),
            Err(e) => {
                complete = false;
                warn!(
                    series = filter.series_ticker.as_deref().unwrap_or(""),
                    event = filter.event_ticker.as_deref().unwrap_or(""),
                    error = %e,
                    "Listing markets failed; the stream goes on with the markets it has."
                );
            }
        }
    }
    let mut described = Vec::new();
    for chunk in fixed.chunks(TICKERS_PER_REQUEST) {
        let filter = MarketFilter {
            tickers: chunk.to_vec(),
            page_size: Some(MAX_PAGE_SIZE),
            ..MarketFilter::default()
        };
        match rest.list_markets(&filter).await {
            Ok(found) => described.extend(found),
            Err(e) => warn!(error = %e, "Describing the feed's own markets failed; they stream on."),
        }
    }
    Listing { markets, fixed: described, complete, started }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(ticker: &str, done: bool) -> Listed {
        let event = ticker.rsplit_once('-').map(|(e, _)| e.to_owned());
        let series = ticker.split_once('-').map(|(s, _)| s.to_owned());
        Listed { ticker: ticker.into(), event, series, done }
    }

    const GRACE: Duration = Duration::from_secs(600);

    #[test]
    fn markets_belong_by_event_by_the_event_series_and_by_ticker_prefix() {
        let mut f = Followed::new(&["KXBTCD".into()], &["KXHIGHNY-26DEC07".into()], GRACE);
        assert!(f.belongs("X", Some("KXHIGHNY-26DEC07")));
        assert!(f.belongs("X", Some("KXBTCD-25DEC3117")), "series from the event ticker");
        assert!(!f.belongs("X", Some("KXBTC-25DEC3117")), "a longer series is another series");
        f.learn_event("ODD-1", "KXBTCD");
        assert!(f.belongs("X", Some("ODD-1")), "series as learned");
        f.learn_event("KXBTCD-RENAMED", "OTHER");
        assert!(!f.belongs("X", Some("KXBTCD-RENAMED")), "what was learned beats the ticker");
        assert!(f.belongs("KXBTCD-25DEC3117-T1", None));
        assert!(f.belongs("KXHIGHNY-26DEC07-B50", None));
        assert!(!f.belongs("KXBTCDX-1-T1", None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_determined_market_is_let_go_after_the_grace_and_not_brought_back() {
        let mut f = Followed::new(&["S".into()], &[], GRACE);
        let t0 = Instant::now();
        assert!(f.on_listing(&[listed("S-E-1", false), listed("S-E-2", false)], true, t0, t0));
        f.on_done("S-E-1", t0);
        assert_eq!(f.next_removal(), Some(t0 + GRACE));
        tokio::time::advance(GRACE - Duration::from_secs(1)).await;
        assert!(f.remove_due(Instant::now()).is_empty());
        assert!(f.follows("S-E-1"), "still followed within the grace");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(f.remove_due(Instant::now()), ["S-E-1"]);
        // Determined markets are still listed (not settled): not followed again.
        let now = Instant::now();
        assert!(!f.on_listing(&[listed("S-E-1", true), listed("S-E-2", false)], true, now, now));
        assert_eq!(f.markets(), ["S-E-2"]);
        // Once settled it drops out of the listings, and out of memory.
        assert!(!f.on_listing(&[listed("S-E-2", false)], true, now, now));
        assert!(f.retired.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_market_missing_from_a_complete_listing_is_let_go_after_the_grace() {
        let mut f = Followed::new(&["S".into()], &[], GRACE);
        let t0 = Instant::now();
        f.on_listing(&[listed("S-E-1", false)], true, t0, t0);
        tokio::time::advance(Duration::from_secs(5)).await;
        let started = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        // Announced while the listing ran: the listing could not have shown it.
        assert!(f.on_opened("S-E-2", Instant::now()));
        let now = Instant::now();
        // An incomplete listing lets go of nothing.
        f.on_listing(&[], false, started, now);
        assert_eq!(f.next_removal(), None);
        f.on_listing(&[], true, started, now);
        assert_eq!(f.next_removal(), Some(now + GRACE));
        tokio::time::advance(GRACE).await;
        assert_eq!(f.remove_due(Instant::now()), ["S-E-1"]);
        assert_eq!(f.markets(), ["S-E-2"]);
        // Not done: listed again later, it is followed again.
        let now = Instant::now();
        assert!(f.on_listing(&[listed("S-E-1", false), listed("S-E-2", false)], true, now, now));
        assert_eq!(f.markets(), ["S-E-1", "S-E-2"]);
    }

    #[test]
    fn a_market_listed_as_determined_is_followed_for_the_grace_only() {
        let mut f = Followed::new(&["S".into()], &[], GRACE);
        let t0 = Instant::now();
        assert!(f.on_listing(&[listed("S-E-1", true)], true, t0, t0));
        assert_eq!(f.next_removal(), Some(t0 + GRACE));
        assert!(!f.on_opened("S-E-1", t0), "already followed");
    }
}
