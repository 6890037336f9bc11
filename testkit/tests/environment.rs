//! The test environment itself: each server answers over a real connection.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, conditions, wait::await_condition, watcher};
use kube::{Api, CustomResource, CustomResourceExt, ResourceExt};
use metricsstack_testkit::{HELM_VAR, TestDatabase, TestNamespace, TimescaleSchema, required_env};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, Row};

#[tokio::test]
async fn native_postgres_serves_a_pool_of_several_connections() {
    let db = TestDatabase::create().await;
    let pool = db.pool(4).await;
    // Four queries that each hold their connection for a moment run on four backends at once.
    let backends = futures::future::try_join_all((0..4).map(|_| {
        sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid() FROM pg_sleep(0.3)").fetch_one(&pool)
    }))
    .await
    .expect("the concurrent queries succeed");
    let mut distinct = backends.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "expected four backends, got {backends:?}"
    );
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .expect("current_database() answers");
    assert_eq!(database, db.name);
    pool.close().await;
}

#[tokio::test]
async fn timescaledb_creates_a_hypertable_with_a_compression_policy() {
    let tsdb = TimescaleSchema::create().await;
    let mut conn = tsdb.connect().await;
    sqlx::query(
        "CREATE TABLE samples (ts timestamptz NOT NULL, host text NOT NULL, v double precision)",
    )
    .execute(&mut conn)
    .await
    .expect("CREATE TABLE succeeds");
    sqlx::query("SELECT create_hypertable('samples', by_range('ts', INTERVAL '1 day'))")
        .execute(&mut conn)
        .await
        .expect("create_hypertable succeeds");
    sqlx::query(
        "ALTER TABLE samples SET (timescaledb.compress, timescaledb.compress_segmentby = 'host')",
    )
    .execute(&mut conn)
    .await
    .expect("enabling compression succeeds");
    let job_id: i32 =
        sqlx::query_scalar("SELECT add_compression_policy('samples', INTERVAL '7 days')")
            .fetch_one(&mut conn)
            .await
            .expect("add_compression_policy succeeds");
    let row = sqlx::query(
        "SELECT proc_name, schedule_interval::text AS schedule, config->>'compress_after' AS after \
         FROM timescaledb_information.jobs \
         WHERE job_id = $1 AND hypertable_schema = $2 AND hypertable_name = 'samples'",
    )
    .bind(job_id)
    .bind(&tsdb.schema)
    .fetch_one(&mut conn)
    .await
    .expect("the policy is in timescaledb_information.jobs");
    assert_eq!(row.get::<String, _>("proc_name"), "policy_compression");
    assert_eq!(row.get::<String, _>("after"), "7 days");
    conn.close().await.expect("the connection closes");
}

#[tokio::test]
async fn kubernetes_watch_sees_a_configmap_created_in_a_fresh_namespace() {
    let ns = TestNamespace::create().await;
    let config_maps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut events = watcher(
        config_maps.clone(),
        watcher::Config::default().fields("metadata.name=probe"),
    )
    .applied_objects()
    .boxed();
    let probe: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "probe" }, "data": { "answer": "42" }
    }))
    .expect("the ConfigMap is valid");
    config_maps
        .create(&PostParams::default(), &probe)
        .await
        .expect("the ConfigMap is created");
    let seen = tokio::time::timeout(Duration::from_secs(30), events.try_next())
        .await
        .expect("the watch sees the ConfigMap within 30 s")
        .expect("the watch does not fail")
        .expect("the watch yields an object");
    assert_eq!(seen.name_any(), "probe");
    assert_eq!(
        seen.data.and_then(|d| d.get("answer").cloned()).as_deref(),
        Some("42")
    );
}

/// A throwaway kind for the CRD test.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "testenv.metricsstack.dev",
    version = "v1",
    kind = "Probe",
    namespaced
)]
struct ProbeSpec {
    size: u32,
}

#[tokio::test]
async fn a_crd_applied_to_the_api_server_becomes_established() {
    let client = metricsstack_testkit::kube_client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let crd = Probe::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("metricsstack-testkit").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the CRD is applied");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds.clone(), &name, conditions::is_crd_established()),
    )
    .await
    .expect("the CRD becomes Established within 30 s")
    .expect("the wait does not fail");
    crds.delete(&name, &DeleteParams::default())
        .await
        .expect("the CRD is deleted");
}

#[test]
fn helm_version_runs() {
    let helm = required_env(HELM_VAR);
    let output = std::process::Command::new(&helm)
        .args(["version", "--short"])
        .output()
        .unwrap_or_else(|e| panic!("running {helm} failed: {e}"));
    assert!(output.status.success(), "helm version failed: {output:?}");
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(
        version.starts_with("v3."),
        "unexpected helm version {version:?}"
    );
}
