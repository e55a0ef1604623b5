//! The sans-IO Kalshi protocol session.
