//! The query service over HTTP against native PostgreSQL with seeded metrics: answers
//! checked against independent SQL, the cache's fresh/stale/miss behaviour and headers,
//! single flight counted by the database (pg_stat_statements), conditional requests, a
//! database outage (through an in-process TCP proxy that the test cuts), and bad input.
//!
//! No verdict depends on how fast the machine is: where the cache's timing matters, Tokio's
//! clock (which the cache reads) is paused and moved by the test alone, and the test waits
//! for what the service does in the background (a refresh, a query waiting for a lock) by
//! polling until it has happened.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metricsstack_common::access::{AccessPolicy, Authentication};
use metricsstack_common::config::QueryServiceConfig;
use metricsstack_common::database::PoolSettings;
use metricsstack_operator::database::MIGRATOR;
use metricsstack_query_service::QueryService;
use metricsstack_testkit::{CuttableProxy, TestDatabase, fill_latest_samples};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{ConnectOptions, PgPool};
use tokio::net::{TcpListener, TcpStream};

/// Seeds three hosts, eight processes each (names shared by pairs), and pods in two
/// namespaces; samples 2 to 45 minutes old (in a one-hour window), 3 hours old (in six
/// hours), and 30 hours old (in two days). Values vary with host, process and age.
const SEED: &str = r#"
INSERT INTO host_process_metrics ("timestamp", host, pid, start_time, parent_pid, process_name,
    command_line, username, state, cpu_usage_percent, cpu_peak_percent, memory_usage_mb,
    virtual_memory_mb, disk_read_bytes, disk_write_bytes, threads)
SELECT now() - make_interval(mins => m), 'node-' || h, 100 + p,
       TIMESTAMPTZ '2024-01-01 00:00:00+00' + make_interval(secs => p), 1, 'proc-' || (p % 4),
       '/usr/bin/proc-' || p, 'root', 'S', ((h * 7 + p * 13 + m) % 97)::real / 1.7,
       ((h * 7 + p * 13 + m) % 97 + 5)::real, ((h * 11 + p * 29 + m * 3) % 500) + 0.25, 2048.5,
       m * 1000, p * 10, p
FROM generate_series(1, 3) AS h, generate_series(1, 8) AS p,
     unnest(ARRAY[2, 7, 15, 30, 45, 180, 200, 1800]) AS m;

INSERT INTO host_overall_metrics ("timestamp", host, cpu_usage_percent, cpu_per_core_percent,
    load_1, load_5, load_15, memory_total_bytes, memory_used_bytes, memory_usage_mb,
    swap_total_bytes, swap_used_bytes, disk_total_bytes, disk_used_bytes, disk_read_bytes,
    disk_write_bytes, network_rx_bytes, network_tx_bytes, uptime_seconds, process_count)
SELECT now() - make_interval(mins => m), 'node-' || h, ((h * 13 + m * 7) % 100)::real,
       ARRAY[1.5, 2.5]::real[], (h + m % 5)::float8 / 3, 1, 1, 16000000000, 8000000000,
       (h * 1000 + m * 3)::float8 + 0.5, 0, 0, 0, 0, 0, 0, 0, 0, 1000, 200 + m
FROM generate_series(1, 3) AS h,
     unnest(ARRAY(SELECT generate_series(1, 50)) || ARRAY[180, 240, 1800, 2000]) AS m;

INSERT INTO vm_process_metrics ("timestamp", host, pid, start_time, process_name,
    command_line, pod_namespace, pod_name, pod_uid, container_id, container_name,
    cpu_usage_percent, cpu_peak_percent, cpu_limit_percent, memory_usage_mb,
    disk_read_bytes, disk_write_bytes)
SELECT now() - make_interval(mins => m), 'node-' || (pd % 3 + 1), 1000 + pd * 10 + pr,
       TIMESTAMPTZ '2024-01-01 00:00:00+00', 'worker-' || pr, NULL,
       CASE WHEN pd = 0 THEN NULL ELSE (ARRAY['web', 'db'])[pd % 2 + 1] END,
       CASE WHEN pd = 0 THEN NULL ELSE 'pod-' || pd END, 'uid-' || pd, 'cid-' || pd, 'main',
       ((pd * 17 + pr * 5 + m) % 60)::real, 99, NULL, (pd * 100 + pr * 10 + m)::float8, 0, 0
FROM generate_series(0, 6) AS pd, generate_series(1, 3) AS pr,
     unnest(ARRAY[3, 9, 20, 300]) AS m
-- The first pod has no third process at its latest sample: counts must follow the sample.
WHERE NOT (pd = 1 AND pr = 3 AND m = 3);
"#;

async fn seeded() -> (TestDatabase, PgPool) {
    let db = TestDatabase::create().await;
    let pool = db.pool(4).await;
    MIGRATOR.run(&pool).await.expect("migrations run");
    sqlx::raw_sql(SEED).execute(&pool).await.expect("seeding");
    fill_latest_samples(&pool)
        .await
        .expect("the latest samples");
    (db, pool)
}

fn config(fresh: u64, stale_while_revalidate: u64, stale_if_error: u64) -> QueryServiceConfig {
    QueryServiceConfig {
        stack: Default::default(),
        authentication: Authentication::None,
        listen_address: "127.0.0.1:0".into(),
        schema: "public".into(),
        database: Default::default(),
        pool: PoolSettings {
            max_connections: 8,
            ..PoolSettings::default()
        },
        fresh_ttl_seconds: fresh,
        stale_while_revalidate_seconds: stale_while_revalidate,
        stale_if_error_seconds: stale_if_error,
        max_entries: 1000,
        max_bytes: 64 * 1024 * 1024,
    }
}

/// Starts the service on a free loopback port; it stops with the test's runtime.
async fn start(config: &QueryServiceConfig, database_url: &str) -> Client {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    let service =
        QueryService::new(config, database_url, AccessPolicy::Open).expect("the service starts");
    tokio::spawn(service.run(listener, std::future::pending()));
    Client {
        base: format!("http://{address}"),
        http: reqwest::Client::new(),
    }
}

/// Tokio's clock, paused for as long as this value lives: it moves only when the test
/// moves it on, never while the test waits for the database or the network, so that a slow
/// machine cannot age an answer. (Tokio moves a paused clock on by itself whenever every task
/// waits, unless a blocking task runs: this value keeps one running.)
struct PausedClock {
    paused_at: tokio::time::Instant,
    _running: std::sync::mpsc::Sender<()>,
}

impl PausedClock {
    fn pause() -> Self {
        tokio::time::pause();
        let (running, until_dropped) = std::sync::mpsc::channel::<()>();
        tokio::task::spawn_blocking(move || until_dropped.recv());
        Self {
            paused_at: tokio::time::Instant::now(),
            _running: running,
        }
    }

    /// Moves the clock on to `ms` milliseconds after it was paused. Tokio's timers fire on
    /// whole milliseconds of a count of its own, so one due at the very instant the clock is
    /// moved to may not fire yet: the tests move it past the instants things are due at.
    async fn to(&self, ms: u64) {
        let to = self.paused_at + Duration::from_millis(ms);
        tokio::time::advance(to - tokio::time::Instant::now()).await;
    }
}

/// Polls `check` until it holds; fails only if it still does not after two minutes, far
/// longer than any load makes it take (testkit's wait, on the system clock).
async fn eventually<Check: Future<Output = bool>>(what: &str, check: impl Fn() -> Check) {
    metricsstack_testkit::wait_until(what, Duration::from_secs(120), check).await;
}

struct Client {
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .expect("a text header")
    }

    fn rows(&self) -> &Vec<Value> {
        self.body["rows"].as_array().expect("rows")
    }
}

impl Client {
    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the request is answered");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("a body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path_and_query: &str) -> Answer {
        self.send(self.http.get(format!("{}{path_and_query}", self.base)))
            .await
    }

    async fn batch(&self, body: &str) -> Answer {
        self.send(
            self.http
                .post(format!("{}/api/dashboard/batch", self.base))
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    async fn text(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("answered");
        (response.status(), response.text().await.expect("text"))
    }
}

/// Sends a batch request whose body is chunked (no Content-Length), on a connection of its
/// own, and reads the answer until the service closes the connection.
async fn chunked_batch(client: &Client, body: &str) -> Answer {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = client.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let mut request = "POST /api/dashboard/batch HTTP/1.1\r\nHost: test\r\n\
                       Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
                       Connection: close\r\n\r\n"
        .to_owned();
    for chunk in body.as_bytes().chunks(4096) {
        request.push_str(&format!("{:x}\r\n", chunk.len()));
        request.push_str(std::str::from_utf8(chunk).expect("ASCII"));
        request.push_str("\r\n");
    }
    request.push_str("0\r\n\r\n");
    // The service may answer and close before reading it all; the answer still comes.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let mut buffer = [0; 8192];
    while let Ok(n @ 1..) = stream.read(&mut buffer).await {
        response.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8(response).expect("a text answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    Answer {
        status: StatusCode::from_u16(status).expect("a status"),
        headers: reqwest::header::HeaderMap::new(),
        body: serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}")),
    }
}

/// Asserts two JSON documents equal, numbers within a relative 1e-9 (sums of floats in
/// another order differ in the last bits).
fn assert_close(actual: &Value, expected: &Value, at: &str) {
    match (actual, expected) {
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
            assert!((a - e).abs() <= 1e-9 * e.abs().max(1.0), "{at}: {a} != {e}");
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{at}: lengths of {actual} and {expected}");
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                assert_close(a, e, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(e)) => {
            for (key, e) in e {
                let a = a
                    .get(key)
                    .unwrap_or_else(|| panic!("{at}: no {key} in {actual}"));
                assert_close(a, e, &format!("{at}.{key}"));
            }
        }
        _ => assert_eq!(actual, expected, "{at}"),
    }
}

/// A host's row: host, last seen, averages and highs, samples.
type OverallRow = (String, DateTime<Utc>, f64, f64, f64, f64, f64, i64);
/// A raw VM process sample: time, host, namespace, pod, CPU, memory.
type VmSample = (
    DateTime<Utc>,
    String,
    Option<String>,
    Option<String>,
    f64,
    f64,
);
/// A pod at its latest sample: time, host, processes, CPU sum, memory sum.
type PodAtLatest = (DateTime<Utc>, String, i64, f64, f64);

fn ts(t: DateTime<Utc>) -> Value {
    serde_json::to_value(t).expect("a timestamp serialises")
}

/// Latest sample per process, by a correlated subquery.
async fn expected_host_processes(pool: &PgPool, host: Option<&str>, limit: i64) -> Value {
    let rows: Vec<(DateTime<Utc>, String, i32, String, f64, f64)> = sqlx::query_as(
        r#"SELECT h."timestamp", h.host, h.pid, h.process_name, h.cpu_usage_percent::float8,
                  h.memory_usage_mb
           FROM host_process_metrics AS h
           WHERE ($1::text IS NULL OR h.host = $1)
             AND h."timestamp" = (SELECT max(x."timestamp") FROM host_process_metrics AS x
                                  WHERE x.host = h.host AND x.pid = h.pid
                                    AND x.start_time = h.start_time
                                    AND x."timestamp" >= now() - interval '1 hour')
           ORDER BY h.cpu_usage_percent DESC, h.host, h.pid, h.start_time
           LIMIT $2"#,
    )
    .bind(host)
    .bind(limit)
    .fetch_all(pool)
    .await
    .expect("expected host processes");
    rows.into_iter()
        .map(|(t, host, pid, name, cpu, memory)| {
            json!({"timestamp": ts(t), "host": host, "pid": pid, "process_name": name,
                   "cpu_usage_percent": cpu, "memory_usage_mb": memory})
        })
        .collect()
}

/// Per host over the window; hourly: samples from the start of the hour the window starts
/// in, and the latest sample's hour as `last_seen`.
async fn expected_host_overall(pool: &PgPool, window: &str, hourly: bool) -> Value {
    let rows: Vec<OverallRow> = sqlx::query_as(
        r#"WITH w AS (
               SELECT * FROM host_overall_metrics
               WHERE "timestamp" >= CASE WHEN $2
                   THEN date_trunc('hour', (now() - $1::interval) AT TIME ZONE 'UTC')
                        AT TIME ZONE 'UTC'
                   ELSE now() - $1::interval END)
           SELECT host,
                  CASE WHEN $2 THEN date_trunc('hour', max("timestamp") AT TIME ZONE 'UTC')
                                    AT TIME ZONE 'UTC'
                       ELSE max("timestamp") END,
                  avg(cpu_usage_percent)::float8, max(cpu_usage_percent)::float8,
                  avg(memory_usage_mb), max(memory_usage_mb), avg(load_1), count(*)
           FROM w GROUP BY host ORDER BY host"#,
    )
    .bind(window)
    .bind(hourly)
    .fetch_all(pool)
    .await
    .expect("expected host overall");
    rows.into_iter()
        .map(
            |(host, last, avg_cpu, max_cpu, avg_mem, max_mem, load, samples)| {
                json!({"host": host, "last_seen": ts(last), "avg_cpu": avg_cpu, "max_cpu": max_cpu,
                   "avg_memory_mb": avg_mem, "max_memory_mb": max_mem, "avg_load_1": load,
                   "samples": samples})
            },
        )
        .collect()
}

async fn expected_top(
    pool: &PgPool,
    window: &str,
    hourly: bool,
    memory: bool,
    host: Option<&str>,
    limit: i64,
) -> Value {
    let rows: Vec<(String, String, f64, f64, f64, f64, i64)> = sqlx::query_as(
        r#"SELECT host, process_name, avg(cpu_usage_percent)::float8 AS cpu,
                  max(cpu_peak_percent)::float8, avg(memory_usage_mb) AS memory,
                  max(memory_usage_mb), count(*)
           FROM host_process_metrics
           WHERE "timestamp" >= CASE WHEN $2
                   THEN date_trunc('hour', (now() - $1::interval) AT TIME ZONE 'UTC')
                        AT TIME ZONE 'UTC'
                   ELSE now() - $1::interval END
             AND ($4::text IS NULL OR host = $4)
           GROUP BY host, process_name
           ORDER BY CASE WHEN $3 THEN avg(memory_usage_mb) ELSE avg(cpu_usage_percent) END
                    DESC, host, process_name
           LIMIT $5"#,
    )
    .bind(window)
    .bind(hourly)
    .bind(memory)
    .bind(host)
    .bind(limit)
    .fetch_all(pool)
    .await
    .expect("expected top processes");
    rows.into_iter()
        .map(
            |(host, name, avg_cpu, max_cpu, avg_mem, max_mem, samples)| {
                json!({"host": host, "process_name": name, "avg_cpu": avg_cpu, "max_cpu": max_cpu,
                   "avg_memory_mb": avg_mem, "max_memory_mb": max_mem, "samples": samples})
            },
        )
        .collect()
}

/// Per pod, computed here from the raw rows in the window: the processes at the pod's
/// latest sample, summed.
async fn expected_vm(pool: &PgPool, namespace: Option<&str>, limit: usize) -> Value {
    let rows: Vec<VmSample> = sqlx::query_as(
        r#"SELECT "timestamp", host, pod_namespace, pod_name, cpu_usage_percent::float8,
                      memory_usage_mb
               FROM vm_process_metrics WHERE "timestamp" >= now() - interval '1 hour'"#,
    )
    .fetch_all(pool)
    .await
    .expect("vm rows");
    let mut pods: BTreeMap<(String, String), PodAtLatest> = BTreeMap::new();
    for (t, host, ns, pod, cpu, memory) in rows {
        let (Some(ns), Some(pod)) = (ns, pod) else {
            continue;
        };
        if namespace.is_some_and(|wanted| wanted != ns) {
            continue;
        }
        let entry = pods
            .entry((ns, pod))
            .or_insert((t, host.clone(), 0, 0.0, 0.0));
        if t > entry.0 {
            *entry = (t, host, 0, 0.0, 0.0);
        }
        if t == entry.0 {
            entry.2 += 1;
            entry.3 += cpu;
            entry.4 += memory;
        }
    }
    let mut pods: Vec<_> = pods.into_iter().collect();
    pods.sort_by(|a, b| b.1.3.total_cmp(&a.1.3).then_with(|| a.0.cmp(&b.0)));
    pods.into_iter()
        .take(limit)
        .map(|((ns, pod), (t, host, processes, cpu, memory))| {
            json!({"namespace": ns, "pod": pod, "host": host, "last_seen": ts(t),
                   "processes": processes, "cpu_usage_percent": cpu, "memory_usage_mb": memory})
        })
        .collect()
}

#[tokio::test]
async fn each_endpoint_answers_what_an_independent_query_finds() {
    let (db, pool) = seeded().await;
    let client = start(&config(60, 60, 60), &db.url()).await;

    let processes = client.get("/api/host-process-metrics?limit=10").await;
    assert_eq!(processes.status, StatusCode::OK, "{}", processes.body);
    assert_eq!(processes.body["source"], "raw");
    assert_eq!(processes.rows().len(), 10);
    assert_close(
        &processes.body["rows"],
        &expected_host_processes(&pool, None, 10).await,
        "host processes",
    );
    let on_one_host = client
        .get("/api/host-process-metrics?host=node-2&limit=1000&window=3600")
        .await;
    assert_eq!(on_one_host.rows().len(), 8);
    assert_close(
        &on_one_host.body["rows"],
        &expected_host_processes(&pool, Some("node-2"), 1000).await,
        "host processes on node-2",
    );

    let overall = client.get("/api/host-overall-metrics?window=1h").await;
    assert_eq!(overall.body["source"], "raw");
    assert_eq!(overall.rows().len(), 3);
    assert_close(
        &overall.body["rows"],
        &expected_host_overall(&pool, "1 hour", false).await,
        "host overall",
    );
    let overall_long = client.get("/api/host-overall-metrics?window=2d").await;
    assert_eq!(overall_long.body["source"], "hourly_from_raw");
    assert_close(
        &overall_long.body["rows"],
        &expected_host_overall(&pool, "2 days", true).await,
        "host overall over two days",
    );

    let top = client.get("/api/dashboard/top-processes?limit=5").await;
    assert_eq!(top.rows().len(), 5);
    assert_close(
        &top.body["rows"],
        &expected_top(&pool, "1 hour", false, false, None, 5).await,
        "top by cpu",
    );
    let top_memory = client
        .get("/api/dashboard/top-processes?metric=memory&window=7h&host=node-3&limit=3")
        .await;
    assert_eq!(top_memory.body["source"], "hourly_from_raw");
    assert_close(
        &top_memory.body["rows"],
        &expected_top(&pool, "7 hours", true, true, Some("node-3"), 3).await,
        "top by memory on node-3 over seven hours",
    );

    let vm = client.get("/api/vm-metrics").await;
    assert_eq!(vm.rows().len(), 6, "pods without a namespace are left out");
    assert_close(&vm.body["rows"], &expected_vm(&pool, None, 20).await, "vm");
    let vm_web = client.get("/api/vm-metrics?namespace=web&limit=2").await;
    assert_eq!(vm_web.rows().len(), 2);
    assert_close(
        &vm_web.body["rows"],
        &expected_vm(&pool, Some("web"), 2).await,
        "vm in web",
    );

    // The batch holds the same four parts as the individual requests with its filters.
    let batch = client
        .batch(r#"{"window": "1h", "limit": 5, "metric": "cpu"}"#)
        .await;
    assert_eq!(batch.status, StatusCode::OK);
    for (part, path) in [
        ("host_process_metrics", "/api/host-process-metrics?limit=5"),
        ("host_overall_metrics", "/api/host-overall-metrics"),
        ("top_processes", "/api/dashboard/top-processes?limit=5"),
        ("vm_metrics", "/api/vm-metrics?limit=5"),
    ] {
        let single = client.get(path).await;
        assert_eq!(batch.body[part], single.body, "{part}");
    }
    assert_close(
        &batch.body["top_processes"]["rows"],
        &expected_top(&pool, "1 hour", false, false, None, 5).await,
        "batch top",
    );
}

/// Database-side calls of the statements reading the metric tables (and the latest samples),
/// by statement.
async fn metric_statement_calls(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT query, calls FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND (query ILIKE '%FROM %\\_metrics%' OR query ILIKE '%FROM host\\_process\\_latest%') \
           AND query NOT ILIKE '%pg_stat_statements%' AND query NOT ILIKE '%INSERT INTO%' \
         ORDER BY query",
    )
    .fetch_all(pool)
    .await
    .expect("pg_stat_statements")
}

/// How many of the service's statements wait for a lock in the database.
async fn waiting_for_a_lock(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock' \
           AND application_name = 'metricsstack-query-service'",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity")
}

/// The service's database queries, by part, source and outcome.
const QUERIES: &str = "metricsstack_query_service_database_queries_total{";

/// The sum of the service's metric samples whose lines start with `prefix`.
async fn metric(client: &Client, prefix: &str) -> u64 {
    let (_, metrics) = client.text("/metrics").await;
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Waits until the samples of the metric `prefix` add up to `n` (work done in the
/// background, such as a refresh), and checks that they do not add up to more.
async fn wait_for_metric(client: &Client, prefix: &str, n: u64) {
    eventually(&format!("{n} for {prefix}"), || async {
        metric(client, prefix).await >= n
    })
    .await;
    assert_eq!(metric(client, prefix).await, n, "{prefix}");
}

#[tokio::test]
async fn a_hundred_concurrent_identical_requests_run_each_query_once() {
    let (db, pool) = seeded().await;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await
        .expect("pg_stat_statements");
    // Paused: nothing turns stale or is refreshed, however long the requests take.
    let _clock = PausedClock::pause();
    let client = start(&config(60, 60, 60), &db.url()).await;
    // Warm the connections so that the requests race on the cache, not on connecting.
    assert_eq!(client.text("/readyz").await.0, StatusCode::OK);
    sqlx::query("SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)")
        .execute(&pool)
        .await
        .expect("reset");
    assert!(metric_statement_calls(&pool).await.is_empty());

    // The tables locked, the queries of the first request to reach the cache wait, and the
    // other requests come meanwhile. How many come before the lock is released cannot be
    // known (a late one finds the answers cached: a hit), so the verdict rests on what holds
    // either way: each query ran once and every other miss waited for it.
    let mut lock = pool.begin().await.expect("begin");
    sqlx::query(
        "LOCK TABLE host_process_latest, host_process_metrics, host_overall_metrics, \
         vm_process_metrics IN ACCESS EXCLUSIVE MODE",
    )
    .execute(&mut *lock)
    .await
    .expect("lock");
    let body = r#"{"limit": 7, "window": "30m", "metric": "memory"}"#;
    let (answers, ()) = futures::future::join(
        futures::future::join_all((0..100).map(|_| client.batch(body))),
        async {
            eventually("the four parts' queries wait for the lock", || async {
                waiting_for_a_lock(&pool).await >= 4
            })
            .await;
            lock.commit().await.expect("commit");
        },
    )
    .await;
    let etag = answers[0].header("etag").to_owned();
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            ["MISS", "HIT"].contains(&answer.header("x-cache")),
            "{:?}",
            answer.headers
        );
        assert_eq!(answer.header("etag"), etag);
        assert_eq!(answer.body, answers[0].body);
    }
    let calls = metric_statement_calls(&pool).await;
    assert_eq!(calls.len(), 4, "one statement per part: {calls:#?}");
    for (query, calls) in &calls {
        assert_eq!(*calls, 1, "{query}");
    }
    assert_eq!(metric(&client, QUERIES).await, 4);
    let misses = metric(
        &client,
        "metricsstack_query_service_cache_lookups_total{result=\"miss\"}",
    )
    .await;
    let hits = metric(
        &client,
        "metricsstack_query_service_cache_lookups_total{result=\"hit\"}",
    )
    .await;
    let waited = metric(
        &client,
        "metricsstack_query_service_coalesced_waiters_total",
    )
    .await;
    assert_eq!(misses + hits, 400, "four parts a request");
    assert_eq!(waited, misses - 4, "every miss but the four first waited");

    // The next identical request is a hit and queries nothing.
    let again = client.batch(body).await;
    assert_eq!(again.header("x-cache"), "HIT");
    assert!(
        metric_statement_calls(&pool)
            .await
            .iter()
            .all(|(_, calls)| *calls == 1)
    );
}

#[tokio::test]
async fn answers_are_refreshed_ahead_while_read_stale_while_a_refresh_waits_then_dropped() {
    let (db, pool) = seeded().await;
    let clock = PausedClock::pause();
    // Fresh 1 s, refreshed 0.9 s after each fetch while read within the last 2 s; served
    // stale until 3 s old.
    let client = start(&config(1, 2, 0), &db.url()).await;
    let path = "/api/dashboard/top-processes?limit=3";
    let cache_control = "max-age=1, stale-while-revalidate=2, stale-if-error=0";
    let queries = format!("{QUERIES}part=\"top_processes\"");

    // At 0 s: fetched, then fresh.
    let miss = client.get(path).await;
    assert_eq!(miss.header("x-cache"), "MISS");
    assert_eq!(miss.header("cache-control"), cache_control);
    assert_eq!(miss.header("age"), "0");
    assert_eq!(metric(&client, &queries).await, 1);
    let hit = client.get(path).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    assert_eq!(hit.header("cache-control"), cache_control);
    assert_eq!(hit.header("age"), "0");
    assert_eq!(hit.header("etag"), miss.header("etag"));
    assert_eq!(metric(&client, &queries).await, 1);

    // Read at 0 s, so refreshed when due at 0.9 s (the clock moved on to 0.95 s): at 1.5 s,
    // when the first answer would be stale, the answer is fresh.
    clock.to(950).await;
    wait_for_metric(&client, &queries, 2).await;
    clock.to(1500).await;
    let refreshed = client.get(path).await;
    assert_eq!(refreshed.header("x-cache"), "HIT");
    assert_eq!(refreshed.header("age"), "0");
    assert_eq!(
        refreshed.header("etag"),
        miss.header("etag"),
        "the same data"
    );

    // New data, held back (with readers) by a lock until the stale answers are checked.
    let mut writer = pool.begin().await.expect("begin");
    sqlx::query(
        "UPDATE host_process_metrics SET cpu_usage_percent = cpu_usage_percent + 1000 \
         WHERE host = 'node-1' AND pid = 101",
    )
    .execute(&mut *writer)
    .await
    .expect("update");
    sqlx::query("LOCK TABLE host_process_metrics IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *writer)
        .await
        .expect("lock");
    // The refresh due at 1.85 s waits for the lock. At 2 s the answer of 0.95 s is past its
    // freshness: it comes stale at once, and no reader starts another query.
    clock.to(1900).await;
    eventually("the refresh waits for the lock", || async {
        waiting_for_a_lock(&pool).await >= 1
    })
    .await;
    clock.to(2000).await;
    for _ in 0..5 {
        let stale = client.get(path).await;
        assert_eq!(stale.header("x-cache"), "STALE");
        assert_eq!(stale.header("cache-control"), cache_control);
        assert_eq!(stale.header("age"), "1");
        assert_eq!(stale.body, miss.body);
    }
    assert_eq!(waiting_for_a_lock(&pool).await, 1, "one refresh");
    writer.commit().await.expect("commit");
    wait_for_metric(&client, &queries, 3).await;
    let new = client.get(path).await;
    assert_eq!(new.header("x-cache"), "HIT");
    assert_eq!(new.header("age"), "0");
    assert_ne!(new.header("etag"), miss.header("etag"));
    assert_eq!(new.body["rows"][0]["host"], "node-1");
    assert_eq!(new.body["rows"][0]["process_name"], "proc-1");

    // Last read at 2 s, its answer from 2 s: refreshed when due at 2.9 s (read since it was
    // stored), not at 3.85 s (the answer of 2.95 s was not read); from 5.95 s that answer is
    // too old to be served (3 s), and the next request waits for the database.
    clock.to(2950).await;
    wait_for_metric(&client, &queries, 4).await;
    clock.to(6950).await;
    let not_refreshed = metric(&client, &queries).await;
    assert_eq!(not_refreshed, 4, "no refresh without readers");
    let missed = client.get(path).await;
    assert_eq!(missed.header("x-cache"), "MISS");
    assert_eq!(missed.header("age"), "0");
    assert_eq!(metric(&client, &queries).await, 5);
}

/// The dashboard, requested at once by those of `clients` clients whose turn it is at
/// `step`: each client's turn comes every nine steps, the i-th's at step i (modulo nine).
/// The answers' `X-Cache`.
async fn poll_dashboard(client: &Client, clients: u32, step: u32) -> Vec<String> {
    let turn = (0..clients).filter(|i| i % 9 == step % 9);
    futures::future::join_all(turn.map(|_| async {
        let answer = client.batch(r#"{"window": "1h", "limit": 9}"#).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.header("x-cache").to_owned()
    }))
    .await
}

#[tokio::test]
async fn a_lone_poller_costs_a_query_a_poll_and_twenty_pollers_no_more_than_refreshes_ahead() {
    // Two databases, so that the database counts each service's queries apart: one client
    // on one, twenty on the other, over the same 8.64 s.
    let mut databases = Vec::new();
    for _ in 0..2 {
        let (db, pool) = seeded().await;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&pool)
            .await
            .expect("pg_stat_statements");
        databases.push((db, pool));
    }
    let clock = PausedClock::pause();
    let mut services = Vec::new();
    for (db, pool) in &databases {
        // Fresh 1 s; refreshed every 0.9 s while read within the last 5 s.
        let client = start(&config(1, 5, 60), &db.url()).await;
        assert_eq!(client.text("/readyz").await.0, StatusCode::OK);
        sqlx::query(
            "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database \
             WHERE datname = current_database()), 0)",
        )
        .execute(pool)
        .await
        .expect("reset");
        services.push(client);
    }

    // Steps of 0.32 s: each client polls every nine steps, the twenty spread over them; a
    // refresh ahead, due 0.9 s after the last fetch, comes at the third step (0.96 s), before
    // the answer would turn stale (1 s).
    let clients = [1, 20];
    let mut requests = [0, 0];
    for step in 0..=27 {
        clock.to(320 * u64::from(step)).await;
        for (service, (clients, requests)) in services.iter().zip(clients.iter().zip(&mut requests))
        {
            let answers = poll_dashboard(service, *clients, step).await;
            // Alone, the client finds its answer of the last poll (2.88 s ago) stale, gets
            // it at once and the service revalidates it: refreshing ahead would have asked
            // the database three times between two polls. Twenty find it refreshed ahead.
            let between = if *clients == 1 { "STALE" } else { "HIT" };
            assert!(
                answers
                    .iter()
                    .all(|a| a == between || step == 0 && a == "MISS"),
                "{clients} clients at step {step}: {answers:?}"
            );
            *requests += answers.len();
            if step % 3 == 0 {
                // The first fetch, then one query per part a poll (alone) or a refresh
                // each third step (twenty).
                let fetches = if *clients == 1 { step / 9 } else { step / 3 };
                wait_for_metric(service, QUERIES, 4 * (u64::from(fetches) + 1)).await;
            }
        }
    }
    assert_eq!(requests, [4, 63]);
    let one = metric_statement_calls(&databases[0].1).await;
    let twenty = metric_statement_calls(&databases[1].1).await;
    for (calls_by_statement, clients, expected) in [(&one, 1, 4), (&twenty, 20, 10)] {
        assert_eq!(
            calls_by_statement.len(),
            4,
            "one statement per part: {calls_by_statement:#?}"
        );
        for (query, calls) in calls_by_statement {
            assert_eq!(*calls, expected, "{clients} clients: {query}");
        }
    }
}

#[tokio::test]
async fn one_viewer_polling_every_5_s_with_the_defaults_costs_48_queries_a_minute_not_66() {
    let (db, _pool) = seeded().await;
    let clock = PausedClock::pause();
    // The operator's defaults: fresh 4 s, stale-while-revalidate 30 s, stale-if-error 5 m.
    let client = start(&config(4, 30, 300), &db.url()).await;
    // Twelve polls, every 5 s, of the four parts. Refreshing ahead every 3.6 s while read
    // within 30 s would have cost 1 + 16 queries a part; without a cache, 12.
    for poll in 0..12u64 {
        clock.to(5000 * poll).await;
        let answer = client.batch(r#"{"window": "1h", "limit": 9}"#).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let expected = if poll == 0 { "MISS" } else { "STALE" };
        assert_eq!(answer.header("x-cache"), expected, "poll {poll}");
        wait_for_metric(&client, QUERIES, 4 * (poll + 1)).await;
    }
    // The minute ends with no refresh ahead of anyone.
    clock.to(60_000).await;
    clock.to(90_000).await;
    assert_eq!(metric(&client, QUERIES).await, 48);
}

#[tokio::test]
async fn a_matching_if_none_match_gets_304() {
    let (db, _pool) = seeded().await;
    let clock = PausedClock::pause();
    let client = start(&config(60, 60, 60), &db.url()).await;
    let first = client.get("/api/vm-metrics?namespace=db").await;
    let etag = first.header("etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() == 66, "{etag}");
    assert_eq!(first.header("age"), "0");
    // Age: whole seconds since the answer was fetched; max-age: the whole freshness.
    clock.to(1500).await;
    let url = format!("{}/api/vm-metrics?namespace=db", client.base);
    let not_modified = client
        .send(client.http.get(&url).header("if-none-match", &etag))
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.body, Value::Null);
    assert_eq!(not_modified.header("etag"), etag);
    assert_eq!(not_modified.header("x-cache"), "HIT");
    assert_eq!(not_modified.header("age"), "1");
    assert_eq!(
        not_modified.header("cache-control"),
        "max-age=60, stale-while-revalidate=60, stale-if-error=60"
    );
    let other = client
        .send(client.http.get(&url).header("if-none-match", "\"other\""))
        .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body, first.body);

    let batch = client.batch(r#"{"namespace": "db"}"#).await;
    let batch_etag = batch.header("etag").to_owned();
    assert_ne!(batch_etag, etag);
    assert_eq!(
        batch.header("x-cache"),
        "MISS",
        "three parts were not cached"
    );
    assert_eq!(batch.header("age"), "1", "the age of its oldest part");
    let batch_not_modified = client
        .send(
            client
                .http
                .post(format!("{}/api/dashboard/batch", client.base))
                .header("if-none-match", &batch_etag)
                .body(r#"{"namespace": "db"}"#),
        )
        .await;
    assert_eq!(batch_not_modified.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn while_the_database_is_down_stale_answers_or_503() {
    let (db, _pool) = seeded().await;
    let clock = PausedClock::pause();
    let upstream: SocketAddr = format!("{}:{}", db.options.get_host(), db.options.get_port())
        .parse()
        .expect("the test database listens on an IP address");
    let proxy = CuttableProxy::start(upstream).await;
    let through_proxy = db
        .options
        .clone()
        .host(&proxy.address.ip().to_string())
        .port(proxy.address.port())
        .to_url_lossy()
        .to_string();
    // No stale-while-revalidate: nothing is refreshed ahead, every query follows a request.
    let client = start(&config(1, 0, 60), &through_proxy).await;

    let cached = client.get("/api/host-overall-metrics").await;
    assert_eq!(cached.status, StatusCode::OK);
    assert_eq!(cached.header("x-cache"), "MISS");
    assert_eq!(client.text("/readyz").await.0, StatusCode::OK);

    proxy.set_up(false);
    clock.to(1500).await;
    let stale = client.get("/api/host-overall-metrics").await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.header("x-cache"), "STALE");
    assert_eq!(
        stale.header("cache-control"),
        "max-age=1, stale-while-revalidate=0, stale-if-error=60"
    );
    assert_eq!(stale.header("age"), "1");
    assert_eq!(stale.header("etag"), cached.header("etag"));
    assert_eq!(stale.body, cached.body);

    let never_cached = client.get("/api/host-overall-metrics?host=node-1").await;
    assert_eq!(never_cached.status, StatusCode::SERVICE_UNAVAILABLE);
    // A stable code and a short message; the database's own error stays in the log.
    assert_eq!(
        never_cached.body,
        serde_json::json!({
            "code": "database_unavailable",
            "error": metricsstack_query_service::http::DATABASE_UNAVAILABLE,
        })
    );
    let batch = client.batch("{}").await;
    assert_eq!(batch.status, StatusCode::SERVICE_UNAVAILABLE);
    // Serving stale is answering: the replica stays ready (and in the Service), says why
    // its answers may be stale, and the database's health is a metric of its own.
    assert_eq!(
        client.text("/readyz").await,
        (
            StatusCode::OK,
            metricsstack_query_service::service::SERVING_CACHED.to_owned()
        )
    );
    // The failure is counted under its kind, one of a fixed few: the label stays bounded.
    let (_, metrics) = client.text("/metrics").await;
    assert!(
        metrics.contains("metricsstack_query_service_database_up 0"),
        "{metrics}"
    );
    let failure_kinds = ["connection", "pool_timeout"]
        .map(|kind| format!("part=\"host_overall_metrics\",source=\"raw\",outcome=\"{kind}\""));
    assert!(
        failure_kinds
            .iter()
            .any(|line| metrics.contains(line.as_str())),
        "{metrics}"
    );

    proxy.set_up(true);
    let back = client.get("/api/host-overall-metrics?host=node-1").await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.body);
    assert_eq!(back.header("x-cache"), "MISS");
    assert_eq!(
        client.text("/readyz").await,
        (StatusCode::OK, "ready".to_owned())
    );
    let (_, metrics) = client.text("/metrics").await;
    assert!(
        metrics.contains("metricsstack_query_service_database_up 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn beyond_the_query_limit_requests_are_shed_with_503_and_retry_after() {
    let (db, pool) = seeded().await;
    // One connection: the floor of eight queries may run or wait for it.
    let mut config = config(60, 60, 60);
    config.pool.max_connections = 1;
    let client = start(&config, &db.url()).await;
    let cached = client.get("/api/host-overall-metrics?window=5m").await;
    assert_eq!(cached.status, StatusCode::OK);

    let mut lock = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE host_overall_metrics IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let running = "metricsstack_query_service_database_queries_running";
    let most = metricsstack_query_service::service::MIN_QUERIES;
    let held_paths: Vec<String> = (1..=most)
        .map(|hours| format!("/api/host-overall-metrics?window={hours}h"))
        .collect();
    let (held, ()) = futures::future::join(
        futures::future::join_all(held_paths.iter().map(|path| client.get(path))),
        async {
            eventually(
                "the floor of queries run or wait for the connection",
                || async { metric(&client, running).await == most as u64 },
            )
            .await;
            let shed = client.get("/api/host-overall-metrics?window=20h").await;
            assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(shed.header("retry-after"), "1");
            assert_eq!(shed.header("cache-control"), "no-store");
            assert_eq!(
                shed.body,
                json!({
                    "code": "overloaded",
                    "error": metricsstack_query_service::http::OVERLOADED,
                })
            );
            let batch = client.batch(r#"{"window": "21h"}"#).await;
            assert_eq!(batch.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(batch.body["code"], "overloaded");
            // A fresh answer needs no query: served as ever.
            let hit = client.get("/api/host-overall-metrics?window=5m").await;
            assert_eq!(hit.status, StatusCode::OK);
            assert_eq!(hit.header("x-cache"), "HIT");
            lock.commit().await.expect("commit");
        },
    )
    .await;
    for answer in held {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let after = client.get("/api/host-overall-metrics?window=20h").await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(metric(&client, running).await, 0);
    // The single part and the batch's four.
    let shed = "metricsstack_query_service_shed_lookups_total";
    assert_eq!(metric(&client, shed).await, 5);
}

#[tokio::test]
async fn every_kind_of_bad_input_gets_400_naming_the_field() {
    let (db, _pool) = seeded().await;
    let client = start(&config(60, 60, 60), &db.url()).await;
    let queries = [
        ("/api/host-process-metrics?limit=0", "limit"),
        ("/api/host-process-metrics?limit=1001", "limit"),
        ("/api/host-process-metrics?limit=many", "limit"),
        ("/api/dashboard/top-processes?metric=disk", "metric"),
        ("/api/host-overall-metrics?window=31d", "window"),
        ("/api/host-overall-metrics?window=30s", "window"),
        ("/api/host-overall-metrics?window=1y", "window"),
        ("/api/vm-metrics?namespace=", "namespace"),
        ("/api/vm-metrics?namespace=web&since=1h", "since"),
        ("/api/vm-metrics?host=a&host=b", "host"),
        ("/api/vm-metrics?host=node%201", "host"),
        ("/api/vm-metrics?namespace=Web", "namespace"),
    ];
    for (path, field) in queries {
        let answer = client.get(path).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(answer.body["field"], field, "{path}: {}", answer.body);
        assert_eq!(answer.body["code"], "invalid_parameter", "{path}");
        assert!(answer.body["error"].is_string(), "{path}");
    }
    let long_host = format!("/api/host-process-metrics?host={}", "h".repeat(254));
    assert_eq!(client.get(&long_host).await.body["field"], "host");

    let bodies = [
        (r#"{"limit": 0}"#, "limit"),
        (r#"{"limit": 2.5}"#, "limit"),
        (r#"{"limit": "5"}"#, "limit"),
        (r#"{"metric": "io"}"#, "metric"),
        (r#"{"window": "45 minutes"}"#, "window"),
        (r#"{"window": 2592001}"#, "window"),
        (r#"{"host": ""}"#, "host"),
        (r#"{"limit": 5, "hosts": ["a"]}"#, "hosts"),
        ("[5]", "body"),
        ("{\"limit\": 5", "body"),
        ("not json", "body"),
    ];
    for (body, field) in bodies {
        let answer = client.batch(body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.body["field"], field, "{body}: {}", answer.body);
    }

    // Larger than 16 KiB: announced by Content-Length, or found out reading the chunks.
    let large = format!(r#"{{"host": "{}"}}"#, "x".repeat(17 * 1024));
    let too_large = client.batch(&large).await;
    let chunked_too_large = chunked_batch(&client, &large).await;
    for answer in [too_large, chunked_too_large] {
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(answer.body["field"], "body", "{}", answer.body);
        assert!(
            answer.body["error"]
                .as_str()
                .is_some_and(|e| e.contains("16384 bytes")),
            "{}",
            answer.body
        );
    }
    // A chunked body within the limit is read.
    let chunked = chunked_batch(&client, &format!(r#"{{"limit": 3{}}}"#, " ".repeat(9000))).await;
    assert_eq!(chunked.status, StatusCode::OK, "{}", chunked.body);
    assert_eq!(
        chunked.body["top_processes"]["rows"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let (_, metrics) = client.text("/metrics").await;
    assert!(
        metrics.contains(
            "metricsstack_query_service_requests_total{endpoint=\"batch\",status=\"400\"} 13"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn health_readiness_metrics_and_the_openapi_document_are_served() {
    let (db, _pool) = seeded().await;
    // Paused: the second batch finds the first's answers fresh, however long it takes.
    let _clock = PausedClock::pause();
    let client = start(&config(60, 60, 60), &db.url()).await;
    assert_eq!(client.text("/healthz").await.0, StatusCode::OK);
    let (status, ready) = client.text("/readyz").await;
    assert_eq!((status, ready.as_str()), (StatusCode::OK, "ready"));

    let (status, openapi) = client.text("/openapi.yaml").await;
    assert_eq!(status, StatusCode::OK);
    let document: serde_yaml::Value = serde_yaml::from_str(&openapi).expect("YAML");
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/dashboard/batch",
        "/api/host-process-metrics",
        "/api/host-overall-metrics",
        "/api/dashboard/top-processes",
        "/api/vm-metrics",
    ] {
        assert!(document["paths"].get(path).is_some(), "{path} documented");
    }

    client.batch("{}").await;
    client.batch("{}").await;
    let (status, metrics) = client.text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for expected in [
        "metricsstack_query_service_requests_total{endpoint=\"batch\",status=\"200\"} 2",
        "metricsstack_query_service_cache_lookups_total{result=\"miss\"} 4",
        "metricsstack_query_service_cache_lookups_total{result=\"hit\"} 4",
        "metricsstack_query_service_database_query_duration_seconds_count{part=\"vm_metrics\",source=\"raw\"} 1",
    ] {
        assert!(metrics.contains(expected), "{expected} in\n{metrics}");
    }
    assert_eq!(
        client.get("/api/nothing").await.status,
        StatusCode::NOT_FOUND
    );
}

/// A node now: host, bytes per second received and sent, disk used and total.
type NodeNow = (String, Option<f64>, Option<f64>, i64, i64);

/// Each node's network and disk now, by an independent query: its latest sample of the last
/// `seconds`, with the bytes over the time since its sample before (correlated subquery).
async fn expected_now(pool: &PgPool, seconds: f64) -> BTreeMap<String, Value> {
    let rows: Vec<NodeNow> = sqlx::query_as(
        r#"WITH l AS (
               SELECT DISTINCT ON (host) host, "timestamp", network_rx_bytes, network_tx_bytes,
                      disk_used_bytes, disk_total_bytes
               FROM host_overall_metrics
               WHERE "timestamp" >= now() - make_interval(secs => $1)
               ORDER BY host, "timestamp" DESC)
           SELECT l.host,
                  l.network_rx_bytes / extract(epoch FROM l."timestamp" - p.before)::float8,
                  l.network_tx_bytes / extract(epoch FROM l."timestamp" - p.before)::float8,
                  l.disk_used_bytes, l.disk_total_bytes
           FROM l, LATERAL (SELECT max(x."timestamp") AS before FROM host_overall_metrics AS x
                            WHERE x.host = l.host AND x."timestamp" < l."timestamp"
                              AND x."timestamp" >= now() - make_interval(secs => $1)) AS p"#,
    )
    .bind(seconds)
    .fetch_all(pool)
    .await
    .expect("expected network and disk now");
    rows.into_iter()
        .map(|(host, rx, tx, used, total)| {
            let now = json!({"network_rx_bytes_per_second": rx,
                             "network_tx_bytes_per_second": tx,
                             "disk_used_bytes": used, "disk_total_bytes": total});
            (host, now)
        })
        .collect()
}

#[tokio::test]
async fn host_overall_metrics_carry_each_nodes_network_and_disk_now_whatever_the_window() {
    let (db, pool) = seeded().await;
    // Traffic and disk that vary with host and age; node-4 was last seen 20 minutes ago.
    sqlx::raw_sql(
        r#"UPDATE host_overall_metrics
           SET network_rx_bytes = 1000 * substr(host, 6)::int + extract(minute FROM "timestamp"),
               network_tx_bytes = 10 * substr(host, 6)::int,
               disk_total_bytes = 500000000000,
               disk_used_bytes = 1000000 * substr(host, 6)::int
                                 + extract(second FROM "timestamp")::int8;
           INSERT INTO host_overall_metrics ("timestamp", host, cpu_usage_percent,
               cpu_per_core_percent, load_1, load_5, load_15, memory_total_bytes,
               memory_used_bytes, memory_usage_mb, swap_total_bytes, swap_used_bytes,
               disk_total_bytes, disk_used_bytes, disk_read_bytes, disk_write_bytes,
               network_rx_bytes, network_tx_bytes, uptime_seconds, process_count)
           VALUES (now() - interval '20 minutes', 'node-4', 10, ARRAY[1.0]::real[], 1, 1, 1,
                   1, 1, 1, 0, 0, 1, 1, 0, 0, 5, 5, 1, 1);"#,
    )
    .execute(&pool)
    .await
    .expect("traffic and disk");
    let client = start(&config(60, 60, 60), &db.url()).await;

    for (window, lookback, source) in [
        ("5m", 300.0, "raw"),
        ("1h", 600.0, "raw"),
        ("2d", 600.0, "hourly_from_raw"),
    ] {
        let answer = client
            .get(&format!("/api/host-overall-metrics?window={window}"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["source"], source);
        let expected = expected_now(&pool, lookback).await;
        assert_eq!(expected.len(), 3, "node-4 has no recent sample");
        let mut with_now = 0;
        for row in answer.rows() {
            let host = row["host"].as_str().expect("a host");
            match expected.get(host) {
                Some(now) => {
                    assert_close(row, now, &format!("{window} {host}"));
                    assert!(row["network_rx_bytes_per_second"].as_f64().expect("a rate") > 0.0);
                    with_now += 1;
                }
                None => {
                    for field in [
                        "network_rx_bytes_per_second",
                        "network_tx_bytes_per_second",
                        "disk_used_bytes",
                        "disk_total_bytes",
                    ] {
                        assert_eq!(row[field], Value::Null, "{window} {host} {field}");
                    }
                }
            }
        }
        assert_eq!(with_now, 3, "{window}: {}", answer.body);
    }
}
