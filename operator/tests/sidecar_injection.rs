//! The sidecar injection webhook against the real API server: the operator's webhook runs
//! in this process on loopback, and a MutatingWebhookConfiguration (one per test, limited
//! to the test's namespace) points the API server at it by URL. The API server calls it over
//! TLS, trusting the `caBundle` that the webhook itself keeps in sync.
//!
//! Run with: `testenv/run <this test binary>`. No node runs the pods: admission is what is
//! tested; the real node's test (`real_pods.rs`) runs them.

mod common;

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Api, Client};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_operator::resources::{
    INJECT_ANNOTATION, SIDECAR_CONTAINER, SIDECAR_HASH_ANNOTATION, SIDECAR_LABEL,
};
use metricsstack_operator::webhook::certificate::Lifetimes;
use metricsstack_operator::webhook::{self, MUTATE_PODS_PATH, RunningWebhook, WebhookSettings};
use metricsstack_testkit::{TestNamespace, kube_client, unique_name, wait_until};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// A test namespace with a MetricsStack `stack`, the webhook serving, and a
/// MutatingWebhookConfiguration that sends the namespace's pods to it.
struct Setup {
    ns: TestNamespace,
    webhook: Option<RunningWebhook>,
    configuration: String,
}

impl Setup {
    async fn new(labels: serde_json::Value) -> Self {
        let ns = TestNamespace::create().await;
        common::install_crd(&ns.client).await;
        Api::<Namespace>::all(ns.client.clone())
            .patch(
                &ns.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": labels } })),
            )
            .await
            .expect("the namespace takes the labels");
        create_stack(&ns).await;
        // The ServiceAccount admission plugin refuses pods until the default account exists.
        let accounts: Api<ServiceAccount> = Api::namespaced(ns.client.clone(), &ns.name);
        wait_until("the namespace has its default ServiceAccount", WAIT, || {
            let accounts = accounts.clone();
            async move { matches!(accounts.get_opt("default").await, Ok(Some(_))) }
        })
        .await;
        let configuration = unique_name("sidecar-webhook");
        let settings = WebhookSettings {
            address: "127.0.0.1:0".parse().expect("an address"),
            secret_namespace: ns.name.clone(),
            secret_name: "webhook-tls".into(),
            configuration_name: configuration.clone(),
            hosts: vec!["127.0.0.1".into()],
            lifetimes: Lifetimes::default(),
            resync: Duration::from_millis(500),
            collector_image: "collector:test".into(),
        };
        // Started before its configuration exists, as on a fresh install: the webhook sets
        // the caBundle once the configuration appears.
        let webhook = webhook::start(ns.client.clone(), settings)
            .await
            .expect("the webhook starts");
        create_configuration(
            &ns.client,
            &configuration,
            &ns.name,
            webhook.address().port(),
        )
        .await;
        let setup = Self {
            ns,
            webhook: Some(webhook),
            configuration,
        };
        setup.wait_for_ca_bundle().await;
        setup
    }

    async fn wait_for_ca_bundle(&self) {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.ns.client.clone());
        let name = self.configuration.clone();
        wait_until("the webhook has set its caBundle", WAIT, || {
            let (api, name) = (api.clone(), name.clone());
            async move {
                let configuration = api.get(&name).await.expect("the configuration");
                configuration.webhooks.iter().flatten().all(|w| {
                    w.client_config
                        .ca_bundle
                        .as_ref()
                        .is_some_and(|b| !b.0.is_empty())
                })
            }
        })
        .await;
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.ns.client.clone(), &self.ns.name)
    }

    /// Creates pods annotated for injection until one comes out injected: the API server
    /// takes a moment to load a new webhook configuration. Returns that pod.
    async fn first_injected_pod(&self) -> Pod {
        let pods = self.pods();
        let injected = std::sync::Arc::new(std::sync::Mutex::new(None));
        wait_until("the API server calls the webhook", WAIT, || {
            let (pods, injected) = (pods.clone(), injected.clone());
            async move {
                let pod = pods
                    .create(
                        &PostParams::default(),
                        &app_pod(&unique_name("probe"), true),
                    )
                    .await
                    .expect("an annotated pod is created");
                if has_sidecar(&pod) {
                    *injected.lock().expect("not poisoned") = Some(pod);
                    return true;
                }
                let name = pod.metadata.name.expect("a name");
                pods.delete(&name, &DeleteParams::default())
                    .await
                    .expect("the probe pod is deleted");
                false
            }
        })
        .await;
        let pod = injected.lock().expect("not poisoned").take();
        pod.expect("an injected pod")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.webhook.take();
        let name = self.configuration.clone();
        // On a runtime of its own, with a client of its own: the test's runtime is blocked
        // in this drop, and its clients with it.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(async move {
                    let api: Api<MutatingWebhookConfiguration> = Api::all(kube_client().await);
                    let _ = api.delete(&name, &DeleteParams::default()).await;
                })
        })
        .join();
    }
}

async fn create_stack(ns: &TestNamespace) {
    let api: Api<DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &ApiResource::erase::<MetricsStack>(&()),
    );
    let stack: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "metricsstack.dev/v1alpha1",
        "kind": "MetricsStack",
        "metadata": { "name": "stack" },
        "spec": {
            "database": { "secretRef": { "name": "db" } },
            "sidecar": { "interval": "5s", "spoolMegabytes": 16 }
        }
    }))
    .expect("a stack");
    api.create(&PostParams::default(), &stack)
        .await
        .expect("the stack is created");
}

/// The configuration as the chart ships it (failurePolicy Ignore, no side effects, a short
/// timeout), with a URL instead of a Service and only `namespace` selected.
async fn create_configuration(client: &Client, name: &str, namespace: &str, port: u16) {
    let configuration: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": { "name": name },
        "webhooks": [{
            "name": "sidecar.metricsstack.dev",
            "admissionReviewVersions": ["v1"],
            "clientConfig": { "url": format!("https://127.0.0.1:{port}{MUTATE_PODS_PATH}") },
            "rules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"
            }],
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded",
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": namespace } }
        }]
    }))
    .expect("a configuration");
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &configuration)
        .await
        .expect("the configuration is created");
}

/// A pod that meets the restricted Pod Security level on its own, annotated for the
/// sidecar or not.
fn app_pod(name: &str, annotated: bool) -> Pod {
    let annotations = if annotated {
        json!({ INJECT_ANNOTATION: "stack" })
    } else {
        json!({})
    };
    serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "automountServiceAccountToken": false,
            "securityContext": {
                "runAsNonRoot": true, "runAsUser": 1000,
                "seccompProfile": { "type": "RuntimeDefault" }
            },
            "containers": [{
                "name": "app", "image": "busybox",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] }
                }
            }]
        }
    }))
    .expect("a pod")
}

fn sidecars(pod: &Pod) -> usize {
    let spec = pod.spec.as_ref().expect("a spec");
    (spec.init_containers.iter().flatten())
        .chain(&spec.containers)
        .filter(|c| c.name == SIDECAR_CONTAINER)
        .count()
}

fn has_sidecar(pod: &Pod) -> bool {
    sidecars(pod) > 0
}

#[tokio::test]
async fn an_annotated_pod_gets_the_sidecar_once_and_an_unannotated_pod_is_untouched() {
    let setup = Setup::new(json!({})).await;
    let pod = setup.first_injected_pod().await;
    let spec = pod.spec.as_ref().expect("a spec");
    assert_eq!(spec.share_process_namespace, Some(true));
    assert_eq!(spec.host_pid, None);
    let sidecar = (spec.init_containers.iter().flatten())
        .find(|c| c.name == SIDECAR_CONTAINER)
        .expect("the sidecar");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(sidecar.image.as_deref(), Some("collector:test"));
    // The pod's own uid, so that the sidecar reads its processes' I/O without SYS_PTRACE.
    let security = sidecar.security_context.as_ref().expect("hardened");
    assert_eq!(security.run_as_user, Some(1000));
    let labels = pod.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels.get(SIDECAR_LABEL).map(String::as_str), Some("stack"));
    let annotations = pod.metadata.annotations.as_ref().expect("annotations");
    assert!(annotations.contains_key(SIDECAR_HASH_ANNOTATION));

    let pods = setup.pods();
    let plain = pods
        .create(&PostParams::default(), &app_pod("plain", false))
        .await
        .expect("an unannotated pod is created");
    assert_eq!(sidecars(&plain), 0);
    assert_eq!(plain.spec.as_ref().and_then(|s| s.volumes.as_ref()), None);
    assert_eq!(
        plain.spec.as_ref().and_then(|s| s.share_process_namespace),
        None
    );
    assert!(
        !plain
            .metadata
            .labels
            .iter()
            .flatten()
            .any(|(key, _)| key == SIDECAR_LABEL)
    );

    // A second admission of an injected pod (as a controller re-creating it from its own
    // copy would send) adds nothing: one sidecar, one spool volume.
    let mut again = pod.clone();
    again.metadata = kube::api::ObjectMeta {
        name: Some("again".into()),
        annotations: pod.metadata.annotations.clone(),
        labels: pod.metadata.labels.clone(),
        ..Default::default()
    };
    let again = pods
        .create(&PostParams::default(), &again)
        .await
        .expect("the injected pod is admitted again");
    assert_eq!(sidecars(&again), 1);
    assert_eq!(
        again
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .map(Vec::len),
        pod.spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .map(Vec::len),
    );
}

#[tokio::test]
async fn the_injected_pod_passes_the_restricted_pod_security_level() {
    let setup = Setup::new(json!({ "pod-security.kubernetes.io/enforce": "restricted" })).await;
    // The namespace does enforce it: a pod running as root is refused.
    let mut root = app_pod("root", true);
    root.spec.as_mut().expect("a spec").security_context = None;
    let refused = setup
        .pods()
        .create(&PostParams::default(), &root)
        .await
        .expect_err("a root pod is refused");
    assert!(
        refused.to_string().contains("restricted"),
        "refused by Pod Security: {refused}"
    );
    let pod = setup.first_injected_pod().await;
    assert_eq!(sidecars(&pod), 1);
}

#[tokio::test]
async fn with_the_webhook_down_pods_are_still_created() {
    let mut setup = Setup::new(json!({})).await;
    setup.first_injected_pod().await;
    setup.webhook.take();
    let pod = setup
        .pods()
        .create(&PostParams::default(), &app_pod("while-down", true))
        .await
        .expect("failurePolicy Ignore admits the pod");
    assert_eq!(sidecars(&pod), 0);
}
