//! The collector binary against native PostgreSQL behind a proxy that the test cuts: while
//! the database is away the collector keeps sampling into its spool, and when it returns
//! every sample arrives exactly once, also across a SIGKILL and restart of the collector.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metricsstack_testkit::TestDatabase;
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

/// A running collector process, killed if the test ends early.
struct Collector(Child);

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
        let child = Command::new(env!("CARGO_BIN_EXE_collector"))
            .arg("--config")
            .arg(&config)
            .env("DATABASE_URL", database_url)
            .env("NODE_NAME", "outage-node")
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("the collector starts");
        Self(child)
    }

    fn signal(&mut self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    fn stop(mut self) {
        self.signal("-TERM");
        let status = self.0.wait().expect("the collector exits");
        assert!(status.success(), "the collector exited with {status}");
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

/// The sample times of the host rows, in order.
async fn sample_times(pool: &PgPool) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar(
        "SELECT \"timestamp\" FROM host_overall_metrics WHERE host = 'outage-node' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("rows")
}

async fn wait_for_rows(pool: &PgPool, after: DateTime<Utc>) {
    for _ in 0..120 {
        if sample_times(pool).await.last().is_some_and(|t| *t > after) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no rows after {after}");
}

/// Fails if two consecutive samples are further apart than one interval (with slack).
fn assert_no_gaps(times: &[DateTime<Utc>], from: DateTime<Utc>, to: DateTime<Utc>) {
    let inside: Vec<_> = times.iter().filter(|t| **t >= from && **t <= to).collect();
    assert!(
        inside.len() >= 2,
        "too few samples between {from} and {to}: {times:?}"
    );
    for pair in inside.windows(2) {
        let gap = (*pair[1] - *pair[0]).num_milliseconds();
        assert!(
            gap < 1600,
            "samples {} and {} are {gap} ms apart",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sample_of_an_outage_arrives_exactly_once() {
    let (db, pool, proxy, dir) = setup().await;
    let collector = Collector::start(dir.path(), &proxied_url(&db, &proxy));
    let started = Utc::now();
    wait_for_rows(&pool, started).await;

    proxy.set_up(false);
    let outage = Utc::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.set_up(true);
    let back = Utc::now();
    wait_for_rows(&pool, back + chrono::Duration::seconds(2)).await;
    collector.stop();

    let times = sample_times(&pool).await;
    let during: Vec<_> = times
        .iter()
        .filter(|t| **t > outage && **t < back)
        .collect();
    assert!(
        during.len() >= 4,
        "samples taken during the outage arrived: {during:?}"
    );
    assert_no_gaps(&times, started, back);
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT \"timestamp\") - count(*) FROM host_overall_metrics",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(distinct, 0, "no sample is stored twice");
    assert_eq!(
        std::fs::read_dir(dir.path().join("spool"))
            .expect("spool")
            .count(),
        0,
        "the spool is empty"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spooled_samples_survive_a_sigkill_during_the_outage() {
    let (db, pool, proxy, dir) = setup().await;
    let url = proxied_url(&db, &proxy);
    let mut first = Collector::start(dir.path(), &url);
    let started = Utc::now();
    wait_for_rows(&pool, started).await;

    proxy.set_up(false);
    let outage = Utc::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    first.signal("-KILL");
    let killed = Utc::now();
    first.0.wait().expect("killed");
    let spooled = std::fs::read_dir(dir.path().join("spool"))
        .expect("spool")
        .count();
    assert!(
        spooled >= 3,
        "the killed collector spooled its samples: {spooled}"
    );

    let second = Collector::start(dir.path(), &url);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_up(true);
    wait_for_rows(&pool, Utc::now() + chrono::Duration::seconds(2)).await;
    second.stop();

    let times = sample_times(&pool).await;
    let before_kill: Vec<_> = times
        .iter()
        .filter(|t| **t > outage && **t < killed)
        .collect();
    assert!(
        before_kill.len() >= 3,
        "the samples spooled before the SIGKILL arrived: {times:?}"
    );
    assert_no_gaps(
        &times,
        started,
        killed - chrono::Duration::milliseconds(1100),
    );
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
