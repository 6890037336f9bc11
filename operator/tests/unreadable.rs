//! A stored MetricsStack the operator cannot read does not stall the others. Such an
//! object is stored while the CRD had a looser schema (as after a schema change between
//! versions); the operator reports it in an event naming the field, counts it, and goes on
//! reconciling the readable stacks.
//!
//! This test changes the cluster-wide CRD for a moment, so it is a test binary of its own:
//! cargo runs test binaries one after another.

mod common;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, CustomResourceExt, ResourceExt};
use metricsstack_common::admin::RenderMetrics as _;
use metricsstack_operator::controller::{self, Context};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_operator::metrics::Metrics;
use metricsstack_testkit::connection_secret;
use metricsstack_testkit::{TestDatabase, TestNamespace};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn an_unreadable_stack_is_reported_and_skipped_while_others_reconcile() {
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    let database = TestDatabase::create().await;
    common::install_crd(&client).await;

    // Store a stack whose collector interval is a number, not a duration string.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &MetricsStack::crd().name_any(),
        &PatchParams::apply("metricsstack-tests").force(),
        &Patch::Apply(loose_crd()),
    )
    .await
    .expect("the loose CRD applies");
    let stored = store_unreadable_stack(&client, &ns.name).await;
    common::install_crd(&client).await;
    stored.expect("the unreadable stack is stored under the loose schema");

    let metrics = Arc::new(Metrics::default());
    let context = Arc::new(Context::new(client.clone(), metrics.clone(), "test"));
    let namespace = ns.name.clone();
    let operator = tokio::spawn(async move {
        controller::run(context, Some(&namespace), || {}).await;
    });

    let secret = connection_secret("db", &database.url());
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .expect("the Secret");
    let stacks: Api<MetricsStack> = Api::namespaced(client.clone(), &ns.name);
    let good: MetricsStack = serde_json::from_value(json!({
        "apiVersion": "metricsstack.dev/v1alpha1", "kind": "MetricsStack",
        "metadata": { "name": "good" },
        "spec": {
            "database": { "secretRef": { "name": "db" }, "tlsMode": "Disable" },
            "queryService": { "replicas": 0 }
        }
    }))
    .expect("a MetricsStack");
    stacks
        .create(&PostParams::default(), &good)
        .await
        .expect("the readable stack is created");

    // The readable stack is reconciled although the unreadable one is in the same watch.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = stacks.get("good").await.expect("good").status;
        let database_ready = status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "DatabaseReady" && c.status == "True")
        });
        if database_ready {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the readable stack is reconciled; status: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The unreadable one is reported on itself, naming the field, and counted.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let deadline = tokio::time::Instant::now() + WAIT;
    let note = loop {
        let found = events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("Unreadable")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad")
            });
        if let Some(event) = found {
            break event.note.unwrap_or_default();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "an Unreadable event on the stack"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(note.contains("spec.collector.interval"), "{note}");
    assert!(
        metrics
            .render()
            .contains("metricsstack_operator_unreadable_objects_total 1"),
        "{}",
        metrics.render()
    );
    let bad = stacks.get_metadata("bad").await.expect("bad is stored");
    assert!(
        bad.finalizers().is_empty(),
        "the operator did not act on the unreadable stack"
    );

    stacks
        .delete("bad", &DeleteParams::default())
        .await
        .expect("the unreadable stack can be deleted");
    operator.abort();
}

/// The MetricsStack CRD with a spec that takes anything.
fn loose_crd() -> CustomResourceDefinition {
    let mut crd = MetricsStack::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
        .expect("a schema");
    schema.properties.as_mut().expect("properties").insert(
        "spec".into(),
        JSONSchemaProps {
            type_: Some("object".into()),
            x_kubernetes_preserve_unknown_fields: Some(true),
            ..JSONSchemaProps::default()
        },
    );
    schema.x_kubernetes_validations = None;
    crd
}

/// Creates the unreadable stack, retrying until the API server validates with the loose
/// schema (however long it takes to notice the CRD changed).
async fn store_unreadable_stack(client: &kube::Client, namespace: &str) -> Result<(), String> {
    let stacks: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &kube::api::ApiResource::erase::<MetricsStack>(&()),
    );
    let bad = serde_json::from_value(json!({
        "apiVersion": "metricsstack.dev/v1alpha1", "kind": "MetricsStack",
        "metadata": { "name": "bad" },
        "spec": {
            "database": { "secretRef": { "name": "db" } },
            "collector": { "interval": 5 }
        }
    }))
    .expect("a dynamic object");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match stacks.create(&PostParams::default(), &bad).await {
            Ok(_) => return Ok(()),
            Err(error) if tokio::time::Instant::now() >= deadline => return Err(error.to_string()),
            Err(_still_strict) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
