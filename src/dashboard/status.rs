//! What the feeds and the store are doing, for `status` frames and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::DashboardMetrics;
use crate::metrics::FeedState;
use crate::store::{StoreMetrics, StoreState};
use crate::supervisor::{Handles, feed_and_conn, metrics_of};
use crate::tick::now_micros;

/// Where status comes from.
#[derive(Clone)]
pub(crate) struct Source {
    pub handles: Handles,
    pub store: Option<Arc<StoreMetrics>>,
    pub metrics: Arc<DashboardMetrics>,
}

impl Source {
    /// One entry per feed connection.
    pub(crate) fn feeds(&self) -> Vec<Value> {
        let now = now_micros();
        metrics_of(&self.handles)
            .into_iter()
            .map(|(id, m)| {
                let s = m.snapshot();
                let state = m.state();
                let (feed, conn) = feed_and_conn(&id);
                let age = s.last_frame_age_us(now).map(|us| us / 1000);
                json!({
                    "feed": feed,
                    "conn": conn,
                    "id": &*id,
                    "state": state.as_str(),
                    "live": state == FeedState::Live,
                    "connects": s.connects,
                    "reconnects": s.connects.saturating_sub(1),
                    "gaps": s.gaps,
                    "alerts": s.alerts,
                    "frames": s.frames,
                    "last_message_age_ms": age,
                })
            })
            .collect()
    }

    fn store(&self) -> Value {
        match &self.store {
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
    pub(crate) fn frame(&self, id: Option<&Value>) -> String {
        let mut v = json!({
            "type": "status",
            "feeds": self.feeds(),
            "store": self.store(),
            "clients": self.metrics.clients.load(Ordering::Relaxed),
        });
        if let Some(id) = id {
            v["id"] = id.clone();
        }
        v.to_string()
    }

    /// Why the daemon is not ready, if it is not: every feed connection live and the store
    /// writing directly (not spooling, not still starting).
    pub(crate) fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        let feeds = metrics_of(&self.handles);
        if feeds.is_empty() {
            why.push("no feed connection is running yet".to_owned());
        }
        for (id, m) in feeds {
            let state = m.state();
            if state != FeedState::Live {
                why.push(format!("feed {id} is {}", state.as_str()));
            }
        }
        if let Some(m) = &self.store {
            match m.state() {
                StoreState::Ready | StoreState::Replaying => {}
                StoreState::Starting => why.push("the store has not reached the database yet".to_owned()),
                StoreState::Spooling => {
                    why.push("the store is spooling: the database is unreachable".to_owned())
                }
                StoreState::Stopped => why.push("the store has stopped".to_owned()),
            }
        }
        why
    }
}
