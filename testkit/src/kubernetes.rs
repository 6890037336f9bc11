//! A fresh namespace on the test API server.

use k8s_openapi::api::core::v1::Namespace;
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
