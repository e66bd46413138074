//! Batched datagram I/O: `sendmmsg(2)` and `recvmmsg(2)` over a ring of fixed-size slots.
use std::io;
use std::mem;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

/// `slots` buffers of `stride` bytes each, with their lengths and peer addresses, for one
/// `sendmmsg`/`recvmmsg` call at a time. Owned by one thread.
pub struct Batch {
    data: Vec<u8>,
    stride: usize,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` only ever point into this batch's own vectors
// and are rewritten right before every system call; moving the batch to another thread moves
// those vectors' heap buffers with it.
unsafe impl Send for Batch {}

impl Batch {
    pub fn new(slots: usize, stride: usize) -> Batch {
        let slots = slots.max(1);
        // SAFETY: all-zero is a valid `sockaddr_storage`, `iovec` and `mmsghdr` (null
        // pointers, zero lengths); every pointer is set before use.
        let zero_addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let zero_iov: libc::iovec = unsafe { mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        Batch {
            data: vec![0; slots * stride],
            stride,
            lens: vec![0; slots],
            addrs: vec![zero_addr; slots],
            addr_lens: vec![0; slots],
            iovs: vec![zero_iov; slots],
            hdrs: vec![zero_hdr; slots],
        }
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Slot `i`'s whole buffer, to fill before [`Batch::send`].
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let start = i * self.stride;
        &mut self.data[start..start + self.stride]
    }

    /// Sets how many bytes of slot `i` to send.
    pub fn set_len(&mut self, i: usize, len: usize) {
        self.lens[i] = len.min(self.stride);
    }

    /// The bytes received in slot `i` by the last [`Batch::recv`].
    pub fn received(&self, i: usize) -> &[u8] {
        let start = i * self.stride;
        &self.data[start..start + self.lens[i]]
    }

    /// Where slot `i`'s datagram came from (last [`Batch::recv`]).
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        sockaddr_to_std(&self.addrs[i])
    }

    fn prepare(&mut self, count: usize, with_addrs: bool, for_recv: bool) {
        for i in 0..count {
            let start = i * self.stride;
            self.iovs[i] = libc::iovec {
                iov_base: self.data[start..].as_mut_ptr().cast(),
                iov_len: if for_recv { self.stride } else { self.lens[i] },
            };
            // SAFETY: all-zero is a valid `msghdr`.
            let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
            hdr.msg_iov = &raw mut self.iovs[i];
            hdr.msg_iovlen = 1;
            if with_addrs {
                hdr.msg_name = (&raw mut self.addrs[i]).cast();
                hdr.msg_namelen = if for_recv {
                    socklen(mem::size_of::<libc::sockaddr_storage>())
                } else {
                    self.addr_lens[i]
                };
            }
            self.hdrs[i] = libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            };
        }
    }

    /// Sends slots `0..count` on a connected socket; returns how many left. Blocks while the
    /// socket's send buffer is full, as long as its `SO_SNDTIMEO` allows.
    pub fn send(&mut self, socket: BorrowedFd<'_>, count: usize) -> io::Result<usize> {
        self.send_inner(socket, count, false)
    }

    /// Sends slots `0..count` back to where the last receive got them from, with the lengths
    /// they arrived with (an echo). Blocks like [`Batch::send`].
    pub fn send_back(&mut self, socket: BorrowedFd<'_>, count: usize) -> io::Result<usize> {
        self.send_inner(socket, count, true)
    }

    fn send_inner(
        &mut self,
        socket: BorrowedFd<'_>,
        count: usize,
        with_addrs: bool,
    ) -> io::Result<usize> {
        let count = count.min(self.slots());
        if count == 0 {
            return Ok(0);
        }
        self.prepare(count, with_addrs, false);
        let vlen = u32::try_from(count).unwrap_or(u32::MAX);
        // SAFETY: `hdrs[..count]` point at iovecs and buffers owned by `self`, valid and
        // unaliased for the duration of the call.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), self.hdrs.as_mut_ptr(), vlen, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Receives up to every slot without blocking; returns how many arrived (0 when none).
    pub fn recv(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        self.recv_inner(socket, libc::MSG_DONTWAIT)
    }

    /// Waits for at least one datagram (as long as the socket's `SO_RCVTIMEO` allows), then
    /// takes whatever else is already there; 0 when the wait timed out.
    pub fn recv_wait(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        self.recv_inner(socket, libc::MSG_WAITFORONE)
    }

    fn recv_inner(&mut self, socket: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<usize> {
        let count = self.slots();
        self.prepare(count, true, true);
        let vlen = u32::try_from(count).unwrap_or(u32::MAX);
        // SAFETY: as in `send_inner`; the kernel writes at most `stride` bytes per slot and
        // at most `msg_namelen` bytes of address.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                vlen,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = usize::try_from(n).unwrap_or(0);
        for i in 0..n {
            self.lens[i] = (self.hdrs[i].msg_len as usize).min(self.stride);
            self.addr_lens[i] = self.hdrs[i].msg_hdr.msg_namelen;
        }
        Ok(n)
    }
}

fn socklen(n: usize) -> libc::socklen_t {
    libc::socklen_t::try_from(n).unwrap_or(libc::socklen_t::MAX)
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a `sockaddr_in`, which it is large
            // and aligned enough for.
            let sin = unsafe { &*(std::ptr::from_ref(storage).cast::<libc::sockaddr_in>()) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 = unsafe { &*(std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>()) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    fn recv_all(batch: &mut Batch, socket: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < want && Instant::now() < deadline {
            let n = batch.recv(socket.as_fd()).expect("recv");
            for i in 0..n {
                got.push(batch.received(i).to_vec());
            }
            if n == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        got
    }

    #[test]
    fn a_batch_goes_out_and_comes_back() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind b");
        a.connect(b.local_addr().expect("addr")).expect("connect");
        let mut out = Batch::new(8, 64);
        for i in 0..8 {
            let slot = out.slot_mut(i);
            slot[0] = u8::try_from(i).expect("small");
            out.set_len(i, 10 + i);
        }
        assert_eq!(out.send(a.as_fd(), 8).expect("send"), 8);

        // The echo: receive the batch and send it back to its source.
        let mut echo = Batch::new(16, 64);
        let got = recv_all(&mut echo, &b, 8);
        assert_eq!(got.len(), 8);
        for (i, d) in got.iter().enumerate() {
            assert_eq!((d[0], d.len()), (u8::try_from(i).expect("small"), 10 + i));
        }
        // Receive again into the echo batch so its slots hold the datagrams, then send back.
        out.send(a.as_fd(), 8).expect("send again");
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(2);
        while n == 0 && Instant::now() < deadline {
            n = echo.recv(b.as_fd()).expect("recv");
        }
        assert!(n > 0);
        assert_eq!(echo.source(0), Some(a.local_addr().expect("addr")));
        assert_eq!(echo.send_back(b.as_fd(), n).expect("send back"), n);
        let mut back = Batch::new(16, 64);
        let returned = recv_all(&mut back, &a, n);
        assert_eq!(returned.len(), n);
        assert_eq!(returned[0].len(), 10);
    }

    #[test]
    fn nothing_to_receive_is_zero() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut batch = Batch::new(4, 32);
        assert_eq!(batch.recv(a.as_fd()).expect("recv"), 0);
    }
}
