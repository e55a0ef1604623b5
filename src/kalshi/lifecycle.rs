//! What Kalshi's lifecycle messages say about markets and events, read from the `detail` of a
//! [`Lifecycle`] tick (the message's `msg` object, `kalshi-ws-protocol.md` §5.5).
//!
//! Market discovery uses it to learn that a market was created, activated, determined or
//! settled, which event it belongs to, and what the `markets` table should know of it. Every
//! field is read liberally: one that is missing or of the wrong type is `None`, never guessed.
//!
//! The lifecycle vocabulary is mapped onto the REST API's market `status` (`kalshi-rest.md`
//! §4.1), so that the stored status reads the same whichever source said it last:
//! `activated` → `active`; `deactivated` → `inactive` (or `active` when `is_deactivated` is
//! false: the market was unpaused); `determined` → `determined`; `settled` → `finalized`.
//! `created` says nothing about the status (a market may be created before it opens).

use serde_json::{Map, Value};

use crate::tick::{Lifecycle, LifecycleScope, MarketInfo};

/// What happened to a market, as far as following it is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarketChange {
    /// `created`: the market exists.
    Created,
    /// `activated`: open for trading.
    Activated,
    /// `determined`: the result is known; trading is over.
    Determined,
    /// `settled`: paid out; nothing more will happen in it.
    Settled,
    /// Anything else (`deactivated`, `close_date_updated`, `metadata_updated`...).
    Other,
}

/// What one lifecycle tick tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LifecycleNews {
    /// A market changed: what happened, and what is now known of it (`event` from
    /// `additional_metadata.event_ticker` on `created`).
    Market {
        /// What happened.
        change: MarketChange,
        /// What the message says about the market; `followed` is never set here.
        info: MarketInfo,
    },
    /// An event's lifecycle: the series it belongs to, when the message says.
    Event {
        /// The event ticker.
        event: String,
        /// Its series ticker.
        series: Option<String>,
    },
}

/// Reads a lifecycle tick about `market` (a market ticker, or an event ticker for event
/// scope). `None` for messages that say nothing discovery uses (`event_fee_update`).
pub fn read(market: &str, lifecycle: &Lifecycle) -> Option<LifecycleNews> {
    let body: Map<String, Value> = serde_json::from_str(&lifecycle.detail).unwrap_or_default();
    match lifecycle.scope {
        LifecycleScope::Event => (lifecycle.event == "event_lifecycle").then(|| LifecycleNews::Event {
            event: text(&body, "event_ticker").unwrap_or_else(|| market.to_owned()),
            series: text(&body, "series_ticker"),
        }),
        LifecycleScope::Market => {
            let meta = body.get("additional_metadata").and_then(Value::as_object);
            let (change, status) = match lifecycle.event.as_str() {
                "created" => (MarketChange::Created, None),
                "activated" => (MarketChange::Activated, Some("active")),
                "deactivated" => {
                    let paused = body.get("is_deactivated").and_then(Value::as_bool);
                    (MarketChange::Other, paused.map(|p| if p { "inactive" } else { "active" }))
                }
                "determined" => (MarketChange::Determined, Some("determined")),
                "settled" => (MarketChange::Settled, Some("finalized")),
                _ => (MarketChange::Other, None),
            };
            let info = MarketInfo {
                event: meta.and_then(|m| text(m, "event_ticker")),
                series: None,
                title: meta.and_then(|m| text(m, "title")),
                status: status.map(str::to_owned),
                open_ms: seconds_as_ms(&body, "open_ts"),
                close_ms: seconds_as_ms(&body, "close_ts"),
                followed: None,
            };
            Some(LifecycleNews::Market { change, info })
        }
    }
}

/// A non-empty string field.
fn text(body: &Map<String, Value>, key: &str) -> Option<String> {
    body.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// An integer seconds field as Unix ms (lifecycle times are whole seconds).
fn seconds_as_ms(body: &Map<String, Value>, key: &str) -> Option<i64> {
    body.get(key).and_then(Value::as_i64).and_then(|s| s.checked_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn market(event: &str, detail: &str) -> Option<LifecycleNews> {
        let l = Lifecycle { scope: LifecycleScope::Market, event: event.into(), detail: detail.into() };
        read("INXD-23SEP14-B4487", &l)
    }

    #[test]
    fn a_created_market_names_its_event_title_and_times() {
        let news = market(
            "created",
            r#"{"market_ticker":"INXD-23SEP14-B4487","event_type":"created","open_ts":1694635200,
               "close_ts":1694721600,"additional_metadata":{"title":"S&P 500 above 4487?",
               "event_ticker":"INXD-23SEP14"}}"#,
        );
        let info = MarketInfo {
            event: Some("INXD-23SEP14".into()),
            title: Some("S&P 500 above 4487?".into()),
            open_ms: Some(1_694_635_200_000),
            close_ms: Some(1_694_721_600_000),
            ..MarketInfo::default()
        };
        assert_eq!(news, Some(LifecycleNews::Market { change: MarketChange::Created, info }));
    }

    #[test]
    fn lifecycle_events_map_onto_the_rest_status_and_nothing_is_invented() {
        let status = |event: &str, detail: &str| match market(event, detail) {
            Some(LifecycleNews::Market { change, info }) => (change, info.status),
            other => panic!("{other:?}"),
        };
        assert_eq!(status("activated", "{}"), (MarketChange::Activated, Some("active".into())));
        assert_eq!(
            status("deactivated", r#"{"is_deactivated":true}"#),
            (MarketChange::Other, Some("inactive".into()))
        );
        assert_eq!(
            status("deactivated", r#"{"is_deactivated":false}"#),
            (MarketChange::Other, Some("active".into()))
        );
        assert_eq!(status("deactivated", "{}"), (MarketChange::Other, None));
        assert_eq!(status("determined", "{}"), (MarketChange::Determined, Some("determined".into())));
        assert_eq!(status("settled", "{}"), (MarketChange::Settled, Some("finalized".into())));
        assert_eq!(status("close_date_updated", r#"{"close_ts":"soon"}"#), (MarketChange::Other, None));
        // A body that is not JSON says nothing but the event.
        assert_eq!(status("created", "not json"), (MarketChange::Created, None));
    }

    #[test]
    fn an_event_lifecycle_names_its_series() {
        let l = Lifecycle {
            scope: LifecycleScope::Event,
            event: "event_lifecycle".into(),
            detail: r#"{"event_ticker":"KXBTCD-25DEC3117","series_ticker":"KXBTCD"}"#.into(),
        };
        assert_eq!(
            read("KXBTCD-25DEC3117", &l),
            Some(LifecycleNews::Event { event: "KXBTCD-25DEC3117".into(), series: Some("KXBTCD".into()) })
        );
        let fee = Lifecycle { event: "event_fee_update".into(), ..l };
        assert_eq!(read("KXBTCD-25DEC3117", &fee), None);
    }
}
