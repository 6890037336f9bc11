//! The collector binary against native PostgreSQL behind a proxy that the test cuts: while
//! the database is away the collector keeps sampling into its spool, and when it returns
//! every sample arrives exactly once, also across a SIGKILL and restart of the collector.
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
use metricsstack_testkit::{TestDatabase, wait_until};
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to the database that the test can cut (refusing and dropping connections)
/// and restore on the same port.
struct Proxy {
    address: SocketAddr,
    up: watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("bound");
        let (up, state) = watch::channel(true);
        tokio::spawn(serve(listener, address, target, state));
        Self { address, up }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

async fn serve(
    mut listener: TcpListener,
    address: SocketAddr,
    target: SocketAddr,
    mut state: watch::Receiver<bool>,
) {
    loop {
        // Up: accept and forward until cut; every forwarded connection dies with the cut.
        let connections = Arc::new(tokio::sync::Notify::new());
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((client, _)) = accepted else { continue };
                    let cut = connections.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else { return };
                        let (mut client, mut server) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            () = cut.notified() => {}
                        }
                    });
                }
                changed = state.changed() => {
                    if changed.is_err() { return; }
                    if !*state.borrow() { break; }
                }
            }
        }
        connections.notify_waiters();
        drop(listener);
        // Down: nothing listens, so connecting is refused at once.
        while !*state.borrow() {
            if state.changed().await.is_err() {
                return;
            }
        }
        listener = TcpListener::bind(address)
            .await
            .expect("the proxy port is free again");
    }
}

/// How long a condition may take to come true on a loaded machine before the test fails.
const DEADLINE: Duration = Duration::from_secs(120);

/// A running collector process, its log lines collected; killed if the test ends early.
struct Collector {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    fn start(dir: &Path, database_url: &str) -> Self {
        let config = dir.join("collector.yaml");
        std::fs::write(
            &config,
            format!(
                "intervalSeconds: 1\npodAttribution: false\nspoolDir: {}\nlistenAddress: 127.0.0.1:0\n\
                 processes: {{topByCpu: 2, topByMemory: 2}}\npool: {{maxConnections: 1, acquireTimeoutSeconds: 2}}\n",
                dir.join("spool").display()
            ),
        )
        .expect("the config is written");
        let mut child = Command::new(env!("CARGO_BIN_EXE_collector"))
            .arg("--config")
            .arg(&config)
            .env("DATABASE_URL", database_url)
            .env("NODE_NAME", "outage-node")
            .env("RUST_LOG", "info")
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

    fn kill(mut self) {
        self.child.kill().expect("the collector is killed");
        self.child.wait().expect("killed");
    }

    /// Stops the collector (SIGTERM), and returns how many samples it says it took.
    fn stop(mut self) -> u64 {
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
        let stopped = lines
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["fields"]["message"] == "stopped")
            .unwrap_or_else(|| panic!("the collector says it stopped: {lines:#?}"));
        assert_eq!(stopped["fields"]["rows_dropped"], 0, "{stopped}");
        stopped["fields"]["samples"]
            .as_u64()
            .unwrap_or_else(|| panic!("a sample count: {stopped}"))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn setup() -> (TestDatabase, PgPool, Proxy, tempdir::Dir) {
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
    (db, pool, proxy, tempdir::Dir::new())
}

fn proxied_url(db: &TestDatabase, proxy: &Proxy) -> String {
    format!(
        "postgres://postgres@{}/{}?sslmode=disable",
        proxy.address, db.name
    )
}

/// The sample times of the host rows.
async fn sample_times(pool: &PgPool) -> BTreeSet<DateTime<Utc>> {
    sqlx::query_scalar("SELECT \"timestamp\" FROM host_overall_metrics WHERE host = 'outage-node'")
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
    let collector = Collector::start(dir.path(), &proxied_url(&db, &proxy));
    wait_until("the collector writes", DEADLINE, || async {
        !sample_times(&pool).await.is_empty()
    })
    .await;

    proxy.set_up(false);
    let outage = wait_for_spooled(&spool, 4).await;
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

/// A temporary directory removed at the end of the test.
mod tempdir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(metricsstack_testkit::unique_name("collector"));
            std::fs::create_dir_all(&path).expect("a temporary directory");
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
