//! Sampling the node: one `sysinfo::System` kept across samples, refreshing only what is
//! used (no CPU frequency, no threads lists). Between two samples, [`Sampler::tick`] reads
//! per-process CPU so that a short spike inside the interval shows as the peak.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, Utc};
use regex::RegexSet;
use sysinfo::{
    CpuRefreshKind, Disks, MemoryRefreshKind, Networks, Pid, Process, ProcessRefreshKind,
    ProcessesToUpdate, System, UpdateKind, Users,
};

use crate::cgroup;
use crate::config::ProcessConfig;
use crate::pods::PodIndex;
use crate::procfs;
use crate::rows::{Batch, HostRow, ProcessRow, VmRow};

const MIB: f64 = 1024.0 * 1024.0;

/// The node sampler.
pub struct Sampler {
    host: String,
    system: System,
    disks: Disks,
    networks: Networks,
    users: Users,
    selection: ProcessConfig,
    include: RegexSet,
    exclude: RegexSet,
    proc_root: PathBuf,
    /// CPU time per process (pid, start time), as of the last sample and the last tick.
    cpu: HashMap<(Pid, u64), CpuTrack>,
    /// When the last sample (or the priming read) was taken.
    last_sample: Instant,
    /// When CPU times were last read (by a sample or a tick).
    last_read: Instant,
    /// Processes whose CPU time grew at the last read: the ones a tick reads.
    busy: Vec<Pid>,
}

/// One process's CPU time readings, in milliseconds, and the highest use seen in the interval.
#[derive(Clone, Copy, Debug)]
struct CpuTrack {
    at_sample: u64,
    at_read: u64,
    peak: f32,
}

/// Failure to set up sampling.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// sysinfo cannot read this system.
    #[error("cannot read system information: {0}")]
    System(String),
    /// An include or exclude pattern does not compile (the configuration check prevents it).
    #[error("invalid process pattern: {0}")]
    Pattern(#[from] regex::Error),
}

/// What every process needs for the selection: CPU time and memory.
fn selection_refresh() -> ProcessRefreshKind {
    ProcessRefreshKind::nothing()
        .with_cpu()
        .with_memory()
        .without_tasks()
}

/// What only the selected processes need: I/O counters, owner and command line.
fn detail_refresh() -> ProcessRefreshKind {
    ProcessRefreshKind::nothing()
        .with_disk_usage()
        .with_user(UpdateKind::OnlyIfNotSet)
        .with_cmd(UpdateKind::OnlyIfNotSet)
        .without_tasks()
}

impl Sampler {
    /// A sampler for the node `host`, recording the processes `selection` asks for.
    pub fn new(
        host: &str,
        selection: &ProcessConfig,
        proc_root: PathBuf,
    ) -> Result<Self, SampleError> {
        let system_error = |e: sysinfo::Error| SampleError::System(e.to_string());
        let mut sampler = Self {
            host: host.to_owned(),
            system: System::new().map_err(system_error)?,
            disks: Disks::new_with_refreshed_list().map_err(system_error)?,
            networks: Networks::new_with_refreshed_list().map_err(system_error)?,
            users: Users::new_with_refreshed_list().map_err(system_error)?,
            selection: selection.clone(),
            include: RegexSet::new(&selection.include)?,
            exclude: RegexSet::new(&selection.exclude)?,
            proc_root,
            cpu: HashMap::new(),
            last_sample: Instant::now(),
            last_read: Instant::now(),
            busy: Vec::new(),
        };
        // Prime the counters that are reported as differences.
        sampler
            .system
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        sampler.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            selection_refresh(),
        );
        sampler.remember_cpu_times();
        Ok(sampler)
    }

    /// Reads the CPU use of the processes that were busy at the last read, keeping the
    /// highest per process. Idle processes are left to the next sample, which reads every
    /// process (their CPU time in between still counts in the interval's average), so that a
    /// tick costs what the busy processes cost, not what the process table does.
    pub fn tick(&mut self) {
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&self.busy),
            false,
            ProcessRefreshKind::nothing().with_cpu().without_tasks(),
        );
        self.read_cpu();
    }

    /// Updates each process's CPU readings and peak from its accumulated CPU time.
    fn read_cpu(&mut self) {
        let elapsed_ms = (self.last_read.elapsed().as_millis() as u64).max(1);
        self.last_read = Instant::now();
        self.busy.clear();
        for (pid, process) in self.system.processes() {
            let time = process.accumulated_cpu_time();
            let track = self
                .cpu
                .entry((*pid, process.start_time()))
                .or_insert(CpuTrack {
                    at_sample: time,
                    at_read: time,
                    peak: 0.0,
                });
            let used = time.saturating_sub(track.at_read);
            if used > 0 {
                self.busy.push(*pid);
            }
            track.peak = track.peak.max(percent(used, elapsed_ms));
            track.at_read = time;
        }
    }

    /// Takes a sample at `now`: the node's overall metrics and the selected processes, with
    /// pod attribution from `pods` when given.
    pub fn sample(&mut self, now: DateTime<Utc>, pods: Option<&PodIndex>) -> Batch {
        let elapsed_ms = (self.last_sample.elapsed().as_millis() as u64).max(1);
        self.last_sample = Instant::now();
        self.system
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        self.system
            .refresh_processes_specifics(ProcessesToUpdate::All, true, selection_refresh());
        self.disks.refresh(true);
        self.networks.refresh(true);
        self.read_cpu();
        // Average over the interval, and the peak of the readings inside it.
        let usage: HashMap<Pid, (f32, f32)> = self
            .system
            .processes()
            .iter()
            .filter_map(|(pid, p)| {
                let track = self.cpu.get(&(*pid, p.start_time()))?;
                let average = percent(
                    p.accumulated_cpu_time().saturating_sub(track.at_sample),
                    elapsed_ms,
                );
                Some((*pid, (average, track.peak.max(average))))
            })
            .collect();

        let host = self.host_row(now);
        let chosen: Vec<Pid> = self.selected(&usage).iter().map(|p| p.pid()).collect();
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&chosen),
            false,
            detail_refresh(),
        );
        let mut processes = Vec::new();
        let mut vms = Vec::new();
        for process in chosen.iter().filter_map(|pid| self.system.process(*pid)) {
            let (average, peak) = usage.get(&process.pid()).copied().unwrap_or_default();
            let row = self.process_row(now, process, average, peak);
            if let Some(vm) = pods.and_then(|pods| self.vm_row(&row, pods)) {
                vms.push(vm);
            }
            processes.push(row);
        }
        self.remember_cpu_times();
        Batch {
            hosts: vec![host],
            processes,
            vms,
        }
    }

    /// Starts a new interval: forgets processes that ended, and the peaks.
    fn remember_cpu_times(&mut self) {
        self.cpu = self
            .system
            .processes()
            .iter()
            .map(|(pid, p)| {
                let time = p.accumulated_cpu_time();
                let track = CpuTrack {
                    at_sample: time,
                    at_read: time,
                    peak: 0.0,
                };
                ((*pid, p.start_time()), track)
            })
            .collect();
    }

    /// The top N by CPU, plus the top N by memory, plus the included, minus the excluded;
    /// kernel threads are left out.
    fn selected(&self, usage: &HashMap<Pid, (f32, f32)>) -> Vec<&Process> {
        let cpu_of = |p: &Process| usage.get(&p.pid()).map_or(0.0, |u| u.0);
        let name_of = |p: &Process| p.name().to_string_lossy().into_owned();
        let candidates: Vec<&Process> = self
            .system
            .processes()
            .values()
            .filter(|p| p.thread_kind().is_none())
            .filter(|p| !self.exclude.is_match(&name_of(p)))
            .collect();
        let mut by_cpu = candidates.clone();
        by_cpu.sort_by(|a, b| cpu_of(b).total_cmp(&cpu_of(a)));
        let mut by_memory = candidates.clone();
        by_memory.sort_by_key(|p| std::cmp::Reverse(p.memory()));
        let mut chosen: Vec<&Process> = by_cpu
            .into_iter()
            .take(self.selection.top_by_cpu as usize)
            .chain(
                by_memory
                    .into_iter()
                    .take(self.selection.top_by_memory as usize),
            )
            .chain(
                candidates
                    .iter()
                    .copied()
                    .filter(|p| self.include.is_match(&name_of(p))),
            )
            .collect();
        chosen.sort_by_key(|p| p.pid());
        chosen.dedup_by_key(|p| p.pid());
        chosen
    }

    fn host_row(&self, now: DateTime<Utc>) -> HostRow {
        let load = System::load_average().unwrap_or_default();
        let (disk_total, disk_available, disk_read, disk_written) =
            self.disks
                .iter()
                .fold((0u64, 0u64, 0u64, 0u64), |(t, a, r, w), d| {
                    let usage = d.usage();
                    (
                        t + d.total_space(),
                        a + d.available_space(),
                        r + usage.read_bytes,
                        w + usage.written_bytes,
                    )
                });
        let (rx, tx) = self
            .networks
            .iter()
            .filter(|(name, _)| *name != "lo")
            .fold((0u64, 0u64), |(rx, tx), (_, data)| {
                (rx + data.received(), tx + data.transmitted())
            });
        let used = self.system.used_memory();
        HostRow {
            timestamp: now,
            host: self.host.clone(),
            cpu_usage_percent: self.system.global_cpu_usage(),
            cpu_per_core_percent: self.system.cpus().iter().map(|c| c.usage()).collect(),
            load_1: load.one,
            load_5: load.five,
            load_15: load.fifteen,
            memory_total_bytes: signed(self.system.total_memory()),
            memory_used_bytes: signed(used),
            memory_usage_mb: used as f64 / MIB,
            swap_total_bytes: signed(self.system.total_swap()),
            swap_used_bytes: signed(self.system.used_swap()),
            disk_total_bytes: signed(disk_total),
            disk_used_bytes: signed(disk_total.saturating_sub(disk_available)),
            disk_read_bytes: signed(disk_read),
            disk_write_bytes: signed(disk_written),
            network_rx_bytes: signed(rx),
            network_tx_bytes: signed(tx),
            uptime_seconds: signed(System::uptime().unwrap_or(0)),
            process_count: i32::try_from(self.system.processes().len()).unwrap_or(i32::MAX),
        }
    }

    fn process_row(&self, now: DateTime<Utc>, p: &Process, average: f32, peak: f32) -> ProcessRow {
        let max = self.selection.command_line_max_length as usize;
        let command_line = (!p.cmd().is_empty()).then(|| {
            let joined = p
                .cmd()
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ");
            joined.chars().take(max).collect()
        });
        let username = p.user_id().map(|uid| {
            self.users
                .get_user_by_id(uid)
                .map_or_else(|| uid.to_string(), |u| u.name().to_owned())
        });
        let disk = p.disk_usage();
        ProcessRow {
            timestamp: now,
            host: self.host.clone(),
            pid: i32::try_from(p.pid().as_u32()).unwrap_or(i32::MAX),
            start_time: DateTime::from_timestamp(signed(p.start_time()), 0).unwrap_or_default(),
            parent_pid: p.parent().and_then(|pid| i32::try_from(pid.as_u32()).ok()),
            process_name: p.name().to_string_lossy().into_owned(),
            command_line,
            username,
            state: p.status().to_string(),
            cpu_usage_percent: average,
            cpu_peak_percent: peak,
            memory_usage_mb: p.memory() as f64 / MIB,
            virtual_memory_mb: p.virtual_memory() as f64 / MIB,
            disk_read_bytes: signed(disk.read_bytes),
            disk_write_bytes: signed(disk.written_bytes),
            threads: self.threads(p.pid()),
        }
    }

    /// The process's thread count, from `/proc/<pid>/stat` (sysinfo would list every task).
    fn threads(&self, pid: Pid) -> Option<i32> {
        let path = self.proc_root.join(pid.to_string()).join("stat");
        let stat = procfs::parse_stat(&std::fs::read(path).ok()?)?;
        i32::try_from(stat.threads).ok()
    }

    fn vm_row(&self, row: &ProcessRow, pods: &PodIndex) -> Option<VmRow> {
        let path = self.proc_root.join(row.pid.to_string()).join("cgroup");
        let container = cgroup::parse(&std::fs::read_to_string(path).ok()?)?;
        let known = pods.container(&container.container_id);
        let pod_uid = container
            .pod_uid
            .or_else(|| known.map(|k| k.pod_uid.clone()))?;
        let cpu_limit_percent = known
            .and_then(|k| k.cpu_limit_millicores)
            .filter(|m| *m > 0)
            .map(|m| row.cpu_usage_percent * 1000.0 / m as f32);
        Some(VmRow {
            timestamp: row.timestamp,
            host: row.host.clone(),
            pid: row.pid,
            start_time: row.start_time,
            process_name: row.process_name.clone(),
            command_line: row.command_line.clone(),
            pod_namespace: known.map(|k| k.namespace.clone()),
            pod_name: known.map(|k| k.pod_name.clone()),
            pod_uid,
            container_id: container.container_id,
            container_name: known.map(|k| k.container_name.clone()),
            cpu_usage_percent: row.cpu_usage_percent,
            cpu_peak_percent: row.cpu_peak_percent,
            cpu_limit_percent,
            memory_usage_mb: row.memory_usage_mb,
            disk_read_bytes: row.disk_read_bytes,
            disk_write_bytes: row.disk_write_bytes,
        })
    }
}

/// CPU milliseconds used in `elapsed_ms`, as percent of one core.
fn percent(cpu_ms: u64, elapsed_ms: u64) -> f32 {
    (cpu_ms as f64 / elapsed_ms as f64 * 100.0) as f32
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
