//! `[[feeds]]`: one table per feed, with its reconnection policy, and the checks of its URL,
//! markets, channels and signing key.
//!
//! The key is the venue's business: this module names no venue type. The venue says how a key
//! is loaded by implementing [`VenueKey`] (Kalshi's is in `kalshi::sign`); validation loads each
//! signed feed's key once and the settings carry it ([`FeedSettings::signing_key`]), so the
//! feeds sign with the very key that was checked.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Problems;
use super::secrets::{CREDENTIAL_PREFIX, credential_name, resolve_key_path};

/// The market data channels a feed may subscribe for its `markets`.
pub const MARKET_CHANNELS: [&str; 3] = ["orderbook_delta", "ticker", "trade"];

/// One feed: a named group of connections to one exchange endpoint with one set of markets.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedSettings {
    /// Unique name of the feed; appears in logs, metrics and every stored row.
    pub name: String,
    /// The exchange's WebSocket URL (`wss://…/trade-api/ws/v2`, or `ws://` for the simulator).
    #[serde(default = "defaults::url")]
    pub url: String,
    /// Base URL of the exchange's REST API (`https://…/trade-api/v2`), used to list markets and
    /// fetch trades and order books. Default: the REST host paired with `url`'s WebSocket host
    /// for Kalshi's production and demo hosts, otherwise `url` with `ws`→`http`,
    /// `wss`→`https` and `/trade-api/ws/v2`→`/trade-api/v2` (a simulator serves both on one
    /// port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest_url: Option<String>,
    /// REST requests per second this feed may make, retries included (a budget shared by
    /// everything the feed asks of the REST API; bursts up to one second's worth).
    #[serde(default = "defaults::rest_rate")]
    pub rest_rate: u32,
    /// Limit on one REST request: connect, TLS, request and the whole answer. A request that
    /// takes longer is abandoned and tried again like a failed one.
    #[serde(default = "defaults::rest_timeout", with = "humantime_serde")]
    pub rest_timeout: Duration,
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
    /// Series whose markets to follow (`KXBTCD`): every market of the series not yet settled,
    /// found over the REST API and through `market_lifecycle_v2` as markets come and go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<String>,
    /// Events whose markets to follow (`KXHIGHNY-26DEC07`), like `series`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// How often the markets of `series` and `events` are listed again over the REST API
    /// (between listings, lifecycle messages add and remove markets).
    #[serde(default = "defaults::discovery_interval", with = "humantime_serde")]
    pub discovery_interval: Duration,
    /// How long a market of `series` or `events` stays followed after it is determined or
    /// settled, so that its last trades and its settlement are recorded.
    #[serde(default = "defaults::settled_grace", with = "humantime_serde")]
    pub settled_grace: Duration,
    /// After every window in which the live stream may have missed trades (a disconnect, a
    /// sequence gap on the `trade` channel, a start of tickd), fetch that window's trades
    /// over the REST API in the background and record those not yet stored. Needs the
    /// `trade` channel. Read at start.
    #[serde(default = "defaults::yes")]
    pub backfill: bool,
    /// How far back a backfill reaches: at a start, each market's trades are fetched from its
    /// newest stored trade, but from no further back than this; a window older than this is
    /// left missing. Read at start.
    #[serde(default = "defaults::backfill_max_window", with = "humantime_serde")]
    pub backfill_max_window: Duration,
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
    /// What to do after the alert: keep retrying every `backoff.max`, stop this feed, or exit.
    #[serde(default)]
    pub on_max_reconnects: GiveUpPolicy,
    /// `feed_stale` for this feed's connections: no market data for this long while connected.
    /// Overrides `alerts.feed_stale_after`; `0s` turns the check off for this feed.
    #[serde(default, with = "humantime_serde::option", skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<Duration>,
    /// A market with no update of any kind (ticker, trade, book) for this long while its
    /// connection is live is checked against the REST API: its order book and newest trades.
    /// One whose book differs or that has trades tickd never received (twice, with nothing
    /// received in between) is frozen: asked for afresh on the same connection, recorded in
    /// `feed_events` and alerted (`market_frozen`). Checks use at most half of `rest_rate`,
    /// quiet markets taking turns. `0s` turns the check off.
    #[serde(default = "defaults::market_quiet_after", with = "humantime_serde")]
    pub market_quiet_after: Duration,
    /// Not a setting: the signing key once loaded from `key_id` and `key_file`.
    #[serde(skip)]
    pub loaded_key: LoadedKey,
}

/// The most `rest_rate` may be: above any published tier of Kalshi's (400 reads/s), so a
/// larger value is a typo.
pub const MAX_REST_RATE: u32 = 10_000;

/// REST bases paired with WebSocket hosts that do not follow the derivation rule (Kalshi's
/// recommended production and demo hosts differ between the two), and the legacy hosts that
/// do, for the record: `(WebSocket host, REST base)`.
const KNOWN_REST_BASES: [(&str, &str); 4] = [
    ("external-api-ws.kalshi.com", "https://external-api.kalshi.com/trade-api/v2"),
    ("api.elections.kalshi.com", "https://api.elections.kalshi.com/trade-api/v2"),
    ("external-api-ws.demo.kalshi.co", "https://external-api.demo.kalshi.co/trade-api/v2"),
    ("demo-api.kalshi.co", "https://demo-api.kalshi.co/trade-api/v2"),
];

/// The WebSocket path whose REST sibling is derived (`/trade-api/ws/v2` → `/trade-api/v2`).
const WS_PATH_SUFFIX: &str = "/ws/v2";

/// How a feed's venue loads its signing key. The venue implements this for [`FeedSettings`],
/// so that settings name no venue type; [`FeedSettings::signing_key`] calls it once.
pub trait VenueKey {
    /// The key, checked and ready to sign with.
    type Key: Send + Sync;

    /// Reads and checks the private key file at `path` for the API key `key_id`. The error
    /// names the file and what is wrong with it, never its content.
    fn load_key(key_id: &str, path: &Path) -> Result<Self::Key, String>;
}

/// A feed's signing key once [`FeedSettings::signing_key`] has loaded it; a clone made after
/// that carries the same key. Not a setting: never read from or written to TOML, never printed, and equal in every feed,
/// so that comparing settings (as a reload does) compares only what the user wrote.
#[derive(Clone, Default)]
pub struct LoadedKey(OnceLock<Arc<<FeedSettings as VenueKey>::Key>>);

impl PartialEq for LoadedKey {
    fn eq(&self, _: &LoadedKey) -> bool {
        true
    }
}

impl fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() { "<loaded>" } else { "<not loaded>" })
    }
}

/// Capped exponential backoff with jitter.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffSettings {
    /// Delay after the first failure.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Growth factor per consecutive failure: any number from 1 (`1.5`, `2`; `1` keeps every
    /// delay at `initial`).
    pub multiplier: f64,
    /// The most a delay can be.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// The fraction of each delay drawn at random, from 0 to 1: a delay of base `d` is drawn
    /// from `[d × (1 − jitter), d]`. `0.5` (equal jitter) spreads feeds that fail together
    /// while keeping delays growing; `0` waits exactly `d`; `1` draws from `[0, d]`.
    pub jitter: f64,
    /// A connection must stay up and healthy this long before the failure count resets.
    #[serde(with = "humantime_serde")]
    pub healthy_after: Duration,
}

/// What a feed does after `max_reconnects` consecutive failures (the alert is raised in every
/// case).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GiveUpPolicy {
    /// Keep retrying, every `backoff.max` (jittered) until a connection stays healthy.
    #[default]
    Retry,
    /// Stop this feed; the others go on.
    StopFeed,
    /// Exit the process with a non-zero status (let systemd decide).
    Exit,
}

pub(super) mod defaults {
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
    pub fn rest_rate() -> u32 {
        10
    }
    pub fn rest_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn discovery_interval() -> Duration {
        Duration::from_secs(300)
    }
    pub fn settled_grace() -> Duration {
        Duration::from_secs(600)
    }
    pub fn market_quiet_after() -> Duration {
        Duration::from_secs(60)
    }
    pub fn backfill_max_window() -> Duration {
        Duration::from_secs(24 * 3600)
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

impl Default for BackoffSettings {
    fn default() -> Self {
        BackoffSettings {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(30),
            jitter: 0.5,
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
            rest_url: None,
            rest_rate: defaults::rest_rate(),
            rest_timeout: defaults::rest_timeout(),
            key_id: None,
            key_file: None,
            channels: defaults::channels(),
            lifecycle: true,
            markets: Vec::new(),
            series: Vec::new(),
            events: Vec::new(),
            discovery_interval: defaults::discovery_interval(),
            settled_grace: defaults::settled_grace(),
            backfill: true,
            backfill_max_window: defaults::backfill_max_window(),
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
            stale_after: None,
            market_quiet_after: defaults::market_quiet_after(),
            loaded_key: LoadedKey::default(),
        }
    }
}

impl FeedSettings {
    /// The path of the PEM key file, with `credential:<name>` resolved to
    /// `$CREDENTIALS_DIRECTORY/<name>`. Without `$CREDENTIALS_DIRECTORY` such a value is
    /// returned as written, so that an error about it names what the user wrote.
    pub fn key_path(&self) -> Option<PathBuf> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY");
        self.key_file.as_deref().map(|file| resolve_key_path(file, dir.as_deref()))
    }

    /// The key this feed signs its handshakes with; `None` when it connects unsigned (no
    /// `key_id` or no `key_file`). The first call reads the key file, and [`Settings::validate`]
    /// makes it; later calls, on these settings or their clones, return the same key.
    ///
    /// [`Settings::validate`]: super::Settings::validate
    pub fn signing_key(&self) -> Result<Option<Arc<<Self as VenueKey>::Key>>, String> {
        let (Some(key_id), Some(path)) = (&self.key_id, self.key_path()) else {
            return Ok(None);
        };
        if let Some(key) = self.loaded_key.0.get() {
            return Ok(Some(key.clone()));
        }
        let key = Arc::new(Self::load_key(key_id, &path)?);
        Ok(Some(self.loaded_key.0.get_or_init(|| key).clone()))
    }

    /// The base URL of the feed's REST API, without a trailing `/`: `rest_url` when given,
    /// else the one paired with `url` (see [`FeedSettings::rest_url`]). The error says why
    /// neither gives one.
    pub fn rest_base(&self) -> Result<url::Url, String> {
        let base = match &self.rest_url {
            Some(raw) => check_rest_url(raw)?,
            None => derive_rest_base(&self.url)?,
        };
        Ok(base)
    }

    pub(super) fn validate_into(&self, key: &str, problems: &mut Problems) {
        if self.name.trim().is_empty() {
            problems.push(format!("{key}.name"), "is empty; every feed needs a unique name");
        }
        let url_ok = match check_ws_url(&self.url) {
            Ok(()) => true,
            Err(message) => {
                problems.push(format!("{key}.url"), message);
                false
            }
        };
        // An unusable `url` is reported once, under its own key.
        if (url_ok || self.rest_url.is_some())
            && let Err(message) = self.rest_base()
        {
            problems.push(format!("{key}.rest_url"), message);
        }
        if self.rest_rate == 0 || self.rest_rate > MAX_REST_RATE {
            problems.push(
                format!("{key}.rest_rate"),
                format!("{} is not a rate from 1 to {MAX_REST_RATE} requests per second", self.rest_rate),
            );
        }
        problems.positive(&format!("{key}.rest_timeout"), self.rest_timeout);
        if !self.market_quiet_after.is_zero() && self.market_quiet_after < MIN_MARKET_QUIET_AFTER {
            problems.push(
                format!("{key}.market_quiet_after"),
                format!(
                    "{:?} is below {MIN_MARKET_QUIET_AFTER:?} (or `0s` to turn the check off): a \
                     market quieter than that is normal, and each check takes REST requests",
                    self.market_quiet_after
                ),
            );
        }
        self.validate_key(key, problems);

        let mut channels = HashSet::new();
        for (j, channel) in self.channels.iter().enumerate() {
            if !MARKET_CHANNELS.contains(&channel.as_str()) {
                problems.push(
                    format!("{key}.channels[{j}]"),
                    format!("unknown channel `{channel}`; expected one of {MARKET_CHANNELS:?}"),
                );
            } else if !channels.insert(channel.as_str()) {
                problems.push(format!("{key}.channels[{j}]"), format!("`{channel}` is listed twice"));
            }
        }
        let mut markets = HashSet::new();
        for (j, market) in self.markets.iter().enumerate() {
            if market.trim().is_empty() || market.chars().any(char::is_whitespace) {
                problems.push(
                    format!("{key}.markets[{j}]"),
                    format!("{market:?} is not a market ticker (empty or contains whitespace)"),
                );
            } else if !markets.insert(market.as_str()) {
                problems.push(format!("{key}.markets[{j}]"), format!("`{market}` is listed twice"));
            }
        }
        self.validate_discovery(key, problems);
        if self.markets.is_empty() && !self.discovers() {
            problems.push(
                format!("{key}.markets"),
                "the feed has nothing to follow: give `markets`, `series` or `events`",
            );
        } else if self.channels.is_empty() && !self.lifecycle && !self.discovers() {
            problems.push(
                format!("{key}.channels"),
                "the feed subscribes to nothing: give `channels`, or set `lifecycle = true`",
            );
        }

        problems.at_least_one(&format!("{key}.max_markets_per_connection"), self.max_markets_per_connection);
        problems.at_least_one(&format!("{key}.max_frame_bytes"), self.max_frame_bytes);
        problems.at_least_one(&format!("{key}.max_reconnects"), self.max_reconnects as usize);
        problems.positive(&format!("{key}.ping_interval"), self.ping_interval);
        problems.positive(&format!("{key}.pong_timeout"), self.pong_timeout);
        problems.positive(&format!("{key}.connect_timeout"), self.connect_timeout);
        problems.positive(&format!("{key}.ack_timeout"), self.ack_timeout);
        problems.positive(&format!("{key}.backfill_max_window"), self.backfill_max_window);

        let backoff = &self.backoff;
        problems.positive(&format!("{key}.backoff.initial"), backoff.initial);
        problems.positive(&format!("{key}.backoff.max"), backoff.max);
        problems.positive(&format!("{key}.backoff.healthy_after"), backoff.healthy_after);
        if backoff.initial > backoff.max {
            problems.push(
                format!("{key}.backoff.initial"),
                format!("{:?} is more than `backoff.max` ({:?})", backoff.initial, backoff.max),
            );
        }
        if !(backoff.multiplier.is_finite() && backoff.multiplier >= 1.0) {
            problems.push(
                format!("{key}.backoff.multiplier"),
                format!(
                    "{} is not a growth factor: give a number of at least 1 (`1.5`, `2`)",
                    backoff.multiplier
                ),
            );
        }
        if !(0.0..=1.0).contains(&backoff.jitter) {
            problems.push(
                format!("{key}.backoff.jitter"),
                format!(
                    "{} is not a fraction of the delay: give a number from 0 (no randomness) to 1 \
                     (`0.5`, the default, draws each delay from its upper half)",
                    backoff.jitter
                ),
            );
        }
    }

    /// Whether the feed follows series or events (and so runs market discovery).
    pub fn discovers(&self) -> bool {
        !self.series.is_empty() || !self.events.is_empty()
    }

    /// `series` and `events` hold tickers, each once; following them needs `lifecycle` (new
    /// markets are announced there) and sensible intervals.
    fn validate_discovery(&self, key: &str, problems: &mut Problems) {
        for (name, list, what) in [("series", &self.series, "series"), ("events", &self.events, "event")] {
            let mut seen = HashSet::new();
            for (j, ticker) in list.iter().enumerate() {
                if let Err(why) = check_group_ticker(ticker) {
                    problems.push(
                        format!("{key}.{name}[{j}]"),
                        format!("{ticker:?} is not a {what} ticker: {why}"),
                    );
                } else if !seen.insert(ticker.as_str()) {
                    problems.push(format!("{key}.{name}[{j}]"), format!("`{ticker}` is listed twice"));
                }
            }
        }
        for (j, event) in self.events.iter().enumerate() {
            if !event.contains('-') && check_group_ticker(event).is_ok() {
                problems.push(
                    format!("{key}.events[{j}]"),
                    format!(
                        "`{event}` looks like a series ticker (an event ticker is `SERIES-…`, \
                         e.g. `KXHIGHNY-26DEC07`); put it under `series`"
                    ),
                );
            }
        }
        if !self.discovers() {
            return;
        }
        if !self.lifecycle {
            problems.push(
                format!("{key}.lifecycle"),
                "must be true for a feed with `series` or `events`: new markets are announced on \
                 `market_lifecycle_v2`",
            );
        }
        if self.channels.is_empty() {
            problems.push(
                format!("{key}.channels"),
                "is empty: the markets of `series` and `events` would be followed with no data",
            );
        }
        problems.positive(&format!("{key}.discovery_interval"), self.discovery_interval);
        if self.discovery_interval > Duration::ZERO && self.discovery_interval < MIN_DISCOVERY_INTERVAL {
            problems.push(
                format!("{key}.discovery_interval"),
                format!(
                    "{:?} is below {MIN_DISCOVERY_INTERVAL:?}: each listing takes REST requests \
                     from the feed's `rest_rate`",
                    self.discovery_interval
                ),
            );
        }
    }

    /// `key_id` and `key_file` come together, and the key file must hold a key the venue
    /// accepts; the key is kept (see [`FeedSettings::signing_key`]).
    fn validate_key(&self, key: &str, problems: &mut Problems) {
        if let Some(name) = self.key_file.as_deref().and_then(credential_name) {
            if name.is_empty() || name.contains('/') {
                problems.push(
                    format!("{key}.key_file"),
                    format!("`{CREDENTIAL_PREFIX}{name}` needs a credential name without `/`"),
                );
                return;
            }
            if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
                problems.push(
                    format!("{key}.key_file"),
                    format!(
                        "`{CREDENTIAL_PREFIX}{name}` needs $CREDENTIALS_DIRECTORY, which \
                         systemd sets for a unit with `LoadCredential={name}:…`"
                    ),
                );
                return;
            }
        }
        match (&self.key_id, self.key_path()) {
            (None, None) => {}
            (Some(_), None) => problems.push(
                format!("{key}.key_file"),
                "is missing: `key_id` needs `key_file` (or omit both to connect unsigned)",
            ),
            (None, Some(_)) => problems.push(
                format!("{key}.key_id"),
                "is missing: `key_file` needs `key_id` (or omit both to connect unsigned)",
            ),
            (Some(id), Some(_)) if id.trim().is_empty() => {
                problems.push(format!("{key}.key_id"), "is empty");
            }
            (Some(_), Some(_)) => {
                if let Err(e) = self.signing_key() {
                    problems.push(format!("{key}.key_file"), e);
                }
            }
        }
    }
}

/// The shortest `discovery_interval`: a listing costs REST requests from the feed's budget.
pub const MIN_DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest `market_quiet_after` other than `0s` (off).
pub const MIN_MARKET_QUIET_AFTER: Duration = Duration::from_secs(1);

/// A series or event ticker as Kalshi spells them: upper-case letters, digits and `-`, `_`,
/// `.`, starting with a letter or digit (`KXBTCD`, `KXHIGHNY-26DEC07`, `INXD-23SEP14`).
fn check_group_ticker(ticker: &str) -> Result<(), &'static str> {
    let Some(first) = ticker.chars().next() else {
        return Err("empty");
    };
    if ticker.len() > 100 {
        return Err("longer than 100 characters");
    }
    if !first.is_ascii_alphanumeric() {
        return Err("must start with a letter or a digit");
    }
    if ticker.ends_with('-') {
        return Err("ends with `-`");
    }
    if let Some(c) =
        ticker.chars().find(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit() || "-_.".contains(*c)))
    {
        return Err(if c.is_ascii_lowercase() {
            "has lower-case letters (Kalshi's tickers are upper-case)"
        } else {
            "only upper-case letters, digits, `-`, `_` and `.` are allowed"
        });
    }
    Ok(())
}

/// A WebSocket URL with a host: `ws://` (simulator, tests) or `wss://` (the exchange).
fn check_ws_url(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(format!("`{raw}` has scheme `{}`; expected `wss` or `ws`", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{raw}` has no host"));
    }
    Ok(())
}

/// An `http` or `https` URL with a host and nothing after the path: the REST base.
fn check_rest_url(raw: &str) -> Result<url::Url, String> {
    let mut url = url::Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{raw}` has scheme `{}`; expected `https` or `http`", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{raw}` has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{raw}` has a query or fragment; give the base URL only (`https://…/trade-api/v2`)"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("carries user info; REST requests are signed with `key_id` and `key_file` instead".into());
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

/// The REST base belonging to a WebSocket URL: a known host's pair, else the same host and
/// port with `ws`→`http`, `wss`→`https` and `…/ws/v2`→`…/v2`.
fn derive_rest_base(ws: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(ws).map_err(|e| format!("cannot be derived from `url`: {e}"))?;
    let host = url.host_str().unwrap_or("");
    if url.scheme() == "wss"
        && url.port().is_none()
        && let Some((_, base)) = KNOWN_REST_BASES.iter().find(|(h, _)| h.eq_ignore_ascii_case(host))
    {
        return check_rest_url(base);
    }
    let scheme = match url.scheme() {
        "wss" => "https",
        "ws" => "http",
        other => return Err(format!("cannot be derived from a `{other}` url; set `rest_url`")),
    };
    let path = url.path().trim_end_matches('/');
    let Some(prefix) = path.strip_suffix(WS_PATH_SUFFIX) else {
        return Err(format!(
            "cannot be derived from `{ws}`, whose path does not end in `/ws/v2`; set `rest_url`"
        ));
    };
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let host = match url.host() {
        Some(url::Host::Ipv6(a)) => format!("[{a}]"),
        _ => host.to_owned(),
    };
    check_rest_url(&format!("{scheme}://{host}{port}{prefix}/v2"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{problem_keys, valid};

    #[test]
    fn the_rest_base_is_paired_with_known_hosts_and_derived_for_others() {
        let cases = [
            (
                "wss://external-api-ws.kalshi.com/trade-api/ws/v2",
                "https://external-api.kalshi.com/trade-api/v2",
            ),
            (
                "wss://api.elections.kalshi.com/trade-api/ws/v2",
                "https://api.elections.kalshi.com/trade-api/v2",
            ),
            (
                "wss://external-api-ws.demo.kalshi.co/trade-api/ws/v2",
                "https://external-api.demo.kalshi.co/trade-api/v2",
            ),
            ("wss://demo-api.kalshi.co/trade-api/ws/v2", "https://demo-api.kalshi.co/trade-api/v2"),
            ("ws://127.0.0.1:9100/trade-api/ws/v2", "http://127.0.0.1:9100/trade-api/v2"),
            (
                "wss://proxy.example:8443/kalshi/trade-api/ws/v2/",
                "https://proxy.example:8443/kalshi/trade-api/v2",
            ),
            ("ws://[::1]:9100/trade-api/ws/v2", "http://[::1]:9100/trade-api/v2"),
        ];
        for (ws, rest) in cases {
            let feed = FeedSettings::new("f", ws);
            assert_eq!(feed.rest_base().map(|u| u.to_string()), Ok(rest.to_owned()), "{ws}");
        }
        let mut feed = FeedSettings::new("f", "ws://127.0.0.1:9100/trade-api/ws/v2");
        feed.rest_url = Some("https://rest.example/trade-api/v2/".into());
        assert_eq!(feed.rest_base().map(|u| u.to_string()), Ok("https://rest.example/trade-api/v2".into()));
    }

    #[test]
    fn a_rest_url_that_cannot_be_used_or_derived_is_named() {
        for bad in [
            "ftp://x/trade-api/v2",
            "not a url",
            "https://",
            "https://x/trade-api/v2?token=1",
            "https://user:pw@x/trade-api/v2",
            "wss://x/trade-api/v2",
        ] {
            let mut settings = valid();
            settings.feeds[0].rest_url = Some(bad.into());
            assert_eq!(problem_keys(&settings), ["feeds[0].rest_url"], "{bad}");
        }
        // Nothing to derive from: the WebSocket path is not Kalshi's.
        let mut settings = valid();
        settings.feeds[0].url = "wss://proxy.example/stream".into();
        let message = settings.validate().unwrap_err().to_string();
        assert!(message.contains("feeds[0].rest_url") && message.contains("set `rest_url`"), "{message}");
        settings.feeds[0].rest_url = Some("https://proxy.example/rest/v2".into());
        assert_eq!(problem_keys(&settings), Vec::<String>::new());
        // A broken `url` is reported once, under its own key.
        settings.feeds[0].url = "htp://x".into();
        settings.feeds[0].rest_url = None;
        assert_eq!(problem_keys(&settings), ["feeds[0].url"]);
    }

    #[test]
    fn market_quiet_after_is_off_or_at_least_a_second() {
        let mut settings = valid();
        assert_eq!(settings.feeds[0].market_quiet_after, Duration::from_secs(60), "the default");
        settings.feeds[0].market_quiet_after = Duration::ZERO;
        assert_eq!(problem_keys(&settings), Vec::<String>::new(), "off");
        settings.feeds[0].market_quiet_after = Duration::from_millis(500);
        assert_eq!(problem_keys(&settings), ["feeds[0].market_quiet_after"]);
        settings.feeds[0].market_quiet_after = MIN_MARKET_QUIET_AFTER;
        assert_eq!(problem_keys(&settings), Vec::<String>::new());
    }

    #[test]
    fn the_rest_rate_and_timeout_are_bounded() {
        let mut settings = valid();
        settings.feeds[0].rest_rate = 0;
        settings.feeds[0].rest_timeout = Duration::ZERO;
        assert_eq!(problem_keys(&settings), ["feeds[0].rest_rate", "feeds[0].rest_timeout"]);
        settings.feeds[0].rest_rate = MAX_REST_RATE + 1;
        settings.feeds[0].rest_timeout = Duration::from_secs(1);
        assert_eq!(problem_keys(&settings), ["feeds[0].rest_rate"]);
        settings.feeds[0].rest_rate = 1;
        assert_eq!(problem_keys(&settings), Vec::<String>::new());
    }

    #[test]
    fn urls_must_be_websocket_urls_with_a_host() {
        let cases = [
            ("wss://external-api-ws.demo.kalshi.co/trade-api/ws/v2", true),
            ("ws://127.0.0.1:9100/trade-api/ws/v2", true),
            ("htp://x", false),
            ("https://api.kalshi.com/trade-api/ws/v2", false),
            ("not a url", false),
            ("wss://", false),
            ("", false),
        ];
        for (url, ok) in cases {
            let mut settings = valid();
            settings.feeds[0].url = url.into();
            let expected: &[&str] = if ok { &[] } else { &["feeds[0].url"] };
            assert_eq!(problem_keys(&settings), expected, "url {url:?}");
        }
    }

    #[test]
    fn key_id_and_key_file_come_together() {
        let mut settings = valid();
        settings.feeds[0].key_id = Some("a952bcbe".into());
        assert_eq!(problem_keys(&settings), ["feeds[0].key_file"]);

        let mut settings = valid();
        settings.feeds[0].key_file = Some("/etc/tickd/kalshi.pem".into());
        assert_eq!(problem_keys(&settings), ["feeds[0].key_id"]);
    }

    #[test]
    fn a_key_file_that_does_not_hold_a_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("garbage.pem");
        std::fs::write(&pem, "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n").unwrap();
        let mut settings = valid();
        settings.feeds[0].key_id = Some("a952bcbe".into());
        settings.feeds[0].key_file = Some(pem.clone());

        let message = settings.validate().unwrap_err().to_string();

        assert!(message.contains("feeds[0].key_file"), "{message}");
        assert!(message.contains(&pem.display().to_string()), "{message}");
        assert!(message.to_lowercase().contains("invalid"), "{message}");
    }

    #[test]
    fn validation_loads_a_feed_key_once_and_the_settings_carry_it() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("kalshi.pem");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kalshi/test_key_pkcs8.pem");
        std::fs::copy(fixture, &pem).unwrap();
        let mut settings = valid();
        settings.feeds[0].key_id = Some("a952bcbe".into());
        settings.feeds[0].key_file = Some(pem.clone());
        let unvalidated = settings.feeds[0].clone();

        assert_eq!(problem_keys(&settings), Vec::<String>::new());
        std::fs::remove_file(&pem).unwrap();

        // Only the key kept by validation can answer now that the file is gone.
        let started = settings.clone();
        assert!(matches!(started.feeds[0].signing_key(), Ok(Some(_))));
        let message = unvalidated.signing_key().unwrap_err();
        assert!(message.contains(&pem.display().to_string()), "{message}");
        // The kept key is not a setting: it does not make two feeds differ.
        assert_eq!(unvalidated, started.feeds[0]);
        assert!(matches!(FeedSettings::new("unsigned", "ws://127.0.0.1:1").signing_key(), Ok(None)));
    }

    #[test]
    fn a_credential_name_must_not_be_a_path() {
        let mut settings = valid();
        settings.feeds[0].key_id = Some("a952bcbe".into());
        settings.feeds[0].key_file = Some("credential:../../etc/shadow".into());
        assert_eq!(problem_keys(&settings), ["feeds[0].key_file"]);
    }

    #[test]
    fn channels_are_known_and_listed_once() {
        let mut settings = valid();
        settings.feeds[0].channels = vec!["ticker".into(), "fill".into(), "ticker".into()];
        assert_eq!(problem_keys(&settings), ["feeds[0].channels[1]", "feeds[0].channels[2]"]);
    }

    #[test]
    fn markets_are_tickers_listed_once() {
        let mut settings = valid();
        settings.feeds[0].markets = vec!["A".into(), "".into(), "B C".into(), "A".into(), "D".into()];
        assert_eq!(
            problem_keys(&settings),
            ["feeds[0].markets[1]", "feeds[0].markets[2]", "feeds[0].markets[3]"]
        );
    }

    #[test]
    fn a_feed_with_nothing_to_follow_is_a_problem() {
        let mut settings = valid();
        settings.feeds[0].markets.clear();
        assert_eq!(problem_keys(&settings), ["feeds[0].markets"]);
        settings.feeds[0].lifecycle = false;
        assert_eq!(problem_keys(&settings), ["feeds[0].markets"]);

        // A series or an event is something to follow.
        settings.feeds[0].lifecycle = true;
        settings.feeds[0].series = vec!["KXBTCD".into()];
        assert_eq!(problem_keys(&settings), Vec::<String>::new());
        settings.feeds[0].series.clear();
        settings.feeds[0].events = vec!["KXHIGHNY-26DEC07".into()];
        assert_eq!(problem_keys(&settings), Vec::<String>::new());
    }

    #[test]
    fn a_feed_with_markets_and_no_channel_needs_lifecycle() {
        let mut settings = valid();
        settings.feeds[0].channels.clear();
        settings.feeds[0].lifecycle = false;
        assert_eq!(problem_keys(&settings), ["feeds[0].channels"]);
        settings.feeds[0].lifecycle = true;
        assert_eq!(problem_keys(&settings), Vec::<String>::new());
    }

    #[test]
    fn series_and_event_tickers_are_checked_and_named() {
        let mut settings = valid();
        settings.feeds[0].series = vec![
            "KXBTCD".into(),
            "kxbtcd".into(),
            "KX BTC".into(),
            "".into(),
            "KXBTCD".into(),
            "INX-".into(),
        ];
        settings.feeds[0].events = vec!["KXHIGHNY-26DEC07".into(), "KXHIGHNY".into(), "-26DEC07".into()];
        let mut keys = problem_keys(&settings);
        keys.sort();
        assert_eq!(
            keys,
            [
                "feeds[0].events[1]",
                "feeds[0].events[2]",
                "feeds[0].series[1]",
                "feeds[0].series[2]",
                "feeds[0].series[3]",
                "feeds[0].series[4]",
                "feeds[0].series[5]",
            ]
        );
        let message = settings.validate().unwrap_err().to_string();
        assert!(message.contains("feeds[0].series[1]") && message.contains("upper-case"), "{message}");
    }

    #[test]
    fn following_series_needs_lifecycle_channels_and_a_sane_interval() {
        let mut settings = valid();
        settings.feeds[0].series = vec!["KXBTCD".into()];
        settings.feeds[0].lifecycle = false;
        settings.feeds[0].channels.clear();
        settings.feeds[0].discovery_interval = Duration::from_millis(10);
        let mut keys = problem_keys(&settings);
        keys.sort();
        assert_eq!(keys, ["feeds[0].channels", "feeds[0].discovery_interval", "feeds[0].lifecycle"]);
        settings.feeds[0].discovery_interval = Duration::ZERO;
        assert!(problem_keys(&settings).contains(&"feeds[0].discovery_interval".to_string()));
    }

    #[test]
    fn a_pong_timeout_longer_than_the_ping_interval_is_allowed() {
        let mut settings = valid();
        settings.feeds[0].pong_timeout = settings.feeds[0].ping_interval * 2;
        assert_eq!(problem_keys(&settings), Vec::<String>::new());
    }

    #[test]
    fn backfill_is_on_by_default_and_reaches_back_a_positive_window() {
        let mut settings = valid();
        assert!(settings.feeds[0].backfill);
        assert_eq!(settings.feeds[0].backfill_max_window, Duration::from_secs(24 * 3600));
        settings.feeds[0].backfill_max_window = Duration::ZERO;
        assert_eq!(problem_keys(&settings), ["feeds[0].backfill_max_window"]);
    }

    #[test]
    fn backoff_starts_below_its_cap_and_does_not_shrink() {
        let mut settings = valid();
        settings.feeds[0].backoff.initial = Duration::from_secs(60);
        settings.feeds[0].backoff.multiplier = 0.0;
        assert_eq!(problem_keys(&settings), ["feeds[0].backoff.initial", "feeds[0].backoff.multiplier"]);

        settings.feeds[0].backoff.initial = Duration::ZERO;
        settings.feeds[0].backoff.max = Duration::ZERO;
        settings.feeds[0].backoff.multiplier = 1.0;
        assert_eq!(problem_keys(&settings), ["feeds[0].backoff.initial", "feeds[0].backoff.max"]);
    }

    #[test]
    fn a_multiplier_is_any_number_from_1_and_jitter_a_fraction() {
        for (multiplier, jitter, bad) in [
            (1.0, 0.0, &[][..]),
            (1.5, 0.1, &[]),
            (2.0, 1.0, &[]),
            (0.99, 0.5, &["feeds[0].backoff.multiplier"][..]),
            (f64::NAN, 0.5, &["feeds[0].backoff.multiplier"]),
            (f64::INFINITY, 0.5, &["feeds[0].backoff.multiplier"]),
            (2.0, -0.1, &["feeds[0].backoff.jitter"]),
            (2.0, 1.5, &["feeds[0].backoff.jitter"]),
            (2.0, f64::NAN, &["feeds[0].backoff.jitter"]),
        ] {
            let mut settings = valid();
            settings.feeds[0].backoff.multiplier = multiplier;
            settings.feeds[0].backoff.jitter = jitter;
            assert_eq!(problem_keys(&settings), bad, "multiplier {multiplier}, jitter {jitter}");
        }
    }

    #[test]
    fn backoff_numbers_are_read_as_people_write_them() {
        for (text, multiplier) in [("1.5", 1.5), ("2.0", 2.0), ("2", 2.0), ("3", 3.0)] {
            let toml =
                format!("[[feeds]]\nname = \"a\"\n[feeds.backoff]\nmultiplier = {text}\njitter = 0.1\n");
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("tickd.toml");
            std::fs::write(&file, toml).unwrap();

            let settings =
                crate::config::Settings::load(Some(&file)).unwrap_or_else(|e| panic!("{text}: {e}"));

            assert_eq!(settings.feeds[0].backoff.multiplier, multiplier, "{text}");
            assert_eq!(settings.feeds[0].backoff.jitter, 0.1, "{text}");
        }
    }
}
