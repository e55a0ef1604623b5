//! One stream client: a reader task (commands in) and a writer task (frames out).
//!
//! The reader parses and rate-limits commands, answers `ping`, `status` and `history` itself
//! and sends subscription changes to the hub. The writer reads the hub's stream log at its own
//! pace, filters it by the client's subscriptions, and writes whatever is ready in one flush.
//! Both end together: whichever sees the end first records why in [`Shared`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::hub::{CHANNELS, Channel, Filter, LogEntry, Markets, Request, Resolved, Ticket};
use super::{DashboardMetrics, Shared as ServerShared, frames, history, status};
use crate::tick::now_micros;

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Close codes of the protocol.
pub(crate) mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    pub const TOO_SLOW: u16 = 4008;
    pub const RATE_LIMITED: u16 = 4029;
}

/// What both halves of one client share.
struct Shared {
    /// Why the connection ends, set once; `None` code: drop without a close frame.
    end: std::sync::Mutex<Option<(Option<u16>, &'static str)>>,
    ending: CancellationToken,
    /// µs since the epoch of the last frame of any kind from the client.
    last_inbound: AtomicI64,
}

impl Shared {
    fn end(&self, code: Option<u16>, reason: &'static str) {
        if let Ok(mut end) = self.end.lock()
            && end.is_none()
        {
            *end = Some((code, reason));
        }
        self.ending.cancel();
    }

    fn reason(&self) -> (Option<u16>, &'static str) {
        self.end.lock().ok().and_then(|e| *e).unwrap_or((Some(close::NORMAL), ""))
    }
}

/// Waiting for the log to reach its boundary.
enum Pending {
    /// A subscription change: its reply, then its state.
    Change(Resolved),
    /// The fresh state after falling behind.
    Resync(Resolved),
}

impl Pending {
    fn boundary(&self) -> u64 {
        match self {
            Pending::Change(r) | Pending::Resync(r) => r.boundary,
        }
    }
}

/// Subscription changes the hub has answered and the writer has not taken yet, at most: one
/// change of a client at a time in the hub.
const ANSWERS: usize = 1;

/// Runs one upgraded connection until it ends.
pub(crate) async fn serve(ws: Ws, server: Arc<ServerShared>, peer: String) {
    let metrics = server.metrics.clone();
    metrics.clients.fetch_add(1, Ordering::Relaxed);
    metrics.connections.fetch_add(1, Ordering::Relaxed);
    let shared = Arc::new(Shared {
        end: std::sync::Mutex::new(None),
        ending: CancellationToken::new(),
        last_inbound: AtomicI64::new(now_micros()),
    });
    let (sink, stream) = ws.split();
    // Replies the reader writes itself (pong, status, history, errors); when full, the reader
    // waits, and so stops reading commands.
    let (to_writer, inbox) = mpsc::channel(64);
    // The hub's answers to subscription changes, straight to the writer; the reader reserves
    // a place before it asks, so when full it waits, and stops reading commands.
    let (answer_to, answers) = mpsc::channel(ANSWERS);
    let joined = {
        let (reply, rx) = oneshot::channel();
        match server.hub.send(Request::Join { reply }).await {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        }
    };
    match joined {
        Some((log, seq)) => {
            let writer = Writer {
                sink,
                inbox,
                answers,
                log,
                last_seq: seq,
                filter: Filter::default(),
                pending: VecDeque::new(),
                lag: None,
                resyncs: VecDeque::new(),
                out: Vec::new(),
                server: server.clone(),
                shared: shared.clone(),
            };
            let reader = Reader {
                stream,
                to_writer,
                answer_to,
                server: server.clone(),
                shared: shared.clone(),
                budget: Budget::new(server.settings.commands_per_minute),
            };
            tokio::join!(writer.run(), reader.run());
        }
        None => {
            // The hub is gone: the daemon is stopping.
            let mut sink = sink;
            let _ =
                close_with(&mut sink, close::GOING_AWAY, "tickd is shutting down", Duration::from_secs(1))
                    .await;
        }
    }
    let (code, reason) = shared.reason();
    metrics.clients.fetch_sub(1, Ordering::Relaxed);
    match code {
        Some(close::TOO_SLOW) => {
            warn!(peer, reason, "Dashboard client closed with 4008: it could not keep up.")
        }
        Some(close::RATE_LIMITED) => {
            warn!(peer, reason, "Dashboard client closed with 4029: too many commands.")
        }
        Some(close::TOO_BIG) => warn!(peer, reason, "Dashboard client closed with 1009: frame too large."),
        None => info!(peer, reason, "Dashboard client dropped."),
        Some(code) => debug!(peer, code, reason, "Dashboard client disconnected."),
    }
}

async fn close_with(
    sink: &mut SplitSink<Ws, Message>,
    code: u16,
    reason: &'static str,
    limit: Duration,
) -> Result<(), ()> {
    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
    match tokio::time::timeout(limit, sink.send(Message::Close(Some(frame)))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Items behind the client's position when it fell behind, and the resync it waits for.
struct Lag {
    from_seq: u64,
    resync: Option<oneshot::Receiver<Resolved>>,
}

struct Writer {
    sink: SplitSink<Ws, Message>,
    inbox: mpsc::Receiver<Utf8Bytes>,
    /// The hub's answers to this client's subscription changes.
    answers: mpsc::Receiver<Resolved>,
    log: broadcast::Receiver<LogEntry>,
    /// The last log item taken (forwarded or not).
    last_seq: u64,
    filter: Filter,
    /// Subscription changes waiting for the log to reach their boundary.
    pending: VecDeque<Pending>,
    lag: Option<Lag>,
    resyncs: VecDeque<Instant>,
    out: Vec<Message>,
    server: Arc<ServerShared>,
    shared: Arc<Shared>,
}

/// Log entries taken in one go before writing, at most.
const DRAIN: usize = 64;

impl Writer {
    async fn run(mut self) {
        let settings = self.server.settings.clone();
        let mut ping = tokio::time::interval(settings.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.tick().await;
        let hello = frames::Obj::new("hello")
            .uint("version", 1)
            .int("server_time_us", now_micros())
            .uint("ping_interval_ms", settings.ping_interval.as_millis() as u64)
            .uint("max_frame_bytes", settings.max_frame_bytes as u64)
            .uint("commands_per_minute", u64::from(settings.commands_per_minute))
            .finish();
        self.out.push(Message::Text(hello.into()));
        // Made once: each `cancelled()` registers with a token every client shares.
        let (ending_token, closing_token) = (self.shared.ending.clone(), self.server.closing.clone());
        let ending = ending_token.cancelled();
        let closing = closing_token.cancelled();
        tokio::pin!(ending, closing);
        loop {
            if !self.out.is_empty() && !self.write().await {
                break;
            }
            let resync = async {
                match self.lag.as_mut().and_then(|l| l.resync.as_mut()) {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // In this order: the end before any more work, the client's replies and the
                // hub's answers before the log.
                biased;
                // The reader ended the connection; it recorded why in `Shared`.
                _ = &mut ending => break,
                // tickd is stopping: 1001 to the client.
                _ = &mut closing => {
                    self.shared.end(Some(close::GOING_AWAY), "tickd is shutting down");
                    break;
                }
                // A reply the reader made: pong, status, history, an error (cancel-safe: mpsc
                // recv). `None`: the reader is gone.
                msg = self.inbox.recv() => match msg {
                    Some(f) => self.out.push(Message::Text(f)),
                    None => break,
                },
                // The hub's answer to a subscription change, applied once the log reaches its
                // boundary (cancel-safe: mpsc recv).
                Some(r) = self.answers.recv() => self.wait(Pending::Change(r)),
                // The fresh state after falling behind (cancel-safe: the receiver is polled in
                // place and keeps its value). `None`: the hub stopped without answering.
                resolved = resync => match resolved {
                    Some(r) => {
                        if let Some(lag) = &mut self.lag {
                            lag.resync = None;
                        }
                        self.wait(Pending::Resync(r));
                    }
                    None => {
                        self.shared.end(Some(close::GOING_AWAY), "tickd is shutting down");
                        break;
                    }
                },
                // The stream log (cancel-safe: broadcast recv), and up to DRAIN entries already
                // there, so that one write flushes them all.
                got = self.log.recv() => {
                    if !self.take(got) {
                        break;
                    }
                    for _ in 0..DRAIN {
                        let got = match self.log.try_recv() {
                            Ok(e) => Ok(e),
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(broadcast::error::TryRecvError::Lagged(n)) => Err(broadcast::error::RecvError::Lagged(n)),
                            Err(broadcast::error::TryRecvError::Closed) => Err(broadcast::error::RecvError::Closed),
                        };
                        if !self.take(got) {
                            break;
                        }
                    }
                }
                // Heartbeat: a client silent for two intervals is dropped, any other is pinged.
                _ = ping.tick() => {
                    let silent = now_micros() - self.shared.last_inbound.load(Ordering::Relaxed);
                    if silent > 2 * settings.ping_interval.as_micros() as i64 {
                        self.server.metrics.evicted_heartbeat.fetch_add(1, Ordering::Relaxed);
                        self.shared.end(None, "no answer to pings");
                        break;
                    }
                    self.out.push(Message::Ping(Default::default()));
                }
            }
            if self.shared.ending.is_cancelled() {
                break;
            }
            self.apply_pending();
        }
        self.finish().await;
    }

    /// Takes one log entry (or a lag, or the end). False when the connection must end.
    fn take(&mut self, got: Result<LogEntry, broadcast::error::RecvError>) -> bool {
        match got {
            Ok(entry) => {
                // The hub answers changes and resyncs between entries, so a boundary is never
                // inside one: apply those reached before it, then take it whole. It sends an
                // answer before it appends anything past the answer's boundary, so any answer
                // whose boundary this entry is past is already there to take.
                self.take_answers();
                self.apply_pending();
                // More than `client_queue` frames behind the newest: the client's queue is
                // full, whatever the shared log still holds.
                let head = self.server.head.load(Ordering::Relaxed);
                if self.lag.is_none()
                    && head.saturating_sub(self.last_seq) > self.server.settings.client_queue as u64
                {
                    let from = self.last_seq;
                    self.last_seq = entry.last().map_or(self.last_seq, |i| i.seq);
                    return self.fell_behind(from);
                }
                let behind = self.lag.is_some();
                let mut sent = 0;
                for item in entry.iter() {
                    self.last_seq = item.seq;
                    if !behind && self.filter.allows(item.channel, item.market) {
                        self.out.push(Message::Text(item.frame.clone()));
                        sent += 1;
                    }
                }
                self.server.metrics.deliveries.fetch_add(sent, Ordering::Relaxed);
                self.apply_pending();
                true
            }
            Err(broadcast::error::RecvError::Lagged(_)) => self.fell_behind(self.last_seq),
            Err(broadcast::error::RecvError::Closed) => {
                self.shared.end(Some(close::GOING_AWAY), "tickd is shutting down");
                false
            }
        }
    }

    /// The client fell further behind than the log holds: ask the hub for fresh state, skip
    /// the log up to it, then say how many ticks were missed.
    fn fell_behind(&mut self, from_seq: u64) -> bool {
        // Right after a lag the receiver sits on the oldest entry the log holds, so the next
        // append can lag it again before it reads. A lag while still behind (its resync not
        // applied yet) is the same fall: it asks for fresher state but is not another resync.
        if self.lag.is_none() {
            let now = Instant::now();
            self.resyncs.push_back(now);
            while self.resyncs.front().is_some_and(|&t| now.duration_since(t) > Duration::from_secs(60)) {
                self.resyncs.pop_front();
            }
            let metrics = &self.server.metrics;
            metrics.lagged.fetch_add(1, Ordering::Relaxed);
            if self.resyncs.len() > self.server.settings.max_resyncs as usize {
                metrics.evicted_slow.fetch_add(1, Ordering::Relaxed);
                self.shared.end(Some(close::TOO_SLOW), "fell behind too often");
                return false;
            }
        }
        self.resync(from_seq)
    }

    /// Asks the hub for the state of everything the client holds; the log is skipped until
    /// it is applied. False when the connection must end.
    fn resync(&mut self, from_seq: u64) -> bool {
        // Changes answered already, waiting for a boundary the log will not show in order:
        // apply them now; the resync brings the state of everything.
        while let Ok(r) = self.answers.try_recv() {
            self.pending.push_back(Pending::Change(r));
        }
        for pending in std::mem::take(&mut self.pending) {
            if let Pending::Change(r) = pending {
                self.answer(r, false);
            }
        }
        let (tx, rx) = oneshot::channel();
        match self.server.hub.try_send(Request::Resync { filter: self.filter.clone(), reply: tx }) {
            Ok(()) => {}
            // The hub's queue is full of other clients' requests: this one cannot be resynced
            // now, so it is treated as a client that could not keep up.
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.server.metrics.evicted_slow.fetch_add(1, Ordering::Relaxed);
                self.shared.end(Some(close::TOO_SLOW), "fell behind while the server was busy");
                return false;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.end(Some(close::GOING_AWAY), "tickd is shutting down");
                return false;
            }
        }
        if self.lag.is_none() {
            self.lag = Some(Lag { from_seq, resync: Some(rx) });
        } else if let Some(lag) = &mut self.lag {
            lag.resync = Some(rx);
        }
        true
    }

    /// Takes the hub's answers that have arrived: subscription changes, and the resync.
    fn take_answers(&mut self) {
        while let Ok(r) = self.answers.try_recv() {
            self.wait(Pending::Change(r));
        }
        let resynced = match self.lag.as_mut().and_then(|l| l.resync.as_mut()) {
            Some(rx) => rx.try_recv().ok(),
            None => None,
        };
        if let Some(r) = resynced {
            if let Some(lag) = &mut self.lag {
                lag.resync = None;
            }
            self.wait(Pending::Resync(r));
        }
    }

    /// Answers a subscription change as the hub resolved it: its reply, then (`with_state`)
    /// the state of what it added. The limit on subscriptions is checked here, against the
    /// subscriptions the client holds at this point of the stream.
    fn answer(&mut self, r: Resolved, with_state: bool) {
        let (Some(change), Some(ticket)) = (r.change, r.ticket) else { return };
        let mut filter = self.filter.clone();
        filter.apply(&change);
        let max = self.server.settings.max_subscriptions;
        if change.add && filter.pairs() > max {
            self.server.metrics.command_errors.fetch_add(1, Ordering::Relaxed);
            let message =
                format!("this would hold {} subscriptions; at most {max} per connection", filter.pairs());
            let frame = frames::error(ticket.id.as_ref(), "subscription_failed", &message);
            self.out.push(Message::Text(frame.into()));
            return;
        }
        self.filter = filter;
        let names: Vec<&str> = change.channels.iter().map(|c| c.name()).collect();
        let mut o = frames::Obj::new(if change.add { "subscribed" } else { "unsubscribed" })
            .id(ticket.id.as_ref())
            .raw("channels", &serde_json::to_string(&names).unwrap_or_default());
        o = match &ticket.markets {
            Markets::All => o.str("markets", "all"),
            Markets::List(l) => o.raw("markets", &serde_json::to_string(l).unwrap_or_default()),
        };
        if change.add {
            o = o.raw("unknown", &serde_json::to_string(&r.unknown).unwrap_or_default());
        }
        self.out.push(Message::Text(o.finish().into()));
        if !with_state {
            return;
        }
        match &self.lag {
            // Skipping the log until a resync that does not cover what this adds: ask again.
            Some(lag) if change.add => {
                let from = lag.from_seq;
                self.resync(from);
            }
            _ => self.out.extend(r.state.into_iter().map(Message::Text)),
        }
    }

    /// Queues a change or resync in boundary order: the hub's order, whatever order the
    /// replies arrived in.
    fn wait(&mut self, pending: Pending) {
        let at =
            self.pending.iter().position(|p| p.boundary() > pending.boundary()).unwrap_or(self.pending.len());
        self.pending.insert(at, pending);
        self.apply_pending();
    }

    /// Applies the changes (and the resync) whose boundary the log has reached.
    fn apply_pending(&mut self) {
        while self.pending.front().is_some_and(|p| p.boundary() <= self.last_seq) {
            let Some(pending) = self.pending.pop_front() else { break };
            match pending {
                Pending::Resync(r) => {
                    // Everything up to the boundary was skipped.
                    if let Some(lag) = self.lag.take() {
                        let missed = r.boundary.saturating_sub(lag.from_seq);
                        let frame = frames::Obj::new("lagged").uint("missed", missed).finish();
                        self.out.push(Message::Text(frame.into()));
                    }
                    self.out.extend(r.state.into_iter().map(Message::Text));
                }
                Pending::Change(r) => self.answer(r, true),
            }
        }
    }

    /// Writes what is ready in one flush. False when the connection must end.
    async fn write(&mut self) -> bool {
        let limit = self.server.settings.slow_client_timeout;
        let bytes: usize = self.out.iter().map(|m| m.len()).sum();
        let sink = &mut self.sink;
        let out = &mut self.out;
        let write = async {
            for m in out.drain(..) {
                sink.feed(m).await?;
            }
            sink.flush().await
        };
        let result = tokio::select! {
            // The write, within `slow_client_timeout`. Not cancel-safe: frames it took from
            // `out` and did not flush are dropped; only the end of the connection cancels it.
            r = tokio::time::timeout(limit, write) => r,
            // The reader ended the connection: stop writing to it.
            _ = self.shared.ending.cancelled() => return false,
        };
        match result {
            Ok(Ok(())) => {
                self.server.metrics.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
                true
            }
            Ok(Err(e)) => {
                debug!(error = %e, "Dashboard client write failed.");
                self.shared.end(None, "the connection failed");
                false
            }
            Err(_) => {
                self.server.metrics.evicted_slow.fetch_add(1, Ordering::Relaxed);
                self.shared.end(Some(close::TOO_SLOW), "stayed behind");
                false
            }
        }
    }

    /// Sends what is still queued for the client and the close frame (within a bound), and lets
    /// the socket go.
    async fn finish(mut self) {
        self.shared.ending.cancel();
        let (code, reason) = self.shared.reason();
        let Some(code) = code else { return };
        let limit = if code == close::TOO_SLOW {
            // It could not take what it had; only the close frame is worth trying.
            self.out.clear();
            self.server.settings.slow_client_timeout
        } else {
            // The reader queues its last replies (the `rate_limited` error, answers to the
            // commands before it) before it ends the connection: they go out before the close.
            while let Ok(frame) = self.inbox.try_recv() {
                self.out.push(Message::Text(frame));
            }
            Duration::from_secs(2)
        };
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        self.out.push(Message::Close(Some(frame)));
        let sink = &mut self.sink;
        let out = std::mem::take(&mut self.out);
        let send = async {
            for m in out {
                sink.feed(m).await?;
            }
            sink.flush().await
        };
        let _ = tokio::time::timeout(limit, send).await;
    }
}

/// Commands allowed per minute: a token bucket refilled continuously.
struct Budget {
    tokens: f64,
    per_minute: f64,
    at: Instant,
}

impl Budget {
    fn new(per_minute: u32) -> Budget {
        Budget { tokens: f64::from(per_minute), per_minute: f64::from(per_minute), at: Instant::now() }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.per_minute / 60.0;
        self.tokens = (self.tokens + refill).min(self.per_minute);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Reader {
    stream: SplitStream<Ws>,
    to_writer: mpsc::Sender<Utf8Bytes>,
    /// Where the hub answers this client's subscription changes (the writer's `answers`).
    answer_to: mpsc::Sender<Resolved>,
    server: Arc<ServerShared>,
    shared: Arc<Shared>,
    budget: Budget,
}

/// A command that could not be carried out: an error frame, and maybe the end.
struct Refusal {
    code: &'static str,
    message: String,
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal { code: "invalid_request", message: message.into() }
}

/// How long a client gets to answer our close frame.
const CLOSE_REPLY: Duration = Duration::from_secs(2);

impl Reader {
    async fn run(mut self) {
        self.read().await;
        self.drain().await;
    }

    /// After the end: reads and drops what the client still sends until it answers the close
    /// frame, within a bound. A socket closed with unread input resets the connection, and
    /// the reset discards what is still queued for the client, the close frame included.
    async fn drain(&mut self) {
        let limit = match self.shared.reason().0 {
            // Dropped without a close frame: nothing to wait for.
            None => return,
            // Its close frame waits behind everything it has not read yet.
            Some(close::TOO_SLOW) => self.server.settings.slow_client_timeout + CLOSE_REPLY,
            Some(_) => CLOSE_REPLY,
        };
        let answered = async {
            while let Some(Ok(msg)) = self.stream.next().await {
                if msg.is_close() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(limit, answered).await;
    }

    /// Reads commands until the connection ends, for whatever reason.
    async fn read(&mut self) {
        let ending_token = self.shared.ending.clone();
        let ending = ending_token.cancelled();
        tokio::pin!(ending);
        loop {
            let next = tokio::select! {
                // The writer ended the connection; it recorded why in `Shared`.
                _ = &mut ending => return,
                // The client's next frame (cancel-safe: the stream keeps partial frames
                // buffered).
                next = self.stream.next() => next,
            };
            self.shared.last_inbound.store(now_micros(), Ordering::Relaxed);
            match next {
                None => return self.shared.end(None, "the client went away"),
                Some(Ok(Message::Text(text))) => {
                    if !self.command(&text).await {
                        return;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    self.reply(frames::error(
                        None,
                        "invalid_request",
                        "binary frames are not accepted; send JSON text",
                    ))
                    .await;
                }
                Some(Ok(Message::Close(_))) => {
                    return self.shared.end(Some(close::NORMAL), "closed by the client");
                }
                Some(Ok(_)) => {} // ping, pong: the timestamp above is what matters
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    self.server.metrics.oversized.fetch_add(1, Ordering::Relaxed);
                    debug!(error = %e, "Dashboard client sent an oversized frame.");
                    return self.shared.end(Some(close::TOO_BIG), "frame too large");
                }
                Some(Err(e)) => {
                    debug!(error = %e, "Dashboard client read failed.");
                    return self.shared.end(None, "the connection failed");
                }
            }
        }
    }

    async fn reply(&self, frame: String) {
        // Gives up once the connection ends: the writer, stuck on a client that reads
        // nothing, may never take it.
        tokio::select! {
            // Queued for the writer; waits while its inbox is full.
            _ = self.to_writer.send(frame.into()) => {}
            // The connection ended: the frame is dropped (a cancelled send sends nothing).
            _ = self.shared.ending.cancelled() => {}
        }
    }

    /// Handles one command. False when the connection must end.
    async fn command(&mut self, text: &str) -> bool {
        let metrics = self.server.metrics.clone();
        metrics.commands.fetch_add(1, Ordering::Relaxed);
        if !self.budget.take() {
            metrics.evicted_rate.fetch_add(1, Ordering::Relaxed);
            let message =
                format!("more than {} commands per minute", self.server.settings.commands_per_minute);
            self.reply(frames::error(None, "rate_limited", &message)).await;
            self.shared.end(Some(close::RATE_LIMITED), "too many commands");
            return false;
        }
        let parsed: Result<Value, _> = serde_json::from_str(text);
        let (id, result) = match parsed {
            Err(e) => (None, Err(invalid(format!("not JSON: {e}")))),
            Ok(Value::Object(map)) => {
                let id = map.get("id").cloned();
                match id {
                    Some(Value::Number(_) | Value::String(_)) => {
                        let result = self.execute(&map, id.as_ref()).await;
                        (id, result)
                    }
                    // Not echoed: an error's `id` is a command's id or null.
                    Some(_) => (None, Err(invalid("`id` must be a number or a string"))),
                    None => (None, Err(invalid("missing field `id`"))),
                }
            }
            Ok(_) => (None, Err(invalid("a command is a JSON object"))),
        };
        if let Err(refusal) = result {
            metrics.command_errors.fetch_add(1, Ordering::Relaxed);
            self.reply(frames::error(id.as_ref(), refusal.code, &refusal.message)).await;
        }
        true
    }

    async fn execute(
        &mut self,
        cmd: &serde_json::Map<String, Value>,
        id: Option<&Value>,
    ) -> Result<(), Refusal> {
        let name = match cmd.get("cmd") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(invalid("`cmd` must be a string")),
            None => return Err(invalid("missing field `cmd`")),
        };
        match name {
            "ping" => {
                let frame = frames::Obj::new("pong").id(id).int("server_time_us", now_micros()).finish();
                self.reply(frame).await;
                Ok(())
            }
            "status" => {
                let frame = status::frame(&self.server.health, id);
                self.reply(frame).await;
                Ok(())
            }
            "subscribe" | "unsubscribe" => self.change(name == "subscribe", cmd, id).await,
            "history" => {
                let limits = history::Limits { max_rows: self.server.settings.history_max_rows };
                let request = history::Request::parse(cmd, &limits).map_err(invalid)?;
                let Some(pool) = &self.server.pool else {
                    return Err(Refusal {
                        code: "internal_error",
                        message: "history needs a [store]; this daemon records nothing".into(),
                    });
                };
                match history::fetch(pool, &request).await {
                    Ok(rows) => {
                        let frame = history::frame(id, &request, &rows);
                        self.reply(frame).await;
                        Ok(())
                    }
                    Err(e) => {
                        warn!(error = %e, "A dashboard history query failed.");
                        Err(Refusal {
                            code: "internal_error",
                            message: format!("the database query failed: {e}"),
                        })
                    }
                }
            }
            other => Err(invalid(format!(
                "unknown cmd `{other}`; expected subscribe, unsubscribe, ping, history or status"
            ))),
        }
    }

    async fn change(
        &mut self,
        add: bool,
        cmd: &serde_json::Map<String, Value>,
        id: Option<&Value>,
    ) -> Result<(), Refusal> {
        let channels = match cmd.get("channels") {
            Some(Value::Array(list)) if !list.is_empty() => list
                .iter()
                .map(|c| {
                    let name = c.as_str().unwrap_or("");
                    CHANNELS.iter().find(|(n, _)| *n == name).map(|&(_, c)| c).ok_or_else(|| Refusal {
                        code: "subscription_failed",
                        message: format!(
                            "unknown channel {c}; expected trades, quotes, book, lifecycle or feed"
                        ),
                    })
                })
                .collect::<Result<Vec<Channel>, _>>()?,
            Some(_) => return Err(invalid("`channels` must be a non-empty list")),
            None => return Err(invalid("missing field `channels`")),
        };
        let markets = match cmd.get("markets") {
            Some(Value::String(s)) if s == "all" => Markets::All,
            Some(Value::Array(list)) => Markets::List(
                list.iter()
                    .map(|m| match m.as_str() {
                        Some(s) if !s.is_empty() && s.len() <= 256 => Ok(s.to_owned()),
                        _ => Err(invalid(format!("market {m} is not a ticker"))),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(invalid("`markets` must be a list of tickers or \"all\"")),
            None => return Err(invalid("missing field `markets`")),
        };
        let max = self.server.settings.max_subscriptions;
        let asked = match &markets {
            Markets::All => channels.len(),
            Markets::List(l) => channels.len() * l.len(),
        };
        if add && asked > max {
            return Err(Refusal {
                code: "subscription_failed",
                message: format!("{asked} subscriptions asked; at most {max} per connection"),
            });
        }
        // A place for the answer first, so that the hub never waits on this client.
        let place = tokio::select! {
            // Waits until the writer took the answer to the previous change. `Err`: the writer
            // is gone.
            place = self.answer_to.clone().reserve_owned() => place.ok(),
            // The connection ended while waiting: nothing is asked of the hub.
            _ = self.shared.ending.cancelled() => None,
        };
        let shutting_down = || Refusal { code: "internal_error", message: "tickd is shutting down".into() };
        let Some(reply) = place else { return Err(shutting_down()) };
        let ticket = Ticket { id: id.cloned(), markets: markets.clone() };
        let request = Request::Change { add, channels, markets, ticket, reply };
        self.server.hub.send(request).await.map_err(|_| shutting_down())
    }
}

impl DashboardMetrics {
    /// Frames delivered to clients so far.
    pub fn delivered(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }
}
