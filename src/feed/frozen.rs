//! Frozen markets: one market of a live connection that silently stops updating while the
//! connection and its other markets look healthy.
//!
//! Every feed actor keeps a [`FrozenWatch`] over the markets of its connection. The protocol
//! session records what it last received of each market, per channel
//! ([`crate::kalshi::session::Activity`]); the watch reads it every [`SCAN_EVERY`]:
//! 1. a market with no update of any kind (ticker, trade, book) for `market_quiet_after` while
//!    the connection is live is *quiet*, and is queued for a check (once per
//!    `market_quiet_after` of quiet at most, in the order markets became due, so that every
//!    quiet market gets its turn);
//! 2. a check asks the REST API for the market's order book and newest trades, within the
//!    feed's share of its REST budget ([`CheckRest`]: half of `rest_rate`, which discovery's
//!    listings share too), at most [`MAX_CHECKS_IN_FLIGHT`] per connection at a time;
//! 3. when the answer comes, it is compared with what tickd has *then*: the book tickd holds
//!    at that instant, and the trades tickd received ([`compare`]). Anything received for the
//!    market since the check was sent makes the check moot: the market streams. A market that
//!    agrees is merely quiet and is left alone;
//! 4. a difference is checked once more after [`RECHECK_AFTER`]: the REST book and tickd's
//!    may differ by changes still on their way over the WebSocket, which arrive within that
//!    time. Only when nothing at all arrived for the market between the first check and the
//!    second's answer, and the second still differs, is the market *frozen* ([`Verdict::Frozen`]);
//! 5. the feed then asks for the market afresh on the same connection, records a
//!    `market_frozen` event, raises the `market_frozen` alert and asks for the backfill of its
//!    trades ([`BackfillWindow`]). The market recovers when it streams again, or when a check
//!    after its fresh snapshot agrees with REST ([`Verdict::Recovered`]); the connection's
//!    incident is over once no market of it has been frozen for `market_quiet_after`
//!    ([`Verdict::AllClear`]).
//!
//! The watch is sans-IO: time and what the session saw are passed in, the REST calls are made
//! by [`fetch`] in tasks the feed owns.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::kalshi::rest::{Budget, RestClient, RestError, RestTrade, TradeFilter};
use crate::tick::{BookSnapshot, Name};

/// How often the watch looks for quiet markets.
pub const SCAN_EVERY: Duration = Duration::from_secs(1);

/// Checks one connection has in flight at most; the rest wait in its queue.
pub const MAX_CHECKS_IN_FLIGHT: usize = 2;

/// How long after a check that found a difference it is made again: changes still on their
/// way over the WebSocket when REST answered have arrived by then.
pub const RECHECK_AFTER: Duration = Duration::from_secs(2);

/// A check with no answer after this long is given up (its task is bounded by the REST
/// client's own timeouts and retries; this only keeps a lost answer from stopping the checks
/// of a market for good).
pub const CHECK_GIVEN_UP_AFTER: Duration = Duration::from_secs(300);

/// Newest trades asked of REST per check.
pub const TRADES_COMPARED: u32 = 20;

/// The share of a feed's `rest_rate` that checks may use, in percent (at least one request a
/// second).
pub const CHECK_SHARE_PERCENT: u32 = 50;

/// A REST trade this close after the connection began following its market (ms) is not
/// counted as missed when tickd has no trade of the market to compare with: clocks differ,
/// and the subscription started at about that time.
const FOLLOW_SLACK_MS: i64 = 2_000;

/// The REST side of a feed's checks: its client and the share of its budget the checks of
/// all its connections take together. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CheckRest {
    /// The feed's REST client (its own budget applies too).
    pub client: RestClient,
    /// Requests a second the checks may make, together.
    pub budget: Arc<Budget>,
}

impl CheckRest {
    /// The checks of the feed whose client is `client`: [`check_rate`] of its rate.
    pub fn new(client: RestClient) -> CheckRest {
        let budget = Arc::new(Budget::new(check_rate(client.config().rate)));
        CheckRest { client, budget }
    }
}

/// Requests a second the checks of a feed with `rest_rate` may make.
pub fn check_rate(rest_rate: u32) -> u32 {
    (rest_rate.saturating_mul(CHECK_SHARE_PERCENT) / 100).max(1)
}

/// What a check asks REST for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The order book (the connection subscribes `orderbook_delta`).
    pub book: bool,
    /// The newest trades (the connection subscribes `trade`).
    pub trades: bool,
}

/// What REST answered for one market.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remote {
    /// Its order book; `None` when not asked for, or when the exchange does not know the market.
    pub book: Option<BookSnapshot>,
    /// Its newest trades, newest first; `None` when not asked for.
    pub trades: Option<Vec<RestTrade>>,
}

/// A check's answer.
#[derive(Debug)]
pub struct Fetched {
    /// The market.
    pub market: Name,
    /// What REST said, or why it could not.
    pub result: Result<Remote, RestError>,
}

/// Asks REST for what `wanted` names of `market`, each request within the checks' budget.
pub async fn fetch(rest: CheckRest, market: Name, wanted: Wanted) -> Fetched {
    let result = async {
        let mut remote = Remote::default();
        if wanted.book {
            rest.budget.acquire().await;
            remote.book = rest.client.orderbook(&market, None).await?;
        }
        if wanted.trades {
            rest.budget.acquire().await;
            let filter = TradeFilter {
                ticker: Some(market.to_string()),
                page_size: Some(TRADES_COMPARED),
                ..TradeFilter::default()
            };
            remote.trades = Some(rest.client.trade_pages(&filter).next_page().await?.unwrap_or_default());
        }
        Ok(remote)
    }
    .await;
    Fetched { market, result }
}

/// What tickd has of a market when a check's answer is compared.
#[derive(Clone, Debug, Default)]
pub struct Local<'a> {
    /// Its book, when tickd trusts one; `None` skips the book comparison (a book being
    /// repaired is the repair's business).
    pub book: Option<BookSnapshot>,
    /// Ids of the newest trades received, newest last.
    pub recent_trades: Vec<&'a str>,
    /// The exchange's time (ms) of the newest trade received.
    pub last_trade_ms: Option<i64>,
    /// When the connection began following the market, ms since the epoch (the watch fills
    /// it in).
    pub since_ms: i64,
}

/// How REST differs from tickd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Difference {
    /// The books differ.
    pub book: bool,
    /// Trades REST listed that tickd never received.
    pub missed_trades: u64,
}

impl Difference {
    /// Nothing differs.
    pub fn none(&self) -> bool {
        !self.book && self.missed_trades == 0
    }
}

/// Compares REST's answer with what tickd has.
///
/// Books are equal when every level of both ladders is. Trades: going from REST's newest down,
/// every trade tickd did not receive counts as missed until one tickd did receive (older ones
/// were seen or predate what tickd remembers). When none of REST's trades is one tickd
/// received, a trade counts as missed only if it is newer than the newest trade tickd received
/// (to the second: the WebSocket may say seconds) and than the start of the following.
pub fn compare(local: &Local<'_>, remote: &Remote) -> Difference {
    let book = match (&local.book, &remote.book) {
        (Some(ours), Some(theirs)) => ours != theirs,
        _ => false,
    };
    let mut missed = 0;
    if let Some(trades) = &remote.trades {
        let known = |t: &RestTrade| local.recent_trades.contains(&t.trade_id.as_str());
        let unknown_newer: Vec<&RestTrade> = trades.iter().take_while(|t| !known(t)).collect();
        if unknown_newer.len() < trades.len() {
            // A received trade is in the list: everything newer than it was missed.
            missed = unknown_newer.len() as u64;
        } else {
            let after = match local.last_trade_ms {
                Some(ms) => ms.div_euclid(1000) * 1000 + 999,
                None => local.since_ms + FOLLOW_SLACK_MS,
            };
            missed = trades.iter().filter(|t| t.created_ms.is_some_and(|ms| ms > after)).count() as u64;
        }
    }
    Difference { book, missed_trades: missed }
}

/// What the session last received of a market, as the watch needs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The last update of any kind (snapshots included).
    pub last_update: Option<Instant>,
    /// The last update the exchange streamed of its own accord (snapshots excluded).
    pub last_streamed: Option<Instant>,
    /// The last book snapshot.
    pub last_snapshot: Option<Instant>,
}

/// A market found frozen, for the feed to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrozenMarket {
    /// The market.
    pub market: Name,
    /// How long nothing had come for it.
    pub quiet: Duration,
    /// How REST differed on the check that confirmed it.
    pub difference: Difference,
    /// Checks it took (the first and its confirmation).
    pub checks: u32,
    /// The trades to fetch again.
    pub backfill: BackfillWindow,
}

/// The trades of one market that tickd may have missed while it was frozen: from the
/// exchange's time of the last trade tickd received for it (or, without one, from when the
/// connection began following it) to when it was found frozen. What the backfill of trades
/// takes; the feed hands it to its backfill in `FeedActor::backfill_frozen`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackfillWindow {
    /// The market.
    pub market: Name,
    /// Start, µs since the epoch.
    pub from_us: i64,
    /// End, µs since the epoch.
    pub to_us: i64,
}

/// What a turn of the watch asks the feed to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A market was found frozen: ask for it afresh, record it, alert, backfill.
    Frozen(FrozenMarket),
    /// No market of the connection has been frozen for `market_quiet_after` since the last
    /// one recovered: the incident is over (so a market that freezes again right after its
    /// recovery stays one incident).
    AllClear,
    /// A market found frozen before still differs from REST after its resync: ask again.
    StillFrozen {
        /// The market.
        market: Name,
        /// Its trades were missed too (resubscribe it, not only its book).
        trades: bool,
    },
    /// A market found frozen updates again (or agrees with REST, or is no longer followed).
    Recovered {
        /// The market.
        market: Name,
        /// Why, in words.
        why: &'static str,
    },
}

/// Where a market is in its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting to become due.
    Idle,
    /// Queued for a check; `second` when it confirms a difference found by the first, whose
    /// sending time is `first`.
    Queued { first: Option<Instant> },
    /// A check is in flight since `sent`.
    Checking { sent: Instant, first: Option<Instant> },
    /// A difference was found by a check sent at `first`; check again at `at`.
    Recheck { at: Instant, first: Instant },
}

/// One watched market.
#[derive(Clone, Copy, Debug)]
struct Watched {
    /// When this connection began following it (or its live connection began).
    since: Instant,
    /// The same, µs since the epoch.
    since_us: i64,
    /// When its last check was answered (or given up).
    last_check: Option<Instant>,
    phase: Phase,
    /// Found frozen and asked for afresh at this instant; not recovered yet.
    resynced_at: Option<Instant>,
    /// A check confirming its recovery has been queued since its resync.
    confirm_queued: bool,
    /// Last seen in this scan (markets no longer followed are dropped).
    scan: u64,
}

/// The frozen-market watch of one connection (see the module's description).
#[derive(Debug)]
pub struct FrozenWatch {
    quiet_after: Duration,
    watched: HashMap<Name, Watched>,
    /// Markets due for a check, in turn.
    queue: VecDeque<Name>,
    in_flight: usize,
    scans: u64,
    /// The connection's `market_frozen` incident is open; since when no market of it has
    /// been frozen, if none is.
    incident: Option<Option<Instant>>,
}

impl FrozenWatch {
    /// A watch that checks markets quiet for `quiet_after`.
    pub fn new(quiet_after: Duration) -> FrozenWatch {
        FrozenWatch {
            quiet_after,
            watched: HashMap::new(),
            queue: VecDeque::new(),
            in_flight: 0,
            scans: 0,
            incident: None,
        }
    }

    /// The connection ended: everything starts over on the next one. Returns the markets
    /// that were frozen and not recovered (a new connection subscribes them afresh).
    pub fn reset(&mut self) -> Vec<Name> {
        let frozen = self.frozen();
        self.incident = None;
        self.watched.clear();
        self.queue.clear();
        self.in_flight = 0;
        frozen
    }

    /// Markets found frozen and not recovered yet, sorted.
    pub fn frozen(&self) -> Vec<Name> {
        let mut all: Vec<Name> =
            self.watched.iter().filter(|(_, w)| w.resynced_at.is_some()).map(|(m, _)| m.clone()).collect();
        all.sort();
        all
    }

    /// Checks in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Markets waiting for a check.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Looks at every market the connection follows (all of them, each time: those not
    /// named are no longer followed) and queues those due for a check. `now_us` is `now` as
    /// µs since the epoch.
    pub fn scan(
        &mut self,
        now: Instant,
        now_us: i64,
        markets: impl IntoIterator<Item = (Name, Seen)>,
    ) -> Vec<Verdict> {
        self.scans += 1;
        let scan = self.scans;
        let mut verdicts = Vec::new();
        for (market, seen) in markets {
            let w = self.watched.entry(market.clone()).or_insert(Watched {
                since: now,
                since_us: now_us,
                last_check: None,
                phase: Phase::Idle,
                resynced_at: None,
                confirm_queued: false,
                scan,
            });
            w.scan = scan;
            match w.phase {
                Phase::Idle => {}
                Phase::Recheck { at, first } if at <= now => {
                    w.phase = Phase::Queued { first: Some(first) };
                    self.queue.push_front(market);
                    continue;
                }
                Phase::Checking { sent, .. }
                    if now.saturating_duration_since(sent) >= CHECK_GIVEN_UP_AFTER =>
                {
                    w.phase = Phase::Idle;
                    w.last_check = Some(now);
                    self.in_flight = self.in_flight.saturating_sub(1);
                    continue;
                }
                _ => continue,
            }
            if let Some(resynced) = w.resynced_at {
                if seen.last_streamed.is_some_and(|at| at > resynced) {
                    w.resynced_at = None;
                    w.last_check = Some(now);
                    verdicts.push(Verdict::Recovered { market, why: "it updates again" });
                } else if !w.confirm_queued && seen.last_snapshot.is_some_and(|at| at > resynced) {
                    // Its fresh snapshot is in: see whether REST agrees now.
                    w.confirm_queued = true;
                    w.phase = Phase::Queued { first: None };
                    self.queue.push_front(market);
                }
                continue;
            }
            let quiet_since = [Some(w.since), seen.last_update, w.last_check].into_iter().flatten().max();
            if quiet_since.is_some_and(|since| now.saturating_duration_since(since) >= self.quiet_after) {
                w.phase = Phase::Queued { first: None };
                self.queue.push_back(market);
            }
        }
        let before = self.watched.len();
        let mut gone = Vec::new();
        self.watched.retain(|market, w| {
            let kept = w.scan == scan;
            if !kept {
                if matches!(w.phase, Phase::Checking { .. }) {
                    gone.push(None);
                }
                if w.resynced_at.is_some() {
                    gone.push(Some(market.clone()));
                }
            }
            kept
        });
        for market in gone {
            match market {
                // Its answer will find nothing to update.
                None => self.in_flight = self.in_flight.saturating_sub(1),
                Some(market) => verdicts.push(Verdict::Recovered { market, why: "it is no longer followed" }),
            }
        }
        if self.watched.len() != before {
            let watched = &self.watched;
            self.queue.retain(|m| watched.contains_key(m));
        }
        if let Some(clear) = &mut self.incident {
            let any_frozen = self.watched.values().any(|w| w.resynced_at.is_some());
            match (any_frozen, *clear) {
                (true, _) => *clear = None,
                (false, None) => *clear = Some(now),
                (false, Some(since)) if now.saturating_duration_since(since) >= self.quiet_after => {
                    self.incident = None;
                    verdicts.push(Verdict::AllClear);
                }
                (false, Some(_)) => {}
            }
        }
        verdicts
    }

    /// The next market to check, if one is due and fewer than [`MAX_CHECKS_IN_FLIGHT`] are in
    /// flight; it is then in flight from `now`.
    pub fn next_check(&mut self, now: Instant) -> Option<Name> {
        while self.in_flight < MAX_CHECKS_IN_FLIGHT {
            let market = self.queue.pop_front()?;
            let Some(w) = self.watched.get_mut(&market) else { continue };
            let Phase::Queued { first } = w.phase else { continue };
            w.phase = Phase::Checking { sent: now, first };
            self.in_flight += 1;
            return Some(market);
        }
        None
    }

    /// Takes the answer of a check of `market`: `seen` is what the session has received of
    /// it by now, `local` what tickd has to compare (read now, as of the answer), `now_us`
    /// `now` in µs since the epoch.
    pub fn on_answer(
        &mut self,
        now: Instant,
        now_us: i64,
        market: &Name,
        result: Result<&Remote, ()>,
        seen: Seen,
        mut local: Local<'_>,
    ) -> Option<Verdict> {
        let w = self.watched.get_mut(market)?;
        local.since_ms = w.since_us.div_euclid(1000);
        let local = &local;
        let Phase::Checking { sent, first } = w.phase else { return None };
        self.in_flight = self.in_flight.saturating_sub(1);
        w.phase = Phase::Idle;
        w.last_check = Some(now);
        let Ok(remote) = result else {
            // Tried again once the market has been quiet for another `market_quiet_after`.
            return None;
        };
        let from = first.unwrap_or(sent);
        if let Some(resynced) = w.resynced_at {
            if seen.last_streamed.is_some_and(|at| at > resynced) {
                w.resynced_at = None;
                return Some(Verdict::Recovered { market: market.clone(), why: "it updates again" });
            }
            let difference = compare(local, remote);
            if difference.none() {
                w.resynced_at = None;
                return Some(Verdict::Recovered { market: market.clone(), why: "it agrees with REST again" });
            }
            // Still behind after its resync: ask again, and look again after the next snapshot.
            w.resynced_at = Some(now);
            w.confirm_queued = false;
            return Some(Verdict::StillFrozen {
                market: market.clone(),
                trades: difference.missed_trades > 0,
            });
        }
        if seen.last_update.is_some_and(|at| at > from) {
            // Something arrived since the check was sent: the market streams.
            return None;
        }
        let difference = compare(local, remote);
        if difference.none() {
            return None;
        }
        let Some(first) = first else {
            w.phase = Phase::Recheck { at: now + RECHECK_AFTER, first: sent };
            return None;
        };
        let quiet_since = [Some(w.since), seen.last_update].into_iter().flatten().max().unwrap_or(first);
        let quiet = now.saturating_duration_since(quiet_since);
        let to_us = now_us;
        let from_us = match local.last_trade_ms {
            Some(ms) => ms.saturating_mul(1000),
            None => w.since_us,
        };
        w.resynced_at = Some(now);
        w.confirm_queued = false;
        self.incident = Some(None);
        Some(Verdict::Frozen(FrozenMarket {
            market: market.clone(),
            quiet,
            difference,
            checks: 2,
            backfill: BackfillWindow { market: market.clone(), from_us: from_us.min(to_us), to_us },
        }))
    }

    /// A check's task ended without an answer (it panicked): its market waits for its next turn.
    pub fn on_lost(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::{Price, Qty, Side};

    const QUIET: Duration = Duration::from_secs(60);

    fn name(s: &str) -> Name {
        Name::from(s)
    }

    fn book(size: i64) -> BookSnapshot {
        BookSnapshot { yes: vec![(Price(4800), Qty(size))], no: vec![(Price(5000), Qty(100))] }
    }

    fn trade(id: &str, ms: i64) -> RestTrade {
        RestTrade {
            trade_id: id.into(),
            market: "M".into(),
            price: Price(4800),
            size: Qty(100),
            taker_side: Some(Side::Yes),
            block: None,
            created_ms: Some(ms),
        }
    }

    /// The markets `0..n`, all quiet since `at`.
    fn quiet(n: usize, at: Option<Instant>) -> Vec<(Name, Seen)> {
        (0..n)
            .map(|i| (name(&format!("M{i}")), Seen { last_update: at, last_streamed: at, last_snapshot: at }))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_market_is_checked_once_it_has_been_quiet_long_enough() {
        let mut watch = FrozenWatch::new(QUIET);
        let t0 = Instant::now();
        assert!(watch.scan(t0, 0, quiet(1, Some(t0))).is_empty());
        tokio::time::advance(QUIET - Duration::from_secs(1)).await;
        watch.scan(Instant::now(), 0, quiet(1, Some(t0)));
        assert_eq!(watch.next_check(Instant::now()), None, "not quiet long enough yet");
        tokio::time::advance(Duration::from_secs(1)).await;
        watch.scan(Instant::now(), 0, quiet(1, Some(t0)));
        assert_eq!(watch.next_check(Instant::now()), Some(name("M0")));
        // A market that keeps updating is never due.
        let mut busy = FrozenWatch::new(QUIET);
        for _ in 0..200 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let now = Instant::now();
            busy.scan(now, 0, quiet(1, Some(now)));
            assert_eq!(busy.next_check(now), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn thousands_of_quiet_markets_take_turns_a_few_checks_at_a_time() {
        let mut watch = FrozenWatch::new(QUIET);
        let t0 = Instant::now();
        let markets = 1000;
        watch.scan(t0, 0, quiet(markets, None));
        tokio::time::advance(QUIET).await;
        let mut checked: HashMap<Name, u32> = HashMap::new();
        // One answer a second, the rate a small budget allows: every market gets its turn
        // before any gets a second one, and never more than the cap is in flight.
        for _ in 1..markets {
            let now = Instant::now();
            watch.scan(now, 0, quiet(markets, None));
            while let Some(m) = watch.next_check(now) {
                *checked.entry(m).or_default() += 1;
            }
            assert_eq!(watch.in_flight(), MAX_CHECKS_IN_FLIGHT);
            // The oldest check in flight answers first.
            let answered = watch
                .watched
                .iter()
                .filter_map(|(m, w)| match w.phase {
                    Phase::Checking { sent, .. } => Some((sent, m.clone())),
                    _ => None,
                })
                .min()
                .map(|(_, m)| m)
                .expect("a check in flight");
            let local = Local { book: Some(book(100)), ..Local::default() };
            let remote = Remote { book: Some(book(100)), trades: None };
            let verdict = watch.on_answer(now, 0, &answered, Ok(&remote), Seen::default(), local);
            assert_eq!(verdict, None, "a quiet market that agrees is left alone");
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(checked.len(), markets, "every market checked");
        assert!(checked.values().all(|n| *n == 1), "no market checked twice before the others");
    }

    #[tokio::test(start_paused = true)]
    async fn a_difference_is_checked_again_and_only_a_second_one_with_nothing_received_is_frozen() {
        let mut watch = FrozenWatch::new(QUIET);
        let t0 = Instant::now();
        let m = name("M0");
        watch.scan(t0, 1_000_000, quiet(1, Some(t0)));
        tokio::time::advance(QUIET).await;
        let local = Local { book: Some(book(100)), last_trade_ms: Some(900), ..Local::default() };
        let remote = Remote { book: Some(book(200)), trades: None };
        let seen = Seen { last_update: Some(t0), last_streamed: Some(t0), last_snapshot: Some(t0) };

        // First check: a difference, so a recheck later, not a verdict.
        watch.scan(Instant::now(), 0, quiet(1, Some(t0)));
        assert_eq!(watch.next_check(Instant::now()), Some(m.clone()));
        assert_eq!(watch.on_answer(Instant::now(), 0, &m, Ok(&remote), seen, local.clone()), None);
        tokio::time::advance(RECHECK_AFTER).await;
        watch.scan(Instant::now(), 0, quiet(1, Some(t0)));
        assert_eq!(watch.next_check(Instant::now()), Some(m.clone()));

        // Something arrived in between (a delta in flight at the first check): not frozen.
        let moved = Seen { last_update: Some(Instant::now()), ..seen };
        assert_eq!(watch.on_answer(Instant::now(), 0, &m, Ok(&remote), moved, local.clone()), None);

        // Quiet again, and this time nothing arrives between the two checks.
        let later = Instant::now();
        let seen = Seen { last_update: Some(later), last_streamed: Some(later), last_snapshot: Some(later) };
        tokio::time::advance(QUIET).await;
        watch.scan(Instant::now(), 0, [(m.clone(), seen)]);
        assert_eq!(watch.next_check(Instant::now()), Some(m.clone()));
        assert_eq!(watch.on_answer(Instant::now(), 0, &m, Ok(&remote), seen, local.clone()), None);
        tokio::time::advance(RECHECK_AFTER).await;
        watch.scan(Instant::now(), 0, [(m.clone(), seen)]);
        assert_eq!(watch.next_check(Instant::now()), Some(m.clone()));
        let verdict = watch.on_answer(Instant::now(), 5_000_000, &m, Ok(&remote), seen, local.clone());
        let Some(Verdict::Frozen(found)) = verdict else { panic!("frozen: {verdict:?}") };
        assert_eq!(found.difference, Difference { book: true, missed_trades: 0 });
        assert_eq!(found.quiet, QUIET + RECHECK_AFTER);
        assert_eq!(found.backfill, BackfillWindow { market: m.clone(), from_us: 900_000, to_us: 5_000_000 });
        assert_eq!(watch.frozen(), std::slice::from_ref(&m));

        // Its fresh snapshot arrives: a confirming check, which agrees.
        let resynced = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        let snap = Seen { last_snapshot: Some(Instant::now()), last_update: Some(Instant::now()), ..seen };
        watch.scan(Instant::now(), 0, [(m.clone(), snap)]);
        assert!(resynced < Instant::now());
        assert_eq!(watch.next_check(Instant::now()), Some(m.clone()));
        let same = Remote { book: Some(book(100)), trades: None };
        let verdict = watch.on_answer(Instant::now(), 0, &m, Ok(&same), snap, local.clone());
        assert!(matches!(verdict, Some(Verdict::Recovered { .. })), "{verdict:?}");
        assert!(watch.frozen().is_empty());

        // The incident is over once no market has been frozen for `market_quiet_after`.
        let streams =
            |at: Instant| Seen { last_update: Some(at), last_streamed: Some(at), last_snapshot: None };
        assert_eq!(watch.scan(Instant::now(), 0, [(m.clone(), streams(Instant::now()))]), []);
        tokio::time::advance(QUIET - Duration::from_secs(1)).await;
        assert_eq!(watch.scan(Instant::now(), 0, [(m.clone(), streams(Instant::now()))]), []);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            watch.scan(Instant::now(), 0, [(m.clone(), streams(Instant::now()))]),
            [Verdict::AllClear]
        );
        assert_eq!(watch.scan(Instant::now(), 0, [(m.clone(), streams(Instant::now()))]), [], "once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_frozen_market_recovers_when_it_streams_again_or_is_let_go() {
        let mut watch = FrozenWatch::new(QUIET);
        let m = name("M0");
        let t0 = Instant::now();
        watch.scan(t0, 0, quiet(1, Some(t0)));
        watch.watched.get_mut(&m).expect("watched").resynced_at = Some(t0);
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        let streams = Seen { last_update: Some(now), last_streamed: Some(now), last_snapshot: None };
        let verdicts = watch.scan(now, 0, [(m.clone(), streams)]);
        assert_eq!(verdicts, [Verdict::Recovered { market: m.clone(), why: "it updates again" }]);

        watch.watched.get_mut(&m).expect("watched").resynced_at = Some(now);
        let verdicts = watch.scan(now, 0, []);
        assert_eq!(verdicts, [Verdict::Recovered { market: m, why: "it is no longer followed" }]);
        assert!(watch.frozen().is_empty());
    }

    #[test]
    fn trades_count_as_missed_from_rest_newest_down_to_the_first_one_received() {
        let received = ["t3", "t4"];
        let local =
            Local { recent_trades: received.to_vec(), last_trade_ms: Some(4_500), ..Local::default() };
        let remote = |ids: &[(&str, i64)]| Remote {
            book: None,
            trades: Some(ids.iter().map(|(id, ms)| trade(id, *ms)).collect()),
        };
        // (REST's newest first, missed)
        let table: [(&[(&str, i64)], u64); 5] = [
            (&[("t4", 4_500), ("t3", 4_000)], 0),
            (&[("t6", 6_000), ("t5", 5_000), ("t4", 4_500)], 2),
            // Nothing known in the list: only what is newer than tickd's newest second.
            (&[("t9", 9_000), ("t8", 4_800)], 1),
            (&[("t1", 1_000)], 0),
            (&[], 0),
        ];
        for (ids, missed) in table {
            assert_eq!(compare(&local, &remote(ids)).missed_trades, missed, "{ids:?}");
        }
        // No trade received yet: those after the following began (with some slack) are missed.
        let fresh = Local { since_ms: 10_000, ..Local::default() };
        assert_eq!(compare(&fresh, &remote(&[("a", 20_000), ("b", 11_000), ("c", 5_000)])).missed_trades, 1);
    }

    #[test]
    fn checks_take_half_the_rest_rate_and_at_least_one_request_a_second() {
        assert_eq!(check_rate(10), 5);
        assert_eq!(check_rate(1), 1);
        assert_eq!(check_rate(3), 1);
        assert_eq!(check_rate(400), 200);
    }
}
