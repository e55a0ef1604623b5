//! The real `tickd` binary against config files: `check-config` exit codes and messages, and
//! `tickd run`'s signal handling (reload, graceful stop).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

/// A feed against a local simulator URL; unsigned, so it needs no key.
const SIM_FEED: &str = r#"
[[feeds]]
name = "sim-feed"
url = "ws://127.0.0.1:9100/trade-api/ws/v2"
markets = ["SIM-MKT-001"]
"#;

/// `tickd` with an environment free of anything that changes how settings load.
fn tickd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tickd"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("TICKD_") || name == "CREDENTIALS_DIRECTORY" || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

fn check_config(file: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = tickd();
    command.arg("check-config").arg("--config").arg(file).envs(env.iter().copied());
    command.output().expect("tickd runs")
}

struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn checked(output: Output) -> Checked {
    Checked {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Writes `text` as `tickd.toml` in a fresh directory (kept alive by the returned guard).
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tickd.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

/// A signed feed whose key file is `key_file`.
fn signed_feed(key_file: &Path) -> String {
    format!(
        "[[feeds]]\nname = \"signed\"\nurl = \"wss://external-api-ws.demo.kalshi.co/trade-api/ws/v2\"\n\
         markets = [\"KXBTCD-25DEC3117-T99999.99\"]\nkey_id = \"a952bcbe-ec3b-4b5b-b8f9-11dae589608c\"\n\
         key_file = \"{}\"\n",
        key_file.display()
    )
}

/// A valid 2048-bit RSA key in PKCS#8 PEM. Generating one takes seconds in a debug build, so
/// it is made once per target directory and shared by every test process (nextest runs each
/// test in its own process); written under a temporary name and renamed, so that concurrent
/// first runs never see half a file.
fn test_key_pem() -> &'static Path {
    static KEY: OnceLock<PathBuf> = OnceLock::new();
    KEY.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tickd-cli-test-key.pem");
        if !path.exists() {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("keygen");
            let pem = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).expect("pem");
            let partial = path.with_extension(format!("{}.partial", std::process::id()));
            std::fs::write(&partial, pem.as_bytes()).expect("write key");
            std::fs::rename(&partial, &path).expect("rename key");
        }
        path
    })
}

#[test]
fn a_valid_file_passes_and_prints_the_feed() {
    let (_dir, file) = config_file(SIM_FEED);

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains(r#"name = "sim-feed""#), "{}", out.stdout);
    assert!(out.stdout.contains("ws://127.0.0.1:9100/trade-api/ws/v2"), "{}", out.stdout);
    assert_eq!(out.stderr, "");
}

#[test]
fn the_printed_config_is_itself_a_valid_config() {
    let (_dir, file) = config_file(SIM_FEED);
    let first = checked(check_config(&file, &[("TICKD_SUMMARY_INTERVAL", "7s")]));
    let (_dir2, printed) = config_file(&first.stdout);

    let second = checked(check_config(&printed, &[]));

    assert_eq!(second.code, Some(0), "{}", second.stderr);
    assert_eq!(second.stdout, first.stdout);
}

#[test]
fn the_shipped_example_and_sim_configs_are_valid() {
    for name in ["tickd.example.toml", "sim.toml"] {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name);

        let out = checked(check_config(&file, &[]));

        assert_eq!(out.code, Some(0), "{name}: {}", out.stderr);
    }
}

#[test]
fn the_example_documents_every_key() {
    // Every optional key set, so that the effective config prints every key there is.
    let alert = Path::new("/bin/true");
    let store = format!(
        "\n[store]\nurl = \"postgres://tickd@db/tickd\"\npassword_file = \"{}\"\nretention_days = 30\n",
        test_key_pem().display()
    );
    let alerts = "\n[alerts]\nwebhook_url = \"https://hooks.example.com/T0?token=abc\"\n";
    let text = format!(
        "alert_command = \"{}\"\n{}stale_after = \"2m\"\n{store}{alerts}",
        alert.display(),
        signed_feed(test_key_pem())
    );
    let (_dir, file) = config_file(&text);
    let out = checked(check_config(&file, &[]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tickd.example.toml"))
            .expect("example");

    let keys: Vec<&str> =
        out.stdout.lines().filter_map(|line| line.split_once(" = ")).map(|(key, _)| key).collect();

    assert!(keys.len() > 20, "{}", out.stdout);
    for key in keys {
        let documented = example
            .lines()
            .any(|l| l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("# {key} = ")));
        assert!(documented, "config/tickd.example.toml does not show `{key}`");
    }
}

#[test]
fn an_unknown_top_level_key_is_named_with_its_file() {
    let (_dir, file) = config_file(&format!("bogus_key = 1\n{SIM_FEED}"));

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(2));
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    assert!(out.stderr.contains("unknown key `bogus_key`"), "{}", out.stderr);
    assert!(out.stderr.contains(&file.display().to_string()), "{}", out.stderr);
    assert_eq!(out.stdout, "");
}

#[test]
fn an_unknown_key_in_a_feed_is_named_with_its_index() {
    let text = "[[feeds]]\nname = \"a\"\nurll = \"ws://127.0.0.1:9100/trade-api/ws/v2\"\n";
    let (_dir, file) = config_file(text);

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("`feeds[0].urll`"), "{}", out.stderr);
}

#[test]
fn an_unknown_key_in_a_nested_table_is_named() {
    let (_dir, file) = config_file(&format!("{SIM_FEED}[feeds.backoff]\nmaximum = \"1m\"\n"));

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("`feeds[0].backoff.maximum`"), "{}", out.stderr);
}

#[test]
fn a_missing_key_file_is_named() {
    let missing = Path::new("/nonexistent/tickd/kalshi.pem");
    let (_dir, file) = config_file(&signed_feed(missing));

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("feeds[0].key_file"), "{}", out.stderr);
    assert!(out.stderr.contains("/nonexistent/tickd/kalshi.pem"), "{}", out.stderr);
}

#[test]
fn a_key_file_that_cannot_be_read_says_unreadable() {
    // Tests run as root, where mode 000 still reads: a directory cannot be read as a file.
    let dir = tempfile::tempdir().expect("temp dir");
    let (_dir, file) = config_file(&signed_feed(dir.path()));

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains(&dir.path().display().to_string()), "{}", out.stderr);
    assert!(out.stderr.to_lowercase().contains("unreadable"), "{}", out.stderr);
}

#[test]
fn a_key_file_without_a_key_says_invalid_key() {
    let (dir, file) = config_file("");
    let pem = dir.path().join("garbage.pem");
    std::fs::write(&pem, "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        .expect("write pem");
    std::fs::write(&file, signed_feed(&pem)).expect("write config");

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains(&pem.display().to_string()), "{}", out.stderr);
    assert!(out.stderr.to_lowercase().contains("invalid key"), "{}", out.stderr);
}

#[test]
fn a_valid_key_passes_and_its_content_is_never_printed() {
    let pem = test_key_pem();
    let (_dir, file) = config_file(&signed_feed(pem));

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains(&pem.display().to_string()), "{}", out.stdout);
    let body = std::fs::read_to_string(pem).expect("pem");
    let line = body.lines().nth(1).expect("pem body");
    assert!(!out.stdout.contains("PRIVATE KEY") && !out.stdout.contains(line), "{}", out.stdout);
}

#[test]
fn a_credential_key_file_is_read_from_the_credentials_directory() {
    let creds = tempfile::tempdir().expect("temp dir");
    std::fs::copy(test_key_pem(), creds.path().join("kalshi.pem")).expect("copy key");
    let (_dir, file) = config_file(&signed_feed(Path::new("credential:kalshi.pem")));
    let creds_dir = creds.path().to_str().expect("utf-8 temp path");

    let with = checked(check_config(&file, &[("CREDENTIALS_DIRECTORY", creds_dir)]));
    let without = checked(check_config(&file, &[]));

    assert_eq!(with.code, Some(0), "{}", with.stderr);
    assert!(with.stdout.contains(r#"key_file = "credential:kalshi.pem""#), "{}", with.stdout);
    assert_eq!(without.code, Some(2));
    assert!(without.stderr.contains("CREDENTIALS_DIRECTORY"), "{}", without.stderr);
}

#[test]
fn an_invalid_url_is_named() {
    for url in ["htp://x", "not a url", "https://external-api-ws.kalshi.com/trade-api/ws/v2"] {
        let (_dir, file) = config_file(&format!("[[feeds]]\nname = \"a\"\nurl = \"{url}\"\n"));

        let out = checked(check_config(&file, &[]));

        assert_eq!(out.code, Some(2), "{url}");
        assert!(out.stderr.contains("`feeds[0].url`"), "{url}: {}", out.stderr);
        assert!(out.stderr.contains(url), "{url}: {}", out.stderr);
    }
}

#[test]
fn a_bad_rest_url_is_named() {
    for rest_url in ["ftp://x/trade-api/v2", "not a url", "https://rest.example/trade-api/v2?token=1"] {
        let (_dir, file) = config_file(&format!("{SIM_FEED}rest_url = \"{rest_url}\"\n"));

        let out = checked(check_config(&file, &[]));

        assert_eq!(out.code, Some(2), "{rest_url}");
        assert!(out.stderr.contains("`feeds[0].rest_url`"), "{rest_url}: {}", out.stderr);
    }
    // A WebSocket URL whose REST sibling cannot be derived needs `rest_url`.
    let (_dir, file) = config_file("[[feeds]]\nname = \"a\"\nurl = \"wss://proxy.example/stream\"\n");
    let out = checked(check_config(&file, &[]));
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("`feeds[0].rest_url`") && out.stderr.contains("set `rest_url`"),
        "{}",
        out.stderr
    );
}

#[test]
fn environment_variables_override_the_file() {
    let (_dir, file) = config_file(&format!("[log]\nlevel = \"warn\"\n{SIM_FEED}"));

    let out =
        checked(check_config(&file, &[("TICKD_LOG__LEVEL", "debug"), ("TICKD_SUMMARY_INTERVAL", "5s")]));

    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains(r#"level = "debug""#), "{}", out.stdout);
    assert!(out.stdout.contains(r#"summary_interval = "5s""#), "{}", out.stdout);
}

#[test]
fn an_unknown_environment_variable_is_named() {
    let (_dir, file) = config_file(SIM_FEED);

    let out = checked(check_config(&file, &[("TICKD_BOGUS", "1")]));

    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("TICKD_BOGUS"), "{}", out.stderr);
}

#[test]
fn a_bad_environment_value_is_named() {
    let (_dir, file) = config_file(SIM_FEED);

    let out = checked(check_config(&file, &[("TICKD_SUMMARY_INTERVAL", "often")]));

    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("TICKD_SUMMARY_INTERVAL"), "{}", out.stderr);
}

#[test]
fn an_explicit_config_path_that_does_not_exist_is_named() {
    let missing = Path::new("/nonexistent/tickd.toml");

    let out = checked(check_config(missing, &[]));

    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("/nonexistent/tickd.toml"), "{}", out.stderr);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "[bus]\nlossy_capacity = 0\n[[feeds]]\nname = \"a\"\nurl = \"htp://x\"\nmarkets = [\"M\"]\n";
    let (_dir, file) = config_file(text);

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(2));
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stderr);
    assert!(lines.iter().all(|l| l.starts_with("error: ")), "{}", out.stderr);
}

/// `tickd run`'s stderr, line by line, read on a thread so a test can wait with a deadline.
struct Daemon {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        Daemon::start_with(config, &[])
    }

    /// Like [`Daemon::start`], with `env` set.
    fn start_with(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = tickd()
            .arg("run")
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tickd run starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon { child, lines }
    }

    /// The first line containing every needle, or a panic with what was seen.
    fn wait_for(&self, needles: &[&str]) -> String {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
                Ok(line) => seen.push(line),
                Err(e) => panic!("no line with {needles:?} ({e}); saw:\n{}", seen.join("\n")),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    fn exit_code(mut self) -> Option<i32> {
        self.child.wait().expect("tickd exits").code()
    }
}

#[test]
fn run_reloads_on_sighup_keeps_the_old_config_when_invalid_and_stops_cleanly() {
    // Port 9 (discard) refuses: the feed retries while we signal the daemon.
    let feed = format!(
        "[dashboard]\nlisten = \"127.0.0.1:0\"\n\n{}",
        SIM_FEED.replace("127.0.0.1:9100", "127.0.0.1:9")
    );
    let (_dir, file) = config_file(&feed);
    let daemon = Daemon::start(&file);
    daemon.wait_for(&["Starting."]);

    std::fs::write(&file, feed.replace("url =", "urll =")).expect("break config");
    daemon.signal("HUP");
    let rejected = daemon.wait_for(&["Reload rejected"]);

    std::fs::write(&file, &feed).expect("mend config");
    daemon.signal("HUP");
    daemon.wait_for(&["Configuration reloaded."]);

    // A setting outside the feeds is valid but only read at start: named, not applied.
    std::fs::write(&file, feed.replace("[dashboard]\n", "[dashboard]\nmax_connections = 7\n")).expect("edit");
    daemon.signal("HUP");
    let later = daemon.wait_for(&["take effect after a restart"]);

    daemon.signal("TERM");
    let code = daemon.exit_code();

    assert!(rejected.contains("feeds[0].urll"), "{rejected}");
    assert!(later.contains("dashboard.max_connections"), "{later}");
    assert_eq!(code, Some(0));
}

/// A feed that cannot connect (port 9 refuses) and a dashboard on a free port, logging as
/// `format`.
fn refused_feed_logging_as(format: &str) -> String {
    format!(
        "[log]\nformat = \"{format}\"\n\n[dashboard]\nlisten = \"127.0.0.1:0\"\n\n{}",
        SIM_FEED.replace("127.0.0.1:9100", "127.0.0.1:9")
    )
}

#[test]
fn journald_output_without_a_journal_logs_text_to_stderr_says_so_and_runs() {
    let (_dir, file) = config_file(&refused_feed_logging_as("journald"));
    let journal = Path::new("/run/systemd/journal/socket").exists();
    let daemon = Daemon::start(&file);

    // Where a journal listens, the lines go there and stderr has none to wait for.
    let lines = (!journal).then(|| {
        let warning = daemon.wait_for(&["WARN", "journal", "cannot be reached"]);
        let feed_line = daemon.wait_for(&["Connection attempt failed."]);
        (warning, feed_line)
    });
    daemon.signal("TERM");
    let code = daemon.exit_code();

    assert_eq!(code, Some(0));
    if let Some((warning, feed_line)) = lines {
        assert!(!warning.starts_with('{'), "text, not JSON: {warning}");
        assert!(feed_line.contains(r#"feed{feed=sim-feed conn=0}"#), "the feed's span: {feed_line}");
    }
}

#[test]
fn auto_output_is_text_when_stderr_is_not_the_journal_it_inherited() {
    let (_dir, file) = config_file(&refused_feed_logging_as("auto"));
    // A service's stderr is the journal stream systemd names here; a pipe is not.
    let daemon = Daemon::start_with(&file, &[("JOURNAL_STREAM", "8:12345")]);

    let starting = daemon.wait_for(&["Starting."]);
    daemon.signal("TERM");
    let code = daemon.exit_code();

    assert!(starting.contains(" INFO tickd: Starting."), "a text line: {starting}");
    assert_eq!(code, Some(0));
}

#[test]
fn a_database_password_never_shows_in_check_config() {
    let text =
        format!("{SIM_FEED}\n[store]\nurl = \"postgres://tickd:hunter2-secret@db.internal:5432/ticks\"\n");
    let (_dir, file) = config_file(&text);

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.stdout.contains("hunter2-secret"), "{}", out.stdout);
    assert!(
        out.stdout.contains("url = \"postgres://tickd:%3Credacted%3E@db.internal:5432/ticks\""),
        "{}",
        out.stdout
    );
}

#[test]
fn a_store_url_that_is_not_postgres_is_named() {
    let text = format!("{SIM_FEED}\n[store]\nurl = \"mysql://db/ticks\"\nbatch_size = 0\n");
    let (_dir, file) = config_file(&text);

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("invalid `store.url`"), "{}", out.stderr);
    assert!(out.stderr.contains("invalid `store.batch_size`"), "{}", out.stderr);
}

#[test]
fn a_webhook_token_never_shows_in_check_config() {
    let text = format!(
        "{SIM_FEED}\n[alerts]\nwebhook_url = \"https://ops:pa55word@hooks.example.com/services/T0/B0/XYZZY?token=s3cret\"\n"
    );
    let (_dir, file) = config_file(&text);

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for secret in ["pa55word", "XYZZY", "s3cret"] {
        assert!(!out.stdout.contains(secret), "{secret} in {}", out.stdout);
    }
    assert!(out.stdout.contains("webhook_url = \"https://hooks.example.com/<redacted>\""), "{}", out.stdout);
}

#[test]
fn a_webhook_url_that_is_not_http_is_named_without_repeating_it() {
    let text = format!(
        "{SIM_FEED}\n[alerts]\nwebhook_url = \"smtp://ops:pa55word@mail.example.com\"\nspool_warn_fraction = 2.0\n"
    );
    let (_dir, file) = config_file(&text);

    let out = checked(check_config(&file, &[("TICKD_ALERTS__RESOLVE_AFTER", "0s")]));

    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("invalid `alerts.webhook_url`"), "{}", out.stderr);
    assert!(out.stderr.contains("invalid `alerts.spool_warn_fraction`"), "{}", out.stderr);
    assert!(out.stderr.contains("invalid `alerts.resolve_after`"), "{}", out.stderr);
    assert!(!out.stderr.contains("pa55word"), "{}", out.stderr);
}

#[test]
fn a_feed_with_nothing_to_follow_is_named() {
    let (_dir, file) =
        config_file("[[feeds]]\nname = \"a\"\nurl = \"ws://127.0.0.1:9100/trade-api/ws/v2\"\n");

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(2), "{}", out.stdout);
    assert!(
        out.stderr.contains("`feeds[0].markets`") && out.stderr.contains("nothing to follow"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_malformed_series_or_event_ticker_is_named() {
    let feed = "[[feeds]]\nname = \"a\"\nurl = \"ws://127.0.0.1:9100/trade-api/ws/v2\"\n";
    for (key, value) in [
        ("series", r#"["KXBTCD", "kx btcd"]"#),
        ("series", r#"["KXBTCD", ""]"#),
        ("events", r#"["KXHIGHNY-26DEC07", "KXHIGHNY-26DEC07/x"]"#),
    ] {
        let (_dir, file) = config_file(&format!("{feed}{key} = {value}\n"));

        let out = checked(check_config(&file, &[]));

        assert_eq!(out.code, Some(2), "{value}: {}", out.stdout);
        assert!(out.stderr.contains(&format!("`feeds[0].{key}[1]`")), "{value}: {}", out.stderr);
    }
}

#[test]
fn a_feed_following_series_and_events_is_valid_and_printed_with_its_discovery_keys() {
    let (_dir, file) = config_file(
        "[[feeds]]\nname = \"a\"\nurl = \"wss://external-api-ws.demo.kalshi.co/trade-api/ws/v2\"\n\
         series = [\"KXBTCD\"]\nevents = [\"KXHIGHNY-26DEC07\"]\nsettled_grace = \"15m\"\n",
    );

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for line in [
        r#"series = ["KXBTCD"]"#,
        r#"events = ["KXHIGHNY-26DEC07"]"#,
        r#"discovery_interval = "5m""#,
        r#"settled_grace = "15m""#,
    ] {
        assert!(out.stdout.contains(line), "{line}: {}", out.stdout);
    }
}

#[test]
fn unknown_keys_wrong_types_and_bad_values_across_feeds_are_all_reported_in_one_run() {
    // Two stray keys, two values of the wrong type and three bad values, over three feeds.
    let text = r#"
summary_interval = 5
venue = "kalshi"

[[feeds]]
name = "a"
url = "htp://x"
markets = ["M1"]
max_reconnects = "ten"

[[feeds]]
name = "b"
url = "ws://127.0.0.1:9100/trade-api/ws/v2"
markets = ["M2"]
jitter = 0.2
[feeds.backoff]
multiplier = 0.5
jitter = 1.5

[[feeds]]
name = "c"
url = "ws://127.0.0.1:9100/trade-api/ws/v2"
markets = ["M3"]
rest_rate = 0
"#;
    let (_dir, file) = config_file(text);

    let out = checked(check_config(&file, &[]));

    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(lines.iter().all(|l| l.starts_with("error: ")), "{}", out.stderr);
    let expected = [
        ("`venue`", true),
        ("`summary_interval`", true),
        ("`feeds[0].max_reconnects`", true),
        ("`feeds[1].jitter`", true),
        ("`feeds[0].url`", false),
        ("`feeds[1].backoff.multiplier`", false),
        ("`feeds[1].backoff.jitter`", false),
        ("`feeds[2].rest_rate`", false),
    ];
    for (key, in_file) in expected {
        let line = lines.iter().find(|l| l.contains(key));
        let line = line.unwrap_or_else(|| panic!("{key} is not named:\n{}", out.stderr));
        if in_file {
            assert!(line.contains(&file.display().to_string()), "names the file: {line}");
        }
    }
    assert_eq!(lines.len(), expected.len(), "one line per problem, nothing else:\n{}", out.stderr);
}
