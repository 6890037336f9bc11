//! Sampling the node. The host's metrics come from one `sysinfo::System` kept across
//! samples, refreshing only what is used (CPU usage, memory; no CPU frequency). Processes are
//! read from `/proc` directly (see [`crate::procfs`]): one `stat` file per process per sample,
//! enough to rank them all; the command line, owner, cgroup and I/O counters are read only
//! for the selected ones, and the first three once per process. Between two samples,
//! [`Sampler::tick`] reads the CPU time of the processes that were busy, so that a short
//! spike inside the interval shows as the peak.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use regex::RegexSet;
use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks, ProcessStatus, System,
    Users,
};

use crate::cgroup::{self, ContainerRef};
use crate::config::ProcessConfig;
use crate::pods::PodIndex;
use crate::procfs::{Io, ProcFs, Stat, Units};
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
    proc: ProcFs,
    units: Units,
    /// Boot time, seconds since the epoch: process start times are relative to it.
    boot_time: u64,
    /// The processes the last scan found, by pid (kernel threads left out).
    processes: HashMap<u32, Tracked>,
    /// Scans so far: a process the latest scan did not see has ended.
    scans: u64,
    /// When the last sample (or the priming scan) was taken.
    last_sample: Instant,
    /// Processes whose CPU time grew at their last read: the ones a tick reads.
    busy: Vec<u32>,
}

/// One process, as the sampler follows it between samples.
#[derive(Debug)]
struct Tracked {
    /// Start time in clock ticks since boot: with the pid, it identifies the process.
    start_ticks: u64,
    /// CPU time in clock ticks at the last sample and at the last read (by a sample or a
    /// tick), and when that read was: a tick reads only the busy processes.
    cpu_at_sample: u64,
    cpu_at_read: u64,
    read_at: Instant,
    /// The highest CPU use seen in the interval, percent of one core.
    peak: f32,
    /// The last scan that saw the process.
    scan: u64,
    /// What was read once the process was first selected.
    details: Option<Details>,
}

impl Tracked {
    /// A process first seen `now`, as `stat` shows it.
    fn new(stat: &Stat, now: Instant) -> Self {
        Self {
            start_ticks: stat.start_ticks,
            cpu_at_sample: stat.cpu_ticks,
            cpu_at_read: stat.cpu_ticks,
            read_at: now,
            peak: 0.0,
            scan: 0,
            details: None,
        }
    }
}

/// What the sampler reads of a process only once it is selected, and keeps while the process
/// lives: all but the I/O counters are read once.
#[derive(Debug)]
struct Details {
    /// The process name when this was read: a changed name means an `exec`, after which the
    /// command line, owner and cgroup may differ.
    name: String,
    command_line: Option<String>,
    username: Option<String>,
    /// Read the first time the pod index asks for it.
    container: OnceCell<Option<ContainerRef>>,
    /// The I/O counters at the last sample that selected the process.
    io: Io,
}

/// A process of the latest scan, with its CPU use over the interval.
struct Scanned {
    pid: u32,
    stat: Stat,
    /// CPU used over the interval, percent of one core.
    average: f32,
    /// The highest CPU use seen inside the interval, percent of one core.
    peak: f32,
}

/// Failure to set up sampling.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// sysinfo cannot read this system.
    #[error("cannot read system information: {0}")]
    System(String),
    /// The process table, or this process's auxiliary vector, cannot be read.
    #[error("cannot read {path}: {source}")]
    Proc {
        /// What was read.
        path: String,
        /// The operating system's answer.
        source: std::io::Error,
    },
    /// An include or exclude pattern does not compile (the configuration check prevents it).
    #[error("invalid process pattern: {0}")]
    Pattern(#[from] regex::Error),
}

/// What the host row needs of the disks: space and I/O counters (not their kind, which is
/// read again at every refresh for the disks whose kind is unknown, as overlays' are).
fn disk_refresh() -> DiskRefreshKind {
    DiskRefreshKind::nothing().with_storage().with_io_usage()
}

impl Sampler {
    /// A sampler for the node `host`, recording the processes `selection` asks for, from the
    /// `/proc` mounted at `proc_root`.
    pub fn new(
        host: &str,
        selection: &ProcessConfig,
        proc_root: PathBuf,
    ) -> Result<Self, SampleError> {
        let system_error = |e: sysinfo::Error| SampleError::System(e.to_string());
        let proc_error = |path: &Path| {
            let path = path.display().to_string();
            move |source| SampleError::Proc { path, source }
        };
        let mut sampler = Self {
            host: host.to_owned(),
            system: System::new().map_err(system_error)?,
            disks: Disks::new_with_refreshed_list_specifics(disk_refresh())
                .map_err(system_error)?,
            networks: Networks::new_with_refreshed_list().map_err(system_error)?,
            users: Users::new_with_refreshed_list().map_err(system_error)?,
            selection: selection.clone(),
            include: RegexSet::new(&selection.include)?,
            exclude: RegexSet::new(&selection.exclude)?,
            proc: ProcFs::new(proc_root.clone()),
            units: Units::of_this_kernel().map_err(proc_error(Path::new("/proc/self/auxv")))?,
            boot_time: System::boot_time().map_err(system_error)?,
            processes: HashMap::new(),
            scans: 0,
            last_sample: Instant::now(),
            busy: Vec::new(),
        };
        // Prime the counters that are reported as differences.
        sampler
            .system
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        sampler.scan().map_err(proc_error(&proc_root))?;
        Ok(sampler)
    }

    /// Reads the CPU use of the processes that were busy at the last read, keeping the
    /// highest per process. Idle processes are left to the next sample, which reads every
    /// process (their CPU time in between still counts in the interval's average), so that a
    /// tick costs what the busy processes cost, not what the process table does.
    pub fn tick(&mut self) {
        let busy = std::mem::take(&mut self.busy);
        for pid in busy {
            let Some(stat) = self.proc.stat(pid) else {
                continue;
            };
            let Some(tracked) = self
                .processes
                .get_mut(&pid)
                .filter(|t| t.start_ticks == stat.start_ticks)
            else {
                continue;
            };
            let now = Instant::now();
            let used = stat.cpu_ticks.saturating_sub(tracked.cpu_at_read);
            if used > 0 {
                self.busy.push(pid);
            }
            let elapsed = seconds(now - tracked.read_at);
            tracked.peak = tracked.peak.max(percent(used, elapsed, self.units));
            tracked.cpu_at_read = stat.cpu_ticks;
            tracked.read_at = now;
        }
    }

    /// Reads every process's `stat`; returns the processes (kernel threads left out) with
    /// their CPU use since the last sample, and how many processes `/proc` listed. Starts the
    /// next interval: forgets processes that ended, and the peaks.
    fn scan(&mut self) -> std::io::Result<(Vec<Scanned>, usize)> {
        let pids = self.proc.pids()?;
        let now = Instant::now();
        let since_sample = seconds(now - self.last_sample);
        self.last_sample = now;
        self.scans += 1;
        self.busy.clear();
        let mut listed = 0;
        let mut scanned = Vec::with_capacity(self.processes.len());
        for pid in pids {
            let Some(stat) = self.proc.stat(pid) else {
                continue; // ended since the listing
            };
            listed += 1;
            if stat.kernel_thread {
                continue;
            }
            let tracked = self
                .processes
                .entry(pid)
                .or_insert_with(|| Tracked::new(&stat, now));
            if tracked.start_ticks != stat.start_ticks {
                // The pid was reused by a new process.
                *tracked = Tracked::new(&stat, now);
            }
            let since_read_ticks = stat.cpu_ticks.saturating_sub(tracked.cpu_at_read);
            if since_read_ticks > 0 {
                self.busy.push(pid);
            }
            let average = percent(
                stat.cpu_ticks.saturating_sub(tracked.cpu_at_sample),
                since_sample,
                self.units,
            );
            let since_read = seconds(now - tracked.read_at);
            let peak = tracked
                .peak
                .max(percent(since_read_ticks, since_read, self.units))
                .max(average);
            tracked.cpu_at_sample = stat.cpu_ticks;
            tracked.cpu_at_read = stat.cpu_ticks;
            tracked.read_at = now;
            tracked.peak = 0.0;
            tracked.scan = self.scans;
            scanned.push(Scanned {
                pid,
                stat,
                average,
                peak,
            });
        }
        let scans = self.scans;
        self.processes.retain(|_, tracked| tracked.scan == scans);
        Ok((scanned, listed))
    }

    /// Takes a sample at `now`: the node's overall metrics and the selected processes, with
    /// pod attribution from `pods` when given.
    pub fn sample(&mut self, now: DateTime<Utc>, pods: Option<&PodIndex>) -> Batch {
        self.system
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        self.disks.refresh_specifics(true, disk_refresh());
        self.networks.refresh(true);
        let (scanned, listed) = self.scan().unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot list the processes: this sample has none");
            (Vec::new(), 0)
        });
        let host = self.host_row(now, listed);
        let mut processes = Vec::new();
        let mut vms = Vec::new();
        for process in self.selected(&scanned) {
            let row = self.process_row(now, process);
            if let Some(vm) = pods.and_then(|pods| self.vm_row(&row, pods)) {
                vms.push(vm);
            }
            processes.push(row);
        }
        Batch {
            hosts: vec![host],
            processes,
            vms,
        }
    }

    /// The top N by CPU, plus the top N by memory, plus the included, minus the excluded.
    fn selected<'a>(&self, scanned: &'a [Scanned]) -> Vec<&'a Scanned> {
        let candidates: Vec<&Scanned> = scanned
            .iter()
            .filter(|p| !self.exclude.is_match(&p.stat.name))
            .collect();
        let mut by_cpu = candidates.clone();
        by_cpu.sort_by(|a, b| b.average.total_cmp(&a.average));
        let mut by_memory = candidates.clone();
        by_memory.sort_by_key(|p| std::cmp::Reverse(p.stat.resident_pages));
        let mut chosen: Vec<&Scanned> = by_cpu
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
                    .filter(|p| self.include.is_match(&p.stat.name)),
            )
            .collect();
        chosen.sort_by_key(|p| p.pid);
        chosen.dedup_by_key(|p| p.pid);
        chosen
    }

    fn host_row(&self, now: DateTime<Utc>, process_count: usize) -> HostRow {
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
            process_count: i32::try_from(process_count).unwrap_or(i32::MAX),
        }
    }

    /// The row of a selected process: reads its I/O counters, and what else it needs the
    /// first time the process is selected.
    fn process_row(&mut self, now: DateTime<Utc>, process: &Scanned) -> ProcessRow {
        let Scanned {
            pid,
            ref stat,
            average,
            peak,
        } = *process;
        let io = self.proc.io(pid);
        let (read, written, command_line, username) = match self.details(pid, stat) {
            Some(details) => {
                // Without a reading (no permission, or the process just ended), nothing.
                let (read, written) = io.map_or((0, 0), |io| {
                    let previous = std::mem::replace(&mut details.io, io);
                    (
                        io.read_bytes.saturating_sub(previous.read_bytes),
                        io.write_bytes.saturating_sub(previous.write_bytes),
                    )
                });
                let command_line = details.command_line.clone();
                (read, written, command_line, details.username.clone())
            }
            None => (0, 0, None, None),
        };
        let start_seconds = self.boot_time + stat.start_ticks / self.units.ticks_per_second;
        ProcessRow {
            timestamp: now,
            host: self.host.clone(),
            pid: i32::try_from(pid).unwrap_or(i32::MAX),
            start_time: DateTime::from_timestamp(signed(start_seconds), 0).unwrap_or_default(),
            parent_pid: i32::try_from(stat.parent)
                .ok()
                .filter(|parent| *parent != 0),
            process_name: stat.name.clone(),
            command_line,
            username,
            state: ProcessStatus::from(stat.state).to_string(),
            cpu_usage_percent: average,
            cpu_peak_percent: peak,
            memory_usage_mb: (stat.resident_pages * self.units.page_bytes) as f64 / MIB,
            virtual_memory_mb: stat.virtual_bytes as f64 / MIB,
            disk_read_bytes: signed(read),
            disk_write_bytes: signed(written),
            threads: i32::try_from(stat.threads).ok(),
        }
    }

    /// The details of a process of the latest scan, read now if it has none yet or has
    /// `exec`ed another program since they were read (its name changed). A command line that
    /// was empty (a zombie, or a process in the middle of starting) is read again.
    fn details(&mut self, pid: u32, stat: &Stat) -> Option<&mut Details> {
        let max = self.selection.command_line_max_length as usize;
        let tracked = self.processes.get_mut(&pid)?;
        match &mut tracked.details {
            Some(details) if details.name == stat.name => {
                if details.command_line.is_none() {
                    details.command_line = self.proc.cmdline(pid, max);
                }
            }
            details => {
                let username = self.proc.real_uid(pid).map(|uid| {
                    self.users
                        .iter()
                        .find(|user| **user.id() == uid)
                        .map_or_else(|| uid.to_string(), |user| user.name().to_owned())
                });
                *details = Some(Details {
                    name: stat.name.clone(),
                    command_line: self.proc.cmdline(pid, max),
                    username,
                    container: OnceCell::new(),
                    // I/O counters go on across an `exec`; until a first reading, they count
                    // from the process's start.
                    io: details.as_ref().map_or_else(Io::default, |d| d.io),
                });
            }
        }
        tracked.details.as_mut()
    }

    /// The row of a selected process that runs in a container; `None` for the others.
    fn vm_row(&mut self, row: &ProcessRow, pods: &PodIndex) -> Option<VmRow> {
        let pid = u32::try_from(row.pid).ok()?;
        let proc = &mut self.proc;
        let details = self.processes.get(&pid)?.details.as_ref()?;
        let container = details
            .container
            .get_or_init(|| proc.cgroup(pid).and_then(cgroup::parse))
            .clone()?;
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

/// A duration in seconds, at least a millisecond (it divides CPU time into a percentage).
fn seconds(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64().max(0.001)
}

/// CPU `ticks` used in `seconds`, as percent of one core.
fn percent(ticks: u64, seconds: f64, units: Units) -> f32 {
    (ticks as f64 / units.ticks_per_second as f64 / seconds * 100.0) as f32
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
