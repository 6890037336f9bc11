//! The policy plan: the typed steps that take the database from what it has to what the spec
//! asks. Pure: [`plan`] compares a [`DesiredStorage`] with a [`DatabaseState`].

use std::fmt;

use super::desired::{DesiredAggregate, DesiredRefresh, DesiredStorage};
use super::introspect::{DatabaseState, JobKind};
use crate::crd::MetricTable;

/// One change to the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Turn a metric table into a hypertable.
    CreateHypertable {
        /// The table.
        table: MetricTable,
        /// Chunk interval in seconds.
        chunk_interval: i64,
    },
    /// Change the chunk interval (for chunks created from now on).
    SetChunkInterval {
        /// The table.
        table: MetricTable,
        /// Chunk interval in seconds.
        chunk_interval: i64,
    },
    /// Enable compression, or change its settings.
    ConfigureCompression {
        /// The table.
        table: MetricTable,
        /// Segment-by columns.
        segment_by: Vec<String>,
        /// Order-by entries.
        order_by: Vec<String>,
    },
    /// Add a compression, retention or refresh policy.
    AddPolicy {
        /// Which policy.
        kind: JobKind,
        /// Table or aggregate name.
        relation: String,
        /// `compress_after`, `drop_after` or a refresh's `start_offset`, in seconds.
        after: i64,
        /// A refresh's `end_offset` and schedule.
        refresh: Option<DesiredRefresh>,
    },
    /// Change an existing policy job in place (same job id).
    AlterPolicy {
        /// The job.
        job_id: i32,
        /// Which policy.
        kind: JobKind,
        /// Table or aggregate name.
        relation: String,
        /// The new `compress_after`, `drop_after` or `start_offset`, in seconds.
        after: i64,
        /// The value it replaces.
        before: Option<i64>,
        /// A refresh's new `end_offset` and schedule.
        refresh: Option<DesiredRefresh>,
    },
    /// Remove a policy job.
    RemovePolicy {
        /// The job.
        job_id: i32,
        /// Which policy.
        kind: JobKind,
        /// Table or aggregate name.
        relation: String,
    },
    /// Create a continuous aggregate (with no data; its refresh policy fills it).
    CreateAggregate {
        /// The view's name.
        name: String,
        /// The table it rolls up.
        source: MetricTable,
        /// Bucket width in seconds.
        bucket: i64,
    },
    /// Drop a managed continuous aggregate and its data.
    DropAggregate {
        /// The view's name.
        name: String,
    },
}

impl Step {
    /// Whether the step can delete data: a new or shorter retention, or dropping an
    /// aggregate. Whether it would delete any right now is measured before applying.
    pub fn can_drop_data(&self) -> bool {
        match self {
            Self::AddPolicy { kind, .. } => *kind == JobKind::Retention,
            Self::AlterPolicy {
                kind,
                after,
                before,
                ..
            } => *kind == JobKind::Retention && before.is_none_or(|b| *after < b),
            Self::DropAggregate { .. } => true,
            _ => false,
        }
    }
}

/// A duration in seconds, as a person reads it (`7d`, `12h`, `90s`).
pub fn human(seconds: i64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if seconds != 0 && seconds % size == 0 {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind_name = |kind: &JobKind| match kind {
            JobKind::Compression => "compression",
            JobKind::Retention => "retention",
            JobKind::Refresh => "refresh",
        };
        let refresh = |r: &Option<DesiredRefresh>| match r {
            Some(r) => format!(
                " to {}, every {}",
                r.end_offset
                    .map_or("now".into(), |e| format!("{} ago", human(e))),
                human(r.schedule)
            ),
            None => String::new(),
        };
        match self {
            Self::CreateHypertable {
                table,
                chunk_interval,
            } => write!(
                f,
                "create hypertable {} (chunks of {})",
                table.table_name(),
                human(*chunk_interval)
            ),
            Self::SetChunkInterval {
                table,
                chunk_interval,
            } => write!(
                f,
                "set chunk interval of {} to {}",
                table.table_name(),
                human(*chunk_interval)
            ),
            Self::ConfigureCompression {
                table,
                segment_by,
                order_by,
            } => write!(
                f,
                "configure compression of {} (segment by [{}], order by [{}])",
                table.table_name(),
                segment_by.join(", "),
                order_by.join(", ")
            ),
            Self::AddPolicy {
                kind,
                relation,
                after,
                refresh: r,
            } => write!(
                f,
                "add {} policy on {relation}: {}{}",
                kind_name(kind),
                human(*after),
                refresh(r)
            ),
            Self::AlterPolicy {
                job_id,
                kind,
                relation,
                after,
                before,
                refresh: r,
            } => write!(
                f,
                "alter {} policy (job {job_id}) on {relation}: {} -> {}{}",
                kind_name(kind),
                before.map_or("none".into(), human),
                human(*after),
                refresh(r)
            ),
            Self::RemovePolicy {
                job_id,
                kind,
                relation,
            } => {
                write!(
                    f,
                    "remove {} policy (job {job_id}) on {relation}",
                    kind_name(kind)
                )
            }
            Self::CreateAggregate {
                name,
                source,
                bucket,
            } => write!(
                f,
                "create continuous aggregate {name} of {} ({} buckets)",
                source.table_name(),
                human(*bucket)
            ),
            Self::DropAggregate { name } => write!(f, "drop continuous aggregate {name}"),
        }
    }
}

/// The steps that take `state` to `desired`, in the order they must run: hypertables and
/// compression settings before policies, aggregates before their policies, policies of a
/// dropped aggregate go with it. Empty when the database already matches.
pub fn plan(desired: &DesiredStorage, state: &DatabaseState) -> Vec<Step> {
    let mut steps = Vec::new();
    for table in &desired.tables {
        let name = table.table.table_name();
        match state.hypertables.get(&table.table) {
            None => steps.push(Step::CreateHypertable {
                table: table.table,
                chunk_interval: table.chunk_interval,
            }),
            Some(h) if h.chunk_interval != table.chunk_interval => {
                steps.push(Step::SetChunkInterval {
                    table: table.table,
                    chunk_interval: table.chunk_interval,
                });
            }
            Some(_) => {}
        }
        if let Some(compression) = &table.compression {
            let current = state
                .hypertables
                .get(&table.table)
                .and_then(|h| h.compression.as_ref());
            // An empty list leaves TimescaleDB's own default in place.
            let differs = |want: &[String], have: &[String]| {
                !want.is_empty() && normalise(want) != normalise(have)
            };
            let matches = current.is_some_and(|c| {
                !differs(&compression.segment_by, &c.segment_by)
                    && !differs(&compression.order_by, &c.order_by)
            });
            if !matches {
                steps.push(Step::ConfigureCompression {
                    table: table.table,
                    segment_by: compression.segment_by.clone(),
                    order_by: compression.order_by.clone(),
                });
            }
        }
        policy(
            &mut steps,
            state,
            JobKind::Compression,
            name,
            table.compression.as_ref().map(|c| c.after),
            None,
        );
        policy(
            &mut steps,
            state,
            JobKind::Retention,
            name,
            table.retention,
            None,
        );
    }
    // Tables left out of the spec keep their data; their policies go.
    for table in MetricTable::ALL {
        if !desired.tables.iter().any(|t| t.table == table) {
            for kind in [JobKind::Compression, JobKind::Retention] {
                policy(&mut steps, state, kind, table.table_name(), None, None);
            }
        }
    }
    for aggregate in &desired.aggregates {
        aggregate_steps(&mut steps, state, aggregate);
    }
    for name in state.aggregates.keys() {
        if !desired.aggregates.iter().any(|a| &a.name == name) {
            steps.push(Step::DropAggregate { name: name.clone() });
        }
    }
    steps
}

/// Steps that remove every policy job the operator manages (for `deletionPolicy:
/// RemovePolicies`), leaving tables, aggregates and data.
pub fn removal(state: &DatabaseState) -> Vec<Step> {
    state
        .jobs
        .iter()
        .map(|job| Step::RemovePolicy {
            job_id: job.id,
            kind: job.kind,
            relation: job.relation.clone(),
        })
        .collect()
}

fn aggregate_steps(steps: &mut Vec<Step>, state: &DatabaseState, aggregate: &DesiredAggregate) {
    if !state.aggregates.contains_key(&aggregate.name) {
        steps.push(Step::CreateAggregate {
            name: aggregate.name.clone(),
            source: aggregate.source,
            bucket: aggregate.bucket,
        });
    }
    let refresh = aggregate.refresh;
    policy(
        steps,
        state,
        JobKind::Refresh,
        &aggregate.name,
        Some(refresh.start_offset),
        Some(refresh),
    );
    policy(
        steps,
        state,
        JobKind::Retention,
        &aggregate.name,
        aggregate.retention,
        None,
    );
}

/// Adds, alters or removes one policy so that `relation` has `want` (or none).
fn policy(
    steps: &mut Vec<Step>,
    state: &DatabaseState,
    kind: JobKind,
    relation: &str,
    want: Option<i64>,
    refresh: Option<DesiredRefresh>,
) {
    let job = state.job(kind, relation);
    match (job, want) {
        (None, None) => {}
        (None, Some(after)) => steps.push(Step::AddPolicy {
            kind,
            relation: relation.into(),
            after,
            refresh,
        }),
        (Some(job), None) => steps.push(Step::RemovePolicy {
            job_id: job.id,
            kind,
            relation: relation.into(),
        }),
        (Some(job), Some(after)) => {
            let refresh_differs = refresh
                .is_some_and(|r| r.end_offset != job.end_offset || r.schedule != job.schedule);
            if job.after != Some(after) || refresh_differs {
                steps.push(Step::AlterPolicy {
                    job_id: job.id,
                    kind,
                    relation: relation.into(),
                    after,
                    before: job.after,
                    refresh,
                });
            }
        }
    }
}

/// Setting lists compare without `ASC` (the default) and without case differences.
fn normalise(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|entry| {
            let entry = entry.trim().to_lowercase();
            entry
                .strip_suffix(" asc")
                .map(str::to_owned)
                .unwrap_or(entry)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::database::desired::{DesiredCompression, DesiredTable};
    use crate::database::introspect::{AggregateState, CompressionSettings, HypertableState, Job};

    const DAY: i64 = 86_400;
    const HOUR: i64 = 3_600;

    fn desired(retention_days: Option<i64>) -> DesiredStorage {
        DesiredStorage {
            tables: vec![DesiredTable {
                table: MetricTable::HostProcessMetrics,
                chunk_interval: DAY,
                compression: Some(DesiredCompression {
                    after: 7 * DAY,
                    segment_by: vec!["host".into()],
                    order_by: vec!["timestamp DESC".into()],
                }),
                retention: retention_days.map(|d| d * DAY),
            }],
            aggregates: vec![DesiredAggregate {
                name: "hourly".into(),
                source: MetricTable::HostProcessMetrics,
                bucket: HOUR,
                refresh: DesiredRefresh {
                    start_offset: 3 * HOUR,
                    end_offset: Some(HOUR),
                    schedule: HOUR,
                },
                retention: None,
            }],
        }
    }

    /// The state a database has after applying `desired(Some(90))`.
    fn converged() -> DatabaseState {
        let job = |id, kind, relation: &str, after, end_offset, schedule| Job {
            id,
            kind,
            relation: relation.into(),
            schedule,
            after: Some(after),
            end_offset,
        };
        DatabaseState {
            timescaledb_version: Some("2.23.0".into()),
            columnstore_api: true,
            hypertables: BTreeMap::from([(
                MetricTable::HostProcessMetrics,
                HypertableState {
                    chunk_interval: DAY,
                    compression: Some(CompressionSettings {
                        segment_by: vec!["host".into()],
                        order_by: vec!["timestamp DESC".into()],
                    }),
                },
            )]),
            aggregates: BTreeMap::from([(
                "hourly".into(),
                AggregateState {
                    source: "host_process_metrics".into(),
                },
            )]),
            jobs: vec![
                job(
                    1000,
                    JobKind::Compression,
                    "host_process_metrics",
                    7 * DAY,
                    None,
                    12 * HOUR,
                ),
                job(
                    1001,
                    JobKind::Retention,
                    "host_process_metrics",
                    90 * DAY,
                    None,
                    DAY,
                ),
                job(1002, JobKind::Refresh, "hourly", 3 * HOUR, Some(HOUR), HOUR),
            ],
        }
    }

    #[test]
    fn a_fresh_database_gets_everything_in_order() {
        let steps = plan(&desired(Some(90)), &DatabaseState::default());
        let described: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            described,
            [
                "create hypertable host_process_metrics (chunks of 1d)",
                "configure compression of host_process_metrics (segment by [host], order by [timestamp DESC])",
                "add compression policy on host_process_metrics: 7d",
                "add retention policy on host_process_metrics: 90d",
                "create continuous aggregate hourly of host_process_metrics (1h buckets)",
                "add refresh policy on hourly: 3h to 1h ago, every 1h",
            ]
        );
    }

    #[test]
    fn a_converged_database_needs_nothing() {
        assert_eq!(plan(&desired(Some(90)), &converged()), []);
    }

    #[test]
    fn a_changed_interval_alters_the_existing_job() {
        let mut spec = desired(Some(90));
        spec.tables[0]
            .compression
            .as_mut()
            .expect("compression")
            .after = 3 * DAY;
        assert_eq!(
            plan(&spec, &converged()),
            [Step::AlterPolicy {
                job_id: 1000,
                kind: JobKind::Compression,
                relation: "host_process_metrics".into(),
                after: 3 * DAY,
                before: Some(7 * DAY),
                refresh: None,
            }]
        );
    }

    #[test]
    fn removing_retention_removes_its_job_and_is_safe() {
        let steps = plan(&desired(None), &converged());
        assert_eq!(
            steps,
            [Step::RemovePolicy {
                job_id: 1001,
                kind: JobKind::Retention,
                relation: "host_process_metrics".into(),
            }]
        );
        assert!(!steps[0].can_drop_data());
    }

    #[test]
    fn shorter_retention_and_dropped_aggregates_can_drop_data() {
        let mut spec = desired(Some(30));
        spec.aggregates.clear();
        let steps = plan(&spec, &converged());
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(steps.iter().all(Step::can_drop_data), "{steps:?}");
        let longer = plan(&desired(Some(180)), &converged());
        assert!(!longer[0].can_drop_data());
    }

    #[test]
    fn a_table_left_out_loses_its_policies_but_not_its_data() {
        let spec = DesiredStorage {
            tables: vec![],
            aggregates: desired(None).aggregates,
        };
        let steps = plan(&spec, &converged());
        assert_eq!(steps.len(), 2);
        assert!(steps.iter().all(|s| matches!(s, Step::RemovePolicy { .. })));
    }

    #[test]
    fn unset_order_by_keeps_timescaledbs_default() {
        let mut spec = desired(Some(90));
        spec.tables[0]
            .compression
            .as_mut()
            .expect("compression")
            .order_by
            .clear();
        assert_eq!(plan(&spec, &converged()), []);
    }

    #[test]
    fn removal_removes_every_managed_job() {
        assert_eq!(removal(&converged()).len(), 3);
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human(7 * DAY), "7d");
        assert_eq!(human(36 * HOUR), "36h");
        assert_eq!(human(90), "90s");
        assert_eq!(human(120), "2m");
    }
}
