//! The query service's PodDisruptionBudget, wanted only with more than one replica.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, owned_meta, selector_labels};
use crate::crd::MetricsStack;

/// Keeps one query service replica through voluntary disruptions; `None` with one replica
/// or fewer, where a budget would block node drains.
pub fn build(stack: &MetricsStack) -> Option<PodDisruptionBudget> {
    (stack.spec.query_service.replicas > 1).then(|| PodDisruptionBudget {
        metadata: owned_meta(
            stack,
            Component::QueryService.object_name(stack),
            Component::QueryService,
        ),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(stack, Component::QueryService)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures;

    #[test]
    fn exists_only_with_more_than_one_replica() {
        let (production, _) = fixtures::stack("production");
        let budget = build(&production).expect("three replicas want a budget");
        assert_eq!(
            budget.spec.and_then(|s| s.min_available),
            Some(IntOrString::Int(1))
        );
        let (minimal, _) = fixtures::stack("minimal");
        assert!(build(&minimal).is_none());
    }
}
