//! The Kalshi REST client against the simulator's REST API on 127.0.0.1 (pagination, faults,
//! signing, the request budget), and against a stand-in server for answers the simulator never
//! gives (garbage, a cursor that loops). Counts requests on both sides; never times them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tickd::dev::sim::{SimAuth, SimConfig, Simulator, market_names};
use tickd::kalshi::rest::{
    MarketFilter, RestClient, RestConfig, RestError, RetryPolicy, StatusFilter, TradeFilter,
};
use tickd::kalshi::sign::Credentials;
use tickd::telemetry::rest::{Endpoint, Outcome, RestMetrics};
use tickd::tick::{Name, Side};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const KEY_ID: &str = "a952bcbe-ec3b-4b5b-b8f9-11dae589608c";

fn sim_config(markets: Vec<String>) -> SimConfig {
    SimConfig { markets, rate: 2_000, lifecycle_every: 0, ..SimConfig::default() }
}

async fn sim_on_tcp(cfg: SimConfig) -> (Simulator, SocketAddr) {
    let sim = Simulator::start(cfg);
    let addr = sim.bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    (sim, addr)
}

/// Retries quick enough for a test: 10 ms, 20 ms, 40 ms.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retries: 3,
        max_retry_after: Duration::from_secs(2),
    }
}

fn config(base: &str) -> RestConfig {
    RestConfig {
        feed: Name::from("test"),
        base: url::Url::parse(base).expect("base"),
        rate: 1_000,
        timeout: Duration::from_secs(10),
        credentials: None,
        retry: quick_retries(),
    }
}

fn client(cfg: RestConfig) -> (RestClient, Arc<RestMetrics>) {
    let metrics = Arc::new(RestMetrics::default());
    (RestClient::new(cfg, metrics.clone()).expect("client"), metrics)
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kalshi").join(name)
}

fn requests_to(sim: &Simulator, path: &str) -> usize {
    sim.rest_requests().iter().filter(|r| r.split('?').next() == Some(path)).count()
}

#[tokio::test]
async fn markets_are_listed_page_by_page_until_the_cursor_comes_back_empty() {
    let (sim, addr) = sim_on_tcp(sim_config(market_names(20))).await;
    let (rest, metrics) = client(config(&sim.rest_url(addr)));

    let filter = MarketFilter { page_size: Some(10), ..MarketFilter::default() };
    let markets = rest.list_markets(&filter).await.expect("listed");

    let tickers: Vec<String> = markets.iter().map(|m| m.ticker.clone()).collect();
    assert_eq!(tickers, market_names(20));
    // Two full pages, then the empty page that carries the empty cursor.
    assert_eq!(requests_to(&sim, "/trade-api/v2/markets"), 3);
    assert_eq!(metrics.requests(Endpoint::Markets, Outcome::Ok), 3);
    let m = &markets[0];
    assert_eq!(m.event_ticker.as_deref(), Some("SIM-MKT"));
    assert_eq!(m.status.as_ref().map(|s| s.as_str()), Some("active"));
    assert!(m.open_ms.is_some() && m.close_ms.is_some() && m.yes_ask.is_some());
}

#[tokio::test]
async fn markets_are_filtered_by_series_event_status_and_ticker() {
    let names = ["KXA-E1-T1", "KXA-E1-T2", "KXA-E2-T1", "KXB-E1-T1"].map(String::from).to_vec();
    let (sim, addr) = sim_on_tcp(sim_config(names)).await;
    let (rest, _) = client(config(&sim.rest_url(addr)));
    let tickers = |ms: Vec<tickd::kalshi::rest::Market>| ms.into_iter().map(|m| m.ticker).collect::<Vec<_>>();

    let series = rest.list_markets(&MarketFilter::series("KXA")).await.expect("series");
    assert!(series.iter().all(|m| m.series_ticker.as_deref() == Some("KXA")), "{series:?}");
    assert_eq!(tickers(series), ["KXA-E1-T1", "KXA-E1-T2", "KXA-E2-T1"]);
    let event = rest.list_markets(&MarketFilter::event("KXA-E1")).await.expect("event");
    assert_eq!(tickers(event), ["KXA-E1-T1", "KXA-E1-T2"]);
    let open = MarketFilter {
        status: Some(StatusFilter::Open),
        tickers: vec!["KXB-E1-T1".into()],
        ..MarketFilter::default()
    };
    assert_eq!(tickers(rest.list_markets(&open).await.expect("open")), ["KXB-E1-T1"]);
    let settled = MarketFilter { status: Some(StatusFilter::Settled), ..MarketFilter::default() };
    assert!(rest.list_markets(&settled).await.expect("settled").is_empty());
    assert!(rest.market("NO-SUCH-MARKET").await.expect("answered").is_none());
}

#[tokio::test]
async fn trades_come_back_newest_first_over_pages_with_the_ids_the_websocket_sent() {
    let (sim, addr) = sim_on_tcp(sim_config(market_names(2))).await;
    let (rest, _) = client(config(&sim.rest_url(addr)));
    // Let the exchange trade a while, then freeze it.
    let market = "SIM-MKT-001";
    let enough = TradeFilter { ticker: Some(market.into()), page_size: Some(25), ..TradeFilter::default() };
    for attempt in 0.. {
        assert!(attempt < 600, "the exchange made no 25 trades in SIM-MKT-001");
        tokio::time::sleep(Duration::from_millis(50)).await;
        if rest.trade_pages(&enough).next_page().await.is_ok_and(|p| p.is_some_and(|t| t.len() == 25)) {
            break;
        }
    }
    sim.pause();

    let filter = TradeFilter { ticker: Some(market.into()), page_size: Some(7), ..TradeFilter::default() };
    let paged = rest.list_trades(&filter).await.expect("paged");
    let whole = rest
        .list_trades(&TradeFilter {
            ticker: Some(market.into()),
            page_size: Some(1000),
            ..TradeFilter::default()
        })
        .await
        .expect("whole");

    assert_eq!(paged, whole, "pages join up into the same list");
    assert!(whole.iter().all(|t| t.market == market && t.taker_side.is_some() && t.block.is_some()));
    let times: Vec<i64> = whole.iter().map(|t| t.created_ms.expect("time")).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let mut ids: Vec<&str> = whole.iter().map(|t| t.trade_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), whole.len(), "no trade twice");
    // A time window keeps only its trades.
    let newest_s = times[0] / 1000;
    let recent = rest
        .list_trades(&TradeFilter {
            ticker: Some(market.into()),
            min_ts: Some(newest_s),
            max_ts: Some(newest_s),
            page_size: None,
        })
        .await
        .expect("window");
    assert!(!recent.is_empty() && recent.iter().all(|t| t.created_ms.expect("time") / 1000 == newest_s));
}

#[tokio::test]
async fn the_order_book_is_the_exchange_book() {
    let (sim, addr) = sim_on_tcp(sim_config(market_names(1))).await;
    let (rest, _) = client(config(&sim.rest_url(addr)));
    sim.pause();
    let market = "SIM-MKT-001";

    let book = rest.orderbook(market, None).await.expect("book").expect("known market");
    let top = rest.orderbook(market, Some(2)).await.expect("book").expect("known market");

    let exchange = sim.book(market).expect("book");
    assert_eq!(book, exchange);
    assert_eq!(top.yes, exchange.yes[exchange.yes.len().saturating_sub(2)..].to_vec());
    assert_eq!(top.no, exchange.no[exchange.no.len().saturating_sub(2)..].to_vec());
    assert!(rest.orderbook("NO-SUCH-MARKET", None).await.expect("answered").is_none());
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_the_call_succeeds() {
    let (sim, addr) = sim_on_tcp(sim_config(market_names(1))).await;
    let (rest, metrics) = client(config(&sim.rest_url(addr)));
    sim.rest_throttle(2, Some(Duration::from_secs(1)));

    let market = rest.market("SIM-MKT-001").await.expect("succeeds after the 429s");

    assert!(market.is_some());
    assert_eq!((sim.stats().rest_throttled, sim.stats().rest_requests), (2, 3));
    assert_eq!(metrics.requests(Endpoint::Market, Outcome::RateLimited), 2);
    assert_eq!(metrics.requests(Endpoint::Market, Outcome::Ok), 1);
    assert_eq!(metrics.retries(Endpoint::Market), 2);
    assert_eq!(metrics.failing_since_us(), None);
}

#[tokio::test]
async fn server_errors_are_retried_and_a_call_that_keeps_failing_says_so_until_one_succeeds() {
    let (sim, addr) = sim_on_tcp(sim_config(market_names(1))).await;
    let (rest, metrics) = client(config(&sim.rest_url(addr)));

    sim.rest_fail(2, 502);
    assert!(rest.market("SIM-MKT-001").await.expect("third try works").is_some());
    assert_eq!(metrics.requests(Endpoint::Market, Outcome::ServerError), 2);

    sim.rest_fail(100, 503);
    let err = rest.market("SIM-MKT-001").await.expect_err("every try fails");
    assert!(matches!(err, RestError::Status { status: 503, .. }), "{err}");
    assert!(err.is_retriable() && err.is_outage());
    // The first try and three retries.
    assert_eq!(metrics.requests(Endpoint::Market, Outcome::ServerError), 2 + 4);
    let since = metrics.failing_since_us().expect("failing");
    assert!(metrics.last_error().is_some_and(|e| e.contains("503")));

    // Still failing: the run keeps its start.
    assert!(rest.orderbook("SIM-MKT-001", None).await.is_err());
    assert_eq!(metrics.failing_since_us(), Some(since));
    sim.rest_fail(0, 503);
    assert!(rest.orderbook("SIM-MKT-001", None).await.expect("works again").is_some());
    assert_eq!(metrics.failing_since_us(), None);
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_tried_again() {
    let (sim, addr) = sim_on_tcp(sim_config(market_names(1))).await;
    let mut cfg = config(&sim.rest_url(addr));
    cfg.timeout = Duration::from_millis(200);
    cfg.retry.max_retries = 1;
    let (rest, metrics) = client(cfg);
    sim.rest_delay(Duration::from_secs(30));

    let err = rest.market("SIM-MKT-001").await.expect_err("too slow");

    assert!(matches!(err, RestError::Timeout(_)), "{err}");
    assert_eq!(metrics.requests(Endpoint::Market, Outcome::Timeout), 2);
    assert_eq!(sim.stats().rest_requests, 2);
    sim.rest_delay(Duration::ZERO);
    assert!(rest.market("SIM-MKT-001").await.expect("fast again").is_some());
}

fn sim_auth() -> SimAuth {
    use rsa::pkcs8::DecodePublicKey as _;
    let pem = std::fs::read_to_string(fixture("test_key_pub.pem")).expect("public key");
    SimAuth {
        key_id: KEY_ID.into(),
        public_key: rsa::RsaPublicKey::from_public_key_pem(&pem).expect("public key"),
        max_skew: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn signed_requests_are_verified_by_the_simulator_and_a_wrong_key_is_refused_at_once() {
    let (sim, addr) = sim_on_tcp(SimConfig { auth: Some(sim_auth()), ..sim_config(market_names(3)) }).await;
    let mut cfg = config(&sim.rest_url(addr));
    cfg.credentials = Some(Arc::new(Credentials::load(KEY_ID, &fixture("test_key_pkcs8.pem")).expect("key")));
    let (rest, _) = client(cfg.clone());

    let markets = rest
        .list_markets(&MarketFilter { page_size: Some(2), ..MarketFilter::default() })
        .await
        .expect("listed");
    rest.orderbook("SIM-MKT-002", None).await.expect("book");
    rest.list_trades(&TradeFilter::default()).await.expect("trades");

    assert_eq!(markets.len(), 3);
    let stats = sim.stats();
    assert_eq!((stats.rest_signed, stats.rest_unauthorized), (stats.rest_requests, 0));
    assert_eq!(stats.rest_requests, 4);

    cfg.credentials =
        Some(Arc::new(Credentials::load(KEY_ID, &fixture("test_key_other_pkcs8.pem")).expect("key")));
    let (wrong, metrics) = client(cfg);
    let err = wrong.market("SIM-MKT-001").await.expect_err("refused");
    assert!(err.is_credentials() && !err.is_retriable(), "{err}");
    assert_eq!(metrics.requests(Endpoint::Market, Outcome::Unauthorized), 1, "not retried");
    assert_eq!(sim.stats().rest_unauthorized, 1);
    assert!(metrics.failing_since_us().is_some());
}

#[tokio::test]
async fn requests_beyond_the_feed_budget_wait_their_turn() {
    let (sim, addr) = sim_on_tcp(sim_config(market_names(1))).await;
    let mut cfg = config(&sim.rest_url(addr));
    cfg.rate = 2;
    let (rest, metrics) = client(cfg);

    let calls = (0..6).map(|_| rest.market("SIM-MKT-001"));
    let answers = futures_util::future::join_all(calls).await;

    assert!(answers.iter().all(|a| matches!(a, Ok(Some(_)))));
    assert_eq!(sim.stats().rest_requests, 6);
    // A burst of two goes at once; the other four wait for the budget.
    assert_eq!(metrics.budget_waits(), 4);
}

#[tokio::test]
async fn the_retries_of_a_429_spend_the_budget_too() {
    let (sim, addr) = sim_on_tcp(sim_config(market_names(1))).await;
    let mut cfg = config(&sim.rest_url(addr));
    cfg.rate = 1;
    let (rest, metrics) = client(cfg);
    sim.rest_throttle(2, None);

    assert!(rest.market("SIM-MKT-001").await.expect("third try").is_some());

    assert_eq!(sim.stats().rest_requests, 3);
    assert_eq!(metrics.budget_waits(), 2, "each retry waited for a new token");
}

// ---------------------------------------------------------------- answers the simulator never gives

/// Serves `answers` in order, one per request (keep-alive), each `(status, body)` as JSON.
async fn stand_in(answers: Vec<(u16, &'static str)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut answers = answers.into_iter();
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = Vec::new();
            loop {
                let mut chunk = [0u8; 4096];
                let Ok(n) = tcp.read(&mut chunk).await else { break };
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    let (status, body) = answers.next().unwrap_or((500, "{}"));
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if tcp.write_all(head.as_bytes()).await.is_err()
                        || tcp.write_all(body.as_bytes()).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    format!("http://{addr}/trade-api/v2")
}

#[tokio::test]
async fn an_answer_that_is_not_json_is_an_error_counted_and_not_retried() {
    let base = stand_in(vec![(200, "<html>maintenance</html>")]).await;
    let (rest, metrics) = client(config(&base));

    let err = rest.market("A").await.expect_err("garbage");

    assert!(matches!(err, RestError::Malformed(_)) && !err.is_retriable(), "{err}");
    assert_eq!(metrics.requests(Endpoint::Market, Outcome::Malformed), 1);
    assert!(metrics.failing_since_us().is_some());
}

#[tokio::test]
async fn unusable_items_are_left_out_and_counted_and_null_lists_are_empty() {
    let base = stand_in(vec![
        (200, r#"{"markets": [{"ticker": "A", "status": 5}, {"title": "no ticker"}, 7, {"ticker": "B"}], "cursor": "x"}"#),
        (200, r#"{"markets": null, "cursor": ""}"#),
        (200, r#"{"trades": [{"trade_id": "t1", "ticker": "A", "yes_price_dollars": "0.4200", "count_fp": "3.00", "taker_side": "no"}], "cursor": null}"#),
        (200, r#"{"cursor": ""}"#),
    ])
    .await;
    let (rest, metrics) = client(config(&base));

    let markets = rest.list_markets(&MarketFilter::default()).await.expect("listed");
    let trades = rest.list_trades(&TradeFilter::default()).await.expect("listed");
    let shapeless = rest.list_markets(&MarketFilter::default()).await.expect_err("no markets array");

    assert_eq!(markets.iter().map(|m| m.ticker.as_str()).collect::<Vec<_>>(), ["A", "B"]);
    assert_eq!(markets[0].status, None, "a status of the wrong type is not given");
    assert_eq!(metrics.dropped(Endpoint::Markets), 2);
    assert_eq!(trades.len(), 1);
    assert_eq!((trades[0].taker_side, trades[0].block, trades[0].created_ms), (Some(Side::No), None, None));
    assert!(matches!(shapeless, RestError::Malformed(_)), "{shapeless}");
}

#[tokio::test]
async fn a_cursor_that_comes_back_stops_the_listing() {
    let page = r#"{"markets": [{"ticker": "A"}], "cursor": "same"}"#;
    let base = stand_in(vec![(200, page), (200, page), (200, page)]).await;
    let (rest, metrics) = client(config(&base));

    let err = rest.list_markets(&MarketFilter::default()).await.expect_err("loop");

    assert!(matches!(err, RestError::CursorLoop(_)), "{err}");
    assert_eq!(metrics.requests_to(Endpoint::Markets), 2);
}

#[tokio::test]
async fn nothing_listening_is_a_transport_failure_that_is_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let (rest, metrics) = client(config(&format!("http://{addr}/trade-api/v2")));

    let err = rest.orderbook("A", None).await.expect_err("refused");

    assert!(matches!(err, RestError::Transport(_)) && err.is_retriable(), "{err}");
    assert_eq!(metrics.requests(Endpoint::Orderbook, Outcome::Transport), 4);
    assert_eq!(metrics.retries(Endpoint::Orderbook), 3);
}
