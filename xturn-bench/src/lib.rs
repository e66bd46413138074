//! The pieces of `xturn-bench`, the benchmark's load generator and echo.
//! `cargo xtask bench` runs them in network namespaces; see docs/benchmarks.md.
//!
//! - [`load`]: N allocations by real TURN handshakes (timed), then ChannelData in phases
//!   (fixed rate or maximum) with `sendmmsg`/`recvmmsg`, round-trip times from stamps, and the
//!   relay's CPU time sampled at each phase's edges.
//! - [`setup`]: many clients' requests from one thread and one epoll set (the setup rate).
//! - [`echo`]: the peer, which returns every datagram and counts them per phase.
//! - [`wire`], [`cpu`], [`hist`]: the payload stamp, `/proc`
//!   CPU accounting, a latency histogram; batched socket I/O is the `udp-batch` crate.
pub mod cpu;
pub mod echo;
pub mod hist;
pub mod load;
pub mod setup;
pub mod wire;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::Socket;

use xturnctl::ClientError;

/// Everything that can go wrong in the benchmark tools.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("TURN: {0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Invalid(String),
}

/// `CLOCK_MONOTONIC` in nanoseconds: comparable across the threads of one process.
/// An epoll set watching `fds` for input, each event carrying its descriptor's index in `fds`.
pub fn epoll_set(fds: impl IntoIterator<Item = RawFd>) -> Result<OwnedFd, BenchError> {
    // SAFETY: epoll_create1 with a valid flag; the result is checked.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
    for (i, fd) in fds.into_iter().enumerate() {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: both descriptors are open; `event` is a valid epoll_event.
        let rc =
            unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut event) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(epoll)
}

pub fn mono_ns() -> u64 {
    // SAFETY: all-zero is a valid timespec, and clock_gettime writes into it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000_000 + nanos
}

/// Large socket buffers (forced past `net.core.*mem_max` when we may), and 100 ms send and
/// receive timeouts so blocking calls come back to check the time.
pub fn tune_socket(socket: &Socket, buffer: usize) -> Result<(), BenchError> {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(buffer).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // SAFETY: a valid socket, option and int-sized value.
        let forced = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                force,
                (&raw const size).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
            )
        };
        if forced != 0 {
            // Without CAP_NET_ADMIN: as much as the limits allow.
            // SAFETY: as above.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    plain,
                    (&raw const size).cast(),
                    libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
                )
            };
        }
    }
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    socket.set_write_timeout(Some(Duration::from_millis(100)))?;
    Ok(())
}
