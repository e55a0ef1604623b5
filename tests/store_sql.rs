//! The schema and the batch statement against a real PostgreSQL: exact values, idempotent
//! writes, partitions and retention, the query functions, and the schema check.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pg::TestDb;
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};
use tickd::config::{DatabaseUrl, StoreSettings};
use tickd::store::StoreError;
use tickd::store::batch::{Batch, Loss};
use tickd::store::pg;
use tickd::tick::{
    BookDelta, BookSnapshot, FeedEvent, Lifecycle, LifecycleScope, MarketInfo, Price, Qty, Quote, Side, Tick,
    TickKind, Trade,
};

/// 2026-11-20 12:00:00 UTC in µs.
const T0: i64 = 1_763_640_000_000_000;
const DAY_US: i64 = 86_400_000_000;

async fn migrated() -> (TestDb, PgPool) {
    let db = TestDb::new().await;
    let pool = PgPool::connect(&db.url).await.expect("connect");
    pg::migrate(&pool).await.expect("migrate");
    (db, pool)
}

fn tick(market: &str, recv_ts: i64, exch_ms: Option<i64>, kind: TickKind) -> Tick {
    Tick { feed: Arc::from("sim"), conn: 0, market: Arc::from(market), exch_ts: exch_ms, recv_ts, kind }
}

fn trade(market: &str, id: &str, exch_ms: i64, price: i64, size: i64) -> Tick {
    tick(
        market,
        exch_ms * 1000 + 250,
        Some(exch_ms),
        TickKind::Trade(Trade {
            trade_id: id.into(),
            price: Price(price),
            size: Qty(size),
            taker_side: Some(Side::No),
            block: Some(false),
            backfill: false,
        }),
    )
}

fn event(recv_ts: i64, event: FeedEvent) -> Tick {
    tick("", recv_ts, None, TickKind::Feed(event))
}

/// One tick of every kind, at T0 and just after.
fn one_of_each() -> Vec<Tick> {
    vec![
        trade("MKT-A", "8d3a0b6e-1", T0 / 1000, 4801, 12_345),
        tick(
            "MKT-A",
            T0 + 1,
            Some(T0 / 1000),
            TickKind::Quote(Quote {
                last: Some(Price(4801)),
                bid: Some(Price(4800)),
                ask: None,
                bid_size: Some(Qty(100)),
                volume: Some(Qty(999_999_900)),
                dollar_volume: Some(123),
                ..Quote::default()
            }),
        ),
        tick(
            "MKT-A",
            T0 + 2,
            None,
            TickKind::BookSnapshot(BookSnapshot {
                yes: vec![(Price(4700), Qty(500)), (Price(4800), Qty(100))],
                no: vec![(Price(5100), Qty(250))],
            }),
        ),
        tick(
            "MKT-A",
            T0 + 3,
            None,
            TickKind::BookDelta(BookDelta { side: Side::No, price: Price(5100), delta: Qty(-250) }),
        ),
        tick(
            "EVT-A",
            T0 + 4,
            Some(T0 / 1000),
            TickKind::Lifecycle(Lifecycle {
                scope: LifecycleScope::Event,
                event: "created".into(),
                detail: r#"{"event_ticker":"EVT-A","collateral_return_type":"MECNET"}"#.into(),
            }),
        ),
        event(T0 + 5, FeedEvent::Gap { sid: 3, expected: 41, got: 44 }),
    ]
}

fn batch_of(ticks: &[Tick]) -> Batch {
    let mut batch = Batch::new();
    for t in ticks {
        batch.push(t);
    }
    batch
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_batch_written_twice_is_stored_once() {
    let (_db, pool) = migrated().await;
    let batch = batch_of(&one_of_each());
    pg::ensure_partitions(&pool, &batch.days()).await.expect("partitions");

    let first = pg::write(&pool, &batch).await.expect("first write");
    let again =
        pg::write(&pool, &Batch::decode(&batch.encode()).expect("decode")).await.expect("second write");

    assert_eq!(first.rows, 6);
    assert_eq!(first.trades, 1);
    assert_eq!(again.rows, 0, "a replayed batch must insert nothing");
    for table in ["trades", "quotes", "book_snapshots", "book_deltas", "lifecycle_events", "feed_events"] {
        assert_eq!(count(&pool, table).await, 1, "{table}");
    }
    assert_eq!(count(&pool, "markets").await, 2, "MKT-A and EVT-A");
}

#[tokio::test]
async fn a_batch_overlapping_one_already_written_adds_only_its_new_rows() {
    let (_db, pool) = migrated().await;
    let ticks = one_of_each();
    let first = batch_of(&ticks[..4]);
    pg::ensure_partitions(&pool, &first.days()).await.expect("partitions");
    pg::write(&pool, &first).await.expect("first write");
    // The trade, quote, snapshot and delta again (a replay), plus a lifecycle event and a gap.
    let overlapping = batch_of(&ticks);

    let inserted = pg::write(&pool, &overlapping).await.expect("overlapping write");

    assert_eq!(inserted.rows, 2, "only the lifecycle event and the gap are new");
    assert_eq!(inserted.trades, 0);
    for table in ["trades", "quotes", "book_snapshots", "book_deltas", "lifecycle_events", "feed_events"] {
        assert_eq!(count(&pool, table).await, 1, "{table}");
    }
}

#[tokio::test]
async fn prices_sizes_and_times_are_stored_exactly() {
    let (_db, pool) = migrated().await;
    let batch = batch_of(&one_of_each());
    pg::ensure_partitions(&pool, &batch.days()).await.expect("partitions");
    pg::write(&pool, &batch).await.expect("write");

    let t = sqlx::query(
        "SELECT price, size, taker_side, block, \
                (extract(epoch FROM exch_ts) * 1000000)::bigint AS exch_us, \
                (extract(epoch FROM recv_ts) * 1000000)::bigint AS recv_us, \
                tickd_dollars(price)::text AS dollars, tickd_contracts(size)::text AS contracts \
         FROM trades",
    )
    .fetch_one(&pool)
    .await
    .expect("trade row");
    assert_eq!(t.get::<i64, _>("price"), 4801);
    assert_eq!(t.get::<i64, _>("size"), 12_345);
    assert_eq!(t.get::<String, _>("taker_side"), "no");
    assert!(!t.get::<bool, _>("block"));
    assert_eq!(t.get::<i64, _>("exch_us"), T0);
    assert_eq!(t.get::<i64, _>("recv_us"), T0 + 250);
    assert_eq!(t.get::<String, _>("dollars"), "0.4801");
    assert_eq!(t.get::<String, _>("contracts"), "123.45");

    let q = sqlx::query(
        "SELECT last, bid, ask, bid_size, ask_size, last_size, volume, open_interest, dollar_volume, \
                dollar_open_interest FROM quotes",
    )
    .fetch_one(&pool)
    .await
    .expect("quote row");
    assert_eq!(q.get::<Option<i64>, _>("last"), Some(4801));
    assert_eq!(q.get::<Option<i64>, _>("bid"), Some(4800));
    assert_eq!(q.get::<Option<i64>, _>("ask"), None);
    assert_eq!(q.get::<Option<i64>, _>("bid_size"), Some(100));
    assert_eq!(q.get::<Option<i64>, _>("volume"), Some(999_999_900));
    assert_eq!(q.get::<Option<i64>, _>("dollar_volume"), Some(123));
    // Not given is NULL, never zero.
    for column in ["ask_size", "last_size", "open_interest", "dollar_open_interest"] {
        assert_eq!(q.get::<Option<i64>, _>(column), None, "{column}");
    }

    let s = sqlx::query("SELECT yes::text, no::text, exch_ts IS NULL AS no_exch FROM book_snapshots")
        .fetch_one(&pool)
        .await
        .expect("snapshot row");
    assert_eq!(s.get::<String, _>("yes"), "[[4700, 500], [4800, 100]]");
    assert_eq!(s.get::<String, _>("no"), "[[5100, 250]]");
    assert!(s.get::<bool, _>("no_exch"));

    let d = sqlx::query("SELECT side, price, delta FROM book_deltas").fetch_one(&pool).await.expect("delta");
    assert_eq!((d.get::<String, _>(0), d.get::<i64, _>(1), d.get::<i64, _>(2)), ("no".into(), 5100, -250));

    let l = sqlx::query("SELECT scope, event, detail->>'collateral_return_type' FROM lifecycle_events")
        .fetch_one(&pool)
        .await
        .expect("lifecycle");
    assert_eq!(l.get::<String, _>(0), "event");
    assert_eq!(l.get::<String, _>(1), "created");
    assert_eq!(l.get::<String, _>(2), "MECNET");

    let e = sqlx::query("SELECT event, sid, expected, got, feed, conn FROM feed_events")
        .fetch_one(&pool)
        .await
        .expect("event");
    assert_eq!(e.get::<String, _>("event"), "gap");
    assert_eq!(
        (e.get::<Option<i64>, _>("sid"), e.get::<Option<i64>, _>("expected"), e.get::<Option<i64>, _>("got")),
        (Some(3), Some(41), Some(44))
    );
    assert_eq!((e.get::<String, _>("feed"), e.get::<i32, _>("conn")), ("sim".into(), 0));
}

#[tokio::test]
async fn a_market_ticker_with_unusual_characters_is_stored_as_is() {
    let (_db, pool) = migrated().await;
    let weird = "KX'; DROP TABLE trades;--\\\"Ünï/%_€";
    let batch = batch_of(&[trade(weird, "t-weird", T0 / 1000, 1, 100)]);
    pg::ensure_partitions(&pool, &batch.days()).await.expect("partitions");

    pg::write(&pool, &batch).await.expect("write");

    let stored: String = sqlx::query_scalar("SELECT market FROM trades").fetch_one(&pool).await.expect("row");
    assert_eq!(stored, weird);
    let listed: String =
        sqlx::query_scalar("SELECT market FROM markets").fetch_one(&pool).await.expect("row");
    assert_eq!(listed, weird);
}

#[tokio::test]
async fn a_row_without_a_partition_is_retriable_and_partitions_repair_it() {
    let (_db, pool) = migrated().await;
    let old_ms = (T0 - 40 * DAY_US) / 1000;
    let batch = batch_of(&[trade("MKT-A", "old-1", old_ms, 5000, 100)]);

    let err = pg::write(&pool, &batch).await.expect_err("no partition for that day yet");
    assert!(matches!(&err, StoreError::Database { code, .. } if code == "23514"), "{err}");
    assert!(err.is_retriable());

    let made = pg::ensure_partitions(&pool, &batch.days()).await.expect("partitions");
    assert_eq!(made, 6, "one partition per table");
    pg::write(&pool, &batch).await.expect("write after the partition exists");
    assert_eq!(count(&pool, "trades").await, 1);
}

#[tokio::test]
async fn retention_drops_whole_days_older_than_the_limit() {
    let (_db, pool) = migrated().await;
    let today = tickd::tick::now_micros().div_euclid(DAY_US);
    pg::ensure_partitions(&pool, &[today - 40, today - 10, today]).await.expect("partitions");
    let old = batch_of(&[trade("MKT-A", "old", (today - 40) * DAY_US / 1000, 1, 1)]);
    let recent = batch_of(&[trade("MKT-A", "recent", (today - 10) * DAY_US / 1000, 1, 1)]);
    pg::write(&pool, &old).await.expect("old");
    pg::write(&pool, &recent).await.expect("recent");

    let dropped = pg::drop_expired(&pool, 30).await.expect("retention");

    assert_eq!(dropped.len(), 6, "{dropped:?}");
    assert!(dropped.iter().all(|t| t.ends_with(&day_suffix(today - 40))), "{dropped:?}");
    let left: Vec<String> =
        sqlx::query_scalar("SELECT trade_id FROM trades").fetch_all(&pool).await.expect("rows");
    assert_eq!(left, vec!["recent".to_string()]);
}

fn day_suffix(day: i64) -> String {
    let (y, m, d) = tickd::tick::civil_date(day);
    format!("_{y:04}{m:02}{d:02}")
}

#[tokio::test]
async fn ohlcv_trades_in_and_latest_quotes_answer_from_the_stored_rows() {
    let (_db, pool) = migrated().await;
    let ms = T0 / 1000;
    let mut ticks = vec![
        trade("MKT-A", "a1", ms, 4000, 100),
        trade("MKT-A", "a2", ms + 10_000, 4500, 200),
        trade("MKT-A", "a3", ms + 20_000, 3900, 300),
        trade("MKT-A", "a4", ms + 50_000, 4200, 400),
        // The next minute.
        trade("MKT-A", "a5", ms + 61_000, 4300, 500),
        trade("MKT-B", "b1", ms + 5_000, 9900, 100),
    ];
    for (i, bid) in [4100, 4150].into_iter().enumerate() {
        let q = Quote { bid: Some(Price(bid)), ..Quote::default() };
        ticks.push(tick("MKT-A", T0 + 100 + i as i64, Some(ms), TickKind::Quote(q)));
    }
    let batch = batch_of(&ticks);
    pg::ensure_partitions(&pool, &batch.days()).await.expect("partitions");
    pg::write(&pool, &batch).await.expect("write");

    let bars = sqlx::query(
        "SELECT open_int, high_int, low_int, close_int, volume_int, trades FROM ohlcv('MKT-A', '1 minute', \
         to_timestamp($1::bigint / 1000), to_timestamp($1::bigint / 1000) + interval '1 hour')",
    )
    .bind(ms)
    .fetch_all(&pool)
    .await
    .expect("ohlcv");
    let bars: Vec<(i64, i64, i64, i64, i64, i64)> =
        bars.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))).collect();
    assert_eq!(bars, vec![(4000, 4500, 3900, 4200, 1000, 4), (4300, 4300, 4300, 4300, 500, 1)]);

    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT trade_id FROM trades_in('MKT-A', to_timestamp($1::bigint / 1000), \
         to_timestamp($1::bigint / 1000) + interval '30 seconds')",
    )
    .bind(ms)
    .fetch_all(&pool)
    .await
    .expect("trades_in");
    assert_eq!(ids, ["a1", "a2", "a3"]);

    let latest: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT market, bid FROM latest_quotes ORDER BY market")
            .fetch_all(&pool)
            .await
            .expect("latest");
    assert_eq!(latest, vec![("MKT-A".to_string(), Some(4150))]);
}

#[tokio::test]
async fn gaps_lists_disconnects_seq_gaps_and_store_losses() {
    let (_db, pool) = migrated().await;
    let s = 1_000_000;
    let mut ticks = vec![
        event(T0, FeedEvent::Live),
        event(T0 + 10 * s, FeedEvent::Disconnected { reason: "connection reset".into() }),
        event(T0 + 11 * s, FeedEvent::Connecting { attempt: 1 }),
        event(T0 + 12 * s, FeedEvent::Disconnected { reason: "connect failed".into() }),
        event(T0 + 15 * s, FeedEvent::Connected),
        event(T0 + 16 * s, FeedEvent::Live),
        event(T0 + 20 * s, FeedEvent::Gap { sid: 1, expected: 10, got: 12 }),
        event(T0 + 21 * s, FeedEvent::Resynced { sid: 1 }),
    ];
    ticks.push(trade("MKT-A", "x", T0 / 1000, 1, 1));
    let mut batch = batch_of(&ticks);
    let mut losses = std::collections::HashMap::new();
    losses.insert("sim".to_string(), Loss { ticks: 7, trades: 2, from_us: T0 + 30 * s, to_us: T0 + 31 * s });
    batch.push_losses(&losses);
    pg::ensure_partitions(&pool, &batch.days()).await.expect("partitions");
    pg::write(&pool, &batch).await.expect("write");

    let rows = sqlx::query(
        "SELECT kind, (extract(epoch FROM started) * 1000000)::bigint, \
                (extract(epoch FROM ended) * 1000000)::bigint, detail \
         FROM gaps(to_timestamp($1::bigint / 1000000), to_timestamp($1::bigint / 1000000) + interval '1 hour')",
    )
    .bind(T0)
    .fetch_all(&pool)
    .await
    .expect("gaps");
    let got: Vec<(String, i64, Option<i64>)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        got,
        vec![
            ("disconnected".to_string(), T0 + 10 * s, Some(T0 + 16 * s)),
            ("seq_gap".to_string(), T0 + 20 * s, Some(T0 + 21 * s)),
            ("store_loss".to_string(), T0 + 30 * s, Some(T0 + 31 * s)),
        ]
    );
    let loss: serde_json::Value = rows[2].get(3);
    assert_eq!((loss["ticks"].as_u64(), loss["trades"].as_u64()), (Some(7), Some(2)));
}

#[tokio::test]
async fn the_schema_check_names_a_column_changed_by_hand() {
    let (_db, pool) = migrated().await;
    sqlx::raw_sql(
        "ALTER TABLE trades DROP COLUMN block; ALTER TABLE book_deltas ALTER COLUMN price TYPE numeric",
    )
    .execute(&pool)
    .await
    .expect("hand change");

    let err = pg::migrate(&pool).await.expect_err("schema drift must be reported");

    let text = err.to_string();
    assert!(matches!(err, StoreError::Schema(_)), "{text}");
    assert!(text.contains("table `trades`: column `block` (boolean) is missing"), "{text}");
    assert!(text.contains("table `book_deltas`: column `price` is numeric, expected bigint"), "{text}");
    assert!(!err.is_retriable());
}

/// A pool on `db` whose statements time out after `limit`, as the store's own pools do after
/// `write_timeout`.
fn pool_with_timeout(db: &TestDb, limit: Duration) -> PgPool {
    let settings = StoreSettings {
        url: DatabaseUrl::new(db.url.clone()),
        write_timeout: limit,
        ..StoreSettings::default()
    };
    pg::lazy_pool(&settings).expect("pool")
}

fn impatient_pool(db: &TestDb) -> PgPool {
    pool_with_timeout(db, Duration::from_millis(300))
}

#[tokio::test]
async fn a_migration_that_times_out_is_retriable_and_not_blamed_on_the_schema() {
    let (db, _pool) = migrated().await;
    let pool = impatient_pool(&db);
    let mut holder = db.connect().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .expect("lock");

    let err = pg::migrate(&pool).await.expect_err("the migration cannot read its table");

    let text = err.to_string();
    assert!(err.is_retriable(), "a timeout may succeed later: {text}");
    assert!(text.contains("57014"), "{text}");
    assert!(!text.contains("changed by hand"), "{text}");
}

#[tokio::test]
async fn a_migration_that_failed_half_way_leaves_no_lock_behind() {
    let (db, _pool) = migrated().await;
    let pool = impatient_pool(&db);
    let mut holder = db.connect().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .expect("lock");
    pg::migrate(&pool).await.expect_err("the migration cannot read its table");
    sqlx::raw_sql("COMMIT").execute(&mut holder).await.expect("unlock");
    // Whatever connection the failed migration left in the pool is now taken, so the next
    // migration runs on another one.
    let _idle = pool.acquire().await.expect("a connection");

    let second = pg::migrate(&pool).await;

    assert!(second.is_ok(), "the next migration is not blocked: {second:?}");
}

#[tokio::test]
async fn a_migration_abandoned_half_way_leaves_no_lock_behind() {
    let (db, _pool) = migrated().await;
    let patient = pool_with_timeout(&db, Duration::from_secs(30));
    let mut holder = db.connect().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .expect("lock");
    // A probe past its time limit drops the migration while it waits.
    let abandoned = tokio::time::timeout(Duration::from_millis(300), pg::migrate(&patient)).await;
    assert!(abandoned.is_err(), "the migration was still waiting: {abandoned:?}");
    sqlx::raw_sql("COMMIT").execute(&mut holder).await.expect("unlock");
    let _idle = patient.acquire().await.expect("a connection");

    let next = pg::migrate(&impatient_pool(&db)).await;

    assert!(next.is_ok(), "the next migration is not blocked: {next:?}");
}

/// Frames as published by others, through the protocol session and the batch into the real
/// schema: what a frame does not give is NULL in the table, never a made-up zero.
mod published_frames {
    use super::*;
    use tickd::kalshi::command::Channel;
    use tickd::kalshi::session::{Output, Session, SessionConfig};
    use tickd::telemetry::metrics::FeedMetrics;
    use tokio::time::Instant;

    /// A session with a ticker sid 123, a trade sid 11 and an order book sid 2, as the
    /// published frames use them, and the ticks it publishes for `frames`.
    fn ticks_of(frames: &[&str]) -> Vec<Tick> {
        let cfg = SessionConfig {
            feed: Arc::from("kalshi"),
            conn: 0,
            channels: vec![Channel::Ticker, Channel::Trade, Channel::OrderbookDelta],
            markets: ["INXD-25JAN17-B5955", "HIGHNY-22DEC23-B53.5", "FED-23DEC-T3.00"]
                .map(String::from)
                .to_vec(),
            use_yes_price: false,
            ack_timeout: Duration::from_secs(10),
        };
        let mut session = Session::new(cfg, Arc::new(FeedMetrics::default()));
        let now = Instant::now();
        let mut out = Output::default();
        let mut recv_ts = T0;
        session.on_connected(now, recv_ts, &mut out);
        let acks: Vec<String> = out
            .send
            .iter()
            .zip([123, 11, 2])
            .map(|(cmd, sid)| {
                let cmd: serde_json::Value = serde_json::from_str(cmd).expect("command");
                format!(
                    r#"{{"id":{},"type":"subscribed","msg":{{"channel":{},"sid":{sid}}}}}"#,
                    cmd["id"], cmd["params"]["channels"][0]
                )
            })
            .collect();
        for frame in acks.iter().map(String::as_str).chain(frames.iter().copied()) {
            recv_ts += 1;
            let _ = session.on_frame(frame.as_bytes(), recv_ts, now, &mut out);
        }
        out.ticks
    }

    #[tokio::test]
    async fn a_ticker_without_sizes_and_a_trade_without_a_side_store_null_not_zero() {
        // Arrange: published frames (kalshi-trade-rs docs; kalshi-node's hybrid-era spec copy).
        let (_db, pool) = migrated().await;
        let ticks = ticks_of(&[
            r#"{"type": "ticker", "sid": 123, "seq": 42, "msg": {"market_ticker": "INXD-25JAN17-B5955", "price_dollars": "0.65", "yes_bid_dollars": "0.64", "yes_ask_dollars": "0.66", "volume_fp": "1000.00", "open_interest_fp": "500.00", "dollar_volume": 65000, "dollar_open_interest": 32500, "ts": 1704067200}}"#,
            r#"{"type": "trade", "sid": 11, "msg": {"trade_id": "d91bc706-ee49-470d-82d8-11418bda6fed", "market_ticker": "HIGHNY-22DEC23-B53.5", "yes_price": 36, "yes_price_dollars": "0.360", "no_price": 64, "no_price_dollars": "0.640", "count": 136, "count_fp": "136.00", "ts": 1669149841}}"#,
            r#"{"type": "ticker", "sid": 1, "msg": {"foo": "bar"}, "unknown_field": 99}"#,
        ]);
        let batch = batch_of(&ticks);
        pg::ensure_partitions(&pool, &batch.days()).await.expect("partitions");

        // Act
        pg::write(&pool, &batch).await.expect("write");

        // Assert: the given values exactly, the others NULL.
        let q = sqlx::query(
            "SELECT market, last, bid, ask, bid_size, ask_size, last_size, volume, open_interest, \
                    dollar_volume, dollar_open_interest, \
                    (extract(epoch FROM exch_ts) * 1000)::bigint AS exch_ms FROM quotes",
        )
        .fetch_one(&pool)
        .await
        .expect("the quote is stored");
        assert_eq!(q.get::<String, _>("market"), "INXD-25JAN17-B5955");
        let values: Vec<Option<i64>> = [
            "last",
            "bid",
            "ask",
            "bid_size",
            "ask_size",
            "last_size",
            "volume",
            "open_interest",
            "dollar_volume",
            "dollar_open_interest",
            "exch_ms",
        ]
        .iter()
        .map(|c| q.get::<Option<i64>, _>(*c))
        .collect();
        assert_eq!(
            values,
            [
                Some(6500),
                Some(6400),
                Some(6600),
                None,
                None,
                None,
                Some(100_000),
                Some(50_000),
                Some(65_000),
                Some(32_500),
                Some(1_704_067_200_000)
            ]
        );
        let t = sqlx::query("SELECT price, size, taker_side, block FROM trades")
            .fetch_one(&pool)
            .await
            .expect("the trade is stored");
        assert_eq!((t.get::<i64, _>("price"), t.get::<i64, _>("size")), (3600, 13_600));
        assert_eq!(t.get::<Option<String>, _>("taker_side"), None);
        assert_eq!(t.get::<Option<bool>, _>("block"), None);
        // The ticker without a market is kept for a person to read, and listed by gaps().
        let r = sqlx::query(
            "SELECT reason, detail->>'text' AS text, detail->>'reason' AS why FROM feed_events \
             WHERE event = 'rejected'",
        )
        .fetch_one(&pool)
        .await
        .expect("the rejected frame is kept");
        assert_eq!(r.get::<String, _>("why"), "missing_field");
        assert_eq!(
            r.get::<Option<String>, _>("reason").as_deref(),
            Some("missing_field: ticker: required field `market_ticker` not given")
        );
        assert_eq!(
            r.get::<String, _>("text"),
            r#"{"type": "ticker", "sid": 1, "msg": {"foo": "bar"}, "unknown_field": 99}"#
        );
        let kinds: Vec<String> = sqlx::query_scalar(
            "SELECT kind FROM gaps(to_timestamp($1::bigint / 1000000), to_timestamp($1::bigint / 1000000) + interval '1 hour')",
        )
        .bind(T0)
        .fetch_all(&pool)
        .await
        .expect("gaps");
        assert_eq!(kinds, ["rejected"]);
    }
}

#[tokio::test]
async fn a_market_kept_stale_stays_a_gap_until_its_own_resync() {
    // Arrange: market A's book breaks and is given up; meanwhile the connection resyncs after
    // a gap (market '') and goes live; A is announced again after live, and resyncs later.
    let (_db, pool) = migrated().await;
    let s = 1_000_000;
    let at = |t: i64, market: &str, e: FeedEvent| tick(market, T0 + t * s, None, TickKind::Feed(e));
    let stale = || FeedEvent::Stale { reason: "crossed".into() };
    let ticks = [
        at(0, "", FeedEvent::Live),
        at(10, "A", stale()),
        at(20, "", FeedEvent::Gap { sid: 1, expected: 5, got: 9 }),
        at(20, "", FeedEvent::Stale { reason: "gap".into() }),
        at(21, "", FeedEvent::Resynced { sid: 1 }),
        at(30, "", FeedEvent::Live),
        at(30, "A", stale()),
        at(40, "B", stale()),
        at(41, "B", FeedEvent::Resynced { sid: 1 }),
        at(400, "A", FeedEvent::Resynced { sid: 1 }),
    ];
    let batch = batch_of(&ticks);
    pg::ensure_partitions(&pool, &batch.days()).await.expect("partitions");

    // Act
    pg::write(&pool, &batch).await.expect("write");

    // Assert: another market's resync or the connection's does not end A's window.
    let rows = sqlx::query(
        "SELECT market, kind, (extract(epoch FROM started) * 1000000)::bigint, \
                (extract(epoch FROM ended) * 1000000)::bigint \
         FROM gaps(to_timestamp($1::bigint / 1000000), to_timestamp($1::bigint / 1000000) + interval '1 hour') \
         ORDER BY 3, 1, 2",
    )
    .bind(T0)
    .fetch_all(&pool)
    .await
    .expect("gaps");
    let got: Vec<(String, String, i64, Option<i64>)> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                (r.get::<i64, _>(2) - T0) / s,
                r.get::<Option<i64>, _>(3).map(|e| (e - T0) / s),
            )
        })
        .collect();
    let row = |m: &str, k: &str, a: i64, b: i64| (m.to_string(), k.to_string(), a, Some(b));
    assert_eq!(
        got,
        [
            row("A", "stale", 10, 30),
            row("", "seq_gap", 20, 21),
            row("", "stale", 20, 21),
            row("A", "stale", 30, 400),
            row("B", "stale", 40, 41),
        ]
    );
}

fn market_info(market: &str, recv_ts: i64, info: MarketInfo) -> Tick {
    tick(market, recv_ts, None, TickKind::Market(info))
}

#[tokio::test]
async fn what_a_market_is_is_kept_in_markets_and_a_later_silence_erases_nothing() {
    // Arrange: a market tick from a listing, a trade, then the lifecycle's word on it, which
    // says only its status, and a spooled copy of the first batch.
    let (_db, pool) = migrated().await;
    let listed = MarketInfo {
        event: Some("KXBTCD-25DEC3117".into()),
        series: Some("KXBTCD".into()),
        title: Some("Bitcoin above $96,250?".into()),
        status: Some("active".into()),
        open_ms: Some(T0 / 1000 - 3_600_000),
        close_ms: Some(T0 / 1000 + 3_600_000),
        followed: Some(true),
    };
    let first = batch_of(&[
        market_info("KXBTCD-25DEC3117-T96249.99", T0, listed),
        trade("KXBTCD-25DEC3117-T96249.99", "t-1", T0 / 1000 + 5, 4800, 100),
    ]);
    let settled = MarketInfo { status: Some("finalized".into()), ..MarketInfo::default() };
    let later = batch_of(&[market_info("KXBTCD-25DEC3117-T96249.99", T0 + 10_000_000, settled)]);
    let let_go = MarketInfo { followed: Some(false), ..MarketInfo::default() };
    let last = batch_of(&[market_info("KXBTCD-25DEC3117-T96249.99", T0 + 20_000_000, let_go)]);
    let days: Vec<i64> = [&first, &later, &last].iter().flat_map(|b| b.days()).collect();
    pg::ensure_partitions(&pool, &days).await.expect("partitions");

    // Act
    pg::write(&pool, &first).await.expect("first");
    pg::write(&pool, &later).await.expect("later");
    pg::write(&pool, &last).await.expect("last");
    pg::write(&pool, &Batch::decode(&first.encode()).expect("decode")).await.expect("replayed");

    // Assert: one row that knows what the market is, seen from its listing to its trade.
    let row = sqlx::query(
        "SELECT event_ticker, series_ticker, title, status, followed, \
                (extract(epoch FROM open_time) * 1000)::int8, (extract(epoch FROM close_time) * 1000)::int8, \
                (extract(epoch FROM first_seen) * 1000000)::int8, (extract(epoch FROM last_seen) * 1000000)::int8 \
         FROM markets",
    )
    .fetch_all(&pool)
    .await
    .expect("markets");
    assert_eq!(row.len(), 1);
    let r = &row[0];
    assert_eq!(r.get::<Option<String>, _>(0).as_deref(), Some("KXBTCD-25DEC3117"));
    assert_eq!(r.get::<Option<String>, _>(1).as_deref(), Some("KXBTCD"));
    assert_eq!(r.get::<Option<String>, _>(2).as_deref(), Some("Bitcoin above $96,250?"));
    assert_eq!(r.get::<Option<i64>, _>(5), Some(T0 / 1000 - 3_600_000));
    assert_eq!(r.get::<Option<i64>, _>(6), Some(T0 / 1000 + 3_600_000));
    // The newest word stands: the replayed older listing does not bring `active` back.
    assert_eq!(r.get::<Option<String>, _>(3).as_deref(), Some("finalized"));
    assert_eq!(r.get::<Option<bool>, _>(4), Some(false));
    let trade_us = (T0 / 1000 + 5) * 1000 + 250;
    assert_eq!(
        (r.get::<i64, _>(7), r.get::<i64, _>(8)),
        (T0, trade_us),
        "seen from the listing to the trade"
    );

    // A market nobody has described has NULLs, never invented values.
    pg::write(&pool, &batch_of(&[trade("OTHER-1-T1", "t-2", T0 / 1000 + 6, 4800, 100)]))
        .await
        .expect("other");
    let unknown: (Option<String>, Option<String>, Option<bool>) =
        sqlx::query_as("SELECT series_ticker, status, followed FROM markets WHERE market = 'OTHER-1-T1'")
            .fetch_one(&pool)
            .await
            .expect("other row");
    assert_eq!(unknown, (None, None, None));
}

/// The statements of the README's "What users ask first" block, as a person pastes them.
fn readme_queries() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let block = readme
        .split_once("What users ask first:")
        .and_then(|(_, rest)| rest.split_once("```sql\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(sql, _)| sql.to_owned())
        .expect("the README's query block");
    block
        .split(';')
        .map(str::trim)
        // A chunk of nothing but a comment is the tail of the last statement's line.
        .filter(|s| s.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--")))
        .map(str::to_owned)
        .collect()
}

/// The rows `query` prints, each value as PostgreSQL writes it as text (what psql shows),
/// with its column name; times become `<time>`, since they move with the clock.
async fn printed_rows(pool: &PgPool, query: &str) -> Vec<Vec<(String, Option<String>)>> {
    let wrapped = format!(
        r"SELECT array_agg(e.key ORDER BY e.n),
                 array_agg(CASE WHEN e.value ~ '^\d{{4}}-\d\d-\d\dT\d\d:' THEN '<time>' ELSE e.value END
                           ORDER BY e.n)
          FROM (SELECT row_number() OVER () AS q, row_to_json(r) AS j FROM ({query}
) r) printed,
               LATERAL json_each_text(printed.j) WITH ORDINALITY AS e(key, value, n)
          GROUP BY printed.q ORDER BY printed.q"
    );
    let rows: Vec<(Vec<String>, Vec<Option<String>>)> = sqlx::query_as(AssertSqlSafe(wrapped))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    rows.into_iter().map(|(keys, values)| keys.into_iter().zip(values).collect()).collect()
}

#[tokio::test]
async fn every_readme_query_prints_dollars_contracts_and_counts_a_person_reads() {
    // Arrange: five trades of a KXBTCD market in two minutes of the last ten, a quote, what the
    // market is, and a disconnect that was repaired.
    let (_db, pool) = migrated().await;
    let market = "KXBTCD-25DEC31-T96250";
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let minute = 60_000;
    let start = (now_ms - 5 * minute) / minute * minute;
    let us = |ms: i64| ms * 1000;
    let info = MarketInfo {
        event: Some("KXBTCD-25DEC31".into()),
        series: Some("KXBTCD".into()),
        followed: Some(true),
        ..MarketInfo::default()
    };
    let quote = Quote { bid: Some(Price(4150)), ask: Some(Price(4300)), ..Quote::default() };
    let mut ticks = vec![
        market_info(market, us(start) - 10, info),
        trade(market, "a1", start, 4000, 100),
        trade(market, "a2", start + 10_000, 4500, 200),
        trade(market, "a3", start + 20_000, 3900, 300),
        trade(market, "a4", start + 50_000, 4200, 400),
        trade(market, "a5", start + 61_000, 4300, 500),
        tick(market, us(start + 62_000), Some(start + 62_000), TickKind::Quote(quote)),
    ];
    ticks.push(event(us(start + 1_000), FeedEvent::Disconnected { reason: "connection reset".into() }));
    ticks.push(event(us(start + 3_000), FeedEvent::Live));
    let batch = batch_of(&ticks);
    pg::ensure_partitions(&pool, &batch.days()).await.expect("partitions");
    pg::write(&pool, &batch).await.expect("write");
    let queries = readme_queries();

    // Act
    let mut printed = Vec::new();
    for query in &queries {
        printed.push(printed_rows(&pool, query).await);
    }

    // Assert
    let row = |cells: &[(&str, Option<&str>)]| -> Vec<(String, Option<String>)> {
        cells.iter().map(|(k, v)| (k.to_string(), v.map(str::to_owned))).collect()
    };
    let t = Some("<time>");
    let expected = vec![
        vec![row(&[
            ("market", Some(market)),
            ("bid", Some("0.4150")),
            ("ask", Some("0.4300")),
            ("recv_ts", t),
        ])],
        vec![
            row(&[
                ("bucket_start", t),
                ("open", Some("0.4000")),
                ("high", Some("0.4500")),
                ("low", Some("0.3900")),
                ("close", Some("0.4200")),
                ("volume", Some("10.00")),
                ("trades", Some("4")),
            ]),
            row(&[
                ("bucket_start", t),
                ("open", Some("0.4300")),
                ("high", Some("0.4300")),
                ("low", Some("0.4300")),
                ("close", Some("0.4300")),
                ("volume", Some("5.00")),
                ("trades", Some("1")),
            ]),
        ],
        ["a1", "a2", "a3", "a4", "a5"]
            .iter()
            .zip([
                ("0.4000", "1.00"),
                ("0.4500", "2.00"),
                ("0.3900", "3.00"),
                ("0.4200", "4.00"),
                ("0.4300", "5.00"),
            ])
            .map(|(id, (price, size))| {
                row(&[
                    ("trade_id", Some(id)),
                    ("price", Some(price)),
                    ("size", Some(size)),
                    ("taker_side", Some("no")),
                    ("exch_ts", t),
                ])
            })
            .collect(),
        vec![row(&[
            ("feed", Some("sim")),
            ("conn", Some("0")),
            ("market", Some("")),
            ("kind", Some("disconnected")),
            ("started", t),
            ("ended", t),
            ("recovered", Some("false")),
        ])],
        vec![row(&[
            ("market", Some(market)),
            ("covered_live", Some("23:59:58")),
            ("windows_missing", Some("1")),
            ("windows_recovered", Some("0")),
            ("trades_recovered", Some("0")),
        ])],
        vec![row(&[
            ("event_ticker", Some("KXBTCD-25DEC31")),
            ("trades", Some("5")),
            ("contracts", Some("15.00")),
        ])],
    ];
    assert_eq!(queries.len(), expected.len(), "one expectation per README query: {queries:#?}");
    for ((query, got), want) in queries.iter().zip(&printed).zip(&expected) {
        assert_eq!(got, want, "{query}");
    }
}

#[tokio::test]
async fn dollars_and_contracts_have_the_scale_of_their_unit_for_any_number() {
    let (_db, pool) = migrated().await;

    let printed: (String, String, String, String, String, Option<String>) = sqlx::query_as(
        "SELECT tickd_dollars(5400)::text, tickd_dollars(5400::bigint)::text, tickd_contracts(12345)::text, \
                tickd_contracts(sum(x))::text, tickd_dollars(avg(x))::text, tickd_dollars(NULL)::text \
         FROM (VALUES (1::bigint), (2::bigint)) v(x)",
    )
    .fetch_one(&pool)
    .await
    .expect("conversions");

    assert_eq!(
        printed,
        ("0.5400".into(), "0.5400".into(), "123.45".into(), "0.03".into(), "0.0002".into(), None)
    );
}

/// A trade recovered over the REST API: `backfill: true`.
fn rest_trade(market: &str, id: &str, exch_ms: i64) -> Tick {
    let mut t = trade(market, id, exch_ms, 5000, 100);
    if let TickKind::Trade(tr) = &mut t.kind {
        tr.backfill = true;
    }
    t
}

/// A `backfill` ledger row at `ts` for `[from_us, to_us]` of every market of connection 0.
fn backfill_row(ts: i64, from_us: i64, to_us: i64, complete: bool, gap: Option<(u64, u64, u64)>) -> Tick {
    event(
        ts,
        FeedEvent::Backfill(tickd::tick::Backfill {
            cause: if gap.is_some() { "seq_gap" } else { "disconnect" }.into(),
            from_us,
            to_us,
            markets: vec!["MKT-A".into(), "MKT-B".into()],
            complete,
            attempt: 1,
            sid: gap.map(|g| g.0),
            expected: gap.map(|g| g.1),
            got: gap.map(|g| g.2),
            error: (!complete).then(|| "HTTP 503".into()),
            ..tickd::tick::Backfill::default()
        }),
    )
}

#[tokio::test]
async fn a_trade_received_live_and_recovered_again_is_stored_once_as_received_live() {
    let (_db, pool) = migrated().await;
    let ticks = [
        trade("MKT-A", "live-1", T0 / 1000, 4800, 100),
        rest_trade("MKT-A", "live-1", T0 / 1000),
        rest_trade("MKT-A", "missed-1", T0 / 1000 + 1),
    ];
    let batch = batch_of(&ticks);
    pg::ensure_partitions(&pool, &batch.days()).await.expect("partitions");
    pg::write(&pool, &batch).await.expect("write");

    let rows: Vec<(String, String)> = sqlx::query_as("SELECT trade_id, source FROM trades ORDER BY trade_id")
        .fetch_all(&pool)
        .await
        .expect("rows");
    assert_eq!(rows, vec![("live-1".into(), "ws".into()), ("missed-1".into(), "rest".into())]);

    // A batch spooled by a version without backfill (no `rest` column) is stored as received live.
    let mut old: serde_json::Value =
        serde_json::from_slice(&batch_of(&[trade("MKT-A", "old-1", T0 / 1000 + 2, 1, 1)]).encode())
            .expect("json");
    old["trades"].as_object_mut().expect("trades").remove("rest");
    pg::write(&pool, &Batch::decode(old.to_string().as_bytes()).expect("decodes")).await.expect("old record");
    let source: String = sqlx::query_scalar("SELECT source FROM trades WHERE trade_id = 'old-1'")
        .fetch_one(&pool)
        .await
        .expect("old row");
    assert_eq!(source, "ws");
}

#[tokio::test]
async fn coverage_tells_time_covered_live_windows_missing_and_recovered_and_trades_recovered() {
    let (_db, pool) = migrated().await;
    let s = 1_000_000;
    let ticks = vec![
        event(T0, FeedEvent::Subscribed { channel: "orderbook_delta".into(), sid: 1 }),
        event(T0 + 1, FeedEvent::Subscribed { channel: "trade".into(), sid: 2 }),
        event(T0 + 2, FeedEvent::Live),
        trade("MKT-A", "a-1", T0 / 1000 + 5_000, 4800, 100),
        trade("MKT-B", "b-1", T0 / 1000 + 5_000, 4800, 100),
        // Lost 10 s..16 s, recovered: the backfill reaches from before to after the window.
        event(T0 + 10 * s, FeedEvent::Disconnected { reason: "connection reset".into() }),
        event(T0 + 16 * s, FeedEvent::Live),
        rest_trade("MKT-A", "a-2", T0 / 1000 + 12_000),
        rest_trade("MKT-A", "a-3", T0 / 1000 + 13_000),
        backfill_row(T0 + 17 * s, T0 + 9 * s, T0 + 17 * s, true, None),
        // Lost 30 s..40 s, not recovered: the REST API did not answer.
        event(T0 + 30 * s, FeedEvent::Disconnected { reason: "connection reset".into() }),
        event(T0 + 40 * s, FeedEvent::Live),
        backfill_row(T0 + 41 * s, T0 + 29 * s, T0 + 41 * s, false, None),
        // A gap on the trade channel, recovered; one on the order book channel, which loses
        // no trade.
        event(T0 + 50 * s, FeedEvent::Gap { sid: 2, expected: 5, got: 7 }),
        event(T0 + 51 * s, FeedEvent::Resynced { sid: 2 }),
        backfill_row(T0 + 52 * s, T0 + 49 * s, T0 + 50 * s, true, Some((2, 5, 7))),
        event(T0 + 53 * s, FeedEvent::Gap { sid: 1, expected: 9, got: 12 }),
        event(T0 + 54 * s, FeedEvent::Resynced { sid: 1 }),
        rest_trade("MKT-B", "b-2", T0 / 1000 + 50_500),
    ];
    let batch = batch_of(&ticks);
    pg::ensure_partitions(&pool, &batch.days()).await.expect("partitions");
    pg::write(&pool, &batch).await.expect("write");
    let from = "to_timestamp($1::bigint / 1000000)";
    let to = "to_timestamp($1::bigint / 1000000) + interval '60 seconds'";

    let gaps: Vec<(String, i64, bool)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT kind, (extract(epoch FROM started) * 1000000)::bigint, recovered FROM gaps({from}, {to})"
    )))
    .bind(T0)
    .fetch_all(&pool)
    .await
    .expect("gaps");
    assert_eq!(
        gaps,
        vec![
            ("disconnected".into(), T0 + 10 * s, true),
            ("disconnected".into(), T0 + 30 * s, false),
            ("seq_gap".into(), T0 + 50 * s, true),
            ("seq_gap".into(), T0 + 53 * s, false),
        ]
    );

    type Row = (String, String, i64, i64, i64, i64, i64);
    let sql = |args: &str| {
        format!(
            "SELECT market, feed, (extract(epoch FROM covered_live) * 1000000)::bigint, windows_missing, \
                    windows_recovered, (extract(epoch FROM missing_time) * 1000000)::bigint, trades_recovered \
             FROM coverage({args})"
        )
    };
    let one: Vec<Row> = sqlx::query_as(AssertSqlSafe(sql(&format!("'MKT-A', {from}, {to}"))))
        .bind(T0)
        .fetch_all(&pool)
        .await
        .expect("coverage of one market");
    // 60 s less the 6 s, 10 s and 1 s windows that lost trades; the order book gap lost none.
    assert_eq!(one, vec![("MKT-A".into(), "sim".into(), 43 * s, 1, 2, 10 * s, 2)]);

    let all: Vec<Row> = sqlx::query_as(AssertSqlSafe(sql(&format!("{from}, {to}"))))
        .bind(T0)
        .fetch_all(&pool)
        .await
        .expect("coverage of every market");
    assert_eq!(
        all,
        vec![
            ("MKT-A".into(), "sim".into(), 43 * s, 1, 2, 10 * s, 2),
            ("MKT-B".into(), "sim".into(), 43 * s, 1, 2, 10 * s, 1),
        ]
    );
}
