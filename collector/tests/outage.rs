//! The collector binary against native PostgreSQL behind a proxy that the test cuts or
//! stalls: while the database is away the collector keeps sampling into its spool, and when
//! it returns every sample arrives exactly once, also across SIGKILLs at random moments and
//! restarts of the collector. Rows a table refuses for good are set aside as dead letters
//! while the rest flows on, and what a crash left in the spool is cleaned up and counted.
//!
//! The tests wait on what they can see, never on time passing: rows in the database,
//! batches in the spool (read as the collector wrote them), and the number of samples the
//! collector says it took when it stops.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use metricsstack_collector::rows::Batch;
use metricsstack_testkit::{TempDir, TestDatabase, wait_until};
use sqlx::{ConnectOptions as _, PgPool};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Forwards them.
    Up,
    /// Refuses new ones and drops the forwarded ones.
    Down,
    /// Accepts new ones and holds every connection open without passing a byte: a database
    /// that hangs.
    Stalled,
}

/// A TCP proxy to the database that the test can cut (refusing and dropping connections),
/// stall, and restore on the same port.
struct Proxy {
    address: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("bound");
        let (mode, state) = watch::channel(Mode::Up);
        tokio::spawn(serve(listener, address, target, state));
        Self { address, mode }
    }

    fn set_up(&self, up: bool) {
        self.set_mode(if up { Mode::Up } else { Mode::Down });
    }

    fn set_mode(&self, mode: Mode) {
        self.mode.send_if_modified(|current| {
            let changed = *current != mode;
            *current = mode;
            changed
        });
    }
}

async fn serve(
    listener: TcpListener,
    address: SocketAddr,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
) {
    let mut listener = Some(listener);
    loop {
        // Down: nothing listens, so connecting is refused at once.
        if *mode.borrow_and_update() == Mode::Down {
            listener = None;
        } else if listener.is_none() {
            listener = Some(
                TcpListener::bind(address)
                    .await
                    .expect("the proxy port is free again"),
            );
        }
        let Some(accepting) = &listener else {
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            accepted = accepting.accept() => {
                if let Ok((client, _)) = accepted {
                    tokio::spawn(forward(client, target, mode.clone()));
                }
            }
            changed = mode.changed() => if changed.is_err() { return },
        }
    }
}

/// Forwards one connection while the proxy is up. Cut, it is dropped; stalled, it is held
/// open without passing a byte until the stall ends, and then dropped.
async fn forward(mut client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let mut server = None;
    if *mode.borrow_and_update() == Mode::Up {
        let Ok(connected) = TcpStream::connect(target).await else {
            return;
        };
        let server = server.insert(connected);
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, server) => return,
            _ = mode.wait_for(|mode| *mode != Mode::Up) => {}
        }
    }
    let _held = (client, server);
    let _ = mode.wait_for(|mode| *mode != Mode::Stalled).await;
}

/// How long a condition may take to come true on a loaded machine before the test fails.
const DEADLINE: Duration = Duration::from_secs(120);

/// A running collector process, its log lines collected; killed if the test ends early.
struct Collector {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How a test runs a collector.
struct Options<'a> {
    /// `NODE_NAME`: the host of its rows.
    node: &'a str,
    /// `RUST_LOG`.
    log: &'a str,
    /// The port of its `/metrics` (0: any).
    metrics_port: u16,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            node: NODE,
            log: "info",
            metrics_port: 0,
        }
    }
}

/// The node name of the collector's rows unless a test says otherwise.
const NODE: &str = "outage-node";

/// What a collector said when it stopped, and every line it logged.
struct Stopped {
    report: serde_json::Value,
    lines: Vec<serde_json::Value>,
}

impl Collector {
    fn start(dir: &Path, database_url: &str) -> Self {
        Self::start_with(dir, database_url, &Options::default())
    }

    fn start_with(dir: &Path, database_url: &str, options: &Options) -> Self {
        let config = dir.join("collector.yaml");
        std::fs::write(
            &config,
            format!(
                "intervalSeconds: 1\npodAttribution: false\nspoolDir: {}\nlistenAddress: 127.0.0.1:{}\n\
                 processes: {{topByCpu: 2, topByMemory: 2}}\npool: {{maxConnections: 1, acquireTimeoutSeconds: 2}}\n",
                dir.join("spool").display(),
                options.metrics_port,
            ),
        )
        .expect("the config is written");
        let mut child = Command::new(env!("CARGO_BIN_EXE_collector"))
            .arg("--config")
            .arg(&config)
            .env("DATABASE_URL", database_url)
            .env("NODE_NAME", options.node)
            .env("RUST_LOG", options.log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the collector starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn({
            let lines = lines.clone();
            move || {
                for line in BufReader::new(stdout).lines() {
                    lines.lock().expect("lines").push(line.expect("a line"));
                }
            }
        });
        Self {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// The lines logged so far with this message.
    fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        with_message(&parsed(&self.lines.lock().expect("lines")), message)
    }

    /// SIGKILL; returns every line the collector logged.
    fn kill(mut self) -> Vec<serde_json::Value> {
        self.child.kill().expect("the collector is killed");
        self.child.wait().expect("killed");
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the output is read");
        }
        parsed(&self.lines.lock().expect("lines"))
    }

    /// Stops the collector (SIGTERM), and returns how many samples it says it took.
    fn stop(self) -> u64 {
        let stopped = self.stop_report().report;
        assert_eq!(stopped["fields"]["rows_dropped"], 0, "{stopped}");
        stopped["fields"]["samples"]
            .as_u64()
            .unwrap_or_else(|| panic!("a sample count: {stopped}"))
    }

    /// Stops the collector (SIGTERM), and returns what it said.
    fn stop_report(mut self) -> Stopped {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let status = self.child.wait().expect("the collector exits");
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the output is read");
        }
        let lines = self.lines.lock().expect("lines");
        assert!(
            status.success(),
            "the collector exited with {status}: {lines:#?}"
        );
        let lines = parsed(&lines);
        let report = with_message(&lines, "stopped")
            .pop()
            .unwrap_or_else(|| panic!("the collector says it stopped: {lines:#?}"));
        Stopped { report, lines }
    }
}

/// The JSON lines among `lines`.
fn parsed(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The lines with this message.
fn with_message(lines: &[serde_json::Value], message: &str) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter(|line| line["fields"]["message"] == message)
        .cloned()
        .collect()
}

/// A port free on loopback now, for a collector's `/metrics`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The value of one series of the collector's `/metrics` (0 while it is not there yet).
async fn metric(port: u16, series: &str) -> f64 {
    let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return 0.0; // not listening yet
    };
    let body = response.text().await.expect("the metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.parse().expect("a number"))
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn setup() -> (TestDatabase, PgPool, Proxy, TempDir) {
    let db = TestDatabase::create().await;
    let pool = db.pool(2).await;
    sqlx::migrate!("../migrations")
        .run(&pool)
        .await
        .expect("the schema applies");
    let target = format!("{}:{}", db.options.get_host(), db.options.get_port())
        .parse()
        .expect("a socket address");
    let proxy = Proxy::start(target).await;
    (db, pool, proxy, TempDir::new("collector"))
}

fn proxied_url(db: &TestDatabase, proxy: &Proxy) -> String {
    format!(
        "postgres://postgres@{}/{}?sslmode=disable",
        proxy.address, db.name
    )
}

/// The sample times of the host rows.
async fn sample_times(pool: &PgPool) -> BTreeSet<DateTime<Utc>> {
    sample_times_of(pool, NODE).await
}

/// The sample times of the host rows of `node`.
async fn sample_times_of(pool: &PgPool, node: &str) -> BTreeSet<DateTime<Utc>> {
    sqlx::query_scalar("SELECT \"timestamp\" FROM host_overall_metrics WHERE host = $1")
        .bind(node)
        .fetch_all(pool)
        .await
        .expect("rows")
        .into_iter()
        .collect()
}

/// The sample times of the batches in the spool `dir` now, as the database stores them (to
/// the microsecond). A batch replayed while the spool is read is left out.
fn spooled(dir: &Path) -> BTreeSet<DateTime<Utc>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new(); // not created yet
    };
    let mut times = BTreeSet::new();
    for entry in entries {
        let path = entry.expect("a spool entry").path();
        // Only whole batches: a `.json` file is renamed into place once written and synced.
        if path.extension().is_none_or(|extension| extension != "json") {
            continue;
        }
        let Ok(content) = std::fs::read(&path) else {
            continue; // replayed and removed meanwhile
        };
        let batch: Batch = serde_json::from_slice(&content)
            .unwrap_or_else(|e| panic!("{} is a batch: {e}", path.display()));
        times.extend(
            batch
                .hosts
                .iter()
                .map(|host| host.timestamp.trunc_subsecs(6)),
        );
    }
    times
}

/// Waits until the spool `dir` has held at least `count` batches, and returns their sample
/// times: the database is away, so nothing leaves the spool.
async fn wait_for_spooled(dir: &Path, count: usize) -> BTreeSet<DateTime<Utc>> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = BTreeSet::new();
    loop {
        seen.extend(spooled(dir));
        if seen.len() >= count {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "after {DEADLINE:?}, the spool has held only {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the spool `dir` is empty and the database holds every sample of `times`.
async fn wait_for_replay(pool: &PgPool, dir: &Path, times: &BTreeSet<DateTime<Utc>>) {
    wait_until("the spool is replayed", DEADLINE, || async {
        spooled(dir).is_empty() && sample_times(pool).await.is_superset(times)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sample_of_an_outage_arrives_exactly_once() {
    let (db, pool, proxy, dir) = setup().await;
    let spool = dir.path().join("spool");
    let port = free_port();
    let options = Options {
        metrics_port: port,
        ..Options::default()
    };
    let collector = Collector::start_with(dir.path(), &proxied_url(&db, &proxy), &options);
    wait_until("the collector writes", DEADLINE, || async {
        !sample_times(&pool).await.is_empty()
    })
    .await;

    proxy.set_up(false);
    let outage = wait_for_spooled(&spool, 4).await;
    // The 1 s peak reads go on while batches are spooled: they do not wait for the disk.
    let reads = metric(port, PEAK_READS).await;
    wait_until("peak reads go on during the outage", DEADLINE, || async {
        metric(port, PEAK_READS).await >= reads + 3.0
    })
    .await;
    proxy.set_up(true);
    wait_for_replay(&pool, &spool, &outage).await;
    let samples = collector.stop();

    let times = sample_times(&pool).await;
    assert!(
        times.is_superset(&outage),
        "the samples spooled during the outage arrived: {outage:?}, {times:?}"
    );
    // One row per sample and time (the table's key): none lost, none twice.
    assert_eq!(
        times.len() as u64,
        samples,
        "every sample the collector took is stored once: {times:?}"
    );
    assert!(spooled(&spool).is_empty(), "the spool is empty");
}

#[tokio::test(flavor = "multi_thread")]
async fn spooled_samples_survive_a_sigkill_during_the_outage() {
    let (db, pool, proxy, dir) = setup().await;
    let spool = dir.path().join("spool");
    let url = proxied_url(&db, &proxy);
    let first = Collector::start(dir.path(), &url);
    wait_until("the collector writes", DEADLINE, || async {
        !sample_times(&pool).await.is_empty()
    })
    .await;

    proxy.set_up(false);
    let witnessed = wait_for_spooled(&spool, 3).await;
    first.kill();
    let survived = spooled(&spool);
    assert!(
        survived.is_superset(&witnessed),
        "the spool kept its batches across the SIGKILL: {witnessed:?}, {survived:?}"
    );

    // The second collector starts while the database is still away: it spools after what
    // the first one left.
    let restarted = Utc::now().trunc_subsecs(6);
    let second = Collector::start(dir.path(), &url);
    wait_for_spooled(&spool, survived.len() + 1).await;
    proxy.set_up(true);
    wait_for_replay(&pool, &spool, &survived).await;
    let samples = second.stop();

    let times = sample_times(&pool).await;
    assert!(
        times.is_superset(&survived),
        "the samples spooled before the SIGKILL arrived: {survived:?}, {times:?}"
    );
    assert_eq!(
        times.range(restarted..).count() as u64,
        samples,
        "every sample the second collector took is stored once: {times:?}"
    );
    assert!(spooled(&spool).is_empty(), "the spool is empty");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_password_loses_no_sample_across_the_roll() {
    let (db, pool, _proxy, dir) = setup().await;
    let spool = dir.path().join("spool");
    // The collector logs in as a role of its own, which must give its password.
    let role = metricsstack_testkit::unique_name("collector").replace('-', "_");
    for statement in [
        format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'first-password' IN ROLE {}",
            metricsstack_testkit::PASSWORD_LOGIN_ROLE
        ),
        format!("GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO {role}"),
        // The latest sample and the search text of each process are updated in place.
        format!("GRANT UPDATE ON host_process_latest, host_process_texts TO {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .expect("the role is set up");
    }
    let url = |password: &str| {
        db.options
            .clone()
            .username(&role)
            .password(password)
            .to_url_lossy()
            .to_string()
    };
    let first = Collector::start(dir.path(), &url("first-password"));
    wait_until("the collector writes", DEADLINE, || async {
        !sample_times(&pool).await.is_empty()
    })
    .await;

    // The password changes in the database and the collector's session ends: the old
    // password is refused from then on, and the collector spools.
    for statement in [
        format!("ALTER ROLE {role} PASSWORD 'second-password'"),
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .expect("the password is rotated");
    }
    metricsstack_testkit::assert_password_refused(&url("first-password")).await;
    let refused = wait_for_spooled(&spool, 3).await;
    // The Secret follows and the pod rolls (the operator changes the pod template's
    // checksum: operator/tests/reconciler.rs): the old collector stops, the new one starts
    // with the new password on the node's spool directory.
    let first_samples = first.stop();
    let second = Collector::start(dir.path(), &url("second-password"));
    wait_for_replay(&pool, &spool, &refused).await;
    let second_samples = second.stop();

    let times = sample_times(&pool).await;
    assert!(
        times.is_superset(&refused),
        "the samples spooled while the password was refused arrived: {refused:?}, {times:?}"
    );
    assert_eq!(
        times.len() as u64,
        first_samples + second_samples,
        "every sample of both collectors is stored once: {times:?}"
    );
    assert!(spooled(&spool).is_empty(), "the spool is empty");
}

/// The series counting the collector's 1 s peak reads.
const PEAK_READS: &str = "metricsstack_collector_peak_reads_total";

/// The batches set aside in the spool's dead-letter directory.
fn dead_letters(spool: &Path) -> Vec<Batch> {
    let Ok(entries) = std::fs::read_dir(spool.join("dead-letter")) else {
        return Vec::new();
    };
    entries
        .map(|entry| entry.expect("a dead letter").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "json")
        })
        .map(|path| {
            let content = std::fs::read(&path).expect("readable");
            serde_json::from_slice(&content)
                .unwrap_or_else(|e| panic!("{} is a batch: {e}", path.display()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_a_table_refuses_for_good_are_dead_lettered_and_the_other_tables_keep_flowing() {
    let (db, pool, proxy, dir) = setup().await;
    let spool = dir.path().join("spool");
    let port = free_port();
    let options = Options {
        metrics_port: port,
        ..Options::default()
    };
    let collector = Collector::start_with(dir.path(), &proxied_url(&db, &proxy), &options);
    wait_until("the collector writes", DEADLINE, || async {
        !sample_times(&pool).await.is_empty()
    })
    .await;

    // Schema drift: from now on the process table refuses every row the collector sends
    // (SQLSTATE 23514, check_violation), for good.
    sqlx::query(
        "ALTER TABLE host_process_metrics ADD CONSTRAINT refuses_every_row CHECK (pid < 0) NOT VALID",
    )
    .execute(&pool)
    .await
    .expect("the constraint is added");
    let refused_from = Utc::now();
    wait_until("host rows keep arriving", DEADLINE, || async {
        sample_times(&pool).await.range(refused_from..).count() >= 5
    })
    .await;
    let series = "metricsstack_collector_rows_dead_lettered_total{table=\"host_process_metrics\"}";
    wait_until("the dead letters are counted", DEADLINE, || async {
        metric(port, series).await > 0.0
    })
    .await;
    let Stopped { report, lines } = collector.stop_report();

    assert_eq!(report["fields"]["rows_dropped"], 0, "{report}");
    let times = sample_times(&pool).await;
    assert_eq!(
        report["fields"]["samples"].as_u64(),
        Some(times.len() as u64),
        "every host row is stored once: {report}"
    );
    let dead = dead_letters(&spool);
    assert!(!dead.is_empty(), "the refused rows are set aside");
    assert!(
        dead.iter()
            .all(|batch| batch.hosts.is_empty() && batch.vms.is_empty()),
        "only the refused table's rows are set aside"
    );
    let dead_rows: usize = dead.iter().map(|batch| batch.processes.len()).sum();
    assert_eq!(
        report["fields"]["rows_dead_lettered"].as_u64(),
        Some(dead_rows as u64),
        "{report}"
    );
    assert!(
        spooled(&spool).is_empty(),
        "nothing waits behind the refused rows"
    );
    // Nothing else is lost: every sample's process rows are in the table or set aside.
    let stored: BTreeSet<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT DISTINCT \"timestamp\" FROM host_process_metrics WHERE host = $1",
    )
    .bind(NODE)
    .fetch_all(&pool)
    .await
    .expect("rows")
    .into_iter()
    .collect();
    let set_aside: BTreeSet<DateTime<Utc>> = dead
        .iter()
        .flat_map(|batch| {
            batch
                .processes
                .iter()
                .map(|row| row.timestamp.trunc_subsecs(6))
        })
        .collect();
    let missing: Vec<_> = times
        .iter()
        .filter(|time| !stored.contains(time) && !set_aside.contains(time))
        .collect();
    assert!(
        missing.is_empty(),
        "process rows of these samples are lost: {missing:?}"
    );
    // Each dead letter is logged once, naming the table and the SQLSTATE.
    let logged: Vec<_> = lines
        .iter()
        .filter(|line| line["fields"]["table"] == "host_process_metrics")
        .filter(|line| line["fields"]["sqlstate"] == "23514")
        .filter(|line| line["level"] == "ERROR")
        .collect();
    assert_eq!(logged.len(), dead.len(), "{logged:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_crash_left_in_the_spool_is_cleaned_and_a_corrupt_batch_counted_as_dropped() {
    let (db, pool, proxy, dir) = setup().await;
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("the spool directory");
    // A batch half-written when the disk filled up, and one that rotted on disk.
    let half_written = spool.join("00000000000000000003-7.tmp");
    std::fs::write(&half_written, b"{\"hosts\":[").expect("written");
    let corrupt = spool.join("00000000000000000004-5.json");
    std::fs::write(&corrupt, b"{\"hosts\":[{\"timest").expect("written");
    let port = free_port();
    let options = Options {
        metrics_port: port,
        ..Options::default()
    };
    let collector = Collector::start_with(dir.path(), &proxied_url(&db, &proxy), &options);
    wait_until("the collector writes", DEADLINE, || async {
        !sample_times(&pool).await.is_empty() && spooled_paths(&spool).is_empty()
    })
    .await;
    assert!(!half_written.exists(), "the half-written batch is removed");
    assert!(!corrupt.exists(), "the corrupt batch is removed");
    assert_eq!(
        metric(port, "metricsstack_collector_spool_leftovers_removed_total").await,
        1.0
    );
    assert_eq!(
        metric(
            port,
            "metricsstack_collector_spool_unreadable_batches_total"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(port, "metricsstack_collector_rows_dropped_total").await,
        5.0
    );
    let Stopped { report, .. } = collector.stop_report();
    assert_eq!(report["fields"]["rows_dropped"], 5, "{report}");
}

/// The `.json` entries of the spool `dir`.
fn spooled_paths(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|entry| entry.expect("an entry").path())
                .filter(|path| {
                    path.extension()
                        .is_some_and(|extension| extension == "json")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A random number from the standard library's hasher keys.
fn random(below: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % below
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkill_at_a_random_moment_loses_at_most_the_sample_being_taken() {
    const KILLS: usize = 51;
    let (db, pool, proxy, dir) = setup().await;
    let spool = dir.path().join("spool");
    let url = proxied_url(&db, &proxy);
    let modes = [Mode::Up, Mode::Down, Mode::Stalled];
    let mut runs = Vec::new();
    for kill in 0..KILLS {
        proxy.set_mode(Mode::Up);
        let node = format!("kill-{kill}");
        let options = Options {
            node: &node,
            log: "info,collector=debug",
            ..Options::default()
        };
        let collector = Collector::start_with(dir.path(), &url, &options);
        let mode = modes[kill % modes.len()];
        if mode != Mode::Up {
            // The database goes away (or hangs) once this collector is connected and writing.
            wait_until("the collector writes", DEADLINE, || async {
                !sample_times_of(&pool, &node).await.is_empty()
            })
            .await;
            proxy.set_mode(mode);
        }
        wait_until("the collector samples", DEADLINE, || async {
            !collector.logged("collecting").is_empty()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(random(3000))).await;
        let lines = collector.kill();
        let taken: BTreeSet<DateTime<Utc>> = with_message(&lines, "sample taken")
            .iter()
            .map(|line| {
                line["fields"]["timestamp"]
                    .as_str()
                    .and_then(|time| time.parse::<DateTime<Utc>>().ok())
                    .unwrap_or_else(|| panic!("a sample time: {line}"))
                    .trunc_subsecs(6)
            })
            .collect();
        runs.push((node, mode, taken));
    }

    // A last collector, the database up: it replays what the killed ones spooled.
    proxy.set_mode(Mode::Up);
    let last = Collector::start(dir.path(), &url);
    wait_until("the spool is replayed", DEADLINE, || async {
        spooled_paths(&spool).is_empty() && !sample_times(&pool).await.is_empty()
    })
    .await;
    last.stop();

    let mut lost_per_kill = Vec::new();
    for (node, mode, taken) in &runs {
        let stored = sample_times_of(&pool, node).await;
        assert!(
            stored.is_subset(taken),
            "{node} stored only samples it took: {stored:?}, {taken:?}"
        );
        let lost = taken.len() - stored.len();
        println!("{node} ({mode:?}): took {}, lost {lost}", taken.len());
        lost_per_kill.push(lost);
    }
    let max = lost_per_kill.iter().max().copied().unwrap_or(0);
    let mean = lost_per_kill.iter().sum::<usize>() as f64 / lost_per_kill.len() as f64;
    let taken: usize = runs.iter().map(|(_, _, taken)| taken.len()).sum();
    println!("{KILLS} kills, {taken} samples taken: lost per kill max {max}, mean {mean:.3}");
    assert!(
        taken >= KILLS,
        "the collectors took samples before they were killed"
    );
    assert!(
        max <= 1,
        "a SIGKILL loses at most the sample being taken: {lost_per_kill:?}"
    );
}
