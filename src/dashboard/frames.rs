//! The JSON frames of the stream protocol (`docs/dashboard.md`), written by hand: one pass, no
//! intermediate values, so each tick costs one small allocation however many clients get it.

use std::fmt::Write as _;

use crate::tick::{BookSnapshot, FeedEvent, LifecycleScope, MarketInfo, Side, Tick, TickKind};

/// A JSON object being written: `Obj::new("trade").str("feed", ..).int(..).finish()`.
pub(crate) struct Obj {
    buf: String,
}

impl Obj {
    /// `{"type":"<kind>"`.
    pub(crate) fn new(kind: &str) -> Obj {
        let mut buf = String::with_capacity(192);
        buf.push_str("{\"type\":");
        push_str(&mut buf, kind);
        Obj { buf }
    }

    fn key(&mut self, key: &str) {
        self.buf.push_str(",\"");
        self.buf.push_str(key);
        self.buf.push_str("\":");
    }

    pub(crate) fn str(mut self, key: &str, value: &str) -> Obj {
        self.key(key);
        push_str(&mut self.buf, value);
        self
    }

    pub(crate) fn int(mut self, key: &str, value: i64) -> Obj {
        self.key(key);
        let _ = write!(self.buf, "{value}");
        self
    }

    pub(crate) fn uint(mut self, key: &str, value: u64) -> Obj {
        self.key(key);
        let _ = write!(self.buf, "{value}");
        self
    }

    pub(crate) fn opt_int(mut self, key: &str, value: Option<i64>) -> Obj {
        self.key(key);
        match value {
            Some(v) => {
                let _ = write!(self.buf, "{v}");
            }
            None => self.buf.push_str("null"),
        }
        self
    }

    pub(crate) fn bool(mut self, key: &str, value: bool) -> Obj {
        self.key(key);
        self.buf.push_str(if value { "true" } else { "false" });
        self
    }

    /// `key: true` when `on`, nothing otherwise: a mark that most frames do not carry.
    pub(crate) fn flag(self, key: &str, on: bool) -> Obj {
        if on { self.bool(key, true) } else { self }
    }

    /// `null` when not given.
    pub(crate) fn opt_bool(self, key: &str, value: Option<bool>) -> Obj {
        match value {
            Some(v) => self.bool(key, v),
            None => self.raw(key, "null"),
        }
    }

    /// `null` when not given.
    pub(crate) fn opt_str(self, key: &str, value: Option<&str>) -> Obj {
        match value {
            Some(v) => self.str(key, v),
            None => self.raw(key, "null"),
        }
    }

    /// `value` must already be valid JSON.
    pub(crate) fn raw(mut self, key: &str, json: &str) -> Obj {
        self.key(key);
        self.buf.push_str(json);
        self
    }

    /// The echoed command id, when the command had one.
    pub(crate) fn id(self, id: Option<&serde_json::Value>) -> Obj {
        match id {
            Some(id) => {
                let json = id.to_string();
                self.raw("id", &json)
            }
            None => self,
        }
    }

    pub(crate) fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

/// Appends `s` as a JSON string.
pub(crate) fn push_str(buf: &mut String, s: &str) {
    buf.push('"');
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.push_str(s);
    } else {
        for c in s.chars() {
            match c {
                '"' => buf.push_str("\\\""),
                '\\' => buf.push_str("\\\\"),
                '\n' => buf.push_str("\\n"),
                '\r' => buf.push_str("\\r"),
                '\t' => buf.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(buf, "\\u{:04x}", c as u32);
                }
                c => buf.push(c),
            }
        }
    }
    buf.push('"');
}

fn side(s: Side) -> &'static str {
    match s {
        Side::Yes => "yes",
        Side::No => "no",
    }
}

/// A tick as its live frame. `state` marks a frame that is current state rather than a live
/// event (sent on subscribe and after a resync); `stale` a book tickd cannot vouch for.
pub(crate) fn tick(t: &Tick, state: bool) -> String {
    let kind = match &t.kind {
        TickKind::Trade(_) => "trade",
        TickKind::Quote(_) => "quote",
        TickKind::BookSnapshot(_) => "book",
        TickKind::BookDelta(_) => "delta",
        TickKind::Lifecycle(_) => "lifecycle",
        TickKind::Market(_) => "market",
        TickKind::Feed(_) => "feed",
    };
    let o = Obj::new(kind)
        .str("feed", &t.feed)
        .str("market", &t.market)
        .int("recv_ts", t.recv_ts)
        .opt_int("exch_ts", t.exch_ts);
    let o = match &t.kind {
        TickKind::Trade(tr) => o
            .str("trade_id", &tr.trade_id)
            .int("price", tr.price.0)
            .int("size", tr.size.0)
            .opt_str("taker_side", tr.taker_side.map(side))
            .opt_bool("block", tr.block)
            .flag("backfill", tr.backfill),
        TickKind::Quote(q) => o
            .opt_int("last", q.last.map(|p| p.0))
            .opt_int("bid", q.bid.map(|p| p.0))
            .opt_int("ask", q.ask.map(|p| p.0))
            .opt_int("bid_size", q.bid_size.map(|s| s.0))
            .opt_int("ask_size", q.ask_size.map(|s| s.0))
            .opt_int("last_size", q.last_size.map(|s| s.0))
            .opt_int("volume", q.volume.map(|s| s.0))
            .opt_int("open_interest", q.open_interest.map(|s| s.0))
            .opt_int("dollar_volume", q.dollar_volume)
            .opt_int("dollar_open_interest", q.dollar_open_interest),
        TickKind::BookSnapshot(b) => book_levels(o, b),
        TickKind::BookDelta(d) => o.str("side", side(d.side)).int("price", d.price.0).int("delta", d.delta.0),
        TickKind::Lifecycle(l) => {
            let scope = match l.scope {
                LifecycleScope::Market => "market",
                LifecycleScope::Event => "event",
            };
            let o = o.str("scope", scope).str("event", &l.event);
            // The detail is the exchange's JSON as received; anything else goes as a string.
            if serde_json::from_str::<serde::de::IgnoredAny>(&l.detail).is_ok() {
                o.raw("detail", &l.detail)
            } else {
                o.str("detail", &l.detail)
            }
        }
        TickKind::Market(m) => market_info(o, m),
        TickKind::Feed(e) => feed_event(o.int("conn", i64::from(t.conn)), e),
    };
    if state { o.bool("state", true).finish() } else { o.finish() }
}

/// A `book` frame for a book tickd holds (state, not a live snapshot).
pub(crate) fn book_state(
    feed: &str,
    market: &str,
    recv_ts: i64,
    exch_ts: Option<i64>,
    book: &BookSnapshot,
    stale: bool,
) -> String {
    let o = Obj::new("book")
        .str("feed", feed)
        .str("market", market)
        .int("recv_ts", recv_ts)
        .opt_int("exch_ts", exch_ts);
    let o = book_levels(o, book).bool("state", true);
    if stale { o.bool("stale", true).finish() } else { o.finish() }
}

fn book_levels(mut o: Obj, b: &BookSnapshot) -> Obj {
    for (key, levels) in [("yes", &b.yes), ("no", &b.no)] {
        o.key(key);
        o.buf.push('[');
        for (i, (p, s)) in levels.iter().enumerate() {
            if i > 0 {
                o.buf.push(',');
            }
            let _ = write!(o.buf, "[{},{}]", p.0, s.0);
        }
        o.buf.push(']');
    }
    o
}

fn feed_event(o: Obj, e: &FeedEvent) -> Obj {
    match e {
        FeedEvent::Connecting { attempt } => {
            o.str("event", "connecting").uint("attempt", u64::from(*attempt))
        }
        FeedEvent::Connected => o.str("event", "connected"),
        FeedEvent::Subscribed { channel, sid } => {
            o.str("event", "subscribed").str("channel", channel).uint("sid", *sid)
        }
        FeedEvent::Live => o.str("event", "live"),
        FeedEvent::Disconnected { reason } => o.str("event", "disconnected").str("reason", reason),
        FeedEvent::BackingOff { failures, delay_ms } => {
            o.str("event", "backing_off").uint("failures", u64::from(*failures)).uint("delay_ms", *delay_ms)
        }
        FeedEvent::Gap { sid, expected, got } => {
            o.str("event", "gap").uint("sid", *sid).uint("expected", *expected).uint("got", *got)
        }
        FeedEvent::Stale { reason } => o.str("event", "stale").str("reason", reason),
        FeedEvent::Resynced { sid } => o.str("event", "resynced").uint("sid", *sid),
        FeedEvent::MarketFrozen {
            quiet_ms,
            book_differs,
            missed_trades,
            checks,
            last_ticker_us,
            last_trade_us,
            last_book_us,
            backfill_from_us,
            backfill_to_us,
        } => o
            .str("event", "market_frozen")
            .uint("quiet_ms", *quiet_ms)
            .bool("book_differs", *book_differs)
            .uint("missed_trades", *missed_trades)
            .uint("checks", u64::from(*checks))
            .opt_int("last_ticker_us", *last_ticker_us)
            .opt_int("last_trade_us", *last_trade_us)
            .opt_int("last_book_us", *last_book_us)
            .int("backfill_from_us", *backfill_from_us)
            .int("backfill_to_us", *backfill_to_us),
        FeedEvent::Alert { kind, message } => {
            o.str("event", "alert").str("kind", kind).str("message", message)
        }
        FeedEvent::GivenUp { reason } => o.str("event", "given_up").str("reason", reason),
        FeedEvent::Rejected { reason, error, bytes, text, unkept } => o
            .str("event", "rejected")
            .str("reason", reason)
            .str("error", error)
            .uint("bytes", *bytes)
            .str("text", text)
            .uint("unkept", *unkept),
        FeedEvent::Backfill(b) => {
            let o = o
                .str("event", "backfill")
                .str("cause", &b.cause)
                .int("from_us", b.from_us)
                .int("to_us", b.to_us)
                .uint("markets", b.markets.len() as u64)
                .uint("fetched", b.fetched)
                .uint("found", b.found)
                .uint("new", b.new)
                .bool("complete", b.complete)
                .uint("attempt", u64::from(b.attempt));
            let mut o = match &b.error {
                Some(error) => o.str("error", error),
                None => o,
            };
            // What the ledger keeps of the window, so that a recorder reading the frame back
            // stores the same row.
            o.key("market_names");
            o.buf.push('[');
            for (i, market) in b.markets.iter().enumerate() {
                if i > 0 {
                    o.buf.push(',');
                }
                push_str(&mut o.buf, market);
            }
            o.buf.push(']');
            let opt_uint = |o: Obj, key: &str, v: Option<u64>| match v {
                Some(v) => o.uint(key, v),
                None => o.raw(key, "null"),
            };
            let o = opt_uint(o, "sid", b.sid);
            let o = opt_uint(o, "expected", b.expected);
            let o = opt_uint(o, "got", b.got);
            o.opt_int("retry_at_us", b.retry_at_us)
        }
    }
}

/// An `error` frame.
pub(crate) fn error(id: Option<&serde_json::Value>, code: &str, message: &str) -> String {
    let o = Obj::new("error");
    let o = match id {
        Some(_) => o.id(id),
        None => o.raw("id", "null"),
    };
    o.str("code", code).str("message", message).finish()
}

/// A `market` frame's fields: what tickd knows of the market (`null` for what the exchange
/// did not say) and whether the feed follows it (`null`: unchanged).
fn market_info(o: Obj, m: &MarketInfo) -> Obj {
    let opt_str = |o: Obj, key: &str, v: &Option<String>| match v {
        Some(v) => o.str(key, v),
        None => o.raw(key, "null"),
    };
    let o = opt_str(o, "event", &m.event);
    let o = opt_str(o, "series", &m.series);
    let o = opt_str(o, "title", &m.title);
    let o = opt_str(o, "status", &m.status);
    let o = o.opt_int("open_ms", m.open_ms).opt_int("close_ms", m.close_ms);
    match m.followed {
        Some(f) => o.bool("followed", f),
        None => o.raw("followed", "null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::{BookDelta, Price, Qty, Trade};

    fn tick(kind: TickKind) -> Tick {
        Tick { feed: "sim".into(), conn: 1, market: "M\"1".into(), exch_ts: Some(5), recv_ts: 7, kind }
    }

    fn json(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn frames_are_valid_json_with_exact_integers() {
        let t = tick(TickKind::Trade(Trade {
            trade_id: "t-1".into(),
            price: Price(4800),
            size: Qty(30000),
            taker_side: Some(Side::No),
            block: None,
            backfill: false,
        }));
        let v = json(&super::tick(&t, false));
        assert_eq!(v["type"], "trade");
        assert_eq!(v["market"], "M\"1");
        assert_eq!(v["price"], 4800);
        assert_eq!(v["size"], 30000);
        assert_eq!(v["taker_side"], "no");
        assert_eq!(v["block"], serde_json::Value::Null, "not given: null, never false");
        assert!(v.get("state").is_none());

        // A quote without sizes says so: null, never a made-up zero.
        let q = tick(TickKind::Quote(crate::tick::Quote {
            bid: Some(Price(6400)),
            volume: Some(Qty(100_000)),
            ..Default::default()
        }));
        let v = json(&super::tick(&q, false));
        assert_eq!((v["bid"].as_i64(), v["volume"].as_i64()), (Some(6400), Some(100_000)));
        for key in ["last", "ask", "bid_size", "ask_size", "last_size", "open_interest", "dollar_volume"] {
            assert_eq!(v[key], serde_json::Value::Null, "{key}");
        }

        let d = tick(TickKind::BookDelta(BookDelta { side: Side::Yes, price: Price(100), delta: Qty(-5) }));
        let v = json(&super::tick(&d, false));
        assert_eq!((v["type"].as_str(), v["delta"].as_i64()), (Some("delta"), Some(-5)));

        let b = BookSnapshot { yes: vec![(Price(100), Qty(2))], no: vec![] };
        let v = json(&book_state("sim", "M", 1, None, &b, true));
        assert_eq!(v["yes"], serde_json::json!([[100, 2]]));
        assert_eq!((v["state"].as_bool(), v["stale"].as_bool()), (Some(true), Some(true)));

        let e = tick(TickKind::Feed(FeedEvent::Disconnected { reason: "line\nbreak\u{1}".into() }));
        let v = json(&super::tick(&e, false));
        assert_eq!(v["reason"], "line\nbreak\u{1}");
        assert_eq!(v["conn"], 1);

        let v = json(&error(Some(&serde_json::json!("a")), "invalid_request", "x"));
        assert_eq!((v["id"].as_str(), v["code"].as_str()), (Some("a"), Some("invalid_request")));
    }
}
