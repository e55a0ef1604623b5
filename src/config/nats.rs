//! `[nats]`: ticks over NATS JetStream, for recorders and dashboard gateways on other hosts
//! and for two daemons on one feed.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::Problems;
use super::secrets::{first_line, resolve_key_path};

/// The JetStream stream tickd publishes every tick to, and how it reaches the servers.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// The servers: `nats://host:4222`, `tls://host:4222` (TLS), one string or a list.
    #[serde(deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    /// A NATS credentials file (JWT and NKey seed); `credential:<name>` under systemd.
    pub creds_file: Option<PathBuf>,
    /// A file whose first line is the server's token; `credential:<name>` under systemd.
    pub token_file: Option<PathBuf>,
    /// A PEM file of the certificate authorities trusted for `tls://` servers, besides the
    /// Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// The stream's name. Created at start if absent; if present with other settings, tickd
    /// refuses to start and names them.
    pub stream: String,
    /// The first token of every subject: `<prefix>.<feed>.<kind>.<market>`.
    pub subject_prefix: String,
    /// How long the stream keeps a message.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The most bytes the stream keeps (oldest dropped first). Unlimited when absent.
    pub max_bytes: Option<u64>,
    /// Copies of each message in a cluster (1 for a single server, 3 in production).
    pub replicas: usize,
    /// How long the stream remembers message ids to drop a second copy of one.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// This daemon's id in message ids and the leader lease; the host name when absent.
    pub instance: Option<String>,
    /// The durable consumer `tickd record` reads the stream with; recorders that share it
    /// share the work.
    pub consumer: String,
    /// Publishes awaiting the server's acknowledgement at once.
    pub max_in_flight: usize,
    /// The most bytes spooled under `state_dir` while NATS is unreachable or slow; past it,
    /// ticks are not published, a `nats_loss` goes to the gap ledger and an alert fires.
    pub spool_max_bytes: u64,
    /// Two daemons with the same feeds share a leader lease: the leader publishes everything,
    /// the standby trades and lifecycle only.
    pub ha: bool,
    /// How long a leader lease lasts without renewal: the most a takeover takes.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: vec!["nats://127.0.0.1:4222".into()],
            creds_file: None,
            token_file: None,
            ca_file: None,
            stream: "TICKD".into(),
            subject_prefix: "tickd".into(),
            max_age: Duration::from_secs(72 * 3600),
            max_bytes: None,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            instance: None,
            consumer: "tickd-record".into(),
            max_in_flight: 4096,
            spool_max_bytes: 1 << 30,
            ha: false,
            lease_ttl: Duration::from_secs(5),
        }
    }
}

/// A string, or a list of strings.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(url) => vec![url],
        OneOrMany::Many(urls) => urls,
    })
}

/// The most copies a JetStream cluster keeps of a message.
const MAX_REPLICAS: usize = 5;

impl NatsSettings {
    /// The credentials file, with `credential:<name>` resolved.
    pub fn creds_path(&self) -> Option<PathBuf> {
        resolve(self.creds_file.as_deref())
    }

    /// The token file, with `credential:<name>` resolved.
    pub fn token_path(&self) -> Option<PathBuf> {
        resolve(self.token_file.as_deref())
    }

    /// The CA file, with `credential:<name>` resolved.
    pub fn ca_path(&self) -> Option<PathBuf> {
        resolve(self.ca_file.as_deref())
    }

    /// The token, read from `token_file`.
    pub fn token(&self) -> Result<Option<String>, String> {
        self.token_path().map(|path| first_line(&path)).transpose()
    }

    /// `instance`, or the host name.
    pub fn instance_name(&self) -> String {
        self.instance.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "tickd".into())
        })
    }

    pub(super) fn validate_into(&self, problems: &mut Problems) {
        if self.url.is_empty() {
            problems.push("nats.url", "names no server");
        }
        for (i, raw) in self.url.iter().enumerate() {
            let key = if self.url.len() == 1 { "nats.url".to_owned() } else { format!("nats.url[{i}]") };
            match url::Url::parse(raw) {
                Ok(url) if !matches!(url.scheme(), "nats" | "tls") => problems.push(
                    key,
                    format!("has scheme `{}`; expected `nats` or `tls` (`tls://` for TLS)", url.scheme()),
                ),
                Ok(url) if url.host_str().is_none_or(str::is_empty) => problems.push(key, "names no host"),
                Ok(url) if url.password().is_some() || !url.username().is_empty() => {
                    problems.push(key, "carries credentials; use `creds_file` or `token_file`")
                }
                Ok(_) => {}
                Err(e) => problems.push(key, format!("is not a URL: {e}")),
            }
        }
        if self.creds_file.is_some() && self.token_file.is_some() {
            problems.push("nats.token_file", "cannot be used with `creds_file`; choose one");
        }
        for (key, path) in [
            ("nats.creds_file", self.creds_path()),
            ("nats.token_file", self.token_path()),
            ("nats.ca_file", resolve(self.ca_file.as_deref())),
        ] {
            if let Some(path) = path
                && let Err(e) = std::fs::metadata(&path)
            {
                problems.push(key, format!("{} cannot be read: {e}", path.display()));
            }
        }
        if self.stream.is_empty()
            || self.stream.len() > 255
            || self
                .stream
                .bytes()
                .any(|b| !(b'!'..=b'~').contains(&b) || matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'))
        {
            problems.push(
                "nats.stream",
                "must be 1 to 255 printable characters without `.`, `*`, `>`, `/` or `\\`",
            );
        }
        let valid_token = |t: &str| {
            !t.is_empty() && t.bytes().all(|b| (b'!'..=b'~').contains(&b) && !matches!(b, b'*' | b'>'))
        };
        if !self.subject_prefix.split('.').all(valid_token) {
            problems.push(
                "nats.subject_prefix",
                "must be dot-separated tokens of printable characters, without empty tokens, `*` or `>`",
            );
        }
        problems.positive("nats.max_age", self.max_age);
        problems.positive("nats.duplicate_window", self.duplicate_window);
        if self.duplicate_window > self.max_age {
            problems.push("nats.duplicate_window", "must not be longer than `max_age`");
        }
        if self.max_bytes == Some(0) {
            problems.push("nats.max_bytes", "must be at least 1 (omit it for no limit)");
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            problems.push("nats.replicas", format!("must be from 1 to {MAX_REPLICAS}"));
        }
        if let Some(instance) = &self.instance
            && (instance.is_empty() || instance.bytes().any(|b| !(b'!'..=b'~').contains(&b) || b == b':'))
        {
            problems.push("nats.instance", "must be printable characters without spaces or `:`");
        }
        if self.consumer.is_empty()
            || self
                .consumer
                .bytes()
                .any(|b| !(b'!'..=b'~').contains(&b) || matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'))
        {
            problems.push("nats.consumer", "must be printable characters without `.`, `*`, `>`, `/` or `\\`");
        }
        problems.at_least_one("nats.max_in_flight", self.max_in_flight);
        if self.spool_max_bytes < 1 << 20 {
            problems.push("nats.spool_max_bytes", "must be at least 1048576 (1 MiB)");
        }
        problems.positive("nats.lease_ttl", self.lease_ttl);
    }
}

fn resolve(path: Option<&std::path::Path>) -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY");
    path.map(|file| resolve_key_path(file, dir.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::config::tests::{problem_keys, valid};

    fn with(nats: NatsSettings) -> Settings {
        Settings { nats: Some(nats), ..valid() }
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(problem_keys(&with(NatsSettings::default())), Vec::<String>::new());
    }

    #[test]
    fn one_server_may_be_written_as_a_string() {
        let one: NatsSettings = toml::from_str(r#"url = "tls://a:4222""#).expect("one");
        let many: NatsSettings = toml::from_str(r#"url = ["nats://a:4222", "nats://b:4222"]"#).expect("many");
        assert_eq!(one.url, ["tls://a:4222"]);
        assert_eq!(many.url.len(), 2);
    }

    #[test]
    fn every_bad_value_is_named() {
        let bad = NatsSettings {
            url: vec!["http://a:4222".into(), "nats://user:pw@b:4222".into()],
            creds_file: Some("/nonexistent/tickd.creds".into()),
            token_file: Some("/nonexistent/token".into()),
            stream: "TICK.D".into(),
            subject_prefix: "tickd..x".into(),
            max_age: Duration::from_secs(60),
            duplicate_window: Duration::from_secs(120),
            replicas: 0,
            instance: Some("host:1".into()),
            max_in_flight: 0,
            ..NatsSettings::default()
        };
        let mut keys = problem_keys(&with(bad));
        keys.sort();
        keys.dedup();
        assert_eq!(
            keys,
            [
                "nats.creds_file",
                "nats.duplicate_window",
                "nats.instance",
                "nats.max_in_flight",
                "nats.replicas",
                "nats.stream",
                "nats.subject_prefix",
                "nats.token_file",
                "nats.url[0]",
                "nats.url[1]",
            ]
        );
    }
}
