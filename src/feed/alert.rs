//! Raising alerts from a feed or the store: a metric, an `Alert` tick, and an incident in the
//! alert registry ([`crate::alerts`]), which logs it and sends it to `alert_command` and the
//! webhook.
//!
//! A feed's alert is about its connection (`feed/n`) and stays open until the feed resolves
//! it ([`Alerter::resolve`]), which sends one recovery notice. The command's environment and
//! the webhook's body are described in [`crate::alerts::notice`].

use std::path::PathBuf;
use std::sync::Arc;

use crate::alerts::AlertMonitor;
use crate::bus::Bus;
use crate::metrics::FeedMetrics;
use crate::tick::{FeedEvent, Name, Tick, TickKind, recv_micros};

pub use crate::alerts::notice::COMMAND_TIMEOUT;

/// Raises and resolves alerts for feeds and the store. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Alerter {
    monitor: AlertMonitor,
}

impl Alerter {
    /// An alerter of its own that runs `command` (if any) for every alert and recovery; no
    /// webhook. `tickd run` uses [`AlertMonitor::alerter`] instead.
    pub fn new(command: Option<PathBuf>) -> Self {
        Alerter { monitor: AlertMonitor::with_command(command) }
    }

    /// An alerter that raises through `monitor`.
    pub fn routed(monitor: AlertMonitor) -> Self {
        Alerter { monitor }
    }

    /// Opens an incident about connection `conn` of `feed` (source `feed/conn`): counts it in
    /// `metrics`, publishes an `Alert` tick, and sends the alert. Nothing is sent when one of
    /// this kind is open already for that connection.
    pub async fn raise(
        &self,
        feed: &Name,
        conn: u16,
        bus: &Bus,
        metrics: &FeedMetrics,
        kind: &str,
        message: &str,
    ) {
        if !self.monitor.fire(kind, &source(feed, conn), message) {
            return;
        }
        FeedMetrics::inc(&metrics.alerts);
        let event = FeedEvent::Alert { kind: kind.to_owned(), message: message.to_owned() };
        let tick = Tick {
            feed: feed.clone(),
            conn,
            market: Arc::from(""),
            exch_ts: None,
            recv_ts: recv_micros(),
            kind: TickKind::Feed(event),
        };
        bus.publish(Arc::new(tick)).await;
    }

    /// Closes the incident `raise` opened for this connection and kind, with one recovery
    /// notice; does nothing when none is open.
    pub fn resolve(&self, feed: &Name, conn: u16, kind: &str, message: &str) {
        self.monitor.resolve(kind, &source(feed, conn), message);
    }

    /// Sends a one-shot alert raised outside a feed, such as the store's (no incident, no
    /// recovery); `source` goes in `TICKD_ALERT_SOURCE` and `TICKD_ALERT_FEED`. Logging and
    /// counting in the caller's own metrics are the caller's.
    pub fn notify(&self, source: &Name, kind: &str, message: &str) {
        self.monitor.event(kind, source, message);
    }
}

/// A connection's alert source, `feed/conn`: the supervisor's connection id.
fn source(feed: &str, conn: u16) -> String {
    format!("{feed}/{conn}")
}
