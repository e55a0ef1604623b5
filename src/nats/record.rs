//! `tickd record`: the stream written into PostgreSQL, from any host.
//!
//! A durable pull consumer (`[nats] consumer`, filtered on `<prefix>.>`) takes the stream's
//! messages in batches of up to `store.batch_size`, cut after `store.batch_age`. Each payload is
//! read back into its tick ([`super::payload::decode`]) and the batch is written with the
//! store's own statements ([`pg::write`], the same rows and the same idempotent keys as the
//! daemon's writer: trades dedupe on their trade id, everything else on feed, market and
//! receive time). Its messages are acknowledged only once the batch has committed, so a
//! recorder killed at any point loses nothing (the stream delivers what was not acknowledged
//! again) and duplicates nothing (a batch written twice is stored once). Several recorders may
//! share the consumer: the stream hands each message to one of them at a time.
//!
//! The recorder needs no disk spool of its own: while the database is away it keeps its batch,
//! acknowledges nothing and tries again every `store.retry_interval`; the stream holds the rest.
//! A message tickd did not write (a payload that is not a tick frame) is counted in
//! [`RecordMetrics::skipped`], logged, acknowledged as done and never stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures_util::StreamExt as _;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::connect::{self, REQUEST_TIMEOUT};
use super::payload;
use crate::config::{NatsSettings, Settings, StoreSettings};
use crate::store::batch::Batch;
use crate::store::pg;

/// The shortest time the stream waits for an acknowledgement before it delivers a message
/// again (to this or another recorder); see [`ack_wait`].
const MIN_ACK_WAIT: Duration = Duration::from_secs(5);

/// How long the stream waits for an acknowledgement: twice a batch write's worst case (connect
/// and write timeouts) after it filled, so that a healthy recorder is never raced by a
/// redelivery, while the messages of a recorder that died come again soon.
fn ack_wait(store: &StoreSettings) -> Duration {
    (batch_age(store) + 2 * (store.connect_timeout + store.write_timeout)).max(MIN_ACK_WAIT)
}

/// The recorder's counters.
#[derive(Debug, Default)]
pub struct RecordMetrics {
    /// Messages taken from the stream.
    pub received: AtomicU64,
    /// Ticks committed (new or already stored).
    pub committed: AtomicU64,
    /// Rows inserted (new).
    pub inserted: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Messages that were no tick frame: counted, acknowledged, never stored.
    pub skipped: AtomicU64,
    /// Batch writes that failed and were tried again.
    pub write_errors: AtomicU64,
}

impl RecordMetrics {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Runs the recorder of `settings` (its `[nats]` and `[store]`) until `shutdown` is cancelled;
/// the batch under way is committed and acknowledged first. Fails at start when a table is
/// missing or the stream exists with other settings.
pub async fn run(
    settings: &Settings,
    metrics: Arc<RecordMetrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (Some(nats), Some(store)) = (&settings.nats, &settings.store) else {
        anyhow::bail!("tickd record needs a [nats] and a [store] table");
    };
    let pool = pg::lazy_pool(store)?;
    if !until_ok("the database schema", store.retry_interval, &shutdown, || async {
        pg::within(store.connect_timeout + store.write_timeout, async {
            if store.migrate {
                pg::migrate(&pool).await?;
            }
            pg::verify_schema(&pool).await
        })
        .await
    })
    .await
    {
        return Ok(());
    }
    let client = connect::connect(nats, "tickd record").await?;
    let js = connect::jetstream(client.clone(), 1);
    let mut logged = false;
    loop {
        let checked = if client.connection_state() == State::Connected {
            connect::ensure_stream(&js, nats).await
        } else {
            Err(connect::StreamError::Request {
                stream: nats.stream.clone(),
                message: "not connected to NATS".into(),
            })
        };
        match checked {
            Ok(()) => break,
            // A person must change the stream or the settings: waiting would not help.
            Err(e @ connect::StreamError::Mismatch { .. }) => return Err(e.into()),
            Err(e) if !logged => {
                warn!(error = %e, "Waiting for the NATS stream.");
                logged = true;
            }
            Err(e) => debug!(error = %e, "Still waiting for the NATS stream."),
        }
        if sleep_or_stop(store.retry_interval, &shutdown).await {
            return Ok(());
        }
    }
    let stream = js.get_stream(&nats.stream).await?;
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(&nats.consumer, consumer_config(nats, store))
        .await
        .map_err(|e| anyhow::anyhow!("NATS consumer `{}`: {e}", nats.consumer))?;
    info!(stream = %nats.stream, consumer = %nats.consumer, "Recording the NATS stream in PostgreSQL.");
    let mut recorder = Recorder { store, pool, metrics, shutdown: shutdown.clone() };
    loop {
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(store.batch_size)
            .heartbeat(REQUEST_TIMEOUT)
            .expires(REQUEST_TIMEOUT * 2 + Duration::from_secs(1))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(e) => {
                warn!(error = %e, "Pulling from the NATS consumer failed; trying again.");
                if sleep_or_stop(store.retry_interval, &shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            let Some(first) = first else { break };
            let mut taken = Vec::with_capacity(store.batch_size.min(4096));
            match first {
                Ok(m) => taken.push(m),
                Err(e) => {
                    debug!(error = %e, "NATS pull interrupted; carrying on.");
                    continue;
                }
            }
            let deadline = Instant::now() + batch_age(store);
            while taken.len() < store.batch_size {
                match timeout_at(deadline, messages.next()).await {
                    Ok(Some(Ok(m))) => taken.push(m),
                    Ok(Some(Err(e))) => debug!(error = %e, "NATS pull interrupted; carrying on."),
                    Ok(None) | Err(_) => break,
                }
            }
            if !recorder.record(taken).await {
                return Ok(());
            }
        }
    }
}

/// The durable consumer: every message of the stream, each acknowledged on its own.
fn consumer_config(nats: &NatsSettings, store: &StoreSettings) -> pull::Config {
    pull::Config {
        durable_name: Some(nats.consumer.clone()),
        filter_subject: format!("{}.>", nats.subject_prefix),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: ack_wait(store),
        // Room for a batch being written and the next one filling, per recorder sharing it.
        max_ack_pending: i64::try_from(store.batch_size.saturating_mul(8)).unwrap_or(i64::MAX),
        ..Default::default()
    }
}

struct Recorder<'a> {
    store: &'a StoreSettings,
    pool: sqlx::PgPool,
    metrics: Arc<RecordMetrics>,
    shutdown: CancellationToken,
}

impl Recorder<'_> {
    /// Writes the ticks of `messages`, then acknowledges them. Returns false when the stop came
    /// before the batch could commit (nothing acknowledged: the stream delivers it again).
    async fn record(&mut self, messages: Vec<async_nats::jetstream::Message>) -> bool {
        RecordMetrics::add(&self.metrics.received, messages.len() as u64);
        let mut batch = Batch::new();
        let mut stored = Vec::with_capacity(messages.len());
        for message in messages {
            match payload::decode(&message.payload) {
                Ok(tick) => {
                    batch.push(&tick);
                    stored.push(message);
                }
                Err(e) => {
                    RecordMetrics::add(&self.metrics.skipped, 1);
                    warn!(
                        subject = %message.subject,
                        error = %e,
                        "A message on the stream is no tick frame tickd wrote; skipped, not stored."
                    );
                    // Done with: never delivered again.
                    if let Err(e) = message.ack_with(AckKind::Term).await {
                        debug!(error = %e, "Acknowledging a skipped message failed; it may come again.");
                    }
                }
            }
        }
        if !batch.is_empty() {
            let limit = self.store.connect_timeout + self.store.write_timeout;
            loop {
                let result = pg::within(limit, async {
                    pg::ensure_partitions(&self.pool, &batch.days()).await?;
                    pg::write(&self.pool, &batch).await
                })
                .await;
                match result {
                    Ok(inserted) => {
                        RecordMetrics::add(&self.metrics.committed, batch.ticks as u64);
                        RecordMetrics::add(&self.metrics.inserted, inserted.rows);
                        RecordMetrics::add(&self.metrics.batches, 1);
                        break;
                    }
                    Err(e) if e.is_retriable() => {
                        RecordMetrics::add(&self.metrics.write_errors, 1);
                        warn!(error = %e, "Writing a batch from NATS failed; trying again (nothing acknowledged).");
                        if sleep_or_stop(self.store.retry_interval, &self.shutdown).await {
                            return false;
                        }
                    }
                    Err(e) => {
                        // The database refuses the batch for its content: nothing acknowledged,
                        // so the stream keeps it for a person to look at; try again later.
                        RecordMetrics::add(&self.metrics.write_errors, 1);
                        error!(error = %e, "The database refused a batch from NATS; it stays on the stream.");
                        if sleep_or_stop(
                            self.store.retry_interval.max(Duration::from_secs(5)),
                            &self.shutdown,
                        )
                        .await
                        {
                            return false;
                        }
                    }
                }
            }
        }
        // Committed: now, and only now, the messages are done with. A lost acknowledgement
        // means one more delivery, stored once.
        for message in stored {
            if let Err(e) = message.ack().await {
                debug!(error = %e, "Acknowledging a stored message failed; it may come again.");
            }
        }
        true
    }
}

/// Tries `attempt` every `every` until it succeeds (true) or the stop comes (false).
async fn until_ok<F, Fut, E>(
    what: &str,
    every: Duration,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut logged = false;
    loop {
        match attempt().await {
            Ok(()) => return true,
            Err(e) if !logged => {
                warn!(error = %e, "Waiting for {what}.");
                logged = true;
            }
            Err(e) => debug!(error = %e, "Still waiting for {what}."),
        }
        if sleep_or_stop(every, shutdown).await {
            return false;
        }
    }
}

/// Sleeps `d`; true if the stop came first.
async fn sleep_or_stop(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

/// How long a batch gathers messages: `store.batch_age` when set, else the store's
/// `commit_latency` (the recorder has no live write times to adapt to).
fn batch_age(store: &StoreSettings) -> Duration {
    store.batch_age.unwrap_or(store.commit_latency)
}
