//! Pod attribution on a real node: the test environment's kubelet (`testenv/run
//! --real-node`) runs a CPU-bound container under a CPU limit; the collector binary, on the
//! same host with the node's name, finds its process through the container's real cgroup,
//! names its pod and container from the API server, and writes its CPU share of the limit
//! to `vm_process_metrics`. Once the pod is deleted its rows stop.

use std::process::{Child, Command};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use metricsstack_testkit::{
    TestDatabase, TestNamespace, busy_pod, process_gone_and_sampled, required_env, wait_until,
};
use sqlx::PgPool;

/// The CPU limit of the workload's container, in millicores.
const CPU_LIMIT_MILLICORES: u32 = 200;

/// A collector process on this host, sampling every second, killed when dropped.
struct Collector(Child);

impl Collector {
    fn start(dir: &std::path::Path, database_url: &str, node: &str) -> Self {
        let config = dir.join("collector.yaml");
        std::fs::write(
            &config,
            format!(
                "intervalSeconds: 1\npodAttribution: true\nspoolDir: {}\nlistenAddress: 127.0.0.1:0\n\
                 processes: {{topByCpu: 5, topByMemory: 5, include: ['^busy$']}}\n",
                dir.join("spool").display()
            ),
        )
        .expect("the config is written");
        let child = Command::new(env!("CARGO_BIN_EXE_collector"))
            .arg("--config")
            .arg(&config)
            .env("DATABASE_URL", database_url)
            .env("NODE_NAME", node)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("the collector starts");
        Self(child)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `vm_process_metrics` row of the workload.
#[derive(Debug, sqlx::FromRow)]
struct WorkloadRow {
    timestamp: DateTime<Utc>,
    pid: i32,
    pod_uid: String,
    container_id: String,
    container_name: Option<String>,
    cpu_usage_percent: f32,
    cpu_limit_percent: Option<f32>,
}

async fn workload_rows(pool: &PgPool, namespace: &str) -> Vec<WorkloadRow> {
    sqlx::query_as(
        "SELECT timestamp, pid, pod_uid, container_id, container_name, cpu_usage_percent, \
         cpu_limit_percent FROM vm_process_metrics \
         WHERE pod_namespace = $1 AND pod_name = 'busy' ORDER BY timestamp",
    )
    .bind(namespace)
    .fetch_all(pool)
    .await
    .expect("vm_process_metrics reads")
}

#[tokio::test]
async fn a_real_containers_processes_are_attributed_to_its_pod_until_the_pod_is_deleted() {
    let node = required_env("METRICSSTACK_TESTENV_REAL_NODE");
    let db = TestDatabase::create().await;
    let pool = db.pool(2).await;
    sqlx::migrate!("../migrations")
        .run(&pool)
        .await
        .expect("the schema applies");
    let ns = TestNamespace::create().await;
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let created = pods
        .create(&PostParams::default(), &busy_pod(CPU_LIMIT_MILLICORES))
        .await
        .expect("the workload pod is created");
    let uid = created.metadata.uid.expect("a uid");
    wait_until(
        "the workload pod runs",
        Duration::from_secs(120),
        || async {
            pods.get("busy")
                .await
                .ok()
                .and_then(|p| p.status)
                .and_then(|s| s.phase)
                .as_deref()
                == Some("Running")
        },
    )
    .await;

    let dir = std::env::temp_dir().join(metricsstack_testkit::unique_name("real-node"));
    std::fs::create_dir_all(&dir).expect("a work directory");
    let _collector = Collector::start(&dir, &db.url(), &node);
    // Two samples of the workload, so that its CPU is measured over a whole interval.
    wait_until(
        "the collector writes the workload's process under its pod",
        Duration::from_secs(120),
        || async { workload_rows(&pool, &ns.name).await.len() >= 2 },
    )
    .await;
    let rows = workload_rows(&pool, &ns.name).await;
    let last = rows.last().expect("rows");
    assert_eq!(last.pod_uid, uid, "the pod found through the cgroup");
    assert_eq!(last.container_name.as_deref(), Some("burn"));
    assert_eq!(last.container_id.len(), 64, "a containerd id: {last:?}");
    let status = pods
        .get("busy")
        .await
        .expect("the pod")
        .status
        .expect("status");
    let container_id = status.container_statuses.expect("container statuses")[0]
        .container_id
        .clone()
        .expect("a container id");
    assert_eq!(container_id, format!("containerd://{}", last.container_id));
    // The limit caps what the kernel gives the container; the share of the limit is the
    // usage scaled by the limit (CPU 100% = one core = 1000 millicores).
    assert!(
        last.cpu_usage_percent > 0.0,
        "a spinning process uses CPU: {last:?}"
    );
    let share = last.cpu_limit_percent.expect("a share of the CPU limit");
    let expected = last.cpu_usage_percent * 1000.0 / CPU_LIMIT_MILLICORES as f32;
    assert!(
        (share - expected).abs() <= expected * 1e-3,
        "share of the limit {share} for usage {}",
        last.cpu_usage_percent
    );

    pods.delete("busy", &DeleteParams::default())
        .await
        .expect("the pod is deleted");
    let gone = process_gone_and_sampled(
        last.pid,
        &pool,
        "host_overall_metrics",
        Duration::from_secs(120),
    )
    .await;
    let after: Vec<_> = workload_rows(&pool, &ns.name)
        .await
        .into_iter()
        .filter(|row| row.timestamp > gone)
        .collect();
    assert!(
        after.is_empty(),
        "rows after the pod was deleted: {after:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
