//! The spool's replay through the real writer and a real PostgreSQL: ticks spooled in small
//! records while the database was away go back in full batches, and every tick is stored
//! once, across a crash in the middle of a replay and with live ticks arriving meanwhile.
//!
//! A writer whose database is unreachable (nothing listens on port 1) fills the spool, with a
//! small `batch_size` and a `batch_age` too long to ever cut a batch: each record then holds
//! exactly `batch_size` ticks, as records written during a long outage do. A second writer on
//! the same state directory, with a real database and a larger `batch_size`, replays it.
//! What is asserted is what an operator sees: the store's counters (the ones `/metrics`
//! exposes) and the rows in PostgreSQL.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::daemon::{scalar, spool_segments};
use common::pg::TestDb;
use common::poll_until;
use tickd::bus::{Bus, BusBuilder};
use tickd::config::{BusSettings, DatabaseUrl, StoreSettings};
use tickd::store::spool::Spool;
use tickd::store::{StoreMetrics, StoreState, Writer, WriterContext};
use tickd::telemetry::alerts::Alerter;
use tickd::tick::{Name, Price, Qty, Quote, Side, Tick, TickKind, Trade, now_micros};
use tokio::task::JoinHandle;

/// How long a replay (or a spool being filled) may take.
const SETTLE: Duration = Duration::from_secs(120);

/// Ticks per spool record: the spooling writer's `batch_size`.
const RECORD_TICKS: usize = 50;

/// The replaying writer's `batch_size`: ten records per batch.
const BATCH_TICKS: usize = 500;

/// `n` ticks of `feed`, received 1 µs apart from `from`: every fourth a trade, the rest quotes,
/// over a few markets.
fn ticks(feed: &str, from: i64, n: usize) -> Vec<Arc<Tick>> {
    let feed: Name = Name::from(feed);
    (0..n as i64)
        .map(|i| {
            let market = Name::from(format!("KXTEST-{}", i % 7));
            let kind = if i % 4 == 0 {
                TickKind::Trade(Trade {
                    trade_id: format!("{feed}-{i}"),
                    price: Price(100 * (1 + i % 99)),
                    size: Qty(100),
                    taker_side: Some(Side::Yes),
                    block: None,
                    backfill: false,
                })
            } else {
                TickKind::Quote(Quote {
                    bid: Some(Price(4_800)),
                    ask: Some(Price(4_900)),
                    ..Quote::default()
                })
            };
            let recv_ts = from + i;
            Arc::new(Tick {
                feed: feed.clone(),
                conn: 0,
                market,
                exch_ts: Some(recv_ts / 1000),
                recv_ts,
                kind,
            })
        })
        .collect()
}

/// A writer running on `state_dir`, fed by its own bus.
struct Running {
    metrics: Arc<StoreMetrics>,
    bus: Option<Bus>,
    task: JoinHandle<()>,
}

impl Running {
    fn start(url: &str, state_dir: &Path, batch_size: usize, batch_age: Duration) -> Running {
        let settings = StoreSettings {
            url: DatabaseUrl::new(url),
            batch_size,
            batch_age: Some(batch_age),
            retry_interval: Duration::from_millis(200),
            ..StoreSettings::default()
        };
        let metrics = Arc::new(StoreMetrics::default());
        let ctx = WriterContext {
            settings,
            state_dir: state_dir.to_owned(),
            alerter: Alerter::new(None),
            metrics: metrics.clone(),
        };
        let mut builder = BusBuilder::new(&BusSettings::default());
        let (_handle, run) = Writer::start(ctx, builder.lossless()).expect("the writer starts");
        Running { metrics, bus: Some(builder.build()), task: tokio::spawn(run) }
    }

    async fn publish(&self, ticks: &[Arc<Tick>]) {
        let bus = self.bus.as_ref().expect("the bus is open");
        for tick in ticks {
            bus.publish(tick.clone()).await;
        }
    }

    fn count(&self, counter: impl Fn(&StoreMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
        counter(&self.metrics).load(Ordering::Relaxed)
    }

    /// Waits until the spool is replayed and the store writes directly.
    async fn wait_replayed(&self) {
        poll_until("the spool replayed", SETTLE, || {
            self.metrics.state() == StoreState::Ready && self.count(|m| &m.spool_batches) == 0
        })
        .await;
    }

    /// Closes the bus and waits for the writer to commit what it holds and return.
    async fn stop(mut self) -> Arc<StoreMetrics> {
        drop(self.bus.take());
        self.task.await.expect("the writer returns");
        self.metrics
    }
}

/// Fills the spool of `state_dir` with `ticks`, `RECORD_TICKS` to a record, as a writer does
/// while its database is unreachable.
async fn spool(state_dir: &Path, ticks: &[Arc<Tick>]) {
    let unreachable = "postgres://tickd@127.0.0.1:1/tickd";
    let writer = Running::start(unreachable, state_dir, RECORD_TICKS, Duration::from_secs(3600));
    writer.publish(ticks).await;
    let metrics = writer.stop().await;
    let spooled = metrics.spooled.load(Ordering::Relaxed);
    let records = metrics.spool_batches.load(Ordering::Relaxed);
    assert_eq!((spooled, records), (ticks.len() as u64, (ticks.len() / RECORD_TICKS) as u64));
}

/// Rows of `feed` in `trades` and `quotes`.
async fn rows(url: &str, feed: &str) -> i64 {
    scalar(
        url,
        &format!(
            "SELECT (SELECT count(*) FROM trades WHERE feed = '{feed}') \
                  + (SELECT count(*) FROM quotes WHERE feed = '{feed}')"
        ),
    )
    .await
}

/// Records waiting in the spool of `state_dir`, once no process holds it.
async fn records_on_disk(state_dir: &Path) -> u64 {
    let dir = state_dir.join("spool");
    let mut held = None;
    poll_until("the spool to be released", SETTLE, || match Spool::open(&dir, u64::MAX) {
        Ok((_, recovery)) => {
            held = Some(recovery.records);
            true
        }
        Err(e) if e.is_locked() => false,
        Err(e) => panic!("the spool cannot be opened: {e}"),
    })
    .await;
    held.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spooled_small_are_replayed_in_full_batches_and_stored_once() {
    // Arrange: 20,000 ticks in 400 records of 50.
    let db = TestDb::new().await;
    let state = tempfile::tempdir().expect("state dir");
    let spooled = ticks("spooled", now_micros(), 20_000);
    spool(state.path(), &spooled).await;

    // Act
    let writer = Running::start(&db.url, state.path(), BATCH_TICKS, Duration::from_millis(10));
    writer.wait_replayed().await;
    let m = writer.stop().await;

    // Assert: 40 statements of 500 ticks, not 400 of 50.
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(get(&m.replayed), 20_000);
    assert_eq!(get(&m.replayed_records), 400);
    assert_eq!(get(&m.replayed_batches), 40, "ten records to a batch");
    assert_eq!(get(&m.batches), 40, "nothing else was written");
    assert_eq!((get(&m.committed), get(&m.duplicates)), (20_000, 0));
    assert_eq!(rows(&db.url, "spooled").await, 20_000);
    assert_eq!(spool_segments(state.path()), Vec::<std::path::PathBuf>::new(), "the spool is empty on disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_stopped_by_a_crash_goes_on_from_its_checkpoint_and_stores_each_tick_once() {
    // Arrange: 50,000 ticks in 1,000 records; the replay takes 100 writes.
    let db = TestDb::new().await;
    let state = tempfile::tempdir().expect("state dir");
    let spooled = ticks("spooled", now_micros(), 50_000);
    spool(state.path(), &spooled).await;

    // Act: the replaying writer dies in the middle (its task dropped where it stands, as a
    // killed process leaves it: writes in flight, records stored but not yet consumed).
    let first = Running::start(&db.url, state.path(), BATCH_TICKS, Duration::from_millis(10));
    poll_until("part of the spool replayed", SETTLE, || {
        first.count(|m| &m.replayed) > 0 && first.count(|m| &m.spool_batches) > 0
    })
    .await;
    let Running { task, bus, .. } = first;
    task.abort();
    let _ = task.await;
    drop(bus);
    let left = records_on_disk(state.path()).await;
    let second = Running::start(&db.url, state.path(), BATCH_TICKS, Duration::from_millis(10));
    second.wait_replayed().await;
    let m = second.stop().await;

    // Assert
    assert!(0 < left && left < 1_000, "the crash left part of the spool: {left} records");
    assert_eq!(m.replayed_records.load(Ordering::Relaxed), left, "the next run replays only what was left");
    assert_eq!(rows(&db.url, "spooled").await, 50_000, "every tick stored, once");
    assert_eq!(spool_segments(state.path()), Vec::<std::path::PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_ticks_arriving_during_a_replay_are_written_between_its_batches_and_all_are_stored_once() {
    // Arrange
    let db = TestDb::new().await;
    let state = tempfile::tempdir().expect("state dir");
    let start = now_micros();
    let spooled = ticks("spooled", start, 50_000);
    let live = ticks("live", start + 1_000_000, 20_000);
    spool(state.path(), &spooled).await;

    // Act: live ticks are published once the replay has begun (before the database answers
    // they would go to the spool too).
    let writer = Arc::new(Running::start(&db.url, state.path(), BATCH_TICKS, Duration::from_millis(10)));
    poll_until("the replay begun", SETTLE, || writer.metrics.state() == StoreState::Replaying).await;
    let publisher = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.publish(&live).await })
    };
    // Live batches are the ones the commit latency histogram counts.
    let live_batches =
        |m: &StoreMetrics| m.latency_buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum::<u64>();
    poll_until("a live batch committed", SETTLE, || live_batches(&writer.metrics) > 0).await;
    let records_left_then = writer.count(|m| &m.spool_batches);
    publisher.await.expect("the publisher");
    writer.wait_replayed().await;
    poll_until("every live tick committed", SETTLE, || writer.count(|m| &m.committed) >= 70_000).await;
    let writer = Arc::into_inner(writer).expect("the publisher is done with the writer");
    let m = writer.stop().await;

    // Assert
    assert!(records_left_then > 0, "live ticks were written while the spool still held records");
    assert_eq!(m.replayed_batches.load(Ordering::Relaxed), 100, "the replay still went in full batches");
    assert_eq!(m.replayed.load(Ordering::Relaxed), 50_000);
    assert_eq!(m.duplicates.load(Ordering::Relaxed), 0);
    assert_eq!(rows(&db.url, "spooled").await, 50_000);
    assert_eq!(rows(&db.url, "live").await, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_replayed_after_it_was_committed_is_stored_once() {
    // Arrange: ticks committed by a live write, which inserts quotes without a conflict check,
    // and the same ticks in the spool, as a crash between a commit and the spool's
    // acknowledgement leaves them.
    let db = TestDb::new().await;
    let live_state = tempfile::tempdir().expect("state dir");
    let state = tempfile::tempdir().expect("state dir");
    let committed = ticks("twice", now_micros(), 2_000);
    let live = Running::start(&db.url, live_state.path(), BATCH_TICKS, Duration::from_millis(10));
    poll_until("the database reached", SETTLE, || live.metrics.state() == StoreState::Ready).await;
    live.publish(&committed).await;
    let first = live.stop().await;
    assert_eq!(
        (first.committed.load(Ordering::Relaxed), first.inserted.load(Ordering::Relaxed)),
        (2_000, 2_000),
        "written live, not spooled"
    );
    spool(state.path(), &committed).await;

    // Act
    let writer = Running::start(&db.url, state.path(), BATCH_TICKS, Duration::from_millis(10));
    writer.wait_replayed().await;
    let m = writer.stop().await;

    // Assert: every replayed tick found already stored, none refused, none stored twice.
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(get(&m.replayed), 2_000);
    assert_eq!((get(&m.inserted), get(&m.duplicates)), (0, 2_000));
    assert_eq!((get(&m.rejected_batches), get(&m.retriable_errors)), (0, 0));
    assert_eq!(rows(&db.url, "twice").await, 2_000);
}
