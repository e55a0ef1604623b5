//! Server frames rendered as Kalshi sends them (protocol digest §4–§5).
//!
//! Written by hand with `write!` into a `String` rather than through `serde_json`: the simulator
//! must sustain 100,000 frames a second, and it must stay an independent implementation of the
//! wire format so that the client parser is checked against it. Every string placed in a frame is
//! either produced here (nothing to escape) or a market or event ticker, which goes through
//! [`Esc`]: tickers are plain ASCII in practice, but a client must cope with any, so the
//! simulator serves them too. Prices are rendered with four decimals, sizes with two.

use std::fmt::Write as _;

use super::exchange::{MarketRef, TickerState, TradeUpdate};
use crate::tick::{BookSnapshot, Price, Qty, Rfc3339Millis, Side};

/// Per-frame envelope options.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Envelope {
    /// Top-level `sending_ts_ms` to add to data frames.
    pub sending_ts: Option<i64>,
    /// Add a field no client knows (clients must ignore unknown fields).
    pub extra_field: bool,
}

/// A string as the inside of a JSON string literal: `"`, `\` and control characters escaped.
/// Writes the string as is when nothing needs escaping (every ordinary ticker).
pub(crate) struct Esc<'a>(pub &'a str);

impl std::fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = |c: char| c != '"' && c != '\\' && !c.is_control();
        if self.0.chars().all(plain) {
            return f.write_str(self.0);
        }
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

fn side_name(s: Side) -> &'static str {
    match s {
        Side::Yes => "yes",
        Side::No => "no",
    }
}

/// Appends `,"sending_ts_ms":N` when configured, then closes the top-level object.
fn close(out: &mut String, env: Envelope) {
    if let Some(ts) = env.sending_ts {
        let _ = write!(out, r#","sending_ts_ms":{ts}"#);
    }
    if env.extra_field {
        out.push_str(r#","sim_future_field":{"added":"later"}"#);
    }
    out.push('}');
}

/// `"id":N,` when the command had a usable id (0 means none).
fn id_field(out: &mut String, id: Option<u64>) {
    if let Some(id) = id.filter(|i| *i != 0) {
        let _ = write!(out, r#""id":{id},"#);
    }
}

/// `{"id":1,"type":"subscribed","msg":{"channel":"ticker","sid":2}}`
pub(crate) fn subscribed(id: Option<u64>, channel: &str, sid: u64) -> String {
    let mut s = String::with_capacity(80);
    s.push('{');
    id_field(&mut s, id);
    let _ = write!(s, r#""type":"subscribed","msg":{{"channel":"{channel}","sid":{sid}}}}}"#);
    s
}

/// `{"id":1,"type":"error","msg":{"code":7,"msg":"Unknown subscription ID"}}`, optionally scoped
/// to a sid (with its seq) and naming markets.
pub(crate) fn error(id: Option<u64>, sid: Option<(u64, Option<u64>)>, code: u32, markets: &[&str]) -> String {
    let mut s = String::with_capacity(96);
    s.push('{');
    id_field(&mut s, id);
    if let Some((sid, seq)) = sid {
        let _ = write!(s, r#""sid":{sid},"#);
        if let Some(seq) = seq {
            let _ = write!(s, r#""seq":{seq},"#);
        }
    }
    let _ = write!(s, r#""type":"error","msg":{{"code":{code},"msg":"{}""#, error_text(code));
    if let [one] = markets {
        let _ = write!(s, r#","market_ticker":"{}""#, Esc(one));
    }
    if !markets.is_empty() {
        s.push_str(r#","market_tickers":"#);
        string_array(&mut s, markets.iter().copied());
    }
    s.push_str("}}");
    s
}

/// The error table's `msg` text for a code.
pub(crate) fn error_text(code: u32) -> &'static str {
    match code {
        1 => "Unable to process message",
        2 => "Params required",
        3 => "Channels required",
        4 => "Subscription IDs required",
        5 => "Unknown command",
        6 => "Already subscribed",
        7 => "Unknown subscription ID",
        8 => "Unknown channel name",
        9 => "Authentication required",
        10 => "Channel error",
        11 => "Invalid parameter",
        12 => "Exactly one subscription ID is required",
        13 => "Unsupported action",
        14 => "Market Ticker required",
        15 => "Action required",
        16 => "Market not found",
        17 => "Internal error",
        18 => "Command timeout",
        19 => "shard_factor must be > 0",
        20 => "shard_factor is required when shard_key is set",
        21 => "shard_key must be >= 0 and < shard_factor",
        22 => "shard_factor must be <= 100",
        25 => "Subscription buffer overflow",
        26 => "Subscription market limit exceeded",
        27 => "Too many requests",
        _ => "Error",
    }
}

fn string_array<'a>(out: &mut String, items: impl Iterator<Item = &'a str>) {
    out.push('[');
    for (i, m) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, r#""{}""#, Esc(m));
    }
    out.push(']');
}

/// `{"id":102,"sid":2,"seq":7,"type":"unsubscribed"}`
pub(crate) fn unsubscribed(id: Option<u64>, sid: u64, seq: u64) -> String {
    let mut s = String::with_capacity(64);
    s.push('{');
    id_field(&mut s, id);
    let _ = write!(s, r#""sid":{sid},"seq":{seq},"type":"unsubscribed"}}"#);
    s
}

/// The `update_subscription` ack; `markets` is the full list after the change, `None` when the
/// subscription asked for `skip_ticker_ack`.
pub(crate) fn ok_update(id: Option<u64>, sid: u64, seq: u64, markets: Option<&[&str]>) -> String {
    let mut s = String::with_capacity(96);
    s.push('{');
    id_field(&mut s, id);
    let _ = write!(s, r#""sid":{sid},"seq":{seq},"type":"ok""#);
    if let Some(m) = markets {
        s.push_str(r#","msg":{"market_tickers":"#);
        string_array(&mut s, m.iter().copied());
        s.push('}');
    }
    s.push('}');
    s
}

/// The `list_subscriptions` reply: `ok` with an array `msg`.
pub(crate) fn ok_list(id: Option<u64>, subs: &[(&str, u64)]) -> String {
    let mut s = String::with_capacity(64 + 40 * subs.len());
    s.push('{');
    id_field(&mut s, id);
    s.push_str(r#""type":"ok","msg":["#);
    for (i, (channel, sid)) in subs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, r#"{{"channel":"{channel}","sid":{sid}}}"#);
    }
    s.push_str("]}");
    s
}

/// A NO level's price as rendered: its own contract's price, or `1 - p` on the YES scale.
fn no_price(p: Price, use_yes_price: bool) -> Price {
    if use_yes_price { p.complement() } else { p }
}

/// `orderbook_snapshot`; `id` only when replying to `get_snapshot`. Empty sides are omitted and
/// each side is ascending by the price as rendered.
#[allow(clippy::too_many_arguments)]
pub(crate) fn snapshot(
    id: Option<u64>,
    sid: u64,
    seq: u64,
    market: &MarketRef,
    book: &BookSnapshot,
    use_yes_price: bool,
    env: Envelope,
) -> String {
    let mut s = String::with_capacity(160 + 24 * (book.yes.len() + book.no.len()));
    s.push('{');
    id_field(&mut s, id);
    let _ = write!(
        s,
        r#""type":"orderbook_snapshot","sid":{sid},"seq":{seq},"msg":{{"market_ticker":"{}","market_id":"{}""#,
        Esc(&market.ticker),
        market.id
    );
    let level = |s: &mut String, i: usize, p: Price, q: Qty| {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, r#"["{p}","{q}"]"#);
    };
    if !book.yes.is_empty() {
        s.push_str(r#","yes_dollars_fp":["#);
        for (i, (p, q)) in book.yes.iter().enumerate() {
            level(&mut s, i, *p, *q);
        }
        s.push(']');
    }
    if !book.no.is_empty() {
        s.push_str(r#","no_dollars_fp":["#);
        if use_yes_price {
            // 1 - p reverses the order; keep the rendered prices ascending.
            for (i, (p, q)) in book.no.iter().rev().enumerate() {
                level(&mut s, i, no_price(*p, true), *q);
            }
        } else {
            for (i, (p, q)) in book.no.iter().enumerate() {
                level(&mut s, i, *p, *q);
            }
        }
        s.push(']');
    }
    s.push('}');
    close(&mut s, env);
    s
}

/// `orderbook_delta`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn delta(
    sid: u64,
    seq: u64,
    market: &MarketRef,
    side: Side,
    price: Price,
    delta: Qty,
    ts_ms: i64,
    use_yes_price: bool,
    env: Envelope,
) -> String {
    let price = if side == Side::No { no_price(price, use_yes_price) } else { price };
    let mut s = String::with_capacity(260);
    let _ = write!(
        s,
        concat!(
            r#"{{"type":"orderbook_delta","sid":{},"seq":{},"msg":{{"market_ticker":"{}","market_id":"{}","#,
            r#""price_dollars":"{}","delta_fp":"{}","side":"{}","ts":"{}","ts_ms":{}}}"#
        ),
        sid,
        seq,
        Esc(&market.ticker),
        market.id,
        price,
        delta,
        side_name(side),
        Rfc3339Millis(ts_ms),
        ts_ms
    );
    close(&mut s, env);
    s
}

/// `trade`, with `seq` when the server runs the newest spec.
pub(crate) fn trade(
    sid: u64,
    seq: Option<u64>,
    market: &MarketRef,
    t: &TradeUpdate,
    env: Envelope,
) -> String {
    let mut s = String::with_capacity(360);
    let _ = write!(s, r#"{{"type":"trade","sid":{sid},"#);
    if let Some(seq) = seq {
        let _ = write!(s, r#""seq":{seq},"#);
    }
    let side = side_name(t.taker);
    let book_side = match t.taker {
        Side::Yes => "bid",
        Side::No => "ask",
    };
    let _ = write!(
        s,
        concat!(
            r#""msg":{{"trade_id":"{}","market_ticker":"{}","yes_price_dollars":"{}","#,
            r#""no_price_dollars":"{}","count_fp":"{}","taker_side":"{}","taker_outcome_side":"{}","#,
            r#""taker_book_side":"{}","is_block_trade":{},"ts":{},"ts_ms":{}}}"#
        ),
        t.trade_id,
        Esc(&market.ticker),
        t.yes_price,
        t.yes_price.complement(),
        t.count,
        side,
        side,
        book_side,
        t.block,
        t.ts_ms.div_euclid(1000),
        t.ts_ms
    );
    close(&mut s, env);
    s
}

/// `ticker` (no seq), all fifteen fields.
pub(crate) fn ticker(sid: u64, market: &MarketRef, t: &TickerState, env: Envelope) -> String {
    let mut s = String::with_capacity(480);
    let _ = write!(
        s,
        concat!(
            r#"{{"type":"ticker","sid":{},"msg":{{"market_id":"{}","market_ticker":"{}","#,
            r#""price_dollars":"{}","yes_bid_dollars":"{}","yes_ask_dollars":"{}","#,
            r#""volume_fp":"{}","open_interest_fp":"{}","dollar_volume":{},"dollar_open_interest":{},"#,
            r#""yes_bid_size_fp":"{}","yes_ask_size_fp":"{}","last_trade_size_fp":"{}","#,
            r#""ts":{},"ts_ms":{},"time":"{}"}}"#
        ),
        sid,
        market.id,
        Esc(&market.ticker),
        t.last,
        t.yes_bid,
        t.yes_ask,
        t.volume,
        t.open_interest,
        t.dollar_volume,
        t.dollar_open_interest,
        t.yes_bid_size,
        t.yes_ask_size,
        t.last_size,
        t.ts_ms.div_euclid(1000),
        t.ts_ms,
        Rfc3339Millis(t.ts_ms)
    );
    close(&mut s, env);
    s
}

/// A lifecycle-channel frame around a pre-rendered `msg` object.
pub(crate) fn lifecycle(sid: u64, seq: u64, msg_type: &str, msg: &str, env: Envelope) -> String {
    let mut s = String::with_capacity(64 + msg.len());
    let _ = write!(s, r#"{{"type":"{msg_type}","sid":{sid},"seq":{seq},"msg":{msg}"#);
    close(&mut s, env);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_valid_json() {
        let m = MarketRef { ticker: "A-B".into(), id: "x".into() };
        let env = Envelope { sending_ts: Some(5), extra_field: false };
        let book = BookSnapshot { yes: vec![(Price(100), Qty(200))], no: vec![(Price(300), Qty(1))] };
        for f in [
            subscribed(Some(1), "ticker", 2),
            error(None, Some((1, Some(2))), 25, &["A", "B"]),
            error(Some(3), None, 7, &[]),
            unsubscribed(Some(3), 1, 2),
            ok_update(Some(4), 1, 2, Some(&["A"])),
            ok_update(Some(4), 1, 2, None),
            ok_list(Some(5), &[("ticker", 1), ("trade", 2)]),
            snapshot(None, 1, 1, &m, &book, true, env),
            snapshot(Some(9), 1, 1, &m, &BookSnapshot::default(), false, env),
            delta(1, 2, &m, Side::No, Price(300), Qty(-5), 0, true, env),
            lifecycle(1, 2, "event_lifecycle", r#"{"a":1}"#, env),
        ] {
            assert!(serde_json::from_str::<serde_json::Value>(&f).is_ok(), "{f}");
        }
    }

    #[test]
    fn a_ticker_that_needs_escaping_reads_back_as_itself() {
        let ticker = "KX-ÜÑÎ'\"\\;--%_/€-1";
        let m = MarketRef { ticker: ticker.into(), id: "x".into() };
        let env = Envelope { sending_ts: None, extra_field: false };
        let trade = TradeUpdate {
            trade_id: "t".into(),
            yes_price: Price(4800),
            count: Qty(100),
            taker: Side::Yes,
            block: false,
            ts_ms: 0,
        };
        let frames = [
            snapshot(None, 1, 1, &m, &BookSnapshot::default(), true, env),
            delta(1, 2, &m, Side::Yes, Price(300), Qty(5), 0, true, env),
            self::trade(1, Some(3), &m, &trade, env),
            self::ticker(1, &m, &TickerState::default(), env),
            error(None, None, 11, &[ticker]),
        ];
        for f in frames {
            let v: serde_json::Value = serde_json::from_str(&f).unwrap_or_else(|e| panic!("{e}: {f}"));
            assert_eq!(v["msg"]["market_ticker"], ticker, "{f}");
        }
    }
}
