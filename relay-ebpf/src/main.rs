//! The kernel programs of xturn's fast path: one relay, two hooks.
//!
//! [`program::xturn_xdp`] runs at XDP (on the driver's frame, before a socket buffer exists) and
//! [`program::xturn_tc`] at TC clsact ingress (on the socket buffer, so checksums of datagrams
//! that local sockets sent stay right and redirected frames are delivered into any device).
//! Both share the parser and the plan ([`program::process`]), which reads the frame through
//! [`program::Frame`], parses Ethernet/IP/UDP and then:
//! - a datagram from a peer to a relayed address with an entry in `PEERS` becomes ChannelData to
//!   that allocation's client;
//! - ChannelData from a client to a listener with an entry in `CHANNELS` becomes a plain datagram
//!   from the relayed address to the peer (or, when the peer is itself a relayed address of this
//!   relay, ChannelData straight to that allocation's client);
//! - everything else passes to the kernel stack, and so to the agent.
//!
//! Only the last step differs: [`program::Frame::rewrite`] moves the frame's head and tail and
//! writes the headers directly at XDP, and goes through the socket-buffer helpers at TC (which
//! keep the UDP header where it is, so a partial checksum's start stays valid).
//!
//! Every exit is counted in `STATS` by its [`relay_common::Reason`]. XDP packet memory is read
//! and written only through [`program::ptr_at`] / [`program::ptr_at_mut`], which prove the bounds
//! to the verifier; TC reads and writes through `bpf_skb_load_bytes` / `bpf_skb_store_bytes`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        EbpfContext as _,
        bindings::{
            __sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR,
            BPF_F_RECOMPUTE_CSUM, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT,
            bpf_fib_lookup as FibParams, xdp_action,
        },
        helpers::generated::{
            bpf_check_mtu, bpf_fib_lookup, bpf_l4_csum_replace, bpf_redirect, bpf_redirect_neigh,
            bpf_skb_change_proto, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes,
            bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
        },
        macros::{classifier, map, xdp},
        maps::{HashMap, PerCpuArray},
        programs::{TcContext, XdpContext},
    };
    use aya_log_ebpf::debug;
    use relay_common::{
        ChannelKey, ChannelToPeer, Counter, DEFAULT_MAX_CHANNELS, Endpoint, PeerKey, PeerToClient,
        Reason,
    };
    use relay_ebpf::{
        checksum::{UdpDelta, UdpSide, checksum},
        headers::{
            ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_UDP, IPV4_LEN, IPV6_LEN, Ipv4Hdr,
            Ipv6Hdr, UDP_LEN, UdpHdr,
        },
        parse::{Datagram, MAX_DATA, Packet, Refused, channel_header, channel_lengths, parse},
    };

    /// Packets and bytes per [`Reason`], per CPU.
    #[map(name = "STATS")]
    static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

    /// Client → peer: (client, listener, channel) → (relayed, peer). Not preallocated, so memory
    /// follows the number of bindings; the agent may resize it before loading.
    #[map(name = "CHANNELS")]
    static CHANNELS: HashMap<ChannelKey, ChannelToPeer> =
        HashMap::with_max_entries(DEFAULT_MAX_CHANNELS, BPF_F_NO_PREALLOC);

    /// Peer → client: (peer, relayed) → (listener, client, channel).
    #[map(name = "PEERS")]
    static PEERS: HashMap<PeerKey, PeerToClient> =
        HashMap::with_max_entries(DEFAULT_MAX_CHANNELS, BPF_F_NO_PREALLOC);

    /// The listener addresses (value unused).
    #[map(name = "LISTENERS")]
    static LISTENERS: HashMap<Endpoint, u8> = HashMap::with_max_entries(256, 0);

    /// Per-CPU working memory for the structs too large for the 512-byte BPF stack.
    #[map(name = "SCRATCH")]
    static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

    /// Per-CPU buffer the TC program moves ChannelData payloads through.
    #[map(name = "MOVE_BUFFER")]
    static MOVE_BUFFER: PerCpuArray<[u8; MOVE_BUFFER_LEN]> = PerCpuArray::with_max_entries(1, 0);

    #[repr(C)]
    struct Scratch {
        datagram: Datagram,
        rewritten: Rewritten,
        channel_key: ChannelKey,
        peer_key: PeerKey,
        fib: FibParams,
        /// The interface the frame arrived on.
        ingress: u32,
    }

    /// Size of [`MOVE_BUFFER`]: a power of two above [`MAX_DATA`], so a length masked with
    /// `MOVE_BUFFER_LEN - 1` is provably in bounds.
    const MOVE_BUFFER_LEN: usize = 4096;

    /// TTL / hop limit of datagrams the relay originates, as its sockets would.
    const TTL: u8 = 64;

    /// Where a packet goes, and why.
    #[derive(Clone, Copy)]
    enum Outcome {
        Pass(Reason),
        Drop(Reason),
        /// XDP only: back out of the interface it came in on.
        Tx(Reason),
        /// Out of interface `1`, whose next hop's MAC address is written already.
        Redirect(Reason, u32),
        /// TC only: out of interface `1`, the kernel resolving the next hop (route and
        /// neighbour) as for a datagram the host sends itself.
        RedirectNeigh(Reason, u32),
    }

    /// A frame as the shared relay logic sees it: its length, reads at offsets, and the
    /// hook-specific rewrite.
    trait Frame: Sized {
        /// Bytes from the Ethernet header to the end of the frame.
        fn frame_len(&self) -> usize;
        /// A copy of the `T` at `offset`, or `None` past the end.
        fn load<T: Copy>(&self, offset: usize) -> Option<T>;
        /// Turns the datagram in `s.datagram` into `s.rewritten` and says where it goes.
        fn rewrite(&self, s: &mut Scratch, reason: Reason) -> Outcome;
    }

    impl Frame for XdpContext {
        #[inline(always)]
        fn frame_len(&self) -> usize {
            self.data_end() - self.data()
        }

        #[inline(always)]
        fn load<T: Copy>(&self, offset: usize) -> Option<T> {
            let p = ptr_at::<T>(self, offset)?;
            // SAFETY: bounds checked by `ptr_at`; packet memory is plain bytes and `T` is read
            // unaligned.
            Some(unsafe { core::ptr::read_unaligned(p) })
        }

        #[inline(always)]
        fn rewrite(&self, s: &mut Scratch, reason: Reason) -> Outcome {
            xdp_rewrite(self, s, reason)
        }
    }

    impl Frame for TcContext {
        #[inline(always)]
        fn frame_len(&self) -> usize {
            self.len() as usize
        }

        #[inline(always)]
        fn load<T: Copy>(&self, offset: usize) -> Option<T> {
            self.skb.load::<T>(offset).ok()
        }

        #[inline(always)]
        fn rewrite(&self, s: &mut Scratch, reason: Reason) -> Outcome {
            tc_rewrite(self, s, reason)
        }
    }

    /// The fast path at XDP.
    #[xdp]
    pub fn xturn_xdp(ctx: XdpContext) -> u32 {
        let len = (ctx.data_end() - ctx.data()) as u64;
        // Read once: the verifier refuses loads through a ctx pointer the compiler offset and
        // kept around.
        let ingress = ctx.ingress_ifindex() as u32;
        let (reason, action) = match run(&ctx, ingress) {
            Outcome::Pass(r) => (r, xdp_action::XDP_PASS),
            Outcome::Drop(r) => (r, xdp_action::XDP_DROP),
            Outcome::Tx(r) => (r, xdp_action::XDP_TX),
            // SAFETY: a helper call with an interface index from the kernel's FIB.
            Outcome::Redirect(r, ifindex) => (r, unsafe { bpf_redirect(ifindex, 0) } as u32),
            // Not produced at XDP.
            Outcome::RedirectNeigh(r, _) => (r, xdp_action::XDP_PASS),
        };
        finish(&ctx, reason, len);
        action
    }

    /// The fast path at TC (clsact ingress): for veths and other devices where frames sent
    /// from XDP are not delivered, and for datagrams with partial checksums.
    #[classifier]
    pub fn xturn_tc(ctx: TcContext) -> i32 {
        let len = u64::from(ctx.len());
        // SAFETY: the context pointer is the kernel's `__sk_buff` for this run.
        let (ingress, gso_size) = unsafe {
            let skb = ctx.as_ptr() as *const __sk_buff;
            ((*skb).ingress_ifindex, (*skb).gso_size)
        };
        let outcome = if gso_size != 0 {
            // Several datagrams in one buffer (UDP GSO): the stack splits them.
            Outcome::Pass(Reason::Unsupported)
        } else {
            run(&ctx, ingress)
        };
        let (reason, action) = match outcome {
            Outcome::Pass(r) => (r, TC_ACT_OK as i32),
            Outcome::Drop(r) => (r, TC_ACT_SHOT as i32),
            // SAFETY (both): helper calls with an interface index the agent or the FIB gave.
            Outcome::Redirect(r, ifindex) => (r, unsafe { bpf_redirect(ifindex, 0) } as i32),
            Outcome::RedirectNeigh(r, ifindex) => {
                (
                    r,
                    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) } as i32,
                )
            }
            // Not produced at TC.
            Outcome::Tx(r) => (r, TC_ACT_OK as i32),
        };
        finish(&ctx, reason, len);
        action
    }

    /// Counts the exit and, for ChannelData dropped as malformed, writes a log record.
    #[inline(always)]
    fn finish<C: aya_ebpf::EbpfContext>(ctx: &C, reason: Reason, len: u64) {
        count(reason, len);
        if reason == Reason::ChannelMalformed {
            // Rare and ours: worth a record. The agent sets the level at load, so this costs
            // nothing unless debug logging is on.
            debug!(
                ctx,
                "dropped ChannelData whose length exceeds its datagram ({} bytes)", len
            );
        }
    }

    /// The shared relay: scratch memory, then [`process`].
    #[inline(always)]
    fn run<F: Frame>(ctx: &F, ingress: u32) -> Outcome {
        let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
            return Outcome::Pass(Reason::Unsupported);
        };
        // SAFETY: this CPU's slot of a per-CPU array; nothing else uses it while we run.
        let s = unsafe { &mut *scratch };
        s.ingress = ingress;
        process(ctx, s)
    }

    /// A program that passes everything. Attached to the peer end of a veth so that frames
    /// transmitted or redirected into the veth are not dropped (a veth requirement).
    #[xdp]
    pub fn xturn_xdp_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    #[inline(always)]
    fn count(reason: Reason, bytes: u64) {
        if let Some(counter) = STATS.get_ptr_mut(reason.index()) {
            // SAFETY: the pointer comes from the map and is this CPU's slot; per-CPU values are
            // not shared while the program runs.
            unsafe {
                (*counter).packets += 1;
                (*counter).bytes += bytes;
            }
        }
    }

    /// Adds to a per-entry counter. The BPF target has no atomic read-modify-write in Rust's
    /// `core`, so this is a plain add: exact when a flow is steered to one CPU (RSS hashes the
    /// 5-tuple, and each map entry belongs to one flow), approximate if a flow's packets are
    /// processed on several CPUs at once.
    #[inline(always)]
    fn add_shared(counter: *mut u64, n: u64) {
        // SAFETY: `counter` points at an 8-byte aligned u64 inside a map value, which stays
        // valid while the program runs (RCU).
        unsafe { *counter += n };
    }

    /// The two ends of a rewritten datagram and what changes around its data.
    #[derive(Clone, Copy)]
    struct Rewritten {
        src: Endpoint,
        dst: Endpoint,
        /// Bytes of ChannelData header taken off the front of the payload (0 or 4).
        strip: usize,
        /// The ChannelData header to put in front of the data, if any.
        prepend: Option<[u8; 4]>,
        /// Length of the data that is carried over unchanged.
        data_len: u16,
        /// Padding bytes after the data in the original (0–3), and their values.
        pad_len: u8,
        padding: [u8; 3],
        /// The interface the host's output route to the new destination leaves by, as the
        /// agent found it (0: unknown). Used at TC.
        egress: u32,
    }

    /// Parses the frame, finds its binding and plans the rewrite; `Frame::rewrite` does the
    /// rest. Shared by both hooks.
    #[inline(always)]
    fn process<F: Frame>(ctx: &F, s: &mut Scratch) -> Outcome {
        if let Err(reason) = parse(&Loads(ctx), &mut s.datagram) {
            return Outcome::Pass(reason);
        }

        // Peer → client.
        s.peer_key.peer = s.datagram.src;
        s.peer_key.relayed = s.datagram.dst;
        if let Some(entry) = PEERS.get_ptr_mut(&s.peer_key) {
            let data_len = s.datagram.payload_len();
            // SAFETY: a valid map value pointer (RCU-protected while we run).
            unsafe { plan_to_client(&mut s.rewritten, entry, data_len, 0) };
            s.rewritten.padding = [0; 3];
            s.rewritten.pad_len = 0;
            let outcome = ctx.rewrite(s, Reason::RelayedToClient);
            if is_relayed(outcome) {
                // SAFETY: as above.
                unsafe {
                    add_shared(&raw mut (*entry).packets, 1);
                    add_shared(&raw mut (*entry).bytes, u64::from(data_len));
                }
            }
            return outcome;
        }

        // Client → listener: only ChannelData is handled here.
        // SAFETY: the lookup result is only tested for presence.
        if unsafe { LISTENERS.get(&s.datagram.dst) }.is_none() {
            return Outcome::Pass(Reason::UdpPassed);
        }
        let offset = s.datagram.payload_offset();
        let Some(header) = channel_header(&Loads(ctx), &s.datagram) else {
            return Outcome::Pass(Reason::ListenerPassed);
        };
        s.channel_key.client = s.datagram.src;
        s.channel_key.listener = s.datagram.dst;
        s.channel_key.channel = [header[0], header[1]];
        s.channel_key._pad = [0; 2];
        let Some(entry) = CHANNELS.get_ptr_mut(&s.channel_key) else {
            return Outcome::Pass(Reason::ChannelUnbound);
        };
        let (data_len, pad_len) = match channel_lengths(header, s.datagram.payload_len()) {
            Ok(lengths) => lengths,
            Err(Refused::Drop(reason)) => return Outcome::Drop(reason),
            Err(Refused::Pass(reason)) => return Outcome::Pass(reason),
        };
        s.rewritten.pad_len = pad_len;
        let Some(padding) = read_padding(ctx, offset, s.datagram.payload_len(), pad_len) else {
            return Outcome::Pass(Reason::Truncated);
        };
        s.rewritten.padding = padding;

        // Hairpin: the peer is another relayed address of ours with a channel back to its client.
        // SAFETY: a valid map value pointer.
        unsafe {
            s.peer_key.peer = (*entry).relayed;
            s.peer_key.relayed = (*entry).peer;
        }
        let back = PEERS.get_ptr_mut(&s.peer_key);
        let reason = match back {
            Some(other) => {
                // SAFETY: a valid map value pointer.
                unsafe { plan_to_client(&mut s.rewritten, other, data_len, 4) };
                Reason::RelayedHairpin
            }
            None => {
                // SAFETY: a valid map value pointer.
                unsafe {
                    s.rewritten.src = (*entry).relayed;
                    s.rewritten.dst = (*entry).peer;
                    s.rewritten.egress = (*entry).egress_ifindex;
                }
                s.rewritten.strip = 4;
                s.rewritten.prepend = None;
                s.rewritten.data_len = data_len;
                Reason::RelayedToPeer
            }
        };
        let outcome = ctx.rewrite(s, reason);
        if is_relayed(outcome) {
            // SAFETY: map value pointers stay valid while the program runs (RCU).
            unsafe {
                add_shared(&raw mut (*entry).packets, 1);
                add_shared(&raw mut (*entry).bytes, u64::from(data_len));
                if let Some(other) = back {
                    add_shared(&raw mut (*other).packets, 1);
                    add_shared(&raw mut (*other).bytes, u64::from(data_len));
                }
            }
        }
        outcome
    }

    /// Plans ChannelData to the client of a `PEERS` entry, after taking `strip` bytes off the
    /// front of the payload.
    ///
    /// # Safety
    /// `entry` must be a valid map value pointer.
    #[inline(always)]
    unsafe fn plan_to_client(
        plan: &mut Rewritten,
        entry: *const PeerToClient,
        data_len: u16,
        strip: usize,
    ) {
        let [len_hi, len_lo] = data_len.to_be_bytes();
        // SAFETY: guaranteed by the caller.
        unsafe {
            plan.src = (*entry).listener;
            plan.dst = (*entry).client;
            plan.prepend = Some([(*entry).channel[0], (*entry).channel[1], len_hi, len_lo]);
            plan.egress = (*entry).egress_ifindex;
        }
        plan.strip = strip;
        plan.data_len = data_len;
    }

    #[inline(always)]
    const fn is_relayed(outcome: Outcome) -> bool {
        matches!(
            outcome,
            Outcome::Tx(_) | Outcome::Redirect(..) | Outcome::RedirectNeigh(..)
        )
    }

    /// The (at most three) padding bytes at the end of a ChannelData payload of `payload_len`
    /// bytes at `offset`. They are read as the payload's last four bytes (there are always four:
    /// the ChannelData header), a fixed-size read the verifier can bound.
    #[inline(always)]
    fn read_padding<F: Frame>(
        ctx: &F,
        offset: usize,
        payload_len: u16,
        pad_len: u8,
    ) -> Option<[u8; 3]> {
        if pad_len == 0 {
            return Some([0; 3]);
        }
        // Masked so the verifier sees a bounded offset (payload_len ≤ 4 + MAX_DATA + 3).
        let tail = offset + ((usize::from(payload_len) - 4) & 0x1fff);
        let w = ctx.load::<[u8; 4]>(tail)?;
        Some(match pad_len {
            1 => [w[3], 0, 0],
            2 => [w[2], w[3], 0],
            _ => [w[1], w[2], w[3]],
        })
    }

    /// A hook's frame as the parser reads it.
    struct Loads<'a, F>(&'a F);

    impl<F: Frame> Packet for Loads<'_, F> {
        #[inline(always)]
        fn frame_len(&self) -> usize {
            self.0.frame_len()
        }

        #[inline(always)]
        fn load<T: Copy>(&self, offset: usize) -> Option<T> {
            self.0.load(offset)
        }
    }

    /// What both hooks need before rewriting: the UDP checksum change (`None`: the datagram
    /// has no checksum and keeps none), the new UDP length and the new IP header length, or the
    /// reason it stays as it is.
    #[inline(always)]
    fn plan_checksum<F: Frame>(ctx: &F, s: &Scratch) -> Result<(Option<UdpDelta>, u16), Reason> {
        let old = &s.datagram;
        let new = &s.rewritten;
        let out_v4 = new.dst.is_v4();
        if new.src.is_v4() != out_v4 {
            return Err(Reason::Unsupported);
        }
        let prepend_len: u16 = if new.prepend.is_some() { 4 } else { 0 };
        let new_udp_len = UDP_LEN as u16 + prepend_len + new.data_len;
        // UDP over IPv4 may carry no checksum; IPv6 needs one, which would mean summing the data.
        if old.udp_check == 0 {
            return if out_v4 {
                Ok((None, new_udp_len))
            } else {
                Err(Reason::NoChecksum)
            };
        }
        let stripped = if new.strip == 4 {
            // The old ChannelData header is re-read here: it is at a fixed offset.
            Some(
                ctx.load::<[u8; 4]>(old.payload_offset())
                    .ok_or(Reason::Truncated)?,
            )
        } else {
            None
        };
        let delta = UdpDelta::between(
            &UdpSide {
                v4: !old.v6,
                src_ip: &old.src.ip,
                dst_ip: &old.dst.ip,
                src_port: old.src.port,
                dst_port: old.dst.port,
                udp_len: old.udp_len,
            },
            &UdpSide {
                v4: out_v4,
                src_ip: &new.src.ip,
                dst_ip: &new.dst.ip,
                src_port: new.src.port,
                dst_port: new.dst.port,
                udp_len: new_udp_len,
            },
            stripped,
            new.data_len,
            new.padding,
            new.pad_len,
            new.prepend,
        );
        Ok((Some(delta), new_udp_len))
    }

    /// The new IPv4 header (with its checksum), as the relay's sockets would send it.
    #[inline(always)]
    fn ipv4_header(old: &Datagram, new: &Rewritten, total_len: u16) -> Ipv4Hdr {
        let mut h = Ipv4Hdr {
            version_ihl: 0x45,
            tos: old.tos,
            total_len: total_len.to_be_bytes(),
            id: [0, 0],
            frag_off: [0x40, 0], // DF, as the relay's sockets send
            ttl: TTL,
            protocol: IPPROTO_UDP,
            check: [0, 0],
            src: new.src.v4_octets(),
            dst: new.dst.v4_octets(),
        };
        // SAFETY: `Ipv4Hdr` is 20 plain bytes.
        let bytes: [u8; IPV4_LEN] = unsafe { core::mem::transmute(h) };
        h.check = checksum(&bytes).to_be_bytes();
        h
    }

    /// The new IPv6 header.
    #[inline(always)]
    fn ipv6_header(old: &Datagram, new: &Rewritten, payload_len: u16) -> Ipv6Hdr {
        Ipv6Hdr {
            version_tc_flow: [0x60 | (old.tos >> 4), old.tos << 4, 0, 0],
            payload_len: payload_len.to_be_bytes(),
            next_header: IPPROTO_UDP,
            hop_limit: TTL,
            src: new.src.ip,
            dst: new.dst.ip,
        }
    }

    /// XDP: resolves the next hop, fixes the UDP checksum, moves the head and tail, and writes
    /// fresh Ethernet, IP and UDP headers (and the ChannelData header) in front of the
    /// unchanged data.
    #[inline(always)]
    fn xdp_rewrite(ctx: &XdpContext, s: &mut Scratch, reason: Reason) -> Outcome {
        let (delta, new_udp_len) = match plan_checksum(ctx, s) {
            Ok(plan) => plan,
            Err(reason) => return Outcome::Pass(reason),
        };
        let ingress = s.ingress;
        let old = &s.datagram;
        let new = &s.rewritten;
        let out_v4 = new.dst.is_v4();
        let prepend_len: usize = if new.prepend.is_some() { 4 } else { 0 };
        let ip_len = if out_v4 { IPV4_LEN } else { IPV6_LEN };

        // The next hop, before anything changes: if it is unknown the packet goes up unchanged.
        let Some(hop) = fib_lookup(
            ctx,
            ingress,
            &mut s.fib,
            new,
            out_v4,
            ip_len as u16 + new_udp_len,
        ) else {
            return Outcome::Pass(Reason::NoRoute);
        };
        let udp_check = match delta {
            Some(delta) => delta.apply(old.udp_check),
            None => 0,
        };

        // Move the head so the data stays where it is, then trim padding and any trailer.
        let old_headers = old.payload_offset() + new.strip;
        let new_headers = ETH_LEN + ip_len + UDP_LEN + prepend_len;
        let delta = old_headers as i32 - new_headers as i32;
        // SAFETY: helper calls on our own context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
            return Outcome::Pass(Reason::Unsupported);
        }
        let frame_len = ctx.data_end() - ctx.data();
        let wanted = new_headers + usize::from(new.data_len);
        if frame_len > wanted {
            let trim = (frame_len - wanted) as i32;
            // SAFETY: as above.
            if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -trim) } != 0 {
                return Outcome::Drop(Reason::Unsupported);
            }
        }

        let Some(eth) = ptr_at_mut::<EthHdr>(ctx, 0) else {
            return Outcome::Drop(Reason::Truncated);
        };
        // SAFETY (all writes below): bounds checked by `ptr_at_mut`.
        unsafe {
            (*eth).dst = hop.dmac;
            (*eth).src = hop.smac;
            (*eth).ether_type = if out_v4 { ETH_P_IPV4 } else { ETH_P_IPV6 }.to_be_bytes();
        }
        let udp_offset = if out_v4 {
            let Some(ip) = ptr_at_mut::<Ipv4Hdr>(ctx, ETH_LEN) else {
                return Outcome::Drop(Reason::Truncated);
            };
            unsafe { *ip = ipv4_header(old, new, IPV4_LEN as u16 + new_udp_len) };
            ETH_LEN + IPV4_LEN
        } else {
            let Some(ip) = ptr_at_mut::<Ipv6Hdr>(ctx, ETH_LEN) else {
                return Outcome::Drop(Reason::Truncated);
            };
            unsafe { *ip = ipv6_header(old, new, new_udp_len) };
            ETH_LEN + IPV6_LEN
        };
        let Some(udp) = ptr_at_mut::<UdpHdr>(ctx, udp_offset) else {
            return Outcome::Drop(Reason::Truncated);
        };
        unsafe {
            *udp = UdpHdr {
                src_port: new.src.port,
                dst_port: new.dst.port,
                len: new_udp_len.to_be_bytes(),
                check: udp_check.to_be_bytes(),
            };
        }
        if let Some(cd) = new.prepend {
            let Some(at) = ptr_at_mut::<[u8; 4]>(ctx, udp_offset + UDP_LEN) else {
                return Outcome::Drop(Reason::Truncated);
            };
            unsafe { *at = cd };
        }

        if hop.ifindex == ingress {
            Outcome::Tx(reason)
        } else {
            Outcome::Redirect(reason, hop.ifindex)
        }
    }

    /// TC: the same rewrite on the socket buffer, keeping the UDP header where it is in memory
    /// (a partial checksum's start points at it): the ChannelData header is taken off or put on
    /// by moving the data by four bytes, a change of address family grows or shrinks the space
    /// in front of the IP header, and the checksum goes through `bpf_l4_csum_replace`, which
    /// knows whether it is full or partial. The host's neighbour table resolves the next hop
    /// on the interface the agent found for the destination (no forwarding needed).
    #[inline(always)]
    fn tc_rewrite(ctx: &TcContext, s: &mut Scratch, reason: Reason) -> Outcome {
        let (delta, new_udp_len) = match plan_checksum(ctx, s) {
            Ok(plan) => plan,
            Err(reason) => return Outcome::Pass(reason),
        };
        let old = &s.datagram;
        let new = &s.rewritten;
        if new.egress == 0 {
            return Outcome::Pass(Reason::NoRoute);
        }
        let out_v4 = new.dst.is_v4();
        let skb = ctx.as_ptr() as *mut __sk_buff;
        let old_ip_len = if old.v6 { IPV6_LEN } else { IPV4_LEN };
        let new_ip_len = if out_v4 { IPV4_LEN } else { IPV6_LEN };
        let new_frame_len = ETH_LEN + new_ip_len + usize::from(new_udp_len);

        // Too big for the egress interface: userspace sends it (fragmenting, or not at all).
        let mut mtu_len: u32 = 0;
        let len_diff = new_frame_len as i32 - ctx.len() as i32;
        // SAFETY: a helper call with our context and a stack variable.
        if unsafe { bpf_check_mtu(skb.cast(), new.egress, &mut mtu_len, len_diff, 0) } != 0 {
            return Outcome::Pass(Reason::NoRoute);
        }

        // The data: move it by four bytes when a ChannelData header goes or comes, and cut
        // padding and any trailer.
        let data_start = ETH_LEN + old_ip_len + UDP_LEN;
        let n = usize::from(new.data_len);
        match (new.strip, new.prepend.is_some()) {
            (4, false) => {
                if move_data(ctx, data_start + 4, data_start, n).is_err()
                    // SAFETY: a helper call with our context.
                    || unsafe { bpf_skb_change_tail(skb, (data_start + n) as u32, 0) } != 0
                {
                    return Outcome::Drop(Reason::Unsupported);
                }
            }
            (0, true) => {
                // SAFETY: as above.
                if unsafe { bpf_skb_change_tail(skb, (data_start + 4 + n) as u32, 0) } != 0
                    || move_data(ctx, data_start, data_start + 4, n).is_err()
                {
                    return Outcome::Drop(Reason::Unsupported);
                }
            }
            _ => {
                // A hairpin: one ChannelData header for another, in place.
                // SAFETY: as above.
                if unsafe { bpf_skb_change_tail(skb, (data_start + 4 + n) as u32, 0) } != 0 {
                    return Outcome::Drop(Reason::Unsupported);
                }
            }
        }
        if old.v6 == out_v4 {
            let proto: u16 = if out_v4 { ETH_P_IPV4 } else { ETH_P_IPV6 };
            // SAFETY: as above. It grows or shrinks the room after the MAC header by 20 bytes.
            if unsafe { bpf_skb_change_proto(skb, proto.to_be(), 0) } != 0 {
                return Outcome::Drop(Reason::Unsupported);
            }
        }

        // The headers. The MAC addresses are the neighbour subsystem's to fill in.
        let flags = u64::from(BPF_F_RECOMPUTE_CSUM);
        let ether_type = if out_v4 { ETH_P_IPV4 } else { ETH_P_IPV6 }.to_be_bytes();
        let mut stored = ctx.store(12, &ether_type, flags).is_ok();
        stored &= if out_v4 {
            let ip = ipv4_header(old, new, IPV4_LEN as u16 + new_udp_len);
            ctx.store(ETH_LEN, &ip, flags).is_ok()
        } else {
            let ip = ipv6_header(old, new, new_udp_len);
            ctx.store(ETH_LEN, &ip, flags).is_ok()
        };
        let udp_offset = ETH_LEN + new_ip_len;
        let udp = UdpHdr {
            src_port: new.src.port,
            dst_port: new.dst.port,
            len: new_udp_len.to_be_bytes(),
            check: old.udp_check.to_be_bytes(),
        };
        stored &= ctx.store(udp_offset, &udp, flags).is_ok();
        if let Some(cd) = new.prepend {
            stored &= ctx.store(udp_offset + UDP_LEN, &cd, flags).is_ok();
        }
        if let Some(delta) = delta {
            let check = (udp_offset + 6) as u32;
            let raw = |d: u16| u64::from(u16::from_ne_bytes(d.to_be_bytes()));
            let mangled = u64::from(BPF_F_MARK_MANGLED_0) | 2;
            // SAFETY (both): helper calls on our context at the UDP checksum's offset.
            stored &= unsafe {
                bpf_l4_csum_replace(
                    skb,
                    check,
                    0,
                    raw(delta.pseudo.folded()),
                    mangled | u64::from(BPF_F_PSEUDO_HDR),
                )
            } == 0;
            stored &=
                unsafe { bpf_l4_csum_replace(skb, check, 0, raw(delta.covered.folded()), mangled) }
                    == 0;
        }
        if !stored {
            return Outcome::Drop(Reason::Unsupported);
        }
        Outcome::RedirectNeigh(reason, new.egress)
    }

    /// Copies `n` bytes of the socket buffer from offset `from` to offset `to` through the
    /// per-CPU move buffer.
    #[inline(always)]
    fn move_data(ctx: &TcContext, from: usize, to: usize, n: usize) -> Result<(), ()> {
        if n == 0 {
            return Ok(());
        }
        let n = n & (MOVE_BUFFER_LEN - 1);
        if n == 0 || n > usize::from(MAX_DATA) {
            return Err(());
        }
        let buffer = MOVE_BUFFER.get_ptr_mut(0).ok_or(())?;
        let skb = ctx.as_ptr() as *mut __sk_buff;
        // SAFETY: helper calls with our context and this CPU's buffer, `n` bytes of which
        // (bounded by the mask above) fit in it.
        unsafe {
            if bpf_skb_load_bytes(skb.cast(), from as u32, buffer.cast(), n as u32) != 0 {
                return Err(());
            }
            if bpf_skb_store_bytes(
                skb,
                to as u32,
                buffer.cast(),
                n as u32,
                u64::from(BPF_F_RECOMPUTE_CSUM),
            ) != 0
            {
                return Err(());
            }
        }
        Ok(())
    }

    struct NextHop {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    }

    /// The kernel's route and neighbour entry for the rewritten datagram, or `None` when the
    /// packet must go up the stack (no route, neighbour not yet resolved, too big, local
    /// delivery, forwarding disabled on the ingress interface).
    #[inline(always)]
    fn fib_lookup(
        ctx: &XdpContext,
        ingress: u32,
        params: &mut FibParams,
        new: &Rewritten,
        out_v4: bool,
        tot_len: u16,
    ) -> Option<NextHop> {
        // SAFETY: a plain C struct for which all-zero is valid.
        *params = unsafe { core::mem::zeroed() };
        params.family = if out_v4 { 2 } else { 10 }; // AF_INET, AF_INET6
        params.l4_protocol = IPPROTO_UDP;
        params.sport = u16::from_ne_bytes(new.src.port);
        params.dport = u16::from_ne_bytes(new.dst.port);
        params.__bindgen_anon_1.tot_len = tot_len;
        params.ifindex = ingress;
        if out_v4 {
            params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(new.src.v4_octets());
            params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(new.dst.v4_octets());
        } else {
            params.__bindgen_anon_3.ipv6_src = words(&new.src.ip);
            params.__bindgen_anon_4.ipv6_dst = words(&new.dst.ip);
        }
        // SAFETY: helper call with a pointer to our stack struct and its size.
        let ret = unsafe {
            bpf_fib_lookup(
                ctx.ctx as *mut _,
                params,
                core::mem::size_of::<FibParams>() as i32,
                0,
            )
        };
        if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 {
            return None;
        }
        Some(NextHop {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
        })
    }

    /// An IPv6 address as four native-endian u32 words holding the network-order bytes.
    #[inline(always)]
    fn words(ip: &[u8; 16]) -> [u32; 4] {
        [
            u32::from_ne_bytes([ip[0], ip[1], ip[2], ip[3]]),
            u32::from_ne_bytes([ip[4], ip[5], ip[6], ip[7]]),
            u32::from_ne_bytes([ip[8], ip[9], ip[10], ip[11]]),
            u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        ]
    }

    /// A pointer to a `T` at `offset` in the packet, or `None` when the packet is too short.
    #[inline(always)]
    pub(crate) fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
        let start = ctx.data();
        let end = ctx.data_end();
        if start + offset + core::mem::size_of::<T>() > end {
            return None;
        }
        Some((start + offset) as *const T)
    }

    /// Like [`ptr_at`], for writing.
    #[inline(always)]
    pub(crate) fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
        ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // SAFETY: the verifier rejects any program that could reach a panic.
        unsafe { core::hint::unreachable_unchecked() }
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

/// On the host this binary does nothing: the program is only meaningful for the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
