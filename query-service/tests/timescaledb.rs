//! The query service on TimescaleDB: long windows read the hourly continuous aggregates the
//! operator created (their plans read the rollups, not the raw chunks), and answer what the
//! raw rows say.

use std::time::Duration;

use metricsstack_common::access::{AccessPolicy, Authentication};
use metricsstack_common::config::QueryServiceConfig;
use metricsstack_common::database::{DatabaseTls, PoolSettings, TlsMode};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_operator::database::{self, JobKind, converge, read_state};
use metricsstack_operator::validate::validate;
use metricsstack_query_service::QueryService;
use metricsstack_query_service::filters::{Part, PartKey, TopMetric};
use metricsstack_query_service::queries::{self, Source};
use metricsstack_testkit::{TimescaleSchema, wait_until};
use serde_json::Value;
use sqlx::{Connection, PgPool};
use tokio::net::TcpListener;

/// The test servers speak no TLS.
const DISABLE_TLS: DatabaseTls = DatabaseTls {
    mode: TlsMode::Disable,
    ca: None,
};

/// Pool settings of one connection, as the single-session test server needs.
fn one_connection() -> PoolSettings {
    PoolSettings {
        max_connections: 1,
        ..PoolSettings::default()
    }
}

/// The operator's pool on `tsdb`, after converging the example TimescaleDB stack there
/// (`examples/timescale.yaml`): hypertables and hourly rollups.
async fn converged_example(tsdb: &TimescaleSchema) -> PgPool {
    let stack: MetricsStack = serde_yaml::from_str(include_str!("../../examples/timescale.yaml"))
        .expect("the example parses");
    let storage = validate(&stack.spec).expect("the example is valid").storage;
    let pool = database::connect(&tsdb.url(), &DISABLE_TLS, &one_connection(), &tsdb.schema)
        .await
        .expect("the operator connects");
    converge(&pool, &tsdb.schema, "tests/query-service", &storage, None)
        .await
        .expect("converges");
    pool
}

#[tokio::test]
async fn long_windows_read_the_hourly_aggregate() {
    let tsdb = TimescaleSchema::create().await;
    let pool = converged_example(&tsdb).await;
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
        pool: one_connection(),
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

/// The parts that read hourly buckets for long windows, each over `window` seconds, for
/// every host, the namespace `shop` and its pod `web-1`, whose process `/bin/worker --id 1`
/// is followed.
fn long_window_keys(window_seconds: u32) -> Vec<PartKey> {
    [
        Part::TopProcesses,
        Part::HostOverallMetrics,
        Part::VmMetrics,
        Part::PodProcesses,
        Part::HostHistory,
        Part::ProcessHistory,
    ]
    .into_iter()
    .map(|part| {
        let in_pod = matches!(part, Part::PodProcesses | Part::ProcessHistory);
        let followed = part == Part::ProcessHistory;
        PartKey {
            part,
            limit: matches!(part, Part::TopProcesses | Part::VmMetrics).then_some(20),
            metric: (part == Part::TopProcesses).then_some(TopMetric::Cpu),
            window_seconds,
            host: None,
            namespace: in_pod.then(|| "shop".to_owned()),
            search: None,
            pod: in_pod.then(|| "web-1".to_owned()),
            container: followed.then(|| "main".to_owned()),
            command: followed.then(|| "/bin/worker --id 1".to_owned()),
        }
    })
    .collect()
}

/// Every relation a plan reads (`Relation Name` of its nodes, at any depth).
fn relations(plan: &Value, found: &mut Vec<String>) {
    match plan {
        Value::Object(node) => {
            if let Some(Value::String(name)) = node.get("Relation Name") {
                found.push(name.clone());
            }
            node.values().for_each(|v| relations(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| relations(v, found)),
        _ => {}
    }
}

/// Whether two answers agree, numbers to a millionth (sums of floats in another order).
fn agree(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            (x - y).abs() <= 1e-6 * x.abs().max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| agree(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| k == "source" || y.get(k).is_some_and(|w| agree(v, w)))
        }
        _ => a == b,
    }
}

#[tokio::test]
async fn a_thirty_day_window_reads_the_rollups_not_the_raw_chunks_and_answers_as_the_raw_rows() {
    let tsdb = TimescaleSchema::create().await;
    let pool = converged_example(&tsdb).await;
    // 31 days of samples every 30 minutes, up to now: two hosts with three processes each,
    // two pods with two processes each (one with a CPU limit), in daily chunks.
    sqlx::raw_sql(
        r#"INSERT INTO host_process_metrics ("timestamp", host, pid, start_time, process_name,
             cpu_usage_percent, cpu_peak_percent, memory_usage_mb, virtual_memory_mb,
             disk_read_bytes, disk_write_bytes)
           SELECT now() - make_interval(mins => 30 * s), 'node-' || h, p,
                  now() - interval '40 days', 'process-' || p, (s * 7 + h * 3 + p) % 100,
                  (s * 7 + h * 3 + p) % 100 + 5, 100 + (s + p) % 50, 500, 0, 0
           FROM generate_series(0, 31 * 48) AS s, generate_series(1, 2) AS h,
                generate_series(1, 3) AS p;
           INSERT INTO host_overall_metrics ("timestamp", host, cpu_usage_percent,
             cpu_per_core_percent, load_1, load_5, load_15, memory_total_bytes,
             memory_used_bytes, memory_usage_mb, swap_total_bytes, swap_used_bytes,
             disk_total_bytes, disk_used_bytes, disk_read_bytes, disk_write_bytes,
             network_rx_bytes, network_tx_bytes, uptime_seconds, process_count)
           SELECT now() - make_interval(mins => 30 * s), 'node-' || h, (s * 3 + h) % 100,
                  '{1,2}', h, h, h, 8e9, 4e9, 1000 + s % 300, 0, 0, 1e12, 5e11, 0, 0, s, s,
                  3600, 100
           FROM generate_series(0, 31 * 48) AS s, generate_series(1, 2) AS h;
           INSERT INTO vm_process_metrics ("timestamp", host, pid, start_time, process_name,
             command_line, pod_namespace, pod_name, pod_uid, container_id, container_name,
             cpu_usage_percent, cpu_peak_percent, cpu_limit_percent, memory_usage_mb,
             disk_read_bytes, disk_write_bytes)
           SELECT now() - make_interval(mins => 30 * s), 'node-' || pd, 100 * pd + pr,
                  now() - interval '40 days', 'worker-' || pr, '/bin/worker --id ' || pr,
                  'shop', 'web-' || pd, 'uid-' || pd, 'cid-' || pd, 'main',
                  (s * 5 + pd + pr) % 100, (s * 5 + pd + pr) % 100 + 3,
                  CASE WHEN pd = 1 THEN ((s * 5 + pd + pr) % 100) / 2.0 END,
                  200 + (s * 3 + pr) % 80, 0, 0
           FROM generate_series(0, 31 * 48) AS s, generate_series(1, 2) AS pd,
                generate_series(1, 2) AS pr;
           ANALYZE"#,
    )
    .execute(&pool)
    .await
    .expect("seeded");
    // No background workers: materialise the rollups as their refresh jobs would, up to
    // the last complete hour; newer rows are read raw (real-time aggregation).
    for view in [
        "host_process_metrics_hourly",
        "host_overall_metrics_hourly",
        "vm_process_metrics_hourly",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CALL refresh_continuous_aggregate('{}.{view}', NULL, \
             date_trunc('hour', now()) - interval '1 hour')",
            tsdb.schema
        )))
        .execute(&pool)
        .await
        .expect("the rollup is refreshed");
    }
    let aggregates = queries::detect_aggregates(&pool).await.expect("detected");
    assert_eq!(
        aggregates,
        queries::Aggregates {
            host_process: true,
            host_overall: true,
            vm_process: true,
        }
    );
    // Which hypertable each chunk belongs to.
    let chunks: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.chunk_name::text, \
                COALESCE(a.view_name, c.hypertable_name)::text \
         FROM timescaledb_information.chunks c \
         LEFT JOIN timescaledb_information.continuous_aggregates a \
           ON a.materialization_hypertable_name = c.hypertable_name \
         WHERE a.view_schema = $1 OR c.hypertable_schema = $1",
    )
    .bind(&tsdb.schema)
    .fetch_all(&pool)
    .await
    .expect("chunks");
    // The distinct chunks of `table` (a metric table or a rollup) among `read`.
    let chunks_of = |table: &str, read: &[String]| {
        chunks
            .iter()
            .filter(|(chunk, owner)| owner == table && read.contains(chunk))
            .count()
    };
    let all_chunks: Vec<String> = chunks.iter().map(|(chunk, _)| chunk.clone()).collect();

    for key in long_window_keys(30 * 86_400) {
        let part = key.part.name();
        let (raw_table, rollup) = match key.part {
            Part::TopProcesses => ("host_process_metrics", "host_process_metrics_hourly"),
            Part::HostOverallMetrics | Part::HostHistory => {
                ("host_overall_metrics", "host_overall_metrics_hourly")
            }
            _ => ("vm_process_metrics", "vm_process_metrics_hourly"),
        };
        let statement = queries::statement(&key, aggregates);
        assert_eq!(statement.source, Source::HourlyAggregate, "{part}");
        let mut read = Vec::new();
        relations(
            &queries::explain(&pool, statement, &key)
                .await
                .expect("explained"),
            &mut read,
        );
        let raw_total = chunks_of(raw_table, &all_chunks);
        assert!(raw_total >= 5, "{raw_table} has {raw_total} chunks");
        assert!(
            chunks_of(rollup, &read) > 0,
            "{part} reads {rollup}: {read:?}"
        );
        // Only the rows newer than the rollup's watermark (the last hour or two) are read
        // raw (and, for host overall metrics, the last ten minutes for the network and
        // disk now): the newest chunk, and the one before when a chunk began in that time.
        let raw_chunks = chunks_of(raw_table, &read);
        assert!(
            raw_chunks <= 2,
            "{part} reads {raw_chunks} of {raw_total} chunks of {raw_table}: {read:?}"
        );
        // The same part computed from raw rows reads every chunk of the window.
        let from_raw = queries::Statement {
            source: Source::HourlyFromRaw,
            ..statement
        };
        let mut read_from_raw = Vec::new();
        relations(
            &queries::explain(&pool, from_raw, &key)
                .await
                .expect("explained"),
            &mut read_from_raw,
        );
        let raw_chunks_from_raw = chunks_of(raw_table, &read_from_raw);
        assert!(
            raw_chunks_from_raw >= raw_total - 1,
            "{part} from raw rows reads {raw_chunks_from_raw} chunks: {read_from_raw:?}"
        );
        // And both answer the same.
        let answer: Value = serde_json::from_slice(
            &queries::run(&pool, statement, &key)
                .await
                .expect("answered"),
        )
        .expect("JSON");
        let answer_from_raw: Value =
            serde_json::from_slice(&queries::run(&pool, from_raw, &key).await.expect("answered"))
                .expect("JSON");
        assert!(
            !answer["rows"].as_array().expect("rows").is_empty(),
            "{part}: {answer}"
        );
        assert!(
            agree(&answer, &answer_from_raw),
            "{part}: {answer} from raw rows: {answer_from_raw}"
        );
        if key.part == Part::HostHistory {
            // Each node's history is its raw rows since the window's start, rounded down to
            // a whole two-hour bucket, in two-hour buckets: every row counted once.
            assert_eq!(answer["bucket_seconds"], 7200, "{part}");
            let expected: Vec<(String, i64)> = sqlx::query_as(
                "SELECT host, count(*) FROM host_overall_metrics \
                 WHERE \"timestamp\" >= date_bin('2 hours', now() - interval '30 days', \
                                               TIMESTAMPTZ 'epoch') \
                 GROUP BY host ORDER BY host",
            )
            .fetch_all(&pool)
            .await
            .expect("the raw answer");
            let rows = answer["rows"].as_array().expect("rows");
            for (host, samples) in expected {
                let buckets: Vec<&Value> = rows.iter().filter(|r| r["host"] == host).collect();
                assert!(buckets.len() <= 361, "{host}: {} buckets", buckets.len());
                let counted: i64 = buckets.iter().map(|r| r["samples"].as_i64().unwrap()).sum();
                assert_eq!(counted, samples, "{host}");
            }
        }
        if key.part == Part::ProcessHistory {
            // The followed process's history is its raw rows since the window's start,
            // rounded down to a whole two-hour bucket, in two-hour buckets, each counted
            // once; the CPU limit share is averaged where the pod has a limit.
            let (samples, limit_share): (i64, f64) = sqlx::query_as(
                "SELECT count(*), avg(cpu_limit_percent)::float8 FROM vm_process_metrics \
                 WHERE \"timestamp\" >= date_bin('2 hours', now() - interval '30 days', \
                                               TIMESTAMPTZ 'epoch') \
                   AND pod_namespace = 'shop' AND pod_name = 'web-1' AND pid = 101",
            )
            .fetch_one(&pool)
            .await
            .expect("the raw answer");
            let rows = answer["rows"].as_array().expect("rows");
            assert!(rows.len() <= 361, "{} buckets", rows.len());
            assert!(rows.iter().all(|r| r["pid"] == 101), "{answer}");
            let counted: i64 = rows.iter().map(|r| r["samples"].as_i64().unwrap()).sum();
            assert_eq!(counted, samples, "{part}");
            let weighted: f64 = rows
                .iter()
                .map(|r| {
                    r["avg_cpu_limit_percent"].as_f64().unwrap() * r["samples"].as_f64().unwrap()
                })
                .sum();
            assert!(
                (weighted / counted as f64 - limit_share).abs() < 1e-6,
                "{weighted} over {counted} vs {limit_share}"
            );
        }
        if key.part == Part::PodProcesses {
            // A pod's processes over hourly buckets are its raw rows since the window's
            // start, rounded down to the hour, averaged.
            let expected: Vec<(i32, f64, i64)> = sqlx::query_as(
                "SELECT pid, avg(cpu_usage_percent)::float8, count(*) FROM vm_process_metrics \
                 WHERE \"timestamp\" >= date_bin('1 hour', now() - interval '30 days', \
                                               TIMESTAMPTZ '2000-01-01 00:00:00+00') \
                   AND pod_namespace = 'shop' AND pod_name = 'web-1' \
                 GROUP BY pid ORDER BY pid",
            )
            .fetch_all(&pool)
            .await
            .expect("the raw answer");
            let mut got: Vec<(i32, f64, i64)> = answer["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| {
                    (
                        r["pid"].as_i64().expect("pid") as i32,
                        r["avg_cpu"].as_f64().expect("avg_cpu"),
                        r["samples"].as_i64().expect("samples"),
                    )
                })
                .collect();
            got.sort_by_key(|r| r.0);
            assert_eq!(got.len(), expected.len(), "{answer}");
            for (g, e) in got.iter().zip(&expected) {
                assert!(
                    g.0 == e.0 && g.2 == e.2 && (g.1 - e.1).abs() < 1e-6,
                    "{g:?} vs {e:?}"
                );
            }
        }
    }
    pool.close().await;
}
