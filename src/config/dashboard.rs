//! `[dashboard]`: the HTTP port, who may use its live stream, and the limits on each client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Problems;
use super::secrets::{Secret, first_line, resolve_key_path};
use super::tls::{CertificateError, ServerCertificate, load_server_certificate};

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
    /// A PEM file with the certificate the port presents, followed by any intermediate
    /// certificates (the chain, leaf first). With `tls_key_file`, the port serves only `https`
    /// and `wss`. Read again on SIGHUP; `credential:<name>` under systemd.
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM private key of `tls_cert_file`'s certificate (PKCS#8, PKCS#1 or SEC1). Read
    /// again on SIGHUP; `credential:<name>` under systemd.
    pub tls_key_file: Option<PathBuf>,
    /// Serve plain HTTP on a `listen` address that is not loopback. Without TLS, a token (and
    /// every frame) crosses the network readable by anyone on the path: set this only when the
    /// path is protected otherwise (a TLS-terminating proxy on a private network).
    pub allow_plaintext: bool,
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
            tls_cert_file: None,
            tls_key_file: None,
            allow_plaintext: false,
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

    /// The paths of `tls_cert_file` and `tls_key_file`, with `credential:<name>` resolved;
    /// `None` unless both are set.
    pub fn tls_paths(&self) -> Option<(PathBuf, PathBuf)> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY");
        let resolve = |file: &std::path::Path| resolve_key_path(file, dir.as_deref());
        Some((resolve(self.tls_cert_file.as_deref()?), resolve(self.tls_key_file.as_deref()?)))
    }

    /// The certificate and key of `tls_cert_file` and `tls_key_file`, read and checked
    /// together; `None` unless both are set. Blocking file I/O.
    pub fn load_certificate(&self) -> Option<Result<ServerCertificate, CertificateError>> {
        let (cert, key) = self.tls_paths()?;
        Some(load_server_certificate(&cert, &key))
    }

    /// Whether `listen` is a loopback address (`127.0.0.0/8`, `::1`, or `::ffff:127.0.0.1`),
    /// which only this host can reach.
    pub fn listens_on_loopback(&self) -> bool {
        self.listen.ip().to_canonical().is_loopback()
    }

    pub(super) fn validate_into(&self, problems: &mut Problems) {
        if !self.enabled {
            return;
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                problems.push("dashboard.tls_key_file", "is missing: `tls_cert_file` needs its private key")
            }
            (None, Some(_)) => {
                problems.push("dashboard.tls_cert_file", "is missing: `tls_key_file` needs its certificate")
            }
            _ => {}
        }
        if let Some(Err(e)) = self.load_certificate() {
            problems.push(format!("dashboard.{}", e.setting()), e.to_string());
        }
        let tls = self.tls_cert_file.is_some() || self.tls_key_file.is_some();
        if !tls && !self.allow_plaintext && !self.listens_on_loopback() {
            problems.push(
                "dashboard.listen",
                format!(
                    "{} is not a loopback address and the port is not served over TLS: set \
                     `tls_cert_file` and `tls_key_file`, or `allow_plaintext = true` when a \
                     TLS-terminating proxy is in front (or listen on 127.0.0.1)",
                    self.listen
                ),
            );
        }
        if self.token.is_some() && self.token_file.is_some() {
            problems.push("dashboard.token", "set either `token` or `token_file`, not both");
        }
        match self.load_token() {
            Err(e) => problems.push("dashboard.token_file", e),
            Ok(None) if !self.listens_on_loopback() => problems.push(
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
        settings.dashboard.allow_plaintext = true;
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
    fn a_dashboard_off_loopback_needs_tls_unless_plaintext_is_allowed() {
        let mut settings = valid();
        settings.dashboard.token = Some(Secret::new("s3cret-token-0123456789".into()));
        for listen in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080"] {
            settings.dashboard.listen = listen.parse().unwrap();
            assert_eq!(problem_keys(&settings), ["dashboard.listen"], "{listen}");
        }
        settings.dashboard.allow_plaintext = true;
        assert_eq!(problem_keys(&settings), Vec::<String>::new());
        settings.dashboard.allow_plaintext = false;
        for listen in ["127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8080", "[::ffff:127.0.0.1]:8080"] {
            settings.dashboard.listen = listen.parse().unwrap();
            assert_eq!(problem_keys(&settings), Vec::<String>::new(), "{listen}");
        }
    }

    #[test]
    fn a_certificate_and_its_key_are_read_and_checked_together() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let issued = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params.not_after = rcgen::date_time_ymd(2031, 1, 1);
            (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
        };
        let (cert_a, key_a) = issued("a.example");
        let (_, key_b) = issued("b.example");
        let mut settings = valid();
        settings.dashboard.listen = "0.0.0.0:8443".parse().unwrap();
        settings.dashboard.token = Some(Secret::new("s3cret-token-0123456789".into()));
        settings.dashboard.tls_cert_file = Some(write("a.pem", &cert_a));
        settings.dashboard.tls_key_file = Some(write("a.key", &key_a));

        let loaded = settings.dashboard.load_certificate().unwrap().unwrap();
        assert_eq!((loaded.not_after, loaded.subject.as_str()), (1_924_992_000, "CN=a.example"));
        assert_eq!(problem_keys(&settings), Vec::<String>::new());

        settings.dashboard.tls_key_file = Some(write("b.key", &key_b));
        assert_eq!(problem_keys(&settings), ["dashboard.tls_key_file"], "a key of another certificate");
        settings.dashboard.tls_key_file = Some(write("empty.key", ""));
        assert_eq!(problem_keys(&settings), ["dashboard.tls_key_file"], "no key");
        settings.dashboard.tls_key_file = Some(dir.path().join("a.key"));
        settings.dashboard.tls_cert_file =
            Some(write("garbage.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"));
        assert_eq!(problem_keys(&settings), ["dashboard.tls_cert_file"], "not a certificate");
        settings.dashboard.tls_cert_file = None;
        assert_eq!(problem_keys(&settings), ["dashboard.tls_cert_file"], "a key alone");
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
