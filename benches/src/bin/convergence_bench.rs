//! Benchmark: the time from an edit of a MetricsStack to a converged TimescaleDB (the
//! operator's status reporting the edit's generation as applied), p50 and p95 over repeated
//! edits, beside the same database change made by calling the policy manager directly.
//!
//!   testenv/run --nodes 1 cargo run --release -p metricsstack-benches --bin convergence_bench -- [--edits 20]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, CustomResourceExt as _};
use metricsstack_common::database::{DatabaseTls, PoolSettings, TlsMode};
use metricsstack_operator::controller::{self, Context};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_operator::database;
use metricsstack_operator::metrics::Metrics;
use metricsstack_operator::validate::validate;
use metricsstack_testkit::{connection_secret, install_crd};
use serde_json::json;
use sqlx::Executor;

/// The test servers speak no TLS.
const DISABLE_TLS: DatabaseTls = DatabaseTls {
    mode: TlsMode::Disable,
    ca: None,
};

#[derive(Parser, Debug)]
struct Args {
    /// Edits measured (each flips compressAfter of one table).
    #[arg(long, default_value_t = 20)]
    edits: usize,
}

/// compressAfter for the edit number `i`: alternating, so that every edit changes the job.
fn compress_after(i: usize) -> &'static str {
    if i.is_multiple_of(2) { "3d" } else { "7d" }
}

fn tables(i: usize) -> serde_json::Value {
    json!([
        { "table": "hostProcessMetrics", "compression": { "after": compress_after(i), "segmentBy": ["host"] },
          "retention": { "dropAfter": "90d" } },
        { "table": "hostOverallMetrics", "compression": { "after": "7d" }, "retention": { "dropAfter": "90d" } },
        { "table": "vmProcessMetrics", "compression": { "after": "7d" }, "retention": { "dropAfter": "90d" } }
    ])
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = std::env::var("METRICSSTACK_TEST_TIMESCALEDB_URL")
        .context("METRICSSTACK_TEST_TIMESCALEDB_URL is not set: run under testenv/run --nodes 1")?;
    let client = Client::try_default().await.context("KUBECONFIG")?;
    let name = format!("bench-{}", std::process::id());
    let schema = name.replace('-', "_");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": name } }))?,
        )
        .await?;
    let result = through_kubernetes(&client, &name, &schema, &url, args.edits).await;
    namespaces
        .delete(&name, &DeleteParams::default())
        .await
        .ok();
    let operator = result?;
    let direct = direct(&url, &schema, args.edits).await?;

    let mut report = BTreeMap::new();
    report.insert("edit -> status applied (operator)", operator);
    report.insert("policy manager called directly", direct);
    println!("\n{} edits of compressAfter on TimescaleDB:", args.edits);
    let baseline = percentile(&report["policy manager called directly"], 0.5);
    for (what, mut times) in report {
        times.sort();
        let p50 = percentile(&times, 0.5);
        let p95 = percentile(&times, 0.95);
        println!(
            "  {what:<36} p50 {:>8.1} ms   p95 {:>8.1} ms   p50 ratio to direct {:.1}",
            p50.as_secs_f64() * 1e3,
            p95.as_secs_f64() * 1e3,
            p50.as_secs_f64() / baseline.as_secs_f64()
        );
    }
    Ok(())
}

async fn through_kubernetes(
    client: &Client,
    namespace: &str,
    schema: &str,
    url: &str,
    edits: usize,
) -> anyhow::Result<Vec<Duration>> {
    install_crd(client, &MetricsStack::crd(), "convergence-bench").await?;
    let secret = connection_secret("db", url);
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await?;

    let metrics = Arc::new(Metrics::default());
    let context = Arc::new(Context::new(client.clone(), metrics, "convergence-bench"));
    let watched = namespace.to_owned();
    let operator =
        tokio::spawn(async move { controller::run(context, Some(&watched), || {}).await });

    let stacks: Api<MetricsStack> = Api::namespaced(client.clone(), namespace);
    let stack: MetricsStack = serde_json::from_value(json!({
        "apiVersion": "metricsstack.dev/v1alpha1", "kind": "MetricsStack",
        "metadata": { "name": "stack" },
        "spec": {
            "database": { "secretRef": { "name": "db" }, "tlsMode": "Disable", "schema": schema,
                          "pools": { "operator": { "maxConnections": 1 } } },
            "storage": { "tables": tables(1), "aggregates": [] },
            "queryService": { "replicas": 0 },
            "deletionPolicy": "RemovePolicies"
        }
    }))?;
    stacks.create(&PostParams::default(), &stack).await?;
    let mut times = Vec::new();
    let applied = |generation: i64| {
        move |s: Option<&MetricsStack>| {
            s.and_then(|s| s.status.as_ref())
                .and_then(|s| s.database.as_ref())
                .and_then(|d| d.applied_revisions.first())
                .is_some_and(|r| r.generation >= generation)
        }
    };
    let first = await_condition(stacks.clone(), "stack", applied(1));
    if tokio::time::timeout(Duration::from_secs(120), first)
        .await
        .is_err()
    {
        let status = stacks.get("stack").await?.status;
        bail!("the first revision was not applied within 120 s; status: {status:#?}");
    }
    for i in 0..edits {
        let started = Instant::now();
        let edited = stacks
            .patch(
                "stack",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "storage": { "tables": tables(i) } } })),
            )
            .await?;
        let generation = edited.metadata.generation.unwrap_or_default();
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(stacks.clone(), "stack", applied(generation)),
        )
        .await
        .with_context(|| format!("edit {i} did not converge within 60 s"))??;
        times.push(started.elapsed());
    }
    stacks.delete("stack", &DeleteParams::default()).await?;
    for _ in 0..600 {
        if stacks.get_opt("stack").await?.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    operator.abort();
    Ok(times)
}

/// The same edits, applied by calling the policy manager on the same server.
async fn direct(url: &str, schema: &str, edits: usize) -> anyhow::Result<Vec<Duration>> {
    let settings = PoolSettings {
        max_connections: 1,
        ..PoolSettings::default()
    };
    let pool = database::connect(url, &DISABLE_TLS, &settings, schema).await?;
    let desired = |i: usize| -> anyhow::Result<_> {
        let stack: MetricsStack = serde_json::from_value(json!({
            "apiVersion": "metricsstack.dev/v1alpha1", "kind": "MetricsStack", "metadata": { "name": "s" },
            "spec": { "database": { "secretRef": { "name": "db" } },
                      "storage": { "tables": tables(i), "aggregates": [] } }
        }))?;
        Ok(validate(&stack.spec)?.storage)
    };
    database::converge(&pool, schema, "bench/convergence", &desired(1)?, None).await?;
    let mut times = Vec::new();
    for i in 0..edits {
        let want = desired(i)?;
        let started = Instant::now();
        let outcome = database::converge(&pool, schema, "bench/convergence", &want, None).await?;
        if outcome.applied.is_empty() {
            bail!("edit {i} changed nothing");
        }
        times.push(started.elapsed());
    }
    pool.execute(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .await?;
    pool.close().await;
    Ok(times)
}
