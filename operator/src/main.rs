//! The `metricsstack-operator` binary: `run` reconciles MetricsStack resources;
//! `query-service` serves the cached dashboard queries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use metricsstack_common::access::{AccessPolicy, KubernetesAccess};
use metricsstack_common::admin::{self, Readiness};
use metricsstack_common::config::QueryServiceConfig;
use metricsstack_common::{logging, shutdown};
use metricsstack_operator::controller::{self, Context};
use metricsstack_operator::leader::LeaderElection;
use metricsstack_operator::metrics::Metrics;
use metricsstack_operator::resources::{ClusterRoleNames, DefaultImages};
use metricsstack_operator::webhook::certificate::Lifetimes;
use metricsstack_operator::webhook::{self, WebhookSettings};
use metricsstack_query_service::QueryService;

/// The MetricsStack operator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Reconcile MetricsStack resources in every namespace.
    Run {
        /// Address of the admin server: /healthz, /readyz and /metrics.
        #[arg(long, env = "ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
        admin_address: SocketAddr,
        /// Who may read /metrics: `kubernetes` (a bearer token allowed `get` on the
        /// non-resource URL /metrics, checked with TokenReview and SubjectAccessReview) or
        /// `none` (anyone who can reach the port).
        #[arg(long, value_enum, default_value_t = MetricsAuthentication::Kubernetes)]
        metrics_authentication: MetricsAuthentication,
        /// Namespace of the leader-election Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// Name of the leader-election Lease.
        #[arg(long, default_value = "metricsstack-operator")]
        lease_name: String,
        /// This instance's identity in the election (the pod name in a cluster).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Seconds the leader's lease lasts without renewal; a standby takes over after it.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
        lease_duration_seconds: u64,
        /// Reconcile without leader election (one instance only).
        #[arg(long)]
        no_leader_election: bool,
        /// Watch only this namespace instead of the whole cluster.
        #[arg(long, env = "WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// The collector image of stacks that pin none (default: this release's).
        #[arg(long, env = "COLLECTOR_IMAGE")]
        collector_image: Option<String>,
        /// The query service image of stacks that pin none (default: this release's operator
        /// image, which serves the query service too).
        #[arg(long, env = "QUERY_SERVICE_IMAGE")]
        query_service_image: Option<String>,
        /// The chart's pod-reading ClusterRole that stacks' collectors are bound to.
        #[arg(long, default_value = "metricsstack-collector")]
        collector_cluster_role: String,
        /// The chart's token- and access-review ClusterRole that stacks' query services are
        /// bound to.
        #[arg(long, default_value = "metricsstack-query-service")]
        query_service_cluster_role: String,
        /// The MutatingWebhookConfiguration of the sidecar injection, whose caBundle the
        /// operator keeps; unset, the operator serves no webhook.
        #[arg(long, env = "WEBHOOK_CONFIGURATION")]
        webhook_configuration: Option<String>,
        /// Address of the sidecar injection webhook (HTTPS).
        #[arg(long, env = "WEBHOOK_ADDRESS", default_value = "0.0.0.0:9443")]
        webhook_address: SocketAddr,
        /// The Secret (in the operator's namespace) holding the webhook's CA and
        /// certificate, created and renewed by the operator.
        #[arg(long, default_value = "metricsstack-operator-webhook-tls")]
        webhook_secret: String,
        /// The names the webhook's certificate is for: its Service's DNS name
        /// (`<service>.<namespace>.svc`), comma-separated.
        #[arg(long, env = "WEBHOOK_HOSTS", value_delimiter = ',')]
        webhook_hosts: Vec<String>,
    },
    /// Serve the cached dashboard queries (the query service).
    QueryService {
        /// The query service's YAML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The database URL (`postgres://...`).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

/// Who may read the operator's `/metrics`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum MetricsAuthentication {
    /// Whoever the Kubernetes API server allows `get` on `/metrics`.
    Kubernetes,
    /// Anyone who can reach the admin port.
    None,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // warp::filters::trace logs every request at INFO and each 5xx (a failed readiness probe) at
    // ERROR; the query service records requests in its own spans and metrics instead.
    logging::init("info,kube=warn,warp::filters::trace=off");
    match Cli::parse().command {
        Command::Run {
            admin_address,
            metrics_authentication,
            lease_namespace,
            lease_name,
            identity,
            lease_duration_seconds,
            no_leader_election,
            namespace,
            collector_image,
            query_service_image,
            collector_cluster_role,
            query_service_cluster_role,
            webhook_configuration,
            webhook_address,
            webhook_secret,
            webhook_hosts,
        } => {
            let release = DefaultImages::default();
            let images = DefaultImages {
                collector: collector_image.unwrap_or(release.collector),
                query_service: query_service_image.unwrap_or(release.query_service),
            };
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API server")?;
            let metrics = Arc::new(Metrics::default());
            // Ready means able to do this instance's part: a leader once its MetricsStack
            // cache has synced; a standby once it has listed the MetricsStacks it would
            // take over (else a rollout of several replicas would never finish).
            let readiness = Readiness::not_ready("listing the MetricsStacks");
            let access = match metrics_authentication {
                MetricsAuthentication::Kubernetes => {
                    let access = Arc::new(KubernetesAccess::new(client.clone()));
                    metrics.register_access(&access);
                    AccessPolicy::Kubernetes(access)
                }
                MetricsAuthentication::None => AccessPolicy::Open,
            };
            tokio::spawn(admin::serve(
                admin_address,
                Arc::new(readiness.clone()),
                metrics.clone(),
                access,
            ));
            // Every replica serves the webhook, leading or not: the Service spreads the API
            // server's calls over them.
            let _webhook = match webhook_configuration {
                Some(configuration_name) => {
                    let settings = WebhookSettings {
                        address: webhook_address,
                        secret_namespace: lease_namespace.clone(),
                        secret_name: webhook_secret,
                        configuration_name,
                        hosts: webhook_hosts,
                        lifetimes: Lifetimes::default(),
                        resync: std::time::Duration::from_secs(60),
                        collector_image: images.collector.clone(),
                    };
                    let webhook = webhook::start(client.clone(), settings)
                        .await
                        .context("starting the sidecar injection webhook")?;
                    Some(webhook)
                }
                None => None,
            };
            let identity =
                identity.unwrap_or_else(|| format!("metricsstack-operator-{}", std::process::id()));
            let election = (!no_leader_election).then(|| {
                LeaderElection::new(client.clone(), &lease_namespace, &lease_name, &identity)
                    .lease_duration(std::time::Duration::from_secs(lease_duration_seconds))
            });
            if let Some(election) = &election {
                controller::list_stacks(&client, namespace.as_deref())
                    .await
                    .context("listing MetricsStacks (is the CRD installed?)")?;
                readiness.set_ready();
                election
                    .acquire()
                    .await
                    .context("acquiring the leader lease")?;
                readiness.set_not_ready("leading: syncing the MetricsStack cache");
            }
            let cluster_roles = ClusterRoleNames {
                collector: collector_cluster_role,
                query_service: query_service_cluster_role,
            };
            let context = Arc::new(
                Context::new(client, metrics, &identity)
                    .with_images(images)
                    .with_cluster_roles(cluster_roles),
            );
            let on_ready = move || readiness.set_ready();
            match &election {
                Some(election) => {
                    tokio::select! {
                        () = controller::run(context, namespace.as_deref(), on_ready) => {}
                        () = election.hold() => anyhow::bail!("lost the leader lease; exiting so that another instance takes over"),
                    }
                }
                None => controller::run(context, namespace.as_deref(), on_ready).await,
            }
            Ok(())
        }
        Command::QueryService {
            config,
            database_url,
        } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let config: QueryServiceConfig = serde_yaml::from_str(&text)
                .with_context(|| format!("parsing {}", config.display()))?;
            config.validate()?;
            let access = AccessPolicy::for_authentication(config.authentication)
                .await
                .context("connecting to the Kubernetes API server, which checks API callers")?;
            QueryService::new(&config, &database_url, access)?
                .serve(&config, shutdown::signal())
                .await?;
            Ok(())
        }
    }
}
