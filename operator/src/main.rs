//! The `metricsstack-operator` binary: `run` reconciles MetricsStack resources;
//! `query-service` serves the cached dashboard queries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use metricsstack_operator::controller::{self, Context};
use metricsstack_operator::leader::LeaderElection;
use metricsstack_operator::metrics::Metrics;
use metricsstack_operator::query_service::{QueryService, QueryServiceConfig};
use warp::Filter;

/// The MetricsStack operator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Reconcile MetricsStack resources in every namespace.
    Run {
        /// Address of the admin server: /healthz, /readyz and /metrics.
        #[arg(long, env = "ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
        admin_address: SocketAddr,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Run {
            admin_address,
            lease_namespace,
            lease_name,
            identity,
            lease_duration_seconds,
            no_leader_election,
            namespace,
        } => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API server")?;
            let metrics = Arc::new(Metrics::default());
            // Ready means able to do this instance's part: a leader once its MetricsStack
            // cache has synced; a standby once it has listed the MetricsStacks it would
            // take over (else a rollout of several replicas would never finish).
            let ready = Arc::new(AtomicBool::new(false));
            tokio::spawn(admin_server(admin_address, metrics.clone(), ready.clone()));
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
                ready.store(true, Ordering::SeqCst);
                election
                    .acquire()
                    .await
                    .context("acquiring the leader lease")?;
                ready.store(false, Ordering::SeqCst);
            }
            let context = Arc::new(Context::new(client, metrics, &identity));
            let on_ready = move || ready.store(true, Ordering::SeqCst);
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
            QueryService::new(&config, &database_url)?
                .serve(&config, shutdown_signal())
                .await?;
            Ok(())
        }
    }
}

/// Completes on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Serves liveness (the process answers), readiness (standing by for the Lease, or leading
/// with a synced MetricsStack cache) and the Prometheus metrics.
async fn admin_server(address: SocketAddr, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    let healthz = warp::path!("healthz").map(|| "ok".to_owned());
    let readyz = warp::path!("readyz").map(move || {
        if ready.load(Ordering::SeqCst) {
            warp::reply::with_status("ready".to_owned(), warp::http::StatusCode::OK)
        } else {
            warp::reply::with_status(
                "not ready".to_owned(),
                warp::http::StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    });
    let metrics = warp::path!("metrics").map(move || metrics.render());
    warp::serve(warp::get().and(healthz.or(readyz).or(metrics)))
        .run(address)
        .await;
}
