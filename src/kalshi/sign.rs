//! Handshake signing: RSA-PSS / SHA-256 over `<ts_ms>GET/trade-api/ws/v2`.
