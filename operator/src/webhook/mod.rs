//! The mutating admission webhook that injects the sidecar collector into pods annotated
//! `metricsstack.dev/inject: <stack>`, with the settings of that stack (in the pod's
//! namespace); the patch itself is built by [`crate::resources::sidecar_patch`].
//!
//! Every replica of the operator serves it (leading or not), with the certificates kept in
//! one Secret of the operator's namespace ([`certificate`]); each keeps the
//! MutatingWebhookConfiguration's `caBundle` equal to the CA's certificate, which also
//! repairs a `helm upgrade` that reset it.
//!
//! Who may call it: the endpoint takes no client credentials. The API server reaches it
//! over TLS, checking the serving certificate against `caBundle`; what it sends is a pod
//! being created, which the API server has already authenticated and authorized, and all
//! the webhook does is answer with a patch of that same pod, which the API server then
//! validates (Pod Security included). Anyone else who reaches the port can only learn what
//! patch a pod of theirs would get. Errors never refuse a pod: the answer is then "allowed,
//! unchanged", and the chart's `failurePolicy: Ignore` does the same when the webhook is
//! unreachable.

pub mod certificate;
mod server;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::{Api, Client};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;

use crate::crd::MetricsStack;
use crate::resources::{SidecarSettings, requested_stack, sidecar_patch};
use certificate::{CertificateError, Lifetimes, Renewal, WebhookCertificates};

/// The path the API server posts admission reviews of pods to.
pub const MUTATE_PODS_PATH: &str = "/mutate-pods";

/// How the webhook is served.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Where it listens.
    pub address: SocketAddr,
    /// The namespace of its certificates' Secret (the operator's).
    pub secret_namespace: String,
    /// The name of its certificates' Secret.
    pub secret_name: String,
    /// The MutatingWebhookConfiguration whose `caBundle` it keeps.
    pub configuration_name: String,
    /// The DNS names (the Service's) and IP addresses its certificate is for.
    pub hosts: Vec<String>,
    /// How long the certificates are valid.
    pub lifetimes: Lifetimes,
    /// How often it re-reads the Secret and the configuration (renewals, `caBundle`).
    pub resync: Duration,
    /// The collector image of stacks that pin none.
    pub collector_image: String,
}

/// The webhook failed to start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The address cannot be listened on.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The operating system's answer.
        source: std::io::Error,
    },
    /// The API server refused a read or write of the Secret or the configuration.
    #[error("the webhook's certificate Secret or MutatingWebhookConfiguration: {0}")]
    Api(#[from] kube::Error),
    /// A certificate could not be made.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
}

/// The certificate being served, replaced when it is renewed.
#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The webhook, serving: dropping it stops it (and closes its connections).
#[derive(Debug)]
pub struct RunningWebhook {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RunningWebhook {
    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for RunningWebhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the webhook: listens, makes or reads its certificates, sets `caBundle` (if the
/// configuration exists yet), then serves and keeps both up to date in a task.
pub async fn start(
    client: Client,
    settings: WebhookSettings,
) -> Result<RunningWebhook, WebhookError> {
    let listener = TcpListener::bind(settings.address)
        .await
        .map_err(|source| WebhookError::Listen {
            address: settings.address,
            source,
        })?;
    let address = listener
        .local_addr()
        .map_err(|source| WebhookError::Listen {
            address: settings.address,
            source,
        })?;
    let certificates = ensure_certificates(&client, &settings).await?;
    sync_ca_bundle(&client, &settings.configuration_name, &certificates.ca_pem).await?;
    let current = Arc::new(CurrentCertificate(RwLock::new(
        certificates.certified_key()?,
    )));
    let injector = Arc::new(Injector {
        client: client.clone(),
        collector_image: settings.collector_image.clone(),
    });
    let serving = server::serve(listener, current.clone(), injector);
    let maintaining = maintain(client, settings, certificates, current);
    let task = tokio::spawn(async move {
        tokio::select! {
            () = serving => {}
            () = maintaining => {}
        }
    });
    tracing::info!(%address, "serving the sidecar injection webhook");
    Ok(RunningWebhook { address, task })
}

/// Renews the certificates when due (or takes another replica's renewal) and keeps
/// `caBundle` in sync, every `settings.resync`; failures are logged and retried.
async fn maintain(
    client: Client,
    settings: WebhookSettings,
    mut certificates: WebhookCertificates,
    current: Arc<CurrentCertificate>,
) {
    loop {
        tokio::time::sleep(settings.resync).await;
        let renewed = match ensure_certificates(&client, &settings).await {
            Ok(renewed) => renewed,
            Err(error) => {
                tracing::warn!(%error, "cannot check the webhook's certificates; retrying");
                continue;
            }
        };
        if renewed != certificates {
            match renewed.certified_key() {
                Ok(key) => {
                    *current.0.write().unwrap_or_else(|e| e.into_inner()) = key;
                    tracing::info!(not_after = %renewed.not_after, "serving a renewed webhook certificate");
                    certificates = renewed;
                }
                Err(error) => tracing::warn!(%error, "cannot load the renewed certificate"),
            }
        }
        if let Err(error) =
            sync_ca_bundle(&client, &settings.configuration_name, &certificates.ca_pem).await
        {
            tracing::warn!(%error, "cannot update the webhook's caBundle; retrying");
        }
    }
}

/// The certificates in the Secret, made or renewed there first if due. Of replicas racing
/// to write it, one wins and the others take what it wrote.
async fn ensure_certificates(
    client: &Client,
    settings: &WebhookSettings,
) -> Result<WebhookCertificates, WebhookError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.secret_namespace);
    let now = Utc::now();
    let stored = api.get_opt(&settings.secret_name).await?;
    let current = stored.as_ref().and_then(WebhookCertificates::from_secret);
    let renewed = match &current {
        Some(current) => match current.renewal(now, &settings.hosts, settings.lifetimes) {
            Renewal::None => return Ok(current.clone()),
            Renewal::Serving => current.renew_serving(now, settings.lifetimes)?,
            Renewal::All => {
                WebhookCertificates::generate(&settings.hosts, now, settings.lifetimes)?
            }
        },
        None => WebhookCertificates::generate(&settings.hosts, now, settings.lifetimes)?,
    };
    let mut secret = renewed.to_secret(&settings.secret_name, &settings.secret_namespace);
    let written = match stored {
        Some(stored) => {
            secret.metadata.resource_version = stored.metadata.resource_version;
            api.replace(&settings.secret_name, &PostParams::default(), &secret)
                .await
        }
        None => api.create(&PostParams::default(), &secret).await,
    };
    match written {
        Ok(_) => {
            tracing::info!(not_after = %renewed.not_after, "wrote the webhook's certificates");
            Ok(renewed)
        }
        // Another replica wrote it first: take its certificates.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let stored = api.get(&settings.secret_name).await?;
            Ok(WebhookCertificates::from_secret(&stored).unwrap_or(renewed))
        }
        Err(error) => Err(error.into()),
    }
}

/// Sets `caBundle` to `ca_pem` in each webhook of the configuration `name` that has
/// another; a configuration not installed yet is left for the next round.
async fn sync_ca_bundle(client: &Client, name: &str, ca_pem: &str) -> Result<(), kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(configuration) = api.get_opt(name).await? else {
        tracing::warn!(
            configuration = name,
            "no MutatingWebhookConfiguration to give the CA to yet"
        );
        return Ok(());
    };
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let encoded = serde_json::to_value(&bundle).expect("bytes serialise");
    let mut operations: Vec<serde_json::Value> = (configuration.webhooks.iter().flatten())
        .enumerate()
        .filter(|(_, webhook)| webhook.client_config.ca_bundle.as_ref() != Some(&bundle))
        .map(|(index, _)| {
            serde_json::json!({
                "op": "add",
                "path": format!("/webhooks/{index}/clientConfig/caBundle"),
                "value": encoded,
            })
        })
        .collect();
    if operations.is_empty() {
        return Ok(());
    }
    // The indexes hold for the version read.
    operations.insert(
        0,
        serde_json::json!({
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": configuration.metadata.resource_version,
        }),
    );
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(operations)).expect("a JSON patch");
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    tracing::info!(configuration = name, "set the webhook's caBundle");
    Ok(())
}

/// Answers admission reviews of pods.
struct Injector {
    client: Client,
    collector_image: String,
}

impl Injector {
    /// The answer to a review: always allowed, with the sidecar's patch for a pod created
    /// with the annotation, naming an existing stack, that has no sidecar yet.
    async fn review(&self, review: AdmissionReview<Pod>) -> AdmissionReview<DynamicObject> {
        let request: AdmissionRequest<Pod> = match review.try_into() {
            Ok(request) => request,
            Err(error) => return AdmissionResponse::invalid(error).into_review(),
        };
        let response = AdmissionResponse::from(&request);
        let Some(patch) = self.patch(&request).await else {
            return response.into_review();
        };
        match response.clone().with_patch(patch) {
            Ok(patched) => patched.into_review(),
            Err(error) => {
                tracing::warn!(%error, "cannot serialise the sidecar patch; the pod stays as it is");
                response.into_review()
            }
        }
    }

    /// The sidecar's patch for the request's pod, if it gets one.
    #[tracing::instrument(skip_all, fields(
        namespace = request.namespace.as_deref(),
        pod = request.name.as_str(),
    ))]
    async fn patch(&self, request: &AdmissionRequest<Pod>) -> Option<json_patch::Patch> {
        if request.operation != Operation::Create {
            return None;
        }
        let pod = request.object.as_ref()?;
        let stack_name = requested_stack(pod)?;
        let namespace = request.namespace.as_deref()?;
        let stacks: Api<MetricsStack> = Api::namespaced(self.client.clone(), namespace);
        let stack = match stacks.get_opt(stack_name).await {
            Ok(Some(stack)) => stack,
            Ok(None) => {
                tracing::warn!(
                    stack = stack_name,
                    "the pod asks for a sidecar of a MetricsStack this namespace does not have; no sidecar"
                );
                return None;
            }
            Err(error) => {
                tracing::warn!(stack = stack_name, %error, "cannot read the MetricsStack; no sidecar");
                return None;
            }
        };
        let settings = SidecarSettings::of(&stack, &self.collector_image)?;
        let patch = sidecar_patch(pod, &settings);
        if patch.is_some() {
            tracing::info!(stack = stack_name, "injecting the sidecar collector");
        }
        patch
    }
}
