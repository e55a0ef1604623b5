//! `tickd run`: the bus, the supervisor and its feeds, wired together until shutdown.
//!
//! Until the store lands, the only consumer is a summary line per feed connection every
//! `summary_interval`, so an operator sees what is being received.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::bus::BusBuilder;
use crate::config::Settings;
use crate::feed::TcpConnector;
use crate::supervisor::{Handles, Supervisor, SupervisorDeps, metrics_of};
use crate::tick::now_micros;

/// How the process controls a running daemon.
pub struct AppControl {
    /// Cancelled on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    /// New, already validated settings on SIGHUP.
    pub reload: mpsc::Receiver<Settings>,
}

/// Runs the daemon until `control.shutdown` is cancelled.
pub async fn run(settings: Settings, control: AppControl) -> anyhow::Result<()> {
    let bus = BusBuilder::new(&settings.bus).build();
    let deps = SupervisorDeps {
        bus: bus.clone(),
        shutdown: control.shutdown.clone(),
        connector: Arc::new(TcpConnector),
        jitter_seed: None,
    };
    let supervisor = Supervisor::start(&settings, deps)?;
    let summary =
        tokio::spawn(summarize(supervisor.handles(), settings.summary_interval, control.shutdown.clone()));
    let result = supervisor.run(control.reload).await;
    summary.abort();
    let stats = bus.stats();
    info!(published = stats.published, lossy_missed = stats.lossy_missed, "tickd stopped.");
    Ok(result?)
}

/// Logs one line per connection every `every`: state and what arrived since start.
async fn summarize(handles: Handles, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (id, m) in metrics_of(&handles) {
            let state = m.state();
            let s = m.snapshot();
            let age_ms =
                if s.last_frame_us == 0 { -1 } else { (now_micros() - s.last_frame_us as i64) / 1000 };
            info!(
                feed = %id,
                state = state.as_str(),
                frames = s.frames,
                trades = s.trades,
                quotes = s.quotes,
                deltas = s.deltas,
                snapshots = s.snapshots,
                lifecycle = s.lifecycles,
                gaps = s.gaps,
                reconnects = s.connects.saturating_sub(1),
                parse_errors = s.parse_errors,
                last_frame_age_ms = age_ms,
                "Feed summary."
            );
        }
    }
}
