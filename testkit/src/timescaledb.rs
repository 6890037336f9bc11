//! A fresh schema on the test TimescaleDB server, for one test at a time.
//!
//! The server is PGlite: ONE PostgreSQL session behind a socket. Only one client
//! connection may be open at a time, prepared statements outlive a reconnect, and `SET`
//! leaks into the next client. So a test holds an exclusive lock (a file lock, which also
//! serialises test binaries run in parallel) for as long as it uses the server, gets its own
//! schema as its search path, and every connection starts with `DEALLOCATE ALL`.

use std::fs::File;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};

use crate::{TIMESCALEDB_URL_VAR, required_env, run_cleanup, unique_name};

/// Exclusive use of the test TimescaleDB server, with a fresh schema that is dropped
/// (with everything in it, policies included) when this value is dropped.
pub struct TimescaleSchema {
    /// The schema's name; [`TimescaleSchema::connect`] puts it first on the search path.
    pub schema: String,
    /// Connection options for the server.
    pub options: PgConnectOptions,
    _lock: File,
}

impl TimescaleSchema {
    /// Waits for exclusive use of the server, then creates a fresh schema.
    pub async fn create() -> Self {
        let options: PgConnectOptions = required_env(TIMESCALEDB_URL_VAR)
            .parse()
            .expect("the TimescaleDB URL parses");
        let lock_path = std::env::temp_dir().join(format!(
            "metricsstack-timescaledb-{}.lock",
            options.get_port()
        ));
        let lock = tokio::task::spawn_blocking(move || {
            let file = File::create(&lock_path).expect("the TimescaleDB lock file opens");
            file.lock()
                .expect("locking the TimescaleDB lock file succeeds");
            file
        })
        .await
        .expect("the lock task completes");
        let schema = unique_name("test").replace('-', "_");
        let this = Self {
            schema,
            options,
            _lock: lock,
        };
        let mut conn = this.connect_raw().await;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA {}",
            this.schema
        )))
        .await
        .expect("CREATE SCHEMA succeeds");
        conn.close().await.ok();
        this
    }

    /// The server's connection URL (the schema is not part of it: set the search path).
    pub fn url(&self) -> String {
        self.options.to_url_lossy().to_string()
    }

    /// Opens the one connection a test may hold, with this test's schema on the search path.
    /// Close it (or drop it) before connecting again.
    pub async fn connect(&self) -> PgConnection {
        let mut conn = self.connect_raw().await;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "SET search_path TO {}, public",
            self.schema
        )))
        .await
        .expect("SET search_path succeeds");
        conn
    }

    async fn connect_raw(&self) -> PgConnection {
        connect_when_free(&self.options)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test TimescaleDB failed: {e}"))
    }
}

/// Connects, retrying while the previous client's connection is still closing (the server
/// refuses a second connection), then clears the session's prepared statements and search
/// path.
async fn connect_when_free(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    let mut attempt = 0;
    loop {
        match options.connect().await {
            Ok(mut conn) => {
                conn.execute("DEALLOCATE ALL").await?;
                conn.execute("RESET search_path").await?;
                return Ok(conn);
            }
            Err(_) if attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Drop for TimescaleSchema {
    fn drop(&mut self) {
        let options = self.options.clone();
        let statement = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        run_cleanup(async move {
            let mut conn = connect_when_free(&options).await?;
            conn.execute(sqlx::AssertSqlSafe(statement)).await?;
            conn.close().await
        });
    }
}
