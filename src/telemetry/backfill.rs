//! Per-feed backfill telemetry: windows asked for, completed, failed and given up, and the
//! trades they found and recorded.
//!
//! One [`BackfillMetrics`] per feed, written by the feed's backfill (`feed::backfill`) and read
//! by `/metrics` through [`BackfillFeeds`], the list of every feed's. Lock-free.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::tick::Name;

/// The backfill counters of one feed.
#[derive(Debug, Default)]
pub struct BackfillMetrics {
    /// Windows asked for (disconnects, trade-channel gaps, starts, single markets).
    pub windows: AtomicU64,
    /// Windows whose every market was fetched over the whole window.
    pub completed: AtomicU64,
    /// Attempts at a window that failed (the REST API or the database did not answer); each
    /// is tried again later unless given up.
    pub failed_attempts: AtomicU64,
    /// Windows given up incomplete: older than `backfill_max_window` before they could be
    /// fetched. They stay missing in `gaps()`.
    pub abandoned: AtomicU64,
    /// Windows not taken because the backfill's queue was full (a storm of disconnects or
    /// gaps); they stay missing in `gaps()`.
    pub dropped: AtomicU64,
    /// Windows taken and not finished: queued, being fetched, or waiting for their next
    /// attempt.
    pub pending: AtomicU64,
    /// Trades the exchange listed in the windows.
    pub trades_found: AtomicU64,
    /// Of those, trades tickd had neither stored nor received, published to be recorded.
    pub trades_new: AtomicU64,
    /// Listed trades without an execution time, which cannot be placed and are left out.
    pub trades_untimed: AtomicU64,
}

impl BackfillMetrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: still usable if a holder panicked.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every feed's backfill telemetry, by feed name. Cheap to clone; every clone is the same
/// list.
#[derive(Clone, Debug, Default)]
pub struct BackfillFeeds(Arc<Mutex<BTreeMap<Name, Arc<BackfillMetrics>>>>);

impl BackfillFeeds {
    /// The telemetry of `feed`, created on first use.
    pub fn register(&self, feed: &Name) -> Arc<BackfillMetrics> {
        lock(&self.0).entry(feed.clone()).or_default().clone()
    }

    /// Forgets a feed (a reload removed it).
    pub fn remove(&self, feed: &str) {
        lock(&self.0).remove(feed);
    }

    /// Every feed's telemetry, by name.
    pub fn all(&self) -> Vec<(Name, Arc<BackfillMetrics>)> {
        lock(&self.0).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}
