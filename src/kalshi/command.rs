//! Client commands, rendered to the JSON text frames Kalshi expects.
// Temporary minimal rendering; replaced by the full command module.
#![allow(missing_docs)]
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    AddMarkets,
    DeleteMarkets,
    GetSnapshot,
}

pub enum Command {
    Subscribe { id: u64, channel: &'static str, market_tickers: Vec<String>, use_yes_price: bool },
    Unsubscribe { id: u64, sids: Vec<u64> },
    UpdateSubscription { id: u64, sid: u64, action: Action, market_tickers: Vec<String> },
}

impl Command {
    pub fn to_text(&self) -> String {
        match self {
            Command::Subscribe { id, channel, market_tickers, use_yes_price } => {
                let mut params = json!({"channels": [channel]});
                if !market_tickers.is_empty() {
                    params["market_tickers"] = json!(market_tickers);
                }
                if *channel == "orderbook_delta" {
                    params["use_yes_price"] = json!(use_yes_price);
                }
                json!({"id": id, "cmd": "subscribe", "params": params}).to_string()
            }
            Command::Unsubscribe { id, sids } => {
                json!({"id": id, "cmd": "unsubscribe", "params": {"sids": sids}}).to_string()
            }
            Command::UpdateSubscription { id, sid, action, market_tickers } => {
                let action = match action {
                    Action::AddMarkets => "add_markets",
                    Action::DeleteMarkets => "delete_markets",
                    Action::GetSnapshot => "get_snapshot",
                };
                json!({"id": id, "cmd": "update_subscription", "params": {"sids": [sid], "market_tickers": market_tickers, "action": action}}).to_string()
            }
        }
    }
}
