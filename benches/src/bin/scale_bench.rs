//! Benchmark: one MetricsStack on a cluster of many simulated nodes. It measures how long
//! the cluster takes to run a ready collector on every node (kube-controller-manager,
//! kube-scheduler and kwok: the floor no operator can beat), how long until the stack's
//! status reports them all, and the operator's peak RSS and CPU time, the operator running
//! as its own release-built process.
//!
//!   scripts/bench-scale [--nodes 1000]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, CustomResourceExt as _};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_testkit::{connection_secret, install_crd};
use serde_json::json;

/// The targets the issue sets for 1,000 nodes.
const TARGET_SECONDS: f64 = 60.0;
const TARGET_MIB: f64 = 50.0;
const TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("METRICSSTACK_TEST_POSTGRES_URL")
        .context("METRICSSTACK_TEST_POSTGRES_URL is not set: run through scripts/bench-scale")?;
    let client = Client::try_default().await.context("KUBECONFIG")?;
    let nodes = Api::<Node>::all(client.clone())
        .list_metadata(&ListParams::default().labels("type=kwok"))
        .await?
        .items
        .len();
    if nodes == 0 {
        bail!("no simulated nodes: run through scripts/bench-scale");
    }
    let name = format!("scale-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": name } }))?,
        )
        .await?;
    let result = run(&client, &name, &url).await;
    namespaces
        .delete(&name, &DeleteParams::default())
        .await
        .ok();
    let run = result?;

    let cluster = run.daemon_set_ready.as_secs_f64();
    let operator = run.status_ready.as_secs_f64();
    let peak = run.peak_rss_kib as f64 / 1024.0;
    println!("\nOne MetricsStack on {nodes} simulated nodes:");
    println!("  collectors ready in the DaemonSet (cluster)   {cluster:>7.1} s   (the floor)");
    println!(
        "  collectors {nodes}/{nodes} in the stack's status    {operator:>7.1} s   ratio to the floor {:.2}, to the {TARGET_SECONDS:.0} s target {:.2}",
        operator / cluster,
        operator / TARGET_SECONDS
    );
    println!(
        "  operator peak RSS                             {peak:>7.1} MiB (idle before the stack {:.1} MiB), ratio to the {TARGET_MIB:.0} MB target {:.2}",
        run.idle_rss_kib as f64 / 1024.0,
        peak / TARGET_MIB
    );
    println!(
        "  operator CPU time                             {:>7.1} s   reconciles {}",
        run.cpu.as_secs_f64(),
        run.reconciles
    );
    Ok(())
}

/// What one run measured.
struct Run {
    daemon_set_ready: Duration,
    status_ready: Duration,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
    cpu: Duration,
    reconciles: u64,
}

async fn run(client: &Client, namespace: &str, url: &str) -> anyhow::Result<Run> {
    install_crd(client, &MetricsStack::crd(), "scale-bench").await?;
    let secret = connection_secret("db", url);
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await?;

    let admin = format!("127.0.0.1:{}", free_port()?);
    let operator = OperatorProcess::start(namespace, &admin)?;
    operator.wait_ready(&admin).await?;
    let idle_rss_kib = operator.rss_kib("VmRSS")?;

    let stacks: Api<MetricsStack> = Api::namespaced(client.clone(), namespace);
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let stack: MetricsStack = serde_json::from_value(json!({
        "apiVersion": "metricsstack.dev/v1alpha1", "kind": "MetricsStack",
        "metadata": { "name": "fleet" },
        "spec": {
            "database": { "secretRef": { "name": "db" }, "tlsMode": "Disable", "schema": namespace.replace('-', "_") },
            "deletionPolicy": "Retain"
        }
    }))?;
    let started = Instant::now();
    stacks.create(&PostParams::default(), &stack).await?;
    let mut daemon_set_ready = None;
    let status_ready = loop {
        if started.elapsed() > TIMEOUT {
            bail!("the collectors were not all ready within {TIMEOUT:?}");
        }
        if daemon_set_ready.is_none()
            && let Some(status) = daemon_sets
                .get_opt("fleet-collector")
                .await?
                .and_then(|d| d.status)
            && status.desired_number_scheduled > 0
            && status.number_ready == status.desired_number_scheduled
        {
            daemon_set_ready = Some(started.elapsed());
        }
        let collectors = stacks.get("fleet").await?.status.and_then(|s| s.collectors);
        if let Some(c) = collectors
            && c.desired > 0
            && c.ready == c.desired
        {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let daemon_set_ready = daemon_set_ready.unwrap_or(status_ready);
    let peak_rss_kib = operator.rss_kib("VmHWM")?;
    let cpu = operator.cpu()?;
    let reconciles = operator.reconciles(&admin).await?;
    stacks.delete("fleet", &DeleteParams::default()).await?;
    for _ in 0..600 {
        if stacks.get_opt("fleet").await?.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    operator.stop();
    Ok(Run {
        daemon_set_ready,
        status_ready,
        idle_rss_kib,
        peak_rss_kib,
        cpu,
        reconciles,
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The release-built operator, next to this binary, watching one namespace.
struct OperatorProcess(Child);

impl OperatorProcess {
    fn start(namespace: &str, admin: &str) -> anyhow::Result<Self> {
        let binary: PathBuf = std::env::current_exe()?
            .parent()
            .context("the bench's directory")?
            .join("metricsstack-operator");
        let child = Command::new(&binary)
            .args(["run", "--no-leader-election", "--namespace", namespace])
            .args(["--admin-address", admin])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self(child))
    }

    async fn wait_ready(&self, admin: &str) -> anyhow::Result<()> {
        for _ in 0..300 {
            if let Ok(response) = http_get(admin, "/readyz").await
                && response.starts_with("ready")
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the operator did not become ready")
    }

    /// A memory figure of /proc/<pid>/status in KiB (VmRSS now, VmHWM the peak).
    fn rss_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .with_context(|| format!("{field} in /proc/<pid>/status"))
    }

    /// User and system CPU time so far.
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id()))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("/proc/<pid>/stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // The kernel's USER_HZ is 100 on every Linux architecture Rust targets.
        Ok(Duration::from_millis(ticks * 10))
    }

    async fn reconciles(&self, admin: &str) -> anyhow::Result<u64> {
        let metrics = http_get(admin, "/metrics").await?;
        Ok(metrics
            .lines()
            .find_map(|l| l.strip_prefix("metricsstack_operator_reconciles_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    fn stop(mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// GETs a path from the operator's admin server and returns the body.
async fn http_get(address: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response")?;
    Ok(body.to_owned())
}
