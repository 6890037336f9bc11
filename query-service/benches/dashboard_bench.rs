//! Benchmark of the web dashboard in a real browser (not a test: it asserts nothing and
//! prints numbers): seeds a database on the test environment's native PostgreSQL, starts
//! the query service on it, and runs `dashboard/bench/dashboard.mjs`, which drives
//! Debian's Chromium headless (puppeteer-core) and measures the page beside the
//! performance plan's approach (`?mode=baseline`) in the same run, reported as ratios: time
//! from navigation to the first numbers over cold loads (p50, p95), JavaScript bytes, API
//! requests per minute and the share answered 304, long tasks while polling and during
//! chart updates; and the page's JavaScript heap over a compressed long run. Then, without
//! the browser, the process search over [`SEARCH_PROCESSES`] distinct processes: p50 and
//! p95 of `GET /api/process-search` over [`SEARCHES`] searches (`--searches N`; 0 skips
//! it), each a cache miss.
//!
//! ```text
//! scripts/bench-dashboard                     # 1,000,000 process rows, 20 loads, 3 minutes
//! scripts/bench-dashboard --rows 15600000 --parts loads --searches 0   # the plan's size
//! scripts/bench-dashboard --minutes 1 --loads 5 --heap-minutes 2
//! ```
//!
//! `--rows N` and `--searches N` are read here; every other argument goes to the browser
//! script. The service
//! runs with the operator's defaults (fresh for 4 s, stale-while-revalidate 30 s); a second
//! one on the same database, fresh for 1 s, serves the heap run (`--fast-url`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use metricsstack_common::access::{AccessPolicy, Authentication};
use metricsstack_common::config::QueryServiceConfig;
use metricsstack_common::database::PoolSettings;
use metricsstack_operator::database::MIGRATOR;
use metricsstack_query_service::QueryService;
use metricsstack_testkit::{
    SEED_HOSTS, SEED_PROCESSES_PER_HOST, TestDatabase, fill_latest_samples, seed_dashboard,
};
use sqlx::PgPool;
use tokio::net::TcpListener;

/// Distinct processes the search runs over: each sampled once a minute over the search's
/// default window (15 minutes), with a command line of its own.
const SEARCH_PROCESSES: i64 = 10_000;
/// Searches timed unless `--searches N` says otherwise, each for a different text (so each
/// misses the service's cache).
const SEARCHES: usize = 60;

/// Seeds `rows` process samples with the testkit's [`seed_dashboard`] (as
/// `benches/benches/query_bench.rs` does), with node and pod samples over the same minutes.
async fn seed(pool: &PgPool, rows: i64) {
    eprintln!(
        "seeding {rows} host_process_metrics rows ({SEED_HOSTS} hosts x \
         {SEED_PROCESSES_PER_HOST} processes, one sample a minute) ..."
    );
    let seeded = seed_dashboard(pool, rows).await.expect("seeding");
    let (_, took) = seeded.tables.last().expect("the tables seeded");
    eprintln!(
        "seeded {:.1} days in {:.1} s",
        seeded.minutes as f64 / 1440.0,
        took.as_secs_f64()
    );
}

/// Starts a query service on `db` whose answers are fresh for `fresh_seconds`, otherwise
/// with the operator's defaults; returns its base URL. Open: it listens on loopback only,
/// for the benchmark's browser, on a throwaway database.
async fn serve(db: &TestDatabase, fresh_seconds: u64) -> String {
    let config = QueryServiceConfig {
        stack: Default::default(),
        authentication: Authentication::None,
        listen_address: "127.0.0.1:0".into(),
        schema: "public".into(),
        database: Default::default(),
        pool: PoolSettings::default(),
        fresh_ttl_seconds: fresh_seconds,
        stale_while_revalidate_seconds: 30,
        stale_if_error_seconds: 300,
        max_entries: 1000,
        max_bytes: 64 * 1024 * 1024,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let service =
        QueryService::new(&config, &db.url(), AccessPolicy::Open).expect("the service starts");
    tokio::spawn(service.run(listener, std::future::pending()));
    base
}

/// Adds [`SEARCH_PROCESSES`] processes over the 20 hosts, each with a command line of its
/// own (`/opt/app-N/bin/server --port=N --config=/etc/app-N.yaml`), sampled once a minute
/// over the last 15 minutes.
async fn seed_search(pool: &PgPool) {
    sqlx::query(
        r#"INSERT INTO host_process_metrics ("timestamp", host, pid, start_time, parent_pid,
               process_name, command_line, username, state, cpu_usage_percent,
               cpu_peak_percent, memory_usage_mb, virtual_memory_mb, disk_read_bytes,
               disk_write_bytes, threads)
           SELECT now() - make_interval(mins => s), 'node-' || (n % $2 + 1), 100000 + n,
                  TIMESTAMPTZ '2024-01-01 00:00:00+00', 1, 'app-' || (n % 100),
                  '/opt/app-' || n || '/bin/server --port=' || n || ' --config=/etc/app-' || n || '.yaml',
                  'app', 'S', (n % 1000)::real / 10, (n % 1000)::real / 8, (n % 4096)::float8,
                  8192, 0, 0, 4
           FROM generate_series(0, 14) AS s, generate_series(1, $1) AS n"#,
    )
    .bind(SEARCH_PROCESSES)
    .bind(SEED_HOSTS)
    .execute(pool)
    .await
    .expect("seeding the search's processes");
    fill_latest_samples(pool).await.expect("the latest samples");
    sqlx::query("ANALYZE host_process_metrics, host_process_latest")
        .execute(pool)
        .await
        .expect("ANALYZE");
}

/// Times `searches` process searches, each for a text no other asked (a cache miss): one
/// process's port (one or a few matches), an application's directory (a handful) or a text
/// no command line holds (none), in turn, over the search's default window.
async fn search(base: &str, searches: usize) {
    let client = reqwest::Client::new();
    let mut times = Vec::with_capacity(searches);
    let mut matches = 0;
    for i in 0..searches {
        let n = (i as i64 * 7919) % SEARCH_PROCESSES + 1;
        let text = match i % 3 {
            0 => format!("port={n}"),
            1 => format!("/opt/app-{n}/"),
            _ => format!("no-such-command-{i}"),
        };
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("q", &text)
            .finish();
        let started = Instant::now();
        let response = client
            .get(format!("{base}/api/process-search?{query}"))
            .send()
            .await
            .expect("the search answers");
        assert!(
            response.status().is_success(),
            "search {text}: {}",
            response.status()
        );
        let body: serde_json::Value = response.json().await.expect("a JSON answer");
        times.push(started.elapsed());
        matches += body["rows"].as_array().map_or(0, Vec::len);
    }
    times.sort();
    let at = |p: usize| times[(p * times.len()).div_ceil(100) - 1].as_secs_f64() * 1000.0;
    println!(
        "process search over {SEARCH_PROCESSES} distinct processes (plus the seeded ones), \
         {searches} searches, each a cache miss ({matches} rows matched in all): \
         p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        at(50),
        at(95),
        at(100)
    );
}

#[tokio::main]
async fn main() {
    let mut rows: i64 = 1_000_000;
    let mut searches = SEARCHES;
    let mut passed = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rows" => {
                rows = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--rows takes a number of rows")
            }
            "--searches" => {
                searches = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--searches takes a number of searches")
            }
            // Cargo passes --bench to a bench target.
            "--bench" => {}
            _ => passed.push(arg),
        }
    }
    let dashboard = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboard");
    assert!(
        dashboard.join("node_modules/puppeteer-core").exists(),
        "dashboard/node_modules has no puppeteer-core: run scripts/build-dashboard --check"
    );

    let db = TestDatabase::create().await;
    let pool = db.pool(2).await;
    MIGRATOR.run(&pool).await.expect("migrations run");
    seed(&pool, rows).await;
    let base = serve(&db, 4).await;
    let fast = serve(&db, 1).await;

    let mut browser = Command::new("node");
    browser
        .current_dir(&dashboard)
        .arg("bench/dashboard.mjs")
        .args(["--url", &base, "--fast-url", &fast])
        .args(&passed);
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || browser.status())
        .await
        .expect("the browser script runs")
        .expect("node starts");
    assert!(status.success(), "the browser script failed: {status}");
    eprintln!(
        "browser half took {:.0} s on {rows} rows",
        started.elapsed().as_secs_f64()
    );
    if searches > 0 {
        seed_search(&pool).await;
        search(&base, searches).await;
    }
    drop(pool);
    tokio::time::sleep(Duration::from_millis(100)).await;
}
