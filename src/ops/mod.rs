//! Operations, above the feeds and the store: what the daemon tells the people and systems
//! that run it.
//!
//! - [`alerts`]: the monitor that turns stale feeds, database outages and a filling spool into
//!   incidents, and the webhook that delivers notices.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`systemd`]: `Type=notify`: readiness, status, the watchdog, stop and reload.

pub mod alerts;
pub mod health;
pub mod metrics;
pub mod readiness;
pub mod reload;
pub mod summary;
pub mod systemd;
