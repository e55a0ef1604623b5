//! The dashboard port over TLS: `https` and `wss` with a certificate from a CA the test makes,
//! plain HTTP refused on that port, the certificate rotated with SIGHUP (the real binary, the
//! real signal) while a connection made before streams on, and the config checks that keep a
//! port reachable from other hosts from serving plain HTTP by accident.
//!
//! Every wait is a bounded poll of state (an HTTP answer, a `/metrics` value, a client's
//! frames); log lines are only asserted on once what they report has happened.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::app::spawn_app;
use common::daemon::{Daemon, DaemonConfig, run_command, serve, toml_str, wait_until, write_config};
use common::pg::TestDb;
use common::stream::{Client, header, https_get, subscribe};
use common::tls::{Leaf, TestCa, replace, served_certificate};
use serde_json::json;
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;

/// The token every test daemon requires.
const TOKEN: &str = "dashboard-tls-test-token-0123456789";
/// How long a daemon may take to start, connect, subscribe and be ready.
const LIVE: Duration = Duration::from_secs(60);
/// How long a command's reply may take.
const REPLY: Duration = Duration::from_secs(20);
/// How long a daemon may take to stop.
const STOP: Duration = Duration::from_secs(30);

/// A simulator of 3 markets at 200 events/s, heartbeats a minute apart.
fn simulator() -> Simulator {
    Simulator::start(SimConfig {
        markets: market_names(3),
        rate: 200,
        heartbeat: Duration::from_secs(60),
        ..SimConfig::default()
    })
}

/// A daemon config with the token set and the port served over TLS with `cert` and `key`.
async fn tls_config(dir: &Path, db: &TestDb, sim: &Simulator, cert: &Path, key: &Path) -> DaemonConfig {
    let mut config = DaemonConfig::new(&dir.join("state"), &db.url, &serve(sim).await, &sim.markets());
    config
        .dashboard("token", &toml_str(TOKEN))
        .dashboard("tls_cert_file", &toml_str(&cert.display().to_string()))
        .dashboard("tls_key_file", &toml_str(&key.display().to_string()));
    config
}

/// The `wss://` request for the stream at `addr`, with the bearer token.
fn wss_request(addr: SocketAddr) -> Request {
    let mut req = format!("wss://{addr}/ws").into_client_request().expect("a valid WebSocket request");
    req.headers_mut().insert("Authorization", header(&format!("Bearer {TOKEN}")));
    req
}

/// The value of the `/metrics` sample `series` (name and labels, as printed), over https.
async fn tls_metric(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>, series: &str) -> Option<f64> {
    let page = https_get(addr, "/metrics", &[], tls.clone()).await;
    assert_eq!(page.status, 200, "{page:?}");
    page.body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Connects over wss, subscribes to every market's trades and quotes, and reads the reply.
async fn streaming_client(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Client {
    let (mut client, _) = Client::open_tls(wss_request(addr), tls.clone())
        .await
        .unwrap_or_else(|e| panic!("a wss connection to {addr}: {e}"));
    client.hello().await;
    let reply = client.ask(subscribe(1, &["trades", "quotes"], json!("all")), REPLY).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    client
}

/// Reads until a live trade or quote arrives (not a state frame); panics after [`LIVE`].
async fn live_frame(client: &mut Client, what: &str) -> serde_json::Value {
    client
        .until(what, LIVE, |f| (f["type"] == "trade" || f["type"] == "quote") && f["state"].is_null())
        .await
        .0
}

#[tokio::test]
async fn a_wss_client_gets_the_live_stream_and_https_serves_health_metrics_and_the_page() {
    // Arrange: a daemon whose port serves a certificate signed by the test's CA.
    let (db, sim, dir, ca) = (TestDb::new().await, simulator(), tempfile::tempdir().unwrap(), TestCa::new());
    let leaf = ca.issue("tickd.test", 2031);
    let (cert, key) = leaf.write(dir.path());
    let config = tls_config(dir.path(), &db, &sim, &cert, &key).await;
    let app = spawn_app(dir.path(), "tickd", &config).await.with_db(db);
    let (addr, tls) = (app.dashboard(), ca.client());
    app.wait_until("/readyz to answer 200 over https", LIVE, || async {
        https_get(addr, "/readyz", &[], tls.clone()).await.status == 200
    })
    .await;

    // Act and assert: the stream over wss, from the subscription to live frames.
    let mut client = streaming_client(addr, &tls).await;
    let frame = live_frame(&mut client, "a live trade or quote over wss").await;
    assert!(frame["market"].as_str().is_some_and(|m| sim.markets().iter().any(|n| n == m)), "{frame}");

    // The rest of the port, over https.
    let health = https_get(addr, "/healthz", &[], tls.clone()).await;
    assert_eq!((health.status, health.json()), (200, json!({"status": "alive"})));
    let page = https_get(addr, "/", &[], tls.clone()).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("app.js"), "the page: {}", page.body);
    assert_eq!(
        tls_metric(addr, &tls, "tickd_dashboard_tls_certificate_expiry_timestamp_seconds").await,
        Some(leaf.not_after as f64),
        "the expiry gauge is the certificate's notAfter"
    );
    assert_eq!(served_certificate(addr, tls.clone()).await, leaf.der);
}

#[tokio::test]
async fn plain_http_and_clients_that_do_not_trust_the_certificate_are_refused_and_counted() {
    // Arrange
    let (db, sim, dir, ca) = (TestDb::new().await, simulator(), tempfile::tempdir().unwrap(), TestCa::new());
    let (cert, key) = ca.issue("tickd.test", 2031).write(dir.path());
    let config = tls_config(dir.path(), &db, &sim, &cert, &key).await;
    let app = spawn_app(dir.path(), "tickd", &config).await.with_db(db);
    let (addr, tls) = (app.dashboard(), ca.client());

    // Act: ws:// to the TLS port; then wss:// from a client that trusts another CA.
    let mut plain = format!("ws://{addr}/ws").into_client_request().expect("a valid request");
    plain.headers_mut().insert("Authorization", header(&format!("Bearer {TOKEN}")));
    let refused = Client::open(plain, None).await;
    let stranger = Client::open_tls(wss_request(addr), TestCa::new().client()).await;

    // Assert: the plain client reads a 400 that says why, the other fails its handshake, and
    // both are counted by reason.
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("https://"), "the answer says to use TLS: {body:?}");
        }
        Err(e) => panic!("a 400 for plain HTTP on the TLS port, not {e}"),
        Ok(_) => panic!("a plain ws:// connection to the TLS port was accepted"),
    }
    assert!(stranger.is_err(), "a client that does not trust the certificate connected");
    let failures =
        |reason: &str| format!("tickd_dashboard_tls_handshake_failures_total{{reason=\"{reason}\"}}");
    assert_eq!(tls_metric(addr, &tls, &failures("plaintext")).await, Some(1.0));
    // The client fails the handshake on its side; the server hears its alert just after.
    wait_until("the failed handshake counted", REPLY, || async {
        tls_metric(addr, &tls, &failures("error")).await == Some(1.0)
    })
    .await;
    assert_eq!(app.dashboard_count(|m| &m.clients), 0, "no stream client got in");
}

#[tokio::test]
async fn sighup_serves_a_replaced_certificate_to_new_connections_while_old_ones_stream_on() {
    // Arrange: `tickd run` serving the first certificate, and a wss client streaming.
    let (db, sim, dir, ca) = (TestDb::new().await, simulator(), tempfile::tempdir().unwrap(), TestCa::new());
    let (first, second) = (ca.issue("first.tickd.test", 2031), ca.issue("second.tickd.test", 2032));
    let (cert, key) = first.write(dir.path());
    let config = tls_config(dir.path(), &db, &sim, &cert, &key).await;
    let mut daemon = Daemon::start(dir.path(), "tickd", &config);
    let addr = daemon.dashboard_addr(LIVE).await;
    let tls = ca.client();
    daemon
        .wait_until("/readyz to answer 200 over https", LIVE, || async {
            https_get(addr, "/readyz", &[], tls.clone()).await.status == 200
        })
        .await;
    let mut old = streaming_client(addr, &tls).await;
    live_frame(&mut old, "a live frame before the rotation").await;
    assert_eq!(served_certificate(addr, tls.clone()).await, first.der);

    // Act: the files replaced, then SIGHUP.
    second.write(dir.path());
    daemon.hang_up();
    daemon
        .wait_until("the certificate reloaded", LIVE, || async {
            tls_metric(addr, &tls, "tickd_dashboard_tls_reloads_total").await == Some(1.0)
        })
        .await;

    // Assert: new connections get the new certificate, and the old connection streams on.
    assert_eq!(served_certificate(addr, tls.clone()).await, second.der);
    assert_eq!(
        tls_metric(addr, &tls, "tickd_dashboard_tls_certificate_expiry_timestamp_seconds").await,
        Some(second.not_after as f64)
    );
    live_frame(&mut old, "a live frame on the old connection after the rotation").await;
    let mut new = streaming_client(addr, &tls).await;
    live_frame(&mut new, "a live frame on a new connection").await;

    // Act: a bad replacement (a new certificate with the old key), then SIGHUP.
    let third = ca.issue("third.tickd.test", 2033);
    replace(&cert, &third.chain_pem);
    daemon.hang_up();
    daemon
        .wait_until("the failed reload counted", LIVE, || async {
            tls_metric(addr, &tls, "tickd_dashboard_tls_reload_failures_total").await == Some(1.0)
        })
        .await;

    // Assert: the certificate in service stays, and says why in the log; streams go on.
    assert_eq!(served_certificate(addr, tls.clone()).await, second.der);
    assert_eq!(tls_metric(addr, &tls, "tickd_dashboard_tls_reloads_total").await, Some(1.0));
    let failure = daemon
        .last("The dashboard's new TLS certificate cannot be used; the one in service stays.")
        .unwrap_or_else(|| panic!("an error line for the bad certificate; log:\n{}", daemon.log_text()));
    assert_eq!((failure.level(), failure.str("key")), ("ERROR", "dashboard.tls_key_file"));
    live_frame(&mut old, "a live frame on the old connection after the bad replacement").await;
    assert_eq!(daemon.stop(STOP).await, Some(0), "a clean stop; log:\n{}", daemon.log_text());
}

/// `tickd <command>` on a config with the test's `[dashboard]` lines: exit code and stderr.
fn with_dashboard(dir: &Path, name: &str, command: &str, dashboard: &str) -> (Option<i32>, String) {
    let text = format!(
        "state_dir = {state}\n[dashboard]\ntoken = {token}\n{dashboard}\n\
         [[feeds]]\nname = \"sim\"\nurl = \"ws://127.0.0.1:9/trade-api/ws/v2\"\nmarkets = [\"SIM-MKT-001\"]\n",
        state = toml_str(&dir.join("state").display().to_string()),
        token = toml_str(TOKEN),
    );
    run_command(command, &write_config(dir, name, &text))
}

/// `tls_cert_file` and `tls_key_file` lines for `leaf`'s files under `dir`.
fn tls_lines(dir: &Path, leaf: &Leaf) -> String {
    let (cert, key) = leaf.write(dir);
    format!(
        "tls_cert_file = {}\ntls_key_file = {}\n",
        toml_str(&cert.display().to_string()),
        toml_str(&key.display().to_string())
    )
}

#[test]
fn a_listen_address_other_hosts_reach_needs_tls_or_an_explicit_allow_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let public = "listen = \"0.0.0.0:0\"\n";

    // Refused by check-config and by run, naming the key and the ways out.
    for command in ["check-config", "run"] {
        let (code, stderr) = with_dashboard(dir, "plain", command, public);
        assert_eq!(code, Some(2), "tickd {command}: {stderr}");
        assert!(
            stderr.contains("invalid `dashboard.listen`: 0.0.0.0:0 is not a loopback address"),
            "{stderr}"
        );
        assert!(stderr.contains("allow_plaintext = true") && stderr.contains("tls_cert_file"), "{stderr}");
    }

    // Allowed explicitly, or served over TLS; loopback needs neither.
    let (code, stderr) =
        with_dashboard(dir, "allowed", "check-config", &format!("{public}allow_plaintext = true"));
    assert_eq!(code, Some(0), "{stderr}");
    let tls = tls_lines(dir, &TestCa::new().issue("tickd.test", 2031));
    let (code, stderr) = with_dashboard(dir, "tls", "check-config", &format!("{public}{tls}"));
    assert_eq!(code, Some(0), "{stderr}");
    for loopback in ["127.0.0.1:0", "[::1]:0"] {
        let (code, stderr) =
            with_dashboard(dir, "loopback", "check-config", &format!("listen = {}", toml_str(loopback)));
        assert_eq!(code, Some(0), "{loopback}: {stderr}");
    }
}

#[test]
fn certificate_files_that_cannot_be_served_are_named_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let ca = TestCa::new();
    let (a, b) = (ca.issue("a.tickd.test", 2031), ca.issue("b.tickd.test", 2031));

    // A missing certificate file, with another problem beside it: both named in one run.
    let missing = dir.join("missing.pem");
    let (_, key) = a.write(dir);
    let lines = format!(
        "tls_cert_file = {}\ntls_key_file = {}\nmax_connections = 0\n",
        toml_str(&missing.display().to_string()),
        toml_str(&key.display().to_string())
    );
    let (code, stderr) = with_dashboard(dir, "missing", "check-config", &lines);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid `dashboard.tls_cert_file`"), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()) && stderr.contains("cannot be read"), "{stderr}");
    assert!(stderr.contains("invalid `dashboard.max_connections`"), "{stderr}");

    // A key that is not the certificate's.
    let (cert, _) = a.write(dir);
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &b.key_pem).unwrap();
    let lines = format!(
        "tls_cert_file = {}\ntls_key_file = {}\n",
        toml_str(&cert.display().to_string()),
        toml_str(&other_key.display().to_string())
    );
    let (code, stderr) = with_dashboard(dir, "mismatch", "check-config", &lines);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid `dashboard.tls_key_file`") && stderr.contains("is not the key"),
        "{stderr}"
    );

    // A certificate file holding no certificate, and a key without its certificate.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let lines = format!(
        "tls_cert_file = {}\ntls_key_file = {}\n",
        toml_str(&cert.display().to_string()),
        toml_str(&key.display().to_string())
    );
    let (code, stderr) = with_dashboard(dir, "empty", "check-config", &lines);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid `dashboard.tls_cert_file`") && stderr.contains("holds no"), "{stderr}");
    let lines = format!("tls_key_file = {}\n", toml_str(&key.display().to_string()));
    let (code, stderr) = with_dashboard(dir, "half", "check-config", &lines);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid `dashboard.tls_cert_file`: is missing"), "{stderr}");
}
