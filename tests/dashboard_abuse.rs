//! The dashboard port as an attacker on the network uses it: connections that send half a
//! request and then nothing, more of them than the port takes. The daemon (in this process,
//! against the simulator) must close them at the header deadline, refuse connections past its
//! bound and count them, while the connections already open (a kept-alive health check, a
//! stream client) go on working. Every wait is a read with a deadline or a bounded poll of the
//! daemon's counters.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::app::{TestApp, log_text, spawn_app};
use common::daemon::{DaemonConfig, serve, toml_str};
use common::pg::TestDb;
use common::stream::{Client, HttpResponse, http_get, subscribe};
use serde_json::json;
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// The token the daemon requires.
const TOKEN: &str = "dashboard-test-token-0123456789";
/// How long the daemon may take to start and be ready.
const LIVE: Duration = Duration::from_secs(60);
/// How long an answer may take.
const REPLY: Duration = Duration::from_secs(20);
/// How long the daemon may take to close what it should close.
const SETTLE: Duration = Duration::from_secs(60);

/// Starts a simulator and a daemon with `tune` applied to its `[dashboard]`, and waits until
/// `/readyz` answers 200.
async fn start(tune: impl FnOnce(&mut DaemonConfig)) -> (Simulator, TestApp, SocketAddr, tempfile::TempDir) {
    let db = TestDb::new().await;
    let sim = Simulator::start(SimConfig { markets: market_names(3), rate: 100, ..SimConfig::default() });
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config =
        DaemonConfig::new(&dir.path().join("state"), &db.url, &serve(&sim).await, &sim.markets());
    config.dashboard("token", &toml_str(TOKEN));
    tune(&mut config);
    let app = spawn_app(dir.path(), "tickd", &config).await.with_db(db);
    let addr = app.dashboard();
    app.wait_until("/readyz to answer 200", LIVE, || async {
        http_get(addr, "/readyz", &[]).await.status == 200
    })
    .await;
    (sim, app, addr, dir)
}

/// What reading a connection to its end gave: the bytes, and whether it ended with a reset.
async fn read_to_end(tcp: &mut TcpStream, what: &str) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + SETTLE;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) => return (got, false),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Ok(Err(e)) => panic!("reading {what}: {e}"),
            Err(_) => {
                panic!("{what} still open after {SETTLE:?}, having sent {:?}", String::from_utf8_lossy(&got))
            }
        }
    }
}

/// A kept-alive HTTP/1.1 connection, one request at a time.
struct KeptAlive {
    tcp: TcpStream,
    addr: SocketAddr,
}

impl KeptAlive {
    async fn open(addr: SocketAddr) -> KeptAlive {
        KeptAlive { tcp: TcpStream::connect(addr).await.expect("a connection to the dashboard"), addr }
    }

    /// `GET path` on this connection: the status and the body (by its `Content-Length`).
    async fn get(&mut self, path: &str) -> HttpResponse {
        let deadline = Instant::now() + REPLY;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        self.tcp.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut read = async |buf: &mut Vec<u8>| match timeout_at(deadline, self.tcp.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                panic!("GET {path}: the kept-alive connection closed: {:?}", String::from_utf8_lossy(buf))
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => panic!("GET {path}: {e}"),
            Err(_) => panic!("GET {path}: no response within {REPLY:?}"),
        };
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            read(&mut buf).await;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            read(&mut buf).await;
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        HttpResponse { status, headers, body }
    }
}

/// The value of the unlabelled sample `name` in a `/metrics` text.
fn sample(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_at_the_header_deadline_and_connections_past_the_bound_are_refused() {
    // Arrange: eight HTTP connections at most before the upgrade; five seconds to send a
    // request's headers. A stream client, and a monitor on a kept-alive connection.
    const BOUND: usize = 8;
    let (_sim, mut app, addr, _dir) = start(|c| {
        c.dashboard("max_http_connections", &BOUND.to_string()).dashboard("header_timeout", "\"5s\"");
    })
    .await;
    let mut stream = Client::connect(addr, TOKEN).await;
    let reply = stream.ask(subscribe(1, &["trades"], json!("all")), REPLY).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut monitor = KeptAlive::open(addr).await;
    assert_eq!(monitor.get("/healthz").await.status, 200);

    // Act 1: connections that send half a request fill the bound (the stream client, upgraded,
    // does not count); one more is refused.
    let mut half = Vec::new();
    for _ in 1..BOUND {
        let mut tcp = TcpStream::connect(addr).await.expect("a connection");
        tcp.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nAccept: ").as_bytes())
            .await
            .expect("half a request");
        half.push(tcp);
    }
    app.wait("every connection to be taken", REPLY, |app| {
        app.dashboard_count(|d| &d.http_connections) == BOUND as u64
    })
    .await;
    let mut refused = TcpStream::connect(addr).await.expect("the kernel accepts the connection");
    // The request may meet a socket already closed: a reset is a refusal too.
    let _ = refused.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await;
    let (answer, _) = read_to_end(&mut refused, "the connection past the bound").await;
    // The connections already open go on.
    let health = monitor.get("/healthz").await;
    let metrics = monitor.get("/metrics").await;
    let pong = stream.ask(json!({"cmd": "ping", "id": "during"}), REPLY).await;

    // Act 2: the header deadline passes for the half-sent requests, and for the monitor left
    // idle; then there is room again.
    let mut closed = Vec::new();
    for (i, tcp) in half.iter_mut().enumerate() {
        closed.push(read_to_end(tcp, &format!("half-sent request {i}")).await);
    }
    let (monitor_end, _) = read_to_end(&mut monitor.tcp, "the idle kept-alive connection").await;
    let after = http_get(addr, "/healthz", &[]).await;
    let live = stream.ask(json!({"cmd": "ping", "id": "after"}), REPLY).await;

    // Assert
    assert!(answer.is_empty(), "closed unanswered: {:?}", String::from_utf8_lossy(&answer));
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(
        sample(&metrics.body, "tickd_dashboard_connections_refused_total"),
        Some(1),
        "the refusal counted:\n{}",
        metrics.body
    );
    assert_eq!(
        sample(&metrics.body, "tickd_dashboard_http_connections"),
        Some(BOUND as u64),
        "{}",
        metrics.body
    );
    assert_eq!(pong["type"], "pong", "{pong}");
    for (i, (bytes, _)) in closed.iter().enumerate() {
        assert!(
            bytes.is_empty(),
            "half-sent request {i} closed unanswered: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert!(monitor_end.is_empty(), "{:?}", String::from_utf8_lossy(&monitor_end));
    assert_eq!(
        app.dashboard_count(|d| &d.header_timeouts),
        BOUND as u64,
        "closed at the deadline: the half-sent requests and the idle monitor"
    );
    assert_eq!(after.status, 200, "room again: {after:?}");
    assert_eq!(live["type"], "pong", "the stream client is still served: {live}");
    let stopped = app.stop(REPLY).await;
    assert!(stopped.is_ok(), "a clean stop: {stopped:?}; log:\n{}", log_text());
}
