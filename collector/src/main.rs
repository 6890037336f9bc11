//! The `collector` binary: sample the node every interval and write the rows to the
//! database, spooling them while it is away.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use metricsstack_collector::metrics::Metrics;
use metricsstack_collector::pod_scope::{PodIdentity, PodScope, pod_rows};
use metricsstack_collector::pods::{self, PodIndex};
use metricsstack_collector::sample::Sampler;
use metricsstack_collector::spool::Spool;
use metricsstack_collector::writer::{Writer, spool_sample};
use metricsstack_common::access::AccessPolicy;
use metricsstack_common::admin::{self, Readiness};
use metricsstack_common::config::{CollectorConfig, SETTINGS};
use metricsstack_common::database::{SearchPath, Session};
use sqlx::postgres::PgConnectOptions;
use tracing::Instrument;

/// MetricsStack node collector: host, process and pod metrics into TimescaleDB.
///
/// Needs DATABASE_URL (postgres://user:password@host:port/database) and, for pod
/// attribution, NODE_NAME and in-cluster Kubernetes credentials.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The configuration file (YAML), as the operator renders it into the collector ConfigMap.
    #[arg(long, env = "COLLECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration (and DATABASE_URL's form) and exit.
    #[arg(long)]
    check_config: bool,
    /// Run as a pod's sidecar: record only the processes of this pod's shared process
    /// namespace, to vm_process_metrics, with the pod's identity from POD_NAMESPACE,
    /// POD_NAME and POD_UID (the downward API); no host metrics.
    #[arg(long)]
    pod_scope: bool,
    /// With --pod-scope: record the pod's pause process too.
    #[arg(long, requires = "pod_scope")]
    include_pause: bool,
}

fn settings_help() -> String {
    let mut help = String::from("Settings (file key, environment override, meaning):\n");
    for (key, env, meaning) in SETTINGS {
        let env = if env.is_empty() { "-" } else { env };
        help.push_str(&format!("  {key:<32} {env:<32} {meaning}\n"));
    }
    help
}

fn main() -> std::process::ExitCode {
    let matches = Args::command().after_help(settings_help()).get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let env = |name: &str| std::env::var(name).ok();
    let config = match &args.config {
        Some(path) => CollectorConfig::load(path, env),
        None => {
            let mut config = CollectorConfig::default();
            config
                .apply_env(env)
                .and_then(|()| config.validate())
                .map(|()| config)
        }
    };
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            eprintln!("collector: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let database = match std::env::var("DATABASE_URL").ok().map(|url| {
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        url.parse::<PgConnectOptions>().ok().filter(|_| postgres)
    }) {
        Some(Some(options)) => options,
        Some(None) => {
            eprintln!(
                "collector: invalid setting DATABASE_URL: expected postgres://user:password@host:port/database"
            );
            return std::process::ExitCode::from(2);
        }
        None => {
            eprintln!(
                "collector: missing setting DATABASE_URL: expected postgres://user:password@host:port/database"
            );
            return std::process::ExitCode::from(2);
        }
    };
    let pod_scope = match args
        .pod_scope
        .then(|| PodIdentity::from_env(env))
        .transpose()
    {
        Ok(identity) => identity
            .map(|identity| PodScope::new(identity, config.proc_root.clone(), args.include_pause)),
        Err(error) => {
            eprintln!("collector: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.check_config {
        println!(
            "configuration is valid: sampling every {} s",
            config.interval_seconds
        );
        return std::process::ExitCode::SUCCESS;
    }
    metricsstack_common::logging::init("info");
    // Entered for the whole run, and carried into the spawned tasks: every line the
    // collector logs names the stack it serves.
    let root = tracing::info_span!(
        "collector",
        stack.namespace = %config.stack.namespace,
        stack.name = %config.stack.name,
    );
    let _root = root.enter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let _pod = pod_scope.as_ref().map(|scope| {
        let pod = scope.identity();
        tracing::info_span!("pod", pod.namespace = %pod.namespace, pod.name = %pod.name).entered()
    });
    match runtime.block_on(run(config, database, pod_scope)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "the collector stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(
    config: CollectorConfig,
    database: PgConnectOptions,
    mut pod_scope: Option<PodScope>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::not_ready("no sample taken yet");
    let address: SocketAddr = config.listen_address.parse().context("listenAddress")?;
    // The collector's /metrics stays open: it holds counters only (samples, batches, spool
    // bytes), no process names or command lines, and the stack's NetworkPolicy admits only
    // the scrapers it names. Checking tokens would need a Kubernetes identity with review
    // rights on every node, for nothing a scraper could not see anyway.
    tokio::spawn(
        admin::serve(
            address,
            Arc::new(readiness.clone()),
            metrics.clone(),
            AccessPolicy::Open,
        )
        .in_current_span(),
    );

    let session = Session {
        application_name: "metricsstack-collector",
        schema: config.schema.clone(),
        search_path: SearchPath::StackSchema,
        statement_timeout: None,
        pooler: config.database.pooler,
    };
    let pool = session.connect_lazy(config.database.connect_options(database), &config.pool);
    let spool_dir = config.spool_dir.clone();
    let max_bytes = config.spool_max_bytes;
    let spool = tokio::task::spawn_blocking(move || Spool::open(&spool_dir, max_bytes))
        .await
        .context("opening the spool")?
        .with_context(|| format!("opening the spool {}", config.spool_dir.display()))?;
    metrics.spool_bytes.set(spool.bytes());
    if spool.leftovers_removed() > 0 {
        metrics
            .spool_leftovers_removed
            .inc_by(spool.leftovers_removed());
        tracing::warn!(
            files = spool.leftovers_removed(),
            "removed the half-written spool files an interrupted run left"
        );
    }
    let spool = Arc::new(Mutex::new(spool));
    let writer = Writer::new(pool, session, spool.clone(), metrics.clone());

    let node = std::env::var("NODE_NAME")
        .ok()
        .or_else(|| sysinfo::System::host_name().ok())
        .unwrap_or_else(|| "unknown".into());
    let pod_store = if config.pod_attribution {
        match kube::Client::try_default().await {
            Ok(client) => {
                let (store, watch) = pods::watch(client, &node);
                tokio::spawn(watch.in_current_span());
                Some(store)
            }
            Err(error) => {
                tracing::warn!(%error, "no Kubernetes credentials: pod attribution is off");
                None
            }
        }
    } else {
        None
    };
    let mut sampler = Sampler::new(&node, &config.processes, config.proc_root.clone())?;

    // Every sample is synced to the spool (off this thread) before the next one is taken,
    // and the writer sends the spool to the database: a SIGKILL loses at most the sample
    // being written, and the disk never holds up the 1 s reads.
    let wake = Arc::new(tokio::sync::Notify::new());
    let (stop_writer, writer_stopped) = tokio::sync::oneshot::channel();
    let writer_task = tokio::spawn(writer.run(wake.clone(), writer_stopped).in_current_span());
    let batch_size = config.batch_size as usize;
    let mut spooling: Option<tokio::task::JoinHandle<()>> = None;

    let interval = config.interval();
    let tick = Duration::from_secs(1).min(interval);
    let mut next_sample = tokio::time::Instant::now() + interval;
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let shutdown = metricsstack_common::shutdown::signal();
    tokio::pin!(shutdown);
    tracing::info!(%node, interval_seconds = config.interval_seconds, "collecting");
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut shutdown => break,
        }
        metrics.peak_reads.inc();
        tracing::trace!("peak read");
        let spooled = spooling.as_ref().is_none_or(|task| task.is_finished());
        if tokio::time::Instant::now() < next_sample || !spooled {
            // Not due, or the disk still syncs the last sample: the sample waits (in
            // order, its time kept) rather than queue up in memory.
            sampler.tick();
            continue;
        }
        if let Some(task) = spooling.take() {
            task.await.context("spooling a sample")?;
        }
        next_sample += interval;
        let now = chrono::Utc::now();
        let batch = match &mut pod_scope {
            Some(scope) => pod_rows(sampler.sample(now, Some(&scope.index()))),
            None => {
                let index = pod_store
                    .as_ref()
                    .map(|store| PodIndex::from_pods(store.state().iter().map(|p| &**p)));
                sampler.sample(now, index.as_ref())
            }
        };
        tracing::debug!(timestamp = now.to_rfc3339(), "sample taken");
        metrics.samples.inc();
        readiness.set_ready();
        let (spool, metrics, wake) = (spool.clone(), metrics.clone(), wake.clone());
        let span = tracing::Span::current();
        spooling = Some(tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            spool_sample(&spool, &metrics, batch, batch_size);
            wake.notify_one();
        }));
    }
    tracing::info!("stopping: flushing what the collector holds");
    if let Some(task) = spooling.take() {
        task.await.context("spooling a sample")?;
    }
    let _ = stop_writer.send(());
    writer_task.await.context("the writer task")?;
    tracing::info!(
        samples = metrics.samples.get(),
        rows_dropped = metrics.rows_dropped.get(),
        rows_dead_lettered = metrics.rows_dead_lettered_total(),
        spool_bytes = metrics.spool_bytes.get(),
        "stopped"
    );
    Ok(())
}
