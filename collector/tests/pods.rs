//! The pod watch against the test API server: it learns the pods bound to its node, with their
//! containers as the pod status names them and their requests and limits as the API server
//! stored them, never a pod of another node, and forgets a pod once it is deleted. The shares
//! of those requests and limits a process takes reach the database's columns.
//!
//! The test API server runs no scheduler and no kubelet: pods created with `spec.nodeName`
//! stay Pending, and the test writes their container statuses itself. It registers the two
//! nodes too: else the controller manager's pod garbage collector would delete their pods as
//! orphans after 40 seconds, which a loaded machine can reach. Nodes that never report are
//! tainted unreachable after a grace period, and their pods evicted only after the default
//! toleration of 300 seconds.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use metricsstack_collector::ingest;
use metricsstack_collector::pods::{self, ContainerShares, KnownContainer, PodIndex};
use metricsstack_collector::rows::{Batch, VmRow};
use metricsstack_testkit::{TestDatabase, TestNamespace, unique_name};
use serde_json::json;

/// How long the API server and the watch get to show a change on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(120);

/// A container id as the runtime reports it: 64 hex digits, here one digit repeated.
fn container_id(digit: char) -> String {
    std::iter::repeat_n(digit, 64).collect()
}

/// A pod bound to `node` with the containers `(name, resources)`.
fn pod(name: &str, node: &str, containers: &[(&str, serde_json::Value)]) -> Pod {
    let containers: Vec<serde_json::Value> = containers
        .iter()
        .map(|(name, resources)| {
            serde_json::json!({ "name": name, "image": "registry.invalid/app:1", "resources": resources })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": { "nodeName": node, "containers": containers },
    }))
    .expect("a valid pod")
}

/// Registers a node called `name` (which no kubelet serves).
async fn register(nodes: &Api<Node>, name: &str) {
    let node: Node = serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))
        .expect("a valid node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("registering node {name} failed: {e}"));
}

/// Creates `pod` and returns its uid.
async fn create(pods: &Api<Pod>, pod: &Pod) -> String {
    let created = pods
        .create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {} failed: {e}", pod.name_any()));
    created.uid().expect("the API server gives the pod a uid")
}

/// Writes the pod's container statuses, as a kubelet would once the containers run.
async fn set_running(pods: &Api<Pod>, name: &str, containers: &[(&str, &str)]) {
    let statuses: Vec<serde_json::Value> = containers
        .iter()
        .map(|(container, id)| {
            serde_json::json!({
                "name": container,
                "containerID": format!("containerd://{id}"),
                "image": "registry.invalid/app:1",
                "imageID": "",
                "ready": true,
                "restartCount": 0,
                "started": true,
                "state": { "running": { "startedAt": "2025-01-01T00:00:00Z" } },
            })
        })
        .collect();
    let patch = serde_json::json!({
        "status": { "phase": "Running", "containerStatuses": statuses }
    });
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("writing the status of pod {name} failed: {e}"));
}

/// Waits until the namespace's default service account exists: the API server refuses pods
/// until the controller manager has made it.
async fn wait_for_default_service_account(ns: &TestNamespace) {
    let accounts: Api<ServiceAccount> = Api::namespaced(ns.client.clone(), &ns.name);
    let deadline = Instant::now() + DEADLINE;
    while accounts
        .get_opt("default")
        .await
        .expect("reading service accounts")
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "namespace {} has no default service account after {DEADLINE:?}",
            ns.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes a row of a process in `container` using `cpu` percent of a core and `memory` MiB
/// into a fresh database, and reads its shares back: (CPU request, CPU limit, memory
/// request, memory limit).
async fn written_shares(
    container: &KnownContainer,
    cpu: f32,
    memory: f64,
) -> (Option<f32>, Option<f32>, Option<f32>, Option<f32>) {
    let db = TestDatabase::create().await;
    let pool = db.pool(1).await;
    sqlx::migrate!("../migrations")
        .run(&pool)
        .await
        .expect("the schema applies");
    let shares = container.shares(cpu, memory);
    let row = VmRow {
        timestamp: chrono::Utc::now(),
        host: "node".into(),
        pid: 1,
        start_time: chrono::DateTime::UNIX_EPOCH,
        process_name: "app".into(),
        command_line: None,
        pod_namespace: Some(container.namespace.clone()),
        pod_name: Some(container.pod_name.clone()),
        pod_uid: container.pod_uid.clone(),
        container_id: "id".into(),
        container_name: Some(container.container_name.clone()),
        cpu_usage_percent: cpu,
        cpu_peak_percent: cpu,
        cpu_limit_percent: shares.cpu_limit_percent,
        cpu_request_percent: shares.cpu_request_percent,
        memory_limit_percent: shares.memory_limit_percent,
        memory_request_percent: shares.memory_request_percent,
        memory_usage_mb: memory,
        disk_read_bytes: 0,
        disk_write_bytes: 0,
    };
    let batch = Batch {
        vms: vec![row],
        ..Batch::default()
    };
    let inserted = ingest::insert(&pool, &batch).await.expect("written");
    assert_eq!(inserted.vms, 1);
    let stored = sqlx::query_as(
        "SELECT cpu_request_percent, cpu_limit_percent, memory_request_percent, \
         memory_limit_percent FROM vm_process_metrics",
    )
    .fetch_one(&pool)
    .await
    .expect("read back");
    pool.close().await;
    stored
}

/// Polls the watch's store until `done` holds of the index built from it, checking at every
/// poll that the store holds only pods of `node`.
async fn wait_until(store: &Store<Pod>, node: &str, what: &str, done: impl Fn(&PodIndex) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let pods = store.state();
        let foreign: Vec<String> = pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node))
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        assert!(
            foreign.is_empty(),
            "the watch of {node} holds pods of other nodes: {foreign:?}"
        );
        if done(&PodIndex::from_pods(pods.iter().map(|p| &**p))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {DEADLINE:?}, still waiting until {what}; the store holds {:?}",
            pods.iter().map(|p| p.name_any()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_watch_knows_the_pods_of_its_node_only_and_forgets_deleted_ones() {
    let ns = TestNamespace::create().await;
    wait_for_default_service_account(&ns).await;
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let node_a = unique_name("node-a");
    let node_b = unique_name("node-b");
    let nodes: Api<Node> = Api::all(ns.client.clone());
    for node in [&node_a, &node_b] {
        register(&nodes, node).await;
    }
    let (web_app, web_sidecar, worker, other) = (
        container_id('a'),
        container_id('b'),
        container_id('c'),
        container_id('d'),
    );

    // Before the watch starts: one pod on each node, both running.
    let web_uid = create(
        &pods,
        &pod(
            "web",
            &node_a,
            &[
                (
                    "app",
                    json!({
                        "limits": { "cpu": "500m", "memory": "256Mi" },
                        "requests": { "cpu": "250m", "memory": "128Mi" },
                    }),
                ),
                ("sidecar", json!(null)),
            ],
        ),
    )
    .await;
    set_running(
        &pods,
        "web",
        &[("app", &web_app), ("sidecar", &web_sidecar)],
    )
    .await;
    create(
        &pods,
        &pod(
            "elsewhere",
            &node_b,
            &[("app", json!({ "limits": { "cpu": "1" } }))],
        ),
    )
    .await;
    set_running(&pods, "elsewhere", &[("app", &other)]).await;

    let (store, watch) = pods::watch(ns.client.clone(), &node_a);
    let watch = tokio::spawn(watch);

    // After it started: one more pod on each node, whose containers start later.
    // Limits alone: the API server sets the requests to the limits.
    let worker_uid = create(
        &pods,
        &pod(
            "worker",
            &node_a,
            &[("main", json!({ "limits": { "cpu": "2", "memory": "1Gi" } }))],
        ),
    )
    .await;
    create(
        &pods,
        &pod("elsewhere-too", &node_b, &[("app", json!(null))]),
    )
    .await;
    set_running(&pods, "elsewhere-too", &[("app", &container_id('e'))]).await;
    set_running(&pods, "worker", &[("main", &worker)]).await;

    // (CPU request, CPU limit, memory request, memory limit).
    type Bounds = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
    let known = |pod_name: &str, uid: &str, container_name: &str, bounds: Bounds| {
        let (cpu_request, cpu_limit, memory_request, memory_limit) = bounds;
        Some(KnownContainer {
            namespace: ns.name.clone(),
            pod_name: pod_name.into(),
            pod_uid: uid.into(),
            container_name: container_name.into(),
            cpu_limit_millicores: cpu_limit,
            cpu_request_millicores: cpu_request,
            memory_limit_bytes: memory_limit,
            memory_request_bytes: memory_request,
        })
    };
    const MI: i64 = 1 << 20;
    let expected = [
        (
            &web_app,
            known(
                "web",
                &web_uid,
                "app",
                (Some(250), Some(500), Some(128 * MI), Some(256 * MI)),
            ),
        ),
        (
            &web_sidecar,
            known("web", &web_uid, "sidecar", (None, None, None, None)),
        ),
        (
            &worker,
            known(
                "worker",
                &worker_uid,
                "main",
                (Some(2000), Some(2000), Some(1024 * MI), Some(1024 * MI)),
            ),
        ),
    ];
    wait_until(&store, &node_a, "both pods of node A are known", |index| {
        expected
            .iter()
            .all(|(id, container)| index.container(id).cloned() == *container)
    })
    .await;
    // One watch stream delivers changes in order, and node B's pods were written before the
    // worker's status, which the watch has seen: had the field selector let them through,
    // they would be here by now.
    let index = PodIndex::from_pods(store.state().iter().map(|p| &**p));
    for id in [other, container_id('e')] {
        assert_eq!(index.container(&id), None, "a container of node B is known");
    }
    // A process using a quarter of a core and 64 MiB, in each container.
    let shares = |id: &str| {
        index
            .container(id)
            .map(|container| container.shares(25.0, 64.0))
    };
    assert_eq!(
        shares(&web_app),
        Some(ContainerShares {
            cpu_request_percent: Some(100.0),
            cpu_limit_percent: Some(50.0),
            memory_request_percent: Some(50.0),
            memory_limit_percent: Some(25.0),
        })
    );
    assert_eq!(shares(&web_sidecar), Some(ContainerShares::default()));
    let app = index.container(&web_app).expect("the app container");
    assert_eq!(
        written_shares(app, 25.0, 64.0).await,
        (Some(100.0), Some(50.0), Some(50.0), Some(25.0)),
        "(CPU request, CPU limit, memory request, memory limit) as stored"
    );
    assert_eq!(
        shares(&worker),
        Some(ContainerShares {
            cpu_request_percent: Some(12.5),
            cpu_limit_percent: Some(12.5),
            memory_request_percent: Some(6.25),
            memory_limit_percent: Some(6.25),
        })
    );

    pods.delete(
        "web",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("deleting pod web");
    wait_until(&store, &node_a, "the deleted pod is forgotten", |index| {
        index.container(&web_app).is_none() && index.container(&web_sidecar).is_none()
    })
    .await;
    let index = PodIndex::from_pods(store.state().iter().map(|p| &**p));
    assert_eq!(
        index.container(&worker).cloned(),
        expected[2].1,
        "the pod that was not deleted is still known"
    );
    assert_eq!(
        store.state().len(),
        1,
        "the store holds the remaining pod only"
    );
    watch.abort();
    for node in [&node_a, &node_b] {
        nodes
            .delete(node, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting node {node} failed: {e}"));
    }
}
