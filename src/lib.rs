//! tickd: a market-data ingestion daemon.
//!
//! # Layout
//!
//! Data flows left to right:
//!
//! ```text
//! exchange ─ws─► feed (one actor per connection, under the supervisor) ─► bus ─┬► store writer ─► PostgreSQL
//!                                                                            └► dashboard hub ─► browsers, bots
//! ```
//!
//! - [`tick`]: the normalized tick model and exact fixed-point prices and sizes.
//! - [`book`]: an exact order book (YES and NO bid ladders) kept per market.
//! - [`bus`]: bounded fan-out of `Arc<Tick>` to lossless and lossy consumers.
//! - [`kalshi`]: everything Kalshi: wire parsing, commands, handshake signing and the
//!   sans-IO protocol session that turns frames into ticks. No Kalshi type leaves it.
//! - [`feed`]: the feed actor: one WebSocket connection, heartbeat, backoff, alerts.
//! - [`supervisor`]: one feed actor per connection, market sharding, restarts, reloads.
//! - [`liveness`]: the beats by which long loops show progress to the watchdog.
//! - [`store`]: recording ticks in PostgreSQL, with a disk spool for database outages.
//! - [`sim`]: a faithful Kalshi exchange simulator with fault switches (`tickd sim`).
//! - [`config`]: the layered settings tree (defaults < TOML < `TICKD_` environment).
//! - [`dashboard`]: the HTTP port: the page, the live stream for dashboards and bots, health.
//! - [`localpg`]: a private PostgreSQL from the installed binaries (tests, `tickd demo`).
//! - [`demo`]: `tickd demo`, everything on one machine.
//! - [`metrics`]: per-feed counters and gauges, lock-free.
//! - [`alerts`]: incidents (feed stale, database unreachable, spool filling, reconnects), one
//!   alert and one recovery each, to the log, `/metrics`, `alert_command` and a webhook.
//! - [`prometheus`]: `/metrics` in the Prometheus text format.
//! - [`service`]: systemd `Type=notify`: readiness, status, watchdog, stop and reload.
//! - [`telemetry`]: logging: text, JSON or the systemd journal, feed span fields in each.
//! - [`app`]: wires the parts together for `tickd run`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod book;
pub mod bus;
pub mod config;
pub mod dashboard;
pub mod dev;
pub mod feed;
pub mod kalshi;
pub mod ops;
pub mod store;
pub mod telemetry;
pub mod tick;
