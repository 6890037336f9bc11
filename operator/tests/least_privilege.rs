//! What the chart lets the operator do, asked of the real API server as the operator's
//! ServiceAccount (impersonated): no list or watch of Secrets cluster-wide, no ClusterRole
//! written, `bind` on the chart's two ClusterRoles and no other; with `watchNamespace`, the
//! Secrets of that namespace only. And the chart's ValidatingAdmissionPolicy: a stack's
//! collector or query service image must come from an allowed repository.

mod common;

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_testkit::{
    TestNamespace, helm, helm_output, required_env, unique_name, wait_until,
};
use serde_json::json;

const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/metricsstack-operator"
);
/// How long a new ValidatingAdmissionPolicy may take to be enforced (type checking and
/// the API server's informers): generous, for a loaded machine.
const POLICY_ENFORCED_WITHIN: Duration = Duration::from_secs(60);

/// A release of the chart with no operator pod, for its RBAC and admission policy; it is
/// uninstalled when dropped (the cluster-scoped objects would outlive the namespace).
struct Release {
    name: String,
    namespace: String,
}

impl Release {
    fn install(namespace: &str, values: &str) -> Self {
        let name = unique_name("rbac");
        helm(&[
            "install",
            &name,
            CHART,
            "--namespace",
            namespace,
            "--set",
            &format!("replicaCount=0,{values}"),
        ]);
        Self {
            name,
            namespace: namespace.to_owned(),
        }
    }

    fn full_name(&self) -> String {
        format!("{}-metricsstack-operator", self.name)
    }

    /// The operator's ServiceAccount, as the API server names the user.
    fn operator_user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace,
            self.full_name()
        )
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let output = helm_output(&["uninstall", &self.name, "--namespace", &self.namespace]);
        if !output.status.success() {
            eprintln!(
                "helm uninstall {} failed: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// A client that acts as `user` (impersonation, which the test's admin may do); the API
/// server adds a ServiceAccount's groups itself.
async fn client_as(user: &str) -> Client {
    let path = required_env("KUBECONFIG");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("the test kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a usable kubeconfig");
    config.auth_info.impersonate = Some(user.to_owned());
    Client::try_from(config).expect("an impersonating client")
}

/// What `kubectl auth can-i VERB RESOURCE [NAME] [-n NAMESPACE]` answers for `client`.
async fn can_i(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    name: Option<&str>,
    namespace: Option<&str>,
) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                name: name.map(str::to_owned),
                namespace: namespace.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("a SelfSubjectAccessReview is answered")
        .status
        .expect("a review status")
        .allowed
}

fn binding_to(name: &str, role: &str, subject_namespace: &str) -> ClusterRoleBinding {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
        "subjects": [{ "kind": "ServiceAccount", "name": "anyone", "namespace": subject_namespace }]
    }))
    .expect("a ClusterRoleBinding")
}

fn is_forbidden(result: &Result<impl std::fmt::Debug, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

#[tokio::test]
async fn cluster_wide_the_operator_may_get_secrets_but_not_list_them_and_bind_only_the_charts_roles()
 {
    let ns = TestNamespace::create().await;
    let release = Release::install(&ns.name, "admissionPolicy.enabled=false");
    let operator = client_as(&release.operator_user()).await;
    let collector_role = format!("{}-collector", release.full_name());
    let query_role = format!("{}-query-service", release.full_name());

    // Secrets: read by name, never listed or watched, in no namespace.
    assert!(can_i(&operator, "get", "", "secrets", Some("db"), Some(&ns.name)).await);
    for verb in ["list", "watch"] {
        assert!(
            !can_i(&operator, verb, "", "secrets", None, None).await,
            "the operator may {verb} Secrets cluster-wide"
        );
        assert!(
            !can_i(&operator, verb, "", "secrets", None, Some(&ns.name)).await,
            "the operator may {verb} Secrets in a namespace"
        );
    }
    let listed = Api::<Secret>::all(operator.clone())
        .list(&ListParams::default())
        .await;
    assert!(is_forbidden(&listed), "listing Secrets: {listed:?}");

    // ClusterRoles: none written, only the chart's two bound.
    for verb in ["create", "patch", "update", "delete", "escalate"] {
        assert!(
            !can_i(
                &operator,
                verb,
                "rbac.authorization.k8s.io",
                "clusterroles",
                None,
                None
            )
            .await,
            "the operator may {verb} ClusterRoles"
        );
    }
    let role: ClusterRole =
        serde_json::from_value(json!({ "metadata": { "name": unique_name("sneaky") } }))
            .expect("a ClusterRole");
    let created = Api::<ClusterRole>::all(operator.clone())
        .create(&PostParams::default(), &role)
        .await;
    assert!(
        is_forbidden(&created),
        "creating a ClusterRole: {created:?}"
    );
    let patched = Api::<ClusterRole>::all(operator.clone())
        .patch(
            &collector_role,
            &PatchParams::apply("sneaky"),
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "rules": [{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["list"] }]
            })),
        )
        .await;
    assert!(
        is_forbidden(&patched),
        "patching a ClusterRole: {patched:?}"
    );
    let rbac = "rbac.authorization.k8s.io";
    for role in [&collector_role, &query_role] {
        assert!(can_i(&operator, "bind", rbac, "clusterroles", Some(role), None).await);
    }
    assert!(
        !can_i(
            &operator,
            "bind",
            rbac,
            "clusterroles",
            Some("cluster-admin"),
            None
        )
        .await
    );
    // Pods: listed (by the sidecar label) to count a stack's injected sidecars; never
    // watched nor written.
    assert!(can_i(&operator, "list", "", "pods", None, None).await);
    for verb in ["watch", "create", "patch", "update", "delete"] {
        assert!(
            !can_i(&operator, verb, "", "pods", None, None).await,
            "the operator may {verb} pods"
        );
    }
    // The sidecar webhook's caBundle: its own MutatingWebhookConfiguration, no other.
    let webhooks = "admissionregistration.k8s.io";
    let own = format!("{}-sidecar", release.full_name());
    let configurations = "mutatingwebhookconfigurations";
    assert!(
        can_i(
            &operator,
            "patch",
            webhooks,
            configurations,
            Some(&own),
            None
        )
        .await
    );
    assert!(
        !can_i(
            &operator,
            "patch",
            webhooks,
            configurations,
            Some("another"),
            None
        )
        .await
    );
    assert!(!can_i(&operator, "create", webhooks, configurations, None, None).await);
    for (group, resource) in [
        ("authentication.k8s.io", "tokenreviews"),
        ("authorization.k8s.io", "subjectaccessreviews"),
    ] {
        assert!(can_i(&operator, "create", group, resource, None, None).await);
    }

    // The escalation check, for real: a binding to cluster-admin is refused, bindings to the
    // chart's roles are made.
    let bindings = Api::<ClusterRoleBinding>::all(operator.clone());
    let admin_binding = binding_to(&unique_name("escalate"), "cluster-admin", &ns.name);
    let escalated = bindings
        .create(&PostParams::default(), &admin_binding)
        .await;
    assert!(
        is_forbidden(&escalated),
        "binding cluster-admin: {escalated:?}"
    );
    let admin_bindings = Api::<ClusterRoleBinding>::all(ns.client.clone());
    for role in [&collector_role, &query_role] {
        let name = unique_name("bound");
        bindings
            .create(&PostParams::default(), &binding_to(&name, role, &ns.name))
            .await
            .unwrap_or_else(|e| panic!("the operator binds {role}: {e}"));
        admin_bindings
            .delete(&name, &DeleteParams::default())
            .await
            .expect("the test binding is removed");
    }
}

#[tokio::test]
async fn watching_one_namespace_the_operator_may_list_and_watch_its_secrets_only() {
    let ns = TestNamespace::create().await;
    let watched = TestNamespace::create().await;
    let other = TestNamespace::create().await;
    let release = Release::install(
        &ns.name,
        &format!(
            "watchNamespace={},admissionPolicy.enabled=false",
            watched.name
        ),
    );
    let operator = client_as(&release.operator_user()).await;
    for verb in ["get", "list", "watch"] {
        assert!(
            can_i(&operator, verb, "", "secrets", None, Some(&watched.name)).await,
            "the operator may not {verb} the watched namespace's Secrets"
        );
        assert!(
            !can_i(&operator, verb, "", "secrets", None, Some(&other.name)).await,
            "the operator may {verb} another namespace's Secrets"
        );
        assert!(
            !can_i(&operator, verb, "", "secrets", None, None).await,
            "the operator may {verb} Secrets cluster-wide"
        );
    }
    Api::<Secret>::namespaced(operator.clone(), &watched.name)
        .list(&ListParams::default())
        .await
        .expect("the operator lists the watched namespace's Secrets");
    let elsewhere = Api::<Secret>::namespaced(operator, &other.name)
        .list(&ListParams::default())
        .await;
    assert!(is_forbidden(&elsewhere), "{elsewhere:?}");
}

/// A stack with the given images, to create with a dry run (the policy is checked on it
/// all the same, and nothing is left behind).
fn stack(namespace: &str, collector: Option<&str>, query_service: Option<&str>) -> MetricsStack {
    let mut spec = json!({ "database": { "secretRef": { "name": "db" } } });
    if let Some(image) = collector {
        spec["collector"] = json!({ "image": image });
    }
    if let Some(image) = query_service {
        spec["queryService"] = json!({ "image": image });
    }
    serde_json::from_value(json!({
        "apiVersion": "metricsstack.dev/v1alpha1",
        "kind": "MetricsStack",
        "metadata": { "name": unique_name("stack"), "namespace": namespace },
        "spec": spec,
    }))
    .expect("a MetricsStack")
}

#[tokio::test]
async fn the_admission_policy_refuses_images_from_other_repositories_naming_the_field() {
    let ns = TestNamespace::create().await;
    let stacks_ns = TestNamespace::create().await;
    common::install_crd(&ns.client).await;
    // A stack from before the policy, with an image the policy will not allow.
    let legacy_image = "docker.io/legacy/collector:0.9";
    let mut legacy = stack(&stacks_ns.name, Some(legacy_image), None);
    legacy.metadata.name = Some("legacy".into());
    Api::<MetricsStack>::namespaced(ns.client.clone(), &stacks_ns.name)
        .create(&PostParams::default(), &legacy)
        .await
        .expect("the legacy stack is created before the policy");
    let _release = Release::install(
        &ns.name,
        &format!(
            "watchNamespace={},image.repository=registry.example.com/ms/operator,\
             collectorImage.repository=registry.example.com/ms/collector",
            stacks_ns.name
        ),
    );
    let stacks: Api<MetricsStack> = Api::namespaced(ns.client.clone(), &stacks_ns.name);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let create = |stack: MetricsStack| {
        let stacks = stacks.clone();
        let dry_run = dry_run.clone();
        async move { stacks.create(&dry_run, &stack).await }
    };
    let refusal = |result: Result<MetricsStack, kube::Error>| match result {
        Err(kube::Error::Api(status)) if status.code == 403 || status.code == 422 => {
            Some(status.message)
        }
        Err(other) => panic!("the create failed otherwise: {other}"),
        Ok(_) => None,
    };

    // The policy is enforced once the API server has loaded it: until then, creates pass.
    let miner = "docker.io/evil/miner:latest";
    wait_until(
        "the admission policy refuses a foreign collector image",
        POLICY_ENFORCED_WITHIN,
        || async { refusal(create(stack(&stacks_ns.name, Some(miner), None)).await).is_some() },
    )
    .await;
    let message =
        refusal(create(stack(&stacks_ns.name, Some(miner), None)).await).expect("refused");
    assert!(message.contains("spec.collector.image"), "{message}");
    assert!(message.contains(miner), "{message}");
    assert!(
        message.contains("registry.example.com/ms/collector"),
        "the message names the allowed repositories: {message}"
    );
    let message = refusal(create(stack(&stacks_ns.name, None, Some(miner))).await)
        .expect("a foreign query service image is refused");
    assert!(message.contains("spec.queryService.image"), "{message}");

    // The repository must match whole: a longer name with the same prefix is another one.
    for image in [
        "registry.example.com/ms/collector-evil:1.0",
        "registry.example.com/ms/collector",
    ] {
        let refused = refusal(create(stack(&stacks_ns.name, Some(image), None)).await);
        assert!(refused.is_some(), "{image} was accepted");
    }

    for (collector, query_service) in [
        (None, None),
        (Some("registry.example.com/ms/collector:1.2.3"), None),
        (
            Some("registry.example.com/ms/collector@sha256:0123456789abcdef"),
            Some("registry.example.com/ms/operator:1.2.3"),
        ),
    ] {
        let result = create(stack(&stacks_ns.name, collector, query_service)).await;
        assert!(
            result.is_ok(),
            "{collector:?} / {query_service:?} refused: {result:?}"
        );
    }

    // A stack from before the policy can still be changed (a label, its finalizers) as long
    // as its image stays; a new foreign image is refused.
    let labelled = stacks
        .patch(
            "legacy",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "team": "a" } } })),
        )
        .await;
    assert!(labelled.is_ok(), "{labelled:?}");
    let repinned = stacks
        .patch(
            "legacy",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "collector": { "image": miner } } })),
        )
        .await;
    let message = match repinned {
        Err(kube::Error::Api(status)) => status.message,
        other => panic!("a new foreign image is refused: {other:?}"),
    };
    assert!(message.contains("spec.collector.image"), "{message}");

    // Only the watched namespace's stacks are checked.
    let outside = Api::<MetricsStack>::namespaced(ns.client.clone(), &ns.name)
        .create(&dry_run, &stack(&ns.name, Some(miner), None))
        .await;
    assert!(outside.is_ok(), "{outside:?}");
}
