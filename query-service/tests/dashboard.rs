//! The web dashboard in a real browser: Debian's Chromium, driven headless through
//! puppeteer-core by `dashboard/test/browser.mjs`, against this service on native PostgreSQL
//! with seeded metrics (through a TCP proxy the test cuts to take the database away). The
//! script reports what the page showed (the views, a process search, a pod's drill-down
//! with the containers' request and limit shares, a process's history across a restart, the
//! nodes' trends from the server's buckets, a 30-day window from hourly buckets) and every
//! request it made (from the browser's network events); this test compares the numbers with
//! the database and counts the requests. Screenshots of each view go to
//! `$CARGO_TARGET_TMPDIR/dashboard-screenshots/`.
//!
//! The bounds on requests are upper bounds (a slow machine makes fewer, never more), and
//! every wait is on something the page does, so no verdict depends on the machine's speed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use metricsstack_common::access::{AccessPolicy, Authentication};
use metricsstack_common::config::QueryServiceConfig;
use metricsstack_common::database::PoolSettings;
use metricsstack_operator::database::MIGRATOR;
use metricsstack_query_service::QueryService;
use metricsstack_testkit::{CuttableProxy, TestDatabase, fill_latest_samples};
use serde_json::Value;
use sqlx::ConnectOptions as _;
use tokio::net::TcpListener;

/// How long an answer is fresh: short, so that polling shows within seconds.
const TTL_SECONDS: u64 = 2;

/// Three nodes sampled every minute for the last 10 minutes and once 30 minutes ago (outside
/// the page's default 15-minute window), receiving and sending some tens of KB a minute;
/// processes on each; pods in two namespaces, whose processes each restarted once (a new pid
/// and start time after samples 14 and 12 minutes ago), with shares of their container's CPU
/// request and limit and memory limit (no memory request).
const SEED: &str = r#"
INSERT INTO host_overall_metrics ("timestamp", host, cpu_usage_percent, cpu_per_core_percent,
    load_1, load_5, load_15, memory_total_bytes, memory_used_bytes, memory_usage_mb,
    swap_total_bytes, swap_used_bytes, disk_total_bytes, disk_used_bytes, disk_read_bytes,
    disk_write_bytes, network_rx_bytes, network_tx_bytes, uptime_seconds, process_count)
SELECT now() - make_interval(mins => m), 'node-' || h, ((h * 13 + m * 7) % 100)::real + 0.3,
       ARRAY[1.5, 2.5]::real[], (h + m % 5)::float8 / 3, 1, 1, 16000000000, 8000000000,
       (h * 1000 + m * 37)::float8 + 0.5, 0, 0, 500000000000,
       100000000000 + h * 1000000000::int8, 0, 0, 60000 * h + m * 100, 30000 * h + m * 10, 1000,
       200 + m
FROM generate_series(1, 3) AS h, unnest(ARRAY[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 30]) AS m;

INSERT INTO host_process_metrics ("timestamp", host, pid, start_time, parent_pid, process_name,
    command_line, username, state, cpu_usage_percent, cpu_peak_percent, memory_usage_mb,
    virtual_memory_mb, disk_read_bytes, disk_write_bytes, threads)
SELECT now() - make_interval(mins => m), 'node-' || h, 100 + p,
       TIMESTAMPTZ '2024-01-01 00:00:00+00' + make_interval(secs => p), 1, 'proc-' || p,
       '/usr/bin/proc-' || p, 'root', 'S', ((h * 7 + p * 13 + m) % 97)::real / 1.7,
       ((h * 7 + p * 13 + m) % 97 + 5)::real, ((h * 11 + p * 29 + m * 3) % 500) + 0.25, 2048.5,
       m * 1000, p * 10, p
FROM generate_series(1, 3) AS h, generate_series(1, 6) AS p, unnest(ARRAY[1, 4, 8]) AS m;

INSERT INTO vm_process_metrics ("timestamp", host, pid, start_time, process_name,
    command_line, pod_namespace, pod_name, pod_uid, container_id, container_name,
    cpu_usage_percent, cpu_peak_percent, cpu_limit_percent, memory_usage_mb,
    disk_read_bytes, disk_write_bytes)
SELECT now() - make_interval(mins => m), 'node-' || (pd % 3 + 1),
       CASE WHEN m > 10 THEN 5000 ELSE 1000 END + pd * 10 + pr,
       CASE WHEN m > 10 THEN TIMESTAMPTZ '2023-12-31 00:00:00+00'
            ELSE TIMESTAMPTZ '2024-01-01 00:00:00+00' END,
       'worker-' || pr, NULL,
       (ARRAY['web', 'db'])[pd % 2 + 1], 'pod-' || pd, 'uid-' || pd, 'cid-' || pd, 'main',
       ((pd * 17 + pr * 5 + m) % 60)::real, 99, ((pd * 17 + pr * 5 + m) % 60)::real / 2,
       (pd * 100 + pr * 10 + m)::float8, 0, 0
FROM generate_series(1, 5) AS pd, generate_series(1, 3) AS pr, unnest(ARRAY[2, 6, 12, 14]) AS m;

UPDATE vm_process_metrics SET cpu_request_percent = cpu_usage_percent * 2,
                              memory_limit_percent = memory_usage_mb / 10;
"#;

/// A node as the database sees it over the last 15 minutes: host, CPU average and peak,
/// memory average and peak, load average, samples.
type Node = (String, f64, f64, f64, f64, f64, i64);

/// The number in a cell such as `12.3 %`, `1.25 GB`, `900.0 MB` or `0.52`, in the unit the
/// API uses (MB for memory).
fn number(cell: &Value) -> f64 {
    let text = cell
        .as_str()
        .unwrap_or_else(|| panic!("a text cell: {cell}"));
    let (value, unit) = text.split_once(' ').unwrap_or((text, ""));
    let value: f64 = value.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
    if unit == "GB" { value * 1024.0 } else { value }
}

/// Runs `dashboard/test/browser.mjs` with `scenario` against `base`; what it saw.
async fn browse(
    dashboard: &Path,
    chromium: &str,
    base: &str,
    screenshots: &Path,
    scenario: &str,
) -> Value {
    let mut browser = Command::new("node");
    browser
        .current_dir(dashboard)
        .arg("test/browser.mjs")
        .args(["--url", base, "--ttl", &TTL_SECONDS.to_string()])
        .arg("--screenshots")
        .arg(screenshots)
        .args(["--chromium", chromium, "--scenario", scenario]);
    let output = tokio::task::spawn_blocking(move || browser.output())
        .await
        .expect("the browser script runs")
        .expect("node starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser script failed ({scenario}): {stderr}"
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(
        seen["console"],
        serde_json::json!([]),
        "no console errors or warnings (CSP included) in {scenario}"
    );
    seen
}

/// The bytes per second in a cell such as `58.6 KB/s` (powers of 1024).
fn bytes_per_second(cell: &Value) -> f64 {
    let text = cell
        .as_str()
        .unwrap_or_else(|| panic!("a text cell: {cell}"));
    let (value, unit) = text
        .split_once(' ')
        .unwrap_or_else(|| panic!("a rate: {text:?}"));
    let value: f64 = value.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let power = ["B/s", "KB/s", "MB/s", "GB/s"]
        .iter()
        .position(|u| *u == unit)
        .unwrap_or_else(|| panic!("a unit of rate: {text:?}"));
    value * 1024f64.powi(power as i32)
}

fn paths<'a>(requests: &'a Value, path: &str) -> Vec<&'a Value> {
    requests
        .as_array()
        .expect("a list of requests")
        .iter()
        .filter(|request| request["path"] == path)
        .collect()
}

#[tokio::test]
async fn the_dashboard_shows_the_databases_numbers_with_few_requests_and_falls_back() {
    let chromium =
        std::env::var("METRICSSTACK_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: run the tests with scripts/test, which installs Debian's \
         chromium, or apt-get install chromium"
    );
    let dashboard = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboard");
    assert!(
        dashboard.join("node_modules/puppeteer-core").exists(),
        "dashboard/node_modules has no puppeteer-core: run scripts/build-dashboard --check \
         (scripts/test does)"
    );

    let db = TestDatabase::create().await;
    let pool = db.pool(2).await;
    MIGRATOR.run(&pool).await.expect("migrations run");
    sqlx::raw_sql(SEED).execute(&pool).await.expect("seeding");
    fill_latest_samples(&pool)
        .await
        .expect("the latest samples");
    let config = QueryServiceConfig {
        stack: Default::default(),
        authentication: Authentication::None,
        listen_address: "127.0.0.1:0".into(),
        schema: "public".into(),
        database: Default::default(),
        pool: PoolSettings::default(),
        fresh_ttl_seconds: TTL_SECONDS,
        stale_while_revalidate_seconds: 30,
        stale_if_error_seconds: 300,
        max_entries: 1000,
        max_bytes: 64 * 1024 * 1024,
    };
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
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let service =
        QueryService::new(&config, &through_proxy, AccessPolicy::Open).expect("the service starts");
    tokio::spawn(service.run(listener, std::future::pending()));

    let screenshots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    eprintln!("screenshots in {}", screenshots.display());
    let seen = browse(&dashboard, &chromium, &base, &screenshots, "main").await;
    let phases = &seen["phases"];
    eprintln!(
        "first numbers {} ms after navigation; {} batch requests in {} ms of polling",
        phases["load"]["msToNumbers"],
        paths(&phases["polling"]["requests"], "/api/dashboard/batch").len(),
        phases["polling"]["ms"]
    );

    // The overview shows what the database holds for the last 15 minutes.
    let nodes: Vec<Node> = sqlx::query_as(
        r#"SELECT host, avg(cpu_usage_percent)::float8, max(cpu_usage_percent)::float8,
                  avg(memory_usage_mb), max(memory_usage_mb), avg(load_1), count(*)
           FROM host_overall_metrics WHERE "timestamp" >= now() - interval '15 minutes'
           GROUP BY host ORDER BY host"#,
    )
    .fetch_all(&pool)
    .await
    .expect("the nodes");
    assert_eq!(nodes.len(), 3);
    let shown = &phases["load"]["overview"];
    assert_eq!(
        shown.as_object().expect("rows by host").len(),
        nodes.len(),
        "{shown}"
    );
    for (host, avg_cpu, max_cpu, avg_memory, max_memory, load, samples) in nodes {
        let row = &shown[&host];
        assert_eq!(samples, 10);
        assert_eq!(row["samples"], samples.to_string(), "{host}: {row}");
        for (field, expected, precision) in [
            ("avg_cpu", avg_cpu, 0.05),
            ("max_cpu", max_cpu, 0.05),
            ("avg_memory_mb", avg_memory, 0.005 * 1024.0 + 0.05),
            ("max_memory_mb", max_memory, 0.005 * 1024.0 + 0.05),
            ("avg_load_1", load, 0.005),
        ] {
            let on_screen = number(&row[field]);
            assert!(
                (on_screen - expected).abs() <= precision + 1e-9,
                "{host} {field}: {on_screen} on screen, {expected} in the database"
            );
        }
    }
    assert_eq!(phases["load"]["cards"]["nodes"], "3");
    // Network now: each node's latest sample's bytes over the time since the one before.
    let rates: Vec<(String, f64, f64)> = sqlx::query_as(
        r#"SELECT DISTINCT ON (host) host,
                  network_rx_bytes / extract(epoch FROM "timestamp" - previous)::float8,
                  network_tx_bytes / extract(epoch FROM "timestamp" - previous)::float8
           FROM (SELECT *, lag("timestamp") OVER (PARTITION BY host ORDER BY "timestamp")
                           AS previous
                 FROM host_overall_metrics) AS samples
           ORDER BY host, "timestamp" DESC"#,
    )
    .fetch_all(&pool)
    .await
    .expect("the network rates");
    for (host, rx, tx) in rates {
        let row = &shown[&host];
        for (field, expected) in [
            ("network_rx_bytes_per_second", rx),
            ("network_tx_bytes_per_second", tx),
        ] {
            let on_screen = bytes_per_second(&row[field]);
            // One decimal of KB/s.
            assert!(
                (on_screen - expected).abs() <= 0.05 * 1024.0 + 1e-9,
                "{host} {field}: {on_screen} on screen, {expected} in the database"
            );
        }
        assert_eq!(
            row["disk_used_bytes"]
                .as_str()
                .map(|d| d.ends_with("of 465.7 GB")),
            Some(true),
            "{row}"
        );
    }

    // Loading: one batch request for the three widgets on one key, no single routes.
    let load = &phases["load"]["requests"];
    assert_eq!(paths(load, "/api/dashboard/batch").len(), 1, "{load}");
    assert!(
        paths(load, "/api/host-overall-metrics").is_empty(),
        "{load}"
    );
    // The other views' chunks wait until they are opened.
    let chunks: Vec<&str> = load
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(|request| request["path"].as_str())
        .filter(|path| {
            ["processes-", "pods-", "trends-", "history-", "hourly-"]
                .iter()
                .any(|view| path.contains(view))
        })
        .collect();
    assert_eq!(chunks, Vec::<&str>::new());
    // Polling: the page asks once its answer has expired (max-age minus Age) and no sooner
    // than one max-age after its last request, so at most once per TTL (the first request
    // included), whatever the server's refresh-ahead does. And the page does refresh.
    let polling = &phases["polling"];
    let polled = paths(&polling["requests"], "/api/dashboard/batch").len() as u64;
    let (ms, ttl_ms) = (
        polling["ms"].as_u64().expect("ms"),
        polling["ttlMs"].as_u64().expect("ttl"),
    );
    let most = ms.div_ceil(ttl_ms) + 1;
    assert!(
        (1..=most).contains(&polled),
        "{polled} batch requests, at most {most}: {polling}"
    );
    // Hidden: none; shown again: a refresh at once.
    assert_eq!(phases["hidden"]["requests"], serde_json::json!([]));
    assert_eq!(
        paths(&phases["shown"]["requests"], "/api/dashboard/batch").len(),
        1
    );
    // Pods by namespace, as seeded.
    assert_eq!(
        phases["pods"]["namespaces"],
        serde_json::json!([{"namespace": "db", "pods": 3}, {"namespace": "web", "pods": 2}])
    );
    // Typing a namespace at 50 ms a key: at most two requests.
    let typed = paths(&phases["typing"]["requests"], "/api/dashboard/batch");
    assert!((1..=2).contains(&typed.len()), "{typed:?}");
    assert_eq!(
        phases["typing"]["focused"], "namespace-filter",
        "typing keeps the focus"
    );
    assert!(typed.iter().any(|request| {
        request["body"]
            .as_str()
            .is_some_and(|b| b.contains(r#""namespace":"web""#))
    }));
    // Searching command lines, ten characters at 50 ms a key: at most two requests, and the
    // processes shown are those whose latest sample's command line holds the text.
    let search = &phases["search"];
    let searched = search["requests"].as_array().expect("requests");
    assert!((1..=2).contains(&searched.len()), "{search}");
    assert!(
        searched
            .last()
            .and_then(|request| request["query"].as_str())
            .is_some_and(|query| query.contains("q=bin%2Fproc-5")),
        "{search}"
    );
    let matches: Vec<(String, i32, f64)> = sqlx::query_as(
        r#"SELECT host, pid, cpu_usage_percent::float8
           FROM (SELECT DISTINCT ON (host, pid, start_time) *
                 FROM host_process_metrics
                 WHERE "timestamp" >= now() - interval '15 minutes'
                 ORDER BY host, pid, start_time, "timestamp" DESC) AS latest
           WHERE position('bin/proc-5' IN command_line) > 0
           ORDER BY cpu_usage_percent DESC, host, pid"#,
    )
    .fetch_all(&pool)
    .await
    .expect("the matching processes");
    let shown = search["rows"].as_array().expect("rows");
    assert_eq!(shown.len(), matches.len(), "{search}");
    assert_eq!(matches.len(), 3);
    for (row, (host, pid, cpu)) in shown.iter().zip(matches) {
        assert_eq!(row["host"], host.as_str(), "{row}");
        assert_eq!(row["pid"], pid.to_string(), "{row}");
        assert_eq!(row["command_line"], "/usr/bin/proc-5", "{row}");
        assert!(
            (number(&row["cpu_usage_percent"]) - cpu).abs() <= 0.05 + 1e-9,
            "{row}"
        );
    }

    // A pod's drill-down: its container and processes, with what the database holds.
    let drilldown = &phases["drilldown"];
    let (namespace, pod) = drilldown["pod"]
        .as_str()
        .and_then(|key| key.split_once('/'))
        .expect("a pod's key");
    assert_eq!(namespace, "web");
    assert_eq!(
        drilldown["requests"].as_array().map(Vec::len),
        Some(1),
        "{drilldown}"
    );
    type Shares = (Option<f64>, Option<f64>, Option<f64>, Option<f64>);
    let processes: Vec<(i32, f64, f64, f64, f64, Shares)> = sqlx::query_as::<
        _,
        (
            i32,
            f64,
            f64,
            f64,
            f64,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<f64>,
        ),
    >(
        r#"SELECT pid, avg(cpu_usage_percent)::float8, max(cpu_peak_percent)::float8,
                  avg(memory_usage_mb), max(memory_usage_mb),
                  avg(cpu_request_percent)::float8, avg(cpu_limit_percent)::float8,
                  avg(memory_request_percent)::float8, avg(memory_limit_percent)::float8
           FROM vm_process_metrics
           WHERE pod_namespace = $1 AND pod_name = $2
             AND "timestamp" >= now() - interval '15 minutes'
           GROUP BY pid ORDER BY 2 DESC, pid"#,
    )
    .bind(namespace)
    .bind(pod)
    .fetch_all(&pool)
    .await
    .expect("the pod's processes")
    .into_iter()
    .map(|(pid, a, b, c, d, e, f, g, i)| (pid, a, b, c, d, (e, f, g, i)))
    .collect();
    let containers = drilldown["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{drilldown}");
    assert_eq!(containers[0]["container"], "main");
    let rows = containers[0]["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), processes.len(), "{drilldown}");
    for (row, (pid, avg_cpu, max_cpu, avg_memory, max_memory, shares)) in rows.iter().zip(processes)
    {
        assert_eq!(row["pid"], pid.to_string(), "{row}");
        let (cpu_request, cpu_limit, memory_request, memory_limit) = shares;
        assert_eq!(memory_request, None, "no memory request seeded");
        for (field, expected) in [
            ("avg_cpu_request_percent", cpu_request),
            ("avg_cpu_limit_percent", cpu_limit),
            ("avg_memory_request_percent", memory_request),
            ("avg_memory_limit_percent", memory_limit),
        ] {
            match expected {
                Some(expected) => {
                    let on_screen = number(&row[field]);
                    assert!(
                        (on_screen - expected).abs() <= 0.05 + 1e-9,
                        "{pod} {pid} {field}: {on_screen} on screen, {expected} in the database"
                    );
                }
                None => assert_eq!(row[field], "–", "{field}: {row}"),
            }
        }
        for (field, expected) in [
            ("avg_cpu", avg_cpu),
            ("max_cpu", max_cpu),
            ("avg_memory_mb", avg_memory),
            ("max_memory_mb", max_memory),
        ] {
            let on_screen = number(&row[field]);
            assert!(
                (on_screen - expected).abs() <= 0.05 + 1e-9,
                "{pod} {pid} {field}: {on_screen} on screen, {expected} in the database"
            );
        }
    }

    // A process's history, opened from the drill-down's first process: followed by pod,
    // container and command (the process name: no command line is seeded) through its two
    // incarnations, the restart marked, from one request, its chunk fetched only then.
    let history = &phases["history"];
    let followed = &history["followed"];
    let command = followed["process_name"].as_str().expect("a process name");
    assert_eq!(followed["command_line"], "–", "{followed}");
    assert_eq!(history["chunkBefore"], 0);
    let asked = paths(&history["requests"], "/api/process-history");
    assert_eq!(asked.len(), 1, "{history}");
    let query = asked[0]["query"].as_str().expect("a query");
    for part in [
        format!("namespace={namespace}"),
        format!("pod={pod}"),
        "container=main".to_owned(),
        format!("command={command}"),
        "window=15m".to_owned(),
    ] {
        assert!(query.contains(&part), "{part} in {query}");
    }
    assert!(
        history["hash"]
            .as_str()
            .is_some_and(|h| h.contains("view=history")),
        "{history}"
    );
    let incarnations: Vec<(i32, i64)> = sqlx::query_as(
        r#"SELECT pid, count(*)
           FROM vm_process_metrics
           WHERE pod_namespace = $1 AND pod_name = $2 AND container_name = 'main'
             AND coalesce(command_line, process_name) = $3
             AND "timestamp" >= now() - interval '15 minutes'
           GROUP BY pid, start_time ORDER BY min("timestamp")"#,
    )
    .bind(namespace)
    .bind(pod)
    .bind(command)
    .fetch_all(&pool)
    .await
    .expect("the incarnations");
    assert_eq!(incarnations.len(), 2, "one restart seeded");
    let shown = history["incarnations"].as_array().expect("incarnations");
    assert_eq!(shown.len(), incarnations.len(), "{history}");
    for (row, (pid, samples)) in shown.iter().zip(&incarnations) {
        assert_eq!(row["pid"], pid.to_string(), "{row}");
        assert_eq!(row["samples"], samples.to_string(), "{row}");
    }
    let restarts = history["restarts"].as_array().expect("restarts");
    assert_eq!(restarts.len(), 1, "{history}");
    assert!(
        restarts[0]
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("{}/", incarnations[1].0))),
        "the restart is the second incarnation's start: {history}"
    );

    // Thirty days: every sample of each node (the one 30 minutes ago too), from hourly
    // buckets, charted; the chart's chunk fetched only then.
    let long = &phases["longWindow"];
    assert_eq!(
        long["windows"],
        serde_json::json!(["15m", "1h", "6h", "24h", "7d", "30d"])
    );
    assert!(
        long["freshness"]
            .as_str()
            .is_some_and(|f| f.contains("hourly buckets")),
        "{long}"
    );
    assert_eq!(long["chunkBefore"], 0);
    assert!(
        long["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .any(|r| r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/assets/hourly-"))),
        "{long}"
    );
    assert!(
        paths(&long["requests"], "/api/dashboard/batch")
            .iter()
            .any(|r| r["body"]
                .as_str()
                .is_some_and(|b| b.contains(r#""window":"30d""#))),
        "{long}"
    );
    let month: Vec<(String, f64, i64)> = sqlx::query_as(
        r#"SELECT host, avg(cpu_usage_percent)::float8, count(*)
           FROM host_overall_metrics GROUP BY host ORDER BY host"#,
    )
    .fetch_all(&pool)
    .await
    .expect("the nodes over 30 days");
    for (host, avg_cpu, samples) in month {
        let row = &long["overview"][&host];
        assert_eq!(samples, 11);
        assert_eq!(row["samples"], samples.to_string(), "{host}: {row}");
        let on_screen = number(&row["avg_cpu"]);
        assert!(
            (on_screen - avg_cpu).abs() <= 0.05 + 1e-9,
            "{host} avg_cpu over 30 days: {on_screen} on screen, {avg_cpu} in the database"
        );
    }
    assert_eq!(phases["dark"]["theme"], "dark");

    // The trends chunk only once its view is opened.
    let trends = &phases["trends"];
    assert_eq!(trends["chunkBefore"], 0);
    let chunk: Vec<_> = trends["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|request| {
            request["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/assets/trends-"))
        })
        .collect();
    assert_eq!(chunk.len(), 1, "{trends}");
    // The trends draw the server's buckets: a line per node with a point per sample of the
    // last 15 minutes (network from each node's second sample in the window on), asked
    // again when the answer expires, as the batch is.
    for (chart, per_node) in [
        ("trends-cpu", 10),
        ("trends-memory", 10),
        ("trends-load", 10),
        ("trends-network", 9),
    ] {
        for node in ["node-1", "node-2", "node-3"] {
            assert_eq!(
                trends["points"][chart][node], per_node,
                "{chart} {node}: {trends}"
            );
        }
    }
    let asked = paths(&trends["requests"], "/api/host-history").len() as u64;
    let (ms, ttl_ms) = (
        trends["ms"].as_u64().expect("ms"),
        trends["ttlMs"].as_u64().expect("ttl"),
    );
    let most = ms.div_ceil(ttl_ms) + 1;
    assert!(
        (2..=most).contains(&asked),
        "{asked} history requests, at least 2 and at most {most}: {trends}"
    );
    // Over 30 days (the overview's link), hourly buckets: every node still has its line,
    // and the network chart says why it has none.
    let month = &phases["trendsMonth"];
    assert_eq!(month["hash"], "#view=trends&window=30d", "{month}");
    for node in ["node-1", "node-2", "node-3"] {
        assert!(
            month["points"]["trends-cpu"][node]
                .as_u64()
                .is_some_and(|n| n >= 1),
            "{node}: {month}"
        );
    }
    assert!(
        month["network"]
            .as_str()
            .is_some_and(|n| n.contains("keep no network")),
        "{month}"
    );

    // The batch route failing: the four single routes, and the overview still shows.
    let fallback = &phases["fallback"];
    for path in [
        "/api/host-process-metrics",
        "/api/host-overall-metrics",
        "/api/dashboard/top-processes",
        "/api/vm-metrics",
    ] {
        assert!(
            !paths(&fallback["requests"], path).is_empty(),
            "{path} in {fallback}"
        );
    }
    assert_eq!(
        fallback["overview"],
        serde_json::json!(["node-1", "node-2", "node-3"])
    );
    assert!(
        fallback["notice"]
            .as_str()
            .is_some_and(|n| n.contains("single endpoints")),
        "{fallback}"
    );

    // A service that wants a token: the page asks, keeps it for the tab, and sends it.
    let token = &phases["token"];
    let before = token["before"].as_array().expect("requests");
    assert!(!before.is_empty(), "{token}");
    assert!(
        before.iter().all(|r| r["authorization"].is_null()),
        "{token}"
    );
    let after = token["after"].as_array().expect("requests");
    assert!(!after.is_empty(), "{token}");
    assert!(
        after
            .iter()
            .all(|r| r["authorization"] == "Bearer test-token"),
        "{token}"
    );
    assert_eq!(token["stored"], "test-token");
    assert_eq!(token["formHidden"], true);

    // The database away: the page still shows the last numbers, with a notice saying so.
    proxy.set_up(false);
    let away = browse(&dashboard, &chromium, &base, &screenshots, "outage").await;
    let outage = &away["phases"]["outage"];
    assert_eq!(
        outage["overview"], phases["load"]["overview"],
        "the same numbers"
    );
    assert!(
        outage["notice"]
            .as_str()
            .is_some_and(|n| n.contains("could not refresh")),
        "{outage}"
    );
}
