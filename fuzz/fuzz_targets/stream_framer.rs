//! The stream framer (TURN over TCP and TLS): bytes pushed in pieces come out as the same
//! messages, whatever the cut points; every message it yields is STUN or ChannelData of the
//! length its header says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turn_proto::stream::Framer;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let frame_all = |pieces: &[&[u8]]| {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        for piece in pieces {
            framer.push(piece);
            loop {
                match framer.next_message() {
                    Ok(Some(message)) => out.push(Ok(message)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(format!("{e:?}")));
                        return out;
                    }
                }
            }
        }
        out
    };
    let whole = frame_all(&[bytes]);
    let at = usize::from(cut) % (bytes.len() + 1);
    let (a, b) = bytes.split_at(at);
    assert_eq!(
        frame_all(&[a, b]),
        whole,
        "framing depends on where the stream was cut"
    );
    for message in whole.iter().flatten() {
        assert!(message.len() >= 4);
        let length = usize::from(u16::from_be_bytes([message[2], message[3]]));
        match message[0] >> 6 {
            0 => assert_eq!(message.len(), 20 + length),
            1 => assert_eq!(message.len(), 4 + length),
            _ => panic!("neither STUN nor ChannelData came out"),
        }
    }
});
