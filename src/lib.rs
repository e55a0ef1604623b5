//! tickd: a market-data ingestion daemon.
//!
//! # Layout
//!
//! Data flows left to right, from sources through the bus to sinks:
//!
//! ```text
//! exchange ─ws─► feed (one actor per connection, under the supervisor) ─► bus ─┬► store writer ─► PostgreSQL
//!                                                                            └► dashboard hub ─► browsers, bots
//! ```
//!
//! The data path:
//! - [`tick`]: the normalized tick model, exact fixed-point prices and sizes, connection ids.
//! - [`book`]: an exact order book (YES and NO bid ladders) kept per market.
//! - [`bus`]: bounded fan-out of `Arc<Tick>` to lossless and lossy consumers.
//! - [`kalshi`]: everything Kalshi: wire parsing, commands, handshake signing, the
//!   sans-IO protocol session that turns frames into ticks, and the REST market-data client
//!   (markets, trades, order books in tickd's units). No wire type leaves it.
//! - [`feed`]: the feed actor (one WebSocket connection, heartbeat, backoff), its
//!   supervisor (one actor per connection, market sharding, restarts, live market changes),
//!   market discovery (the markets of followed series and events, over REST and from
//!   lifecycle ticks, handed to the supervisor; `market` ticks say what each market is) and
//!   the backfill (trades of the windows the stream missed, fetched over REST and published
//!   back on the bus).
//! - [`store`]: recording ticks in PostgreSQL, with a disk spool for database outages.
//! - [`nats`]: ticks over NATS JetStream between hosts (subjects and message ids).
//! - [`dashboard`]: the HTTP port (over TLS when configured): the page, the live stream for
//!   dashboards and bots, and the operations endpoints (`/healthz`, `/readyz`, `/metrics`) it
//!   serves from [`ops`].
//!
//! Around it:
//! - [`config`]: the layered settings tree (defaults < TOML < `TICKD_` environment).
//! - [`http`]: how outgoing HTTP clients are built (Kalshi REST, the alert webhook).
//! - [`telemetry`], at the bottom: what the actors write as they run: counters, liveness
//!   beats, log spans, and the alert registry through which feeds and the store raise alerts.
//! - [`ops`], above the feeds and the store: one [`ops::health::Health`] of the daemon, read
//!   by `/metrics` ([`ops::metrics`]), readiness ([`ops::readiness`]), systemd's status and
//!   watchdog ([`ops::systemd`]), the alert monitor and webhook ([`ops::alerts`]), reloads
//!   ([`ops::reload`]) and the summary lines ([`ops::summary`]).
//! - [`app`]: the daemon in process: `App::build` makes a topology of sources (the feeds) and
//!   sinks (the store, the dashboard) from the settings, `App::run` runs it until shutdown.
//! - [`dev`]: development helpers apart from the daemon: the exchange simulator, a private
//!   PostgreSQL and `tickd demo`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod book;
pub mod bus;
pub mod config;
pub mod dashboard;
pub mod dev;
pub mod feed;
pub mod http;
pub mod kalshi;
pub mod nats;
pub mod ops;
pub mod store;
pub mod telemetry;
pub mod tick;
