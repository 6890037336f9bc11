//! The process search (`/api/process-search`) and a pod's processes (`/api/pod-processes`)
//! over HTTP against native PostgreSQL: answers checked against independent SQL (the search
//! with `position()` rather than `ILIKE`) or computed here from the raw rows, the search's
//! escaping of `%`, `_` and `\`, its cache key, its metrics, and bad input. A seed of 10,000
//! processes is searched; the time the first search took is printed, never asserted.

mod common;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use metricsstack_operator::database::MIGRATOR;
use metricsstack_testkit::{TestDatabase, fill_latest_samples};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

/// 10,000 processes on four nodes, each sampled 2 and 6 minutes ago (the latest sample
/// differs from the earlier one) and one in three 40 minutes ago as well (outside a
/// 15-minute window, inside an hour); a few with command lines that hold `%`, `_` and `\`
/// or differ only in case; and one pod with two containers, one of them CPU-limited.
const SEED: &str = r#"
INSERT INTO host_process_metrics ("timestamp", host, pid, start_time, parent_pid, process_name,
    command_line, username, state, cpu_usage_percent, cpu_peak_percent, memory_usage_mb,
    virtual_memory_mb, disk_read_bytes, disk_write_bytes, threads)
SELECT now() - make_interval(mins => m), 'node-' || (p % 4), 1000 + p,
       TIMESTAMPTZ '2024-01-01 00:00:00+00' + make_interval(secs => p), 1, 'app-' || (p % 50),
       '/usr/bin/app-' || p || ' --port=' || (p % 100), 'root', 'S',
       ((p * 7 + m) % 97)::real / 1.3, ((p * 7 + m) % 97 + 3)::real, (p % 500) + m + 0.25,
       2048, 0, 0, 4
FROM generate_series(1, 10000) AS p, unnest(ARRAY[2, 6, 40]) AS m
WHERE m <> 40 OR p % 3 = 0;

INSERT INTO host_process_metrics ("timestamp", host, pid, start_time, parent_pid, process_name,
    command_line, username, state, cpu_usage_percent, cpu_peak_percent, memory_usage_mb,
    virtual_memory_mb, disk_read_bytes, disk_write_bytes, threads)
SELECT now() - interval '1 minute', 'node-x', pid, TIMESTAMPTZ '2024-01-01 00:00:00+00', 1,
       name, line, 'root', 'S', cpu, cpu + 1, 100, 200, 0, 0, 1
FROM (VALUES (1, 'java', 'java -Xmx50% -jar Shop.jar', 9.5::real),
             (2, 'java', 'java -Xmx500m -jar shop.jar', 8.5),
             (3, 'tool', 'tool a_b', 7.5),
             (4, 'tool', 'tool axb', 6.5),
             (5, 'tool', 'tool a\b', 5.5),
             (6, 'kworker/0:1', NULL, 4.5)) AS v(pid, name, line, cpu);

INSERT INTO vm_process_metrics ("timestamp", host, pid, start_time, process_name,
    command_line, pod_namespace, pod_name, pod_uid, container_id, container_name,
    cpu_usage_percent, cpu_peak_percent, cpu_limit_percent, memory_usage_mb,
    disk_read_bytes, disk_write_bytes)
SELECT now() - make_interval(mins => m), 'node-1', n * 100 + p,
       TIMESTAMPTZ '2024-01-01 00:00:00+00', 'proc-' || p, '/bin/proc-' || p, 'web',
       'api-' || n, 'uid-' || n, 'cid-' || n || c, c, (p * 3 + m)::real, (p * 3 + m + 10)::real,
       CASE WHEN c = 'app' THEN ((p * 3 + m) * 2)::real END, (p * 10 + m)::float8, 0, 0
FROM (VALUES (1, 'app'), (2, 'app'), (3, 'sidecar')) AS v(p, c),
     generate_series(1, 2) AS n, unnest(ARRAY[2, 5, 10, 90]) AS m;
"#;

struct Client {
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Client {
    async fn get(&self, path_and_query: &str) -> Answer {
        let response = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .send()
            .await
            .expect("answered");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.json().await.expect("a JSON body");
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn metrics(&self) -> String {
        let response = self.http.get(format!("{}/metrics", self.base)).send();
        response
            .await
            .expect("answered")
            .text()
            .await
            .expect("text")
    }
}

async fn start(database_url: &str) -> Client {
    Client {
        base: common::start_open_service(database_url).await,
        http: reqwest::Client::new(),
    }
}

fn ts(t: DateTime<Utc>) -> Value {
    serde_json::to_value(t).expect("a timestamp serialises")
}

/// A matching process: its latest sample's time, host, pid, name, command line and CPU.
type Match = (DateTime<Utc>, String, i32, String, Option<String>, f64);

/// The search as independent SQL: the latest sample of each process by `DISTINCT ON`, the
/// text found by `position()` in the lower-cased command line or name.
async fn expected_search(pool: &PgPool, text: &str, window: &str, limit: i64) -> Value {
    let rows: Vec<Match> = sqlx::query_as(
        r#"SELECT "timestamp", host, pid, process_name, command_line, cpu_usage_percent::float8
           FROM (SELECT DISTINCT ON (host, pid, start_time) *
                 FROM host_process_metrics
                 WHERE "timestamp" >= now() - $2::interval
                 ORDER BY host, pid, start_time, "timestamp" DESC) AS latest
           WHERE position(lower($1) IN lower(coalesce(command_line, ''))) > 0
              OR position(lower($1) IN lower(process_name)) > 0
           ORDER BY cpu_usage_percent DESC, host, pid, start_time
           LIMIT $3"#,
    )
    .bind(text)
    .bind(window)
    .bind(limit)
    .fetch_all(pool)
    .await
    .expect("the expected search");
    rows.into_iter()
        .map(|(t, host, pid, name, line, cpu)| {
            json!({"timestamp": ts(t), "host": host, "pid": pid, "process_name": name,
                   "command_line": line, "cpu_usage_percent": cpu})
        })
        .collect()
}

/// The fields of each row that `expected` has.
fn project(rows: &Value, like: &Value) -> Value {
    let fields: Vec<&String> = like
        .as_array()
        .and_then(|rows| rows.first())
        .and_then(Value::as_object)
        .map(|row| row.keys().collect())
        .unwrap_or_default();
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            fields
                .iter()
                .map(|field| ((*field).clone(), row[field.as_str()].clone()))
                .collect::<serde_json::Map<_, _>>()
        })
        .map(Value::Object)
        .collect()
}

fn counted(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_search_finds_what_position_finds_with_percent_and_underscore_taken_literally() {
    let db = TestDatabase::create().await;
    let pool = db.pool(2).await;
    MIGRATOR.run(&pool).await.expect("migrations run");
    sqlx::raw_sql(SEED).execute(&pool).await.expect("seeding");
    fill_latest_samples(&pool)
        .await
        .expect("the latest samples");
    let client = start(&db.url()).await;

    // Over 10,000 processes: the first search reads the database. (Its time is the
    // benchmark's business, scripts/bench-dashboard, not this test's.)
    let first = client.get("/api/process-search?q=app-12&limit=100").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.headers["x-cache"], "MISS");
    let expected = expected_search(&pool, "app-12", "15 minutes", 100).await;
    assert_eq!(expected.as_array().map(Vec::len), Some(100));
    assert_eq!(project(&first.body["rows"], &expected), expected);
    assert_eq!(first.body["window_seconds"], 900);

    // The same search, spelt otherwise, is the same cache entry.
    let again = client
        .get("/api/process-search?limit=100&q=%20APP-12%20&window=900")
        .await;
    assert_eq!(again.headers["x-cache"], "HIT");
    assert_eq!(again.body, first.body);
    let metrics = client.metrics().await;
    let queries = r#"metricsstack_query_service_database_queries_total{part="process_search",source="raw",outcome="ok"}"#;
    assert_eq!(counted(&metrics, queries), 1, "{metrics}");
    let requests =
        r#"metricsstack_query_service_requests_total{endpoint="process_search",status="200"}"#;
    assert_eq!(counted(&metrics, requests), 2, "{metrics}");

    // `%`, `_` and `\` match themselves; case does not matter; a name matches too.
    for (text, query, matches) in [
        ("50%", "50%25", vec![1]),
        ("a_b", "a_b", vec![3]),
        ("a\\b", "a%5Cb", vec![5]),
        ("SHOP.JAR", "SHOP.JAR", vec![1, 2]),
        ("kworker", "kworker", vec![6]),
        ("%", "%25", vec![1]),
        ("_", "_", vec![3]),
    ] {
        let answer = client
            .get(&format!(
                "/api/process-search?q={query}&host=node-x&window=1h"
            ))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{text}: {}", answer.body);
        let pids: Vec<i64> = answer.body["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|row| row["pid"].as_i64().expect("a pid"))
            .collect();
        assert_eq!(pids, matches, "{text}");
        let expected = expected_search(&pool, text, "1 hour", 20).await;
        let expected: Vec<Value> = expected
            .as_array()
            .expect("rows")
            .iter()
            .filter(|row| row["host"] == "node-x")
            .cloned()
            .collect();
        assert_eq!(
            project(&answer.body["rows"], &Value::from(expected.clone())),
            Value::from(expected),
            "{text}"
        );
    }

    // A wider window sees the processes last sampled 40 minutes ago; the limit holds.
    let hour = client
        .get("/api/process-search?q=--port%3D7&window=1h&limit=100")
        .await;
    let expected = expected_search(&pool, "--port=7", "1 hour", 100).await;
    assert_eq!(project(&hour.body["rows"], &expected), expected);

    for (query, field) in [
        ("", "q"),
        ("q=", "q"),
        ("q=x&limit=101", "limit"),
        ("q=x&window=31d", "window"),
        ("q=x&namespace=web", "namespace"),
    ] {
        let answer = client.get(&format!("/api/process-search?{query}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(answer.body["field"], field, "{query}: {}", answer.body);
    }
}

/// One sample of a pod's process: CPU, CPU peak, CPU limit share, memory.
type Sample = (f64, f64, Option<f64>, f64);

/// One process of a pod as computed here from raw rows: container, pid, CPU average and
/// peak, CPU limit share, memory average and peak, samples.
type Computed = (String, i32, f64, f64, Option<f64>, f64, f64, i64);

#[tokio::test]
async fn a_pods_processes_by_container_match_its_raw_samples() {
    let db = TestDatabase::create().await;
    let pool = db.pool(2).await;
    MIGRATOR.run(&pool).await.expect("migrations run");
    sqlx::raw_sql(SEED).execute(&pool).await.expect("seeding");
    let client = start(&db.url()).await;

    let answer = client
        .get("/api/pod-processes?namespace=web&pod=api-1&window=1h")
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let samples: Vec<(String, i32, f64, f64, Option<f64>, f64)> = sqlx::query_as(
        r#"SELECT container_name, pid, cpu_usage_percent::float8, cpu_peak_percent::float8,
                  cpu_limit_percent::float8, memory_usage_mb
           FROM vm_process_metrics
           WHERE pod_namespace = 'web' AND pod_name = 'api-1'
             AND "timestamp" >= now() - interval '1 hour'"#,
    )
    .fetch_all(&pool)
    .await
    .expect("the pod's samples");
    let mut processes: BTreeMap<(String, i32), Vec<Sample>> = BTreeMap::new();
    for (container, pid, cpu, peak, limit, memory) in samples {
        processes
            .entry((container, pid))
            .or_default()
            .push((cpu, peak, limit, memory));
    }
    let mut expected: Vec<Computed> = processes
        .into_iter()
        .map(|((container, pid), samples)| {
            let n = samples.len() as f64;
            let limits: Vec<f64> = samples.iter().filter_map(|s| s.2).collect();
            (
                container,
                pid,
                samples.iter().map(|s| s.0).sum::<f64>() / n,
                samples.iter().map(|s| s.1).fold(f64::MIN, f64::max),
                (!limits.is_empty()).then(|| limits.iter().sum::<f64>() / limits.len() as f64),
                samples.iter().map(|s| s.3).sum::<f64>() / n,
                samples.iter().map(|s| s.3).fold(f64::MIN, f64::max),
                samples.len() as i64,
            )
        })
        .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.total_cmp(&a.2)).then(a.1.cmp(&b.1)));
    let rows = answer.body["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), expected.len(), "{}", answer.body);
    for (row, (container, pid, avg, peak, limit, memory, max_memory, n)) in
        rows.iter().zip(expected)
    {
        assert_eq!(row["container_name"], container.as_str(), "{row}");
        assert_eq!(row["pid"], pid, "{row}");
        assert_eq!(row["samples"], n, "{row}");
        assert_eq!(n, 3, "the sample 90 minutes ago is outside the window");
        for (field, expected) in [
            ("avg_cpu", Some(avg)),
            ("max_cpu", Some(peak)),
            ("avg_cpu_limit_percent", limit),
            ("avg_memory_mb", Some(memory)),
            ("max_memory_mb", Some(max_memory)),
        ] {
            match expected {
                Some(expected) => {
                    let shown = row[field]
                        .as_f64()
                        .unwrap_or_else(|| panic!("{field}: {row}"));
                    assert!((shown - expected).abs() < 1e-6, "{field}: {row}");
                }
                None => assert!(row[field].is_null(), "{field}: {row}"),
            }
        }
    }
    assert!(
        rows.iter()
            .any(|row| row["container_name"] == "sidecar" && row["avg_cpu_limit_percent"].is_null()),
        "the container without a CPU limit has no limit share"
    );

    for (query, field) in [
        ("pod=api-1", "namespace"),
        ("namespace=web", "pod"),
        ("namespace=web&pod=api-1&window=30d", "window"),
    ] {
        let answer = client.get(&format!("/api/pod-processes?{query}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(answer.body["field"], field, "{query}: {}", answer.body);
    }
    let unknown = client
        .get("/api/pod-processes?namespace=web&pod=nothing")
        .await;
    assert_eq!(unknown.body["rows"], json!([]));
}
