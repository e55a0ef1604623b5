//! Kalshi `trade-api/ws/v2`: wire parsing, commands, handshake signing, and the sans-IO
//! protocol session that turns frames into normalized ticks.
//!
//! Nothing outside this module sees a Kalshi type: the feed actor hands the session raw frames
//! and gets back [`crate::tick::Tick`]s, feed events and command texts to send.
//!
//! - [`wire`]: server frames parsed with simd-json into borrowed [`wire::Frame`]s.
//! - [`command`]: client commands (`subscribe`, `unsubscribe`, `update_subscription`,
//!   `list_subscriptions`) rendered to JSON text.
//! - [`sign`]: RSA-PSS handshake signing and the `KALSHI-ACCESS-*` headers; loading and
//!   checking a feed's key for its settings.
//! - [`session`]: desired subscriptions, sids, per-sid `seq`, books, gap repair.
//! - [`rest`]: the REST market-data client (markets, trades, order books), one per feed,
//!   within the feed's request budget.
//! - [`lifecycle`]: what lifecycle messages say about markets and events (for discovery).

pub mod command;
pub mod lifecycle;
pub mod rest;
pub mod session;
pub mod sign;
pub mod wire;

/// The request path of the market-data WebSocket; also the signed part of the handshake.
pub const WS_PATH: &str = "/trade-api/ws/v2";
