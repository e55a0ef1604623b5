//! The dashboard server: one HTTP port with the page, the live stream (`/ws`) and health.
//!
//! ```text
//! bus ──lossy──► hub (state, one serialization per tick) ──► stream log (bounded ring)
//!                  ▲ subscribe / resync                          │ read at each client's pace
//!   reader task ───┘ (commands, rate limit, history)       writer task ──► socket
//! ```
//!
//! With `tls_cert_file` and `tls_key_file` the port speaks only TLS (`tls`: the certificate,
//! read again on SIGHUP through [`Certificates`]); everything above runs inside the session.
//!
//! The protocol is documented in `docs/dashboard.md`. Nothing here can slow a feed or the
//! store: the hub is a lossy bus consumer, and a client that falls behind the log is resynced
//! or closed (4008), never waited for.

mod client;
pub(crate) mod frames;
mod history;
mod http;
mod hub;
mod status;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::bus::LossyReceiver;
use crate::config::{DashboardSettings, Secret};
use crate::ops::health::Health;

pub use crate::telemetry::metrics::DashboardMetrics;
pub use http::SUBPROTOCOL;
pub use tls::Certificates;

/// What the server needs from the rest of the daemon.
pub struct DashboardDeps {
    /// The daemon's health, for status, readiness and `/metrics`; the server counts into its
    /// `dashboard` counters.
    pub health: Health,
    /// The database pool, for `history`; `None` without a `[store]`.
    pub pool: Option<PgPool>,
    /// The hub's place on the bus.
    pub bus: LossyReceiver,
    /// Cancelled when the daemon starts stopping: `/readyz` turns 503 and new clients are
    /// refused, while connected ones keep their stream until `closing`.
    pub stopping: CancellationToken,
}

/// State shared by every request and client.
pub(crate) struct Shared {
    settings: Arc<DashboardSettings>,
    token: Option<Secret<String>>,
    metrics: Arc<DashboardMetrics>,
    hub: mpsc::Sender<hub::Request>,
    closing: CancellationToken,
    stopping: CancellationToken,
    health: Health,
    pool: Option<PgPool>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    /// The `seq` of the newest log item.
    head: Arc<AtomicU64>,
    /// Handshakes every connection first, when the port serves TLS.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// A bound, not yet serving dashboard port.
pub struct Dashboard {
    listener: TcpListener,
    addr: SocketAddr,
    settings: Arc<DashboardSettings>,
    token: Option<Secret<String>>,
    tls: Option<tls::Tls>,
}

/// Requests queued for the hub.
const HUB_REQUESTS: usize = 1024;

/// How long clients get to receive their close frame at shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Files the rest of the daemon may hold open besides dashboard connections: feed and
/// database connections, the spool, the journal, the runtime's own. With the dashboard's two
/// bounds, what the open-file limit must allow (the unit's `LimitNOFILE` is set from it).
pub const OTHER_FILES: u64 = 256;

/// Warns when the open-file limit is below what the dashboard's bounds can take: past it,
/// accepting fails for everyone (the feeds' and the database's connections too) before the
/// bounds refuse anyone.
fn check_open_files(settings: &DashboardSettings) {
    let needed = (settings.max_connections + settings.max_http_connections) as u64 + OTHER_FILES;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    if let Some(limit) = limit
        && limit < needed
    {
        warn!(
            limit,
            needed,
            "The open-file limit is below what dashboard.max_connections and max_http_connections \
             allow; raise LimitNOFILE (ulimit -n) or lower them."
        );
    }
}

impl Dashboard {
    /// Binds the port and reads the token, and the certificate when the port serves TLS.
    /// Fails on a taken port, an unreadable token file, or a certificate and key that cannot
    /// be served. `metrics` are the counters the server keeps (the daemon's
    /// `Health::dashboard`).
    pub async fn bind(
        settings: &DashboardSettings,
        metrics: Arc<DashboardMetrics>,
    ) -> anyhow::Result<Dashboard> {
        let token = settings.load_token().map_err(|e| anyhow::anyhow!("dashboard.token_file: {e}"))?;
        anyhow::ensure!(
            token.is_some() || settings.listens_on_loopback(),
            "dashboard.listen {} is not a loopback address and no token is set",
            settings.listen
        );
        let tls = match settings.tls_paths() {
            // A few kilobytes read once at start: not worth a blocking-pool thread.
            Some((cert, key)) => Some(tls::Tls::load(cert, key, metrics)?),
            None => {
                anyhow::ensure!(
                    settings.allow_plaintext || settings.listens_on_loopback(),
                    "dashboard.listen {} is not a loopback address and the port is not served over TLS",
                    settings.listen
                );
                None
            }
        };
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("the dashboard cannot listen on {}", settings.listen))?;
        let addr = listener.local_addr().context("the dashboard's bound address")?;
        check_open_files(settings);
        Ok(Dashboard { listener, addr, settings: Arc::new(settings.clone()), token, tls })
    }

    /// Reads the certificate and key again (SIGHUP); `None` when the port serves plain HTTP.
    pub fn certificates(&self) -> Option<Certificates> {
        self.tls.as_ref().map(|tls| tls.certificates.clone())
    }

    /// The address actually bound (a `listen` port of 0 picks one).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `closing` is cancelled, then closes every client with 1001. Returns the
    /// counters and the task to await.
    pub fn start(
        self,
        deps: DashboardDeps,
        closing: CancellationToken,
    ) -> (Arc<DashboardMetrics>, tokio::task::JoinHandle<()>) {
        let metrics = deps.health.dashboard.clone();
        // Joins, subscription changes and resyncs. When full, a reader waits (and stops
        // reading its client's commands) and a lagging writer closes its client with 4008.
        let (hub_tx, hub_rx) = mpsc::channel(HUB_REQUESTS);
        let head = Arc::new(AtomicU64::new(0));
        let hub =
            hub::Hub::new(self.settings.client_queue, deps.health.clone(), metrics.clone(), head.clone());
        let hub_task = tokio::spawn(hub.run(deps.bus, hub_rx, self.settings.status_interval));
        let shared = Arc::new(Shared {
            settings: self.settings.clone(),
            token: self.token,
            metrics: metrics.clone(),
            hub: hub_tx,
            closing: closing.clone(),
            stopping: deps.stopping,
            health: deps.health,
            pool: deps.pool,
            permits: Arc::new(Semaphore::new(self.settings.max_connections)),
            head,
            tracker: TaskTracker::new(),
            tls: self.tls.map(|tls| tls.acceptor),
        });
        let auth = if shared.token.is_some() { "token required" } else { "no token (loopback only)" };
        let scheme = if shared.tls.is_some() { "https" } else { "http" };
        info!(url = %format!("{scheme}://{}/", self.addr), auth, "Dashboard listening.");
        let router = http::router(shared.clone());
        let listener = self.listener;
        let task = tokio::spawn(async move {
            http::serve(listener, router, shared.clone(), CLOSE_GRACE).await;
            // Every client sees `closing` and sends 1001; give them a moment to flush it.
            shared.tracker.close();
            if tokio::time::timeout(CLOSE_GRACE, shared.tracker.wait()).await.is_err() {
                warn!("Some dashboard clients did not close within {CLOSE_GRACE:?}; dropping them.");
            }
            hub_task.abort();
        });
        (metrics, task)
    }
}
