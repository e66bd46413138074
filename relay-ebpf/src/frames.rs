//! Crafted Ethernet frames with correct checksums, for `BPF_PROG_TEST_RUN` (the tests, and the
//! benchmark's `xturn-kernel-scale`). Host only.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::checksum::{checksum, fold, sum_bytes};

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// An Ethernet frame carrying a UDP datagram from `src` to `dst` (same family).
pub fn udp_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => udp4_frame(s, src.port(), d, dst.port(), payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => udp6_frame(s, src.port(), d, dst.port(), payload),
        _ => panic!("udp_frame: mixed address families"),
    }
}

fn eth(ether_type: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(1600);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

fn udp_header(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("payload fits a UDP datagram");
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&src_port.to_be_bytes());
    u.extend_from_slice(&dst_port.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn finish_udp_checksum(udp: &mut [u8], pseudo_sum: u32) {
    let c = !fold(sum_bytes(pseudo_sum, udp));
    let c = if c == 0 { 0xffff } else { c };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
}

/// IPv4 header (no options) for a payload of `len` bytes of `protocol`.
pub fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> Vec<u8> {
    let total = u16::try_from(20 + len).expect("fits IPv4");
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

pub fn udp4_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = udp_header(sport, dport, payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&u16::try_from(udp.len()).expect("fits").to_be_bytes());
    finish_udp_checksum(&mut udp, sum_bytes(0, &pseudo));
    let mut f = eth(0x0800);
    f.extend_from_slice(&ipv4_header(src, dst, 17, udp.len()));
    f.extend_from_slice(&udp);
    f
}

pub fn udp6_frame(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = udp_header(sport, dport, payload);
    let len = u16::try_from(udp.len()).expect("fits");
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    finish_udp_checksum(&mut udp, sum_bytes(0, &pseudo));
    let mut f = eth(0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&udp);
    f
}

/// An ICMPv4 echo request frame.
pub fn icmp4_echo_frame(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0, 1, 0, 1, b'x', b't'];
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = eth(0x0800);
    f.extend_from_slice(&ipv4_header(src, dst, 1, icmp.len()));
    f.extend_from_slice(&icmp);
    f
}

/// An ARP request frame (not IP).
pub fn arp_frame() -> Vec<u8> {
    let mut f = eth(0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[198, 18, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[198, 18, 0, 1]);
    f
}

/// Verifies the IPv4 header checksum and the UDP checksum of an IPv4/UDP frame.
pub fn assert_udp4_checksums(frame: &[u8]) {
    let ip = &frame[14..34];
    assert_eq!(checksum(ip), 0, "IPv4 header checksum wrong");
    let udp = &frame[34..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&u16::try_from(udp.len()).expect("fits").to_be_bytes());
    assert_eq!(
        !fold(sum_bytes(sum_bytes(0, &pseudo), udp)),
        0,
        "UDP checksum wrong"
    );
}

/// An Ethernet/IP/UDP frame taken apart, with its checksums verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFrame {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TTL or hop limit.
    pub ttl: u8,
    /// IPv4 TOS or IPv6 traffic class.
    pub tos: u8,
    pub payload: Vec<u8>,
}

/// Parses an IPv4 or IPv6 UDP frame and panics unless every length and checksum is right.
pub fn parse_udp_frame(frame: &[u8]) -> UdpFrame {
    assert!(frame.len() >= 14, "frame too short");
    let mut dmac = [0u8; 6];
    let mut smac = [0u8; 6];
    dmac.copy_from_slice(&frame[0..6]);
    smac.copy_from_slice(&frame[6..12]);
    let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    let (src_ip, dst_ip, ttl, tos, udp, pseudo): (IpAddr, IpAddr, u8, u8, &[u8], Vec<u8>) =
        match ether_type {
            0x0800 => {
                let ip = &frame[14..34];
                assert_eq!(ip[0], 0x45, "IPv4 without options");
                assert_eq!(checksum(ip), 0, "IPv4 header checksum");
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                assert_eq!(
                    14 + total,
                    frame.len(),
                    "IPv4 total length matches the frame"
                );
                assert_eq!(ip[9], 17, "UDP");
                let udp = &frame[34..];
                let mut pseudo = ip[12..20].to_vec();
                pseudo.extend_from_slice(&[0, 17]);
                pseudo.extend_from_slice(&u16::try_from(udp.len()).expect("fits").to_be_bytes());
                let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
                let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
                (src.into(), dst.into(), ip[8], ip[1], udp, pseudo)
            }
            0x86dd => {
                let ip = &frame[14..54];
                assert_eq!(ip[0] >> 4, 6, "IPv6");
                let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
                assert_eq!(
                    54 + payload,
                    frame.len(),
                    "IPv6 payload length matches the frame"
                );
                assert_eq!(ip[6], 17, "UDP");
                let udp = &frame[54..];
                let mut pseudo = ip[8..40].to_vec();
                pseudo.extend_from_slice(&u32::try_from(udp.len()).expect("fits").to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, 17]);
                let src: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
                let dst: [u8; 16] = ip[24..40].try_into().expect("16 bytes");
                let tc = (ip[0] << 4) | (ip[1] >> 4);
                (
                    Ipv6Addr::from(src).into(),
                    Ipv6Addr::from(dst).into(),
                    ip[7],
                    tc,
                    udp,
                    pseudo,
                )
            }
            other => panic!("not IP: ethertype {other:#06x}"),
        };
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    assert_eq!(udp_len, udp.len(), "UDP length matches the IP length");
    let check = u16::from_be_bytes([udp[6], udp[7]]);
    if check != 0 || ether_type == 0x86dd {
        assert_eq!(
            !fold(sum_bytes(sum_bytes(0, &pseudo), udp)),
            0,
            "UDP checksum"
        );
    }
    UdpFrame {
        dmac,
        smac,
        src: SocketAddr::new(src_ip, u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddr::new(dst_ip, u16::from_be_bytes([udp[2], udp[3]])),
        ttl,
        tos,
        payload: udp[8..].to_vec(),
    }
}

/// ChannelData: channel, length, data, then `padding` extra bytes.
pub fn channel_data(channel: u16, data: &[u8], padding: &[u8]) -> Vec<u8> {
    let mut m = channel.to_be_bytes().to_vec();
    m.extend_from_slice(&u16::try_from(data.len()).expect("fits").to_be_bytes());
    m.extend_from_slice(data);
    m.extend_from_slice(padding);
    m
}
