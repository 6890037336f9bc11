//! A process's history across restarts (`/api/process-history`) and the container shares of
//! a pod's processes (`/api/pod-processes`) over HTTP against native PostgreSQL: a process
//! followed by pod, container and command through two incarnations (a new pid, start time
//! and container id after a restart), its buckets checked against the raw rows, other
//! commands, containers and pods left out, and bad input named field by field.

mod common;

use metricsstack_operator::database::MIGRATOR;
use metricsstack_testkit::TestDatabase;
use reqwest::StatusCode;
use serde_json::Value;

/// In pod `shop/web-0`, container `app`, the command `/srv/app --serve` runs as pid 100 (in
/// container `cid-1`) sampled 50 to 31 minutes ago, then, after a restart, as pid 7 (in
/// container `cid-2`) sampled 25 to 1 minutes ago, and once two days ago as pid 90. Beside
/// it: another command in the same container, the same command in a sidecar container and in
/// another pod. CPU and memory differ by sample; the shares are those a 500m CPU request,
/// 1-core limit, 256 MiB request and 512 MiB limit give.
const SEED: &str = r#"
INSERT INTO vm_process_metrics ("timestamp", host, pid, start_time, process_name,
    command_line, pod_namespace, pod_name, pod_uid, container_id, container_name,
    cpu_usage_percent, cpu_peak_percent, cpu_limit_percent, memory_usage_mb,
    disk_read_bytes, disk_write_bytes, cpu_request_percent, memory_limit_percent,
    memory_request_percent)
SELECT now() - make_interval(mins => m), 'node-1', pid, started, 'app', line, 'shop', pod,
       'uid-' || pod, cid, container, (m % 40)::real, (m % 40 + 5)::real, (m % 40)::real,
       (100 + m)::float8, 0, 0, ((m % 40) * 2)::real, ((100 + m) / 5.12)::real,
       ((100 + m) / 2.56)::real
FROM (VALUES
        (100, TIMESTAMPTZ '2026-01-01 00:00:00+00', 'cid-1', 'app', 'web-0', '/srv/app --serve', 31, 50),
        (7, TIMESTAMPTZ '2026-01-02 00:00:00+00', 'cid-2', 'app', 'web-0', '/srv/app --serve', 1, 25),
        (90, TIMESTAMPTZ '2025-12-01 00:00:00+00', 'cid-0', 'app', 'web-0', '/srv/app --serve', 2880, 2880),
        (101, TIMESTAMPTZ '2026-01-01 00:00:00+00', 'cid-1', 'app', 'web-0', '/srv/app --migrate', 1, 50),
        (102, TIMESTAMPTZ '2026-01-01 00:00:00+00', 'cid-3', 'sidecar', 'web-0', '/srv/app --serve', 1, 50),
        (103, TIMESTAMPTZ '2026-01-01 00:00:00+00', 'cid-4', 'app', 'web-1', '/srv/app --serve', 1, 50)
     ) AS v(pid, started, cid, container, pod, line, first, last),
     generate_series(first, last) AS m;
"#;

/// The incarnations' `(pid, start time)` as the API spells them, in order.
const INCARNATIONS: [(i64, &str); 2] = [(100, "2026-01-01T00:00:00Z"), (7, "2026-01-02T00:00:00Z")];

const HISTORY: &str =
    "/api/process-history?namespace=shop&pod=web-0&container=app&command=%2Fsrv%2Fapp%20--serve";

async fn get(base: &str, path_and_query: &str) -> (StatusCode, Value) {
    let response = reqwest::get(format!("{base}{path_and_query}"))
        .await
        .expect("answered");
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

fn close(row: &Value, field: &str, expected: f64) {
    let shown = row[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field}: {row}"));
    assert!((shown - expected).abs() < 1e-3, "{field} {expected}: {row}");
}

#[tokio::test]
async fn a_process_is_followed_by_its_command_across_a_restart_with_both_incarnations() {
    let db = TestDatabase::create().await;
    let pool = db.pool(2).await;
    MIGRATOR.run(&pool).await.expect("migrations run");
    sqlx::raw_sql(SEED).execute(&pool).await.expect("seeding");
    let base = common::start_open_service(&db.url()).await;

    // An hour: buckets of 10 seconds, so each sample (a minute apart) is a bucket of its
    // own, in time order, the first incarnation's before the second's.
    let (status, answer) = get(&base, &format!("{HISTORY}&window=1h")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["window_seconds"], 3600);
    assert_eq!(answer["source"], "raw");
    assert_eq!(answer["bucket_seconds"], 10);
    let rows = answer["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 20 + 25, "{answer}");
    let incarnation = |row: &Value| {
        (
            row["pid"].as_i64().expect("a pid"),
            row["start_time"].as_str().expect("a start time").to_owned(),
        )
    };
    let mut seen: Vec<(i64, String)> = Vec::new();
    for row in rows {
        if seen.last() != Some(&incarnation(row)) {
            seen.push(incarnation(row));
        }
    }
    let expected: Vec<(i64, String)> = INCARNATIONS
        .iter()
        .map(|(pid, start)| (*pid, (*start).to_owned()))
        .collect();
    assert_eq!(seen, expected, "one restart, from pid 100 to pid 7");
    assert_eq!(rows[0]["container_id"], "cid-1");
    assert_eq!(rows[20]["container_id"], "cid-2");
    let times: Vec<&str> = rows
        .iter()
        .map(|row| row["timestamp"].as_str().expect("a bucket"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");

    // Each bucket is its one raw sample, `m` minutes ago: 50 for the first row, 1 for the last.
    for (row, m) in rows.iter().zip((31..=50).rev().chain((1..=25).rev())) {
        let m = f64::from(m);
        let cpu = m % 40.0;
        assert_eq!(row["samples"], 1, "{row}");
        close(row, "avg_cpu", cpu);
        close(row, "max_cpu", cpu + 5.0);
        close(row, "avg_memory_mb", 100.0 + m);
        close(row, "max_memory_mb", 100.0 + m);
        close(row, "avg_cpu_limit_percent", cpu);
        close(row, "avg_cpu_request_percent", cpu * 2.0);
        close(row, "avg_memory_limit_percent", (100.0 + m) / 5.12);
        close(row, "avg_memory_request_percent", (100.0 + m) / 2.56);
    }

    // Thirty days: two-hour buckets, which take in the incarnation of two days ago; every
    // sample of the command in that container is counted once, no other.
    let (status, month) = get(&base, &format!("{HISTORY}&window=30d")).await;
    assert_eq!(status, StatusCode::OK, "{month}");
    // PostgreSQL has no rollup: the hourly buckets are computed from the raw rows.
    assert_eq!(month["source"], "hourly_from_raw");
    assert_eq!(month["bucket_seconds"], 7200);
    let rows = month["rows"].as_array().expect("rows");
    assert_eq!(rows[0]["pid"], 90, "{month}");
    let samples: i64 = rows
        .iter()
        .map(|row| row["samples"].as_i64().unwrap())
        .sum();
    assert_eq!(samples, 1 + 20 + 25);
    let (in_database,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM vm_process_metrics WHERE pod_name = 'web-0' \
         AND container_name = 'app' AND command_line = '/srv/app --serve'",
    )
    .fetch_one(&pool)
    .await
    .expect("counted");
    assert_eq!(samples, in_database);
    for row in rows {
        let bucket = chrono::DateTime::parse_from_rfc3339(row["timestamp"].as_str().unwrap())
            .expect("a time");
        assert_eq!(
            bucket.timestamp() % 7200,
            0,
            "whole two-hour buckets: {row}"
        );
    }

    let (_, unknown) = get(
        &base,
        "/api/process-history?namespace=shop&pod=web-0&container=app&command=nothing",
    )
    .await;
    assert_eq!(unknown["rows"], serde_json::json!([]));

    // Documented, with its required parameters.
    let document = reqwest::get(format!("{base}/openapi.yaml"))
        .await
        .expect("answered")
        .text()
        .await
        .expect("text");
    let document: serde_yaml::Value = serde_yaml::from_str(&document).expect("YAML");
    let parameters = document["paths"]["/api/process-history"]["get"]["parameters"]
        .as_sequence()
        .expect("documented parameters");
    let required: Vec<&str> = parameters
        .iter()
        .filter(|p| p["required"].as_bool() == Some(true))
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(required, ["namespace", "pod", "container", "command"]);

    for (query, field) in [
        ("pod=web-0&container=app&command=x", "namespace"),
        ("namespace=shop&container=app&command=x", "pod"),
        ("namespace=shop&pod=web-0&command=x", "container"),
        ("namespace=shop&pod=web-0&container=app", "command"),
        (
            "namespace=shop&pod=web-0&container=app&command=x&window=31d",
            "window",
        ),
        (
            "namespace=shop&pod=web-0&container=app&command=x&pid=7",
            "pid",
        ),
    ] {
        let (status, body) = get(&base, &format!("/api/process-history?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body["field"], field, "{query}: {body}");
        assert_eq!(body["code"], "invalid_parameter", "{query}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_pods_processes_carry_their_shares_of_the_containers_requests_and_limits() {
    let db = TestDatabase::create().await;
    let pool = db.pool(2).await;
    MIGRATOR.run(&pool).await.expect("migrations run");
    sqlx::raw_sql(SEED).execute(&pool).await.expect("seeding");
    let base = common::start_open_service(&db.url()).await;

    let (status, answer) = get(
        &base,
        "/api/pod-processes?namespace=shop&pod=web-0&window=1h",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let rows = answer["rows"].as_array().expect("rows");
    let serving = rows
        .iter()
        .find(|row| row["pid"] == 7)
        .unwrap_or_else(|| panic!("pid 7 in {answer}"));
    // Pid 7 was sampled 1 to 25 minutes ago: the averages of m, m * 2 and (100 + m) / x.
    let mean_m = 13.0;
    close(serving, "avg_cpu_limit_percent", mean_m);
    close(serving, "avg_cpu_request_percent", mean_m * 2.0);
    close(serving, "avg_memory_limit_percent", (100.0 + mean_m) / 5.12);
    close(
        serving,
        "avg_memory_request_percent",
        (100.0 + mean_m) / 2.56,
    );

    // Rows recorded before the collector recorded the shares have none.
    sqlx::query(
        "UPDATE vm_process_metrics SET cpu_request_percent = NULL, memory_limit_percent = NULL, \
         memory_request_percent = NULL WHERE pod_name = 'web-1'",
    )
    .execute(&pool)
    .await
    .expect("updated");
    let (_, other) = get(
        &base,
        "/api/pod-processes?namespace=shop&pod=web-1&window=1h",
    )
    .await;
    let row = &other["rows"][0];
    for field in [
        "avg_cpu_request_percent",
        "avg_memory_limit_percent",
        "avg_memory_request_percent",
    ] {
        assert!(row[field].is_null(), "{field}: {row}");
    }
}
