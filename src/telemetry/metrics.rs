//! Per-feed counters and gauges, updated lock-free on the hot path.
//!
//! One [`FeedMetrics`] per feed connection, shared by its actor, its protocol session and
//! whoever reports: the summary line, the dashboard's status and Prometheus `/metrics`.

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
    /// Deltas dropped because their book was waiting for a snapshot.
    stale_deltas,
    /// Error replies from the exchange.
    exchange_errors,
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
}
