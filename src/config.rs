//! The typed settings tree: built-in defaults < TOML file < `TICKD_` environment variables.
//!
//! Every field's `///` doubles as user documentation (mirrored in
//! `config/tickd.example.toml`). Unknown keys are errors that name the key. Secrets are never
//! in the TOML itself: the Kalshi private key comes from a PEM file named by path.
//!
//! In: a config file path (or none) and the process environment. Out: a [`Settings`] tree
//! that [`Settings::validate`] has checked once, and its redacted TOML rendering for
//! `tickd check-config`. A [`ConfigError`] always names the offending key and its source.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize, Serializer};

/// The whole configuration of a tickd process.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where tickd keeps state that must survive a restart: the store's spool.
    pub state_dir: PathBuf,
    /// A program run for every alert and every recovery; details arrive in `TICKD_ALERT_*`
    /// variables (see `alerts::notice`).
    pub alert_command: Option<PathBuf>,
    /// How often `tickd run` logs one summary line per feed connection and one for the store.
    #[serde(with = "humantime_serde")]
    pub summary_interval: Duration,
    /// Logging.
    pub log: LogSettings,
    /// Capacities of the tick bus.
    pub bus: BusSettings,
    /// Recording in PostgreSQL. Without a `[store]` table nothing is recorded (a warning says
    /// so at start).
    pub store: Option<StoreSettings>,
    /// The HTTP port: the dashboard page, the live stream (`/ws`) and health checks.
    pub dashboard: DashboardSettings,
    /// When alerts fire and resolve, and the webhook that hears of them.
    pub alerts: AlertSettings,
    /// The exchange connections, one entry per feed.
    pub feeds: Vec<FeedSettings>,
}

/// Logging output.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `auto` (the default: `journald` when stderr is the systemd journal, else `text`),
    /// `text` (human-readable), `json` (one object per line) or `journald` (native journal
    /// fields; text on stderr, with a warning, when the journal cannot be reached).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `tickd=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `Journald` when stderr is the journal (systemd sets `JOURNAL_STREAM` to its device and
    /// inode), else `Text`.
    #[default]
    Auto,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr; span fields (`feed`, `conn`) merged into `fields`.
    Json,
    /// Straight to the systemd journal, every field a journal field (`F_FEED`, `F_CONN`...).
    Journald,
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

/// Recording ticks in PostgreSQL.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `postgres://user@host:port/database`. A password here is accepted but redacted in
    /// output; prefer `password_file`.
    pub url: DatabaseUrl,
    /// A file whose first line is the database password. With systemd, a name under
    /// `$CREDENTIALS_DIRECTORY` is accepted as `credential:<name>`.
    pub password_file: Option<PathBuf>,
    /// Apply the embedded schema migrations at start (`tickd migrate` does it on demand).
    pub migrate: bool,
    /// Database connections in the pool (the writer uses one at a time; the rest serve
    /// partition upkeep and, later, dashboard history queries).
    pub pool_size: u32,
    /// Limit on opening one database connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Limit on writing one batch. A write that takes longer is abandoned and its batch goes
    /// to the spool (the replay is idempotent), so this bounds how long the writer can stop
    /// taking ticks from the feeds.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// A batch is written once it holds this many ticks...
    pub batch_size: usize,
    /// ...or once its oldest tick has waited this long.
    #[serde(with = "humantime_serde")]
    pub batch_age: Duration,
    /// While the database is unreachable, how often to try it again.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// The most bytes the spool (under `state_dir/spool`) may hold while the database is
    /// unreachable. Past it, ticks are dropped, counted, alerted at once and recorded in
    /// `feed_events` as a `store_loss` when the database is back.
    pub spool_max_bytes: u64,
    /// Daily partitions created ahead of today (UTC).
    pub partitions_ahead_days: u32,
    /// Drop partitions older than this many days. Off (keep everything) when absent.
    pub retention_days: Option<u32>,
}

/// A PostgreSQL URL whose password never prints: `Debug` and `Serialize` show it as
/// `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    /// The URL itself, password included; only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `<redacted>`.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => {
                // Cannot fail: the URL has a password, so it has a host that can carry one.
                let _ = url.set_password(Some(REDACTED));
                url.to_string()
            }
            Ok(_) => self.0.clone(),
            Err(_) => "<unparsable URL redacted>".into(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            url: DatabaseUrl::new("postgres://tickd@localhost:5432/tickd"),
            password_file: None,
            migrate: true,
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            batch_size: 5_000,
            batch_age: Duration::from_millis(10),
            retry_interval: Duration::from_secs(1),
            spool_max_bytes: 1 << 30,
            partitions_ahead_days: 3,
            retention_days: None,
        }
    }
}

impl StoreSettings {
    /// The path of the password file, with `credential:<name>` resolved like a feed's
    /// `key_file`.
    pub fn password_path(&self) -> Option<PathBuf> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY");
        self.password_file.as_deref().map(|file| resolve_key_path(file, dir.as_deref()))
    }

    fn validate_into(&self, problems: &mut Problems) {
        match url::Url::parse(self.url.expose()) {
            Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") => {}
            Ok(url) => {
                problems.push("store.url", format!("has scheme `{}`; expected `postgres`", url.scheme()))
            }
            Err(e) => problems.push("store.url", format!("is not a URL: {e}")),
        }
        if let Some(path) = self.password_path()
            && let Err(e) = std::fs::metadata(&path)
        {
            problems.push("store.password_file", format!("{} cannot be read: {e}", path.display()));
        }
        problems.at_least_one("store.pool_size", self.pool_size as usize);
        problems.at_least_one("store.batch_size", self.batch_size);
        problems.positive("store.connect_timeout", self.connect_timeout);
        problems.positive("store.write_timeout", self.write_timeout);
        problems.positive("store.batch_age", self.batch_age);
        problems.positive("store.retry_interval", self.retry_interval);
        problems.at_least_one("store.partitions_ahead_days", self.partitions_ahead_days as usize);
        if self.retention_days == Some(0) {
            problems.push("store.retention_days", "must be at least 1 (omit it to keep everything)");
        }
        if self.spool_max_bytes < 1 << 20 {
            problems.push("store.spool_max_bytes", "must be at least 1048576 (1 MiB)");
        }
    }
}

/// The dashboard server: one HTTP port with the page (`/`), the live stream (`/ws`), `/healthz`
/// and `/readyz`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardSettings {
    /// Serve at all. Off, tickd opens no port.
    pub enabled: bool,
    /// Address and port to listen on. Port 0 picks a free one (logged at start).
    pub listen: SocketAddr,
    /// The token stream clients must present. Prefer `token_file`. Required unless `listen`
    /// is a loopback address.
    pub token: Option<Secret<String>>,
    /// A file whose first line is the token; `credential:<name>` under systemd.
    pub token_file: Option<PathBuf>,
    /// Origins (`https://grafana.example.com`) allowed to open `/ws` besides the daemon's own
    /// page. A browser sends `Origin`; any other origin gets 403.
    pub allowed_origins: Vec<String>,
    /// Host names (`tickd.internal`, optionally with `:port`) accepted in the `Host` header
    /// besides IP literals and `localhost`: anything else gets 403 (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Stream clients connected at once; more get 503.
    pub max_connections: usize,
    /// The largest frame a client may send; a bigger one closes its connection with 1009.
    pub max_frame_bytes: usize,
    /// Commands a client may send per minute; past it the client is closed with 4029.
    pub commands_per_minute: u32,
    /// (channel, market) subscriptions per client; `all` markets counts as one per channel.
    pub max_subscriptions: usize,
    /// Frames queued for one client. A client whose queue is full misses ticks and is
    /// resynced when it catches up.
    pub client_queue: usize,
    /// A client that stays behind this long, or is resynced `max_resyncs` times within a
    /// minute, is closed with 4008.
    #[serde(with = "humantime_serde")]
    pub slow_client_timeout: Duration,
    /// See `slow_client_timeout`.
    pub max_resyncs: u32,
    /// WebSocket ping cadence; a client that has sent nothing (not even a pong) for two
    /// intervals is dropped.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Cadence of the `status` frames sent to clients subscribed to the `feed` channel.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// The most rows one `history` command returns.
    pub history_max_rows: u32,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        DashboardSettings {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            token_file: None,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_connections: 1000,
            max_frame_bytes: 4096,
            commands_per_minute: 600,
            max_subscriptions: 1000,
            client_queue: 4096,
            slow_client_timeout: Duration::from_secs(5),
            max_resyncs: 3,
            ping_interval: Duration::from_secs(30),
            status_interval: Duration::from_secs(1),
            history_max_rows: 5000,
        }
    }
}

impl DashboardSettings {
    /// The path of the token file, with `credential:<name>` resolved.
    pub fn token_path(&self) -> Option<PathBuf> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY");
        self.token_file.as_deref().map(|file| resolve_key_path(file, dir.as_deref()))
    }

    /// The token clients must present: `token`, else the first line of `token_file`; `None`
    /// when neither is set.
    pub fn load_token(&self) -> Result<Option<Secret<String>>, String> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        let Some(path) = self.token_path() else { return Ok(None) };
        Ok(Some(Secret::new(first_line(&path)?)))
    }

    fn validate_into(&self, problems: &mut Problems) {
        if !self.enabled {
            return;
        }
        if self.token.is_some() && self.token_file.is_some() {
            problems.push("dashboard.token", "set either `token` or `token_file`, not both");
        }
        match self.load_token() {
            Err(e) => problems.push("dashboard.token_file", e),
            Ok(None) if !self.listen.ip().is_loopback() => problems.push(
                "dashboard.listen",
                format!(
                    "{} is not a loopback address and no token is set; set `token_file` \
                     (or listen on 127.0.0.1)",
                    self.listen
                ),
            ),
            Ok(Some(token)) if token.expose().len() < 16 => {
                problems.push("dashboard.token", "must be at least 16 characters")
            }
            Ok(Some(token)) if !token.expose().bytes().all(|b| b.is_ascii_graphic()) => {
                problems.push("dashboard.token", "may hold only visible ASCII characters, no spaces")
            }
            Ok(_) => {}
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            match url::Url::parse(origin) {
                Ok(url) if url.origin().ascii_serialization() == origin.trim_end_matches('/') => {}
                _ => problems.push(
                    format!("dashboard.allowed_origins[{i}]"),
                    format!("`{origin}` is not an origin like `https://host:port`"),
                ),
            }
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            if host.is_empty() || host.contains(['/', ' ', '@']) {
                problems
                    .push(format!("dashboard.allowed_hosts[{i}]"), format!("`{host}` is not a host name"));
            }
        }
        problems.at_least_one("dashboard.max_connections", self.max_connections);
        if self.max_frame_bytes < 256 {
            problems.push("dashboard.max_frame_bytes", "must be at least 256");
        }
        problems.at_least_one("dashboard.commands_per_minute", self.commands_per_minute as usize);
        problems.at_least_one("dashboard.max_subscriptions", self.max_subscriptions);
        if self.client_queue < 16 {
            problems.push("dashboard.client_queue", "must be at least 16");
        }
        problems.positive("dashboard.slow_client_timeout", self.slow_client_timeout);
        problems.at_least_one("dashboard.max_resyncs", self.max_resyncs as usize);
        problems.positive("dashboard.ping_interval", self.ping_interval);
        problems.positive("dashboard.status_interval", self.status_interval);
        problems.at_least_one("dashboard.history_max_rows", self.history_max_rows as usize);
    }
}

/// Alerts: when each kind fires and resolves, and the webhook told of every alert and recovery
/// (besides the log, `/metrics` and `alert_command`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// An `http://` or `https://` URL that receives a JSON POST for every alert and every
    /// recovery. A token in its path or query is a secret: it prints as `<redacted>`. Prefer
    /// `webhook_url_file`.
    pub webhook_url: Option<WebhookUrl>,
    /// A file whose first line is the webhook URL; `credential:<name>` under systemd.
    pub webhook_url_file: Option<PathBuf>,
    /// Limit on one POST: connect, TLS, request and answer.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// How many times a failed POST (no answer, HTTP 429 or 5xx) is tried again, after 1 s,
    /// 2 s, 4 s... (at most 30 s apart). Other answers are not retried.
    pub webhook_retries: u32,
    /// An open alert resolves once its condition has stayed clear this long, so that a
    /// condition that flaps stays one incident: one alert, one recovery.
    #[serde(with = "humantime_serde")]
    pub resolve_after: Duration,
    /// `spool_filling` fires when the spool holds this fraction (0 to 1) of
    /// `store.spool_max_bytes`.
    pub spool_warn_fraction: f64,
    /// `database_unreachable` fires when the store has not reached the database for this long.
    #[serde(with = "humantime_serde")]
    pub database_unreachable_after: Duration,
    /// `feed_stale` fires when a feed connection has been connected this long without
    /// delivering market data (time spent reconnecting does not count; silent reconnects add
    /// up). A feed's own `stale_after` overrides it; `0s` turns the check off.
    #[serde(with = "humantime_serde")]
    pub feed_stale_after: Duration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            webhook_url: None,
            webhook_url_file: None,
            webhook_timeout: Duration::from_secs(5),
            webhook_retries: 3,
            resolve_after: Duration::from_secs(30),
            spool_warn_fraction: 0.5,
            database_unreachable_after: Duration::from_secs(30),
            feed_stale_after: Duration::from_secs(60),
        }
    }
}

/// The most `alerts.webhook_retries` may be: retries of one notice hold up the ones after it.
pub const MAX_WEBHOOK_RETRIES: u32 = 10;

impl AlertSettings {
    /// The path of the webhook URL file, with `credential:<name>` resolved.
    pub fn webhook_url_path(&self) -> Option<PathBuf> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY");
        self.webhook_url_file.as_deref().map(|file| resolve_key_path(file, dir.as_deref()))
    }

    /// The webhook URL: `webhook_url`, else the first line of `webhook_url_file`; `None` when
    /// neither is set. The error names the file, never its content.
    pub fn load_webhook_url(&self) -> Result<Option<WebhookUrl>, String> {
        if let Some(url) = &self.webhook_url {
            return Ok(Some(url.clone()));
        }
        let Some(path) = self.webhook_url_path() else { return Ok(None) };
        Ok(Some(WebhookUrl::new(first_line(&path)?)))
    }

    fn validate_into(&self, problems: &mut Problems) {
        if self.webhook_url.is_some() && self.webhook_url_file.is_some() {
            problems.push("alerts.webhook_url", "set either `webhook_url` or `webhook_url_file`, not both");
        } else {
            let key =
                if self.webhook_url.is_some() { "alerts.webhook_url" } else { "alerts.webhook_url_file" };
            match self.load_webhook_url() {
                Err(e) => problems.push(key, e),
                Ok(Some(url)) => {
                    if let Err(e) = url.check() {
                        problems.push(key, e);
                    }
                }
                Ok(None) => {}
            }
        }
        problems.positive("alerts.webhook_timeout", self.webhook_timeout);
        if self.webhook_retries > MAX_WEBHOOK_RETRIES {
            problems.push("alerts.webhook_retries", format!("must be at most {MAX_WEBHOOK_RETRIES}"));
        }
        problems.positive("alerts.resolve_after", self.resolve_after);
        let f = self.spool_warn_fraction;
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            problems
                .push("alerts.spool_warn_fraction", format!("{f} is not a fraction above 0 and at most 1"));
        }
        problems.positive("alerts.database_unreachable_after", self.database_unreachable_after);
    }
}

/// A webhook URL, which may carry a token in its path, query or user info: `Debug` and
/// `Serialize` show only its scheme, host and port, the rest as `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        WebhookUrl(url.into())
    }

    /// The URL itself, token included; only for sending.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `scheme://host:port`, then `/<redacted>` when the URL says anything more (a path,
    /// a query, user info or a fragment). Safe for logs.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(url) => {
                let origin = format!(
                    "{}://{}{}",
                    url.scheme(),
                    url.host_str().unwrap_or(""),
                    url.port().map(|p| format!(":{p}")).unwrap_or_default()
                );
                let more = !matches!(url.path(), "" | "/")
                    || url.query().is_some()
                    || url.fragment().is_some()
                    || !url.username().is_empty()
                    || url.password().is_some();
                if more { format!("{origin}/{REDACTED}") } else { origin }
            }
            Err(_) => "<unparsable URL redacted>".into(),
        }
    }

    /// An `http` or `https` URL with a host. The error never repeats the URL.
    pub fn check(&self) -> Result<(), String> {
        let url = url::Url::parse(&self.0).map_err(|e| format!("is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("has scheme `{}`; expected `https` or `http`", url.scheme()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("has no host".into());
        }
        Ok(())
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for WebhookUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
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
    /// `feed_stale` for this feed's connections: no market data for this long while connected.
    /// Overrides `alerts.feed_stale_after`; `0s` turns the check off for this feed.
    #[serde(default, with = "humantime_serde::option", skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<Duration>,
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
            store: None,
            dashboard: DashboardSettings::default(),
            alerts: AlertSettings::default(),
            feeds: Vec::new(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { format: LogFormat::Auto, level: "info".into() }
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
            stale_after: None,
        }
    }
}

/// Where `tickd` reads its config file when `--config` is not given. It may be absent.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tickd/tickd.toml";

/// Prefix of the environment variables that override the file; `__` separates nested keys
/// (`TICKD_LOG__LEVEL=debug` sets `log.level`).
pub const ENV_PREFIX: &str = "TICKD_";

/// The market data channels a feed may subscribe for its `markets`.
pub const MARKET_CHANNELS: [&str; 3] = ["orderbook_delta", "ticker", "trade"];

/// A `key_file` starting with this names a systemd credential (`LoadCredential=`), resolved
/// under `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_PREFIX: &str = "credential:";

/// Why settings could not be loaded or are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file named explicitly (`--config`) does not exist.
    #[error("config file {} does not exist", .path.display())]
    NotFound {
        /// The path as given.
        path: PathBuf,
    },
    /// A source could not be read or parsed into settings: TOML syntax, an unknown key, a
    /// value of the wrong type. The message names the key and the file or variable.
    #[error("{}", render_figment(.0))]
    Load(Box<figment::Error>),
    /// The settings parsed, but some values would make the daemon misbehave.
    #[error("{}", render_problems(.0))]
    Invalid(Vec<Problem>),
}

/// One unusable setting found by [`Settings::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The key, as a user writes it: `feeds[0].url`, `backoff.max` is `feeds[1].backoff.max`.
    pub key: String,
    /// What is wrong with its value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.key, self.message)
    }
}

impl ConfigError {
    /// The keys this error is about (empty when it is about a whole file).
    pub fn keys(&self) -> Vec<String> {
        match self {
            ConfigError::NotFound { .. } => Vec::new(),
            ConfigError::Load(err) => (**err).clone().into_iter().map(|e| display_key(&e.path)).collect(),
            ConfigError::Invalid(problems) => problems.iter().map(|p| p.key.clone()).collect(),
        }
    }
}

/// One line per problem; the first needs no indent since callers prefix `error: `.
fn render_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// figment's own `Display` says `for key "default.feeds.0.urll"` (profile-qualified, dotted
/// indices); users write `feeds[0].urll` and want the environment variable's real name.
fn render_figment(err: &figment::Error) -> String {
    let lines: Vec<String> = err.clone().into_iter().map(|e| render_one(&e)).collect();
    lines.join("\n")
}

/// `<file or variable>: <what> at key `<key>``, with serde's unknown-field wording made plain.
fn render_one(e: &figment::Error) -> String {
    let from_env = e.metadata.as_ref().is_some_and(|md| md.name.contains("environment"));
    let key = display_key(&e.path);
    let mut out = match e.metadata.as_ref().and_then(|md| md.source.as_ref()) {
        Some(figment::Source::File(path)) => format!("{}: ", path.display()),
        _ if from_env => {
            format!("environment variable {ENV_PREFIX}{}: ", e.path.join("__").to_ascii_uppercase())
        }
        _ => String::new(),
    };
    match &e.kind {
        figment::error::Kind::UnknownField(found, expected) => {
            let shown = if key.is_empty() { found.as_str() } else { key.as_str() };
            out.push_str(&format!("unknown key `{shown}`"));
            out.push_str(&format!("; expected one of: {}", expected.join(", ")));
        }
        kind => {
            out.push_str(kind.to_string().trim_end());
            if !key.is_empty() {
                out.push_str(&format!(" at key `{key}`"));
            }
        }
    }
    out
}

/// `["feeds", "0", "url"]` → `feeds[0].url`.
fn display_key(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if part.bytes().all(|b| b.is_ascii_digit()) && !part.is_empty() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

impl Settings {
    /// Loads settings from built-in defaults < the TOML file < `TICKD_…` environment
    /// variables. `path` must exist when given; without it [`DEFAULT_CONFIG_PATH`] is read if
    /// present. Does not validate values: call [`Settings::validate`].
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let file = match path {
            Some(path) if !path.exists() => {
                return Err(ConfigError::NotFound { path: path.to_owned() });
            }
            Some(path) => path,
            None => Path::new(DEFAULT_CONFIG_PATH),
        };
        // The defaults layer is serde's: every struct is `#[serde(default)]`, so a key absent
        // from file and environment keeps its `Default`. `file_exact`, because `Toml::file`
        // would search parent directories for a relative path. A missing default file yields
        // no values, not an error.
        Figment::new()
            .merge(Toml::file_exact(file))
            .merge(Env::prefixed(ENV_PREFIX).split("__"))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))
    }

    /// Checks every value that could make the daemon misbehave and reports all problems at
    /// once, each naming its key. Reads each feed's key file to check it is a valid RSA key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        let level = self.log.level.trim();
        if level.is_empty() {
            problems.push("log.level", "is empty; use e.g. `info` or `tickd=debug,info`");
        } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
            problems.push("log.level", format!("`{level}` is not a tracing filter: {e}"));
        }
        problems.positive("summary_interval", self.summary_interval);
        problems.at_least_one("bus.lossless_capacity", self.bus.lossless_capacity);
        problems.at_least_one("bus.lossy_capacity", self.bus.lossy_capacity);
        if let Some(Err(message)) = self.alert_command.as_deref().map(check_executable) {
            problems.push("alert_command", message);
        }
        if let Some(store) = &self.store {
            store.validate_into(&mut problems);
        }
        self.dashboard.validate_into(&mut problems);
        self.alerts.validate_into(&mut problems);
        if self.feeds.is_empty() {
            problems.push("feeds", "no feed is configured; add a [[feeds]] table");
        }
        let mut names = HashSet::new();
        for (i, feed) in self.feeds.iter().enumerate() {
            let key = format!("feeds[{i}]");
            feed.validate_into(&key, &mut problems);
            if !feed.name.trim().is_empty() && !names.insert(feed.name.as_str()) {
                problems.push(format!("{key}.name"), format!("`{}` is used twice", feed.name));
            }
        }
        problems.into_result()
    }

    /// The keys outside `[[feeds]]` whose values differ in `new`: a reload applies feed and
    /// market changes only, so these take effect at the next start. Dotted names
    /// (`store.batch_age`); secrets compare in their redacted form, so a changed secret file's
    /// content is not noticed (it is read at start).
    pub fn restart_only_changes(&self, new: &Settings) -> Vec<String> {
        let table = |s: &Settings| match toml::Value::try_from(s) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        let (mut old, mut new) = (table(self), table(new));
        old.remove("feeds");
        new.remove("feeds");
        let mut changed = Vec::new();
        diff_keys("", &toml::Value::Table(old), &toml::Value::Table(new), &mut changed);
        changed
    }

    /// The effective settings as TOML, for `tickd check-config`. Secrets print as
    /// `"<redacted>"` (see [`Secret`]); no file content is ever included.
    pub fn redacted_toml(&self) -> String {
        match toml::to_string_pretty(self) {
            Ok(text) => format!("# tickd effective configuration (secrets redacted)\n\n{text}"),
            // Every field is a string, number, bool, path, duration or a table of those, so
            // this cannot fail in practice; a comment keeps the output valid TOML regardless.
            Err(e) => format!("# the effective settings could not be rendered: {e}\n"),
        }
    }
}

/// The first line of a secret file, trimmed. The error names the file, never its content.
fn first_line(path: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim().to_owned();
    if line.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(line)
}

/// Appends to `out` the dotted keys under `prefix` where `old` and `new` differ (a key present
/// in only one counts).
fn diff_keys(prefix: &str, old: &toml::Value, new: &toml::Value, out: &mut Vec<String>) {
    match (old, new) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_keys(&path, x, y, out),
                    _ => out.push(path),
                }
            }
        }
        (a, b) if a != b => out.push(prefix.to_owned()),
        _ => {}
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

    fn validate_into(&self, key: &str, problems: &mut Problems) {
        if self.name.trim().is_empty() {
            problems.push(format!("{key}.name"), "is empty; every feed needs a unique name");
        }
        if let Err(message) = check_ws_url(&self.url) {
            problems.push(format!("{key}.url"), message);
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
        let subscribes_markets = !self.markets.is_empty() && !self.channels.is_empty();
        if !subscribes_markets && !self.lifecycle {
            problems.push(
                format!("{key}.markets"),
                "the feed subscribes to nothing: give `markets` and `channels`, or set \
                 `lifecycle = true`",
            );
        }

        problems.at_least_one(&format!("{key}.max_markets_per_connection"), self.max_markets_per_connection);
        problems.at_least_one(&format!("{key}.max_frame_bytes"), self.max_frame_bytes);
        problems.at_least_one(&format!("{key}.max_reconnects"), self.max_reconnects as usize);
        problems.positive(&format!("{key}.ping_interval"), self.ping_interval);
        problems.positive(&format!("{key}.pong_timeout"), self.pong_timeout);
        problems.positive(&format!("{key}.connect_timeout"), self.connect_timeout);
        problems.positive(&format!("{key}.ack_timeout"), self.ack_timeout);

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
        if backoff.multiplier < 1 {
            problems.push(format!("{key}.backoff.multiplier"), "must be at least 1");
        }
    }

    /// `key_id` and `key_file` come together, and the key file must hold a valid RSA key.
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
            (Some(id), Some(path)) => {
                if let Err(e) = Credentials::load(id, &path) {
                    problems.push(format!("{key}.key_file"), e.to_string());
                }
            }
        }
    }
}

/// `credential:<name>` → `<dir>/<name>` when `dir` is known; anything else as written.
fn resolve_key_path(file: &Path, credentials_dir: Option<&OsStr>) -> PathBuf {
    match (credential_name(file), credentials_dir) {
        (Some(name), Some(dir)) => Path::new(dir).join(name),
        _ => file.to_owned(),
    }
}

/// `kalshi` for `credential:kalshi`; `None` for an ordinary path.
fn credential_name(file: &Path) -> Option<&str> {
    file.to_str().and_then(|s| s.strip_prefix(CREDENTIAL_PREFIX))
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

/// An existing regular file with an execute bit.
fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{} cannot be used: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not executable", path.display()));
    }
    Ok(())
}

/// Collects validation problems so that one run reports all of them.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { key: key.into(), message: message.into() });
    }

    fn positive(&mut self, key: &str, value: Duration) {
        if value.is_zero() {
            self.push(key, "must be longer than 0s");
        }
    }

    fn at_least_one(&mut self, key: &str, value: usize) {
        if value == 0 {
            self.push(key, "must be at least 1");
        }
    }

    fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(self.0)) }
    }
}

/// A value that must never be printed: `Debug`, `Display` and `Serialize` all render
/// `"<redacted>"`, so it cannot leak through a log line or `check-config`. Deserializes
/// transparently from the inner value.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The secret itself; call it only where the value is used, never to print it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

const REDACTED: &str = "<redacted>";

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

use crate::kalshi::sign::Credentials;

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Settings {
        let mut feed = FeedSettings::new("kalshi", "wss://external-api-ws.kalshi.com/trade-api/ws/v2");
        feed.markets = vec!["KXBTC-25DEC31".into()];
        Settings { feeds: vec![feed], ..Settings::default() }
    }

    /// The keys of every problem `validate` reports for `settings`.
    fn problem_keys(settings: &Settings) -> Vec<String> {
        match settings.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.keys(),
        }
    }

    #[test]
    fn a_dashboard_off_loopback_needs_a_good_token_and_never_prints_it() {
        let mut settings = valid();
        settings.dashboard.listen = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(problem_keys(&settings), ["dashboard.listen"]);

        settings.dashboard.token = Some(Secret::new("short".into()));
        assert_eq!(problem_keys(&settings), ["dashboard.token"]);

        let token = "s3cret-token-0123456789";
        settings.dashboard.token = Some(Secret::new(token.into()));
        assert_eq!(problem_keys(&settings), Vec::<String>::new());
        assert!(!settings.redacted_toml().contains(token));
        assert!(!format!("{settings:?}").contains(token));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        settings.dashboard.token_file = Some(file.clone());
        assert_eq!(problem_keys(&settings), ["dashboard.token"], "token and token_file together");
        settings.dashboard.token = None;
        assert_eq!(
            settings.dashboard.load_token().unwrap().map(|t| t.expose().clone()),
            Some(token.to_owned())
        );
        std::fs::write(&file, "\n").unwrap();
        assert_eq!(problem_keys(&settings), ["dashboard.token_file"], "an empty token file");
    }

    #[test]
    fn dashboard_origins_and_hosts_are_checked() {
        let mut settings = valid();
        settings.dashboard.allowed_origins = vec!["https://ok.example:8443".into(), "not an origin".into()];
        settings.dashboard.allowed_hosts = vec!["tickd.internal".into(), "bad/host".into()];
        assert_eq!(problem_keys(&settings), ["dashboard.allowed_origins[1]", "dashboard.allowed_hosts[1]"]);
        settings.dashboard.enabled = false;
        assert_eq!(problem_keys(&settings), Vec::<String>::new(), "a disabled dashboard is not checked");
    }

    #[test]
    fn a_feed_with_defaults_and_one_market_is_valid() {
        assert_eq!(problem_keys(&valid()), Vec::<String>::new());
    }

    #[test]
    fn no_feed_at_all_is_a_problem() {
        assert_eq!(problem_keys(&Settings::default()), ["feeds"]);
    }

    #[test]
    fn feed_names_must_be_present_and_unique() {
        let mut settings = valid();
        settings.feeds.push(settings.feeds[0].clone());
        settings.feeds.push(FeedSettings { name: " ".into(), ..settings.feeds[0].clone() });
        assert_eq!(problem_keys(&settings), ["feeds[1].name", "feeds[2].name"]);
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
    fn a_credential_key_file_resolves_under_the_credentials_directory() {
        let dir = OsStr::new("/run/credentials/tickd.service");
        assert_eq!(
            resolve_key_path(Path::new("credential:kalshi"), Some(dir)),
            Path::new("/run/credentials/tickd.service/kalshi")
        );
        assert_eq!(
            resolve_key_path(Path::new("/etc/tickd/kalshi.pem"), Some(dir)),
            Path::new("/etc/tickd/kalshi.pem")
        );
        // Unresolvable: kept as written so that errors show what the user wrote.
        assert_eq!(resolve_key_path(Path::new("credential:kalshi"), None), Path::new("credential:kalshi"));
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
    fn a_feed_that_subscribes_to_nothing_is_a_problem() {
        let mut settings = valid();
        settings.feeds[0].markets.clear();
        settings.feeds[0].lifecycle = false;
        assert_eq!(problem_keys(&settings), ["feeds[0].markets"]);

        // Lifecycle alone is a useful feed.
        settings.feeds[0].lifecycle = true;
        assert_eq!(problem_keys(&settings), Vec::<String>::new());
    }

    #[test]
    fn durations_and_counts_must_be_positive() {
        let mut settings = valid();
        settings.summary_interval = Duration::ZERO;
        settings.bus.lossless_capacity = 0;
        settings.bus.lossy_capacity = 0;
        let feed = &mut settings.feeds[0];
        feed.ping_interval = Duration::ZERO;
        feed.pong_timeout = Duration::ZERO;
        feed.connect_timeout = Duration::ZERO;
        feed.ack_timeout = Duration::ZERO;
        feed.max_markets_per_connection = 0;
        feed.max_frame_bytes = 0;
        feed.max_reconnects = 0;
        feed.backoff.healthy_after = Duration::ZERO;

        let mut keys = problem_keys(&settings);
        keys.sort();

        assert_eq!(
            keys,
            [
                "bus.lossless_capacity",
                "bus.lossy_capacity",
                "feeds[0].ack_timeout",
                "feeds[0].backoff.healthy_after",
                "feeds[0].connect_timeout",
                "feeds[0].max_frame_bytes",
                "feeds[0].max_markets_per_connection",
                "feeds[0].max_reconnects",
                "feeds[0].ping_interval",
                "feeds[0].pong_timeout",
                "summary_interval",
            ]
        );
    }

    #[test]
    fn a_pong_timeout_longer_than_the_ping_interval_is_allowed() {
        let mut settings = valid();
        settings.feeds[0].pong_timeout = settings.feeds[0].ping_interval * 2;
        assert_eq!(problem_keys(&settings), Vec::<String>::new());
    }

    #[test]
    fn backoff_starts_below_its_cap_and_does_not_shrink() {
        let mut settings = valid();
        settings.feeds[0].backoff.initial = Duration::from_secs(60);
        settings.feeds[0].backoff.multiplier = 0;
        assert_eq!(problem_keys(&settings), ["feeds[0].backoff.initial", "feeds[0].backoff.multiplier"]);

        settings.feeds[0].backoff.initial = Duration::ZERO;
        settings.feeds[0].backoff.max = Duration::ZERO;
        settings.feeds[0].backoff.multiplier = 1;
        assert_eq!(problem_keys(&settings), ["feeds[0].backoff.initial", "feeds[0].backoff.max"]);
    }

    #[test]
    fn the_log_level_must_be_a_tracing_filter() {
        for (level, ok) in [("info", true), ("tickd=debug,info", true), ("tickd=loud", false), ("", false)] {
            let mut settings = valid();
            settings.log.level = level.into();
            let expected: &[&str] = if ok { &[] } else { &["log.level"] };
            assert_eq!(problem_keys(&settings), expected, "level {level:?}");
        }
    }

    #[test]
    fn the_alert_command_must_be_an_executable_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("alert");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut settings = valid();

        for (path, ok) in
            [(script.clone(), false), (dir.path().to_owned(), false), (dir.path().join("missing"), false)]
        {
            settings.alert_command = Some(path.clone());
            let expected: &[&str] = if ok { &[] } else { &["alert_command"] };
            assert_eq!(problem_keys(&settings), expected, "{}", path.display());
        }

        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        settings.alert_command = Some(script);
        assert_eq!(problem_keys(&settings), Vec::<String>::new());
    }

    #[test]
    fn alert_settings_are_checked_and_each_problem_names_its_key() {
        let mut settings = valid();
        let a = &mut settings.alerts;
        a.webhook_url = Some(WebhookUrl::new("ftp://hooks.example.com/x"));
        a.webhook_timeout = Duration::ZERO;
        a.webhook_retries = MAX_WEBHOOK_RETRIES + 1;
        a.resolve_after = Duration::ZERO;
        a.spool_warn_fraction = 1.5;
        a.database_unreachable_after = Duration::ZERO;
        a.feed_stale_after = Duration::ZERO;
        settings.feeds[0].stale_after = Some(Duration::ZERO);

        assert_eq!(
            problem_keys(&settings),
            [
                "alerts.webhook_url",
                "alerts.webhook_timeout",
                "alerts.webhook_retries",
                "alerts.resolve_after",
                "alerts.spool_warn_fraction",
                "alerts.database_unreachable_after",
            ],
            "a zero staleness threshold turns the check off and is fine"
        );
        for fraction in [0.0, -0.1, f64::NAN, f64::INFINITY] {
            let mut settings = valid();
            settings.alerts.spool_warn_fraction = fraction;
            assert_eq!(problem_keys(&settings), ["alerts.spool_warn_fraction"], "{fraction}");
        }

        let mut settings = valid();
        settings.alerts.webhook_url = Some(WebhookUrl::new("https://hooks.example.com/x"));
        settings.alerts.webhook_url_file = Some("/etc/tickd/webhook".into());
        assert_eq!(problem_keys(&settings), ["alerts.webhook_url"], "both a URL and a file");
    }

    #[test]
    fn a_webhook_url_never_prints_its_token() {
        let mut settings = valid();
        let secret = "https://ops:hunter2@hooks.example.com:8443/services/T0/B0/XYZZY?token=s3cret";
        settings.alerts.webhook_url = Some(WebhookUrl::new(secret));
        assert_eq!(problem_keys(&settings), Vec::<String>::new());

        let shown = [settings.redacted_toml(), format!("{settings:?}")];

        for text in shown {
            for part in ["hunter2", "XYZZY", "s3cret", "services"] {
                assert!(!text.contains(part), "{part} in {text}");
            }
            assert!(text.contains("https://hooks.example.com:8443/<redacted>"), "{text}");
        }
        assert_eq!(WebhookUrl::new("https://hooks.example.com").redacted(), "https://hooks.example.com");

        // A URL with an unusable scheme is named without repeating it.
        settings.alerts.webhook_url = Some(WebhookUrl::new("htps://ops:hunter2@hooks.example.com/"));
        let message = settings.validate().unwrap_err().to_string();
        assert!(message.contains("alerts.webhook_url") && !message.contains("hunter2"), "{message}");
    }

    #[test]
    fn the_webhook_url_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("webhook");
        std::fs::write(&file, "https://hooks.example.com/T0?token=s3cret\n").unwrap();
        let mut settings = valid();
        settings.alerts.webhook_url_file = Some(file.clone());

        assert_eq!(problem_keys(&settings), Vec::<String>::new());
        assert_eq!(
            settings.alerts.load_webhook_url().unwrap().map(|u| u.expose().to_owned()),
            Some("https://hooks.example.com/T0?token=s3cret".to_owned())
        );

        std::fs::write(&file, "mailto:ops@example.com\n").unwrap();
        let message = settings.validate().unwrap_err().to_string();
        assert!(message.starts_with("invalid `alerts.webhook_url_file`"), "{message}");
        assert!(!message.contains("ops@example.com"), "{message}");
    }

    #[test]
    fn every_problem_is_reported_on_its_own_line_naming_its_key() {
        let mut settings = valid();
        settings.feeds[0].url = "htp://x".into();
        settings.bus.lossy_capacity = 0;

        let message = settings.validate().unwrap_err().to_string();

        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 2, "{message}");
        assert!(lines[0].starts_with("invalid `bus.lossy_capacity`"), "{message}");
        assert!(lines[1].starts_with("invalid `feeds[0].url`: `htp://x`"), "{message}");
    }

    #[test]
    fn an_unknown_nested_key_is_named_with_its_index_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tickd.toml");
        std::fs::write(&file, "[[feeds]]\nname = \"a\"\n\n[[feeds]]\nname = \"b\"\nurll = \"x\"\n").unwrap();

        let message = Settings::load(Some(&file)).unwrap_err().to_string();

        assert!(message.contains("unknown key `feeds[1].urll`"), "{message}");
        assert!(message.contains(&file.display().to_string()), "{message}");
    }

    #[test]
    fn a_file_overrides_defaults_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tickd.toml");
        std::fs::write(
            &file,
            "summary_interval = \"3s\"\n[[feeds]]\nname = \"a\"\n[feeds.backoff]\nmax = \"1m\"\n",
        )
        .unwrap();

        let settings = Settings::load(Some(&file)).unwrap();

        assert_eq!(settings.summary_interval, Duration::from_secs(3));
        assert_eq!(settings.log, LogSettings::default());
        let feed = &settings.feeds[0];
        assert_eq!(feed.backoff.max, Duration::from_secs(60));
        assert_eq!(feed.backoff.initial, BackoffSettings::default().initial);
        assert_eq!(
            feed,
            &FeedSettings { backoff: feed.backoff.clone(), ..FeedSettings::new("a", defaults::url()) }
        );
    }

    #[test]
    fn a_reload_names_the_changed_keys_outside_the_feeds() {
        let old = Settings { feeds: vec![FeedSettings::new("a", "ws://127.0.0.1:1")], ..Settings::default() };
        let mut new = old.clone();
        assert!(old.restart_only_changes(&new).is_empty());
        new.feeds[0].markets = vec!["M".into()];
        new.feeds.push(FeedSettings::new("b", "ws://127.0.0.1:2"));
        assert!(old.restart_only_changes(&new).is_empty(), "feed changes apply live");
        new.dashboard.max_connections += 1;
        new.log.level = "debug".into();
        new.alert_command = Some("/bin/true".into());
        assert_eq!(
            old.restart_only_changes(&new),
            ["alert_command", "dashboard.max_connections", "log.level"].map(String::from).to_vec()
        );
    }

    #[test]
    fn the_redacted_toml_reads_back_as_the_same_settings() {
        let mut settings = valid();
        settings.alert_command = Some("/usr/local/bin/page-me".into());
        settings.feeds[0].key_id = Some("a952bcbe".into());
        settings.feeds[0].key_file = Some("credential:kalshi".into());
        settings.feeds[0].stale_after = Some(Duration::from_secs(90));
        settings.alerts.spool_warn_fraction = 0.25;

        let text = settings.redacted_toml();

        let back: Settings = toml::from_str(&text).unwrap();
        assert_eq!(back, settings);
    }

    #[test]
    fn a_secret_never_prints() {
        let secret = Secret::new("hunter2".to_string());
        #[derive(Serialize)]
        struct Holder {
            password: Secret<String>,
        }

        let shown = [
            format!("{secret}"),
            format!("{secret:?}"),
            toml::to_string(&Holder { password: secret.clone() }).unwrap(),
        ];

        for text in shown {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn keys_print_as_users_write_them() {
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(display_key(&path(&["feeds", "0", "backoff", "max"])), "feeds[0].backoff.max");
        assert_eq!(display_key(&path(&["log", "level"])), "log.level");
        assert_eq!(display_key(&path(&[])), "");
    }
}
