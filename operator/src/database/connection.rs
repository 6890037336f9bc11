//! Connecting to the stack's database with the operator's pool settings and the stack's TLS.

use std::str::FromStr;

use metricsstack_common::database::{
    ConnectFailure, DatabaseTls, PoolSettings, Pooler, SearchPath, Session,
};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

/// What went wrong talking to the database. Messages never contain the connection URI, the
/// password, or more of the server's error than a short cause.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The Secret's value is not a PostgreSQL connection URI.
    #[error("the connection URI in the Secret is not a valid postgres:// URI")]
    InvalidUri,
    /// No connection could be opened (network, TLS, credentials).
    #[error("cannot connect to the database: {cause}{}", tls_hint(cause))]
    Unreachable {
        /// Why, in a few words.
        cause: ConnectFailure,
        /// sqlx's error, for the log.
        #[source]
        source: sqlx::Error,
    },
    /// Another stack manages the schema.
    #[error(
        "schema {schema:?} of this database is managed by the MetricsStack {other}: give this \
         stack another spec.database.schema (stacks cannot share one), or delete {other} (if \
         it is gone, it was deleted with deletionPolicy Retain: `DELETE FROM \
         \"{schema}\"._metricsstack_owner` hands the schema over)"
    )]
    Conflict {
        /// The schema.
        schema: String,
        /// The stack that manages it, `namespace/name`.
        other: String,
    },
    /// A plain metric table holds too many rows to convert in place.
    #[error(
        "table {schema}.{table} already holds rows ({rows}) and is not a hypertable: converting \
         it in place moves every row under a lock that blocks the collectors' inserts, so the \
         operator converts only tables it can move within the lock timeout. Convert it in a \
         quiet period (collectors spool what they cannot write meanwhile): `SELECT \
         create_hypertable('{schema}.{table}', by_range('timestamp', INTERVAL '{chunk_interval}'), \
         migrate_data => true)`; the operator carries on from there"
    )]
    MigrationNeeded {
        /// The schema.
        schema: String,
        /// The table.
        table: String,
        /// How many rows it holds, or a lower bound (`more than N`).
        rows: String,
        /// The chunk interval the spec asks for, as an interval literal.
        chunk_interval: String,
    },
    /// A statement failed.
    #[error("{context}: {source}")]
    Statement {
        /// What the operator was doing.
        context: String,
        /// The database's answer.
        #[source]
        source: sqlx::Error,
    },
}

impl DatabaseError {
    /// Wraps a failed statement with what the operator was doing.
    pub fn statement(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let context = context.into();
        move |source| Self::Statement { context, source }
    }

    /// Wraps an error of opening a connection, with its short cause.
    pub fn unreachable(source: sqlx::Error) -> Self {
        Self::Unreachable {
            cause: ConnectFailure::of(&source),
            source,
        }
    }

    /// Whether the connection failed over TLS: the certificate, the handshake, or a server
    /// and a `tlsMode` that disagree on TLS.
    pub fn is_tls_failure(&self) -> bool {
        matches!(self, Self::Unreachable { cause, .. } if !tls_hint(cause).is_empty())
    }
}

/// What the stack's owner can change when TLS towards the database failed, naming the
/// fields; empty for a failure that is not about TLS.
fn tls_hint(cause: &ConnectFailure) -> &'static str {
    match cause {
        ConnectFailure::UnknownCa => {
            ": set spec.database.caRef to the CA that signed the server's certificate"
        }
        ConnectFailure::WrongHostName(_) => {
            ": connect by a host name the certificate names (the URI's host), or set \
                 spec.database.tlsMode to VerifyCa to check the CA alone"
        }
        ConnectFailure::Certificate(_) | ConnectFailure::Handshake(_) => {
            ": check the server's certificate and spec.database.caRef"
        }
        ConnectFailure::CaCertificate(_) => {
            ": spec.database.caRef must name a PEM file of one or more certificates"
        }
        ConnectFailure::TlsUnsupported => {
            ": enable TLS on the server, or set spec.database.tlsMode to Prefer or Disable"
        }
        ConnectFailure::TlsRequired => {
            ": set spec.database.tlsMode to Require, VerifyCa or VerifyFull"
        }
        _ => "",
    }
}

/// What the operator learns about a database when it connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseInfo {
    /// The TimescaleDB extension's version, if it is installed.
    pub timescaledb_version: Option<String>,
}

/// Opens a pool to the database at `uri` with the operator's pool settings and the stack's
/// TLS, its sessions set up as every client's are ([`Session`]); the operator's search path
/// ends with `public`, where TimescaleDB's functions live.
pub async fn connect(
    uri: &str,
    tls: &DatabaseTls,
    pool: &PoolSettings,
    schema: &str,
) -> Result<PgPool, DatabaseError> {
    let options = PgConnectOptions::from_str(uri).map_err(|_| DatabaseError::InvalidUri)?;
    Session {
        application_name: "metricsstack-operator",
        schema: schema.to_owned(),
        search_path: SearchPath::StackSchemaThenPublic,
        statement_timeout: None,
        // Advisory locks, session settings and migrations need a session of their own.
        pooler: Pooler::None,
    }
    .connect(tls.apply(options), pool)
    .await
    .map_err(|error| {
        // sqlx's error, PostgreSQL's text included, goes to the log only (it never holds the
        // URI); the status gets the short cause.
        tracing::warn!(%error, "connecting to the database failed");
        DatabaseError::unreachable(error)
    })
}

/// Checks that the database answers and reads what the operator needs to know of it.
pub async fn probe(pool: &PgPool) -> Result<DatabaseInfo, DatabaseError> {
    let timescaledb_version = sqlx::query_scalar::<_, String>(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
    )
    .fetch_optional(pool)
    .await
    .map_err(DatabaseError::unreachable)?;
    Ok(DatabaseInfo {
        timescaledb_version,
    })
}

/// The schema migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Applies the pending schema migrations in the stack's `schema` (which must exist: it is
/// first on the pool's search path, so sqlx's bookkeeping table and the metric tables are
/// created there); returns the latest version. An up-to-date schema is only read, never
/// written.
///
/// The bookkeeping table is looked up in the stack's schema by name, not through the search
/// path: the operator's path ends with `public`, and another stack's `_sqlx_migrations` there
/// must not make this stack's schema look migrated.
pub async fn migrate(pool: &PgPool, schema: &str) -> Result<i64, DatabaseError> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let table = format!("\"{}\"._sqlx_migrations", schema.replace('"', "\"\""));
    let recorded: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(pool)
        .await
        .map_err(DatabaseError::statement("looking for the migrations table"))?;
    let current: Option<i64> = if recorded {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT max(version) FROM {table} WHERE success"
        )))
        .fetch_one(pool)
        .await
        .map_err(DatabaseError::statement("reading the applied migrations"))?
    } else {
        None
    };
    if current == Some(latest) {
        return Ok(latest);
    }
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| DatabaseError::Statement {
            context: "applying the schema migrations".into(),
            source: e.into(),
        })?;
    Ok(latest)
}
