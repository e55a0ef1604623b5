//! Development helpers, apart from the daemon: what tests, benchmarks and `tickd demo` run
//! beside it. Nothing in the daemon's own path imports this folder.
//!
//! - [`sim`]: a faithful Kalshi exchange simulator with fault switches (`tickd sim`).
//! - [`localpg`]: a private PostgreSQL from the installed server binaries.
//! - [`demo`]: `tickd demo`, the simulator, a private PostgreSQL and the daemon together.

pub mod demo;
pub mod localpg;
pub mod sim;
