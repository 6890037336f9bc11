//! Least-privilege RBAC for the collectors: read pods (each collector watches only the pods
//! of its own node, by field selector) for pod attribution. Nothing else.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::{Component, STACK_LABEL, STACK_NAMESPACE_LABEL};
use crate::crd::MetricsStack;

/// The ClusterRole every stack's collectors are bound to.
pub const COLLECTOR_CLUSTER_ROLE: &str = "metricsstack-collector";

/// Read access to pods, nothing more. Pods live in every namespace, so this must be a
/// ClusterRole; the collector narrows its watch to its node with a field selector.
pub fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(COLLECTOR_CLUSTER_ROLE.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "metricsstack-operator".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..PolicyRule::default()
        }]),
        ..ClusterRole::default()
    }
}

/// The name of a stack's ClusterRoleBinding (cluster-scoped, so it carries the namespace).
pub fn cluster_role_binding_name(stack: &MetricsStack) -> String {
    format!(
        "metricsstack-collector-{}-{}",
        stack.namespace().unwrap_or_default(),
        stack.name_any()
    )
}

/// Binds the stack's collector ServiceAccount to the pod-reading ClusterRole. A namespaced
/// owner cannot own a cluster-scoped object, so it is labelled with the stack and removed by
/// the finalizer.
pub fn cluster_role_binding(stack: &MetricsStack) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(cluster_role_binding_name(stack)),
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
            name: COLLECTOR_CLUSTER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: Component::Collector.object_name(stack),
            namespace: stack.namespace(),
            ..Subject::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures;

    #[test]
    fn collectors_may_only_read_pods() {
        let rules = cluster_role().rules.expect("rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["pods".to_owned()][..])
        );
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
        assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]));
    }

    #[test]
    fn binds_the_stacks_collector_account() {
        let (stack, _) = fixtures::stack("production");
        let binding = cluster_role_binding(&stack);
        assert_eq!(
            binding.metadata.name.as_deref(),
            Some("metricsstack-collector-monitoring-fleet")
        );
        let subject = &binding.subjects.expect("subjects")[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "fleet-collector", Some("monitoring"))
        );
        assert_eq!(binding.role_ref.name, COLLECTOR_CLUSTER_ROLE);
    }
}
