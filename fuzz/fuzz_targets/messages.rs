//! Message parsers on both sides: the server's demultiplexer (STUN, ChannelData, other) and
//! its STUN and ChannelData parsers, and the client's parsing of what a server sends
//! (responses, Data indications, ChannelData) with its MESSAGE-INTEGRITY check. Never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turn_proto::client::message as client;
use turn_proto::wire;

fuzz_target!(|data: &[u8]| {
    match wire::demux(data) {
        wire::Demux::Stun => {
            if let Ok(frame) = wire::StunFrame::parse(data) {
                let _ = frame.codec_bytes();
                let _ = frame.simple_send();
                let _ = frame.verify_integrity(b"key");
            }
        }
        wire::Demux::ChannelData => {
            if let Ok(channel_data) = wire::parse_channel_data(data) {
                assert!(channel_data.data.len() <= data.len());
            }
        }
        wire::Demux::Other => {}
    }
    if let Ok(client::Incoming::Stun(message)) = client::parse_datagram(data) {
        let _ = client::error_code(&message);
        let _ = client::realm(&message);
        let _ = client::nonce(&message);
        let _ = client::mapped_address(&message);
        let _ = client::lifetime(&message);
        let _ = client::allocation(&message);
        let _ = client::data_indication(&message);
        let _ = client::check_integrity(data, b"key");
    }
});
