//! Who may read a stack's data, decided by the real API server: the query service checks
//! a caller's bearer token with a TokenReview and its access with a SubjectAccessReview
//! (`get` on `metricsstacks/data` of the stack; `get` on the non-resource URL `/metrics`),
//! and caches both answers so that the API server is not asked once per request.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{NonResourceAttributes, SubjectAccessReviewSpec};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use metricsstack_common::access::{AccessPolicy, Authentication, CacheTimes, KubernetesAccess};
use metricsstack_common::config::{QueryServiceConfig, StackIdentity};
use metricsstack_common::database::PoolSettings;
use metricsstack_operator::database::MIGRATOR;
use metricsstack_query_service::QueryService;
use metricsstack_testkit::{
    TestDatabase, TestNamespace, grant_stack_data, service_account_token, wait_for_grant,
};
use reqwest::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;

fn config(namespace: &str, name: &str) -> QueryServiceConfig {
    QueryServiceConfig {
        stack: StackIdentity {
            namespace: namespace.into(),
            name: name.into(),
        },
        authentication: Authentication::Kubernetes,
        listen_address: "127.0.0.1:0".into(),
        schema: "public".into(),
        database: Default::default(),
        pool: PoolSettings::default(),
        fresh_ttl_seconds: 60,
        stale_while_revalidate_seconds: 0,
        stale_if_error_seconds: 0,
        max_entries: 100,
        max_bytes: 1024 * 1024,
    }
}

/// Serves `config`'s stack with `access` on a free port; the base URL.
async fn start(config: &QueryServiceConfig, database_url: &str, access: AccessPolicy) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let service = QueryService::new(config, database_url, access).expect("the service starts");
    tokio::spawn(service.run(listener, std::future::pending()));
    base
}

async fn apply<K>(api: Api<K>, object: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).expect("a valid object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("the object is created");
}

struct Answer {
    status: StatusCode,
    body: String,
    authenticate: Option<String>,
}

async fn get(base: &str, path: &str, token: Option<&str>) -> Answer {
    let mut request = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the service answers");
    let authenticate = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Answer {
        status: response.status(),
        authenticate,
        body: response.text().await.expect("a body"),
    }
}

fn code(answer: &Answer) -> String {
    serde_json::from_str::<serde_json::Value>(&answer.body)
        .map(|body| body["code"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_token_and_an_rbac_grant_on_the_stacks_data_are_needed_and_reviews_are_cached() {
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    let db = TestDatabase::create().await;
    MIGRATOR
        .run(&db.pool(1).await)
        .await
        .expect("migrations run");

    // `reader` may get the data of stack `main` only; `stranger` nothing; `scraper` may get
    // /metrics (a ClusterRole, as a Prometheus server has).
    let reader = service_account_token(&client, &ns.name, "reader").await;
    let stranger = service_account_token(&client, &ns.name, "stranger").await;
    let scraper = service_account_token(&client, &ns.name, "scraper").await;
    let metrics_reader = format!("{}-metrics-reader", ns.name);
    apply(
        Api::<ClusterRole>::all(client.clone()),
        json!({
            "metadata": { "name": metrics_reader },
            "rules": [{ "nonResourceURLs": ["/metrics"], "verbs": ["get"] }]
        }),
    )
    .await;
    apply(
        Api::<ClusterRoleBinding>::all(client.clone()),
        json!({
            "metadata": { "name": metrics_reader },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": metrics_reader },
            "subjects": [{ "kind": "ServiceAccount", "name": "scraper", "namespace": ns.name }]
        }),
    )
    .await;
    grant_stack_data(&client, &ns.name, "reader", "main").await;
    wait_for_grant(
        &client,
        SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{}:scraper", ns.name)),
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some("/metrics".into()),
                verb: Some("get".into()),
            }),
            ..SubjectAccessReviewSpec::default()
        },
    )
    .await;

    // Answers kept for an hour here, so that a slow machine cannot expire one mid-test (the
    // expiry itself is tested on a paused clock, in metricsstack-common).
    let hour = Duration::from_secs(3600);
    let times = CacheTimes {
        token: hour,
        allowed: hour,
        denied: hour,
    };
    let access = Arc::new(KubernetesAccess::with_cache_times(client.clone(), times));
    let main = start(
        &config(&ns.name, "main"),
        &db.url(),
        AccessPolicy::Kubernetes(access.clone()),
    )
    .await;
    let part = "/api/host-overall-metrics";

    let anonymous = get(&main, part, None).await;
    assert_eq!(
        anonymous.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        anonymous.body
    );
    assert_eq!(code(&anonymous), "unauthenticated");
    assert_eq!(
        anonymous.authenticate.as_deref(),
        Some("Bearer realm=\"metricsstack\"")
    );
    let forged = get(&main, part, Some("not-a-token")).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{}", forged.body);
    let refused = get(&main, part, Some(&stranger)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert_eq!(code(&refused), "forbidden");
    assert!(
        refused.body.contains(&format!(
            "system:serviceaccount:{}:stranger may not get metricsstacks/data",
            ns.name
        )),
        "{}",
        refused.body
    );
    let allowed = get(&main, part, Some(&reader)).await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.body);
    let batch = reqwest::Client::new()
        .post(format!("{main}/api/dashboard/batch"))
        .bearer_auth(&reader)
        .body("{}")
        .send()
        .await
        .expect("the service answers");
    assert_eq!(batch.status(), StatusCode::OK);
    let unauthenticated_batch = reqwest::Client::new()
        .post(format!("{main}/api/dashboard/batch"))
        .body("{}")
        .send()
        .await
        .expect("the service answers");
    assert_eq!(unauthenticated_batch.status(), StatusCode::UNAUTHORIZED);
    // The process search, a pod's processes, a process's history (command lines) and the
    // nodes' history need the same grant.
    for path in [
        "/api/process-search?q=java",
        "/api/pod-processes?namespace=web&pod=a",
        "/api/process-history?namespace=web&pod=a&container=app&command=java",
        "/api/host-history?window=30d",
    ] {
        for (token, status) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some(stranger.as_str()), StatusCode::FORBIDDEN),
            (Some(reader.as_str()), StatusCode::OK),
        ] {
            assert_eq!(get(&main, path, token).await.status, status, "{path}");
        }
    }
    // The dashboard's page holds no data and must load to ask for a token: no token needed.
    let page = get(&main, "/", None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("/assets/main-"), "{}", page.body);
    assert_eq!(
        get(&main, "/openapi.yaml", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&main, "/openapi.yaml", Some(&reader)).await.status,
        StatusCode::OK
    );

    // The probes stay open; /metrics needs `get` on the non-resource URL.
    assert_eq!(get(&main, "/healthz", None).await.status, StatusCode::OK);
    assert_eq!(get(&main, "/readyz", None).await.status, StatusCode::OK);
    assert_eq!(
        get(&main, "/metrics", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&main, "/metrics", Some(&reader)).await.status,
        StatusCode::FORBIDDEN
    );
    let scraped = get(&main, "/metrics", Some(&scraper)).await;
    assert_eq!(scraped.status, StatusCode::OK, "{}", scraped.body);
    assert!(
        scraped
            .body
            .contains("metricsstack_query_service_access_reviews_total"),
        "{}",
        scraped.body
    );

    // Four tokens reviewed once each (the forged one refused); the reader's two accesses
    // (data, /metrics), the stranger's and the scraper's, once each.
    let reviews = |kind, result| access.reviews_sent(kind, result);
    let before = [
        reviews("token", "allowed"),
        reviews("token", "denied"),
        reviews("access", "allowed"),
        reviews("access", "denied"),
    ];
    assert_eq!(before, [3, 1, 2, 2]);
    // Fifty more requests of the same callers: answered from the cache, no review sent.
    for _ in 0..10 {
        assert_eq!(get(&main, part, Some(&reader)).await.status, StatusCode::OK);
        assert_eq!(
            get(&main, "/api/vm-metrics", Some(&reader)).await.status,
            StatusCode::OK
        );
        assert_eq!(
            get(&main, part, Some(&stranger)).await.status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            get(&main, part, Some("not-a-token")).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(&main, "/metrics", Some(&scraper)).await.status,
            StatusCode::OK
        );
    }
    let after = [
        reviews("token", "allowed"),
        reviews("token", "denied"),
        reviews("access", "allowed"),
        reviews("access", "denied"),
    ];
    assert_eq!(after, before, "every answer came from the cache");
    assert_eq!(reviews("token", "error") + reviews("access", "error"), 0);

    // The grant names stack `main`: the same token reads no other stack's data.
    let other = start(
        &config(&ns.name, "other"),
        &db.url(),
        AccessPolicy::Kubernetes(Arc::new(KubernetesAccess::new(client.clone()))),
    )
    .await;
    assert_eq!(
        get(&other, part, Some(&reader)).await.status,
        StatusCode::FORBIDDEN
    );

    // `None` answers without a token (the operator shows a warning condition for it).
    let open = start(&config(&ns.name, "main"), &db.url(), AccessPolicy::Open).await;
    assert_eq!(get(&open, part, None).await.status, StatusCode::OK);
    assert_eq!(get(&open, "/metrics", None).await.status, StatusCode::OK);

    let delete = DeleteParams::default();
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&metrics_reader, &delete)
        .await;
    let _ = Api::<ClusterRole>::all(client)
        .delete(&metrics_reader, &delete)
        .await;
}
