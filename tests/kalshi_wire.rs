//! Kalshi wire parsing: tables of real-shaped payloads and the frames they must become.
//!
//! Each case keeps the raw JSON next to the expected [`Frame`], so a reader can check a case
//! against the protocol digest without running anything. Fixtures in `tests/fixtures/kalshi/`
//! are the same payloads as files, shared with the benchmark and the mutation sweep; what
//! tickd makes of every frame others published is in `tests/kalshi_published.rs`.

use std::path::{Path, PathBuf};

use tickd::kalshi::wire::{ErrorCode, Frame, FrameBuf, Note, NoteKind, Parser, WireError, WireStats};
use tickd::telemetry::metrics::REJECT_REASONS;
use tickd::tick::{Price, Qty, Quote, Side};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kalshi")
}

fn fixture(name: &str) -> String {
    let path = fixture_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    text.trim_end().to_owned()
}

/// Every `*.json` fixture, by file name.
fn all_fixtures() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixture_dir()).expect("fixture dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_name().expect("name").to_string_lossy().into_owned();
            out.push((name.clone(), fixture(&name)));
        }
    }
    out.sort();
    assert!(out.len() >= 15, "fixtures missing: {out:?}");
    out
}

fn delta_fields(seq: u64, price: i64, delta: i64, side: Side, ts_ms: Option<i64>) -> Frame<'static> {
    Frame::Delta {
        sid: 2,
        seq: Some(seq),
        market: "FED-23DEC-T3.00",
        side,
        price: Price(price),
        delta: Qty(delta),
        ts_ms,
    }
}

/// Parses `json` with a fresh parser and checks the frame and the tolerated-oddity counters.
#[track_caller]
fn check(name: &str, json: &str, want: Frame<'_>, want_stats: WireStats) {
    let mut parser = Parser::default();
    let mut buf = json.as_bytes().to_vec();
    let got = parser.parse(&mut buf);
    assert_eq!(got, Ok(want), "case {name}: {json}");
    assert_eq!(parser.stats, want_stats, "case {name}: stats");
}

#[track_caller]
fn check_err(name: &str, json: &str, want: WireError) {
    let mut parser = Parser::default();
    let mut buf = json.as_bytes().to_vec();
    assert_eq!(parser.parse(&mut buf), Err(want), "case {name}: {json}");
}

fn missing(msg_type: &str, field: &'static str) -> WireError {
    WireError::Missing { msg_type: msg_type.to_owned(), field }
}

fn wrong_type(msg_type: &str, field: &'static str) -> WireError {
    WireError::WrongType { msg_type: msg_type.to_owned(), field }
}

fn value(msg_type: &str, field: &'static str, value: &str) -> WireError {
    WireError::Value { msg_type: msg_type.to_owned(), field, value: value.to_owned() }
}

const CLEAN: WireStats = WireStats { unknown_types: 0, unknown_fields: 0, invalid_fields: 0 };

fn stats(unknown_types: u64, unknown_fields: u64, invalid_fields: u64) -> WireStats {
    WireStats { unknown_types, unknown_fields, invalid_fields }
}

/// Every field of the ticker fixture.
fn full_quote() -> Quote {
    Quote {
        last: Some(Price(4800)),
        bid: Some(Price(4500)),
        ask: Some(Price(5300)),
        bid_size: Some(Qty(30_000)),
        ask_size: Some(Qty(15_000)),
        last_size: Some(Qty(2_500)),
        volume: Some(Qty(3_389_600)),
        open_interest: Some(Qty(2_042_200)),
        dollar_volume: Some(16948),
        dollar_open_interest: Some(10211),
    }
}

#[test]
fn book_frames_parse_to_exact_integers() {
    let cases = vec![
        (
            "delta with 4-dp price, negative size, ts_ms",
            fixture("orderbook_delta.json"),
            delta_fields(3, 9600, -5400, Side::Yes, Some(1669149841000)),
        ),
        (
            "delta at $0.0001 for our own order, ts from sending_ts_ms",
            fixture("orderbook_delta_own_order.json"),
            delta_fields(4, 1, 1250, Side::No, Some(1669149841777)),
        ),
        (
            "delta at $0.9999 with a 3-dp price and no timestamp at all",
            r#"{"type":"orderbook_delta","sid":2,"seq":5,"msg":{"market_ticker":"FED-23DEC-T3.00","market_id":"x","price_dollars":"0.999","delta_fp":"1","side":"no"}}"#.to_owned(),
            delta_fields(5, 9990, 100, Side::No, None),
        ),
        (
            "delta at $0.9999",
            r#"{"type":"orderbook_delta","sid":2,"seq":6,"msg":{"market_ticker":"FED-23DEC-T3.00","price_dollars":"0.9999","delta_fp":"-0.01","side":"yes","ts_ms":7}}"#.to_owned(),
            delta_fields(6, 9999, -1, Side::Yes, Some(7)),
        ),
        (
            "delta whose only time is an RFC 3339 ts with microseconds",
            r#"{"type":"orderbook_delta","sid":2,"seq":7,"msg":{"market_ticker":"FED-23DEC-T3.00","price_dollars":"0.42","delta_fp":"50.00","side":"yes","ts":"2025-03-01T18:26:53.361842Z"}}"#.to_owned(),
            delta_fields(7, 4200, 5000, Side::Yes, Some(1_740_853_613_361)),
        ),
        (
            "twenty-level snapshot",
            fixture("orderbook_snapshot.json"),
            Frame::Snapshot {
                id: None,
                sid: 2,
                seq: Some(2),
                market: "FED-23DEC-T3.00",
                yes: vec![
                    (Price(100), Qty(150_000)),
                    (Price(300), Qty(21_000)),
                    (Price(500), Qty(7_550)),
                    (Price(800), Qty(30_000)),
                    (Price(1000), Qty(12_000)),
                    (Price(1200), Qty(4_400)),
                    (Price(1500), Qty(98_000)),
                    (Price(1800), Qty(1_200)),
                    (Price(2000), Qty(60_000)),
                    (Price(2200), Qty(33_300)),
                ],
                no: vec![
                    (Price(4400), Qty(1_800)),
                    (Price(4600), Qty(25_000)),
                    (Price(4800), Qty(9_000)),
                    (Price(5000), Qty(100_000)),
                    (Price(5100), Qty(500)),
                    (Price(5200), Qty(7_700)),
                    (Price(5300), Qty(41_000)),
                    (Price(5400), Qty(2_000)),
                    (Price(5500), Qty(6_200)),
                    (Price(5600), Qty(14_600)),
                ],
                sending_ts_ms: Some(1669149841123),
            },
        ),
        (
            "empty book: neither side key",
            fixture("orderbook_snapshot_empty.json"),
            Frame::Snapshot {
                id: None,
                sid: 1,
                seq: Some(1),
                market: "KXTEST-26JAN01-T1",
                yes: vec![],
                no: vec![],
                sending_ts_ms: None,
            },
        ),
        (
            "get_snapshot reply carries the command id; sub-cent and 3-dp levels",
            fixture("orderbook_snapshot_reply.json"),
            Frame::Snapshot {
                id: Some(127),
                sid: 456,
                seq: Some(230),
                market: "MARKET-1",
                yes: vec![(Price(1), Qty(1000)), (Price(4800), Qty(2500))],
                no: vec![(Price(9999), Qty(350))],
                sending_ts_ms: None,
            },
        ),
        (
            "one side empty, the other null",
            r#"{"type":"orderbook_snapshot","sid":3,"seq":1,"msg":{"market_ticker":"M","yes_dollars_fp":[],"no_dollars_fp":null}}"#.to_owned(),
            Frame::Snapshot { id: None, sid: 3, seq: Some(1), market: "M", yes: vec![], no: vec![], sending_ts_ms: None },
        ),
    ];
    for (name, json, want) in cases {
        check(name, &json, want, CLEAN);
    }
}

#[test]
fn ticker_and_trade_frames_parse() {
    let cases = vec![
        (
            "ticker with every field",
            fixture("ticker.json"),
            Frame::Ticker { sid: 11, market: "FED-23DEC-T3.00", quote: full_quote(), ts_ms: Some(1669149841000) },
        ),
        (
            "ticker with only seconds, null last price, negative dollar volume",
            r#"{"type":"ticker","sid":1,"msg":{"market_ticker":"M","price_dollars":null,"yes_bid_dollars":"0.01","yes_ask_dollars":"0.0200","volume_fp":"0","open_interest_fp":"0.00","dollar_volume":-3,"dollar_open_interest":0,"yes_bid_size_fp":"1.00","yes_ask_size_fp":"2.00","last_trade_size_fp":"0.00","ts":1669149841}}"#.to_owned(),
            Frame::Ticker {
                sid: 1,
                market: "M",
                quote: Quote {
                    last: None,
                    bid: Some(Price(100)),
                    ask: Some(Price(200)),
                    bid_size: Some(Qty(100)),
                    ask_size: Some(Qty(200)),
                    last_size: Some(Qty(0)),
                    volume: Some(Qty(0)),
                    open_interest: Some(Qty(0)),
                    dollar_volume: Some(-3),
                    dollar_open_interest: Some(0),
                },
                ts_ms: Some(1669149841000),
            },
        ),
        (
            "ticker with nothing but its market: every value not given, none made up",
            r#"{"type":"ticker","sid":1,"msg":{"market_ticker":"M","price_dollars":"","yes_bid_dollars":null}}"#.to_owned(),
            Frame::Ticker { sid: 1, market: "M", quote: Quote::default(), ts_ms: None },
        ),
        (
            "ticker whose only time is the RFC 3339 `time`",
            r#"{"type":"ticker","sid":1,"msg":{"market_ticker":"M","time":"2022-11-22T20:44:01.5Z"}}"#.to_owned(),
            Frame::Ticker { sid: 1, market: "M", quote: Quote::default(), ts_ms: Some(1_669_149_841_500) },
        ),
        (
            "trade with seq (newest spec)",
            fixture("trade.json"),
            Frame::Trade {
                sid: 11,
                seq: Some(2),
                market: "HIGHNY-22DEC23-B53.5",
                trade_id: "d91bc706-ee49-470d-82d8-11418bda6fed",
                yes_price: Price(3600),
                count: Qty(13_600),
                taker_side: Some(Side::No),
                block: Some(false),
                ts_ms: Some(1669149841000),
            },
        ),
        (
            "trade without seq, 3-dp price, only deprecated taker_side and seconds",
            fixture("trade_without_seq.json"),
            Frame::Trade {
                sid: 11,
                seq: None,
                market: "HIGHNY-22DEC23-B53.5",
                trade_id: "0e6c8a52-7f3e-4c1b-9d2a-5b4f3e2d1c0b",
                yes_price: Price(3610),
                count: Qty(200),
                taker_side: Some(Side::Yes),
                block: None,
                ts_ms: Some(1669149842000),
            },
        ),
        (
            "block trade; the canonical side wins over a contradicting deprecated one",
            r#"{"type":"trade","sid":5,"seq":9,"msg":{"trade_id":"t","market_ticker":"M","yes_price_dollars":"0.9999","no_price_dollars":"0.0001","count_fp":"1000.00","taker_side":"no","taker_outcome_side":"yes","is_block_trade":true,"ts_ms":5}}"#.to_owned(),
            Frame::Trade {
                sid: 5,
                seq: Some(9),
                market: "M",
                trade_id: "t",
                yes_price: Price(9999),
                count: Qty(100_000),
                taker_side: Some(Side::Yes),
                block: Some(true),
                ts_ms: Some(5),
            },
        ),
        (
            "only taker_book_side: ask is a NO taker",
            r#"{"type":"trade","sid":5,"msg":{"trade_id":"t","market_ticker":"M","yes_price_dollars":"0.5","count_fp":"1","taker_book_side":"ask"}}"#.to_owned(),
            Frame::Trade {
                sid: 5,
                seq: None,
                market: "M",
                trade_id: "t",
                yes_price: Price(5000),
                count: Qty(100),
                taker_side: Some(Side::No),
                block: None,
                ts_ms: None,
            },
        ),
        (
            "trade without any taker side: the trade is kept, its side not given",
            r#"{"type":"trade","sid":1,"msg":{"trade_id":"t","market_ticker":"M","yes_price_dollars":"0.5","count_fp":"1"}}"#.to_owned(),
            Frame::Trade {
                sid: 1,
                seq: None,
                market: "M",
                trade_id: "t",
                yes_price: Price(5000),
                count: Qty(100),
                taker_side: None,
                block: None,
                ts_ms: None,
            },
        ),
        (
            "trade with only its NO price: the YES price is its complement",
            r#"{"type":"trade","sid":1,"msg":{"trade_id":"t","market_ticker":"M","no_price_dollars":"0.6400","count_fp":"1","taker_side":"YES"}}"#.to_owned(),
            Frame::Trade {
                sid: 1,
                seq: None,
                market: "M",
                trade_id: "t",
                yes_price: Price(3600),
                count: Qty(100),
                taker_side: Some(Side::Yes),
                block: None,
                ts_ms: None,
            },
        ),
    ];
    for (name, json, want) in cases {
        check(name, &json, want, CLEAN);
    }
}

#[test]
fn legacy_integer_fields_are_read_only_when_the_fixed_point_twin_is_not_given() {
    let cases = vec![
        (
            "legacy delta: integer cents and whole contracts",
            r#"{"type":"orderbook_delta","sid":2,"seq":3,"msg":{"market_ticker":"M","price":96,"delta":-54,"side":"yes"}}"#,
            Frame::Delta {
                sid: 2,
                seq: Some(3),
                market: "M",
                side: Side::Yes,
                price: Price(9600),
                delta: Qty(-5400),
                ts_ms: None,
            },
        ),
        (
            "hybrid delta: the three spellings of one value are read once, never added",
            r#"{"type":"orderbook_delta","sid":2,"seq":3,"msg":{"market_ticker":"M","price":96,"price_dollars":"0.960","delta":-54,"delta_fp":"-54.00","side":"yes"}}"#,
            Frame::Delta {
                sid: 2,
                seq: Some(3),
                market: "M",
                side: Side::Yes,
                price: Price(9600),
                delta: Qty(-5400),
                ts_ms: None,
            },
        ),
        (
            "a null fixed-point field is not given: its legacy twin is read",
            r#"{"type":"orderbook_delta","sid":2,"msg":{"market_ticker":"M","price_dollars":null,"price":41,"delta_fp":"","delta":2,"side":"no"}}"#,
            Frame::Delta {
                sid: 2,
                seq: None,
                market: "M",
                side: Side::No,
                price: Price(4100),
                delta: Qty(200),
                ts_ms: None,
            },
        ),
        (
            "legacy snapshot: cents ladders",
            r#"{"type":"orderbook_snapshot","sid":2,"seq":2,"msg":{"market_ticker":"M","yes":[[8,300]],"no":[[54,20]]}}"#,
            Frame::Snapshot {
                id: None,
                sid: 2,
                seq: Some(2),
                market: "M",
                yes: vec![(Price(800), Qty(30_000))],
                no: vec![(Price(5400), Qty(2_000))],
                sending_ts_ms: None,
            },
        ),
        (
            "middle-era snapshot: dollar strings with integer counts; an empty fp side is not overridden",
            r#"{"type":"orderbook_snapshot","sid":2,"seq":2,"msg":{"market_ticker":"M","yes_dollars_fp":[],"yes":[[8,300]],"no_dollars":[["0.54",20]],"no":[[54,20]]}}"#,
            Frame::Snapshot {
                id: None,
                sid: 2,
                seq: Some(2),
                market: "M",
                yes: vec![],
                no: vec![(Price(5400), Qty(2_000))],
                sending_ts_ms: None,
            },
        ),
        (
            "legacy ticker: cents prices, whole-contract volume",
            r#"{"type":"ticker","sid":1,"msg":{"market_ticker":"M","price":48,"yes_bid":45,"yes_ask":53,"volume":10,"open_interest":3,"dollar_volume":1,"dollar_open_interest":1}}"#,
            Frame::Ticker {
                sid: 1,
                market: "M",
                quote: Quote {
                    last: Some(Price(4800)),
                    bid: Some(Price(4500)),
                    ask: Some(Price(5300)),
                    volume: Some(Qty(1_000)),
                    open_interest: Some(Qty(300)),
                    dollar_volume: Some(1),
                    dollar_open_interest: Some(1),
                    ..Quote::default()
                },
                ts_ms: None,
            },
        ),
        (
            "hybrid ticker: fixed point wins over a different legacy value",
            r#"{"type":"ticker","sid":1,"msg":{"market_ticker":"M","price":48,"price_dollars":"0.4825","volume":10,"volume_fp":"10.50"}}"#,
            Frame::Ticker {
                sid: 1,
                market: "M",
                quote: Quote { last: Some(Price(4825)), volume: Some(Qty(1_050)), ..Quote::default() },
                ts_ms: None,
            },
        ),
        (
            "legacy trade: cents price, whole contracts",
            r#"{"type":"trade","sid":1,"msg":{"trade_id":"t","market_ticker":"M","yes_price":36,"no_price":64,"count":136,"taker_side":"no"}}"#,
            Frame::Trade {
                sid: 1,
                seq: None,
                market: "M",
                trade_id: "t",
                yes_price: Price(3600),
                count: Qty(13_600),
                taker_side: Some(Side::No),
                block: None,
                ts_ms: None,
            },
        ),
    ];
    for (name, json, want) in cases {
        check(name, json, want, CLEAN);
    }
}

#[test]
fn control_frames_parse() {
    let cases = vec![
        (
            "subscribed",
            fixture("subscribed.json"),
            Frame::Subscribed { id: Some(1), channel: Some("orderbook_delta"), sid: Some(1) },
        ),
        (
            "subscribed without msg: channel and sid at the top level",
            r#"{"id":1,"type":"subscribed","channel":"ticker","sid":4}"#.to_owned(),
            Frame::Subscribed { id: Some(1), channel: Some("ticker"), sid: Some(4) },
        ),
        (
            "subscribed with nothing but its id",
            r#"{"id":1,"type":"subscribed"}"#.to_owned(),
            Frame::Subscribed { id: Some(1), channel: None, sid: None },
        ),
        (
            "ok acknowledging update_subscription with the full list",
            fixture("ok_update.json"),
            Frame::Ok {
                id: Some(123),
                sid: Some(456),
                seq: Some(222),
                market_tickers: Some(vec!["MARKET-1", "MARKET-2", "MARKET-3"]),
            },
        ),
        (
            "ok without lists (skip_ticker_ack)",
            r#"{"id":124,"sid":456,"seq":223,"type":"ok","msg":{}}"#.to_owned(),
            Frame::Ok { id: Some(124), sid: Some(456), seq: Some(223), market_tickers: None },
        ),
        (
            "ok with nothing but its type",
            r#"{"type":"ok"}"#.to_owned(),
            Frame::Ok { id: None, sid: None, seq: None, market_tickers: None },
        ),
        (
            "ok list form answers list_subscriptions",
            fixture("ok_list.json"),
            Frame::SubscriptionList {
                id: Some(3),
                subscriptions: vec![("orderbook_delta", 1), ("ticker", 2)],
            },
        ),
        (
            "empty subscription list",
            r#"{"id":4,"type":"ok","msg":[]}"#.to_owned(),
            Frame::SubscriptionList { id: Some(4), subscriptions: vec![] },
        ),
        (
            "unsubscribed",
            fixture("unsubscribed.json"),
            Frame::Unsubscribed { id: Some(102), sid: Some(2), seq: Some(7) },
        ),
        (
            "error replying to a command",
            fixture("error.json"),
            Frame::Error {
                id: Some(123),
                sid: None,
                seq: None,
                code: Some(7),
                msg: Some("Unknown subscription ID"),
                market_ticker: None,
            },
        ),
        (
            "error without id (command could not be parsed)",
            r#"{"type":"error","msg":{"code":1,"msg":"Unable to process message"}}"#.to_owned(),
            Frame::Error {
                id: None,
                sid: None,
                seq: None,
                code: Some(1),
                msg: Some("Unable to process message"),
                market_ticker: None,
            },
        ),
        (
            "error with code and message at the top level",
            r#"{"id":2,"type":"error","code":9,"message":"Authentication required"}"#.to_owned(),
            Frame::Error {
                id: Some(2),
                sid: None,
                seq: None,
                code: Some(9),
                msg: Some("Authentication required"),
                market_ticker: None,
            },
        ),
        (
            "error whose msg is its text",
            r#"{"type":"error","msg":"something broke"}"#.to_owned(),
            Frame::Error {
                id: None,
                sid: None,
                seq: None,
                code: None,
                msg: Some("something broke"),
                market_ticker: None,
            },
        ),
        (
            "error without code",
            r#"{"type":"error","msg":{"msg":"x"}}"#.to_owned(),
            Frame::Error { id: None, sid: None, seq: None, code: None, msg: Some("x"), market_ticker: None },
        ),
        (
            "asynchronous channel error on a live sid",
            fixture("error_channel_terminal.json"),
            Frame::Error {
                id: None,
                sid: Some(4),
                seq: Some(19),
                code: Some(10),
                msg: Some("Channel error"),
                market_ticker: Some("FED-23DEC-T3.00"),
            },
        ),
    ];
    for (name, json, want) in cases {
        check(name, &json, want, CLEAN);
    }
}

#[test]
fn unreadable_optional_fields_are_not_given_and_noted_and_the_message_is_kept() {
    let cases = vec![
        (
            "ticker with a size that is not a number and a float dollar volume",
            r#"{"type":"ticker","sid":1,"msg":{"market_ticker":"M","yes_bid_dollars":"0.45","yes_bid_size_fp":"lots","dollar_volume":1.5}}"#,
            Frame::Ticker {
                sid: 1,
                market: "M",
                quote: Quote { bid: Some(Price(4500)), ..Quote::default() },
                ts_ms: None,
            },
            vec![("ticker", "yes_bid_size_fp"), ("ticker", "dollar_volume")],
        ),
        (
            "an unreadable fixed-point price does not fall back to its legacy twin",
            r#"{"type":"ticker","sid":1,"msg":{"market_ticker":"M","price_dollars":"1.5","price":48}}"#,
            Frame::Ticker { sid: 1, market: "M", quote: Quote::default(), ts_ms: None },
            vec![("ticker", "price_dollars")],
        ),
        (
            "trade with a block flag as a string and an unknown side",
            r#"{"type":"trade","sid":1,"seq":"x","msg":{"trade_id":"t","market_ticker":"M","yes_price_dollars":"0.5","count_fp":"1","taker_outcome_side":"maybe","is_block_trade":"false"}}"#,
            Frame::Trade {
                sid: 1,
                seq: None,
                market: "M",
                trade_id: "t",
                yes_price: Price(5000),
                count: Qty(100),
                taker_side: None,
                block: None,
                ts_ms: None,
            },
            vec![("trade", "taker_outcome_side"), ("trade", "is_block_trade"), ("trade", "seq")],
        ),
        (
            "delta with a float ts_ms falls back to its other times",
            r#"{"type":"orderbook_delta","sid":2,"msg":{"market_ticker":"M","price_dollars":"0.5","delta_fp":"1","side":"yes","ts_ms":1.5},"sending_ts_ms":9}"#,
            Frame::Delta {
                sid: 2,
                seq: None,
                market: "M",
                side: Side::Yes,
                price: Price(5000),
                delta: Qty(100),
                ts_ms: Some(9),
            },
            vec![("orderbook_delta", "ts_ms")],
        ),
        (
            "ok with a list that has a non-string ticker: no list rather than half of one",
            r#"{"id":9,"type":"ok","msg":{"market_tickers":["A",7]}}"#,
            Frame::Ok { id: Some(9), sid: None, seq: None, market_tickers: None },
            vec![("ok", "market_tickers")],
        ),
        (
            "ok whose msg is a string",
            r#"{"type":"ok","msg":"fine"}"#,
            Frame::Ok { id: None, sid: None, seq: None, market_tickers: None },
            vec![("ok", "msg")],
        ),
        (
            "error code out of range",
            r#"{"type":"error","msg":{"code":4294967296,"msg":"x"}}"#,
            Frame::Error { id: None, sid: None, seq: None, code: None, msg: Some("x"), market_ticker: None },
            vec![("error", "code")],
        ),
    ];
    for (name, json, want, want_notes) in cases {
        let mut parser = Parser::default();
        let mut buf = json.as_bytes().to_vec();
        let mut notes = Vec::new();
        let got = parser.parse_noting(&mut buf, &mut notes);
        assert_eq!(got, Ok(want), "case {name}");
        let got_notes: Vec<(&str, &str)> = notes
            .iter()
            .map(|n: &Note<'_>| {
                assert_eq!(n.kind, NoteKind::Invalid, "case {name}: {n:?}");
                (n.msg_type, n.field)
            })
            .collect();
        let mut want_sorted = want_notes.clone();
        want_sorted.sort();
        let mut got_sorted = got_notes.clone();
        got_sorted.sort();
        assert_eq!(got_sorted, want_sorted, "case {name}");
        assert_eq!(parser.stats, stats(0, 0, want_notes.len() as u64), "case {name}");
    }
}

#[test]
fn channel_errors_and_buffer_overflows_are_terminal() {
    assert!(ErrorCode(ErrorCode::CHANNEL_ERROR).is_terminal());
    assert!(ErrorCode(25).is_terminal());
    assert!(!ErrorCode(7).is_terminal());
    assert!(!ErrorCode(17).is_terminal(), "17 is retired; the newest spec lists 10 and 25 only");

    let mut parser = Parser::default();
    let mut buf = fixture("error_channel_terminal.json").into_bytes();
    let Ok(Frame::Error { code, sid, .. }) = parser.parse(&mut buf) else {
        panic!("not an error frame");
    };
    assert!(code.is_some_and(|c| ErrorCode(c).is_terminal()));
    assert_eq!(sid, Some(4));
}

#[test]
fn lifecycle_frames_keep_the_message_as_compact_json() {
    let cases = [
        ("market_lifecycle_v2.json", "INXD-23SEP14-B4487", "created", "market_lifecycle_v2"),
        (
            "market_lifecycle_v2_metadata_updated.json",
            "INXD-23SEP14-B4487",
            "metadata_updated",
            "market_lifecycle_v2",
        ),
        ("market_lifecycle_v2_determined.json", "INXD-23SEP14-B4487", "determined", "market_lifecycle_v2"),
        ("event_lifecycle.json", "INXD-23SEP14", "", "event_lifecycle"),
        ("event_fee_update.json", "INXD-23SEP14", "", "event_fee_update"),
    ];
    for (file, want_ticker, want_event, want_type) in cases {
        let text = fixture(file);
        let original: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
        let mut parser = Parser::default();
        let mut buf = text.clone().into_bytes();
        let (ticker, event, msg_type, detail) = match parser.parse(&mut buf) {
            Ok(Frame::MarketLifecycle { market, event_type, detail, msg_type, .. }) => {
                (market, event_type, msg_type, detail)
            }
            Ok(Frame::EventLifecycle { event_ticker, msg_type, detail, .. }) => {
                (event_ticker, "", msg_type, detail)
            }
            other => panic!("{file}: {other:?}"),
        };
        assert_eq!((ticker, event, msg_type), (want_ticker, want_event, want_type), "{file}");
        // The detail is the `msg` object, unchanged in meaning and compact.
        let detail_value: serde_json::Value = serde_json::from_str(&detail).expect("detail is JSON");
        assert_eq!(detail_value, original["msg"], "{file}");
        assert!(!detail.contains(": ") && !detail.contains('\n'), "{file}: not compact: {detail}");
        assert_eq!(parser.stats, CLEAN, "{file}");
    }
}

#[test]
fn lifecycle_detail_escapes_strings_and_never_holds_a_nul() {
    let json = r#"{"type":"market_lifecycle_v2","sid":1,"seq":1,"msg":{"market_ticker":"M","event_type":"created","additional_metadata":{"title":"a \"b\" \\ c\n\u0001 é ☃ \u0000","n":-0.5,"big":18446744073709551615}}}"#;
    let mut parser = Parser::default();
    let mut buf = json.as_bytes().to_vec();
    let Ok(Frame::MarketLifecycle { detail, .. }) = parser.parse(&mut buf) else {
        panic!("not a lifecycle frame");
    };
    // PostgreSQL's jsonb refuses U+0000: it is kept as U+FFFD.
    assert_eq!(
        detail,
        "{\"market_ticker\":\"M\",\"event_type\":\"created\",\"additional_metadata\":{\"title\":\"a \\\"b\\\" \\\\ c\\n\\u0001 é ☃ \u{fffd}\",\"n\":-0.5,\"big\":18446744073709551615}}"
    );
}

#[test]
fn escaped_strings_in_tickers_are_unescaped() {
    let json = r#"{"type":"orderbook_delta","sid":2,"seq":3,"msg":{"market_ticker":"KX\"Q\\2\u00e9-\/T1","price_dollars":"0.5000","delta_fp":"1.00","side":"yes","ts_ms":1}}"#;
    let mut parser = Parser::default();
    let mut buf = json.as_bytes().to_vec();
    let Ok(Frame::Delta { market, .. }) = parser.parse(&mut buf) else {
        panic!("not a delta");
    };
    assert_eq!(market, "KX\"Q\\2é-/T1");
}

#[test]
fn unknown_types_are_kept_and_counted() {
    check(
        "new channel type",
        &fixture("unknown_type.json"),
        Frame::Unknown { msg_type: "pyth_value", sid: Some(21), seq: Some(9) },
        stats(1, 0, 0),
    );
    check(
        "private type without seq",
        r#"{"type":"fill","sid":8,"msg":{"trade_id":"x"}}"#,
        Frame::Unknown { msg_type: "fill", sid: Some(8), seq: None },
        stats(1, 0, 0),
    );
    check(
        "removed ticker_v2 with a malformed sid",
        r#"{"type":"ticker_v2","sid":"eight"}"#,
        Frame::Unknown { msg_type: "ticker_v2", sid: None, seq: None },
        stats(1, 0, 0),
    );
}

#[test]
fn unknown_fields_are_tolerated_counted_and_named() {
    let json = r#"{"type":"orderbook_delta","sid":2,"seq":3,"shard":1,"msg":{"market_ticker":"FED-23DEC-T3.00","price_dollars":"0.9600","delta_fp":"-54.00","side":"yes","ts_ms":1669149841000,"new_flag":true,"nested":{"a":[1,2,{"b":null}]}}}"#;
    check(
        "three unknown keys, one of them nested",
        json,
        delta_fields(3, 9600, -5400, Side::Yes, Some(1669149841000)),
        stats(0, 3, 0),
    );
    let mut parser = Parser::default();
    let mut buf = json.as_bytes().to_vec();
    let mut notes = Vec::new();
    parser.parse_noting(&mut buf, &mut notes).expect("parses");
    let names: Vec<(&str, &str, NoteKind)> = notes.iter().map(|n| (n.msg_type, n.field, n.kind)).collect();
    assert_eq!(
        names,
        [
            ("orderbook_delta", "shard", NoteKind::Unknown),
            ("orderbook_delta", "new_flag", NoteKind::Unknown),
            ("orderbook_delta", "nested", NoteKind::Unknown),
        ]
    );

    // Counters accumulate over a parser's life.
    let mut parser = Parser::default();
    for _ in 0..3 {
        let mut buf = json.as_bytes().to_vec();
        assert!(parser.parse(&mut buf).is_ok());
    }
    let mut buf = fixture("unknown_type.json").into_bytes();
    assert!(parser.parse(&mut buf).is_ok());
    assert_eq!(parser.stats, stats(1, 9, 0));
}

#[test]
fn frames_without_what_identifies_them_are_errors_with_a_reason() {
    let json_errors = [
        ("truncated", r#"{"type":"orderbook_delta","sid":2"#),
        ("garbage", "heartbeat"),
        ("empty", ""),
        ("trailing garbage", r#"{"type":"ok"} x"#),
        ("raw control character in a string", "{\"type\":\"ok\",\"x\":\"\u{0}\"}"),
    ];
    for (name, json) in json_errors {
        let mut parser = Parser::default();
        let mut buf = json.as_bytes().to_vec();
        let got = parser.parse(&mut buf);
        assert!(matches!(got, Err(WireError::Json(_))), "{name}: {got:?}");
        assert_eq!(got.unwrap_err().reason(), "malformed_json");
    }
    for json in [r#"[{"type":"ok"}]"#, r#""ok""#, "42"] {
        check_err(json, json, WireError::NotObject);
    }
    let mut parser = Parser::default();
    let mut buf = b"{\"type\":\"ok\",\"x\":\"\xff\"}".to_vec();
    assert_eq!(parser.parse(&mut buf), Err(WireError::Utf8), "invalid UTF-8");

    let cases = [
        ("no type", r#"{"sid":1,"msg":{}}"#, missing("frame", "type")),
        ("empty type", r#"{"type":"","sid":1,"msg":{}}"#, missing("frame", "type")),
        ("type not a string", r#"{"type":7}"#, wrong_type("frame", "type")),
        (
            "ticker as a number",
            r#"{"type":"orderbook_delta","sid":2,"msg":{"market_ticker":17,"price_dollars":"0.5","delta_fp":"1","side":"yes"}}"#,
            wrong_type("orderbook_delta", "market_ticker"),
        ),
        (
            "ticker with a control character",
            r#"{"type":"trade","sid":2,"msg":{"market_ticker":"KX\u0000","trade_id":"t","yes_price_dollars":"0.5","count_fp":"1"}}"#,
            WireError::Text { msg_type: "trade".into(), field: "market_ticker" },
        ),
        (
            "sid as a string",
            r#"{"type":"orderbook_delta","sid":"2","msg":{"market_ticker":"M","price_dollars":"0.5","delta_fp":"1","side":"yes"}}"#,
            wrong_type("orderbook_delta", "sid"),
        ),
        (
            "unknown side",
            r#"{"type":"orderbook_delta","sid":2,"msg":{"market_ticker":"M","price_dollars":"0.5","delta_fp":"1","side":"maybe"}}"#,
            value("orderbook_delta", "side", "maybe"),
        ),
        (
            "delta without msg",
            r#"{"type":"orderbook_delta","sid":2,"seq":3}"#,
            missing("orderbook_delta", "msg"),
        ),
        (
            "delta with a msg that is not an object",
            r#"{"type":"orderbook_delta","sid":2,"msg":[1]}"#,
            wrong_type("orderbook_delta", "msg"),
        ),
        (
            "delta without sid",
            r#"{"type":"orderbook_delta","msg":{"market_ticker":"M","price_dollars":"0.5","delta_fp":"1","side":"yes"}}"#,
            missing("orderbook_delta", "sid"),
        ),
        (
            "delta without any price",
            r#"{"type":"orderbook_delta","sid":2,"msg":{"market_ticker":"M","delta_fp":"1","side":"yes"}}"#,
            missing("orderbook_delta", "price_dollars"),
        ),
        (
            "ticker without its market",
            r#"{"type":"ticker","sid":1,"msg":{"foo":"bar"},"unknown_field":99}"#,
            missing("ticker", "market_ticker"),
        ),
        (
            "trade without its id",
            r#"{"type":"trade","sid":1,"msg":{"market_ticker":"M","yes_price_dollars":"0.5","count_fp":"1"}}"#,
            missing("trade", "trade_id"),
        ),
        (
            "trade without a count",
            r#"{"type":"trade","sid":1,"msg":{"trade_id":"t","market_ticker":"M","yes_price_dollars":"0.5"}}"#,
            missing("trade", "count_fp"),
        ),
        (
            "snapshot level with three elements",
            r#"{"type":"orderbook_snapshot","sid":2,"msg":{"market_ticker":"M","yes_dollars_fp":[["0.10","1.00","x"]]}}"#,
            wrong_type("orderbook_snapshot", "yes_dollars_fp"),
        ),
        (
            "snapshot side not an array",
            r#"{"type":"orderbook_snapshot","sid":2,"msg":{"market_ticker":"M","no_dollars_fp":{}}}"#,
            wrong_type("orderbook_snapshot", "no_dollars_fp"),
        ),
        (
            "lifecycle without event_type",
            r#"{"type":"market_lifecycle_v2","sid":1,"seq":1,"msg":{"market_ticker":"M"}}"#,
            missing("market_lifecycle_v2", "event_type"),
        ),
        (
            "event lifecycle without event_ticker",
            r#"{"type":"event_lifecycle","sid":1,"seq":1,"msg":{"title":"T"}}"#,
            missing("event_lifecycle", "event_ticker"),
        ),
    ];
    for (name, json, want) in cases {
        check_err(name, json, want);
    }
}

#[test]
fn every_reason_is_listed_for_metrics() {
    let errors = [
        WireError::Utf8,
        WireError::Json(String::new()),
        WireError::NotObject,
        missing("t", "f"),
        wrong_type("t", "f"),
        value("t", "f", "v"),
        WireError::Text { msg_type: "t".into(), field: "f" },
    ];
    let reasons: Vec<&str> = errors.iter().map(WireError::reason).collect();
    assert_eq!(reasons, REJECT_REASONS);
}

#[test]
fn inexact_or_impossible_numbers_are_refused() {
    let delta = |price: &str, size: &str| {
        format!(
            r#"{{"type":"orderbook_delta","sid":2,"seq":3,"msg":{{"market_ticker":"M","price_dollars":"{price}","delta_fp":"{size}","side":"yes"}}}}"#
        )
    };
    let cases = [
        ("price below $0.0001", delta("0.00015", "1.00"), value("orderbook_delta", "price_dollars", "0.00015")),
        ("size below 0.01", delta("0.5000", "1.001"), value("orderbook_delta", "delta_fp", "1.001")),
        ("negative price", delta("-0.5000", "1.00"), value("orderbook_delta", "price_dollars", "-0.5000")),
        ("price above $1", delta("1.0001", "1.00"), value("orderbook_delta", "price_dollars", "1.0001")),
        ("exponent", delta("4.8e-1", "1.00"), value("orderbook_delta", "price_dollars", "4.8e-1")),
        ("overflowing size", delta("0.5", "99999999999999999999"), value("orderbook_delta", "delta_fp", "99999999999999999999")),
        (
            "legacy price out of range",
            r#"{"type":"orderbook_delta","sid":2,"msg":{"market_ticker":"M","price":101,"delta":1,"side":"yes"}}"#.to_owned(),
            value("orderbook_delta", "price", "101"),
        ),
        (
            "negative snapshot size",
            r#"{"type":"orderbook_snapshot","sid":2,"msg":{"market_ticker":"M","no_dollars_fp":[["0.10","-1.00"]]}}"#.to_owned(),
            value("orderbook_snapshot", "no_dollars_fp", "-1.00"),
        ),
        (
            "negative trade count",
            r#"{"type":"trade","sid":1,"msg":{"trade_id":"t","market_ticker":"M","yes_price_dollars":"0.5","count_fp":"-1","taker_outcome_side":"yes"}}"#.to_owned(),
            value("trade", "count_fp", "-1"),
        ),
    ];
    for (name, json, want) in cases {
        check_err(name, &json, want);
    }

    // The offending text is kept short in the error, whatever was sent.
    let long = "9".repeat(500);
    let mut parser = Parser::default();
    let mut buf = delta(&long, "1").into_bytes();
    let Err(WireError::Value { value, .. }) = parser.parse(&mut buf) else {
        panic!("not a value error");
    };
    assert!(value.len() <= 40, "{value}");
}

#[test]
fn json_numbers_are_read_as_their_decimal_text() {
    let json = r#"{"type":"orderbook_delta","sid":2,"msg":{"market_ticker":"M","price_dollars":0.48,"delta_fp":-54,"side":"no"}}"#;
    check(
        "number prices and sizes",
        json,
        Frame::Delta {
            sid: 2,
            seq: None,
            market: "M",
            side: Side::No,
            price: Price(4800),
            delta: Qty(-5400),
            ts_ms: None,
        },
        CLEAN,
    );
    check_err(
        "a number finer than $0.0001 is refused, never rounded",
        r#"{"type":"orderbook_delta","sid":2,"msg":{"market_ticker":"M","price_dollars":0.48001,"delta_fp":1,"side":"no"}}"#,
        value("orderbook_delta", "price_dollars", "0.48001"),
    );
}

#[test]
fn exact_decimals_round_trip_at_every_tick() {
    // Every $0.0001 step and the spellings Kalshi uses (4 dp now, 3 and 2 dp before).
    let mut parser = Parser::default();
    for units in 0..=10_000i64 {
        let four = Price(units).to_string();
        let mut texts = vec![four.clone()];
        if units % 10 == 0 {
            texts.push(four[..four.len() - 1].to_owned());
        }
        if units % 100 == 0 {
            texts.push(four[..four.len() - 2].to_owned());
        }
        for text in texts {
            let json = format!(
                r#"{{"type":"orderbook_delta","sid":1,"seq":1,"msg":{{"market_ticker":"M","price_dollars":"{text}","delta_fp":"-1.00","side":"no"}}}}"#
            );
            let mut buf = json.into_bytes();
            match parser.parse(&mut buf) {
                Ok(Frame::Delta { price, .. }) => assert_eq!(price, Price(units), "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}

#[test]
fn sequence_pairs_cover_every_sequenced_frame() {
    let cases = [
        ("orderbook_delta.json", Some((2, 3))),
        ("orderbook_snapshot_reply.json", Some((456, 230))),
        ("trade.json", Some((11, 2))),
        ("trade_without_seq.json", None),
        ("ticker.json", None),
        ("unsubscribed.json", Some((2, 7))),
        ("ok_update.json", Some((456, 222))),
        ("ok_list.json", None),
        ("error.json", None),
        ("error_channel_terminal.json", Some((4, 19))),
        ("market_lifecycle_v2.json", Some((13, 3))),
        ("event_fee_update.json", Some((13, 7))),
        ("unknown_type.json", Some((21, 9))),
        ("subscribed.json", None),
    ];
    let mut parser = Parser::default();
    for (file, want) in cases {
        let mut buf = fixture(file).into_bytes();
        let frame = parser.parse(&mut buf).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(frame.sequence(), want, "{file}");
    }
}

#[test]
fn every_fixture_parses_cleanly_and_both_paths_and_a_reused_parser_agree() {
    let fixtures = all_fixtures();
    let mut reused = Parser::default();
    let mut padded = Parser::default();
    // Twice round, so the second pass runs on buffers sized by the largest frame.
    for _ in 0..2 {
        for (name, text) in &fixtures {
            let mut a = text.clone().into_bytes();
            let mut b = text.clone().into_bytes();
            let mut c = FrameBuf::from_text(text.as_bytes());
            let fresh = Parser::default().parse(&mut a);
            let again = reused.parse(&mut b);
            let from_buf = padded.parse_buf(&mut c, &mut Vec::new());
            assert!(fresh.is_ok(), "{name}: {fresh:?}");
            assert_eq!(fresh, again, "{name}");
            assert_eq!(fresh, from_buf, "{name}");
        }
    }
    // Only the deliberately unknown type is unknown; no fixture has stray fields.
    assert_eq!(reused.stats, stats(2, 0, 0));
}
