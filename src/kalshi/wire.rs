//! Server frames of Kalshi's WebSocket, parsed with simd-json.
//!
//! [`parse`] takes the frame's bytes as a mutable buffer (simd-json parses in place) and
//! returns a [`Frame`] that borrows strings from it. Prices and sizes are exact integers.
//! Unknown message types and unknown fields are tolerated and counted in [`WireStats`], never
//! fatal. A frame that is not JSON, or that lacks a required field, is a [`WireError`].

use crate::tick::{Price, Qty, Side};

/// Reusable parse state: simd-json scratch buffers and counters of what was tolerated.
#[derive(Default)]
pub struct Parser {
    /// Counters of tolerated oddities since creation.
    pub stats: WireStats,
}

/// Counts of tolerated oddities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Frames whose `type` we do not know (kept as [`Frame::Unknown`]).
    pub unknown_types: u64,
    /// Fields we do not know, summed over all frames.
    pub unknown_fields: u64,
}

/// Why a frame could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Not valid JSON, or not a JSON object.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// A required field is missing or has the wrong JSON type.
    #[error("{msg_type}: field `{field}` missing or of the wrong type")]
    Field {
        /// The message type being parsed.
        msg_type: String,
        /// The offending field.
        field: &'static str,
    },
    /// A price or size string that is not an exact fixed-point number in our units.
    #[error("{msg_type}: field `{field}` is not an exact fixed-point number: {value:?}")]
    Number {
        /// The message type being parsed.
        msg_type: String,
        /// The offending field.
        field: &'static str,
        /// The text received.
        value: String,
    },
}

/// One server frame. Strings borrow from the parse buffer.
///
/// Prices are as on the wire: NO-side book prices follow the subscription's `use_yes_price`
/// convention, which the frame does not say; the session converts.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `subscribed`: one per channel of a successful `subscribe`.
    Subscribed {
        /// The command id echoed.
        id: Option<u64>,
        /// Channel name.
        channel: &'a str,
        /// The new subscription id.
        sid: u64,
    },
    /// `ok` acknowledging `update_subscription` (object `msg`).
    Ok {
        /// The command id echoed.
        id: Option<u64>,
        /// Subscription concerned.
        sid: Option<u64>,
        /// Sequence number, if the frame carries one.
        seq: Option<u64>,
        /// Full market list after the change, unless omitted by the server.
        market_tickers: Option<Vec<&'a str>>,
    },
    /// `ok` replying to `list_subscriptions` (array `msg`): `(channel, sid)` pairs.
    SubscriptionList {
        /// The command id echoed.
        id: Option<u64>,
        /// Active subscriptions.
        subscriptions: Vec<(&'a str, u64)>,
    },
    /// `unsubscribed`: a subscription ended at our request.
    Unsubscribed {
        /// The command id echoed.
        id: Option<u64>,
        /// The subscription that ended.
        sid: u64,
        /// Sequence number, if present.
        seq: Option<u64>,
    },
    /// `error`: a command failed, or a live subscription broke (codes 10, 25).
    Error {
        /// The command id echoed, absent for unparseable commands and async errors.
        id: Option<u64>,
        /// Subscription concerned, if any.
        sid: Option<u64>,
        /// Sequence number, if present.
        seq: Option<u64>,
        /// Kalshi's error code (see [`ErrorCode`]).
        code: u32,
        /// The server's text.
        msg: &'a str,
        /// Market concerned, if named.
        market_ticker: Option<&'a str>,
    },
    /// `orderbook_snapshot`.
    Snapshot {
        /// Present when replying to `get_snapshot`.
        id: Option<u64>,
        /// Subscription id.
        sid: u64,
        /// Sequence number.
        seq: Option<u64>,
        /// Market ticker.
        market: &'a str,
        /// YES bids as sent (empty when the key is absent).
        yes: Vec<(Price, Qty)>,
        /// NO bids as sent (empty when the key is absent).
        no: Vec<(Price, Qty)>,
        /// Top-level `sending_ts_ms`, if present.
        sending_ts_ms: Option<i64>,
    },
    /// `orderbook_delta`.
    Delta {
        /// Subscription id.
        sid: u64,
        /// Sequence number.
        seq: Option<u64>,
        /// Market ticker.
        market: &'a str,
        /// Which ladder.
        side: Side,
        /// Level price as sent.
        price: Price,
        /// Signed change in resting size.
        delta: Qty,
        /// `ts_ms`, or `sending_ts_ms`, if present.
        ts_ms: Option<i64>,
    },
    /// `ticker` (never sequenced).
    Ticker {
        /// Subscription id.
        sid: u64,
        /// Market ticker.
        market: &'a str,
        /// Last traded price.
        price: Option<Price>,
        /// Best YES bid.
        yes_bid: Option<Price>,
        /// Best YES ask.
        yes_ask: Option<Price>,
        /// Size at best bid.
        yes_bid_size: Qty,
        /// Size at best ask.
        yes_ask_size: Qty,
        /// Size of the last trade.
        last_trade_size: Qty,
        /// Cumulative volume.
        volume: Qty,
        /// Open interest.
        open_interest: Qty,
        /// Whole-dollar volume.
        dollar_volume: i64,
        /// Whole-dollar open interest.
        dollar_open_interest: i64,
        /// `ts_ms` (or `ts` * 1000), if present.
        ts_ms: Option<i64>,
    },
    /// `trade`.
    Trade {
        /// Subscription id.
        sid: u64,
        /// Sequence number (only on newer servers).
        seq: Option<u64>,
        /// Market ticker.
        market: &'a str,
        /// Exchange trade id.
        trade_id: &'a str,
        /// YES price.
        yes_price: Price,
        /// Contracts.
        count: Qty,
        /// `taker_outcome_side`, falling back to the deprecated `taker_side`.
        taker_side: Side,
        /// `is_block_trade` (false when absent).
        block: bool,
        /// `ts_ms` (or `ts` * 1000), if present.
        ts_ms: Option<i64>,
    },
    /// `market_lifecycle_v2` (including `metadata_updated`).
    MarketLifecycle {
        /// Subscription id.
        sid: u64,
        /// Sequence number.
        seq: Option<u64>,
        /// Market ticker.
        market: &'a str,
        /// `event_type` as sent.
        event_type: &'a str,
        /// The `msg` object re-serialized as JSON text.
        detail: String,
    },
    /// `event_lifecycle` and `event_fee_update`: about an event, not a market.
    EventLifecycle {
        /// Subscription id.
        sid: u64,
        /// Sequence number.
        seq: Option<u64>,
        /// Event ticker.
        event_ticker: &'a str,
        /// The message type (`event_lifecycle`, `event_fee_update`).
        msg_type: &'a str,
        /// The `msg` object re-serialized as JSON text.
        detail: String,
    },
    /// A type we do not know. Tolerated and counted; its sid/seq still advance the sequence.
    Unknown {
        /// The `type` as sent.
        msg_type: &'a str,
        /// Subscription id, if present.
        sid: Option<u64>,
        /// Sequence number, if present.
        seq: Option<u64>,
    },
}

/// Kalshi's error codes, with the two that are terminal for a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// 10, "Channel error": the subscription is dead; subscribe again.
    pub const CHANNEL_ERROR: u32 = 10;
    /// 25, "Subscription buffer overflow": the subscription is dead; subscribe again.
    pub const BUFFER_OVERFLOW: u32 = 25;

    /// A terminal error kills the subscription it names: the client must resubscribe.
    pub fn is_terminal(self) -> bool {
        matches!(self.0, Self::CHANNEL_ERROR | Self::BUFFER_OVERFLOW)
    }
}

impl Parser {
    /// Parses one text frame. `buf` is modified in place by simd-json.
    pub fn parse<'a>(&mut self, buf: &'a mut [u8]) -> Result<Frame<'a>, WireError> {
        let _ = buf;
        Err(WireError::Json("parser not written yet".into()))
    }
}
