//! The dashboard port end to end: the simulator feeds the daemon (both in this process, on
//! 127.0.0.1: the very `App` that `tickd run` runs, built from the same config file), which
//! records into PostgreSQL and serves the stream; the tests are its clients. They assert on
//! what a client sees (frames, close codes, HTTP statuses and headers), on rows in
//! PostgreSQL, on the dashboard's counters and on the daemon's log lines, as
//! `docs/dashboard.md` describes them.
//!
//! Every wait is a bounded poll of state (an HTTP answer, a query, a counter of the daemon's
//! `Health`, a client's frames) or a read with a deadline that fails with what it saw; log
//! lines are only asserted on, once what they report has happened. The slow-client test reads
//! the kernel's view of its connection (`/proc/net/tcp`) to know when the daemon can no
//! longer write to it, and counts the frames of a client subscribed to everything (each frame
//! of the daemon's stream reaches it) to know that the stream has since moved on by more
//! frames than a client may be behind.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::app::{TestApp, log_lines, log_text, spawn_app};
use common::daemon::{
    DaemonConfig, scalar, serve, stored_trade_ids, texts, toml_str, us, wait_caught_up,
    wait_sent_trades_stored,
};
use common::pg::TestDb;
use common::stream::{
    Client, Collector, Event, bearer_request, ensure_open_files, header, http_get, request, rss_kb,
    subscribe, tcp_queues, try_rss_kb, upgrade_headers,
};
use serde_json::{Value, json};
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tickd::tick::now_micros;
use tokio::time::{Instant, sleep};

/// The token every test daemon requires.
const TOKEN: &str = "dashboard-test-token-0123456789";
/// How long a daemon may take to start, connect, subscribe and be ready.
const LIVE: Duration = Duration::from_secs(60);
/// How long a command's reply may take.
const REPLY: Duration = Duration::from_secs(20);
/// How long the stream or the database may take to catch up with the simulator.
const SETTLE: Duration = Duration::from_secs(60);
/// How long a daemon may take to stop.
const STOP: Duration = Duration::from_secs(30);

/// A daemon with its simulator and database.
struct Rig {
    sim: Simulator,
    /// The daemon, holding the test's database.
    app: TestApp,
    /// The database's URL.
    url: String,
    /// The dashboard's address.
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Starts a simulator of `markets` markets at `rate` events/s (paused when `paused`) and a
/// daemon with the dashboard token set and `tune` applied, and waits until `/readyz` says 200.
async fn start(markets: usize, rate: u32, paused: bool, tune: impl FnOnce(&mut DaemonConfig)) -> Rig {
    let db = TestDb::new().await;
    // Heartbeats a minute apart: nothing but market data on the feed's connection.
    let sim = Simulator::start(SimConfig {
        markets: market_names(markets),
        rate,
        heartbeat: Duration::from_secs(60),
        ..SimConfig::default()
    });
    if paused {
        sim.pause();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config =
        DaemonConfig::new(&dir.path().join("state"), &db.url, &serve(&sim).await, &sim.markets());
    config.dashboard("token", &toml_str(TOKEN));
    tune(&mut config);
    let url = db.url.clone();
    let app = spawn_app(dir.path(), "tickd", &config).await.with_db(db);
    let addr = app.dashboard();
    app.wait_until("/readyz to answer 200", LIVE, || async {
        http_get(addr, "/readyz", &[]).await.status == 200
    })
    .await;
    Rig { sim, app, url, addr, _dir: dir }
}

impl Rig {
    /// Stops the daemon as SIGTERM does and checks that it stopped cleanly, as `tickd run`
    /// exiting 0 does. The stop waits for the stream connections to end, so a connection
    /// seen gone before it (the `clients` counter) has logged why by then.
    async fn stop(&mut self) {
        let stopped = self.app.stop(STOP).await;
        assert!(stopped.is_ok(), "a clean stop: {stopped:?}; log:\n{}", log_text());
    }
}

/// `SELECT count(*) FROM <table> WHERE market = '<market>'`.
async fn count_of(url: &str, table: &str, market: &str) -> i64 {
    scalar(url, &format!("SELECT count(*) FROM {table} WHERE market = '{market}'")).await
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

/// `names` as a set, to compare with [`keys`].
fn key_set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A command's `error` reply: its code and id.
fn error_of(frame: &Value) -> (&str, &Value) {
    assert_eq!(frame["type"], "error", "an error frame: {frame}");
    assert!(frame["message"].as_str().is_some_and(|m| !m.is_empty()), "the error says why: {frame}");
    (frame["code"].as_str().unwrap_or(""), &frame["id"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_command_gets_its_documented_reply_and_history_matches_the_database() {
    // Arrange: a quote of the first market stored, so its state exists.
    let mut rig = start(4, 200, false, |_| {}).await;
    let url = rig.url.clone();
    let markets = rig.sim.markets();
    let (m, n) = (markets[0].clone(), markets[1].clone());
    rig.app
        .wait_until("a stored quote of the first market", LIVE, || async {
            count_of(&url, "quotes", &m).await > 0
        })
        .await;
    let mut c = Client::connect(rig.addr, TOKEN).await;

    // subscribe: `subscribed`, then the current quote, then live frames of that market only.
    c.send(&subscribe(1, &["quotes", "trades"], json!([m, "NO-SUCH-MARKET"]))).await;
    let reply = c.frame("the subscribe reply", REPLY).await;
    assert_eq!(
        reply,
        json!({"type": "subscribed", "id": 1, "channels": ["quotes", "trades"], "markets": [m, "NO-SUCH-MARKET"], "unknown": ["NO-SUCH-MARKET"]})
    );
    let state = c.frame("the quote state", REPLY).await;
    assert_eq!(
        (&state["type"], &state["market"], &state["state"]),
        (&json!("quote"), &json!(m), &json!(true)),
        "{state}"
    );
    let (trade, between) = c
        .until("a live trade of the market", LIVE, |f| f["type"] == "trade" && f["market"] == m.as_str())
        .await;
    assert_eq!(
        keys(&trade),
        key_set(&[
            "type",
            "feed",
            "market",
            "recv_ts",
            "exch_ts",
            "trade_id",
            "price",
            "size",
            "taker_side",
            "block"
        ]),
        "a live trade frame: {trade}"
    );
    for f in &between {
        let of_market = f["type"] == "quote" && f["market"] == m.as_str() && f.get("state").is_none();
        assert!(of_market || f["type"] == "feed", "only live frames of the subscribed market: {f}");
    }
    let mut live_trades = vec![trade];

    // ping: `pong` echoing the id, a string or a number.
    for id in [json!("p1"), json!(42)] {
        let pong = c.ask(json!({"cmd": "ping", "id": id}), REPLY).await;
        assert_eq!((&pong["type"], &pong["id"]), (&json!("pong"), &id), "{pong}");
        assert!(pong["server_time_us"].as_i64().is_some_and(|t| t > 0), "{pong}");
    }

    // status: every feed connection live, the store, one client (this one).
    let status = c.ask(json!({"cmd": "status", "id": "s"}), REPLY).await;
    assert_eq!((&status["type"], &status["clients"]), (&json!("status"), &json!(1)), "{status}");
    let feeds = status["feeds"].as_array().expect("a list of feeds");
    assert!(!feeds.is_empty(), "{status}");
    for feed in feeds {
        assert_eq!(
            (&feed["feed"], &feed["state"], &feed["live"]),
            (&json!("sim"), &json!("live"), &json!(true)),
            "{feed}"
        );
        let documented = [
            "feed",
            "conn",
            "id",
            "state",
            "live",
            "connects",
            "reconnects",
            "gaps",
            "alerts",
            "frames",
            "markets",
            "last_message_age_ms",
        ];
        assert_eq!(keys(feed), key_set(&documented), "the documented fields of a feed entry: {feed}");
    }
    assert!(status["store"]["state"].is_string(), "{status}");

    // unsubscribe: `unsubscribed`, and no trade of that market after it, while the market
    // goes on trading (a later trade of it is stored) and a later trade of another market,
    // subscribed since, arrives.
    c.send(&json!({"cmd": "unsubscribe", "id": "u", "channels": ["trades"], "markets": [m]})).await;
    let (reply, before) = c.until("the unsubscribe reply", REPLY, |f| f["id"] == "u").await;
    live_trades.extend(before.into_iter().filter(|f| f["type"] == "trade"));
    let unsubscribed_at = now_micros();
    assert_eq!(reply, json!({"type": "unsubscribed", "id": "u", "channels": ["trades"], "markets": [m]}));
    let reply = c.ask(subscribe(2, &["trades"], json!([n])), REPLY).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let newest_of_m = format!("SELECT coalesce(max({}), 0) FROM trades WHERE market = '{m}'", us("recv_ts"));
    rig.app
        .wait_until("a trade of the unsubscribed market stored", LIVE, || async {
            scalar(&url, &newest_of_m).await > unsubscribed_at
        })
        .await;
    let filtered_at = scalar(&url, &newest_of_m).await;
    let (_, after) = c
        .until("a trade of the other market received after it", LIVE, |f| {
            f["type"] == "trade" && f["market"] == n.as_str() && f["recv_ts"].as_i64() > Some(filtered_at)
        })
        .await;
    let leaked: Vec<&Value> =
        after.iter().filter(|f| f["type"] == "trade" && f["market"] == m.as_str()).collect();
    assert!(leaked.is_empty(), "trades of {m} after `unsubscribed`: {leaked:?}");

    // history: the stored trades of the market, oldest first, each shaped like the live frame.
    rig.sim.pause();
    wait_sent_trades_stored(&rig.sim, &url, SETTLE).await;
    let history = c
        .ask(json!({"cmd": "history", "id": "h", "channel": "trades", "market": m, "limit": 5000}), REPLY)
        .await;
    assert_eq!(
        (&history["type"], &history["channel"], &history["market"]),
        (&json!("history"), &json!("trades"), &json!(m))
    );
    let rows = history["rows"].as_array().expect("rows").clone();
    let row_text = |r: &Value| {
        format!(
            "{} {} {} {} {} {} {}",
            r["trade_id"].as_str().unwrap_or("?"),
            r["price"],
            r["size"],
            r["taker_side"].as_str().unwrap_or("?"),
            r["block"],
            r["recv_ts"],
            r["exch_ts"]
        )
    };
    let mut from_history: Vec<String> = rows.iter().map(row_text).collect();
    let mut from_sql = texts(
        &url,
        &format!(
            "SELECT trade_id || ' ' || price || ' ' || size || ' ' || taker_side || ' ' || block || ' ' || {} || ' ' || {} / 1000 FROM trades WHERE market = '{m}'",
            us("recv_ts"),
            us("exch_ts")
        ),
    )
    .await;
    assert!(!from_sql.is_empty(), "trades of {m} are stored");
    from_history.sort();
    from_sql.sort();
    assert_eq!(from_history, from_sql, "history rows vs the trades table");
    let times: Vec<i64> = rows.iter().map(|r| r["exch_ts"].as_i64().expect("exch_ts")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first: {times:?}");
    for live in &live_trades {
        let row = rows.iter().find(|r| r["trade_id"] == live["trade_id"]);
        assert_eq!(row, Some(live), "the history row of a trade received live");
    }
    let newest = c
        .ask(json!({"cmd": "history", "id": "h5", "channel": "trades", "market": m, "limit": 5}), REPLY)
        .await;
    let newest: Vec<i64> =
        newest["rows"].as_array().expect("rows").iter().map(|r| r["exch_ts"].as_i64().unwrap_or(0)).collect();
    assert_eq!(newest, times[times.len() - 5..].to_vec(), "limit 5: the five newest, oldest first");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_excessive_commands_get_errors_and_the_documented_close_codes() {
    // Arrange
    let mut rig = start(3, 100, false, |c| {
        c.dashboard("max_connections", "4")
            .dashboard("max_subscriptions", "4")
            .dashboard("commands_per_minute", "20")
            .dashboard("max_frame_bytes", "1024");
    })
    .await;
    let markets = rig.sim.markets();

    // A full server refuses the next upgrade with 503, and takes one again once a client left.
    let mut full = Vec::new();
    for _ in 0..4 {
        full.push(Client::connect(rig.addr, TOKEN).await);
    }
    let auth = format!("Bearer {TOKEN}");
    let mut headers = upgrade_headers();
    headers.push(("Authorization", &auth));
    let refused = http_get(rig.addr, "/ws", &headers).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.json()["error"].is_string(), "{refused:?}");
    assert_eq!(rig.app.dashboard_count(|d| &d.rejected_full), 1, "the refusal is counted");
    drop(full);
    let deadline = Instant::now() + REPLY;
    let mut c = loop {
        match Client::open(bearer_request(rig.addr, TOKEN), None).await {
            Ok((mut c, _)) => {
                c.hello().await;
                break c;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "no room after every client left: {e}");
                sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // Act and assert: one error frame per bad command, the id echoed when there is one.
    let cases: Vec<(&str, &str, Value)> = vec![
        (r#"{"cmd": "ping", "id": 1"#, "invalid_request", Value::Null),
        ("[1, 2]", "invalid_request", Value::Null),
        (r#"{"cmd": "ping"}"#, "invalid_request", Value::Null),
        (r#"{"cmd": "ping", "id": [1]}"#, "invalid_request", Value::Null),
        (r#"{"cmd": "fly", "id": 7}"#, "invalid_request", json!(7)),
        (r#"{"cmd": "subscribe", "id": 8, "markets": "all"}"#, "invalid_request", json!(8)),
        (r#"{"cmd": "history", "id": "h", "channel": "trades"}"#, "invalid_request", json!("h")),
        (
            r#"{"cmd": "history", "id": "l", "channel": "trades", "market": "M", "limit": 5001}"#,
            "invalid_request",
            json!("l"),
        ),
        (
            r#"{"cmd": "subscribe", "id": 9, "channels": ["nope"], "markets": "all"}"#,
            "subscription_failed",
            json!(9),
        ),
    ];
    for (text, code, id) in &cases {
        c.send_text(text).await;
        let frame = c.frame(&format!("the reply to {text}"), REPLY).await;
        assert_eq!(error_of(&frame), (*code, id), "reply to {text}: {frame}");
    }
    // Four (channel, market) pairs at most: five at once fail, and so does going past four in
    // two steps; the same pairs again are not counted twice.
    let five: Vec<String> = (0..5).map(|i| format!("M{i}")).collect();
    let frame = c.ask(subscribe(10, &["trades"], json!(five)), REPLY).await;
    assert_eq!(error_of(&frame), ("subscription_failed", &json!(10)), "{frame}");
    let three = json!(markets[..3]);
    for id in [11, 12] {
        let frame = c.ask(subscribe(id, &["quotes"], three.clone()), REPLY).await;
        assert_eq!(frame["type"], "subscribed", "{frame}");
    }
    let frame = c.ask(subscribe(13, &["trades"], json!(["M1", "M2"])), REPLY).await;
    assert_eq!(error_of(&frame), ("subscription_failed", &json!(13)), "{frame}");
    let pong = c.ask(json!({"cmd": "ping", "id": "still-open"}), REPLY).await;
    assert_eq!(pong["type"], "pong", "the connection survives refused commands: {pong}");

    // A frame larger than max_frame_bytes: closed with 1009.
    let mut big = Client::connect(rig.addr, TOKEN).await;
    big.send_text(&format!("{{\"cmd\": \"ping\", \"id\": \"{}\"}}", "x".repeat(2000))).await;
    let (end, _) = big.end("the close after an oversized frame", REPLY).await;
    assert_eq!(end, Event::Closed(Some(1009)));
    assert_eq!(rig.app.dashboard_count(|d| &d.oversized), 1, "the oversized frame is counted");

    // More than commands_per_minute: a rate_limited error, then closed with 4029, while the
    // client goes on sending.
    let mut chatty = Client::connect(rig.addr, TOKEN).await;
    for i in 0..25 {
        chatty.send(&json!({"cmd": "ping", "id": i})).await;
    }
    let padding = "x".repeat(900);
    for i in 25..400 {
        if !chatty.try_send_text(&json!({"cmd": "ping", "id": i, "pad": padding}).to_string()).await {
            break;
        }
    }
    let (end, frames) = chatty.end("the close after too many commands", REPLY).await;
    let pongs = frames.iter().filter(|f| f["type"] == "pong").count();
    let errors: Vec<&Value> = frames.iter().filter(|f| f["type"] == "error").collect();
    assert_eq!(pongs, 20, "the first 20 commands are answered: {frames:?}");
    assert_eq!(errors.len(), 1, "one error: {frames:?}");
    assert_eq!(errors[0]["code"], "rate_limited", "{frames:?}");
    assert_eq!(end, Event::Closed(Some(4029)));
    assert_eq!(rig.app.dashboard_count(|d| &d.evicted_rate), 1, "the eviction is counted");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_port_checks_host_origin_and_token_before_upgrading_and_reports_health() {
    // Arrange
    let mut rig = start(3, 100, false, |_| {}).await;
    let addr = rig.addr;
    let upgrade = |extra: &[(&'static str, String)]| {
        let mut h: Vec<(String, String)> =
            upgrade_headers().into_iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
        h.extend(extra.iter().map(|(n, v)| (n.to_string(), v.clone())));
        h
    };
    let get = |path: &'static str, headers: Vec<(String, String)>| async move {
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        http_get(addr, path, &h).await
    };
    let bearer = format!("Bearer {TOKEN}");

    // Health and the page need no token.
    let health = get("/healthz", vec![]).await;
    assert_eq!((health.status, health.json()), (200, json!({"status": "alive"})));
    let page = get("/", vec![]).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.header("content-type").is_some_and(|t| t.starts_with("text/html")), "{page:?}");

    // No token, a wrong one (each way): 401 with `WWW-Authenticate: Bearer`, before upgrading.
    for (path, extra) in [
        ("/ws", vec![]),
        ("/ws", vec![("Authorization", "Bearer wrong-token-wrong-token".to_owned())]),
        ("/ws?token=wrong-token-wrong-token", vec![]),
        ("/ws", vec![("Sec-WebSocket-Protocol", "tickd.v1, bearer.wrong-token-wrong-token".to_owned())]),
    ] {
        let r = get(path, upgrade(&extra)).await;
        assert_eq!(r.status, 401, "{path} {extra:?}: {r:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{r:?}");
        assert_eq!(r.json()["error"], "unauthorized", "{r:?}");
    }

    // The token as a bearer header, a query parameter or a subprotocol: the stream opens.
    // With `tickd.v1` offered, the server answers it, and never echoes the token.
    let mut via_header = bearer_request(addr, TOKEN);
    via_header.headers_mut().insert("Sec-WebSocket-Protocol", header("tickd.v1"));
    let via_query = request(addr, &format!("/ws?token={TOKEN}"));
    let mut via_protocol = request(addr, "/ws");
    via_protocol.headers_mut().insert("Sec-WebSocket-Protocol", header(&format!("tickd.v1, bearer.{TOKEN}")));
    for (how, req, protocol) in [
        ("header", via_header, Some("tickd.v1")),
        ("query", via_query, None),
        ("subprotocol", via_protocol, Some("tickd.v1")),
    ] {
        let (mut c, response) =
            Client::open(req, None).await.unwrap_or_else(|e| panic!("the token as a {how} is refused: {e}"));
        let answered =
            response.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap_or("?").to_owned());
        assert_eq!(answered.as_deref(), protocol, "the subprotocol answered to the token as a {how}");
        c.hello().await;
        let pong = c.ask(json!({"cmd": "ping", "id": how}), REPLY).await;
        assert_eq!(pong["type"], "pong");
    }

    // A browser on the daemon's own page may connect; on any other origin it may not.
    let own =
        get("/ws", upgrade(&[("Authorization", bearer.clone()), ("Origin", format!("http://{addr}"))])).await;
    assert_eq!(own.status, 101, "{own:?}");
    let foreign = get(
        "/ws",
        upgrade(&[("Authorization", bearer.clone()), ("Origin", "http://evil.example".to_owned())]),
    )
    .await;
    assert_eq!(foreign.status, 403, "{foreign:?}");
    assert_eq!(foreign.json()["error"], "forbidden", "{foreign:?}");

    // A Host that is not this daemon (DNS rebinding): 403 on every path.
    for path in ["/ws", "/healthz", "/"] {
        let r = get(
            path,
            upgrade(&[("Authorization", bearer.clone()), ("Host", "evil.example:8080".to_owned())]),
        )
        .await;
        assert_eq!(r.status, 403, "{path}: {r:?}");
    }
    let refusals = (
        rig.app.dashboard_count(|d| &d.rejected_unauthorized),
        rig.app.dashboard_count(|d| &d.rejected_forbidden),
    );
    assert_eq!(refusals, (4, 4), "each refusal counted: four 401s, four 403s (one Origin, three Host)");

    // Ready while the feed is live; 503 with a reason while the exchange refuses it; ready again.
    let ready = get("/readyz", vec![]).await;
    assert_eq!((ready.status, &ready.json()["ready"]), (200, &json!(true)), "{ready:?}");
    rig.sim.refuse_handshakes(u32::MAX);
    rig.sim.drop_all();
    rig.app
        .wait_until("/readyz to answer 503", LIVE, || async {
            http_get(addr, "/readyz", &[]).await.status == 503
        })
        .await;
    // The exchange refuses every handshake from now on, so the answer stays 503.
    let not_ready = get("/readyz", vec![]).await;
    assert_eq!(not_ready.status, 503, "{not_ready:?}");
    let not_ready = not_ready.json();
    assert_eq!(not_ready["ready"], false, "{not_ready}");
    let reasons = not_ready["reasons"].as_array().expect("reasons");
    assert!(
        reasons.iter().any(|r| r.as_str().is_some_and(|r| r.contains("sim"))),
        "a reason names the feed: {not_ready}"
    );
    rig.sim.refuse_handshakes(0);
    rig.app
        .wait_until("/readyz to answer 200 again", LIVE, || async {
            http_get(addr, "/readyz", &[]).await.status == 200
        })
        .await;
    rig.stop().await;
}

/// One market's book as a client holds it: price to size, per side.
#[derive(Debug, Default, PartialEq)]
struct Book {
    yes: BTreeMap<i64, i64>,
    no: BTreeMap<i64, i64>,
}

impl Book {
    /// The book of a `book` frame.
    fn from_frame(f: &Value) -> Book {
        let side = |key: &str| {
            f[key]
                .as_array()
                .unwrap_or_else(|| panic!("`{key}` levels in {f}"))
                .iter()
                .map(|l| (l[0].as_i64().expect("a price"), l[1].as_i64().expect("a size")))
                .collect()
        };
        Book { yes: side("yes"), no: side("no") }
    }

    /// The simulator's book of `market` now.
    fn from_sim(sim: &Simulator, market: &str) -> Book {
        let b = sim.book(market).unwrap_or_else(|| panic!("the simulator knows {market}"));
        Book {
            yes: b.yes.iter().map(|(p, q)| (p.0, q.0)).collect(),
            no: b.no.iter().map(|(p, q)| (p.0, q.0)).collect(),
        }
    }

    /// Adds a `delta` frame's change, exactly, removing the level at zero.
    fn apply(&mut self, f: &Value) {
        let ladder = match f["side"].as_str() {
            Some("yes") => &mut self.yes,
            Some("no") => &mut self.no,
            _ => panic!("a delta without a side: {f}"),
        };
        let price = f["price"].as_i64().expect("a price");
        let size = ladder.get(&price).copied().unwrap_or(0) + f["delta"].as_i64().expect("a delta");
        assert!(size >= 0, "a delta takes the level below zero, so one was missed or repeated: {f}");
        if size == 0 {
            ladder.remove(&price);
        } else {
            ladder.insert(price, size);
        }
    }
}

/// The books a client holds, built from `book` frames and the `delta`s after them.
#[derive(Default)]
struct Held {
    books: BTreeMap<String, Book>,
    /// Deltas applied, per market.
    applied: BTreeMap<String, u64>,
}

impl Held {
    /// Takes one frame of a book subscription.
    fn take(&mut self, f: Value) {
        let market = f["market"].as_str().unwrap_or("").to_owned();
        match f["type"].as_str().unwrap_or("") {
            "delta" => {
                let book = self
                    .books
                    .get_mut(&market)
                    .unwrap_or_else(|| panic!("a delta of a market without a book: {f}"));
                book.apply(&f);
                *self.applied.entry(market).or_default() += 1;
            }
            "book" => {
                assert!(self.books.contains_key(&market), "a book of an unwatched market: {f}");
                self.books.insert(market, Book::from_frame(&f));
            }
            "feed" => {}
            _ => panic!("a frame the book channel does not carry: {f}"),
        }
    }
}

/// A client holding the books of `watched`: connected, subscribed to them, and holding the
/// state frames that follow the reply.
async fn hold_books(addr: SocketAddr, watched: &[String]) -> (Client, Held) {
    let mut c = Client::connect(addr, TOKEN).await;
    c.send(&subscribe(1, &["book"], json!(watched))).await;
    let reply = c.frame("the subscribe reply", REPLY).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["unknown"], json!([]), "{reply}");
    let mut held = Held::default();
    for _ in watched {
        let f = c.frame("a book state frame", REPLY).await;
        assert_eq!((&f["type"], &f["state"]), (&json!("book"), &json!(true)), "state frames first: {f}");
        assert!(f.get("stale").is_none(), "a book tickd vouches for: {f}");
        held.books.insert(f["market"].as_str().expect("a market").to_owned(), Book::from_frame(&f));
    }
    let mut markets: Vec<String> = held.books.keys().cloned().collect();
    markets.sort();
    let mut expected = watched.to_vec();
    expected.sort();
    assert_eq!(markets, expected, "one book per watched market");
    (c, held)
}

/// Reads and applies frames until `held` has applied `n` deltas of each of `watched`.
async fn apply_deltas(c: &mut Client, held: &mut Held, watched: &[String], n: u64) {
    let deadline = Instant::now() + LIVE;
    while watched.iter().any(|m| held.applied.get(m).copied().unwrap_or(0) < n) {
        match c.next_by(deadline).await {
            Some(Event::Frame(f)) => held.take(f),
            other => {
                panic!("{other:?} while waiting for {n} deltas of each market; applied {:?}", held.applied)
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_subscribe_to_books_mid_stream_and_apply_the_deltas_hold_the_exchanges_books() {
    // Arrange: the markets have seen deltas before the first client subscribes.
    let mut rig = start(6, 1000, false, |_| {}).await;
    let url = rig.url.clone();
    let markets = rig.sim.markets();
    rig.app
        .wait_until("20 deltas stored for each market", LIVE, || async {
            let mut least = i64::MAX;
            for m in &markets {
                least = least.min(count_of(&url, "book_deltas", m).await);
            }
            least >= 20
        })
        .await;

    // Act: clients subscribe one after another to three markets each, take the books and
    // apply what follows; then the exchange stops.
    let mut clients = Vec::new();
    for i in 0..8 {
        let watched: Vec<String> = (0..3).map(|k| markets[(i + k) % markets.len()].clone()).collect();
        let (mut c, mut held) = hold_books(rig.addr, &watched).await;
        apply_deltas(&mut c, &mut held, &watched, 5).await;
        clients.push((c, held, watched));
    }
    for (c, held, watched) in &mut clients {
        apply_deltas(c, held, watched, 20).await;
    }
    rig.sim.pause();
    wait_caught_up(&rig.sim, SETTLE).await;

    // Assert: everything the exchange sent arrives, and then each client's books are the
    // exchange's.
    for (c, held, watched) in &mut clients {
        let deadline = Instant::now() + SETTLE;
        loop {
            let theirs: BTreeMap<String, Book> =
                watched.iter().map(|m| (m.clone(), Book::from_sim(&rig.sim, m))).collect();
            if theirs == held.books {
                break;
            }
            match c.next_by(deadline).await {
                Some(Event::Frame(f)) => held.take(f),
                other => panic!(
                    "{other:?} before the client's books matched the exchange's:\nours {:#?}\ntheirs {theirs:#?}",
                    held.books
                ),
            }
        }
    }
    rig.stop().await;
}

/// Samples a process's resident memory in the background; the largest sample so far.
struct RssWatch {
    max_kb: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    /// Samples process `pid` every 50 ms from now until dropped.
    fn start(pid: u32) -> RssWatch {
        let max_kb = Arc::new(AtomicU64::new(rss_kb(pid)));
        let max = max_kb.clone();
        let task = tokio::spawn(async move {
            while let Some(kb) = try_rss_kb(pid) {
                max.fetch_max(kb, Ordering::Relaxed);
                sleep(Duration::from_millis(50)).await;
            }
        });
        RssWatch { max_kb, task }
    }

    /// The largest sample so far, in kB.
    fn max_kb(&self) -> u64 {
        self.max_kb.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    /// Stops sampling.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A stream client with a small receive buffer, subscribed to every channel of every market,
/// that reads only when the test says so.
struct Stalling {
    /// The connection, 4 kB of receive buffer.
    client: Client,
    /// Subscribe commands whose state (every book) comes to some 256 kB.
    chunk: u64,
    /// Commands sent so far, for their ids.
    sent: u64,
}

impl Stalling {
    /// Connects with a 4 kB receive buffer, subscribes to everything and reads the state that
    /// follows, sizing [`Stalling::chunk`] from its books.
    async fn open(addr: SocketAddr) -> Stalling {
        let (mut c, _) =
            Client::open(bearer_request(addr, TOKEN), Some(4096)).await.expect("a stream connection");
        c.hello().await;
        let reply = c.ask(subscribe(1, &["trades", "quotes", "book", "feed"], json!("all")), REPLY).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        // The state ends with the feeds' status.
        let (mut book_bytes, deadline) = (0, Instant::now() + REPLY);
        loop {
            match c.next_raw_by(deadline).await {
                Some(Ok(text)) if text.contains("\"type\":\"status\"") => break,
                Some(Ok(text)) if text.contains("\"type\":\"book\"") => book_bytes += text.len() as u64,
                Some(Ok(_)) => {}
                other => panic!("{other:?} instead of the state after subscribing"),
            }
        }
        assert!(book_bytes > 0, "book states after subscribing");
        Stalling { client: c, chunk: (256 * 1024u64).div_ceil(book_bytes), sent: 0 }
    }

    /// Sends `commands` subscribe commands, each bringing the state of every book and quote.
    async fn ask_for_state(&mut self, commands: u64) {
        for _ in 0..commands {
            self.sent += 1;
            self.client.send(&subscribe(1000 + self.sent, &["book", "quotes"], json!("all"))).await;
        }
    }

    /// Stops reading and asks for the state of every book and quote, a chunk at a time,
    /// until the daemon's socket to it holds unsent bytes that no longer move: its window is
    /// shut and the daemon can write no more to it. (Its writer is handed every market's
    /// ticks, so an idle writer would not look like this.) One more chunk then fills the
    /// WebSocket library's buffer in the daemon, so its writer is stuck.
    async fn stall(&mut self, dashboard: SocketAddr) {
        let deadline = Instant::now() + SETTLE;
        let (mut last, mut same) = (None, 0);
        while same < 3 {
            self.ask_for_state(self.chunk).await;
            sleep(Duration::from_millis(100)).await;
            let queued = tcp_queues(dashboard, self.client.local).map(|(tx, _)| tx);
            same = if queued.is_some_and(|q| q > 0) && queued == last { same + 1 } else { 0 };
            assert!(
                Instant::now() < deadline,
                "the daemon's socket to {} never filled: send queue {queued:?}",
                self.client.local
            );
            last = queued;
        }
        self.ask_for_state(self.chunk).await;
    }
}

/// The message of a client closed with 4008.
const CLOSED_SLOW: &str = "Dashboard client closed with 4008: it could not keep up.";

/// The `peer` and `reason` of every log line so far of a client closed with 4008, sorted.
fn closed_slow() -> Vec<(String, String)> {
    let mut closed: Vec<(String, String)> = log_lines()
        .iter()
        .filter(|l| l.message() == CLOSED_SLOW)
        .map(|l| (l.str("peer").to_owned(), l.str("reason").to_owned()))
        .collect();
    closed.sort();
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_resynced_then_closed_while_twenty_readers_and_the_store_miss_nothing() {
    // Arrange: the exchange paused until everyone is subscribed, so every trade it sends is
    // one the readers must get. A client may be 256 frames behind.
    const QUEUE: u64 = 256;
    let mut rig = start(100, 200, true, |c| {
        c.dashboard("client_queue", &QUEUE.to_string())
            .dashboard("slow_client_timeout", "\"10s\"")
            .dashboard("max_resyncs", "1")
            .dashboard("ping_interval", "\"60s\"")
            .dashboard("commands_per_minute", "100000");
    })
    .await;
    let (addr, url) = (rig.addr, rig.url.clone());
    // The first reader takes every channel, so every frame of the stream reaches it: its
    // count of frames is how far the stream has moved on.
    let mut readers: Vec<Collector> = Vec::new();
    for i in 0..20 {
        let mut c = Client::connect(addr, TOKEN).await;
        let channels: &[&str] =
            if i == 0 { &["trades", "quotes", "book", "lifecycle", "feed"] } else { &["trades", "feed"] };
        let reply = c.ask(subscribe(1, channels, json!("all")), REPLY).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        readers.push(c.collect());
    }
    let clock = &readers[0];
    // `a` stalls twice; `b` stalls for good.
    let mut a = Stalling::open(addr).await;
    let mut b = Stalling::open(addr).await;
    rig.sim.resume();
    for r in &readers {
        r.wait("20 trades", LIVE, |t| t.trades.len() >= 20).await;
    }
    // The daemon runs in this process, so this process's memory is sampled: the daemon's,
    // plus the simulator's and the test's clients'. Their share is a few MB, small next to
    // the bound below (the readers keep trade ids; what the stalled clients leave unread
    // waits in the kernel's socket buffers, which RSS does not count). Sampled from here to
    // the end of both stalls.
    let rss_before = rss_kb(std::process::id());
    let rss = RssWatch::start(std::process::id());

    // Act 1: both stall until the daemon cannot write to them, then until the stream has
    // moved on by more frames than they may be behind; then `a` reads again.
    tokio::join!(a.stall(addr), b.stall(addr));
    let seen = clock.with(|t| t.frames);
    clock.wait("the stream to move on", LIVE, |t| t.frames > seen + QUEUE + 16).await;
    let lagged =
        match a.client.skip_until("a lagged frame", SETTLE, "\"lagged\"", |f| f["type"] == "lagged").await {
            Ok(lagged) => lagged,
            Err(end) => {
                panic!("{end:?} before a lagged frame; clients closed with 4008: {:?}", closed_slow())
            }
        };
    let mut state = Vec::new();
    let status = loop {
        let f = a.client.frame("the state after lagged", REPLY).await;
        if f["type"] == "status" {
            break f;
        }
        state.push(f);
    };
    let (live, _) = a.client.until("a live trade after the resync", LIVE, |f| f["type"] == "trade").await;

    // Assert 1: `a` is told how much it missed, then gets the state of everything it
    // subscribes to (quotes, then every book, then the feeds' status), then live frames.
    assert!(lagged["missed"].as_u64().is_some_and(|n| n > 0), "{lagged}");
    assert!(state.iter().all(|f| f["state"] == true), "state frames: {state:?}");
    let quotes = state.iter().take_while(|f| f["type"] == "quote").count();
    let books: BTreeSet<&str> = state[quotes..]
        .iter()
        .map(|f| {
            assert_eq!(f["type"], "book", "quotes, then books: {f}");
            f["market"].as_str().unwrap_or("")
        })
        .collect();
    let markets = rig.sim.markets();
    assert!(quotes > 0, "quote states: {state:?}");
    assert_eq!(books, markets.iter().map(String::as_str).collect(), "a book state for every market");
    assert!(status.get("id").is_none() && status["feeds"].is_array(), "{status}");
    assert!(live.get("state").is_none(), "{live}");

    // Act 2: `a` stalls again within the minute: more resyncs than max_resyncs. `b` never
    // reads again: closed once it has stayed behind for slow_client_timeout.
    a.stall(addr).await;
    let seen = clock.with(|t| t.frames);
    clock.wait("the stream to move on", LIVE, |t| t.frames > seen + QUEUE + 16).await;
    // It reads again while it sends commands, as a page polling the daemon would: the daemon
    // closes it with commands unread, and its close frame must still arrive.
    let a_end = a.client.end_while_pinging("`a` closed", SETTLE, Duration::from_millis(5)).await;
    // `b` reads nothing, so only the daemon knows when it is closed: both are, and gone, once
    // it has closed two clients for being slow and only the readers are left.
    let readers_only = readers.len() as u64;
    rig.app
        .wait("`a` and `b` closed with 4008 and gone", SETTLE, |app| {
            app.dashboard_count(|d| &d.evicted_slow) >= 2
                && app.dashboard_count(|d| &d.clients) == readers_only
        })
        .await;
    let rss_max = rss.max_kb();
    drop(rss);

    // Every trade sent reaches the store and every reader, none of which fell behind.
    rig.sim.pause();
    let sent = wait_sent_trades_stored(&rig.sim, &url, SETTLE).await;
    let sent_set: HashSet<&String> = sent.iter().collect();
    for r in &readers {
        r.wait("every trade sent", SETTLE, |t| {
            let got: HashSet<&String> = t.trades.iter().collect();
            sent_set.is_subset(&got)
        })
        .await;
    }

    // Assert 2
    assert_eq!(a_end, Event::Closed(Some(4008)), "`a`, resynced once already, is closed with 4008");
    for r in &readers {
        r.with(|t| {
            assert!(
                t.lagged.is_empty() && t.errors.is_empty() && t.end.is_none(),
                "a reader: lagged {:?}, errors {:?}, end {:?}",
                t.lagged,
                t.errors,
                t.end
            );
            assert_eq!(t.trades.len(), sent.len(), "each trade once");
        });
    }
    let stored = stored_trade_ids(&url).await;
    let stored_set: HashSet<&String> = stored.iter().collect();
    assert_eq!((stored.len(), stored_set), (sent.len(), sent_set), "the trades table vs the trades sent");
    let grown_mb = rss_max.saturating_sub(rss_before) / 1024;
    assert!(
        grown_mb < 200,
        "the daemon's process grew by {grown_mb} MB while clients stalled ({rss_before} kB before)"
    );
    // The daemon closed `a` and `b` with 4008, each for its own reason, and no one else. (Its
    // stop closes the readers, so it comes after their checks.)
    rig.stop().await;
    let mut expected = vec![
        (a.client.local.to_string(), "fell behind too often".to_owned()),
        (b.client.local.to_string(), "stayed behind".to_owned()),
    ];
    expected.sort();
    assert_eq!(closed_slow(), expected, "the clients closed with 4008, and why");
    assert_eq!(rig.app.dashboard_count(|d| &d.evicted_slow), 2, "two clients closed with 4008");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_get_live_frames_and_dead_ones_are_dropped_by_the_heartbeat() {
    // Arrange: 500 live clients, 19 that never read after the handshake, one watching.
    const LIVE_CLIENTS: usize = 500;
    const DEAD: usize = 19;
    // Both ends of every connection are in this process, the daemon's and the client's.
    ensure_open_files(4 * (LIVE_CLIENTS + DEAD) as u64);
    let mut rig = start(10, 5, false, |c| {
        c.dashboard("ping_interval", "\"3s\"")
            .dashboard("max_connections", &(LIVE_CLIENTS + DEAD + 1).to_string());
    })
    .await;
    let addr = rig.addr;
    // Connected 25 at a time: all at once, the handshakes of a debug build on two shared
    // cores could keep clients that are already connected from answering pings in time.
    const AT_ONCE: usize = 25;
    let mut clients: Vec<Collector> = Vec::new();
    for batch in 0..LIVE_CLIENTS / AT_ONCE {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..AT_ONCE {
            set.spawn(async move {
                let mut c = Client::connect(addr, TOKEN).await;
                let id = (batch * AT_ONCE + i) as u64;
                let reply = c.ask(subscribe(id, &["trades", "quotes"], json!("all")), REPLY).await;
                assert_eq!(reply["type"], "subscribed", "{reply}");
                c.collect()
            });
        }
        while let Some(c) = set.join_next().await {
            clients.push(c.expect("a client connects and subscribes"));
        }
    }

    // Act: everyone gets a live frame; then the dead connect, and are dropped.
    for c in &clients {
        c.wait("a live frame", LIVE, |t| t.live > 0).await;
    }
    let mut dead = Vec::new();
    for _ in 0..DEAD {
        let (c, _) = Client::open(bearer_request(addr, TOKEN), None).await.expect("a stream connection");
        let local = c.local;
        // Held, never read: no pong ever goes back.
        dead.push((local, c.into_inner()));
    }
    let mut watcher = Client::connect(addr, TOKEN).await;
    let status = watcher.ask(json!({"cmd": "status", "id": "full"}), REPLY).await;
    let auth = format!("Bearer {TOKEN}");
    let mut headers = upgrade_headers();
    headers.push(("Authorization", &auth));
    let refused = http_get(addr, "/ws", &headers).await;
    watcher.send(&subscribe(1, &["feed"], json!("all"))).await;
    let deadline = Instant::now() + SETTLE;
    let after = loop {
        match watcher.next_by(deadline).await {
            Some(Event::Frame(f)) if f["type"] == "status" && f["clients"] == json!(LIVE_CLIENTS + 1) => {
                break f;
            }
            Some(Event::Frame(_)) => {}
            other => {
                let mut why: BTreeMap<String, usize> = BTreeMap::new();
                for l in log_lines().iter().filter(|l| l.message().starts_with("Dashboard client")) {
                    *why.entry(format!("{} {}", l.message(), l.str("reason"))).or_default() += 1;
                }
                panic!(
                    "{other:?} before the client count fell back to {}; the daemon's client lines: {why:#?}",
                    LIVE_CLIENTS + 1
                );
            }
        }
    };
    rig.app
        .wait("the heartbeat to drop every dead client", SETTLE, |app| {
            app.dashboard_count(|d| &d.evicted_heartbeat) >= DEAD as u64
        })
        .await;
    let mut late = Client::connect(addr, TOKEN).await;
    let pong = late.ask(json!({"cmd": "ping", "id": "late"}), REPLY).await;

    // Assert
    assert_eq!(status["clients"], json!(LIVE_CLIENTS + DEAD + 1), "{status}");
    assert_eq!(refused.status, 503, "one past max_connections: {refused:?}");
    assert_eq!(after["clients"], json!(LIVE_CLIENTS + 1), "{after}");
    assert_eq!(rig.app.dashboard_count(|d| &d.evicted_heartbeat), DEAD as u64, "one drop per dead client");
    for c in &clients {
        c.with(|t| {
            assert!(
                t.end.is_none() && t.lagged.is_empty(),
                "a live client: end {:?}, lagged {:?}",
                t.end,
                t.lagged
            )
        });
    }
    assert_eq!(pong["type"], "pong", "room again once the dead are gone");
    // The daemon's lines name the dropped clients: the dead ones. (Its stop closes the live
    // clients, so it comes after their checks.)
    rig.stop().await;
    let dropped_peers: BTreeSet<String> = log_lines()
        .iter()
        .filter(|l| l.message() == "Dashboard client dropped." && l.str("reason") == "no answer to pings")
        .map(|l| l.str("peer").to_owned())
        .collect();
    let dead_peers: BTreeSet<String> = dead.iter().map(|(a, _)| a.to_string()).collect();
    assert_eq!(dropped_peers, dead_peers, "the clients dropped by the heartbeat are the dead ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_tickd_is_writing_to_is_kept_by_the_heartbeat_while_a_silent_one_is_dropped() {
    // Arrange: a ping every second; a client may stay behind (and be resynced) for a minute.
    let mut rig = start(100, 200, false, |c| {
        c.dashboard("ping_interval", "\"1s\"")
            .dashboard("slow_client_timeout", "\"60s\"")
            .dashboard("client_queue", "256")
            .dashboard("max_resyncs", "100")
            .dashboard("commands_per_minute", "100000");
    })
    .await;
    let addr = rig.addr;
    let mut busy = Stalling::open(addr).await;

    // Act: `busy` stops reading until tickd cannot write to it, and from then on sends nothing
    // either, not even a pong (it reads no ping). A client that connects after that and never
    // reads nor answers is dropped by the heartbeat: by then `busy` has been silent longer.
    busy.stall(addr).await;
    let (silent, _) = Client::open(bearer_request(addr, TOKEN), None).await.expect("a stream connection");
    let silent_peer = silent.local.to_string();
    let _held = silent.into_inner();
    rig.app
        .wait("the heartbeat to drop the silent client", SETTLE, |app| {
            app.dashboard_count(|d| &d.evicted_heartbeat) >= 1
        })
        .await;
    // `busy` reads again: what it missed, then an answer to a command sent now.
    let lagged =
        busy.client.skip_until("a lagged frame", SETTLE, "\"lagged\"", |f| f["type"] == "lagged").await;
    let sent = busy.client.try_send_text(&json!({"cmd": "ping", "id": "still-here"}).to_string()).await;
    let pong = busy
        .client
        .skip_until("the pong", SETTLE, "still-here", |f| f["type"] == "pong" && f["id"] == "still-here")
        .await;

    // Assert: `busy` was kept, resynced rather than dropped; only the silent client was dropped.
    let lagged = lagged.unwrap_or_else(|end| panic!("`busy` ended before its lagged frame: {end:?}"));
    assert!(lagged["missed"].as_u64().is_some_and(|n| n > 0), "{lagged}");
    assert!(sent && pong.is_ok(), "`busy` is still connected: sent {sent}, pong {pong:?}");
    assert_eq!(rig.app.dashboard_count(|d| &d.evicted_heartbeat), 1, "one client dropped for silence");
    assert_eq!(rig.app.dashboard_count(|d| &d.evicted_slow), 0, "none closed for being slow");
    rig.stop().await;
    let dropped: Vec<String> = log_lines()
        .iter()
        .filter(|l| l.message() == "Dashboard client dropped." && l.str("reason") == "no answer to pings")
        .map(|l| l.str("peer").to_owned())
        .collect();
    assert_eq!(dropped, vec![silent_peer], "the client dropped by the heartbeat is the silent one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_unknown_lists_the_markets_no_feed_follows_as_reloads_change_them() {
    // Arrange: a feed of trades only, on an exchange that trades nothing yet: its markets are
    // followed, and none of them has sent anything.
    let mut rig = start(3, 100, true, |c| {
        c.feed("channels", "[\"trade\"]").feed("lifecycle", "false");
    })
    .await;
    let markets = rig.sim.markets();
    let (kept, dropped, added) = (markets[0].clone(), markets[1].clone(), "KXNEW-26JAN01-T1".to_owned());
    let mut c = Client::connect(rig.addr, TOKEN).await;

    // Act 1
    let named = json!([kept, dropped, added]);
    let before = c.ask(subscribe(1, &["trades", "quotes"], named.clone()), REPLY).await;

    // Act 2: a reload follows `added` and no longer `dropped`.
    let mut settings = rig.app.settings.clone();
    settings.feeds[0].markets = vec![kept.clone(), markets[2].clone(), added.clone()];
    rig.app.reloads.send(settings).await.expect("the daemon takes reloads");
    let deadline = Instant::now() + LIVE;
    let mut id = 1;
    let after = loop {
        id += 1;
        let reply = c.ask(subscribe(id, &["trades"], named.clone()), REPLY).await;
        if reply["unknown"] == json!([dropped]) || Instant::now() > deadline {
            break reply;
        }
        sleep(Duration::from_millis(50)).await;
    };

    // Assert: unknown names only what no feed follows, whether or not it has sent anything.
    assert!(rig.sim.trades_sent().is_empty(), "the exchange has traded nothing");
    assert_eq!(
        before,
        json!({"type": "subscribed", "id": 1, "channels": ["trades", "quotes"], "markets": named, "unknown": [added]})
    );
    assert_eq!(after["type"], "subscribed", "{after}");
    assert_eq!(after["unknown"], json!([dropped]), "after the reload: {after}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_behind_with_commands_in_flight_costs_the_hub_one_state_per_fall() {
    // Arrange: the exchange paused until the clients are subscribed. A client may be 256
    // frames behind.
    const QUEUE: u64 = 256;
    let mut rig = start(100, 200, true, |c| {
        c.dashboard("client_queue", &QUEUE.to_string())
            .dashboard("slow_client_timeout", "\"30s\"")
            .dashboard("max_resyncs", "10")
            .dashboard("ping_interval", "\"60s\"")
            .dashboard("commands_per_minute", "100000");
    })
    .await;
    let addr = rig.addr;
    // Every frame of the stream reaches it: its count is how far the stream has moved on.
    let mut clock = Client::connect(addr, TOKEN).await;
    let reply = clock
        .ask(subscribe(1, &["trades", "quotes", "book", "lifecycle", "feed"], json!("all")), REPLY)
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let clock = clock.collect();
    let mut a = Stalling::open(addr).await;
    rig.sim.resume();

    // Act: `a` stalls with subscribe commands waiting behind the stall, sends more, and the
    // stream moves on further than it may be behind; then it reads everything.
    a.stall(addr).await;
    a.ask_for_state(a.chunk).await;
    let seen = clock.with(|t| t.frames);
    clock.wait("the stream to move on", LIVE, |t| t.frames > seen + QUEUE + 16).await;
    let commands = a.sent;
    let (mut replies, mut lagged) = (0, Vec::new());
    let deadline = Instant::now() + SETTLE;
    while replies < commands {
        match a.client.next_raw_by(deadline).await {
            Some(Ok(text)) if text.contains("\"type\":\"subscribed\"") => replies += 1,
            Some(Ok(text)) if text.contains("\"type\":\"lagged\"") => lagged.push(text),
            Some(Ok(_)) => {}
            other => panic!("{other:?} after {replies} of {commands} replies; lagged {lagged:?}"),
        }
    }
    let (live, _) =
        a.client.until("a live trade", LIVE, |f| f["type"] == "trade" && f.get("state").is_none()).await;
    rig.sim.pause();
    wait_caught_up(&rig.sim, SETTLE).await;
    let falls = rig.app.dashboard_count(|d| &d.lagged);
    rig.app
        .wait("the hub to answer the last fall", REPLY, |app| {
            app.dashboard_count(|d| &d.resync_states) >= falls
        })
        .await;

    // Assert: every command answered; each fall paid for with one state set, however many
    // commands came while it was behind.
    assert!(!lagged.is_empty(), "`a` fell behind");
    assert!(falls >= lagged.len() as u64, "falls {falls}, lagged frames {lagged:?}");
    assert_eq!(rig.app.dashboard_count(|d| &d.resync_states), falls, "state sets the hub built, per fall");
    assert!(live["trade_id"].is_string(), "{live}");
    clock.with(|t| assert!(t.lagged.is_empty() && t.end.is_none(), "the clock: {:?} {:?}", t.lagged, t.end));
    rig.stop().await;
}

/// On one thread (`#[tokio::test]`'s runtime), a burst of frames the feed reads at once is
/// published on the bus before the hub runs again: with a bus ring smaller than the burst, the
/// hub falls behind for certain.
#[tokio::test]
async fn a_hub_that_falls_behind_asks_the_feeds_for_snapshots_and_clients_get_fresh_books() {
    // Arrange: five markets; the hub may be 64 ticks behind the feeds.
    let mut rig = start(5, 50, false, |c| {
        c.top("bus", "{ lossy_capacity = 64 }");
    })
    .await;
    let markets = rig.sim.markets();
    let (mut c, _) = hold_books(rig.addr, &markets).await;
    let connections = rig.sim.stats().connections_total;

    // Act: bursts of exchange events far larger than the ring, until the hub has missed
    // ticks; then a quiet exchange.
    rig.sim.set_rate(50_000);
    rig.app.wait("the hub to fall behind", LIVE, |app| app.dashboard_count(|d| &d.hub_missed) > 0).await;
    rig.sim.set_rate(20);

    // The client is told, then gets a fresh book of every market (one sent as it came, not
    // a state frame), after the last time it was told.
    let (mut told, mut fresh) = (0, BTreeSet::new());
    let deadline = Instant::now() + LIVE;
    while told == 0 || fresh.len() < markets.len() {
        match c.next_by(deadline).await {
            Some(Event::Frame(f)) if f["type"] == "lagged" => {
                assert_eq!(f["source"], "server", "{f}");
                told += 1;
                fresh.clear();
            }
            Some(Event::Frame(f)) if f["type"] == "book" && f.get("state").is_none() => {
                assert!(f.get("stale").is_none(), "{f}");
                fresh.insert(f["market"].as_str().unwrap_or("").to_owned());
            }
            Some(Event::Frame(_)) => {}
            other => panic!("{other:?} with {told} lagged frames and fresh books of {fresh:?}"),
        }
    }
    rig.sim.pause();
    wait_caught_up(&rig.sim, SETTLE).await;
    let (mut late, held) = hold_books(rig.addr, &markets).await;

    // Assert: the books came from snapshots the feed asked for, on the same connection
    // (no reconnect, no repair of its own), and they are the exchange's.
    let asked: BTreeSet<String> = rig
        .sim
        .commands_received()
        .into_iter()
        .filter(|(_, cmd)| cmd["cmd"] == "update_subscription" && cmd["params"]["action"] == "get_snapshot")
        .flat_map(|(_, cmd)| {
            let tickers = cmd["params"]["market_tickers"].as_array().cloned().unwrap_or_default();
            tickers.into_iter().filter_map(|t| t.as_str().map(str::to_owned)).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(asked, markets.iter().cloned().collect(), "get_snapshot asked for every market");
    assert_eq!(rig.sim.stats().connections_total, connections, "the feed did not reconnect");
    let theirs: BTreeMap<String, Book> =
        markets.iter().map(|m| (m.clone(), Book::from_sim(&rig.sim, m))).collect();
    assert_eq!(held.books, theirs, "the books a new subscriber gets are the exchange's");
    let pong = late.ask(json!({"cmd": "ping", "id": "late"}), REPLY).await;
    assert_eq!(pong["type"], "pong");
    rig.stop().await;
}
