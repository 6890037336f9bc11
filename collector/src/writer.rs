//! Getting batches into the database without losing any. Every sample is first synced to
//! the on-disk spool ([`spool_sample`], on a blocking thread: a SIGKILL then loses at most the
//! sample being written); the writer sends the spool to the database oldest first and
//! removes what the database took.
//!
//! A failed write is transient (the database is away, busy or overloaded: the batch waits
//! and the writer backs off) or permanent (a table refuses the rows themselves: a
//! constraint, a type, a column the table no longer has). A refused batch is tried
//! [`REFUSED_ATTEMPTS`] times; then each table's rows are written alone, and the rows of a
//! table that refuses them still are set aside as a dead letter, so that the rest flows on.
//!
//! Each write is a transaction of its own, begun as the stack's [`Session`] says: behind
//! PgBouncer in transaction mode that keeps the statement's round trips on one server
//! connection, and the rows count as written only once committed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use metricsstack_common::database::Session;
use sqlx::PgPool;
use tokio::sync::{Notify, oneshot};

use crate::ingest::{self, Failure, Inserted};
use crate::metrics::Metrics;
use crate::rows::{Batch, Table};
use crate::spool::{Dropped, EntryId, Spool};

/// The longest a single write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two attempts while the database is away.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a batch the database refuses (a permanent error) is tried before its refused
/// rows are set aside.
pub const REFUSED_ATTEMPTS: u32 = 3;

/// Syncs a sample's rows to the spool in batches of at most `batch_size` rows, and counts
/// them. Once it returns, the rows survive a SIGKILL. Blocking: call it off the runtime.
pub fn spool_sample(spool: &Mutex<Spool>, metrics: &Metrics, batch: Batch, batch_size: usize) {
    let mut spool = spool.lock().unwrap_or_else(PoisonError::into_inner);
    for part in batch.split(batch_size) {
        match spool.push(&part) {
            Ok((_, dropped)) => {
                metrics.rows_spooled.inc_by(part.len() as u64);
                report_dropped(metrics, dropped);
            }
            Err(error) => {
                metrics.rows_dropped.inc_by(part.len() as u64);
                tracing::error!(%error, rows = part.len(), "spooling failed: rows dropped");
            }
        }
    }
    metrics.spool_bytes.set(spool.bytes());
}

fn report_dropped(metrics: &Metrics, dropped: Dropped) {
    if dropped.rows > 0 {
        metrics.rows_dropped.inc_by(dropped.rows);
        tracing::warn!(
            batches = dropped.batches,
            rows = dropped.rows,
            "the spool is full: dropped its oldest batches"
        );
    }
    if dropped.dead_letters > 0 {
        tracing::warn!(
            dead_letters = dropped.dead_letters,
            "the spool is full: dropped its oldest dead letters"
        );
    }
}

/// Why a write failed.
struct WriteFailure {
    failure: Failure,
    sqlstate: Option<String>,
    message: String,
}

/// Runs a write with [`WRITE_TIMEOUT`]; no answer in time is a transient failure.
async fn timed<T>(write: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, WriteFailure> {
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(WriteFailure {
            failure: ingest::classify(&error),
            sqlstate: ingest::sqlstate(&error),
            message: error.to_string(),
        }),
        Err(_) => Err(WriteFailure {
            failure: Failure::Transient,
            sqlstate: None,
            message: format!("no answer within {} s", WRITE_TIMEOUT.as_secs()),
        }),
    }
}

/// What became of an attempt to send the oldest batch.
enum Delivery {
    /// The database has it (or its refused rows are set aside): remove it from the spool.
    Done,
    /// Try it again now.
    Again,
    /// Try it again after the backoff.
    Later,
}

/// The batch at the head of the spool that the database refuses, and what was done.
struct Refused {
    sequence: u64,
    attempts: u32,
    set_aside: Vec<Table>,
}

/// Sends the spool to the database, oldest batch first.
pub struct Writer {
    pool: PgPool,
    session: Session,
    spool: Arc<Mutex<Spool>>,
    metrics: Arc<Metrics>,
    failures: u32,
    next_attempt: Option<Instant>,
    refused: Option<Refused>,
}

impl Writer {
    /// A writer from `spool` to `pool`, whose connections are set up as `session`.
    pub fn new(
        pool: PgPool,
        session: Session,
        spool: Arc<Mutex<Spool>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            pool,
            session,
            spool,
            metrics,
            failures: 0,
            next_attempt: None,
            refused: None,
        }
    }

    /// Sends what the spool holds whenever `wake` is notified (a batch was spooled) or the
    /// backoff ends, until `stop`; then makes one last attempt ([`Writer::flush`]).
    pub async fn run(mut self, wake: Arc<Notify>, mut stop: oneshot::Receiver<()>) {
        loop {
            self.drain().await;
            let retry = self.next_attempt.map(tokio::time::Instant::from_std);
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)),
                    if retry.is_some() => {}
                _ = &mut stop => break,
            }
        }
        self.flush().await;
    }

    /// Runs `f` on the spool on a blocking thread.
    async fn with_spool<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Spool) -> T + Send + 'static,
    ) -> T {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || {
            f(&mut spool.lock().unwrap_or_else(PoisonError::into_inner))
        })
        .await
        .expect("the spool task does not panic")
    }

    /// Sends spooled batches, oldest first, until the spool is empty or a write fails.
    #[tracing::instrument(name = "replay", skip_all)]
    pub async fn drain(&mut self) {
        while self.may_attempt() {
            let Some((id, batch)) = self.with_spool(|spool| spool.oldest()).await else {
                return;
            };
            let delivery = match batch {
                Ok(batch) => self.deliver(id, &batch).await,
                Err(error) => {
                    // An unreadable entry cannot be sent; keeping it would block the rest.
                    self.metrics.spool_unreadable_batches.inc();
                    self.metrics.rows_dropped.inc_by(id.rows);
                    tracing::error!(%error, rows = id.rows, "dropping an unreadable spooled batch");
                    Delivery::Done
                }
            };
            match delivery {
                Delivery::Done => {}
                Delivery::Again => continue,
                Delivery::Later => return,
            }
            match self
                .with_spool(move |spool| spool.remove(id).map(|()| spool.bytes()))
                .await
            {
                Ok(bytes) => {
                    self.metrics.spool_bytes.set(bytes);
                }
                Err(error) => {
                    tracing::error!(%error, "removing a written batch from the spool failed");
                    return;
                }
            }
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

    /// Writes the batch `id`; a refused one, once tried [`REFUSED_ATTEMPTS`] times, table by
    /// table.
    async fn deliver(&mut self, id: EntryId, batch: &Batch) -> Delivery {
        if self.refused.as_ref().is_some_and(|refused| {
            refused.sequence == id.sequence && refused.attempts >= REFUSED_ATTEMPTS
        }) {
            return self.set_aside(id, batch).await;
        }
        let started = Instant::now();
        match timed(self.insert(batch)).await {
            Ok(inserted) => {
                self.metrics
                    .batch_latency
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.written(Table::Hosts.name(), inserted.hosts);
                self.metrics
                    .written(Table::Processes.name(), inserted.processes);
                self.metrics.written(Table::Vms.name(), inserted.vms);
                self.succeeded();
                self.refused = None;
                Delivery::Done
            }
            Err(failure) if failure.failure == Failure::Transient => {
                self.back_off(&failure);
                Delivery::Later
            }
            Err(failure) => {
                self.metrics.write_failures.inc();
                let refused = match self.refused.take() {
                    Some(refused) if refused.sequence == id.sequence => refused,
                    _ => Refused {
                        sequence: id.sequence,
                        attempts: 0,
                        set_aside: Vec::new(),
                    },
                };
                let refused = self.refused.insert(Refused {
                    attempts: refused.attempts + 1,
                    ..refused
                });
                tracing::debug!(
                    error = failure.message,
                    sqlstate = failure.sqlstate,
                    attempts = refused.attempts,
                    "the database refuses a batch"
                );
                Delivery::Again
            }
        }
    }

    /// Writes a batch in a transaction of its own.
    async fn insert(&self, batch: &Batch) -> Result<Inserted, sqlx::Error> {
        let mut transaction = self.session.begin(&self.pool).await?;
        let inserted = ingest::insert(&mut *transaction, batch).await?;
        transaction.commit().await?;
        Ok(inserted)
    }

    /// Writes the rows of one table in a transaction of its own.
    async fn insert_into(&self, table: Table, part: &Batch) -> Result<i64, sqlx::Error> {
        let mut transaction = self.session.begin(&self.pool).await?;
        let inserted = ingest::insert_into(&mut *transaction, table, part).await?;
        transaction.commit().await?;
        Ok(inserted)
    }

    /// Writes each table's rows of a refused batch alone, and sets aside the rows of each
    /// table that still refuses them.
    async fn set_aside(&mut self, id: EntryId, batch: &Batch) -> Delivery {
        for table in Table::ALL {
            let part = batch.rows_of(table);
            let done = self
                .refused
                .as_ref()
                .is_some_and(|refused| refused.set_aside.contains(&table));
            if part.is_empty() || done {
                continue;
            }
            match timed(self.insert_into(table, &part)).await {
                Ok(inserted) => self.metrics.written(table.name(), inserted),
                Err(failure) if failure.failure == Failure::Transient => {
                    self.back_off(&failure);
                    return Delivery::Later;
                }
                Err(failure) => {
                    self.dead_letter(id, table, part, &failure).await;
                    if let Some(refused) = &mut self.refused {
                        refused.set_aside.push(table);
                    }
                }
            }
        }
        self.succeeded();
        self.refused = None;
        Delivery::Done
    }

    /// Sets aside the rows `table` refuses, logs it once and counts it.
    async fn dead_letter(
        &mut self,
        id: EntryId,
        table: Table,
        part: Batch,
        failure: &WriteFailure,
    ) {
        let rows = part.len() as u64;
        let name = table.name();
        match self
            .with_spool(move |spool| spool.dead_letter(id, name, &part))
            .await
        {
            Ok(dropped) => {
                self.metrics.dead_lettered(table, rows);
                tracing::error!(
                    table = name,
                    sqlstate = failure.sqlstate,
                    error = failure.message,
                    rows,
                    attempts = REFUSED_ATTEMPTS,
                    "the table refuses these rows: they are set aside in the spool's dead-letter directory"
                );
                report_dropped(&self.metrics, dropped);
            }
            Err(error) => {
                self.metrics.rows_dropped.inc_by(rows);
                tracing::error!(
                    table = name,
                    sqlstate = failure.sqlstate,
                    error = failure.message,
                    rows,
                    io_error = %error,
                    "the table refuses these rows and setting them aside failed: rows dropped"
                );
            }
        }
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "the database is back");
        }
        self.failures = 0;
        self.next_attempt = None;
    }

    /// Counts a transient failure and backs off.
    fn back_off(&mut self, failure: &WriteFailure) {
        self.failures = self.failures.saturating_add(1);
        let backoff =
            Duration::from_secs(1 << self.failures.min(5).saturating_sub(1)).min(MAX_BACKOFF);
        self.next_attempt = Some(Instant::now() + backoff);
        self.metrics.write_failures.inc();
        tracing::warn!(
            error = failure.message,
            sqlstate = failure.sqlstate,
            retry_in = ?backoff,
            "writing a batch failed; it waits in the spool"
        );
    }
}
