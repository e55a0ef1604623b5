//! The simulator's REST API seen from a plain HTTP client: its shapes against the documented
//! ones and against what the WebSocket publishes, its refusals, and the market schedule
//! (`new_market_every`) on paused time over in-memory streams.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tickd::dev::sim::exchange::{MARKETS_PER_EVENT, Phase};
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tickd::kalshi::rest::model::parse_rfc3339_ms;
use tickd::tick::{Price, Qty};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

fn cfg(markets: Vec<String>) -> SimConfig {
    SimConfig { markets, rate: 2_000, lifecycle_every: 0, ..SimConfig::default() }
}

/// A client as tickd builds them (reqwest's default one would look for a TLS provider the
/// process never installs).
fn http() -> reqwest::Client {
    tickd::http::client_builder(Duration::from_secs(10)).expect("TLS").build().expect("client")
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let response = http().get(format!("{base}{path}")).send().await.expect("an answer");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a body");
    (status, serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}")))
}

/// A GET over an in-memory stream, so that paused time stays exact.
async fn get_in_memory(sim: &Simulator, path: &str) -> (u16, Value) {
    let io = TokioIo::new(sim.connect_in_memory());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.expect("handshake");
    tokio::spawn(conn);
    let request =
        hyper::Request::get(path).header("host", "sim.invalid").body(Empty::<Bytes>::new()).expect("request");
    let response = sender.send_request(request).await.expect("an answer");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("a body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}")))
}

async fn next_json<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Value {
    loop {
        let msg = timeout(Duration::from_secs(600), ws.next())
            .await
            .expect("a frame")
            .expect("stream open")
            .expect("no ws error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("JSON");
        }
    }
}

fn dollars(v: &Value) -> Price {
    v.as_str().and_then(Price::parse_dollars).unwrap_or_else(|| panic!("not a dollar string: {v}"))
}

fn four_decimals(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.split_once('.').is_some_and(|(_, f)| f.len() == 4))
}

fn two_decimals(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.split_once('.').is_some_and(|(_, f)| f.len() == 2))
}

#[tokio::test]
async fn rest_answers_have_the_documented_shapes_and_agree_with_the_websocket() {
    let sim = Simulator::start(cfg(market_names(2)));
    let addr: SocketAddr = sim.bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let base = sim.rest_url(addr);
    let market = "SIM-MKT-001";
    let (mut ws, _) = tokio_tungstenite::connect_async(sim.url(addr)).await.expect("ws");
    let subscribe =
        json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"], "market_ticker": market}});
    ws.send(Message::text(subscribe.to_string())).await.expect("send");
    let mut ws_trades = Vec::new();
    while ws_trades.len() < 20 {
        let v = next_json(&mut ws).await;
        if v["type"] == "trade" {
            ws_trades.push(v["msg"].clone());
        }
    }
    sim.pause();

    let (status, markets) = get(&base, "/markets?limit=1000").await;
    let (_, one) = get(&base, &format!("/markets/{market}")).await;
    let (_, book) = get(&base, &format!("/markets/{market}/orderbook")).await;
    let (_, trades) = get(&base, &format!("/markets/trades?ticker={market}&limit=1000")).await;

    assert_eq!(status, 200);
    assert_eq!(markets["cursor"], "");
    assert_eq!(markets["markets"].as_array().map(Vec::len), Some(2));
    let m = &one["market"];
    assert_eq!(m, &markets["markets"][0]);
    assert_eq!(
        (m["ticker"].as_str(), m["event_ticker"].as_str(), m["status"].as_str()),
        (Some(market), Some("SIM-MKT"), Some("active"))
    );
    for key in [
        "yes_bid_dollars",
        "yes_ask_dollars",
        "no_bid_dollars",
        "no_ask_dollars",
        "last_price_dollars",
        "notional_value_dollars",
    ] {
        assert!(four_decimals(&m[key]), "{key}: {}", m[key]);
    }
    for key in ["yes_bid_size_fp", "yes_ask_size_fp", "volume_fp", "volume_24h_fp", "open_interest_fp"] {
        assert!(two_decimals(&m[key]), "{key}: {}", m[key]);
    }
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let time_of =
        |key: &str| m[key].as_str().and_then(parse_rfc3339_ms).unwrap_or_else(|| panic!("{key}: {}", m[key]));
    assert!(
        time_of("created_time") <= now_ms && time_of("created_time") > now_ms - 3_600_000,
        "created at start"
    );
    assert_eq!(time_of("open_time"), time_of("created_time"));
    assert!(time_of("close_time") > now_ms && time_of("latest_expiration_time") > time_of("close_time"));
    assert_eq!((m["result"].as_str(), m["settlement_value_dollars"].is_null()), (Some(""), true));
    // The quote is the book's top.
    let exchange = sim.book(market).expect("book");
    let best_yes = exchange.yes.last().map_or(Price(0), |l| l.0);
    let best_no = exchange.no.last().map_or(Price(0), |l| l.0);
    assert_eq!(
        (dollars(&m["yes_bid_dollars"]), dollars(&m["yes_ask_dollars"])),
        (best_yes, best_no.complement())
    );
    // The order book is the exchange's, ascending, as strings.
    let side = |v: &Value| -> Vec<(Price, Qty)> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|l| (dollars(&l[0]), l[1].as_str().and_then(Qty::parse_fp).expect("count")))
            .collect()
    };
    assert_eq!(side(&book["orderbook_fp"]["yes_dollars"]), exchange.yes);
    assert_eq!(side(&book["orderbook_fp"]["no_dollars"]), exchange.no);
    // Every trade the WebSocket sent is on REST with the same id, prices, count, side and time.
    let rest_trades = trades["trades"].as_array().expect("trades");
    for t in &ws_trades {
        let r = rest_trades
            .iter()
            .find(|r| r["trade_id"] == t["trade_id"])
            .unwrap_or_else(|| panic!("{t} not on REST"));
        for key in [
            "yes_price_dollars",
            "no_price_dollars",
            "count_fp",
            "taker_outcome_side",
            "taker_side",
            "taker_book_side",
            "is_block_trade",
        ] {
            assert_eq!(r[key], t[key], "{key} of {}", t["trade_id"]);
        }
        assert_eq!(r["ticker"], t["market_ticker"]);
        assert_eq!(
            r["created_time"].as_str().and_then(parse_rfc3339_ms),
            t["ts_ms"].as_i64(),
            "to the millisecond"
        );
    }
}

#[tokio::test]
async fn bad_requests_get_kalshis_refusals() {
    let sim = Simulator::start(cfg(market_names(1)));
    let addr = sim.bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let base = sim.rest_url(addr);

    for (path, status) in [
        ("/markets?limit=1001", 400),
        ("/markets?status=active", 400),
        ("/markets/trades?limit=1001", 400),
        ("/markets?cursor=not-ours", 400),
        ("/markets/NO-SUCH", 404),
        ("/markets/NO-SUCH/orderbook", 404),
        ("/series/SIM", 404),
    ] {
        let (got, body) = get(&base, path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["message"].is_string(), "{path}: {body}");
    }
    let (_, body) = get(&base, "/markets?status=active").await;
    assert_eq!(body["message"], "invalid status filter");

    sim.rest_throttle(1, Some(Duration::from_secs(3)));
    let response = http().get(format!("{base}/markets")).send().await.expect("answer");
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("3"));
    sim.rest_fail(1, 502);
    assert_eq!(get(&base, "/markets").await.0, 502);
    assert_eq!(get(&base, "/markets").await.0, 200);
    let stats = sim.stats();
    assert_eq!((stats.rest_throttled, stats.rest_failed), (1, 1));
}

/// Lifecycle frames on a `market_lifecycle_v2` subscription until `pred` holds for one.
async fn lifecycle_until<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let v = next_json(ws).await;
        if v["type"] == "market_lifecycle_v2" || v["type"] == "event_lifecycle" {
            let done = pred(&v);
            seen.push(v);
            if done {
                return seen;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_schedule_opens_new_events_and_closes_determines_and_settles_older_markets() {
    let period = Duration::from_secs(60);
    let first = vec!["KXSIM-E0-T1".to_owned(), "KXSIM-E0-T2".to_owned()];
    let sim = Simulator::start(SimConfig { rate: 50, new_market_every: Some(period), ..cfg(first.clone()) });
    let (mut ws, _) =
        tokio_tungstenite::client_async("ws://sim.invalid/trade-api/ws/v2", sim.connect_in_memory())
            .await
            .expect("handshake");
    let subscribe = json!({"id": 1, "cmd": "subscribe", "params": {"channels": ["market_lifecycle_v2"]}});
    ws.send(Message::text(subscribe.to_string())).await.expect("send");

    // Round 1: a new event of the series, announced, then each market created and activated.
    let round1 = lifecycle_until(&mut ws, |v| {
        v["msg"]["event_type"] == "activated" && v["msg"]["market_ticker"] == "KXSIM-R0001-T66"
    })
    .await;
    let kinds: Vec<String> = round1
        .iter()
        .map(|v| {
            format!(
                "{} {}",
                v["msg"]["event_type"].as_str().unwrap_or("event"),
                v["msg"]["market_ticker"].as_str().or(v["msg"]["event_ticker"].as_str()).unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "event KXSIM-R0001",
            "created KXSIM-R0001-T33",
            "activated KXSIM-R0001-T33",
            "created KXSIM-R0001-T66",
            "activated KXSIM-R0001-T66"
        ]
    );
    assert_eq!(round1[0]["msg"]["series_ticker"], "KXSIM");
    let (_, listed) = get_in_memory(&sim, "/trade-api/v2/markets?series_ticker=KXSIM&status=open").await;
    let open: Vec<&str> =
        listed["markets"].as_array().expect("markets").iter().filter_map(|m| m["ticker"].as_str()).collect();
    assert_eq!(open, ["KXSIM-E0-T1", "KXSIM-E0-T2", "KXSIM-R0001-T33", "KXSIM-R0001-T66"]);
    assert_eq!(open.len(), first.len() + MARKETS_PER_EVENT);

    // The first markets trade for OPEN_ROUNDS rounds, close (no message: their close_ts said
    // so), are determined a round later and settle the round after.
    let settled = lifecycle_until(&mut ws, |v| {
        v["msg"]["event_type"] == "settled" && v["msg"]["market_ticker"] == "KXSIM-E0-T2"
    })
    .await;
    let about_first: Vec<String> = settled
        .iter()
        .filter(|v| v["msg"]["market_ticker"].as_str().is_some_and(|t| t.starts_with("KXSIM-E0")))
        .map(|v| {
            format!(
                "{} {}",
                v["msg"]["event_type"].as_str().unwrap_or(""),
                v["msg"]["market_ticker"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        about_first,
        ["determined KXSIM-E0-T1", "determined KXSIM-E0-T2", "settled KXSIM-E0-T1", "settled KXSIM-E0-T2"]
    );
    let determined = settled.iter().find(|v| v["msg"]["event_type"] == "determined").expect("determined");
    assert!(["yes", "no"].contains(&determined["msg"]["result"].as_str().unwrap_or("")), "{determined}");
    let meta = sim.market_meta("KXSIM-E0-T1").expect("kept");
    assert_eq!(meta.phase, Phase::Settled);
    assert_eq!(
        sim.book("KXSIM-E0-T1").map(|b| b.yes.len() + b.no.len()),
        Some(0),
        "a settled market has no book"
    );

    let (_, m) = get_in_memory(&sim, "/trade-api/v2/markets/KXSIM-E0-T1").await;
    assert_eq!(m["market"]["status"], "finalized");
    assert!(m["market"]["settlement_ts"].as_str().and_then(parse_rfc3339_ms).is_some());
    assert!(["1.0000", "0.0000"].contains(&m["market"]["settlement_value_dollars"].as_str().unwrap_or("")));
    assert!(["yes", "no"].contains(&m["market"]["result"].as_str().unwrap_or("")));
    let (_, settled_list) = get_in_memory(&sim, "/trade-api/v2/markets?status=settled").await;
    let settled_tickers: Vec<&str> = settled_list["markets"]
        .as_array()
        .expect("markets")
        .iter()
        .filter_map(|m| m["ticker"].as_str())
        .collect();
    assert_eq!(settled_tickers, ["KXSIM-E0-T1", "KXSIM-E0-T2"]);
    // Markets of round 1 close after their own three rounds: by now (round 5) they are
    // determined.
    let (_, r1) = get_in_memory(&sim, "/trade-api/v2/markets?event_ticker=KXSIM-R0001").await;
    assert!(r1["markets"].as_array().expect("markets").iter().all(|m| m["status"] == "determined"), "{r1}");

    // A closed market trades no more: its trades stop with its close.
    let (_, before) = get_in_memory(&sim, "/trade-api/v2/markets/trades?ticker=KXSIM-E0-T1&limit=1").await;
    tokio::time::sleep(period).await;
    let (_, after) = get_in_memory(&sim, "/trade-api/v2/markets/trades?ticker=KXSIM-E0-T1&limit=1").await;
    assert_eq!(before["trades"], after["trades"]);
}
