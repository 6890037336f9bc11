//! The whole product, the way a platform team runs it: `helm install` the chart on the
//! test control plane (kube-apiserver, kube-controller-manager, kube-scheduler and kwok's
//! simulated nodes), run the operator with the arguments and the ServiceAccount the chart
//! gave it (a local process: no kubelet runs real pods here), apply the example resources,
//! and follow the data from a real collector to the query service's batch endpoint; then
//! GitOps-style changes to the storage policy, a revert, and deletion.
//!
//! The test TimescaleDB serves one client at a time, so the data path (collector and query
//! service, several connections) runs on `examples/fleet.yaml` backed by native PostgreSQL,
//! and `examples/timescale.yaml` backed by TimescaleDB carries the policy edits and the
//! revert. The database is inspected only while the operator is stopped, for the same
//! reason.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_testkit::connection_secret;
use metricsstack_testkit::{
    TestDatabase, TestNamespace, TimescaleSchema, helm, poll_batch, required_env, unique_name,
    wait_until,
};
use serde_json::{Value, json};

const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/metricsstack-operator"
);
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
const WAIT: Duration = Duration::from_secs(180);
/// The field manager of the "Git" side: `kubectl apply --server-side` or a GitOps tool.
const GITOPS: &str = "gitops";

#[tokio::test]
async fn helm_install_to_dashboard_then_edit_revert_and_delete() {
    let nodes: i32 = required_env("METRICSSTACK_TESTENV_NODES")
        .parse()
        .expect("a node count");
    assert!(
        nodes > 0,
        "the end-to-end test needs `testenv/run --nodes N` with N > 0"
    );
    let tsdb = TimescaleSchema::create().await;
    let postgres = TestDatabase::create().await;
    let system = TestNamespace::create().await;
    let stacks_ns = TestNamespace::create().await;
    let client = system.client.clone();
    let work = tempdir();

    // helm install, with the operator watching the stacks' namespace only.
    let release = Release::install(&system.name, &stacks_ns.name);
    let mut operator = OperatorProcess::from_chart(&client, &release, &work, "local").await;
    operator.start().await;
    // A second replica stands by, and is ready (a rollout must not wait on it forever).
    let mut standby = OperatorProcess::from_chart(&client, &release, &work, "standby").await;
    standby.start().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release.namespace);
    let holder = leases
        .get(&release.full_name())
        .await
        .expect("the chart's Lease")
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(holder, Some(format!("{}-local", release.full_name())));
    drop(standby);

    for (name, uri) in [("postgres", postgres.url()), ("timescaledb", tsdb.url())] {
        create_secret(&client, &stacks_ns.name, name, &uri).await;
    }
    let stacks: Api<MetricsStack> = Api::namespaced(client.clone(), &stacks_ns.name);
    let fleet = example("fleet.yaml", &stacks_ns.name, None);
    let timescale = example("timescale.yaml", &stacks_ns.name, Some(&tsdb.schema));
    apply(&stacks, &fleet).await;
    apply(&stacks, &timescale).await;

    // One collector pod per simulated node, and the stacks report it.
    let ready = wait_for(&stacks, "fleet", "Ready with every collector", |stack| {
        is_ready(stack)
            && stack
                .status
                .as_ref()
                .and_then(|s| s.collectors.as_ref())
                .is_some_and(|c| c.desired == nodes && c.ready == nodes)
    })
    .await;
    let summary = ready.status.and_then(|s| s.collectors).expect("collectors");
    assert_eq!(summary.summary, format!("{nodes}/{nodes}"));
    let timescale_ready = wait_for(&stacks, "timescale", "Ready", is_ready).await;

    // A real collector on this machine and the query service, with what the operator rendered.
    let node = unique_name("e2e-node");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &stacks_ns.name);
    let collector_config = rendered_config(
        &config_maps,
        "fleet-collector",
        "collector.yaml",
        &work,
        &[
            ("spoolDir", json!(work.join("spool"))),
            ("listenAddress", json!(format!("127.0.0.1:{}", free_port()))),
            ("procRoot", json!("/proc")),
            // The pods are kwok's: no process here belongs to one.
            ("podAttribution", json!(false)),
        ],
    )
    .await;
    let _collector = Supervised::spawn(
        Command::new(sibling_binary("collector"))
            .args(["--config".as_ref(), collector_config.as_os_str()])
            .env("DATABASE_URL", postgres.url())
            .env("NODE_NAME", &node),
        &work.join("collector.log"),
    );
    let query_port = free_port();
    let query_config = rendered_config(
        &config_maps,
        "fleet-query-service",
        "query-service.yaml",
        &work,
        // Callers' access checks are the query service's own tests (query-service/tests/
        // access.rs); here the data path is under test.
        &[
            ("listenAddress", json!(format!("127.0.0.1:{query_port}"))),
            ("authentication", json!("none")),
        ],
    )
    .await;
    let _query_service = Supervised::spawn(
        Command::new(env!("CARGO_BIN_EXE_metricsstack-operator"))
            .args([
                "query-service".as_ref(),
                "--config".as_ref(),
                query_config.as_os_str(),
            ])
            .env("DATABASE_URL", postgres.url()),
        &work.join("query-service.log"),
    );
    // The batch's parts are cached and queried each on its own, so one may come from before
    // the collector's first write and another from after: the wait is for all three.
    wait_for_samples(query_port, &node).await;

    // The TimescaleDB state the example declares.
    operator.stop();
    let first = policies(&tsdb).await;
    assert_eq!(
        first.len() as i32,
        timescale_ready
            .status
            .and_then(|s| s.database)
            .expect("database status")
            .policies,
        "status counts the policies in the database: {first:#?}"
    );
    operator.start().await;

    // `kubectl edit`: compress sooner, keep data longer, keep the rollup longer.
    let mut edited_storage = timescale["spec"]["storage"].clone();
    edited_storage["tables"][0]["compression"]["after"] = json!("2d");
    edited_storage["tables"][0]["retention"]["dropAfter"] = json!("180d");
    edited_storage["aggregates"][0]["retention"]["dropAfter"] = json!("2y");
    let edited = stacks
        .patch(
            "timescale",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "storage": edited_storage } })),
        )
        .await
        .expect("the edit is accepted");
    wait_for_applied(&stacks, edited.metadata.generation.expect("generation")).await;
    operator.stop();
    let after_edit = policies(&tsdb).await;
    assert_ne!(after_edit, first, "the edit changed the database");
    let changed: Vec<&String> = after_edit.iter().filter(|p| !first.contains(p)).collect();
    assert_eq!(changed.len(), 3, "three policies changed: {changed:#?}");
    assert!(
        changed
            .iter()
            .any(|p| p.contains("host_process_metrics: policy_compression")
                && p.contains("\"compress_after\": \"2 days\"")),
        "{changed:#?}"
    );
    assert!(
        changed
            .iter()
            .any(|p| p.contains("host_process_metrics: policy_retention")
                && p.contains("\"drop_after\": \"180 days\"")),
        "{changed:#?}"
    );
    operator.start().await;

    // Revert in Git: apply the original YAML again.
    let reverted = apply(&stacks, &timescale).await;
    wait_for_applied(&stacks, reverted.metadata.generation.expect("generation")).await;
    operator.stop();
    assert_eq!(
        policies(&tsdb).await,
        first,
        "re-applying the original brings the database back"
    );
    operator.start().await;

    // Delete: RemovePolicies (timescale) removes the stack's policies, Retain (fleet) keeps
    // the database as it is; both lose their ClusterRoleBindings.
    for name in ["fleet", "timescale"] {
        stacks
            .delete(name, &DeleteParams::default())
            .await
            .expect("deleted");
    }
    for name in ["fleet", "timescale"] {
        wait_until(&format!("{name} is gone"), WAIT, || async {
            stacks.get_opt(name).await.expect("get").is_none()
        })
        .await;
    }
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    for (name, component) in [
        ("fleet", "collector"),
        ("fleet", "query-service"),
        ("timescale", "collector"),
        ("timescale", "query-service"),
    ] {
        let binding = format!("metricsstack-{component}-{}-{name}", stacks_ns.name);
        assert!(
            bindings.get_opt(&binding).await.expect("get").is_none(),
            "{binding} is removed"
        );
    }
    operator.stop();
    assert_eq!(
        policies(&tsdb).await,
        Vec::<String>::new(),
        "deletionPolicy RemovePolicies"
    );
    let pool = postgres.pool(1).await;
    let samples: i64 = sqlx::query_scalar("SELECT count(*) FROM metrics.host_overall_metrics")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert!(samples > 0, "deletionPolicy Retain keeps the data");
    pool.close().await;
    release.uninstall();
}

/// A Helm release of the chart, watching one namespace.
struct Release {
    name: String,
    namespace: String,
}

impl Release {
    fn install(namespace: &str, watch_namespace: &str) -> Self {
        let name = unique_name("e2e");
        helm(&[
            "install",
            &name,
            CHART,
            "--namespace",
            namespace,
            "--set",
            // A lease far longer than any stall of a loaded machine: the standby must not take
            // over, and nothing here waits for a lease to run out (the leader restarts under
            // its own identity and takes its lease straight back).
            &format!("watchNamespace={watch_namespace},leaderElection.leaseDurationSeconds=60"),
            // kwok runs the operator's pod as a simulated one: Ready, but doing nothing.
            "--wait",
            "--timeout",
            "5m",
        ]);
        Self {
            name,
            namespace: namespace.to_owned(),
        }
    }

    fn full_name(&self) -> String {
        format!("{}-metricsstack-operator", self.name)
    }

    fn uninstall(self) {
        helm(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--wait",
        ]);
    }
}

/// The operator as a local process, started with the container arguments and environment
/// of the chart's Deployment and the credentials of the chart's ServiceAccount, so that
/// the chart's RBAC is what it runs under.
struct OperatorProcess {
    command: Vec<String>,
    environment: Vec<(String, String)>,
    admin: String,
    log: PathBuf,
    running: Option<Supervised>,
}

impl OperatorProcess {
    async fn from_chart(client: &Client, release: &Release, work: &Path, instance: &str) -> Self {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release.namespace);
        let deployment = deployments
            .get(&release.full_name())
            .await
            .expect("the chart's Deployment");
        let pod = deployment
            .spec
            .and_then(|s| s.template.spec)
            .expect("a pod template");
        let container = &pod.containers[0];
        let admin = format!("127.0.0.1:{}", free_port());
        let command = container
            .args
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|arg| {
                if arg.starts_with("--admin-address=") {
                    format!("--admin-address={admin}")
                } else if arg.starts_with("--webhook-address=") {
                    format!("--webhook-address=127.0.0.1:{}", free_port())
                } else {
                    arg
                }
            })
            .collect();
        let pod_name = format!("{}-{instance}", release.full_name());
        let environment = container
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|var| {
                let field = var
                    .value_from
                    .as_ref()
                    .and_then(|from| from.field_ref.as_ref())
                    .map(|field| field.field_path.as_str());
                let value = match field {
                    Some("metadata.name") => pod_name.clone(),
                    Some("metadata.namespace") => release.namespace.clone(),
                    Some(other) => panic!("the test does not resolve fieldRef {other}"),
                    None => var.value.clone().unwrap_or_default(),
                };
                (var.name, value)
            })
            .chain([(
                "KUBECONFIG".to_owned(),
                service_account_kubeconfig(client, release, work)
                    .await
                    .display()
                    .to_string(),
            )])
            .collect();
        Self {
            command,
            environment,
            admin,
            log: work.join(format!("operator-{instance}.log")),
            running: None,
        }
    }

    /// Starts the operator and waits until it is ready (leading, cache synced).
    async fn start(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_metricsstack-operator"));
        command.args(&self.command).envs(self.environment.clone());
        self.running = Some(Supervised::spawn(&mut command, &self.log));
        let url = format!("http://{}/readyz", self.admin);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(response) = reqwest::get(&url).await
                && response.status().is_success()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the operator is not ready; see {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the operator (SIGTERM, as Kubernetes does) and waits for it to exit.
    fn stop(&mut self) {
        let mut process = self.running.take().expect("the operator runs");
        let status = process.terminate();
        assert!(
            status.success(),
            "the operator exits cleanly on SIGTERM ({status}); see {}",
            self.log.display()
        );
    }
}

/// A kubeconfig with a short-lived token of the chart's ServiceAccount.
async fn service_account_kubeconfig(client: &Client, release: &Release, work: &Path) -> PathBuf {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &release.namespace);
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": { "audiences": [], "expirationSeconds": 3600 }
    }))
    .expect("a TokenRequest");
    let token = accounts
        .create_token_request(&release.full_name(), &PostParams::default(), &request)
        .await
        .expect("a token for the chart's ServiceAccount")
        .status
        .expect("the token")
        .token;
    let admin: Value = serde_yaml::from_str(
        &std::fs::read_to_string(required_env("KUBECONFIG")).expect("the test kubeconfig"),
    )
    .expect("YAML");
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{ "name": "operator", "user": { "token": token } }],
        "contexts": [{ "name": "operator", "context": {
            "cluster": admin["clusters"][0]["name"], "user": "operator"
        } }],
        "current-context": "operator",
    });
    let path = work.join("operator.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).expect("YAML")).expect("written");
    path
}

/// A child process killed when dropped, its output in a log file.
struct Supervised(Child);

impl Supervised {
    fn spawn(command: &mut Command, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the log file opens");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        Self(child)
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        self.0.wait().expect("the process exits")
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

/// A binary of another workspace package, built by `cargo test --workspace` next to the
/// test's own directory.
fn sibling_binary(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test's path");
    let path = test
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or build it with \
         `cargo build -p metricsstack-collector`)",
        path.display()
    );
    path
}

fn tempdir() -> PathBuf {
    let path = std::env::temp_dir().join(unique_name("metricsstack-e2e"));
    std::fs::create_dir_all(&path).expect("a work directory");
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// An example resource, moved to `namespace` (and to `schema` on TimescaleDB).
fn example(file: &str, namespace: &str, schema: Option<&str>) -> Value {
    let text = std::fs::read_to_string(Path::new(EXAMPLES).join(file)).expect("the example");
    let mut stack: Value = serde_yaml::from_str(&text).expect("the example is YAML");
    stack["metadata"]["namespace"] = json!(namespace);
    if let Some(schema) = schema {
        stack["spec"]["database"]["schema"] = json!(schema);
    }
    stack
}

/// Applies a manifest as `kubectl apply --server-side` would, taking back fields another
/// manager changed (what a GitOps tool does on sync).
async fn apply(stacks: &Api<MetricsStack>, manifest: &Value) -> MetricsStack {
    let name = manifest["metadata"]["name"].as_str().expect("a name");
    stacks
        .patch(
            name,
            &PatchParams::apply(GITOPS).force(),
            &Patch::Apply(manifest),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {name} failed: {e}"))
}

async fn create_secret(client: &Client, namespace: &str, name: &str, uri: &str) {
    let secret = connection_secret(name, uri);
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .expect("the Secret is created");
}

/// Writes the configuration the operator rendered into a ConfigMap to a file, with the
/// settings that only make sense inside a pod replaced for this machine.
async fn rendered_config(
    config_maps: &Api<ConfigMap>,
    name: &str,
    key: &str,
    work: &Path,
    replace: &[(&str, Value)],
) -> PathBuf {
    let config_map = config_maps.get(name).await.expect("the rendered ConfigMap");
    let text = config_map
        .data
        .and_then(|mut d| d.remove(key))
        .unwrap_or_else(|| panic!("{name} has {key}"));
    let mut config: Value = serde_yaml::from_str(&text).expect("the rendered YAML");
    for (setting, value) in replace {
        assert!(
            config.get(setting).is_some(),
            "{name}/{key} has the setting {setting}: {text}"
        );
        config[setting] = value.clone();
    }
    let path = work.join(key);
    std::fs::write(&path, serde_yaml::to_string(&config).expect("YAML")).expect("written");
    path
}

/// Polls the batch endpoint until the collector's samples show up in the node's, the
/// processes' and the top processes' parts.
async fn wait_for_samples(port: u16, node: &str) {
    poll_batch(
        &format!("http://127.0.0.1:{port}/api/dashboard/batch"),
        None,
        &json!({ "window": "15m", "host": node }),
        |batch| {
            [
                "host_overall_metrics",
                "host_process_metrics",
                "top_processes",
            ]
            .iter()
            .all(|part| !rows(batch, part).is_empty())
        },
        WAIT,
    )
    .await;
}

fn rows<'a>(batch: &'a Value, part: &str) -> &'a [Value] {
    batch[part]["rows"].as_array().map_or(&[], Vec::as_slice)
}

/// The TimescaleDB policies of the test's schema, one line each: the table or aggregate,
/// the job's procedure, schedule and configuration, plus each hypertable's chunk interval.
async fn policies(tsdb: &TimescaleSchema) -> Vec<String> {
    let mut conn = tsdb.connect().await;
    let policies: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(c.view_name, j.hypertable_name) || ': ' || j.proc_name
                || ' every ' || j.schedule_interval::text || ' ' || j.config::text
           FROM timescaledb_information.jobs j
           LEFT JOIN timescaledb_information.continuous_aggregates c
             ON c.materialization_hypertable_schema = j.hypertable_schema
            AND c.materialization_hypertable_name = j.hypertable_name
          WHERE j.hypertable_schema = $1 OR c.view_schema = $1
          ORDER BY 1",
    )
    .bind(&tsdb.schema)
    .fetch_all(&mut conn)
    .await
    .expect("the jobs");
    sqlx::Connection::close(conn).await.expect("closed");
    policies
}

fn is_ready(stack: &MetricsStack) -> bool {
    stack.status.as_ref().is_some_and(|s| {
        s.observed_generation == stack.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Waits until the TimescaleDB stack's status shows `generation` applied to the database.
async fn wait_for_applied(stacks: &Api<MetricsStack>, generation: i64) -> MetricsStack {
    wait_for(stacks, "timescale", "the edit applied", |stack| {
        is_ready(stack)
            && stack
                .status
                .as_ref()
                .and_then(|s| s.database.as_ref())
                .and_then(|d| d.applied_revisions.first())
                .is_some_and(|r| r.generation == generation)
    })
    .await
}

async fn wait_for(
    stacks: &Api<MetricsStack>,
    name: &str,
    what: &str,
    check: impl Fn(&MetricsStack) -> bool,
) -> MetricsStack {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stack = stacks.get(name).await.expect("the stack");
        if check(&stack) {
            return stack;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: {what} within {WAIT:?}; status: {:#?}",
            stack.status
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
