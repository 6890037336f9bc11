//! Getting batches into the database without losing any: a batch goes straight to the
//! database when it is there; otherwise (or while older batches wait) it goes to the synced
//! on-disk spool, which is replayed oldest first once the database answers again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::ingest;
use crate::metrics::Metrics;
use crate::rows::Batch;
use crate::spool::Spool;

/// The longest a single write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two attempts while the database is away.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Writes batches, spooling what the database does not take.
pub struct Writer {
    pool: PgPool,
    spool: Spool,
    metrics: Arc<Metrics>,
    batch_size: usize,
    failures: u32,
    next_attempt: Option<Instant>,
}

impl Writer {
    /// A writer to `pool`, spooling to `spool`, in batches of at most `batch_size` rows.
    pub fn new(pool: PgPool, spool: Spool, metrics: Arc<Metrics>, batch_size: usize) -> Self {
        metrics.spool_bytes.set(spool.bytes());
        Self {
            pool,
            spool,
            metrics,
            batch_size,
            failures: 0,
            next_attempt: None,
        }
    }

    /// Takes a sample's rows: writes them, or spools them if the database is away or older
    /// batches wait; then replays the spool if the database may be back.
    #[tracing::instrument(skip_all, fields(rows = batch.len()))]
    pub async fn submit(&mut self, batch: Batch) {
        for part in batch.split(self.batch_size) {
            if self.spool.is_empty() && self.may_attempt() && self.write(&part).await {
                continue;
            }
            self.spool_batch(&part);
        }
        self.drain().await;
    }

    /// Replays spooled batches, oldest first, until the spool is empty or a write fails.
    #[tracing::instrument(name = "replay", skip_all, fields(spool_bytes = self.spool.bytes()))]
    pub async fn drain(&mut self) {
        while self.may_attempt() {
            let batch = match self.spool.oldest() {
                Ok(Some(batch)) => batch,
                Ok(None) => return,
                Err(error) => {
                    // An unreadable entry cannot be replayed; keeping it would block the rest.
                    tracing::error!(%error, "dropping an unreadable spooled batch");
                    if self.spool.remove_oldest().is_err() {
                        return;
                    }
                    continue;
                }
            };
            if !self.write(&batch).await {
                return;
            }
            if let Err(error) = self.spool.remove_oldest() {
                tracing::error!(%error, "removing a replayed batch from the spool failed");
                return;
            }
            self.metrics.spool_bytes.set(self.spool.bytes());
        }
    }

    /// On shutdown: one last attempt to write what waits, whatever the backoff says.
    /// Whatever the database does not take stays in the spool for the next start.
    #[tracing::instrument(skip_all)]
    pub async fn flush(&mut self) {
        self.next_attempt = None;
        self.drain().await;
    }

    fn may_attempt(&self) -> bool {
        self.next_attempt.is_none_or(|at| Instant::now() >= at)
    }

    /// Writes one batch; on failure, counts it and backs off.
    async fn write(&mut self, batch: &Batch) -> bool {
        let started = Instant::now();
        match tokio::time::timeout(WRITE_TIMEOUT, ingest::insert(&self.pool, batch)).await {
            Ok(Ok(inserted)) => {
                self.metrics
                    .batch_latency
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.written("host_overall_metrics", inserted.hosts);
                self.metrics
                    .written("host_process_metrics", inserted.processes);
                self.metrics.written("vm_process_metrics", inserted.vms);
                if self.failures > 0 {
                    tracing::info!(failures = self.failures, "the database is back");
                }
                self.failures = 0;
                self.next_attempt = None;
                true
            }
            outcome => {
                let error = match outcome {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {} s", WRITE_TIMEOUT.as_secs()),
                };
                self.failures = self.failures.saturating_add(1);
                let backoff = Duration::from_secs(1 << self.failures.min(5).saturating_sub(1))
                    .min(MAX_BACKOFF);
                self.next_attempt = Some(Instant::now() + backoff);
                self.metrics.write_failures.inc();
                tracing::warn!(%error, retry_in = ?backoff, "writing a batch failed; spooling");
                false
            }
        }
    }

    fn spool_batch(&mut self, batch: &Batch) {
        match self.spool.push(batch) {
            Ok(dropped) => {
                self.metrics.rows_spooled.inc_by(batch.len() as u64);
                if dropped.rows > 0 {
                    self.metrics.rows_dropped.inc_by(dropped.rows);
                    tracing::warn!(
                        batches = dropped.batches,
                        rows = dropped.rows,
                        "the spool is full: dropped its oldest batches"
                    );
                }
            }
            Err(error) => {
                self.metrics.rows_dropped.inc_by(batch.len() as u64);
                tracing::error!(%error, rows = batch.len(), "spooling failed: rows dropped");
            }
        }
        self.metrics.spool_bytes.set(self.spool.bytes());
    }
}
