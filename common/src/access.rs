//! Who may read what a MetricsStack program serves, decided the Kubernetes way (the
//! convention of kube-rbac-proxy, which kube-state-metrics and the Prometheus Operator's
//! components follow): the caller sends `Authorization: Bearer <token>`, a `TokenReview`
//! says whose token it is, and a `SubjectAccessReview` asks the API server's authorizers
//! (RBAC) whether that user may do what the request needs:
//!
//! - a stack's data (the query API): `get` on the subresource `metricsstacks/data` of that
//!   stack, so that a team can be granted one stack's dashboard with an ordinary Role;
//! - `/metrics`: `get` on that non-resource URL, granted by a ClusterRole.
//!
//! Both answers are cached, keyed by a SHA-256 of the token, for a bounded time
//! ([`TOKEN_TTL`], [`ALLOWED_TTL`], [`DENIED_TTL`] unless [`CacheTimes`] say otherwise) and number of entries
//! ([`CACHE_ENTRIES`]); concurrent requests that need the same answer wait for one review,
//! and at most [`CONCURRENT_REVIEWS`] reviews are in flight at once. An answer the API
//! server could not give is not cached: the request is refused with 503 and the next one
//! asks again.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;
use warp::http::{HeaderValue, Response, StatusCode, header};

use crate::http::error_response;

/// How long a token's owner, once reviewed, is trusted without asking again.
pub const TOKEN_TTL: Duration = Duration::from_secs(120);
/// How long an allowed access is remembered. A revoked RoleBinding takes effect after at
/// most this long.
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refusal (an invalid token, a denied access) is remembered.
pub const DENIED_TTL: Duration = Duration::from_secs(10);
/// Most answers each cache keeps (tokens, access decisions).
pub const CACHE_ENTRIES: usize = 4096;
/// Most reviews sent to the API server at once; further requests wait their turn.
pub const CONCURRENT_REVIEWS: usize = 16;

/// The API group of the `metricsstacks` resource whose `data` subresource guards a
/// stack's query API.
pub const STACK_GROUP: &str = "metricsstack.dev";

/// What a request needs to be allowed to do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `verb` on `resource/subresource` of `group`, the object `name` in `namespace`.
    Resource {
        /// The object's namespace.
        namespace: String,
        /// The API group.
        group: String,
        /// The resource (plural).
        resource: String,
        /// The subresource, empty for none.
        subresource: String,
        /// The object's name.
        name: String,
        /// The verb.
        verb: String,
    },
    /// `verb` on a URL path that is not a resource, such as `/metrics`.
    NonResource {
        /// The path.
        path: String,
        /// The verb.
        verb: String,
    },
}

impl Access {
    /// Reading a stack's data through its query service: `get` on `metricsstacks/data`
    /// named after the stack, in its namespace.
    pub fn stack_data(namespace: &str, name: &str) -> Self {
        Self::Resource {
            namespace: namespace.to_owned(),
            group: STACK_GROUP.to_owned(),
            resource: "metricsstacks".to_owned(),
            subresource: "data".to_owned(),
            name: name.to_owned(),
            verb: "get".to_owned(),
        }
    }

    /// Reading the non-resource URL `path` (`/metrics`).
    pub fn get_path(path: &str) -> Self {
        Self::NonResource {
            path: path.to_owned(),
            verb: "get".to_owned(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Resource {
                namespace,
                group,
                resource,
                subresource,
                name,
                verb,
            } => format!(
                "{verb} {resource}/{subresource}.{group} {name:?} in namespace {namespace:?}"
            ),
            Self::NonResource { path, verb } => format!("{verb} {path}"),
        }
    }

    fn review_spec(&self, user: &UserInfo) -> SubjectAccessReviewSpec {
        let (resource_attributes, non_resource_attributes) = match self {
            Self::Resource {
                namespace,
                group,
                resource,
                subresource,
                name,
                verb,
            } => (
                Some(ResourceAttributes {
                    namespace: Some(namespace.clone()),
                    group: Some(group.clone()),
                    resource: Some(resource.clone()),
                    subresource: (!subresource.is_empty()).then(|| subresource.clone()),
                    name: Some(name.clone()),
                    verb: Some(verb.clone()),
                    ..ResourceAttributes::default()
                }),
                None,
            ),
            Self::NonResource { path, verb } => (
                None,
                Some(NonResourceAttributes {
                    path: Some(path.clone()),
                    verb: Some(verb.clone()),
                }),
            ),
        };
        SubjectAccessReviewSpec {
            user: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            resource_attributes,
            non_resource_attributes,
        }
    }
}

/// How a program's protected routes are guarded, as its configuration says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Authentication {
    /// A bearer token checked with a TokenReview, access with a SubjectAccessReview.
    #[default]
    Kubernetes,
    /// No check: anyone who can reach the port (an explicit opt-out).
    None,
}

/// Who may call a program's protected routes.
#[derive(Clone)]
pub enum AccessPolicy {
    /// Anyone who can reach the port: an explicit opt-out.
    Open,
    /// Whoever the Kubernetes API server says may.
    Kubernetes(Arc<KubernetesAccess>),
}

impl AccessPolicy {
    /// The policy for `authentication`: with `Kubernetes`, reviews sent with the in-cluster
    /// (or `KUBECONFIG`) identity; with `None`, open, and a warning in the log.
    pub async fn for_authentication(authentication: Authentication) -> Result<Self, kube::Error> {
        match authentication {
            Authentication::Kubernetes => {
                let client = kube::Client::try_default().await?;
                Ok(Self::Kubernetes(Arc::new(KubernetesAccess::new(client))))
            }
            Authentication::None => {
                tracing::warn!("authentication is off: anyone who can reach this port is answered");
                Ok(Self::Open)
            }
        }
    }

    /// Checks a request's `Authorization` header value against `access`.
    pub async fn check(&self, authorization: Option<&str>, access: &Access) -> Result<(), Refusal> {
        match self {
            Self::Open => Ok(()),
            Self::Kubernetes(kubernetes) => kubernetes.check(authorization, access).await,
        }
    }
}

/// Why a request was refused. Shown to the caller: never names the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No bearer token came with the request.
    #[error("this endpoint needs a Kubernetes bearer token: send `Authorization: Bearer <token>`")]
    MissingToken,
    /// The API server does not know the token (expired, revoked, or not a token).
    #[error("the bearer token was not accepted by the Kubernetes API server")]
    InvalidToken,
    /// The token's user may not do what the request needs.
    #[error("{user} may not {access}: grant it with a Role or ClusterRole")]
    Forbidden {
        /// The token's user.
        user: String,
        /// What was asked, as `get metricsstacks/data.metricsstack.dev "main" in ...`.
        access: String,
    },
    /// The API server could not be asked; the request may be retried.
    #[error("access cannot be checked now: the Kubernetes API server did not answer")]
    Unavailable,
}

impl Refusal {
    /// The HTTP status: 401, 403 or 503.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable error code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken | Self::InvalidToken => "unauthenticated",
            Self::Forbidden { .. } => "forbidden",
            Self::Unavailable => "authorization_unavailable",
        }
    }

    /// The answer to the caller: a JSON error body, never cached; a 401 says which scheme
    /// to use (`WWW-Authenticate: Bearer`).
    pub fn response(&self) -> Response<Bytes> {
        let mut response = error_response(self.status(), self.code(), &self.to_string(), None);
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status() == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"metricsstack\""),
            );
        }
        response
    }
}

/// The bearer token of an `Authorization` header value (`Bearer <token>`, the scheme
/// case-insensitive).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The API-server reviews sent, by kind (`token`, `access`) and result (`allowed`,
/// `denied`, `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    kind: &'static str,
    result: &'static str,
}

/// How long each kind of answer is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheTimes {
    /// A token's owner.
    pub token: Duration,
    /// An allowed access.
    pub allowed: Duration,
    /// A refusal: an invalid token, a denied access.
    pub denied: Duration,
}

impl Default for CacheTimes {
    fn default() -> Self {
        Self {
            token: TOKEN_TTL,
            allowed: ALLOWED_TTL,
            denied: DENIED_TTL,
        }
    }
}

/// Access decided by the Kubernetes API server, with bounded caches; see the module
/// documentation.
pub struct KubernetesAccess {
    client: kube::Client,
    times: CacheTimes,
    users: ExpiringCache<[u8; 32], Option<UserInfo>>,
    decisions: ExpiringCache<([u8; 32], Access), bool>,
    reviews_in_flight: Semaphore,
    reviews: Family<ReviewLabels, Counter>,
}

impl KubernetesAccess {
    /// Decides with the API server `client` talks to. The client's identity needs `create`
    /// on `tokenreviews` and `subjectaccessreviews` (the chart's ClusterRoles grant it).
    pub fn new(client: kube::Client) -> Self {
        Self::with_cache_times(client, CacheTimes::default())
    }

    /// As [`KubernetesAccess::new`], keeping answers for `times` instead of the defaults.
    pub fn with_cache_times(client: kube::Client, times: CacheTimes) -> Self {
        Self {
            client,
            times,
            users: ExpiringCache::new(CACHE_ENTRIES),
            decisions: ExpiringCache::new(CACHE_ENTRIES),
            reviews_in_flight: Semaphore::new(CONCURRENT_REVIEWS),
            reviews: Family::default(),
        }
    }

    /// Registers `access_reviews_total` (under the registry's prefix): the reviews sent to
    /// the API server.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "access_reviews",
            "Reviews sent to the Kubernetes API server, by kind (token, access) and result",
            self.reviews.clone(),
        );
    }

    /// How many reviews of `kind` (`token` or `access`) were sent with `result`.
    pub fn reviews_sent(&self, kind: &'static str, result: &'static str) -> u64 {
        self.reviews
            .get_or_create(&ReviewLabels { kind, result })
            .get()
    }

    /// Checks a request's `Authorization` header value against `access`.
    pub async fn check(&self, authorization: Option<&str>, access: &Access) -> Result<(), Refusal> {
        let token = authorization
            .and_then(bearer_token)
            .ok_or(Refusal::MissingToken)?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let user = self
            .users
            .get_or_fetch(key, || self.review_token(token))
            .await?
            .ok_or(Refusal::InvalidToken)?;
        let allowed = self
            .decisions
            .get_or_fetch((key, access.clone()), || self.review_access(&user, access))
            .await?;
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Forbidden {
                user: user.username.unwrap_or_default(),
                access: access.describe(),
            })
        }
    }

    async fn review_token(&self, token: &str) -> Result<(Option<UserInfo>, Duration), Refusal> {
        let _turn = self.reviews_in_flight.acquire().await;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await;
        let status = match answer {
            Ok(review) => review.status.unwrap_or_default(),
            Err(error) => {
                self.count("token", "error");
                tracing::warn!(%error, "the TokenReview failed");
                return Err(Refusal::Unavailable);
            }
        };
        if status.authenticated == Some(true) {
            self.count("token", "allowed");
            Ok((status.user, self.times.token))
        } else {
            self.count("token", "denied");
            Ok((None, self.times.denied))
        }
    }

    async fn review_access(
        &self,
        user: &UserInfo,
        access: &Access,
    ) -> Result<(bool, Duration), Refusal> {
        let _turn = self.reviews_in_flight.acquire().await;
        let review = SubjectAccessReview {
            spec: access.review_spec(user),
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await;
        match answer {
            Ok(review) => {
                let allowed = review.status.is_some_and(|status| status.allowed);
                if allowed {
                    self.count("access", "allowed");
                    Ok((true, self.times.allowed))
                } else {
                    self.count("access", "denied");
                    tracing::info!(
                        user = user.username.as_deref().unwrap_or_default(),
                        access = access.describe(),
                        "access denied"
                    );
                    Ok((false, self.times.denied))
                }
            }
            Err(error) => {
                self.count("access", "error");
                tracing::warn!(%error, "the SubjectAccessReview failed");
                Err(Refusal::Unavailable)
            }
        }
    }

    fn count(&self, kind: &'static str, result: &'static str) {
        self.reviews
            .get_or_create(&ReviewLabels { kind, result })
            .inc();
    }
}

/// One answer, or the fetch of it, shared by everyone who waits for it: the value and
/// when it expires.
type Slot<V> = Arc<OnceCell<(V, Instant)>>;

/// Answers kept until they expire, each for the time its fetch said, at most `capacity`
/// of them; concurrent gets of a missing key share one fetch, and a failed fetch is not
/// kept.
struct ExpiringCache<K, V> {
    entries: Mutex<HashMap<K, Slot<V>>>,
    capacity: usize,
}

impl<K: Clone + Eq + Hash, V: Clone> ExpiringCache<K, V> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The unexpired answer for `key`, or the one `fetch` gives (with how long to keep it).
    async fn get_or_fetch<E, F, Fut>(&self, key: K, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Duration), E>>,
    {
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match entries.get(&key) {
                Some(cell) if cell.get().is_none_or(|(_, expires)| *expires > now) => cell.clone(),
                _ => {
                    if entries.len() >= self.capacity {
                        Self::make_room(&mut entries, self.capacity, now);
                    }
                    let cell = Arc::new(OnceCell::new());
                    entries.insert(key, cell.clone());
                    cell
                }
            }
        };
        let (value, _) = cell
            .get_or_try_init(|| async {
                let (value, ttl) = fetch().await?;
                Ok((value, Instant::now() + ttl))
            })
            .await?;
        Ok(value.clone())
    }

    /// Drops expired answers and fetches no longer running; if that is not enough, the
    /// answers closest to expiring.
    fn make_room(entries: &mut HashMap<K, Slot<V>>, capacity: usize, now: Instant) {
        entries.retain(|_, cell| {
            cell.get().is_some_and(|(_, expires)| *expires > now) || Arc::strong_count(cell) > 1
        });
        while entries.len() >= capacity {
            let soonest = entries
                .iter()
                .min_by_key(|(_, cell)| cell.get().map(|(_, expires)| *expires))
                .map(|(key, _)| key.clone());
            match soonest {
                Some(key) => entries.remove(&key),
                None => break,
            };
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn reads_a_bearer_token_and_nothing_else() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn refusals_map_to_401_403_503_with_stable_codes_and_no_caching() {
        let missing = Refusal::MissingToken.response();
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"metricsstack\""
        );
        assert_eq!(missing.headers()[header::CACHE_CONTROL], "no-store");
        let forbidden = Refusal::Forbidden {
            user: "system:serviceaccount:team:viewer".into(),
            access: Access::stack_data("monitoring", "main").describe(),
        };
        let body: serde_json::Value =
            serde_json::from_slice(forbidden.response().body()).expect("JSON");
        assert_eq!(body["code"], "forbidden");
        assert_eq!(
            body["error"],
            "system:serviceaccount:team:viewer may not get metricsstacks/data.metricsstack.dev \
             \"main\" in namespace \"monitoring\": grant it with a Role or ClusterRole"
        );
        assert_eq!(
            Refusal::Unavailable.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn the_access_review_asks_for_the_subresource_or_the_path() {
        let user = UserInfo {
            username: Some("alice".into()),
            groups: Some(vec!["team".into()]),
            ..UserInfo::default()
        };
        let data = Access::stack_data("monitoring", "main").review_spec(&user);
        let attributes = data.resource_attributes.expect("resource attributes");
        assert_eq!(
            (
                attributes.group.as_deref(),
                attributes.resource.as_deref(),
                attributes.subresource.as_deref(),
                attributes.name.as_deref(),
                attributes.namespace.as_deref(),
                attributes.verb.as_deref(),
            ),
            (
                Some("metricsstack.dev"),
                Some("metricsstacks"),
                Some("data"),
                Some("main"),
                Some("monitoring"),
                Some("get")
            )
        );
        assert_eq!(data.groups, Some(vec!["team".to_owned()]));
        let metrics = Access::get_path("/metrics").review_spec(&user);
        assert!(metrics.resource_attributes.is_none());
        assert_eq!(
            metrics.non_resource_attributes.and_then(|a| a.path),
            Some("/metrics".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_kept_for_its_own_time_and_then_fetched_again() {
        let cache = ExpiringCache::<&str, bool>::new(8);
        let fetches = AtomicUsize::new(0);
        let fetch = |answer: bool, ttl: u64| {
            let fetches = &fetches;
            move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>((answer, Duration::from_secs(ttl)))
            }
        };
        assert_eq!(cache.get_or_fetch("a", fetch(true, 60)).await, Ok(true));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(cache.get_or_fetch("a", fetch(false, 10)).await, Ok(true));
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get_or_fetch("a", fetch(false, 10)).await, Ok(false));
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_gets_share_one_fetch_and_a_failure_is_not_kept() {
        let cache = ExpiringCache::<&str, u32>::new(8);
        let fetches = AtomicUsize::new(0);
        let slow = || async {
            fetches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, &str>((7, Duration::from_secs(60)))
        };
        let (a, b, c) = tokio::join!(
            cache.get_or_fetch("k", slow),
            cache.get_or_fetch("k", slow),
            cache.get_or_fetch("k", slow)
        );
        assert_eq!((a, b, c), (Ok(7), Ok(7), Ok(7)));
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        let failing = || async { Err::<(u32, Duration), _>("api server down") };
        assert_eq!(
            cache.get_or_fetch("f", failing).await,
            Err("api server down")
        );
        let recovered = || async { Ok::<_, &str>((1, Duration::from_secs(60))) };
        assert_eq!(cache.get_or_fetch("f", recovered).await, Ok(1));
    }

    #[tokio::test(start_paused = true)]
    async fn never_holds_more_than_its_capacity() {
        let cache = ExpiringCache::<u32, u32>::new(4);
        for key in 0..100 {
            let ttl = Duration::from_secs(u64::from(key) + 1);
            let fetched = cache
                .get_or_fetch(key, || async { Ok::<_, ()>((key, ttl)) })
                .await;
            assert_eq!(fetched, Ok(key));
            assert!(cache.len() <= 4, "{} entries", cache.len());
        }
        // The newest answers, those furthest from expiring, are the ones kept.
        let kept = cache
            .get_or_fetch(99, || async { Ok::<_, ()>((0, Duration::ZERO)) })
            .await;
        assert_eq!(kept, Ok(99));
    }
}
