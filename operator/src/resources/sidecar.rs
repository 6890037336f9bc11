//! The sidecar collector that the admission webhook injects into annotated pods: a native
//! sidecar (an init container with `restartPolicy: Always`) in the pod's shared process
//! namespace, recording the pod's own processes. Pure: from the pod and the stack's settings
//! it builds the JSON patch; nothing here talks to the API server.
//!
//! The sidecar passes the Pod Security `restricted` level: no host namespaces, non-root,
//! every capability dropped (none added), no privilege escalation, a read-only root
//! filesystem, the runtime's default seccomp profile, and only `configMap`, `secret` and
//! `emptyDir` volumes. It reads the pod's identity from the downward API, not from the
//! Kubernetes API, so it needs no credentials beyond the database's.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, Pod, ResourceRequirements, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::daemon_set::{database_ca_volume, database_url_env};
use super::{COLLECTOR_CONFIG_KEY, Component, hardened_container};
use crate::crd::MetricsStack;

/// Annotation asking for the sidecar: its value names the MetricsStack (in the pod's
/// namespace) whose settings and database the sidecar uses.
pub const INJECT_ANNOTATION: &str = "metricsstack.dev/inject";
/// Annotation on an injected pod: the hash of the settings its sidecar was built from
/// ([`SidecarSettings::hash`]), to tell outdated sidecars.
pub const SIDECAR_HASH_ANNOTATION: &str = "metricsstack.dev/sidecar-hash";
/// Label on an injected pod naming its stack, so that the operator lists them by selector.
pub const SIDECAR_LABEL: &str = "metricsstack.dev/sidecar";
/// The injected container's name; a pod that has a container by this name is left alone.
pub const SIDECAR_CONTAINER: &str = "metricsstack-collector";
/// Environment variable listing the pod's other containers (comma-separated), for the
/// sidecar to name the container of a process when the pod has one.
pub const POD_CONTAINERS_ENV: &str = "POD_CONTAINERS";
/// Where the spool `emptyDir` is mounted in the sidecar.
pub const SIDECAR_SPOOL_MOUNT: &str = "/var/lib/metricsstack/spool";
/// The uid the sidecar runs as when neither the pod nor its first container names a
/// non-root one.
pub const SIDECAR_DEFAULT_UID: i64 = 65532;

const CONFIG_MOUNT: &str = "/etc/metricsstack";
const CONFIG_VOLUME: &str = "metricsstack-collector-config";
const SPOOL_VOLUME: &str = "metricsstack-collector-spool";
const CA_VOLUME: &str = "metricsstack-database-ca";
const MIB: u64 = 1024 * 1024;

/// A stack's sidecar settings, resolved (the image chosen, the interval in seconds): what
/// decides the injected container, and therefore what [`Self::hash`] covers.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSettings {
    /// The stack's name (the ConfigMap `<stack>-collector` holds the collector's settings).
    pub stack: String,
    /// The container image.
    pub image: String,
    /// When to pull the image.
    pub image_pull_policy: String,
    /// Seconds between samples.
    pub interval_seconds: u64,
    /// Size limit of the spool `emptyDir`, MiB.
    pub spool_megabytes: u32,
    /// The container's compute resources.
    pub resources: ResourceRequirements,
    /// Record the pause process too.
    pub include_pause: bool,
    /// `DATABASE_URL` from the stack's Secret.
    pub database_url: EnvVar,
    /// The volume and mount of the database's CA, if the stack verifies the server's
    /// certificate.
    pub database_ca: Option<(Volume, VolumeMount)>,
}

/// The sidecar's resources when the stack sets none.
fn default_resources() -> ResourceRequirements {
    let quantities = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    ResourceRequirements {
        requests: quantities(&[("cpu", "10m"), ("memory", "32Mi")]),
        limits: quantities(&[("memory", "128Mi")]),
        ..ResourceRequirements::default()
    }
}

impl SidecarSettings {
    /// The settings of `stack`'s sidecar; `default_image` is the operator's collector image,
    /// used unless `spec.sidecar.image` or `spec.collector.image` pins one. `None` when the
    /// interval cannot be read (the API server's validation prevents it).
    pub fn of(stack: &MetricsStack, default_image: &str) -> Option<Self> {
        let spec = &stack.spec.sidecar;
        let image = (spec.image.as_ref())
            .or(stack.spec.collector.image.as_ref())
            .map_or(default_image, String::as_str);
        Some(Self {
            stack: stack.name_any(),
            image: image.to_owned(),
            image_pull_policy: stack.spec.collector.image_pull_policy.as_str().to_owned(),
            interval_seconds: spec.interval.seconds().ok()?,
            spool_megabytes: spec.spool_megabytes,
            resources: spec.resources.clone().unwrap_or_else(default_resources),
            include_pause: spec.include_pause,
            database_url: database_url_env(stack),
            // Renamed so as not to meet a volume of the pod's.
            database_ca: database_ca_volume(stack).map(|(mut volume, mut mount)| {
                volume.name = CA_VOLUME.into();
                mount.name = CA_VOLUME.into();
                (volume, mount)
            }),
        })
    }

    /// A short digest of the settings: a pod whose [`SIDECAR_HASH_ANNOTATION`] differs runs
    /// a sidecar built from other settings.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(serde_json::to_vec(self).expect("the settings serialise"));
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The stack a pod asks for with [`INJECT_ANNOTATION`], if any.
pub fn requested_stack(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(INJECT_ANNOTATION)
        .map(String::as_str)
        .filter(|name| !name.is_empty())
}

/// Whether the pod already has the sidecar (as a container or an init container).
pub fn is_injected(pod: &Pod) -> bool {
    pod.spec.iter().any(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == SIDECAR_CONTAINER)
    })
}

/// The pod with the sidecar injected, or `None` if it has it already (a second admission
/// adds nothing).
pub fn inject(pod: &Pod, settings: &SidecarSettings) -> Option<Pod> {
    if is_injected(pod) {
        return None;
    }
    let mut pod = pod.clone();
    let spec = pod.spec.get_or_insert_with(Default::default);
    let other_containers: Vec<&str> = (spec.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .chain(&spec.containers)
        .map(|c| c.name.as_str())
        .collect();
    // The pod's uid, so that the sidecar may read its processes' /proc/<pid>/io without
    // CAP_SYS_PTRACE: the pod's own non-root uid (which containers inherit), else its first
    // container's, else a fixed non-root one.
    let pod_uid = (spec.security_context.as_ref())
        .and_then(|s| s.run_as_user)
        .filter(|uid| *uid != 0);
    let first_container_uid = (spec.containers.first())
        .and_then(|c| c.security_context.as_ref())
        .and_then(|s| s.run_as_user)
        .filter(|uid| *uid != 0);
    let uid = pod_uid
        .or(first_container_uid)
        .unwrap_or(SIDECAR_DEFAULT_UID);
    let container = container(settings, &other_containers.join(","), uid);
    spec.share_process_namespace = Some(true);
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.extend(sidecar_volumes(settings));
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .push(container);
    pod.labels_mut()
        .insert(SIDECAR_LABEL.into(), settings.stack.clone());
    pod.annotations_mut()
        .insert(SIDECAR_HASH_ANNOTATION.into(), settings.hash());
    Some(pod)
}

/// The JSON patch that injects the sidecar into `pod`, or `None` if it has it already.
pub fn patch(pod: &Pod, settings: &SidecarSettings) -> Option<json_patch::Patch> {
    let injected = inject(pod, settings)?;
    let before = serde_json::to_value(pod).expect("a pod serialises");
    let after = serde_json::to_value(&injected).expect("a pod serialises");
    Some(json_patch::diff(&before, &after))
}

/// The volumes the sidecar mounts: the stack's collector ConfigMap, the spool, and the
/// database's CA when the stack has one.
fn sidecar_volumes(settings: &SidecarSettings) -> Vec<Volume> {
    let config = Volume {
        name: CONFIG_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: collector_config_map(&settings.stack),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    };
    let spool = Volume {
        name: SPOOL_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(format!("{}Mi", settings.spool_megabytes))),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    };
    let ca = settings.database_ca.clone().map(|(volume, _)| volume);
    [config, spool].into_iter().chain(ca).collect()
}

/// The name of the stack's collector ConfigMap.
fn collector_config_map(stack: &str) -> String {
    format!("{stack}-{}", Component::Collector.as_str())
}

/// The sidecar container, running as `uid`; `other_containers` lists the pod's containers.
fn container(settings: &SidecarSettings, other_containers: &str, uid: i64) -> Container {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let value = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    };
    // Room for the files beside the batches, so that a full spool drops its oldest batch
    // before the kubelet evicts the pod for exceeding the emptyDir's limit.
    let spool_bytes = (u64::from(settings.spool_megabytes) * MIB * 9 / 10).max(MIB);
    let env = vec![
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_NAME", "metadata.name"),
        field("POD_UID", "metadata.uid"),
        field("NODE_NAME", "spec.nodeName"),
        value(POD_CONTAINERS_ENV, other_containers.to_owned()),
        settings.database_url.clone(),
        value(
            "COLLECTOR_INTERVAL_SECONDS",
            settings.interval_seconds.to_string(),
        ),
        // A directory of its own in the emptyDir, whose root the sidecar's uid does not
        // own: the collector makes its spool directory 0700.
        value(
            "COLLECTOR_SPOOL_DIR",
            format!("{SIDECAR_SPOOL_MOUNT}/batches"),
        ),
        value("COLLECTOR_SPOOL_MAX_BYTES", spool_bytes.to_string()),
        value("COLLECTOR_PROC_ROOT", "/proc".into()),
        // The pod's identity comes from the downward API: no watch of the node's pods.
        value("COLLECTOR_POD_ATTRIBUTION", "false".into()),
        // The pod's network is the application's: a port chosen by the kernel, on loopback,
        // cannot take one the application wants.
        value("COLLECTOR_LISTEN_ADDRESS", "127.0.0.1:0".into()),
    ];
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    let mounts = [
        mount(CONFIG_VOLUME, CONFIG_MOUNT, true),
        mount(SPOOL_VOLUME, SIDECAR_SPOOL_MOUNT, false),
    ]
    .into_iter()
    .chain(settings.database_ca.clone().map(|(_, mount)| mount))
    .collect();
    let mut args = vec![
        "--config".into(),
        format!("{CONFIG_MOUNT}/{COLLECTOR_CONFIG_KEY}"),
        "--pod-scope".into(),
    ];
    if settings.include_pause {
        args.push("--include-pause".into());
    }
    Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(args),
        env: Some(env),
        resources: Some(settings.resources.clone()),
        volume_mounts: Some(mounts),
        // A native sidecar: started before the application's containers, stopped after them.
        restart_policy: Some("Always".into()),
        security_context: Some(hardened_container(uid, None)),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures;
    use k8s_openapi::api::core::v1::{PodSecurityContext, SecurityContext};

    fn settings() -> SidecarSettings {
        let (stack, _) = fixtures::stack("production");
        SidecarSettings::of(&stack, "collector:default").expect("settings")
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "generateName": "web-",
                "namespace": "monitoring",
                "annotations": { INJECT_ANNOTATION: "fleet" },
                "labels": { "app": "web" }
            },
            "spec": {
                "containers": [{ "name": "app", "image": "nginx" }],
                "initContainers": [{ "name": "migrate", "image": "migrate" }],
                "volumes": [{ "name": "data", "emptyDir": {} }]
            }
        }))
        .expect("a pod")
    }

    fn sidecar(pod: &Pod) -> &Container {
        (pod.spec.as_ref())
            .and_then(|s| s.init_containers.as_ref())
            .and_then(|c| c.iter().find(|c| c.name == SIDECAR_CONTAINER))
            .expect("the sidecar")
    }

    fn env<'a>(container: &'a Container, name: &str) -> &'a EnvVar {
        (container.env.iter().flatten())
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn the_sidecar_is_a_native_sidecar_in_a_shared_process_namespace_after_the_pods_own() {
        let injected = inject(&pod(), &settings()).expect("injected");
        let spec = injected.spec.as_ref().expect("spec");
        assert_eq!(spec.share_process_namespace, Some(true));
        assert_eq!(spec.host_pid, None);
        let names: Vec<&str> = (spec.init_containers.iter().flatten())
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["migrate", SIDECAR_CONTAINER]);
        assert_eq!(sidecar(&injected).restart_policy.as_deref(), Some("Always"));
        let volumes: Vec<&str> = (spec.volumes.iter().flatten())
            .map(|v| v.name.as_str())
            .collect();
        // The production fixture verifies the database's certificate: its CA is mounted.
        assert_eq!(volumes, ["data", CONFIG_VOLUME, SPOOL_VOLUME, CA_VOLUME]);
        assert_eq!(spec.containers.len(), 1, "the application is unchanged");
    }

    #[test]
    fn the_sidecar_meets_the_restricted_pod_security_level() {
        let injected = inject(&pod(), &settings()).expect("injected");
        let security = sidecar(&injected).security_context.clone().expect("set");
        let SecurityContext {
            allow_privilege_escalation,
            capabilities,
            privileged,
            read_only_root_filesystem,
            run_as_non_root,
            run_as_user,
            seccomp_profile,
            ..
        } = security;
        assert_eq!(allow_privilege_escalation, Some(false));
        let capabilities = capabilities.expect("capabilities");
        assert_eq!(capabilities.drop, Some(vec!["ALL".into()]));
        assert_eq!(capabilities.add, None);
        assert_eq!(privileged, Some(false));
        assert_eq!(read_only_root_filesystem, Some(true));
        assert_eq!(run_as_non_root, Some(true));
        assert_eq!(run_as_user, Some(SIDECAR_DEFAULT_UID));
        assert_eq!(
            seccomp_profile.map(|p| p.type_),
            Some("RuntimeDefault".into())
        );
        let spec = injected.spec.expect("spec");
        for volume in spec.volumes.iter().flatten() {
            assert!(volume.host_path.is_none(), "{} is a host path", volume.name);
        }
    }

    #[test]
    fn the_sidecar_runs_as_the_pods_own_non_root_uid() {
        let mut by_pod = pod();
        by_pod.spec.as_mut().expect("spec").security_context = Some(PodSecurityContext {
            run_as_user: Some(1000),
            ..PodSecurityContext::default()
        });
        let injected = inject(&by_pod, &settings()).expect("injected");
        let security = sidecar(&injected).security_context.clone().expect("set");
        assert_eq!(security.run_as_user, Some(1000));

        let mut by_container = pod();
        by_container.spec.as_mut().expect("spec").containers[0].security_context =
            Some(SecurityContext {
                run_as_user: Some(2000),
                ..SecurityContext::default()
            });
        let injected = inject(&by_container, &settings()).expect("injected");
        let security = sidecar(&injected).security_context.clone().expect("set");
        assert_eq!(security.run_as_user, Some(2000));

        let mut root = pod();
        root.spec.as_mut().expect("spec").containers[0].security_context = Some(SecurityContext {
            run_as_user: Some(0),
            ..SecurityContext::default()
        });
        let injected = inject(&root, &settings()).expect("injected");
        let security = sidecar(&injected).security_context.clone().expect("set");
        assert_eq!(security.run_as_user, Some(SIDECAR_DEFAULT_UID));
    }

    #[test]
    fn the_pod_identity_comes_from_the_downward_api() {
        let injected = inject(&pod(), &settings()).expect("injected");
        let container = sidecar(&injected);
        for (name, path) in [
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_NAME", "metadata.name"),
            ("POD_UID", "metadata.uid"),
            ("NODE_NAME", "spec.nodeName"),
        ] {
            let field = (env(container, name).value_from.as_ref())
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            assert_eq!(field, Some(path), "{name}");
        }
        assert_eq!(
            env(container, POD_CONTAINERS_ENV).value.as_deref(),
            Some("app")
        );
        let url = env(container, "DATABASE_URL").value_from.as_ref();
        assert!(url.and_then(|v| v.secret_key_ref.as_ref()).is_some());
    }

    #[test]
    fn the_spool_and_resources_follow_the_stack() {
        let (mut stack, _) = fixtures::stack("production");
        stack.spec.sidecar.spool_megabytes = 100;
        stack.spec.sidecar.interval = crate::crd::Duration::parse("30s").expect("valid");
        let settings = SidecarSettings::of(&stack, "collector:default").expect("settings");
        let injected = inject(&pod(), &settings).expect("injected");
        let spec = injected.spec.as_ref().expect("spec");
        let spool = (spec.volumes.iter().flatten())
            .find(|v| v.name == SPOOL_VOLUME)
            .and_then(|v| v.empty_dir.as_ref())
            .expect("an emptyDir spool");
        assert_eq!(spool.size_limit, Some(Quantity("100Mi".into())));
        let container = sidecar(&injected);
        assert_eq!(
            env(container, "COLLECTOR_SPOOL_MAX_BYTES").value.as_deref(),
            Some("94371840")
        );
        assert_eq!(
            env(container, "COLLECTOR_INTERVAL_SECONDS")
                .value
                .as_deref(),
            Some("30")
        );
        assert_eq!(container.resources, Some(default_resources()));
    }

    #[test]
    fn a_second_admission_adds_nothing() {
        let injected = inject(&pod(), &settings()).expect("injected");
        assert!(is_injected(&injected));
        assert!(inject(&injected, &settings()).is_none());
        assert!(patch(&injected, &settings()).is_none());
    }

    #[test]
    fn the_patch_turns_the_pod_into_the_injected_one() {
        let original = pod();
        let patch = patch(&original, &settings()).expect("a patch");
        let mut patched = serde_json::to_value(&original).expect("serialises");
        json_patch::patch(&mut patched, &patch).expect("the patch applies");
        let expected = inject(&original, &settings()).expect("injected");
        assert_eq!(
            patched,
            serde_json::to_value(&expected).expect("serialises")
        );
        let labels = expected.labels();
        assert_eq!(labels.get(SIDECAR_LABEL).map(String::as_str), Some("fleet"));
        assert_eq!(
            expected.annotations().get(SIDECAR_HASH_ANNOTATION),
            Some(&settings().hash())
        );
    }

    #[test]
    fn the_hash_changes_with_the_settings_and_only_with_them() {
        let (mut stack, _) = fixtures::stack("production");
        let before = SidecarSettings::of(&stack, "collector:default").expect("settings");
        assert_eq!(
            before.hash(),
            SidecarSettings::of(&stack, "collector:default")
                .expect("settings")
                .hash()
        );
        stack.spec.sidecar.spool_megabytes += 1;
        let after = SidecarSettings::of(&stack, "collector:default").expect("settings");
        assert_ne!(before.hash(), after.hash());
    }

    #[test]
    fn only_a_named_stack_asks_for_the_sidecar() {
        assert_eq!(requested_stack(&pod()), Some("fleet"));
        let mut unnamed = pod();
        unnamed
            .annotations_mut()
            .insert(INJECT_ANNOTATION.into(), String::new());
        assert_eq!(requested_stack(&unnamed), None);
        assert_eq!(requested_stack(&Pod::default()), None);
    }
}
