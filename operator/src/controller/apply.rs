//! Applying desired objects with server-side apply under one field manager. A no-op apply
//! leaves the object (and its resourceVersion) as it was; the reconciler reports only the
//! objects whose resourceVersion moved.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::resources::{DesiredObjects, Wanted};

/// The field manager of every object the operator applies.
pub const FIELD_MANAGER: &str = "metricsstack-operator";

/// What applying the desired objects did and saw.
#[derive(Debug, Default)]
pub struct Applied {
    /// `Kind/name` of each object that changed.
    pub changed: Vec<String>,
    /// The collector DaemonSet as stored, status included.
    pub daemon_set: Option<DaemonSet>,
    /// The query service Deployment as stored, status included.
    pub deployment: Option<Deployment>,
}

/// Applies every desired object of a stack in `namespace`, and deletes those it no longer
/// wants (the PodDisruptionBudget, a ClusterRoleBinding, the NetworkPolicies).
pub async fn apply_all(
    client: &Client,
    namespace: &str,
    desired: &DesiredObjects,
) -> Result<Applied, kube::Error> {
    // Destructured without `..`: a new kind of desired object does not compile until it is
    // applied here.
    let DesiredObjects {
        service_accounts,
        collector_binding,
        query_service_binding,
        config_maps,
        daemon_set,
        deployment,
        service,
        pod_disruption_budget,
        network_policies,
    } = desired;
    let mut applied = Applied::default();
    for account in service_accounts {
        apply_namespaced(client, namespace, account, &mut applied).await?;
    }
    for binding in [collector_binding, query_service_binding] {
        apply_or_delete(&Api::all(client.clone()), binding, &mut applied).await?;
    }
    for config_map in config_maps {
        apply_namespaced(client, namespace, config_map, &mut applied).await?;
    }
    applied.daemon_set = Some(apply_namespaced(client, namespace, daemon_set, &mut applied).await?);
    applied.deployment = Some(apply_namespaced(client, namespace, deployment, &mut applied).await?);
    apply_namespaced(client, namespace, service, &mut applied).await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
    match pod_disruption_budget {
        Some(budget) => {
            apply_object(&budgets, budget, &mut applied).await?;
        }
        None => {
            let name = deployment.name_any();
            if budgets.get_metadata_opt(&name).await?.is_some() {
                budgets.delete(&name, &DeleteParams::default()).await?;
                applied
                    .changed
                    .push(format!("PodDisruptionBudget/{name} (deleted)"));
            }
        }
    }
    for policy in network_policies {
        apply_or_delete(
            &Api::namespaced(client.clone(), namespace),
            policy,
            &mut applied,
        )
        .await?;
    }
    Ok(applied)
}

/// Applies a wanted object, or deletes the one by its name when it is not wanted.
async fn apply_or_delete<K>(
    api: &Api<K>,
    wanted: &Wanted<K>,
    applied: &mut Applied,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    match &wanted.object {
        Some(object) => {
            apply_object(api, object, applied).await?;
        }
        None => {
            if api.get_metadata_opt(&wanted.name).await?.is_some() {
                api.delete(&wanted.name, &DeleteParams::default()).await?;
                applied
                    .changed
                    .push(format!("{}/{} (deleted)", K::kind(&()), wanted.name));
            }
        }
    }
    Ok(())
}

async fn apply_namespaced<K>(
    client: &Client,
    namespace: &str,
    object: &K,
    applied: &mut Applied,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    apply_object(&Api::namespaced(client.clone(), namespace), object, applied).await
}

/// Server-side applies one object, recording it in `applied.changed` when its
/// resourceVersion moved.
async fn apply_object<K>(api: &Api<K>, object: &K, applied: &mut Applied) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = object.name_any();
    let before = api
        .get_metadata_opt(&name)
        .await?
        .and_then(|m| m.metadata.resource_version);
    let stored = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await?;
    if stored.resource_version() != before {
        applied.changed.push(format!("{}/{name}", K::kind(&())));
    }
    Ok(stored)
}
