//! The summary lines: one per feed connection and one for the store every
//! `summary_interval`, with the state and what arrived since start.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::health::Health;
use crate::store::StoreMetrics;
use crate::telemetry::log::{conn_span, log_counts};

/// Logs one line per connection and one for the store every `every`: state and what arrived
/// since start.
pub async fn summarize(health: Health, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            // Shutdown: the feeds and the store log their own final counts as they stop.
            _ = shutdown.cancelled() => return,
            // Time for the next lines.
            _ = tick.tick() => {}
        }
        for c in health.snapshot().conns {
            conn_span(&c.id).in_scope(|| log_counts("Feed summary.", c.state, &c.counts));
        }
        if let Some(m) = &health.store {
            info!(
                state = m.state().as_str(),
                committed = StoreMetrics::get(&m.committed),
                duplicates = StoreMetrics::get(&m.duplicates),
                batches = StoreMetrics::get(&m.batches),
                queued = StoreMetrics::get(&m.queued),
                spooled = StoreMetrics::get(&m.spooled),
                spool_bytes = StoreMetrics::get(&m.spool_bytes),
                replayed = StoreMetrics::get(&m.replayed),
                lost = StoreMetrics::get(&m.lost),
                commit_p99_ms = m.latency_quantile_ms(0.99).unwrap_or(0),
                "Store summary."
            );
        }
    }
}
