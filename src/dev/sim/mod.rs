//! A Kalshi exchange simulator with fault switches (`tickd sim`): the `trade-api/ws/v2`
//! WebSocket and the `trade-api/v2` REST market data on one port.
//!
//! The exchange trades on its own clock whether or not anyone is connected: while a client is
//! disconnected, stalled or refused its handshake, trades go on executing, and
//! `GET /markets/trades` serves them (the same ids, prices and times as the WebSocket would
//! have sent), so a client can take back what it missed. [`Simulator::trades_executed`] lists
//! them all.
//!
//! It is an independent implementation of the protocol digests (`kalshi-ws-protocol.md` §7,
//! `kalshi-rest.md` §12): it shares no code with `crate::kalshi`, so tests that run the client
//! against it cross-check both.
//!
//! # Layout
//!
//! ```text
//! generator task ──(1 ms tick)──► Hub { Mutex<Exchange>, broadcast<Batch> }
//!                                         │ one receiver per connection
//! accept loop / connect_in_memory ──► conn task (HTTP/1.1) ─┬─ upgrade ─► Session (commands → frames) ──► socket
//!                                         ▲                  └─ REST ────► answers from the same Exchange
//! Simulator handle ── fault switches ─────┘ (per-connection control channel, stall watch, REST faults)
//! schedule task (--new-market-every) ──► Hub: new events, markets closed, determined, settled
//! ```
//!
//! - [`exchange`]: markets, books and the deterministic event generator (pure, no I/O).
//! - `hub`: the exchange behind a mutex plus the update broadcast.
//! - `session`: one connection's subscriptions; command validation (order documented there).
//! - `render`: server frames, hand-written JSON.
//! - `conn`: HTTP (hyper), the upgrade (404 / 503 / 401), heartbeats, the connection loop.
//! - `rest`: the REST market-data endpoints and their fault switches.
//! - `auth`: RSA-PSS verification of handshakes and REST requests.
//! - [`cli`]: `tickd sim` arguments and the stdin fault console.
//!
//! Every queue is bounded: the update broadcast (`hub::BROADCAST_CAPACITY`; a connection that
//! falls behind gets error 25 on its data sids) and each connection's control channel
//! (`conn::CONTROL_CAPACITY`; a full one loses the switch, counted in [`SimStats`]). The logs
//! behind [`Simulator::trades_sent`], [`Simulator::commands_received`] and
//! [`Simulator::rest_requests`] keep the most recent entries only, and so does the send-time log
//! of [`Simulator::record_send_times`] (off unless a benchmark turns it on); the exchange keeps
//! at most [`exchange::TRADES_KEPT`] trades for the REST API.

pub mod cli;
pub mod exchange;

mod auth;
mod conn;
mod hub;
mod render;
mod rest;
mod session;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub use cli::{SimArgs, console_command, console_lines, run_cli};
pub use rest::RestFaults;

use crate::tick::BookSnapshot;
use conn::Control;
use exchange::Exchange;
use hub::Hub;
use session::FrameOpts;

/// Trade ids kept for [`Simulator::trades_sent`]; older ones are forgotten (a long-running
/// `tickd sim` would otherwise grow without bound).
pub const TRADE_LOG_CAP: usize = 262_144;
/// Commands kept for [`Simulator::commands_received`]; older ones are forgotten.
pub const COMMAND_LOG_CAP: usize = 100_000;
/// REST requests kept for [`Simulator::rest_requests`]; older ones are forgotten.
pub const REST_LOG_CAP: usize = 100_000;
/// Buffer of each in-memory stream, per direction.
const DUPLEX_BUFFER: usize = 256 * 1024;
/// Generator tick.
const GENERATOR_TICK: Duration = Duration::from_millis(1);
/// Longest stretch the generator catches up on after a delay, so a stalled runtime does not
/// produce one enormous burst.
const MAX_CATCH_UP: Duration = Duration::from_millis(100);

/// Simulator settings. `Default` suits tests: three markets, 100 events/s, 10 s heartbeat.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of the single RNG: the same seed gives the same sequence of exchange events.
    pub seed: u64,
    /// Markets that exist from the start (see [`market_names`]).
    pub markets: Vec<String>,
    /// Create unknown markets named in `subscribe` / `add_markets` (seeded by their name)
    /// instead of answering error 11.
    pub auto_create_markets: bool,
    /// Exchange events per second across all markets (1 ..= 100,000 tested).
    pub rate: u32,
    /// Cadence of the server's `heartbeat` pings.
    pub heartbeat: Duration,
    /// Required handshake signature; `None` accepts unsigned handshakes (private channels such
    /// as `fill` then answer error 9).
    pub auth: Option<SimAuth>,
    /// Trade frames carry `seq` (newest spec) or not (older servers).
    pub trade_seq: bool,
    /// Data frames carry a top-level `sending_ts_ms`.
    pub sending_ts: bool,
    /// Data frames carry a top-level field no client knows (the protocol grows fields without
    /// notice; clients must ignore them).
    pub extra_fields: bool,
    /// About one lifecycle event per this many exchange events; 0 for none.
    pub lifecycle_every: u32,
    /// Close (code 1008) a connection that left this many pings unanswered; `None` never does.
    pub missed_pongs_close: Option<u32>,
    /// The market schedule: every period, each series of the first markets gets a new event
    /// of [`exchange::MARKETS_PER_EVENT`] markets, and scheduled markets (the first ones
    /// included) close after [`exchange::OPEN_ROUNDS`] periods, are determined a period later
    /// and settle a period after that, with their lifecycle messages. `None`: markets open at
    /// start stay open.
    pub new_market_every: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            markets: market_names(3),
            auto_create_markets: true,
            rate: 100,
            heartbeat: Duration::from_secs(10),
            auth: None,
            trade_seq: true,
            sending_ts: true,
            extra_fields: false,
            lifecycle_every: 200,
            missed_pongs_close: None,
            new_market_every: None,
        }
    }
}

/// The registered API key the handshake must be signed with.
#[derive(Clone, Debug)]
pub struct SimAuth {
    /// Expected `KALSHI-ACCESS-KEY`.
    pub key_id: String,
    /// Key that verifies `KALSHI-ACCESS-SIGNATURE`.
    pub public_key: rsa::RsaPublicKey,
    /// Largest accepted difference between `KALSHI-ACCESS-TIMESTAMP` and the clock.
    pub max_skew: Duration,
}

/// A schedule period in ms.
fn period_ms(period: Duration) -> i64 {
    i64::try_from(period.as_millis()).unwrap_or(i64::MAX)
}

/// `n` market tickers: `SIM-MKT-001`, `SIM-MKT-002`...
pub fn market_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("SIM-MKT-{i:03}")).collect()
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Connections currently open.
    pub connections_open: u64,
    /// Connections accepted (upgraded) since start.
    pub connections_total: u64,
    /// Upgrades answered 503 by `refuse_handshakes`.
    pub handshakes_refused: u64,
    /// Upgrades answered 401.
    pub handshakes_unauthorized: u64,
    /// Upgrades answered 404 (wrong path).
    pub handshakes_not_found: u64,
    /// Text frames written to clients.
    pub frames_sent: u64,
    /// Heartbeat pings sent.
    pub pings_sent: u64,
    /// Trade frames written to clients.
    pub trades_sent: u64,
    /// Client commands (text frames) received.
    pub commands_received: u64,
    /// Times a connection fell behind the broadcast (each answered with error 25).
    pub lagged: u64,
    /// Exchange events generated.
    pub events_generated: u64,
    /// Fault switches not delivered because a connection's control queue was full.
    pub faults_dropped: u64,
    /// REST requests received.
    pub rest_requests: u64,
    /// REST requests answered 429 by the throttle fault.
    pub rest_throttled: u64,
    /// REST requests answered 5xx by the failure fault.
    pub rest_failed: u64,
    /// Signed REST requests whose signature did not verify (401).
    pub rest_unauthorized: u64,
    /// Signed REST requests whose signature verified.
    pub rest_signed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    handshakes_refused: AtomicU64,
    handshakes_unauthorized: AtomicU64,
    handshakes_not_found: AtomicU64,
    frames_sent: AtomicU64,
    pings_sent: AtomicU64,
    trades_sent: AtomicU64,
    commands_received: AtomicU64,
    lagged: AtomicU64,
    events_generated: AtomicU64,
    faults_dropped: AtomicU64,
    rest_requests: AtomicU64,
    rest_throttled: AtomicU64,
    rest_failed: AtomicU64,
    rest_unauthorized: AtomicU64,
    rest_signed: AtomicU64,
}

/// State shared by the handle, the generator, accept loops and connections.
#[derive(Debug)]
struct Shared {
    /// The exchange and its update broadcast.
    hub: Hub,
    /// Handshake verification, if required.
    auth: Option<SimAuth>,
    /// Ping cadence.
    heartbeat: Duration,
    /// Unanswered pings after which a connection is closed.
    missed_pongs_close: Option<u32>,
    /// Frame shape switches (trade seq, sending_ts_ms).
    frame_opts: FrameOpts,
    /// Cancelled by `shutdown` (or when the last handle goes).
    shutdown: CancellationToken,
    /// The half-open switch every connection watches.
    stall: watch::Sender<bool>,
    /// Upgrades still to refuse with 503.
    refuse: AtomicU32,
    /// Every open connection, by id.
    conns: Mutex<HashMap<u64, ConnEntry>>,
    /// Next connection id (from 1).
    next_conn: AtomicU64,
    /// Counters behind [`SimStats`].
    stats: Counters,
    /// Trade ids written, newest last, at most `TRADE_LOG_CAP`.
    trades: Mutex<VecDeque<String>>,
    /// Commands received, at most `COMMAND_LOG_CAP`.
    commands: Mutex<VecDeque<(u64, serde_json::Value)>>,
    /// Whether `send_times` is kept (`Simulator::record_send_times`).
    record_send_times: AtomicBool,
    /// Trade id and the instant just before the write that carried it, at most `TRADE_LOG_CAP`.
    send_times: Mutex<VecDeque<(String, std::time::Instant)>>,
    /// Events per second, read by the generator.
    rate: AtomicU64,
    /// Guards against spawning the generator twice.
    generator_started: AtomicBool,
    /// The REST fault switches.
    rest_faults: Mutex<RestFaults>,
    /// REST requests received (path and query), at most `REST_LOG_CAP`.
    rest_log: Mutex<VecDeque<String>>,
}

/// What the handle keeps of an open connection.
#[derive(Debug)]
struct ConnEntry {
    /// Its fault switches.
    ctl: mpsc::Sender<Control>,
    /// Every update numbered below this has been written to its socket (or had nothing for
    /// it); the connection updates it each time it has written what it took.
    handled: Arc<AtomicU64>,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // These locks guard plain collections that stay valid even if a holder panicked.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn conns_lock(&self) -> MutexGuard<'_, HashMap<u64, ConnEntry>> {
        relock(&self.conns)
    }
    fn trades_lock(&self) -> MutexGuard<'_, VecDeque<String>> {
        relock(&self.trades)
    }
    fn commands_lock(&self) -> MutexGuard<'_, VecDeque<(u64, serde_json::Value)>> {
        relock(&self.commands)
    }
    fn send_times_lock(&self) -> MutexGuard<'_, VecDeque<(String, std::time::Instant)>> {
        relock(&self.send_times)
    }
    fn rest_faults_lock(&self) -> MutexGuard<'_, RestFaults> {
        relock(&self.rest_faults)
    }
    fn rest_log_lock(&self) -> MutexGuard<'_, VecDeque<String>> {
        relock(&self.rest_log)
    }

    /// Sends a switch to every open connection without waiting.
    fn broadcast(&self, ctl: Control) {
        for conn in self.conns_lock().values() {
            if conn.ctl.try_send(ctl.clone()).is_err() {
                self.stats.faults_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Last handle gone: the exchange shuts down.
#[derive(Debug)]
struct Owner {
    /// Everything the tasks share.
    shared: Arc<Shared>,
    /// The runtime `start` ran on; later spawns go there even from outside it.
    runtime: tokio::runtime::Handle,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// A cheap handle to a running simulated exchange; it lives while any clone does.
#[derive(Clone, Debug)]
pub struct Simulator {
    owner: Arc<Owner>,
}

impl Simulator {
    /// Creates the exchange and spawns its generator on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (a start-up invariant: every caller is async code).
    pub fn start(cfg: SimConfig) -> Simulator {
        let runtime = tokio::runtime::Handle::current();
        let mut ex = Exchange::new(cfg.seed, &cfg.markets, cfg.lifecycle_every)
            .salt_trade_ids(rand::random())
            .started_at(session::now_ms());
        if let Some(period) = cfg.new_market_every {
            ex.schedule_existing(session::now_ms(), period_ms(period));
        }
        let (stall, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            hub: Hub::new(ex, cfg.auto_create_markets),
            auth: cfg.auth,
            heartbeat: cfg.heartbeat,
            missed_pongs_close: cfg.missed_pongs_close,
            frame_opts: FrameOpts {
                trade_seq: cfg.trade_seq,
                sending_ts: cfg.sending_ts,
                extra_fields: cfg.extra_fields,
            },
            shutdown: CancellationToken::new(),
            stall,
            refuse: AtomicU32::new(0),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            stats: Counters::default(),
            trades: Mutex::new(VecDeque::new()),
            commands: Mutex::new(VecDeque::new()),
            record_send_times: AtomicBool::new(false),
            send_times: Mutex::new(VecDeque::new()),
            rate: AtomicU64::new(u64::from(cfg.rate.max(1))),
            generator_started: AtomicBool::new(false),
            rest_faults: Mutex::new(RestFaults::default()),
            rest_log: Mutex::new(VecDeque::new()),
        });
        let sim = Simulator { owner: Arc::new(Owner { shared, runtime }) };
        sim.spawn_generator();
        if let Some(period) = cfg.new_market_every {
            sim.spawn_schedule(period);
        }
        sim
    }

    /// Runs the market schedule every `period` (first round one period after start), on
    /// tokio's clock, so paused-time tests drive it. Rounds due while paused are skipped.
    fn spawn_schedule(&self, period: Duration) {
        let shared = self.shared().clone();
        let period = period.max(Duration::from_millis(1));
        self.owner.runtime.spawn(async move {
            let mut rounds = tokio::time::interval_at(Instant::now() + period, period);
            rounds.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    // The simulator is shut down.
                    _ = shared.shutdown.cancelled() => break,
                    // A round is due.
                    _ = rounds.tick() => {
                        shared.hub.schedule_round(session::now_ms(), period_ms(period));
                    }
                }
            }
        });
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.owner.shared
    }

    fn spawn_generator(&self) {
        let shared = self.shared().clone();
        if shared.generator_started.swap(true, Ordering::SeqCst) {
            return;
        }
        self.owner.runtime.spawn(async move {
            let mut tick = tokio::time::interval(GENERATOR_TICK);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut last = Instant::now();
            // Events owed, in units of 1e-9 event (elapsed ns × events/s), carried between ticks.
            let mut owed: u128 = 0;
            loop {
                tokio::select! {
                    // The simulator is shut down.
                    _ = shared.shutdown.cancelled() => break,
                    // Generate the events owed since the last tick, at the current rate.
                    _ = tick.tick() => {
                        let now = Instant::now();
                        let elapsed = now.duration_since(last).min(MAX_CATCH_UP);
                        last = now;
                        owed += elapsed.as_nanos() * u128::from(shared.rate.load(Ordering::Relaxed));
                        let due = (owed / 1_000_000_000) as u64;
                        owed %= 1_000_000_000;
                        if due > 0 {
                            let ran = shared.hub.generate(due, session::now_ms());
                            shared.stats.events_generated.fetch_add(ran, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }

    /// Listens on `addr` (port 0 picks one) and serves every connection; returns the bound
    /// address. The accept loop stops at [`Simulator::shutdown`].
    pub async fn bind(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let shared = self.shared().clone();
        self.owner.runtime.spawn(async move {
            loop {
                tokio::select! {
                    // The simulator is shut down: stop accepting (served connections see the
                    // same token).
                    _ = shared.shutdown.cancelled() => break,
                    // A new connection, served on its own task (cancel-safe: accept).
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            // Small frames matter more than packet count here.
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(conn::serve(shared.clone(), stream));
                        }
                        Err(e) => {
                            // Usually EMFILE; back off briefly rather than spin.
                            tracing::warn!(error = %e, "Accept failed.");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                }
            }
        });
        Ok(local)
    }

    /// `ws://{addr}/trade-api/ws/v2`.
    pub fn url(&self, addr: SocketAddr) -> String {
        format!("ws://{addr}{}", auth::WS_PATH)
    }

    /// `http://{addr}/trade-api/v2`: the REST API's base on the same port.
    pub fn rest_url(&self, addr: SocketAddr) -> String {
        format!("http://{addr}{}", auth::REST_PREFIX.trim_end_matches('/'))
    }

    /// The REST fault switches now.
    pub fn rest_faults(&self) -> RestFaults {
        *self.shared().rest_faults_lock()
    }

    /// Sets every REST fault switch at once.
    pub fn set_rest_faults(&self, faults: RestFaults) {
        *self.shared().rest_faults_lock() = faults;
    }

    /// The next `n` REST requests get 429, with `Retry-After` (whole seconds, at least 1) when
    /// `retry_after` is given.
    pub fn rest_throttle(&self, n: u32, retry_after: Option<Duration>) {
        let mut f = self.shared().rest_faults_lock();
        f.throttle = n;
        f.retry_after = retry_after;
    }

    /// The next `n` REST requests (after any 429s) get HTTP `status` (a 5xx).
    pub fn rest_fail(&self, n: u32, status: u16) {
        let mut f = self.shared().rest_faults_lock();
        f.fail = n;
        f.fail_status = status;
    }

    /// Every REST answer waits `delay` first (zero: none).
    pub fn rest_delay(&self, delay: Duration) {
        self.shared().rest_faults_lock().delay = delay;
    }

    /// REST requests received, oldest first: path and query as sent.
    pub fn rest_requests(&self) -> Vec<String> {
        self.shared().rest_log_lock().iter().cloned().collect()
    }

    /// A market's lifecycle and metadata as the REST API serves it.
    pub fn market_meta(&self, market: &str) -> Option<exchange::MarketMeta> {
        self.shared().hub.lock().ex.meta(market).cloned()
    }

    /// The client end of an in-process stream, served exactly like a TCP connection (HTTP
    /// upgrade, auth, faults). Works under paused tokio time.
    pub fn connect_in_memory(&self) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(DUPLEX_BUFFER);
        self.owner.runtime.spawn(conn::serve(self.shared().clone(), server));
        client
    }

    /// Stops accepting, stops the generator and closes every connection with 1001.
    pub fn shutdown(&self) {
        self.shared().shutdown.cancel();
    }

    /// Drops every connection abruptly (no close frame).
    pub fn drop_all(&self) {
        self.shared().broadcast(Control::Drop);
    }

    /// Sends every connection a close frame with `code`, then drops it.
    pub fn close_all(&self, code: u16) {
        self.shared().broadcast(Control::Close(code));
    }

    /// Half-open switch: while on, every connection neither reads nor writes (no pings, pongs
    /// or data) but keeps its socket. Updates keep flowing into each connection's bounded
    /// queue; one that overflows answers error 25 on its data sids after the stall.
    pub fn set_stall(&self, on: bool) {
        self.shared().stall.send_replace(on);
    }

    /// The next `n` upgrade attempts get HTTP 503.
    pub fn refuse_handshakes(&self, n: u32) {
        self.shared().refuse.store(n, Ordering::SeqCst);
    }

    /// On every live sequenced sid, the next sequenced frame's seq jumps by `n`.
    pub fn skip_seq(&self, n: u64) {
        self.shared().broadcast(Control::SkipSeq(n));
    }

    /// `n` malformed text frames to every connection.
    pub fn send_malformed(&self, n: u32) {
        self.shared().broadcast(Control::Malformed(n));
    }

    /// `n` frames of an unknown `type` with unknown fields to every connection.
    pub fn send_unknown(&self, n: u32) {
        self.shared().broadcast(Control::Unknown(n));
    }

    /// One valid text frame of an unknown type, about `bytes` long, to every connection.
    pub fn send_oversized(&self, bytes: usize) {
        self.shared().broadcast(Control::Oversized(bytes));
    }

    /// Error `code` (10 or 25) on every `orderbook_delta` sid, then silence on it.
    pub fn send_terminal_error(&self, code: u32) {
        self.shared().broadcast(Control::Terminal(code));
    }

    /// Freezes `market` on every open connection: its updates stop on the subscriptions that
    /// carry it while its book and trades keep changing on the exchange (and in the REST
    /// answers), until a client asks for its snapshot (`get_snapshot`) or removes it from a
    /// subscription and adds it again. Connections opened later are not frozen.
    pub fn freeze(&self, market: &str) {
        self.shared().broadcast(Control::Freeze(Arc::from(market)));
    }

    /// Stops generating exchange events (heartbeats continue). When it returns, no further
    /// update will be published until [`Simulator::resume`].
    pub fn pause(&self) {
        self.shared().hub.lock().paused = true;
    }

    /// Whether every open connection has written all it will of every update generated so
    /// far. After [`Simulator::pause`], once this holds, no more market data is written until
    /// [`Simulator::resume`], so [`Simulator::trades_sent`] is final; updates generated
    /// before the pause may still be on their way to a socket until then.
    pub fn caught_up(&self) -> bool {
        let next = self.shared().hub.lock().ex.next_update_no();
        self.shared().conns_lock().values().all(|c| c.handled.load(Ordering::Acquire) >= next)
    }

    /// Resumes generating exchange events.
    pub fn resume(&self) {
        self.shared().hub.lock().paused = false;
    }

    /// Runs `events` exchange events at once, stamped now, as the generator would over time
    /// (nothing while paused); returns how many ran. For producing a long stretch of trading
    /// in a short time: a benchmark's outage.
    pub fn generate(&self, events: u64) -> u64 {
        let ran = self.shared().hub.generate(events, session::now_ms());
        self.shared().stats.events_generated.fetch_add(ran, Ordering::Relaxed);
        ran
    }

    /// Every trade the exchange executed (the last [`exchange::TRADES_KEPT`]), oldest first:
    /// market, trade id and execution time (ms), whether or not a client was connected,
    /// stalled or refused at the time.
    pub fn trades_executed(&self) -> Vec<(String, String, i64)> {
        let st = self.shared().hub.lock();
        st.ex.trades_kept().map(|t| (t.market.to_string(), t.trade.trade_id.clone(), t.trade.ts_ms)).collect()
    }

    /// Changes the event rate (events per second, at least 1).
    pub fn set_rate(&self, rate: u32) {
        self.shared().rate.store(u64::from(rate.max(1)), Ordering::Relaxed);
    }

    /// The exchange's current book: each side priced in its own contract, ascending.
    pub fn book(&self, market: &str) -> Option<BookSnapshot> {
        self.shared().hub.lock().ex.book(market)
    }

    /// Market tickers in creation order.
    pub fn markets(&self) -> Vec<String> {
        self.shared().hub.lock().ex.markets()
    }

    /// Trade ids in the order written to client sockets (one entry per socket write).
    pub fn trades_sent(&self) -> Vec<String> {
        self.shared().trades_lock().iter().cloned().collect()
    }

    /// Starts (or stops) keeping, for every trade frame written, its trade id and the
    /// `std::time::Instant` taken just before the socket write that carried it (the flush of
    /// the frames a connection wrote together): the send time for latency measurements in the
    /// same process. Off by default; at most `TRADE_LOG_CAP` entries are kept, oldest dropped.
    pub fn record_send_times(&self, on: bool) {
        self.shared().record_send_times.store(on, Ordering::Relaxed);
    }

    /// Takes the send times kept so far (see [`Simulator::record_send_times`]), oldest first,
    /// one entry per socket write of a trade.
    pub fn take_send_times(&self) -> Vec<(String, std::time::Instant)> {
        self.shared().send_times_lock().drain(..).collect()
    }

    /// Every client command, in order, with its connection id (unparseable ones as a string).
    pub fn commands_received(&self) -> Vec<(u64, serde_json::Value)> {
        self.shared().commands_lock().iter().cloned().collect()
    }

    /// The ids of the connections open now (as [`Simulator::commands_received`] names them),
    /// ascending.
    pub fn open_connections(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.shared().conns_lock().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Counters since start.
    pub fn stats(&self) -> SimStats {
        let c = &self.shared().stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SimStats {
            connections_open: get(&c.connections_open),
            connections_total: get(&c.connections_total),
            handshakes_refused: get(&c.handshakes_refused),
            handshakes_unauthorized: get(&c.handshakes_unauthorized),
            handshakes_not_found: get(&c.handshakes_not_found),
            frames_sent: get(&c.frames_sent),
            pings_sent: get(&c.pings_sent),
            trades_sent: get(&c.trades_sent),
            commands_received: get(&c.commands_received),
            lagged: get(&c.lagged),
            events_generated: get(&c.events_generated),
            faults_dropped: get(&c.faults_dropped),
            rest_requests: get(&c.rest_requests),
            rest_throttled: get(&c.rest_throttled),
            rest_failed: get(&c.rest_failed),
            rest_unauthorized: get(&c.rest_unauthorized),
            rest_signed: get(&c.rest_signed),
        }
    }
}
