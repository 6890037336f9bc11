//! Helpers shared by the operator's integration tests.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::{conditions, wait::await_condition};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use metricsstack_operator::crd::MetricsStack;

/// Installs (or updates) the MetricsStack CRD and waits until the API server serves it.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = MetricsStack::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("metricsstack-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the MetricsStack CRD applies");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("the CRD is established within 30 s")
    .expect("waiting for the CRD does not fail");
}
