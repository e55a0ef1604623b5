//! `tickd demo`: the whole system on one machine with one command and nothing to set up.
//!
//! Starts the simulator on a free port, a private PostgreSQL from the installed server
//! binaries (kept under a data directory, so a second run finds the first run's data),
//! applies the migrations, and runs the daemon against both until shutdown, dashboard included.
//! Prints the dashboard's address (opening it in a browser on a desktop), how to connect with
//! `psql` and three queries to try. Stdin is the simulator's fault console, as in `tickd sim`
//! (`drop`, `refuse <n>`, `stall on|off`, `gap <n>`, `pause`, `resume`, `rate <n>`...), so the
//! dashboard can be watched through a failure. Everything it started is stopped on the way
//! out, in order: feeds, writer (last batch committed), simulator, PostgreSQL.
//!
//! The dashboard token is made once and kept in `<data_dir>/dashboard-token` (mode 0600): a
//! second run uses the same one, so a page left open reconnects after a restart.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::config::{DatabaseUrl, FeedSettings, Settings, StoreSettings};
use crate::dev::localpg::{LocalPg, LocalPgOptions};
use crate::dev::sim::{SimConfig, Simulator, console_command, console_lines, market_names};

/// `tickd demo` options.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where the demo keeps its PostgreSQL cluster and state [default:
    /// $XDG_DATA_HOME/tickd/demo, or /var/lib/tickd/demo when run as root]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Simulated markets to follow.
    #[arg(long, default_value_t = 20)]
    pub markets: usize,
    /// Simulated exchange events per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// PostgreSQL port on 127.0.0.1 [default: a free port]
    #[arg(long)]
    pub pg_port: Option<u16>,
    /// Address of the dashboard (page and stream); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve a `--listen` address that other hosts reach over plain HTTP: the dashboard token
    /// and every frame cross the network readable by anyone on the path. Without it, only a
    /// loopback `--listen` is accepted.
    #[arg(long)]
    pub allow_plaintext: bool,
    /// Do not open the dashboard in a browser (it opens only on a desktop session anyway).
    #[arg(long)]
    pub no_open: bool,
}

/// The database the demo records into.
const DATABASE: &str = "tickd";

/// The dashboard token's file, under the data directory.
const TOKEN_FILE: &str = "dashboard-token";

/// Runs the demo until `shutdown` is cancelled.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = match args.data_dir.clone() {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    println!("Starting PostgreSQL (data in {}) ...", data_dir.join("pg").display());
    let pg = LocalPg::start(LocalPgOptions { data_dir: Some(data_dir.join("pg")), port: args.pg_port })
        .await
        .context("starting the demo's PostgreSQL")?;
    let result = run_with(&args, &data_dir, &pg, shutdown).await;
    info!("Stopping PostgreSQL.");
    let stopped = pg.stop().await.context("stopping the demo's PostgreSQL");
    result.and(stopped)
}

async fn run_with(
    args: &DemoArgs,
    data_dir: &std::path::Path,
    pg: &LocalPg,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let url = pg.create_database(DATABASE).await.context("creating the demo database")?;
    let store = StoreSettings { url: DatabaseUrl::new(url.clone()), ..StoreSettings::default() };
    crate::store::pg::migrate_now(&store).await.context("migrating the demo database")?;

    let markets = market_names(args.markets.max(1));
    let sim = Simulator::start(SimConfig {
        seed: rand::random(),
        markets: markets.clone(),
        rate: args.rate.max(1),
        ..SimConfig::default()
    });
    let addr = sim.bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.context("starting the simulator")?;
    let mut feed = FeedSettings::new("sim", sim.url(addr));
    feed.markets = markets;
    let token_path = data_dir.join(TOKEN_FILE);
    let token = dashboard_token(&token_path)?;
    let mut settings = Settings {
        state_dir: data_dir.join("state"),
        summary_interval: Duration::from_secs(30),
        store: Some(store),
        feeds: vec![feed],
        ..Settings::default()
    };
    settings.dashboard.listen = args.listen;
    settings.dashboard.allow_plaintext = args.allow_plaintext;
    settings.dashboard.token_file = Some(token_path);
    settings.validate().context("the demo's own settings")?;

    // The demo has no config file, so there is nothing to reload, and it is not a systemd
    // service: nothing to notify.
    let built = App::build(settings).await;
    let console = tokio::spawn(console(sim.clone(), shutdown.clone()));
    let result = match built {
        Ok(app) => {
            // The banner names the real port (`--listen` may say 0), and the page answers as
            // soon as anyone reads it.
            if let Some(dashboard) = app.addrs().dashboard {
                let page = dashboard_url(dashboard, &token);
                print_banner(&sim.url(addr), args, &url, &page);
                if !args.no_open {
                    open_browser(&page);
                }
            }
            app.run(shutdown).await
        }
        Err(e) => Err(e),
    };
    console.abort();
    sim.shutdown();
    result
}

/// Where a browser on this machine reaches a server listening on `addr`: the wildcard
/// addresses are reached through loopback.
fn browsable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// The page's address with the token in the fragment, which the browser never sends to the
/// server (the page reads it and offers it when it opens the stream).
fn dashboard_url(addr: SocketAddr, token: &str) -> String {
    format!("http://{}/#token={token}", browsable(addr))
}

/// The dashboard token kept in `path`, or a new one (32 random bytes, hex) written there with
/// mode 0600 when the file is missing or holds no usable token.
fn dashboard_token(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.lines().next().unwrap_or("").trim();
            if token.len() >= 16 && token.bytes().all(|b| b.is_ascii_graphic()) {
                // Tighten a file someone loosened: it is a credential.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("setting the mode of {}", path.display()))?;
                return Ok(token.to_owned());
            }
            warn!(path = %path.display(), "The dashboard token file holds no usable token; making a new one.");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
    let token: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
    // Written whole under a temporary name (created 0600) and renamed: a crash never leaves a
    // half-written token behind.
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing in {}", dir.display()))?;
    file.as_file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(file, "{token}").and_then(|()| file.as_file().sync_all())?;
    file.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

/// Opens `url` with `xdg-open` on a desktop session (`$DISPLAY` or `$WAYLAND_DISPLAY`); a
/// failure only means the user opens it by hand from the banner.
fn open_browser(url: &str) {
    let desktop =
        ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    if !desktop {
        return;
    }
    let spawned = tokio::process::Command::new("xdg-open")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    // The child is not awaited: tokio reaps it in the background once it exits.
    if let Err(e) = spawned {
        debug!(error = %e, "xdg-open failed; the dashboard was not opened.");
    }
}

/// The fault console: each line of stdin is a `tickd sim` console command for the demo's
/// simulator, acknowledged with one line on stdout. The end of stdin ends only the console.
async fn console(sim: Simulator, shutdown: CancellationToken) {
    let mut lines = console_lines();
    loop {
        tokio::select! {
            // The demo is stopping.
            () = shutdown.cancelled() => return,
            // A console line (cancel-safe: mpsc recv); `None` at the end of stdin.
            line = lines.recv() => match line {
                Some(line) if line.trim().is_empty() => {}
                Some(line) => println!("{}", console_command(&sim, &line)),
                None => return,
            },
        }
    }
}

fn print_banner(sim_url: &str, args: &DemoArgs, db_url: &str, page: &str) {
    println!(
        "\n\
         tickd demo is running.\n\
         \n  simulator   {sim_url}  ({} markets, {} events/s)\
         \n  PostgreSQL  {db_url}\
         \n\
         \nDashboard: {page}\
         \nConnect:  psql '{db_url}'\
         \n\
         \nTry:\
         \n  SELECT market, tickd_dollars(bid) AS bid, tickd_dollars(ask) AS ask, recv_ts FROM latest_quotes;\
         \n  SELECT bucket_start, open, high, low, close, volume, trades\
         \n    FROM ohlcv('SIM-MKT-001', '1 minute', now() - interval '1 hour', now());\
         \n  SELECT feed, conn, market, kind, started, ended FROM gaps(now() - interval '1 day', now());\
         \n\
         \nFaults, one per line here: drop | refuse <n> | stall on|off | gap <n> | pause | resume | rate <n> | help\
         \nCtrl-C stops everything (the data stays for the next run).\n",
        args.markets.max(1),
        args.rate.max(1),
    );
}

/// `$XDG_DATA_HOME/tickd/demo` (or `~/.local/share/tickd/demo`); as root, whose home the
/// `postgres` user running the server cannot enter, `/var/lib/tickd/demo`.
fn default_data_dir() -> anyhow::Result<PathBuf> {
    if is_root() {
        return Ok(PathBuf::from("/var/lib/tickd/demo"));
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("tickd/demo"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_DATA_HOME nor HOME is set; pass --data-dir")?;
    Ok(PathBuf::from(home).join(".local/share/tickd/demo"))
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective uid.
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_dashboard_token_is_made_once_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(TOKEN_FILE);

        let first = dashboard_token(&path).expect("a new token");
        let again = dashboard_token(&path).expect("the kept token");

        assert_eq!(first.len(), 64);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
        assert_eq!(again, first);
        let mode = std::fs::metadata(&path).expect("token file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_unusable_token_file_is_replaced_and_a_loose_one_tightened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(TOKEN_FILE);
        std::fs::write(&path, "short\n").expect("write");

        let token = dashboard_token(&path).expect("a new token");
        assert_ne!(token, "short");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(dashboard_token(&path).expect("the kept token"), token);
        let mode = std::fs::metadata(&path).expect("token file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_dashboard_url_reaches_wildcard_listeners_through_loopback() {
        let url = |addr: &str| dashboard_url(addr.parse().expect("addr"), "t0k");
        assert_eq!(url("127.0.0.1:8080"), "http://127.0.0.1:8080/#token=t0k");
        assert_eq!(url("0.0.0.0:9000"), "http://127.0.0.1:9000/#token=t0k");
        assert_eq!(url("[::]:9000"), "http://[::1]:9000/#token=t0k");
    }
}
