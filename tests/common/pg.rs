//! Per-test PostgreSQL databases: every test gets a fresh, uniquely named database, so tests
//! run in parallel without seeing each other's rows.
//!
//! With `DATABASE_URL` set (`scripts/test` sets it to one server for the whole run), it is an
//! admin URL and the databases are created on that server. Otherwise the first test of a process
//! starts a private server from the installed binaries and the process's later tests share it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use tickd::dev::localpg::{LocalPg, LocalPgOptions};
use tokio::sync::OnceCell;

/// The process's private server. Each `#[tokio::test]` has its own runtime, and this outlives
/// them all: `LocalPg` holds no runtime resources, only processes. A static is never dropped;
/// the server's watchdog stops it when the process exits.
static SERVER: OnceCell<Arc<LocalPg>> = OnceCell::const_new();

/// Tells apart the databases of one process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh database for one test.
pub struct TestDb {
    /// Connects to the database as a superuser.
    pub url: String,
    /// The database's name.
    pub name: String,
    /// Keeps the process's private server alive while the database is in use, if there is one.
    _server: Option<Arc<LocalPg>>,
}

impl TestDb {
    /// Creates a database named `tickd_test_<pid>_<counter>_<random>`: unique within the
    /// process by the counter, across processes by the pid, and across runs against a
    /// long-lived `DATABASE_URL` server by the random part.
    pub async fn new() -> TestDb {
        let name = format!(
            "tickd_test_{}_{}_{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        match std::env::var("DATABASE_URL") {
            Ok(admin) if !admin.is_empty() => {
                let url = create_on(&admin, &name).await;
                TestDb { url, name, _server: None }
            }
            _ => {
                let server = SERVER.get_or_init(|| async { Arc::new(private_server().await) }).await.clone();
                let url = server
                    .create_database(&name)
                    .await
                    .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
                TestDb { url, name, _server: Some(server) }
            }
        }
    }

    /// A connection to the database.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url))
    }
}

/// A server of the test's own, in a temporary directory on a free port, for tests that stop
/// and restart it.
pub async fn private_server() -> LocalPg {
    LocalPg::start(LocalPgOptions::default())
        .await
        .unwrap_or_else(|e| panic!("starting a private PostgreSQL server: {e}"))
}

/// Creates `name` on the server of the admin URL `admin` and returns the database's URL.
async fn create_on(admin: &str, name: &str) -> String {
    let mut conn = PgConnection::connect(admin)
        .await
        .unwrap_or_else(|e| panic!("connecting to DATABASE_URL ({admin}): {e}"));
    // The name is ours, made of letters, digits and underscores, so quoting is enough.
    sqlx::raw_sql(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("creating test database {name} on DATABASE_URL: {e}"));
    let _ = conn.close().await;
    let mut url =
        url::Url::parse(admin).unwrap_or_else(|e| panic!("DATABASE_URL ({admin}) is not a URL: {e}"));
    url.set_path(&format!("/{name}"));
    url.into()
}
