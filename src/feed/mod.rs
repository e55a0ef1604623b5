//! The feed actor: one exchange WebSocket connection, kept alive for as long as tickd runs.
//!
//! The actor owns the connection and a [`Session`] (the protocol state: what is wanted, sids,
//! `seq`, books). It connects (signing the handshake anew each time), lets the session
//! subscribe, reads frames and publishes the session's ticks on the bus, pings every
//! `ping_interval` and declares the connection dead when no frame of any kind arrived for
//! `ping_interval + pong_timeout` (a half-open socket never delivers a FIN). When the
//! connection ends it publishes `Disconnected`, waits a capped, jittered, growing delay and
//! connects again; the failure count resets only after a connection stayed healthy for
//! `backoff.healthy_after`. After `max_reconnects` consecutive failures it raises an alert and,
//! by policy, keeps retrying every `backoff.max`, stops, or asks the process to exit. Alerts of
//! a failure streak resolve (one recovery notice each) when the failure count resets.
//!
//! While live, it also watches for frozen markets ([`frozen`]): a market quiet for
//! `market_quiet_after` is checked against the REST API, and one that REST shows changing is
//! asked for afresh on the same connection, recorded (`market_frozen`) and alerted.
//!
//! Callers hold a [`FeedHandle`]: change the market list (applied live, or queued while
//! disconnected), read the list and the current books, and ask for fresh snapshots of the books
//! (for a consumer that lost its copy).
//!
//! With a backfill ([`FeedContext::backfill`]), the actor hands it every window in which its
//! trades may have been missed, without waiting for it: from the last frame before a
//! disconnect to the first trade after the resubscribe (or, on a connection with no trade
//! then, [`QUIET_AFTER_LIVE`] after it is live again), from the trade before a gap on the
//! `trade` channel to the trade after it, and, for each market it follows for the first time,
//! from its newest stored trade (tickd's start; markets added later once their subscription
//! had time to be acknowledged).

pub mod backfill;
pub mod backoff;
pub mod discovery;
pub mod frozen;
pub mod supervisor;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use crate::bus::Bus;
use crate::config::{FeedSettings, GiveUpPolicy};
use crate::kalshi::command::Channel;
use crate::kalshi::session::{Activity, AlertAction, Output, Session, SessionConfig};
use crate::kalshi::sign::Credentials;
use crate::telemetry::alerts::{
    Alerter, BOOK_UNRECOVERABLE, CREDENTIALS_REJECTED, MARKET_FROZEN, MAX_RECONNECTS,
};
use crate::telemetry::log::{conn_span, log_counts};
use crate::telemetry::metrics::{FeedMetrics, FeedState};
use crate::tick::{BookSnapshot, ConnId, FeedEvent, Name, Tick, TickKind, now_micros, recv_micros};
use backfill::{BackfillHandle, Cause, Window};
use backoff::Backoff;
use frozen::{
    BackfillWindow, CheckRest, Fetched, FrozenMarket, FrozenWatch, Local, SCAN_EVERY, Seen, Verdict, Wanted,
};

/// Commands queued for a feed actor. A full queue makes the caller wait (they are rare:
/// reloads and book queries).
const COMMAND_CAPACITY: usize = 16;

/// Most frames handled per turn of the connection loop when they are already buffered; bounds
/// how long commands, pings and shutdown wait behind a burst.
const BURST: usize = 64;

/// How long a clean close may take at shutdown before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection live again that received no trade for this long closes its backfill window
/// there (the `trade` subscription was acknowledged before it went live, so every later trade
/// comes live). Checked with the connection's own pings.
pub const QUIET_AFTER_LIVE: Duration = Duration::from_secs(2);

/// Frames larger than this break the connection inside the WebSocket library; frames between
/// `max_frame_bytes` and this are read, counted and dropped so the connection goes on.
const HARD_FRAME_LIMIT: usize = 64 << 20;

/// A byte stream to the exchange (TCP, or an in-process pipe in tests).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A boxed byte stream.
pub type BoxIo = Box<dyn Io>;

/// The WebSocket type every feed uses.
pub type Ws = WebSocketStream<MaybeTlsStream<BoxIo>>;

/// Opens byte streams to `host:port`; TLS and the WebSocket handshake happen on top.
pub trait Connect: Send + Sync + 'static {
    /// Opens one stream.
    fn open<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<BoxIo>> + Send + 'a>>;
}

/// Plain TCP with `TCP_NODELAY` (latency matters more than packet count).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl Connect for TcpConnector {
    fn open<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<BoxIo>> + Send + 'a>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxIo)
        })
    }
}

/// Why a connection attempt failed. The feed retries every one of them after its backoff,
/// whatever the class (the exchange's side or this machine's clock may be put right while it
/// waits); only the `max_reconnects` policy stops a feed. [`ConnectError::is_retriable`]
/// tells a failure that may pass by itself from one that waits for a change, and
/// [`ConnectError::is_credentials`] picks out rejected credentials.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL cannot be connected to.
    #[error("invalid URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// TCP failed, or TLS did: rustls reports a failed TLS handshake (a certificate that does
    /// not verify, an alert from the peer) as an I/O error that carries its own error.
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// Took longer than `connect_timeout`.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The exchange refused the handshake with HTTP 401: the key id or signature is wrong.
    #[error("handshake rejected with HTTP 401: credentials not accepted (check key_id and key_file)")]
    Unauthorized,
    /// The exchange answered the upgrade with another HTTP status.
    #[error("handshake refused with HTTP {0}")]
    Refused(u16),
    /// The WebSocket upgrade failed without an HTTP status, most often because the peer hung
    /// up halfway through it.
    #[error("handshake failed: {0}")]
    Handshake(String),
}

impl ConnectError {
    /// Whether the same attempt may succeed later with nothing changed: the network or the
    /// exchange was away or slow, or asked to be tried again (HTTP 429, 5xx), or hung up in
    /// the middle of the upgrade. A URL that cannot be used, rejected credentials, a TLS
    /// failure and any other refusal stay until someone changes something.
    pub fn is_retriable(&self) -> bool {
        match self {
            ConnectError::Io(e) => !e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()),
            ConnectError::Timeout(_) | ConnectError::Handshake(_) => true,
            ConnectError::Refused(status) => *status == 429 || *status >= 500,
            ConnectError::Url { .. } | ConnectError::Unauthorized => false,
        }
    }

    /// The exchange rejected the signed handshake: the key id or the key is wrong, or the
    /// clock the signature's timestamp comes from is off. Counted in `credentials_rejected`;
    /// an alert is raised when it opens a failure streak.
    pub fn is_credentials(&self) -> bool {
        matches!(self, ConnectError::Unauthorized)
    }
}

/// Why an open connection ended.
#[derive(Debug)]
enum Ended {
    /// Shutdown was requested; the connection was closed with 1000.
    Shutdown,
    /// No frame for ping interval + pong timeout.
    Dead(Duration),
    /// The exchange sent a close frame.
    Closed(Option<(u16, String)>),
    /// The stream ended without a close frame.
    Eof,
    /// A read or write error.
    Error(String),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Shutdown => write!(f, "shutdown"),
            Ended::Dead(d) => write!(f, "no frame for {d:?}: connection presumed dead"),
            Ended::Closed(Some((code, reason))) => {
                write!(f, "closed by the exchange ({code} {reason})")
            }
            Ended::Closed(None) => write!(f, "closed by the exchange"),
            Ended::Eof => write!(f, "connection lost (no close frame)"),
            Ended::Error(e) => write!(f, "connection error: {e}"),
        }
    }
}

/// How a feed actor finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedExit {
    /// Shutdown was requested.
    Shutdown,
    /// `max_reconnects` was reached and the policy is to stop this feed.
    GaveUp,
    /// `max_reconnects` was reached and the policy is to exit the process.
    ExitProcess,
}

/// What one feed actor connects to and follows.
#[derive(Clone)]
pub struct FeedConfig {
    /// Connection parameters (url, heartbeat, backoff, limits).
    pub settings: FeedSettings,
    /// Which connection of which feed this is (`kalshi/0`); its index is stamped on every
    /// tick as [`Tick::conn`].
    pub conn: ConnId,
    /// Markets this connection follows.
    pub markets: Vec<String>,
    /// Whether this connection also carries `market_lifecycle_v2`.
    pub lifecycle: bool,
    /// Signing key, if the exchange wants signed handshakes.
    pub credentials: Option<Arc<Credentials>>,
}

/// Shared services a feed actor runs with.
#[derive(Clone)]
pub struct FeedContext {
    /// Where ticks go.
    pub bus: Bus,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// This connection's counters.
    pub metrics: Arc<FeedMetrics>,
    /// How byte streams are opened.
    pub connector: Arc<dyn Connect>,
    /// How alerts are raised.
    pub alerter: Alerter,
    /// Seed for backoff jitter; `None` seeds from the OS.
    pub jitter_seed: Option<u64>,
    /// The feed's REST client and its checks' share of the budget, for the frozen-market
    /// check; `None` turns the check off (a feed without REST).
    pub checks: Option<CheckRest>,
    /// The feed's backfill, which this connection tells about the windows it may have missed
    /// trades in; `None` when the feed does not backfill.
    pub backfill: Option<BackfillHandle>,
}

enum FeedCommand {
    SetMarkets(Vec<String>),
    Books(oneshot::Sender<Vec<(Name, BookSnapshot)>>),
    RefreshBooks,
    SetChecks(Option<CheckRest>),
}

/// A cheap handle on a running feed actor.
#[derive(Clone)]
pub struct FeedHandle {
    tx: mpsc::Sender<FeedCommand>,
    /// The connection's counters.
    pub metrics: Arc<FeedMetrics>,
    /// The markets the connection follows, as last set: readers (the dashboard, which tells
    /// a client which markets no feed follows) see a reload at once, before the actor applies
    /// it. Replaced whole, never edited in place.
    markets: Arc<RwLock<Arc<HashSet<String>>>>,
}

impl FeedHandle {
    /// Replaces the market list; applied live with `update_subscription`, or at the next
    /// connect. Returns false if the actor has stopped.
    pub async fn set_markets(&self, markets: Vec<String>) -> bool {
        if let Ok(mut list) = self.markets.write() {
            *list = Arc::new(markets.iter().cloned().collect());
        }
        self.tx.send(FeedCommand::SetMarkets(markets)).await.is_ok()
    }

    /// The markets this connection follows (the configured list, whether or not they have
    /// sent anything yet).
    pub fn markets(&self) -> Arc<HashSet<String>> {
        self.markets.read().map(|list| list.clone()).unwrap_or_default()
    }

    /// Asks the exchange for a fresh snapshot of every book the connection trusts, published
    /// on the bus like any snapshot: for a consumer that missed ticks (the dashboard hub
    /// falling behind the bus) and can no longer vouch for its copies. Does not wait: false
    /// when the actor's command queue is full (ask again later). A stopped actor has no books
    /// to refresh, and a disconnected one's next connection brings fresh snapshots anyway.
    pub fn refresh_books(&self) -> bool {
        !matches!(self.tx.try_send(FeedCommand::RefreshBooks), Err(mpsc::error::TrySendError::Full(_)))
    }

    /// Replaces the REST client the frozen-market check uses (the feed's REST settings were
    /// reloaded). Returns false if the actor has stopped.
    pub async fn set_checks(&self, checks: Option<CheckRest>) -> bool {
        self.tx.send(FeedCommand::SetChecks(checks)).await.is_ok()
    }

    /// The books this connection currently trusts (built from a snapshot, unbroken since).
    pub async fn books(&self) -> Vec<(Name, BookSnapshot)> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(FeedCommand::Books(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

/// Creates a feed actor; the returned future runs it until shutdown or give-up, inside the
/// connection's [`conn_span`].
pub fn feed(cfg: FeedConfig, ctx: FeedContext) -> (FeedHandle, impl Future<Output = FeedExit> + Send) {
    // Bounded: callers wait when full; commands are rare (reloads, queries).
    let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
    let markets = Arc::new(RwLock::new(Arc::new(cfg.markets.iter().cloned().collect())));
    let handle = FeedHandle { tx, metrics: ctx.metrics.clone(), markets };
    let metrics = ctx.metrics.clone();
    let span = conn_span(&cfg.conn);
    let actor = FeedActor::new(cfg, ctx, rx);
    let run = async move {
        let exit = actor.run().await;
        // Stopped (or given up): nothing more is owed to the watchdog.
        metrics.beat.idle();
        exit
    };
    (handle, run.instrument(span))
}

struct FeedActor {
    cfg: FeedConfig,
    ctx: FeedContext,
    commands: mpsc::Receiver<FeedCommand>,
    session: Session,
    backoff: Backoff,
    out: Output,
    /// The max-reconnects alert of the current failure streak has been raised.
    alerted: bool,
    /// Alerts raised in the current failure streak, resolved once a connection is healthy.
    open_alerts: Vec<&'static str>,
    /// A `book_unrecoverable` alert this actor found open when it started (raised before a
    /// panic, or carried over from the last run) and its session knows nothing of: resolved
    /// once a connection is healthy with every book sound.
    adopted_book_alert: bool,
    /// The frozen-market watch; `None` when `market_quiet_after` is zero.
    watch: Option<FrozenWatch>,
    /// Checks of quiet markets in flight (REST calls), dropped (aborted) with the connection.
    checks: JoinSet<Fetched>,
    /// Windows not yet handed to the backfill.
    missed: Missed,
}

/// The windows in which a connection may have missed trades, until they are handed to the
/// feed's backfill.
#[derive(Debug, Default)]
struct Missed {
    /// Lost since this time (µs, the last frame before the disconnect); closed after the
    /// resubscribe.
    open_from_us: Option<i64>,
    /// Markets followed but never backfilled by this connection (at start, or added since).
    fresh: Vec<String>,
    /// Not before then: markets added live wait for their subscription to be acknowledged.
    fresh_due: Option<Instant>,
    /// When the connection first followed the oldest of `fresh` (µs): the newest trade
    /// stored before then is where their backfill starts.
    fresh_since_us: Option<i64>,
    /// Markets already handed over as fresh ones.
    started: HashSet<String>,
    /// When the current connection went live (µs and instant).
    live_at: Option<(i64, Instant)>,
    /// Exchange time (µs) of the last trade received on the current connection.
    last_trade_us: Option<i64>,
    /// When the current connection opened (µs).
    connected_us: i64,
    /// A gap on the `trade` channel (sid, expected, got, from µs) waiting for the trade that
    /// shows where it ends.
    gap: Option<(u64, u64, u64, i64)>,
}

impl FeedActor {
    fn new(cfg: FeedConfig, ctx: FeedContext, commands: mpsc::Receiver<FeedCommand>) -> Self {
        let s = &cfg.settings;
        let mut channels: Vec<Channel> = s.channels.iter().filter_map(|c| Channel::from_name(c)).collect();
        if cfg.lifecycle {
            channels.push(Channel::MarketLifecycleV2);
        }
        let session = Session::new(
            SessionConfig {
                feed: cfg.conn.feed.clone(),
                conn: cfg.conn.index,
                channels,
                markets: cfg.markets.clone(),
                use_yes_price: s.use_yes_price,
                ack_timeout: s.ack_timeout,
            },
            ctx.metrics.clone(),
        );
        ctx.metrics.markets.store(cfg.markets.len() as u64, Ordering::Relaxed);
        let watch = (!s.market_quiet_after.is_zero()).then(|| FrozenWatch::new(s.market_quiet_after));
        // Every market is new to a connection that starts: its trades since the newest stored
        // one are asked for once it is live.
        let markets_for_backfill = cfg.markets.clone();
        let backoff = match ctx.jitter_seed {
            Some(seed) => Backoff::seeded(s.backoff.clone(), seed),
            None => Backoff::new(s.backoff.clone()),
        };
        // Alerts about this connection still open (the actor panicked and was restarted, or
        // the last run stopped with them open) are this actor's to resolve, or to raise again:
        // the registry sends no duplicate of one raised in this run.
        let mut open_alerts = Vec::new();
        let mut adopted_book_alert = false;
        for kind in ctx.alerter.open_kinds(&cfg.conn) {
            match kind.as_str() {
                MAX_RECONNECTS => open_alerts.push(MAX_RECONNECTS),
                CREDENTIALS_REJECTED => open_alerts.push(CREDENTIALS_REJECTED),
                // Its connection ended with the old actor; a fresh one subscribes every market
                // afresh, as a reconnect does.
                MARKET_FROZEN => open_alerts.push(MARKET_FROZEN),
                BOOK_UNRECOVERABLE => adopted_book_alert = true,
                // `feed_stale` is the alert monitor's to judge.
                _ => {}
            }
        }
        if !open_alerts.is_empty() || adopted_book_alert {
            info!(alerts = ?ctx.alerter.open_kinds(&cfg.conn), "Starting with alerts open; they resolve once a connection is healthy.");
        }
        FeedActor {
            cfg,
            ctx,
            commands,
            session,
            backoff,
            out: Output::default(),
            alerted: false,
            open_alerts,
            adopted_book_alert,
            watch,
            checks: JoinSet::new(),
            missed: Missed { fresh: markets_for_backfill, ..Missed::default() },
        }
    }

    async fn run(mut self) -> FeedExit {
        let id = self.cfg.conn.clone();
        loop {
            if self.ctx.shutdown.is_cancelled() {
                return self.stopped();
            }
            let attempt = self.backoff.failures() + 1;
            // Liveness (systemd watchdog): the handshake ends within `connect_timeout`.
            self.ctx.metrics.beat.turn_within(self.cfg.settings.connect_timeout);
            self.ctx.metrics.set_state(FeedState::Connecting);
            info!(attempt, url = %self.cfg.settings.url, "Connecting.");
            self.publish_event(FeedEvent::Connecting { attempt }).await;
            let connected = tokio::select! {
                // Shutdown wins over a slow handshake.
                _ = self.ctx.shutdown.cancelled() => return self.stopped(),
                // TCP, TLS and the upgrade, within `connect_timeout`. Not cancel-safe: a
                // half-done connection is dropped, which only shutdown does.
                r = self.connect() => r,
            };
            match connected {
                Ok(ws) => {
                    FeedMetrics::inc(&self.ctx.metrics.connects);
                    info!("Connected.");
                    self.missed.live_at = None;
                    self.missed.last_trade_us = None;
                    self.missed.gap = None;
                    self.missed.connected_us = now_micros();
                    if self.missed.fresh_since_us.is_none() && !self.missed.fresh.is_empty() {
                        self.missed.fresh_since_us = Some(self.missed.connected_us);
                    }
                    self.ctx.metrics.set_state(FeedState::Subscribing);
                    self.publish_event(FeedEvent::Connected).await;
                    let ended = self.run_connection(ws).await;
                    // A burst that ends with the connection ends without a flush: ticks parsed
                    // from its frames go out now, before the disconnect, and commands meant for
                    // this connection are void.
                    self.out.send.clear();
                    self.publish_ticks().await;
                    self.session.on_disconnected();
                    self.end_checks(&ended);
                    FeedMetrics::inc(&self.ctx.metrics.disconnects);
                    if matches!(ended, Ended::Shutdown) {
                        self.publish_event(FeedEvent::Disconnected { reason: ended.to_string() }).await;
                        return self.stopped();
                    }
                    self.missed_since_disconnect();
                    warn!(reason = %ended, "Disconnected.");
                    self.publish_event(FeedEvent::Disconnected { reason: ended.to_string() }).await;
                }
                Err(e) => {
                    FeedMetrics::inc(&self.ctx.metrics.connect_failures);
                    // Whatever its class, the failure is retried after the backoff below.
                    if e.is_credentials() {
                        FeedMetrics::inc(&self.ctx.metrics.credentials_rejected);
                        error!(error = %e, "Credentials rejected.");
                        if self.backoff.failures() == 0 {
                            let message = format!("{id}: {e}");
                            self.alert(CREDENTIALS_REJECTED, &message).await;
                        }
                    } else {
                        warn!(error = %e, "Connection attempt failed.");
                    }
                    self.publish_event(FeedEvent::Disconnected { reason: e.to_string() }).await;
                }
            }
            // Every end of a connection that did not stay healthy counts as a failure.
            let failures = self.backoff.fail();
            self.ctx.metrics.consecutive_failures.store(u64::from(failures), Ordering::Relaxed);
            if failures >= self.cfg.settings.max_reconnects && !self.alerted {
                self.alerted = true;
                let policy = self.cfg.settings.on_max_reconnects;
                let message = format!(
                    "{id}: {failures} consecutive connection failures; {}",
                    match policy {
                        GiveUpPolicy::Retry => format!(
                            "retrying every {} (backoff.max, jittered) until a connection stays healthy",
                            humantime::format_duration(self.cfg.settings.backoff.max)
                        ),
                        GiveUpPolicy::StopFeed => "stopping this feed".to_owned(),
                        GiveUpPolicy::Exit => "exiting".to_owned(),
                    }
                );
                self.alert(MAX_RECONNECTS, &message).await;
                match policy {
                    // From this failure on, the delay is the cap, as the alert says.
                    GiveUpPolicy::Retry => self.backoff.hold_at_max(),
                    GiveUpPolicy::StopFeed | GiveUpPolicy::Exit => {
                        self.ctx.metrics.set_state(FeedState::GivenUp);
                        self.publish_event(FeedEvent::GivenUp { reason: message }).await;
                        return if policy == GiveUpPolicy::Exit {
                            FeedExit::ExitProcess
                        } else {
                            FeedExit::GaveUp
                        };
                    }
                }
            }
            let delay = self.backoff.delay();
            self.ctx.metrics.set_state(FeedState::BackingOff);
            info!(failures, delay_ms = delay.as_millis() as u64, "Backing off.");
            self.publish_event(FeedEvent::BackingOff { failures, delay_ms: delay.as_millis() as u64 }).await;
            let wake = Instant::now() + delay;
            self.ctx.metrics.beat.turn_by(wake);
            loop {
                tokio::select! {
                    // Shutdown: no further attempt.
                    _ = self.ctx.shutdown.cancelled() => return self.stopped(),
                    // The delay is over: connect again.
                    _ = sleep_until(wake) => break,
                    // Market changes while disconnected are kept for the next subscribe.
                    Some(cmd) = self.commands.recv() => self.on_command(cmd).await,
                }
            }
        }
    }

    /// Logs what the connection carried in its lifetime (the periodic summary stops before
    /// the feeds do, so this is the only complete count).
    fn stopped(&self) -> FeedExit {
        self.ctx.metrics.set_state(FeedState::Stopped);
        log_counts("Feed stopped.", FeedState::Stopped, &self.ctx.metrics.snapshot());
        FeedExit::Shutdown
    }

    async fn connect(&self) -> Result<Ws, ConnectError> {
        let s = &self.cfg.settings;
        let url = url::Url::parse(&s.url)
            .map_err(|e| ConnectError::Url { url: s.url.clone(), reason: e.to_string() })?;
        let host = url
            .host_str()
            .ok_or_else(|| ConnectError::Url { url: s.url.clone(), reason: "no host".into() })?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| ConnectError::Url { url: s.url.clone(), reason: "no port".into() })?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Url { url: s.url.clone(), reason: e.to_string() })?;
        if let Some(creds) = &self.cfg.credentials {
            // Signed anew on every connect: the timestamp is part of the signature.
            for (name, value) in creds.headers(now_micros() / 1000) {
                let value =
                    HeaderValue::from_str(&value).map_err(|e| ConnectError::Handshake(e.to_string()))?;
                request.headers_mut().insert(name, value);
            }
        }
        let limit = HARD_FRAME_LIMIT.max(s.max_frame_bytes);
        let config = WebSocketConfig::default().max_message_size(Some(limit)).max_frame_size(Some(limit));
        let handshake = async {
            let io = self.ctx.connector.open(host, port).await?;
            tokio_tungstenite::client_async_tls_with_config(request, io, Some(config), None)
                .await
                .map(|(ws, _response)| ws)
                .map_err(|e| match e {
                    tungstenite::Error::Http(resp) if resp.status().as_u16() == 401 => {
                        ConnectError::Unauthorized
                    }
                    tungstenite::Error::Http(resp) => ConnectError::Refused(resp.status().as_u16()),
                    tungstenite::Error::Io(e) => ConnectError::Io(e),
                    other => ConnectError::Handshake(other.to_string()),
                })
        };
        tokio::time::timeout(s.connect_timeout, handshake)
            .await
            .map_err(|_| ConnectError::Timeout(s.connect_timeout))?
    }

    async fn run_connection(&mut self, ws: Ws) -> Ended {
        let (mut sink, mut stream) = ws.split();
        let s = &self.cfg.settings;
        let (ping_interval, window, healthy_after) =
            (s.ping_interval, s.ping_interval + s.pong_timeout, self.backoff.healthy_after());

        let started = Instant::now();
        self.session.on_connected(started, now_micros(), &mut self.out);
        if let Err(e) = self.flush(&mut sink).await {
            return e;
        }
        let mut ping = tokio::time::interval_at(started + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_frame = started;
        let dead = sleep_until(started + window);
        tokio::pin!(dead);
        let healthy = sleep_until(started + healthy_after);
        tokio::pin!(healthy);
        let mut healthy_pending = true;
        let far = || Instant::now() + Duration::from_secs(86_400);
        let mut deadline = self.session.next_deadline().unwrap_or_else(far);
        let timer = sleep_until(deadline);
        tokio::pin!(timer);
        let mut scan = tokio::time::interval_at(started + SCAN_EVERY, SCAN_EVERY);
        scan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let watching = self.watch.is_some();

        loop {
            // Liveness (systemd watchdog): the ping timer turns the loop at least this often.
            self.ctx.metrics.beat.turn_within(ping_interval);
            tokio::select! {
                // Shutdown: say goodbye with 1000 and stop reading.
                _ = self.ctx.shutdown.cancelled() => {
                    let close = CloseFrame { code: CloseCode::Normal, reason: "tickd shutting down".into() };
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(close)))).await;
                    return Ended::Shutdown;
                }
                // Frames (cancel-safe): any frame at all proves the connection alive. Frames
                // already buffered are taken in the same turn (up to BURST), so the select and
                // the flush are paid once per burst rather than once per frame.
                frame = stream.next() => {
                    let now = Instant::now();
                    last_frame = now;
                    if let Err(ended) = self.on_message(frame, now) {
                        return ended;
                    }
                    for _ in 1..BURST {
                        match stream.next().now_or_never() {
                            Some(frame) => {
                                if let Err(ended) = self.on_message(frame, now) {
                                    return ended;
                                }
                            }
                            None => break,
                        }
                    }
                    if let Err(e) = self.flush(&mut sink).await {
                        return e;
                    }
                }
                // Our own ping, so that a quiet but healthy connection still shows life; and
                // backfill windows of a connection with no trade since it is live close here.
                _ = ping.tick() => {
                    if let Err(e) = sink.send(Message::Ping(Default::default())).await {
                        return Ended::Error(e.to_string());
                    }
                    self.hand_over_windows(false);
                }
                // Nothing heard for the whole window: the socket is half-open or the peer hung.
                _ = &mut dead => {
                    let silent = Instant::now() - last_frame;
                    if silent >= window {
                        FeedMetrics::inc(&self.ctx.metrics.heartbeat_timeouts);
                        return Ended::Dead(silent);
                    }
                    dead.as_mut().reset(last_frame + window);
                }
                // Protocol timers: ack timeouts and retries.
                _ = &mut timer => {
                    self.session.on_timer(Instant::now(), &mut self.out);
                    if let Err(e) = self.flush(&mut sink).await {
                        return e;
                    }
                }
                // Stayed up long enough: the next failure starts the backoff from scratch.
                _ = &mut healthy, if healthy_pending => {
                    if self.session.is_live() {
                        healthy_pending = false;
                        self.backoff.reset();
                        self.alerted = false;
                        self.ctx.metrics.consecutive_failures.store(0, Ordering::Relaxed);
                        debug!("Connection healthy; backoff reset.");
                        self.resolve_alerts(healthy_after);
                    } else {
                        healthy.as_mut().reset(Instant::now() + healthy_after);
                    }
                }
                // Handle commands: market changes and queries.
                Some(cmd) = self.commands.recv() => {
                    self.on_command(cmd).await;
                    if let Err(e) = self.flush(&mut sink).await {
                        return e;
                    }
                }
                // Quiet markets: queue those due for a check, start what the budget allows.
                _ = scan.tick(), if watching => {
                    self.scan_markets(Instant::now());
                    if let Err(e) = self.flush(&mut sink).await {
                        return e;
                    }
                }
                // A check's answer (cancel-safe: JoinSet::join_next).
                Some(joined) = self.checks.join_next(), if !self.checks.is_empty() => {
                    self.on_check(joined, Instant::now());
                    if let Err(e) = self.flush(&mut sink).await {
                        return e;
                    }
                }
            }
            let next = self.session.next_deadline().unwrap_or_else(far);
            if next != deadline {
                deadline = next;
                timer.as_mut().reset(deadline);
            }
        }
    }

    /// Handles one read result; `Err` ends the connection.
    fn on_message(
        &mut self,
        frame: Option<Result<Message, tungstenite::Error>>,
        now: Instant,
    ) -> Result<(), Ended> {
        let recv_ts = recv_micros();
        let m = &self.ctx.metrics;
        FeedMetrics::inc(&m.frames);
        m.last_frame_us.store(recv_ts as u64, Ordering::Relaxed);
        match frame {
            Some(Ok(Message::Text(text))) => {
                m.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
                let limit = self.cfg.settings.max_frame_bytes;
                if text.len() > limit {
                    FeedMetrics::inc(&m.oversized_frames);
                    warn!(bytes = text.len(), limit, "Oversized frame dropped.");
                    return Ok(());
                }
                // A frame that cannot be used is counted, logged and kept by the session; the
                // connection goes on.
                let _ = self.session.on_frame(text.as_bytes(), recv_ts, now, &mut self.out);
                Ok(())
            }
            Some(Ok(Message::Binary(data))) => {
                m.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                FeedMetrics::inc(&m.binary_frames);
                warn!(bytes = data.len(), "Binary frame dropped (the protocol is text).");
                Ok(())
            }
            // The library queues the Pong reply itself; it goes out with the next write or read.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
            Some(Ok(Message::Close(frame))) => {
                Err(Ended::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string()))))
            }
            Some(Err(e)) => Err(Ended::Error(e.to_string())),
            None => Err(Ended::Eof),
        }
    }

    async fn on_command(&mut self, cmd: FeedCommand) {
        match cmd {
            FeedCommand::SetMarkets(markets) => {
                info!(markets = markets.len(), "Market list changed.");
                if self.ctx.backfill.is_some() {
                    let m = &mut self.missed;
                    let wanted: HashSet<&String> = markets.iter().collect();
                    m.fresh.retain(|x| wanted.contains(x));
                    m.started.retain(|x| wanted.contains(x));
                    let known: HashSet<String> = m.fresh.iter().chain(&m.started).cloned().collect();
                    let added: Vec<String> =
                        markets.iter().filter(|x| !known.contains(*x)).cloned().collect();
                    if !added.is_empty() {
                        m.fresh_since_us.get_or_insert_with(now_micros);
                        m.fresh.extend(added);
                        m.fresh_due = Some(Instant::now() + self.cfg.settings.ack_timeout);
                    }
                }
                self.ctx.metrics.markets.store(markets.len() as u64, Ordering::Relaxed);
                self.cfg.markets = markets;
                self.session.set_markets(&self.cfg.markets, Instant::now(), &mut self.out);
            }
            FeedCommand::Books(reply) => {
                let _ = reply.send(self.session.books());
            }
            FeedCommand::SetChecks(checks) => self.ctx.checks = checks,
            FeedCommand::RefreshBooks => {
                let asked = self.session.refresh_books(&mut self.out);
                if asked > 0 {
                    info!(
                        books = asked,
                        "Asked the exchange for fresh snapshots for a consumer that fell behind."
                    );
                }
            }
        }
    }

    /// Sends the session's commands and publishes its ticks.
    async fn flush<S>(&mut self, sink: &mut S) -> Result<(), Ended>
    where
        S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
    {
        for text in self.out.send.drain(..) {
            debug!(command = %text, "Sending.");
            if let Err(e) = sink.send(Message::text(text)).await {
                return Err(Ended::Error(e.to_string()));
            }
        }
        self.publish_ticks().await;
        Ok(())
    }

    /// Publishes the session's ticks, in order, then raises or resolves its alerts.
    async fn publish_ticks(&mut self) {
        let mut ticks = std::mem::take(&mut self.out.ticks);
        if self.ctx.backfill.is_some() {
            self.watch_for_backfill(&ticks);
        }
        for tick in ticks.drain(..) {
            if let TickKind::Feed(event) = &tick.kind {
                debug!(?event, "Feed event.");
            }
            self.ctx.bus.publish(Arc::new(tick)).await;
        }
        // The emptied vector goes back, keeping its allocation.
        self.out.ticks = ticks;
        for action in std::mem::take(&mut self.out.alerts) {
            match action {
                AlertAction::Raise { kind, message } => {
                    let (conn, bus, metrics) = (&self.cfg.conn, &self.ctx.bus, &self.ctx.metrics);
                    self.ctx.alerter.raise(conn, bus, metrics, kind, &message).await;
                }
                AlertAction::Resolve { kind, message } => {
                    self.ctx.alerter.resolve(&self.cfg.conn, kind, &message)
                }
            }
        }
    }

    /// Looks for quiet markets (while the connection is live) and starts the checks due.
    fn scan_markets(&mut self, now: Instant) {
        let (Some(watch), Some(_)) = (self.watch.as_mut(), &self.ctx.checks) else { return };
        if !self.session.is_live() {
            return;
        }
        let session = &self.session;
        let markets =
            session.market_names().map(|m| (m.clone(), seen(session.activity(m)))).collect::<Vec<_>>();
        let verdicts = watch.scan(now, now_micros(), markets);
        for verdict in verdicts {
            self.on_verdict(verdict, now);
        }
        self.start_checks(now);
    }

    /// Starts checks of the markets due, as many as the watch allows in flight.
    fn start_checks(&mut self, now: Instant) {
        let (Some(watch), Some(rest)) = (self.watch.as_mut(), &self.ctx.checks) else { return };
        let wanted = Wanted {
            book: self.session.has_channel(Channel::OrderbookDelta),
            trades: self.session.has_channel(Channel::Trade),
        };
        if !wanted.book && !wanted.trades {
            return;
        }
        while let Some(market) = watch.next_check(now) {
            debug!(%market, "Checking a quiet market against the REST API.");
            self.checks.spawn(frozen::fetch(rest.clone(), market, wanted).in_current_span());
        }
    }

    /// A check answered: compares REST's answer with what tickd has now.
    fn on_check(&mut self, joined: Result<Fetched, JoinError>, now: Instant) {
        let Some(watch) = self.watch.as_mut() else { return };
        let fetched = match joined {
            Ok(fetched) => fetched,
            Err(e) => {
                error!(error = %e, "A check of a quiet market ended without an answer.");
                watch.on_lost();
                self.start_checks(now);
                return;
            }
        };
        let market = &fetched.market;
        match &fetched.result {
            Ok(_) => FeedMetrics::inc(&self.ctx.metrics.market_checks),
            Err(e) => {
                FeedMetrics::inc(&self.ctx.metrics.market_check_failures);
                debug!(%market, error = %e, "Checking a quiet market failed; it is checked again later.");
            }
        }
        let activity = self.session.activity(market);
        let local = Local {
            book: self.session.book(market),
            recent_trades: activity
                .map(|a| a.recent_trades.iter().map(String::as_str).collect())
                .unwrap_or_default(),
            last_trade_ms: activity.and_then(|a| a.last_trade_ms),
            since_ms: 0,
        };
        let result = fetched.result.as_ref().map_err(|_| ());
        let verdict = watch.on_answer(now, now_micros(), market, result, seen(activity), local);
        if let Some(verdict) = verdict {
            self.on_verdict(verdict, now);
        }
        self.start_checks(now);
    }

    /// Acts on what the watch found.
    fn on_verdict(&mut self, verdict: Verdict, now: Instant) {
        match verdict {
            Verdict::Frozen(found) => self.on_frozen(found, now),
            Verdict::StillFrozen { market, trades } => {
                warn!(%market, "Frozen market still behind the exchange after its resync; asking again.");
                let reason = "market frozen: still behind the exchange after its resync";
                self.session.resync_market(&market, trades, reason, now, &mut self.out);
            }
            Verdict::Recovered { market, why } => info!(%market, why, "Frozen market recovered."),
            Verdict::AllClear => {
                let quiet_after = self.cfg.settings.market_quiet_after.as_secs_f64();
                let message = format!(
                    "{}: every market found frozen updates again (for {quiet_after}s)",
                    self.cfg.conn
                );
                self.out.alerts.push(AlertAction::Resolve { kind: MARKET_FROZEN, message });
            }
        }
        let frozen = self.watch.as_ref().map_or(0, |w| w.frozen().len());
        self.ctx.metrics.markets_frozen_now.store(frozen as u64, Ordering::Relaxed);
    }

    /// A market was found frozen: it is asked for afresh on this connection (its book with
    /// `get_snapshot`; also removed and added again on `ticker` and `trade` when trades were
    /// missed), recorded as a `market_frozen` event naming it, alerted, and its trades of the
    /// window handed to the backfill.
    fn on_frozen(&mut self, found: FrozenMarket, now: Instant) {
        let m = &self.ctx.metrics;
        FeedMetrics::inc(&m.markets_frozen);
        let d = &found.difference;
        let quiet_s = found.quiet.as_secs_f64();
        warn!(
            market = %found.market,
            quiet_ms = found.quiet.as_millis() as u64,
            book_differs = d.book,
            missed_trades = d.missed_trades,
            "Market frozen: no update while the REST API shows it changing; asking for it afresh."
        );
        let now_us = now_micros();
        let wall =
            |at: Option<Instant>| at.map(|at| now_us - now.saturating_duration_since(at).as_micros() as i64);
        let activity = self.session.activity(&found.market).cloned().unwrap_or_default();
        let event = FeedEvent::MarketFrozen {
            quiet_ms: found.quiet.as_millis() as u64,
            book_differs: d.book,
            missed_trades: d.missed_trades,
            checks: found.checks,
            last_ticker_us: wall(activity.ticker),
            last_trade_us: wall(activity.trade),
            last_book_us: wall(activity.last_book()),
            backfill_from_us: found.backfill.from_us,
            backfill_to_us: found.backfill.to_us,
        };
        self.out.ticks.push(Tick {
            feed: self.cfg.conn.feed.clone(),
            conn: self.cfg.conn.index,
            market: found.market.clone(),
            exch_ts: None,
            recv_ts: recv_micros(),
            kind: TickKind::Feed(event),
        });
        let what = match (d.book, d.missed_trades) {
            (true, 0) => "a different book".to_owned(),
            (false, n) => format!("{n} trades tickd never received"),
            (true, n) => format!("a different book and {n} trades tickd never received"),
        };
        let reason = format!("market frozen: no update for {quiet_s:.1}s while REST showed {what}");
        self.session.resync_market(&found.market, d.missed_trades > 0, &reason, now, &mut self.out);
        self.backfill_frozen(&found.backfill);
        let message = format!(
            "{}: {} had no update for {quiet_s:.1}s while the REST API showed {what}; asked for it afresh",
            self.cfg.conn, found.market
        );
        self.out.alerts.push(AlertAction::Raise { kind: MARKET_FROZEN, message });
    }

    /// Hands the trades a frozen market may have missed to the feed's backfill. Without one
    /// (`backfill = false`, or no `trade` channel) the window is kept in the `market_frozen`
    /// row of `feed_events` (`backfill_from_us`, `backfill_to_us`) for an operator.
    fn backfill_frozen(&self, window: &BackfillWindow) {
        match &self.ctx.backfill {
            Some(backfill) => {
                backfill.backfill_market(&self.cfg.conn, &window.market, window.from_us, window.to_us);
            }
            None => info!(
                market = %window.market,
                from_us = window.from_us,
                to_us = window.to_us,
                "Trades of a frozen market may be missing in this window; this feed does not backfill."
            ),
        }
    }

    /// The connection ended: checks in flight are dropped and the watch starts over on the
    /// next one, whose subscriptions bring every market afresh, which ends an open
    /// `market_frozen` incident (the registry ignores the recovery when none is open).
    fn end_checks(&mut self, ended: &Ended) {
        self.checks.abort_all();
        let Some(watch) = self.watch.as_mut() else { return };
        let frozen = watch.reset();
        self.ctx.metrics.markets_frozen_now.store(0, Ordering::Relaxed);
        let message = match frozen.first() {
            Some(market) => {
                format!(
                    "{}: the connection ended ({ended}); the next one subscribes {market} afresh",
                    self.cfg.conn
                )
            }
            None => format!("{}: the connection ended ({ended}); no market of it was frozen", self.cfg.conn),
        };
        self.ctx.alerter.resolve(&self.cfg.conn, MARKET_FROZEN, &message);
    }

    /// Notes what the backfill needs from ticks about to be published: trades received live,
    /// when the connection went live, gaps on the `trade` channel and where they end.
    fn watch_for_backfill(&mut self, ticks: &[Tick]) {
        let Some(backfill) = &self.ctx.backfill else { return };
        let mut trade_after_live = false;
        let mut gaps = Vec::new();
        let m = &mut self.missed;
        for tick in ticks {
            match &tick.kind {
                TickKind::Trade(t) => {
                    backfill.saw_live(&t.trade_id);
                    let at_us = tick.exch_ts.map_or(tick.recv_ts, |ms| ms.saturating_mul(1000));
                    if let Some((sid, expected, got, from_us)) = m.gap.take() {
                        gaps.push((Cause::SeqGap { sid, expected, got }, from_us, at_us));
                    }
                    m.last_trade_us = Some(at_us);
                    trade_after_live |= m.live_at.is_some();
                }
                TickKind::Feed(FeedEvent::Live) => m.live_at = Some((tick.recv_ts, Instant::now())),
                TickKind::Feed(FeedEvent::Gap { sid, expected, got })
                    if self.session.channel_of_sid(*sid) == Some(Channel::Trade) =>
                {
                    let from_us = m.last_trade_us.unwrap_or(m.connected_us);
                    m.gap = Some((*sid, *expected, *got, from_us));
                }
                _ => {}
            }
        }
        for (cause, from_us, to_us) in gaps {
            backfill.submit(Window {
                conn: self.cfg.conn.clone(),
                cause,
                markets: self.cfg.markets.clone(),
                from_us: Some(from_us),
                to_us,
            });
        }
        self.hand_over_windows(trade_after_live);
    }

    /// The connection is gone: trades are missed from its last frame (or from the trade before
    /// a gap still open) until it is back.
    fn missed_since_disconnect(&mut self) {
        if self.ctx.backfill.is_none() {
            return;
        }
        let m = &mut self.missed;
        let last_frame = self.ctx.metrics.last_frame_us.load(Ordering::Relaxed) as i64;
        let from = if last_frame > 0 { last_frame } else { m.connected_us };
        let from = m.gap.take().map_or(from, |(_, _, _, gap_from)| gap_from.min(from));
        // After failed attempts the window is still the first one.
        m.open_from_us = Some(m.open_from_us.map_or(from, |open| open.min(from)));
        m.live_at = None;
    }

    /// Hands the windows that have ended to the backfill: once the connection is live again
    /// and a trade came after that (`trade_after_live`) or none came for
    /// [`QUIET_AFTER_LIVE`].
    fn hand_over_windows(&mut self, trade_after_live: bool) {
        let Some(backfill) = &self.ctx.backfill else { return };
        let m = &mut self.missed;
        let Some((live_us, live_at)) = m.live_at else { return };
        let now = Instant::now();
        if !trade_after_live && now < live_at + QUIET_AFTER_LIVE {
            return;
        }
        let to_us = now_micros().max(live_us);
        let fresh_due = m.fresh_due.is_none_or(|due| now >= due);
        if let Some(from_us) = m.open_from_us.take() {
            let fresh: HashSet<&String> = m.fresh.iter().collect();
            let markets: Vec<String> =
                self.cfg.markets.iter().filter(|x| !fresh.contains(x)).cloned().collect();
            if !markets.is_empty() {
                backfill.submit(Window {
                    conn: self.cfg.conn.clone(),
                    cause: Cause::Disconnect,
                    markets,
                    from_us: Some(from_us),
                    to_us,
                });
            }
        }
        if fresh_due && !m.fresh.is_empty() {
            let markets = std::mem::take(&mut m.fresh);
            m.started.extend(markets.iter().cloned());
            m.fresh_due = None;
            let since_us = m.fresh_since_us.take().unwrap_or(m.connected_us);
            backfill.submit(Window {
                conn: self.cfg.conn.clone(),
                cause: Cause::Start { since_us },
                markets,
                from_us: None,
                to_us,
            });
        }
    }

    async fn publish_event(&self, event: FeedEvent) {
        let tick = Tick {
            feed: self.cfg.conn.feed.clone(),
            conn: self.cfg.conn.index,
            market: Arc::from(""),
            exch_ts: None,
            recv_ts: recv_micros(),
            kind: TickKind::Feed(event),
        };
        self.ctx.bus.publish(Arc::new(tick)).await;
    }

    async fn alert(&mut self, kind: &'static str, message: &str) {
        self.ctx.alerter.raise(&self.cfg.conn, &self.ctx.bus, &self.ctx.metrics, kind, message).await;
        if !self.open_alerts.contains(&kind) {
            self.open_alerts.push(kind);
        }
    }

    /// The failure streak is over: one recovery notice per alert it raised (or took on at
    /// its start). An adopted `book_unrecoverable` resolves too when every book is sound;
    /// otherwise the session, which has given up on a book since, resolves it in its turn.
    fn resolve_alerts(&mut self, healthy_after: Duration) {
        let message =
            format!("{}: connected and healthy for {}s again", self.cfg.conn, healthy_after.as_secs_f64());
        for kind in self.open_alerts.drain(..) {
            self.ctx.alerter.resolve(&self.cfg.conn, kind, &message);
        }
        if std::mem::take(&mut self.adopted_book_alert) && self.session.books_given_up() == 0 {
            let message = format!(
                "{}: every book is sound again (connected and healthy for {}s)",
                self.cfg.conn,
                healthy_after.as_secs_f64()
            );
            self.ctx.alerter.resolve(&self.cfg.conn, BOOK_UNRECOVERABLE, &message);
        }
    }
}

/// What the watch needs of a market's activity.
fn seen(activity: Option<&Activity>) -> Seen {
    activity.map_or_else(Seen::default, |a| Seen {
        last_update: a.last_update(),
        last_streamed: a.last_streamed(),
        last_snapshot: a.snapshot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_say_whether_waiting_helps_and_whether_credentials_are_at_fault() {
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        );
        // (error, retriable, credentials)
        let table = [
            (ConnectError::Url { url: "ws://".into(), reason: "no host".into() }, false, false),
            (ConnectError::Io(std::io::ErrorKind::ConnectionRefused.into()), true, false),
            (ConnectError::Io(std::io::ErrorKind::ConnectionReset.into()), true, false),
            (ConnectError::Io(tls), false, false),
            (ConnectError::Timeout(Duration::from_secs(10)), true, false),
            (ConnectError::Unauthorized, false, true),
            (ConnectError::Refused(403), false, false),
            (ConnectError::Refused(404), false, false),
            (ConnectError::Refused(429), true, false),
            (ConnectError::Refused(502), true, false),
            (ConnectError::Refused(503), true, false),
            (ConnectError::Handshake("Handshake not finished".into()), true, false),
        ];
        for (error, retriable, credentials) in table {
            assert_eq!((error.is_retriable(), error.is_credentials()), (retriable, credentials), "{error}");
        }
    }
}
