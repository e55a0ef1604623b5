//! TLS on the dashboard port: the certificate of `[dashboard] tls_cert_file` and
//! `tls_key_file`, and reading it again on SIGHUP.
//!
//! Each handshake asks [`Resolver`] for the certificate, so a reload changes what the next
//! handshake presents while connections already open keep the session they made. Files that
//! cannot be used on a reload leave the certificate served now in place, with an error log line
//! and `tickd_dashboard_tls_reload_failures_total`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::config::{CertificateError, ServerCertificate, load_server_certificate};
use crate::telemetry::metrics::DashboardMetrics;

/// The one application protocol the port speaks (offered in ALPN): HTTP/1.1, upgraded to
/// WebSocket on `/ws`.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The dashboard port's TLS: what accepts connections, and the handle that reloads its
/// certificate.
pub(crate) struct Tls {
    /// Accepts a connection's handshake.
    pub(crate) acceptor: TlsAcceptor,
    /// Reads the certificate again.
    pub(crate) certificates: Certificates,
}

/// Reads the port's certificate and key again (on SIGHUP); cheap to clone.
#[derive(Clone)]
pub struct Certificates {
    inner: Arc<Inner>,
}

struct Inner {
    /// The certificate file, `credential:` resolved.
    cert: PathBuf,
    /// The key file, `credential:` resolved.
    key: PathBuf,
    /// What the next handshake presents.
    current: RwLock<Arc<CertifiedKey>>,
    /// Counts reloads and keeps the expiry gauge.
    metrics: Arc<DashboardMetrics>,
}

/// Hands each handshake the certificate in service now.
struct Resolver(Arc<Inner>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("cert", &self.0.cert).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

impl Inner {
    fn current(&self) -> Arc<CertifiedKey> {
        // A poisoned lock still holds a whole `Arc`: writers only swap it.
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `loaded` in service and says so in the gauge and the log.
    fn install(&self, loaded: ServerCertificate) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded.certified;
        self.metrics.tls_expiry.store(loaded.not_after, Ordering::Relaxed);
        let expires = UNIX_EPOCH + Duration::from_secs(loaded.not_after);
        let expires_at = humantime::format_rfc3339_seconds(expires).to_string();
        if expires <= SystemTime::now() {
            warn!(
                cert = %self.cert.display(),
                subject = loaded.subject,
                expires = expires_at,
                "The dashboard's TLS certificate has expired: clients will refuse it. Replace it and send SIGHUP."
            );
        } else {
            info!(
                cert = %self.cert.display(),
                subject = loaded.subject,
                expires = expires_at,
                "Dashboard TLS certificate in service."
            );
        }
    }
}

impl Tls {
    /// Reads the certificate and key in `cert` and `key` and builds the acceptor. Blocking
    /// file I/O.
    pub(crate) fn load(cert: PathBuf, key: PathBuf, metrics: Arc<DashboardMetrics>) -> anyhow::Result<Tls> {
        let loaded = load_server_certificate(&cert, &key)
            .map_err(|e| anyhow::anyhow!("dashboard.{}: {e}", e.setting()))?;
        let inner = Arc::new(Inner { cert, key, current: RwLock::new(loaded.certified.clone()), metrics });
        inner.install(loaded);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("the dashboard's TLS cannot be set up: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(inner.clone())));
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), certificates: Certificates { inner } })
    }
}

impl Certificates {
    /// Reads the certificate and key files again and, when they are usable together, serves
    /// them from the next handshake on; connections already open are not touched. Otherwise
    /// the certificate served now stays, and the failure is logged and counted. Blocking file
    /// I/O.
    pub fn reload(&self) -> Result<(), CertificateError> {
        let inner = &self.inner;
        match load_server_certificate(&inner.cert, &inner.key) {
            Ok(loaded) => {
                inner.install(loaded);
                inner.metrics.tls_reloads.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                inner.metrics.tls_reload_failures.fetch_add(1, Ordering::Relaxed);
                error!(
                    key = format!("dashboard.{}", e.setting()),
                    error = %e,
                    "The dashboard's new TLS certificate cannot be used; the one in service stays."
                );
                Err(e)
            }
        }
    }
}
