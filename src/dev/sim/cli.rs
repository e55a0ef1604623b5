//! `tickd sim`: the simulator on a TCP port, with fault switches from stdin and a schedule.
//!
//! Console commands (one per line on stdin, each acknowledged with one line on stdout, a bad one
//! with an `error:` line): `drop`, `close <code>`, `stall on|off`, `refuse <n>`, `gap <n>`,
//! `malformed <n>`, `unknown <n>`, `oversized <bytes>`, `terminal <10|25>`, `freeze <market>`,
//! `pause`, `resume`,
//! `rate <n>`, `stats`, `help`, and for the REST API `rest-429 <n> [<retry-after>]`,
//! `rest-5xx <n> [<status>]`, `rest-slow <duration>`. End of stdin leaves the simulator running
//! until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::{SimAuth, SimConfig, Simulator, market_names};

/// Arguments of `tickd sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: SocketAddr,
    /// Number of markets created at start (`SIM-MKT-001`...).
    #[arg(long, default_value_t = 10)]
    pub markets: usize,
    /// Seed of the exchange's event sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Exchange events per second across all markets.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Heartbeat ping cadence (`10s`, `500ms`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// PEM public key (PKCS#8 or PKCS#1) that must sign handshakes; unsigned accepted without.
    #[arg(long, requires = "key_id")]
    pub public_key: Option<PathBuf>,
    /// API key id expected in `KALSHI-ACCESS-KEY`.
    #[arg(long)]
    pub key_id: Option<String>,
    /// Allowed clock skew of `KALSHI-ACCESS-TIMESTAMP`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub max_skew: Duration,
    /// Trade frames without `seq` (older servers).
    #[arg(long)]
    pub no_trade_seq: bool,
    /// Data frames without `sending_ts_ms`.
    #[arg(long)]
    pub no_sending_ts: bool,
    /// Data frames carry a top-level field no client knows.
    #[arg(long)]
    pub extra_fields: bool,
    /// Refuse unknown markets (error 11) instead of creating them.
    #[arg(long)]
    pub no_auto_create: bool,
    /// About one lifecycle event per this many exchange events (0: none).
    #[arg(long, default_value_t = 200)]
    pub lifecycle_every: u32,
    /// Close clients that leave this many pings unanswered.
    #[arg(long)]
    pub missed_pongs_close: Option<u32>,
    /// Every this long (`1m`, `30s`), each series of the markets gets a new event of markets,
    /// and older markets close, are determined and settle, with their lifecycle messages.
    #[arg(long, value_parser = parse_duration)]
    pub new_market_every: Option<Duration>,
    /// Run a console command once after a delay: `30s=drop`, `1m="close 1001"`. Repeatable.
    #[arg(long = "fault-at", value_name = "DELAY=COMMAND")]
    pub fault_at: Vec<String>,
    /// Run a console command repeatedly: `45s=gap 3`. Repeatable.
    #[arg(long = "fault-every", value_name = "PERIOD=COMMAND")]
    pub fault_every: Vec<String>,
}

/// A console command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cmd {
    Drop,
    Close(u16),
    Stall(bool),
    Refuse(u32),
    Gap(u64),
    Malformed(u32),
    Unknown(u32),
    Oversized(usize),
    Terminal(u32),
    Freeze(String),
    Pause,
    Resume,
    Rate(u32),
    Stats,
    Help,
    Rest429(u32, Option<Duration>),
    Rest5xx(u32, u16),
    RestSlow(Duration),
}

const HELP: &str = "commands: drop | close <code> | stall on|off | refuse <n> | gap <n> | malformed <n> | \
                    unknown <n> | oversized <bytes> | terminal <10|25> | freeze <market> | pause | resume | rate <n> | stats | \
                    rest-429 <n> [<retry-after>] | rest-5xx <n> [<status>] | rest-slow <duration>";

fn parse_cmd(line: &str) -> Result<Cmd, String> {
    let mut words = line.split_whitespace();
    let name = words.next().ok_or("empty command")?;
    let arg = words.next();
    // Only the REST faults take a second, optional argument.
    let second = if name.starts_with("rest-") { words.next() } else { None };
    if words.next().is_some() {
        return Err(format!("too many arguments for `{name}`"));
    }
    fn num<T: std::str::FromStr>(name: &str, arg: Option<&str>) -> Result<T, String> {
        let a = arg.ok_or_else(|| format!("`{name}` needs a number"))?;
        a.parse().map_err(|_| format!("`{name}`: not a valid number: {a}"))
    }
    let no_arg = |c: Cmd| {
        if arg.is_some() { Err(format!("`{name}` takes no argument")) } else { Ok(c) }
    };
    match name {
        "drop" => no_arg(Cmd::Drop),
        "close" => {
            let code: u16 = num(name, arg)?;
            if !(1000..=4999).contains(&code) || matches!(code, 1004..=1006 | 1015) {
                return Err(format!("`close`: {code} cannot be sent in a close frame"));
            }
            Ok(Cmd::Close(code))
        }
        "stall" => match arg {
            Some("on") => Ok(Cmd::Stall(true)),
            Some("off") => Ok(Cmd::Stall(false)),
            _ => Err("`stall` needs on or off".into()),
        },
        "refuse" => num(name, arg).map(Cmd::Refuse),
        "gap" => num(name, arg).map(Cmd::Gap),
        "malformed" => num(name, arg).map(Cmd::Malformed),
        "unknown" => num(name, arg).map(Cmd::Unknown),
        "oversized" => num(name, arg).map(Cmd::Oversized),
        "terminal" => match num(name, arg)? {
            c @ (10 | 25) => Ok(Cmd::Terminal(c)),
            c => Err(format!("`terminal`: code must be 10 or 25, not {c}")),
        },
        "freeze" => match arg {
            Some(market) => Ok(Cmd::Freeze(market.to_owned())),
            None => Err("`freeze` needs a market ticker".into()),
        },
        "pause" => no_arg(Cmd::Pause),
        "resume" => no_arg(Cmd::Resume),
        "rate" => match num(name, arg)? {
            0 => Err("`rate` must be at least 1".into()),
            r => Ok(Cmd::Rate(r)),
        },
        "stats" => no_arg(Cmd::Stats),
        "help" => no_arg(Cmd::Help),
        "rest-429" => {
            let after = second.map(parse_duration).transpose().map_err(|e| format!("`rest-429`: {e}"))?;
            Ok(Cmd::Rest429(num(name, arg)?, after))
        }
        "rest-5xx" => {
            let status = match second {
                None => 503,
                Some(s) => match s.parse::<u16>() {
                    Ok(code @ 500..=599) => code,
                    _ => return Err(format!("`rest-5xx`: the status must be 500 to 599, not {s}")),
                },
            };
            Ok(Cmd::Rest5xx(num(name, arg)?, status))
        }
        "rest-slow" => {
            let d = arg.ok_or("`rest-slow` needs a duration (`2s`, `0` for none)")?;
            parse_duration(d).map(Cmd::RestSlow).map_err(|e| format!("`rest-slow`: {e}"))
        }
        other => Err(format!("unknown command `{other}`")),
    }
}

/// Parses and applies one console line and returns its acknowledgement: one line, `ok: …`
/// (or `stats: …`, the help text) when applied, `error: …` when the line is not a command.
/// `tickd sim` and `tickd demo` both run their consoles through this.
pub fn console_command(sim: &Simulator, line: &str) -> String {
    match parse_cmd(line) {
        Ok(cmd) => apply(sim, &cmd),
        Err(e) => format!("error: {e}"),
    }
}

/// Applies a command and returns its acknowledgement line.
fn apply(sim: &Simulator, cmd: &Cmd) -> String {
    match *cmd {
        Cmd::Drop => {
            sim.drop_all();
            "ok: dropped every connection".into()
        }
        Cmd::Close(code) => {
            sim.close_all(code);
            format!("ok: closing every connection with {code}")
        }
        Cmd::Stall(on) => {
            sim.set_stall(on);
            format!("ok: stall {}", if on { "on" } else { "off" })
        }
        Cmd::Refuse(n) => {
            sim.refuse_handshakes(n);
            format!("ok: refusing the next {n} handshakes")
        }
        Cmd::Gap(n) => {
            sim.skip_seq(n);
            format!("ok: skipping {n} seq numbers on every sequenced sid")
        }
        Cmd::Malformed(n) => {
            sim.send_malformed(n);
            format!("ok: sending {n} malformed frames")
        }
        Cmd::Unknown(n) => {
            sim.send_unknown(n);
            format!("ok: sending {n} unknown frames")
        }
        Cmd::Oversized(b) => {
            sim.send_oversized(b);
            format!("ok: sending a {b}-byte frame")
        }
        Cmd::Terminal(c) => {
            sim.send_terminal_error(c);
            format!("ok: terminal error {c} on every orderbook sid")
        }
        Cmd::Freeze(ref market) => {
            sim.freeze(market);
            format!(
                "ok: {market} frozen on every connection until its snapshot is asked for or it is resubscribed"
            )
        }
        Cmd::Pause => {
            sim.pause();
            "ok: paused".into()
        }
        Cmd::Resume => {
            sim.resume();
            "ok: resumed".into()
        }
        Cmd::Rate(r) => {
            sim.set_rate(r);
            format!("ok: rate {r}/s")
        }
        Cmd::Stats => format!("stats: {:?}", sim.stats()),
        Cmd::Help => HELP.into(),
        Cmd::Rest429(n, after) => {
            sim.rest_throttle(n, after);
            match after {
                Some(a) => format!(
                    "ok: answering the next {n} REST requests 429 with Retry-After {}s",
                    a.as_secs().max(1)
                ),
                None => format!("ok: answering the next {n} REST requests 429"),
            }
        }
        Cmd::Rest5xx(n, status) => {
            sim.rest_fail(n, status);
            format!("ok: answering the next {n} REST requests {status}")
        }
        Cmd::RestSlow(d) => {
            sim.rest_delay(d);
            format!("ok: REST answers wait {}ms", d.as_millis())
        }
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("unknown duration unit in {s:?} (use ms, s, m or h)")),
    }
}

/// Parses `DELAY=COMMAND`.
fn parse_scheduled(s: &str) -> anyhow::Result<(Duration, Cmd)> {
    let (when, cmd) = s.split_once('=').with_context(|| format!("expected DELAY=COMMAND, got {s:?}"))?;
    let when = parse_duration(when).map_err(anyhow::Error::msg)?;
    let cmd = parse_cmd(cmd).map_err(anyhow::Error::msg)?;
    Ok((when, cmd))
}

fn load_auth(args: &SimArgs) -> anyhow::Result<Option<SimAuth>> {
    use rsa::pkcs1::DecodeRsaPublicKey as _;
    use rsa::pkcs8::DecodePublicKey as _;
    let Some(path) = &args.public_key else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let key = rsa::RsaPublicKey::from_public_key_pem(&pem)
        .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(&pem))
        .with_context(|| format!("{} is not a PKCS#8 or PKCS#1 RSA public key", path.display()))?;
    let key_id = args.key_id.clone().context("--key-id is required with --public-key")?;
    Ok(Some(SimAuth { key_id, public_key: key, max_skew: args.max_skew }))
}

/// Console lines waiting to be applied. The reader thread blocks when this is full.
const CONSOLE_CAPACITY: usize = 16;

/// Lines of stdin, read on a plain thread: a blocking stdin read cannot be cancelled, and on a
/// tokio blocking thread it would hold up runtime shutdown until the next line arrives. The
/// channel closes at the end of stdin.
pub fn console_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(CONSOLE_CAPACITY);
    let spawned = std::thread::Builder::new().name("sim-console".into()).spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    if let Err(e) = spawned {
        // Without a console the simulator still serves; only stdin commands are lost.
        println!("error: no console: {e}");
    }
    rx
}

/// Runs `tickd sim` until `shutdown` is cancelled: prints the URL, serves, obeys stdin.
pub async fn run_cli(args: SimArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut schedule = Vec::new();
    for s in &args.fault_at {
        let (d, c) = parse_scheduled(s)?;
        schedule.push((d, c, false));
    }
    for s in &args.fault_every {
        let (d, c) = parse_scheduled(s)?;
        anyhow::ensure!(!d.is_zero(), "--fault-every period must be positive: {s:?}");
        schedule.push((d, c, true));
    }
    let cfg = SimConfig {
        seed: args.seed,
        markets: market_names(args.markets),
        auto_create_markets: !args.no_auto_create,
        rate: args.rate.max(1),
        heartbeat: args.heartbeat,
        auth: load_auth(&args)?,
        trade_seq: !args.no_trade_seq,
        sending_ts: !args.no_sending_ts,
        extra_fields: args.extra_fields,
        lifecycle_every: args.lifecycle_every,
        missed_pongs_close: args.missed_pongs_close,
        new_market_every: args.new_market_every,
    };
    let sim = Simulator::start(cfg);
    let addr = sim.bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    println!("{}", sim.url(addr));
    tracing::info!(rest = %sim.rest_url(addr), "REST market data served on the same port.");
    tracing::info!(%addr, markets = args.markets, rate = args.rate, "Simulator listening.");

    for (delay, cmd, repeat) in schedule {
        let sim = sim.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    // The simulator is stopping: no more faults.
                    _ = stop.cancelled() => break,
                    // The fault is due: apply it and print the outcome.
                    _ = tokio::time::sleep(delay) => println!("{}", apply(&sim, &cmd)),
                }
                if !repeat {
                    break;
                }
            }
        });
    }

    let mut lines = console_lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            // Shutdown requested by the binary (signal).
            _ = shutdown.cancelled() => break,
            // Console input; after EOF (channel closed) only shutdown ends the loop.
            line = lines.recv(), if stdin_open => match line {
                Some(line) if line.trim().is_empty() => {}
                Some(line) => println!("{}", console_command(&sim, &line)),
                None => stdin_open = false,
            },
        }
    }
    sim.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_commands_parse_or_explain() {
        assert_eq!(parse_cmd("close 1001"), Ok(Cmd::Close(1001)));
        assert_eq!(parse_cmd("stall on"), Ok(Cmd::Stall(true)));
        assert_eq!(parse_cmd(" gap 3 "), Ok(Cmd::Gap(3)));
        assert_eq!(parse_cmd("oversized 2000000"), Ok(Cmd::Oversized(2_000_000)));
        assert_eq!(parse_cmd("terminal 10"), Ok(Cmd::Terminal(10)));
        assert_eq!(parse_cmd("freeze SIM-MKT-002"), Ok(Cmd::Freeze("SIM-MKT-002".into())));
        assert_eq!(parse_cmd("rest-429 5 2s"), Ok(Cmd::Rest429(5, Some(Duration::from_secs(2)))));
        assert_eq!(parse_cmd("rest-429 5"), Ok(Cmd::Rest429(5, None)));
        assert_eq!(parse_cmd("rest-5xx 3"), Ok(Cmd::Rest5xx(3, 503)));
        assert_eq!(parse_cmd("rest-5xx 3 502"), Ok(Cmd::Rest5xx(3, 502)));
        assert_eq!(parse_cmd("rest-slow 1500ms"), Ok(Cmd::RestSlow(Duration::from_millis(1500))));
        for bad in [
            "",
            "close",
            "close abc",
            "close 1006",
            "stall maybe",
            "terminal 7",
            "freeze",
            "freeze A B",
            "fly",
            "drop 3",
            "rest-5xx 3 404",
            "rest-429",
            "rest-slow",
            "rest-429 1 2s 3",
            "gap 1 2",
        ] {
            assert!(parse_cmd(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_and_schedules_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2x").is_err());
        let (d, c) = parse_scheduled("30s=close 1001").unwrap_or((Duration::ZERO, Cmd::Help));
        assert_eq!((d, c), (Duration::from_secs(30), Cmd::Close(1001)));
    }
}
