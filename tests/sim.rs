//! The exchange simulator seen from a WebSocket client: real sockets on 127.0.0.1 port 0, and
//! in-memory streams under paused time wherever timing matters.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _};
use serde_json::{Value, json};
use tickd::dev::sim::exchange::Exchange;
use tickd::dev::sim::{SimAuth, SimConfig, Simulator, market_names};
use tickd::tick::{BookSnapshot, Price, Qty};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const LOCAL: &str = "127.0.0.1:0";
const MEM_URL: &str = "ws://sim.invalid/trade-api/ws/v2";

// ---------------------------------------------------------------- helpers

fn cfg(rate: u32) -> SimConfig {
    SimConfig { rate, lifecycle_every: 0, ..SimConfig::default() }
}

async fn mem(sim: &Simulator) -> WebSocketStream<tokio::io::DuplexStream> {
    let (ws, _) =
        tokio_tungstenite::client_async(MEM_URL, sim.connect_in_memory()).await.expect("in-memory handshake");
    ws
}

async fn tcp(
    sim: &Simulator,
) -> (WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, String) {
    let addr = sim.bind(LOCAL.parse::<SocketAddr>().expect("addr")).await.expect("bind");
    let url = sim.url(addr);
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("tcp handshake");
    (ws, url)
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// Next text frame as raw text, skipping control frames.
async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> String {
    loop {
        let msg = timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("a frame within 60 s")
            .expect("stream open")
            .expect("no ws error");
        if let Message::Text(t) = msg {
            return t.to_string();
        }
    }
}

async fn next_json<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Value {
    let t = next_text(ws).await;
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
}

/// Reads until a frame satisfies `pred`, returning everything read (the match last).
async fn read_until<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    for _ in 0..200_000 {
        let v = next_json(ws).await;
        let done = pred(&v);
        seen.push(v);
        if done {
            return seen;
        }
    }
    panic!("no matching frame in 200000 frames");
}

fn ty(v: &Value) -> &str {
    v["type"].as_str().unwrap_or("")
}

fn sid(v: &Value) -> u64 {
    v["sid"].as_u64().unwrap_or(0)
}

/// Per-sid seq checker: every frame with a seq must be last + 1, starting at 1.
#[derive(Default)]
struct Seqs(HashMap<u64, u64>);

impl Seqs {
    fn check(&mut self, v: &Value) {
        if let Some(seq) = v["seq"].as_u64() {
            let last = self.0.entry(sid(v)).or_insert(0);
            assert_eq!(seq, *last + 1, "seq on sid {} after {last}: {v}", sid(v));
            *last = seq;
        }
    }
}

/// A book rebuilt from the wire, NO side converted back to NO prices when `use_yes_price`.
#[derive(Default, Debug)]
struct ClientBook {
    yes: BTreeMap<i64, i64>,
    no: BTreeMap<i64, i64>,
}

fn px(v: &Value) -> i64 {
    Price::parse_dollars(v.as_str().expect("price string")).expect("exact price").0
}

fn qty(v: &Value) -> i64 {
    let s = v.as_str().expect("size string");
    assert_eq!(s.rsplit_once('.').map(|(_, f)| f.len()), Some(2), "two decimals: {s}");
    Qty::parse_fp(s).expect("exact size").0
}

impl ClientBook {
    fn no_px(p: i64, use_yes_price: bool) -> i64 {
        if use_yes_price { 10_000 - p } else { p }
    }

    fn from_snapshot(msg: &Value, use_yes_price: bool) -> ClientBook {
        let mut b = ClientBook::default();
        for (key, is_no) in [("yes_dollars_fp", false), ("no_dollars_fp", true)] {
            if let Some(levels) = msg.get(key) {
                let levels = levels.as_array().expect("levels");
                assert!(!levels.is_empty(), "empty sides are omitted");
                let mut prev = i64::MIN;
                for l in levels {
                    let p = px(&l[0]);
                    let p4 = l[0].as_str().unwrap_or("").rsplit_once('.').map(|(_, f)| f.len());
                    assert_eq!(p4, Some(4), "four decimals: {l}");
                    assert!(p > prev, "levels ascending as rendered");
                    prev = p;
                    let side = if is_no { &mut b.no } else { &mut b.yes };
                    let p = if is_no { Self::no_px(p, use_yes_price) } else { p };
                    side.insert(p, qty(&l[1]));
                }
            }
        }
        b
    }

    fn apply(&mut self, msg: &Value, use_yes_price: bool) {
        let is_no = msg["side"] == "no";
        let p = px(&msg["price_dollars"]);
        let p = if is_no { Self::no_px(p, use_yes_price) } else { p };
        let side = if is_no { &mut self.no } else { &mut self.yes };
        let level = side.entry(p).or_insert(0);
        *level += qty(&msg["delta_fp"]);
        assert!(*level >= 0, "level below zero at {p}");
        if *level == 0 {
            side.remove(&p);
        }
    }

    fn snapshot(&self) -> BookSnapshot {
        let conv = |m: &BTreeMap<i64, i64>| m.iter().map(|(p, q)| (Price(*p), Qty(*q))).collect();
        BookSnapshot { yes: conv(&self.yes), no: conv(&self.no) }
    }
}

// ---------------------------------------------------------------- subscribe flow

#[tokio::test(start_paused = true)]
async fn subscribe_acknowledges_each_channel_then_sends_snapshots_then_contiguous_seqs() {
    let sim = Simulator::start(cfg(2_000));
    let mut ws = mem(&sim).await;
    let m = market_names(2);

    send(
        &mut ws,
        json!({"id": 7, "cmd": "subscribe", "params": {
            "channels": ["orderbook_delta", "trade", "ticker"], "market_tickers": m,
            "send_initial_snapshot": true, "use_yes_price": false}}),
    )
    .await;

    for (want_sid, channel) in [(1, "orderbook_delta"), (2, "trade"), (3, "ticker")] {
        let v = next_json(&mut ws).await;
        assert_eq!(v, json!({"id": 7, "type": "subscribed", "msg": {"channel": channel, "sid": want_sid}}));
    }
    let mut seqs = Seqs::default();
    let mut first_data = Vec::new();
    for _ in 0..4 {
        let v = next_json(&mut ws).await;
        seqs.check(&v);
        first_data.push(v);
    }
    // Snapshots in request order with seq 1, 2; then one initial ticker per market.
    assert_eq!(ty(&first_data[0]), "orderbook_snapshot");
    assert_eq!(first_data[0]["msg"]["market_ticker"], m[0].as_str());
    assert_eq!(first_data[0]["seq"], 1);
    assert_eq!(first_data[1]["msg"]["market_ticker"], m[1].as_str());
    assert_eq!(first_data[1]["seq"], 2);
    assert!(first_data[0].get("id").is_none(), "subscribe snapshots carry no id");
    for (v, market) in first_data[2..].iter().zip(&m) {
        assert_eq!(ty(v), "ticker");
        assert_eq!(v["msg"]["market_ticker"], market.as_str());
        assert_eq!(v["msg"].as_object().map(|o| o.len()), Some(15), "all ticker fields: {v}");
        assert!(v.get("seq").is_none());
    }

    let mut kinds: HashMap<String, usize> = HashMap::new();
    for _ in 0..600 {
        let v = next_json(&mut ws).await;
        seqs.check(&v);
        *kinds.entry(ty(&v).to_owned()).or_default() += 1;
        assert!(v["sending_ts_ms"].is_i64(), "sending_ts_ms on data frames: {v}");
        match ty(&v) {
            "orderbook_delta" => {
                assert_eq!(sid(&v), 1);
                assert!(v["msg"]["ts_ms"].is_i64() && v["msg"]["ts"].is_string());
                assert!(m.iter().any(|x| v["msg"]["market_ticker"] == x.as_str()));
            }
            "trade" => {
                assert_eq!(sid(&v), 2);
                assert!(v["seq"].is_u64(), "trade seq by default");
                let msg = &v["msg"];
                assert_eq!(px(&msg["yes_price_dollars"]) + px(&msg["no_price_dollars"]), 10_000);
                assert_eq!(msg["taker_side"], msg["taker_outcome_side"]);
                assert_eq!(msg["trade_id"].as_str().map(str::len), Some(36));
                assert!(msg["is_block_trade"].is_boolean());
            }
            "ticker" => assert_eq!(sid(&v), 3),
            other => panic!("unexpected frame type {other}: {v}"),
        }
    }
    assert!(kinds.len() == 3, "deltas, trades and tickers all flowed: {kinds:?}");
}

#[tokio::test]
async fn book_rebuilt_from_snapshot_and_deltas_equals_the_exchange_book_with_and_without_yes_prices() {
    let sim = Simulator::start(SimConfig { markets: market_names(4), ..cfg(3_000) });
    let (mut ws, _) = tcp(&sim).await;
    let m = market_names(4);
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["orderbook_delta"], "market_tickers": m, "use_yes_price": false}})).await;
    send(&mut ws, json!({"id": 2, "cmd": "subscribe", "params": {"channels": ["orderbook_delta"], "market_tickers": m, "use_yes_price": true}})).await;

    let mut books: HashMap<(u64, String), ClientBook> = HashMap::new();
    let mut seqs = Seqs::default();
    let mut deltas = 0;
    let mut differs = false;
    let handle = |v: &Value, books: &mut HashMap<(u64, String), ClientBook>, deltas: &mut usize| {
        let yes_prices = sid(v) == 2;
        let market = v["msg"]["market_ticker"].as_str().unwrap_or("").to_owned();
        match ty(v) {
            "orderbook_snapshot" => {
                books.insert((sid(v), market), ClientBook::from_snapshot(&v["msg"], yes_prices));
            }
            "orderbook_delta" => {
                *deltas += 1;
                books
                    .get_mut(&(sid(v), market))
                    .expect("delta after its snapshot")
                    .apply(&v["msg"], yes_prices);
            }
            _ => {}
        }
    };
    while deltas < 2_000 {
        let v = next_json(&mut ws).await;
        seqs.check(&v);
        if sid(&v) == 2 && ty(&v) == "orderbook_snapshot" {
            differs |= v["msg"].get("no_dollars_fp").is_some();
        }
        handle(&v, &mut books, &mut deltas);
    }
    sim.pause();
    send(&mut ws, json!({"id": 3, "cmd": "list_subscriptions"})).await;
    for v in read_until(&mut ws, |v| v["id"] == 3).await {
        seqs.check(&v);
        handle(&v, &mut books, &mut deltas);
    }
    assert!(differs);
    for market in &m {
        let want = sim.book(market).expect("market exists");
        for s in [1, 2] {
            let got = books.get(&(s, market.clone())).map(ClientBook::snapshot);
            assert_eq!(got.as_ref(), Some(&want), "sid {s} market {market}");
        }
        let crossed =
            matches!((want.yes.last(), want.no.last()), (Some(y), Some(n)) if y.0.0 + n.0.0 >= 10_000);
        assert!(!crossed, "{market} crossed");
    }
}

#[tokio::test(start_paused = true)]
async fn use_yes_price_renders_no_levels_on_the_yes_scale() {
    let sim = Simulator::start(cfg(1));
    sim.pause();
    let mut ws = mem(&sim).await;
    let m = "SIM-MKT-001";
    for (id, flag) in [(1, false), (2, true)] {
        send(&mut ws, json!({"id": id, "cmd": "subscribe", "params": {"channels": ["orderbook_delta"], "market_ticker": m, "use_yes_price": flag}})).await;
    }
    let frames = read_until(&mut ws, |v| ty(v) == "orderbook_snapshot" && sid(v) == 2).await;
    let plain = frames.iter().find(|v| ty(v) == "orderbook_snapshot" && sid(v) == 1).expect("sid 1 snapshot");
    let yes_scale = frames.last().expect("sid 2 snapshot");
    let book = sim.book(m).expect("book");
    let no_plain: Vec<i64> =
        plain["msg"]["no_dollars_fp"].as_array().expect("no side").iter().map(|l| px(&l[0])).collect();
    let no_yes: Vec<i64> =
        yes_scale["msg"]["no_dollars_fp"].as_array().expect("no side").iter().map(|l| px(&l[0])).collect();
    assert_eq!(no_plain, book.no.iter().map(|l| l.0.0).collect::<Vec<_>>());
    assert_eq!(no_yes, book.no.iter().rev().map(|l| 10_000 - l.0.0).collect::<Vec<_>>());
    assert_eq!(plain["msg"]["yes_dollars_fp"], yes_scale["msg"]["yes_dollars_fp"]);
}

#[tokio::test(start_paused = true)]
async fn older_server_mode_sends_trades_without_seq_and_frames_without_sending_ts() {
    let sim = Simulator::start(SimConfig { trade_seq: false, sending_ts: false, ..cfg(2_000) });
    let mut ws = mem(&sim).await;
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"]}})).await;
    let frames = read_until(&mut ws, |v| ty(v) == "trade").await;
    let trade = frames.last().cloned().unwrap_or_default();
    assert!(trade.get("seq").is_none() && trade.get("sending_ts_ms").is_none(), "{trade}");
    sim.skip_seq(3);
    // Unsequenced sids are untouched by a seq gap, and keep flowing.
    let frames = read_until(&mut ws, |v| ty(v) == "trade").await;
    assert!(frames.iter().all(|v| v.get("seq").is_none()));
}

#[tokio::test(start_paused = true)]
async fn ticker_subscriptions_filter_by_market_id() {
    let sim = Simulator::start(cfg(2_000));
    let mut ws = mem(&sim).await;
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["orderbook_delta"], "market_ticker": "SIM-MKT-002"}})).await;
    let frames = read_until(&mut ws, |v| ty(v) == "orderbook_snapshot").await;
    let market_id = frames.last().map(|v| v["msg"]["market_id"].clone()).unwrap_or_default();
    send(&mut ws, json!({"id": 2, "cmd": "subscribe", "params": {"channels": ["ticker"], "market_ids": [market_id], "send_initial_snapshot": true}})).await;
    let mut tickers = 0;
    while tickers < 5 {
        let v = next_json(&mut ws).await;
        if ty(&v) == "ticker" {
            tickers += 1;
            assert_eq!(
                (v["msg"]["market_ticker"].as_str(), &v["msg"]["market_id"]),
                (Some("SIM-MKT-002"), &market_id)
            );
            let bid = px(&v["msg"]["yes_bid_dollars"]);
            let ask = px(&v["msg"]["yes_ask_dollars"]);
            assert!(bid < ask, "top of book never crossed: {v}");
        }
    }
}

// ---------------------------------------------------------------- errors

#[tokio::test(start_paused = true)]
async fn every_implemented_error_code_is_answered_and_the_connection_survives() {
    let sim = Simulator::start(SimConfig { auto_create_markets: false, ..cfg(1) });
    sim.pause();
    let mut ws = mem(&sim).await;
    send(&mut ws, json!({"id": 100, "cmd": "subscribe", "params": {"channels": ["ticker"], "market_ticker": "SIM-MKT-001"}})).await;
    assert_eq!(next_json(&mut ws).await["msg"]["sid"], 1);

    let cases: Vec<(String, u64, Option<u64>)> = vec![
        ("not json".into(), 1, None),
        (r#"{"id":1,"cmd":"subscribe","par"#.into(), 1, None),
        ("[1,2]".into(), 1, None),
        (r#"{"id":"x","cmd":"subscribe"}"#.into(), 1, None),
        (json!({"id": 2, "cmd": "subscribe", "params": {"channels": "ticker"}}).to_string(), 1, Some(2)),
        (json!({"id": 3, "cmd": "subscribe", "params": {"channels": ["ticker"], "use_yes_price": "yes"}}).to_string(), 1, Some(3)),
        (json!({"id": 4, "cmd": 9}).to_string(), 1, Some(4)),
        (json!({"id": 5, "cmd": "subscribe"}).to_string(), 2, Some(5)),
        (json!({"id": 6, "cmd": "subscribe", "params": {}}).to_string(), 3, Some(6)),
        (json!({"id": 7, "cmd": "subscribe", "params": {"channels": []}}).to_string(), 3, Some(7)),
        (json!({"id": 8, "cmd": "unsubscribe", "params": {}}).to_string(), 4, Some(8)),
        (json!({"id": 9, "cmd": "unsubscribe", "params": {"sids": []}}).to_string(), 4, Some(9)),
        (json!({"id": 10, "cmd": "fly", "params": {}}).to_string(), 5, Some(10)),
        (json!({"id": 11}).to_string(), 5, Some(11)),
        (json!({"id": 12, "cmd": "unsubscribe", "params": {"sids": [1, 99]}}).to_string(), 7, Some(12)),
        (json!({"id": 13, "cmd": "subscribe", "params": {"channels": ["ticker_v2"]}}).to_string(), 8, Some(13)),
        (json!({"id": 14, "cmd": "subscribe", "params": {"channels": ["ticker", "multivariate"]}}).to_string(), 8, Some(14)),
        (json!({"id": 15, "cmd": "subscribe", "params": {"channels": ["fill"]}}).to_string(), 9, Some(15)),
        (json!({"id": 16, "cmd": "subscribe", "params": {"channels": ["ticker"], "market_ticker": "A", "market_tickers": ["B"]}}).to_string(), 11, Some(16)),
        (json!({"id": 17, "cmd": "subscribe", "params": {"channels": ["trade"], "market_ids": ["9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1"]}}).to_string(), 11, Some(17)),
        (json!({"id": 18, "cmd": "subscribe", "params": {"channels": ["ticker"], "market_ticker": "bad ticker\""}}).to_string(), 11, Some(18)),
        (json!({"id": 19, "cmd": "subscribe", "params": {"channels": ["ticker"], "market_ticker": "NOPE-1"}}).to_string(), 11, Some(19)),
        (json!({"id": 20, "cmd": "update_subscription", "params": {"sids": [1, 2], "action": "add_markets", "market_tickers": ["SIM-MKT-002"]}}).to_string(), 12, Some(20)),
        (json!({"id": 21, "cmd": "update_subscription", "params": {"action": "add_markets", "market_tickers": ["SIM-MKT-002"]}}).to_string(), 12, Some(21)),
        (json!({"id": 22, "cmd": "update_subscription", "params": {"sid": 9, "action": "add_markets", "market_tickers": ["SIM-MKT-002"]}}).to_string(), 7, Some(22)),
        (json!({"id": 23, "cmd": "update_subscription", "params": {"sid": 1, "action": "get_snapshot", "market_tickers": ["SIM-MKT-001"]}}).to_string(), 13, Some(23)),
        (json!({"id": 24, "cmd": "update_subscription", "params": {"sid": 1, "action": "fly", "market_tickers": ["SIM-MKT-001"]}}).to_string(), 13, Some(24)),
        (json!({"id": 25, "cmd": "subscribe", "params": {"channels": ["orderbook_delta"]}}).to_string(), 14, Some(25)),
        (json!({"id": 26, "cmd": "update_subscription", "params": {"sid": 1, "action": "add_markets"}}).to_string(), 14, Some(26)),
        (json!({"id": 27, "cmd": "update_subscription", "params": {"sid": 1, "market_tickers": ["SIM-MKT-002"]}}).to_string(), 15, Some(27)),
        (json!({"id": 28, "cmd": "subscribe", "params": {"channels": ["ticker"], "shard_factor": 0}}).to_string(), 19, Some(28)),
        (json!({"id": 29, "cmd": "subscribe", "params": {"channels": ["ticker"], "shard_key": 1}}).to_string(), 20, Some(29)),
        (json!({"id": 30, "cmd": "subscribe", "params": {"channels": ["ticker"], "shard_factor": 2, "shard_key": 2}}).to_string(), 21, Some(30)),
        (json!({"id": 31, "cmd": "subscribe", "params": {"channels": ["ticker"], "shard_factor": 101}}).to_string(), 22, Some(31)),
    ];
    for (text, code, id) in &cases {
        ws.send(Message::text(text.clone())).await.expect("send");
        let v = next_json(&mut ws).await;
        assert_eq!(ty(&v), "error", "{text} -> {v}");
        assert_eq!(v["msg"]["code"].as_u64(), Some(*code), "{text} -> {v}");
        assert!(v["msg"]["msg"].is_string(), "{v}");
        assert_eq!(v["id"].as_u64(), *id, "{text} -> {v}");
    }
    // Binary frames are not commands either.
    ws.send(Message::binary(vec![0u8, 1, 2])).await.expect("send");
    assert_eq!(next_json(&mut ws).await["msg"]["code"], 1);

    // Nothing was half-applied: the one subscription is intact and the connection lives.
    send(&mut ws, json!({"id": 99, "cmd": "list_subscriptions"})).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"id": 99, "type": "ok", "msg": [{"channel": "ticker", "sid": 1}]})
    );
    assert_eq!(sim.commands_received().len(), cases.len() + 2, "text frames only");
}

// ---------------------------------------------------------------- subscription management

#[tokio::test(start_paused = true)]
async fn update_subscription_adds_deletes_and_snapshots_on_the_same_sid_and_unsubscribe_silences() {
    let sim = Simulator::start(cfg(2_000));
    let mut ws = mem(&sim).await;
    let [m1, m2, m3] = ["SIM-MKT-001", "SIM-MKT-002", "SIM-MKT-003"];
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["orderbook_delta", "ticker"], "market_tickers": [m1]}})).await;
    let mut seqs = Seqs::default();
    for v in read_until(&mut ws, |v| ty(v) == "orderbook_snapshot").await {
        seqs.check(&v);
    }

    send(&mut ws, json!({"id": 2, "cmd": "list_subscriptions"})).await;
    let frames = read_until(&mut ws, |v| v["id"] == 2).await;
    frames.iter().for_each(|v| seqs.check(v));
    assert_eq!(
        frames.last().map(|v| v["msg"].clone()),
        Some(json!([{"channel": "orderbook_delta", "sid": 1}, {"channel": "ticker", "sid": 2}]))
    );

    // add_markets: ok with the full list, then a snapshot per added market, same sid, next seqs.
    send(&mut ws, json!({"id": 3, "cmd": "update_subscription", "params": {"sids": [1], "action": "add_markets", "market_tickers": [m2, m3]}})).await;
    let frames = read_until(&mut ws, |v| v["id"] == 3).await;
    frames.iter().for_each(|v| seqs.check(v));
    let ok = frames.last().cloned().unwrap_or_default();
    assert_eq!(ty(&ok), "ok");
    assert_eq!((sid(&ok), ok["msg"]["market_tickers"].clone()), (1, json!([m1, m2, m3])));
    for want in [m2, m3] {
        let v = next_json(&mut ws).await;
        seqs.check(&v);
        assert_eq!(
            (ty(&v), sid(&v), v["msg"]["market_ticker"].as_str()),
            ("orderbook_snapshot", 1, Some(want))
        );
    }

    // get_snapshot: snapshots carrying the command id, next seqs, subscription unchanged.
    send(&mut ws, json!({"id": 4, "cmd": "update_subscription", "params": {"sid": 1, "action": "get_snapshot", "market_tickers": [m3, m1]}})).await;
    let frames = read_until(&mut ws, |v| v["id"] == 4).await;
    frames.iter().for_each(|v| seqs.check(v));
    let v = next_json(&mut ws).await;
    seqs.check(&v);
    let firsts: Vec<_> = [frames.last().cloned().unwrap_or_default(), v]
        .iter()
        .map(|v| (ty(v).to_owned(), v["id"].clone(), v["msg"]["market_ticker"].clone()))
        .collect();
    assert_eq!(
        firsts,
        vec![
            ("orderbook_snapshot".into(), json!(4), json!(m3)),
            ("orderbook_snapshot".into(), json!(4), json!(m1))
        ]
    );

    // delete_markets: ok with the remaining list, and no more deltas for the deleted market.
    send(&mut ws, json!({"id": 5, "cmd": "update_subscription", "params": {"sid": 1, "action": "delete_markets", "market_tickers": [m1]}})).await;
    let frames = read_until(&mut ws, |v| v["id"] == 5).await;
    frames.iter().for_each(|v| seqs.check(v));
    assert_eq!(frames.last().map(|v| v["msg"]["market_tickers"].clone()), Some(json!([m2, m3])));
    let mut deltas = 0;
    while deltas < 200 {
        let v = next_json(&mut ws).await;
        seqs.check(&v);
        if ty(&v) == "orderbook_delta" {
            deltas += 1;
            assert_ne!(v["msg"]["market_ticker"], m1, "deleted market still flowing: {v}");
        }
    }

    // unsubscribe: one unsubscribed per sid with its next seq, then silence on both.
    send(&mut ws, json!({"id": 6, "cmd": "unsubscribe", "params": {"sids": [1, 2]}})).await;
    let frames = read_until(&mut ws, |v| ty(v) == "unsubscribed" && sid(v) == 2).await;
    frames.iter().for_each(|v| seqs.check(v));
    let unsubs: Vec<_> =
        frames.iter().filter(|v| ty(v) == "unsubscribed").map(|v| (v["id"].clone(), sid(v))).collect();
    assert_eq!(unsubs, vec![(json!(6), 1), (json!(6), 2)]);
    send(&mut ws, json!({"id": 7, "cmd": "subscribe", "params": {"channels": ["trade"]}})).await;
    let mut trades = 0;
    while trades < 20 {
        let v = next_json(&mut ws).await;
        assert!(![1, 2].contains(&sid(&v)), "frame on a cancelled sid: {v}");
        if ty(&v) == "subscribed" {
            assert_eq!(v["msg"]["sid"], 3, "sids are never reused");
        }
        trades += usize::from(ty(&v) == "trade");
    }
}

#[tokio::test(start_paused = true)]
async fn unknown_markets_are_created_on_demand_and_announced_on_the_lifecycle_channel() {
    let sim = Simulator::start(SimConfig { lifecycle_every: 3, ..cfg(1_000) });
    let mut ws = mem(&sim).await;
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["market_lifecycle_v2"]}}))
        .await;
    assert_eq!(next_json(&mut ws).await["msg"]["sid"], 1);
    send(&mut ws, json!({"id": 2, "cmd": "subscribe", "params": {"channels": ["orderbook_delta"], "market_ticker": "NEW-MKT.5"}})).await;
    let mut seqs = Seqs::default();
    let mut created = false;
    let mut kinds = std::collections::HashSet::new();
    for _ in 0..300 {
        let v = next_json(&mut ws).await;
        seqs.check(&v);
        if sid(&v) == 1 {
            kinds.insert(ty(&v).to_owned());
            created |= v["msg"]["event_type"] == "created" && v["msg"]["market_ticker"] == "NEW-MKT.5";
        }
    }
    assert!(created, "a created event for the new market");
    assert!(
        kinds
            .iter()
            .all(|k| ["market_lifecycle_v2", "event_lifecycle", "event_fee_update"].contains(&k.as_str())),
        "{kinds:?}"
    );
    assert!(sim.markets().contains(&"NEW-MKT.5".to_owned()));
}

// ---------------------------------------------------------------- handshake

fn test_key() -> &'static rsa::RsaPrivateKey {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("key generation"))
}

/// Someone else's registered key (public half only): a handshake signed with [`test_key`]
/// must not verify against it. A fixture, because generating a second key in a debug build
/// costs many seconds.
const OTHER_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAp0nB7aWNeKTwD8hjk4Wc
oP6RDnQ2S/CX3HnXyQiJbLu91pHZ32I6IDv2+z2VZwsy+eKmVNGQUHs1TZ9YE7In
8tgxiTKyDE2mesM+cEUo6qhIhf/zQDM4ewt/uUrZDzgCmI5d1lRabwUYG2oRi7NR
LfxKaS2tsl76JXEp9UFyRX538d8lMU5Wm5SHQt8v8L2+tAHz2ChlBUUqQfZUBLRB
7YocJML5LFf2I3wHWarkfgpzHMWtweXbZjG/Bdn6P3uW0pVVcs9SbEhcUaG4OMyR
KacHtcGjGPD85XUpbCLXGC5trYwNlBlYiokiwq9GFqTTO4sOFjZ3ABQ+dl2omjDo
jwIDAQAB
-----END PUBLIC KEY-----
";

const KEY_ID: &str = "a952bcbe-ec3b-4b5b-b8f9-11dae589608c";

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn signed_request(
    url: &str,
    key: &rsa::RsaPrivateKey,
    key_id: Option<&str>,
    ts_ms: i64,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().expect("request");
    let ts = ts_ms.to_string();
    let signer = rsa::pss::BlindedSigningKey::<sha2::Sha256>::new(key.clone());
    let sig = signer.sign_with_rng(&mut rsa::rand_core::OsRng, format!("{ts}GET/trade-api/ws/v2").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
    let h = req.headers_mut();
    if let Some(k) = key_id {
        h.insert("KALSHI-ACCESS-KEY", k.parse().expect("header"));
    }
    h.insert("KALSHI-ACCESS-TIMESTAMP", ts.parse().expect("header"));
    h.insert("KALSHI-ACCESS-SIGNATURE", sig.parse().expect("header"));
    req
}

fn status_of<T>(r: Result<T, WsError>) -> u16 {
    match r {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => 101,
    }
}

#[tokio::test]
async fn signed_handshakes_are_accepted_and_bad_ones_get_401() {
    let auth = SimAuth {
        key_id: KEY_ID.into(),
        public_key: test_key().to_public_key(),
        max_skew: Duration::from_secs(5),
    };
    let sim = Simulator::start(SimConfig { auth: Some(auth), ..cfg(1) });
    let addr = sim.bind(LOCAL.parse().expect("addr")).await.expect("bind");
    let url = sim.url(addr);

    let (mut ws, _) =
        tokio_tungstenite::connect_async(signed_request(&url, test_key(), Some(KEY_ID), now_ms()))
            .await
            .expect("signed handshake accepted");
    // A signed session may subscribe to private channels.
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["fill"]}})).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");

    let bad = [
        signed_request(&url, test_key(), None, now_ms()),
        signed_request(&url, test_key(), Some("someone-else"), now_ms()),
        signed_request(&url, test_key(), Some(KEY_ID), now_ms() - 60_000),
        url.as_str().into_client_request().expect("request"),
    ];
    let n = bad.len() as u64;
    for req in bad {
        assert_eq!(status_of(tokio_tungstenite::connect_async(req).await), 401);
    }
    // In memory, the same checks apply.
    let in_mem = tokio_tungstenite::client_async(MEM_URL, sim.connect_in_memory()).await;
    assert_eq!(status_of(in_mem), 401);
    assert_eq!(sim.stats().handshakes_unauthorized, n + 1);
    assert_eq!(sim.stats().connections_total, 1);

    // A valid signature by a key other than the registered one.
    use rsa::pkcs8::DecodePublicKey as _;
    let other = rsa::RsaPublicKey::from_public_key_pem(OTHER_PUBLIC_KEY).expect("fixture key");
    let auth = SimAuth { key_id: KEY_ID.into(), public_key: other, max_skew: Duration::from_secs(5) };
    let sim = Simulator::start(SimConfig { auth: Some(auth), ..cfg(1) });
    let addr = sim.bind(LOCAL.parse().expect("addr")).await.expect("bind");
    let req = signed_request(&sim.url(addr), test_key(), Some(KEY_ID), now_ms());
    assert_eq!(status_of(tokio_tungstenite::connect_async(req).await), 401);
}

#[tokio::test]
async fn refused_handshakes_get_503_n_times_then_succeed_and_wrong_paths_get_404() {
    let sim = Simulator::start(cfg(1));
    let addr = sim.bind(LOCAL.parse().expect("addr")).await.expect("bind");
    let url = sim.url(addr);
    sim.refuse_handshakes(2);
    for _ in 0..2 {
        assert_eq!(status_of(tokio_tungstenite::connect_async(url.as_str()).await), 503);
    }
    assert!(tokio_tungstenite::connect_async(url.as_str()).await.is_ok());
    assert_eq!(
        status_of(tokio_tungstenite::connect_async(format!("ws://{addr}/trade-api/ws/v1")).await),
        404
    );
    let s = sim.stats();
    assert_eq!((s.handshakes_refused, s.handshakes_not_found, s.connections_total), (2, 1, 1));
}

// ---------------------------------------------------------------- faults

#[tokio::test(start_paused = true)]
async fn stall_silences_the_connection_for_a_heartbeat_and_pings_resume_after() {
    let hb = Duration::from_secs(10);
    let sim = Simulator::start(SimConfig { heartbeat: hb, ..cfg(500) });
    let mut ws = mem(&sim).await;
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"]}})).await;
    read_until(&mut ws, |v| ty(v) == "trade").await;
    sim.pause();
    send(&mut ws, json!({"id": 2, "cmd": "list_subscriptions"})).await;
    read_until(&mut ws, |v| v["id"] == 2).await;

    sim.set_stall(true);
    tokio::task::yield_now().await;
    let pings = sim.stats().pings_sent;
    sim.resume();
    assert!(timeout(hb * 3 / 2, ws.next()).await.is_err(), "no frame of any kind while stalled");
    assert_eq!(sim.stats().pings_sent, pings);

    sim.set_stall(false);
    let got_ping = timeout(hb + Duration::from_secs(1), async {
        loop {
            if let Some(Ok(Message::Ping(p))) = ws.next().await {
                return p;
            }
        }
    })
    .await
    .expect("a ping within one heartbeat after the stall");
    assert_eq!(&got_ping[..], b"heartbeat");
}

#[tokio::test(start_paused = true)]
async fn heartbeat_pings_arrive_on_cadence_and_answered_pings_keep_the_connection() {
    let sim = Simulator::start(SimConfig {
        heartbeat: Duration::from_secs(2),
        missed_pongs_close: Some(2),
        ..cfg(1)
    });
    let mut ws = mem(&sim).await;
    let start = tokio::time::Instant::now();
    for i in 1..=5u64 {
        let m = ws.next().await;
        assert!(matches!(&m, Some(Ok(Message::Ping(p))) if &p[..] == b"heartbeat"), "{m:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(2 * i));
    }
    assert_eq!(sim.stats().connections_open, 1);
    assert_eq!(sim.stats().pings_sent, 5);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_answers_pings_is_closed_after_the_configured_misses() {
    let sim = Simulator::start(SimConfig {
        heartbeat: Duration::from_secs(2),
        missed_pongs_close: Some(2),
        ..cfg(1)
    });
    let mut ws = mem(&sim).await;
    // Not reading means tungstenite never answers the pings.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!((sim.stats().pings_sent, sim.stats().connections_open), (2, 1));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sim.stats().connections_open, 0, "closed at the third heartbeat");
    let first = ws.next().await;
    assert!(matches!(first, Some(Ok(Message::Ping(_)))), "{first:?}");
}

#[tokio::test]
async fn drop_all_drops_without_a_close_frame_and_close_all_sends_the_code() {
    let sim = Simulator::start(cfg(1));
    let (mut ws, url) = tcp(&sim).await;
    while sim.stats().connections_open < 1 {
        tokio::task::yield_now().await;
    }
    sim.drop_all();
    match timeout(Duration::from_secs(5), ws.next()).await.expect("dropped promptly") {
        None | Some(Err(_)) => {}
        Some(Ok(m)) => panic!("expected an abrupt drop, got {m:?}"),
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("reconnect");
    while sim.stats().connections_open < 1 {
        tokio::task::yield_now().await;
    }
    sim.close_all(4000);
    match timeout(Duration::from_secs(5), ws.next()).await.expect("closed promptly") {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4000),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn skip_seq_produces_exactly_one_gap_of_n_on_each_sequenced_sid() {
    let sim = Simulator::start(cfg(2_000));
    let mut ws = mem(&sim).await;
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["orderbook_delta"], "market_tickers": market_names(3)}})).await;
    let mut last = 0;
    for _ in 0..50 {
        let v = next_json(&mut ws).await;
        if let Some(seq) = v["seq"].as_u64() {
            assert_eq!(seq, last + 1);
            last = seq;
        }
    }
    sim.skip_seq(5);
    let mut gaps = Vec::new();
    for _ in 0..300 {
        let v = next_json(&mut ws).await;
        if let Some(seq) = v["seq"].as_u64() {
            if seq != last + 1 {
                gaps.push((last, seq));
            }
            last = seq;
        }
    }
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0].1 - gaps[0].0, 6, "five numbers never sent");
}

#[tokio::test(start_paused = true)]
async fn terminal_error_silences_orderbook_sids_until_resubscribed() {
    let sim = Simulator::start(cfg(2_000));
    let mut ws = mem(&sim).await;
    let m = market_names(2);
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["orderbook_delta", "trade"], "market_tickers": m}})).await;
    read_until(&mut ws, |v| ty(v) == "orderbook_delta").await;
    sim.send_terminal_error(10);
    let frames = read_until(&mut ws, |v| ty(v) == "error").await;
    let err = frames.last().cloned().unwrap_or_default();
    assert_eq!((sid(&err), err["msg"]["code"].as_u64()), (1, Some(10)));
    let mut trades = 0;
    while trades < 30 {
        let v = next_json(&mut ws).await;
        assert_ne!(sid(&v), 1, "frame on a terminated sid: {v}");
        trades += usize::from(ty(&v) == "trade");
    }
    send(&mut ws, json!({"id": 2, "cmd": "subscribe", "params": {"channels": ["orderbook_delta"], "market_tickers": m}})).await;
    let frames = read_until(&mut ws, |v| ty(v) == "orderbook_snapshot").await;
    let snap = frames.last().cloned().unwrap_or_default();
    assert_eq!((sid(&snap), snap["seq"].as_u64()), (3, Some(1)));
}

#[tokio::test(start_paused = true)]
async fn a_reader_too_slow_for_the_buffer_gets_error_25_on_its_data_sids() {
    let sim = Simulator::start(cfg(2_000));
    let mut ws = mem(&sim).await;
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["orderbook_delta"], "market_tickers": market_names(3)}})).await;
    read_until(&mut ws, |v| ty(v) == "orderbook_snapshot").await;
    // Stop reading long enough for the exchange to outrun the socket buffer and then the
    // connection's bounded queue (one batch per 1 ms tick).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let frames = read_until(&mut ws, |v| ty(v) == "error").await;
    let err = frames.last().cloned().unwrap_or_default();
    assert_eq!((sid(&err), err["msg"]["code"].as_u64()), (1, Some(25)));
    assert!(sim.stats().lagged >= 1);
}

#[tokio::test(start_paused = true)]
async fn injected_garbage_reaches_the_client_as_described() {
    let sim = Simulator::start(cfg(1));
    sim.pause();
    let mut ws = mem(&sim).await;
    send(&mut ws, json!({"id": 1, "cmd": "list_subscriptions"})).await;
    next_json(&mut ws).await;
    sim.send_malformed(3);
    sim.send_unknown(2);
    sim.send_oversized(100_000);
    let mut malformed = 0;
    for _ in 0..3 {
        let t = next_text(&mut ws).await;
        let v: Option<Value> = serde_json::from_str(&t).ok();
        // Invalid or truncated JSON, or JSON of the wrong shape.
        malformed += usize::from(v.as_ref().is_none_or(|v| !v["type"].is_string() || !v["sid"].is_u64()));
    }
    assert_eq!(malformed, 3);
    for _ in 0..2 {
        let v = next_json(&mut ws).await;
        assert_eq!(ty(&v), "sim_unknown_event");
    }
    let big = next_text(&mut ws).await;
    assert!((99_000..=101_000).contains(&big.len()), "{}", big.len());
    assert!(serde_json::from_str::<Value>(&big).is_ok());
}

#[tokio::test]
async fn trades_sent_lists_trade_ids_in_the_order_the_client_received_them() {
    let sim = Simulator::start(cfg(3_000));
    let (mut ws, _) = tcp(&sim).await;
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"], "market_tickers": market_names(3)}})).await;
    let mut ids = Vec::new();
    while ids.len() < 50 {
        let v = next_json(&mut ws).await;
        if ty(&v) == "trade" {
            ids.push(v["msg"]["trade_id"].as_str().unwrap_or("").to_owned());
        }
    }
    let sent = sim.trades_sent();
    assert_eq!(&sent[..50], &ids[..]);
    let unique: std::collections::HashSet<_> = sent.iter().collect();
    assert_eq!(unique.len(), sent.len());
}

#[tokio::test]
async fn once_caught_up_after_a_pause_every_trade_sent_is_written_and_no_more_come() {
    let sim = Simulator::start(cfg(5_000));
    let (mut ws, _) = tcp(&sim).await;
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"], "market_tickers": market_names(3)}})).await;
    let mut ids = Vec::new();
    while ids.len() < 50 {
        let v = next_json(&mut ws).await;
        if ty(&v) == "trade" {
            ids.push(v["msg"]["trade_id"].as_str().unwrap_or("").to_owned());
        }
    }

    sim.pause();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sim.caught_up() {
        assert!(std::time::Instant::now() < deadline, "caught up within 10 s of the pause");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = sim.trades_sent();
    while ids.len() < sent.len() {
        let v = next_json(&mut ws).await;
        if ty(&v) == "trade" {
            ids.push(v["msg"]["trade_id"].as_str().unwrap_or("").to_owned());
        }
    }
    let more = timeout(Duration::from_millis(300), next_text(&mut ws)).await;

    assert_eq!(ids, sent, "the client read exactly the trades listed");
    assert!(more.is_err(), "nothing more after catching up: {more:?}");
    assert_eq!(sim.trades_sent(), sent);
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_connections_with_1001() {
    let sim = Simulator::start(cfg(10));
    let mut ws = mem(&sim).await;
    send(&mut ws, json!({"id": 1, "cmd": "list_subscriptions"})).await;
    next_json(&mut ws).await;
    sim.shutdown();
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1001);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_cli_serves_on_its_listen_address_until_cancelled() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        sim: tickd::dev::sim::SimArgs,
    }
    // Find a free port, then let the simulator bind it.
    let port = std::net::TcpListener::bind(LOCAL).and_then(|l| l.local_addr()).expect("port").port();
    let listen = format!("127.0.0.1:{port}");
    let cli = Cli::try_parse_from([
        "sim",
        "--listen",
        &listen,
        "--markets",
        "2",
        "--heartbeat",
        "500ms",
        "--fault-at",
        "1h=drop",
    ])
    .expect("args");
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(tickd::dev::sim::run_cli(cli.sim, stop.clone()));
    let url = format!("ws://{listen}/trade-api/ws/v2");
    let mut ws = None;
    for _ in 0..100 {
        if let Ok((w, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
            ws = Some(w);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ws = ws.expect("the CLI simulator accepts connections");
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["orderbook_delta"], "market_ticker": "SIM-MKT-002"}})).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    stop.cancel();
    assert!(run.await.expect("no panic").is_ok());
    let closed = loop {
        match ws.next().await {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(closed, Some(1001));
}

// ---------------------------------------------------------------- determinism

#[test]
fn one_seed_gives_one_sequence_of_exchange_events() {
    let names = market_names(5);
    let run = |seed: u64| {
        let mut ex = Exchange::new(seed, &names, 20);
        (0..2_000).flat_map(|i| ex.step(1_700_000_000_000 + i)).collect::<Vec<_>>()
    };
    let a = run(42);
    assert!(a.len() > 2_000);
    assert_eq!(a, run(42));
    assert_ne!(a, run(43));
    // Markets created later look the same whoever creates them.
    let mut x = Exchange::new(42, &names, 0);
    let mut y = Exchange::new(42, &[], 0);
    y.add_market("SIM-MKT-003", 0);
    assert_eq!(x.book("SIM-MKT-003"), y.book("SIM-MKT-003"));
    x.step(0);
}

// ---------------------------------------------------------------- throughput (manual)

/// `SIM_RATE=100000 cargo test --release --test sim -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run in release mode by hand"]
async fn throughput_to_one_tcp_client() {
    let rate = std::env::var("SIM_RATE").ok().and_then(|r| r.parse().ok()).unwrap_or(100_000);
    let sim = Simulator::start(SimConfig { markets: market_names(50), ..cfg(rate) });
    let (mut ws, _) = tcp(&sim).await;
    send(&mut ws, json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["orderbook_delta", "trade", "ticker"], "market_tickers": market_names(50)}})).await;
    read_until(&mut ws, |v| ty(v) == "orderbook_delta").await;
    let start = std::time::Instant::now();
    let mut frames = 0u64;
    while start.elapsed() < Duration::from_secs(5) {
        if let Some(Ok(Message::Text(_))) = ws.next().await {
            frames += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let s = sim.stats();
    println!(
        "rate {rate}: {frames} frames in {secs:.2} s = {:.0} frames/s, {:.0} events/s, lagged {}",
        frames as f64 / secs,
        s.events_generated as f64 / secs,
        s.lagged
    );
}
