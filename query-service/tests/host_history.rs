//! The nodes' history (`/api/host-history`) over HTTP against native PostgreSQL: each
//! node's buckets checked against the raw rows over an hour (raw buckets, with network
//! rates and disk) and over 30 days (hourly buckets computed from raw rows, without
//! network and disk), the host filter, the cache's ETag, and bad input named field by field.

mod common;

use metricsstack_operator::database::MIGRATOR;
use metricsstack_testkit::TestDatabase;
use reqwest::StatusCode;
use serde_json::Value;

/// Two nodes sampled every minute from 50 to 1 minutes ago, and every 6 hours from 1 to 25
/// days ago. Node `h`'s sample `m` minutes ago received `600 * h + m` bytes and sent
/// `60 * h + m` since its previous sample; CPU, memory, load and disk differ by sample.
const SEED: &str = r#"
INSERT INTO host_overall_metrics ("timestamp", host, cpu_usage_percent, cpu_per_core_percent,
    load_1, load_5, load_15, memory_total_bytes, memory_used_bytes, memory_usage_mb,
    swap_total_bytes, swap_used_bytes, disk_total_bytes, disk_used_bytes, disk_read_bytes,
    disk_write_bytes, network_rx_bytes, network_tx_bytes, uptime_seconds, process_count)
SELECT now() - make_interval(mins => m), 'node-' || h, ((h * 13 + m * 7) % 100)::real + 0.5,
       '{1,2}', (h + m % 5)::float8 / 4, 1, 1, 16e9, 8e9, (h * 1000 + m * 3)::float8 + 0.25, 0,
       0, 1e12, 1e11 + h * 1e9 + m * 1000, 0, 0, 600 * h + m, 60 * h + m, 1000, 100
FROM generate_series(1, 2) AS h,
     (SELECT generate_series(1, 50) AS m
      UNION ALL SELECT generate_series(1, 25 * 4) * 360) AS minutes;
"#;

/// A node's samples in one bucket as the raw rows give them: host, bucket start (seconds
/// since the epoch), CPU average and peak, memory average and peak, load average, highest
/// disk use, samples.
type Bucket = (String, i64, f64, f64, f64, f64, f64, i64, i64);

/// The raw rows since `window` ago (rounded down to a whole bucket), in buckets of `bucket`
/// seconds counted from the epoch.
async fn raw_buckets(pool: &sqlx::PgPool, window: &str, bucket: i64) -> Vec<Bucket> {
    sqlx::query_as(
        r#"SELECT host, (floor(extract(epoch FROM "timestamp") / $2) * $2)::int8 AS bucket,
                  avg(cpu_usage_percent)::float8, max(cpu_usage_percent)::float8,
                  avg(memory_usage_mb), max(memory_usage_mb), avg(load_1),
                  max(disk_used_bytes), count(*)
           FROM host_overall_metrics
           WHERE extract(epoch FROM "timestamp")
                 >= floor(extract(epoch FROM now() - $1::interval) / $2) * $2
           GROUP BY 1, 2 ORDER BY 1, 2"#,
    )
    .bind(window)
    .bind(bucket)
    .fetch_all(pool)
    .await
    .expect("the raw buckets")
}

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
    assert!(
        (shown - expected).abs() <= 1e-6 * expected.abs().max(1.0),
        "{field} {expected}: {row}"
    );
}

/// The answer's rows against the raw buckets, field by field.
fn assert_matches(answer: &Value, expected: &[Bucket]) {
    let rows = answer["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), expected.len(), "{answer}");
    for (row, (host, bucket, avg_cpu, max_cpu, avg_memory, max_memory, load, disk, samples)) in
        rows.iter().zip(expected)
    {
        assert_eq!(&row["host"], host, "{row}");
        let start = chrono::DateTime::parse_from_rfc3339(row["timestamp"].as_str().unwrap())
            .expect("a time");
        assert_eq!(start.timestamp(), *bucket, "{row}");
        assert_eq!(row["samples"], *samples, "{row}");
        close(row, "avg_cpu", *avg_cpu);
        close(row, "max_cpu", *max_cpu);
        close(row, "avg_memory_mb", *avg_memory);
        close(row, "max_memory_mb", *max_memory);
        close(row, "avg_load_1", *load);
        if !row["disk_used_bytes"].is_null() {
            assert_eq!(row["disk_used_bytes"], *disk, "{row}");
        }
    }
}

#[tokio::test]
async fn each_nodes_history_is_its_raw_rows_in_buckets_over_an_hour_and_over_thirty_days() {
    let db = TestDatabase::create().await;
    let pool = db.pool(2).await;
    MIGRATOR.run(&pool).await.expect("migrations run");
    sqlx::raw_sql(SEED).execute(&pool).await.expect("seeding");
    let base = common::start_open_service(&db.url()).await;

    // An hour: raw buckets of 10 seconds, so each sample (a minute apart) is a bucket of
    // its own; by host, then time.
    let (status, hour) = get(&base, "/api/host-history?window=1h").await;
    assert_eq!(status, StatusCode::OK, "{hour}");
    assert_eq!(hour["source"], "raw");
    assert_eq!(hour["window_seconds"], 3600);
    assert_eq!(hour["bucket_seconds"], 10);
    assert_matches(&hour, &raw_buckets(&pool, "1 hour", 10).await);
    let rows = hour["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2 * 50, "{hour}");
    // Network: a sample's bytes over the minute since the one before; none for a node's
    // first sample in the window. Disk: the sample's.
    for (i, row) in rows.iter().enumerate() {
        let (h, m) = (1 + i / 50, 50 - i % 50);
        let (h, m) = (h as f64, m as f64);
        if i % 50 == 0 {
            assert!(row["network_rx_bytes_per_second"].is_null(), "{row}");
            assert!(row["network_tx_bytes_per_second"].is_null(), "{row}");
        } else {
            close(row, "network_rx_bytes_per_second", (600.0 * h + m) / 60.0);
            close(row, "network_tx_bytes_per_second", (60.0 * h + m) / 60.0);
        }
        close(row, "disk_used_bytes", 1e11 + h * 1e9 + m * 1000.0);
    }

    // Thirty days: two-hour buckets of whole hours computed from the raw rows (no
    // aggregate on PostgreSQL), without network or disk, which no hourly rollup keeps.
    let (status, month) = get(&base, "/api/host-history?window=30d").await;
    assert_eq!(status, StatusCode::OK, "{month}");
    assert_eq!(month["source"], "hourly_from_raw");
    assert_eq!(month["bucket_seconds"], 7200);
    let expected = raw_buckets(&pool, "30 days", 7200).await;
    assert_matches(&month, &expected);
    let rows = month["rows"].as_array().expect("rows");
    assert!(rows.len() <= 2 * 361, "{}", rows.len());
    let samples: i64 = rows.iter().map(|r| r["samples"].as_i64().unwrap()).sum();
    assert_eq!(samples, 2 * (50 + 100));
    for row in rows {
        for field in [
            "network_rx_bytes_per_second",
            "network_tx_bytes_per_second",
            "disk_used_bytes",
        ] {
            assert!(row[field].is_null(), "{field}: {row}");
        }
    }

    // One node.
    let (_, one) = get(&base, "/api/host-history?window=1h&host=node-2").await;
    let hosts: Vec<&Value> = one["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| &r["host"])
        .collect();
    assert_eq!(hosts.len(), 50, "{one}");
    assert!(hosts.iter().all(|h| *h == "node-2"), "{one}");

    // Cached like the other parts: the ETag gives a 304.
    let client = reqwest::Client::new();
    let first = client
        .get(format!("{base}/api/host-history?window=1h"))
        .send()
        .await
        .expect("answered");
    let etag = first.headers()["etag"].clone();
    assert!(first.headers().contains_key("cache-control"));
    let again = client
        .get(format!("{base}/api/host-history?window=3600"))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("answered");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    for (query, field) in [
        ("window=31d", "window"),
        ("window=59", "window"),
        ("window=soon", "window"),
        ("host=", "host"),
        ("host=node%201", "host"),
        ("window=1h&limit=5", "limit"),
    ] {
        let (status, body) = get(&base, &format!("/api/host-history?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body["field"], field, "{query}: {body}");
        assert_eq!(body["code"], "invalid_parameter", "{query}: {body}");
    }

    // Documented, and counted under its own endpoint.
    let document = reqwest::get(format!("{base}/openapi.yaml"))
        .await
        .expect("answered")
        .text()
        .await
        .expect("text");
    let document: serde_yaml::Value = serde_yaml::from_str(&document).expect("YAML");
    assert!(
        document["paths"]["/api/host-history"]["get"]["parameters"].is_sequence(),
        "documented"
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("answered")
        .text()
        .await
        .expect("text");
    for counted in [
        r#"endpoint="host_history",status="200""#,
        r#"endpoint="host_history",status="304""#,
        r#"endpoint="host_history",status="400""#,
        r#"part="host_history",source="hourly_from_raw",outcome="ok""#,
    ] {
        assert!(metrics.contains(counted), "{counted} in\n{metrics}");
    }
}
