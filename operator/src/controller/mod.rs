//! The MetricsStack controller: a kube-runtime `Controller` that owns what it creates, is
//! woken when a referenced Secret changes (when it watches one namespace; cluster-wide it
//! may not watch Secrets and re-reads each stack's Secret on a short requeue instead), and
//! runs one reconcile pipeline per stack (see [`reconcile`]).

mod apply;
mod conditions;
mod database;
mod pod_creation;
mod reconcile;
mod secret;
mod sidecars;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};

use crate::crd::MetricsStack;
use crate::metrics::Metrics;
use crate::resources::{ClusterRoleNames, DefaultImages};

pub use apply::FIELD_MANAGER;
pub use reconcile::{ACKNOWLEDGE_ANNOTATION, FINALIZER, ReconcileError};

/// State shared by every reconcile.
pub struct Context {
    /// Client for the API server.
    pub client: Client,
    /// Publishes Kubernetes events about stacks.
    pub recorder: Recorder,
    /// The operator's Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The images of stacks that pin none.
    pub images: DefaultImages,
    /// The chart's ClusterRoles that stacks' components are bound to.
    pub cluster_roles: ClusterRoleNames,
    /// Database pools, one per stack, replaced when the URI or pool settings change.
    pools: database::Pools,
    /// Consecutive failures per stack, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<MetricsStack>, u32>>,
}

impl Context {
    /// A context for the controller running as `instance` (usually the pod name).
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: &str) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(instance.into()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            images: DefaultImages::default(),
            cluster_roles: ClusterRoleNames::default(),
            pools: database::Pools::default(),
            failures: Mutex::default(),
        }
    }

    /// The same context, running stacks that pin no image with `images`.
    #[must_use]
    pub fn with_images(self, images: DefaultImages) -> Self {
        Self { images, ..self }
    }

    /// The same context, binding stacks' components to the ClusterRoles named `roles`.
    #[must_use]
    pub fn with_cluster_roles(self, cluster_roles: ClusterRoleNames) -> Self {
        Self {
            cluster_roles,
            ..self
        }
    }
}

/// Runs the controller until the stream of reconciles ends (on shutdown), over every
/// namespace or only `namespace`. `on_ready` is called once the MetricsStack cache has
/// synced.
pub async fn run(
    context: Arc<Context>,
    namespace: Option<&str>,
    on_ready: impl FnOnce() + Send + 'static,
) {
    let client = context.client.clone();
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(namespace) => Api::namespaced(client.clone(), namespace),
            None => Api::all(client.clone()),
        }
    }
    let (stacks, store) = watch::stacks(
        client.clone(),
        namespace,
        context.metrics.clone(),
        context.recorder.clone(),
    );
    let controller = Controller::for_stream(stacks, store);
    let store = controller.store();
    let ready_store = store.clone();
    tokio::spawn(async move {
        // The store's readiness wakes only its latest waiter (a one-shot channel keeps one
        // waker) and the controller waits on it too, so a lone wait could sleep forever:
        // ask again every second.
        loop {
            match tokio::time::timeout(Duration::from_secs(1), ready_store.wait_until_ready()).await
            {
                Ok(Ok(())) => return on_ready(),
                Ok(Err(_writer_dropped)) => return,
                Err(_still_waiting) => {}
            }
        }
    });
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=metricsstack-operator");
    let controller = controller
        .owns(api::<DaemonSet>(&client, namespace), owned.clone())
        .owns(api::<Deployment>(&client, namespace), owned.clone())
        .owns(api::<ConfigMap>(&client, namespace), owned.clone())
        .owns(api::<Service>(&client, namespace), owned.clone())
        .owns(api::<ServiceAccount>(&client, namespace), owned.clone())
        .owns(api::<NetworkPolicy>(&client, namespace), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, namespace), owned);
    // Watching one namespace, the chart grants a Role to list and watch its Secrets: only
    // their metadata is watched, enough to know that one changed without holding every
    // Secret's data in memory. Cluster-wide, the operator may only `get` Secrets (a
    // cluster-wide list/watch would hand every Secret of the cluster to a stolen token), so
    // it re-reads each stack's Secret on a short requeue instead.
    let (controller, converged_requeue) = match namespace {
        Some(namespace) => {
            let controller = controller.watches(
                Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), namespace),
                watcher::Config::default(),
                move |secret| {
                    let namespace = secret.namespace();
                    let name = secret.name_any();
                    store
                        .state()
                        .into_iter()
                        .filter(|stack| {
                            let database = &stack.spec.database;
                            let ca_secret = (database.ca_ref.as_ref())
                                .and_then(|ca| ca.secret_key_ref.as_ref())
                                .map(|secret| secret.name.as_str());
                            let pooler_secret = (database.pooler.as_ref())
                                .map(|pooler| pooler.secret_ref.name.as_str());
                            stack.namespace() == namespace
                                && (database.secret_ref.name == name
                                    || ca_secret == Some(name.as_str())
                                    || pooler_secret == Some(name.as_str()))
                        })
                        .map(|stack| ObjectRef::from_obj(&*stack))
                        .collect::<Vec<_>>()
                },
            );
            (controller, reconcile::RESYNC)
        }
        None => (controller, reconcile::SECRET_RECHECK),
    };
    controller
        .shutdown_on_signal()
        .run(
            move |stack, context| reconcile::reconcile(stack, context, converged_requeue),
            error_policy,
            context,
        )
        .for_each(|result| async move {
            match result {
                Ok((stack, _)) => tracing::debug!(%stack, "reconciled"),
                // A deleted stack's owned objects go after it, and each one wakes the
                // controller for a stack that no longer exists: nothing to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(stack)) => {
                    tracing::debug!(%stack, "woken for a stack that is gone");
                }
                // Objects that fail to deserialise or reconcile are logged and counted; the
                // controller carries on with the others.
                Err(error) => tracing::warn!(%error, "reconcile failed"),
            }
        })
        .await;
}

/// Lists the MetricsStacks the controller would watch, untyped (an unreadable one does not
/// fail the list): what a standby checks before it calls itself ready.
pub async fn list_stacks(client: &Client, namespace: Option<&str>) -> Result<(), kube::Error> {
    watch::list(client.clone(), namespace).await
}

/// Requeues a failed stack with exponential backoff: 1 s, 2 s, 4 s ... up to 5 minutes.
fn error_policy(stack: Arc<MetricsStack>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.reason());
    let mut failures = ctx
        .failures
        .lock()
        .expect("the failure map is not poisoned");
    let count = failures.entry(ObjectRef::from_obj(&*stack)).or_insert(0);
    *count = count.saturating_add(1);
    let backoff = Duration::from_secs(1u64 << (*count - 1).min(8)).min(Duration::from_secs(300));
    // A deleted stack whose clean-up fails is retried no later than when it is abandoned.
    let delay = reconcile::cleanup_time_left(&stack, Timestamp::now()).map_or(backoff, |left| {
        backoff.min(left.max(Duration::from_secs(1)))
    });
    tracing::warn!(stack = %stack.name_any(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
