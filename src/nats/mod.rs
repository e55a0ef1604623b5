//! Ticks over NATS JetStream, for more than one machine: how they are named there.
//!
//! - [`subject`]: each tick's subject (`<prefix>.<feed>.<kind>.<market>`, tokens escaped) and
//!   `Nats-Msg-Id` (the same from any daemon for trades and lifecycle messages).

pub mod subject;
