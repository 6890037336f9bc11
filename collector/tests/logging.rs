//! The collector's log: JSON lines on standard output, each naming the MetricsStack the
//! collector serves (from the configuration the operator renders), whichever task logs it.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Whether `line` is the event whose message is `message`.
fn says(line: &Value, message: &str) -> bool {
    line["fields"]["message"] == message
}

/// The names of the spans `line` was logged in, outermost first.
fn span_names(line: &Value) -> Vec<&str> {
    line["spans"]
        .as_array()
        .map(|spans| spans.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn every_line_the_collector_logs_names_its_stack() {
    let dir = std::env::temp_dir().join(metricsstack_testkit::unique_name("collector-logging"));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let config = dir.join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "stack: {{namespace: team-a, name: metrics}}\nintervalSeconds: 1\n\
             podAttribution: false\nspoolDir: {}\nlistenAddress: 127.0.0.1:0\n\
             pool: {{maxConnections: 1, acquireTimeoutSeconds: 2}}\n",
            dir.join("spool").display()
        ),
    )
    .expect("the config is written");
    // A port nothing listens on: every write fails at once, and the writer task says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let mut collector = Command::new(env!("CARGO_BIN_EXE_collector"))
        .arg("--config")
        .arg(&config)
        .env(
            "DATABASE_URL",
            format!("postgres://metrics@{closed}/metrics"),
        )
        .env("NODE_NAME", "logging-node")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the collector starts");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = collector.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                lines.lock().expect("lines").push(line.expect("a line"));
            }
        })
    };

    // Until the writer task has failed a write, however long the first sample takes.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !lines
        .lock()
        .expect("lines")
        .iter()
        .any(|line| line.contains("writing a batch failed"))
    {
        if Instant::now() >= deadline {
            let _ = collector.kill();
            panic!("no failed write logged: {:?}", lines.lock().expect("lines"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &collector.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = collector.wait().expect("the collector exits");
    reader.join().expect("the output is read");
    std::fs::remove_dir_all(&dir).ok();
    assert!(exit.success(), "the collector exited with {exit}");

    let lines: Vec<Value> = lines
        .lock()
        .expect("lines")
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    for line in &lines {
        let root = &line["spans"][0];
        assert_eq!(
            (&root["name"], &root["stack.namespace"], &root["stack.name"]),
            (
                &Value::from("collector"),
                &Value::from("team-a"),
                &Value::from("metrics")
            ),
            "{line}"
        );
    }
    for message in [
        "collecting",
        "writing a batch failed; it waits in the spool",
        "stopped",
    ] {
        assert!(
            lines.iter().any(|line| says(line, message)),
            "no {message:?} in {lines:?}"
        );
    }
    // A failed write says which write it was: the spool's replay (also at shutdown).
    for failure in lines
        .iter()
        .filter(|line| says(line, "writing a batch failed; it waits in the spool"))
    {
        let spans = span_names(failure);
        assert!(spans.contains(&"replay"), "{spans:?}: {failure}");
    }
}
