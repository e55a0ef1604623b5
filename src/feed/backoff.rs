//! Capped exponential backoff with jitter for reconnects.
//!
//! The n-th consecutive failure waits a delay drawn uniformly from `[base/2, base]` where
//! `base = min(max, initial * multiplier^(n-1))` ("equal jitter"): delays grow with the
//! failure count, never exceed the cap, and many feeds that fail together spread out instead of
//! reconnecting in lockstep. The count resets only when a connection has stayed healthy for
//! `healthy_after`, not when one merely opens.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::BackoffSettings;

/// Reconnect delay policy for one feed.
#[derive(Debug)]
pub struct Backoff {
    settings: BackoffSettings,
    failures: u32,
    rng: StdRng,
}

impl Backoff {
    /// A policy seeded from the OS, so that feeds do not share a jitter sequence.
    pub fn new(settings: BackoffSettings) -> Self {
        Self::with_rng(settings, StdRng::from_os_rng())
    }

    /// A policy with a fixed seed (tests).
    pub fn seeded(settings: BackoffSettings, seed: u64) -> Self {
        Self::with_rng(settings, StdRng::seed_from_u64(seed))
    }

    fn with_rng(settings: BackoffSettings, rng: StdRng) -> Self {
        Backoff { settings, failures: 0, rng }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let base = self.base(self.failures);
        let half = base / 2;
        half + self.rng.random_range(Duration::ZERO..=base - half)
    }

    /// The un-jittered delay for the n-th consecutive failure (the upper bound of its range).
    pub fn base(&self, failures: u32) -> Duration {
        let s = &self.settings;
        let mut base = s.initial;
        for _ in 1..failures {
            base = base.saturating_mul(s.multiplier.max(1));
            if base >= s.max {
                return s.max;
            }
        }
        base.min(s.max)
    }

    /// Consecutive failures since the last healthy connection.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A connection stayed healthy: start again from `initial`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// How long a connection must stay healthy before [`Backoff::reset`] is due.
    pub fn healthy_after(&self) -> Duration {
        self.settings.healthy_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_under_the_cap_and_are_jittered() {
        let settings = BackoffSettings::default();
        let mut a = Backoff::seeded(settings.clone(), 1);
        let mut b = Backoff::seeded(settings.clone(), 2);
        let da: Vec<Duration> = (0..12).map(|_| a.next_delay()).collect();
        let db: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        for (n, d) in da.iter().enumerate() {
            let base = a.base(n as u32 + 1);
            assert!(*d >= base / 2 && *d <= base, "failure {n}: {d:?} outside [{base:?}/2, {base:?}]");
            assert!(*d <= settings.max);
        }
        assert_eq!(a.base(1), Duration::from_secs(1));
        assert_eq!(a.base(3), Duration::from_secs(4));
        assert_eq!(a.base(20), Duration::from_secs(30));
        assert_ne!(da, db, "two feeds must not back off in lockstep");
        a.reset();
        assert_eq!(a.failures(), 0);
        assert!(a.next_delay() <= Duration::from_secs(1));
    }
}
