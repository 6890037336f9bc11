//! Sampling the node. The host's metrics come from one `sysinfo::System` kept across
//! samples, refreshing only what is used (CPU usage, memory; no CPU frequency), and its
//! network traffic from [`crate::network`]. Processes are
//! read from `/proc` directly (see [`crate::procfs`]). Each sample asks every process's CPU
//! clock (see [`crate::cpu_clock`]) and reads the `stat` file of those that have run since
//! it was last read, the others being as they were: that is enough to rank them all. The
//! selected processes' `stat` is read afresh, and their command line, owner, cgroup and I/O
//! counters too, the first three once per process. The command line is stored as the
//! configuration's `commandLines` says, redacted by default (see [`crate::command_line`]),
//! before it enters a row: what the policy hides is never written nor spooled.
//! Between two samples, [`Sampler::tick`]
//! reads the CPU time of the processes that were busy, so that a short spike inside the
//! interval shows as the peak.
//!
//! One thing can change in a process that has not run: the kernel can reclaim its memory.
//! Its resident memory as last read is then too high, which can rank it among the top by
//! memory for a sample; being selected, it is read afresh, and ranks right from then on.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use regex::RegexSet;
use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, ProcessStatus, System, Users,
};

use crate::cgroup::{self, ContainerRef};
use crate::command_line;
use crate::cpu_clock;
use crate::network::NetworkTraffic;
use crate::pods::{ContainerShares, PodIndex};
use crate::procfs::{Io, ProcFs, Stat, Units};
use crate::rows::{Batch, HostRow, ProcessRow, VmRow};
use metricsstack_common::config::ProcessConfig;

const MIB: f64 = 1024.0 * 1024.0;

/// The node sampler.
pub struct Sampler {
    host: String,
    system: System,
    disks: Disks,
    network: NetworkTraffic,
    users: Users,
    selection: ProcessConfig,
    include: RegexSet,
    exclude: RegexSet,
    proc: ProcFs,
    /// Whether processes' CPU clocks can be read (see [`cpu_clock::pids_are_ours`]); if not,
    /// every process's `stat` is read at every sample.
    cpu_clocks: bool,
    units: Units,
    /// Boot time, seconds since the epoch: process start times are relative to it.
    boot_time: u64,
    /// The processes the last scan found, by pid, kernel threads included (to know them
    /// without reading their `stat` again).
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
    /// The process's `stat` when last read; its start time, with the pid, identifies the
    /// process.
    stat: Stat,
    /// The scan that last read `stat`.
    stat_scan: u64,
    /// CPU time in nanoseconds at the last sample and at the last read (by a sample or a
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
    /// A process first seen `now` by scan `scan`, as `stat` shows it, having used `cpu`
    /// nanoseconds of CPU time so far.
    fn new(stat: Stat, cpu: u64, now: Instant, scan: u64) -> Self {
        Self {
            stat,
            stat_scan: scan,
            cpu_at_sample: cpu,
            cpu_at_read: cpu,
            read_at: now,
            peak: 0.0,
            scan,
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
    /// The command line as the policy has it stored (see [`stored_command_line`]).
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
    /// The process name, for the include and exclude patterns.
    name: String,
    /// Resident memory in pages, as last read: the ranking by memory.
    resident_pages: u64,
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
        let cpu_clocks = cpu_clock::pids_are_ours(&proc_root);
        Self::with_cpu_clocks(host, selection, proc_root, cpu_clocks)
    }

    /// [`Self::new`], reading processes' CPU clocks or not.
    fn with_cpu_clocks(
        host: &str,
        selection: &ProcessConfig,
        proc_root: PathBuf,
        cpu_clocks: bool,
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
            network: NetworkTraffic::default(),
            users: Users::new_with_refreshed_list().map_err(system_error)?,
            selection: selection.clone(),
            include: RegexSet::new(&selection.include)?,
            exclude: RegexSet::new(&selection.exclude)?,
            proc: ProcFs::new(proc_root.clone()),
            cpu_clocks,
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
        sampler.network_traffic();
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
            let Some(tracked) = self.processes.get_mut(&pid) else {
                continue;
            };
            let cpu = if self.cpu_clocks {
                // Should the pid be another process's by now, the reading is that of a
                // process the next scan replaces, peak and all.
                cpu_clock::process_cpu_ns(pid)
            } else {
                self.proc
                    .stat(pid)
                    .filter(|stat| stat.start_ticks == tracked.stat.start_ticks)
                    .map(|stat| self.units.cpu_ns(stat.cpu_ticks))
            };
            let Some(cpu) = cpu else {
                continue;
            };
            let now = Instant::now();
            let used = cpu.saturating_sub(tracked.cpu_at_read);
            if used > 0 {
                self.busy.push(pid);
            }
            let elapsed = seconds(now - tracked.read_at);
            tracked.peak = tracked.peak.max(percent(used, elapsed));
            tracked.cpu_at_read = cpu;
            tracked.read_at = now;
        }
    }

    /// Brings what the sampler knows of process `pid` up to date for scan `self.scans`, and
    /// returns its CPU time in nanoseconds: reads its `stat` unless its CPU clock shows that
    /// it has not run since the last read. `None` if the process has ended.
    fn refresh(&mut self, pid: u32, now: Instant) -> Option<u64> {
        let clock = self
            .cpu_clocks
            .then(|| cpu_clock::process_cpu_ns(pid))
            .flatten();
        let known = self.processes.get(&pid);
        if let (Some(cpu), Some(tracked)) = (clock, known)
            && cpu == tracked.cpu_at_read
        {
            // Not run: as it was. (Were the pid another process's by now, its clock would
            // not show the same nanosecond.)
            return Some(cpu);
        }
        let stat = self.proc.stat(pid)?;
        let cpu = clock.unwrap_or_else(|| self.units.cpu_ns(stat.cpu_ticks));
        let scan = self.scans;
        match self.processes.entry(pid) {
            Entry::Occupied(mut entry) if entry.get().stat.start_ticks == stat.start_ticks => {
                let tracked = entry.get_mut();
                tracked.stat = stat;
                tracked.stat_scan = scan;
            }
            // New, or its pid was reused by a new process.
            Entry::Occupied(mut entry) => {
                entry.insert(Tracked::new(stat, cpu, now, scan));
            }
            Entry::Vacant(entry) => {
                entry.insert(Tracked::new(stat, cpu, now, scan));
            }
        }
        Some(cpu)
    }

    /// Lists the processes and brings each up to date (see [`Self::refresh`]); returns the
    /// processes (kernel threads left out) with their CPU use since the last sample, and how
    /// many processes `/proc` listed. Starts the next interval: forgets processes that
    /// ended, and the peaks.
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
            let Some(cpu) = self.refresh(pid, now) else {
                continue; // ended since the listing
            };
            listed += 1;
            let Some(tracked) = self.processes.get_mut(&pid) else {
                continue;
            };
            tracked.scan = self.scans;
            if tracked.stat.kernel_thread {
                continue;
            }
            let since_read_cpu = cpu.saturating_sub(tracked.cpu_at_read);
            if since_read_cpu > 0 {
                self.busy.push(pid);
            }
            let average = percent(cpu.saturating_sub(tracked.cpu_at_sample), since_sample);
            let since_read = seconds(now - tracked.read_at);
            let peak = tracked
                .peak
                .max(percent(since_read_cpu, since_read))
                .max(average);
            tracked.cpu_at_sample = cpu;
            tracked.cpu_at_read = cpu;
            tracked.read_at = now;
            tracked.peak = 0.0;
            scanned.push(Scanned {
                pid,
                name: tracked.stat.name.clone(),
                resident_pages: tracked.stat.resident_pages,
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
    #[tracing::instrument(skip_all, fields(at = %now))]
    pub fn sample(&mut self, now: DateTime<Utc>, pods: Option<&PodIndex>) -> Batch {
        self.system
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        self.disks.refresh_specifics(true, disk_refresh());
        let network = self.network_traffic();
        let (scanned, listed) = self.scan().unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot list the processes: this sample has none");
            (Vec::new(), 0)
        });
        let host = self.host_row(now, listed, network);
        let mut processes = Vec::new();
        let mut vms = Vec::new();
        for process in self.selected(&scanned) {
            let Some(row) = self.process_row(now, process) else {
                continue;
            };
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
            .filter(|p| !self.exclude.is_match(&p.name))
            .collect();
        let mut by_cpu = candidates.clone();
        by_cpu.sort_by(|a, b| b.average.total_cmp(&a.average));
        let mut by_memory = candidates.clone();
        by_memory.sort_by_key(|p| std::cmp::Reverse(p.resident_pages));
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
                    .filter(|p| self.include.is_match(&p.name)),
            )
            .collect();
        chosen.sort_by_key(|p| p.pid);
        chosen.dedup_by_key(|p| p.pid);
        chosen
    }

    /// Bytes received and transmitted by the node since the last call; none if the node's
    /// network counters cannot be read.
    fn network_traffic(&mut self) -> (u64, u64) {
        match self.proc.net_dev() {
            Some(content) => self.network.since_last(content),
            None => (0, 0),
        }
    }

    fn host_row(&self, now: DateTime<Utc>, process_count: usize, (rx, tx): (u64, u64)) -> HostRow {
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

    /// The `stat` of a process of the latest scan, read in this scan: read again if the
    /// scan did not (it had not run), unless it has ended since, when it is as last read.
    fn current_stat(&mut self, pid: u32) -> Option<Stat> {
        let scan = self.scans;
        let tracked = self.processes.get_mut(&pid)?;
        if tracked.stat_scan != scan
            && let Some(stat) = self.proc.stat(pid)
            && stat.start_ticks == tracked.stat.start_ticks
        {
            tracked.stat = stat;
            tracked.stat_scan = scan;
        }
        Some(tracked.stat.clone())
    }

    /// The row of a selected process: reads its `stat` and I/O counters, and what else it
    /// needs the first time the process is selected.
    fn process_row(&mut self, now: DateTime<Utc>, process: &Scanned) -> Option<ProcessRow> {
        let Scanned {
            pid, average, peak, ..
        } = *process;
        let stat = &self.current_stat(pid)?;
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
        Some(ProcessRow {
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
        })
    }

    /// The details of a process of the latest scan, read now if it has none yet or has
    /// `exec`ed another program since they were read (its name changed). A command line that
    /// was empty (a zombie, or a process in the middle of starting) is read again.
    fn details(&mut self, pid: u32, stat: &Stat) -> Option<&mut Details> {
        let tracked = self.processes.get_mut(&pid)?;
        match &mut tracked.details {
            Some(details) if details.name == stat.name => {
                if details.command_line.is_none() {
                    details.command_line =
                        stored_command_line(&mut self.proc, &self.selection, pid);
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
                    command_line: stored_command_line(&mut self.proc, &self.selection, pid),
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
        let ContainerShares {
            cpu_request_percent,
            cpu_limit_percent,
            memory_request_percent,
            memory_limit_percent,
        } = known
            .map(|k| k.shares(row.cpu_usage_percent, row.memory_usage_mb))
            .unwrap_or_default();
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
            cpu_request_percent,
            memory_limit_percent,
            memory_request_percent,
            memory_usage_mb: row.memory_usage_mb,
            disk_read_bytes: row.disk_read_bytes,
            disk_write_bytes: row.disk_write_bytes,
        })
    }
}

/// The command line of process `pid` as `selection` says to store it: not even read when
/// none is stored.
fn stored_command_line(proc: &mut ProcFs, selection: &ProcessConfig, pid: u32) -> Option<String> {
    let policy = selection.command_lines;
    if policy == command_line::CommandLinePolicy::None {
        return None;
    }
    let max_chars = selection.command_line_max_length as usize;
    command_line::stored(&proc.cmdline(pid, max_chars)?, policy, max_chars)
}

/// A duration in seconds, at least a millisecond (it divides CPU time into a percentage).
fn seconds(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64().max(0.001)
}

/// CPU time `used` (nanoseconds) in `seconds`, as percent of one core.
fn percent(used: u64, seconds: f64) -> f32 {
    (used as f64 / 1e9 / seconds * 100.0) as f32
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::busy_child::BusyChild;
    use std::time::Duration;

    /// Where the pids of the `/proc` read are not this process's, every `stat` is read: a
    /// busy child's CPU use comes from its `stat` file. The test reads that file itself just
    /// before and just after each sampler read, which bounds what the sampler can have seen,
    /// whatever share of a core the machine gives the child.
    #[test]
    fn without_cpu_clocks_the_stat_files_measure_a_busy_child() {
        let child = BusyChild::spawn();
        let pid = child.pid();
        let units = Units::of_this_kernel().expect("this kernel's units");
        let mut proc = ProcFs::new("/proc".into());
        let mut cpu = || units.cpu_ns(proc.stat(pid).expect("the child's stat").cpu_ticks);
        let selection = ProcessConfig {
            top_by_cpu: 0,
            top_by_memory: 0,
            include: vec!["^sh$".into()],
            ..ProcessConfig::default()
        };
        let start_before = (cpu(), Instant::now());
        let mut sampler = Sampler::with_cpu_clocks("test-node", &selection, "/proc".into(), false)
            .expect("a sampler");
        let start_after = (Instant::now(), cpu());
        // Twenty ticks of CPU, however long the child takes to get them.
        let deadline = Instant::now() + Duration::from_secs(120);
        while cpu() < start_after.1 + units.cpu_ns(20) {
            assert!(Instant::now() < deadline, "the child never ran");
            std::thread::sleep(Duration::from_millis(10));
        }
        let end_before = (cpu(), Instant::now());
        let batch = sampler.sample(Utc::now(), None);
        let end_after = (Instant::now(), cpu());
        drop(child);
        let row = batch
            .processes
            .iter()
            .find(|row| row.pid as u32 == pid)
            .expect("the busy child is recorded");
        assert_eq!(row.process_name, "sh");
        let percent = |ns: u64, time: Duration| ns as f64 / time.as_nanos() as f64 * 100.0;
        let least = percent(end_before.0 - start_after.1, end_after.0 - start_before.1);
        let most = percent(end_after.1 - start_before.0, end_before.1 - start_after.0);
        let cpu = f64::from(row.cpu_usage_percent);
        assert!(least > 0.0, "the child ran");
        assert!(
            cpu >= least * (1.0 - 1e-4) && cpu <= most * (1.0 + 1e-4),
            "{cpu}% is outside [{least}%, {most}%]"
        );
    }
}
