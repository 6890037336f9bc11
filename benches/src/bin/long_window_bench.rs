//! Uncached latency of the query service's long-window parts (top processes, host overall
//! metrics, pods, a pod's processes, a process's history) over a 30-day window, each
//! statement run straight against the database (no HTTP, no answer cache), reported side
//! by side as ratios:
//!
//! 1. native PostgreSQL, which has no rollups: the hourly buckets computed from raw rows
//!    (what the service runs there for long windows) against the raw statement of a short
//!    window stretched to the same 30 days;
//! 2. the test environment's TimescaleDB (PGlite + TimescaleDB, WASM, one session): the
//!    hourly continuous aggregates the operator creates against the same buckets computed
//!    from raw rows, on the same data.
//!
//! Both databases get collector-shaped rows spread evenly over the window: `--rows`
//! `host_process_metrics` rows from `--hosts` hosts with 30 processes each (12 process
//! names), one `host_overall_metrics` row per host and three `vm_process_metrics` rows per
//! host (one pod of three processes each) at the same interval. `--full` seeds the plan's
//! 15,600,000 rows from 20 hosts on PostgreSQL, a sample every 100 s. TimescaleDB gets
//! `--timescaledb-rows` from `--timescaledb-hosts` (PGlite runs in WebAssembly in one
//! session: a few hundred thousand rows are what it seeds in a minute, so one host keeps the
//! samples minutes apart, as a collector takes them, rather than hours). Run it with
//! `scripts/bench-long-windows`.
//!
//! On native PostgreSQL it also times the parts that read raw samples over the 30 days: a
//! host's processes and the process search from `host_process_latest` beside the raw
//! statements they replaced (kept here as the baseline, their answers compared), the
//! search without and with the trigram index of `host_process_texts`, and a followed
//! process's history; then the collector's process insert with the latest-sample
//! upsert beside the same insert without it, in rows per second. A third of each host's
//! processes are short-lived (a new one every hour), so that `host_process_latest` holds
//! the processes of 30 days of churn, not just the long-running ones.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Parser;
use metricsstack_collector::ingest;
use metricsstack_collector::rows::{Batch, ProcessRow, Table};
use metricsstack_common::database::{DatabaseTls, PoolSettings, TlsMode};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_operator::database::{self, MIGRATOR};
use metricsstack_operator::validate::validate;
use metricsstack_query_service::filters::{Part, PartKey, TopMetric};
use metricsstack_query_service::queries::{self, Source, Statement};
use metricsstack_testkit::{
    RAW_HOST_PROCESSES, RAW_PROCESS_SEARCH, TestDatabase, TimescaleSchema, fill_latest_samples,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The long-window benchmark.
#[derive(Parser, Debug)]
struct Args {
    /// `host_process_metrics` rows to seed on PostgreSQL.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Seed the plan's 15.6 million rows on PostgreSQL.
    #[arg(long)]
    full: bool,
    /// Hosts seeded on PostgreSQL.
    #[arg(long, default_value_t = 20)]
    hosts: u64,
    /// `host_process_metrics` rows to seed on TimescaleDB.
    #[arg(long, default_value_t = 300_000)]
    timescaledb_rows: u64,
    /// Hosts seeded on TimescaleDB.
    #[arg(long, default_value_t = 1)]
    timescaledb_hosts: u64,
    /// Timed runs of each statement (after one warm-up run).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Skip native PostgreSQL.
    #[arg(long)]
    skip_postgres: bool,
    /// Skip TimescaleDB.
    #[arg(long)]
    skip_timescaledb: bool,
    /// Collector-sized batches (one host's 30 processes) inserted each way when timing the
    /// latest-sample upsert.
    #[arg(long, default_value_t = 2000)]
    ingest_batches: usize,
    /// On PostgreSQL, time only the statements that read `host_process_latest`, the
    /// process history and the ingest: no long-window parts, no raw baselines (which take
    /// seconds a run at the full size).
    #[arg(long)]
    skip_baselines: bool,
}

const WINDOW_DAYS: u32 = 30;
const PROCESSES_PER_HOST: u64 = 30;
const PROCESSES_PER_POD: u64 = 3;
/// Processes of each host (the last ones) replaced by a new process every
/// [`SHORT_LIVED_SECONDS`].
const SHORT_LIVED_PER_HOST: u64 = 10;
const SHORT_LIVED_SECONDS: f64 = 3600.0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rows = if args.full { 15_600_000 } else { args.rows };
    if !args.skip_postgres {
        let db = TestDatabase::create().await;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(db.options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        seed(&pool, rows, args.hosts).await?;
        println!(
            "\nnative PostgreSQL, {rows} process rows of {} hosts over {WINDOW_DAYS} days:",
            args.hosts
        );
        if !args.skip_baselines {
            compare(&pool, Source::HourlyFromRaw, Source::Raw, args.runs).await?;
        }
        compare_raw_parts(&pool, args.runs, !args.skip_baselines).await?;
        compare_ingest(&pool, args.ingest_batches).await?;
        pool.close().await;
    }
    if !args.skip_timescaledb {
        let tsdb = TimescaleSchema::create().await;
        let pool = database::connect(
            &tsdb.url(),
            &DatabaseTls {
                mode: TlsMode::Disable,
                ca: None,
            },
            &PoolSettings {
                max_connections: 1,
                ..PoolSettings::default()
            },
            &tsdb.schema,
        )
        .await?;
        let stack: MetricsStack = serde_json::from_value(serde_json::json!({
            "apiVersion": "metricsstack.dev/v1alpha1",
            "kind": "MetricsStack",
            "metadata": { "name": "bench", "namespace": "bench" },
            "spec": { "database": { "secretRef": { "name": "db" }, "schema": tsdb.schema } }
        }))?;
        let storage = validate(&stack.spec)?.storage;
        database::converge(&pool, &tsdb.schema, "bench/bench", &storage, None).await?;
        seed(&pool, args.timescaledb_rows, args.timescaledb_hosts).await?;
        let started = Instant::now();
        for view in [
            "host_process_metrics_hourly",
            "host_overall_metrics_hourly",
            "vm_process_metrics_hourly",
        ] {
            // What the refresh jobs do over time; the test server runs no background jobs.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CALL refresh_continuous_aggregate('{}.{view}', NULL, \
                 date_trunc('hour', now()) - interval '1 hour')",
                tsdb.schema
            )))
            .execute(&pool)
            .await
            .with_context(|| format!("refreshing {view}"))?;
        }
        println!(
            "  rollups refreshed after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        sqlx::raw_sql("ANALYZE").execute(&pool).await?;
        println!(
            "\nTimescaleDB (PGlite, WASM), {} process rows of {} hosts over {WINDOW_DAYS} \
             days, default storage (daily chunks, uncompressed):",
            args.timescaledb_rows, args.timescaledb_hosts
        );
        compare(
            &pool,
            Source::HourlyAggregate,
            Source::HourlyFromRaw,
            args.runs,
        )
        .await?;
        pool.close().await;
    }
    Ok(())
}

/// Seeds `rows` process samples of `hosts` hosts spread evenly over the window, ending
/// now, and the other tables at the same interval (one pod per host); then `ANALYZE`.
async fn seed(pool: &PgPool, rows: u64, hosts: u64) -> anyhow::Result<()> {
    let samples = i64::try_from(rows.div_ceil(hosts * PROCESSES_PER_HOST))?;
    let interval = f64::from(WINDOW_DAYS) * 86_400.0 / samples as f64;
    let started = Instant::now();
    println!(
        "seeding {rows} host_process_metrics rows ({hosts} hosts x {PROCESSES_PER_HOST} \
         processes, a sample every {interval:.0} s over {WINDOW_DAYS} days) ..."
    );
    sqlx::query(
        r#"INSERT INTO host_process_metrics ("timestamp", host, pid, start_time, parent_pid,
               process_name, command_line, username, state, cpu_usage_percent,
               cpu_peak_percent, memory_usage_mb, virtual_memory_mb, disk_read_bytes,
               disk_write_bytes, threads)
           SELECT now() - make_interval(secs => s * $2), 'node-' || h, 1000 + p,
                  CASE WHEN p > $4 - $5
                      THEN now() - make_interval(secs => (floor(s * $2 / $6) + 1) * $6)
                      ELSE TIMESTAMPTZ '2024-01-01 00:00:00+00' END,
                  1, 'process-' || (p % 12),
                  '/usr/bin/process-' || p || ' --serve', 'app', 'S',
                  ((h * 7919 + p * 104729 + s * 31) % 1000)::real / 10,
                  ((h * 7919 + p * 104729 + s * 37) % 1000)::real / 8,
                  ((h * 31 + p * 977 + s) % 4096)::float8 + 0.5, 8192, s * 4096, s * 1024,
                  1 + p % 16
           FROM generate_series(0, $1 - 1) AS s, generate_series(1, $3) AS h,
                generate_series(1, $4) AS p"#,
    )
    .bind(samples)
    .bind(interval)
    .bind(i64::try_from(hosts)?)
    .bind(i64::try_from(PROCESSES_PER_HOST)?)
    .bind(i64::try_from(SHORT_LIVED_PER_HOST)?)
    .bind(SHORT_LIVED_SECONDS)
    .execute(pool)
    .await
    .context("seeding host_process_metrics")?;
    let filling = Instant::now();
    fill_latest_samples(pool)
        .await
        .context("filling host_process_latest")?;
    println!(
        "  host_process_latest filled from the raw rows (what migration 0003 does) in {:.1} s",
        filling.elapsed().as_secs_f64()
    );
    sqlx::query(
        r#"INSERT INTO host_overall_metrics ("timestamp", host, cpu_usage_percent,
               cpu_per_core_percent, load_1, load_5, load_15, memory_total_bytes,
               memory_used_bytes, memory_usage_mb, swap_total_bytes, swap_used_bytes,
               disk_total_bytes, disk_used_bytes, disk_read_bytes, disk_write_bytes,
               network_rx_bytes, network_tx_bytes, uptime_seconds, process_count)
           SELECT now() - make_interval(secs => s * $2), 'node-' || h,
                  ((h * 13 + s * 7) % 1000)::real / 10, ARRAY[10, 20]::real[],
                  ((h + s) % 400)::float8 / 100, 1, 1, 68719476736, 34359738368,
                  ((h * 131 + s) % 32768)::float8, 0, 0, 0, 0, 0, 0, 0, 0, 3600, 300
           FROM generate_series(0, $1 - 1) AS s, generate_series(1, $3) AS h"#,
    )
    .bind(samples)
    .bind(interval)
    .bind(i64::try_from(hosts)?)
    .execute(pool)
    .await
    .context("seeding host_overall_metrics")?;
    sqlx::query(
        r#"INSERT INTO vm_process_metrics ("timestamp", host, pid, start_time, process_name,
               command_line, pod_namespace, pod_name, pod_uid, container_id, container_name,
               cpu_usage_percent, cpu_peak_percent, cpu_limit_percent, memory_usage_mb,
               disk_read_bytes, disk_write_bytes)
           SELECT now() - make_interval(secs => s * $2), 'node-' || (pd % $3 + 1),
                  5000 + pd * 10 + pr, TIMESTAMPTZ '2024-01-01 00:00:00+00', 'worker-' || pr,
                  '/app/worker-' || pr, 'namespace-' || (pd % 4), 'pod-' || pd, 'uid-' || pd,
                  'cid-' || pd, 'main', ((pd * 17 + pr * 5 + s) % 400)::real / 4, 100,
                  CASE WHEN pd % 2 = 0 THEN ((pd * 17 + pr * 5 + s) % 400)::real / 8 END,
                  ((pd * 100 + pr * 10 + s) % 2048)::float8, 0, 0
           FROM generate_series(0, $1 - 1) AS s, generate_series(1, $4) AS pd,
                generate_series(1, $5) AS pr"#,
    )
    .bind(samples)
    .bind(interval)
    .bind(i64::try_from(hosts)?)
    .bind(i64::try_from(hosts)?)
    .bind(i64::try_from(PROCESSES_PER_POD)?)
    .execute(pool)
    .await
    .context("seeding vm_process_metrics")?;
    sqlx::raw_sql("ANALYZE").execute(pool).await?;
    println!("  seeded after {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The long-window parts over 30 days, as the dashboard asks for them (20 rows; the pods
/// of every namespace; the processes of `pod-1`; the history of its `/app/worker-1`).
fn keys() -> Vec<PartKey> {
    [
        Part::TopProcesses,
        Part::HostOverallMetrics,
        Part::VmMetrics,
        Part::PodProcesses,
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
            window_seconds: WINDOW_DAYS * 86_400,
            host: None,
            namespace: in_pod.then(|| "namespace-1".to_owned()),
            search: None,
            pod: in_pod.then(|| "pod-1".to_owned()),
            container: followed.then(|| "main".to_owned()),
            command: followed.then(|| "/app/worker-1".to_owned()),
        }
    })
    .collect()
}

/// Times each part from `source` beside `baseline`, on the same data, and prints p50, p95
/// and their ratio.
async fn compare(
    pool: &PgPool,
    source: Source,
    baseline: Source,
    runs: usize,
) -> anyhow::Result<()> {
    println!(
        "  {:<22} {:>24} {:>24} {:>21}",
        "part (30 days)",
        format!("{} p50/p95 ms", source.as_str()),
        format!("{} p50/p95 ms", baseline.as_str()),
        "baseline/source p50"
    );
    for key in keys() {
        let timed = |source| {
            let key = key.clone();
            async move {
                let statement = Statement {
                    part: key.part,
                    source,
                };
                queries::run(pool, statement, &key).await?;
                let mut samples = Vec::with_capacity(runs);
                for _ in 0..runs {
                    let started = Instant::now();
                    queries::run(pool, statement, &key).await?;
                    samples.push(started.elapsed());
                }
                samples.sort();
                anyhow::Ok((percentile(&samples, 0.5), percentile(&samples, 0.95)))
            }
        };
        let (p50, p95) = timed(source).await?;
        let (base50, base95) = timed(baseline).await?;
        println!(
            "  {:<22} {:>24} {:>24} {:>21.2}",
            key.part.name(),
            format!("{:.1} / {:.1}", ms(p50), ms(p95)),
            format!("{:.1} / {:.1}", ms(base50), ms(base95)),
            ms(base50) / ms(p50)
        );
    }
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One timed statement's parameters over 30 days.
#[derive(Clone, Copy)]
enum Parameters<'a> {
    /// A host's processes: host, limit.
    HostProcesses(Option<&'a str>, i64),
    /// The search: host, text, limit.
    Search(Option<&'a str>, &'a str, i64),
}

impl Parameters<'_> {
    /// The service's key of the part.
    fn key(self) -> PartKey {
        let (part, host, search, limit) = match self {
            Parameters::HostProcesses(host, limit) => (Part::HostProcessMetrics, host, None, limit),
            Parameters::Search(host, text, limit) => (Part::ProcessSearch, host, Some(text), limit),
        };
        PartKey {
            part,
            limit: Some(u32::try_from(limit).expect("a limit")),
            metric: None,
            window_seconds: WINDOW_DAYS * 86_400,
            host: host.map(str::to_owned),
            namespace: None,
            search: search.map(str::to_owned),
            pod: None,
            container: None,
            command: None,
        }
    }
}

/// Which statement a timed run runs: the service's, or the raw statement it replaced.
#[derive(Clone, Copy)]
enum Runs {
    Service,
    Baseline(&'static str),
}

/// Rows of an answer: (host, pid, start time, time).
type AnswerRows = Vec<(String, i32, DateTime<Utc>, DateTime<Utc>)>;

/// Runs the statement with `parameters` (the service's as it runs it, or a baseline with
/// the window, host, pattern and limit bound); the rows' (host, pid, start time, time).
async fn run_raw(
    pool: &PgPool,
    runs: Runs,
    parameters: Parameters<'_>,
) -> anyhow::Result<AnswerRows> {
    let key = parameters.key();
    let query = match runs {
        Runs::Service => {
            let statement = Statement {
                part: key.part,
                source: Source::Raw,
            };
            queries::prepared(statement, &key)?
        }
        Runs::Baseline(sql) => {
            let query = sqlx::query(sql)
                .bind(f64::from(key.window_seconds))
                .bind(key.host.clone());
            match key.search.as_deref() {
                Some(text) => query.bind(queries::like_pattern(text)),
                None => query,
            }
            .bind(i64::from(key.limit.expect("a limit")))
        }
    };
    let rows = query.fetch_all(pool).await?;
    use sqlx::Row as _;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("host")?,
                row.try_get("pid")?,
                row.try_get("start_time")?,
                row.try_get("timestamp")?,
            ))
        })
        .collect()
}

/// p50 and p95 of `runs` runs of the statement (after one warm-up run), and its rows.
async fn time_raw(
    pool: &PgPool,
    statement: Runs,
    parameters: Parameters<'_>,
    runs: usize,
) -> anyhow::Result<(Duration, Duration, AnswerRows)> {
    let rows = run_raw(pool, statement, parameters).await?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        run_raw(pool, statement, parameters).await?;
        samples.push(started.elapsed());
    }
    samples.sort();
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.95), rows))
}

/// "p50 / p95" in milliseconds.
fn p50_p95(p50: Duration, p95: Duration) -> String {
    format!("{:.1} / {:.1}", ms(p50), ms(p95))
}

/// The parts that read raw samples over 30 days: a host's processes and the search from
/// `host_process_latest` beside the raw statements they replaced (their answers must be the
/// same; `baselines` false: the new statements alone), the search first without the
/// trigram index (every process's text read) and then with it (pg_trgm installed as the
/// operator would find it), and a followed process's history.
async fn compare_raw_parts(pool: &PgPool, runs: usize, baselines: bool) -> anyhow::Result<()> {
    let (latest_rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM host_process_latest")
        .fetch_one(pool)
        .await?;
    println!(
        "\n  raw samples over {WINDOW_DAYS} days ({latest_rows} processes in host_process_latest):"
    );
    println!(
        "  {:<40} {:>20} {:>20} {:>14}",
        "part (30 days)", "latest p50/p95 ms", "raw p50/p95 ms", "raw/latest p95"
    );
    let host_processes = [
        ("host processes, 20 rows", None, 20),
        ("host processes, 1000 rows", None, 1000),
        ("host processes of node-1, 1000 rows", Some("node-1"), 1000),
    ];
    for (name, host, limit) in host_processes {
        let parameters = Parameters::HostProcesses(host, limit);
        let (p50, p95, new_rows) = time_raw(pool, Runs::Service, parameters, runs).await?;
        if !baselines {
            println!("  {name:<40} {:>20}", p50_p95(p50, p95));
            continue;
        }
        let (raw50, raw95, raw_rows) =
            time_raw(pool, Runs::Baseline(RAW_HOST_PROCESSES), parameters, runs).await?;
        anyhow::ensure!(
            new_rows == raw_rows,
            "{name}: host_process_latest answers as the raw rows do"
        );
        println!(
            "  {name:<40} {:>20} {:>20} {:>14.1}",
            p50_p95(p50, p95),
            p50_p95(raw50, raw95),
            ms(raw95) / ms(p95)
        );
    }

    // Texts a third of the processes match, none matches (long and short: a trigram index
    // serves three characters and more), and one match per host.
    let searches = [
        ("\"process-2\"", "process-2"),
        ("\"no-such-process\"", "no-such-process"),
        ("\"zq\"", "zq"),
        ("\"process-7 \"", "process-7 "),
    ];
    let mut without_index = Vec::new();
    for (_, text) in searches {
        without_index.push(
            time_raw(
                pool,
                Runs::Service,
                Parameters::Search(None, text, 20),
                runs,
            )
            .await?,
        );
    }
    sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        .execute(pool)
        .await?;
    anyhow::ensure!(
        database::ensure_search_index(pool, "public").await?,
        "the trigram index is created"
    );
    sqlx::raw_sql("ANALYZE host_process_texts")
        .execute(pool)
        .await?;
    println!(
        "\n  {:<40} {:>20} {:>20} {:>20} {:>10}",
        "search (30 days, 20 rows)",
        "trigram p50/p95 ms",
        "no index p50/p95 ms",
        "raw p50/p95 ms",
        "rows"
    );
    for ((name, text), (plain50, plain95, plain_rows)) in searches.into_iter().zip(without_index) {
        let parameters = Parameters::Search(None, text, 20);
        let (p50, p95, rows) = time_raw(pool, Runs::Service, parameters, runs).await?;
        anyhow::ensure!(rows == plain_rows, "{name}: the index changes no answer");
        let raw = if baselines {
            let (raw50, raw95, raw_rows) =
                time_raw(pool, Runs::Baseline(RAW_PROCESS_SEARCH), parameters, runs).await?;
            anyhow::ensure!(rows == raw_rows, "{name}: answered as the raw rows do");
            p50_p95(raw50, raw95)
        } else {
            "-".to_owned()
        };
        println!(
            "  {name:<40} {:>20} {:>20} {raw:>20} {:>10}",
            p50_p95(p50, p95),
            p50_p95(plain50, plain95),
            rows.len()
        );
    }
    // The history of a pod's process (also among the long-window parts, which
    // `--skip-baselines` leaves out).
    let history = keys()
        .into_iter()
        .find(|key| key.part == Part::ProcessHistory)
        .expect("the history is a long-window part");
    // What the service runs without rollups: hourly buckets from the raw rows.
    let statement = queries::statement(&history, queries::Aggregates::default());
    queries::run(pool, statement, &history).await?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        queries::run(pool, statement, &history).await?;
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "  {:<40} {:>20}",
        format!(
            "process history (pod-1, worker-1), {}",
            statement.source.as_str()
        ),
        format!(
            "{:.1} / {:.1}",
            ms(percentile(&samples, 0.5)),
            ms(percentile(&samples, 0.95))
        )
    );
    Ok(())
}

/// One host's sample of its long-running processes at `at`, as a collector sends it.
fn sample_batch(host: u64, at: DateTime<Utc>) -> Vec<ProcessRow> {
    let start_time = DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
        .expect("a time")
        .with_timezone(&Utc);
    (1..=PROCESSES_PER_HOST)
        .map(|p| ProcessRow {
            timestamp: at,
            host: format!("node-{host}"),
            pid: 1000 + p as i32,
            start_time,
            parent_pid: Some(1),
            process_name: format!("process-{}", p % 12),
            command_line: Some(format!("/usr/bin/process-{p} --serve")),
            username: Some("app".to_owned()),
            state: "S".to_owned(),
            cpu_usage_percent: (p * 3) as f32,
            cpu_peak_percent: (p * 4) as f32,
            memory_usage_mb: 100.0 + p as f64,
            virtual_memory_mb: 8192.0,
            disk_read_bytes: 0,
            disk_write_bytes: 0,
            threads: Some(4),
        })
        .collect()
}

/// The collector's process insert (with the latest-sample upsert, as it runs alone) beside
/// the insert without the upsert, interleaved batch by batch, in rows per second.
async fn compare_ingest(pool: &PgPool, batches: usize) -> anyhow::Result<()> {
    let base = Utc::now() + chrono::Duration::days(1);
    let mut with_latest = Duration::ZERO;
    let mut without_latest = Duration::ZERO;
    for i in 0..batches {
        let host = i as u64 % 20 + 1;
        let at = base + chrono::Duration::seconds(i as i64);
        let batch = Batch {
            processes: sample_batch(host, at),
            ..Batch::default()
        };
        let started = Instant::now();
        ingest::insert_into(pool, Table::Processes, &batch).await?;
        with_latest += started.elapsed();

        let rows = sample_batch(host, at + chrono::Duration::milliseconds(500));
        let started = Instant::now();
        let inserted = ingest::insert_processes_without_latest(pool, &rows).await?;
        without_latest += started.elapsed();
        anyhow::ensure!(inserted == PROCESSES_PER_HOST as i64, "every row inserted");
    }
    let rows = (batches as u64 * PROCESSES_PER_HOST) as f64;
    let with_rate = rows / with_latest.as_secs_f64();
    let without_rate = rows / without_latest.as_secs_f64();
    println!(
        "\n  collector process insert, {batches} batches of {PROCESSES_PER_HOST} rows each way, \
         interleaved:"
    );
    println!("    with the latest-sample upsert    {with_rate:>10.0} rows/s");
    println!("    without it                       {without_rate:>10.0} rows/s");
    println!(
        "    ratio (with / without)           {:>10.2}",
        with_rate / without_rate
    );
    Ok(())
}
