//! The `history` command: recent rows of one market and channel, read from PostgreSQL and
//! shaped like the live frames of that channel (PostgreSQL builds the JSON, so the integers
//! arrive exactly as stored).

use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::PgPool;

use super::frames;
use crate::tick::now_micros;

/// Limits from the settings.
pub(crate) struct Limits {
    pub max_rows: u32,
}

/// A parsed `history` command.
pub(crate) struct Request {
    channel: &'static str,
    market: Option<String>,
    limit: i64,
    from_us: i64,
    to_us: i64,
}

/// Rows when `limit` is not given.
const DEFAULT_ROWS: i64 = 100;
/// The window when `from_us` is not given.
const DEFAULT_WINDOW_US: i64 = 3_600_000_000;
/// A query that takes longer is abandoned with `internal_error`.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

impl Request {
    pub(crate) fn parse(cmd: &Map<String, Value>, limits: &Limits) -> Result<Request, String> {
        let channel = match cmd.get("channel").and_then(Value::as_str) {
            Some("trades") => "trades",
            Some("quotes") => "quotes",
            Some("book") => "book",
            Some("lifecycle") => "lifecycle",
            Some("feed") => "feed",
            Some(other) => {
                return Err(format!(
                    "unknown channel `{other}`; expected trades, quotes, book, lifecycle or feed"
                ));
            }
            None => return Err("missing field `channel`".into()),
        };
        let market = match cmd.get("market") {
            Some(Value::String(m)) if !m.is_empty() => Some(m.clone()),
            Some(_) => return Err("`market` must be a ticker".into()),
            None if channel == "feed" => None,
            None => return Err("missing field `market`".into()),
        };
        let int = |key: &str| -> Result<Option<i64>, String> {
            match cmd.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_i64().map(Some).ok_or_else(|| format!("`{key}` must be an integer")),
            }
        };
        let limit = int("limit")?.unwrap_or(DEFAULT_ROWS);
        if limit < 1 || limit > i64::from(limits.max_rows) {
            return Err(format!("`limit` must be 1 to {}", limits.max_rows));
        }
        let to_us = int("to_us")?.unwrap_or_else(now_micros);
        let from_us = int("from_us")?.unwrap_or(to_us - DEFAULT_WINDOW_US);
        if from_us > to_us {
            return Err("`from_us` is after `to_us`".into());
        }
        Ok(Request { channel, market, limit, from_us, to_us })
    }
}

/// µs since the epoch of a timestamptz column, exactly.
macro_rules! us {
    ($col:literal) => {
        concat!("(extract(epoch from ", $col, ") * 1000000)::bigint")
    };
}

/// The newest `$4` rows in the window, oldest first. `$1` market, `$2`/`$3` the window in µs.
fn sql(channel: &str) -> &'static str {
    match channel {
        "trades" => concat!(
            "SELECT frame FROM (SELECT exch_ts, json_build_object('type', 'trade', 'feed', feed, 'market', market, ",
            "'recv_ts', ",
            us!("recv_ts"),
            ", 'exch_ts', ",
            us!("exch_ts"),
            " / 1000, 'trade_id', trade_id, 'price', price, 'size', size, 'taker_side', taker_side, ",
            "'block', block)::text AS frame FROM trades WHERE market = $1 ",
            "AND exch_ts >= 'epoch'::timestamptz + $2 * interval '1 microsecond' ",
            "AND exch_ts < 'epoch'::timestamptz + $3 * interval '1 microsecond' ",
            "ORDER BY exch_ts DESC LIMIT $4) t ORDER BY exch_ts"
        ),
        "quotes" => concat!(
            "SELECT frame FROM (SELECT recv_ts, json_build_object('type', 'quote', 'feed', feed, 'market', market, ",
            "'recv_ts', ",
            us!("recv_ts"),
            ", 'exch_ts', ",
            us!("exch_ts"),
            " / 1000, 'last', last, 'bid', bid, 'ask', ask, 'bid_size', bid_size, 'ask_size', ask_size, ",
            "'last_size', last_size, 'volume', volume, 'open_interest', open_interest, ",
            "'dollar_volume', dollar_volume, 'dollar_open_interest', dollar_open_interest)::text AS frame ",
            "FROM quotes WHERE market = $1 ",
            "AND recv_ts >= 'epoch'::timestamptz + $2 * interval '1 microsecond' ",
            "AND recv_ts < 'epoch'::timestamptz + $3 * interval '1 microsecond' ",
            "ORDER BY recv_ts DESC LIMIT $4) t ORDER BY recv_ts"
        ),
        "book" => concat!(
            "SELECT frame FROM (",
            "SELECT recv_ts, 0 AS k, json_build_object('type', 'book', 'feed', feed, 'market', market, 'recv_ts', ",
            us!("recv_ts"),
            ", 'exch_ts', ",
            us!("exch_ts"),
            " / 1000, 'yes', yes, 'no', no)::text AS frame FROM book_snapshots WHERE market = $1 ",
            "AND recv_ts >= 'epoch'::timestamptz + $2 * interval '1 microsecond' ",
            "AND recv_ts < 'epoch'::timestamptz + $3 * interval '1 microsecond' ",
            "UNION ALL ",
            "SELECT recv_ts, 1, json_build_object('type', 'delta', 'feed', feed, 'market', market, 'recv_ts', ",
            us!("recv_ts"),
            ", 'exch_ts', ",
            us!("exch_ts"),
            " / 1000, 'side', side, 'price', price, 'delta', delta)::text FROM book_deltas WHERE market = $1 ",
            "AND recv_ts >= 'epoch'::timestamptz + $2 * interval '1 microsecond' ",
            "AND recv_ts < 'epoch'::timestamptz + $3 * interval '1 microsecond' ",
            "ORDER BY recv_ts DESC, k DESC LIMIT $4) t ORDER BY recv_ts, k"
        ),
        "lifecycle" => concat!(
            "SELECT frame FROM (SELECT recv_ts, json_build_object('type', 'lifecycle', 'feed', feed, 'market', market, ",
            "'recv_ts', ",
            us!("recv_ts"),
            ", 'exch_ts', ",
            us!("exch_ts"),
            " / 1000, 'scope', scope, 'event', event, 'detail', detail)::text AS frame ",
            "FROM lifecycle_events WHERE market = $1 ",
            "AND recv_ts >= 'epoch'::timestamptz + $2 * interval '1 microsecond' ",
            "AND recv_ts < 'epoch'::timestamptz + $3 * interval '1 microsecond' ",
            "ORDER BY recv_ts DESC LIMIT $4) t ORDER BY recv_ts"
        ),
        _ => concat!(
            "SELECT frame FROM (SELECT ts, json_build_object('type', 'feed', 'feed', feed, 'conn', conn, ",
            "'market', market, 'recv_ts', ",
            us!("ts"),
            ", 'exch_ts', NULL, 'event', event, 'reason', reason, 'sid', sid, 'expected', expected, ",
            "'got', got, 'detail', detail)::text AS frame FROM feed_events ",
            "WHERE ($1::text IS NULL OR market = $1) ",
            "AND ts >= 'epoch'::timestamptz + $2 * interval '1 microsecond' ",
            "AND ts < 'epoch'::timestamptz + $3 * interval '1 microsecond' ",
            "ORDER BY ts DESC LIMIT $4) t ORDER BY ts"
        ),
    }
}

/// Runs the query; rows are JSON objects as text.
pub(crate) async fn fetch(pool: &PgPool, req: &Request) -> Result<Vec<String>, String> {
    let query = sqlx::query_scalar::<_, String>(sql(req.channel))
        .bind(req.market.as_deref())
        .bind(req.from_us)
        .bind(req.to_us)
        .bind(req.limit)
        .fetch_all(pool);
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {QUERY_TIMEOUT:?}")),
    }
}

/// The `history` reply.
pub(crate) fn frame(id: Option<&Value>, req: &Request, rows: &[String]) -> String {
    let mut list = String::with_capacity(rows.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    list.push('[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        list.push_str(row);
    }
    list.push(']');
    let o = frames::Obj::new("history").id(id).str("channel", req.channel);
    let o = match &req.market {
        Some(m) => o.str("market", m),
        None => o.raw("market", "null"),
    };
    o.raw("rows", &list).finish()
}
