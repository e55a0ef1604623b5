//! `tickd demo`: the whole system on one machine with one command and nothing to set up.
//!
//! Starts the simulator on a free port, a private PostgreSQL from the installed server
//! binaries (kept under a data directory, so a second run finds the first run's data),
//! applies the migrations, and runs the daemon against both until shutdown. Prints how to
//! connect with `psql` and three queries to try. Everything it started is stopped on the way
//! out, in order: feeds, writer (last batch committed), simulator, PostgreSQL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::app::{self, AppControl};
use crate::config::{DatabaseUrl, FeedSettings, Settings, StoreSettings};
use crate::localpg::{LocalPg, LocalPgOptions};
use crate::sim::{SimConfig, Simulator, market_names};

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
}

/// The database the demo records into.
const DATABASE: &str = "tickd";

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
    let settings = Settings {
        state_dir: data_dir.join("state"),
        summary_interval: Duration::from_secs(30),
        store: Some(store),
        feeds: vec![feed],
        ..Settings::default()
    };
    settings.validate().context("the demo's own settings")?;

    print_banner(&sim.url(addr), args, &url);
    // The demo has no config file, so there is nothing to reload; keep the sender so the
    // app does not see the reload channel close.
    let (_reload_tx, reload_rx) = mpsc::channel(1);
    let result = app::run(settings, AppControl { shutdown, reload: reload_rx, dashboard_bound: None }).await;
    sim.shutdown();
    result
}

fn print_banner(sim_url: &str, args: &DemoArgs, db_url: &str) {
    println!(
        "\n\
         tickd demo is running.\n\
         \n  simulator   {sim_url}  ({} markets, {} events/s)\
         \n  PostgreSQL  {db_url}\
         \n\
         \nConnect:  psql '{db_url}'\
         \n\
         \nTry:\
         \n  SELECT market, tickd_dollars(bid) AS bid, tickd_dollars(ask) AS ask, recv_ts FROM latest_quotes;\
         \n  SELECT * FROM ohlcv('SIM-MKT-001', '1 minute', now() - interval '1 hour', now());\
         \n  SELECT * FROM gaps(now() - interval '1 day', now());\
         \n\
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
