//! A batch of ticks in columns, the unit the writer commits, spools and replays.
//!
//! In: `Tick`s, one at a time ([`Batch::push`]). Out: one column vector per table field,
//! ready to bind as PostgreSQL arrays, and a self-contained encoding for the spool
//! ([`Batch::encode`] / [`Batch::decode`]). Feed and market names are interned per batch
//! (`names`, 1-based indices, as SQL arrays count), so a batch of 5,000 deltas carries each
//! ticker once.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::spool::Coalesce;
use crate::tick::{FeedEvent, LifecycleScope, MarketInfo, Name, Side, Tick, TickKind};

/// One batch. Field vectors of a table always have equal lengths.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Batch {
    /// Interned feed and market names; the `*_ix` columns index it from 1.
    pub names: Vec<String>,
    #[serde(skip)]
    index: HashMap<Name, i32>,
    /// Rows of `trades`.
    pub trades: Trades,
    /// Rows of `quotes`.
    pub quotes: Quotes,
    /// Rows of `book_snapshots`.
    pub snapshots: Snapshots,
    /// Rows of `book_deltas`.
    pub deltas: Deltas,
    /// Rows of `lifecycle_events`.
    pub lifecycle: Lifecycles,
    /// Rows of `feed_events`.
    pub events: Events,
    /// Per market name index: (feed index, first recv_ts, last recv_ts) for `markets`.
    pub markets: HashMap<i32, (i32, i64, i64)>,
    /// What is known of markets (`market` ticks), upserted into `markets`. Absent from spool
    /// records of versions that had no such ticks.
    #[serde(default)]
    pub infos: MarketInfos,
    /// Ticks pushed.
    pub ticks: usize,
    /// The smallest `recv_ts` pushed (0 when empty): how stale the batch's oldest tick is.
    pub oldest_recv_ts: i64,
}

/// Columns common to every data table.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Keys {
    /// Feed name index.
    pub feed: Vec<i32>,
    /// Market name index.
    pub market: Vec<i32>,
    /// Exchange time, µs since the epoch.
    pub exch_ts: Vec<Option<i64>>,
    /// Receive time, µs since the epoch.
    pub recv_ts: Vec<i64>,
}

/// `trades` columns.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Trades {
    /// Feed, market and times; `exch_ts` is never `None` here (see [`Batch::push`]).
    pub keys: Keys,
    /// Exchange trade ids.
    pub trade_id: Vec<String>,
    /// YES prices.
    pub price: Vec<i64>,
    /// Sizes.
    pub size: Vec<i64>,
    /// Whether the taker bought YES (`None`: not given).
    pub taker_yes: Vec<Option<bool>>,
    /// Block trades (`None`: not given).
    pub block: Vec<Option<bool>>,
    /// Trades recovered over the REST API (`source = 'rest'`); the others were received live.
    /// Absent from spool records of versions without backfill: an array shorter than the
    /// others reads as `NULL` in the statement, which is stored as `ws`, as those trades were.
    #[serde(default)]
    pub rest: Vec<bool>,
}

/// `quotes` columns; `None` is a value the exchange did not give (SQL `NULL`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Quotes {
    /// Feed, market and times.
    pub keys: Keys,
    /// Last price.
    pub last: Vec<Option<i64>>,
    /// Best bid.
    pub bid: Vec<Option<i64>>,
    /// Best ask.
    pub ask: Vec<Option<i64>>,
    /// Size at the bid.
    pub bid_size: Vec<Option<i64>>,
    /// Size at the ask.
    pub ask_size: Vec<Option<i64>>,
    /// Last trade size.
    pub last_size: Vec<Option<i64>>,
    /// Volume.
    pub volume: Vec<Option<i64>>,
    /// Open interest.
    pub open_interest: Vec<Option<i64>>,
    /// Dollar volume.
    pub dollar_volume: Vec<Option<i64>>,
    /// Dollar open interest.
    pub dollar_open_interest: Vec<Option<i64>>,
}

/// `book_snapshots` columns.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Snapshots {
    /// Feed, market and times.
    pub keys: Keys,
    /// YES levels as JSON `[[price, size], ...]`.
    pub yes: Vec<String>,
    /// NO levels as JSON.
    pub no: Vec<String>,
}

/// `book_deltas` columns.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Deltas {
    /// Feed, market and times.
    pub keys: Keys,
    /// Whether the level is on the YES ladder.
    pub side_yes: Vec<bool>,
    /// Level price in the side's contract.
    pub price: Vec<i64>,
    /// Signed size change.
    pub delta: Vec<i64>,
}

/// `lifecycle_events` columns.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Lifecycles {
    /// Feed, market and times.
    pub keys: Keys,
    /// Whether `market` is a market ticker (else an event ticker).
    pub scope_market: Vec<bool>,
    /// Event names.
    pub event: Vec<String>,
    /// The message bodies, valid JSON.
    pub detail: Vec<String>,
}

/// What market ticks say about markets, for the metadata columns of `markets`: one row per
/// tick, in order (a later row about the same market wins where it says something).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MarketInfos {
    /// Market name index.
    pub market: Vec<i32>,
    /// Feed name index.
    pub feed: Vec<i32>,
    /// Receive time, µs since the epoch.
    pub recv_ts: Vec<i64>,
    /// Event tickers.
    pub event: Vec<Option<String>>,
    /// Series tickers.
    pub series: Vec<Option<String>>,
    /// Titles.
    pub title: Vec<Option<String>>,
    /// Statuses as the exchange spells them.
    pub status: Vec<Option<String>>,
    /// Open times, µs since the epoch.
    pub open_ts: Vec<Option<i64>>,
    /// Close times, µs since the epoch.
    pub close_ts: Vec<Option<i64>>,
    /// Whether the feed follows the market from then on.
    pub followed: Vec<Option<bool>>,
}

/// `feed_events` columns.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Events {
    /// Local time, µs.
    pub ts: Vec<i64>,
    /// Feed name index.
    pub feed: Vec<i32>,
    /// Connection index.
    pub conn: Vec<i32>,
    /// Market name index (the empty name for connection-wide events).
    pub market: Vec<i32>,
    /// Event name (`disconnected`, `gap`, `store_loss`...).
    pub event: Vec<String>,
    /// Reason or message, where the event has one.
    pub reason: Vec<Option<String>>,
    /// Subscription id.
    pub sid: Vec<Option<i64>>,
    /// Expected sequence number (gaps).
    pub expected: Vec<Option<i64>>,
    /// Received sequence number (gaps).
    pub got: Vec<Option<i64>>,
    /// The whole event as JSON.
    pub detail: Vec<String>,
}

/// Ticks a full spool could not keep, per feed, recorded as one `store_loss` row each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loss {
    /// Ticks dropped.
    pub ticks: u64,
    /// Of which trades.
    pub trades: u64,
    /// Receive time of the first dropped tick, µs.
    pub from_us: i64,
    /// Receive time of the last dropped tick, µs.
    pub to_us: i64,
}

impl Loss {
    /// Counts the ticks of `batch` as lost, per feed name.
    pub fn add_batch(losses: &mut HashMap<String, Loss>, batch: &Batch) {
        // Per feed index first: names are looked up once per feed, not once per tick.
        let mut by_feed: HashMap<i32, Loss> = HashMap::new();
        let mut add = |feed: i32, ts: i64, trade: bool| {
            let loss = by_feed.entry(feed).or_insert(Loss { from_us: ts, to_us: ts, ..Loss::default() });
            loss.ticks += 1;
            loss.trades += u64::from(trade);
            loss.from_us = loss.from_us.min(ts);
            loss.to_us = loss.to_us.max(ts);
        };
        for (f, ts) in batch.trades.keys.feed.iter().zip(&batch.trades.keys.recv_ts) {
            add(*f, *ts, true);
        }
        for keys in [&batch.quotes.keys, &batch.snapshots.keys, &batch.deltas.keys, &batch.lifecycle.keys] {
            for (f, ts) in keys.feed.iter().zip(&keys.recv_ts) {
                add(*f, *ts, false);
            }
        }
        let events = &batch.events;
        for ((f, ts), event) in events.feed.iter().zip(&events.ts).zip(&events.event) {
            // Loss records riding in the batch are not ticks; they stay pending themselves.
            if event != "store_loss" {
                add(*f, *ts, false);
            }
        }
        for (feed, add) in by_feed {
            Loss::merge(losses, batch.name(feed), &add);
        }
    }

    /// Adds `add` to the pending loss of `feed`.
    pub fn merge(losses: &mut HashMap<String, Loss>, feed: &str, add: &Loss) {
        let loss = losses.entry(feed.to_owned()).or_insert(Loss {
            from_us: add.from_us,
            to_us: add.to_us,
            ..Loss::default()
        });
        loss.ticks += add.ticks;
        loss.trades += add.trades;
        loss.from_us = loss.from_us.min(add.from_us);
        loss.to_us = loss.to_us.max(add.to_us);
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Whether nothing has been pushed.
    pub fn is_empty(&self) -> bool {
        self.ticks == 0 && self.events.ts.is_empty()
    }

    /// The name behind a 1-based index.
    pub fn name(&self, ix: i32) -> &str {
        usize::try_from(ix - 1).ok().and_then(|i| self.names.get(i)).map_or("", String::as_str)
    }

    fn intern(&mut self, name: &Name) -> i32 {
        if let Some(&ix) = self.index.get(name) {
            return ix;
        }
        self.names.push(name.to_string());
        // A batch holds at most `batch_size` ticks, far below i32::MAX names.
        let ix = i32::try_from(self.names.len()).unwrap_or(i32::MAX);
        self.index.insert(name.clone(), ix);
        ix
    }

    fn keys(&mut self, tick: &Tick) -> (i32, i32) {
        let feed = self.intern(&tick.feed);
        let market = self.intern(&tick.market);
        if !tick.market.is_empty() {
            let seen = self.markets.entry(market).or_insert((feed, tick.recv_ts, tick.recv_ts));
            seen.1 = seen.1.min(tick.recv_ts);
            seen.2 = seen.2.max(tick.recv_ts);
        }
        (feed, market)
    }

    /// Adds one tick to the columns of its table.
    pub fn push(&mut self, tick: &Tick) {
        if let TickKind::Market(info) = &tick.kind {
            // Says what a market is, not that anything happened in it: `first_seen` and
            // `last_seen` stay as the market's data set them.
            self.push_info(tick, info);
            return;
        }
        let (feed, market) = self.keys(tick);
        let exch_us = tick.exch_ts.map(|ms| ms.saturating_mul(1000));
        if self.ticks == 0 || tick.recv_ts < self.oldest_recv_ts {
            self.oldest_recv_ts = tick.recv_ts;
        }
        self.ticks += 1;
        let push_keys = |k: &mut Keys| {
            k.feed.push(feed);
            k.market.push(market);
            k.exch_ts.push(exch_us);
            k.recv_ts.push(tick.recv_ts);
        };
        match &tick.kind {
            TickKind::Trade(t) => {
                let k = &mut self.trades.keys;
                k.feed.push(feed);
                k.market.push(market);
                // Trades are partitioned and deduplicated on exchange time; Kalshi always
                // sends it. Were it ever missing, the receive time is the best stand-in.
                k.exch_ts.push(Some(exch_us.unwrap_or(tick.recv_ts)));
                k.recv_ts.push(tick.recv_ts);
                self.trades.trade_id.push(t.trade_id.clone());
                self.trades.price.push(t.price.0);
                self.trades.size.push(t.size.0);
                self.trades.taker_yes.push(t.taker_side.map(|s| s == Side::Yes));
                self.trades.block.push(t.block);
                self.trades.rest.push(t.backfill);
            }
            TickKind::Quote(q) => {
                push_keys(&mut self.quotes.keys);
                let c = &mut self.quotes;
                c.last.push(q.last.map(|p| p.0));
                c.bid.push(q.bid.map(|p| p.0));
                c.ask.push(q.ask.map(|p| p.0));
                c.bid_size.push(q.bid_size.map(|s| s.0));
                c.ask_size.push(q.ask_size.map(|s| s.0));
                c.last_size.push(q.last_size.map(|s| s.0));
                c.volume.push(q.volume.map(|s| s.0));
                c.open_interest.push(q.open_interest.map(|s| s.0));
                c.dollar_volume.push(q.dollar_volume);
                c.dollar_open_interest.push(q.dollar_open_interest);
            }
            TickKind::BookSnapshot(b) => {
                push_keys(&mut self.snapshots.keys);
                self.snapshots.yes.push(levels_json(&b.yes));
                self.snapshots.no.push(levels_json(&b.no));
            }
            TickKind::BookDelta(d) => {
                push_keys(&mut self.deltas.keys);
                self.deltas.side_yes.push(d.side == Side::Yes);
                self.deltas.price.push(d.price.0);
                self.deltas.delta.push(d.delta.0);
            }
            TickKind::Lifecycle(l) => {
                push_keys(&mut self.lifecycle.keys);
                self.lifecycle.scope_market.push(l.scope == LifecycleScope::Market);
                self.lifecycle.event.push(l.event.clone());
                // The column is jsonb: a body that is not JSON (never seen) is kept as a
                // JSON string rather than failing the whole batch.
                let detail = if serde_json::from_str::<serde::de::IgnoredAny>(&l.detail).is_ok() {
                    l.detail.clone()
                } else {
                    serde_json::Value::String(l.detail.clone()).to_string()
                };
                self.lifecycle.detail.push(detail);
            }
            TickKind::Feed(event) => self.push_event(tick, feed, market, event),
            // Taken by `push_info` above.
            TickKind::Market(_) => {}
        }
    }

    fn push_info(&mut self, tick: &Tick, info: &MarketInfo) {
        let feed = self.intern(&tick.feed);
        let market = self.intern(&tick.market);
        if self.ticks == 0 || tick.recv_ts < self.oldest_recv_ts {
            self.oldest_recv_ts = tick.recv_ts;
        }
        self.ticks += 1;
        let ms_to_us = |ms: Option<i64>| ms.map(|ms| ms.saturating_mul(1000));
        let i = &mut self.infos;
        i.market.push(market);
        i.feed.push(feed);
        i.recv_ts.push(tick.recv_ts);
        i.event.push(info.event.clone());
        i.series.push(info.series.clone());
        i.title.push(info.title.clone());
        i.status.push(info.status.clone());
        i.open_ts.push(ms_to_us(info.open_ms));
        i.close_ts.push(ms_to_us(info.close_ms));
        i.followed.push(info.followed);
    }

    fn push_event(&mut self, tick: &Tick, feed: i32, market: i32, event: &FeedEvent) {
        let (reason, sid, expected, got) = match event {
            FeedEvent::Disconnected { reason }
            | FeedEvent::Stale { reason }
            | FeedEvent::GivenUp { reason } => (Some(reason.clone()), None, None, None),
            FeedEvent::Alert { kind, message } => (Some(format!("{kind}: {message}")), None, None, None),
            FeedEvent::Rejected { reason, error, .. } => {
                (Some(format!("{reason}: {error}")), None, None, None)
            }
            FeedEvent::MarketFrozen { quiet_ms, book_differs, missed_trades, .. } => {
                let what = match (*book_differs, *missed_trades) {
                    (true, 0) => "its book differed from REST's".to_owned(),
                    (false, n) => format!("REST listed {n} trades it never received"),
                    (true, n) => {
                        format!("its book differed from REST's and REST listed {n} trades it never received")
                    }
                };
                (Some(format!("no update for {quiet_ms} ms while {what}")), None, None, None)
            }
            FeedEvent::Gap { sid, expected, got } => {
                (None, Some(to_i64(*sid)), Some(to_i64(*expected)), Some(to_i64(*got)))
            }
            FeedEvent::Subscribed { sid, .. } | FeedEvent::Resynced { sid } => {
                (None, Some(to_i64(*sid)), None, None)
            }
            FeedEvent::Backfill(b) => {
                (b.error.clone(), b.sid.map(to_i64), b.expected.map(to_i64), b.got.map(to_i64))
            }
            FeedEvent::Connecting { .. }
            | FeedEvent::Connected
            | FeedEvent::Live
            | FeedEvent::BackingOff { .. } => (None, None, None, None),
        };
        let mut detail = serde_json::to_value(event).unwrap_or(serde_json::Value::Null);
        // Texts that came from outside (a close reason, a rejected frame) may hold U+0000,
        // which PostgreSQL's text and jsonb cannot store: one such row would fail the batch.
        let reason = reason.map(|r| without_nul(&r));
        strip_nul(&mut detail);
        let name = detail.get("event").and_then(|v| v.as_str()).unwrap_or("unknown").to_owned();
        let e = &mut self.events;
        e.ts.push(tick.recv_ts);
        e.feed.push(feed);
        e.conn.push(i32::from(tick.conn));
        e.market.push(market);
        e.event.push(name);
        e.reason.push(reason);
        e.sid.push(sid);
        e.expected.push(expected);
        e.got.push(got);
        e.detail.push(detail.to_string());
    }

    /// Adds one `store_loss` row per feed to the ledger, timed at the first lost tick (so a
    /// retried write of the same record is recognised as a duplicate).
    pub fn push_losses(&mut self, losses: &HashMap<String, Loss>) {
        self.push_losses_as("store_loss", "spool full", losses);
    }

    /// Adds one `event` row per feed to the ledger (`store_loss`, `nats_loss`: ticks some sink
    /// could not keep), timed at the first lost tick, its reason starting with `why`.
    pub fn push_losses_as(&mut self, event: &str, why: &str, losses: &HashMap<String, Loss>) {
        for (feed, loss) in losses {
            let ts = loss.from_us;
            let feed = self.intern(&Name::from(feed.as_str()));
            let market = self.intern(&Name::from(""));
            let detail = serde_json::json!({
                "event": event,
                "ticks": loss.ticks,
                "trades": loss.trades,
                "from_us": loss.from_us,
                "to_us": loss.to_us,
            });
            let e = &mut self.events;
            e.ts.push(ts);
            e.feed.push(feed);
            e.conn.push(0);
            e.market.push(market);
            e.event.push(event.to_owned());
            e.reason.push(Some(format!("{why}: {} ticks ({} trades) not kept", loss.ticks, loss.trades)));
            e.sid.push(None);
            e.expected.push(None);
            e.got.push(None);
            e.detail.push(detail.to_string());
        }
    }

    /// Every UTC day (days since the epoch) that some row's partition key falls on.
    pub fn days(&self) -> Vec<i64> {
        const DAY_US: i64 = 86_400_000_000;
        let mut days: Vec<i64> = Vec::new();
        let mut add = |ts: i64| {
            let day = ts.div_euclid(DAY_US);
            if !days.contains(&day) {
                days.push(day);
            }
        };
        self.trades.keys.exch_ts.iter().flatten().for_each(|&ts| add(ts));
        for keys in [&self.quotes.keys, &self.snapshots.keys, &self.deltas.keys, &self.lifecycle.keys] {
            // The earliest and the latest bound every day between. Not the first and the last:
            // a replayed batch merges spooled ones, which need not be in receive order.
            if let (Some(&a), Some(&b)) = (keys.recv_ts.iter().min(), keys.recv_ts.iter().max()) {
                (a.div_euclid(DAY_US)..=b.div_euclid(DAY_US)).for_each(|d| add(d * DAY_US));
            }
        }
        self.events.ts.iter().for_each(|&ts| add(ts));
        days.sort_unstable();
        days
    }

    /// Appends the rows of `later` (a batch spooled after this one), as if its ticks had been
    /// pushed here: names are interned anew, `markets` spans are merged per market, and rows
    /// keep their order, so that what a later row says about a market still wins.
    pub fn absorb(&mut self, later: Batch) {
        // A decoded batch has its names but not their index.
        if self.index.len() != self.names.len() {
            self.index =
                self.names.iter().enumerate().map(|(i, n)| (Name::from(n.as_str()), i as i32 + 1)).collect();
        }
        let Batch {
            names,
            index: _,
            trades,
            quotes,
            snapshots,
            deltas,
            lifecycle,
            events,
            markets,
            infos,
            ticks,
            oldest_recv_ts,
        } = later;
        // `later`'s index `i` (1-based) becomes `to[i - 1]` here; 0 (no name) stays 0.
        let to: Vec<i32> = names.iter().map(|n| self.intern(&Name::from(n.as_str()))).collect();
        let ix = |i: i32| usize::try_from(i - 1).ok().and_then(|i| to.get(i)).copied().unwrap_or(0);
        let keys = |into: &mut Keys, from: Keys| {
            let Keys { feed, market, exch_ts, recv_ts } = from;
            into.feed.extend(feed.into_iter().map(ix));
            into.market.extend(market.into_iter().map(ix));
            into.exch_ts.extend(exch_ts);
            into.recv_ts.extend(recv_ts);
        };

        let Trades { keys: k, trade_id, price, size, taker_yes, block, mut rest } = trades;
        // Records of versions without backfill carry no `rest`: their trades were received
        // live. Both sides are filled out so that the merged column stays aligned.
        rest.resize(trade_id.len(), false);
        self.trades.rest.resize(self.trades.trade_id.len(), false);
        keys(&mut self.trades.keys, k);
        let t = &mut self.trades;
        t.rest.extend(rest);
        t.trade_id.extend(trade_id);
        t.price.extend(price);
        t.size.extend(size);
        t.taker_yes.extend(taker_yes);
        t.block.extend(block);

        let Quotes {
            keys: k,
            last,
            bid,
            ask,
            bid_size,
            ask_size,
            last_size,
            volume,
            open_interest,
            dollar_volume,
            dollar_open_interest,
        } = quotes;
        keys(&mut self.quotes.keys, k);
        let q = &mut self.quotes;
        q.last.extend(last);
        q.bid.extend(bid);
        q.ask.extend(ask);
        q.bid_size.extend(bid_size);
        q.ask_size.extend(ask_size);
        q.last_size.extend(last_size);
        q.volume.extend(volume);
        q.open_interest.extend(open_interest);
        q.dollar_volume.extend(dollar_volume);
        q.dollar_open_interest.extend(dollar_open_interest);

        let Snapshots { keys: k, yes, no } = snapshots;
        keys(&mut self.snapshots.keys, k);
        self.snapshots.yes.extend(yes);
        self.snapshots.no.extend(no);

        let Deltas { keys: k, side_yes, price, delta } = deltas;
        keys(&mut self.deltas.keys, k);
        self.deltas.side_yes.extend(side_yes);
        self.deltas.price.extend(price);
        self.deltas.delta.extend(delta);

        let Lifecycles { keys: k, scope_market, event, detail } = lifecycle;
        keys(&mut self.lifecycle.keys, k);
        self.lifecycle.scope_market.extend(scope_market);
        self.lifecycle.event.extend(event);
        self.lifecycle.detail.extend(detail);

        let Events { ts, feed, conn, market, event, reason, sid, expected, got, detail } = events;
        let e = &mut self.events;
        e.ts.extend(ts);
        e.feed.extend(feed.into_iter().map(ix));
        e.conn.extend(conn);
        e.market.extend(market.into_iter().map(ix));
        e.event.extend(event);
        e.reason.extend(reason);
        e.sid.extend(sid);
        e.expected.extend(expected);
        e.got.extend(got);
        e.detail.extend(detail);

        for (m, (f, first, last)) in markets {
            let seen = self.markets.entry(ix(m)).or_insert((ix(f), first, last));
            seen.1 = seen.1.min(first);
            seen.2 = seen.2.max(last);
        }

        let MarketInfos { market, feed, recv_ts, event, series, title, status, open_ts, close_ts, followed } =
            infos;
        let i = &mut self.infos;
        i.market.extend(market.into_iter().map(ix));
        i.feed.extend(feed.into_iter().map(ix));
        i.recv_ts.extend(recv_ts);
        i.event.extend(event);
        i.series.extend(series);
        i.title.extend(title);
        i.status.extend(status);
        i.open_ts.extend(open_ts);
        i.close_ts.extend(close_ts);
        i.followed.extend(followed);

        if ticks > 0 && (self.ticks == 0 || oldest_recv_ts < self.oldest_recv_ts) {
            self.oldest_recv_ts = oldest_recv_ts;
        }
        self.ticks += ticks;
    }

    /// The spool encoding (JSON; self-describing, so a spool written by one version of tickd
    /// replays in the next).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain vectors, strings and integer maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a spooled batch back.
    pub fn decode(bytes: &[u8]) -> Result<Batch, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Spooled batches are replayed merged, up to the writer's `batch_size` ticks per write.
impl Coalesce for Batch {
    type Error = serde_json::Error;

    fn decode(record: &[u8]) -> Result<Batch, serde_json::Error> {
        Batch::decode(record)
    }

    fn items(&self) -> usize {
        self.ticks
    }

    fn absorb(&mut self, later: Batch) {
        Batch::absorb(self, later);
    }
}

fn levels_json(levels: &[(crate::tick::Price, crate::tick::Qty)]) -> String {
    let mut out = String::with_capacity(2 + levels.len() * 16);
    out.push('[');
    for (i, (price, size)) in levels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("[{},{}]", price.0, size.0));
    }
    out.push(']');
    out
}

/// `text` with U+0000 replaced by U+FFFD.
fn without_nul(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

/// Replaces U+0000 in every string of a JSON value (see [`without_nul`]).
fn strip_nul(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) if s.contains('\0') => *s = without_nul(s),
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nul),
        serde_json::Value::Object(map) => map.values_mut().for_each(strip_nul),
        _ => {}
    }
}

/// Sequence numbers and sids fit in i64 for any real exchange; saturate rather than wrap.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::tick::MarketInfo;

    /// Ticks of two markets over two feeds, `n` µs apart from `start`.
    fn mixed_ticks(start: i64, step: i64, n: i64) -> Vec<Tick> {
        use crate::tick::{Price, Qty, Quote, Trade};
        (0..n)
            .map(|i| {
                let market: Name = Arc::from(if i % 2 == 0 { "KXA-1" } else { "KXB-2" });
                let feed: Name = Arc::from(if i % 3 == 0 { "one" } else { "two" });
                let kind = match i % 4 {
                    0 => TickKind::Trade(Trade {
                        trade_id: format!("t{start}-{i}"),
                        price: Price(4_800 + i),
                        size: Qty(100),
                        taker_side: Some(Side::Yes),
                        block: None,
                        backfill: i % 8 == 0,
                    }),
                    1 => TickKind::Quote(Quote { bid: Some(Price(4_700)), ..Quote::default() }),
                    2 => TickKind::Market(MarketInfo {
                        title: Some(format!("title {i}")),
                        ..MarketInfo::default()
                    }),
                    _ => TickKind::Feed(FeedEvent::Live),
                };
                Tick {
                    feed,
                    conn: 0,
                    market,
                    exch_ts: Some((start + i * step) / 1000),
                    recv_ts: start + i * step,
                    kind,
                }
            })
            .collect()
    }

    #[test]
    fn spooled_batches_merged_equal_one_batch_of_all_their_ticks_across_a_day_boundary() {
        // The first batch ends just before midnight UTC, the second starts just after.
        const DAY: i64 = 86_400_000_000;
        let (a, b) = (mixed_ticks(20 * DAY - 7_000, 1_000, 7), mixed_ticks(20 * DAY + 500, 1_000, 9));
        let batch_of = |ticks: &[Tick]| {
            let mut batch = Batch::new();
            ticks.iter().for_each(|t| batch.push(t));
            batch
        };
        let all: Vec<Tick> = a.iter().chain(&b).cloned().collect();

        // As replay does it: both read back from their spool records, then merged.
        let mut merged = Batch::decode(&batch_of(&a).encode()).expect("decodes");
        merged.absorb(Batch::decode(&batch_of(&b).encode()).expect("decodes"));

        let expected = batch_of(&all);
        assert_eq!(
            serde_json::to_value(&merged).expect("json"),
            serde_json::to_value(&expected).expect("json"),
            "the same names, rows, market spans and counts"
        );
        assert_eq!(merged.days(), [19, 20]);
        assert_eq!((merged.ticks, merged.oldest_recv_ts), (16, 20 * DAY - 7_000));
        // Merged in the other order, the rows of both days still get their partitions.
        let mut late_first = batch_of(&b);
        late_first.absorb(batch_of(&a));
        assert_eq!(late_first.days(), [19, 20]);
        assert_eq!(late_first.oldest_recv_ts, 20 * DAY - 7_000);
    }

    #[test]
    fn a_market_tick_describes_a_market_without_counting_as_seen_and_survives_the_spool() {
        let info =
            MarketInfo { series: Some("KXBTCD".into()), followed: Some(true), ..MarketInfo::default() };
        let tick = Tick {
            feed: Arc::from("kalshi"),
            conn: 0,
            market: Arc::from("KXBTCD-25DEC3117-T96249.99"),
            exch_ts: None,
            recv_ts: 1_000,
            kind: TickKind::Market(info),
        };
        let mut batch = Batch::new();
        batch.push(&tick);
        assert!(!batch.is_empty());
        assert!(batch.markets.is_empty(), "first_seen and last_seen are the data's");
        assert!(batch.days().is_empty(), "no partitioned row");

        let back = Batch::decode(&batch.encode()).expect("decodes");
        assert_eq!(back.infos.series, [Some("KXBTCD".to_string())]);
        assert_eq!(back.infos.followed, [Some(true)]);
        assert_eq!(back.name(back.infos.market[0]), "KXBTCD-25DEC3117-T96249.99");

        // A record spooled by a version without market ticks still replays.
        let mut old: serde_json::Value = serde_json::from_slice(&Batch::new().encode()).expect("json");
        old.as_object_mut().expect("an object").remove("infos");
        let old = Batch::decode(old.to_string().as_bytes()).expect("an older record decodes");
        assert!(old.infos.market.is_empty());
    }
}
