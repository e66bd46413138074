//! Snapshots and their adoption by a new server (hitless restart).
use std::time::{Duration, UNIX_EPOCH};

use stun_codec::rfc5766::methods::{CHANNEL_BIND, REFRESH};

use super::super::{Command, Server, Snapshot};
use super::*;
use crate::attributes::{ChannelNumber, Lifetime, XorPeerAddress};
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
    Harness {
        server,
        now: h.now,
        listener: MAIN,
    }
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

/// One step a client can take, for the property test below.
#[derive(Debug, Clone)]
enum Step {
    /// Client `0` allocates: IPv4, IPv6, dual-stack, or IPv4 with EVEN-PORT R (a reservation).
    Allocate(usize, u8),
    /// Client `0` claims the newest reservation token seen.
    Claim(usize),
    /// Client `0` permits peer `1`.
    Permit(usize, usize),
    /// Client `0` binds channel `1` to peer `2`.
    Bind(usize, u16, usize),
    /// Client `0` refreshes (0 deletes).
    Refresh(usize, u64),
    /// Time passes, timers run.
    Wait(u64),
}

fn peers() -> [SocketAddr; 6] {
    [
        addr("203.0.113.5:6000"),
        addr("203.0.113.5:6001"),
        addr("203.0.113.9:7000"),
        addr("[2001:db8:5::5]:7000"),
        addr("[2001:db8:5::6]:7001"),
        addr("[2001:db8:5::6]:7002"),
    ]
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        2 => (0..4usize, 0..4u8).prop_map(|(c, k)| Step::Allocate(c, k)),
        1 => (0..4usize).prop_map(Step::Claim),
        2 => (0..4usize, 0..6usize).prop_map(|(c, p)| Step::Permit(c, p)),
        // Every valid number is as likely as the edges and a few invalid ones.
        4 => (0..4usize, prop_oneof![
            4 => relay_common::CHANNEL_NUMBER_MIN..=relay_common::CHANNEL_NUMBER_MAX,
            1 => proptest::sample::select(vec![0x4000u16, 0x4FFF, 0x5000, 0x7FFF, 0x3FFF, 0x8000]),
        ], 0..6usize).prop_map(|(c, n, p)| Step::Bind(c, n, p)),
        1 => (0..4usize, prop_oneof![Just(0u64), 60..3600u64]).prop_map(|(c, l)| Step::Refresh(c, l)),
        2 => prop_oneof![1..30u64, 250..700u64].prop_map(Step::Wait),
    ]
}

/// Runs `steps` against a fresh server; returns it.
fn reach(steps: &[Step]) -> Harness {
    let mut script = Script::new();
    script.run(steps);
    script.h
}

/// A server with four clients that [`Step`]s act on.
struct Script {
    h: Harness,
    clients: Vec<Client>,
    tokens: Vec<u64>,
}

impl Script {
    fn new() -> Script {
        Script {
            h: Harness::new(),
            clients: (0..4)
                .map(|i| Client::new(&format!("192.0.2.{}:40000", i + 1), "alice", "alice-pw"))
                .collect(),
            tokens: Vec::new(),
        }
    }

    fn run(&mut self, steps: &[Step]) {
        use stun_codec::rfc5766::methods::CREATE_PERMISSION;
        use stun_codec::rfc8656::attributes::AddressFamily;

        use crate::attributes::{
            AdditionalAddressFamily, EvenPort, RequestedAddressFamily, ReservationToken,
        };

        let Script { h, clients, tokens } = self;
        let peers = peers();
        for step in steps {
            match *step {
                Step::Allocate(c, kind) => {
                    let family = match kind {
                        0 => vec![],
                        1 => vec![RequestedAddressFamily::new(AddressFamily::V6).into()],
                        2 => vec![AdditionalAddressFamily::new(AddressFamily::V6).into()],
                        _ => vec![EvenPort::new(true).into()],
                    };
                    let mut attributes = vec![udp()];
                    attributes.extend(family);
                    let (r, _) = h.allocate_with(&mut clients[c], attributes);
                    if let Some(token) = r.get::<ReservationToken>() {
                        tokens.push(token.token());
                    }
                }
                Step::Claim(c) => {
                    if let Some(token) = tokens.pop() {
                        h.allocate_with(
                            &mut clients[c],
                            vec![udp(), ReservationToken::new(token).into()],
                        );
                    }
                }
                Step::Permit(c, p) => {
                    h.call(
                        &mut clients[c],
                        CREATE_PERMISSION,
                        vec![XorPeerAddress::new(peers[p]).into()],
                    );
                }
                Step::Bind(c, number, p) => {
                    h.call(
                        &mut clients[c],
                        CHANNEL_BIND,
                        vec![
                            ChannelNumber::new(number).into(),
                            XorPeerAddress::new(peers[p]).into(),
                        ],
                    );
                }
                Step::Refresh(c, lifetime) => {
                    h.call(
                        &mut clients[c],
                        REFRESH,
                        vec![Lifetime::new(Duration::from_secs(lifetime)).unwrap().into()],
                    );
                }
                Step::Wait(secs) => {
                    h.advance(Duration::from_secs(secs));
                }
            }
            h.drain();
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// The changes tracked after a snapshot, applied to it (in one go or in rounds, through
    /// JSON as a journal holds them), give the snapshot taken after them.
    #[test]
    fn tracked_changes_replay_onto_an_earlier_snapshot(
        before in proptest::collection::vec(step(), 0..20),
        first in proptest::collection::vec(step(), 0..20),
        second in proptest::collection::vec(step(), 0..20),
    ) {
        let mut script = Script::new();
        script.h.server.track_changes();
        script.run(&before);
        let base = script.h.server.snapshot(script.h.now);
        script.h.server.clear_changes();
        let mut rounds = Vec::new();
        for steps in [&first, &second] {
            script.run(steps);
            let changes = script.h.server.take_changes();
            let json = serde_json::to_string(&changes).unwrap();
            rounds.push(serde_json::from_str::<Vec<crate::server::AllocationChange>>(&json).unwrap());
        }
        let mut replayed = base;
        for changes in rounds {
            replayed = replayed.with_changes(changes);
        }
        let now = script.h.server.snapshot(script.h.now);
        replayed.taken_unix_ms = now.taken_unix_ms;
        proptest::prop_assert_eq!(replayed, now);
        proptest::prop_assert!(script.h.server.take_changes().is_empty());
    }

    /// Whatever state the live core reaches, a new server adopts all of it: the same snapshot
    /// comes back out, nothing is refused, and the same bindings go to the kernel.
    #[test]
    fn any_reachable_state_survives_snapshot_and_restore(
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let h = reach(&steps);
        let before = h.server.snapshot(h.now);
        let json = serde_json::to_string(&before).unwrap();
        let read: Snapshot = serde_json::from_str(&json).unwrap();
        let mut n = restarted(&h, Duration::ZERO);
        let outcome = n.server.restore(&read, n.now);
        proptest::prop_assert_eq!(&outcome.refused, &Vec::new());
        proptest::prop_assert_eq!(outcome.allocations, before.allocations.len());
        let reserved = before.allocations.iter().filter(|a| a.reservation.is_some()).count();
        let relayed: usize = before.allocations.iter().map(|a| a.relayed.len()).sum();
        proptest::prop_assert_eq!(outcome.relayed.len(), relayed + reserved);
        let after = n.server.snapshot(n.now);
        proptest::prop_assert_eq!(&after, &before);
        let mut old = h.server.installed_channel_bindings();
        let mut new = n.server.installed_channel_bindings();
        old.sort_by_key(|b| (b.client, b.channel));
        new.sort_by_key(|b| (b.client, b.channel));
        proptest::prop_assert_eq!(old, new);
        proptest::prop_assert!(n.drain().is_empty(), "restoring emits nothing");
    }
}

#[test]
fn coturn_client_channel_numbers_are_adopted() {
    // turnutils_uclient picks numbers above 0x4FFF; the live core binds them, so adoption must.
    let mut h = Harness::new();
    let mut client = Client::alice();
    h.allocate(&mut client);
    for (number, peer) in [(0x5000, peer()), (0x7FFF, addr("203.0.113.6:1"))] {
        let r = h.ask(
            &mut client,
            CHANNEL_BIND,
            vec![
                ChannelNumber::new(number).into(),
                XorPeerAddress::new(peer).into(),
            ],
        );
        assert!(r.is_success(), "{r:?}");
    }
    let snapshot = h.server.snapshot(h.now);
    let mut n = restarted(&h, Duration::from_secs(1));
    let outcome = n.server.restore(&snapshot, n.now);
    assert_eq!((outcome.allocations, outcome.channels), (1, 2));
    assert_eq!(n.server.installed_channel_bindings().len(), 2);
}

#[test]
fn a_refusal_names_its_rule_and_is_counted() {
    let (h, _client, _) = bound_allocation();
    let snapshot = h.server.snapshot(h.now);
    type Breakage = Box<dyn Fn(&mut Snapshot)>;
    let cases: Vec<(Breakage, &str)> = vec![
        (
            Box::new(|s| s.allocations[0].channels[0].number = 0x8000),
            "channel_number",
        ),
        (
            Box::new(|s| s.allocations[0].channels[0].number = 0x3FFF),
            "channel_number",
        ),
        (
            Box::new(|s| {
                let again = s.allocations[0].channels[0].clone();
                s.allocations[0].channels.push(again);
            }),
            "channel_listed_twice",
        ),
        (
            Box::new(|s| {
                let mut other = s.allocations[0].channels[0].clone();
                other.number = 0x4002;
                s.allocations[0].channels.push(other);
            }),
            "channel_peer_taken",
        ),
        (
            Box::new(|s| s.allocations[0].channels[0].peer = addr("[2001:db8::1]:1")),
            "channel_family",
        ),
        (
            Box::new(|s| s.allocations[0].permissions[0].peer = "2001:db8::1".parse().unwrap()),
            "permission_family",
        ),
        (
            Box::new(|s| {
                let again = s.allocations[0].permissions[0].clone();
                s.allocations[0].permissions.push(again);
            }),
            "permission_listed_twice",
        ),
        (
            Box::new(|s| s.allocations[0].relayed = vec![addr("198.51.100.1:40000")]),
            "relayed_not_configured",
        ),
        (
            Box::new(|s| {
                let one = s.allocations[0].relayed[0];
                s.allocations[0].relayed = vec![one, one];
            }),
            "relayed_malformed",
        ),
        (Box::new(|s| s.allocations[0].listener = 3), "listener_gone"),
        (Box::new(|s| s.version = 99), "unknown_version"),
    ];
    for (break_it, reason) in cases {
        let mut broken = snapshot.clone();
        break_it(&mut broken);
        let mut n = restarted(&h, Duration::from_secs(1));
        let outcome = n.server.restore(&broken, n.now);
        assert_eq!(outcome.skipped, 1, "{reason}");
        assert_eq!(outcome.refused.len(), 1, "{reason}");
        assert_eq!(outcome.refused[0].1.label(), reason);
        let counted: Vec<_> = n
            .server
            .stats()
            .adoption_refusals()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(counted, vec![(reason, 1)]);
        assert_eq!(n.server.allocation_count(), 0);
        assert!(n.drain().is_empty());
    }
}

#[test]
fn a_reservation_is_adopted_and_can_be_claimed() {
    use stun_codec::rfc5766::methods::ALLOCATE;

    use crate::attributes::{EvenPort, ReservationToken};

    let mut h = Harness::new();
    let mut alice = Client::alice();
    let (r, _) = h.allocate_with(&mut alice, vec![udp(), EvenPort::new(true).into()]);
    let token = r.get::<ReservationToken>().unwrap().token();
    let relayed = r.relayed()[0];
    let snapshot = h.server.snapshot(h.now);
    let mut n = restarted(&h, Duration::from_secs(1));
    let outcome = n.server.restore(&snapshot, n.now);
    let reserved = SocketAddr::new(relayed.ip(), relayed.port() + 1);
    assert_eq!(outcome.relayed, vec![relayed, reserved]);
    let mut bob = Client::bob();
    let (r, commands) = n.allocate_with(&mut bob, vec![udp(), ReservationToken::new(token).into()]);
    assert!(r.is_success(), "{r:?}");
    assert_eq!(r.relayed(), vec![reserved]);
    assert!(
        bind_requests(&commands).is_empty(),
        "the reserved socket is bound already"
    );
    let _ = ALLOCATE;
}
