//! Recording ticks in PostgreSQL: the schema, the lossless writer and its disk spool.
//!
//! In: the bus's lossless receiver. Out: rows in `trades`, `quotes`, `book_snapshots`,
//! `book_deltas`, `lifecycle_events` and the gap ledger `feed_events` (schema in
//! `migrations/`), and [`StoreMetrics`] for operators.
//!
//! - [`writer`]: the actor. Batches ticks by count or age, writes each batch in one round
//!   trip, spools batches to disk while the database is away and replays them, merged into
//!   full batches, when it is back; nothing is dropped without a `store_loss` row.
//! - [`spool`]: the bounded, crash-safe spool file under `state_dir/spool`, and the reader
//!   that replays it in merged groups.
//! - [`pg`]: every SQL statement, migrations and the schema check. sqlx types stay here.
//! - [`batch`]: the column layout a batch is written, spooled and replayed in.

pub mod batch;
pub mod pg;
pub mod spool;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};

pub use writer::{StoreHandle, WRITES_IN_FLIGHT, Writer, WriterContext};

/// Why the store could not do something. [`StoreError::is_retriable`] tells a database that
/// is away (keep the batch, spool it, try later) from input it will never accept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached, or the connection broke.
    #[error("database unreachable: {0}")]
    Unreachable(String),
    /// The database answered with an error.
    #[error("database error {code}: {message}")]
    Database {
        /// SQLSTATE, empty for driver-side errors.
        code: String,
        /// The server's message.
        message: String,
        /// Whether trying again later can succeed.
        retriable: bool,
    },
    /// A write or query took longer than allowed.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The schema is not what tickd needs (changed by hand).
    #[error("the database schema is not what tickd expects: {0}")]
    Schema(String),
    /// Applying the migrations failed.
    #[error("applying migrations failed: {0}")]
    Migration(String),
    /// The store settings cannot be used.
    #[error("{0}")]
    Config(String),
    /// The spool failed.
    #[error("spool: {0}")]
    Spool(#[from] spool::SpoolError),
}

impl StoreError {
    /// Whether the same work can succeed later without anyone changing anything.
    pub fn is_retriable(&self) -> bool {
        match self {
            StoreError::Unreachable(_) | StoreError::Timeout(_) => true,
            StoreError::Database { retriable, .. } => *retriable,
            StoreError::Schema(_)
            | StoreError::Migration(_)
            | StoreError::Config(_)
            | StoreError::Spool(_) => false,
        }
    }
}

/// What the store is doing, as a gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum StoreState {
    /// Has not reached the database yet.
    Starting = 0,
    /// Writing directly; nothing spooled.
    Ready = 1,
    /// The database is back; replaying the spool while writing new batches.
    Replaying = 2,
    /// The database is unreachable (or its schema unusable); batches go to the spool.
    Spooling = 3,
    /// Stopped.
    Stopped = 4,
}

impl StoreState {
    /// A lowercase name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Starting => "starting",
            StoreState::Ready => "ready",
            StoreState::Replaying => "replaying",
            StoreState::Spooling => "spooling",
            StoreState::Stopped => "stopped",
        }
    }

    fn from_u64(v: u64) -> StoreState {
        match v {
            1 => StoreState::Ready,
            2 => StoreState::Replaying,
            3 => StoreState::Spooling,
            4 => StoreState::Stopped,
            _ => StoreState::Starting,
        }
    }
}

/// Upper bounds (ms) of the commit-latency histogram buckets; the last bucket is unbounded.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000];

/// Counters and gauges of the store, lock-free.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Ticks taken from the bus.
    pub received: AtomicU64,
    /// Ticks committed (inserted or found already present).
    pub committed: AtomicU64,
    /// Rows inserted (new).
    pub inserted: AtomicU64,
    /// Trades inserted (new).
    pub trades_inserted: AtomicU64,
    /// Ticks that were already stored (replays, overlaps).
    pub duplicates: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Ticks in the last committed batch.
    pub last_batch_ticks: AtomicU64,
    /// Batch writes that failed and will be retried from the spool.
    pub retriable_errors: AtomicU64,
    /// Batches the database refused for their content (kept under `state_dir/rejected`).
    pub rejected_batches: AtomicU64,
    /// Ticks in rejected batches.
    pub rejected_ticks: AtomicU64,
    /// Ticks written to the spool.
    pub spooled: AtomicU64,
    /// Ticks replayed from the spool and committed.
    pub replayed: AtomicU64,
    /// Batches written from the spool: each merges consecutive spool records up to
    /// `batch_size` ticks, one statement.
    pub replayed_batches: AtomicU64,
    /// Spool records replayed (merged into those batches).
    pub replayed_records: AtomicU64,
    /// Ticks dropped because the spool was full (each recorded as a `store_loss` row).
    pub lost: AtomicU64,
    /// Bytes in the spool now.
    pub spool_bytes: AtomicU64,
    /// Batches in the spool now.
    pub spool_batches: AtomicU64,
    /// Ticks taken from the bus but not yet committed or spooled.
    pub queued: AtomicU64,
    /// Alerts raised by the store.
    pub alerts: AtomicU64,
    /// Partitions created.
    pub partitions_created: AtomicU64,
    /// Partitions dropped by retention.
    pub partitions_dropped: AtomicU64,
    /// Commit latency histogram: per bucket of [`LATENCY_BUCKETS_MS`] (plus one unbounded),
    /// the batches whose oldest tick was committed within it after being received.
    pub latency_buckets: [AtomicU64; 13],
    /// Sum of those latencies, µs.
    pub latency_sum_us: AtomicU64,
    /// The writer loop's liveness, for the systemd watchdog: idle while it waits for ticks,
    /// owed while a write or probe is under way.
    pub writer_beat: crate::telemetry::liveness::Beat,
    /// The state gauge ([`StoreState`]).
    state: AtomicU64,
}

impl StoreMetrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The current state.
    pub fn state(&self) -> StoreState {
        StoreState::from_u64(self.state.load(Ordering::Relaxed))
    }

    /// Sets the state gauge.
    pub fn set_state(&self, state: StoreState) {
        self.state.store(state as u64, Ordering::Relaxed);
    }

    /// Records one commit whose oldest tick waited `latency_us`.
    pub fn observe_latency(&self, latency_us: u64) {
        let ms = latency_us / 1000;
        let bucket = LATENCY_BUCKETS_MS.iter().position(|&b| ms < b).unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(latency_us, Ordering::Relaxed);
    }

    /// The latency (ms, a bucket bound) under which `q` (0..1) of commits fell; `None` with
    /// no commits or when it is past the last bound.
    pub fn latency_quantile_ms(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.latency_buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return LATENCY_BUCKETS_MS.get(i).copied();
            }
        }
        None
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
