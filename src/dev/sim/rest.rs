//! The simulator's REST market-data API (`kalshi-rest.md` §12): `GET /trade-api/v2/markets`,
//! `/markets/{ticker}`, `/markets/trades` and `/markets/{ticker}/orderbook`, on the
//! WebSocket's port, answered from the same exchange state as the WebSocket (the same books,
//! the same trades with the same ids).
//!
//! Shapes are those of the current API (v3.29): fixed-point strings (`*_dollars` with 4
//! decimals, `*_fp` with 2), RFC 3339 times with trailing zeros of the fraction trimmed, the
//! deprecated fields Kalshi still sends (`title`, `taker_side`, `liquidity_dollars`), no
//! legacy integer fields. Choices where Kalshi documents nothing:
//! - markets list in creation order; trades newest first; cursors are opaque and stable while
//!   items are added (a market's position, a trade's sequence number); a full page always
//!   carries a cursor, so the last one may be followed by an empty page with `""`;
//! - `limit` 1 to 1000 (0 or absent: 100), above → 400; `status` takes one of `unopened`,
//!   `open` (active, not paused), `paused`, `closed` (closed or determined), `settled`;
//!   anything else → 400 `invalid status filter`;
//! - `min_ts`/`max_ts` are inclusive, at second granularity;
//! - an unsigned request is served; a signed one is verified when the simulator has a key
//!   (401 when it does not verify) and served either way when it has none.
//!
//! Faults ([`RestFaults`], set through `Simulator`): answers delayed, the next `n` answered 429
//! (with or without `Retry-After`) or with a 5xx status. Every request is counted in
//! `SimStats` and logged (path and query) for `Simulator::rest_requests`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, RETRY_AFTER};
use serde_json::{Map, Value, json};

use super::auth;
use super::conn::{HttpResponse, respond};
use super::exchange::{Exchange, MarketMeta, Phase, StoredTrade};
use super::session::now_ms;
use super::{REST_LOG_CAP, Shared};
use crate::tick::{Price, Qty, Rfc3339Millis, Side};

/// `limit` when none is given.
const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
const MAX_LIMIT: usize = 1000;

/// The REST fault switches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestFaults {
    /// Every answer waits this long first.
    pub delay: Duration,
    /// The next this many requests get 429.
    pub throttle: u32,
    /// The `Retry-After` those 429s carry, if any.
    pub retry_after: Option<Duration>,
    /// The next this many requests (after any 429s) get `fail_status`.
    pub fail: u32,
    /// The status of those failures (5xx).
    pub fail_status: u16,
}

/// Answers one REST request.
pub(crate) async fn answer(shared: &Shared, req: &hyper::Request<Incoming>) -> HttpResponse {
    let stats = &shared.stats;
    stats.rest_requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let signed = auth::signed(req.headers());
    {
        let mut log = shared.rest_log_lock();
        if log.len() >= REST_LOG_CAP {
            log.pop_front();
        }
        log.push_back(if query.is_empty() { path.clone() } else { format!("{path}?{query}") });
    }
    // Take this request's faults in one go, so concurrent requests each get their own.
    let (delay, fault) = {
        let mut f = shared.rest_faults_lock();
        let fault = if f.throttle > 0 {
            f.throttle -= 1;
            Some((StatusCode::TOO_MANY_REQUESTS, f.retry_after))
        } else if f.fail > 0 {
            f.fail -= 1;
            Some((StatusCode::from_u16(f.fail_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), None))
        } else {
            None
        };
        (f.delay, fault)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some((status, retry_after)) = fault {
        if status == StatusCode::TOO_MANY_REQUESTS {
            stats.rest_throttled.fetch_add(1, Ordering::Relaxed);
            let mut r = error(status, "too_many_requests", "too many requests");
            if let Some(after) = retry_after
                && let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string())
            {
                r.headers_mut().insert(RETRY_AFTER, v);
            }
            return r;
        }
        stats.rest_failed.fetch_add(1, Ordering::Relaxed);
        return error(status, "internal_error", "simulated failure");
    }
    if req.method() != hyper::Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "only GET is served");
    }
    if signed && let Some(auth_cfg) = &shared.auth {
        if let Err(e) = auth::verify(auth_cfg, req.headers(), now_ms(), &path) {
            stats.rest_unauthorized.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::UNAUTHORIZED, "authentication_error", &e.to_string());
        }
        stats.rest_signed.fetch_add(1, Ordering::Relaxed);
    }
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let segments: Vec<String> = path
        .trim_start_matches(auth::REST_PREFIX)
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let st = shared.hub.lock();
    let ex = &st.ex;
    let answer = match segments.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["markets"] => markets(ex, &params),
        ["markets", "trades"] => trades(ex, &params),
        ["markets", ticker] => market(ex, ticker),
        ["markets", ticker, "orderbook"] => orderbook(ex, ticker, &params),
        _ => Err(Refusal::NotFound),
    };
    drop(st);
    match answer {
        Ok(body) => respond(StatusCode::OK, "application/json", body.to_string()),
        Err(Refusal::NotFound) => error(StatusCode::NOT_FOUND, "not_found", "not found"),
        Err(Refusal::Bad(message)) => error(StatusCode::BAD_REQUEST, "bad_request", &message),
    }
}

/// Why a request gets no data.
enum Refusal {
    NotFound,
    Bad(String),
}

/// Kalshi's `ErrorResponse`.
fn error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    let body = json!({"code": code, "message": message, "details": message, "service": "sim"});
    respond(status, "application/json", body.to_string())
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

fn limit(params: &[(String, String)]) -> Result<usize, Refusal> {
    match param(params, "limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(0) => Ok(DEFAULT_LIMIT),
            Ok(n) if n <= MAX_LIMIT => Ok(n),
            Ok(_) => Err(Refusal::Bad(format!("'Limit' failed on the 'lte' tag: at most {MAX_LIMIT}"))),
            Err(_) => Err(Refusal::Bad(format!("limit {v:?} is not a number"))),
        },
    }
}

fn seconds(params: &[(String, String)], key: &str) -> Result<Option<i64>, Refusal> {
    param(params, key)
        .map(|v| v.parse::<i64>().map_err(|_| Refusal::Bad(format!("{key} {v:?} is not a number"))))
        .transpose()
}

/// A cursor is `c` and a number in hex: opaque to clients, meaningful here.
fn cursor(params: &[(String, String)]) -> Result<Option<u64>, Refusal> {
    param(params, "cursor")
        .map(|c| {
            c.strip_prefix('c')
                .and_then(|n| u64::from_str_radix(n, 16).ok())
                .ok_or_else(|| Refusal::Bad("invalid cursor".into()))
        })
        .transpose()
}

fn render_cursor(n: u64) -> String {
    format!("c{n:x}")
}

/// Kalshi's time format: RFC 3339 UTC, the fraction without trailing zeros.
fn time(ms: i64) -> String {
    let full = Rfc3339Millis(ms).to_string();
    let (head, frac) = full.trim_end_matches('Z').split_once('.').unwrap_or((&full, ""));
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() { format!("{head}Z") } else { format!("{head}.{frac}Z") }
}

/// The returned `status` of a market.
fn status(meta: &MarketMeta) -> &'static str {
    match meta.phase {
        Phase::Open if meta.deactivated => "inactive",
        Phase::Open => "active",
        Phase::Closed => "closed",
        Phase::Determined => "determined",
        Phase::Settled => "finalized",
    }
}

/// Whether a market passes the `status` filter (`None`: no filter).
fn status_matches(filter: Option<&str>, meta: &MarketMeta) -> bool {
    match filter {
        None => true,
        Some("unopened") => false,
        Some("open") => meta.phase == Phase::Open && !meta.deactivated,
        Some("paused") => meta.phase == Phase::Open && meta.deactivated,
        Some("closed") => matches!(meta.phase, Phase::Closed | Phase::Determined),
        Some("settled") => meta.phase == Phase::Settled,
        Some(_) => false,
    }
}

fn market_json(ex: &Exchange, ticker: &str) -> Option<Value> {
    let meta = ex.meta(ticker)?;
    let q = ex.ticker(ticker)?;
    let (structure, step) = ex.grid(ticker)?;
    let o = &meta.opening;
    let settlement = meta.determined.map(|(_, yes)| if yes { Price::ONE_DOLLAR } else { Price(0) });
    let result = meta.determined.map_or("", |(_, yes)| if yes { "yes" } else { "no" });
    let expiration = time(meta.close_ms);
    let fields: [(&str, Value); 43] = [
        ("ticker", json!(ticker)),
        ("event_ticker", json!(&*meta.event)),
        ("market_type", json!("binary")),
        ("title", json!(format!("Simulated market {ticker}"))),
        ("subtitle", json!("")),
        ("yes_sub_title", json!("Yes")),
        ("no_sub_title", json!("No")),
        ("created_time", json!(time(meta.created_ms))),
        ("updated_time", json!(time(meta.created_ms))),
        ("open_time", json!(time(meta.created_ms))),
        ("close_time", json!(time(meta.close_ms))),
        ("expected_expiration_time", json!(expiration)),
        ("expiration_time", json!(expiration)),
        ("latest_expiration_time", json!(time(meta.close_ms + 7 * 86_400_000))),
        ("settlement_timer_seconds", json!(60)),
        ("status", json!(status(meta))),
        ("yes_bid_dollars", json!(q.yes_bid.to_string())),
        ("yes_ask_dollars", json!(q.yes_ask.to_string())),
        ("no_bid_dollars", json!(q.yes_ask.complement().to_string())),
        ("no_ask_dollars", json!(q.yes_bid.complement().to_string())),
        ("yes_bid_size_fp", json!(q.yes_bid_size.to_string())),
        ("yes_ask_size_fp", json!(q.yes_ask_size.to_string())),
        ("last_price_dollars", json!(q.last.to_string())),
        ("previous_yes_bid_dollars", json!(o.yes_bid.to_string())),
        ("previous_yes_ask_dollars", json!(o.yes_ask.to_string())),
        ("previous_price_dollars", json!(o.last.to_string())),
        ("volume_fp", json!(q.volume.to_string())),
        ("volume_24h_fp", json!(q.volume.to_string())),
        ("open_interest_fp", json!(q.open_interest.to_string())),
        ("notional_value_dollars", json!(Price::ONE_DOLLAR.to_string())),
        ("liquidity_dollars", json!(Price(0).to_string())),
        ("result", json!(result)),
        ("can_close_early", json!(true)),
        ("fractional_trading_enabled", json!(true)),
        ("expiration_value", json!("")),
        ("settlement_value_dollars", json!(settlement.map(|p| p.to_string()))),
        ("settlement_ts", json!(meta.settled_ms.map(time))),
        ("strike_type", json!("greater")),
        ("floor_strike", json!(50)),
        ("rules_primary", json!("Resolves by simulation.")),
        ("rules_secondary", json!("")),
        ("price_level_structure", json!(structure)),
        (
            "price_ranges",
            json!([{"start": Price(0).to_string(), "end": Price::ONE_DOLLAR.to_string(), "step": step.to_string()}]),
        ),
    ];
    Some(Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// `GET /markets`: creation order, filtered; the cursor is the position after the page.
fn markets(ex: &Exchange, params: &[(String, String)]) -> Result<Value, Refusal> {
    let limit = limit(params)?;
    let status_filter = param(params, "status");
    if let Some(s) = status_filter
        && !["unopened", "open", "paused", "closed", "settled"].contains(&s)
    {
        return Err(Refusal::Bad("invalid status filter".into()));
    }
    let series = param(params, "series_ticker");
    let event = param(params, "event_ticker");
    let tickers: Option<Vec<&str>> = param(params, "tickers").map(|t| t.split(',').collect());
    let start = cursor(params)?.unwrap_or(0) as usize;
    let mut items = Vec::new();
    let mut next = None;
    for (pos, m) in ex.market_refs().enumerate().skip(start) {
        let Some(meta) = ex.meta(&m.ticker) else { continue };
        let wanted = series.is_none_or(|s| *meta.series == *s)
            && event.is_none_or(|e| *meta.event == *e)
            && tickers.as_ref().is_none_or(|t| t.contains(&&*m.ticker))
            && status_matches(status_filter, meta);
        if !wanted {
            continue;
        }
        if items.len() == limit {
            next = Some(pos);
            break;
        }
        items.extend(market_json(ex, &m.ticker));
    }
    // A full page carries a cursor even when nothing follows (then the next page is empty).
    let cursor = match next {
        Some(pos) => render_cursor(pos as u64),
        None if items.len() == limit => render_cursor(u64::MAX >> 1),
        None => String::new(),
    };
    Ok(json!({"markets": items, "cursor": cursor}))
}

/// `GET /markets/{ticker}`.
fn market(ex: &Exchange, ticker: &str) -> Result<Value, Refusal> {
    market_json(ex, ticker).map(|m| json!({"market": m})).ok_or(Refusal::NotFound)
}

fn trade_json(t: &StoredTrade) -> Value {
    let tr = &t.trade;
    let (side, book_side) = match tr.taker {
        Side::Yes => ("yes", "bid"),
        Side::No => ("no", "ask"),
    };
    json!({
        "trade_id": tr.trade_id,
        "ticker": &*t.market,
        "created_time": time(tr.ts_ms),
        "count_fp": tr.count.to_string(),
        "yes_price_dollars": tr.yes_price.to_string(),
        "no_price_dollars": tr.yes_price.complement().to_string(),
        "taker_outcome_side": side,
        "taker_book_side": book_side,
        "taker_side": side,
        "is_block_trade": tr.block,
    })
}

/// `GET /markets/trades`: newest first; the cursor is the sequence number of the last trade
/// given (the next page holds older ones).
fn trades(ex: &Exchange, params: &[(String, String)]) -> Result<Value, Refusal> {
    let limit = limit(params)?;
    let before = cursor(params)?.unwrap_or(u64::MAX);
    let from = seconds(params, "min_ts")?.map_or(i64::MIN, |s| s.saturating_mul(1000));
    let to = seconds(params, "max_ts")?.map_or(i64::MAX, |s| s.saturating_add(1).saturating_mul(1000) - 1);
    let (page, more) = ex.trades_page(param(params, "ticker"), before, from, to, limit);
    let cursor = match page.last() {
        Some(last) if more || page.len() == limit => render_cursor(last.seq),
        _ => String::new(),
    };
    let items: Vec<Value> = page.iter().map(|t| trade_json(t)).collect();
    Ok(json!({"trades": items, "cursor": cursor}))
}

/// `GET /markets/{ticker}/orderbook`: each side its bids ascending, the best `depth` when
/// asked.
fn orderbook(ex: &Exchange, ticker: &str, params: &[(String, String)]) -> Result<Value, Refusal> {
    let depth = match param(params, "depth").map(str::parse::<i64>) {
        None => 0,
        Some(Ok(d)) if d <= 100 => d,
        Some(_) => return Err(Refusal::Bad("depth must be at most 100".into())),
    };
    let book = ex.book(ticker).ok_or(Refusal::NotFound)?;
    let side = |levels: &[(Price, Qty)]| -> Vec<Value> {
        let skip = if depth > 0 { levels.len().saturating_sub(depth as usize) } else { 0 };
        levels[skip..].iter().map(|(p, q)| json!([p.to_string(), q.to_string()])).collect()
    };
    let mut fp = Map::new();
    fp.insert("yes_dollars".into(), Value::Array(side(&book.yes)));
    fp.insert("no_dollars".into(), Value::Array(side(&book.no)));
    Ok(json!({"orderbook_fp": fp}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_trim_the_fraction_like_kalshi() {
        assert_eq!(time(1_785_938_469_490), "2026-08-05T14:01:09.49Z");
        assert_eq!(time(1_785_938_469_000), "2026-08-05T14:01:09Z");
        assert_eq!(time(1_785_938_469_007), "2026-08-05T14:01:09.007Z");
    }
}
