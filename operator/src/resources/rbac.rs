//! The per-stack ClusterRoleBindings: the collectors' ServiceAccount to the pod-reading
//! ClusterRole (only with pod attribution: each collector watches only the pods of its own
//! node, by field selector), and the query service's ServiceAccount to the ClusterRole that
//! lets it check its callers' tokens and rights (only with `Kubernetes` authentication).
//!
//! The ClusterRoles themselves come from the Helm chart, never from the operator: the
//! operator may `bind` those two names and nothing else, so a stolen operator token cannot
//! grant more than they hold.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::{Component, STACK_LABEL, STACK_NAMESPACE_LABEL, Wanted};
use crate::crd::{MetricsStack, QueryAuthentication};

/// The names of the ClusterRoles the chart ships and the operator binds stacks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRoleNames {
    /// get/list/watch on pods, for the collectors' pod attribution.
    pub collector: String,
    /// create on tokenreviews and subjectaccessreviews, for the query service's callers.
    pub query_service: String,
}

impl Default for ClusterRoleNames {
    /// The names the chart gives them in a release named `metricsstack`.
    fn default() -> Self {
        Self {
            collector: "metricsstack-collector".into(),
            query_service: "metricsstack-query-service".into(),
        }
    }
}

/// The name of a stack's binding for `component` (cluster-scoped, so it carries the
/// namespace).
pub fn cluster_role_binding_name(stack: &MetricsStack, component: Component) -> String {
    format!(
        "metricsstack-{}-{}-{}",
        component.as_str(),
        stack.namespace().unwrap_or_default(),
        stack.name_any()
    )
}

/// The collectors' binding to the pod-reading role: wanted only with pod attribution (the
/// collector pods mount no token without it either).
pub fn collector_binding(
    stack: &MetricsStack,
    roles: &ClusterRoleNames,
) -> Wanted<ClusterRoleBinding> {
    let wanted = stack.spec.collector.pod_attribution;
    binding(stack, Component::Collector, &roles.collector, wanted)
}

/// The query service's binding to the token- and access-review role: wanted only when it
/// authenticates its callers with Kubernetes.
pub fn query_service_binding(
    stack: &MetricsStack,
    roles: &ClusterRoleNames,
) -> Wanted<ClusterRoleBinding> {
    let wanted = stack.spec.query_service.authentication == QueryAuthentication::Kubernetes;
    binding(stack, Component::QueryService, &roles.query_service, wanted)
}

/// Binds the component's ServiceAccount to `role` when `wanted`. A namespaced owner cannot
/// own a cluster-scoped object, so it is labelled with the stack and removed by the
/// finalizer.
fn binding(
    stack: &MetricsStack,
    component: Component,
    role: &str,
    wanted: bool,
) -> Wanted<ClusterRoleBinding> {
    let name = cluster_role_binding_name(stack, component);
    let object = wanted.then(|| ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([
                (STACK_LABEL.to_owned(), stack.name_any()),
                (
                    STACK_NAMESPACE_LABEL.to_owned(),
                    stack.namespace().unwrap_or_default(),
                ),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "metricsstack-operator".to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: component.object_name(stack),
            namespace: stack.namespace(),
            ..Subject::default()
        }]),
    });
    Wanted { name, object }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures;

    fn subject(binding: &ClusterRoleBinding) -> (String, String, Option<String>) {
        let subject = &binding.subjects.as_ref().expect("subjects")[0];
        (
            subject.kind.clone(),
            subject.name.clone(),
            subject.namespace.clone(),
        )
    }

    #[test]
    fn binds_the_stacks_collector_account_to_the_charts_role() {
        let (stack, _) = fixtures::stack("production");
        let roles = ClusterRoleNames::default();
        let wanted = collector_binding(&stack, &roles);
        assert_eq!(wanted.name, "metricsstack-collector-monitoring-fleet");
        let binding = wanted.object.expect("pod attribution is on");
        assert_eq!(binding.metadata.name.as_deref(), Some(wanted.name.as_str()));
        assert_eq!(
            subject(&binding),
            (
                "ServiceAccount".into(),
                "fleet-collector".into(),
                Some("monitoring".into())
            )
        );
        assert_eq!(binding.role_ref.name, roles.collector);
    }

    #[test]
    fn without_pod_attribution_the_collectors_get_no_binding() {
        let (mut stack, _) = fixtures::stack("production");
        stack.spec.collector.pod_attribution = false;
        let wanted = collector_binding(&stack, &ClusterRoleNames::default());
        assert_eq!(wanted.name, "metricsstack-collector-monitoring-fleet");
        assert!(wanted.object.is_none());
    }

    #[test]
    fn the_query_service_is_bound_only_when_it_authenticates_with_kubernetes() {
        let (mut stack, _) = fixtures::stack("production");
        let roles = ClusterRoleNames {
            collector: "release-collector".into(),
            query_service: "release-query-service".into(),
        };
        let wanted = query_service_binding(&stack, &roles);
        assert_eq!(wanted.name, "metricsstack-query-service-monitoring-fleet");
        let binding = wanted
            .object
            .expect("Kubernetes authentication is the default");
        assert_eq!(binding.role_ref.name, "release-query-service");
        assert_eq!(
            subject(&binding),
            (
                "ServiceAccount".into(),
                "fleet-query-service".into(),
                Some("monitoring".into())
            )
        );
        stack.spec.query_service.authentication = QueryAuthentication::None;
        assert!(query_service_binding(&stack, &roles).object.is_none());
    }
}
