//! CPU time of this process, to report what a request costs beyond how long it takes.

use std::ops::{Add, AddAssign};
use std::time::Duration;

/// CPU time, split as the kernel accounts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// Time running the process's own code.
    pub user: Duration,
    /// Time in the kernel on the process's behalf. On loopback this includes most of the TCP
    /// stack's work for both ends of a connection, which is the same whichever client sends.
    pub system: Duration,
}

impl CpuTime {
    /// User plus system time.
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// The time used between `earlier` and `self`.
    pub fn since(&self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

impl Add for CpuTime {
    type Output = CpuTime;

    fn add(self, other: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

impl AddAssign for CpuTime {
    fn add_assign(&mut self, other: CpuTime) {
        *self = *self + other;
    }
}

/// CPU time used so far by every thread of this process.
///
/// `getrusage(RUSAGE_SELF)` is read rather than `/proc/self/stat` because the kernel computes it
/// from the scheduler's nanosecond runtime instead of clock ticks, so a round of a few hundred
/// milliseconds is measured to the microsecond.
#[allow(unsafe_code)] // One libc call; std has no portable way to read process CPU time.
pub fn process_cpu_time() -> CpuTime {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable `rusage`; `RUSAGE_SELF` is a valid `who`, so the call
    // cannot fail and fills the struct in.
    let status = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(status, 0, "getrusage(RUSAGE_SELF) cannot fail");
    // SAFETY: zero-initialised and then filled in by the successful call above.
    let usage = unsafe { usage.assume_init() };
    CpuTime {
        user: timeval(usage.ru_utime),
        system: timeval(usage.ru_stime),
    }
}

fn timeval(time: libc::timeval) -> Duration {
    Duration::from_secs(time.tv_sec.unsigned_abs())
        + Duration::from_micros(time.tv_usec.unsigned_abs())
}

/// Confines the calling thread, and the threads it starts afterwards, to CPU `cpu`.
///
/// Used to give a client and a server a core each, and to put them on the same core when that is
/// what a measurement needs. Fails where the CPU does not exist or affinity cannot be set.
#[allow(unsafe_code)] // One libc call; std cannot set CPU affinity.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero `cpu_set_t` is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `CPU_SET` sets one bit of `set`, indexing its array with bounds checks.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid `cpu_set_t` of the size given.
    let status = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// CPUs this process may run on.
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
