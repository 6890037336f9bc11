//! The sampler and the batch writer against native PostgreSQL: processes the test starts
//! show up with plausible numbers, and the host rows agree with the kernel.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use metricsstack_collector::ingest;
use metricsstack_collector::rows::Batch;
use metricsstack_collector::sample::Sampler;
use metricsstack_common::config::ProcessConfig;
use metricsstack_testkit::TestDatabase;
use sqlx::PgPool;

/// A child process killed when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The tests of this file measure CPU and memory: one at a time, so that they do not show
/// up in each other's numbers.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn database() -> (TestDatabase, PgPool) {
    let db = TestDatabase::create().await;
    let pool = db.pool(2).await;
    sqlx::migrate!("../migrations")
        .run(&pool)
        .await
        .expect("the schema applies");
    (db, pool)
}

/// Samples twice, `interval` apart with a tick every 250 ms, and writes the second sample.
async fn sample_into(pool: &PgPool, selection: ProcessConfig, interval: Duration) {
    let mut sampler = Sampler::new("test-node", &selection, "/proc".into()).expect("a sampler");
    let ticks = (interval.as_millis() / 250).max(1);
    for _ in 0..ticks {
        tokio::time::sleep(Duration::from_millis(250)).await;
        sampler.tick();
    }
    let batch = sampler.sample(chrono::Utc::now(), None);
    let inserted = ingest::insert(pool, &batch)
        .await
        .expect("the batch is written");
    assert_eq!(inserted.hosts, 1);
    assert_eq!(inserted.processes as usize, batch.processes.len());
    // The same batch again inserts nothing: writes are idempotent.
    let again = ingest::insert(pool, &batch)
        .await
        .expect("the batch is written again");
    assert_eq!((again.hosts, again.processes), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_child_is_at_the_top_by_cpu() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_db, pool) = database().await;
    let busy = Guard(
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdout(Stdio::null())
            .spawn()
            .expect("sh starts"),
    );
    let selection = ProcessConfig {
        top_by_cpu: 10,
        top_by_memory: 0,
        ..ProcessConfig::default()
    };
    // Let the child get going before the measured interval starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sample_into(&pool, selection, Duration::from_secs(2)).await;
    let ranked: Vec<(i32, f32, f32)> = sqlx::query_as(
        "SELECT pid, cpu_usage_percent, cpu_peak_percent FROM host_process_metrics \
         ORDER BY cpu_usage_percent DESC",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    let pid = busy.0.id() as i32;
    let (rank, (_, cpu, peak)) = ranked
        .iter()
        .enumerate()
        .find(|(_, (p, _, _))| *p == pid)
        .unwrap_or_else(|| panic!("the busy child {pid} is not among the top by CPU: {ranked:?}"));
    // One spinning thread: close to one full core, and never more than a little above it.
    assert!(
        (60.0..=110.0).contains(cpu),
        "cpu {cpu}% for a spinning child: {ranked:?}"
    );
    assert!(
        *peak >= *cpu * 0.9,
        "the peak {peak}% is below the average {cpu}%"
    );
    // On two cores a spinning child leads, unless a multi-threaded process (a compiler
    // running beside the tests) outruns it; it is among the very first all the same.
    assert!(rank < 3, "the busy child ranks {rank} by CPU: {ranked:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_that_starts_spinning_between_reads_peaks_at_one_core() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_db, pool) = database().await;
    // Idle when the sampler first reads it, so that the ticks leave it to the sample; then
    // one spinning thread, which can never use more than one core.
    let late = Guard(
        Command::new("sh")
            .args(["-c", "sleep 0.5; while :; do :; done"])
            .stdout(Stdio::null())
            .spawn()
            .expect("sh starts"),
    );
    // Recorded by name, whatever else keeps the machine busy.
    let selection = ProcessConfig {
        top_by_cpu: 0,
        top_by_memory: 0,
        include: vec!["^sh$".into()],
        ..ProcessConfig::default()
    };
    sample_into(&pool, selection, Duration::from_secs(2)).await;
    let (cpu, peak): (f32, f32) = sqlx::query_as(
        "SELECT cpu_usage_percent, cpu_peak_percent FROM host_process_metrics WHERE pid = $1",
    )
    .bind(late.0.id() as i32)
    .fetch_one(&pool)
    .await
    .expect("the spinning child is recorded");
    // Even on a crowded machine it spins a good part of the interval.
    assert!(
        cpu >= 5.0,
        "cpu {cpu}% for a child spinning most of the interval"
    );
    assert!(
        (cpu..=110.0).contains(&peak),
        "peak {peak}% (average {cpu}%) for one spinning thread"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_with_200_megabytes_and_seven_threads_shows_both() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_db, pool) = database().await;
    // The main thread and seven sleeping ones: eight threads.
    let mut hog = Guard(
        Command::new("python3")
            .args([
                "-c",
                "import threading, time\n\
                 b = b'x' * (200 * 1024 * 1024)\n\
                 for _ in range(7):\n    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n\
                 print('ready', flush=True)\n\
                 time.sleep(60)",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 starts"),
    );
    let stdout = hog.0.stdout.take().expect("stdout");
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the child reports");
    })
    .await
    .expect("the child filled its memory");
    let selection = ProcessConfig {
        top_by_cpu: 0,
        // Among the 20 largest: the test environment's servers (API server, TimescaleDB in
        // WASM) are larger still.
        top_by_memory: 20,
        ..ProcessConfig::default()
    };
    sample_into(&pool, selection, Duration::from_millis(500)).await;
    let (rss, threads): (f64, Option<i32>) =
        sqlx::query_as("SELECT memory_usage_mb, threads FROM host_process_metrics WHERE pid = $1")
            .bind(hog.0.id() as i32)
            .fetch_one(&pool)
            .await
            .expect("the child is recorded among the largest");
    assert!(
        rss >= 200.0,
        "RSS {rss} MiB for a child that touched 200 MiB"
    );
    assert_eq!(threads, Some(8), "threads of a child running eight");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_that_execs_shows_its_new_command_line() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // Its first line says that the shell runs (and no longer the program that started it).
    let mut child = Guard(
        Command::new("sh")
            .args(["-c", "echo ready; read line; exec sleep 60"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh starts"),
    );
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.take().expect("stdout")),
        &mut ready,
    )
    .expect("the shell runs");
    let pid = child.0.id() as i32;
    let selection = ProcessConfig {
        top_by_cpu: 0,
        top_by_memory: 0,
        include: vec!["^sh$".into(), "^sleep$".into()],
        ..ProcessConfig::default()
    };
    let mut sampler = Sampler::new("test-node", &selection, "/proc".into()).expect("a sampler");
    let row = |batch: &Batch| {
        batch
            .processes
            .iter()
            .find(|p| p.pid == pid)
            .map(|p| (p.process_name.clone(), p.command_line.clone()))
            .expect("the child is recorded")
    };
    let before = row(&sampler.sample(chrono::Utc::now(), None));
    assert_eq!(
        before,
        (
            "sh".into(),
            Some("sh -c echo ready; read line; exec sleep 60".into())
        )
    );

    use std::io::Write;
    let mut stdin = child.0.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("the child reads");
    let comm = format!("/proc/{pid}/comm");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&comm).expect("the child lives") != "sleep\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never ran sleep"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = row(&sampler.sample(chrono::Utc::now(), None));
    assert_eq!(after, ("sleep".into(), Some("sleep 60".into())));
}

#[tokio::test(flavor = "multi_thread")]
async fn host_rows_agree_with_the_kernel() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_db, pool) = database().await;
    sample_into(&pool, ProcessConfig::default(), Duration::from_millis(500)).await;
    let (total, used, cpu, cores, processes, uptime): (i64, i64, f32, i32, i32, i64) =
        sqlx::query_as(
            "SELECT memory_total_bytes, memory_used_bytes, cpu_usage_percent, \
                cardinality(cpu_per_core_percent), process_count, uptime_seconds \
         FROM host_overall_metrics",
        )
        .fetch_one(&pool)
        .await
        .expect("one host row");
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let kib: i64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal");
    assert_eq!(total, kib * 1024);
    assert!(used > 0 && used < total, "used {used} of {total}");
    assert!((0.0..=100.0).contains(&cpu), "cpu {cpu}");
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let online = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    assert_eq!(cores as usize, online);
    let listed = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        })
        .count() as i32;
    assert!(
        (processes - listed).abs() < listed / 2 + 5,
        "{processes} processes, /proc lists {listed}"
    );
    let uptime_now: f64 = std::fs::read_to_string("/proc/uptime")
        .expect("uptime")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("seconds");
    assert!(
        (uptime as f64 - uptime_now).abs() < 5.0,
        "uptime {uptime} vs {uptime_now}"
    );
}
