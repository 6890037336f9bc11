//! Another process's CPU time from its POSIX CPU clock: one system call that copies the
//! nanosecond counter the scheduler keeps, where `/proc/<pid>/stat` formats fifty fields
//! under the process's signal lock (about a tenth of the cost, on the benchmark's machine).
//! The sampler asks every process's clock at every sample and reads `stat` only for those
//! whose CPU time moved, since a process that has not run has not changed either.
//!
//! Linux lets any process read any other's CPU clock; the pid must be one of this process's
//! pid namespace, which is why [`pids_are_ours`] exists.

use std::path::Path;

use nix::time::{ClockId, clock_gettime};

/// `CPUCLOCK_SCHED` in Linux's clock ids: the scheduler's runtime, all threads together when
/// the id names a process (the per-thread bit, 4, is clear).
const CPUCLOCK_SCHED: i32 = 2;

/// The CPU time (user and system, all threads) that process `pid` has used, in nanoseconds.
/// `None` when this pid namespace has no such process.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let pid = i32::try_from(pid).ok()?;
    // Linux's MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED), what clock_getcpuclockid(3) builds
    // (glibc's also asks for the clock's resolution first: a second system call).
    let clock = ClockId::from_raw((!pid << 3) | CPUCLOCK_SCHED);
    let time = clock_gettime(clock).ok()?;
    let seconds = u64::try_from(time.tv_sec()).ok()?;
    let nanoseconds = u64::try_from(time.tv_nsec()).ok()?;
    Some(seconds * 1_000_000_000 + nanoseconds)
}

/// Whether the pids that the `/proc` at `proc_root` shows are this process's pids, so that
/// [`process_cpu_ns`] reads the processes it lists: its `self` link names this process by
/// its pid in that `/proc`'s namespace (and does not resolve if this process is not in it).
/// So it is for the node's `/proc` with `hostPID`, not for a container's own `/proc` read
/// from outside it.
pub fn pids_are_ours(proc_root: &Path) -> bool {
    std::fs::read_link(proc_root.join("self"))
        .is_ok_and(|target| target == Path::new(&std::process::id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::busy_child::BusyChild;
    use std::time::{Duration, Instant};

    #[test]
    fn reads_a_busy_child_s_cpu_time_as_it_grows() {
        let child = BusyChild::spawn();
        let pid = child.pid();
        let started = Instant::now();
        let first = process_cpu_ns(pid).expect("the child's clock");
        // However loaded the machine, the child gets some CPU sooner or later.
        let deadline = started + Duration::from_secs(120);
        let mut second = first;
        while second < first + 10_000_000 {
            assert!(Instant::now() < deadline, "the child's clock stands still");
            std::thread::sleep(Duration::from_millis(10));
            second = process_cpu_ns(pid).expect("the child's clock");
        }
        let elapsed = started.elapsed();
        drop(child);
        // One spinning thread uses at most the time that passed (give or take the rates of
        // the scheduler's clock and of the monotonic one).
        let used = second - first;
        assert!(
            used as f64 <= elapsed.as_nanos() as f64 * 1.01,
            "used {used} ns in {elapsed:?}"
        );
        assert_eq!(process_cpu_ns(pid), None, "reaped: no clock");
    }

    #[test]
    fn agrees_with_this_process_s_own_cpu_clock() {
        let own = || {
            let time = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).expect("own clock");
            time.tv_sec() as u64 * 1_000_000_000 + time.tv_nsec() as u64
        };
        let before = own();
        let read = process_cpu_ns(std::process::id()).expect("this process's clock");
        let after = own();
        assert!(
            (before..=after).contains(&read),
            "{before} <= {read} <= {after}"
        );
    }

    #[test]
    fn knows_whose_pids_a_proc_shows() {
        assert!(pids_are_ours(Path::new("/proc")));
        assert!(!pids_are_ours(Path::new("/nonexistent")));
        assert_eq!(process_cpu_ns(u32::MAX), None);
    }
}
