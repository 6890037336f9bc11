//! Helpers shared by the operator's integration tests.

use std::time::Duration;

use kube::{Client, CustomResourceExt as _};
use metricsstack_operator::crd::MetricsStack;

/// How long the API server may take to serve the CRD: generous, for a loaded machine.
const ESTABLISHED_WITHIN: Duration = Duration::from_secs(90);

/// Installs (or updates) the MetricsStack CRD and waits until the API server serves it.
pub async fn install_crd(client: &Client) {
    tokio::time::timeout(
        ESTABLISHED_WITHIN,
        metricsstack_testkit::install_crd(client, &MetricsStack::crd(), "metricsstack-tests"),
    )
    .await
    .expect("the CRD is established in time")
    .expect("the MetricsStack CRD installs");
}
