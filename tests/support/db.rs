//! Test databases: a fresh SQLite file, and a fresh PostgreSQL database.
//!
//! [`test_databases`] gives one connected, migrated [`TestDb`] per backend, so a store test can
//! run the same body against SQLite and PostgreSQL. PostgreSQL comes from `TEST_POSTGRES_URL`
//! (`scripts/test.sh` starts a throwaway server and sets it); without it the tests fail unless
//! `M365BOT_TESTS_WITHOUT_POSTGRES=1` says plainly to run on SQLite only.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use m365bot::db::Db;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Names the PostgreSQL server the tests create their databases on (a role with `CREATEDB`).
pub const POSTGRES_URL_VAR: &str = "TEST_POSTGRES_URL";
/// Set to `1` to run the store tests on SQLite only.
pub const WITHOUT_POSTGRES_VAR: &str = "M365BOT_TESTS_WITHOUT_POSTGRES";

/// Pool size of every test database.
const MAX_CONNECTIONS: u32 = 5;

/// A fresh, migrated database of one backend; removed when dropped.
pub struct TestDb {
    /// The URL `db` was opened with (a new pool can be opened on it).
    pub url: String,
    /// `"sqlite"` or `"postgres"`, for assertion messages.
    pub label: &'static str,
    /// Connected and migrated.
    pub db: Db,
    _guard: Guard,
}

/// Keeps the database alive for the test and removes it afterwards.
enum Guard {
    /// The temporary directory that holds the SQLite file.
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    /// A database created on the test server, dropped (best effort) at the end.
    Postgres(PostgresDrop),
}

/// Every backend the store tests must pass on: SQLite always, PostgreSQL when configured.
///
/// Panics, telling how to run, when `TEST_POSTGRES_URL` is unset and
/// `M365BOT_TESTS_WITHOUT_POSTGRES` is not `1`.
pub async fn test_databases() -> Vec<TestDb> {
    let mut databases = vec![sqlite_test_db().await];
    if let Some(db) = postgres_test_db().await {
        databases.push(db);
    }
    databases
}

/// A fresh, migrated SQLite database in its own temporary directory.
pub async fn sqlite_test_db() -> TestDb {
    let dir = tempfile::tempdir().expect("a temporary directory for the SQLite test database");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let db = open(&url, "sqlite").await;
    TestDb {
        url,
        label: "sqlite",
        db,
        _guard: Guard::Sqlite(dir),
    }
}

/// A fresh, migrated PostgreSQL database on the `TEST_POSTGRES_URL` server, or `None` when the
/// run was told to skip PostgreSQL. Panics with instructions when neither is set.
pub async fn postgres_test_db() -> Option<TestDb> {
    let server_url = match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ if std::env::var(WITHOUT_POSTGRES_VAR).as_deref() == Ok("1") => {
            eprintln!(
                "NOTE: {WITHOUT_POSTGRES_VAR}=1: this test ran on SQLite only, PostgreSQL skipped"
            );
            return None;
        }
        _ => panic!(
            "this test needs PostgreSQL, and {POSTGRES_URL_VAR} is not set.\n\
             Run the suite with `scripts/test.sh` (it installs and starts a throwaway \
             PostgreSQL), or set {POSTGRES_URL_VAR}=postgres://USER@127.0.0.1:5432/DB \
             (a role allowed to CREATE DATABASE), or set {WITHOUT_POSTGRES_VAR}=1 \
             (or `scripts/test.sh --without-postgres`) to test on SQLite only."
        ),
    };
    let name = unique_database_name();
    let mut admin = PgConnection::connect(&server_url)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot connect to {POSTGRES_URL_VAR} ({}): {error}",
                m365bot::db::redact_url(&server_url)
            )
        });
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|error| panic!("cannot create the test database {name}: {error}"));
    let _ = admin.close().await;
    let guard = PostgresDrop {
        server_url: server_url.clone(),
        name: name.clone(),
    };
    let mut url = url::Url::parse(&server_url).expect("TEST_POSTGRES_URL is a URL");
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    let db = open(&url, "postgres").await;
    Some(TestDb {
        url,
        label: "postgres",
        db,
        _guard: Guard::Postgres(guard),
    })
}

/// Connects and migrates, panicking with the backend's label on failure.
async fn open(url: &str, label: &str) -> Db {
    let db = Db::connect(url, MAX_CONNECTIONS)
        .await
        .unwrap_or_else(|error| panic!("[{label}] connect: {error:#}"));
    db.migrate()
        .await
        .unwrap_or_else(|error| panic!("[{label}] migrate: {error:#}"));
    db
}

/// `m365bot_test_<pid>_<n>_<random>`: unique across test threads, binaries and runs.
fn unique_database_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "m365bot_test_{}_{}_{:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// Drops a test database when the test ends, ignoring failures.
struct PostgresDrop {
    server_url: String,
    name: String,
}

impl Drop for PostgresDrop {
    fn drop(&mut self) {
        let server_url = std::mem::take(&mut self.server_url);
        let name = std::mem::take(&mut self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread with its
        // own small runtime, and wait for it so the database is gone when the test returns.
        let worker = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let work = async {
                    let mut admin = PgConnection::connect(&server_url).await.ok()?;
                    let forced = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    if sqlx::raw_sql(&forced).execute(&mut admin).await.is_err() {
                        // Servers before PostgreSQL 13 know no FORCE.
                        let plain = format!("DROP DATABASE IF EXISTS \"{name}\"");
                        let _ = sqlx::raw_sql(&plain).execute(&mut admin).await;
                    }
                    admin.close().await.ok()
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
            });
        });
        let _ = worker.join();
    }
}
