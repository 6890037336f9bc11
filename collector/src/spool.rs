//! The on-disk spool of batches the database has not taken yet: one synced file per batch,
//! replayed oldest first, surviving a restart (or a SIGKILL) of the collector. Bounded in
//! bytes: when full, the oldest batches are dropped and counted.
//!
//! The batches hold process rows (command lines, user names), and the spool lives in a host
//! directory: only the collector's user may read it. The directory is `0700` and every file
//! in it `0600`, tightened at open if an earlier version or the kubelet (a `DirectoryOrCreate`
//! host path is created `0755`) left them looser.

use std::collections::VecDeque;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Permissions of the spool directory: its owner only.
pub const DIRECTORY_MODE: u32 = 0o700;
/// Permissions of a spooled batch (and of the temporary file it is written to): its owner
/// only.
pub const FILE_MODE: u32 = 0o600;

use crate::rows::Batch;

/// One spooled batch.
#[derive(Clone, Debug)]
struct Entry {
    path: PathBuf,
    bytes: u64,
    rows: u64,
}

/// Batches on disk, oldest first.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    entries: VecDeque<Entry>,
    bytes: u64,
    next: u64,
}

/// What pushing a batch dropped to stay within the size limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Batches dropped.
    pub batches: u64,
    /// Rows in them.
    pub rows: u64,
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, with what an earlier run left there.
    /// The directory is made `0700` and the batches in it `0600`; a half-written `.tmp` file
    /// an interrupted run left is removed.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIRECTORY_MODE)
            .create(dir)?;
        fs::set_permissions(dir, Permissions::from_mode(DIRECTORY_MODE))?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                fs::remove_file(entry.path())?;
                continue;
            }
            // `<sequence>-<rows>.json`; anything else is left out (and alone).
            let Some((sequence, rows)) = name
                .strip_suffix(".json")
                .and_then(|stem| stem.split_once('-'))
                .and_then(|(s, r)| Some((s.parse::<u64>().ok()?, r.parse::<u64>().ok()?)))
            else {
                continue;
            };
            fs::set_permissions(entry.path(), Permissions::from_mode(FILE_MODE))?;
            found.push((
                sequence,
                Entry {
                    path: entry.path(),
                    bytes: entry.metadata()?.len(),
                    rows,
                },
            ));
        }
        found.sort_by_key(|(sequence, _)| *sequence);
        let next = found.last().map_or(0, |(sequence, _)| sequence + 1);
        let entries: VecDeque<Entry> = found.into_iter().map(|(_, e)| e).collect();
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes,
            bytes: entries.iter().map(|e| e.bytes).sum(),
            entries,
            next,
        })
    }

    /// Writes a batch as the newest entry and syncs it to disk, then drops the oldest entries
    /// while the spool is over its size limit.
    pub fn push(&mut self, batch: &Batch) -> io::Result<Dropped> {
        let data = serde_json::to_vec(batch).map_err(io::Error::other)?;
        let rows = batch.len() as u64;
        let path = self.dir.join(format!("{:020}-{rows}.json", self.next));
        let temporary = path.with_extension("tmp");
        // Created afresh, so that its mode is this one whatever a leftover file had.
        match fs::remove_file(&temporary) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&temporary)?;
        file.write_all(&data)?;
        file.sync_all()?;
        fs::rename(&temporary, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.next += 1;
        self.bytes += data.len() as u64;
        self.entries.push_back(Entry {
            path,
            bytes: data.len() as u64,
            rows,
        });
        let mut dropped = Dropped::default();
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            let oldest = self.entries.pop_front().expect("more than one entry");
            fs::remove_file(&oldest.path)?;
            self.bytes -= oldest.bytes;
            dropped.batches += 1;
            dropped.rows += oldest.rows;
        }
        Ok(dropped)
    }

    /// The oldest batch, if any.
    pub fn oldest(&self) -> io::Result<Option<Batch>> {
        let Some(entry) = self.entries.front() else {
            return Ok(None);
        };
        let data = fs::read(&entry.path)?;
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(io::Error::other)
    }

    /// Removes the oldest batch (after the database took it).
    pub fn remove_oldest(&mut self) -> io::Result<()> {
        if let Some(entry) = self.entries.pop_front() {
            fs::remove_file(&entry.path)?;
            self.bytes -= entry.bytes;
        }
        Ok(())
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::HostRow;

    fn batch(host: &str) -> Batch {
        Batch {
            hosts: vec![HostRow {
                timestamp: chrono::DateTime::UNIX_EPOCH,
                host: host.into(),
                cpu_usage_percent: 1.0,
                cpu_per_core_percent: vec![1.0, 2.0],
                load_1: 0.0,
                load_5: 0.0,
                load_15: 0.0,
                memory_total_bytes: 1,
                memory_used_bytes: 1,
                memory_usage_mb: 0.0,
                swap_total_bytes: 0,
                swap_used_bytes: 0,
                disk_total_bytes: 0,
                disk_used_bytes: 0,
                disk_read_bytes: 0,
                disk_write_bytes: 0,
                network_rx_bytes: 0,
                network_tx_bytes: 0,
                uptime_seconds: 0,
                process_count: 0,
            }],
            ..Batch::default()
        }
    }

    fn temporary_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("metricsstack-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn replays_oldest_first_across_a_reopen() {
        let dir = temporary_dir("order");
        let mut spool = Spool::open(&dir, 1 << 20).expect("opens");
        for host in ["a", "b", "c"] {
            spool.push(&batch(host)).expect("pushed");
        }
        drop(spool);
        let mut spool = Spool::open(&dir, 1 << 20).expect("reopens");
        let mut hosts = Vec::new();
        while let Some(b) = spool.oldest().expect("readable") {
            hosts.push(b.hosts[0].host.clone());
            spool.remove_oldest().expect("removed");
        }
        assert_eq!(hosts, ["a", "b", "c"]);
        assert_eq!(spool.bytes(), 0);
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn drops_the_oldest_when_full_and_counts_it() {
        let dir = temporary_dir("full");
        let one = serde_json::to_vec(&batch("a")).expect("json").len() as u64;
        let mut spool = Spool::open(&dir, one * 2).expect("opens");
        assert_eq!(spool.push(&batch("a")).expect("pushed"), Dropped::default());
        assert_eq!(spool.push(&batch("b")).expect("pushed"), Dropped::default());
        assert_eq!(
            spool.push(&batch("c")).expect("pushed"),
            Dropped {
                batches: 1,
                rows: 1
            }
        );
        assert_eq!(
            spool.oldest().expect("readable").expect("a batch").hosts[0].host,
            "b"
        );
        assert!(spool.bytes() <= one * 2);
        fs::remove_dir_all(dir).ok();
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("exists").permissions().mode() & 0o777
    }

    #[test]
    fn only_the_owner_can_read_the_spool_even_one_left_open_before() {
        let dir = temporary_dir("modes");
        let mut spool = Spool::open(&dir, 1 << 20).expect("opens");
        spool.push(&batch("a")).expect("pushed");
        assert_eq!(mode(&dir), DIRECTORY_MODE);
        let files: Vec<PathBuf> = fs::read_dir(&dir)
            .expect("lists")
            .map(|e| e.expect("an entry").path())
            .collect();
        assert_eq!(files.len(), 1);
        assert_eq!(mode(&files[0]), FILE_MODE);
        drop(spool);

        // As an earlier version left it: everything readable by all, and a half-written
        // batch from a run that was killed.
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(&files[0], Permissions::from_mode(0o644)).expect("chmod");
        let half_written = dir.join("00000000000000000007-1.tmp");
        fs::write(&half_written, b"{").expect("written");
        let mut spool = Spool::open(&dir, 1 << 20).expect("reopens");
        assert_eq!(mode(&dir), DIRECTORY_MODE);
        assert_eq!(mode(&files[0]), FILE_MODE);
        assert!(!half_written.exists(), "the half-written batch is removed");

        // The temporary file a batch is written to is the owner's from its creation: a
        // leftover one is created afresh.
        let next = dir.join("00000000000000000001-1.tmp");
        fs::write(&next, b"").expect("written");
        fs::set_permissions(&next, Permissions::from_mode(0o644)).expect("chmod");
        spool.push(&batch("b")).expect("pushed");
        for entry in fs::read_dir(&dir).expect("lists") {
            let path = entry.expect("an entry").path();
            assert_eq!(mode(&path), FILE_MODE, "{}", path.display());
        }
        fs::remove_dir_all(dir).ok();
    }
}
