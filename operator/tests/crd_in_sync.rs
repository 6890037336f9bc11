//! `crds/` holds exactly what the Rust types generate (`cargo run --bin crdgen`).

use kube::CustomResourceExt;
use metricsstack_operator::crd::MetricsStack;

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/metricsstack.dev_metricsstacks.yaml"
    );
    let checked_in = std::fs::read_to_string(path).expect("crds/ holds the MetricsStack CRD");
    let generated = serde_yaml::to_string(&MetricsStack::crd()).expect("the CRD serialises");
    assert!(
        checked_in == generated,
        "crds/metricsstack.dev_metricsstacks.yaml is out of date: run \
         `cargo run -q -p metricsstack-operator --bin crdgen > crds/metricsstack.dev_metricsstacks.yaml`"
    );
}
