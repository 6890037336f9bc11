//! The Helm chart: it lints clean, refuses wrong values at `helm install` with a message
//! naming the value, and what it renders (and every example MetricsStack) passes a
//! server-side dry run on the test API server. That the chart's CRD is the generated one
//! is checked by `crd_in_sync.rs`.

mod common;

use std::process::Output;

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::discovery::{self, Scope};
use kube::{Api, ResourceExt};
use metricsstack_testkit::{TestNamespace, helm_output as helm, unique_name};
use serde::Deserialize as _;

const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/metricsstack-operator"
);
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

fn succeeded(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("helm writes UTF-8")
}

#[test]
fn the_chart_lints_clean_with_default_and_production_values() {
    succeeded(&helm(&["lint", "--strict", CHART]), "helm lint");
    let production = [
        "replicaCount=2",
        "watchNamespace=monitoring",
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prometheus",
        "priorityClassName=system-cluster-critical",
        "admissionPolicy.allowedImageRepositories[0]=registry.example.com/metricsstack/collector",
    ]
    .join(",");
    succeeded(
        &helm(&["lint", "--strict", CHART, "--set", &production]),
        "helm lint with production values",
    );
}

#[tokio::test]
async fn wrong_values_fail_helm_install_naming_the_value() {
    let ns = TestNamespace::create().await;
    let cases = [
        ("replicaCount=-1", "/replicaCount"),
        ("logLevel=verbose", "/logLevel"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        (
            "leaderElection.leaseDurationSeconds=1",
            "/leaderElection/leaseDurationSeconds",
        ),
        ("adminPort=80", "/adminPort"),
        ("resources.limits.memory=lots", "/resources/limits/memory"),
        ("watchNamespace=Not_A_Namespace", "/watchNamespace"),
        (
            "admissionPolicy.allowedImageRepositories[0]=ghcr.io/metricsstack/collector:1.0",
            "/admissionPolicy/allowedImageRepositories/0",
        ),
        ("replicas=2", "additional properties 'replicas' not allowed"),
        (
            "replicaCount=2,leaderElection.enabled=false",
            "replicaCount: 2 replicas need leaderElection.enabled=true",
        ),
        (
            "serviceAccount.create=false",
            "serviceAccount.name: name an existing ServiceAccount",
        ),
    ];
    for (values, named) in cases {
        let release = unique_name("wrong");
        let output = helm(&[
            "install",
            &release,
            CHART,
            "--namespace",
            &ns.name,
            "--set",
            values,
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "helm install --set {values} succeeded"
        );
        assert!(
            stderr.contains(named),
            "helm install --set {values} does not name {named:?}:\n{stderr}"
        );
    }
    let releases = succeeded(
        &helm(&["list", "--namespace", &ns.name, "--all", "--short"]),
        "helm list",
    );
    assert_eq!(releases.trim(), "", "a refused install leaves no release");
}

#[tokio::test]
async fn rendered_manifests_and_examples_pass_a_server_side_dry_run() {
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    let version = client.apiserver_version().await.expect("server version");
    let kube_version = format!(
        "{}.{}.0",
        version.major,
        version.minor.trim_end_matches('+')
    );
    let rendered = succeeded(
        &helm(&[
            "template",
            "dry-run",
            CHART,
            "--namespace",
            &ns.name,
            "--kube-version",
            &kube_version,
            "--set",
            "replicaCount=2",
        ]),
        "helm template",
    );
    let mut objects = documents(&rendered);
    let mut kinds: Vec<String> = objects.iter().map(kind).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            // The operator's, the collectors' and the query services'.
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            // The sidecar injection webhook's configuration.
            "MutatingWebhookConfiguration",
            // The leader-election Lease's and the webhook certificate Secret's.
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            // The metrics' and the webhook's.
            "Service",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );

    common::install_crd(&client).await;
    for entry in std::fs::read_dir(EXAMPLES).expect("examples/ exists") {
        let path = entry.expect("an examples/ entry").path();
        let mut example = documents(&std::fs::read_to_string(&path).expect("readable"));
        for object in &mut example {
            object.metadata.namespace = Some(ns.name.clone());
        }
        objects.extend(example);
    }
    assert!(
        objects.iter().filter(|o| kind(o) == "MetricsStack").count() >= 4,
        "every example is dry-run"
    );

    let dry_run = PatchParams::apply("metricsstack-chart-test").dry_run();
    for object in objects {
        let gvk = object
            .types
            .as_ref()
            .map(|t| kube::api::GroupVersionKind::try_from(t).expect("a valid apiVersion"))
            .expect("every manifest has apiVersion and kind");
        let (resource, capabilities) = discovery::pinned_kind(&client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("the API server serves {gvk:?}: {e}"));
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), &ns.name, &resource),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let name = object.name_any();
        api.patch(&name, &dry_run, &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("{} {name} fails a server-side dry run: {e}", gvk.kind));
    }
}

fn documents(text: &str) -> Vec<DynamicObject> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|document| {
            let value = serde_yaml::Value::deserialize(document).expect("valid YAML");
            (!value.is_null()).then(|| serde_yaml::from_value(value).expect("a Kubernetes object"))
        })
        .collect()
}

fn kind(object: &DynamicObject) -> String {
    object
        .types
        .as_ref()
        .map(|t| t.kind.clone())
        .unwrap_or_default()
}
