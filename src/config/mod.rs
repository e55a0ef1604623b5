//! The typed settings tree: built-in defaults < TOML file < `TICKD_` environment variables.
//!
//! Every field's `///` doubles as user documentation (mirrored in
//! `config/tickd.example.toml`). Unknown keys are errors that name the key. Secrets are never
//! in the TOML itself: the Kalshi private key comes from a PEM file named by path.
//!
//! In: a config file path (or none) and the process environment. Out: a [`Settings`] tree
//! that [`Settings::validate`] has checked once, and its redacted TOML rendering for
//! `tickd check-config`. A [`ConfigError`] always names the offending key and its source.
//!
//! This module owns the root of the tree ([`Settings`]), loading, the list of problems that
//! validation collects and [`ConfigError`]. Each section has its own file with its checks
//! beside it (`log`, `bus`, `store`, `nats`, `dashboard`, `alerts`, `feeds`); `secrets` holds
//! [`Secret`], redaction and `credential:` files, `tls` reads TLS certificates and keys, and
//! `reload` names the changed keys that wait
//! for a restart. Every public type is re-exported here: callers write `config::FeedSettings`.

mod alerts;
mod bus;
mod dashboard;
mod feeds;
mod load_errors;
mod log;
mod nats;
mod reload;
mod secrets;
mod store;
mod tls;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

pub use alerts::{AlertSettings, MAX_WEBHOOK_RETRIES, WebhookUrl};
pub use bus::BusSettings;
pub use dashboard::DashboardSettings;
pub use feeds::{BackoffSettings, FeedSettings, GiveUpPolicy, LoadedKey, MARKET_CHANNELS, VenueKey};
pub use log::{LogFormat, LogSettings};
pub use nats::NatsSettings;
pub use secrets::{CREDENTIAL_PREFIX, Secret};
pub use store::{DatabaseUrl, StoreSettings};
pub use tls::{CertificateError, ServerCertificate, load_server_certificate};

/// The whole configuration of a tickd process.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where tickd keeps state that must survive a restart: the store's spool, the batches the
    /// database refused and the alerts still open (`alerts.json`).
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
    /// Publishing every tick to NATS JetStream. Without a `[nats]` table, nothing leaves the
    /// host but the dashboard's stream.
    pub nats: Option<NatsSettings>,
    /// The HTTP port: the dashboard page, the live stream (`/ws`) and health checks.
    pub dashboard: DashboardSettings,
    /// When alerts fire and resolve, and the webhook that hears of them.
    pub alerts: AlertSettings,
    /// The exchange connections, one entry per feed.
    pub feeds: Vec<FeedSettings>,
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
            nats: None,
            dashboard: DashboardSettings::default(),
            alerts: AlertSettings::default(),
            feeds: Vec::new(),
        }
    }
}

/// Where `tickd` reads its config file when `--config` is not given. It may be absent.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tickd/tickd.toml";

/// Prefix of the environment variables that override the file; `__` separates nested keys
/// (`TICKD_LOG__LEVEL=debug` sets `log.level`).
pub const ENV_PREFIX: &str = "TICKD_";

/// Why settings could not be loaded or are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file named explicitly (`--config`) does not exist.
    #[error("config file {} does not exist", .path.display())]
    NotFound {
        /// The path as given.
        path: PathBuf,
    },
    /// Sources could not be read or parsed into settings: TOML syntax, unknown keys, values of
    /// the wrong type, each named with its key and its file or variable; and, so that one run
    /// names everything, the problems [`Settings::validate`] finds in the values that could be
    /// read (empty when the file cannot be parsed at all).
    #[error("{}", render_load(.errors, .problems))]
    Load {
        /// What could not be read, in the order found.
        errors: Vec<figment::Error>,
        /// What is wrong with the values that could be read.
        problems: Vec<Problem>,
    },
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
            ConfigError::Load { errors, problems } => errors
                .iter()
                .map(|e| display_key(&e.path))
                .chain(problems.iter().map(|p| p.key.clone()))
                .collect(),
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
/// indices); users write `feeds[0].urll` and want the environment variable's real name. One
/// line per error, then one per problem.
fn render_load(errors: &[figment::Error], problems: &[Problem]) -> String {
    let lines: Vec<String> = errors
        .iter()
        .flat_map(|err| err.clone().into_iter())
        .map(|e| render_one(&e))
        .chain(problems.iter().map(Problem::to_string))
        .collect();
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
    /// present. Does not validate values that load: call [`Settings::validate`]. When some
    /// cannot load, the error names every one (see [`load_errors`]) and what validation says
    /// of the rest, so that one run of `check-config` finds everything.
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
        let figment =
            Figment::new().merge(Toml::file_exact(file)).merge(Env::prefixed(ENV_PREFIX).split("__"));
        figment.extract().map_err(|first| load_errors::collect(&figment, first))
    }

    /// Checks every value that could make the daemon misbehave and reports all problems at
    /// once, each naming its key. Loads each signed feed's key through its venue
    /// ([`VenueKey`]) and keeps it in these settings, so the feeds sign with the key checked
    /// here and nothing reads the key file again.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.problems(true).into_result()
    }

    /// Validates settings for `tickd record`, which reads NATS rather than the exchange: a
    /// `[nats]` and a `[store]` table are required and feeds are not (any given are checked
    /// all the same, so one config file serves `tickd run` and `tickd record`).
    pub fn validate_record(&self) -> Result<(), ConfigError> {
        let mut problems = self.problems(false);
        if self.nats.is_none() {
            problems.push("nats", "tickd record needs a [nats] table: the stream it records");
        }
        if self.store.is_none() {
            problems.push("store", "tickd record needs a [store] table: the database it records into");
        }
        problems.into_result()
    }

    fn problems(&self, require_feeds: bool) -> Problems {
        let mut problems = Problems::default();
        self.log.validate_into(&mut problems);
        problems.positive("summary_interval", self.summary_interval);
        self.bus.validate_into(&mut problems);
        if let Some(Err(message)) = self.alert_command.as_deref().map(check_executable) {
            problems.push("alert_command", message);
        }
        if let Some(store) = &self.store {
            store.validate_into(&mut problems);
        }
        if let Some(nats) = &self.nats {
            nats.validate_into(&mut problems);
        }
        self.dashboard.validate_into(&mut problems);
        self.alerts.validate_into(&mut problems);
        if require_feeds && self.feeds.is_empty() {
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
        problems
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One feed with defaults and one market: no problem at all.
    pub(super) fn valid() -> Settings {
        let mut feed = FeedSettings::new("kalshi", "wss://external-api-ws.kalshi.com/trade-api/ws/v2");
        feed.markets = vec!["KXBTC-25DEC31".into()];
        Settings { feeds: vec![feed], ..Settings::default() }
    }

    /// The keys of every problem `validate` reports for `settings`.
    pub(super) fn problem_keys(settings: &Settings) -> Vec<String> {
        match settings.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.keys(),
        }
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
    fn a_recorder_needs_nats_and_a_store_and_no_feed() {
        let none = Settings::default();
        let err = none.validate_record().expect_err("nothing to record from or into").to_string();
        assert!(err.contains("`nats`") && err.contains("`store`") && !err.contains("`feeds`"), "{err}");

        let recorder = Settings {
            nats: Some(NatsSettings::default()),
            store: Some(StoreSettings::default()),
            ..Settings::default()
        };
        assert!(recorder.validate_record().is_ok());
        assert!(recorder.validate().is_err(), "tickd run still needs a feed");
    }

    #[test]
    fn feed_names_must_be_present_and_unique() {
        let mut settings = valid();
        settings.feeds.push(settings.feeds[0].clone());
        settings.feeds.push(FeedSettings { name: " ".into(), ..settings.feeds[0].clone() });
        assert_eq!(problem_keys(&settings), ["feeds[1].name", "feeds[2].name"]);
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
            &FeedSettings { backoff: feed.backoff.clone(), ..FeedSettings::new("a", feeds::defaults::url()) }
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
    fn keys_print_as_users_write_them() {
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(display_key(&path(&["feeds", "0", "backoff", "max"])), "feeds[0].backoff.max");
        assert_eq!(display_key(&path(&["log", "level"])), "log.level");
        assert_eq!(display_key(&path(&[])), "");
    }
}
