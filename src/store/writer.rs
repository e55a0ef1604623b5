//! The store writer: the bus's lossless consumer.
//!
//! One task, one `select!`. It takes ticks from the bus into a [`Batch`] and hands a batch to
//! PostgreSQL once it holds `batch_size` ticks or its oldest tick could wait no longer and
//! still be committed within `commit_latency`: the batch is cut when its oldest tick has waited
//! `commit_latency` less what recent live writes took ([`WriteTime`]), or at a fixed
//! `batch_age` when one is set. Each commit costs PostgreSQL about the same whatever it holds
//! (the statement, the WAL flush), so the writer commits as seldom as the budget allows: at
//! low rates about once per `commit_latency`, under load as often as writes need. Up to
//! [`WRITES_IN_FLIGHT`] writes run at once, each on its own connection, while the next batch
//! fills: one slow commit (a checkpoint, a WAL flush) then does not hold back the batch behind
//! it. Batches may commit out of order, which the idempotent keys make harmless. If the next
//! batch fills while every slot is busy, the writer stops taking ticks (the bus then pushes
//! back on the feeds) for at most `write_timeout`, after which the oldest write is abandoned
//! and its batch spooled.
//!
//! While the database is unreachable, batches go to the [`Spool`] under `state_dir/spool`
//! and a probe tries the database every `retry_interval`. The spool's file work (appending and
//! its `fdatasync`, reading, checkpointing) runs on a blocking thread, never on this task, so
//! a slow disk does not stop the writer from taking ticks. One append is under way at a time:
//! meanwhile the next batch keeps filling, so what arrives during one sync becomes one record
//! (group commit), and the bus pushes back once that batch is full. A batch counts as spooled
//! once its record is synced.
//!
//! Once the database answers (and the schema is migrated and checked), new batches are written
//! directly and the spool is replayed, oldest first, in every write slot that no new batch
//! needs (and in every other slot under sustained load, so that it drains). Replay reads ahead
//! ([`Coalescer`]): consecutive records are merged into batches of up to `batch_size` ticks,
//! whatever sizes they were spooled in, and the next one is read while one is written, so the
//! spool drains at about the pace of live writes. Merged records may span days (each write
//! makes sure of its rows' partitions). A replayed batch is consumed only once it and every
//! batch read before it are committed, in spool order; after a failed write the replay starts
//! again from the oldest record not consumed. Every write is idempotent, so a batch that was
//! committed but not consumed (its answer lost, the process killed) is stored once however
//! often it is replayed. A merged batch the database refuses for its content is replayed again
//! record by record, so that only the record at fault is set aside.
//!
//! The `markets` table's first and last sightings are written only when a batch has something
//! to tell it: a market this process has not written yet, an earlier first sighting, or a
//! last sighting [`LAST_SEEN_STEP_US`] past the one written. Every batch used to upsert every
//! market it touched, an update per market per commit, which at hundreds of markets was more
//! rows than the ticks themselves at low rates.
//!
//! Nothing is dropped without a record: a full spool drops the batch, counts it per feed,
//! alerts at once, and writes a `store_loss` row to `feed_events` when the database is back;
//! a batch the database refuses for its content is kept under `state_dir/rejected` with an
//! alert. On shutdown (the bus closes once every feed has stopped) the last batch is written
//! or spooled before the writer returns, and while the database answers, the spool is replayed
//! first (for at most `STOP_REPLAY_LIMIT`; the rest waits for the next start), so that a clean
//! stop leaves nothing on disk that the database could have taken.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use sqlx::postgres::PgPool;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

use super::batch::{Batch, Loss};
use super::pg::{self, Inserted};
use super::spool::{Coalescer, Group, RecordId, Spool, SpoolError, Undecodable};
use super::{StoreError, StoreMetrics, StoreState};
use crate::bus::LosslessReceiver;
use crate::config::StoreSettings;
use crate::telemetry::alerts::Alerter;
use crate::tick::{Name, Tick, now_micros};

/// Ticks taken from the bus per receive call; bounds the work done per loop turn.
const RECV_CHUNK: usize = 1024;

/// Writes in flight at once (never more than `pool_size`). Two let a batch commit while the
/// one before it waits on a slow flush; more would only queue behind the same WAL writer.
pub const WRITES_IN_FLIGHT: usize = 2;

/// How far a market's `last_seen` in `markets` may lag the data: a batch upserts a market it
/// has written before only once its last sighting is this much newer (µs).
pub const LAST_SEEN_STEP_US: i64 = 60_000_000;

/// The least age at which a batch is cut when writes take about the whole `commit_latency`:
/// cutting sooner would only make more, smaller commits of the same ticks.
const MIN_CUT_AGE: Duration = Duration::from_millis(1);

/// How often partitions ahead and retention are looked after while the database is up.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

/// How long to wait before trying again after a schema or migration problem, which needs a
/// person to fix it.
const SCHEMA_RETRY: Duration = Duration::from_secs(30);

/// How long a stop goes on replaying the spool while the database answers; what is left then
/// is replayed at the next start. Well inside the shipped unit's stop timeout (45 s).
const STOP_REPLAY_LIMIT: Duration = Duration::from_secs(10);

/// Everything the writer runs with.
pub struct WriterContext {
    /// The `[store]` settings.
    pub settings: StoreSettings,
    /// The state directory; the spool lives in `spool/`, refused batches in `rejected/`.
    pub state_dir: PathBuf,
    /// Runs the alert command.
    pub alerter: Alerter,
    /// Where the writer reports.
    pub metrics: Arc<StoreMetrics>,
}

/// A cheap handle on a running writer.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    metrics: Arc<StoreMetrics>,
    pool: PgPool,
}

impl StoreHandle {
    /// The writer's counters and state.
    pub fn metrics(&self) -> &Arc<StoreMetrics> {
        &self.metrics
    }

    /// The connection pool (for read queries beside the writer).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Starts the store writer.
pub struct Writer;

impl Writer {
    /// Opens the spool and a lazy pool; returns a handle and the future that runs the writer
    /// until `rx` closes (every publisher gone), the last batch is committed or spooled and,
    /// while the database answers, the spool is replayed.
    /// Does not touch the database: an unreachable one is found (and reported) by the
    /// writer itself, which then spools.
    pub fn start(
        ctx: WriterContext,
        rx: LosslessReceiver,
    ) -> Result<(StoreHandle, impl Future<Output = ()> + Send + 'static), StoreError> {
        let spool_dir = ctx.state_dir.join("spool");
        let (spool, recovery) = Spool::open(&spool_dir, ctx.settings.spool_max_bytes)?;
        if recovery.records > 0 {
            info!(
                dir = %spool_dir.display(),
                batches = recovery.records,
                bytes = recovery.bytes,
                "Spool holds batches from an earlier run; they are replayed once the database answers."
            );
        }
        if recovery.torn_bytes > 0 || recovery.corrupt_records > 0 {
            warn!(
                dir = %spool_dir.display(),
                torn_bytes = recovery.torn_bytes,
                corrupt_records = recovery.corrupt_records,
                "Spool had an incomplete or damaged record (a crash during a write); it was dropped."
            );
        }
        let pool = pg::lazy_pool(&ctx.settings)?;
        ctx.metrics.set_state(StoreState::Starting);
        ctx.metrics.spool_bytes.store(spool.bytes(), std::sync::atomic::Ordering::Relaxed);
        ctx.metrics.spool_batches.store(spool.len(), std::sync::atomic::Ordering::Relaxed);
        let handle = StoreHandle { metrics: ctx.metrics.clone(), pool: pool.clone() };
        let spool_size = SpoolSize { records: spool.len(), bytes: spool.bytes() };
        let actor = Actor {
            ctx,
            pool,
            files: Arc::new(Mutex::new(SpoolFiles { spool, reader: Coalescer::default() })),
            spool_size,
            to_spool: VecDeque::new(),
            replay: Replay::default(),
            set_aside_through: None,
            up: false,
            checked: false,
            known_days: HashSet::new(),
            markets_written: HashMap::new(),
            write_time: WriteTime::default(),
            losses: HashMap::new(),
            loss_alerted: false,
            last_problem: None,
            rejected_bytes: None,
        };
        Ok((handle, actor.run(rx)))
    }
}

/// Where a batch in flight came from.
#[derive(Clone, Copy, Debug)]
enum Origin {
    /// Straight from the bus.
    Live,
    /// Replayed from the spool: the group ending with this record.
    Spool(RecordId),
}

/// The spool and its replay reader, shared with the blocking threads that do the spool's file
/// work (appends and their `fdatasync`, reads, checkpoints), so that none of it stalls the
/// writer's loop. Each operation holds the lock for its duration; the writer runs at most one
/// append, one read and one settle at a time.
struct SpoolFiles {
    spool: Spool,
    reader: Coalescer<Batch>,
}

impl SpoolFiles {
    fn size(&self) -> SpoolSize {
        SpoolSize { records: self.spool.len(), bytes: self.spool.bytes() }
    }
}

/// The spool's size as of the last operation on it.
#[derive(Clone, Copy, Debug, Default)]
struct SpoolSize {
    /// Records not yet consumed (read ahead or not).
    records: u64,
    /// Bytes on disk.
    bytes: u64,
}

/// A finished spool operation.
enum SpoolDone {
    /// A batch was appended, or could not be.
    Appended {
        batch: Arc<Batch>,
        /// The `store_loss` rows riding in the batch.
        losses: HashMap<String, Loss>,
        result: Result<RecordId, SpoolError>,
    },
    /// The next group to replay was read (`None`: every record is out).
    Read(Box<Result<Option<Group<Batch>>, SpoolError>>),
    /// Replayed records were consumed (`consumed`), and the reader rewound if asked.
    Settled { consumed: bool, result: Result<(), SpoolError> },
}

/// Where a group replayed from the spool is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GroupState {
    /// Being written.
    Writing,
    /// Committed (or set aside): consumed once every group before it is.
    Stored,
    /// The write failed: the replay goes back to the oldest unconsumed record.
    Failed,
}

/// A group handed to the database and not consumed yet.
#[derive(Debug)]
struct Replayed {
    /// Its last record.
    last: RecordId,
    records: u64,
    ticks: u64,
    /// Whether it was written (a group of undecodable records only is not).
    written: bool,
    state: GroupState,
}

/// The spool's replay: groups of records read ahead, written (in as many write slots as no
/// live batch needs), and consumed strictly in spool order once stored.
#[derive(Debug, Default)]
struct Replay {
    /// Groups written or being written, oldest first, until consumed.
    groups: VecDeque<Replayed>,
    /// The next group, read and waiting for a write slot.
    ready: Option<Group<Batch>>,
    /// A read is under way.
    reading: bool,
    /// The last read found every record out: none until the spool grows or is rewound.
    exhausted: bool,
    /// A settle (consume, rewind) is under way; `true` when it rewinds.
    settling: Option<bool>,
    /// A group failed: once none of the replay is in flight, consume what was stored before
    /// it and read again from there.
    rewind: bool,
    /// After the rewind, records through this one go one per write (a group was refused).
    one_by_one_through: Option<RecordId>,
}

impl Replay {
    /// Whether to read the next group now.
    fn wants_read(&self, spool: SpoolSize) -> bool {
        spool.records > 0
            && !self.reading
            && self.ready.is_none()
            && !self.exhausted
            && !self.rewind
            && self.settling != Some(true)
    }
}

/// A finished write.
struct Done {
    batch: Batch,
    origin: Origin,
    /// Partition days the write ensured before inserting.
    days: Vec<i64>,
    /// The markets (name indices of the batch) whose sightings it upserted.
    markets: Vec<i32>,
    /// How long the write took.
    took: Duration,
    /// The `store_loss` rows the batch carries, taken from the pending ones.
    losses: HashMap<String, Loss>,
    result: Result<Inserted, StoreError>,
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A successful probe: the database answers and its schema is good.
struct ProbeOk {
    days: Vec<i64>,
    created: u64,
    dropped: Vec<String>,
}

struct Actor {
    ctx: WriterContext,
    pool: PgPool,
    /// The spool, worked on from blocking threads.
    files: Arc<Mutex<SpoolFiles>>,
    /// The spool's size as of the last operation on it.
    spool_size: SpoolSize,
    /// Batches waiting for the spool, oldest first: the batch due while the database is away
    /// (only when no append is under way: meanwhile the next batch keeps filling, so that
    /// what arrives during one sync goes in one record) and live batches whose write failed
    /// (at most one per write slot). The bus pushes back once the batch filling is full.
    to_spool: VecDeque<(Batch, HashMap<String, Loss>)>,
    /// The spool's replay.
    replay: Replay,
    /// The newest spooled record set aside as undecodable, so a re-read does not keep it twice.
    set_aside_through: Option<RecordId>,
    /// The database answered the last probe or write.
    up: bool,
    /// Migrations were applied (or the schema checked) in this process.
    checked: bool,
    /// Days whose partitions exist.
    known_days: HashSet<i64>,
    /// Per market, the first and last sightings (µs) this process has committed to `markets`.
    markets_written: HashMap<String, (i64, i64)>,
    /// How long live writes take: how early a batch must be cut.
    write_time: WriteTime,
    /// Ticks dropped by a full spool, per feed, not yet recorded in the ledger nor riding in
    /// a write in flight.
    losses: HashMap<String, Loss>,
    /// The current loss incident was alerted.
    loss_alerted: bool,
    /// The last probe problem logged, so an outage logs once, not every retry.
    last_problem: Option<String>,
    /// Bytes under `state_dir/rejected`, counted at the first refusal.
    rejected_bytes: Option<u64>,
}

/// How long live writes take, smoothed as TCP smooths round trips (RFC 6298): a mean and a
/// mean deviation. A batch is cut `expected()` before its oldest tick reaches
/// `commit_latency`.
#[derive(Debug, Default)]
struct WriteTime {
    mean_us: f64,
    deviation_us: f64,
    seen: bool,
}

impl WriteTime {
    fn observe(&mut self, took: Duration) {
        let us = took.as_secs_f64() * 1e6;
        if self.seen {
            self.deviation_us = 0.75 * self.deviation_us + 0.25 * (us - self.mean_us).abs();
            self.mean_us = 0.875 * self.mean_us + 0.125 * us;
        } else {
            (self.mean_us, self.deviation_us, self.seen) = (us, us / 2.0, true);
        }
    }

    /// What the next write will most likely take at most: the mean plus twice the deviation.
    fn expected(&self) -> Duration {
        Duration::from_micros((self.mean_us + 2.0 * self.deviation_us) as u64)
    }
}

/// The bytes of the files directly in `dir` (0 when it does not exist).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}

/// Awaits an optional boxed future; pending forever when there is none.
async fn maybe<T>(f: &mut Option<BoxFut<T>>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self, mut rx: LosslessReceiver) {
        let batch_size = self.ctx.settings.batch_size;
        let mut batch = Batch::new();
        // When the batch's first tick arrived.
        let mut opened = Instant::now();
        let mut buf: Vec<Arc<Tick>> = Vec::with_capacity(RECV_CHUNK);
        let mut open = true;
        let slots = WRITES_IN_FLIGHT.min(self.ctx.settings.pool_size as usize).max(1);
        let mut inflight: FuturesUnordered<BoxFut<Done>> = FuturesUnordered::new();
        // Spool work on blocking threads: at most one append, one read and one settle.
        let mut spool_ops: FuturesUnordered<BoxFut<(SpoolDone, Option<SpoolSize>)>> = FuturesUnordered::new();
        let mut appending = false;
        // Try the database straight away.
        let mut probe: Option<BoxFut<Result<ProbeOk, StoreError>>> = Some(self.probe());
        let mut retry_at: Option<Instant> = None;
        let mut maintain_at = Instant::now() + MAINTENANCE_EVERY;
        // Set when the bus closes: until then a stop may go on replaying the spool.
        let mut replay_until: Option<Instant> = None;
        let mut last_write_live = false;

        loop {
            // Liveness (systemd watchdog): a turn is work; see the wait below.
            self.ctx.metrics.writer_beat.working();
            let deadline = opened + self.cut_age();
            let due = !batch.is_empty() && (batch.ticks >= batch_size || !open || Instant::now() >= deadline);
            // At start the first probe is usually about to succeed: let the first batch wait
            // for it (until full) rather than spool it.
            let first_probe = probe.is_some() && !self.checked && self.last_problem.is_none();
            let wait_for_probe = first_probe && open && batch.ticks < batch_size;
            let replaying = replay_until.is_none_or(|until| Instant::now() < until);
            let can_replay = self.up && replaying && !self.replay.rewind;
            // Replayed groups are consumed in spool order as they are stored; after a failed
            // one, the replay starts over from the oldest unconsumed record.
            if let Some(settle) = self.settle() {
                spool_ops.push(settle);
            }
            // Under sustained load a live batch is due whenever a slot frees; the spool gets
            // every other slot so that it drains, holding live data back by one write at most.
            let replay_turn = can_replay && self.replay.ready.is_some() && last_write_live;
            if due && !wait_for_probe {
                if !self.up {
                    // While an append is under way the batch keeps filling: what arrives
                    // during one sync goes to the spool as one record.
                    if !appending && self.to_spool.is_empty() {
                        self.to_spool.push_back((std::mem::take(&mut batch), HashMap::new()));
                    }
                } else if inflight.len() < slots && !replay_turn {
                    let mut live = std::mem::take(&mut batch);
                    let losses = self.attach_losses(&mut live);
                    inflight.push(self.write(live, Origin::Live, losses));
                    last_write_live = true;
                }
                // Otherwise the batch waits for a slot; intake pauses when it is full.
            }
            if can_replay && inflight.len() < slots {
                // Replay in every slot no live batch needs, or on the spool's turn. At
                // shutdown, after the last batch, replay goes on until the spool is empty or
                // the database goes away.
                if let Some(group) = self.replay.ready.take() {
                    last_write_live = false;
                    if let Some(write) = self.replay_write(group) {
                        inflight.push(write);
                    }
                }
            }
            // Read the next group while the one before is written.
            if can_replay && self.replay.wants_read(self.spool_size) {
                self.replay.reading = true;
                spool_ops.push(self.read_group());
            }
            if !appending && let Some((b, losses)) = self.to_spool.pop_front() {
                appending = true;
                spool_ops.push(self.append(b, losses));
            }
            self.update_state();
            if !open
                && batch.is_empty()
                && inflight.is_empty()
                && spool_ops.is_empty()
                && self.to_spool.is_empty()
                && (self.spool_size.records == 0 || !self.up || !replaying)
            {
                break;
            }
            if !self.up && probe.is_none() && retry_at.is_none() {
                retry_at = Some(Instant::now() + self.ctx.settings.retry_interval);
            }

            // Waiting on an empty queue owes nothing; a write, probe or spool operation under
            // way stays owed.
            self.ctx
                .metrics
                .writer_beat
                .waiting(!inflight.is_empty() || probe.is_some() || !spool_ops.is_empty());
            tokio::select! {
                // A write finished: account for it, spool it on failure.
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    self.ctx.metrics.writer_beat.progressed();
                    if let Some(wait) = self.on_done(done) {
                        retry_at = Some(Instant::now() + wait);
                    }
                }
                // A spool operation finished.
                Some((done, size)) = spool_ops.next(), if !spool_ops.is_empty() => {
                    self.ctx.metrics.writer_beat.progressed();
                    if let Some(size) = size {
                        self.spool_size = size;
                        self.sync_spool_metrics();
                    }
                    match done {
                        SpoolDone::Appended { batch, losses, result } => {
                            appending = false;
                            self.on_appended(&batch, &losses, result);
                        }
                        SpoolDone::Read(result) => {
                            if let Some(wait) = self.on_read(*result) {
                                retry_at = Some(Instant::now() + wait);
                            }
                        }
                        SpoolDone::Settled { consumed, result } => self.on_settled(consumed, result),
                    }
                }
                // The database answered a probe, or did not.
                result = maybe(&mut probe) => {
                    self.ctx.metrics.writer_beat.progressed();
                    probe = None;
                    if let Some(wait) = self.on_probe(result) {
                        retry_at = Some(Instant::now() + wait);
                    }
                }
                // Time to try the database again.
                _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() && probe.is_none() => {
                    retry_at = None;
                    probe = Some(self.probe());
                }
                // Ticks (cancel-safe). Paused while a full batch waits for a write slot or the
                // spool: the bus then pushes back, for at most `write_timeout`.
                n = rx.recv_many(&mut buf, RECV_CHUNK.min(batch_size - batch.ticks)), if open && batch.ticks < batch_size => {
                    if n == 0 {
                        open = false;
                        replay_until = Some(Instant::now() + STOP_REPLAY_LIMIT);
                        debug!("Bus closed; writing the last batch.");
                    }
                    if batch.is_empty() && n > 0 {
                        opened = Instant::now();
                    }
                    for tick in buf.drain(..) {
                        batch.push(&tick);
                    }
                    StoreMetrics::add(&self.ctx.metrics.received, n as u64);
                }
                // The batch is old enough to write (not while it waits for the first probe,
                // whose answer wakes the loop instead, nor once due and waiting for a slot or
                // the spool, whose progress wakes it).
                _ = sleep_until(deadline), if !due && !batch.is_empty() && batch.ticks < batch_size && open && !wait_for_probe => {}
                // Partitions ahead and retention, hourly while the database is up.
                _ = sleep_until(maintain_at), if self.up && probe.is_none() => {
                    maintain_at = Instant::now() + MAINTENANCE_EVERY;
                    probe = Some(self.probe());
                }
            }
            self.ctx.metrics.queued.store(batch.ticks as u64, std::sync::atomic::Ordering::Relaxed);
        }
        self.ctx.metrics.set_state(StoreState::Stopped);
        let m = &self.ctx.metrics;
        info!(
            received = StoreMetrics::get(&m.received),
            committed = StoreMetrics::get(&m.committed),
            inserted = StoreMetrics::get(&m.inserted),
            spooled = StoreMetrics::get(&m.spooled),
            lost = StoreMetrics::get(&m.lost),
            rejected = StoreMetrics::get(&m.rejected_ticks),
            spooled_batches = self.spool_size.records,
            "Store writer stopped."
        );
        // A probe may still be trying to connect (the database is away). Closing the pool
        // waits for every connection slot to come back, and that one never would: the probe
        // is no longer polled. Drop it first.
        drop(probe);
        self.pool.close().await;
    }

    /// Connects, migrates or checks the schema once per process, then makes sure partitions
    /// exist from yesterday to `partitions_ahead_days` ahead and applies retention.
    fn probe(&self) -> BoxFut<Result<ProbeOk, StoreError>> {
        let pool = self.pool.clone();
        let settings = self.ctx.settings.clone();
        let checked = self.checked;
        Box::pin(async move {
            let limit = settings.connect_timeout + settings.write_timeout;
            pg::within(limit, async {
                pg::ping(&pool).await?;
                if !checked {
                    if settings.migrate {
                        pg::migrate(&pool).await?;
                    } else {
                        pg::verify_schema(&pool).await?;
                    }
                }
                let today = now_micros().div_euclid(86_400_000_000);
                let days: Vec<i64> =
                    (today - 1..=today + i64::from(settings.partitions_ahead_days)).collect();
                let created = pg::ensure_partitions(&pool, &days).await?;
                let dropped = match settings.retention_days {
                    Some(keep) => pg::drop_expired(&pool, keep).await?,
                    None => Vec::new(),
                };
                Ok(ProbeOk { days, created, dropped })
            })
            .await
        })
    }

    /// Returns how long to wait before the next probe, if one is needed.
    fn on_probe(&mut self, result: Result<ProbeOk, StoreError>) -> Option<Duration> {
        match result {
            Ok(ok) => {
                let m = &self.ctx.metrics;
                StoreMetrics::add(&m.partitions_created, ok.created);
                StoreMetrics::add(&m.partitions_dropped, ok.dropped.len() as u64);
                if !ok.dropped.is_empty() {
                    info!(tables = ?ok.dropped, "Retention dropped old partitions.");
                }
                self.known_days.extend(ok.days);
                self.checked = true;
                if !self.up {
                    info!(spooled_batches = self.spool_size.records, "Database reachable; writing.");
                }
                self.up = true;
                self.last_problem = None;
                None
            }
            Err(e) => {
                self.up = false;
                let problem = e.to_string();
                let first = self.last_problem.as_deref() != Some(problem.as_str());
                if e.is_retriable() {
                    if first {
                        let spool = self.spool_dir();
                        match &e {
                            StoreError::Timeout(_) => warn!(
                                error = %e,
                                spool = %spool.display(),
                                "Store not ready: the database does not answer in time; spooling ticks to disk."
                            ),
                            StoreError::Unreachable(_) => warn!(
                                error = %e,
                                spool = %spool.display(),
                                "Store not ready: the database is unreachable; spooling ticks to disk."
                            ),
                            _ => warn!(
                                error = %e,
                                spool = %spool.display(),
                                "Store not ready: the database refused for now; spooling ticks to disk."
                            ),
                        }
                    }
                    self.last_problem = Some(problem);
                    Some(self.ctx.settings.retry_interval)
                } else {
                    if first {
                        error!(
                            error = %e,
                            spool = %self.spool_dir().display(),
                            "Store not ready: the database cannot be used until this is fixed; spooling ticks to disk."
                        );
                        self.alert("store_schema", &problem);
                    }
                    self.last_problem = Some(problem);
                    Some(SCHEMA_RETRY)
                }
            }
        }
    }

    /// How old a batch's first tick may get before the batch is cut.
    fn cut_age(&self) -> Duration {
        let s = &self.ctx.settings;
        s.batch_age
            .unwrap_or_else(|| s.commit_latency.saturating_sub(self.write_time.expected()).max(MIN_CUT_AGE))
    }

    /// The markets of `batch` whose sightings `markets` does not have yet: not written by this
    /// process, seen earlier than written, or seen [`LAST_SEEN_STEP_US`] after.
    fn markets_to_write(&self, batch: &Batch) -> Vec<i32> {
        let mut markets: Vec<i32> = batch
            .markets
            .iter()
            .filter(|(m, (_, first, last))| match self.markets_written.get(batch.name(**m)) {
                None => true,
                Some(&(written_first, written_last)) => {
                    *first < written_first || *last >= written_last + LAST_SEEN_STEP_US
                }
            })
            .map(|(m, _)| *m)
            .collect();
        markets.sort_unstable();
        markets
    }

    /// Starts writing `batch`; the returned future never fails, it reports.
    fn write(&self, batch: Batch, origin: Origin, losses: HashMap<String, Loss>) -> BoxFut<Done> {
        let pool = self.pool.clone();
        let limit = self.ctx.settings.write_timeout;
        let days: Vec<i64> = batch.days().into_iter().filter(|d| !self.known_days.contains(d)).collect();
        let markets = self.markets_to_write(&batch);
        Box::pin(async move {
            let started = Instant::now();
            let result = pg::within(limit, async {
                if !days.is_empty() {
                    pg::ensure_partitions(&pool, &days).await?;
                }
                pg::write_markets(&pool, &batch, &markets).await
            })
            .await;
            Done { batch, origin, days, markets, took: started.elapsed(), losses, result }
        })
    }

    /// Accounts for a finished write. Returns a probe delay when the database went away.
    fn on_done(&mut self, done: Done) -> Option<Duration> {
        let Done { batch, origin, days, markets, took, losses, result } = done;
        let m = self.ctx.metrics.clone();
        let ticks = batch.ticks as u64;
        match result {
            Ok(inserted) => {
                self.known_days.extend(days);
                for m in markets {
                    if let Some(&(_, first, last)) = batch.markets.get(&m) {
                        let written =
                            self.markets_written.entry(batch.name(m).to_owned()).or_insert((first, last));
                        *written = (written.0.min(first), written.1.max(last));
                    }
                }
                StoreMetrics::add(&m.committed, ticks);
                StoreMetrics::add(&m.inserted, inserted.rows);
                StoreMetrics::add(&m.trades_inserted, inserted.trades);
                StoreMetrics::add(&m.duplicates, ticks.saturating_sub(inserted.rows));
                StoreMetrics::inc(&m.batches);
                m.last_batch_ticks.store(ticks, std::sync::atomic::Ordering::Relaxed);
                self.recorded_losses(&losses);
                match origin {
                    Origin::Live => {
                        let age = now_micros().saturating_sub(batch.oldest_recv_ts).max(0) as u64;
                        if ticks > 0 {
                            m.observe_latency(age);
                        }
                        self.write_time.observe(took);
                    }
                    // Consumed once every group before it is stored (`settle`).
                    Origin::Spool(last) => self.replay_state(last, GroupState::Stored),
                }
                None
            }
            Err(e) if e.is_retriable() => {
                StoreMetrics::inc(&m.retriable_errors);
                if matches!(&e, StoreError::Database { code, .. } if code == "23514") {
                    // A row with no partition: partitions may have been dropped by hand.
                    self.known_days.clear();
                }
                warn!(error = %e, ticks, "Batch write failed; keeping it in the spool and retrying the database.");
                match origin {
                    // The batch's `store_loss` rows ride into the spool with it; if it cannot
                    // be kept, they are pending again.
                    Origin::Live => self.to_spool.push_back((batch, losses)),
                    // Still in the spool: replayed again from the oldest unconsumed record.
                    Origin::Spool(last) => {
                        self.replay_state(last, GroupState::Failed);
                        self.replay.rewind = true;
                    }
                }
                self.up = false;
                Some(self.ctx.settings.retry_interval)
            }
            Err(e) => {
                let records = match origin {
                    Origin::Live => 1,
                    Origin::Spool(last) => {
                        self.replay.groups.iter().find(|g| g.last == last).map_or(1, |g| g.records)
                    }
                };
                match origin {
                    Origin::Spool(last) if records > 1 => {
                        // Merged records: one of them is at fault. They are tried again one
                        // by one, so that only that one is set aside.
                        warn!(error = %e, ticks, records, "A replayed batch was refused; replaying its spool records one by one.");
                        self.replay_state(last, GroupState::Failed);
                        self.replay.rewind = true;
                        self.replay.one_by_one_through = Some(last);
                    }
                    Origin::Spool(last) => {
                        self.reject(&batch, &e.to_string());
                        self.replay_state(last, GroupState::Stored);
                    }
                    // The batch's `store_loss` rows are kept with it under `rejected`.
                    Origin::Live => self.reject(&batch, &e.to_string()),
                }
                None
            }
        }
    }

    /// Runs `work` on the spool on a blocking thread; returns its result and the spool's size
    /// after it (`None` when the work panicked, which is reported as an I/O error).
    fn on_spool<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut SpoolFiles) -> Result<T, SpoolError> + Send + 'static,
    ) -> impl Future<Output = (Result<T, SpoolError>, Option<SpoolSize>)> + Send + 'static {
        let files = self.files.clone();
        let dir = self.spool_dir();
        async move {
            let joined = tokio::task::spawn_blocking(move || {
                let mut files = files.lock().unwrap_or_else(PoisonError::into_inner);
                let result = work(&mut files);
                (result, files.size())
            })
            .await;
            match joined {
                Ok((result, size)) => (result, Some(size)),
                Err(e) => {
                    let source = std::io::Error::other(format!("the spool operation failed: {e}"));
                    (Err(SpoolError::Io { path: dir, source }), None)
                }
            }
        }
    }

    /// Appends a batch to the spool as one record, synced before it counts as spooled.
    fn append(&self, batch: Batch, losses: HashMap<String, Loss>) -> BoxFut<(SpoolDone, Option<SpoolSize>)> {
        let batch = Arc::new(batch);
        let record = batch.clone();
        // Encoding is part of the work taken off the loop.
        let work = self.on_spool(move |files| files.spool.append(&record.encode()));
        Box::pin(async move {
            let (result, size) = work.await;
            (SpoolDone::Appended { batch, losses, result }, size)
        })
    }

    /// An append finished: the batch is spooled, or its ticks are counted as lost (spool full,
    /// disk error) with an alert.
    fn on_appended(
        &mut self,
        batch: &Batch,
        losses: &HashMap<String, Loss>,
        result: Result<RecordId, SpoolError>,
    ) {
        let ticks = batch.ticks as u64;
        match result {
            Ok(_) => {
                StoreMetrics::add(&self.ctx.metrics.spooled, ticks);
                // A new record to replay.
                self.replay.exhausted = false;
            }
            Err(e) => {
                Loss::add_batch(&mut self.losses, batch);
                self.pend_losses(losses);
                StoreMetrics::add(&self.ctx.metrics.lost, ticks);
                if !self.loss_alerted {
                    self.loss_alerted = true;
                    let message = format!(
                        "ticks are being dropped: the spool cannot take more ({e}); the loss is \
                         recorded in feed_events (store_loss) when the database is back"
                    );
                    error!(ticks, spool = %self.spool_dir().display(), "Store: {message}");
                    self.alert("spool_full", &message);
                }
            }
        }
    }

    /// Reads the next group to replay: consecutive records merged up to `batch_size` ticks.
    fn read_group(&self) -> BoxFut<(SpoolDone, Option<SpoolSize>)> {
        let max = self.ctx.settings.batch_size;
        let work = self.on_spool(move |files| {
            let SpoolFiles { spool, reader } = files;
            reader.next_group(spool, max)
        });
        Box::pin(async move {
            let (result, size) = work.await;
            (SpoolDone::Read(Box::new(result)), size)
        })
    }

    /// A read finished. Returns a probe delay when the spool cannot be read.
    fn on_read(&mut self, result: Result<Option<Group<Batch>>, SpoolError>) -> Option<Duration> {
        self.replay.reading = false;
        match result {
            Ok(Some(group)) => {
                self.replay.ready = Some(group);
                None
            }
            Ok(None) => {
                self.replay.exhausted = true;
                None
            }
            Err(e) => {
                error!(error = %e, "Spool cannot be read; replay paused.");
                self.alert("spool_unreadable", &format!("the spool cannot be read: {e}"));
                self.replay.rewind = true;
                self.up = false;
                Some(SCHEMA_RETRY)
            }
        }
    }

    /// Starts writing a group read from the spool; sets its undecodable records aside.
    fn replay_write(&mut self, group: Group<Batch>) -> Option<BoxFut<Done>> {
        let Group { last, records, batch, undecodable } = group;
        for bad in undecodable {
            if self.set_aside_through.is_none_or(|through| bad.id > through) {
                self.set_aside_through = Some(bad.id);
                self.reject_spooled(&bad);
            }
        }
        let ticks = batch.as_ref().map_or(0, |b| b.ticks as u64);
        let (written, state) = match batch {
            Some(_) => (true, GroupState::Writing),
            None => (false, GroupState::Stored),
        };
        self.replay.groups.push_back(Replayed { last, records, ticks, written, state });
        batch.map(|b| self.write(b, Origin::Spool(last), HashMap::new()))
    }

    /// Sets the state of the replayed group ending with `last`.
    fn replay_state(&mut self, last: RecordId, state: GroupState) {
        if let Some(group) = self.replay.groups.iter_mut().find(|g| g.last == last) {
            group.state = state;
        }
    }

    /// Consumes the replayed groups stored in spool order and, after a failed group once none of
    /// the replay is in flight, rewinds the reader to the oldest unconsumed record. `None` when
    /// there is nothing to do or a settle is already under way.
    fn settle(&mut self) -> Option<BoxFut<(SpoolDone, Option<SpoolSize>)>> {
        let r = &mut self.replay;
        if r.settling.is_some() {
            return None;
        }
        let stored = r.groups.iter().take_while(|g| g.state == GroupState::Stored).count();
        let rewind = r.rewind && !r.reading && r.groups.iter().all(|g| g.state != GroupState::Writing);
        if stored == 0 && !rewind {
            return None;
        }
        let m = &self.ctx.metrics;
        let mut through = None;
        for g in r.groups.drain(..stored) {
            StoreMetrics::add(&m.replayed, g.ticks);
            StoreMetrics::add(&m.replayed_records, g.records);
            StoreMetrics::add(&m.replayed_batches, u64::from(g.written));
            through = Some(g.last);
        }
        let one_by_one = if rewind {
            // Groups after the failed one may have been stored: they are written again,
            // which the keys make harmless.
            r.groups.clear();
            r.ready = None;
            (r.rewind, r.exhausted) = (false, false);
            r.one_by_one_through.take()
        } else {
            None
        };
        r.settling = Some(rewind);
        let work = self.on_spool(move |files| {
            let consumed = through.map_or(Ok(()), |last| files.spool.consume(last));
            if rewind {
                files.reader.rewind(&mut files.spool);
                if let Some(last) = one_by_one {
                    files.reader.one_by_one_through(last);
                }
            }
            consumed
        });
        let consumed = through.is_some();
        Some(Box::pin(async move {
            let (result, size) = work.await;
            (SpoolDone::Settled { consumed, result }, size)
        }))
    }

    /// A settle finished.
    fn on_settled(&mut self, consumed: bool, result: Result<(), SpoolError>) {
        self.replay.settling = None;
        if consumed {
            // With nothing read ahead any more, a read starts at the oldest record again and
            // skips what was found damaged past the last record read, emptying the spool.
            self.replay.exhausted = false;
        }
        if let Err(e) = result {
            error!(error = %e, "Spool progress could not be saved; records may be replayed again (harmless).");
        }
        if consumed && self.spool_size.records == 0 {
            info!("Spool replayed; writing directly.");
        }
    }

    /// Moves the pending `store_loss` rows into a live batch and returns them; the write
    /// that carries them accounts for them.
    fn attach_losses(&mut self, batch: &mut Batch) -> HashMap<String, Loss> {
        let losses = std::mem::take(&mut self.losses);
        if !losses.is_empty() {
            batch.push_losses(&losses);
        }
        losses
    }

    /// `store_loss` rows that went out with a batch that could not be kept: pending again.
    fn pend_losses(&mut self, losses: &HashMap<String, Loss>) {
        for (feed, loss) in losses {
            Loss::merge(&mut self.losses, feed, loss);
        }
    }

    /// A committed batch carried these `store_loss` rows. Once nothing is pending, the next
    /// loss is a new incident with its own alert.
    fn recorded_losses(&mut self, losses: &HashMap<String, Loss>) {
        if losses.is_empty() {
            return;
        }
        let ticks: u64 = losses.values().map(|l| l.ticks).sum();
        info!(ticks, "Store loss recorded in feed_events.");
        if self.losses.is_empty() {
            self.loss_alerted = false;
        }
    }

    /// Keeps a batch the database refused under `state_dir/rejected`, with an alert.
    /// Past `spool_max_bytes` of refused batches on disk, the batch is counted as lost and
    /// recorded as a `store_loss` instead.
    fn reject(&mut self, batch: &Batch, why: &str) {
        let m = self.ctx.metrics.clone();
        StoreMetrics::inc(&m.rejected_batches);
        StoreMetrics::add(&m.rejected_ticks, batch.ticks as u64);
        let kept = match self.save_rejected(&batch.encode()) {
            Some(path) => format!("kept in {path}"),
            None => {
                Loss::add_batch(&mut self.losses, batch);
                StoreMetrics::add(&m.lost, batch.ticks as u64);
                "not kept (see the log line above); recorded as a store_loss in feed_events".to_owned()
            }
        };
        let message = format!("the database refused a batch of {} ticks: {why}; {kept}", batch.ticks);
        error!(ticks = batch.ticks, "Store: {message}");
        self.alert("batch_rejected", &message);
    }

    /// A spooled record that no longer decodes: kept aside (it is consumed with its group).
    fn reject_spooled(&mut self, bad: &Undecodable) {
        StoreMetrics::inc(&self.ctx.metrics.rejected_batches);
        let kept = match self.save_rejected(&bad.record) {
            Some(path) => format!("kept in {path}"),
            None => "not kept (see the log line above)".to_owned(),
        };
        let message = format!("a spooled batch cannot be decoded ({}); {kept}", bad.error);
        error!(record = %bad.id, "Store: {message}");
        self.alert("batch_rejected", &message);
    }

    /// Writes a refused batch under `state_dir/rejected`; returns its path, or `None` when it
    /// could not be written or the directory already holds `spool_max_bytes`.
    fn save_rejected(&mut self, bytes: &[u8]) -> Option<String> {
        let dir = self.ctx.state_dir.join("rejected");
        let held = *self.rejected_bytes.get_or_insert_with(|| dir_bytes(&dir));
        let limit = self.ctx.settings.spool_max_bytes;
        if held.saturating_add(bytes.len() as u64) > limit {
            error!(
                dir = %dir.display(),
                bytes = held,
                limit,
                "Refused batch not saved: the rejected directory is full (spool_max_bytes); inspect and remove its files."
            );
            return None;
        }
        let path = dir.join(format!("{}.json", now_micros()));
        match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, bytes)) {
            Ok(()) => {
                self.rejected_bytes = Some(held + bytes.len() as u64);
                Some(path.display().to_string())
            }
            Err(e) => {
                error!(path = %path.display(), error = %e, "Refused batch could not be saved either.");
                None
            }
        }
    }

    fn alert(&self, kind: &str, message: &str) {
        StoreMetrics::inc(&self.ctx.metrics.alerts);
        error!(alert = kind, "Store alert: {message}");
        self.ctx.alerter.notify(&Name::from("store"), kind, message);
    }

    fn spool_dir(&self) -> PathBuf {
        self.ctx.state_dir.join("spool")
    }

    fn sync_spool_metrics(&self) {
        let m = &self.ctx.metrics;
        m.spool_bytes.store(self.spool_size.bytes, std::sync::atomic::Ordering::Relaxed);
        m.spool_batches.store(self.spool_size.records, std::sync::atomic::Ordering::Relaxed);
    }

    fn update_state(&self) {
        let state = match (self.up, self.spool_size.records == 0, self.checked) {
            (false, _, false) if self.last_problem.is_none() => StoreState::Starting,
            (false, _, _) => StoreState::Spooling,
            (true, true, _) => StoreState::Ready,
            (true, false, _) => StoreState::Replaying,
        };
        let before = self.ctx.metrics.state();
        if before != state {
            info!(from = before.as_str(), to = state.as_str(), "Store state changed.");
            self.ctx.metrics.set_state(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::bus::BusBuilder;
    use crate::config::{BusSettings, DatabaseUrl};
    use crate::tick::{FeedEvent, TickKind};

    fn tick(n: i64) -> Arc<Tick> {
        Arc::new(Tick {
            feed: "sim".into(),
            conn: 0,
            market: "".into(),
            exch_ts: None,
            recv_ts: 1_763_640_000_000_000 + n,
            kind: TickKind::Feed(FeedEvent::Connecting { attempt: 1 }),
        })
    }

    /// Yields until `cond` holds, letting paused time run forward 1 ms per turn.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test(start_paused = true)]
    async fn batches_are_cut_by_count_at_once_and_by_age_after_batch_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Nothing listens on port 1: the database is unreachable, so batches go to the spool,
        // where they can be counted.
        let settings = StoreSettings {
            url: DatabaseUrl::new("postgres://tickd@127.0.0.1:1/tickd"),
            batch_size: 100,
            batch_age: Some(Duration::from_millis(50)),
            retry_interval: Duration::from_secs(3600),
            ..StoreSettings::default()
        };
        let metrics = Arc::new(StoreMetrics::default());
        let ctx = WriterContext {
            settings,
            state_dir: dir.path().to_owned(),
            alerter: Alerter::new(None),
            metrics: metrics.clone(),
        };
        let mut builder = BusBuilder::new(&BusSettings::default());
        let (_handle, run) = Writer::start(ctx, builder.lossless()).expect("writer");
        let bus = builder.build();
        let writer = tokio::spawn(run);
        until("the failed first probe", || metrics.state() == StoreState::Spooling).await;
        let spooled = || metrics.spooled.load(Ordering::Relaxed);

        for n in 0..250 {
            bus.publish(tick(n)).await;
        }
        until("two full batches", || spooled() == 200).await;
        let full_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(45)).await;
        assert_eq!(spooled(), 200, "the rest waits for batch_age");
        until("the aged batch", || spooled() == 250).await;
        let waited = full_at.elapsed();

        assert!(waited >= Duration::from_millis(45) && waited <= Duration::from_millis(55), "{waited:?}");
        assert_eq!(metrics.spool_batches.load(Ordering::Relaxed), 3);
        drop(bus);
        writer.await.expect("the writer ends when the bus closes");
        assert_eq!(metrics.state(), StoreState::Stopped);
        assert_eq!(metrics.received.load(Ordering::Relaxed), 250);
    }

    #[test]
    fn a_batch_is_cut_early_enough_for_what_writes_have_taken() {
        let mut took = WriteTime::default();
        assert_eq!(took.expected(), Duration::ZERO, "nothing timed yet: the whole budget is waiting");
        for _ in 0..50 {
            took.observe(Duration::from_millis(20));
        }
        let steady = took.expected();
        assert!(steady >= Duration::from_millis(20) && steady < Duration::from_millis(21), "{steady:?}");
        took.observe(Duration::from_millis(60));
        assert!(took.expected() > Duration::from_millis(40), "one slow write widens the margin at once");
    }

    #[tokio::test(start_paused = true)]
    async fn without_batch_age_a_batch_waits_the_commit_latency_when_no_write_was_timed() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Unreachable database: batches go to the spool, where they can be counted.
        let settings = StoreSettings {
            url: DatabaseUrl::new("postgres://tickd@127.0.0.1:1/tickd"),
            commit_latency: Duration::from_millis(40),
            batch_age: None,
            retry_interval: Duration::from_secs(3600),
            ..StoreSettings::default()
        };
        let metrics = Arc::new(StoreMetrics::default());
        let ctx = WriterContext {
            settings,
            state_dir: dir.path().to_owned(),
            alerter: Alerter::new(None),
            metrics: metrics.clone(),
        };
        let mut builder = BusBuilder::new(&BusSettings::default());
        let (_handle, run) = Writer::start(ctx, builder.lossless()).expect("writer");
        let bus = builder.build();
        let writer = tokio::spawn(run);
        until("the failed first probe", || metrics.state() == StoreState::Spooling).await;
        let spooled = || metrics.spooled.load(Ordering::Relaxed);

        for n in 0..10 {
            bus.publish(tick(n)).await;
        }
        let published_at = Instant::now();
        until("the batch cut by age", || spooled() == 10).await;
        let waited = published_at.elapsed();

        assert!(waited >= Duration::from_millis(39) && waited <= Duration::from_millis(45), "{waited:?}");
        drop(bus);
        writer.await.expect("the writer ends when the bus closes");
    }
}
