//! Per-feed REST telemetry: requests by endpoint and outcome, retries, waits for the request
//! budget, items dropped from answers, and since when the feed's REST API has been failing.
//!
//! One [`RestMetrics`] per feed, written by its REST client (`kalshi::rest`) and read by
//! `/metrics` and the alert monitor (`rest_unreachable`) through [`RestFeeds`], the list of
//! every feed's. Lock-free except the last error's text, which only failures write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::tick::Name;

/// Which REST endpoint a request went to (a metric label; never a ticker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /markets`: markets listed by filter.
    Markets,
    /// `GET /markets/{ticker}`: one market.
    Market,
    /// `GET /markets/trades`: public trades.
    Trades,
    /// `GET /markets/{ticker}/orderbook`: one order book.
    Orderbook,
}

impl Endpoint {
    /// Every endpoint, in label order.
    pub const ALL: [Endpoint; 4] =
        [Endpoint::Markets, Endpoint::Market, Endpoint::Trades, Endpoint::Orderbook];

    /// The `endpoint` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Markets => "markets",
            Endpoint::Market => "market",
            Endpoint::Trades => "trades",
            Endpoint::Orderbook => "orderbook",
        }
    }
}

/// How one HTTP request (one attempt of a call) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// 2xx with a usable body.
    Ok,
    /// 404: the market does not exist (a valid answer).
    NotFound,
    /// 429: over the exchange's rate limit.
    RateLimited,
    /// 5xx.
    ServerError,
    /// 401 or 403: credentials not accepted.
    Unauthorized,
    /// Another 4xx: the request itself was refused.
    ClientError,
    /// No answer within `rest_timeout`.
    Timeout,
    /// No answer at all: connect failed, the connection broke, TLS failed.
    Transport,
    /// An answer that cannot be read: not JSON, not the expected shape, too large.
    Malformed,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::NotFound,
        Outcome::RateLimited,
        Outcome::ServerError,
        Outcome::Unauthorized,
        Outcome::ClientError,
        Outcome::Timeout,
        Outcome::Transport,
        Outcome::Malformed,
    ];

    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::RateLimited => "rate_limited",
            Outcome::ServerError => "server_error",
            Outcome::Unauthorized => "unauthorized",
            Outcome::ClientError => "client_error",
            Outcome::Timeout => "timeout",
            Outcome::Transport => "transport",
            Outcome::Malformed => "malformed",
        }
    }
}

const ENDPOINTS: usize = Endpoint::ALL.len();
const OUTCOMES: usize = Outcome::ALL.len();

/// The REST counters of one feed.
#[derive(Debug, Default)]
pub struct RestMetrics {
    /// Requests (each attempt of a call counts once) by endpoint and outcome.
    requests: [[AtomicU64; OUTCOMES]; ENDPOINTS],
    /// Attempts made again after a retriable failure, by endpoint.
    retries: [AtomicU64; ENDPOINTS],
    /// Items (markets, trades, levels) left out of answers because they could not be read.
    dropped: [AtomicU64; ENDPOINTS],
    /// Requests that had to wait for the feed's request budget.
    budget_waits: AtomicU64,
    /// When the current run of failed calls began (µs since the epoch); 0 while the last call
    /// succeeded or none failed yet.
    failing_since_us: AtomicI64,
    /// The last failure, for the alert's message.
    last_error: Mutex<Option<String>>,
}

impl RestMetrics {
    /// Counts one request's outcome.
    pub fn request(&self, endpoint: Endpoint, outcome: Outcome) {
        self.requests[endpoint as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one retry.
    pub fn retry(&self, endpoint: Endpoint) {
        self.retries[endpoint as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts items left out of an answer.
    pub fn drop_items(&self, endpoint: Endpoint, n: u64) {
        self.dropped[endpoint as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a request that waited for the budget.
    pub fn budget_wait(&self) {
        self.budget_waits.fetch_add(1, Ordering::Relaxed);
    }

    /// A call got its answer: the feed's REST API works.
    pub fn call_succeeded(&self) {
        self.failing_since_us.store(0, Ordering::Relaxed);
    }

    /// A call failed for good at `now_us`: starts the failing run unless one is under way.
    pub fn call_failed(&self, now_us: i64, error: &str) {
        // Zero means "not failing"; a clock at the epoch would read as such, so nudge it.
        let _ =
            self.failing_since_us.compare_exchange(0, now_us.max(1), Ordering::Relaxed, Ordering::Relaxed);
        *lock(&self.last_error) = Some(error.to_owned());
    }

    /// When the current run of failed calls began (µs since the epoch), or `None` when the
    /// last call succeeded.
    pub fn failing_since_us(&self) -> Option<i64> {
        let since = self.failing_since_us.load(Ordering::Relaxed);
        (since != 0).then_some(since)
    }

    /// The last failure, as logged.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Requests so far with this endpoint and outcome.
    pub fn requests(&self, endpoint: Endpoint, outcome: Outcome) -> u64 {
        self.requests[endpoint as usize][outcome as usize].load(Ordering::Relaxed)
    }

    /// Requests so far to this endpoint, whatever their outcome.
    pub fn requests_to(&self, endpoint: Endpoint) -> u64 {
        Outcome::ALL.iter().map(|o| self.requests(endpoint, *o)).sum()
    }

    /// Retries so far to this endpoint.
    pub fn retries(&self, endpoint: Endpoint) -> u64 {
        self.retries[endpoint as usize].load(Ordering::Relaxed)
    }

    /// Items dropped so far from this endpoint's answers.
    pub fn dropped(&self, endpoint: Endpoint) -> u64 {
        self.dropped[endpoint as usize].load(Ordering::Relaxed)
    }

    /// Requests so far that waited for the budget.
    pub fn budget_waits(&self) -> u64 {
        self.budget_waits.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: still usable if a holder panicked.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every feed's REST telemetry, by feed name. Cheap to clone; every clone is the same list.
#[derive(Clone, Debug, Default)]
pub struct RestFeeds(Arc<Mutex<BTreeMap<Name, Arc<RestMetrics>>>>);

impl RestFeeds {
    /// The telemetry of `feed`, created on first use; a feed keeps its counters across
    /// reloads that rebuild its client.
    pub fn register(&self, feed: &Name) -> Arc<RestMetrics> {
        lock(&self.0).entry(feed.clone()).or_default().clone()
    }

    /// Forgets a feed (a reload removed it).
    pub fn remove(&self, feed: &str) {
        lock(&self.0).remove(feed);
    }

    /// Every feed's telemetry, by name.
    pub fn all(&self) -> Vec<(Name, Arc<RestMetrics>)> {
        lock(&self.0).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_run_starts_at_its_first_failure_and_ends_with_a_success() {
        let m = RestMetrics::default();
        assert_eq!(m.failing_since_us(), None);
        m.call_failed(1_000, "HTTP 503");
        m.call_failed(2_000, "timeout");
        assert_eq!(m.failing_since_us(), Some(1_000));
        assert_eq!(m.last_error().as_deref(), Some("timeout"));
        m.call_succeeded();
        assert_eq!(m.failing_since_us(), None);
        m.request(Endpoint::Trades, Outcome::RateLimited);
        m.request(Endpoint::Trades, Outcome::Ok);
        assert_eq!(m.requests_to(Endpoint::Trades), 2);
        assert_eq!(m.requests(Endpoint::Markets, Outcome::Ok), 0);
    }
}
