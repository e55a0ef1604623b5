//! Per-feed counters and gauges, updated lock-free on the hot path.
//!
//! One [`FeedMetrics`] per feed connection, shared by its actor, its protocol session and
//! whoever reports: the summary line, the dashboard's status and Prometheus `/metrics`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::telemetry::liveness::Beat;

/// The lifecycle state of a feed connection, as a gauge value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum FeedState {
    /// Not started yet.
    Idle = 0,
    /// A connection attempt is under way.
    Connecting = 1,
    /// Connected; subscriptions not all acknowledged or books not all built.
    Subscribing = 2,
    /// Every subscription acknowledged and every book built from a snapshot.
    Live = 3,
    /// Connected, but some data is known to be missing until a resync completes.
    Stale = 4,
    /// Waiting before reconnecting.
    BackingOff = 5,
    /// Stopped after too many failures, by configuration.
    GivenUp = 6,
    /// Stopped by shutdown.
    Stopped = 7,
}

impl FeedState {
    /// Lower-case name for logs and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedState::Idle => "idle",
            FeedState::Connecting => "connecting",
            FeedState::Subscribing => "subscribing",
            FeedState::Live => "live",
            FeedState::Stale => "stale",
            FeedState::BackingOff => "backing_off",
            FeedState::GivenUp => "given_up",
            FeedState::Stopped => "stopped",
        }
    }

    fn from_u64(v: u64) -> FeedState {
        match v {
            1 => FeedState::Connecting,
            2 => FeedState::Subscribing,
            3 => FeedState::Live,
            4 => FeedState::Stale,
            5 => FeedState::BackingOff,
            6 => FeedState::GivenUp,
            7 => FeedState::Stopped,
            _ => FeedState::Idle,
        }
    }
}

macro_rules! feed_metrics {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters (monotonic) and gauges of one feed connection.
        #[derive(Debug, Default)]
        pub struct FeedMetrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
            state: AtomicU64,
            /// The connection loop's liveness, for the systemd watchdog.
            pub beat: Beat,
            /// What the exchange sent that was set aside, by name (message type, field, reason).
            pub aside: AsideCounts,
        }

        /// A plain copy of [`FeedMetrics`] at one instant.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct FeedMetricsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
            /// Connection state.
            pub state: u64,
        }

        impl FeedMetrics {
            /// Reads every value.
            pub fn snapshot(&self) -> FeedMetricsSnapshot {
                FeedMetricsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                    state: self.state.load(Ordering::Relaxed),
                }
            }
        }
    };
}

feed_metrics! {
    /// Frames received (any opcode).
    frames,
    /// Payload bytes received.
    bytes,
    /// Text frames that could not be parsed.
    parse_errors,
    /// Frames over `max_frame_bytes`, dropped.
    oversized_frames,
    /// Binary frames (the protocol uses text only), dropped.
    binary_frames,
    /// Frames of a message type this version does not know.
    unknown_types,
    /// Fields this version does not know, summed over frames.
    unknown_fields,
    /// Optional fields whose value could not be read, taken as not given.
    invalid_fields,
    /// Sequenced frames dropped as duplicates (`seq` not above the last seen).
    duplicates,
    /// Data frames on a subscription id that is not ours, dropped.
    stray_frames,
    /// Trade ticks published.
    trades,
    /// Quote ticks published.
    quotes,
    /// Book snapshot ticks published.
    snapshots,
    /// Book delta ticks published.
    deltas,
    /// Lifecycle ticks published.
    lifecycles,
    /// Successful connections.
    connects,
    /// Connections that ended.
    disconnects,
    /// Connection attempts that failed before the WebSocket opened.
    connect_failures,
    /// Handshakes rejected with HTTP 401 (credentials).
    credentials_rejected,
    /// Consecutive failures right now (gauge).
    consecutive_failures,
    /// Sequence gaps detected.
    gaps,
    /// Subscriptions repaired (books rebuilt after a gap or error).
    resyncs,
    /// Subscriptions sent again after a terminal error, an error reply or an ack timeout.
    resubscribes,
    /// Books found negative or crossed.
    book_errors,
    /// Markets whose fresh snapshot was asked for with `get_snapshot`.
    snapshot_requests,
    /// Markets whose book stays stale after its resyncs ran out, until tried again (gauge).
    stale_books,
    /// Deltas dropped because their book was waiting for a snapshot.
    stale_deltas,
    /// Error replies from the exchange.
    exchange_errors,
    /// Quiet markets checked against the exchange's REST API (answered checks).
    market_checks,
    /// Checks of quiet markets that REST could not answer (tried again later).
    market_check_failures,
    /// Markets found frozen: quiet while REST showed them changing.
    markets_frozen,
    /// Markets found frozen and not updating again yet (gauge).
    markets_frozen_now,
    /// Alerts raised.
    alerts,
    /// Dead connections detected by the heartbeat (no frame for ping interval + pong timeout).
    heartbeat_timeouts,
    /// Receive time of the last frame, µs since the epoch (gauge).
    last_frame_us,
    /// Markets this connection follows now (gauge).
    markets,
}

impl FeedMetricsSnapshot {
    /// µs since the last frame at `now_us`, or `None` before the first.
    pub fn last_frame_age_us(&self, now_us: i64) -> Option<i64> {
        (self.last_frame_us != 0).then(|| (now_us - self.last_frame_us as i64).max(0))
    }
}

impl FeedMetrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the connection state gauge.
    pub fn set_state(&self, state: FeedState) {
        self.state.store(state as u64, Ordering::Relaxed);
    }

    /// The connection state.
    pub fn state(&self) -> FeedState {
        FeedState::from_u64(self.state.load(Ordering::Relaxed))
    }
}

/// What [`AsideCounts`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Aside {
    /// Frames of a message type tickd does not know; by type.
    UnknownMessage,
    /// Fields tickd does not know in messages it reads; by type and field.
    UnknownField,
    /// Optional fields whose value could not be read (taken as not given); by type and field.
    InvalidField,
    /// Frames that could not be used; by reason.
    Rejected,
}

impl Aside {
    const ALL: [Aside; 4] =
        [Aside::UnknownMessage, Aside::UnknownField, Aside::InvalidField, Aside::Rejected];
}

/// Every reason a frame is rejected for (the parser's `WireError::reason`), so that
/// `/metrics` lists each one, zero or not.
pub const REJECT_REASONS: [&str; 7] = [
    "invalid_utf8",
    "malformed_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "bad_value",
    "bad_text",
];

/// Distinct names counted per kind; later names count under `other`, so that a stream of
/// made-up types cannot grow `/metrics` without bound.
pub const MAX_ASIDE_NAMES: usize = 200;

/// Longest name kept as a label value.
const MAX_ASIDE_NAME: usize = 64;

/// Counts of what the exchange sent that tickd set aside, by the names the exchange used.
/// Updated only when something is set aside, so a lock is cheap enough.
#[derive(Debug, Default)]
pub struct AsideCounts {
    counts: Mutex<AsideMaps>,
}

/// Per kind: first name, then second name (empty when the kind has one), then the count.
type AsideMaps = [HashMap<Box<str>, HashMap<Box<str>, u64>>; 4];

impl AsideCounts {
    /// Adds `n` under `(kind, a, b)`. True the first time that name is counted, for a caller
    /// that logs each name once.
    pub fn add(&self, kind: Aside, a: &str, b: &str, n: u64) -> bool {
        let Ok(mut maps) = self.counts.lock() else {
            return false;
        };
        let map = &mut maps[kind as usize];
        if let Some(count) = map.get_mut(a).and_then(|inner| inner.get_mut(b)) {
            *count += n;
            return false;
        }
        let (a, b) = (label(a), label(b));
        let distinct: usize = map.values().map(HashMap::len).sum();
        let (a, b) =
            if distinct >= MAX_ASIDE_NAMES && map.get(&*a).is_none_or(|inner| !inner.contains_key(&*b)) {
                (Box::from("other"), Box::from(if b.is_empty() { "" } else { "other" }))
            } else {
                (a, b)
            };
        let count = map.entry(a).or_default().entry(b).or_insert(0);
        let first = *count == 0;
        *count += n;
        first
    }

    /// Every count, sorted by kind and names.
    pub fn snapshot(&self) -> Vec<(Aside, String, String, u64)> {
        let Ok(maps) = self.counts.lock() else {
            return Vec::new();
        };
        let mut all: Vec<_> = Aside::ALL
            .iter()
            .flat_map(|&kind| {
                maps[kind as usize].iter().flat_map(move |(a, inner)| {
                    inner.iter().map(move |(b, &n)| (kind, a.to_string(), b.to_string(), n))
                })
            })
            .collect();
        all.sort();
        all
    }

    /// The count of one name (0 when never counted).
    pub fn get(&self, kind: Aside, a: &str, b: &str) -> u64 {
        self.counts
            .lock()
            .ok()
            .and_then(|maps| maps[kind as usize].get(a).and_then(|inner| inner.get(b)).copied())
            .unwrap_or(0)
    }
}

/// A name from the exchange as a label value: at most [`MAX_ASIDE_NAME`] bytes, control
/// characters shown as `?`.
fn label(name: &str) -> Box<str> {
    let mut end = name.len().min(MAX_ASIDE_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let name = name.get(..end).unwrap_or_default();
    if name.chars().any(char::is_control) {
        name.chars().map(|c| if c.is_control() { '?' } else { c }).collect::<String>().into()
    } else {
        name.into()
    }
}

/// Counters of the dashboard server.
#[derive(Debug, Default)]
pub struct DashboardMetrics {
    /// Stream clients connected now.
    pub clients: AtomicU64,
    /// Stream connections accepted since start.
    pub connections: AtomicU64,
    /// Frames delivered to clients (each tick counts once per client that got it).
    pub deliveries: AtomicU64,
    /// Bytes of frames written to clients.
    pub bytes_sent: AtomicU64,
    /// Times a client fell behind the stream log and was resynced.
    pub lagged: AtomicU64,
    /// Clients closed with 4008 (could not keep up).
    pub evicted_slow: AtomicU64,
    /// Clients closed with 4029 (too many commands).
    pub evicted_rate: AtomicU64,
    /// Clients dropped for not answering pings.
    pub evicted_heartbeat: AtomicU64,
    /// Clients closed with 1009 (oversized frame).
    pub oversized: AtomicU64,
    /// Commands received.
    pub commands: AtomicU64,
    /// Commands answered with an error frame.
    pub command_errors: AtomicU64,
    /// Upgrades refused with 401.
    pub rejected_unauthorized: AtomicU64,
    /// Requests refused with 403 (Host or Origin).
    pub rejected_forbidden: AtomicU64,
    /// Upgrades refused with 503 (too many clients).
    pub rejected_full: AtomicU64,
    /// Ticks the hub itself missed by falling behind the bus.
    pub hub_missed: AtomicU64,
    /// State sets the hub built for clients that fell behind (one per resync asked of it; a
    /// client has at most one asked at a time).
    pub resync_states: AtomicU64,
    /// HTTP connections open now, before any upgrade (an upgraded stream counts in `clients`).
    pub http_connections: AtomicU64,
    /// Connections closed at once because `max_http_connections` were open.
    pub refused_connections: AtomicU64,
    /// Connections closed because a request's headers did not arrive within `header_timeout`
    /// (half-sent requests, and kept-alive connections left idle), or whose TLS handshake did
    /// not complete within it.
    pub header_timeouts: AtomicU64,
    /// TLS handshakes that failed (a client that does not trust the certificate, a protocol
    /// error).
    pub tls_handshake_failures: AtomicU64,
    /// Connections to a TLS port that spoke plain HTTP; answered 400 and closed.
    pub tls_plaintext: AtomicU64,
    /// Times the certificate and key were read again and put in service (SIGHUP).
    pub tls_reloads: AtomicU64,
    /// Times they were read again and could not be used; the certificate served stays.
    pub tls_reload_failures: AtomicU64,
    /// When the certificate served now expires, in seconds since the Unix epoch; 0 without
    /// TLS.
    pub tls_expiry: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aside_counts_name_each_thing_once_and_stay_bounded() {
        let c = AsideCounts::default();
        assert!(c.add(Aside::UnknownMessage, "fill", "", 1));
        assert!(!c.add(Aside::UnknownMessage, "fill", "", 2));
        assert!(c.add(Aside::UnknownField, "ticker", "Clock", 1));
        assert_eq!(c.get(Aside::UnknownMessage, "fill", ""), 3);
        for i in 0..1000 {
            c.add(Aside::UnknownMessage, &format!("made_up_{i}"), "", 1);
        }
        let messages: Vec<_> = c.snapshot().into_iter().filter(|s| s.0 == Aside::UnknownMessage).collect();
        assert_eq!(messages.len(), MAX_ASIDE_NAMES + 1, "names past the bound count as other");
        let total: u64 = messages.iter().map(|s| s.3).sum();
        assert_eq!(total, 1003, "every frame is counted");
        assert!(c.add(Aside::Rejected, "bad\nname\u{0}", "", 1));
        assert_eq!(c.get(Aside::Rejected, "bad?name?", ""), 1);
    }
}
