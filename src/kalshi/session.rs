//! The sans-IO Kalshi protocol session of one connection.
//!
//! The session owns what the feed *wants* (channels and markets) and what the exchange has
//! granted on the current connection (sids, their markets and `seq`), plus one exact book per
//! market. It does no I/O: the feed actor hands it events (connected, a frame, a timer,
//! new markets) and sends the command texts and publishes the ticks it puts in [`Output`].
//!
//! Promises:
//! - after every connect it subscribes every channel again (one `subscribe` per channel, so
//!   each ack maps to one channel), waits for each `subscribed`, and retries any command that
//!   gets an error or no ack within `ack_timeout`;
//! - market changes are applied with `update_subscription`, one command in flight per sid,
//!   by reconciling what the exchange has with what is wanted; changes made while
//!   disconnected are simply part of the next subscribe;
//! - `seq` is checked per sid on every frame that carries one; a duplicate is dropped, a gap
//!   is published as [`FeedEvent::Gap`] and, on the orderbook sid, repaired with
//!   `get_snapshot` (falling back to unsubscribe + subscribe) while the books are stale;
//! - a negative or crossed book, or a delta for a book without a snapshot, asks for a fresh
//!   snapshot of that market; terminal errors (10, 25) resubscribe the channel;
//! - NO-side prices are normalized to the NO contract's own price whatever `use_yes_price`
//!   was sent.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::command::{Channel, Command, UpdateAction as Action};
use super::wire::{ErrorCode, Frame, Parser, WireError};
use crate::book::OrderBook;
use crate::telemetry::metrics::{FeedMetrics, FeedState};
use crate::tick::{
    BookDelta, BookSnapshot, FeedEvent, Level, Lifecycle, LifecycleScope, Name, Price, Quote, Side, Tick,
    TickKind, Trade,
};

/// More interned names than this and the table starts over (lifecycle events name every
/// market on the exchange; the table must not grow forever).
const MAX_INTERNED: usize = 100_000;

/// What a session follows and how.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The feed name stamped on every tick.
    pub feed: Name,
    /// The connection's index within the feed, stamped on every tick.
    pub conn: u16,
    /// Channels to subscribe (market channels get the market list).
    pub channels: Vec<Channel>,
    /// Markets wanted at start.
    pub markets: Vec<String>,
    /// Sent with every orderbook subscribe.
    pub use_yes_price: bool,
    /// How long to wait for an ack before sending a command again.
    pub ack_timeout: Duration,
}

/// What the session wants done after an event: commands to send and ticks to publish.
#[derive(Debug, Default)]
pub struct Output {
    /// Command texts to send, in order.
    pub send: Vec<String>,
    /// Ticks to publish, in order.
    pub ticks: Vec<Tick>,
}

/// A frame the session could not use.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame could not be parsed.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Per-channel subscription state on the current connection.
#[derive(Debug)]
struct Sub {
    channel: Channel,
    state: SubState,
    /// The server's subscription id while subscribed.
    sid: Option<u64>,
    /// Markets the exchange has on this sid, as acknowledged.
    markets: BTreeSet<Name>,
    /// The id of an `update_subscription` in flight for this sid.
    updating: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// Not subscribed (disconnected, or nothing to subscribe).
    Idle,
    /// `subscribe` sent, waiting for `subscribed` (the command is in `pending`).
    Subscribing,
    /// Subscribed: `sid` is set.
    Active,
    /// `unsubscribe` sent; subscribe again once acknowledged when `then_subscribe`.
    Unsubscribing { then_subscribe: bool },
    /// A command failed; subscribe again at this time.
    RetryAt(Instant),
}

/// A command sent and not yet acknowledged.
#[derive(Debug, Clone)]
struct Pending {
    channel: Channel,
    what: PendingKind,
    sent_at: Instant,
}

#[derive(Debug, Clone)]
enum PendingKind {
    /// With the markets the command named.
    Subscribe(BTreeSet<Name>),
    Unsubscribe,
    Update(Action, Vec<Name>),
    Snapshot,
}

/// One market's book and whether it can be trusted.
#[derive(Debug, Default)]
struct MarketBook {
    book: OrderBook,
    /// Built from a snapshot and unbroken since.
    fresh: bool,
    /// A `get_snapshot` for this market is in flight.
    requested: bool,
}

/// Everything one connection's protocol needs to remember.
pub struct Session {
    cfg: SessionConfig,
    metrics: Arc<FeedMetrics>,
    parser: Parser,
    names: HashSet<Name>,
    desired: BTreeSet<Name>,
    subs: Vec<Sub>,
    sid_index: HashMap<u64, usize>,
    last_seq: HashMap<u64, u64>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    books: HashMap<Name, MarketBook>,
    connected: bool,
    live: bool,
    /// Something that can change `live` happened since the last check (keeps the per-frame
    /// path free of the O(markets) check).
    dirty: bool,
    recv_ts: i64,
}

impl Session {
    /// A session that wants `cfg`; nothing happens until [`Session::on_connected`].
    pub fn new(cfg: SessionConfig, metrics: Arc<FeedMetrics>) -> Session {
        let subs = cfg
            .channels
            .iter()
            .map(|&channel| Sub {
                channel,
                state: SubState::Idle,
                sid: None,
                markets: BTreeSet::new(),
                updating: None,
            })
            .collect();
        let mut session = Session {
            metrics,
            parser: Parser::default(),
            names: HashSet::new(),
            desired: BTreeSet::new(),
            subs,
            sid_index: HashMap::new(),
            last_seq: HashMap::new(),
            pending: HashMap::new(),
            next_id: 1,
            books: HashMap::new(),
            connected: false,
            live: false,
            dirty: false,
            recv_ts: 0,
            cfg,
        };
        let markets = std::mem::take(&mut session.cfg.markets);
        session.desired = markets.iter().map(|m| session.intern(m)).collect();
        session
    }

    /// The markets this session wants.
    pub fn markets(&self) -> impl Iterator<Item = &str> {
        self.desired.iter().map(|m| &**m)
    }

    /// Whether every subscription is acknowledged and every book built.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The current book of a market, if one was built from a snapshot and is not stale.
    pub fn book(&self, market: &str) -> Option<BookSnapshot> {
        self.books.get(market).filter(|b| b.fresh).map(|b| b.book.snapshot())
    }

    /// Every market with a trustworthy book.
    pub fn books(&self) -> Vec<(Name, BookSnapshot)> {
        let mut all: Vec<_> =
            self.books.iter().filter(|(_, b)| b.fresh).map(|(m, b)| (m.clone(), b.book.snapshot())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Asks for a fresh snapshot of every book it trusts (one `get_snapshot`), for a consumer
    /// of the ticks that lost its copies: the replies are published like any snapshot. Books
    /// being repaired are left to their repair, and nothing is asked while the orderbook
    /// channel is not subscribed (a new subscription brings snapshots anyway). The books here
    /// are sound, so no reply is awaited: an error is logged and the request forgotten.
    /// Returns how many books were asked for.
    pub fn refresh_books(&mut self, out: &mut Output) -> usize {
        let Some(i) = self.sub_index(Channel::OrderbookDelta) else { return 0 };
        let sub = &self.subs[i];
        let Some(sid) = sub.sid.filter(|_| sub.state == SubState::Active) else { return 0 };
        let market_tickers: Vec<String> = sub
            .markets
            .iter()
            .filter(|m| self.books.get(*m).is_some_and(|b| b.fresh && !b.requested))
            .map(|m| m.to_string())
            .collect();
        if market_tickers.is_empty() {
            return 0;
        }
        let asked = market_tickers.len();
        let id = self.next_id();
        send(out, Command::UpdateSubscription { id, sid, action: Action::GetSnapshot, market_tickers });
        asked
    }

    /// A new connection is open: forget the old one's sids and subscribe everything again.
    pub fn on_connected(&mut self, now: Instant, recv_ts: i64, out: &mut Output) {
        self.recv_ts = recv_ts;
        self.reset_connection_state();
        self.connected = true;
        // Books survive only as stale until the new subscription's snapshots arrive.
        for book in self.books.values_mut() {
            book.fresh = false;
            book.requested = false;
        }
        for i in 0..self.subs.len() {
            self.subscribe(i, now, out);
        }
        self.update_state(out);
    }

    /// The connection is gone: everything granted on it is void.
    pub fn on_disconnected(&mut self) {
        self.reset_connection_state();
        self.connected = false;
        self.live = false;
        for book in self.books.values_mut() {
            book.fresh = false;
            book.requested = false;
        }
    }

    fn reset_connection_state(&mut self) {
        for sub in &mut self.subs {
            sub.state = SubState::Idle;
            sub.sid = None;
            sub.markets.clear();
            sub.updating = None;
        }
        self.sid_index.clear();
        self.last_seq.clear();
        self.pending.clear();
    }

    /// Replaces the wanted market list; applied at once when connected, else at the next
    /// connect.
    pub fn set_markets(&mut self, markets: &[String], now: Instant, out: &mut Output) {
        self.desired = markets.iter().map(|m| self.intern(m)).collect();
        let desired = &self.desired;
        self.books.retain(|market, _| desired.contains(market));
        if self.connected {
            self.reconcile(now, out);
            self.update_state(out);
        }
    }

    /// When [`Session::on_timer`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let acks = self.pending.values().map(|p| p.sent_at + self.cfg.ack_timeout);
        let retries = self.subs.iter().filter_map(|s| match s.state {
            SubState::RetryAt(at) => Some(at),
            _ => None,
        });
        acks.chain(retries).min()
    }

    /// Sends again what got no ack in time, and what is due for a retry.
    pub fn on_timer(&mut self, now: Instant, out: &mut Output) {
        let expired: Vec<(u64, Pending)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.sent_at + self.cfg.ack_timeout <= now)
            .map(|(&id, p)| (id, p.clone()))
            .collect();
        for (id, p) in expired {
            self.pending.remove(&id);
            let Some(i) = self.sub_index(p.channel) else {
                continue;
            };
            warn!(channel = p.channel.as_str(), id, "No reply to a command in time; sending it again.");
            match p.what {
                PendingKind::Subscribe(_) | PendingKind::Unsubscribe => {
                    FeedMetrics::inc(&self.metrics.resubscribes);
                    self.subscribe(i, now, out);
                }
                PendingKind::Update(..) => {
                    self.subs[i].updating = None;
                    self.reconcile(now, out);
                }
                PendingKind::Snapshot => {
                    for book in self.books.values_mut() {
                        book.requested = false;
                    }
                    self.request_missing_snapshots(i, now, out);
                }
            }
        }
        for i in 0..self.subs.len() {
            if let SubState::RetryAt(at) = self.subs[i].state
                && at <= now
            {
                FeedMetrics::inc(&self.metrics.resubscribes);
                self.subscribe(i, now, out);
            }
        }
        self.update_state(out);
    }

    /// Handles one text frame. `buf` is parsed in place.
    pub fn on_frame(
        &mut self,
        buf: &mut [u8],
        recv_ts: i64,
        now: Instant,
        out: &mut Output,
    ) -> Result<(), FrameError> {
        self.recv_ts = recv_ts;
        let before = self.parser.stats;
        let parsed = self.parser.parse(buf);
        let after = self.parser.stats;
        self.metrics
            .unknown_types
            .fetch_add(after.unknown_types - before.unknown_types, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .unknown_fields
            .fetch_add(after.unknown_fields - before.unknown_fields, std::sync::atomic::Ordering::Relaxed);
        let frame = match parsed {
            Ok(frame) => frame,
            Err(e) => {
                FeedMetrics::inc(&self.metrics.parse_errors);
                return Err(e.into());
            }
        };
        self.handle(frame, now, out);
        if std::mem::take(&mut self.dirty) {
            self.update_state(out);
        }
        Ok(())
    }

    fn handle(&mut self, frame: Frame<'_>, now: Instant, out: &mut Output) {
        match frame {
            Frame::Subscribed { id, channel, sid } => self.on_subscribed(id, channel, sid, now, out),
            Frame::Ok { id, sid, seq, market_tickers } => {
                if self.seq_ok(sid, seq, now, out) {
                    self.on_ok(id, market_tickers, now, out);
                }
            }
            Frame::SubscriptionList { subscriptions, .. } => {
                debug!(?subscriptions, "Subscription list.");
            }
            Frame::Unsubscribed { id, sid, seq } => {
                self.seq_ok(Some(sid), seq, now, out);
                self.on_unsubscribed(id, sid, now, out);
            }
            Frame::Error { id, sid, seq, code, msg, market_ticker } => {
                self.seq_ok(sid, seq, now, out);
                self.on_error(id, sid, code, msg, market_ticker, now, out);
            }
            Frame::Snapshot { sid, seq, market, yes, no, sending_ts_ms, .. } => {
                if self.accept(sid, seq, now, out) {
                    self.on_snapshot(sid, market, yes, no, sending_ts_ms, out);
                }
            }
            Frame::Delta { sid, seq, market, side, price, delta, ts_ms } => {
                if self.accept(sid, seq, now, out) {
                    self.on_delta(sid, market, side, price, delta, ts_ms, now, out);
                }
            }
            Frame::Ticker {
                sid,
                market,
                price,
                yes_bid,
                yes_ask,
                yes_bid_size,
                yes_ask_size,
                last_trade_size,
                volume,
                open_interest,
                dollar_volume,
                dollar_open_interest,
                ts_ms,
            } => {
                if !self.accept(sid, None, now, out) {
                    return;
                }
                let quote = Quote {
                    last: price,
                    bid: yes_bid,
                    ask: yes_ask,
                    bid_size: yes_bid_size,
                    ask_size: yes_ask_size,
                    last_size: last_trade_size,
                    volume,
                    open_interest,
                    dollar_volume,
                    dollar_open_interest,
                };
                FeedMetrics::inc(&self.metrics.quotes);
                let market = self.intern(market);
                self.emit(out, market, ts_ms, TickKind::Quote(quote));
            }
            Frame::Trade { sid, seq, market, trade_id, yes_price, count, taker_side, block, ts_ms } => {
                if self.accept(sid, seq, now, out) {
                    let trade = Trade {
                        trade_id: trade_id.to_owned(),
                        price: yes_price,
                        size: count,
                        taker_side,
                        block,
                    };
                    FeedMetrics::inc(&self.metrics.trades);
                    let market = self.intern(market);
                    self.emit(out, market, ts_ms, TickKind::Trade(trade));
                }
            }
            Frame::MarketLifecycle { sid, seq, market, event_type, detail } => {
                if self.accept(sid, seq, now, out) {
                    let market = self.intern(market);
                    self.emit_lifecycle(out, market, LifecycleScope::Market, event_type, detail);
                }
            }
            Frame::EventLifecycle { sid, seq, event_ticker, msg_type, detail } => {
                if self.accept(sid, seq, now, out) {
                    let event = self.intern(event_ticker);
                    self.emit_lifecycle(out, event, LifecycleScope::Event, msg_type, detail);
                }
            }
            Frame::Unknown { msg_type, sid, seq } => {
                debug!(msg_type, "Unknown message type; ignored.");
                self.seq_ok(sid, seq, now, out);
            }
        }
    }

    /// Whether a data frame on `sid` should be used: the sid must be one of ours (a stray
    /// sid, e.g. a duplicate subscription being cancelled, would publish data twice) and its
    /// `seq` must not be a duplicate.
    fn accept(&mut self, sid: u64, seq: Option<u64>, now: Instant, out: &mut Output) -> bool {
        if !self.sid_index.contains_key(&sid) {
            FeedMetrics::inc(&self.metrics.stray_frames);
            return false;
        }
        self.seq_ok(Some(sid), seq, now, out)
    }

    /// Checks `seq` of a frame on `sid`. Returns false for a duplicate (drop the frame).
    /// A gap is published and repaired; the frame itself is then used.
    fn seq_ok(&mut self, sid: Option<u64>, seq: Option<u64>, now: Instant, out: &mut Output) -> bool {
        let (Some(sid), Some(seq)) = (sid, seq) else {
            return true;
        };
        let last = self.last_seq.insert(sid, seq);
        match last {
            // The first numbered frame of a sid is the baseline, whatever its value.
            None => true,
            Some(last) if seq == last + 1 => true,
            Some(last) if seq <= last => {
                self.last_seq.insert(sid, last);
                FeedMetrics::inc(&self.metrics.duplicates);
                false
            }
            Some(last) => {
                self.on_gap(sid, last + 1, seq, now, out);
                true
            }
        }
    }

    fn on_gap(&mut self, sid: u64, expected: u64, got: u64, now: Instant, out: &mut Output) {
        self.dirty = true;
        FeedMetrics::inc(&self.metrics.gaps);
        let channel = self.sid_index.get(&sid).map(|&i| self.subs[i].channel);
        warn!(sid, expected, got, channel = channel.map(Channel::as_str), "Sequence gap.");
        self.emit_event(out, FeedEvent::Gap { sid, expected, got });
        if channel == Some(Channel::OrderbookDelta) {
            // A lost frame could belong to any market of the sid: every book of it is suspect.
            let i = self.sid_index[&sid];
            let markets: Vec<Name> = self.subs[i].markets.iter().cloned().collect();
            for market in &markets {
                if let Some(book) = self.books.get_mut(market) {
                    book.fresh = false;
                    book.requested = false;
                }
            }
            self.emit_event(
                out,
                FeedEvent::Stale { reason: format!("sequence gap on sid {sid}: {expected}..{got}") },
            );
            self.request_missing_snapshots(i, now, out);
        }
    }

    fn on_subscribed(&mut self, id: Option<u64>, channel: &str, sid: u64, now: Instant, out: &mut Output) {
        self.dirty = true;
        let pending = id.and_then(|id| self.pending.remove(&id));
        let Some(Pending { channel: pending_channel, what: PendingKind::Subscribe(markets), .. }) = pending
        else {
            // A late ack for a subscribe we already sent again: drop the duplicate.
            warn!(channel, sid, ?id, "Unexpected subscription; unsubscribing it.");
            let id = self.next_id();
            send(out, Command::Unsubscribe { id, sids: vec![sid] });
            return;
        };
        let Some(i) = self.sub_index(pending_channel) else {
            return;
        };
        info!(channel, sid, "Subscribed.");
        self.emit_event(out, FeedEvent::Subscribed { channel: channel.to_owned(), sid });
        let sub = &mut self.subs[i];
        sub.state = SubState::Active;
        sub.sid = Some(sid);
        sub.updating = None;
        sub.markets = markets;
        self.sid_index.insert(sid, i);
        // Anything wanted that changed while the subscribe was in flight.
        self.reconcile(now, out);
    }

    fn on_ok(&mut self, id: Option<u64>, markets: Option<Vec<&str>>, now: Instant, out: &mut Output) {
        self.dirty = true;
        let Some(pending) = id.and_then(|id| self.pending.remove(&id)) else {
            return;
        };
        let Some(i) = self.sub_index(pending.channel) else {
            return;
        };
        match pending.what {
            PendingKind::Update(action, changed) => {
                let acked: Option<BTreeSet<Name>> =
                    markets.map(|list| list.into_iter().map(|m| self.intern(m)).collect());
                let sub = &mut self.subs[i];
                sub.updating = None;
                match (acked, action) {
                    (Some(list), _) => sub.markets = list,
                    (None, Action::AddMarkets) => sub.markets.extend(changed),
                    (None, _) => {
                        for m in &changed {
                            sub.markets.remove(m);
                        }
                    }
                }
                self.reconcile(now, out);
            }
            PendingKind::Snapshot | PendingKind::Subscribe(_) | PendingKind::Unsubscribe => {}
        }
    }

    fn on_unsubscribed(&mut self, id: Option<u64>, sid: u64, now: Instant, out: &mut Output) {
        self.dirty = true;
        if let Some(id) = id {
            self.pending.remove(&id);
        }
        self.last_seq.remove(&sid);
        let Some(i) = self.sid_index.remove(&sid) else {
            return;
        };
        let sub = &mut self.subs[i];
        sub.sid = None;
        sub.markets.clear();
        let then_subscribe = matches!(sub.state, SubState::Unsubscribing { then_subscribe: true });
        sub.state = SubState::Idle;
        if then_subscribe {
            self.subscribe(i, now, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_error(
        &mut self,
        id: Option<u64>,
        sid: Option<u64>,
        code: u32,
        msg: &str,
        market: Option<&str>,
        now: Instant,
        out: &mut Output,
    ) {
        self.dirty = true;
        FeedMetrics::inc(&self.metrics.exchange_errors);
        let pending = id.and_then(|id| self.pending.remove(&id));
        warn!(code, msg, id, sid, market, "Exchange error.");
        if let Some(p) = pending {
            let Some(i) = self.sub_index(p.channel) else {
                return;
            };
            match p.what {
                PendingKind::Subscribe(_) => {
                    // Retry later: a user error repeats at most once per ack_timeout.
                    self.subs[i].state = SubState::RetryAt(now + self.cfg.ack_timeout);
                }
                PendingKind::Unsubscribe => {
                    // The sid is gone either way (7: unknown sid); subscribe afresh.
                    if let Some(sid) = self.subs[i].sid.take() {
                        self.sid_index.remove(&sid);
                    }
                    self.subscribe(i, now, out);
                }
                PendingKind::Update(..) => {
                    // The exchange's market list is now unknown: start the sid over.
                    self.subs[i].updating = None;
                    self.resubscribe(i, now, out);
                }
                PendingKind::Snapshot => {
                    // An exchange without get_snapshot: resubscribe for fresh snapshots.
                    self.resubscribe(i, now, out);
                }
            }
            return;
        }
        if let Some(sid) = sid
            && ErrorCode(code).is_terminal()
            && let Some(&i) = self.sid_index.get(&sid)
        {
            // The subscription is dead and messages were lost: subscribe again.
            self.sid_index.remove(&sid);
            self.last_seq.remove(&sid);
            self.subs[i].sid = None;
            self.mark_channel_stale(i, out, &format!("terminal error {code} on sid {sid}: {msg}"));
            FeedMetrics::inc(&self.metrics.resubscribes);
            self.subscribe(i, now, out);
        }
    }

    fn on_snapshot(
        &mut self,
        sid: u64,
        market: &str,
        yes: Vec<Level>,
        no: Vec<Level>,
        sending_ts_ms: Option<i64>,
        out: &mut Output,
    ) {
        self.dirty = true;
        if !self.desired.contains(market) {
            // A market being removed: its book is no longer kept.
            FeedMetrics::inc(&self.metrics.stray_frames);
            return;
        }
        let market = self.intern(market);
        let mut no = no;
        if self.cfg.use_yes_price {
            // NO levels came on the YES scale: back to NO contract prices, ascending.
            for level in &mut no {
                level.0 = level.0.complement();
            }
            no.reverse();
        }
        let snapshot = BookSnapshot { yes, no };
        let entry = self.books.entry(market.clone()).or_default();
        let was_resync = !entry.fresh && entry.requested;
        match OrderBook::from_snapshot(&snapshot) {
            Ok(book) => {
                entry.book = book;
                entry.fresh = true;
                entry.requested = false;
            }
            Err(e) => {
                FeedMetrics::inc(&self.metrics.book_errors);
                warn!(%market, error = %e, "Snapshot is not a valid book.");
                entry.fresh = false;
            }
        }
        FeedMetrics::inc(&self.metrics.snapshots);
        self.emit(out, market, sending_ts_ms, TickKind::BookSnapshot(snapshot));
        if was_resync && !self.books.values().any(|b| b.requested) {
            self.pending.retain(|_, p| !matches!(p.what, PendingKind::Snapshot));
            FeedMetrics::inc(&self.metrics.resyncs);
            info!(sid, "Books rebuilt from fresh snapshots.");
            self.emit_event(out, FeedEvent::Resynced { sid });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_delta(
        &mut self,
        sid: u64,
        market: &str,
        side: Side,
        price: Price,
        delta: crate::tick::Qty,
        ts_ms: Option<i64>,
        now: Instant,
        out: &mut Output,
    ) {
        let price = if side == Side::No && self.cfg.use_yes_price { price.complement() } else { price };
        if !self.desired.contains(market) {
            // A market being removed: its book is no longer kept.
            FeedMetrics::inc(&self.metrics.stray_frames);
            return;
        }
        let Some(entry) = self.books.get_mut(market) else {
            // Deltas come only after a market's snapshot: one was lost.
            FeedMetrics::inc(&self.metrics.stale_deltas);
            let market = self.intern(market);
            self.books.insert(market, MarketBook::default());
            if let Some(&i) = self.sid_index.get(&sid) {
                self.request_missing_snapshots(i, now, out);
            }
            return;
        };
        if !entry.fresh {
            // Waiting for a snapshot; this change is already inside it or comes after it.
            FeedMetrics::inc(&self.metrics.stale_deltas);
            return;
        }
        let result = entry.book.apply(side, price, delta);
        let market = self.intern(market);
        FeedMetrics::inc(&self.metrics.deltas);
        self.emit(out, market.clone(), ts_ms, TickKind::BookDelta(BookDelta { side, price, delta }));
        if let Err(e) = result {
            FeedMetrics::inc(&self.metrics.book_errors);
            warn!(%market, error = %e, "Book broken; asking for a fresh snapshot.");
            if let Some(book) = self.books.get_mut(&market) {
                book.fresh = false;
                book.requested = false;
            }
            self.emit(out, market, None, TickKind::Feed(FeedEvent::Stale { reason: e.to_string() }));
            if let Some(&i) = self.sid_index.get(&sid) {
                self.request_missing_snapshots(i, now, out);
            }
        }
    }

    /// Sends one `get_snapshot` for every market of the orderbook sub whose book is stale and
    /// not already requested.
    fn request_missing_snapshots(&mut self, i: usize, now: Instant, out: &mut Output) {
        self.dirty = true;
        let sub = &self.subs[i];
        let Some(sid) = sub.sid.filter(|_| sub.state == SubState::Active) else {
            return;
        };
        let channel = sub.channel;
        let mut markets = Vec::new();
        for market in &sub.markets {
            let book = self.books.entry(market.clone()).or_default();
            if !book.fresh && !book.requested {
                book.requested = true;
                markets.push(market.clone());
            }
        }
        if markets.is_empty() {
            return;
        }
        let id = self.next_id();
        self.pending.insert(id, Pending { channel, what: PendingKind::Snapshot, sent_at: now });
        let market_tickers = markets.iter().map(|m| m.to_string()).collect();
        send(out, Command::UpdateSubscription { id, sid, action: Action::GetSnapshot, market_tickers });
    }

    /// Sends `subscribe` for sub `i` (or leaves it idle when it has nothing to cover).
    fn subscribe(&mut self, i: usize, now: Instant, out: &mut Output) {
        let channel = self.subs[i].channel;
        if channel.takes_market_filter() && self.desired.is_empty() {
            // Without a market filter Kalshi would send every market; wait for markets.
            self.subs[i].state = SubState::Idle;
            return;
        }
        let id = self.next_id();
        let markets = if channel.takes_market_filter() { self.desired.clone() } else { BTreeSet::new() };
        let market_tickers: Vec<String> = markets.iter().map(|m| m.to_string()).collect();
        self.subs[i].state = SubState::Subscribing;
        self.pending.insert(id, Pending { channel, what: PendingKind::Subscribe(markets), sent_at: now });
        debug!(channel = channel.as_str(), id, markets = market_tickers.len(), "Subscribing.");
        let use_yes_price = self.cfg.use_yes_price;
        send(
            out,
            Command::Subscribe {
                id,
                channels: vec![channel],
                market_tickers,
                use_yes_price,
                send_initial_snapshot: None,
            },
        );
    }

    /// Drops sub `i`'s subscription and subscribes again (fresh sid, fresh snapshots).
    fn resubscribe(&mut self, i: usize, now: Instant, out: &mut Output) {
        FeedMetrics::inc(&self.metrics.resubscribes);
        let Some(sid) = self.subs[i].sid else {
            self.subscribe(i, now, out);
            return;
        };
        self.mark_channel_stale(i, out, &format!("resubscribing sid {sid}"));
        let id = self.next_id();
        let channel = self.subs[i].channel;
        self.subs[i].state = SubState::Unsubscribing { then_subscribe: true };
        self.pending.insert(id, Pending { channel, what: PendingKind::Unsubscribe, sent_at: now });
        send(out, Command::Unsubscribe { id, sids: vec![sid] });
    }

    fn mark_channel_stale(&mut self, i: usize, out: &mut Output, reason: &str) {
        if self.subs[i].channel != Channel::OrderbookDelta {
            return;
        }
        for book in self.books.values_mut() {
            book.fresh = false;
            book.requested = true;
        }
        self.emit_event(out, FeedEvent::Stale { reason: reason.to_owned() });
    }

    /// Brings every active market-filtered sub in line with the wanted markets, one
    /// `update_subscription` in flight per sid.
    fn reconcile(&mut self, now: Instant, out: &mut Output) {
        for i in 0..self.subs.len() {
            let sub = &self.subs[i];
            let (channel, state, updating, sid) = (sub.channel, sub.state, sub.updating, sub.sid);
            if !channel.takes_market_filter() {
                continue;
            }
            match state {
                SubState::Idle if !self.desired.is_empty() => {
                    self.subscribe(i, now, out);
                    continue;
                }
                SubState::Active => {}
                _ => continue,
            }
            if updating.is_some() {
                continue;
            }
            let Some(sid) = sid else { continue };
            if self.desired.is_empty() {
                // Deleting the last market would leave an unfiltered subscription.
                let id = self.next_id();
                self.subs[i].state = SubState::Unsubscribing { then_subscribe: false };
                self.pending.insert(id, Pending { channel, what: PendingKind::Unsubscribe, sent_at: now });
                send(out, Command::Unsubscribe { id, sids: vec![sid] });
                continue;
            }
            let held = &self.subs[i].markets;
            let add: Vec<Name> = self.desired.difference(held).cloned().collect();
            let delete: Vec<Name> = held.difference(&self.desired).cloned().collect();
            let (action, changed) = match (add.is_empty(), delete.is_empty()) {
                (false, _) => (Action::AddMarkets, add),
                (true, false) => (Action::DeleteMarkets, delete),
                (true, true) => continue,
            };
            let id = self.next_id();
            self.subs[i].updating = Some(id);
            let market_tickers = changed.iter().map(|m| m.to_string()).collect();
            self.pending
                .insert(id, Pending { channel, what: PendingKind::Update(action, changed), sent_at: now });
            send(out, Command::UpdateSubscription { id, sid, action, market_tickers });
        }
    }

    /// Publishes Live once everything is subscribed and every book is built.
    fn update_state(&mut self, out: &mut Output) {
        if !self.connected {
            return;
        }
        let subscribed = self.subs.iter().all(|s| match s.state {
            SubState::Active => true,
            SubState::Idle => s.channel.takes_market_filter() && self.desired.is_empty(),
            _ => false,
        });
        let books_ready = !self.subs.iter().any(|s| s.channel == Channel::OrderbookDelta)
            || self.desired.iter().all(|m| self.books.get(m).is_some_and(|b| b.fresh));
        let live = subscribed && books_ready;
        if live != self.live {
            self.live = live;
            if live {
                info!(markets = self.desired.len(), "Live.");
                self.metrics.set_state(FeedState::Live);
                self.emit_event(out, FeedEvent::Live);
            } else {
                self.metrics.set_state(FeedState::Stale);
            }
        } else if !live && self.metrics.state() == FeedState::Live {
            self.metrics.set_state(FeedState::Subscribing);
        }
    }

    fn sub_index(&self, channel: Channel) -> Option<usize> {
        self.subs.iter().position(|s| s.channel == channel)
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn intern(&mut self, name: &str) -> Name {
        if let Some(n) = self.names.get(name) {
            return n.clone();
        }
        if self.names.len() >= MAX_INTERNED {
            self.names.clear();
        }
        let n: Name = Arc::from(name);
        self.names.insert(n.clone());
        n
    }

    fn emit_lifecycle(
        &mut self,
        out: &mut Output,
        market: Name,
        scope: LifecycleScope,
        event: &str,
        detail: String,
    ) {
        FeedMetrics::inc(&self.metrics.lifecycles);
        let kind = TickKind::Lifecycle(Lifecycle { scope, event: event.to_owned(), detail });
        self.emit(out, market, None, kind);
    }

    fn emit_event(&self, out: &mut Output, event: FeedEvent) {
        self.emit(out, Arc::from(""), None, TickKind::Feed(event));
    }

    fn emit(&self, out: &mut Output, market: Name, exch_ts: Option<i64>, kind: TickKind) {
        out.ticks.push(Tick {
            feed: self.cfg.feed.clone(),
            conn: self.cfg.conn,
            market,
            exch_ts,
            recv_ts: self.recv_ts,
            kind,
        });
    }
}

fn send(out: &mut Output, command: Command) {
    out.send.push(command.to_text());
}
