//! Ticks into PostgreSQL: tickd's batch write against a binary COPY of the same rows, then the
//! real writer's commit latency at a steady 50,000 ticks/s.
//!
//! Everything runs against one server: a private one started from the installed binaries
//! (normal durability: fsync, synchronous commit and full page writes on), or the server of
//! `DATABASE_URL` (an admin URL; the bench creates and drops its own database there). The
//! schema is the real one (`pg::migrate`): daily partitions, primary keys, BRIN and b-tree
//! indexes.
//!
//! **Throughput.** A deterministic mix of ticks ([`TickGen`]) is cut into batches of each size
//! and written by each method, sequentially on one connection, as the writer does:
//!
//! - **ceiling**: `COPY ... FROM STDIN (FORMAT binary)` of exactly the same rows into the same
//!   tables, one `COPY` per table, the batch's `COPY`s in one transaction (one commit per batch,
//!   like the others). No dedupe and no `markets` upkeep: the most PostgreSQL takes here;
//! - **ours**: `pg::write`, the writer's one-statement `INSERT` from typed `unnest` arrays with
//!   its dedupe and the `markets` upsert;
//! - **staging**: the other one-batch design, binary `COPY` into a temporary staging table
//!   (`ON COMMIT DELETE ROWS`), then one `INSERT ... SELECT ... ON CONFLICT DO NOTHING`
//!   statement shaped like ours, in one transaction: the same semantics as ours;
//! - **ours TCP**: `pg::write` again over TCP. The others use the private server's Unix socket,
//!   because sqlx leaves Nagle's algorithm on and a `COPY` over TCP loses 40 ms to a delayed ACK
//!   whenever its data fit in one segment.
//!
//! Each measurement starts from truncated tables and a checkpoint, writes one warm-up batch
//! (not counted), then times the same `STORE_TICKS` ticks. Batches are built before timing;
//! what is timed is batch to committed, client encoding included. Besides ticks/s it reports
//! the server backend's CPU per tick (read from `/proc`, so only for a server on this host),
//! which a busy machine disturbs far less than wall time, and the WAL written per tick.
//!
//! **Latency.** The real `Writer`, fed through a real `Bus` by a generator paced at
//! `STORE_RATE` ticks/s for `STORE_LATENCY_SECS`, with default store settings, over TCP, once
//! with `pool_size` 1 (the baseline: one write in flight) and once with the default (two). The
//! writer's histogram gives bucket bounds; the bench also samples the writer's exact latency
//! sum every millisecond to recover each batch's own latency.
//!
//! **Spool drain.** The real writer's live rate against its drain rate, on the same rows, in
//! one run: `STORE_DRAIN_TICKS` ticks of the same mix (seed 3) published as fast as the bus
//! takes them into a writer with default settings (from the first publish until every tick is
//! committed), then the same ticks spooled by a writer whose database is unreachable, in
//! records of each `STORE_DRAIN_RECORDS` size (a `batch_size` of that many and a `batch_age`
//! that never cuts), and replayed by a writer with default settings (from its start until the
//! spool is empty), into the same emptied tables. Each spool is replayed again with live ticks
//! published meanwhile at `STORE_DRAIN_LIVE_RATE`, and its first `STORE_DRAIN_BASELINE_TICKS`
//! ticks are written the way replay used to (one record per statement, one in flight).
//!
//! **Live rates.** First, PostgreSQL's CPU per row for the real writer as it runs live, fed at
//! each of `STORE_LIVE_RATES` ticks/s for `STORE_LIVE_SECS`, against a binary `COPY` of the
//! very ticks it got in batches of 5,000 (one transaction each): the CPU time of the backends,
//! the WAL writer and the checkpointer from `/proc`, the WAL per row, and the writer's commit
//! latency per batch.
//!
//! Run: `cargo bench --bench store`. Optional env: `DATABASE_URL`, `STORE_TICKS` (300000),
//! `STORE_REPS` (3), `STORE_BATCHES` (500,2000,5000,10000), `STORE_MARKETS` (300),
//! `STORE_METHODS` (ceiling,ours,staging,ourstcp), `STORE_RATE` (50000), `STORE_LATENCY_SECS`
//! (20), `STORE_BATCH_AGE_MS` (the default setting), `STORE_LATENCY_POOLS` (1,4: one latency
//! run per `pool_size`; 1 leaves the writer one write in flight, the default 4 gives it two),
//! `STORE_LIVE_RATES` (1000,10000,50000; `none` skips the live-rate part), `STORE_LIVE_SECS` (20),
//! `STORE_LIVE_COMMIT_LATENCY_MS` (the default `commit_latency`),
//! `STORE_DRAIN_TICKS` (500000; 0 skips the drain), `STORE_DRAIN_RECORDS` (500,14),
//! `STORE_DRAIN_LIVE_RATE` (`STORE_RATE`; 0 skips the drain under live load),
//! `STORE_DRAIN_BASELINE_TICKS` (50000; 0 skips it). `STORE_BATCHES=none
//! STORE_LATENCY_POOLS=none` runs the drain part alone.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, Row};
use tickd::bus::{Bus, BusBuilder};
use tickd::config::{BusSettings, DatabaseUrl, StoreSettings};
use tickd::dev::localpg::{LocalPg, LocalPgOptions};
use tickd::store::batch::Batch;
use tickd::store::{
    LATENCY_BUCKETS_MS, StoreMetrics, StoreState, WRITES_IN_FLIGHT, Writer, WriterContext, pg,
};
use tickd::telemetry::alerts::Alerter;
use tickd::tick::{
    BookDelta, BookSnapshot, FeedEvent, Lifecycle, LifecycleScope, Name, Price, Qty, Quote, Side, Tick,
    TickKind, Trade, recv_micros,
};

/// 2026-11-20 12:00:00 UTC in µs: the throughput runs' first receive time (all in one day).
const T0: i64 = 1_763_640_000_000_000;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// The tick tables, truncated before each measurement.
const TABLES: &str = "trades, quotes, book_snapshots, book_deltas, lifecycle_events, feed_events, markets";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// The tick mix
// ---------------------------------------------------------------------------------------------

/// One market's evolving state, so quotes, deltas and trades stay near one price.
struct Market {
    ticker: Name,
    event: Name,
    /// Mid price, $0.0001, a whole cent.
    mid: i64,
    volume: i64,
    open_interest: i64,
}

/// Kalshi-shaped tickers: `(event ticker, market suffix)` per series, `j` numbering strikes.
fn ticker(i: usize) -> (String, String) {
    let j = i / 6;
    let (day, strike) = (31 - (j / 20) % 28, j % 20);
    match i % 6 {
        0 => (format!("KXBTCD-25DEC{day:02}17"), format!("T{}.99", 95_000 + 250 * strike)),
        1 => (format!("KXETHD-25DEC{day:02}17"), format!("T{}.99", 3_000 + 25 * strike)),
        2 => (format!("KXHIGHNY-25DEC{day:02}"), format!("B{}.5", 30 + strike)),
        3 => (format!("KXINXU-25DEC{day:02}H1600"), format!("B{}", 6_500 + 25 * strike)),
        4 => (format!("KXFED-26JAN{day:02}"), format!("T{:.2}", 3.0 + 0.25 * strike as f64)),
        _ => {
            const TEAMS: [&str; 10] = ["LAL", "BOS", "GSW", "NYK", "MIA", "DEN", "PHX", "CHI", "DAL", "MIL"];
            let (a, b) = (TEAMS[strike % 10], TEAMS[(strike + 1 + strike / 10) % 10]);
            (format!("KXNBAGAME-25DEC{day:02}{a}{b}{}", j / 560), a.to_owned())
        }
    }
}

/// A deterministic stream of ticks shaped like a busy Kalshi feed. Per 10,000 ticks: about
/// 6,390 book deltas, 2,000 quotes, 1,500 trades, 100 book snapshots (5 to 40 levels a side),
/// 9 lifecycle events and 1 feed event (a sequence gap). Activity is skewed: a few markets
/// carry most of it. Trade ids are random UUIDs, so unique.
struct TickGen {
    rng: ChaCha8Rng,
    feed: Name,
    empty: Name,
    markets: Vec<Market>,
    /// The last receive time handed out by [`TickGen::next`].
    recv_ts: i64,
    seq: u64,
}

impl TickGen {
    fn new(seed: u64, markets: usize, start_us: i64) -> TickGen {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let markets = (0..markets)
            .map(|i| {
                let (event, suffix) = ticker(i);
                Market {
                    ticker: Name::from(format!("{event}-{suffix}")),
                    event: Name::from(event),
                    mid: 100 * rng.random_range(3..=97),
                    volume: 100 * rng.random_range(0..1_000_000),
                    open_interest: 100 * rng.random_range(0..200_000),
                }
            })
            .collect();
        TickGen { rng, feed: Name::from("kalshi"), empty: Name::from(""), markets, recv_ts: start_us, seq: 0 }
    }

    /// The next tick, 1 to 39 µs after the previous one (50,000 ticks/s on average).
    fn next(&mut self) -> Tick {
        self.recv_ts += self.rng.random_range(1..=39);
        self.next_at(self.recv_ts)
    }

    /// The next tick, received at `recv_ts` (µs).
    fn next_at(&mut self, recv_ts: i64) -> Tick {
        let rng = &mut self.rng;
        // Skewed popularity: u³ puts half the ticks on the first eighth of the markets.
        let u: f64 = rng.random();
        let n = self.markets.len();
        let m = &mut self.markets[(((u * u * u) * n as f64) as usize).min(n - 1)];
        // The exchange stamps in ms, 2 to 80 ms before the frame reaches us.
        let exch_ms = recv_ts / 1000 - rng.random_range(2..80);
        let roll = rng.random_range(0..10_000);
        let (market, exch_ts, kind) = if roll < 6_390 {
            let side = if rng.random_bool(0.5) { Side::Yes } else { Side::No };
            let near = if side == Side::Yes { m.mid } else { 10_000 - m.mid };
            let price = (near + 100 * rng.random_range(-8..=2)).clamp(100, 9_900);
            let delta = 100 * rng.random_range(1..=2_000) * if rng.random_bool(0.5) { 1 } else { -1 };
            let kind = TickKind::BookDelta(BookDelta { side, price: Price(price), delta: Qty(delta) });
            (m.ticker.clone(), Some(exch_ms), kind)
        } else if roll < 8_390 {
            m.mid = (m.mid + 100 * rng.random_range(-1..=1)).clamp(200, 9_800);
            let spread = 100 * rng.random_range(1..=3);
            let quote = Quote {
                last: Some(Price(m.mid)),
                bid: rng.random_bool(0.97).then_some(Price(m.mid - spread / 2)),
                ask: rng.random_bool(0.97).then_some(Price(m.mid - spread / 2 + spread)),
                bid_size: Some(Qty(100 * rng.random_range(1..=50_000))),
                ask_size: Some(Qty(100 * rng.random_range(1..=50_000))),
                last_size: Some(Qty(100 * rng.random_range(1..=500))),
                volume: Some(Qty(m.volume)),
                open_interest: Some(Qty(m.open_interest)),
                dollar_volume: Some(m.volume / 100 * m.mid / 10_000),
                dollar_open_interest: Some(m.open_interest / 100 * m.mid / 10_000),
            };
            (m.ticker.clone(), Some(exch_ms), TickKind::Quote(quote))
        } else if roll < 9_890 {
            let size = 100 * rng.random_range(1..=500);
            m.volume += size;
            m.open_interest += size / 2;
            let id: u128 = rng.random();
            let trade = Trade {
                trade_id: format!(
                    "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                    (id >> 96) as u32,
                    (id >> 80) as u16,
                    (id >> 68) as u16 & 0xfff,
                    ((id >> 52) as u16 & 0x3fff) | 0x8000,
                    id as u64 & 0xffff_ffff_ffff
                ),
                price: Price((m.mid + 100 * rng.random_range(-1..=1)).clamp(100, 9_900)),
                size: Qty(size),
                taker_side: Some(if rng.random_bool(0.5) { Side::Yes } else { Side::No }),
                block: Some(rng.random_bool(0.001)),
                backfill: false,
            };
            (m.ticker.clone(), Some(exch_ms), TickKind::Trade(trade))
        } else if roll < 9_990 {
            let mut ladder = |top: i64| {
                let n = rng.random_range(5..=40);
                (0..n)
                    .map(|k| {
                        (Price((top - 100 * (n - 1 - k)).max(100)), Qty(100 * rng.random_range(1..=20_000)))
                    })
                    .collect::<Vec<_>>()
            };
            let (yes, no) = (ladder(m.mid - 100), ladder(10_000 - m.mid - 100));
            (m.ticker.clone(), None, TickKind::BookSnapshot(BookSnapshot { yes, no }))
        } else if roll < 9_999 {
            const EVENTS: [&str; 5] =
                ["activated", "deactivated", "close_date_updated", "determined", "settled"];
            let (market, lifecycle) = if rng.random_bool(0.8) {
                let event = EVENTS[rng.random_range(0..EVENTS.len())];
                let detail = format!(
                    r#"{{"market_ticker":"{}","event_type":"{event}","open_ts":{},"close_ts":{},"result":"","additional_metadata":{{"name":"{}","title":"Will it close above the strike?","yes_sub_title":"Above","no_sub_title":"Below","rules_primary":"If the reference price is above the strike at close, the market resolves to Yes.","can_close_early":true,"expected_expiration_ts":{}}}}}"#,
                    m.ticker,
                    exch_ms / 1000 - 3_600,
                    exch_ms / 1000 + 3_600,
                    m.ticker,
                    exch_ms / 1000 + 3_900
                );
                let lc = Lifecycle { scope: LifecycleScope::Market, event: event.into(), detail };
                (m.ticker.clone(), lc)
            } else {
                let detail = format!(
                    r#"{{"event_ticker":"{}","series_ticker":"{}","title":"Daily close","sub_title":"On Dec 31","collateral_return_type":"MECNET","mutually_exclusive":true,"strike_date":{}}}"#,
                    m.event,
                    m.event.split('-').next().unwrap_or(""),
                    exch_ms / 1000 + 86_400
                );
                let lc = Lifecycle { scope: LifecycleScope::Event, event: "created".into(), detail };
                (m.event.clone(), lc)
            };
            (market, Some(exch_ms), TickKind::Lifecycle(lifecycle))
        } else {
            self.seq += 1;
            let event = FeedEvent::Gap {
                sid: 1 + self.seq % 3,
                expected: 1_000 * self.seq,
                got: 1_000 * self.seq + 3,
            };
            (self.empty.clone(), None, TickKind::Feed(event))
        };
        Tick { feed: self.feed.clone(), conn: 0, market, exch_ts, recv_ts, kind }
    }
}

// ---------------------------------------------------------------------------------------------
// Binary COPY encoding
// ---------------------------------------------------------------------------------------------

/// A `COPY ... (FORMAT binary)` stream: header, tuples, trailer.
struct CopyBuf(Vec<u8>);

impl CopyBuf {
    fn new(capacity: usize) -> CopyBuf {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        CopyBuf(buf)
    }

    fn row(&mut self, fields: i16) {
        self.0.extend_from_slice(&fields.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        // Fields are far below 2 GiB.
        self.0.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        self.0.extend_from_slice(bytes);
    }

    fn null(&mut self) {
        self.0.extend_from_slice(&(-1i32).to_be_bytes());
    }

    fn i16(&mut self, v: i16) {
        self.field(&v.to_be_bytes());
    }

    fn i32(&mut self, v: i32) {
        self.field(&v.to_be_bytes());
    }

    fn i64(&mut self, v: i64) {
        self.field(&v.to_be_bytes());
    }

    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.i64(v),
            None => self.null(),
        }
    }

    fn bool(&mut self, v: bool) {
        self.field(&[u8::from(v)]);
    }

    fn text(&mut self, v: &str) {
        self.field(v.as_bytes());
    }

    fn opt_text(&mut self, v: Option<&str>) {
        match v {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    /// `jsonb`: a version byte (1), then the JSON text.
    fn jsonb(&mut self, v: &str) {
        self.0.extend_from_slice(&(v.len() as i32 + 1).to_be_bytes());
        self.0.push(1);
        self.0.extend_from_slice(v.as_bytes());
    }

    /// `timestamptz` from µs since the Unix epoch: µs since 2000-01-01.
    fn ts(&mut self, us: i64) {
        self.i64(us - PG_EPOCH_US);
    }

    fn opt_ts(&mut self, us: Option<i64>) {
        match us {
            Some(us) => self.ts(us),
            None => self.null(),
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1i16).to_be_bytes());
        self.0
    }
}

fn side(yes: bool) -> &'static str {
    if yes { "yes" } else { "no" }
}

/// One `COPY` statement and its data per non-empty table of `b`, for the ceiling.
fn copy_per_table(b: &Batch) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let t = &b.trades;
    if !t.trade_id.is_empty() {
        let mut c = CopyBuf::new(t.trade_id.len() * 160);
        for (i, id) in t.trade_id.iter().enumerate() {
            c.row(9);
            c.text(b.name(t.keys.feed[i]));
            c.text(b.name(t.keys.market[i]));
            c.text(id);
            c.opt_ts(t.keys.exch_ts[i]);
            c.ts(t.keys.recv_ts[i]);
            c.i64(t.price[i]);
            c.i64(t.size[i]);
            match t.taker_yes[i] {
                Some(yes) => c.text(side(yes)),
                None => c.null(),
            }
            match t.block[i] {
                Some(block) => c.bool(block),
                None => c.null(),
            }
        }
        out.push((
            "COPY trades (feed, market, trade_id, exch_ts, recv_ts, price, size, taker_side, block) \
             FROM STDIN (FORMAT binary)",
            c.finish(),
        ));
    }
    let q = &b.quotes;
    if !q.keys.recv_ts.is_empty() {
        let mut c = CopyBuf::new(q.keys.recv_ts.len() * 200);
        for (i, recv_ts) in q.keys.recv_ts.iter().enumerate() {
            c.row(14);
            c.text(b.name(q.keys.feed[i]));
            c.text(b.name(q.keys.market[i]));
            c.opt_ts(q.keys.exch_ts[i]);
            c.ts(*recv_ts);
            c.opt_i64(q.last[i]);
            c.opt_i64(q.bid[i]);
            c.opt_i64(q.ask[i]);
            for v in [
                q.bid_size[i],
                q.ask_size[i],
                q.last_size[i],
                q.volume[i],
                q.open_interest[i],
                q.dollar_volume[i],
                q.dollar_open_interest[i],
            ] {
                c.opt_i64(v);
            }
        }
        out.push((
            "COPY quotes (feed, market, exch_ts, recv_ts, last, bid, ask, bid_size, ask_size, last_size, \
             volume, open_interest, dollar_volume, dollar_open_interest) FROM STDIN (FORMAT binary)",
            c.finish(),
        ));
    }
    let s = &b.snapshots;
    if !s.keys.recv_ts.is_empty() {
        let mut c = CopyBuf::new(s.keys.recv_ts.len() * 1_000);
        for (i, recv_ts) in s.keys.recv_ts.iter().enumerate() {
            c.row(6);
            c.text(b.name(s.keys.feed[i]));
            c.text(b.name(s.keys.market[i]));
            c.opt_ts(s.keys.exch_ts[i]);
            c.ts(*recv_ts);
            c.jsonb(&s.yes[i]);
            c.jsonb(&s.no[i]);
        }
        out.push((
            "COPY book_snapshots (feed, market, exch_ts, recv_ts, yes, no) FROM STDIN (FORMAT binary)",
            c.finish(),
        ));
    }
    let d = &b.deltas;
    if !d.keys.recv_ts.is_empty() {
        let mut c = CopyBuf::new(d.keys.recv_ts.len() * 110);
        for (i, recv_ts) in d.keys.recv_ts.iter().enumerate() {
            c.row(7);
            c.text(b.name(d.keys.feed[i]));
            c.text(b.name(d.keys.market[i]));
            c.opt_ts(d.keys.exch_ts[i]);
            c.ts(*recv_ts);
            c.text(side(d.side_yes[i]));
            c.i64(d.price[i]);
            c.i64(d.delta[i]);
        }
        out.push((
            "COPY book_deltas (feed, market, exch_ts, recv_ts, side, price, delta) FROM STDIN (FORMAT binary)",
            c.finish(),
        ));
    }
    let l = &b.lifecycle;
    if !l.keys.recv_ts.is_empty() {
        let mut c = CopyBuf::new(l.keys.recv_ts.len() * 600);
        for (i, recv_ts) in l.keys.recv_ts.iter().enumerate() {
            c.row(7);
            c.text(b.name(l.keys.feed[i]));
            c.text(b.name(l.keys.market[i]));
            c.opt_ts(l.keys.exch_ts[i]);
            c.ts(*recv_ts);
            c.text(if l.scope_market[i] { "market" } else { "event" });
            c.text(&l.event[i]);
            c.jsonb(&l.detail[i]);
        }
        out.push((
            "COPY lifecycle_events (feed, market, exch_ts, recv_ts, scope, event, detail) \
             FROM STDIN (FORMAT binary)",
            c.finish(),
        ));
    }
    let e = &b.events;
    if !e.ts.is_empty() {
        let mut c = CopyBuf::new(e.ts.len() * 200);
        for (i, ts) in e.ts.iter().enumerate() {
            c.row(10);
            c.ts(*ts);
            c.text(b.name(e.feed[i]));
            c.i32(e.conn[i]);
            c.text(b.name(e.market[i]));
            c.text(&e.event[i]);
            c.opt_text(e.reason[i].as_deref());
            c.opt_i64(e.sid[i]);
            c.opt_i64(e.expected[i]);
            c.opt_i64(e.got[i]);
            c.jsonb(&e.detail[i]);
        }
        out.push((
            "COPY feed_events (ts, feed, conn, market, event, reason, sid, expected, got, detail) \
             FROM STDIN (FORMAT binary)",
            c.finish(),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Staging: COPY into one wide temporary table, then one INSERT ... SELECT statement
// ---------------------------------------------------------------------------------------------

/// One row per tick; `k` says which table it goes to and the generic columns are shared:
/// `a`/`b` text, `i1`..`i10` int8, `b1`/`b2` bool, `j1`/`j2` jsonb. Emptied at every commit.
const STAGE_DDL: &str = "
CREATE TEMP TABLE tickd_stage (
    k int2 NOT NULL, feed text NOT NULL, market text NOT NULL, exch_ts timestamptz, recv_ts timestamptz NOT NULL,
    a text, b text, i1 int8, i2 int8, i3 int8, i4 int8, i5 int8, i6 int8, i7 int8, i8 int8, i9 int8, i10 int8,
    b1 bool, b2 bool, j1 jsonb, j2 jsonb
) ON COMMIT DELETE ROWS";

const STAGE_COPY: &str = "COPY tickd_stage FROM STDIN (FORMAT binary)";

/// The staging table into every table, with the same dedupe and `markets` upkeep as ours.
const STAGE_INSERT: &str = "
WITH t AS (
    INSERT INTO trades (feed, market, trade_id, exch_ts, recv_ts, price, size, taker_side, block)
    SELECT feed, market, a, exch_ts, recv_ts, i1, i2, CASE b1 WHEN true THEN 'yes' WHEN false THEN 'no' END, b2
    FROM tickd_stage WHERE k = 0
    ON CONFLICT DO NOTHING RETURNING 1),
q AS (
    INSERT INTO quotes (feed, market, exch_ts, recv_ts, last, bid, ask, bid_size, ask_size,
                        last_size, volume, open_interest, dollar_volume, dollar_open_interest)
    SELECT feed, market, exch_ts, recv_ts, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10
    FROM tickd_stage WHERE k = 1
    ON CONFLICT DO NOTHING RETURNING 1),
s AS (
    INSERT INTO book_snapshots (feed, market, exch_ts, recv_ts, yes, no)
    SELECT feed, market, exch_ts, recv_ts, j1, j2 FROM tickd_stage WHERE k = 2
    ON CONFLICT DO NOTHING RETURNING 1),
d AS (
    INSERT INTO book_deltas (feed, market, exch_ts, recv_ts, side, price, delta)
    SELECT feed, market, exch_ts, recv_ts, CASE WHEN b1 THEN 'yes' ELSE 'no' END, i1, i2
    FROM tickd_stage WHERE k = 3
    ON CONFLICT DO NOTHING RETURNING 1),
l AS (
    INSERT INTO lifecycle_events (feed, market, exch_ts, recv_ts, scope, event, detail)
    SELECT feed, market, exch_ts, recv_ts, CASE WHEN b1 THEN 'market' ELSE 'event' END, a, j1
    FROM tickd_stage WHERE k = 4
    ON CONFLICT DO NOTHING RETURNING 1),
e AS (
    INSERT INTO feed_events (ts, feed, conn, market, event, reason, sid, expected, got, detail)
    SELECT recv_ts, feed, i1::int4, market, a, b, i2, i3, i4, j1 FROM tickd_stage WHERE k = 5
    ON CONFLICT DO NOTHING RETURNING 1),
mk AS (
    INSERT INTO markets AS m (market, feed, first_seen, last_seen)
    SELECT market, min(feed), min(recv_ts), max(recv_ts) FROM tickd_stage
    WHERE market <> '' GROUP BY market ORDER BY market
    ON CONFLICT (market) DO UPDATE
        SET first_seen = least(m.first_seen, excluded.first_seen),
            last_seen = greatest(m.last_seen, excluded.last_seen)
        WHERE excluded.last_seen > m.last_seen OR excluded.first_seen < m.first_seen
    RETURNING 1)
SELECT (SELECT count(*) FROM t) + (SELECT count(*) FROM q) + (SELECT count(*) FROM s)
     + (SELECT count(*) FROM d) + (SELECT count(*) FROM l) + (SELECT count(*) FROM e)";

/// Columns of `tickd_stage`.
const STAGE_COLUMNS: i16 = 21;

/// One staging row: the five key columns, then the generic ones in order.
struct StageRow<'a> {
    k: i16,
    feed: &'a str,
    market: &'a str,
    exch_ts: Option<i64>,
    recv_ts: i64,
    a: Option<&'a str>,
    b: Option<&'a str>,
    ints: &'a [Option<i64>],
    bools: [Option<bool>; 2],
    json: [Option<&'a str>; 2],
}

impl CopyBuf {
    fn stage(&mut self, r: StageRow<'_>) {
        self.row(STAGE_COLUMNS);
        self.i16(r.k);
        self.text(r.feed);
        self.text(r.market);
        self.opt_ts(r.exch_ts);
        self.ts(r.recv_ts);
        self.opt_text(r.a);
        self.opt_text(r.b);
        for i in 0..10 {
            self.opt_i64(r.ints.get(i).copied().flatten());
        }
        for v in r.bools {
            match v {
                Some(v) => self.bool(v),
                None => self.null(),
            }
        }
        for v in r.json {
            match v {
                Some(v) => self.jsonb(v),
                None => self.null(),
            }
        }
    }
}

fn copy_staging(b: &Batch) -> Vec<u8> {
    let mut c = CopyBuf::new(b.ticks * 150);
    let t = &b.trades;
    for (i, id) in t.trade_id.iter().enumerate() {
        c.stage(StageRow {
            k: 0,
            feed: b.name(t.keys.feed[i]),
            market: b.name(t.keys.market[i]),
            exch_ts: t.keys.exch_ts[i],
            recv_ts: t.keys.recv_ts[i],
            a: Some(id),
            b: None,
            ints: &[Some(t.price[i]), Some(t.size[i])],
            bools: [t.taker_yes[i], t.block[i]],
            json: [None, None],
        });
    }
    let q = &b.quotes;
    for (i, recv_ts) in q.keys.recv_ts.iter().enumerate() {
        c.stage(StageRow {
            k: 1,
            feed: b.name(q.keys.feed[i]),
            market: b.name(q.keys.market[i]),
            exch_ts: q.keys.exch_ts[i],
            recv_ts: *recv_ts,
            a: None,
            b: None,
            ints: &[
                q.last[i],
                q.bid[i],
                q.ask[i],
                q.bid_size[i],
                q.ask_size[i],
                q.last_size[i],
                q.volume[i],
                q.open_interest[i],
                q.dollar_volume[i],
                q.dollar_open_interest[i],
            ],
            bools: [None, None],
            json: [None, None],
        });
    }
    let s = &b.snapshots;
    for (i, recv_ts) in s.keys.recv_ts.iter().enumerate() {
        c.stage(StageRow {
            k: 2,
            feed: b.name(s.keys.feed[i]),
            market: b.name(s.keys.market[i]),
            exch_ts: s.keys.exch_ts[i],
            recv_ts: *recv_ts,
            a: None,
            b: None,
            ints: &[],
            bools: [None, None],
            json: [Some(&s.yes[i]), Some(&s.no[i])],
        });
    }
    let d = &b.deltas;
    for (i, recv_ts) in d.keys.recv_ts.iter().enumerate() {
        c.stage(StageRow {
            k: 3,
            feed: b.name(d.keys.feed[i]),
            market: b.name(d.keys.market[i]),
            exch_ts: d.keys.exch_ts[i],
            recv_ts: *recv_ts,
            a: None,
            b: None,
            ints: &[Some(d.price[i]), Some(d.delta[i])],
            bools: [Some(d.side_yes[i]), None],
            json: [None, None],
        });
    }
    let l = &b.lifecycle;
    for (i, recv_ts) in l.keys.recv_ts.iter().enumerate() {
        c.stage(StageRow {
            k: 4,
            feed: b.name(l.keys.feed[i]),
            market: b.name(l.keys.market[i]),
            exch_ts: l.keys.exch_ts[i],
            recv_ts: *recv_ts,
            a: Some(&l.event[i]),
            b: None,
            ints: &[],
            bools: [Some(l.scope_market[i]), None],
            json: [Some(&l.detail[i]), None],
        });
    }
    let e = &b.events;
    for (i, ts) in e.ts.iter().enumerate() {
        c.stage(StageRow {
            k: 5,
            feed: b.name(e.feed[i]),
            market: b.name(e.market[i]),
            exch_ts: None,
            recv_ts: *ts,
            a: Some(&e.event[i]),
            b: e.reason[i].as_deref(),
            ints: &[Some(i64::from(e.conn[i])), e.sid[i], e.expected[i], e.got[i]],
            bools: [None, None],
            json: [Some(&e.detail[i]), None],
        });
    }
    c.finish()
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Ceiling,
    Ours,
    Staging,
    /// `pg::write` again, over TCP to 127.0.0.1 (the others use the Unix socket when they can).
    OursTcp,
}

/// In the order each batch size runs them, and the order of the result columns.
const METHODS: [Method; 4] = [Method::Ceiling, Method::Ours, Method::Staging, Method::OursTcp];

/// The connections of every method, each kept for the whole run (warm statement caches), and
/// their server processes.
struct Writers {
    /// `pg::write`'s pool: one connection, the writer's settings.
    ours: PgPool,
    /// The same over TCP; `None` when the bench has no Unix socket to compare with.
    ours_tcp: Option<PgPool>,
    ceiling: PgConnection,
    staging: PgConnection,
    /// Backend pids, by method.
    pids: [i32; METHODS.len()],
    /// For truncating and checkpoints.
    admin: PgConnection,
}

/// One timed measurement.
#[derive(Clone, Copy, Debug, Default)]
struct Point {
    ticks_per_s: f64,
    /// Server backend CPU per tick, µs (`None` when the server is not on this host).
    server_us: Option<f64>,
    /// This process's CPU per tick, µs.
    client_us: f64,
    /// WAL written per tick, bytes (every process's, checkpoints included).
    wal_bytes: f64,
}

async fn wal_lsn(admin: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0')::int8").fetch_one(admin).await.expect("wal lsn")
}

/// CPU seconds (user + system) used by process `pid` ("self" for this one).
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0) // USER_HZ
}

async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(conn).await.expect("pg_backend_pid")
}

async fn write_batch(w: &mut Writers, method: Method, batch: &Batch) -> u64 {
    match method {
        Method::Ours => pg::write(&w.ours, batch).await.expect("pg::write").rows,
        Method::OursTcp => {
            let pool = w.ours_tcp.as_ref().expect("a TCP pool");
            pg::write(pool, batch).await.expect("pg::write").rows
        }
        Method::Ceiling => {
            let mut tx = w.ceiling.begin().await.expect("begin");
            let mut rows = 0;
            for (statement, data) in copy_per_table(batch) {
                let mut copy = tx.copy_in_raw(statement).await.expect("copy starts");
                copy.send(data).await.expect("copy data");
                rows += copy.finish().await.expect("copy ends");
            }
            tx.commit().await.expect("commit");
            rows
        }
        Method::Staging => {
            let mut tx = w.staging.begin().await.expect("begin");
            let mut copy = tx.copy_in_raw(STAGE_COPY).await.expect("copy starts");
            copy.send(copy_staging(batch)).await.expect("copy data");
            copy.finish().await.expect("copy ends");
            let rows: i64 = sqlx::query_scalar(STAGE_INSERT).fetch_one(&mut *tx).await.expect("insert");
            tx.commit().await.expect("commit");
            rows as u64
        }
    }
}

async fn reset(admin: &mut PgConnection) {
    sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE {TABLES}"))).execute(&mut *admin).await.expect("truncate");
    sqlx::raw_sql("CHECKPOINT").execute(&mut *admin).await.expect("checkpoint");
}

/// Truncates, writes `warmup`, then times `batches`; checks every row arrived.
async fn measure(w: &mut Writers, method: Method, warmup: &Batch, batches: &[Batch]) -> Point {
    reset(&mut w.admin).await;
    let mut rows = write_batch(w, method, warmup).await;
    let pid = w.pids[METHODS.iter().position(|m| *m == method).unwrap_or(0)].to_string();
    let wal0 = wal_lsn(&mut w.admin).await;
    let (server0, client0) = (cpu_secs(&pid), cpu_secs("self").unwrap_or(0.0));
    let began = Instant::now();
    for batch in batches {
        rows += write_batch(w, method, batch).await;
    }
    let wall = began.elapsed().as_secs_f64();
    let (server1, client1) = (cpu_secs(&pid), cpu_secs("self").unwrap_or(0.0));
    let wal1 = wal_lsn(&mut w.admin).await;
    let ticks: usize = batches.iter().map(|b| b.ticks).sum();
    let expected = (ticks + warmup.ticks) as u64;
    assert_eq!(rows, expected, "{method:?}: rows written");
    let stored: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM trades) + (SELECT count(*) FROM quotes) \
              + (SELECT count(*) FROM book_snapshots) + (SELECT count(*) FROM book_deltas) \
              + (SELECT count(*) FROM lifecycle_events) + (SELECT count(*) FROM feed_events)",
    )
    .fetch_one(&mut w.admin)
    .await
    .expect("count");
    assert_eq!(stored as u64, expected, "{method:?}: rows stored");
    let per_tick = |secs: f64| secs * 1e6 / ticks as f64;
    Point {
        ticks_per_s: ticks as f64 / wall,
        server_us: server0.zip(server1).map(|(a, b)| per_tick(b - a)),
        client_us: per_tick(client1 - client0),
        wal_bytes: (wal1 - wal0) as f64 / ticks as f64,
    }
}

/// The 1-minute load average: this machine may be shared, and the numbers should say so.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_owned()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// Latency through the real writer
// ---------------------------------------------------------------------------------------------

struct Latency {
    published: u64,
    publish_secs: f64,
    /// Most ticks the generator ever was behind its schedule.
    max_behind: u64,
    /// Times the bus queue was full and the generator had to wait.
    bus_full: u64,
    metrics: Arc<StoreMetrics>,
    /// Each live batch's own latency, ms, from the writer's exact latency sum.
    per_batch_ms: Vec<f64>,
    /// Batches that committed within one sample of another and got their average.
    unsplit: u64,
    stored: i64,
}

async fn latency_run(
    url: &str,
    rate: f64,
    secs: f64,
    markets: usize,
    batch_age: Option<u64>,
    pool_size: u32,
) -> Latency {
    let mut admin = PgConnection::connect(url).await.expect("connect");
    reset(&mut admin).await;
    let state_dir = tempfile::tempdir().expect("state dir");
    let mut settings = StoreSettings { url: DatabaseUrl::new(url), pool_size, ..StoreSettings::default() };
    if let Some(ms) = batch_age {
        settings.batch_age = Some(Duration::from_millis(ms));
    }
    let metrics = Arc::new(StoreMetrics::default());
    let mut builder = BusBuilder::new(&BusSettings::default());
    let rx = builder.lossless();
    let bus = builder.build();
    let ctx = WriterContext {
        settings,
        state_dir: state_dir.path().to_owned(),
        alerter: Alerter::new(None),
        metrics: metrics.clone(),
    };
    let (_handle, run) = Writer::start(ctx, rx).expect("writer starts");
    let writer = tokio::spawn(run);
    let ready_by = Instant::now() + Duration::from_secs(30);
    while metrics.state() != StoreState::Ready {
        assert!(Instant::now() < ready_by, "the writer did not reach the database");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Samples the writer's latency sum and bucket count; a change of both is one or more
    // batches, whose exact latencies add up to the change of the sum.
    let sampler = {
        let metrics = metrics.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let read = |m: &StoreMetrics| {
                let n: u64 = m.latency_buckets.iter().map(|b| b.load(Ordering::Acquire)).sum();
                (n, m.latency_sum_us.load(Ordering::Acquire))
            };
            let (mut n0, mut s0) = read(&metrics);
            let (mut per_batch, mut unsplit) = (Vec::new(), 0u64);
            let mut every = tokio::time::interval(Duration::from_millis(1));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = token.cancelled() => break,
                }
                let (n, s) = read(&metrics);
                // The writer bumps the bucket, then the sum: wait until both moved.
                if n > n0 && s > s0 {
                    let k = n - n0;
                    if k > 1 {
                        unsplit += k;
                    }
                    let each = (s - s0) as f64 / k as f64 / 1000.0;
                    per_batch.extend(std::iter::repeat_n(each, k as usize));
                    (n0, s0) = (n, s);
                }
            }
            (per_batch, unsplit)
        });
        (stop, task)
    };

    let mut generator = TickGen::new(7, markets, 0);
    let began = Instant::now();
    let (mut published, mut max_behind) = (0u64, 0u64);
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    while began.elapsed().as_secs_f64() < secs {
        pace.tick().await;
        let due = (began.elapsed().as_secs_f64() * rate) as u64;
        max_behind = max_behind.max(due.saturating_sub(published));
        while published < due {
            // Stamped as the feed does: one strictly increasing receive time per tick.
            bus.publish(Arc::new(generator.next_at(recv_micros()))).await;
            published += 1;
        }
    }
    let publish_secs = began.elapsed().as_secs_f64();
    let bus_full = bus.stats().lossless_full;
    // The last publisher gone closes the bus; the writer commits what it holds and stops.
    drop(bus);
    writer.await.expect("writer task");
    tokio::time::sleep(Duration::from_millis(20)).await;
    sampler.0.cancel();
    let (per_batch_ms, unsplit) = sampler.1.await.expect("sampler task");
    let stored: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM trades) + (SELECT count(*) FROM quotes) \
              + (SELECT count(*) FROM book_snapshots) + (SELECT count(*) FROM book_deltas) \
              + (SELECT count(*) FROM lifecycle_events) + (SELECT count(*) FROM feed_events)",
    )
    .fetch_one(&mut admin)
    .await
    .expect("count");
    Latency { published, publish_secs, max_behind, bus_full, metrics, per_batch_ms, unsplit, stored }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    // Nearest rank, like the writer's histogram.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

// ---------------------------------------------------------------------------------------------
// Spool drain against live writes
// ---------------------------------------------------------------------------------------------

/// A real writer with default store settings (but `url`) on `state_dir`, fed by its own bus.
fn writer_on(
    url: &str,
    state_dir: &std::path::Path,
    settings: StoreSettings,
) -> (Arc<StoreMetrics>, Bus, tokio::task::JoinHandle<()>) {
    let metrics = Arc::new(StoreMetrics::default());
    let mut builder = BusBuilder::new(&BusSettings::default());
    let rx = builder.lossless();
    let ctx = WriterContext {
        settings: StoreSettings { url: DatabaseUrl::new(url), ..settings },
        state_dir: state_dir.to_owned(),
        alerter: Alerter::new(None),
        metrics: metrics.clone(),
    };
    let (_handle, run) = Writer::start(ctx, rx).expect("writer starts");
    (metrics, builder.build(), tokio::spawn(run))
}

/// Polls `cond` every millisecond until it holds; panics after `limit`.
async fn wait_for(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let until = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Rows in the tick tables.
async fn stored_rows(admin: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM trades) + (SELECT count(*) FROM quotes) \
              + (SELECT count(*) FROM book_snapshots) + (SELECT count(*) FROM book_deltas) \
              + (SELECT count(*) FROM lifecycle_events) + (SELECT count(*) FROM feed_events)",
    )
    .fetch_one(admin)
    .await
    .expect("count")
}

/// The writer's live rate: `ticks` published as fast as the bus takes them, from the first
/// publish until every tick is committed. Returns ticks/s and the mean ticks per batch.
async fn live_rate(url: &str, ticks: &[Arc<Tick>]) -> (f64, f64) {
    let state_dir = tempfile::tempdir().expect("state dir");
    let (metrics, bus, writer) = writer_on(url, state_dir.path(), StoreSettings::default());
    wait_for("the database", Duration::from_secs(60), || metrics.state() == StoreState::Ready).await;
    let began = Instant::now();
    for tick in ticks {
        bus.publish(tick.clone()).await;
    }
    let n = ticks.len() as u64;
    wait_for("every tick committed", Duration::from_secs(600), || StoreMetrics::get(&metrics.committed) >= n)
        .await;
    let secs = began.elapsed().as_secs_f64();
    drop(bus);
    writer.await.expect("writer task");
    (n as f64 / secs, n as f64 / StoreMetrics::get(&metrics.batches).max(1) as f64)
}

/// Spools `ticks` into `state_dir`, `record` ticks to a record, as a writer does while its
/// database is unreachable. Returns the records and bytes spooled.
async fn fill_spool(state_dir: &std::path::Path, ticks: &[Arc<Tick>], record: usize) -> (u64, u64) {
    let settings = StoreSettings {
        batch_size: record,
        batch_age: Some(Duration::from_secs(3600)),
        retry_interval: Duration::from_secs(3600),
        ..StoreSettings::default()
    };
    let (metrics, bus, writer) = writer_on("postgres://tickd@127.0.0.1:1/tickd", state_dir, settings);
    for tick in ticks {
        bus.publish(tick.clone()).await;
    }
    drop(bus);
    writer.await.expect("writer task");
    assert_eq!(StoreMetrics::get(&metrics.spooled), ticks.len() as u64, "every tick spooled");
    (StoreMetrics::get(&metrics.spool_batches), StoreMetrics::get(&metrics.spool_bytes))
}

/// What one drain did.
struct Drain {
    secs: f64,
    batches: u64,
    /// Live ticks published meanwhile, and the most the publisher fell behind its pace.
    live: u64,
    max_behind: u64,
    bus_full: u64,
}

/// Replays the spool of `state_dir` with a real writer (default settings), from its start to
/// the spool empty. With `live_rate`, `live` ticks are published at that pace meanwhile.
async fn drain(
    url: &str,
    state_dir: &std::path::Path,
    spooled: u64,
    live: &[Arc<Tick>],
    live_rate: f64,
) -> Drain {
    let began = Instant::now();
    let (metrics, bus, writer) = writer_on(url, state_dir, StoreSettings::default());
    let publisher = {
        let metrics = metrics.clone();
        let live: Vec<Arc<Tick>> = live.to_vec();
        tokio::spawn(async move {
            wait_for("the replay", Duration::from_secs(60), || metrics.state() != StoreState::Starting).await;
            let (mut published, mut max_behind) = (0usize, 0u64);
            let start = Instant::now();
            let mut pace = tokio::time::interval(Duration::from_millis(1));
            while published < live.len() {
                pace.tick().await;
                let due = ((start.elapsed().as_secs_f64() * live_rate) as usize).min(live.len());
                max_behind = max_behind.max(due.saturating_sub(published) as u64);
                while published < due {
                    bus.publish(live[published].clone()).await;
                    published += 1;
                }
            }
            let full = bus.stats().lossless_full;
            (bus, published as u64, max_behind, full)
        })
    };
    wait_for("the spool drained", Duration::from_secs(900), || {
        StoreMetrics::get(&metrics.replayed) >= spooled && StoreMetrics::get(&metrics.spool_batches) == 0
    })
    .await;
    let secs = began.elapsed().as_secs_f64();
    let batches = StoreMetrics::get(&metrics.replayed_batches);
    let (bus, live, max_behind, bus_full) = publisher.await.expect("publisher");
    drop(bus);
    writer.await.expect("writer task");
    Drain { secs, batches, live, max_behind, bus_full }
}

/// The replay as it was before records were merged: one record per statement, one in flight.
async fn per_record_rate(url: &str, state_dir: &std::path::Path, limit: u64) -> f64 {
    let settings = StoreSettings { url: DatabaseUrl::new(url), ..StoreSettings::default() };
    let pool = pg::lazy_pool(&settings).expect("pool");
    let (mut spool, _) =
        tickd::store::spool::Spool::open(&state_dir.join("spool"), settings.spool_max_bytes).expect("spool");
    let (mut ticks, began) = (0u64, Instant::now());
    let mut known_days = std::collections::HashSet::new();
    while ticks < limit {
        let Some((id, record)) = spool.front().expect("read") else { break };
        let batch = Batch::decode(&record).expect("decode");
        let days: Vec<i64> = batch.days().into_iter().filter(|d| known_days.insert(*d)).collect();
        pg::ensure_partitions(&pool, &days).await.expect("partitions");
        pg::write(&pool, &batch).await.expect("write");
        spool.consume(id).expect("consume");
        ticks += batch.ticks as u64;
    }
    let rate = ticks as f64 / began.elapsed().as_secs_f64();
    pool.close().await;
    rate
}

/// Drain rate ÷ live write rate of the same rows, in one run, for each spool record size.
async fn report_drain(url: &str, markets: usize, n: usize, records: &[usize], rate: f64, baseline: u64) {
    let mut admin = PgConnection::connect(url).await.expect("connect");
    let mut generator = TickGen::new(3, markets, T0);
    let ticks: Vec<Arc<Tick>> = (0..n).map(|_| Arc::new(generator.next())).collect();
    // Live ticks for the drain under load: the same mix, received after the spooled ones.
    let live: Vec<Arc<Tick>> = (0..n).map(|_| Arc::new(generator.next())).collect();
    println!();
    println!(
        "  spool drain: {n} ticks ({markets} markets), the real writer with default store settings over TCP; \
         load average before: {}",
        load_average()
    );

    reset(&mut admin).await;
    let (live_tps, live_mean) = live_rate(url, &ticks).await;
    assert_eq!(stored_rows(&mut admin).await, n as i64, "every live tick stored");
    println!("    live: {live_tps:.0} ticks/s ({live_mean:.0} ticks per batch)");

    for &record in records {
        let state_dir = tempfile::tempdir().expect("state dir");
        let (spooled, bytes) = fill_spool(state_dir.path(), &ticks, record).await;
        reset(&mut admin).await;
        let d = drain(url, state_dir.path(), n as u64, &[], 0.0).await;
        assert_eq!(stored_rows(&mut admin).await, n as i64, "every spooled tick stored");
        let drain_tps = n as f64 / d.secs;
        println!(
            "    records of {record} ticks ({spooled} records, {:.0} MB): drained in {:.2} s = {drain_tps:.0} ticks/s \
             in {} batches; drain / live = {:.2}",
            bytes as f64 / 1e6,
            d.secs,
            d.batches,
            drain_tps / live_tps
        );

        // The same spool again, with live ticks arriving at `rate` meanwhile.
        if rate > 0.0 {
            let state_dir = tempfile::tempdir().expect("state dir");
            fill_spool(state_dir.path(), &ticks, record).await;
            reset(&mut admin).await;
            let d = drain(url, state_dir.path(), n as u64, &live, rate).await;
            let drain_tps = n as f64 / d.secs;
            println!(
                "      with live ticks at {rate:.0}/s meanwhile: drained in {:.2} s = {drain_tps:.0} ticks/s \
                 in {} batches (drain / live = {:.2}); {} live ticks published, at most {} behind, bus full {} times",
                d.secs,
                d.batches,
                drain_tps / live_tps,
                d.live,
                d.max_behind,
                d.bus_full,
            );
        }

        if baseline > 0 {
            let state_dir = tempfile::tempdir().expect("state dir");
            fill_spool(state_dir.path(), &ticks, record).await;
            reset(&mut admin).await;
            let old = per_record_rate(url, state_dir.path(), baseline).await;
            println!(
                "      one record per statement, one in flight (the replay before), first {baseline} ticks: \
                 {old:.0} ticks/s = {:.2} of live",
                old / live_tps
            );
        }
    }
    println!("    load average after: {}", load_average());
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL's work per row at live rates: the real writer against a bare binary COPY
// ---------------------------------------------------------------------------------------------

/// The server processes whose CPU counts as PostgreSQL's work on our rows: the backends of
/// connections named `application` on this database, the WAL writer and the checkpointer.
async fn pg_processes(admin: &mut PgConnection, application: &str) -> Vec<(i32, String)> {
    sqlx::query_as(
        "SELECT pid, CASE WHEN backend_type = 'client backend' THEN 'backend' ELSE backend_type END \
         FROM pg_stat_activity \
         WHERE (backend_type = 'client backend' AND application_name = $1 AND datname = current_database()) \
            OR backend_type IN ('walwriter', 'checkpointer')",
    )
    .bind(application)
    .fetch_all(admin)
    .await
    .expect("pg_stat_activity")
}

/// CPU seconds of each process, keyed by pid.
fn cpu_of(processes: &[(i32, String)]) -> std::collections::HashMap<i32, (String, f64)> {
    processes
        .iter()
        .filter_map(|(pid, kind)| Some((*pid, (kind.clone(), cpu_secs(&pid.to_string())?))))
        .collect()
}

/// CPU seconds per kind of process between two readings (a process that appeared in
/// between counts from 0: its start is part of the work).
fn cpu_spent(
    before: &std::collections::HashMap<i32, (String, f64)>,
    after: &std::collections::HashMap<i32, (String, f64)>,
) -> PgCpu {
    let mut spent = PgCpu::default();
    for (pid, (kind, secs)) in after {
        let d = secs - before.get(pid).map_or(0.0, |b| b.1);
        match kind.as_str() {
            "backend" => spent.backend += d,
            "walwriter" => spent.walwriter += d,
            _ => spent.checkpointer += d,
        }
    }
    spent
}

/// PostgreSQL CPU seconds by process kind.
#[derive(Clone, Copy, Debug, Default)]
struct PgCpu {
    backend: f64,
    walwriter: f64,
    checkpointer: f64,
}

impl PgCpu {
    fn total(&self) -> f64 {
        self.backend + self.walwriter + self.checkpointer
    }
}

/// One live-rate run: the writer's figures and those of a binary COPY of the same rows.
#[derive(Clone, Debug, Default)]
struct LiveRun {
    rows: u64,
    commits: u64,
    secs: f64,
    writer: PgCpu,
    writer_wal: f64,
    copy: PgCpu,
    copy_rows: u64,
    copy_wal: f64,
    p50: f64,
    p99: f64,
    spooled: u64,
}

/// Counts the tick rows stored.
async fn tick_rows(admin: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM trades) + (SELECT count(*) FROM quotes) \
              + (SELECT count(*) FROM book_snapshots) + (SELECT count(*) FROM book_deltas) \
              + (SELECT count(*) FROM lifecycle_events) + (SELECT count(*) FROM feed_events)",
    )
    .fetch_one(admin)
    .await
    .expect("count")
}

/// The real writer (default settings, over TCP) fed at `rate` for `secs`; then the same rows
/// by binary COPY in batches of 5,000 over `copy_url`, one transaction per batch.
async fn live_run(url: &str, copy_url: &str, rate: f64, secs: f64, markets: usize, seed: u64) -> LiveRun {
    let mut admin = PgConnection::connect(url).await.expect("connect");
    reset(&mut admin).await;
    let state_dir = tempfile::tempdir().expect("state dir");
    let mut settings = StoreSettings::default();
    if let Some(ms) = std::env::var("STORE_LIVE_COMMIT_LATENCY_MS").ok().and_then(|v| v.parse().ok()) {
        settings.commit_latency = Duration::from_millis(ms);
    }
    let (metrics, bus, writer) = writer_on(url, state_dir.path(), settings);
    wait_for("the writer", Duration::from_secs(30), || metrics.state() == StoreState::Ready).await;
    let latencies = LatencySampler::start(metrics.clone());
    let before = cpu_of(&pg_processes(&mut admin, "tickd").await);
    let wal0 = wal_lsn(&mut admin).await;
    let batches0 = StoreMetrics::get(&metrics.batches);

    let mut generator = TickGen::new(seed, markets, 0);
    let mut sent: Vec<Arc<Tick>> = Vec::with_capacity((rate * secs) as usize + 1024);
    let began = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    while began.elapsed().as_secs_f64() < secs {
        pace.tick().await;
        let due = (began.elapsed().as_secs_f64() * rate) as usize;
        while sent.len() < due {
            let tick = Arc::new(generator.next_at(recv_micros()));
            sent.push(tick.clone());
            bus.publish(tick).await;
        }
    }
    let published = sent.len() as u64;
    wait_for("every tick committed", Duration::from_secs(120), || {
        StoreMetrics::get(&metrics.committed) + StoreMetrics::get(&metrics.spooled) >= published
    })
    .await;
    let run_secs = began.elapsed().as_secs_f64();
    let after = cpu_of(&pg_processes(&mut admin, "tickd").await);
    let wal1 = wal_lsn(&mut admin).await;
    let commits = StoreMetrics::get(&metrics.batches) - batches0;
    let spooled = StoreMetrics::get(&metrics.spooled);
    drop(bus);
    writer.await.expect("writer task");
    let per_batch = latencies.stop().await;
    let stored = tick_rows(&mut admin).await as u64;
    assert_eq!(stored, published, "every published tick is stored once");

    // The same rows by COPY, repeated (emptied between) until at least 200,000 rows have
    // gone, so that a slow rate's few rows still give a readable CPU time.
    let batches: Vec<Batch> = sent
        .chunks(5_000)
        .map(|ticks| {
            let mut b = Batch::new();
            ticks.iter().for_each(|t| b.push(t));
            b
        })
        .collect();
    drop(sent);
    let mut copier = PgConnection::connect(&format!(
        "{copy_url}{}application_name=copy",
        if copy_url.contains('?') { "&" } else { "?" }
    ))
    .await
    .expect("connect");
    let repeats = 200_000u64.div_ceil(published.max(1)).max(1);
    let mut copy = PgCpu::default();
    let (mut copy_rows, mut copy_wal) = (0u64, 0i64);
    for _ in 0..repeats {
        sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE {TABLES}")))
            .execute(&mut admin)
            .await
            .expect("truncate");
        let before = cpu_of(&pg_processes(&mut admin, "copy").await);
        let wal0 = wal_lsn(&mut admin).await;
        for batch in &batches {
            let mut tx = copier.begin().await.expect("begin");
            for (statement, data) in copy_per_table(batch) {
                let mut c = tx.copy_in_raw(statement).await.expect("copy starts");
                c.send(data).await.expect("copy data");
                copy_rows += c.finish().await.expect("copy ends");
            }
            tx.commit().await.expect("commit");
        }
        let after = cpu_of(&pg_processes(&mut admin, "copy").await);
        copy_wal += wal_lsn(&mut admin).await - wal0;
        let spent = cpu_spent(&before, &after);
        copy.backend += spent.backend;
        copy.walwriter += spent.walwriter;
        copy.checkpointer += spent.checkpointer;
    }
    let mut exact = per_batch;
    exact.sort_by(f64::total_cmp);
    LiveRun {
        rows: published,
        commits,
        secs: run_secs,
        writer: cpu_spent(&before, &after),
        writer_wal: (wal1 - wal0) as f64 / published as f64,
        copy,
        copy_rows,
        copy_wal: copy_wal as f64 / copy_rows as f64,
        p50: if exact.is_empty() { f64::NAN } else { quantile(&exact, 0.5) },
        p99: if exact.is_empty() { f64::NAN } else { quantile(&exact, 0.99) },
        spooled,
    }
}

/// PostgreSQL's CPU per row for the writer at each rate ÷ that of a binary COPY of the same
/// rows in batches of 5,000; commit latency; WAL per row. Medians of `reps` runs.
async fn report_live(url: &str, copy_url: &str, rates: &[f64], secs: f64, markets: usize, reps: usize) {
    println!();
    println!(
        "  live rates: the real writer (default store settings, over TCP) fed through the bus for {secs:.0} s, \
         {markets} markets, then the same rows by binary COPY in batches of 5,000 (one transaction each); \
         PostgreSQL CPU = backends + WAL writer + checkpointer from /proc; median of {reps}; load average {}",
        load_average()
    );
    println!(
        "  {:>7} | {:>7} {:>8} | {:>26} | {:>26} | {:>5} | {:>9} | {:>13}",
        "ticks/s",
        "rows",
        "commit/s",
        "writer µs/row (be/ww/ckpt)",
        "COPY µs/row (be/ww/ckpt)",
        "ratio",
        "WAL B/row",
        "p50 / p99 ms"
    );
    for &rate in rates {
        let mut runs = Vec::new();
        for rep in 0..reps {
            let r = live_run(url, copy_url, rate, secs, markets, 11 + rep as u64).await;
            let per = |c: PgCpu, rows: u64| c.total() * 1e6 / rows as f64;
            eprintln!(
                "    run {} at {rate:.0}/s: {} rows, {} commits, writer {:.2} µs/row (backend {:.2} walwriter {:.2} checkpointer {:.2}), \
                 COPY {:.2} µs/row (backend {:.2} walwriter {:.2} checkpointer {:.2}), ratio {:.2}, WAL {:.0} / {:.0} B/row, p50 {:.1} p99 {:.1} ms, spooled {}, load {}",
                rep + 1,
                r.rows,
                r.commits,
                per(r.writer, r.rows),
                r.writer.backend * 1e6 / r.rows as f64,
                r.writer.walwriter * 1e6 / r.rows as f64,
                r.writer.checkpointer * 1e6 / r.rows as f64,
                per(r.copy, r.copy_rows),
                r.copy.backend * 1e6 / r.copy_rows as f64,
                r.copy.walwriter * 1e6 / r.copy_rows as f64,
                r.copy.checkpointer * 1e6 / r.copy_rows as f64,
                per(r.writer, r.rows) / per(r.copy, r.copy_rows),
                r.writer_wal,
                r.copy_wal,
                r.p50,
                r.p99,
                r.spooled,
                load_average()
            );
            runs.push(r);
        }
        let med = |f: &dyn Fn(&LiveRun) -> f64| median(runs.iter().map(f).collect());
        let w = |f: fn(&PgCpu) -> f64| med(&|r: &LiveRun| f(&r.writer) * 1e6 / r.rows as f64);
        let c = |f: fn(&PgCpu) -> f64| med(&|r: &LiveRun| f(&r.copy) * 1e6 / r.copy_rows as f64);
        println!(
            "  {rate:>7.0} | {:>7.0} {:>8.1} | {:>6.2} ({:.2}/{:.2}/{:.2}) | {:>6.2} ({:.2}/{:.2}/{:.2}) | {:>5.2} | {:>4.0}/{:<4.0} | {:>5.1} / {:>5.1}",
            med(&|r| r.rows as f64),
            med(&|r| r.commits as f64 / r.secs),
            w(PgCpu::total),
            w(|c| c.backend),
            w(|c| c.walwriter),
            w(|c| c.checkpointer),
            c(PgCpu::total),
            c(|c| c.backend),
            c(|c| c.walwriter),
            c(|c| c.checkpointer),
            med(&|r| (r.writer.total() / r.rows as f64) / (r.copy.total() / r.copy_rows as f64)),
            med(&|r| r.writer_wal),
            med(&|r| r.copy_wal),
            med(&|r| r.p50),
            med(&|r| r.p99),
        );
    }
    println!("  load average after: {}", load_average());
}

/// Samples a writer's latency sum and bucket count every millisecond; a change of both is one
/// or more batches, whose exact latencies add up to the change of the sum.
struct LatencySampler {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Vec<f64>>,
}

impl LatencySampler {
    fn start(metrics: Arc<StoreMetrics>) -> LatencySampler {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let read = |m: &StoreMetrics| {
                let n: u64 = m.latency_buckets.iter().map(|b| b.load(Ordering::Acquire)).sum();
                (n, m.latency_sum_us.load(Ordering::Acquire))
            };
            let (mut n0, mut s0) = read(&metrics);
            let mut per_batch = Vec::new();
            let mut every = tokio::time::interval(Duration::from_millis(1));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = token.cancelled() => break,
                }
                let (n, s) = read(&metrics);
                if n > n0 && s > s0 {
                    let k = n - n0;
                    let each = (s - s0) as f64 / k as f64 / 1000.0;
                    per_batch.extend(std::iter::repeat_n(each, k as usize));
                    (n0, s0) = (n, s);
                }
            }
            per_batch
        });
        LatencySampler { stop, task }
    }

    async fn stop(self) -> Vec<f64> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.stop.cancel();
        self.task.await.expect("sampler task")
    }
}

// ---------------------------------------------------------------------------------------------
// The database
// ---------------------------------------------------------------------------------------------

/// Where the bench writes: a private server, or a database of its own on `DATABASE_URL`.
struct Database {
    /// Over TCP (or whatever `DATABASE_URL` says).
    url: String,
    /// The private server through its Unix socket.
    socket_url: Option<String>,
    /// Dropped at the end when on `DATABASE_URL`: (admin URL, name).
    created_on: Option<(String, String)>,
    _server: Option<LocalPg>,
    _dir: Option<tempfile::TempDir>,
}

async fn database() -> Database {
    let name = format!("tickd_bench_{}", std::process::id());
    match std::env::var("DATABASE_URL") {
        Ok(admin) if !admin.is_empty() => {
            let mut conn = PgConnection::connect(&admin).await.expect("connect to DATABASE_URL");
            sqlx::raw_sql(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
                .execute(&mut conn)
                .await
                .expect("create database");
            let _ = conn.close().await;
            let mut url = url::Url::parse(&admin).expect("DATABASE_URL is a URL");
            url.set_path(&format!("/{name}"));
            Database {
                url: url.into(),
                socket_url: None,
                created_on: Some((admin, name)),
                _server: None,
                _dir: None,
            }
        }
        _ => {
            // A cluster in a chosen directory keeps PostgreSQL's normal durability (fsync,
            // synchronous commit, full page writes), as a real deployment has. The server
            // runs as the postgres user when we are root, so it must be able to enter.
            let dir = tempfile::Builder::new()
                .prefix("tickd-bench-pg.")
                .permissions(std::fs::Permissions::from_mode(0o755))
                .tempdir()
                .expect("temp dir");
            let options = LocalPgOptions { data_dir: Some(dir.path().join("data")), port: None };
            let server = LocalPg::start(options).await.expect("starting PostgreSQL");
            let url = server.create_database(&name).await.expect("create database");
            let socket_url = format!("{url}?host={}", server.socket_dir().display());
            Database {
                url,
                socket_url: Some(socket_url),
                created_on: None,
                _server: Some(server),
                _dir: Some(dir),
            }
        }
    }
}

impl Database {
    async fn drop_created(&self) {
        if let Some((admin, name)) = &self.created_on {
            let mut conn = PgConnection::connect(admin).await.expect("connect to DATABASE_URL");
            let sql = format!(r#"DROP DATABASE "{name}" WITH (FORCE)"#);
            let _ = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await;
        }
    }
}

async fn server_settings(conn: &mut PgConnection) -> String {
    let row = sqlx::query(
        "SELECT current_setting('server_version'), current_setting('fsync'), \
                current_setting('synchronous_commit'), current_setting('shared_buffers'), \
                current_setting('max_wal_size')",
    )
    .fetch_one(conn)
    .await
    .expect("settings");
    format!(
        "PostgreSQL {} (fsync={}, synchronous_commit={}, shared_buffers={}, max_wal_size={})",
        row.get::<String, _>(0),
        row.get::<String, _>(1),
        row.get::<String, _>(2),
        row.get::<String, _>(3),
        row.get::<String, _>(4)
    )
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // `cargo test --all-targets` and nextest run bench binaries too: list nothing, run nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime builds");
    runtime.block_on(run());
}

async fn run() {
    let ticks: usize = env_or("STORE_TICKS", 300_000);
    let reps: usize = env_or("STORE_REPS", 3);
    let markets: usize = env_or("STORE_MARKETS", 300);
    let rate: f64 = env_or("STORE_RATE", 50_000.0);
    let latency_secs: f64 = env_or("STORE_LATENCY_SECS", 20.0);
    let sizes: Vec<usize> = std::env::var("STORE_BATCHES")
        .unwrap_or_else(|_| "500,2000,5000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let only: Vec<String> = std::env::var("STORE_METHODS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let biggest = sizes.iter().copied().max().unwrap_or(1);

    let db = database().await;
    // The throughput runs go through the Unix socket when there is one: sqlx leaves Nagle's
    // algorithm on, and over TCP a COPY's small closing message then waits for the server's
    // delayed ACK (40 ms) whenever the data before it fit in one segment: an artefact of the
    // client, not work the database does. `OursTcp` shows what TCP costs `pg::write`.
    let local_url = db.socket_url.clone().unwrap_or_else(|| db.url.clone());
    let settings =
        StoreSettings { url: DatabaseUrl::new(&local_url), pool_size: 1, ..StoreSettings::default() };
    let options: PgConnectOptions = pg::connect_options(&settings).expect("connect options");
    let ours = pg::lazy_pool(&settings).expect("pool");
    pg::migrate(&ours).await.expect("migrate");
    pg::ensure_partitions(&ours, &[T0.div_euclid(86_400_000_000)]).await.expect("partitions");
    let ours_tcp = db.socket_url.as_ref().map(|_| {
        let tcp = StoreSettings { url: DatabaseUrl::new(&db.url), ..settings.clone() };
        pg::lazy_pool(&tcp).expect("pool")
    });
    let mut admin = PgConnection::connect_with(&options).await.expect("connect");
    let server = server_settings(&mut admin).await;

    let live_rates: Vec<f64> = std::env::var("STORE_LIVE_RATES")
        .unwrap_or_else(|_| "1000,10000,50000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    if !live_rates.is_empty() {
        println!("store: {server}");
        let live_secs: f64 = env_or("STORE_LIVE_SECS", 20.0);
        report_live(&db.url, &local_url, &live_rates, live_secs, markets, reps).await;
    }

    // The same rows for every batch size and method: warm-up batches are cut from the ticks
    // before the measured ones.
    let mut generator = TickGen::new(1, markets, T0);
    let all: Vec<Tick> = (0..biggest + ticks).map(|_| generator.next()).collect();
    let (warm, measured) = all.split_at(biggest);
    let batch_of = |ticks: &[Tick]| {
        let mut b = Batch::new();
        ticks.iter().for_each(|t| b.push(t));
        b
    };
    let began = Instant::now();
    let cut: Vec<(usize, Batch, Vec<Batch>)> = sizes
        .iter()
        .map(|&size| (size, batch_of(&warm[biggest - size..]), measured.chunks(size).map(batch_of).collect()))
        .collect();
    let push_ns = began.elapsed().as_secs_f64() * 1e9 / (ticks * sizes.len()) as f64;

    let mut ceiling = PgConnection::connect_with(&options).await.expect("connect");
    let mut staging = PgConnection::connect_with(&options).await.expect("connect");
    sqlx::raw_sql(STAGE_DDL).execute(&mut staging).await.expect("staging table");
    let pool_pid = |pool: &PgPool| {
        let pool = pool.clone();
        async move { backend_pid(&mut pool.acquire().await.expect("acquire")).await }
    };
    let pids = [
        backend_pid(&mut ceiling).await,
        pool_pid(&ours).await,
        backend_pid(&mut staging).await,
        match &ours_tcp {
            Some(pool) => pool_pid(pool).await,
            None => 0,
        },
    ];
    let mut w = Writers { ours, ours_tcp, ceiling, staging, pids, admin };

    let count = |pred: fn(&TickKind) -> bool| measured.iter().filter(|t| pred(&t.kind)).count();
    let transport = if db.socket_url.is_some() { "Unix socket" } else { "DATABASE_URL" };
    println!("store: {server}, throughput over {transport}");
    println!(
        "  {ticks} ticks per point after one warm-up batch, {markets} markets, median of {reps} runs; \
         mix: {} book deltas, {} quotes, {} trades, {} snapshots, {} lifecycle, {} feed events",
        count(|k| matches!(k, TickKind::BookDelta(_))),
        count(|k| matches!(k, TickKind::Quote(_))),
        count(|k| matches!(k, TickKind::Trade(_))),
        count(|k| matches!(k, TickKind::BookSnapshot(_))),
        count(|k| matches!(k, TickKind::Lifecycle(_))),
        count(|k| matches!(k, TickKind::Feed(_))),
    );
    println!(
        "  building batches (Batch::push, done by the writer as ticks arrive; not timed below): {push_ns:.0} ns/tick"
    );

    let load_before = load_average();
    let skip = |method: Method| {
        (method == Method::OursTcp && w.ours_tcp.is_none())
            || (!only.is_empty() && !only.contains(&format!("{method:?}").to_lowercase()))
    };
    let skipped: Vec<bool> = METHODS.iter().map(|&m| skip(m)).collect();
    let mut results: Vec<Vec<Vec<Point>>> = vec![vec![Vec::new(); METHODS.len()]; cut.len()];
    for rep in 0..reps {
        for (s, (size, warmup, batches)) in cut.iter().enumerate() {
            for (m, &method) in METHODS.iter().enumerate() {
                if skipped[m] {
                    continue;
                }
                let point = measure(&mut w, method, warmup, batches).await;
                eprintln!(
                    "  run {} batch {size:>5} {method:<8?} {:>9.0} ticks/s  server {:>5.1} µs/tick  client {:>5.1} µs/tick  WAL {:>4.0} B/tick",
                    rep + 1,
                    point.ticks_per_s,
                    point.server_us.unwrap_or(f64::NAN),
                    point.client_us,
                    point.wal_bytes
                );
                results[s][m].push(point);
            }
        }
    }

    println!();
    println!(
        "  {:>6} | {:>10} {:>10} {:>10} {:>10} | {:>6} {:>6} | server CPU µs/tick | WAL bytes/tick",
        "batch", "ceiling/s", "ours/s", "staging/s", "ours TCP/s", "ours/c", "stag/c"
    );
    println!(
        "  {:>6} | {:>43} | {:>13} | {:>5} {:>5} {:>5}  | {:>4} {:>4} {:>4}",
        "", "", "", "ceil", "ours", "stag", "ceil", "ours", "stag"
    );
    for (s, (size, _, _)) in cut.iter().enumerate() {
        let of = |m: usize, f: fn(&Point) -> Option<f64>| {
            let v: Vec<f64> = results[s][m].iter().filter_map(f).collect();
            if v.is_empty() { f64::NAN } else { median(v) }
        };
        let rate = |m: usize| of(m, |p| Some(p.ticks_per_s));
        let server = |m: usize| of(m, |p| p.server_us);
        let wal = |m: usize| of(m, |p| Some(p.wal_bytes));
        let (c, o, st, tcp) = (0, 1, 2, 3); // METHODS order
        println!(
            "  {size:>6} | {:>10.0} {:>10.0} {:>10.0} {:>10.0} | {:>6.2} {:>6.2} | {:>5.1} {:>5.1} {:>5.1}  | {:>4.0} {:>4.0} {:>4.0}",
            rate(c),
            rate(o),
            rate(st),
            rate(tcp),
            rate(o) / rate(c),
            rate(st) / rate(c),
            server(c),
            server(o),
            server(st),
            wal(c),
            wal(o),
            wal(st),
        );
    }
    println!("  load average (1 min) before / after the throughput runs: {load_before} / {}", load_average());
    let Writers { ours, ours_tcp, ceiling, staging, admin, .. } = w;
    ours.close().await;
    if let Some(pool) = ours_tcp {
        pool.close().await;
    }
    drop((ceiling, staging, admin));

    let batch_age: Option<u64> = std::env::var("STORE_BATCH_AGE_MS").ok().and_then(|v| v.parse().ok());
    let pools: Vec<u32> = std::env::var("STORE_LATENCY_POOLS")
        .unwrap_or_else(|_| "1,4".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    for pool_size in pools {
        report_latency(&db.url, rate, latency_secs, markets, batch_age, pool_size).await;
    }
    let drain_ticks: usize = env_or("STORE_DRAIN_TICKS", 500_000);
    let drain_records: Vec<usize> = std::env::var("STORE_DRAIN_RECORDS")
        .unwrap_or_else(|_| "500,14".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let drain_live: f64 = env_or("STORE_DRAIN_LIVE_RATE", rate);
    let baseline: u64 = env_or("STORE_DRAIN_BASELINE_TICKS", 50_000);
    if drain_ticks > 0 && !drain_records.is_empty() {
        report_drain(&db.url, markets, drain_ticks, &drain_records, drain_live, baseline).await;
    }
    db.drop_created().await;
}

/// One latency run with `pool_size` connections (1 allows one write in flight, the writer's
/// behaviour before it took two), printed.
async fn report_latency(
    url: &str,
    rate: f64,
    latency_secs: f64,
    markets: usize,
    batch_age: Option<u64>,
    pool_size: u32,
) {
    let load_before = load_average();
    let l = latency_run(url, rate, latency_secs, markets, batch_age, pool_size).await;
    let m = &l.metrics;
    let get = |c: &std::sync::atomic::AtomicU64| StoreMetrics::get(c);
    let batches = get(&m.batches);
    println!();
    let defaults = StoreSettings::default();
    println!(
        "  latency: the real writer over TCP (store settings: batch_size {}, {}, pool_size \
         {pool_size}: {} write(s) in flight) fed through the bus at {rate:.0} ticks/s for {latency_secs:.0} s; load average before / after: {load_before} / {}",
        defaults.batch_size,
        match batch_age {
            Some(ms) => format!("batch_age {ms} ms"),
            None => format!("commit_latency {} ms", defaults.commit_latency.as_millis()),
        },
        WRITES_IN_FLIGHT.min(pool_size as usize),
        load_average()
    );
    println!(
        "    published {} ticks in {:.2} s = {:.0} ticks/s; at most {} ticks behind schedule; bus full {} times",
        l.published,
        l.publish_secs,
        l.published as f64 / l.publish_secs,
        l.max_behind,
        l.bus_full
    );
    println!(
        "    writer: received {} committed {} spooled {} lost {} rejected {} retriable errors {}; \
         {batches} batches ({:.0} ticks each); rows in the tables {}",
        get(&m.received),
        get(&m.committed),
        get(&m.spooled),
        get(&m.lost),
        get(&m.rejected_ticks),
        get(&m.retriable_errors),
        get(&m.committed) as f64 / batches.max(1) as f64,
        l.stored
    );
    let bound =
        |q: f64| m.latency_quantile_ms(q).map_or("past the last bucket".into(), |v| format!("< {v} ms"));
    println!(
        "    writer histogram (bucket bounds {LATENCY_BUCKETS_MS:?} ms): p50 {}  p99 {}",
        bound(0.5),
        bound(0.99)
    );
    let mut exact = l.per_batch_ms.clone();
    exact.sort_by(f64::total_cmp);
    if !exact.is_empty() {
        println!(
            "    per batch, from the writer's exact latency sum ({} batches, {} shared a sample): \
             p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            exact.len(),
            l.unsplit,
            quantile(&exact, 0.5),
            quantile(&exact, 0.9),
            quantile(&exact, 0.99),
            exact[exact.len() - 1]
        );
    }
}
