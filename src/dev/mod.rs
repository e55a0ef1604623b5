//! Development helpers, apart from the daemon: what tests, benchmarks and `tickd demo` run
//! beside it. Nothing in the daemon's own path imports this folder.
//!
//! - [`sim`]: a faithful Kalshi exchange simulator with fault switches (`tickd sim`).
//! - [`localpg`]: a private PostgreSQL from the installed server binaries.
//! - [`localnats`]: a private NATS server with JetStream, from Debian's `nats-server`.
//! - [`demo`]: `tickd demo`, the simulator, a private PostgreSQL and the daemon together.

pub mod demo;
pub mod localnats;
pub mod localpg;
mod process;
pub mod sim;
