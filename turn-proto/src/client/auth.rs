//! Long-term authentication as a sans-IO state machine, and TURN REST API credentials.
//!
//! A [`Transaction`] is one request from its first transmission to its outcome. It may take
//! several STUN transactions (each with a new transaction id): the first goes out without
//! credentials unless a realm and nonce are already known; a 401 with REALM and NONCE is answered
//! once with USERNAME/REALM/NONCE/MESSAGE-INTEGRITY; a 438 (stale nonce) once with the new NONCE.
//! [`AuthState`] keeps the realm and nonce between requests so later requests are signed from
//! the start.
use stun_codec::{MessageClass, TransactionId};

use crate::auth::{PasswordAlgorithm, long_term_key};

use super::message::{self, Integrity, Request, Signing, StunMessage};
use super::{ClientCredentials, ClientError};

/// The client's credentials and what it learnt from the server: realm, nonce and the key.
#[derive(Debug, Clone)]
pub struct AuthState {
    creds: ClientCredentials,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<Vec<u8>>,
}

impl AuthState {
    pub fn new(creds: ClientCredentials) -> Self {
        AuthState {
            creds,
            realm: None,
            nonce: None,
            key: None,
        }
    }

    pub fn realm(&self) -> Option<&str> {
        self.realm.as_deref()
    }

    pub fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }

    /// The long-term key, once the realm is known.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// What to sign requests with, once there are credentials, a realm and a nonce.
    pub fn signing(&self) -> Option<Signing<'_>> {
        if self.creds.is_anonymous() {
            return None;
        }
        Some(Signing {
            username: &self.creds.username,
            realm: self.realm.as_deref()?,
            nonce: self.nonce.as_deref()?,
            password: &self.creds.password,
        })
    }

    fn learn(&mut self, realm: Option<&str>, nonce: &str) {
        if let Some(realm) = realm
            && self.realm.as_deref() != Some(realm)
        {
            self.realm = Some(realm.to_owned());
            self.key = Some(long_term_key(
                PasswordAlgorithm::Md5,
                &self.creds.username,
                realm,
                &self.creds.password,
            ));
        }
        self.nonce = Some(nonce.to_owned());
    }
}

/// What to do with a message, from [`Transaction::on_message`].
#[derive(Debug)]
pub enum Step {
    /// Not a response to this transaction (another transaction id, or not a response).
    Ignore,
    /// A response to this transaction that failed its integrity check: as if never received.
    Discard,
    /// Send the request again as a new transaction: call [`Transaction::restart`].
    Retry,
    /// The success response.
    Success(Box<StunMessage>),
    /// The final outcome is an error.
    Failed(ClientError),
}

/// One request across its authentication retries (sans-IO: the caller sends and receives).
#[derive(Debug, Clone)]
pub struct Transaction {
    request: Request,
    tid: TransactionId,
    /// The realm and nonce the current attempt was signed with.
    sent_with: Option<(String, String)>,
    retried_unauthorized: bool,
    retried_stale_nonce: bool,
    integrity_failures: u32,
    attempts: u32,
}

impl Transaction {
    pub fn new(request: Request, tid: TransactionId) -> Self {
        Transaction {
            request,
            tid,
            sent_with: None,
            retried_unauthorized: false,
            retried_stale_nonce: false,
            integrity_failures: 0,
            attempts: 1,
        }
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The current attempt's transaction id.
    pub fn tid(&self) -> TransactionId {
        self.tid
    }

    /// How many STUN transactions this request has taken so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts the next attempt after [`Step::Retry`], with a fresh transaction id.
    pub fn restart(&mut self, tid: TransactionId) {
        self.tid = tid;
        self.attempts += 1;
    }

    /// Encodes the current attempt, signed if `auth` knows a realm and nonce.
    pub fn encode(
        &mut self,
        auth: &AuthState,
        software: Option<&str>,
    ) -> Result<Vec<u8>, ClientError> {
        let signing = auth.signing();
        self.sent_with = signing.map(|s| (s.realm.to_owned(), s.nonce.to_owned()));
        message::build_request(&self.request, self.tid, signing, software)
    }

    /// The error to report when the retransmission budget runs out.
    pub fn timeout_error(&self, sends: u32, elapsed: std::time::Duration) -> ClientError {
        let method = self.request.name();
        if self.integrity_failures > 0 {
            ClientError::IntegrityCheckFailed {
                method,
                count: self.integrity_failures,
            }
        } else {
            ClientError::Timeout {
                method,
                sends,
                elapsed,
            }
        }
    }

    /// Handles a STUN message from the server; `raw` is its bytes (for MESSAGE-INTEGRITY).
    pub fn on_message(&mut self, auth: &mut AuthState, message: StunMessage, raw: &[u8]) -> Step {
        let is_response = matches!(
            message.class(),
            MessageClass::SuccessResponse | MessageClass::ErrorResponse
        );
        if !is_response
            || message.transaction_id() != self.tid
            || message.method() != self.request.method()
        {
            return Step::Ignore;
        }
        if self.sent_with.is_some()
            && let Some(key) = auth.key()
        {
            match message::check_integrity(raw, key) {
                Integrity::Invalid => {
                    self.integrity_failures += 1;
                    tracing::warn!(
                        method = self.request.name(),
                        "discarding a response with a bad MESSAGE-INTEGRITY"
                    );
                    return Step::Discard;
                }
                Integrity::Valid => {
                    tracing::trace!(method = self.request.name(), "MESSAGE-INTEGRITY valid");
                }
                Integrity::Absent => {
                    tracing::trace!(method = self.request.name(), "no MESSAGE-INTEGRITY");
                }
            }
        }
        if message.class() == MessageClass::SuccessResponse {
            return Step::Success(Box::new(message));
        }
        let Some((code, reason)) = message::error_code(&message) else {
            return Step::Failed(ClientError::Malformed(format!(
                "{} error response without ERROR-CODE",
                self.request.name()
            )));
        };
        let failed = Step::Failed(ClientError::ErrorResponse { code, reason });
        match code {
            401 => {
                let (Some(realm), Some(nonce)) =
                    (message::realm(&message), message::nonce(&message))
                else {
                    return failed;
                };
                if auth.creds.is_anonymous() || self.retried_unauthorized {
                    return failed;
                }
                // Signed with exactly this realm and nonce and still 401: wrong credentials.
                if self
                    .sent_with
                    .as_ref()
                    .is_some_and(|(r, n)| r == realm && n == nonce)
                {
                    return failed;
                }
                auth.learn(Some(realm), nonce);
                self.retried_unauthorized = true;
                tracing::debug!(
                    method = self.request.name(),
                    realm,
                    "401: retrying with credentials"
                );
                Step::Retry
            }
            438 => {
                let Some(nonce) = message::nonce(&message) else {
                    return failed;
                };
                if auth.creds.is_anonymous() || self.retried_stale_nonce {
                    return failed;
                }
                let realm = message::realm(&message).or(auth.realm()).map(str::to_owned);
                if realm.is_none() {
                    return failed;
                }
                auth.learn(realm.as_deref(), nonce);
                self.retried_stale_nonce = true;
                tracing::debug!(
                    method = self.request.name(),
                    "438: retrying with a new nonce"
                );
                Step::Retry
            }
            _ => failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::auth::rest_credentials;
    use std::time::Duration;

    use stun_codec::rfc5389::attributes::{ErrorCode, MessageIntegrity, Nonce, Realm, Username};
    use stun_codec::rfc5766::attributes::Lifetime;
    use stun_codec::{MessageEncoder, Method};

    use bytecodec::EncodeExt;

    use super::*;
    use crate::client::message::decode_stun;

    fn tid(n: u8) -> TransactionId {
        TransactionId::new([n; 12])
    }

    fn refresh() -> Request {
        Request::Refresh {
            lifetime: Duration::from_secs(600),
        }
    }

    fn error(
        method: Method,
        t: TransactionId,
        code: u16,
        realm: Option<&str>,
        nonce: Option<&str>,
    ) -> (StunMessage, Vec<u8>) {
        let mut m = StunMessage::new(MessageClass::ErrorResponse, method, t);
        m.add_attribute(ErrorCode::new(code, "why".into()).expect("code"));
        if let Some(r) = realm {
            m.add_attribute(Realm::new(r.into()).expect("realm"));
        }
        if let Some(n) = nonce {
            m.add_attribute(Nonce::new(n.into()).expect("nonce"));
        }
        finish(m)
    }

    fn finish(m: StunMessage) -> (StunMessage, Vec<u8>) {
        let bytes = MessageEncoder::new().encode_into_bytes(m).expect("encode");
        (decode_stun(&bytes).expect("decode"), bytes)
    }

    /// A success response, signed with `password` like a server would.
    fn success(method: Method, t: TransactionId, password: Option<&str>) -> (StunMessage, Vec<u8>) {
        let mut m = StunMessage::new(MessageClass::SuccessResponse, method, t);
        m.add_attribute(Lifetime::from_u32(600));
        if let Some(password) = password {
            let mi = MessageIntegrity::new_long_term_credential(
                &m,
                &Username::new("u".into()).expect("username"),
                &Realm::new("xturn".into()).expect("realm"),
                password,
            )
            .expect("mi");
            m.add_attribute(mi);
        }
        finish(m)
    }

    fn step(tx: &mut Transaction, auth: &mut AuthState, (m, raw): (StunMessage, Vec<u8>)) -> Step {
        tx.on_message(auth, m, &raw)
    }

    fn sent(tx: &mut Transaction, auth: &AuthState) -> StunMessage {
        decode_stun(&tx.encode(auth, None).expect("encode")).expect("decode")
    }

    #[test]
    fn rest_credentials_known_vectors() {
        // python3 -c 'import hmac,hashlib,base64;u="1700000000:alice";
        //   print(base64.b64encode(hmac.new(b"s3cret",u.encode(),hashlib.sha1).digest()).decode())'
        assert_eq!(
            rest_credentials("s3cret", "alice", 1_700_000_000),
            (
                "1700000000:alice".to_owned(),
                "TtElzSjT0GdnTQ9xdcRNxx96yQs=".to_owned()
            )
        );
        assert_eq!(
            rest_credentials("north-secret-key", "user-42", 4_102_444_800),
            (
                "4102444800:user-42".to_owned(),
                "VN44TLjfUBPORk1QiWYOnviN8jU=".to_owned()
            )
        );
        let creds = ClientCredentials::rest("s3cret", "alice", 1_700_000_000);
        assert_eq!(creds.password, "TtElzSjT0GdnTQ9xdcRNxx96yQs=");
    }

    #[test]
    fn unauthorized_then_success() {
        let mut auth = AuthState::new(ClientCredentials::new("u", "p"));
        let mut tx = Transaction::new(refresh(), tid(1));
        let first = sent(&mut tx, &auth);
        assert!(first.get_attribute::<MessageIntegrity>().is_none());
        let challenge = error(REFRESH, tid(1), 401, Some("xturn"), Some("n1"));
        assert!(matches!(step(&mut tx, &mut auth, challenge), Step::Retry));
        assert_eq!(auth.realm(), Some("xturn"));
        assert_eq!(auth.nonce(), Some("n1"));
        tx.restart(tid(2));
        assert_eq!(tx.attempts(), 2);
        let second = sent(&mut tx, &auth);
        assert_eq!(second.transaction_id(), tid(2));
        assert_eq!(
            second.get_attribute::<Username>().map(Username::name),
            Some("u")
        );
        assert!(second.get_attribute::<MessageIntegrity>().is_some());
        // A late answer to the first attempt is not ours any more.
        let late = error(REFRESH, tid(1), 401, Some("xturn"), Some("n1"));
        assert!(matches!(step(&mut tx, &mut auth, late), Step::Ignore));
        match step(&mut tx, &mut auth, success(REFRESH, tid(2), Some("p"))) {
            Step::Success(m) => assert_eq!(m.transaction_id(), tid(2)),
            other => panic!("expected success, got {other:?}"),
        }
    }

    #[test]
    fn wrong_password_fails_with_401_after_one_retry() {
        let mut auth = AuthState::new(ClientCredentials::new("u", "bad"));
        let mut tx = Transaction::new(refresh(), tid(1));
        sent(&mut tx, &auth);
        let challenge = error(REFRESH, tid(1), 401, Some("xturn"), Some("n1"));
        assert!(matches!(step(&mut tx, &mut auth, challenge), Step::Retry));
        tx.restart(tid(2));
        sent(&mut tx, &auth);
        let again = error(REFRESH, tid(2), 401, Some("xturn"), Some("n1"));
        assert!(matches!(
            step(&mut tx, &mut auth, again),
            Step::Failed(ClientError::ErrorResponse { code: 401, .. })
        ));
    }

    #[test]
    fn cached_nonce_signs_first_attempt_and_401_with_new_nonce_retries_once() {
        let mut auth = AuthState::new(ClientCredentials::new("u", "p"));
        auth.learn(Some("xturn"), "old");
        let mut tx = Transaction::new(refresh(), tid(1));
        assert!(
            sent(&mut tx, &auth)
                .get_attribute::<MessageIntegrity>()
                .is_some()
        );
        let challenge = error(REFRESH, tid(1), 401, Some("xturn"), Some("new"));
        assert!(matches!(step(&mut tx, &mut auth, challenge), Step::Retry));
        tx.restart(tid(2));
        let retry = sent(&mut tx, &auth);
        assert_eq!(
            retry.get_attribute::<Nonce>().map(Nonce::value),
            Some("new")
        );
        let again = error(REFRESH, tid(2), 401, Some("xturn"), Some("newer"));
        assert!(matches!(
            step(&mut tx, &mut auth, again),
            Step::Failed(ClientError::ErrorResponse { code: 401, .. })
        ));
    }

    #[test]
    fn stale_nonce_retries_once_then_fails() {
        let mut auth = AuthState::new(ClientCredentials::new("u", "p"));
        auth.learn(Some("xturn"), "n1");
        let mut tx = Transaction::new(refresh(), tid(1));
        sent(&mut tx, &auth);
        // 438 without REALM: the known realm is kept.
        let stale = error(REFRESH, tid(1), 438, None, Some("n2"));
        assert!(matches!(step(&mut tx, &mut auth, stale), Step::Retry));
        assert_eq!(auth.nonce(), Some("n2"));
        assert_eq!(auth.realm(), Some("xturn"));
        tx.restart(tid(2));
        assert_eq!(
            sent(&mut tx, &auth)
                .get_attribute::<Nonce>()
                .map(Nonce::value),
            Some("n2")
        );
        let stale_again = error(REFRESH, tid(2), 438, Some("xturn"), Some("n3"));
        assert!(matches!(
            step(&mut tx, &mut auth, stale_again),
            Step::Failed(ClientError::ErrorResponse { code: 438, .. })
        ));
    }

    #[test]
    fn unauthorized_then_stale_then_success() {
        let mut auth = AuthState::new(ClientCredentials::new("u", "p"));
        let mut tx = Transaction::new(refresh(), tid(1));
        sent(&mut tx, &auth);
        let challenge = error(REFRESH, tid(1), 401, Some("xturn"), Some("n1"));
        assert!(matches!(step(&mut tx, &mut auth, challenge), Step::Retry));
        tx.restart(tid(2));
        sent(&mut tx, &auth);
        let stale = error(REFRESH, tid(2), 438, Some("xturn"), Some("n2"));
        assert!(matches!(step(&mut tx, &mut auth, stale), Step::Retry));
        tx.restart(tid(3));
        sent(&mut tx, &auth);
        assert!(matches!(
            step(&mut tx, &mut auth, success(REFRESH, tid(3), Some("p"))),
            Step::Success(_)
        ));
        assert_eq!(tx.attempts(), 3);
    }

    #[test]
    fn anonymous_client_fails_on_401_and_401_without_nonce_fails() {
        let mut auth = AuthState::new(ClientCredentials::anonymous());
        let mut tx = Transaction::new(Request::Binding, tid(1));
        sent(&mut tx, &auth);
        let challenge = error(
            stun_codec::rfc5389::methods::BINDING,
            tid(1),
            401,
            Some("r"),
            Some("n"),
        );
        assert!(matches!(
            step(&mut tx, &mut auth, challenge),
            Step::Failed(ClientError::ErrorResponse { code: 401, .. })
        ));

        let mut auth = AuthState::new(ClientCredentials::new("u", "p"));
        let mut tx = Transaction::new(refresh(), tid(1));
        sent(&mut tx, &auth);
        let no_nonce = error(REFRESH, tid(1), 401, Some("xturn"), None);
        assert!(matches!(
            step(&mut tx, &mut auth, no_nonce),
            Step::Failed(ClientError::ErrorResponse { code: 401, .. })
        ));
    }

    #[test]
    fn other_errors_are_final_with_their_code() {
        for code in [400, 403, 437, 440, 441, 442, 443, 486, 508] {
            let mut auth = AuthState::new(ClientCredentials::new("u", "p"));
            let mut tx = Transaction::new(refresh(), tid(1));
            sent(&mut tx, &auth);
            match step(&mut tx, &mut auth, error(REFRESH, tid(1), code, None, None)) {
                Step::Failed(e) => assert_eq!(e.code(), Some(code)),
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_integrity_is_discarded_and_reported_on_timeout() {
        let mut auth = AuthState::new(ClientCredentials::new("u", "p"));
        auth.learn(Some("xturn"), "n1");
        let mut tx = Transaction::new(refresh(), tid(1));
        sent(&mut tx, &auth);
        let forged = success(REFRESH, tid(1), Some("not-p"));
        assert!(matches!(step(&mut tx, &mut auth, forged), Step::Discard));
        assert!(matches!(
            tx.timeout_error(7, Duration::from_secs(39)),
            ClientError::IntegrityCheckFailed { count: 1, .. }
        ));
        // A response without MESSAGE-INTEGRITY is accepted (verified only when present).
        assert!(matches!(
            step(&mut tx, &mut auth, success(REFRESH, tid(1), None)),
            Step::Success(_)
        ));
    }

    #[test]
    fn other_methods_and_requests_are_ignored() {
        let mut auth = AuthState::new(ClientCredentials::new("u", "p"));
        let mut tx = Transaction::new(refresh(), tid(1));
        sent(&mut tx, &auth);
        let wrong_method = success(ALLOCATE, tid(1), None);
        assert!(matches!(
            step(&mut tx, &mut auth, wrong_method),
            Step::Ignore
        ));
        let request = finish(StunMessage::new(MessageClass::Request, REFRESH, tid(1)));
        assert!(matches!(step(&mut tx, &mut auth, request), Step::Ignore));
        assert!(matches!(
            tx.timeout_error(7, Duration::from_secs(39)),
            ClientError::Timeout { sends: 7, .. }
        ));
    }

    use stun_codec::rfc5766::methods::{ALLOCATE, REFRESH};
}
