//! Kalshi REST answers read into tickd's types (`kalshi-rest.md` §4–§7), liberally.
//!
//! What identifies an item is required: a market's ticker; a trade's id, market, price and
//! count. Everything else is optional: absent, `null` or `""` is `None`, and so is a value of
//! the wrong type or one that does not parse (counted in [`Reader::ignored`], never turned
//! into a zero). Fixed-point fields (`*_dollars`, `*_fp`) are read first; the legacy integer
//! ones (cents, whole contracts) only when the fixed-point one is absent, never added to it.
//! Times are RFC 3339 with 0 to 9 fractional digits, kept as Unix milliseconds. Unknown
//! fields are ignored: the API grows fields without notice.
//!
//! An item that cannot be used (no ticker, a trade without a price) is left out of its page,
//! and the caller counts and logs it; a page whose shape is wrong (not an object, no item
//! array) is an error for the whole call.

use serde_json::{Map, Value};

use crate::tick::{BookSnapshot, Level, Price, Qty, Side};

/// A market as the REST API lists it, in tickd's units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Market {
    /// The market ticker (`KXBTCD-25DEC3117-T96249.99`).
    pub ticker: String,
    /// Its event (`KXBTCD-25DEC3117`).
    pub event_ticker: Option<String>,
    /// Its series (`KXBTCD`): sent by some API versions; otherwise the series the listing was
    /// filtered by, if any. Never parsed out of the ticker.
    pub series_ticker: Option<String>,
    /// What the market is about (deprecated by Kalshi but still sent).
    pub title: Option<String>,
    /// The YES outcome's short title.
    pub yes_sub_title: Option<String>,
    /// `binary` or `scalar`.
    pub market_type: Option<String>,
    /// Trading state as the exchange reports it.
    pub status: Option<MarketStatus>,
    /// Created, Unix ms.
    pub created_ms: Option<i64>,
    /// Trading opens, Unix ms.
    pub open_ms: Option<i64>,
    /// Trading stops, Unix ms.
    pub close_ms: Option<i64>,
    /// Expected expiration, Unix ms.
    pub expected_expiration_ms: Option<i64>,
    /// Settled, Unix ms (settled markets only).
    pub settlement_ms: Option<i64>,
    /// `yes`, `no` or `scalar` once determined; `None` before.
    pub result: Option<String>,
    /// YES settlement value, once determined.
    pub settlement_value: Option<Price>,
    /// Best YES bid.
    pub yes_bid: Option<Price>,
    /// Best YES ask.
    pub yes_ask: Option<Price>,
    /// Contracts at the best YES bid.
    pub yes_bid_size: Option<Qty>,
    /// Contracts at the best YES ask.
    pub yes_ask_size: Option<Qty>,
    /// Last YES trade price.
    pub last_price: Option<Price>,
    /// Contracts traded in all.
    pub volume: Option<Qty>,
    /// Contracts traded in the last 24 hours.
    pub volume_24h: Option<Qty>,
    /// Open interest, contracts.
    pub open_interest: Option<Qty>,
    /// The tick grid's name (`linear_cent`, `deci_cent`...).
    pub price_level_structure: Option<String>,
}

/// A market's trading state, as the exchange reports it (the `status` field). Distinct from
/// the vocabulary of the `status` filter ([`StatusFilter`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MarketStatus {
    /// Created, not open yet.
    Initialized,
    /// Open but paused.
    Inactive,
    /// Open for trading.
    Active,
    /// Trading stopped.
    Closed,
    /// The result is known; not settled yet.
    Determined,
    /// The result is disputed.
    Disputed,
    /// The result was amended.
    Amended,
    /// Settled: positions paid out.
    Finalized,
    /// A value this version does not know, as sent.
    Other(String),
}

impl MarketStatus {
    /// Reads a `status` value.
    pub fn parse(s: &str) -> MarketStatus {
        match s {
            "initialized" => MarketStatus::Initialized,
            "inactive" => MarketStatus::Inactive,
            "active" => MarketStatus::Active,
            "closed" => MarketStatus::Closed,
            "determined" => MarketStatus::Determined,
            "disputed" => MarketStatus::Disputed,
            "amended" => MarketStatus::Amended,
            "finalized" => MarketStatus::Finalized,
            other => MarketStatus::Other(other.to_owned()),
        }
    }

    /// The value as the exchange spells it.
    pub fn as_str(&self) -> &str {
        match self {
            MarketStatus::Initialized => "initialized",
            MarketStatus::Inactive => "inactive",
            MarketStatus::Active => "active",
            MarketStatus::Closed => "closed",
            MarketStatus::Determined => "determined",
            MarketStatus::Disputed => "disputed",
            MarketStatus::Amended => "amended",
            MarketStatus::Finalized => "finalized",
            MarketStatus::Other(s) => s,
        }
    }

    /// Settled: nothing will trade or change any more.
    pub fn is_settled(&self) -> bool {
        matches!(self, MarketStatus::Finalized)
    }
}

/// The `status` filter of `GET /markets`: one value, in the filter's own vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    /// Not open yet (`initialized`).
    Unopened,
    /// Open (`active`).
    Open,
    /// Paused (`inactive`).
    Paused,
    /// Trading stopped.
    Closed,
    /// Settled (`finalized`).
    Settled,
}

impl StatusFilter {
    /// The query value.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Unopened => "unopened",
            StatusFilter::Open => "open",
            StatusFilter::Paused => "paused",
            StatusFilter::Closed => "closed",
            StatusFilter::Settled => "settled",
        }
    }
}

/// A public trade as `GET /markets/trades` lists it, in tickd's units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestTrade {
    /// The exchange's trade id: the same as the WebSocket `trade` frame's.
    pub trade_id: String,
    /// The market ticker.
    pub market: String,
    /// YES price of the trade.
    pub price: Price,
    /// Contracts traded.
    pub size: Qty,
    /// The side the taker bought, when given.
    pub taker_side: Option<Side>,
    /// An off-book block trade, when said.
    pub block: Option<bool>,
    /// Execution time, Unix ms (the answer has µs; the WebSocket frame's `ts_ms` has ms).
    pub created_ms: Option<i64>,
}

/// Reads the fields of one item, counting those that are present but unusable.
pub(crate) struct Reader<'a> {
    obj: &'a Map<String, Value>,
    /// Fields present with a wrong type or a value that does not parse, read as `None`.
    pub ignored: u64,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(obj: &'a Map<String, Value>) -> Self {
        Reader { obj, ignored: 0 }
    }

    /// A non-empty string; `None` for absent, `null` and `""`; a wrong type is ignored.
    pub(crate) fn text(&mut self, key: &str) -> Option<String> {
        match self.obj.get(key)? {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s.clone()),
            _ => self.ignore(),
        }
    }

    fn ignore<T>(&mut self) -> Option<T> {
        self.ignored += 1;
        None
    }

    /// Whether the field is present with a value (not `null`, not `""`).
    fn given(&self, key: &str) -> bool {
        !matches!(self.obj.get(key), None | Some(Value::Null)) && self.obj.get(key) != Some(&Value::from(""))
    }

    /// A fixed-point value from `fixed` (a decimal string), else the legacy integer `legacy`
    /// (in units of `legacy_unit`) when the fixed-point field is absent.
    fn fixed(&mut self, fixed: &str, legacy: Option<&str>, decimals: u32, legacy_unit: i64) -> Option<i64> {
        if self.given(fixed) {
            return match &self.obj[fixed] {
                Value::String(s) => {
                    crate::tick::parse_fixed(s.as_bytes(), decimals).or_else(|| self.ignore())
                }
                _ => self.ignore(),
            };
        }
        let legacy = legacy.filter(|k| self.given(k))?;
        match self.obj[legacy].as_i64().and_then(|v| v.checked_mul(legacy_unit)) {
            Some(v) => Some(v),
            None => self.ignore(),
        }
    }

    /// A price from `*_dollars`, else legacy cents.
    pub(crate) fn price(&mut self, dollars: &str, cents: Option<&str>) -> Option<Price> {
        self.fixed(dollars, cents, Price::DECIMALS, 100).map(Price)
    }

    /// A count from `*_fp`, else legacy whole contracts.
    pub(crate) fn qty(&mut self, fp: &str, whole: Option<&str>) -> Option<Qty> {
        self.fixed(fp, whole, Qty::DECIMALS, 100).map(Qty)
    }

    /// An RFC 3339 time as Unix ms.
    pub(crate) fn time_ms(&mut self, key: &str) -> Option<i64> {
        let text = self.text(key)?;
        parse_rfc3339_ms(&text).or_else(|| self.ignore())
    }

    /// A boolean.
    pub(crate) fn flag(&mut self, key: &str) -> Option<bool> {
        match self.obj.get(key)? {
            Value::Null => None,
            Value::Bool(b) => Some(*b),
            _ => self.ignore(),
        }
    }
}

/// RFC 3339 (`2026-08-05T14:01:09.49656Z`, 0 to 9 fractional digits, `Z` or an offset) as
/// Unix milliseconds, truncated.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let time = humantime::parse_rfc3339_weak(text).ok().or_else(|| offset_to_utc(text))?;
    let ms = match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).ok()?,
        Err(before) => -i64::try_from(before.duration().as_millis()).ok()?,
    };
    Some(ms)
}

/// `…+02:00` / `…-05:30`: humantime reads UTC only, so the offset is applied here.
fn offset_to_utc(text: &str) -> Option<std::time::SystemTime> {
    let cut = text.len().checked_sub(6)?;
    let (local, offset) = text.split_at(cut);
    let sign: i64 = match offset.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = offset[1..].split_once(':')?;
    let secs = sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60);
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    let shift = std::time::Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 { local.checked_sub(shift) } else { local.checked_add(shift) }
}

/// A market item. `Err` says why it cannot be used.
pub(crate) fn market(obj: &Map<String, Value>, ignored: &mut u64) -> Result<Market, String> {
    let mut r = Reader::new(obj);
    let ticker = r.text("ticker").ok_or("a market without `ticker`")?;
    let m = Market {
        event_ticker: r.text("event_ticker"),
        series_ticker: r.text("series_ticker"),
        title: r.text("title"),
        yes_sub_title: r.text("yes_sub_title"),
        market_type: r.text("market_type"),
        status: r.text("status").map(|s| MarketStatus::parse(&s)),
        created_ms: r.time_ms("created_time"),
        open_ms: r.time_ms("open_time"),
        close_ms: r.time_ms("close_time"),
        expected_expiration_ms: r.time_ms("expected_expiration_time"),
        settlement_ms: r.time_ms("settlement_ts"),
        result: r.text("result"),
        settlement_value: r.price("settlement_value_dollars", Some("settlement_value")),
        yes_bid: r.price("yes_bid_dollars", Some("yes_bid")),
        yes_ask: r.price("yes_ask_dollars", Some("yes_ask")),
        yes_bid_size: r.qty("yes_bid_size_fp", None),
        yes_ask_size: r.qty("yes_ask_size_fp", None),
        last_price: r.price("last_price_dollars", Some("last_price")),
        volume: r.qty("volume_fp", Some("volume")),
        volume_24h: r.qty("volume_24h_fp", Some("volume_24h")),
        open_interest: r.qty("open_interest_fp", Some("open_interest")),
        price_level_structure: r.text("price_level_structure"),
        ticker,
    };
    *ignored += r.ignored;
    Ok(m)
}

/// A trade item. `Err` says why it cannot be used.
pub(crate) fn trade(obj: &Map<String, Value>, ignored: &mut u64) -> Result<RestTrade, String> {
    let mut r = Reader::new(obj);
    let trade_id = r.text("trade_id").ok_or("a trade without `trade_id`")?;
    let market = r.text("ticker").or_else(|| r.text("market_ticker")).ok_or("a trade without `ticker`")?;
    // The YES price, else the complement of the NO price: the two always add up to $1.
    let price = r
        .price("yes_price_dollars", Some("yes_price"))
        .or_else(|| r.price("no_price_dollars", Some("no_price")).map(Price::complement))
        .ok_or("a trade without a usable price")?;
    let size = r.qty("count_fp", Some("count")).ok_or("a trade without a usable count")?;
    let side = |s: Option<String>| match s.as_deref() {
        Some("yes" | "bid") => Some(Side::Yes),
        Some("no" | "ask") => Some(Side::No),
        _ => None,
    };
    let taker_side = side(r.text("taker_outcome_side"))
        .or_else(|| side(r.text("taker_side")))
        .or_else(|| side(r.text("taker_book_side")));
    let t = RestTrade {
        trade_id,
        market,
        price,
        size,
        taker_side,
        block: r.flag("is_block_trade"),
        created_ms: r.time_ms("created_time"),
    };
    *ignored += r.ignored;
    Ok(t)
}

/// An order book answer: `orderbook_fp` (`yes_dollars`/`no_dollars` of `[price, count]`
/// strings), else the legacy `orderbook` (`yes_dollars`/`no_dollars` with integer counts, or
/// `yes`/`no` in cents and whole contracts). Both ladders come back ascending, one level per
/// price; levels that cannot be used (unparseable, a price outside $0 to $1, no size) are
/// left out and counted in `dropped`. `Err` when neither book is there.
pub(crate) fn orderbook(body: &Map<String, Value>, dropped: &mut u64) -> Result<BookSnapshot, String> {
    let fp = body.get("orderbook_fp").filter(|v| !v.is_null());
    let legacy = body.get("orderbook").filter(|v| !v.is_null());
    let (book, sides): (&Value, [(&str, LevelUnits); 2]) = match (fp, legacy) {
        (Some(b), _) => (b, [("yes_dollars", LevelUnits::Fixed), ("no_dollars", LevelUnits::Fixed)]),
        (None, Some(b)) if b.get("yes_dollars").is_some() || b.get("no_dollars").is_some() => {
            (b, [("yes_dollars", LevelUnits::Fixed), ("no_dollars", LevelUnits::Fixed)])
        }
        (None, Some(b)) => (b, [("yes", LevelUnits::Cents), ("no", LevelUnits::Cents)]),
        (None, None) => return Err("no `orderbook_fp` (or legacy `orderbook`) in the answer".into()),
    };
    let Value::Object(book) = book else {
        return Err("the order book is not an object".into());
    };
    let mut ladders = sides.map(|(key, units)| ladder(book.get(key), units, dropped));
    let [yes, no] = std::mem::take(&mut ladders);
    Ok(BookSnapshot { yes, no })
}

#[derive(Clone, Copy)]
enum LevelUnits {
    /// `["0.4200", "13.00"]`; a legacy count may be a whole-contract integer.
    Fixed,
    /// `[42, 13]`: cents and whole contracts.
    Cents,
}

fn ladder(side: Option<&Value>, units: LevelUnits, dropped: &mut u64) -> Vec<Level> {
    let levels = match side {
        // Absent or `null`: an empty side (the demo sends `null`).
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => {
            *dropped += 1;
            return Vec::new();
        }
    };
    let mut out: Vec<Level> = Vec::with_capacity(levels.len());
    for level in levels {
        match read_level(level, units) {
            Some(l) if l.0.0 > 0 && l.0 < Price::ONE_DOLLAR && l.1.0 > 0 => out.push(l),
            _ => *dropped += 1,
        }
    }
    // Ascending is documented and observed, but the endpoint's summary says otherwise: sort.
    out.sort_by_key(|l| l.0);
    let before = out.len();
    out.dedup_by_key(|l| l.0);
    *dropped += (before - out.len()) as u64;
    out
}

fn read_level(level: &Value, units: LevelUnits) -> Option<Level> {
    let [price, count] = level.as_array()?.as_slice() else {
        return None;
    };
    match units {
        LevelUnits::Fixed => {
            let price = Price::parse_dollars(price.as_str()?)?;
            let count = match count {
                Value::String(s) => Qty::parse_fp(s)?,
                v => Qty(v.as_i64()?.checked_mul(100)?),
            };
            Some((price, count))
        }
        LevelUnits::Cents => {
            Some((Price(price.as_i64()?.checked_mul(100)?), Qty(count.as_i64()?.checked_mul(100)?)))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn a_current_market_reads_in_exact_units_and_missing_fields_stay_none() {
        let mut ignored = 0;
        let m = market(
            &obj(json!({
                "ticker": "KXBTCD-25DEC3117-T96249.99", "event_ticker": "KXBTCD-25DEC3117",
                "status": "active", "title": "Bitcoin above 96,249.99?",
                "open_time": "2025-12-31T16:00:00Z", "close_time": "2025-12-31T17:00:00.49656Z",
                "yes_bid_dollars": "0.5600", "yes_ask_dollars": "0.58", "yes_bid_size_fp": "57.51",
                "last_price_dollars": "0.5700", "volume_fp": "1000.00", "result": "",
                "settlement_value_dollars": null, "brand_new_field": {"x": 1}
            })),
            &mut ignored,
        )
        .unwrap();
        assert_eq!(m.ticker, "KXBTCD-25DEC3117-T96249.99");
        assert_eq!(m.event_ticker.as_deref(), Some("KXBTCD-25DEC3117"));
        assert_eq!(m.status, Some(MarketStatus::Active));
        assert_eq!(
            (m.yes_bid, m.yes_ask, m.yes_bid_size),
            (Some(Price(5600)), Some(Price(5800)), Some(Qty(5751)))
        );
        assert_eq!(m.open_ms, Some(1_767_196_800_000));
        assert_eq!(m.close_ms, Some(1_767_200_400_496));
        // Not given is not zero.
        assert_eq!((m.result, m.settlement_value, m.open_interest, m.yes_ask_size), (None, None, None, None));
        assert_eq!(ignored, 0);
    }

    #[test]
    fn legacy_integers_are_read_only_when_the_fixed_point_field_is_absent() {
        let mut ignored = 0;
        let both = market(
            &obj(json!({"ticker": "A", "yes_bid": 45, "yes_bid_dollars": "0.4500", "volume": 7})),
            &mut ignored,
        )
        .unwrap();
        assert_eq!((both.yes_bid, both.volume), (Some(Price(4500)), Some(Qty(700))));
        let legacy =
            market(&obj(json!({"ticker": "A", "yes_bid": 45, "last_price": 3})), &mut ignored).unwrap();
        assert_eq!((legacy.yes_bid, legacy.last_price), (Some(Price(4500)), Some(Price(300))));
        // A fixed-point field that is there but unusable does not fall back to the legacy one.
        let bad =
            market(&obj(json!({"ticker": "A", "yes_bid_dollars": "cheap", "yes_bid": 45})), &mut ignored)
                .unwrap();
        assert_eq!(bad.yes_bid, None);
        assert_eq!(ignored, 1);
    }

    #[test]
    fn wrong_types_are_ignored_but_a_market_needs_its_ticker() {
        let mut ignored = 0;
        let m = market(
            &obj(json!({"ticker": "A", "status": 3, "yes_bid_dollars": 0.5, "close_time": "tomorrow"})),
            &mut ignored,
        )
        .unwrap();
        assert_eq!((m.status, m.yes_bid, m.close_ms), (None, None, None));
        assert_eq!(ignored, 3);
        for bad in [json!({}), json!({"ticker": ""}), json!({"ticker": null}), json!({"ticker": 7})] {
            assert!(market(&obj(bad.clone()), &mut ignored).is_err(), "{bad}");
        }
    }

    #[test]
    fn trades_of_both_eras_read_the_same() {
        let mut ignored = 0;
        let current = trade(
            &obj(json!({"trade_id": "c0a3ff04", "ticker": "KXSENATEMID-26-AELS",
                "created_time": "2026-08-05T14:01:09.49656Z", "count_fp": "57.51",
                "yes_price_dollars": "0.9980", "no_price_dollars": "0.0020",
                "taker_outcome_side": "no", "taker_book_side": "ask", "taker_side": "no", "is_block_trade": false})),
            &mut ignored,
        )
        .unwrap();
        assert_eq!(
            current,
            RestTrade {
                trade_id: "c0a3ff04".into(),
                market: "KXSENATEMID-26-AELS".into(),
                price: Price(9980),
                size: Qty(5751),
                taker_side: Some(Side::No),
                block: Some(false),
                created_ms: Some(1_785_938_469_496),
            }
        );
        let legacy = trade(
            &obj(json!({"trade_id": "t", "ticker": "M", "count": 3, "yes_price": 42, "taker_side": "yes"})),
            &mut ignored,
        )
        .unwrap();
        assert_eq!(
            (legacy.price, legacy.size, legacy.taker_side, legacy.block, legacy.created_ms),
            (Price(4200), Qty(300), Some(Side::Yes), None, None)
        );
        let no_only = trade(
            &obj(json!({"trade_id": "t", "ticker": "M", "count_fp": "1.00", "no_price_dollars": "0.3000"})),
            &mut ignored,
        )
        .unwrap();
        assert_eq!((no_only.price, no_only.taker_side), (Price(7000), None));
        for bad in [
            json!({"ticker": "M", "count_fp": "1", "yes_price_dollars": "0.5"}),
            json!({"trade_id": "t", "count_fp": "1", "yes_price_dollars": "0.5"}),
            json!({"trade_id": "t", "ticker": "M", "count_fp": "1"}),
            json!({"trade_id": "t", "ticker": "M", "yes_price_dollars": "0.5", "count_fp": "many"}),
        ] {
            assert!(trade(&obj(bad.clone()), &mut ignored).is_err(), "{bad}");
        }
    }

    #[test]
    fn order_books_of_every_shape_come_back_ascending_and_clean() {
        let mut dropped = 0;
        let current = orderbook(
            &obj(json!({"orderbook_fp": {
                "yes_dollars": [["0.4200", "13.00"], ["0.0100", "200.00"], ["0.1500", "100.00"]],
                "no_dollars": null}})),
            &mut dropped,
        )
        .unwrap();
        assert_eq!(
            current.yes,
            vec![(Price(100), Qty(20000)), (Price(1500), Qty(10000)), (Price(4200), Qty(1300))]
        );
        assert!(current.no.is_empty());
        assert_eq!(dropped, 0);
        let hybrid = orderbook(
            &obj(json!({"orderbook": {"yes": [[42, 13]], "no": [[56, 17]], "yes_dollars": [["0.4200", 13]], "no_dollars": [["0.5600", 17]]},
                        "orderbook_fp": {"yes_dollars": [["0.4200", "13.00"]], "no_dollars": [["0.5600", "17.00"]]}})),
            &mut dropped,
        )
        .unwrap();
        let legacy =
            orderbook(&obj(json!({"orderbook": {"yes": [[42, 13]], "no": [[56, 17]]}})), &mut dropped)
                .unwrap();
        let legacy_dollars = orderbook(
            &obj(json!({"orderbook": {"yes_dollars": [["0.4200", 13]], "no_dollars": [["0.5600", 17]]}})),
            &mut dropped,
        )
        .unwrap();
        let want = BookSnapshot { yes: vec![(Price(4200), Qty(1300))], no: vec![(Price(5600), Qty(1700))] };
        assert_eq!((hybrid, legacy, legacy_dollars), (want.clone(), want.clone(), want));
        assert_eq!(dropped, 0);
        let messy = orderbook(
            &obj(json!({"orderbook_fp": {"yes_dollars": [["0.42", "1.00"], ["0.42", "2.00"], ["1.5", "1"], ["x", "1"], [1], "no", ["0.30", "0.00"]],
                                         "no_dollars": "none"}})),
            &mut dropped,
        )
        .unwrap();
        assert_eq!(messy.yes.len(), 1);
        assert_eq!(dropped, 7);
        assert!(orderbook(&obj(json!({"something": 1})), &mut dropped).is_err());
    }

    #[test]
    fn rfc3339_times_with_any_precision_or_offset_read_as_milliseconds() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.123456789Z"), Some(1123));
        assert_eq!(parse_rfc3339_ms("1970-01-01T02:00:01+02:00"), Some(1000));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01-05:00"), Some(18_001_000));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(parse_rfc3339_ms(""), None);
    }
}
