//! Recording ticks in PostgreSQL: the writer batches ticks from the bus and stores them, and
//! while the database is unreachable it keeps the batches in a bounded disk [`spool`] and
//! replays them in order once the database is back, also across a restart.

pub mod spool;
