//! Test support for MetricsStack's integration tests: the one place that hands a test a
//! fresh, isolated database (native PostgreSQL or TimescaleDB) or Kubernetes namespace on
//! the running test environment (`testenv/run`), and removes it afterwards.
//!
//! When the environment is not running, every helper panics with a message that says how to
//! start it: an integration test never passes by skipping.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, PgPool};

mod crd;
mod kubernetes;
mod proxy;
mod raw_statements;
mod real_node;
mod seed;
mod temp_dir;
mod timescaledb;

pub use crd::{CONNECTION_URI_KEY, InstallError, connection_secret, install_crd};
pub use kubernetes::{
    TEST_NAMESPACE_LABEL, TestNamespace, client as kube_client, grant_stack_data,
    service_account_token, wait_for_grant,
};
pub use proxy::CuttableProxy;
pub use raw_statements::{RAW_HOST_PROCESSES, RAW_PROCESS_SEARCH};
pub use real_node::{
    REAL_NODE_TAINT, busy_pod, helm, helm_output, poll_batch, process_gone_and_sampled,
};
pub use seed::{
    SEED_HOSTS, SEED_PODS, SEED_PROCESSES_PER_HOST, SEED_PROCESSES_PER_POD, Seeded, seed_dashboard,
};
pub use temp_dir::TempDir;
pub use timescaledb::TimescaleSchema;

/// Environment variable holding the native PostgreSQL server's admin URL.
pub const POSTGRES_URL_VAR: &str = "METRICSSTACK_TEST_POSTGRES_URL";
/// Environment variable holding the TimescaleDB (PGlite) server's URL.
pub const TIMESCALEDB_URL_VAR: &str = "METRICSSTACK_TEST_TIMESCALEDB_URL";
/// Environment variable holding the TLS-only PostgreSQL server's URL (host `localhost`).
pub const POSTGRES_TLS_URL_VAR: &str = "METRICSSTACK_TEST_POSTGRES_TLS_URL";
/// Environment variable holding the PEM file of the CA that signed that server's certificate.
pub const POSTGRES_TLS_CA_VAR: &str = "METRICSSTACK_TEST_POSTGRES_TLS_CA";
/// Environment variable holding the PEM file of a CA unrelated to that server.
pub const POSTGRES_TLS_WRONG_CA_VAR: &str = "METRICSSTACK_TEST_POSTGRES_TLS_WRONG_CA";
/// Environment variable holding the path of the `helm` binary the environment built.
pub const HELM_VAR: &str = "METRICSSTACK_HELM";
/// The group role of the test PostgreSQL whose members log in with their password (every
/// other role is trusted on loopback): a role that is to have its password rotated joins it.
pub const PASSWORD_LOGIN_ROLE: &str = "password_login";

/// Asserts that PostgreSQL refuses a login with `url` as a wrong password (28P01): a role
/// in [`PASSWORD_LOGIN_ROLE`] whose password has been changed.
pub async fn assert_password_refused(url: &str) {
    let error = PgConnection::connect(url)
        .await
        .map(|_| ())
        .expect_err("the old password is refused");
    assert!(
        matches!(&error, sqlx::Error::Database(e) if e.code().as_deref() == Some("28P01")),
        "refused as a wrong password: {error}"
    );
}

/// Reads a variable that `testenv/run` exports, or panics with how to start the environment.
pub fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: this test needs the MetricsStack test environment. Run the \
             tests with `./scripts/test` (or `testenv/run cargo test --workspace`), or start \
             the environment with `testenv/run` and `source .testenv/current/env` in this shell."
        ),
    }
}

/// A random lowercase name with a prefix, valid as a database, schema or namespace name.
pub fn unique_name(prefix: &str) -> String {
    use rand::Rng;
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .filter(u8::is_ascii_lowercase)
        .take(10)
        .map(char::from)
        .collect();
    format!("{prefix}-{suffix}")
}

/// The test environment's PostgreSQL server that accepts only TLS, and the CAs to check it
/// with. Its certificate names the host `localhost` and nothing else.
pub struct TlsPostgres {
    /// Its URL by host name `localhost`, with no `sslmode`.
    pub url: String,
    /// The PEM file of the CA that signed its certificate.
    pub ca: std::path::PathBuf,
    /// The PEM file of a CA that has nothing to do with it.
    pub wrong_ca: std::path::PathBuf,
}

impl TlsPostgres {
    /// The server `testenv/run` started.
    pub fn from_env() -> Self {
        Self {
            url: required_env(POSTGRES_TLS_URL_VAR),
            ca: required_env(POSTGRES_TLS_CA_VAR).into(),
            wrong_ca: required_env(POSTGRES_TLS_WRONG_CA_VAR).into(),
        }
    }

    /// Its URL by `host` (`localhost`, the one name its certificate holds, or `127.0.0.1`,
    /// which it does not), with `password` as the password: trust authentication ignores it,
    /// so a test can check that no message shows it.
    pub fn url_with(&self, host: &str, password: &str) -> String {
        self.url.replacen(
            "postgres@localhost:",
            &format!("postgres:{password}@{host}:"),
            1,
        )
    }

    /// The CA's certificate (PEM).
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca).expect("the test CA is readable")
    }

    /// The unrelated CA's certificate (PEM).
    pub fn wrong_ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.wrong_ca).expect("the unrelated test CA is readable")
    }
}

/// A fresh database on the native PostgreSQL server, dropped when this value is dropped.
pub struct TestDatabase {
    /// The database's name.
    pub name: String,
    /// Connection options for the database.
    pub options: PgConnectOptions,
    admin: PgConnectOptions,
}

impl TestDatabase {
    /// Creates a fresh, empty database on the native PostgreSQL server.
    pub async fn create() -> Self {
        let admin: PgConnectOptions = required_env(POSTGRES_URL_VAR)
            .parse()
            .expect("the native PostgreSQL URL parses");
        let name = unique_name("test").replace('-', "_");
        let mut conn = admin
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to native PostgreSQL failed: {e}"));
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("CREATE DATABASE succeeds");
        conn.close().await.ok();
        let options = admin.clone().database(&name);
        Self {
            name,
            options,
            admin,
        }
    }

    /// The database's connection URL.
    pub fn url(&self) -> String {
        self.options.to_url_lossy().to_string()
    }

    /// A pool of up to `max_connections` connections to the database.
    pub async fn pool(&self, max_connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.options.clone())
            .await
            .expect("connecting to the test database succeeds")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        run_cleanup(async move {
            let mut conn: PgConnection = admin.connect().await?;
            conn.execute(sqlx::AssertSqlSafe(statement)).await?;
            conn.close().await
        });
    }
}

/// Polls `check` every 250 ms until it holds, or panics after `timeout` naming `what`. The
/// deadline and the pause between polls are on the system clock, not on Tokio's: a test that
/// paused Tokio's clock would otherwise have its clock moved by the wait, or never wake.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(250)))
            .await
            .expect("the pause between polls ends");
    }
}

/// Runs an async clean-up to completion from `Drop`, on a thread of its own so that it works
/// inside and outside a Tokio runtime. A failed clean-up is reported, not raised: the test's
/// own outcome matters more.
fn run_cleanup<F, E>(cleanup: F)
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let outcome = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(cleanup)
            .map_err(|e| e.to_string())
    })
    .join();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("test clean-up failed: {e}"),
        Err(_) => eprintln!("test clean-up panicked"),
    }
}

/// Brings `host_process_latest` up to the rows a test or benchmark wrote into
/// `host_process_metrics` with SQL rather than through the collector's ingest: each
/// process's newest sample of the last 30 days (as migration 0003 fills it), replacing only
/// an older one, as the ingest does; then each process's search text from its latest
/// sample (`host_process_texts`, as the ingest keeps it).
pub async fn fill_latest_samples(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(FILL_LATEST_SAMPLES)
        .execute(pool)
        .await
        .map(drop)
}

const FILL_LATEST_SAMPLES: &str = r#"
INSERT INTO host_process_latest AS latest ("timestamp", host, pid, start_time, parent_pid,
    process_name, command_line, username, state, cpu_usage_percent, cpu_peak_percent,
    memory_usage_mb, virtual_memory_mb, disk_read_bytes, disk_write_bytes, threads)
SELECT DISTINCT ON (host, pid, start_time) "timestamp", host, pid, start_time, parent_pid,
       process_name, command_line, username, state, cpu_usage_percent, cpu_peak_percent,
       memory_usage_mb, virtual_memory_mb, disk_read_bytes, disk_write_bytes, threads
FROM host_process_metrics
WHERE "timestamp" >= now() - interval '30 days'
ORDER BY host, pid, start_time, "timestamp" DESC
ON CONFLICT (host, pid, start_time) DO UPDATE SET "timestamp" = excluded."timestamp",
    parent_pid = excluded.parent_pid, process_name = excluded.process_name,
    command_line = excluded.command_line, username = excluded.username, state = excluded.state,
    cpu_usage_percent = excluded.cpu_usage_percent, cpu_peak_percent = excluded.cpu_peak_percent,
    memory_usage_mb = excluded.memory_usage_mb, virtual_memory_mb = excluded.virtual_memory_mb,
    disk_read_bytes = excluded.disk_read_bytes, disk_write_bytes = excluded.disk_write_bytes,
    threads = excluded.threads
WHERE excluded."timestamp" > latest."timestamp";
INSERT INTO host_process_texts AS texts (host, pid, start_time, search_text)
SELECT host, pid, start_time, process_search_text(command_line, process_name)
FROM host_process_latest
ON CONFLICT (host, pid, start_time) DO UPDATE SET search_text = excluded.search_text
WHERE texts.search_text <> excluded.search_text;
"#;
