//! The kernel program's parser (`relay_ebpf::parse`), built for the host: Ethernet, IPv4 or
//! IPv6, UDP, and the ChannelData header and lengths, over any bytes. It never panics, and
//! whatever it accepts lies within the frame: the datagram's payload ends inside it, and
//! accepted ChannelData lengths add up to the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_ebpf::parse::{Datagram, channel_header, channel_lengths, parse};

fuzz_target!(|frame: &[u8]| {
    let mut datagram = Datagram::default();
    if parse(frame, &mut datagram).is_err() {
        return;
    }
    let payload_len = usize::from(datagram.payload_len());
    assert!(datagram.payload_offset() + payload_len <= frame.len());
    if let Some(header) = channel_header(frame, &datagram)
        && let Ok((data_len, pad_len)) = channel_lengths(header, datagram.payload_len())
    {
        assert!(pad_len <= 3);
        assert_eq!(
            4 + usize::from(data_len) + usize::from(pad_len),
            payload_len
        );
    }
});
