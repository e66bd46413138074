//! Snapshots and their adoption by a new server (hitless restart).
use std::time::{Duration, UNIX_EPOCH};

use stun_codec::rfc5766::methods::{CHANNEL_BIND, REFRESH};

use super::super::attributes::{ChannelNumber, Lifetime, XorPeerAddress};
use super::super::{Command, Server, Snapshot};
use super::*;
use crate::policy::PeerPolicy;

fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut out = channel.to_be_bytes().to_vec();
    out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// A server started `later` after the harness's clock reads now, with the same nonce key.
fn restarted(h: &Harness, later: Duration) -> Harness {
    let taken = Duration::from_millis(h.server.snapshot(h.now).taken_unix_ms);
    let server = Server::new(
        config(),
        credentials(),
        PeerPolicy::open(vec![listener_addr()]),
        [42; 32],
        [8; 32],
        h.now,
        UNIX_EPOCH + taken + later,
    );
    Harness { server, now: h.now }
}

fn bound_allocation() -> (Harness, Client, SocketAddr) {
    let mut h = Harness::new();
    let mut client = Client::alice();
    let relayed = h.allocate(&mut client);
    let version = h.server.state_version();
    let r = h.ask(
        &mut client,
        CHANNEL_BIND,
        vec![
            ChannelNumber::new(0x4001).into(),
            XorPeerAddress::new(peer()).into(),
        ],
    );
    assert!(r.is_success());
    assert_ne!(
        h.server.state_version(),
        version,
        "a bind changes the state"
    );
    let version = h.server.state_version();
    assert_eq!(
        h.client_sends(client.addr, &channel_data(0x4001, b"x"))
            .len(),
        1
    );
    assert_eq!(
        h.server.state_version(),
        version,
        "ChannelData changes nothing"
    );
    (h, client, relayed)
}

#[test]
fn a_restored_allocation_relays_refreshes_and_deletes() {
    let (mut h, mut client, relayed) = bound_allocation();
    h.advance(Duration::from_secs(10));
    let json = serde_json::to_string(&h.server.snapshot(h.now)).unwrap();
    let snapshot: Snapshot = serde_json::from_str(&json).unwrap();

    let mut n = restarted(&h, Duration::from_secs(5));
    let outcome = n.server.restore(&snapshot, n.now);
    assert_eq!(outcome.relayed, vec![relayed]);
    assert_eq!(
        (outcome.allocations, outcome.channels, outcome.skipped),
        (1, 1, 0)
    );
    assert!(n.drain().is_empty(), "restoring emits nothing");
    let bindings = n.server.installed_channel_bindings();
    assert_eq!(bindings.len(), 1);
    assert_eq!((bindings[0].channel, bindings[0].peer), (0x4001, peer()));
    // Lifetime: 600 s, 10 s passed before and 5 s while down.
    let allocation = n.server.allocations().next().unwrap();
    let left = allocation.expires() - n.now;
    assert!(
        left <= Duration::from_secs(585) && left > Duration::from_secs(584),
        "{left:?}"
    );

    // Relays both ways, and the client's nonce is still good.
    assert_eq!(
        n.client_sends(client.addr, &channel_data(0x4001, b"abc")),
        vec![Command::SendToPeer {
            relayed,
            peer: peer(),
            data: b"abc".to_vec(),
            dont_fragment: false,
        }]
    );
    assert_eq!(
        sent_to(&n.peer_sends(relayed, peer(), b"hi"), client.addr).len(),
        1
    );
    let r = n.ask(
        &mut client,
        REFRESH,
        vec![Lifetime::new(Duration::from_secs(300)).unwrap().into()],
    );
    assert!(r.is_success(), "{r:?}");
    let r = n.ask(
        &mut client,
        REFRESH,
        vec![Lifetime::new(Duration::ZERO).unwrap().into()],
    );
    assert!(r.is_success(), "{r:?}");
    assert_eq!(n.server.allocation_count(), 0);
    // The quota count was restored and is released again: a new allocation is possible.
    let mut again = Client::alice();
    n.allocate(&mut again);
}

#[test]
fn time_spent_down_counts_and_expired_state_is_left_out() {
    let (mut h, _client, _) = bound_allocation();
    h.advance(Duration::from_secs(10));
    let snapshot = h.server.snapshot(h.now);
    // Permissions live 300 s, channels 600 s, the allocation 600 s.
    let mut n = restarted(&h, Duration::from_secs(400));
    let outcome = n.server.restore(&snapshot, n.now);
    assert_eq!((outcome.allocations, outcome.channels), (1, 1));
    assert!(
        n.server.installed_channel_bindings().is_empty(),
        "the permission expired while down: nothing for the kernel"
    );
    let mut late = restarted(&h, Duration::from_secs(700));
    let outcome = late.server.restore(&snapshot, late.now);
    assert_eq!((outcome.allocations, outcome.skipped), (0, 1));
    assert!(outcome.relayed.is_empty());
}

#[test]
fn an_unbindable_restored_allocation_is_dropped() {
    let (mut h, _client, relayed) = bound_allocation();
    let snapshot = h.server.snapshot(h.now);
    let mut n = restarted(&h, Duration::from_secs(1));
    n.server.restore(&snapshot, n.now);
    assert!(n.server.drop_restored(relayed));
    let commands = n.drain();
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::ChannelUnbound(b) if b.relayed == relayed))
    );
    assert!(commands.contains(&Command::ReleaseRelay { addr: relayed }));
    assert_eq!(n.server.allocation_count(), 0);
    assert!(!n.server.drop_restored(relayed));
    h.advance(Duration::from_secs(1));
}

#[test]
fn foreign_or_clashing_state_is_refused() {
    let (h, _client, _) = bound_allocation();
    let mut snapshot = h.server.snapshot(h.now);
    let mut n = restarted(&h, Duration::from_secs(1));
    let mut copy = snapshot.clone();
    copy.version = 99;
    assert_eq!(n.server.restore(&copy, n.now).allocations, 0);
    // A relayed address off the configured relay IP, a listener that is not there.
    let mut copy = snapshot.clone();
    copy.allocations[0].relayed = vec![addr("192.0.2.200:50000")];
    copy.allocations[0].listener = 7;
    assert_eq!(n.server.restore(&copy, n.now).skipped, 1);
    // Adopting twice: the second is a clash.
    assert_eq!(n.server.restore(&snapshot, n.now).allocations, 1);
    assert_eq!(n.server.restore(&snapshot, n.now).skipped, 1);
    snapshot.allocations[0].channels[0].number = 1;
    let mut m = restarted(&h, Duration::from_secs(1));
    assert_eq!(m.server.restore(&snapshot, m.now).skipped, 1);
    assert!(m.drain().is_empty());
}
