//! The limits the CRD admits are the limits the components accept: for every bounded field
//! of the generated CRD schema, a stack at either bound is valid for the operator, the
//! collector and the query service alike, and one step beyond is refused by one of them
//! (so the operator reports it on the stack instead of crash-looping a fleet). Both sides
//! read `metricsstack_common::config::limits`; this test keeps them from drifting apart.

use kube::CustomResourceExt;
use metricsstack_operator::crd::MetricsStack;
use metricsstack_operator::validate::validate;
use serde_json::{Value, json};

/// Bounded fields no component reads as a bounded setting, with what bounds them.
const OPERATOR_ONLY: &[(&str, &str)] = &[
    ("queryService.replicas", "the Deployment's replica count"),
    (
        "queryService.port",
        "the container port; the query service listens on whatever port it is given",
    ),
];

/// Every field of the spec with a `minimum` or `maximum`, as `(path below spec, min, max)`.
fn bounded_fields() -> Vec<(String, i64, i64)> {
    fn walk(schema: &Value, path: &str, found: &mut Vec<(String, i64, i64)>) {
        let bound = |key| schema.get(key).and_then(Value::as_f64).map(|v| v as i64);
        if let (Some(min), Some(max)) = (bound("minimum"), bound("maximum")) {
            found.push((path.trim_start_matches('.').to_owned(), min, max));
        } else {
            assert!(
                bound("minimum").is_none() && bound("maximum").is_none(),
                "{path}: a field bounded on one side only"
            );
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                walk(property, &format!("{path}.{name}"), found);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), found);
        }
    }
    let crd = serde_json::to_value(MetricsStack::crd()).expect("the CRD serialises");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut found = Vec::new();
    walk(spec, "", &mut found);
    found
}

/// The minimal example with `value` at `path` (and a pool's maxConnections raised to its
/// minConnections, which may not exceed it).
fn stack_with(path: &str, value: Value) -> Value {
    let mut stack: Value =
        serde_yaml::from_str(include_str!("fixtures/minimal.yaml")).expect("the fixture parses");
    let mut target = &mut stack["spec"];
    let (parents, field) = path.rsplit_once('.').unwrap_or(("", path));
    for part in parents.split('.').filter(|p| !p.is_empty()) {
        target = &mut target[part];
        if target.is_null() {
            *target = json!({});
        }
    }
    if field == "minConnections" {
        target["maxConnections"] = json!(value.as_i64().unwrap_or(1).max(1));
    } else if field == "maxConnections" && target.get("minConnections").is_none() {
        target["minConnections"] = json!(0);
    }
    target[field] = value;
    stack
}

/// Whether the operator and both components accept the stack; else who refused and why.
fn accepted(stack: Value) -> Result<(), String> {
    let stack: MetricsStack =
        serde_json::from_value(stack).map_err(|e| format!("does not deserialise: {e}"))?;
    let valid = validate(&stack.spec).map_err(|e| format!("operator: {e}"))?;
    valid
        .collector
        .validate()
        .map_err(|e| format!("collector: {e}"))?;
    valid
        .query_service
        .validate()
        .map_err(|e| format!("query service: {e}"))?;
    Ok(())
}

#[test]
fn every_value_the_crd_admits_the_components_accept_and_no_more() {
    let fields = bounded_fields();
    for (listed, _) in OPERATOR_ONLY {
        assert!(
            fields.iter().any(|(path, ..)| path == listed),
            "{listed} is listed as bounded by the operator alone but has no bounds"
        );
    }
    assert!(fields.len() > OPERATOR_ONLY.len(), "{fields:?}");
    for (path, min, max) in &fields {
        for at in [*min, *max] {
            if let Err(refusal) = accepted(stack_with(path, json!(at))) {
                panic!("spec.{path} = {at} is admitted by the CRD but refused: {refusal}");
            }
        }
        if OPERATOR_ONLY.iter().any(|(listed, _)| listed == path) {
            continue;
        }
        let beyond = [Some(max + 1), (*min > 0).then(|| min - 1)];
        for value in beyond.into_iter().flatten() {
            assert!(
                accepted(stack_with(path, json!(value))).is_err(),
                "spec.{path} = {value} is beyond the CRD's bounds ({min}..{max}) yet every \
                 component accepts it: the CRD and the components disagree"
            );
        }
    }
}

#[test]
fn the_collector_interval_the_crd_admits_is_the_one_the_collector_accepts() {
    let crd = serde_yaml::to_string(&MetricsStack::crd()).expect("the CRD serialises");
    let bounds = metricsstack_common::config::limits::COLLECTOR_INTERVAL_SECONDS;
    assert!(
        crd.contains(&format!(">= {} &&", bounds.min))
            && crd.contains(&format!("<= {}", bounds.max)),
        "the CRD's interval rule uses the collector's bounds"
    );
    for at in [bounds.min, bounds.max] {
        let stack = stack_with("collector.interval", json!(format!("{at}s")));
        assert_eq!(accepted(stack), Ok(()), "collector.interval {at}s");
    }
    let beyond = stack_with("collector.interval", json!(format!("{}s", bounds.max + 1)));
    assert!(accepted(beyond).is_err());
}
