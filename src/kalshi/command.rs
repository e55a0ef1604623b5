//! Client commands, rendered to the JSON text frames Kalshi expects.
