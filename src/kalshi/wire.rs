//! Server frames of Kalshi's WebSocket, parsed with simd-json.
//!
//! [`Parser::parse_buf`] parses a frame copied into a padded [`FrameBuf`] (the feed's path:
//! the received text stays untouched for logs) and [`Parser::parse`] a mutable buffer in
//! place; both return a [`Frame`] that borrows strings from the buffer. Prices and sizes are
//! exact integers.
//!
//! What the parser insists on is only what identifies a message and the fact it carries:
//! `type`; `sid` on subscription data; the market (or event) on market data; a trade's id,
//! price and count; a delta's side, price and delta; a lifecycle message's event. Everything
//! else is optional. Absent, `null` and `""` all mean "not given" (`None`), never zero, and an
//! optional field whose value cannot be read is taken as not given and reported as a [`Note`]:
//! a field tickd does not need is never a reason to drop a message.
//!
//! Both protocol eras are read: the fixed-point fields (`*_dollars`, `*_fp`) first, the legacy
//! integer fields of the pre-2026-03-12 protocol (cents, whole contracts) only when the
//! fixed-point twin is not given. Hybrid-era frames carry the same value up to three times;
//! one is read, they are never added. Dollar strings may have any number of decimals down to
//! $0.0001 and sizes down to 0.01 contract; anything finer, or out of range, is refused rather
//! than rounded.
//!
//! Unknown message types and unknown fields are tolerated, counted in [`WireStats`] and named
//! in [`Note`]s. A frame that is not JSON, or a known message without what identifies it, is a
//! [`WireError`] with a machine-readable [`WireError::reason`].
//!
//! The parser walks simd-json's tape directly: one pass over the top-level keys, one `match`
//! per key of `msg`, and no allocation for the hot types (deltas, tickers, trades) once its
//! scratch buffers have grown to the largest frame seen. Only snapshots (level vectors), `ok`
//! lists and lifecycle frames (their `detail` text) allocate.

use std::borrow::Cow;
use std::fmt::Write as _;

use simd_json::{Buffers, ErrorType, Node, StaticNode, Tape};

use crate::tick::{Price, Qty, Quote, Side, parse_fixed, parse_rfc3339_millis};

/// Deepest JSON nesting accepted. Kalshi frames nest three or four levels; the limit keeps a
/// hostile frame from costing stack in [`write_json`] and bounds simd-json's own stack.
const MAX_DEPTH: usize = 128;

/// Initial size of the scratch buffers; they grow to the largest frame seen and stay there.
const INITIAL_FRAME_CAPACITY: usize = 4096;

/// Longest excerpt of an offending value kept in a [`WireError::Value`].
const MAX_ERROR_VALUE: usize = 40;

/// Reusable parse state: simd-json scratch buffers and counters of what was tolerated.
pub struct Parser {
    /// Counters of tolerated oddities since creation.
    pub stats: WireStats,
    /// simd-json's stage-1/stage-2 scratch space, reused across frames.
    buffers: Buffers,
    /// The tape of the previous frame, kept empty between calls so its allocation is reused.
    tape: Tape<'static>,
    /// Notes of [`Parser::parse`], kept empty between calls so their allocation is reused.
    notes: Vec<Note<'static>>,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            stats: WireStats::default(),
            buffers: Buffers::with_max_depth(INITIAL_FRAME_CAPACITY, MAX_DEPTH),
            tape: Tape(Vec::with_capacity(256)),
            notes: Vec::new(),
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
    /// Optional fields whose value could not be read and was taken as not given.
    pub invalid_fields: u64,
}

/// A field the parser set aside, named for whoever counts and logs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Note<'a> {
    /// The message type it was found in.
    pub msg_type: &'a str,
    /// The field's name (its key, top-level or inside `msg`).
    pub field: &'a str,
    /// What was wrong with it.
    pub kind: NoteKind,
}

/// Why a field was set aside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoteKind {
    /// A field this version does not know: ignored.
    Unknown,
    /// An optional field whose value could not be read: taken as not given.
    Invalid,
}

/// An empty note list on `notes`' allocation, for frames of another lifetime.
#[allow(clippy::unnecessary_filter_map)]
pub fn recycle_notes<'b>(mut notes: Vec<Note<'_>>) -> Vec<Note<'b>> {
    notes.clear();
    // Collecting an empty iterator in place keeps the allocation (same size and alignment);
    // `filter_map` because the element's lifetime changes, which `filter` cannot do.
    notes.into_iter().filter_map(|_| None).collect()
}

/// One frame's bytes followed by the padding simd-json may read past the end, so that the
/// parser neither copies the frame again nor touches the text it was copied from.
#[derive(Debug, Default)]
pub struct FrameBuf {
    bytes: Vec<u8>,
    len: usize,
}

impl FrameBuf {
    /// Copies `text` in, replacing the previous frame; the allocation is reused.
    pub fn load(&mut self, text: &[u8]) {
        let padded = text.len() + simd_json::INPUT_PADDING;
        self.bytes.clear();
        self.bytes.reserve(padded);
        self.bytes.extend_from_slice(text);
        self.bytes.resize(padded, 0);
        self.len = text.len();
    }

    /// A buffer holding `text`.
    pub fn from_text(text: &[u8]) -> FrameBuf {
        let mut buf = FrameBuf::default();
        buf.load(text);
        buf
    }
}

/// Why a frame could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The bytes are not valid UTF-8.
    #[error("not valid UTF-8")]
    Utf8,
    /// Not valid JSON.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// Valid JSON, but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// A required field is absent, `null` or `""`.
    #[error("{msg_type}: required field `{field}` not given")]
    Missing {
        /// The message type being parsed (`frame` before the type is known).
        msg_type: String,
        /// The field.
        field: &'static str,
    },
    /// A required field has the wrong JSON type.
    #[error("{msg_type}: field `{field}` has the wrong JSON type")]
    WrongType {
        /// The message type being parsed.
        msg_type: String,
        /// The field.
        field: &'static str,
    },
    /// A required field's value cannot be used: a price or size that is not an exact number in
    /// our units or is out of range, or a side that is neither `yes` nor `no`.
    #[error("{msg_type}: field `{field}` is not a valid value: {value:?}")]
    Value {
        /// The message type being parsed.
        msg_type: String,
        /// The field.
        field: &'static str,
        /// The text received, shortened.
        value: String,
    },
    /// A required name (ticker, trade id, event) holds control characters, which no name does
    /// and PostgreSQL cannot store.
    #[error("{msg_type}: field `{field}` holds control characters")]
    Text {
        /// The message type being parsed.
        msg_type: String,
        /// The field.
        field: &'static str,
    },
}

impl WireError {
    /// A short machine-readable reason: the `reason` label of `/metrics` and of kept frames,
    /// one of [`crate::telemetry::metrics::REJECT_REASONS`].
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::Utf8 => "invalid_utf8",
            WireError::Json(_) => "malformed_json",
            WireError::NotObject => "not_an_object",
            WireError::Missing { .. } => "missing_field",
            WireError::WrongType { .. } => "wrong_type",
            WireError::Value { .. } => "bad_value",
            WireError::Text { .. } => "bad_text",
        }
    }
}

/// One server frame. Strings borrow from the parse buffer.
///
/// Prices are as on the wire: NO-side book prices follow the subscription's `use_yes_price`
/// convention, which the frame does not say; the session converts.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `subscribed`: one per channel of a successful `subscribe`. Channel and sid are read from
    /// `msg` or, failing that, the top level; either may be missing.
    Subscribed {
        /// The command id echoed.
        id: Option<u64>,
        /// Channel name.
        channel: Option<&'a str>,
        /// The new subscription id.
        sid: Option<u64>,
    },
    /// `ok` acknowledging `update_subscription` (object `msg`, or none).
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
        sid: Option<u64>,
        /// Sequence number, if present.
        seq: Option<u64>,
    },
    /// `error`: a command failed, or a live subscription broke (codes 10, 25). Code and text
    /// are read from `msg` or, as some servers send them, the top level (`code`, `message`).
    Error {
        /// The command id echoed, absent for unparseable commands and async errors.
        id: Option<u64>,
        /// Subscription concerned, if any.
        sid: Option<u64>,
        /// Sequence number, if present.
        seq: Option<u64>,
        /// Kalshi's error code (see [`ErrorCode`]), if sent.
        code: Option<u32>,
        /// The server's text, if sent.
        msg: Option<&'a str>,
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
        /// YES bids as sent (empty when the side is not given).
        yes: Vec<(Price, Qty)>,
        /// NO bids as sent (empty when the side is not given).
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
        /// The exchange's time in ms: `ts_ms`, else `ts`, else `sending_ts_ms`.
        ts_ms: Option<i64>,
    },
    /// `ticker` (never sequenced).
    Ticker {
        /// Subscription id.
        sid: u64,
        /// Market ticker.
        market: &'a str,
        /// Every other field, each `None` when not given.
        quote: Quote,
        /// The exchange's time in ms: `ts_ms`, else `ts`, else `time`, else `sending_ts_ms`.
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
        /// YES price (the complement of the NO price when only that was sent).
        yes_price: Price,
        /// Contracts.
        count: Qty,
        /// `taker_outcome_side`, else the deprecated `taker_side`, else `taker_book_side`.
        taker_side: Option<Side>,
        /// `is_block_trade`, if sent.
        block: Option<bool>,
        /// The exchange's time in ms: `ts_ms`, else `ts`, else `sending_ts_ms`.
        ts_ms: Option<i64>,
    },
    /// `market_lifecycle_v2` (including `metadata_updated`) and
    /// `multivariate_market_lifecycle`.
    MarketLifecycle {
        /// The message type.
        msg_type: &'a str,
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
            Frame::Ok { sid, seq, .. }
            | Frame::Error { sid, seq, .. }
            | Frame::Unknown { sid, seq, .. }
            | Frame::Unsubscribed { sid, seq, .. } => (sid?, seq?),
            Frame::Snapshot { sid, seq, .. }
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

    /// The subscription id of a data frame (market data and lifecycle), which only a
    /// subscription of ours may deliver.
    pub fn data_sid(&self) -> Option<u64> {
        match *self {
            Frame::Snapshot { sid, .. }
            | Frame::Delta { sid, .. }
            | Frame::Ticker { sid, .. }
            | Frame::Trade { sid, .. }
            | Frame::MarketLifecycle { sid, .. }
            | Frame::EventLifecycle { sid, .. } => Some(sid),
            _ => None,
        }
    }
}

impl Parser {
    /// Parses one text frame in place: `buf` is modified by simd-json (escaped strings are
    /// unescaped where they stand). Never panics, whatever the bytes. Strings in the returned
    /// frame borrow from `buf`.
    pub fn parse<'a>(&mut self, buf: &'a mut [u8]) -> Result<Frame<'a>, WireError> {
        let mut notes = recycle_notes(std::mem::take(&mut self.notes));
        let result = self.parse_noting(buf, &mut notes);
        self.notes = recycle_notes(notes);
        result
    }

    /// [`Parser::parse`], naming every field set aside in `notes` (appended).
    pub fn parse_noting<'a>(
        &mut self,
        buf: &'a mut [u8],
        notes: &mut Vec<Note<'a>>,
    ) -> Result<Frame<'a>, WireError> {
        // Borrow the kept tape allocation for this frame's lifetime; it is emptied and handed
        // back below, so no node of this frame outlives the call.
        let mut tape: Tape<'a> = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let result = match simd_json::fill_tape(buf, &mut self.buffers, &mut tape) {
            Ok(()) => decode(&tape.0, &mut self.stats, notes),
            Err(e) => Err(json_error(&e)),
        };
        self.tape = tape.reset();
        result
    }

    /// Parses the frame in `buf` (see [`FrameBuf`]), naming every field set aside in `notes`
    /// (appended). Never panics, whatever the bytes.
    pub fn parse_buf<'a>(
        &mut self,
        buf: &'a mut FrameBuf,
        notes: &mut Vec<Note<'a>>,
    ) -> Result<Frame<'a>, WireError> {
        let mut tape: Tape<'a> = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let len = buf.len;
        let result = match simd_json::fill_tape_padded(&mut buf.bytes, len, &mut self.buffers, &mut tape) {
            Ok(()) => decode(&tape.0, &mut self.stats, notes),
            Err(e) => Err(json_error(&e)),
        };
        self.tape = tape.reset();
        result
    }
}

impl Parser {
    /// Parses one frame as received, the feed's path: the common shapes (an object of
    /// scalars with a `msg` object of scalars, no escaped string, no fraction or exponent:
    /// deltas, tickers, trades) straight from `text` with [`scan_flat`], everything else with
    /// simd-json from a padded copy in `buf`. Both give the same frame, notes and counts for
    /// the same text; `text` is never changed. Never panics, whatever the bytes.
    pub fn parse_frame<'a>(
        &mut self,
        text: &'a [u8],
        buf: &'a mut FrameBuf,
        notes: &mut Vec<Note<'a>>,
    ) -> Result<Frame<'a>, WireError> {
        let mut tape: Tape<'a> = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let result = if scan_flat(text, &mut tape.0).is_some() {
            Some(decode(&tape.0, &mut self.stats, notes))
        } else {
            None
        };
        self.tape = tape.reset();
        match result {
            Some(result) => result,
            None => {
                buf.load(text);
                self.parse_buf(buf, notes)
            }
        }
    }
}

/// Writes the tape of `text` into `tape` without simd-json when the text is one JSON object
/// whose values are scalars or objects of scalars, with no escaped string and no number with
/// a fraction or an exponent: the shape of nearly every market-data frame. The tape is node
/// for node the one simd-json writes for the same text (a test compares them over every
/// fixture and thousands of mutations of them). `None` for anything else, valid or not: the
/// general path then parses it, or says what is wrong with it.
fn scan_flat<'a>(text: &'a [u8], tape: &mut Vec<Node<'a>>) -> Option<()> {
    // One UTF-8 check for the whole text (fast for ASCII); strings are then sliced from it.
    let s = std::str::from_utf8(text).ok()?;
    let t = s.as_bytes();
    tape.clear();
    let mut i = skip_ws(t, 0);
    if t.get(i) != Some(&b'{') {
        return None;
    }
    i = scan_object(s, i, tape, false)?;
    (skip_ws(t, i) == t.len()).then_some(())
}

#[inline]
fn skip_ws(t: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = t.get(i) {
        i += 1;
    }
    i
}

/// The object at `s[i]` (`{`), its nodes pushed; the index after it.
fn scan_object<'a>(s: &'a str, mut i: usize, tape: &mut Vec<Node<'a>>, nested: bool) -> Option<usize> {
    let t = s.as_bytes();
    let start = tape.len();
    tape.push(Node::Object { len: 0, count: 0 });
    i = skip_ws(t, i + 1);
    let mut len = 0;
    if t.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if t.get(i) != Some(&b'"') {
                return None;
            }
            let (key, after) = scan_string(s, i)?;
            tape.push(Node::String(key));
            i = skip_ws(t, after);
            if t.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(t, i + 1);
            i = match *t.get(i)? {
                b'"' => {
                    let (value, after) = scan_string(s, i)?;
                    tape.push(Node::String(value));
                    after
                }
                b'{' if !nested => scan_object(s, i, tape, true)?,
                b'-' | b'0'..=b'9' => {
                    let (number, after) = scan_integer(t, i)?;
                    tape.push(Node::Static(number));
                    after
                }
                b't' if t.get(i..i + 4) == Some(b"true") => {
                    tape.push(Node::Static(StaticNode::Bool(true)));
                    i + 4
                }
                b'f' if t.get(i..i + 5) == Some(b"false") => {
                    tape.push(Node::Static(StaticNode::Bool(false)));
                    i + 5
                }
                b'n' if t.get(i..i + 4) == Some(b"null") => {
                    tape.push(Node::Static(StaticNode::Null));
                    i + 4
                }
                _ => return None,
            };
            len += 1;
            i = skip_ws(t, i);
            match t.get(i)? {
                b',' => i = skip_ws(t, i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    let count = tape.len() - start - 1;
    if let Some(node) = tape.get_mut(start) {
        *node = Node::Object { len, count };
    }
    Some(i)
}

/// The string at `s[i]` (its opening quote) and the index after it; `None` when it holds an
/// escape or a control character (the general path unescapes, or refuses, those).
#[inline]
fn scan_string(s: &str, i: usize) -> Option<(&str, usize)> {
    let t = s.as_bytes();
    let start = i + 1;
    let mut end = start;
    // Eight bytes at a time: most strings end in their first or second word.
    while let Some(word) = t.get(end..end + 8) {
        let found = string_stop(u64::from_le_bytes(word.try_into().ok()?));
        if found != 0 {
            end += (found.trailing_zeros() / 8) as usize;
            break;
        }
        end += 8;
    }
    while let Some(&b) = t.get(end) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        end += 1;
    }
    if t.get(end) != Some(&b'"') {
        return None;
    }
    // Both ends are at ASCII quotes, so they are character boundaries.
    Some((s.get(start..end)?, end + 1))
}

/// The bytes of `word` (little-endian) that end a plain string: `"`, `\\` or a control
/// character, each marked by its high bit. Bits above the first mark may be wrong; only the
/// lowest is read.
#[inline]
fn string_stop(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    zero(word ^ (ONES * u64::from(b'"')))
        | zero(word ^ (ONES * u64::from(b'\\')))
        | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS)
}

/// The integer at `t[i]`, as simd-json writes it (`U64` unless negative); `None` for a
/// fraction, an exponent, a leading zero, or a value beyond 64 bits.
#[inline]
fn scan_integer(t: &[u8], mut i: usize) -> Option<(StaticNode, usize)> {
    let negative = t.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let first = i;
    let mut n: u64 = 0;
    while let Some(&d @ b'0'..=b'9') = t.get(i) {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    let digits = i - first;
    if digits == 0 || (digits > 1 && t[first] == b'0') || matches!(t.get(i), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    let node = if negative {
        match n {
            0..=0x7fff_ffff_ffff_ffff => StaticNode::I64(-(n as i64)),
            0x8000_0000_0000_0000 => StaticNode::I64(i64::MIN),
            _ => return None,
        }
    } else {
        StaticNode::U64(n)
    };
    Some((node, i))
}

#[cold]
fn json_error(e: &simd_json::Error) -> WireError {
    match e.error() {
        ErrorType::InvalidUtf8 => WireError::Utf8,
        _ => WireError::Json(e.to_string()),
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
    fn node(self) -> Option<&'t Node<'a>> {
        self.0.first()
    }

    #[inline]
    fn str(self) -> Option<&'a str> {
        match self.node() {
            Some(Node::String(s)) => Some(s),
            _ => None,
        }
    }

    /// Not given: `null` or `""`.
    #[inline]
    fn is_blank(self) -> bool {
        match self.node() {
            Some(Node::Static(StaticNode::Null)) => true,
            Some(Node::String(s)) => s.is_empty(),
            _ => false,
        }
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

    #[inline]
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

    #[inline]
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

/// What is wrong with a value, before it is known which field it was.
enum Bad<'a> {
    /// The wrong JSON type.
    Type,
    /// The right type, an unusable value (shown as sent).
    Value(Cow<'a, str>),
    /// A name with control characters.
    Text,
}

/// A value reader: a JSON value to what tickd keeps.
type Conv<'t, 'a, T> = fn(Val<'t, 'a>) -> Result<T, Bad<'a>>;

/// The value as text, for an error message.
#[cold]
fn shown<'a>(v: Val<'_, 'a>) -> Cow<'a, str> {
    match v.node() {
        Some(Node::String(s)) => Cow::Borrowed(s),
        Some(Node::Static(StaticNode::I64(n))) => Cow::Owned(n.to_string()),
        Some(Node::Static(StaticNode::U64(n))) => Cow::Owned(n.to_string()),
        Some(Node::Static(StaticNode::F64(f))) => Cow::Owned(f.to_string()),
        _ => Cow::Borrowed(""),
    }
}

/// A non-negative integer (ids, sids, sequence numbers).
#[inline]
fn to_u64<'a>(v: Val<'_, 'a>) -> Result<u64, Bad<'a>> {
    match v.node() {
        Some(Node::Static(StaticNode::U64(n))) => Ok(*n),
        Some(Node::Static(StaticNode::I64(n))) => u64::try_from(*n).map_err(|_| Bad::Value(shown(v))),
        _ => Err(Bad::Type),
    }
}

/// A signed integer (milliseconds, whole dollars).
#[inline]
fn to_i64<'a>(v: Val<'_, 'a>) -> Result<i64, Bad<'a>> {
    match v.node() {
        Some(Node::Static(StaticNode::I64(n))) => Ok(*n),
        Some(Node::Static(StaticNode::U64(n))) => i64::try_from(*n).map_err(|_| Bad::Value(shown(v))),
        _ => Err(Bad::Type),
    }
}

/// A signed integer, or a string of one (whole-dollar notionals).
fn to_int<'a>(v: Val<'_, 'a>) -> Result<i64, Bad<'a>> {
    match v.node() {
        Some(Node::String(s)) => parse_fixed(s.as_bytes(), 0).ok_or(Bad::Value(Cow::Borrowed(s))),
        _ => to_i64(v),
    }
}

/// A fixed-point number in units of `10^-decimals`, exactly: a decimal string (`"0.4800"`),
/// or a JSON number, whose shortest decimal spelling is read the same way.
#[inline]
fn to_fixed<'a>(v: Val<'_, 'a>, decimals: u32) -> Result<i64, Bad<'a>> {
    let scale = 10i64.pow(decimals);
    let value = match v.node() {
        Some(Node::String(s)) => parse_fixed(s.as_bytes(), decimals),
        Some(Node::Static(StaticNode::U64(n))) => i64::try_from(*n).ok().and_then(|n| n.checked_mul(scale)),
        Some(Node::Static(StaticNode::I64(n))) => n.checked_mul(scale),
        // A JSON number with a fraction arrives as an f64; Rust prints the shortest decimal
        // that reads back as the same f64, which is the sent text for any price or size with
        // up to 15 significant digits. Anything finer is refused by `parse_fixed`.
        Some(Node::Static(StaticNode::F64(f))) => parse_fixed(f.to_string().as_bytes(), decimals),
        _ => return Err(Bad::Type),
    };
    value.ok_or_else(|| Bad::Value(shown(v)))
}

/// A price in dollars: `$0` to `$1`, the range of a binary contract.
#[inline]
fn to_price<'a>(v: Val<'_, 'a>) -> Result<Price, Bad<'a>> {
    match to_fixed(v, Price::DECIMALS)? {
        p if (0..=Price::ONE_DOLLAR.0).contains(&p) => Ok(Price(p)),
        _ => Err(Bad::Value(shown(v))),
    }
}

/// A legacy price in whole cents (`48`), 0 to 100.
fn to_cents<'a>(v: Val<'_, 'a>) -> Result<Price, Bad<'a>> {
    match v.node() {
        Some(Node::Static(StaticNode::U64(n @ 0..=100))) => Ok(Price(*n as i64 * 100)),
        Some(Node::Static(StaticNode::I64(n @ 0..=100))) => Ok(Price(n * 100)),
        Some(Node::Static(StaticNode::U64(_) | StaticNode::I64(_))) => Err(Bad::Value(shown(v))),
        _ => Err(Bad::Type),
    }
}

/// The YES price of a trade that sent only its NO price.
fn to_price_complement<'a>(v: Val<'_, 'a>) -> Result<Price, Bad<'a>> {
    to_price(v).map(Price::complement)
}

/// The YES price of a legacy trade that sent only its NO price in cents.
fn to_cents_complement<'a>(v: Val<'_, 'a>) -> Result<Price, Bad<'a>> {
    to_cents(v).map(Price::complement)
}

/// A contract count that cannot be negative (`_fp` string or number).
#[inline]
fn to_size<'a>(v: Val<'_, 'a>) -> Result<Qty, Bad<'a>> {
    match to_fixed(v, Qty::DECIMALS)? {
        q if q >= 0 => Ok(Qty(q)),
        _ => Err(Bad::Value(shown(v))),
    }
}

/// A signed change of contracts (`delta_fp`).
#[inline]
fn to_signed_size<'a>(v: Val<'_, 'a>) -> Result<Qty, Bad<'a>> {
    to_fixed(v, Qty::DECIMALS).map(Qty)
}

/// A legacy whole-contract count that cannot be negative (`count`, `volume`).
fn to_count<'a>(v: Val<'_, 'a>) -> Result<Qty, Bad<'a>> {
    match to_i64(v)? {
        n if n >= 0 => n.checked_mul(100).map(Qty).ok_or_else(|| Bad::Value(shown(v))),
        _ => Err(Bad::Value(shown(v))),
    }
}

/// A legacy signed whole-contract change (`delta`).
fn to_signed_count<'a>(v: Val<'_, 'a>) -> Result<Qty, Bad<'a>> {
    to_i64(v)?.checked_mul(100).map(Qty).ok_or_else(|| Bad::Value(shown(v)))
}

/// `yes` or `no`, in any letter case.
#[inline]
fn to_side<'a>(v: Val<'_, 'a>) -> Result<Side, Bad<'a>> {
    match v.str() {
        Some(s) if s.eq_ignore_ascii_case("yes") => Ok(Side::Yes),
        Some(s) if s.eq_ignore_ascii_case("no") => Ok(Side::No),
        Some(s) => Err(Bad::Value(Cow::Borrowed(s))),
        None => Err(Bad::Type),
    }
}

/// `taker_book_side`: a taker hitting the `bid` sold YES (bought NO)... in Kalshi's words,
/// `bid` is a YES taker and `ask` a NO taker.
fn to_book_side<'a>(v: Val<'_, 'a>) -> Result<Side, Bad<'a>> {
    match v.str() {
        Some(s) if s.eq_ignore_ascii_case("bid") => Ok(Side::Yes),
        Some(s) if s.eq_ignore_ascii_case("ask") => Ok(Side::No),
        Some(s) => Err(Bad::Value(Cow::Borrowed(s))),
        None => Err(Bad::Type),
    }
}

fn to_bool<'a>(v: Val<'_, 'a>) -> Result<bool, Bad<'a>> {
    match v.node() {
        Some(Node::Static(StaticNode::Bool(b))) => Ok(*b),
        _ => Err(Bad::Type),
    }
}

/// A name: a ticker, a trade id, an event type. Any text without control characters.
#[inline]
fn to_name<'a>(v: Val<'_, 'a>) -> Result<&'a str, Bad<'a>> {
    match v.str() {
        Some(s) if s.bytes().all(|b| b >= 0x20 && b != 0x7f) => Ok(s),
        Some(_) => Err(Bad::Text),
        None => Err(Bad::Type),
    }
}

/// Free text (an error message): any string.
fn to_text<'a>(v: Val<'_, 'a>) -> Result<&'a str, Bad<'a>> {
    v.str().ok_or(Bad::Type)
}

/// A deprecated `ts`: integer seconds (ticker, trade) or RFC 3339 (delta), as milliseconds.
fn to_ts<'a>(v: Val<'_, 'a>) -> Result<i64, Bad<'a>> {
    match v.node() {
        Some(Node::String(s)) => parse_rfc3339_millis(s).ok_or(Bad::Value(Cow::Borrowed(s))),
        _ => to_i64(v)?.checked_mul(1000).ok_or_else(|| Bad::Value(shown(v))),
    }
}

/// An RFC 3339 `time`, as milliseconds.
fn to_rfc3339<'a>(v: Val<'_, 'a>) -> Result<i64, Bad<'a>> {
    match v.node() {
        Some(Node::String(s)) => parse_rfc3339_millis(s).ok_or(Bad::Value(Cow::Borrowed(s))),
        _ => Err(Bad::Type),
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
    /// Top-level `code`, `message` and `channel`: where some servers put an error's code and
    /// text, and a subscription's channel, instead of inside `msg`.
    code: Option<Val<'t, 'a>>,
    message: Option<Val<'t, 'a>>,
    channel: Option<Val<'t, 'a>>,
    /// Top-level keys outside the envelope.
    unknown: u64,
}

/// The message types tickd reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Delta,
    Ticker,
    Trade,
    Snapshot,
    Subscribed,
    Ok,
    Unsubscribed,
    Error,
    MarketLifecycle,
    EventLifecycle,
}

impl Kind {
    #[inline]
    fn of(msg_type: &str) -> Option<Kind> {
        Some(match msg_type {
            "orderbook_delta" => Kind::Delta,
            "ticker" => Kind::Ticker,
            "trade" => Kind::Trade,
            "orderbook_snapshot" => Kind::Snapshot,
            "subscribed" => Kind::Subscribed,
            "ok" => Kind::Ok,
            "unsubscribed" => Kind::Unsubscribed,
            "error" => Kind::Error,
            "market_lifecycle_v2" | "multivariate_market_lifecycle" => Kind::MarketLifecycle,
            "event_lifecycle" | "event_fee_update" => Kind::EventLifecycle,
            _ => return None,
        })
    }
}

/// Turns a parsed tape into a frame.
fn decode<'a>(
    nodes: &[Node<'a>],
    stats: &mut WireStats,
    notes: &mut Vec<Note<'a>>,
) -> Result<Frame<'a>, WireError> {
    let Some(fields) = Val(nodes).fields() else {
        return Err(WireError::NotObject);
    };
    let mark = notes.len();
    let mut env = Envelope::default();
    for (key, value) in fields {
        match key {
            "type" => env.msg_type = Some(value),
            "id" => env.id = Some(value),
            "sid" => env.sid = Some(value),
            "seq" => env.seq = Some(value),
            "msg" => env.msg = Some(value),
            "sending_ts_ms" => env.sending_ts_ms = Some(value),
            "code" => env.code = Some(value),
            "message" => env.message = Some(value),
            "channel" => env.channel = Some(value),
            _ => {
                env.unknown += 1;
                // The type may come later; it is filled in below.
                notes.push(Note { msg_type: "", field: key, kind: NoteKind::Unknown });
            }
        }
    }
    let msg_type = match env.msg_type {
        Some(v) if !v.is_blank() => match v.str() {
            Some(t) => t,
            None => {
                notes.truncate(mark);
                return Err(WireError::WrongType { msg_type: "frame".to_owned(), field: "type" });
            }
        },
        _ => {
            notes.truncate(mark);
            return Err(WireError::Missing { msg_type: "frame".to_owned(), field: "type" });
        }
    };
    let Some(kind) = Kind::of(msg_type) else {
        // Unknown types are kept, not judged: their envelope is read leniently.
        notes.truncate(mark);
        stats.unknown_types += 1;
        return Ok(Frame::Unknown {
            msg_type,
            sid: env.sid.and_then(|v| to_u64(v).ok()),
            seq: env.seq.and_then(|v| to_u64(v).ok()),
        });
    };
    for note in &mut notes[mark..] {
        note.msg_type = msg_type;
    }
    let mut cx = Ctx { msg_type, notes, unknown: env.unknown, invalid: 0 };
    // Top-level spellings only errors and acknowledgements use.
    if kind != Kind::Error {
        cx.unused(env.code, "code");
        cx.unused(env.message, "message");
    }
    if kind != Kind::Subscribed {
        cx.unused(env.channel, "channel");
    }
    let frame = match kind {
        Kind::Delta => cx.delta(&env),
        Kind::Ticker => cx.ticker(&env),
        Kind::Trade => cx.trade(&env),
        Kind::Snapshot => cx.snapshot(&env),
        Kind::Subscribed => cx.subscribed(&env),
        Kind::Ok => cx.ok(&env),
        Kind::Unsubscribed => cx.unsubscribed(&env),
        Kind::Error => cx.error(&env),
        Kind::MarketLifecycle => cx.market_lifecycle(&env),
        Kind::EventLifecycle => cx.event_lifecycle(&env),
    };
    match frame {
        Ok(frame) => {
            stats.unknown_fields += cx.unknown;
            stats.invalid_fields += cx.invalid;
            Ok(frame)
        }
        Err(e) => {
            // The frame is rejected whole; what else was odd about it is not counted.
            cx.notes.truncate(mark);
            Err(e)
        }
    }
}

/// Decoding state of one known message: its type (for errors) and what was set aside.
struct Ctx<'n, 'a> {
    msg_type: &'a str,
    notes: &'n mut Vec<Note<'a>>,
    unknown: u64,
    invalid: u64,
}

/// A field's value, `None` when not given (absent, `null` or `""`).
#[inline]
fn given<'t, 'a>(v: Option<Val<'t, 'a>>) -> Option<Val<'t, 'a>> {
    v.filter(|v| !v.is_blank())
}

impl<'a> Ctx<'_, 'a> {
    #[cold]
    #[inline(never)]
    fn missing(&self, field: &'static str) -> WireError {
        WireError::Missing { msg_type: self.msg_type.to_owned(), field }
    }

    #[cold]
    #[inline(never)]
    fn bad(&self, field: &'static str, bad: Bad<'_>) -> WireError {
        let msg_type = self.msg_type.to_owned();
        match bad {
            Bad::Type => WireError::WrongType { msg_type, field },
            Bad::Text => WireError::Text { msg_type, field },
            Bad::Value(text) => {
                let mut end = text.len().min(MAX_ERROR_VALUE);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                WireError::Value { msg_type, field, value: text.get(..end).unwrap_or_default().to_owned() }
            }
        }
    }

    /// A key this version does not know.
    #[cold]
    fn unknown(&mut self, key: &'a str) {
        self.unknown += 1;
        self.notes.push(Note { msg_type: self.msg_type, field: key, kind: NoteKind::Unknown });
    }

    /// A top-level key this type does not use.
    #[inline]
    fn unused(&mut self, v: Option<Val<'_, 'a>>, key: &'static str) {
        if v.is_some() {
            self.unknown(key);
        }
    }

    /// An optional field whose value could not be read.
    #[cold]
    fn invalid(&mut self, field: &'static str) {
        self.invalid += 1;
        self.notes.push(Note { msg_type: self.msg_type, field, kind: NoteKind::Invalid });
    }

    /// A required field.
    #[inline]
    fn req<'t, T>(
        &self,
        field: &'static str,
        v: Option<Val<'t, 'a>>,
        conv: Conv<'t, 'a, T>,
    ) -> Result<T, WireError> {
        match given(v) {
            Some(v) => conv(v).map_err(|b| self.bad(field, b)),
            None => Err(self.missing(field)),
        }
    }

    /// A required value with several spellings: the first one given is read, the others
    /// ignored (a legacy twin is read only when the fixed-point field is not given).
    #[inline]
    fn req_first<'t, T, const N: usize>(
        &self,
        spellings: [(&'static str, Option<Val<'t, 'a>>, Conv<'t, 'a, T>); N],
    ) -> Result<T, WireError> {
        let mut first = "";
        for (i, (field, v, conv)) in spellings.into_iter().enumerate() {
            if i == 0 {
                first = field;
            }
            if let Some(v) = given(v) {
                return conv(v).map_err(|b| self.bad(field, b));
            }
        }
        Err(self.missing(first))
    }

    /// An optional field: `None` when not given, or when its value cannot be read (noted).
    #[inline]
    fn opt<'t, T>(
        &mut self,
        field: &'static str,
        v: Option<Val<'t, 'a>>,
        conv: Conv<'t, 'a, T>,
    ) -> Option<T> {
        match conv(given(v)?) {
            Ok(value) => Some(value),
            Err(_) => {
                self.invalid(field);
                None
            }
        }
    }

    /// An optional value with several spellings: the first one given decides, as in
    /// [`Ctx::req_first`]; when it cannot be read the value is not given (noted), and the
    /// other spellings are not read in its place.
    #[inline]
    fn opt_first<'t, T, const N: usize>(
        &mut self,
        spellings: [(&'static str, Option<Val<'t, 'a>>, Conv<'t, 'a, T>); N],
    ) -> Option<T> {
        for (field, v, conv) in spellings {
            if given(v).is_some() {
                return self.opt(field, v, conv);
            }
        }
        None
    }

    /// The exchange's time of a frame in ms: the first of `ts_ms`, `ts`, `time` and the
    /// top-level `sending_ts_ms` that can be read (they all say when, at slightly different
    /// moments, so a bad one is skipped rather than taken as "no time").
    fn time<'t>(
        &mut self,
        ts_ms: Option<Val<'t, 'a>>,
        ts: Option<Val<'t, 'a>>,
        time: Option<Val<'t, 'a>>,
        env: &Envelope<'t, 'a>,
    ) -> Option<i64> {
        if let Some(ms) = self.opt("ts_ms", ts_ms, to_i64) {
            return Some(ms);
        }
        if let Some(ms) = self.opt("ts", ts, to_ts) {
            return Some(ms);
        }
        if let Some(ms) = self.opt("time", time, to_rfc3339) {
            return Some(ms);
        }
        self.opt("sending_ts_ms", env.sending_ts_ms, to_i64)
    }

    /// The `msg` object, required.
    #[inline]
    fn msg<'t>(&self, env: &Envelope<'t, 'a>) -> Result<Fields<'t, 'a>, WireError> {
        match given(env.msg) {
            Some(v) => v.fields().ok_or_else(|| self.bad("msg", Bad::Type)),
            None => Err(self.missing("msg")),
        }
    }

    /// A book ladder: an array of `[price, count]` pairs. `cents` says the legacy form
    /// (`[48, 300]`: integer cents) rather than dollars (`["0.48", "300.00"]` or
    /// `["0.480", 300]`). The book must be right as a whole, so any bad level refuses the
    /// frame.
    fn ladder(
        &self,
        field: &'static str,
        v: Val<'_, 'a>,
        cents: bool,
    ) -> Result<Vec<(Price, Qty)>, WireError> {
        let items = v.items().ok_or_else(|| self.bad(field, Bad::Type))?;
        let mut levels = Vec::with_capacity(items.len());
        for level in items {
            let mut pair = level.items().ok_or_else(|| self.bad(field, Bad::Type))?;
            let (Some(price), Some(count), None) = (pair.next(), pair.next(), pair.next()) else {
                return Err(self.bad(field, Bad::Type));
            };
            let price = if cents { to_cents(price) } else { to_price(price) };
            let price = price.map_err(|b| self.bad(field, b))?;
            let count = to_size(count).map_err(|b| self.bad(field, b))?;
            levels.push((price, count));
        }
        Ok(levels)
    }

    /// One side of a snapshot: `<side>_dollars_fp`, else `<side>_dollars`, else the legacy
    /// `<side>` in cents; empty when none is given (Kalshi leaves an empty side out).
    fn side_levels<'t>(
        &self,
        spellings: [(&'static str, Option<Val<'t, 'a>>, bool); 3],
    ) -> Result<Vec<(Price, Qty)>, WireError> {
        for (field, v, cents) in spellings {
            if let Some(v) = given(v) {
                return self.ladder(field, v, cents);
            }
        }
        Ok(Vec::new())
    }

    fn delta(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let (mut market, mut price, mut delta, mut side) = (None, None, None, None);
        let (mut ts_ms, mut ts, mut cents, mut count) = (None, None, None, None);
        for (key, value) in self.msg(env)? {
            match key {
                "market_ticker" => market = Some(value),
                "price_dollars" => price = Some(value),
                "delta_fp" => delta = Some(value),
                "side" => side = Some(value),
                "ts_ms" => ts_ms = Some(value),
                "ts" => ts = Some(value),
                "price" => cents = Some(value),
                "delta" => count = Some(value),
                // About our own orders, not market data.
                "market_id" | "client_order_id" | "subaccount" => {}
                _ => self.unknown(key),
            }
        }
        let sid = self.req("sid", env.sid, to_u64)?;
        let market = self.req("market_ticker", market, to_name)?;
        let side = self.req("side", side, to_side)?;
        let price = self
            .req_first([("price_dollars", price, to_price as Conv<'_, 'a, _>), ("price", cents, to_cents)])?;
        let delta = self.req_first([
            ("delta_fp", delta, to_signed_size as Conv<'_, 'a, _>),
            ("delta", count, to_signed_count),
        ])?;
        let seq = self.opt("seq", env.seq, to_u64);
        let ts_ms = self.time(ts_ms, ts, None, env);
        Ok(Frame::Delta { sid, seq, market, side, price, delta, ts_ms })
    }

    fn ticker(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let mut f = TickerFields::default();
        for (key, value) in self.msg(env)? {
            let slot = match key {
                "market_ticker" => &mut f.market,
                "price_dollars" => &mut f.last,
                "yes_bid_dollars" => &mut f.bid,
                "yes_ask_dollars" => &mut f.ask,
                "yes_bid_size_fp" => &mut f.bid_size,
                "yes_ask_size_fp" => &mut f.ask_size,
                "last_trade_size_fp" => &mut f.last_size,
                "volume_fp" => &mut f.volume,
                "open_interest_fp" => &mut f.open_interest,
                "dollar_volume" => &mut f.dollar_volume,
                "dollar_open_interest" => &mut f.dollar_open_interest,
                "ts_ms" => &mut f.ts_ms,
                "ts" => &mut f.ts,
                "time" => &mut f.time,
                "price" => &mut f.legacy_last,
                "yes_bid" => &mut f.legacy_bid,
                "yes_ask" => &mut f.legacy_ask,
                "yes_bid_size" => &mut f.legacy_bid_size,
                "yes_ask_size" => &mut f.legacy_ask_size,
                "last_trade_size" => &mut f.legacy_last_size,
                "volume" => &mut f.legacy_volume,
                "open_interest" => &mut f.legacy_open_interest,
                "market_id" => continue,
                _ => {
                    self.unknown(key);
                    continue;
                }
            };
            *slot = Some(value);
        }
        let sid = self.req("sid", env.sid, to_u64)?;
        let market = self.req("market_ticker", f.market, to_name)?;
        let price = |fp: &'static str, fv, legacy: &'static str, lv| {
            [(fp, fv, to_price as Conv<'_, 'a, Price>), (legacy, lv, to_cents as Conv<'_, 'a, Price>)]
        };
        let size = |fp: &'static str, fv, legacy: &'static str, lv| {
            [(fp, fv, to_size as Conv<'_, 'a, Qty>), (legacy, lv, to_count as Conv<'_, 'a, Qty>)]
        };
        let quote = Quote {
            last: self.opt_first(price("price_dollars", f.last, "price", f.legacy_last)),
            bid: self.opt_first(price("yes_bid_dollars", f.bid, "yes_bid", f.legacy_bid)),
            ask: self.opt_first(price("yes_ask_dollars", f.ask, "yes_ask", f.legacy_ask)),
            bid_size: self.opt_first(size("yes_bid_size_fp", f.bid_size, "yes_bid_size", f.legacy_bid_size)),
            ask_size: self.opt_first(size("yes_ask_size_fp", f.ask_size, "yes_ask_size", f.legacy_ask_size)),
            last_size: self.opt_first(size(
                "last_trade_size_fp",
                f.last_size,
                "last_trade_size",
                f.legacy_last_size,
            )),
            volume: self.opt_first(size("volume_fp", f.volume, "volume", f.legacy_volume)),
            open_interest: self.opt_first(size(
                "open_interest_fp",
                f.open_interest,
                "open_interest",
                f.legacy_open_interest,
            )),
            dollar_volume: self.opt("dollar_volume", f.dollar_volume, to_int),
            dollar_open_interest: self.opt("dollar_open_interest", f.dollar_open_interest, to_int),
        };
        let ts_ms = self.time(f.ts_ms, f.ts, f.time, env);
        Ok(Frame::Ticker { sid, market, quote, ts_ms })
    }

    fn trade(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let mut f = TradeFields::default();
        for (key, value) in self.msg(env)? {
            let slot = match key {
                "market_ticker" => &mut f.market,
                "trade_id" => &mut f.trade_id,
                "yes_price_dollars" => &mut f.yes_price,
                "no_price_dollars" => &mut f.no_price,
                "count_fp" => &mut f.count,
                "taker_outcome_side" => &mut f.outcome_side,
                "taker_side" => &mut f.old_side,
                "taker_book_side" => &mut f.book_side,
                "is_block_trade" => &mut f.block,
                "ts_ms" => &mut f.ts_ms,
                "ts" => &mut f.ts,
                "yes_price" => &mut f.legacy_yes_price,
                "no_price" => &mut f.legacy_no_price,
                "count" => &mut f.legacy_count,
                "market_id" => continue,
                _ => {
                    self.unknown(key);
                    continue;
                }
            };
            *slot = Some(value);
        }
        let sid = self.req("sid", env.sid, to_u64)?;
        let market = self.req("market_ticker", f.market, to_name)?;
        let trade_id = self.req("trade_id", f.trade_id, to_name)?;
        // The YES price, else the YES price in cents, else the complement of the NO price.
        let yes_price = self.req_first([
            ("yes_price_dollars", f.yes_price, to_price as Conv<'_, 'a, _>),
            ("yes_price", f.legacy_yes_price, to_cents),
            ("no_price_dollars", f.no_price, to_price_complement),
            ("no_price", f.legacy_no_price, to_cents_complement),
        ])?;
        let count = self.req_first([
            ("count_fp", f.count, to_size as Conv<'_, 'a, _>),
            ("count", f.legacy_count, to_count),
        ])?;
        // The canonical field first, then its deprecated twin, then the book-side spelling of
        // the same bit.
        let taker_side = self.opt_first([
            ("taker_outcome_side", f.outcome_side, to_side as Conv<'_, 'a, _>),
            ("taker_side", f.old_side, to_side),
            ("taker_book_side", f.book_side, to_book_side),
        ]);
        let block = self.opt("is_block_trade", f.block, to_bool);
        let seq = self.opt("seq", env.seq, to_u64);
        let ts_ms = self.time(f.ts_ms, f.ts, None, env);
        Ok(Frame::Trade { sid, seq, market, trade_id, yes_price, count, taker_side, block, ts_ms })
    }

    fn snapshot(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let mut market = None;
        let (mut yes_fp, mut yes_dollars, mut yes_cents) = (None, None, None);
        let (mut no_fp, mut no_dollars, mut no_cents) = (None, None, None);
        for (key, value) in self.msg(env)? {
            match key {
                "market_ticker" => market = Some(value),
                "yes_dollars_fp" => yes_fp = Some(value),
                "no_dollars_fp" => no_fp = Some(value),
                "yes_dollars" => yes_dollars = Some(value),
                "no_dollars" => no_dollars = Some(value),
                "yes" => yes_cents = Some(value),
                "no" => no_cents = Some(value),
                "market_id" => {}
                _ => self.unknown(key),
            }
        }
        let sid = self.req("sid", env.sid, to_u64)?;
        let market = self.req("market_ticker", market, to_name)?;
        let yes = self.side_levels([
            ("yes_dollars_fp", yes_fp, false),
            ("yes_dollars", yes_dollars, false),
            ("yes", yes_cents, true),
        ])?;
        let no = self.side_levels([
            ("no_dollars_fp", no_fp, false),
            ("no_dollars", no_dollars, false),
            ("no", no_cents, true),
        ])?;
        Ok(Frame::Snapshot {
            id: self.opt("id", env.id, to_u64),
            sid,
            seq: self.opt("seq", env.seq, to_u64),
            market,
            yes,
            no,
            sending_ts_ms: self.opt("sending_ts_ms", env.sending_ts_ms, to_i64),
        })
    }

    /// `msg` as an object when it is one; anything else but "not given" is noted.
    fn msg_object<'t>(&mut self, env: &Envelope<'t, 'a>) -> Option<Fields<'t, 'a>> {
        let msg = given(env.msg)?;
        let fields = msg.fields();
        if fields.is_none() {
            self.invalid("msg");
        }
        fields
    }

    fn subscribed(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let (mut channel, mut sid) = (None, None);
        for (key, value) in self.msg_object(env).into_iter().flatten() {
            match key {
                "channel" => channel = Some(value),
                "sid" => sid = Some(value),
                _ => self.unknown(key),
            }
        }
        // Without `msg`, the same facts at the top level.
        let channel = if given(channel).is_some() { channel } else { env.channel };
        let sid = if given(sid).is_some() { sid } else { env.sid };
        Ok(Frame::Subscribed {
            id: self.opt("id", env.id, to_u64),
            channel: self.opt("channel", channel, to_name),
            sid: self.opt("sid", sid, to_u64),
        })
    }

    fn ok(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let id = self.opt("id", env.id, to_u64);
        // `list_subscriptions` answers with the same type; only the array tells it apart.
        if let Some(list) = given(env.msg).and_then(Val::items) {
            let mut subscriptions = Vec::with_capacity(list.len());
            for entry in list {
                let (mut channel, mut sid) = (None, None);
                for (key, value) in entry.fields().into_iter().flatten() {
                    match key {
                        "channel" => channel = Some(value),
                        "sid" => sid = Some(value),
                        _ => self.unknown(key),
                    }
                }
                match (given(channel).map(to_name), given(sid).map(to_u64)) {
                    (Some(Ok(channel)), Some(Ok(sid))) => subscriptions.push((channel, sid)),
                    _ => self.invalid("msg"),
                }
            }
            return Ok(Frame::SubscriptionList { id, subscriptions });
        }
        let mut tickers = None;
        for (key, value) in self.msg_object(env).into_iter().flatten() {
            match key {
                "market_tickers" => tickers = Some(value),
                // Other filters' acknowledgements: not ours to track.
                "market_ids" | "index_ids" | "underlying_tickers" => {}
                _ => self.unknown(key),
            }
        }
        // A list with one unreadable entry is no list: a partial one would be believed whole.
        let market_tickers = match given(tickers) {
            None => None,
            Some(v) => {
                let list: Option<Vec<&'a str>> =
                    v.items().and_then(|items| items.map(|t| to_name(t).ok()).collect());
                if list.is_none() {
                    self.invalid("market_tickers");
                }
                list
            }
        };
        Ok(Frame::Ok {
            id,
            sid: self.opt("sid", env.sid, to_u64),
            seq: self.opt("seq", env.seq, to_u64),
            market_tickers,
        })
    }

    fn unsubscribed(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let mut sid = None;
        for (key, value) in self.msg_object(env).into_iter().flatten() {
            match key {
                "sid" => sid = Some(value),
                _ => self.unknown(key),
            }
        }
        let sid = if given(env.sid).is_some() { env.sid } else { sid };
        Ok(Frame::Unsubscribed {
            id: self.opt("id", env.id, to_u64),
            sid: self.opt("sid", sid, to_u64),
            seq: self.opt("seq", env.seq, to_u64),
        })
    }

    fn error(&mut self, env: &Envelope<'_, 'a>) -> Result<Frame<'a>, WireError> {
        let (mut code, mut text, mut market) = (None, None, None);
        match given(env.msg) {
            // Some servers send the text alone as `msg`.
            Some(v) if v.str().is_some() => text = Some(v),
            _ => {
                for (key, value) in self.msg_object(env).into_iter().flatten() {
                    match key {
                        "code" => code = Some(value),
                        "msg" | "message" => text = Some(value),
                        "market_ticker" => market = Some(value),
                        "market_tickers" | "market_id" | "market_ids" => {}
                        _ => self.unknown(key),
                    }
                }
            }
        }
        // Others put `code` and `message` at the top level.
        let code = if given(code).is_some() { code } else { env.code };
        let text = if given(text).is_some() { text } else { env.message };
        let code = self.opt("code", code, to_u64).and_then(|c| match u32::try_from(c) {
            Ok(c) => Some(c),
            Err(_) => {
                self.invalid("code");
                None
            }
        });
        Ok(Frame::Error {
            id: self.opt("id", env.id, to_u64),
            sid: self.opt("sid", env.sid, to_u64),
            seq: self.opt("seq", env.seq, to_u64),
            code,
            msg: self.opt("msg", text, to_text),
            market_ticker: self.opt("market_ticker", market, to_name),
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
                | "no_sub_title"
                | "event_ticker"
                | "market_id" => {}
                _ => self.unknown(key),
            }
        }
        Ok(Frame::MarketLifecycle {
            msg_type: self.msg_type,
            sid: self.req("sid", env.sid, to_u64)?,
            market: self.req("market_ticker", market, to_name)?,
            event_type: self.req("event_type", event_type, to_name)?,
            seq: self.opt("seq", env.seq, to_u64),
            detail: detail(env),
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
                _ => self.unknown(key),
            }
        }
        Ok(Frame::EventLifecycle {
            sid: self.req("sid", env.sid, to_u64)?,
            event_ticker: self.req("event_ticker", event, to_name)?,
            seq: self.opt("seq", env.seq, to_u64),
            msg_type: self.msg_type,
            detail: detail(env),
        })
    }
}

/// The keys of a `ticker` message.
#[derive(Default)]
struct TickerFields<'t, 'a> {
    market: Option<Val<'t, 'a>>,
    last: Option<Val<'t, 'a>>,
    bid: Option<Val<'t, 'a>>,
    ask: Option<Val<'t, 'a>>,
    bid_size: Option<Val<'t, 'a>>,
    ask_size: Option<Val<'t, 'a>>,
    last_size: Option<Val<'t, 'a>>,
    volume: Option<Val<'t, 'a>>,
    open_interest: Option<Val<'t, 'a>>,
    dollar_volume: Option<Val<'t, 'a>>,
    dollar_open_interest: Option<Val<'t, 'a>>,
    ts_ms: Option<Val<'t, 'a>>,
    ts: Option<Val<'t, 'a>>,
    time: Option<Val<'t, 'a>>,
    legacy_last: Option<Val<'t, 'a>>,
    legacy_bid: Option<Val<'t, 'a>>,
    legacy_ask: Option<Val<'t, 'a>>,
    legacy_bid_size: Option<Val<'t, 'a>>,
    legacy_ask_size: Option<Val<'t, 'a>>,
    legacy_last_size: Option<Val<'t, 'a>>,
    legacy_volume: Option<Val<'t, 'a>>,
    legacy_open_interest: Option<Val<'t, 'a>>,
}

/// The keys of a `trade` message.
#[derive(Default)]
struct TradeFields<'t, 'a> {
    market: Option<Val<'t, 'a>>,
    trade_id: Option<Val<'t, 'a>>,
    yes_price: Option<Val<'t, 'a>>,
    no_price: Option<Val<'t, 'a>>,
    count: Option<Val<'t, 'a>>,
    outcome_side: Option<Val<'t, 'a>>,
    old_side: Option<Val<'t, 'a>>,
    book_side: Option<Val<'t, 'a>>,
    block: Option<Val<'t, 'a>>,
    ts_ms: Option<Val<'t, 'a>>,
    ts: Option<Val<'t, 'a>>,
    legacy_yes_price: Option<Val<'t, 'a>>,
    legacy_no_price: Option<Val<'t, 'a>>,
    legacy_count: Option<Val<'t, 'a>>,
}

/// The `msg` object as compact JSON text (callers checked that it is an object).
fn detail(env: &Envelope<'_, '_>) -> String {
    let mut out = String::new();
    if let Some(msg) = env.msg {
        write_json(msg, &mut out);
    }
    out
}

/// Writes a tape value as compact JSON. Recursion is bounded by [`MAX_DEPTH`].
fn write_json(v: Val<'_, '_>, out: &mut String) {
    // `write!` into a `String` cannot fail; its `fmt::Result` is always `Ok`.
    match v.node() {
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

/// Writes a JSON string literal, escaping what RFC 8259 requires. U+0000 is written as
/// U+FFFD: PostgreSQL's `jsonb`, where the text is stored, cannot hold it at all.
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
            '\0' => "\u{fffd}",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fixture and published frame, as texts.
    fn samples() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kalshi");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                out.push(std::fs::read_to_string(&path).unwrap_or_default().trim_end().to_owned());
            }
        }
        let published = std::fs::read_to_string(dir.join("published.jsonl")).unwrap_or_default();
        for line in published.lines() {
            // The frame as published (spaces and key order kept): everything after `"frame": `.
            if let Some(at) = line.find("\"frame\": ") {
                let frame = line[at + 9..].trim_end();
                out.push(frame[..frame.len() - 1].to_owned());
            }
        }
        assert!(out.len() > 60, "{}", out.len());
        out
    }

    /// simd-json's tape of `text`, with owned strings so it outlives the copy it was read from.
    fn simd_tape(text: &[u8]) -> Option<Vec<String>> {
        let mut copy = text.to_vec();
        let mut tape = Tape(Vec::new());
        let mut buffers = Buffers::new(copy.len());
        simd_json::fill_tape(&mut copy, &mut buffers, &mut tape).ok()?;
        Some(tape.0.iter().map(|n| format!("{n:?}")).collect())
    }

    fn flat_tape(text: &[u8]) -> Option<Vec<String>> {
        let mut tape = Vec::new();
        scan_flat(text, &mut tape)?;
        Some(tape.iter().map(|n| format!("{n:?}")).collect())
    }

    #[test]
    fn the_flat_scanner_writes_simd_jsons_tape_or_nothing() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        const BYTES: &[u8] = b"\"{}[],:\\ -.e0159tfn \t\n\xff\x00\x80";
        let (mut compared, mut flat) = (0, 0);
        for text in samples() {
            let mut variants = vec![text.clone().into_bytes()];
            for _ in 0..2000 {
                let mut v = text.clone().into_bytes();
                for _ in 0..1 + next() % 3 {
                    let at = (next() % v.len() as u64) as usize;
                    match next() % 4 {
                        0 => v[at] = BYTES[(next() % BYTES.len() as u64) as usize],
                        1 => v.insert(at, BYTES[(next() % BYTES.len() as u64) as usize]),
                        2 => {
                            v.remove(at);
                        }
                        _ => v.truncate(at),
                    }
                    if v.is_empty() {
                        break;
                    }
                }
                variants.push(v);
            }
            for v in variants {
                compared += 1;
                if let Some(ours) = flat_tape(&v) {
                    flat += 1;
                    assert_eq!(Some(ours), simd_tape(&v), "{:?}", String::from_utf8_lossy(&v));
                }
            }
        }
        // The sweep reaches both paths.
        assert!(flat > 10_000 && flat < compared, "{flat} of {compared}");
    }

    #[test]
    fn the_word_at_a_time_string_scan_finds_the_first_stop_byte() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        // Bytes near every boundary the test cares about, and anything.
        const NEAR: &[u8] = &[0x00, 0x1f, 0x20, 0x21, b'"', b'\\', 0x5b, 0x7f, 0x80, 0xff, b'a', b'0'];
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bytes = seed.to_le_bytes();
            for (k, b) in bytes.iter_mut().enumerate() {
                if (seed >> (k * 3)) & 3 != 0 {
                    *b = NEAR[((seed >> (k * 5)) % NEAR.len() as u64) as usize];
                }
            }
            let naive = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            let found = string_stop(u64::from_le_bytes(bytes));
            let swar = (found != 0).then(|| (found.trailing_zeros() / 8) as usize);
            assert_eq!(swar, naive, "{bytes:x?}");
        }
    }

    #[test]
    fn the_flat_scanner_takes_the_hot_shapes_and_leaves_the_rest() {
        for (text, flat) in [
            (
                r#"{"type":"orderbook_delta","sid":2,"seq":3,"msg":{"market_ticker":"M","price_dollars":"0.96","delta_fp":"-54.00","side":"yes","ts_ms":1669149841000}}"#,
                true,
            ),
            (
                "{ \"type\" : \"ticker\" ,\n\"sid\": 11, \"msg\": {\"market_ticker\": \"M\", \"x\": null, \"b\": true, \"n\": -0} } ",
                true,
            ),
            (r#"{"type":"ok","msg":{"market_tickers":["A"]}}"#, false),
            (r#"{"type":"x","msg":{"a":{"b":1}}}"#, false),
            (r#"{"type":"x","sid":1.5}"#, false),
            (r#"{"type":"x","sid":1e3}"#, false),
            (r#"{"type":"x","sid":01}"#, false),
            (r#"{"type":"x","sid":18446744073709551616}"#, false),
            (r#"{"type":"K\"X"}"#, false),
            ("{\"type\":\"K\u{1}X\"}", false),
            (r#"{"type":"x"} x"#, false),
            (r#"{"type":"x",}"#, false),
            (r#"[{"type":"x"}]"#, false),
        ] {
            assert_eq!(flat_tape(text.as_bytes()).is_some(), flat, "{text}");
            if flat {
                assert_eq!(flat_tape(text.as_bytes()), simd_tape(text.as_bytes()), "{text}");
            }
        }
    }
}
