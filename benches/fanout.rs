//! Dashboard fan-out: deliveries per server CPU-second at 100 and 1,000 clients, tickd side by
//! side with a minimal reference broadcast server, and the latency from the simulator's send to
//! a client's receive at 10,000 ticks/s.
//!
//! One simulator runs in this process (its own runtime thread). Each server runs as a process
//! of its own, so its CPU time (user + system, every thread) can be read from
//! `/proc/<pid>/stat`, and connects to the simulator like any feed:
//!
//! - **tickd**: the real binary, `tickd run` with one feed to the simulator, no `[store]`, and
//!   the dashboard on a free loopback port. Its clients subscribe every channel of every market.
//! - **reference**: `benches/fanout/reference.mjs`, Node and the `ws` package: the same upstream
//!   subscriptions, and every frame received sent to every client
//!   (`for (const c of wss.clients) c.send(data)`). Its clients' commands are ignored.
//!
//! Clients are tokio-tungstenite sockets in this process, on a two-thread runtime of their own,
//! each a loop that classifies and counts frames. They share the machine's cores with the
//! servers: their CPU time is reported too.
//!
//! **Throughput.** For each point (a client count and a rate), servers alternate (tickd,
//! reference, tickd, ...) for `FANOUT_REPS` repetitions, each started afresh. With the simulator
//! paused, the server starts and the clients connect and subscribe; the simulator then runs for
//! `FANOUT_SECS` and pauses again. The frames it wrote to the server's connection in that
//! window are what every client must receive; the window ends when every client has them all
//! (or has been told what it missed, or a few seconds pass without progress). A delivery is one
//! data frame received by one client (state frames sent on subscribe or after a resync,
//! `hello`, acks and `status` are not counted).
//!
//! **Latency.** The simulator keeps, per trade frame, the instant just before the socket write
//! that carried it ([`Simulator::record_send_times`]); each client takes the instant it reads a
//! trade frame and notes its trade id. Both clocks are this process's `Instant`, so each
//! (client, trade) pair gives one exact latency. tickd's frames also carry `recv_ts`, its feed's
//! receive time on the same machine's wall clock, which cuts each latency in two: the
//! simulator's send to tickd's read, and tickd's read to the client's. The rate is set in
//! ticks/s: the simulator's frames per exchange event are measured first and its event rate
//! set from them.
//!
//! Run: `cargo bench --bench fanout` (about 20 minutes). Optional env: `FANOUT_CLIENTS`
//! (100,100,1000), `FANOUT_RATE` (ticks/s, one per entry of `FANOUT_CLIENTS`: 1000,2000,200),
//! `FANOUT_SECS` (10), `FANOUT_REPS` (3), `FANOUT_MARKETS` (50), `FANOUT_SERVERS`
//! (tickd,reference), `FANOUT_LAT_RATE` (ticks/s, a list: 1000,5000,10000), `FANOUT_LAT_CLIENTS`
//! (100), `FANOUT_LAT_SECS` (10), `FANOUT_ONLY` (`throughput` or `latency`), `FANOUT_NODE`
//! (node).

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Name of the client runtime's threads, whose CPU time is reported.
const CLIENT_THREAD: &str = "bench-client";
/// The dashboard token of the tickd runs.
const TOKEN: &str = "fanout-bench-token-0123456789";
/// USER_HZ: the unit of the CPU times in `/proc/*/stat`.
const TICKS_PER_SEC: f64 = 100.0;
/// Without progress for this long after the simulator paused, the clients still short of
/// frames are taken as having missed them.
const DRAIN_IDLE: Duration = Duration::from_secs(3);
/// Connections opened at once while setting up the clients.
const CONNECTS_IN_FLIGHT: usize = 64;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// CPU time and load
// ---------------------------------------------------------------------------------------------

/// User + system CPU seconds from the text of a `/proc/.../stat` file.
fn stat_cpu_secs(stat: &str) -> f64 {
    // Fields after the parenthesized command: state is field 3; utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    (utime + stime) as f64 / TICKS_PER_SEC
}

/// CPU seconds used so far by process `pid`, all its threads (live and ended).
fn process_cpu_secs(pid: u32) -> f64 {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// CPU seconds used so far by this process's threads named `name`.
fn threads_cpu_secs(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim() == name)
        .map(|t| stat_cpu_secs(&std::fs::read_to_string(t.path().join("stat")).unwrap_or_default()))
        .sum()
}

/// The 1-minute load average: this machine is shared, and the numbers should say so.
fn load_average() -> f64 {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

// ---------------------------------------------------------------------------------------------
// The servers
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tickd,
    Reference,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tickd => "tickd",
            Kind::Reference => "reference",
        }
    }
}

/// A running server process; killed when dropped.
struct Server {
    kind: Kind,
    child: Child,
    port: u16,
    /// tickd's config and state directory (kept until the process is gone).
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(kind: Kind, sim_url: &str, markets: &[String]) -> Server {
        let dir = tempfile::tempdir().expect("temporary directory");
        let server = match kind {
            Kind::Tickd => Server::start_tickd(dir, sim_url, markets),
            Kind::Reference => Server::start_reference(dir, sim_url, markets),
        };
        server.wait_ready();
        server
    }

    fn start_tickd(dir: tempfile::TempDir, sim_url: &str, markets: &[String]) -> Server {
        let port = free_port();
        let config = dir.path().join("tickd.toml");
        let markets_toml: Vec<String> = markets.iter().map(|m| format!("{m:?}")).collect();
        let text = format!(
            r#"state_dir = {state:?}
summary_interval = "1h"

[log]
level = "warn"

[dashboard]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"
max_connections = 5000

[[feeds]]
name = "sim"
url = "{sim_url}"
markets = [{markets}]
"#,
            state = dir.path().join("state"),
            markets = markets_toml.join(", "),
        );
        std::fs::write(&config, text).expect("config written");
        let log = std::fs::File::create(dir.path().join("tickd.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tickd"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("tickd starts");
        Server { kind: Kind::Tickd, child, port, _dir: dir }
    }

    fn start_reference(dir: tempfile::TempDir, sim_url: &str, markets: &[String]) -> Server {
        let root = reference_dir();
        let node = std::env::var("FANOUT_NODE").unwrap_or_else(|_| "node".into());
        let mut child = Command::new(node)
            .arg(root.join("reference.mjs"))
            .arg(sim_url)
            .arg(markets.join(","))
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts (set FANOUT_NODE to its path)");
        // The one line `{"port": n}` says it is subscribed upstream and listening.
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout).read_line(&mut line).expect("reference prints its port");
        let port = line
            .trim()
            .strip_prefix("{\"port\":")
            .and_then(|rest| rest.strip_suffix('}'))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("reference printed {line:?}, not its port"));
        Server { kind: Kind::Reference, child, port, _dir: dir }
    }

    /// tickd: `/readyz` answers 200 (its feed is live). The reference is ready once it printed.
    fn wait_ready(&self) {
        if self.kind == Kind::Reference {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_status(self.port, "/readyz") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tickd not ready within 30 s: see its log");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ws_url(&self) -> String {
        match self.kind {
            Kind::Tickd => format!("ws://127.0.0.1:{}/ws?token={TOKEN}", self.port),
            Kind::Reference => format!("ws://127.0.0.1:{}/", self.port),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `benches/fanout/`, with `ws` installed from the committed lock file on first use.
fn reference_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/fanout");
    if !root.join("node_modules/ws/package.json").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&root)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci failed in {}", root.display());
    }
    root
}

/// A port free right now on 127.0.0.1.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    listener.local_addr().expect("bound").port()
}

/// The status code of `GET path` on 127.0.0.1:`port`, or `None` if nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------------------------

/// What one client has seen so far.
#[derive(Debug, Default)]
struct Counts {
    /// Live data frames: deliveries.
    data: AtomicU64,
    /// State frames (`"state":true`: on subscribe and after a resync), not counted as
    /// deliveries.
    state: AtomicU64,
    /// Everything else: `hello`, acks, `status`, feed events.
    control: AtomicU64,
    /// `lagged` frames received, and the ticks they said were missed.
    lagged: AtomicU64,
    missed: AtomicU64,
    /// The subscription is acknowledged (tickd) or the socket is open (reference).
    ready: AtomicBool,
    /// The server closed the socket, with this code (0 for none, 1 without a code).
    closed: AtomicU64,
}

/// A receive log entry: a trade frame's id (hashed), when it was read (`Instant` and µs since
/// the epoch), and tickd's `recv_ts` in it (µs since the epoch; the reference has none).
#[derive(Clone, Copy, Debug)]
struct Received {
    id: u64,
    at: Instant,
    wall_us: i64,
    recv_ts: Option<i64>,
}

/// The connected clients of one measurement.
struct Clients {
    counts: Vec<Arc<Counts>>,
    /// While true, each client logs the receive time of every trade frame.
    recording: Arc<AtomicBool>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<Vec<Received>>>,
}

impl Clients {
    async fn connect(kind: Kind, url: &str, n: usize) -> Clients {
        let recording = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
        let mut counts = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let c = Arc::new(Counts::default());
            counts.push(c.clone());
            let (url, recording, stop, permits) =
                (url.to_owned(), recording.clone(), stop.clone(), permits.clone());
            tasks.push(tokio::spawn(async move {
                let permit = permits.acquire_owned().await.expect("semaphore open");
                client(kind, url, c, recording, stop, permit).await
            }));
        }
        let clients = Clients { counts, recording, stop, tasks };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !clients.counts.iter().all(|c| c.ready.load(Ordering::Acquire)) {
            assert!(Instant::now() < deadline, "clients not subscribed within 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        clients
    }

    fn data(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.data.load(Ordering::Relaxed)).collect()
    }

    /// Waits until the data counts have not moved for `quiet`.
    async fn settle(&self, quiet: Duration) {
        let mut last = self.data();
        let mut since = Instant::now();
        while since.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.data();
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
    }

    /// Closes every socket; returns each client's receive log.
    async fn close(self) -> Vec<Vec<Received>> {
        self.stop.cancel();
        let mut logs = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            logs.push(t.await.unwrap_or_default());
        }
        logs
    }
}

async fn client(
    kind: Kind,
    url: String,
    counts: Arc<Counts>,
    recording: Arc<AtomicBool>,
    stop: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Vec<Received> {
    let mut ws = {
        let mut attempt = 0;
        loop {
            match tokio_tungstenite::connect_async_with_config(url.as_str(), Some(client_config()), true)
                .await
            {
                Ok((ws, _)) => break ws,
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    eprintln!("client connect failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("client cannot connect to {url}: {e}"),
            }
        }
    };
    if kind == Kind::Tickd {
        let subscribe = r#"{"cmd":"subscribe","id":1,"channels":["trades","quotes","book","lifecycle","feed"],"markets":"all"}"#;
        ws.send(Message::text(subscribe)).await.expect("subscribe sent");
    } else {
        counts.ready.store(true, Ordering::Release);
    }
    drop(permit);
    let mut log = Vec::new();
    // One cancellation future for the whole loop: a `select!` on `stop.cancelled()` per frame
    // would register and unregister with the token every time, under a lock all clients share.
    let mut frames = std::pin::pin!(ws.take_until(stop.clone().cancelled_owned()));
    while let Some(msg) = frames.next().await {
        match msg {
            Ok(Message::Text(text)) => {
                let at = Instant::now();
                let text = text.as_str();
                match frame_type(text) {
                    Some("lagged") => {
                        counts.lagged.fetch_add(1, Ordering::Relaxed);
                        counts
                            .missed
                            .fetch_add(number_after(text, "\"missed\":").unwrap_or(0), Ordering::Relaxed);
                    }
                    Some("subscribed") => {
                        counts.control.fetch_add(1, Ordering::Relaxed);
                        counts.ready.store(true, Ordering::Release);
                    }
                    Some(
                        "hello" | "unsubscribed" | "status" | "pong" | "error" | "history" | "feed" | "ok",
                    ) => {
                        counts.control.fetch_add(1, Ordering::Relaxed);
                    }
                    Some("quote" | "book") if text.contains("\"state\":true") => {
                        counts.state.fetch_add(1, Ordering::Relaxed);
                    }
                    ty => {
                        counts.data.fetch_add(1, Ordering::Relaxed);
                        if ty == Some("trade")
                            && recording.load(Ordering::Relaxed)
                            && let Some(id) = trade_id(text)
                        {
                            let recv_ts = number_after(text, "\"recv_ts\":").map(|v| v as i64);
                            log.push(Received { id: fnv1a(id), at, wall_us: wall_micros(), recv_ts });
                        }
                    }
                }
            }
            Ok(Message::Close(frame)) => {
                counts.closed.store(frame.map_or(1, |f| u64::from(u16::from(f.code))), Ordering::Relaxed);
            }
            // Pings are answered by tungstenite itself.
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // The stream ended before the bench stopped it: the server closed or dropped the socket.
    if !stop.is_cancelled() && counts.closed.load(Ordering::Relaxed) == 0 {
        counts.closed.store(1, Ordering::Relaxed);
    }
    log
}

/// Each client's WebSocket settings. tungstenite zeroes the free part of its read buffer
/// before every read (`read_buffer_size`, 128 KiB by default): with one frame per read that
/// memset, not the frame, is most of a client's CPU, and these clients share the cores with the
/// servers. 16 KiB holds the biggest burst a server writes at these rates.
fn client_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(16 * 1024)
}

/// The value of the first `"type":"..."` in a frame.
fn frame_type(text: &str) -> Option<&str> {
    let rest = &text[text.find("\"type\":\"")? + 8..];
    Some(&rest[..rest.find('"')?])
}

/// The trade id of a trade frame (tickd's and Kalshi's both say `"trade_id":"..."`).
fn trade_id(text: &str) -> Option<&str> {
    let rest = &text[text.find("\"trade_id\":\"")? + 12..];
    Some(&rest[..rest.find('"')?])
}

/// The unsigned integer right after `key`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = text[text.find(key)? + key.len()..].trim_start();
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Microseconds since the Unix epoch: the clock of tickd's `recv_ts`.
fn wall_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// FNV-1a: trade ids are matched by hash to keep the receive logs small.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

// ---------------------------------------------------------------------------------------------
// One throughput measurement
// ---------------------------------------------------------------------------------------------

/// One server, one client count, one repetition.
#[derive(Clone, Debug)]
struct Run {
    kind: Kind,
    clients: usize,
    /// Data frames the simulator wrote to the server in the window: what each client is owed.
    upstream: u64,
    /// Data frames received, all clients.
    deliveries: u64,
    /// Resume to the last delivery (or the end of the drain wait).
    wall: f64,
    server_cpu: f64,
    client_cpu: f64,
    /// Clients that received fewer than `upstream` data frames, and how many they lacked.
    short: usize,
    lacking: u64,
    /// Clients that received more (a count that does not match the upstream frames).
    over: usize,
    lagged: u64,
    missed: u64,
    closed: usize,
    load: f64,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.deliveries as f64 / self.wall
    }
    fn per_cpu(&self) -> f64 {
        self.deliveries as f64 / self.server_cpu.max(0.01)
    }
}

async fn measure(kind: Kind, sim: &Simulator, sim_url: &str, markets: &[String], n: usize, secs: f64) -> Run {
    // Nothing flows while the server and its clients set up.
    sim.pause();
    let server = Server::start(kind, sim_url, markets);
    let clients = Clients::connect(kind, &server.ws_url(), n).await;
    while !sim.caught_up() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    clients.settle(Duration::from_millis(300)).await;
    assert_eq!(sim.stats().connections_open, 1, "only the server under test is connected to the simulator");

    let base = clients.data();
    let sent0 = sim.stats().frames_sent;
    let (cpu0, ccpu0) = (process_cpu_secs(server.pid()), threads_cpu_secs(CLIENT_THREAD));
    let t0 = Instant::now();
    sim.resume();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    sim.pause();
    while !sim.caught_up() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let upstream = sim.stats().frames_sent - sent0;

    // Drain: until every client has all it is owed (or was told what it missed), or nothing
    // moved for `DRAIN_IDLE`.
    let owed = |i: usize, data: &[u64]| {
        let c = &clients.counts[i];
        data[i] - base[i] + c.missed.load(Ordering::Relaxed) < upstream
            && c.closed.load(Ordering::Relaxed) == 0
    };
    let mut last = clients.data();
    let mut last_change = Instant::now();
    let mut done_at = Instant::now();
    loop {
        let data = clients.data();
        if data != last {
            (last, last_change, done_at) = (data.clone(), Instant::now(), Instant::now());
        }
        if !(0..n).any(|i| owed(i, &data)) || last_change.elapsed() > DRAIN_IDLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (cpu1, ccpu1) = (process_cpu_secs(server.pid()), threads_cpu_secs(CLIENT_THREAD));
    let wall = (done_at - t0).as_secs_f64();
    let data = clients.data();
    let got: Vec<u64> = (0..n).map(|i| data[i] - base[i]).collect();
    let sum =
        |f: fn(&Counts) -> &AtomicU64| clients.counts.iter().map(|c| f(c).load(Ordering::Relaxed)).sum();
    let run = Run {
        kind,
        clients: n,
        upstream,
        deliveries: got.iter().sum(),
        wall,
        server_cpu: cpu1 - cpu0,
        client_cpu: ccpu1 - ccpu0,
        short: got.iter().filter(|g| **g < upstream).count(),
        lacking: got.iter().map(|g| upstream.saturating_sub(*g)).sum(),
        over: got.iter().filter(|g| **g > upstream).count(),
        lagged: sum(|c| &c.lagged),
        missed: sum(|c| &c.missed),
        closed: clients.counts.iter().filter(|c| c.closed.load(Ordering::Relaxed) != 0).count(),
        load: load_average(),
    };
    clients.close().await;
    drop(server);
    sim.pause();
    run
}

fn print_run(r: &Run) {
    println!(
        "  {:<9} {:>5} clients: {:>9.0} deliveries/s, server {:>5.2} CPU-s -> {:>9.0} per CPU-s; \
         clients {:>5.2} CPU-s; upstream {} frames, {:.2} s; short {} ({} frames), over {}, \
         lagged {} (missed {}), closed {}; load {:.2}",
        r.kind.name(),
        r.clients,
        r.per_sec(),
        r.server_cpu,
        r.per_cpu(),
        r.client_cpu,
        r.upstream,
        r.wall,
        r.short,
        r.lacking,
        r.over,
        r.lagged,
        r.missed,
        r.closed,
        r.load
    );
}

// ---------------------------------------------------------------------------------------------
// Latency
// ---------------------------------------------------------------------------------------------

struct Latency {
    kind: Kind,
    clients: usize,
    ticks_per_sec: f64,
    /// One latency per (client, trade) pair, sorted, in µs.
    samples: Vec<f64>,
    /// tickd only, the same pairs cut at tickd's `recv_ts` (sorted, µs): simulator's send to
    /// tickd's receive stamp, and that stamp to the client's receive.
    to_stamp: Vec<f64>,
    from_stamp: Vec<f64>,
    /// Trades received that the simulator has no send time for (should be none).
    unmatched: usize,
    /// (client, trade) pairs the simulator sent but a client did not receive.
    lost: u64,
    /// `lagged` frames received, and clients the server closed.
    lagged: u64,
    closed: usize,
    server_cpu: f64,
    client_cpu: f64,
    load: f64,
}

async fn latency(
    kind: Kind,
    sim: &Simulator,
    sim_url: &str,
    markets: &[String],
    n: usize,
    secs: f64,
    events_per_sec: u32,
) -> Latency {
    sim.pause();
    sim.set_rate(events_per_sec);
    let server = Server::start(kind, sim_url, markets);
    let clients = Clients::connect(kind, &server.ws_url(), n).await;
    sim.record_send_times(true);
    sim.resume();
    // Warm-up, then count from a clean log on both sides.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, ccpu0, sent0) =
        (process_cpu_secs(server.pid()), threads_cpu_secs(CLIENT_THREAD), sim.stats().frames_sent);
    sim.take_send_times();
    clients.recording.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    sim.pause();
    let elapsed = t0.elapsed().as_secs_f64();
    let upstream = sim.stats().frames_sent - sent0;
    while !sim.caught_up() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    clients.settle(Duration::from_millis(500)).await;
    let cpu = process_cpu_secs(server.pid()) - cpu0;
    let client_cpu = threads_cpu_secs(CLIENT_THREAD) - ccpu0;
    let lagged = clients.counts.iter().map(|c| c.lagged.load(Ordering::Relaxed)).sum();
    let closed = clients.counts.iter().filter(|c| c.closed.load(Ordering::Relaxed) != 0).count();
    let load = load_average();
    sim.record_send_times(false);
    let sent: HashMap<u64, Instant> =
        sim.take_send_times().into_iter().map(|(id, at)| (fnv1a(&id), at)).collect();
    let logs = clients.close().await;
    drop(server);

    let (mut samples, mut to_stamp, mut from_stamp) = (Vec::new(), Vec::new(), Vec::new());
    let mut unmatched = 0;
    for log in &logs {
        for r in log {
            match sent.get(&r.id) {
                Some(s) => {
                    let total = r.at.saturating_duration_since(*s).as_secs_f64() * 1e6;
                    samples.push(total);
                    if let Some(recv_ts) = r.recv_ts {
                        let after = (r.wall_us - recv_ts) as f64;
                        from_stamp.push(after);
                        to_stamp.push(total - after);
                    }
                }
                // Trades written before the log was cleared, still on their way.
                None => unmatched += 1,
            }
        }
    }
    for v in [&mut samples, &mut to_stamp, &mut from_stamp] {
        v.sort_by(f64::total_cmp);
    }
    let lost = (sent.len() * n).saturating_sub(samples.len()) as u64;
    Latency {
        kind,
        clients: n,
        ticks_per_sec: upstream as f64 / elapsed,
        samples,
        to_stamp,
        from_stamp,
        unmatched,
        lost,
        lagged,
        closed,
        server_cpu: cpu,
        client_cpu,
        load,
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn print_latency(l: &Latency) {
    let s = &l.samples;
    println!(
        "  {:<9} {} clients at {:.0} ticks/s: {} samples; p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, \
         p99.9 {:.0} µs, max {:.0} µs; unmatched {}, lost {}, lagged {}, closed {}; server {:.2} CPU-s, \
         clients {:.2} CPU-s; load {:.2}",
        l.kind.name(),
        l.clients,
        l.ticks_per_sec,
        s.len(),
        quantile(s, 0.5),
        quantile(s, 0.9),
        quantile(s, 0.99),
        quantile(s, 0.999),
        s.last().copied().unwrap_or(f64::NAN),
        l.unmatched,
        l.lost,
        l.lagged,
        l.closed,
        l.server_cpu,
        l.client_cpu,
        l.load
    );
    if !l.from_stamp.is_empty() {
        for (name, v) in [("send -> tickd recv_ts", &l.to_stamp), ("tickd recv_ts -> client", &l.from_stamp)]
        {
            println!(
                "    {name:<24} p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
                quantile(v, 0.5),
                quantile(v, 0.9),
                quantile(v, 0.99),
                v.last().copied().unwrap_or(f64::NAN)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Calibration: frames per exchange event
// ---------------------------------------------------------------------------------------------

/// The simulator's data frames per exchange event for the channels the servers subscribe,
/// measured on one bare connection, so rates can be given in ticks (frames) per second.
async fn frames_per_event(sim: &Simulator, sim_url: &str, markets: &[String]) -> f64 {
    let (mut ws, _) = tokio_tungstenite::connect_async(sim_url).await.expect("connects to the simulator");
    let channels: [(&str, bool); 4] =
        [("orderbook_delta", true), ("ticker", true), ("trade", true), ("market_lifecycle_v2", false)];
    for (i, (ch, filtered)) in channels.iter().enumerate() {
        let mut params = serde_json::json!({"channels": [ch]});
        if *filtered {
            params["market_tickers"] = serde_json::json!(markets);
        }
        let cmd = serde_json::json!({"id": i + 1, "cmd": "subscribe", "params": params});
        ws.send(Message::text(cmd.to_string())).await.expect("subscribes");
    }
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    sim.set_rate(5_000);
    sim.resume();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (f0, e0) = (sim.stats().frames_sent, sim.stats().events_generated);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (f1, e1) = (sim.stats().frames_sent, sim.stats().events_generated);
    sim.pause();
    drain.abort();
    // Let the simulator notice the closed connection.
    while sim.stats().connections_open > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (f1 - f0) as f64 / (e1 - e0).max(1) as f64
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

fn main() {
    // `cargo test --all-targets` and nextest run bench binaries too: list nothing, run nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("bench-sim")
        .build()
        .expect("runtime builds");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name(CLIENT_THREAD)
        .build()
        .expect("runtime builds");
    let markets = market_names(env_or("FANOUT_MARKETS", 50));
    let (sim, sim_url) = sim_rt.block_on(async {
        let sim = Simulator::start(SimConfig { seed: 1, markets: markets.clone(), ..SimConfig::default() });
        sim.pause();
        let addr = sim.bind("127.0.0.1:0".parse().expect("valid address")).await.expect("simulator binds");
        let url = sim.url(addr);
        (sim, url)
    });
    client_rt.block_on(run(sim, sim_url, markets));
}

async fn run(sim: Simulator, sim_url: String, markets: Vec<String>) {
    let counts: Vec<usize> = env_list("FANOUT_CLIENTS", "100,100,1000");
    let rates: Vec<f64> = env_list("FANOUT_RATE", "1000,2000,200");
    let secs: f64 = env_or("FANOUT_SECS", 10.0);
    let reps: usize = env_or("FANOUT_REPS", 3);
    let lat_rates: Vec<f64> = env_list("FANOUT_LAT_RATE", "1000,5000,10000");
    let lat_clients: usize = env_or("FANOUT_LAT_CLIENTS", 100);
    let lat_secs: f64 = env_or("FANOUT_LAT_SECS", 10.0);
    let only = std::env::var("FANOUT_ONLY").unwrap_or_default();
    let kinds: Vec<Kind> = std::env::var("FANOUT_SERVERS")
        .unwrap_or_else(|_| "tickd,reference".into())
        .split(',')
        .filter_map(|s| match s.trim() {
            "tickd" => Some(Kind::Tickd),
            "reference" => Some(Kind::Reference),
            _ => None,
        })
        .collect();

    let fpe = frames_per_event(&sim, &sim_url, &markets).await;
    let events = |ticks: f64| ((ticks / fpe).round() as u32).max(1);
    println!(
        "fanout: {} markets, {:.3} frames per exchange event, {} CPUs, load average {:.2}",
        markets.len(),
        fpe,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );

    if only != "latency" {
        // One point per client count, at the rate in the same position of `FANOUT_RATE`.
        let points: Vec<(usize, f64)> = counts
            .iter()
            .enumerate()
            .map(|(i, &n)| (n, rates.get(i).or(rates.last()).copied().unwrap_or(1000.0)))
            .collect();
        let mut runs: Vec<(usize, Run)> = Vec::new();
        for (i, &(n, rate)) in points.iter().enumerate() {
            sim.set_rate(events(rate));
            println!(
                "throughput: {n} clients, {rate:.0} ticks/s ({} events/s), {secs} s, {reps} reps",
                events(rate)
            );
            for _ in 0..reps {
                for &kind in &kinds {
                    let r = measure(kind, &sim, &sim_url, &markets, n, secs).await;
                    print_run(&r);
                    runs.push((i, r));
                }
            }
        }
        println!();
        println!(
            "| Clients | ticks/s | Server | deliveries/s | server CPU-s | deliveries per server CPU-s | client CPU-s | short clients | load |"
        );
        println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|");
        for (i, &(n, rate)) in points.iter().enumerate() {
            let mut per_kind = Vec::new();
            for &kind in &kinds {
                let rs: Vec<&Run> =
                    runs.iter().filter(|(p, r)| *p == i && r.kind == kind).map(|(_, r)| r).collect();
                let m = |f: &dyn Fn(&Run) -> f64| median(rs.iter().map(|r| f(r)).collect());
                let per_cpu = m(&|r| r.per_cpu());
                println!(
                    "| {n} | {rate:.0} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {} | {:.1}-{:.1} |",
                    kind.name(),
                    m(&|r| r.per_sec()),
                    m(&|r| r.server_cpu),
                    per_cpu,
                    m(&|r| r.client_cpu),
                    rs.iter().map(|r| r.short).max().unwrap_or(0),
                    rs.iter().map(|r| r.load).fold(f64::INFINITY, f64::min),
                    rs.iter().map(|r| r.load).fold(0.0, f64::max),
                );
                per_kind.push((kind, per_cpu));
            }
            if let (Some((_, t)), Some((_, r))) = (
                per_kind.iter().find(|(k, _)| *k == Kind::Tickd),
                per_kind.iter().find(|(k, _)| *k == Kind::Reference),
            ) {
                println!(
                    "|   |   | ratio tickd / reference (per CPU-s, medians) | | | **{:.2}** | | | |",
                    t / r
                );
            }
        }
    }

    if only != "throughput" {
        for &lat_rate in &lat_rates {
            println!();
            println!("latency: {lat_clients} clients, {lat_rate:.0} ticks/s, {lat_secs} s");
            for &kind in &kinds {
                let l =
                    latency(kind, &sim, &sim_url, &markets, lat_clients, lat_secs, events(lat_rate)).await;
                print_latency(&l);
            }
        }
    }
    sim.shutdown();
}
