//! Helpers shared by the operator's integration tests.

use std::time::Duration;

use kube::{Client, CustomResourceExt as _};
use metricsstack_operator::crd::MetricsStack;

/// Installs (or updates) the MetricsStack CRD and waits until the API server serves it.
pub async fn install_crd(client: &Client) {
    tokio::time::timeout(
        Duration::from_secs(30),
        metricsstack_testkit::install_crd(client, &MetricsStack::crd(), "metricsstack-tests"),
    )
    .await
    .expect("the CRD is established within 30 s")
    .expect("the MetricsStack CRD installs");
}
