//! The rows the collector writes, one type per metric table, and the batch that carries them
//! to the database (or to the spool while the database is away).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One row of `host_overall_metrics`: the node at one sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostRow {
    /// When the sample was taken.
    pub timestamp: DateTime<Utc>,
    /// The node's name.
    pub host: String,
    /// CPU busy, percent of all cores.
    pub cpu_usage_percent: f32,
    /// CPU busy per core, percent.
    pub cpu_per_core_percent: Vec<f32>,
    /// Load average over 1 minute.
    pub load_1: f64,
    /// Load average over 5 minutes.
    pub load_5: f64,
    /// Load average over 15 minutes.
    pub load_15: f64,
    /// Physical memory.
    pub memory_total_bytes: i64,
    /// Memory in use.
    pub memory_used_bytes: i64,
    /// Memory in use, in MiB (the dashboard's unit).
    pub memory_usage_mb: f64,
    /// Swap space.
    pub swap_total_bytes: i64,
    /// Swap in use.
    pub swap_used_bytes: i64,
    /// Space of the node's disks.
    pub disk_total_bytes: i64,
    /// Space in use on the node's disks.
    pub disk_used_bytes: i64,
    /// Bytes read from disks during the interval.
    pub disk_read_bytes: i64,
    /// Bytes written to disks during the interval.
    pub disk_write_bytes: i64,
    /// Bytes received on network interfaces during the interval.
    pub network_rx_bytes: i64,
    /// Bytes sent on network interfaces during the interval.
    pub network_tx_bytes: i64,
    /// Seconds since boot.
    pub uptime_seconds: i64,
    /// Processes running on the node.
    pub process_count: i32,
}

/// One row of `host_process_metrics`: a recorded process at one sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessRow {
    /// When the sample was taken.
    pub timestamp: DateTime<Utc>,
    /// The node's name.
    pub host: String,
    /// Process id.
    pub pid: i32,
    /// When the process started; with the pid, it identifies the process across samples.
    pub start_time: DateTime<Utc>,
    /// Parent process id.
    pub parent_pid: Option<i32>,
    /// Process name.
    pub process_name: String,
    /// Command line, cut to the configured length.
    pub command_line: Option<String>,
    /// Owner's user name (or uid when the name is unknown).
    pub username: Option<String>,
    /// Scheduler state (running, sleeping, ...).
    pub state: String,
    /// CPU used over the interval, percent of one core.
    pub cpu_usage_percent: f32,
    /// The highest CPU use seen inside the interval, percent of one core.
    pub cpu_peak_percent: f32,
    /// Resident memory, MiB.
    pub memory_usage_mb: f64,
    /// Virtual memory, MiB.
    pub virtual_memory_mb: f64,
    /// Bytes read during the interval.
    pub disk_read_bytes: i64,
    /// Bytes written during the interval.
    pub disk_write_bytes: i64,
    /// Threads (tasks) of the process.
    pub threads: Option<i32>,
}

/// One row of `vm_process_metrics`: a recorded process attributed to a container and pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmRow {
    /// When the sample was taken.
    pub timestamp: DateTime<Utc>,
    /// The node's name.
    pub host: String,
    /// Process id.
    pub pid: i32,
    /// When the process started.
    pub start_time: DateTime<Utc>,
    /// Process name.
    pub process_name: String,
    /// Command line, cut to the configured length.
    pub command_line: Option<String>,
    /// The pod's namespace, when the pod watch knows the pod.
    pub pod_namespace: Option<String>,
    /// The pod's name, when the pod watch knows the pod.
    pub pod_name: Option<String>,
    /// The pod's uid, from the cgroup path.
    pub pod_uid: String,
    /// The container id, from the cgroup path.
    pub container_id: String,
    /// The container's name, when the pod watch knows it.
    pub container_name: Option<String>,
    /// CPU used over the interval, percent of one core.
    pub cpu_usage_percent: f32,
    /// The highest CPU use seen inside the interval, percent of one core.
    pub cpu_peak_percent: f32,
    /// CPU used over the interval, percent of the container's CPU limit (if it has one).
    pub cpu_limit_percent: Option<f32>,
    /// CPU used over the interval, percent of the container's CPU request (if it has one).
    /// Absent from batches spooled before the column existed.
    #[serde(default)]
    pub cpu_request_percent: Option<f32>,
    /// Resident memory, percent of the container's memory limit (if it has one).
    #[serde(default)]
    pub memory_limit_percent: Option<f32>,
    /// Resident memory, percent of the container's memory request (if it has one).
    #[serde(default)]
    pub memory_request_percent: Option<f32>,
    /// Resident memory, MiB.
    pub memory_usage_mb: f64,
    /// Bytes read during the interval.
    pub disk_read_bytes: i64,
    /// Bytes written during the interval.
    pub disk_write_bytes: i64,
}

/// Rows on their way to the database.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// `host_overall_metrics` rows.
    pub hosts: Vec<HostRow>,
    /// `host_process_metrics` rows.
    pub processes: Vec<ProcessRow>,
    /// `vm_process_metrics` rows.
    pub vms: Vec<VmRow>,
}

/// One of the metric tables the collector writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// `host_overall_metrics`.
    Hosts,
    /// `host_process_metrics`.
    Processes,
    /// `vm_process_metrics`.
    Vms,
}

impl Table {
    /// Every table, in the order a batch is written.
    pub const ALL: [Table; 3] = [Table::Hosts, Table::Processes, Table::Vms];

    /// The table's name in the database.
    pub fn name(self) -> &'static str {
        match self {
            Table::Hosts => "host_overall_metrics",
            Table::Processes => "host_process_metrics",
            Table::Vms => "vm_process_metrics",
        }
    }
}

/// Moves up to `room` rows out of `from`, counting them off `room`.
fn take<T>(from: &mut Vec<T>, room: &mut usize) -> Vec<T> {
    let n = from.len().min(*room);
    *room -= n;
    from.drain(..n).collect()
}

impl Batch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.hosts.len() + self.processes.len() + self.vms.len()
    }

    /// Whether the batch holds no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch's rows of one table alone.
    pub fn rows_of(&self, table: Table) -> Batch {
        match table {
            Table::Hosts => Batch {
                hosts: self.hosts.clone(),
                ..Batch::default()
            },
            Table::Processes => Batch {
                processes: self.processes.clone(),
                ..Batch::default()
            },
            Table::Vms => Batch {
                vms: self.vms.clone(),
                ..Batch::default()
            },
        }
    }

    /// Splits the batch into batches of at most `size` rows each.
    pub fn split(mut self, size: usize) -> Vec<Batch> {
        let size = size.max(1);
        let mut batches = Vec::new();
        while !self.is_empty() {
            let mut part = Batch::default();
            let mut room = size;
            part.hosts = take(&mut self.hosts, &mut room);
            part.processes = take(&mut self.processes, &mut room);
            part.vms = take(&mut self.vms, &mut room);
            batches.push(part);
        }
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: i32) -> ProcessRow {
        ProcessRow {
            timestamp: DateTime::UNIX_EPOCH,
            host: "node".into(),
            pid,
            start_time: DateTime::UNIX_EPOCH,
            parent_pid: None,
            process_name: "p".into(),
            command_line: None,
            username: None,
            state: "R".into(),
            cpu_usage_percent: 0.0,
            cpu_peak_percent: 0.0,
            memory_usage_mb: 0.0,
            virtual_memory_mb: 0.0,
            disk_read_bytes: 0,
            disk_write_bytes: 0,
            threads: None,
        }
    }

    #[test]
    fn a_pod_process_spooled_before_the_request_shares_existed_still_decodes() {
        let spooled = serde_json::json!({
            "timestamp": "2026-01-01T00:00:00Z", "host": "node", "pid": 7,
            "start_time": "2026-01-01T00:00:00Z", "process_name": "app", "command_line": null,
            "pod_namespace": "shop", "pod_name": "web-0", "pod_uid": "uid",
            "container_id": "id", "container_name": "app", "cpu_usage_percent": 10.0,
            "cpu_peak_percent": 20.0, "cpu_limit_percent": 5.0, "memory_usage_mb": 64.0,
            "disk_read_bytes": 0, "disk_write_bytes": 0
        });
        let row: VmRow = serde_json::from_value(spooled).expect("an older row decodes");
        assert_eq!(row.cpu_limit_percent, Some(5.0));
        assert_eq!(
            (
                row.cpu_request_percent,
                row.memory_limit_percent,
                row.memory_request_percent
            ),
            (None, None, None)
        );
    }

    #[test]
    fn split_keeps_every_row_once_in_order() {
        let batch = Batch {
            processes: (0..7).map(process).collect(),
            ..Batch::default()
        };
        let parts = batch.clone().split(3);
        assert_eq!(parts.iter().map(Batch::len).collect::<Vec<_>>(), [3, 3, 1]);
        let pids: Vec<i32> = parts
            .iter()
            .flat_map(|b| b.processes.iter().map(|p| p.pid))
            .collect();
        assert_eq!(pids, (0..7).collect::<Vec<_>>());
    }
}
