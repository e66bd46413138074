//! Answers to sources that did not authenticate are bounded by what the source sent (plus a
//! burst), so a spoofed source address cannot turn the relay into an amplifier.
use std::time::Duration;

use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::methods::{ALLOCATE, REFRESH};

use super::*;
use crate::attributes::Lifetime;
use crate::server::AnswerLimits;

/// `count` unauthenticated Allocates from `client`, one per millisecond: the bytes asked and
/// the bytes answered.
fn flood(h: &mut Harness, client: &mut Client, count: usize) -> (usize, usize) {
    let (mut asked, mut answered) = (0, 0);
    for _ in 0..count {
        let (_, request) = client.build(MessageClass::Request, ALLOCATE, vec![udp()], false);
        asked += request.len();
        let commands = h.client_sends(client.addr, &request);
        answered += sent_to(&commands, client.addr)
            .iter()
            .map(Vec::len)
            .sum::<usize>();
        h.now += Duration::from_millis(1);
    }
    (asked, answered)
}

#[test]
fn unauthenticated_answers_cost_no_more_than_the_requests_beyond_a_burst() {
    let mut h = Harness::new();
    let limits = AnswerLimits::default();
    let mut attacker = Client::new("198.18.0.66:5000", "nobody", "x");
    let (asked, answered) = flood(&mut h, &mut attacker, 5000);
    // 5 000 requests over 5 s: the burst, the refill for 5 s, and the requests' own bytes.
    let bound = asked + limits.source_burst as usize + 5 * limits.source_refill as usize;
    assert!(
        answered <= bound,
        "answered {answered} B for {asked} B asked"
    );
    let stats = h.server.stats();
    assert!(stats.unauthenticated_answers_limited > 0);
    assert_eq!(
        stats.unauthenticated_answer_bytes as usize, answered,
        "every answer counted"
    );
    assert_eq!(
        stats.unauthenticated_answers + stats.unauthenticated_answers_limited,
        5000
    );
    // The 401 itself stays small: no SOFTWARE in answers to unauthenticated requests.
    let mut fresh = Harness::new();
    let (request_len, challenge) = flood(&mut fresh, &mut Client::alice(), 1);
    assert_eq!(request_len, 36);
    assert!(challenge <= 132, "a 401 of {challenge} B");
    println!(
        "401: {challenge} B for a {request_len} B Allocate; flood: {answered} B for {asked} B"
    );
}

#[test]
fn clients_behind_one_nat_still_authenticate_and_authenticated_answers_are_never_limited() {
    let mut h = Harness::new();
    // 60 clients behind one address start at once: all of them get their allocations.
    let mut clients: Vec<Client> = (0..60)
        .map(|i| Client::new(&format!("203.0.113.9:{}", 40_000 + i), "alice", "alice-pw"))
        .collect();
    for client in &mut clients {
        h.allocate(client);
    }
    assert_eq!(h.server.stats().unauthenticated_answers_limited, 0);
    // Someone spends the address's budget with a flood (its requests spoofed, say) ...
    let mut spoofer = Client::new("203.0.113.9:9", "nobody", "x");
    flood(&mut h, &mut spoofer, 2000);
    assert!(h.server.stats().unauthenticated_answers_limited > 0);
    let charged = |h: &Harness| {
        let stats = h.server.stats();
        stats.unauthenticated_answers + stats.unauthenticated_answers_limited
    };
    let before = charged(&h);
    let (_, binding) = spoofer.build(MessageClass::Request, BINDING, vec![], false);
    h.client_sends(spoofer.addr, &binding);
    assert_eq!(
        charged(&h),
        before + 1,
        "a Binding response is paid for too"
    );
    // ... yet the clients' authenticated requests are answered as ever.
    let lifetime = Lifetime::new(Duration::from_secs(600)).expect("lifetime");
    let r = h.ask(&mut clients[0], REFRESH, vec![lifetime.into()]);
    assert!(r.is_success(), "{r:?}");
    // Another address is not affected.
    let mut other = Client::new("203.0.114.9:40000", "alice", "alice-pw");
    h.allocate(&mut other);
}
