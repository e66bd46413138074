//! Property tests: hostile bytes never panic the server and never create state without valid
//! credentials.
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

const INTERESTING_TYPES: [u16; 28] = [
    0x0001, 0x0006, 0x0008, 0x0009, 0x000A, 0x000C, 0x000D, 0x0012, 0x0013, 0x0014, 0x0015, 0x0016,
    0x0017, 0x0018, 0x0019, 0x001A, 0x001C, 0x001D, 0x001E, 0x0020, 0x0022, 0x0024, 0x8000, 0x8001,
    0x8002, 0x8022, 0x8023, 0x8028,
];

fn attribute_type() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => proptest::sample::select(INTERESTING_TYPES.to_vec()),
        1 => any::<u16>(),
    ]
}

/// A STUN header with a correct cookie and length around random attributes.
fn stun_shaped() -> impl Strategy<Value = Vec<u8>> {
    (
        0u16..0x0FFF,
        0u16..4,
        any::<[u8; 12]>(),
        vec((attribute_type(), vec(any::<u8>(), 0..48)), 0..10),
        any::<bool>(),
    )
        .prop_map(|(method, class, tid, attributes, fingerprint)| {
            let message_type = (method & 0x000F)
                | ((class & 1) << 4)
                | ((method & 0x0070) << 5)
                | ((class & 2) << 7)
                | ((method & 0x0F80) << 9);
            let mut out = message_type.to_be_bytes().to_vec();
            out.extend_from_slice(&[0, 0, 0x21, 0x12, 0xA4, 0x42]);
            out.extend_from_slice(&tid);
            for (kind, value) in attributes {
                out.extend_from_slice(&kind.to_be_bytes());
                out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
                out.extend_from_slice(&value);
                out.resize((out.len() + 3) & !3, 0);
            }
            let length = u16::try_from(out.len() - 20).unwrap().to_be_bytes();
            out[2..4].copy_from_slice(&length);
            if fingerprint {
                wire::append_fingerprint(&mut out);
            }
            out
        })
}

fn channel_data_shaped() -> impl Strategy<Value = Vec<u8>> {
    (0x4000u16..0x8000, any::<u16>(), vec(any::<u8>(), 0..64)).prop_map(
        |(channel, length, data)| {
            let mut out = channel.to_be_bytes().to_vec();
            out.extend_from_slice(&(length % 80).to_be_bytes());
            out.extend_from_slice(&data);
            out
        },
    )
}

fn assert_stateless(h: &Harness) -> Result<(), TestCaseError> {
    prop_assert_eq!(h.server.allocation_count(), 0);
    prop_assert_eq!(h.server.poll_timeout(), None);
    prop_assert_eq!(h.server.tx_cache_len(), 0);
    prop_assert_eq!(h.server.pending_count(), 0);
    Ok(())
}

fn no_binds(commands: &[Command]) -> Result<(), TestCaseError> {
    prop_assert!(bind_requests(commands).is_empty());
    let only_responses = commands
        .iter()
        .all(|c| matches!(c, Command::SendToClient { .. }));
    prop_assert!(only_responses);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_client_bytes(data in vec(any::<u8>(), 0..300)) {
        let mut h = Harness::new();
        let commands = h.client_sends(addr("192.0.2.1:1"), &data);
        no_binds(&commands)?;
        assert_stateless(&h)?;
    }

    #[test]
    fn stun_shaped_client_bytes(data in stun_shaped()) {
        let mut h = Harness::new();
        let commands = h.client_sends(addr("192.0.2.1:1"), &data);
        no_binds(&commands)?;
        // Whatever is sent back is well-formed STUN.
        for sent in sent_to(&commands, addr("192.0.2.1:1")) {
            prop_assert!(wire::StunFrame::parse(&sent).is_ok());
        }
        assert_stateless(&h)?;
    }

    #[test]
    fn hostile_bytes_against_an_existing_allocation(
        inputs in vec(prop_oneof![stun_shaped(), channel_data_shaped(), vec(any::<u8>(), 0..100)], 1..8),
        peer_inputs in vec(vec(any::<u8>(), 0..100), 0..4),
    ) {
        let mut h = Harness::new();
        let mut client = Client::alice();
        let relayed = h.allocate(&mut client);
        let r = h.ask(
            &mut client,
            stun_codec::rfc5766::methods::CREATE_PERMISSION,
            vec![crate::attributes::XorPeerAddress::new(peer()).into()],
        );
        prop_assert!(r.is_success());
        for input in &inputs {
            let commands = h.client_sends(client.addr, input);
            prop_assert!(bind_requests(&commands).is_empty());
            let commands = h.client_sends(addr("192.0.2.77:7"), input);
            no_binds(&commands)?;
        }
        for input in &peer_inputs {
            h.peer_sends(relayed, peer(), input);
            h.peer_sends(relayed, addr("203.0.113.200:1"), input);
        }
        prop_assert_eq!(h.server.allocation_count(), 1);
    }

    #[test]
    fn arbitrary_peer_bytes_without_allocation(
        data in vec(any::<u8>(), 0..300),
        port in any::<u16>(),
    ) {
        let mut h = Harness::new();
        let commands = h.peer_sends(SocketAddr::new(relay_v4(), port), peer(), &data);
        prop_assert!(commands.is_empty());
        assert_stateless(&h)?;
    }
}
