//! The sidecar collector on the real node (`testenv/run --real-node`, the collector image
//! from `scripts/images`): the operator (reconciler and webhook) runs in this process, the
//! API server calls the webhook by URL, and a CPU-bound workload pod annotated for the
//! sidecar, in a namespace enforcing Pod Security `restricted`, starts with it; its process
//! shows up in `vm_process_metrics` with the pod's namespace and name within two intervals
//! of the sidecar's start. The stack's node collectors are kept off every node, so every row
//! is the sidecar's. The operator here reconciles the stack's objects (the sidecar reads its
//! ConfigMap) but cannot reach the database at the pods' address, so the test applies the
//! operator's migrations itself.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use metricsstack_operator::controller::{self, Context};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_operator::metrics::Metrics;
use metricsstack_operator::resources::{DefaultImages, INJECT_ANNOTATION, SIDECAR_CONTAINER};
use metricsstack_operator::webhook::certificate::Lifetimes;
use metricsstack_operator::webhook::{self, MUTATE_PODS_PATH, WebhookSettings};
use metricsstack_testkit::{
    TestDatabase, TestNamespace, busy_pod, connection_secret, required_env, unique_name, wait_until,
};
use serde_json::json;

/// When the workload's first row was sampled, and its process's name.
type FirstRow = (DateTime<Utc>, String);

/// Generous bound for pods to start on a loaded machine; only reached on failure.
const WAIT: Duration = Duration::from_secs(180);
/// The sidecar's sampling interval.
const INTERVAL_SECONDS: i64 = 5;

fn import_collector_image() -> String {
    let dir = PathBuf::from(required_env("METRICSSTACK_TEST_IMAGES"));
    let socket = required_env("METRICSSTACK_TESTENV_CONTAINERD");
    let tag = required_env("METRICSSTACK_TEST_IMAGE_TAG");
    let archive = dir.join(format!("collector-{tag}.tar"));
    let status = Command::new("ctr")
        .args(["--address", &socket, "-n", "k8s.io", "images", "import"])
        .arg(&archive)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("ctr runs");
    assert!(status.success(), "importing {} failed", archive.display());
    format!("localhost/metricsstack/collector:{tag}")
}

#[tokio::test]
async fn an_annotated_pods_processes_reach_vm_process_metrics_from_its_sidecar() {
    metricsstack_common::logging::init("info,kube=warn");
    let image = import_collector_image();
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    common::install_crd(&client).await;
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": {
                "pod-security.kubernetes.io/enforce": "restricted"
            } } })),
        )
        .await
        .expect("the namespace enforces restricted");

    // The stack, reconciled by the operator in this process: its ConfigMap is what the
    // sidecar reads, its schema what it writes to.
    let database = TestDatabase::create().await;
    let pod_url = required_env("METRICSSTACK_TESTENV_POD_POSTGRES_URL");
    let pod_database_url = format!(
        "{}/{}?sslmode=disable",
        pod_url.rsplit_once('/').expect("a database path").0,
        database.name
    );
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &connection_secret("postgres", &pod_database_url),
        )
        .await
        .expect("the Secret is created");
    let stack: MetricsStack = serde_json::from_value(json!({
        "apiVersion": "metricsstack.dev/v1alpha1",
        "kind": "MetricsStack",
        "metadata": { "name": "fleet" },
        "spec": {
            "database": { "secretRef": { "name": "postgres" }, "tlsMode": "Disable", "schema": "metrics" },
            // No node collector anywhere: every row below is the sidecar's.
            "collector": {
                "imagePullPolicy": "Never",
                "nodeSelector": { "metricsstack.dev/no-such-node": "true" },
                "processes": { "include": ["^busy$"] }
            },
            "queryService": { "replicas": 0 },
            "sidecar": { "image": image, "interval": format!("{INTERVAL_SECONDS}s") }
        }
    }))
    .expect("a stack");
    let stacks: Api<MetricsStack> = Api::namespaced(client.clone(), &ns.name);
    stacks
        .create(&PostParams::default(), &stack)
        .await
        .expect("the stack is created");
    let context = Arc::new(
        Context::new(client.clone(), Arc::new(Metrics::default()), "test").with_images(
            DefaultImages {
                collector: image.clone(),
                query_service: "unused".into(),
            },
        ),
    );
    let namespace = ns.name.clone();
    let operator = tokio::spawn(async move {
        controller::run(context, Some(&namespace), || {}).await;
    });

    // The webhook, by URL.
    let configuration = unique_name("sidecar-webhook");
    let webhook = webhook::start(
        client.clone(),
        WebhookSettings {
            address: "127.0.0.1:0".parse().expect("an address"),
            secret_namespace: ns.name.clone(),
            secret_name: "webhook-tls".into(),
            configuration_name: configuration.clone(),
            hosts: vec!["127.0.0.1".into()],
            lifetimes: Lifetimes::default(),
            resync: Duration::from_millis(500),
            collector_image: image.clone(),
        },
    )
    .await
    .expect("the webhook starts");
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let port = webhook.address().port();
    configurations
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": configuration },
                "webhooks": [{
                    "name": "sidecar.metricsstack.dev",
                    "admissionReviewVersions": ["v1"],
                    "clientConfig": { "url": format!("https://127.0.0.1:{port}{MUTATE_PODS_PATH}") },
                    "rules": [{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                "resources": ["pods"], "scope": "Namespaced" }],
                    "failurePolicy": "Ignore", "sideEffects": "None", "timeoutSeconds": 5,
                    "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": ns.name } }
                }]
            }))
            .expect("a configuration"),
        )
        .await
        .expect("the configuration is created");
    wait_until("the webhook has set its caBundle", WAIT, || {
        let (configurations, name) = (configurations.clone(), configuration.clone());
        async move {
            let configuration = configurations.get(&name).await.expect("the configuration");
            configuration
                .webhooks
                .iter()
                .flatten()
                .all(|w| (w.client_config.ca_bundle.as_ref()).is_some_and(|b| !b.0.is_empty()))
        }
    })
    .await;
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &ns.name);
    wait_until("the operator has made the stack's ConfigMap", WAIT, || {
        let configmaps = configmaps.clone();
        async move { matches!(configmaps.get_opt("fleet-collector").await, Ok(Some(_))) }
    })
    .await;

    // The workload, restricted-compliant, annotated; created until the API server has
    // loaded the configuration and the pod comes out injected.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let mut workload = busy_pod(200);
    workload.metadata.annotations =
        Some([(INJECT_ANNOTATION.to_owned(), "fleet".to_owned())].into());
    let spec = workload.spec.as_mut().expect("a spec");
    spec.security_context = Some(
        serde_json::from_value(json!({
            "runAsNonRoot": true, "runAsUser": 1000,
            "seccompProfile": { "type": "RuntimeDefault" }
        }))
        .expect("a pod security context"),
    );
    spec.containers[0].security_context = Some(
        serde_json::from_value(json!({
            "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] }
        }))
        .expect("a security context"),
    );
    let injected = wait_until_injected(&pods, &workload).await;
    assert_eq!(
        injected
            .spec
            .as_ref()
            .and_then(|s| s.share_process_namespace),
        Some(true)
    );

    // Running, sidecar started: the rows follow within two intervals.
    let started = Arc::new(std::sync::Mutex::new(None::<DateTime<Utc>>));
    wait_until(
        "the workload pod runs with its sidecar started",
        WAIT,
        || {
            let (pods, started) = (pods.clone(), started.clone());
            async move {
                let Ok(pod) = pods.get("busy").await else {
                    return false;
                };
                let status = pod.status.unwrap_or_default();
                let sidecar_started = (status.init_container_statuses.iter().flatten())
                    .find(|s| s.name == SIDECAR_CONTAINER)
                    .and_then(|s| s.state.as_ref()?.running.as_ref()?.started_at.clone());
                match sidecar_started {
                    Some(at) if status.phase.as_deref() == Some("Running") => {
                        let at =
                            DateTime::<Utc>::from_timestamp(at.0.as_second(), 0).expect("a time");
                        *started.lock().expect("not poisoned") = Some(at);
                        true
                    }
                    _ => false,
                }
            }
        },
    )
    .await;
    let started = started.lock().expect("not poisoned").expect("a start");
    let pool = database.pool(1).await;
    // The operator in this process cannot reach the database at the pods' address (the
    // node's gateway), so the test applies the operator's migrations itself, from here.
    sqlx::query("CREATE SCHEMA IF NOT EXISTS metrics")
        .execute(&pool)
        .await
        .expect("the schema");
    sqlx::query("SET search_path TO metrics, public")
        .execute(&pool)
        .await
        .expect("the search path of the pool's one connection");
    metricsstack_operator::database::migrate(&pool, "metrics")
        .await
        .expect("the stack's tables");
    let first: Arc<std::sync::Mutex<Option<FirstRow>>> = Arc::default();
    wait_until(
        "the workload's process is in vm_process_metrics",
        WAIT,
        || {
            let (pool, first, namespace) = (pool.clone(), first.clone(), ns.name.clone());
            async move {
                let row: Result<Option<(DateTime<Utc>, String)>, _> = sqlx::query_as(
                    "SELECT timestamp, process_name FROM metrics.vm_process_metrics \
                 WHERE pod_namespace = $1 AND pod_name = 'busy' ORDER BY timestamp LIMIT 1",
                )
                .bind(&namespace)
                .fetch_optional(&pool)
                .await;
                match row {
                    Ok(Some(row)) => {
                        *first.lock().expect("not poisoned") = Some(row);
                        true
                    }
                    _ => false,
                }
            }
        },
    )
    .await;
    let (timestamp, process) = first.lock().expect("not poisoned").clone().expect("a row");
    eprintln!("sidecar started {started}, first row at {timestamp} ({process})");
    assert!(
        timestamp <= started + chrono::Duration::seconds(2 * INTERVAL_SECONDS + 1),
        "the first row ({timestamp}) came later than two intervals after the sidecar started \
         ({started})"
    );
    let own: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM metrics.vm_process_metrics WHERE pod_namespace = $1 \
         AND (process_name = 'collector' OR process_name = 'pause')",
    )
    .bind(&ns.name)
    .fetch_one(&pool)
    .await
    .expect("a count");
    assert_eq!(
        own, 0,
        "neither the sidecar itself nor the pause process is recorded"
    );

    pods.delete("busy", &DeleteParams::default())
        .await
        .expect("the workload is deleted");
    drop(webhook);
    operator.abort();
    let _ = configurations
        .delete(&configuration, &DeleteParams::default())
        .await;
}

/// Creates `pod` until it comes out injected (the API server loads a new webhook
/// configuration after a moment); returns it.
async fn wait_until_injected(pods: &Api<Pod>, pod: &Pod) -> Pod {
    let found = Arc::new(std::sync::Mutex::new(None));
    wait_until("the API server injects the sidecar", WAIT, || {
        let (pods, found, pod) = (pods.clone(), found.clone(), pod.clone());
        async move {
            let created = pods
                .create(&PostParams::default(), &pod)
                .await
                .expect("the pod is admitted");
            let injected = (created.spec.iter())
                .flat_map(|s| s.init_containers.iter().flatten())
                .any(|c| c.name == SIDECAR_CONTAINER);
            if injected {
                *found.lock().expect("not poisoned") = Some(created);
                return true;
            }
            let name = created.metadata.name.clone().expect("a name");
            pods.delete(&name, &DeleteParams::default().grace_period(0))
                .await
                .expect("deleted");
            wait_until("the uninjected pod is gone", WAIT, || {
                let (pods, name) = (pods.clone(), name.clone());
                async move { matches!(pods.get_opt(&name).await, Ok(None)) }
            })
            .await;
            false
        }
    })
    .await;
    let pod = found.lock().expect("not poisoned").take();
    pod.expect("an injected pod")
}
