//! Pure builders of the Kubernetes objects a `MetricsStack` owns, one module per kind. Each
//! takes the resource (and its validated settings) and returns the object to apply with
//! server-side apply; nothing here talks to the API server.

mod config_map;
mod daemon_set;
mod deployment;
mod network_policy;
mod pod_disruption_budget;
mod rbac;
mod service;
mod service_account;
mod sidecar;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, HTTPGetAction, Probe, SeccompProfile, SecurityContext, Service,
    ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::MetricsStack;
use crate::validate::ValidSpec;

pub use config_map::{COLLECTOR_CONFIG_KEY, QUERY_SERVICE_CONFIG_KEY, config_checksum};
pub use daemon_set::CONFIG_CHECKSUM_ANNOTATION;
pub use rbac::{ClusterRoleNames, cluster_role_binding_name};
pub use sidecar::{
    INJECT_ANNOTATION, POD_CONTAINERS_ENV, SIDECAR_CONTAINER, SIDECAR_HASH_ANNOTATION,
    SIDECAR_LABEL, SidecarSettings, inject, is_injected, patch as sidecar_patch, requested_stack,
};

/// The images the operator runs a stack's components with unless the stack pins its own
/// (`spec.collector.image`, `spec.queryService.image`). They are the operator's settings,
/// not defaults stored in each MetricsStack, so that upgrading the operator moves every
/// stack's pods to the images of the new release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultImages {
    /// The collector image.
    pub collector: String,
    /// The image running `metricsstack-operator query-service`.
    pub query_service: String,
}

impl Default for DefaultImages {
    /// The images of this operator's own release.
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        Self {
            collector: format!("ghcr.io/metricsstack/collector:{version}"),
            query_service: format!("ghcr.io/metricsstack/operator:{version}"),
        }
    }
}

/// Label naming the MetricsStack an object belongs to.
pub const STACK_LABEL: &str = "metricsstack.dev/stack";
/// Label naming the MetricsStack's namespace, on cluster-scoped objects.
pub const STACK_NAMESPACE_LABEL: &str = "metricsstack.dev/stack-namespace";
/// Label naming the component (`collector` or `query-service`).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// A part of the stack that runs as pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The node collectors (DaemonSet).
    Collector,
    /// The query service (Deployment).
    QueryService,
}

impl Component {
    /// The component's name, as used in labels and object names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Collector => "collector",
            Self::QueryService => "query-service",
        }
    }

    /// The name of this component's objects for a stack.
    pub fn object_name(self, stack: &MetricsStack) -> String {
        format!("{}-{}", stack.name_any(), self.as_str())
    }
}

/// An object the stack wants or, when `object` is `None`, wants gone: by its name, since
/// it may exist from an earlier spec.
#[derive(Clone, Debug)]
pub struct Wanted<K> {
    /// The object's name.
    pub name: String,
    /// The object to apply, or `None` to delete one by that name.
    pub object: Option<K>,
}

/// Every object a MetricsStack wants, built from its spec. The controller destructures it
/// field by field where it applies it, so a new field does not compile until it is applied.
#[derive(Clone, Debug)]
pub struct DesiredObjects {
    /// The collectors' and the query service's ServiceAccounts.
    pub service_accounts: Vec<ServiceAccount>,
    /// This stack's binding of the chart's pod-reading ClusterRole to its collectors, with
    /// pod attribution only (cluster-scoped: removed by the finalizer, since a namespaced
    /// owner cannot own it).
    pub collector_binding: Wanted<ClusterRoleBinding>,
    /// This stack's binding of the chart's token- and access-review ClusterRole to its
    /// query service, with `Kubernetes` authentication only (removed by the finalizer too).
    pub query_service_binding: Wanted<ClusterRoleBinding>,
    /// The collector and query service configuration.
    pub config_maps: Vec<ConfigMap>,
    /// The collectors.
    pub daemon_set: DaemonSet,
    /// The query service.
    pub deployment: Deployment,
    /// The query service's Service.
    pub service: Service,
    /// Present with more than one query service replica; otherwise it must not exist.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// The query service's and the collectors' ingress policies, unless disabled.
    pub network_policies: Vec<Wanted<NetworkPolicy>>,
}

/// Builds every object the stack wants, binding its components to the chart's `roles`;
/// `connection` is a digest of the database connection the operator read (see
/// [`config_checksum`]), absent when it could not read it.
#[tracing::instrument(skip_all, fields(
    namespace = stack.metadata.namespace.as_deref(),
    name = stack.metadata.name.as_deref(),
))]
pub fn desired_objects(
    stack: &MetricsStack,
    valid: &ValidSpec,
    images: &DefaultImages,
    roles: &ClusterRoleNames,
    connection: Option<&str>,
) -> DesiredObjects {
    let collector_image = stack
        .spec
        .collector
        .image
        .as_ref()
        .unwrap_or(&images.collector);
    let query_image = (stack.spec.query_service.image.as_ref()).unwrap_or(&images.query_service);
    let collector_config = config_map::collector(stack, valid);
    let query_config = config_map::query_service(stack, valid);
    let database_ca = stack.spec.database.ca_ref.as_ref();
    let collector_checksum = config_checksum(&collector_config, database_ca, connection);
    let query_checksum = config_checksum(&query_config, database_ca, connection);
    DesiredObjects {
        service_accounts: vec![
            service_account::build(stack, Component::Collector),
            service_account::build(stack, Component::QueryService),
        ],
        collector_binding: rbac::collector_binding(stack, roles),
        query_service_binding: rbac::query_service_binding(stack, roles),
        config_maps: vec![collector_config, query_config],
        daemon_set: daemon_set::build(stack, &collector_checksum, collector_image),
        deployment: deployment::build(stack, &query_checksum, query_image),
        service: service::build(stack),
        pod_disruption_budget: pod_disruption_budget::build(stack),
        network_policies: network_policy::build(stack),
    }
}

/// The labels that select a component's pods.
pub fn selector_labels(stack: &MetricsStack, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (STACK_LABEL.to_owned(), stack.name_any()),
        (COMPONENT_LABEL.to_owned(), component.as_str().to_owned()),
    ])
}

/// A container security context as strict as Kubernetes allows: no privilege escalation,
/// read-only root filesystem, the runtime's default seccomp profile, every capability
/// dropped except `add`; `run_as_user` (and with it `runAsNonRoot`) set by the caller.
fn hardened_container(run_as_user: i64, add: Option<Vec<String>>) -> SecurityContext {
    SecurityContext {
        run_as_user: Some(run_as_user),
        run_as_group: Some(run_as_user),
        run_as_non_root: Some(run_as_user != 0),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add,
        }),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

/// A probe that GETs `path` on the container port named `port`, every 10 s.
fn http_probe(path: &str, port: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

/// The container runtime's default seccomp profile.
fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

/// The selector of a component's pods, for its DaemonSet or Deployment.
fn pod_selector(stack: &MetricsStack, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(stack, component)),
        ..LabelSelector::default()
    }
}

/// Metadata of a component's pod template: its labels, and the checksum of its
/// configuration, so that a configuration change rolls the pods.
fn pod_metadata(stack: &MetricsStack, component: Component, config_checksum: &str) -> ObjectMeta {
    ObjectMeta {
        labels: Some(labels(stack, component)),
        annotations: Some(BTreeMap::from([(
            CONFIG_CHECKSUM_ANNOTATION.to_owned(),
            config_checksum.to_owned(),
        )])),
        ..ObjectMeta::default()
    }
}

/// Labels of every object and pod of a component.
fn labels(stack: &MetricsStack, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector_labels(stack, component);
    labels.insert("app.kubernetes.io/name".into(), "metricsstack".into());
    labels.insert("app.kubernetes.io/instance".into(), stack.name_any());
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "metricsstack-operator".into(),
    );
    labels
}

/// Metadata of a namespaced object owned (as controller) by the stack.
fn owned_meta(stack: &MetricsStack, name: String, component: Component) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: stack.namespace(),
        labels: Some(labels(stack, component)),
        owner_references: Some(vec![owner_reference(stack)]),
        ..ObjectMeta::default()
    }
}

/// The stack as controlling owner. Objects reaching the reconciler come from the API server
/// and always carry the uid this needs.
fn owner_reference(stack: &MetricsStack) -> OwnerReference {
    stack
        .controller_owner_ref(&())
        .expect("a MetricsStack read from the API server has a uid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> DefaultImages {
        DefaultImages {
            collector: "collector:default".into(),
            query_service: "operator:default".into(),
        }
    }

    fn image(pod: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>) -> Option<String> {
        pod.and_then(|t| t.spec.as_ref())
            .and_then(|p| p.containers[0].image.clone())
    }

    #[test]
    fn a_stack_that_pins_no_image_runs_the_operators_default_images() {
        let (stack, valid) = fixtures::stack("minimal");
        assert_eq!(stack.spec.collector.image, None);
        let desired = desired_objects(
            &stack,
            &valid,
            &images(),
            &ClusterRoleNames::default(),
            None,
        );
        let collector = desired.daemon_set.spec.as_ref().map(|s| &s.template);
        let query = desired.deployment.spec.as_ref().map(|s| &s.template);
        assert_eq!(image(collector).as_deref(), Some("collector:default"));
        assert_eq!(image(query).as_deref(), Some("operator:default"));
    }

    #[test]
    fn a_pinned_image_wins_over_the_operators_default() {
        let (stack, valid) = fixtures::stack("production");
        let desired = desired_objects(
            &stack,
            &valid,
            &images(),
            &ClusterRoleNames::default(),
            None,
        );
        let collector = desired.daemon_set.spec.as_ref().map(|s| &s.template);
        assert_eq!(
            image(collector).as_deref(),
            Some("registry.example.com/metricsstack/collector:0.1.0")
        );
    }

    #[test]
    fn the_default_images_are_this_releases() {
        let version = env!("CARGO_PKG_VERSION");
        let images = DefaultImages::default();
        assert!(images.collector.ends_with(&format!("/collector:{version}")));
        assert!(
            images
                .query_service
                .ends_with(&format!("/operator:{version}"))
        );
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Small YAML fixtures of whole resources, shared by the builder tests.
    use crate::crd::MetricsStack;
    use crate::validate::{ValidSpec, validate};

    /// A fixture by name (`minimal` or `production`), with its validated settings.
    pub fn stack(name: &str) -> (MetricsStack, ValidSpec) {
        let yaml = match name {
            "minimal" => include_str!("../../tests/fixtures/minimal.yaml"),
            "production" => include_str!("../../tests/fixtures/production.yaml"),
            other => panic!("no fixture {other}"),
        };
        let stack: MetricsStack = serde_yaml::from_str(yaml).expect("the fixture parses");
        let valid = validate(&stack.spec).expect("the fixture is valid");
        (stack, valid)
    }
}
