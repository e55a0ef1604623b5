//! The alert webhook: every notice POSTed as JSON to `alerts.webhook_url`, in order, by one
//! task of its own, so that a slow or dead receiver never holds up a feed or the writer.
//!
//! Each POST is one HTTP/1.1 request on a fresh connection, made with reqwest as
//! [`crate::http`] builds it (rustls with the ring provider and the Mozilla roots for
//! `https`, no proxy, no redirects: a 3xx is a failure that says so), limited to
//! `webhook_timeout` in all. User info in the URL becomes a Basic `Authorization`. A POST that
//! gets no answer, or HTTP 429 or 5xx, is tried again up to `webhook_retries` times after
//! [`retry_delay`]; any other non-2xx answer is final. A notice that cannot be delivered is
//! logged and counted, and the next one goes.
//!
//! Notices wait in a queue of [`WEBHOOK_QUEUE`]; when it is full (the receiver has been
//! failing for a long while) a new notice is dropped, logged and counted rather than wait.
//! At shutdown the queue gets one more try per notice, for at most [`DRAIN_LIMIT`] in all.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::config::WebhookUrl;
use crate::http::{Failure, client_builder, describe, failure};
use crate::telemetry::alerts::AlertMetrics;
use crate::telemetry::alerts::notice::Notice;

/// Notices waiting for the webhook. When full, a new notice is dropped (logged and counted):
/// alerts are rare, so a full queue means the receiver has been failing for a long time.
pub const WEBHOOK_QUEUE: usize = 64;

/// How long a stop goes on delivering what is queued.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The longest wait between two tries of one notice.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Why a POST failed. No variant carries the URL, whose path or query may hold a token.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The URL cannot be posted to.
    #[error("{0}")]
    Url(String),
    /// TCP connect failed, or the connection broke before a whole answer.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The TLS handshake failed (certificate, protocol).
    #[error("TLS failed: {0}")]
    Tls(String),
    /// No answer within `webhook_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The receiver answered with a status that is not 2xx.
    #[error("answered HTTP {0}")]
    Status(u16),
}

impl PostError {
    /// Whether trying the same POST again later may succeed: no answer at all, or an answer
    /// that says so (429, 5xx). A TLS failure (a bad certificate) and other statuses will
    /// not change by themselves.
    pub fn is_retriable(&self) -> bool {
        match self {
            PostError::Connect(_) | PostError::Timeout(_) => true,
            PostError::Status(code) => *code == 429 || *code >= 500,
            PostError::Url(_) | PostError::Tls(_) => false,
        }
    }
}

/// The wait before try number `retry` (from 1) of a notice: 1 s, 2 s, 4 s..., at most 30 s.
pub fn retry_delay(retry: u32) -> Duration {
    let secs = 1u64.checked_shl(retry.saturating_sub(1)).unwrap_or(u64::MAX);
    Duration::from_secs(secs).min(MAX_RETRY_DELAY)
}

/// Where and how notices are posted.
#[derive(Clone)]
pub struct Webhook {
    url: reqwest::Url,
    /// The URL for logs.
    shown: String,
    timeout: Duration,
    retries: u32,
    client: reqwest::Client,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.shown).field("timeout", &self.timeout).finish()
    }
}

impl Webhook {
    /// A webhook for `url` (checked by the settings). Fails only when the URL does not parse
    /// or TLS cannot be set up; the error never shows the URL's secret parts.
    pub fn new(url: &WebhookUrl, timeout: Duration, retries: u32) -> Result<Webhook, String> {
        url.check()?;
        let parsed = reqwest::Url::parse(url.expose()).map_err(|e| format!("is not a URL: {e}"))?;
        // Alerts are rare: a fresh connection for each POST, none kept idle in between.
        let client = client_builder(timeout)?
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| format!("the HTTP client cannot be set up: {}", describe(e)))?;
        Ok(Webhook { url: parsed, shown: url.redacted(), timeout, retries, client })
    }

    /// The URL as logs show it (scheme, host and port only).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// POSTs `body` once; `Ok` with the 2xx status.
    pub async fn post(&self, body: Bytes) -> Result<u16, PostError> {
        let sent = self
            .client
            .post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                return Err(match failure(&e) {
                    Failure::Timeout => PostError::Timeout(self.timeout),
                    Failure::Tls => PostError::Tls(describe(e)),
                    Failure::Connect => PostError::Connect(describe(e)),
                    Failure::Request => PostError::Url(describe(e)),
                });
            }
        };
        let status = response.status().as_u16();
        if response.status().is_success() { Ok(status) } else { Err(PostError::Status(status)) }
    }
}

/// Starts the task that posts queued notices, in order, until `close` is cancelled (then it
/// drains the queue for at most [`DRAIN_LIMIT`]) or every sender is gone.
pub fn spawn(
    webhook: Webhook,
    rx: mpsc::Receiver<Notice>,
    close: CancellationToken,
    metrics: Arc<AlertMetrics>,
) -> JoinHandle<()> {
    tokio::spawn(deliver_all(webhook, rx, close, metrics))
}

async fn deliver_all(
    webhook: Webhook,
    mut rx: mpsc::Receiver<Notice>,
    close: CancellationToken,
    metrics: Arc<AlertMetrics>,
) {
    loop {
        let notice = tokio::select! {
            // Stopping: drain below.
            () = close.cancelled() => break,
            // The next notice (cancel-safe); `None` once every sender is dropped.
            notice = rx.recv() => match notice {
                Some(notice) => notice,
                None => return,
            },
        };
        deliver(&webhook, &notice, webhook.retries, &close, &metrics).await;
    }
    let deadline = Instant::now() + DRAIN_LIMIT;
    while let Ok(notice) = rx.try_recv() {
        if Instant::now() >= deadline {
            metrics.webhook_failed.fetch_add(1, Ordering::Relaxed);
            error!(alert = %notice.kind, source = %notice.source, state = notice.state.as_str(), webhook = %webhook.shown, "Alert webhook not sent: tickd is stopping.");
            continue;
        }
        if timeout_at(deadline, deliver(&webhook, &notice, 0, &close, &metrics)).await.is_err() {
            metrics.webhook_failed.fetch_add(1, Ordering::Relaxed);
            error!(alert = %notice.kind, source = %notice.source, state = notice.state.as_str(), webhook = %webhook.shown, "Alert webhook not sent: tickd is stopping.");
        }
    }
}

/// Posts one notice, trying again up to `retries` times while the failure is retriable.
/// Never fails: the outcome is logged and counted.
async fn deliver(
    webhook: &Webhook,
    notice: &Notice,
    retries: u32,
    close: &CancellationToken,
    metrics: &AlertMetrics,
) {
    let body = Bytes::from(notice.to_json());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = match webhook.post(body.clone()).await {
            Ok(status) => {
                metrics.webhook_delivered.fetch_add(1, Ordering::Relaxed);
                debug!(alert = %notice.kind, source = %notice.source, state = notice.state.as_str(), status, attempt, "Alert webhook delivered.");
                return;
            }
            Err(e) => e,
        };
        let again = error.is_retriable() && attempt <= retries && !close.is_cancelled();
        if !again {
            metrics.webhook_failed.fetch_add(1, Ordering::Relaxed);
            error!(
                alert = %notice.kind,
                source = %notice.source,
                state = notice.state.as_str(),
                webhook = %webhook.shown,
                attempts = attempt,
                error = %error,
                "Alert webhook failed; this notice is not delivered."
            );
            return;
        }
        let delay = retry_delay(attempt);
        warn!(
            alert = %notice.kind,
            source = %notice.source,
            state = notice.state.as_str(),
            webhook = %webhook.shown,
            attempt,
            error = %error,
            retry_in_ms = delay.as_millis() as u64,
            "Alert webhook failed; trying again."
        );
        tokio::select! {
            // Stopping: the drain gives what is queued one more try; this one is reported.
            () = close.cancelled() => {
                metrics.webhook_failed.fetch_add(1, Ordering::Relaxed);
                error!(alert = %notice.kind, source = %notice.source, webhook = %webhook.shown, "Alert webhook not sent: tickd is stopping.");
                return;
            }
            // The backoff before the next try.
            () = sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn retries_wait_longer_each_time_up_to_a_cap() {
        let delays: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
    }

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        for (code, retriable) in
            [(500, true), (503, true), (429, true), (400, false), (404, false), (301, false)]
        {
            assert_eq!(PostError::Status(code).is_retriable(), retriable, "HTTP {code}");
        }
        assert!(PostError::Timeout(Duration::from_secs(1)).is_retriable());
        assert!(PostError::Connect("refused".into()).is_retriable());
        assert!(!PostError::Tls("bad certificate".into()).is_retriable());
    }

    /// Accepts one connection, reads one request (head and a body of `Content-Length`),
    /// answers `answer`, and returns the request as text.
    async fn one_request(listener: TcpListener, answer: &'static str) -> String {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tcp.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    tcp.write_all(answer.as_bytes()).await.unwrap();
                    return text;
                }
            }
            assert!(n > 0, "the request ended early: {text:?}", text = String::from_utf8_lossy(&buf));
        }
    }

    #[tokio::test]
    async fn a_post_carries_the_json_path_query_and_basic_auth() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server =
            tokio::spawn(one_request(listener, "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"));
        let url = WebhookUrl::new(format!("http://ops:p%40ss@{addr}/hook/x?token=s3cret"));
        let hook = Webhook::new(&url, Duration::from_secs(10), 0).unwrap();

        let status = hook.post(Bytes::from_static(br#"{"kind":"feed_stale"}"#)).await.unwrap();

        let request = server.await.unwrap();
        assert_eq!(status, 204);
        assert!(request.starts_with("POST /hook/x?token=s3cret HTTP/1.1\r\n"), "{request}");
        let lower = request.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json\r\n"), "{request}");
        assert!(lower.contains(&format!("host: {addr}\r\n")), "{request}");
        // base64("ops:p@ss")
        assert!(request.contains("authorization: Basic b3BzOnBAc3M=\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n{\"kind\":\"feed_stale\"}"), "{request}");
        assert_eq!(hook.shown(), format!("http://{addr}/<redacted>"));
    }

    #[tokio::test]
    async fn an_error_status_is_an_error_that_names_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(one_request(listener, "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"));
        let hook =
            Webhook::new(&WebhookUrl::new(format!("http://{addr}/")), Duration::from_secs(10), 0).unwrap();

        let error = hook.post(Bytes::from_static(b"{}")).await.unwrap_err();

        server.await.unwrap();
        assert!(matches!(error, PostError::Status(503)), "{error}");
        assert!(error.is_retriable());
    }

    #[tokio::test]
    async fn an_https_url_speaks_tls_with_the_host_name() {
        // A plain TCP server sees the TLS ClientHello (a handshake record carrying the name),
        // then hangs up; the client reports a TLS or connection failure, not a panic.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut hello = vec![0u8; 512];
            let n = tcp.read(&mut hello).await.unwrap();
            hello.truncate(n);
            hello
        });
        let url = WebhookUrl::new(format!("https://localhost:{port}/hook?token=s3cret"));
        let hook = Webhook::new(&url, Duration::from_secs(10), 0).unwrap();

        let error = hook.post(Bytes::from_static(b"{}")).await.unwrap_err();

        let hello = server.await.unwrap();
        assert_eq!(hello.first(), Some(&0x16), "a TLS handshake record");
        assert!(hello.windows(9).any(|w| w == b"localhost"), "SNI names the host");
        assert!(matches!(error, PostError::Tls(_) | PostError::Connect(_)), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_answer_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and never answers.
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(tcp);
        });
        let hook =
            Webhook::new(&WebhookUrl::new(format!("http://{addr}/")), Duration::from_millis(200), 0).unwrap();

        let error = hook.post(Bytes::from_static(b"{}")).await.unwrap_err();

        server.abort();
        assert!(matches!(error, PostError::Timeout(_)), "{error}");
    }
}
