//! `[bus]`: the capacities of the tick bus.

use serde::{Deserialize, Serialize};

use super::Problems;

/// Capacities of the tick bus.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BusSettings {
    /// Ticks queued for each lossless consumer (the store). When full, feeds wait for room
    /// (backpressure), never drop.
    pub lossless_capacity: usize,
    /// Ticks kept for lossy consumers (dashboards). A consumer further behind than this is
    /// told how many it missed and resyncs.
    pub lossy_capacity: usize,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings { lossless_capacity: 65_536, lossy_capacity: 65_536 }
    }
}

impl BusSettings {
    /// Checks that both capacities hold at least one tick.
    pub(super) fn validate_into(&self, problems: &mut Problems) {
        problems.at_least_one("bus.lossless_capacity", self.lossless_capacity);
        problems.at_least_one("bus.lossy_capacity", self.lossy_capacity);
    }
}
