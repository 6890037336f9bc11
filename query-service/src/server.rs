//! The HTTP side of the query service: the dashboard endpoints answered from the cache, the
//! health, readiness and metrics endpoints, and the OpenAPI document.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut as _, Bytes, BytesMut};
use futures::{FutureExt as _, Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use warp::Filter;
use warp::http::{HeaderValue, Response, StatusCode, header};

use crate::cache::{Cache, CacheError, Lookup, Policy, Status, Weigh};
use crate::filters::{InvalidInput, Part, PartKey, RawFilters};
use crate::metrics::Metrics;
use crate::queries::{self, Aggregates};
use metricsstack_common::admin::RenderMetrics as _;
use metricsstack_common::config::QueryServiceConfig;
use metricsstack_common::database::{SearchPath, Session};

/// Largest batch request body, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Every database statement is cancelled by the server after this long.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `/readyz` waits for the database.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the hourly aggregates are looked up again.
pub const AGGREGATE_RECHECK: Duration = Duration::from_secs(300);
/// How soon a failed look-up of the aggregates is retried.
pub const AGGREGATE_RETRY: Duration = Duration::from_secs(30);

/// The OpenAPI 3 document of this service.
pub const OPENAPI_YAML: &str = include_str!("openapi.yaml");

/// A database query that failed, shared by every request that waited for it.
#[derive(Clone, Debug, thiserror::Error)]
#[error("database query failed: {0}")]
pub struct QueryError(Arc<sqlx::Error>);

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

/// One cached part answer: its JSON body and strong ETag (quoted).
#[derive(Clone, Debug)]
pub struct Answer {
    body: Bytes,
    etag: Arc<str>,
}

impl Answer {
    fn new(body: Vec<u8>) -> Self {
        let etag = format!("\"{:x}\"", Sha256::digest(&body));
        Self {
            body: body.into(),
            etag: etag.into(),
        }
    }
}

impl Weigh for Answer {
    fn weight(&self) -> u64 {
        (self.body.len() + self.etag.len()) as u64
    }
}

/// The database side of the service: the pool, the hourly aggregates last found, and the
/// metrics.
struct Database {
    pool: PgPool,
    aggregates: RwLock<Aggregates>,
    metrics: Metrics,
}

impl Database {
    fn aggregates(&self) -> Aggregates {
        *self.aggregates.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Queries one part: the cache's source.
    async fn answer(self: Arc<Self>, key: PartKey) -> Result<Answer, QueryError> {
        let statement = queries::statement(&key, self.aggregates());
        let started = Instant::now();
        let result = queries::run(&self.pool, statement, &key).await;
        self.metrics
            .query(statement, started.elapsed(), result.is_ok());
        match result {
            Ok(body) => Ok(Answer::new(body)),
            Err(error) => {
                tracing::warn!(%error, part = key.part.name(), "database query failed");
                Err(QueryError(Arc::new(error)))
            }
        }
    }
}

/// The query service: a database pool, the answer cache and the metrics. Cloning it gives
/// another handle on the same service.
#[derive(Clone)]
pub struct QueryService {
    database: Arc<Database>,
    cache: Cache<PartKey, Answer, QueryError>,
}

impl QueryService {
    /// A service reading the database at `database_url` (connections are opened when first
    /// needed, so the service starts while the database is away).
    pub fn new(config: &QueryServiceConfig, database_url: &str) -> Result<Self, ServiceError> {
        let options: PgConnectOptions = database_url.parse().map_err(ServiceError::DatabaseUrl)?;
        let session = Session {
            application_name: "metricsstack-query-service",
            schema: config.schema.clone(),
            search_path: SearchPath::StackSchema,
            statement_timeout: Some(STATEMENT_TIMEOUT),
        };
        let pool = session.connect_lazy(options, &config.pool);
        let policy = Policy {
            fresh: Duration::from_secs(config.fresh_ttl_seconds),
            stale_while_revalidate: Duration::from_secs(config.stale_while_revalidate_seconds),
            stale_if_error: Duration::from_secs(config.stale_if_error_seconds),
            max_entries: usize::try_from(config.max_entries).unwrap_or(usize::MAX),
            max_bytes: config.max_bytes,
        };
        let database = Arc::new(Database {
            pool,
            aggregates: RwLock::new(Aggregates::default()),
            metrics: Metrics::default(),
        });
        let source = database.clone();
        let cache = Cache::new(policy, move |key: &PartKey| {
            source.clone().answer(key.clone()).boxed()
        });
        Ok(Self { database, cache })
    }

    /// The service's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.database.metrics
    }

    /// The hourly aggregates the long windows read, as last looked up.
    pub fn aggregates(&self) -> Aggregates {
        self.database.aggregates()
    }

    /// Looks the hourly aggregates up again.
    pub async fn refresh_aggregates(&self) -> Result<Aggregates, sqlx::Error> {
        let found = queries::detect_aggregates(&self.database.pool).await?;
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

    /// Every route of the service.
    pub fn routes(
        &self,
    ) -> impl Filter<Extract = (Response<Bytes>,), Error = Infallible> + Clone + Send + Sync + 'static
    {
        let service = self.clone();
        let with = warp::any().map(move || service.clone());
        let query = warp::query::raw().or(warp::any().map(String::new)).unify();
        let if_none_match = warp::header::optional::<String>("if-none-match");
        let part =
            |segments: &'static str, part: Part| {
                let route = match segments {
                    "host-process-metrics" => warp::path!("api" / "host-process-metrics").boxed(),
                    "host-overall-metrics" => warp::path!("api" / "host-overall-metrics").boxed(),
                    "top-processes" => warp::path!("api" / "dashboard" / "top-processes").boxed(),
                    _ => warp::path!("api" / "vm-metrics").boxed(),
                };
                route
                .and(warp::get())
                .and(with.clone())
                .and(query)
                .and(if_none_match)
                .then(move |service: QueryService, query: String, inm: Option<String>| async move {
                    service.single(part, &query, inm.as_deref()).await
                })
            };
        let batch = warp::path!("api" / "dashboard" / "batch")
            .and(warp::post())
            .and(with.clone())
            .and(warp::header::optional::<String>("content-length"))
            .and(warp::body::stream())
            .and(if_none_match)
            .then(
                |service: QueryService,
                 length: Option<String>,
                 body,
                 inm: Option<String>| async move {
                    match read_body(length.as_deref(), body).await {
                        Ok(body) => service.batch(&body, inm.as_deref()).await,
                        Err(invalid) => service.record("batch", bad_request(&invalid)),
                    }
                },
            );
        let healthz = warp::path!("healthz")
            .and(warp::get())
            .and(with.clone())
            .map(|service: QueryService| {
                service.record("healthz", json(StatusCode::OK, r#"{"status":"ok"}"#.into()))
            });
        let readyz = warp::path!("readyz")
            .and(warp::get())
            .and(with.clone())
            .then(|service: QueryService| async move { service.ready().await });
        let metrics = warp::path!("metrics")
            .and(warp::get())
            .and(with.clone())
            .map(|service: QueryService| {
                let text = service.database.metrics.render();
                let response = Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Bytes::from(text))
                    .expect("a valid response");
                service.record("metrics", response)
            });
        let openapi = warp::path!("openapi.yaml")
            .and(warp::get())
            .and(with.clone())
            .map(|service: QueryService| {
                let response = Response::builder()
                    .header(header::CONTENT_TYPE, "application/yaml")
                    .body(Bytes::from_static(OPENAPI_YAML.as_bytes()))
                    .expect("a valid response");
                service.record("openapi", response)
            });
        let rejections = self.clone();
        batch
            .or(part("host-process-metrics", Part::HostProcessMetrics))
            .unify()
            .or(part("host-overall-metrics", Part::HostOverallMetrics))
            .unify()
            .or(part("top-processes", Part::TopProcesses))
            .unify()
            .or(part("vm-metrics", Part::VmMetrics))
            .unify()
            .or(healthz)
            .unify()
            .or(readyz)
            .unify()
            .or(metrics)
            .unify()
            .or(openapi)
            .unify()
            .recover(move |rejection: warp::Rejection| {
                let service = rejections.clone();
                async move { Ok::<_, Infallible>(service.rejected(&rejection)) }
            })
            .unify()
    }

    /// Answers one part: `GET /api/...` with the filters as query parameters.
    async fn single(
        &self,
        part: Part,
        query: &str,
        if_none_match: Option<&str>,
    ) -> Response<Bytes> {
        let endpoint = part.name();
        let filters = match RawFilters::from_query(query).and_then(RawFilters::validate) {
            Ok(filters) => filters,
            Err(invalid) => return self.record(endpoint, bad_request(&invalid)),
        };
        let response = match self.part(filters.key(part)).await {
            Ok(lookup) => cached(
                &lookup.value.etag,
                lookup.value.body.clone(),
                Freshness::of(&lookup),
                self.cache.policy(),
                if_none_match,
            ),
            Err(error) => unavailable(&error),
        };
        self.record(endpoint, response)
    }

    /// Answers the whole dashboard: `POST /api/dashboard/batch` with the filters as a JSON
    /// body. The four parts are looked up (and, on a miss, queried) concurrently; the answer
    /// is as stale as its stalest part, and its ETag a hash of the parts' ETags.
    async fn batch(&self, body: &[u8], if_none_match: Option<&str>) -> Response<Bytes> {
        const ENDPOINT: &str = "batch";
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}".as_slice()
        } else {
            body
        };
        let filters = match RawFilters::from_json(body).and_then(RawFilters::validate) {
            Ok(filters) => filters,
            Err(invalid) => return self.record(ENDPOINT, bad_request(&invalid)),
        };
        let lookups =
            futures::future::join_all(Part::ALL.map(|part| self.part(filters.key(part)))).await;
        let mut parts = Vec::with_capacity(Part::ALL.len());
        for lookup in lookups {
            match lookup {
                Ok(lookup) => parts.push(lookup),
                Err(error) => return self.record(ENDPOINT, unavailable(&error)),
            }
        }
        let mut etag = Sha256::new();
        let mut length = 2;
        for (part, lookup) in Part::ALL.iter().zip(&parts) {
            etag.update(lookup.value.etag.as_bytes());
            length += part.name().len() + 4 + lookup.value.body.len();
        }
        let etag = format!("\"{:x}\"", etag.finalize());
        let freshness = parts
            .iter()
            .map(Freshness::of)
            .reduce(Freshness::worst)
            .expect("four parts");
        let mut composed = BytesMut::with_capacity(length);
        for (i, (part, lookup)) in Part::ALL.iter().zip(&parts).enumerate() {
            composed.put_slice(if i == 0 { b"{\"" } else { b",\"" });
            composed.put_slice(part.name().as_bytes());
            composed.put_slice(b"\":");
            composed.put_slice(&lookup.value.body);
        }
        composed.put_slice(b"}");
        let response = cached(
            &etag,
            composed.freeze(),
            freshness,
            self.cache.policy(),
            if_none_match,
        );
        self.record(ENDPOINT, response)
    }

    /// One part from the cache, or from the database on a miss.
    async fn part(&self, key: PartKey) -> Result<Lookup<Answer>, CacheError<QueryError>> {
        let lookup = self.cache.get(key).await;
        if let Ok(lookup) = &lookup {
            self.database
                .metrics
                .lookup(lookup.status, lookup.coalesced);
        }
        lookup
    }

    /// `/readyz`: the database answers a trivial query in time.
    async fn ready(&self) -> Response<Bytes> {
        let probe = sqlx::query("SELECT 1").execute(&self.database.pool);
        let response = match tokio::time::timeout(READY_TIMEOUT, probe).await {
            Ok(Ok(_)) => json(StatusCode::OK, r#"{"status":"ready"}"#.into()),
            Ok(Err(error)) => error_json(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("database unreachable: {error}"),
                None,
            ),
            Err(_) => error_json(
                StatusCode::SERVICE_UNAVAILABLE,
                "database unreachable: no answer in time",
                None,
            ),
        };
        self.record("readyz", response)
    }

    /// The answer to a request no route took.
    fn rejected(&self, rejection: &warp::Rejection) -> Response<Bytes> {
        use warp::reject::MethodNotAllowed;
        let response = if rejection.find::<MethodNotAllowed>().is_some() {
            error_json(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", None)
        } else if rejection.is_not_found() {
            error_json(StatusCode::NOT_FOUND, "not found", None)
        } else {
            error_json(StatusCode::BAD_REQUEST, "invalid request", None)
        };
        self.record("other", response)
    }

    fn record(&self, endpoint: &'static str, response: Response<Bytes>) -> Response<Bytes> {
        self.database
            .metrics
            .request(endpoint, response.status().as_u16());
        response
    }
}

/// How fresh an answer is, for its headers.
#[derive(Clone, Copy, Debug)]
struct Freshness {
    status: Status,
    age: Duration,
}

impl Freshness {
    fn of(lookup: &Lookup<Answer>) -> Self {
        Self {
            status: lookup.status,
            age: lookup.age,
        }
    }

    /// The freshness of an answer composed of two: the staler status, the older age.
    fn worst(self, other: Self) -> Self {
        let rank = |s: Status| match s {
            Status::Hit => 0,
            Status::Miss => 1,
            Status::Stale => 2,
        };
        Self {
            status: if rank(other.status) > rank(self.status) {
                other.status
            } else {
                self.status
            },
            age: self.age.max(other.age),
        }
    }
}

/// A cacheable JSON answer with its validators, or `304 Not Modified` when the client's
/// `If-None-Match` names its ETag. `max-age` is the whole freshness lifetime and `Age` the
/// seconds since the answer was fetched (RFC 9111), so an HTTP cache in front counts what
/// remains of it, and sees a stale answer (age at least `max-age`) as stale.
fn cached(
    etag: &str,
    body: Bytes,
    freshness: Freshness,
    policy: Policy,
    if_none_match: Option<&str>,
) -> Response<Bytes> {
    let not_modified = if_none_match.is_some_and(|inm| etag_matches(inm, etag));
    let mut builder = Response::builder()
        .status(if not_modified {
            StatusCode::NOT_MODIFIED
        } else {
            StatusCode::OK
        })
        .header(header::ETAG, etag)
        .header(
            header::CACHE_CONTROL,
            format!(
                "max-age={}, stale-while-revalidate={}, stale-if-error={}",
                policy.fresh.as_secs(),
                policy.stale_while_revalidate.as_secs(),
                policy.stale_if_error.as_secs()
            ),
        )
        .header(
            "x-cache",
            HeaderValue::from_static(freshness.status.as_str()),
        )
        .header(header::AGE, freshness.age.as_secs());
    if not_modified {
        return builder.body(Bytes::new()).expect("a valid response");
    }
    builder = builder.header(header::CONTENT_TYPE, "application/json");
    builder.body(body).expect("a valid response")
}

/// Whether an `If-None-Match` value (`*` or a list of entity tags) matches `etag`, by the
/// weak comparison RFC 9110 prescribes for it.
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// Reads a request body of at most [`MAX_BODY_BYTES`]: one announced larger is refused
/// without reading it, and one sent in chunks is refused as soon as it grows larger.
async fn read_body(
    content_length: Option<&str>,
    body: impl Stream<Item = Result<impl Buf, warp::Error>>,
) -> Result<Bytes, InvalidInput> {
    let too_large = || InvalidInput {
        error: format!("the body is larger than the limit of {MAX_BODY_BYTES} bytes"),
        field: "body".to_owned(),
    };
    if content_length
        .and_then(|length| length.trim().parse::<u64>().ok())
        .is_some_and(|length| length > MAX_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = std::pin::pin!(body);
    let mut read = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| InvalidInput {
            error: format!("reading the body failed: {error}"),
            field: "body".to_owned(),
        })?;
        if read.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        read.put(chunk);
    }
    Ok(read.freeze())
}

fn json(status: StatusCode, body: Bytes) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("a valid response")
}

fn error_json(status: StatusCode, error: &str, field: Option<&str>) -> Response<Bytes> {
    let body = match field {
        Some(field) => serde_json::json!({ "error": error, "field": field }),
        None => serde_json::json!({ "error": error }),
    };
    json(
        status,
        serde_json::to_vec(&body).expect("JSON serialises").into(),
    )
}

fn bad_request(invalid: &InvalidInput) -> Response<Bytes> {
    error_json(
        StatusCode::BAD_REQUEST,
        &invalid.error,
        Some(&invalid.field),
    )
}

fn unavailable(error: &CacheError<QueryError>) -> Response<Bytes> {
    let mut response = error_json(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("database unavailable: {error}"),
        None,
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let etag = "\"abc\"";
        assert!(etag_matches("\"abc\"", etag));
        assert!(etag_matches("W/\"abc\"", etag));
        assert!(etag_matches("\"x\", \"abc\"", etag));
        assert!(etag_matches("*", etag));
        assert!(!etag_matches("\"abd\"", etag));
        assert!(!etag_matches("abc", etag));
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_the_limit_whether_announced_or_chunked() {
        let chunks = |sizes: &[usize]| {
            let chunks: Vec<Result<Bytes, warp::Error>> = sizes
                .iter()
                .map(|size| Ok(Bytes::from(vec![b' '; *size])))
                .collect();
            futures::stream::iter(chunks)
        };
        let limit = MAX_BODY_BYTES;
        let whole = read_body(Some(&limit.to_string()), chunks(&[limit / 2, limit / 2])).await;
        assert_eq!(whole.expect("within the limit").len(), limit);
        let chunked = read_body(None, chunks(&[limit, 0])).await;
        assert_eq!(chunked.expect("within the limit").len(), limit);

        let announced = read_body(Some(&(limit + 1).to_string()), chunks(&[])).await;
        let chunked = read_body(None, chunks(&[limit / 2, limit / 2, 1])).await;
        for refused in [announced, chunked] {
            let invalid = refused.expect_err("larger than the limit");
            assert_eq!(invalid.field, "body");
            assert!(invalid.error.contains("16384 bytes"), "{}", invalid.error);
        }
    }

    #[test]
    fn a_composed_answer_is_as_stale_as_its_stalest_part() {
        let part = |status, age| Freshness {
            status,
            age: Duration::from_secs(age),
        };
        let worst = [
            part(Status::Hit, 3),
            part(Status::Miss, 0),
            part(Status::Hit, 1),
        ]
        .into_iter()
        .reduce(Freshness::worst)
        .unwrap();
        assert_eq!((worst.status, worst.age.as_secs()), (Status::Miss, 3));
        let stale = worst.worst(part(Status::Stale, 9));
        assert_eq!((stale.status, stale.age.as_secs()), (Status::Stale, 9));
    }

    #[test]
    fn headers_carry_freshness_and_a_matching_etag_gets_304() {
        let policy = Policy {
            fresh: Duration::from_secs(4),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(300),
            max_entries: 1,
            max_bytes: 1,
        };
        let freshness = Freshness {
            status: Status::Hit,
            age: Duration::from_millis(2500),
        };
        let ok = cached(
            "\"e\"",
            Bytes::from_static(b"{}"),
            freshness,
            policy,
            Some("\"other\""),
        );
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(
            ok.headers()[header::CACHE_CONTROL],
            "max-age=4, stale-while-revalidate=30, stale-if-error=300"
        );
        assert_eq!(ok.headers()["x-cache"], "HIT");
        assert_eq!(ok.headers()[header::AGE], "2");
        assert_eq!(ok.body().as_ref(), b"{}");
        let not_modified = cached(
            "\"e\"",
            Bytes::from_static(b"{}"),
            freshness,
            policy,
            Some("\"e\""),
        );
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(not_modified.headers()[header::ETAG], "\"e\"");
        assert_eq!(not_modified.headers()[header::AGE], "2");
        assert!(not_modified.body().is_empty());
    }
}
