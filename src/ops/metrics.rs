//! `/metrics`: every counter of the daemon in the Prometheus text format (version 0.0.4).
//!
//! Names start with `tickd_`; feed series carry `feed` and `conn` labels (the feed's name and
//! the connection's index, as in the logs), alert series `kind` and `source`. Counters end in
//! `_total`; gauges do not. The commit latency is a histogram in seconds. Every family has
//! `# HELP` and `# TYPE`, also when it has no sample yet (no feed connection, no frame). No
//! label holds anything secret: feed names, connection indexes, states, tick kinds, alert
//! kinds and reasons only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::health::{Health, HealthSnapshot};
use crate::store::{LATENCY_BUCKETS_MS, StoreMetrics, StoreState};
use crate::telemetry::alerts::AlertMetrics;
use crate::telemetry::metrics::DashboardMetrics;
use crate::telemetry::metrics::{Aside, FeedMetricsSnapshot, FeedState, REJECT_REASONS};
use crate::telemetry::rest::{Endpoint, Outcome};

/// The text of one scrape.
pub fn render(src: &Health) -> String {
    let mut out = Exposition { buf: String::with_capacity(16 * 1024) };
    out.header("tickd_build_info", "gauge", "Always 1; the version of the running binary.");
    out.sample("tickd_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    let snapshot = src.snapshot();
    feeds(&mut out, &snapshot);
    rest(&mut out, &snapshot);
    backfill(&mut out, src);
    let bus = src.bus.stats();
    out.single("tickd_bus_published_total", "counter", "Ticks published by the feeds.", bus.published);
    out.single(
        "tickd_bus_lossless_waits_total",
        "counter",
        "Times a feed found the store's queue full and waited (backpressure).",
        bus.lossless_full,
    );
    out.single(
        "tickd_bus_lossless_queued",
        "gauge",
        "Ticks waiting in the store's bus queue.",
        src.bus.queued(),
    );
    out.single(
        "tickd_bus_lossless_undelivered_total",
        "counter",
        "Ticks not delivered to the store because its queue had closed (only at a failed stop).",
        bus.lossless_closed,
    );
    out.single(
        "tickd_bus_lossy_behind",
        "gauge",
        "Ticks the dashboard hub has yet to read from the bus (its lag; at most bus.lossy_capacity).",
        src.bus.lossy_behind(),
    );
    out.single(
        "tickd_bus_lossy_missed_total",
        "counter",
        "Ticks the dashboard hub missed by falling behind the bus.",
        bus.lossy_missed,
    );
    if let Some(nats) = &src.nats {
        self::nats(&mut out, nats);
    }
    if let Some(store) = &src.store {
        self::store(&mut out, store);
    }
    dashboard(&mut out, &src.dashboard);
    alerts(&mut out, &src.alerts.metrics());
    out.buf
}

struct Exposition {
    buf: String,
}

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.buf, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.header(name, kind, help);
        let _ = writeln!(self.buf, "{name} {value}");
    }

    /// One sample with labels, values escaped.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.buf.push_str(name);
        if !labels.is_empty() {
            self.buf.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.buf.push(',');
                }
                self.buf.push_str(k);
                self.buf.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.buf.push_str("\\\\"),
                        '"' => self.buf.push_str("\\\""),
                        '\n' => self.buf.push_str("\\n"),
                        c => self.buf.push(c),
                    }
                }
                self.buf.push('"');
            }
            self.buf.push('}');
        }
        let _ = writeln!(self.buf, " {value}");
    }
}

/// A feed counter: name, help, and how to read it from a snapshot.
type FeedSeries = (&'static str, &'static str, &'static str, fn(&FeedMetricsSnapshot) -> u64);

const FEED_SERIES: &[FeedSeries] = &[
    ("tickd_feed_frames_total", "counter", "Frames received.", |s| s.frames),
    ("tickd_feed_bytes_total", "counter", "Payload bytes received.", |s| s.bytes),
    (
        "tickd_feed_parse_errors_total",
        "counter",
        "Text frames that could not be used (by reason: tickd_rejected_frames_total).",
        |s| s.parse_errors,
    ),
    ("tickd_feed_oversized_frames_total", "counter", "Frames over max_frame_bytes, dropped.", |s| {
        s.oversized_frames
    }),
    ("tickd_feed_binary_frames_total", "counter", "Binary frames, dropped.", |s| s.binary_frames),
    (
        "tickd_feed_unknown_types_total",
        "counter",
        "Frames of an unknown message type (by type: tickd_unknown_messages_total).",
        |s| s.unknown_types,
    ),
    (
        "tickd_feed_unknown_fields_total",
        "counter",
        "Fields of a known message this version ignores (by name: tickd_unknown_fields_total).",
        |s| s.unknown_fields,
    ),
    (
        "tickd_feed_invalid_fields_total",
        "counter",
        "Optional fields whose value could not be read, taken as not given (by name: tickd_invalid_fields_total).",
        |s| s.invalid_fields,
    ),
    (
        "tickd_feed_stray_frames_total",
        "counter",
        "Data frames on a subscription id not ours, dropped.",
        |s| s.stray_frames,
    ),
    ("tickd_feed_duplicates_total", "counter", "Sequenced frames dropped as duplicates.", |s| s.duplicates),
    ("tickd_feed_connects_total", "counter", "Successful connections.", |s| s.connects),
    ("tickd_feed_reconnects_total", "counter", "Connections after the first.", |s| {
        s.connects.saturating_sub(1)
    }),
    ("tickd_feed_disconnects_total", "counter", "Connections that ended.", |s| s.disconnects),
    (
        "tickd_feed_connect_failures_total",
        "counter",
        "Connection attempts that failed before the WebSocket opened.",
        |s| s.connect_failures,
    ),
    ("tickd_feed_credentials_rejected_total", "counter", "Handshakes rejected with HTTP 401.", |s| {
        s.credentials_rejected
    }),
    ("tickd_feed_consecutive_failures", "gauge", "Consecutive connection failures now.", |s| {
        s.consecutive_failures
    }),
    ("tickd_feed_seq_gaps_total", "counter", "Sequence gaps detected.", |s| s.gaps),
    ("tickd_feed_resyncs_total", "counter", "Subscriptions repaired from fresh snapshots.", |s| s.resyncs),
    ("tickd_feed_resubscribes_total", "counter", "Subscriptions sent again.", |s| s.resubscribes),
    ("tickd_feed_book_errors_total", "counter", "Books found negative or crossed.", |s| s.book_errors),
    (
        "tickd_feed_snapshot_requests_total",
        "counter",
        "Markets whose fresh snapshot was asked for (get_snapshot).",
        |s| s.snapshot_requests,
    ),
    (
        "tickd_feed_stale_books",
        "gauge",
        "Books kept stale after their resyncs ran out, until tried again.",
        |s| s.stale_books,
    ),
    (
        "tickd_feed_stale_deltas_total",
        "counter",
        "Book deltas dropped while their book waited for a fresh snapshot.",
        |s| s.stale_deltas,
    ),
    ("tickd_feed_exchange_errors_total", "counter", "Error replies from the exchange.", |s| {
        s.exchange_errors
    }),
    ("tickd_feed_market_checks_total", "counter", "Quiet markets checked against the REST API.", |s| {
        s.market_checks
    }),
    (
        "tickd_feed_market_check_failures_total",
        "counter",
        "Checks of quiet markets the REST API could not answer.",
        |s| s.market_check_failures,
    ),
    (
        "tickd_feed_markets_frozen_total",
        "counter",
        "Markets found frozen: quiet while the REST API showed them changing.",
        |s| s.markets_frozen,
    ),
    ("tickd_feed_markets_frozen", "gauge", "Markets found frozen that have not updated again yet.", |s| {
        s.markets_frozen_now
    }),
    ("tickd_feed_alerts_total", "counter", "Alerts raised.", |s| s.alerts),
    ("tickd_feed_heartbeat_timeouts_total", "counter", "Dead connections found by the heartbeat.", |s| {
        s.heartbeat_timeouts
    }),
    ("tickd_feed_markets", "gauge", "Markets the connection follows now.", |s| s.markets),
];

const FEED_STATES: [FeedState; 8] = [
    FeedState::Idle,
    FeedState::Connecting,
    FeedState::Subscribing,
    FeedState::Live,
    FeedState::Stale,
    FeedState::BackingOff,
    FeedState::GivenUp,
    FeedState::Stopped,
];

fn feeds(out: &mut Exposition, snapshot: &HealthSnapshot) {
    let feeds: Vec<_> = snapshot
        .conns
        .iter()
        .map(|c| (c.id.feed.to_string(), c.id.index.to_string(), c.state, c.counts))
        .collect();
    out.header("tickd_feed_state", "gauge", "Connection state: 1 for the state the connection is in.");
    for (feed, conn, state, _) in &feeds {
        for s in FEED_STATES {
            let value = u8::from(*state == s);
            out.sample("tickd_feed_state", &[("feed", feed), ("conn", conn), ("state", s.as_str())], value);
        }
    }
    for &(name, kind, help, read) in FEED_SERIES {
        out.header(name, kind, help);
        for (feed, conn, _, snap) in &feeds {
            out.sample(name, &[("feed", feed), ("conn", conn)], read(snap));
        }
    }
    // Per feed: the sum over its connections (each market is on exactly one).
    out.header(
        "tickd_markets_followed",
        "gauge",
        "Markets the feed follows now: its `markets` and those found for its `series` and `events`.",
    );
    let mut followed: Vec<(&str, u64)> = Vec::new();
    for (feed, _, _, s) in &feeds {
        match followed.iter_mut().find(|(f, _)| *f == feed.as_str()) {
            Some((_, n)) => *n += s.markets,
            None => followed.push((feed.as_str(), s.markets)),
        }
    }
    for (feed, n) in followed {
        out.sample("tickd_markets_followed", &[("feed", feed)], n);
    }
    out.header("tickd_feed_ticks_total", "counter", "Ticks published, by kind.");
    for (feed, conn, _, s) in &feeds {
        for (kind, n) in [
            ("trade", s.trades),
            ("quote", s.quotes),
            ("book_snapshot", s.snapshots),
            ("book_delta", s.deltas),
            ("lifecycle", s.lifecycles),
        ] {
            out.sample("tickd_feed_ticks_total", &[("feed", feed), ("conn", conn), ("kind", kind)], n);
        }
    }
    aside(out, snapshot);
    out.header(
        "tickd_feed_last_message_age_seconds",
        "gauge",
        "Seconds since the connection's last frame (absent before the first).",
    );
    for (feed, conn, _, s) in &feeds {
        if let Some(us) = s.last_frame_age_us(snapshot.at_us) {
            let age = us as f64 / 1e6;
            out.sample("tickd_feed_last_message_age_seconds", &[("feed", feed), ("conn", conn)], age);
        }
    }
}

/// Each feed's REST requests, by endpoint and outcome, and whether its REST API is failing.
fn rest(out: &mut Exposition, snapshot: &HealthSnapshot) {
    out.header(
        "tickd_rest_requests_total",
        "counter",
        "REST requests (each attempt counts), by endpoint and outcome.",
    );
    for r in &snapshot.rest {
        for endpoint in Endpoint::ALL {
            for outcome in Outcome::ALL {
                let labels =
                    [("feed", &*r.feed), ("endpoint", endpoint.as_str()), ("outcome", outcome.as_str())];
                out.sample("tickd_rest_requests_total", &labels, r.metrics.requests(endpoint, outcome));
            }
        }
    }
    out.header(
        "tickd_rest_retries_total",
        "counter",
        "REST requests made again after a failure that may pass.",
    );
    for r in &snapshot.rest {
        for endpoint in Endpoint::ALL {
            let labels = [("feed", &*r.feed), ("endpoint", endpoint.as_str())];
            out.sample("tickd_rest_retries_total", &labels, r.metrics.retries(endpoint));
        }
    }
    out.header(
        "tickd_rest_items_dropped_total",
        "counter",
        "Items (markets, trades, book levels) left out of REST answers because they could not be read.",
    );
    for r in &snapshot.rest {
        for endpoint in Endpoint::ALL {
            let labels = [("feed", &*r.feed), ("endpoint", endpoint.as_str())];
            out.sample("tickd_rest_items_dropped_total", &labels, r.metrics.dropped(endpoint));
        }
    }
    out.header(
        "tickd_rest_budget_waits_total",
        "counter",
        "REST requests that waited for the feed's rest_rate.",
    );
    for r in &snapshot.rest {
        out.sample("tickd_rest_budget_waits_total", &[("feed", &*r.feed)], r.metrics.budget_waits());
    }
    out.header(
        "tickd_rest_failing_seconds",
        "gauge",
        "Seconds since the feed's REST calls began failing with no success since; 0 while they succeed.",
    );
    for r in &snapshot.rest {
        let secs = r.failing_since_us.map_or(0.0, |since| (snapshot.at_us - since).max(0) as f64 / 1e6);
        out.sample("tickd_rest_failing_seconds", &[("feed", &*r.feed)], secs);
    }
}

/// Each feed's backfill: windows and what they recovered.
fn backfill(out: &mut Exposition, src: &Health) {
    use crate::telemetry::backfill::BackfillMetrics as B;
    type Read = fn(&B) -> u64;
    let families: [(&str, &str, &str, Read); 9] = [
        (
            "tickd_backfill_windows_total",
            "counter",
            "Windows in which trades may have been missed (disconnects, trade-channel gaps, starts) given to the backfill.",
            |m| B::get(&m.windows),
        ),
        (
            "tickd_backfill_windows_completed_total",
            "counter",
            "Windows whose trades were fetched over the REST API for every market.",
            |m| B::get(&m.completed),
        ),
        (
            "tickd_backfill_failures_total",
            "counter",
            "Backfill attempts that failed (REST API or database away); each is tried again later.",
            |m| B::get(&m.failed_attempts),
        ),
        (
            "tickd_backfill_windows_abandoned_total",
            "counter",
            "Windows given up incomplete, older than backfill_max_window; they stay missing in gaps().",
            |m| B::get(&m.abandoned),
        ),
        (
            "tickd_backfill_windows_dropped_total",
            "counter",
            "Windows not taken because the backfill queue was full; they stay missing in gaps().",
            |m| B::get(&m.dropped),
        ),
        (
            "tickd_backfill_windows_pending",
            "gauge",
            "Windows queued, being fetched or waiting to be tried again.",
            |m| B::get(&m.pending),
        ),
        (
            "tickd_backfill_trades_found_total",
            "counter",
            "Trades the REST API listed in backfilled windows.",
            |m| B::get(&m.trades_found),
        ),
        (
            "tickd_backfill_trades_new_total",
            "counter",
            "Backfilled trades tickd had neither stored nor received, recorded with source 'rest'.",
            |m| B::get(&m.trades_new),
        ),
        (
            "tickd_backfill_trades_untimed_total",
            "counter",
            "Listed trades left out because the REST API gave no execution time.",
            |m| B::get(&m.trades_untimed),
        ),
    ];
    let feeds = src.backfill.all();
    for (name, kind, help, read) in families {
        out.header(name, kind, help);
        for (feed, m) in &feeds {
            out.sample(name, &[("feed", feed)], read(m));
        }
    }
}

/// What the exchange sent that tickd set aside, by the names it used: unknown message types
/// and fields, and optional fields it could not read, per feed (summed over connections);
/// rejected frames per connection and reason (every reason listed, zero or not).
fn aside(out: &mut Exposition, snapshot: &HealthSnapshot) {
    let mut by_feed: BTreeMap<(Aside, String, String, String), u64> = BTreeMap::new();
    for c in &snapshot.conns {
        for (kind, a, b, n) in c.metrics.aside.snapshot() {
            if kind != Aside::Rejected {
                *by_feed.entry((kind, c.id.feed.to_string(), a, b)).or_default() += n;
            }
        }
    }
    for (kind, name, help) in [
        (
            Aside::UnknownMessage,
            "tickd_unknown_messages_total",
            "Frames of a message type tickd does not know, by type (counted, logged once per type, ignored).",
        ),
        (
            Aside::UnknownField,
            "tickd_unknown_fields_total",
            "Fields tickd does not know in messages it reads, by message type and field (ignored).",
        ),
        (
            Aside::InvalidField,
            "tickd_invalid_fields_total",
            "Optional fields whose value could not be read, by message type and field (taken as not given).",
        ),
    ] {
        out.header(name, "counter", help);
        for ((k, feed, a, b), n) in &by_feed {
            if *k != kind {
                continue;
            }
            if kind == Aside::UnknownMessage {
                out.sample(name, &[("feed", feed), ("type", a)], n);
            } else {
                out.sample(name, &[("feed", feed), ("type", a), ("field", b)], n);
            }
        }
    }
    out.header(
        "tickd_rejected_frames_total",
        "counter",
        "Frames that could not be used, by reason; a few a minute are kept in feed_events (event 'rejected').",
    );
    for c in &snapshot.conns {
        let (feed, conn) = (c.id.feed.to_string(), c.id.index.to_string());
        for reason in REJECT_REASONS {
            let n = c.metrics.aside.get(Aside::Rejected, reason, "");
            out.sample(
                "tickd_rejected_frames_total",
                &[("feed", &feed), ("conn", &conn), ("reason", reason)],
                n,
            );
        }
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn nats(out: &mut Exposition, m: &crate::nats::NatsMetrics) {
    for (name, kind, help, value) in [
        ("tickd_nats_received_total", "counter", "Ticks the NATS publisher took from the bus.", &m.received),
        ("tickd_nats_published_total", "counter", "Publishes sent to NATS (replays included).", &m.published),
        (
            "tickd_nats_acked_total",
            "counter",
            "Publishes the stream acknowledged (replays included).",
            &m.acked,
        ),
        (
            "tickd_nats_duplicates_total",
            "counter",
            "Acknowledged publishes the stream already held (same Nats-Msg-Id).",
            &m.duplicates,
        ),
        (
            "tickd_nats_failed_total",
            "counter",
            "Publishes refused or not acknowledged in time; their ticks were spooled.",
            &m.failed,
        ),
        ("tickd_nats_spooled_total", "counter", "Ticks written to the NATS spool.", &m.spooled),
        (
            "tickd_nats_replayed_total",
            "counter",
            "Ticks replayed from the NATS spool and acknowledged.",
            &m.replayed,
        ),
        (
            "tickd_nats_lost_total",
            "counter",
            "Ticks not published because the NATS spool was full (recorded as nats_loss).",
            &m.lost,
        ),
        (
            "tickd_nats_unreadable_total",
            "counter",
            "NATS spool records that could not be read back.",
            &m.unreadable,
        ),
        ("tickd_nats_in_flight", "gauge", "Publishes awaiting their acknowledgement.", &m.in_flight),
        ("tickd_nats_spool_bytes", "gauge", "Bytes in the NATS spool.", &m.spool_bytes),
        ("tickd_nats_spooling", "gauge", "1 while ticks go to the NATS spool instead of NATS.", &m.spooling),
        ("tickd_nats_connected", "gauge", "1 while connected to a NATS server.", &m.connected),
    ] {
        out.single(name, kind, help, get(value));
    }
}

fn store(out: &mut Exposition, m: &StoreMetrics) {
    out.header("tickd_store_state", "gauge", "Store state: 1 for the state the writer is in.");
    let state = m.state();
    for s in [
        StoreState::Starting,
        StoreState::Ready,
        StoreState::Replaying,
        StoreState::Spooling,
        StoreState::Stopped,
    ] {
        out.sample("tickd_store_state", &[("state", s.as_str())], u8::from(state == s));
    }
    let series: [(&str, &str, &str, &AtomicU64); 21] = [
        ("tickd_store_received_total", "counter", "Ticks taken from the bus.", &m.received),
        ("tickd_store_committed_total", "counter", "Ticks committed (new or already stored).", &m.committed),
        ("tickd_store_inserted_total", "counter", "Rows inserted.", &m.inserted),
        ("tickd_store_trades_inserted_total", "counter", "Trades inserted.", &m.trades_inserted),
        ("tickd_store_duplicates_total", "counter", "Ticks that were already stored.", &m.duplicates),
        ("tickd_store_batches_total", "counter", "Batches committed.", &m.batches),
        ("tickd_store_batch_ticks", "gauge", "Ticks in the last committed batch.", &m.last_batch_ticks),
        ("tickd_store_queued", "gauge", "Ticks taken from the bus, not yet committed or spooled.", &m.queued),
        (
            "tickd_store_retriable_errors_total",
            "counter",
            "Writes that failed and were spooled.",
            &m.retriable_errors,
        ),
        (
            "tickd_store_rejected_batches_total",
            "counter",
            "Batches the database refused.",
            &m.rejected_batches,
        ),
        ("tickd_store_rejected_ticks_total", "counter", "Ticks in refused batches.", &m.rejected_ticks),
        ("tickd_store_spooled_total", "counter", "Ticks written to the spool.", &m.spooled),
        ("tickd_store_replayed_total", "counter", "Ticks replayed from the spool.", &m.replayed),
        (
            "tickd_store_replayed_batches_total",
            "counter",
            "Batches written from the spool, each merging spool records up to batch_size ticks.",
            &m.replayed_batches,
        ),
        ("tickd_store_replayed_records_total", "counter", "Spool records replayed.", &m.replayed_records),
        ("tickd_store_lost_total", "counter", "Ticks dropped with the spool full.", &m.lost),
        ("tickd_store_spool_bytes", "gauge", "Bytes in the spool.", &m.spool_bytes),
        ("tickd_store_spool_batches", "gauge", "Batches in the spool.", &m.spool_batches),
        ("tickd_store_alerts_total", "counter", "Alerts raised by the store.", &m.alerts),
        ("tickd_store_partitions_created_total", "counter", "Partitions created.", &m.partitions_created),
        (
            "tickd_store_partitions_dropped_total",
            "counter",
            "Partitions dropped by retention.",
            &m.partitions_dropped,
        ),
    ];
    for (name, kind, help, c) in series {
        out.single(name, kind, help, get(c));
    }
    let name = "tickd_store_commit_latency_seconds";
    out.header(name, "histogram", "Per batch, the time from its oldest tick's receipt to its commit.");
    let mut cumulative = 0;
    for (i, bucket) in m.latency_buckets.iter().enumerate() {
        cumulative += get(bucket);
        let le = LATENCY_BUCKETS_MS.get(i).map_or("+Inf".to_owned(), |ms| format!("{}", *ms as f64 / 1000.0));
        out.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative);
    }
    out.sample(&format!("{name}_sum"), &[], get(&m.latency_sum_us) as f64 / 1e6);
    out.sample(&format!("{name}_count"), &[], cumulative);
}

fn dashboard(out: &mut Exposition, m: &DashboardMetrics) {
    out.single("tickd_dashboard_clients", "gauge", "Stream clients connected.", get(&m.clients));
    out.single(
        "tickd_dashboard_connections_total",
        "counter",
        "Stream connections accepted.",
        get(&m.connections),
    );
    out.single(
        "tickd_dashboard_deliveries_total",
        "counter",
        "Frames delivered to clients (a tick counts once per client).",
        get(&m.deliveries),
    );
    out.single(
        "tickd_dashboard_bytes_sent_total",
        "counter",
        "Bytes of frames written to clients.",
        get(&m.bytes_sent),
    );
    out.single(
        "tickd_dashboard_resyncs_total",
        "counter",
        "Times a client fell behind and was resynced.",
        get(&m.lagged),
    );
    out.header("tickd_dashboard_evictions_total", "counter", "Clients closed by the server, by reason.");
    for (reason, c) in [
        ("slow", &m.evicted_slow),
        ("rate_limited", &m.evicted_rate),
        ("heartbeat", &m.evicted_heartbeat),
        ("oversized_frame", &m.oversized),
    ] {
        out.sample("tickd_dashboard_evictions_total", &[("reason", reason)], get(c));
    }
    out.header(
        "tickd_dashboard_refusals_total",
        "counter",
        "Requests refused before the upgrade, by reason.",
    );
    for (reason, c) in [
        ("unauthorized", &m.rejected_unauthorized),
        ("forbidden", &m.rejected_forbidden),
        ("full", &m.rejected_full),
    ] {
        out.sample("tickd_dashboard_refusals_total", &[("reason", reason)], get(c));
    }
    out.single(
        "tickd_dashboard_resync_states_total",
        "counter",
        "State sets built for clients that fell behind (at most one asked at a time per client).",
        get(&m.resync_states),
    );
    out.single(
        "tickd_dashboard_http_connections",
        "gauge",
        "HTTP connections open, before any upgrade.",
        get(&m.http_connections),
    );
    out.single(
        "tickd_dashboard_connections_refused_total",
        "counter",
        "Connections closed at once: max_http_connections were open.",
        get(&m.refused_connections),
    );
    out.single(
        "tickd_dashboard_header_timeouts_total",
        "counter",
        "Connections closed for not sending a request's headers within header_timeout.",
        get(&m.header_timeouts),
    );
    let expiry = get(&m.tls_expiry);
    if expiry > 0 {
        out.single(
            "tickd_dashboard_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "When the certificate the port serves now expires (Unix time).",
            expiry,
        );
        out.single(
            "tickd_dashboard_tls_reloads_total",
            "counter",
            "Certificate and key read again and put in service (SIGHUP).",
            get(&m.tls_reloads),
        );
        out.single(
            "tickd_dashboard_tls_reload_failures_total",
            "counter",
            "Certificate and key read again and not usable; the certificate served stayed.",
            get(&m.tls_reload_failures),
        );
        out.header(
            "tickd_dashboard_tls_handshake_failures_total",
            "counter",
            "Connections closed before their TLS handshake completed, by reason.",
        );
        for (reason, c) in [("plaintext", &m.tls_plaintext), ("error", &m.tls_handshake_failures)] {
            out.sample("tickd_dashboard_tls_handshake_failures_total", &[("reason", reason)], get(c));
        }
    }
    out.single("tickd_dashboard_commands_total", "counter", "Commands received.", get(&m.commands));
    out.single(
        "tickd_dashboard_command_errors_total",
        "counter",
        "Commands answered with an error frame.",
        get(&m.command_errors),
    );
}

fn alerts(out: &mut Exposition, m: &AlertMetrics) {
    let series = m.series();
    for (name, kind, help, read) in [
        (
            "tickd_alerts_total",
            "counter",
            "Alerts raised (incidents opened, and the store's one-shot alerts), by kind and source.",
            (|s| s.fired) as fn(&crate::telemetry::alerts::Series) -> u64,
        ),
        ("tickd_alerts_resolved_total", "counter", "Incidents resolved, by kind and source.", |s| s.resolved),
        ("tickd_alert_active", "gauge", "1 while an incident of this kind is open for this source.", |s| {
            u64::from(s.active)
        }),
    ] {
        out.header(name, kind, help);
        for ((k, source), s) in &series {
            out.sample(name, &[("kind", k), ("source", source)], read(s));
        }
    }
    out.header("tickd_alert_webhook_notices_total", "counter", "Alert notices by webhook outcome.");
    for (outcome, c) in
        [("delivered", &m.webhook_delivered), ("failed", &m.webhook_failed), ("dropped", &m.webhook_dropped)]
    {
        out.sample("tickd_alert_webhook_notices_total", &[("outcome", outcome)], get(c));
    }
    out.single(
        "tickd_alert_command_failures_total",
        "counter",
        "Runs of alert_command that failed, timed out or could not start.",
        get(&m.command_failures),
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn alerts_render_per_kind_and_source_with_their_state() {
        let monitor = crate::telemetry::alerts::AlertRegistry::default();
        monitor.fire("feed_stale", "kalshi/1", "silent");
        monitor.fire("database_unreachable", "store", "down");
        monitor.resolve("database_unreachable", "store", "up");
        let mut out = Exposition { buf: String::new() };

        alerts(&mut out, &monitor.metrics());

        for line in [
            "# TYPE tickd_alerts_total counter\n",
            "tickd_alerts_total{kind=\"feed_stale\",source=\"kalshi/1\"} 1\n",
            "tickd_alerts_resolved_total{kind=\"database_unreachable\",source=\"store\"} 1\n",
            "tickd_alert_active{kind=\"feed_stale\",source=\"kalshi/1\"} 1\n",
            "tickd_alert_active{kind=\"database_unreachable\",source=\"store\"} 0\n",
            "tickd_alert_webhook_notices_total{outcome=\"dropped\"} 0\n",
            "tickd_alert_command_failures_total 0\n",
        ] {
            assert!(out.buf.contains(line), "{line} missing from\n{}", out.buf);
        }
    }

    #[test]
    fn labels_are_escaped_and_every_sample_has_a_type() {
        let mut out = Exposition { buf: String::new() };
        out.header("tickd_x_total", "counter", "X.");
        out.sample("tickd_x_total", &[("feed", "a\"b\\c\nd")], 3);
        assert_eq!(
            out.buf,
            "# HELP tickd_x_total X.\n# TYPE tickd_x_total counter\ntickd_x_total{feed=\"a\\\"b\\\\c\\nd\"} 3\n"
        );

        let store = StoreMetrics::default();
        StoreMetrics::add(&store.latency_buckets[2], 4);
        StoreMetrics::add(&store.latency_buckets[12], 1);
        let mut out = Exposition { buf: String::new() };
        self::store(&mut out, &store);
        assert!(
            out.buf.contains("tickd_store_commit_latency_seconds_bucket{le=\"0.005\"} 4\n"),
            "{}",
            out.buf
        );
        assert!(
            out.buf.contains("tickd_store_commit_latency_seconds_bucket{le=\"+Inf\"} 5\n"),
            "{}",
            out.buf
        );
        assert!(out.buf.contains("tickd_store_commit_latency_seconds_count 5\n"));
    }

    #[test]
    fn what_the_exchange_sent_aside_is_counted_by_name_per_feed_and_rejections_per_connection() {
        use super::super::health::ConnHealth;
        use crate::telemetry::metrics::FeedMetrics;
        use crate::tick::ConnId;
        let conn = |index: usize, f: &dyn Fn(&FeedMetrics)| {
            let metrics = Arc::new(FeedMetrics::default());
            f(&metrics);
            ConnHealth {
                id: ConnId::new("kalshi", index),
                state: FeedState::Live,
                counts: metrics.snapshot(),
                metrics,
            }
        };
        let snapshot = HealthSnapshot {
            at_us: 0,
            conns: vec![
                conn(0, &|m| {
                    m.aside.add(Aside::UnknownMessage, "fill", "", 2);
                    m.aside.add(Aside::UnknownField, "ticker", "Clock", 1);
                    m.aside.add(Aside::Rejected, "missing_field", "", 2);
                }),
                conn(1, &|m| {
                    m.aside.add(Aside::UnknownMessage, "fill", "", 1);
                    m.aside.add(Aside::InvalidField, "trade", "is_block_trade", 4);
                }),
            ],
            rest: Vec::new(),
        };
        let mut out = Exposition { buf: String::new() };

        aside(&mut out, &snapshot);

        for line in [
            "tickd_unknown_messages_total{feed=\"kalshi\",type=\"fill\"} 3\n",
            "tickd_unknown_fields_total{feed=\"kalshi\",type=\"ticker\",field=\"Clock\"} 1\n",
            "tickd_invalid_fields_total{feed=\"kalshi\",type=\"trade\",field=\"is_block_trade\"} 4\n",
            "tickd_rejected_frames_total{feed=\"kalshi\",conn=\"0\",reason=\"missing_field\"} 2\n",
            "tickd_rejected_frames_total{feed=\"kalshi\",conn=\"1\",reason=\"malformed_json\"} 0\n",
        ] {
            assert!(out.buf.contains(line), "{line} missing from\n{}", out.buf);
        }
        assert_eq!(out.buf.matches("tickd_rejected_frames_total{").count(), 2 * REJECT_REASONS.len());
    }

    #[test]
    fn every_family_has_help_and_type_once_and_every_sample_a_family() {
        let bus = crate::bus::BusBuilder::new(&crate::config::BusSettings::default()).build();
        let src = Health {
            feeds: Default::default(),
            bus: bus.counters(),
            store: Some(Arc::new(StoreMetrics::default())),
            nats: Some(Arc::default()),
            dashboard: Arc::new(DashboardMetrics::default()),
            rest: {
                let rest = crate::telemetry::rest::RestFeeds::default();
                let m = rest.register(&crate::tick::Name::from("kalshi"));
                m.request(Endpoint::Trades, Outcome::RateLimited);
                m.call_failed(crate::tick::now_micros() - 5_000_000, "HTTP 503");
                rest
            },
            backfill: {
                let backfill = crate::telemetry::backfill::BackfillFeeds::default();
                backfill.register(&crate::tick::Name::from("kalshi"));
                backfill
            },
            alerts: {
                let registry = crate::telemetry::alerts::AlertRegistry::default();
                registry.fire("feed_stale", "kalshi/1", "silent");
                registry
            },
        };

        let text = render(&src);

        let (mut helped, mut typed) = (Vec::new(), Vec::new());
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap_or("").to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap_or("").to_owned());
            } else {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                let base =
                    ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
                assert!(typed.iter().any(|t| t == name || t == base), "{line} has no # TYPE before it");
            }
        }
        assert_eq!(helped, typed, "a HELP and a TYPE per family, in the same order");
        assert!(
            text.contains(
                "tickd_rest_requests_total{feed=\"kalshi\",endpoint=\"trades\",outcome=\"rate_limited\"} 1\n"
            ),
            "{text}"
        );
        let failing = text
            .lines()
            .find_map(|l| l.strip_prefix("tickd_rest_failing_seconds{feed=\"kalshi\"} "))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(failing.is_some_and(|s| s >= 5.0), "{text}");
        let mut unique = typed.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), typed.len(), "no family twice: {typed:?}");
        for family in
            ["tickd_feed_state", "tickd_feed_ticks_total", "tickd_bus_lossy_behind", "tickd_build_info"]
        {
            assert!(typed.iter().any(|t| t == family), "{family} is described even with no feed yet");
        }
        // The operations guide explains every family an operator can scrape.
        let guide = include_str!("../../docs/operations.md");
        let missing: Vec<&String> = typed.iter().filter(|t| !guide.contains(&format!("`{t}"))).collect();
        assert!(missing.is_empty(), "docs/operations.md does not explain {missing:?}");
    }
}
