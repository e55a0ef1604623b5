//! The exchange shared by every connection: state behind one mutex plus the update broadcast.
//!
//! The generator task calls [`Hub::generate`]; connection tasks read books for snapshots and
//! create markets on demand. Updates are published while the lock is held, so a snapshot taken
//! under the lock reflects exactly the updates numbered below [`Exchange::next_update_no`] at
//! that moment; a connection skips queued updates older than its snapshot (see `session`).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::broadcast;

use super::exchange::{Exchange, Update};

/// One generator tick's updates, shared by every connection.
pub(crate) type Batch = Arc<Vec<Update>>;

/// Batches buffered per connection. At 100,000 events/s and a 1 ms tick a batch holds ~100
/// updates, so this is about 4 s of data. A connection further behind than this gets `Lagged`
/// and answers with error 25 on every data sid (terminal, as on Kalshi) instead of buffering
/// without bound.
pub(crate) const BROADCAST_CAPACITY: usize = 4096;

/// Exchange state guarded by the hub's mutex.
#[derive(Debug)]
pub(crate) struct HubState {
    /// Markets and books.
    pub ex: Exchange,
    /// Generation stopped by `Simulator::pause`.
    pub paused: bool,
}

/// The shared exchange.
#[derive(Debug)]
pub(crate) struct Hub {
    state: Mutex<HubState>,
    tx: broadcast::Sender<Batch>,
    /// Create markets named in commands instead of refusing them.
    pub auto_create: bool,
}

impl Hub {
    pub(crate) fn new(ex: Exchange, auto_create: bool) -> Hub {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Hub { state: Mutex::new(HubState { ex, paused: false }), tx, auto_create }
    }

    /// Locks the exchange. A panic while holding the lock cannot leave a book half-updated in a
    /// way that matters to a simulator, so a poisoned lock is simply taken over.
    pub(crate) fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver of every batch published from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Batch> {
        self.tx.subscribe()
    }

    /// Publishes updates; called with the lock held (the guard proves it).
    pub(crate) fn publish(&self, _held: &HubState, updates: Vec<Update>) {
        if !updates.is_empty() {
            // No receiver just means no connection is open.
            let _ = self.tx.send(Arc::new(updates));
        }
    }

    /// Runs one round of the market schedule unless paused; returns whether it ran.
    pub(crate) fn schedule_round(&self, ts_ms: i64, period_ms: i64) -> bool {
        let mut st = self.lock();
        if st.paused {
            return false;
        }
        let updates = st.ex.schedule_round(ts_ms, period_ms);
        self.publish(&st, updates);
        true
    }

    /// Runs `events` exchange events unless paused; returns how many ran.
    pub(crate) fn generate(&self, events: u64, ts_ms: i64) -> u64 {
        let mut st = self.lock();
        if st.paused {
            return 0;
        }
        let mut updates = Vec::new();
        for _ in 0..events {
            updates.extend(st.ex.step(ts_ms));
        }
        self.publish(&st, updates);
        events
    }

    /// Makes sure every ticker exists, creating missing ones when allowed. Returns the unknown
    /// tickers when creation is off.
    pub(crate) fn ensure_markets(
        &self,
        st: &mut HubState,
        tickers: &[String],
        ts_ms: i64,
    ) -> Result<(), Vec<String>> {
        let missing: Vec<String> = tickers.iter().filter(|t| !st.ex.has_market(t)).cloned().collect();
        if missing.is_empty() {
            return Ok(());
        }
        if !self.auto_create {
            return Err(missing);
        }
        let created: Vec<Update> = missing.iter().flat_map(|t| st.ex.add_market(t, ts_ms)).collect();
        self.publish(st, created);
        Ok(())
    }
}
