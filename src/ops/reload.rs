//! Reload: on SIGHUP the settings are read again from the same file and environment and
//! validated. A valid result goes to the running app, which applies feed and market changes
//! live; an invalid one is logged with its keys and the running settings stay. Changed keys
//! that only a restart applies are named in the log.
//!
//! Each pass first reads the dashboard's TLS certificate and key again, whatever the config
//! says: rotating a certificate is replacing its files and sending SIGHUP. Files that cannot
//! be used leave the certificate in service (see [`crate::dashboard::Certificates`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::systemd::Notifier;
use crate::config::{ConfigError, Settings};
use crate::dashboard::Certificates;

/// Loads from the same sources every time (start, SIGHUP) and validates.
pub fn load_settings(path: Option<&Path>) -> Result<Settings, ConfigError> {
    let settings = Settings::load(path)?;
    settings.validate()?;
    Ok(settings)
}

/// What [`reload_configs`] works with.
pub struct ReloadContext {
    /// The config file `tickd run` was given (`None`: the default one, if present).
    pub path: Option<PathBuf>,
    /// The settings the daemon started with, to name the changes that wait for a restart.
    pub started: Settings,
    /// Notified on each SIGHUP.
    pub requests: Arc<Notify>,
    /// Where valid settings go: the app's reload queue.
    pub reloads: mpsc::Sender<Settings>,
    /// The dashboard's TLS certificate, read again on each pass; `None` without TLS.
    pub certificates: Option<Certificates>,
    /// Hears RELOADING=1 and READY=1.
    pub notifier: Notifier,
    /// Ends the task.
    pub shutdown: CancellationToken,
}

/// On each request, reads the dashboard's certificate again, then reloads the settings from
/// the same file and environment and validates them. A valid result goes to the app; an
/// invalid one is logged with its keys and the running settings stay. systemd hears
/// RELOADING=1 as each pass begins, and READY=1 when a pass rejects its config (the app says
/// READY=1 once it applied a valid one).
pub async fn reload_configs(ctx: ReloadContext) {
    let ReloadContext { path, started, requests, reloads, certificates, notifier, shutdown } = ctx;
    loop {
        tokio::select! {
            // A reload while stopping is pointless.
            () = shutdown.cancelled() => return,
            // `notify_one` keeps one permit: SIGHUPs that arrive while we load or wait below
            // coalesce into one more pass, which rereads the file, so the newest config wins.
            () = requests.notified() => {}
        }
        notifier.reloading();
        let from = path.clone();
        let certificates = certificates.clone();
        // Reading the config, key and certificate files is blocking I/O: keep it off the async
        // workers.
        let loaded = tokio::task::spawn_blocking(move || {
            // A failure is logged and counted inside; the certificate in service stays.
            if let Some(certificates) = certificates {
                let _ = certificates.reload();
            }
            load_settings(from.as_deref())
        });
        let settings = match loaded.await {
            Ok(Ok(settings)) => settings,
            Ok(Err(e)) => {
                error!(error = %e, keys = ?e.keys(), "Reload rejected; the running configuration stays.");
                notifier.ready();
                continue;
            }
            Err(e) => {
                error!(error = %e, "Reload failed; the running configuration stays.");
                notifier.ready();
                continue;
            }
        };
        // Only feeds and their markets change live; the rest runs as it started.
        let later = started.restart_only_changes(&settings);
        if !later.is_empty() {
            warn!(keys = ?later, "These settings changed and take effect after a restart; the running values stay.");
        }
        // The queue is bounded (the app's RELOAD_QUEUE). When full, the app is behind on reloads: wait
        // for room rather than drop this config, which is the newest one; later SIGHUPs
        // coalesce in `requests` meanwhile. Each reload is a whole snapshot, so applying the
        // queued older ones first is harmless.
        tokio::select! {
            // Stopping: a reload is pointless now; this config is dropped.
            () = shutdown.cancelled() => return,
            // Room in the queue: the app applies this config in turn.
            sent = reloads.send(settings) => match sent {
                Ok(()) => info!("Configuration reloaded."),
                // The app dropped its receiver: it takes no more reloads.
                Err(_) => return,
            },
        }
    }
}
