//! Handshake signing: RSA-PSS / SHA-256 over `<ts_ms>GET/trade-api/ws/v2`.
// Temporary placeholder; replaced by the signing module.
#![allow(missing_docs)]
#[derive(Debug)]
pub struct Credentials;
impl Credentials {
    pub fn headers(&self, now_ms: i64) -> [(&'static str, String); 3] {
        [
            ("KALSHI-ACCESS-KEY", String::new()),
            ("KALSHI-ACCESS-TIMESTAMP", now_ms.to_string()),
            ("KALSHI-ACCESS-SIGNATURE", String::new()),
        ]
    }
}
impl Credentials {
    pub fn load(_key_id: &str, _path: &std::path::Path) -> Result<Credentials, std::io::Error> {
        Ok(Credentials)
    }
}
