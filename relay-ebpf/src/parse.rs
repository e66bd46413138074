//! The fast path's parser: Ethernet, IPv4 or IPv6, UDP, and a ChannelData header's lengths.
//!
//! The kernel program reads its frame through its hook's bounds-checked loads; the host reads a
//! byte slice (the unit tests below and the `kernel_parser` fuzz target). Both run this code, so
//! what is fuzzed on the host is what the verifier loads.
use relay_common::{Endpoint, Reason};

use crate::headers::{
    ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_UDP, IPV4_LEN, IPV6_LEN, Ipv4Hdr, Ipv6Hdr,
    UDP_LEN, UdpHdr,
};

/// Largest ChannelData length the fast path relays: single-buffer XDP frames fit in a page.
pub const MAX_DATA: u16 = 4000;

/// A frame's bytes, as the parser reads them.
pub trait Packet {
    /// Bytes from the Ethernet header to the end of the frame.
    fn frame_len(&self) -> usize;
    /// A copy of the `T` at `offset`, or `None` past the end.
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;
}

impl Packet for [u8] {
    fn frame_len(&self) -> usize {
        self.len()
    }

    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let bytes = self.get(offset..end)?;
        // SAFETY: `bytes` holds exactly `size_of::<T>()` bytes; `T` is read unaligned, and the
        // parser loads only the header structs and byte arrays, for which any bytes are valid.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }
}

/// What the parser learned about a UDP datagram.
#[derive(Clone, Copy, Debug, Default)]
pub struct Datagram {
    pub v6: bool,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// IPv4 TOS or IPv6 traffic class, kept on the relayed datagram (DSCP and ECN).
    pub tos: u8,
    /// UDP length (header + payload), validated against the IP length and the frame.
    pub udp_len: u16,
    pub udp_check: u16,
}

impl Datagram {
    /// Where the UDP payload starts in the frame.
    #[inline(always)]
    #[must_use]
    pub const fn payload_offset(&self) -> usize {
        if self.v6 {
            ETH_LEN + IPV6_LEN + UDP_LEN
        } else {
            ETH_LEN + IPV4_LEN + UDP_LEN
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn payload_len(&self) -> u16 {
        self.udp_len - UDP_LEN as u16
    }
}

/// Parses Ethernet, IPv4 (no options, not a fragment) or IPv6 (UDP directly), and UDP into
/// `out`; or says why the frame is not for the fast path. On success the UDP datagram lies
/// within the frame: `payload_offset() + payload_len() <= frame_len()`.
#[inline(always)]
pub fn parse<P: Packet + ?Sized>(packet: &P, out: &mut Datagram) -> Result<(), Reason> {
    let eth = packet.load::<EthHdr>(0).ok_or(Reason::Truncated)?;
    let frame_len = packet.frame_len();
    match eth.ether_type() {
        ETH_P_IPV4 => {
            let ip = packet.load::<Ipv4Hdr>(ETH_LEN).ok_or(Reason::Truncated)?;
            if ip.protocol != IPPROTO_UDP {
                return Err(Reason::NotUdp);
            }
            if ip.version_ihl != 0x45 || ip.is_fragment() {
                return Err(Reason::Unsupported);
            }
            let udp = packet
                .load::<UdpHdr>(ETH_LEN + IPV4_LEN)
                .ok_or(Reason::Truncated)?;
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
            let ip = packet.load::<Ipv6Hdr>(ETH_LEN).ok_or(Reason::Truncated)?;
            if ip.next_header != IPPROTO_UDP {
                return Err(Reason::NotUdp);
            }
            let udp = packet
                .load::<UdpHdr>(ETH_LEN + IPV6_LEN)
                .ok_or(Reason::Truncated)?;
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

/// The ChannelData header at the start of a datagram's payload: 4 bytes whose first two are a
/// channel number; `None` for anything else (STUN, too short), which the agent handles.
#[inline(always)]
pub fn channel_header<P: Packet + ?Sized>(packet: &P, datagram: &Datagram) -> Option<[u8; 4]> {
    if datagram.payload_len() < 4 {
        return None;
    }
    let header = packet.load::<[u8; 4]>(datagram.payload_offset())?;
    relay_common::is_channel_number(u16::from_be_bytes([header[0], header[1]])).then_some(header)
}

/// What the fast path does with a bound channel's ChannelData that it does not relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Dropped: the length says more than the datagram holds.
    Drop(Reason),
    /// Left to the agent.
    Pass(Reason),
}

/// The data length and padding (0–3 bytes) of ChannelData with `header` in a payload of
/// `payload_len` bytes. Data beyond [`MAX_DATA`], or more than 3 bytes after the data, is
/// left to the agent; a length past the payload is dropped. On success, for a payload of at
/// least 4 bytes (what [`channel_header`] asks), `4 + data_len + pad_len == payload_len`.
#[inline(always)]
pub fn channel_lengths(header: [u8; 4], payload_len: u16) -> Result<(u16, u8), Refused> {
    let data_len = u16::from_be_bytes([header[2], header[3]]);
    let available = payload_len.saturating_sub(4);
    if data_len > available {
        return Err(Refused::Drop(Reason::ChannelMalformed));
    }
    let extra = available - data_len;
    if extra > 3 || data_len > MAX_DATA {
        return Err(Refused::Pass(Reason::Unsupported));
    }
    Ok((data_len, extra as u8))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::SocketAddr;

    use super::*;
    use crate::frames::udp_frame;

    fn parsed(frame: &[u8]) -> Result<Datagram, Reason> {
        let mut out = Datagram::default();
        parse(frame, &mut out).map(|()| out)
    }

    #[test]
    fn udp_over_ipv4_and_ipv6() {
        for (src, dst) in [
            ("198.18.1.2:40000", "198.18.1.1:3478"),
            ("[2001:db8::2]:40000", "[2001:db8::1]:3478"),
        ] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let frame = udp_frame(src, dst, &[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
            let d = parsed(&frame).unwrap();
            assert_eq!(d.v6, src.is_ipv6());
            assert_eq!(d.payload_len(), 12);
            assert_eq!(d.payload_offset() + 12, frame.len());
            assert_eq!(d.dst.port, 3478u16.to_be_bytes());
            let header = channel_header(frame.as_slice(), &d).unwrap();
            assert_eq!(channel_lengths(header, d.payload_len()), Ok((5, 3)));
        }
    }

    #[test]
    fn every_truncation_and_every_other_protocol_is_refused() {
        let src: SocketAddr = "198.18.1.2:40000".parse().unwrap();
        let dst: SocketAddr = "198.18.1.1:3478".parse().unwrap();
        let frame = udp_frame(src, dst, &[0x40, 0, 0, 4, 1, 2, 3, 4]);
        for cut in 0..frame.len() {
            assert!(parsed(&frame[..cut]).is_err(), "cut at {cut}");
        }
        let mut tcp = frame.clone();
        tcp[ETH_LEN + 9] = 6;
        assert_eq!(parsed(&tcp).unwrap_err(), Reason::NotUdp);
        let mut options = frame.clone();
        options[ETH_LEN] = 0x46;
        assert_eq!(parsed(&options).unwrap_err(), Reason::Unsupported);
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parsed(&arp).unwrap_err(), Reason::NotIp);
        // A UDP length that disagrees with the IP length.
        let mut short = frame;
        short[ETH_LEN + IPV4_LEN + 5] -= 1;
        assert_eq!(parsed(&short).unwrap_err(), Reason::Truncated);
    }

    #[test]
    fn channel_data_lengths() {
        let header = |n: u16, len: u16| {
            let [a, b] = n.to_be_bytes();
            let [c, d] = len.to_be_bytes();
            [a, b, c, d]
        };
        assert_eq!(channel_lengths(header(0x4000, 8), 12), Ok((8, 0)));
        assert_eq!(
            channel_lengths(header(0x4000, 9), 12),
            Err(Refused::Drop(Reason::ChannelMalformed))
        );
        assert_eq!(
            channel_lengths(header(0x4000, 4), 12),
            Err(Refused::Pass(Reason::Unsupported))
        );
        assert_eq!(
            channel_lengths(header(0x4000, MAX_DATA + 1), MAX_DATA + 5),
            Err(Refused::Pass(Reason::Unsupported))
        );
    }
}
