//! A process started with a password and a database URL with credentials on its command line
//! (a real process: its `/proc/<pid>/cmdline` holds them): under the default setting, the
//! real collector binary stores it with those values redacted, and they appear nowhere: not in
//! the database's process tables, not in a byte of the spool written while the database is
//! away, not in the query service's HTTP answer. `full` keeps them, `none` stores no command
//! line, on the sampler's rows.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use metricsstack_collector::command_line::CommandLinePolicy;
use metricsstack_collector::sample::Sampler;
use metricsstack_common::access::AccessPolicy;
use metricsstack_common::config::{ProcessConfig, QueryServiceConfig};
use metricsstack_query_service::QueryService;
use metricsstack_testkit::{TempDir, TestDatabase, wait_until};
use sqlx::PgPool;

/// How long a condition may take to come true on a loaded machine before the test fails.
const DEADLINE: Duration = Duration::from_secs(120);
/// The process name of the probe (the name of the link it is started through).
const PROBE: &str = "redact-probe";
/// What must never be stored.
const SECRETS: [&str; 2] = ["hunter2", "u:p@"];
/// What is stored instead.
const REDACTED: [&str; 2] = ["--password=***", "--db=postgres://u:***@h/d"];

/// A shell started as `redact-probe` (through a link of that name, so that is its process
/// name) with the secrets among its arguments, waiting on its standard input until killed.
struct Probe(Child);

impl Probe {
    fn start(dir: &Path) -> Self {
        let link = dir.join(PROBE);
        std::os::unix::fs::symlink("/bin/sh", &link).expect("a link to the shell");
        let mut child = Command::new(&link)
            .args([
                "-c",
                "echo ready; read line",
                PROBE,
                "--password=hunter2",
                "--db=postgres://u:p@h/d",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the probe starts");
        // Its first line says the shell runs its script: the exec is done.
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut ready)
            .expect("the probe runs");
        let probe = Self(child);
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", probe.pid())).expect("cmdline");
        let cmdline = String::from_utf8_lossy(&cmdline);
        for secret in SECRETS {
            assert!(cmdline.contains(secret), "the probe's cmdline: {cmdline:?}");
        }
        probe
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A collector process recording the probe (whatever its CPU and memory), killed at the end
/// of the test.
struct Collector(Child);

impl Collector {
    fn start(dir: &Path, database_url: &str) -> Self {
        std::fs::create_dir_all(dir).expect("the collector's directory");
        let config = dir.join("collector.yaml");
        std::fs::write(
            &config,
            format!(
                "intervalSeconds: 1\npodAttribution: false\nspoolDir: {}\nlistenAddress: 127.0.0.1:0\n\
                 processes: {{topByCpu: 0, topByMemory: 0, include: ['^{PROBE}$']}}\n\
                 pool: {{maxConnections: 1, acquireTimeoutSeconds: 2}}\n",
                dir.join("spool").display()
            ),
        )
        .expect("the config is written");
        Self(
            Command::new(env!("CARGO_BIN_EXE_collector"))
                .arg("--config")
                .arg(&config)
                .env("DATABASE_URL", database_url)
                .env("NODE_NAME", "redaction-node")
                .stdout(Stdio::null())
                .spawn()
                .expect("the collector starts"),
        )
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fails if `text`, found in `place`, holds a secret; tells whether it holds the redacted
/// form of both.
fn redacted_in(place: &str, text: &str) -> bool {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{place} holds {secret:?}: {text}");
    }
    REDACTED.iter().all(|redacted| text.contains(redacted))
}

/// The command lines of both process tables.
async fn stored_command_lines(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT command_line FROM host_process_metrics WHERE command_line IS NOT NULL
         UNION ALL
         SELECT command_line FROM vm_process_metrics WHERE command_line IS NOT NULL",
    )
    .fetch_all(pool)
    .await
    .expect("command lines")
}

/// The bytes of every file in the spool `dir` (batches and half-written ones alike).
fn spool_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new(); // not created yet
    };
    entries
        .filter_map(|entry| {
            let path = entry.expect("a spool entry").path();
            // A file renamed or replayed meanwhile is read at the next poll.
            let content = std::fs::read(&path).ok()?;
            Some((path, content))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_on_a_command_line_reaches_neither_database_spool_nor_query_service() {
    let dir = TempDir::new("collector-redaction");
    let probe = Probe::start(dir.path());
    let db = TestDatabase::create().await;
    let pool = db.pool(2).await;
    sqlx::migrate!("../migrations")
        .run(&pool)
        .await
        .expect("the schema applies");

    // The database: the probe's rows, redacted.
    let collector = Collector::start(&dir.path().join("up"), &db.url());
    wait_until("the probe is recorded", DEADLINE, || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM host_process_metrics WHERE process_name = $1 AND pid = $2",
        )
        .bind(PROBE)
        .bind(i32::try_from(probe.pid()).expect("a pid"))
        .fetch_one(&pool)
        .await
        .expect("a count")
            > 0
    })
    .await;
    drop(collector);
    let stored = stored_command_lines(&pool).await;
    assert!(
        stored
            .iter()
            .any(|line| redacted_in("host_process_metrics", line)),
        "the probe's command line is stored redacted: {stored:?}"
    );
    for line in &stored {
        redacted_in("a process table", line);
    }

    // The spool: a collector whose database does not answer spools every sample.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let spooling = dir.path().join("down");
    let spool = spooling.join("spool");
    let collector = Collector::start(
        &spooling,
        &format!("postgres://postgres@127.0.0.1:{closed_port}/none?sslmode=disable"),
    );
    wait_until("the probe is spooled twice", DEADLINE, || {
        // Every file, as it is now, holds no secret; two batches hold the probe.
        let with_the_probe = spool_files(&spool)
            .iter()
            .filter(|(path, content)| {
                redacted_in(
                    &path.display().to_string(),
                    &String::from_utf8_lossy(content),
                )
            })
            .count();
        std::future::ready(with_the_probe >= 2)
    })
    .await;
    drop(collector);
    for (path, content) in spool_files(&spool) {
        redacted_in(
            &path.display().to_string(),
            &String::from_utf8_lossy(&content),
        );
    }

    // The query service's answer, over HTTP (who may ask is query-service/tests/access.rs).
    let config: QueryServiceConfig = serde_yaml::from_str(
        "authentication: none\nlistenAddress: 127.0.0.1:0\nschema: public\npool: {maxConnections: 2}\n\
         freshTtlSeconds: 1\nstaleWhileRevalidateSeconds: 1\nstaleIfErrorSeconds: 1\n\
         maxEntries: 100\nmaxBytes: 1048576\n",
    )
    .expect("a query service configuration");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("bound");
    let service = QueryService::new(&config, &db.url(), AccessPolicy::Open)
        .expect("the query service starts");
    tokio::spawn(service.run(listener, std::future::pending()));
    let response = reqwest::get(format!(
        "http://{address}/api/host-process-metrics?host=redaction-node&limit=1000"
    ))
    .await
    .expect("the query service answers");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body = response.text().await.expect("a body");
    assert!(
        redacted_in("the query service's answer", &body),
        "the answer holds the probe's redacted command line: {body}"
    );
}

#[test]
fn full_keeps_the_command_line_and_none_stores_none() {
    let dir = TempDir::new("collector-redaction");
    let probe = Probe::start(dir.path());
    let command_line = |policy: CommandLinePolicy| {
        let selection = ProcessConfig {
            top_by_cpu: 0,
            top_by_memory: 0,
            include: vec![format!("^{PROBE}$")],
            command_lines: policy,
            ..ProcessConfig::default()
        };
        let mut sampler = Sampler::new("test-node", &selection, "/proc".into()).expect("a sampler");
        let batch = sampler.sample(Utc::now(), None);
        let row = batch
            .processes
            .iter()
            .find(|row| row.pid as u32 == probe.pid())
            .expect("the probe is recorded");
        assert_eq!(row.process_name, PROBE, "the process name stays");
        row.command_line.clone()
    };
    let full = command_line(CommandLinePolicy::Full).expect("a command line");
    assert!(
        full.ends_with(&format!(
            "-c echo ready; read line {PROBE} --password=hunter2 --db=postgres://u:p@h/d"
        )),
        "{full}"
    );
    assert_eq!(command_line(CommandLinePolicy::None), None);
    let redacted = command_line(CommandLinePolicy::Redacted).expect("a command line");
    assert!(redacted_in("the default's row", &redacted), "{redacted}");
}
