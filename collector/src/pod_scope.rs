//! The collector as a sidecar (`--pod-scope`): it runs in one pod's shared process namespace
//! and records that pod's processes only, to `vm_process_metrics`, with the pod's identity
//! from the downward API (`POD_NAMESPACE`, `POD_NAME`, `POD_UID`). It writes no host metrics
//! and no `host_process_metrics`: the `/proc` of a container still shows the node's CPU,
//! memory and network counters, which are not the pod's to report.
//!
//! Which container a process runs in comes from its cgroup: in the sidecar's cgroup
//! namespace, another container's processes show a path such as
//! `/../cri-containerd-<id>.scope`, naming the container id, while the sidecar's own show
//! `/` (or, without a cgroup namespace, the sidecar's own id, left out too). The container's
//! name comes from the kubelet's per-container directory, which is bind-mounted into every
//! container as its termination-message file and appears in `/proc/<pid>/mountinfo`
//! (readable whatever the process's uid); failing that, a pod with a single other container
//! gives it its name. The pause process (pid 1 of a shared process namespace) is left out
//! unless asked for.
//!
//! What a non-root sidecar can read of the other containers' processes, without
//! `CAP_SYS_PTRACE`: `stat`, `status`, `cmdline`, `cgroup` and `mountinfo` whatever their
//! uid; `io` (and `environ`) only for processes of its own uid whose capabilities it also
//! holds (the kernel's ptrace read check). The injection therefore runs the sidecar as the
//! pod's uid when the pod names one; otherwise the disk I/O columns stay at zero.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::cgroup;
use crate::pods::PodIndex;
use crate::rows::Batch;

/// The pod the sidecar runs in, as the downward API tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's uid.
    pub uid: String,
    /// The pod's other containers' names (`POD_CONTAINERS`, comma-separated; may be empty).
    pub containers: Vec<String>,
}

/// A setting the pod-scoped mode needs is missing.
#[derive(Debug, thiserror::Error)]
#[error(
    "missing setting {0}: with --pod-scope the collector reads its pod's identity from the \
     downward API; the operator's injection sets POD_NAMESPACE, POD_NAME and POD_UID"
)]
pub struct MissingIdentity(&'static str);

impl PodIdentity {
    /// The identity from the environment (`env` looks a variable up).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, MissingIdentity> {
        let required = |name: &'static str| {
            env(name)
                .filter(|value| !value.is_empty())
                .ok_or(MissingIdentity(name))
        };
        Ok(Self {
            namespace: required("POD_NAMESPACE")?,
            name: required("POD_NAME")?,
            uid: required("POD_UID")?,
            containers: env("POD_CONTAINERS")
                .unwrap_or_default()
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// Finds the pod's containers among the processes of the shared process namespace.
#[derive(Debug)]
pub struct PodScope {
    identity: PodIdentity,
    proc_root: PathBuf,
    include_pause: bool,
    /// Container names already found, by container id.
    names: BTreeMap<String, String>,
}

impl PodScope {
    /// The scope of the pod `identity`, whose processes the `/proc` at `proc_root` shows;
    /// with `include_pause`, the pause process is recorded too.
    pub fn new(identity: PodIdentity, proc_root: PathBuf, include_pause: bool) -> Self {
        Self {
            identity,
            proc_root,
            include_pause,
            names: BTreeMap::new(),
        }
    }

    /// The pod's identity.
    pub fn identity(&self) -> &PodIdentity {
        &self.identity
    }

    /// The index the sampler attributes processes with: the pod's containers that have
    /// processes now, found from the cgroups; the sidecar's own container, and the pause
    /// process's unless asked for, are not in it, so their processes are not recorded.
    pub fn index(&mut self) -> PodIndex {
        let read = |pid: &str, file: &str| {
            std::fs::read_to_string(self.proc_root.join(pid).join(file)).ok()
        };
        let own = read("self", "cgroup").and_then(|c| cgroup::parse(&c));
        let pause = (!self.include_pause)
            .then(|| read("1", "comm").filter(|comm| comm.trim() == "pause"))
            .flatten()
            .and_then(|_| read("1", "cgroup"))
            .and_then(|c| cgroup::parse(&c));
        let left_out: BTreeSet<String> = own
            .into_iter()
            .chain(pause)
            .map(|c| c.container_id)
            .collect();
        // One process of each container, to read the container's name from.
        let mut containers: BTreeMap<String, String> = BTreeMap::new();
        let pids = std::fs::read_dir(&self.proc_root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok());
        for pid in pids {
            let pid = pid.to_string();
            let Some(container) = read(&pid, "cgroup").and_then(|c| cgroup::parse(&c)) else {
                continue;
            };
            if !left_out.contains(&container.container_id) {
                containers.entry(container.container_id).or_insert(pid);
            }
        }
        for (id, pid) in &containers {
            if !self.names.contains_key(id)
                && let Some(name) = read(pid, "mountinfo")
                    .and_then(|m| container_name_in_mountinfo(&m, &self.identity.uid))
            {
                self.names.insert(id.clone(), name);
            }
        }
        let single = match (containers.len(), self.identity.containers.as_slice()) {
            (1, [only]) => Some(only.clone()),
            _ => None,
        };
        let named = containers.into_keys().map(|id| {
            let name = self.names.get(&id).cloned().or_else(|| single.clone());
            (id, name)
        });
        PodIndex::from_pods([&pod(&self.identity, named)])
    }
}

/// A pod object standing for the sidecar's pod, with the containers found (an unknown name
/// left empty), for [`PodIndex::from_pods`].
fn pod(identity: &PodIdentity, containers: impl Iterator<Item = (String, Option<String>)>) -> Pod {
    let statuses: Vec<ContainerStatus> = containers
        .map(|(id, name)| ContainerStatus {
            name: name.unwrap_or_default(),
            container_id: Some(id),
            ..ContainerStatus::default()
        })
        .collect();
    Pod {
        metadata: ObjectMeta {
            namespace: Some(identity.namespace.clone()),
            name: Some(identity.name.clone()),
            uid: Some(identity.uid.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: (identity.containers.iter())
                .map(|name| Container {
                    name: name.clone(),
                    ..Container::default()
                })
                .collect(),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            container_statuses: Some(statuses),
            ..PodStatus::default()
        }),
    }
}

/// The rows a sidecar writes: the pod's processes only; no host rows, no
/// `host_process_metrics` rows, and no empty container names.
pub fn pod_rows(mut batch: Batch) -> Batch {
    for row in &mut batch.vms {
        row.container_name = row.container_name.take().filter(|name| !name.is_empty());
    }
    Batch {
        vms: batch.vms,
        ..Batch::default()
    }
}

/// The name of the container whose process has this `/proc/<pid>/mountinfo`: the kubelet
/// bind-mounts `.../pods/<pod uid>/containers/<name>/<file>` as the container's termination
/// message file, and the mount's root names that path.
pub fn container_name_in_mountinfo(mountinfo: &str, pod_uid: &str) -> Option<String> {
    let marker = format!("/pods/{pod_uid}/containers/");
    mountinfo.lines().find_map(|line| {
        let root = line.split(' ').nth(3)?;
        let rest = &root[root.find(&marker)? + marker.len()..];
        let name = rest.split('/').next()?;
        (!name.is_empty()).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0c4e3b9a-7f1d-4e2b-9a8c-6d5e4f3a2b1c";

    #[test]
    fn the_identity_comes_from_the_downward_api_variables() {
        let env = |name: &str| {
            Some(
                match name {
                    "POD_NAMESPACE" => "shop",
                    "POD_NAME" => "web-7d9f",
                    "POD_UID" => UID,
                    "POD_CONTAINERS" => "app,proxy",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        let identity = PodIdentity::from_env(env).expect("complete");
        assert_eq!(identity.name, "web-7d9f");
        assert_eq!(identity.containers, ["app", "proxy"]);
        let error = PodIdentity::from_env(|name| env(name).filter(|_| name != "POD_UID"))
            .expect_err("incomplete");
        assert!(error.to_string().contains("POD_UID"), "{error}");
    }

    #[test]
    fn the_container_name_is_in_the_termination_log_mount() {
        let mountinfo = format!(
            "1460 1401 0:391 / / rw,relatime - overlay overlay rw\n\
             1476 1460 259:1 /var/lib/kubelet/pods/{UID}/etc-hosts /etc/hosts rw - ext4 /dev/root rw\n\
             1477 1460 259:1 /var/lib/kubelet/pods/{UID}/containers/app/1b2c3d4e /dev/termination-log rw - ext4 /dev/root rw\n"
        );
        assert_eq!(
            container_name_in_mountinfo(&mountinfo, UID).as_deref(),
            Some("app")
        );
        assert_eq!(container_name_in_mountinfo(&mountinfo, "another-uid"), None);
    }

    #[test]
    fn a_pod_row_batch_has_no_host_rows() {
        use crate::rows::{HostRow, VmRow};
        use chrono::DateTime;
        let vm = VmRow {
            timestamp: DateTime::UNIX_EPOCH,
            host: "node".into(),
            pid: 7,
            start_time: DateTime::UNIX_EPOCH,
            process_name: "nginx".into(),
            command_line: None,
            pod_namespace: Some("shop".into()),
            pod_name: Some("web".into()),
            pod_uid: UID.into(),
            container_id: "a".repeat(64),
            container_name: Some(String::new()),
            cpu_usage_percent: 0.0,
            cpu_peak_percent: 0.0,
            cpu_limit_percent: None,
            cpu_request_percent: None,
            memory_limit_percent: None,
            memory_request_percent: None,
            memory_usage_mb: 0.0,
            disk_read_bytes: 0,
            disk_write_bytes: 0,
        };
        let host: HostRow = serde_json::from_value(serde_json::json!({
            "timestamp": "1970-01-01T00:00:00Z", "host": "node", "cpu_usage_percent": 0.0,
            "cpu_per_core_percent": [], "load_1": 0.0, "load_5": 0.0, "load_15": 0.0,
            "memory_total_bytes": 0, "memory_used_bytes": 0, "memory_usage_mb": 0.0,
            "swap_total_bytes": 0, "swap_used_bytes": 0, "disk_total_bytes": 0,
            "disk_used_bytes": 0, "disk_read_bytes": 0, "disk_write_bytes": 0,
            "network_rx_bytes": 0, "network_tx_bytes": 0, "uptime_seconds": 0,
            "process_count": 0
        }))
        .expect("a host row");
        let batch = pod_rows(Batch {
            hosts: vec![host],
            processes: Vec::new(),
            vms: vec![vm],
        });
        assert!(batch.hosts.is_empty() && batch.processes.is_empty());
        assert_eq!(batch.vms.len(), 1);
        assert_eq!(batch.vms[0].container_name, None, "an unknown name is none");
    }

    #[test]
    fn the_index_names_the_pods_containers_by_id() {
        let identity = PodIdentity {
            namespace: "shop".into(),
            name: "web".into(),
            uid: UID.into(),
            containers: vec!["app".into()],
        };
        let id = "b".repeat(64);
        let index = PodIndex::from_pods([&pod(
            &identity,
            [(id.clone(), Some("app".to_owned()))].into_iter(),
        )]);
        let known = index.container(&id).expect("known");
        assert_eq!(
            (known.namespace.as_str(), known.pod_name.as_str()),
            ("shop", "web")
        );
        assert_eq!(known.pod_uid, UID);
        assert_eq!(known.container_name, "app");
    }
}
