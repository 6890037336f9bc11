//! The real API server validates MetricsStack resources at admission: schema bounds, enums,
//! patterns and the CEL rules across fields, each refusal naming the field.

mod common;

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray,
};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, CustomResourceExt as _};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_testkit::TestNamespace;
use regex::Regex;
use serde_json::{Value, json};

/// A valid resource that sets only what has no default.
fn minimal() -> Value {
    json!({
        "apiVersion": "metricsstack.dev/v1alpha1",
        "kind": "MetricsStack",
        "metadata": { "name": "stack" },
        "spec": { "database": { "secretRef": { "name": "db" } } }
    })
}

/// `minimal()` with `patch` merged in (objects merge, everything else replaces).
fn with(patch: Value) -> Value {
    fn merge(base: &mut Value, patch: Value) {
        match (base, patch) {
            (Value::Object(base), Value::Object(patch)) => {
                for (key, value) in patch {
                    merge(base.entry(key).or_insert(Value::Null), value);
                }
            }
            (base, patch) => *base = patch,
        }
    }
    let mut resource = minimal();
    merge(&mut resource, json!({ "spec": patch }));
    resource
}

/// Creates a resource from raw JSON, as kubectl would send it (our own types could not even
/// hold some of the invalid values, such as an unknown enum).
async fn create(ns: &TestNamespace, resource: Value) -> Result<MetricsStack, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &ApiResource::erase::<MetricsStack>(&()),
    );
    let object: DynamicObject = serde_json::from_value(resource).expect("a dynamic object");
    let created = api.create(&PostParams::default(), &object).await?;
    Ok(
        serde_json::from_value(serde_json::to_value(created).expect("JSON"))
            .expect("a MetricsStack"),
    )
}

#[tokio::test]
async fn the_api_server_applies_defaults_to_a_minimal_resource() {
    let ns = TestNamespace::create().await;
    common::install_crd(&ns.client).await;
    let stack = create(&ns, minimal())
        .await
        .expect("a minimal resource is accepted");
    let spec = stack.spec;
    assert_eq!(spec.collector.interval.as_str(), "5s");
    assert_eq!(spec.database.schema, "public");
    assert_eq!(spec.database.secret_ref.key, "uri");
    assert_eq!(spec.query_service.cache.fresh_ttl.as_str(), "4s");
    assert_eq!(spec.storage.tables.len(), 3);
    assert_eq!(spec.storage.aggregates.len(), 3);
    assert_eq!(spec.database.pools.query_service.max_connections, 10);
    assert_eq!(
        spec.collector.processes.command_lines,
        metricsstack_operator::crd::CommandLines::Redacted
    );
}

#[tokio::test]
async fn verifying_modes_take_a_ca_from_a_secret_or_a_config_map_or_none() {
    let ns = TestNamespace::create().await;
    common::install_crd(&ns.client).await;
    let accepted = [
        json!({ "tlsMode": "VerifyFull" }),
        json!({ "tlsMode": "VerifyCa", "caRef": { "secretKeyRef": { "name": "db-ca" } } }),
        json!({ "tlsMode": "VerifyFull", "caRef": { "configMapKeyRef": { "name": "db-ca" } } }),
    ];
    for (i, database) in accepted.into_iter().enumerate() {
        let mut resource = with(json!({ "database": database.clone() }));
        resource["metadata"]["name"] = json!(format!("stack-{i}"));
        let stack = create(&ns, resource)
            .await
            .unwrap_or_else(|e| panic!("{database} must be accepted: {e}"));
        if let Some(ca_ref) = &stack.spec.database.ca_ref {
            let source = ca_ref.source().expect("exactly one source");
            assert_eq!(
                source.key_ref().key,
                "ca.crt",
                "the key defaults to cert-manager's"
            );
        }
    }
}

#[tokio::test]
async fn invalid_resources_are_refused_with_the_field_named() {
    let ns = TestNamespace::create().await;
    common::install_crd(&ns.client).await;

    let table = |compression: Value, retention: Value| {
        json!({ "storage": { "tables": [{
            "table": "hostProcessMetrics", "compression": compression, "retention": retention
        }] } })
    };
    let aggregate = |bucket: &str, start: &str, drop_after: &str| {
        json!({ "storage": { "aggregates": [{
            "name": "hourly", "source": "hostProcessMetrics", "bucket": bucket,
            "refresh": { "startOffset": start, "endOffset": "1h", "schedule": "1h" },
            "retention": { "dropAfter": drop_after }
        }] } })
    };
    let cases = [
        (
            "a bad duration",
            json!({ "collector": { "interval": "5 seconds" } }),
            "spec.collector.interval",
        ),
        (
            "an interval over an hour",
            json!({ "collector": { "interval": "2h" } }),
            "spec.collector.interval",
        ),
        (
            "compression after retention",
            table(json!({ "after": "90d" }), json!({ "dropAfter": "7d" })),
            "spec.storage.tables[0].compression.after",
        ),
        (
            "min over max connections for the collectors",
            json!({ "database": { "pools": { "collector": { "maxConnections": 2, "minConnections": 5 } } } }),
            "spec.database.pools.collector.minConnections",
        ),
        (
            "min over max connections for the query service",
            json!({ "database": { "pools": { "queryService": { "maxConnections": 2, "minConnections": 5 } } } }),
            "spec.database.pools.queryService.minConnections",
        ),
        (
            "min over max connections for the operator",
            json!({ "database": { "pools": { "operator": { "maxConnections": 2, "minConnections": 5 } } } }),
            "spec.database.pools.operator.minConnections",
        ),
        (
            "an unknown TLS mode",
            json!({ "database": { "tlsMode": "Sometimes" } }),
            "spec.database.tlsMode",
        ),
        (
            "a CA without certificate verification",
            json!({ "database": { "caRef": { "secretKeyRef": { "name": "db-ca" } } } }),
            "spec.database.caRef",
        ),
        (
            "a CA from both a Secret and a ConfigMap",
            json!({ "database": { "tlsMode": "VerifyFull", "caRef": {
                "secretKeyRef": { "name": "db-ca" }, "configMapKeyRef": { "name": "db-ca" }
            } } }),
            "spec.database.caRef",
        ),
        (
            "a negative replica count",
            json!({ "queryService": { "replicas": -1 } }),
            "spec.queryService.replicas",
        ),
        (
            "a privileged port",
            json!({ "queryService": { "port": 80 } }),
            "spec.queryService.port",
        ),
        (
            "an unknown deletion policy",
            json!({ "deletionPolicy": "Delete" }),
            "spec.deletionPolicy",
        ),
        (
            "a bucket longer than its retention",
            aggregate("1d", "3d", "12h"),
            "spec.storage.aggregates[0].bucket",
        ),
        (
            "a refresh window under two buckets",
            aggregate("1h", "2h", "30d"),
            "spec.storage.aggregates[0].refresh.startOffset",
        ),
        (
            "an aggregate name that is no identifier",
            json!({ "storage": { "aggregates": [{ "name": "Hourly-View", "source": "hostProcessMetrics", "bucket": "1h" }] } }),
            "spec.storage.aggregates[0].name",
        ),
        (
            "an empty Secret name",
            json!({ "database": { "secretRef": { "name": "" } } }),
            "spec.database.secretRef.name",
        ),
        (
            "a column list with SQL in it",
            table(
                json!({ "after": "7d", "segmentBy": ["host; DROP TABLE x"] }),
                Value::Null,
            ),
            "spec.storage.tables[0].compression.segmentBy[0]",
        ),
        (
            "a table listed twice",
            json!({ "storage": { "tables": [{ "table": "hostProcessMetrics" }, { "table": "hostProcessMetrics" }] } }),
            "spec.storage.tables[1]",
        ),
        (
            "an unknown command-line setting",
            json!({ "collector": { "processes": { "commandLines": "Hashed" } } }),
            "spec.collector.processes.commandLines",
        ),
        (
            "a process pattern that is no regular expression",
            json!({ "collector": { "processes": { "include": ["^(postgres"] } } }),
            "spec.collector.processes.include",
        ),
        (
            "an exclude pattern that is no regular expression",
            json!({ "collector": { "processes": { "exclude": ["[a-"] } } }),
            "spec.collector.processes.exclude",
        ),
        (
            "a segment-by column the table lacks",
            table(
                json!({ "after": "7d", "segmentBy": ["hostname"] }),
                Value::Null,
            ),
            "spec.storage.tables[0].compression.segmentBy",
        ),
        (
            "an order-by column the table lacks",
            table(
                json!({ "after": "7d", "orderBy": ["timestamp DESC", "pod DESC"] }),
                Value::Null,
            ),
            "spec.storage.tables[0].compression.orderBy",
        ),
        (
            "a clean-up timeout over a day",
            json!({ "cleanupTimeout": "25h" }),
            "spec.cleanupTimeout",
        ),
        (
            "a drift check more often than every 10 seconds",
            json!({ "driftCheckInterval": "5s" }),
            "spec.driftCheckInterval",
        ),
        (
            "a sidecar interval over an hour",
            json!({ "sidecar": { "interval": "2h" } }),
            "spec.sidecar.interval",
        ),
        (
            "too many top processes",
            json!({ "collector": { "processes": { "topByCpu": 5000 } } }),
            "spec.collector.processes.topByCpu",
        ),
    ];
    let mut refusals = Vec::new();
    for (what, patch, field) in cases {
        let error = create(&ns, with(patch))
            .await
            .expect_err(&format!("{what} must be refused"));
        let kube::Error::Api(status) = &error else {
            panic!("{what}: expected an API error, got {error}");
        };
        assert_eq!(status.code, 422, "{what}: {status:?}");
        assert!(
            status.message.contains(field),
            "{what}: the message should name {field}: {}",
            status.message
        );
        refusals.push((field, status.message.clone()));
    }

    // Every CEL rule the CRD checks at creation is broken by a case above, and refuses it
    // with the rule's own message.
    let untested: Vec<(String, String)> = creation_rules()
        .into_iter()
        .filter(|(rule_field, rule_message)| {
            !refusals.iter().any(|(field, message)| {
                any_item(field) == *rule_field && message.contains(rule_message.as_str())
            })
        })
        .collect();
    assert!(
        untested.is_empty(),
        "CEL rules that no case breaks (add a case for each): {untested:#?}"
    );
}

/// The CEL rules of the generated CRD that apply when a resource is created (transition
/// rules, which compare with `oldSelf`, apply only to updates), each as the field it names
/// (list items as `[*]`) and its message.
fn creation_rules() -> BTreeSet<(String, String)> {
    fn collect(schema: &JSONSchemaProps, path: &str, rules: &mut BTreeSet<(String, String)>) {
        for rule in schema.x_kubernetes_validations.iter().flatten() {
            if !rule.rule.contains("oldSelf") {
                let field = format!("{path}{}", rule.field_path.as_deref().unwrap_or_default());
                rules.insert((field, rule.message.clone().unwrap_or_default()));
            }
        }
        for (name, property) in schema.properties.iter().flatten() {
            let path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            collect(property, &path, rules);
        }
        if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
            collect(items, &format!("{path}[*]"), rules);
        }
    }
    let crd = MetricsStack::crd();
    let root = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has a schema");
    let mut rules = BTreeSet::new();
    collect(root, "", &mut rules);
    rules
}

/// `field` with each list index written as `[*]`: `spec.tables[0].x` -> `spec.tables[*].x`.
fn any_item(field: &str) -> String {
    Regex::new(r"\[[0-9]+\]")
        .expect("a valid pattern")
        .replace_all(field, "[*]")
        .into_owned()
}

#[tokio::test]
async fn the_database_schema_cannot_change_after_creation() {
    let ns = TestNamespace::create().await;
    common::install_crd(&ns.client).await;
    let api: Api<MetricsStack> = Api::namespaced(ns.client.clone(), &ns.name);
    create(&ns, with(json!({ "database": { "schema": "metrics" } })))
        .await
        .expect("the resource is created");
    let error = api
        .patch(
            "stack",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "database": { "schema": "other" } } })),
        )
        .await
        .expect_err("changing the schema is refused");
    let kube::Error::Api(status) = &error else {
        panic!("expected an API error, got {error}")
    };
    assert!(
        status.message.contains("spec.database.schema"),
        "{}",
        status.message
    );
    assert!(status.message.contains("immutable"), "{}", status.message);
}
