//! The query service Deployment: `metricsstack-operator query-service`, unprivileged.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, PodSecurityContext, PodSpec, PodTemplateSpec,
    Volume, VolumeMount,
};

use super::daemon_set::{database_ca_volume, database_url_env};
use super::{
    Component, QUERY_SERVICE_CONFIG_KEY, hardened_container, http_probe, owned_meta, pod_metadata,
    pod_selector, runtime_default_seccomp,
};
use crate::crd::{MetricsStack, QueryAuthentication};

const CONFIG_MOUNT: &str = "/etc/metricsstack";

/// The query service Deployment, running `image`.
pub fn build(stack: &MetricsStack, config_checksum: &str, image: &str) -> Deployment {
    let spec = &stack.spec.query_service;
    let name = Component::QueryService.object_name(stack);
    let (ca_volume, ca_mount) = database_ca_volume(stack).unzip();
    let container = Container {
        name: "query-service".into(),
        image: Some(image.to_owned()),
        args: Some(vec![
            "query-service".into(),
            "--config".into(),
            format!("{CONFIG_MOUNT}/{QUERY_SERVICE_CONFIG_KEY}"),
        ]),
        env: Some(vec![database_url_env(stack)]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: spec.port,
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", "http")),
        readiness_probe: Some(http_probe("/readyz", "http")),
        resources: spec.resources.clone(),
        volume_mounts: Some(
            vec![VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_MOUNT.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]
            .into_iter()
            .chain(ca_mount)
            .collect(),
        ),
        security_context: Some(hardened_container(65532, None)),
        ..Container::default()
    };
    Deployment {
        metadata: owned_meta(stack, name.clone(), Component::QueryService),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: pod_selector(stack, Component::QueryService),
            template: PodTemplateSpec {
                metadata: Some(pod_metadata(
                    stack,
                    Component::QueryService,
                    config_checksum,
                )),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    // The token is needed only to ask the API server who calls the API
                    // (TokenReview, SubjectAccessReview).
                    automount_service_account_token: Some(
                        spec.authentication == QueryAuthentication::Kubernetes,
                    ),
                    containers: vec![container],
                    node_selector: (!spec.node_selector.is_empty())
                        .then(|| spec.node_selector.clone()),
                    tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    volumes: Some(
                        vec![Volume {
                            name: "config".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name,
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        }]
                        .into_iter()
                        .chain(ca_volume)
                        .collect(),
                    ),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures;

    #[test]
    fn runs_the_query_service_unprivileged_with_the_spec_replicas_and_port() {
        let (stack, _) = fixtures::stack("production");
        let deployment = build(&stack, "sum", "operator:test");
        let spec = deployment.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.as_ref().expect("pod");
        let container = &pod.containers[0];
        assert_eq!(container.args.as_ref().expect("args")[0], "query-service");
        assert_eq!(
            container.ports.as_ref().expect("ports")[0].container_port,
            8080
        );
        let security = container.security_context.as_ref().expect("security");
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert!(
            container
                .resources
                .as_ref()
                .is_some_and(|r| r.requests.is_some())
        );
        assert_eq!(pod.automount_service_account_token, Some(true));
        let mount = (container.volume_mounts.iter().flatten())
            .find(|m| m.name == "database-ca")
            .expect("the database CA is mounted");
        assert_eq!(mount.read_only, Some(true));
        assert!(
            (pod.volumes.iter().flatten()).any(|v| v.name == "database-ca" && v.secret.is_some())
        );
    }

    #[test]
    fn mounts_a_token_only_when_it_checks_callers() {
        let (mut stack, _) = fixtures::stack("minimal");
        stack.spec.query_service.authentication = QueryAuthentication::None;
        let deployment = build(&stack, "x", "operator:test");
        let pod = deployment.spec.expect("spec").template.spec.expect("pod");
        assert_eq!(pod.automount_service_account_token, Some(false));
    }
}
