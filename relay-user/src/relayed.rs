//! Relayed sockets: one non-blocking UDP socket per relayed transport address.
//!
//! They are not tokio sockets with a task each: every socket is registered (level-triggered) in
//! the epoll set of one of a few readers (one per worker thread; a socket goes to the reader of
//! the lane that bound it ([`crate::lanes`]), else they are dealt round-robin),
//! and each reader's task waits on its epoll set (itself registered with tokio) and reads the
//! sockets it reports. An allocation costs its socket and one map entry, not a task and a
//! tokio registration (about 2.4 → under 2 KiB per allocation), and one wake-up serves every
//! socket with datagrams waiting.
use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::debug;

use crate::channels::{PeerChannels, Relay};
use crate::server::{SOCKET_BUFFER, lock, send};

/// Whether the userspace relay's sends still use UDP GSO (metrics read it).
pub(crate) static GSO: udp_batch::Gso = udp_batch::Gso::new();

/// Most sockets one `epoll_wait` reports.
pub(crate) const MAX_EVENTS: usize = 64;

/// A relayed socket, shared by its reader, the channel table and the senders.
pub(crate) struct RelayShared {
    pub(crate) addr: SocketAddr,
    socket: UdpSocket,
    /// Whether the socket is in "don't fragment" mode (IP_PMTUDISC_DO) right now.
    dont_fragment: AtomicBool,
    /// Its bound peers ([`crate::channels`]).
    pub(crate) peers: PeerChannels,
}

impl Relay for RelayShared {
    fn peer_channels(&self) -> &PeerChannels {
        &self.peers
    }
}

impl RelayShared {
    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Sends `data` to `peer`, in or out of "don't fragment" mode as asked (a syscall to switch
    /// only when the mode differs: DONT-FRAGMENT applies to one datagram).
    pub(crate) fn send_to_peer(&self, data: &[u8], peer: SocketAddr, df: bool) -> bool {
        self.set_mode(df);
        send(&self.socket, data, peer)
    }

    /// Sends `datagrams` to `peer` without "don't fragment" (ChannelData's data), as few
    /// system calls as it takes; returns how many the kernel took.
    pub(crate) fn send_all_to_peer(&self, peer: SocketAddr, datagrams: &[&[u8]]) -> usize {
        self.set_mode(false);
        udp_batch::send_all_to(self.socket.as_fd(), peer, datagrams, &GSO)
    }

    fn set_mode(&self, df: bool) {
        if self.dont_fragment.load(Ordering::Relaxed) != df
            && self.dont_fragment.swap(df, Ordering::Relaxed) != df
        {
            set_dont_fragment(&self.socket, self.addr, df);
        }
    }
}

/// One reader's epoll set and the sockets in it, by descriptor.
struct Reader {
    epoll: OwnedFd,
    sockets: Mutex<HashMap<RawFd, Arc<RelayShared>>>,
}

/// Every relayed socket, by address, and the readers they are dealt to.
pub(crate) struct Relays {
    by_addr: Mutex<HashMap<SocketAddr, (Arc<RelayShared>, usize)>>,
    readers: Vec<Reader>,
    next: AtomicUsize,
}

impl Relays {
    /// `readers` epoll sets (at least one).
    pub(crate) fn new(readers: usize) -> io::Result<Relays> {
        let readers = (0..readers.max(1))
            .map(|_| {
                // SAFETY: epoll_create1 has no memory preconditions; the result is checked.
                let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(Reader {
                    // SAFETY: `fd` was just created and is owned by nobody else.
                    epoll: unsafe { OwnedFd::from_raw_fd(fd) },
                    sockets: Mutex::new(HashMap::new()),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Relays {
            by_addr: Mutex::new(HashMap::new()),
            readers,
            next: AtomicUsize::new(0),
        })
    }

    pub(crate) fn readers(&self) -> usize {
        self.readers.len()
    }

    /// Reader `index`'s epoll set: readable while one of its sockets is.
    pub(crate) fn epoll(&self, index: usize) -> Option<RawFd> {
        self.readers.get(index).map(|r| r.epoll.as_raw_fd())
    }

    pub(crate) fn get(&self, addr: &SocketAddr) -> Option<Arc<RelayShared>> {
        lock(&self.by_addr).get(addr).map(|(r, _)| Arc::clone(r))
    }

    /// Binds a socket on exactly `addr` and hands it to the next reader. An address bound
    /// before is released first (the core never binds one twice).
    pub(crate) fn bind(&self, addr: SocketAddr) -> io::Result<()> {
        let socket = bind_relayed(addr)?;
        let relay = Arc::new(RelayShared {
            addr,
            socket,
            dont_fragment: AtomicBool::new(false),
            peers: PeerChannels::default(),
        });
        // On a lane, its own reader: the client's datagrams arrive on this lane's CPU, and so
        // (where the kernel receives them on the CPU that sent to the peer) do the peer's.
        let index = crate::lanes::current()
            .filter(|&lane| lane < self.readers.len())
            .unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed) % self.readers.len());
        let reader = &self.readers[index];
        let fd = relay.socket.as_raw_fd();
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: u64::try_from(fd).unwrap_or_default(),
        };
        // SAFETY: both descriptors are open; `event` is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                reader.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd,
                &raw mut event,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        lock(&reader.sockets).insert(fd, Arc::clone(&relay));
        let old = lock(&self.by_addr).insert(addr, (relay, index));
        if let Some((old, index)) = old {
            self.forget(&old, index);
        }
        Ok(())
    }

    /// Closes the socket at `addr` (once nobody uses it any more); whether there was one.
    pub(crate) fn release(&self, addr: &SocketAddr) -> bool {
        let removed = lock(&self.by_addr).remove(addr);
        match removed {
            Some((relay, index)) => {
                self.forget(&relay, index);
                debug!(%addr, "relayed socket released");
                true
            }
            None => false,
        }
    }

    /// Releases every socket.
    pub(crate) fn clear(&self) {
        let all: Vec<_> = lock(&self.by_addr).drain().collect();
        for (_, (relay, index)) in all {
            self.forget(&relay, index);
        }
    }

    /// Takes `relay` out of reader `index`'s set: its reader reads it no more.
    fn forget(&self, relay: &RelayShared, index: usize) {
        let Some(reader) = self.readers.get(index) else {
            return;
        };
        let fd = relay.socket.as_raw_fd();
        lock(&reader.sockets).remove(&fd);
        // SAFETY: both descriptors are open (the socket until its last Arc goes); a null event
        // is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                reader.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
    }

    /// The sockets of reader `index` with datagrams waiting now (without waiting); empty when
    /// none has.
    pub(crate) fn ready(&self, index: usize, out: &mut Vec<Arc<RelayShared>>) -> io::Result<()> {
        out.clear();
        let Some(reader) = self.readers.get(index) else {
            return Ok(());
        };
        // SAFETY: all-zero is a valid epoll_event.
        let mut events: [libc::epoll_event; MAX_EVENTS] = unsafe { std::mem::zeroed() };
        let n = loop {
            // SAFETY: `events` has room for MAX_EVENTS entries; a zero timeout never blocks.
            let n = unsafe {
                libc::epoll_wait(
                    reader.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    MAX_EVENTS as libc::c_int,
                    0,
                )
            };
            if n >= 0 {
                break usize::try_from(n).unwrap_or(0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let sockets = lock(&reader.sockets);
        for event in &events[..n] {
            let fd = RawFd::try_from(event.u64).unwrap_or(-1);
            // A socket released since the event was queued is not there any more.
            if let Some(relay) = sockets.get(&fd) {
                out.push(Arc::clone(relay));
            }
        }
        Ok(())
    }
}

/// A non-blocking UDP socket bound to exactly `addr`, for a relayed address (made non-blocking
/// by `socket` itself: this runs for every Allocate).
fn bind_relayed(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Best effort: larger buffers absorb bursts; the kernel caps them.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn set_dont_fragment(socket: &UdpSocket, relayed: SocketAddr, on: bool) {
    let (level, name, value) = match (relayed.is_ipv4(), on) {
        (true, true) => (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        ),
        (true, false) => (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_WANT,
        ),
        (false, true) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        ),
        (false, false) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_WANT,
        ),
    };
    // SAFETY: setsockopt on a socket we own, with a c_int value and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        debug!(%relayed, error = %io::Error::last_os_error(), "cannot set DONT-FRAGMENT");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_socket_is_reported_ready_by_its_reader_until_released() {
        let relays = Relays::new(2).expect("epoll");
        let a: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        // Port 0 binds somewhere: find where through the socket itself.
        relays.bind(a).expect("bind");
        let relay = relays.get(&a).expect("bound");
        let local = relay.socket.local_addr().expect("local");
        let sender = UdpSocket::bind("127.0.0.1:0").expect("sender");
        sender.send_to(b"x", local).expect("send");
        let mut ready = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while ready.is_empty() && std::time::Instant::now() < deadline {
            relays.ready(0, &mut ready).expect("epoll_wait");
        }
        assert_eq!(ready.len(), 1, "the first socket goes to reader 0");
        assert!(Arc::ptr_eq(&ready[0], &relay));
        relays.ready(1, &mut ready).expect("epoll_wait");
        assert!(ready.is_empty(), "reader 1 has no socket yet");
        assert!(relays.release(&a));
        assert!(!relays.release(&a));
        relays.ready(0, &mut ready).expect("epoll_wait");
        assert!(ready.is_empty(), "a released socket is not read");
        assert!(relays.get(&a).is_none());
    }
}
