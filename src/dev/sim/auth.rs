//! Verification of Kalshi's signed requests: the WebSocket handshake (protocol digest §1.2)
//! and REST calls (`kalshi-rest.md` §2).
//!
//! The client sends `KALSHI-ACCESS-KEY`, `KALSHI-ACCESS-TIMESTAMP` (Unix ms) and
//! `KALSHI-ACCESS-SIGNATURE`: base64 of an RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt)
//! signature over `timestamp + "GET" + path` (`/trade-api/ws/v2`, or the REST path without
//! its query). Written against the `rsa` crate directly, independently of the client's
//! signing code, so that each checks the other.

use base64::Engine as _;
use rsa::pss::{Signature, VerifyingKey};
use rsa::signature::Verifier as _;
use sha2::Sha256;
use tokio_tungstenite::tungstenite::http::HeaderMap;

use super::SimAuth;

/// The signed path: the WebSocket endpoint, without host or query.
pub(crate) const WS_PATH: &str = "/trade-api/ws/v2";

/// Where the REST API's paths start (`/trade-api/v2/markets`...).
pub(crate) const REST_PREFIX: &str = "/trade-api/v2/";

/// Why a handshake was refused (the HTTP 401 body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// One of the three headers is absent or not text.
    #[error("missing KALSHI-ACCESS-* header")]
    MissingHeader,
    /// The key id is not the registered one.
    #[error("unknown API key")]
    UnknownKey,
    /// The timestamp is not an integer or is outside the allowed skew.
    #[error("timestamp outside the allowed window")]
    Timestamp,
    /// The signature is not base64 or does not verify.
    #[error("invalid signature")]
    Signature,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Result<&'a str, AuthError> {
    h.get(name).and_then(|v| v.to_str().ok()).ok_or(AuthError::MissingHeader)
}

/// Whether a request carries any of the three headers (a REST request may come unsigned).
pub(crate) fn signed(headers: &HeaderMap) -> bool {
    ["KALSHI-ACCESS-KEY", "KALSHI-ACCESS-TIMESTAMP", "KALSHI-ACCESS-SIGNATURE"]
        .iter()
        .any(|h| headers.contains_key(*h))
}

/// Checks the three headers of a GET of `path` against `auth` at time `now_ms`.
pub(crate) fn verify(auth: &SimAuth, headers: &HeaderMap, now_ms: i64, path: &str) -> Result<(), AuthError> {
    let key = header(headers, "KALSHI-ACCESS-KEY")?;
    let ts = header(headers, "KALSHI-ACCESS-TIMESTAMP")?;
    let sig = header(headers, "KALSHI-ACCESS-SIGNATURE")?;
    if key != auth.key_id {
        return Err(AuthError::UnknownKey);
    }
    let ts_ms: i64 = ts.parse().map_err(|_| AuthError::Timestamp)?;
    let skew = i64::try_from(auth.max_skew.as_millis()).unwrap_or(i64::MAX);
    if now_ms.abs_diff(ts_ms) > skew.unsigned_abs() {
        return Err(AuthError::Timestamp);
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(sig).map_err(|_| AuthError::Signature)?;
    let sig = Signature::try_from(raw.as_slice()).map_err(|_| AuthError::Signature)?;
    let message = format!("{ts}GET{path}");
    VerifyingKey::<Sha256>::new(auth.public_key.clone())
        .verify(message.as_bytes(), &sig)
        .map_err(|_| AuthError::Signature)
}
