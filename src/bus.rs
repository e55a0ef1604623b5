//! The tick bus: bounded fan-out of `Arc<Tick>` from feeds to consumers.
//!
//! Two kinds of consumer (design.md §1):
//! - **lossless** ([`LosslessReceiver`], the store): registered before any feed starts, each
//!   with its own bounded queue. A full queue makes the publishing feed wait (backpressure):
//!   a tick is never dropped on this path. Waits are counted in [`BusStats::lossless_full`].
//! - **lossy** ([`LossyReceiver`], dashboards): a shared ring of `lossy_capacity` ticks. A
//!   receiver that falls further behind than that loses the oldest ticks and is told how
//!   many ([`Lagged`]) so it can resync; nobody else slows down. Losses are counted in
//!   [`BusStats::lossy_missed`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{broadcast, mpsc};

use crate::config::BusSettings;
use crate::tick::Tick;

/// Builds a [`Bus`]: lossless consumers must be known before publishing starts.
pub struct BusBuilder {
    settings: BusSettings,
    lossless: Vec<mpsc::Sender<Arc<Tick>>>,
}

/// The publishing side, cloned into every feed.
#[derive(Clone)]
pub struct Bus {
    lossless: Arc<[mpsc::Sender<Arc<Tick>>]>,
    lossy: broadcast::Sender<Arc<Tick>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    lossless_full: AtomicU64,
    lossless_closed: AtomicU64,
    lossy_missed: AtomicU64,
}

/// A snapshot of the bus counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Ticks published.
    pub published: u64,
    /// Times a publisher found a lossless queue full and had to wait.
    pub lossless_full: u64,
    /// Ticks not delivered because a lossless consumer had gone away (a bug or shutdown).
    pub lossless_closed: u64,
    /// Ticks lossy consumers missed by falling behind.
    pub lossy_missed: u64,
}

/// The bus counters and the store's queue depth, without keeping the bus open (a `Bus`
/// clone would: the bus closes when its last publisher is gone).
#[derive(Clone)]
pub struct BusCounters {
    counters: Arc<Counters>,
    lossless: Arc<[mpsc::WeakSender<Arc<Tick>>]>,
    lossy: broadcast::WeakSender<Arc<Tick>>,
}

impl BusCounters {
    /// Current counters.
    pub fn stats(&self) -> BusStats {
        stats_of(&self.counters)
    }

    /// Ticks waiting in the lossless queues now.
    pub fn queued(&self) -> u64 {
        self.lossless
            .iter()
            .filter_map(|w| w.upgrade())
            .map(|tx| (tx.max_capacity() - tx.capacity()) as u64)
            .sum()
    }

    /// Ticks in the lossy ring that some lossy consumer has not read yet: how far the slowest
    /// one (the dashboard hub) is behind. At most the ring's size; further behind, it misses
    /// the oldest ([`BusStats::lossy_missed`]).
    pub fn lossy_behind(&self) -> u64 {
        self.lossy.upgrade().map_or(0, |tx| tx.len() as u64)
    }
}

/// The receiving end of a lossless consumer.
pub struct LosslessReceiver {
    rx: mpsc::Receiver<Arc<Tick>>,
}

/// The receiving end of a lossy consumer.
pub struct LossyReceiver {
    rx: broadcast::Receiver<Arc<Tick>>,
    counters: Arc<Counters>,
}

/// A lossy consumer fell behind and missed this many ticks; it should resync its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lagged(pub u64);

impl BusBuilder {
    /// Starts a bus with the given capacities.
    pub fn new(settings: &BusSettings) -> Self {
        BusBuilder { settings: settings.clone(), lossless: Vec::new() }
    }

    /// Adds a lossless consumer with a queue of `bus.lossless_capacity` ticks.
    pub fn lossless(&mut self) -> LosslessReceiver {
        // Bounded: when full, `Bus::publish` waits for room (backpressure on the feed).
        let (tx, rx) = mpsc::channel(self.settings.lossless_capacity.max(1));
        self.lossless.push(tx);
        LosslessReceiver { rx }
    }

    /// Finishes the bus.
    pub fn build(self) -> Bus {
        // Bounded ring: a receiver more than `lossy_capacity` behind loses the oldest ticks
        // and is told how many (`Lagged`).
        let (lossy, _) = broadcast::channel(self.settings.lossy_capacity.max(1));
        Bus { lossless: self.lossless.into(), lossy, counters: Arc::default() }
    }
}

impl Bus {
    /// Publishes one tick to every consumer. Waits while a lossless queue is full.
    pub async fn publish(&self, tick: Arc<Tick>) {
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        for tx in self.lossless.iter() {
            match tx.try_send(tick.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(tick)) => {
                    self.counters.lossless_full.fetch_add(1, Ordering::Relaxed);
                    if tx.send(tick).await.is_err() {
                        self.counters.lossless_closed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.counters.lossless_closed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // An error only means no lossy consumer is subscribed right now.
        let _ = self.lossy.send(tick);
    }

    /// Adds a lossy consumer; it sees ticks published from now on.
    pub fn lossy(&self) -> LossyReceiver {
        LossyReceiver { rx: self.lossy.subscribe(), counters: self.counters.clone() }
    }

    /// Current counters.
    pub fn stats(&self) -> BusStats {
        stats_of(&self.counters)
    }

    /// A handle on the counters that does not keep the bus open.
    pub fn counters(&self) -> BusCounters {
        BusCounters {
            counters: self.counters.clone(),
            lossless: self.lossless.iter().map(|tx| tx.downgrade()).collect(),
            lossy: self.lossy.downgrade(),
        }
    }
}

fn stats_of(c: &Counters) -> BusStats {
    BusStats {
        published: c.published.load(Ordering::Relaxed),
        lossless_full: c.lossless_full.load(Ordering::Relaxed),
        lossless_closed: c.lossless_closed.load(Ordering::Relaxed),
        lossy_missed: c.lossy_missed.load(Ordering::Relaxed),
    }
}

impl LosslessReceiver {
    /// The next tick, or `None` once every publisher is gone and the queue is drained.
    pub async fn recv(&mut self) -> Option<Arc<Tick>> {
        self.rx.recv().await
    }

    /// Waits for at least one tick, then moves up to `limit` queued ticks into `out`; returns
    /// how many (0 once every publisher is gone and the queue is drained).
    pub async fn recv_many(&mut self, out: &mut Vec<Arc<Tick>>, limit: usize) -> usize {
        self.rx.recv_many(out, limit).await
    }
}

impl LossyReceiver {
    /// The next tick; `Ok(None)` once the bus is gone; `Err(Lagged(n))` after missing `n`.
    pub async fn recv(&mut self) -> Result<Option<Arc<Tick>>, Lagged> {
        match self.rx.recv().await {
            Ok(tick) => Ok(Some(tick)),
            Err(broadcast::error::RecvError::Closed) => Ok(None),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.counters.lossy_missed.fetch_add(n, Ordering::Relaxed);
                Err(Lagged(n))
            }
        }
    }

    /// The next tick if one is waiting: `Ok(None)` when none is (or the bus is gone).
    pub fn try_recv(&mut self) -> Result<Option<Arc<Tick>>, Lagged> {
        match self.rx.try_recv() {
            Ok(tick) => Ok(Some(tick)),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                self.counters.lossy_missed.fetch_add(n, Ordering::Relaxed);
                Err(Lagged(n))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::{FeedEvent, TickKind};

    fn tick(n: i64) -> Arc<Tick> {
        Arc::new(Tick {
            feed: "f".into(),
            conn: 0,
            market: "".into(),
            exch_ts: None,
            recv_ts: n,
            kind: TickKind::Feed(FeedEvent::Connected),
        })
    }

    fn settings(cap: usize) -> BusSettings {
        BusSettings { lossless_capacity: cap, lossy_capacity: cap }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_lossless_queue_makes_the_publisher_wait_and_loses_nothing() {
        let mut builder = BusBuilder::new(&settings(2));
        let mut rx = builder.lossless();
        let bus = builder.build();
        let publisher = tokio::spawn({
            let bus = bus.clone();
            async move {
                for n in 0..10 {
                    bus.publish(tick(n)).await;
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < 10 {
            got.push(rx.recv().await.unwrap().recv_ts);
        }
        publisher.await.unwrap();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert!(bus.stats().lossless_full > 0, "the publisher should have waited");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_lossy_consumer_is_told_how_many_it_missed() {
        let bus = BusBuilder::new(&settings(4)).build();
        let mut slow = bus.lossy();
        for n in 0..10 {
            bus.publish(tick(n)).await;
        }
        assert_eq!(slow.recv().await, Err(Lagged(6)));
        assert_eq!(slow.recv().await.unwrap().unwrap().recv_ts, 6);
        assert_eq!(bus.stats().lossy_missed, 6);
        assert_eq!(bus.stats().published, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn the_counters_tell_how_far_the_slowest_lossy_consumer_is_behind_without_keeping_the_bus_open() {
        let bus = BusBuilder::new(&settings(8)).build();
        let counters = bus.counters();
        let mut slow = bus.lossy();
        for n in 0..5 {
            bus.publish(tick(n)).await;
        }
        assert_eq!(counters.lossy_behind(), 5);
        slow.recv().await.unwrap();
        slow.recv().await.unwrap();
        assert_eq!(counters.lossy_behind(), 3);

        drop(bus);
        assert_eq!(counters.lossy_behind(), 0);
        for _ in 0..3 {
            slow.recv().await.unwrap();
        }
        assert_eq!(slow.recv().await, Ok(None), "the bus closes with its last publisher");
    }
}
