//! The XDP program of xturn's fast path.
//!
//! Entry points map a `Copy` outcome to an XDP action; every outcome is counted in `STATS` by its
//! [`Reason`]. Packet memory is read only through [`ptr_at`], which proves the bounds to the
//! verifier.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::PerCpuArray,
        programs::XdpContext,
    };
    use aya_log_ebpf::debug;
    use relay_common::{Counter, Reason};
    use relay_ebpf::headers::{
        ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_UDP, IPV4_LEN, IPV6_LEN, Ipv4Hdr, Ipv6Hdr,
    };

    /// Packets and bytes per [`Reason`], per CPU.
    #[map(name = "STATS")]
    static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

    /// The fast path's entry point.
    #[xdp]
    pub fn xturn_xdp(ctx: XdpContext) -> u32 {
        let reason = classify(&ctx);
        count(reason, (ctx.data_end() - ctx.data()) as u64);
        if reason == Reason::Truncated {
            debug!(
                &ctx,
                "truncated packet of {} bytes",
                ctx.data_end() - ctx.data()
            );
        }
        xdp_action::XDP_PASS
    }

    /// A program that passes everything. Attached to the peer end of a veth so that frames
    /// redirected or transmitted into the veth are not dropped (a veth requirement).
    #[xdp]
    pub fn xturn_xdp_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    #[inline(always)]
    fn count(reason: Reason, bytes: u64) {
        if let Some(counter) = STATS.get_ptr_mut(reason.index()) {
            // SAFETY: the pointer comes from the map and is valid for this CPU's slot; per-CPU
            // values are not shared with other CPUs while the program runs.
            unsafe {
                (*counter).packets += 1;
                (*counter).bytes += bytes;
            }
        }
    }

    #[inline(always)]
    fn classify(ctx: &XdpContext) -> Reason {
        let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
            return Reason::Truncated;
        };
        // SAFETY: `ptr_at` checked that the header lies within the packet.
        let ether_type = unsafe { (*eth).ether_type() };
        let protocol = match ether_type {
            ETH_P_IPV4 => {
                let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
                    return Reason::Truncated;
                };
                // SAFETY: bounds checked by `ptr_at`.
                unsafe { (*ip).protocol }
            }
            ETH_P_IPV6 => {
                let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) else {
                    return Reason::Truncated;
                };
                // SAFETY: bounds checked by `ptr_at`.
                unsafe { (*ip).next_header }
            }
            _ => return Reason::NotIp,
        };
        let _ = (IPV4_LEN, IPV6_LEN);
        if protocol == IPPROTO_UDP {
            Reason::UdpPassed
        } else {
            Reason::NotUdp
        }
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
