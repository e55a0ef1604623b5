//! Private PostgreSQL servers from the installed binaries: real `initdb`, `pg_ctl` and
//! connections, no mocks. Every test starts its own server on a free port, so they run in
//! parallel.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::pg::{TestDb, private_server};
use sqlx::{Connection as _, PgConnection};
use tickd::dev::localpg::{LocalPg, LocalPgError, LocalPgOptions};

/// How long a refused connection may take to be refused.
const REFUSAL_LIMIT: Duration = Duration::from_secs(10);

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// Asserts that nothing accepts PostgreSQL connections at `url`.
async fn assert_refused(url: &str) {
    let attempt = tokio::time::timeout(REFUSAL_LIMIT, PgConnection::connect(url)).await;
    assert!(matches!(attempt, Ok(Err(_))), "{url} still accepts connections");
}

async fn notes(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT body FROM notes ORDER BY id")
        .fetch_all(conn)
        .await
        .expect("notes are readable")
}

async fn write_note(url: &str, body: &str) {
    let mut conn = connect(url).await;
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text NOT NULL)")
        .execute(&mut conn)
        .await
        .expect("notes table created");
    sqlx::query("INSERT INTO notes (body) VALUES ($1)")
        .bind(body)
        .execute(&mut conn)
        .await
        .expect("note written");
    conn.close().await.expect("clean goodbye");
}

fn running_as_root() -> bool {
    let out = Command::new("id").arg("-u").stdin(Stdio::null()).output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A directory for a data directory of our choosing. As root it must let the server user
/// through, whatever the umask.
fn open_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tickd-localpg-test.")
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .expect("temp dir")
}

async fn start_in(data_dir: &Path) -> LocalPg {
    LocalPg::start(LocalPgOptions { data_dir: Some(data_dir.to_owned()), port: None })
        .await
        .unwrap_or_else(|e| panic!("starting on {}: {e}", data_dir.display()))
}

fn postmaster_pid(data_dir: &Path) -> String {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).expect("postmaster.pid");
    text.lines().next().expect("a pid line").trim().to_owned()
}

#[tokio::test]
async fn a_temporary_cluster_serves_queries_in_a_created_database() {
    let pg = private_server().await;

    let url = pg.create_database("market data").await.expect("database created");
    let again = pg.create_database("market data").await.expect("an existing database is fine");

    assert_eq!(url, again);
    assert_eq!(url, format!("postgres://postgres@127.0.0.1:{}/market%20data", pg.port()));
    let mut conn = connect(&url).await;
    let (db, sum): (String, i32) = sqlx::query_as("SELECT current_database()::text, 40 + 2")
        .fetch_one(&mut conn)
        .await
        .expect("query runs");
    assert_eq!((db.as_str(), sum), ("market data", 42));
    let listen: String =
        sqlx::query_scalar("SHOW listen_addresses").fetch_one(&mut conn).await.expect("show");
    assert_eq!(listen, "127.0.0.1");
    let sockets: String =
        sqlx::query_scalar("SHOW unix_socket_directories").fetch_one(&mut conn).await.expect("show");
    assert_ne!(sockets, "/var/run/postgresql", "the socket lives in a private directory");
}

#[tokio::test]
async fn stop_refuses_connections_and_restart_brings_the_same_data_back() {
    let pg = private_server().await;
    let url = pg.create_database("ticks").await.expect("database created");
    write_note(&url, "before the outage").await;
    let port = pg.port();

    pg.stop().await.expect("server stops");
    assert_refused(&url).await;
    pg.stop().await.expect("stopping a stopped server is fine");
    pg.restart().await.expect("server restarts");

    assert_eq!(pg.port(), port, "a restart keeps the port, so URLs stay valid");
    assert_eq!(notes(&mut connect(&url).await).await, ["before the outage"]);
}

#[tokio::test]
async fn a_reused_data_dir_keeps_its_data_across_servers() {
    let parent = open_tempdir();
    let data_dir = parent.path().join("pg");
    let first = start_in(&data_dir).await;
    let url = first.create_database("demo").await.expect("database created");
    write_note(&url, "kept").await;
    drop(first);
    assert_refused(&url).await;

    let second = start_in(&data_dir).await;

    assert!(data_dir.join("PG_VERSION").is_file(), "the cluster is still on disk");
    assert_eq!(second.data_dir(), data_dir);
    let url = second.url("demo");
    assert_eq!(notes(&mut connect(&url).await).await, ["kept"]);
}

#[tokio::test]
async fn dropping_a_temporary_server_stops_it_and_removes_its_directory() {
    let pg = private_server().await;
    let url = pg.url("postgres");
    let data_dir = pg.data_dir().to_owned();
    connect(&url).await.close().await.expect("clean goodbye");

    drop(pg);

    assert!(!data_dir.exists(), "{} is removed", data_dir.display());
    assert_refused(&url).await;
}

#[tokio::test]
async fn a_postmaster_pid_left_by_a_killed_server_does_not_block_start() {
    let parent = open_tempdir();
    let data_dir = parent.path().join("pg");
    let first = start_in(&data_dir).await;
    write_note(&first.create_database("demo").await.expect("database created"), "survives a crash").await;
    // A crashed run: the postmaster dies without removing its postmaster.pid.
    let pid = postmaster_pid(&data_dir);
    let killed = Command::new("kill").args(["-KILL", &pid]).stdin(Stdio::null()).status().expect("kill runs");
    assert!(killed.success());
    drop(first);
    assert!(data_dir.join("postmaster.pid").exists(), "the stale file is still there");

    let second = start_in(&data_dir).await;

    let url = second.url("demo");
    assert_eq!(notes(&mut connect(&url).await).await, ["survives a crash"]);
}

#[tokio::test]
async fn a_postmaster_pid_naming_a_live_stranger_does_not_block_start() {
    let parent = open_tempdir();
    let data_dir = parent.path().join("pg");
    let first = start_in(&data_dir).await;
    first.stop().await.expect("server stops");
    // The process id of a dead server now belongs to another program (this test).
    let stranger = std::process::id().to_string();
    std::fs::write(data_dir.join("postmaster.pid"), format!("{stranger}\n{}\n", data_dir.display()))
        .expect("pid file written");

    first.restart().await.expect("server restarts despite the stale file");

    connect(&first.url("postgres")).await.close().await.expect("clean goodbye");
    assert_ne!(postmaster_pid(&data_dir), stranger, "the server wrote its own pid");
}

#[tokio::test]
async fn a_second_server_on_a_data_dir_in_use_is_refused() {
    let parent = open_tempdir();
    let data_dir = parent.path().join("pg");
    let first = start_in(&data_dir).await;

    let second = LocalPg::start(LocalPgOptions { data_dir: Some(data_dir.clone()), port: None }).await;

    match second {
        Err(e @ LocalPgError::AlreadyRunning { .. }) => {
            assert!(e.to_string().contains(&*data_dir.to_string_lossy()), "{e}")
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    connect(&first.url("postgres")).await.close().await.expect("the first server is unharmed");
}

#[tokio::test]
async fn a_taken_port_fails_the_start_with_the_server_log() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();

    let started = LocalPg::start(LocalPgOptions { data_dir: None, port: Some(port) }).await;

    let e = started.expect_err("the port is taken");
    assert!(e.is_address_in_use(), "{e}");
    let message = e.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("Address already in use"), "the log tail explains why: {message}");
}

#[tokio::test]
async fn a_non_empty_directory_without_a_cluster_is_refused() {
    let parent = open_tempdir();
    std::fs::write(parent.path().join("notes.txt"), "mine").expect("file written");

    let started =
        LocalPg::start(LocalPgOptions { data_dir: Some(parent.path().to_owned()), port: None }).await;

    assert!(
        matches!(started, Err(LocalPgError::NotACluster(ref dir)) if dir == parent.path()),
        "{started:?}"
    );
    assert_eq!(std::fs::read_to_string(parent.path().join("notes.txt")).expect("untouched"), "mine");
}

#[tokio::test]
async fn a_data_dir_the_server_user_cannot_reach_is_refused_with_the_reason() {
    if !running_as_root() {
        eprintln!("skipped: only root runs the server as another user, so only root can pick such a path");
        return;
    }
    // Mode 700, owned by root: postgres cannot pass it.
    let private = tempfile::Builder::new()
        .prefix("tickd-localpg-private.")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("temp dir");
    let data_dir: PathBuf = private.path().join("pg");

    let started = LocalPg::start(LocalPgOptions { data_dir: Some(data_dir.clone()), port: None }).await;

    let e = started.expect_err("postgres cannot reach the directory");
    assert!(matches!(&e, LocalPgError::Unreachable { blocked, .. } if blocked == private.path()), "{e:?}");
    let message = e.to_string();
    assert!(message.contains(&*data_dir.to_string_lossy()), "names the data directory: {message}");
    assert!(message.contains("mode 700"), "says why: {message}");
    assert!(!data_dir.exists(), "nothing is created on the way to an error");
}

#[tokio::test]
async fn test_databases_are_distinct() {
    let one = TestDb::new().await;
    let two = TestDb::new().await;

    assert_ne!(one.name, two.name);
    assert_ne!(one.url, two.url);
    write_note(&one.url, "only in one").await;
    let mut conn = two.connect().await;
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'notes'")
        .fetch_one(&mut conn)
        .await
        .expect("catalog query");
    assert_eq!(tables, 0, "the second database does not see the first one's table");
    assert_eq!(notes(&mut one.connect().await).await, ["only in one"]);
}
