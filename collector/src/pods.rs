//! The pods of this node, from a watch of the API server narrowed to the node by a field
//! selector: which container id belongs to which pod, and the container's CPU and memory
//! requests and limits, against which a process's use is recorded as shares.

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
    /// The container's CPU request in millicores, if it has one.
    pub cpu_request_millicores: Option<i64>,
    /// The container's memory limit in bytes, if it has one.
    pub memory_limit_bytes: Option<i64>,
    /// The container's memory request in bytes, if it has one.
    pub memory_request_bytes: Option<i64>,
}

/// A process's use as percentages of its container's requests and limits; `None` where the
/// container sets no (or a zero) request or limit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ContainerShares {
    /// CPU used, percent of the container's CPU request.
    pub cpu_request_percent: Option<f32>,
    /// CPU used, percent of the container's CPU limit.
    pub cpu_limit_percent: Option<f32>,
    /// Resident memory, percent of the container's memory request.
    pub memory_request_percent: Option<f32>,
    /// Resident memory, percent of the container's memory limit.
    pub memory_limit_percent: Option<f32>,
}

impl KnownContainer {
    /// The shares of this container's requests and limits that a process using
    /// `cpu_usage_percent` (percent of one core) and `memory_usage_mb` (MiB resident) takes.
    pub fn shares(&self, cpu_usage_percent: f32, memory_usage_mb: f64) -> ContainerShares {
        let of_cpu = |millicores: Option<i64>| {
            millicores
                .filter(|m| *m > 0)
                .map(|m| cpu_usage_percent * 1000.0 / m as f32)
        };
        let of_memory = |bytes: Option<i64>| {
            bytes
                .filter(|b| *b > 0)
                .map(|b| (memory_usage_mb * 1024.0 * 1024.0 * 100.0 / b as f64) as f32)
        };
        ContainerShares {
            cpu_request_percent: of_cpu(self.cpu_request_millicores),
            cpu_limit_percent: of_cpu(self.cpu_limit_millicores),
            memory_request_percent: of_memory(self.memory_request_bytes),
            memory_limit_percent: of_memory(self.memory_limit_bytes),
        }
    }
}

/// A container's requests and limits, as its pod's spec sets them.
#[derive(Clone, Copy, Debug, Default)]
struct Resources {
    cpu_limit_millicores: Option<i64>,
    cpu_request_millicores: Option<i64>,
    memory_limit_bytes: Option<i64>,
    memory_request_bytes: Option<i64>,
}

impl Resources {
    fn of(container: &k8s_openapi::api::core::v1::Container) -> Self {
        let resources = container.resources.as_ref();
        let limit = |name: &str| {
            resources
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get(name))
                .map(|q| q.0.as_str())
        };
        let request = |name: &str| {
            resources
                .and_then(|r| r.requests.as_ref())
                .and_then(|l| l.get(name))
                .map(|q| q.0.as_str())
        };
        Self {
            cpu_limit_millicores: limit("cpu").and_then(millicores),
            cpu_request_millicores: request("cpu").and_then(millicores),
            memory_limit_bytes: limit("memory").and_then(bytes),
            memory_request_bytes: request("memory").and_then(bytes),
        }
    }
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
            let resources: HashMap<&str, Resources> = pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .map(|c| (c.name.as_str(), Resources::of(c)))
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
                let Resources {
                    cpu_limit_millicores,
                    cpu_request_millicores,
                    memory_limit_bytes,
                    memory_request_bytes,
                } = resources
                    .get(status.name.as_str())
                    .copied()
                    .unwrap_or_default();
                containers.insert(
                    id,
                    KnownContainer {
                        namespace: pod.namespace().unwrap_or_default(),
                        pod_name: pod.name_any(),
                        pod_uid: pod.uid().unwrap_or_default(),
                        container_name: status.name.clone(),
                        cpu_limit_millicores,
                        cpu_request_millicores,
                        memory_limit_bytes,
                        memory_request_bytes,
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

/// A memory quantity (`128Mi`, `1G`, `134217728`, `1e9`, `1.5Gi`) in bytes.
pub fn bytes(quantity: &str) -> Option<i64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| quantity.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((quantity, 1.0));
    let value = number.parse::<f64>().ok()? * factor;
    (value.is_finite() && value >= 0.0).then(|| value.ceil() as i64)
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
    fn reads_memory_quantities() {
        assert_eq!(bytes("128Mi"), Some(128 << 20));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("64k"), Some(64_000));
        assert_eq!(bytes("134217728"), Some(134_217_728));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("lots"), None);
    }

    #[test]
    fn shares_are_use_over_the_request_and_the_limit_where_set() {
        let container = KnownContainer {
            namespace: "shop".into(),
            pod_name: "web-0".into(),
            pod_uid: "uid".into(),
            container_name: "app".into(),
            cpu_limit_millicores: Some(500),
            cpu_request_millicores: Some(250),
            memory_limit_bytes: Some(256 << 20),
            memory_request_bytes: None,
        };
        // A quarter of a core and 64 MiB.
        let shares = container.shares(25.0, 64.0);
        assert_eq!(
            shares,
            ContainerShares {
                cpu_request_percent: Some(100.0),
                cpu_limit_percent: Some(50.0),
                memory_request_percent: None,
                memory_limit_percent: Some(25.0),
            }
        );
        let unbounded = KnownContainer {
            cpu_limit_millicores: Some(0),
            cpu_request_millicores: None,
            memory_limit_bytes: None,
            ..container
        };
        assert_eq!(unbounded.shares(25.0, 64.0), ContainerShares::default());
    }

    #[test]
    fn indexes_containers_by_id_with_their_limits() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "web-0", "namespace": "shop", "uid": "0c4e3b9a-7f1d-4e2b-9a8c-6d5e4f3a2b1c" },
            "spec": { "containers": [
                { "name": "app", "resources": {
                    "limits": { "cpu": "250m", "memory": "128Mi" },
                    "requests": { "cpu": "100m", "memory": "64Mi" }
                } },
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
        assert_eq!(app.cpu_request_millicores, Some(100));
        assert_eq!(app.memory_limit_bytes, Some(128 << 20));
        assert_eq!(app.memory_request_bytes, Some(64 << 20));
        assert_eq!(
            index.container("bbbb").map(|c| c.cpu_limit_millicores),
            Some(None)
        );
        assert!(index.container("cccc").is_none());
    }
}
