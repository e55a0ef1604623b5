//! `[dashboard]`: the HTTP port, who may use its live stream, and the limits on each client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Problems;
use super::secrets::{Secret, first_line, resolve_key_path};

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
    /// HTTP connections open at once before any upgrade (page loads, health checks, metrics
    /// scrapes, upgrades in progress); past it a new connection is closed at once, unanswered.
    /// Counted apart from `max_connections`: a stream client leaves this count once upgraded.
    pub max_http_connections: usize,
    /// How long a connection may take to send a request's headers, counted from when tickd
    /// starts waiting for them; also how long a kept-alive connection may sit idle between
    /// requests. Past it the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
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
    /// WebSocket ping cadence. A client that has sent nothing (not even a pong) for two
    /// intervals, and nothing for an interval since a ping went out to it, is dropped; one
    /// that tickd is still writing to is not (`slow_client_timeout` covers a client that stops
    /// reading).
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
            max_http_connections: 256,
            header_timeout: Duration::from_secs(10),
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

    pub(super) fn validate_into(&self, problems: &mut Problems) {
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
        problems.at_least_one("dashboard.max_http_connections", self.max_http_connections);
        problems.positive("dashboard.header_timeout", self.header_timeout);
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

#[cfg(test)]
mod tests {
    use crate::config::Secret;
    use crate::config::tests::{problem_keys, valid};

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
    fn the_ports_connection_bound_and_header_deadline_must_be_set() {
        let mut settings = valid();
        settings.dashboard.max_http_connections = 0;
        settings.dashboard.header_timeout = std::time::Duration::ZERO;
        assert_eq!(problem_keys(&settings), ["dashboard.max_http_connections", "dashboard.header_timeout"]);
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
}
