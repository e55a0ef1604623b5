//! The Kalshi protocol session on its own (sans I/O): what it sends the exchange, what it
//! publishes and which alerts it asks for, frame by frame, on paused time.
//!
//! Each test plays the exchange by hand: it answers the session's commands with the frames a
//! real (or misbehaving) exchange would send, and asserts on what an operator or a consumer
//! would see: commands on the wire, ticks on the bus, feed events in the ledger, metrics.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tickd::kalshi::command::Channel;
use tickd::kalshi::session::{
    AlertAction, Output, RESYNC_BACKOFF, RESYNC_HEALTHY, RESYNC_RETRY_LATER, Session, SessionConfig,
};
use tickd::telemetry::alerts::BOOK_UNRECOVERABLE;
use tickd::telemetry::metrics::{Aside, FeedMetrics};
use tickd::tick::{FeedEvent, Price, Qty, Quote, Tick, TickKind};
use tokio::time::{Instant, sleep_until};

/// One session and everything it asked for so far.
struct Rig {
    session: Session,
    metrics: Arc<FeedMetrics>,
    /// Commands sent, parsed, in order, with the time they were sent.
    sent: Vec<(Instant, Value)>,
    /// Ticks published, in order.
    ticks: Vec<Tick>,
    /// Alerts asked for, in order.
    alerts: Vec<AlertAction>,
    /// Commands not yet answered by the test.
    unanswered: Vec<Value>,
    recv_ts: i64,
}

impl Rig {
    fn new(channels: Vec<Channel>, markets: &[&str]) -> Rig {
        let metrics = Arc::new(FeedMetrics::default());
        let cfg = SessionConfig {
            feed: Arc::from("kalshi"),
            conn: 0,
            channels,
            markets: markets.iter().map(|m| m.to_string()).collect(),
            use_yes_price: false,
            ack_timeout: Duration::from_secs(10),
        };
        Rig {
            session: Session::new(cfg, metrics.clone()),
            metrics,
            sent: Vec::new(),
            ticks: Vec::new(),
            alerts: Vec::new(),
            unanswered: Vec::new(),
            recv_ts: 1_000_000,
        }
    }

    fn collect(&mut self, out: Output) {
        let now = Instant::now();
        for text in out.send {
            let cmd: Value = serde_json::from_str(&text).expect("commands are JSON");
            self.sent.push((now, cmd.clone()));
            self.unanswered.push(cmd);
        }
        self.ticks.extend(out.ticks);
        self.alerts.extend(out.alerts);
    }

    fn connect(&mut self) {
        let mut out = Output::default();
        let recv_ts = self.next_ts();
        self.session.on_connected(Instant::now(), recv_ts, &mut out);
        self.collect(out);
    }

    fn next_ts(&mut self) -> i64 {
        self.recv_ts += 1;
        self.recv_ts
    }

    /// The exchange sends one frame.
    fn frame(&mut self, frame: &str) {
        let mut out = Output::default();
        let recv_ts = self.next_ts();
        let _ = self.session.on_frame(frame.as_bytes(), recv_ts, Instant::now(), &mut out);
        self.collect(out);
    }

    fn json(&mut self, frame: Value) {
        self.frame(&frame.to_string());
    }

    fn timer(&mut self) {
        let mut out = Output::default();
        self.session.on_timer(Instant::now(), &mut out);
        self.collect(out);
    }

    /// Commands not answered yet, oldest first.
    fn take_commands(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.unanswered)
    }

    /// Answers every pending `subscribe` with `subscribed`, giving sids from `next_sid` on.
    fn accept_subscribes(&mut self, next_sid: &mut u64) {
        for cmd in self.take_commands() {
            if cmd["cmd"] == "subscribe" {
                let channel = cmd["params"]["channels"][0].clone();
                let sid = *next_sid;
                *next_sid += 1;
                self.json(
                    json!({"id": cmd["id"], "type": "subscribed", "msg": {"channel": channel, "sid": sid}}),
                );
            } else {
                self.unanswered.push(cmd);
            }
        }
    }

    fn events(&self) -> Vec<(String, FeedEvent)> {
        self.ticks
            .iter()
            .filter_map(|t| match &t.kind {
                TickKind::Feed(e) => Some((t.market.to_string(), e.clone())),
                _ => None,
            })
            .collect()
    }

    fn gaps(&self) -> usize {
        self.events().iter().filter(|(_, e)| matches!(e, FeedEvent::Gap { .. })).count()
    }

    fn sent_with(&self, cmd: &str) -> Vec<&Value> {
        self.sent.iter().map(|(_, c)| c).filter(|c| c["cmd"] == cmd).collect()
    }
}

fn snapshot(sid: u64, seq: u64, market: &str, yes: &str, no: &str) -> String {
    format!(
        r#"{{"type":"orderbook_snapshot","sid":{sid},"seq":{seq},"msg":{{"market_ticker":"{market}","yes_dollars_fp":[["{yes}","10.00"]],"no_dollars_fp":[["{no}","10.00"]]}}}}"#
    )
}

fn delta(sid: u64, seq: u64, market: &str, side: &str, price: &str, size: &str) -> String {
    format!(
        r#"{{"type":"orderbook_delta","sid":{sid},"seq":{seq},"msg":{{"market_ticker":"{market}","price_dollars":"{price}","delta_fp":"{size}","side":"{side}"}}}}"#
    )
}

/// Connects a session following `M` on the order book and answers its subscribe with sid 1.
fn book_rig() -> Rig {
    let mut rig = Rig::new(vec![Channel::OrderbookDelta], &["M"]);
    rig.connect();
    rig.accept_subscribes(&mut 1);
    rig
}

/// The instants (from `start`) at which a `get_snapshot` was sent.
fn snapshot_requests(rig: &Rig, start: Instant) -> Vec<Duration> {
    rig.sent
        .iter()
        .filter(|(_, c)| c["params"]["action"] == "get_snapshot")
        .map(|(at, _)| *at - start)
        .collect()
}

/// When each `get_snapshot` should be sent against a book that never heals, from the first
/// one at `first`, for `span`: rounds of `RESYNC_ATTEMPTS` requests with their backoff, each
/// round `RESYNC_RETRY_LATER` after the last request of the one before.
fn expected_requests(first: Duration, gap_after_each: Duration, span: Duration) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut at = first;
    loop {
        for (i, wait) in RESYNC_BACKOFF.iter().enumerate() {
            if i > 0 {
                at += gap_after_each + *wait;
            }
            if at >= span {
                return out;
            }
            out.push(at);
        }
        at += gap_after_each + RESYNC_RETRY_LATER;
    }
}

#[tokio::test(start_paused = true)]
async fn a_book_still_crossed_after_its_fresh_snapshots_is_resynced_a_few_times_then_kept_stale_and_alerted_once()
 {
    // Arrange: an exchange whose book of M is crossed (YES bid $0.60 + NO bid $0.45 > $1) and
    // that sends the same crossed book for every get_snapshot.
    let mut rig = book_rig();
    let start = Instant::now();
    let mut seq = 1;
    rig.frame(&snapshot(1, seq, "M", "0.6000", "0.4500"));
    let hour = Duration::from_secs(3600);

    // Act: an hour of it, answering every request at once.
    loop {
        for cmd in rig.take_commands() {
            if cmd["params"]["action"] == "get_snapshot" {
                seq += 1;
                rig.frame(&snapshot(1, seq, "M", "0.6000", "0.4500"));
            }
        }
        let deadline = rig.session.next_deadline().expect("a retry is always scheduled");
        if deadline >= start + hour {
            break;
        }
        sleep_until(deadline).await;
        rig.timer();
    }

    // Assert: a few requests with backoff, then one round every RESYNC_RETRY_LATER, never a storm.
    let requests = snapshot_requests(&rig, start);
    assert_eq!(requests.len(), 36, "3 requests every 312 s for an hour");
    assert_eq!(requests, expected_requests(Duration::ZERO, Duration::ZERO, hour));
    assert_eq!(rig.metrics.snapshot().snapshot_requests, 36);
    // One alert, raised when the first round ran out, never resolved meanwhile.
    let raised: Vec<_> = rig
        .alerts
        .iter()
        .filter(|a| matches!(a, AlertAction::Raise { kind: BOOK_UNRECOVERABLE, .. }))
        .collect();
    assert_eq!(raised.len(), 1, "{:?}", rig.alerts);
    assert!(!rig.alerts.iter().any(|a| matches!(a, AlertAction::Resolve { .. })));
    // The market is stale in the ledger, from the first broken snapshot on; the rest is live.
    let events = rig.events();
    let stale: Vec<_> =
        events.iter().filter(|(m, e)| m == "M" && matches!(e, FeedEvent::Stale { .. })).collect();
    let live = events.iter().position(|(_, e)| matches!(e, FeedEvent::Live)).expect("live once given up");
    let first_stale = events.iter().position(|(m, e)| m == "M" && matches!(e, FeedEvent::Stale { .. }));
    assert!(first_stale < Some(live), "stale before live: {events:?}");
    assert_eq!(stale.len(), 2, "announced at the break, and again right after live: {events:?}");
    assert!(matches!(events.last(), Some((m, FeedEvent::Stale { .. })) if m == "M"), "{events:?}");
    assert!(!events.iter().any(|(_, e)| matches!(e, FeedEvent::Resynced { .. } | FeedEvent::Gap { .. })));
    assert!(rig.session.is_live());
    assert_eq!(rig.session.stale_markets(), [Arc::from("M")]);
    assert_eq!(rig.session.book("M"), None, "a stale book is never served");
    assert_eq!(rig.metrics.snapshot().stale_books, 1);

    // While it waits, deltas are recorded as sent.
    let before = rig.ticks.len();
    seq += 1;
    rig.frame(&delta(1, seq, "M", "yes", "0.5900", "5.00"));
    assert!(
        matches!(rig.ticks[before..], [Tick { kind: TickKind::BookDelta(_), .. }]),
        "{:?}",
        &rig.ticks[before..]
    );

    // Act: the exchange heals; the next round's first snapshot is sound.
    let deadline = rig.session.next_deadline().expect("the next round");
    sleep_until(deadline).await;
    rig.timer();
    for cmd in rig.take_commands() {
        if cmd["params"]["action"] == "get_snapshot" {
            seq += 1;
            rig.frame(&snapshot(1, seq, "M", "0.4000", "0.4500"));
        }
    }

    // Assert: a resync naming the market closes its stale window; the alert resolves once the
    // book has stayed sound for RESYNC_HEALTHY.
    assert!(matches!(rig.events().last(), Some((m, FeedEvent::Resynced { sid: 1 })) if m == "M"));
    assert!(rig.session.book("M").is_some());
    assert!(!rig.alerts.iter().any(|a| matches!(a, AlertAction::Resolve { .. })));
    let healthy = rig.session.next_deadline().expect("the healthy check");
    assert_eq!(healthy, Instant::now() + RESYNC_HEALTHY);
    sleep_until(healthy).await;
    rig.timer();
    assert!(matches!(rig.alerts.last(), Some(AlertAction::Resolve { kind: BOOK_UNRECOVERABLE, .. })));
    assert_eq!(rig.metrics.snapshot().stale_books, 0);
    assert!(rig.session.stale_markets().is_empty());
    assert_eq!(rig.session.next_deadline(), None, "nothing left to do");
}

#[tokio::test(start_paused = true)]
async fn a_sound_snapshot_that_every_delta_crosses_does_not_start_a_storm() {
    // Arrange: the exchange's snapshot is sound, but every delta it sends crosses it (as a NO
    // ladder read on the wrong price scale would), ten deltas a second for an hour.
    let mut rig = book_rig();
    let start = Instant::now();
    let mut seq = 1;
    rig.frame(&snapshot(1, seq, "M", "0.4000", "0.4500"));
    let hour = Duration::from_secs(3600);
    let every = Duration::from_millis(100);
    let mut next_delta = start + every;

    // Act
    while next_delta < start + hour {
        let deadline = rig.session.next_deadline().map_or(next_delta, |d| d.min(next_delta));
        sleep_until(deadline).await;
        if Instant::now() >= next_delta {
            seq += 1;
            rig.frame(&delta(1, seq, "M", "no", "0.7000", "1.00"));
            next_delta += every;
        }
        rig.timer();
        for cmd in rig.take_commands() {
            if cmd["params"]["action"] == "get_snapshot" {
                seq += 1;
                rig.frame(&snapshot(1, seq, "M", "0.4000", "0.4500"));
            }
        }
    }

    // Assert: one request per 36,000 deltas would be the storm; rounds of three are what is sent.
    let requests = snapshot_requests(&rig, start);
    assert!(requests.len() <= 3 * (3600 / RESYNC_RETRY_LATER.as_secs() as usize + 1), "{}", requests.len());
    assert_eq!(requests, expected_requests(every, every, hour));
    let raised = rig.alerts.iter().filter(|a| matches!(a, AlertAction::Raise { .. })).count();
    assert_eq!(raised, 1);
    assert_eq!(rig.session.stale_markets(), [Arc::from("M")]);
    // The deltas of the hour were recorded (those while it waited), not silently lost: every
    // one is either a tick or counted as waiting for a snapshot.
    let s = rig.metrics.snapshot();
    assert_eq!(s.deltas + s.stale_deltas, 35_999);
    assert!(s.deltas > 35_000, "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn frames_of_a_subscription_no_longer_ours_are_dropped_and_counted_and_never_reported_as_gaps() {
    // Arrange: a live book on sid 1...
    let mut rig = book_rig();
    rig.frame(&snapshot(1, 1, "M", "0.4000", "0.4500"));
    rig.frame(&delta(1, 2, "M", "yes", "0.4100", "3.00"));
    assert!(rig.session.is_live());
    // ...which the exchange ends with a channel error: tickd subscribes again and gets sid 2.
    rig.json(json!({"type": "error", "sid": 1, "seq": 3, "msg": {"code": 10, "msg": "Channel error"}}));
    rig.accept_subscribes(&mut 2);
    rig.frame(&snapshot(2, 1, "M", "0.3000", "0.4500"));
    let sound = rig.session.book("M").expect("rebuilt from sid 2");

    // Act: yet sid 1 goes on streaming, its numbers jumping, control frames and a new type too.
    for seq in [50, 51, 90] {
        rig.frame(&delta(1, seq, "M", "yes", "0.6000", "99.00"));
    }
    rig.json(json!({"type": "ok", "sid": 1, "seq": 200, "msg": {}}));
    rig.json(json!({"type": "ticker_v3", "sid": 1, "seq": 300, "msg": {}}));
    rig.json(json!({"type": "error", "sid": 1, "seq": 301, "msg": {"code": 18, "msg": "Command timeout"}}));
    let unsubscribes: Vec<Value> =
        rig.take_commands().into_iter().filter(|c| c["cmd"] == "unsubscribe").collect();
    for cmd in &unsubscribes {
        rig.json(
            json!({"id": cmd["id"], "type": "error", "msg": {"code": 7, "msg": "Unknown subscription ID"}}),
        );
    }

    // Assert: dropped and counted, no gap, the book untouched, sid 1 asked once to stop.
    assert_eq!(rig.gaps(), 0, "{:?}", rig.events());
    let s = rig.metrics.snapshot();
    assert_eq!((s.stray_frames, s.gaps, s.duplicates), (4, 0, 0), "{s:?}");
    assert_eq!(rig.session.book("M"), Some(sound));
    assert_eq!(unsubscribes.len(), 1, "{unsubscribes:?}");
    assert_eq!(unsubscribes[0]["params"]["sids"], json!([1]));
    assert_eq!(s.exchange_errors, 2, "the two errors, not the expected answer to the unsubscribe");
    assert!(rig.session.is_live());

    // And sid 2 goes on unaffected: its next frames are in sequence.
    rig.frame(&delta(2, 2, "M", "yes", "0.3100", "1.00"));
    assert_eq!(rig.gaps(), 0);
}

#[tokio::test(start_paused = true)]
async fn acknowledgements_carrying_seq_advance_the_sequence() {
    // Arrange
    let mut rig = book_rig();
    rig.frame(&snapshot(1, 1, "M", "0.4000", "0.4500"));

    // Act: an ok, an error and an unknown type take numbers 2, 3 and 4 of sid 1.
    rig.json(json!({"type": "ok", "sid": 1, "seq": 2, "msg": {}}));
    rig.json(json!({"type": "error", "sid": 1, "seq": 3, "msg": {"code": 18, "msg": "Command timeout"}}));
    rig.json(json!({"type": "new_kind", "sid": 1, "seq": 4, "msg": {}}));
    rig.frame(&delta(1, 5, "M", "yes", "0.4100", "1.00"));
    // A duplicate of the ok is dropped, and a real gap is still seen.
    rig.json(json!({"type": "ok", "sid": 1, "seq": 2, "msg": {}}));
    rig.frame(&delta(1, 8, "M", "yes", "0.4100", "1.00"));

    // Assert
    let gaps: Vec<_> = rig.events().into_iter().filter(|(_, e)| matches!(e, FeedEvent::Gap { .. })).collect();
    assert_eq!(gaps, [(String::new(), FeedEvent::Gap { sid: 1, expected: 6, got: 8 })]);
    assert_eq!(rig.metrics.snapshot().duplicates, 1);
}

#[tokio::test(start_paused = true)]
async fn the_last_unsubscribed_of_a_sid_advances_its_sequence_before_it_ends() {
    // Arrange: `unsubscribed` consumes a number of the sid it ends.
    let mut rig = Rig::new(vec![Channel::OrderbookDelta, Channel::Ticker], &["M"]);
    rig.connect();
    rig.accept_subscribes(&mut 1);
    rig.frame(&snapshot(1, 1, "M", "0.4000", "0.4500"));

    // Act: the market list empties, so tickd unsubscribes both sids.
    let mut out = Output::default();
    rig.session.set_markets(&[], Instant::now(), &mut out);
    rig.collect(out);
    for cmd in rig.take_commands() {
        assert_eq!(cmd["cmd"], "unsubscribe", "{cmd}");
        let sid = cmd["params"]["sids"][0].as_u64().expect("sid");
        rig.json(json!({"id": cmd["id"], "sid": sid, "seq": 2, "type": "unsubscribed"}));
    }

    // Assert: no gap, and the frames of the ended sids that still come are strays.
    assert_eq!(rig.gaps(), 0);
    rig.frame(&delta(1, 3, "M", "yes", "0.4100", "1.00"));
    assert_eq!(rig.metrics.snapshot().stray_frames, 1);
    assert_eq!(rig.gaps(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_subscription_acknowledged_without_its_sid_takes_the_sid_of_its_first_frame() {
    // Arrange
    let mut rig = Rig::new(vec![Channel::Ticker], &["M"]);
    rig.connect();
    let subscribe = rig.take_commands().pop().expect("subscribe");

    // Act: `subscribed` without `msg`, then the channel's data on sid 7.
    rig.json(json!({"id": subscribe["id"], "type": "subscribed"}));
    rig.json(json!({"type": "ticker", "sid": 7, "msg": {"market_ticker": "M", "yes_bid_dollars": "0.41"}}));

    // Assert: the quote is published, sid 7 is announced as the ticker's.
    assert!(rig.session.is_live());
    let quotes: Vec<&Quote> = rig
        .ticks
        .iter()
        .filter_map(|t| match &t.kind {
            TickKind::Quote(q) => Some(q),
            _ => None,
        })
        .collect();
    assert_eq!(quotes, [&Quote { bid: Some(Price(4100)), ..Quote::default() }]);
    assert!(
        rig.events().contains(&(String::new(), FeedEvent::Subscribed { channel: "ticker".into(), sid: 7 }))
    );
    assert_eq!(rig.metrics.snapshot().stray_frames, 0);
}

#[tokio::test(start_paused = true)]
async fn an_error_with_its_code_at_the_top_level_fails_the_command_it_answers() {
    // Arrange
    let mut rig = Rig::new(vec![Channel::Ticker], &["M"]);
    rig.connect();
    let subscribe = rig.take_commands().pop().expect("subscribe");

    // Act
    rig.json(
        json!({"id": subscribe["id"], "type": "error", "code": 9, "message": "Authentication required"}),
    );
    sleep_until(rig.session.next_deadline().expect("a retry")).await;
    rig.timer();

    // Assert: counted as an exchange error, and the subscribe is sent again after ack_timeout.
    assert_eq!(rig.metrics.snapshot().exchange_errors, 1);
    assert_eq!(rig.sent_with("subscribe").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn frames_that_cannot_be_used_are_counted_by_reason_and_a_few_a_minute_kept_with_their_text() {
    // Arrange
    let mut rig = book_rig();
    rig.frame(&snapshot(1, 1, "M", "0.4000", "0.4500"));

    // Act: fifteen tickers without their market, then one after the budget refilled.
    for _ in 0..15 {
        rig.frame(r#"{"type":"ticker","sid":1,"msg":{"foo":"bar"},"unknown_field":99}"#);
    }
    tokio::time::advance(Duration::from_secs(6)).await;
    rig.frame("{\"type\":\"orderbook_delta\",\"sid\":1,\"msg\":\u{0}");
    rig.frame(b"\xff\xfe".iter().map(|&b| b as char).collect::<String>().as_str());

    // Assert: every one counted by reason...
    let aside = &rig.metrics.aside;
    assert_eq!(aside.get(Aside::Rejected, "missing_field", ""), 15);
    assert_eq!(aside.get(Aside::Rejected, "malformed_json", ""), 2);
    assert_eq!(rig.metrics.snapshot().parse_errors, 17);
    // ...and ten kept at once, then one per refill, saying how many were not kept.
    let kept: Vec<FeedEvent> = rig
        .events()
        .into_iter()
        .filter_map(|(_, e)| matches!(e, FeedEvent::Rejected { .. }).then_some(e))
        .collect();
    assert_eq!(kept.len(), 11, "{kept:?}");
    let FeedEvent::Rejected { reason, error, bytes, text, unkept } = &kept[0] else { unreachable!() };
    assert_eq!(reason, "missing_field");
    assert_eq!(error, "ticker: required field `market_ticker` not given");
    assert_eq!(text, r#"{"type":"ticker","sid":1,"msg":{"foo":"bar"},"unknown_field":99}"#);
    assert_eq!((*bytes, *unkept), (text.len() as u64, 0));
    let FeedEvent::Rejected { reason, text, unkept, .. } = &kept[10] else { unreachable!() };
    assert_eq!((reason.as_str(), *unkept), ("malformed_json", 5));
    assert!(!text.contains('\0'), "the text is storable: {text:?}");
    // The connection and its book go on.
    assert!(rig.session.is_live());
    assert!(rig.session.book("M").is_some());
}

#[tokio::test(start_paused = true)]
async fn unknown_types_and_fields_are_counted_by_name() {
    // Arrange
    let mut rig = book_rig();
    rig.frame(&snapshot(1, 1, "M", "0.4000", "0.4500"));

    // Act
    for _ in 0..3 {
        rig.json(json!({"type": "multivariate_lookup", "sid": 17, "msg": {"event_ticker": "E1"}}));
    }
    rig.json(json!({"type": "orderbook_delta", "sid": 1, "seq": 2, "Clock": 7,
        "msg": {"market_ticker": "M", "price_dollars": "0.41", "delta_fp": "1.00", "side": "yes"}}));

    // Assert
    let aside = &rig.metrics.aside;
    assert_eq!(aside.get(Aside::UnknownMessage, "multivariate_lookup", ""), 3);
    assert_eq!(aside.get(Aside::UnknownField, "orderbook_delta", "Clock"), 1);
    let s = rig.metrics.snapshot();
    assert_eq!((s.unknown_types, s.unknown_fields), (3, 1));
    // The delta with an unknown field was used.
    assert_eq!(
        rig.session.book("M").map(|b| b.yes),
        Some(vec![(Price(4000), Qty(1000)), (Price(4100), Qty(100))])
    );
}
