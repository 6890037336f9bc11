//! Why a DaemonSet has fewer pods than it should: the DaemonSet controller reports a pod it
//! could not create (Pod Security admission, a quota, a missing ServiceAccount) only as a
//! `FailedCreate` event on the DaemonSet, so the collectors' condition reads it from there
//! instead of showing only "0/N ready".

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

/// The reason the DaemonSet controller gives to a pod it could not create.
const FAILED_CREATE: &str = "FailedCreate";

/// The message of the newest `FailedCreate` event of `daemon_set`, when it has fewer pods
/// than nodes to run them; `None` when it has them all or no such event exists. A failure
/// to read events is logged and yields `None`: it must not fail the reconcile.
pub async fn failed_pod_creation(client: &Client, daemon_set: &DaemonSet) -> Option<String> {
    let status = daemon_set.status.as_ref()?;
    if status.current_number_scheduled >= status.desired_number_scheduled {
        return None;
    }
    let events: Api<Event> = Api::namespaced(client.clone(), &daemon_set.namespace()?);
    let selector = format!(
        "involvedObject.kind=DaemonSet,involvedObject.name={},involvedObject.uid={},reason={FAILED_CREATE}",
        daemon_set.name_any(),
        daemon_set.uid()?,
    );
    match events.list(&ListParams::default().fields(&selector)).await {
        Ok(list) => list
            .items
            .into_iter()
            .max_by_key(|event| {
                event
                    .last_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .or(event.event_time.as_ref().map(|t| t.0))
                    .or(event.metadata.creation_timestamp.as_ref().map(|t| t.0))
            })
            .and_then(|event| event.message),
        Err(error) => {
            tracing::warn!(%error, "reading the collector DaemonSet's events failed");
            None
        }
    }
}
