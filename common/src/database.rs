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
//!
//! Through PgBouncer in transaction mode ([`Pooler::PgBouncerTransaction`]) a client
//! connection is no session: each transaction may run on another server connection, and
//! whatever a session sets outlives it on a server that other clients use next. There, a
//! connection sets up nothing; every unit of work is a transaction ([`Session::begin`]) that
//! first drops the prepared statements a server connection still holds and sets the search
//! path and the statement timeout for itself alone (`SET LOCAL`), and sqlx keeps no statement
//! cache (a cached statement lives on one server connection only).
//!
//! TLS towards the database is mapped to sqlx here, once, for every client ([`DatabaseTls`]),
//! and a failed connection is described here in a few words fit for a status condition or
//! a log line ([`ConnectFailure`]), never with the URI or the password.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{AssertSqlSafe, Executor as _, PgPool, Postgres, Transaction};

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

/// TLS towards the database, as PostgreSQL's `sslmode`; ordered from the least to the most
/// checked.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize,
)]
pub enum TlsMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, certificate not verified.
    #[default]
    Prefer,
    /// TLS required, certificate not verified.
    Require,
    /// TLS required, certificate verified against the trusted CAs; any host name.
    VerifyCa,
    /// TLS required, certificate verified against the trusted CAs and the host name.
    VerifyFull,
}

impl TlsMode {
    /// Whether the server's certificate is checked against the trusted CAs: only then is a
    /// CA certificate of any use.
    pub fn verifies_certificate(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }

    /// The mode a connection URI's `sslmode` asks for, when it asks for TLS explicitly
    /// (`require` or stronger): `prefer` cannot be told apart from no `sslmode` at all.
    fn required_by(options: &PgConnectOptions) -> Option<Self> {
        match options.get_ssl_mode() {
            PgSslMode::Require => Some(Self::Require),
            PgSslMode::VerifyCa => Some(Self::VerifyCa),
            PgSslMode::VerifyFull => Some(Self::VerifyFull),
            PgSslMode::Disable | PgSslMode::Allow | PgSslMode::Prefer => None,
        }
    }

    fn ssl_mode(self) -> PgSslMode {
        match self {
            Self::Disable => PgSslMode::Disable,
            Self::Prefer => PgSslMode::Prefer,
            Self::Require => PgSslMode::Require,
            Self::VerifyCa => PgSslMode::VerifyCa,
            Self::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

/// The certificate of a CA that signs the database server's certificate (PEM; several
/// certificates may follow each other).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum CaCertificate {
    /// A file the client reads when it connects: a component's mounted CA.
    File(PathBuf),
    /// The certificate itself: what the operator read from the stack's Secret or ConfigMap.
    Pem(Vec<u8>),
}

impl fmt::Debug for CaCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Pem(pem) => write!(f, "Pem({} bytes)", pem.len()),
        }
    }
}

/// TLS towards the database for one client: the mode and, for the modes that verify the
/// server's certificate, a CA trusted beside the roots built into the binary (Mozilla's,
/// from `webpki-roots`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DatabaseTls {
    /// How much TLS is required and checked.
    pub mode: TlsMode,
    /// The CA that signs the server's certificate; `None`: the built-in roots alone.
    pub ca: Option<CaCertificate>,
}

impl DatabaseTls {
    /// `options` with this TLS: this mode, unless the connection URI's `sslmode` requires
    /// more (`require` or stronger), so that neither setting silently weakens the other; and
    /// this CA, in place of the URI's `sslrootcert`, when there is one.
    pub fn apply(&self, options: PgConnectOptions) -> PgConnectOptions {
        let mode = TlsMode::required_by(&options).map_or(self.mode, |uri| uri.max(self.mode));
        let options = options.ssl_mode(mode.ssl_mode());
        match &self.ca {
            None => options,
            Some(CaCertificate::File(path)) => options.ssl_root_cert(path),
            Some(CaCertificate::Pem(pem)) => options.ssl_root_cert_from_pem(pem.clone()),
        }
    }
}

/// Why a connection to the database could not be opened, in a few words fit for a status
/// condition or a log line: never the URI, the password, or the server's full error text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectFailure {
    /// The server's certificate is signed by none of the trusted CAs.
    #[error(
        "certificate verify failed: unknown CA (the server's certificate is signed by none of \
         the trusted CAs)"
    )]
    UnknownCa,
    /// The server's certificate does not name the host the client connected to.
    #[error("certificate verify failed: {0}")]
    WrongHostName(String),
    /// The server's certificate was refused for another reason (expired, not yet valid, ...).
    #[error("certificate verify failed: {0}")]
    Certificate(String),
    /// The CA certificate given to the client is not usable.
    #[error("the CA certificate is not usable: {0}")]
    CaCertificate(String),
    /// The TLS handshake failed for a reason other than the certificate.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// TLS is required, and the server does not offer it.
    #[error("the server does not offer TLS")]
    TlsUnsupported,
    /// The server accepts this client only over TLS.
    #[error("the server refuses connections without TLS")]
    TlsRequired,
    /// The server refused the connection (credentials, database, limits), by SQLSTATE.
    #[error("the server refused the connection: {reason} (SQLSTATE {code})")]
    Refused {
        /// The SQLSTATE.
        code: String,
        /// What the SQLSTATE means.
        reason: &'static str,
    },
    /// The server could not be reached over the network.
    #[error("the server cannot be reached: {0}")]
    Network(String),
    /// No connection could be opened in time.
    #[error("no connection could be opened in time")]
    TimedOut,
    /// Anything else, as sqlx describes it.
    #[error("{0}")]
    Other(String),
}

impl ConnectFailure {
    /// Describes an error of opening a connection.
    pub fn of(error: &sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(io) => match io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => Self::of_tls(tls),
                None => Self::Network(io.kind().to_string()),
            },
            sqlx::Error::Tls(inner) => match inner.downcast_ref::<rustls::Error>() {
                Some(tls) => Self::of_tls(tls),
                None if inner.to_string() == "server does not support TLS" => Self::TlsUnsupported,
                None if inner.to_string().starts_with("Invalid certificate") => {
                    Self::CaCertificate(inner.to_string())
                }
                None => Self::Handshake(inner.to_string()),
            },
            sqlx::Error::Database(database) => {
                let code = database.code().unwrap_or_default().into_owned();
                let message = database.message();
                let without_tls =
                    message.ends_with("no encryption") || message.ends_with("SSL off");
                if code == "28000" && without_tls {
                    return Self::TlsRequired;
                }
                let reason = match code.as_str() {
                    "28P01" => "password authentication failed",
                    "28000" => "the server's pg_hba.conf does not admit this connection",
                    "3D000" => "the database does not exist",
                    "53300" => "too many connections",
                    "57P03" => "the server is starting up or shutting down",
                    _ => "see the server's log",
                };
                Self::Refused { code, reason }
            }
            sqlx::Error::PoolTimedOut => Self::TimedOut,
            other => Self::Other(other.to_string()),
        }
    }

    fn of_tls(error: &rustls::Error) -> Self {
        use rustls::CertificateError;
        match error {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Self::UnknownCa,
            rustls::Error::InvalidCertificate(
                name @ (CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. }),
            ) => Self::WrongHostName(name.to_string()),
            rustls::Error::InvalidCertificate(other) => Self::Certificate(other.to_string()),
            other => Self::Handshake(other.to_string()),
        }
    }
}

/// What stands between a client and PostgreSQL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum Pooler {
    /// Nothing, or a pooler in session mode: each client connection is a PostgreSQL session
    /// of its own while it is open.
    #[default]
    None,
    /// PgBouncer (any version) in transaction mode: a client connection holds a server
    /// connection only during a transaction. Connections set up nothing, every unit of work
    /// is a transaction that sets itself up, and no prepared statement outlives it.
    PgBouncerTransaction,
}

impl Pooler {
    /// Whether there is no transaction-mode pooler (what an absent setting means).
    pub fn is_none(&self) -> bool {
        *self == Self::None
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
    /// What stands between the client and PostgreSQL.
    pub pooler: Pooler,
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

    /// What begins a unit of work ([`Session::begin`]): `BEGIN`, and behind a
    /// transaction-mode pooler also the set-up of this transaction alone.
    pub fn begin_statement(&self) -> String {
        match self.pooler {
            Pooler::None => "BEGIN".to_owned(),
            Pooler::PgBouncerTransaction => format!(
                "BEGIN; DEALLOCATE ALL; SET LOCAL search_path TO {}; \
                 SET LOCAL statement_timeout TO '{}'",
                self.search_path_value(),
                self.statement_timeout_value()
            ),
        }
    }

    /// Begins a unit of work on `pool`: a transaction set up as this session, in one round
    /// trip. Behind a transaction-mode pooler the data plane runs every statement in one.
    pub async fn begin(
        &self,
        pool: &PgPool,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        match self.pooler {
            Pooler::None => pool.begin().await,
            Pooler::PgBouncerTransaction => {
                pool.begin_with(AssertSqlSafe(self.begin_statement())).await
            }
        }
    }

    /// `options` with what this session's pooler needs: behind a transaction-mode pooler,
    /// no statement cache.
    fn connect_options(&self, options: PgConnectOptions) -> PgConnectOptions {
        let options = options.application_name(self.application_name);
        match self.pooler {
            Pooler::None => options,
            Pooler::PgBouncerTransaction => options.statement_cache_capacity(0),
        }
    }

    /// `settings` as sqlx pool options whose every new connection is set up as this session
    /// (behind a transaction-mode pooler: not at all, see [`Session::begin`]).
    pub fn pool_options(&self, settings: &PoolSettings) -> PgPoolOptions {
        if self.pooler == Pooler::PgBouncerTransaction {
            return settings.pool_options();
        }
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
            .connect_lazy_with(self.connect_options(options))
    }

    /// A pool with its first connection open: fails at once when the database is away.
    pub async fn connect(
        &self,
        options: PgConnectOptions,
        settings: &PoolSettings,
    ) -> Result<PgPool, sqlx::Error> {
        self.pool_options(settings)
            .connect_with(self.connect_options(options))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_mode_applies_unless_the_uri_requires_more() {
        let tls = |mode| DatabaseTls { mode, ca: None };
        let uri = |query: &str| -> PgConnectOptions {
            format!("postgres://u:p@db.example/metrics{query}")
                .parse()
                .expect("a URI")
        };
        let mode = |tls: DatabaseTls, options| tls.apply(options).get_ssl_mode();
        assert!(matches!(
            mode(tls(TlsMode::Disable), uri("")),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode(tls(TlsMode::VerifyFull), uri("?sslmode=require")),
            PgSslMode::VerifyFull
        ));
        assert!(matches!(
            mode(tls(TlsMode::Disable), uri("?sslmode=prefer")),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode(tls(TlsMode::Prefer), uri("?sslmode=verify-full")),
            PgSslMode::VerifyFull
        ));
        assert!(matches!(
            mode(tls(TlsMode::Require), uri("?sslmode=verify-ca")),
            PgSslMode::VerifyCa
        ));
    }

    fn session(schema: &str, search_path: SearchPath) -> Session {
        Session {
            application_name: "test",
            schema: schema.into(),
            search_path,
            statement_timeout: None,
            pooler: Pooler::None,
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
    fn behind_a_transaction_mode_pooler_each_transaction_sets_itself_up() {
        let mut session = session(r#"a"b"#, SearchPath::StackSchema);
        assert_eq!(session.begin_statement(), "BEGIN");
        session.pooler = Pooler::PgBouncerTransaction;
        session.statement_timeout = Some(Duration::from_secs(10));
        assert_eq!(
            session.begin_statement(),
            r#"BEGIN; DEALLOCATE ALL; SET LOCAL search_path TO "a""b"; SET LOCAL statement_timeout TO '10000ms'"#
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
