//! The `tickd` command line: parses arguments, loads and validates settings, sets up logging,
//! signals and the tokio runtime, then hands over to the library (`App`, `sim::run_cli`).
//!
//! Exit statuses: 0 after a clean stop, 1 on a runtime error, 2 on a configuration error,
//! 130 when a second SIGTERM/SIGINT cuts the graceful stop short.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use tickd::config::{ConfigError, LogSettings};
use tickd::ops::reload::{self, ReloadContext, load_settings};
use tickd::ops::systemd::Notifier;
use tickd::telemetry;

use tickd::app::App;
use tickd::dev::sim;

/// Exit status after a runtime error.
const EXIT_RUNTIME_ERROR: u8 = 1;
/// Exit status when the configuration cannot be loaded or is invalid.
const EXIT_CONFIG_ERROR: u8 = 2;
/// Exit status when a second stop signal ends the process at once (128 + SIGINT, by custom).
const EXIT_SECOND_SIGNAL: i32 = 130;

/// tickd: Kalshi market-data WebSocket feeds, normalized into exact ticks.
#[derive(Parser)]
#[command(name = "tickd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until stopped.
    ///
    /// Connects every configured feed and keeps it streaming. SIGTERM/SIGINT stop it
    /// gracefully (a second one at once); SIGHUP reloads the configuration.
    Run(ConfigArgs),
    /// Record the NATS stream into PostgreSQL, from any host.
    ///
    /// Takes the same config file as `run`, with `[nats]` and `[store]`; feeds are not needed.
    /// A durable consumer shared by every recorder: a message is acknowledged only once it is
    /// committed. SIGTERM/SIGINT stop it after the batch under way.
    Record(ConfigArgs),
    /// Run everything on this machine: simulator, a private PostgreSQL, the daemon and its
    /// dashboard.
    ///
    /// Nothing to set up: the PostgreSQL server binaries must be installed. Prints the
    /// dashboard's address, the psql connection string and example queries; stdin takes the
    /// simulator's fault commands (`drop`, `refuse <n>`, `stall on|off`...). Ctrl-C stops
    /// everything and keeps the data for the next run.
    Demo(tickd::dev::demo::DemoArgs),
    /// Run the Kalshi exchange simulator alone, for tests and demos.
    Sim(sim::SimArgs),
    /// Apply the database schema migrations and check the schema, then exit.
    ///
    /// Uses the `[store]` settings. Exits 0 when the schema is up to date, 1 with the
    /// reason otherwise (unreachable database, a schema changed by hand).
    Migrate(ConfigArgs),
    /// Validate the configuration and print it, secrets redacted.
    ///
    /// Prints the effective configuration (defaults, file and environment) as TOML and exits
    /// 0, or names each offending key on stderr and exits 2.
    CheckConfig(ConfigArgs),
}

#[derive(Args)]
struct ConfigArgs {
    /// TOML config file [default: /etc/tickd/tickd.toml, if present]
    ///
    /// Must exist when given. `TICKD_…` environment variables override the file, with `__`
    /// between nested keys (TICKD_LOG__LEVEL=debug).
    #[arg(long, short, value_name = "PATH")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(args) => check_config(args.config.as_deref()),
        Command::Run(args) => run(args.config),
        Command::Migrate(args) => migrate(args.config.as_deref()),
        Command::Record(args) => record(args.config.as_deref()),
        Command::Sim(args) => simulate(args),
        Command::Demo(args) => demo(args),
    }
}

/// `tickd check-config`: the effective config on stdout, or the problems on stderr.
fn check_config(path: Option<&Path>) -> ExitCode {
    match load_settings(path) {
        Ok(settings) => {
            print!("{}", settings.redacted_toml());
            ExitCode::SUCCESS
        }
        Err(e) => config_error(&e),
    }
}

/// `tickd run`: the daemon.
fn run(path: Option<PathBuf>) -> ExitCode {
    let settings = match load_settings(path.as_deref()) {
        Ok(settings) => settings,
        Err(e) => return config_error(&e),
    };
    telemetry::init(&settings.log);
    install_crypto_provider();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => return runtime_error(&e),
    };
    // Under systemd (`Type=notify`): READY, STATUS, WATCHDOG, RELOADING and STOPPING.
    let notifier = Notifier::from_env();
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let reload_requests = Arc::new(Notify::new());
        let signals = match handle_signals(shutdown.clone(), Some(reload_requests.clone())) {
            Ok(signals) => signals,
            Err(e) => return runtime_error(&e),
        };
        info!(feeds = settings.feeds.len(), "Starting.");
        let app = match App::build(settings.clone()).await {
            Ok(app) => app.with_notifier(notifier.clone()),
            Err(e) => {
                signals.close();
                return runtime_error(&e);
            }
        };
        tokio::spawn(reload::reload_configs(ReloadContext {
            path,
            started: settings,
            requests: reload_requests,
            reloads: app.reloads(),
            certificates: app.certificates(),
            notifier,
            shutdown: shutdown.clone(),
        }));
        let result = app.run(shutdown.clone()).await;
        // Stops `watch_signals` and the reload task (both end with the token or the stream).
        shutdown.cancel();
        signals.close();
        match result {
            Ok(()) => {
                info!("Stopped.");
                ExitCode::SUCCESS
            }
            Err(e) => runtime_error(&e),
        }
    })
}

/// `tickd migrate`: the schema, applied and checked.
fn migrate(path: Option<&Path>) -> ExitCode {
    let settings = match load_settings(path) {
        Ok(settings) => settings,
        Err(e) => return config_error(&e),
    };
    telemetry::init(&settings.log);
    install_crypto_provider();
    let Some(store) = settings.store else {
        eprintln!("error: no [store] table in the configuration: nothing to migrate");
        return ExitCode::from(EXIT_CONFIG_ERROR);
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => return runtime_error(&e),
    };
    runtime.block_on(async move {
        match tickd::store::pg::migrate_now(&store).await {
            Ok(applied) => {
                info!(url = %store.url.redacted(), migrations = applied, "Schema up to date.");
                ExitCode::SUCCESS
            }
            Err(e) => runtime_error(&anyhow::Error::new(e).context("tickd migrate")),
        }
    })
}

/// `tickd record`: the NATS stream into PostgreSQL until SIGINT/SIGTERM.
fn record(path: Option<&Path>) -> ExitCode {
    let settings = match tickd::config::Settings::load(path).and_then(|s| s.validate_record().map(|()| s)) {
        Ok(settings) => settings,
        Err(e) => return config_error(&e),
    };
    telemetry::init(&settings.log);
    install_crypto_provider();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => return runtime_error(&e),
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = match handle_signals(shutdown.clone(), None) {
            Ok(signals) => signals,
            Err(e) => return runtime_error(&e),
        };
        let metrics = Arc::new(tickd::nats::record::RecordMetrics::default());
        let result = tickd::nats::record::run(&settings, metrics, shutdown.clone()).await;
        shutdown.cancel();
        signals.close();
        match result {
            Ok(()) => {
                info!("Stopped.");
                ExitCode::SUCCESS
            }
            Err(e) => runtime_error(&e.context("tickd record")),
        }
    })
}

/// `tickd demo`: simulator, private PostgreSQL and daemon until SIGINT/SIGTERM.
fn demo(args: tickd::dev::demo::DemoArgs) -> ExitCode {
    until_stopped(|shutdown| tickd::dev::demo::run(args, shutdown))
}

/// `tickd sim`: the simulator; stops on SIGTERM/SIGINT like the daemon, ignores SIGHUP.
fn simulate(args: sim::SimArgs) -> ExitCode {
    until_stopped(|shutdown| sim::run_cli(args, shutdown))
}

/// Runs `body` with default logging on a fresh runtime until it returns; the first
/// SIGTERM/SIGINT cancels its token, a second exits at once, SIGHUP is ignored.
fn until_stopped<F, Fut>(body: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    telemetry::init(&LogSettings::default());
    install_crypto_provider();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => return runtime_error(&e),
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = match handle_signals(shutdown.clone(), None) {
            Ok(signals) => signals,
            Err(e) => return runtime_error(&e),
        };
        let result = body(shutdown.clone()).await;
        shutdown.cancel();
        signals.close();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => runtime_error(&e),
        }
    })
}

/// Prints each problem as an `error:` line on stderr; logging may not be set up yet.
fn config_error(e: &ConfigError) -> ExitCode {
    for line in e.to_string().lines() {
        eprintln!("error: {line}");
    }
    ExitCode::from(EXIT_CONFIG_ERROR)
}

fn runtime_error(e: &anyhow::Error) -> ExitCode {
    error!(error = format!("{e:#}"), "Stopped on an error.");
    ExitCode::from(EXIT_RUNTIME_ERROR)
}

/// rustls 0.23 needs a process-wide crypto provider, and the first `wss://` connect panics
/// without one. An error only means one is installed already, which is just as good.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tickd")
        .build()
        .map_err(|e| anyhow::Error::new(e).context("building the tokio runtime"))
}

/// Installs the handlers for SIGTERM, SIGINT and SIGHUP and spawns [`watch_signals`]; closing
/// the returned handle ends it. Must run inside the runtime.
fn handle_signals(
    shutdown: CancellationToken,
    reload: Option<Arc<Notify>>,
) -> anyhow::Result<signal_hook_tokio::Handle> {
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| anyhow::Error::new(e).context("installing signal handlers"))?;
    let handle = signals.handle();
    tokio::spawn(watch_signals(signals, shutdown, reload));
    Ok(handle)
}

/// Turns signals into actions: the first SIGTERM/SIGINT cancels `shutdown`, a second exits
/// at once, SIGHUP asks `reload_configs` for a reload (or is ignored without one). Ends when
/// the signal stream is closed.
async fn watch_signals(mut signals: Signals, shutdown: CancellationToken, reload: Option<Arc<Notify>>) {
    // Counts our own stop requests, not `shutdown.is_cancelled()`: the app may cancel the
    // token itself, and a user's first signal then still deserves the graceful path.
    let mut stop_requested = false;
    while let Some(signal) = signals.next().await {
        let name = signal_name(signal);
        match signal {
            SIGHUP => match &reload {
                Some(reload) => {
                    info!(signal = name, "Reloading the configuration.");
                    reload.notify_one();
                }
                None => info!(signal = name, "Nothing to reload; ignored."),
            },
            _ if stop_requested => {
                warn!(signal = name, "Second stop signal: exiting now.");
                std::process::exit(EXIT_SECOND_SIGNAL);
            }
            _ => {
                stop_requested = true;
                info!(signal = name, "Stopping gracefully; send it again to exit now.");
                shutdown.cancel();
            }
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGHUP => "SIGHUP",
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "unexpected signal",
    }
}
