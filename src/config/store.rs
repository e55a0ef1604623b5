//! `[store]`: recording ticks in PostgreSQL, and the database URL whose password never prints.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::Problems;
use super::secrets::{REDACTED, resolve_key_path};

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
    /// ...or once its oldest tick could wait no longer and still be committed within this
    /// budget: the writer cuts a batch when its oldest tick has waited `commit_latency` less
    /// the time recent writes took. At low rates a tick waits about this long, under load
    /// batches are cut sooner so that their write fits. Each commit costs PostgreSQL the
    /// same whatever it holds, so fewer, fuller commits cost it less per row.
    #[serde(with = "humantime_serde")]
    pub commit_latency: Duration,
    /// A fixed age at which a batch is cut instead, whatever writes take. Absent: the
    /// adaptive cut of `commit_latency`.
    #[serde(with = "humantime_serde")]
    pub batch_age: Option<Duration>,
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
            commit_latency: Duration::from_millis(50),
            batch_age: None,
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

    pub(super) fn validate_into(&self, problems: &mut Problems) {
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
        problems.positive("store.commit_latency", self.commit_latency);
        if let Some(age) = self.batch_age {
            problems.positive("store.batch_age", age);
        }
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
