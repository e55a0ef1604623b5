//! systemd integration for `tickd run` as a `Type=notify` service: readiness, a status line,
//! the watchdog, and the stop and reload notifications.
//!
//! In: `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (read once at start), every
//! feed connection's [`FeedMetrics`](crate::telemetry::metrics::FeedMetrics) and liveness
//! [`Beat`], the store's [`StoreMetrics`], and the supervisor's count of applied reloads.
//! Out: datagrams on systemd's notification socket. Without `$NOTIFY_SOCKET` (not started by
//! systemd, or not as `Type=notify`) all of this is a no-op: [`Notifier`] sends nothing and
//! [`run`] returns at once.
//!
//! What tickd tells systemd, and when:
//!
//! - `READY=1` once the dashboard port is bound, the store writer is taking ticks and every
//!   feed actor is running. It does not wait for the exchange or the database: a feed that
//!   cannot connect backs off and retries, and a store whose database is away spools to disk,
//!   so neither outage is a failed start. The status line says what is connected.
//! - `STATUS=` every [`STATUS_INTERVAL`] when it changed, built by [`status_line`]: feeds live
//!   out of feeds running, the store's state, writer lag, queue and spool, active alerts, and
//!   the loops that withhold the watchdog.
//! - `WATCHDOG=1` every `WATCHDOG_USEC / 2`, but only while every feed connection loop and the
//!   store writer show progress ([`crate::telemetry::liveness`]). A loop more than `WATCHDOG_USEC` past
//!   its promise is stuck: the pings stop (logged once, at error level, naming the loop) and
//!   systemd restarts tickd within another `WATCHDOG_USEC` unless the loop recovers first.
//! - `STOPPING=1` when the graceful stop begins.
//! - `RELOADING=1` with `MONOTONIC_USEC=` when a SIGHUP reload begins (sent by the reload task
//!   in `main`), then `READY=1` once the supervisor applied it (sent here) or once it was
//!   rejected as invalid (sent by the reload task; the running configuration stays).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::health::Health;
use crate::store::{StoreMetrics, StoreState};
use crate::telemetry::liveness::{self, Beat};
use crate::telemetry::metrics::FeedState;
use crate::tick::ConnId;

/// How often the status line is rebuilt; it is sent only when it changed.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Feed connections that are not live, named in a status line; the rest are counted.
const NAMED_FEEDS: usize = 3;

/// The name of the store writer's loop in logs and status lines.
pub const WRITER_LOOP: &str = "store writer";

/// Where systemd listens: `$NOTIFY_SOCKET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyAddr {
    /// A socket file (`/run/systemd/notify`).
    Path(PathBuf),
    /// A Linux abstract socket: `@name` in the variable, the name without the `@` here.
    Abstract(Vec<u8>),
}

impl NotifyAddr {
    /// Parses `$NOTIFY_SOCKET`: an absolute path, or `@` and an abstract socket name. Other
    /// forms (systemd's `vsock:`) are refused with the reason.
    pub fn parse(value: &OsStr) -> Result<NotifyAddr, String> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = value.as_bytes();
        match bytes.first() {
            None => Err("NOTIFY_SOCKET is empty".into()),
            Some(b'/') => Ok(NotifyAddr::Path(PathBuf::from(value))),
            Some(b'@') if bytes.len() > 1 => Ok(NotifyAddr::Abstract(bytes[1..].to_vec())),
            Some(b'@') => Err("NOTIFY_SOCKET names an abstract socket without a name".into()),
            Some(_) => Err(format!(
                "NOTIFY_SOCKET {value:?} is neither an absolute path nor an abstract socket (@name)"
            )),
        }
    }

    fn socket_addr(&self) -> io::Result<SocketAddr> {
        match self {
            NotifyAddr::Path(path) => SocketAddr::from_pathname(path),
            #[cfg(target_os = "linux")]
            NotifyAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)
            }
            #[cfg(not(target_os = "linux"))]
            NotifyAddr::Abstract(_) => {
                Err(io::Error::new(io::ErrorKind::Unsupported, "abstract sockets exist on Linux only"))
            }
        }
    }
}

impl std::fmt::Display for NotifyAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifyAddr::Path(path) => write!(f, "{}", path.display()),
            NotifyAddr::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

/// The watchdog timeout from `$WATCHDOG_USEC`, as `sd_watchdog_enabled` reads it: `None`
/// without one, or when `$WATCHDOG_PID` names another process (the variables were inherited,
/// not meant for us). A value that is not a positive number is an error.
pub fn watchdog_timeout(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    our_pid: u32,
) -> Result<Option<Duration>, String> {
    let Some(usec) = usec else { return Ok(None) };
    let usec = match usec.to_str().and_then(|s| s.parse::<u64>().ok()) {
        Some(n) if n > 0 => n,
        _ => return Err(format!("WATCHDOG_USEC {usec:?} is not a positive number of µs")),
    };
    if let Some(pid) = pid {
        match pid.to_str().and_then(|s| s.parse::<u32>().ok()) {
            Some(pid) if pid == our_pid => {}
            Some(_) => return Ok(None),
            None => return Err(format!("WATCHDOG_PID {pid:?} is not a process id")),
        }
    }
    Ok(Some(Duration::from_micros(usec)))
}

/// One assignment of a notification datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice<'a> {
    /// `READY=1`: started, or done reloading.
    Ready,
    /// `RELOADING=1` and `MONOTONIC_USEC=`: a reload began at that `CLOCK_MONOTONIC` time.
    Reloading {
        /// µs on `CLOCK_MONOTONIC` ([`monotonic_usec`]).
        monotonic_usec: u64,
    },
    /// `STOPPING=1`: the graceful stop began.
    Stopping,
    /// `WATCHDOG=1`: alive.
    Watchdog,
    /// `STATUS=`: one line for `systemctl status`.
    Status(&'a str),
}

/// The datagram for `notices`, one `KEY=VALUE` per line. A status loses any line break (a
/// line break would start another assignment).
pub fn encode(notices: &[Notice<'_>]) -> String {
    let mut out = String::new();
    for notice in notices {
        if !out.is_empty() {
            out.push('\n');
        }
        match notice {
            Notice::Ready => out.push_str("READY=1"),
            Notice::Reloading { monotonic_usec } => {
                let _ = write!(out, "RELOADING=1\nMONOTONIC_USEC={monotonic_usec}");
            }
            Notice::Stopping => out.push_str("STOPPING=1"),
            Notice::Watchdog => out.push_str("WATCHDOG=1"),
            Notice::Status(line) => {
                out.push_str("STATUS=");
                out.extend(line.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }));
            }
        }
    }
    out
}

/// The `KEY=VALUE` assignments of a datagram, in order, as systemd reads them (lines without
/// `=` are skipped).
pub fn decode(datagram: &str) -> Vec<(&str, &str)> {
    datagram.lines().filter_map(|line| line.split_once('=')).collect()
}

/// Now on `CLOCK_MONOTONIC`, in µs: the clock systemd compares `MONOTONIC_USEC=` with.
pub fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let micros = i128::from(t.tv_sec) * 1_000_000 + i128::from(t.tv_nsec) / 1000;
    u64::try_from(micros).unwrap_or(0)
}

/// Sends notifications to systemd; cheap to clone. A disabled notifier (no `$NOTIFY_SOCKET`)
/// sends nothing.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    socket: Option<Arc<Socket>>,
    /// The watchdog timeout, when systemd wants pings from this process.
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Socket {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// Shown as text in logs.
    name: String,
    /// The last send failed: log the next failure only after a success.
    failing: AtomicBool,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// The notifier systemd's environment asks for: disabled without `$NOTIFY_SOCKET`. An
    /// unusable value is logged and disables it (or just the watchdog); it never stops tickd.
    pub fn from_env() -> Notifier {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::disabled();
        };
        let addr = match NotifyAddr::parse(&value) {
            Ok(addr) => addr,
            Err(e) => {
                error!(error = %e, "Cannot report to systemd: NOTIFY_SOCKET is unusable.");
                return Notifier::disabled();
            }
        };
        let usec = std::env::var_os("WATCHDOG_USEC");
        let pid = std::env::var_os("WATCHDOG_PID");
        let watchdog = match watchdog_timeout(usec.as_deref(), pid.as_deref(), std::process::id()) {
            Ok(watchdog) => watchdog,
            Err(e) => {
                error!(error = %e, "The systemd watchdog setting is unusable; sending no watchdog pings.");
                None
            }
        };
        match Notifier::connect(&addr, watchdog) {
            Ok(notifier) => {
                let watchdog_ms = watchdog.map(|w| w.as_millis() as u64);
                info!(socket = %addr, watchdog_ms, "Reporting to systemd.");
                notifier
            }
            Err(e) => {
                error!(socket = %addr, error = %e, "Cannot report to systemd: no socket.");
                Notifier::disabled()
            }
        }
    }

    /// A notifier sending to `addr`, with pings expected within `watchdog` if given.
    pub fn connect(addr: &NotifyAddr, watchdog: Option<Duration>) -> io::Result<Notifier> {
        let sock = UnixDatagram::unbound()?;
        // A full queue on systemd's side drops the datagram rather than stall a runtime
        // thread: a lost status or ping is followed by the next one.
        sock.set_nonblocking(true)?;
        let socket = Socket {
            sock,
            addr: addr.socket_addr()?,
            name: addr.to_string(),
            failing: AtomicBool::new(false),
        };
        Ok(Notifier { socket: Some(Arc::new(socket)), watchdog })
    }

    /// Whether anything is sent at all.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// The watchdog timeout (`$WATCHDOG_USEC`), when systemd expects pings from us.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `notices` in one datagram. A failure is logged (once until a send succeeds
    /// again) and otherwise ignored: systemd's bookkeeping never stops tickd.
    pub fn send(&self, notices: &[Notice<'_>]) {
        let Some(socket) = &self.socket else { return };
        match socket.sock.send_to_addr(encode(notices).as_bytes(), &socket.addr) {
            Ok(_) => {
                if socket.failing.swap(false, Ordering::Relaxed) {
                    info!(socket = %socket.name, "Reporting to systemd again.");
                }
            }
            Err(e) => {
                if !socket.failing.swap(true, Ordering::Relaxed) {
                    warn!(socket = %socket.name, error = %e, "A notification to systemd was lost.");
                }
            }
        }
    }

    /// `READY=1`.
    pub fn ready(&self) {
        self.send(&[Notice::Ready]);
    }

    /// `RELOADING=1` with the current `MONOTONIC_USEC`.
    pub fn reloading(&self) {
        self.send(&[Notice::Reloading { monotonic_usec: monotonic_usec() }]);
    }
}

/// A loop that has made no progress for longer than the watchdog allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck {
    /// `store writer`, or `feed <connection id>`.
    pub name: String,
    /// How long past its promise ([`Beat::overdue`]).
    pub overdue: Duration,
}

/// The beats more than `limit` overdue at `now_us` (beat clock), in the order given.
pub fn stuck_loops<'a>(
    beats: impl IntoIterator<Item = (String, &'a Beat)>,
    now_us: i64,
    limit: Duration,
) -> Vec<Stuck> {
    beats
        .into_iter()
        .filter_map(|(name, beat)| {
            beat.overdue(now_us).filter(|o| *o > limit).map(|overdue| Stuck { name, overdue })
        })
        .collect()
}

/// The store's part of a status line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    /// What the writer is doing.
    pub state: StoreState,
    /// Mean time from a batch's oldest tick arriving to its commit, over the last status
    /// period; `None` without commits in it.
    pub lag_ms: Option<u64>,
    /// Ticks taken from the bus, not yet committed or spooled.
    pub queued: u64,
    /// Bytes in the spool.
    pub spool_bytes: u64,
}

/// Everything a status line says, as plain values: [`status_line`] is a pure function of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusInput {
    /// Every running feed connection and its state.
    pub feeds: Vec<(ConnId, FeedState)>,
    /// The store, when one is configured.
    pub store: Option<StoreStatus>,
    /// Short names of the alerts active now.
    pub active_alerts: Vec<String>,
    /// Loops withholding the watchdog.
    pub stuck: Vec<Stuck>,
}

/// One status line, e.g. `2/3 feeds live (kalshi/1 backing_off); store ready, writer lag
/// 12 ms, queue 40, spool 0 B`. Alerts and withheld watchdog pings follow when there are any.
pub fn status_line(input: &StatusInput) -> String {
    let mut line = String::new();
    let live = input.feeds.iter().filter(|(_, state)| *state == FeedState::Live).count();
    match input.feeds.len() {
        0 => line.push_str("no feeds"),
        n => {
            let _ = write!(line, "{live}/{n} feeds live");
            let others: Vec<String> = input
                .feeds
                .iter()
                .filter(|(_, state)| *state != FeedState::Live)
                .map(|(id, state)| format!("{id} {}", state.as_str()))
                .collect();
            if !others.is_empty() {
                let mut named = others.iter().take(NAMED_FEEDS).cloned().collect::<Vec<_>>().join(", ");
                if others.len() > NAMED_FEEDS {
                    let _ = write!(named, ", {} more", others.len() - NAMED_FEEDS);
                }
                let _ = write!(line, " ({named})");
            }
        }
    }
    match &input.store {
        None => line.push_str("; no store"),
        Some(store) => {
            let _ = write!(line, "; store {}", store.state.as_str());
            if let Some(lag) = store.lag_ms {
                let _ = write!(line, ", writer lag {lag} ms");
            }
            let _ = write!(line, ", queue {}, spool {}", store.queued, human_bytes(store.spool_bytes));
        }
    }
    if !input.active_alerts.is_empty() {
        let _ = write!(line, "; alerts: {}", input.active_alerts.join(", "));
    }
    if !input.stuck.is_empty() {
        let stuck: Vec<String> = input
            .stuck
            .iter()
            .map(|s| format!("{} stuck {:.1} s", s.name, s.overdue.as_secs_f64()))
            .collect();
        let _ = write!(line, "; watchdog withheld: {}", stuck.join(", "));
    }
    line
}

/// `512 B`, `1.5 KiB`, `20.0 MiB`, `3.2 GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The commit latency sum (µs) and commit count of `m`, for [`mean_lag_ms`].
fn lag_sample(m: &StoreMetrics) -> (u64, u64) {
    let count = m.latency_buckets.iter().map(StoreMetrics::get).sum();
    (StoreMetrics::get(&m.latency_sum_us), count)
}

/// The mean commit latency (ms) between two samples of (latency sum in µs, commits); `None`
/// when nothing was committed in between.
pub fn mean_lag_ms(before: (u64, u64), after: (u64, u64)) -> Option<u64> {
    let commits = after.1.checked_sub(before.1).filter(|n| *n > 0)?;
    Some(after.0.saturating_sub(before.0) / commits / 1000)
}

/// What the service task reports on.
pub struct ServiceContext {
    /// Where notifications go.
    pub notifier: Notifier,
    /// The daemon's health: the feed connections (states and liveness beats), the store
    /// (its state and the writer's beat) and the open alerts.
    pub health: Health,
    /// Counts reloads the supervisor applied ([`crate::feed::supervisor::Supervisor::reloads_applied`]).
    pub reloads_applied: watch::Receiver<u64>,
    /// Cancelled when the graceful stop begins.
    pub shutdown: CancellationToken,
}

/// Reports to systemd until the stop begins: `READY=1` at once (call it once the daemon is
/// started), then status lines, watchdog pings while every loop makes progress, `READY=1`
/// after each applied reload, and `STOPPING=1` at the end. Returns at once when the notifier
/// is disabled.
pub async fn run(ctx: ServiceContext) {
    let ServiceContext { notifier, health, mut reloads_applied, shutdown } = ctx;
    if !notifier.is_enabled() {
        return;
    }
    let watchdog = notifier.watchdog();
    let mut reporter = Reporter::new(health);
    let mut status = reporter.status();
    notifier.send(&[Notice::Ready, Notice::Status(&status)]);
    info!("Told systemd the service is ready.");

    let mut status_tick = tokio::time::interval_at(Instant::now() + STATUS_INTERVAL, STATUS_INTERVAL);
    status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Twice per timeout, as systemd recommends, starting now. Without a watchdog the branch is
    // disabled and the period only has to be valid.
    let period = watchdog.map_or(STATUS_INTERVAL, |w| (w / 2).max(Duration::from_millis(1)));
    let mut ping = tokio::time::interval(period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reloads_open = true;

    loop {
        tokio::select! {
            biased;
            // The stop began: say so once and end; systemd stops watching for pings.
            () = shutdown.cancelled() => {
                notifier.send(&[Notice::Stopping, Notice::Status("stopping gracefully")]);
                return;
            }
            // A reload was applied: ready again.
            changed = reloads_applied.changed(), if reloads_open => match changed {
                Ok(()) => {
                    status = reporter.status();
                    notifier.send(&[Notice::Ready, Notice::Status(&status)]);
                }
                // The supervisor is gone (stopping): no more reloads.
                Err(_) => reloads_open = false,
            },
            // A ping is due: sent only while every loop makes progress.
            _ = ping.tick(), if watchdog.is_some() => {
                // The branch runs only with a watchdog, so the fallback is never used.
                let limit = watchdog.unwrap_or(Duration::MAX);
                if reporter.check(limit) {
                    notifier.send(&[Notice::Watchdog]);
                } else {
                    // Withheld: say why at once rather than at the next status turn.
                    let line = reporter.status();
                    if line != status {
                        status = line;
                        notifier.send(&[Notice::Status(&status)]);
                    }
                }
            }
            // The status line, when it changed.
            _ = status_tick.tick() => {
                let line = reporter.status();
                if line != status {
                    status = line;
                    notifier.send(&[Notice::Status(&status)]);
                }
            }
        }
    }
}

/// Reads the daemon's state for [`run`]: status lines and the watchdog decision.
struct Reporter {
    health: Health,
    /// The commit latency sample at the last status line.
    lag: (u64, u64),
    /// The loops that withheld the last watchdog ping; empty while pings go out.
    stuck: Vec<Stuck>,
}

impl Reporter {
    fn new(health: Health) -> Self {
        let lag = health.store.as_deref().map(lag_sample).unwrap_or_default();
        Reporter { health, lag, stuck: Vec::new() }
    }

    /// Whether every loop made progress within `limit`; logs when that changes.
    fn check(&mut self, limit: Duration) -> bool {
        let snapshot = self.health.snapshot();
        let beats = snapshot
            .conns
            .iter()
            .map(|c| (format!("feed {}", c.id), &c.metrics.beat))
            .chain(self.health.store.iter().map(|m| (WRITER_LOOP.to_owned(), &m.writer_beat)));
        let stuck = stuck_loops(beats, liveness::now_micros(), limit);
        match (self.stuck.is_empty(), stuck.is_empty()) {
            (true, false) => {
                let loops: Vec<String> = stuck
                    .iter()
                    .map(|s| format!("{} ({} ms overdue)", s.name, s.overdue.as_millis()))
                    .collect();
                error!(
                    stuck = %loops.join(", "),
                    watchdog_ms = limit.as_millis() as u64,
                    "Watchdog withheld: a loop made no progress for longer than the watchdog allows; systemd restarts tickd unless it recovers."
                );
            }
            (false, true) => info!("Every loop makes progress again; watchdog pings resumed."),
            _ => {}
        }
        self.stuck = stuck;
        self.stuck.is_empty()
    }

    /// The status line now; also starts the next writer-lag period.
    fn status(&mut self) -> String {
        let feeds = self.health.snapshot().conns.into_iter().map(|c| (c.id, c.state)).collect();
        let store = self.health.store.as_deref().map(|m| {
            let sample = lag_sample(m);
            let lag_ms = mean_lag_ms(self.lag, sample);
            self.lag = sample;
            StoreStatus {
                state: m.state(),
                lag_ms,
                queued: StoreMetrics::get(&m.queued),
                spool_bytes: StoreMetrics::get(&m.spool_bytes),
            }
        });
        let active_alerts = self.health.alerts.active();
        status_line(&StatusInput { feeds, store, active_alerts, stuck: self.stuck.clone() })
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn feeds(states: &[(&str, FeedState)]) -> Vec<(ConnId, FeedState)> {
        states.iter().map(|(id, s)| (ConnId::parse(id).expect("feed/n"), *s)).collect()
    }

    fn store(state: StoreState, lag_ms: Option<u64>, queued: u64, spool_bytes: u64) -> Option<StoreStatus> {
        Some(StoreStatus { state, lag_ms, queued, spool_bytes })
    }

    #[test]
    fn notify_socket_forms_are_a_path_or_an_abstract_name() {
        let parse = |s: &str| NotifyAddr::parse(OsStr::new(s));
        assert_eq!(parse("/run/systemd/notify"), Ok(NotifyAddr::Path("/run/systemd/notify".into())));
        assert_eq!(
            parse("@/org/freedesktop/systemd1/notify"),
            Ok(NotifyAddr::Abstract(b"/org/freedesktop/systemd1/notify".to_vec()))
        );
        for bad in ["", "@", "run/notify", "vsock:2:1234"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(NotifyAddr::Abstract(b"tickd".to_vec()).to_string(), "@tickd");
    }

    #[test]
    fn the_watchdog_is_for_us_only_when_watchdog_pid_is_unset_or_ours() {
        let os = |s: &str| OsString::from(s);
        let timeout = |usec: Option<&str>, pid: Option<&str>| {
            watchdog_timeout(usec.map(os).as_deref(), pid.map(os).as_deref(), 4242)
        };
        assert_eq!(timeout(None, None), Ok(None));
        assert_eq!(timeout(Some("30000000"), None), Ok(Some(Duration::from_secs(30))));
        assert_eq!(timeout(Some("2000000"), Some("4242")), Ok(Some(Duration::from_secs(2))));
        assert_eq!(timeout(Some("2000000"), Some("1")), Ok(None), "meant for another process");
        assert!(timeout(Some("0"), None).is_err());
        assert!(timeout(Some("30s"), None).is_err());
        assert!(timeout(Some("2000000"), Some("me")).is_err());
    }

    #[test]
    fn notices_encode_one_assignment_per_line_and_decode_back() {
        let status = "1/1 feeds live\nSTOPPING=1";
        let datagram = encode(&[
            Notice::Ready,
            Notice::Reloading { monotonic_usec: 123_456 },
            Notice::Status(status),
            Notice::Watchdog,
            Notice::Stopping,
        ]);
        assert_eq!(
            datagram,
            "READY=1\nRELOADING=1\nMONOTONIC_USEC=123456\nSTATUS=1/1 feeds live STOPPING=1\nWATCHDOG=1\nSTOPPING=1"
        );
        assert_eq!(
            decode(&datagram),
            vec![
                ("READY", "1"),
                ("RELOADING", "1"),
                ("MONOTONIC_USEC", "123456"),
                ("STATUS", "1/1 feeds live STOPPING=1"),
                ("WATCHDOG", "1"),
                ("STOPPING", "1"),
            ]
        );
    }

    #[test]
    fn a_notifier_sends_datagrams_to_a_socket_file_and_to_an_abstract_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).expect("bind");
        let notifier =
            Notifier::connect(&NotifyAddr::Path(path), Some(Duration::from_secs(2))).expect("connect");
        assert_eq!(notifier.watchdog(), Some(Duration::from_secs(2)));
        notifier.ready();
        notifier.reloading();
        let mut buf = [0u8; 256];
        let n = systemd.recv(&mut buf).expect("READY");
        assert_eq!(&buf[..n], b"READY=1");
        let n = systemd.recv(&mut buf).expect("RELOADING");
        let text = std::str::from_utf8(&buf[..n]).expect("utf-8");
        let usec: u64 = decode(text)[1].1.parse().expect("MONOTONIC_USEC is a number");
        assert!(usec > 0 && usec <= monotonic_usec(), "{text}");

        let name = format!("tickd-test-{}-{}", std::process::id(), rand::random::<u32>());
        let abstract_addr = NotifyAddr::Abstract(name.clone().into_bytes());
        let systemd = UnixDatagram::bind_addr(&abstract_addr.socket_addr().expect("addr")).expect("bind");
        let notifier =
            Notifier::connect(&NotifyAddr::parse(OsStr::new(&format!("@{name}"))).expect("parse"), None)
                .expect("connect");
        notifier.send(&[Notice::Stopping]);
        let n = systemd.recv(&mut buf).expect("STOPPING");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_disabled_notifier_sends_nothing_and_fails_nothing() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        assert_eq!(notifier.watchdog(), None);
        notifier.ready();
        notifier.send(&[Notice::Watchdog]);
    }

    #[test]
    fn status_lines_count_live_feeds_and_describe_the_store() {
        let all_live = StatusInput {
            feeds: feeds(&[
                ("kalshi/0", FeedState::Live),
                ("kalshi/1", FeedState::Live),
                ("kalshi/2", FeedState::Live),
            ]),
            store: store(StoreState::Ready, Some(12), 40, 0),
            ..StatusInput::default()
        };
        assert_eq!(
            status_line(&all_live),
            "3/3 feeds live; store ready, writer lag 12 ms, queue 40, spool 0 B"
        );

        let outage = StatusInput {
            feeds: feeds(&[("kalshi/0", FeedState::Live), ("kalshi/1", FeedState::BackingOff)]),
            store: store(StoreState::Spooling, None, 0, 3 * 1024 * 1024 + 512 * 1024),
            ..StatusInput::default()
        };
        assert_eq!(
            status_line(&outage),
            "1/2 feeds live (kalshi/1 backing_off); store spooling, queue 0, spool 3.5 MiB"
        );

        assert_eq!(status_line(&StatusInput::default()), "no feeds; no store");
    }

    #[test]
    fn status_lines_name_a_few_lagging_feeds_then_count_the_rest() {
        let input = StatusInput {
            feeds: feeds(&[
                ("a/0", FeedState::Connecting),
                ("b/0", FeedState::Subscribing),
                ("c/0", FeedState::Live),
                ("d/0", FeedState::Stale),
                ("e/0", FeedState::GivenUp),
                ("f/0", FeedState::BackingOff),
            ]),
            ..StatusInput::default()
        };
        assert_eq!(
            status_line(&input),
            "1/6 feeds live (a/0 connecting, b/0 subscribing, d/0 stale, 2 more); no store"
        );
    }

    #[test]
    fn status_lines_end_with_active_alerts_and_the_loops_that_withhold_the_watchdog() {
        let input = StatusInput {
            feeds: feeds(&[("sim/0", FeedState::Live)]),
            store: store(StoreState::Ready, None, 1024, 1536),
            active_alerts: vec!["spool_full".into(), "feed_down".into()],
            stuck: vec![Stuck { name: WRITER_LOOP.into(), overdue: Duration::from_millis(12_340) }],
        };
        assert_eq!(
            status_line(&input),
            "1/1 feeds live; store ready, queue 1024, spool 1.5 KiB; alerts: spool_full, feed_down; \
             watchdog withheld: store writer stuck 12.3 s"
        );
    }

    #[test]
    fn writer_lag_is_the_mean_over_the_commits_since_the_last_sample() {
        assert_eq!(mean_lag_ms((0, 0), (0, 0)), None, "no commits");
        assert_eq!(mean_lag_ms((10_000, 2), (70_000, 5)), Some(20));
        assert_eq!(mean_lag_ms((10_000, 5), (10_000, 5)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn only_loops_overdue_by_more_than_the_limit_are_stuck() {
        let (quiet, late, busy, idle) = (Beat::default(), Beat::default(), Beat::default(), Beat::default());
        quiet.turn_within(Duration::from_secs(25));
        late.turn_within(Duration::from_secs(1));
        busy.working();
        idle.idle();
        tokio::time::advance(Duration::from_secs(4)).await;

        let beats = [("feed a", &quiet), ("feed b", &late), (WRITER_LOOP, &busy), ("idle", &idle)];
        let stuck = stuck_loops(
            beats.map(|(n, b)| (n.to_owned(), b)),
            liveness::now_micros(),
            Duration::from_secs(2),
        );

        assert_eq!(
            stuck,
            vec![
                Stuck { name: "feed b".into(), overdue: Duration::from_secs(3) },
                Stuck { name: WRITER_LOOP.into(), overdue: Duration::from_secs(4) },
            ]
        );
    }
}
