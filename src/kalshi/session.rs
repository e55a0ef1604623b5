//! The sans-IO Kalshi protocol session of one connection.
//!
//! The session owns what the feed *wants* (channels and markets) and what the exchange has
//! granted on the current connection (sids, their markets and `seq`), plus one exact book per
//! market. It does no I/O: the feed actor hands it events (connected, a frame, a timer,
//! new markets) and sends the command texts, publishes the ticks and raises the alerts it puts
//! in [`Output`].
//!
//! Promises:
//! - after every connect it subscribes every channel again (one `subscribe` per channel, so
//!   each ack maps to one channel), waits for each `subscribed`, and retries any command that
//!   gets an error or no ack within `ack_timeout`;
//! - market changes are applied with `update_subscription`, one command in flight per sid,
//!   by reconciling what the exchange has with what is wanted; changes made while
//!   disconnected are simply part of the next subscribe;
//! - `seq` is checked per sid on every frame of one of its sids that carries one (data,
//!   `ok`, `unsubscribed`, `error`, unknown types); a duplicate is dropped, a gap is published
//!   as [`FeedEvent::Gap`] and, on the orderbook sid, repaired with `get_snapshot` (falling
//!   back to unsubscribe + subscribe) while the books are stale;
//! - frames of a sid that is not ours (an old subscription still streaming after a
//!   resubscribe) are dropped and counted, never taken as gaps, and that sid is unsubscribed
//!   once; a subscription acknowledged without its sid takes the sid of its first frame;
//! - a negative or crossed book, or a delta for a book without a snapshot, asks for a fresh
//!   snapshot of that market, at most [`RESYNC_ATTEMPTS`] times in a row with backoff; a book
//!   still broken then is kept stale (published as [`FeedEvent::Stale`] naming the market,
//!   with one `book_unrecoverable` alert per connection) and tried again after
//!   [`RESYNC_RETRY_LATER`]. Its deltas are recorded meanwhile; terminal errors (10, 25)
//!   resubscribe the channel;
//! - every frame it cannot use is counted by reason and kept, a few a minute, as a
//!   [`FeedEvent::Rejected`] with its text; unknown message types and fields are counted by
//!   name, and the first of each is logged with the frame's text;
//! - NO-side prices are normalized to the NO contract's own price whatever `use_yes_price`
//!   was sent.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::command::{Channel, Command, UpdateAction as Action};
use super::wire::{ErrorCode, Frame, FrameBuf, Note, NoteKind, Parser, WireError, WireStats, recycle_notes};
use crate::book::OrderBook;
use crate::telemetry::alerts::BOOK_UNRECOVERABLE;
use crate::telemetry::metrics::{Aside, FeedMetrics, FeedState};
use crate::tick::{
    BookDelta, BookSnapshot, FeedEvent, Level, Lifecycle, LifecycleScope, Name, Price, Qty, Quote,
    REJECTED_TEXT_MAX, Side, Tick, TickKind, Trade,
};

/// More interned names than this and the table starts over (lifecycle events name every
/// market on the exchange; the table must not grow forever).
const MAX_INTERNED: usize = 100_000;

/// Snapshot requests for one market in a row (its book broken again soon after each) before
/// the session stops asking for [`RESYNC_RETRY_LATER`].
pub const RESYNC_ATTEMPTS: u32 = 3;

/// The wait before each of those requests: the first at once, then longer.
pub const RESYNC_BACKOFF: [Duration; RESYNC_ATTEMPTS as usize] =
    [Duration::ZERO, Duration::from_secs(2), Duration::from_secs(10)];

/// How long a book is kept stale, without asking, once its attempts ran out.
pub const RESYNC_RETRY_LATER: Duration = Duration::from_secs(300);

/// A rebuilt book that stays sound this long is repaired: its attempts start over, and the
/// connection's `book_unrecoverable` alert resolves once no book of it is stale.
pub const RESYNC_HEALTHY: Duration = Duration::from_secs(60);

/// Rejected frames kept (published as [`FeedEvent::Rejected`] and logged) in a burst; then
/// one per [`REJECT_REFILL`]. The others are counted only.
const REJECT_BURST: u32 = 10;

/// One more rejected frame may be kept per this much time.
const REJECT_REFILL: Duration = Duration::from_secs(6);

/// Most of a frame's text logged with the first unknown type or field of its kind.
const LOGGED_TEXT_MAX: usize = 1024;

/// Sids remembered per connection (ours before, or unsubscribed as strays); the sets start
/// over past this, which at worst sends one more `unsubscribe`.
const MAX_REMEMBERED_SIDS: usize = 4096;

/// Trade ids remembered per market (newest last), so that a check against the REST API can
/// tell the trades tickd received from those it missed.
pub const RECENT_TRADES: usize = 16;

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

/// What the session wants done after an event: commands to send, ticks to publish, alerts.
#[derive(Debug, Default)]
pub struct Output {
    /// Command texts to send, in order.
    pub send: Vec<String>,
    /// Ticks to publish, in order.
    pub ticks: Vec<Tick>,
    /// Alerts to raise or resolve for this connection, in order.
    pub alerts: Vec<AlertAction>,
}

/// An alert the session asks its feed to raise or resolve (the feed owns the alerter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlertAction {
    /// Open an incident of this kind for the connection (a no-op while one is open).
    Raise {
        /// The alert kind.
        kind: &'static str,
        /// Details for the human.
        message: String,
    },
    /// Close it, with a recovery notice.
    Resolve {
        /// The alert kind.
        kind: &'static str,
        /// Details for the human.
        message: String,
    },
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
    /// The server's subscription id while subscribed (`None` while active only when the
    /// exchange acknowledged without naming it; the first frame of the channel names it).
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
    /// Subscribed.
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
    /// `get_snapshot` of these markets.
    Snapshot(Vec<Name>),
}

/// One market's book and whether it can be trusted.
#[derive(Debug, Default)]
struct MarketBook {
    book: OrderBook,
    /// Built from a snapshot and unbroken since.
    fresh: bool,
    /// A snapshot of this market is on its way (asked for, or part of a new subscription).
    requested: bool,
}

/// The repair of one market's book after it broke (crossed, negative, or missing its
/// snapshot). Kept until the rebuilt book has stayed sound for [`RESYNC_HEALTHY`].
#[derive(Debug, Default)]
struct Repair {
    /// Snapshot requests in this round.
    attempts: u32,
    /// The next request is due then (backoff, or [`RESYNC_RETRY_LATER`] once given up).
    due: Option<Instant>,
    /// The attempts ran out: the book is kept stale, its deltas recorded, the alert raised.
    given_up: bool,
    /// A `Stale` event naming the market is out and no `Resynced` of it since.
    announced: bool,
    /// When a snapshot last rebuilt the book sound.
    sound_since: Option<Instant>,
}

/// What the session last received of one market, per channel: the frozen-market check
/// ([`crate::feed::frozen`]) reads it to find markets that went quiet and to compare what tickd
/// has with what the REST API shows.
#[derive(Clone, Debug, Default)]
pub struct Activity {
    /// The last `ticker` message.
    pub ticker: Option<Instant>,
    /// The last trade.
    pub trade: Option<Instant>,
    /// The last book delta.
    pub delta: Option<Instant>,
    /// The last book snapshot (part of a subscription, or asked for).
    pub snapshot: Option<Instant>,
    /// Ids of the newest trades received, newest last, at most [`RECENT_TRADES`].
    pub recent_trades: VecDeque<String>,
    /// The exchange's time (ms) of the newest trade received, when its frame said.
    pub last_trade_ms: Option<i64>,
}

impl Activity {
    /// The last update the exchange sent of its own accord (a snapshot may have been asked
    /// for, so it proves nothing about the stream).
    pub fn last_streamed(&self) -> Option<Instant> {
        self.ticker.max(self.trade).max(self.delta)
    }

    /// The last update of any kind.
    pub fn last_update(&self) -> Option<Instant> {
        self.last_streamed().max(self.snapshot)
    }

    /// The last book update, delta or snapshot.
    pub fn last_book(&self) -> Option<Instant> {
        self.delta.max(self.snapshot)
    }
}

/// How many rejected frames may be kept now (a token bucket), and how many were not.
#[derive(Debug)]
struct RejectBudget {
    tokens: u32,
    refilled_at: Option<Instant>,
    unkept: u64,
}

impl RejectBudget {
    fn take(&mut self, now: Instant) -> bool {
        let last = *self.refilled_at.get_or_insert(now);
        let earned = (now.saturating_duration_since(last).as_millis() / REJECT_REFILL.as_millis()) as u32;
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(REJECT_BURST);
            self.refilled_at = Some(last + REJECT_REFILL * earned);
        }
        if self.tokens == 0 {
            self.unkept += 1;
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Everything one connection's protocol needs to remember.
pub struct Session {
    cfg: SessionConfig,
    metrics: Arc<FeedMetrics>,
    parser: Parser,
    /// A frame the fast path leaves to simd-json, copied from the received text (which stays
    /// as sent).
    frame_buf: FrameBuf,
    /// Fields the parser set aside in the frame being parsed.
    notes: Vec<Note<'static>>,
    names: HashSet<Name>,
    desired: BTreeSet<Name>,
    subs: Vec<Sub>,
    sid_index: HashMap<u64, usize>,
    last_seq: HashMap<u64, u64>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    books: HashMap<Name, MarketBook>,
    /// What was last received of each wanted market, per channel.
    activity: HashMap<Name, Activity>,
    /// Books under repair (usually none), so timers never walk every book.
    repairs: HashMap<Name, Repair>,
    /// A `Stale` event for the whole connection is out; `Resynced` follows once every book is
    /// rebuilt (or given up).
    resyncing: bool,
    /// Sids that were ours on this connection: never adopted again.
    retired: HashSet<u64>,
    /// Sids not ours that were asked to stop, and the ids of those commands.
    stray_sids: HashSet<u64>,
    stray_commands: HashSet<u64>,
    rejects: RejectBudget,
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
            frame_buf: FrameBuf::default(),
            notes: Vec::new(),
            names: HashSet::new(),
            desired: BTreeSet::new(),
            subs,
            sid_index: HashMap::new(),
            last_seq: HashMap::new(),
            pending: HashMap::new(),
            next_id: 1,
            books: HashMap::new(),
            activity: HashMap::new(),
            repairs: HashMap::new(),
            resyncing: false,
            retired: HashSet::new(),
            stray_sids: HashSet::new(),
            stray_commands: HashSet::new(),
            rejects: RejectBudget { tokens: REJECT_BURST, refilled_at: None, unkept: 0 },
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

    /// The markets this session wants, by name.
    pub fn market_names(&self) -> impl Iterator<Item = &Name> {
        self.desired.iter()
    }

    /// Whether every subscription is acknowledged and every book built (or, after its
    /// resyncs ran out, kept stale and announced as such).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The channel a subscription id of the current connection carries (a gap on the `trade`
    /// channel means trades were lost).
    pub fn channel_of_sid(&self, sid: u64) -> Option<Channel> {
        self.sid_index.get(&sid).map(|&i| self.subs[i].channel)
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

    /// What was last received of `market` (`None` before anything was).
    pub fn activity(&self, market: &str) -> Option<&Activity> {
        self.activity.get(market)
    }

    /// Whether `channel` is one this session subscribes.
    pub fn has_channel(&self, channel: Channel) -> bool {
        self.sub_index(channel).is_some()
    }

    /// Asks the exchange for `market` afresh on this connection, for a market that stopped
    /// updating: a `get_snapshot` of its book (which is stale until the snapshot arrives, a
    /// `stale` then a `resynced` event naming it), and, with `resubscribe`, its removal from
    /// the `ticker` and `trade` subscriptions followed by its addition again
    /// (`update_subscription`), for a market whose trades stopped coming. Returns whether
    /// anything was asked (nothing is while a subscription is not settled: the next connect
    /// or the pending change brings the market afresh anyway).
    pub fn resync_market(
        &mut self,
        market: &str,
        resubscribe: bool,
        reason: &str,
        now: Instant,
        out: &mut Output,
    ) -> bool {
        let Some(market) = self.desired.get(market).cloned() else { return false };
        let mut asked = false;
        let held =
            |sub: &Sub| sub.state == SubState::Active && sub.sid.is_some() && sub.markets.contains(&market);
        if let Some(i) = self.sub_index(Channel::OrderbookDelta)
            && held(&self.subs[i])
            && let Some(sid) = self.subs[i].sid
        {
            // A new round of repair: the book is not broken, it was left behind.
            if let Some(repair) = self.repairs.get_mut(&market)
                && !repair.given_up
            {
                repair.attempts = 0;
                repair.due = None;
            }
            self.book_broken(&market, sid, reason, now, out);
            asked = true;
        }
        let channels = if resubscribe || !asked { &[Channel::Ticker, Channel::Trade][..] } else { &[] };
        for &channel in channels {
            let Some(i) = self.sub_index(channel) else { continue };
            let sub = &self.subs[i];
            let Some(sid) = sub.sid.filter(|_| held(sub) && sub.updating.is_none()) else { continue };
            // Removed now and added again by `reconcile` once the removal is acknowledged.
            let id = self.next_id();
            self.subs[i].updating = Some(id);
            let changed = vec![market.clone()];
            self.pending.insert(
                id,
                Pending { channel, what: PendingKind::Update(Action::DeleteMarkets, changed), sent_at: now },
            );
            send(
                out,
                Command::UpdateSubscription {
                    id,
                    sid,
                    action: Action::DeleteMarkets,
                    market_tickers: vec![market.to_string()],
                },
            );
            asked = true;
        }
        asked
    }

    /// Markets whose book is kept stale after its resyncs ran out, sorted.
    pub fn stale_markets(&self) -> Vec<Name> {
        let mut all: Vec<Name> =
            self.repairs.iter().filter(|(_, r)| r.given_up).map(|(m, _)| m.clone()).collect();
        all.sort();
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
        self.retired.clear();
        self.stray_sids.clear();
        self.stray_commands.clear();
        self.resyncing = false;
        // The disconnect ends every window in the ledger; a book still broken is announced
        // again on the new connection.
        for repair in self.repairs.values_mut() {
            repair.announced = false;
        }
    }

    /// Replaces the wanted market list; applied at once when connected, else at the next
    /// connect.
    pub fn set_markets(&mut self, markets: &[String], now: Instant, out: &mut Output) {
        self.desired = markets.iter().map(|m| self.intern(m)).collect();
        let desired = &self.desired;
        self.books.retain(|market, _| desired.contains(market));
        self.activity.retain(|market, _| desired.contains(market));
        let before = self.given_up_count();
        self.repairs.retain(|market, _| desired.contains(market));
        self.after_repairs_removed(before, out);
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
        let repairs = self.repairs.iter().filter_map(|(market, r)| {
            let requested = self.books.get(market).is_some_and(|b| b.fresh || b.requested);
            match (r.sound_since, r.due) {
                (Some(since), _) => Some(since + RESYNC_HEALTHY),
                (None, Some(due)) if !requested => Some(due),
                _ => None,
            }
        });
        acks.chain(retries).chain(repairs).min()
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
            warn!(channel = p.channel.as_str(), id, "No reply to a command in time; trying again.");
            match p.what {
                PendingKind::Subscribe(_) | PendingKind::Unsubscribe => {
                    FeedMetrics::inc(&self.metrics.resubscribes);
                    self.subscribe(i, now, out);
                }
                PendingKind::Update(..) => {
                    self.subs[i].updating = None;
                    self.reconcile(now, out);
                }
                PendingKind::Snapshot(markets) => {
                    // Unanswered requests count as attempts that failed.
                    for market in markets {
                        if let Some(book) = self.books.get_mut(&market)
                            && !book.fresh
                            && book.requested
                        {
                            book.requested = false;
                            self.schedule_repair(&market, now, "no snapshot in reply to get_snapshot", out);
                        }
                    }
                    self.request_due_snapshots(i, now, out);
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
        self.repair_timers(now, out);
        self.update_state(out);
    }

    /// Repairs whose time has come: snapshot requests due, and rebuilt books that stayed
    /// sound long enough to be trusted again.
    fn repair_timers(&mut self, now: Instant, out: &mut Output) {
        if self.repairs.is_empty() {
            return;
        }
        let before = self.given_up_count();
        let books = &self.books;
        self.repairs.retain(|market, r| {
            let sound = books.get(market).is_some_and(|b| b.fresh);
            !(sound && r.sound_since.is_some_and(|since| since + RESYNC_HEALTHY <= now))
        });
        self.after_repairs_removed(before, out);
        let due = self.repairs.iter().any(|(market, r)| {
            r.due.is_some_and(|d| d <= now) && self.books.get(market).is_none_or(|b| !b.fresh && !b.requested)
        });
        if due && let Some(i) = self.sub_index(Channel::OrderbookDelta) {
            self.request_due_snapshots(i, now, out);
        }
    }

    /// How many books are kept stale after their resyncs gave up (each under the connection's
    /// `book_unrecoverable` alert).
    pub fn books_given_up(&self) -> usize {
        self.given_up_count()
    }

    fn given_up_count(&self) -> usize {
        self.repairs.values().filter(|r| r.given_up).count()
    }

    /// Keeps the stale-book gauge and the alert in step after repairs were dropped.
    fn after_repairs_removed(&mut self, given_up_before: usize, out: &mut Output) {
        let now_given_up = self.given_up_count();
        self.metrics
            .stale_books
            .fetch_sub((given_up_before.saturating_sub(now_given_up)) as u64, Ordering::Relaxed);
        if given_up_before > 0 && now_given_up == 0 {
            info!("Every book of the connection is sound again.");
            out.alerts.push(AlertAction::Resolve {
                kind: BOOK_UNRECOVERABLE,
                message: format!(
                    "{}/{}: every book is sound again (for {}s)",
                    self.cfg.feed,
                    self.cfg.conn,
                    RESYNC_HEALTHY.as_secs()
                ),
            });
        }
    }

    /// Handles one text frame, as received (it is copied before parsing and never changed).
    ///
    /// A frame that cannot be used is counted by reason, kept (a few a minute) as a
    /// [`FeedEvent::Rejected`] tick with its text, logged with it, and returned as an error.
    pub fn on_frame(
        &mut self,
        text: &[u8],
        recv_ts: i64,
        now: Instant,
        out: &mut Output,
    ) -> Result<(), FrameError> {
        self.recv_ts = recv_ts;
        let mut buf = std::mem::take(&mut self.frame_buf);
        let mut notes = recycle_notes(std::mem::take(&mut self.notes));
        let before = self.parser.stats;
        let parsed = self.parser.parse_frame(text, &mut buf, &mut notes);
        self.count_stats(before);
        if !notes.is_empty() {
            self.count_notes(&notes, text);
        }
        let result = match parsed {
            Ok(frame) => {
                if let Frame::Unknown { msg_type, .. } = frame
                    && self.metrics.aside.add(Aside::UnknownMessage, msg_type, "", 1)
                {
                    warn!(
                        msg_type,
                        text = %excerpt(text, LOGGED_TEXT_MAX),
                        "Unknown message type: counted by type in /metrics and ignored (logged once per type)."
                    );
                }
                self.handle(frame, now, out);
                Ok(())
            }
            Err(e) => {
                self.reject(&e, text, now, out);
                Err(e.into())
            }
        };
        self.notes = recycle_notes(notes);
        self.frame_buf = buf;
        if std::mem::take(&mut self.dirty) {
            self.update_state(out);
        }
        result
    }

    fn count_stats(&self, before: WireStats) {
        let after = self.parser.stats;
        let m = &self.metrics;
        m.unknown_types.fetch_add(after.unknown_types - before.unknown_types, Ordering::Relaxed);
        m.unknown_fields.fetch_add(after.unknown_fields - before.unknown_fields, Ordering::Relaxed);
        m.invalid_fields.fetch_add(after.invalid_fields - before.invalid_fields, Ordering::Relaxed);
    }

    /// Counts the fields the parser set aside by name; the first of each is logged.
    #[cold]
    fn count_notes(&self, notes: &[Note<'_>], text: &[u8]) {
        for note in notes {
            let kind = match note.kind {
                NoteKind::Unknown => Aside::UnknownField,
                NoteKind::Invalid => Aside::InvalidField,
            };
            if !self.metrics.aside.add(kind, note.msg_type, note.field, 1) {
                continue;
            }
            let text = excerpt(text, LOGGED_TEXT_MAX);
            match note.kind {
                NoteKind::Unknown => info!(
                    msg_type = note.msg_type,
                    field = note.field,
                    %text,
                    "Unknown field: counted in /metrics and ignored (logged once per type and field)."
                ),
                NoteKind::Invalid => warn!(
                    msg_type = note.msg_type,
                    field = note.field,
                    %text,
                    "Field could not be read and is taken as not given; the message is used \
                     (logged once per type and field)."
                ),
            }
        }
    }

    /// A frame that cannot be used: counted, and kept and logged within the budget.
    #[cold]
    fn reject(&mut self, e: &WireError, text: &[u8], now: Instant, out: &mut Output) {
        FeedMetrics::inc(&self.metrics.parse_errors);
        self.metrics.aside.add(Aside::Rejected, e.reason(), "", 1);
        if !self.rejects.take(now) {
            return;
        }
        let unkept = std::mem::take(&mut self.rejects.unkept);
        let kept = excerpt(text, REJECTED_TEXT_MAX);
        warn!(
            reason = e.reason(),
            error = %e,
            bytes = text.len(),
            unkept,
            text = %excerpt(text, LOGGED_TEXT_MAX),
            "Unusable frame: counted in /metrics, kept in feed_events, not used."
        );
        self.emit_event(
            out,
            FeedEvent::Rejected {
                reason: e.reason().to_owned(),
                error: e.to_string(),
                bytes: text.len() as u64,
                text: kept,
                unkept,
            },
        );
    }

    fn handle(&mut self, frame: Frame<'_>, now: Instant, out: &mut Output) {
        // Subscription data on a sid that is not ours: an old subscription still streaming,
        // unless it is the first frame of one acknowledged without its sid.
        if let Some(sid) = frame.data_sid()
            && !self.sid_index.contains_key(&sid)
            && !self.adopt(sid, &frame, out)
        {
            self.stray(sid, out);
            return;
        }
        match frame {
            Frame::Subscribed { id, channel, sid } => self.on_subscribed(id, channel, sid, now, out),
            Frame::Ok { id, sid, seq, market_tickers } => {
                if self.control_seq(sid, seq, now, out) {
                    self.on_ok(id, market_tickers, now, out);
                }
            }
            Frame::SubscriptionList { subscriptions, .. } => {
                debug!(?subscriptions, "Subscription list.");
            }
            Frame::Unsubscribed { id, sid, seq } => {
                self.control_seq(sid, seq, now, out);
                self.on_unsubscribed(id, sid, now, out);
            }
            Frame::Error { id, sid, seq, code, msg, market_ticker } => {
                self.control_seq(sid, seq, now, out);
                self.on_error(id, sid, code, msg, market_ticker, now, out);
            }
            Frame::Snapshot { sid, seq, market, yes, no, sending_ts_ms, .. } => {
                if self.seq_ok(sid, seq, now, out) {
                    self.on_snapshot(sid, market, yes, no, sending_ts_ms, now, out);
                }
            }
            Frame::Delta { sid, seq, market, side, price, delta, ts_ms } => {
                if self.seq_ok(sid, seq, now, out) {
                    self.on_delta(sid, market, side, price, delta, ts_ms, now, out);
                }
            }
            Frame::Ticker { market, quote, ts_ms, .. } => self.on_quote(market, quote, ts_ms, now, out),
            Frame::Trade { sid, seq, market, trade_id, yes_price, count, taker_side, block, ts_ms } => {
                if self.seq_ok(sid, seq, now, out) {
                    let trade = Trade {
                        trade_id: trade_id.to_owned(),
                        price: yes_price,
                        size: count,
                        taker_side,
                        block,
                        backfill: false,
                    };
                    FeedMetrics::inc(&self.metrics.trades);
                    let market = self.intern(market);
                    if let Some(seen) = self.touch(&market) {
                        seen.trade = Some(now);
                        if seen.recent_trades.len() >= RECENT_TRADES {
                            seen.recent_trades.pop_front();
                        }
                        seen.recent_trades.push_back(trade.trade_id.clone());
                        if ts_ms.is_some() {
                            seen.last_trade_ms = ts_ms;
                        }
                    }
                    self.emit(out, market, ts_ms, TickKind::Trade(trade));
                }
            }
            Frame::MarketLifecycle { sid, seq, market, event_type, detail, .. } => {
                if self.seq_ok(sid, seq, now, out) {
                    let market = self.intern(market);
                    self.emit_lifecycle(out, market, LifecycleScope::Market, event_type, detail);
                }
            }
            Frame::EventLifecycle { sid, seq, event_ticker, msg_type, detail } => {
                if self.seq_ok(sid, seq, now, out) {
                    let event = self.intern(event_ticker);
                    self.emit_lifecycle(out, event, LifecycleScope::Event, msg_type, detail);
                }
            }
            Frame::Unknown { sid, seq, .. } => match sid {
                Some(sid) if self.sid_index.contains_key(&sid) => {
                    self.seq_ok(sid, seq, now, out);
                }
                Some(sid) => self.stray(sid, out),
                None => {}
            },
        }
    }

    fn on_quote(&mut self, market: &str, quote: Quote, ts_ms: Option<i64>, now: Instant, out: &mut Output) {
        FeedMetrics::inc(&self.metrics.quotes);
        let market = self.intern(market);
        if let Some(seen) = self.touch(&market) {
            seen.ticker = Some(now);
        }
        self.emit(out, market, ts_ms, TickKind::Quote(quote));
    }

    /// The channel whose subscription delivers a data frame.
    fn channel_of(frame: &Frame<'_>) -> Option<Channel> {
        Some(match frame {
            Frame::Snapshot { .. } | Frame::Delta { .. } => Channel::OrderbookDelta,
            Frame::Ticker { .. } => Channel::Ticker,
            Frame::Trade { .. } => Channel::Trade,
            Frame::MarketLifecycle { msg_type: "multivariate_market_lifecycle", .. } => {
                Channel::MultivariateMarketLifecycle
            }
            Frame::MarketLifecycle { .. } | Frame::EventLifecycle { .. } => Channel::MarketLifecycleV2,
            _ => return None,
        })
    }

    /// A subscription the exchange acknowledged without its sid takes the sid of the first
    /// frame of its channel (one that was never ours before).
    fn adopt(&mut self, sid: u64, frame: &Frame<'_>, out: &mut Output) -> bool {
        let Some(channel) = Self::channel_of(frame) else {
            return false;
        };
        if self.retired.contains(&sid) {
            return false;
        }
        let Some(i) = self
            .subs
            .iter()
            .position(|s| s.channel == channel && s.state == SubState::Active && s.sid.is_none())
        else {
            return false;
        };
        info!(channel = channel.as_str(), sid, "Subscription id learnt from its first frame.");
        self.subs[i].sid = Some(sid);
        self.sid_index.insert(sid, i);
        self.emit_event(out, FeedEvent::Subscribed { channel: channel.as_str().to_owned(), sid });
        true
    }

    /// A frame of a sid that is not ours: dropped and counted; the sid is asked once to stop.
    fn stray(&mut self, sid: u64, out: &mut Output) {
        FeedMetrics::inc(&self.metrics.stray_frames);
        if self.stray_sids.len() >= MAX_REMEMBERED_SIDS {
            self.stray_sids.clear();
        }
        if self.stray_sids.insert(sid) {
            debug!(sid, "Frames of a subscription that is not ours; unsubscribing it.");
            let id = self.next_id();
            self.stray_commands.insert(id);
            send(out, Command::Unsubscribe { id, sids: vec![sid] });
        }
    }

    /// The sequence check of a control frame (`ok`, `unsubscribed`, `error`): run only for a
    /// sid of ours; another sid's `seq` is not ours to track. False for a duplicate.
    fn control_seq(&mut self, sid: Option<u64>, seq: Option<u64>, now: Instant, out: &mut Output) -> bool {
        match sid {
            Some(sid) if self.sid_index.contains_key(&sid) => self.seq_ok(sid, seq, now, out),
            _ => true,
        }
    }

    /// Checks `seq` of a frame on one of our sids. Returns false for a duplicate (drop the
    /// frame). A gap is published and repaired; the frame itself is then used.
    fn seq_ok(&mut self, sid: u64, seq: Option<u64>, now: Instant, out: &mut Output) -> bool {
        let Some(seq) = seq else {
            return true;
        };
        let last = self.last_seq.insert(sid, seq);
        match last {
            // The first numbered frame of a sid is the baseline, whatever its value.
            None => true,
            Some(last) if seq == last.wrapping_add(1) => true,
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
        let index = self.sid_index.get(&sid).copied();
        let channel = index.map(|i| self.subs[i].channel);
        warn!(sid, expected, got, channel = channel.map(Channel::as_str), "Sequence gap.");
        self.emit_event(out, FeedEvent::Gap { sid, expected, got });
        if let Some(i) = index
            && channel == Some(Channel::OrderbookDelta)
        {
            // A lost frame could belong to any market of the sid: every book of it is suspect.
            let markets: Vec<Name> = self.subs[i].markets.iter().cloned().collect();
            for market in &markets {
                if let Some(book) = self.books.get_mut(market) {
                    book.fresh = false;
                    book.requested = false;
                }
            }
            self.resyncing = true;
            self.emit_event(
                out,
                FeedEvent::Stale { reason: format!("sequence gap on sid {sid}: {expected}..{got}") },
            );
            self.request_due_snapshots(i, now, out);
        }
    }

    fn on_subscribed(
        &mut self,
        id: Option<u64>,
        channel: Option<&str>,
        sid: Option<u64>,
        now: Instant,
        out: &mut Output,
    ) {
        self.dirty = true;
        let is_subscribe = |p: &Pending| matches!(p.what, PendingKind::Subscribe(_));
        let key = match id {
            Some(id) => self.pending.get(&id).filter(|p| is_subscribe(p)).map(|_| id),
            // Without an id: the one subscribe in flight for that channel (or at all).
            None => {
                let mut candidates = self
                    .pending
                    .iter()
                    .filter(|(_, p)| is_subscribe(p) && channel.is_none_or(|c| p.channel.as_str() == c));
                match (candidates.next(), candidates.next()) {
                    (Some((&id, _)), None) => Some(id),
                    _ => None,
                }
            }
        };
        let Some(Pending { channel: wanted, what: PendingKind::Subscribe(markets), .. }) =
            key.and_then(|key| self.pending.remove(&key))
        else {
            // A late ack for a subscribe we already sent again: drop the duplicate.
            warn!(channel, sid, ?id, "Unexpected subscription; unsubscribing it.");
            if let Some(sid) = sid.filter(|sid| !self.sid_index.contains_key(sid)) {
                self.stray_sids.insert(sid);
                let id = self.next_id();
                self.stray_commands.insert(id);
                send(out, Command::Unsubscribe { id, sids: vec![sid] });
            }
            return;
        };
        let Some(i) = self.sub_index(wanted) else {
            return;
        };
        let sub = &mut self.subs[i];
        sub.state = SubState::Active;
        sub.sid = sid;
        sub.updating = None;
        sub.markets = markets;
        match sid {
            Some(sid) => {
                info!(channel = wanted.as_str(), sid, "Subscribed.");
                self.sid_index.insert(sid, i);
                self.emit_event(out, FeedEvent::Subscribed { channel: wanted.as_str().to_owned(), sid });
            }
            None => warn!(
                channel = wanted.as_str(),
                "Subscribed without a subscription id; its first frame will name it."
            ),
        }
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
            // A get_snapshot is answered by its snapshots; its entry goes with the last one.
            PendingKind::Snapshot(_) => {
                if let Some(id) = id {
                    self.pending.insert(id, pending);
                }
            }
            PendingKind::Subscribe(_) | PendingKind::Unsubscribe => {}
        }
    }

    /// A sid leaves this connection for good.
    fn retire(&mut self, sid: u64) {
        if self.retired.len() >= MAX_REMEMBERED_SIDS {
            self.retired.clear();
        }
        self.retired.insert(sid);
        self.last_seq.remove(&sid);
    }

    fn on_unsubscribed(&mut self, id: Option<u64>, sid: Option<u64>, now: Instant, out: &mut Output) {
        self.dirty = true;
        if let Some(id) = id
            && self.stray_commands.remove(&id)
        {
            return;
        }
        let pending = id.and_then(|id| self.pending.remove(&id));
        // Without a sid, the subscription the acknowledged command named.
        let sid = sid.or_else(|| {
            let p = pending.as_ref().filter(|p| matches!(p.what, PendingKind::Unsubscribe))?;
            self.sub_index(p.channel).and_then(|i| self.subs[i].sid)
        });
        let Some(sid) = sid else {
            return;
        };
        self.retire(sid);
        self.stray_sids.insert(sid);
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
        code: Option<u32>,
        msg: Option<&str>,
        market: Option<&str>,
        now: Instant,
        out: &mut Output,
    ) {
        self.dirty = true;
        if let Some(id) = id
            && self.stray_commands.remove(&id)
        {
            // The answer to unsubscribing a sid that was not ours (most often: unknown sid).
            debug!(?code, msg, id, "Stray subscription already gone.");
            return;
        }
        FeedMetrics::inc(&self.metrics.exchange_errors);
        let pending = id.and_then(|id| self.pending.remove(&id));
        let name = code.and_then(|c| ErrorCode(c).description());
        warn!(code, name, msg, id, sid, market, "Exchange error.");
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
                        self.retire(sid);
                    }
                    self.subscribe(i, now, out);
                }
                PendingKind::Update(..) => {
                    // The exchange's market list is now unknown: start the sid over.
                    self.subs[i].updating = None;
                    self.resubscribe(i, now, out);
                }
                PendingKind::Snapshot(_) => {
                    // An exchange without get_snapshot: resubscribe for fresh snapshots.
                    self.resubscribe(i, now, out);
                }
            }
            return;
        }
        if let Some(sid) = sid
            && code.is_some_and(|c| ErrorCode(c).is_terminal())
            && let Some(&i) = self.sid_index.get(&sid)
        {
            // The subscription is dead and messages were lost: subscribe again.
            self.sid_index.remove(&sid);
            self.retire(sid);
            self.subs[i].sid = None;
            let text = msg.unwrap_or_default();
            let code = code.unwrap_or_default();
            self.mark_channel_stale(i, out, &format!("terminal error {code} on sid {sid}: {text}"));
            FeedMetrics::inc(&self.metrics.resubscribes);
            self.subscribe(i, now, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_snapshot(
        &mut self,
        sid: u64,
        market: &str,
        yes: Vec<Level>,
        no: Vec<Level>,
        sending_ts_ms: Option<i64>,
        now: Instant,
        out: &mut Output,
    ) {
        self.dirty = true;
        if !self.desired.contains(market) {
            // A market being removed: its book is no longer kept.
            FeedMetrics::inc(&self.metrics.stray_frames);
            return;
        }
        let market = self.intern(market);
        if let Some(seen) = self.touch(&market) {
            seen.snapshot = Some(now);
        }
        let mut no = no;
        if self.cfg.use_yes_price {
            // NO levels came on the YES scale: back to NO contract prices, ascending.
            for level in &mut no {
                level.0 = level.0.complement();
            }
            no.reverse();
        }
        let snapshot = BookSnapshot { yes, no };
        let built = OrderBook::from_snapshot(&snapshot);
        FeedMetrics::inc(&self.metrics.snapshots);
        self.emit(out, market.clone(), sending_ts_ms, TickKind::BookSnapshot(snapshot));
        // The request it answers (if any) is answered for this market.
        self.pending.retain(|_, p| match &mut p.what {
            PendingKind::Snapshot(markets) => {
                markets.retain(|m| *m != market);
                !markets.is_empty()
            }
            _ => true,
        });
        let entry = self.books.entry(market.clone()).or_default();
        entry.requested = false;
        match built {
            Ok(book) => {
                entry.book = book;
                entry.fresh = true;
                if let Some(repair) = self.repairs.get_mut(&market) {
                    repair.sound_since = Some(now);
                    repair.due = None;
                    if std::mem::take(&mut repair.announced) {
                        FeedMetrics::inc(&self.metrics.resyncs);
                        info!(%market, sid, "Book rebuilt from a fresh snapshot.");
                        self.emit(out, market.clone(), None, TickKind::Feed(FeedEvent::Resynced { sid }));
                    }
                }
            }
            Err(e) => {
                entry.fresh = false;
                FeedMetrics::inc(&self.metrics.book_errors);
                warn!(%market, error = %e, "Snapshot is not a valid book.");
                self.book_broken(&market, sid, &format!("snapshot is not a valid book: {e}"), now, out);
            }
        }
        self.check_resynced(sid, out);
    }

    /// A connection-wide resync is over once no book waits for its snapshot any more (a
    /// book given up for now does not hold it back; it has its own `Stale` event).
    fn check_resynced(&mut self, sid: u64, out: &mut Output) {
        if !self.resyncing || self.books.values().any(|b| b.requested) {
            return;
        }
        let backing_off = self
            .repairs
            .iter()
            .any(|(m, r)| !r.given_up && r.due.is_some() && self.books.get(m).is_some_and(|b| !b.fresh));
        if backing_off {
            return;
        }
        self.resyncing = false;
        self.pending.retain(|_, p| !matches!(p.what, PendingKind::Snapshot(_)));
        FeedMetrics::inc(&self.metrics.resyncs);
        info!(sid, "Books rebuilt from fresh snapshots.");
        self.emit_event(out, FeedEvent::Resynced { sid });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_delta(
        &mut self,
        sid: u64,
        market: &str,
        side: Side,
        price: Price,
        delta: Qty,
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
        match self.activity.get_mut(market) {
            Some(seen) => seen.delta = Some(now),
            None => {
                let name = self.intern(market);
                if let Some(seen) = self.touch(&name) {
                    seen.delta = Some(now);
                }
            }
        }
        let Some(entry) = self.books.get_mut(market) else {
            // Deltas come only after a market's snapshot: one was lost.
            FeedMetrics::inc(&self.metrics.stale_deltas);
            let market = self.intern(market);
            self.books.insert(market.clone(), MarketBook::default());
            self.schedule_repair(&market, now, "a delta came before any snapshot", out);
            if let Some(&i) = self.sid_index.get(&sid) {
                self.request_due_snapshots(i, now, out);
            }
            return;
        };
        if !entry.fresh {
            let given_up = !entry.requested && self.repairs.get(market).is_some_and(|r| r.given_up);
            if given_up {
                // No snapshot is coming for a while: the change is recorded as sent, while
                // the book itself stays stale.
                FeedMetrics::inc(&self.metrics.deltas);
                let market = self.intern(market);
                self.emit(out, market, ts_ms, TickKind::BookDelta(BookDelta { side, price, delta }));
            } else {
                // Waiting for a snapshot; this change is already inside it or comes after it.
                FeedMetrics::inc(&self.metrics.stale_deltas);
            }
            return;
        }
        let result = entry.book.apply(side, price, delta);
        let market = self.intern(market);
        FeedMetrics::inc(&self.metrics.deltas);
        self.emit(out, market.clone(), ts_ms, TickKind::BookDelta(BookDelta { side, price, delta }));
        if let Err(e) = result {
            FeedMetrics::inc(&self.metrics.book_errors);
            warn!(%market, error = %e, "Book broken; asking for a fresh snapshot.");
            self.book_broken(&market, sid, &e.to_string(), now, out);
        }
    }

    /// A market's book can no longer be trusted: say so (once per stale period) and ask for
    /// a fresh snapshot within its attempts.
    fn book_broken(&mut self, market: &Name, sid: u64, reason: &str, now: Instant, out: &mut Output) {
        self.dirty = true;
        if let Some(book) = self.books.get_mut(market) {
            book.fresh = false;
            book.requested = false;
        }
        let repair = self.repairs.entry(market.clone()).or_default();
        if !repair.announced {
            repair.announced = true;
            self.emit(
                out,
                market.clone(),
                None,
                TickKind::Feed(FeedEvent::Stale { reason: reason.to_owned() }),
            );
        }
        self.schedule_repair(market, now, reason, out);
        if let Some(&i) = self.sid_index.get(&sid) {
            self.request_due_snapshots(i, now, out);
        }
    }

    /// Decides when the next snapshot of a broken book is asked for: at once, after a
    /// backoff, or, once [`RESYNC_ATTEMPTS`] requests in a row did not give a sound book,
    /// only after [`RESYNC_RETRY_LATER`] (the book is then kept stale and the alert raised).
    fn schedule_repair(&mut self, market: &Name, now: Instant, reason: &str, out: &mut Output) {
        let repair = self.repairs.entry(market.clone()).or_default();
        if repair.sound_since.take().is_some_and(|since| since + RESYNC_HEALTHY <= now) {
            // Sound for long enough before it broke again: a new problem, a new round.
            repair.attempts = 0;
        }
        if repair.due.is_some_and(|due| due > now) {
            // Already scheduled (backoff, or waiting to try again later).
            return;
        }
        if repair.attempts < RESYNC_ATTEMPTS {
            repair.due = Some(now + RESYNC_BACKOFF[repair.attempts as usize]);
            return;
        }
        repair.attempts = 0;
        repair.due = Some(now + RESYNC_RETRY_LATER);
        if repair.given_up {
            debug!(%market, reason, "Book still broken; trying again later.");
            return;
        }
        repair.given_up = true;
        FeedMetrics::inc(&self.metrics.stale_books);
        let message = format!(
            "{}/{}: book of {market} still broken after {RESYNC_ATTEMPTS} fresh snapshots ({reason}); \
             kept stale, its deltas recorded, tried again every {}s",
            self.cfg.feed,
            self.cfg.conn,
            RESYNC_RETRY_LATER.as_secs()
        );
        warn!(%market, reason, "Book still broken after its resyncs; kept stale and tried again later.");
        out.alerts.push(AlertAction::Raise { kind: BOOK_UNRECOVERABLE, message });
        self.dirty = true;
    }

    /// Sends one `get_snapshot` for every market of the orderbook sub whose book is stale,
    /// not already on its way, and not waiting for its repair's time.
    fn request_due_snapshots(&mut self, i: usize, now: Instant, out: &mut Output) {
        self.dirty = true;
        let sub = &self.subs[i];
        let Some(sid) = sub.sid.filter(|_| sub.state == SubState::Active) else {
            return;
        };
        let channel = sub.channel;
        let mut markets = Vec::new();
        for market in &sub.markets {
            let book = self.books.entry(market.clone()).or_default();
            if book.fresh || book.requested {
                continue;
            }
            if let Some(repair) = self.repairs.get_mut(market) {
                if repair.due.is_none_or(|due| due > now) {
                    continue;
                }
                repair.due = None;
                repair.attempts += 1;
            }
            book.requested = true;
            markets.push(market.clone());
        }
        if markets.is_empty() {
            return;
        }
        let id = self.next_id();
        self.metrics.snapshot_requests.fetch_add(markets.len() as u64, Ordering::Relaxed);
        let market_tickers = markets.iter().map(|m| m.to_string()).collect();
        self.pending.insert(id, Pending { channel, what: PendingKind::Snapshot(markets), sent_at: now });
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
        // The new subscription brings a snapshot of every market.
        for book in self.books.values_mut() {
            book.fresh = false;
            book.requested = true;
        }
        self.resyncing = true;
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

    /// Publishes Live once everything is subscribed and every book is built, or kept stale
    /// after its resyncs ran out (those are announced again right after `Live`, which ends
    /// every stale window of the connection in the ledger).
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
            || self.desired.iter().all(|m| {
                self.books.get(m).is_some_and(|b| b.fresh) || self.repairs.get(m).is_some_and(|r| r.given_up)
            });
        let live = subscribed && books_ready;
        if live != self.live {
            self.live = live;
            if live {
                info!(markets = self.desired.len(), "Live.");
                self.metrics.set_state(FeedState::Live);
                self.emit_event(out, FeedEvent::Live);
                self.announce_stale_books(out);
            } else {
                self.metrics.set_state(FeedState::Stale);
            }
        } else if !live && self.metrics.state() == FeedState::Live {
            self.metrics.set_state(FeedState::Subscribing);
        }
    }

    /// Publishes `Stale` for every book kept stale, so the ledger shows it past a `Live`.
    fn announce_stale_books(&mut self, out: &mut Output) {
        let mut stale: Vec<Name> = self
            .repairs
            .iter()
            .filter(|(m, r)| r.given_up && self.books.get(*m).is_none_or(|b| !b.fresh))
            .map(|(m, _)| m.clone())
            .collect();
        stale.sort();
        for market in stale {
            if let Some(repair) = self.repairs.get_mut(&market) {
                repair.announced = true;
            }
            let reason = format!(
                "book still broken after {RESYNC_ATTEMPTS} fresh snapshots; kept stale until it is sound again"
            );
            self.emit(out, market, None, TickKind::Feed(FeedEvent::Stale { reason }));
        }
    }

    /// The activity record of a wanted market (`None` for one no longer wanted, whose frames
    /// are still arriving).
    fn touch(&mut self, market: &Name) -> Option<&mut Activity> {
        if !self.desired.contains(market) {
            return None;
        }
        Some(self.activity.entry(market.clone()).or_default())
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

/// At most `max` bytes of a frame as text, for logs and the ledger: invalid UTF-8 shown as
/// U+FFFD, U+0000 too (PostgreSQL cannot store it), and a cut marked with `…`.
fn excerpt(text: &[u8], max: usize) -> String {
    let cut = text.len() > max;
    let mut s = String::from_utf8_lossy(&text[..text.len().min(max)]).replace('\0', "\u{fffd}");
    if cut {
        s.push('…');
    }
    s
}
