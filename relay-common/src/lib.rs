//! Types shared by the XDP program (`relay-ebpf`) and the agent (`relay-user`).
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of padding and of `bool`, so the kernel and
//! userspace agree on the bytes. Layouts are pinned by `const` assertions below.
#![no_std]

/// Lowest channel number (RFC 8656 section 12).
pub const CHANNEL_NUMBER_MIN: u16 = 0x4000;
/// Highest channel number accepted. RFC 8656 narrowed channels to 0x4000–0x4FFF, but RFC 5766
/// clients (coturn's own `turnutils_uclient` among them) still pick numbers up to 0x7FFF, and
/// coturn accepts them; so does xturn, for interoperability. Their first byte (64–127) cannot be
/// mistaken for STUN (0–3), DTLS (20–63) or RTP (128–191).
pub const CHANNEL_NUMBER_MAX: u16 = 0x7FFF;

/// Is `number` a channel number the relay binds and relays (0x4000–0x7FFF)? The one definition
/// used by ChannelBind, by the adoption of a saved state, by the kernel programs and by the
/// ChannelData parsers.
pub const fn is_channel_number(number: u16) -> bool {
    number >= CHANNEL_NUMBER_MIN && number <= CHANNEL_NUMBER_MAX
}

/// Why the kernel program (XDP or TC) sent a packet where it did. Each variant indexes the per-CPU `STATS` array;
/// the agent sums the CPUs and exports the totals as metrics (label `reason`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed to the stack.
    NotIp = 0,
    /// IPv4 or IPv6 but not UDP (ICMP, TCP, IPv6 extension headers): passed.
    NotUdp = 1,
    /// A UDP datagram not addressed to a listener or a bound relayed address: passed.
    UdpPassed = 2,
    /// A header was cut short, or lengths disagree: passed to the stack, which drops it.
    Truncated = 3,
    /// ChannelData relayed to a peer in the kernel.
    RelayedToPeer = 4,
    /// A peer's datagram relayed to its client as ChannelData in the kernel.
    RelayedToClient = 5,
    /// A STUN message (or anything not ChannelData) to a listener: passed to the agent.
    ListenerPassed = 6,
    /// ChannelData to a listener on a channel the kernel has no entry for: passed to the agent.
    ChannelUnbound = 7,
    /// ChannelData whose length field exceeds the datagram: dropped.
    ChannelMalformed = 8,
    /// The next hop could not be resolved (no route, no neighbour entry yet, needs
    /// fragmentation, forwarding disabled): passed so the agent relays it.
    NoRoute = 9,
    /// IPv4 fragments and IPv4 headers with options: passed.
    Unsupported = 10,
    /// IPv4 UDP without a checksum relayed to IPv6, where one is mandatory: passed.
    NoChecksum = 11,
    /// A hairpin: ChannelData whose peer is another relayed address of this relay, relayed
    /// straight to that allocation's client in the kernel.
    RelayedHairpin = 12,
}

impl Reason {
    /// Number of reasons, i.e. the length of the `STATS` array.
    pub const COUNT: u32 = 13;
    /// Every reason, in index order.
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::NotIp,
        Reason::NotUdp,
        Reason::UdpPassed,
        Reason::Truncated,
        Reason::RelayedToPeer,
        Reason::RelayedToClient,
        Reason::ListenerPassed,
        Reason::ChannelUnbound,
        Reason::ChannelMalformed,
        Reason::NoRoute,
        Reason::Unsupported,
        Reason::NoChecksum,
        Reason::RelayedHairpin,
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
            Reason::RelayedToPeer => "relayed_to_peer",
            Reason::RelayedToClient => "relayed_to_client",
            Reason::ListenerPassed => "listener_passed",
            Reason::ChannelUnbound => "channel_unbound",
            Reason::ChannelMalformed => "channel_malformed",
            Reason::NoRoute => "no_route",
            Reason::Unsupported => "unsupported",
            Reason::NoChecksum => "no_checksum",
            Reason::RelayedHairpin => "relayed_hairpin",
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

/// An IP address and UDP port as they sit in packets: a 16-byte address (IPv4 as IPv4-mapped
/// IPv6, `::ffff:a.b.c.d`) and a big-endian port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub ip: [u8; 16],
    pub port: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<Endpoint>() == 18);

impl Endpoint {
    /// An IPv4 endpoint from its address bytes and big-endian port bytes.
    #[inline(always)]
    #[must_use]
    pub const fn v4(ip: [u8; 4], port: [u8; 2]) -> Endpoint {
        Endpoint {
            ip: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ip[0], ip[1], ip[2], ip[3],
            ],
            port,
        }
    }

    /// An IPv6 endpoint from its address bytes and big-endian port bytes.
    #[inline(always)]
    #[must_use]
    pub const fn v6(ip: [u8; 16], port: [u8; 2]) -> Endpoint {
        Endpoint { ip, port }
    }

    /// True if the address is IPv4 (stored IPv4-mapped).
    #[inline(always)]
    #[must_use]
    pub const fn is_v4(&self) -> bool {
        let ip = &self.ip;
        ip[0] == 0
            && ip[1] == 0
            && ip[2] == 0
            && ip[3] == 0
            && ip[4] == 0
            && ip[5] == 0
            && ip[6] == 0
            && ip[7] == 0
            && ip[8] == 0
            && ip[9] == 0
            && ip[10] == 0xff
            && ip[11] == 0xff
    }

    /// The IPv4 address bytes (meaningful only when [`Endpoint::is_v4`]).
    #[inline(always)]
    #[must_use]
    pub const fn v4_octets(&self) -> [u8; 4] {
        [self.ip[12], self.ip[13], self.ip[14], self.ip[15]]
    }
}

/// Key of `CHANNELS`: ChannelData arriving from `client` at `listener` on `channel`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub client: Endpoint,
    pub listener: Endpoint,
    /// Channel number, big-endian.
    pub channel: [u8; 2],
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<ChannelKey>() == 40);

/// Value of `CHANNELS`: where the channel's data goes, and its counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelToPeer {
    /// The allocation's relayed address: the new source.
    pub relayed: Endpoint,
    /// The peer: the new destination.
    pub peer: Endpoint,
    /// The interface the host's own output route to the peer leaves by (0: unknown). The TC
    /// program sends there; the XDP program asks the FIB instead.
    pub egress_ifindex: u32,
    /// Datagrams and payload bytes relayed client → peer (updated atomically).
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<ChannelToPeer>() == 56);

/// Key of `PEERS`: a datagram arriving from `peer` at the relayed address `relayed`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub peer: Endpoint,
    pub relayed: Endpoint,
}

const _: () = assert!(core::mem::size_of::<PeerKey>() == 36);

/// Value of `PEERS`: the client (and channel) that the peer's data goes to, and its counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerToClient {
    /// The listener the client talks to: the new source.
    pub listener: Endpoint,
    /// The client: the new destination.
    pub client: Endpoint,
    /// Channel number, big-endian.
    pub channel: [u8; 2],
    pub _pad: [u8; 2],
    /// The interface the host's own output route to the client leaves by (0: unknown).
    pub egress_ifindex: u32,
    pub _pad2: [u8; 4],
    /// Datagrams and payload bytes relayed peer → client (updated atomically).
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PeerToClient>() == 64);

/// Default capacity of `CHANNELS` and `PEERS` (one entry per channel binding in each).
pub const DEFAULT_MAX_CHANNELS: u32 = 1 << 20;

/// Names of the maps and programs in the eBPF object, shared so a rename breaks the build, not the
/// agent at run time.
pub mod names {
    /// The XDP entry point.
    pub const XDP_PROGRAM: &str = "xturn_xdp";
    /// The TC (clsact ingress) entry point: the same relaying on socket buffers.
    pub const TC_PROGRAM: &str = "xturn_tc";
    /// The trivial `XDP_PASS` program put on veth peers (see docs/architecture.md).
    pub const XDP_PASS_PROGRAM: &str = "xturn_xdp_pass";
    /// Per-CPU array of [`crate::Counter`], indexed by [`crate::Reason`].
    pub const STATS_MAP: &str = "STATS";
    /// Hash map [`crate::ChannelKey`] → [`crate::ChannelToPeer`].
    pub const CHANNELS_MAP: &str = "CHANNELS";
    /// Hash map [`crate::PeerKey`] → [`crate::PeerToClient`].
    pub const PEERS_MAP: &str = "PEERS";
    /// Hash map [`crate::Endpoint`] → `u8` (1): the listener addresses, so ChannelData to them
    /// without an entry is counted as unbound rather than as someone else's traffic.
    pub const LISTENERS_MAP: &str = "LISTENERS";
}

/// The benchmark's ceiling XDP program (`relay-ebpf/src/bin/ceiling.rs`) and its loader
/// (`xturn-ceiling`): its one configuration entry, and the channel the benchmark uses.
pub mod ceiling {
    /// The channel number of the benchmark's ChannelData (load generator, echo, ceiling).
    pub const CHANNEL: u16 = 0x4000;
    /// The program's entry point.
    pub const PROGRAM: &str = "xturn_ceiling";
    /// Array map with the one [`CeilingConfig`].
    pub const CONFIG_MAP: &str = "CEILING_CONFIG";
    /// Per-CPU array of packet counts: 0 to peer, 1 to client, 2 passed, 3 dropped.
    pub const STATS_MAP: &str = "CEILING_STATS";

    /// What to rewrite to: addresses and ports in network order, 24 bytes.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct CeilingConfig {
        pub listener_ip: [u8; 4],
        pub client_ip: [u8; 4],
        pub relay_ip: [u8; 4],
        pub peer_ip: [u8; 4],
        pub listener_port: [u8; 2],
        pub peer_port: [u8; 2],
        pub channel: [u8; 2],
        pub _pad: [u8; 2],
    }

    const _: () = assert!(core::mem::size_of::<CeilingConfig>() == 24);
}

/// The benchmark's reflector TC program (`relay-ebpf/src/bin/reflector.rs`) and its loader
/// (`xturn-reflector`): a load side that sends every datagram straight back where it came from.
pub mod reflector {
    /// The program's entry point.
    pub const PROGRAM: &str = "xturn_reflector";
    /// Array map with the one [`ReflectorConfig`].
    pub const CONFIG_MAP: &str = "REFLECTOR_CONFIG";
    /// Per-CPU array: 0 datagrams reflected (a UDP GSO buffer counts its segments), 1 buffers
    /// passed on.
    pub const STATS_MAP: &str = "REFLECTOR_STATS";

    /// Which IPv4 UDP datagrams go back: those to `port` (network order; 0: any port) and, when
    /// `channel_data` is 1, only those whose payload is ChannelData (first two bits 01).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct ReflectorConfig {
        pub port: [u8; 2],
        pub channel_data: u8,
        pub _pad: u8,
    }

    const _: () = assert!(core::mem::size_of::<ReflectorConfig>() == 4);
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all impls): `#[repr(C)]`, `Copy`, only byte arrays and u64s laid out without
    // padding (sizes pinned by the const assertions above), and every bit pattern is valid.
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::ChannelKey {}
    unsafe impl aya::Pod for super::ChannelToPeer {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::PeerToClient {}
    unsafe impl aya::Pod for super::ceiling::CeilingConfig {}
    unsafe impl aya::Pod for super::reflector::ReflectorConfig {}
}

#[cfg(feature = "user")]
mod convert {
    use std::net::{IpAddr, SocketAddr};

    use super::Endpoint;

    extern crate std;

    impl From<SocketAddr> for Endpoint {
        fn from(addr: SocketAddr) -> Endpoint {
            let port = addr.port().to_be_bytes();
            match addr.ip() {
                IpAddr::V4(v4) => Endpoint::v4(v4.octets(), port),
                IpAddr::V6(v6) => Endpoint::v6(v6.octets(), port),
            }
        }
    }

    impl From<Endpoint> for SocketAddr {
        fn from(e: Endpoint) -> SocketAddr {
            let port = u16::from_be_bytes(e.port);
            if e.is_v4() {
                SocketAddr::from((e.v4_octets(), port))
            } else {
                SocketAddr::from((e.ip, port))
            }
        }
    }
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

    #[cfg(feature = "user")]
    #[test]
    fn endpoints_round_trip_socket_addresses() {
        extern crate std;
        use std::net::SocketAddr;
        for text in [
            "198.18.0.1:3478",
            "[2001:db8::1]:49152",
            "[::ffff:198.18.0.1]:1",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let back = SocketAddr::from(Endpoint::from(addr));
            // An IPv4-mapped IPv6 address comes back as plain IPv4: the kernel sees IPv4 then.
            let expected = match addr {
                SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                    Some(v4) => SocketAddr::from((v4, v6.port())),
                    None => addr,
                },
                SocketAddr::V4(_) => addr,
            };
            assert_eq!(back, expected);
        }
        assert!(Endpoint::v4([198, 18, 0, 1], [0, 1]).is_v4());
        assert!(
            !Endpoint::v6(
                [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0, 1]
            )
            .is_v4()
        );
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
