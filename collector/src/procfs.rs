//! Reading processes from `/proc` directly. `/proc/<pid>/stat` is one short line that holds
//! everything the selection needs (CPU time, resident memory, name, start time, threads);
//! the sampler reads it for the processes that have run since the last read (see
//! [`crate::cpu_clock`]) and for the selected ones. The other files are read only for the
//! selected processes: `io` at every sample, `status` (owner), `cmdline` and `cgroup` once
//! per process.
//!
//! sysinfo is not used for the process table because its refresh reads
//! `/proc/<pid>/status` (for the owner and thread group) of every process whatever the
//! refresh kind asks, and `statm` for memory: with `stat`, three files per process where one
//! is enough, `status` alone costing more than `stat`.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

/// `PF_KTHREAD` in the flags of `/proc/<pid>/stat`: the process is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of one `/proc/<pid>/stat` line that the sampler uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// The process name (the kernel's `comm`: the program's file name, cut to 15 bytes).
    pub name: String,
    /// The scheduler state letter (`R`, `S`, `D`, `Z`, ...).
    pub state: u8,
    /// The parent's pid (0 for the processes the kernel starts).
    pub parent: u32,
    /// Whether the process is a kernel thread.
    pub kernel_thread: bool,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Threads (tasks) of the process.
    pub threads: u32,
    /// When the process started, in clock ticks since boot; with the pid, it identifies the
    /// process.
    pub start_ticks: u64,
    /// Virtual memory, in bytes.
    pub virtual_bytes: u64,
    /// Resident memory, in pages.
    pub resident_pages: u64,
}

/// Parses the content of `/proc/<pid>/stat`. `None` when it is not such a line.
pub fn parse_stat(content: &[u8]) -> Option<Stat> {
    // The name (field 2) is in parentheses and may hold spaces and parentheses itself: the
    // fields after it start after the last `)`. Field n is the (n - 3)th from there.
    let open = content.iter().position(|b| *b == b'(')?;
    let close = content.iter().rposition(|b| *b == b')')?;
    let name = String::from_utf8_lossy(content.get(open + 1..close)?).into_owned();
    let mut fields = content[close + 1..]
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    let state = *fields.next()?.first()?;
    // Each call moves on: `next(n)` reads field n, which must come after the last one read.
    let mut at = 3;
    let mut next = |field: usize| -> Option<u64> {
        let value = fields.nth(field - at - 1)?;
        at = field;
        decimal(value)
    };
    let parent = u32::try_from(next(4)?).ok()?;
    let flags = next(9)?;
    let user = next(14)?;
    let system = next(15)?;
    let threads = u32::try_from(next(20)?).ok()?;
    let start_ticks = next(22)?;
    let virtual_bytes = next(23)?;
    let resident_pages = next(24)?;
    Some(Stat {
        name,
        state,
        parent,
        kernel_thread: flags & PF_KTHREAD != 0,
        cpu_ticks: user + system,
        threads,
        start_ticks,
        virtual_bytes,
        resident_pages,
    })
}

/// An unsigned decimal number, as the kernel writes them (no sign, no spaces).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |number, digit| {
        let digit = char::from(*digit).to_digit(10)?;
        number.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// A process's storage I/O counters, from `/proc/<pid>/io`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Io {
    /// Bytes the process caused to be read from storage.
    pub read_bytes: u64,
    /// Bytes the process caused to be written to storage.
    pub write_bytes: u64,
}

/// Parses the content of `/proc/<pid>/io`.
pub fn parse_io(content: &[u8]) -> Option<Io> {
    let text = std::str::from_utf8(content).ok()?;
    let value = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some(Io {
        read_bytes: value("read_bytes")?,
        write_bytes: value("write_bytes")?,
    })
}

/// The real user id in the content of `/proc/<pid>/status`.
pub fn parse_real_uid(content: &[u8]) -> Option<u32> {
    std::str::from_utf8(content)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The arguments in the content of `/proc/<pid>/cmdline` (separated by NUL); none when it is
/// empty, as for zombies. When the content was `cut` at a read limit, its last argument may
/// be incomplete and is left out: a secret cut in two would no longer look like one.
pub fn parse_cmdline(content: &[u8], cut: bool) -> Vec<String> {
    let complete = if cut {
        content
            .iter()
            .rposition(|b| *b == 0)
            .map_or(&[][..], |end| &content[..end])
    } else {
        content
    };
    complete
        .split(|b| *b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// The page size and clock tick rate of this kernel, from the auxiliary vector the kernel
/// gave this process (what `sysconf` answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Units {
    /// Bytes per memory page (`AT_PAGESZ`).
    pub page_bytes: u64,
    /// Clock ticks per second of the CPU times in `/proc` (`AT_CLKTCK`).
    pub ticks_per_second: u64,
}

impl Units {
    /// A CPU time in clock ticks, in nanoseconds.
    pub fn cpu_ns(&self, ticks: u64) -> u64 {
        ticks.saturating_mul(1_000_000_000) / self.ticks_per_second
    }

    /// Reads the units from `/proc/self/auxv`: this process's own `/proc`, since whatever
    /// `/proc` the collector reads runs on the same kernel.
    pub fn of_this_kernel() -> std::io::Result<Self> {
        Ok(Self::from_auxv(&std::fs::read("/proc/self/auxv")?))
    }

    /// The units in an auxiliary vector (native-endian pairs of words); Linux's usual 4 KiB
    /// pages and 100 ticks per second for what it lacks.
    fn from_auxv(auxv: &[u8]) -> Self {
        const AT_PAGESZ: usize = 6;
        const AT_CLKTCK: usize = 17;
        const WORD: usize = std::mem::size_of::<usize>();
        let mut units = Self {
            page_bytes: 4096,
            ticks_per_second: 100,
        };
        for pair in auxv.chunks_exact(2 * WORD) {
            let word = |i: usize| {
                let mut bytes = [0; WORD];
                bytes.copy_from_slice(&pair[i * WORD..(i + 1) * WORD]);
                usize::from_ne_bytes(bytes)
            };
            let value = word(1) as u64;
            match word(0) {
                AT_PAGESZ if value > 0 => units.page_bytes = value,
                AT_CLKTCK if value > 0 => units.ticks_per_second = value,
                _ => {}
            }
        }
        units
    }
}

/// A reader of `/proc` (or of the host's `/proc` mounted elsewhere) that reuses one buffer.
#[derive(Debug)]
pub struct ProcFs {
    root: PathBuf,
    buffer: Vec<u8>,
}

impl ProcFs {
    /// A reader of the `/proc` mounted at `root`.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            buffer: Vec::new(),
        }
    }

    /// The pids of the processes (not of their other threads) that `/proc` lists now.
    pub fn pids(&self) -> std::io::Result<impl Iterator<Item = u32> + use<>> {
        Ok(std::fs::read_dir(&self.root)?.filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name();
            let name = name.to_str()?;
            // Parsing alone would accept `+1`.
            name.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| name.parse().ok())?
        }))
    }

    /// The process's `stat` line, parsed. `None` if the process is gone.
    pub fn stat(&mut self, pid: u32) -> Option<Stat> {
        parse_stat(self.read(pid, "stat", usize::MAX)?)
    }

    /// The process's I/O counters. `None` if the process is gone or they are not readable.
    pub fn io(&mut self, pid: u32) -> Option<Io> {
        parse_io(self.read(pid, "io", usize::MAX)?)
    }

    /// The process's real user id.
    pub fn real_uid(&mut self, pid: u32) -> Option<u32> {
        parse_real_uid(self.read(pid, "status", usize::MAX)?)
    }

    /// The process's arguments, as many as fit in the first `4 * max_chars` bytes of its
    /// command line (see [`parse_cmdline`]). `None` if the process is gone.
    pub fn cmdline(&mut self, pid: u32, max_chars: usize) -> Option<Vec<String>> {
        // A character takes at most four bytes, so that is enough for `max_chars` characters
        // of command line, fewer after redaction. A content that fills the limit may be cut.
        let limit = max_chars.saturating_mul(4);
        let content = self.read(pid, "cmdline", limit)?;
        Some(parse_cmdline(content, content.len() >= limit))
    }

    /// The network counters of the node's first process (pid 1), whose network namespace
    /// is the node's: the content of its `net/dev`.
    pub fn net_dev(&mut self) -> Option<&[u8]> {
        self.read(1, "net/dev", usize::MAX)
    }

    /// The content of the process's `cgroup` file.
    pub fn cgroup(&mut self, pid: u32) -> Option<&str> {
        std::str::from_utf8(self.read(pid, "cgroup", usize::MAX)?).ok()
    }

    /// Reads `<root>/<pid>/<file>` whole into the buffer, with plain `read` calls: the files
    /// of `/proc` have no size to ask for first. A read that fills less than the room it was
    /// given has reached the end (the kernel fills the room while there is more to give), so
    /// a file that fits takes one `read`, not a second one to see the end.
    /// Past `limit` bytes, the rest is left unread.
    fn read(&mut self, pid: u32, file: &str, limit: usize) -> Option<&[u8]> {
        let mut handle = open(&self.root, pid, file)?;
        if self.buffer.is_empty() {
            self.buffer.resize(4096, 0);
        }
        let mut filled = 0;
        loop {
            let room = self.buffer.len() - filled;
            match handle.read(&mut self.buffer[filled..]) {
                Ok(n) if n < room => break Some(&self.buffer[..(filled + n).min(limit)]),
                Ok(n) if filled + n >= limit => break Some(&self.buffer[..limit]),
                Ok(n) => {
                    filled += n;
                    self.buffer.resize(self.buffer.len() * 2, 0);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
        }
    }
}

fn open(root: &Path, pid: u32, file: &str) -> Option<File> {
    let mut path = root.to_path_buf();
    path.push(pid.to_string());
    path.push(file);
    File::open(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_after_a_name_with_spaces_and_parentheses() {
        let line = b"4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 120 0 0 0 7 3 0 0 20 0 \
            12 0 987654 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                name: "my (odd) name".into(),
                state: b'S',
                parent: 1,
                kernel_thread: false,
                cpu_ticks: 10,
                threads: 12,
                start_ticks: 987654,
                virtual_bytes: 104857600,
                resident_pages: 2560,
            })
        );
    }

    #[test]
    fn knows_kernel_threads_by_their_flag() {
        let line = b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 1 0 0 20 0 1 0 2 0 0 \
            18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 0 0 0 0 0\n";
        let stat = parse_stat(line).expect("a stat line");
        assert!(stat.kernel_thread);
        assert_eq!((stat.parent, stat.resident_pages), (0, 0));
    }

    #[test]
    fn rejects_what_is_not_a_stat_line() {
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b"4242 (cut) S 1 2"), None);
        let negative_parent = b"4242 (p) S -1 4242 4242 0 -1 4194560 120 0 0 0 7 3 0 0 20 0 \
            12 0 987654 104857600 2560 0\n";
        assert_eq!(parse_stat(negative_parent), None);
    }

    #[test]
    fn reads_decimal_numbers_without_overflowing() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(decimal(b"18446744073709551616"), None);
        assert_eq!(decimal(b""), None);
        assert_eq!(decimal(b"-1"), None);
        assert_eq!(decimal(b"+1"), None);
    }

    #[test]
    fn reads_io_counters_status_owner_and_command_line() {
        let io = b"rchar: 100\nwchar: 200\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\n\
            write_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(
            parse_io(io),
            Some(Io {
                read_bytes: 4096,
                write_bytes: 8192
            })
        );
        let status = b"Name:\tpostgres\nUmask:\t0077\nState:\tS (sleeping)\nTgid:\t70\n\
            Uid:\t105\t0\t105\t105\nGid:\t111\t111\t111\t111\n";
        assert_eq!(parse_real_uid(status), Some(105));
        assert_eq!(
            parse_cmdline(b"/usr/bin/python3\0-c\0print('hi')\0", false),
            ["/usr/bin/python3", "-c", "print('hi')"]
        );
        assert!(parse_cmdline(b"", false).is_empty());
    }

    #[test]
    fn leaves_out_the_argument_a_read_limit_may_have_cut() {
        assert_eq!(
            parse_cmdline(b"app\0--password=hun", true),
            ["app"],
            "cut inside the last argument"
        );
        assert_eq!(
            parse_cmdline(b"app\0--password\0", true),
            ["app", "--password"],
            "cut after a whole argument"
        );
        assert!(parse_cmdline(b"--password=hun", true).is_empty());
        assert_eq!(
            parse_cmdline(b"app\0--password=hunter2", false),
            ["app", "--password=hunter2"]
        );
    }

    #[test]
    fn reads_page_size_and_clock_ticks_from_the_auxiliary_vector() {
        let words: [usize; 8] = [6, 16384, 17, 250, 25, 0xdead, 0, 0];
        let auxv: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(
            Units::from_auxv(&auxv),
            Units {
                page_bytes: 16384,
                ticks_per_second: 250
            }
        );
        let own = Units::of_this_kernel().expect("this process's auxiliary vector");
        assert!(own.page_bytes.is_power_of_two() && own.page_bytes >= 4096);
        assert!(own.ticks_per_second > 0);
    }

    #[test]
    fn reads_a_command_line_longer_than_the_buffer_and_cuts_it() {
        let long = "x".repeat(20_000);
        // `read` is built in: the shell stays, with its long command line, until killed. Its
        // first line says that it runs (and no longer the program that started it).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "echo ready; read line", "sh", &long])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh starts");
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut ready,
        )
        .expect("the shell runs");
        let mut proc = ProcFs::new("/proc".into());
        let whole = proc.cmdline(child.id(), 100_000);
        let cut = proc.cmdline(child.id(), 10);
        child.kill().ok();
        child.wait().ok();
        assert_eq!(
            whole,
            Some(vec![
                "sh".into(),
                "-c".into(),
                "echo ready; read line".into(),
                "sh".into(),
                long
            ])
        );
        // 40 bytes hold the first four arguments whole, and the start of the long one.
        assert_eq!(
            cut,
            Some(vec![
                "sh".into(),
                "-c".into(),
                "echo ready; read line".into(),
                "sh".into()
            ])
        );
    }

    #[test]
    fn reads_this_process_from_proc() {
        let mut proc = ProcFs::new("/proc".into());
        let pid = std::process::id();
        assert!(proc.pids().expect("/proc lists").any(|p| p == pid));
        let stat = proc.stat(pid).expect("this process's stat");
        assert!(!stat.kernel_thread && stat.threads >= 1 && stat.resident_pages > 0);
        assert!(proc.cmdline(pid, 8192).is_some_and(|args| !args.is_empty()));
        assert!(proc.real_uid(pid).is_some());
        assert_eq!(proc.stat(u32::MAX), None);
    }
}
