//! Alerts end to end: the simulator feeds the daemon (both in this process, on 127.0.0.1), a
//! fault is made real (a stalled exchange, a stopped PostgreSQL, a refusing exchange), and
//! the tests assert on what an operator gets: the webhook's POSTs (a small HTTP server on
//! 127.0.0.1 that records every request, `common::hooks`), the lines `alert_command` wrote, `/metrics`,
//! the log and `feed_events`. Each incident must be exactly one alert and one recovery.
//!
//! Every wait is a bounded poll of something an operator sees; nothing sleeps.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::app::{TestApp, log_lines, log_text, spawn_app};
use common::daemon::{DaemonConfig, LogLine, serve, texts, toml_str, wait_until};
use common::hooks::{HOOK_TOKEN, Hooks};
use common::pg::{TestDb, private_server};
use common::stream::metric;
use serde_json::Value;
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tickd::store::StoreState;

/// How long a daemon may take to connect, subscribe and build its books.
const LIVE: Duration = Duration::from_secs(60);
/// How long an alert or a recovery may take to arrive once its condition is real.
const NOTICE: Duration = Duration::from_secs(60);
/// How long a daemon may take to stop.
const STOP: Duration = Duration::from_secs(30);

/// A simulator of `markets` at `rate` events per second, whose own heartbeats are too rare
/// to matter.
fn simulator(markets: Vec<String>, rate: u32) -> Simulator {
    Simulator::start(SimConfig { markets, rate, heartbeat: Duration::from_secs(60), ..SimConfig::default() })
}

/// An executable `alert_command` that appends one line per run: the `TICKD_ALERT_*` variables
/// separated by `|`.
struct Script {
    path: PathBuf,
    out: PathBuf,
}

/// The fields of one line the script wrote.
#[derive(Debug, PartialEq)]
struct Run {
    kind: String,
    state: String,
    source: String,
    feed: String,
    id: String,
    time: i64,
    message: String,
}

impl Script {
    fn new(dir: &Path) -> Script {
        let path = dir.join("alert.sh");
        let out = dir.join("alerts.txt");
        let text = format!(
            "#!/bin/sh\necho \"$TICKD_ALERT_KIND|$TICKD_ALERT_STATE|$TICKD_ALERT_SOURCE|$TICKD_ALERT_FEED|$TICKD_ALERT_ID|$TICKD_ALERT_TIME|$TICKD_ALERT_MESSAGE\" >> {}\n",
            out.display()
        );
        std::fs::write(&path, text).expect("script written");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        Script { path, out }
    }

    fn runs(&self) -> Vec<Run> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.splitn(7, '|').collect();
                assert_eq!(f.len(), 7, "a whole line: {line:?}");
                Run {
                    kind: f[0].into(),
                    state: f[1].into(),
                    source: f[2].into(),
                    feed: f[3].into(),
                    id: f[4].into(),
                    time: f[5].parse().unwrap_or_else(|e| panic!("TICKD_ALERT_TIME {:?}: {e}", f[5])),
                    message: f[6].into(),
                }
            })
            .collect()
    }
}

/// A daemon config with the alert command and the webhook.
fn config(
    dir: &Path,
    db_url: &str,
    sim_url: &str,
    sim: &Simulator,
    script: &Script,
    hook: &str,
) -> DaemonConfig {
    let mut config = DaemonConfig::new(&dir.join("state"), db_url, sim_url, &sim.markets());
    config
        .top("alert_command", &toml_str(&script.path.display().to_string()))
        .alerts("webhook_url", &toml_str(hook))
        .alerts("resolve_after", "\"1s\"");
    config
}

/// Waits until the webhook has accepted a notice of `kind` in `state`.
async fn wait_posted(hooks: &Hooks, kind: &str, state: &str) {
    let what = format!("a {state} {kind} notice at the webhook");
    wait_until(&what, NOTICE, || async { !hooks.accepted_of(kind, state).is_empty() }).await;
}

/// Stops `app` and checks it stopped cleanly, as `tickd run` exiting 0 does.
async fn stop(app: &mut TestApp) {
    let stopped = app.stop(STOP).await;
    assert!(stopped.is_ok(), "a clean stop: {stopped:?}; log:\n{}", log_text());
}

fn alert_lines(message: &str, kind: &str) -> Vec<LogLine> {
    log_lines().into_iter().filter(|l| l.message() == message && l.str("alert") == kind).collect()
}

/// One alert and one recovery of `kind` about `source` at the webhook, sharing an id, and
/// nothing else of that kind. Returns (alert, recovery).
fn one_incident(hooks: &Hooks, kind: &str, source: &str) -> (Value, Value) {
    let firing = hooks.accepted_of(kind, "firing");
    let resolved = hooks.accepted_of(kind, "resolved");
    assert_eq!(
        (firing.len(), resolved.len()),
        (1, 1),
        "one alert and one recovery of {kind}: {:?}",
        hooks.all()
    );
    let (f, r) = (firing[0].clone(), resolved[0].clone());
    for j in [&f, &r] {
        assert_eq!(j["source"], source, "{j}");
        assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
        assert!(j["time"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 24), "RFC 3339 time: {j}");
        assert!(j["host"].is_string(), "{j}");
    }
    assert_eq!(f["id"], r["id"], "an alert and its recovery share an id");
    assert_eq!(f["started"], r["started"]);
    assert!(f.get("duration_seconds").is_none(), "{f}");
    assert!(r["duration_seconds"].is_u64(), "{r}");
    (f, r)
}

/// The command ran once for the alert and once for the recovery of `kind`, with the same id
/// as the webhook's.
fn one_incident_ran(script: &Script, kind: &str, source: &str, feed: &str, webhook: &Value) {
    let runs: Vec<Run> = script.runs().into_iter().filter(|r| r.kind == kind).collect();
    let states: Vec<&str> = runs.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(states, ["firing", "resolved"], "{runs:?}");
    for run in &runs {
        assert_eq!((run.source.as_str(), run.feed.as_str()), (source, feed), "{run:?}");
        assert_eq!(run.id, webhook["id"].as_str().unwrap_or_default(), "{run:?}");
        assert!(run.time > 1_700_000_000, "a Unix time in seconds: {run:?}");
        assert!(!run.message.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_feed_raises_one_feed_stale_alert_and_one_recovery_everywhere() {
    // Arrange: the feed's own threshold (2 s) overrides the default; the webhook's first
    // answer is a 503, so the alert is delivered by a retry.
    let db = TestDb::new().await;
    let sim = simulator(market_names(2), 50);
    let dir = tempfile::tempdir().expect("temp dir");
    let (hooks, hook) = Hooks::serve(1).await;
    let script = Script::new(dir.path());
    let mut config = config(dir.path(), &db.url, &serve(&sim).await, &sim, &script, &hook);
    config.alerts("feed_stale_after", "\"1h\"").feed("stale_after", "\"2s\"");
    let mut app = spawn_app(dir.path(), "tickd", &config).await;
    let addr = app.dashboard();
    app.wait_live(1, LIVE).await;
    let active = r#"tickd_alert_active{kind="feed_stale",source="sim/0"}"#;
    let raised = r#"tickd_alerts_total{kind="feed_stale",source="sim/0"}"#;
    let resolved = r#"tickd_alerts_resolved_total{kind="feed_stale",source="sim/0"}"#;
    assert_eq!(metric(addr, raised).await, None, "no alert before the stall");

    // Act: the exchange goes silent but keeps the socket (tickd's own pings are a minute
    // apart, so the connection is not replaced meanwhile), then speaks again.
    sim.set_stall(true);
    wait_posted(&hooks, "feed_stale", "firing").await;
    let while_open = (metric(addr, active).await, metric(addr, raised).await);
    sim.set_stall(false);
    wait_posted(&hooks, "feed_stale", "resolved").await;
    let after = (metric(addr, active).await, metric(addr, raised).await, metric(addr, resolved).await);
    stop(&mut app).await;

    // Assert
    assert_eq!(while_open, (Some(1.0), Some(1.0)));
    assert_eq!(after, (Some(0.0), Some(1.0), Some(1.0)));
    let (firing, recovery) = one_incident(&hooks, "feed_stale", "sim/0");
    assert_eq!(firing["feed"], "sim");
    assert!(firing["message"].as_str().unwrap_or_default().contains("no market data"), "{firing}");
    assert!(recovery["message"].as_str().unwrap_or_default().contains("flowing again"), "{recovery}");
    assert_eq!(hooks.accepted().len(), 2, "nothing else was alerted: {:?}", hooks.all());
    let posts = hooks.all();
    assert_eq!(posts.len(), 3, "the 503 was retried once: {posts:?}");
    assert_eq!((posts[0].status, &posts[0].json), (503, &posts[1].json), "the same notice again");
    for p in &posts {
        assert_eq!(p.target, format!("/hook?token={HOOK_TOKEN}"));
        assert_eq!(p.content_type, "application/json");
    }
    one_incident_ran(&script, "feed_stale", "sim/0", "sim", &firing);
    let raised_lines = alert_lines("Alert raised.", "feed_stale");
    let resolved_lines = alert_lines("Alert resolved.", "feed_stale");
    assert_eq!((raised_lines.len(), resolved_lines.len()), (1, 1), "one log line each");
    assert_eq!((raised_lines[0].level(), raised_lines[0].str("source")), ("ERROR", "sim/0"));
    assert_eq!((resolved_lines[0].level(), resolved_lines[0].str("feed")), ("WARN", "sim"));
    assert!(!log_text().contains(HOOK_TOKEN), "the webhook's token is never logged");
    let ledger = texts(&db.url, "SELECT reason FROM feed_events WHERE event = 'alert'").await;
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert!(ledger[0].starts_with("feed_stale: sim/0: connected"), "{ledger:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_raises_database_unreachable_and_spool_filling_once_each_and_resolves_both() {
    // Arrange: a server of the test's own, to stop; a 1 MiB spool that warns at 1%.
    let pg = private_server().await;
    let url = pg.create_database("tickd").await.expect("database");
    let sim = simulator(market_names(5), 100);
    let dir = tempfile::tempdir().expect("temp dir");
    let (hooks, hook) = Hooks::serve(0).await;
    let script = Script::new(dir.path());
    let mut config = config(dir.path(), &url, &serve(&sim).await, &sim, &script, &hook);
    config
        .store("spool_max_bytes", "1048576")
        .alerts("database_unreachable_after", "\"1s\"")
        .alerts("spool_warn_fraction", "0.01");
    let mut app = spawn_app(dir.path(), "tickd", &config).await;
    let addr = app.dashboard();
    app.wait_live(1, LIVE).await;
    app.wait_store(StoreState::Ready, LIVE).await;

    // Act: the database goes away for longer than the threshold, then comes back.
    pg.stop().await.expect("server stops");
    wait_posted(&hooks, "database_unreachable", "firing").await;
    wait_posted(&hooks, "spool_filling", "firing").await;
    let active = |kind: &str| format!(r#"tickd_alert_active{{kind="{kind}",source="store"}}"#);
    let while_open =
        (metric(addr, &active("database_unreachable")).await, metric(addr, &active("spool_filling")).await);
    pg.restart().await.expect("server restarts");
    wait_posted(&hooks, "database_unreachable", "resolved").await;
    wait_posted(&hooks, "spool_filling", "resolved").await;
    let after =
        (metric(addr, &active("database_unreachable")).await, metric(addr, &active("spool_filling")).await);
    stop(&mut app).await;

    // Assert
    assert_eq!(while_open, (Some(1.0), Some(1.0)));
    assert_eq!(after, (Some(0.0), Some(0.0)));
    let (down, _) = one_incident(&hooks, "database_unreachable", "store");
    let (filling, _) = one_incident(&hooks, "spool_filling", "store");
    assert_eq!((&down["feed"], &filling["feed"]), (&Value::from("store"), &Value::from("store")));
    assert!(filling["message"].as_str().unwrap_or_default().contains("spool_max_bytes"), "{filling}");
    assert_eq!(hooks.accepted().len(), 4, "nothing else was alerted: {:?}", hooks.all());
    one_incident_ran(&script, "database_unreachable", "store", "store", &down);
    one_incident_ran(&script, "spool_filling", "store", "store", &filling);
    for kind in ["database_unreachable", "spool_filling"] {
        let lines = (alert_lines("Alert raised.", kind), alert_lines("Alert resolved.", kind));
        assert_eq!((lines.0.len(), lines.1.len()), (1, 1), "{kind}: one log line each");
        assert_eq!(lines.0[0].level(), "ERROR");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_keeps_failing_raises_max_reconnects_once_and_recovers_once_healthy_again() {
    // Arrange
    let db = TestDb::new().await;
    let sim = simulator(market_names(2), 50);
    let dir = tempfile::tempdir().expect("temp dir");
    let (hooks, hook) = Hooks::serve(0).await;
    let script = Script::new(dir.path());
    let mut config = config(dir.path(), &db.url, &serve(&sim).await, &sim, &script, &hook);
    config
        .feed("max_reconnects", "3")
        .feed("backoff", "{ initial = \"50ms\", max = \"200ms\", healthy_after = \"1s\" }");
    let mut app = spawn_app(dir.path(), "tickd", &config).await;
    app.wait_live(1, LIVE).await;

    // Act: the connection drops and the next five handshakes are refused.
    sim.refuse_handshakes(5);
    sim.drop_all();
    wait_posted(&hooks, "max_reconnects", "firing").await;
    wait_posted(&hooks, "max_reconnects", "resolved").await;
    stop(&mut app).await;

    // Assert
    let (firing, recovery) = one_incident(&hooks, "max_reconnects", "sim/0");
    assert!(firing["message"].as_str().unwrap_or_default().contains("3 consecutive connection failures"));
    assert!(recovery["message"].as_str().unwrap_or_default().contains("healthy"), "{recovery}");
    assert_eq!(hooks.accepted().len(), 2, "nothing else was alerted: {:?}", hooks.all());
    one_incident_ran(&script, "max_reconnects", "sim/0", "sim", &firing);
    let ledger = texts(&db.url, "SELECT reason FROM feed_events WHERE event = 'alert'").await;
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert!(ledger[0].starts_with("max_reconnects: sim/0: 3 consecutive"), "{ledger:?}");
}

/// The accepted notices of `kind` about `source`, as (state, id), in the order received.
fn notices_of(hooks: &Hooks, kind: &str, source: &str) -> Vec<(String, String)> {
    hooks
        .accepted()
        .into_iter()
        .filter(|j| j["kind"] == kind && j["source"] == source)
        .map(|j| {
            (
                j["state"].as_str().unwrap_or_default().to_owned(),
                j["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_open_at_stop_is_announced_kept_and_resolved_by_the_next_run() {
    // Arrange: a stalled exchange makes `feed_stale` (2 s) fire; tickd stops with it open.
    let db = TestDb::new().await;
    let sim = simulator(market_names(2), 50);
    let dir = tempfile::tempdir().expect("temp dir");
    let (hooks, hook) = Hooks::serve(0).await;
    let script = Script::new(dir.path());
    let mut config = config(dir.path(), &db.url, &serve(&sim).await, &sim, &script, &hook);
    config.alerts("feed_stale_after", "\"1h\"").feed("stale_after", "\"2s\"");
    let mut first = spawn_app(dir.path(), "tickd", &config).await;
    first.wait_live(1, LIVE).await;
    sim.set_stall(true);
    wait_posted(&hooks, "feed_stale", "firing").await;

    // Act: stop with the alert open; the exchange speaks again; the next run starts.
    stop(&mut first).await;
    let at_stop = hooks.accepted_of("feed_stale", "open_at_stop");
    let kept = std::fs::read_to_string(dir.path().join("state/alerts.json")).expect("kept alerts");
    sim.set_stall(false);
    let mut second = spawn_app(dir.path(), "tickd", &config).await;
    wait_posted(&hooks, "feed_stale", "resolved").await;
    let addr = second.dashboard();
    let active = metric(addr, r#"tickd_alert_active{kind="feed_stale",source="sim/0"}"#).await;
    stop(&mut second).await;

    // Assert: one incident, told three times under one id: raised, open at the stop, over.
    let told = notices_of(&hooks, "feed_stale", "sim/0");
    let states: Vec<&str> = told.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(states, ["firing", "open_at_stop", "resolved"], "{:?}", hooks.all());
    assert!(told.iter().all(|(_, id)| *id == told[0].1), "one id: {told:?}");
    assert_eq!(at_stop.len(), 1);
    assert!(at_stop[0]["message"].as_str().unwrap_or_default().contains("stopping"), "{}", at_stop[0]);
    assert!(at_stop[0]["duration_seconds"].is_u64(), "{}", at_stop[0]);
    assert!(kept.contains("feed_stale") && kept.contains("sim/0"), "{kept}");
    assert_eq!(active, Some(0.0));
    let runs: Vec<String> =
        script.runs().into_iter().filter(|r| r.kind == "feed_stale").map(|r| r.state).collect();
    assert_eq!(runs, ["firing", "open_at_stop", "resolved"]);
    // Nothing is left to carry over to a third run.
    let kept = std::fs::read_to_string(dir.path().join("state/alerts.json")).expect("kept alerts");
    assert!(!kept.contains("feed_stale"), "{kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_that_outlives_a_restart_is_raised_again_by_the_next_run_under_the_same_id() {
    // Arrange: the database goes away and `database_unreachable` (1 s) fires.
    let pg = private_server().await;
    let url = pg.create_database("tickd").await.expect("database");
    let sim = simulator(market_names(2), 50);
    let dir = tempfile::tempdir().expect("temp dir");
    let (hooks, hook) = Hooks::serve(0).await;
    let script = Script::new(dir.path());
    let mut config = config(dir.path(), &url, &serve(&sim).await, &sim, &script, &hook);
    config.alerts("database_unreachable_after", "\"1s\"");
    let mut first = spawn_app(dir.path(), "tickd", &config).await;
    first.wait_live(1, LIVE).await;
    first.wait_store(StoreState::Ready, LIVE).await;
    pg.stop().await.expect("server stops");
    wait_posted(&hooks, "database_unreachable", "firing").await;

    // Act: stop and start again with the database still away; then it comes back.
    stop(&mut first).await;
    let mut second = spawn_app(dir.path(), "tickd", &config).await;
    let what = "the alert raised again by the next run";
    wait_until(what, NOTICE, || async { hooks.accepted_of("database_unreachable", "firing").len() == 2 })
        .await;
    pg.restart().await.expect("server restarts");
    wait_posted(&hooks, "database_unreachable", "resolved").await;
    stop(&mut second).await;

    // Assert
    let told = notices_of(&hooks, "database_unreachable", "store");
    let states: Vec<&str> = told.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(states, ["firing", "open_at_stop", "firing", "resolved"], "{:?}", hooks.all());
    assert!(told.iter().all(|(_, id)| *id == told[0].1), "one incident, one id: {told:?}");
    let again = &hooks.accepted_of("database_unreachable", "firing")[1];
    let first_alert = &hooks.accepted_of("database_unreachable", "firing")[0];
    assert_eq!(again["started"], first_alert["started"], "it started in the first run");
}
