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
