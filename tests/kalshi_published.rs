//! What tickd makes of every Kalshi frame others published.
//!
//! `tests/fixtures/kalshi/published.jsonl` holds 51 WebSocket messages copied from public
//! repositories (Kalshi's spec examples of two protocol eras, client fixtures, a logged live
//! frame), each with its source. The table below states, line by line, what tickd makes of
//! each: the normalized values (prices in $0.0001, sizes in 0.01 contract, times in ms, `None`
//! where the frame does not say), "unknown type, counted", or the reason it is rejected. Every
//! line must have exactly one row.

use std::path::Path;

use serde_json::Value;
use tickd::kalshi::wire::{Frame, FrameBuf, Parser, WireError, WireStats};
use tickd::tick::{Price, Qty, Quote, Side};

/// What tickd makes of one published frame.
enum Expect {
    /// These exact values.
    Frame(Frame<'static>),
    /// A market lifecycle tick: its type, sid, seq, market and event; the detail is the `msg`
    /// object, checked against the frame.
    Lifecycle(&'static str, u64, Option<u64>, &'static str, &'static str),
    /// An event lifecycle tick: its type, sid, seq and event ticker; the detail as above.
    Event(&'static str, u64, Option<u64>, &'static str),
    /// A type tickd does not read (private channels, feeds, RFQs): counted by type, ignored;
    /// its sid and seq as read leniently.
    Unknown(&'static str, Option<u64>, Option<u64>),
    /// Not usable: counted by reason, kept in the ledger with its text.
    Rejected(WireError),
}

use Expect::*;

fn p(units: i64) -> Price {
    Price(units)
}

fn q(units: i64) -> Qty {
    Qty(units)
}

/// The FED-23DEC-T3.00 ticker of Kalshi's spec: every value, as the docs' 3-decimal rendering
/// and the spec's 4-decimal one give the same numbers.
fn spec_ticker() -> Frame<'static> {
    Frame::Ticker {
        sid: 11,
        market: "FED-23DEC-T3.00",
        quote: Quote {
            last: Some(p(4800)),
            bid: Some(p(4500)),
            ask: Some(p(5300)),
            bid_size: Some(q(30_000)),
            ask_size: Some(q(15_000)),
            last_size: Some(q(2_500)),
            volume: Some(q(3_389_600)),
            open_interest: Some(q(2_042_200)),
            dollar_volume: Some(16948),
            dollar_open_interest: Some(10211),
        },
        ts_ms: Some(1_669_149_841_000),
    }
}

/// The spec's two-sided FED-23DEC-T3.00 book (both eras give the same levels).
fn spec_book() -> Frame<'static> {
    Frame::Snapshot {
        id: None,
        sid: 2,
        seq: Some(2),
        market: "FED-23DEC-T3.00",
        yes: vec![(p(800), q(30_000)), (p(2200), q(33_300))],
        no: vec![(p(5400), q(2_000)), (p(5600), q(14_600))],
        sending_ts_ms: None,
    }
}

fn error(id: u64, code: u32, msg: &'static str, market: Option<&'static str>) -> Expect {
    Frame(Frame::Error {
        id: Some(id),
        sid: None,
        seq: None,
        code: Some(code),
        msg: Some(msg),
        market_ticker: market,
    })
}

/// One row per line of `published.jsonl`, in order.
fn table() -> Vec<(usize, Expect)> {
    vec![
        // nautilus_trader fixtures.
        (
            1,
            Frame(Frame::Snapshot {
                id: None,
                sid: 1,
                seq: Some(1),
                market: "KXBTC-25MAR15-B100000",
                yes: vec![(p(3500), q(20_000)), (p(4200), q(1_300))],
                no: vec![(p(5400), q(40_000)), (p(5600), q(1_700))],
                sending_ts_ms: None,
            }),
        ),
        (
            // The only time is the RFC 3339 `ts` with microseconds: read to the millisecond.
            2,
            Frame(Frame::Delta {
                sid: 1,
                seq: Some(2),
                market: "KXBTC-25MAR15-B100000",
                side: Side::Yes,
                price: p(4200),
                delta: q(5_000),
                ts_ms: Some(1_740_853_613_361),
            }),
        ),
        (
            // Only the deprecated taker_side; no block flag: not given, not `false`.
            3,
            Frame(Frame::Trade {
                sid: 2,
                seq: Some(1),
                market: "KXBTC-25MAR15-B100000",
                trade_id: "d91bc706-ee49-470d-82d8-11418bda6fed",
                yes_price: p(3600),
                count: q(13_600),
                taker_side: Some(Side::No),
                block: None,
                ts_ms: Some(1_741_052_641_000),
            }),
        ),
        // Kalshi docs: 3-decimal dollars.
        (4, Frame(spec_ticker())),
        // kalshi-trade-rs: a live unsubscribed, consuming seq 707.
        (5, Frame(Frame::Unsubscribed { id: Some(2), sid: Some(2), seq: Some(707) })),
        // Code and message at the top level.
        (
            6,
            Frame(Frame::Error {
                id: Some(2),
                sid: None,
                seq: None,
                code: Some(9),
                msg: Some("Authentication required"),
                market_ticker: None,
            }),
        ),
        (
            // Two-decimal dollars and no size fields: sizes not given. Its `seq` is not read:
            // tickers are not sequenced.
            7,
            Frame(Frame::Ticker {
                sid: 123,
                market: "INXD-25JAN17-B5955",
                quote: Quote {
                    last: Some(p(6500)),
                    bid: Some(p(6400)),
                    ask: Some(p(6600)),
                    bid_size: None,
                    ask_size: None,
                    last_size: None,
                    volume: Some(q(100_000)),
                    open_interest: Some(q(50_000)),
                    dollar_volume: Some(65_000),
                    dollar_open_interest: Some(32_500),
                },
                ts_ms: Some(1_704_067_200_000),
            }),
        ),
        // kalshi-python-sdk fixtures: a ticker without a market cannot be used.
        (8, Rejected(WireError::Missing { msg_type: "ticker".into(), field: "market_ticker" })),
        (9, Unknown("multivariate_lookup", Some(17), None)),
        // Kalshi's spec, newest revision (fixed point only).
        (10, Frame(spec_book())),
        (
            11,
            Frame(Frame::Delta {
                sid: 2,
                seq: Some(3),
                market: "FED-23DEC-T3.00",
                side: Side::Yes,
                price: p(9600),
                delta: q(-5_400),
                ts_ms: Some(1_669_149_841_000),
            }),
        ),
        (12, Frame(spec_ticker())),
        (
            13,
            Frame(Frame::Trade {
                sid: 11,
                seq: Some(2),
                market: "HIGHNY-22DEC23-B53.5",
                trade_id: "d91bc706-ee49-470d-82d8-11418bda6fed",
                yes_price: p(3600),
                count: q(13_600),
                taker_side: Some(Side::No),
                block: Some(false),
                ts_ms: Some(1_669_149_841_000),
            }),
        ),
        (14, Unknown("fill", Some(13), None)),
        (15, Lifecycle("market_lifecycle_v2", 13, Some(3), "INXD-23SEP14-B4487", "created")),
        (
            16,
            Lifecycle(
                "market_lifecycle_v2",
                13,
                Some(4),
                "INXD-23SEP14-B4487",
                "price_level_structure_updated",
            ),
        ),
        (17, Lifecycle("market_lifecycle_v2", 13, Some(5), "KXBTC-25APR30-T0915-B95000", "metadata_updated")),
        (18, Lifecycle("market_lifecycle_v2", 13, Some(6), "KXBTC15M-26APR160100-00", "metadata_updated")),
        (19, Lifecycle("multivariate_market_lifecycle", 14, Some(7), "KXMVE-TEST-EVENT-M1", "created")),
        (20, Event("event_lifecycle", 5, Some(8), "KXQUICKSETTLE-26JAN25H2150")),
        (21, Event("event_fee_update", 5, Some(9), "KXBTCD-26MAY2018")),
        (22, Event("event_fee_update", 5, Some(10), "KXBTCD-26MAY2018")),
        (23, Unknown("market_position", Some(14), None)),
        (24, Unknown("order_group_updates", Some(21), Some(7))),
        (25, Unknown("cfbenchmarks_value_5hz", Some(1), Some(42))),
        (26, Unknown("pyth_value", Some(1), Some(42))),
        (27, error(123, 7, "Unknown subscription ID", None)),
        (28, error(127, 14, "Market Ticker required", None)),
        (
            29,
            Frame(Frame::Ok {
                id: Some(123),
                sid: Some(456),
                seq: Some(222),
                market_tickers: Some(vec!["MARKET-1", "MARKET-2", "MARKET-3"]),
            }),
        ),
        (30, Frame(Frame::Unsubscribed { id: Some(102), sid: Some(2), seq: Some(7) })),
        // kalshi-node's copy of the spec, hybrid era (integer cents, dollars and fixed point).
        (
            31,
            Frame(Frame::SubscriptionList {
                id: Some(3),
                subscriptions: vec![("orderbook_delta", 1), ("ticker", 2), ("fill", 3)],
            }),
        ),
        (32, error(124, 8, "Unknown channel name", None)),
        (33, error(125, 2, "Params required", None)),
        (34, error(126, 9, "Authentication required", None)),
        (35, error(127, 16, "Market not found", Some("INVALID-MARKET"))),
        // The same book three times over: read once, from the fixed-point ladders.
        (36, Frame(spec_book())),
        (
            // `price` 96, `price_dollars` "0.960": one price, $0.96; the only time is `ts`.
            37,
            Frame(Frame::Delta {
                sid: 2,
                seq: Some(3),
                market: "FED-23DEC-T3.00",
                side: Side::Yes,
                price: p(9600),
                delta: q(-5_400),
                ts_ms: Some(1_669_149_841_000),
            }),
        ),
        (
            // Hybrid ticker without sizes: the dollars and fp fields read, the cents and
            // integer volume beside them ignored; sizes not given.
            38,
            Frame(Frame::Ticker {
                sid: 11,
                market: "FED-23DEC-T3.00",
                quote: Quote {
                    last: Some(p(4800)),
                    bid: Some(p(4500)),
                    ask: Some(p(5300)),
                    bid_size: None,
                    ask_size: None,
                    last_size: None,
                    volume: Some(q(3_389_600)),
                    open_interest: Some(q(2_042_200)),
                    dollar_volume: Some(16948),
                    dollar_open_interest: Some(10211),
                },
                ts_ms: Some(1_669_149_841_000),
            }),
        ),
        (
            39,
            Frame(Frame::Trade {
                sid: 11,
                seq: None,
                market: "HIGHNY-22DEC23-B53.5",
                trade_id: "d91bc706-ee49-470d-82d8-11418bda6fed",
                yes_price: p(3600),
                count: q(13_600),
                taker_side: Some(Side::No),
                block: None,
                ts_ms: Some(1_669_149_841_000),
            }),
        ),
        (40, Unknown("fill", Some(13), None)),
        (41, Lifecycle("market_lifecycle_v2", 13, None, "INXD-23SEP14-B4487", "created")),
        (42, Event("event_lifecycle", 5, None, "KXQUICKSETTLE-26JAN25H2150")),
        (43, Unknown("multivariate_lookup", Some(13), None)),
        (44, Unknown("market_position", Some(14), None)),
        (45, Unknown("order_group_updates", Some(21), Some(7))),
        (46, Unknown("user_order", Some(22), None)),
        (47, Unknown("rfq_created", Some(15), None)),
        (48, Unknown("rfq_deleted", Some(15), None)),
        (49, Unknown("quote_created", Some(15), None)),
        (50, Unknown("quote_accepted", Some(15), None)),
        (51, Unknown("quote_executed", Some(15), None)),
    ]
}

/// Each line's `frame` exactly as published (key order and literals kept): the text after
/// `"frame": `, which the file always puts last.
fn published() -> Vec<(String, Value)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kalshi/published.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line).expect("each line is JSON");
            let at = line.find("\"frame\": ").expect("a frame") + "\"frame\": ".len();
            let raw = line[at..].trim_end().strip_suffix('}').expect("the frame closes the line").to_owned();
            let parsed: Value = serde_json::from_str(&raw).expect("the frame is JSON");
            assert_eq!(parsed, entry["frame"], "cut the frame out exactly: {raw}");
            (raw, entry)
        })
        .collect()
}

#[test]
fn every_published_frame_becomes_what_the_table_says() {
    let frames = published();
    let table = table();
    assert_eq!(frames.len(), 51, "the published sample");
    assert_eq!(
        table.iter().map(|(line, _)| *line).collect::<Vec<_>>(),
        (1..=frames.len()).collect::<Vec<_>>(),
        "one row per line, in order"
    );
    let mut parser = Parser::default();
    let (mut unknown, mut rejected) = (0, 0);
    for ((line, want), (raw, entry)) in table.into_iter().zip(&frames) {
        let source = entry["source"].as_str().unwrap_or_default();
        let mut buf = FrameBuf::from_text(raw.as_bytes());
        let mut notes = Vec::new();
        let got = parser.parse_buf(&mut buf, &mut notes);
        assert!(notes.is_empty(), "line {line} ({source}): nothing set aside: {notes:?}");
        let msg = &entry["frame"]["msg"];
        match (want, got) {
            (Frame(want), got) => assert_eq!(got, Ok(want), "line {line} ({source})"),
            (Lifecycle(want_type, want_sid, want_seq, want_market, want_event), got) => {
                let Ok(Frame::MarketLifecycle { msg_type, sid, seq, market, event_type, detail }) = got
                else {
                    panic!("line {line} ({source}): {got:?}");
                };
                assert_eq!(
                    (msg_type, sid, seq, market, event_type),
                    (want_type, want_sid, want_seq, want_market, want_event),
                    "line {line}"
                );
                let detail: Value = serde_json::from_str(&detail).expect("detail is JSON");
                assert_eq!(&detail, msg, "line {line}: the message kept whole");
            }
            (Event(want_type, want_sid, want_seq, want_event), got) => {
                let Ok(Frame::EventLifecycle { msg_type, sid, seq, event_ticker, detail }) = got else {
                    panic!("line {line} ({source}): {got:?}");
                };
                assert_eq!(
                    (msg_type, sid, seq, event_ticker),
                    (want_type, want_sid, want_seq, want_event),
                    "line {line}"
                );
                let detail: Value = serde_json::from_str(&detail).expect("detail is JSON");
                assert_eq!(&detail, msg, "line {line}: the message kept whole");
            }
            (Unknown(want_type, want_sid, want_seq), got) => {
                unknown += 1;
                assert_eq!(
                    got,
                    Ok(Frame::Unknown { msg_type: want_type, sid: want_sid, seq: want_seq }),
                    "line {line} ({source})"
                );
            }
            (Rejected(want), got) => {
                rejected += 1;
                assert_eq!(got, Err(want), "line {line} ({source})");
            }
        }
    }
    // Unknown types are counted; no known message carried a field tickd does not know or
    // could not read.
    assert_eq!(parser.stats, WireStats { unknown_types: unknown, unknown_fields: 0, invalid_fields: 0 });
    assert_eq!((unknown, rejected), (16, 1));
}

#[test]
fn hybrid_frames_give_the_same_values_as_their_fixed_point_twins() {
    // The same spec examples in both eras: the hybrid one carries each value up to three times.
    let frames = published();
    let pairs = [(10, 36), (11, 37), (13, 39)];
    let mut parser = Parser::default();
    for (newest, hybrid) in pairs {
        let mut a = FrameBuf::from_text(frames[newest - 1].0.as_bytes());
        let mut b = FrameBuf::from_text(frames[hybrid - 1].0.as_bytes());
        let (a, b) = (parser.parse_buf(&mut a, &mut Vec::new()), parser.parse_buf(&mut b, &mut Vec::new()));
        match (a, b) {
            (Ok(Frame::Snapshot { yes: y1, no: n1, .. }), Ok(Frame::Snapshot { yes: y2, no: n2, .. })) => {
                assert_eq!((y1, n1), (y2, n2));
            }
            (
                Ok(Frame::Delta { price: p1, delta: d1, .. }),
                Ok(Frame::Delta { price: p2, delta: d2, .. }),
            ) => {
                assert_eq!((p1, d1), (p2, d2));
            }
            (
                Ok(Frame::Trade { yes_price: p1, count: c1, .. }),
                Ok(Frame::Trade { yes_price: p2, count: c2, .. }),
            ) => assert_eq!((p1, c1), (p2, c2)),
            other => panic!("lines {newest} and {hybrid}: {other:?}"),
        }
    }
}
