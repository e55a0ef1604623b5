//! Outgoing HTTP: one way to build the [`reqwest`] clients tickd uses (Kalshi's REST API in
//! [`crate::kalshi::rest`], the alert webhook in [`crate::ops::alerts::webhook`]).
//!
//! Every client speaks HTTP/1.1 over TCP or rustls with the ring provider and the Mozilla
//! roots: the same TLS as the feeds' WebSockets, whatever the host's certificate store holds.
//! No proxy is taken from the environment and no redirect is followed (a 3xx is an answer
//! like any other), so a request goes exactly where its URL says.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("tickd/", env!("CARGO_PKG_VERSION"));

/// A client builder with tickd's TLS, no proxy, no redirects and `timeout` on each request
/// (connect, TLS, request and the whole answer). Callers add what is theirs (connection pool
/// limits) and build it. Fails only if rustls cannot be set up with the ring provider.
pub fn client_builder(timeout: Duration) -> Result<reqwest::ClientBuilder, String> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config()?)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .timeout(timeout)
        .connect_timeout(timeout))
}

/// rustls with the ring provider (the one built for the WebSocket and the database) and the
/// Mozilla roots, HTTP/1.1 only.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS cannot be set up: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What went wrong with a request that got no HTTP answer, in the terms callers classify by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the time limit.
    Timeout,
    /// The TLS handshake failed: a certificate that does not verify, a protocol alert. It will
    /// not pass by itself.
    Tls,
    /// TCP could not connect, or the connection broke before a whole answer: may pass.
    Connect,
    /// The request could not be built or sent as asked (a URL reqwest cannot use).
    Request,
}

/// Classifies a [`reqwest::Error`] raised before or while reading an answer.
pub fn failure(e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        return Failure::Timeout;
    }
    // rustls reports a failed handshake as an I/O error carrying its own error; look for it
    // anywhere in the chain.
    let mut source = e.source();
    while let Some(err) = source {
        if err.is::<rustls::Error>() {
            return Failure::Tls;
        }
        source = err.source();
    }
    if e.is_builder() {
        return Failure::Request;
    }
    Failure::Connect
}

/// The error and its causes on one line (`error sending request: connection refused`), for
/// logs: reqwest's own `Display` names only the outermost. The URL is left out, since it may
/// carry a secret (a webhook token); callers name what they call themselves.
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let more = err.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = err.source();
    }
    text
}
