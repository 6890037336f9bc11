//! The collector DaemonSet: one collector per node, reading the host's `/proc` (which also
//! tells each process's cgroup, in `/proc/<pid>/cgroup`: the host's cgroup tree is not
//! mounted), with a security context as strict as a process collector allows.

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HostPathVolumeSource,
    KeyToPath, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};
use kube::ResourceExt;

use super::{
    COLLECTOR_CONFIG_KEY, Component, hardened_container, http_probe, owned_meta, pod_metadata,
    pod_selector, runtime_default_seccomp,
};
use crate::crd::{CaSource, MetricsStack};
use crate::validate::{
    COLLECTOR_METRICS_PORT, DATABASE_CA_FILE_NAME, DATABASE_CA_MOUNT, HOST_PROC_MOUNT, SPOOL_MOUNT,
};

/// Annotation on the pod template carrying the configuration's checksum.
pub const CONFIG_CHECKSUM_ANNOTATION: &str = "metricsstack.dev/config-checksum";
const CONFIG_MOUNT: &str = "/etc/metricsstack";

/// The collector DaemonSet, running `image`.
pub fn build(stack: &MetricsStack, config_checksum: &str, image: &str) -> DaemonSet {
    let spec = &stack.spec.collector;
    let name = Component::Collector.object_name(stack);
    let read_only = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let host_path = |name: &str, path: String, kind: &str| Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path,
            type_: Some(kind.into()),
        }),
        ..Volume::default()
    };
    let (ca_volume, ca_mount) = database_ca_volume(stack).unzip();
    let container = Container {
        name: "collector".into(),
        image: Some(image.to_owned()),
        image_pull_policy: Some(spec.image_pull_policy.as_str().into()),
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_MOUNT}/{COLLECTOR_CONFIG_KEY}"),
        ]),
        env: Some(vec![
            EnvVar {
                name: "NODE_NAME".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "spec.nodeName".into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            database_url_env(stack),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: i32::from(COLLECTOR_METRICS_PORT),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", "metrics")),
        readiness_probe: Some(http_probe("/readyz", "metrics")),
        resources: spec.resources.clone(),
        volume_mounts: Some(
            vec![
                read_only("config", CONFIG_MOUNT),
                read_only("host-proc", HOST_PROC_MOUNT),
                VolumeMount {
                    name: "spool".into(),
                    mount_path: SPOOL_MOUNT.into(),
                    ..VolumeMount::default()
                },
            ]
            .into_iter()
            .chain(ca_mount)
            .collect(),
        ),
        // Root, because the spool is a host directory owned by root, and because reading
        // other users' /proc/<pid>/io needs the owner's uid or CAP_SYS_PTRACE, which is the
        // one capability kept: read-only inspection of other processes' /proc entries; no
        // tracing is done.
        security_context: Some(hardened_container(0, Some(vec!["SYS_PTRACE".into()]))),
        ..Container::default()
    };
    DaemonSet {
        metadata: owned_meta(stack, name.clone(), Component::Collector),
        spec: Some(DaemonSetSpec {
            selector: pod_selector(stack, Component::Collector),
            update_strategy: spec.update_strategy.clone(),
            template: PodTemplateSpec {
                metadata: Some(pod_metadata(stack, Component::Collector, config_checksum)),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    // The token is needed only to watch this node's pods for attribution.
                    automount_service_account_token: Some(spec.pod_attribution),
                    // The host's process table: without it the collector would see only itself,
                    // and could not read the processes' CPU clocks by the pids /proc lists.
                    host_pid: Some(true),
                    containers: vec![container],
                    node_selector: (!spec.node_selector.is_empty())
                        .then(|| spec.node_selector.clone()),
                    tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
                    priority_class_name: spec.priority_class_name.clone(),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    termination_grace_period_seconds: Some(30),
                    volumes: Some(
                        vec![
                            Volume {
                                name: "config".into(),
                                config_map: Some(ConfigMapVolumeSource {
                                    name: name.clone(),
                                    ..ConfigMapVolumeSource::default()
                                }),
                                ..Volume::default()
                            },
                            host_path("host-proc", "/proc".into(), "Directory"),
                            host_path(
                                "spool",
                                format!(
                                    "/var/lib/metricsstack/{}/{}",
                                    stack.namespace().unwrap_or_default(),
                                    stack.name_any()
                                ),
                                "DirectoryOrCreate",
                            ),
                        ]
                        .into_iter()
                        .chain(ca_volume)
                        .collect(),
                    ),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    }
}

/// The data plane's `DATABASE_URL`: from the Secret of the stack's pooler, when it has one,
/// else from the Secret the operator connects with.
pub fn database_url_env(stack: &MetricsStack) -> EnvVar {
    let database = &stack.spec.database;
    let secret = database
        .pooler
        .as_ref()
        .map_or(&database.secret_ref, |pooler| &pooler.secret_ref);
    EnvVar {
        name: "DATABASE_URL".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The volume projecting the database's CA certificate (`spec.database.caRef`) to
/// [`DATABASE_CA_MOUNT`]/[`DATABASE_CA_FILE_NAME`], and its read-only mount; none without a
/// CA. A missing Secret, ConfigMap or key keeps the pod from starting, rather than letting it
/// connect without the CA.
pub fn database_ca_volume(stack: &MetricsStack) -> Option<(Volume, VolumeMount)> {
    const VOLUME: &str = "database-ca";
    let source = stack.spec.database.ca_ref.as_ref()?.source()?;
    let reference = source.key_ref();
    let items = Some(vec![KeyToPath {
        key: reference.key.clone(),
        path: DATABASE_CA_FILE_NAME.into(),
        mode: None,
    }]);
    let volume = match source {
        CaSource::Secret(_) => Volume {
            name: VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(reference.name.clone()),
                items,
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        CaSource::ConfigMap(_) => Volume {
            name: VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: reference.name.clone(),
                items,
                optional: Some(false),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    };
    let mount = VolumeMount {
        name: VOLUME.into(),
        mount_path: DATABASE_CA_MOUNT.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    Some((volume, mount))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures;

    fn pod_spec(daemon_set: &DaemonSet) -> &PodSpec {
        daemon_set
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("a pod spec")
    }

    #[test]
    fn runs_the_collector_with_the_host_process_table_read_only() {
        let (stack, _) = fixtures::stack("production");
        let daemon_set = build(&stack, "abc", "collector:test");
        let pod = pod_spec(&daemon_set);
        assert_eq!(pod.host_pid, Some(true));
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("collector:test"));
        let mounts = container.volume_mounts.as_ref().expect("mounts");
        let proc = mounts
            .iter()
            .find(|m| m.mount_path == HOST_PROC_MOUNT)
            .expect("the host's /proc is mounted");
        assert_eq!(proc.read_only, Some(true));
        // Of the host, only /proc and the spool directory: nothing reads the cgroup tree
        // (a process's cgroup is in /proc/<pid>/cgroup).
        let host_paths: Vec<&str> = pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.host_path.as_ref())
            .map(|h| h.path.as_str())
            .collect();
        assert_eq!(
            host_paths,
            ["/proc", "/var/lib/metricsstack/monitoring/fleet"],
            "host paths"
        );
        let security = container
            .security_context
            .as_ref()
            .expect("security context");
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        let caps = security.capabilities.as_ref().expect("capabilities");
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
        assert_eq!(caps.add.as_deref(), Some(&["SYS_PTRACE".to_owned()][..]));
    }

    #[test]
    fn takes_the_node_name_and_database_url_from_the_cluster() {
        let (stack, _) = fixtures::stack("production");
        let daemon_set = build(&stack, "abc", "collector:test");
        let env = pod_spec(&daemon_set).containers[0]
            .env
            .clone()
            .expect("env");
        let node = env
            .iter()
            .find(|e| e.name == "NODE_NAME")
            .expect("NODE_NAME");
        let field = node.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
        assert_eq!(field.map(|f| f.field_path.as_str()), Some("spec.nodeName"));
        let url = env
            .iter()
            .find(|e| e.name == "DATABASE_URL")
            .expect("DATABASE_URL");
        let secret = url
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("secret");
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("timescaledb-app", "connection-uri")
        );
    }

    #[test]
    fn behind_a_pooler_the_data_plane_takes_the_poolers_url() {
        let (mut stack, _) = fixtures::stack("production");
        stack.spec.database.pooler = Some(crate::crd::PoolerSpec {
            kind: crate::crd::PoolerKind::PgBouncerTransaction,
            secret_ref: crate::crd::SecretKeyRef {
                name: "pgbouncer-app".into(),
                key: "uri".into(),
            },
        });
        let secret = database_url_env(&stack)
            .value_from
            .and_then(|v| v.secret_key_ref)
            .expect("secret");
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("pgbouncer-app", "uri")
        );
    }

    #[test]
    fn carries_scheduling_settings_and_the_config_checksum() {
        let (stack, _) = fixtures::stack("production");
        let daemon_set = build(&stack, "checksum-1", "collector:test");
        let pod = pod_spec(&daemon_set);
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        assert_eq!(
            pod.node_selector
                .as_ref()
                .and_then(|s| s.get("kubernetes.io/os"))
                .map(String::as_str),
            Some("linux")
        );
        assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
        let spec = daemon_set.spec.as_ref().expect("spec");
        assert_eq!(
            spec.update_strategy
                .as_ref()
                .and_then(|s| s.type_.as_deref()),
            Some("RollingUpdate")
        );
        let annotations = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref());
        assert_eq!(
            annotations
                .and_then(|a| a.get(CONFIG_CHECKSUM_ANNOTATION))
                .map(String::as_str),
            Some("checksum-1")
        );
        let resources = pod.containers[0].resources.as_ref().expect("resources");
        assert!(
            resources
                .limits
                .as_ref()
                .is_some_and(|l| l.contains_key("memory"))
        );
    }

    #[test]
    fn mounts_the_database_ca_read_only_from_its_secret_or_config_map() {
        let (mut stack, _) = fixtures::stack("production");
        let pod = pod_spec(&build(&stack, "x", "collector:test")).clone();
        let volume = (pod.volumes.iter().flatten())
            .find(|v| v.name == "database-ca")
            .expect("the CA volume");
        let secret = volume.secret.as_ref().expect("from the Secret");
        assert_eq!(secret.secret_name.as_deref(), Some("timescaledb-ca"));
        let items = secret.items.as_ref().expect("one key");
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("ca.crt", "ca.crt")
        );
        let mount = (pod.containers[0].volume_mounts.iter().flatten())
            .find(|m| m.name == "database-ca")
            .expect("mounted");
        assert_eq!(mount.mount_path, DATABASE_CA_MOUNT);
        assert_eq!(mount.read_only, Some(true));

        let ca_ref = stack.spec.database.ca_ref.as_mut().expect("a CA");
        ca_ref.config_map_key_ref = ca_ref.secret_key_ref.take();
        let pod = pod_spec(&build(&stack, "x", "collector:test")).clone();
        let volume = (pod.volumes.iter().flatten())
            .find(|v| v.name == "database-ca")
            .expect("the CA volume");
        assert!(volume.secret.is_none());
        let config_map = volume.config_map.as_ref().expect("from the ConfigMap");
        assert_eq!(config_map.name, "timescaledb-ca");

        stack.spec.database.ca_ref = None;
        let pod = pod_spec(&build(&stack, "x", "collector:test")).clone();
        assert!(!(pod.volumes.iter().flatten()).any(|v| v.name == "database-ca"));
        assert!(
            !(pod.containers[0].volume_mounts.iter().flatten()).any(|m| m.name == "database-ca")
        );
    }

    #[test]
    fn mounts_no_token_without_pod_attribution() {
        let (mut stack, _) = fixtures::stack("minimal");
        stack.spec.collector.pod_attribution = false;
        assert_eq!(
            pod_spec(&build(&stack, "x", "collector:test")).automount_service_account_token,
            Some(false)
        );
        stack.spec.collector.pod_attribution = true;
        assert_eq!(
            pod_spec(&build(&stack, "x", "collector:test")).automount_service_account_token,
            Some(true)
        );
    }
}
