//! Benchmark of the query service on one seeded native PostgreSQL database, reported side by
//! side as ratios:
//!
//! 1. one batch request against the four individual requests (uncached: latency and
//!    database queries);
//! 2. cached against uncached batch requests (throughput, p50, p95, p99);
//! 3. database queries per minute with 1, 10 and 100 clients polling the dashboard.
//!
//! Run it in the test environment (it creates a database there and drops it afterwards),
//! with `scripts/bench-query`, which passes its arguments on:
//!
//! ```text
//! scripts/bench-query                  # testenv/run --nodes 0 cargo bench ... --bench query_bench
//! scripts/bench-query --full --long
//! ```
//!
//! By default it seeds 1,000,000 `host_process_metrics` rows (plus a thirtieth of that in
//! `host_overall_metrics` and a tenth in `vm_process_metrics`; about 15 s on 2 cores), and
//! takes about 3 minutes in all. `--full` seeds the plan's 15,600,000 rows (about 4
//! minutes of seeding: one `INSERT ... SELECT` over `generate_series` per table, into the
//! migrated, indexed, logged tables), `--rows N` any number; `--long` polls every 5 s for
//! 60 s per client count instead of every 2 s for 30 s. `--database-url URL` benchmarks an
//! existing database (seeded only if its `host_process_metrics` is empty) instead of a
//! fresh one, so that one seeding serves several runs.
//!
//! The load generator is a minimal HTTP/1.1 keep-alive client on loopback, in this process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use metricsstack_common::access::{AccessPolicy, Authentication};
use metricsstack_common::admin::RenderMetrics as _;
use metricsstack_common::config::QueryServiceConfig;
use metricsstack_common::database::PoolSettings;
use metricsstack_operator::database::MIGRATOR;
use metricsstack_query_service::QueryService;
use metricsstack_testkit::{FILL_LATEST_SAMPLES, TestDatabase};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The query service benchmark.
#[derive(Parser, Debug)]
struct Args {
    /// Rows of `host_process_metrics` to seed.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Seed the plan's 15.6 million rows (takes several minutes).
    #[arg(long)]
    full: bool,
    /// Poll every 5 s for 60 s per client count (default: every 2 s for 30 s).
    #[arg(long)]
    long: bool,
    /// Benchmark this database instead of a fresh one on the test environment.
    #[arg(long)]
    database_url: Option<String>,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Connections hammering the cached service.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Set by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const HOSTS: u64 = 20;
const PROCESSES_PER_HOST: u64 = 30;
const PODS: u64 = 20;
const PROCESSES_PER_POD: u64 = 3;
/// The dashboard's request: the last hour, 20 rows per part.
const DASHBOARD: &str = r#"{"window":"1h","limit":20,"metric":"cpu"}"#;
const DASHBOARD_QUERY: &str = "window=1h&limit=20&metric=cpu";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rows = if args.full { 15_600_000 } else { args.rows };
    let (_database, url) = match &args.database_url {
        Some(url) => (None, url.clone()),
        None => {
            let db = TestDatabase::create().await;
            let url = db.url();
            (Some(db), url)
        }
    };
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    MIGRATOR.run(&pool).await?;
    seed(&pool, rows).await?;

    println!("\n== 1. one batch request vs the four individual requests (uncached) ==");
    let uncached = Server::start(&url, 0, 0, 0).await;
    let mut batch_ms = Vec::new();
    let mut sequential_ms = Vec::new();
    let mut parallel_ms = Vec::new();
    let mut conn = uncached.connect().await?;
    let mut parallel: Vec<Conn> = Vec::new();
    for _ in 0..4 {
        parallel.push(uncached.connect().await?);
    }
    let individual: Vec<Vec<u8>> = [
        "/api/host-process-metrics",
        "/api/host-overall-metrics",
        "/api/dashboard/top-processes",
        "/api/vm-metrics",
    ]
    .iter()
    .map(|path| get_request(&format!("{path}?{DASHBOARD_QUERY}")))
    .collect();
    let batch = post_request(DASHBOARD);
    // Warm the connection pool and PostgreSQL's caches.
    for _ in 0..3 {
        conn.send(&batch).await?;
    }
    const ROUNDS: usize = 100;
    let before = uncached.queries();
    for _ in 0..ROUNDS {
        batch_ms.push(conn.timed(&batch).await?);
    }
    let batch_queries = uncached.queries() - before;
    let before = uncached.queries();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for request in &individual {
            conn.send(request).await?;
        }
        sequential_ms.push(ms(started.elapsed()));
    }
    let individual_queries = uncached.queries() - before;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        futures::future::try_join_all(
            parallel
                .iter_mut()
                .zip(&individual)
                .map(|(conn, request)| conn.send(request)),
        )
        .await?;
        parallel_ms.push(ms(started.elapsed()));
    }
    let (b, s, p) = (
        Stats::of(batch_ms),
        Stats::of(sequential_ms),
        Stats::of(parallel_ms),
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>12}",
        "", "p50 ms", "p95 ms", "p99 ms", "DB queries"
    );
    println!(
        "{:<44} {:>9.2} {:>9.2} {:>9.2} {:>12.1}",
        "batch (1 request)",
        b.p50,
        b.p95,
        b.p99,
        batch_queries as f64 / ROUNDS as f64
    );
    println!(
        "{:<44} {:>9.2} {:>9.2} {:>9.2} {:>12.1}",
        "4 individual requests, one after another",
        s.p50,
        s.p95,
        s.p99,
        individual_queries as f64 / ROUNDS as f64
    );
    println!(
        "{:<44} {:>9.2} {:>9.2} {:>9.2} {:>12}",
        "4 individual requests, in parallel", p.p50, p.p95, p.p99, "4.0"
    );
    println!(
        "ratio batch / sequential p50: {:.2}; batch / parallel p50: {:.2}; requests 1 vs 4",
        b.p50 / s.p50,
        b.p50 / p.p50
    );

    println!("\n== 2. cached vs uncached batch requests ==");
    let cached = Server::start(&url, 4, 30, 300).await;
    cached.connect().await?.send(&batch).await?;
    let hits = load(
        &cached,
        args.connections,
        Duration::from_secs(args.seconds),
        |_| batch.clone(),
    )
    .await?;
    let cached_queries = cached.queries();
    // Uncached: four connections, each request with its own limit so that none coalesce.
    let before = uncached.queries();
    let misses = load(&uncached, 4, Duration::from_secs(args.seconds), |i| {
        post_request(&format!(
            r#"{{"window":"1h","limit":{},"metric":"cpu"}}"#,
            i % 1000 + 1
        ))
    })
    .await?;
    let uncached_queries = uncached.queries() - before;
    println!(
        "{:<30} {:>12} {:>9} {:>9} {:>9} {:>12}",
        "", "requests/s", "p50 ms", "p95 ms", "p99 ms", "DB queries"
    );
    for (name, run, queries) in [
        (
            format!("cached ({} connections)", args.connections),
            &hits,
            cached_queries,
        ),
        (
            "uncached (4 connections)".to_owned(),
            &misses,
            uncached_queries,
        ),
    ] {
        println!(
            "{:<30} {:>12.0} {:>9.3} {:>9.3} {:>9.3} {:>12}",
            name, run.rate, run.stats.p50, run.stats.p95, run.stats.p99, queries
        );
    }
    println!(
        "ratio cached / uncached: throughput x{:.0}, p50 {:.4}, p99 {:.4}",
        hits.rate / misses.rate,
        hits.stats.p50 / misses.stats.p50,
        hits.stats.p99 / misses.stats.p99
    );

    let (interval, duration) = if args.long {
        (Duration::from_secs(5), Duration::from_secs(60))
    } else {
        (Duration::from_secs(2), Duration::from_secs(30))
    };
    println!(
        "\n== 3. database queries per minute, clients polling the batch every {}s for {}s ==",
        interval.as_secs(),
        duration.as_secs()
    );
    println!(
        "{:<10} {:>10} {:>14} {:>16} {:>18}",
        "clients", "requests", "DB queries", "queries/minute", "vs 1 client"
    );
    let mut per_minute = Vec::new();
    for clients in [1usize, 10, 100] {
        // A fresh service per run, with the default cache settings: a cold cache.
        let server = Server::start(&url, 4, 30, 300).await;
        let (requests, queries) = poll(&server, clients, interval, duration).await?;
        // Stopped, so that its refreshes do not load the database during the next run.
        server.stop().await;
        let rate = queries as f64 * 60.0 / duration.as_secs_f64();
        per_minute.push(rate);
        println!(
            "{:<10} {:>10} {:>14} {:>16.1} {:>17.2}x",
            clients,
            requests,
            queries,
            rate,
            rate / per_minute[0]
        );
    }

    println!("\n== targets ==");
    println!(
        "cache hits >= 35000 requests/s with p99 < 10 ms: {:.0}/s, p99 {:.3} ms",
        hits.rate, hits.stats.p99
    );
    println!(
        "uncached batch p95 < 100 ms at {rows} rows: {:.2} ms (sequential), {:.2} ms (4 concurrent)",
        b.p95, misses.stats.p95
    );
    let (least, most) = per_minute
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, m), r| (l.min(*r), m.max(*r)));
    println!(
        "database queries per minute the same for 1, 10 and 100 clients: {} (most / least {:.3})",
        per_minute
            .iter()
            .map(|r| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        most / least
    );
    Ok(())
}

/// Seeds `rows` process samples, one a minute per series, ending now; skipped when the
/// table already holds rows.
async fn seed(pool: &PgPool, rows: u64) -> anyhow::Result<()> {
    let (existing,): (i64,) = sqlx::query_as("SELECT count(*) FROM host_process_metrics")
        .fetch_one(pool)
        .await?;
    if existing > 0 {
        println!("database already holds {existing} host_process_metrics rows: not seeding");
        return Ok(());
    }
    let minutes = i64::try_from(rows.div_ceil(HOSTS * PROCESSES_PER_HOST))?;
    let started = Instant::now();
    println!(
        "seeding {rows} host_process_metrics rows ({HOSTS} hosts x {PROCESSES_PER_HOST} \
         processes, one sample a minute over {:.1} days) ...",
        minutes as f64 / 1440.0
    );
    sqlx::query(
        r#"INSERT INTO host_process_metrics ("timestamp", host, pid, start_time, parent_pid,
               process_name, command_line, username, state, cpu_usage_percent,
               cpu_peak_percent, memory_usage_mb, virtual_memory_mb, disk_read_bytes,
               disk_write_bytes, threads)
           SELECT now() - make_interval(mins => s::int), 'node-' || h, 1000 + p,
                  TIMESTAMPTZ '2024-01-01 00:00:00+00', 1, 'process-' || (p % 12),
                  '/usr/bin/process-' || p || ' --serve', 'app', 'S',
                  ((h * 7919 + p * 104729 + s * 31) % 1000)::real / 10,
                  ((h * 7919 + p * 104729 + s * 37) % 1000)::real / 8,
                  ((h * 31 + p * 977 + s) % 4096)::float8 + 0.5, 8192,
                  s * 4096, s * 1024, 1 + p % 16
           FROM generate_series(0, $1 - 1) AS s, generate_series(1, $2) AS h,
                generate_series(1, $3) AS p
           LIMIT $4"#,
    )
    .bind(minutes)
    .bind(i64::try_from(HOSTS)?)
    .bind(i64::try_from(PROCESSES_PER_HOST)?)
    .bind(i64::try_from(rows)?)
    .execute(pool)
    .await?;
    println!(
        "  host_process_metrics seeded after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    sqlx::query(
        r#"INSERT INTO host_overall_metrics ("timestamp", host, cpu_usage_percent,
               cpu_per_core_percent, load_1, load_5, load_15, memory_total_bytes,
               memory_used_bytes, memory_usage_mb, swap_total_bytes, swap_used_bytes,
               disk_total_bytes, disk_used_bytes, disk_read_bytes, disk_write_bytes,
               network_rx_bytes, network_tx_bytes, uptime_seconds, process_count)
           SELECT now() - make_interval(mins => s::int), 'node-' || h,
                  ((h * 13 + s * 7) % 1000)::real / 10, ARRAY[10, 20]::real[],
                  ((h + s) % 400)::float8 / 100, 1, 1, 68719476736, 34359738368,
                  ((h * 131 + s) % 32768)::float8, 0, 0, 0, 0, 0, 0, 0, 0, s * 60, 300
           FROM generate_series(0, $1 - 1) AS s, generate_series(1, $2) AS h"#,
    )
    .bind(minutes)
    .bind(i64::try_from(HOSTS)?)
    .execute(pool)
    .await?;
    println!(
        "  host_overall_metrics seeded after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    sqlx::query(
        r#"INSERT INTO vm_process_metrics ("timestamp", host, pid, start_time, process_name,
               pod_namespace, pod_name, pod_uid, container_id, container_name,
               cpu_usage_percent, cpu_peak_percent, memory_usage_mb, disk_read_bytes,
               disk_write_bytes)
           SELECT now() - make_interval(mins => s::int), 'node-' || (pd % $2 + 1),
                  5000 + pd * 10 + pr, TIMESTAMPTZ '2024-01-01 00:00:00+00', 'worker-' || pr,
                  'namespace-' || (pd % 4), 'pod-' || pd, 'uid-' || pd, 'cid-' || pd, 'main',
                  ((pd * 17 + pr * 5 + s) % 400)::real / 4, 100,
                  ((pd * 100 + pr * 10 + s) % 2048)::float8, 0, 0
           FROM generate_series(0, $1 - 1) AS s, generate_series(1, $3) AS pd,
                generate_series(1, $4) AS pr"#,
    )
    .bind(minutes)
    .bind(i64::try_from(HOSTS)?)
    .bind(i64::try_from(PODS)?)
    .bind(i64::try_from(PROCESSES_PER_POD)?)
    .execute(pool)
    .await?;
    println!(
        "  vm_process_metrics seeded after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    sqlx::raw_sql(FILL_LATEST_SAMPLES).execute(pool).await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    println!(
        "seeded and analysed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A query service on a free loopback port.
struct Server {
    address: std::net::SocketAddr,
    service: QueryService,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(
        url: &str,
        fresh: u64,
        stale_while_revalidate: u64,
        stale_if_error: u64,
    ) -> Self {
        let config = QueryServiceConfig {
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
            max_entries: 10_000,
            max_bytes: 256 * 1024 * 1024,
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding loopback");
        let address = listener.local_addr().expect("local address");
        let service =
            QueryService::new(&config, url, AccessPolicy::Open).expect("the service starts");
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service.clone().run(listener, async {
            let _ = stop.await;
        }));
        Self {
            address,
            service,
            shutdown,
            task,
        }
    }

    /// Stops serving and drops the service, which ends its refreshes.
    async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }

    async fn connect(&self) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(self.address).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// Database queries the service has run so far.
    fn queries(&self) -> u64 {
        self.service
            .metrics()
            .render()
            .lines()
            .filter(|l| l.starts_with("metricsstack_query_service_database_queries_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

fn get_request(path_and_query: &str) -> Vec<u8> {
    format!("GET {path_and_query} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes()
}

fn post_request(body: &str) -> Vec<u8> {
    format!(
        "POST /api/dashboard/batch HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: BufReader<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl Conn {
    /// Sends a request and reads the whole response; fails unless it is 200.
    async fn send(&mut self, request: &[u8]) -> std::io::Result<()> {
        self.stream.get_mut().write_all(request).await?;
        self.line.clear();
        self.stream.read_line(&mut self.line).await?;
        if !self.line.starts_with("HTTP/1.1 200") {
            return Err(std::io::Error::other(format!(
                "unexpected answer: {}",
                self.line.trim_end()
            )));
        }
        let mut length = 0;
        loop {
            self.line.clear();
            self.stream.read_line(&mut self.line).await?;
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().map_err(std::io::Error::other)?;
            }
        }
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await?;
        Ok(())
    }

    async fn timed(&mut self, request: &[u8]) -> std::io::Result<f64> {
        let started = Instant::now();
        self.send(request).await?;
        Ok(ms(started.elapsed()))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Latency percentiles in milliseconds.
struct Stats {
    p50: f64,
    p95: f64,
    p99: f64,
}

impl Stats {
    fn of(mut samples: Vec<f64>) -> Self {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
        }
    }
}

/// Throughput and latency of a closed-loop run.
struct Run {
    rate: f64,
    stats: Stats,
}

/// `connections` connections each sending requests back to back for `duration`; the
/// request for the i-th send on a connection is `request(i)`.
async fn load(
    server: &Server,
    connections: usize,
    duration: Duration,
    request: impl Fn(usize) -> Vec<u8>,
) -> anyhow::Result<Run> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let mut conn = server.connect().await?;
        let stop = stop.clone();
        // Distinct requests per connection, prepared before the clock starts.
        let requests: Vec<Vec<u8>> = (0..64).map(|i| request(c * 64 + i)).collect();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                latencies.push(conn.timed(&requests[i % requests.len()]).await?);
                i += 1;
            }
            Ok::<_, std::io::Error>(latencies)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Run {
        rate: all.len() as f64 / elapsed,
        stats: Stats::of(all),
    })
}

/// `clients` clients each requesting the dashboard every `interval` (starting at spread
/// offsets) for `duration`; the requests sent and the database queries run within
/// `duration` (counted at its end, whatever the clients still do).
async fn poll(
    server: &Server,
    clients: usize,
    interval: Duration,
    duration: Duration,
) -> anyhow::Result<(u64, u64)> {
    let before = server.queries();
    let started = tokio::time::Instant::now();
    let end = started + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut conn = server.connect().await?;
        let request = post_request(DASHBOARD);
        let mut next = started + interval.mul_f64(c as f64 / clients as f64);
        tasks.push(tokio::spawn(async move {
            let mut requests = 0u64;
            while next < end {
                tokio::time::sleep_until(next).await;
                conn.send(&request).await?;
                requests += 1;
                next += interval;
            }
            Ok::<_, std::io::Error>(requests)
        }));
    }
    tokio::time::sleep_until(end).await;
    let queries = server.queries() - before;
    let mut requests = 0;
    for task in tasks {
        requests += task.await??;
    }
    Ok((requests, queries))
}
