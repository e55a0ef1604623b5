//! Kalshi's REST market-data API (`/trade-api/v2`, `kalshi-rest.md`): one [`RestClient`] per
//! feed, for listing markets, fetching one market, public trades and order books.
//!
//! Every call goes through the same steps:
//! 1. it waits for the feed's request [`budget`] (`rest_rate`; each attempt takes one);
//! 2. it is signed like the WebSocket handshake when the feed has a key (`KALSHI-ACCESS-*`
//!    over `<ts>GET<path>`);
//! 3. it is limited to `rest_timeout`, answer included, and answers larger than
//!    [`MAX_BODY_BYTES`] are refused;
//! 4. a failure that may pass ([`RestError::is_retriable`]: no answer, HTTP 429, 5xx) is tried
//!    again with exponential backoff and jitter (the `backon` crate), waiting as long as a
//!    `Retry-After` asks when one is sent (at most [`RetryPolicy::max_retry_after`]);
//! 5. every attempt is counted in the feed's [`RestMetrics`] by endpoint and outcome, every
//!    retry too, and the feed's "failing since" is set by a call that fails for good and
//!    cleared by one that succeeds (the `rest_unreachable` alert reads it).
//!
//! Answers are read liberally ([`model`]): items that cannot be used are left out, counted
//! and logged, never guessed at. Lists are paginated with opaque cursors until the cursor
//! comes back empty (a page may be empty while more follow); a cursor seen twice stops the
//! listing with [`RestError::CursorLoop`] instead of looping. Logs carry the feed's name in
//! a `rest` span.

pub mod budget;
pub mod model;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable as _};
use serde_json::{Map, Value};
use tracing::{Instrument as _, debug, warn};

use crate::config::FeedSettings;
use crate::http::{Failure, client_builder, describe, failure};
use crate::kalshi::sign::Credentials;
use crate::telemetry::rest::{Endpoint, Outcome, RestMetrics};
use crate::tick::{BookSnapshot, Name, now_micros};
pub use budget::Budget;
pub use model::{Market, MarketStatus, RestTrade, StatusFilter};

/// The largest answer read; a bigger one is refused as malformed (a page of 1,000 markets is
/// a few MB).
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// The most items a page may ask for (Kalshi answers 400 above it).
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Characters of an error answer's body kept for the log.
const ERROR_BODY_CHARS: usize = 300;

/// How failed attempts are tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before the first retry; each further one doubles it (with jitter).
    pub first_delay: Duration,
    /// The longest wait between two attempts, without `Retry-After`.
    pub max_delay: Duration,
    /// Attempts after the first, at most.
    pub max_retries: usize,
    /// The longest `Retry-After` honoured; a longer one is waited this long.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 0.5 s, 1 s, 2 s, 4 s, 8 s: about 15 s of retries, within Kalshi's advice to back off
    /// on 429 until the bucket refills.
    fn default() -> Self {
        RetryPolicy {
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retries: 5,
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// What a feed's REST client needs.
#[derive(Clone, Debug)]
pub struct RestConfig {
    /// The feed, for logs.
    pub feed: Name,
    /// The API base (`https://external-api.kalshi.com/trade-api/v2`).
    pub base: url::Url,
    /// Requests per second, retries included.
    pub rate: u32,
    /// Limit on each request, answer included.
    pub timeout: Duration,
    /// The key requests are signed with, if any.
    pub credentials: Option<Arc<Credentials>>,
    /// How failures are tried again.
    pub retry: RetryPolicy,
}

impl RestConfig {
    /// The REST settings of a feed: its `rest_url` (or the one paired with `url`),
    /// `rest_rate`, `rest_timeout` and signing key.
    pub fn for_feed(
        settings: &FeedSettings,
        credentials: Option<Arc<Credentials>>,
    ) -> Result<Self, RestError> {
        Ok(RestConfig {
            feed: Name::from(settings.name.as_str()),
            base: settings.rest_base().map_err(RestError::Url)?,
            rate: settings.rest_rate,
            timeout: settings.rest_timeout,
            credentials,
            retry: RetryPolicy::default(),
        })
    }
}

/// Why a REST call failed.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The base URL or a request built from it cannot be used.
    #[error("unusable REST URL: {0}")]
    Url(String),
    /// No whole answer within `rest_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// No answer: the connection could not be made or broke.
    #[error("connection failed: {0}")]
    Transport(String),
    /// The TLS handshake failed (a certificate that does not verify, a protocol alert).
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The exchange answered with a status that is not success.
    #[error("HTTP {status}{}: {body}", .retry_after.map(|d| format!(" (Retry-After {}s)", d.as_secs_f64())).unwrap_or_default())]
    Status {
        /// The status code.
        status: u16,
        /// The `Retry-After` the answer asked for, when it did.
        retry_after: Option<Duration>,
        /// The start of the answer's body, for the log.
        body: String,
    },
    /// A list endpoint answered 404: the base URL is probably wrong.
    #[error("HTTP 404 from a list endpoint ({0}): is `rest_url` right?")]
    NotFound(String),
    /// An answer that cannot be read: not JSON, the wrong shape, too large.
    #[error("unusable answer: {0}")]
    Malformed(String),
    /// The exchange sent a cursor it had sent before: following it would loop.
    #[error("the cursor {0:?} came back a second time; the listing stops there")]
    CursorLoop(String),
}

impl RestError {
    /// Whether the same request may succeed if tried again later: no answer at all, or an
    /// answer that says so (429, 5xx). Rejected credentials, other refusals, unusable answers
    /// and TLS failures stay until something changes.
    pub fn is_retriable(&self) -> bool {
        match self {
            RestError::Timeout(_) | RestError::Transport(_) => true,
            RestError::Status { status, .. } => *status == 429 || *status >= 500,
            RestError::Url(_)
            | RestError::Tls(_)
            | RestError::NotFound(_)
            | RestError::Malformed(_)
            | RestError::CursorLoop(_) => false,
        }
    }

    /// The exchange did not accept the feed's credentials (HTTP 401 or 403).
    pub fn is_credentials(&self) -> bool {
        matches!(self, RestError::Status { status: 401 | 403, .. })
    }

    /// The wait the answer asked for (`Retry-After`), when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RestError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the failure says the feed cannot use the REST API (it counts towards
    /// `rest_unreachable`): every failure but a request the exchange refused as such (400 and
    /// the like), which says nothing about the API being there.
    pub fn is_outage(&self) -> bool {
        match self {
            RestError::Status { status, .. } => {
                matches!(status, 401 | 403 | 429) || *status >= 500 || *status < 400
            }
            _ => true,
        }
    }

    /// The metric outcome of an attempt that failed this way.
    fn outcome(&self) -> Outcome {
        match self {
            RestError::Timeout(_) => Outcome::Timeout,
            RestError::Transport(_) | RestError::Tls(_) | RestError::Url(_) => Outcome::Transport,
            RestError::Status { status: 429, .. } => Outcome::RateLimited,
            RestError::Status { status: 401 | 403, .. } => Outcome::Unauthorized,
            RestError::Status { status, .. } if *status >= 500 => Outcome::ServerError,
            RestError::Status { .. } => Outcome::ClientError,
            RestError::NotFound(_) => Outcome::NotFound,
            RestError::Malformed(_) | RestError::CursorLoop(_) => Outcome::Malformed,
        }
    }
}

/// Which markets `GET /markets` lists. Empty fields do not filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MarketFilter {
    /// Markets of the events of this series.
    pub series_ticker: Option<String>,
    /// Markets of this one event.
    pub event_ticker: Option<String>,
    /// Markets in this state (one value; Kalshi takes no list).
    pub status: Option<StatusFilter>,
    /// These markets (sent as one comma-separated value).
    pub tickers: Vec<String>,
    /// Items per page, up to [`MAX_PAGE_SIZE`]; the exchange's default (100) when `None`.
    pub page_size: Option<u32>,
}

impl MarketFilter {
    /// Every market of `series` (all states).
    pub fn series(series: impl Into<String>) -> Self {
        MarketFilter { series_ticker: Some(series.into()), ..MarketFilter::default() }
    }

    /// Every market of `event` (all states).
    pub fn event(event: impl Into<String>) -> Self {
        MarketFilter { event_ticker: Some(event.into()), ..MarketFilter::default() }
    }

    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        q.extend(self.series_ticker.clone().map(|s| ("series_ticker", s)));
        q.extend(self.event_ticker.clone().map(|e| ("event_ticker", e)));
        q.extend(self.status.map(|s| ("status", s.as_str().to_owned())));
        if !self.tickers.is_empty() {
            q.push(("tickers", self.tickers.join(",")));
        }
        q.extend(self.page_size.map(|n| ("limit", n.clamp(1, MAX_PAGE_SIZE).to_string())));
        q
    }
}

/// Which trades `GET /markets/trades` lists, newest first. Empty fields do not filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TradeFilter {
    /// One market's trades; the whole exchange's without.
    pub ticker: Option<String>,
    /// Trades from this Unix second on (Kalshi does not say whether inclusive: ask one second
    /// early and deduplicate by trade id).
    pub min_ts: Option<i64>,
    /// Trades up to this Unix second (ask one second late).
    pub max_ts: Option<i64>,
    /// Items per page, up to [`MAX_PAGE_SIZE`]; the exchange's default (100) when `None`.
    pub page_size: Option<u32>,
}

impl TradeFilter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        q.extend(self.ticker.clone().map(|t| ("ticker", t)));
        q.extend(self.min_ts.map(|t| ("min_ts", t.to_string())));
        q.extend(self.max_ts.map(|t| ("max_ts", t.to_string())));
        q.extend(self.page_size.map(|n| ("limit", n.clamp(1, MAX_PAGE_SIZE).to_string())));
        q
    }
}

/// One feed's REST client. Cheap to clone: clones share the connection pool, the budget and
/// the metrics.
#[derive(Clone, Debug)]
pub struct RestClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: RestConfig,
    http: reqwest::Client,
    budget: Budget,
    metrics: Arc<RestMetrics>,
    /// `rest{feed=…}`: every line the client logs carries the feed.
    span: tracing::Span,
}

/// What an answer must hold to be usable at all; one that does not is `malformed`.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// An item array (or `null`, which Kalshi's demo sends for an empty list) under this key.
    List(&'static str),
    /// An object under this key.
    Object(&'static str),
    /// An order book: `orderbook_fp` or the legacy `orderbook`, an object.
    Orderbook,
}

impl Shape {
    fn check(self, body: &Map<String, Value>) -> Result<(), String> {
        match self {
            Shape::List(key) => match body.get(key) {
                Some(Value::Array(_) | Value::Null) => Ok(()),
                _ => Err(format!("no `{key}` array in the answer")),
            },
            Shape::Object(key) => match body.get(key) {
                Some(Value::Object(_)) => Ok(()),
                _ => Err(format!("no `{key}` object in the answer")),
            },
            Shape::Orderbook => match (body.get("orderbook_fp"), body.get("orderbook")) {
                (Some(Value::Object(_)), _) | (None | Some(Value::Null), Some(Value::Object(_))) => Ok(()),
                _ => Err("no `orderbook_fp` (or legacy `orderbook`) object in the answer".into()),
            },
        }
    }
}

/// What one successful exchange of a call brought back.
enum Answer {
    /// A JSON object.
    Body(Map<String, Value>),
    /// HTTP 404.
    NotFound,
}

impl RestClient {
    /// A client for `cfg`, counting into `metrics`.
    pub fn new(cfg: RestConfig, metrics: Arc<RestMetrics>) -> Result<RestClient, RestError> {
        let http = client_builder(cfg.timeout)
            .map_err(RestError::Url)?
            .build()
            .map_err(|e| RestError::Url(describe(e)))?;
        let span = tracing::error_span!("rest", feed = %cfg.feed);
        let budget = Budget::new(cfg.rate);
        Ok(RestClient { inner: Arc::new(Inner { cfg, http, budget, metrics, span }) })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &RestConfig {
        &self.inner.cfg
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<RestMetrics> {
        &self.inner.metrics
    }

    /// Every market `filter` selects, all pages. A market that does not name its series gets
    /// the filter's, when the filter names one.
    pub async fn list_markets(&self, filter: &MarketFilter) -> Result<Vec<Market>, RestError> {
        let mut pages = self.market_pages(filter);
        let mut all = Vec::new();
        while let Some(page) = pages.next_page().await? {
            all.extend(page);
        }
        Ok(all)
    }

    /// The markets `filter` selects, one page at a time (for callers that act on each page
    /// as it comes).
    pub fn market_pages(&self, filter: &MarketFilter) -> Pages<Market> {
        let series = filter.series_ticker.clone();
        let event = filter.event_ticker.clone();
        let fill: FillFn<Market> = Box::new(move |m: &mut Market| {
            if m.series_ticker.is_none() {
                m.series_ticker.clone_from(&series);
            }
            if m.event_ticker.is_none() {
                m.event_ticker.clone_from(&event);
            }
        });
        Pages::new(self.clone(), Endpoint::Markets, "markets", filter.query(), model::market, fill)
    }

    /// One market; `None` when the exchange does not know it (404).
    pub async fn market(&self, ticker: &str) -> Result<Option<Market>, RestError> {
        let url = self.url(&["markets", ticker], &[])?;
        let Answer::Body(body) = self.call(Endpoint::Market, url, Shape::Object("market")).await? else {
            return Ok(None);
        };
        let Some(Value::Object(item)) = body.get("market") else {
            return Err(self.unusable(Endpoint::Market, "no `market` object in the answer"));
        };
        let mut ignored = 0;
        let market =
            model::market(item, &mut ignored).map_err(|why| self.unusable(Endpoint::Market, &why))?;
        self.note_ignored(Endpoint::Market, ignored);
        Ok(Some(market))
    }

    /// Every trade `filter` selects, all pages, newest first.
    pub async fn list_trades(&self, filter: &TradeFilter) -> Result<Vec<RestTrade>, RestError> {
        let mut pages = self.trade_pages(filter);
        let mut all = Vec::new();
        while let Some(page) = pages.next_page().await? {
            all.extend(page);
        }
        Ok(all)
    }

    /// The trades `filter` selects, one page at a time, newest first.
    pub fn trade_pages(&self, filter: &TradeFilter) -> Pages<RestTrade> {
        Pages::new(self.clone(), Endpoint::Trades, "trades", filter.query(), model::trade, Box::new(|_| {}))
    }

    /// One market's order book (all levels, or the best `depth` per side); `None` when the
    /// exchange does not know the market (404). Both ladders ascending, each in its own
    /// contract's prices, as [`BookSnapshot`] has them.
    pub async fn orderbook(
        &self,
        ticker: &str,
        depth: Option<u32>,
    ) -> Result<Option<BookSnapshot>, RestError> {
        let query: Vec<(&str, String)> = depth.map(|d| ("depth", d.to_string())).into_iter().collect();
        let url = self.url(&["markets", ticker, "orderbook"], &query)?;
        let Answer::Body(body) = self.call(Endpoint::Orderbook, url, Shape::Orderbook).await? else {
            return Ok(None);
        };
        let mut dropped = 0;
        let book =
            model::orderbook(&body, &mut dropped).map_err(|why| self.unusable(Endpoint::Orderbook, &why))?;
        if dropped > 0 {
            self.inner.metrics.drop_items(Endpoint::Orderbook, dropped);
            let _in = self.inner.span.enter();
            warn!(market = ticker, dropped, "Order book levels that cannot be used were left out.");
        }
        Ok(Some(book))
    }

    /// `base/segment/…?query`, each segment escaped (tickers may hold `.`, and anything else
    /// the exchange invents).
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<url::Url, RestError> {
        let mut url = self.inner.cfg.base.clone();
        url.path_segments_mut()
            .map_err(|()| RestError::Url(format!("{} cannot have a path", self.inner.cfg.base)))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }

    /// One call: attempts within the budget, retried as [`RetryPolicy`] says, the outcome
    /// recorded.
    async fn call(&self, endpoint: Endpoint, url: url::Url, shape: Shape) -> Result<Answer, RestError> {
        let inner = &self.inner;
        let policy = inner.cfg.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(policy.first_delay)
            .with_max_delay(policy.max_delay)
            .with_factor(2.0)
            .with_max_times(policy.max_retries)
            .with_jitter();
        let result = (|| self.attempt(endpoint, &url, shape))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(RestError::is_retriable)
            .adjust(|e, delay| retry_wait(e, delay, &policy))
            .notify(|e, delay| {
                inner.metrics.retry(endpoint);
                warn!(
                    endpoint = endpoint.as_str(),
                    path = url.path(),
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "REST request failed; trying again."
                );
            })
            .instrument(inner.span.clone())
            .await;
        match &result {
            Ok(_) => inner.metrics.call_succeeded(),
            Err(e) => {
                let _in = inner.span.enter();
                warn!(endpoint = endpoint.as_str(), path = url.path(), error = %e, "REST request failed.");
                if e.is_outage() {
                    inner
                        .metrics
                        .call_failed(now_micros(), &format!("{} {}: {e}", endpoint.as_str(), url.path()));
                }
            }
        }
        result
    }

    /// One HTTP request, counted by outcome.
    async fn attempt(&self, endpoint: Endpoint, url: &url::Url, shape: Shape) -> Result<Answer, RestError> {
        let inner = &self.inner;
        if inner.budget.acquire().await {
            inner.metrics.budget_wait();
        }
        let mut request = inner.http.get(url.clone());
        if let Some(key) = &inner.cfg.credentials {
            // Signed anew for every attempt: the timestamp is part of the signature.
            for (name, value) in key.request_headers(now_micros() / 1000, "GET", url.path()) {
                request = request.header(name, value);
            }
        }
        let result = self.exchange(request, shape).await;
        let outcome = match &result {
            Ok(Answer::Body(_)) => Outcome::Ok,
            Ok(Answer::NotFound) => Outcome::NotFound,
            Err(e) => e.outcome(),
        };
        inner.metrics.request(endpoint, outcome);
        debug!(endpoint = endpoint.as_str(), path = url.path(), outcome = outcome.as_str(), "REST request.");
        result
    }

    async fn exchange(&self, request: reqwest::RequestBuilder, shape: Shape) -> Result<Answer, RestError> {
        let timeout = self.inner.cfg.timeout;
        let mut response = request.send().await.map_err(|e| transport(e, timeout))?;
        let status = response.status().as_u16();
        if status == 404 {
            return Ok(Answer::NotFound);
        }
        if !response.status().is_success() {
            let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
            let retry_after = header(reqwest::header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(v, header(reqwest::header::DATE), SystemTime::now()));
            // The body is only for the log: what arrives within the time limit, cut short.
            let mut body = Vec::new();
            while body.len() < ERROR_BODY_CHARS * 4 {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            let body: String = String::from_utf8_lossy(&body).chars().take(ERROR_BODY_CHARS).collect();
            return Err(RestError::Status { status, retry_after, body });
        }
        if response.content_length().is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(RestError::Malformed(format!("an answer of more than {MAX_BODY_BYTES} bytes")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(e, timeout))? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(RestError::Malformed(format!("an answer of more than {MAX_BODY_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => {
                shape.check(&map).map_err(RestError::Malformed)?;
                Ok(Answer::Body(map))
            }
            Ok(_) => Err(RestError::Malformed("the answer is not a JSON object".into())),
            Err(e) => Err(RestError::Malformed(format!("the answer is not JSON: {e}"))),
        }
    }

    /// An answer of the right shape whose one item cannot be used: the item is counted as
    /// dropped, and the call fails like any unusable answer.
    fn unusable(&self, endpoint: Endpoint, why: &str) -> RestError {
        self.inner.metrics.drop_items(endpoint, 1);
        let e = RestError::Malformed(why.to_owned());
        let _in = self.inner.span.enter();
        warn!(endpoint = endpoint.as_str(), error = %e, "REST answer unusable.");
        self.inner.metrics.call_failed(now_micros(), &format!("{}: {e}", endpoint.as_str()));
        e
    }

    fn note_ignored(&self, endpoint: Endpoint, ignored: u64) {
        if ignored > 0 {
            let _in = self.inner.span.enter();
            debug!(
                endpoint = endpoint.as_str(),
                ignored, "REST answer fields of the wrong type were read as absent."
            );
        }
    }
}

/// The wait before the next attempt: the backoff's `delay`, unless the answer asked for one
/// (`Retry-After`, at most `max_retry_after`); `None` (no retry left) stays `None`.
fn retry_wait(e: &RestError, delay: Option<Duration>, policy: &RetryPolicy) -> Option<Duration> {
    match (delay, e.retry_after()) {
        (Some(_), Some(asked)) => Some(asked.min(policy.max_retry_after)),
        (delay, _) => delay,
    }
}

fn transport(e: reqwest::Error, timeout: Duration) -> RestError {
    match failure(&e) {
        Failure::Timeout => RestError::Timeout(timeout),
        Failure::Tls => RestError::Tls(describe(e)),
        Failure::Connect => RestError::Transport(describe(e)),
        Failure::Request => RestError::Url(describe(e)),
    }
}

/// `Retry-After` in seconds (`3`, `1.5`) or as an HTTP date. A date is measured from the
/// answer's own `Date` when it sent one, so that a skewed local clock neither stretches nor
/// cancels the wait, else from `now`; a date already past asks for no wait. Anything else is
/// not honoured: the backoff applies instead.
fn parse_retry_after(value: &str, date: Option<&str>, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs.min(86_400.0)),
        Ok(_) => return None,
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            let sent = date.and_then(|d| httpdate::parse_http_date(d.trim()).ok()).unwrap_or(now);
            at.duration_since(sent).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(Duration::from_secs(86_400)))
}

/// How an item of a page is read: the item, or why it cannot be used.
type ReadFn<T> = fn(&Map<String, Value>, &mut u64) -> Result<T, String>;
/// What a listing adds to each item it read (the filter's series, for markets).
type FillFn<T> = Box<dyn Fn(&mut T) + Send + Sync>;

/// A paginated listing, one page per [`Pages::next_page`].
pub struct Pages<T> {
    client: RestClient,
    endpoint: Endpoint,
    /// The array's key in each page (`markets`, `trades`).
    key: &'static str,
    /// The filters, sent with every page.
    query: Vec<(&'static str, String)>,
    read: ReadFn<T>,
    fill: FillFn<T>,
    /// The cursor for the next page; `None` before the first.
    cursor: Option<String>,
    /// Every cursor followed so far.
    seen: HashSet<String>,
    done: bool,
}

impl<T> Pages<T> {
    fn new(
        client: RestClient,
        endpoint: Endpoint,
        key: &'static str,
        query: Vec<(&'static str, String)>,
        read: ReadFn<T>,
        fill: FillFn<T>,
    ) -> Self {
        Pages { client, endpoint, key, query, read, fill, cursor: None, seen: HashSet::new(), done: false }
    }

    /// The next page's items (possibly none while more pages follow); `None` once the
    /// exchange said there is no more (an empty or absent cursor).
    pub async fn next_page(&mut self) -> Result<Option<Vec<T>>, RestError> {
        if self.done {
            return Ok(None);
        }
        let mut query = self.query.clone();
        query.extend(self.cursor.clone().map(|c| ("cursor", c)));
        let client = &self.client;
        let url = client.url(self.path(), &query)?;
        let body = match client.call(self.endpoint, url, Shape::List(self.key)).await? {
            Answer::Body(body) => body,
            Answer::NotFound => {
                self.done = true;
                let e = RestError::NotFound(format!("/{}", self.path().join("/")));
                let _in = client.inner.span.enter();
                warn!(endpoint = self.endpoint.as_str(), error = %e, "REST request failed.");
                client.inner.metrics.call_failed(now_micros(), &e.to_string());
                return Err(e);
            }
        };
        let items = match body.get(self.key) {
            Some(Value::Array(items)) => items.as_slice(),
            // Kalshi's demo sends `null` for empty lists.
            Some(Value::Null) => &[],
            // `call` checked the shape.
            _ => {
                self.done = true;
                return Err(client.unusable(self.endpoint, &format!("no `{}` array in the answer", self.key)));
            }
        };
        let (mut out, mut dropped, mut ignored, mut first_reason) =
            (Vec::with_capacity(items.len()), 0, 0, None);
        for item in items {
            let read = match item {
                Value::Object(obj) => (self.read)(obj, &mut ignored),
                _ => Err(format!("an item of `{}` that is not an object", self.key)),
            };
            match read {
                Ok(mut t) => {
                    (self.fill)(&mut t);
                    out.push(t);
                }
                Err(why) => {
                    dropped += 1;
                    first_reason.get_or_insert(why);
                }
            }
        }
        if dropped > 0 {
            client.inner.metrics.drop_items(self.endpoint, dropped);
            let _in = client.inner.span.enter();
            warn!(
                endpoint = self.endpoint.as_str(),
                dropped,
                reason = first_reason.as_deref().unwrap_or(""),
                "Items that cannot be used were left out of a REST page."
            );
        }
        client.note_ignored(self.endpoint, ignored);
        match body.get("cursor") {
            Some(Value::String(c)) if !c.is_empty() => {
                if !self.seen.insert(c.clone()) {
                    self.done = true;
                    let e = RestError::CursorLoop(c.clone());
                    client.inner.metrics.call_failed(now_micros(), &e.to_string());
                    return Err(e);
                }
                self.cursor = Some(c.clone());
            }
            // Empty, `null` or absent: no more pages. (Absent breaks the documented shape, but
            // following nothing cannot loop.)
            _ => self.done = true,
        }
        Ok(Some(out))
    }

    /// The listing's path segments under the base.
    fn path(&self) -> &'static [&'static str] {
        match self.endpoint {
            Endpoint::Trades => &["markets", "trades"],
            _ => &["markets"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_whether_waiting_helps_and_whether_they_mean_an_outage() {
        let status = |status| RestError::Status { status, retry_after: None, body: String::new() };
        // (error, retriable, outage, credentials)
        let table = [
            (RestError::Timeout(Duration::from_secs(10)), true, true, false),
            (RestError::Transport("connection refused".into()), true, true, false),
            (RestError::Tls("unknown issuer".into()), false, true, false),
            (status(429), true, true, false),
            (status(500), true, true, false),
            (status(503), true, true, false),
            (status(401), false, true, true),
            (status(403), false, true, true),
            (status(400), false, false, false),
            (RestError::NotFound("/markets".into()), false, true, false),
            (RestError::Malformed("not JSON".into()), false, true, false),
            (RestError::CursorLoop("abc".into()), false, true, false),
        ];
        for (e, retriable, outage, credentials) in table {
            assert_eq!(
                (e.is_retriable(), e.is_outage(), e.is_credentials()),
                (retriable, outage, credentials),
                "{e}"
            );
        }
    }

    #[test]
    fn a_retry_waits_as_long_as_the_answer_asks_within_bounds_and_only_while_retries_are_left() {
        let policy = RetryPolicy::default();
        let asked = |secs| RestError::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(secs)),
            body: String::new(),
        };
        let backoff = Some(Duration::from_millis(500));
        assert_eq!(retry_wait(&asked(3), backoff, &policy), Some(Duration::from_secs(3)));
        assert_eq!(retry_wait(&asked(3600), backoff, &policy), Some(policy.max_retry_after));
        assert_eq!(retry_wait(&asked(3), None, &policy), None, "no retries left");
        assert_eq!(retry_wait(&RestError::Timeout(Duration::from_secs(1)), backoff, &policy), backoff);
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").expect("date");
        let parse = |v| parse_retry_after(v, None, now);
        assert_eq!(parse("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse(" 1.5 "), Some(Duration::from_millis(1500)));
        assert_eq!(parse("-1"), None);
        assert_eq!(parse("soon"), None);
        assert_eq!(parse("Wed, 21 Oct 2015 07:28:07 GMT"), Some(Duration::from_secs(7)));
        assert_eq!(parse("Wed, 21 Oct 2015 07:27:00 GMT"), Some(Duration::ZERO), "already past");
        // Measured from the answer's own clock when it gives one: ours is a minute behind.
        let theirs = Some("Wed, 21 Oct 2015 07:29:00 GMT");
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:05 GMT", theirs, now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(parse("Thu, 21 Oct 2055 07:28:00 GMT"), Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn urls_escape_tickers_and_carry_every_filter() {
        let cfg = RestConfig {
            feed: Name::from("f"),
            base: url::Url::parse("http://127.0.0.1:1/trade-api/v2").unwrap(),
            rate: 10,
            timeout: Duration::from_secs(1),
            credentials: None,
            retry: RetryPolicy::default(),
        };
        let client = RestClient::new(cfg, Arc::default()).unwrap();
        let url = client.url(&["markets", "KX-25DEC-T96249.99/x", "orderbook"], &[]).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:1/trade-api/v2/markets/KX-25DEC-T96249.99%2Fx/orderbook");
        let filter = MarketFilter {
            series_ticker: Some("KXBTCD".into()),
            status: Some(StatusFilter::Open),
            tickers: vec!["A".into(), "B".into()],
            page_size: Some(5000),
            ..MarketFilter::default()
        };
        let url = client.url(&["markets"], &filter.query()).unwrap();
        assert_eq!(url.query(), Some("series_ticker=KXBTCD&status=open&tickers=A%2CB&limit=1000"));
    }
}
