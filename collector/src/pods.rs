//! The pods of this node, from a watch of the API server narrowed to the node by a field
//! selector: which container id belongs to which pod, and the container's CPU limit.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

/// A container the pod watch knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownContainer {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's uid.
    pub pod_uid: String,
    /// The container's name.
    pub container_name: String,
    /// The container's CPU limit in millicores, if it has one.
    pub cpu_limit_millicores: Option<i64>,
}

/// Containers by id (64 hex digits, without the `runtime://` prefix).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodIndex {
    containers: HashMap<String, KnownContainer>,
}

impl PodIndex {
    /// Indexes the running containers of `pods`.
    pub fn from_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Self {
        let mut containers = HashMap::new();
        for pod in pods {
            let limits: HashMap<&str, Option<i64>> = pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .map(|c| {
                    let cpu = c
                        .resources
                        .as_ref()
                        .and_then(|r| r.limits.as_ref())
                        .and_then(|l| l.get("cpu"))
                        .and_then(|q| millicores(&q.0));
                    (c.name.as_str(), cpu)
                })
                .collect();
            let statuses = pod
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten());
            for status in statuses {
                let Some(id) = status.container_id.as_deref() else {
                    continue;
                };
                let id = id.rsplit("://").next().unwrap_or(id).to_owned();
                containers.insert(
                    id,
                    KnownContainer {
                        namespace: pod.namespace().unwrap_or_default(),
                        pod_name: pod.name_any(),
                        pod_uid: pod.uid().unwrap_or_default(),
                        container_name: status.name.clone(),
                        cpu_limit_millicores: limits.get(status.name.as_str()).copied().flatten(),
                    },
                );
            }
        }
        Self { containers }
    }

    /// The container with this id, if a pod on this node runs it.
    pub fn container(&self, id: &str) -> Option<&KnownContainer> {
        self.containers.get(id)
    }
}

/// A CPU quantity (`500m`, `2`, `1.5`) in millicores.
pub fn millicores(quantity: &str) -> Option<i64> {
    match quantity.strip_suffix('m') {
        Some(milli) => milli.parse().ok(),
        None => quantity
            .parse::<f64>()
            .ok()
            .map(|cores| (cores * 1000.0).round() as i64),
    }
}

/// Watches the pods of `node` into a store that the sampler reads.
pub fn watch(
    client: Client,
    node: &str,
) -> (Store<Pod>, impl std::future::Future<Output = ()> + use<>) {
    let (store, writer) = reflector::store();
    let pods: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let stream = reflector::reflector(writer, watcher(pods, config))
        .default_backoff()
        .touched_objects();
    let run = async move {
        use futures::StreamExt;
        stream
            .for_each(|event| async move {
                if let Err(error) = event {
                    tracing::warn!(%error, "watching this node's pods failed; retrying");
                }
            })
            .await;
    };
    (store, run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_quantities() {
        assert_eq!(millicores("500m"), Some(500));
        assert_eq!(millicores("2"), Some(2000));
        assert_eq!(millicores("1.5"), Some(1500));
        assert_eq!(millicores("lots"), None);
    }

    #[test]
    fn indexes_containers_by_id_with_their_limits() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "web-0", "namespace": "shop", "uid": "0c4e3b9a-7f1d-4e2b-9a8c-6d5e4f3a2b1c" },
            "spec": { "containers": [
                { "name": "app", "resources": { "limits": { "cpu": "250m" } } },
                { "name": "sidecar" }
            ] },
            "status": { "containerStatuses": [
                { "name": "app", "containerID": "containerd://aaaa", "image": "", "imageID": "", "ready": true, "restartCount": 0 },
                { "name": "sidecar", "containerID": "cri-o://bbbb", "image": "", "imageID": "", "ready": true, "restartCount": 0 }
            ] }
        }))
        .expect("a pod");
        let index = PodIndex::from_pods([&pod]);
        let app = index.container("aaaa").expect("app");
        assert_eq!(
            (app.pod_name.as_str(), app.namespace.as_str()),
            ("web-0", "shop")
        );
        assert_eq!(app.cpu_limit_millicores, Some(250));
        assert_eq!(
            index.container("bbbb").map(|c| c.cpu_limit_millicores),
            Some(None)
        );
        assert!(index.container("cccc").is_none());
    }
}
