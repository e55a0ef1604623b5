//! The daemon as a small topology: sources publish ticks on the bus, sinks consume them.
//!
//! ```text
//! sources (the feeds) ──► bus ──┬─lossless─► store writer ─► PostgreSQL
//!                               └─lossy────► dashboard hub ─► browsers, bots
//! ```
//!
//! Each part is built from its inert settings section, and [`Topology`] starts and stops them
//! in one order:
//! 1. every sink takes its place on the bus ([`Sink::attach`]) before the bus is built, so a
//!    lossless sink misses nothing;
//! 2. sinks start ([`Sink::start`]), then sources ([`Source::start`]);
//! 3. at shutdown the sources stop first; once the last publisher is gone the bus closes, and
//!    each sink drains what it holds and stops, in the order the sinks were added (the store
//!    before the dashboard, so dashboard clients get 1001 only once everything is stored).
//!
//! A new role (record from another host's stream, serve dashboards from it) is a new
//! [`Source`] or [`Sink`] here and a subcommand, not a new wiring.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::bus::{Bus, BusBuilder, LossyReceiver};
use crate::config::{DashboardSettings, Settings, StoreSettings};
use crate::dashboard::{Certificates, Dashboard, DashboardDeps, DashboardMetrics};
use crate::feed::TcpConnector;
use crate::feed::supervisor::{Supervisor, SupervisorDeps};
use crate::ops::health::Health;
use crate::store::{StoreMetrics, Writer, WriterContext};
use crate::telemetry::alerts::Alerter;

/// How long a stop may take in all before tickd gives up waiting and says what is still
/// running. Above the daemon's worst case (a last store write bounded by its timeouts, the
/// dashboard's close grace) and below the unit's `TimeoutStopSec` (45 s), so that a wedged
/// part is named in the log before systemd kills the process.
pub const STOP_DEADLINE: Duration = Duration::from_secs(40);

/// How often a slow stop logs what it is still waiting for.
const STOP_REPORT_EVERY: Duration = Duration::from_secs(5);

/// What a part gets when it starts.
pub struct StartContext<'a> {
    /// The built bus: sources publish on it, lossy sinks take their place on it.
    pub bus: &'a Bus,
    /// The daemon's health, which sinks and sources report into.
    pub health: &'a Health,
    /// How parts raise alerts.
    pub alerter: &'a Alerter,
    /// Cancelled when the stop begins: sources stop, and sinks that serve clients refuse new
    /// ones (`/readyz` turns 503).
    pub stopping: &'a CancellationToken,
    /// The database a sink records into, for read queries beside it (dashboard `history`).
    pub pool: Option<sqlx::PgPool>,
}

/// A consumer of the bus.
pub trait Sink: Send {
    /// Its name in logs: `store`, `dashboard`.
    fn name(&self) -> &'static str;

    /// Takes its place on the bus before the bus is built (a lossless sink must, or it could
    /// miss the first ticks). Runs nothing yet.
    fn attach(&mut self, bus: &mut BusBuilder, alerter: &Alerter) -> anyhow::Result<()>;

    /// Starts consuming.
    fn start(&mut self, ctx: &StartContext<'_>) -> anyhow::Result<()>;

    /// The database it records into, once attached, for other parts' read queries.
    fn pool(&self) -> Option<sqlx::PgPool> {
        None
    }

    /// Stops once the bus has closed: drains what it holds, then returns. Called once, after
    /// every source has stopped.
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// A publisher of ticks.
pub trait Source: Send {
    /// Its name in logs: `feeds`.
    fn name(&self) -> &'static str;

    /// Starts publishing on `ctx.bus`.
    fn start(&mut self, ctx: &StartContext<'_>) -> anyhow::Result<()>;

    /// Counts the configuration reloads applied so far (systemd hears READY=1 after each).
    fn reloads_applied(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// Runs until `ctx.stopping` is cancelled, applying new settings as they come; returns
    /// once every task it started has ended. An error stops the daemon.
    fn run(self: Box<Self>, reloads: mpsc::Receiver<Settings>) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// The sources and sinks of one daemon, built and not yet started.
#[derive(Default)]
pub struct Topology {
    sources: Vec<Box<dyn Source>>,
    sinks: Vec<Box<dyn Sink>>,
}

impl Topology {
    /// Adds a source.
    pub fn source(&mut self, source: impl Source + 'static) -> &mut Self {
        self.sources.push(Box::new(source));
        self
    }

    /// Adds a sink; sinks stop in the order they were added.
    pub fn sink(&mut self, sink: impl Sink + 'static) -> &mut Self {
        self.sinks.push(Box::new(sink));
        self
    }

    /// Gives every sink its place on the bus.
    pub fn attach(&mut self, bus: &mut BusBuilder, alerter: &Alerter) -> anyhow::Result<()> {
        for sink in &mut self.sinks {
            sink.attach(bus, alerter).with_context(|| format!("starting the {}", sink.name()))?;
        }
        Ok(())
    }

    /// The database a sink records into, if one does.
    pub fn pool(&self) -> Option<sqlx::PgPool> {
        self.sinks.iter().find_map(|s| s.pool())
    }

    /// Starts the sinks, then the sources.
    pub fn start(&mut self, ctx: &StartContext<'_>) -> anyhow::Result<()> {
        for sink in &mut self.sinks {
            sink.start(ctx).with_context(|| format!("starting the {}", sink.name()))?;
        }
        for source in &mut self.sources {
            source.start(ctx).with_context(|| format!("starting the {}", source.name()))?;
        }
        Ok(())
    }

    /// The reload counter of the first source that has one.
    pub fn reloads_applied(&self) -> Option<watch::Receiver<u64>> {
        self.sources.iter().find_map(|s| s.reloads_applied())
    }

    /// Runs the sources until the stop (or the first error), then, once `bus` (the last
    /// publisher outside the sources) is dropped, stops the sinks in order within
    /// [`STOP_DEADLINE`]. `before_sinks` runs between the two: the observers that publish on
    /// the bus end there.
    pub async fn run(
        self,
        reloads: mpsc::Receiver<Settings>,
        bus: Bus,
        before_sinks: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Topology { sources, sinks } = self;
        // Reloads go to the first source (the feeds); a daemon has at most one that takes them.
        let mut reloads = Some(reloads);
        let runs: Vec<_> = sources
            .into_iter()
            .map(|s| {
                let name = s.name();
                let rx = reloads.take().unwrap_or_else(|| mpsc::channel(1).1);
                (name, tokio::spawn(s.run(rx)))
            })
            .collect();
        let mut result = Ok(());
        for (name, run) in runs {
            let outcome = match run.await {
                Ok(outcome) => outcome,
                Err(e) => Err(anyhow::anyhow!("the {name} ended abnormally: {e}")),
            };
            if let Err(e) = outcome
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        // The stop's clock starts once the sources have ended (the stop began with them).
        let deadline = tokio::time::Instant::now();
        before_sinks.await;
        // The sources are gone; dropping the last publisher closes the bus, and each sink then
        // takes what is left and stops.
        let stats = bus.stats();
        drop(bus);
        let mut late = Vec::new();
        for sink in sinks {
            let name = sink.name();
            if !stop_within(name, sink.stop(), deadline + STOP_DEADLINE).await {
                late.push(name);
            }
        }
        info!(published = stats.published, lossy_missed = stats.lossy_missed, "tickd stopped.");
        if !late.is_empty() {
            anyhow::bail!(
                "the stop took longer than {STOP_DEADLINE:?}; gave up waiting for: {}",
                late.join(", ")
            );
        }
        result
    }
}

/// Awaits `stop`, logging every [`STOP_REPORT_EVERY`] that `name` is still stopping; gives up
/// at `deadline`. Returns whether it stopped in time.
async fn stop_within(name: &str, stop: BoxFuture<'static, ()>, deadline: tokio::time::Instant) -> bool {
    let mut stop = std::pin::pin!(stop);
    let mut report = tokio::time::interval(STOP_REPORT_EVERY);
    report.tick().await;
    loop {
        tokio::select! {
            // The part stopped.
            () = &mut stop => return true,
            // Past the deadline: name it and stop waiting (the process is about to end).
            () = tokio::time::sleep_until(deadline) => {
                error!(part = name, "Still running at the stop deadline; no longer waiting for it.");
                return false;
            }
            // Still waiting: say for what.
            _ = report.tick() => warn!(part = name, "Still stopping."),
        }
    }
}

/// Feeds from the exchange, under their supervisor.
pub struct FeedsSource {
    settings: Settings,
    supervisor: Option<Supervisor>,
}

impl FeedsSource {
    /// The feeds of `settings` (every `[[feeds]]` entry).
    pub fn build(settings: &Settings) -> FeedsSource {
        FeedsSource { settings: settings.clone(), supervisor: None }
    }
}

impl Source for FeedsSource {
    fn name(&self) -> &'static str {
        "feeds"
    }

    fn start(&mut self, ctx: &StartContext<'_>) -> anyhow::Result<()> {
        let deps = SupervisorDeps {
            bus: ctx.bus.clone(),
            shutdown: ctx.stopping.clone(),
            connector: Arc::new(TcpConnector),
            jitter_seed: None,
            alerter: ctx.alerter.clone(),
            handles: ctx.health.feeds.clone(),
            rest: ctx.health.rest.clone(),
            backfill: ctx.health.backfill.clone(),
            pool: ctx.pool.clone(),
        };
        self.supervisor = Some(Supervisor::start(&self.settings, deps)?);
        Ok(())
    }

    fn reloads_applied(&self) -> Option<watch::Receiver<u64>> {
        self.supervisor.as_ref().map(Supervisor::reloads_applied)
    }

    fn run(self: Box<Self>, reloads: mpsc::Receiver<Settings>) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            match self.supervisor {
                Some(supervisor) => Ok(supervisor.run(reloads).await?),
                None => Ok(()),
            }
        })
    }
}

/// Records every tick in PostgreSQL: the lossless writer with its disk spool.
pub struct StoreSink {
    settings: StoreSettings,
    state_dir: std::path::PathBuf,
    metrics: Arc<StoreMetrics>,
    /// The writer, from `attach` until `start` spawns it.
    writer: Option<BoxFuture<'static, ()>>,
    task: Option<JoinHandle<()>>,
    pool: Option<sqlx::PgPool>,
}

impl StoreSink {
    /// The store of `[store]`, spooling under `state_dir`.
    pub fn build(settings: &StoreSettings, state_dir: &std::path::Path) -> StoreSink {
        StoreSink {
            settings: settings.clone(),
            state_dir: state_dir.to_owned(),
            metrics: Arc::new(StoreMetrics::default()),
            writer: None,
            task: None,
            pool: None,
        }
    }

    /// The writer's counters and state.
    pub fn metrics(&self) -> Arc<StoreMetrics> {
        self.metrics.clone()
    }
}

impl Sink for StoreSink {
    fn name(&self) -> &'static str {
        "store"
    }

    fn attach(&mut self, bus: &mut BusBuilder, alerter: &Alerter) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.state_dir).map_err(|e| {
            anyhow::anyhow!(
                "state_dir {} cannot be created: {e}; set `state_dir` to a writable directory",
                self.state_dir.display()
            )
        })?;
        let ctx = WriterContext {
            settings: self.settings.clone(),
            state_dir: self.state_dir.clone(),
            alerter: alerter.clone(),
            metrics: self.metrics.clone(),
        };
        let (handle, writer) = Writer::start(ctx, bus.lossless())?;
        self.pool = Some(handle.pool().clone());
        self.writer = Some(Box::pin(writer));
        info!(url = %self.settings.url.redacted(), "Recording ticks in PostgreSQL.");
        Ok(())
    }

    fn start(&mut self, _ctx: &StartContext<'_>) -> anyhow::Result<()> {
        self.task = self.writer.take().map(tokio::spawn);
        Ok(())
    }

    fn pool(&self) -> Option<sqlx::PgPool> {
        self.pool.clone()
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // The writer returns once the bus has closed and it committed (or spooled) the
            // last batch.
            if let Some(task) = self.task
                && let Err(e) = task.await
            {
                error!(error = %e, "Store writer ended abnormally.");
            }
        })
    }
}

/// Serves the page, the live stream and the health endpoints on the dashboard port.
pub struct DashboardSink {
    /// Bound at build, so a port already taken stops the start before anything connects.
    bound: Option<Dashboard>,
    /// The TLS certificate's reloader, kept past `start`.
    certificates: Option<Certificates>,
    /// Tells the server to close its clients (1001) and stop; cancelled at its stop.
    closing: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl DashboardSink {
    /// Binds the dashboard port of `[dashboard]`; the server counts into `metrics`.
    pub async fn build(
        settings: &DashboardSettings,
        metrics: Arc<DashboardMetrics>,
    ) -> anyhow::Result<DashboardSink> {
        let bound = Dashboard::bind(settings, metrics).await?;
        let certificates = bound.certificates();
        Ok(DashboardSink { bound: Some(bound), certificates, closing: CancellationToken::new(), task: None })
    }

    /// Reads the port's certificate again (SIGHUP); `None` when it serves plain HTTP.
    pub fn certificates(&self) -> Option<Certificates> {
        self.certificates.clone()
    }

    /// The address bound (a `listen` port of 0 picks one).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.bound.as_ref().map(Dashboard::local_addr)
    }

    fn serve(&mut self, bus: LossyReceiver, ctx: &StartContext<'_>) {
        if let Some(bound) = self.bound.take() {
            let deps = DashboardDeps {
                health: ctx.health.clone(),
                pool: ctx.pool.clone(),
                bus,
                stopping: ctx.stopping.clone(),
            };
            self.task = Some(bound.start(deps, self.closing.clone()).1);
        }
    }
}

impl Sink for DashboardSink {
    fn name(&self) -> &'static str {
        "dashboard"
    }

    fn attach(&mut self, _bus: &mut BusBuilder, _alerter: &Alerter) -> anyhow::Result<()> {
        // Lossy: its place is taken from the built bus, in `start`.
        Ok(())
    }

    fn start(&mut self, ctx: &StartContext<'_>) -> anyhow::Result<()> {
        // Started before any source publishes, so the hub sees every tick.
        self.serve(ctx.bus.lossy(), ctx);
        Ok(())
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // Last: its clients get 1001 once everything received is stored.
            self.closing.cancel();
            if let Some(task) = self.task
                && let Err(e) = task.await
            {
                error!(error = %e, "Dashboard server ended abnormally.");
            }
        })
    }
}
