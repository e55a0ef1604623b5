//! What the feeds and the store are doing, as the dashboard protocol shows it: `status`
//! frames and the feed list of `/readyz`, both read from the daemon's [`Health`].

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::ops::health::{Health, HealthSnapshot};
use crate::store::StoreMetrics;
use crate::telemetry::metrics::FeedState;

/// One entry per feed connection.
pub(crate) fn feeds(snapshot: &HealthSnapshot) -> Vec<Value> {
    snapshot
        .conns
        .iter()
        .map(|c| {
            let s = &c.counts;
            json!({
                "feed": &*c.id.feed,
                "conn": c.id.index,
                "id": c.id.to_string(),
                "state": c.state.as_str(),
                "live": c.state == FeedState::Live,
                "connects": s.connects,
                "reconnects": s.connects.saturating_sub(1),
                "gaps": s.gaps,
                "alerts": s.alerts,
                "frames": s.frames,
                "markets": s.markets,
                "last_message_age_ms": c.last_frame_age_ms(snapshot.at_us),
            })
        })
        .collect()
}

fn store(health: &Health) -> Value {
    match &health.store {
        None => Value::Null,
        Some(m) => json!({
            "state": m.state().as_str(),
            "committed": StoreMetrics::get(&m.committed),
            "spooled": StoreMetrics::get(&m.spooled),
            "spool_bytes": StoreMetrics::get(&m.spool_bytes),
            "lost": StoreMetrics::get(&m.lost),
        }),
    }
}

/// A `status` frame; `id` echoes the command's.
pub(crate) fn frame(health: &Health, id: Option<&Value>) -> String {
    let mut v = json!({
        "type": "status",
        "feeds": feeds(&health.snapshot()),
        "store": store(health),
        "clients": health.dashboard.clients.load(Ordering::Relaxed),
    });
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    v.to_string()
}
