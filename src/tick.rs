//! The normalized tick model shared by every part past the venue code.
//!
//! A [`Tick`] is one thing that happened on one feed: market data (trade, quote, book snapshot,
//! book delta, lifecycle) or a feed event that consumers must see too (connected, disconnected,
//! gap, resynced, alert...). Prices and sizes are exact integers ([`Price`], [`Qty`]) parsed
//! straight from the exchange's fixed-point strings; there is no floating point on the data path.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// A price in units of $0.0001 (one ten-thousandth of a dollar): `"0.4800"` is `Price(4800)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Price(pub i64);

/// A quantity in units of 0.01 contract: `"300.00"` is `Qty(30000)`. Signed, so a book delta
/// can remove size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Qty(pub i64);

impl Price {
    /// Decimal places of the unit: $0.0001.
    pub const DECIMALS: u32 = 4;
    /// One dollar, the payout of a binary contract.
    pub const ONE_DOLLAR: Price = Price(10_000);

    /// Parses a fixed-point dollar string (`"0.48"`, `"0.4800"`, `"1"`), exactly.
    pub fn parse_dollars(s: &str) -> Option<Price> {
        parse_fixed(s.as_bytes(), Self::DECIMALS).map(Price)
    }

    /// The same price seen from the other side of a binary contract: `$1 - self`.
    pub fn complement(self) -> Price {
        Price(Self::ONE_DOLLAR.0 - self.0)
    }
}

impl Qty {
    /// Decimal places of the unit: 0.01 contract.
    pub const DECIMALS: u32 = 2;

    /// Parses a fixed-point contract count (`"300.00"`, `"-54.00"`, `"12"`), exactly.
    pub fn parse_fp(s: &str) -> Option<Qty> {
        parse_fixed(s.as_bytes(), Self::DECIMALS).map(Qty)
    }
}

impl fmt::Display for Price {
    /// Formats with four decimals, the way Kalshi sends dollar strings: `0.4800`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_fixed(f, self.0, Self::DECIMALS)
    }
}

impl fmt::Display for Qty {
    /// Formats with two decimals, the way Kalshi sends `_fp` strings: `300.00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_fixed(f, self.0, Self::DECIMALS)
    }
}

fn write_fixed(f: &mut fmt::Formatter<'_>, v: i64, decimals: u32) -> fmt::Result {
    let scale = 10i64.pow(decimals);
    let sign = if v < 0 { "-" } else { "" };
    let abs = v.unsigned_abs();
    let scale = scale as u64;
    write!(f, "{sign}{}.{:0width$}", abs / scale, abs % scale, width = decimals as usize)
}

/// Parses an optionally signed decimal string into an integer count of `10^-decimals` units.
///
/// Exact or nothing: more fractional digits than `decimals` are accepted only when the extra
/// digits are zeros (`"0.48000"`), since anything else would silently round a price. Returns
/// `None` for empty input, stray characters, or a value that does not fit in an `i64`.
pub fn parse_fixed(s: &[u8], decimals: u32) -> Option<i64> {
    let (negative, digits) = match s.first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int_part, frac_part) = match digits.iter().position(|&b| b == b'.') {
        Some(dot) => (&digits[..dot], &digits[dot + 1..]),
        None => (digits, &digits[digits.len()..]),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let mut value: i64 = 0;
    for &b in int_part {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    let mut frac_digits = 0;
    for &b in frac_part {
        if !b.is_ascii_digit() {
            return None;
        }
        if frac_digits < decimals {
            value = value.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
            frac_digits += 1;
        } else if b != b'0' {
            // A digit below our unit: refuse rather than round a price.
            return None;
        }
    }
    value = value.checked_mul(10i64.checked_pow(decimals - frac_digits)?)?;
    Some(if negative { -value } else { value })
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    // A clock before 1970 is a broken host; treat it as the epoch rather than panic.
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// The last value [`recv_micros`] returned, process-wide.
static LAST_RECV: AtomicI64 = AtomicI64::new(0);

/// Microseconds since the Unix epoch, strictly increasing across the whole process: read once
/// per received frame (and per locally made feed event) for [`Tick::recv_ts`].
///
/// Two frames read in the same microsecond get consecutive values, so `(feed, market,
/// recv_ts)` names one tick, which the store uses as the key of everything but trades. When
/// the wall clock steps back, values keep counting up from the last one until it catches up.
pub fn recv_micros() -> i64 {
    let now = now_micros();
    let mut last = LAST_RECV.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST_RECV.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The proleptic Gregorian date `(year, month, day)` of a day number (days since
/// 1970-01-01), by Howard Hinnant's civil-from-days.
pub fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix milliseconds, displayed as RFC 3339 UTC with milliseconds
/// (`2022-11-22T20:44:01.000Z`).
pub struct Rfc3339Millis(pub i64);

impl fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1000);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_date(secs.div_euclid(86_400));
        let (h, min, s, ms) = (sod / 3600, (sod / 60) % 60, sod % 60, self.0.rem_euclid(1000));
        write!(f, "{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{ms:03}Z")
    }
}

/// The day number (days since 1970-01-01) of a proleptic Gregorian date, the inverse of
/// [`civil_date`] (Howard Hinnant's days-from-civil).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads an RFC 3339 time (`2025-03-01T18:26:53.361842Z`, `2022-11-22T20:44:01+01:00`) as
/// Unix milliseconds, digits below the millisecond dropped. `None` for anything else: a
/// timestamp that cannot be read is not given, never guessed.
pub fn parse_rfc3339_millis(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(r)?;
        digits.iter().try_fold(0i64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
    };
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    // 60 seconds is a leap second; read as the next minute's first, as POSIX time does.
    if d < 1 || d > days_in_month || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if *sign == b'+' { m } else { -m }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// The most text of a rejected frame kept in [`FeedEvent::Rejected`].
pub const REJECTED_TEXT_MAX: usize = 4096;

/// A cheaply cloned, interned name (feed id or market ticker).
pub type Name = Arc<str>;

/// Which connection of which feed: a feed's market list is spread over connections
/// `kalshi/0`, `kalshi/1`, ... This is the one place that id is written and read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    /// The feed's name.
    pub feed: Name,
    /// The connection's index within the feed, stamped on every tick as [`Tick::conn`].
    pub index: u16,
}

impl ConnId {
    /// Connection `index` of `feed`. A feed would need 65,536 connections (tens of millions of
    /// markets) to overflow the index; past that every index reads 65535, which only blurs
    /// the ledger.
    pub fn new(feed: impl Into<Name>, index: usize) -> ConnId {
        ConnId { feed: feed.into(), index: u16::try_from(index).unwrap_or(u16::MAX) }
    }

    /// Reads `kalshi/2` back; `None` for anything else (`store`).
    pub fn parse(id: &str) -> Option<ConnId> {
        let (feed, n) = id.rsplit_once('/')?;
        Some(ConnId { feed: Name::from(feed), index: n.parse().ok()? })
    }

    /// The feed an alert source belongs to: `kalshi` for `kalshi/2`, the source itself for
    /// one that is no connection (`store`).
    pub fn feed_of(source: &str) -> &str {
        match source.rsplit_once('/') {
            Some((feed, n)) if n.parse::<u16>().is_ok() => feed,
            _ => source,
        }
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.feed, self.index)
    }
}

/// Which contract of a binary market a book level or a taker belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The YES contract.
    Yes,
    /// The NO contract.
    No,
}

/// One normalized event from one feed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tick {
    /// The feed (configured connection group) that produced it.
    pub feed: Name,
    /// Which of the feed's connections received it (`feed/conn` in logs).
    pub conn: u16,
    /// The market ticker as the exchange spells it; empty for feed-wide events.
    pub market: Name,
    /// Exchange time in ms since the epoch, when the frame carries one.
    pub exch_ts: Option<i64>,
    /// Local receive time in µs since the epoch: one [`recv_micros`] read per frame, so
    /// strictly increasing within the process.
    pub recv_ts: i64,
    /// What happened.
    pub kind: TickKind,
}

/// The payload of a [`Tick`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TickKind {
    /// A public trade.
    Trade(Trade),
    /// Top of book and market statistics (Kalshi's `ticker` channel).
    Quote(Quote),
    /// A full order book for one market; replaces whatever was known before.
    BookSnapshot(BookSnapshot),
    /// A change of resting size at one price level.
    BookDelta(BookDelta),
    /// A market or event lifecycle change.
    Lifecycle(Lifecycle),
    /// What a market is (its event, series, title, status, times) and whether the feed
    /// follows it, as market discovery learned it.
    Market(MarketInfo),
    /// A feed state change that consumers must see (connected, gap, alert...).
    Feed(FeedEvent),
}

/// A public trade. Prices are on the YES scale; the NO price is its complement.
///
/// Only what makes a trade a trade is required (its id, price and size); what the exchange
/// left out is `None`, never a made-up default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Trade {
    /// The exchange's trade id; the dedupe key in storage.
    pub trade_id: String,
    /// YES price of the trade.
    pub price: Price,
    /// Contracts traded.
    pub size: Qty,
    /// The side the taker bought, when the exchange said.
    pub taker_side: Option<Side>,
    /// An off-book block trade, when the exchange said (older servers never do).
    pub block: Option<bool>,
    /// Recovered over the exchange's REST API after a window the live stream missed (stored
    /// with `source = 'rest'`), rather than received live.
    pub backfill: bool,
}

/// Top of book and statistics for one market. Prices on the YES scale.
///
/// Every field is optional: `None` means the exchange did not send it (absent, `null` or
/// `""`), which is not the same as zero. Stored as SQL `NULL`, sent to dashboards as `null`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Quote {
    /// Last traded price.
    pub last: Option<Price>,
    /// Best YES bid.
    pub bid: Option<Price>,
    /// Best YES ask.
    pub ask: Option<Price>,
    /// Contracts at the best bid.
    pub bid_size: Option<Qty>,
    /// Contracts at the best ask.
    pub ask_size: Option<Qty>,
    /// Size of the last trade.
    pub last_size: Option<Qty>,
    /// Cumulative contracts traded.
    pub volume: Option<Qty>,
    /// Open interest in contracts.
    pub open_interest: Option<Qty>,
    /// Cumulative traded notional, whole dollars.
    pub dollar_volume: Option<i64>,
    /// Open-interest notional, whole dollars.
    pub dollar_open_interest: Option<i64>,
}

/// One price level: resting bids of `size` contracts at `price`.
pub type Level = (Price, Qty);

/// A full book. Both ladders are bids, each priced in its own contract: a NO level at
/// `Price(3000)` is a bid of $0.30 for NO (which would cross a YES bid of $0.70 or more).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BookSnapshot {
    /// YES bids, ascending by price.
    pub yes: Vec<Level>,
    /// NO bids, ascending by price (NO contract prices).
    pub no: Vec<Level>,
}

/// A change of resting size at one level, priced in the side's own contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BookDelta {
    /// Which ladder.
    pub side: Side,
    /// The level's price (in that side's contract).
    pub price: Price,
    /// Signed change of resting contracts.
    pub delta: Qty,
}

/// A market or event lifecycle change (created, activated, closed, determined, settled...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lifecycle {
    /// Whether `Tick::market` names a market or an event.
    pub scope: LifecycleScope,
    /// The exchange's event name, as sent (`created`, `determined`, `settled`...).
    pub event: String,
    /// The exchange's message body as JSON text, kept whole for storage and auditing.
    pub detail: String,
}

/// What tickd knows about one market: from the exchange's REST listing or its lifecycle
/// messages. Each field is `None` when this source did not say; nothing is guessed (a reader
/// keeps what it knew before for a `None`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MarketInfo {
    /// The market's event ticker.
    pub event: Option<String>,
    /// The event's series ticker.
    pub series: Option<String>,
    /// The market's title.
    pub title: Option<String>,
    /// The market's status as the exchange's REST API spells it (`active`, `closed`,
    /// `determined`, `finalized`...).
    pub status: Option<String>,
    /// When it opens (or opened) for trading, Unix ms.
    pub open_ms: Option<i64>,
    /// When it closes (or closed), Unix ms.
    pub close_ms: Option<i64>,
    /// Whether the feed follows it from now on: `Some(true)` when it starts, `Some(false)` when
    /// it stops, `None` when this tick only tells more about it.
    pub followed: Option<bool>,
}

/// What a [`Lifecycle`] tick is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LifecycleScope {
    /// `Tick::market` is a market ticker.
    Market,
    /// `Tick::market` is an event ticker.
    Event,
}

/// A feed state change. Published on the bus so that no consumer shows stale data as live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FeedEvent {
    /// A connection attempt started.
    Connecting {
        /// Consecutive attempt number, from 1.
        attempt: u32,
    },
    /// The WebSocket handshake succeeded.
    Connected,
    /// The exchange acknowledged one channel's subscription.
    Subscribed {
        /// The channel.
        channel: String,
        /// Its subscription id on this connection.
        sid: u64,
    },
    /// Every desired subscription is acknowledged and every book built; data is flowing.
    Live,
    /// The connection ended.
    Disconnected {
        /// Why, in words.
        reason: String,
    },
    /// Waiting before the next connection attempt.
    BackingOff {
        /// Consecutive failures so far.
        failures: u32,
        /// The delay chosen, in ms.
        delay_ms: u64,
    },
    /// A sequence gap on one subscription: frames between `expected` and `got` were lost.
    Gap {
        /// The exchange's subscription id.
        sid: u64,
        /// The sequence number that should have come next.
        expected: u64,
        /// The sequence number that came.
        got: u64,
    },
    /// Books of the named markets (or the whole feed when `market` is empty) cannot be trusted
    /// until a `Resynced` follows.
    Stale {
        /// Why, in words.
        reason: String,
    },
    /// A repaired subscription: books rebuilt from fresh snapshots.
    Resynced {
        /// The subscription id that now carries the data.
        sid: u64,
    },
    /// One market of a live connection stopped updating while the exchange's REST API showed
    /// it changing (a book that differs, or trades tickd never received, on two checks with
    /// nothing received between them): tickd asked for it afresh on the same connection. The
    /// tick names the market. Its trades from `backfill_from_us` to `backfill_to_us` may be
    /// missing.
    MarketFrozen {
        /// How long nothing had come for the market when it was found frozen, in ms.
        quiet_ms: u64,
        /// REST's order book differed from tickd's.
        book_differs: bool,
        /// Trades REST listed (among the newest it was asked for) that tickd never received.
        missed_trades: u64,
        /// REST checks it took: the first and the one that confirmed it.
        checks: u32,
        /// The last `ticker` message tickd received for it, µs since the epoch.
        last_ticker_us: Option<i64>,
        /// The last trade tickd received for it, µs since the epoch.
        last_trade_us: Option<i64>,
        /// The last book update (delta or snapshot) tickd received for it, µs since the epoch.
        last_book_us: Option<i64>,
        /// Start of the window whose trades may be missing: the exchange's time of the last
        /// trade tickd received for the market (or when the connection began following it),
        /// µs since the epoch.
        backfill_from_us: i64,
        /// End of that window: when the market was found frozen, µs since the epoch.
        backfill_to_us: i64,
    },
    /// A frame that could not be used (not JSON, or a known message without what identifies
    /// it), kept for the operator: its reason, the parser's error and its text. At most a few
    /// a minute per connection are kept; `unkept` counts the ones between this and the last
    /// kept one (every one is counted in `/metrics`).
    Rejected {
        /// Machine-readable reason (`malformed_json`, `missing_field`...).
        reason: String,
        /// The parser's words.
        error: String,
        /// The frame's length in bytes.
        bytes: u64,
        /// The frame's text, at most [`REJECTED_TEXT_MAX`] bytes of it.
        text: String,
        /// Rejected frames since the previous kept one that were counted but not kept.
        unkept: u64,
    },
    /// Something needs a human: too many consecutive failures, rejected credentials...
    Alert {
        /// Machine-readable kind (`max_reconnects`, `credentials_rejected`...).
        kind: String,
        /// Details for the human.
        message: String,
    },
    /// The feed stopped trying, by configuration, after an alert.
    GivenUp {
        /// Why, in words.
        reason: String,
    },
    /// Trades of a window the live stream may have missed, fetched over the REST API: one per
    /// attempt at the window, the counts cumulative over its attempts so far.
    Backfill(Backfill),
}

/// What a [`FeedEvent::Backfill`] says about one window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Backfill {
    /// Why trades may be missing: `disconnect`, `seq_gap`, `start` (tickd started) or
    /// `market` (one market's trades asked for).
    pub cause: String,
    /// The window's start, µs since the epoch: from here on every trade of `markets` was
    /// asked for.
    pub from_us: i64,
    /// The window's end, µs since the epoch.
    pub to_us: i64,
    /// The markets whose trades the window covers.
    pub markets: Vec<String>,
    /// Of those, the markets fetched over the whole window so far.
    pub fetched: u64,
    /// Trades the exchange listed in the window so far.
    pub found: u64,
    /// Of those, trades tickd had not stored or received: recorded now.
    pub new: u64,
    /// Every market fetched over the whole window: no trade of it is missing any more.
    pub complete: bool,
    /// Attempts at the window so far, from 1.
    pub attempt: u32,
    /// Why the window is not complete (yet): the REST error, or that it is older than
    /// `backfill_max_window`. `None` when complete.
    pub error: Option<String>,
    /// When the next attempt is due (µs since the epoch); `None` when there will be none.
    pub retry_at_us: Option<i64>,
    /// For a sequence gap: its subscription id and the numbers lost (`expected..got`).
    pub sid: Option<u64>,
    /// The sequence number that should have come.
    pub expected: Option<u64>,
    /// The sequence number that came.
    pub got: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_id_reads_back_as_written_and_names_its_feed() {
        let id = ConnId::new("kalshi", 2);
        assert_eq!(id.to_string(), "kalshi/2");
        assert_eq!(ConnId::parse("kalshi/2"), Some(id));
        assert_eq!(ConnId::parse("store"), None);
        assert_eq!(ConnId::feed_of("kalshi/2"), "kalshi");
        assert_eq!(ConnId::feed_of("store"), "store");
        assert_eq!(ConnId::new("big", 70_000).index, u16::MAX);
        // Connections sort by index, not by text: `f/2` before `f/10`.
        assert!(ConnId::new("f", 2) < ConnId::new("f", 10));
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(Rfc3339Millis(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Rfc3339Millis(1_669_149_841_000).to_string(), "2022-11-22T20:44:01.000Z");
        assert_eq!(Rfc3339Millis(951_782_400_123).to_string(), "2000-02-29T00:00:00.123Z");
        assert_eq!(Rfc3339Millis(-1).to_string(), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn rfc3339_reads_back_what_is_written_and_the_exchange_sends() {
        for ms in [0, 1, 1_669_149_841_000, 951_782_400_123, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339_millis(&Rfc3339Millis(ms).to_string()), Some(ms), "{ms}");
        }
        let cases = [
            ("2022-11-22T20:44:01Z", Some(1_669_149_841_000)),
            ("2025-03-01T18:26:53.361842Z", Some(1_740_853_613_361)),
            ("2025-03-01T18:26:53.3Z", Some(1_740_853_613_300)),
            ("2022-11-22T21:44:01+01:00", Some(1_669_149_841_000)),
            ("2022-11-22T15:44:01-05:00", Some(1_669_149_841_000)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800_000)),
            ("2023-02-29T00:00:00Z", None),
            ("2022-11-22T20:44:01", None),
            ("2022-11-22T20:44:01.Z", None),
            ("2022-13-01T00:00:00Z", None),
            ("2022-11-22T24:00:00Z", None),
            ("2022-11-22T20:44:01Zjunk", None),
            ("", None),
            ("1669149841", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rfc3339_millis(text), want, "{text:?}");
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        for days in [-1, 0, 59, 365, 11_016, 20_000, 100_000] {
            let (y, m, d) = civil_date(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn dollar_strings_parse_exactly() {
        let cases = [
            ("0.4800", Some(4800)),
            ("0.48", Some(4800)),
            ("0.480", Some(4800)),
            ("1", Some(10_000)),
            ("1.0000", Some(10_000)),
            ("0.0001", Some(1)),
            (".5", Some(5000)),
            ("0.00010", Some(1)),
            ("0.00015", None), // below $0.0001: refuse, never round
            ("", None),
            ("-", None),
            (".", None),
            ("0.4a", None),
            ("1e3", None),
            ("99999999999999999999", None),
        ];
        for (text, want) in cases {
            assert_eq!(Price::parse_dollars(text).map(|p| p.0), want, "{text:?}");
        }
    }

    #[test]
    fn signed_counts_parse_exactly() {
        assert_eq!(Qty::parse_fp("-54.00"), Some(Qty(-5400)));
        assert_eq!(Qty::parse_fp("300.00"), Some(Qty(30000)));
        assert_eq!(Qty::parse_fp("0.01"), Some(Qty(1)));
        assert_eq!(Qty::parse_fp("+2.5"), Some(Qty(250)));
        assert_eq!(Qty::parse_fp("0.001"), None);
    }

    #[test]
    fn formatting_round_trips() {
        for p in [0, 1, 4800, 10_000, 123_456] {
            assert_eq!(Price::parse_dollars(&Price(p).to_string()), Some(Price(p)));
        }
        assert_eq!(Qty(-5400).to_string(), "-54.00");
        assert_eq!(Price(4800).to_string(), "0.4800");
        assert_eq!(Price(3000).complement(), Price(7000));
    }
}
