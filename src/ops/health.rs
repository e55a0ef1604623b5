//! The daemon's health, gathered in one place: the feeds and their connections, the bus, the
//! store, the dashboard and the alerts.
//!
//! The actors write their telemetry ([`crate::telemetry`]) as they run; [`Health`] knows
//! where all of it is, and [`Health::snapshot`] reads the connections once. Every observer
//! reads the daemon through it: `/metrics` ([`super::metrics`]), `/readyz`
//! ([`super::readiness`]), the dashboard's `status` frames, systemd's `STATUS=` and watchdog
//! ([`super::systemd`]), the alert monitor ([`super::alerts`]) and the summary lines
//! ([`super::summary`]).

use std::sync::Arc;

use crate::bus::BusCounters;
use crate::feed::supervisor::Handles;
use crate::store::StoreMetrics;
use crate::telemetry::alerts::AlertRegistry;
use crate::telemetry::backfill::BackfillFeeds;
use crate::telemetry::metrics::{DashboardMetrics, FeedMetrics, FeedMetricsSnapshot, FeedState};
use crate::telemetry::rest::{RestFeeds, RestMetrics};
use crate::tick::{ConnId, Name, now_micros};

/// Where the daemon's telemetry is. Cheap to clone; every clone reads the same parts.
#[derive(Clone)]
pub struct Health {
    /// The running feed connections (the supervisor keeps the list current).
    pub feeds: Handles,
    /// The bus's counters.
    pub bus: BusCounters,
    /// The store's counters; `None` without a `[store]`.
    pub store: Option<Arc<StoreMetrics>>,
    /// The NATS publisher's counters; `None` without a `[nats]`.
    pub nats: Option<Arc<crate::nats::NatsMetrics>>,
    /// The dashboard server's counters (zero without a dashboard).
    pub dashboard: Arc<DashboardMetrics>,
    /// The alert registry: open incidents and their counts.
    pub alerts: AlertRegistry,
    /// Every feed's REST telemetry (the supervisor registers each feed's client).
    pub rest: RestFeeds,
    /// Every feed's backfill telemetry (the supervisor registers each feed's backfill).
    pub backfill: BackfillFeeds,
}

/// One feed connection as it was read.
#[derive(Clone, Debug)]
pub struct ConnHealth {
    /// Which connection.
    pub id: ConnId,
    /// Its state.
    pub state: FeedState,
    /// Its counters.
    pub counts: FeedMetricsSnapshot,
    /// Its live telemetry, for what a copy cannot show (the watchdog's beat).
    pub metrics: Arc<FeedMetrics>,
}

/// One feed's REST API as it was read.
#[derive(Clone, Debug)]
pub struct RestHealth {
    /// The feed.
    pub feed: Name,
    /// When its current run of failed calls began (µs since the epoch); `None` while the last
    /// call succeeded.
    pub failing_since_us: Option<i64>,
    /// Its live telemetry: counters for `/metrics`, the last error.
    pub metrics: Arc<RestMetrics>,
}

/// The daemon at one instant.
#[derive(Clone, Debug)]
pub struct HealthSnapshot {
    /// When it was read, in microseconds since the Unix epoch.
    pub at_us: i64,
    /// Every running feed connection, in id order.
    pub conns: Vec<ConnHealth>,
    /// Every feed's REST API, by feed name.
    pub rest: Vec<RestHealth>,
}

impl Health {
    /// Reads every running connection now.
    pub fn snapshot(&self) -> HealthSnapshot {
        let conns = self
            .feeds
            .all()
            .into_iter()
            .map(|(id, handle)| {
                let m = handle.metrics;
                ConnHealth { id, state: m.state(), counts: m.snapshot(), metrics: m }
            })
            .collect();
        let rest = self
            .rest
            .all()
            .into_iter()
            .map(|(feed, metrics)| RestHealth { feed, failing_since_us: metrics.failing_since_us(), metrics })
            .collect();
        HealthSnapshot { at_us: now_micros(), conns, rest }
    }
}

impl ConnHealth {
    /// Milliseconds since the connection's last frame at the snapshot's instant; `None`
    /// before the first.
    pub fn last_frame_age_ms(&self, at_us: i64) -> Option<i64> {
        self.counts.last_frame_age_us(at_us).map(|us| us / 1000)
    }
}
