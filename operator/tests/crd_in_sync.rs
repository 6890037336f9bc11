//! `crds/` and the Helm chart's `crds/` hold exactly what the Rust types generate
//! (`cargo run --bin crdgen`): one source of truth, two checked-in copies.

use kube::CustomResourceExt;
use metricsstack_operator::crd::MetricsStack;

const REGENERATE: &str = "run `cargo run -q -p metricsstack-operator --bin crdgen | tee \
     crds/metricsstack.dev_metricsstacks.yaml > \
     charts/metricsstack-operator/crds/metricsstack.dev_metricsstacks.yaml`";

fn assert_matches_the_types(relative_path: &str) {
    let path = format!("{}/../{relative_path}", env!("CARGO_MANIFEST_DIR"));
    let checked_in = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{relative_path} holds the MetricsStack CRD: {e}"));
    let generated = serde_yaml::to_string(&MetricsStack::crd()).expect("the CRD serialises");
    assert!(
        checked_in == generated,
        "{relative_path} is out of date: {REGENERATE}"
    );
}

#[test]
fn checked_in_crd_matches_the_rust_types() {
    assert_matches_the_types("crds/metricsstack.dev_metricsstacks.yaml");
}

#[test]
fn the_charts_crd_matches_the_rust_types() {
    assert_matches_the_types(
        "charts/metricsstack-operator/crds/metricsstack.dev_metricsstacks.yaml",
    );
}
