//! The sampler and the batch writer against native PostgreSQL: processes the test starts
//! show up with the numbers the kernel gives, and the host rows agree with the kernel.
//!
//! How much CPU a process gets depends on what else the machine runs, so no test expects a
//! share of a core. Instead the test reads the CPU clocks itself just before and just after
//! every sampler call: the sampler read each clock, and the time, in between, which bounds
//! what it can have measured. Where a test needs a process to have run, it waits until the
//! process's clock shows it did, however long that takes.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metricsstack_collector::cpu_clock::process_cpu_ns;
use metricsstack_collector::ingest;
use metricsstack_collector::procfs::{ProcFs, parse_stat};
use metricsstack_collector::rows::{Batch, ProcessRow};
use metricsstack_collector::sample::Sampler;
use metricsstack_common::config::ProcessConfig;
use metricsstack_testkit::TestDatabase;
use sqlx::PgPool;

/// How long a condition may take to come true on a loaded machine before the test fails.
const DEADLINE: Duration = Duration::from_secs(120);
/// Relative slack when comparing the sampler's single-precision percentages to the bounds.
const SLACK: f64 = 1e-4;
/// One millisecond of CPU time, in nanoseconds.
const MS: u64 = 1_000_000;

/// A child process killed when the test ends, however it ends.
struct Guard(Child);

impl Guard {
    /// A shell spinning on one core.
    fn spinning() -> Self {
        Self(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdout(Stdio::null())
                .spawn()
                .expect("sh starts"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Stops the child (SIGSTOP) and waits until the kernel shows it stopped: from then on
    /// its CPU clock stands still.
    async fn stop(&self) {
        self.signal("-STOP");
        let stat = format!("/proc/{}/stat", self.pid());
        wait_until("the child is stopped", || {
            std::fs::read(&stat)
                .ok()
                .and_then(|content| parse_stat(&content))
                .is_some_and(|stat| stat.state == b'T')
        })
        .await;
    }

    /// Lets a stopped child run again (SIGCONT).
    fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }
}

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

/// Polls `done` every 10 ms until it holds; fails only after [`DEADLINE`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "after {DEADLINE:?}, still waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until process `pid` has used at least `ns` nanoseconds of CPU time in all.
async fn wait_for_cpu(pid: u32, ns: u64) {
    wait_until(&format!("process {pid} has used {ns} ns of CPU"), || {
        process_cpu_ns(pid).expect("the child runs") >= ns
    })
    .await;
}

/// Writes `batch` and checks the write: every row once, and nothing the second time.
async fn write(pool: &PgPool, batch: &Batch) {
    let inserted = ingest::insert(pool, batch)
        .await
        .expect("the batch is written");
    assert_eq!(inserted.hosts, 1);
    assert_eq!(inserted.processes as usize, batch.processes.len());
    // The same batch again inserts nothing: writes are idempotent.
    let again = ingest::insert(pool, batch)
        .await
        .expect("the batch is written again");
    assert_eq!((again.hosts, again.processes), (0, 0));
}

/// The row of process `pid` in `batch`.
fn row_of(batch: &Batch, pid: u32) -> &ProcessRow {
    batch
        .processes
        .iter()
        .find(|row| row.pid as u32 == pid)
        .unwrap_or_else(|| panic!("process {pid} is recorded"))
}

/// Whose CPU clocks a reading takes.
#[derive(Clone, Copy)]
enum Scope {
    /// One process.
    One(u32),
    /// Every process `/proc` lists.
    All,
}

/// CPU clocks (nanoseconds, by pid) read at one side of a sampler call, and the time taken
/// between those reads and the call.
struct Reading {
    at: Instant,
    cpu: HashMap<u32, u64>,
}

fn clocks(scope: Scope) -> HashMap<u32, u64> {
    let pids: Vec<u32> = match scope {
        Scope::One(pid) => vec![pid],
        Scope::All => ProcFs::new("/proc".into())
            .pids()
            .expect("/proc lists")
            .collect(),
    };
    pids.into_iter()
        .filter_map(|pid| Some((pid, process_cpu_ns(pid)?)))
        .collect()
}

/// The readings just before and just after one sampler call.
struct Bracket {
    before: Reading,
    after: Reading,
}

/// Runs `call` between two readings of the clocks of `scope`.
fn bracket<T>(scope: Scope, call: impl FnOnce() -> T) -> (T, Bracket) {
    let cpu = clocks(scope);
    let before = Reading {
        at: Instant::now(),
        cpu,
    };
    let value = call();
    let at = Instant::now();
    let after = Reading {
        at,
        cpu: clocks(scope),
    };
    (value, Bracket { before, after })
}

/// CPU time in a duration, as percent of one core.
fn percent(ns: u64, duration: Duration) -> f64 {
    ns as f64 / duration.as_nanos() as f64 * 100.0
}

/// Bounds on the CPU use of `pid` (percent of one core) that the sampler can have measured
/// between its reads in the calls `from` and `to`. The lower bound is 0 for a process the
/// readings do not show throughout (the sampler may have seen it start, and counted
/// nothing); the upper bound is infinite when the readings cannot bound it.
fn bounds(from: &Bracket, to: &Bracket, pid: u32) -> (f64, f64) {
    let cpu = |reading: &Reading| reading.cpu.get(&pid).copied();
    let lower = match (
        cpu(&from.before),
        cpu(&from.after),
        cpu(&to.before),
        cpu(&to.after),
    ) {
        (Some(_), Some(start), Some(end), Some(_)) => percent(
            end.saturating_sub(start),
            to.after.at.duration_since(from.before.at),
        ),
        _ => 0.0,
    };
    // A process that started since `from.before` started with a clock at 0.
    let start = cpu(&from.before).unwrap_or(0);
    let shortest = to.before.at.saturating_duration_since(from.after.at);
    let upper = match cpu(&to.after) {
        Some(end) if end >= start && !shortest.is_zero() => percent(end - start, shortest),
        _ => f64::INFINITY,
    };
    (lower, upper)
}

/// Fails unless `value` lies within `(lower, upper)`, give or take the rounding to `f32`.
fn assert_within(value: f32, (lower, upper): (f64, f64), what: &str) {
    let value = f64::from(value);
    assert!(
        value >= lower * (1.0 - SLACK) && value <= upper * (1.0 + SLACK) + 1e-6,
        "{what}: {value}% is outside [{lower}%, {upper}%]"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_child_is_outranked_only_by_processes_that_may_have_used_as_much_cpu() {
    const TOP: usize = 3;
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_db, pool) = database().await;
    let busy = Guard::spinning();
    let pid = busy.pid();
    let selection = ProcessConfig {
        top_by_cpu: TOP as u32,
        top_by_memory: 0,
        ..ProcessConfig::default()
    };
    let (sampler, mut previous) = bracket(Scope::All, || {
        Sampler::new("test-node", &selection, "/proc".into())
    });
    let mut sampler = sampler.expect("a sampler");
    // Interval after interval until the child makes the top: on a quiet machine the first,
    // on a loaded one whenever fewer than TOP processes keep up with it.
    let deadline = Instant::now() + DEADLINE;
    loop {
        // An interval in which the child spun a good while, however long that takes.
        let start = previous.after.cpu.get(&pid).copied().unwrap_or(0);
        wait_for_cpu(pid, start + 200 * MS).await;
        let (batch, current) = bracket(Scope::All, || sampler.sample(chrono::Utc::now(), None));
        write(&pool, &batch).await;
        let ranked: Vec<(i32, f32)> = sqlx::query_as(
            "SELECT pid, cpu_usage_percent FROM host_process_metrics WHERE \"timestamp\" = $1 \
             ORDER BY cpu_usage_percent DESC",
        )
        .bind(batch.hosts[0].timestamp)
        .fetch_all(&pool)
        .await
        .expect("rows");
        assert_eq!(ranked.len(), batch.processes.len(), "the rows are stored");
        for (p, cpu) in &ranked {
            let what = format!("process {p} (the child is {pid})");
            assert_within(*cpu, bounds(&previous, &current, *p as u32), &what);
        }
        // Whoever ranks above the child measured at least as much as the child did, so may
        // have used at least the least the child can have used.
        let (least, _) = bounds(&previous, &current, pid);
        let pids: HashSet<u32> = [&previous.before, &previous.after, &current.before]
            .into_iter()
            .chain([&current.after])
            .flat_map(|reading| reading.cpu.keys().copied())
            .chain(ranked.iter().map(|(p, _)| *p as u32))
            .filter(|p| *p != pid)
            .collect();
        let rivals: Vec<(u32, f64)> = pids
            .into_iter()
            .map(|p| (p, bounds(&previous, &current, p).1))
            .filter(|(_, most)| most * (1.0 + SLACK) >= least * (1.0 - SLACK))
            .collect();
        match ranked.iter().position(|(p, _)| *p as u32 == pid) {
            Some(rank) => {
                assert!(
                    rank <= rivals.len(),
                    "the child ranks {rank}, but at least {least}% for it leaves only these \
                     processes (pid, most %) that may have used as much: {rivals:?}; {ranked:?}"
                );
                return;
            }
            None => assert!(
                rivals.len() >= TOP,
                "the child is not among the top {TOP}, but at least {least}% for it leaves \
                 only these processes (pid, most %) that may have used as much: {rivals:?}"
            ),
        }
        assert!(
            Instant::now() < deadline,
            "after {DEADLINE:?}, always {TOP} processes or more kept up with the child"
        );
        previous = current;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_burst_shows_as_a_peak_well_above_the_interval_average() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_db, pool) = database().await;
    let child = Guard::spinning();
    let pid = child.pid();
    let one = Scope::One(pid);
    let selection = ProcessConfig {
        top_by_cpu: 0,
        top_by_memory: 0,
        include: vec!["^sh$".into()],
        ..ProcessConfig::default()
    };
    let (sampler, primed) = bracket(one, || {
        Sampler::new("test-node", &selection, "/proc".into())
    });
    let mut sampler = sampler.expect("a sampler");
    // Busy since the priming read: the sample leaves it among the processes ticks read.
    wait_for_cpu(pid, primed.after.cpu[&pid] + 10 * MS).await;
    let (_, first) = bracket(one, || sampler.sample(chrono::Utc::now(), None));
    let spent_from = first.before.cpu[&pid];
    // The burst: three ticks, each after the child used some CPU, so each reads it.
    let mut reads = vec![first];
    for _ in 0..3 {
        let last = reads.last().expect("a read").after.cpu[&pid];
        wait_for_cpu(pid, last + 20 * MS).await;
        reads.push(bracket(one, || sampler.tick()).1);
    }
    // The least the sampler can have measured over one of those tick intervals.
    let burst = reads
        .windows(2)
        .map(|pair| bounds(&pair[0], &pair[1], pid).0)
        .fold(0.0, f64::max);
    assert!(burst > 0.0, "the child ran during the burst");
    // Then idle, with ticks going on, until the interval's average is at most a third of
    // the burst's: what the child used, spread over the time since the first sample.
    child.stop().await;
    let spent = process_cpu_ns(pid).expect("the child lives") - spent_from;
    let since_first = reads[0].after.at;
    loop {
        reads.push(bracket(one, || sampler.tick()).1);
        if percent(spent, since_first.elapsed()) <= burst / 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (batch, last) = bracket(one, || sampler.sample(chrono::Utc::now(), None));
    reads.push(last);
    write(&pool, &batch).await;
    let (cpu, peak): (f32, f32) = sqlx::query_as(
        "SELECT cpu_usage_percent, cpu_peak_percent FROM host_process_metrics WHERE pid = $1 \
         AND \"timestamp\" = $2",
    )
    .bind(pid as i32)
    .bind(batch.hosts[0].timestamp)
    .fetch_one(&pool)
    .await
    .expect("the child is recorded");

    let (first, last) = (&reads[0], reads.last().expect("a read"));
    let average = bounds(first, last, pid);
    assert_within(cpu, average, "the interval's average");
    assert!(
        average.1 < burst / 2.0,
        "the average {average:?} is well below the burst's {burst}%"
    );
    // The peak is the busiest of the sampler's reads: at least the burst's, and at most what
    // the busiest stretch between two of its reads can have been.
    let busiest = reads
        .windows(2)
        .map(|pair| bounds(&pair[0], &pair[1], pid).1)
        .fold(0.0, f64::max);
    assert_within(
        peak,
        (burst, busiest),
        &format!("the peak, for an average of {cpu}%"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_that_starts_spinning_between_reads_peaks_at_its_interval_average() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_db, pool) = database().await;
    // Stopped when the sampler first reads it and at the first sample, so that no tick
    // reads it; then spinning until the second sample.
    let late = Guard::spinning();
    late.stop().await;
    let pid = late.pid();
    let one = Scope::One(pid);
    // Recorded by name, whatever else keeps the machine busy.
    let selection = ProcessConfig {
        top_by_cpu: 0,
        top_by_memory: 0,
        include: vec!["^sh$".into()],
        ..ProcessConfig::default()
    };
    let mut sampler = Sampler::new("test-node", &selection, "/proc".into()).expect("a sampler");
    let (batch, first) = bracket(one, || sampler.sample(chrono::Utc::now(), None));
    assert_eq!(row_of(&batch, pid).cpu_usage_percent, 0.0, "stopped, idle");
    late.resume();
    let resumed = first.after.cpu[&pid];
    // Ticks go on while it spins: they read only the processes busy at their last read.
    let deadline = Instant::now() + DEADLINE;
    while process_cpu_ns(pid).expect("the child runs") < resumed + 100 * MS {
        assert!(Instant::now() < deadline, "the child never ran");
        sampler.tick();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (batch, second) = bracket(one, || sampler.sample(chrono::Utc::now(), None));
    write(&pool, &batch).await;
    let (cpu, peak): (f32, f32) = sqlx::query_as(
        "SELECT cpu_usage_percent, cpu_peak_percent FROM host_process_metrics WHERE pid = $1 \
         AND \"timestamp\" = $2",
    )
    .bind(pid as i32)
    .bind(batch.hosts[0].timestamp)
    .fetch_one(&pool)
    .await
    .expect("the spinning child is recorded");
    assert_within(cpu, bounds(&first, &second, pid), "the interval's average");
    assert!(cpu > 0.0, "the child spun");
    // Its one reading of the interval spans the whole interval: the peak is the average,
    // however short the last tick interval was.
    assert!(
        (f64::from(peak) - f64::from(cpu)).abs() <= f64::from(cpu) * SLACK,
        "peak {peak}% for an average of {cpu}%"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_with_200_megabytes_and_seven_threads_shows_both() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_db, pool) = database().await;
    // The main thread and seven waiting ones: eight threads, until the test kills them.
    let mut hog = Guard(
        Command::new("python3")
            .args([
                "-c",
                "import threading\n\
                 b = b'x' * (200 * 1024 * 1024)\n\
                 never = threading.Event()\n\
                 for _ in range(7):\n    threading.Thread(target=never.wait, daemon=True).start()\n\
                 print('ready', flush=True)\n\
                 never.wait()",
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
    let mut sampler = Sampler::new("test-node", &selection, "/proc".into()).expect("a sampler");
    write(&pool, &sampler.sample(chrono::Utc::now(), None)).await;
    let (rss, threads): (f64, Option<i32>) =
        sqlx::query_as("SELECT memory_usage_mb, threads FROM host_process_metrics WHERE pid = $1")
            .bind(hog.pid() as i32)
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
            .args(["-c", "echo ready; read line; exec sleep infinity"])
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
    let pid = child.pid();
    let selection = ProcessConfig {
        top_by_cpu: 0,
        top_by_memory: 0,
        include: vec!["^sh$".into(), "^sleep$".into()],
        ..ProcessConfig::default()
    };
    let mut sampler = Sampler::new("test-node", &selection, "/proc".into()).expect("a sampler");
    let row = |batch: &Batch| {
        let row = row_of(batch, pid);
        (row.process_name.clone(), row.command_line.clone())
    };
    let before = row(&sampler.sample(chrono::Utc::now(), None));
    assert_eq!(
        before,
        (
            "sh".into(),
            Some("sh -c echo ready; read line; exec sleep infinity".into())
        )
    );

    use std::io::Write;
    let mut stdin = child.0.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("the child reads");
    let comm = format!("/proc/{pid}/comm");
    wait_until("the child runs sleep", || {
        std::fs::read_to_string(&comm).expect("the child lives") == "sleep\n"
    })
    .await;
    let after = row(&sampler.sample(chrono::Utc::now(), None));
    assert_eq!(after, ("sleep".into(), Some("sleep infinity".into())));
}

/// Seconds since boot, from `/proc/uptime`.
fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .expect("uptime")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("seconds")
}

#[tokio::test(flavor = "multi_thread")]
async fn host_rows_agree_with_the_kernel() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_db, pool) = database().await;
    let mut sampler =
        Sampler::new("test-node", &ProcessConfig::default(), "/proc".into()).expect("a sampler");
    let up_before = uptime();
    let batch = sampler.sample(chrono::Utc::now(), None);
    let up_after = uptime();
    write(&pool, &batch).await;
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
    // Whole seconds, read while the sample was taken.
    assert!(
        (up_before.floor()..=up_after.floor()).contains(&(uptime as f64)),
        "uptime {uptime} s, the kernel's went from {up_before} to {up_after} s"
    );
}
