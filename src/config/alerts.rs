//! `[alerts]`: when alerts fire and resolve, and the webhook URL whose token never prints.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::Problems;
use super::secrets::{REDACTED, first_line, resolve_key_path};

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
    /// `rest_unreachable` fires when a feed's REST requests have failed (retries exhausted:
    /// no answer, HTTP 429, 5xx, rejected credentials, an answer that cannot be read) for this
    /// long with no success since. The WebSocket stream goes on meanwhile; what needs REST
    /// (listing markets, backfilling trades) waits.
    #[serde(with = "humantime_serde")]
    pub rest_unreachable_after: Duration,
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
            rest_unreachable_after: Duration::from_secs(120),
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

    pub(super) fn validate_into(&self, problems: &mut Problems) {
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
        problems.positive("alerts.rest_unreachable_after", self.rest_unreachable_after);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::tests::{problem_keys, valid};

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
        a.rest_unreachable_after = Duration::ZERO;
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
                "alerts.rest_unreachable_after",
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
}
