//! Simulator -> feed -> bus at full rate: frames per CPU-second of the receiving side.
//!
//! The simulator runs on its own runtime thread(s); the receiving side runs on one
//! current-thread runtime whose thread CPU time is read from `/proc/self/task/*/stat`, so the
//! simulator's work is not counted. Two receivers are measured in the same run on the same
//! exchange stream:
//!
//! - **baseline**: a bare tokio-tungstenite client that subscribes and discards every frame
//!   (the WebSocket layer alone, the ceiling of any feed handler here);
//! - **tickd**: the feed actor: parse, sequence checks, books, ticks, bus publish, and a
//!   lossless consumer draining the bus.
//!
//! Run: `cargo bench --bench pipeline` (optional env: `PIPELINE_SECS`, `PIPELINE_RATE`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tickd::bus::BusBuilder;
use tickd::config::{BusSettings, FeedSettings};
use tickd::dev::sim::{SimConfig, Simulator, market_names};
use tickd::feed::{FeedConfig, FeedContext, TcpConnector, feed};
use tickd::telemetry::alerts::Alerter;
use tickd::telemetry::metrics::FeedMetrics;
use tickd::tick::ConnId;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const RECEIVER_THREAD: &str = "bench-receiver";

/// CPU seconds (user + system) used so far by threads named `name`.
fn thread_cpu_secs(name: &str) -> f64 {
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesized command: state is field 3; utime 14, stime 15.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        total += utime + stime;
    }
    total as f64 / ticks_per_sec
}

struct Measured {
    frames: u64,
    wall: f64,
    cpu: f64,
}

fn measure(
    secs: u64,
    run: impl FnOnce(Arc<AtomicU64>, CancellationToken) -> std::thread::JoinHandle<()>,
) -> Measured {
    let frames = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let handle = run(frames.clone(), stop.clone());
    // Warm up: let the subscription settle before counting.
    std::thread::sleep(Duration::from_secs(1));
    let (f0, c0, t0) = (frames.load(Ordering::Relaxed), thread_cpu_secs(RECEIVER_THREAD), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (f1, c1, wall) = (frames.load(Ordering::Relaxed), thread_cpu_secs(RECEIVER_THREAD), t0.elapsed());
    stop.cancel();
    let _ = handle.join();
    Measured { frames: f1 - f0, wall: wall.as_secs_f64(), cpu: (c1 - c0).max(0.01) }
}

fn spawn_receiver(f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    // A current-thread runtime runs on the thread that calls `block_on`: name that thread.
    std::thread::Builder::new().name(RECEIVER_THREAD.into()).spawn(f).expect("thread starts")
}

fn receiver_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(RECEIVER_THREAD)
        .build()
        .expect("runtime builds")
}

fn subscribe_texts(markets: &[String]) -> Vec<String> {
    ["orderbook_delta", "ticker", "trade"]
        .iter()
        .enumerate()
        .map(|(i, ch)| {
            serde_json::json!({"id": i + 1, "cmd": "subscribe",
                "params": {"channels": [ch], "market_tickers": markets, "use_yes_price": true}})
            .to_string()
        })
        .collect()
}

fn main() {
    // `cargo test --all-targets` and nextest run bench binaries too: list nothing, run nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secs: u64 = std::env::var("PIPELINE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let rate: u32 = std::env::var("PIPELINE_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let markets = market_names(50);

    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("bench-sim")
        .build()
        .expect("runtime builds");
    let (sim, url) = sim_rt.block_on(async {
        let sim =
            Simulator::start(SimConfig { seed: 1, markets: markets.clone(), rate, ..SimConfig::default() });
        let addr = sim.bind("127.0.0.1:0".parse().expect("valid address")).await.expect("simulator binds");
        let url = sim.url(addr);
        (sim, url)
    });

    let baseline = measure(secs, |frames, stop| {
        let (url, markets) = (url.clone(), markets.clone());
        spawn_receiver(move || {
            receiver_runtime().block_on(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("connects");
                for text in subscribe_texts(&markets) {
                    ws.send(Message::text(text)).await.expect("sends");
                }
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        msg = ws.next() => match msg {
                            Some(Ok(_)) => { frames.fetch_add(1, Ordering::Relaxed); }
                            _ => break,
                        },
                    }
                }
            })
        })
    });

    let ours = measure(secs, |frames, stop| {
        let (url, markets) = (url.clone(), markets.clone());
        spawn_receiver(move || {
            receiver_runtime().block_on(async move {
                let mut settings = FeedSettings::new("bench", url.as_str());
                settings.markets = markets.clone();
                settings.lifecycle = false;
                let mut builder =
                    BusBuilder::new(&BusSettings { lossless_capacity: 1 << 16, lossy_capacity: 1 << 10 });
                let mut rx = builder.lossless();
                let bus = builder.build();
                let metrics = Arc::new(FeedMetrics::default());
                let ctx = FeedContext {
                    bus,
                    shutdown: stop.clone(),
                    metrics: metrics.clone(),
                    connector: Arc::new(TcpConnector),
                    alerter: Alerter::new(None),
                    jitter_seed: None,
                    checks: None,
                    backfill: None,
                };
                let cfg = FeedConfig {
                    conn: ConnId::new("bench", 0),
                    settings,
                    markets,
                    lifecycle: false,
                    credentials: None,
                };
                let (_handle, run) = feed(cfg, ctx);
                let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
                let count = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(50));
                    loop {
                        tick.tick().await;
                        frames.store(metrics.snapshot().frames, Ordering::Relaxed);
                    }
                });
                run.await;
                count.abort();
                drain.abort();
            })
        })
    });
    sim.shutdown();

    let per_cpu = |m: &Measured| m.frames as f64 / m.cpu;
    println!(
        "pipeline: simulator -> receiver over TCP on 127.0.0.1, 50 markets, target {rate} events/s, {secs} s"
    );
    for (name, m) in [("baseline (bare tungstenite)", &baseline), ("tickd feed -> bus", &ours)] {
        println!(
            "  {name:<28} {:>10.0} frames/s  {:>6.2} CPU-s  {:>10.0} frames per receiver CPU-second",
            m.frames as f64 / m.wall,
            m.cpu,
            per_cpu(m)
        );
    }
    println!("  ratio tickd/baseline (frames per CPU-second): {:.2}", per_cpu(&ours) / per_cpu(&baseline));
}
