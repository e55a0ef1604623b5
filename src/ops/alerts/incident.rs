//! When a condition becomes an alert and when that alert is over: pure state machines on
//! explicit instants, so that every rule here is tested without a clock.
//!
//! The rule, for every monitored kind:
//! - **fire** once the condition has been seen bad on every sample for its threshold
//!   (`Rule::fire_after`, zero for conditions whose threshold is part of the condition
//!   itself, such as "no data for `stale_after`");
//! - **resolve** once the condition has been seen clear on every sample for
//!   `alerts.resolve_after`. A bad sample while open restarts that wait, so a condition that
//!   flaps stays one incident: one alert, then one recovery;
//! - a sample that cannot tell (`Reading::Unknown`: the feed is reconnecting, the store is
//!   stopping) neither opens nor closes anything, and restarts both waits.
//!
//! So two alerts of one kind about one source are at least `resolve_after + fire_after`
//! apart, however the condition behaves.
//!
//! An incident carried over from the last run ([`Incident::carried_over`]) is open but not
//! confirmed: it resolves by the rule above, or, seen bad for `fire_after`, fires again (the
//! condition outlived the restart) and is an ordinary open incident from then on.

use std::time::Duration;

use tokio::time::Instant;

/// What one sample says about a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// The condition holds: something is wrong.
    Bad,
    /// The condition does not hold.
    Clear,
    /// This sample cannot tell (for instance a feed that is not connected cannot be stale).
    Unknown,
}

/// The thresholds of one condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// How long the condition must hold before the alert fires.
    pub fire_after: Duration,
    /// How long it must stay clear before the alert resolves.
    pub resolve_after: Duration,
}

/// A change worth a notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The alert fires; the condition has held this long.
    Fire {
        /// How long the condition had held.
        bad_for: Duration,
    },
    /// The alert resolves; it was open this long.
    Resolve {
        /// From the alert to its recovery.
        open_for: Duration,
    },
}

/// One condition about one source: clear, going bad, open, or open and going clear.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Incident {
    /// Start of the current unbroken run of bad samples, while not open.
    bad_since: Option<Instant>,
    /// When the alert fired, while open.
    fired_at: Option<Instant>,
    /// Start of the current unbroken run of clear samples, while open.
    clear_since: Option<Instant>,
    /// Open since the last run, and not seen bad or clear long enough since.
    carried: bool,
}

impl Incident {
    /// An incident the last run left open, `open_for` ago as of `now`.
    pub fn carried_over(now: Instant, open_for: Duration) -> Incident {
        let fired_at = now.checked_sub(open_for).unwrap_or(now);
        Incident { bad_since: None, fired_at: Some(fired_at), clear_since: None, carried: true }
    }

    /// Takes one sample taken at `now` (samples come in time order).
    pub fn observe(&mut self, reading: Reading, now: Instant, rule: Rule) -> Option<Transition> {
        if self.carried {
            return self.observe_carried(reading, now, rule);
        }
        match (self.fired_at, reading) {
            (None, Reading::Bad) => {
                let since = *self.bad_since.get_or_insert(now);
                let bad_for = now.saturating_duration_since(since);
                if bad_for < rule.fire_after {
                    return None;
                }
                *self = Incident { bad_since: None, fired_at: Some(now), clear_since: None, carried: false };
                Some(Transition::Fire { bad_for })
            }
            (None, Reading::Clear | Reading::Unknown) => {
                self.bad_since = None;
                None
            }
            (Some(_), Reading::Bad | Reading::Unknown) => {
                self.clear_since = None;
                None
            }
            (Some(fired), Reading::Clear) => {
                let since = *self.clear_since.get_or_insert(now);
                if now.saturating_duration_since(since) < rule.resolve_after {
                    return None;
                }
                *self = Incident::default();
                Some(Transition::Resolve { open_for: now.saturating_duration_since(fired) })
            }
        }
    }

    /// A carried-over incident: fires again once bad for `fire_after`, resolves once clear for
    /// `resolve_after`.
    fn observe_carried(&mut self, reading: Reading, now: Instant, rule: Rule) -> Option<Transition> {
        match reading {
            Reading::Bad => {
                self.clear_since = None;
                let since = *self.bad_since.get_or_insert(now);
                let bad_for = now.saturating_duration_since(since);
                if bad_for < rule.fire_after {
                    return None;
                }
                // Still open, now confirmed: it resolves by the ordinary rule from here.
                self.bad_since = None;
                self.carried = false;
                Some(Transition::Fire { bad_for })
            }
            Reading::Unknown => {
                self.bad_since = None;
                self.clear_since = None;
                None
            }
            Reading::Clear => {
                self.bad_since = None;
                let since = *self.clear_since.get_or_insert(now);
                if now.saturating_duration_since(since) < rule.resolve_after {
                    return None;
                }
                let fired = self.fired_at.unwrap_or(now);
                *self = Incident::default();
                Some(Transition::Resolve { open_for: now.saturating_duration_since(fired) })
            }
        }
    }

    /// Whether the alert is open (fired, not yet resolved).
    pub fn is_open(&self) -> bool {
        self.fired_at.is_some()
    }

    /// How long the condition has held without firing yet, at `now`.
    pub fn bad_for(&self, now: Instant) -> Option<Duration> {
        self.bad_since.map(|since| now.saturating_duration_since(since))
    }
}

/// How long a feed connection has been connected without showing new market data: the time
/// between samples at which it was connected at both ends, added up until its count of data
/// ticks changes. Time spent disconnected does not count (a new connection gets the whole
/// threshold to deliver its first data), but it does not reset the sum either: connections
/// that keep dying before any data arrives add up to one stale feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataClock {
    data: u64,
    silent: Duration,
    last: Instant,
    connected: bool,
}

impl DataClock {
    /// A clock whose first sample is this one.
    pub fn new(data: u64, connected: bool, now: Instant) -> Self {
        DataClock { data, silent: Duration::ZERO, last: now, connected }
    }

    /// Takes a sample; returns the connected time without new data so far.
    pub fn observe(&mut self, data: u64, connected: bool, now: Instant) -> Duration {
        if data != self.data {
            self.data = data;
            self.silent = Duration::ZERO;
        } else if connected && self.connected {
            self.silent += now.saturating_duration_since(self.last);
        }
        self.last = now;
        self.connected = connected;
        self.silent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule { fire_after: Duration::from_secs(5), resolve_after: Duration::from_secs(10) };

    /// Feeds one reading per second from `t0`; returns (second, transition) for each change.
    fn run(incident: &mut Incident, t0: Instant, readings: &[Reading]) -> Vec<(u64, Transition)> {
        let mut out = Vec::new();
        for (s, r) in readings.iter().enumerate() {
            if let Some(t) = incident.observe(*r, t0 + Duration::from_secs(s as u64), RULE) {
                out.push((s as u64, t));
            }
        }
        out
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    use Reading::{Bad as B, Clear as C, Unknown as U};

    #[test]
    fn a_condition_fires_once_it_has_held_for_its_threshold_and_resolves_once_clear_long_enough() {
        let t0 = Instant::now();
        let mut i = Incident::default();
        let mut readings = vec![C, B, B, B, B, B, B, B];
        readings.extend([C; 12]);

        let changes = run(&mut i, t0, &readings);

        assert_eq!(
            changes,
            [(6, Transition::Fire { bad_for: secs(5) }), (18, Transition::Resolve { open_for: secs(12) })]
        );
        assert!(!i.is_open());
    }

    #[test]
    fn a_carried_over_incident_resolves_once_clear_or_fires_again_once_bad_and_then_is_ordinary() {
        let t0 = Instant::now();
        let mut cleared = Incident::carried_over(t0, secs(100));
        let mut confirmed = Incident::carried_over(t0, secs(100));

        let resolved = run(&mut cleared, t0, &[U, B, B, C, C, C, C, C, C, C, C, C, C, C]);
        let fired_again = run(&mut confirmed, t0, &[C, C, B, B, B, B, B, B, C, C, B, C]);

        // Clear from 3, ten seconds later: open since 100 s before the start.
        assert_eq!(resolved, [(13, Transition::Resolve { open_for: secs(113) })]);
        // Bad from 2, five seconds later; after that, an ordinary open incident that flaps.
        assert_eq!(fired_again, [(7, Transition::Fire { bad_for: secs(5) })]);
        assert!(confirmed.is_open() && !cleared.is_open());
    }

    #[test]
    fn a_bad_run_shorter_than_the_threshold_fires_nothing() {
        let t0 = Instant::now();
        let mut i = Incident::default();

        let changes = run(&mut i, t0, &[B, B, B, B, C, B, B, B, B, U, B, B]);

        assert_eq!(changes, []);
        assert_eq!(i.bad_for(t0 + secs(11)), Some(secs(1)), "the run restarted after the unknown sample");
    }

    #[test]
    fn a_condition_that_flaps_while_open_stays_one_incident() {
        let t0 = Instant::now();
        let mut i = Incident::default();
        // Fires at 5; then clear for 9 s, bad again, clear 9 s, bad, unknown... never 10 s clear.
        let mut readings = vec![B; 6];
        for _ in 0..5 {
            readings.extend([C; 9]);
            readings.push(B);
            readings.extend([C; 3]);
            readings.push(U);
        }

        let changes = run(&mut i, t0, &readings);

        assert_eq!(changes, [(5, Transition::Fire { bad_for: secs(5) })]);
        assert!(i.is_open());
    }

    #[test]
    fn after_a_recovery_the_next_alert_needs_the_whole_threshold_again() {
        let t0 = Instant::now();
        let mut i = Incident::default();
        let mut readings = vec![B; 6];
        readings.extend([C; 11]);
        readings.extend([B; 6]);

        let changes = run(&mut i, t0, &readings);

        assert_eq!(
            changes,
            [
                (5, Transition::Fire { bad_for: secs(5) }),
                (16, Transition::Resolve { open_for: secs(11) }),
                (22, Transition::Fire { bad_for: secs(5) }),
            ]
        );
        // Two alerts at least resolve_after + fire_after apart.
        let (first, second) = (changes[0].0, changes[2].0);
        assert!(second - first >= RULE.resolve_after.as_secs() + RULE.fire_after.as_secs());
    }

    #[test]
    fn with_no_fire_threshold_the_first_bad_sample_fires() {
        let t0 = Instant::now();
        let mut i = Incident::default();
        let rule = Rule { fire_after: Duration::ZERO, ..RULE };

        assert_eq!(i.observe(B, t0, rule), Some(Transition::Fire { bad_for: Duration::ZERO }));
        assert_eq!(i.observe(B, t0 + secs(1), rule), None, "one alert per incident");
    }

    #[test]
    fn unknown_samples_never_resolve_an_open_alert() {
        let t0 = Instant::now();
        let mut i = Incident::default();
        let mut readings = vec![B; 6];
        readings.extend([U; 60]);

        let changes = run(&mut i, t0, &readings);

        assert_eq!(changes.len(), 1);
        assert!(i.is_open());
    }

    #[test]
    fn the_data_clock_counts_connected_time_without_new_data() {
        let t0 = Instant::now();
        let mut clock = DataClock::new(10, true, t0);

        assert_eq!(clock.observe(10, true, t0 + secs(3)), secs(3));
        assert_eq!(clock.observe(11, true, t0 + secs(4)), Duration::ZERO, "new data");
        assert_eq!(clock.observe(11, true, t0 + secs(6)), secs(2));
        // Disconnected for a minute: that time does not count, nor does the reconnect.
        assert_eq!(clock.observe(11, false, t0 + secs(7)), secs(2));
        assert_eq!(clock.observe(11, false, t0 + secs(67)), secs(2));
        assert_eq!(clock.observe(11, true, t0 + secs(68)), secs(2));
        assert_eq!(clock.observe(11, true, t0 + secs(71)), secs(5), "a silent reconnect adds up");
        assert_eq!(clock.observe(12, false, t0 + secs(72)), Duration::ZERO, "data, then a drop");
    }
}
