//! The policy plan: the typed steps that take the database from what it has to what the spec
//! asks. Pure: [`plan`] compares a [`DesiredStorage`] with a [`DatabaseState`].

use std::fmt;

use super::desired::{
    DesiredAggregate, DesiredRefresh, DesiredStorage, RETENTION_SCHEDULE, compression_schedule,
    rollup_columns,
};
use super::introspect::{AggregateState, DatabaseState, Job, JobKind};
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
        /// How often the job runs, in seconds.
        schedule: i64,
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
        /// How often the job runs from now on, in seconds.
        schedule: i64,
        /// How often it ran so far, in seconds.
        schedule_before: i64,
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
    /// Create a continuous aggregate (with no data: its refresh policy fills its window,
    /// and a backfill after the plan the buckets of older rows).
    CreateAggregate {
        /// The view's name.
        name: String,
        /// The table it rolls up.
        source: MetricTable,
        /// Bucket width in seconds.
        bucket: i64,
    },
    /// Drop a managed continuous aggregate and its data (also to recreate one whose
    /// definition was changed behind the operator's back).
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

    /// The table or aggregate the step works on.
    pub fn relation(&self) -> &str {
        match self {
            Self::CreateHypertable { table, .. }
            | Self::SetChunkInterval { table, .. }
            | Self::ConfigureCompression { table, .. } => table.table_name(),
            Self::AddPolicy { relation, .. }
            | Self::AlterPolicy { relation, .. }
            | Self::RemovePolicy { relation, .. } => relation,
            Self::CreateAggregate { name, .. } | Self::DropAggregate { name } => name,
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
                " to {}",
                r.end_offset
                    .map_or("now".into(), |e| format!("{} ago", human(e))),
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
                schedule,
                refresh: r,
            } => write!(
                f,
                "add {} policy on {relation}: {}{}, every {}",
                kind_name(kind),
                human(*after),
                refresh(r),
                human(*schedule)
            ),
            Self::AlterPolicy {
                job_id,
                kind,
                relation,
                after,
                before,
                schedule,
                schedule_before,
                refresh: r,
            } => {
                write!(
                    f,
                    "alter {} policy (job {job_id}) on {relation}: {} -> {}{}, every {}",
                    kind_name(kind),
                    before.map_or("none".into(), human),
                    human(*after),
                    refresh(r),
                    human(*schedule)
                )?;
                if schedule != schedule_before {
                    write!(f, " (was every {})", human(*schedule_before))?;
                }
                Ok(())
            }
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
            state.job(JobKind::Compression, name),
            JobKind::Compression,
            name,
            table
                .compression
                .as_ref()
                .map(|c| (c.after, compression_schedule(table.chunk_interval))),
            None,
        );
        policy(
            &mut steps,
            state.job(JobKind::Retention, name),
            JobKind::Retention,
            name,
            table.retention.map(|after| (after, RETENTION_SCHEDULE)),
            None,
        );
    }
    // Tables left out of the spec keep their data; their policies go.
    for table in MetricTable::ALL {
        if !desired.tables.iter().any(|t| t.table == table) {
            for kind in [JobKind::Compression, JobKind::Retention] {
                let name = table.table_name();
                policy(&mut steps, state.job(kind, name), kind, name, None, None);
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

/// Creates a missing aggregate, and recreates one whose definition (source, bucket width,
/// columns) differs from the spec's; its policies follow.
fn aggregate_steps(steps: &mut Vec<Step>, state: &DatabaseState, aggregate: &DesiredAggregate) {
    let name = &aggregate.name;
    let existing = state.aggregates.get(name);
    let redefined = existing.is_some_and(|a| !defined_as(a, aggregate));
    if existing.is_none() || redefined {
        if redefined {
            steps.push(Step::DropAggregate { name: name.clone() });
        }
        steps.push(Step::CreateAggregate {
            name: name.clone(),
            source: aggregate.source,
            bucket: aggregate.bucket,
        });
    }
    // A recreated aggregate's jobs went with the old view.
    let job = |kind| state.job(kind, name).filter(|_| !redefined);
    let refresh = aggregate.refresh;
    policy(
        steps,
        job(JobKind::Refresh),
        JobKind::Refresh,
        name,
        Some((refresh.start_offset, refresh.schedule)),
        Some(refresh),
    );
    policy(
        steps,
        job(JobKind::Retention),
        JobKind::Retention,
        name,
        aggregate.retention.map(|after| (after, RETENTION_SCHEDULE)),
        None,
    );
}

/// Whether the aggregate in the database is the one the spec describes: the same source,
/// bucket width (when its definition shows it) and columns.
fn defined_as(state: &AggregateState, aggregate: &DesiredAggregate) -> bool {
    state.source == aggregate.source.table_name()
        && state.bucket.is_none_or(|bucket| bucket == aggregate.bucket)
        && state.columns == rollup_columns(aggregate.source)
}

/// Adds, alters or removes one policy so that `relation` has `want` (or none): its `after`
/// value and schedule, in seconds. `job` is the policy's job in the database, if any.
fn policy(
    steps: &mut Vec<Step>,
    job: Option<&Job>,
    kind: JobKind,
    relation: &str,
    want: Option<(i64, i64)>,
    refresh: Option<DesiredRefresh>,
) {
    match (job, want) {
        (None, None) => {}
        (None, Some((after, schedule))) => steps.push(Step::AddPolicy {
            kind,
            relation: relation.into(),
            after,
            schedule,
            refresh,
        }),
        (Some(job), None) => steps.push(Step::RemovePolicy {
            job_id: job.id,
            kind,
            relation: relation.into(),
        }),
        (Some(job), Some((after, schedule))) => {
            let end_differs = refresh.is_some_and(|r| r.end_offset != job.end_offset);
            if job.after != Some(after) || job.schedule != schedule || end_differs {
                steps.push(Step::AlterPolicy {
                    job_id: job.id,
                    kind,
                    relation: relation.into(),
                    after,
                    before: job.after,
                    schedule,
                    schedule_before: job.schedule,
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
                    bucket: Some(HOUR),
                    columns: rollup_columns(MetricTable::HostProcessMetrics),
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
                "add compression policy on host_process_metrics: 7d, every 12h",
                "add retention policy on host_process_metrics: 90d, every 1d",
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
                schedule: 12 * HOUR,
                schedule_before: 12 * HOUR,
                refresh: None,
            }]
        );
    }

    #[test]
    fn a_schedule_changed_behind_the_operators_back_is_restored() {
        let mut state = converged();
        state.jobs[1].schedule = 2 * HOUR;
        state.jobs[2].schedule = 5 * HOUR;
        let steps = plan(&desired(Some(90)), &state);
        let described: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            described,
            [
                "alter retention policy (job 1001) on host_process_metrics: 90d -> 90d, every 1d \
                 (was every 2h)",
                "alter refresh policy (job 1002) on hourly: 3h -> 3h to 1h ago, every 1h \
                 (was every 5h)",
            ]
        );
        assert!(steps.iter().all(|s| !s.can_drop_data()), "{steps:?}");
    }

    #[test]
    fn a_removed_policy_is_added_again() {
        let mut state = converged();
        state.jobs.remove(1);
        assert_eq!(
            plan(&desired(Some(90)), &state),
            [Step::AddPolicy {
                kind: JobKind::Retention,
                relation: "host_process_metrics".into(),
                after: 90 * DAY,
                schedule: DAY,
                refresh: None,
            }]
        );
    }

    #[test]
    fn an_aggregate_redefined_behind_the_operators_back_is_recreated_with_its_policies() {
        for redefine in [
            (|a: &mut AggregateState| a.bucket = Some(DAY)) as fn(&mut AggregateState),
            |a| {
                a.columns.pop();
            },
        ] {
            let mut state = converged();
            redefine(state.aggregates.get_mut("hourly").expect("hourly"));
            let described: Vec<String> = plan(&desired(Some(90)), &state)
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(
                described,
                [
                    "drop continuous aggregate hourly",
                    "create continuous aggregate hourly of host_process_metrics (1h buckets)",
                    "add refresh policy on hourly: 3h to 1h ago, every 1h",
                ]
            );
        }
        // A definition that does not show its bucket is not taken for a change.
        let mut state = converged();
        state.aggregates.get_mut("hourly").expect("hourly").bucket = None;
        assert_eq!(plan(&desired(Some(90)), &state), []);
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
