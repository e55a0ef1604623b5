//! Where a tick goes on NATS and under which message id: `<prefix>.<feed>.<kind>.<market>`,
//! with `Nats-Msg-Id` chosen so that JetStream keeps one copy of what two daemons both saw.
//!
//! # Subjects
//!
//! `kind` is one of [`KINDS`]. The feed and the market are each one subject token, escaped so
//! that nothing in them can split a token or act as a wildcard: a byte outside `!`..`~` (space,
//! control characters, anything not ASCII) and each of `.`, `*`, `>` and `%` is written `%XX`
//! (its UTF-8 bytes in upper-case hex), everything else as it is. A feed-wide tick, which has
//! no market, has the token `-`; a market named `-` is written `%2D`. So
//! `KXBTCD-25DEC3117-T96249.99` of feed `kalshi` trades on
//! `tickd.kalshi.trade.KXBTCD-25DEC3117-T96249%2E99`, and `tickd.kalshi.trade.>` is every trade
//! of the feed. [`unescape_token`] reads a token back.
//!
//! # Message ids
//!
//! - a trade: `<feed>:trade:<trade_id>`, the same from any daemon, so a second copy (a
//!   standby's, a backfill's) is dropped by the stream's duplicate window;
//! - a lifecycle message: `<feed>:lifecycle:<market>:<event>:<digest>`, the digest being the
//!   first 16 hex digits of the SHA-256 of the exchange's message as received, the same from
//!   any daemon that received it;
//! - anything else: `<instance>:<conn>:<recv_ts>`, unique per daemon (a receive time is unique
//!   within a process), so a republished spool record is dropped and another daemon's copy is not.

use std::fmt::Write as _;

use sha2::{Digest as _, Sha256};

use crate::tick::{Tick, TickKind};

/// The subject kinds, one per kind of tick (a `market` tick, what a market is, goes with the
/// lifecycle).
pub const KINDS: [&str; 6] = ["trade", "quote", "book", "delta", "lifecycle", "feed"];

/// The token of a tick without a market.
pub const NO_MARKET: &str = "-";

/// The subject kind of `tick`.
pub fn kind(tick: &Tick) -> &'static str {
    match tick.kind {
        TickKind::Trade(_) => "trade",
        TickKind::Quote(_) => "quote",
        TickKind::BookSnapshot(_) => "book",
        TickKind::BookDelta(_) => "delta",
        TickKind::Lifecycle(_) | TickKind::Market(_) => "lifecycle",
        TickKind::Feed(_) => "feed",
    }
}

/// `<prefix>.<feed>.<kind>.<market>` for `tick`, the feed and market escaped.
pub fn subject(prefix: &str, tick: &Tick) -> String {
    let mut s = String::with_capacity(prefix.len() + tick.feed.len() + tick.market.len() + 16);
    s.push_str(prefix);
    s.push('.');
    escape_token_into(&mut s, &tick.feed);
    s.push('.');
    s.push_str(kind(tick));
    s.push('.');
    if tick.market.is_empty() {
        s.push_str(NO_MARKET);
    } else {
        escape_token_into(&mut s, &tick.market);
    }
    s
}

/// The request subject a daemon answers with a feed's current state: `<prefix>.<feed>.state`.
pub fn state_subject(prefix: &str, feed: &str) -> String {
    format!("{prefix}.{}.state", escape_token(feed))
}

/// The `Nats-Msg-Id` of `tick` published by daemon `instance`. A header value cannot hold
/// control characters, so any (from an exchange's odd trade id) is written `%XX`, as `%` is.
pub fn message_id(instance: &str, tick: &Tick) -> String {
    let id = match &tick.kind {
        TickKind::Trade(t) => format!("{}:trade:{}", tick.feed, t.trade_id),
        TickKind::Lifecycle(l) => {
            let digest = Sha256::digest(l.detail.as_bytes());
            let mut id = format!("{}:lifecycle:{}:{}:", tick.feed, tick.market, l.event);
            for byte in &digest[..8] {
                let _ = write!(id, "{byte:02x}");
            }
            id
        }
        _ => format!("{instance}:{}:{}", tick.conn, tick.recv_ts),
    };
    if id.bytes().any(|b| b.is_ascii_control() || b == b'%') {
        let mut clean = String::with_capacity(id.len() + 8);
        for c in id.chars() {
            if c.is_ascii_control() || c == '%' {
                let _ = write!(clean, "%{:02X}", c as u32);
            } else {
                clean.push(c);
            }
        }
        return clean;
    }
    id
}

/// `raw` as one subject token (see the module's documentation).
pub fn escape_token(raw: &str) -> String {
    let mut s = String::with_capacity(raw.len());
    escape_token_into(&mut s, raw);
    s
}

fn escape_token_into(out: &mut String, raw: &str) {
    if raw == NO_MARKET {
        out.push_str("%2D");
        return;
    }
    for byte in raw.bytes() {
        if (b'!'..=b'~').contains(&byte) && !matches!(byte, b'.' | b'*' | b'>' | b'%') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

/// A token read back: `None` when it is not one [`escape_token`] writes (a bad escape, or
/// bytes that are not UTF-8). [`NO_MARKET`] reads back as the empty string.
pub fn unescape_token(token: &str) -> Option<String> {
    if token == NO_MARKET {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::{FeedEvent, Lifecycle, LifecycleScope, Price, Qty, Trade};

    fn tick(market: &str, kind: TickKind) -> Tick {
        Tick { feed: "kalshi".into(), conn: 2, market: market.into(), exch_ts: Some(1), recv_ts: 77, kind }
    }

    fn trade(id: &str) -> TickKind {
        TickKind::Trade(Trade {
            trade_id: id.into(),
            price: Price(4800),
            size: Qty(100),
            taker_side: None,
            block: None,
            backfill: false,
        })
    }

    #[test]
    fn a_ticker_with_a_dot_stays_one_token() {
        let t = tick("KXBTCD-25DEC3117-T96249.99", trade("t1"));
        assert_eq!(subject("tickd", &t), "tickd.kalshi.trade.KXBTCD-25DEC3117-T96249%2E99");
    }

    #[test]
    fn wildcards_whitespace_and_other_bytes_cannot_break_a_subject() {
        for raw in ["A.B", "*", ">", "A B", "a\tb", "100%", "Ω", "-", "--", "x\u{0}y", ""] {
            let token = escape_token(raw);
            assert!(
                token.bytes().all(|b| (b'!'..=b'~').contains(&b) && !matches!(b, b'.' | b'*' | b'>')),
                "{raw:?} -> {token:?}"
            );
            assert_eq!(unescape_token(&token).as_deref(), Some(raw), "{raw:?} round trip");
        }
        assert_eq!(escape_token("-"), "%2D");
        assert_eq!(unescape_token("%2"), None);
        assert_eq!(unescape_token("%ZZ"), None);
        assert_eq!(unescape_token("%FF"), None, "not UTF-8");
    }

    #[test]
    fn a_feed_wide_tick_has_the_no_market_token() {
        let t = tick("", TickKind::Feed(FeedEvent::Live));
        assert_eq!(subject("p", &t), "p.kalshi.feed.-");
        assert_eq!(unescape_token(NO_MARKET).as_deref(), Some(""));
    }

    #[test]
    fn message_ids_are_the_same_from_any_daemon_for_trades_and_lifecycle_only() {
        let lifecycle = |detail: &str| {
            tick(
                "M-1",
                TickKind::Lifecycle(Lifecycle {
                    scope: LifecycleScope::Market,
                    event: "settled".into(),
                    detail: detail.into(),
                }),
            )
        };
        let a = message_id("host-a", &tick("M-1", trade("abc")));
        let b = message_id("host-b", &tick("M-1", trade("abc")));
        assert_eq!((a.as_str(), b.as_str()), ("kalshi:trade:abc", "kalshi:trade:abc"));

        let l1 = message_id("host-a", &lifecycle(r#"{"x":1}"#));
        assert_eq!(l1, message_id("host-b", &lifecycle(r#"{"x":1}"#)));
        assert_ne!(l1, message_id("host-a", &lifecycle(r#"{"x":2}"#)));
        assert!(l1.starts_with("kalshi:lifecycle:M-1:settled:") && l1.len() == 29 + 16, "{l1}");

        assert_eq!(message_id("h", &tick("M", trade("a\r\nb%"))), "kalshi:trade:a%0D%0Ab%25");

        let q = tick("M-1", TickKind::Feed(FeedEvent::Live));
        assert_eq!(message_id("host-a", &q), "host-a:2:77");
        assert_ne!(message_id("host-a", &q), message_id("host-b", &q));
    }
}
