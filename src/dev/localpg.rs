//! A private PostgreSQL server run from the installed server binaries, for the test suite and
//! `tickd demo`.
//!
//! [`LocalPg::start`] creates a cluster with `initdb` (or reuses the one already in the data
//! directory) and starts it with `pg_ctl`: listening on 127.0.0.1 only, its Unix socket in a
//! private scratch directory rather than `/var/run/postgresql`, and `trust` authentication for
//! the superuser `postgres`. Out come URLs (`postgres://postgres@127.0.0.1:{port}/{database}`);
//! [`LocalPg::stop`] and [`LocalPg::restart`] take the database away and bring it back, and
//! dropping the [`LocalPg`] stops the server.
//!
//! `initdb` and the server refuse to run as root, so when tickd runs as root they run as the
//! `postgres` system user (through `setpriv`), and the directories they need are handed to it.
//!
//! `pg_ctl` detaches the server, so it would outlive a process that dies without dropping its
//! `LocalPg`; a [`Watchdog`] stops it then and removes the scratch directory.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use tempfile::TempDir;
use tracing::{debug, info, warn};

use crate::dev::process::{self, Watchdog};

/// Environment variable naming the directory that holds `initdb` and `pg_ctl`; it wins over
/// any search.
pub const PG_BIN_ENV: &str = "TICKD_PG_BIN";

/// The superuser every cluster is created with; it authenticates by `trust`.
pub const SUPERUSER: &str = "postgres";

/// The system user the server runs as when tickd runs as root.
const SERVER_USER: &str = "postgres";

/// Where Debian and Ubuntu install each major version's server binaries (`<version>/bin`).
const DEBIAN_PG_LIB: &str = "/usr/lib/postgresql";

/// The server log, appended to by every start, inside the data directory.
const LOG_FILE: &str = "server.log";

/// How many times a start is tried when it fails for a passing reason: another server took the
/// free port first, or a killed server's last processes still hold its shared memory.
const START_ATTEMPTS: u32 = 5;

/// Pause before retrying a start whose shared memory is still held.
const SHARED_MEMORY_RETRY: Duration = Duration::from_millis(300);

/// How long a server still holding the data directory gets to go away (for instance one a
/// killed run's watchdog is stopping) before the start reports it as running.
const HOLDER_GRACE: Duration = Duration::from_secs(5);

/// How long `pg_ctl` waits for the server to accept connections, in seconds.
const START_TIMEOUT_SECS: &str = "60";

/// How many lines of the server log a start failure quotes.
const LOG_TAIL_LINES: usize = 20;

/// Settings every server gets. `max_connections` is high because the test suite runs many
/// pools against one server at once.
const SERVER_SETTINGS: &[&str] = &[
    "listen_addresses=127.0.0.1",
    "shared_buffers=128MB",
    "max_connections=200",
    "log_min_messages=warning",
    // The log is read back to classify start failures, so it must not be translated.
    "lc_messages=C",
];

/// Extra settings for a cluster in a temporary directory: its data dies with the process, so
/// surviving an operating system crash is worth nothing and skipping the flushes makes the
/// test suite faster. A cluster in a chosen directory keeps normal durability.
const THROWAWAY_SETTINGS: &[&str] = &["fsync=off", "synchronous_commit=off", "full_page_writes=off"];

/// What can go wrong running a private server.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    /// No `initdb` and `pg_ctl` anywhere tickd looks.
    #[error(
        "PostgreSQL server binaries not found; install postgresql (apt-get install postgresql) \
         or set TICKD_PG_BIN"
    )]
    BinariesNotFound,
    /// `TICKD_PG_BIN` names a directory without the server binaries.
    #[error("TICKD_PG_BIN={}: no executable initdb and pg_ctl there", .0.display())]
    BadBinDir(PathBuf),
    /// Running as root, but there is no `postgres` user to run the server as.
    #[error(
        "running as root, and PostgreSQL refuses to: it must run as the `postgres` system user, \
         which does not exist; install postgresql (it creates the user) or run as an ordinary user"
    )]
    NoServerUser,
    /// A directory the server needs lies behind one the `postgres` user cannot enter.
    #[error(
        "{}: the postgres user (PostgreSQL refuses to run as root) cannot reach it, because {} \
         (mode {mode:o}, owner uid {owner}) does not let it through; use a directory outside it \
         (for instance under /var/lib or /tmp) or allow traversal (chmod o+x {})",
        path.display(), blocked.display(), blocked.display()
    )]
    Unreachable {
        /// The directory the server needs.
        path: PathBuf,
        /// The first directory on the way that the server user cannot traverse.
        blocked: PathBuf,
        /// `blocked`'s permission bits.
        mode: u32,
        /// `blocked`'s owner.
        owner: u32,
    },
    /// The data directory holds files but no cluster; `initdb` would refuse it.
    #[error(
        "{}: not empty and holds no PostgreSQL cluster (no PG_VERSION); use an empty or absent directory",
        .0.display()
    )]
    NotACluster(PathBuf),
    /// Another live server already runs on the data directory.
    #[error(
        "{}: a PostgreSQL server (pid {pid}) already runs on this data directory; stop it or use \
         another directory",
        data_dir.display()
    )]
    AlreadyRunning {
        /// The contested data directory.
        data_dir: PathBuf,
        /// The running server's process id.
        pid: u32,
    },
    /// A file system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A PostgreSQL program (or a tool it is run with) failed.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed.
        output: String,
    },
    /// The server did not come up.
    #[error(
        "PostgreSQL did not start on 127.0.0.1:{port} (data directory {}): {reason}\n\
         server log ({}) ends with:\n{log_tail}",
        data_dir.display(), log.display()
    )]
    StartFailed {
        /// The port it was to listen on.
        port: u16,
        /// Its data directory.
        data_dir: PathBuf,
        /// What `pg_ctl` said.
        reason: String,
        /// The server log.
        log: PathBuf,
        /// The lines this start added to the server log.
        log_tail: String,
    },
    /// `CREATE DATABASE` (or connecting to run it) failed.
    #[error("creating database {name:?}: {source}")]
    CreateDatabase {
        /// The database.
        name: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

impl LocalPgError {
    /// Whether a start failed because another process holds the port; a start on a port of
    /// its own choosing retries with another.
    pub fn is_address_in_use(&self) -> bool {
        matches!(self, LocalPgError::StartFailed { log_tail, .. }
            if log_tail.contains("Address already in use")
                || log_tail.contains("could not create any TCP/IP sockets"))
    }

    /// Whether a start failed because the processes of a killed server still hold its shared
    /// memory; they exit within moments of noticing, so a retry succeeds.
    fn is_shared_memory_in_use(&self) -> bool {
        matches!(self, LocalPgError::StartFailed { log_tail, .. }
            if log_tail.contains("pre-existing shared memory block"))
    }
}

/// How to start a [`LocalPg`].
#[derive(Clone, Debug, Default)]
pub struct LocalPgOptions {
    /// Where the cluster lives; `None` = a fresh temporary directory removed when the LocalPg is dropped.
    /// An existing cluster there is reused (initdb only when empty/absent), so data survives between runs.
    pub data_dir: Option<PathBuf>,
    /// TCP port on 127.0.0.1; `None` = a free port chosen at start.
    pub port: Option<u16>,
}

/// A PostgreSQL server of our own, stopped when dropped.
#[derive(Debug)]
pub struct LocalPg {
    /// Runs the PostgreSQL programs.
    tools: Tools,
    /// The cluster's directory, absolute.
    data_dir: PathBuf,
    /// The server log, inside `data_dir`.
    log: PathBuf,
    /// The directory of the server's Unix socket, inside `scratch`.
    socket_dir: PathBuf,
    /// Whether the cluster lives in `scratch` and dies with it.
    throwaway: bool,
    /// The TCP port, fixed at start so that a restart serves the same URLs.
    port: u16,
    /// Whether the server runs; the lock also keeps stop and restart from overlapping.
    running: tokio::sync::Mutex<bool>,
    /// Stops the server if this process dies without dropping `self`.
    watchdog: Option<Watchdog>,
    /// Socket directory, and the cluster when `throwaway`. Held only to be removed on drop,
    /// which happens after the server has stopped (fields drop after `Drop::drop`).
    _scratch: TempDir,
}

impl LocalPg {
    /// Creates the cluster if the data directory holds none, and starts the server.
    pub async fn start(opts: LocalPgOptions) -> Result<LocalPg, LocalPgError> {
        let tools = Tools::detect().await?;
        // tempfile leaves the mode to the umask; the socket lives here, so keep it private.
        let scratch = tempfile::Builder::new()
            .prefix("tickd-pg.")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(io_error("creating a scratch directory for PostgreSQL"))?;
        tools.hand_over(scratch.path())?;
        tools.check_reachable(scratch.path()).await?;
        let socket_dir = scratch.path().join("socket");
        create_dir_all(&socket_dir)?;
        tools.hand_over(&socket_dir)?;

        let (data_dir, throwaway) = match opts.data_dir {
            Some(dir) => {
                let dir = std::path::absolute(&dir)
                    .map_err(io_error(format!("resolving data directory {}", dir.display())))?;
                (dir, false)
            }
            None => (scratch.path().join("data"), true),
        };
        // Checked before creating anything, so a bad choice leaves no trace, and again after,
        // since directories created under a strict umask may not let the server user through.
        tools.check_reachable(&data_dir).await?;
        let initialized = prepare_data_dir(&tools, &data_dir)?;
        tools.check_reachable(&data_dir).await?;

        let stop_on_exit = tools.pg_ctl_stop_command(&data_dir, "immediate");
        let watchdog = Watchdog::spawn(&stop_on_exit, scratch.path())
            .map_err(io_error("starting the PostgreSQL watchdog (sh)"))?;
        let log = data_dir.join(LOG_FILE);
        // From here on, dropping `pg` on an error cleans up the scratch directory and watchdog.
        let mut pg = LocalPg {
            tools,
            data_dir,
            log,
            socket_dir,
            throwaway,
            port: 0,
            running: tokio::sync::Mutex::new(false),
            watchdog: Some(watchdog),
            _scratch: scratch,
        };
        if !initialized {
            pg.initdb().await?;
        }

        let mut attempt = 1;
        loop {
            pg.port = match opts.port {
                Some(port) => port,
                None => free_port()?,
            };
            match pg.launch().await {
                Ok(()) => break,
                // Between releasing the probe socket and the server binding the port, another
                // process (often another test's server) may have taken it.
                Err(e) if opts.port.is_none() && e.is_address_in_use() && attempt < START_ATTEMPTS => {
                    debug!(port = pg.port, attempt, "PostgreSQL port taken meanwhile; trying another.");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        *pg.running.get_mut() = true;
        Ok(pg)
    }

    /// The TCP port the server listens on at 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` as the superuser, which needs no password.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{}", self.port, percent_encode(database))
    }

    /// Creates `database` (an existing one is fine) and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String, LocalPgError> {
        let failed = |source| LocalPgError::CreateDatabase { name: name.to_owned(), source };
        let mut conn = PgConnection::connect(&self.url("postgres")).await.map_err(failed)?;
        // A database name cannot be a bind parameter. Quoted, with inner quotes doubled, any
        // name is one identifier, so the formatted statement is safe.
        let sql = format!("CREATE DATABASE {}", quote_ident(name));
        match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await {
            Ok(_) => {}
            // 42P04 duplicate_database: it exists, which is what the caller wants.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(failed(e)),
        }
        // The database exists whatever the goodbye does; a failed close is not the caller's problem.
        if let Err(e) = conn.close().await {
            debug!(error = %e, "Closing the admin connection failed.");
        }
        Ok(self.url(name))
    }

    /// Stops the server (fast shutdown: sessions are ended, the data is kept). Stopping a
    /// stopped server does nothing.
    pub async fn stop(&self) -> Result<(), LocalPgError> {
        let mut running = self.running.lock().await;
        if *running {
            self.tools.pg_ctl_stop(&self.data_dir, "fast").await?;
            *running = false;
            info!(port = self.port, "PostgreSQL stopped.");
        }
        Ok(())
    }

    /// Starts the server again, on the same port, after [`LocalPg::stop`]. Restarting a
    /// running server does nothing.
    pub async fn restart(&self) -> Result<(), LocalPgError> {
        let mut running = self.running.lock().await;
        if !*running {
            self.launch().await?;
            *running = true;
        }
        Ok(())
    }

    /// The directory of the server's Unix socket (`.s.PGSQL.{port}`), for clients that would
    /// rather not go through TCP (`?host={dir}` in a URL).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log, inside the data directory.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Creates the cluster in the (empty) data directory.
    async fn initdb(&self) -> Result<(), LocalPgError> {
        let began = Instant::now();
        let mut cmd = self.tools.command("initdb");
        cmd.arg("-D").arg(&self.data_dir);
        cmd.args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--locale=C"]);
        if self.throwaway {
            cmd.arg("--no-sync");
        }
        run_ok(cmd).await?;
        let elapsed_ms = began.elapsed().as_millis();
        info!(data_dir = %self.data_dir.display(), elapsed_ms, "PostgreSQL cluster created.");
        Ok(())
    }

    /// Starts the server on `self.port`, retrying while a killed server's processes linger.
    async fn launch(&self) -> Result<(), LocalPgError> {
        let mut attempt = 1;
        loop {
            self.clear_stale_pid().await?;
            match self.start_server().await {
                Err(e) if e.is_shared_memory_in_use() && attempt < START_ATTEMPTS => {
                    debug!(attempt, "A killed PostgreSQL still holds its shared memory; retrying.");
                    tokio::time::sleep(SHARED_MEMORY_RETRY).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// One `pg_ctl start`, waiting until the server accepts connections.
    async fn start_server(&self) -> Result<(), LocalPgError> {
        let began = Instant::now();
        // Only what this start appends to the (shared, growing) log explains its failure.
        let log_offset = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.tools.command("pg_ctl");
        cmd.args(["start", "-w", "-t", START_TIMEOUT_SECS, "-D"]).arg(&self.data_dir);
        // Without `-l` the server would inherit pg_ctl's captured output and the wait for that
        // output would never end.
        cmd.arg("-l").arg(&self.log);
        cmd.arg("-o").arg(self.server_options());
        let output = run(cmd).await?;
        if output.status.success() {
            let elapsed_ms = began.elapsed().as_millis();
            info!(port = self.port, data_dir = %self.data_dir.display(), elapsed_ms, "PostgreSQL started.");
            return Ok(());
        }
        let reason = printed(&output);
        // On a timeout pg_ctl gives up while the server may still be coming up, and nothing may
        // be left running before the caller retries or reports. Any other failure means the
        // server exited, and a stop could only hit a server someone else runs on this directory.
        if reason.contains("did not start in time")
            && let Err(e) = self.tools.pg_ctl_stop(&self.data_dir, "immediate").await
        {
            debug!(error = %e, "Stopping a server that started too slowly failed.");
        }
        Err(LocalPgError::StartFailed {
            port: self.port,
            data_dir: self.data_dir.clone(),
            reason,
            log: self.log.clone(),
            log_tail: log_tail(&self.log, log_offset),
        })
    }

    /// The server's command line options; `pg_ctl` hands them to a shell, hence the quoting.
    fn server_options(&self) -> String {
        let mut options = format!(
            "-p {} -c unix_socket_directories={}",
            self.port,
            shell_quote(&self.socket_dir.to_string_lossy())
        );
        let extra = if self.throwaway { THROWAWAY_SETTINGS } else { &[] };
        for setting in SERVER_SETTINGS.iter().chain(extra) {
            // Writing to a String cannot fail.
            let _ = write!(options, " -c {setting}");
        }
        options
    }

    /// Deals with a `postmaster.pid` left in the data directory. A live server holding it gets
    /// [`HOLDER_GRACE`] to go away; a file whose process is gone (or is now another program)
    /// is removed, so that a reused process id cannot make PostgreSQL think its server lives.
    async fn clear_stale_pid(&self) -> Result<(), LocalPgError> {
        let pid_file = self.data_dir.join("postmaster.pid");
        let deadline = Instant::now() + HOLDER_GRACE;
        loop {
            let Ok(text) = std::fs::read_to_string(&pid_file) else { return Ok(()) };
            // A file without a process id is PostgreSQL's to judge.
            let Some(pid) = text.lines().next().and_then(|line| line.trim().parse::<u32>().ok()) else {
                return Ok(());
            };
            match pid_holder(pid, &self.data_dir) {
                Holder::Unknown => return Ok(()),
                Holder::Gone => {
                    match std::fs::remove_file(&pid_file) {
                        Ok(()) => {
                            info!(pid, data_dir = %self.data_dir.display(), "Removed a stale postmaster.pid.")
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_error(format!("removing stale {}", pid_file.display()))(e)),
                    }
                    return Ok(());
                }
                Holder::Server if Instant::now() >= deadline => {
                    return Err(LocalPgError::AlreadyRunning { data_dir: self.data_dir.clone(), pid });
                }
                Holder::Server => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for LocalPg {
    fn drop(&mut self) {
        if *self.running.get_mut() {
            // Immediate: dropping must not wait for a checkpoint, and the WAL keeps the data safe.
            let stop = self.tools.pg_ctl_stop_command(&self.data_dir, "immediate").output();
            match stop {
                Ok(out) if !out.status.success() => {
                    warn!(output = %printed(&out), "Stopping PostgreSQL on drop failed.")
                }
                Ok(_) => debug!(port = self.port, "PostgreSQL stopped on drop."),
                Err(e) => warn!(error = %e, "Stopping PostgreSQL on drop failed."),
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            // The server is down; a watchdog acting later could stop the next server on the
            // same data directory, so it goes now.
            if let Err(e) = watchdog.child.kill() {
                debug!(error = %e, "Killing the PostgreSQL watchdog failed.");
            }
            let _ = watchdog.child.wait();
        }
    }
}

/// Finds the directory holding `initdb` and `pg_ctl`: `$TICKD_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` with `initdb`, else a directory on `PATH` with both.
pub fn find_bin_dir() -> Result<PathBuf, LocalPgError> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV).filter(|dir| !dir.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_server_tools(&dir) { Ok(dir) } else { Err(LocalPgError::BadBinDir(dir)) };
    }
    if let Some(dir) = newest_versioned_bin_dir(Path::new(DEBIAN_PG_LIB)) {
        return Ok(dir);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| has_server_tools(dir)))
        .ok_or(LocalPgError::BinariesNotFound)
}

/// The `<root>/<version>/bin` with `initdb` and the highest version.
fn newest_versioned_bin_dir(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            is_executable(&bin.join("initdb")).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

fn has_server_tools(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs the PostgreSQL programs, as the server user when this process is root.
#[derive(Debug)]
struct Tools {
    /// Holds `initdb` and `pg_ctl`.
    bin_dir: PathBuf,
    /// `Some((uid, gid))` of the server user when this process is root.
    server_user: Option<(u32, u32)>,
}

impl Tools {
    async fn detect() -> Result<Tools, LocalPgError> {
        let bin_dir = find_bin_dir()?;
        let server_user = if id(&["-u"]).await? == Some(0) {
            match (id(&["-u", SERVER_USER]).await?, id(&["-g", SERVER_USER]).await?) {
                (Some(uid), Some(gid)) => Some((uid, gid)),
                _ => return Err(LocalPgError::NoServerUser),
            }
        } else {
            None
        };
        Ok(Tools { bin_dir, server_user })
    }

    /// `program` from the bin directory; see [`Tools::as_server_user`].
    fn command(&self, program: &str) -> Command {
        self.as_server_user(self.bin_dir.join(program))
    }

    /// `program` run as the server user, from `/` (the PostgreSQL programs fail in a working
    /// directory the server user cannot read), stdin closed, output captured.
    fn as_server_user(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = match self.server_user {
            Some((uid, gid)) => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Messages are parsed, so untranslated; the data directory and port are always
            // given, so ambient defaults must not creep in.
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        cmd
    }

    /// `pg_ctl stop` in `mode`, waiting until the server is gone.
    fn pg_ctl_stop_command(&self, data_dir: &Path, mode: &str) -> Command {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(data_dir).args(["-m", mode, "-w"]);
        cmd
    }

    /// Stops the server; one that is not running counts as stopped.
    async fn pg_ctl_stop(&self, data_dir: &Path, mode: &str) -> Result<(), LocalPgError> {
        let stop = self.pg_ctl_stop_command(data_dir, mode);
        let line = command_line(&stop);
        let output = run(stop).await?;
        if output.status.success() {
            return Ok(());
        }
        let mut status = self.command("pg_ctl");
        status.arg("status").arg("-D").arg(data_dir);
        // pg_ctl status exits with 3 when no server runs on the directory.
        if run(status).await?.status.code() == Some(3) {
            return Ok(());
        }
        Err(command_failed(line, &output))
    }

    /// Gives `dir` to the server user when running as root.
    fn hand_over(&self, dir: &Path) -> Result<(), LocalPgError> {
        match self.server_user {
            Some((uid, gid)) => std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .map_err(io_error(format!("giving {} to the {SERVER_USER} user", dir.display()))),
            None => Ok(()),
        }
    }

    /// Checks that the server user can traverse every existing directory down to `path`.
    /// Only root runs the server as another user; otherwise any path we can create we can reach.
    async fn check_reachable(&self, path: &Path) -> Result<(), LocalPgError> {
        if self.server_user.is_none() {
            return Ok(());
        }
        let mut dirs: Vec<&Path> = path.ancestors().filter(|dir| dir.is_dir()).collect();
        dirs.reverse();
        // Asks as the server user itself, so ACLs and group membership count; prints the
        // first directory, from `/` down, that does not let it through.
        let mut cmd = self.as_server_user("sh");
        cmd.arg("-c")
            .arg(r#"for d do [ -x "$d" ] || { printf %s "$d"; exit 1; }; done"#)
            .arg("sh")
            .args(&dirs);
        let line = command_line(&cmd);
        let output = run(cmd).await?;
        match output.status.code() {
            Some(0) => Ok(()),
            Some(1) if !output.stdout.is_empty() => {
                let blocked = PathBuf::from(String::from_utf8_lossy(&output.stdout).into_owned());
                let meta = std::fs::metadata(&blocked)
                    .map_err(io_error(format!("inspecting {}", blocked.display())))?;
                Err(LocalPgError::Unreachable {
                    path: path.to_owned(),
                    blocked,
                    mode: meta.permissions().mode() & 0o7777,
                    owner: meta.uid(),
                })
            }
            _ => Err(command_failed(line, &output)),
        }
    }
}

/// Who holds a `postmaster.pid`.
enum Holder {
    /// A live server on this data directory.
    Server,
    /// Nobody: the process is gone, a zombie, or another program that reused the id.
    Gone,
    /// Cannot tell without `/proc`; PostgreSQL's own check decides.
    Unknown,
}

fn pid_holder(pid: u32, data_dir: &Path) -> Holder {
    if !Path::new("/proc/self").exists() {
        return Holder::Unknown;
    }
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc.join("stat")) else { return Holder::Gone };
    // The state letter follows the command name in parentheses, which may hold parentheses.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X')) {
        // A zombie nobody reaps (no init in a container) still answers kill(pid, 0).
        return Holder::Gone;
    }
    let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
    if comm.trim_end() != "postgres" {
        return Holder::Gone;
    }
    // The server works in its data directory. Unreadable (not ours to inspect): assume it is ours.
    match (std::fs::read_link(proc.join("cwd")), std::fs::canonicalize(data_dir)) {
        (Ok(cwd), Ok(dir)) if cwd != dir => Holder::Gone,
        _ => Holder::Server,
    }
}

/// Makes sure `data_dir` exists, belongs to the server user and either holds a cluster
/// (`true`) or is empty, ready for `initdb` (`false`).
fn prepare_data_dir(tools: &Tools, data_dir: &Path) -> Result<bool, LocalPgError> {
    if data_dir.join("PG_VERSION").is_file() {
        return Ok(true);
    }
    if data_dir.exists() {
        let mut entries =
            std::fs::read_dir(data_dir).map_err(io_error(format!("reading {}", data_dir.display())))?;
        if entries.next().is_some() {
            return Err(LocalPgError::NotACluster(data_dir.to_owned()));
        }
    } else {
        create_dir_all(data_dir)?;
    }
    tools.hand_over(data_dir)?;
    Ok(false)
}

fn create_dir_all(dir: &Path) -> Result<(), LocalPgError> {
    std::fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, LocalPgError> {
    process::free_port().map_err(io_error("finding a free port on 127.0.0.1"))
}

/// `id` with `args`: `None` when `id` knows no such user.
async fn id(args: &[&str]) -> Result<Option<u32>, LocalPgError> {
    let mut cmd = Command::new("id");
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let output = run(cmd).await?;
    Ok(output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().parse().ok()).flatten())
}

/// Runs `cmd` to completion, whatever its exit status.
async fn run(cmd: Command) -> Result<Output, LocalPgError> {
    let what = format!("running {}", command_line(&cmd));
    let mut cmd = tokio::process::Command::from(cmd);
    // A cancelled start must not leave pg_ctl waiting on its own.
    cmd.kill_on_drop(true);
    cmd.output().await.map_err(io_error(what))
}

/// Runs `cmd`, turning a failed exit into an error carrying its output.
async fn run_ok(cmd: Command) -> Result<Output, LocalPgError> {
    let line = command_line(&cmd);
    let output = run(cmd).await?;
    if output.status.success() { Ok(output) } else { Err(command_failed(line, &output)) }
}

fn command_failed(command: String, output: &Output) -> LocalPgError {
    LocalPgError::Command { command, status: output.status, output: printed(output) }
}

fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a finished command printed, stderr first, trimmed.
fn printed(output: &Output) -> String {
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stderr), String::from_utf8_lossy(&output.stdout));
    text.trim().to_owned()
}

/// The last [`LOG_TAIL_LINES`] lines written to `log` after `offset`.
fn log_tail(log: &Path, offset: u64) -> String {
    process::log_tail(log, offset, LOG_TAIL_LINES)
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as one single-quoted shell word.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `database` as a URL path segment: unreserved characters as they are, the rest escaped.
fn percent_encode(database: &str) -> String {
    let mut out = String::with_capacity(database.len());
    for byte in database.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Wraps an I/O error with what was being done.
fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> LocalPgError {
    let what = what.into();
    move |source| LocalPgError::Io { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_shell_words_quote_their_quotes() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(shell_quote("/tmp/it's"), r"'/tmp/it'\''s'");
    }

    #[test]
    fn database_names_are_escaped_in_urls() {
        assert_eq!(percent_encode("tickd_test_1"), "tickd_test_1");
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn the_newest_versioned_bin_dir_wins() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9.6", "15", "16", "notaversion"] {
            let bin = root.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            let initdb = bin.join("initdb");
            std::fs::write(&initdb, "").unwrap();
            std::fs::set_permissions(&initdb, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // 17 has no initdb: a client-only install.
        std::fs::create_dir_all(root.path().join("17/bin")).unwrap();
        assert_eq!(newest_versioned_bin_dir(root.path()), Some(root.path().join("16/bin")));
    }

    #[test]
    fn start_failures_are_classified_by_the_log() {
        let failure = |log_tail: &str| LocalPgError::StartFailed {
            port: 1,
            data_dir: PathBuf::from("/d"),
            reason: String::new(),
            log: PathBuf::from("/d/server.log"),
            log_tail: log_tail.to_owned(),
        };
        let in_use = failure(
            "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n\
             FATAL:  could not create any TCP/IP sockets",
        );
        assert!(in_use.is_address_in_use());
        assert!(!in_use.is_shared_memory_in_use());
        let shm = failure("FATAL:  pre-existing shared memory block (key 1, ID 2) is still in use");
        assert!(shm.is_shared_memory_in_use());
        assert!(!shm.is_address_in_use());
    }
}
