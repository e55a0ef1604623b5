//! `tickd run`: the bus, the supervisor and its feeds, and the store writer, wired together
//! until shutdown.
//!
//! Shutdown runs in order: the feeds close their connections, then the bus closes (every
//! publisher is gone), then the writer commits or spools its last batch. A summary line per
//! feed connection and one for the store are logged every `summary_interval`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::bus::BusBuilder;
use crate::config::Settings;
use crate::dashboard::{Dashboard, DashboardDeps};
use crate::feed::TcpConnector;
use crate::feed::supervisor::{Supervisor, SupervisorDeps};
use crate::ops::alerts::{self, Thresholds, WatchContext};
use crate::ops::health::Health;
use crate::ops::summary::summarize;
use crate::ops::systemd::{self, Notifier, ServiceContext};
use crate::store::{StoreMetrics, Writer, WriterContext};

/// How the process controls a running daemon.
pub struct AppControl {
    /// Cancelled on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    /// New, already validated settings on SIGHUP.
    pub reload: mpsc::Receiver<Settings>,
    /// Told the dashboard's bound address once it listens (`listen` may name port 0).
    pub dashboard_bound: Option<oneshot::Sender<SocketAddr>>,
    /// Reports to systemd (`Type=notify`); disabled outside a service.
    pub notifier: Notifier,
}

/// Runs the daemon until `control.shutdown` is cancelled.
pub async fn run(settings: Settings, mut control: AppControl) -> anyhow::Result<()> {
    // Bound first: a port already taken stops the start before anything connects.
    let dashboard = match settings.dashboard.enabled {
        true => Some(Dashboard::bind(&settings.dashboard).await?),
        false => None,
    };
    if let (Some(d), Some(tx)) = (&dashboard, control.dashboard_bound.take()) {
        let _ = tx.send(d.local_addr());
    }
    let mut builder = BusBuilder::new(&settings.bus);
    let alerts = alerts::start(&settings)?;
    let (store, writer) = match &settings.store {
        Some(store_settings) => {
            std::fs::create_dir_all(&settings.state_dir).map_err(|e| {
                anyhow::anyhow!(
                    "state_dir {} cannot be created: {e}; set `state_dir` to a writable directory",
                    settings.state_dir.display()
                )
            })?;
            let ctx = WriterContext {
                settings: store_settings.clone(),
                state_dir: settings.state_dir.clone(),
                alerter: alerts.alerter(),
                metrics: Arc::new(StoreMetrics::default()),
            };
            let (handle, writer) = Writer::start(ctx, builder.lossless())?;
            info!(url = %store_settings.url.redacted(), "Recording ticks in PostgreSQL.");
            (Some(handle), Some(tokio::spawn(writer)))
        }
        None => {
            warn!("No [store] configured: ticks are not recorded.");
            (None, None)
        }
    };
    let bus = builder.build();
    // The hub's place on the bus is taken before any feed publishes.
    let hub_bus = bus.lossy();
    let deps = SupervisorDeps {
        bus: bus.clone(),
        shutdown: control.shutdown.clone(),
        connector: Arc::new(TcpConnector),
        jitter_seed: None,
        alerter: alerts.alerter(),
    };
    let supervisor = Supervisor::start(&settings, deps)?;
    // Ends with the shutdown token; it publishes on the bus, so it is awaited before the bus
    // closes.
    let health = Health {
        feeds: supervisor.handles(),
        bus: bus.counters(),
        store: store.as_ref().map(|s| s.metrics().clone()),
        dashboard: Default::default(),
        alerts: alerts.clone(),
    };
    let watcher = alerts::watch(
        &alerts,
        WatchContext {
            thresholds: Thresholds::from_settings(&settings),
            health: health.clone(),
            bus: bus.clone(),
            shutdown: control.shutdown.clone(),
        },
    );
    let closing = CancellationToken::new();
    let dashboard = dashboard.map(|d| {
        let deps = DashboardDeps {
            health: health.clone(),
            pool: store.as_ref().map(|s| s.pool().clone()),
            bus: hub_bus,
            stopping: control.shutdown.clone(),
        };
        d.start(deps, closing.clone())
    });
    let summary =
        tokio::spawn(summarize(health.clone(), settings.summary_interval, control.shutdown.clone()));
    // Started: every feed actor runs and the store takes ticks (into PostgreSQL or its
    // spool), so systemd hears READY=1 now, whether or not the exchange and the database
    // answer yet.
    if let (Some(watchdog), Some(store)) = (control.notifier.watchdog(), &settings.store) {
        warn_slow_store_ops(watchdog, store.connect_timeout + store.write_timeout);
    }
    let service = tokio::spawn(systemd::run(ServiceContext {
        notifier: control.notifier,
        health: health.clone(),
        reloads_applied: supervisor.reloads_applied(),
        shutdown: control.shutdown.clone(),
    }));
    let result = supervisor.run(control.reload).await;
    summary.abort();
    if let Err(e) = watcher.await {
        error!(error = %e, "Alert monitor ended abnormally.");
    }
    // It ends with STOPPING=1 as soon as the stop begins, which it has by now.
    if let Err(e) = service.await {
        error!(error = %e, "systemd notifier ended abnormally.");
    }
    let stats = bus.stats();
    // The feeds are gone; dropping the last publisher closes the bus, and the writer then
    // commits (or spools) what it holds and returns.
    drop(bus);
    if let Some(writer) = writer
        && let Err(e) = writer.await
    {
        error!(error = %e, "Store writer ended abnormally.");
    }
    // Last, the dashboard: its clients get 1001 once everything received is stored.
    closing.cancel();
    if let Some((_, task)) = dashboard
        && let Err(e) = task.await
    {
        error!(error = %e, "Dashboard server ended abnormally.");
    }
    // Queued webhook notices get a last, bounded chance.
    alerts.close().await;
    info!(published = stats.published, lossy_missed = stats.lossy_missed, "tickd stopped.");
    Ok(result?)
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
