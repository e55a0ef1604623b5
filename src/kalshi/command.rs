//! Client commands, rendered to the JSON text frames Kalshi expects.
//!
//! In: what the session wants (a [`Command`]). Out: one text frame, `{"id","cmd","params"}`,
//! from [`Command::to_text`]. The rendering follows the protocol digest §3 to the letter:
//! `market_tickers` in list form and only for channels that take a market filter, and
//! `use_yes_price` sent explicitly whenever `orderbook_delta` is subscribed, because the frames
//! themselves never say which NO-price convention is in force.

use serde::Serialize;

/// A market-data channel of `trade-api/ws/v2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `orderbook_delta`: book snapshots and deltas; requires a market filter.
    OrderbookDelta,
    /// `ticker`: top of book and statistics; market filter optional.
    Ticker,
    /// `trade`: public trades; market filter optional.
    Trade,
    /// `market_lifecycle_v2`: market and event lifecycle; no market filter (all markets).
    MarketLifecycleV2,
    /// `multivariate_market_lifecycle`: lifecycle of combo markets; no market filter.
    MultivariateMarketLifecycle,
}

impl Channel {
    /// The channel's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::OrderbookDelta => "orderbook_delta",
            Channel::Ticker => "ticker",
            Channel::Trade => "trade",
            Channel::MarketLifecycleV2 => "market_lifecycle_v2",
            Channel::MultivariateMarketLifecycle => "multivariate_market_lifecycle",
        }
    }

    /// The channel named `name` on the wire (as in a `subscribed` reply), if we know it.
    pub fn from_name(name: &str) -> Option<Channel> {
        [
            Channel::OrderbookDelta,
            Channel::Ticker,
            Channel::Trade,
            Channel::MarketLifecycleV2,
            Channel::MultivariateMarketLifecycle,
        ]
        .into_iter()
        .find(|c| c.as_str() == name)
    }

    /// Whether the channel accepts `market_tickers`. Lifecycle channels always carry every
    /// market and take no filter.
    pub fn takes_market_filter(self) -> bool {
        !matches!(self, Channel::MarketLifecycleV2 | Channel::MultivariateMarketLifecycle)
    }
}

impl Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What an `update_subscription` does to the subscription's market list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateAction {
    /// Add markets; orderbook subscriptions then send a snapshot per added market.
    AddMarkets,
    /// Remove markets.
    DeleteMarkets,
    /// Re-send a snapshot of each listed market on the same sid, without changing the
    /// subscription (orderbook only): the cheap repair after a sequence gap.
    GetSnapshot,
}

/// One client command. Ids are chosen by the caller, unique per connection, and non-zero
/// (Kalshi treats `id: 0` as "no id", which would make the reply impossible to correlate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `subscribe`: one new subscription (sid) per channel listed.
    Subscribe {
        /// Command id, echoed in every reply.
        id: u64,
        /// Channels to open, one sid each, in this order.
        channels: Vec<Channel>,
        /// Markets to filter on. Sent only when non-empty and some channel takes a filter;
        /// every filtered channel of the command gets the whole list. Do not mix lifecycle
        /// channels with filtered ones in one command.
        market_tickers: Vec<String>,
        /// Report NO-side book levels on the YES price scale. Sent explicitly whenever
        /// `orderbook_delta` is among the channels, since Kalshi plans to flip its default.
        use_yes_price: bool,
        /// `ticker`: push a current ticker per market right away. Omitted when `None`.
        send_initial_snapshot: Option<bool>,
    },
    /// `unsubscribe`: end these subscriptions.
    Unsubscribe {
        /// Command id.
        id: u64,
        /// Subscriptions to end.
        sids: Vec<u64>,
    },
    /// `update_subscription`: change (or re-snapshot) one subscription's markets.
    UpdateSubscription {
        /// Command id; `get_snapshot` replies carry it.
        id: u64,
        /// The subscription to change; sent as `"sids":[sid]`.
        sid: u64,
        /// Markets to add, remove or re-snapshot.
        market_tickers: Vec<String>,
        /// What to do with them.
        action: UpdateAction,
    },
    /// `list_subscriptions`: ask for the active `(channel, sid)` pairs.
    ListSubscriptions {
        /// Command id.
        id: u64,
    },
}

impl Command {
    /// The command id, for matching replies.
    pub fn id(&self) -> u64 {
        match *self {
            Command::Subscribe { id, .. }
            | Command::Unsubscribe { id, .. }
            | Command::UpdateSubscription { id, .. }
            | Command::ListSubscriptions { id } => id,
        }
    }

    /// The command as the JSON text frame to send.
    pub fn to_text(&self) -> String {
        let envelope = match self {
            Command::Subscribe { id, channels, market_tickers, use_yes_price, send_initial_snapshot } => {
                let filtered = channels.iter().any(|c| c.takes_market_filter());
                let book = channels.contains(&Channel::OrderbookDelta);
                Envelope {
                    id: *id,
                    cmd: "subscribe",
                    params: Some(Params::Subscribe {
                        channels,
                        market_tickers: (filtered && !market_tickers.is_empty()).then_some(market_tickers),
                        use_yes_price: book.then_some(*use_yes_price),
                        send_initial_snapshot: *send_initial_snapshot,
                    }),
                }
            }
            Command::Unsubscribe { id, sids } => {
                Envelope { id: *id, cmd: "unsubscribe", params: Some(Params::Unsubscribe { sids }) }
            }
            Command::UpdateSubscription { id, sid, market_tickers, action } => Envelope {
                id: *id,
                cmd: "update_subscription",
                params: Some(Params::Update { sids: [*sid], market_tickers, action: *action }),
            },
            Command::ListSubscriptions { id } => {
                Envelope { id: *id, cmd: "list_subscriptions", params: None }
            }
        };
        // Serializing structs of integers, booleans and strings into memory cannot fail; the
        // fallback is unreachable and would only show as a command the server rejects.
        serde_json::to_string(&envelope).unwrap_or_default()
    }
}

/// `{"id","cmd","params"}`, fields in the order of Kalshi's examples.
#[derive(Serialize)]
struct Envelope<'c> {
    id: u64,
    cmd: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<Params<'c>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Params<'c> {
    Subscribe {
        channels: &'c [Channel],
        #[serde(skip_serializing_if = "Option::is_none")]
        market_tickers: Option<&'c [String]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        use_yes_price: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        send_initial_snapshot: Option<bool>,
    },
    Unsubscribe {
        sids: &'c [u64],
    },
    Update {
        sids: [u64; 1],
        market_tickers: &'c [String],
        action: UpdateAction,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tickers(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn commands_render_exactly() {
        let cases = [
            (
                "book and ticker on two markets: list form, explicit use_yes_price",
                Command::Subscribe {
                    id: 2,
                    channels: vec![Channel::OrderbookDelta, Channel::Ticker],
                    market_tickers: tickers(&["FED-23DEC-T3.00", "CORIVER-2024-T1030"]),
                    use_yes_price: true,
                    send_initial_snapshot: None,
                },
                r#"{"id":2,"cmd":"subscribe","params":{"channels":["orderbook_delta","ticker"],"market_tickers":["FED-23DEC-T3.00","CORIVER-2024-T1030"],"use_yes_price":true}}"#,
            ),
            (
                "use_yes_price false is still sent for the book",
                Command::Subscribe {
                    id: 1,
                    channels: vec![Channel::OrderbookDelta],
                    market_tickers: tickers(&["CPI-22DEC-TN0.1"]),
                    use_yes_price: false,
                    send_initial_snapshot: None,
                },
                r#"{"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta"],"market_tickers":["CPI-22DEC-TN0.1"],"use_yes_price":false}}"#,
            ),
            (
                "lifecycle takes no market filter",
                Command::Subscribe {
                    id: 5,
                    channels: vec![Channel::MarketLifecycleV2],
                    market_tickers: tickers(&["IGNORED"]),
                    use_yes_price: true,
                    send_initial_snapshot: None,
                },
                r#"{"id":5,"cmd":"subscribe","params":{"channels":["market_lifecycle_v2"]}}"#,
            ),
            (
                "ticker with an initial snapshot, no use_yes_price",
                Command::Subscribe {
                    id: 7,
                    channels: vec![Channel::Ticker],
                    market_tickers: tickers(&["FED-23DEC-T3.00"]),
                    use_yes_price: true,
                    send_initial_snapshot: Some(true),
                },
                r#"{"id":7,"cmd":"subscribe","params":{"channels":["ticker"],"market_tickers":["FED-23DEC-T3.00"],"send_initial_snapshot":true}}"#,
            ),
            (
                "all trades: no market list at all",
                Command::Subscribe {
                    id: 8,
                    channels: vec![Channel::Trade],
                    market_tickers: vec![],
                    use_yes_price: false,
                    send_initial_snapshot: Some(false),
                },
                r#"{"id":8,"cmd":"subscribe","params":{"channels":["trade"],"send_initial_snapshot":false}}"#,
            ),
            (
                "unsubscribe",
                Command::Unsubscribe { id: 124, sids: vec![1, 2] },
                r#"{"id":124,"cmd":"unsubscribe","params":{"sids":[1,2]}}"#,
            ),
            (
                "add markets",
                Command::UpdateSubscription {
                    id: 124,
                    sid: 456,
                    market_tickers: tickers(&["NEW-MARKET-1", "NEW-MARKET-2"]),
                    action: UpdateAction::AddMarkets,
                },
                r#"{"id":124,"cmd":"update_subscription","params":{"sids":[456],"market_tickers":["NEW-MARKET-1","NEW-MARKET-2"],"action":"add_markets"}}"#,
            ),
            (
                "delete markets",
                Command::UpdateSubscription {
                    id: 125,
                    sid: 456,
                    market_tickers: tickers(&["MARKET-TO-REMOVE-1"]),
                    action: UpdateAction::DeleteMarkets,
                },
                r#"{"id":125,"cmd":"update_subscription","params":{"sids":[456],"market_tickers":["MARKET-TO-REMOVE-1"],"action":"delete_markets"}}"#,
            ),
            (
                "get snapshot",
                Command::UpdateSubscription {
                    id: 127,
                    sid: 456,
                    market_tickers: tickers(&["MARKET-1", "MARKET-2"]),
                    action: UpdateAction::GetSnapshot,
                },
                r#"{"id":127,"cmd":"update_subscription","params":{"sids":[456],"market_tickers":["MARKET-1","MARKET-2"],"action":"get_snapshot"}}"#,
            ),
            (
                "list subscriptions has no params",
                Command::ListSubscriptions { id: 3 },
                r#"{"id":3,"cmd":"list_subscriptions"}"#,
            ),
        ];
        for (name, command, want) in cases {
            assert_eq!(command.to_text(), want, "{name}");
        }
    }

    #[test]
    fn tickers_are_escaped_as_json() {
        let command = Command::Subscribe {
            id: 9,
            channels: vec![Channel::OrderbookDelta],
            market_tickers: tickers(&["A\"B", "C\\D", "E\nF", "G\u{1}H", "É"]),
            use_yes_price: true,
            send_initial_snapshot: None,
        };
        let text = command.to_text();
        assert_eq!(
            text,
            r#"{"id":9,"cmd":"subscribe","params":{"channels":["orderbook_delta"],"market_tickers":["A\"B","C\\D","E\nF","G\u0001H","É"],"use_yes_price":true}}"#
        );
        let back: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(back["params"]["market_tickers"][3], "G\u{1}H");
    }

    #[test]
    fn channel_names_round_trip() {
        for channel in [
            Channel::OrderbookDelta,
            Channel::Ticker,
            Channel::Trade,
            Channel::MarketLifecycleV2,
            Channel::MultivariateMarketLifecycle,
        ] {
            assert_eq!(Channel::from_name(channel.as_str()), Some(channel));
        }
        assert_eq!(Channel::from_name("ticker_v2"), None);
        assert!(Channel::Trade.takes_market_filter());
        assert!(!Channel::MarketLifecycleV2.takes_market_filter());
    }

    #[test]
    fn ids_are_reported() {
        assert_eq!(Command::ListSubscriptions { id: 42 }.id(), 42);
        assert_eq!(Command::Unsubscribe { id: 43, sids: vec![1] }.id(), 43);
    }
}
