//! Wire layouts of the headers the fast path reads. Fields are byte arrays exactly as they sit in
//! the packet (network order), so the structs have alignment 1 and no padding and can be read at
//! any offset.

/// Ethernet II header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

/// IPv4 header without options.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// IPv6 fixed header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ipv6Hdr {
    pub version_tc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// UDP header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UdpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

pub const ETH_LEN: usize = core::mem::size_of::<EthHdr>();
pub const IPV4_LEN: usize = core::mem::size_of::<Ipv4Hdr>();
pub const IPV6_LEN: usize = core::mem::size_of::<Ipv6Hdr>();
pub const UDP_LEN: usize = core::mem::size_of::<UdpHdr>();

const _: () = assert!(ETH_LEN == 14);
const _: () = assert!(IPV4_LEN == 20);
const _: () = assert!(IPV6_LEN == 40);
const _: () = assert!(UDP_LEN == 8);

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const IPPROTO_UDP: u8 = 17;

impl EthHdr {
    #[inline(always)]
    #[must_use]
    pub const fn ether_type(&self) -> u16 {
        u16::from_be_bytes(self.ether_type)
    }
}

impl Ipv4Hdr {
    /// Header length in bytes (IHL × 4).
    #[inline(always)]
    #[must_use]
    pub const fn header_len(&self) -> usize {
        ((self.version_ihl & 0x0f) as usize) * 4
    }

    /// True when this is a fragment other than a whole datagram (MF set or offset ≠ 0).
    #[inline(always)]
    #[must_use]
    pub const fn is_fragment(&self) -> bool {
        u16::from_be_bytes(self.frag_off) & 0x3fff != 0
    }
}

impl UdpHdr {
    #[inline(always)]
    #[must_use]
    pub const fn dst_port(&self) -> u16 {
        u16::from_be_bytes(self.dst_port)
    }

    #[inline(always)]
    #[must_use]
    pub const fn length(&self) -> u16 {
        u16::from_be_bytes(self.len)
    }
}
