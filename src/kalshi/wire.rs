//! Server frames of Kalshi's WebSocket, parsed with simd-json.
//!
//! [`Parser::parse`] takes the frame's bytes as a mutable buffer (simd-json parses in place) and
//! returns a [`Frame`] that borrows strings from it. Prices and sizes are exact integers.
//! Unknown message types and unknown fields are tolerated and counted in [`WireStats`], never
//! fatal. A frame that is not JSON, or that lacks a required field, is a [`WireError`].
//!
//! The parser walks simd-json's tape directly: one pass over the top-level keys, one `match` per
//! key of `msg`, and no allocation for the hot types (deltas, tickers, trades) once its scratch
//! buffers have grown to the largest frame seen. Only snapshots (level vectors), `ok` lists and
//! lifecycle frames (their `detail` text) allocate.

use std::fmt::Write as _;

use simd_json::{Buffers, Node, StaticNode, Tape};

use crate::tick::{Price, Qty, Side};

/// Deepest JSON nesting accepted. Kalshi frames nest three or four levels; the limit keeps a
/// hostile frame from costing stack in [`write_json`] and bounds simd-json's own stack.
const MAX_DEPTH: usize = 128;

/// Initial size of the scratch buffers; they grow to the largest frame seen and stay there.
const INITIAL_FRAME_CAPACITY: usize = 4096;

/// Longest excerpt of an offending value kept in a [`WireError::Number`].
const MAX_ERROR_VALUE: usize = 40;

/// Reusable parse state: simd-json scratch buffers and counters of what was tolerated.
pub struct Parser {
    /// Counters of tolerated oddities since creation.
    pub stats: WireStats,
    /// simd-json's stage-1/stage-2 scratch space, reused across frames.
    buffers: Buffers,
    /// The tape of the previous frame, kept empty between calls so its allocation is reused.
    tape: Tape<'static>,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            stats: WireStats::default(),
            buffers: Buffers::with_max_depth(INITIAL_FRAME_CAPACITY, MAX_DEPTH),
            tape: Tape(Vec::with_capacity(256)),
        }
    }
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

    /// Kalshi's name for the code (the protocol digest's table, §4.1), for logs and alerts.
    /// `None` for codes Kalshi has not documented.
    pub fn description(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "Unable to process message",
            2 => "Params required",
            3 => "Channels required",
            4 => "Subscription IDs required",
            5 => "Unknown command",
            6 => "Already subscribed (retired)",
            7 => "Unknown subscription ID",
            8 => "Unknown channel name",
            9 => "Authentication required",
            10 => "Channel error",
            11 => "Invalid parameter",
            12 => "Exactly one subscription ID is required",
            13 => "Unsupported action",
            14 => "Market Ticker required",
            15 => "Action required",
            16 => "Market not found (retired)",
            17 => "Internal error (retired)",
            18 => "Command timeout",
            19 => "shard_factor must be > 0",
            20 => "shard_factor is required when shard_key is set",
            21 => "shard_key must be >= 0 and < shard_factor",
            22 => "shard_factor must be <= 100",
            23 => "Match IDs required",
            24 => "Index IDs required",
            25 => "Subscription buffer overflow",
            26 => "Subscription market limit exceeded",
            27 => "Too many requests",
            28 => "Underlying tickers required",
            _ => return None,
        })
    }
}

impl Frame<'_> {
    /// The `(sid, seq)` pair a sequence tracker should see, when the frame carries both.
    ///
    /// Every frame with a sid and a seq counts, control frames and unknown types included: the
    /// digest (§5.8) says a client must advance its "last seq" from every such frame.
    pub fn sequence(&self) -> Option<(u64, u64)> {
        let (sid, seq) = match *self {
            Frame::Ok { sid, seq, .. } | Frame::Error { sid, seq, .. } => (sid?, seq?),
            Frame::Unknown { sid, seq, .. } => (sid?, seq?),
            Frame::Unsubscribed { sid, seq, .. }
            | Frame::Snapshot { sid, seq, .. }
            | Frame::Delta { sid, seq, .. }
            | Frame::Trade { sid, seq, .. }
            | Frame::MarketLifecycle { sid, seq, .. }
            | Frame::EventLifecycle { sid, seq, .. } => (sid, seq?),
            Frame::Subscribed { .. } | Frame::SubscriptionList { .. } | Frame::Ticker { .. } => {
                return None;
            }
        };
        Some((sid, seq))
    }
}

impl Parser {
    /// Parses one text frame. `buf` is modified in place by simd-json.
    ///
    /// Never panics, whatever the bytes. Strings in the returned frame borrow from `buf`.
    pub fn parse<'a>(&mut self, buf: &'a mut [u8]) -> Result<Frame<'a>, WireError> {
        // Borrow the kept tape allocation for this frame's lifetime; it is emptied and handed
        // back below, so no node of this frame outlives the call.
        let mut tape: Tape<'a> = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let result = match simd_json::fill_tape(buf, &mut self.buffers, &mut tape) {
            Ok(()) => decode(&tape.0, &mut self.stats),
            Err(e) => Err(WireError::Json(e.to_string())),
        };
        self.tape = tape.reset();
        result
    }
}

/// One JSON value on the tape: its first node and every node nested under it.
#[derive(Clone, Copy)]
struct Val<'t, 'a>(&'t [Node<'a>]);

/// The number of tape nodes a value starting with `node` occupies.
#[inline]
fn span(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        Node::String(_) | Node::Static(_) => 1,
    }
}

impl<'t, 'a> Val<'t, 'a> {
    #[inline]
    fn str(self) -> Option<&'a str> {
        match self.0.first() {
            Some(Node::String(s)) => Some(s),
            _ => None,
        }
    }

    #[inline]
    fn u64(self) -> Option<u64> {
        match self.0.first() {
            Some(Node::Static(StaticNode::U64(n))) => Some(*n),
            Some(Node::Static(StaticNode::I64(n))) => u64::try_from(*n).ok(),
            _ => None,
        }
    }

    #[inline]
    fn i64(self) -> Option<i64> {
        match self.0.first() {
            Some(Node::Static(StaticNode::I64(n))) => Some(*n),
            Some(Node::Static(StaticNode::U64(n))) => i64::try_from(*n).ok(),
            _ => None,
        }
    }

    #[inline]
    fn bool(self) -> Option<bool> {
        match self.0.first() {
            Some(Node::Static(StaticNode::Bool(b))) => Some(*b),
            _ => None,
        }
    }

    #[inline]
    fn is_null(self) -> bool {
        matches!(self.0.first(), Some(Node::Static(StaticNode::Null)))
    }

    /// The key/value pairs, if this is an object.
    #[inline]
    fn fields(self) -> Option<Fields<'t, 'a>> {
        match self.0.split_first() {
            Some((Node::Object { len, .. }, rest)) => Some(Fields { rest, left: *len }),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    #[inline]
    fn items(self) -> Option<Items<'t, 'a>> {
        match self.0.split_first() {
            Some((Node::Array { len, .. }, rest)) => Some(Items { rest, left: *len }),
            _ => None,
        }
    }
}

/// Iterator over an object's key/value pairs on the tape.
struct Fields<'t, 'a> {
    rest: &'t [Node<'a>],
    left: usize,
}

impl<'t, 'a> Iterator for Fields<'t, 'a> {
    type Item = (&'a str, Val<'t, 'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // simd-json writes well-formed tapes; `get`/`split_at_checked` only make a malformed
        // one end the iteration instead of panicking.
        let (Node::String(key), after_key) = self.rest.split_first()? else {
            return None;
        };
        let (value, rest) = after_key.split_at_checked(span(after_key.first()?))?;
        self.rest = rest;
        Some((key, Val(value)))
    }
}

/// Iterator over an array's elements on the tape.
struct Items<'t, 'a> {
    rest: &'t [Node<'a>],
    left: usize,
}

impl<'t, 'a> Items<'t, 'a> {
    fn len(&self) -> usize {
        self.left
    }
}

impl<'t, 'a> Iterator for Items<'t, 'a> {
    type Item = Val<'t, 'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (value, rest) = self.rest.split_at_checked(span(self.rest.first()?))?;
        self.rest = rest;
        Some(Val(value))
    }
}

/// The top-level keys every frame may carry, before the `type` says what they mean.
#[derive(Default)]
struct Envelope<'t, 'a> {
    msg_type: Option<Val<'t, 'a>>,
    id: Option<Val<'t, 'a>>,
    sid: Option<Val<'t, 'a>>,
    seq: Option<Val<'t, 'a>>,
    msg: Option<Val<'t, 'a>>,
    sending_ts_ms: Option<Val<'t, 'a>>,
    /// Top-level keys outside the envelope.
    unknown: u64,
}

/// Turns a parsed tape into a frame.
fn decode<'a>(nodes: &[Node<'a>], stats: &mut WireStats) -> Result<Frame<'a>, WireError> {
    let Some(fields) = Val(nodes).fields() else {
        return Err(WireError::Json("frame is not a JSON object".to_owned()));
    };
    let mut env = Envelope::default();
    for (key, value) in fields {
        match key {
            "type" => env.msg_type = Some(value),
            "id" => env.id = Some(value),
            "sid" => env.sid = Some(value),
            "seq" => env.seq = Some(value),
            "msg" => env.msg = Some(value),
            "sending_ts_ms" => env.sending_ts_ms = Some(value),
            _ => env.unknown += 1,
        }
    }
    let Some(msg_type) = env.msg_type.and_then(Val::str) else {
        return Err(WireError::Field { msg_type: "frame".to_owned(), field: "type" });
    };
    let mut cx = Ctx { msg_type, unknown: env.unknown };
    let frame = match msg_type {
        "orderbook_delta" => cx.delta(&env)?,
        "ticker" => cx.ticker(&env)?,
        "trade" => cx.trade(&env)?,
        "orderbook_snapshot" => cx.snapshot(&env)?,
        "subscribed" => cx.subscribed(&env)?,
        "ok" => cx.ok(&env)?,
        "unsubscribed" => cx.unsubscribed(&env)?,
        "error" => cx.error(&env)?,
        "market_lifecycle_v2" => cx.market_lifecycle(&env)?,
        "event_lifecycle" | "event_fee_update" => cx.event_lifecycle(&env)?,
        _ => {
            // Unknown types are kept, not judged: their envelope is read leniently.
            stats.unknown_types += 1;
            return Ok(Frame::Unknown {
                msg_type,
                sid: env.sid.and_then(Val::u64),
                seq: env.seq.and_then(Val::u64),
            });
        }
    };
    stats.unknown_fields += cx.unknown;
    Ok(frame)
}

/// Decoding state of one known message: its type (for errors) and unknown keys seen so far.
struct Ctx<'a> {
    msg_type: &'a str,
    unknown: u64,
}

/// An optional field: absent and `null` both mean "not sent".
#[inline]
fn present<'t, 'a>(v: Option<Val<'t, 'a>>) -> Option<Val<'t, 'a>> {
    v.filter(|v| !v.is_null())
}

impl<'a> Ctx<'a> {
    #[cold]
    #[inline(never)]
    fn field_error(&self, field: &'static str) -> WireError {
        WireError::Field { msg_type: self.msg_type.to_owned(), field }
    }

    #[cold]
    #[inline(never)]
    fn number_error(&self, field: &'static str, text: &str) -> WireError {
        let mut end = text.len().min(MAX_ERROR_VALUE);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        WireError::Number {
            msg_type: self.msg_type.to_owned(),
            field,
            value: text.get(..end).unwrap_or_default().to_owned(),
        }
    }

    /// The `msg` object, required.
    #[inline]
    fn msg<'t>(&self, env: &Envelope<'t, 'a>) -> Result<Fields<'t, 'a>, WireError> {
        env.msg.and_then(Val::fields).ok_or_else(|| self.field_error("msg"))
    }

    #[inline]
    fn string(&self, field: &'static str, v: Option<Val<'_, 'a>>) -> Result<&'a str, WireError> {
        v.and_then(Val::str).ok_or_else(|| self.field_error(field))
    }

    #[inline]
    fn opt_string(&self, field: &'static str, v: Option<Val<'_, 'a>>) -> Result<Option<&'a str>, WireError> {
        present(v).map(|v| self.string(field, Some(v))).transpose()
    }

    #[inline]
    fn uint(&self, field: &'static str, v: Option<Val<'_, 'a>>) -> Result<u64, WireError> {
        v.and_then(Val::u64).ok_or_else(|| self.field_error(field))
    }

    #[inline]
    fn opt_uint(&self, field: &'static str, v: Option<Val<'_, 'a>>) -> Result<Option<u64>, WireError> {
        present(v).map(|v| self.uint(field, Some(v))).transpose()
    }

    #[inline]
    fn int(&self, field: &'static str, v: Option<Val<'_, 'a>>) -> Result<i64, WireError> {
        v.and_then(Val::i64).ok_or_else(|| self.field_error(field))
    }

    #[inline]
    fn opt_int(&self, field: &'static str, v: Option<Val<'_, 'a>>) -> Result<Option<i64>, WireError> {
        present(v).map(|v| self.int(field, Some(v))).transpose()
    }

    /// `ts_ms`, else the deprecated seconds `ts` scaled to ms.
    fn millis(&self, ts_ms: Option<Val<'_, 'a>>, ts: Option<Val<'_, 'a>>) -> Result<Option<i64>, WireError> {
        if let Some(ms) = self.opt_int("ts_ms", ts_ms)? {
            return Ok(Some(ms));
        }
        match self.opt_int("ts", ts)? {
            Some(s) => s.checked_mul(1000).map(Some).ok_or_else(|| self.field_error("ts")),
            None => Ok(None),
        }
    }

    /// A dollar string. Binary contracts trade between $0 and $1, so anything outside is refused
    /// rather than passed on as a price.
    #[inline]
    fn price_text(&self, field: &'static str, text: &str) -> Result<Price, WireError> {
        match Price::parse_dollars(text) {
            Some(p) if (0..=Price::ONE_DOLLAR.0).contains(&p.0) => Ok(p),
            _ => Err(self.number_error(field, text)),
        }
    }

    #[inline]
    fn price(&self, field: &'static str, v: Option<Val<'_, 'a>>) -> Result<Price, WireError> {
        self.price_text(field, self.string(field, v)?)
    }

    /// An optional price. `legacy` says whether the pre-2026-03-12 integer twin was sent: then
    /// the missing `_dollars` field is an error, not an absent price.
    fn opt_price(
        &self,
        field: &'static str,
        v: Option<Val<'_, 'a>>,
        legacy: bool,
    ) -> Result<Option<Price>, WireError> {
        match present(v) {
            Some(v) => self.price(field, Some(v)).map(Some),
            None if legacy => Err(self.field_error(field)),
            None => Ok(None),
        }
    }

    /// A contract count; only book deltas may be negative.
    #[inline]
    fn qty_text(&self, field: &'static str, text: &str, signed: bool) -> Result<Qty, WireError> {
        match Qty::parse_fp(text) {
            Some(q) if signed || q.0 >= 0 => Ok(q),
            _ => Err(self.number_error(field, text)),
        }
    }

    #[inline]
    fn qty(&self, field: &'static str, v: Option<Val<'_, 'a>>) -> Result<Qty, WireError> {
        self.qty_text(field, self.string(field, v)?, false)
    }

    #[inline]
    fn side(&self, field: &'static str, v: Val<'_, 'a>) -> Result<Side, WireError> {
        match v.str() {
            Some("yes") => Ok(Side::Yes),
            Some("no") => Ok(Side::No),
            _ => Err(self.field_error(field)),
        }
    }

    /// A book ladder: an array of `[price_dollars, count_fp]` string pairs.
    fn levels(&self, field: &'static str, v: Option<Val<'_, 'a>>) -> Result<Vec<(Price, Qty)>, WireError> {
        let Some(v) = present(v) else {
            return Ok(Vec::new());
        };
        let items = v.items().ok_or_else(|| self.field_error(field))?;
        let mut levels = Vec::with_capacity(items.len());
        for level in items {
            let mut pair = level.items().ok_or_else(|| self.field_error(field))?;
            let (Some(price), Some(count), None) = (pair.next(), pair.next(), pair.next()) else {
                return Err(self.field_error(field));
            };
            let price = self.price(field, Some(price))?;
            let count = self.qty_text(field, self.string(field, Some(count))?, false)?;
            levels.push((price, count));
        }
        Ok(levels)
    }

    fn delta(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let (mut market, mut price, mut delta, mut side, mut ts_ms) = (None, None, None, None, None);
        for (key, value) in self.msg(env)? {
            match key {
                "market_ticker" => market = Some(value),
                "price_dollars" => price = Some(value),
                "delta_fp" => delta = Some(value),
                "side" => side = Some(value),
                "ts_ms" => ts_ms = Some(value),
                // `ts` is the deprecated RFC 3339 twin of `ts_ms`; the rest are about our own
                // orders and not market data.
                "market_id" | "ts" | "client_order_id" | "subaccount" => {}
                _ => self.unknown += 1,
            }
        }
        let sending_ts_ms = self.opt_int("sending_ts_ms", env.sending_ts_ms)?;
        Ok(Frame::Delta {
            sid: self.uint("sid", env.sid)?,
            seq: self.opt_uint("seq", env.seq)?,
            market: self.string("market_ticker", market)?,
            side: self.side("side", side.ok_or_else(|| self.field_error("side"))?)?,
            price: self.price("price_dollars", price)?,
            delta: self.qty_text("delta_fp", self.string("delta_fp", delta)?, true)?,
            ts_ms: self.opt_int("ts_ms", ts_ms)?.or(sending_ts_ms),
        })
    }

    fn ticker(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let mut market = None;
        let (mut price, mut yes_bid, mut yes_ask) = (None, None, None);
        let (mut bid_size, mut ask_size, mut last_size) = (None, None, None);
        let (mut volume, mut open_interest) = (None, None);
        let (mut dollar_volume, mut dollar_open_interest) = (None, None);
        let (mut ts_ms, mut ts) = (None, None);
        // Which legacy integer prices were sent (see `opt_price`).
        let (mut legacy_price, mut legacy_bid, mut legacy_ask) = (false, false, false);
        for (key, value) in self.msg(env)? {
            match key {
                "market_ticker" => market = Some(value),
                "price_dollars" => price = Some(value),
                "yes_bid_dollars" => yes_bid = Some(value),
                "yes_ask_dollars" => yes_ask = Some(value),
                "yes_bid_size_fp" => bid_size = Some(value),
                "yes_ask_size_fp" => ask_size = Some(value),
                "last_trade_size_fp" => last_size = Some(value),
                "volume_fp" => volume = Some(value),
                "open_interest_fp" => open_interest = Some(value),
                "dollar_volume" => dollar_volume = Some(value),
                "dollar_open_interest" => dollar_open_interest = Some(value),
                "ts_ms" => ts_ms = Some(value),
                "ts" => ts = Some(value),
                "market_id" | "time" => {}
                "price" => {
                    legacy_price = true;
                    self.unknown += 1;
                }
                "yes_bid" => {
                    legacy_bid = true;
                    self.unknown += 1;
                }
                "yes_ask" => {
                    legacy_ask = true;
                    self.unknown += 1;
                }
                _ => self.unknown += 1,
            }
        }
        Ok(Frame::Ticker {
            sid: self.uint("sid", env.sid)?,
            market: self.string("market_ticker", market)?,
            price: self.opt_price("price_dollars", price, legacy_price)?,
            yes_bid: self.opt_price("yes_bid_dollars", yes_bid, legacy_bid)?,
            yes_ask: self.opt_price("yes_ask_dollars", yes_ask, legacy_ask)?,
            yes_bid_size: self.qty("yes_bid_size_fp", bid_size)?,
            yes_ask_size: self.qty("yes_ask_size_fp", ask_size)?,
            last_trade_size: self.qty("last_trade_size_fp", last_size)?,
            volume: self.qty("volume_fp", volume)?,
            open_interest: self.qty("open_interest_fp", open_interest)?,
            dollar_volume: self.int("dollar_volume", dollar_volume)?,
            dollar_open_interest: self.int("dollar_open_interest", dollar_open_interest)?,
            ts_ms: self.millis(ts_ms, ts)?,
        })
    }

    fn trade(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let (mut market, mut trade_id, mut yes_price, mut count) = (None, None, None, None);
        let (mut outcome_side, mut old_side, mut book_side) = (None, None, None);
        let (mut block, mut ts_ms, mut ts) = (None, None, None);
        for (key, value) in self.msg(env)? {
            match key {
                "market_ticker" => market = Some(value),
                "trade_id" => trade_id = Some(value),
                "yes_price_dollars" => yes_price = Some(value),
                "count_fp" => count = Some(value),
                "taker_outcome_side" => outcome_side = Some(value),
                "taker_side" => old_side = Some(value),
                "taker_book_side" => book_side = Some(value),
                "is_block_trade" => block = Some(value),
                "ts_ms" => ts_ms = Some(value),
                "ts" => ts = Some(value),
                // The complement of the YES price; the tick keeps the YES scale only.
                "no_price_dollars" | "market_id" => {}
                _ => self.unknown += 1,
            }
        }
        // The canonical field first, then its deprecated twin, then the book-side spelling of
        // the same bit (`bid` is a YES taker, `ask` a NO taker).
        let taker_side = if let Some(v) = present(outcome_side) {
            self.side("taker_outcome_side", v)?
        } else if let Some(v) = present(old_side) {
            self.side("taker_side", v)?
        } else {
            match present(book_side).map(Val::str) {
                Some(Some("bid")) => Side::Yes,
                Some(Some("ask")) => Side::No,
                Some(_) => return Err(self.field_error("taker_book_side")),
                None => return Err(self.field_error("taker_outcome_side")),
            }
        };
        let block = match present(block) {
            Some(v) => v.bool().ok_or_else(|| self.field_error("is_block_trade"))?,
            None => false,
        };
        Ok(Frame::Trade {
            sid: self.uint("sid", env.sid)?,
            seq: self.opt_uint("seq", env.seq)?,
            market: self.string("market_ticker", market)?,
            trade_id: self.string("trade_id", trade_id)?,
            yes_price: self.price("yes_price_dollars", yes_price)?,
            count: self.qty("count_fp", count)?,
            taker_side,
            block,
            ts_ms: self.millis(ts_ms, ts)?,
        })
    }

    fn snapshot(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let (mut market, mut yes, mut no) = (None, None, None);
        // Legacy ladders (`yes`/`yes_dollars`...) without their `_dollars_fp` twin must not read
        // as an empty side: that would be a wrong book.
        let (mut legacy_yes, mut legacy_no) = (false, false);
        for (key, value) in self.msg(env)? {
            match key {
                "market_ticker" => market = Some(value),
                "yes_dollars_fp" => yes = Some(value),
                "no_dollars_fp" => no = Some(value),
                "market_id" => {}
                "yes" | "yes_dollars" => {
                    legacy_yes = true;
                    self.unknown += 1;
                }
                "no" | "no_dollars" => {
                    legacy_no = true;
                    self.unknown += 1;
                }
                _ => self.unknown += 1,
            }
        }
        if legacy_yes && yes.is_none() {
            return Err(self.field_error("yes_dollars_fp"));
        }
        if legacy_no && no.is_none() {
            return Err(self.field_error("no_dollars_fp"));
        }
        Ok(Frame::Snapshot {
            id: self.opt_uint("id", env.id)?,
            sid: self.uint("sid", env.sid)?,
            seq: self.opt_uint("seq", env.seq)?,
            market: self.string("market_ticker", market)?,
            yes: self.levels("yes_dollars_fp", yes)?,
            no: self.levels("no_dollars_fp", no)?,
            sending_ts_ms: self.opt_int("sending_ts_ms", env.sending_ts_ms)?,
        })
    }

    fn subscribed(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let (mut channel, mut sid) = (None, None);
        for (key, value) in self.msg(env)? {
            match key {
                "channel" => channel = Some(value),
                "sid" => sid = Some(value),
                _ => self.unknown += 1,
            }
        }
        Ok(Frame::Subscribed {
            id: self.opt_uint("id", env.id)?,
            channel: self.string("channel", channel)?,
            sid: self.uint("sid", sid)?,
        })
    }

    fn ok(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let id = self.opt_uint("id", env.id)?;
        let msg = present(env.msg);
        // `list_subscriptions` answers with the same type; only the array tells it apart.
        if let Some(list) = msg.and_then(Val::items) {
            let mut subscriptions = Vec::with_capacity(list.len());
            for entry in list {
                let (mut channel, mut sid) = (None, None);
                for (key, value) in entry.fields().ok_or_else(|| self.field_error("msg"))? {
                    match key {
                        "channel" => channel = Some(value),
                        "sid" => sid = Some(value),
                        _ => self.unknown += 1,
                    }
                }
                subscriptions.push((self.string("channel", channel)?, self.uint("sid", sid)?));
            }
            return Ok(Frame::SubscriptionList { id, subscriptions });
        }
        let mut market_tickers = None;
        if let Some(msg) = msg {
            let mut tickers = None;
            for (key, value) in msg.fields().ok_or_else(|| self.field_error("msg"))? {
                match key {
                    "market_tickers" => tickers = present(Some(value)),
                    // Other filters' acknowledgements: not ours to track.
                    "market_ids" | "index_ids" | "underlying_tickers" => {}
                    _ => self.unknown += 1,
                }
            }
            if let Some(tickers) = tickers {
                let items = tickers.items().ok_or_else(|| self.field_error("market_tickers"))?;
                let mut list = Vec::with_capacity(items.len());
                for ticker in items {
                    list.push(self.string("market_tickers", Some(ticker))?);
                }
                market_tickers = Some(list);
            }
        }
        Ok(Frame::Ok {
            id,
            sid: self.opt_uint("sid", env.sid)?,
            seq: self.opt_uint("seq", env.seq)?,
            market_tickers,
        })
    }

    fn unsubscribed(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        Ok(Frame::Unsubscribed {
            id: self.opt_uint("id", env.id)?,
            sid: self.uint("sid", env.sid)?,
            seq: self.opt_uint("seq", env.seq)?,
        })
    }

    fn error(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let (mut code, mut text, mut market) = (None, None, None);
        for (key, value) in self.msg(env)? {
            match key {
                "code" => code = Some(value),
                "msg" => text = Some(value),
                "market_ticker" => market = Some(value),
                "market_tickers" | "market_id" | "market_ids" => {}
                _ => self.unknown += 1,
            }
        }
        let code = self.uint("code", code)?;
        Ok(Frame::Error {
            id: self.opt_uint("id", env.id)?,
            sid: self.opt_uint("sid", env.sid)?,
            seq: self.opt_uint("seq", env.seq)?,
            code: u32::try_from(code).map_err(|_| self.field_error("code"))?,
            msg: self.string("msg", text)?,
            market_ticker: self.opt_string("market_ticker", market)?,
        })
    }

    fn market_lifecycle(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let (mut market, mut event_type) = (None, None);
        for (key, value) in self.msg(env)? {
            match key {
                "market_ticker" => market = Some(value),
                "event_type" => event_type = Some(value),
                // Kept whole in `detail`; listed so that only new keys count as unknown.
                "exchange_index"
                | "open_ts"
                | "close_ts"
                | "determination_ts"
                | "result"
                | "settlement_value"
                | "settled_ts"
                | "is_deactivated"
                | "additional_metadata"
                | "price_level_structure"
                | "price_ranges"
                | "strike_type"
                | "floor_strike"
                | "cap_strike"
                | "custom_strike"
                | "yes_sub_title"
                | "market_id" => {}
                _ => self.unknown += 1,
            }
        }
        Ok(Frame::MarketLifecycle {
            sid: self.uint("sid", env.sid)?,
            seq: self.opt_uint("seq", env.seq)?,
            market: self.string("market_ticker", market)?,
            event_type: self.string("event_type", event_type)?,
            detail: self.detail(env),
        })
    }

    fn event_lifecycle(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let mut event = None;
        for (key, value) in self.msg(env)? {
            match key {
                "event_ticker" => event = Some(value),
                "exchange_index"
                | "title"
                | "subtitle"
                | "collateral_return_type"
                | "series_ticker"
                | "strike_date"
                | "strike_period"
                | "fee_type_override"
                | "fee_multiplier_override" => {}
                _ => self.unknown += 1,
            }
        }
        Ok(Frame::EventLifecycle {
            sid: self.uint("sid", env.sid)?,
            seq: self.opt_uint("seq", env.seq)?,
            event_ticker: self.string("event_ticker", event)?,
            msg_type: self.msg_type,
            detail: self.detail(env),
        })
    }

    /// The `msg` object as compact JSON text (callers checked that it is an object).
    fn detail(&self, env: &Envelope<'_, 'a>) -> String {
        let mut out = String::new();
        if let Some(msg) = env.msg {
            write_json(msg, &mut out);
        }
        out
    }
}

/// Writes a tape value as compact JSON. Recursion is bounded by [`MAX_DEPTH`].
fn write_json(v: Val<'_, '_>, out: &mut String) {
    // `write!` into a `String` cannot fail; its `fmt::Result` is always `Ok`.
    match v.0.first() {
        Some(Node::String(s)) => write_json_str(s, out),
        Some(Node::Static(StaticNode::Null)) | None => out.push_str("null"),
        Some(Node::Static(StaticNode::Bool(b))) => out.push_str(if *b { "true" } else { "false" }),
        Some(Node::Static(StaticNode::I64(n))) => {
            let _ = write!(out, "{n}");
        }
        Some(Node::Static(StaticNode::U64(n))) => {
            let _ = write!(out, "{n}");
        }
        // Rust prints the shortest text that reads back as the same f64, never in exponent form
        // and never NaN or infinite (JSON cannot express those), so the output is valid JSON.
        Some(Node::Static(StaticNode::F64(f))) => {
            let _ = write!(out, "{f}");
        }
        Some(Node::Object { .. }) => {
            out.push('{');
            for (i, (key, value)) in v.fields().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_str(key, out);
                out.push(':');
                write_json(value, out);
            }
            out.push('}');
        }
        Some(Node::Array { .. }) => {
            out.push('[');
            for (i, item) in v.items().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
    }
}

/// Writes a JSON string literal, escaping what RFC 8259 requires.
fn write_json_str(s: &str, out: &mut String) {
    out.push('"');
    let mut plain = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if c < ' ' => "",
            _ => continue,
        };
        out.push_str(s.get(plain..i).unwrap_or_default());
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push_str(escape);
        }
        plain = i + c.len_utf8();
    }
    out.push_str(s.get(plain..).unwrap_or_default());
    out.push('"');
}
