//! The HTTP side: the accept loop and its limits, routes, the checks before a WebSocket
//! upgrade, the page's files, health.
//!
//! Connections are served by hyper directly (axum's `serve` exposes none of these options):
//! each must send a request's headers within `header_timeout` (hyper's header read timeout,
//! which also closes a kept-alive connection left idle that long), and at most
//! `max_http_connections` are open at once. Past that bound a new connection is closed as soon
//! as it is accepted, unread and unanswered, and counted: a flood of half-sent requests costs
//! the daemon a bounded number of sockets, each for a bounded time. A connection leaves the
//! bound when it closes or is upgraded; a stream client then holds one of `max_connections`.
//!
//! On a TLS port (`tls_cert_file`) each connection first completes its handshake, within the
//! same `header_timeout`, and everything above runs inside the session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tower_service::Service as _;
use tracing::{debug, info, warn};

use super::{Shared, client, status};

/// The subprotocol tickd speaks; answered when offered.
pub const SUBPROTOCOL: &str = "tickd.v1";
/// Read buffer of a stream connection.
const READ_BUFFER: usize = 8 * 1024;
/// A subprotocol carrying the token: `bearer.<token>`.
const BEARER_PREFIX: &str = "bearer.";
/// Refused connections are logged at most this often (with how many since), so that a flood
/// does not flood the journal too.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long the accept loop pauses after an error that is not about one connection (out of
/// file descriptors: give the ones in use a chance to close).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Accepts connections until `closing`, each on its own task within the bounds above; then
/// lets the open ones finish their request (within `grace`) and drops the rest.
pub(crate) async fn serve(listener: TcpListener, router: Router, shared: Arc<Shared>, grace: Duration) {
    let settings = shared.settings.clone();
    let metrics = shared.metrics.clone();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(settings.header_timeout).keep_alive(true);
    // One per open connection, released when it closes or is upgraded.
    let permits = Arc::new(Semaphore::new(settings.max_http_connections));
    let mut conns = JoinSet::new();
    let (mut refused, mut refusal_logged) = (0u64, None::<Instant>);
    loop {
        tokio::select! {
            // The daemon is stopping: accept no more.
            _ = shared.closing.cancelled() => break,
            // A connection ended (cancel-safe: join_next); only reaped here.
            Some(_) = conns.join_next() => {}
            // A new connection (cancel-safe: accept).
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) if is_connection_error(&e) => continue,
                    Err(e) => {
                        warn!(error = %e, "The dashboard could not accept a connection; pausing.");
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    // Closed at once, unread: its descriptor is free again now.
                    drop(tcp);
                    metrics.refused_connections.fetch_add(1, Ordering::Relaxed);
                    refused += 1;
                    if refusal_logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                        warn!(
                            %peer,
                            refused,
                            max = settings.max_http_connections,
                            "Refused dashboard connections: max_http_connections are open."
                        );
                        refusal_logged = Some(Instant::now());
                        refused = 0;
                    }
                    continue;
                };
                conns.spawn(connection(http.clone(), tcp, peer, router.clone(), shared.clone(), permit));
            }
        }
    }
    // Each connection saw `closing` and finishes the request it is reading or answering.
    let open = conns.len();
    if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await.is_err() {
        info!(open, left = conns.len(), "Dropping dashboard HTTP connections still open at shutdown.");
        conns.abort_all();
    }
}

/// Errors of one connection, not of the listener (the next accept may well succeed).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Serves one connection until it closes, times out, or is upgraded (the stream then runs on
/// its own task, and `permit` is released). On a TLS port the handshake comes first, within
/// the same `header_timeout`.
async fn connection(
    http: hyper::server::conn::http1::Builder,
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let metrics = shared.metrics.clone();
    metrics.http_connections.fetch_add(1, Ordering::Relaxed);
    // Latency over packet count: frames and answers are small.
    let _ = tcp.set_nodelay(true);
    let result = match &shared.tls {
        None => serve_http(&http, tcp, peer, router, &shared).await,
        Some(acceptor) => match handshake(acceptor, tcp, peer, &shared).await {
            Some(tls) => serve_http(&http, tls, peer, router, &shared).await,
            None => Ok(()),
        },
    };
    metrics.http_connections.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(()) => {}
        Err(e) if e.is_timeout() => {
            metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "Closed a dashboard connection that sent no complete request in time.");
        }
        Err(e) => debug!(%peer, error = %e, "A dashboard connection ended with an error."),
    }
}

/// HTTP on `io` (a TCP connection, or the TLS session over one) until it closes, times out,
/// or is upgraded.
async fn serve_http<I>(
    http: &hyper::server::conn::http1::Builder,
    io: I,
    peer: SocketAddr,
    router: Router,
    shared: &Shared,
) -> hyper::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().call(request)
    });
    let conn = http.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        // The connection's whole life (not cancel-safe, and never cancelled but by `closing`).
        r = conn.as_mut() => r,
        // Stopping: finish the request in hand (bounded by header_timeout while reading one),
        // then close.
        _ = shared.closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// The first byte a TLS client sends: the content type of a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// What a client speaking plain HTTP to a TLS port is told before the connection closes.
const PLAINTEXT_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Length: 47\r\nConnection: close\r\n\r\nThis port speaks TLS: use https:// or wss://.\r\n";
/// The most a refused plaintext request is read of, so that closing does not reset the
/// connection before the client reads its answer.
const PLAINTEXT_DRAIN: u64 = 16 * 1024;

/// How the start of a connection on a TLS port went.
enum Handshake {
    /// Done: HTTP follows inside the session.
    Done(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The client spoke plain HTTP.
    Plaintext(TcpStream),
    /// The client closed before sending anything.
    Closed,
}

/// The TLS handshake of a new connection, within `header_timeout` (a client that connects and
/// sends nothing costs a socket for that long at most). A client that speaks plain HTTP
/// instead gets a 400 saying so. `None` when the connection ends here; counted by why.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<Box<tokio_rustls::server::TlsStream<TcpStream>>> {
    let metrics = &shared.metrics;
    let attempt = async {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 0 {
            return Ok(Handshake::Closed);
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            return Ok(Handshake::Plaintext(tcp));
        }
        acceptor.accept(tcp).await.map(|tls| Handshake::Done(Box::new(tls)))
    };
    let outcome = tokio::select! {
        // Stopping: a connection still shaking hands has no request in hand to finish.
        _ = shared.closing.cancelled() => return None,
        // Not cancel-safe, and dropped as a whole when cancelled: the connection closes.
        outcome = tokio::time::timeout(shared.settings.header_timeout, attempt) => outcome,
    };
    match outcome {
        Ok(Ok(Handshake::Done(tls))) => Some(tls),
        Ok(Ok(Handshake::Closed)) => None,
        Ok(Ok(Handshake::Plaintext(tcp))) => {
            metrics.tls_plaintext.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "Refused plain HTTP on the dashboard's TLS port.");
            let _ = tokio::time::timeout(shared.settings.header_timeout, refuse_plaintext(tcp)).await;
            None
        }
        Ok(Err(e)) => {
            metrics.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, error = %e, "A TLS handshake on the dashboard port failed.");
            None
        }
        Err(_) => {
            metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "Closed a dashboard connection whose TLS handshake did not complete in time.");
            None
        }
    }
}

/// Answers 400 in plain HTTP, then reads what the client sent (up to [`PLAINTEXT_DRAIN`]) until
/// it closes, so that the answer is not lost to a reset.
async fn refuse_plaintext(mut tcp: TcpStream) -> std::io::Result<()> {
    tcp.write_all(PLAINTEXT_REFUSAL).await?;
    tcp.shutdown().await?;
    tokio::io::copy(&mut (&mut tcp).take(PLAINTEXT_DRAIN), &mut tokio::io::sink()).await?;
    Ok(())
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", include_bytes!("../../web/index.html")) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", include_bytes!("../../web/app.js")) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", include_bytes!("../../web/app.css")) }),
        )
        .route(
            "/vendor/uPlot.iife.min.js",
            get(|| async {
                asset("text/javascript; charset=utf-8", include_bytes!("../../web/vendor/uPlot.iife.min.js"))
            }),
        )
        .route(
            "/vendor/uPlot.min.css",
            get(|| async {
                asset("text/css; charset=utf-8", include_bytes!("../../web/vendor/uPlot.min.css"))
            }),
        )
        .route("/ws", get(upgrade))
        .route("/healthz", get(|| async { json_response(StatusCode::OK, json!({"status": "alive"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(shared.clone(), check_host))
        .with_state(shared)
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json_response(status, json!({"error": code, "message": message.into()}))
}

/// The host part of a `Host` header value (`[::1]:8080` → `::1`, `a.b:80` → `a.b`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

/// Whether a `Host` value is one this daemon answers to: an IP literal or `localhost` (which a
/// DNS rebinding attack cannot produce), or a configured name.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host);
    if name.parse::<IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    allowed.iter().any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(name))
}

async fn check_host(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !host_allowed(host, &shared.settings.allowed_hosts) {
        shared.metrics.rejected_forbidden.fetch_add(1, Ordering::Relaxed);
        warn!(host, path = request.uri().path(), "Refused a request for a host this daemon is not.");
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("Host `{host}` is not this daemon; add it to dashboard.allowed_hosts"),
        );
    }
    next.run(request).await
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let snapshot = shared.health.snapshot();
    let reasons = crate::ops::readiness::not_ready(&shared.health, &snapshot, shared.stopping.is_cancelled());
    let feeds = status::feeds(&snapshot);
    if reasons.is_empty() {
        json_response(StatusCode::OK, json!({"ready": true, "feeds": feeds}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ready": false, "reasons": reasons, "feeds": feeds}),
        )
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut response = crate::ops::metrics::render(&shared.health).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The tokens a request presents: bearer header, `token` query parameter, `bearer.` subprotocol.
fn presented_tokens<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Vec<std::borrow::Cow<'a, str>> {
    let mut tokens = Vec::new();
    for value in headers.get_all(header::AUTHORIZATION) {
        if let Some(t) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            tokens.push(t.trim().into());
        }
    }
    if let Some(query) = query {
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if k == "token" {
                tokens.push(v);
            }
        }
    }
    for p in offered_protocols(headers) {
        if let Some(t) = p.strip_prefix(BEARER_PREFIX) {
            tokens.push(t.into());
        }
    }
    tokens
}

fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let metrics = &shared.metrics;
    let headers = request.headers();
    // Origin: none (a program), the daemon's own page, or an allowed origin.
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let own = [format!("http://{host}"), format!("https://{host}")];
        let allowed = own.iter().any(|o| o.eq_ignore_ascii_case(origin))
            || shared
                .settings
                .allowed_origins
                .iter()
                .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin));
        if !allowed {
            metrics.rejected_forbidden.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, origin, "Refused a stream connection from a foreign origin.");
            return refuse(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("Origin `{origin}` is not allowed; add it to dashboard.allowed_origins"),
            );
        }
    }
    if let Some(token) = &shared.token {
        let expected = token.expose().as_bytes();
        let presented = presented_tokens(headers, request.uri().query());
        if !presented.iter().any(|t| same_secret(t.as_bytes(), expected)) {
            metrics.rejected_unauthorized.fetch_add(1, Ordering::Relaxed);
            let why = if presented.is_empty() { "no token" } else { "a wrong token" };
            warn!(%peer, "Refused a stream connection with {why}.");
            let mut response = refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!(
                    "{why}: send `Authorization: Bearer <token>`, `?token=<token>`, or the subprotocol `bearer.<token>`"
                ),
            );
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    let is_upgrade = request.method() == Method::GET
        && header_has(headers, header::CONNECTION, "upgrade")
        && header_has(headers, header::UPGRADE, "websocket");
    if !is_upgrade {
        return refuse(StatusCode::UPGRADE_REQUIRED, "invalid_request", "/ws takes a WebSocket upgrade");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request", "Sec-WebSocket-Version must be 13");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request", "Sec-WebSocket-Key is missing");
    };
    let accept = derive_accept_key(key.as_bytes());
    let speaks_tickd = offered_protocols(headers).any(|p| p == SUBPROTOCOL);
    if shared.stopping.is_cancelled() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "tickd is shutting down");
    }
    let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
        metrics.rejected_full.fetch_add(1, Ordering::Relaxed);
        warn!(%peer, max = shared.settings.max_connections, "Refused a stream connection: too many clients.");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{} clients are connected, the most allowed", shared.settings.max_connections),
        );
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(StatusCode::UPGRADE_REQUIRED, "invalid_request", "this connection cannot be upgraded");
    };
    // Commands are small: a read buffer of the default 128 KiB is zeroed on every read
    // attempt, which was half of the server's CPU under fan-out (BENCHMARKS.md).
    let config = WebSocketConfig::default()
        .max_message_size(Some(shared.settings.max_frame_bytes))
        .max_frame_size(Some(shared.settings.max_frame_bytes))
        .read_buffer_size(READ_BUFFER.max(shared.settings.max_frame_bytes * 2));
    let task_shared = shared.clone();
    shared.tracker.spawn(async move {
        let _permit = permit;
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                    .await;
                client::serve(ws, task_shared, peer.to_string()).await;
            }
            Err(e) => debug!(%peer, error = %e, "A stream upgrade did not complete."),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if speaks_tickd {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_dns_rebinding_cannot_forge_are_accepted() {
        let allowed = vec!["tickd.internal".to_owned()];
        for ok in
            ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "10.1.2.3", "tickd.internal:8080", "LOCALHOST"]
        {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in ["evil.example:8080", "", "127.0.0.1.evil.example", "localhost.evil.example:8080"] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abcdef", b"abcdef"));
        assert!(!same_secret(b"abcdef", b"abcdeg"));
        assert!(!same_secret(b"abc", b"abcdef"));
    }
}
