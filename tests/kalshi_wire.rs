//! Kalshi wire parsing: tables of real-shaped payloads and the frames they must become.
//!
//! Each case keeps the raw JSON next to the expected [`Frame`], so a reader can check a case
//! against the protocol digest without running anything. Fixtures in `tests/fixtures/kalshi/`
//! are the same payloads as files, shared with the benchmark and the no-panic sweep.

use std::path::{Path, PathBuf};

use tickd::kalshi::wire::{ErrorCode, Frame, Parser, WireError, WireStats};
use tickd::tick::{Price, Qty, Side};

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

fn field(msg_type: &str, field: &'static str) -> WireError {
    WireError::Field { msg_type: msg_type.to_owned(), field }
}

fn number(msg_type: &str, field: &'static str, value: &str) -> WireError {
    WireError::Number { msg_type: msg_type.to_owned(), field, value: value.to_owned() }
}

const CLEAN: WireStats = WireStats { unknown_types: 0, unknown_fields: 0 };

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
            Frame::Ticker {
                sid: 11,
                market: "FED-23DEC-T3.00",
                price: Some(Price(4800)),
                yes_bid: Some(Price(4500)),
                yes_ask: Some(Price(5300)),
                yes_bid_size: Qty(30_000),
                yes_ask_size: Qty(15_000),
                last_trade_size: Qty(2_500),
                volume: Qty(3_389_600),
                open_interest: Qty(2_042_200),
                dollar_volume: 16948,
                dollar_open_interest: 10211,
                ts_ms: Some(1669149841000),
            },
        ),
        (
            "ticker with only seconds, null last price, negative dollar volume",
            r#"{"type":"ticker","sid":1,"msg":{"market_ticker":"M","price_dollars":null,"yes_bid_dollars":"0.01","yes_ask_dollars":"0.0200","volume_fp":"0","open_interest_fp":"0.00","dollar_volume":-3,"dollar_open_interest":0,"yes_bid_size_fp":"1.00","yes_ask_size_fp":"2.00","last_trade_size_fp":"0.00","ts":1669149841}}"#.to_owned(),
            Frame::Ticker {
                sid: 1,
                market: "M",
                price: None,
                yes_bid: Some(Price(100)),
                yes_ask: Some(Price(200)),
                yes_bid_size: Qty(100),
                yes_ask_size: Qty(200),
                last_trade_size: Qty(0),
                volume: Qty(0),
                open_interest: Qty(0),
                dollar_volume: -3,
                dollar_open_interest: 0,
                ts_ms: Some(1669149841000),
            },
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
                taker_side: Side::No,
                block: false,
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
                taker_side: Side::Yes,
                block: false,
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
                taker_side: Side::Yes,
                block: true,
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
                taker_side: Side::No,
                block: false,
                ts_ms: None,
            },
        ),
    ];
    for (name, json, want) in cases {
        check(name, &json, want, CLEAN);
    }
}

#[test]
fn control_frames_parse() {
    let cases = vec![
        (
            "subscribed",
            fixture("subscribed.json"),
            Frame::Subscribed { id: Some(1), channel: "orderbook_delta", sid: 1 },
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
            Frame::Unsubscribed { id: Some(102), sid: 2, seq: Some(7) },
        ),
        (
            "error replying to a command",
            fixture("error.json"),
            Frame::Error {
                id: Some(123),
                sid: None,
                seq: None,
                code: 7,
                msg: "Unknown subscription ID",
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
                code: 1,
                msg: "Unable to process message",
                market_ticker: None,
            },
        ),
        (
            "asynchronous channel error on a live sid",
            fixture("error_channel_terminal.json"),
            Frame::Error {
                id: None,
                sid: Some(4),
                seq: Some(19),
                code: 10,
                msg: "Channel error",
                market_ticker: Some("FED-23DEC-T3.00"),
            },
        ),
    ];
    for (name, json, want) in cases {
        check(name, &json, want, CLEAN);
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
    assert!(ErrorCode(code).is_terminal());
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
            Ok(Frame::MarketLifecycle { market, event_type, detail, .. }) => {
                (market, event_type, "market_lifecycle_v2", detail)
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
fn lifecycle_detail_escapes_strings() {
    let json = r#"{"type":"market_lifecycle_v2","sid":1,"seq":1,"msg":{"market_ticker":"M","event_type":"created","additional_metadata":{"title":"a \"b\" \\ c\n\u0001 é ☃","n":-0.5,"big":18446744073709551615}}}"#;
    let mut parser = Parser::default();
    let mut buf = json.as_bytes().to_vec();
    let Ok(Frame::MarketLifecycle { detail, .. }) = parser.parse(&mut buf) else {
        panic!("not a lifecycle frame");
    };
    assert_eq!(
        detail,
        r#"{"market_ticker":"M","event_type":"created","additional_metadata":{"title":"a \"b\" \\ c\n\u0001 é ☃","n":-0.5,"big":18446744073709551615}}"#
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
        WireStats { unknown_types: 1, unknown_fields: 0 },
    );
    check(
        "private type without seq",
        r#"{"type":"fill","sid":8,"msg":{"trade_id":"x"}}"#,
        Frame::Unknown { msg_type: "fill", sid: Some(8), seq: None },
        WireStats { unknown_types: 1, unknown_fields: 0 },
    );
    check(
        "removed ticker_v2 with a malformed sid",
        r#"{"type":"ticker_v2","sid":"eight"}"#,
        Frame::Unknown { msg_type: "ticker_v2", sid: None, seq: None },
        WireStats { unknown_types: 1, unknown_fields: 0 },
    );
}

#[test]
fn unknown_fields_are_tolerated_and_counted() {
    let json = r#"{"type":"orderbook_delta","sid":2,"seq":3,"shard":1,"msg":{"market_ticker":"FED-23DEC-T3.00","price_dollars":"0.9600","delta_fp":"-54.00","side":"yes","ts_ms":1669149841000,"new_flag":true,"nested":{"a":[1,2,{"b":null}]}}}"#;
    check(
        "three unknown keys, one of them nested",
        json,
        delta_fields(3, 9600, -5400, Side::Yes, Some(1669149841000)),
        WireStats { unknown_types: 0, unknown_fields: 3 },
    );

    // Counters accumulate over a parser's life.
    let mut parser = Parser::default();
    for _ in 0..3 {
        let mut buf = json.as_bytes().to_vec();
        assert!(parser.parse(&mut buf).is_ok());
    }
    let mut buf = fixture("unknown_type.json").into_bytes();
    assert!(parser.parse(&mut buf).is_ok());
    assert_eq!(parser.stats, WireStats { unknown_types: 1, unknown_fields: 9 });
}

#[test]
fn malformed_frames_are_errors() {
    let json_errors = [
        ("truncated", r#"{"type":"orderbook_delta","sid":2"#),
        ("garbage", "heartbeat"),
        ("empty", ""),
        ("array", r#"[{"type":"ok"}]"#),
        ("string", r#""ok""#),
        ("number", "42"),
        ("trailing garbage", r#"{"type":"ok"} x"#),
        ("invalid UTF-8", "{\"type\":\"ok\",\"x\":\"\u{0}\"}"),
    ];
    for (name, json) in json_errors {
        let mut parser = Parser::default();
        let mut buf = json.as_bytes().to_vec();
        assert!(matches!(parser.parse(&mut buf), Err(WireError::Json(_))), "{name}");
    }
    let mut parser = Parser::default();
    let mut buf = b"{\"type\":\"ok\",\"x\":\"\xff\"}".to_vec();
    assert!(matches!(parser.parse(&mut buf), Err(WireError::Json(_))), "invalid UTF-8");

    let cases = [
        ("no type", r#"{"sid":1,"msg":{}}"#, field("frame", "type")),
        ("type not a string", r#"{"type":7}"#, field("frame", "type")),
        (
            "price as a JSON number, not a string",
            r#"{"type":"orderbook_delta","sid":2,"seq":3,"msg":{"market_ticker":"M","price_dollars":0.48,"delta_fp":"1.00","side":"yes"}}"#,
            field("orderbook_delta", "price_dollars"),
        ),
        (
            "count as a JSON number",
            r#"{"type":"trade","sid":1,"msg":{"trade_id":"t","market_ticker":"M","yes_price_dollars":"0.5","count_fp":136,"taker_outcome_side":"no"}}"#,
            field("trade", "count_fp"),
        ),
        (
            "ticker as a number",
            r#"{"type":"orderbook_delta","sid":2,"msg":{"market_ticker":17,"price_dollars":"0.5","delta_fp":"1","side":"yes"}}"#,
            field("orderbook_delta", "market_ticker"),
        ),
        (
            "sid as a string",
            r#"{"type":"orderbook_delta","sid":"2","msg":{"market_ticker":"M","price_dollars":"0.5","delta_fp":"1","side":"yes"}}"#,
            field("orderbook_delta", "sid"),
        ),
        (
            "negative seq",
            r#"{"type":"orderbook_delta","sid":2,"seq":-1,"msg":{"market_ticker":"M","price_dollars":"0.5","delta_fp":"1","side":"yes"}}"#,
            field("orderbook_delta", "seq"),
        ),
        (
            "float ts_ms",
            r#"{"type":"orderbook_delta","sid":2,"msg":{"market_ticker":"M","price_dollars":"0.5","delta_fp":"1","side":"yes","ts_ms":1.5}}"#,
            field("orderbook_delta", "ts_ms"),
        ),
        (
            "unknown side",
            r#"{"type":"orderbook_delta","sid":2,"msg":{"market_ticker":"M","price_dollars":"0.5","delta_fp":"1","side":"maybe"}}"#,
            field("orderbook_delta", "side"),
        ),
        (
            "delta without msg",
            r#"{"type":"orderbook_delta","sid":2,"seq":3}"#,
            field("orderbook_delta", "msg"),
        ),
        (
            "delta without sid",
            r#"{"type":"orderbook_delta","msg":{"market_ticker":"M","price_dollars":"0.5","delta_fp":"1","side":"yes"}}"#,
            field("orderbook_delta", "sid"),
        ),
        (
            "legacy delta: integer cents only",
            r#"{"type":"orderbook_delta","sid":2,"seq":3,"msg":{"market_ticker":"M","price":96,"delta":-54,"side":"yes"}}"#,
            field("orderbook_delta", "price_dollars"),
        ),
        (
            "legacy snapshot: cents ladders must not read as an empty book",
            r#"{"type":"orderbook_snapshot","sid":2,"seq":2,"msg":{"market_ticker":"M","yes":[[8,300]],"no":[[54,20]]}}"#,
            field("orderbook_snapshot", "yes_dollars_fp"),
        ),
        (
            "legacy snapshot, dollars with integer counts",
            r#"{"type":"orderbook_snapshot","sid":2,"seq":2,"msg":{"market_ticker":"M","yes_dollars_fp":[],"no_dollars":[["0.54",20]]}}"#,
            field("orderbook_snapshot", "no_dollars_fp"),
        ),
        (
            "legacy ticker: cents price must not read as no price",
            r#"{"type":"ticker","sid":1,"msg":{"market_ticker":"M","price":48,"yes_bid_dollars":"0.45","yes_ask_dollars":"0.53","volume_fp":"1","open_interest_fp":"1","dollar_volume":1,"dollar_open_interest":1,"yes_bid_size_fp":"1","yes_ask_size_fp":"1","last_trade_size_fp":"1"}}"#,
            field("ticker", "price_dollars"),
        ),
        (
            "legacy ticker: integer volume",
            r#"{"type":"ticker","sid":1,"msg":{"market_ticker":"M","price":48,"yes_bid":45,"yes_ask":53,"volume":10,"open_interest":3,"dollar_volume":1,"dollar_open_interest":1}}"#,
            field("ticker", "price_dollars"),
        ),
        (
            "legacy trade: cents price",
            r#"{"type":"trade","sid":1,"msg":{"trade_id":"t","market_ticker":"M","yes_price":36,"no_price":64,"count":136,"taker_side":"no"}}"#,
            field("trade", "yes_price_dollars"),
        ),
        (
            "trade without any taker side",
            r#"{"type":"trade","sid":1,"msg":{"trade_id":"t","market_ticker":"M","yes_price_dollars":"0.5","count_fp":"1"}}"#,
            field("trade", "taker_outcome_side"),
        ),
        (
            "block flag as a string",
            r#"{"type":"trade","sid":1,"msg":{"trade_id":"t","market_ticker":"M","yes_price_dollars":"0.5","count_fp":"1","taker_outcome_side":"yes","is_block_trade":"false"}}"#,
            field("trade", "is_block_trade"),
        ),
        (
            "snapshot level with three elements",
            r#"{"type":"orderbook_snapshot","sid":2,"msg":{"market_ticker":"M","yes_dollars_fp":[["0.10","1.00","x"]]}}"#,
            field("orderbook_snapshot", "yes_dollars_fp"),
        ),
        (
            "snapshot level with a numeric count",
            r#"{"type":"orderbook_snapshot","sid":2,"msg":{"market_ticker":"M","yes_dollars_fp":[["0.10",100]]}}"#,
            field("orderbook_snapshot", "yes_dollars_fp"),
        ),
        (
            "snapshot side not an array",
            r#"{"type":"orderbook_snapshot","sid":2,"msg":{"market_ticker":"M","no_dollars_fp":{}}}"#,
            field("orderbook_snapshot", "no_dollars_fp"),
        ),
        (
            "subscribed without sid",
            r#"{"id":1,"type":"subscribed","msg":{"channel":"ticker"}}"#,
            field("subscribed", "sid"),
        ),
        (
            "unsubscribed without sid",
            r#"{"id":1,"type":"unsubscribed","msg":{"sids":[1]}}"#,
            field("unsubscribed", "sid"),
        ),
        ("error without code", r#"{"type":"error","msg":{"msg":"x"}}"#, field("error", "code")),
        (
            "error code out of range",
            r#"{"type":"error","msg":{"code":4294967296,"msg":"x"}}"#,
            field("error", "code"),
        ),
        ("ok list entry not an object", r#"{"type":"ok","msg":[1]}"#, field("ok", "msg")),
        ("ok msg a string", r#"{"type":"ok","msg":"fine"}"#, field("ok", "msg")),
        (
            "lifecycle without event_type",
            r#"{"type":"market_lifecycle_v2","sid":1,"seq":1,"msg":{"market_ticker":"M"}}"#,
            field("market_lifecycle_v2", "event_type"),
        ),
        (
            "event lifecycle without event_ticker",
            r#"{"type":"event_lifecycle","sid":1,"seq":1,"msg":{"title":"T"}}"#,
            field("event_lifecycle", "event_ticker"),
        ),
    ];
    for (name, json, want) in cases {
        check_err(name, json, want);
    }
}

#[test]
fn inexact_or_impossible_numbers_are_refused() {
    let delta = |price: &str, size: &str| {
        format!(
            r#"{{"type":"orderbook_delta","sid":2,"seq":3,"msg":{{"market_ticker":"M","price_dollars":"{price}","delta_fp":"{size}","side":"yes"}}}}"#
        )
    };
    let cases = [
        ("price below $0.0001", delta("0.00015", "1.00"), number("orderbook_delta", "price_dollars", "0.00015")),
        ("size below 0.01", delta("0.5000", "1.001"), number("orderbook_delta", "delta_fp", "1.001")),
        ("negative price", delta("-0.5000", "1.00"), number("orderbook_delta", "price_dollars", "-0.5000")),
        ("price above $1", delta("1.0001", "1.00"), number("orderbook_delta", "price_dollars", "1.0001")),
        ("exponent", delta("4.8e-1", "1.00"), number("orderbook_delta", "price_dollars", "4.8e-1")),
        ("empty price", delta("", "1.00"), number("orderbook_delta", "price_dollars", "")),
        ("overflowing size", delta("0.5", "99999999999999999999"), number("orderbook_delta", "delta_fp", "99999999999999999999")),
        (
            "negative snapshot size",
            r#"{"type":"orderbook_snapshot","sid":2,"msg":{"market_ticker":"M","no_dollars_fp":[["0.10","-1.00"]]}}"#.to_owned(),
            number("orderbook_snapshot", "no_dollars_fp", "-1.00"),
        ),
        (
            "negative trade count",
            r#"{"type":"trade","sid":1,"msg":{"trade_id":"t","market_ticker":"M","yes_price_dollars":"0.5","count_fp":"-1","taker_outcome_side":"yes"}}"#.to_owned(),
            number("trade", "count_fp", "-1"),
        ),
    ];
    for (name, json, want) in cases {
        check_err(name, &json, want);
    }

    // The offending text is kept short in the error, whatever was sent.
    let long = "9".repeat(500);
    let mut parser = Parser::default();
    let mut buf = delta(&long, "1").into_bytes();
    let Err(WireError::Number { value, .. }) = parser.parse(&mut buf) else {
        panic!("not a number error");
    };
    assert!(value.len() <= 40, "{value}");
}

#[test]
fn exact_decimals_round_trip_at_every_tick() {
    // Every $0.0001 step and both spellings Kalshi uses (4 dp now, 3 dp before).
    let mut parser = Parser::default();
    for units in 0..=10_000i64 {
        let four = Price(units).to_string();
        let mut texts = vec![four.clone()];
        if units % 10 == 0 {
            texts.push(four[..four.len() - 1].to_owned());
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
fn every_fixture_parses_cleanly_and_a_reused_parser_agrees_with_fresh_ones() {
    let fixtures = all_fixtures();
    let mut reused = Parser::default();
    // Twice round, so the second pass runs on buffers sized by the largest frame.
    for _ in 0..2 {
        for (name, text) in &fixtures {
            let mut a = text.clone().into_bytes();
            let mut b = text.clone().into_bytes();
            let fresh = Parser::default().parse(&mut a);
            let again = reused.parse(&mut b);
            assert!(fresh.is_ok(), "{name}: {fresh:?}");
            assert_eq!(fresh, again, "{name}");
        }
    }
    // Only the deliberately unknown type is unknown; no fixture has stray fields.
    assert_eq!(reused.stats, WireStats { unknown_types: 2, unknown_fields: 0 });
}

/// A small deterministic generator, so the sweep is the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn no_input_makes_the_parser_panic() {
    const BYTES: &[u8] = b"\"{}[],:\\0-.e9an \xff\x00tu";
    let mut parser = Parser::default();
    let mut parse = |bytes: &[u8]| {
        let mut buf = bytes.to_vec();
        // Any result is fine; the call returning at all is the test.
        let _ = parser.parse(&mut buf);
    };
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut total = 0usize;
    for (_, text) in all_fixtures() {
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            // Every truncation, and every single-byte deletion.
            parse(&bytes[..cut]);
            let mut deleted = bytes.to_vec();
            deleted.remove(cut);
            parse(&deleted);
            // A few replacements at every position, with JSON-significant bytes.
            for _ in 0..3 {
                let mut mutated = bytes.to_vec();
                mutated[cut] = BYTES[(rng.next() % BYTES.len() as u64) as usize];
                parse(&mutated);
            }
            total += 5;
        }
        // Multi-byte mutations, duplicated spans and swapped halves.
        for _ in 0..300 {
            let mut mutated = bytes.to_vec();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % mutated.len() as u64) as usize;
                match rng.next() % 3 {
                    0 => mutated[at] = BYTES[(rng.next() % BYTES.len() as u64) as usize],
                    1 => mutated.insert(at, BYTES[(rng.next() % BYTES.len() as u64) as usize]),
                    _ => {
                        let end = (at + (rng.next() % 16) as usize).min(mutated.len());
                        let span = mutated[at..end].to_vec();
                        mutated.splice(at..at, span);
                    }
                }
            }
            parse(&mutated);
            let (head, tail) = bytes.split_at(bytes.len() / 2);
            parse(&[tail, head].concat());
            total += 2;
        }
    }
    // Values of the right JSON type in the wrong places.
    for value in
        ["null", "true", "-1", "1e400", "18446744073709551616", "[]", "{}", "\"\"", "[[]]", "[[\"0.1\"]]"]
    {
        for key in ["type", "sid", "seq", "id", "msg", "sending_ts_ms"] {
            parse(format!(r#"{{"type":"orderbook_snapshot","{key}":{value}}}"#).as_bytes());
        }
        for file in ["orderbook_snapshot.json", "ticker.json", "trade.json", "error.json", "ok_list.json"] {
            let text = fixture(file);
            for key in
                ["market_ticker", "yes_dollars_fp", "price_dollars", "count_fp", "code", "msg", "channel"]
            {
                let needle = format!("\"{key}\":");
                if let Some(at) = text.find(&needle) {
                    let spliced = format!(
                        "{}{value},\"x{key}\":{}",
                        &text[..at + needle.len()],
                        &text[at + needle.len()..]
                    );
                    parse(spliced.as_bytes());
                }
            }
        }
    }
    // Deep nesting is refused, not followed.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    parse(deep.as_bytes());
    let deep_msg = format!(
        r#"{{"type":"market_lifecycle_v2","sid":1,"msg":{{"market_ticker":"M","event_type":"x","a":{}1{}}}}}"#,
        "[".repeat(126),
        "]".repeat(126)
    );
    parse(deep_msg.as_bytes());
    assert!(total > 10_000, "sweep too small: {total}");
}
