//! The `collector` binary: sample the node every interval and write the rows to the
//! database, spooling them while it is away.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use metricsstack_collector::metrics::Metrics;
use metricsstack_collector::pods::{self, PodIndex};
use metricsstack_collector::rows::Batch;
use metricsstack_collector::sample::Sampler;
use metricsstack_collector::spool::Spool;
use metricsstack_collector::writer::Writer;
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
    match runtime.block_on(run(config, database)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "the collector stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: CollectorConfig, database: PgConnectOptions) -> anyhow::Result<()> {
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
    };
    let pool = session.connect_lazy(config.database.connect_options(database), &config.pool);
    let spool = Spool::open(&config.spool_dir, config.spool_max_bytes)
        .with_context(|| format!("opening the spool {}", config.spool_dir.display()))?;
    let mut writer = Writer::new(pool, spool, metrics.clone(), config.batch_size as usize);

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

    // Samples wait here for the writer; bounded, so memory stays bounded whatever happens.
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Batch>(64);
    let writer_task = tokio::spawn(
        async move {
            while let Some(batch) = receiver.recv().await {
                writer.submit(batch).await;
            }
            writer.flush().await;
        }
        .in_current_span(),
    );

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
        if tokio::time::Instant::now() < next_sample {
            sampler.tick();
            continue;
        }
        next_sample += interval;
        let index = pod_store
            .as_ref()
            .map(|store| PodIndex::from_pods(store.state().iter().map(|p| &**p)));
        let batch = sampler.sample(chrono::Utc::now(), index.as_ref());
        metrics.samples.inc();
        readiness.set_ready();
        let rows = batch.len();
        if sender.try_send(batch).is_err() {
            metrics.rows_dropped.inc_by(rows as u64);
            tracing::error!(rows, "the writer is too far behind: a sample was dropped");
        }
    }
    tracing::info!("stopping: flushing what the collector holds");
    drop(sender);
    writer_task.await.context("the writer task")?;
    tracing::info!(
        samples = metrics.samples.get(),
        rows_dropped = metrics.rows_dropped.get(),
        spool_bytes = metrics.spool_bytes.get(),
        "stopped"
    );
    Ok(())
}
