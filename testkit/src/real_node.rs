//! The test environment's real node (`testenv/run --real-node`) and helm: a CPU-bound
//! workload pod for it, waiting until a workload's process is gone and sampled past, and
//! polling the query service's batch endpoint.

use std::process::{Command, Output};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use sqlx::PgPool;

use crate::{HELM_VAR, required_env, wait_until};

/// The taint of the real node; a pod that runs there tolerates it.
pub const REAL_NODE_TAINT: &str = "metricsstack.dev/real-node";

/// A pod named `busy` on the real node: one container `burn` spinning on the CPU under a
/// limit of `cpu_limit_millicores`, from the image the environment built.
pub fn busy_pod(cpu_limit_millicores: u32) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": "busy" },
        "spec": {
            "nodeSelector": {
                "kubernetes.io/hostname": required_env("METRICSSTACK_TESTENV_REAL_NODE")
            },
            "tolerations": [{ "key": REAL_NODE_TAINT, "operator": "Exists" }],
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "burn",
                "image": required_env("METRICSSTACK_TESTENV_BUSY_IMAGE"),
                "imagePullPolicy": "Never",
                "resources": {
                    "requests": { "cpu": "100m", "memory": "16Mi" },
                    "limits": { "cpu": format!("{cpu_limit_millicores}m"), "memory": "32Mi" }
                }
            }]
        }
    }))
    .expect("a valid pod")
}

/// Waits until the process `pid` has exited and the collector has written a host sample
/// (to `overall_table`, schema-qualified as needed) after that; returns when it exited, as
/// far as the test knows: no row of the process can be later.
pub async fn process_gone_and_sampled(
    pid: i32,
    pool: &PgPool,
    overall_table: &str,
    timeout: Duration,
) -> DateTime<Utc> {
    wait_until("the workload's process is gone", timeout, || async move {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
    let gone = Utc::now();
    let latest = format!("SELECT max(timestamp) FROM {overall_table}");
    wait_until(
        "the collector samples the node after the process is gone",
        timeout,
        || async {
            sqlx::query_scalar::<_, Option<DateTime<Utc>>>(sqlx::AssertSqlSafe(latest.clone()))
                .fetch_one(pool)
                .await
                .ok()
                .flatten()
                .is_some_and(|latest| latest > gone)
        },
    )
    .await;
    gone
}

/// Posts `filters` to the query service's batch endpoint at `url`, with `token` as the
/// bearer token if given, until an answer satisfies `accept`, and returns it; panics with
/// the last answer after `timeout`.
pub async fn poll_batch(
    url: &str,
    token: Option<&str>,
    filters: &serde_json::Value,
    accept: impl Fn(&serde_json::Value) -> bool,
    timeout: Duration,
) -> serde_json::Value {
    let http = reqwest::Client::new();
    let mut last = serde_json::Value::Null;
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        let mut request = http.post(url).json(filters);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                last = response.json().await.expect("the batch answer is JSON");
                if accept(&last) {
                    return last;
                }
            }
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                last = serde_json::json!({ "status": status.as_u16(), "body": body });
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the batch endpoint {url} never gave the answer waited for; the last: {last}");
}

/// Runs the environment's helm against the test API server.
pub fn helm_output(args: &[&str]) -> Output {
    Command::new(required_env(HELM_VAR))
        .args(args)
        .env("KUBECONFIG", required_env("KUBECONFIG"))
        .output()
        .expect("helm runs")
}

/// Runs helm and returns what it printed; panics with its error output when it fails.
pub fn helm(args: &[&str]) -> String {
    let output = helm_output(args);
    assert!(
        output.status.success(),
        "helm {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
