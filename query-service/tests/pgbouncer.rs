//! The query service through a real PgBouncer (Debian's package, 1.18) in transaction mode
//! with `database.pooler: PgBouncerTransaction`: two stacks' services, in two schemas of one
//! database, share PgBouncer's server pool (4 connections) with more concurrent queries than
//! it has, and each answers from its own schema.

use std::time::Duration;

use metricsstack_common::access::{AccessPolicy, Authentication};
use metricsstack_common::config::{DatabaseConfig, QueryServiceConfig};
use metricsstack_common::database::{PoolSettings, Pooler};
use metricsstack_operator::database::MIGRATOR;
use metricsstack_query_service::QueryService;
use metricsstack_testkit::{TestDatabase, required_env};
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};
use tokio::net::TcpListener;

/// The stacks' schemas and how many samples each seeds per host: different counts, so that
/// an answer from the other schema shows.
const STACKS: [(&str, i64); 2] = [("public", 5), ("stack_b", 9)];
const HOSTS: [&str; 3] = ["node-1", "node-2", "node-3"];
const WINDOWS: [&str; 3] = ["1h", "6h", "2d"];

/// Migrates `schema` and seeds, per host, `samples` host samples of the last half hour
/// (offset by the host's number, so that the hosts differ too).
async fn seed(db: &TestDatabase, schema: &str, samples: i64) {
    let mut conn = db
        .options
        .clone()
        .options([("search_path", schema)])
        .connect()
        .await
        .expect("a direct connection");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(&mut conn)
    .await
    .expect("the schema");
    MIGRATOR.run(&mut conn).await.expect("migrations run");
    sqlx::query(
        r#"INSERT INTO host_overall_metrics ("timestamp", host, cpu_usage_percent,
               cpu_per_core_percent, load_1, load_5, load_15, memory_total_bytes,
               memory_used_bytes, memory_usage_mb, swap_total_bytes, swap_used_bytes,
               disk_total_bytes, disk_used_bytes, disk_read_bytes, disk_write_bytes,
               network_rx_bytes, network_tx_bytes, uptime_seconds, process_count)
           SELECT now() - make_interval(mins => m), 'node-' || h, 10, ARRAY[10]::real[], 1, 1,
                  1, 1000, 500, 1, 0, 0, 0, 0, 0, 0, 0, 0, 100, 10
           FROM generate_series(1, 3) AS h, generate_series(1, $1::int4 + h - 1) AS m"#,
    )
    .bind(i32::try_from(samples).expect("a small count"))
    .execute(&mut conn)
    .await
    .expect("seeding");
    conn.close().await.ok();
}

fn config(schema: &str) -> QueryServiceConfig {
    QueryServiceConfig {
        stack: Default::default(),
        authentication: Authentication::None,
        listen_address: "127.0.0.1:0".into(),
        schema: schema.into(),
        database: DatabaseConfig {
            tls: None,
            pooler: Pooler::PgBouncerTransaction,
        },
        pool: PoolSettings {
            max_connections: 8,
            ..PoolSettings::default()
        },
        fresh_ttl_seconds: 60,
        stale_while_revalidate_seconds: 60,
        stale_if_error_seconds: 60,
        max_entries: 1000,
        max_bytes: 64 * 1024 * 1024,
    }
}

/// Starts a service for `schema` reading through PgBouncer; returns its base URL.
async fn start(schema: &str, database_url: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    let service = QueryService::new(&config(schema), database_url, AccessPolicy::Open)
        .expect("the service starts");
    service
        .refresh_aggregates()
        .await
        .expect("the aggregates are looked up through PgBouncer");
    tokio::spawn(service.run(listener, std::future::pending()));
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stacks_answer_from_their_own_schema_through_one_pgbouncer_pool() {
    let db = TestDatabase::create().await;
    for (schema, samples) in STACKS {
        seed(&db, schema, samples).await;
    }
    let url = required_env("METRICSSTACK_TEST_PGBOUNCER_URL")
        .parse::<PgConnectOptions>()
        .expect("the PgBouncer URL parses")
        .database(&db.name)
        .to_url_lossy()
        .to_string();
    let http = reqwest::Client::new();
    let mut requests = Vec::new();
    for (schema, samples) in STACKS {
        let base = start(schema, &url).await;
        assert_eq!(
            http.get(format!("{base}/readyz"))
                .send()
                .await
                .expect("an answer")
                .status(),
            200,
            "ready through PgBouncer"
        );
        for (h, host) in HOSTS.iter().enumerate() {
            for window in WINDOWS {
                let request = http.get(format!(
                    "{base}/api/host-overall-metrics?host={host}&window={window}"
                ));
                let expected = samples + h as i64;
                requests.push(async move {
                    let response = request.send().await.expect("an answer");
                    let status = response.status();
                    let body: Value = response.json().await.expect("JSON");
                    (schema, *host, window, status, body, expected)
                });
            }
        }
    }
    // Eighteen distinct queries at once, from pools of 8 connections each, over 4 server
    // connections.
    let answers = tokio::time::timeout(
        Duration::from_secs(120),
        futures::future::join_all(requests),
    )
    .await
    .expect("every request is answered");
    for (schema, host, window, status, body, expected) in answers {
        assert_eq!(status, 200, "{schema} {host} {window}: {body}");
        let rows = body["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 1, "{schema} {host} {window}: {body}");
        assert_eq!(rows[0]["host"], host, "{schema} {host} {window}: {body}");
        assert_eq!(
            rows[0]["samples"], expected,
            "{schema} {host} {window}: the samples of the stack's own schema: {body}"
        );
    }
}
