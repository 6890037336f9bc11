//! The reconciler against the real API server (with kube-controller-manager, kube-scheduler
//! and kwok's simulated nodes) and native PostgreSQL: it creates, updates and cleans up every
//! object, writes nothing when nothing changed, recovers from a missing Secret, and warns
//! when the query API's authentication is off.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, ResourceExt};
use metricsstack_common::admin::RenderMetrics as _;
use metricsstack_common::config::CollectorConfig;
use metricsstack_operator::controller::{self, Context};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_operator::metrics::Metrics;
use metricsstack_operator::resources::CONFIG_CHECKSUM_ANNOTATION;
use metricsstack_testkit::connection_secret;
use metricsstack_testkit::{
    TestDatabase, TestNamespace, TimescaleSchema, required_env, wait_until,
};
use serde_json::json;
use sqlx::ConnectOptions as _;

const WAIT: Duration = Duration::from_secs(90);

/// The operator, running in this test's process and watching only its namespace.
struct Operator {
    metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    fn start(ns: &TestNamespace) -> Self {
        let metrics = Arc::new(Metrics::default());
        let context = Arc::new(Context::new(ns.client.clone(), metrics.clone(), "test"));
        let namespace = ns.name.clone();
        let task = tokio::spawn(async move {
            controller::run(context, Some(&namespace), || {}).await;
        });
        Self { metrics, task }
    }

    fn reconciles(&self) -> u64 {
        let text = self.metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix("metricsstack_operator_reconciles_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The number of simulated nodes, each of which must run a collector.
fn simulated_nodes() -> i32 {
    let nodes: i32 = required_env("METRICSSTACK_TESTENV_NODES")
        .parse()
        .expect("METRICSSTACK_TESTENV_NODES is a number");
    assert!(
        nodes > 0,
        "these tests need simulated nodes: run them with `testenv/run --nodes 3`"
    );
    nodes
}

async fn create_secret(client: &Client, namespace: &str, uri: &str) {
    let secret = connection_secret("db", uri);
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .expect("the Secret is created");
}

/// The MetricsStack `name` in `namespace`: on the Secret `db` without TLS, with test images,
/// and `spec` merged over that (objects key by key, anything else replaced).
fn stack_object(namespace: &str, name: &str, spec: serde_json::Value) -> MetricsStack {
    fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
        match (base, over) {
            (serde_json::Value::Object(base), serde_json::Value::Object(over)) => {
                for (key, value) in over {
                    merge(base.entry(key).or_insert(serde_json::Value::Null), value);
                }
            }
            (base, over) => *base = over,
        }
    }
    let mut full = json!({
        "database": { "secretRef": { "name": "db" }, "tlsMode": "Disable" },
        "collector": { "image": "collector:test" },
        "queryService": { "image": "operator:test" }
    });
    merge(&mut full, spec);
    serde_json::from_value(json!({
        "apiVersion": "metricsstack.dev/v1alpha1",
        "kind": "MetricsStack",
        "metadata": { "name": name, "namespace": namespace },
        "spec": full
    }))
    .expect("a MetricsStack")
}

async fn create_stack(client: &Client, namespace: &str, replicas: i32) -> Api<MetricsStack> {
    common::install_crd(client).await;
    let stack: MetricsStack = serde_json::from_value(json!({
        "apiVersion": "metricsstack.dev/v1alpha1",
        "kind": "MetricsStack",
        "metadata": { "name": "stack", "namespace": namespace },
        "spec": {
            "database": { "secretRef": { "name": "db" }, "tlsMode": "Disable" },
            "collector": { "image": "collector:test", "interval": "5s" },
            "queryService": { "image": "operator:test", "replicas": replicas, "port": 8080 },
            "deletionPolicy": "Retain"
        }
    }))
    .expect("a MetricsStack");
    let api: Api<MetricsStack> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &stack)
        .await
        .expect("the MetricsStack is created");
    api
}

fn condition<'a>(
    stack: &'a MetricsStack,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    stack
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

async fn wait_for(
    api: &Api<MetricsStack>,
    what: &str,
    check: impl Fn(&MetricsStack) -> bool,
) -> MetricsStack {
    let result = tokio::time::timeout(
        WAIT,
        await_condition(api.clone(), "stack", move |s: Option<&MetricsStack>| {
            s.is_some_and(&check)
        }),
    )
    .await;
    match result {
        Ok(Ok(Some(stack))) => stack,
        _ => {
            let now = api.get("stack").await.ok();
            panic!(
                "timed out waiting until {what}; status: {:#?}",
                now.and_then(|s| s.status)
            );
        }
    }
}

fn is_ready(stack: &MetricsStack) -> bool {
    condition(stack, "Ready").is_some_and(|c| c.status == "True")
}

/// The resourceVersion of an object that must exist.
async fn version<K>(api: Api<K>, name: &str) -> Option<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let object = api
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    object.resource_version()
}

#[tokio::test]
async fn creates_updates_and_cleans_up_every_object() {
    let nodes = simulated_nodes();
    let ns = TestNamespace::create().await;
    let db = TestDatabase::create().await;
    let client = ns.client.clone();
    let _operator = Operator::start(&ns);
    create_secret(&client, &ns.name, &db.url()).await;
    let stacks = create_stack(&client, &ns.name, 2).await;

    let stack = wait_for(&stacks, "the stack is Ready", is_ready).await;
    let status = stack.status.expect("status");
    let collectors = status.collectors.expect("collectors");
    assert_eq!((collectors.desired, collectors.ready), (nodes, nodes));
    assert_eq!(collectors.summary, format!("{nodes}/{nodes}"));
    assert_eq!(status.observed_generation, stack.metadata.generation);
    assert!(
        stack
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&controller::FINALIZER.to_owned())
    );

    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    for name in ["stack-collector", "stack-query-service"] {
        accounts
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("ServiceAccount {name}: {e}"));
    }
    let binding = Api::<ClusterRoleBinding>::all(client.clone())
        .get(&format!("metricsstack-collector-{}-stack", ns.name))
        .await
        .expect("the ClusterRoleBinding exists");
    assert_eq!(
        binding.subjects.expect("subjects")[0].name,
        "stack-collector"
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let collector_config = |map: ConfigMap| -> CollectorConfig {
        serde_yaml::from_str(&map.data.expect("data")["collector.yaml"])
            .expect("a collector config")
    };
    let config = collector_config(config_maps.get("stack-collector").await.expect("ConfigMap"));
    assert_eq!(config.interval_seconds, 5);
    assert_eq!(
        (config.stack.namespace.as_str(), config.stack.name.as_str()),
        (ns.name.as_str(), "stack"),
        "the collector's configuration names its stack, for its spans"
    );
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    let daemon_set = daemon_sets.get("stack-collector").await.expect("DaemonSet");
    let pod = daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    assert_eq!(pod.containers[0].image.as_deref(), Some("collector:test"));
    assert_eq!(pod.host_pid, Some(true));
    let checksum = |d: &DaemonSet| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .and_then(|a| a.get("metricsstack.dev/config-checksum").cloned())
    };
    let first_checksum = checksum(&daemon_set).expect("a checksum annotation");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment = deployments
        .get("stack-query-service")
        .await
        .expect("Deployment");
    assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(2));
    let service = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get("stack-query-service")
        .await
        .expect("Service");
    assert_eq!(
        service.spec.and_then(|s| s.ports).expect("ports")[0].port,
        8080
    );
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    budgets
        .get("stack-query-service")
        .await
        .expect("two replicas have a PodDisruptionBudget");

    // Editing the spec updates the objects: one replica drops the budget, a new interval
    // changes the configuration and rolls the collectors through the checksum.
    stacks
        .patch(
            "stack",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": {
                "queryService": { "replicas": 1 }, "collector": { "interval": "10s" }
            } })),
        )
        .await
        .expect("the spec is edited");
    wait_until("the edit is applied", WAIT, || async {
        let replicas = deployments
            .get("stack-query-service")
            .await
            .ok()
            .and_then(|d| d.spec)
            .and_then(|s| s.replicas);
        let budget = budgets.get_opt("stack-query-service").await.expect("get");
        replicas == Some(1) && budget.is_none()
    })
    .await;
    let config = collector_config(config_maps.get("stack-collector").await.expect("ConfigMap"));
    assert_eq!(config.interval_seconds, 10);
    let daemon_set = daemon_sets.get("stack-collector").await.expect("DaemonSet");
    assert_ne!(checksum(&daemon_set).expect("checksum"), first_checksum);
    wait_for(&stacks, "the edited stack is Ready again", |s| {
        is_ready(s)
            && s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
    })
    .await;

    // Deleting it removes the cluster-scoped binding (finalizer) and, through owner
    // references, everything else (garbage collector).
    stacks
        .delete("stack", &DeleteParams::default())
        .await
        .expect("the stack is deleted");
    wait_until("the stack and its objects are gone", WAIT, || async {
        let stack = stacks.get_opt("stack").await.expect("get");
        let binding = Api::<ClusterRoleBinding>::all(client.clone())
            .get_opt(&format!("metricsstack-collector-{}-stack", ns.name))
            .await
            .expect("get");
        let daemon_set = daemon_sets.get_opt("stack-collector").await.expect("get");
        let config_map = config_maps.get_opt("stack-collector").await.expect("get");
        stack.is_none() && binding.is_none() && daemon_set.is_none() && config_map.is_none()
    })
    .await;
}

#[tokio::test]
async fn a_reconcile_without_changes_writes_nothing() {
    simulated_nodes();
    let ns = TestNamespace::create().await;
    let db = TestDatabase::create().await;
    let client = ns.client.clone();
    let operator = Operator::start(&ns);
    create_secret(&client, &ns.name, &db.url()).await;
    let stacks = create_stack(&client, &ns.name, 2).await;
    wait_for(&stacks, "the stack is Ready", is_ready).await;

    let versions = || async {
        let mut versions = BTreeMap::new();
        versions.insert("MetricsStack", version(stacks.clone(), "stack").await);
        let (collector, query) = ("stack-collector", "stack-query-service");
        let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &ns.name);
        let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns.name);
        versions.insert(
            "ServiceAccount collector",
            version(accounts.clone(), collector).await,
        );
        versions.insert("ServiceAccount query", version(accounts, query).await);
        versions.insert(
            "ConfigMap collector",
            version(config_maps.clone(), collector).await,
        );
        versions.insert("ConfigMap query", version(config_maps, query).await);
        let daemon_sets = Api::<DaemonSet>::namespaced(client.clone(), &ns.name);
        versions.insert("DaemonSet", version(daemon_sets, collector).await);
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
        versions.insert("Deployment", version(deployments, query).await);
        let services = Api::<Service>::namespaced(client.clone(), &ns.name);
        versions.insert("Service", version(services, query).await);
        let budgets = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name);
        versions.insert("PodDisruptionBudget", version(budgets, query).await);
        let binding = format!("metricsstack-collector-{}-stack", ns.name);
        let bindings = Api::<ClusterRoleBinding>::all(client.clone());
        versions.insert(
            "ClusterRoleBinding collector",
            version(bindings.clone(), &binding).await,
        );
        let binding = format!("metricsstack-query-service-{}-stack", ns.name);
        versions.insert(
            "ClusterRoleBinding query",
            version(bindings, &binding).await,
        );
        let policies = Api::<NetworkPolicy>::namespaced(client.clone(), &ns.name);
        versions.insert(
            "NetworkPolicy collector",
            version(policies.clone(), collector).await,
        );
        versions.insert("NetworkPolicy query", version(policies, query).await);
        versions
    };
    // The stack turns Ready while others may still write: the controllers that keep its
    // objects' status (the Deployment's conditions, the budget's counts), and a reconcile
    // that started from an older view of the stack. So snapshots are compared on either side
    // of a reconcile that ran entirely between them, until the objects settle; an operator
    // that writes on every reconcile never gives a matching pair.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut touches = 0;
    let mut before = versions().await;
    loop {
        // Two wake-ups, each awaited: the second reconcile to finish from here started after
        // the snapshot, even if one was running while it was taken.
        let reconciles = operator.reconciles();
        for finished in [reconciles + 1, reconciles + 2] {
            touches += 1;
            touch(&secrets, "db", touches).await;
            wait_until("another reconcile ran", WAIT, || async {
                operator.reconciles() >= finished
            })
            .await;
        }
        let after = versions().await;
        if after == before {
            break;
        }
        let written: Vec<&str> = after
            .iter()
            .filter(|(object, version)| before.get(*object) != Some(*version))
            .map(|(object, _)| *object)
            .collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "a reconcile without changes must not write, yet these never stopped changing: \
             {written:?}"
        );
        before = after;
    }
}

/// Labels a Secret anew, which wakes the controller for the stacks that reference it.
async fn touch(secrets: &Api<Secret>, name: &str, touches: u32) {
    secrets
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "touched": touches.to_string() } } })),
        )
        .await
        .expect("the Secret is labelled");
}

#[tokio::test]
async fn a_missing_secret_is_reported_and_fixed_by_creating_it() {
    simulated_nodes();
    let ns = TestNamespace::create().await;
    let db = TestDatabase::create().await;
    let client = ns.client.clone();
    let _operator = Operator::start(&ns);
    let stacks = create_stack(&client, &ns.name, 1).await;
    let stack = wait_for(&stacks, "DatabaseReady reports SecretNotFound", |s| {
        condition(s, "DatabaseReady")
            .is_some_and(|c| c.status == "False" && c.reason == "SecretNotFound")
    })
    .await;
    let message = &condition(&stack, "DatabaseReady")
        .expect("condition")
        .message;
    assert!(message.contains(&format!("{}/db", ns.name)), "{message}");
    assert!(!is_ready(&stack));

    create_secret(&client, &ns.name, &db.url()).await;
    let stack = wait_for(
        &stacks,
        "the stack is Ready after the Secret appears",
        is_ready,
    )
    .await;
    assert_eq!(
        condition(&stack, "DatabaseReady")
            .expect("condition")
            .reason,
        "AsExpected"
    );
    assert_eq!(
        condition(&stack, "QueryServiceAuthenticated").map(|c| c.status.as_str()),
        Some("True")
    );

    // A rotated Secret rolls the pods: their DATABASE_URL is fixed when they start, so the
    // pod template's checksum covers (a digest of) the connection the operator read.
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    let checksum = |daemon_set: &DaemonSet| {
        (daemon_set.spec.as_ref())
            .and_then(|spec| spec.template.metadata.as_ref())
            .and_then(|meta| meta.annotations.as_ref())
            .and_then(|annotations| annotations.get(CONFIG_CHECKSUM_ANNOTATION).cloned())
    };
    let before = checksum(
        &daemon_sets
            .get("stack-collector")
            .await
            .expect("the DaemonSet"),
    );
    assert!(before.is_some());
    let url = db.url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let rotated = connection_secret("db", &format!("{url}{separator}application_name=rotated"));
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .replace("db", &PostParams::default(), &rotated)
        .await
        .expect("the Secret is replaced");
    wait_until(
        "the collector pods' checksum follows the rotated Secret",
        WAIT,
        || {
            let (daemon_sets, before) = (daemon_sets.clone(), before.clone());
            async move {
                let now = daemon_sets.get("stack-collector").await.ok();
                now.is_some_and(|d| checksum(&d).is_some() && checksum(&d) != before)
            }
        },
    )
    .await;

    // Turning the query API's authentication off is the spec's choice: a warning condition
    // (and event) that does not hold Ready back.
    let open = json!({ "spec": { "queryService": { "authentication": "None" } } });
    stacks
        .patch("stack", &PatchParams::default(), &Patch::Merge(&open))
        .await
        .expect("the stack is patched");
    // (The patch rolls the query service pod, and the rotation above the collectors: Ready
    // follows once they are back, with the warning still shown.)
    let stack = wait_for(
        &stacks,
        "the open query service is warned about, and the stack is Ready",
        |s| {
            is_ready(s)
                && condition(s, "QueryServiceAuthenticated")
                    .is_some_and(|c| c.status == "False" && c.reason == "AuthenticationDisabled")
        },
    )
    .await;
    let message = &condition(&stack, "QueryServiceAuthenticated")
        .expect("condition")
        .message;
    assert!(
        message.contains("spec.queryService.authentication is None"),
        "{message}"
    );
}

#[tokio::test]
async fn timescaledb_policies_follow_the_resource_and_go_with_it() {
    simulated_nodes();
    let tsdb = TimescaleSchema::create().await;
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    let operator = Operator::start(&ns);
    create_secret(&client, &ns.name, &tsdb.url()).await;
    common::install_crd(&client).await;
    let stack: MetricsStack = serde_json::from_value(json!({
        "apiVersion": "metricsstack.dev/v1alpha1",
        "kind": "MetricsStack",
        "metadata": { "name": "stack", "namespace": ns.name },
        "spec": {
            // The test server is one session: the operator keeps to one connection.
            "database": { "secretRef": { "name": "db" }, "tlsMode": "Disable", "schema": tsdb.schema,
                          "pools": { "operator": { "maxConnections": 1 } } },
            "collector": { "image": "collector:test" },
            "queryService": { "image": "operator:test", "replicas": 1 },
            "deletionPolicy": "RemovePolicies"
        }
    }))
    .expect("a MetricsStack");
    let stacks: Api<MetricsStack> = Api::namespaced(client.clone(), &ns.name);
    stacks
        .create(&PostParams::default(), &stack)
        .await
        .expect("created");
    let ready = wait_for(&stacks, "the stack is Ready", is_ready).await;
    let database = ready
        .status
        .and_then(|s| s.database)
        .expect("database status");
    assert!(database.timescaledb_version.is_some());
    // Three tables with compression and retention, three aggregates with refresh and
    // retention.
    assert_eq!(database.policies, 12);
    let revision = &database.applied_revisions[0];
    assert_eq!(Some(revision.generation), ready.metadata.generation);
    assert!(
        revision
            .steps
            .iter()
            .any(|s| s.starts_with("create hypertable host_process_metrics")),
        "{revision:?}"
    );

    // An edit converges the database and adds a revision.
    stacks
        .patch(
            "stack",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "storage": { "aggregates": [] } } })),
        )
        .await
        .expect("edited");
    let edited = wait_for(&stacks, "the aggregates are dropped", |s| {
        s.status
            .as_ref()
            .and_then(|st| st.database.as_ref())
            .is_some_and(|d| d.policies == 6 && d.applied_revisions.len() == 2)
    })
    .await;
    let revisions = edited
        .status
        .and_then(|s| s.database)
        .expect("database")
        .applied_revisions;
    assert!(
        revisions[0]
            .steps
            .iter()
            .any(|s| s == "drop continuous aggregate host_process_metrics_hourly"),
        "{revisions:?}"
    );

    // Deleting the stack removes the policies it created (deletionPolicy RemovePolicies).
    stacks
        .delete("stack", &DeleteParams::default())
        .await
        .expect("deleted");
    wait_until("the stack is gone", WAIT, || async {
        stacks.get_opt("stack").await.expect("get").is_none()
    })
    .await;
    drop(operator);
    let mut conn = tsdb.connect().await;
    let jobs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_schema = $1",
    )
    .bind(&tsdb.schema)
    .fetch_one(&mut conn)
    .await
    .expect("jobs");
    assert_eq!(jobs, 0, "the stack's policies are removed with it");
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_schema = $1",
    )
    .bind(&tsdb.schema)
    .fetch_one(&mut conn)
    .await
    .expect("hypertables");
    assert_eq!(tables, 3, "tables and data stay");
    sqlx::Connection::close(conn).await.expect("closed");
}

#[tokio::test]
async fn network_policies_and_bindings_go_when_the_spec_turns_them_off() {
    simulated_nodes();
    let ns = TestNamespace::create().await;
    let db = TestDatabase::create().await;
    let client = ns.client.clone();
    let _operator = Operator::start(&ns);
    create_secret(&client, &ns.name, &db.url()).await;
    let stacks = create_stack(&client, &ns.name, 1).await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding_names = [
        format!("metricsstack-collector-{}-stack", ns.name),
        format!("metricsstack-query-service-{}-stack", ns.name),
    ];
    let present = || async {
        let mut present = Vec::new();
        for name in ["stack-query-service", "stack-collector"] {
            if policies.get_opt(name).await.expect("get").is_some() {
                present.push(format!("NetworkPolicy/{name}"));
            }
        }
        for name in &binding_names {
            if bindings.get_opt(name).await.expect("get").is_some() {
                present.push(format!("ClusterRoleBinding/{name}"));
            }
        }
        present
    };
    wait_until("the policies and bindings exist", WAIT, || async {
        present().await.len() == 4
    })
    .await;
    let query = policies
        .get("stack-query-service")
        .await
        .expect("the query service's policy")
        .spec
        .expect("a spec");
    let rule = &query.ingress.expect("ingress")[0];
    assert_eq!(
        rule.from.as_ref().expect("sources")[0].pod_selector,
        Some(Default::default()),
        "by default the stack's own namespace"
    );
    let collector = policies
        .get("stack-collector")
        .await
        .expect("the collectors' policy")
        .spec
        .expect("a spec");
    assert_eq!(collector.ingress, None, "no ingress by default");
    assert_eq!(
        collector.policy_types.as_deref(),
        Some(&["Ingress".to_owned()][..]),
        "so all ingress is denied"
    );
    let query_binding = bindings.get(&binding_names[1]).await.expect("binding");
    assert_eq!(query_binding.role_ref.name, "metricsstack-query-service");
    assert_eq!(
        query_binding.subjects.expect("subjects")[0].name,
        "stack-query-service"
    );

    stacks
        .patch(
            "stack",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": {
                "networkPolicy": { "enabled": false },
                "collector": { "podAttribution": false },
                "queryService": { "authentication": "None" }
            } })),
        )
        .await
        .expect("the spec is edited");
    wait_until("the policies and bindings are gone", WAIT, || async {
        present().await.is_empty()
    })
    .await;
    let daemon_set = Api::<DaemonSet>::namespaced(client.clone(), &ns.name)
        .get("stack-collector")
        .await
        .expect("DaemonSet");
    let pod = daemon_set.spec.and_then(|s| s.template.spec).expect("pod");
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "without pod attribution the collector mounts no token"
    );
}

#[tokio::test]
async fn a_collector_pod_refused_by_pod_security_shows_why_on_the_stack() {
    simulated_nodes();
    let ns = TestNamespace::create().await;
    let db = TestDatabase::create().await;
    let client = ns.client.clone();
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": {
                "pod-security.kubernetes.io/enforce": "baseline"
            } } })),
        )
        .await
        .expect("the namespace is labelled");
    let _operator = Operator::start(&ns);
    create_secret(&client, &ns.name, &db.url()).await;
    let stacks = create_stack(&client, &ns.name, 1).await;
    let stack = wait_for(&stacks, "CollectorsReady says the pods are refused", |s| {
        condition(s, "CollectorsReady").is_some_and(|c| c.reason == "PodCreationFailed")
    })
    .await;
    let message = &condition(&stack, "CollectorsReady")
        .expect("condition")
        .message;
    for part in ["FailedCreate", "PodSecurity", "hostPID", "privileged"] {
        assert!(message.contains(part), "{part} missing: {message}");
    }
}

/// A stack that removes its database policies on deletion, whose database is down.
async fn stack_with_database_down(client: &Client, namespace: &str) -> Api<MetricsStack> {
    common::install_crd(client).await;
    create_secret(client, namespace, "postgres://nobody@127.0.0.1:1/nothing").await;
    let stack = stack_object(
        namespace,
        "stack",
        json!({ "deletionPolicy": "RemovePolicies", "cleanupTimeout": "2s" }),
    );
    let api: Api<MetricsStack> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &stack)
        .await
        .expect("the MetricsStack is created");
    wait_for(
        &api,
        "the operator holds the stack with its finalizer",
        |s| !s.finalizers().is_empty(),
    )
    .await;
    api
}

#[tokio::test]
async fn deletion_ends_when_the_database_policies_cannot_be_removed() {
    simulated_nodes();
    // The stack alone: its finalizer goes after cleanupTimeout, with an event saying what
    // stayed in the database.
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    let _operator = Operator::start(&ns);
    let stacks = stack_with_database_down(&client, &ns.name).await;
    stacks
        .delete("stack", &DeleteParams::default())
        .await
        .expect("the stack is deleted");
    wait_until("the stack is gone", WAIT, || async {
        stacks.get_opt("stack").await.is_ok_and(|s| s.is_none())
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &ns.name);
    let abandoned = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("CleanupAbandoned"))
        .expect("a CleanupAbandoned event");
    let note = abandoned.note.unwrap_or_default();
    assert!(
        note.contains("left in the database") && note.contains("\"public\""),
        "{note}"
    );

    // The namespace: deleting it while the database is down ends too.
    let other = TestNamespace::create().await;
    let _other_operator = Operator::start(&other);
    let other_stacks = stack_with_database_down(&client, &other.name).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&other.name, &DeleteParams::default())
        .await
        .expect("the namespace is deleted");
    wait_until(
        "the stack in the deleted namespace is gone",
        WAIT,
        || async {
            other_stacks
                .get_opt("stack")
                .await
                .is_ok_and(|s| s.is_none())
        },
    )
    .await;
}

/// Migrates the test schema and inserts one day-old row into `host_process_metrics`.
async fn insert_day_old_row(tsdb: &TimescaleSchema) {
    let pool = metricsstack_operator::database::connect(
        &tsdb.url(),
        // The test server speaks no TLS, and PGlite's socket does not answer a TLS request.
        &metricsstack_common::database::DatabaseTls {
            mode: metricsstack_common::database::TlsMode::Disable,
            ca: None,
        },
        &metricsstack_common::database::PoolSettings {
            max_connections: 1,
            ..Default::default()
        },
        &tsdb.schema,
    )
    .await
    .expect("connects");
    metricsstack_operator::database::migrate(&pool, &tsdb.schema)
        .await
        .expect("migrated");
    sqlx::query(
        "INSERT INTO host_process_metrics (\"timestamp\", host, pid, start_time, \
           process_name, cpu_usage_percent, cpu_peak_percent, memory_usage_mb, \
           virtual_memory_mb, disk_read_bytes, disk_write_bytes) \
         VALUES (now() - interval '1 day', 'node-a', 1, now() - interval '2 days', \
                 'postgres', 1, 1, 1, 1, 0, 0)",
    )
    .execute(&pool)
    .await
    .expect("a row");
    pool.close().await;
}

#[tokio::test]
async fn a_retention_over_kept_data_waits_for_the_annotation_then_applies() {
    simulated_nodes();
    let tsdb = TimescaleSchema::create().await;
    // The stack adopts a table that already holds a day-old row: a retention deletes
    // nothing now, but it will delete what no policy deleted so far.
    insert_day_old_row(&tsdb).await;
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    let _operator = Operator::start(&ns);
    create_secret(&client, &ns.name, &tsdb.url()).await;
    common::install_crd(&client).await;
    // The test server is one session: the operator keeps to one connection.
    let stack = stack_object(
        &ns.name,
        "stack",
        json!({ "database": { "schema": tsdb.schema, "pools": { "operator": { "maxConnections": 1 } } } }),
    );
    let stacks: Api<MetricsStack> = Api::namespaced(client.clone(), &ns.name);
    stacks
        .create(&PostParams::default(), &stack)
        .await
        .expect("created");
    let held = wait_for(&stacks, "the retention waits for acknowledgement", |s| {
        condition(s, "PoliciesApplied").is_some_and(|c| c.reason == "DataLossNotAcknowledged")
    })
    .await;
    let pending = held
        .status
        .and_then(|s| s.database)
        .and_then(|d| d.pending_plan)
        .expect("a pending plan");
    assert_eq!((pending.rows_to_drop, pending.chunks_to_drop), (0, 0));
    assert!(
        pending
            .steps
            .iter()
            .any(|s| s.contains("retention") && s.contains("host_process_metrics")),
        "{pending:?}"
    );
    // The row is a day old and the default retention 90 days: deleting starts in 89 days.
    let starts = pending.earliest_deletion.expect("when deleting starts");
    let starts = chrono::DateTime::parse_from_rfc3339(&starts).expect("RFC 3339");
    let in_days =
        (starts.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!(
        (88.0..=90.0).contains(&in_days),
        "deleting starts in {in_days} days"
    );

    let acknowledge = json!({ "metadata": { "annotations": {
        "metricsstack.dev/acknowledge-data-loss": pending.hash
    } } });
    stacks
        .patch(
            "stack",
            &PatchParams::default(),
            &Patch::Merge(&acknowledge),
        )
        .await
        .expect("acknowledged");
    let applied = wait_for(&stacks, "the acknowledged plan is applied", |s| {
        condition(s, "PoliciesApplied").is_some_and(|c| c.status == "True")
    })
    .await;
    let database = applied.status.and_then(|s| s.database).expect("database");
    assert!(database.pending_plan.is_none());
    assert!(
        database.applied_revisions[0]
            .steps
            .iter()
            .any(|s| s.contains("retention") && s.contains("host_process_metrics")),
        "{:?}",
        database.applied_revisions
    );
}

#[tokio::test]
async fn a_second_stack_on_a_schema_another_manages_is_refused_naming_it() {
    simulated_nodes();
    let ns = TestNamespace::create().await;
    let db = TestDatabase::create().await;
    let client = ns.client.clone();
    let _operator = Operator::start(&ns);
    create_secret(&client, &ns.name, &db.url()).await;
    common::install_crd(&client).await;
    let stacks: Api<MetricsStack> = Api::namespaced(client.clone(), &ns.name);
    let create = |name: &'static str, schema: &'static str| {
        let stacks = stacks.clone();
        let namespace = ns.name.clone();
        async move {
            let stack = stack_object(
                &namespace,
                name,
                json!({ "database": { "schema": schema } }),
            );
            stacks
                .create(&PostParams::default(), &stack)
                .await
                .expect("created");
        }
    };
    let policies = |name: &'static str| {
        let stacks = stacks.clone();
        move || {
            let stacks = stacks.clone();
            async move {
                let stack = stacks.get(name).await.ok()?;
                condition(&stack, "PoliciesApplied").cloned()
            }
        }
    };
    create("first", "shared").await;
    wait_until("the first stack manages the schema", WAIT, || async {
        policies("first")()
            .await
            .is_some_and(|c| c.status == "True")
    })
    .await;
    create("second", "shared").await;
    create("third", "own").await;
    wait_until("the second stack is refused", WAIT, || async {
        policies("second")()
            .await
            .is_some_and(|c| c.reason == "Conflict")
    })
    .await;
    let refused = policies("second")().await.expect("a condition");
    assert!(
        refused
            .message
            .contains(&format!("managed by the MetricsStack {}/first", ns.name)),
        "{}",
        refused.message
    );
    wait_until(
        "the third stack, on its own schema, is applied",
        WAIT,
        || async {
            policies("third")()
                .await
                .is_some_and(|c| c.status == "True")
        },
    )
    .await;
}

/// The configuration checksums of the pod templates of the stack `stack`: its collectors'
/// DaemonSet's and its query service's Deployment's.
async fn pod_template_checksums(client: &Client, namespace: &str) -> (String, String) {
    let annotation = |template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
        (template.and_then(|t| t.metadata.as_ref()))
            .and_then(|meta| meta.annotations.as_ref())
            .and_then(|annotations| annotations.get(CONFIG_CHECKSUM_ANNOTATION).cloned())
            .expect("a checksum on the pod template")
    };
    let daemon_set = Api::<DaemonSet>::namespaced(client.clone(), namespace)
        .get("stack-collector")
        .await
        .expect("DaemonSet");
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get("stack-query-service")
        .await
        .expect("Deployment");
    (
        annotation(daemon_set.spec.as_ref().map(|s| &s.template)),
        annotation(deployment.spec.as_ref().map(|s| &s.template)),
    )
}

#[tokio::test]
async fn the_pooler_secret_is_required_and_a_rotated_pooler_password_rolls_the_pods() {
    simulated_nodes();
    let ns = TestNamespace::create().await;
    let db = TestDatabase::create().await;
    let client = ns.client.clone();
    let _operator = Operator::start(&ns);
    common::install_crd(&client).await;
    create_secret(&client, &ns.name, &db.url()).await;
    let stack = stack_object(
        &ns.name,
        "stack",
        json!({ "database": { "pooler": {
            "kind": "PgBouncerTransaction", "secretRef": { "name": "pooler" } } } }),
    );
    let stacks: Api<MetricsStack> = Api::namespaced(client.clone(), &ns.name);
    stacks
        .create(&PostParams::default(), &stack)
        .await
        .expect("created");
    // The pods would not start without it: the stack names the field.
    wait_for(
        &stacks,
        "DatabaseReady names the missing pooler Secret",
        |s| {
            condition(s, "DatabaseReady").is_some_and(|c| {
                c.reason == "SecretNotFound" && c.message.contains("spec.database.pooler.secretRef")
            })
        },
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let pooler = |password: &str| {
        connection_secret(
            "pooler",
            &format!("postgres://collector:{password}@pgbouncer:6432/metrics"),
        )
    };
    secrets
        .create(&PostParams::default(), &pooler("first-password"))
        .await
        .expect("the pooler Secret is created");
    wait_for(&stacks, "the stack is Ready", is_ready).await;
    let before = pod_template_checksums(&client, &ns.name).await;

    secrets
        .replace("pooler", &PostParams::default(), &pooler("second-password"))
        .await
        .expect("the pooler Secret is replaced");
    wait_until("both workloads roll", WAIT, || async {
        let after = pod_template_checksums(&client, &ns.name).await;
        after.0 != before.0 && after.1 != before.1
    })
    .await;
}

/// The notes of the stack's events with `reason`.
async fn event_notes(client: &Client, namespace: &str, reason: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), namespace);
    events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

/// The policy jobs of `schema`: procedure, relation and schedule in seconds.
async fn jobs(conn: &mut sqlx::PgConnection, schema: &str) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT proc_name::text, hypertable_name::text, \
                EXTRACT(EPOCH FROM schedule_interval)::bigint \
         FROM timescaledb_information.jobs WHERE hypertable_schema = $1 \
         ORDER BY 1, 2",
    )
    .bind(schema)
    .fetch_all(conn)
    .await
    .expect("jobs")
}

/// Creates the stack `stack` (and its Secret) on the test TimescaleDB, its database checked
/// every 10 s. The test server is one session: the operator keeps to one connection and lets
/// it go when idle, so that the test can connect between two checks.
async fn create_checked_timescale_stack(
    client: &Client,
    namespace: &str,
    tsdb: &TimescaleSchema,
) -> Api<MetricsStack> {
    create_secret(client, namespace, &tsdb.url()).await;
    common::install_crd(client).await;
    let stack = stack_object(
        namespace,
        "stack",
        json!({
            "database": { "schema": tsdb.schema, "pools": { "operator": {
                "maxConnections": 1, "idleTimeout": "1s" } } },
            "driftCheckInterval": "10s"
        }),
    );
    let stacks: Api<MetricsStack> = Api::namespaced(client.clone(), namespace);
    stacks
        .create(&PostParams::default(), &stack)
        .await
        .expect("created");
    stacks
}

#[tokio::test]
async fn a_policy_removed_and_a_schedule_altered_behind_the_operators_back_are_restored() {
    simulated_nodes();
    let tsdb = TimescaleSchema::create().await;
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    let _operator = Operator::start(&ns);
    let stacks = create_checked_timescale_stack(&client, &ns.name, &tsdb).await;
    wait_for(&stacks, "the stack is Ready with its 12 policies", |s| {
        is_ready(s)
            && s.status
                .as_ref()
                .and_then(|st| st.database.as_ref())
                .is_some_and(|d| d.policies == 12)
    })
    .await;
    assert_eq!(
        event_notes(&client, &ns.name, "DriftCorrected").await,
        Vec::<String>::new(),
        "creating the stack's storage is no drift"
    );

    let mut conn = tsdb.connect().await;
    let converged = jobs(&mut conn, &tsdb.schema).await;
    let (_, aggregate, schedule) = converged
        .iter()
        .find(|(proc, ..)| proc == "policy_refresh_continuous_aggregate")
        .cloned()
        .expect("a refresh policy");
    sqlx::query("SELECT remove_retention_policy($1::regclass)")
        .bind(format!("{}.host_process_metrics", tsdb.schema))
        .execute(&mut conn)
        .await
        .expect("the retention policy is removed");
    sqlx::query(
        "SELECT alter_job(job_id, schedule_interval => interval '5 hours') \
         FROM timescaledb_information.jobs \
         WHERE hypertable_schema = $1 AND hypertable_name = $2 \
           AND proc_name = 'policy_refresh_continuous_aggregate'",
    )
    .bind(&tsdb.schema)
    .bind(&aggregate)
    .execute(&mut conn)
    .await
    .expect("the refresh schedule is altered");
    assert_ne!(
        jobs(&mut conn, &tsdb.schema).await,
        converged,
        "the database drifted"
    );
    sqlx::Connection::close(conn).await.expect("closed");

    // Restored on the next check: an event names both corrections.
    wait_until(
        "a DriftCorrected event names both corrections",
        WAIT,
        || async {
            let notes = event_notes(&client, &ns.name, "DriftCorrected")
                .await
                .join("\n");
            notes.contains("add retention policy on host_process_metrics")
                && notes.contains("refresh policy (job")
                && notes.contains(&format!("on {aggregate}:"))
                && notes.contains("(was every 5h)")
        },
    )
    .await;
    let mut conn = tsdb.connect().await;
    assert_eq!(
        jobs(&mut conn, &tsdb.schema).await,
        converged,
        "every job is back, on its schedule ({schedule} s for {aggregate}'s refresh)"
    );
    sqlx::Connection::close(conn).await.expect("closed");
}

/// Records the SQL statements sqlx runs while armed, on the thread it is the default
/// subscriber of: a test's runtime runs the in-process operator on the test's own thread.
#[derive(Clone, Default)]
struct Statements {
    armed: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Statements {
    fn arm(&self, armed: bool) {
        self.armed.store(armed, std::sync::atomic::Ordering::SeqCst);
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

impl tracing::Subscriber for Statements {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == "sqlx::query"
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if matches!(field.name(), "summary" | "db.statement") {
                    self.0.push_str(&format!("{value:?} "));
                }
            }
        }
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            let mut text = Text(String::new());
            event.record(&mut text);
            self.seen.lock().expect("not poisoned").push(text.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn a_pending_plan_is_checked_on_schedule_without_rewriting_the_status_or_recounting() {
    // The operator runs on this test's (single-threaded) runtime: its statements are seen.
    let statements = Statements::default();
    let _subscriber = tracing::subscriber::set_default(statements.clone());
    simulated_nodes();
    let tsdb = TimescaleSchema::create().await;
    insert_day_old_row(&tsdb).await;
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    let operator = Operator::start(&ns);
    let stacks = create_checked_timescale_stack(&client, &ns.name, &tsdb).await;
    let held = wait_for(&stacks, "the retention waits for acknowledgement", |s| {
        condition(s, "PoliciesApplied").is_some_and(|c| c.reason == "DataLossNotAcknowledged")
            && condition(s, "CollectorsReady").is_some_and(|c| c.status == "True")
    })
    .await;

    // Observe the next few checks: the stack's writes (watch events) and the operator's
    // statements, until the operator has checked the held plan CHECKS times.
    const CHECKS: u64 = 4;
    let version = held.resource_version().expect("a resourceVersion");
    let reconciles_before = operator.reconciles();
    statements.arm(true);
    let mut watch = stacks
        .watch(
            &kube::api::WatchParams::default().fields("metadata.name=stack"),
            &version,
        )
        .await
        .expect("watching the stack")
        .boxed();
    let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = tokio::spawn({
        let writes = writes.clone();
        async move {
            while let Some(event) = watch.next().await {
                if let Ok(kube::api::WatchEvent::Modified(stack)) = event {
                    writes.lock().expect("not poisoned").push(stack.status);
                }
            }
        }
    });
    wait_until(
        "the operator checks the held plan on its driftCheckInterval",
        WAIT,
        || async { operator.reconciles() - reconciles_before >= CHECKS },
    )
    .await;
    recorder.abort();
    statements.arm(false);
    let writes = writes.lock().expect("not poisoned").clone();
    let reconciles = operator.reconciles() - reconciles_before;
    let seen = statements.seen();
    let counts: Vec<&String> = seen
        .iter()
        .filter(|s| s.contains("count(*) FROM"))
        .collect();
    println!(
        "{reconciles} reconciles: {} status writes, {} statements",
        writes.len(),
        seen.len()
    );
    assert!(
        writes.len() <= 1,
        "the status was rewritten {} times: {writes:#?}",
        writes.len()
    );
    assert!(
        counts.is_empty(),
        "the held plan's loss was counted again: {counts:#?}"
    );
    assert!(
        seen.len() as u64 <= 30 * reconciles,
        "{} statements in {reconciles} checks: {seen:#?}",
        seen.len()
    );
}

#[tokio::test]
async fn a_rotated_password_reconnects_the_operator_and_rolls_the_pods() {
    simulated_nodes();
    let ns = TestNamespace::create().await;
    let db = TestDatabase::create().await;
    let client = ns.client.clone();
    let _operator = Operator::start(&ns);
    common::install_crd(&client).await;
    // The stack connects as a role of its own, which owns the test database.
    let role = metricsstack_testkit::unique_name("rotated").replace('-', "_");
    let url_with = |password: &str| {
        db.options
            .clone()
            .username(&role)
            .password(password)
            .to_url_lossy()
            .to_string()
    };
    let admin = db.pool(1).await;
    for statement in [
        // A member of PASSWORD_LOGIN_ROLE: the test server makes it log in with its password.
        format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'first-password' IN ROLE {}",
            metricsstack_testkit::PASSWORD_LOGIN_ROLE
        ),
        format!("ALTER DATABASE {} OWNER TO {role}", db.name),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .expect("the role is set up");
    }
    create_secret(&client, &ns.name, &url_with("first-password")).await;
    let stack = stack_object(&ns.name, "stack", json!({ "driftCheckInterval": "10s" }));
    let stacks: Api<MetricsStack> = Api::namespaced(client.clone(), &ns.name);
    stacks
        .create(&PostParams::default(), &stack)
        .await
        .expect("created");
    wait_for(&stacks, "the stack is Ready", is_ready).await;
    let before = pod_template_checksums(&client, &ns.name).await;

    // The password changes in the database; the operator's open sessions end with it.
    for statement in [
        format!("ALTER ROLE {role} PASSWORD 'second-password'"),
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .expect("the password is rotated");
    }
    metricsstack_testkit::assert_password_refused(&url_with("first-password")).await;
    wait_for(&stacks, "the old password is refused", |s| {
        condition(s, "DatabaseReady").is_some_and(|c| c.status == "False")
    })
    .await;

    // The Secret follows: the operator reconnects with it, and both workloads roll.
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .replace(
            "db",
            &PostParams::default(),
            &connection_secret("db", &url_with("second-password")),
        )
        .await
        .expect("the Secret is replaced");
    wait_for(
        &stacks,
        "the operator connects with the new password",
        |s| condition(s, "DatabaseReady").is_some_and(|c| c.status == "True"),
    )
    .await;
    let after = pod_template_checksums(&client, &ns.name).await;
    assert_ne!(after.0, before.0, "the collectors roll");
    assert_ne!(after.1, before.1, "the query service rolls");
    let operator_sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE usename = $1 AND application_name = 'metricsstack-operator'",
    )
    .bind(&role)
    .fetch_one(&admin)
    .await
    .expect("sessions");
    assert!(
        operator_sessions > 0,
        "the operator's pool is connected again"
    );
    admin.close().await;
}

/// The operator's pool on the test TimescaleDB: one connection, no TLS (the server is one
/// session and speaks no TLS).
async fn timescaledb_pool(tsdb: &TimescaleSchema) -> sqlx::PgPool {
    metricsstack_operator::database::connect(
        &tsdb.url(),
        &metricsstack_common::database::DatabaseTls {
            mode: metricsstack_common::database::TlsMode::Disable,
            ca: None,
        },
        &metricsstack_common::database::PoolSettings {
            max_connections: 1,
            ..Default::default()
        },
        &tsdb.schema,
    )
    .await
    .expect("connects")
}

/// Records a run of `job_id` in TimescaleDB's job statistics and history as its background
/// scheduler does after each run: the test server runs no scheduler, and `CALL run_job`
/// records nothing there.
async fn record_run(
    conn: &mut sqlx::PgConnection,
    job_id: i32,
    error: Option<&sqlx::postgres::PgDatabaseError>,
) {
    let error_data = error.map(|e| json!({ "message": e.message(), "sqlerrcode": e.code() }));
    sqlx::query(
        "INSERT INTO _timescaledb_internal.bgw_job_stat_history \
           (job_id, pid, execution_start, execution_finish, succeeded, data) \
         VALUES ($1, pg_backend_pid(), now() - interval '1 second', now(), $2, \
                 jsonb_build_object('job', jsonb_build_object( \
                     'proc_schema', '_timescaledb_functions', \
                     'proc_name', 'policy_refresh_continuous_aggregate')) \
                 || COALESCE(jsonb_build_object('error_data', $3::jsonb), '{}'))",
    )
    .bind(job_id)
    .bind(error.is_none())
    .bind(&error_data)
    .execute(&mut *conn)
    .await
    .expect("the run is in the job history");
    sqlx::query(
        "INSERT INTO _timescaledb_internal.bgw_job_stat AS s \
           (job_id, last_start, last_finish, next_start, last_successful_finish, \
            last_run_success, total_runs, total_duration, total_duration_failures, \
            total_successes, total_failures, total_crashes, consecutive_failures, \
            consecutive_crashes) \
         VALUES ($1, now() - interval '1 second', now(), now() + interval '1 hour', \
                 CASE WHEN $2 THEN now() ELSE '-infinity' END, $2, 1, interval '1 second', \
                 CASE WHEN $2 THEN interval '0' ELSE interval '1 second' END, $2::int, \
                 (NOT $2)::int, 0, (NOT $2)::int, 0) \
         ON CONFLICT (job_id) DO UPDATE SET \
           last_start = excluded.last_start, last_finish = excluded.last_finish, \
           next_start = excluded.next_start, last_run_success = $2, \
           last_successful_finish = CASE WHEN $2 THEN now() ELSE s.last_successful_finish END, \
           total_runs = s.total_runs + 1, total_successes = s.total_successes + $2::int, \
           total_failures = s.total_failures + (NOT $2)::int, \
           consecutive_failures = CASE WHEN $2 THEN 0 ELSE s.consecutive_failures + 1 END",
    )
    .bind(job_id)
    .bind(error.is_none())
    .execute(&mut *conn)
    .await
    .expect("the run is in the job statistics");
}

#[tokio::test]
async fn a_failing_policy_job_is_a_warning_an_event_and_a_metric_until_it_runs_again() {
    simulated_nodes();
    let tsdb = TimescaleSchema::create().await;
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    // The test server is one session: the operator keeps to one connection.
    let stack = stack_object(
        &ns.name,
        "stack",
        json!({ "database": { "schema": tsdb.schema, "pools": { "operator": { "maxConnections": 1 } } } }),
    );
    // The database as the stack's first reconcile leaves it (the default storage: three
    // tables, three hourly rollups), with pod samples two hours old, inside the pods
    // rollup's refresh window.
    let storage = metricsstack_operator::validate::validate(&stack.spec)
        .expect("valid")
        .storage;
    let pool = timescaledb_pool(&tsdb).await;
    let owner = format!("{}/stack", ns.name);
    metricsstack_operator::database::converge(&pool, &tsdb.schema, &owner, &storage, None)
        .await
        .expect("converges");
    sqlx::query(
        "INSERT INTO vm_process_metrics (\"timestamp\", host, pid, start_time, process_name, \
           pod_namespace, pod_name, pod_uid, container_id, cpu_usage_percent, \
           cpu_peak_percent, memory_usage_mb, disk_read_bytes, disk_write_bytes) \
         VALUES (date_trunc('hour', now()) - interval '2 hours' + interval '10 minutes', \
                 'node-a', 1, now() - interval '1 day', 'app', 'shop', 'web-1', 'u1', 'c1', \
                 5, 5, 50, 0, 0)",
    )
    .execute(&pool)
    .await
    .expect("a pod sample");
    let state = metricsstack_operator::database::read_state(&pool, &tsdb.schema)
        .await
        .expect("state");
    let refresh = state
        .job(
            metricsstack_operator::database::JobKind::Refresh,
            "vm_process_metrics_hourly",
        )
        .expect("the pods rollup's refresh job")
        .id;
    // Break the job on purpose: its rollup refuses new rows.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION refuse_rows() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN RAISE EXCEPTION 'rollup broken on purpose'; END $$; \
         CREATE TRIGGER refuse_rows BEFORE INSERT ON {} \
           FOR EACH ROW EXECUTE FUNCTION refuse_rows();",
        materialization(&pool, "vm_process_metrics_hourly").await
    )))
    .execute(&pool)
    .await
    .expect("the rollup is broken");
    let failed = sqlx::query(sqlx::AssertSqlSafe(format!("CALL run_job({refresh})")))
        .execute(&pool)
        .await
        .expect_err("the broken job fails");
    let failure = failed.into_database_error().expect("a database error");
    let failure = failure.downcast_ref::<sqlx::postgres::PgDatabaseError>();
    assert!(failure.message().contains("broken on purpose"), "{failure}");
    let mut conn = pool.acquire().await.expect("a connection");
    record_run(&mut conn, refresh, Some(failure)).await;
    drop(conn);
    pool.close().await;

    let operator = Operator::start(&ns);
    create_secret(&client, &ns.name, &tsdb.url()).await;
    common::install_crd(&client).await;
    let stacks: Api<MetricsStack> = Api::namespaced(client.clone(), &ns.name);
    stacks
        .create(&PostParams::default(), &stack)
        .await
        .expect("created");
    let warned = wait_for(&stacks, "the stack says the job fails", |s| {
        condition(s, "JobsHealthy").is_some_and(|c| c.reason == "JobFailed") && is_ready(s)
    })
    .await;
    let message = &condition(&warned, "JobsHealthy")
        .expect("condition")
        .message;
    assert!(
        message.contains(&format!(
            "refresh policy (job {refresh}) on vm_process_metrics_hourly: failing since"
        )) && message.contains("rollup broken on purpose"),
        "{message}"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &ns.name);
    wait_until("a JobFailed warning event", WAIT, || async {
        events
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("JobFailed")
                    && e.type_.as_deref() == Some("Warning")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("broken on purpose"))
            })
    })
    .await;
    let series = format!(
        "metricsstack_operator_failing_jobs{{namespace=\"{}\",name=\"stack\"}}",
        ns.name
    );
    let text = operator.metrics.render();
    assert!(text.contains(&format!("{series} 1")), "{text}");

    // Mended, the job runs again and succeeds: the next reconcile (a restarted operator
    // here, the periodic check in production) says so.
    drop(operator);
    let mut conn = tsdb.connect().await;
    sqlx::raw_sql("DROP FUNCTION refuse_rows() CASCADE")
        .execute(&mut conn)
        .await
        .expect("the rollup is mended");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CALL run_job({refresh})")))
        .execute(&mut conn)
        .await
        .expect("the mended job runs");
    record_run(&mut conn, refresh, None).await;
    sqlx::Connection::close(conn).await.expect("closed");
    let operator = Operator::start(&ns);
    wait_for(&stacks, "the stack says the jobs are healthy", |s| {
        condition(s, "JobsHealthy").is_some_and(|c| c.status == "True")
    })
    .await;
    wait_until("the metric says no job fails", WAIT, || async {
        operator.metrics.render().contains(&format!("{series} 0"))
    })
    .await;
}

/// The materialization hypertable of the continuous aggregate `view`, schema-qualified.
async fn materialization(pool: &sqlx::PgPool, view: &str) -> String {
    sqlx::query_scalar(
        "SELECT format('%I.%I', materialization_hypertable_schema, \
                       materialization_hypertable_name) \
         FROM timescaledb_information.continuous_aggregates \
         WHERE view_schema = current_schema() AND view_name = $1",
    )
    .bind(view)
    .fetch_one(pool)
    .await
    .expect("the aggregate exists")
}

#[tokio::test]
async fn rollups_created_over_older_rows_are_backfilled_and_the_stack_says_so() {
    simulated_nodes();
    let tsdb = TimescaleSchema::create().await;
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    // Two nodes' samples every hour over the ten days before the stack: its hourly rollups'
    // refresh window (3 h to 1 h ago) never reaches them.
    let pool = timescaledb_pool(&tsdb).await;
    metricsstack_operator::database::migrate(&pool, &tsdb.schema)
        .await
        .expect("migrated");
    sqlx::raw_sql(
        r#"INSERT INTO host_overall_metrics ("timestamp", host, cpu_usage_percent,
             cpu_per_core_percent, load_1, load_5, load_15, memory_total_bytes, memory_used_bytes,
             memory_usage_mb, swap_total_bytes, swap_used_bytes, disk_total_bytes, disk_used_bytes,
             disk_read_bytes, disk_write_bytes, network_rx_bytes, network_tx_bytes, uptime_seconds,
             process_count)
           SELECT now() - make_interval(hours => s), 'node-' || n, s % 100, '{1,2}', 1, 1, 1,
                  8e9, 4e9, 1000, 0, 0, 1e12, 5e11, 0, 0, 0, 0, 3600, 100
           FROM generate_series(4, 240) AS s, generate_series(1, 2) AS n"#,
    )
    .execute(&pool)
    .await
    .expect("seeded");
    pool.close().await;

    let _operator = Operator::start(&ns);
    let stacks = create_checked_timescale_stack(&client, &ns.name, &tsdb).await;
    let stack = wait_for(&stacks, "AggregatesBackfilled holds", |s| {
        condition(s, "AggregatesBackfilled").is_some_and(|c| c.status == "True")
    })
    .await;
    let notes = event_notes(&client, &ns.name, "Backfilled").await;
    assert!(
        notes
            .iter()
            .any(|note| note.contains("host_overall_metrics_hourly from ")),
        "{notes:?}; conditions: {:#?}",
        stack.status.map(|s| s.conditions)
    );
    // Only the rollup whose source has older rows lacked any.
    assert!(
        notes
            .iter()
            .all(|note| !note.contains("vm_process_metrics_hourly")),
        "{notes:?}"
    );
}
