//! The TURN server's protocol core (STUN/TURN requests, ChannelData, peer datagrams, timers,
//! stream framing) on a script of records (see the harness, `src/lib.rs`). Never panics,
//! whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|script: &[u8]| {
    let mut harness = xturn_fuzz::Harness::new();
    harness.run(script);
});
