//! The one way every MetricsStack client connects to the stack's database: the pool
//! settings the `MetricsStack` declares per client, and the session set-up each new
//! connection runs before it is handed out.
//!
//! Every connection, whichever the client:
//! - runs `DEALLOCATE ALL` first: a session handed over by a pooler, or the test
//!   environment's single-session TimescaleDB, may still hold prepared statements whose
//!   names collide with sqlx's (`sqlx_s_1`, ...); it costs one round trip per connection;
//! - puts the stack's schema on its search path, quoted as an identifier, with `public`
//!   after it only where the client needs TimescaleDB's functions ([`SearchPath`]): the
//!   operator does; the collector and the query service run plain PostgreSQL on their own
//!   tables and must never read or write another stack's tables through `public`;
//! - sets `statement_timeout` to the client's bound, or to none (`0`) explicitly, so that
//!   no setting left by an earlier session applies.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor as _, PgPool};

/// Connection-pool settings of one database client (sqlx `PgPoolOptions`), as the
/// `MetricsStack` declares them for that client.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PoolSettings {
    /// Most connections open at once.
    pub max_connections: u32,
    /// Connections kept open when idle.
    pub min_connections: u32,
    /// Seconds to wait for a free connection.
    pub acquire_timeout_seconds: u64,
    /// Seconds after which an idle connection is closed; absent: never.
    pub idle_timeout_seconds: Option<u64>,
    /// Seconds after which a connection is replaced; absent: never.
    pub max_lifetime_seconds: Option<u64>,
    /// Check a connection before handing it out.
    pub test_before_acquire: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 2,
            min_connections: 0,
            acquire_timeout_seconds: 30,
            idle_timeout_seconds: Some(600),
            max_lifetime_seconds: Some(1800),
            test_before_acquire: false,
        }
    }
}

impl PoolSettings {
    /// The settings as sqlx pool options.
    pub fn pool_options(&self) -> sqlx::postgres::PgPoolOptions {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(self.max_connections)
            .min_connections(self.min_connections)
            .acquire_timeout(Duration::from_secs(self.acquire_timeout_seconds))
            .idle_timeout(self.idle_timeout_seconds.map(Duration::from_secs))
            .max_lifetime(self.max_lifetime_seconds.map(Duration::from_secs))
            .test_before_acquire(self.test_before_acquire)
    }
}

/// Which schemas a client's sessions search for unqualified names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchPath {
    /// The stack's schema alone: the data plane (collector, query service).
    StackSchema,
    /// The stack's schema, then `public`, where TimescaleDB's functions live: the operator.
    StackSchemaThenPublic,
}

/// How one client's sessions are set up; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Shown in `pg_stat_activity.application_name`.
    pub application_name: &'static str,
    /// The stack's schema, where the migrations create the metric tables.
    pub schema: String,
    /// Whether `public` follows the schema.
    pub search_path: SearchPath,
    /// The server cancels any statement running longer; `None`: no bound.
    pub statement_timeout: Option<Duration>,
}

impl Session {
    /// The `search_path` value: the schema quoted as an identifier (a `"` doubled), then
    /// `public` where asked.
    pub fn search_path_value(&self) -> String {
        let schema = format!("\"{}\"", self.schema.replace('"', "\"\""));
        match self.search_path {
            SearchPath::StackSchema => schema,
            SearchPath::StackSchemaThenPublic => format!("{schema}, public"),
        }
    }

    /// The `statement_timeout` value: milliseconds, `0` for none.
    pub fn statement_timeout_value(&self) -> String {
        self.statement_timeout.map_or_else(
            || "0".to_owned(),
            |timeout| format!("{}ms", timeout.as_millis()),
        )
    }

    /// `settings` as sqlx pool options whose every new connection is set up as this session.
    pub fn pool_options(&self, settings: &PoolSettings) -> PgPoolOptions {
        let search_path = self.search_path_value();
        let statement_timeout = self.statement_timeout_value();
        settings.pool_options().after_connect(move |conn, _| {
            let search_path = search_path.clone();
            let statement_timeout = statement_timeout.clone();
            Box::pin(async move {
                conn.execute("DEALLOCATE ALL").await?;
                sqlx::query(
                    "SELECT set_config('search_path', $1, false), \
                     set_config('statement_timeout', $2, false)",
                )
                .bind(search_path)
                .bind(statement_timeout)
                .execute(conn)
                .await
                .map(drop)
            })
        })
    }

    /// A pool that opens its connections when first needed, so that a client starts while
    /// the database is away.
    pub fn connect_lazy(&self, options: PgConnectOptions, settings: &PoolSettings) -> PgPool {
        self.pool_options(settings)
            .connect_lazy_with(options.application_name(self.application_name))
    }

    /// A pool with its first connection open: fails at once when the database is away.
    pub async fn connect(
        &self,
        options: PgConnectOptions,
        settings: &PoolSettings,
    ) -> Result<PgPool, sqlx::Error> {
        self.pool_options(settings)
            .connect_with(options.application_name(self.application_name))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(schema: &str, search_path: SearchPath) -> Session {
        Session {
            application_name: "test",
            schema: schema.into(),
            search_path,
            statement_timeout: None,
        }
    }

    #[test]
    fn the_schema_is_quoted_as_an_identifier_and_public_follows_only_when_asked() {
        assert_eq!(
            session("stack_a", SearchPath::StackSchema).search_path_value(),
            r#""stack_a""#
        );
        assert_eq!(
            session("stack_a", SearchPath::StackSchemaThenPublic).search_path_value(),
            r#""stack_a", public"#
        );
        assert_eq!(
            session(r#"a"; DROP TABLE x; --"#, SearchPath::StackSchema).search_path_value(),
            r#""a""; DROP TABLE x; --""#
        );
    }

    #[test]
    fn no_statement_timeout_is_set_explicitly_as_zero() {
        let mut session = session("s", SearchPath::StackSchema);
        assert_eq!(session.statement_timeout_value(), "0");
        session.statement_timeout = Some(Duration::from_secs(10));
        assert_eq!(session.statement_timeout_value(), "10000ms");
    }
}
