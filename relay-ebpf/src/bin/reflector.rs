//! The benchmark's reflector: a load side that costs next to nothing.
//!
//! Attached at TC ingress of the client's and the peer's veth ends, it sends the relay's
//! datagrams straight back: Ethernet and IP addresses and UDP ports swapped, out of the interface
//! they came in on. Swapping 16-bit-aligned fields leaves both checksums valid, so nothing else
//! is touched. Datagrams the load generator puts in then circulate client → relay → peer →
//! relay → client by themselves, and the relay can be given every core while the load side adds
//! only this program's run and one veth transmit per datagram (`cargo xtask bench`, the
//! `--threads` scaling step). A UDP GSO buffer goes back whole and is split where it lands.
//!
//! Which datagrams: IPv4 UDP to the configured port (0: any) and, when configured, only
//! ChannelData (first two payload bits 01), so that STUN responses still reach the clients.
//! Everything else passes. Counted per CPU.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        EbpfContext as _,
        bindings::{__sk_buff, TC_ACT_OK},
        helpers::generated::bpf_redirect,
        macros::{classifier, map},
        maps::{Array, PerCpuArray},
        programs::TcContext,
    };
    use relay_common::reflector::ReflectorConfig;
    use relay_ebpf::headers::{
        ETH_LEN, ETH_P_IPV4, EthHdr, IPPROTO_UDP, IPV4_LEN, Ipv4Hdr, UDP_LEN, UdpHdr,
    };

    /// The single configuration entry, written by the loader before attaching.
    #[map(name = "REFLECTOR_CONFIG")] // relay_common::reflector::CONFIG_MAP
    static CONFIG: Array<ReflectorConfig> = Array::with_max_entries(1, 0);

    /// 0: datagrams reflected; 1: buffers passed on (relay_common::reflector::STATS_MAP).
    #[map(name = "REFLECTOR_STATS")]
    static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

    const REFLECTED: u32 = 0;
    const PASSED: u32 = 1;

    #[classifier]
    pub fn xturn_reflector(ctx: TcContext) -> i32 {
        // SAFETY: the context pointer is the kernel's `__sk_buff` for this run.
        let (ifindex, segments) = unsafe {
            let skb = ctx.as_ptr() as *const __sk_buff;
            ((*skb).ifindex, (*skb).gso_segs)
        };
        if reflect(&ctx).is_none() {
            count(PASSED, 1);
            return TC_ACT_OK as i32;
        }
        count(REFLECTED, u64::from(segments.max(1)));
        // SAFETY: a helper call with the interface the buffer arrived on.
        unsafe { bpf_redirect(ifindex, 0) as i32 }
    }

    #[inline(always)]
    fn count(slot: u32, n: u64) {
        if let Some(counter) = STATS.get_ptr_mut(slot) {
            // SAFETY: this CPU's slot of a per-CPU array.
            unsafe { *counter += n };
        }
    }

    /// Swaps the addresses and ports of a datagram to reflect; `None` leaves it alone.
    #[inline(always)]
    fn reflect(ctx: &TcContext) -> Option<()> {
        let cfg = CONFIG.get(0)?;
        let eth: EthHdr = ctx.load(0).ok()?;
        if eth.ether_type() != ETH_P_IPV4 {
            return None;
        }
        let ip: Ipv4Hdr = ctx.load(ETH_LEN).ok()?;
        if ip.protocol != IPPROTO_UDP || ip.version_ihl != 0x45 || ip.is_fragment() {
            return None;
        }
        let udp: UdpHdr = ctx.load(ETH_LEN + IPV4_LEN).ok()?;
        if cfg.port != [0, 0] && udp.dst_port != cfg.port {
            return None;
        }
        if cfg.channel_data == 1 {
            let first: u8 = ctx.load(ETH_LEN + IPV4_LEN + UDP_LEN).ok()?;
            if first & 0xc0 != 0x40 {
                return None;
            }
        }
        let swapped_eth = EthHdr {
            dst: eth.src,
            src: eth.dst,
            ether_type: eth.ether_type,
        };
        let mut addresses = [0u8; 8];
        addresses[..4].copy_from_slice(&ip.dst);
        addresses[4..].copy_from_slice(&ip.src);
        let mut ports = [0u8; 4];
        ports[..2].copy_from_slice(&udp.dst_port);
        ports[2..].copy_from_slice(&udp.src_port);
        // The IPv4 source address sits 12 bytes into the header, the ports at the UDP header's
        // start: every swapped field keeps its 16-bit alignment, so no checksum changes.
        ctx.store(0, &swapped_eth, 0).ok()?;
        ctx.store(ETH_LEN + 12, &addresses, 0).ok()?;
        ctx.store(ETH_LEN + IPV4_LEN, &ports, 0).ok()?;
        Some(())
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
