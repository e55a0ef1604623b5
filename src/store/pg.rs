//! Everything that talks SQL: the connection pool, migrations and the schema check, daily
//! partitions and retention, and the one-statement batch write.
//!
//! The batch write is a single `INSERT` statement whose data-modifying CTEs fill the tables the
//! batch has rows for from typed arrays (`unnest`), skipping rows already present (`ON CONFLICT DO NOTHING`, or a
//! second try with it; see [`write`]): one round trip and one implicit transaction per batch,
//! idempotent by the primary keys. `BENCHMARKS.md` compares it with a binary `COPY` of the
//! same rows.

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgConnectOptions, PgHasArrayType, PgPool, PgPoolOptions, PgTypeInfo};
use sqlx::{ConnectOptions as _, Connection as _, Encode, Postgres, Row, Type};

use super::StoreError;
use super::batch::Batch;
use crate::config::StoreSettings;

/// The schema migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// A `timestamptz` bound straight from µs since the Unix epoch: exact, no float, no calendar.
#[derive(Clone, Copy, Debug)]
struct Ts(i64);

impl Type<Postgres> for Ts {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(1184))
    }
}

impl PgHasArrayType for Ts {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(1185))
    }
}

impl Encode<'_, Postgres> for Ts {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&(self.0 - PG_EPOCH_US).to_be_bytes());
        Ok(IsNull::No)
    }

    fn size_hint(&self) -> usize {
        8
    }
}

fn ts(v: &[i64]) -> Vec<Ts> {
    v.iter().map(|&t| Ts(t)).collect()
}

fn opt_ts(v: &[Option<i64>]) -> Vec<Option<Ts>> {
    v.iter().map(|t| t.map(Ts)).collect()
}

/// Connection options from the settings: the URL, the password file, a server-side statement
/// timeout equal to `write_timeout`, and the application name.
pub fn connect_options(settings: &StoreSettings) -> Result<PgConnectOptions, StoreError> {
    let mut options: PgConnectOptions = settings
        .url
        .expose()
        .parse()
        .map_err(|e| StoreError::Config(format!("store.url {}: {e}", settings.url.redacted())))?;
    if let Some(path) = settings.password_path() {
        options = options.password(&read_password(&path)?);
    }
    let timeout_ms = settings.write_timeout.as_millis().to_string();
    Ok(options.application_name("tickd").options([("statement_timeout", timeout_ms.as_str())]))
}

fn read_password(path: &Path) -> Result<String, StoreError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StoreError::Config(format!("store.password_file {}: {e}", path.display())))?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

/// A pool that connects on first use, so the daemon starts while the database is away.
pub fn lazy_pool(settings: &StoreSettings) -> Result<PgPool, StoreError> {
    let options = connect_options(settings)?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.pool_size)
        .acquire_timeout(settings.connect_timeout)
        .connect_lazy_with(options))
}

/// Connects (waiting at most `connect_timeout`), applies the migrations and checks the
/// schema; for `tickd migrate` and `tickd demo`. Returns how many migrations tickd embeds.
pub async fn migrate_now(settings: &StoreSettings) -> Result<usize, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(settings.connect_timeout)
        .connect_with(connect_options(settings)?)
        .await
        .map_err(classify)?;
    let result = migrate(&pool).await;
    pool.close().await;
    result.map(|()| MIGRATOR.iter().count())
}

/// Applies the embedded migrations, then checks that the tables look as tickd needs them.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    // The migrator takes a session-level advisory lock and does not release it when it fails
    // half way (or when a probe past its time limit drops this future). Back in `pool`, its
    // connection would keep holding the lock, and every later migration would wait for it
    // until its statement timeout. So it runs on a one-connection pool of its own, closed
    // (with the lock) when done or dropped.
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_lazy_with((*pool.connect_options()).clone());
    let result = MIGRATOR.run(&own).await.map_err(migrate_error);
    own.close().await;
    result?;
    verify_schema(pool).await
}

fn migrate_error(e: MigrateError) -> StoreError {
    match e {
        // The server was busy, going away or out of resources: nothing about the schema.
        MigrateError::Execute(sqlx::Error::Database(db))
        | MigrateError::ExecuteMigration(sqlx::Error::Database(db), _)
            if db.code().is_some_and(|code| is_transient(&code)) =>
        {
            StoreError::Database {
                code: db.code().map(|c| c.into_owned()).unwrap_or_default(),
                message: db.message().to_owned(),
                retriable: true,
            }
        }
        MigrateError::Execute(sqlx::Error::Database(db))
        | MigrateError::ExecuteMigration(sqlx::Error::Database(db), _) => StoreError::Migration(format!(
            "{} (SQLSTATE {}). The database holds objects tickd did not create or that \
                 were changed by hand: use an empty database for tickd, or repair them.",
            db.message(),
            db.code().unwrap_or_default()
        )),
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) if is_retriable_sqlx(&e) => {
            StoreError::Unreachable(e.to_string())
        }
        MigrateError::VersionMismatch(v) => StoreError::Migration(format!(
            "migration {v} was applied to this database with different contents than this tickd \
             embeds: the database was migrated by a different tickd build, or its migration \
             history was changed by hand"
        )),
        MigrateError::VersionMissing(v) => StoreError::Migration(format!(
            "the database has migration {v}, which this tickd does not know: it was migrated by \
             a newer tickd"
        )),
        other => StoreError::Migration(other.to_string()),
    }
}

/// What each table must have for the writer's statement: column name and type.
const EXPECTED: &[(&str, &[(&str, &str)])] = &[
    (
        "trades",
        &[
            ("feed", "text"),
            ("market", "text"),
            ("trade_id", "text"),
            ("exch_ts", "timestamp with time zone"),
            ("recv_ts", "timestamp with time zone"),
            ("price", "bigint"),
            ("size", "bigint"),
            ("taker_side", "text"),
            ("block", "boolean"),
            ("source", "text"),
        ],
    ),
    (
        "quotes",
        &[
            ("feed", "text"),
            ("market", "text"),
            ("exch_ts", "timestamp with time zone"),
            ("recv_ts", "timestamp with time zone"),
            ("last", "bigint"),
            ("bid", "bigint"),
            ("ask", "bigint"),
            ("bid_size", "bigint"),
            ("ask_size", "bigint"),
            ("last_size", "bigint"),
            ("volume", "bigint"),
            ("open_interest", "bigint"),
            ("dollar_volume", "bigint"),
            ("dollar_open_interest", "bigint"),
        ],
    ),
    (
        "book_snapshots",
        &[
            ("feed", "text"),
            ("market", "text"),
            ("exch_ts", "timestamp with time zone"),
            ("recv_ts", "timestamp with time zone"),
            ("yes", "jsonb"),
            ("no", "jsonb"),
        ],
    ),
    (
        "book_deltas",
        &[
            ("feed", "text"),
            ("market", "text"),
            ("exch_ts", "timestamp with time zone"),
            ("recv_ts", "timestamp with time zone"),
            ("side", "text"),
            ("price", "bigint"),
            ("delta", "bigint"),
        ],
    ),
    (
        "lifecycle_events",
        &[
            ("feed", "text"),
            ("market", "text"),
            ("exch_ts", "timestamp with time zone"),
            ("recv_ts", "timestamp with time zone"),
            ("scope", "text"),
            ("event", "text"),
            ("detail", "jsonb"),
        ],
    ),
    (
        "feed_events",
        &[
            ("ts", "timestamp with time zone"),
            ("feed", "text"),
            ("conn", "integer"),
            ("market", "text"),
            ("event", "text"),
            ("reason", "text"),
            ("sid", "bigint"),
            ("expected", "bigint"),
            ("got", "bigint"),
            ("detail", "jsonb"),
        ],
    ),
    (
        "markets",
        &[
            ("market", "text"),
            ("feed", "text"),
            ("first_seen", "timestamp with time zone"),
            ("last_seen", "timestamp with time zone"),
            ("event_ticker", "text"),
            ("series_ticker", "text"),
            ("title", "text"),
            ("status", "text"),
            ("open_time", "timestamp with time zone"),
            ("close_time", "timestamp with time zone"),
            ("followed", "boolean"),
            ("info_updated", "timestamp with time zone"),
        ],
    ),
];

/// Compares the live tables with [`EXPECTED`] and reports every difference at once: a
/// missing table or column, a changed type, or a column added by hand that the writer cannot
/// fill (NOT NULL without a default).
pub async fn verify_schema(pool: &PgPool) -> Result<(), StoreError> {
    let rows = sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text, \
                (is_nullable = 'NO' AND column_default IS NULL) AS required \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = ANY($1)",
    )
    .bind(EXPECTED.iter().map(|(t, _)| *t).collect::<Vec<_>>())
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    let mut problems = Vec::new();
    for (table, columns) in EXPECTED {
        let live: Vec<_> = rows.iter().filter(|r| r.get::<String, _>(0) == *table).collect();
        if live.is_empty() {
            problems.push(format!("table `{table}` is missing"));
            continue;
        }
        for (column, ty) in *columns {
            match live.iter().find(|r| r.get::<String, _>(1) == *column) {
                None => problems.push(format!("table `{table}`: column `{column}` ({ty}) is missing")),
                Some(r) if r.get::<String, _>(2) != *ty => problems.push(format!(
                    "table `{table}`: column `{column}` is {}, expected {ty}",
                    r.get::<String, _>(2)
                )),
                Some(_) => {}
            }
        }
        for r in &live {
            let name: String = r.get(1);
            if r.get::<bool, _>(3) && !columns.iter().any(|(c, _)| *c == name) {
                problems.push(format!(
                    "table `{table}`: column `{name}` was added by hand and is NOT NULL without a \
                     default, so tickd cannot insert rows"
                ));
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(StoreError::Schema(problems.join("; "))) }
}

/// Creates the daily partitions of every table for `days` (days since the epoch, UTC) that do
/// not exist yet. Returns how many tables it created.
pub async fn ensure_partitions(pool: &PgPool, days: &[i64]) -> Result<u64, StoreError> {
    let mut made = 0u64;
    for &day in days {
        let n: i32 = sqlx::query_scalar("SELECT tickd_create_partitions(date '1970-01-01' + $1::int)")
            .bind(i32::try_from(day).unwrap_or(i32::MAX))
            .fetch_one(pool)
            .await
            .map_err(classify)?;
        made += u64::try_from(n).unwrap_or(0);
    }
    Ok(made)
}

/// Drops partitions for days more than `retention_days` before today (UTC); returns their
/// names.
pub async fn drop_expired(pool: &PgPool, retention_days: u32) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar("SELECT tickd_drop_partitions_before((now() AT TIME ZONE 'UTC')::date - $1::int)")
        .bind(i32::try_from(retention_days).unwrap_or(i32::MAX))
        .fetch_all(pool)
        .await
        .map_err(classify)
}

/// Rows a batch write inserted per table; the rest of the batch were duplicates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inserted {
    /// New rows in any tick table (markets not counted).
    pub rows: u64,
    /// Of which trades.
    pub trades: u64,
}

/// The batch statement; see the module doc. Names are bound once (`$1`) and every table's
/// feed and market columns are 1-based indices into them. `{keyed}` stands for the conflict
/// clause of the tables keyed by receive time (see [`write`]).
///
/// The arrays are unnested in a select list (a `ProjectSet` that streams rows, the arrays of a
/// table always being of one length) rather than by `unnest(a, b, ...)` in `FROM`, which first
/// copies every row into a tuplestore: 10 % less server time per batch (`BENCHMARKS.md`).
const WRITE_SQL_TEMPLATE: &str = "
WITH n AS (SELECT $1::text[] AS names),
t AS (
    INSERT INTO trades (feed, market, trade_id, exch_ts, recv_ts, price, size, taker_side, block, source)
    SELECT n.names[c.f], n.names[c.m], c.id, c.et, c.rt, c.p, c.s,
           CASE c.ty WHEN true THEN 'yes' WHEN false THEN 'no' END, c.b,
           CASE WHEN c.src THEN 'rest' ELSE 'ws' END
    FROM n, (SELECT unnest($2::int4[]) AS f, unnest($3::int4[]) AS m, unnest($4::text[]) AS id,
                    unnest($5::timestamptz[]) AS et, unnest($6::timestamptz[]) AS rt,
                    unnest($7::int8[]) AS p, unnest($8::int8[]) AS s, unnest($9::bool[]) AS ty,
                    unnest($10::bool[]) AS b, unnest($59::bool[]) AS src) AS c
    ON CONFLICT DO NOTHING RETURNING 1),
q AS (
    INSERT INTO quotes (feed, market, exch_ts, recv_ts, last, bid, ask, bid_size, ask_size,
                        last_size, volume, open_interest, dollar_volume, dollar_open_interest)
    SELECT n.names[c.f], n.names[c.m], c.et, c.rt, c.l, c.b, c.a, c.bs, c.as_, c.ls, c.v, c.oi, c.dv, c.doi
    FROM n, (SELECT unnest($11::int4[]) AS f, unnest($12::int4[]) AS m,
                    unnest($13::timestamptz[]) AS et, unnest($14::timestamptz[]) AS rt,
                    unnest($15::int8[]) AS l, unnest($16::int8[]) AS b, unnest($17::int8[]) AS a,
                    unnest($18::int8[]) AS bs, unnest($19::int8[]) AS as_, unnest($20::int8[]) AS ls,
                    unnest($21::int8[]) AS v, unnest($22::int8[]) AS oi, unnest($23::int8[]) AS dv,
                    unnest($24::int8[]) AS doi) AS c
    {keyed} RETURNING 1),
s AS (
    INSERT INTO book_snapshots (feed, market, exch_ts, recv_ts, yes, no)
    SELECT n.names[c.f], n.names[c.m], c.et, c.rt, c.y::jsonb, c.n::jsonb
    FROM n, (SELECT unnest($25::int4[]) AS f, unnest($26::int4[]) AS m,
                    unnest($27::timestamptz[]) AS et, unnest($28::timestamptz[]) AS rt,
                    unnest($29::text[]) AS y, unnest($30::text[]) AS n) AS c
    {keyed} RETURNING 1),
d AS (
    INSERT INTO book_deltas (feed, market, exch_ts, recv_ts, side, price, delta)
    SELECT n.names[c.f], n.names[c.m], c.et, c.rt, CASE WHEN c.y THEN 'yes' ELSE 'no' END, c.p, c.d
    FROM n, (SELECT unnest($31::int4[]) AS f, unnest($32::int4[]) AS m,
                    unnest($33::timestamptz[]) AS et, unnest($34::timestamptz[]) AS rt,
                    unnest($35::bool[]) AS y, unnest($36::int8[]) AS p, unnest($37::int8[]) AS d) AS c
    {keyed} RETURNING 1),
l AS (
    INSERT INTO lifecycle_events (feed, market, exch_ts, recv_ts, scope, event, detail)
    SELECT n.names[c.f], n.names[c.m], c.et, c.rt, CASE WHEN c.mk THEN 'market' ELSE 'event' END,
           c.ev, c.dt::jsonb
    FROM n, (SELECT unnest($38::int4[]) AS f, unnest($39::int4[]) AS m,
                    unnest($40::timestamptz[]) AS et, unnest($41::timestamptz[]) AS rt,
                    unnest($42::bool[]) AS mk, unnest($43::text[]) AS ev, unnest($44::text[]) AS dt) AS c
    {keyed} RETURNING 1),
e AS (
    INSERT INTO feed_events (ts, feed, conn, market, event, reason, sid, expected, got, detail)
    SELECT c.ts, n.names[c.f], c.cn, n.names[c.m], c.ev, c.r, c.sid, c.ex, c.g, c.dt::jsonb
    FROM n, (SELECT unnest($45::timestamptz[]) AS ts, unnest($46::int4[]) AS f,
                    unnest($47::int4[]) AS cn, unnest($48::int4[]) AS m, unnest($49::text[]) AS ev,
                    unnest($50::text[]) AS r, unnest($51::int8[]) AS sid, unnest($52::int8[]) AS ex,
                    unnest($53::int8[]) AS g, unnest($54::text[]) AS dt) AS c
    ON CONFLICT DO NOTHING RETURNING 1),
mk AS (
    INSERT INTO markets AS k (market, feed, first_seen, last_seen)
    SELECT n.names[c.m], n.names[c.f], c.a, c.z
    FROM n, (SELECT unnest($55::int4[]) AS m, unnest($56::int4[]) AS f,
                    unnest($57::timestamptz[]) AS a, unnest($58::timestamptz[]) AS z) AS c
    ON CONFLICT (market) DO UPDATE
        SET first_seen = least(k.first_seen, excluded.first_seen),
            last_seen = greatest(k.last_seen, excluded.last_seen)
        WHERE excluded.last_seen > k.last_seen OR excluded.first_seen < k.first_seen
    RETURNING 1)
SELECT (SELECT count(*) FROM t),
       (SELECT count(*) FROM q) + (SELECT count(*) FROM s) + (SELECT count(*) FROM d)
         + (SELECT count(*) FROM l) + (SELECT count(*) FROM e),
       (SELECT count(*) FROM mk)";

/// The statement's CTEs, one per table, in the template's order: `t` trades, `q` quotes,
/// `s` book snapshots, `d` book deltas, `l` lifecycle events, `e` feed events, `mk` markets.
const TABLE_CTES: [&str; 7] = ["t", "q", "s", "d", "l", "e", "mk"];

/// The batch statement for the tables a batch has rows for (bit `i` of `present`: the table
/// of `TABLE_CTES[i]`), first tried (`dedupe` false: no conflict check on the tables keyed
/// by receive time) or skipping every row already present. A batch seldom fills every table
/// (at a few thousand ticks/s most have no snapshot, lifecycle or feed event, and the writer
/// leaves out the markets it has written), and each CTE left in costs the server its executor
/// set-up on every execution. Each variant is made once and kept (at most 512: 256 table
/// sets, with and without the conflict check); the
/// parameters of the tables left out are still bound, typed, and unused.
fn write_sql(present: u8, dedupe: bool) -> &'static str {
    static VARIANTS: LazyLock<std::sync::Mutex<std::collections::HashMap<(u8, bool), &'static str>>> =
        LazyLock::new(Default::default);
    let mut variants = VARIANTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    variants.entry((present, dedupe)).or_insert_with(|| {
        let template =
            WRITE_SQL_TEMPLATE.replace("{keyed}", if dedupe { "ON CONFLICT DO NOTHING" } else { "" });
        let start =
            |name: &str| template.find(&format!("\n{name} AS (\n")).expect("every CTE is in the template");
        let end =
            template.find("\nSELECT (SELECT count(*) FROM t)").expect("the template ends with its counts");
        let mut sql = String::from("WITH n AS (SELECT $1::text[] AS names)");
        for (i, name) in TABLE_CTES.iter().enumerate() {
            if present & (1 << i) != 0 {
                let to = TABLE_CTES.get(i + 1).map_or(end, |next| start(next));
                sql.push(',');
                sql.push_str(template[start(name)..to].trim_end().trim_end_matches(','));
            }
        }
        let count = |i: usize| {
            if present & (1 << i) != 0 {
                format!("(SELECT count(*) FROM {})", TABLE_CTES[i])
            } else {
                "0::int8".into()
            }
        };
        let others: Vec<String> = (1..6).filter(|i| present & (1 << i) != 0).map(count).collect();
        let others = if others.is_empty() { "0::int8".to_owned() } else { others.join(" + ") };
        sql.push_str(&format!("\nSELECT {}, {others}, {}", count(0), count(6)));
        Box::leak(sql.into_boxed_str())
    })
}

/// SQLSTATE unique_violation.
const UNIQUE_VIOLATION: &str = "23505";

/// Writes one batch in one statement. Safe to repeat: rows already present are skipped.
///
/// `ON CONFLICT DO NOTHING` costs an extra index probe per row (about a quarter of the
/// server's time on a batch; see `BENCHMARKS.md`), and the rows of `quotes`, `book_snapshots`,
/// `book_deltas` and `lifecycle_events` are keyed by a receive time that is new for every tick,
/// so only a batch written before (a spool replay of a batch whose commit went unanswered) can
/// hit their keys. The statement is therefore first tried without the check on those four
/// tables; a unique violation rolls it back whole, and the batch is written again with the
/// check everywhere. `trades` (the exchange's id, which two connections can both deliver),
/// `feed_events` (loss records are written again on purpose) and `markets` always keep it.
///
/// The sightings of every market of the batch are upserted into `markets` (the writer uses
/// [`write_markets`] to leave out those it has written). What the batch says about markets
/// (`market` ticks) is upserted into `markets` after that,
/// in a statement of its own (idempotent too).
pub async fn write(pool: &PgPool, b: &Batch) -> Result<Inserted, StoreError> {
    let mut markets: Vec<i32> = b.markets.keys().copied().collect();
    markets.sort_unstable();
    write_markets(pool, b, &markets).await
}

/// [`write`], upserting the sightings of only `markets` (name indices of the batch, sorted):
/// the writer leaves out those `markets` already knows well enough.
pub async fn write_markets(pool: &PgPool, b: &Batch, markets: &[i32]) -> Result<Inserted, StoreError> {
    let inserted = match write_with(pool, b, markets, false).await {
        Err(StoreError::Database { code, .. }) if code == UNIQUE_VIOLATION => {
            write_with(pool, b, markets, true).await
        }
        result => result,
    }?;
    write_infos(pool, b).await?;
    Ok(inserted)
}

/// Upserts what the batch says about markets. Per column, a value given replaces the stored one
/// unless the stored one is newer (`info_updated`: a spooled batch replayed after a newer one
/// changes nothing it knew), and a value not given (`NULL`) keeps it. A market not seen before
/// gets its row; `first_seen` goes back to when it was first described, `last_seen` stays the
/// data's.
static INFO_SQL: LazyLock<String> = LazyLock::new(|| {
    let newer = |col: &str| {
        format!(
            "{col} = CASE WHEN k.{col} IS NULL OR k.info_updated IS NULL OR excluded.info_updated >= k.info_updated \
             THEN coalesce(excluded.{col}, k.{col}) ELSE k.{col} END"
        )
    };
    let columns = ["event_ticker", "series_ticker", "title", "status", "open_time", "close_time", "followed"];
    let sets: Vec<String> = columns.iter().map(|c| newer(c)).collect();
    format!(
        "INSERT INTO markets AS k (market, feed, first_seen, last_seen, event_ticker, series_ticker, title, \
                                  status, open_time, close_time, followed, info_updated) \
         SELECT c.m, c.f, c.ts, c.ts, c.ev, c.se, c.ti, c.st, c.op, c.cl, c.fo, c.ts \
         FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::timestamptz[], $9::timestamptz[], $10::bool[]) \
              AS c(m, f, ts, ev, se, ti, st, op, cl, fo) \
         ON CONFLICT (market) DO UPDATE SET {}, \
             first_seen = least(k.first_seen, excluded.first_seen), \
             info_updated = greatest(k.info_updated, excluded.info_updated)",
        sets.join(", ")
    )
});

/// One row per market (one statement may not update a row twice): rows received later win
/// where they say something.
async fn write_infos(pool: &PgPool, b: &Batch) -> Result<(), StoreError> {
    let i = &b.infos;
    if i.market.is_empty() {
        return Ok(());
    }
    type Row = (String, String, i64, [Option<String>; 4], Option<i64>, Option<i64>, Option<bool>);
    let mut rows: std::collections::BTreeMap<&str, Row> = std::collections::BTreeMap::new();
    // In receive order: a replayed batch merged from spooled ones need not be in that order,
    // and the later row must win as it would have in a statement of its own.
    let mut order: Vec<usize> = (0..i.market.len()).collect();
    order.sort_by_key(|&n| i.recv_ts[n]);
    for n in order {
        let market = b.name(i.market[n]);
        let texts = [i.event[n].clone(), i.series[n].clone(), i.title[n].clone(), i.status[n].clone()];
        let row = rows.entry(market).or_insert_with(|| {
            (
                market.to_owned(),
                b.name(i.feed[n]).to_owned(),
                i.recv_ts[n],
                Default::default(),
                None,
                None,
                None,
            )
        });
        row.2 = row.2.max(i.recv_ts[n]);
        for (kept, new) in row.3.iter_mut().zip(texts) {
            if new.is_some() {
                *kept = new;
            }
        }
        row.4 = i.open_ts[n].or(row.4);
        row.5 = i.close_ts[n].or(row.5);
        row.6 = i.followed[n].or(row.6);
    }
    // Sorted by market (the map's order): concurrent upserts never deadlock.
    let rows: Vec<Row> = rows.into_values().collect();
    let text = |k: usize| rows.iter().map(|r| r.3[k].clone()).collect::<Vec<_>>();
    sqlx::query(INFO_SQL.as_str())
        .bind(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| Ts(r.2)).collect::<Vec<_>>())
        .bind(text(0))
        .bind(text(1))
        .bind(text(2))
        .bind(text(3))
        .bind(rows.iter().map(|r| r.4.map(Ts)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.5.map(Ts)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.6).collect::<Vec<_>>())
        .execute(pool)
        .await
        .map_err(classify)?;
    Ok(())
}

async fn write_with(pool: &PgPool, b: &Batch, only: &[i32], dedupe: bool) -> Result<Inserted, StoreError> {
    let mut markets: Vec<(i32, i32, i64, i64)> = b
        .markets
        .iter()
        .filter(|(m, _)| only.binary_search(m).is_ok())
        .map(|(m, (f, a, z))| (*m, *f, *a, *z))
        .collect();
    // A stable order keeps concurrent upserts of the same markets from deadlocking.
    markets.sort_unstable_by(|x, y| b.name(x.0).cmp(b.name(y.0)));
    let (t, q, s, d, l, e) = (&b.trades, &b.quotes, &b.snapshots, &b.deltas, &b.lifecycle, &b.events);
    let filled = [
        !t.trade_id.is_empty(),
        !q.keys.recv_ts.is_empty(),
        !s.keys.recv_ts.is_empty(),
        !d.keys.recv_ts.is_empty(),
        !l.keys.recv_ts.is_empty(),
        !e.ts.is_empty(),
        !markets.is_empty(),
    ];
    let present = filled.iter().enumerate().fold(0u8, |bits, (i, &f)| bits | (u8::from(f) << i));
    if present == 0 {
        return Ok(Inserted::default());
    }
    let row = sqlx::query(write_sql(present, dedupe))
        .bind(&b.names)
        .bind(&t.keys.feed)
        .bind(&t.keys.market)
        .bind(&t.trade_id)
        .bind(opt_ts(&t.keys.exch_ts))
        .bind(ts(&t.keys.recv_ts))
        .bind(&t.price)
        .bind(&t.size)
        .bind(&t.taker_yes)
        .bind(&t.block)
        .bind(&q.keys.feed)
        .bind(&q.keys.market)
        .bind(opt_ts(&q.keys.exch_ts))
        .bind(ts(&q.keys.recv_ts))
        .bind(&q.last)
        .bind(&q.bid)
        .bind(&q.ask)
        .bind(&q.bid_size)
        .bind(&q.ask_size)
        .bind(&q.last_size)
        .bind(&q.volume)
        .bind(&q.open_interest)
        .bind(&q.dollar_volume)
        .bind(&q.dollar_open_interest)
        .bind(&s.keys.feed)
        .bind(&s.keys.market)
        .bind(opt_ts(&s.keys.exch_ts))
        .bind(ts(&s.keys.recv_ts))
        .bind(&s.yes)
        .bind(&s.no)
        .bind(&d.keys.feed)
        .bind(&d.keys.market)
        .bind(opt_ts(&d.keys.exch_ts))
        .bind(ts(&d.keys.recv_ts))
        .bind(&d.side_yes)
        .bind(&d.price)
        .bind(&d.delta)
        .bind(&l.keys.feed)
        .bind(&l.keys.market)
        .bind(opt_ts(&l.keys.exch_ts))
        .bind(ts(&l.keys.recv_ts))
        .bind(&l.scope_market)
        .bind(&l.event)
        .bind(&l.detail)
        .bind(ts(&e.ts))
        .bind(&e.feed)
        .bind(&e.conn)
        .bind(&e.market)
        .bind(&e.event)
        .bind(&e.reason)
        .bind(&e.sid)
        .bind(&e.expected)
        .bind(&e.got)
        .bind(&e.detail)
        .bind(markets.iter().map(|m| m.0).collect::<Vec<_>>())
        .bind(markets.iter().map(|m| m.1).collect::<Vec<_>>())
        .bind(markets.iter().map(|m| Ts(m.2)).collect::<Vec<_>>())
        .bind(markets.iter().map(|m| Ts(m.3)).collect::<Vec<_>>())
        .bind(&t.rest)
        .fetch_one(pool)
        .await
        .map_err(classify)?;
    let trades: i64 = row.get(0);
    let others: i64 = row.get(1);
    Ok(Inserted { rows: (trades + others).max(0) as u64, trades: trades.max(0) as u64 })
}

/// Checks the database answers at all.
pub async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    match sqlx::query("SELECT 1").execute(pool).await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::PoolTimedOut) => Err(why_unreachable(pool).await),
        Err(e) => Err(classify(e)),
    }
}

/// The pool retries a refused connection until its timeout and then reports only that it
/// timed out; one direct attempt, with the same limit, says why the database is unreachable.
async fn why_unreachable(pool: &PgPool) -> StoreError {
    let limit = pool.options().get_acquire_timeout();
    match tokio::time::timeout(limit, pool.connect_options().connect()).await {
        Ok(Err(e)) => classify(e),
        Ok(Ok(conn)) => {
            // It answers now; the next probe will find that out.
            let _ = conn.close().await;
            classify(sqlx::Error::PoolTimedOut)
        }
        Err(_) => StoreError::Unreachable(format!("no connection within {limit:?}")),
    }
}

/// SQLSTATEs that say nothing about the statement or the schema, only about the server at
/// that moment: connection exceptions (08), transaction rollbacks such as deadlocks (40),
/// insufficient resources (53), operator intervention such as a statement timeout or a
/// shutdown (57), system errors (58) and a lock not available (55P03).
fn is_transient(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "40" | "53" | "57" | "58")) || code == "55P03"
}

/// Whether a driver error means "try again later" (the database or the network is away)
/// rather than "this input can never be written".
fn is_retriable_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 22: data exceptions and 23: integrity violations are about this input; the one
            // exception is 23514 for a row with no partition, which creating it repairs.
            !(code.starts_with("22") || (code.starts_with("23") && code != "23514"))
        }
        _ => false,
    }
}

/// Sorts a driver error into [`StoreError`].
pub fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => StoreError::Database {
            code: db.code().map(|c| c.into_owned()).unwrap_or_default(),
            message: db.message().to_owned(),
            retriable: is_retriable_sqlx(&e),
        },
        _ if is_retriable_sqlx(&e) => StoreError::Unreachable(e.to_string()),
        _ => StoreError::Database { code: String::new(), message: e.to_string(), retriable: false },
    }
}

/// Runs `fut` for at most `limit`; a timeout is a retriable error.
pub async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, fut).await.unwrap_or(Err(StoreError::Timeout(limit)))
}

/// The exchange time (µs since the epoch) of each market's newest trade among those stored
/// that were received before `received_before_us` (tickd's clock: before this process
/// followed the market, so not one it has received since), for those of `markets` that have
/// one: where a backfill at start begins. One index scan per market (`trades_market_time`),
/// newest first.
pub async fn newest_trades(
    pool: &PgPool,
    markets: &[String],
    received_before_us: i64,
) -> Result<std::collections::HashMap<String, i64>, StoreError> {
    let rows = sqlx::query(
        "SELECT m.market, (extract(epoch FROM t.exch_ts) * 1000000)::bigint \
         FROM unnest($1::text[]) AS m(market) \
         CROSS JOIN LATERAL (SELECT exch_ts FROM trades WHERE trades.market = m.market \
                             AND recv_ts < $2 ORDER BY exch_ts DESC LIMIT 1) t",
    )
    .bind(markets)
    .bind(Ts(received_before_us))
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    Ok(rows.iter().map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1))).collect())
}

/// Which of `trade_ids` are stored already, looking at trades between `from_us` and `to_us`
/// (µs since the epoch, inclusive; the trades' exchange times, so that only their partitions
/// are searched).
pub async fn stored_trades(
    pool: &PgPool,
    trade_ids: &[String],
    from_us: i64,
    to_us: i64,
) -> Result<std::collections::HashSet<String>, StoreError> {
    if trade_ids.is_empty() {
        return Ok(Default::default());
    }
    sqlx::query_scalar(
        "SELECT trade_id FROM trades WHERE trade_id = ANY($1) AND exch_ts >= $2 AND exch_ts <= $3",
    )
    .bind(trade_ids)
    .bind(Ts(from_us))
    .bind(Ts(to_us))
    .fetch_all(pool)
    .await
    .map(|ids: Vec<String>| ids.into_iter().collect())
    .map_err(classify)
}
