//! Long-term credentials through the server: nonces, static and REST users, SHA-256 keys and
//! MESSAGE-INTEGRITY-SHA256, USERHASH, the PASSWORD-ALGORITHMS downgrade check.
use std::time::Duration;

use stun_codec::MessageClass;
use stun_codec::rfc5766::methods::{ALLOCATE, REFRESH};

use super::*;
use crate::attributes::Lifetime;

#[test]
fn stale_nonce_gets_438_and_reauthentication_works() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    h.allocate(&mut client);
    let old_nonce = client.nonce.clone().unwrap();
    // The nonce lives 600 s; the allocation is kept alive meanwhile.
    h.advance(Duration::from_secs(500));
    assert!(h.ask(&mut client, REFRESH, vec![]).is_success());
    h.advance(Duration::from_secs(200));
    let bytes = client.request(REFRESH, vec![]);
    let r = response_in(&h.client_sends(client.addr, &bytes), client.addr);
    assert_eq!(r.error_code(), Some(438));
    assert_eq!(r.integrity_algorithm(), None);
    assert_eq!(r.get::<Realm>().unwrap().text(), REALM);
    let fresh = r.get::<Nonce>().unwrap().value().to_owned();
    assert_ne!(fresh, old_nonce);
    assert_eq!(h.server.stats().stale_nonces, 1);
    client.learn(&r);
    let r = h.ask(&mut client, REFRESH, vec![]);
    assert!(r.is_success());
    assert!(r.verifies_with(&client.key()));
}

#[test]
fn nonce_of_another_client_address_is_refused() {
    let mut h = Harness::new();
    let mut alice = Client::alice();
    h.ask(&mut alice, REFRESH, vec![]); // learns a nonce for 192.0.2.1:40000
    let mut moved = alice.clone();
    moved.addr = addr("192.0.2.1:40001");
    let bytes = moved.request(ALLOCATE, vec![udp()]);
    let r = response_in(&h.client_sends(moved.addr, &bytes), moved.addr);
    assert_eq!(r.error_code(), Some(438));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn wrong_password_and_unknown_user_are_401() {
    let mut h = Harness::new();
    let mut client = Client::new("192.0.2.1:40000", "alice", "not-the-password");
    let r = h.ask(&mut client, ALLOCATE, vec![udp()]);
    assert_eq!(r.error_code(), Some(401));
    assert_eq!(r.integrity_algorithm(), None);
    assert!(r.get::<Nonce>().is_some());
    let mut stranger = Client::new("192.0.2.1:40001", "mallory", "x");
    assert_eq!(
        h.ask(&mut stranger, ALLOCATE, vec![udp()]).error_code(),
        Some(401)
    );
    assert_eq!(h.server.stats().auth_failures, 2);
    let reasons = h.server.stats().auth_failures_by_reason;
    assert_eq!((reasons.wrong_integrity, reasons.unknown_user), (1, 1));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn credentials_without_realm_or_nonce_are_400() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    h.ask(&mut client, REFRESH, vec![]);
    // MESSAGE-INTEGRITY with USERNAME but no NONCE/REALM.
    let (_, mut bytes) = client.build(
        MessageClass::Request,
        ALLOCATE,
        vec![udp(), Username::new("alice".to_owned()).unwrap().into()],
        false,
    );
    // Drop the FINGERPRINT the builder added, sign, re-add.
    bytes.truncate(bytes.len() - 8);
    let length = u16::try_from(bytes.len() - 20).unwrap().to_be_bytes();
    bytes[2..4].copy_from_slice(&length);
    wire::append_integrity(&mut bytes, IntegrityAlgorithm::HmacSha1, &client.key());
    wire::append_fingerprint(&mut bytes);
    let r = response_in(&h.client_sends(client.addr, &bytes), client.addr);
    assert_eq!(r.error_code(), Some(400));
}

#[test]
fn rest_credentials_valid_expired_and_wrong() {
    let mut h = Harness::new();
    let (user, pass) = cred::rest_credentials(REST_SECRET, "app-user", START_UNIX + 120);
    let mut client = Client::new("192.0.2.20:5000", &user, &pass);
    let relayed = h.allocate(&mut client);
    assert_eq!(relayed.ip(), relay_v4());
    assert_eq!(h.server.allocations().next().unwrap().username(), user);

    // Signed with another secret: 401.
    let (user2, pass2) = cred::rest_credentials("other-secret", "app-user", START_UNIX + 120);
    let mut forged = Client::new("192.0.2.21:5000", &user2, &pass2);
    assert_eq!(
        h.ask(&mut forged, ALLOCATE, vec![udp()]).error_code(),
        Some(401)
    );

    // Expired: 401 (also for the allocation made while it was valid).
    h.advance(Duration::from_secs(121));
    let r = h.ask(&mut client, REFRESH, vec![]);
    assert_eq!(r.error_code(), Some(401));
    let (old_user, old_pass) = cred::rest_credentials(REST_SECRET, "late", START_UNIX + 60);
    let mut late = Client::new("192.0.2.22:5000", &old_user, &old_pass);
    assert_eq!(
        h.ask(&mut late, ALLOCATE, vec![udp()]).error_code(),
        Some(401)
    );
    assert_eq!(h.server.stats().auth_failures, 3);
    let reasons = h.server.stats().auth_failures_by_reason;
    assert_eq!((reasons.expired, reasons.wrong_integrity), (2, 1));
}

#[test]
fn rest_usernames_with_the_timestamp_anywhere_allocate() {
    let mut h = Harness::new();
    for (i, username) in [
        format!("app-user:{}", START_UNIX + 120),
        format!("tenant:{}:app-user", START_UNIX + 120),
    ]
    .into_iter()
    .enumerate()
    {
        let password = cred::rest_password(REST_SECRET, &username);
        let mut client = Client::new(&format!("192.0.2.3{i}:5000"), &username, &password);
        h.allocate(&mut client);
    }
    // Expired, or with no usable timestamp: 401.
    for username in [
        format!("app-user:{}", START_UNIX - 1),
        "app-user:0".to_owned(),
    ] {
        let password = cred::rest_password(REST_SECRET, &username);
        let mut client = Client::new("192.0.2.40:5000", &username, &password);
        assert_eq!(
            h.ask(&mut client, ALLOCATE, vec![udp()]).error_code(),
            Some(401),
            "{username}"
        );
    }
    let reasons = h.server.stats().auth_failures_by_reason;
    assert_eq!((reasons.expired, reasons.unknown_user), (1, 1));
}

#[test]
fn sha256_password_algorithm_and_integrity() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    client.password_algorithm = Some(cred::PasswordAlgorithm::Sha256);
    client.integrity = IntegrityAlgorithm::HmacSha256 { len: 32 };
    let relayed = h.allocate(&mut client);
    assert_eq!(relayed.ip(), relay_v4());
    let r = h.ask(&mut client, REFRESH, vec![Lifetime::from_u32(700).into()]);
    assert!(r.is_success());
    assert_eq!(
        r.integrity_algorithm(),
        Some(IntegrityAlgorithm::HmacSha256 { len: 32 })
    );
    assert!(r.verifies_with(&client.key()));
    assert_eq!(client.key().len(), 32);

    // MESSAGE-INTEGRITY-SHA256 with the MD5 key (no PASSWORD-ALGORITHM) works too, truncated.
    let mut other = Client::bob();
    other.integrity = IntegrityAlgorithm::HmacSha256 { len: 16 };
    h.allocate(&mut other);
    let r = h.ask(&mut other, REFRESH, vec![]);
    assert_eq!(
        r.integrity_algorithm(),
        Some(IntegrityAlgorithm::HmacSha256 { len: 16 })
    );
    assert!(r.verifies_with(&other.key()));

    // SHA-1 integrity with the SHA-256 key.
    let mut third = Client::new("192.0.2.30:1", "alice", "alice-pw");
    third.password_algorithm = Some(cred::PasswordAlgorithm::Sha256);
    assert!(h.allocate_with(&mut third, vec![udp()]).0.is_success());
}

#[test]
fn password_algorithm_downgrade_is_400() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    h.ask(&mut client, REFRESH, vec![]); // learn the nonce
    // PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS.
    let (_, bytes) = client.build(
        MessageClass::Request,
        ALLOCATE,
        vec![
            udp(),
            PasswordAlgorithm::new(cred::PasswordAlgorithm::Md5).into(),
        ],
        true,
    );
    let r = response_in(&h.client_sends(client.addr, &bytes), client.addr);
    assert_eq!(r.error_code(), Some(400));
    // PASSWORD-ALGORITHMS that is not what the server offered (SHA-256 stripped).
    let (_, bytes) = client.build(
        MessageClass::Request,
        ALLOCATE,
        vec![
            udp(),
            PasswordAlgorithms::new(&[cred::PasswordAlgorithm::Md5]).into(),
            PasswordAlgorithm::new(cred::PasswordAlgorithm::Md5).into(),
        ],
        true,
    );
    let r = response_in(&h.client_sends(client.addr, &bytes), client.addr);
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn userhash_for_static_users_only() {
    let mut h = Harness::new();
    let mut client = Client::alice();
    client.userhash = true;
    let relayed = h.allocate(&mut client);
    assert_eq!(relayed.ip(), relay_v4());
    assert_eq!(h.server.allocations().next().unwrap().username(), "alice");
    // REST users cannot be found by hash.
    let (user, pass) = cred::rest_credentials(REST_SECRET, "app", START_UNIX + 3600);
    let mut rest = Client::new("192.0.2.40:1", &user, &pass);
    rest.userhash = true;
    assert_eq!(
        h.ask(&mut rest, ALLOCATE, vec![udp()]).error_code(),
        Some(401)
    );
    assert_eq!(h.server.stats().auth_failures, 1);
    assert_eq!(h.server.stats().auth_failures_by_reason.unknown_userhash, 1);
}

#[test]
fn unauthenticated_requests_create_no_state() {
    let mut h = Harness::new();
    for port in 0..50u16 {
        let mut client = Client::new(&format!("192.0.2.50:{}", 1000 + port), "alice", "x");
        let (_, bytes) = client.build(MessageClass::Request, ALLOCATE, vec![udp()], false);
        let r = response_in(&h.client_sends(client.addr, &bytes), client.addr);
        assert_eq!(r.error_code(), Some(401));
    }
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.poll_timeout(), None);
    assert_eq!(h.server.tx_cache_len(), 0);
}

#[test]
fn new_credentials_keep_live_allocations_and_apply_to_their_next_request() {
    let mut h = Harness::new();
    let mut alice = Client::alice();
    let mut bob = Client::bob();
    h.allocate(&mut alice);
    h.allocate(&mut bob);
    // Reload: bob is gone, alice stays, carol arrives.
    h.server.set_credentials(
        Credentials::new(REALM)
            .with_user("alice", "alice-pw")
            .with_user("carol", "carol-pw"),
    );
    assert_eq!(
        h.server.allocation_count(),
        2,
        "live allocations survive a reload"
    );
    assert!(h.ask(&mut alice, REFRESH, vec![]).is_success());
    assert_eq!(h.ask(&mut bob, REFRESH, vec![]).error_code(), Some(401));
    let mut carol = Client::new("198.51.100.7:40000", "carol", "carol-pw");
    h.allocate(&mut carol);
    assert_eq!(h.server.allocation_count(), 3);
    // Quota counts were recomputed: deleting alice's allocation frees exactly her slot.
    assert!(
        h.ask(&mut alice, REFRESH, vec![Lifetime::from_u32(0).into()])
            .is_success()
    );
    assert_eq!(h.server.allocation_count(), 2);
}
