//! Storage benchmark: collector-shaped rows for N nodes over D days, written through the
//! collector's own batch ingest (`metricsstack_collector::ingest::insert`) into schemas the
//! operator converged (`metricsstack_operator::database::converge`), compressed by running
//! the operator's compression policy jobs (`CALL run_job`, the test server has no background
//! workers), and measured per table: rows, bytes per row before and after compression (heap,
//! indexes and TOAST, from `hypertable_detailed_size`), the ratio, and the projected 90-day
//! size of a fleet under the default MetricsStack's policies, with and without its hourly
//! rollups. The same rows go through two storage settings in one run: the defaults before
//! issue 18 (the baseline) and today's defaults, side by side as ratios.
//!
//!   testenv/run --nodes 0 target/debug/storage_bench [--nodes 2] [--days 2] [--interval 10] [--processes 30]
//!
//! Needs METRICSSTACK_TEST_TIMESCALEDB_URL (the test environment's TimescaleDB: PGlite +
//! TimescaleDB compiled to WASM, one session, its database held in memory). That server
//! bounds the run: its data directory lives in the Node.js process's memory, which does not
//! shrink when a schema is dropped (about 1 GB per million rows written), and PostgreSQL
//! itself in a 32-bit WASM heap (4 GB at most). The defaults write 1.7 million rows per
//! setting, 1.04 million of them process rows; keep a run near three settings of that size.
//! It ingests 7,000 to 11,000 rows per second on a shared 2-core machine.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Duration as ChronoDuration, DurationRound, Utc};
use clap::Parser;
use metricsstack_collector::ingest;
use metricsstack_collector::rows::{Batch, HostRow, ProcessRow, VmRow};
use metricsstack_common::database::{DatabaseTls, PoolSettings, TlsMode};
use metricsstack_operator::crd::{MetricTable, MetricsStackSpec};
use metricsstack_operator::database::{self, DesiredStorage, DesiredTable, JobKind};
use metricsstack_operator::validate::validate;
use metricsstack_testkit::TimescaleSchema;
use sqlx::PgPool;

#[derive(Parser, Debug)]
struct Args {
    /// Nodes whose samples are generated.
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    /// Days of samples per node (the newest sample is 8 days old, past the default 7-day
    /// compression horizon).
    #[arg(long, default_value_t = 2)]
    days: u32,
    /// Seconds between a node's samples.
    #[arg(long, default_value_t = 10)]
    interval: u32,
    /// Processes a collector records per sample (the default CR's top 20 by CPU plus top 20
    /// by memory overlap to about 30).
    #[arg(long, default_value_t = 30)]
    processes: u32,
    /// Rows per ingest batch (the collector's `batchSize`).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Projection: nodes of the fleet.
    #[arg(long, default_value_t = 50)]
    fleet_nodes: u64,
    /// Projection: processes recorded per node and sample.
    #[arg(long, default_value_t = 30)]
    fleet_processes: u64,
    /// Projection: seconds between samples (the default CR's collector interval).
    #[arg(long, default_value_t = 5)]
    fleet_interval: u64,
    /// Projection: rows of `host_process_metrics` the plan's database holds.
    #[arg(long, default_value_t = 15_600_000)]
    plan_rows: u64,
    /// Seed of the generator (the same seed generates the same rows).
    #[arg(long, default_value_t = 18)]
    seed: u64,
    /// Also measure the defaults with one table's compression changed, as
    /// `TABLE/SEGMENT_BY/ORDER_BY` with comma-separated lists, e.g.
    /// `host_process_metrics/host,process_name/timestamp DESC` (repeatable).
    #[arg(long)]
    candidate: Vec<String>,
}

/// The test servers speak no TLS.
const DISABLE_TLS: DatabaseTls = DatabaseTls {
    mode: TlsMode::Disable,
    ca: None,
};
const DAY: i64 = 86_400;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::env::var("METRICSSTACK_TEST_TIMESCALEDB_URL")
        .context("METRICSSTACK_TEST_TIMESCALEDB_URL is not set: run under testenv/run")?;
    let defaults = default_storage()?;
    let mut variants = vec![
        ("before".to_owned(), baseline(&defaults)),
        ("defaults".to_owned(), defaults.clone()),
    ];
    for candidate in &args.candidate {
        variants.push((candidate.clone(), with_candidate(&defaults, candidate)?));
    }
    println!(
        "generating {} nodes x {} days, a sample every {} s, {} processes per sample; \
         batches of {} rows",
        args.nodes, args.days, args.interval, args.processes, args.batch_size
    );
    let mut results = Vec::new();
    for (name, storage) in &variants {
        println!("\n== {name}");
        for table in &storage.tables {
            if let Some(c) = &table.compression {
                println!(
                    "   {}: chunks {} d, segment by [{}], order by [{}]",
                    table.table.table_name(),
                    table.chunk_interval / DAY,
                    c.segment_by.join(", "),
                    c.order_by.join(", ")
                );
            }
        }
        results.push((name.clone(), measure(&args, storage).await?));
    }
    compare(&results);
    report(&args, &defaults, &results[0].1, &results[1].1);
    Ok(())
}

/// The storage of a MetricsStack that sets nothing but its database.
fn default_storage() -> anyhow::Result<DesiredStorage> {
    let spec: MetricsStackSpec =
        serde_json::from_value(serde_json::json!({"database": {"secretRef": {"name": "db"}}}))?;
    Ok(validate(&spec)
        .map_err(|e| anyhow::anyhow!("the default spec is invalid: {e}"))?
        .storage)
}

/// The defaults before issue 18: every table segmented by `host`, ordered by
/// `timestamp DESC`, in 1-day chunks; the rest as today.
fn baseline(defaults: &DesiredStorage) -> DesiredStorage {
    let mut storage = defaults.clone();
    for table in &mut storage.tables {
        table.chunk_interval = DAY;
        if let Some(c) = table.compression.as_mut() {
            c.segment_by = vec!["host".into()];
            c.order_by = vec!["timestamp DESC".into()];
        }
    }
    storage
}

/// The defaults with the compression of one table as `candidate`
/// (`TABLE/SEGMENT_BY/ORDER_BY`) says.
fn with_candidate(defaults: &DesiredStorage, candidate: &str) -> anyhow::Result<DesiredStorage> {
    let [table, segment_by, order_by] = candidate.split('/').collect::<Vec<_>>()[..] else {
        anyhow::bail!("--candidate {candidate:?}: expected TABLE/SEGMENT_BY/ORDER_BY");
    };
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut storage = defaults.clone();
    let spec = storage
        .tables
        .iter_mut()
        .find(|t| t.table.table_name() == table)
        .with_context(|| format!("--candidate {candidate:?}: no table {table}"))?;
    let compression = spec
        .compression
        .as_mut()
        .with_context(|| format!("--candidate {candidate:?}: {table} is not compressed"))?;
    compression.segment_by = list(segment_by);
    compression.order_by = list(order_by);
    Ok(storage)
}

/// Sizes of one relation, in bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Size {
    heap: i64,
    indexes: i64,
    toast: i64,
}

impl Size {
    fn total(self) -> i64 {
        self.heap + self.indexes + self.toast
    }
}

/// What one variant measured for one table.
#[derive(Clone, Debug, Default)]
struct TableResult {
    rows: i64,
    raw: Size,
    compressed: Size,
    index_sizes: Vec<(String, i64)>,
}

/// What one variant measured for one aggregate.
#[derive(Clone, Debug)]
struct AggregateResult {
    rows: i64,
    bytes: i64,
}

/// Everything one variant measured.
#[derive(Clone, Debug, Default)]
struct Measured {
    tables: BTreeMap<MetricTable, TableResult>,
    aggregates: BTreeMap<String, AggregateResult>,
    hours: i64,
}

/// Loads the generated rows into a fresh schema converged to `storage`, measures, compresses
/// with the operator's policy jobs, measures again, and drops the schema.
async fn measure(args: &Args, storage: &DesiredStorage) -> anyhow::Result<Measured> {
    let tsdb = TimescaleSchema::create().await;
    let settings = PoolSettings {
        max_connections: 1,
        idle_timeout_seconds: None,
        max_lifetime_seconds: None,
        ..PoolSettings::default()
    };
    let pool = database::connect(&tsdb.url(), &DISABLE_TLS, &settings, &tsdb.schema).await?;
    let result = measure_in(args, storage, &pool, &tsdb.schema).await;
    pool.close().await;
    result
}

async fn measure_in(
    args: &Args,
    storage: &DesiredStorage,
    pool: &PgPool,
    schema: &str,
) -> anyhow::Result<Measured> {
    database::converge(pool, schema, "bench/storage", storage, None).await?;

    let started = Instant::now();
    let mut generator = Fleet::new(args);
    let mut batch = Batch::default();
    let mut written = 0usize;
    while generator.next_sample(&mut batch) {
        let rows = batch.hosts.len() + batch.processes.len() + batch.vms.len();
        if rows >= args.batch_size {
            ingest::insert(pool, &batch).await?;
            written += rows;
            batch = Batch::default();
        }
    }
    ingest::insert(pool, &batch).await?;
    written += batch.hosts.len() + batch.processes.len() + batch.vms.len();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "   ingested {written} rows in {seconds:.0} s ({:.0} rows/s)",
        written as f64 / seconds
    );

    let mut measured = Measured {
        hours: i64::from(args.days) * 24,
        ..Measured::default()
    };
    for table in &storage.tables {
        let name = table.table.table_name();
        let rows: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {name}")))
                .fetch_one(pool)
                .await?;
        let index_sizes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT indexname::text, \
                    hypertable_index_size(format('%I.%I', schemaname, indexname)::regclass)::int8 \
             FROM pg_indexes WHERE schemaname = $1 AND tablename = $2 ORDER BY 1",
        )
        .bind(schema)
        .bind(name)
        .fetch_all(pool)
        .await?;
        measured.tables.insert(
            table.table,
            TableResult {
                rows,
                raw: detailed_size(pool, schema, name).await?,
                index_sizes,
                ..TableResult::default()
            },
        );
    }

    let state = database::read_state(pool, schema).await?;
    let started = Instant::now();
    for table in &storage.tables {
        let name = table.table.table_name();
        let job = state
            .job(JobKind::Compression, name)
            .with_context(|| format!("the default CR has no compression policy on {name}"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CALL run_job({})", job.id)))
            .execute(pool)
            .await
            .with_context(|| format!("running the compression job of {name}"))?;
        let uncompressed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM timescaledb_information.chunks \
             WHERE hypertable_schema = $1 AND hypertable_name = $2 AND NOT is_compressed",
        )
        .bind(schema)
        .bind(name)
        .fetch_one(pool)
        .await?;
        anyhow::ensure!(
            uncompressed == 0,
            "{uncompressed} chunks of {name} stayed uncompressed after its policy ran"
        );
        let result = measured.tables.get_mut(&table.table).expect("measured");
        result.compressed = detailed_size(pool, schema, name).await?;
    }
    println!(
        "   compressed by the policy jobs in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    for aggregate in &storage.aggregates {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CALL refresh_continuous_aggregate('{}', NULL, NULL)",
            aggregate.name
        )))
        .execute(pool)
        .await
        .with_context(|| format!("refreshing {}", aggregate.name))?;
        let materialized: String = sqlx::query_scalar(
            "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) \
             FROM timescaledb_information.continuous_aggregates \
             WHERE view_schema = $1 AND view_name = $2",
        )
        .bind(schema)
        .bind(&aggregate.name)
        .fetch_one(pool)
        .await?;
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {materialized}"
        )))
        .fetch_one(pool)
        .await?;
        let bytes: i64 = sqlx::query_scalar(
            "SELECT coalesce(total_bytes, 0)::int8 FROM hypertable_detailed_size($1::regclass)",
        )
        .bind(&materialized)
        .fetch_one(pool)
        .await?;
        measured
            .aggregates
            .insert(aggregate.name.clone(), AggregateResult { rows, bytes });
    }
    Ok(measured)
}

/// A hypertable's heap, index and TOAST bytes (its compressed chunks included).
async fn detailed_size(pool: &PgPool, schema: &str, table: &str) -> anyhow::Result<Size> {
    let (heap, indexes, toast): (i64, i64, i64) = sqlx::query_as(
        "SELECT coalesce(table_bytes, 0)::int8, coalesce(index_bytes, 0)::int8, \
                coalesce(toast_bytes, 0)::int8 \
         FROM hypertable_detailed_size(format('%I.%I', $1::text, $2::text)::regclass)",
    )
    .bind(schema)
    .bind(table)
    .fetch_one(pool)
    .await?;
    Ok(Size {
        heap,
        indexes,
        toast,
    })
}

/// The projection's window, in days.
const WINDOW: f64 = 90.0;

/// Days of a table's rows the window holds: its retention, at most the window.
fn kept_days(table: &DesiredTable) -> f64 {
    table
        .retention
        .map_or(WINDOW, |r| (r / DAY) as f64)
        .min(WINDOW)
}

/// Bytes that one day's rows of `table` take, summed over the window: the newest
/// `horizon` days (the table's compression `after` unless given) plus half a chunk
/// uncompressed, the rest compressed, as `measured`.
fn footprint(table: &DesiredTable, measured: &Measured, horizon: Option<f64>) -> f64 {
    let t = &measured.tables[&table.table];
    let days = kept_days(table);
    let uncompressed = match &table.compression {
        None => days,
        Some(c) => (horizon.unwrap_or(c.after as f64 / DAY as f64)
            + table.chunk_interval as f64 / DAY as f64 / 2.0)
            .min(days),
    };
    uncompressed * per_row(t.raw.total(), t.rows)
        + (days - uncompressed) * per_row(t.compressed.total(), t.rows)
}

fn per_row(bytes: i64, rows: i64) -> f64 {
    bytes as f64 / rows.max(1) as f64
}

fn gigabytes(bytes: f64) -> String {
    format!("{:.2} GB", bytes / 1e9)
}

/// Prints each variant's bytes per row beside the first variant's (the baseline).
fn compare(results: &[(String, Measured)]) {
    let (_, baseline) = &results[0];
    println!("\n== compressed bytes per row by variant, beside the baseline (before)");
    for table in baseline.tables.keys() {
        for (name, measured) in results {
            let t = &measured.tables[table];
            let b = &baseline.tables[table];
            let compressed = per_row(t.compressed.total(), t.rows);
            println!(
                "{:<22} {:<60} raw {:>6.1} B/row, compressed {:>6.1} B/row ({:>5.1}x), \
                 {:.2}x smaller than before",
                table.table_name(),
                name,
                per_row(t.raw.total(), t.rows),
                compressed,
                per_row(t.raw.total(), t.rows) / compressed,
                per_row(b.compressed.total(), b.rows) / compressed
            );
        }
    }
}

/// Prints the comparison and the projections.
fn report(args: &Args, defaults: &DesiredStorage, before: &Measured, after: &Measured) {
    println!("\n== per table: bytes per row (heap + indexes + TOAST)");
    println!(
        "{:<22} {:>9} {:>10} | {:>12} {:>6} | {:>12} {:>6} | {:>9}",
        "table",
        "rows",
        "raw B/row",
        "before B/row",
        "ratio",
        "after B/row",
        "ratio",
        "after/before"
    );
    for (table, b) in &before.tables {
        let a = &after.tables[table];
        let raw = per_row(a.raw.total(), a.rows);
        let bc = per_row(b.compressed.total(), b.rows);
        let ac = per_row(a.compressed.total(), a.rows);
        println!(
            "{:<22} {:>9} {:>10.1} | {:>12.1} {:>5.1}x | {:>12.1} {:>5.1}x | {:>8.2}x",
            table.table_name(),
            a.rows,
            raw,
            bc,
            per_row(b.raw.total(), b.rows) / bc,
            ac,
            raw / ac,
            bc / ac
        );
    }
    println!("\n== raw (uncompressed) bytes per row, by part");
    for (table, a) in &after.tables {
        println!(
            "{:<22} heap {:.1}, indexes {:.1}, TOAST {:.1}",
            table.table_name(),
            per_row(a.raw.heap, a.rows),
            per_row(a.raw.indexes, a.rows),
            per_row(a.raw.toast, a.rows)
        );
        for (index, bytes) in &a.index_sizes {
            println!("    {index:<40} {:.1} B/row", per_row(*bytes, a.rows));
        }
    }
    println!("\n== hourly rollups (continuous aggregates, uncompressed)");
    for (name, aggregate) in &after.aggregates {
        println!(
            "{name:<30} {} rows, {:.1} B/row, {:.2} rows per node-hour",
            aggregate.rows,
            per_row(aggregate.bytes, aggregate.rows),
            aggregate.rows as f64 / (f64::from(args.nodes) * after.hours as f64)
        );
    }

    let samples_per_day = (DAY as u64 / args.fleet_interval) as f64;
    let process_rows = after.tables[&MetricTable::HostProcessMetrics].rows.max(1) as f64;
    let rows_per_day = |table: MetricTable| -> f64 {
        let nodes = args.fleet_nodes as f64;
        let processes = args.fleet_processes as f64;
        match table {
            MetricTable::HostOverallMetrics => nodes * samples_per_day,
            MetricTable::HostProcessMetrics => nodes * samples_per_day * processes,
            // Pods' processes in the same proportion as in the generated rows.
            MetricTable::VmProcessMetrics => {
                let share = after.tables[&MetricTable::VmProcessMetrics].rows as f64 / process_rows;
                nodes * samples_per_day * processes * share
            }
        }
    };
    println!(
        "\n== projected {WINDOW}-day size: {} nodes, {} processes per node, a sample every {} s, \
         the default CR's policies (a chunk is compressed once all of it is past the horizon: \
         on average the newest horizon + half a chunk stay uncompressed)",
        args.fleet_nodes, args.fleet_processes, args.fleet_interval
    );
    let raw_total: f64 = defaults
        .tables
        .iter()
        .map(|table| {
            let t = &after.tables[&table.table];
            rows_per_day(table.table) * kept_days(table) * per_row(t.raw.total(), t.rows)
        })
        .sum();
    for table in &defaults.tables {
        let t = &after.tables[&table.table];
        let per_day = rows_per_day(table.table);
        println!(
            "{:<22} {:>7.1} M rows/day, {} days kept: raw {}, before {}, defaults {}",
            table.table.table_name(),
            per_day / 1e6,
            kept_days(table),
            gigabytes(per_day * kept_days(table) * per_row(t.raw.total(), t.rows)),
            gigabytes(per_day * footprint(table, before, None)),
            gigabytes(per_day * footprint(table, after, None)),
        );
    }
    let rollups: f64 = after
        .aggregates
        .values()
        .map(|aggregate| {
            let per_node_hour =
                aggregate.rows as f64 / (f64::from(args.nodes) * after.hours as f64);
            per_node_hour
                * args.fleet_nodes as f64
                * 24.0
                * WINDOW
                * per_row(aggregate.bytes, aggregate.rows)
        })
        .sum();
    let total = |measured: &Measured, horizon: Option<f64>| -> f64 {
        defaults
            .tables
            .iter()
            .map(|table| rows_per_day(table.table) * footprint(table, measured, horizon))
            .sum()
    };
    println!(
        "all tables: raw {}, before {} ({:.1}x smaller), defaults {} ({:.1}x smaller); \
         with the hourly rollups ({} for {WINDOW} days): before {}, defaults {} ({:.1}x)",
        gigabytes(raw_total),
        gigabytes(total(before, None)),
        raw_total / total(before, None),
        gigabytes(total(after, None)),
        raw_total / total(after, None),
        gigabytes(rollups),
        gigabytes(total(before, None) + rollups),
        gigabytes(total(after, None) + rollups),
        raw_total / (total(after, None) + rollups)
    );
    for days in [3.0, 1.0] {
        println!(
            "  the same with compression after {days} d instead: before {} ({:.1}x), \
             defaults {} ({:.1}x); with the rollups {} ({:.1}x)",
            gigabytes(total(before, Some(days))),
            raw_total / total(before, Some(days)),
            gigabytes(total(after, Some(days))),
            raw_total / total(after, Some(days)),
            gigabytes(total(after, Some(days)) + rollups),
            raw_total / (total(after, Some(days)) + rollups)
        );
    }

    let process = MetricTable::HostProcessMetrics;
    let plan = args.plan_rows as f64;
    let b = &before.tables[&process];
    let a = &after.tables[&process];
    println!(
        "\n== the plan's {:.1} M host_process_metrics rows: raw {}, compressed before {}, \
         compressed with the defaults {}",
        plan / 1e6,
        gigabytes(plan * per_row(a.raw.total(), a.rows)),
        gigabytes(plan * per_row(b.compressed.total(), b.rows)),
        gigabytes(plan * per_row(a.compressed.total(), a.rows)),
    );
}

// --- the generator ---------------------------------------------------------------------------

/// A small deterministic generator (SplitMix64): the same seed gives the same rows.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-12);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    /// Exponential with the given mean.
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
    fn hex(&mut self, digits: usize) -> String {
        (0..digits)
            .map(|_| char::from_digit(self.below(16) as u32, 16).expect("a hex digit"))
            .collect()
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A kind of process found on Kubernetes nodes: name, command line, user, typical CPU
/// (percent of a core) and resident memory (MiB), threads, and the pod it runs in, if any.
struct Kind {
    name: &'static str,
    command_line: &'static str,
    user: &'static str,
    cpu: f64,
    memory_mb: f64,
    threads: i32,
    pod: Option<(&'static str, &'static str, &'static str)>,
}

const fn kind(
    name: &'static str,
    command_line: &'static str,
    user: &'static str,
    cpu: f64,
    memory_mb: f64,
    threads: i32,
    pod: Option<(&'static str, &'static str, &'static str)>,
) -> Kind {
    Kind {
        name,
        command_line,
        user,
        cpu,
        memory_mb,
        threads,
        pod,
    }
}

/// Long-running processes, on every node in this order; a node records the first ones (the
/// busiest and largest) and runs the rest of its recorded slots with short-lived work.
const DAEMONS: &[Kind] = &[
    kind(
        "kubelet",
        "/usr/bin/kubelet --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf --config=/var/lib/kubelet/config.yaml --container-runtime-endpoint=unix:///run/containerd/containerd.sock --node-ip={ip}",
        "root",
        4.0,
        120.0,
        18,
        None,
    ),
    kind(
        "containerd",
        "/usr/bin/containerd",
        "root",
        2.0,
        80.0,
        22,
        None,
    ),
    kind(
        "java",
        "java -Xms2g -Xmx4g -XX:+UseG1GC -XX:MaxGCPauseMillis=200 -Dspring.profiles.active=prod -jar /app/orders-service.jar",
        "1000",
        35.0,
        2300.0,
        64,
        Some(("shop", "orders", "orders")),
    ),
    kind(
        "postgres",
        "postgres -D /var/lib/postgresql/data -c config_file=/etc/postgresql/postgresql.conf",
        "postgres",
        1.0,
        400.0,
        1,
        Some(("shop", "db-0", "postgres")),
    ),
    kind(
        "python3",
        "/usr/local/bin/python3 /usr/local/bin/gunicorn app.wsgi:application --workers 4 --bind 0.0.0.0:8000 --timeout 60",
        "1000",
        12.0,
        310.0,
        5,
        Some(("web", "frontend", "gunicorn")),
    ),
    kind(
        "node",
        "node --max-old-space-size=1024 /app/dist/server.js",
        "node",
        8.0,
        420.0,
        11,
        Some(("web", "api-gateway", "gateway")),
    ),
    kind(
        "redis-server",
        "redis-server *:6379",
        "999",
        1.5,
        150.0,
        5,
        Some(("shop", "cache", "redis")),
    ),
    kind(
        "calico-node",
        "calico-node -felix",
        "root",
        2.5,
        90.0,
        14,
        Some(("kube-system", "calico-node", "calico-node")),
    ),
    kind(
        "kube-proxy",
        "/usr/local/bin/kube-proxy --config=/var/lib/kube-proxy/config.conf --hostname-override={host}",
        "root",
        0.6,
        45.0,
        9,
        Some(("kube-system", "kube-proxy", "kube-proxy")),
    ),
    kind(
        "coredns",
        "/coredns -conf /etc/coredns/Corefile",
        "root",
        0.8,
        40.0,
        12,
        Some(("kube-system", "coredns", "coredns")),
    ),
    kind(
        "collector",
        "/collector --config /etc/metricsstack/collector.yaml",
        "65532",
        0.4,
        22.0,
        4,
        Some(("monitoring", "metricsstack-collector", "collector")),
    ),
    kind(
        "prometheus",
        "/bin/prometheus --config.file=/etc/prometheus/prometheus.yml --storage.tsdb.path=/prometheus --storage.tsdb.retention.time=15d",
        "65534",
        6.0,
        1800.0,
        20,
        Some(("monitoring", "prometheus-0", "prometheus")),
    ),
    kind(
        "fluent-bit",
        "/fluent-bit/bin/fluent-bit -c /fluent-bit/etc/fluent-bit.conf",
        "root",
        1.2,
        35.0,
        6,
        Some(("logging", "fluent-bit", "fluent-bit")),
    ),
    kind(
        "nginx",
        "nginx: worker process",
        "101",
        3.0,
        60.0,
        1,
        Some(("ingress", "ingress-nginx-controller", "controller")),
    ),
    kind(
        "envoy",
        "envoy -c /etc/envoy/envoy.yaml --service-cluster front-proxy --log-level warn",
        "101",
        4.0,
        110.0,
        16,
        Some(("web", "front-proxy", "envoy")),
    ),
    kind(
        "systemd-journald",
        "/lib/systemd/systemd-journald",
        "root",
        0.3,
        60.0,
        1,
        None,
    ),
    kind(
        "containerd-shim-runc-v2",
        "/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id {id} -address /run/containerd/containerd.sock",
        "root",
        0.1,
        14.0,
        12,
        None,
    ),
    kind(
        "containerd-shim-runc-v2",
        "/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id {id} -address /run/containerd/containerd.sock",
        "root",
        0.1,
        14.0,
        12,
        None,
    ),
    kind(
        "sshd",
        "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",
        "root",
        0.0,
        8.0,
        1,
        None,
    ),
    kind("systemd", "/sbin/init", "root", 0.1, 12.0, 1, None),
    kind(
        "dockerd",
        "/usr/bin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock",
        "root",
        0.5,
        95.0,
        25,
        None,
    ),
    kind(
        "etcd",
        "etcd --data-dir=/var/lib/etcd --listen-client-urls=https://127.0.0.1:2379",
        "root",
        3.0,
        250.0,
        14,
        Some(("kube-system", "etcd", "etcd")),
    ),
    kind(
        "rsyslogd",
        "/usr/sbin/rsyslogd -n -iNONE",
        "syslog",
        0.1,
        6.0,
        4,
        None,
    ),
    kind(
        "chronyd",
        "/usr/sbin/chronyd -F 1",
        "_chrony",
        0.0,
        4.0,
        1,
        None,
    ),
    kind("cron", "/usr/sbin/cron -f", "root", 0.0, 3.0, 1, None),
];

/// Short-lived work: health checks, jobs, builds, database backends that come and go.
const EPHEMERAL: &[Kind] = &[
    kind(
        "postgres",
        "postgres: app shop 10.0.{n}.{m}({port}) idle",
        "postgres",
        2.0,
        60.0,
        1,
        Some(("shop", "db-0", "postgres")),
    ),
    kind(
        "postgres",
        "postgres: autovacuum worker shop",
        "postgres",
        15.0,
        40.0,
        1,
        Some(("shop", "db-0", "postgres")),
    ),
    kind(
        "python3",
        "python3 /opt/jobs/nightly_report.py --date 2026-11-{n} --output s3://reports/daily/",
        "1000",
        60.0,
        500.0,
        3,
        Some(("batch", "report-{id}", "report")),
    ),
    kind(
        "sh",
        "/bin/sh -c /usr/local/bin/healthcheck.sh --timeout 5",
        "root",
        5.0,
        2.0,
        1,
        None,
    ),
    kind(
        "curl",
        "curl -fsS --max-time 5 http://127.0.0.1:{port}/healthz",
        "root",
        3.0,
        6.0,
        1,
        None,
    ),
    kind(
        "gzip",
        "gzip -9 /var/log/app/app.log.{n}",
        "root",
        95.0,
        3.0,
        1,
        None,
    ),
    kind(
        "cc1plus",
        "/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus -quiet -D_GNU_SOURCE src/engine/worker_{n}.cpp -O2 -o /tmp/cc{id}.s",
        "1000",
        98.0,
        700.0,
        1,
        Some(("ci", "runner-{id}", "build")),
    ),
    kind("runc", "runc init", "root", 20.0, 9.0, 6, None),
    kind(
        "git",
        "git fetch --prune origin +refs/heads/*:refs/remotes/origin/*",
        "1000",
        25.0,
        45.0,
        2,
        Some(("ci", "runner-{id}", "build")),
    ),
    kind(
        "du",
        "du -s /var/lib/containerd/io.containerd.snapshotter.v1.overlayfs",
        "root",
        30.0,
        4.0,
        1,
        None,
    ),
];

/// One recorded process on a node.
struct Process {
    kind: &'static Kind,
    pid: i32,
    parent_pid: i32,
    start_time: DateTime<Utc>,
    command_line: String,
    /// Its pod, with the pod's uid and the container id, filled in once.
    pod: Option<(String, String, String, String, String)>,
    /// When it exits (a daemon restarts then, under a new pid).
    ends: DateTime<Utc>,
    /// Current CPU level, percent of a core (an AR(1) walk around the kind's level).
    cpu_level: f64,
    /// Resident and virtual memory, in 4 KiB pages.
    resident_pages: i64,
    virtual_pages: i64,
    threads: i32,
    ephemeral: bool,
}

/// One node: its recorded processes and the state of its counters.
struct Node {
    host: String,
    ip: String,
    next_pid: i32,
    processes: Vec<Process>,
    cores: usize,
    memory_total: i64,
    memory_used: i64,
    disk_total: i64,
    disk_used: i64,
    uptime: i64,
}

/// The generated fleet, sample by sample in time order.
struct Fleet {
    random: Random,
    nodes: Vec<Node>,
    interval: i64,
    now: DateTime<Utc>,
    end: DateTime<Utc>,
    node: usize,
    recorded: usize,
}

impl Fleet {
    fn new(args: &Args) -> Self {
        let mut random = Random(args.seed);
        // The newest sample is 8 days old: past the default 7-day compression horizon,
        // inside the 90-day retention.
        let end = Utc::now()
            .duration_trunc(ChronoDuration::days(1))
            .expect("a day")
            - ChronoDuration::days(8);
        let start = end - ChronoDuration::days(i64::from(args.days));
        let nodes = (0..args.nodes)
            .map(|i| {
                let cores = [4usize, 8, 16, 32][random.below(4) as usize];
                let memory_total = cores as i64 * 4 * (1 << 30);
                Node {
                    host: format!(
                        "ip-10-0-{}-{}.eu-west-1.compute.internal",
                        i / 200,
                        10 + i % 200
                    ),
                    ip: format!("10.0.{}.{}", i / 200, 10 + i % 200),
                    next_pid: 1000 + random.below(30_000) as i32,
                    processes: Vec::new(),
                    cores,
                    memory_total,
                    memory_used: memory_total / 3,
                    disk_total: 200 << 30,
                    disk_used: (60 << 30) + random.below(40 << 30) as i64,
                    uptime: random.below(30 * DAY as u64) as i64,
                }
            })
            .collect();
        let mut fleet = Self {
            random,
            nodes,
            interval: i64::from(args.interval),
            now: start,
            end,
            node: 0,
            recorded: args.processes as usize,
        };
        for n in 0..fleet.nodes.len() {
            for slot in 0..fleet.recorded {
                let process = fleet.spawn(n, slot, start - ChronoDuration::days(3));
                fleet.nodes[n].processes.push(process);
            }
        }
        fleet
    }

    /// A new process for `slot` of node `n`, started at `at` or (for a daemon) somewhat
    /// before.
    fn spawn(&mut self, n: usize, slot: usize, at: DateTime<Utc>) -> Process {
        let r = &mut self.random;
        let daemons = DAEMONS.len().min(self.recorded * 3 / 4);
        let ephemeral = slot >= daemons;
        let kind: &'static Kind = if ephemeral {
            r.pick(EPHEMERAL)
        } else {
            &DAEMONS[slot]
        };
        let node = &mut self.nodes[n];
        node.next_pid += 1 + r.below(if ephemeral { 400 } else { 40 }) as i32;
        if node.next_pid > 4_194_304 {
            node.next_pid = 300;
        }
        let lifetime = if ephemeral {
            r.exponential(15.0 * 60.0)
        } else {
            r.exponential(6.0 * DAY as f64)
        };
        let id = r.hex(64);
        let fill = |template: &str, r: &mut Random| {
            template
                .replace("{host}", &node.host)
                .replace("{ip}", &node.ip)
                .replace(
                    "{id}",
                    &id[..if template.contains("-id ") { 64 } else { 5 }],
                )
                .replace("{n}", &(1 + r.below(28)).to_string())
                .replace("{m}", &(2 + r.below(250)).to_string())
                .replace("{port}", &(30_000 + r.below(30_000)).to_string())
        };
        let command_line = fill(kind.command_line, r);
        let pod = kind.pod.map(|(namespace, pod, container)| {
            let suffix = format!("{}-{}", r.hex(10), r.hex(5));
            let pod_name = if pod.contains("{id}") || pod.ends_with("-0") {
                fill(pod, r)
            } else {
                format!("{pod}-{suffix}")
            };
            let uid = format!(
                "{}-{}-{}-{}-{}",
                r.hex(8),
                r.hex(4),
                r.hex(4),
                r.hex(4),
                r.hex(12)
            );
            (
                namespace.to_owned(),
                pod_name,
                uid,
                r.hex(64),
                container.to_owned(),
            )
        });
        let resident_pages = (kind.memory_mb * (0.6 + 0.8 * r.unit()) * 256.0) as i64;
        Process {
            kind,
            pid: node.next_pid,
            parent_pid: if kind.pod.is_some() {
                node.next_pid - 3
            } else {
                1
            },
            start_time: if ephemeral {
                at
            } else {
                at - ChronoDuration::seconds(r.below(DAY as u64) as i64)
            }
            .duration_trunc(ChronoDuration::seconds(1))
            .expect("a second"),
            command_line,
            pod,
            ends: at + ChronoDuration::seconds(lifetime as i64 + self.interval),
            cpu_level: kind.cpu * (0.5 + r.unit()),
            resident_pages,
            virtual_pages: resident_pages * (3 + r.below(6) as i64) + 262_144,
            threads: kind.threads,
            ephemeral,
        }
    }

    /// Appends the next node's sample to `batch`; `false` once past the last sample.
    fn next_sample(&mut self, batch: &mut Batch) -> bool {
        if self.now >= self.end {
            return false;
        }
        let n = self.node;
        let timestamp = self.now
            + ChronoDuration::microseconds(self.random.below(40_000) as i64 + 1_000 * n as i64);
        // The day's rhythm: busier in working hours.
        let hour = (timestamp.timestamp() % DAY) as f64 / 3600.0;
        let load = 0.6
            + 0.5
                * ((hour - 8.0) / 24.0 * std::f64::consts::TAU)
                    .sin()
                    .max(-0.4);
        for slot in 0..self.recorded {
            if self.nodes[n].processes[slot].ends <= timestamp {
                let process = self.spawn(n, slot, timestamp);
                self.nodes[n].processes[slot] = process;
            }
        }
        let interval = self.interval as f64;
        let r = &mut self.random;
        let node = &mut self.nodes[n];
        let mut cpu_total = 0.0;
        for p in &mut node.processes {
            let k = p.kind;
            // CPU: an AR(1) walk around the kind's level, scaled by the day's rhythm; idle
            // daemons often used no CPU at all in the interval.
            p.cpu_level = 0.9 * p.cpu_level + 0.1 * k.cpu * (1.0 + 0.6 * r.normal()).max(0.0);
            let cpu = if k.cpu < 1.0 && r.chance(0.6) {
                0.0
            } else {
                // CPU time is counted in clock ticks (10 ms).
                let ticks =
                    (p.cpu_level * load * (1.0 + 0.3 * r.normal()).max(0.0) * interval).round();
                ticks / interval
            };
            let peak = if cpu == 0.0 {
                0.0
            } else {
                (cpu * (1.0 + r.exponential(0.4))).min(100.0 * node.cores as f64)
            };
            cpu_total += cpu;
            // Memory: resident pages move a little in most intervals, virtual rarely.
            if r.chance(if p.ephemeral { 0.8 } else { 0.35 }) {
                let step = (r.normal() * k.memory_mb * 0.4) as i64;
                p.resident_pages = (p.resident_pages + step).max(64);
            }
            if r.chance(0.02) {
                p.virtual_pages += (r.normal() * 2_048.0) as i64;
                p.virtual_pages = p.virtual_pages.max(p.resident_pages);
            }
            if r.chance(0.01) {
                p.threads = (p.threads + if r.chance(0.5) { 1 } else { -1 }).max(1);
            }
            let io = |r: &mut Random, p: f64| {
                if r.chance(p) {
                    4096 * (1 + r.exponential(40.0) as i64)
                } else {
                    0
                }
            };
            let disk_read_bytes = io(r, 0.08);
            let disk_write_bytes = io(r, if k.cpu > 2.0 { 0.4 } else { 0.1 });
            let memory_usage_mb = p.resident_pages as f64 * 4096.0 / 1_048_576.0;
            batch.processes.push(ProcessRow {
                timestamp,
                host: node.host.clone(),
                pid: p.pid,
                start_time: p.start_time,
                parent_pid: Some(p.parent_pid),
                process_name: k.name.to_owned(),
                command_line: Some(p.command_line.clone()),
                username: Some(k.user.to_owned()),
                state: if cpu > 50.0 { "R" } else { "S" }.to_owned(),
                cpu_usage_percent: cpu as f32,
                cpu_peak_percent: peak as f32,
                memory_usage_mb,
                virtual_memory_mb: p.virtual_pages as f64 * 4096.0 / 1_048_576.0,
                disk_read_bytes,
                disk_write_bytes,
                threads: Some(p.threads),
            });
            if let Some((namespace, pod, uid, container_id, container)) = &p.pod {
                batch.vms.push(VmRow {
                    timestamp,
                    host: node.host.clone(),
                    pid: p.pid,
                    start_time: p.start_time,
                    process_name: k.name.to_owned(),
                    command_line: Some(p.command_line.clone()),
                    pod_namespace: Some(namespace.clone()),
                    pod_name: Some(pod.clone()),
                    pod_uid: uid.clone(),
                    container_id: container_id.clone(),
                    container_name: Some(container.clone()),
                    cpu_usage_percent: cpu as f32,
                    cpu_peak_percent: peak as f32,
                    cpu_limit_percent: (k.cpu > 1.0).then(|| (cpu / 2.0) as f32),
                    // Containers with a limit of 2 cores also request one, and 1 GiB of
                    // memory limit with half of it requested.
                    cpu_request_percent: (k.cpu > 1.0).then_some(cpu as f32),
                    memory_limit_percent: (k.cpu > 1.0)
                        .then(|| (memory_usage_mb / 1024.0 * 100.0) as f32),
                    memory_request_percent: (k.cpu > 1.0)
                        .then(|| (memory_usage_mb / 512.0 * 100.0) as f32),
                    memory_usage_mb,
                    disk_read_bytes,
                    disk_write_bytes,
                });
            }
        }
        // The node: its recorded processes plus the rest, spread over its cores.
        let cores = node.cores;
        let busy = ((cpu_total + 20.0 * load) / cores as f64).min(100.0);
        let per_core = (0..cores)
            .map(|_| {
                ((busy * (1.0 + 0.4 * r.normal())).clamp(0.0, 100.0) * 10.0).round() as f32 / 10.0
            })
            .collect();
        node.memory_used = (node.memory_used + (r.normal() * 8.0 * 1_048_576.0) as i64)
            .clamp(node.memory_total / 5, node.memory_total * 9 / 10);
        node.disk_used += r.below(2 * 1_048_576) as i64;
        node.uptime += self.interval;
        let load_1 = busy / 100.0 * cores as f64 * (1.0 + 0.2 * r.normal()).max(0.0);
        batch.hosts.push(HostRow {
            timestamp,
            host: node.host.clone(),
            cpu_usage_percent: busy as f32,
            cpu_per_core_percent: per_core,
            load_1: (load_1 * 100.0).round() / 100.0,
            load_5: (load_1 * 95.0).round() / 100.0,
            load_15: (load_1 * 90.0).round() / 100.0,
            memory_total_bytes: node.memory_total,
            memory_used_bytes: node.memory_used,
            memory_usage_mb: node.memory_used as f64 / 1_048_576.0,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            disk_total_bytes: node.disk_total,
            disk_used_bytes: node.disk_used,
            disk_read_bytes: 4096 * r.below(20_000) as i64,
            disk_write_bytes: 4096 * r.below(60_000) as i64,
            network_rx_bytes: (r.exponential(5e6) * load) as i64,
            network_tx_bytes: (r.exponential(3e6) * load) as i64,
            uptime_seconds: node.uptime,
            process_count: 250 + r.below(120) as i32,
        });
        self.node += 1;
        if self.node == self.nodes.len() {
            self.node = 0;
            self.now += ChronoDuration::seconds(self.interval);
        }
        true
    }
}
