//! One client connection: HTTP/1.1 (hyper), then either REST answers or a WebSocket upgrade
//! and the connection loop.
//!
//! TCP and in-memory streams share this code. A request to the WebSocket path is checked
//! (refusal, auth, upgrade headers) and upgraded; one under the REST prefix is answered by
//! `rest`, any number of them on a kept-alive connection; anything else is 404. After the
//! upgrade the loop owns the socket and a [`Session`]; it reads client frames, writes exchange
//! updates from the broadcast, sends heartbeats and obeys fault switches arriving on its
//! control channel or the shared stall switch.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::auth::{self, REST_PREFIX, WS_PATH};
use super::hub::Batch;
use super::session::{Out, Session, now_ms};
use super::{ConnEntry, Shared};

/// Fault commands queued per connection. Switches are rare and tiny; when a connection's queue
/// is full (it is stalled or writing a huge backlog) the switch is not delivered to it and
/// `SimStats::faults_dropped` counts it.
pub(crate) const CONTROL_CAPACITY: usize = 64;

/// Largest client message accepted; a bigger one ends the connection (commands are small).
const MAX_CLIENT_MESSAGE: usize = 1 << 20;

/// How long a client may take to send a request's head (the upgrade request, or the next REST
/// request on a kept-alive connection).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a closing handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Batches written per flush at most, so a busy connection still reads commands and pings.
const MAX_BATCHES_PER_WRITE: usize = 64;

/// A fault switch addressed to every connection.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    /// Drop the socket without a close frame.
    Drop,
    /// Send a close frame with this code, then drop.
    Close(u16),
    /// Skip this many seq numbers on every sequenced sid.
    SkipSeq(u64),
    /// Send this many malformed text frames.
    Malformed(u32),
    /// Send this many frames of an unknown type.
    Unknown(u32),
    /// Send one valid frame of about this many bytes.
    Oversized(usize),
    /// Terminal error with this code on every orderbook sid.
    Terminal(u32),
    /// Stop sending this market's updates on the sids that carry it, until the client asks
    /// for its snapshot or resubscribes it.
    Freeze(Arc<str>),
}

/// An HTTP answer with a whole body.
pub(crate) type HttpResponse = Response<Full<Bytes>>;

/// An answer with `status` and a body.
pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> HttpResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Serves one accepted stream until it closes or the simulator shuts down.
pub(crate) async fn serve<S>(shared: Arc<Shared>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(route(shared, req).await) }
        })
    };
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut http = std::pin::pin!(http);
    tokio::select! {
        // The connection ended (or was upgraded and handed over to its own task).
        done = &mut http => if let Err(e) = done {
            tracing::debug!(error = %e, "HTTP connection ended with an error.");
        },
        // Shutdown: finish the request under way, then close.
        _ = shared.shutdown.cancelled() => {
            http.as_mut().graceful_shutdown();
            let _ = timeout(CLOSE_TIMEOUT, http).await;
        }
    }
}

/// One request: the WebSocket upgrade, a REST call, or 404.
async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> HttpResponse {
    let path = req.uri().path();
    if path == WS_PATH {
        return upgrade(shared, req);
    }
    if path.starts_with(REST_PREFIX) {
        return super::rest::answer(&shared, &req).await;
    }
    shared.stats.handshakes_not_found.fetch_add(1, Ordering::Relaxed);
    respond(StatusCode::NOT_FOUND, "text/plain", "not found")
}

/// Checks an upgrade request (refusal, auth, the upgrade headers) and, when it passes, answers
/// 101 and runs the connection on its own task once hyper hands the socket over.
fn upgrade(shared: Arc<Shared>, mut req: Request<Incoming>) -> HttpResponse {
    let stats = &shared.stats;
    // Take one refusal if any are pending; the update fails (None) once the budget is zero.
    let refused =
        shared.refuse.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if refused {
        stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
        return respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "service unavailable");
    }
    let authed = match &shared.auth {
        None => false,
        Some(auth_cfg) => match auth::verify(auth_cfg, req.headers(), now_ms(), WS_PATH) {
            Ok(()) => true,
            Err(e) => {
                stats.handshakes_unauthorized.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(reason = %e, "Handshake unauthorized.");
                return respond(StatusCode::UNAUTHORIZED, "text/plain", "unauthorized");
            }
        },
    };
    let headers = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    let is_upgrade = req.method() == hyper::Method::GET
        && has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket");
    let version_ok = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let (Some(key), true, true) = (headers.get(header::SEC_WEBSOCKET_KEY), is_upgrade, version_ok) else {
        return respond(StatusCode::BAD_REQUEST, "text/plain", "a WebSocket upgrade is expected here");
    };
    let accept = derive_accept_key(key.as_bytes());
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return respond(StatusCode::BAD_REQUEST, "text/plain", "this connection cannot be upgraded");
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "Upgrade did not complete.");
                return;
            }
        };
        let config = WebSocketConfig::default().max_message_size(Some(MAX_CLIENT_MESSAGE));
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        let conn = Conn::register(&shared, authed);
        if let Err(e) = conn.run(ws).await {
            tracing::debug!(error = %e, "Connection ended with an error.");
        }
    });
    let mut r = respond(StatusCode::SWITCHING_PROTOCOLS, "text/plain", Bytes::new());
    let h = r.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// A registered connection; unregisters itself when dropped.
struct Conn {
    shared: Arc<Shared>,
    id: u64,
    authed: bool,
    ctl: mpsc::Receiver<Control>,
    /// Shared with the handle: updates numbered below it are written (`Simulator::caught_up`).
    handled: Arc<AtomicU64>,
}

impl Conn {
    fn register(shared: &Arc<Shared>, authed: bool) -> Conn {
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CONTROL_CAPACITY);
        let handled = Arc::new(AtomicU64::new(0));
        shared.conns_lock().insert(id, ConnEntry { ctl: tx, handled: handled.clone() });
        shared.stats.connections_open.fetch_add(1, Ordering::Relaxed);
        shared.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        Conn { shared: shared.clone(), id, authed, ctl: rx, handled }
    }

    async fn run<S>(mut self, mut ws: WebSocketStream<S>) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let shared = self.shared.clone();
        // Subscribed under the exchange's lock, so that no update falls between the first one
        // this connection sees and `taken`.
        let (mut events, mut taken) = {
            let st = shared.hub.lock();
            (shared.hub.subscribe(), st.ex.next_update_no())
        };
        let mut stall = shared.stall.subscribe();
        let hb_every = shared.heartbeat.max(Duration::from_millis(1));
        let mut hb = interval_at(Instant::now() + hb_every, hb_every);
        hb.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut session = Session::new(self.authed, shared.frame_opts);
        let mut out: Vec<Out> = Vec::new();
        // Pings sent since the last pong.
        let mut unanswered: u32 = 0;
        // Switches that arrived while stalled, applied once the stall ends.
        let mut deferred: Vec<Control> = Vec::new();

        loop {
            // Every branch below writes what it took before the loop comes round again.
            self.handled.store(taken, Ordering::Release);
            if *stall.borrow_and_update() {
                // Half-open: no reads, no writes, no pings; only the stall switch, shutdown and
                // drop/close (which simply drop the socket) are looked at.
                tokio::select! {
                    // Shutdown: the socket is dropped, still silent.
                    _ = shared.shutdown.cancelled() => return Ok(()),
                    // The stall switch flipped: re-evaluate at the top of the loop.
                    changed = stall.changed() => if changed.is_err() { return Ok(()) },
                    // Fault switches (cancel-safe: mpsc recv): drop, close and the end of the
                    // switches end the connection; the rest wait for the stall to end.
                    ctl = self.ctl.recv() => match ctl {
                        None | Some(Control::Drop) | Some(Control::Close(_)) => return Ok(()),
                        Some(other) => deferred.push(other),
                    },
                }
                if !*stall.borrow() {
                    hb.reset();
                }
                continue;
            }
            for ctl in std::mem::take(&mut deferred) {
                if !self.control(ctl, &mut ws, &mut session, &mut out).await? {
                    return Ok(());
                }
            }
            tokio::select! {
                biased;
                // Shutdown: a polite 1001 and done.
                _ = shared.shutdown.cancelled() => {
                    close(&mut ws, 1001, "server shutdown").await;
                    return Ok(());
                }
                // Fault switches (cancel-safe: mpsc recv).
                ctl = self.ctl.recv() => {
                    let Some(ctl) = ctl else { return Ok(()) };
                    if !self.control(ctl, &mut ws, &mut session, &mut out).await? {
                        return Ok(());
                    }
                }
                // The stall switch flipped: re-evaluate at the top of the loop.
                changed = stall.changed() => if changed.is_err() { return Ok(()) },
                // Heartbeat ping, and the optional missed-pong policy.
                _ = hb.tick() => {
                    if shared.missed_pongs_close.is_some_and(|n| unanswered >= n) {
                        close(&mut ws, 1008, "missed pongs").await;
                        return Ok(());
                    }
                    ws.send(Message::Ping("heartbeat".into())).await?;
                    unanswered = unanswered.saturating_add(1);
                    shared.stats.pings_sent.fetch_add(1, Ordering::Relaxed);
                }
                // Client frames before data, so commands are answered promptly under load
                // (cancel-safe: the stream keeps partial frames buffered).
                msg = ws.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    match msg? {
                        Message::Text(text) => {
                            // Updates published before the command go out first, so replies
                            // and snapshots follow every delta already generated.
                            taken = taken.max(drain(&mut events, &mut session, &mut out));
                            self.record_command(&text);
                            session.command(&shared.hub, &text, &mut out);
                            self.write(&mut ws, &mut out).await?;
                        }
                        Message::Binary(_) => {
                            out.push(Out { text: super::render::error(None, None, 1, &[]), trade_id: None });
                            self.write(&mut ws, &mut out).await?;
                        }
                        // tungstenite queued the pong; push it out now.
                        Message::Ping(_) => ws.flush().await?,
                        Message::Pong(_) => unanswered = 0,
                        // tungstenite answers the close; keep polling until the stream ends.
                        Message::Close(_) | Message::Frame(_) => {}
                    }
                }
                // Exchange updates (cancel-safe: broadcast recv).
                batch = events.recv() => {
                    match batch {
                        Ok(batch) => {
                            taken = taken.max(after(&batch));
                            session.on_batch(&batch, &mut out);
                            taken = taken.max(drain(&mut events, &mut session, &mut out));
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            shared.stats.lagged.fetch_add(1, Ordering::Relaxed);
                            session.on_lag(&mut out);
                        }
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                    self.write(&mut ws, &mut out).await?;
                }
            }
        }
    }

    /// Applies one fault switch; false when the connection must end.
    async fn control<S>(
        &mut self,
        ctl: Control,
        ws: &mut WebSocketStream<S>,
        session: &mut Session,
        out: &mut Vec<Out>,
    ) -> Result<bool, WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match ctl {
            Control::Drop => return Ok(false),
            Control::Close(code) => {
                close(ws, code, "closed by simulator").await;
                return Ok(false);
            }
            Control::SkipSeq(n) => session.skip_seq(n),
            Control::Malformed(n) => {
                for i in 0..n {
                    let text = MALFORMED[i as usize % MALFORMED.len()];
                    out.push(Out { text: text.to_owned(), trade_id: None });
                }
            }
            Control::Unknown(n) => {
                for i in 0..n {
                    let text = format!(
                        r#"{{"type":"sim_unknown_event","novel_field":{{"nested":[1,2,3],"flag":true}},"msg":{{"n":{i},"future_thing":"x"}},"sending_ts_ms":{}}}"#,
                        now_ms()
                    );
                    out.push(Out { text, trade_id: None });
                }
            }
            Control::Oversized(bytes) => {
                let pad = bytes.saturating_sub(40);
                let mut text = String::with_capacity(pad + 48);
                text.push_str(r#"{"type":"sim_padding","msg":{"pad":""#);
                text.extend(std::iter::repeat_n('x', pad));
                text.push_str(r#""}}"#);
                out.push(Out { text, trade_id: None });
            }
            Control::Terminal(code) => session.terminal(code, out),
            Control::Freeze(market) => {
                session.freeze(&market);
            }
        }
        self.write(ws, out).await?;
        Ok(true)
    }

    fn record_command(&self, text: &str) {
        let value = serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()));
        self.shared.stats.commands_received.fetch_add(1, Ordering::Relaxed);
        let mut log = self.shared.commands_lock();
        if log.len() >= super::COMMAND_LOG_CAP {
            log.pop_front();
        }
        log.push_back((self.id, value));
    }

    /// Writes every pending frame with one flush, then records the trades written.
    async fn write<S>(&self, ws: &mut WebSocketStream<S>, out: &mut Vec<Out>) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if out.is_empty() {
            return Ok(());
        }
        let mut trades = Vec::new();
        let frames = out.len() as u64;
        for o in out.drain(..) {
            if let Some(t) = o.trade_id {
                trades.push(t);
            }
            ws.feed(Message::text(o.text)).await?;
        }
        // Bench switch: the frames above are buffered, and this flush is their write.
        let sent = self.shared.record_send_times.load(Ordering::Relaxed).then(std::time::Instant::now);
        ws.flush().await?;
        let stats = &self.shared.stats;
        stats.frames_sent.fetch_add(frames, Ordering::Relaxed);
        if !trades.is_empty() {
            stats.trades_sent.fetch_add(trades.len() as u64, Ordering::Relaxed);
            if let Some(sent) = sent {
                let mut times = self.shared.send_times_lock();
                for t in &trades {
                    if times.len() >= super::TRADE_LOG_CAP {
                        times.pop_front();
                    }
                    times.push_back((t.clone(), sent));
                }
            }
            let mut log = self.shared.trades_lock();
            for t in trades {
                if log.len() >= super::TRADE_LOG_CAP {
                    log.pop_front();
                }
                log.push_back(t);
            }
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.conns_lock().remove(&self.id);
        self.shared.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Renders batches already queued (at most `MAX_BATCHES_PER_WRITE`) without waiting. Returns
/// the number after the last update taken (0 for none).
fn drain(events: &mut broadcast::Receiver<Batch>, session: &mut Session, out: &mut Vec<Out>) -> u64 {
    let mut taken = 0;
    for _ in 0..MAX_BATCHES_PER_WRITE {
        match events.try_recv() {
            Ok(batch) => {
                taken = after(&batch);
                session.on_batch(&batch, out);
            }
            Err(broadcast::error::TryRecvError::Lagged(_)) => session.on_lag(out),
            Err(_) => break,
        }
    }
    taken
}

/// The number after the last update of `batch`.
fn after(batch: &Batch) -> u64 {
    batch.last().map_or(0, |u| u.no + 1)
}

/// Sends a close frame, giving up after `CLOSE_TIMEOUT` (the socket is dropped either way).
async fn close<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
    let _ = timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
}

/// Malformed frames, cycled by `send_malformed`: not JSON, truncated JSON, wrong types.
const MALFORMED: &[&str] = &[
    "this is not json",
    r#"{"type":"orderbook_delta","sid":1,"seq":"#,
    r#"{"type":"orderbook_delta","sid":"one","seq":-1,"msg":[]}"#,
    r#"[1,2,3]"#,
    r#"{"type":42,"msg":null}"#,
    r#"{"type":"trade","sid":1,"seq":1,"msg":{"trade_id":7,"yes_price_dollars":0.5,"count_fp":null}}"#,
    r#"{"type":"ticker","sid":1,"msg":{"market_ticker":"X","price_dollars":"zero point five"}}"#,
];
