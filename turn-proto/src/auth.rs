//! Long-term credentials (RFC 8489 §9.2), TURN REST API credentials and stateless nonces.
//!
//! This module owns the secrets and the cryptography around them:
//!
//! - [`Credentials`]: static users and TURN REST shared secrets, and the long-term key(s) a
//!   username maps to;
//! - [`long_term_key`], [`userhash`]: the RFC 8489 §9.2.2 and §14.4 derivations;
//! - [`hmac_sha1`], [`hmac_sha256`], [`verify_tag`]: MESSAGE-INTEGRITY(-SHA256) primitives;
//! - [`NonceMint`]: nonces that carry their own expiry and are bound to the client's address by an
//!   HMAC, so a server needs no per-client state before a request authenticates;
//! - [`rest_credentials`]: what an application server hands out under the TURN REST API
//!   convention (`username = "<expiry>:<user id>"`, `password = base64(HMAC-SHA1(secret,
//!   username))`). Verification takes the expiry from any position, as STUNner does (see
//!   [`rest_expiry`]).
//!
//! Nothing here reads a clock: callers pass the current UNIX second.
//!
//! Strings are used as given: usernames, realms and passwords are not run through SASLprep /
//! OpaqueString, which makes no difference for ASCII credentials.
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use md5::{Digest as _, Md5};
use ring::{digest, hmac};

/// Why a username has no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Neither a static user nor a well-formed TURN REST username (or no REST secret is set).
    /// A REST username is well-formed when one of its `:`-separated parts is a non-zero
    /// timestamp ([`rest_expiry`]).
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// A TURN REST username whose expiry has passed.
    #[error("credentials of {username:?} expired at {expired_at} (now {now})")]
    Expired {
        username: String,
        /// The username's timestamp (UNIX seconds; may be negative).
        expired_at: i64,
        now: u64,
    },
}

/// The hash that turns a password into a long-term key (PASSWORD-ALGORITHM, RFC 8489 §14.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PasswordAlgorithm {
    /// 0x0001: MD5(username ":" realm ":" password), the RFC 5389 key.
    Md5,
    /// 0x0002: SHA-256(username ":" realm ":" password).
    Sha256,
}

impl PasswordAlgorithm {
    /// Where this algorithm's key is kept in a per-user pair of keys (MD5, then SHA-256).
    fn slot(self) -> usize {
        match self {
            PasswordAlgorithm::Md5 => 0,
            PasswordAlgorithm::Sha256 => 1,
        }
    }

    /// What the server offers in PASSWORD-ALGORITHMS, most preferred first.
    pub const OFFERED: [PasswordAlgorithm; 2] = [PasswordAlgorithm::Sha256, PasswordAlgorithm::Md5];

    /// The registered codepoint.
    pub const fn code(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => 0x0001,
            PasswordAlgorithm::Sha256 => 0x0002,
        }
    }

    /// The algorithm with this codepoint, if it is one we implement.
    pub const fn from_code(code: u16) -> Option<Self> {
        match code {
            0x0001 => Some(PasswordAlgorithm::Md5),
            0x0002 => Some(PasswordAlgorithm::Sha256),
            _ => None,
        }
    }
}

/// Which HMAC protects a message: MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntegrityAlgorithm {
    /// MESSAGE-INTEGRITY (0x0008): HMAC-SHA1, 20 bytes.
    HmacSha1,
    /// MESSAGE-INTEGRITY-SHA256 (0x001C): HMAC-SHA256, truncated to `len` bytes (16..=32, a
    /// multiple of 4; 32 when not truncated).
    HmacSha256 { len: usize },
}

impl IntegrityAlgorithm {
    /// Length of the tag this algorithm puts on the wire.
    pub const fn tag_len(self) -> usize {
        match self {
            IntegrityAlgorithm::HmacSha1 => 20,
            IntegrityAlgorithm::HmacSha256 { len } => len,
        }
    }

    /// The tag of `data` under `key`, truncated to [`Self::tag_len`].
    pub fn tag(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        IntegrityKey::new(self, key).tag(data)
    }
}

/// A long-term key prepared for one MESSAGE-INTEGRITY algorithm: HMAC's inner and outer hash
/// states are computed once, so that verifying a request and signing its response do not each
/// compute them again. Its `Debug` shows the algorithm only.
#[derive(Clone)]
pub struct IntegrityKey {
    algorithm: IntegrityAlgorithm,
    key: PreparedHmac,
}

/// HMAC with its key's hash states computed. SHA-1 is RustCrypto's, which uses the CPU's SHA
/// extensions where there are some (ring's SHA-1 is portable code, about 3× slower per
/// MESSAGE-INTEGRITY); SHA-256 is ring's.
#[derive(Clone)]
enum PreparedHmac {
    Sha1(Sha1Hmac),
    Sha256(hmac::Key),
}

type Sha1Hmac = ::hmac::Hmac<sha1::Sha1>;

/// A SHA-1 HMAC state for `key` (HMAC takes keys of any length, so this cannot fail).
fn sha1_hmac(key: &[u8]) -> Sha1Hmac {
    <Sha1Hmac as ::hmac::digest::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"))
}

impl IntegrityKey {
    pub fn new(algorithm: IntegrityAlgorithm, key: &[u8]) -> Self {
        let key = match algorithm {
            IntegrityAlgorithm::HmacSha1 => PreparedHmac::Sha1(sha1_hmac(key)),
            IntegrityAlgorithm::HmacSha256 { .. } => {
                PreparedHmac::Sha256(hmac::Key::new(hmac::HMAC_SHA256, key))
            }
        };
        IntegrityKey { algorithm, key }
    }

    pub fn algorithm(&self) -> IntegrityAlgorithm {
        self.algorithm
    }

    /// The tag of `data`, truncated to the algorithm's [`IntegrityAlgorithm::tag_len`].
    pub fn tag(&self, data: &[u8]) -> Vec<u8> {
        let (tag, len) = self.full_tag(&[data]);
        tag[..self.algorithm.tag_len().min(len)].to_vec()
    }

    /// The untruncated HMAC of the concatenation of `parts`: the first 20 (SHA-1) or 32
    /// (SHA-256) bytes of the array.
    fn full_tag(&self, parts: &[&[u8]]) -> ([u8; 32], usize) {
        let mut out = [0u8; 32];
        match &self.key {
            PreparedHmac::Sha1(state) => {
                let mut mac = state.clone();
                for part in parts {
                    ::hmac::Mac::update(&mut mac, part);
                }
                out[..20].copy_from_slice(&::hmac::Mac::finalize(mac).into_bytes());
                (out, 20)
            }
            PreparedHmac::Sha256(key) => {
                let mut context = hmac::Context::with_key(key);
                for part in parts {
                    context.update(part);
                }
                out.copy_from_slice(context.sign().as_ref());
                (out, 32)
            }
        }
    }

    /// Is `tag` this key's tag of `data`? Constant time in the contents.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        self.verify_parts(&[data], tag)
    }

    /// [`IntegrityKey::verify`] of the concatenation of `parts`, without building it.
    pub fn verify_parts(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        if tag.len() != self.algorithm.tag_len() {
            return false;
        }
        let (expected, len) = self.full_tag(parts);
        tags_equal(&expected[..len], tag)
    }
}

impl fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntegrityKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The long-term key of RFC 8489 §9.2.2: `alg(username ":" realm ":" password)`.
pub fn long_term_key(
    alg: PasswordAlgorithm,
    username: &str,
    realm: &str,
    password: &str,
) -> Vec<u8> {
    let input = format!("{username}:{realm}:{password}");
    match alg {
        PasswordAlgorithm::Md5 => Md5::digest(input.as_bytes()).to_vec(),
        PasswordAlgorithm::Sha256 => digest::digest(&digest::SHA256, input.as_bytes())
            .as_ref()
            .to_vec(),
    }
}

/// USERHASH (RFC 8489 §14.4): SHA-256(username ":" realm).
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, format!("{username}:{realm}").as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// HMAC-SHA1 (MESSAGE-INTEGRITY).
pub fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut mac = sha1_hmac(key);
    ::hmac::Mac::update(&mut mac, data);
    ::hmac::Mac::finalize(mac).into_bytes().into()
}

/// HMAC-SHA256 (MESSAGE-INTEGRITY-SHA256, nonces).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Does `tag` equal the first `tag.len()` bytes of `expected`? Constant time in the contents.
fn tags_equal(expected: &[u8], tag: &[u8]) -> bool {
    if tag.is_empty() || tag.len() > expected.len() {
        return false;
    }
    expected
        .iter()
        .zip(tag)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Is `tag` the `alg` tag of `data` under `key`?
pub fn verify_tag(alg: IntegrityAlgorithm, key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    IntegrityKey::new(alg, key).verify(data, tag)
}

/// The TURN REST API password of `username` under `secret`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &str, username: &str) -> String {
    STANDARD.encode(hmac_sha1(secret.as_bytes(), username.as_bytes()))
}

/// Time-limited credentials under the TURN REST API convention, for `xturnctl` and application
/// servers: `("<expires_unix>:<user_id>", base64(HMAC-SHA1(secret, username)))`.
pub fn rest_credentials(secret: &str, user_id: &str, expires_unix: u64) -> (String, String) {
    let username = format!("{expires_unix}:{user_id}");
    let password = rest_password(secret, &username);
    (username, password)
}

/// The expiry of a TURN REST username, as STUNner reads it: the username is split at every
/// `:`, and the first part that is a signed decimal integer (`1700000000`, `+17`, `-5`) is the
/// expiry in UNIX seconds, wherever it stands (`"<ts>:<user>"`, `"<user>:<ts>"`,
/// `"<a>:<ts>:<b>"`, or `"<ts>"` alone). Returns the part's index and its value; `None` when no
/// part is an integer or the first integer part is 0 (not a time-limited username).
pub fn rest_expiry(username: &str) -> Option<(usize, i64)> {
    let (index, stamp) = username
        .split(':')
        .enumerate()
        .find_map(|(i, part)| part.parse::<i64>().ok().map(|stamp| (i, stamp)))?;
    (stamp != 0).then_some((index, stamp))
}

/// Who may authenticate: static users and TURN REST shared secrets.
///
/// Static users win over REST when a static username happens to look like a REST one. Several
/// REST secrets may be set at once so that a secret can be rotated without a flag day.
#[derive(Clone, Default)]
pub struct Credentials {
    realm: String,
    users: HashMap<String, String>,
    /// Each static user's long-term keys in `realm` (MD5, then SHA-256), computed once.
    user_keys: HashMap<String, [UserKey; 2]>,
    by_userhash: HashMap<[u8; 32], String>,
    rest_secrets: Vec<String>,
    rest_keys: RestKeyCache,
}

/// A static user's long-term key under one password algorithm, with its HMAC keys for both
/// integrity algorithms prepared (an HMAC key costs two hash blocks to prepare).
#[derive(Clone)]
struct UserKey {
    long_term: Vec<u8>,
    sha1: IntegrityKey,
    sha256: IntegrityKey,
}

impl UserKey {
    fn new(long_term: Vec<u8>) -> Self {
        UserKey {
            sha1: IntegrityKey::new(IntegrityAlgorithm::HmacSha1, &long_term),
            sha256: IntegrityKey::new(IntegrityAlgorithm::HmacSha256 { len: 32 }, &long_term),
            long_term,
        }
    }

    /// The prepared key for `algorithm` (its truncation included).
    fn integrity_key(&self, algorithm: IntegrityAlgorithm) -> IntegrityKey {
        let prepared = match algorithm {
            IntegrityAlgorithm::HmacSha1 => &self.sha1,
            IntegrityAlgorithm::HmacSha256 { .. } => &self.sha256,
        };
        IntegrityKey {
            algorithm,
            key: prepared.key.clone(),
        }
    }
}

/// TURN REST long-term keys already computed, by username and password algorithm: a REST
/// client signs every request of its session with the same username, and computing its key
/// takes an HMAC and a hash per secret. Emptied when it holds [`REST_KEY_CACHE`] usernames; a
/// copy of the credentials starts with an empty one, and adding a secret empties it.
#[derive(Default)]
struct RestKeyCache(std::sync::Mutex<HashMap<String, RestKeys>>);

/// A REST username's keys under each password algorithm (MD5, then SHA-256), once computed.
type RestKeys = [Option<Vec<Vec<u8>>>; 2];

/// Most usernames in the [`RestKeyCache`].
const REST_KEY_CACHE: usize = 4096;

impl Clone for RestKeyCache {
    fn clone(&self) -> Self {
        RestKeyCache::default()
    }
}

impl RestKeyCache {
    fn get(&self, username: &str, alg: PasswordAlgorithm) -> Option<Vec<Vec<u8>>> {
        let cache = self.0.lock().ok()?;
        cache.get(username)?[alg.slot()].clone()
    }

    fn insert(&self, username: &str, alg: PasswordAlgorithm, keys: &[Vec<u8>]) {
        if let Ok(mut cache) = self.0.lock() {
            if cache.len() >= REST_KEY_CACHE && !cache.contains_key(username) {
                cache.clear();
            }
            cache.entry(username.to_owned()).or_default()[alg.slot()] = Some(keys.to_vec());
        }
    }

    fn clear(&self) {
        if let Ok(mut cache) = self.0.lock() {
            cache.clear();
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print passwords or secrets.
        f.debug_struct("Credentials")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("rest_secrets", &self.rest_secrets.len())
            .finish()
    }
}

impl Credentials {
    /// No users yet. `realm` is the realm USERHASH values are computed against; it should be the
    /// server's realm.
    pub fn new(realm: impl Into<String>) -> Self {
        Credentials {
            realm: realm.into(),
            ..Credentials::default()
        }
    }

    /// Adds (or replaces) a static user.
    #[must_use]
    pub fn with_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        let name = name.into();
        let password = password.into();
        self.by_userhash
            .insert(userhash(&name, &self.realm), name.clone());
        let keys = [PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256]
            .map(|alg| UserKey::new(long_term_key(alg, &name, &self.realm, &password)));
        self.user_keys.insert(name.clone(), keys);
        self.users.insert(name, password);
        self
    }

    /// Accepts TURN REST usernames signed with `secret` (in addition to any secret already set).
    #[must_use]
    pub fn with_rest_secret(mut self, secret: impl Into<String>) -> Self {
        self.rest_secrets.push(secret.into());
        self.rest_keys.clear();
        self
    }

    /// The realm given to [`Credentials::new`].
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Number of static users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The static user whose USERHASH is `hash`. REST users cannot be found this way: their
    /// names are not known in advance.
    pub fn username_by_hash(&self, hash: &[u8]) -> Option<&str> {
        let hash: [u8; 32] = hash.try_into().ok()?;
        self.by_userhash.get(&hash).map(String::as_str)
    }

    /// What quotas count `username` under: a TURN REST username without its timestamp part
    /// (`"1700000000:alice"` and `"alice:1700000000"` count as `alice`, `"a:1700000000:b"` as
    /// `a:b`; each fresh credential has a new expiry, so the full name would escape a per-user
    /// quota), else the username itself.
    pub fn quota_key<'a>(&self, username: &'a str) -> Cow<'a, str> {
        if self.users.contains_key(username) {
            return Cow::Borrowed(username);
        }
        let Some((index, _)) = rest_expiry(username) else {
            return Cow::Borrowed(username);
        };
        let rest: Vec<&str> = username
            .split(':')
            .enumerate()
            .filter_map(|(i, part)| (i != index).then_some(part))
            .collect();
        match rest.as_slice() {
            [] => Cow::Borrowed(username),
            [one] => Cow::Borrowed(one),
            parts => Cow::Owned(parts.join(":")),
        }
    }

    /// The password(s) `username` may use at `unix_now`: one for a static user, one per REST
    /// secret for a REST username that has not expired.
    pub fn passwords(&self, username: &str, unix_now: u64) -> Result<Vec<String>, AuthError> {
        if let Some(password) = self.users.get(username) {
            return Ok(vec![password.clone()]);
        }
        self.check_rest_username(username, unix_now)?;
        Ok(self.rest_passwords(username))
    }

    /// `username`'s password under each REST secret (its expiry not checked).
    fn rest_passwords(&self, username: &str) -> Vec<String> {
        self.rest_secrets
            .iter()
            .map(|secret| rest_password(secret, username))
            .collect()
    }

    /// Is `username` a TURN REST username that these credentials accept at `unix_now`?
    fn check_rest_username(&self, username: &str, unix_now: u64) -> Result<(), AuthError> {
        if self.rest_secrets.is_empty() {
            return Err(AuthError::UnknownUser(username.to_owned()));
        }
        let Some((_, expiry)) = rest_expiry(username) else {
            return Err(AuthError::UnknownUser(username.to_owned()));
        };
        // A timestamp equal to now is still valid (as in STUNner).
        if i64::try_from(unix_now).unwrap_or(i64::MAX) > expiry {
            return Err(AuthError::Expired {
                username: username.to_owned(),
                expired_at: expiry,
                now: unix_now,
            });
        }
        Ok(())
    }

    /// The long-term key(s) of `username` in `realm` under `alg` at `unix_now`; any of them may
    /// have signed a request.
    pub fn keys(
        &self,
        username: &str,
        realm: &str,
        alg: PasswordAlgorithm,
        unix_now: u64,
    ) -> Result<Vec<Vec<u8>>, AuthError> {
        if realm == self.realm
            && let Some(keys) = self.user_keys.get(username)
        {
            return Ok(vec![keys[alg.slot()].long_term.clone()]);
        }
        let derive = |passwords: Vec<String>| -> Vec<Vec<u8>> {
            passwords
                .iter()
                .map(|password| long_term_key(alg, username, realm, password))
                .collect()
        };
        if realm != self.realm || self.users.contains_key(username) {
            return Ok(derive(self.passwords(username, unix_now)?));
        }
        // A REST username: its expiry is checked on every request, its keys computed once.
        self.check_rest_username(username, unix_now)?;
        if let Some(keys) = self.rest_keys.get(username, alg) {
            return Ok(keys);
        }
        let keys = derive(self.rest_passwords(username));
        self.rest_keys.insert(username, alg, &keys);
        Ok(keys)
    }

    /// [`Credentials::keys`] prepared as HMAC keys for `integrity`: static users' are prepared
    /// once, when the user is added.
    pub fn integrity_keys(
        &self,
        username: &str,
        realm: &str,
        alg: PasswordAlgorithm,
        integrity: IntegrityAlgorithm,
        unix_now: u64,
    ) -> Result<Vec<IntegrityKey>, AuthError> {
        if realm == self.realm
            && let Some(keys) = self.user_keys.get(username)
        {
            return Ok(vec![keys[alg.slot()].integrity_key(integrity)]);
        }
        Ok(self
            .keys(username, realm, alg, unix_now)?
            .iter()
            .map(|key| IntegrityKey::new(integrity, key))
            .collect())
    }
}

/// The RFC 8489 §9.2 nonce cookie: nonces starting with it announce STUN security features.
pub const NONCE_COOKIE: &str = "obMatJos2";
/// The 24 security-feature bits, base64: bit 0 (the most significant) "password algorithms" and
/// bit 1 "username anonymity" are set — we offer PASSWORD-ALGORITHMS and accept USERHASH.
const SECURITY_FEATURES: &str = "wAAA";
/// Bytes of HMAC kept in a nonce: 128 bits is plenty against forgery within a nonce lifetime.
const NONCE_TAG_LEN: usize = 16;

/// What a NONCE attribute turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    /// Minted by us for this client and not expired.
    Valid,
    /// Minted by us for this client, but expired.
    Stale,
    /// Not minted by us for this client address (or by a previous nonce key), or garbled.
    Invalid,
}

/// Mints and checks stateless nonces: `cookie || features || base64url(expiry || HMAC-SHA256(key,
/// expiry || client address)[..16])`.
///
/// The expiry is a UNIX second, so nonces survive a restart as long as the key does.
#[derive(Clone)]
pub struct NonceMint {
    key: hmac::Key,
}

impl fmt::Debug for NonceMint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceMint { .. }")
    }
}

impl NonceMint {
    /// Nonces keyed by `key` (keep it secret; 32 random bytes).
    pub fn new(key: &[u8; 32]) -> Self {
        NonceMint {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    fn tag(&self, expires_unix: u64, client: SocketAddr) -> hmac::Tag {
        let mut input = Vec::with_capacity(8 + 1 + 16 + 2);
        input.extend_from_slice(&expires_unix.to_be_bytes());
        match client.ip() {
            IpAddr::V4(ip) => {
                input.push(4);
                input.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                input.push(6);
                input.extend_from_slice(&ip.octets());
            }
        }
        input.extend_from_slice(&client.port().to_be_bytes());
        hmac::sign(&self.key, &input)
    }

    /// A nonce for `client`, valid until `expires_unix`.
    pub fn issue(&self, client: SocketAddr, expires_unix: u64) -> String {
        let mut body = Vec::with_capacity(8 + NONCE_TAG_LEN);
        body.extend_from_slice(&expires_unix.to_be_bytes());
        body.extend_from_slice(&self.tag(expires_unix, client).as_ref()[..NONCE_TAG_LEN]);
        format!(
            "{NONCE_COOKIE}{SECURITY_FEATURES}{}",
            URL_SAFE_NO_PAD.encode(body)
        )
    }

    /// Is `nonce` one of ours, for `client`, and still valid at `unix_now`?
    pub fn check(&self, nonce: &str, client: SocketAddr, unix_now: u64) -> NonceCheck {
        let Some(encoded) = nonce
            .strip_prefix(NONCE_COOKIE)
            .and_then(|rest| rest.strip_prefix(SECURITY_FEATURES))
        else {
            return NonceCheck::Invalid;
        };
        let Ok(body) = URL_SAFE_NO_PAD.decode(encoded) else {
            return NonceCheck::Invalid;
        };
        if body.len() != 8 + NONCE_TAG_LEN {
            return NonceCheck::Invalid;
        }
        let (stamp, tag) = body.split_at(8);
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(stamp);
        let expires_unix = u64::from_be_bytes(expiry);
        if !tags_equal(self.tag(expires_unix, client).as_ref(), tag) {
            return NonceCheck::Invalid;
        }
        if unix_now >= expires_unix {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

/// Does `nonce` start with the nonce cookie and announce the "password algorithms" feature
/// (RFC 8489 §9.2.4 then requires the PASSWORD-ALGORITHM(S) downgrade checks)?
pub fn nonce_announces_password_algorithms(nonce: &str) -> bool {
    let Some(rest) = nonce.strip_prefix(NONCE_COOKIE) else {
        return false;
    };
    let Some(features) = rest.get(..4) else {
        return false;
    };
    STANDARD
        .decode(features)
        .ok()
        .and_then(|bits| bits.first().copied())
        .is_some_and(|first| first & 0x80 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> SocketAddr {
        "192.0.2.1:40000".parse().unwrap()
    }

    #[test]
    fn md5_long_term_key_matches_rfc5769_inputs() {
        // RFC 5769 §2.4: key = MD5("<username>:example.org:TheMatrIX").
        let key = long_term_key(
            PasswordAlgorithm::Md5,
            "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}",
            "example.org",
            "TheMatrIX",
        );
        assert_eq!(key.len(), 16);
        let sha = long_term_key(PasswordAlgorithm::Sha256, "u", "r", "p");
        assert_eq!(sha.len(), 32);
        assert_eq!(
            sha,
            digest::digest(&digest::SHA256, b"u:r:p").as_ref().to_vec()
        );
    }

    #[test]
    fn userhash_matches_rfc8489_example() {
        // RFC 8489 §B.1: USERHASH of the sample username and realm.
        let hash = userhash(
            "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}",
            "example.org",
        );
        assert_eq!(
            hex::encode(hash),
            "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"
        );
    }

    #[test]
    fn static_users_and_userhash() {
        let creds = Credentials::new("example.org").with_user("alice", "hunter2");
        assert_eq!(creds.passwords("alice", 0).unwrap(), vec!["hunter2"]);
        assert!(matches!(
            creds.passwords("bob", 0),
            Err(AuthError::UnknownUser(_))
        ));
        let hash = userhash("alice", "example.org");
        assert_eq!(creds.username_by_hash(&hash), Some("alice"));
        assert_eq!(creds.username_by_hash(&[0u8; 32]), None);
        assert_eq!(creds.username_by_hash(&[0u8; 3]), None);
        let keys = creds
            .keys("alice", "example.org", PasswordAlgorithm::Md5, 0)
            .unwrap();
        assert_eq!(
            keys,
            vec![long_term_key(
                PasswordAlgorithm::Md5,
                "alice",
                "example.org",
                "hunter2"
            )]
        );
        // Debug output never shows the password.
        assert!(!format!("{creds:?}").contains("hunter2"));
    }

    #[test]
    fn rest_credentials_round_trip_expiry_and_rotation() {
        let (user, pass) = rest_credentials("s3cret", "app-user", 1_000);
        assert_eq!(user, "1000:app-user");
        assert_eq!(pass, rest_password("s3cret", "1000:app-user"));
        let creds = Credentials::new("r")
            .with_rest_secret("old")
            .with_rest_secret("s3cret");
        let pw = creds.passwords(&user, 999).unwrap();
        assert_eq!(pw.len(), 2);
        assert!(pw.contains(&pass));
        assert!(creds.passwords(&user, 1_000).is_ok());
        assert!(matches!(
            creds.passwords(&user, 1_001),
            Err(AuthError::Expired {
                expired_at: 1_000,
                ..
            })
        ));
        assert!(matches!(
            creds.passwords("notrest:user", 0),
            Err(AuthError::UnknownUser(_))
        ));
        assert!(matches!(
            creds.passwords("", 0),
            Err(AuthError::UnknownUser(_))
        ));
        assert_eq!(creds.quota_key(&user), "app-user");
        assert_eq!(creds.quota_key("alice"), "alice");
        // Without secrets, REST-looking names are unknown.
        assert!(Credentials::new("r").passwords(&user, 0).is_err());
        // A known HMAC-SHA1 value: base64(HMAC-SHA1("key", "The quick brown fox jumps over the lazy dog")).
        assert_eq!(
            rest_password("key", "The quick brown fox jumps over the lazy dog"),
            STANDARD.encode(hex::decode("de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9").unwrap())
        );
    }

    #[test]
    fn rest_usernames_carry_the_timestamp_in_any_position() {
        assert_eq!(rest_expiry("1000:alice"), Some((0, 1000)));
        assert_eq!(rest_expiry("alice:1000"), Some((1, 1000)));
        assert_eq!(rest_expiry("a:1000:b"), Some((1, 1000)));
        assert_eq!(rest_expiry("1000"), Some((0, 1000)));
        // The first integer part wins, signed as strconv.Atoi reads it.
        assert_eq!(rest_expiry("a:+1000:2000"), Some((1, 1000)));
        assert_eq!(rest_expiry("a:-5:b"), Some((1, -5)));
        // No integer part, or the first one is 0: not a time-limited username.
        assert_eq!(rest_expiry("alice"), None);
        assert_eq!(rest_expiry("alice:bob"), None);
        assert_eq!(rest_expiry("0:alice"), None);
        assert_eq!(rest_expiry("alice:0:1000"), None);
        assert_eq!(rest_expiry(""), None);
        assert_eq!(rest_expiry("1 000:x"), None);
        assert_eq!(rest_expiry("99999999999999999999:a:7"), Some((2, 7)));

        let creds = Credentials::new("r").with_rest_secret("s");
        let now = 1_000;
        for username in ["1000:alice", "alice:1000", "a:1000:b", "2000"] {
            let expected = rest_password("s", username);
            assert_eq!(
                creds.passwords(username, now),
                Ok(vec![expected]),
                "{username}"
            );
        }
        for username in ["999:alice", "alice:999", "x:-5:y"] {
            assert!(
                matches!(
                    creds.passwords(username, now),
                    Err(AuthError::Expired { .. })
                ),
                "{username}"
            );
        }
        for username in ["alice", "0:alice", "alice:0", "alice:bob:"] {
            assert!(
                matches!(
                    creds.passwords(username, now),
                    Err(AuthError::UnknownUser(_))
                ),
                "{username}"
            );
        }
        // Quotas count the user without the timestamp.
        assert_eq!(creds.quota_key("1000:alice"), "alice");
        assert_eq!(creds.quota_key("alice:2000"), "alice");
        assert_eq!(creds.quota_key("a:1000:b"), "a:b");
        assert_eq!(creds.quota_key("1000"), "1000");
        assert_eq!(creds.quota_key("alice"), "alice");
    }

    #[test]
    fn rest_credentials_match_the_client_side_vectors() {
        // The same vectors as crate::client's tests (computed with Python's hmac module).
        assert_eq!(
            rest_credentials("s3cret", "alice", 1_700_000_000),
            (
                "1700000000:alice".to_owned(),
                "TtElzSjT0GdnTQ9xdcRNxx96yQs=".to_owned()
            )
        );
    }

    #[test]
    fn nonces_expire_and_bind_to_the_client() {
        let mint = NonceMint::new(&[7; 32]);
        let nonce = mint.issue(client(), 100);
        assert!(nonce.starts_with(NONCE_COOKIE));
        assert!(nonce.len() < 128);
        assert!(nonce_announces_password_algorithms(&nonce));
        assert_eq!(mint.check(&nonce, client(), 99), NonceCheck::Valid);
        assert_eq!(mint.check(&nonce, client(), 100), NonceCheck::Stale);
        let other: SocketAddr = "192.0.2.1:40001".parse().unwrap();
        assert_eq!(mint.check(&nonce, other, 99), NonceCheck::Invalid);
        assert_eq!(
            NonceMint::new(&[8; 32]).check(&nonce, client(), 99),
            NonceCheck::Invalid
        );
        assert_eq!(mint.check("garbage", client(), 0), NonceCheck::Invalid);
        assert_eq!(
            mint.check(&format!("{NONCE_COOKIE}{SECURITY_FEATURES}!!"), client(), 0),
            NonceCheck::Invalid
        );
        // Tampering with the expiry breaks the HMAC.
        let forged = mint.issue(client(), 100).replace('A', "B");
        if forged != nonce {
            assert_eq!(mint.check(&forged, client(), 0), NonceCheck::Invalid);
        }
        assert!(!nonce_announces_password_algorithms("plain"));
    }

    #[test]
    fn tag_verification_handles_truncation() {
        let data = b"message";
        let full = hmac_sha256(b"k", data);
        let alg = IntegrityAlgorithm::HmacSha256 { len: 16 };
        assert!(verify_tag(alg, b"k", data, &full[..16]));
        assert!(!verify_tag(alg, b"k", data, &full[..20]));
        assert!(!verify_tag(alg, b"x", data, &full[..16]));
        assert!(verify_tag(
            IntegrityAlgorithm::HmacSha1,
            b"k",
            data,
            &hmac_sha1(b"k", data)
        ));
        assert!(!verify_tag(IntegrityAlgorithm::HmacSha1, b"k", data, &[]));
        assert_eq!(alg.tag(b"k", data), full[..16].to_vec());
    }

    #[test]
    fn a_prepared_key_tags_and_verifies_as_the_plain_functions() {
        let data = b"message";
        for alg in [
            IntegrityAlgorithm::HmacSha1,
            IntegrityAlgorithm::HmacSha256 { len: 32 },
            IntegrityAlgorithm::HmacSha256 { len: 16 },
        ] {
            let key = IntegrityKey::new(alg, b"k");
            let tag = key.tag(data);
            assert_eq!(tag, alg.tag(b"k", data), "{alg:?}");
            assert!(key.verify(data, &tag), "{alg:?}");
            assert!(verify_tag(alg, b"k", data, &tag), "{alg:?}");
            assert!(!key.verify(b"other", &tag), "{alg:?}");
            assert!(!IntegrityKey::new(alg, b"x").verify(data, &tag), "{alg:?}");
            assert!(
                !key.verify(data, &tag[..tag.len() - 4]),
                "{alg:?}: a shorter tag"
            );
        }
        let debug = format!(
            "{:?}",
            IntegrityKey::new(IntegrityAlgorithm::HmacSha1, b"secret")
        );
        assert!(
            !debug.contains("secret") && debug.contains("HmacSha1"),
            "{debug}"
        );
    }

    #[test]
    fn rest_keys_are_cached_but_expiry_and_secrets_still_apply() {
        let username = "1700000100:alice";
        let creds = Credentials::new("example.org").with_rest_secret("s1");
        let expected = |secret: &str, alg| {
            long_term_key(
                alg,
                username,
                "example.org",
                &rest_password(secret, username),
            )
        };
        for alg in [PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256] {
            for _ in 0..2 {
                // The first call computes and caches, the second is served from the cache.
                assert_eq!(
                    creds
                        .keys(username, "example.org", alg, 1_700_000_000)
                        .unwrap(),
                    vec![expected("s1", alg)]
                );
            }
        }
        // Cached, but expired now.
        assert!(matches!(
            creds.keys(
                username,
                "example.org",
                PasswordAlgorithm::Md5,
                1_700_000_101
            ),
            Err(AuthError::Expired { .. })
        ));
        // Another realm is computed afresh, not taken from the cache.
        assert_eq!(
            creds
                .keys(username, "other.org", PasswordAlgorithm::Md5, 1_700_000_000)
                .unwrap(),
            vec![long_term_key(
                PasswordAlgorithm::Md5,
                username,
                "other.org",
                &rest_password("s1", username)
            )]
        );
        // A secret added: both secrets' keys, not the cached one alone.
        let creds = creds.with_rest_secret("s2");
        let md5_keys = |c: &Credentials| {
            c.keys(
                username,
                "example.org",
                PasswordAlgorithm::Md5,
                1_700_000_000,
            )
            .unwrap()
        };
        assert_eq!(
            md5_keys(&creds),
            vec![
                expected("s1", PasswordAlgorithm::Md5),
                expected("s2", PasswordAlgorithm::Md5)
            ]
        );
        // A copy (what a reload builds from) starts empty and computes the same.
        assert_eq!(md5_keys(&creds.clone()), md5_keys(&creds));
    }

    #[test]
    fn the_rest_key_cache_is_bounded() {
        let creds = Credentials::new("r").with_rest_secret("s");
        for n in 0..REST_KEY_CACHE + 10 {
            let username = format!("1700000100:user{n}");
            creds
                .keys(&username, "r", PasswordAlgorithm::Md5, 0)
                .unwrap();
        }
        let len = creds.rest_keys.0.lock().unwrap().len();
        assert!(len <= REST_KEY_CACHE, "{len} entries");
        assert!(len > 0);
    }

    #[test]
    fn static_users_keys_are_computed_once_and_match_the_definition() {
        let creds = Credentials::new("example.org").with_user("alice", "pw");
        for alg in [PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256] {
            assert_eq!(
                creds.keys("alice", "example.org", alg, 0).unwrap(),
                vec![long_term_key(alg, "alice", "example.org", "pw")]
            );
            // Another realm than the one they were computed in: computed afresh.
            assert_eq!(
                creds.keys("alice", "other.org", alg, 0).unwrap(),
                vec![long_term_key(alg, "alice", "other.org", "pw")]
            );
        }
        // Replacing a user replaces the keys.
        let creds = creds.with_user("alice", "new");
        assert_eq!(
            creds
                .keys("alice", "example.org", PasswordAlgorithm::Md5, 0)
                .unwrap(),
            vec![long_term_key(
                PasswordAlgorithm::Md5,
                "alice",
                "example.org",
                "new"
            )]
        );
    }

    #[test]
    fn prepared_integrity_keys_sign_as_keys_prepared_afresh() {
        let creds = Credentials::new("example.org")
            .with_user("alice", "pw")
            .with_rest_secret("s3cret");
        let rest = "1700000600:bob";
        let data = b"a STUN message up to its integrity attribute";
        for alg in [PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256] {
            for integrity in [
                IntegrityAlgorithm::HmacSha1,
                IntegrityAlgorithm::HmacSha256 { len: 16 },
                IntegrityAlgorithm::HmacSha256 { len: 32 },
            ] {
                for (user, realm) in [
                    ("alice", "example.org"),
                    ("alice", "other.org"),
                    (rest, "example.org"),
                ] {
                    let now = 1_700_000_000;
                    let expected: Vec<Vec<u8>> = creds
                        .keys(user, realm, alg, now)
                        .unwrap()
                        .iter()
                        .map(|key| IntegrityKey::new(integrity, key).tag(data))
                        .collect();
                    let prepared = creds
                        .integrity_keys(user, realm, alg, integrity, now)
                        .unwrap();
                    let tags: Vec<Vec<u8>> = prepared.iter().map(|k| k.tag(data)).collect();
                    assert_eq!(tags, expected, "{user} in {realm}, {alg:?}, {integrity:?}");
                    assert_eq!(tags[0].len(), integrity.tag_len());
                    assert!(prepared.iter().all(|k| k.algorithm() == integrity));
                }
            }
        }
    }
}
