//! The service's routes and their handlers: the batch and the four single parts answered
//! from the cache, the health, readiness and metrics endpoints, the OpenAPI document, and
//! the answer to a request no route takes.

use std::convert::Infallible;

use bytes::{BufMut as _, Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use warp::Filter;
use warp::http::{Response, StatusCode, header};

use crate::cache::{CacheError, Lookup};
use crate::filters::{Part, PartKey, RawFilters};
use crate::http::{
    Answer, Freshness, bad_request, cached, error_json, json, read_body, unavailable,
};
use crate::service::{QueryError, QueryService, READY_TIMEOUT};
use metricsstack_common::admin::RenderMetrics as _;

/// The OpenAPI 3 document of this service.
pub const OPENAPI_YAML: &str = include_str!("openapi.yaml");

impl QueryService {
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
                let text = service.metrics().render();
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
            self.metrics().lookup(lookup.status, lookup.coalesced);
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
        self.metrics().request(endpoint, response.status().as_u16());
        response
    }
}
