//! The real `tickd` binary as a child process, for end-to-end tests: a config file of its own,
//! stderr (JSON log lines) captured to a file and read back, SIGTERM, and waiting for the exit
//! with a deadline. Also the queries those tests make and the wait for a simulator's trades
//! to be stored.
//!
//! These tests run real processes on real time, so every wait here is a bounded poll that
//! panics with what it saw when its deadline passes. A [`Daemon`] that is still running when
//! dropped (a failed assertion) is killed, so no test leaves a process behind.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, Row};
use tickd::dev::sim::Simulator;
use tokio::time::{Instant, sleep};

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(50);

/// `tickd` with an environment free of anything that changes how settings load or log.
pub fn tickd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tickd"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("TICKD_") || name == "CREDENTIALS_DIRECTORY" || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

/// A TOML string literal (quotes and escapes included) holding `s` exactly.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// What a test daemon runs with. [`DaemonConfig::toml`] renders it: JSON logs, a one-second
/// summary, one unsigned feed named `sim`, a dashboard on a free port of 127.0.0.1, and the
/// `[store]`, `[dashboard]` and feed settings below, which [`DaemonConfig::store`],
/// [`DaemonConfig::dashboard`] and [`DaemonConfig::feed`] add to or replace.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The state directory (the spool lives in `spool/` under it).
    pub state_dir: PathBuf,
    /// The simulator's WebSocket URL.
    pub sim_url: String,
    /// Markets the feed follows.
    pub markets: Vec<String>,
    /// `[store]` keys and TOML values, `url` first.
    store: Vec<(String, String)>,
    /// The feed's keys and TOML values, besides name, url and markets.
    feed: Vec<(String, String)>,
    /// `[dashboard]` keys and TOML values, `listen` first.
    dashboard: Vec<(String, String)>,
    /// `log.level`.
    level: String,
    /// Top-level keys and TOML values (`alert_command`), none by default.
    top: Vec<(String, String)>,
    /// `[alerts]` keys and TOML values, none by default.
    alerts: Vec<(String, String)>,
    /// `[nats]` keys and TOML values; no `[nats]` table while empty.
    nats: Vec<(String, String)>,
}

impl DaemonConfig {
    /// Quick batches and store retries; feed backoff from 50 ms to 500 ms; the feed's own
    /// pings a minute apart, so that once subscribed a test's connection carries nothing from
    /// tickd to the simulator (see `store_e2e.rs` on dropped sockets).
    pub fn new(state_dir: &Path, db_url: &str, sim_url: &str, markets: &[String]) -> DaemonConfig {
        let pairs = |kv: &[(&str, String)]| kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let quoted = |s: &str| toml_str(s);
        DaemonConfig {
            state_dir: state_dir.to_owned(),
            sim_url: sim_url.to_owned(),
            markets: markets.to_vec(),
            store: pairs(&[
                ("url", quoted(db_url)),
                ("batch_age", quoted("20ms")),
                ("retry_interval", quoted("200ms")),
                ("connect_timeout", quoted("2s")),
                ("write_timeout", quoted("5s")),
            ]),
            feed: pairs(&[
                ("ping_interval", quoted("60s")),
                ("backoff", "{ initial = \"50ms\", max = \"500ms\" }".to_owned()),
            ]),
            dashboard: pairs(&[("listen", quoted("127.0.0.1:0"))]),
            level: "info".to_owned(),
            top: Vec::new(),
            alerts: Vec::new(),
            nats: Vec::new(),
        }
    }

    /// Sets `log.level` (`"debug"`, `"tickd=debug,info"`); `info` unless set.
    pub fn log_level(&mut self, level: &str) -> &mut Self {
        self.level = level.to_owned();
        self
    }

    /// Sets the top-level `key = value` (`value` in TOML: `"/path/to/alert"`).
    pub fn top(&mut self, key: &str, value: &str) -> &mut Self {
        set(&mut self.top, key, value);
        self
    }

    /// Sets `[alerts] key = value` (`value` in TOML: `"2s"`, `0.01`).
    pub fn alerts(&mut self, key: &str, value: &str) -> &mut Self {
        set(&mut self.alerts, key, value);
        self
    }

    /// Sets `[store] key = value` (`value` in TOML: `1048576`, `"30s"`).
    pub fn store(&mut self, key: &str, value: &str) -> &mut Self {
        set(&mut self.store, key, value);
        self
    }

    /// Sets `[dashboard] key = value` (`value` in TOML: `"secret"`, `64`, `"1s"`).
    pub fn dashboard(&mut self, key: &str, value: &str) -> &mut Self {
        set(&mut self.dashboard, key, value);
        self
    }

    /// Sets `[nats] key = value` (`value` in TOML: `"nats://127.0.0.1:4222"`, `1048576`); the
    /// first key set adds the table.
    pub fn nats(&mut self, key: &str, value: &str) -> &mut Self {
        set(&mut self.nats, key, value);
        self
    }

    /// Sets `key = value` of the feed (`value` in TOML: `false`, `["trade"]`).
    pub fn feed(&mut self, key: &str, value: &str) -> &mut Self {
        set(&mut self.feed, key, value);
        self
    }

    /// The config file's text.
    pub fn toml(&self) -> String {
        let markets: Vec<String> = self.markets.iter().map(|m| toml_str(m)).collect();
        format!(
            "state_dir = {state_dir}\nsummary_interval = \"1s\"\n{top}\n\
             [log]\nformat = \"json\"\nlevel = {level}\n\n\
             [dashboard]\n{dashboard}\n\
             [alerts]\n{alerts}\n\
             [store]\n{store}\n{nats}\
             [[feeds]]\nname = \"sim\"\nurl = {sim}\nmarkets = [{markets}]\n{feed}",
            state_dir = toml_str(&self.state_dir.display().to_string()),
            level = toml_str(&self.level),
            top = lines(&self.top),
            alerts = lines(&self.alerts),
            dashboard = lines(&self.dashboard),
            store = lines(&self.store),
            nats =
                if self.nats.is_empty() { String::new() } else { format!("[nats]\n{}\n", lines(&self.nats)) },
            sim = toml_str(&self.sim_url),
            markets = markets.join(", "),
            feed = lines(&self.feed),
        )
    }
}

fn set(pairs: &mut Vec<(String, String)>, key: &str, value: &str) {
    match pairs.iter_mut().find(|(k, _)| k == key) {
        Some(pair) => pair.1 = value.to_owned(),
        None => pairs.push((key.to_owned(), value.to_owned())),
    }
}

fn lines(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
}

/// Writes `text` to `dir/name.toml` and returns the path.
pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// One JSON log line of the daemon.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// The line as written.
    pub raw: String,
    /// The line parsed (`Value::Null` when it is not JSON, e.g. a panic message).
    pub json: Value,
}

impl LogLine {
    /// The event's message (`fields.message`), or "" without one.
    pub fn message(&self) -> &str {
        self.json["fields"]["message"].as_str().unwrap_or("")
    }

    /// `INFO`, `WARN`, `ERROR`...
    pub fn level(&self) -> &str {
        self.json["level"].as_str().unwrap_or("")
    }

    /// A field of the event, `Value::Null` when absent.
    pub fn field(&self, name: &str) -> &Value {
        &self.json["fields"][name]
    }

    /// A numeric field; panics naming the line when it is absent.
    pub fn u64(&self, name: &str) -> u64 {
        self.field(name).as_u64().unwrap_or_else(|| panic!("no numeric `{name}` in {}", self.raw))
    }

    /// A string field, "" when absent.
    pub fn str(&self, name: &str) -> &str {
        self.field(name).as_str().unwrap_or("")
    }
}

/// `tickd run` as a child process.
pub struct Daemon {
    child: Child,
    log: PathBuf,
    /// The exit status code once it exited (`None` inside: killed by a signal).
    exited: Option<Option<i32>>,
}

impl Daemon {
    /// Starts `tickd run --config <dir>/<name>.toml` with `config`, its stderr going to
    /// `<dir>/<name>.log`.
    pub fn start(dir: &Path, name: &str, config: &DaemonConfig) -> Daemon {
        let file = write_config(dir, name, &config.toml());
        let log = dir.join(format!("{name}.log"));
        let stderr = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let child = tickd()
            .arg("run")
            .arg("--config")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("tickd run starts");
        Daemon { child, log, exited: None }
    }

    /// `tickd <command> --config <dir>/<name>.toml` (`record`), like [`Daemon::start`].
    pub fn start_command(dir: &Path, name: &str, command: &str, config: &DaemonConfig) -> Daemon {
        let file = write_config(dir, name, &config.toml());
        let log = dir.join(format!("{name}.log"));
        let stderr = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let child = tickd()
            .arg(command)
            .arg("--config")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("tickd {command} starts: {e}"));
        Daemon { child, log, exited: None }
    }

    /// Like [`Daemon::start`], with `envs` added to the daemon's environment (systemd's
    /// `NOTIFY_SOCKET` and `WATCHDOG_USEC`, say).
    pub fn start_with_env(dir: &Path, name: &str, config: &DaemonConfig, envs: &[(&str, &OsStr)]) -> Daemon {
        let file = write_config(dir, name, &config.toml());
        let log = dir.join(format!("{name}.log"));
        let stderr = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let child = tickd()
            .arg("run")
            .arg("--config")
            .arg(&file)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("tickd run starts");
        Daemon { child, log, exited: None }
    }

    /// Sends SIGHUP, as `systemctl reload` does.
    pub fn hang_up(&self) {
        let status =
            Command::new("kill").arg("-HUP").arg(self.child.id().to_string()).status().expect("kill runs");
        assert!(status.success(), "kill -HUP {} failed", self.child.id());
    }

    /// The process id, e.g. to read `/proc/<pid>/status`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The dashboard's bound address, from the `url` of the "Dashboard listening." line.
    pub async fn dashboard_addr(&mut self, limit: Duration) -> std::net::SocketAddr {
        let line = self.wait_for_message("Dashboard listening.", limit).await;
        let url = line.str("url");
        let host_port = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("");
        host_port.parse().unwrap_or_else(|e| panic!("the dashboard url {url:?} names no address: {e}"))
    }

    /// Every log line so far.
    pub fn lines(&self) -> Vec<LogLine> {
        read_log(&self.log)
    }

    /// The last line so far whose message is `message`.
    pub fn last(&self, message: &str) -> Option<LogLine> {
        self.lines().into_iter().rev().find(|l| l.message() == message)
    }

    /// The whole log, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a line matching `pred`, or panics naming `what` (with the log) after `limit`.
    /// Also panics if the daemon exits first.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&LogLine) -> bool,
    ) -> LogLine {
        self.wait_for_nth(what, 1, limit, pred).await
    }

    /// Waits for the `n`-th line (from 1) matching `pred`, like [`Daemon::wait_for`].
    pub async fn wait_for_nth(
        &mut self,
        what: &str,
        n: usize,
        limit: Duration,
        pred: impl Fn(&LogLine) -> bool,
    ) -> LogLine {
        let what = if n == 1 { what.to_owned() } else { format!("#{n} {what}") };
        self.wait_line(&what, limit, |lines| lines.into_iter().filter(|l| pred(l)).nth(n - 1)).await
    }

    /// Waits for the line `find` picks from the log so far.
    async fn wait_line(
        &mut self,
        what: &str,
        limit: Duration,
        find: impl Fn(Vec<LogLine>) -> Option<LogLine>,
    ) -> LogLine {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = find(self.lines()) {
                return line;
            }
            if let Some(code) = self.poll_exit() {
                panic!("tickd exited ({code:?}) before logging {what}; log:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                panic!("no log line {what} after {limit:?}; log:\n{}", self.log_text());
            }
            sleep(POLL).await;
        }
    }

    /// Checks `cond` every 50 ms until it holds; panics naming `what`, with the log, after
    /// `limit` or as soon as the daemon exits.
    pub async fn wait_until<F: Future<Output = bool>>(
        &mut self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut() -> F,
    ) {
        let deadline = Instant::now() + limit;
        while !cond().await {
            if let Some(code) = self.poll_exit() {
                panic!("tickd exited ({code:?}) while waiting for {what}; log:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                panic!("timed out after {limit:?} waiting for {what}; log:\n{}", self.log_text());
            }
            sleep(POLL).await;
        }
    }

    /// Waits for a line whose message is `message`.
    pub async fn wait_for_message(&mut self, message: &str, limit: Duration) -> LogLine {
        self.wait_for(&format!("{message:?}"), limit, |l| l.message() == message).await
    }

    /// How many lines so far match `pred`.
    pub fn count(&self, pred: impl Fn(&LogLine) -> bool) -> usize {
        self.lines().iter().filter(|l| pred(l)).count()
    }

    /// Sends SIGTERM, as systemd does to stop the service.
    pub fn terminate(&self) {
        let status =
            Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("kill runs");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Sends `signal` (`"HUP"`, `"TERM"`, `"INT"`), as `kill -<signal>` does.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {} failed", self.child.id());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// The exit code if the process has exited (`Some(None)`: killed by a signal).
    fn poll_exit(&mut self) -> Option<Option<i32>> {
        if self.exited.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exited = Some(status.code());
        }
        self.exited
    }

    /// Waits for the process to exit and returns its exit code; panics (with the log) if it
    /// is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(code) = self.poll_exit() {
                return code;
            }
            if Instant::now() > deadline {
                panic!("tickd still running {limit:?} after being asked to stop; log:\n{}", self.log_text());
            }
            sleep(POLL).await;
        }
    }

    /// SIGTERM, then the exit code (within `limit`).
    pub async fn stop(&mut self, limit: Duration) -> Option<i32> {
        self.terminate();
        self.wait_exit(limit).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_log(path: &Path) -> Vec<LogLine> {
    parse_log(&std::fs::read_to_string(path).unwrap_or_default())
}

/// The JSON log lines of `text`.
pub fn parse_log(text: &str) -> Vec<LogLine> {
    text.lines()
        // The last line may still be half written.
        .filter(|l| l.ends_with('}'))
        .map(|raw| LogLine { raw: raw.to_owned(), json: serde_json::from_str(raw).unwrap_or(Value::Null) })
        .collect()
}

/// Runs `tickd <command> --config <file>` to completion: exit code and stderr.
pub fn run_command(command: &str, config: &Path) -> (Option<i32>, String) {
    let out = tickd().arg(command).arg("--config").arg(config).output().expect("tickd runs");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The `error` of the "Stopped on an error." line in `stderr`, or "" without one.
pub fn stopped_on(stderr: &str) -> String {
    parse_log(stderr)
        .iter()
        .find(|l| l.message() == "Stopped on an error.")
        .map(|l| l.str("error").to_owned())
        .unwrap_or_default()
}

/// The simulator's `ws://` URL on a fresh port of 127.0.0.1.
pub async fn serve(sim: &Simulator) -> String {
    let addr = sim.bind("127.0.0.1:0".parse().unwrap()).await.expect("simulator binds");
    sim.url(addr)
}

/// A connection to `url`; a fresh one per query, so that queries survive a server restart.
pub async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// The one `bigint` that `sql` returns.
pub async fn scalar(url: &str, sql: &str) -> i64 {
    let mut conn = connect(url).await;
    let v: i64 = sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
    v
}

/// The first column of every row of `sql`, as text.
pub async fn texts(url: &str, sql: &str) -> Vec<String> {
    let mut conn = connect(url).await;
    let v: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_all(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
    v
}

/// Every trade id in `trades`, one per row (duplicates kept).
pub async fn stored_trade_ids(url: &str) -> Vec<String> {
    texts(url, "SELECT trade_id FROM trades").await
}

/// Whether `url`'s database has the tick tables yet (tickd migrates on its first probe).
pub async fn migrated(url: &str) -> bool {
    scalar(url, "SELECT count(*) FROM pg_tables WHERE tablename = 'feed_events'").await > 0
}

/// A `timestamptz` expression as µs since the Unix epoch (exact: `extract` is numeric).
pub fn us(expr: &str) -> String {
    format!("(extract(epoch FROM {expr}) * 1000000)::int8")
}

/// One row of `feed_events`; times in µs since the Unix epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub ts: i64,
    pub conn: i32,
    pub event: String,
    pub reason: Option<String>,
    pub sid: Option<i64>,
    pub expected: Option<i64>,
    pub got: Option<i64>,
    pub detail: Value,
}

/// Every `feed_events` row, oldest first.
pub async fn feed_events(url: &str) -> Vec<EventRow> {
    let mut conn = connect(url).await;
    let sql = format!(
        "SELECT {}, conn, event, reason, sid, expected, got, detail::text FROM feed_events ORDER BY ts",
        us("ts")
    );
    let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut conn).await.expect("feed_events");
    let _ = conn.close().await;
    rows.iter()
        .map(|r| EventRow {
            ts: r.get(0),
            conn: r.get(1),
            event: r.get(2),
            reason: r.get(3),
            sid: r.get(4),
            expected: r.get(5),
            got: r.get(6),
            detail: serde_json::from_str(&r.get::<String, _>(7)).expect("detail is JSON"),
        })
        .collect()
}

/// How many `feed_events` rows are `event`, or 0 before tickd created the table.
pub async fn event_count(url: &str, event: &str) -> i64 {
    if !migrated(url).await {
        return 0;
    }
    scalar(url, &format!("SELECT count(*) FROM feed_events WHERE event = '{event}'")).await
}

/// Checks `cond` every 50 ms until it holds, or panics naming `what` after `limit`.
pub async fn wait_until<F: Future<Output = bool>>(what: &str, limit: Duration, mut cond: impl FnMut() -> F) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        sleep(POLL).await;
    }
}

/// After [`Simulator::pause`]: waits until the simulator has written everything it generated
/// before the pause ([`Simulator::caught_up`]). Returns the trades it wrote, in order, which
/// is final until it resumes.
pub async fn wait_caught_up(sim: &Simulator, limit: Duration) -> Vec<String> {
    wait_until("the simulator to write what it generated before its pause", limit, || {
        let done = sim.caught_up();
        async move { done }
    })
    .await;
    sim.trades_sent()
}

/// After [`Simulator::pause`]: waits until the simulator has caught up and `url` holds every
/// trade it wrote. Returns the trades written, in order.
pub async fn wait_sent_trades_stored(sim: &Simulator, url: &str, limit: Duration) -> Vec<String> {
    let sent = wait_caught_up(sim, limit).await;
    let deadline = Instant::now() + limit;
    loop {
        let stored: HashSet<String> = stored_trade_ids(url).await.into_iter().collect();
        let missing = sent.iter().filter(|t| !stored.contains(*t)).count();
        if missing == 0 {
            return sent;
        }
        assert!(
            Instant::now() < deadline,
            "after {limit:?}, {missing} of the {} trades the simulator wrote are not stored",
            sent.len()
        );
        sleep(POLL).await;
    }
}

/// Segment files in `state_dir/spool`.
pub fn spool_segments(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(state_dir.join("spool")) else {
        return Vec::new();
    };
    let mut segments: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    segments
}
