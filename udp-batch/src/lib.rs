//! Batched UDP datagram I/O for Linux, one system call for many datagrams:
//!
//! - [`Batch`]: `slots` fixed-size buffers for `recvmmsg(2)` and `sendmmsg(2)`. A batch can keep
//!   `headroom` bytes free in front of every slot, so a header can be written in front of a
//!   received datagram and the whole frame sent on without a copy ([`Batch::frame_mut`]).
//! - [`send_to_many`]: one `sendmmsg(2)` of datagrams borrowed from anywhere, each to its own
//!   destination.
//! - [`send_all_to`]: datagrams to one destination, runs of equal size as one UDP GSO send
//!   (`UDP_SEGMENT`: the kernel carries the run as one buffer through the stack and cuts it
//!   into datagrams as late as it can), falling back to `sendmmsg` where GSO is refused.
//!
//! Used by the relay's packet path (`relay-user`) and the benchmark's load generator and echo
//! (`xturn-bench`).
use std::io;
use std::mem;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Most datagrams [`send_to_many`] hands to the kernel in one call.
pub const MAX_SEND_BATCH: usize = 64;
/// Most datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send: what fits in one IP packet's length field, less the headers.
const MAX_GSO_BYTES: usize = 65_000;

/// Whether [`send_all_to`] may use UDP GSO: it may until the kernel refuses it once, then every
/// later send goes datagram by datagram. One per process (a `static`), or per test.
#[derive(Debug, Default)]
pub struct Gso {
    refused: std::sync::atomic::AtomicBool,
}

impl Gso {
    pub const fn new() -> Gso {
        Gso {
            refused: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether GSO is still used (the kernel has not refused it).
    pub fn in_use(&self) -> bool {
        !self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn refuse(&self) {
        self.refused
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `slots` buffers of `stride` bytes each (after `headroom` free bytes), with their lengths and
/// peer addresses, for one `sendmmsg`/`recvmmsg` call at a time. Owned by one thread.
pub struct Batch {
    data: Vec<u8>,
    /// Bytes per slot: `headroom + stride`.
    pitch: usize,
    headroom: usize,
    stride: usize,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Every header is set up for `recvmmsg` and only the first `recv_dirty` were written by
    /// the kernel since: the next receive resets those alone (a receive of 1–4 datagrams
    /// otherwise rebuilt all the headers, a few per cent of a relay's time per datagram).
    recv_ready: bool,
    recv_dirty: usize,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` only ever point into this batch's own vectors,
// whose heap buffers are allocated once and never grow (so the pointers stay valid between
// system calls); moving the batch to another thread moves those buffers with it.
unsafe impl Send for Batch {}

impl Batch {
    pub fn new(slots: usize, stride: usize) -> Batch {
        Batch::with_headroom(slots, stride, 0)
    }

    /// A batch whose slots each keep `headroom` bytes free in front of their datagram.
    pub fn with_headroom(slots: usize, stride: usize, headroom: usize) -> Batch {
        let slots = slots.max(1);
        let pitch = headroom + stride;
        // SAFETY: all-zero is a valid `sockaddr_storage`, `iovec` and `mmsghdr` (null
        // pointers, zero lengths); every pointer is set before use.
        let zero_addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let zero_iov: libc::iovec = unsafe { mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        Batch {
            data: vec![0; slots * pitch],
            pitch,
            headroom,
            stride,
            lens: vec![0; slots],
            addrs: vec![zero_addr; slots],
            addr_lens: vec![0; slots],
            iovs: vec![zero_iov; slots],
            hdrs: vec![zero_hdr; slots],
            recv_ready: false,
            recv_dirty: 0,
        }
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Slot `i`'s whole buffer, to fill before [`Batch::send`].
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let start = self.start(i);
        &mut self.data[start..start + self.stride]
    }

    /// Where slot `i`'s datagram starts in `data`.
    #[inline]
    fn start(&self, i: usize) -> usize {
        i * self.pitch + self.headroom
    }

    /// Sets how many bytes of slot `i` to send.
    pub fn set_len(&mut self, i: usize, len: usize) {
        self.lens[i] = len.min(self.stride);
    }

    /// The bytes received in slot `i` by the last [`Batch::recv`].
    #[inline]
    pub fn received(&self, i: usize) -> &[u8] {
        let start = self.start(i);
        &self.data[start..start + self.lens[i]]
    }

    /// Slot `i`'s datagram with the last `prefix` bytes of its headroom in front (at most the
    /// headroom): write a header there and send the whole frame.
    #[inline]
    pub fn frame_mut(&mut self, i: usize, prefix: usize) -> &mut [u8] {
        let start = self.start(i);
        let prefix = prefix.min(self.headroom);
        &mut self.data[start - prefix..start + self.lens[i]]
    }

    /// [`Batch::frame_mut`], to read.
    #[inline]
    pub fn frame(&self, i: usize, prefix: usize) -> &[u8] {
        let start = self.start(i);
        let prefix = prefix.min(self.headroom);
        &self.data[start - prefix..start + self.lens[i]]
    }

    /// Where slot `i`'s datagram came from (last [`Batch::recv`]).
    #[inline]
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        sockaddr_to_std(&self.addrs[i])
    }

    fn prepare(&mut self, count: usize, with_addrs: bool, for_recv: bool) {
        self.recv_ready = false;
        for i in 0..count {
            let start = self.start(i);
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
        match self.try_recv(socket) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    /// Receives up to every slot without blocking; `WouldBlock` when nothing is there (what an
    /// event loop waits on).
    pub fn try_recv(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        loop {
            match self.recv_inner(socket, libc::MSG_DONTWAIT) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    /// Waits for at least one datagram (as long as the socket's `SO_RCVTIMEO` allows), then
    /// takes whatever else is already there; 0 when the wait timed out.
    pub fn recv_wait(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        match self.recv_inner(socket, libc::MSG_WAITFORONE) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            other => other,
        }
    }

    fn recv_inner(&mut self, socket: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<usize> {
        let count = self.slots();
        if self.recv_ready {
            // The pointers still hold (the buffers never move); what the kernel wrote goes.
            for hdr in &mut self.hdrs[..self.recv_dirty.min(count)] {
                hdr.msg_hdr.msg_namelen = socklen(mem::size_of::<libc::sockaddr_storage>());
                hdr.msg_hdr.msg_flags = 0;
                hdr.msg_len = 0;
            }
        } else {
            self.prepare(count, true, true);
            self.recv_ready = true;
        }
        // After a failure nobody says which headers the kernel touched: all are set up again.
        self.recv_dirty = count;
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
            return Err(io::Error::last_os_error());
        }
        let n = usize::try_from(n).unwrap_or(0);
        // The kernel wrote the headers of the datagrams it returned (and, to be safe, the next).
        self.recv_dirty = (n + 1).min(count);
        for i in 0..n {
            self.lens[i] = (self.hdrs[i].msg_len as usize).min(self.stride);
            self.addr_lens[i] = self.hdrs[i].msg_hdr.msg_namelen;
        }
        Ok(n)
    }
}

/// Sends each of `datagrams` to its destination with one `sendmmsg(2)` per
/// [`MAX_SEND_BATCH`] datagrams; returns how many the kernel took. A non-blocking socket whose
/// buffer fills takes fewer: the rest are not sent (lost, as UDP may lose them); an error
/// before the first datagram of a call is returned only when nothing was sent.
pub fn send_to_many<'a>(
    socket: BorrowedFd<'_>,
    datagrams: impl IntoIterator<Item = (&'a [u8], SocketAddr)>,
) -> io::Result<usize> {
    let mut datagrams = datagrams.into_iter().peekable();
    let mut sent = 0;
    while datagrams.peek().is_some() {
        // SAFETY: all-zero is a valid `sockaddr_storage`, `iovec` and `mmsghdr`.
        let mut addrs: [libc::sockaddr_storage; MAX_SEND_BATCH] = unsafe { mem::zeroed() };
        let mut iovs: [libc::iovec; MAX_SEND_BATCH] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; MAX_SEND_BATCH] = unsafe { mem::zeroed() };
        let mut count = 0;
        while count < MAX_SEND_BATCH {
            let Some((data, to)) = datagrams.next() else {
                break;
            };
            let len = std_to_sockaddr(to, &mut addrs[count]);
            iovs[count] = libc::iovec {
                iov_base: data.as_ptr().cast_mut().cast(),
                iov_len: data.len(),
            };
            hdrs[count].msg_hdr.msg_name = (&raw mut addrs[count]).cast();
            hdrs[count].msg_hdr.msg_namelen = len;
            hdrs[count].msg_hdr.msg_iov = &raw mut iovs[count];
            hdrs[count].msg_hdr.msg_iovlen = 1;
            count += 1;
        }
        let vlen = u32::try_from(count).unwrap_or(u32::MAX);
        // SAFETY: `hdrs[..count]` point at the addresses and iovecs above, which point at the
        // borrowed datagrams; the kernel only reads them, during the call.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                vlen,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if sent == 0 { Err(e) } else { Ok(sent) };
        }
        let n = usize::try_from(n).unwrap_or(0);
        sent += n;
        if n < count {
            return Ok(sent);
        }
    }
    Ok(sent)
}

/// Sends every one of `datagrams` to `to`, in order, with as few system calls as it can: each run
/// of equal-sized datagrams (the run's last may be shorter) goes as one UDP GSO send, other
/// datagrams with `sendmmsg`. Returns how many the kernel took; the first refusal ends the
/// call (a full buffer of a non-blocking socket: the rest are lost, as UDP may lose them).
///
/// When the kernel refuses GSO itself (no `UDP_SEGMENT`, an interface that cannot carry it, a
/// socket without UDP checksums: `EIO`, `EINVAL`, `ENOPROTOOPT`), that run is sent datagram by
/// datagram and `gso` says not to try again ([`Gso::in_use`]).
pub fn send_all_to(
    socket: BorrowedFd<'_>,
    to: SocketAddr,
    datagrams: &[&[u8]],
    gso: &Gso,
) -> usize {
    let mut sent = 0;
    while sent < datagrams.len() {
        let rest = &datagrams[sent..];
        let run = gso_run(rest);
        if run >= 2 && gso.in_use() {
            match send_segments(socket, to, &rest[..run]) {
                Ok(()) => {
                    sent += run;
                    continue;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
                    ) =>
                {
                    gso.refuse();
                }
                Err(_) => return sent,
            }
        }
        let chunk = if run >= 2 { run } else { 1 };
        let one = send_to_many(socket, rest[..chunk].iter().map(|d| (*d, to))).unwrap_or(0);
        sent += one;
        if one < chunk {
            return sent;
        }
    }
    sent
}

/// How many datagrams from the start of `datagrams` one GSO send can carry: all of the first
/// one's size, then at most one shorter, within [`MAX_SEGMENTS`] and [`MAX_GSO_BYTES`].
fn gso_run(datagrams: &[&[u8]]) -> usize {
    let Some(first) = datagrams.first() else {
        return 0;
    };
    let size = first.len();
    if size == 0 {
        return 1;
    }
    let mut total = 0;
    let mut run = 0;
    for d in datagrams.iter().take(MAX_SEGMENTS) {
        if d.len() > size || total + d.len() > MAX_GSO_BYTES {
            break;
        }
        total += d.len();
        run += 1;
        if d.len() < size {
            break;
        }
    }
    run
}

/// One `sendmsg(2)` with `UDP_SEGMENT`: `segments` (each as large as the first, the last maybe
/// shorter) leave as that many datagrams to `to`.
fn send_segments(socket: BorrowedFd<'_>, to: SocketAddr, segments: &[&[u8]]) -> io::Result<()> {
    let count = segments.len().min(MAX_SEGMENTS);
    let size = u16::try_from(segments.first().map_or(0, |s| s.len()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: all-zero is a valid `sockaddr_storage`, `iovec` and `msghdr`.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut iovs: [libc::iovec; MAX_SEGMENTS] = unsafe { mem::zeroed() };
    for (iov, segment) in iovs.iter_mut().zip(&segments[..count]) {
        *iov = libc::iovec {
            iov_base: segment.as_ptr().cast_mut().cast(),
            iov_len: segment.len(),
        };
    }
    // Room for one control message carrying a u16, 8-byte aligned.
    let mut control = [0u64; 4];
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_namelen = std_to_sockaddr(to, &mut addr);
    msg.msg_name = (&raw mut addr).cast();
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = count;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
    msg.msg_controllen = space.min(mem::size_of_val(&control));
    // SAFETY: `msg` has a control buffer of `msg_controllen` bytes, large enough for one
    // header and a u16 (CMSG_SPACE above), so CMSG_FIRSTHDR is non-null and in bounds.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
    }
    // SAFETY: every pointer in `msg` points at locals above, which outlive the call; the
    // kernel only reads them.
    let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &raw const msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `addr` into `storage`; returns its length.
fn std_to_sockaddr(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: `sockaddr_storage` is large and aligned enough for a `sockaddr_in`.
            let sin = unsafe { &mut *(std::ptr::from_mut(storage).cast::<libc::sockaddr_in>()) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            socklen(mem::size_of::<libc::sockaddr_in>())
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 = unsafe { &mut *(std::ptr::from_mut(storage).cast::<libc::sockaddr_in6>()) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_scope_id = v6.scope_id();
            socklen(mem::size_of::<libc::sockaddr_in6>())
        }
    }
}

fn socklen(n: usize) -> libc::socklen_t {
    libc::socklen_t::try_from(n).unwrap_or(libc::socklen_t::MAX)
}

#[inline]
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
    fn a_header_goes_in_front_of_a_received_datagram_without_a_copy() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind b");
        let c = UdpSocket::bind("127.0.0.1:0").expect("bind c");
        a.send_to(b"payload", b.local_addr().expect("addr"))
            .expect("send");
        let mut batch = Batch::with_headroom(4, 64, 4);
        let got = recv_all(&mut batch, &b, 1);
        assert_eq!(got, vec![b"payload".to_vec()]);
        batch.frame_mut(0, 4)[..4].copy_from_slice(&[0x40, 0x00, 0x00, 0x07]);
        assert_eq!(batch.frame(0, 4), b"\x40\x00\x00\x07payload");
        // Out again, to two destinations in one call.
        let frame = batch.frame(0, 4).to_vec();
        let to = vec![
            (frame.as_slice(), a.local_addr().expect("addr")),
            (b"other".as_slice(), c.local_addr().expect("addr")),
        ];
        assert_eq!(send_to_many(b.as_fd(), to).expect("send"), 2);
        let mut back = Batch::new(4, 64);
        assert_eq!(recv_all(&mut back, &a, 1), vec![frame]);
        assert_eq!(back.source(0), Some(b.local_addr().expect("addr")));
        let mut other = Batch::new(4, 64);
        assert_eq!(recv_all(&mut other, &c, 1), vec![b"other".to_vec()]);
    }

    #[test]
    fn ipv6_destinations_go_out_of_an_ipv6_socket() {
        let Ok(a) = UdpSocket::bind("[::1]:0") else {
            return; // no IPv6 loopback on this host
        };
        let b = UdpSocket::bind("[::1]:0").expect("bind b");
        let to = [(b"six".as_slice(), b.local_addr().expect("addr"))];
        assert_eq!(send_to_many(a.as_fd(), to).expect("send"), 1);
        let mut got = Batch::new(2, 16);
        assert_eq!(recv_all(&mut got, &b, 1), vec![b"six".to_vec()]);
        assert_eq!(got.source(0), Some(a.local_addr().expect("addr")));
    }

    #[test]
    fn runs_of_equal_datagrams_go_as_one_gso_send_and_arrive_as_datagrams() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind b");
        let to = b.local_addr().expect("addr");
        // Four of 10 bytes and a shorter one (one GSO run), then 20 bytes and 3 (a second run
        // of two), then one of 7 (alone).
        let sizes = [10, 10, 10, 10, 6, 20, 3, 7];
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![u8::try_from(i).expect("small"); n])
            .collect();
        let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(gso_run(&slices), 5);
        assert_eq!(gso_run(&slices[5..]), 2);
        assert_eq!(gso_run(&slices[7..]), 1);
        let gso = Gso::new();
        assert_eq!(send_all_to(a.as_fd(), to, &slices, &gso), slices.len());
        assert!(gso.in_use(), "loopback takes UDP GSO");
        let mut got = Batch::new(16, 64);
        assert_eq!(recv_all(&mut got, &b, slices.len()), payloads);
    }

    #[test]
    fn a_refused_gso_send_falls_back_to_one_datagram_each() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind b");
        // Without UDP checksums (SO_NO_CHECK) the kernel refuses GSO (EINVAL).
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on an open socket with a c_int value and its size.
        let rc = unsafe {
            libc::setsockopt(
                a.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&raw const one).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_NO_CHECK: {}", io::Error::last_os_error());
        let payloads: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 32]).collect();
        let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let gso = Gso::new();
        let sent = send_all_to(a.as_fd(), b.local_addr().expect("addr"), &slices, &gso);
        assert_eq!(sent, slices.len(), "every datagram sent");
        assert!(!gso.in_use(), "the refusal is remembered");
        let mut got = Batch::new(16, 64);
        assert_eq!(recv_all(&mut got, &b, slices.len()), payloads);
        // The next run goes datagram by datagram straight away.
        assert_eq!(
            send_all_to(a.as_fd(), b.local_addr().expect("addr"), &slices, &gso),
            slices.len()
        );
        assert_eq!(recv_all(&mut got, &b, slices.len()), payloads);
    }

    #[test]
    fn a_gso_run_is_bounded_by_the_segment_count_and_size() {
        let big = vec![0u8; 1400];
        let many: Vec<&[u8]> = (0..100).map(|_| big.as_slice()).collect();
        assert_eq!(gso_run(&many), MAX_GSO_BYTES / 1400);
        let small = [0u8; 4];
        let many: Vec<&[u8]> = (0..100).map(|_| small.as_slice()).collect();
        assert_eq!(gso_run(&many), MAX_SEGMENTS);
        assert_eq!(gso_run(&[]), 0);
    }

    #[test]
    fn try_recv_says_would_block() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        a.set_nonblocking(true).expect("nonblocking");
        let mut batch = Batch::new(4, 32);
        let e = batch.try_recv(a.as_fd()).expect_err("nothing there");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn nothing_to_receive_is_zero() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut batch = Batch::new(4, 32);
        assert_eq!(batch.recv(a.as_fd()).expect("recv"), 0);
    }

    /// Waits (2 s at most) until `batch` receives something; what arrived, with its sources.
    fn receive(batch: &mut Batch, socket: &UdpSocket) -> Vec<(Vec<u8>, SocketAddr)> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let n = batch.recv(socket.as_fd()).expect("recv");
            if n > 0 || Instant::now() >= deadline {
                return (0..n)
                    .map(|i| (batch.received(i).to_vec(), batch.source(i).expect("source")))
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn receives_after_receives_and_sends_see_only_their_own_datagrams() {
        let at = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (one, two) = (
            UdpSocket::bind("127.0.0.1:0").expect("bind"),
            UdpSocket::bind("127.0.0.1:0").expect("bind"),
        );
        let (one_addr, two_addr) = (one.local_addr().unwrap(), two.local_addr().unwrap());
        let to = at.local_addr().unwrap();
        let mut batch = Batch::new(4, 2048);
        // Three long datagrams, then one short one from another socket, then a full batch
        // and one more.
        for _ in 0..3 {
            one.send_to(&[1; 1000], to).expect("send");
        }
        let mut got = Vec::new();
        while got.len() < 3 {
            got.extend(receive(&mut batch, &at));
        }
        assert_eq!(got, vec![(vec![1; 1000], one_addr); 3]);
        two.send_to(b"ab", to).expect("send");
        assert_eq!(receive(&mut batch, &at), vec![(b"ab".to_vec(), two_addr)]);
        // A send with the batch in between (its headers set up for sending), then receive.
        batch.slot_mut(0)[..3].copy_from_slice(b"out");
        batch.set_len(0, 3);
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sender.connect(one_addr).expect("connect");
        assert_eq!(batch.send(sender.as_fd(), 1).expect("send"), 1);
        let mut buf = [0; 8];
        assert_eq!(one.recv(&mut buf).expect("recv"), 3);
        for i in 0..5u8 {
            let from = if i % 2 == 0 { &one } else { &two };
            from.send_to(&vec![i; usize::from(i) + 1], to)
                .expect("send");
        }
        let mut got = Vec::new();
        while got.len() < 5 {
            let more = receive(&mut batch, &at);
            assert!(!more.is_empty(), "only {} of 5 arrived", got.len());
            got.extend(more);
        }
        let want: Vec<_> = (0..5u8)
            .map(|i| {
                (
                    vec![i; usize::from(i) + 1],
                    if i % 2 == 0 { one_addr } else { two_addr },
                )
            })
            .collect();
        assert_eq!(got, want);
    }
}
