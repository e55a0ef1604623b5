//! Ticks over NATS JetStream, for more than one machine.
//!
//! - [`subject`]: each tick's subject (`<prefix>.<feed>.<kind>.<market>`, tokens escaped) and
//!   `Nats-Msg-Id` (the same from any daemon for trades and lifecycle messages).
//! - [`payload`]: the bytes published, the dashboard's live frame, and their reading back.
//! - [`connect`]: the client connection of `[nats]` and the stream, created or checked.
//! - [`publish`]: the lossless sink of `tickd run` that publishes every tick, spooling to disk
//!   while NATS is away.
//! - [`record`]: `tickd record`, a durable consumer writing the stream into PostgreSQL.

pub mod connect;
pub mod payload;
pub mod publish;
pub mod record;
pub mod subject;

use std::sync::atomic::{AtomicU64, Ordering};

/// The NATS publisher's counters and gauges, lock-free, for `/metrics`.
#[derive(Debug, Default)]
pub struct NatsMetrics {
    /// Ticks taken from the bus.
    pub received: AtomicU64,
    /// Publishes sent to the servers (replays included).
    pub published: AtomicU64,
    /// Publishes the stream acknowledged (replays included).
    pub acked: AtomicU64,
    /// Of those, acknowledged as a copy the stream already held (same `Nats-Msg-Id`).
    pub duplicates: AtomicU64,
    /// Publishes that failed or were not acknowledged in time; their ticks went to the spool.
    pub failed: AtomicU64,
    /// Ticks written to the spool.
    pub spooled: AtomicU64,
    /// Ticks replayed from the spool and acknowledged.
    pub replayed: AtomicU64,
    /// Ticks not published because the spool was full (each feed's recorded as `nats_loss`).
    pub lost: AtomicU64,
    /// Spooled records that could not be read back (damaged), skipped.
    pub unreadable: AtomicU64,
    /// Publishes awaiting their acknowledgement now.
    pub in_flight: AtomicU64,
    /// Bytes in the spool now.
    pub spool_bytes: AtomicU64,
    /// 1 while ticks go to the spool rather than straight to NATS.
    pub spooling: AtomicU64,
    /// 1 while the client is connected to a server.
    pub connected: AtomicU64,
}

impl NatsMetrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a gauge.
    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    /// Reads a counter or gauge.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
