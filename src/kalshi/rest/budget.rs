//! A feed's REST request budget: `rest_rate` requests per second, bursts of up to one
//! second's worth, shared by every caller of the feed's client (retries included).
//!
//! The arithmetic is `governor`'s (GCRA); the clock is tokio's, so that waits and tests run on
//! paused time like every other timer of the daemon. Callers queue in [`Budget::acquire`]
//! without a bound of their own: each is one task waiting for its turn, and the callers
//! (discovery, backfill, freeze checks) bound how many requests they have in flight.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

/// tokio's monotonic clock, as time since the budget was made.
#[derive(Clone, Debug)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }
}

/// Requests per second for one feed.
#[derive(Debug)]
pub struct Budget {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>,
    clock: TokioClock,
    per_second: NonZeroU32,
}

impl Budget {
    /// `per_second` requests a second (at least 1), bursts of as many.
    pub fn new(per_second: u32) -> Budget {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let clock = TokioClock { origin: Instant::now() };
        let limiter = RateLimiter::direct_with_clock(Quota::per_second(per_second), clock.clone());
        Budget { limiter, clock, per_second }
    }

    /// The rate it was made with.
    pub fn per_second(&self) -> u32 {
        self.per_second.get()
    }

    /// Waits until one more request fits; returns whether it had to wait. Cancel-safe: a
    /// caller dropped while waiting took nothing.
    pub async fn acquire(&self) -> bool {
        let mut waited = false;
        loop {
            match self.limiter.check() {
                Ok(()) => return waited,
                Err(not_until) => {
                    waited = true;
                    // Another caller may take the slot first; then this one waits again.
                    tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_budget_lets_a_burst_through_then_its_rate_and_no_more() {
        let budget = Arc::new(Budget::new(5));
        let passed = Arc::new(AtomicU32::new(0));
        for _ in 0..40 {
            let (budget, passed) = (budget.clone(), passed.clone());
            tokio::spawn(async move {
                budget.acquire().await;
                passed.fetch_add(1, Ordering::SeqCst);
            });
        }
        // The burst goes at once.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(passed.load(Ordering::SeqCst), 5);
        // Then five a second.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(passed.load(Ordering::SeqCst), 15);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(passed.load(Ordering::SeqCst), 40);
    }
}
