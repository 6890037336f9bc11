//! The watch on MetricsStacks, tolerant of objects the operator cannot read.
//!
//! A typed watch fails a whole list when one object does not deserialise, so one stack
//! stored under an older schema would stall every other. Here objects arrive untyped and
//! are converted one by one: an unreadable one is logged, counted, reported in an event
//! on the object (naming the field), and skipped; the others carry on. Each version is
//! reported once, however often a relist shows it again.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Predicate as _, PredicateConfig, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::crd::MetricsStack;
use crate::metrics::Metrics;

/// A stored MetricsStack that does not match the operator's types.
#[derive(Debug)]
pub struct Unreadable {
    /// The object as stored.
    pub object: Box<DynamicObject>,
    /// What does not match, with the path of the field (`spec.collector.interval: ...`).
    pub error: String,
    /// The event says the object was deleted: nothing left to report on.
    pub deleted: bool,
}

/// The stream of readable MetricsStacks for a `Controller`, and the store it fills,
/// over every namespace or only `namespace`.
pub fn stacks(
    client: Client,
    namespace: Option<&str>,
    metrics: Arc<Metrics>,
    recorder: Recorder,
) -> (
    impl Stream<Item = Result<MetricsStack, watcher::Error>> + Send + 'static,
    Store<MetricsStack>,
) {
    let (api, resource) = untyped(client, namespace);
    let (reader, writer) = reflector::store();
    let mut reported = ReportedVersions::default();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .filter_map(move |event| {
            // The closure runs once per event, in order: the bookkeeping needs no lock.
            let converted = event.map(typed);
            let first = match &converted {
                Ok(converted) => reported.note(converted),
                Err(_) => false,
            };
            let metrics = metrics.clone();
            let recorder = recorder.clone();
            let resource = resource.clone();
            async move {
                match converted {
                    Ok(Ok(event)) => Some(Ok(event)),
                    Ok(Err(unreadable)) => {
                        if first {
                            report(&unreadable, &resource, &metrics, &recorder).await;
                        }
                        None
                    }
                    Err(error) => Some(Err(error)),
                }
            }
        })
        .reflect(writer)
        .applied_objects()
        // What the operator writes to a stack, its status, wakes no reconcile: a pending
        // plan whose row count changes as data ages would otherwise rewrite the status and
        // wake itself forever. A change of the spec (generation; deletion bumps it too), of
        // the annotations (the data-loss acknowledgement) or of the finalizers (the
        // finalizer helper waits for its own patch) does.
        .predicate_filter(
            predicates::generation
                .combine(predicates::annotations)
                .combine(predicates::finalizers),
            PredicateConfig::default(),
        );
    (stream, reader)
}

/// The version of each unreadable object already reported, by uid: a relist after a
/// broken watch shows the same versions again, and they are not news. An entry goes when
/// the object becomes readable or is deleted while watched.
#[derive(Debug, Default)]
struct ReportedVersions(HashMap<String, String>);

impl ReportedVersions {
    /// Takes note of a converted watch event; true when it carries an unreadable version
    /// that has not been reported yet.
    fn note(&mut self, converted: &Result<watcher::Event<MetricsStack>, Unreadable>) -> bool {
        use watcher::Event::{Apply, Delete, InitApply};
        match converted {
            Ok(Apply(stack) | InitApply(stack) | Delete(stack)) => {
                self.forget(stack.meta());
                false
            }
            Ok(_) => false,
            Err(unreadable) if unreadable.deleted => {
                self.forget(unreadable.object.meta());
                false
            }
            Err(unreadable) => self.first_report(unreadable.object.meta()),
        }
    }

    /// Records this version of an unreadable object; true if it had not been reported.
    fn first_report(&mut self, meta: &ObjectMeta) -> bool {
        let (Some(uid), Some(version)) = (&meta.uid, &meta.resource_version) else {
            return true;
        };
        self.0.insert(uid.clone(), version.clone()).as_ref() != Some(version)
    }

    /// Forgets an object that is readable again or gone.
    fn forget(&mut self, meta: &ObjectMeta) {
        if let Some(uid) = &meta.uid {
            self.0.remove(uid);
        }
    }
}

/// Lists the MetricsStacks, untyped: a check that the API serves them to this operator.
pub async fn list(client: Client, namespace: Option<&str>) -> Result<(), kube::Error> {
    let (api, _) = untyped(client, namespace);
    api.list_metadata(&ListParams::default().limit(1)).await?;
    Ok(())
}

fn untyped(client: Client, namespace: Option<&str>) -> (Api<DynamicObject>, ApiResource) {
    let resource = ApiResource::erase::<MetricsStack>(&());
    let api = match namespace {
        Some(namespace) => Api::namespaced_with(client, namespace, &resource),
        None => Api::all_with(client, &resource),
    };
    (api, resource)
}

/// Converts one watch event to the operator's types. An unreadable object that is deleted
/// needs no reconcile either, so every event carrying one is returned as [`Unreadable`].
pub fn typed(
    event: watcher::Event<DynamicObject>,
) -> Result<watcher::Event<MetricsStack>, Unreadable> {
    use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
    Ok(match event {
        Apply(object) => Apply(parse(object, false)?),
        InitApply(object) => InitApply(parse(object, false)?),
        Delete(object) => Delete(parse(object, true)?),
        Init => Init,
        InitDone => InitDone,
    })
}

fn parse(object: DynamicObject, deleted: bool) -> Result<MetricsStack, Unreadable> {
    let unreadable = |error: String| Unreadable {
        error,
        deleted,
        object: Box::new(object.clone()),
    };
    let value = serde_json::to_value(&object).map_err(|e| unreadable(e.to_string()))?;
    serde_path_to_error::deserialize(value)
        .map_err(|error| unreadable(format!("{}: {}", error.path(), error.inner())))
}

/// Logs, counts and publishes a Warning event on the object; never fails.
async fn report(
    unreadable: &Unreadable,
    resource: &ApiResource,
    metrics: &Metrics,
    recorder: &Recorder,
) {
    let object = &unreadable.object;
    let note = format!(
        "the operator cannot read this MetricsStack and skips it until it changes: {}. \
         Fix the field (kubectl explain metricsstack.spec documents it) or re-apply the \
         resource from Git",
        unreadable.error
    );
    tracing::warn!(
        stack = %object.name_any(),
        namespace = object.namespace().unwrap_or_default(),
        error = %unreadable.error,
        "skipping an unreadable MetricsStack"
    );
    metrics.unreadable_object();
    let event = Event {
        type_: EventType::Warning,
        reason: "Unreadable".into(),
        note: Some(note),
        action: "Read".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &object.object_ref(resource)).await {
        tracing::warn!(%error, "publishing an event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dynamic(spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "metricsstack.dev/v1alpha1",
            "kind": "MetricsStack",
            "metadata": { "name": "s", "namespace": "n" },
            "spec": spec,
        }))
        .expect("a dynamic object")
    }

    #[test]
    fn a_readable_object_converts_and_markers_pass_through() {
        let event = watcher::Event::InitApply(dynamic(json!({
            "database": { "secretRef": { "name": "db" } }
        })));
        match typed(event).expect("readable") {
            watcher::Event::InitApply(stack) => {
                assert_eq!(stack.spec.database.secret_ref.name, "db");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            typed(watcher::Event::InitDone),
            Ok(watcher::Event::InitDone)
        ));
    }

    #[test]
    fn an_unreadable_object_names_the_field() {
        let event = watcher::Event::Apply(dynamic(json!({
            "database": { "secretRef": { "name": "db" } },
            "collector": { "interval": 5 }
        })));
        let unreadable = typed(event).expect_err("unreadable");
        assert!(
            unreadable.error.starts_with("spec.collector.interval: "),
            "{}",
            unreadable.error
        );
        assert_eq!(unreadable.object.name_any(), "s");
        assert!(!unreadable.deleted);
    }

    /// A kind of watch event, as its constructor.
    type Wrap = fn(DynamicObject) -> watcher::Event<DynamicObject>;

    /// A watch event on an object of version `version` whose interval is unreadable.
    fn unreadable(version: &str, wrap: Wrap) -> Result<watcher::Event<MetricsStack>, Unreadable> {
        let mut object = dynamic(json!({
            "database": { "secretRef": { "name": "db" } },
            "collector": { "interval": 5 }
        }));
        object.metadata.uid = Some("a".into());
        object.metadata.resource_version = Some(version.into());
        typed(wrap(object))
    }

    #[test]
    fn each_unreadable_version_is_reported_once() {
        use watcher::Event::{Apply, Delete, InitApply};
        let mut reported = ReportedVersions::default();
        let steps: [(&str, Wrap, bool, &str); 5] = [
            ("1", InitApply, true, "first seen"),
            ("1", InitApply, false, "a relist of it"),
            ("2", Apply, true, "an edit that is still bad"),
            ("3", Delete, false, "deleted: nothing to report"),
            ("2", InitApply, true, "forgotten once deleted"),
        ];
        for (version, wrap, expected, why) in steps {
            assert_eq!(reported.note(&unreadable(version, wrap)), expected, "{why}");
        }
        let mut fixed = dynamic(json!({ "database": { "secretRef": { "name": "db" } } }));
        fixed.metadata.uid = Some("a".into());
        assert!(!reported.note(&typed(Apply(fixed))), "readable again");
        assert!(
            reported.note(&unreadable("2", Apply)),
            "forgotten once readable"
        );
    }
}
