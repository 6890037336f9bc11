//! Counting the pods that run a stack's sidecar collector, and those whose sidecar was
//! injected with other settings than the stack's current ones (a change of `spec.sidecar`
//! applies to pods created afterwards; the others keep theirs until restarted).

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::Context;
use crate::crd::{MetricsStack, SidecarsStatus};
use crate::resources::{SIDECAR_HASH_ANNOTATION, SIDECAR_LABEL, SidecarSettings};

/// The stack's sidecar counts, from a list of the pods its webhook injected (by label);
/// `None`, keeping the last counts, when the pods cannot be listed.
#[tracing::instrument(skip_all, fields(
    namespace = stack.metadata.namespace.as_deref(),
    name = stack.metadata.name.as_deref(),
))]
pub(super) async fn count(ctx: &Context, stack: &MetricsStack) -> Option<SidecarsStatus> {
    let settings = SidecarSettings::of(stack, &ctx.images.collector)?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &stack.namespace()?);
    let selector = format!("{SIDECAR_LABEL}={}", stack.name_any());
    match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => Some(counts(&list.items, &settings.hash())),
        Err(error) => {
            tracing::warn!(%error, "cannot list the pods with the sidecar; keeping the last counts");
            None
        }
    }
}

/// The counts among `pods` (of one stack) for the current settings' `hash`. Pods that have
/// finished are not counted.
fn counts(pods: &[Pod], hash: &str) -> SidecarsStatus {
    let running = pods.iter().filter(|pod| {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        !matches!(phase, Some("Succeeded" | "Failed"))
    });
    let (mut injected, mut outdated) = (0, 0);
    for pod in running {
        injected += 1;
        if pod
            .annotations()
            .get(SIDECAR_HASH_ANNOTATION)
            .map(String::as_str)
            != Some(hash)
        {
            outdated += 1;
        }
    }
    SidecarsStatus { injected, outdated }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(hash: &str, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "annotations": { SIDECAR_HASH_ANNOTATION: hash } },
            "status": { "phase": phase }
        }))
        .expect("a pod")
    }

    #[test]
    fn pods_injected_with_other_settings_are_outdated_and_finished_ones_do_not_count() {
        let pods = [
            pod("current", "Running"),
            pod("current", "Pending"),
            pod("older", "Running"),
            pod("older", "Succeeded"),
            pod("current", "Failed"),
        ];
        assert_eq!(
            counts(&pods, "current"),
            SidecarsStatus {
                injected: 3,
                outdated: 1
            }
        );
    }
}
