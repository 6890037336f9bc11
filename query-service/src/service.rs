//! The query service itself: the database side (the pool, set up through
//! `metricsstack_common::database::Session`, the hourly aggregates, looked up again every
//! few minutes, and the readiness check), the answer cache, and serving the routes until
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tracing::Instrument as _;
use warp::Filter as _;
use warp::filters::BoxedFilter;
use warp::http::{Response, StatusCode};
use warp::path::FullPath;

use crate::cache::{Cache, Policy};
use crate::filters::{Part, PartKey};
use crate::http::Answer;
use crate::metrics::Metrics;
use crate::queries::{self, Aggregates};
use metricsstack_common::access::{Access, AccessPolicy};
use metricsstack_common::admin::{self, ReadinessCheck};
use metricsstack_common::config::{QueryServiceConfig, StackIdentity};
use metricsstack_common::database::{SearchPath, Session};

/// Every database statement is cancelled by the server after this long.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `/readyz` waits for the database.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// What `/readyz` answers when the database does not and nothing is cached to serve; the
/// error itself is logged.
pub const DATABASE_UNREACHABLE: &str = "database unreachable";
/// What `/readyz` answers (200) when the database does not but cached answers stand in:
/// ready, and saying why the answers may be stale.
pub const SERVING_CACHED: &str = "ready: serving cached answers, the database is unreachable";
/// Database queries of answers that may run (or wait for a connection) at once, per
/// connection of the pool: a request needing one more is shed with `503` and `Retry-After`
/// (unless a stale answer stands in), so that the pool's queue stays short instead of
/// growing with hostile or bursting load until requests time out in it.
pub const QUERIES_PER_CONNECTION: usize = 2;
/// Database queries that may run (or wait) at once however small the pool: two whole batches
/// (one cold dashboard's parts, and another view's or viewer's besides). Without this floor a
/// one- or two-connection pool shed part of a single cold batch, or the trends view's query
/// beside a batch refresh.
pub const MIN_QUERIES: usize = 2 * Part::BATCH.len();
/// How often the hourly aggregates are looked up again.
pub const AGGREGATE_RECHECK: Duration = Duration::from_secs(300);
/// How soon a failed look-up of the aggregates is retried.
pub const AGGREGATE_RETRY: Duration = Duration::from_secs(30);

/// A database query that failed, shared by every request that waited for it.
#[derive(Clone, Debug, thiserror::Error)]
#[error("database query failed: {0}")]
pub struct QueryError(Arc<sqlx::Error>);

/// What kind of failure `error` is, from a fixed set small enough for a metric label:
/// `statement_timeout`, `connection`, `authentication`, `schema` (a relation or column
/// missing: a schema older than the service), `resources`, `pool_timeout`, `database` (any
/// other error the server reported) or `other`.
pub fn failure_kind(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::Database(error) => match error.code().as_deref() {
            Some("57014") => "statement_timeout",
            Some(code) if code.starts_with("08") => "connection",
            Some(code) if code.starts_with("28") => "authentication",
            Some(code) if code.starts_with("42") => "schema",
            Some(code) if code.starts_with("53") => "resources",
            _ => "database",
        },
        sqlx::Error::PoolTimedOut => "pool_timeout",
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed => "connection",
        _ => "other",
    }
}

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// `DATABASE_URL` does not parse.
    #[error("invalid database URL: {0}")]
    DatabaseUrl(#[source] sqlx::Error),
    /// The listen address does not parse.
    #[error("invalid listen address {address:?}: {source}")]
    ListenAddress {
        /// The address as configured.
        address: String,
        /// Why it does not parse.
        source: std::net::AddrParseError,
    },
    /// The listen address cannot be bound.
    #[error("binding {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// The database side of the service: the pool, the session its queries run as, the hourly
/// aggregates last found, and the metrics.
struct Database {
    pool: PgPool,
    session: Session,
    aggregates: RwLock<Aggregates>,
    metrics: Arc<Metrics>,
    /// The database answered the last readiness probe (true until one says otherwise).
    up: AtomicBool,
}

impl Database {
    fn aggregates(&self) -> Aggregates {
        *self.aggregates.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `statement` for `key` in a transaction of its own (behind PgBouncer in
    /// transaction mode, the statement's round trips stay on one server connection).
    async fn query(
        &self,
        statement: queries::Statement,
        key: &PartKey,
    ) -> Result<Vec<u8>, sqlx::Error> {
        let mut transaction = self.session.begin(&self.pool).await?;
        let body = queries::run(&mut *transaction, statement, key).await?;
        transaction.commit().await?;
        Ok(body)
    }

    /// Queries one part: the cache's source.
    async fn answer(self: Arc<Self>, key: PartKey) -> Result<Answer, QueryError> {
        let statement = queries::statement(&key, self.aggregates());
        let span = tracing::info_span!(
            "database_query",
            part = statement.part.name(),
            source = statement.source.as_str(),
        );
        let started = Instant::now();
        self.metrics.query_running(true);
        let result = self.query(statement, &key).instrument(span).await;
        self.metrics.query_running(false);
        let outcome = result.as_ref().map_or_else(failure_kind, |_| "ok");
        self.metrics.query(statement, started.elapsed(), outcome);
        match result {
            Ok(body) => Ok(Answer::new(body)),
            Err(error) => {
                tracing::warn!(%error, part = key.part.name(), outcome, "database query failed");
                Err(QueryError(Arc::new(error)))
            }
        }
    }
}

/// `/readyz`: the service can answer, from the database or from what it has cached: a
/// replica serving stale answers while the database is away stays in the Service, so that
/// stale-if-error reaches the clients. Only a replica that has neither is not ready. The
/// database's own health is the metric `database_up`, set by the same probe.
struct CanAnswer {
    database: Arc<Database>,
    cache: Cache<PartKey, Answer, QueryError>,
}

impl ReadinessCheck for CanAnswer {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            // A simple query: no prepared statement, fit for a transaction-mode pooler too.
            let probe = sqlx::raw_sql("SELECT 1").execute(&self.database.pool);
            let up = match tokio::time::timeout(READY_TIMEOUT, probe).await {
                Ok(Ok(_)) => true,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "the database query of the readiness probe failed");
                    false
                }
                Err(_) => {
                    tracing::warn!(
                        timeout = ?READY_TIMEOUT,
                        "the database did not answer the readiness probe in time"
                    );
                    false
                }
            };
            self.database.metrics.database_up(up);
            self.database.up.store(up, Ordering::Relaxed);
            let (cached, _) = self.cache.usage();
            if up || cached > 0 {
                Ok(())
            } else {
                Err(DATABASE_UNREACHABLE.to_owned())
            }
        })
    }
}

/// The query service: a database pool, the answer cache and the metrics, for the
/// MetricsStack its configuration names. Cloning it gives another handle on the same
/// service.
#[derive(Clone)]
pub struct QueryService {
    database: Arc<Database>,
    pub(crate) cache: Cache<PartKey, Answer, QueryError>,
    pub(crate) stack: Arc<StackIdentity>,
    pub(crate) access: AccessPolicy,
    /// What a caller needs to read this stack's data: `get` on its `metricsstacks/data`.
    pub(crate) data_access: Arc<Access>,
}

impl QueryService {
    /// A service reading the database at `database_url` (connections are opened when first
    /// needed, so the service starts while the database is away), answering whom `access`
    /// lets through.
    pub fn new(
        config: &QueryServiceConfig,
        database_url: &str,
        access: AccessPolicy,
    ) -> Result<Self, ServiceError> {
        let options: PgConnectOptions = database_url.parse().map_err(ServiceError::DatabaseUrl)?;
        let session = Session {
            application_name: "metricsstack-query-service",
            schema: config.schema.clone(),
            search_path: SearchPath::StackSchema,
            statement_timeout: Some(STATEMENT_TIMEOUT),
            pooler: config.database.pooler,
        };
        let options = config.database.connect_options(options);
        let pool = session.connect_lazy(options, &config.pool);
        let policy = Policy {
            fresh: Duration::from_secs(config.fresh_ttl_seconds),
            stale_while_revalidate: Duration::from_secs(config.stale_while_revalidate_seconds),
            stale_if_error: Duration::from_secs(config.stale_if_error_seconds),
            max_entries: usize::try_from(config.max_entries).unwrap_or(usize::MAX),
            max_bytes: config.max_bytes,
            max_fetches: (QUERIES_PER_CONNECTION
                * usize::try_from(config.pool.max_connections.max(1)).unwrap_or(usize::MAX))
            .max(MIN_QUERIES),
        };
        let metrics = Metrics::default();
        if let AccessPolicy::Kubernetes(kubernetes) = &access {
            metrics.register_access(kubernetes);
        }
        let database = Arc::new(Database {
            pool,
            session,
            aggregates: RwLock::new(Aggregates::default()),
            metrics: Arc::new(metrics),
            up: AtomicBool::new(true),
        });
        let source = database.clone();
        let cache = Cache::new(policy, move |key: &PartKey| {
            source.clone().answer(key.clone()).boxed()
        });
        let data_access = Access::stack_data(&config.stack.namespace, &config.stack.name);
        Ok(Self {
            database,
            cache,
            stack: Arc::new(config.stack.clone()),
            access,
            data_access: Arc::new(data_access),
        })
    }

    /// The answers cached (that may still be served) and their bytes.
    pub fn cache_usage(&self) -> (usize, u64) {
        self.cache.usage()
    }

    /// The service's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.database.metrics
    }

    /// `/healthz`, `/readyz` (the service can answer: 200 `ready` with the database,
    /// 200 [`SERVING_CACHED`] without it, 503 [`DATABASE_UNREACHABLE`] with neither) and
    /// `/metrics` (the service's metrics), as every MetricsStack program serves them.
    pub(crate) fn admin_routes(&self) -> BoxedFilter<(Response<Bytes>,)> {
        let can_answer = CanAnswer {
            database: self.database.clone(),
            cache: self.cache.clone(),
        };
        let database = self.database.clone();
        warp::path::full()
            .and(admin::routes(
                Arc::new(can_answer),
                self.database.metrics.clone(),
                self.access.clone(),
            ))
            .map(move |path: FullPath, mut response: Response<Bytes>| {
                let serving_cached = path.as_str() == "/readyz"
                    && response.status() == StatusCode::OK
                    && !database.up.load(Ordering::Relaxed);
                if serving_cached {
                    *response.body_mut() = Bytes::from_static(SERVING_CACHED.as_bytes());
                }
                response
            })
            .boxed()
    }

    /// The hourly aggregates the long windows read, as last looked up.
    pub fn aggregates(&self) -> Aggregates {
        self.database.aggregates()
    }

    /// Looks the hourly aggregates up again.
    pub async fn refresh_aggregates(&self) -> Result<Aggregates, sqlx::Error> {
        let database = &self.database;
        let mut transaction = database.session.begin(&database.pool).await?;
        let found = queries::detect_aggregates(&mut *transaction).await?;
        transaction.commit().await?;
        *self
            .database
            .aggregates
            .write()
            .unwrap_or_else(|e| e.into_inner()) = found;
        Ok(found)
    }

    /// Binds the configured listen address and serves until `shutdown` completes.
    pub async fn serve(
        self,
        config: &QueryServiceConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServiceError> {
        let address: SocketAddr =
            config
                .listen_address
                .parse()
                .map_err(|source| ServiceError::ListenAddress {
                    address: config.listen_address.clone(),
                    source,
                })?;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServiceError::Bind { address, source })?;
        let bound = listener.local_addr().unwrap_or(address);
        tracing::info!(address = %bound, "query service listening");
        self.run(listener, shutdown).await;
        Ok(())
    }

    /// Serves on `listener` until `shutdown` completes, looking the hourly aggregates up
    /// first (waiting at most the readiness timeout) and then every few minutes.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let first = tokio::time::timeout(READY_TIMEOUT, self.refresh_aggregates()).await;
        let mut wait = self.log_aggregates(first.ok());
        let watcher = self.clone();
        let recheck = tokio::spawn(async move {
            loop {
                tokio::time::sleep(wait).await;
                wait = watcher.log_aggregates(Some(watcher.refresh_aggregates().await));
            }
        });
        warp::serve(self.routes())
            .incoming(listener)
            .graceful(shutdown)
            .run()
            .await;
        recheck.abort();
    }

    /// Logs a look-up of the aggregates; the time until the next.
    fn log_aggregates(&self, outcome: Option<Result<Aggregates, sqlx::Error>>) -> Duration {
        match outcome {
            Some(Ok(found)) => {
                tracing::debug!(?found, "hourly aggregates looked up");
                AGGREGATE_RECHECK
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "looking up the hourly aggregates failed; retrying");
                AGGREGATE_RETRY
            }
            None => {
                tracing::warn!("looking up the hourly aggregates timed out; retrying");
                AGGREGATE_RETRY
            }
        }
    }
}
