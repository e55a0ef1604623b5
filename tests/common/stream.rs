//! A client of the dashboard port for end-to-end tests: the stream (`/ws`) through
//! tokio-tungstenite, raw HTTP for what a WebSocket library hides (status codes and headers of
//! refused upgrades), and what the kernel says about a connection's queues.
//!
//! Every read has a deadline and panics with what it saw when the deadline passes, so a test
//! that waits for a frame that never comes fails with the frames that came instead.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream, client_async, client_async_tls_with_config,
};

/// The stream over a TCP connection, or over TLS on one.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames kept for failure messages.
const KEEP: usize = 20;

/// What a read of the stream gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A text frame, parsed.
    Frame(Value),
    /// A close frame and its code (`None`: a close frame without one).
    Closed(Option<u16>),
    /// The connection ended without a close frame (EOF, reset), with why.
    Ended(String),
}

/// The `ws://` request for `path` (e.g. `/ws?token=...`) at `addr`.
pub fn request(addr: SocketAddr, path: &str) -> Request {
    format!("ws://{addr}{path}").into_client_request().expect("a valid WebSocket request")
}

/// The request with `Authorization: Bearer <token>`.
pub fn bearer_request(addr: SocketAddr, token: &str) -> Request {
    let mut req = request(addr, "/ws");
    req.headers_mut().insert("Authorization", header(&format!("Bearer {token}")));
    req
}

/// A header value; panics on characters a header cannot hold.
pub fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{value:?} is not a header value: {e}"))
}

/// A stream client.
pub struct Client {
    ws: Ws,
    /// The client's own port, to find the connection in `/proc/net/tcp`.
    pub local: SocketAddr,
    /// The server's address.
    pub server: SocketAddr,
    /// The last frames read, for failure messages.
    recent: VecDeque<String>,
}

impl Client {
    /// Connects with the bearer header and reads the `hello` frame.
    pub async fn connect(addr: SocketAddr, token: &str) -> Client {
        let (mut client, _) = Client::open(bearer_request(addr, token), None)
            .await
            .unwrap_or_else(|e| panic!("connecting to the dashboard at {addr}: {e}"));
        client.hello().await;
        client
    }

    /// Opens a TCP connection (with `SO_RCVBUF` set to `recv_buffer` first, when given) and
    /// does the WebSocket handshake of `req` over it. Reads nothing after the handshake.
    pub async fn open(
        req: Request,
        recv_buffer: Option<u32>,
    ) -> Result<(Client, Response), tungstenite::Error> {
        Client::open_with(req, recv_buffer, None).await
    }

    /// Like [`Client::open`] for a `wss://` request, over TLS with `tls`.
    pub async fn open_tls(
        req: Request,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<(Client, Response), tungstenite::Error> {
        Client::open_with(req, None, Some(tls)).await
    }

    async fn open_with(
        req: Request,
        recv_buffer: Option<u32>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<(Client, Response), tungstenite::Error> {
        let host = req.uri().host().expect("the request names a host").to_owned();
        let port = req.uri().port_u16().expect("the request names a port");
        let server: SocketAddr = format!("{host}:{port}").parse().expect("an IP literal and a port");
        let socket = TcpSocket::new_v4().expect("a TCP socket");
        if let Some(size) = recv_buffer {
            // Before connecting, so that the window the kernel advertises is small from the start.
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let tcp = timeout_at(Instant::now() + Duration::from_secs(20), socket.connect(server))
            .await
            .unwrap_or_else(|_| panic!("no TCP connection to {server} within 20 s"))?;
        let local = tcp.local_addr().expect("the local address");
        let handshake = async {
            match tls {
                Some(tls) => client_async_tls_with_config(req, tcp, None, Some(Connector::Rustls(tls))).await,
                None => client_async(req, MaybeTlsStream::Plain(tcp)).await,
            }
        };
        let (ws, response) = timeout_at(Instant::now() + Duration::from_secs(20), handshake)
            .await
            .unwrap_or_else(|_| panic!("no WebSocket handshake with {server} within 20 s"))?;
        Ok((Client { ws, local, server, recent: VecDeque::new() }, response))
    }

    /// Reads the first frame and checks that it is `hello`.
    pub async fn hello(&mut self) -> Value {
        let hello = self.frame("the hello frame", Duration::from_secs(20)).await;
        assert_eq!(hello["type"], "hello", "the first frame is hello: {hello}");
        hello
    }

    /// Sends one text frame as is.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap_or_else(|e| panic!("sending {text:.80}: {e}"));
    }

    /// Sends one text frame; false if the connection is gone.
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        self.ws.send(Message::text(text)).await.is_ok()
    }

    /// Sends a command.
    pub async fn send(&mut self, command: &Value) {
        self.send_text(&command.to_string()).await;
    }

    /// Sends a command and returns its reply (the first frame echoing its `id`), within `limit`.
    pub async fn ask(&mut self, command: Value, limit: Duration) -> Value {
        self.send(&command).await;
        let id = command["id"].clone();
        self.until(&format!("the reply to {command}"), limit, |f| f["id"] == id).await.0
    }

    /// The next event, or panics naming `what` after `limit`.
    pub async fn next(&mut self, what: &str, limit: Duration) -> Event {
        match self.next_by(Instant::now() + limit).await {
            Some(event) => event,
            None => {
                panic!("nothing within {limit:?} while waiting for {what}; last frames: {:#?}", self.recent)
            }
        }
    }

    /// The next event, or `None` at `deadline`.
    pub async fn next_by(&mut self, deadline: Instant) -> Option<Event> {
        Some(match self.next_raw_by(deadline).await? {
            Ok(text) => Event::Frame(
                serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("a frame that is not JSON ({e}): {text}")),
            ),
            Err(end) => end,
        })
    }

    /// The next text frame unparsed (or how the connection ended), or `None` at `deadline`.
    pub async fn next_raw_by(&mut self, deadline: Instant) -> Option<Result<String, Event>> {
        loop {
            let got = timeout_at(deadline, self.ws.next()).await.ok()?;
            return Some(match got {
                None => Err(Event::Ended("end of stream".into())),
                Some(Ok(Message::Text(text))) => {
                    if self.recent.len() == KEEP {
                        self.recent.pop_front();
                    }
                    self.recent.push_back(text.as_str().chars().take(300).collect());
                    Ok(text.as_str().to_owned())
                }
                Some(Ok(Message::Close(frame))) => Err(Event::Closed(frame.map(|f| u16::from(f.code)))),
                Some(Ok(Message::Binary(b))) => {
                    panic!("a binary frame of {} bytes: tickd sends only text", b.len())
                }
                // Pings are answered by the library as it reads.
                Some(Ok(_)) => continue,
                Some(Err(e)) => Err(Event::Ended(e.to_string())),
            });
        }
    }

    /// Reads frames fast, parsing only those whose text contains `needle`, until one of them
    /// matches `pred`. Returns it, or how the connection ended first; panics after `limit`.
    pub async fn skip_until(
        &mut self,
        what: &str,
        limit: Duration,
        needle: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, Event> {
        let deadline = Instant::now() + limit;
        loop {
            match self.next_raw_by(deadline).await {
                Some(Ok(text)) if text.contains(needle) => {
                    let v: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("a frame that is not JSON ({e}): {text}"));
                    if pred(&v) {
                        return Ok(v);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(end)) => return Err(end),
                None => panic!("no {what} within {limit:?}; last frames: {:#?}", self.recent),
            }
        }
    }

    /// The next text frame; panics on a close or after `limit`.
    pub async fn frame(&mut self, what: &str, limit: Duration) -> Value {
        match self.next(what, limit).await {
            Event::Frame(v) => v,
            other => panic!("{other:?} while waiting for {what}; last frames: {:#?}", self.recent),
        }
    }

    /// Reads frames until one matches `pred`: returns it and the frames before it. Panics
    /// naming `what` on a close or after `limit`.
    pub async fn until(
        &mut self,
        what: &str,
        limit: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + limit;
        let mut before = Vec::new();
        loop {
            match self.next_by(deadline).await {
                Some(Event::Frame(v)) if pred(&v) => return (v, before),
                Some(Event::Frame(v)) => before.push(v),
                Some(other) => {
                    panic!("{other:?} while waiting for {what}; last frames: {:#?}", self.recent)
                }
                None => panic!("no {what} within {limit:?}; last frames: {:#?}", self.recent),
            }
        }
    }

    /// Reads until the connection ends: how (a close frame and its code, or an end without
    /// one) and the frames before it. Panics after `limit`.
    pub async fn end(&mut self, what: &str, limit: Duration) -> (Event, Vec<Value>) {
        let deadline = Instant::now() + limit;
        let mut before = Vec::new();
        loop {
            match self.next_by(deadline).await {
                Some(Event::Frame(v)) => before.push(v),
                Some(end) => {
                    if let Event::Closed(_) = end {
                        // Reading on sends the library's answer to the close frame.
                        let _ = timeout_at(deadline, self.ws.next()).await;
                    }
                    return (end, before);
                }
                None => panic!(
                    "no end within {limit:?} while waiting for {what}; last frames: {:#?}",
                    self.recent
                ),
            }
        }
    }

    /// Like [`Client::end`], sending a `ping` command every `every` meanwhile (as a page
    /// polling the server would), so that the server has unread commands when it closes.
    pub async fn end_while_pinging(&mut self, what: &str, limit: Duration, every: Duration) -> Event {
        let deadline = Instant::now() + limit;
        let mut id = 0u64;
        loop {
            id += 1;
            // The server may be gone already; what the reads then say is what counts.
            let _ = self.try_send_text(&json!({"cmd": "ping", "id": format!("poll-{id}")}).to_string()).await;
            let slice = (Instant::now() + every).min(deadline);
            loop {
                match self.next_raw_by(slice).await {
                    Some(Ok(_)) => {}
                    Some(Err(end)) => {
                        if let Event::Closed(_) = end {
                            let _ = timeout_at(deadline, self.ws.next()).await;
                        }
                        return end;
                    }
                    None => break,
                }
            }
            assert!(
                Instant::now() < deadline,
                "no end within {limit:?} while waiting for {what}; last frames: {:#?}",
                self.recent
            );
        }
    }

    /// Reads in the background from now on, into a [`Tally`].
    pub fn collect(self) -> Collector {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let sink = tally.clone();
        let local = self.local;
        let mut ws = self.ws;
        let task = tokio::spawn(async move {
            while let Some(got) = ws.next().await {
                let mut t = sink.lock().unwrap();
                match got {
                    Ok(Message::Text(text)) => t.take(text.as_str()),
                    Ok(Message::Close(frame)) => {
                        t.end = Some(Event::Closed(frame.map(|f| u16::from(f.code))));
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        t.end = Some(Event::Ended(e.to_string()));
                        return;
                    }
                }
            }
            sink.lock().unwrap().end.get_or_insert(Event::Ended("end of stream".into()));
        });
        Collector { tally, task, local }
    }

    /// Hands the raw stream over, e.g. to hold a connection that never reads.
    pub fn into_inner(self) -> Ws {
        self.ws
    }
}

/// What a background reader saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Text frames read.
    pub frames: u64,
    /// Bytes of text frames read.
    pub bytes: u64,
    /// Live frames: `trade`, `quote`, `book`, `delta` or `lifecycle` without `state`.
    pub live: u64,
    /// `trade_id`s of the `trade` frames, in order.
    pub trades: Vec<String>,
    /// Periodic `status` frames (those without an `id`).
    pub statuses: u64,
    /// `lagged` frames.
    pub lagged: Vec<Value>,
    /// `error` frames.
    pub errors: Vec<Value>,
    /// How the connection ended, once it has.
    pub end: Option<Event>,
}

impl Tally {
    fn take(&mut self, text: &str) {
        self.frames += 1;
        self.bytes += text.len() as u64;
        // Status frames come often and say nothing the tally keeps: counted unparsed. (A
        // collecting client sends no `status` command, so they are the periodic ones and the
        // state of a `feed` subscription.)
        if text.contains("\"type\":\"status\"") {
            self.statuses += 1;
            return;
        }
        let v: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("a frame that is not JSON ({e}): {text}"));
        let state = v["state"] == true;
        match v["type"].as_str().unwrap_or("") {
            "trade" => {
                if !state {
                    self.live += 1;
                }
                self.trades.push(v["trade_id"].as_str().unwrap_or("").to_owned());
            }
            "quote" | "book" | "delta" | "lifecycle" if !state => self.live += 1,
            "lagged" => self.lagged.push(v),
            "error" => self.errors.push(v),
            _ => {}
        }
    }
}

/// A client reading in the background.
pub struct Collector {
    /// What it has read so far.
    pub tally: Arc<Mutex<Tally>>,
    task: JoinHandle<()>,
    /// The client's own address.
    pub local: SocketAddr,
}

impl Collector {
    /// Applies `f` to the tally so far.
    pub fn with<T>(&self, f: impl FnOnce(&Tally) -> T) -> T {
        f(&self.tally.lock().unwrap())
    }

    /// Waits until `cond` holds for the tally, or panics naming `what` after `limit`.
    pub async fn wait(&self, what: &str, limit: Duration, cond: impl Fn(&Tally) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let failure = {
                let t = self.tally.lock().unwrap();
                if cond(&t) {
                    return;
                }
                (Instant::now() > deadline).then(|| {
                    format!(
                        "client {} waited {limit:?} for {what}: {} frames, {} live, {} trades, {} statuses, lagged {:?}, errors {:?}, end {:?}",
                        self.local,
                        t.frames,
                        t.live,
                        t.trades.len(),
                        t.statuses,
                        t.lagged,
                        t.errors,
                        t.end
                    )
                })
            };
            // Outside the lock, so that the reading task does not find it poisoned.
            if let Some(failure) = failure {
                panic!("{failure}");
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops reading and drops the connection.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// A `subscribe` command.
pub fn subscribe(id: u64, channels: &[&str], markets: Value) -> Value {
    json!({"cmd": "subscribe", "id": id, "channels": channels, "markets": markets})
}

/// The response to a raw HTTP request.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (lowercase), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics (with the response) when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("a body that is not JSON ({e}): {self:?}"))
    }
}

/// `GET path` with `headers` (besides a `Host` of `addr`, unless `headers` names one), read
/// up to the end of the headers and the body its `Content-Length` announces. A `101` has no
/// body; its connection is dropped.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let io = async { exchange(TcpStream::connect(addr).await?, &get_text(addr, path, headers)).await };
    finish_get(addr, path, io).await
}

/// Like [`http_get`], over TLS with `tls` (the server's name is its IP address).
pub async fn https_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    tls: Arc<rustls::ClientConfig>,
) -> HttpResponse {
    let io = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
        exchange(stream, &get_text(addr, path, headers)).await
    };
    finish_get(addr, path, io).await
}

/// The request of [`http_get`].
fn get_text(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let mut text = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        text.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text
}

/// The response to `io`, or a panic naming the request; 20 s at most.
async fn finish_get(
    addr: SocketAddr,
    path: &str,
    io: impl Future<Output = std::io::Result<HttpResponse>>,
) -> HttpResponse {
    match timeout_at(Instant::now() + Duration::from_secs(20), io).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => panic!("GET {path} at {addr}: {e}"),
        Err(_) => panic!("GET {path} at {addr}: no response within 20 s"),
    }
}

/// Sends `text` on `stream` and reads the response.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut tcp: S,
    text: &str,
) -> std::io::Result<HttpResponse> {
    tcp.write_all(text.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "EOF inside the headers: {:?}",
                String::from_utf8_lossy(&buf)
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while status != 101 && body.len() < length {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(HttpResponse { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// The headers of a WebSocket upgrade of `/ws`, besides any the test adds.
pub fn upgrade_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]
}

/// Bytes queued in the kernel for the TCP connection from `local` to `remote` (IPv4): unsent
/// or unacknowledged (`tx_queue`) and received but unread (`rx_queue`). `None` when no such
/// connection exists.
pub fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()),
        SocketAddr::V6(_) => panic!("tcp_queues reads IPv4 connections only: {a}"),
    };
    let (l, r) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 || cols[1] != l || cols[2] != r {
            return None;
        }
        let (tx, rx) = cols[4].split_once(':')?;
        Some((u64::from_str_radix(tx, 16).ok()?, u64::from_str_radix(rx, 16).ok()?))
    })
}

/// The resident memory of process `pid` in kB (`VmRSS` of `/proc/<pid>/status`); panics if
/// it cannot be read.
pub fn rss_kb(pid: u32) -> u64 {
    try_rss_kb(pid).unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Like [`rss_kb`], `None` when the process is gone.
pub fn try_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Makes sure this process (and the children it starts) may open `needed` files, raising the
/// soft limit towards the hard one with `prlimit` when it is lower. Panics when it cannot.
pub fn ensure_open_files(needed: u64) {
    let soft = || {
        let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
        let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
        let cols: Vec<&str> = line.split_whitespace().collect();
        let parse = |s: &str| if s == "unlimited" { u64::MAX } else { s.parse().unwrap_or(0) };
        (parse(cols[3]), parse(cols[4]))
    };
    let (current, hard) = soft();
    if current >= needed {
        return;
    }
    let target = hard.min(needed.max(4096));
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={target}:"))
        .status();
    let (now, _) = soft();
    assert!(
        now >= needed,
        "this test needs {needed} open files; the limit is {now} (hard {hard}) and prlimit gave {status:?}: raise `ulimit -n`"
    );
}

/// The value of the `/metrics` sample `series` (name and labels, as printed), if present.
pub async fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let page = http_get(addr, "/metrics", &[]).await;
    assert_eq!(page.status, 200, "{page:?}");
    page.body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
