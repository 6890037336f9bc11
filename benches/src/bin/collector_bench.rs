//! Benchmark of the collector beside Debian's `prometheus-node-exporter` and
//! `prometheus-process-exporter`, in one run on this machine at one interval: CPU time per
//! sample and peak RSS of each, as ratios; then ingest throughput of the collector's batch
//! path beside a row-by-row INSERT baseline.
//!
//!   testenv/run --nodes 0 cargo run --release -p metricsstack-benches --bin collector_bench -- [--samples 12] [--interval 5] [--processes 1000] [--rows 200000]
//!
//! Needs `apt-get install prometheus-node-exporter prometheus-process-exporter` (see
//! `scripts/bench-collector`) and METRICSSTACK_TEST_POSTGRES_URL (the test environment's
//! native PostgreSQL).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use clap::Parser;
use metricsstack_collector::ingest;
use metricsstack_collector::rows::{Batch, ProcessRow};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
struct Args {
    /// Samples (and scrapes) measured, after two of warm-up.
    #[arg(long, default_value_t = 12)]
    samples: u32,
    /// Seconds between samples and between scrapes.
    #[arg(long, default_value_t = 5)]
    interval: u64,
    /// Processes on the machine during the run (idle `sleep` processes are added to reach it).
    #[arg(long, default_value_t = 1000)]
    processes: usize,
    /// Rows written in the ingest comparison.
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
}

/// Child processes killed when the benchmark ends, however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin: PgConnectOptions = std::env::var("METRICSSTACK_TEST_POSTGRES_URL")
        .context("METRICSSTACK_TEST_POSTGRES_URL is not set: run under testenv/run")?
        .parse()?;
    let database = format!("collector_bench_{}", std::process::id());
    let mut conn = admin.connect().await?;
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .await?;
    conn.close().await?;
    let options = admin.clone().database(&database);
    let result = run(&args, &options).await;
    let mut conn = admin.connect().await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {database} WITH (FORCE)"
    )))
    .await?;
    result
}

async fn run(args: &Args, options: &PgConnectOptions) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.clone())
        .await?;
    sqlx::migrate!("../migrations").run(&pool).await?;
    for tool in ["prometheus-node-exporter", "prometheus-process-exporter"] {
        if which(tool).is_none() {
            bail!(
                "{tool} is not installed: apt-get install prometheus-node-exporter prometheus-process-exporter"
            );
        }
    }
    let work = std::env::temp_dir().join(format!("collector-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    let sleepers = fill_process_table(args.processes)?;
    let processes = count_processes();
    println!(
        "processes on the machine: {processes}; interval {} s; {} samples",
        args.interval, args.samples
    );

    let ports = free_ports(3)?;
    let mut children = Children(Vec::new());
    let collector = start_collector(&work, options, args.interval, ports[0])?;
    children.0.push(collector);
    children.0.push(
        Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{}", ports[1]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let process_config = work.join("process-exporter.yaml");
    // Every process, grouped by name: process-exporter's usual "all processes" setup.
    std::fs::write(
        &process_config,
        "process_names:\n  - name: \"{{.Comm}}\"\n    cmdline: ['.+']\n",
    )?;
    children.0.push(
        Command::new("prometheus-process-exporter")
            .arg("-web.listen-address")
            .arg(format!("127.0.0.1:{}", ports[2]))
            .arg("-config.path")
            .arg(&process_config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let pids: Vec<u32> = children.0.iter().map(Child::id).collect();
    let names = [
        "collector (writes to PostgreSQL)",
        "node_exporter (scraped)",
        "process-exporter (scraped)",
    ];

    let interval = Duration::from_secs(args.interval);
    let mut next = Instant::now() + interval;
    let mut start_cpu = Vec::new();
    for round in 0..(args.samples + 2) {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        for port in &ports[1..] {
            scrape(*port)
                .await
                .with_context(|| format!("scraping 127.0.0.1:{port}"))?;
        }
        if round == 1 {
            // Warm-up done (first sample and first scrapes); measure from here.
            start_cpu = pids
                .iter()
                .map(|pid| cpu_ms(*pid))
                .collect::<Result<_, _>>()?;
        }
    }
    // Let the collector finish the last sample's write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end_cpu: Vec<u64> = pids
        .iter()
        .map(|pid| cpu_ms(*pid))
        .collect::<Result<_, _>>()?;
    let peak_rss: Vec<u64> = pids
        .iter()
        .map(|pid| peak_rss_kib(*pid))
        .collect::<Result<_, _>>()?;
    let samples_written: i64 = sqlx::query_scalar("SELECT count(*) FROM host_overall_metrics")
        .fetch_one(&pool)
        .await?;
    drop(children);
    drop(sleepers);

    println!(
        "\n{:<34} {:>16} {:>14} {:>12} {:>12}",
        "", "CPU ms/sample", "peak RSS MiB", "CPU ratio", "RSS ratio"
    );
    let per_sample: Vec<f64> = start_cpu
        .iter()
        .zip(&end_cpu)
        .map(|(s, e)| (e - s) as f64 / f64::from(args.samples))
        .collect();
    for i in 0..3 {
        println!(
            "{:<34} {:>16.1} {:>14.1} {:>12.2} {:>12.2}",
            names[i],
            per_sample[i],
            peak_rss[i] as f64 / 1024.0,
            per_sample[i] / per_sample[0].max(0.001),
            peak_rss[i] as f64 / peak_rss[0] as f64
        );
    }
    println!(
        "(ratios are each tool / the collector; the collector wrote {samples_written} host samples)"
    );

    ingest_comparison(&pool, args.rows).await?;
    std::fs::remove_dir_all(&work).ok();
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|path| path.is_file())
    })
}

fn count_processes() -> usize {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0)
}

/// Starts idle processes until the machine runs `target` processes.
fn fill_process_table(target: usize) -> anyhow::Result<Children> {
    let mut sleepers = Children(Vec::new());
    let missing = target.saturating_sub(count_processes());
    for _ in 0..missing {
        sleepers.0.push(Command::new("sleep").arg("3600").spawn()?);
    }
    Ok(sleepers)
}

fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

fn start_collector(
    work: &Path,
    options: &PgConnectOptions,
    interval: u64,
    port: u16,
) -> anyhow::Result<Child> {
    let binary = std::env::current_exe()?.with_file_name("collector");
    if !binary.is_file() {
        bail!(
            "{} not found: build it with cargo build --release -p metricsstack-collector",
            binary.display()
        );
    }
    let config = work.join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "intervalSeconds: {interval}\npodAttribution: false\nspoolDir: {}\nlistenAddress: 127.0.0.1:{port}\n",
            work.join("spool").display()
        ),
    )?;
    Ok(Command::new(binary)
        .arg("--config")
        .arg(&config)
        .env("DATABASE_URL", options.to_url_lossy().as_str())
        .env("RUST_LOG", "warn")
        .spawn()?)
}

/// One Prometheus-style scrape: GET /metrics, read the whole answer.
async fn scrape(port: u16) -> anyhow::Result<usize> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await?;
    if !body.starts_with(b"HTTP/1.1 200") {
        bail!(
            "unexpected answer: {}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
    }
    Ok(body.len())
}

/// User plus system CPU time of a process, in milliseconds (clock ticks of 10 ms).
fn cpu_ms(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat[stat.rfind(')').context("stat format")? + 2..]
        .split(' ')
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks * 10)
}

/// The highest resident set size a process reached, in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?)
}

fn synthetic_rows(n: usize) -> Vec<ProcessRow> {
    let now = Utc::now();
    (0..n)
        .map(|i| ProcessRow {
            timestamp: now - chrono::Duration::seconds((i / 100) as i64),
            host: format!("node-{}", i % 7),
            pid: (i % 100) as i32 + 1,
            start_time: now - chrono::Duration::days(1),
            parent_pid: Some(1),
            process_name: format!("process-{}", i % 100),
            command_line: Some(format!("/usr/bin/process-{} --flag", i % 100)),
            username: Some("root".into()),
            state: "Sleeping".into(),
            cpu_usage_percent: (i % 100) as f32,
            cpu_peak_percent: (i % 100) as f32,
            memory_usage_mb: 100.0,
            virtual_memory_mb: 200.0,
            disk_read_bytes: 0,
            disk_write_bytes: 0,
            threads: None,
        })
        .collect()
}

async fn ingest_comparison(pool: &PgPool, rows: usize) -> anyhow::Result<()> {
    let data = synthetic_rows(rows);
    let mut results = BTreeMap::new();

    sqlx::query("TRUNCATE host_process_metrics")
        .execute(pool)
        .await?;
    let started = Instant::now();
    for chunk in data.chunks(1000) {
        let batch = Batch {
            processes: chunk.to_vec(),
            ..Batch::default()
        };
        ingest::insert(pool, &batch).await?;
    }
    results.insert(
        "batch (UNNEST, 1000 rows per statement)",
        rows as f64 / started.elapsed().as_secs_f64(),
    );

    sqlx::query("TRUNCATE host_process_metrics")
        .execute(pool)
        .await?;
    let started = Instant::now();
    for row in &data {
        sqlx::query(
            "INSERT INTO host_process_metrics (\"timestamp\", host, pid, start_time, parent_pid, \
             process_name, command_line, username, state, cpu_usage_percent, cpu_peak_percent, \
             memory_usage_mb, virtual_memory_mb, disk_read_bytes, disk_write_bytes, threads) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT DO NOTHING",
        )
        .bind(row.timestamp)
        .bind(&row.host)
        .bind(row.pid)
        .bind(row.start_time)
        .bind(row.parent_pid)
        .bind(&row.process_name)
        .bind(&row.command_line)
        .bind(&row.username)
        .bind(&row.state)
        .bind(row.cpu_usage_percent)
        .bind(row.cpu_peak_percent)
        .bind(row.memory_usage_mb)
        .bind(row.virtual_memory_mb)
        .bind(row.disk_read_bytes)
        .bind(row.disk_write_bytes)
        .bind(row.threads)
        .execute(pool)
        .await?;
    }
    results.insert(
        "row by row (one INSERT per row)",
        rows as f64 / started.elapsed().as_secs_f64(),
    );

    let batch = results["batch (UNNEST, 1000 rows per statement)"];
    println!("\ningest into native PostgreSQL, {rows} rows:");
    for (path, rate) in &results {
        println!(
            "  {path:<42} {rate:>12.0} rows/s   ratio to batch {:.2}",
            rate / batch
        );
    }
    Ok(())
}
