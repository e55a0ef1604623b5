//! The simulated exchange: markets, their books, and the deterministic event generator.
//!
//! This is pure state with no I/O and no clock: [`Exchange::step`] runs one exchange event
//! (resting size added or cancelled, a marketable order trading against the book, or a lifecycle
//! change) and returns the [`Update`]s it caused, each numbered from a single counter. Everything
//! random comes from one `ChaCha8Rng` seeded from the configured seed, so the sequence of updates
//! is a pure function of the seed, the market list (in creation order) and the timestamps passed
//! in. A market's initial book comes from its own RNG seeded by the seed and its name, so a market
//! created on demand looks the same whenever it is created.
//!
//! Books are kept as two bid ladders priced in their own contract (YES bids, NO bids), the way
//! Kalshi publishes them, and never cross: `best_yes_bid + best_no_bid < $1.00`.
//!
//! Markets belong to events and series the way Kalshi's tickers read: `KXBTCD-25DEC3117-T96249.99`
//! is in event `KXBTCD-25DEC3117` (all but the last `-` part) of series `KXBTCD` (the first
//! part). Each market goes through a [`Phase`]: open (trading, possibly paused), closed,
//! determined, settled; only open markets trade. [`Exchange::schedule_round`] runs the
//! simulator's market schedule (`--new-market-every`): each round opens a new event of every
//! series and moves older scheduled markets along their lifecycle.
//!
//! Every trade is also kept, up to [`TRADES_KEPT`] across all markets (oldest forgotten
//! first, like Kalshi's rolling window), for the REST API's `GET /markets/trades`: the same
//! ids, prices and counts as the WebSocket frames.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::render::Esc;
use crate::tick::{BookSnapshot, Price, Qty, Side};

/// $0.01 in price units.
const CENT: i64 = 100;
/// $0.001 in price units: the step of `deci_cent` markets.
const DECI_CENT: i64 = 10;
/// One contract in size units.
const CONTRACT: i64 = 100;
/// Levels kept per ladder; a deeper ladder loses its worst level so books stay small.
const MAX_LEVELS: usize = 30;
/// Trades kept for the REST API, across all markets; older ones are forgotten.
pub const TRADES_KEPT: usize = 500_000;
/// How long a market created outside the schedule trades (its announced `close_ts`).
const DAY_MS: i64 = 86_400_000;
/// Schedule rounds a scheduled market trades before it closes.
pub const OPEN_ROUNDS: u64 = 3;
/// Markets in each event the schedule opens.
pub const MARKETS_PER_EVENT: usize = 2;

/// A market's identity as it appears on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarketRef {
    /// The market ticker, e.g. `SIM-MKT-001`.
    pub ticker: Arc<str>,
    /// The market UUID, derived from the seed and the ticker.
    pub id: Arc<str>,
}

/// One thing the exchange publishes, numbered in generation order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// Position in the exchange's single update counter, from 0.
    pub no: u64,
    /// The market it is about.
    pub market: Arc<MarketRef>,
    /// What changed.
    pub kind: UpdateKind,
}

/// The payload of an [`Update`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateKind {
    /// Resting size changed at one level (`orderbook_delta`).
    Delta {
        /// Which bid ladder.
        side: Side,
        /// The level, in that side's own contract.
        price: Price,
        /// Signed change of resting size.
        delta: Qty,
        /// Exchange time, ms.
        ts_ms: i64,
    },
    /// A public trade (`trade`).
    Trade(TradeUpdate),
    /// Top of book or statistics changed (`ticker`).
    Ticker(TickerState),
    /// A lifecycle message (`market_lifecycle_v2` channel).
    Lifecycle {
        /// The frame `type`: `market_lifecycle_v2`, `event_lifecycle` or `event_fee_update`.
        msg_type: &'static str,
        /// The `msg` object, already rendered as JSON text.
        msg: String,
    },
}

/// A trade as published on the `trade` channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TradeUpdate {
    /// UUID-looking unique id.
    pub trade_id: String,
    /// YES price; the NO price is its complement.
    pub yes_price: Price,
    /// Contracts traded.
    pub count: Qty,
    /// The contract the taker bought.
    pub taker: Side,
    /// Off-book block trade.
    pub block: bool,
    /// Exchange time, ms.
    pub ts_ms: i64,
}

/// Everything a `ticker` frame carries, prices on the YES scale.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickerState {
    /// Last traded price ($0 before the first trade).
    pub last: Price,
    /// Best YES bid ($0 when there is none).
    pub yes_bid: Price,
    /// Best YES ask, `1 - best NO bid` ($1 when there is none).
    pub yes_ask: Price,
    /// Size at the best YES bid.
    pub yes_bid_size: Qty,
    /// Size at the best YES ask (the best NO bid's size).
    pub yes_ask_size: Qty,
    /// Size of the last trade.
    pub last_size: Qty,
    /// Cumulative contracts traded.
    pub volume: Qty,
    /// Open interest, contracts.
    pub open_interest: Qty,
    /// Cumulative notional, whole dollars.
    pub dollar_volume: i64,
    /// Open-interest notional, whole dollars.
    pub dollar_open_interest: i64,
    /// Update time, ms.
    pub ts_ms: i64,
}

/// Where a market is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Trading (unless paused: see [`MarketMeta::deactivated`]).
    Open,
    /// Trading stopped.
    Closed,
    /// The result is known.
    Determined,
    /// Settled; the book is gone.
    Settled,
}

/// What the REST API says about a market besides its book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarketMeta {
    /// Its series: the ticker's first `-` part.
    pub series: Arc<str>,
    /// Its event: the ticker without its last `-` part.
    pub event: Arc<str>,
    /// Where it is in its life.
    pub phase: Phase,
    /// Paused by a `deactivated` lifecycle event (still open).
    pub deactivated: bool,
    /// Created and opened, Unix ms.
    pub created_ms: i64,
    /// Trading stops (or stopped), Unix ms.
    pub close_ms: i64,
    /// Determined: when, and whether YES won.
    pub determined: Option<(i64, bool)>,
    /// Settled, Unix ms.
    pub settled_ms: Option<i64>,
    /// The quote when it opened (the REST API's `previous_*` "a day ago" prices).
    pub opening: TickerState,
    /// Under the schedule: the round it opened in and the round its phase last changed.
    schedule: Option<(u64, u64)>,
}

/// One market: identity, price grid, the two bid ladders (price units → size units) and its
/// lifecycle.
#[derive(Debug)]
struct Market {
    info: Arc<MarketRef>,
    tick: i64,
    yes: BTreeMap<i64, i64>,
    no: BTreeMap<i64, i64>,
    ticker: TickerState,
    meta: MarketMeta,
}

impl Market {
    fn new(seed: u64, ticker: &str) -> Market {
        let h = name_hash(seed, ticker);
        let mut rng = ChaCha8Rng::seed_from_u64(h);
        // Every fourth market trades on the $0.001 grid so clients parse sub-cent prices.
        let tick = if h.is_multiple_of(4) { DECI_CENT } else { CENT };
        let id = uuid_from(h, rng.random());
        let mut m = Market {
            info: Arc::new(MarketRef { ticker: ticker.into(), id: id.into() }),
            tick,
            yes: BTreeMap::new(),
            no: BTreeMap::new(),
            ticker: TickerState::default(),
            meta: MarketMeta {
                series: series_of(ticker).into(),
                event: event_of(ticker).into(),
                phase: Phase::Open,
                deactivated: false,
                created_ms: 0,
                close_ms: DAY_MS,
                determined: None,
                settled_ms: None,
                opening: TickerState::default(),
                schedule: None,
            },
        };
        // Fair YES value between $0.15 and $0.85, on the grid; both ladders start a few ticks
        // away from it so the book never crosses.
        let fair = rng.random_range(15 * CENT / tick..=85 * CENT / tick) * tick;
        let levels = rng.random_range(3..=8);
        for k in 1..=levels {
            let yes_px = fair - k * tick * rng.random_range(1..=3);
            let no_px = (10_000 - fair) - k * tick * rng.random_range(1..=3);
            if yes_px >= tick {
                *m.yes.entry(yes_px).or_default() += rng.random_range(1..=300) * CONTRACT;
            }
            if no_px >= tick {
                *m.no.entry(no_px).or_default() += rng.random_range(1..=300) * CONTRACT;
            }
        }
        m.ticker = m.quote(m.ticker.clone(), 0);
        m.meta.opening = m.ticker.clone();
        m
    }

    fn ladder(&mut self, side: Side) -> &mut BTreeMap<i64, i64> {
        match side {
            Side::Yes => &mut self.yes,
            Side::No => &mut self.no,
        }
    }

    fn best(&self, side: Side) -> Option<(i64, i64)> {
        let ladder = match side {
            Side::Yes => &self.yes,
            Side::No => &self.no,
        };
        ladder.last_key_value().map(|(p, q)| (*p, *q))
    }

    /// The ticker fields derived from the book, keeping the trade statistics of `prev`.
    fn quote(&self, prev: TickerState, ts_ms: i64) -> TickerState {
        let (yes_bid, yes_bid_size) = self.best(Side::Yes).unwrap_or((0, 0));
        let (no_bid, yes_ask_size) = self.best(Side::No).unwrap_or((0, 0));
        TickerState {
            yes_bid: Price(yes_bid),
            yes_ask: Price(10_000 - no_bid),
            yes_bid_size: Qty(yes_bid_size),
            yes_ask_size: Qty(yes_ask_size),
            ts_ms,
            ..prev
        }
    }

    fn snapshot(&self) -> BookSnapshot {
        let conv = |l: &BTreeMap<i64, i64>| l.iter().map(|(p, q)| (Price(*p), Qty(*q))).collect();
        BookSnapshot { yes: conv(&self.yes), no: conv(&self.no) }
    }
}

/// The whole simulated exchange. Not thread-safe by itself; the simulator keeps it in a mutex.
#[derive(Debug)]
pub struct Exchange {
    seed: u64,
    rng: ChaCha8Rng,
    /// Mixed into trade ids (see [`Exchange::salt_trade_ids`]).
    trade_id_salt: u64,
    lifecycle_every: u32,
    /// Every market, in creation order.
    order: Vec<Arc<str>>,
    /// The markets that trade, in creation order: the generator picks among these.
    open: Vec<Arc<str>>,
    markets: HashMap<Arc<str>, Market>,
    /// Events announced so far (`event_lifecycle`).
    known_events: std::collections::HashSet<Arc<str>>,
    next_no: u64,
    events: u64,
    /// Trades kept for the REST API.
    trades: TradeLog,
    /// Rounds of the market schedule run so far.
    round: u64,
    /// Series the schedule opens events in (the series of the first markets).
    series: Vec<Arc<str>>,
}

/// A trade as kept for the REST API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTrade {
    /// Position in the exchange's trade sequence, from 1: later trades have higher numbers.
    pub seq: u64,
    /// The market.
    pub market: Arc<str>,
    /// The trade as the WebSocket published it.
    pub trade: TradeUpdate,
}

/// The trades kept, oldest first, overall and per market, at most [`TRADES_KEPT`].
#[derive(Debug, Default)]
struct TradeLog {
    next_seq: u64,
    all: std::collections::VecDeque<Arc<StoredTrade>>,
    by_market: HashMap<Arc<str>, std::collections::VecDeque<Arc<StoredTrade>>>,
}

impl TradeLog {
    fn push(&mut self, market: Arc<str>, trade: TradeUpdate) {
        self.next_seq += 1;
        let t = Arc::new(StoredTrade { seq: self.next_seq, market: market.clone(), trade });
        self.all.push_back(t.clone());
        self.by_market.entry(market).or_default().push_back(t);
        if self.all.len() > TRADES_KEPT
            && let Some(old) = self.all.pop_front()
            && let Some(list) = self.by_market.get_mut(&old.market)
        {
            // The oldest overall is the oldest of its market.
            list.pop_front();
        }
    }

    /// Up to `limit` trades newest first, of `market` (or all), numbered below `before`, whose
    /// time is within `[from_ms, to_ms]`; and whether more follow.
    fn page(
        &self,
        market: Option<&str>,
        before: u64,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> (Vec<Arc<StoredTrade>>, bool) {
        let list = match market {
            Some(m) => match self.by_market.get(m) {
                Some(list) => list,
                None => return (Vec::new(), false),
            },
            None => &self.all,
        };
        let end = list.partition_point(|t| t.seq < before);
        let mut matching = list.range(..end).rev().filter(|t| (from_ms..=to_ms).contains(&t.trade.ts_ms));
        let page: Vec<Arc<StoredTrade>> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        (page, more)
    }
}

impl Exchange {
    /// An exchange with `markets` (duplicates ignored). `lifecycle_every`: about one lifecycle
    /// event per that many exchange events, 0 for none.
    pub fn new(seed: u64, markets: &[String], lifecycle_every: u32) -> Exchange {
        let mut ex = Exchange {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            trade_id_salt: 0,
            lifecycle_every,
            order: Vec::new(),
            open: Vec::new(),
            markets: HashMap::new(),
            known_events: Default::default(),
            next_no: 0,
            events: 0,
            trades: TradeLog::default(),
            round: 0,
            series: Vec::new(),
        };
        for m in markets {
            ex.add_market(m, 0);
        }
        for t in &ex.order {
            let series = series_of(t);
            if !ex.series.iter().any(|s| &**s == series) {
                ex.series.push(series.into());
            }
        }
        ex
    }

    /// Mixes `salt` into every trade id, so that two runs with one seed never repeat an id:
    /// a real exchange's trade ids are unique forever, and the store dedupes on them. The
    /// event sequence is otherwise unchanged.
    pub fn salt_trade_ids(mut self, salt: u64) -> Exchange {
        self.trade_id_salt = salt;
        self
    }

    /// Dates the markets that exist now (made by [`Exchange::new`] at time 0) as created at
    /// `ts_ms` and closing a day later, as the REST API shows them.
    pub fn started_at(mut self, ts_ms: i64) -> Exchange {
        for m in self.markets.values_mut() {
            m.meta.created_ms = ts_ms;
            m.meta.close_ms = ts_ms + DAY_MS;
        }
        self
    }

    /// The number the next update will get; every update already returned is below it.
    pub fn next_update_no(&self) -> u64 {
        self.next_no
    }

    /// Exchange events run so far.
    pub fn events_run(&self) -> u64 {
        self.events
    }

    /// Market tickers in creation order.
    pub fn markets(&self) -> Vec<String> {
        self.order.iter().map(|m| m.to_string()).collect()
    }

    /// Whether the market exists.
    pub fn has_market(&self, ticker: &str) -> bool {
        self.markets.contains_key(ticker)
    }

    /// The market's identity, if it exists.
    pub fn market_ref(&self, ticker: &str) -> Option<Arc<MarketRef>> {
        self.markets.get(ticker).map(|m| m.info.clone())
    }

    /// The ticker of the market with that UUID.
    pub fn ticker_by_id(&self, id: &str) -> Option<Arc<str>> {
        self.markets.values().find(|m| &*m.info.id == id).map(|m| m.info.ticker.clone())
    }

    /// The current book: both ladders ascending, each in its own contract's prices.
    pub fn book(&self, ticker: &str) -> Option<BookSnapshot> {
        self.markets.get(ticker).map(Market::snapshot)
    }

    /// The current ticker state of a market.
    pub fn ticker(&self, ticker: &str) -> Option<TickerState> {
        self.markets.get(ticker).map(|m| m.ticker.clone())
    }

    /// A market's lifecycle and metadata.
    pub fn meta(&self, ticker: &str) -> Option<&MarketMeta> {
        self.markets.get(ticker).map(|m| &m.meta)
    }

    /// The `price_level_structure` name and step of a market's grid.
    pub fn grid(&self, ticker: &str) -> Option<(&'static str, Price)> {
        self.markets.get(ticker).map(|m| {
            let (name, step) = grid_name(m.tick);
            (name, Price(step))
        })
    }

    /// Every market in creation order, with its identity (for listings).
    pub fn market_refs(&self) -> impl Iterator<Item = &Arc<MarketRef>> + '_ {
        self.order.iter().filter_map(|t| self.markets.get(t).map(|m| &m.info))
    }

    /// Kept trades newest first: up to `limit` of `market` (or every market), numbered below
    /// `before` (`u64::MAX` for the newest), executed within `[from_ms, to_ms]`; and whether
    /// more follow.
    pub fn trades_page(
        &self,
        market: Option<&str>,
        before: u64,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> (Vec<Arc<StoredTrade>>, bool) {
        self.trades.page(market, before, from_ms, to_ms, limit)
    }

    /// Every kept trade, oldest first: what the exchange executed, whoever was connected.
    pub fn trades_kept(&self) -> impl Iterator<Item = &Arc<StoredTrade>> + '_ {
        self.trades.all.iter()
    }

    /// Creates a market (its book seeded by the seed and its name), open from `ts_ms` for a
    /// day, and returns its `created` and `activated` lifecycle updates, preceded by its
    /// event's `event_lifecycle` when the event is new; nothing if it already exists, and no
    /// update for a multivariate (`KXMVE*`) market, whose lifecycle belongs to a channel the
    /// simulator does not publish.
    pub fn add_market(&mut self, ticker: &str, ts_ms: i64) -> Vec<Update> {
        self.open_market(ticker, ts_ms, ts_ms + DAY_MS)
    }

    fn open_market(&mut self, ticker: &str, ts_ms: i64, close_ms: i64) -> Vec<Update> {
        let mut out = Vec::new();
        if self.markets.contains_key(ticker) {
            return out;
        }
        let mut m = Market::new(self.seed, ticker);
        m.meta.created_ms = ts_ms;
        m.meta.close_ms = close_ms;
        let info = m.info.clone();
        let tick = m.tick;
        let event: Arc<str> = m.meta.event.clone();
        let series = m.meta.series.clone();
        self.order.push(info.ticker.clone());
        self.open.push(info.ticker.clone());
        self.markets.insert(info.ticker.clone(), m);
        if ticker.starts_with("KXMVE") {
            return out;
        }
        let secs = ts_ms.div_euclid(1000);
        let close = close_ms.div_euclid(1000);
        if self.known_events.insert(event.clone()) && ts_ms != 0 {
            let msg = format!(
                concat!(
                    r#"{{"event_ticker":"{e}","exchange_index":0,"title":"Simulated event {e}","#,
                    r#""subtitle":"","collateral_return_type":"MECNET","series_ticker":"{s}","#,
                    r#""strike_date":{d}}}"#
                ),
                e = Esc(&event),
                s = Esc(&series),
                d = close,
            );
            out.push(self.numbered(info.clone(), UpdateKind::Lifecycle { msg_type: "event_lifecycle", msg }));
        }
        let (structure, step) = grid_name(tick);
        let event_ticker = &*event;
        let msg = format!(
            concat!(
                r#"{{"market_ticker":"{t}","event_type":"created","exchange_index":0,"#,
                r#""open_ts":{open},"close_ts":{close},"additional_metadata":{{"name":"{t}","#,
                r#""title":"Simulated market {t}","yes_sub_title":"Yes","no_sub_title":"No","#,
                r#""rules_primary":"Resolves by simulation.","rules_secondary":"","#,
                r#""can_close_early":true,"event_ticker":"{e}","expected_expiration_ts":{close},"#,
                r#""strike_type":"greater","floor_strike":50}},"price_level_structure":"{s}","#,
                r#""price_ranges":[{{"start":"0.0000","end":"1.0000","step":"{step}"}}]}}"#
            ),
            t = Esc(ticker),
            e = Esc(event_ticker),
            open = secs,
            close = close,
            s = structure,
            step = Price(step),
        );
        out.push(self.numbered(info.clone(), UpdateKind::Lifecycle { msg_type: "market_lifecycle_v2", msg }));
        let msg = format!(r#"{{"market_ticker":"{}","event_type":"activated"}}"#, Esc(ticker));
        out.push(self.numbered(info, UpdateKind::Lifecycle { msg_type: "market_lifecycle_v2", msg }));
        out
    }

    /// Puts every market that exists now under the schedule, opened in round 0 and closing
    /// after [`OPEN_ROUNDS`] rounds of `period_ms` from `now_ms`.
    pub fn schedule_existing(&mut self, now_ms: i64, period_ms: i64) {
        for m in self.markets.values_mut() {
            if m.meta.phase == Phase::Open && m.meta.schedule.is_none() {
                m.meta.schedule = Some((self.round, self.round));
                m.meta.close_ms = now_ms + OPEN_ROUNDS as i64 * period_ms;
            }
        }
    }

    /// One round of the market schedule at `ts_ms`, rounds `period_ms` apart: scheduled markets
    /// open for [`OPEN_ROUNDS`] rounds close (no message: their `close_ts` said when), those
    /// closed a round ago are determined and those determined a round ago settle (with their
    /// `market_lifecycle_v2` messages); then every series gets a new event of
    /// [`MARKETS_PER_EVENT`] markets (`event_lifecycle`, then `created` and `activated` for
    /// each).
    pub fn schedule_round(&mut self, ts_ms: i64, period_ms: i64) -> Vec<Update> {
        self.round += 1;
        let round = self.round;
        let secs = ts_ms.div_euclid(1000);
        let mut out = Vec::new();
        let order = self.order.clone();
        for t in &order {
            let Some(m) = self.markets.get_mut(t) else { continue };
            let Some((born, since)) = m.meta.schedule else { continue };
            let info = m.info.clone();
            let msg = match m.meta.phase {
                Phase::Open if round >= born + OPEN_ROUNDS => {
                    m.meta.phase = Phase::Closed;
                    m.meta.close_ms = m.meta.close_ms.min(ts_ms);
                    m.meta.schedule = Some((born, round));
                    self.open.retain(|o| o != t);
                    continue;
                }
                Phase::Closed if round > since => {
                    let yes = self.rng.random_bool(0.5);
                    m.meta.phase = Phase::Determined;
                    m.meta.determined = Some((ts_ms, yes));
                    m.meta.schedule = Some((born, round));
                    let (result, value) = if yes { ("yes", Price::ONE_DOLLAR) } else { ("no", Price(0)) };
                    format!(
                        r#"{{"market_ticker":"{}","event_type":"determined","determination_ts":{secs},"result":"{result}","settlement_value":"{value}"}}"#,
                        Esc(t)
                    )
                }
                Phase::Determined if round > since => {
                    m.meta.phase = Phase::Settled;
                    m.meta.settled_ms = Some(ts_ms);
                    m.meta.schedule = Some((born, round));
                    m.yes.clear();
                    m.no.clear();
                    format!(r#"{{"market_ticker":"{}","event_type":"settled","settled_ts":{secs}}}"#, Esc(t))
                }
                _ => continue,
            };
            out.push(self.numbered(info, UpdateKind::Lifecycle { msg_type: "market_lifecycle_v2", msg }));
        }
        let close_ms = ts_ms + OPEN_ROUNDS as i64 * period_ms;
        for series in self.series.clone() {
            let event = format!("{series}-R{round:04}");
            for j in 1..=MARKETS_PER_EVENT {
                let ticker = format!("{event}-T{}", 100 * j / (MARKETS_PER_EVENT + 1));
                out.extend(self.open_market(&ticker, ts_ms, close_ms));
                if let Some(m) = self.markets.get_mut(ticker.as_str()) {
                    m.meta.schedule = Some((round, round));
                }
            }
        }
        out
    }

    /// Rounds of the market schedule run so far.
    pub fn rounds(&self) -> u64 {
        self.round
    }

    /// Runs one exchange event at time `ts_ms` and returns the updates it caused (possibly none,
    /// when the chosen action had nothing to act on).
    pub fn step(&mut self, ts_ms: i64) -> Vec<Update> {
        self.events += 1;
        let mut out = Vec::new();
        if self.open.is_empty() {
            return out;
        }
        let idx = self.rng.random_range(0..self.open.len());
        let name = self.open[idx].clone();
        if self.lifecycle_every > 0 && self.rng.random_range(0..self.lifecycle_every) == 0 {
            self.lifecycle(&name, ts_ms, &mut out);
            return out;
        }
        let roll = self.rng.random_range(0..100u32);
        let side = if self.rng.random_bool(0.5) { Side::Yes } else { Side::No };
        let Some(m) = self.markets.get(&name) else {
            return out;
        };
        let before = m.ticker.clone();
        let action = match roll {
            0..45 => Action::Add,
            45..80 => Action::Cancel,
            _ => Action::Trade,
        };
        match action {
            Action::Add => self.add(&name, side, ts_ms, &mut out),
            Action::Cancel => {
                if !self.cancel(&name, side, ts_ms, &mut out) {
                    self.add(&name, side, ts_ms, &mut out);
                }
            }
            Action::Trade => {
                if !self.trade(&name, side, ts_ms, &mut out) {
                    self.add(&name, side.other(), ts_ms, &mut out);
                }
            }
        }
        self.trim(&name, ts_ms, &mut out);
        if let Some(m) = self.markets.get_mut(&name) {
            let q = m.quote(m.ticker.clone(), ts_ms);
            let changed = TickerState { ts_ms: 0, ..q.clone() } != TickerState { ts_ms: 0, ..before };
            m.ticker = q.clone();
            if changed {
                let info = m.info.clone();
                out.push(self.numbered(info, UpdateKind::Ticker(q)));
            }
        }
        out
    }

    fn numbered(&mut self, market: Arc<MarketRef>, kind: UpdateKind) -> Update {
        let no = self.next_no;
        self.next_no += 1;
        Update { no, market, kind }
    }

    fn delta(&mut self, name: &str, side: Side, price: i64, delta: i64, ts_ms: i64) -> Option<Update> {
        let m = self.markets.get_mut(name)?;
        let ladder = m.ladder(side);
        let level = ladder.entry(price).or_default();
        *level += delta;
        if *level <= 0 {
            ladder.remove(&price);
        }
        let info = m.info.clone();
        Some(self.numbered(info, UpdateKind::Delta { side, price: Price(price), delta: Qty(delta), ts_ms }))
    }

    /// Rests new size on `side` near the top of its ladder, never crossing the other side.
    fn add(&mut self, name: &str, side: Side, ts_ms: i64, out: &mut Vec<Update>) {
        let Some(m) = self.markets.get(name) else {
            return;
        };
        let tick = m.tick;
        let opposite = m.best(side.other()).map_or(0, |(p, _)| p);
        // Highest price that keeps best_yes + best_no below $1.
        let max_px = 10_000 - opposite - tick;
        if max_px < tick {
            return;
        }
        let anchor = m.best(side).map_or(max_px - 3 * tick, |(p, _)| p);
        let offset = self.rng.random_range(-6..=2i64);
        let price = (anchor + offset * tick).clamp(tick, max_px);
        let mut size = self.rng.random_range(1..=300) * CONTRACT;
        if self.rng.random_range(0..8) == 0 {
            // Fractional contracts exist since the fixed-point migration.
            size += self.rng.random_range(1..CONTRACT);
        }
        out.extend(self.delta(name, side, price, size, ts_ms));
    }

    /// Cancels part or all of one of the top levels of `side`. False when the ladder is empty.
    fn cancel(&mut self, name: &str, side: Side, ts_ms: i64, out: &mut Vec<Update>) -> bool {
        let Some(m) = self.markets.get_mut(name) else {
            return false;
        };
        let ladder = m.ladder(side);
        if ladder.is_empty() {
            return false;
        }
        let depth = ladder.len().min(10);
        let pick = self.rng.random_range(0..depth);
        let Some((&price, &size)) = ladder.iter().rev().nth(pick) else {
            return false;
        };
        let amount = if self.rng.random_bool(0.4) { size } else { self.rng.random_range(1..=size) };
        out.extend(self.delta(name, side, price, -amount, ts_ms));
        true
    }

    /// A marketable order: the taker buys `taker` and lifts the best bid of the other contract,
    /// sweeping up to three levels. False when that ladder is empty.
    fn trade(&mut self, name: &str, taker: Side, ts_ms: i64, out: &mut Vec<Update>) -> bool {
        let maker = taker.other();
        let levels = self.rng.random_range(1..=3usize);
        let mut traded = false;
        for _ in 0..levels {
            let Some(m) = self.markets.get(name) else {
                return traded;
            };
            let Some((price, size)) = m.best(maker) else {
                break;
            };
            let count = if self.rng.random_bool(0.5) { size } else { self.rng.random_range(1..=size) };
            // The maker's bid is in its own contract: a NO bid at q trades YES at 1 - q.
            let yes_price = match maker {
                Side::Yes => price,
                Side::No => 10_000 - price,
            };
            let trade_id = uuid_from(self.rng.random::<u64>() ^ self.trade_id_salt, self.rng.random());
            let block = self.rng.random_range(0..50) == 0;
            let info = m.info.clone();
            let trade =
                TradeUpdate { trade_id, yes_price: Price(yes_price), count: Qty(count), taker, block, ts_ms };
            let opens = self.rng.random_bool(0.6);
            self.trades.push(info.ticker.clone(), trade.clone());
            let u = self.numbered(info, UpdateKind::Trade(trade));
            out.push(u);
            out.extend(self.delta(name, maker, price, -count, ts_ms));
            if let Some(m) = self.markets.get_mut(name) {
                let t = &mut m.ticker;
                t.last = Price(yes_price);
                t.last_size = Qty(count);
                t.volume = Qty(t.volume.0 + count);
                t.dollar_volume += count * yes_price / (CONTRACT * 10_000);
                let oi = if opens { t.open_interest.0 + count } else { (t.open_interest.0 - count).max(0) };
                t.open_interest = Qty(oi);
                t.dollar_open_interest = oi / CONTRACT / 2;
            }
            traded = true;
            if count < size {
                break;
            }
        }
        traded
    }

    /// Keeps each ladder at most `MAX_LEVELS` deep by cancelling its worst level.
    fn trim(&mut self, name: &str, ts_ms: i64, out: &mut Vec<Update>) {
        for side in [Side::Yes, Side::No] {
            let worst = self.markets.get_mut(name).and_then(|m| {
                let l = m.ladder(side);
                if l.len() > MAX_LEVELS { l.first_key_value().map(|(p, q)| (*p, *q)) } else { None }
            });
            if let Some((price, size)) = worst {
                out.extend(self.delta(name, side, price, -size, ts_ms));
            }
        }
    }

    fn lifecycle(&mut self, name: &str, ts_ms: i64, out: &mut Vec<Update>) {
        // Multivariate markets have their own channel, not simulated here.
        if name.starts_with("KXMVE") {
            return;
        }
        let Some(m) = self.markets.get_mut(name) else {
            return;
        };
        let info = m.info.clone();
        let secs = ts_ms.div_euclid(1000);
        let event = Esc(event_of(&info.ticker));
        let series = m.meta.series.clone();
        let t = Esc(&info.ticker);
        let mut kind = self.rng.random_range(0..5u32);
        if kind == 1 && m.meta.schedule.is_some() {
            // The schedule decides when its markets close.
            kind = 2;
        }
        let (msg_type, msg) = match kind {
            0 => {
                m.meta.deactivated = !m.meta.deactivated;
                let msg = format!(
                    r#"{{"market_ticker":"{t}","event_type":"deactivated","is_deactivated":{}}}"#,
                    m.meta.deactivated
                );
                ("market_lifecycle_v2", msg)
            }
            1 => {
                let close = secs + self.rng.random_range(3_600..=172_800);
                m.meta.close_ms = close * 1000;
                let msg = format!(
                    r#"{{"market_ticker":"{t}","event_type":"close_date_updated","close_ts":{close}}}"#
                );
                ("market_lifecycle_v2", msg)
            }
            2 => {
                let strike = self.rng.random_range(1..=100u32);
                let msg = format!(
                    concat!(
                        r#"{{"market_ticker":"{t}","event_type":"metadata_updated","#,
                        r#""strike_type":"greater","floor_strike":{s},"yes_sub_title":"Above {s}"}}"#
                    ),
                    t = t,
                    s = strike
                );
                ("market_lifecycle_v2", msg)
            }
            3 => {
                let msg = format!(
                    concat!(
                        r#"{{"event_ticker":"{e}","exchange_index":0,"title":"Simulated event {e}","#,
                        r#""subtitle":"","collateral_return_type":"MECNET","series_ticker":"{s}","#,
                        r#""strike_date":{d}}}"#
                    ),
                    e = event,
                    s = Esc(&series),
                    d = secs + 86_400
                );
                ("event_lifecycle", msg)
            }
            _ => {
                let mult = self.rng.random_range(1..=20u32);
                let msg = format!(
                    r#"{{"event_ticker":"{event}","fee_type_override":"quadratic","fee_multiplier_override":{}.{:02}}}"#,
                    mult / 10,
                    (mult % 10) * 10
                );
                ("event_fee_update", msg)
            }
        };
        out.push(self.numbered(info, UpdateKind::Lifecycle { msg_type, msg }));
    }
}

#[derive(Clone, Copy)]
enum Action {
    Add,
    Cancel,
    Trade,
}

trait SideExt {
    fn other(self) -> Side;
}

impl SideExt for Side {
    fn other(self) -> Side {
        match self {
            Side::Yes => Side::No,
            Side::No => Side::Yes,
        }
    }
}

/// The `price_level_structure` name and step of a grid.
fn grid_name(tick: i64) -> (&'static str, i64) {
    if tick == DECI_CENT { ("deci_cent", DECI_CENT) } else { ("linear_cent", CENT) }
}

/// The event ticker of a market: everything before the last `-`.
fn event_of(ticker: &str) -> &str {
    ticker.rsplit_once('-').map_or(ticker, |(e, _)| e)
}

/// The series ticker of a market: everything before the first `-`.
fn series_of(ticker: &str) -> &str {
    ticker.split_once('-').map_or(ticker, |(s, _)| s)
}

/// FNV-1a of the seed and a name: stable across platforms and Rust versions, unlike `Hash`.
fn name_hash(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Formats 128 bits as a version-4-looking UUID string.
fn uuid_from(hi: u64, lo: u64) -> String {
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let mut s = String::with_capacity(36);
    let _ = write!(
        s,
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crossed(b: &BookSnapshot) -> bool {
        match (b.yes.last(), b.no.last()) {
            (Some(y), Some(n)) => y.0.0 + n.0.0 >= 10_000,
            _ => false,
        }
    }

    #[test]
    fn books_never_cross_and_sizes_stay_positive() {
        let names: Vec<String> = (1..=5).map(|i| format!("SIM-MKT-{i:03}")).collect();
        let mut ex = Exchange::new(7, &names, 50);
        for i in 0..20_000 {
            ex.step(i);
        }
        for n in &names {
            let b = ex.book(n).unwrap_or_default();
            assert!(!crossed(&b), "{n} crossed: {b:?}");
            assert!(b.yes.iter().chain(&b.no).all(|l| l.1.0 > 0 && l.0.0 > 0 && l.0.0 < 10_000));
        }
    }

    #[test]
    fn uuids_look_like_uuids() {
        let u = uuid_from(1, 2);
        assert_eq!(u.len(), 36);
        assert_eq!(u.as_bytes()[14], b'4');
    }
}
