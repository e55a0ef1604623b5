//! The dashboard page in a real browser against the real `tickd demo`: rows with prices that
//! update, a feed panel that turns stale while the simulator refuses the feed and live again
//! after, and an open page that reconnects by itself across a demo restart.
//!
//! The scenario is `tests/browser/dashboard.mjs` (Node, playwright-core driving Debian's
//! Chromium); this test runs it with the tickd binary under test, asserts on its exit status,
//! and keeps its screenshots in `target/test-artifacts/` (`dashboard.png`, the final screen;
//! `dashboard-stale.png`, while the feed was refused). `scripts/test` installs
//! what it needs: `chromium` and the script's npm packages (`npm ci`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Debian's Chromium, the browser the script drives.
const CHROMIUM: &str = "/usr/bin/chromium";
/// The script bounds each of its waits and the whole run (8 min); this is the backstop.
const SCRIPT_LIMIT: Duration = Duration::from_secs(10 * 60);

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// `target/test-artifacts`, beside the `target/tmp` cargo gives integration tests.
fn artifacts_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("test-artifacts")
}

/// Waits for `child` up to `limit`; past it, SIGTERM (the script then stops its demo), a few
/// seconds' grace, then SIGKILL. `None` when it had to be stopped.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let grace = Instant::now() + Duration::from_secs(30);
    while Instant::now() < grace {
        if child.try_wait().expect("waiting for node").is_some() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn the_dashboard_shows_live_markets_marks_a_lost_feed_stale_and_reconnects_after_a_restart() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; scripts/test does it)"
    );
    assert!(
        script_dir().join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run `npm ci` in tests/browser (scripts/test does it)"
    );
    // Open to others: as root, the demo's PostgreSQL runs as `postgres`, which must get through.
    let scratch = tempfile::Builder::new()
        .prefix("tickd-browser-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .tempdir()
        .expect("tempdir");

    let mut node = Command::new("node")
        .arg("dashboard.mjs")
        .arg(env!("CARGO_BIN_EXE_tickd"))
        .arg(scratch.path())
        .current_dir(script_dir())
        .env_remove("RUST_LOG")
        .spawn()
        .expect("node runs (Node.js 20 or later must be installed)");
    let status = wait_bounded(&mut node, SCRIPT_LIMIT);

    let status = status.unwrap_or_else(|| panic!("dashboard.mjs did not finish within {SCRIPT_LIMIT:?}"));
    assert_eq!(status.code(), Some(0), "dashboard.mjs failed (its output above says where)");
    let screenshot = scratch.path().join("dashboard.png");
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "dashboard.mjs passed but left no screenshot at {}", screenshot.display());
    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts).expect("creating target/test-artifacts");
    std::fs::copy(&screenshot, artifacts.join("dashboard.png")).expect("keeping the screenshot");
    // The stale screen too, for a look at how a lost feed reads.
    let _ = std::fs::copy(scratch.path().join("dashboard-stale.png"), artifacts.join("dashboard-stale.png"));
}
