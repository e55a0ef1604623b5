//! One stream client: a reader task (commands in) and a writer task (frames out).
//!
//! The reader parses and rate-limits commands, answers `ping`, `status` and `history` itself
//! and sends subscription changes to the hub. The writer reads the hub's stream log at its own
//! pace, filters it by the client's subscriptions, and writes whatever is ready in one flush.
//! Both end together: whichever sees the end first records why in [`Shared`].
//!
//! The heartbeat: the writer pings every `ping_interval`; the reader drops a client that has
//! given no sign of life for two intervals, and for at least one interval since a ping went
//! out to it. A sign of life is any frame the client sends (a pong counts), or a write that
//! had to wait for the client's socket and then went through (the client read what it had).
//! The reader judges only while it is reading, and reads what is there before it judges, so a
//! busy daemon does not mistake its own delay for the client's silence; and it never judges
//! while a write is under way: a client tickd is writing to is not silent, it is either
//! reading (and its pong is behind the data) or stuck, which `slow_client_timeout` settles.
//!
//! Falling behind: a client further behind the log than `client_queue` frames skips the log
//! until the hub's resync (the state of everything it holds) and gets `lagged`, the state, then
//! live frames again. It has at most one resync asked of the hub at a time ([`Behind`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// When the client connected: the origin of the times below, in µs.
    born: Instant,
    /// The last sign of life: a frame from the client, or a write its socket made the writer
    /// wait for and then took.
    alive_us: AtomicU64,
    /// When the first ping not answered yet went out (its write completed); not after
    /// `alive_us`: none outstanding.
    ping_us: AtomicU64,
    /// A write to the client is under way.
    writing: AtomicBool,
}

/// What the heartbeat makes of a client now.
#[derive(Debug, PartialEq)]
enum Heartbeat {
    /// Silent for two intervals, and for an interval since a ping went out: drop it.
    Silent,
    /// Look again then.
    CheckAt(Instant),
}

impl Shared {
    fn new() -> Shared {
        Shared {
            end: std::sync::Mutex::new(None),
            ending: CancellationToken::new(),
            born: Instant::now(),
            alive_us: AtomicU64::new(0),
            ping_us: AtomicU64::new(0),
            writing: AtomicBool::new(false),
        }
    }

    /// µs since the client connected.
    fn now_us(&self) -> u64 {
        Instant::now().duration_since(self.born).as_micros() as u64
    }

    fn at(&self, us: u64) -> Instant {
        self.born + Duration::from_micros(us)
    }

    /// The client showed it is there.
    fn alive(&self) {
        self.alive_us.fetch_max(self.now_us(), Ordering::Relaxed);
    }

    /// A ping went out; the clock of the first one not answered yet starts now.
    fn pinged(&self) {
        let alive = self.alive_us.load(Ordering::Relaxed);
        if self.ping_us.load(Ordering::Relaxed) <= alive {
            // After any sign of life so far, so that it counts as unanswered.
            self.ping_us.store(self.now_us().max(alive + 1), Ordering::Relaxed);
        }
    }

    /// Whether the client is silent, with pings every `interval`.
    fn heartbeat(&self, interval: Duration) -> Heartbeat {
        let now = Instant::now();
        if self.writing.load(Ordering::Relaxed) {
            // Being written to: not silent. A write that never ends is `slow_client_timeout`'s.
            return Heartbeat::CheckAt(now + interval);
        }
        let (alive_us, ping_us) =
            (self.alive_us.load(Ordering::Relaxed), self.ping_us.load(Ordering::Relaxed));
        let alive = self.at(alive_us);
        if ping_us <= alive_us {
            // No ping outstanding (the writer has not got one out yet): nothing to answer.
            return Heartbeat::CheckAt((alive + 2 * interval).max(now + interval));
        }
        let due = (alive + 2 * interval).max(self.at(ping_us) + interval);
        if now >= due { Heartbeat::Silent } else { Heartbeat::CheckAt(due) }
    }

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

/// Catching up after falling behind the stream log: the one resync asked of the hub for it,
/// and what that resync's state must cover. A client never has two resyncs asked at once: a
/// further fall only widens what the state must cover, and the state is asked for again (once
/// the hub has answered) only when the answer turns out not to cover it.
struct Behind {
    /// The last log item taken before the fall: `missed` counts from here.
    from_seq: u64,
    /// Items up to this `seq` may have been lost: the state must be as of it or later.
    cover: u64,
    /// The subscriptions the state was asked for.
    filter: Filter,
    answer: Answer,
}

/// The hub's answer to the one resync asked.
enum Answer {
    /// Not here yet.
    Awaited(oneshot::Receiver<Resolved>),
    /// Here; applied once the log reaches its boundary.
    Came(Resolved),
}

/// What to do after a fall or an answer.
#[derive(Debug, PartialEq)]
enum Next {
    /// Nothing more: the resync asked will do.
    Wait,
    /// Ask for the state again (nothing is asked of the hub now).
    Ask,
}

impl Behind {
    /// The client fell further while catching up: items up to `head` may be lost too.
    fn fell(&mut self, head: u64) -> Next {
        self.cover = self.cover.max(head);
        match &self.answer {
            // Asked already: its answer is checked when it comes.
            Answer::Awaited(_) => Next::Wait,
            Answer::Came(state) if state.boundary >= self.cover => Next::Wait,
            // It came, but items after it are lost now.
            Answer::Came(_) => Next::Ask,
        }
    }

    /// The hub answered: kept, unless items after its boundary were lost while it was asked.
    fn answered(&mut self, state: Resolved) -> Next {
        if state.boundary < self.cover {
            return Next::Ask;
        }
        self.answer = Answer::Came(state);
        Next::Wait
    }

    /// Whether the state that came is of the subscriptions the client holds now (`filter`,
    /// after the changes the hub answered before it); if not it must be asked for again.
    fn fits(&self, filter: &Filter) -> bool {
        matches!(self.answer, Answer::Came(_)) && self.filter == *filter
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
    let shared = Arc::new(Shared::new());
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
                behind: None,
                resyncs: VecDeque::new(),
                out: Vec::new(),
                ping_queued: false,
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

struct Writer {
    sink: SplitSink<Ws, Message>,
    inbox: mpsc::Receiver<Utf8Bytes>,
    /// The hub's answers to this client's subscription changes.
    answers: mpsc::Receiver<Resolved>,
    log: broadcast::Receiver<LogEntry>,
    /// The last log item taken (forwarded or not).
    last_seq: u64,
    filter: Filter,
    /// Subscription changes waiting for the log to reach their boundary (or, while behind,
    /// for the resync), in boundary order.
    pending: VecDeque<Resolved>,
    /// Catching up after falling behind.
    behind: Option<Behind>,
    /// When the client fell behind, over the last minute.
    resyncs: VecDeque<Instant>,
    out: Vec<Message>,
    /// `out` holds a ping.
    ping_queued: bool,
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
                match self.behind.as_mut().map(|b| &mut b.answer) {
                    Some(Answer::Awaited(rx)) => rx.await.ok(),
                    _ => std::future::pending().await,
                }
            };
            let going_on = tokio::select! {
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
                    Some(f) => {
                        self.out.push(Message::Text(f));
                        true
                    }
                    None => break,
                },
                // The hub's answer to a subscription change, applied once the log reaches its
                // boundary (cancel-safe: mpsc recv).
                Some(r) = self.answers.recv() => {
                    self.wait(r);
                    true
                }
                // The state after falling behind (cancel-safe: the receiver is polled in
                // place and keeps its value). `None`: the hub stopped without answering.
                resolved = resync => match resolved {
                    Some(r) => self.resynced(r),
                    None => {
                        self.shared.end(Some(close::GOING_AWAY), "tickd is shutting down");
                        break;
                    }
                },
                // The stream log (cancel-safe: broadcast recv), and up to DRAIN entries already
                // there, so that one write flushes them all.
                got = self.log.recv() => {
                    let mut going_on = self.take(got);
                    for _ in 0..DRAIN {
                        if !going_on {
                            break;
                        }
                        let got = match self.log.try_recv() {
                            Ok(e) => Ok(e),
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(broadcast::error::TryRecvError::Lagged(n)) => Err(broadcast::error::RecvError::Lagged(n)),
                            Err(broadcast::error::TryRecvError::Closed) => Err(broadcast::error::RecvError::Closed),
                        };
                        going_on = self.take(got);
                    }
                    going_on
                }
                // Heartbeat: a ping every interval. Whether the client answers is the reader's
                // to judge (it reads what the client sent before it judges).
                _ = ping.tick() => {
                    self.out.push(Message::Ping(Default::default()));
                    self.ping_queued = true;
                    true
                }
            };
            if !going_on || self.shared.ending.is_cancelled() || !self.apply_pending() {
                break;
            }
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
                if !self.take_answers() || !self.apply_pending() {
                    return false;
                }
                // More than `client_queue` frames behind the newest: the client's queue is
                // full, whatever the shared log still holds.
                let head = self.server.head.load(Ordering::Relaxed);
                if self.behind.is_none()
                    && head.saturating_sub(self.last_seq) > self.server.settings.client_queue as u64
                {
                    let from = self.last_seq;
                    self.last_seq = entry.last().map_or(self.last_seq, |i| i.seq);
                    return self.fell_behind(from);
                }
                let skipping = self.behind.is_some();
                let mut sent = 0;
                for item in entry.iter() {
                    self.last_seq = item.seq;
                    if !skipping && self.filter.allows(item.channel, item.market) {
                        self.out.push(Message::Text(item.frame.clone()));
                        sent += 1;
                    }
                }
                self.server.metrics.deliveries.fetch_add(sent, Ordering::Relaxed);
                self.apply_pending()
            }
            Err(broadcast::error::RecvError::Lagged(_)) => self.fell_behind(self.last_seq),
            Err(broadcast::error::RecvError::Closed) => {
                self.shared.end(Some(close::GOING_AWAY), "tickd is shutting down");
                false
            }
        }
    }

    /// The client fell further behind than its queue: ask the hub for fresh state, skip the
    /// log up to it, then say how many ticks were missed. False when the connection must end.
    fn fell_behind(&mut self, from_seq: u64) -> bool {
        // Every item lost is at most the newest appended.
        let head = self.server.head.load(Ordering::Relaxed);
        // Right after a lag the receiver sits on the oldest entry the log holds, so the next
        // append can lag it again before it reads. A lag while still catching up is the same
        // fall: it widens what the resync must cover, and is not another resync.
        if let Some(behind) = &mut self.behind {
            return match behind.fell(head) {
                Next::Wait => true,
                Next::Ask => self.ask_again(),
            };
        }
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
        let Some((filter, answer)) = self.ask() else { return false };
        self.behind = Some(Behind { from_seq, cover: head, filter, answer: Answer::Awaited(answer) });
        true
    }

    /// Asks again for the state of a fall whose resync was answered and will not do. False
    /// when the connection must end.
    fn ask_again(&mut self) -> bool {
        let Some((filter, answer)) = self.ask() else { return false };
        if let Some(behind) = &mut self.behind {
            behind.filter = filter;
            behind.answer = Answer::Awaited(answer);
        }
        true
    }

    /// Asks the hub for the state of everything the client holds. Only [`Writer::fell_behind`]
    /// and [`Writer::ask_again`] call it, each for a fall with no resync in flight: the one
    /// they ask is the fall's only one. The changes already answered are applied first, without
    /// state of their own: the resync's covers them. Returns the subscriptions asked for and
    /// where the answer comes; `None` when the connection must end.
    fn ask(&mut self) -> Option<(Filter, oneshot::Receiver<Resolved>)> {
        while let Ok(r) = self.answers.try_recv() {
            self.pending.push_back(r);
        }
        for r in std::mem::take(&mut self.pending) {
            self.answer(r, false);
        }
        let (tx, rx) = oneshot::channel();
        match self.server.hub.try_send(Request::Resync { filter: self.filter.clone(), reply: tx }) {
            Ok(()) => Some((self.filter.clone(), rx)),
            // The hub's queue is full of other clients' requests: this one cannot be resynced
            // now, so it is treated as a client that could not keep up.
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.server.metrics.evicted_slow.fetch_add(1, Ordering::Relaxed);
                self.shared.end(Some(close::TOO_SLOW), "fell behind while the server was busy");
                None
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.end(Some(close::GOING_AWAY), "tickd is shutting down");
                None
            }
        }
    }

    /// The hub answered the resync. False when the connection must end.
    fn resynced(&mut self, state: Resolved) -> bool {
        let Some(behind) = &mut self.behind else { return true };
        match behind.answered(state) {
            Next::Wait => true,
            Next::Ask => self.ask_again(),
        }
    }

    /// Takes the hub's answers that have arrived: subscription changes, and the resync.
    /// False when the connection must end.
    fn take_answers(&mut self) -> bool {
        while let Ok(r) = self.answers.try_recv() {
            self.wait(r);
        }
        let came = match self.behind.as_mut().map(|b| &mut b.answer) {
            Some(Answer::Awaited(rx)) => rx.try_recv(),
            _ => return true,
        };
        match came {
            Ok(state) => self.resynced(state),
            Err(oneshot::error::TryRecvError::Empty) => true,
            Err(oneshot::error::TryRecvError::Closed) => {
                self.shared.end(Some(close::GOING_AWAY), "tickd is shutting down");
                false
            }
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
        if with_state {
            self.out.extend(r.state.into_iter().map(Message::Text));
        }
    }

    /// Queues a change in boundary order: the hub's order, whatever order the replies arrived
    /// in.
    fn wait(&mut self, change: Resolved) {
        let at = self.pending.iter().position(|p| p.boundary > change.boundary).unwrap_or(self.pending.len());
        self.pending.insert(at, change);
    }

    /// Applies what the log has reached: the resync of a fall, then the changes whose
    /// boundary is passed. While behind, changes wait for the resync. False when the
    /// connection must end.
    fn apply_pending(&mut self) -> bool {
        loop {
            if let Some(behind) = &self.behind {
                let Answer::Came(state) = &behind.answer else { return true };
                let boundary = state.boundary;
                if self.last_seq < boundary {
                    return true;
                }
                // Changes the hub answered before this state: their replies now, and no state
                // of their own (their items up to the boundary were skipped).
                while self.pending.front().is_some_and(|c| c.boundary <= boundary) {
                    if let Some(change) = self.pending.pop_front() {
                        self.answer(change, false);
                    }
                }
                let fits = self.behind.as_ref().is_some_and(|b| b.fits(&self.filter));
                if !fits {
                    // A change the hub answered before the resync altered what the client
                    // holds: the state is of other subscriptions. Asked again, skipping on.
                    return self.ask_again();
                }
                if let Some(Behind { from_seq, answer: Answer::Came(state), .. }) = self.behind.take() {
                    // Everything up to the boundary was skipped.
                    let missed = state.boundary.saturating_sub(from_seq);
                    let frame = frames::Obj::new("lagged").uint("missed", missed).finish();
                    self.out.push(Message::Text(frame.into()));
                    self.out.extend(state.state.into_iter().map(Message::Text));
                }
                continue;
            }
            match self.pending.front() {
                Some(change) if change.boundary <= self.last_seq => {
                    if let Some(change) = self.pending.pop_front() {
                        self.answer(change, true);
                    }
                }
                _ => return true,
            }
        }
    }

    /// Writes what is ready in one flush. False when the connection must end. A write that
    /// has to wait for the client's socket and then goes through shows the client reads: a
    /// sign of life for the heartbeat.
    async fn write(&mut self) -> bool {
        let limit = self.server.settings.slow_client_timeout;
        let bytes: usize = self.out.iter().map(|m| m.len()).sum();
        let pinged = std::mem::take(&mut self.ping_queued);
        let sink = &mut self.sink;
        let out = &mut self.out;
        let mut waited = false;
        let write = async {
            for m in out.drain(..) {
                sink.feed(m).await?;
            }
            sink.flush().await
        };
        tokio::pin!(write);
        // Notes whether the socket ever made the write wait.
        let write = std::future::poll_fn(|cx| {
            let poll = write.as_mut().poll(cx);
            waited |= poll.is_pending();
            poll
        });
        self.shared.writing.store(true, Ordering::Relaxed);
        let result = tokio::select! {
            // The write, within `slow_client_timeout`. Not cancel-safe: frames it took from
            // `out` and did not flush are dropped; only the end of the connection cancels it.
            r = tokio::time::timeout(limit, write) => r,
            // The reader ended the connection: stop writing to it.
            _ = self.shared.ending.cancelled() => return false,
        };
        self.shared.writing.store(false, Ordering::Relaxed);
        match result {
            Ok(Ok(())) => {
                if waited {
                    self.shared.alive();
                }
                if pinged {
                    self.shared.pinged();
                }
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
        let interval = self.server.settings.ping_interval;
        let heartbeat = tokio::time::sleep(2 * interval);
        tokio::pin!(ending, heartbeat);
        loop {
            let next = tokio::select! {
                // The end first; then what the client sent, before judging its silence.
                biased;
                // The writer ended the connection; it recorded why in `Shared`.
                _ = &mut ending => return,
                // The client's next frame (cancel-safe: the stream keeps partial frames
                // buffered).
                next = self.stream.next() => next,
                // Time to judge whether the client is silent (cancel-safe: a sleep). Only
                // here, in the read loop: a reader busy with a command has not looked.
                _ = &mut heartbeat => match self.shared.heartbeat(interval) {
                    Heartbeat::Silent => {
                        self.server.metrics.evicted_heartbeat.fetch_add(1, Ordering::Relaxed);
                        return self.shared.end(None, "no answer to pings");
                    }
                    Heartbeat::CheckAt(at) => {
                        heartbeat.as_mut().reset(at);
                        continue;
                    }
                },
            };
            self.shared.alive();
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
                Some(Ok(_)) => {} // ping, pong: the sign of life above is what matters
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

#[cfg(test)]
mod tests {
    use super::super::hub::Change;
    use super::*;

    fn resolved(boundary: u64) -> Resolved {
        Resolved { boundary, change: None, unknown: Vec::new(), state: Vec::new(), ticket: None }
    }

    /// A fall whose resync is asked, the log lost up to `cover`.
    fn asked(cover: u64) -> Behind {
        let (_hub, answer) = oneshot::channel();
        Behind { from_seq: 0, cover, filter: Filter::default(), answer: Answer::Awaited(answer) }
    }

    #[test]
    fn a_client_that_falls_further_while_its_resync_is_asked_asks_no_other() {
        let mut behind = asked(10);
        // Two more losses while the hub works on it: nothing more is asked.
        assert_eq!(behind.fell(20), Next::Wait);
        assert_eq!(behind.fell(30), Next::Wait);
        // Its answer comes older than the last loss: asked again, now that none is in flight.
        assert_eq!(behind.answered(resolved(25)), Next::Ask);
        assert_eq!(behind.answered(resolved(30)), Next::Wait);
        // Answered, waiting for the log: a loss up to its boundary changes nothing, one past
        // it needs a newer state.
        assert_eq!(behind.fell(30), Next::Wait);
        assert_eq!(behind.fell(31), Next::Ask);
    }

    #[test]
    fn a_state_of_other_subscriptions_than_the_clients_is_asked_again() {
        let mut behind = asked(10);
        assert!(!behind.fits(&Filter::default()), "no state yet");
        assert_eq!(behind.answered(resolved(12)), Next::Wait);
        assert!(behind.fits(&Filter::default()));
        let mut more = Filter::default();
        more.apply(&Change { add: true, channels: vec![Channel::Quotes], ids: Some(vec![3]) });
        assert!(!behind.fits(&more), "a change answered before the state added pairs it lacks");
    }

    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_drops_a_client_silent_since_a_ping_went_out_and_never_one_being_written_to() {
        let interval = Duration::from_secs(30);
        let client = Shared::new();
        // No ping out yet (the writer has not got one out): nothing to answer, however long.
        tokio::time::advance(3 * interval).await;
        assert!(matches!(client.heartbeat(interval), Heartbeat::CheckAt(_)));

        // A ping goes out: an interval to answer it.
        client.pinged();
        let due = Instant::now() + interval;
        assert_eq!(client.heartbeat(interval), Heartbeat::CheckAt(due));
        // Later pings do not move the clock of the first one.
        tokio::time::advance(interval / 2).await;
        client.pinged();
        assert_eq!(client.heartbeat(interval), Heartbeat::CheckAt(due));
        // While a write to it is under way it is not silent, past the deadline or not.
        tokio::time::advance(interval).await;
        client.writing.store(true, Ordering::Relaxed);
        assert!(matches!(client.heartbeat(interval), Heartbeat::CheckAt(_)));
        client.writing.store(false, Ordering::Relaxed);
        assert_eq!(client.heartbeat(interval), Heartbeat::Silent);

        // A sign of life answers it; the next ping gets its interval, and the silence two.
        client.alive();
        let alive = Instant::now();
        assert_eq!(client.heartbeat(interval), Heartbeat::CheckAt(alive + 2 * interval));
        tokio::time::advance(interval / 10).await;
        client.pinged();
        assert_eq!(client.heartbeat(interval), Heartbeat::CheckAt(alive + 2 * interval));
        tokio::time::advance(2 * interval).await;
        assert_eq!(client.heartbeat(interval), Heartbeat::Silent);
    }
}
