//! Authentication (RFC 8489 §9.2.4): challenges, long-term credentials, nonces, quotas per user.
use std::net::SocketAddr;
use std::time::Instant;

use stun_codec::{Message, Method};
use tracing::{debug, warn};

use super::state::*;
use crate::attributes::{
    Attribute, Nonce, PasswordAlgorithm, PasswordAlgorithms, Realm, UserHash, Username,
};
use crate::auth::{self, NonceCheck};
use crate::wire::{self, Header, MessageCopy, StunFrame};

/// The last 401 encoded for a request without credentials, for [`Server::challenge_401`].
#[derive(Debug, Clone)]
pub(super) struct ChallengeTemplate {
    method: Method,
    realm: String,
    /// Its NONCE rewritable.
    copy: MessageCopy,
}

impl Server {
    // ---------------------------------------------------------------------------------------
    // Authentication (RFC 8489 §9.2.4)
    // ---------------------------------------------------------------------------------------

    /// A 401 or 438 carrying what the client needs to (re)authenticate.
    pub(super) fn challenge(&self, code: u16, client: SocketAddr, unix_now: u64) -> Reply {
        self.challenge_with(code, self.issue_nonce(client, unix_now))
    }

    pub(super) fn issue_nonce(&self, client: SocketAddr, unix_now: u64) -> String {
        let expires = unix_now.saturating_add(self.config.nonce_lifetime.as_secs());
        self.nonces.issue(client, expires)
    }

    pub(super) fn challenge_with(&self, code: u16, nonce: String) -> Reply {
        let mut attributes: Vec<Attribute> = Vec::with_capacity(3);
        match Realm::new(self.config.realm.clone()) {
            Ok(realm) => attributes.push(realm.into()),
            Err(error) => warn!(%error, "realm cannot be sent"),
        }
        match Nonce::new(nonce) {
            Ok(nonce) => attributes.push(nonce.into()),
            Err(error) => warn!(%error, "nonce cannot be sent"),
        }
        attributes.push(PasswordAlgorithms::new(&auth::PasswordAlgorithm::OFFERED).into());
        Reply::Error(code, attributes)
    }

    /// The 401 for a request without credentials, encoded. Such 401s differ from each other
    /// only in transaction ID, nonce (of one length) and FINGERPRINT, and they are the answers
    /// anyone can ask for most, so the last one encoded (by [`Server::encode_response`], like
    /// every response) is kept and copied with those three rewritten.
    pub(super) fn challenge_401(
        &mut self,
        header: Header,
        client: SocketAddr,
        unix_now: u64,
    ) -> Option<Vec<u8>> {
        let nonce = self.issue_nonce(client, unix_now);
        if let Some(template) = &self.challenge_template
            && template.method == header.method
            && template.realm == self.config.realm
            && let Some(mut bytes) =
                template
                    .copy
                    .with(header.transaction_id, &[nonce.as_bytes()], 0)
        {
            wire::rewrite_fingerprint(&mut bytes);
            self.stats.count_error(401);
            return Some(bytes);
        }
        let reply = self.challenge_with(401, nonce.clone());
        let bytes = self.encode_response(header, reply, None)?;
        self.challenge_template = MessageCopy::of(
            &bytes,
            &[wire::ATTR_NONCE],
            header.transaction_id,
            &[nonce.as_bytes()],
        )
        .map(|copy| ChallengeTemplate {
            method: header.method,
            realm: self.config.realm.clone(),
            copy,
        });
        Some(bytes)
    }

    /// `also`: another address whose nonces are good here too (a ConnectionBind's data
    /// connection may reuse the nonce of its control connection, as clients do).
    pub(super) fn authenticate(
        &mut self,
        client: SocketAddr,
        also: Option<SocketAddr>,
        frame: &StunFrame<'_>,
        message: &Message<Attribute>,
        now: Instant,
    ) -> Result<AuthContext, Reply> {
        let unix_now = self.unix_now(now);
        let Some(integrity) = frame.integrity else {
            return Err(self.challenge(401, client, unix_now));
        };
        let username = message.get_attribute::<Username>();
        let userhash = message.get_attribute::<UserHash>();
        let (Some(_), Some(nonce)) = (
            message.get_attribute::<Realm>(),
            message.get_attribute::<Nonce>(),
        ) else {
            return Err(Reply::error(400));
        };
        if username.is_some() == userhash.is_some() {
            // Neither, or both.
            return Err(Reply::error(400));
        }
        let check = match self.nonces.check(nonce.value(), client, unix_now) {
            NonceCheck::Invalid => also.map_or(NonceCheck::Invalid, |other| {
                self.nonces.check(nonce.value(), other, unix_now)
            }),
            check => check,
        };
        match check {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => {
                self.stats.stale_nonces += 1;
                return Err(self.challenge(438, client, unix_now));
            }
        }
        // The nonce is ours and announces PASSWORD-ALGORITHMS: guard against a downgrade.
        let algorithm = match (
            message.get_attribute::<PasswordAlgorithm>(),
            message.get_attribute::<PasswordAlgorithms>(),
        ) {
            (None, None) => auth::PasswordAlgorithm::Md5,
            (Some(chosen), Some(offered))
                if *offered == PasswordAlgorithms::new(&auth::PasswordAlgorithm::OFFERED)
                    && offered.contains(chosen) =>
            {
                chosen.algorithm().ok_or(Reply::error(400))?
            }
            _ => return Err(Reply::error(400)),
        };
        let username = match (username, userhash) {
            (Some(username), _) => username.name().to_owned(),
            (None, Some(hash)) => match self.credentials.username_by_hash(hash.hash()) {
                Some(name) => name.to_owned(),
                None => {
                    self.stats.auth_failures += 1;
                    self.stats.auth_failures_by_reason.unknown_userhash += 1;
                    debug!(%client, "unknown USERHASH");
                    return Err(self.challenge(401, client, unix_now));
                }
            },
            (None, None) => return Err(Reply::error(400)),
        };
        let keys = match self.credentials.integrity_keys(
            &username,
            &self.config.realm,
            algorithm,
            integrity.algorithm,
            unix_now,
        ) {
            Ok(keys) => keys,
            Err(error) => {
                self.stats.auth_failures += 1;
                match error {
                    auth::AuthError::Expired { .. } => {
                        self.stats.auth_failures_by_reason.expired += 1;
                    }
                    auth::AuthError::UnknownUser(_) => {
                        self.stats.auth_failures_by_reason.unknown_user += 1;
                    }
                }
                debug!(%client, %error, "authentication failed");
                return Err(self.challenge(401, client, unix_now));
            }
        };
        let verified = keys
            .into_iter()
            .find(|key| frame.verify_integrity_with(key));
        match verified {
            Some(key) => Ok(AuthContext { username, key }),
            None => {
                self.stats.auth_failures += 1;
                self.stats.auth_failures_by_reason.wrong_integrity += 1;
                debug!(%client, %username, "wrong message integrity");
                Err(self.challenge(401, client, unix_now))
            }
        }
    }
}
