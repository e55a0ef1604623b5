//! Liveness beats: how a long-running loop shows that it is making progress.
//!
//! A [`Beat`] holds one deadline: the time by which its loop promises to show progress again.
//! The loop moves it forward, cheaply (one relaxed atomic store), and the systemd watchdog
//! ([`crate::ops::systemd`]) reads it: a loop whose deadline passed long ago is wedged, and the
//! watchdog is withheld so that systemd restarts the process.
//!
//! Two ways of promising, for two kinds of loop:
//!
//! - A loop driven by its own timers (a feed connection pings every `ping_interval`, a backoff
//!   sleep ends at a known instant) promises its *next turn*: [`Beat::turn_within`],
//!   [`Beat::turn_by`]. An idle but healthy loop keeps its promise because its timer fires.
//! - A loop that waits for work with no timer of its own (the store writer on an empty queue)
//!   owes nothing while it waits ([`Beat::idle`]), and while it works it owes the end of that
//!   work from the moment it started or last finished a step ([`Beat::working`],
//!   [`Beat::progressed`]).
//!
//! Times are µs on tokio's clock (monotonic, and paused in paused-time tests), counted from
//! the first use in the process.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The deadline of a beat that owes nothing.
const IDLE: i64 = i64::MAX;

/// The instant all beat times count from.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// µs from the process's first beat reading to `at`; negative for an earlier instant (a
/// paused-time test runtime may start its clock a little before the first reading).
pub fn micros_at(at: Instant) -> i64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    match at.checked_duration_since(epoch) {
        Some(after) => micros(after),
        None => -micros(epoch - at),
    }
}

/// Now, on the beat clock.
pub fn now_micros() -> i64 {
    micros_at(Instant::now())
}

/// A duration in µs, saturating (a day-long timer is still far from overflowing).
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// One loop's progress promise. Starts idle.
#[derive(Debug)]
pub struct Beat {
    /// The time (µs, beat clock) by which the loop shows progress again; [`IDLE`]: never owed.
    due_us: AtomicI64,
}

impl Default for Beat {
    fn default() -> Self {
        Beat { due_us: AtomicI64::new(IDLE) }
    }
}

impl Beat {
    /// Owes nothing: the loop waits for work that may never come, or has stopped.
    pub fn idle(&self) {
        self.due_us.store(IDLE, Ordering::Relaxed);
    }

    /// The loop turns again within `within` (its longest timer from now).
    pub fn turn_within(&self, within: Duration) {
        self.due_us.store(now_micros().saturating_add(micros(within)), Ordering::Relaxed);
    }

    /// The loop turns again by `at`.
    pub fn turn_by(&self, at: Instant) {
        self.due_us.store(micros_at(at), Ordering::Relaxed);
    }

    /// Work started that should end promptly. An earlier start that is still owed is kept:
    /// work that goes on across loop turns stays owed from when it began.
    pub fn working(&self) {
        let _ = self.due_us.compare_exchange(IDLE, now_micros(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A step of work ended: whatever is still under way is owed from now.
    pub fn progressed(&self) {
        self.due_us.store(now_micros(), Ordering::Relaxed);
    }

    /// [`Beat::working`] while `busy`, else [`Beat::idle`]: where a loop is about to wait.
    pub fn waiting(&self, busy: bool) {
        match busy {
            true => self.working(),
            false => self.idle(),
        }
    }

    /// How long past its promise the loop is at `now_us` (beat clock); `None` when it is not
    /// overdue.
    pub fn overdue(&self, now_us: i64) -> Option<Duration> {
        let due = self.due_us.load(Ordering::Relaxed);
        (due != IDLE && now_us > due).then(|| Duration::from_micros(now_us.abs_diff(due)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    #[tokio::test(start_paused = true)]
    async fn a_timer_driven_loop_is_overdue_only_past_its_promised_turn() {
        let beat = Beat::default();
        assert_eq!(beat.overdue(now_micros() + 3600 * SECOND), None, "a new beat owes nothing");

        beat.turn_within(Duration::from_secs(25));
        let promised = now_micros() + 25 * SECOND;

        assert_eq!(beat.overdue(promised), None);
        assert_eq!(beat.overdue(promised + 2 * SECOND), Some(Duration::from_secs(2)));
        beat.turn_by(Instant::now() + Duration::from_secs(60));
        assert_eq!(beat.overdue(promised + 2 * SECOND), None, "a later promise replaces the earlier one");
    }

    #[tokio::test(start_paused = true)]
    async fn work_stays_owed_from_its_start_across_turns_until_a_step_ends() {
        let beat = Beat::default();
        let started = now_micros();
        beat.working();

        tokio::time::advance(Duration::from_secs(5)).await;
        beat.working();
        assert_eq!(beat.overdue(now_micros()), Some(Duration::from_secs(5)), "a turn does not renew work");

        beat.progressed();
        assert_eq!(beat.overdue(now_micros()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(beat.overdue(now_micros()), Some(Duration::from_secs(1)));

        beat.waiting(false);
        assert_eq!(beat.overdue(started + 3600 * SECOND), None, "waiting for work owes nothing");
        beat.waiting(true);
        assert_eq!(beat.overdue(now_micros()), None, "busy again: owed from now");
    }
}
