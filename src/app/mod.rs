//! The daemon, in process: [`App::build`] turns settings into a [`Topology`] of sources and
//! sinks around the bus, binds its ports and reports the addresses; [`App::run`] runs it until
//! a shutdown token is cancelled. `tickd run` is a thin shell around it (arguments, settings,
//! telemetry, signals), and the integration tests run the very same code on port 0.
//!
//! Around the topology run the observers of [`crate::ops`], each reading the daemon's
//! [`Health`]: the alert monitor, the summary lines and the systemd notifier.
//!
//! Shutdown runs in order: the sources close their connections, the observers that publish
//! end, the bus closes (every publisher is gone), the store commits or spools its last batch,
//! the dashboard closes its clients with 1001, alerts still open are announced as such and
//! kept in `state_dir` for the next run, and queued alert notices get a last, bounded chance. The whole stop is bounded by [`topology::STOP_DEADLINE`].

pub mod topology;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::bus::{Bus, BusBuilder};
use crate::config::Settings;
use crate::dashboard::{Certificates, DashboardMetrics};
use crate::nats::publish::NatsSink;
use crate::ops::alerts::{self, Thresholds, WatchContext};
use crate::ops::health::Health;
use crate::ops::summary::summarize;
use crate::ops::systemd::{self, Notifier, ServiceContext};
use crate::telemetry::alerts::AlertRegistry;
use topology::{DashboardSink, FeedsSource, StartContext, StoreSink, Topology};

/// Settings reloads queued for the app. When full, the sender waits for room (see
/// [`crate::ops::reload`]), so a reload is never dropped and the newest one always arrives
/// last.
const RELOAD_QUEUE: usize = 4;

/// The addresses a built app listens on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Addrs {
    /// The dashboard port (page, stream, `/healthz`, `/readyz`, `/metrics`), when enabled.
    pub dashboard: Option<SocketAddr>,
}

/// A built daemon: ports bound, the bus built with every sink in its place, nothing running.
pub struct App {
    settings: Settings,
    topology: Topology,
    bus: Bus,
    health: Health,
    alerts: AlertRegistry,
    addrs: Addrs,
    certificates: Option<Certificates>,
    notifier: Notifier,
    reload_tx: mpsc::Sender<Settings>,
    reload_rx: mpsc::Receiver<Settings>,
}

impl App {
    /// Builds every part from its settings section: the dashboard port is bound (a port
    /// already taken stops the start before anything connects), the alert registry and its
    /// webhook start, the store opens its spool. No feed connects until [`App::run`].
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let mut topology = Topology::default();
        topology.source(FeedsSource::build(&settings));
        let mut addrs = Addrs::default();
        let store = settings.store.as_ref().map(|s| StoreSink::build(s, &settings.state_dir));
        let store_metrics = store.as_ref().map(StoreSink::metrics);
        match store {
            Some(store) => {
                topology.sink(store);
            }
            None => warn!("No [store] configured: ticks are not recorded."),
        }
        let nats = match &settings.nats {
            Some(nats) => Some(NatsSink::build(nats, &settings.state_dir).await?),
            None => None,
        };
        let nats_metrics = nats.as_ref().map(NatsSink::metrics);
        if let Some(nats) = nats {
            topology.sink(nats);
        }
        let dashboard_metrics = Arc::new(DashboardMetrics::default());
        let mut certificates = None;
        if settings.dashboard.enabled {
            let dashboard = DashboardSink::build(&settings.dashboard, dashboard_metrics.clone()).await?;
            addrs.dashboard = dashboard.local_addr();
            certificates = dashboard.certificates();
            topology.sink(dashboard);
        }
        let alerts = alerts::start(&settings)?;
        let mut builder = BusBuilder::new(&settings.bus);
        topology.attach(&mut builder, &alerts.alerter())?;
        let bus = builder.build();
        let health = Health {
            feeds: Default::default(),
            bus: bus.counters(),
            store: store_metrics,
            nats: nats_metrics,
            dashboard: dashboard_metrics,
            alerts: alerts.clone(),
            rest: Default::default(),
            backfill: Default::default(),
        };
        let (reload_tx, reload_rx) = mpsc::channel(RELOAD_QUEUE);
        Ok(App {
            settings,
            topology,
            bus,
            health,
            alerts,
            addrs,
            certificates,
            notifier: Notifier::disabled(),
            reload_tx,
            reload_rx,
        })
    }

    /// The addresses bound.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// The daemon's health, readable while it runs.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Reads the dashboard's TLS certificate and key again, as SIGHUP does; `None` when the
    /// port serves plain HTTP (or is off).
    pub fn certificates(&self) -> Option<Certificates> {
        self.certificates.clone()
    }

    /// Where new, already validated settings go (SIGHUP): feeds and their markets change live.
    pub fn reloads(&self) -> mpsc::Sender<Settings> {
        self.reload_tx.clone()
    }

    /// Reports to systemd (`Type=notify`) while running; disabled unless set.
    pub fn with_notifier(mut self, notifier: Notifier) -> App {
        self.notifier = notifier;
        self
    }

    /// Runs the daemon until `shutdown` is cancelled, then stops it in order.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let App { settings, mut topology, bus, health, alerts, notifier, reload_tx, reload_rx, .. } = self;
        // Reloads come through `reload_tx` clones; this one must not keep the queue open.
        drop(reload_tx);
        let alerter = alerts.alerter();
        let ctx = StartContext {
            bus: &bus,
            health: &health,
            alerter: &alerter,
            stopping: &shutdown,
            pool: topology.pool(),
        };
        if let Err(e) = topology.start(&ctx) {
            shutdown.cancel();
            return Err(e);
        }
        // Ends with the shutdown token; it publishes on the bus, so it is awaited before the bus
        // closes.
        let watcher = alerts::watch(
            &alerts,
            WatchContext {
                thresholds: Thresholds::from_settings(&settings),
                health: health.clone(),
                bus: bus.clone(),
                shutdown: shutdown.clone(),
            },
        );
        let summary = tokio::spawn(summarize(health.clone(), settings.summary_interval, shutdown.clone()));
        // Started: every source runs and the store takes ticks (into PostgreSQL or its spool),
        // so systemd hears READY=1 now, whether or not the exchange and the database answer yet.
        if let (Some(watchdog), Some(store)) = (notifier.watchdog(), &settings.store) {
            warn_slow_store_ops(watchdog, store.connect_timeout + store.write_timeout);
        }
        let service = tokio::spawn(systemd::run(ServiceContext {
            notifier,
            health: health.clone(),
            reloads_applied: topology.reloads_applied().unwrap_or_else(|| tokio::sync::watch::channel(0).1),
            shutdown: shutdown.clone(),
        }));
        let observers = async {
            summary.abort();
            if let Err(e) = watcher.await {
                error!(error = %e, "Alert monitor ended abnormally.");
            }
            // It ends with STOPPING=1 as soon as the stop begins, which it has by now.
            if let Err(e) = service.await {
                error!(error = %e, "systemd notifier ended abnormally.");
            }
        };
        let result = topology.run(reload_rx, bus, observers).await;
        // A source that failed stops everything else too.
        shutdown.cancel();
        // Nothing raises or resolves alerts any more: the open ones are announced as open at
        // the stop and kept for the next run; then queued webhook notices get a last, bounded
        // chance.
        alerts.stopping().await;
        alerts.close().await;
        result
    }
}

/// A store write or probe is bounded by `limit` (`connect_timeout + write_timeout`); the
/// watchdog stops pinging once one has been under way for longer than `watchdog`, so a
/// limit at or above it turns a slow database into a restart.
fn warn_slow_store_ops(watchdog: Duration, limit: Duration) {
    if limit >= watchdog {
        warn!(
            watchdog_ms = watchdog.as_millis() as u64,
            limit_ms = limit.as_millis() as u64,
            "store.connect_timeout + store.write_timeout is not below the systemd watchdog timeout: \
             a database that answers that slowly stops the watchdog and systemd restarts tickd."
        );
    }
}
