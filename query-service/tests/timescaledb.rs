//! The query service on TimescaleDB: long windows read the hourly continuous aggregates the
//! operator created, and answer what the raw rows say.

use std::time::Duration;

use metricsstack_common::access::{AccessPolicy, Authentication};
use metricsstack_common::config::QueryServiceConfig;
use metricsstack_common::database::{DatabaseTls, PoolSettings, TlsMode};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_operator::database::{self, JobKind, converge, read_state};
use metricsstack_operator::validate::validate;
use metricsstack_query_service::QueryService;
use metricsstack_testkit::{TimescaleSchema, wait_until};
use serde_json::Value;
use sqlx::Connection;
use tokio::net::TcpListener;

/// The test servers speak no TLS.
const DISABLE_TLS: DatabaseTls = DatabaseTls {
    mode: TlsMode::Disable,
    ca: None,
};

#[tokio::test]
async fn long_windows_read_the_hourly_aggregate() {
    let tsdb = TimescaleSchema::create().await;
    // The operator converges the example TimescaleDB stack: hypertables and hourly rollups.
    let stack: MetricsStack = serde_yaml::from_str(include_str!("../../examples/timescale.yaml"))
        .expect("the example parses");
    let storage = validate(&stack.spec).expect("the example is valid").storage;
    let one = PoolSettings {
        max_connections: 1,
        ..PoolSettings::default()
    };
    let pool = database::connect(&tsdb.url(), &DISABLE_TLS, &one, &tsdb.schema)
        .await
        .expect("the operator connects");
    converge(&pool, &tsdb.schema, "tests/query-service", &storage, None)
        .await
        .expect("converges");
    // Two nodes, samples two and three hours ago (inside the refresh window).
    sqlx::raw_sql(
        r#"INSERT INTO host_overall_metrics ("timestamp", host, cpu_usage_percent,
             cpu_per_core_percent, load_1, load_5, load_15, memory_total_bytes, memory_used_bytes,
             memory_usage_mb, swap_total_bytes, swap_used_bytes, disk_total_bytes, disk_used_bytes,
             disk_read_bytes, disk_write_bytes, network_rx_bytes, network_tx_bytes, uptime_seconds,
             process_count)
           SELECT date_trunc('hour', now()) - make_interval(hours => h) + make_interval(mins => m),
                  'node-' || n, 10 * n + m, '{1,2}', n, n, n, 8e9, 4e9, 1000 + 100 * n + m,
                  0, 0, 1e12, 5e11, 0, 0, 0, 0, 3600, 100
           FROM generate_series(2, 3) AS h, generate_series(1, 2) AS n, generate_series(0, 50, 10) AS m"#,
    )
    .execute(&pool)
    .await
    .expect("seeded");
    let state = read_state(&pool, &tsdb.schema).await.expect("state");
    assert!(
        state
            .job(JobKind::Refresh, "host_overall_metrics_hourly")
            .is_some()
    );
    // No background workers on the test server: materialise the rollup by hand, over all
    // time (its policy's window, 3 h to 1 h ago, would leave out the older hour).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CALL refresh_continuous_aggregate('{}.host_overall_metrics_hourly', NULL, NULL)",
        tsdb.schema
    )))
    .execute(&pool)
    .await
    .expect("the rollup is refreshed");
    let expected: Vec<(String, f64, f64, i64)> = sqlx::query_as(
        "SELECT host, avg(cpu_usage_percent)::float8, max(memory_usage_mb), count(*) \
         FROM host_overall_metrics GROUP BY host ORDER BY host",
    )
    .fetch_all(&pool)
    .await
    .expect("the raw answer");
    pool.close().await;
    // The test server is one session: clear the operator's prepared statements before the
    // query service's connection prepares its own.
    tsdb.connect().await.close().await.expect("closed");

    let config = QueryServiceConfig {
        stack: Default::default(),
        authentication: Authentication::None,
        listen_address: "127.0.0.1:0".into(),
        schema: tsdb.schema.clone(),
        database: Default::default(),
        pool: one,
        fresh_ttl_seconds: 4,
        stale_while_revalidate_seconds: 30,
        stale_if_error_seconds: 300,
        max_entries: 100,
        max_bytes: 1 << 20,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let service =
        QueryService::new(&config, &tsdb.url(), AccessPolicy::Open).expect("the service starts");
    let server = tokio::spawn(service.clone().run(listener, std::future::pending()));
    // The service looks the aggregates up when it starts, giving up after two seconds (and
    // trying again later) on a slow machine: wait until it has found them.
    wait_until(
        "the service has found the hourly aggregate",
        Duration::from_secs(120),
        || async { service.aggregates().host_overall },
    )
    .await;
    let answer: Value = reqwest::get(format!(
        "http://{address}/api/host-overall-metrics?window=7d"
    ))
    .await
    .expect("answered")
    .json()
    .await
    .expect("JSON");
    server.abort();

    assert_eq!(answer["source"], "hourly_aggregate", "{answer}");
    let rows = answer["rows"].as_array().expect("rows");
    let got: Vec<(String, f64, f64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["host"].as_str().expect("host").to_owned(),
                r["avg_cpu"].as_f64().expect("avg_cpu"),
                r["max_memory_mb"].as_f64().expect("max_memory_mb"),
                r["samples"].as_i64().expect("samples"),
            )
        })
        .collect();
    assert_eq!(got.len(), expected.len(), "{answer}");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!((&g.0, g.3), (&e.0, e.3), "{answer}");
        assert!(
            (g.1 - e.1).abs() < 1e-6 && (g.2 - e.2).abs() < 1e-6,
            "{g:?} vs {e:?}"
        );
    }
}
