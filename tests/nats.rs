//! Ticks over NATS JetStream, end to end with real parts: the simulator, the daemon (in this
//! process) publishing to a private `nats-server`, `tickd record` (the built binary, a child
//! process) writing the stream into its own PostgreSQL database.
//!
//! The daemon records into one database and the recorder into another, so what the recorder's
//! database holds came through NATS. "Every trade sent" is [`Simulator::trades_sent`] once the
//! simulator is paused and caught up (see `store_e2e.rs`).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::app::{TestApp, spawn_app};
use common::daemon::{
    Daemon, DaemonConfig, event_count, scalar, serve, stored_trade_ids, toml_str, wait_caught_up,
    wait_sent_trades_stored, wait_until, write_config,
};
use common::pg::TestDb;
use tickd::config::Settings;
use tickd::dev::localnats::{LocalNats, LocalNatsOptions};
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tickd::nats::record::RecordMetrics;
use tickd::nats::{NatsMetrics, payload, subject};
use tickd::tick::{Price, Qty, Tick, TickKind, Trade};
use tokio_util::sync::CancellationToken;

/// How long a daemon may take to connect, subscribe and build its books.
const LIVE: Duration = Duration::from_secs(60);
/// How long a daemon or recorder may take to stop.
const STOP: Duration = Duration::from_secs(30);
/// How long the recorder's database may take to catch up with what the simulator wrote.
const SETTLE: Duration = Duration::from_secs(90);

fn simulator(markets: Vec<String>, rate: u32) -> Simulator {
    Simulator::start(SimConfig { markets, rate, heartbeat: Duration::from_secs(60), ..SimConfig::default() })
}

async fn nats_server() -> LocalNats {
    LocalNats::start(LocalNatsOptions::default())
        .await
        .unwrap_or_else(|e| panic!("starting nats-server: {e}"))
}

/// The daemon's config: the simulator, `db` for its own store, and `[nats]` on `nats`.
fn daemon_config(
    dir: &std::path::Path,
    db: &TestDb,
    sim_url: &str,
    sim: &Simulator,
    nats: &LocalNats,
) -> DaemonConfig {
    let mut config = DaemonConfig::new(&dir.join("state"), &db.url, sim_url, &sim.markets());
    config.nats("url", &toml_str(&nats.url())).nats("instance", "\"test\"").nats("max_in_flight", "512");
    config
}

/// The same config file with the recorder's own database as `[store]`.
fn recorder_config(daemon: &DaemonConfig, db: &TestDb) -> DaemonConfig {
    let mut config = daemon.clone();
    config.store("url", &toml_str(&db.url));
    config
}

fn nats(app: &TestApp) -> &NatsMetrics {
    app.health.nats.as_deref().expect("the daemon publishes to NATS")
}

/// Rows in `trades` of `url`, 0 before the recorder created the table.
async fn trade_count(url: &str) -> i64 {
    if scalar(url, "SELECT count(*) FROM pg_tables WHERE tablename = 'trades'").await == 0 {
        return 0;
    }
    scalar(url, "SELECT count(*) FROM trades").await
}

/// Waits until `url` holds more than `n` trades.
async fn wait_trades(app: &TestApp, url: &str, n: i64) {
    app.wait_until(&format!("more than {n} trades recorded from NATS"), LIVE, || async move {
        trade_count(url).await > n
    })
    .await;
}

/// Asserts `url` holds every trade of `sent`, each once, and nothing else.
async fn assert_exactly_once(url: &str, sent: &[String]) {
    let stored = stored_trade_ids(url).await;
    let stored_set: HashSet<&String> = stored.iter().collect();
    let sent_set: HashSet<&String> = sent.iter().collect();
    assert_eq!(stored.len(), stored_set.len(), "some trade is stored twice");
    let missing = sent_set.difference(&stored_set).count();
    let extra = stored_set.difference(&sent_set).count();
    assert_eq!(
        (missing, extra),
        (0, 0),
        "{missing} trades sent but not recorded, {extra} recorded but never sent"
    );
    assert!(!sent.is_empty(), "the simulator sent no trade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trade_reaches_the_recorder_exactly_once_across_a_nats_restart() {
    // Arrange: daemon → NATS → recorder.
    let server = nats_server().await;
    let (db_run, db_rec) = (TestDb::new().await, TestDb::new().await);
    let sim = simulator(market_names(20), 400);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = daemon_config(dir.path(), &db_run, &serve(&sim).await, &sim, &server);
    let mut app = spawn_app(dir.path(), "tickd", &config).await;
    let mut recorder =
        Daemon::start_command(dir.path(), "record", "record", &recorder_config(&config, &db_rec));
    wait_trades(&app, &db_rec.url, 100).await;

    // Act: NATS goes away while ticks keep coming, then comes back.
    server.stop().await.expect("stop NATS");
    app.wait("ticks spooled for NATS", LIVE, |app| NatsMetrics::get(&nats(app).spooled) > 100).await;
    server.restart().await.expect("restart NATS");
    app.wait("the NATS spool replayed", LIVE, |app| {
        let m = nats(app);
        NatsMetrics::get(&m.spooling) == 0 && NatsMetrics::get(&m.replayed) > 0
    })
    .await;
    let before = trade_count(&db_rec.url).await;
    wait_trades(&app, &db_rec.url, before + 100).await;
    sim.pause();
    let sent = wait_sent_trades_stored(&sim, &db_rec.url, SETTLE).await;
    let stopped = app.stop(STOP).await;
    let recorder_exit = recorder.stop(STOP).await;

    // Assert
    assert_exactly_once(&db_rec.url, &sent).await;
    assert!(stopped.is_ok(), "the daemon stopped on an error: {stopped:?}");
    assert_eq!(recorder_exit, Some(0), "the recorder's exit; log:\n{}", recorder.log_text());
    let m = nats(&app);
    assert_eq!(NatsMetrics::get(&m.lost), 0, "nothing was lost");
    assert!(
        !app.health.alerts.active().iter().any(|a| a.starts_with("nats_unreachable")),
        "nats_unreachable is resolved: {:?}",
        app.health.alerts.active()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_killed_and_started_again_loses_and_duplicates_nothing() {
    // Arrange
    let server = nats_server().await;
    let (db_run, db_rec) = (TestDb::new().await, TestDb::new().await);
    let sim = simulator(market_names(20), 400);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = daemon_config(dir.path(), &db_run, &serve(&sim).await, &sim, &server);
    let rec_config = recorder_config(&config, &db_rec);
    let mut app = spawn_app(dir.path(), "tickd", &config).await;
    let mut first = Daemon::start_command(dir.path(), "record-1", "record", &rec_config);
    wait_trades(&app, &db_rec.url, 100).await;

    // Act: SIGKILL mid-stream; the stream goes on; a new recorder takes over the consumer.
    first.signal("KILL");
    assert_eq!(first.wait_exit(STOP).await, None, "killed by the signal");
    let acked = NatsMetrics::get(&nats(&app).acked);
    app.wait("more ticks on the stream", LIVE, |app| NatsMetrics::get(&nats(app).acked) > acked + 1000).await;
    let mut second = Daemon::start_command(dir.path(), "record-2", "record", &rec_config);
    sim.pause();
    let sent = wait_sent_trades_stored(&sim, &db_rec.url, SETTLE).await;
    let stopped = app.stop(STOP).await;
    let second_exit = second.stop(STOP).await;

    // Assert
    assert_exactly_once(&db_rec.url, &sent).await;
    assert!(stopped.is_ok(), "the daemon stopped on an error: {stopped:?}");
    assert_eq!(second_exit, Some(0), "the second recorder's exit; log:\n{}", second.log_text());
    // The daemon's own store saw the same trades: the two paths agree.
    assert_exactly_once(&db_run.url, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_away_long_enough_to_fill_the_spool_is_a_nats_loss_in_the_ledger_and_an_alert() {
    // Arrange: the smallest spool, a busy feed.
    let server = nats_server().await;
    let db = TestDb::new().await;
    let sim = simulator(market_names(50), 3000);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = daemon_config(dir.path(), &db, &serve(&sim).await, &sim, &server);
    config.nats("spool_max_bytes", "1048576");
    let mut app = spawn_app(dir.path(), "tickd", &config).await;
    app.wait("ticks acknowledged by NATS", LIVE, |app| NatsMetrics::get(&nats(app).acked) > 100).await;

    // Act: NATS goes away until the spool is full.
    server.stop().await.expect("stop NATS");
    app.wait("ticks lost to a full NATS spool", LIVE, |app| NatsMetrics::get(&nats(app).lost) > 0).await;
    let url = db.url.clone();
    app.wait_until("a nats_loss row in feed_events", LIVE, || {
        let url = url.clone();
        async move { event_count(&url, "nats_loss").await > 0 }
    })
    .await;
    let active_while_down = app.health.alerts.active();
    let fired = |kind: &str| {
        app.health
            .alerts
            .metrics()
            .series()
            .iter()
            .filter(|((k, source), _)| k == kind && source == "nats")
            .map(|(_, s)| s.fired)
            .sum::<u64>()
    };
    let loss_alerts = fired("nats_loss");
    // The exchange goes quiet, so that the replay catches up whatever the machine's pace.
    sim.pause();
    wait_caught_up(&sim, SETTLE).await;
    server.restart().await.expect("restart NATS");
    app.wait("the NATS spool replayed", LIVE, |app| NatsMetrics::get(&nats(app).spooling) == 0).await;
    // The alert registry applies the recovery on its own task: waited on, not read at once.
    app.wait("nats_unreachable resolved once replayed", LIVE, |app| {
        !app.health.alerts.active().iter().any(|a| a.starts_with("nats_unreachable"))
    })
    .await;
    let stopped = app.stop(STOP).await;

    // Assert
    assert!(stopped.is_ok(), "the daemon stopped on an error: {stopped:?}");
    assert!(active_while_down.contains(&"nats_unreachable:nats".to_owned()), "{active_while_down:?}");
    assert!(loss_alerts >= 1, "nats_loss alert sent");
    let (ticks, lost) = (
        scalar(
            &db.url,
            "SELECT sum((detail->>'ticks')::int8)::int8 FROM feed_events WHERE event = 'nats_loss'",
        )
        .await,
        NatsMetrics::get(&nats(&app).lost) as i64,
    );
    assert_eq!(ticks, lost, "every lost tick is in the ledger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_tickd_did_not_write_is_counted_and_skipped_and_a_backfilled_trade_is_stored_as_rest() {
    // Arrange: a stream holding a message that is no tick frame, then a backfilled trade.
    let server = nats_server().await;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = DaemonConfig::new(
        &dir.path().join("state"),
        &db.url,
        "ws://127.0.0.1:9/trade-api/ws/v2",
        &["M".to_owned()],
    );
    config.nats("url", &toml_str(&server.url()));
    let path = write_config(dir.path(), "record", &config.toml());
    let settings = Settings::load(Some(&path)).expect("loads");
    settings.validate_record().expect("valid for tickd record");
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("connect"));
    tickd::nats::connect::ensure_stream(&js, settings.nats.as_ref().expect("[nats]")).await.expect("stream");
    let trade = Tick {
        feed: "sim".into(),
        conn: 0,
        market: "M".into(),
        exch_ts: Some(1_765_000_000_000),
        recv_ts: 1_765_000_000_500_000,
        kind: TickKind::Trade(Trade {
            trade_id: "t-1".into(),
            price: Price(4800),
            size: Qty(100),
            taker_side: None,
            block: None,
            backfill: true,
        }),
    };
    js.publish("tickd.sim.trade.M", "not a tick".into()).await.expect("publish").await.expect("ack");
    js.publish(subject::subject("tickd", &trade), payload::encode(&trade).into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    // Act
    let metrics = Arc::new(RecordMetrics::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        async move { tickd::nats::record::run(&settings, metrics, shutdown).await }
    });
    wait_until("the recorder to commit the trade", LIVE, || {
        let done = RecordMetrics::get(&metrics.committed) >= 1;
        async move { done }
    })
    .await;
    shutdown.cancel();
    let stopped = task.await.expect("the recorder does not panic");

    // Assert
    assert!(stopped.is_ok(), "{stopped:?}");
    assert_eq!(RecordMetrics::get(&metrics.skipped), 1, "the foreign message is counted");
    assert_eq!(stored_trade_ids(&db.url).await, ["t-1"], "only the trade is stored");
    assert_eq!(scalar(&db.url, "SELECT count(*) FROM trades WHERE source = 'rest'").await, 1);
}
