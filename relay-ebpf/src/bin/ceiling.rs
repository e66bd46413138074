//! The benchmark's ceiling: the least an XDP TURN relay can do per packet on this path.
//!
//! It does the per-packet work of the real fast path (`main.rs`) minus every hash lookup: one
//! fixed configuration entry in an array map says which addresses to rewrite to, and the client's
//! port doubles as the relayed port, so no per-allocation state is needed. `cargo xtask bench`
//! runs it as a contender: what it reaches is the most any relay can do on this machine.
//!
//! - ChannelData to the listener (any client port, the configured client IP): the 4-byte header
//!   goes, and the data leaves from (relay IP, client port) to the peer.
//! - A datagram from the peer to (relay IP, port P) gets a ChannelData header on the configured
//!   channel and goes from the listener to (client IP, P).
//!
//! Like the real program it parses Ethernet/IPv4/UDP, resolves the next hop with
//! `bpf_fib_lookup`, updates the UDP checksum incrementally, moves the packet head, writes fresh
//! headers and redirects; IPv6 and padded ChannelData are not handled (the benchmark sends
//! neither). Every packet is counted per CPU by outcome.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action},
        helpers::generated::{
            bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
        },
        macros::{map, xdp},
        maps::{Array, PerCpuArray},
        programs::XdpContext,
    };
    use relay_ebpf::{
        checksum::{Rewrite, checksum},
        headers::{ETH_LEN, ETH_P_IPV4, EthHdr, IPPROTO_UDP, IPV4_LEN, Ipv4Hdr, UDP_LEN, UdpHdr},
    };

    use relay_common::ceiling::CeilingConfig;

    /// The single configuration entry, written by the loader before attaching.
    #[map(name = "CEILING_CONFIG")] // relay_common::ceiling::CONFIG_MAP
    static CONFIG: Array<CeilingConfig> = Array::with_max_entries(1, 0);

    /// Packets per outcome, per CPU: 0 to peer, 1 to client, 2 passed, 3 dropped.
    #[map(name = "CEILING_STATS")] // relay_common::ceiling::STATS_MAP
    static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

    const TO_PEER: u32 = 0;
    const TO_CLIENT: u32 = 1;
    const PASSED: u32 = 2;
    const DROPPED: u32 = 3;
    const TTL: u8 = 64;
    const MAX_DATA: u16 = 4000;
    /// Where the UDP payload starts (Ethernet + IPv4 without options + UDP).
    const PAYLOAD: usize = ETH_LEN + IPV4_LEN + UDP_LEN;

    #[xdp]
    pub fn xturn_ceiling(ctx: XdpContext) -> u32 {
        // Read once: the verifier refuses loads through a ctx pointer kept around.
        let ingress = ctx.ingress_ifindex() as u32;
        let (slot, action) = match process(&ctx, ingress) {
            Outcome::Relay(slot, ifindex) if ifindex == ingress => (slot, xdp_action::XDP_TX),
            // SAFETY: a helper call with an interface index from the kernel's FIB.
            Outcome::Relay(slot, ifindex) => (slot, unsafe { bpf_redirect(ifindex, 0) } as u32),
            Outcome::Pass => (PASSED, xdp_action::XDP_PASS),
            Outcome::Drop => (DROPPED, xdp_action::XDP_DROP),
        };
        if let Some(counter) = STATS.get_ptr_mut(slot) {
            // SAFETY: this CPU's slot of a per-CPU array.
            unsafe { *counter += 1 };
        }
        action
    }

    enum Outcome {
        /// Rewritten: count in this slot, send out of this interface.
        Relay(u32, u32),
        Pass,
        Drop,
    }

    /// A packet of ours: what it was and what it becomes (addresses and ports in network order).
    struct Plan {
        slot: u32,
        old_src_ip: [u8; 4],
        old_dst_ip: [u8; 4],
        old_ports: [u8; 4],
        old_udp_len: u16,
        old_check: u16,
        tos: u8,
        src_ip: [u8; 4],
        dst_ip: [u8; 4],
        src_port: [u8; 2],
        dst_port: [u8; 2],
        /// ChannelData header to take off (client → peer).
        strip: Option<[u8; 4]>,
        /// ChannelData header to put on (peer → client).
        prepend: Option<[u8; 4]>,
        data_len: u16,
    }

    /// Rewrites the packet when it is ours.
    #[inline(always)]
    fn process(ctx: &XdpContext, ingress: u32) -> Outcome {
        let Some(plan) = plan(ctx) else {
            return Outcome::Pass;
        };
        rewrite(ctx, ingress, &plan)
    }

    /// Which way a packet goes, or `None` when it is not ours.
    #[inline(always)]
    fn plan(ctx: &XdpContext) -> Option<Plan> {
        let cfg = CONFIG.get(0)?;
        let eth = ptr_at::<EthHdr>(ctx, 0)?;
        // SAFETY (header reads): bounds checked by `ptr_at`.
        if unsafe { (*eth).ether_type() } != ETH_P_IPV4 {
            return None;
        }
        let ip = unsafe { *ptr_at::<Ipv4Hdr>(ctx, ETH_LEN)? };
        if ip.protocol != IPPROTO_UDP || ip.version_ihl != 0x45 || ip.is_fragment() {
            return None;
        }
        let udp = unsafe { *ptr_at::<UdpHdr>(ctx, ETH_LEN + IPV4_LEN)? };
        let udp_len = udp.length();
        let frame_len = ctx.data_end() - ctx.data();
        let total = usize::from(u16::from_be_bytes(ip.total_len));
        if total < IPV4_LEN + UDP_LEN
            || total > frame_len - ETH_LEN
            || usize::from(udp_len) != total - IPV4_LEN
        {
            return None;
        }
        let payload_len = udp_len - UDP_LEN as u16;
        let mut plan = Plan {
            slot: TO_PEER,
            old_src_ip: ip.src,
            old_dst_ip: ip.dst,
            old_ports: [
                udp.src_port[0],
                udp.src_port[1],
                udp.dst_port[0],
                udp.dst_port[1],
            ],
            old_udp_len: udp_len,
            old_check: u16::from_be_bytes(udp.check),
            tos: ip.tos,
            src_ip: cfg.relay_ip,
            dst_ip: cfg.peer_ip,
            src_port: udp.src_port,
            dst_port: cfg.peer_port,
            strip: None,
            prepend: None,
            data_len: 0,
        };
        if ip.dst == cfg.listener_ip && udp.dst_port == cfg.listener_port {
            if ip.src != cfg.client_ip || payload_len < 4 {
                return None;
            }
            let header = unsafe { *ptr_at::<[u8; 4]>(ctx, PAYLOAD)? };
            if header[0] & 0xc0 != 0x40 {
                return None;
            }
            let data_len = u16::from_be_bytes([header[2], header[3]]);
            if data_len != payload_len - 4 || data_len > MAX_DATA {
                return None;
            }
            plan.strip = Some(header);
            plan.data_len = data_len;
            Some(plan)
        } else if ip.src == cfg.peer_ip && udp.src_port == cfg.peer_port && ip.dst == cfg.relay_ip {
            if payload_len > MAX_DATA {
                return None;
            }
            let [hi, lo] = payload_len.to_be_bytes();
            plan.slot = TO_CLIENT;
            plan.src_ip = cfg.listener_ip;
            plan.dst_ip = cfg.client_ip;
            plan.src_port = cfg.listener_port;
            plan.dst_port = udp.dst_port;
            plan.prepend = Some([cfg.channel[0], cfg.channel[1], hi, lo]);
            plan.data_len = payload_len;
            Some(plan)
        } else {
            None
        }
    }

    /// Resolves the next hop, fixes the UDP checksum incrementally, moves the head and writes
    /// fresh headers in front of the unchanged data.
    #[inline(always)]
    fn rewrite(ctx: &XdpContext, ingress: u32, plan: &Plan) -> Outcome {
        let prepend_len: u16 = if plan.prepend.is_some() { 4 } else { 0 };
        let new_udp_len = UDP_LEN as u16 + prepend_len + plan.data_len;
        let ip_total = IPV4_LEN as u16 + new_udp_len;

        // The next hop first: without one the packet goes up unchanged.
        // SAFETY: a plain C struct for which all-zero is valid.
        let mut fib: FibParams = unsafe { core::mem::zeroed() };
        fib.family = 2; // AF_INET
        fib.l4_protocol = IPPROTO_UDP;
        fib.sport = u16::from_ne_bytes(plan.src_port);
        fib.dport = u16::from_ne_bytes(plan.dst_port);
        fib.__bindgen_anon_1.tot_len = ip_total;
        fib.ifindex = ingress;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(plan.src_ip);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(plan.dst_ip);
        // SAFETY: helper call with a pointer to our stack struct and its size.
        let ret = unsafe {
            bpf_fib_lookup(
                ctx.ctx as *mut _,
                &mut fib,
                core::mem::size_of::<FibParams>() as i32,
                0,
            )
        };
        if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 {
            return Outcome::Pass;
        }

        // UDP checksum: out with the old pseudo-header, ports and length (and the ChannelData
        // header), in with the new ones. A zero checksum (none) stays zero.
        let udp_check = if plan.old_check == 0 {
            0
        } else {
            let mut r = Rewrite::from_checksum(plan.old_check);
            r.remove_words(&plan.old_src_ip);
            r.remove_words(&plan.old_dst_ip);
            r.remove(u16::from(IPPROTO_UDP));
            r.remove(plan.old_udp_len);
            r.remove_words(&plan.old_ports);
            r.remove(plan.old_udp_len);
            if let Some(h) = plan.strip {
                r.remove_words(&h);
            }
            r.add_words(&plan.src_ip);
            r.add_words(&plan.dst_ip);
            r.add(u16::from(IPPROTO_UDP));
            r.add(new_udp_len);
            r.add_words(&[
                plan.src_port[0],
                plan.src_port[1],
                plan.dst_port[0],
                plan.dst_port[1],
            ]);
            r.add(new_udp_len);
            if let Some(h) = plan.prepend {
                r.add_words(&h);
            }
            r.checksum()
        };

        // Move the head so the data stays where it is; trim any Ethernet trailer.
        let old_headers = PAYLOAD + if plan.strip.is_some() { 4 } else { 0 };
        let new_headers = PAYLOAD + usize::from(prepend_len);
        let delta = old_headers as i32 - new_headers as i32;
        // SAFETY: helper calls on our own context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
            return Outcome::Pass;
        }
        let frame_len = ctx.data_end() - ctx.data();
        let wanted = new_headers + usize::from(plan.data_len);
        if frame_len > wanted {
            let trim = (frame_len - wanted) as i32;
            // SAFETY: as above.
            if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -trim) } != 0 {
                return Outcome::Drop;
            }
        }

        let (Some(eth), Some(ip), Some(udp)) = (
            ptr_at_mut::<EthHdr>(ctx, 0),
            ptr_at_mut::<Ipv4Hdr>(ctx, ETH_LEN),
            ptr_at_mut::<UdpHdr>(ctx, ETH_LEN + IPV4_LEN),
        ) else {
            return Outcome::Drop;
        };
        let mut h = Ipv4Hdr {
            version_ihl: 0x45,
            tos: plan.tos,
            total_len: ip_total.to_be_bytes(),
            id: [0, 0],
            frag_off: [0x40, 0], // DF, as the real program and the relays' sockets
            ttl: TTL,
            protocol: IPPROTO_UDP,
            check: [0, 0],
            src: plan.src_ip,
            dst: plan.dst_ip,
        };
        // SAFETY: `Ipv4Hdr` is 20 plain bytes.
        let bytes: [u8; IPV4_LEN] = unsafe { core::mem::transmute(h) };
        h.check = checksum(&bytes).to_be_bytes();
        // SAFETY (writes): bounds checked by `ptr_at_mut`.
        unsafe {
            (*eth).dst = fib.dmac;
            (*eth).src = fib.smac;
            (*eth).ether_type = ETH_P_IPV4.to_be_bytes();
            *ip = h;
            *udp = UdpHdr {
                src_port: plan.src_port,
                dst_port: plan.dst_port,
                len: new_udp_len.to_be_bytes(),
                check: udp_check.to_be_bytes(),
            };
        }
        if let Some(cd) = plan.prepend {
            let Some(at) = ptr_at_mut::<[u8; 4]>(ctx, PAYLOAD) else {
                return Outcome::Drop;
            };
            // SAFETY: bounds checked by `ptr_at_mut`.
            unsafe { *at = cd };
        }
        Outcome::Relay(plan.slot, fib.ifindex)
    }

    /// A pointer to a `T` at `offset` in the packet, or `None` when the packet is too short.
    #[inline(always)]
    fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
        let start = ctx.data();
        let end = ctx.data_end();
        if start + offset + core::mem::size_of::<T>() > end {
            return None;
        }
        Some((start + offset) as *const T)
    }

    #[inline(always)]
    fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
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
