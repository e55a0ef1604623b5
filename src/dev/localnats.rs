//! A private NATS server with JetStream, run from the installed `nats-server` (Debian's
//! package), for the test suite, the benchmarks and `tickd demo --nats`.
//!
//! [`LocalNats::start`] writes a configuration into a scratch directory and starts
//! `nats-server` on it: clients on 127.0.0.1 at a free port, JetStream storing in the scratch
//! directory (or a chosen one, which then survives), the monitoring endpoint on a second port,
//! and, when asked, a token clients must present. It returns once the server reports itself
//! healthy with JetStream ready. [`LocalNats::stop`] and [`LocalNats::restart`] take the server
//! away and bring it back on the same port with the same streams; dropping the [`LocalNats`]
//! stops it, and a [`Watchdog`] stops it if this process dies without dropping it.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;
use tokio::time::{Instant, sleep};
use tracing::{debug, warn};

use crate::dev::process::{self, Watchdog};

/// Environment variable naming the `nats-server` program; it wins over any search.
pub const NATS_SERVER_ENV: &str = "TICKD_NATS_SERVER";

/// Where to look for `nats-server` after `PATH`: Debian installs it in `/usr/sbin`, which is
/// not on an ordinary user's `PATH`.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"];

/// How long a start waits for the server to report JetStream ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stop waits for the server to exit after SIGTERM before killing it.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a start is tried when a port chosen free was taken meanwhile.
const START_ATTEMPTS: u32 = 5;

/// How many lines of the server log a start failure quotes.
const LOG_TAIL_LINES: usize = 20;

/// What went wrong starting or stopping a [`LocalNats`].
#[derive(Debug, thiserror::Error)]
pub enum LocalNatsError {
    /// No `nats-server` program was found.
    #[error(
        "nats-server not found (searched ${NATS_SERVER_ENV}, PATH and {}); install it \
         (apt-get install nats-server) or set {NATS_SERVER_ENV}",
        EXTRA_DIRS.join(", ")
    )]
    NotFound,
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The server ran but did not report JetStream ready in time.
    #[error("nats-server did not become ready within {timeout:?}; its log ends:\n{log_tail}")]
    NotReady {
        /// How long the start waited.
        timeout: Duration,
        /// The end of the server log.
        log_tail: String,
    },
    /// The server exited while starting.
    #[error("nats-server exited ({status}) while starting; its log ends:\n{log_tail}")]
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// The end of the server log.
        log_tail: String,
    },
}

impl LocalNatsError {
    fn is_address_in_use(&self) -> bool {
        matches!(self, LocalNatsError::Exited { log_tail, .. } | LocalNatsError::NotReady { log_tail, .. }
            if log_tail.contains("address already in use"))
    }
}

/// How to start a [`LocalNats`].
#[derive(Clone, Debug, Default)]
pub struct LocalNatsOptions {
    /// Where JetStream stores its streams; `None` = the scratch directory, removed with the
    /// server. A chosen directory keeps its streams between runs.
    pub store_dir: Option<PathBuf>,
    /// The client port on 127.0.0.1; `None` = a free port chosen at start.
    pub port: Option<u16>,
    /// A token every client must present; `None` = no authentication.
    pub token: Option<String>,
}

/// A NATS server of our own, stopped when dropped.
#[derive(Debug)]
pub struct LocalNats {
    program: PathBuf,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    monitor_port: u16,
    /// The server while it runs; the lock also keeps stop and restart from overlapping.
    server: tokio::sync::Mutex<Option<Child>>,
    /// Kills the server if this process dies without dropping `self`.
    watchdog: Option<Watchdog>,
    /// Configuration, log, pid file and, unless chosen elsewhere, the JetStream store.
    scratch: TempDir,
}

impl LocalNats {
    /// Starts a server and waits until it reports JetStream ready.
    pub async fn start(opts: LocalNatsOptions) -> Result<LocalNats, LocalNatsError> {
        let program = find_server()?;
        let scratch = tempfile::Builder::new()
            .prefix("tickd-nats.")
            .tempdir()
            .map_err(io_error("creating a scratch directory for NATS"))?;
        let store_dir = match &opts.store_dir {
            Some(dir) => std::path::absolute(dir)
                .map_err(io_error(format!("resolving store directory {}", dir.display())))?,
            None => scratch.path().join("jetstream"),
        };
        let pid_file = scratch.path().join("nats.pid");
        let mut kill = Command::new("sh");
        kill.arg("-c").arg(r#"kill -KILL "$(cat "$1")""#).arg("sh").arg(&pid_file);
        let watchdog =
            Watchdog::spawn(&kill, scratch.path()).map_err(io_error("starting the NATS watchdog (sh)"))?;
        let mut nats = LocalNats {
            program,
            config: scratch.path().join("nats.conf"),
            log: scratch.path().join("nats.log"),
            port: 0,
            monitor_port: 0,
            server: tokio::sync::Mutex::new(None),
            watchdog: Some(watchdog),
            scratch,
        };
        let mut attempt = 1;
        loop {
            nats.port = match opts.port {
                Some(port) => port,
                None => free_port()?,
            };
            nats.monitor_port = free_port()?;
            let config =
                render_config(nats.port, nats.monitor_port, &store_dir, &pid_file, opts.token.as_deref());
            std::fs::write(&nats.config, config)
                .map_err(io_error(format!("writing {}", nats.config.display())))?;
            match nats.launch().await {
                Ok(child) => {
                    *nats.server.get_mut() = Some(child);
                    return Ok(nats);
                }
                Err(e) if e.is_address_in_use() && attempt < START_ATTEMPTS => {
                    debug!(port = nats.port, attempt, "NATS port taken meanwhile; trying another.");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The client URL: `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server log, appended to by every start.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The scratch directory (configuration, log, and the store unless chosen elsewhere).
    pub fn scratch_dir(&self) -> &Path {
        self.scratch.path()
    }

    /// Stops the server (SIGTERM, then SIGKILL after a while). Its streams stay on disk for a
    /// [`LocalNats::restart`].
    pub async fn stop(&self) -> Result<(), LocalNatsError> {
        let mut server = self.server.lock().await;
        if let Some(child) = server.take() {
            terminate(child).await;
        }
        Ok(())
    }

    /// Starts the server again on the same ports with the same store (stopping it first if it
    /// runs), and waits until JetStream is ready.
    pub async fn restart(&self) -> Result<(), LocalNatsError> {
        let mut server = self.server.lock().await;
        if let Some(child) = server.take() {
            terminate(child).await;
        }
        *server = Some(self.launch().await?);
        Ok(())
    }

    /// Spawns the server and waits for its health endpoint to report JetStream ready.
    async fn launch(&self) -> Result<Child, LocalNatsError> {
        let offset = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io_error(format!("opening {}", self.log.display())))?;
        let log_err = log.try_clone().map_err(io_error("duplicating the NATS log handle"))?;
        let mut cmd = Command::new(&self.program);
        cmd.arg("-c")
            .arg(&self.config)
            .current_dir(self.scratch.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: Ctrl-C meant for the test runner does not reach it first.
            .process_group(0);
        let mut child = cmd.spawn().map_err(io_error(format!("starting {}", self.program.display())))?;
        let health = format!("http://127.0.0.1:{}/healthz?js-enabled-only=true", self.monitor_port);
        let client = crate::http::client_builder(Duration::from_secs(2))
            .and_then(|b| b.build().map_err(crate::http::describe))
            .map_err(|e| LocalNatsError::Io {
                what: "building an HTTP client".into(),
                source: io::Error::other(e),
            })?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(io_error("waiting for nats-server"))? {
                return Err(LocalNatsError::Exited { status, log_tail: log_tail(&self.log, offset) });
            }
            if let Ok(answer) = client.get(&health).send().await
                && answer.status().is_success()
            {
                debug!(port = self.port, "NATS server ready.");
                return Ok(child);
            }
            if Instant::now() >= deadline {
                terminate(child).await;
                return Err(LocalNatsError::NotReady {
                    timeout: START_TIMEOUT,
                    log_tail: log_tail(&self.log, offset),
                });
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.get_mut().take() {
            // Kill: dropping must not wait, and JetStream's file store recovers on the next start.
            if let Err(e) = child.kill() {
                warn!(error = %e, "Stopping NATS on drop failed.");
            }
            // Reaped before the scratch directory (and the store in it) is removed.
            let _ = child.wait();
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            // The server is down; a watchdog acting later could kill an unrelated process that
            // reused the pid, so it goes now.
            let _ = watchdog.child.kill();
            let _ = watchdog.child.wait();
        }
    }
}

/// SIGTERM, then SIGKILL if the server has not exited within [`STOP_TIMEOUT`].
async fn terminate(mut child: Child) {
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = kill_process(pid, Signal::TERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() >= deadline {
            warn!("NATS server ignored SIGTERM; killing it.");
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

fn render_config(
    port: u16,
    monitor_port: u16,
    store_dir: &Path,
    pid_file: &Path,
    token: Option<&str>,
) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut config = format!(
        "listen: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{monitor_port}\"\npid_file: {}\n\
         jetstream {{\n  store_dir: {}\n  max_memory_store: 256MB\n  max_file_store: 8GB\n}}\n",
        quote(&pid_file.to_string_lossy()),
        quote(&store_dir.to_string_lossy()),
    );
    if let Some(token) = token {
        config.push_str(&format!("authorization {{\n  token: {}\n}}\n", quote(token)));
    }
    config
}

/// `nats-server`: `$TICKD_NATS_SERVER`, else the first on `PATH`, else Debian's `/usr/sbin`.
pub fn find_server() -> Result<PathBuf, LocalNatsError> {
    if let Some(program) = std::env::var_os(NATS_SERVER_ENV) {
        return Ok(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or(LocalNatsError::NotFound)
}

fn free_port() -> Result<u16, LocalNatsError> {
    process::free_port().map_err(io_error("finding a free port on 127.0.0.1"))
}

/// The last [`LOG_TAIL_LINES`] lines written to `log` after `offset`.
fn log_tail(log: &Path, offset: u64) -> String {
    process::log_tail(log, offset, LOG_TAIL_LINES)
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> LocalNatsError {
    let what = what.into();
    move |source| LocalNatsError::Io { what, source }
}
