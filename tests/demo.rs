//! `tickd demo`, the README's run command: one command starts everything, records ticks a
//! user can query with the printed connection string, stops cleanly on Ctrl-C, and a second
//! run finds the first run's data.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

/// A running `tickd demo`; killed if the test fails before stopping it.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Demo {
    fn start(data_dir: &Path) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tickd"))
            .args([
                "demo",
                "--markets",
                "5",
                "--rate",
                "500",
                "--listen",
                "127.0.0.1:0",
                "--no-open",
                "--data-dir",
            ])
            .arg(data_dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tickd demo");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Demo { child, lines }
    }

    /// The connection string from the `Connect:  psql '…'` line.
    fn psql_url(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Some(rest) = line.trim().strip_prefix("Connect:") {
                return rest.trim().trim_start_matches("psql").trim().trim_matches('\'').to_owned();
            }
        }
        panic!("tickd demo printed no connection string");
    }

    /// Sends SIGINT (Ctrl-C) and returns the exit code.
    fn interrupt(&mut self) -> Option<i32> {
        let sent = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().expect("kill");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "tickd demo did not stop within 30 s of SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn trades(url: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.expect("the printed connection string connects");
    sqlx::query_scalar("SELECT count(*) FROM trades").fetch_one(&mut conn).await.expect("count")
}

async fn wait_for_trades(url: &str, more_than: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = trades(url).await;
        if n > more_than {
            return n;
        }
        assert!(Instant::now() < deadline, "no new trades recorded within 30 s (have {n})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_demo_records_ticks_stops_on_ctrl_c_and_keeps_its_data_for_the_next_run() {
    let data_dir = tempfile::tempdir().expect("tempdir");

    let mut first = Demo::start(data_dir.path());
    let url = first.psql_url();
    let recorded = wait_for_trades(&url, 0).await;
    let code = first.interrupt();
    assert_eq!(code, Some(0));

    let mut second = Demo::start(data_dir.path());
    let url = second.psql_url();
    let kept = trades(&url).await;
    assert!(kept >= recorded, "the second run sees {kept} trades, the first recorded at least {recorded}");
    wait_for_trades(&url, kept).await;
    assert_eq!(second.interrupt(), Some(0));
}
