//! Telemetry, at the bottom: what the actors write as they run and what the operations
//! layer ([`crate::ops`]) reads.
//!
//! - [`metrics`]: per-connection counters and gauges, lock-free on the hot path.
//! - [`rest`]: per-feed REST counters and since when a feed's REST API has been failing.
//! - [`backfill`]: per-feed counters of the trades recovered over REST after missed windows.
//! - [`liveness`]: the beats by which long loops promise progress to the watchdog.
//! - [`alerts`]: the alert registry and its [`alerts::Alerter`], through which feeds and the
//!   store raise alerts without knowing each other.
//! - [`log`]: logging as text, JSON or the systemd journal, each feed connection in its span.
//!
//! Nothing here imports the feeds, the store or the operations layer.

pub mod alerts;
pub mod backfill;
pub mod liveness;
pub mod log;
pub mod metrics;
pub mod rest;

pub use log::init;
