//! A fresh namespace on the test API server, and the ServiceAccount tokens and grants a
//! test of the query API's access checks needs.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

use crate::{required_env, run_cleanup, unique_name};

/// Label put on every namespace a test creates, so that leftovers are easy to find.
pub const TEST_NAMESPACE_LABEL: &str = "metricsstack.dev/test";

/// A fresh namespace on the test API server, deleted when this value is dropped.
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
    /// A client for the test API server, with full rights.
    pub client: Client,
}

impl TestNamespace {
    /// Creates a namespace with a unique name.
    pub async fn create() -> Self {
        let client = client().await;
        let name = unique_name("test");
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { TEST_NAMESPACE_LABEL: "true" } }
        }))
        .expect("the namespace object is valid");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name} failed: {e}"));
        Self { name, client }
    }
}

/// A client for the test API server, from the kubeconfig that `testenv/run` wrote.
pub async fn client() -> Client {
    let path = required_env("KUBECONFIG");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("reading the test kubeconfig {path} failed: {e}"));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("the test kubeconfig {path} is unusable: {e}"));
    Client::try_from(config).expect("a client for the test API server")
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        run_cleanup(async move {
            let namespaces = Api::<Namespace>::all(client().await);
            namespaces
                .delete(&name, &DeleteParams::background())
                .await
                .map(|_| ())
        });
    }
}

/// Creates the ServiceAccount `name` in `namespace` and returns a token of it from the
/// TokenRequest API (valid for an hour), as a person or a dashboard would present it.
pub async fn service_account_token(client: &Client, namespace: &str, name: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))
            .expect("a valid ServiceAccount");
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap_or_else(|e| panic!("creating ServiceAccount {namespace}/{name} failed: {e}"));
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token for {namespace}/{name} was refused: {e}"))
        .status
        .expect("the token request has a status")
        .token
}

/// Grants the ServiceAccount `account` of `namespace` what a dashboard viewer of the stack
/// `stack` needs (`get` on its `metricsstacks/data`), with a Role and a RoleBinding, and
/// waits until the API server's authorizer (which reads RBAC from an informer) allows it.
pub async fn grant_stack_data(client: &Client, namespace: &str, account: &str, stack: &str) {
    let name = format!("{stack}-data-{account}");
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "rules": [{
            "apiGroups": ["metricsstack.dev"], "resources": ["metricsstacks/data"],
            "resourceNames": [stack], "verbs": ["get"]
        }]
    }))
    .expect("a valid Role");
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
        "subjects": [{ "kind": "ServiceAccount", "name": account, "namespace": namespace }]
    }))
    .expect("a valid RoleBinding");
    Api::<Role>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &role)
        .await
        .unwrap_or_else(|e| panic!("creating Role {name} failed: {e}"));
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("creating RoleBinding {name} failed: {e}"));
    wait_for_grant(
        client,
        SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{namespace}:{account}")),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_owned()),
                group: Some("metricsstack.dev".into()),
                resource: Some("metricsstacks".into()),
                subresource: Some("data".into()),
                name: Some(stack.to_owned()),
                verb: Some("get".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
    )
    .await;
}

/// Waits until the API server's authorizer allows what `spec` asks (RBAC objects reach it
/// through an informer, a moment after they are created).
pub async fn wait_for_grant(client: &Client, spec: SubjectAccessReviewSpec) {
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let review = SubjectAccessReview {
        spec,
        ..SubjectAccessReview::default()
    };
    crate::wait_until(
        "a grant to reach the API server's authorizer",
        std::time::Duration::from_secs(60),
        || async {
            reviews
                .create(&PostParams::default(), &review)
                .await
                .ok()
                .and_then(|r| r.status)
                .is_some_and(|s| s.allowed)
        },
    )
    .await;
}
