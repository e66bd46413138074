//! Types shared by the XDP program (`relay-ebpf`) and the agent (`relay-user`).
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of padding and of `bool`, so the kernel and
//! userspace agree on the bytes. Layouts are pinned by `const` assertions below.
#![no_std]

/// Why the XDP program sent a packet where it did. Each variant indexes the per-CPU `STATS` array;
/// the agent sums the CPUs and exports the totals as metrics.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed to the stack.
    NotIp = 0,
    /// IPv4 or IPv6 but not UDP (ICMP, TCP, IPv6 extension headers): passed to the stack.
    NotUdp = 1,
    /// A UDP datagram the fast path does not handle: passed to the stack.
    UdpPassed = 2,
    /// A header was cut short: passed to the stack, which drops or answers it.
    Truncated = 3,
}

impl Reason {
    /// Number of reasons, i.e. the length of the `STATS` array.
    pub const COUNT: u32 = 4;
    /// Every reason, in index order.
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::NotIp,
        Reason::NotUdp,
        Reason::UdpPassed,
        Reason::Truncated,
    ];

    /// Index of this reason in the `STATS` array.
    #[must_use]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Stable snake_case name, used as the `reason` label of metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NotIp => "not_ip",
            Reason::NotUdp => "not_udp",
            Reason::UdpPassed => "udp_passed",
            Reason::Truncated => "truncated",
        }
    }
}

/// Packets and bytes, one value per CPU in the `STATS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);

impl Counter {
    /// Adds another CPU's (or another reason's) count to this one.
    #[must_use]
    pub const fn plus(self, other: Counter) -> Counter {
        Counter {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

/// Names of the maps and programs in the eBPF object, shared so a rename breaks the build, not the
/// agent at run time.
pub mod names {
    /// The XDP entry point.
    pub const XDP_PROGRAM: &str = "xturn_xdp";
    /// The trivial `XDP_PASS` program put on veth peers (see docs/architecture.md).
    pub const XDP_PASS_PROGRAM: &str = "xturn_xdp_pass";
    /// Per-CPU array of [`crate::Counter`], indexed by [`crate::Reason`].
    pub const STATS_MAP: &str = "STATS";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `Counter` is `#[repr(C)]`, `Copy`, has no padding (two u64) and every bit pattern is
    // a valid value.
    unsafe impl aya::Pod for super::Counter {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_dense_and_named_uniquely() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index() as usize, i);
        }
        for a in Reason::ALL {
            for b in Reason::ALL {
                if a != b {
                    assert_ne!(a.name(), b.name());
                }
            }
        }
    }

    #[test]
    fn counter_plus_adds_both_fields() {
        let a = Counter {
            packets: 1,
            bytes: 100,
        };
        let b = Counter {
            packets: 2,
            bytes: 50,
        };
        assert_eq!(
            a.plus(b),
            Counter {
                packets: 3,
                bytes: 150
            }
        );
    }
}
