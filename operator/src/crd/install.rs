//! Installing the MetricsStack CRD from the Rust types: what the tests and benchmarks do
//! on the test API server (a cluster gets it from the chart).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::{conditions, wait::await_condition};
use kube::{Api, Client, CustomResourceExt, ResourceExt};

use super::MetricsStack;

/// Why installing the CRD failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The API server refused the CRD.
    #[error("applying the MetricsStack CRD failed: {0}")]
    Apply(#[from] kube::Error),
    /// Watching for the CRD to become established failed.
    #[error("waiting for the MetricsStack CRD to be established failed: {0}")]
    Wait(#[from] kube::runtime::wait::Error),
}

/// Server-side applies the CRD (forcing ownership as `field_manager`) and waits until the
/// API server serves it.
pub async fn install(client: &Client, field_manager: &str) -> Result<(), InstallError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = MetricsStack::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&crd),
    )
    .await?;
    await_condition(crds, &name, conditions::is_crd_established()).await?;
    Ok(())
}
