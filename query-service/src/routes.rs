//! The service's routes and their handlers: the batch, the four single parts, the process
//! search, a pod's processes, a process's history and the nodes' history answered from the
//! cache, the OpenAPI document, the dashboard's page and assets, the common admin endpoints
//! (`/healthz`, `/readyz`, `/metrics`) mounted beside them, and the answer to a request no
//! route takes. Every request has a span of its own, and its answer is counted in the
//! request metrics by endpoint and status.

use std::convert::Infallible;

use bytes::{BufMut as _, Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use tracing::Span;
use warp::filters::BoxedFilter;
use warp::http::{Method, Response, StatusCode, header};
use warp::path::FullPath;
use warp::{Filter, Reply};

use crate::cache::{CacheError, Lookup};
use crate::dashboard;
use crate::filters::{
    InvalidInput, Part, PartKey, RawFilters, RawHistory, RawHostHistory, RawPod, RawSearch,
};
use crate::http::{Answer, Freshness, bad_request, cached, error_json, failed, read_body};
use crate::service::{QueryError, QueryService};
use metricsstack_common::config::StackIdentity;

/// Parses a GET part's query string into its cache key, or says which parameter is wrong.
type ParseKey = fn(&str, Part) -> Result<PartKey, InvalidInput>;

/// The OpenAPI 3 document of this service.
pub const OPENAPI_YAML: &str = include_str!("openapi.yaml");

impl QueryService {
    /// Every route of the service, each request in a span of its own: its method, endpoint
    /// and status, and the MetricsStack served.
    pub fn routes(
        &self,
    ) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone + Send + Sync + 'static
    {
        let service = self.clone();
        let with = warp::any().map(move || service.clone());
        let query = warp::query::raw().or(warp::any().map(String::new)).unify();
        let if_none_match = warp::header::optional::<String>("if-none-match");
        let authorization = warp::header::optional::<String>("authorization");
        // Every GET part: its parameters in the query string, parsed into a cache key by
        // `parse`, answered from the cache like the batch's parts.
        let get_part = |route: BoxedFilter<()>, part: Part, parse: ParseKey| {
            route
                .and(warp::get())
                .and(with.clone())
                .and(authorization)
                .and(query)
                .and(if_none_match)
                .then(
                    move |service: QueryService,
                          authorization: Option<String>,
                          query: String,
                          inm: Option<String>| async move {
                        match service.authorize(authorization.as_deref()).await {
                            Ok(()) => {
                                service
                                    .keyed(part, parse(&query, part), inm.as_deref())
                                    .await
                            }
                            Err(refused) => service.record(part.name(), refused),
                        }
                    },
                )
        };
        let filtered: ParseKey = |query, part| {
            RawFilters::from_query(query)
                .and_then(RawFilters::validate)
                .map(|filters| filters.key(part))
        };
        let search: ParseKey =
            |query, _| RawSearch::from_query(query).and_then(RawSearch::validate);
        let pod: ParseKey = |query, _| RawPod::from_query(query).and_then(RawPod::validate);
        let history: ParseKey =
            |query, _| RawHistory::from_query(query).and_then(RawHistory::validate);
        let host_history: ParseKey =
            |query, _| RawHostHistory::from_query(query).and_then(RawHostHistory::validate);
        let batch = warp::path!("api" / "dashboard" / "batch")
            .and(warp::post())
            .and(with.clone())
            .and(authorization)
            .and(warp::header::optional::<String>("content-length"))
            .and(warp::body::stream())
            .and(if_none_match)
            .then(
                |service: QueryService,
                 authorization: Option<String>,
                 length: Option<String>,
                 body,
                 inm: Option<String>| async move {
                    // Nothing of the body is read before the caller is let through.
                    if let Err(refused) = service.authorize(authorization.as_deref()).await {
                        return service.record("batch", refused);
                    }
                    match read_body(length.as_deref(), body).await {
                        Ok(body) => service.batch(&body, inm.as_deref()).await,
                        Err(invalid) => service.record("batch", bad_request(&invalid)),
                    }
                },
            );
        let openapi = warp::path!("openapi.yaml")
            .and(warp::get())
            .and(with.clone())
            .and(authorization)
            .then(
                |service: QueryService, authorization: Option<String>| async move {
                    if let Err(refused) = service.authorize(authorization.as_deref()).await {
                        return service.record("openapi", refused);
                    }
                    let response = Response::builder()
                        .header(header::CONTENT_TYPE, "application/yaml")
                        .body(Bytes::from_static(OPENAPI_YAML.as_bytes()))
                        .expect("a valid response");
                    service.record("openapi", response)
                },
            );
        // The dashboard's page and assets need no token: they hold no data (the page asks
        // the API for it, with the token the person gives), and the page must load to ask
        // for that token when the API answers 401.
        let shown = self.clone();
        let dashboard = warp::path::end()
            .map(|| "/".to_owned())
            .or(warp::path("assets")
                .and(warp::path::tail())
                .map(|tail: warp::path::Tail| format!("/assets/{}", tail.as_str())))
            .unify()
            .and(warp::get())
            .and(warp::header::optional::<String>("accept-encoding"))
            .and(if_none_match)
            .map(
                move |path: String, accept_encoding: Option<String>, inm: Option<String>| {
                    let response =
                        dashboard::respond(&path, accept_encoding.as_deref(), inm.as_deref());
                    shown.record("dashboard", response)
                },
            );
        let counted = self.clone();
        let admin = warp::path::full().and(self.admin_routes()).map(
            move |path: FullPath, response: Response<Bytes>| {
                counted.record(admin_endpoint(path.as_str()), response)
            },
        );
        let rejections = self.clone();
        let stack = self.stack.clone();
        // Boxed: a filter type nested this deep overflows the compiler's recursion limit
        // in release builds.
        let api = batch
            .or(get_part(
                warp::path!("api" / "host-process-metrics").boxed(),
                Part::HostProcessMetrics,
                filtered,
            ))
            .unify()
            .or(get_part(
                warp::path!("api" / "host-overall-metrics").boxed(),
                Part::HostOverallMetrics,
                filtered,
            ))
            .unify()
            .or(get_part(
                warp::path!("api" / "dashboard" / "top-processes").boxed(),
                Part::TopProcesses,
                filtered,
            ))
            .unify()
            .or(get_part(
                warp::path!("api" / "vm-metrics").boxed(),
                Part::VmMetrics,
                filtered,
            ))
            .unify()
            .or(get_part(
                warp::path!("api" / "process-search").boxed(),
                Part::ProcessSearch,
                search,
            ))
            .unify()
            .or(get_part(
                warp::path!("api" / "pod-processes").boxed(),
                Part::PodProcesses,
                pod,
            ))
            .unify()
            .or(get_part(
                warp::path!("api" / "process-history").boxed(),
                Part::ProcessHistory,
                history,
            ))
            .unify()
            .or(get_part(
                warp::path!("api" / "host-history").boxed(),
                Part::HostHistory,
                host_history,
            ))
            .unify()
            .boxed();
        api.or(openapi)
            .unify()
            .or(dashboard)
            .unify()
            .or(admin)
            .unify()
            .recover(move |rejection: warp::Rejection| {
                let service = rejections.clone();
                async move { Ok::<_, Infallible>(service.rejected(&rejection)) }
            })
            .unify()
            .with(warp::trace(move |request: warp::trace::Info<'_>| {
                request_span(&stack, request.method())
            }))
    }

    /// Lets a caller through to this stack's data, or answers why not (401, 403, or 503
    /// when the API server cannot be asked).
    async fn authorize(&self, authorization: Option<&str>) -> Result<(), Response<Bytes>> {
        self.access
            .check(authorization, &self.data_access)
            .await
            .map_err(|refusal| refusal.response())
    }

    /// Answers one cached part whose parameters were parsed into `key` (or were invalid).
    async fn keyed(
        &self,
        part: Part,
        key: Result<PartKey, InvalidInput>,
        if_none_match: Option<&str>,
    ) -> Response<Bytes> {
        let endpoint = part.name();
        let key = match key {
            Ok(key) => key,
            Err(invalid) => return self.record(endpoint, bad_request(&invalid)),
        };
        let response = match self.part(key).await {
            Ok(lookup) => cached(
                &lookup.value.etag,
                lookup.value.body.clone(),
                Freshness::of(&lookup),
                self.cache.policy(),
                if_none_match,
            ),
            Err(error) => failed(&error),
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
            futures::future::join_all(Part::BATCH.map(|part| self.part(filters.key(part)))).await;
        let mut parts = Vec::with_capacity(Part::BATCH.len());
        for lookup in lookups {
            match lookup {
                Ok(lookup) => parts.push(lookup),
                Err(error) => return self.record(ENDPOINT, failed(&error)),
            }
        }
        let mut etag = Sha256::new();
        let mut length = 2;
        for (part, lookup) in Part::BATCH.iter().zip(&parts) {
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
        for (i, (part, lookup)) in Part::BATCH.iter().zip(&parts).enumerate() {
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
        match &lookup {
            Ok(lookup) => self.metrics().lookup(lookup.status, lookup.coalesced),
            Err(CacheError::Overloaded) => self.metrics().shed(),
            Err(_) => {}
        }
        lookup
    }

    /// The answer to a request no route took.
    fn rejected(&self, rejection: &warp::Rejection) -> Response<Bytes> {
        use warp::reject::MethodNotAllowed;
        let response = if rejection.find::<MethodNotAllowed>().is_some() {
            error_json(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
                None,
            )
        } else if rejection.is_not_found() {
            error_json(StatusCode::NOT_FOUND, "not_found", "not found", None)
        } else {
            error_json(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "invalid request",
                None,
            )
        };
        self.record("other", response)
    }

    /// Counts `response` in the request metrics under `endpoint`, and records both in the
    /// request's span (the current one: every handler runs inside it).
    fn record(&self, endpoint: &'static str, response: Response<Bytes>) -> Response<Bytes> {
        let status = response.status().as_u16();
        self.metrics().request(endpoint, status);
        Span::current()
            .record("endpoint", endpoint)
            .record("status", status);
        response
    }
}

/// The span of one request: its method and the MetricsStack served; the endpoint and the
/// status are recorded once it is answered.
fn request_span(stack: &StackIdentity, method: &Method) -> Span {
    tracing::info_span!(
        "request",
        method = %method,
        endpoint = tracing::field::Empty,
        status = tracing::field::Empty,
        stack.namespace = %stack.namespace,
        stack.name = %stack.name,
    )
}

/// The endpoint an admin request is counted under, from its path.
fn admin_endpoint(path: &str) -> &'static str {
    match path.trim_matches('/') {
        "healthz" => "healthz",
        "readyz" => "readyz",
        "metrics" => "metrics",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::DATABASE_UNREACHABLE;
    use metricsstack_common::access::{AccessPolicy, Authentication};
    use metricsstack_common::admin::RenderMetrics as _;
    use metricsstack_common::config::QueryServiceConfig;
    use metricsstack_common::database::PoolSettings;

    /// A service for `stack` whose database refuses connections, serving its routes on a
    /// free port.
    async fn without_a_database(stack: StackIdentity) -> (QueryService, String) {
        let config = QueryServiceConfig {
            stack,
            authentication: Authentication::None,
            listen_address: "127.0.0.1:0".into(),
            schema: "public".into(),
            database: Default::default(),
            pool: PoolSettings {
                acquire_timeout_seconds: 1,
                ..PoolSettings::default()
            },
            fresh_ttl_seconds: 1,
            stale_while_revalidate_seconds: 0,
            stale_if_error_seconds: 0,
            max_entries: 1,
            max_bytes: 1024,
        };
        let refused = "postgres://nobody@127.0.0.1:1/nothing";
        let service =
            QueryService::new(&config, refused, AccessPolicy::Open).expect("the service starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let server = warp::serve(service.routes()).incoming(listener).run();
        tokio::spawn(server);
        (service, base)
    }

    #[tokio::test]
    async fn admin_endpoints_are_mounted_and_counted_and_readyz_hides_the_database_error() {
        let (service, base) = without_a_database(StackIdentity::default()).await;
        let http = reqwest::Client::new();
        let get = |path: &str| http.get(format!("{base}{path}")).send();

        let healthz = get("/healthz").await.expect("answered");
        assert_eq!(healthz.status(), StatusCode::OK);
        assert_eq!(healthz.text().await.expect("a body"), "ok");
        let readyz = get("/readyz").await.expect("answered");
        assert_eq!(readyz.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(readyz.text().await.expect("a body"), DATABASE_UNREACHABLE);
        let metrics = get("/metrics").await.expect("answered");
        assert_eq!(
            metrics.headers()[header::CONTENT_TYPE],
            metricsstack_common::admin::OPENMETRICS_CONTENT_TYPE
        );
        let post = http
            .post(format!("{base}/healthz"))
            .send()
            .await
            .expect("answered");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        let elsewhere = http
            .post(format!("{base}/api/nothing"))
            .send()
            .await
            .expect("answered");
        assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);

        let text = service.metrics().render();
        for counted in [
            r#"endpoint="healthz",status="200"} 1"#,
            r#"endpoint="readyz",status="503"} 1"#,
            r#"endpoint="metrics",status="200"} 1"#,
            r#"endpoint="other",status="405"} 1"#,
            r#"endpoint="other",status="404"} 1"#,
        ] {
            assert!(text.contains(counted), "{counted} in\n{text}");
        }
    }

    #[tokio::test]
    async fn the_dashboard_is_served_compressed_beside_the_api_and_counted() {
        let (service, base) = without_a_database(StackIdentity::default()).await;
        let http = reqwest::Client::new();
        let page = http
            .get(format!("{base}/"))
            .header(header::ACCEPT_ENCODING, "gzip")
            .send()
            .await
            .expect("answered");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(page.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(
            page.headers()[header::CONTENT_SECURITY_POLICY],
            dashboard::CONTENT_SECURITY_POLICY
        );
        let etag = page.headers()[header::ETAG].clone();
        let again = http
            .get(format!("{base}/"))
            .header(header::ACCEPT_ENCODING, "gzip")
            .header(header::IF_NONE_MATCH, etag)
            .send()
            .await
            .expect("answered");
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let missing = http
            .get(format!("{base}/assets/main-NOTBUILT.js"))
            .send()
            .await
            .expect("answered");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let posted = http
            .post(format!("{base}/"))
            .send()
            .await
            .expect("answered");
        assert_eq!(posted.status(), StatusCode::METHOD_NOT_ALLOWED);

        let text = service.metrics().render();
        for counted in [
            r#"endpoint="dashboard",status="200"} 1"#,
            r#"endpoint="dashboard",status="304"} 1"#,
            r#"endpoint="dashboard",status="404"} 1"#,
            r#"endpoint="other",status="405"} 1"#,
        ] {
            assert!(text.contains(counted), "{counted} in\n{text}");
        }
    }
}
