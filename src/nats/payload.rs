//! The payload of a tick on NATS: exactly the dashboard's live frame for it
//! (`docs/dashboard.md`, "Live frames"), one schema for both. [`encode`] writes it with the
//! dashboard's own writer; [`decode`] reads it back into the [`Tick`] a recorder stores.
//!
//! What a frame does not carry comes back as what the store does not keep either: the
//! connection index of market data (only `feed` frames carry `conn`; the store keys market
//! data on feed, market and receive time), so a decoded trade, quote, book, delta, lifecycle
//! or market tick has `conn` 0. Everything the store writes is in the frame, so a tick stored
//! from NATS makes the same rows as one stored by the daemon itself.

use serde_json::{Map, Value};

use crate::dashboard::frames;
use crate::tick::{
    Backfill, BookDelta, BookSnapshot, FeedEvent, Level, Lifecycle, LifecycleScope, MarketInfo, Name, Price,
    Qty, Quote, Side, Tick, TickKind, Trade,
};

/// `tick` as its live frame: the bytes published.
pub fn encode(tick: &Tick) -> String {
    frames::tick(tick, false)
}

/// Why a payload is not a tick tickd wrote.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// A field is missing or of the wrong type.
    #[error("`{0}` is missing or not what a tick frame holds there")]
    Field(&'static str),
    /// The `type` (or a feed frame's `event`) is none tickd writes.
    #[error("unknown {0} `{1}`")]
    Unknown(&'static str, String),
}

/// Reads a live frame back into its tick.
pub fn decode(payload: &[u8]) -> Result<Tick, DecodeError> {
    let value: Value = serde_json::from_slice(payload).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let Value::Object(o) = value else { return Err(DecodeError::NotJson("not an object".into())) };
    let f = Fields(&o);
    let kind_name = f.str("type")?;
    let kind = match kind_name {
        "trade" => TickKind::Trade(Trade {
            trade_id: f.str("trade_id")?.to_owned(),
            price: Price(f.int("price")?),
            size: Qty(f.int("size")?),
            taker_side: f.opt_side("taker_side")?,
            block: f.opt_bool("block")?,
            backfill: f.opt_bool("backfill")?.unwrap_or(false),
        }),
        "quote" => TickKind::Quote(Quote {
            last: f.opt_int("last")?.map(Price),
            bid: f.opt_int("bid")?.map(Price),
            ask: f.opt_int("ask")?.map(Price),
            bid_size: f.opt_int("bid_size")?.map(Qty),
            ask_size: f.opt_int("ask_size")?.map(Qty),
            last_size: f.opt_int("last_size")?.map(Qty),
            volume: f.opt_int("volume")?.map(Qty),
            open_interest: f.opt_int("open_interest")?.map(Qty),
            dollar_volume: f.opt_int("dollar_volume")?,
            dollar_open_interest: f.opt_int("dollar_open_interest")?,
        }),
        "book" => TickKind::BookSnapshot(BookSnapshot { yes: f.levels("yes")?, no: f.levels("no")? }),
        "delta" => TickKind::BookDelta(BookDelta {
            side: f.side("side")?,
            price: Price(f.int("price")?),
            delta: Qty(f.int("delta")?),
        }),
        "lifecycle" => TickKind::Lifecycle(Lifecycle {
            scope: match f.str("scope")? {
                "market" => LifecycleScope::Market,
                "event" => LifecycleScope::Event,
                other => return Err(DecodeError::Unknown("scope", other.to_owned())),
            },
            event: f.str("event")?.to_owned(),
            // The exchange's JSON, or the text it was when it was not JSON.
            detail: match o.get("detail") {
                Some(Value::String(text)) => text.clone(),
                Some(json) => json.to_string(),
                None => return Err(DecodeError::Field("detail")),
            },
        }),
        "market" => TickKind::Market(MarketInfo {
            event: f.opt_str("event")?,
            series: f.opt_str("series")?,
            title: f.opt_str("title")?,
            status: f.opt_str("status")?,
            open_ms: f.opt_int("open_ms")?,
            close_ms: f.opt_int("close_ms")?,
            followed: f.opt_bool("followed")?,
        }),
        "feed" => TickKind::Feed(feed_event(&f)?),
        other => return Err(DecodeError::Unknown("type", other.to_owned())),
    };
    let conn = match kind {
        TickKind::Feed(_) => u16::try_from(f.int("conn")?).map_err(|_| DecodeError::Field("conn"))?,
        _ => 0,
    };
    Ok(Tick {
        feed: Name::from(f.str("feed")?),
        conn,
        market: Name::from(f.str("market")?),
        exch_ts: f.opt_int("exch_ts")?,
        recv_ts: f.int("recv_ts")?,
        kind,
    })
}

fn feed_event(f: &Fields<'_>) -> Result<FeedEvent, DecodeError> {
    let u32_of = |key: &'static str| u32::try_from(f.uint(key)?).map_err(|_| DecodeError::Field(key));
    Ok(match f.str("event")? {
        "connecting" => FeedEvent::Connecting { attempt: u32_of("attempt")? },
        "connected" => FeedEvent::Connected,
        "subscribed" => FeedEvent::Subscribed { channel: f.str("channel")?.to_owned(), sid: f.uint("sid")? },
        "live" => FeedEvent::Live,
        "disconnected" => FeedEvent::Disconnected { reason: f.str("reason")?.to_owned() },
        "backing_off" => {
            FeedEvent::BackingOff { failures: u32_of("failures")?, delay_ms: f.uint("delay_ms")? }
        }
        "gap" => FeedEvent::Gap { sid: f.uint("sid")?, expected: f.uint("expected")?, got: f.uint("got")? },
        "stale" => FeedEvent::Stale { reason: f.str("reason")?.to_owned() },
        "resynced" => FeedEvent::Resynced { sid: f.uint("sid")? },
        "market_frozen" => FeedEvent::MarketFrozen {
            quiet_ms: f.uint("quiet_ms")?,
            book_differs: f.bool("book_differs")?,
            missed_trades: f.uint("missed_trades")?,
            checks: u32_of("checks")?,
            last_ticker_us: f.opt_int("last_ticker_us")?,
            last_trade_us: f.opt_int("last_trade_us")?,
            last_book_us: f.opt_int("last_book_us")?,
            backfill_from_us: f.int("backfill_from_us")?,
            backfill_to_us: f.int("backfill_to_us")?,
        },
        "alert" => {
            FeedEvent::Alert { kind: f.str("kind")?.to_owned(), message: f.str("message")?.to_owned() }
        }
        "given_up" => FeedEvent::GivenUp { reason: f.str("reason")?.to_owned() },
        "rejected" => FeedEvent::Rejected {
            reason: f.str("reason")?.to_owned(),
            error: f.str("error")?.to_owned(),
            bytes: f.uint("bytes")?,
            text: f.str("text")?.to_owned(),
            unkept: f.uint("unkept")?,
        },
        "backfill" => {
            let markets = match f.0.get("market_names") {
                Some(Value::Array(names)) => names
                    .iter()
                    .map(|n| n.as_str().map(str::to_owned).ok_or(DecodeError::Field("market_names")))
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(DecodeError::Field("market_names")),
            };
            FeedEvent::Backfill(Backfill {
                cause: f.str("cause")?.to_owned(),
                from_us: f.int("from_us")?,
                to_us: f.int("to_us")?,
                markets,
                fetched: f.uint("fetched")?,
                found: f.uint("found")?,
                new: f.uint("new")?,
                complete: f.bool("complete")?,
                attempt: u32_of("attempt")?,
                // Absent when complete.
                error: match f.0.get("error") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(f.str("error")?.to_owned()),
                },
                retry_at_us: f.opt_int("retry_at_us")?,
                sid: f.opt_uint("sid")?,
                expected: f.opt_uint("expected")?,
                got: f.opt_uint("got")?,
            })
        }
        other => return Err(DecodeError::Unknown("feed event", other.to_owned())),
    })
}

/// Typed reads of a frame's fields, each naming the field it could not read.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &'static str) -> Result<&Value, DecodeError> {
        self.0.get(key).ok_or(DecodeError::Field(key))
    }

    fn str(&self, key: &'static str) -> Result<&str, DecodeError> {
        self.get(key)?.as_str().ok_or(DecodeError::Field(key))
    }

    fn int(&self, key: &'static str) -> Result<i64, DecodeError> {
        self.get(key)?.as_i64().ok_or(DecodeError::Field(key))
    }

    fn uint(&self, key: &'static str) -> Result<u64, DecodeError> {
        self.get(key)?.as_u64().ok_or(DecodeError::Field(key))
    }

    fn bool(&self, key: &'static str) -> Result<bool, DecodeError> {
        self.get(key)?.as_bool().ok_or(DecodeError::Field(key))
    }

    /// `null` or absent: not given.
    fn opt(&self, key: &'static str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn opt_int(&self, key: &'static str) -> Result<Option<i64>, DecodeError> {
        self.opt(key).map(|v| v.as_i64().ok_or(DecodeError::Field(key))).transpose()
    }

    fn opt_uint(&self, key: &'static str) -> Result<Option<u64>, DecodeError> {
        self.opt(key).map(|v| v.as_u64().ok_or(DecodeError::Field(key))).transpose()
    }

    fn opt_bool(&self, key: &'static str) -> Result<Option<bool>, DecodeError> {
        self.opt(key).map(|v| v.as_bool().ok_or(DecodeError::Field(key))).transpose()
    }

    fn opt_str(&self, key: &'static str) -> Result<Option<String>, DecodeError> {
        self.opt(key).map(|v| v.as_str().map(str::to_owned).ok_or(DecodeError::Field(key))).transpose()
    }

    fn side(&self, key: &'static str) -> Result<Side, DecodeError> {
        match self.str(key)? {
            "yes" => Ok(Side::Yes),
            "no" => Ok(Side::No),
            _ => Err(DecodeError::Field(key)),
        }
    }

    fn opt_side(&self, key: &'static str) -> Result<Option<Side>, DecodeError> {
        match self.opt(key) {
            None => Ok(None),
            Some(_) => self.side(key).map(Some),
        }
    }

    fn levels(&self, key: &'static str) -> Result<Vec<Level>, DecodeError> {
        let Value::Array(levels) = self.get(key)? else { return Err(DecodeError::Field(key)) };
        levels
            .iter()
            .map(|level| match level.as_array().map(Vec::as_slice) {
                Some([p, s]) => match (p.as_i64(), s.as_i64()) {
                    (Some(p), Some(s)) => Ok((Price(p), Qty(s))),
                    _ => Err(DecodeError::Field(key)),
                },
                _ => Err(DecodeError::Field(key)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(conn: u16, market: &str, kind: TickKind) -> Tick {
        Tick { feed: "kalshi".into(), conn, market: market.into(), exch_ts: Some(1_700), recv_ts: 42, kind }
    }

    /// One tick of every kind and every feed event, with every optional field given and not.
    fn every_kind() -> Vec<Tick> {
        let trade = |backfill, taker_side, block| Trade {
            trade_id: "t-\"1\"".into(),
            price: Price(4800),
            size: Qty(30_000),
            taker_side,
            block,
            backfill,
        };
        let mut ticks = vec![
            tick(0, "M.1 *>", TickKind::Trade(trade(false, Some(Side::No), None))),
            tick(0, "M", TickKind::Trade(trade(true, None, Some(true)))),
            tick(0, "M", TickKind::Quote(Quote::default())),
            tick(
                0,
                "M",
                TickKind::Quote(Quote {
                    last: Some(Price(1)),
                    bid: Some(Price(2)),
                    ask: Some(Price(3)),
                    bid_size: Some(Qty(4)),
                    ask_size: Some(Qty(5)),
                    last_size: Some(Qty(6)),
                    volume: Some(Qty(7)),
                    open_interest: Some(Qty(8)),
                    dollar_volume: Some(9),
                    dollar_open_interest: Some(10),
                }),
            ),
            tick(
                0,
                "M",
                TickKind::BookSnapshot(BookSnapshot {
                    yes: vec![(Price(100), Qty(2)), (Price(200), Qty(3))],
                    no: vec![],
                }),
            ),
            tick(
                0,
                "M",
                TickKind::BookDelta(BookDelta { side: Side::Yes, price: Price(100), delta: Qty(-5) }),
            ),
            tick(
                0,
                "EV",
                TickKind::Lifecycle(Lifecycle {
                    scope: LifecycleScope::Event,
                    event: "created".into(),
                    detail: r#"{"a":1,"b":"x"}"#.into(),
                }),
            ),
            tick(
                0,
                "M",
                TickKind::Lifecycle(Lifecycle {
                    scope: LifecycleScope::Market,
                    event: "odd".into(),
                    detail: "not json".into(),
                }),
            ),
            tick(0, "M", TickKind::Market(MarketInfo::default())),
            tick(
                0,
                "M",
                TickKind::Market(MarketInfo {
                    event: Some("EV".into()),
                    series: Some("S".into()),
                    title: Some("T".into()),
                    status: Some("active".into()),
                    open_ms: Some(1),
                    close_ms: Some(2),
                    followed: Some(false),
                }),
            ),
        ];
        let events = [
            FeedEvent::Connecting { attempt: 3 },
            FeedEvent::Connected,
            FeedEvent::Subscribed { channel: "trade".into(), sid: 9 },
            FeedEvent::Live,
            FeedEvent::Disconnected { reason: "bye\n".into() },
            FeedEvent::BackingOff { failures: 2, delay_ms: 500 },
            FeedEvent::Gap { sid: 1, expected: 5, got: 9 },
            FeedEvent::Stale { reason: "gap".into() },
            FeedEvent::Resynced { sid: 4 },
            FeedEvent::MarketFrozen {
                quiet_ms: 1,
                book_differs: true,
                missed_trades: 2,
                checks: 2,
                last_ticker_us: None,
                last_trade_us: Some(5),
                last_book_us: Some(6),
                backfill_from_us: 7,
                backfill_to_us: 8,
            },
            FeedEvent::Rejected {
                reason: "malformed_json".into(),
                error: "eof".into(),
                bytes: 3,
                text: "{\"".into(),
                unkept: 1,
            },
            FeedEvent::Alert { kind: "max_reconnects".into(), message: "m".into() },
            FeedEvent::GivenUp { reason: "r".into() },
            FeedEvent::Backfill(Backfill {
                cause: "seq_gap".into(),
                from_us: 1,
                to_us: 2,
                markets: vec!["A".into(), "B\"".into()],
                fetched: 1,
                found: 5,
                new: 2,
                complete: false,
                attempt: 1,
                error: Some("HTTP 503".into()),
                retry_at_us: Some(9),
                sid: Some(3),
                expected: Some(4),
                got: Some(6),
            }),
            FeedEvent::Backfill(Backfill { cause: "start".into(), complete: true, ..Backfill::default() }),
        ];
        ticks.extend(events.into_iter().map(|e| tick(7, "", TickKind::Feed(e))));
        ticks
    }

    #[test]
    fn every_tick_reads_back_from_its_frame_as_it_was() {
        for t in every_kind() {
            let frame = encode(&t);
            let back = decode(frame.as_bytes()).unwrap_or_else(|e| panic!("{frame}: {e}"));
            assert_eq!(back, t, "{frame}");
            assert_eq!(encode(&back), frame, "the frame of the decoded tick is the same frame");
        }
    }

    #[test]
    fn the_connection_of_market_data_is_not_in_the_frame() {
        let t =
            tick(3, "M", TickKind::BookDelta(BookDelta { side: Side::No, price: Price(1), delta: Qty(1) }));
        assert_eq!(decode(encode(&t).as_bytes()).expect("decodes").conn, 0);
    }

    #[test]
    fn what_tickd_did_not_write_is_refused_with_what_is_wrong() {
        let cases: [(&str, &str); 6] = [
            ("hello", "not a JSON object"),
            ("[1]", "not a JSON object"),
            (r#"{"type":"trade","feed":"f","market":"M","recv_ts":1,"exch_ts":null}"#, "`trade_id`"),
            (r#"{"type":"order","feed":"f","market":"M","recv_ts":1}"#, "unknown type `order`"),
            (
                r#"{"type":"delta","feed":"f","market":"M","recv_ts":1,"exch_ts":null,"side":"up","price":1,"delta":1}"#,
                "`side`",
            ),
            (
                r#"{"type":"feed","feed":"f","market":"","recv_ts":1,"conn":0,"event":"boom"}"#,
                "unknown feed event",
            ),
        ];
        for (payload, says) in cases {
            let e = decode(payload.as_bytes()).expect_err(payload).to_string();
            assert!(e.contains(says), "{payload}: {e}");
        }
    }
}
