//! The typed settings tree: built-in defaults < TOML file < `TICKD_` environment variables.
//!
//! Every field's `///` doubles as user documentation (mirrored in
//! `config/tickd.example.toml`). Unknown keys are errors that name the key. Secrets are never
//! in the TOML itself: the Kalshi private key comes from a PEM file named by path.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration of a tickd process.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where tickd keeps state that must survive a restart (the store's spool, later).
    pub state_dir: PathBuf,
    /// A program run when an alert is raised; details arrive in `TICKD_ALERT_*` variables.
    pub alert_command: Option<PathBuf>,
    /// How often `tickd run` prints one summary line per feed (until the store lands).
    #[serde(with = "humantime_serde")]
    pub summary_interval: Duration,
    /// Logging.
    pub log: LogSettings,
    /// Capacities of the tick bus.
    pub bus: BusSettings,
    /// The exchange connections, one entry per feed.
    pub feeds: Vec<FeedSettings>,
}

/// Logging output.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (human-readable) or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `tickd=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Capacities of the tick bus.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BusSettings {
    /// Ticks queued for each lossless consumer (the store). When full, feeds wait for room
    /// (backpressure), never drop.
    pub lossless_capacity: usize,
    /// Ticks kept for lossy consumers (dashboards). A consumer further behind than this is
    /// told how many it missed and resyncs.
    pub lossy_capacity: usize,
}

/// One feed: a named group of connections to one exchange endpoint with one set of markets.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedSettings {
    /// Unique name of the feed; appears in logs, metrics and every stored row.
    pub name: String,
    /// The exchange's WebSocket URL (`wss://…/trade-api/ws/v2`, or `ws://` for the simulator).
    #[serde(default = "defaults::url")]
    pub url: String,
    /// Kalshi API key id (not secret). Requires `key_file`. Omit both to connect unsigned.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Path of the PEM private key (PKCS#1 or PKCS#8). With systemd, a name under
    /// `$CREDENTIALS_DIRECTORY` is accepted as `credential:<name>`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Market data channels to subscribe for `markets`: any of `orderbook_delta`, `ticker`,
    /// `trade`.
    #[serde(default = "defaults::channels")]
    pub channels: Vec<String>,
    /// Also subscribe `market_lifecycle_v2` (all markets; not sharded).
    #[serde(default = "defaults::yes")]
    pub lifecycle: bool,
    /// Market tickers to follow.
    #[serde(default)]
    pub markets: Vec<String>,
    /// The most markets one connection carries; longer lists are spread over several.
    #[serde(default = "defaults::max_markets_per_connection")]
    pub max_markets_per_connection: usize,
    /// Sent explicitly with every orderbook subscribe. tickd normalizes both conventions.
    #[serde(default = "defaults::yes")]
    pub use_yes_price: bool,
    /// Interval of our WebSocket pings.
    #[serde(default = "defaults::ping_interval", with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A connection with no frame of any kind for `ping_interval + pong_timeout` is dead.
    #[serde(default = "defaults::pong_timeout", with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Limit on TCP + TLS + WebSocket handshake.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long to wait for a `subscribed`/`ok` before sending the command again.
    #[serde(default = "defaults::ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Frames larger than this are dropped and counted (the connection goes on).
    #[serde(default = "defaults::max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Reconnection policy.
    #[serde(default)]
    pub backoff: BackoffSettings,
    /// Consecutive failed connections before an alert is raised.
    #[serde(default = "defaults::max_reconnects")]
    pub max_reconnects: u32,
    /// What to do after the alert: keep retrying at the capped delay, stop this feed, or exit.
    #[serde(default)]
    pub on_max_reconnects: GiveUpPolicy,
}

/// Capped exponential backoff with jitter.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffSettings {
    /// Delay after the first failure.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Growth factor per consecutive failure.
    pub multiplier: u32,
    /// The most a delay can be.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// A connection must stay up and healthy this long before the failure count resets.
    #[serde(with = "humantime_serde")]
    pub healthy_after: Duration,
}

/// What a feed does after `max_reconnects` consecutive failures (the alert is raised in every
/// case).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GiveUpPolicy {
    /// Keep retrying at the capped delay.
    #[default]
    Retry,
    /// Stop this feed; the others go on.
    StopFeed,
    /// Exit the process with a non-zero status (let systemd decide).
    Exit,
}

mod defaults {
    use std::time::Duration;

    pub fn url() -> String {
        "wss://external-api-ws.kalshi.com/trade-api/ws/v2".into()
    }
    pub fn channels() -> Vec<String> {
        vec!["orderbook_delta".into(), "ticker".into(), "trade".into()]
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_markets_per_connection() -> usize {
        500
    }
    pub fn ping_interval() -> Duration {
        Duration::from_secs(25)
    }
    pub fn pong_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn ack_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_frame_bytes() -> usize {
        1 << 20
    }
    pub fn max_reconnects() -> u32 {
        10
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            state_dir: PathBuf::from("/var/lib/tickd"),
            alert_command: None,
            summary_interval: Duration::from_secs(10),
            log: LogSettings::default(),
            bus: BusSettings::default(),
            feeds: Vec::new(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { format: LogFormat::Text, level: "info".into() }
    }
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings { lossless_capacity: 65_536, lossy_capacity: 65_536 }
    }
}

impl Default for BackoffSettings {
    fn default() -> Self {
        BackoffSettings {
            initial: Duration::from_secs(1),
            multiplier: 2,
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(30),
        }
    }
}

impl FeedSettings {
    /// A feed with every default, for `name` and `url`.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        FeedSettings {
            name: name.into(),
            url: url.into(),
            key_id: None,
            key_file: None,
            channels: defaults::channels(),
            lifecycle: true,
            markets: Vec::new(),
            max_markets_per_connection: defaults::max_markets_per_connection(),
            use_yes_price: true,
            ping_interval: defaults::ping_interval(),
            pong_timeout: defaults::pong_timeout(),
            connect_timeout: defaults::connect_timeout(),
            ack_timeout: defaults::ack_timeout(),
            max_frame_bytes: defaults::max_frame_bytes(),
            backoff: BackoffSettings::default(),
            max_reconnects: defaults::max_reconnects(),
            on_max_reconnects: GiveUpPolicy::Retry,
        }
    }
}
