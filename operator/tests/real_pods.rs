//! End to end on real pods (`testenv/run --real-node`, images from `scripts/images`): the
//! chart installs the operator as a Deployment pod running the project's image; a
//! MetricsStack brings up the collector DaemonSet pod (hostPID) and the query service pod on
//! the real node; a CPU-bound workload pod's process shows up in `vm_process_metrics` with
//! its namespace, pod and container and its share of the CPU limit, and in the query
//! service pod's batch answer; deleting the workload stops its rows. Then the chart is
//! upgraded to the next version, whose images have another tag, and the collectors and the
//! query service roll to it with no edit of the MetricsStack.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_testkit::{
    REAL_NODE_TAINT, TestDatabase, TestNamespace, busy_pod, connection_secret, grant_stack_data,
    helm, poll_batch, process_gone_and_sampled, required_env, service_account_token, wait_until,
};
use serde_json::json;
use sqlx::PgPool;

/// The workload's CPU limit, in millicores.
const CPU_LIMIT_MILLICORES: u32 = 200;

/// Generous bound for pods to start on a loaded machine; only reached on failure.
const WAIT: Duration = Duration::from_secs(180);

/// The images `scripts/images` built for this run, imported into the real node's containerd.
struct Images {
    /// The release's tag (the chart's appVersion).
    tag: String,
    /// The next release's tag, for the upgrade.
    next_tag: String,
}

impl Images {
    fn import() -> Self {
        let dir = PathBuf::from(required_env("METRICSSTACK_TEST_IMAGES"));
        let socket = required_env("METRICSSTACK_TESTENV_CONTAINERD");
        let tag = required_env("METRICSSTACK_TEST_IMAGE_TAG");
        let next_tag = required_env("METRICSSTACK_TEST_NEXT_IMAGE_TAG");
        for image in ["operator", "collector"] {
            for tag in [&tag, &next_tag] {
                let archive = dir.join(format!("{image}-{tag}.tar"));
                let status = Command::new("ctr")
                    .args(["--address", &socket, "-n", "k8s.io", "images", "import"])
                    .arg(&archive)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .expect("ctr runs");
                assert!(status.success(), "importing {} failed", archive.display());
            }
        }
        Self { tag, next_tag }
    }
}

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/metricsstack-operator")
}

/// Chart values that run the operator on the real node with the local images.
fn values(node: &str) -> Vec<String> {
    [
        "image.repository=localhost/metricsstack/operator",
        "image.pullPolicy=Never",
        "collectorImage.repository=localhost/metricsstack/collector",
        "tolerations[0].key=metricsstack.dev/real-node",
        "tolerations[0].operator=Exists",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([format!("nodeSelector.kubernetes\\.io/hostname={node}")])
    .flat_map(|value| ["--set".to_owned(), value])
    .collect()
}

/// The image of the first container of a pod template.
fn template_image(spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> Option<String> {
    spec.and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
}

/// Whether every pod selected by `selector` in `namespace` runs `image` and is ready.
async fn pods_ready_with(pods: &Api<Pod>, selector: &str, image: &str) -> bool {
    let Ok(list) = pods.list(&ListParams::default().labels(selector)).await else {
        return false;
    };
    !list.items.is_empty()
        && list.items.iter().all(|pod| {
            let running = template_image(pod.spec.as_ref()).as_deref() == Some(image);
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            running && ready && pod.metadata.deletion_timestamp.is_none()
        })
}

/// One `vm_process_metrics` row of the workload.
#[derive(Debug, sqlx::FromRow)]
struct WorkloadRow {
    timestamp: DateTime<Utc>,
    pid: i32,
    container_name: Option<String>,
    cpu_usage_percent: f32,
    cpu_limit_percent: Option<f32>,
}

/// The workload's rows; an error until the operator has created the schema.
async fn workload_rows(pool: &PgPool, namespace: &str) -> Result<Vec<WorkloadRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT timestamp, pid, container_name, cpu_usage_percent, cpu_limit_percent \
         FROM metrics.vm_process_metrics WHERE pod_namespace = $1 AND pod_name = 'busy' \
         ORDER BY timestamp",
    )
    .bind(namespace)
    .fetch_all(pool)
    .await
}

#[tokio::test]
async fn the_chart_on_a_real_node_attributes_a_pods_processes_and_upgrades_without_an_edit() {
    let node = required_env("METRICSSTACK_TESTENV_REAL_NODE");
    let images = Images::import();
    let operator_ns = TestNamespace::create().await;
    let client = operator_ns.client.clone();
    let chart = chart_dir();
    let release = "metricsstack";
    let mut install = vec!["install", release, chart.to_str().expect("a UTF-8 path")];
    let values = values(&node);
    install.extend([
        "--namespace",
        &operator_ns.name,
        "--wait",
        "--timeout",
        "3m",
    ]);
    install.extend(values.iter().map(String::as_str));
    helm(&install);
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), &operator_ns.name);
    let operator_image = format!("localhost/metricsstack/operator:{}", images.tag);
    wait_until(
        "the operator pod runs the local image and is ready",
        WAIT,
        || {
            pods_ready_with(
                &operator_pods,
                "app.kubernetes.io/name=metricsstack-operator",
                &operator_image,
            )
        },
    )
    .await;

    // The stack: PostgreSQL as the pods reach it, collectors and query service on the node.
    let database = TestDatabase::create().await;
    let pod_url = required_env("METRICSSTACK_TESTENV_POD_POSTGRES_URL");
    let pod_database_url = format!(
        "{}/{}?sslmode=disable",
        pod_url.rsplit_once('/').expect("a database path").0,
        database.name
    );
    let stack_ns = TestNamespace::create().await;
    Api::<Secret>::namespaced(client.clone(), &stack_ns.name)
        .create(
            &PostParams::default(),
            &connection_secret("postgres", &pod_database_url),
        )
        .await
        .expect("the Secret is created");
    let on_the_node = json!({
        "nodeSelector": { "kubernetes.io/hostname": node },
        "tolerations": [{ "key": REAL_NODE_TAINT, "operator": "Exists" }],
    });
    let mut collector = json!({
        "interval": "1s",
        "imagePullPolicy": "Never",
        "processes": { "topByCpu": 5, "topByMemory": 5, "include": ["^busy$"] },
    });
    let mut query_service = json!({ "replicas": 1 });
    for spec in [&mut collector, &mut query_service] {
        spec.as_object_mut()
            .expect("an object")
            .extend(on_the_node.as_object().expect("an object").clone());
    }
    let stack: MetricsStack = serde_json::from_value(json!({
        "apiVersion": "metricsstack.dev/v1alpha1",
        "kind": "MetricsStack",
        "metadata": { "name": "fleet" },
        "spec": {
            "database": { "secretRef": { "name": "postgres" }, "tlsMode": "Disable", "schema": "metrics" },
            "collector": collector,
            "queryService": query_service,
            "deletionPolicy": "Retain",
        }
    }))
    .expect("a valid stack");
    let stacks: Api<MetricsStack> = Api::namespaced(client.clone(), &stack_ns.name);
    stacks
        .create(&PostParams::default(), &stack)
        .await
        .expect("the MetricsStack is created");

    let stack_pods: Api<Pod> = Api::namespaced(client.clone(), &stack_ns.name);
    let collector_image = format!("localhost/metricsstack/collector:{}", images.tag);
    wait_until(
        "the collector pod runs on the real node and is ready",
        WAIT,
        || {
            pods_ready_with(
                &stack_pods,
                "app.kubernetes.io/component=collector",
                &collector_image,
            )
        },
    )
    .await;
    wait_until("the query service pod is ready", WAIT, || {
        pods_ready_with(
            &stack_pods,
            "app.kubernetes.io/component=query-service",
            &operator_image,
        )
    })
    .await;
    let collector_pod = stack_pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=collector"))
        .await
        .expect("collector pods")
        .items
        .remove(0);
    assert_eq!(
        collector_pod.spec.as_ref().and_then(|s| s.host_pid),
        Some(true),
        "the collector sees the node's processes"
    );

    // A workload under a CPU limit: its process is attributed to its pod and container.
    let workload_ns = TestNamespace::create().await;
    Api::<Pod>::namespaced(client.clone(), &workload_ns.name)
        .create(&PostParams::default(), &busy_pod(CPU_LIMIT_MILLICORES))
        .await
        .expect("the workload pod is created");
    let pool = database.pool(2).await;
    wait_until(
        "the workload's process reaches vm_process_metrics under its pod",
        WAIT,
        || async {
            workload_rows(&pool, &workload_ns.name)
                .await
                .is_ok_and(|rows| rows.len() >= 2)
        },
    )
    .await;
    let rows = workload_rows(&pool, &workload_ns.name)
        .await
        .expect("vm_process_metrics reads");
    let last = rows.last().expect("rows");
    assert_eq!(last.container_name.as_deref(), Some("burn"));
    let share = last
        .cpu_limit_percent
        .expect("a share of the 200m CPU limit");
    let expected = last.cpu_usage_percent * 1000.0 / CPU_LIMIT_MILLICORES as f32;
    assert!(
        (share - expected).abs() <= expected * 1e-3,
        "share of the limit {share} for usage {}",
        last.cpu_usage_percent
    );
    let query_pod = stack_pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=query-service"))
        .await
        .expect("query service pods")
        .items
        .remove(0);
    let pod_ip = query_pod
        .status
        .and_then(|s| s.pod_ip)
        .expect("the query service pod has an address");
    // The query API checks callers with the API server: a viewer granted this stack's data.
    let viewer = service_account_token(&client, &stack_ns.name, "viewer").await;
    grant_stack_data(&client, &stack_ns.name, "viewer", "fleet").await;
    let batch = poll_batch(
        &format!("http://{pod_ip}:8080/api/dashboard/batch"),
        Some(&viewer),
        &json!({ "window": "15m", "namespace": workload_ns.name }),
        |batch| {
            let rows = batch["vm_metrics"]["rows"].as_array();
            rows.is_some_and(|rows| rows.iter().any(|row| row["pod"] == "busy"))
        },
        WAIT,
    )
    .await;
    assert!(
        batch["vm_metrics"]["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .all(|row| row["namespace"] == workload_ns.name.as_str()),
        "the namespace filter holds: {batch}"
    );

    // Deleting the workload stops its rows.
    Api::<Pod>::namespaced(client.clone(), &workload_ns.name)
        .delete("busy", &DeleteParams::default())
        .await
        .expect("the workload is deleted");
    let gone =
        process_gone_and_sampled(last.pid, &pool, "metrics.host_overall_metrics", WAIT).await;
    let after = workload_rows(&pool, &workload_ns.name)
        .await
        .expect("vm_process_metrics reads")
        .into_iter()
        .filter(|row| row.timestamp > gone)
        .count();
    assert_eq!(after, 0, "rows after the workload was deleted");

    // The next chart version, whose images have another tag: the stack follows it.
    let packaged = std::env::temp_dir().join(metricsstack_testkit::unique_name("chart"));
    helm(&[
        "package",
        chart.to_str().expect("a UTF-8 path"),
        "--version",
        &images.next_tag,
        "--app-version",
        &images.next_tag,
        "--destination",
        packaged.to_str().expect("a UTF-8 path"),
    ]);
    let next_chart = packaged.join(format!("metricsstack-operator-{}.tgz", images.next_tag));
    let mut upgrade = vec![
        "upgrade",
        release,
        next_chart.to_str().expect("a UTF-8 path"),
    ];
    upgrade.extend([
        "--namespace",
        &operator_ns.name,
        "--wait",
        "--timeout",
        "3m",
    ]);
    upgrade.extend(values.iter().map(String::as_str));
    helm(&upgrade);
    let next_collector = format!("localhost/metricsstack/collector:{}", images.next_tag);
    let next_operator = format!("localhost/metricsstack/operator:{}", images.next_tag);
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), &stack_ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &stack_ns.name);
    wait_until(
        "the collector DaemonSet and query service Deployment move to the next images",
        WAIT,
        || async {
            let collector = daemon_sets.get("fleet-collector").await.ok();
            let query = deployments.get("fleet-query-service").await.ok();
            template_image(
                collector
                    .as_ref()
                    .and_then(|d| d.spec.as_ref())
                    .and_then(|s| s.template.spec.as_ref()),
            ) == Some(next_collector.clone())
                && template_image(
                    query
                        .as_ref()
                        .and_then(|d| d.spec.as_ref())
                        .and_then(|s| s.template.spec.as_ref()),
                ) == Some(next_operator.clone())
        },
    )
    .await;
    wait_until("the collector pod rolls to the next image", WAIT, || {
        pods_ready_with(
            &stack_pods,
            "app.kubernetes.io/component=collector",
            &next_collector,
        )
    })
    .await;
    let stored = stacks.get("fleet").await.expect("the stack");
    assert_eq!(
        stored.spec.collector.image, None,
        "the stack was not edited"
    );
    assert_eq!(
        stored.metadata.generation,
        Some(1),
        "the stack was not edited"
    );

    stacks
        .delete("fleet", &DeleteParams::default())
        .await
        .expect("the stack is deleted");
    // The operator removes its finalizer; uninstalling it first would leave the stack
    // Terminating and its ClusterRoleBinding behind.
    wait_until("the stack is gone", WAIT, || async {
        matches!(stacks.get_opt("fleet").await, Ok(None))
    })
    .await;
    helm(&[
        "uninstall",
        release,
        "--namespace",
        &operator_ns.name,
        "--wait",
    ]);
    std::fs::remove_dir_all(&packaged).ok();
    // The chart's image policy applies cluster-wide, and the API server stops enforcing it
    // a moment after it is deleted: the tests after this one create stacks with test
    // images, so wait until a foreign image is admitted again.
    let foreign: MetricsStack = serde_json::from_value(json!({
        "apiVersion": "metricsstack.dev/v1alpha1",
        "kind": "MetricsStack",
        "metadata": { "name": "after-uninstall" },
        "spec": {
            "database": { "secretRef": { "name": "postgres" } },
            "collector": { "image": "collector:test" }
        }
    }))
    .expect("a MetricsStack");
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    wait_until(
        "the uninstalled image policy is no longer enforced",
        WAIT,
        || async { stacks.create(&dry_run, &foreign).await.is_ok() },
    )
    .await;
}
