//! Reload: on SIGHUP the settings are read again from the same file and environment and
//! validated. A valid result goes to the running app, which applies feed and market changes
//! live; an invalid one is logged with its keys and the running settings stay. Changed keys
//! that only a restart applies are named in the log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::systemd::Notifier;
use crate::config::{ConfigError, Settings};

/// Loads from the same sources every time (start, SIGHUP) and validates.
pub fn load_settings(path: Option<&Path>) -> Result<Settings, ConfigError> {
    let settings = Settings::load(path)?;
    settings.validate()?;
    Ok(settings)
}

/// On each request, reloads the settings from the same file and environment and validates
/// them. A valid result goes to the app; an invalid one is logged with its keys and the
/// running settings stay. systemd hears RELOADING=1 as each pass begins, and READY=1 when a
/// pass rejects its config (the app says READY=1 once it applied a valid one).
pub async fn reload_configs(
    path: Option<PathBuf>,
    started: Settings,
    requests: Arc<Notify>,
    reloads: mpsc::Sender<Settings>,
    notifier: Notifier,
    shutdown: CancellationToken,
) {
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
        // Reading the config and key files is blocking I/O: keep it off the async workers.
        let settings = match tokio::task::spawn_blocking(move || load_settings(from.as_deref())).await {
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
