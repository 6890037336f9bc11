//! Objects the tests and benchmarks put on the test API server the way a platform team
//! would: a CRD (a cluster gets it from the chart) and the connection Secret a stack names.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::runtime::{conditions, wait::await_condition};
use kube::{Api, Client, ResourceExt};

/// Why installing a CRD failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The API server refused the CRD.
    #[error("applying the CRD failed: {0}")]
    Apply(#[from] kube::Error),
    /// Watching for the CRD to become established failed.
    #[error("waiting for the CRD to be established failed: {0}")]
    Wait(#[from] kube::runtime::wait::Error),
}

/// Server-side applies `crd` (forcing ownership as `field_manager`) and waits until the API
/// server serves it.
pub async fn install_crd(
    client: &Client,
    crd: &CustomResourceDefinition,
    field_manager: &str,
) -> Result<(), InstallError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(crd),
    )
    .await?;
    await_condition(crds, &name, conditions::is_crd_established()).await?;
    Ok(())
}

/// The key of the connection URI in a stack's Secret unless `secretRef.key` says otherwise.
pub const CONNECTION_URI_KEY: &str = "uri";

/// A Secret named `name` holding the connection URI `uri` under the default key: what a
/// stack's `database.secretRef` expects, as `kubectl create secret generic NAME
/// --from-literal=uri=...` makes it.
pub fn connection_secret(name: &str, uri: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            CONNECTION_URI_KEY.to_owned(),
            k8s_openapi::ByteString(uri.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}
