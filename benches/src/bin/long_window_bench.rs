//! Uncached latency of the query service's long-window parts (top processes, host overall
//! metrics, pods, a pod's processes) over a 30-day window, each statement run straight
//! against the database (no HTTP, no answer cache), reported side by side as ratios:
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

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use metricsstack_common::database::{DatabaseTls, PoolSettings, TlsMode};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_operator::database::{self, MIGRATOR};
use metricsstack_operator::validate::validate;
use metricsstack_query_service::filters::{Part, PartKey, TopMetric};
use metricsstack_query_service::queries::{self, Source, Statement};
use metricsstack_testkit::{TestDatabase, TimescaleSchema};
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
}

const WINDOW_DAYS: u32 = 30;
const PROCESSES_PER_HOST: u64 = 30;
const PROCESSES_PER_POD: u64 = 3;

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
        compare(&pool, Source::HourlyFromRaw, Source::Raw, args.runs).await?;
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
                  TIMESTAMPTZ '2024-01-01 00:00:00+00', 1, 'process-' || (p % 12),
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
    .execute(pool)
    .await
    .context("seeding host_process_metrics")?;
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

/// The four long-window parts over 30 days, as the dashboard asks for them (20 rows; the
/// pods of every namespace; the processes of `pod-1`).
fn keys() -> Vec<PartKey> {
    [
        Part::TopProcesses,
        Part::HostOverallMetrics,
        Part::VmMetrics,
        Part::PodProcesses,
    ]
    .into_iter()
    .map(|part| PartKey {
        part,
        limit: matches!(part, Part::TopProcesses | Part::VmMetrics).then_some(20),
        metric: (part == Part::TopProcesses).then_some(TopMetric::Cpu),
        window_seconds: WINDOW_DAYS * 86_400,
        host: None,
        namespace: (part == Part::PodProcesses).then(|| "namespace-1".to_owned()),
        search: None,
        pod: (part == Part::PodProcesses).then(|| "pod-1".to_owned()),
        container: None,
        command: None,
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
