//! The process's file descriptors: every allocation holds a socket (two with dual stack or a
//! reservation), so xturnd lifts its open-files limit and sizes its descriptor table at start.
//!
//! Linux grows a process's descriptor table by doubling it when a new descriptor does not fit.
//! In a process with more than one thread each growth waits for an RCU grace period
//! (`expand_files` → `synchronize_rcu`), and the thread that opened the descriptor sleeps
//! meanwhile: measured on a 2-vCPU VM, 0.6 to 33 ms per growth. A fresh xturnd taking a burst
//! of Allocates grew its table from 64 to 16 384 slots this way, and its data-plane thread slept
//! through eight grace periods: 30–33 k Allocates/s with the relay's core 70–80 % used, against
//! 44–46 k/s at 100 % once the table was large. Growing it once at start, before there is a
//! second thread, costs no grace period.
use std::os::fd::AsRawFd;

/// Most descriptor slots reserved at start: a slot costs 8 bytes of kernel memory, so this is
/// at most 8 MiB; a relay with more allocations grows the table as it goes.
const MAX_RESERVED: usize = 1 << 20;
/// Descriptors besides relayed sockets: listeners, stream connections, epoll sets, files.
const SPARE: usize = 1024;

/// Lifts the soft limit on open files to the hard one, so the default 1024 does not cap the
/// relay far below `--max-allocations`.
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0
            && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

/// Descriptor slots that `max_allocations` allocations may need, within the open-files limit.
pub fn wanted_slots(max_allocations: usize) -> usize {
    let wanted = max_allocations
        .saturating_mul(2)
        .saturating_add(SPARE)
        .min(MAX_RESERVED);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a pointer to a valid rlimit struct.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        0
    };
    wanted.min(limit)
}

/// Grows the descriptor table to hold [`wanted_slots`]`(max_allocations)` descriptors now, by
/// duplicating a descriptor to the highest of them and closing it. Best effort: returns the
/// table's size afterwards (`FDSize` of `/proc/self/status`) when it can be read.
pub fn reserve_table(max_allocations: usize) -> Option<usize> {
    let slots = wanted_slots(max_allocations);
    if let Ok(null) = std::fs::File::open("/dev/null")
        && let Ok(highest) = libc::c_int::try_from(slots.saturating_sub(1))
        && highest > null.as_raw_fd()
    {
        // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new one (the lowest free
        // at or above `highest`) or -1; a new one is closed right away and nothing else holds it.
        unsafe {
            let fd = libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest);
            if fd >= 0 {
                libc::close(fd);
            }
        }
    }
    table_size()
}

/// This process's descriptor table size (`FDSize` of `/proc/self/status`).
pub fn table_size() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_grown_to_what_the_allocations_need() {
        raise_open_files_limit();
        let wanted = wanted_slots(5_000);
        assert!(wanted > 0, "no open-files limit to read");
        let size = reserve_table(5_000).expect("FDSize in /proc/self/status");
        // The kernel rounds the table up (to a power of two, at least 64 slots).
        assert!(size >= wanted, "table of {size} slots, wanted {wanted}");
    }

    #[test]
    fn the_reservation_is_capped() {
        assert!(wanted_slots(usize::MAX) <= MAX_RESERVED);
        assert!(wanted_slots(0) <= SPARE);
    }
}
