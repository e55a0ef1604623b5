//! Raising alerts from a feed or the store: a metric, an `Alert` tick, and an incident in the
//! alert registry ([`super::AlertRegistry`]), which logs it and sends it to `alert_command` and the
//! webhook.
//!
//! A feed's alert is about its connection (`feed/n`) and stays open until the feed resolves
//! it ([`Alerter::resolve`]), which sends one recovery notice. The command's environment and
//! the webhook's body are described in [`super::notice`].

use std::path::PathBuf;
use std::sync::Arc;

use super::AlertRegistry;
use crate::bus::Bus;
use crate::telemetry::metrics::FeedMetrics;
use crate::tick::{ConnId, FeedEvent, Name, Tick, TickKind, recv_micros};

pub use super::notice::COMMAND_TIMEOUT;

/// Raises and resolves alerts for feeds and the store. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Alerter {
    registry: AlertRegistry,
}

impl Alerter {
    /// An alerter of its own that runs `command` (if any) for every alert and recovery; no
    /// webhook. `tickd run` uses [`AlertRegistry::alerter`] instead.
    pub fn new(command: Option<PathBuf>) -> Self {
        Alerter { registry: AlertRegistry::with_command(command) }
    }

    /// An alerter that raises through `registry`.
    pub fn routed(registry: AlertRegistry) -> Self {
        Alerter { registry }
    }

    /// Opens an incident about connection `conn` (the source `feed/n`): counts it in
    /// `metrics`, publishes an `Alert` tick, and sends the alert. Nothing is sent when one of
    /// this kind is open already for that connection.
    pub async fn raise(&self, conn: &ConnId, bus: &Bus, metrics: &FeedMetrics, kind: &str, message: &str) {
        if !self.registry.fire(kind, &conn.to_string(), message) {
            return;
        }
        FeedMetrics::inc(&metrics.alerts);
        bus.publish(Arc::new(alert_tick(conn, kind, message))).await;
    }

    /// Closes the incident `raise` opened for this connection and kind, with one recovery
    /// notice; does nothing when none is open.
    pub fn resolve(&self, conn: &ConnId, kind: &str, message: &str) {
        self.registry.resolve(kind, &conn.to_string(), message);
    }

    /// The kinds open about connection `conn`: what an actor that starts again (after a panic,
    /// or in a new run that carried them over) takes on and resolves in its turn.
    pub fn open_kinds(&self, conn: &ConnId) -> Vec<String> {
        self.registry.open_kinds(&conn.to_string())
    }

    /// Opens an incident about `source` (`nats`), a part that is no feed connection, and sends
    /// its alert; nothing is sent while one of this kind is open for it. The caller resolves it
    /// ([`Alerter::close`]) once the condition is over.
    pub fn open(&self, source: &str, kind: &str, message: &str) -> bool {
        self.registry.fire(kind, source, message)
    }

    /// Closes the incident [`Alerter::open`] opened, with one recovery notice; does nothing
    /// when none is open (one carried over from the last run included).
    pub fn close(&self, source: &str, kind: &str, message: &str) -> bool {
        self.registry.resolve(kind, source, message)
    }

    /// Sends a one-shot alert raised outside a feed, such as the store's (no incident, no
    /// recovery); `source` goes in `TICKD_ALERT_SOURCE` and `TICKD_ALERT_FEED`. Logging and
    /// counting in the caller's own metrics are the caller's.
    pub fn notify(&self, source: &Name, kind: &str, message: &str) {
        self.registry.event(kind, source, message);
    }
}

/// The `Alert` feed event of an alert about `conn`, as dashboards and `feed_events` see it.
pub fn alert_tick(conn: &ConnId, kind: &str, message: &str) -> Tick {
    Tick {
        feed: conn.feed.clone(),
        conn: conn.index,
        market: Name::from(""),
        exch_ts: None,
        recv_ts: recv_micros(),
        kind: TickKind::Feed(FeedEvent::Alert { kind: kind.to_owned(), message: message.to_owned() }),
    }
}
