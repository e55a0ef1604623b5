//! The hub: the one task between the bus and the stream clients.
//!
//! It reads ticks from the bus (as a lossy consumer: nothing it does can slow a feed), keeps the
//! current state of every market (latest quote, the book), serializes each tick once and
//! appends it to the *stream log*, a bounded broadcast ring of [`Item`]s numbered by `seq`.
//! Every client's writer reads the log at its own pace and filters it by its subscriptions, so
//! the bytes of a tick are shared by every client and the hub's work does not grow with the
//! number of clients.
//!
//! Snapshot-then-live is exact: the hub answers a subscription (or a resync) between two
//! appends, with the state as of the last `seq` it appended (the *boundary*). The writer
//! forwards log items up to the boundary under its old subscriptions, then the state frames,
//! then items after the boundary under the new ones.
//!
//! When the hub itself falls behind the bus it can no longer vouch for any book: it marks them
//! stale, tells the clients (`lagged` with `source: server`) and asks every feed connection
//! for fresh snapshots ([`FeedHandle::refresh_books`]), at most once per [`REFRESH_EVERY`];
//! the snapshots come back on the bus like any other and clear the marks.
//!
//! [`FeedHandle::refresh_books`]: crate::feed::FeedHandle::refresh_books

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, info, warn};

use super::{DashboardMetrics, frames, status};
use crate::book::OrderBook;
use crate::bus::{Lagged, LossyReceiver};
use crate::ops::health::Health;
use crate::tick::{FeedEvent, Name, Tick, TickKind};

/// A subscribable channel. `Status` is internal: the periodic `status` frame, sent to `feed`
/// subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Channel {
    Trades = 0,
    Quotes = 1,
    Book = 2,
    Lifecycle = 3,
    Feed = 4,
    Status = 5,
}

/// The channels a client may name, by protocol name.
pub(crate) const CHANNELS: [(&str, Channel); 5] = [
    ("trades", Channel::Trades),
    ("quotes", Channel::Quotes),
    ("book", Channel::Book),
    ("lifecycle", Channel::Lifecycle),
    ("feed", Channel::Feed),
];

impl Channel {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Channel::Trades => "trades",
            Channel::Quotes => "quotes",
            Channel::Book => "book",
            Channel::Lifecycle => "lifecycle",
            Channel::Feed | Channel::Status => "feed",
        }
    }

    fn of(kind: &TickKind) -> Channel {
        match kind {
            TickKind::Trade(_) => Channel::Trades,
            TickKind::Quote(_) => Channel::Quotes,
            TickKind::BookSnapshot(_) | TickKind::BookDelta(_) => Channel::Book,
            TickKind::Lifecycle(_) | TickKind::Market(_) => Channel::Lifecycle,
            TickKind::Feed(_) => Channel::Feed,
        }
    }
}

/// Market ids are indexes into the hub's market table; a client's filter is a bit set of them.
pub(crate) type MarketId = u32;

/// One frame of the stream log.
pub(crate) struct Item {
    pub seq: u64,
    pub channel: Channel,
    pub market: MarketId,
    pub frame: Utf8Bytes,
}

/// What the hub appends at once: every tick it took from the bus in one go.
pub(crate) type LogEntry = Arc<[Item]>;

/// The markets of a subscription: a list or all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Markets {
    All,
    List(Vec<String>),
}

/// A client's subscriptions: per channel, all markets or a bit set of market ids. Two equal
/// filters hold the same pairs (a set never ends in an empty word).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    all: [bool; 5],
    sets: [Vec<u64>; 5],
}

impl Filter {
    pub(crate) fn allows(&self, channel: Channel, market: MarketId) -> bool {
        match channel {
            // Feed events go to every client holding any subscription.
            Channel::Feed => self.any(),
            Channel::Status => self.all[4] || !self.sets[4].is_empty(),
            c => {
                let i = c as usize;
                self.all[i]
                    || self.sets[i].get(market as usize / 64).is_some_and(|w| w >> (market % 64) & 1 == 1)
            }
        }
    }

    fn any(&self) -> bool {
        self.all.iter().any(|&a| a) || self.sets.iter().any(|s| !s.is_empty())
    }

    /// Pairs held: `all` counts one per channel.
    pub(crate) fn pairs(&self) -> usize {
        (0..5).map(|i| if self.all[i] { 1 } else { 0 } + self.sets[i].iter().map(|w| w.count_ones() as usize).sum::<usize>()).sum()
    }

    pub(crate) fn apply(&mut self, change: &Change) {
        for &c in &change.channels {
            let i = c as usize;
            match &change.ids {
                None => self.all[i] = change.add,
                Some(ids) => {
                    let set = &mut self.sets[i];
                    for &id in ids {
                        let (w, b) = (id as usize / 64, id % 64);
                        if change.add {
                            if set.len() <= w {
                                set.resize(w + 1, 0);
                            }
                            set[w] |= 1 << b;
                        } else if let Some(word) = set.get_mut(w) {
                            *word &= !(1 << b);
                        }
                    }
                    while set.last() == Some(&0) {
                        set.pop();
                    }
                }
            }
        }
    }

    /// The (channel, all-or-ids) pairs to send state for.
    fn each(&self) -> impl Iterator<Item = (Channel, Option<Vec<MarketId>>)> + '_ {
        CHANNELS.iter().filter_map(move |&(_, c)| {
            let i = c as usize;
            if self.all[i] {
                Some((c, None))
            } else if self.sets[i].is_empty() {
                None
            } else {
                let ids = self.sets[i]
                    .iter()
                    .enumerate()
                    .flat_map(|(w, &word)| {
                        (0..64).filter(move |b| word >> b & 1 == 1).map(move |b| (w * 64 + b) as u32)
                    })
                    .collect();
                Some((c, Some(ids)))
            }
        })
    }
}

/// A subscription change as the hub resolved it.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub add: bool,
    pub channels: Vec<Channel>,
    /// `None`: all markets.
    pub ids: Option<Vec<MarketId>>,
}

/// The hub's answer to a subscription change or a resync: apply after `boundary`.
pub(crate) struct Resolved {
    pub boundary: u64,
    pub change: Option<Change>,
    /// Markets named that no feed follows.
    pub unknown: Vec<String>,
    pub state: Vec<Utf8Bytes>,
    /// What the client needs to answer the command that asked for the change.
    pub ticket: Option<Ticket>,
}

/// Carried through the hub with a change, for the client's reply: the command's `id` and its
/// markets as named.
pub(crate) struct Ticket {
    pub id: Option<serde_json::Value>,
    pub markets: Markets,
}

/// What clients ask of the hub.
pub(crate) enum Request {
    /// Resolve market names, and give the state of the added pairs. The answer goes straight
    /// to the client's writer, sent before anything after its boundary is appended: a writer
    /// that looks for answers before each entry it takes never takes one past a boundary it
    /// has not seen (the reader in between could be late).
    Change {
        add: bool,
        channels: Vec<Channel>,
        markets: Markets,
        ticket: Ticket,
        reply: mpsc::OwnedPermit<Resolved>,
    },
    /// The state of everything `filter` holds (after the client fell behind).
    Resync { filter: Filter, reply: oneshot::Sender<Resolved> },
    /// A receiver of the stream log, positioned after the last item appended.
    Join { reply: oneshot::Sender<(broadcast::Receiver<LogEntry>, u64)> },
}

#[derive(Default)]
struct MarketState {
    name: Name,
    feed: Name,
    conn: u16,
    quote: Option<Arc<Tick>>,
    book: Option<OrderBook>,
    book_ts: (i64, Option<i64>),
    stale: bool,
}

pub(crate) struct Hub {
    markets: Vec<MarketState>,
    ids: HashMap<Name, MarketId>,
    log: broadcast::Sender<LogEntry>,
    seq: u64,
    health: Health,
    metrics: Arc<DashboardMetrics>,
    /// The `seq` of the last item appended, for writers to tell how far behind they are.
    head: Arc<AtomicU64>,
    /// When to ask the feeds for fresh snapshots; `None`: nothing to ask.
    refresh_due: Option<Instant>,
    /// When the feeds were last asked.
    refreshed_at: Option<Instant>,
}

/// Ticks taken from the bus per log entry, at most. Bounds the log's memory: at most
/// `client_queue` entries of this many frames, shared by every client.
const BATCH: usize = 64;

/// The feeds are asked for fresh snapshots at most this often: a hub that keeps falling behind
/// (whose lags may lose the very snapshots it asked for) asks again after each lag, but does
/// not flood the exchange.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(1);

impl Hub {
    pub(crate) fn new(
        log_capacity: usize,
        health: Health,
        metrics: Arc<DashboardMetrics>,
        head: Arc<AtomicU64>,
    ) -> Hub {
        let (log, _) = broadcast::channel(log_capacity.max(16));
        Hub {
            markets: Vec::new(),
            ids: HashMap::new(),
            log,
            seq: 0,
            health,
            metrics,
            head,
            refresh_due: None,
            refreshed_at: None,
        }
    }

    /// Runs until the bus closes (every feed stopped).
    pub(crate) async fn run(
        mut self,
        mut bus: LossyReceiver,
        mut requests: mpsc::Receiver<Request>,
        every: Duration,
    ) {
        let mut status_tick = tokio::time::interval(every);
        status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut items = Vec::with_capacity(BATCH);
        let refresh = sleep_until(Instant::now());
        tokio::pin!(refresh);
        loop {
            if let Some(due) = self.refresh_due
                && refresh.deadline() != due
            {
                refresh.as_mut().reset(due);
            }
            tokio::select! {
                // Requests before ticks: a client waiting on a join, a change or a resync is
                // answered before more of the bus is read.
                biased;
                // Joins, subscription changes and resyncs (cancel-safe: mpsc recv), answered
                // between two appends. Disabled once every sender is gone.
                Some(req) = requests.recv() => self.request(req),
                // Time to ask the feeds for the books the hub lost track of (cancel-safe: a
                // sleep). Before the bus, which a busy hub always finds ready.
                _ = &mut refresh, if self.refresh_due.is_some() => self.refresh_books(),
                // Ticks (cancel-safe: broadcast recv), and up to BATCH already waiting, appended
                // as one log entry. A lag marks the books stale; the bus closing (every feed
                // stopped) ends the hub.
                got = bus.recv() => {
                    // Clients join only between batches (a request to this task), so one look
                    // per batch is enough to skip serializing for nobody.
                    let listening = self.log.receiver_count() > 0;
                    match got {
                        Ok(Some(t)) => self.take(&t, listening, &mut items),
                        Ok(None) => break,
                        Err(Lagged(n)) => self.lagged(n, &mut items),
                    }
                    while items.len() < BATCH {
                        match bus.try_recv() {
                            Ok(Some(t)) => self.take(&t, listening, &mut items),
                            Ok(None) => break,
                            Err(Lagged(n)) => self.lagged(n, &mut items),
                        }
                    }
                    self.append(&mut items);
                }
                // The periodic `status` frame, built only while a client listens.
                _ = status_tick.tick() => {
                    if self.log.receiver_count() > 0 {
                        let frame = status::frame(&self.health, None);
                        self.push(&mut items, Channel::Status, 0, frame);
                        self.append(&mut items);
                    }
                }
            }
        }
        debug!("Dashboard hub stopped: the bus is closed.");
    }

    fn id(&mut self, name: &Name) -> MarketId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.markets.len() as MarketId;
        self.markets.push(MarketState { name: name.clone(), ..MarketState::default() });
        self.ids.insert(name.clone(), id);
        id
    }

    fn push(&mut self, items: &mut Vec<Item>, channel: Channel, market: MarketId, frame: String) {
        self.seq += 1;
        items.push(Item { seq: self.seq, channel, market, frame: frame.into() });
    }

    fn append(&mut self, items: &mut Vec<Item>) {
        if items.is_empty() {
            return;
        }
        let entry: LogEntry = std::mem::take(items).into();
        self.head.store(self.seq, Ordering::Relaxed);
        // An error only means no client is connected.
        let _ = self.log.send(entry);
    }

    /// Updates the state with one tick and, when anyone listens, logs its frame.
    fn take(&mut self, t: &Arc<Tick>, listening: bool, items: &mut Vec<Item>) {
        let channel = Channel::of(&t.kind);
        let market = if t.market.is_empty() { MarketId::MAX } else { self.id(&t.market) };
        if market != MarketId::MAX {
            let m = &mut self.markets[market as usize];
            if m.feed != t.feed {
                m.feed = t.feed.clone();
            }
            m.conn = t.conn;
            match &t.kind {
                TickKind::Quote(_) => m.quote = Some(t.clone()),
                TickKind::BookSnapshot(b) => {
                    m.book_ts = (t.recv_ts, t.exch_ts);
                    match OrderBook::from_snapshot(b) {
                        Ok(book) => {
                            m.book = Some(book);
                            m.stale = false;
                        }
                        Err(_) => m.stale = true,
                    }
                }
                TickKind::BookDelta(d) => {
                    m.book_ts = (t.recv_ts, t.exch_ts);
                    if let Some(book) = &mut m.book
                        && book.apply(d.side, d.price, d.delta).is_err()
                    {
                        m.stale = true;
                    }
                }
                TickKind::Feed(FeedEvent::Stale { .. }) => m.stale = true,
                // The feed let the market go: new subscribers get no state of it.
                TickKind::Market(info) if info.followed == Some(false) => {
                    (m.quote, m.book, m.stale) = (None, None, false);
                }
                _ => {}
            }
        } else if let TickKind::Feed(FeedEvent::Stale { .. } | FeedEvent::Disconnected { .. }) = &t.kind {
            // The connection's books cannot be vouched for until its next snapshots.
            for m in
                self.markets.iter_mut().filter(|m| m.feed == t.feed && m.conn == t.conn && m.book.is_some())
            {
                m.stale = true;
            }
        }
        if listening {
            self.push(items, channel, market, frames::tick(t, false));
        } else {
            self.seq += 1;
        }
    }

    /// The hub itself fell behind the bus: books may now be wrong until the feeds' next
    /// snapshots. Say so to every client.
    fn lagged(&mut self, n: u64, items: &mut Vec<Item>) {
        warn!(
            missed = n,
            "The dashboard hub fell behind the bus; books are marked stale until the next snapshots."
        );
        self.metrics.hub_missed.fetch_add(n, Ordering::Relaxed);
        for m in self.markets.iter_mut().filter(|m| m.book.is_some()) {
            m.stale = true;
        }
        let frame = frames::Obj::new("lagged").uint("missed", n).str("source", "server").finish();
        self.push(items, Channel::Feed, MarketId::MAX, frame);
        // Every book may be wrong, and a book the hub never got is missing: ask for all of
        // them, now or once REFRESH_EVERY has passed since the last time (the snapshots of
        // that time may be among the ticks just lost). A round already due covers this lag.
        if self.refresh_due.is_none() {
            let now = Instant::now();
            self.refresh_due = Some(self.refreshed_at.map_or(now, |at| (at + REFRESH_EVERY).max(now)));
        }
    }

    /// Asks every feed connection for fresh snapshots of its books. A connection whose
    /// command queue is full is asked again after [`REFRESH_EVERY`].
    fn refresh_books(&mut self) {
        let now = Instant::now();
        self.refreshed_at = Some(now);
        self.refresh_due = None;
        let conns = self.health.feeds.all();
        let busy: Vec<String> =
            conns.iter().filter(|(_, h)| !h.refresh_books()).map(|(id, _)| id.to_string()).collect();
        info!(
            connections = conns.len() - busy.len(),
            "Asked the feeds for fresh snapshots of the books the dashboard hub lost track of."
        );
        if !busy.is_empty() {
            debug!(?busy, "Feed connections too busy to ask now; asking again shortly.");
            self.refresh_due = Some(now + REFRESH_EVERY);
        }
    }

    /// Every market some feed connection follows now (after the last reload).
    fn followed(&self) -> Vec<Arc<HashSet<String>>> {
        self.health.feeds.all().into_iter().map(|(_, h)| h.markets()).collect()
    }

    fn request(&mut self, req: Request) {
        match req {
            Request::Join { reply } => {
                let _ = reply.send((self.log.subscribe(), self.seq));
            }
            Request::Change { add, channels, markets, ticket, reply } => {
                let (ids, unknown) = match &markets {
                    Markets::All => (None, Vec::new()),
                    Markets::List(names) => {
                        // Unknown: no feed follows it (it may have sent nothing yet, which is
                        // no reason). The subscription holds either way: a reload may add it.
                        let followed = if add { self.followed() } else { Vec::new() };
                        let unknown = names
                            .iter()
                            .filter(|n| add && !followed.iter().any(|f| f.contains(n.as_str())))
                            .cloned()
                            .collect();
                        let ids = names.iter().map(|n| self.id(&n.as_str().into())).collect();
                        (Some(ids), unknown)
                    }
                };
                let change = Change { add, channels, ids };
                let state = if add {
                    self.state(change.channels.iter().map(|&c| (c, change.ids.clone())))
                } else {
                    Vec::new()
                };
                let answer = Resolved {
                    boundary: self.seq,
                    change: Some(change),
                    unknown,
                    state,
                    ticket: Some(ticket),
                };
                reply.send(answer);
            }
            Request::Resync { filter, reply } => {
                self.metrics.resync_states.fetch_add(1, Ordering::Relaxed);
                let state = self.state(filter.each());
                let answer =
                    Resolved { boundary: self.seq, change: None, unknown: Vec::new(), state, ticket: None };
                let _ = reply.send(answer);
            }
        }
    }

    /// State frames: the latest quote and book of each market, the feeds' status.
    fn state(&self, pairs: impl Iterator<Item = (Channel, Option<Vec<MarketId>>)>) -> Vec<Utf8Bytes> {
        let mut out = Vec::new();
        for (channel, ids) in pairs {
            let markets: Box<dyn Iterator<Item = &MarketState>> = match &ids {
                None => Box::new(self.markets.iter()),
                Some(ids) => Box::new(ids.iter().filter_map(|&id| self.markets.get(id as usize))),
            };
            match channel {
                Channel::Quotes => {
                    out.extend(markets.filter_map(|m| m.quote.as_ref()).map(|q| frames::tick(q, true).into()))
                }
                Channel::Book => out.extend(markets.filter_map(|m| {
                    let book = m.book.as_ref()?;
                    Some(
                        frames::book_state(
                            &m.feed,
                            &m.name,
                            m.book_ts.0,
                            m.book_ts.1,
                            &book.snapshot(),
                            m.stale,
                        )
                        .into(),
                    )
                })),
                Channel::Feed => out.push(status::frame(&self.health, None).into()),
                _ => {}
            }
        }
        out
    }
}
