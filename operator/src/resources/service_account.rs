//! The ServiceAccount of each component.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::{Component, owned_meta};
use crate::crd::MetricsStack;

/// The component's ServiceAccount. Tokens are mounted per pod where needed, not by default.
pub fn build(stack: &MetricsStack, component: Component) -> ServiceAccount {
    ServiceAccount {
        metadata: owned_meta(stack, component.object_name(stack), component),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures;

    #[test]
    fn is_owned_by_the_stack_and_mounts_no_token_by_default() {
        let (stack, _) = fixtures::stack("minimal");
        let account = build(&stack, Component::Collector);
        assert_eq!(account.metadata.name.as_deref(), Some("metrics-collector"));
        assert_eq!(account.metadata.namespace.as_deref(), Some("monitoring"));
        let owner = &account.metadata.owner_references.expect("owned")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("MetricsStack", "metrics", Some(true))
        );
        assert_eq!(account.automount_service_account_token, Some(false));
    }
}
