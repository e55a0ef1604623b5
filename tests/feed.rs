//! The feed actor against the simulator: delivery, reconnects, heartbeat, backoff, gaps,
//! bad frames and signed handshakes. Real sockets where time does not matter; in-process
//! streams on paused time where it does.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use common::{Harness, Transport, fixture, poll_until};
use rsa::pkcs8::DecodePublicKey;
use tickd::dev::sim::{SimAuth, SimConfig, market_names};
use tickd::kalshi::sign::Credentials;
use tickd::tick::FeedEvent;

const LIMIT: Duration = Duration::from_secs(30);

fn sim_config(markets: usize, rate: u32) -> SimConfig {
    SimConfig { seed: 42, markets: market_names(markets), rate, ..SimConfig::default() }
}

/// The subscribe commands of one simulator connection, as (channel, sorted markets, use_yes_price).
fn subscriptions(
    sim: &tickd::dev::sim::Simulator,
    conn: u64,
) -> BTreeSet<(String, Vec<String>, Option<bool>)> {
    sim.commands_received()
        .into_iter()
        .filter(|(c, cmd)| *c == conn && cmd["cmd"] == "subscribe")
        .map(|(_, cmd)| {
            let p = &cmd["params"];
            let channels: Vec<String> =
                p["channels"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
            let mut markets: Vec<String> = p["market_tickers"]
                .as_array()
                .map(|a| a.iter().map(|m| m.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            markets.sort();
            (channels.join(","), markets, p["use_yes_price"].as_bool())
        })
        .collect()
}

/// Every trade the exchange wrote arrived once, in order; on failure, says which differ.
fn assert_same_trades(got: &[String], sent: &[String]) {
    if got == sent {
        return;
    }
    let (g, s): (HashSet<&String>, HashSet<&String>) = (got.iter().collect(), sent.iter().collect());
    let missing: Vec<_> = sent.iter().enumerate().filter(|(_, t)| !g.contains(t)).collect();
    let extra: Vec<_> = got.iter().enumerate().filter(|(_, t)| !s.contains(t)).collect();
    let first = got.iter().zip(sent).position(|(a, b)| a != b);
    panic!(
        "published {} trades, exchange wrote {}; missing {missing:?}; extra {extra:?}; first difference at {first:?}",
        got.len(),
        sent.len()
    );
}

fn trades(ticks: &[std::sync::Arc<tickd::tick::Tick>]) -> usize {
    ticks.iter().filter(|t| matches!(t.kind, tickd::tick::TickKind::Trade(_))).count()
}

fn connection_ids(sim: &tickd::dev::sim::Simulator) -> Vec<u64> {
    let ids: BTreeSet<u64> = sim.commands_received().into_iter().map(|(c, _)| c).collect();
    ids.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_markets_every_trade_reaches_the_bus_exactly_once_and_books_match_the_exchange() {
    let h = Harness::start(sim_config(50, 5_000), Transport::Tcp, |_| {}).await;
    h.wait_live(1, LIMIT).await;
    h.ticks.wait_until("500 trades", LIMIT, |t| (trades(t) >= 500).then_some(())).await;

    h.quiesce(LIMIT).await;

    let sent = h.sim.trades_sent();
    let got = h.ticks.trade_ids();
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no trade is published twice");
    assert_same_trades(&got, &sent);
    h.assert_books_match().await;
    let m = h.metrics.snapshot();
    assert_eq!((m.gaps, m.parse_errors, m.book_errors, m.connects), (0, 0, 0, 1));
    assert!(m.quotes > 0 && m.deltas > 0 && m.snapshots >= 50);
    assert_eq!(h.stop().await, tickd::feed::FeedExit::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_reconnects_replays_every_subscription_and_rebuilds_books() {
    let h = Harness::start(sim_config(10, 2_000), Transport::Tcp, |_| {}).await;
    h.wait_live(1, LIMIT).await;
    let first = connection_ids(&h.sim)[0];

    let skip = h.ticks.event_count();
    h.sim.drop_all();

    h.ticks.wait_event("Disconnected", LIMIT, skip, |e| matches!(e, FeedEvent::Disconnected { .. })).await;
    h.ticks.wait_event("Connected again", LIMIT, skip, |e| matches!(e, FeedEvent::Connected)).await;
    h.wait_live(2, LIMIT).await;
    let second = *connection_ids(&h.sim).last().unwrap();
    assert_ne!(first, second);
    let replayed = subscriptions(&h.sim, second);
    assert_eq!(replayed, subscriptions(&h.sim, first), "the same subscriptions are replayed");
    assert!(replayed.iter().any(|(c, m, yes)| c == "orderbook_delta" && m.len() == 10 && *yes == Some(true)));

    // Trades sent on both connections all arrive exactly once.
    h.ticks.wait_until("trades after the reconnect", LIMIT, |t| (trades(t) >= 50).then_some(())).await;
    h.quiesce(LIMIT).await;
    assert_same_trades(&h.ticks.trade_ids(), &h.sim.trades_sent());
    h.assert_books_match().await;
    assert_eq!(h.metrics.snapshot().connects, 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_read_with_the_end_of_a_dropped_connection_are_published_before_its_disconnect() {
    // A busy exchange, so that the last read before the drop carries trades and the end of
    // the stream together.
    let h = Harness::start(sim_config(10, 5_000), Transport::Tcp, |_| {}).await;
    h.wait_live(1, LIMIT).await;
    h.ticks.wait_until("trades", LIMIT, |t| (trades(t) >= 200).then_some(())).await;
    let skip = h.ticks.event_count();

    // No reconnect: whatever is published late is published never.
    h.sim.refuse_handshakes(u32::MAX);
    h.sim.drop_all();
    h.ticks.wait_event("Disconnected", LIMIT, skip, |e| matches!(e, FeedEvent::Disconnected { .. })).await;

    let ticks = h.ticks.all();
    let disconnect = ticks
        .iter()
        .position(|t| matches!(&t.kind, tickd::tick::TickKind::Feed(FeedEvent::Disconnected { .. })))
        .expect("the Disconnected tick");
    let before: Vec<String> = ticks[..disconnect]
        .iter()
        .filter_map(|t| match &t.kind {
            tickd::tick::TickKind::Trade(trade) => Some(trade.trade_id.clone()),
            _ => None,
        })
        .collect();
    assert_same_trades(&before, &h.sim.trades_sent());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_half_open_connection_is_detected_within_ping_interval_plus_pong_timeout() {
    let h = Harness::start(sim_config(3, 50), Transport::InMemory, |s| {
        s.ping_interval = Duration::from_secs(25);
        s.pong_timeout = Duration::from_secs(10);
    })
    .await;
    h.wait_live(1, LIMIT).await;

    h.sim.set_stall(true);
    let stalled_at = tokio::time::Instant::now();
    let skip = h.ticks.event_count();
    let event = h
        .ticks
        .wait_event("Disconnected", Duration::from_secs(120), skip, |e| {
            matches!(e, FeedEvent::Disconnected { .. })
        })
        .await;
    let detected_after = stalled_at.elapsed();
    assert!(
        detected_after <= Duration::from_secs(35) + Duration::from_millis(100),
        "took {detected_after:?}"
    );
    assert!(matches!(event, FeedEvent::Disconnected { reason } if reason.contains("no frame")));
    assert_eq!(h.metrics.snapshot().heartbeat_timeouts, 1);

    h.sim.set_stall(false);
    h.wait_live(2, Duration::from_secs(120)).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn refused_handshakes_back_off_growing_capped_and_jittered_then_alert_and_recover() {
    let h = Harness::start(sim_config(3, 20), Transport::InMemory, |s| {
        s.backoff = tickd::config::BackoffSettings::default();
        s.max_reconnects = 10;
    })
    .await;
    h.wait_live(1, LIMIT).await;

    h.sim.refuse_handshakes(12);
    h.sim.drop_all();
    let skip = h.ticks.event_count();
    h.wait_live(2, Duration::from_secs(600)).await;

    let events: Vec<FeedEvent> = h.ticks.events().into_iter().skip(skip).collect();
    let delays: Vec<(u32, u64)> = events
        .iter()
        .filter_map(|e| match e {
            FeedEvent::BackingOff { failures, delay_ms } => Some((*failures, *delay_ms)),
            _ => None,
        })
        .collect();
    // One drop plus twelve refusals: thirteen consecutive failures.
    assert_eq!(delays.iter().map(|d| d.0).collect::<Vec<_>>(), (1..=13).collect::<Vec<_>>());
    let mut jittered = false;
    for &(n, ms) in &delays {
        let base = (1000u64 << (n - 1).min(5)).min(30_000);
        assert!(ms >= base / 2 && ms <= base, "failure {n}: {ms} ms outside [{}, {base}]", base / 2);
        jittered |= ms != base;
    }
    assert!(jittered, "delays are randomized: {delays:?}");
    assert!(delays.windows(2).take(4).all(|w| w[1].1 > w[0].1 / 2), "delays grow");
    let alerts: Vec<&FeedEvent> = events
        .iter()
        .filter(|e| matches!(e, FeedEvent::Alert { kind, .. } if kind == "max_reconnects"))
        .collect();
    assert_eq!(alerts.len(), 1, "one alert per incident: {events:?}");
    let alert_at = events.iter().position(|e| matches!(e, FeedEvent::Alert { .. })).unwrap();
    let backoffs_before =
        events[..alert_at].iter().filter(|e| matches!(e, FeedEvent::BackingOff { .. })).count();
    assert_eq!(backoffs_before, 9, "the alert comes with the tenth consecutive failure");
    assert_eq!(h.metrics.snapshot().alerts, 1);

    // Once healthy for `healthy_after`, the next failure starts from the initial delay again.
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(h.metrics.snapshot().consecutive_failures, 0);
    let skip = h.ticks.event_count();
    h.sim.drop_all();
    let next =
        h.ticks.wait_event("BackingOff", LIMIT, skip, |e| matches!(e, FeedEvent::BackingOff { .. })).await;
    assert!(matches!(next, FeedEvent::BackingOff { failures: 1, delay_ms } if delay_ms <= 1000), "{next:?}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_multiplier_of_one_and_a_half_with_a_tenth_jitter_spaces_reconnects_so_and_holds_the_cap_after_the_alert()
 {
    // Arrange: delays of 1 s × 1.5ⁿ up to 10 s, a tenth of each drawn at random; the alert
    // after six failures in a row.
    let h = Harness::start(sim_config(3, 20), Transport::InMemory, |s| {
        s.backoff = tickd::config::BackoffSettings {
            initial: Duration::from_secs(1),
            multiplier: 1.5,
            max: Duration::from_secs(10),
            jitter: 0.1,
            healthy_after: Duration::from_secs(2),
        };
        s.max_reconnects = 6;
    })
    .await;
    h.wait_live(1, LIMIT).await;

    // Act: the connection drops and the next nine handshakes are refused: ten failures.
    h.sim.refuse_handshakes(9);
    h.sim.drop_all();
    let skip = h.ticks.event_count();
    h.wait_live(2, Duration::from_secs(600)).await;

    // Assert: each wait, from the failure's backoff row to the next attempt, as observed.
    let events: Vec<(tokio::time::Instant, FeedEvent)> =
        h.ticks.timed_events().into_iter().skip(skip).collect();
    let mut waits = Vec::new();
    for (i, (at, event)) in events.iter().enumerate() {
        if let FeedEvent::BackingOff { failures, delay_ms } = event {
            let next = events[i..].iter().find(|(_, e)| matches!(e, FeedEvent::Connecting { .. }));
            let (attempt_at, _) = next.expect("an attempt after each backoff");
            waits.push((*failures, *delay_ms, *attempt_at - *at));
        }
    }
    assert_eq!(waits.iter().map(|w| w.0).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>(), "{events:?}");
    // 1 s × 1.5ⁿ⁻¹ for the first five, then the cap: the alert came with the sixth.
    let bases_ms = [1000.0, 1500.0, 2250.0, 3375.0, 5062.5, 10_000.0, 10_000.0, 10_000.0, 10_000.0, 10_000.0];
    // tokio's timers wake on whole milliseconds: a wait is its delay rounded up to one.
    for (&(n, delay_ms, waited), base) in waits.iter().zip(bases_ms) {
        let waited_ms = waited.as_secs_f64() * 1000.0;
        assert!(
            waited_ms >= base * 0.9 && waited_ms <= base.ceil(),
            "failure {n}: waited {waited:?}, outside [0.9 × {base} ms, {base} ms]"
        );
        let rounded = waited.as_millis() as u64;
        assert!(
            rounded == delay_ms || rounded == delay_ms + 1,
            "failure {n}: the backoff row says {delay_ms} ms"
        );
    }
    assert!(
        waits.iter().zip(bases_ms).any(|(w, base)| w.2.as_secs_f64() * 1000.0 < base - 1.0),
        "a tenth of each delay is random: {waits:?}"
    );
    let alerts: Vec<&String> = events
        .iter()
        .filter_map(|(_, e)| match e {
            FeedEvent::Alert { kind, message } if kind == "max_reconnects" => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(alerts.len(), 1, "{events:?}");
    assert!(alerts[0].contains("6 consecutive connection failures; retrying every 10s"), "{}", alerts[0]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_gap_is_repaired_on_the_live_connection() {
    let h = Harness::start(sim_config(10, 2_000), Transport::Tcp, |_| {}).await;
    h.wait_live(1, LIMIT).await;
    let skip = h.ticks.event_count();

    h.sim.skip_seq(3);

    let gap = h.ticks.wait_event("Gap", LIMIT, skip, |e| matches!(e, FeedEvent::Gap { .. })).await;
    let FeedEvent::Gap { expected, got, .. } = gap else { unreachable!() };
    assert_eq!(got, expected + 3, "exactly the skipped numbers are reported missing");
    h.ticks.wait_event("Resynced", LIMIT, skip, |e| matches!(e, FeedEvent::Resynced { .. })).await;
    h.quiesce(LIMIT).await;
    h.assert_books_match().await;
    let m = h.metrics.snapshot();
    assert_eq!(m.connects, 1, "repaired without reconnecting");
    assert!(m.gaps >= 1 && m.resyncs >= 1);
    let commands = h.sim.commands_received();
    assert!(
        commands.iter().any(|(_, c)| c["params"]["action"] == "get_snapshot"),
        "repaired with get_snapshot"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_channel_error_resubscribes_and_rebuilds_books() {
    let h = Harness::start(sim_config(5, 1_000), Transport::Tcp, |_| {}).await;
    h.wait_live(1, LIMIT).await;
    let skip = h.ticks.event_count();

    h.sim.send_terminal_error(10);

    h.ticks.wait_event("Stale", LIMIT, skip, |e| matches!(e, FeedEvent::Stale { .. })).await;
    h.ticks.wait_event("Resynced", LIMIT, skip, |e| matches!(e, FeedEvent::Resynced { .. })).await;
    h.quiesce(LIMIT).await;
    h.assert_books_match().await;
    let first = connection_ids(&h.sim)[0];
    let orderbook_subscribes = h
        .sim
        .commands_received()
        .iter()
        .filter(|(c, cmd)| {
            *c == first && cmd["cmd"] == "subscribe" && cmd["params"]["channels"][0] == "orderbook_delta"
        })
        .count();
    assert_eq!(orderbook_subscribes, 2, "subscribed again on the same connection");
    assert_eq!(h.metrics.snapshot().connects, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_and_oversized_frames_are_counted_and_the_connection_goes_on() {
    let cfg = SimConfig { extra_fields: true, ..sim_config(5, 1_000) };
    let h = Harness::start(cfg, Transport::Tcp, |s| s.max_frame_bytes = 64 * 1024).await;
    h.wait_live(1, LIMIT).await;

    h.sim.send_malformed(3);
    h.sim.send_unknown(2);
    h.sim.send_oversized(256 * 1024);

    let m = h.metrics.clone();
    poll_until("bad frames counted", LIMIT, || {
        let s = m.snapshot();
        s.parse_errors >= 3 && s.unknown_types >= 2 && s.oversized_frames == 1
    })
    .await;
    let before = trades(&h.ticks.all());
    h.ticks.wait_until("more trades", LIMIT, |t| (trades(t) > before + 10).then_some(())).await;
    h.quiesce(LIMIT).await;
    h.assert_books_match().await;
    let s = h.metrics.snapshot();
    assert_eq!(s.connects, 1, "the connection went on");
    assert!(s.unknown_fields > 0, "unknown fields are counted");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_handshake_is_accepted_and_a_wrong_key_is_reported_as_rejected_credentials() {
    let public = std::fs::read_to_string(fixture("test_key_pub.pem")).unwrap();
    let auth = || SimAuth {
        key_id: "test-key-id".into(),
        public_key: rsa::RsaPublicKey::from_public_key_pem(&public).unwrap(),
        max_skew: Duration::from_secs(30),
    };

    let good = Credentials::load("test-key-id", &fixture("test_key_pkcs8.pem")).unwrap();
    let cfg = SimConfig { auth: Some(auth()), ..sim_config(3, 100) };
    let h =
        Harness::start_with(cfg, Transport::Tcp, |_| {}, |c| c.credentials = Some(good.into()), None).await;
    h.wait_live(1, LIMIT).await;
    assert_eq!(h.sim.stats().handshakes_unauthorized, 0);
    h.stop().await;

    let wrong = Credentials::load("test-key-id", &fixture("test_key_other_pkcs8.pem")).unwrap();
    let cfg = SimConfig { auth: Some(auth()), ..sim_config(3, 100) };
    let h =
        Harness::start_with(cfg, Transport::Tcp, |_| {}, |c| c.credentials = Some(wrong.into()), None).await;
    let alert = h
        .ticks
        .wait_event(
            "credentials alert",
            LIMIT,
            0,
            |e| matches!(e, FeedEvent::Alert { kind, .. } if kind == "credentials_rejected"),
        )
        .await;
    assert!(matches!(alert, FeedEvent::Alert { message, .. } if message.contains("401")));
    h.ticks.wait_event("backing off", LIMIT, 0, |e| matches!(e, FeedEvent::BackingOff { .. })).await;
    assert!(h.metrics.snapshot().credentials_rejected >= 1);
    assert!(h.sim.stats().handshakes_unauthorized >= 1);
    assert_eq!(h.metrics.snapshot().connects, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markets_added_and_removed_at_runtime_use_update_subscription_without_reconnecting() {
    let h = Harness::start(sim_config(6, 1_000), Transport::Tcp, |s| s.markets.truncate(4)).await;
    h.wait_live(1, LIMIT).await;
    let all = market_names(6);

    let mut wanted: Vec<String> = all[1..6].to_vec();
    wanted.sort();
    assert!(h.handle.set_markets(wanted.clone()).await);

    let sim = h.sim.clone();
    poll_until("add and delete acknowledged", LIMIT, || {
        let actions: Vec<String> = sim
            .commands_received()
            .iter()
            .filter(|(_, c)| c["cmd"] == "update_subscription")
            .map(|(_, c)| c["params"]["action"].as_str().unwrap_or_default().to_string())
            .collect();
        actions.contains(&"add_markets".to_string()) && actions.contains(&"delete_markets".to_string())
    })
    .await;
    let h2 = &h;
    let books =
        || async move { h2.handle.books().await.into_iter().map(|(m, _)| m.to_string()).collect::<Vec<_>>() };
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if books().await == wanted {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "books follow the new market list: have {:?}, want {wanted:?}; commands {:?}",
            books().await,
            h.sim.commands_received()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.metrics.snapshot().connects, 1, "no reconnect");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_command_runs_once_per_incident_with_the_details_in_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("alerts.log");
    let script = dir.path().join("alert.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$TICKD_ALERT_FEED|$TICKD_ALERT_KIND|$TICKD_ALERT_MESSAGE|$TICKD_ALERT_TIME|$TICKD_ALERT_STATE|$TICKD_ALERT_SOURCE|$TICKD_ALERT_ID\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let h = Harness::start_with(
        sim_config(2, 50),
        Transport::Tcp,
        |s| s.max_reconnects = 3,
        |_| {},
        Some(script.clone()),
    )
    .await;
    h.wait_live(1, LIMIT).await;

    h.sim.refuse_handshakes(6);
    h.sim.drop_all();
    h.wait_live(2, LIMIT).await;

    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    poll_until("the alert command to write", LIMIT, || !read().is_empty()).await;
    let lines: Vec<String> = read().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 1, "one alert for one incident, no recovery before healthy_after: {lines:?}");
    let fields: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(fields[0], "sim");
    assert_eq!(fields[1], "max_reconnects");
    assert!(fields[2].contains("3 consecutive connection failures"), "{}", fields[2]);
    assert!(fields[3].parse::<i64>().unwrap() > 1_700_000_000, "a Unix time in seconds");
    assert_eq!((fields[4], fields[5]), ("firing", "sim/0"));

    // The connection stays healthy for `healthy_after` (2 s here): one recovery notice.
    poll_until("the recovery notice", LIMIT, || read().lines().count() >= 2).await;
    h.stop().await;
    let lines: Vec<String> = read().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "one alert and one recovery for one incident: {lines:?}");
    let resolved: Vec<&str> = lines[1].split('|').collect();
    assert_eq!(
        (resolved[0], resolved[1], resolved[4], resolved[5]),
        ("sim", "max_reconnects", "resolved", "sim/0")
    );
    assert!(resolved[2].contains("healthy"), "{}", resolved[2]);
    assert_eq!(resolved[6], fields[6], "an alert and its recovery share an id");
}
