//! Backfill: the trades of windows the live stream may have missed, fetched over the REST API.
//!
//! One backfill per feed. Its connections hand it [`Window`]s through a [`BackfillHandle`]
//! without ever waiting: after a disconnect (from the connection's last frame to the first
//! trade after the resubscribe), a sequence gap on the `trade` channel (from the trade before
//! the gap to the one after it), and when a market is first followed (tickd's start, or a
//! market added later: from its newest stored trade). [`BackfillHandle::backfill_market`] is
//! the entry point for one market over a chosen window.
//!
//! The backfill takes the windows one at a time, in the background:
//! 1. each market's trades of the window are listed with `GET /markets/trades` (one market per
//!    listing, every page, at most [`FETCHES_IN_FLIGHT`] markets at once, all within the feed's
//!    REST budget), from one second before the window to one second after (Kalshi does not say
//!    whether its bounds are inclusive);
//! 2. the trades tickd received live (the last [`SEEN_TRADES`] of the feed) or has stored are
//!    left out; the others are published on the bus, oldest first, as trades with
//!    `backfill: true`, so the store records them (`source = 'rest'`) and dashboards show them;
//! 3. a `backfill` row goes to the ledger (`feed_events`): the window, its markets, the trades
//!    found and new, and whether it is complete.
//!
//! A window that fails (the REST API or the database does not answer, after the REST client's
//! own retries) keeps the markets it has not fetched and is tried again after 30 s, 1 min,
//! 2 min... ([`FIRST_RETRY`] doubling up to [`MAX_RETRY`]): never a tight loop. One that ends
//! more than `backfill_max_window` ago is given up, and a window reaching further back is
//! fetched only from there: both stay missing in `gaps()`.
//!
//! Windows of earlier runs that are still missing in `gaps()` (queued at shutdown, failing
//! when tickd stopped, or given up while the REST API was down) are taken up again at start
//! ([`RESUME_AFTER`] later, once the store has migrated), as far back as `backfill_max_window`:
//! a disconnect of a whole connection for the markets the feed followed then (the `markets`
//! table), a sequence gap on the `trade` channel, or a frozen market's window.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use crate::bus::Bus;
use crate::kalshi::rest::{MAX_PAGE_SIZE, RestClient, RestError, RestTrade, TradeFilter};
use crate::store::pg;
use crate::telemetry::backfill::BackfillMetrics;
use crate::tick::{Backfill, ConnId, FeedEvent, Name, Tick, TickKind, Trade, now_micros, recv_micros};

/// Windows queued for the backfill. When full, a connection's window is not taken: it is
/// counted (`tickd_backfill_windows_dropped_total`), logged, and stays missing in `gaps()`;
/// the connection never waits.
pub const QUEUE: usize = 1024;

/// Markets fetched at once within one window; the REST budget paces them further.
pub const FETCHES_IN_FLIGHT: usize = 4;

/// Trade ids received live (or recovered) remembered per feed, newest kept: a backfill leaves
/// them out, so that a window's edges (trades received just before a disconnect, not yet
/// stored) are neither published twice nor counted as new.
pub const SEEN_TRADES: usize = 65_536;

/// The wait before a failed window is tried again the first time; each further failure
/// doubles it.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);

/// The longest wait between two attempts at a window.
pub const MAX_RETRY: Duration = Duration::from_secs(600);

/// How long after the backfill starts it looks for windows of earlier runs still missing:
/// the store migrates its database first.
pub const RESUME_AFTER: Duration = Duration::from_secs(5);

/// Kalshi's trade time filters are whole seconds of unknown inclusiveness: a window is asked
/// for this much wider on each side.
const EDGE_US: i64 = 1_000_000;

/// Why trades may be missing from a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The connection was lost and came back.
    Disconnect,
    /// Frames were lost on the `trade` channel: its subscription id and the numbers lost.
    SeqGap {
        /// The subscription.
        sid: u64,
        /// The number that should have come.
        expected: u64,
        /// The number that came.
        got: u64,
    },
    /// A market followed for the first time in this process (tickd started, or the market
    /// was added): its trades since its newest stored one among those received before
    /// `since_us` (µs since the epoch, tickd's clock: when the market was first followed).
    Start {
        /// When the markets were first followed.
        since_us: i64,
    },
    /// One market's trades asked for by another part of the feed.
    Market,
}

impl Cause {
    /// The name in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Disconnect => "disconnect",
            Cause::SeqGap { .. } => "seq_gap",
            Cause::Start { .. } => "start",
            Cause::Market => "market",
        }
    }
}

/// A window in which the trades of some markets may have been missed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// The connection that missed them.
    pub conn: ConnId,
    /// Why.
    pub cause: Cause,
    /// The markets.
    pub markets: Vec<String>,
    /// From when (µs since the epoch); `None`: from each market's newest stored trade (a
    /// market with none is left out: nothing of it was recorded, so nothing was missed).
    pub from_us: Option<i64>,
    /// Until when (µs since the epoch).
    pub to_us: i64,
}

/// What a feed's backfill runs with.
#[derive(Clone)]
pub struct BackfillContext {
    /// The feed's name.
    pub feed: Name,
    /// Where recovered trades and ledger rows go.
    pub bus: Bus,
    /// The feed's REST client (its budget is shared with discovery and the rest); a reload
    /// that changes the feed's REST settings sends the new one, taken from the next listing.
    pub rest: watch::Receiver<RestClient>,
    /// The store's database, to find the newest stored trade per market and the trades
    /// stored already; `None` without a store (then only the trades seen live are left out,
    /// and start windows have nothing to start from).
    pub pool: Option<PgPool>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// The feed's counters.
    pub metrics: Arc<BackfillMetrics>,
    /// `backfill_max_window`: how far back a window may reach.
    pub max_window: Duration,
}

/// Trade ids seen by the feed, as 64-bit hashes (no allocation per trade), at most
/// [`SEEN_TRADES`], oldest forgotten. A false match would need two ids among the last 65,536
/// with the same hash: about 1 in 10^14 per trade.
#[derive(Debug, Default)]
struct SeenTrades {
    inner: Mutex<(HashSet<u64>, VecDeque<u64>)>,
}

impl SeenTrades {
    fn hash(id: &str) -> u64 {
        BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
    }

    /// Remembers `id`; false when it was remembered already.
    fn insert(&self, id: &str) -> bool {
        let h = Self::hash(id);
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (set, order) = &mut *guard;
        if !set.insert(h) {
            return false;
        }
        order.push_back(h);
        if order.len() > SEEN_TRADES
            && let Some(old) = order.pop_front()
        {
            set.remove(&old);
        }
        true
    }

    fn contains(&self, id: &str) -> bool {
        let h = Self::hash(id);
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).0.contains(&h)
    }
}

/// A cheap handle on a feed's backfill: its connections hand it windows and the trades they
/// received. Never waits.
#[derive(Clone, Debug)]
pub struct BackfillHandle {
    tx: mpsc::Sender<Window>,
    seen: Arc<SeenTrades>,
    metrics: Arc<BackfillMetrics>,
}

impl BackfillHandle {
    /// Queues a window. False when it was not taken (the queue is full, or the backfill has
    /// stopped): it is counted and logged, and stays missing in `gaps()`.
    pub fn submit(&self, window: Window) -> bool {
        BackfillMetrics::add(&self.metrics.windows, 1);
        match self.tx.try_send(window) {
            Ok(()) => {
                self.metrics.pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(e) => {
                let w = e.into_inner();
                BackfillMetrics::add(&self.metrics.dropped, 1);
                warn!(
                    conn = w.conn.index,
                    cause = w.cause.as_str(),
                    markets = w.markets.len(),
                    "Backfill queue full; this window's trades stay missing."
                );
                false
            }
        }
    }

    /// Fetches the trades of one market between `from_us` and `to_us` (µs since the epoch)
    /// and records those tickd does not have, like any window: a `backfill` row naming the
    /// market, retried while the REST API fails. For the parts of a feed that find a market's
    /// trades missing (a market that silently stopped updating) and want them back; the
    /// window's `gaps()` rows of that market show as recovered once it completes. Returns
    /// false when the window was not taken (see [`BackfillHandle::submit`]).
    pub fn backfill_market(&self, conn: &ConnId, market: &str, from_us: i64, to_us: i64) -> bool {
        self.submit(Window {
            conn: conn.clone(),
            cause: Cause::Market,
            markets: vec![market.to_owned()],
            from_us: Some(from_us),
            to_us,
        })
    }

    /// Notes a trade received live, so that no backfill publishes it again.
    pub fn saw_live(&self, trade_id: &str) {
        self.seen.insert(trade_id);
    }
}

/// Starts a feed's backfill: returns its handle and the future that runs it until shutdown.
pub fn backfill(ctx: BackfillContext) -> (BackfillHandle, impl Future<Output = ()> + Send + 'static) {
    // Bounded: a full queue loses the window, with a record (see QUEUE).
    let (tx, rx) = mpsc::channel(QUEUE);
    let seen = Arc::new(SeenTrades::default());
    let handle = BackfillHandle { tx, seen: seen.clone(), metrics: ctx.metrics.clone() };
    let span = tracing::info_span!("backfill", feed = %ctx.feed);
    let resume = ctx.pool.is_some().then(|| Resume { due: Instant::now() + RESUME_AFTER, attempt: 0 });
    let actor =
        Backfiller { ctx, rx, seen, jobs: VecDeque::new(), next_id: 0, started_us: now_micros(), resume };
    (handle, actor.run().instrument(span))
}

/// One window being worked on.
struct Job {
    /// Numbers the window in the log.
    id: u64,
    window: Window,
    /// The markets still to fetch, each from its own start (µs).
    todo: Vec<(String, i64)>,
    /// Whether each market's start has been found (start windows look it up first).
    resolved: bool,
    /// The window's start as recorded: the latest of its markets' starts.
    from_us: i64,
    /// The start was moved up to `backfill_max_window` ago: older trades are not asked for.
    truncated: bool,
    fetched: u64,
    found: u64,
    new: u64,
    attempt: u32,
    /// When the next attempt may run.
    due: Instant,
}

struct Backfiller {
    ctx: BackfillContext,
    rx: mpsc::Receiver<Window>,
    seen: Arc<SeenTrades>,
    /// Windows queued or waiting for their next attempt, in the order they came.
    jobs: VecDeque<Job>,
    next_id: u64,
    /// When this backfill started (µs): windows that began before are earlier runs'.
    started_us: i64,
    /// The look for earlier runs' missing windows, until it has succeeded.
    resume: Option<Resume>,
}

/// When to look for earlier runs' missing windows next, and how many looks failed.
struct Resume {
    due: Instant,
    attempt: u32,
}

/// One market's listing: the market and its start (µs), and its trades or why not.
type Fetched = ((String, i64), Result<Vec<RestTrade>, RestError>);

/// How an attempt at a window ended.
enum Attempt {
    /// Every market fetched.
    Done,
    /// Some markets are left: why.
    Failed(String),
}

impl Backfiller {
    async fn run(mut self) {
        loop {
            let due = self.jobs.iter().map(|j| j.due).min();
            tokio::select! {
                // Shutdown: what is queued stays missing (logged below).
                _ = self.ctx.shutdown.cancelled() => break,
                // A new window (cancel-safe).
                Some(window) = self.rx.recv() => self.add(window),
                // Earlier runs' windows still missing.
                _ = sleep_until(self.resume.as_ref().map_or_else(Instant::now, |r| r.due)), if self.resume.is_some() => {
                    self.resume_missing().await;
                }
                // A window is due for its (next) attempt.
                _ = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    let now = Instant::now();
                    let Some(i) = self.jobs.iter().position(|j| j.due <= now) else { continue };
                    let Some(job) = self.jobs.remove(i) else { continue };
                    let shutdown = self.ctx.shutdown.clone();
                    tokio::select! {
                        // Not cancel-safe: a window cut short at shutdown is not recorded.
                        _ = shutdown.cancelled() => break,
                        job = self.attempt(job) => match job {
                            Some(job) => self.jobs.push_back(job),
                            None => {
                                self.ctx.metrics.pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        }
        if !self.jobs.is_empty() {
            info!(windows = self.jobs.len(), "Backfill stopped with windows not fetched; they stay missing.");
        }
    }

    /// Queues the windows of earlier runs still missing in `gaps()`; on failure (the database
    /// does not answer) looks again later, like a failed window.
    async fn resume_missing(&mut self) {
        let Some(pool) = self.ctx.pool.clone() else { return };
        let since_us = self.horizon_us();
        match missing_windows(&pool, &self.ctx.feed, since_us, self.started_us).await {
            Ok(windows) => {
                self.resume = None;
                if !windows.is_empty() {
                    info!(
                        windows = windows.len(),
                        "Taking up windows of earlier runs whose trades are still missing."
                    );
                }
                for window in windows {
                    BackfillMetrics::add(&self.ctx.metrics.windows, 1);
                    self.ctx.metrics.pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.add(window);
                }
            }
            Err(e) => {
                let Some(resume) = self.resume.as_mut() else { return };
                resume.attempt += 1;
                let delay = FIRST_RETRY.saturating_mul(1 << (resume.attempt - 1).min(10)).min(MAX_RETRY);
                resume.due = Instant::now() + delay;
                warn!(error = %e, retry_in = ?delay, "Windows of earlier runs not read; looking again later.");
            }
        }
    }

    fn add(&mut self, window: Window) {
        self.next_id += 1;
        debug!(
            window = self.next_id,
            conn = window.conn.index,
            cause = window.cause.as_str(),
            markets = window.markets.len(),
            "Backfill window queued."
        );
        let from = window.from_us.unwrap_or(0);
        self.jobs.push_back(Job {
            id: self.next_id,
            todo: window.markets.iter().map(|m| (m.clone(), from)).collect(),
            resolved: window.from_us.is_some(),
            from_us: from,
            truncated: false,
            window,
            fetched: 0,
            found: 0,
            new: 0,
            attempt: 0,
            due: Instant::now(),
        });
    }

    /// The earliest time a window may reach back to now.
    fn horizon_us(&self) -> i64 {
        now_micros() - i64::try_from(self.ctx.max_window.as_micros()).unwrap_or(i64::MAX)
    }

    /// One attempt at a window; returns it when it must be tried again.
    async fn attempt(&mut self, mut job: Job) -> Option<Job> {
        job.attempt += 1;
        let outcome = match self.resolve(&mut job).await {
            Ok(()) if job.todo.is_empty() && job.fetched == 0 => {
                // A start window of markets with nothing stored: nothing was missed.
                debug!(window = job.id, "No market of the window has stored trades; nothing to fetch.");
                return None;
            }
            Ok(()) => self.fetch(&mut job).await,
            Err(e) => Attempt::Failed(e),
        };
        let horizon = self.horizon_us();
        let (complete, error, again) = match outcome {
            Attempt::Done if job.truncated => (
                false,
                Some(format!("reaches back further than backfill_max_window ({:?})", self.ctx.max_window)),
                false,
            ),
            Attempt::Done => (true, None, false),
            Attempt::Failed(e) if job.window.to_us < horizon => {
                (false, Some(format!("{e}; given up: older than backfill_max_window")), false)
            }
            Attempt::Failed(e) => (false, Some(e), true),
        };
        let m = &self.ctx.metrics;
        let retry = again.then(|| {
            let delay = FIRST_RETRY.saturating_mul(1 << (job.attempt - 1).min(10)).min(MAX_RETRY);
            job.due = Instant::now() + delay;
            delay
        });
        match (&error, again) {
            (None, _) => {
                BackfillMetrics::add(&m.completed, 1);
                info!(
                    window = job.id,
                    cause = job.window.cause.as_str(),
                    markets = job.window.markets.len(),
                    found = job.found,
                    new = job.new,
                    "Backfill window complete."
                );
            }
            (Some(e), true) => {
                BackfillMetrics::add(&m.failed_attempts, 1);
                warn!(window = job.id, attempt = job.attempt, left = job.todo.len(), error = %e, "Backfill window not complete; trying again later.");
            }
            (Some(e), false) => {
                BackfillMetrics::add(&m.abandoned, 1);
                warn!(window = job.id, left = job.todo.len(), error = %e, "Backfill window left incomplete; its trades stay missing.");
            }
        }
        self.record(&job, complete, error, retry).await;
        again.then_some(job)
    }

    /// Finds where each market's window starts: the window's start, or for a start window
    /// each market's newest stored trade (markets without one are left out); no further back
    /// than `backfill_max_window`.
    async fn resolve(&self, job: &mut Job) -> Result<(), String> {
        if !job.resolved {
            let since_us = match job.window.cause {
                Cause::Start { since_us } => since_us,
                _ => job.window.to_us,
            };
            let markets: Vec<String> = job.todo.iter().map(|(m, _)| m.clone()).collect();
            let newest = match &self.ctx.pool {
                Some(pool) => pg::newest_trades(pool, &markets, since_us)
                    .await
                    .map_err(|e| format!("newest stored trades not read: {e}"))?,
                None => Default::default(),
            };
            job.todo = markets.into_iter().filter_map(|m| newest.get(&m).map(|&from| (m, from))).collect();
            job.window.markets = job.todo.iter().map(|(m, _)| m.clone()).collect();
            job.resolved = true;
            let horizon = self.horizon_us();
            for (_, from) in &mut job.todo {
                *from = (*from).max(horizon);
            }
            // Recorded as the latest start, which every market's fetch covers.
            job.from_us = job.todo.iter().map(|(_, from)| *from).max().unwrap_or(job.window.to_us);
        } else if job.attempt == 1 {
            let horizon = self.horizon_us();
            if job.from_us < horizon {
                job.truncated = true;
                job.from_us = horizon;
                for (_, from) in &mut job.todo {
                    *from = horizon;
                }
            }
        }
        Ok(())
    }

    /// Fetches the markets left to do, [`FETCHES_IN_FLIGHT`] at a time; stops starting new
    /// ones at the first failure.
    async fn fetch(&mut self, job: &mut Job) -> Attempt {
        let to_us = job.window.to_us;
        let mut todo: VecDeque<(String, i64)> = std::mem::take(&mut job.todo).into();
        let mut running: JoinSet<Fetched> = JoinSet::new();
        let mut failure: Option<String> = None;
        loop {
            while failure.is_none() && running.len() < FETCHES_IN_FLIGHT {
                let Some((market, from)) = todo.pop_front() else { break };
                let rest = self.ctx.rest.borrow().clone();
                let filter = TradeFilter {
                    ticker: Some(market.clone()),
                    min_ts: Some((from - EDGE_US).div_euclid(1_000_000)),
                    max_ts: Some((to_us + EDGE_US).div_euclid(1_000_000) + 1),
                    page_size: Some(MAX_PAGE_SIZE),
                };
                running.spawn(async move { ((market, from), rest.list_trades(&filter).await) });
            }
            let Some(joined) = running.join_next().await else { break };
            let ((market, from), result) = match joined {
                Ok(done) => done,
                // A fetch task cannot panic short of a bug; its market is tried again.
                Err(e) => {
                    failure.get_or_insert_with(|| format!("a fetch ended abnormally: {e}"));
                    continue;
                }
            };
            match result {
                Ok(trades) => {
                    self.take(job, &market, trades).await;
                    job.fetched += 1;
                }
                Err(e) => {
                    failure.get_or_insert_with(|| format!("GET /markets/trades for {market}: {e}"));
                    job.todo.push((market, from));
                }
            }
        }
        job.todo.extend(todo);
        match failure {
            None => Attempt::Done,
            Some(e) => Attempt::Failed(e),
        }
    }

    /// Publishes the trades of one market's listing that tickd does not have, oldest first.
    async fn take(&self, job: &mut Job, market: &str, trades: Vec<RestTrade>) {
        let m = &self.ctx.metrics;
        let mut timed: Vec<(i64, RestTrade)> = Vec::with_capacity(trades.len());
        for t in trades {
            match t.created_ms {
                Some(ms) => timed.push((ms, t)),
                None => BackfillMetrics::add(&m.trades_untimed, 1),
            }
        }
        job.found += timed.len() as u64;
        BackfillMetrics::add(&m.trades_found, timed.len() as u64);
        timed.retain(|(_, t)| !self.seen.contains(&t.trade_id));
        if let (Some(pool), Some(lo), Some(hi)) =
            (&self.ctx.pool, timed.iter().map(|(ms, _)| *ms).min(), timed.iter().map(|(ms, _)| *ms).max())
        {
            let ids: Vec<String> = timed.iter().map(|(_, t)| t.trade_id.clone()).collect();
            match pg::stored_trades(pool, &ids, lo * 1000, hi * 1000).await {
                Ok(stored) => timed.retain(|(_, t)| !stored.contains(&t.trade_id)),
                // The store deduplicates by trade id anyway; only the count may be too high.
                Err(e) => {
                    warn!(market, error = %e, "Stored trades not checked; recording every trade not seen live.")
                }
            }
        }
        timed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.trade_id.cmp(&b.1.trade_id)));
        let market_name = Name::from(market);
        for (ms, t) in timed {
            if !self.seen.insert(&t.trade_id) {
                continue;
            }
            job.new += 1;
            BackfillMetrics::add(&m.trades_new, 1);
            let tick = Tick {
                feed: self.ctx.feed.clone(),
                conn: job.window.conn.index,
                market: market_name.clone(),
                exch_ts: Some(ms),
                recv_ts: recv_micros(),
                kind: TickKind::Trade(Trade {
                    trade_id: t.trade_id,
                    price: t.price,
                    size: t.size,
                    taker_side: t.taker_side,
                    block: t.block,
                    backfill: true,
                }),
            };
            self.ctx.bus.publish(Arc::new(tick)).await;
        }
    }

    /// The window's row in the ledger; `retry_in`: when the next attempt is due, from now.
    async fn record(&self, job: &Job, complete: bool, error: Option<String>, retry_in: Option<Duration>) {
        let recv_ts = recv_micros();
        let retry_at_us =
            retry_in.map(|d| recv_ts.saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)));
        let w = &job.window;
        let (sid, expected, got) = match w.cause {
            Cause::SeqGap { sid, expected, got } => (Some(sid), Some(expected), Some(got)),
            _ => (None, None, None),
        };
        let event = Backfill {
            cause: w.cause.as_str().to_owned(),
            from_us: job.from_us,
            to_us: w.to_us,
            markets: w.markets.clone(),
            fetched: job.fetched,
            found: job.found,
            new: job.new,
            complete,
            attempt: job.attempt,
            error,
            retry_at_us,
            sid,
            expected,
            got,
        };
        let market = match (w.cause, w.markets.as_slice()) {
            (Cause::Market, [one]) => Name::from(one.as_str()),
            _ => Name::from(""),
        };
        let tick = Tick {
            feed: self.ctx.feed.clone(),
            conn: w.conn.index,
            market,
            exch_ts: None,
            recv_ts,
            kind: TickKind::Feed(FeedEvent::Backfill(event)),
        };
        self.ctx.bus.publish(Arc::new(tick)).await;
    }
}

/// The windows of `feed` in `gaps()` that began after `since_us` and before `before_us` (µs
/// since the epoch), have ended, may have lost trades, and are not recovered: disconnects
/// (for the markets of the feed known then and not let go), sequence gaps on a `trade`
/// channel, and frozen markets.
async fn missing_windows(
    pool: &PgPool,
    feed: &str,
    since_us: i64,
    before_us: i64,
) -> Result<Vec<Window>, sqlx::Error> {
    type Row = (i32, String, String, i64, i64, Option<i64>, Option<i64>, Option<i64>, Vec<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT g.conn, g.market, g.kind, \
                (extract(epoch FROM g.started) * 1000000)::bigint, \
                (extract(epoch FROM g.ended) * 1000000)::bigint, \
                (g.detail->>'sid')::bigint, (g.detail->>'expected')::bigint, (g.detail->>'got')::bigint, \
                CASE WHEN g.market <> '' THEN ARRAY[g.market] \
                     ELSE ARRAY(SELECT k.market FROM markets k \
                                WHERE k.feed = g.feed AND k.first_seen <= g.ended \
                                  AND k.followed IS DISTINCT FROM false \
                                ORDER BY k.market) END \
         FROM gaps(to_timestamp($2::double precision / 1e6), to_timestamp($3::double precision / 1e6)) g \
         WHERE g.feed = $1 AND g.ended IS NOT NULL AND NOT g.recovered \
           AND g.started >= to_timestamp($2::double precision / 1e6) \
           AND (g.kind IN ('disconnected', 'frozen') \
                OR (g.kind = 'seq_gap' AND (\
                    SELECT s.detail->>'channel' FROM feed_events s \
                    WHERE s.feed = g.feed AND s.conn = g.conn AND s.event = 'subscribed' \
                      AND s.sid = (g.detail->>'sid')::bigint AND s.ts <= g.started \
                    ORDER BY s.ts DESC LIMIT 1) = 'trade')) \
         ORDER BY g.started",
    )
    .bind(feed)
    .bind(since_us as f64)
    .bind(before_us as f64)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(conn, market, kind, from_us, to_us, sid, expected, got, markets)| {
            let cause = match kind.as_str() {
                "seq_gap" => Cause::SeqGap {
                    sid: u64::try_from(sid?).ok()?,
                    expected: u64::try_from(expected?).ok()?,
                    got: u64::try_from(got?).ok()?,
                },
                "frozen" => Cause::Market,
                _ if market.is_empty() => Cause::Disconnect,
                // A disconnect names no market; anything else is one market's window.
                _ => Cause::Market,
            };
            let conn = ConnId::new(feed, usize::try_from(conn).ok()?);
            (!markets.is_empty()).then_some(Window { conn, cause, markets, from_us: Some(from_us), to_us })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_trades_forget_the_oldest_past_their_bound() {
        let seen = SeenTrades::default();
        assert!(seen.insert("t-0"));
        assert!(!seen.insert("t-0"), "a second sight is no news");
        for n in 1..=SEEN_TRADES {
            seen.insert(&format!("t-{n}"));
        }
        assert!(!seen.contains("t-0"), "the oldest is forgotten");
        assert!(seen.contains("t-1") && seen.contains(&format!("t-{SEEN_TRADES}")));
    }
}
