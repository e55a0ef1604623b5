//! feed
pub mod backoff;
