//! Running tickd for real, end to end: `/metrics`, `/readyz`, log lines, secrets, SIGTERM and
//! SIGHUP. The simulator (in this process) feeds the daemon, which records into PostgreSQL and
//! serves its dashboard port; the tests assert on what an operator sees: metric values, HTTP
//! statuses, log lines, rows, close codes and exit codes.
//!
//! `/metrics` and `/readyz` are served by the daemon in this process ([`spawn_app`]), scraped
//! over HTTP as Prometheus and a load balancer would. What belongs to the process itself runs
//! the real `tickd run` binary: its log output (format, levels, secrets), signals and exit
//! codes, and the journal.
//!
//! Counters are compared with what the simulator wrote once the stream is quiet: the
//! simulator is paused and has written everything it generated ([`Simulator::caught_up`]),
//! then writes one frame of an unknown type; once `/metrics` counts that frame, the feed has
//! read everything before it. Heartbeats and the feed's own pings are an hour apart, so the
//! connection carries text frames only and frame counts compare exactly.
//!
//! Every wait is a bounded poll of something a user can see (a metric, an HTTP status, rows,
//! the simulator's connections), or a read with a deadline; never of log wording, except in
//! the test whose subject is the log.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::app::{TestApp, spawn_app};
use common::daemon::{
    Daemon, DaemonConfig, LogLine, scalar, serve, stored_trade_ids, texts, tickd, toml_str, wait_caught_up,
    wait_sent_trades_stored, wait_until, write_config,
};
use common::pg::TestDb;
use common::stream::{Client, Event, http_get, request, subscribe};
use rsa::pkcs8::DecodePublicKey;
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection as _};
use tickd::dev::sim::{SimAuth, SimConfig, Simulator, market_names};

/// The token every test daemon's dashboard requires.
const TOKEN: &str = "operations-token-0123456789abcdef";
/// How long a daemon may take to start, connect, subscribe and be ready.
const LIVE: Duration = Duration::from_secs(60);
/// The grace period: systemd's `TimeoutStopSec` in the shipped unit.
const STOP: Duration = Duration::from_secs(30);
/// How long the database, the stream or a counter may take to catch up.
const SETTLE: Duration = Duration::from_secs(60);
/// How long a command's reply may take.
const REPLY: Duration = Duration::from_secs(20);

/// A simulator of `markets` markets at `rate` events/s, with heartbeats an hour apart.
fn simulator(markets: usize, rate: u32) -> Simulator {
    simulator_with(SimConfig { markets: market_names(markets), rate, ..SimConfig::default() })
}

fn simulator_with(cfg: SimConfig) -> Simulator {
    Simulator::start(SimConfig { heartbeat: Duration::from_secs(3600), ..cfg })
}

/// The config every test daemon runs with: the dashboard token, the feed's pings an hour
/// apart, and `tune` applied.
async fn config(
    sim: &Simulator,
    db: &TestDb,
    dir: &tempfile::TempDir,
    tune: impl FnOnce(&mut DaemonConfig),
) -> DaemonConfig {
    let mut config = DaemonConfig::new(&dir.path().join("state"), &db.url, &serve(sim).await, &sim.markets());
    config.dashboard("token", &toml_str(TOKEN)).feed("ping_interval", &toml_str("1h"));
    tune(&mut config);
    config
}

/// A daemon in this process with its simulator and dashboard address (its database is the
/// app's, [`TestApp::db`]).
struct AppRig {
    sim: Simulator,
    app: TestApp,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl AppRig {
    /// The test's database URL.
    fn url(&self) -> String {
        self.app.db.as_ref().expect("the rig's database").url.clone()
    }
}

/// Starts a daemon in this process against `sim` (see [`config`]) and waits until `/readyz`
/// answers 200: the feed is live and the store has reached the database.
async fn start_app(sim: Simulator, tune: impl FnOnce(&mut DaemonConfig)) -> AppRig {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(&sim, &db, &dir, tune).await;
    let app = spawn_app(dir.path(), "tickd", &config).await.with_db(db);
    let addr = app.dashboard();
    wait_ready(addr, 200).await;
    AppRig { sim, app, addr, _dir: dir }
}

/// A `tickd run` process with its simulator, database and dashboard address.
struct Rig {
    db: TestDb,
    sim: Simulator,
    daemon: Daemon,
    config: DaemonConfig,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// Starts `tickd run` against `sim` (see [`config`]) and waits until `/readyz` answers 200.
async fn start(sim: Simulator, tune: impl FnOnce(&mut DaemonConfig)) -> Rig {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(&sim, &db, &dir, tune).await;
    let mut daemon = Daemon::start(dir.path(), "tickd", &config);
    let addr = daemon.dashboard_addr(LIVE).await;
    wait_ready(addr, 200).await;
    Rig { db, sim, daemon, config, addr, dir }
}

/// Waits until `/readyz` answers `status`.
async fn wait_ready(addr: SocketAddr, status: u16) {
    wait_until(&format!("/readyz to answer {status}"), LIVE, || async move {
        http_get(addr, "/readyz", &[]).await.status == status
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The Prometheus text format, parsed strictly.

/// One sample line.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One metric family: its `# HELP`, `# TYPE` and samples.
#[derive(Clone, Debug)]
struct Family {
    name: String,
    kind: Option<String>,
    help: Option<String>,
    samples: Vec<Sample>,
}

/// A scrape of `/metrics`.
#[derive(Clone, Debug)]
struct Metrics {
    families: Vec<Family>,
    text: String,
}

impl Metrics {
    /// Parses the text format (version 0.0.4) strictly: every line is a `# HELP`, a `# TYPE`
    /// or a sample; a family's lines come together, its TYPE before its samples, HELP and
    /// TYPE once each; label values are quoted with only `\\`, `\"` and `\n` escaped; every
    /// value is a float. Then checks what tickd promises on top: `tickd_` names, counters
    /// ending in `_total` and never negative, histograms with cumulative buckets up to
    /// `+Inf` equal to `_count`, and `feed` and `conn` on every feed series.
    fn parse(text: &str) -> Metrics {
        assert!(text.ends_with('\n'), "the exposition ends with a newline");
        let mut families: Vec<Family> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let at = format!("line {}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
                let (name, arg) =
                    rest.split_once(' ').unwrap_or_else(|| panic!("{at}: no text after the name"));
                check_name(name, &at);
                let family = match families.iter().position(|f| f.name == name) {
                    Some(i) => {
                        assert_eq!(i, families.len() - 1, "{at}: {name} is split by another family");
                        &mut families[i]
                    }
                    None => {
                        families.push(Family {
                            name: name.to_owned(),
                            kind: None,
                            help: None,
                            samples: vec![],
                        });
                        families.last_mut().expect("just pushed")
                    }
                };
                assert!(family.samples.is_empty(), "{at}: a header after {name}'s samples");
                if line.starts_with("# HELP ") {
                    assert!(family.help.replace(arg.to_owned()).is_none(), "{at}: a second HELP");
                    assert!(!arg.trim().is_empty(), "{at}: an empty HELP");
                } else {
                    let kinds = ["counter", "gauge", "histogram", "summary", "untyped"];
                    assert!(kinds.contains(&arg), "{at}: unknown type");
                    assert!(family.kind.replace(arg.to_owned()).is_none(), "{at}: a second TYPE");
                }
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{at}: neither a sample nor HELP/TYPE");
            let sample = parse_sample(line, &at);
            let family = families.last_mut().unwrap_or_else(|| panic!("{at}: a sample before any TYPE"));
            let kind = family.kind.clone().unwrap_or_else(|| panic!("{at}: {} has no TYPE", family.name));
            let suffixes: &[&str] = match kind.as_str() {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            assert!(
                suffixes.iter().any(|s| sample.name == format!("{}{s}", family.name)),
                "{at}: not a sample of {} ({kind}): the family's lines must come together",
                family.name
            );
            family.samples.push(sample);
        }
        let metrics = Metrics { families, text: text.to_owned() };
        metrics.check_conventions();
        metrics
    }

    fn check_conventions(&self) {
        let mut names = HashSet::new();
        for f in &self.families {
            assert!(names.insert(f.name.clone()), "{} appears twice", f.name);
            assert!(f.name.starts_with("tickd_"), "{}: not a tickd_ name", f.name);
            assert!(f.help.is_some() && f.kind.is_some(), "{} needs HELP and TYPE", f.name);
            let kind = f.kind.as_deref().unwrap_or("");
            if kind == "counter" {
                assert!(f.name.ends_with("_total"), "counter {} ends in _total", f.name);
                assert!(f.samples.iter().all(|s| s.value >= 0.0), "counter {} is never negative", f.name);
            }
            if f.name.starts_with("tickd_feed_") {
                for s in &f.samples {
                    assert!(s.labels.contains_key("feed") && s.labels.contains_key("conn"), "{s:?}");
                }
            }
            if kind == "histogram" {
                let buckets: Vec<&Sample> =
                    f.samples.iter().filter(|s| s.name.ends_with("_bucket")).collect();
                let les: Vec<f64> = buckets.iter().map(|s| parse_value(&s.labels["le"], &f.name)).collect();
                assert!(les.windows(2).all(|w| w[0] < w[1]), "{}: le increasing: {les:?}", f.name);
                assert_eq!(les.last(), Some(&f64::INFINITY), "{}: a +Inf bucket", f.name);
                assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value), "{}: cumulative", f.name);
                let count = f.samples.iter().find(|s| s.name.ends_with("_count")).map(|s| s.value);
                assert_eq!(buckets.last().map(|s| s.value), count, "{}: +Inf bucket is the count", f.name);
                assert!(f.samples.iter().any(|s| s.name.ends_with("_sum")), "{}: a _sum", f.name);
            }
        }
    }

    fn family(&self, name: &str) -> &Family {
        self.families
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no family {name} in\n{}", self.text))
    }

    /// The value of the one sample of `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&Sample> = self
            .families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| {
                s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .collect();
        assert_eq!(matching.len(), 1, "one sample {name}{labels:?} in\n{}", self.text);
        matching[0].value
    }

    /// [`Metrics::value`] as a count.
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let v = self.value(name, labels);
        assert!(v >= 0.0 && v.fract() == 0.0, "{name}{labels:?} = {v} is not a count");
        v as u64
    }

    /// The feed connection `sim/0`'s value of `name` (besides `extra` labels).
    fn feed(&self, name: &str, extra: &[(&str, &str)]) -> u64 {
        let mut labels = vec![("feed", "sim"), ("conn", "0")];
        labels.extend_from_slice(extra);
        self.count(name, &labels)
    }

    /// The state `sim/0` is in, from `tickd_feed_state`.
    fn feed_state(&self) -> String {
        let on: Vec<&Sample> = self
            .family("tickd_feed_state")
            .samples
            .iter()
            .filter(|s| s.labels["feed"] == "sim" && s.labels["conn"] == "0" && s.value == 1.0)
            .collect();
        assert_eq!(on.len(), 1, "one state at a time: {on:?}");
        on[0].labels["state"].clone()
    }
}

fn check_name(name: &str, at: &str) {
    let ok = name
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()));
    assert!(ok && !name.is_empty(), "{at}: {name:?} is not a metric name");
}

/// `name{label="value",...} value`, with an optional timestamp.
fn parse_sample(line: &str, at: &str) -> Sample {
    let end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{at}: no value"));
    let name = &line[..end];
    check_name(name, at);
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let close = loop {
            let Some(&(start, c)) = chars.peek() else { panic!("{at}: unterminated labels") };
            if c == '}' {
                break start;
            }
            let mut label = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c == '=' {
                    break;
                }
                assert!(c.is_ascii_alphanumeric() || c == '_', "{at}: {c:?} in a label name");
                label.push(c);
                chars.next();
            }
            assert!(
                !label.is_empty() && !label.starts_with(|c: char| c.is_ascii_digit()),
                "{at}: label name"
            );
            assert_eq!(chars.next().map(|(_, c)| c), Some('='), "{at}");
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{at}: label values are quoted");
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("{at}: escape \\{other:?}"),
                    },
                    Some(c) => value.push(c),
                    None => panic!("{at}: unterminated label value"),
                }
            }
            assert!(labels.insert(label.clone(), value).is_none(), "{at}: label {label} twice");
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => break i,
                other => panic!("{at}: {other:?} after a label"),
            }
        };
        rest = &body[close + 1..];
    }
    let rest = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{at}: one space before the value"));
    let mut parts = rest.split(' ');
    let value = parse_value(parts.next().unwrap_or(""), at);
    if let Some(ts) = parts.next() {
        assert!(ts.parse::<i64>().is_ok(), "{at}: a timestamp in ms");
    }
    assert!(parts.next().is_none(), "{at}: trailing text");
    Sample { name: name.to_owned(), labels, value }
}

fn parse_value(text: &str, at: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => {
            let ok = !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c));
            assert!(ok, "{at}: {text:?} is not a value");
            text.parse().unwrap_or_else(|e| panic!("{at}: {text:?}: {e}"))
        }
    }
}

/// `/metrics` with the token (it needs none today, like the health checks), parsed.
async fn scrape(addr: SocketAddr) -> Metrics {
    let bearer = format!("Bearer {TOKEN}");
    let response = http_get(addr, "/metrics", &[("Authorization", &bearer)]).await;
    assert_eq!(response.status, 200, "{response:?}");
    let content_type = response.header("content-type").unwrap_or("");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    Metrics::parse(&response.body)
}

/// Scrapes until `cond` holds (panics naming `what` after `SETTLE`), and returns that scrape.
async fn wait_metrics(addr: SocketAddr, what: &str, cond: impl Fn(&Metrics) -> bool) -> Metrics {
    let cond = &cond;
    wait_until(what, SETTLE, || async move { cond(&scrape(addr).await) }).await;
    scrape(addr).await
}

/// Quiets the stream (see the module doc) and waits until the store has committed every
/// tick the feeds published. Returns a scrape taken then.
async fn quiesce(sim: &Simulator, addr: SocketAddr) -> Metrics {
    sim.pause();
    wait_caught_up(sim, SETTLE).await;
    let before = scrape(addr).await.feed("tickd_feed_unknown_types_total", &[]);
    sim.send_unknown(1);
    wait_metrics(addr, "the marker frame counted and every tick committed", |m| {
        m.feed("tickd_feed_unknown_types_total", &[]) > before
            && m.count("tickd_store_committed_total", &[]) == m.count("tickd_bus_published_total", &[])
    })
    .await
}

/// Rows in every tick table and `feed_events`.
async fn all_rows(url: &str) -> i64 {
    scalar(
        url,
        "SELECT ((SELECT count(*) FROM trades) + (SELECT count(*) FROM quotes) \
                + (SELECT count(*) FROM book_snapshots) + (SELECT count(*) FROM book_deltas) \
                + (SELECT count(*) FROM lifecycle_events) + (SELECT count(*) FROM feed_events))::int8",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_what_the_simulator_sent_and_postgresql_holds() {
    // Arrange: quiet until the store writes directly, so that nothing is spooled and replayed.
    let sim = simulator(5, 500);
    sim.pause();
    let mut rig = start_app(sim.clone(), |_| {}).await;
    let (addr, url) = (rig.addr, rig.url());
    wait_metrics(addr, "the store ready", |m| m.count("tickd_store_state", &[("state", "ready")]) == 1).await;
    let mut client = Client::connect(addr, TOKEN).await;
    let reply = client.ask(subscribe(1, &["trades"], json!("all")), REPLY).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");

    // Act
    sim.resume();
    wait_until("200 trades stored", SETTLE, || async {
        scalar(&url, "SELECT count(*) FROM trades").await >= 200
    })
    .await;
    let m = quiesce(&sim, addr).await;

    // Assert: the feed counted what the exchange wrote...
    let sent = sim.stats();
    let trades = m.feed("tickd_feed_ticks_total", &[("kind", "trade")]);
    assert_eq!(trades, sent.trades_sent, "trades received vs written by the simulator");
    assert_eq!(m.feed("tickd_feed_frames_total", &[]), sent.frames_sent, "frames received vs written");
    assert_eq!(m.feed_state(), "live");
    assert_eq!(m.feed("tickd_feed_connects_total", &[]), 1);
    assert_eq!(m.feed("tickd_feed_reconnects_total", &[]), 0);
    assert_eq!(m.feed("tickd_feed_consecutive_failures", &[]), 0);
    assert_eq!(m.feed("tickd_feed_seq_gaps_total", &[]), 0);
    assert_eq!(m.feed("tickd_feed_parse_errors_total", &[]), 0);
    assert!(m.value("tickd_feed_last_message_age_seconds", &[("feed", "sim"), ("conn", "0")]) >= 0.0);
    // ...the store what PostgreSQL holds...
    let stored_trades = scalar(&url, "SELECT count(*) FROM trades").await as u64;
    assert_eq!(stored_trades, trades, "rows in trades vs trades received");
    assert_eq!(m.count("tickd_store_trades_inserted_total", &[]), stored_trades);
    assert_eq!(m.count("tickd_store_inserted_total", &[]), all_rows(&url).await as u64);
    assert_eq!(m.count("tickd_store_received_total", &[]), m.count("tickd_bus_published_total", &[]));
    assert_eq!(m.count("tickd_store_duplicates_total", &[]), 0);
    assert_eq!((m.count("tickd_store_spooled_total", &[]), m.count("tickd_store_lost_total", &[])), (0, 0));
    assert_eq!(m.count("tickd_store_spool_bytes", &[]), 0);
    let batches = m.count("tickd_store_batches_total", &[]);
    assert!(batches > 0 && m.count("tickd_store_commit_latency_seconds_count", &[]) == batches, "{}", m.text);
    // ...and the bus and the dashboard what went through them.
    let published: u64 = ["trade", "quote", "book_snapshot", "book_delta", "lifecycle"]
        .iter()
        .map(|kind| m.feed("tickd_feed_ticks_total", &[("kind", kind)]))
        .sum();
    assert!(published < m.count("tickd_bus_published_total", &[]), "market ticks plus feed events");
    assert_eq!(m.count("tickd_bus_lossy_missed_total", &[]), 0);
    assert_eq!(m.count("tickd_dashboard_clients", &[]), 1);
    let last = sim.trades_sent().last().cloned().unwrap_or_default();
    let (_, before) = client.until("the last trade sent", SETTLE, |f| f["trade_id"] == last.as_str()).await;
    let trade_frames = 1 + before.iter().filter(|f| f["type"] == "trade").count() as u64;
    let after = scrape(addr).await;
    assert!(after.count("tickd_dashboard_deliveries_total", &[]) >= trade_frames, "{}", after.text);
    assert_eq!(after.count("tickd_dashboard_evictions_total", &[("reason", "slow")]), 0);
    rig.app.stop(STOP).await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_while_the_exchange_refuses_the_feed_and_200_once_it_is_back() {
    // Arrange: a connection counts as healthy (and its failures reset) after a second.
    let mut rig = start_app(simulator(3, 100), |c| {
        c.feed("backoff", "{ initial = \"50ms\", max = \"200ms\", healthy_after = \"1s\" }");
    })
    .await;
    let addr = rig.addr;

    // Act: the exchange drops the connection and refuses the next handshakes.
    rig.sim.refuse_handshakes(u32::MAX);
    rig.sim.drop_all();
    wait_ready(addr, 503).await;
    let down = wait_metrics(addr, "two refused handshakes", |m| {
        m.feed("tickd_feed_connect_failures_total", &[]) >= 2
    })
    .await;
    let not_ready = http_get(addr, "/readyz", &[]).await;
    rig.sim.refuse_handshakes(0);
    wait_ready(addr, 200).await;
    let up = wait_metrics(addr, "the failure count reset", |m| {
        m.feed("tickd_feed_consecutive_failures", &[]) == 0
    })
    .await;

    // Assert
    assert_eq!(not_ready.status, 503, "{not_ready:?}");
    let body = not_ready.json();
    assert_eq!(body["ready"], false, "{body}");
    let reasons: Vec<&str> =
        body["reasons"].as_array().expect("reasons").iter().filter_map(|r| r.as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("sim/0")), "a reason names the connection: {body}");
    assert!(["connecting", "backing_off"].contains(&down.feed_state().as_str()), "{}", down.text);
    assert!(down.feed("tickd_feed_consecutive_failures", &[]) >= 2, "{}", down.text);
    assert_eq!(down.feed("tickd_feed_disconnects_total", &[]), 1);
    assert_eq!(up.feed_state(), "live");
    assert_eq!(up.feed("tickd_feed_reconnects_total", &[]), 1);
    let refused = rig.sim.stats().handshakes_refused;
    assert_eq!(up.feed("tickd_feed_connect_failures_total", &[]), refused, "every refusal counted once");
    rig.app.stop(STOP).await.expect("a clean stop");
}

/// Whether a log line is about a feed: from the feed actor or the protocol session (not the
/// supervisor), or a line whose message names a feed ("Feed summary.", "Stopping feed connection.").
fn about_a_feed(line: &LogLine) -> bool {
    let target = line.json["target"].as_str().unwrap_or("");
    // Words as the message spells them: `feed_events` is a table, not a feed.
    let names_feed = line
        .message()
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w.eq_ignore_ascii_case("feed"));
    // The supervisor's own lines are about every feed at once ("All feeds stopped.").
    let actor = target.starts_with("tickd::feed") && !target.starts_with("tickd::feed::supervisor");
    actor || target.starts_with("tickd::kalshi") || names_feed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_about_a_feed_names_it_through_a_gap_a_drop_a_refusal_and_a_reconnect() {
    // Arrange: tickd's own debug lines too.
    let mut rig = start(simulator(3, 300), |c| {
        c.log_level("tickd=debug,info").feed("backoff", "{ initial = \"50ms\", max = \"200ms\" }");
    })
    .await;
    let (addr, daemon) = (rig.addr, &mut rig.daemon);

    // Act: a sequence gap, repaired; a drop; a refused handshake; a reconnect; a stop.
    rig.sim.skip_seq(5);
    wait_metrics(addr, "the gap repaired", |m| m.feed("tickd_feed_resyncs_total", &[]) >= 1).await;
    rig.sim.refuse_handshakes(1);
    rig.sim.drop_all();
    wait_metrics(addr, "live again after a refusal", |m| {
        m.feed("tickd_feed_connect_failures_total", &[]) >= 1
            && m.feed("tickd_feed_reconnects_total", &[]) >= 1
            && m.feed_state() == "live"
    })
    .await;
    // The periodic summary line is part of what this test reads.
    daemon.wait_for_message("Feed summary.", LIVE).await;
    let exit = daemon.stop(STOP).await;

    // Assert
    assert_eq!(exit, Some(0), "log:\n{}", daemon.log_text());
    let lines = daemon.lines();
    let about: Vec<&LogLine> = lines.iter().filter(|l| about_a_feed(l)).collect();
    for line in &about {
        assert_eq!(line.str("feed"), "sim", "a feed line without its feed: {}", line.raw);
        // The backfill and the REST client serve the whole feed: their lines name a
        // connection only when they are about one connection's window.
        let per_feed = ["tickd::feed::backfill", "tickd::kalshi::rest"];
        let from_a_connection = line.json["target"].as_str().is_some_and(|t| {
            (t.starts_with("tickd::feed") || t.starts_with("tickd::kalshi"))
                && !per_feed.iter().any(|p| t.starts_with(p))
        });
        if from_a_connection {
            assert_eq!(line.field("conn").as_u64(), Some(0), "and its connection: {}", line.raw);
        }
    }
    let messages: HashSet<&str> = about.iter().map(|l| l.message()).collect();
    for expected in [
        "Connecting.",
        "Connected.",
        "Subscribed.",
        "Live.",
        "Sequence gap.",
        "Books rebuilt from fresh snapshots.",
        "Disconnected.",
        "Connection attempt failed.",
        "Backing off.",
        "Feed summary.",
        "Feed stopped.",
    ] {
        assert!(messages.contains(expected), "a {expected:?} line about the feed; saw {messages:?}");
    }
    let unreadable: Vec<&LogLine> = lines.iter().filter(|l| l.json.is_null()).collect();
    assert!(unreadable.is_empty(), "every line is JSON: {unreadable:?}");
}

/// A role of the test's own that logs in with `password`, owning `db`'s database (so that it
/// may create the schema). Returns its name and the URL that logs in as it.
async fn role_with_password(db: &TestDb, password: &str) -> (String, String) {
    let role = format!("tickd_secret_{:08x}", rand::random::<u32>());
    let mut conn = db.connect().await;
    for sql in [
        format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
        format!("ALTER DATABASE \"{}\" OWNER TO {role}", db.name),
        format!("ALTER SCHEMA public OWNER TO {role}"),
    ] {
        sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let _ = conn.close().await;
    let mut url = url::Url::parse(&db.url).expect("the test database's URL");
    url.set_username(&role).expect("a URL with a user");
    url.set_password(Some(password)).expect("a URL with a password");
    (role, url.into())
}

/// Drops `role` again, handing what it owns back to the test's superuser.
async fn drop_role(db: &TestDb, role: &str) {
    let mut conn = db.connect().await;
    for sql in [
        format!("REASSIGN OWNED BY {role} TO CURRENT_USER"),
        format!("DROP OWNED BY {role}"),
        format!("DROP ROLE {role}"),
    ] {
        sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_shows_in_trace_logs_metrics_readyz_or_check_config() {
    // Arrange: a database password in the URL, a dashboard token, and a signed feed whose
    // private key's content is secret (its path is not).
    let password = "pw-Zq8vLr3Xk2Mn9Ts5";
    let db = TestDb::new().await;
    let (role, url) = role_with_password(&db, password).await;
    let public = std::fs::read_to_string(common::fixture("test_key_pub.pem")).expect("public key");
    let sim = simulator_with(SimConfig {
        markets: market_names(3),
        rate: 300,
        auth: Some(SimAuth {
            key_id: "operations-key-id".into(),
            public_key: rsa::RsaPublicKey::from_public_key_pem(&public).expect("a public key"),
            max_skew: Duration::from_secs(30),
        }),
        ..SimConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("kalshi.pem");
    std::fs::copy(common::fixture("test_key_pkcs8.pem"), &key_file).expect("key file");
    let key = std::fs::read_to_string(&key_file).expect("key");
    let mut config = DaemonConfig::new(&dir.path().join("state"), &url, &serve(&sim).await, &sim.markets());
    config
        .log_level("trace")
        .dashboard("token", &toml_str(TOKEN))
        .feed("key_id", &toml_str("operations-key-id"))
        .feed("key_file", &toml_str(&key_file.display().to_string()));

    // Act: run at trace level (libraries' most detailed lines too), with clients presenting
    // the token every way there is; scrape; check the config; stop.
    let mut daemon = Daemon::start(dir.path(), "tickd", &config);
    let addr = daemon.dashboard_addr(LIVE).await;
    wait_ready(addr, 200).await;
    daemon
        .wait_until("trades stored", SETTLE, || async {
            scalar(&url, "SELECT count(*) FROM trades").await > 20
        })
        .await;
    let mut by_header = Client::connect(addr, TOKEN).await;
    let (mut by_query, _) =
        Client::open(request(addr, &format!("/ws?token={TOKEN}")), None).await.expect("?token=");
    by_query.hello().await;
    let mut by_protocol = request(addr, "/ws");
    by_protocol
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", common::stream::header(&format!("tickd.v1, bearer.{TOKEN}")));
    let (mut by_protocol, _) = Client::open(by_protocol, None).await.expect("bearer. subprotocol");
    by_protocol.hello().await;
    for c in [&mut by_header, &mut by_query, &mut by_protocol] {
        let reply = c.ask(json!({"cmd": "status", "id": "s"}), REPLY).await;
        assert_eq!(reply["type"], "status", "{reply}");
    }
    let wrong =
        http_get(addr, &format!("/ws?token={}", TOKEN.to_uppercase()), &common::stream::upgrade_headers())
            .await;
    let metrics = scrape(addr).await;
    let readyz = http_get(addr, "/readyz", &[]).await;
    let file = dir.path().join("tickd.toml");
    let check = tickd().arg("check-config").arg("--config").arg(&file).output().expect("tickd runs");
    let exit = daemon.stop(STOP).await;
    let log = daemon.log_text();
    drop_role(&db, &role).await;

    // Assert: the outputs are there to search...
    assert_eq!(exit, Some(0), "log:\n{log}");
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let (check_stdout, check_err) = (
        String::from_utf8_lossy(&check.stdout).into_owned(),
        String::from_utf8_lossy(&check.stderr).into_owned(),
    );
    assert_eq!(check.status.code(), Some(0), "{check_err}");
    assert!(
        check_stdout.contains(&key_file.display().to_string()),
        "the key's path is shown: {check_stdout}"
    );
    assert!(check_stdout.contains("<redacted>"), "{check_stdout}");
    let lines = common::daemon::parse_log(&log);
    let debug = lines.iter().filter(|l| l.level() == "DEBUG").count();
    assert!(
        debug > 10 && lines.iter().any(|l| l.message() == "Live."),
        "a detailed log of a live feed:\n{log}"
    );
    assert_eq!(metrics.feed_state(), "live", "the signed feed is up");
    // ...and none of them holds a secret, nor the handshake's signature (which the test
    // cannot know, but which only ever follows its header's name).
    let mut secrets =
        vec![("the database password", password.to_owned()), ("the dashboard token", TOKEN.to_owned())];
    secrets.extend(
        key.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(|l| ("a line of the private key", l.to_owned())),
    );
    assert!(secrets.len() > 10, "the key has a body");
    let outputs = [
        ("the log", log.as_str()),
        ("/metrics", metrics.text.as_str()),
        ("/readyz", readyz.body.as_str()),
        ("check-config's output", check_stdout.as_str()),
        ("check-config's stderr", check_err.as_str()),
        ("the refusal", wrong.body.as_str()),
    ];
    for (what, secret) in &secrets {
        for (output, text) in outputs {
            assert!(!text.contains(secret.as_str()), "{what} shows in {output}:\n{text}");
        }
    }
    for (output, text) in outputs {
        let signed = text.to_ascii_lowercase().contains("kalshi-access-signature");
        assert!(!signed, "the handshake's signature shows in {output}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_stream_exits_0_stores_every_trade_received_and_closes_clients_with_1001() {
    // Arrange: a busy stream and a client reading every trade of it.
    let mut rig = start(simulator(10, 2000), |c| {
        // A write abandoned at its limit on a loaded machine would count its replay as
        // duplicates; a generous one keeps every count exact.
        c.store("write_timeout", &toml_str("30s"));
    })
    .await;
    let mut client = Client::connect(rig.addr, TOKEN).await;
    let reply = client.ask(subscribe(1, &["trades"], json!("all")), REPLY).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let url = rig.db.url.clone();
    rig.daemon
        .wait_until("500 trades stored", SETTLE, || async {
            scalar(&url, "SELECT count(*) FROM trades").await >= 500
        })
        .await;
    client.until("a live trade", REPLY, |f| f["type"] == "trade").await;

    // Act: stop in full flow; the client reads on until the server closes.
    rig.daemon.terminate();
    let (end, during_stop) = client.end("the close at shutdown", STOP).await;
    let exit = rig.daemon.wait_exit(STOP).await;

    // Assert
    assert_eq!(exit, Some(0), "log:\n{}", rig.daemon.log_text());
    assert_eq!(end, Event::Closed(Some(1001)), "after {} frames", during_stop.len());
    let feed = rig.daemon.last("Feed stopped.").expect("the feed's last line");
    assert_eq!((feed.str("feed"), feed.field("conn").as_u64()), ("sim", Some(0)), "{}", feed.raw);
    let writer = rig.daemon.last("Store writer stopped.").expect("the writer's last line");
    assert_eq!(writer.u64("received"), writer.u64("committed"), "{}", writer.raw);
    assert_eq!((writer.u64("lost"), writer.u64("spooled_batches")), (0, 0), "{}", writer.raw);
    // One connection, read in order: the trades received are the first ones the exchange
    // wrote, and every one of them is a row.
    let stored = stored_trade_ids(&rig.db.url).await;
    let received = feed.u64("trades") as usize;
    assert_eq!(stored.len(), received, "rows in trades vs trades received; {}", feed.raw);
    let sent = rig.sim.trades_sent();
    assert!(sent.len() >= received, "{} sent, {received} received", sent.len());
    let stored: HashSet<&String> = stored.iter().collect();
    let missing: Vec<&String> = sent[..received].iter().filter(|t| !stored.contains(t)).collect();
    assert!(
        missing.is_empty(),
        "{} trades received but not stored, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    assert_eq!(stored.len(), received, "no trade stored twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_a_slow_stop_exits_at_once_with_130() {
    // Arrange: a writer that may wait ten minutes for a write, and a test that holds the
    // trades table locked, so that the last write at shutdown waits.
    let mut rig = start(simulator(3, 200), |c| {
        c.store("write_timeout", &toml_str("10m"));
    })
    .await;
    let url = rig.db.url.clone();
    rig.daemon
        .wait_until("trades stored", SETTLE, || async {
            scalar(&url, "SELECT count(*) FROM trades").await > 20
        })
        .await;
    let mut locker = rig.db.connect().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE trades IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .expect("the lock");
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    rig.daemon
        .wait_until("a write waiting for the lock", SETTLE, || async { scalar(&url, waiting).await > 0 })
        .await;

    // Act: the first SIGTERM starts a stop that cannot finish while the lock is held...
    rig.daemon.terminate();
    let sim = &rig.sim;
    wait_until("the feed's connection closed", STOP, || async { sim.stats().connections_open == 0 }).await;
    let still_waiting = scalar(&url, waiting).await;
    let running = rig.daemon.running();
    // ...and the second one ends it.
    rig.daemon.terminate();
    let exit = rig.daemon.wait_exit(STOP).await;
    sqlx::raw_sql("ROLLBACK").execute(&mut locker).await.expect("the lock released");

    // Assert
    assert!(
        running && still_waiting > 0,
        "the stop was waiting for the database; log:\n{}",
        rig.daemon.log_text()
    );
    assert_eq!(exit, Some(130), "log:\n{}", rig.daemon.log_text());
    let second = rig.daemon.last("Second stop signal: exiting now.").expect("the second signal is logged");
    assert_eq!(second.level(), "WARN", "{}", second.raw);
    assert!(rig.daemon.last("Stopped.").is_none(), "no clean stop is claimed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_markets_on_the_open_connection() {
    // Arrange: the exchange lists six markets; the daemon follows the first four.
    let sim = simulator(6, 600);
    let all = sim.markets();
    let mut rig = start(sim.clone(), |c| c.markets = all[..4].to_vec()).await;
    let url = rig.db.url.clone();
    let (removed, added) = (all[0].clone(), all[4..].to_vec());
    rig.daemon
        .wait_until("trades of the first market", SETTLE, || async { trades_of(&url, &removed).await > 0 })
        .await;

    // Act: the file now names markets 2 to 6; SIGHUP.
    rig.config.markets = all[1..].to_vec();
    write_config(rig.dir.path(), "tickd", &rig.config.toml());
    rig.daemon.signal("HUP");
    let sim2 = sim.clone();
    rig.daemon
        .wait_until("update_subscription to add and delete markets", LIVE, || {
            let actions = update_actions(&sim2);
            async move {
                actions.contains(&"add_markets".to_owned()) && actions.contains(&"delete_markets".to_owned())
            }
        })
        .await;
    for market in &added {
        rig.daemon
            .wait_until(&format!("trades of {market}"), SETTLE, || async {
                trades_of(&url, market).await > 0
            })
            .await;
    }
    // Once the exchange has written everything of before, the removed market stays still.
    sim.pause();
    wait_sent_trades_stored(&sim, &url, SETTLE).await;
    let removed_rows = trades_of(&url, &removed).await;
    sim.resume();
    let before = scalar(&url, "SELECT count(*) FROM trades").await;
    rig.daemon
        .wait_until("200 more trades", SETTLE, || async {
            scalar(&url, "SELECT count(*) FROM trades").await > before + 200
        })
        .await;
    sim.pause();
    wait_sent_trades_stored(&sim, &url, SETTLE).await;
    let m = scrape(rig.addr).await;
    let exit = rig.daemon.stop(STOP).await;

    // Assert
    assert_eq!(exit, Some(0), "log:\n{}", rig.daemon.log_text());
    assert_eq!(sim.stats().connections_total, 1, "no new connection");
    assert_eq!(m.feed("tickd_feed_connects_total", &[]), 1);
    assert_eq!(trades_of(&url, &removed).await, removed_rows, "no trade of {removed} after its removal");
    let markets = texts(&url, "SELECT DISTINCT market FROM trades ORDER BY 1").await;
    assert_eq!(markets, all, "every market traded at some point");
    let changed = rig.daemon.last("Market list changed.").expect("the feed says so");
    assert_eq!((changed.str("feed"), changed.u64("markets")), ("sim", 5), "{}", changed.raw);
}

/// The `action` of every `update_subscription` the simulator received.
fn update_actions(sim: &Simulator) -> Vec<String> {
    sim.commands_received()
        .iter()
        .filter(|(_, c)| c["cmd"] == "update_subscription")
        .filter_map(|(_, c)| c["params"]["action"].as_str().map(str::to_owned))
        .collect()
}

/// Rows of `market` in `trades`.
async fn trades_of(url: &str, market: &str) -> i64 {
    scalar(url, &format!("SELECT count(*) FROM trades WHERE market = '{market}'")).await
}

/// Removes a file when dropped, also when a test fails.
struct RemoveOnDrop(&'static str);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// systemd's journal socket, where `tracing-journald` writes (a fixed path).
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// One journal entry in the native protocol: `KEY=value` lines, or `KEY`, a little-endian u64
/// length and the bytes for a value with a newline in it.
fn journal_fields(datagram: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = &rest[..line_end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let key = String::from_utf8_lossy(&line[..eq]).into_owned();
            fields.insert(key, String::from_utf8_lossy(&line[eq + 1..]).into_owned());
            rest = rest.get(line_end + 1..).unwrap_or(&[]);
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let after = &rest[line_end + 1..];
            let len = u64::from_le_bytes(after[..8].try_into().expect("length")) as usize;
            fields.insert(key, String::from_utf8_lossy(&after[8..8 + len]).into_owned());
            rest = after.get(8 + len + 1..).unwrap_or(&[]);
        }
    }
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journald_logs_reach_the_journal_socket_with_feed_fields_and_syslog_priorities() {
    // Arrange: stand in for systemd-journald on its socket, where there is none. A socket file
    // nobody listens on is left over from an interrupted run.
    let listened = std::os::unix::net::UnixDatagram::unbound().and_then(|s| s.connect(JOURNAL_SOCKET));
    if let Err(e) = &listened
        && e.kind() == std::io::ErrorKind::ConnectionRefused
    {
        let _ = std::fs::remove_file(JOURNAL_SOCKET);
    }
    if std::path::Path::new(JOURNAL_SOCKET).exists() {
        eprintln!("{JOURNAL_SOCKET} belongs to a running journal; this test needs it free");
        return;
    }
    let Ok(()) = std::fs::create_dir_all("/run/systemd/journal") else {
        eprintln!("/run/systemd/journal cannot be created here (not root); skipped");
        return;
    };
    let journal = tokio::net::UnixDatagram::bind(JOURNAL_SOCKET).expect("bind the journal socket");
    let _unbind = RemoveOnDrop(JOURNAL_SOCKET);
    let sim = simulator(3, 200);
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config =
        DaemonConfig::new(&dir.path().join("state"), &db.url, &serve(&sim).await, &sim.markets());
    config.dashboard("token", &toml_str(TOKEN));
    let text = config.toml().replace("format = \"json\"", "format = \"journald\"");
    assert!(text.contains("format = \"journald\""), "{text}");
    let file = write_config(dir.path(), "tickd", &text);
    let child = tickd()
        .args(["run", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tickd starts");

    // Act: read entries until the feed's "Live." arrives, then stop the daemon.
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = tokio::time::Instant::now() + LIVE;
    let live = loop {
        let n = tokio::time::timeout_at(deadline, journal.recv(&mut buf))
            .await
            .expect("the feed's Live. line within the limit")
            .expect("journal socket read");
        // tracing-journald probes the socket with an empty datagram first.
        if n == 0 {
            continue;
        }
        let fields = journal_fields(&buf[..n]);
        let is_live = fields.get("MESSAGE").is_some_and(|m| m.contains("Live."));
        entries.push(fields.clone());
        if is_live {
            break fields;
        }
    };
    let status =
        std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output().expect("tickd exits");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .expect("wait");

    // Assert
    assert_eq!(live.get("F_FEED").map(String::as_str), Some("sim"), "{live:?}");
    assert_eq!(live.get("F_CONN").map(String::as_str), Some("0"), "{live:?}");
    assert_eq!(live.get("PRIORITY").map(String::as_str), Some("6"), "info is informational: {live:?}");
    assert!(entries.iter().all(|e| e.contains_key("MESSAGE") && e.contains_key("PRIORITY")), "{entries:?}");
    assert!(entries.iter().all(|e| !format!("{e:?}").contains(TOKEN)), "no secret in the journal");
    assert_eq!(exit.0, Some(0), "{}", exit.1);
    assert!(!exit.1.contains("Live."), "logs go to the journal, not stderr: {}", exit.1);
}
