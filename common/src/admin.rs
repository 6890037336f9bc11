//! The admin endpoint every program serves: `/healthz` (the process answers), `/readyz`
//! (the program can do its part now, else 503 with the reason) and `/metrics`
//! (OpenMetrics text). The operator and the collector serve it on a port of its own; the
//! query service mounts [`routes`] beside its API.
//!
//! `/healthz` and `/readyz` are open: probes come from the kubelet, which presents no
//! credentials, and they say no more than "ok" or a short reason. `/metrics` follows the
//! program's [`AccessPolicy`]: with Kubernetes access, kube-rbac-proxy's convention, `get`
//! on the non-resource URL `/metrics` (a Prometheus server's usual ClusterRole grants it).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::future::BoxFuture;
use warp::Filter as _;
use warp::filters::BoxedFilter;
use warp::http::{Response, StatusCode, header};

use crate::access::{Access, AccessPolicy};

/// The content type of `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether a program can do its part now. Cloning gives another handle on the same state.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<RwLock<Option<&'static str>>>);

impl Readiness {
    /// Not ready yet, for `reason` (shown by `/readyz`).
    pub fn not_ready(reason: &'static str) -> Self {
        Self(Arc::new(RwLock::new(Some(reason))))
    }

    /// From now on ready.
    pub fn set_ready(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// From now on not ready, for `reason`.
    pub fn set_not_ready(&self, reason: &'static str) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    /// `Ok` when ready, else the reason.
    pub fn state(&self) -> Result<(), &'static str> {
        match *self.0.read().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(reason) => Err(reason),
        }
    }
}

/// What `/readyz` asks: `Ok` when ready, else why not (a short text, no secrets).
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Checks readiness now.
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

impl ReadinessCheck for Readiness {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(std::future::ready(self.state().map_err(str::to_owned)))
    }
}

/// What `/metrics` serves: the program's metrics as OpenMetrics text.
pub trait RenderMetrics: Send + Sync + 'static {
    /// The metrics, encoded.
    fn render(&self) -> String;
}

impl RenderMetrics for std::sync::Mutex<prometheus_client::registry::Registry> {
    fn render(&self) -> String {
        let mut text = String::new();
        let registry = self.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The three routes (GET only), for a server that serves other routes too; `/metrics`
/// answers whom `access` lets through. Each matches its path before the method, so that
/// another method on another path is the other routes' `404`, not a `405` from these.
pub fn routes(
    readiness: Arc<dyn ReadinessCheck>,
    metrics: Arc<dyn RenderMetrics>,
    access: AccessPolicy,
) -> BoxedFilter<(Response<Bytes>,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| text(StatusCode::OK, "ok".to_owned()));
    let readyz = warp::path!("readyz").and(warp::get()).then(move || {
        let readiness = readiness.clone();
        async move {
            match readiness.check().await {
                Ok(()) => text(StatusCode::OK, "ready".to_owned()),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
            }
        }
    });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .then(move |authorization: Option<String>| {
            let (metrics, access) = (metrics.clone(), access.clone());
            async move {
                let path = Access::get_path("/metrics");
                match access.check(authorization.as_deref(), &path).await {
                    Ok(()) => Response::builder()
                        .header(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)
                        .body(Bytes::from(metrics.render()))
                        .unwrap_or_default(),
                    Err(refusal) => refusal.response(),
                }
            }
        });
    healthz.or(readyz).unify().or(metrics).unify().boxed()
}

/// Serves the three routes on `address` until the process ends.
pub async fn serve(
    address: SocketAddr,
    readiness: Arc<dyn ReadinessCheck>,
    metrics: Arc<dyn RenderMetrics>,
    access: AccessPolicy,
) {
    warp::serve(routes(readiness, metrics, access))
        .run(address)
        .await;
}

fn text(status: StatusCode, body: String) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl RenderMetrics for Fixed {
        fn render(&self) -> String {
            "# EOF\n".to_owned()
        }
    }

    #[tokio::test]
    async fn readyz_follows_the_readiness_and_names_the_reason() {
        let readiness = Readiness::not_ready("no sample yet");
        let routes = routes(
            Arc::new(readiness.clone()),
            Arc::new(Fixed),
            AccessPolicy::Open,
        );
        let before = warp::test::request().path("/readyz").reply(&routes).await;
        assert_eq!(before.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(before.body(), "no sample yet");
        readiness.set_ready();
        let after = warp::test::request().path("/readyz").reply(&routes).await;
        assert_eq!(after.status(), StatusCode::OK);
        readiness.set_not_ready("lost the lease");
        let again = warp::test::request().path("/readyz").reply(&routes).await;
        assert_eq!(again.body(), "lost the lease");
    }

    #[tokio::test]
    async fn healthz_and_metrics_answer_get_only() {
        let routes = routes(
            Arc::new(Readiness::not_ready("starting")),
            Arc::new(Fixed),
            AccessPolicy::Open,
        );
        let healthz = warp::test::request().path("/healthz").reply(&routes).await;
        assert_eq!(
            (healthz.status(), healthz.body().as_ref()),
            (StatusCode::OK, &b"ok"[..])
        );
        let metrics = warp::test::request().path("/metrics").reply(&routes).await;
        assert_eq!(
            metrics.headers()[header::CONTENT_TYPE],
            OPENMETRICS_CONTENT_TYPE
        );
        assert_eq!(metrics.body(), "# EOF\n");
        let post = warp::test::request()
            .method("POST")
            .path("/metrics")
            .reply(&routes)
            .await;
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn another_method_on_another_path_is_not_found_rather_than_not_allowed() {
        let routes = routes(
            Arc::new(Readiness::not_ready("starting")),
            Arc::new(Fixed),
            AccessPolicy::Open,
        );
        let post = warp::test::request()
            .method("POST")
            .path("/api/anything")
            .filter(&routes)
            .await
            .expect_err("no admin route takes it");
        assert!(post.is_not_found(), "{post:?}");
    }
}
