//! Readiness: whether the daemon does all it should right now, and if not, why. `/readyz`
//! answers 200 or 503 with these reasons; `/healthz` only says the process answers.

use super::health::{Health, HealthSnapshot};
use crate::store::StoreState;
use crate::telemetry::metrics::FeedState;

/// Why the daemon is not ready, if it is not: every feed connection live and the store
/// writing directly (not spooling, not still starting). `stopping` puts the stop first.
pub fn not_ready(health: &Health, snapshot: &HealthSnapshot, stopping: bool) -> Vec<String> {
    let mut why = Vec::new();
    if stopping {
        why.push("tickd is shutting down".to_owned());
    }
    if snapshot.conns.is_empty() {
        why.push("no feed connection is running yet".to_owned());
    }
    for conn in &snapshot.conns {
        if conn.state != FeedState::Live {
            why.push(format!("feed {} is {}", conn.id, conn.state.as_str()));
        }
    }
    if let Some(m) = &health.store {
        match m.state() {
            StoreState::Ready | StoreState::Replaying => {}
            StoreState::Starting => why.push("the store has not reached the database yet".to_owned()),
            StoreState::Spooling => why.push("the store is spooling: the database is unreachable".to_owned()),
            StoreState::Stopped => why.push("the store has stopped".to_owned()),
        }
    }
    why
}
