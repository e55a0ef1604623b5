//! What the private servers of [`crate::dev`] share: cleaning up after them however this
//! process ends, a free port, and the end of a server log.
//!
//! The private servers of [`crate::dev`] (PostgreSQL, NATS) run detached or in their own
//! process group, so they would outlive a process that dies without dropping their handle (a
//! `static` in a test binary, a kill, Ctrl-C). Each handle therefore starts a [`Watchdog`]: a
//! shell in its own process group that blocks reading a pipe only this process holds; when
//! the pipe closes, it runs the stop command and removes the scratch directory.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// Runs a stop command and removes a scratch directory once this process is gone.
#[derive(Debug)]
pub(crate) struct Watchdog {
    /// The shell, blocked reading `_pipe`.
    pub(crate) child: Child,
    /// The only write end of the shell's stdin: it closes when this process exits, however it
    /// exits. std opens pipes close-on-exec, so no other child (the server included) holds it.
    _pipe: ChildStdin,
}

impl Watchdog {
    pub(crate) fn spawn(stop: &Command, scratch: &Path) -> io::Result<Watchdog> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"dir=$1; shift; read -r _; "$@" >/dev/null 2>&1; rm -rf -- "$dir""#)
            .arg("sh")
            .arg(scratch)
            .arg(stop.get_program())
            .args(stop.get_args())
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so Ctrl-C in a terminal or a test runner killing our group
            // leaves it alive to clean up.
            .process_group(0);
        for (key, value) in stop.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        let mut child = cmd.spawn()?;
        let pipe = child.stdin.take().ok_or_else(|| io::Error::other("watchdog stdin was not piped"))?;
        Ok(Watchdog { child, _pipe: pipe })
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> io::Result<u16> {
    let probe = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    Ok(probe.local_addr()?.port())
}

/// The last `lines` lines written to `log` after `offset`.
pub(crate) fn log_tail(log: &Path, offset: u64, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(log) else { return format!("({} is unreadable)", log.display()) };
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.is_empty() { "(nothing)".to_owned() } else { tail }
}
