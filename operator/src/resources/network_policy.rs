//! The stack's NetworkPolicies: ingress to the query service only on its HTTP port (API and
//! `/metrics` share it) from `spec.networkPolicy.queryServiceFrom`, by default the pods of
//! the stack's own namespace; ingress to the collectors only on their metrics port from
//! `spec.networkPolicy.metricsFrom`, by default nobody. Egress is left open: the pods reach
//! the database and the API server wherever those are. Enforcement is the CNI plugin's: one
//! that does not implement NetworkPolicy ignores them.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, Wanted, owned_meta, pod_selector};
use crate::crd::MetricsStack;

/// The query service's and the collectors' policies, each absent when
/// `spec.networkPolicy.enabled` is false (then one by that name must not exist).
pub fn build(stack: &MetricsStack) -> Vec<Wanted<NetworkPolicy>> {
    let spec = &stack.spec.network_policy;
    let same_namespace = vec![NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    }];
    let query_from = spec.query_service_from.clone().unwrap_or(same_namespace);
    [
        (Component::QueryService, "http", query_from),
        (Component::Collector, "metrics", spec.metrics_from.clone()),
    ]
    .into_iter()
    .map(|(component, port, from)| Wanted {
        name: component.object_name(stack),
        object: spec.enabled.then(|| policy(stack, component, port, from)),
    })
    .collect()
}

/// Ingress to `component`'s pods only on the container port named `port`, from `from`. An
/// empty `from` admits nobody: it yields no rule at all (a rule with an empty `from` would
/// admit everyone), and a policy of type Ingress without rules denies all ingress.
fn policy(
    stack: &MetricsStack,
    component: Component,
    port: &str,
    from: Vec<NetworkPolicyPeer>,
) -> NetworkPolicy {
    let ingress = (!from.is_empty()).then(|| {
        vec![NetworkPolicyIngressRule {
            from: Some(from),
            ports: Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::String(port.into())),
                protocol: Some("TCP".into()),
                ..NetworkPolicyPort::default()
            }]),
        }]
    });
    NetworkPolicy {
        metadata: owned_meta(stack, component.object_name(stack), component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector(stack, component)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress,
            egress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{COMPONENT_LABEL, fixtures};

    fn spec(wanted: &Wanted<NetworkPolicy>) -> NetworkPolicySpec {
        wanted
            .object
            .as_ref()
            .and_then(|p| p.spec.clone())
            .expect("a policy")
    }

    fn selected_component(spec: &NetworkPolicySpec) -> Option<String> {
        spec.pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .and_then(|l| l.get(COMPONENT_LABEL).cloned())
    }

    #[test]
    fn by_default_the_query_service_takes_its_own_namespace_and_collectors_take_nothing() {
        let (stack, _) = fixtures::stack("minimal");
        let policies = build(&stack);
        let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["metrics-query-service", "metrics-collector"]);

        let query = spec(&policies[0]);
        assert_eq!(selected_component(&query).as_deref(), Some("query-service"));
        assert_eq!(
            query.policy_types.as_deref(),
            Some(&["Ingress".to_owned()][..])
        );
        let rules = query.ingress.expect("ingress rules");
        assert_eq!(rules.len(), 1);
        let from = rules[0].from.as_ref().expect("sources");
        assert_eq!(from.len(), 1);
        assert_eq!(from[0].pod_selector, Some(LabelSelector::default()));
        assert_eq!(from[0].namespace_selector, None, "its own namespace only");
        let ports = rules[0].ports.as_ref().expect("ports");
        assert_eq!(ports[0].port, Some(IntOrString::String("http".into())));

        let collector = spec(&policies[1]);
        assert_eq!(selected_component(&collector).as_deref(), Some("collector"));
        assert_eq!(collector.ingress, None, "no ingress at all");
        assert_eq!(collector.egress, None);
    }

    #[test]
    fn configured_sources_reach_only_the_http_and_metrics_ports() {
        let (mut stack, _) = fixtures::stack("minimal");
        let monitoring = NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    [(
                        "kubernetes.io/metadata.name".to_owned(),
                        "prometheus".to_owned(),
                    )]
                    .into(),
                ),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        };
        stack.spec.network_policy.query_service_from = Some(vec![monitoring.clone()]);
        stack.spec.network_policy.metrics_from = vec![monitoring.clone()];
        let policies = build(&stack);
        for (policy, port) in policies.iter().zip(["http", "metrics"]) {
            let rules = spec(policy).ingress.expect("ingress");
            assert_eq!(rules[0].from.as_deref(), Some(&[monitoring.clone()][..]));
            let ports = rules[0].ports.as_ref().expect("ports");
            assert_eq!(ports.len(), 1);
            assert_eq!(ports[0].port, Some(IntOrString::String(port.into())));
        }
    }

    #[test]
    fn an_empty_source_list_admits_nobody_rather_than_everybody() {
        let (mut stack, _) = fixtures::stack("minimal");
        stack.spec.network_policy.query_service_from = Some(Vec::new());
        let query = spec(&build(&stack)[0]);
        assert_eq!(query.ingress, None);
        assert_eq!(
            query.policy_types.as_deref(),
            Some(&["Ingress".to_owned()][..])
        );
    }

    #[test]
    fn disabled_policies_are_wanted_absent_by_name() {
        let (mut stack, _) = fixtures::stack("minimal");
        stack.spec.network_policy.enabled = false;
        let policies = build(&stack);
        assert_eq!(policies.len(), 2);
        assert!(policies.iter().all(|p| p.object.is_none()));
        assert_eq!(policies[0].name, "metrics-query-service");
    }

    #[test]
    fn policies_are_owned_by_the_stack() {
        let (stack, _) = fixtures::stack("minimal");
        for wanted in build(&stack) {
            let policy = wanted.object.expect("enabled by default");
            let owner = &policy.metadata.owner_references.expect("owned")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.controller),
                ("MetricsStack", Some(true))
            );
        }
    }
}
