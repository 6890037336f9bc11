//! Load and fault runs of the query service (issue 16), on loopback against a database of
//! the test environment's native PostgreSQL, bounded in time. It prints figures; it asserts
//! only counts (exit code 1 when one is off), never a latency:
//!
//! 1. Hostile input: clients sending requests with random windows, hosts, namespaces,
//!    limits and parts (10,000 distinct requests, 16 at a time, as fast as the service
//!    takes them, for `--hostile-seconds` and until each was sent once, at most five
//!    minutes) beside normal dashboard clients polling the batch, who are measured alone
//!    first as the baseline. Reported: the process's resident memory
//!    before, at its highest and after, against the configured cache bytes plus the stated
//!    overhead (asserted: the growth stays within them); the cache's entries (asserted:
//!    within `max_entries`); the normal clients' p50, p99 and statuses (their 5xx count
//!    asserted 0); the hostile requests' statuses (503 shed, 400 invalid, 200).
//! 2. Database outage: 50 clients polling the batch with a few filter sets; after a warm-up
//!    the database connection is cut (a proxy in this process refuses and drops every
//!    connection) for `--outage-seconds` (60), then restored. Reported and asserted: 5xx count 0 (every filter
//!    set was cached before the cut, and stale-if-error is 300 s) and `/readyz` 200 all
//!    along; reported: latencies during the outage and `database_up`.
//!
//! ```text
//! scripts/bench-query-load                         # both runs, about 7 minutes (debug)
//! scripts/bench-query-load --hostile-seconds 20 --outage-seconds 20
//! ```
//!
//! The service runs in this process (so its resident memory is this process's, the load
//! generators' few megabytes included, which the baseline taken before the hostile run
//! holds) with the operator's cache defaults: fresh 4 s, stale-while-revalidate 30 s,
//! stale-if-error 300 s, 10,000 entries, 64 MiB.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metricsstack_common::access::{AccessPolicy, Authentication};
use metricsstack_common::admin::RenderMetrics as _;
use metricsstack_common::config::QueryServiceConfig;
use metricsstack_common::database::PoolSettings;
use metricsstack_operator::database::MIGRATOR;
use metricsstack_query_service::QueryService;
use metricsstack_query_service::filters::{Part, RawFilters};
use metricsstack_testkit::{CuttableProxy, TestDatabase, seed_dashboard};
use sqlx::{ConnectOptions as _, PgPool};
use tokio::net::TcpListener;

/// Overhead allowed beyond the cache's bytes: per entry (its key, three index entries, the
/// map's slot and the answer's allocation slack) and for the allocator and runtime.
const OVERHEAD_PER_ENTRY: u64 = 2048;
const OVERHEAD_FIXED: u64 = 48 * 1024 * 1024;
const HOSTILE_REQUESTS: usize = 10_000;
const HOSTILE_CONCURRENCY: usize = 16;
const NORMAL_CLIENTS: u64 = 10;
const NORMAL_EVERY: Duration = Duration::from_secs(2);
const OUTAGE_CLIENTS: u64 = 50;
const OUTAGE_EVERY: Duration = Duration::from_secs(2);

/// Seeds 20 hosts of 30 processes and 20 pods, one sample a minute for two hours (72,000
/// process samples), with the testkit's [`seed_dashboard`].
async fn seed(pool: &PgPool) {
    seed_dashboard(pool, 72_000).await.expect("seeding");
}

/// The operator's defaults: the cache's, and a pool of ten connections.
fn config() -> QueryServiceConfig {
    QueryServiceConfig {
        stack: Default::default(),
        authentication: Authentication::None,
        listen_address: "127.0.0.1:0".into(),
        schema: "public".into(),
        database: Default::default(),
        pool: PoolSettings {
            max_connections: 10,
            ..PoolSettings::default()
        },
        fresh_ttl_seconds: 4,
        stale_while_revalidate_seconds: 30,
        stale_if_error_seconds: 300,
        max_entries: 10_000,
        max_bytes: 64 * 1024 * 1024,
    }
}

/// Starts the service on a free loopback port, reading the database at `url`.
/// The service runs on a runtime of its own (two worker threads, as many as a pod with two
/// cores), so that the load generators' tasks do not queue in front of its own.
fn start(url: &str) -> (QueryService, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let service = QueryService::new(&config(), url, AccessPolicy::Open).expect("the service");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the service's runtime");
    let serving = service.clone();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("a Tokio listener");
            serving.run(listener, std::future::pending()).await;
        })
    });
    (service, base)
}

/// This process's resident memory and its highest so far, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .expect("a memory figure")
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A small xorshift generator: the hostile requests need variety, not quality.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One answered request: when it was sent, its status, how long it took.
type Sample = (Instant, u16, Duration);

/// Statuses and latencies of a group of clients.
#[derive(Default)]
struct Tally {
    statuses: std::collections::BTreeMap<u16, u64>,
    latencies: Vec<Duration>,
}

impl Tally {
    /// The tally of the samples sent from `from` until `to`.
    fn of(samples: &[Sample], from: Instant, to: Instant) -> Self {
        let mut tally = Self::default();
        for (at, status, took) in samples {
            if (from..to).contains(at) {
                tally.add(*status, *took);
            }
        }
        tally
    }

    fn add(&mut self, status: u16, took: Duration) {
        *self.statuses.entry(status).or_default() += 1;
        self.latencies.push(took);
    }

    fn server_errors(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| **status >= 500)
            .map(|(_, n)| n)
            .sum()
    }

    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort();
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        self.latencies.get(i).copied().unwrap_or_default()
    }

    fn report(&mut self, what: &str) {
        let (p50, p99, max) = (
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(1.0),
        );
        println!(
            "  {what}: {} requests, statuses {:?}, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.latencies.len(),
            self.statuses,
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0,
        );
    }
}

/// `clients` clients, each sending `body` as a batch every `every` (spread over it) until
/// `stop`: their answers.
async fn poll_batches(
    base: &str,
    clients: u64,
    every: Duration,
    bodies: &[&str],
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let http = reqwest::Client::new();
    let runs = (0..clients).map(|i| {
        let (http, stop) = (http.clone(), stop.clone());
        let url = format!("{base}/api/dashboard/batch");
        let body = bodies[i as usize % bodies.len()].to_owned();
        async move {
            let mut samples = Vec::new();
            let offset = every.mul_f64(i as f64 / clients as f64);
            let mut next = tokio::time::Instant::now() + offset;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next).await;
                next += every;
                let started = Instant::now();
                let status = match http.post(&url).body(body.clone()).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.bytes().await;
                        status
                    }
                    Err(_) => 599,
                };
                samples.push((started, status, started.elapsed()));
            }
            samples
        }
    });
    futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The hostile requests: `HOSTILE_REQUESTS` distinct ones, each a random part with random
/// filters, hosts and namespaces mostly unknown; and how many cache keys they make.
fn hostile_requests() -> (Vec<String>, usize) {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let mut requests = HashSet::new();
    while requests.len() < HOSTILE_REQUESTS {
        let (path, part) = [
            ("/api/host-process-metrics", Part::HostProcessMetrics),
            ("/api/host-overall-metrics", Part::HostOverallMetrics),
            ("/api/dashboard/top-processes", Part::TopProcesses),
            ("/api/vm-metrics", Part::VmMetrics),
        ][random.below(4) as usize];
        let mut query = format!(
            "window={}&limit={}",
            60 + random.below(30 * 86400 - 60),
            1 + random.below(1000)
        );
        if random.below(2) == 0 {
            query.push_str(&format!("&host=node-{}", random.below(5000)));
        }
        if random.below(2) == 0 {
            query.push_str(&format!("&namespace=ns-{}", random.below(5000)));
        }
        if random.below(2) == 0 {
            query.push_str(&format!(
                "&metric={}",
                ["cpu", "memory"][random.below(2) as usize]
            ));
        }
        requests.insert((format!("{path}?{query}"), part, query));
    }
    let keys: HashSet<_> = requests
        .iter()
        .map(|(_, part, query)| {
            RawFilters::from_query(query)
                .and_then(RawFilters::validate)
                .expect("valid filters")
                .key(*part)
        })
        .collect();
    (
        requests.into_iter().map(|(path, _, _)| path).collect(),
        keys.len(),
    )
}

/// Sends every hostile request once, `HOSTILE_CONCURRENCY` at a time, then again from the
/// start until `stop`.
async fn hostile(
    base: &str,
    requests: Arc<Vec<String>>,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let http = reqwest::Client::new();
    let runs = (0..HOSTILE_CONCURRENCY).map(|_| {
        let (http, stop, next, requests) =
            (http.clone(), stop.clone(), next.clone(), requests.clone());
        let base = base.to_owned();
        async move {
            let mut tally = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % requests.len();
                let started = Instant::now();
                let status = match http.get(format!("{base}{}", requests[i])).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.bytes().await;
                        status
                    }
                    Err(_) => 599,
                };
                tally.add(status, started.elapsed());
            }
            tally
        }
    });
    let mut all = Tally::default();
    for tally in futures::future::join_all(runs).await {
        for (status, n) in tally.statuses {
            *all.statuses.entry(status).or_default() += n;
        }
        all.latencies.extend(tally.latencies);
    }
    all
}

/// Samples this process's resident memory every 100 ms until `stop`: the highest seen.
async fn highest_rss(stop: Arc<AtomicBool>) -> u64 {
    let mut highest = 0;
    while !stop.load(Ordering::Relaxed) {
        highest = highest.max(rss().0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    highest
}

/// The hostile-input run; whether its counts are within bounds.
async fn hostile_run(url: &str, seconds: u64) -> bool {
    let (service, base) = start(url);
    let (requests, keys) = hostile_requests();
    let requests = Arc::new(requests);
    let normal_body = [r#"{"window": "1h", "limit": 20}"#];
    // Warm up: the normal clients' answers cached, the runtime's threads started.
    let warm = Arc::new(AtomicBool::new(false));
    let warming = {
        let (base, warm) = (base.clone(), warm.clone());
        tokio::spawn(async move {
            poll_batches(&base, NORMAL_CLIENTS, NORMAL_EVERY, &normal_body, warm).await
        })
    };
    tokio::time::sleep(Duration::from_secs(12)).await;
    warm.store(true, Ordering::Relaxed);
    let warm_samples = warming.await.expect("warm-up");
    // The first rounds fill the cache; the baseline is the rounds after.
    let warmed = warm_samples.iter().map(|s| s.0).min().expect("samples") + NORMAL_EVERY * 2;
    let mut baseline = Tally::of(&warm_samples, warmed, Instant::now());
    let (before, _) = rss();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(highest_rss(stop.clone()));
    let normal = {
        let (base, stop) = (base.clone(), stop.clone());
        tokio::spawn(async move {
            poll_batches(&base, NORMAL_CLIENTS, NORMAL_EVERY, &normal_body, stop).await
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let attack = tokio::spawn({
        let (base, stop, sent) = (base.clone(), stop.clone(), sent.clone());
        async move { hostile(&base, requests, sent, stop).await }
    });
    // At least `seconds`, and until every distinct request was sent (at most five minutes).
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    while sent.load(Ordering::Relaxed) < HOSTILE_REQUESTS as u64
        && started.elapsed() < Duration::from_secs(300)
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let seconds = started.elapsed().as_secs();
    let sent = sent.load(Ordering::Relaxed).min(HOSTILE_REQUESTS as u64);
    stop.store(true, Ordering::Relaxed);
    let normal_samples = normal.await.expect("normal clients");
    let mut normal = Tally::of(&normal_samples, warmed, Instant::now());
    let mut attack = attack.await.expect("hostile clients");
    let highest = sampler.await.expect("sampler");
    let (after, _) = rss();
    let (entries, bytes) = service.cache_usage();

    let policy = config();
    let allowed =
        policy.max_bytes + OVERHEAD_FIXED + OVERHEAD_PER_ENTRY * u64::from(policy.max_entries);
    let grew = highest.saturating_sub(before);
    println!(
        "hostile input, {seconds} s: {sent} of {HOSTILE_REQUESTS} distinct requests sent ({keys} distinct cache keys after normalisation), {HOSTILE_CONCURRENCY} at a time, beside {NORMAL_CLIENTS} dashboards polling every {} s",
        NORMAL_EVERY.as_secs()
    );
    println!(
        "  resident memory: {:.1} MiB before, {:.1} MiB at most (+{:.1} MiB), {:.1} MiB after; allowed growth {:.1} MiB = cache {:.0} MiB + {} entries x {} B + {:.0} MiB",
        mib(before),
        mib(highest),
        mib(grew),
        mib(after),
        mib(allowed),
        mib(policy.max_bytes),
        policy.max_entries,
        OVERHEAD_PER_ENTRY,
        mib(OVERHEAD_FIXED)
    );
    println!(
        "  cache: {entries} answers (bound {}), {:.1} MiB of answers",
        policy.max_entries,
        mib(bytes)
    );
    baseline.report("dashboards alone (baseline, before)");
    normal.report("dashboards beside the hostile clients");
    attack.report("hostile");
    println!(
        "  dashboards' p99 beside the hostile clients / alone: {:.1}",
        normal.percentile(0.99).as_secs_f64() / baseline.percentile(0.99).as_secs_f64()
    );
    let mut within = true;
    if grew > allowed {
        println!("  FAIL: resident memory grew beyond the allowed growth");
        within = false;
    }
    if entries > policy.max_entries as usize {
        println!("  FAIL: the cache holds more answers than its bound");
        within = false;
    }
    if normal.server_errors() > 0 {
        println!("  FAIL: dashboards got 5xx answers");
        within = false;
    }
    within
}

/// The outage run; whether its counts are within bounds.
async fn outage_run(db: &TestDatabase, seconds: u64) -> bool {
    let upstream: SocketAddr = format!("{}:{}", db.options.get_host(), db.options.get_port())
        .parse()
        .expect("the database listens on an IP address");
    let proxy = CuttableProxy::start(upstream).await;
    let url = db
        .options
        .clone()
        .host(&proxy.address.ip().to_string())
        .port(proxy.address.port())
        .to_url_lossy()
        .to_string();
    let (service, base) = start(&url);
    let bodies = [
        r#"{}"#,
        r#"{"window": "15m"}"#,
        r#"{"window": "6h", "metric": "memory"}"#,
        r#"{"host": "node-3"}"#,
        r#"{"namespace": "namespace-1", "limit": 50}"#,
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let clients = {
        let (base, stop) = (base.clone(), stop.clone());
        tokio::spawn(async move {
            poll_batches(&base, OUTAGE_CLIENTS, OUTAGE_EVERY, &bodies, stop).await
        })
    };
    let ready = {
        let (base, stop) = (base.clone(), stop.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut ready, mut not_ready) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                match http.get(format!("{base}/readyz")).send().await {
                    Ok(response) if response.status().is_success() => ready += 1,
                    _ => not_ready += 1,
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (ready, not_ready)
        })
    };
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cut = Instant::now();
    proxy.set_up(false);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let database_up_during = service.metrics().render().contains("database_up 0");
    let restored = Instant::now();
    proxy.set_up(true);
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = clients.await.expect("clients");
    let (ready, not_ready) = ready.await.expect("readiness");
    println!(
        "database outage of {seconds} s under {OUTAGE_CLIENTS} clients polling the batch every {} s ({} filter sets), 10 s before and after:",
        OUTAGE_EVERY.as_secs(),
        bodies.len()
    );
    Tally::of(&samples, started, cut).report("before (from a cold cache)");
    let clients = Tally::of(&samples, cut, Instant::now());
    Tally::of(&samples, cut, restored).report("during the outage");
    Tally::of(&samples, restored, Instant::now()).report("after");
    println!(
        "  /readyz: {ready} x 200, {not_ready} x other; database_up 0 during the outage: {database_up_during}"
    );
    let mut within = true;
    if clients.server_errors() > 0 {
        println!(
            "  FAIL: clients got 5xx answers during or after the outage, their answers cached"
        );
        within = false;
    }
    if not_ready > 0 {
        println!("  FAIL: /readyz was not 200 all along");
        within = false;
    }
    within
}

#[tokio::main]
async fn main() {
    let mut hostile_seconds = 60;
    let mut outage_seconds = 60;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |what: &str| -> u64 {
            args.next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{what} takes a number of seconds"))
        };
        match arg.as_str() {
            "--hostile-seconds" => hostile_seconds = number("--hostile-seconds"),
            "--outage-seconds" => outage_seconds = number("--outage-seconds"),
            // Cargo passes --bench to a bench target.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let db = TestDatabase::create().await;
    let pool = db.pool(2).await;
    MIGRATOR.run(&pool).await.expect("migrations run");
    seed(&pool).await;
    let hostile_within = hostile_run(&db.url(), hostile_seconds).await;
    let outage_within = outage_run(&db, outage_seconds).await;
    drop(pool);
    if !(hostile_within && outage_within) {
        std::process::exit(1);
    }
}
