//! Internet checksum (RFC 1071) and its incremental update (RFC 1624), written so the BPF
//! verifier accepts them: fixed-size inputs, no unbounded loops.

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
#[must_use]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// One's-complement sum of `data` (big-endian 16-bit words, an odd last byte padded with zero),
/// added to `initial`. Not folded.
#[must_use]
pub fn sum_bytes(initial: u32, data: &[u8]) -> u32 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for word in &mut chunks {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff_ffff {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

/// The checksum of `data`: the complement of its folded sum.
#[must_use]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_bytes(0, data))
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit word of the covered data changed from `old`
/// to `new`. `check` and the result are the values as stored in the header.
#[inline(always)]
#[must_use]
pub const fn update_u16(check: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    let sum = (!check as u32) + (!old as u32) + (new as u32);
    !fold(sum)
}

/// Like [`update_u16`] for a 32-bit field (an IPv4 address), given as its two 16-bit words.
#[inline(always)]
#[must_use]
pub const fn update_u32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let c = update_u16(
        check,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    update_u16(
        c,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv4 header example used in many texts on the internet checksum.
    const IPV4_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn checksum_of_known_header() {
        assert_eq!(checksum(&IPV4_HEADER), 0xb861);
    }

    #[test]
    fn a_header_with_its_checksum_sums_to_zero() {
        let mut h = IPV4_HEADER;
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(checksum(&[0x12, 0x34, 0x56]), !fold(0x1234 + 0x5600));
    }

    #[test]
    fn incremental_update_matches_full_recompute() {
        let mut h = IPV4_HEADER;
        let check = checksum(&h);
        // Change the TTL/protocol word and the destination address.
        let old_word = u16::from_be_bytes([h[8], h[9]]);
        h[8] = 0x3f;
        let new_word = u16::from_be_bytes([h[8], h[9]]);
        let c = update_u16(check, old_word, new_word);
        let old_dst = [h[16], h[17], h[18], h[19]];
        let new_dst = [198, 18, 0, 1];
        h[16..20].copy_from_slice(&new_dst);
        let c = update_u32(c, old_dst, new_dst);
        h[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(c, checksum(&h));
    }

    #[test]
    fn incremental_update_many_random_changes() {
        // A small deterministic generator keeps the test free of dependencies.
        let mut x: u32 = 0x1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..10_000 {
            let mut data = [0u8; 32];
            for b in &mut data {
                *b = next() as u8;
            }
            let check = checksum(&data);
            let i = (next() % 16) as usize * 2;
            let old = u16::from_be_bytes([data[i], data[i + 1]]);
            let new = next() as u16;
            data[i..i + 2].copy_from_slice(&new.to_be_bytes());
            let full = checksum(&data);
            let inc = update_u16(check, old, new);
            // 0x0000 and 0xffff are the same value in one's complement.
            assert!(
                inc == full || (inc == 0xffff && full == 0) || (inc == 0 && full == 0xffff),
                "inc {inc:#x} full {full:#x}"
            );
        }
    }
}

/// A running one's-complement sum for rewriting a UDP checksum without touching the payload:
/// start from the old checksum, take out the words that leave the covered data, put in the words
/// that join it. Everything is fixed-size so the verifier sees bounded work.
#[derive(Clone, Copy, Debug)]
pub struct Rewrite {
    sum: u32,
}

impl Rewrite {
    /// Starts from a checksum as stored in a header (its sum is the complement).
    #[inline(always)]
    #[must_use]
    pub const fn from_checksum(check: u16) -> Rewrite {
        Rewrite {
            sum: (!check) as u32,
        }
    }

    /// Adds a 16-bit word to the covered data.
    #[inline(always)]
    pub fn add(&mut self, word: u16) {
        self.sum += u32::from(word);
        self.sum = (self.sum & 0xffff) + (self.sum >> 16);
    }

    /// Removes a 16-bit word from the covered data (adds its complement).
    #[inline(always)]
    pub fn remove(&mut self, word: u16) {
        self.add(!word);
    }

    /// Adds the big-endian words of `bytes` (even length).
    #[inline(always)]
    pub fn add_words<const N: usize>(&mut self, bytes: &[u8; N]) {
        let mut i = 0;
        while i + 1 < N {
            self.add(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
            i += 2;
        }
    }

    /// Removes the big-endian words of `bytes` (even length).
    #[inline(always)]
    pub fn remove_words<const N: usize>(&mut self, bytes: &[u8; N]) {
        let mut i = 0;
        while i + 1 < N {
            self.remove(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
            i += 2;
        }
    }

    /// The checksum to store: the complement of the folded sum, with 0 sent as 0xffff (a
    /// transmitted 0 means "no checksum" in UDP over IPv4).
    #[inline(always)]
    #[must_use]
    pub const fn checksum(&self) -> u16 {
        let c = !fold(self.sum);
        if c == 0 { 0xffff } else { c }
    }
}

/// The UDP pseudo-header words of one side of a datagram: addresses, protocol and UDP length.
/// IPv4 addresses are the last four bytes of `ip` when `v4` is set (IPv4-mapped form).
#[inline(always)]
pub fn pseudo_header(
    r: &mut Rewrite,
    v4: bool,
    src: &[u8; 16],
    dst: &[u8; 16],
    udp_len: u16,
    add: bool,
) {
    let mut step = |w: u16| if add { r.add(w) } else { r.remove(w) };
    let start = if v4 { 12 } else { 0 };
    let mut i = start;
    while i < 16 {
        step(u16::from_be_bytes([src[i], src[i + 1]]));
        step(u16::from_be_bytes([dst[i], dst[i + 1]]));
        i += 2;
    }
    // Protocol (17) and the length; for IPv6 the 32-bit length's high word is 0.
    step(17);
    step(udp_len);
}

/// The contribution of up to three padding bytes that follow `data_len` bytes of data which
/// start at an even offset: with odd `data_len` the first padding byte shares a word with the
/// last data byte (as its low half).
#[inline(always)]
pub fn remove_padding(r: &mut Rewrite, data_len: u16, padding: [u8; 3], pad_len: u8) {
    let p = |i: u8| if i < pad_len { padding[i as usize] } else { 0 };
    if data_len.is_multiple_of(2) {
        r.remove(u16::from_be_bytes([p(0), p(1)]));
        r.remove(u16::from_be_bytes([p(2), 0]));
    } else {
        r.remove(u16::from(p(0)));
        r.remove(u16::from_be_bytes([p(1), p(2)]));
    }
}

impl Rewrite {
    /// An empty sum: for collecting a change (a delta) rather than a checksum.
    #[inline(always)]
    #[must_use]
    pub const fn zero() -> Rewrite {
        Rewrite { sum: 0 }
    }

    /// Adds everything `other` collected.
    #[inline(always)]
    pub fn merge(&mut self, other: Rewrite) {
        self.add(fold(other.sum));
    }

    /// The folded sum, as a big-endian-valued word: what a delta adds to a checksum's sum.
    #[inline(always)]
    #[must_use]
    pub const fn folded(&self) -> u16 {
        fold(self.sum)
    }
}

/// One side (before or after the relay's rewrite) of a relayed datagram, as its UDP checksum
/// sees it.
#[derive(Clone, Copy, Debug)]
pub struct UdpSide<'a> {
    pub v4: bool,
    pub src_ip: &'a [u8; 16],
    pub dst_ip: &'a [u8; 16],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub udp_len: u16,
}

/// How a relayed datagram's UDP checksum changes, in the two parts the kernel's socket-buffer
/// helpers take separately (`bpf_l4_csum_replace` with and without `BPF_F_PSEUDO_HDR`): the
/// pseudo header (addresses, protocol, length), and the covered bytes (ports, the UDP length
/// field, a ChannelData header and padding taken off, a ChannelData header put on). The data
/// itself never changes, and keeps its 16-bit alignment. The XDP program adds both to the old
/// checksum; the TC program hands them to the kernel, which also knows when the checksum is
/// only partial (a datagram sent by a local socket whose checksum the NIC is to finish).
#[derive(Clone, Copy, Debug)]
pub struct UdpDelta {
    pub pseudo: Rewrite,
    pub covered: Rewrite,
}

impl UdpDelta {
    /// The change from `old` to `new`. `stripped`: the ChannelData header taken off the front of
    /// the old payload, followed by `data_len` bytes of data and `pad_len` bytes of `padding`
    /// (also taken off); `prepended`: the ChannelData header put in front of the data.
    #[inline(always)]
    #[must_use]
    pub fn between(
        old: &UdpSide<'_>,
        new: &UdpSide<'_>,
        stripped: Option<[u8; 4]>,
        data_len: u16,
        padding: [u8; 3],
        pad_len: u8,
        prepended: Option<[u8; 4]>,
    ) -> UdpDelta {
        let mut pseudo = Rewrite::zero();
        pseudo_header(
            &mut pseudo,
            old.v4,
            old.src_ip,
            old.dst_ip,
            old.udp_len,
            false,
        );
        pseudo_header(
            &mut pseudo,
            new.v4,
            new.src_ip,
            new.dst_ip,
            new.udp_len,
            true,
        );
        let mut covered = Rewrite::zero();
        covered.remove_words(&[
            old.src_port[0],
            old.src_port[1],
            old.dst_port[0],
            old.dst_port[1],
        ]);
        covered.remove(old.udp_len);
        if let Some(header) = stripped {
            covered.remove_words(&header);
            remove_padding(&mut covered, data_len, padding, pad_len);
        }
        covered.add_words(&[
            new.src_port[0],
            new.src_port[1],
            new.dst_port[0],
            new.dst_port[1],
        ]);
        covered.add(new.udp_len);
        if let Some(header) = prepended {
            covered.add_words(&header);
        }
        UdpDelta { pseudo, covered }
    }

    /// The new checksum, from the old full one.
    #[inline(always)]
    #[must_use]
    pub fn apply(&self, old_check: u16) -> u16 {
        let mut r = Rewrite::from_checksum(old_check);
        r.merge(self.pseudo);
        r.merge(self.covered);
        r.checksum()
    }
}

#[cfg(test)]
mod rewrite_tests {
    use super::*;

    fn mapped(v4: [u8; 4]) -> [u8; 16] {
        let mut ip = [0u8; 16];
        ip[10] = 0xff;
        ip[11] = 0xff;
        ip[12..].copy_from_slice(&v4);
        ip
    }

    /// Full UDP checksum of a datagram (header with zero checksum + payload).
    fn full(v4: bool, src: &[u8; 16], dst: &[u8; 16], udp: &[u8]) -> u16 {
        let mut pseudo = Vec::new();
        let s = if v4 { 12 } else { 0 };
        pseudo.extend_from_slice(&src[s..]);
        pseudo.extend_from_slice(&dst[s..]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&u16::try_from(udp.len()).unwrap().to_be_bytes());
        let c = !fold(sum_bytes(sum_bytes(0, &pseudo), udp));
        if c == 0 { 0xffff } else { c }
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    /// ChannelData (client → peer) to plain UDP, for every data length parity, padding length
    /// and family combination: the incremental checksum equals a full recomputation.
    #[test]
    fn channel_data_to_udp_matches_full_checksum() {
        let v6a: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let v6b: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        for data_len in [0u16, 1, 2, 3, 7, 100, 101] {
            for pad_len in 0u8..=3 {
                for (in_v4, out_v4) in [(true, true), (true, false), (false, true), (false, false)]
                {
                    let data: Vec<u8> = (0..data_len).map(|i| (i * 7 + 3) as u8).collect();
                    let padding = [0xa5u8, 0x5a, 0xc3];
                    let mut payload = vec![0x40, 0x01];
                    payload.extend_from_slice(&data_len.to_be_bytes());
                    payload.extend_from_slice(&data);
                    payload.extend_from_slice(&padding[..pad_len as usize]);
                    let (csrc, cdst) = if in_v4 {
                        (mapped([198, 18, 1, 2]), mapped([198, 18, 1, 1]))
                    } else {
                        (v6a, v6b)
                    };
                    let (nsrc, ndst) = if out_v4 {
                        (mapped([198, 18, 2, 1]), mapped([198, 18, 2, 2]))
                    } else {
                        (v6b, v6a)
                    };
                    let old = udp(40000, 3478, &payload);
                    let old_check = full(in_v4, &csrc, &cdst, &old);
                    let new = udp(50000, 3480, &data);

                    let mut r = Rewrite::from_checksum(old_check);
                    pseudo_header(
                        &mut r,
                        in_v4,
                        &csrc,
                        &cdst,
                        u16::try_from(old.len()).unwrap(),
                        false,
                    );
                    r.remove_words(&[0x9c, 0x40, 0x0d, 0x96]);
                    r.remove(u16::try_from(old.len()).unwrap());
                    r.remove_words(&[payload[0], payload[1], payload[2], payload[3]]);
                    let mut pad = [0u8; 3];
                    pad[..pad_len as usize].copy_from_slice(&padding[..pad_len as usize]);
                    remove_padding(&mut r, data_len, pad, pad_len);
                    pseudo_header(
                        &mut r,
                        out_v4,
                        &nsrc,
                        &ndst,
                        u16::try_from(new.len()).unwrap(),
                        true,
                    );
                    r.add_words(&[0xc3, 0x50, 0x0d, 0x98]);
                    r.add(u16::try_from(new.len()).unwrap());
                    assert_eq!(
                        r.checksum(),
                        full(out_v4, &nsrc, &ndst, &new),
                        "data {data_len} pad {pad_len} v4 {in_v4}->{out_v4}"
                    );
                }
            }
        }
    }

    /// Plain UDP (peer → client) to ChannelData.
    #[test]
    fn udp_to_channel_data_matches_full_checksum() {
        for data_len in [0u16, 1, 2, 99, 100] {
            let data: Vec<u8> = (0..data_len).map(|i| (i * 13 + 1) as u8).collect();
            let (psrc, pdst) = (mapped([198, 18, 2, 2]), mapped([198, 18, 2, 1]));
            let (nsrc, ndst) = (mapped([198, 18, 1, 1]), mapped([198, 18, 1, 2]));
            let old = udp(3480, 50000, &data);
            let old_check = full(true, &psrc, &pdst, &old);
            let mut cd = vec![0x40, 0x00];
            cd.extend_from_slice(&data_len.to_be_bytes());
            cd.extend_from_slice(&data);
            let new = udp(3478, 40000, &cd);

            let mut r = Rewrite::from_checksum(old_check);
            pseudo_header(
                &mut r,
                true,
                &psrc,
                &pdst,
                u16::try_from(old.len()).unwrap(),
                false,
            );
            r.remove_words(&[old[0], old[1], old[2], old[3], old[4], old[5]]);
            pseudo_header(
                &mut r,
                true,
                &nsrc,
                &ndst,
                u16::try_from(new.len()).unwrap(),
                true,
            );
            r.add_words(&[new[0], new[1], new[2], new[3], new[4], new[5]]);
            r.add_words(&[cd[0], cd[1], cd[2], cd[3]]);
            assert_eq!(
                r.checksum(),
                full(true, &nsrc, &ndst, &new),
                "data {data_len}"
            );
        }
    }

    fn pseudo_sum(v4: bool, src: &[u8; 16], dst: &[u8; 16], len: u16) -> u32 {
        let mut p = Vec::new();
        let s = if v4 { 12 } else { 0 };
        p.extend_from_slice(&src[s..]);
        p.extend_from_slice(&dst[s..]);
        p.extend_from_slice(&[0, 17]);
        p.extend_from_slice(&len.to_be_bytes());
        sum_bytes(0, &p)
    }

    /// What `bpf_l4_csum_replace(skb, off, 0, delta, 2 | flags)` does to a check field holding
    /// `check`: for a full checksum, both parts go in; for a partial one (the pseudo-header
    /// sum, which the NIC finishes), only the pseudo-header part does.
    fn kernel_apply(check: u16, delta: &UdpDelta, partial: bool) -> u16 {
        if partial {
            fold(u32::from(check) + u32::from(delta.pseudo.folded()))
        } else {
            let a = !fold(u32::from(!check) + u32::from(delta.pseudo.folded()));
            !fold(u32::from(!a) + u32::from(delta.covered.folded()))
        }
    }

    /// Every relay rewrite (ChannelData to UDP, UDP to ChannelData, ChannelData to ChannelData
    /// for a hairpin) across families, lengths and padding: the delta turns the old full
    /// checksum into the new full one, and the old partial checksum into the new partial one.
    #[test]
    fn deltas_match_full_and_partial_checksums() {
        let v6a: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let v6b: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        let (a4, b4) = (mapped([198, 18, 1, 2]), mapped([198, 18, 2, 2]));
        let padding = [0xa5u8, 0x5a, 0xc3];
        for data_len in [0u16, 1, 2, 3, 100, 101, 1199] {
            let data: Vec<u8> = (0..data_len).map(|i| (i * 7 + 3) as u8).collect();
            for pad_len in 0u8..=3 {
                for (in_v4, out_v4) in [(true, true), (true, false), (false, true), (false, false)]
                {
                    for kind in 0..3 {
                        let (osrc, odst) = if in_v4 { (&a4, &b4) } else { (&v6a, &v6b) };
                        let (nsrc, ndst) = if out_v4 { (&b4, &a4) } else { (&v6b, &v6a) };
                        let old_cd = [0x40, 0x01, (data_len >> 8) as u8, data_len as u8];
                        let new_cd = [0x7f, 0xfe, (data_len >> 8) as u8, data_len as u8];
                        let mut old_payload = Vec::new();
                        let mut new_payload = Vec::new();
                        let (stripped, prepended, pad) = match kind {
                            0 => (Some(old_cd), None, pad_len),
                            1 => (None, Some(new_cd), 0),
                            _ => (Some(old_cd), Some(new_cd), pad_len),
                        };
                        if let Some(h) = stripped {
                            old_payload.extend_from_slice(&h);
                        }
                        old_payload.extend_from_slice(&data);
                        old_payload.extend_from_slice(&padding[..usize::from(pad)]);
                        if let Some(h) = prepended {
                            new_payload.extend_from_slice(&h);
                        }
                        new_payload.extend_from_slice(&data);
                        let old = udp(40000, 3478, &old_payload);
                        let new = udp(50000, 3480, &new_payload);
                        let old_side = UdpSide {
                            v4: in_v4,
                            src_ip: osrc,
                            dst_ip: odst,
                            src_port: [old[0], old[1]],
                            dst_port: [old[2], old[3]],
                            udp_len: u16::try_from(old.len()).unwrap(),
                        };
                        let new_side = UdpSide {
                            v4: out_v4,
                            src_ip: nsrc,
                            dst_ip: ndst,
                            src_port: [new[0], new[1]],
                            dst_port: [new[2], new[3]],
                            udp_len: u16::try_from(new.len()).unwrap(),
                        };
                        let mut p = [0u8; 3];
                        p[..usize::from(pad)].copy_from_slice(&padding[..usize::from(pad)]);
                        let delta = UdpDelta::between(
                            &old_side, &new_side, stripped, data_len, p, pad, prepended,
                        );
                        let what =
                            format!("data {data_len} pad {pad} v4 {in_v4}->{out_v4} kind {kind}");
                        let old_full = full(in_v4, osrc, odst, &old);
                        let new_full = full(out_v4, nsrc, ndst, &new);
                        assert_eq!(delta.apply(old_full), new_full, "XDP {what}");
                        let k = kernel_apply(old_full, &delta, false);
                        assert!(
                            k == new_full || (k == 0 && new_full == 0xffff),
                            "TC full {what}: {k:#x} vs {new_full:#x}"
                        );
                        let old_partial = fold(pseudo_sum(in_v4, osrc, odst, old_side.udp_len));
                        let new_partial = fold(pseudo_sum(out_v4, nsrc, ndst, new_side.udp_len));
                        assert_eq!(
                            kernel_apply(old_partial, &delta, true),
                            new_partial,
                            "TC partial {what}"
                        );
                    }
                }
            }
        }
    }
}
