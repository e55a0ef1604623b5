//! Capped exponential backoff with jitter for reconnects.
//!
//! The n-th consecutive failure waits a delay drawn uniformly from
//! `[base × (1 − jitter), base]` where `base = min(max, initial × multiplier^(n-1))`: delays
//! grow with the failure count, never exceed the cap, and many feeds that fail together spread
//! out instead of reconnecting in lockstep (`jitter = 0.5`, the default, is "equal jitter").
//! The count resets only when a connection has stayed healthy for `healthy_after`, not when
//! one merely opens.
//!
//! Once a feed has failed `max_reconnects` times in a row and keeps retrying, its caller
//! [`Backoff::hold_at_max`]: every later delay has the base `max`, so an operator told "retrying
//! every `backoff.max`" sees exactly that, however far the growth still had to go.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::BackoffSettings;

/// Reconnect delay policy for one feed.
#[derive(Debug)]
pub struct Backoff {
    settings: BackoffSettings,
    failures: u32,
    /// Every delay has the base `max` until [`Backoff::reset`].
    at_max: bool,
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
        Backoff { settings, failures: 0, at_max: false, rng }
    }

    /// Records a failure; returns the count of consecutive failures.
    pub fn fail(&mut self) -> u32 {
        self.failures = self.failures.saturating_add(1);
        self.failures
    }

    /// How long to wait after the failures recorded so far: drawn from
    /// `[base × (1 − jitter), base]`.
    pub fn delay(&mut self) -> Duration {
        let base = if self.at_max { self.settings.max } else { self.base(self.failures.max(1)) };
        // Validation keeps `jitter` in [0, 1]; clamped so that a bad value cannot panic here.
        let jitter =
            if self.settings.jitter.is_finite() { self.settings.jitter.clamp(0.0, 1.0) } else { 0.5 };
        let random = base.mul_f64(jitter);
        (base - random) + self.rng.random_range(Duration::ZERO..=random)
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.fail();
        self.delay()
    }

    /// The un-jittered delay for the n-th consecutive failure (the upper bound of its range).
    pub fn base(&self, failures: u32) -> Duration {
        let s = &self.settings;
        // Validation keeps `multiplier` finite and at least 1; anything else grows by nothing.
        let multiplier = if s.multiplier.is_finite() { s.multiplier.max(1.0) } else { 1.0 };
        let exponent = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        // In seconds as f64: a huge exponent is infinity, which the cap brings back.
        let seconds = s.initial.as_secs_f64() * multiplier.powi(exponent);
        if !seconds.is_finite() || seconds >= s.max.as_secs_f64() {
            return s.max;
        }
        Duration::from_secs_f64(seconds).min(s.max)
    }

    /// From now until [`Backoff::reset`], every delay has the base `max`: the feed keeps
    /// retrying at the capped delay (after `max_reconnects`).
    pub fn hold_at_max(&mut self) {
        self.at_max = true;
    }

    /// Consecutive failures since the last healthy connection.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A connection stayed healthy: start again from `initial`.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.at_max = false;
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

    #[test]
    fn a_fractional_multiplier_grows_by_its_factor_and_jitter_sets_the_random_share() {
        let settings = BackoffSettings {
            initial: Duration::from_secs(1),
            multiplier: 1.5,
            max: Duration::from_secs(10),
            jitter: 0.1,
            ..BackoffSettings::default()
        };
        let mut b = Backoff::seeded(settings, 3);

        let bases: Vec<Duration> = (1..=8).map(|n| b.base(n)).collect();
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();

        let ms = [1000, 1500, 2250, 3375, 5062, 7593, 10_000, 10_000];
        assert_eq!(bases.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>(), ms);
        for (d, base) in delays.iter().zip(&bases) {
            assert!(*d >= base.mul_f64(0.9) && d <= base, "{d:?} outside [0.9 × {base:?}, {base:?}]");
        }
        assert!(delays.iter().zip(&bases).any(|(d, b)| d != b), "randomized: {delays:?}");
    }

    #[test]
    fn no_jitter_waits_the_base_and_holding_at_max_waits_the_cap_until_reset() {
        let settings = BackoffSettings {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(60),
            jitter: 0.0,
            ..BackoffSettings::default()
        };
        let mut b = Backoff::seeded(settings, 3);

        let early: Vec<u64> = (0..3).map(|_| b.next_delay().as_secs()).collect();
        b.hold_at_max();
        let held: Vec<u64> = (0..2).map(|_| b.next_delay().as_secs()).collect();
        b.reset();
        let after_reset = b.next_delay().as_secs();

        assert_eq!((early, held, after_reset), (vec![1, 2, 4], vec![60, 60], 1));
    }
}
