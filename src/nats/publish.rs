//! The NATS publisher: a lossless consumer of the bus that publishes every tick to the stream.
//!
//! Each tick goes to `<prefix>.<feed>.<kind>.<market>` ([`super::subject`]) with its
//! `Nats-Msg-Id`, the payload being its live frame ([`super::payload`]). Acknowledgements are
//! awaited beside the publishing, up to `max_in_flight` at once; with that many outstanding the
//! publisher stops taking ticks (the bus pushes back) until one is answered, for at most
//! [`REQUEST_TIMEOUT`], after which the unanswered publish counts as failed.
//!
//! While NATS is unreachable or slow (not connected, a publish refused or unanswered), ticks go
//! to a disk spool: the store's [`Spool`], opened in `state_dir/nats-spool` and bounded by
//! `spool_max_bytes`. Each record holds the ticks that arrived during one append (group
//! commit), one line each: subject, message id and payload, tab-separated (none of them can
//! hold a tab or a line break). Every [`RETRY_EVERY`] the publisher tries the servers again and,
//! once connected, replays the spool oldest record first, consecutive records merged by the
//! store's [`Coalescer`] into groups of up to `max_in_flight` ticks, each group consumed once
//! every publish in it is acknowledged. New ticks keep going to the spool until it is empty, so the
//! stream gets them in the order they were spooled; then they go straight to NATS again. A
//! record replayed twice (the process stopped between the acknowledgements and the consume)
//! is dropped by the stream's duplicate window, each message carrying its id.
//!
//! While spooling, the `nats_unreachable` alert is open. A full spool drops the ticks it cannot
//! take, counts them per feed, sends the one-shot `nats_loss` alert and writes a `nats_loss`
//! row to the gap ledger (`feed_events`) when the store's database answers.
//!
//! At stop (the bus closed) the publisher waits for the acknowledgements outstanding, spools
//! what is not acknowledged and returns; the spool is replayed by the next run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use async_nats::{Client, connection::State};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::connect::{self, REQUEST_TIMEOUT, StreamError};
use super::{NatsMetrics, payload, subject};
use crate::app::topology::{Sink, StartContext};
use crate::bus::{BusBuilder, LosslessReceiver};
use crate::config::NatsSettings;
use crate::store::batch::{Batch, Loss};
use crate::store::pg;
use crate::store::spool::{Coalesce, Coalescer, Group, Spool, SpoolError};
use crate::telemetry::alerts::{Alerter, NATS, NATS_LOSS, NATS_UNREACHABLE};
use crate::tick::{Tick, TickKind};

/// How often the publisher tries NATS again while it spools, and writes pending loss rows.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Ticks taken from the bus per receive.
const RECV_CHUNK: usize = 1024;

/// Ticks waiting for the spool append under way; past this the publisher stops taking ticks
/// until the append is done (the bus pushes back), as the store does.
const PENDING_LIMIT: usize = 16 * 1024;

/// How long a database write of loss rows may take.
const LEDGER_TIMEOUT: Duration = Duration::from_secs(10);

/// The spool's directory under `state_dir`.
pub const SPOOL_DIR: &str = "nats-spool";

/// One tick ready to publish.
#[derive(Clone, Debug)]
struct Line {
    subject: String,
    id: String,
    payload: String,
    /// For loss accounting: the feed, whether it is a trade, when it was received.
    feed: String,
    trade: bool,
    recv_ts: i64,
}

impl Line {
    fn of(tick: &Tick, prefix: &str, instance: &str) -> Line {
        Line {
            subject: subject::subject(prefix, tick),
            id: subject::message_id(instance, tick),
            payload: payload::encode(tick),
            feed: tick.feed.to_string(),
            trade: matches!(tick.kind, TickKind::Trade(_)),
            recv_ts: tick.recv_ts,
        }
    }

    fn message(&self) -> PublishMessage {
        PublishMessage::build().payload(Bytes::from(self.payload.clone())).message_id(&self.id)
    }
}

/// A spool record: the lines, one per tick.
fn encode_record(lines: &[Line]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(lines.iter().map(|l| l.subject.len() + l.id.len() + l.payload.len() + 3).sum());
    for l in lines {
        out.extend_from_slice(l.subject.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(l.id.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(l.payload.as_bytes());
        out.push(b'\n');
    }
    out
}

/// A spool record read back: (subject, message id, payload) per tick; `None` when it is not
/// one this publisher wrote.
fn decode_record(record: &[u8]) -> Option<Vec<(String, String, Bytes)>> {
    let text = std::str::from_utf8(record).ok()?;
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(3, '\t');
            let (s, id, p) = (parts.next()?, parts.next()?, parts.next()?);
            Some((s.to_owned(), id.to_owned(), Bytes::copy_from_slice(p.as_bytes())))
        })
        .collect()
}

/// The publisher as a sink of the daemon's topology.
pub struct NatsSink {
    settings: NatsSettings,
    state_dir: PathBuf,
    metrics: Arc<NatsMetrics>,
    client: Client,
    /// Whether the stream was found (or made) as configured at build.
    stream_ready: bool,
    /// From `attach` until `start` spawns it.
    parts: Option<(LosslessReceiver, Spool, Alerter)>,
    task: Option<JoinHandle<()>>,
}

impl NatsSink {
    /// Connects to the servers of `[nats]` (in the background) and, if they answer within
    /// [`REQUEST_TIMEOUT`], creates or checks the stream: a stream there with other settings
    /// stops the start with an error naming them. Servers that do not answer do not stop it:
    /// the publisher spools and checks the stream once they do.
    pub async fn build(settings: &NatsSettings, state_dir: &Path) -> anyhow::Result<NatsSink> {
        let client = connect::connect(settings, "tickd run").await?;
        let connected = wait_connected(&client, REQUEST_TIMEOUT).await;
        let mut stream_ready = false;
        if connected {
            match connect::ensure_stream(&connect::jetstream(client.clone(), 1), settings).await {
                Ok(()) => stream_ready = true,
                Err(e @ StreamError::Mismatch { .. }) => return Err(e.into()),
                Err(e) => warn!(error = %e, "NATS stream not checked yet; ticks are spooled meanwhile."),
            }
        } else {
            warn!(
                servers = settings.url.join(", "),
                "NATS unreachable at start; ticks are spooled for it meanwhile."
            );
        }
        Ok(NatsSink {
            settings: settings.clone(),
            state_dir: state_dir.to_owned(),
            metrics: Arc::new(NatsMetrics::default()),
            client,
            stream_ready,
            parts: None,
            task: None,
        })
    }

    /// The publisher's counters.
    pub fn metrics(&self) -> Arc<NatsMetrics> {
        self.metrics.clone()
    }
}

/// Waits up to `limit` for `client` to connect; whether it did.
async fn wait_connected(client: &Client, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while client.connection_state() != State::Connected {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn attach(&mut self, bus: &mut BusBuilder, alerter: &Alerter) -> anyhow::Result<()> {
        let dir = self.state_dir.join(SPOOL_DIR);
        let (spool, recovery) = Spool::open(&dir, self.settings.spool_max_bytes)
            .map_err(|e| anyhow::anyhow!("opening the NATS spool {}: {e}", dir.display()))?;
        if recovery.records > 0 {
            info!(
                dir = %dir.display(),
                records = recovery.records,
                bytes = recovery.bytes,
                "NATS spool holds ticks from an earlier run; they are published first."
            );
        }
        NatsMetrics::set(&self.metrics.spool_bytes, spool.bytes());
        self.parts = Some((bus.lossless(), spool, alerter.clone()));
        info!(stream = %self.settings.stream, prefix = %self.settings.subject_prefix, "Publishing ticks to NATS.");
        Ok(())
    }

    fn start(&mut self, ctx: &StartContext<'_>) -> anyhow::Result<()> {
        if let Some((rx, spool, alerter)) = self.parts.take() {
            let publisher = Publisher {
                // The publisher keeps its own window of `max_in_flight`, and the replay one of
                // its own; the context's may not be the narrower, or a publish would wait for a
                // permit that only an acknowledgement not yet polled can free.
                js: connect::jetstream(self.client.clone(), self.settings.max_in_flight.saturating_mul(2)),
                client: self.client.clone(),
                instance: self.settings.instance_name(),
                settings: self.settings.clone(),
                metrics: self.metrics.clone(),
                alerter,
                spool: Arc::new(Mutex::new(spool)),
                pool: ctx.pool.clone(),
                stream_ready: self.stream_ready,
                losses: HashMap::new(),
                loss_alerted: false,
            };
            self.task = Some(tokio::spawn(publisher.run(rx)));
        }
        Ok(())
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(task) = self.task
                && let Err(e) = task.await
            {
                error!(error = %e, "NATS publisher ended abnormally.");
            }
            // Whatever was sent is flushed before the connection goes.
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, self.client.flush()).await;
        })
    }
}

/// A spool append's ticks and how it went.
type Appended = (Vec<Line>, Result<(), SpoolError>);

/// What a publish came to.
type Acked = (Line, Result<jetstream::publish::PublishAck, String>);

/// How a replay of the spool ended.
enum Replayed {
    /// Every record was published and consumed.
    Drained,
    /// A publish failed; the records not consumed are replayed later.
    Failed(String),
}

struct Publisher {
    js: jetstream::Context,
    client: Client,
    instance: String,
    settings: NatsSettings,
    metrics: Arc<NatsMetrics>,
    alerter: Alerter,
    spool: Arc<Mutex<Spool>>,
    pool: Option<PgPool>,
    stream_ready: bool,
    /// Ticks a full spool could not take, per feed, until their `nats_loss` rows are written.
    losses: HashMap<String, Loss>,
    /// Whether `nats_loss` was sent for the current run of a full spool.
    loss_alerted: bool,
}

impl Publisher {
    async fn run(mut self, mut rx: LosslessReceiver) {
        let mut spooling = !self.stream_ready || !lock(&self.spool).is_empty();
        if spooling {
            self.enter_spooling("the stream is not checked yet or the spool holds ticks");
        }
        let mut in_flight: FuturesUnordered<BoxFuture<'static, Acked>> = FuturesUnordered::new();
        let mut pending: Vec<Line> = Vec::new();
        let mut append: Option<JoinHandle<Appended>> = None;
        let mut replay: Option<JoinHandle<Replayed>> = None;
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = Vec::with_capacity(RECV_CHUNK);
        let mut closed = false;
        // The spool was found empty once while ticks were still being spooled: take no more
        // until the last of them are spooled and replayed, so that none goes out ahead of an
        // older one. Bounded by one append and one replay of a record.
        let mut handover = false;
        let max_in_flight = self.settings.max_in_flight;
        loop {
            NatsMetrics::set(&self.metrics.in_flight, in_flight.len() as u64);
            NatsMetrics::set(&self.metrics.spooling, u64::from(spooling));
            if closed && in_flight.is_empty() && append.is_none() && pending.is_empty() {
                break;
            }
            // Never more than the window in flight, so a publish never waits for a permit.
            let take = if spooling {
                RECV_CHUNK
            } else {
                RECV_CHUNK.min(max_in_flight.saturating_sub(in_flight.len())).max(1)
            };
            let room = if spooling {
                !handover && pending.len() < PENDING_LIMIT
            } else {
                in_flight.len() < max_in_flight
            };
            tokio::select! {
                biased;
                Some((line, result)) = in_flight.next(), if !in_flight.is_empty() => match result {
                    Ok(ack) => self.acked(&ack),
                    Err(e) => {
                        NatsMetrics::add(&self.metrics.failed, 1);
                        if !spooling {
                            warn!(error = %e, "A publish to NATS failed; spooling ticks until it answers.");
                            spooling = true;
                            self.enter_spooling(&format!("a publish failed: {e}"));
                        }
                        pending.push(line);
                    }
                },
                joined = async { append.as_mut().expect("guarded").await }, if append.is_some() => {
                    append = None;
                    match joined {
                        Ok((lines, result)) => self.appended(lines, result),
                        Err(e) => error!(error = %e, "A NATS spool append ended abnormally."),
                    }
                }
                outcome = async { replay.as_mut().expect("guarded").await }, if replay.is_some() => {
                    replay = None;
                    match outcome {
                        Ok(Replayed::Drained) => {
                            if pending.is_empty() && append.is_none() && lock(&self.spool).is_empty() {
                                spooling = false;
                                handover = false;
                                info!("NATS spool replayed; publishing directly again.");
                                self.alerter.close(NATS, NATS_UNREACHABLE, "NATS answers and the spool is replayed");
                            } else {
                                handover = true;
                            }
                        }
                        Ok(Replayed::Failed(e)) => {
                            handover = false;
                            warn!(error = %e, "Replaying the NATS spool failed; trying again later.");
                        }
                        Err(e) => {
                            handover = false;
                            error!(error = %e, "NATS spool replay ended abnormally.");
                        }
                    }
                }
                n = rx.recv_many(&mut buf, take), if !closed && room => {
                    if n == 0 {
                        closed = true;
                    }
                    NatsMetrics::add(&self.metrics.received, n as u64);
                    for tick in buf.drain(..) {
                        let line = Line::of(&tick, &self.settings.subject_prefix, &self.instance);
                        if spooling {
                            pending.push(line);
                            continue;
                        }
                        match self.publish(&line).await {
                            Ok(ack) => in_flight.push(async move {
                                let result = ack.await.map_err(|e| e.to_string());
                                (line, result)
                            }.boxed()),
                            Err(e) => {
                                NatsMetrics::add(&self.metrics.failed, 1);
                                warn!(error = %e, "Publishing to NATS failed; spooling ticks until it answers.");
                                spooling = true;
                                self.enter_spooling(&e);
                                pending.push(line);
                            }
                        }
                    }
                }
                _ = retry.tick() => {
                    let connected = self.client.connection_state() == State::Connected;
                    NatsMetrics::set(&self.metrics.connected, u64::from(connected));
                    self.write_losses().await;
                    if spooling && replay.is_none() && connected && !closed && self.check_stream().await {
                        replay = Some(tokio::spawn(replay_spool(self.js.clone(), self.spool.clone(), self.metrics.clone(), self.settings.max_in_flight)));
                    }
                }
            }
            if append.is_none() && !pending.is_empty() {
                let lines = std::mem::take(&mut pending);
                let spool = self.spool.clone();
                append = Some(tokio::task::spawn_blocking(move || {
                    let result = lock(&spool).append(&encode_record(&lines)).map(|_| ());
                    (lines, result)
                }));
            }
            if handover && append.is_none() && pending.is_empty() && replay.is_none() {
                replay = Some(tokio::spawn(replay_spool(
                    self.js.clone(),
                    self.spool.clone(),
                    self.metrics.clone(),
                    self.settings.max_in_flight,
                )));
            }
        }
        if let Some(replay) = replay {
            replay.abort();
        }
        self.write_losses().await;
        NatsMetrics::set(&self.metrics.in_flight, 0);
        let left = lock(&self.spool).len();
        if left > 0 {
            info!(records = left, "NATS spool keeps ticks for the next run.");
        }
    }

    /// Sends one publish; the future answers with its acknowledgement.
    async fn publish(&self, line: &Line) -> Result<jetstream::context::PublishAckFuture, String> {
        if self.client.connection_state() != State::Connected {
            return Err("not connected to NATS".into());
        }
        NatsMetrics::add(&self.metrics.published, 1);
        self.js.send_publish(line.subject.clone(), line.message()).await.map_err(|e| match e.kind() {
            PublishErrorKind::TimedOut => format!("NATS did not take the publish within {REQUEST_TIMEOUT:?}"),
            _ => e.to_string(),
        })
    }

    fn acked(&self, ack: &jetstream::publish::PublishAck) {
        NatsMetrics::add(&self.metrics.acked, 1);
        if ack.duplicate {
            NatsMetrics::add(&self.metrics.duplicates, 1);
        }
    }

    fn enter_spooling(&self, why: &str) {
        self.alerter.open(
            NATS,
            NATS_UNREACHABLE,
            &format!("ticks are spooled for NATS ({}): {why}", self.settings.url.join(", ")),
        );
    }

    /// Whether the stream is there as configured (checked once per connection's first use).
    async fn check_stream(&mut self) -> bool {
        if !self.stream_ready {
            match connect::ensure_stream(&self.js, &self.settings).await {
                Ok(()) => self.stream_ready = true,
                Err(e) => {
                    warn!(error = %e, "NATS stream cannot be used yet; ticks stay spooled.");
                    if matches!(e, StreamError::Mismatch { .. }) {
                        // The open incident says why, once.
                        self.alerter.close(NATS, NATS_UNREACHABLE, "the stream needs a person");
                        self.alerter.open(NATS, NATS_UNREACHABLE, &e.to_string());
                    }
                }
            }
        }
        self.stream_ready
    }

    fn appended(&mut self, lines: Vec<Line>, result: Result<(), SpoolError>) {
        NatsMetrics::set(&self.metrics.spool_bytes, lock(&self.spool).bytes());
        match result {
            Ok(()) => {
                NatsMetrics::add(&self.metrics.spooled, lines.len() as u64);
                self.loss_alerted = false;
            }
            Err(e) => {
                let n = lines.len() as u64;
                NatsMetrics::add(&self.metrics.lost, n);
                let mut by_feed: HashMap<&str, Loss> = HashMap::new();
                for l in &lines {
                    let loss = by_feed.entry(&l.feed).or_insert(Loss {
                        from_us: l.recv_ts,
                        to_us: l.recv_ts,
                        ..Loss::default()
                    });
                    loss.ticks += 1;
                    loss.trades += u64::from(l.trade);
                    loss.from_us = loss.from_us.min(l.recv_ts);
                    loss.to_us = loss.to_us.max(l.recv_ts);
                }
                for (feed, loss) in by_feed {
                    Loss::merge(&mut self.losses, feed, &loss);
                }
                error!(error = %e, ticks = n, "NATS spool cannot take ticks; they are not published (recorded as nats_loss).");
                if !self.loss_alerted {
                    self.loss_alerted = true;
                    self.alerter.notify(
                        &NATS.into(),
                        NATS_LOSS,
                        &format!(
                            "NATS spool full ({e}): ticks are not published; see nats_loss in feed_events"
                        ),
                    );
                }
            }
        }
    }

    /// Writes the pending `nats_loss` rows to the gap ledger, when there is a database.
    async fn write_losses(&mut self) {
        if self.losses.is_empty() {
            return;
        }
        let Some(pool) = &self.pool else {
            // No ledger to write to: the log line and the counter are the record.
            self.losses.clear();
            return;
        };
        let mut batch = Batch::new();
        batch.push_losses_as(NATS_LOSS, "NATS spool full", &self.losses);
        let result = pg::within(LEDGER_TIMEOUT, async {
            pg::ensure_partitions(pool, &batch.days()).await?;
            pg::write(pool, &batch).await
        })
        .await;
        match result {
            Ok(_) => self.losses.clear(),
            Err(e) => warn!(error = %e, "nats_loss rows not written yet; trying again."),
        }
    }
}

/// Spooled ticks read back for a replay: (subject, message id, payload) each, in order.
#[derive(Debug)]
struct Spooled(Vec<(String, String, Bytes)>);

impl Coalesce for Spooled {
    type Error = &'static str;

    fn decode(record: &[u8]) -> Result<Spooled, Self::Error> {
        decode_record(record).map(Spooled).ok_or("not a record of ticks for NATS")
    }

    fn items(&self) -> usize {
        self.0.len()
    }

    fn absorb(&mut self, later: Spooled) {
        self.0.extend(later.0);
    }
}

/// Publishes the spool oldest first, in groups of consecutive records of up to
/// `group_ticks` ticks (records written during an outage are often a tick or two: one round
/// trip each would replay no faster than ticks arrive), each group consumed once every
/// publish in it is acknowledged, until the spool is empty or a publish fails.
async fn replay_spool(
    js: jetstream::Context,
    spool: Arc<Mutex<Spool>>,
    metrics: Arc<NatsMetrics>,
    group_ticks: usize,
) -> Replayed {
    let coalescer = Arc::new(Mutex::new(Coalescer::<Spooled>::default()));
    let rewind = |spool: &Arc<Mutex<Spool>>, coalescer: &Arc<Mutex<Coalescer<Spooled>>>| {
        lock(coalescer).rewind(&mut lock(spool));
    };
    loop {
        let read = {
            let (spool, coalescer) = (spool.clone(), coalescer.clone());
            tokio::task::spawn_blocking(move || lock(&coalescer).next_group(&mut lock(&spool), group_ticks))
                .await
        };
        let group: Group<Spooled> = match read {
            Ok(Ok(Some(group))) => group,
            Ok(Ok(None)) => return Replayed::Drained,
            Ok(Err(e)) => {
                rewind(&spool, &coalescer);
                return Replayed::Failed(format!("reading the spool: {e}"));
            }
            Err(e) => {
                rewind(&spool, &coalescer);
                return Replayed::Failed(e.to_string());
            }
        };
        for bad in &group.undecodable {
            // Not a record this publisher wrote: skipped, counted, never a reason to stop.
            NatsMetrics::add(&metrics.unreadable, 1);
            error!(record = %bad.id, error = %bad.error, "NATS spool record cannot be read; skipped.");
        }
        let lines = group.batch.map(|b| b.0).unwrap_or_default();
        let mut acks = FuturesUnordered::new();
        let answered =
            |result: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>| match result {
                Ok(ack) => {
                    NatsMetrics::add(&metrics.acked, 1);
                    if ack.duplicate {
                        NatsMetrics::add(&metrics.duplicates, 1);
                    }
                    Ok(())
                }
                Err(e) => {
                    NatsMetrics::add(&metrics.failed, 1);
                    Err(e)
                }
            };
        for (subject, msg_id, payload) in &lines {
            // One record may hold more ticks than the window: acknowledgements are taken as
            // they come once it is full.
            if acks.len() >= group_ticks
                && let Some(result) = acks.next().await
                && let Err(e) = answered(result)
            {
                rewind(&spool, &coalescer);
                return Replayed::Failed(e.to_string());
            }
            NatsMetrics::add(&metrics.published, 1);
            let message = PublishMessage::build().payload(payload.clone()).message_id(msg_id);
            match js.send_publish(subject.clone(), message).await {
                Ok(ack) => acks.push(ack.into_future()),
                Err(e) => {
                    rewind(&spool, &coalescer);
                    return Replayed::Failed(e.to_string());
                }
            }
        }
        while let Some(result) = acks.next().await {
            if let Err(e) = answered(result) {
                rewind(&spool, &coalescer);
                return Replayed::Failed(e.to_string());
            }
        }
        let consumed = {
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || {
                let mut s = lock(&spool);
                let r = s.consume(group.last);
                (r, s.bytes())
            })
            .await
        };
        match consumed {
            Ok((result, bytes)) => {
                NatsMetrics::set(&metrics.spool_bytes, bytes);
                NatsMetrics::add(&metrics.replayed, lines.len() as u64);
                if let Err(e) = result {
                    warn!(error = %e, "NATS spool checkpoint not written; it is tried again with the next group.");
                }
            }
            Err(e) => return Replayed::Failed(e.to_string()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_record_reads_back_line_by_line() {
        let tick = Tick {
            feed: "kalshi".into(),
            conn: 1,
            market: "M.1".into(),
            exch_ts: None,
            recv_ts: 9,
            kind: TickKind::Feed(crate::tick::FeedEvent::Disconnected { reason: "a\tb\nc".into() }),
        };
        let lines = vec![Line::of(&tick, "tickd", "host"), Line::of(&tick, "x.y", "other")];
        let back = decode_record(&encode_record(&lines)).expect("decodes");
        assert_eq!(back.len(), 2);
        for (line, (s, id, p)) in lines.iter().zip(back) {
            assert_eq!(
                (s.as_str(), id.as_str(), p.as_ref()),
                (line.subject.as_str(), line.id.as_str(), line.payload.as_bytes())
            );
        }
        assert!(decode_record(b"no tabs here\n").is_none());
    }
}
