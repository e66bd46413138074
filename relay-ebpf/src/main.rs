//! The XDP program of xturn's fast path.
//!
//! One entry point, [`program::xturn_xdp`], parses Ethernet/IP/UDP and then:
//! - a datagram from a peer to a relayed address with an entry in `PEERS` becomes ChannelData to
//!   that allocation's client;
//! - ChannelData from a client to a listener with an entry in `CHANNELS` becomes a plain datagram
//!   from the relayed address to the peer (or, when the peer is itself a relayed address of this
//!   relay, ChannelData straight to that allocation's client);
//! - everything else passes to the kernel stack, and so to the agent.
//!
//! Every exit is counted in `STATS` by its [`relay_common::Reason`]. Packet memory is read and
//! written only through [`program::ptr_at`] / [`program::ptr_at_mut`], which prove the bounds to
//! the verifier.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{
            BPF_F_NO_PREALLOC, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action,
        },
        helpers::generated::{
            bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
        },
        macros::{map, xdp},
        maps::{HashMap, PerCpuArray},
        programs::XdpContext,
    };
    use aya_log_ebpf::debug;
    use relay_common::{
        ChannelKey, ChannelToPeer, Counter, DEFAULT_MAX_CHANNELS, Endpoint, PeerKey, PeerToClient,
        Reason,
    };
    use relay_ebpf::{
        checksum::{Rewrite, checksum, pseudo_header, remove_padding},
        headers::{
            ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_UDP, IPV4_LEN, IPV6_LEN, Ipv4Hdr,
            Ipv6Hdr, UDP_LEN, UdpHdr,
        },
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

    #[repr(C)]
    struct Scratch {
        datagram: Datagram,
        rewritten: Rewritten,
        channel_key: ChannelKey,
        peer_key: PeerKey,
        fib: FibParams,
    }

    /// Largest ChannelData length handled here: single-buffer XDP frames fit in a page.
    const MAX_DATA: u16 = 4000;
    /// TTL / hop limit of datagrams the relay originates, as its sockets would.
    const TTL: u8 = 64;

    /// Where a packet goes, and why.
    #[derive(Clone, Copy)]
    enum Outcome {
        Pass(Reason),
        Drop(Reason),
        Tx(Reason),
        Redirect(Reason, u32),
    }

    /// The fast path's entry point.
    #[xdp]
    pub fn xturn_xdp(ctx: XdpContext) -> u32 {
        let len = (ctx.data_end() - ctx.data()) as u64;
        // Read once: the verifier refuses loads through a ctx pointer the compiler offset and
        // kept around.
        let ingress = ctx.ingress_ifindex() as u32;
        let (reason, action) = match process(&ctx, ingress) {
            Outcome::Pass(r) => (r, xdp_action::XDP_PASS),
            Outcome::Drop(r) => (r, xdp_action::XDP_DROP),
            Outcome::Tx(r) => (r, xdp_action::XDP_TX),
            // SAFETY: a helper call with an interface index from the kernel's FIB.
            Outcome::Redirect(r, ifindex) => (r, unsafe { bpf_redirect(ifindex, 0) } as u32),
        };
        count(reason, len);
        if reason == Reason::ChannelMalformed {
            // Rare and ours: worth a record. The agent sets the level at load, so this costs
            // nothing unless debug logging is on.
            debug!(
                &ctx,
                "dropped ChannelData whose length exceeds its datagram ({} bytes)", len
            );
        }
        action
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

    /// What the parser learned about a UDP datagram.
    #[derive(Clone, Copy)]
    struct Datagram {
        v6: bool,
        src: Endpoint,
        dst: Endpoint,
        /// IPv4 TOS or IPv6 traffic class, kept on the relayed datagram (DSCP and ECN).
        tos: u8,
        /// UDP length (header + payload), validated against the IP length and the frame.
        udp_len: u16,
        udp_check: u16,
    }

    impl Datagram {
        #[inline(always)]
        const fn payload_offset(&self) -> usize {
            if self.v6 {
                ETH_LEN + IPV6_LEN + UDP_LEN
            } else {
                ETH_LEN + IPV4_LEN + UDP_LEN
            }
        }

        #[inline(always)]
        const fn payload_len(&self) -> u16 {
            self.udp_len - UDP_LEN as u16
        }
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
    }

    #[inline(always)]
    fn process(ctx: &XdpContext, ingress: u32) -> Outcome {
        let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
            return Outcome::Pass(Reason::Unsupported);
        };
        // SAFETY: this CPU's slot of a per-CPU array; nothing else uses it while we run.
        let s = unsafe { &mut *scratch };
        if let Err(reason) = parse(ctx, &mut s.datagram) {
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
            let outcome = rewrite(ctx, ingress, s, Reason::RelayedToClient);
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
        if s.datagram.payload_len() < 4 {
            return Outcome::Pass(Reason::ListenerPassed);
        }
        let Some(header) = ptr_at::<[u8; 4]>(ctx, offset) else {
            return Outcome::Pass(Reason::ListenerPassed);
        };
        // SAFETY: bounds checked by `ptr_at`.
        let header = unsafe { *header };
        if !relay_common::is_channel_number(u16::from_be_bytes([header[0], header[1]])) {
            return Outcome::Pass(Reason::ListenerPassed);
        }
        s.channel_key.client = s.datagram.src;
        s.channel_key.listener = s.datagram.dst;
        s.channel_key.channel = [header[0], header[1]];
        s.channel_key._pad = [0; 2];
        let Some(entry) = CHANNELS.get_ptr_mut(&s.channel_key) else {
            return Outcome::Pass(Reason::ChannelUnbound);
        };
        let data_len = u16::from_be_bytes([header[2], header[3]]);
        let available = s.datagram.payload_len() - 4;
        if data_len > available {
            return Outcome::Drop(Reason::ChannelMalformed);
        }
        let extra = available - data_len;
        if extra > 3 || data_len > MAX_DATA {
            // Not padding: let the agent decide what this is.
            return Outcome::Pass(Reason::Unsupported);
        }
        s.rewritten.pad_len = extra as u8;
        let Some(padding) = read_padding(ctx, offset, s.datagram.payload_len(), extra as u8) else {
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
                }
                s.rewritten.strip = 4;
                s.rewritten.prepend = None;
                s.rewritten.data_len = data_len;
                Reason::RelayedToPeer
            }
        };
        let outcome = rewrite(ctx, ingress, s, reason);
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
        }
        plan.strip = strip;
        plan.data_len = data_len;
    }

    #[inline(always)]
    const fn is_relayed(outcome: Outcome) -> bool {
        matches!(outcome, Outcome::Tx(_) | Outcome::Redirect(..))
    }

    /// The (at most three) padding bytes at the end of a ChannelData payload of `payload_len`
    /// bytes at `offset`. They are read as the payload's last four bytes (there are always four:
    /// the ChannelData header), a fixed-size read the verifier can bound.
    #[inline(always)]
    fn read_padding(
        ctx: &XdpContext,
        offset: usize,
        payload_len: u16,
        pad_len: u8,
    ) -> Option<[u8; 3]> {
        if pad_len == 0 {
            return Some([0; 3]);
        }
        // Masked so the verifier sees a bounded offset (payload_len ≤ 4 + MAX_DATA + 3).
        let tail = offset + ((usize::from(payload_len) - 4) & 0x1fff);
        let window = ptr_at::<[u8; 4]>(ctx, tail)?;
        // SAFETY: bounds checked by `ptr_at`.
        let w = unsafe { *window };
        Some(match pad_len {
            1 => [w[3], 0, 0],
            2 => [w[2], w[3], 0],
            _ => [w[1], w[2], w[3]],
        })
    }

    /// Parses Ethernet, IPv4 (no options, not a fragment) or IPv6 (UDP directly), and UDP.
    #[inline(always)]
    fn parse(ctx: &XdpContext, out: &mut Datagram) -> Result<(), Reason> {
        let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::Truncated)?;
        let frame_len = ctx.data_end() - ctx.data();
        // SAFETY (all header reads below): bounds checked by `ptr_at`.
        match unsafe { (*eth).ether_type() } {
            ETH_P_IPV4 => {
                let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN).ok_or(Reason::Truncated)?;
                let ip = unsafe { *ip };
                if ip.protocol != IPPROTO_UDP {
                    return Err(Reason::NotUdp);
                }
                if ip.version_ihl != 0x45 || ip.is_fragment() {
                    return Err(Reason::Unsupported);
                }
                let udp = ptr_at::<UdpHdr>(ctx, ETH_LEN + IPV4_LEN).ok_or(Reason::Truncated)?;
                let udp = unsafe { *udp };
                let total = usize::from(u16::from_be_bytes(ip.total_len));
                let udp_len = udp.length();
                if total < IPV4_LEN + UDP_LEN
                    || total > frame_len - ETH_LEN
                    || usize::from(udp_len) != total - IPV4_LEN
                {
                    return Err(Reason::Truncated);
                }
                *out = Datagram {
                    v6: false,
                    src: Endpoint::v4(ip.src, udp.src_port),
                    dst: Endpoint::v4(ip.dst, udp.dst_port),
                    tos: ip.tos,
                    udp_len,
                    udp_check: u16::from_be_bytes(udp.check),
                };
                Ok(())
            }
            ETH_P_IPV6 => {
                let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN).ok_or(Reason::Truncated)?;
                let ip = unsafe { *ip };
                if ip.next_header != IPPROTO_UDP {
                    return Err(Reason::NotUdp);
                }
                let udp = ptr_at::<UdpHdr>(ctx, ETH_LEN + IPV6_LEN).ok_or(Reason::Truncated)?;
                let udp = unsafe { *udp };
                let payload = usize::from(u16::from_be_bytes(ip.payload_len));
                let udp_len = udp.length();
                if payload < UDP_LEN
                    || payload > frame_len - ETH_LEN - IPV6_LEN
                    || usize::from(udp_len) != payload
                {
                    return Err(Reason::Truncated);
                }
                let tc = (ip.version_tc_flow[0] << 4) | (ip.version_tc_flow[1] >> 4);
                *out = Datagram {
                    v6: true,
                    src: Endpoint::v6(ip.src, udp.src_port),
                    dst: Endpoint::v6(ip.dst, udp.dst_port),
                    tos: tc,
                    udp_len,
                    udp_check: u16::from_be_bytes(udp.check),
                };
                Ok(())
            }
            _ => Err(Reason::NotIp),
        }
    }

    /// Turns the datagram into `new`: resolves the next hop, fixes the UDP checksum
    /// incrementally, moves the head and tail, and writes fresh Ethernet, IP and UDP headers (and
    /// the ChannelData header) in front of the unchanged data.
    #[inline(always)]
    fn rewrite(ctx: &XdpContext, ingress: u32, s: &mut Scratch, reason: Reason) -> Outcome {
        let old = &s.datagram;
        let new = &s.rewritten;
        let out_v4 = new.dst.is_v4();
        if new.src.is_v4() != out_v4 {
            return Outcome::Pass(Reason::Unsupported);
        }
        let prepend_len: u16 = if new.prepend.is_some() { 4 } else { 0 };
        let new_udp_len = UDP_LEN as u16 + prepend_len + new.data_len;
        let ip_len = if out_v4 { IPV4_LEN } else { IPV6_LEN };
        let ip_total = if out_v4 {
            ip_len as u16 + new_udp_len
        } else {
            new_udp_len
        };

        // UDP over IPv4 may carry no checksum; IPv6 needs one, which would mean summing the data.
        let no_checksum = old.udp_check == 0;
        if no_checksum && !out_v4 {
            return Outcome::Pass(Reason::NoChecksum);
        }

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

        let udp_check = if no_checksum {
            0
        } else {
            let mut r = Rewrite::from_checksum(old.udp_check);
            pseudo_header(
                &mut r,
                !old.v6,
                &old.src.ip,
                &old.dst.ip,
                old.udp_len,
                false,
            );
            r.remove_words(&[
                old.src.port[0],
                old.src.port[1],
                old.dst.port[0],
                old.dst.port[1],
            ]);
            r.remove(old.udp_len);
            if new.strip == 4 {
                // The old ChannelData header is re-read here: it is at a fixed offset.
                if let Some(h) = ptr_at::<[u8; 4]>(ctx, old.payload_offset()) {
                    // SAFETY: bounds checked by `ptr_at`.
                    let h = unsafe { *h };
                    r.remove_words(&h);
                }
                remove_padding(&mut r, new.data_len, new.padding, new.pad_len);
            }
            pseudo_header(&mut r, out_v4, &new.src.ip, &new.dst.ip, new_udp_len, true);
            r.add_words(&[
                new.src.port[0],
                new.src.port[1],
                new.dst.port[0],
                new.dst.port[1],
            ]);
            r.add(new_udp_len);
            if let Some(cd) = new.prepend {
                r.add_words(&cd);
            }
            r.checksum()
        };

        // Move the head so the data stays where it is, then trim padding and any trailer.
        let old_headers = old.payload_offset() + new.strip;
        let new_headers = ETH_LEN + ip_len + UDP_LEN + usize::from(prepend_len);
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
            let mut h = Ipv4Hdr {
                version_ihl: 0x45,
                tos: old.tos,
                total_len: ip_total.to_be_bytes(),
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
            unsafe { *ip = h };
            ETH_LEN + IPV4_LEN
        } else {
            let Some(ip) = ptr_at_mut::<Ipv6Hdr>(ctx, ETH_LEN) else {
                return Outcome::Drop(Reason::Truncated);
            };
            unsafe {
                *ip = Ipv6Hdr {
                    version_tc_flow: [0x60 | (old.tos >> 4), old.tos << 4, 0, 0],
                    payload_len: ip_total.to_be_bytes(),
                    next_header: IPPROTO_UDP,
                    hop_limit: TTL,
                    src: new.src.ip,
                    dst: new.dst.ip,
                };
            }
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
