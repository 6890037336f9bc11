//! The on-disk spool: every batch is written here and synced before the writer sends it
//! (write-ahead), one file per batch, sent oldest first, surviving a restart (or a SIGKILL)
//! of the collector. Bounded in bytes: when full, the oldest dead letters and then the
//! oldest batches are dropped and counted.
//!
//! Rows a table refuses for good are set aside as dead letters: the same JSON, in the
//! directory `dead-letter` inside the spool, one file per batch and table, named
//! `<sequence>-<table>-<rows>.json`. Nothing replays them; they are there to be read (and
//! count against the spool's bound).
//!
//! The batches hold process rows (command lines, user names), and the spool lives in a host
//! directory: only the collector's user may read it. The directories are `0700` and every
//! file in them `0600`, tightened at open if an earlier version or the kubelet (a
//! `DirectoryOrCreate` host path is created `0755`) left them looser.
//!
//! Every call does blocking file I/O (and `fsync`): call it off the async runtime's thread.

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
/// The directory, inside the spool, of the dead letters.
pub const DEAD_LETTER_DIRECTORY: &str = "dead-letter";

use crate::rows::Batch;

/// Which spooled batch: its place in the order and its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryId {
    /// The batch's sequence number, the order in which batches are sent.
    pub sequence: u64,
    /// Rows in the batch.
    pub rows: u64,
}

/// One spooled batch.
#[derive(Clone, Debug)]
struct Entry {
    id: EntryId,
    path: PathBuf,
    bytes: u64,
}

/// One dead letter.
#[derive(Clone, Debug)]
struct DeadLetter {
    path: PathBuf,
    bytes: u64,
}

/// Batches on disk, oldest first, and the dead letters beside them.
pub struct Spool {
    dir: PathBuf,
    dead_letter_dir: PathBuf,
    max_bytes: u64,
    entries: VecDeque<Entry>,
    dead_letters: VecDeque<DeadLetter>,
    bytes: u64,
    next: u64,
    leftovers_removed: u64,
}

/// What keeping within the size limit dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Batches dropped.
    pub batches: u64,
    /// Rows in them.
    pub rows: u64,
    /// Dead letters dropped (their rows were counted when they were set aside).
    pub dead_letters: u64,
}

/// A file found in a spool directory: its name, path and size.
type Found = (String, PathBuf, u64);

/// Creates `dir` (`0700`) if needed and tightens its mode; removes the `.tmp` files an
/// interrupted write left in it; returns its other files, and how many `.tmp` files it
/// removed.
fn open_directory(dir: &Path) -> io::Result<(Vec<Found>, u64)> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIRECTORY_MODE)
        .create(dir)?;
    fs::set_permissions(dir, Permissions::from_mode(DIRECTORY_MODE))?;
    let mut files = Vec::new();
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            fs::remove_file(entry.path())?;
            removed += 1;
            continue;
        }
        files.push((name, entry.path(), entry.metadata()?.len()));
    }
    Ok((files, removed))
}

/// Writes `data` to `dir/name` through a temporary file, synced, so that the file is
/// either whole or absent after a crash. A failed write leaves no temporary file behind.
fn write_synced(dir: &Path, name: &str, data: &[u8]) -> io::Result<PathBuf> {
    let path = dir.join(name);
    let temporary = path.with_extension("tmp");
    let written = (|| {
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
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&temporary, &path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written.map(|()| path)
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, with what an earlier run left there.
    /// The directories are made `0700` and the files in them `0600`; the half-written `.tmp`
    /// files an interrupted run left are removed and counted
    /// ([`Spool::leftovers_removed`]).
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        let (files, mut leftovers_removed) = open_directory(dir)?;
        let mut found = Vec::new();
        for (name, path, bytes) in files {
            // `<sequence>-<rows>.json`; anything else is left out (and alone).
            let Some((sequence, rows)) = name
                .strip_suffix(".json")
                .and_then(|stem| stem.split_once('-'))
                .and_then(|(s, r)| Some((s.parse::<u64>().ok()?, r.parse::<u64>().ok()?)))
            else {
                continue;
            };
            fs::set_permissions(&path, Permissions::from_mode(FILE_MODE))?;
            found.push(Entry {
                id: EntryId { sequence, rows },
                path,
                bytes,
            });
        }
        found.sort_by_key(|entry| entry.id.sequence);

        let dead_letter_dir = dir.join(DEAD_LETTER_DIRECTORY);
        let (files, removed) = open_directory(&dead_letter_dir)?;
        leftovers_removed += removed;
        let mut dead = Vec::new();
        for (name, path, bytes) in files {
            // `<sequence>-<table>-<rows>.json`.
            let Some(sequence) = name
                .strip_suffix(".json")
                .and_then(|stem| stem.split('-').next()?.parse::<u64>().ok())
            else {
                continue;
            };
            fs::set_permissions(&path, Permissions::from_mode(FILE_MODE))?;
            dead.push((sequence, name, DeadLetter { path, bytes }));
        }
        dead.sort_by(|(a, a_name, _), (b, b_name, _)| (a, a_name).cmp(&(b, b_name)));

        let next = found
            .last()
            .map(|entry| entry.id.sequence)
            .into_iter()
            .chain(dead.last().map(|(sequence, _, _)| *sequence))
            .max()
            .map_or(0, |sequence| sequence + 1);
        let entries: VecDeque<Entry> = found.into_iter().collect();
        let dead_letters: VecDeque<DeadLetter> =
            dead.into_iter().map(|(_, _, letter)| letter).collect();
        Ok(Self {
            dir: dir.to_owned(),
            dead_letter_dir,
            max_bytes,
            bytes: entries.iter().map(|e| e.bytes).sum::<u64>()
                + dead_letters.iter().map(|d| d.bytes).sum::<u64>(),
            entries,
            dead_letters,
            next,
            leftovers_removed,
        })
    }

    /// Writes a batch as the newest entry and syncs it to disk, then drops the oldest dead
    /// letters and entries while the spool is over its size limit.
    pub fn push(&mut self, batch: &Batch) -> io::Result<(EntryId, Dropped)> {
        let data = serde_json::to_vec(batch).map_err(io::Error::other)?;
        let id = EntryId {
            sequence: self.next,
            rows: batch.len() as u64,
        };
        let name = format!("{:020}-{}.json", id.sequence, id.rows);
        let path = write_synced(&self.dir, &name, &data)?;
        self.next += 1;
        self.bytes += data.len() as u64;
        self.entries.push_back(Entry {
            id,
            path,
            bytes: data.len() as u64,
        });
        Ok((id, self.shrink()?))
    }

    /// Sets aside, synced, the rows of the entry `id` that `table` refuses, then keeps the
    /// spool within its size limit as [`Spool::push`] does. Setting aside the same table's
    /// rows of the same entry again replaces the earlier dead letter.
    pub fn dead_letter(&mut self, id: EntryId, table: &str, batch: &Batch) -> io::Result<Dropped> {
        let data = serde_json::to_vec(batch).map_err(io::Error::other)?;
        let name = format!("{:020}-{table}-{}.json", id.sequence, batch.len());
        let path = write_synced(&self.dead_letter_dir, &name, &data)?;
        if let Some(index) = self.dead_letters.iter().position(|d| d.path == path) {
            let replaced = self.dead_letters.remove(index).expect("found");
            self.bytes -= replaced.bytes;
        }
        self.bytes += data.len() as u64;
        self.dead_letters.push_back(DeadLetter {
            path,
            bytes: data.len() as u64,
        });
        self.shrink()
    }

    /// Drops the oldest dead letters, then the oldest entries (but the newest), while the
    /// spool is over its size limit.
    fn shrink(&mut self) -> io::Result<Dropped> {
        let mut dropped = Dropped::default();
        while self.bytes > self.max_bytes {
            if let Some(oldest) = self.dead_letters.pop_front() {
                remove_if_there(&oldest.path)?;
                self.bytes -= oldest.bytes;
                dropped.dead_letters += 1;
            } else if self.entries.len() > 1 {
                let oldest = self.entries.pop_front().expect("more than one entry");
                remove_if_there(&oldest.path)?;
                self.bytes -= oldest.bytes;
                dropped.batches += 1;
                dropped.rows += oldest.id.rows;
            } else {
                break;
            }
        }
        Ok(dropped)
    }

    /// The oldest batch, if any, as read from disk (an error if it is unreadable).
    pub fn oldest(&self) -> Option<(EntryId, io::Result<Batch>)> {
        let entry = self.entries.front()?;
        let batch = fs::read(&entry.path)
            .and_then(|data| serde_json::from_slice(&data).map_err(io::Error::other));
        Some((entry.id, batch))
    }

    /// Removes the entry `id` (after the database took it), if the size limit has not
    /// dropped it already.
    pub fn remove(&mut self, id: EntryId) -> io::Result<()> {
        let Some(index) = self.entries.iter().position(|e| e.id == id) else {
            return Ok(());
        };
        remove_if_there(&self.entries[index].path)?;
        let entry = self.entries.remove(index).expect("found");
        self.bytes -= entry.bytes;
        Ok(())
    }

    /// Bytes on disk, dead letters included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether no batch waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many half-written `.tmp` files [`Spool::open`] removed.
    pub fn leftovers_removed(&self) -> u64 {
        self.leftovers_removed
    }
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
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
        while let Some((id, b)) = spool.oldest() {
            hosts.push(b.expect("readable").hosts[0].host.clone());
            spool.remove(id).expect("removed");
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
        assert_eq!(
            spool.push(&batch("a")).expect("pushed").1,
            Dropped::default()
        );
        assert_eq!(
            spool.push(&batch("b")).expect("pushed").1,
            Dropped::default()
        );
        assert_eq!(
            spool.push(&batch("c")).expect("pushed").1,
            Dropped {
                batches: 1,
                rows: 1,
                dead_letters: 0
            }
        );
        assert_eq!(
            spool.oldest().expect("a batch").1.expect("readable").hosts[0].host,
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
            .filter(|path| path.is_file())
            .collect();
        assert_eq!(mode(&dir.join(DEAD_LETTER_DIRECTORY)), DIRECTORY_MODE);
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
        assert_eq!(spool.leftovers_removed(), 1, "and counted");

        // The temporary file a batch is written to is the owner's from its creation: a
        // leftover one is created afresh.
        let next = dir.join("00000000000000000001-1.tmp");
        fs::write(&next, b"").expect("written");
        fs::set_permissions(&next, Permissions::from_mode(0o644)).expect("chmod");
        spool.push(&batch("b")).expect("pushed");
        for entry in fs::read_dir(&dir).expect("lists") {
            let path = entry.expect("an entry").path();
            let expected = if path.is_dir() {
                DIRECTORY_MODE
            } else {
                FILE_MODE
            };
            assert_eq!(mode(&path), expected, "{}", path.display());
        }
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn dead_letters_survive_a_reopen_count_against_the_bound_and_go_first() {
        let dir = temporary_dir("dead");
        let one = serde_json::to_vec(&batch("a")).expect("json").len() as u64;
        let mut spool = Spool::open(&dir, one * 2).expect("opens");
        let (a, _) = spool.push(&batch("a")).expect("pushed");
        let dropped = spool
            .dead_letter(a, "host_overall_metrics", &batch("a"))
            .expect("set aside");
        assert_eq!(dropped, Dropped::default());
        // Set aside twice (a retry after a transient error): one dead letter.
        spool
            .dead_letter(a, "host_overall_metrics", &batch("a"))
            .expect("set aside");
        spool.remove(a).expect("removed");
        assert_eq!(spool.bytes(), one);
        let letters = dir.join(DEAD_LETTER_DIRECTORY);
        let letter = letters.join("00000000000000000000-host_overall_metrics-1.json");
        assert_eq!(mode(&letter), FILE_MODE);
        fs::write(
            letters.join("00000000000000000000-vm_process_metrics-1.tmp"),
            b"{",
        )
        .expect("written");
        drop(spool);

        let mut spool = Spool::open(&dir, one * 2).expect("reopens");
        assert_eq!(spool.leftovers_removed(), 1, "a half-written dead letter");
        assert_eq!(spool.bytes(), one, "the dead letter counts");
        let (b, _) = spool.push(&batch("b")).expect("pushed");
        assert!(b.sequence > a.sequence, "no name is used twice");
        let dropped = spool.push(&batch("c")).expect("pushed").1;
        assert_eq!(
            dropped,
            Dropped {
                dead_letters: 1,
                ..Dropped::default()
            },
            "the dead letter goes before any batch that waits"
        );
        assert!(!letter.exists());
        assert_eq!(spool.oldest().expect("a batch").0, b);
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn removing_a_batch_the_bound_dropped_already_changes_nothing() {
        let dir = temporary_dir("gone");
        let one = serde_json::to_vec(&batch("a")).expect("json").len() as u64;
        let mut spool = Spool::open(&dir, one).expect("opens");
        let (a, _) = spool.push(&batch("a")).expect("pushed");
        spool.push(&batch("b")).expect("pushed");
        spool.remove(a).expect("nothing to remove");
        assert_eq!(spool.bytes(), one);
        assert!(!spool.is_empty());
        fs::remove_dir_all(dir).ok();
    }
}
