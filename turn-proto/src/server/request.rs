//! Client datagrams: demultiplexing, request dispatch, responses and the transaction cache.
use std::net::SocketAddr;
use std::time::Instant;

use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
use stun_codec::{Message, MessageClass};
use tracing::{trace, warn};

use super::state::*;
use super::tcp::{CONNECT, CONNECTION_BIND};
use super::{Command, FiveTuple, ListenerId, Transport};
use crate::attributes::{Attribute, ErrorCode, UnknownAttributes, XorMappedAddress};
use crate::wire::{self, Demux, FrameError, Header, StunFrame};

impl Server {
    // ---------------------------------------------------------------------------------------
    // Client datagrams
    // ---------------------------------------------------------------------------------------

    /// A message from `client` arrived on listener `listener`: a UDP datagram, or one STUN
    /// message or ChannelData message (padding included) framed off a stream connection.
    pub fn handle_client_datagram(
        &mut self,
        listener: ListenerId,
        client: SocketAddr,
        data: &[u8],
        now: Instant,
    ) {
        let Some((server, transport)) = self
            .config
            .listeners
            .get(usize::from(listener.0))
            .map(|l| (l.addr, l.transport))
        else {
            warn!(?listener, "datagram on an unknown listener");
            self.stats.malformed_dropped += 1;
            return;
        };
        let five_tuple = FiveTuple {
            client,
            server,
            transport,
        };
        self.arrived = now;
        match wire::demux(data) {
            Demux::Stun => {
                if transport == Transport::Udp {
                    self.answers.credit(client.ip(), data.len(), now);
                }
                self.handle_stun(listener, five_tuple, data, now);
            }
            Demux::ChannelData => self.handle_client_channel_data(five_tuple, data, now),
            Demux::Other => self.stats.malformed_dropped += 1,
        }
    }

    pub(super) fn handle_stun(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        data: &[u8],
        now: Instant,
    ) {
        let frame = match StunFrame::parse(data) {
            Ok(frame) => frame,
            Err(FrameError::BadAttributes(header)) if header.class == MessageClass::Request => {
                self.count_request(header);
                self.respond(listener, five_tuple, header, Reply::error(400), None, None);
                return;
            }
            Err(error) => {
                trace!(client = %five_tuple.client, ?error, "dropping malformed STUN");
                self.stats.malformed_dropped += 1;
                return;
            }
        };
        match frame.header.class {
            MessageClass::Request => self.handle_request(listener, five_tuple, &frame, now),
            MessageClass::Indication => {
                self.handle_indication(listener, five_tuple, &frame, data.len(), now);
            }
            MessageClass::SuccessResponse | MessageClass::ErrorResponse => {
                self.stats.malformed_dropped += 1;
            }
        }
    }

    pub(super) fn count_request(&mut self, header: Header) {
        let counter = match header.method {
            BINDING => &mut self.stats.binding_requests,
            ALLOCATE => &mut self.stats.allocate_requests,
            REFRESH => &mut self.stats.refresh_requests,
            CREATE_PERMISSION => &mut self.stats.create_permission_requests,
            CHANNEL_BIND => &mut self.stats.channel_bind_requests,
            _ => &mut self.stats.other_requests,
        };
        *counter += 1;
    }

    pub(super) fn handle_request(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        frame: &StunFrame<'_>,
        now: Instant,
    ) {
        let header = frame.header;
        self.count_request(header);
        let key = (five_tuple, header.transaction_id, header.method);
        if let Some(response) = self.tx_cache.get(&key, now) {
            let data = response.to_vec();
            self.stats.retransmissions_answered += 1;
            self.commands.push_back(Command::SendToClient {
                listener,
                client: five_tuple.client,
                data,
            });
            return;
        }
        if let Some(id) = self.pending_by_tuple.get(&five_tuple)
            && self
                .pending
                .get(id)
                .is_some_and(|p| p.header.transaction_id == header.transaction_id)
        {
            // A retransmission while its relayed sockets are being bound: the answer is coming.
            return;
        }
        let tcp_method = matches!(header.method.as_u16(), CONNECT | CONNECTION_BIND);
        let turn_method = tcp_method
            || matches!(
                header.method,
                ALLOCATE | REFRESH | CREATE_PERMISSION | CHANNEL_BIND
            );
        if turn_method && frame.integrity.is_none() && !self.config.stun_only {
            // No credentials: the challenge (RFC 8489 §9.2.4) comes before anything else is
            // checked, so an unauthenticated request costs no attribute decoding.
            let unix_now = self.unix_now(now);
            if let Some(bytes) = self.challenge_401(header, five_tuple.client, unix_now) {
                self.deliver(listener, five_tuple, header, bytes, false, None);
            }
            return;
        }
        let Some(message) = decode(frame) else {
            self.respond(listener, five_tuple, header, Reply::error(400), None, None);
            return;
        };
        if header.method == BINDING {
            let reply = match unknown_required(&message) {
                unknown if !unknown.is_empty() => {
                    Reply::Error(420, vec![UnknownAttributes::new(unknown).into()])
                }
                _ => Reply::Success(vec![XorMappedAddress::new(five_tuple.client).into()]),
            };
            self.respond(listener, five_tuple, header, reply, None, None);
            return;
        }
        if !turn_method {
            self.respond(listener, five_tuple, header, Reply::error(400), None, None);
            return;
        }
        if self.config.stun_only {
            // STUN only (STUNner's `auth.type: none`): no TURN, whoever asks.
            self.stats.stun_only_refused += 1;
            trace!(client = %five_tuple.client, method = ?header.method, "TURN refused: STUN only");
            self.respond(listener, five_tuple, header, Reply::error(403), None, None);
            return;
        }
        // A ConnectionBind's data connection may use the nonce of its control connection.
        let also = (header.method.as_u16() == CONNECTION_BIND)
            .then(|| self.connection_owner(&message))
            .flatten();
        let auth = match self.authenticate(five_tuple.client, also, frame, &message, now) {
            Ok(auth) => auth,
            Err(reply) => {
                self.respond(listener, five_tuple, header, reply, None, None);
                return;
            }
        };
        let unknown = unknown_required(&message);
        let reply = if !unknown.is_empty() {
            Reply::Error(420, vec![UnknownAttributes::new(unknown).into()])
        } else {
            match header.method {
                ALLOCATE => self.allocate(listener, five_tuple, header, &message, &auth, now),
                REFRESH => self.refresh(five_tuple, &message, &auth, now),
                CREATE_PERMISSION => {
                    self.create_permission(listener, five_tuple, &message, &auth, now)
                }
                CHANNEL_BIND => self.channel_bind(listener, five_tuple, &message, &auth, now),
                m if m.as_u16() == CONNECT => {
                    self.connect(listener, five_tuple, header, &message, &auth, now)
                }
                _ => self.connection_bind(listener, five_tuple, &message, &auth),
            }
        };
        if matches!(reply, Reply::Success(_)) {
            self.changes.mark(five_tuple, listener);
        }
        if !matches!(reply, Reply::Parked) {
            self.respond(listener, five_tuple, header, reply, Some(&auth), Some(now));
        }
        let after = std::mem::take(&mut self.after_response);
        self.commands.extend(after);
    }

    /// Encodes and sends a response; `cache_at`: remember it for retransmissions.
    pub(super) fn respond(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        header: Header,
        reply: Reply,
        auth: Option<&AuthContext>,
        cache_at: Option<Instant>,
    ) {
        if let Some(bytes) = self.encode_response(header, reply, auth) {
            self.deliver(
                listener,
                five_tuple,
                header,
                bytes,
                auth.is_some(),
                cache_at,
            );
        }
    }

    /// A response encoded, signed if `auth` and fingerprinted; `None` for [`Reply::Parked`] (or
    /// what cannot be encoded, logged).
    pub(super) fn encode_response(
        &mut self,
        header: Header,
        reply: Reply,
        auth: Option<&AuthContext>,
    ) -> Option<Vec<u8>> {
        let mut bytes = self.encode_plain(header, reply, auth.is_some())?;
        if let Some(auth) = auth {
            wire::append_integrity_with(&mut bytes, &auth.key);
        }
        wire::append_fingerprint(&mut bytes);
        Some(bytes)
    }

    /// A response encoded up to where MESSAGE-INTEGRITY would go (with room for it and a
    /// FINGERPRINT); `authenticated`: it will be signed, and carries SOFTWARE.
    pub(super) fn encode_plain(
        &mut self,
        header: Header,
        reply: Reply,
        authenticated: bool,
    ) -> Option<Vec<u8>> {
        let (class, mut attributes) = match reply {
            Reply::Success(attributes) => (MessageClass::SuccessResponse, attributes),
            Reply::Error(code, attributes) => {
                self.stats.count_error(code);
                let mut all = Vec::with_capacity(attributes.len() + 1);
                match ErrorCode::new(code, reason_phrase(code).to_owned()) {
                    Ok(error) => all.push(error.into()),
                    Err(error) => warn!(code, %error, "bad error code"),
                }
                all.extend(attributes);
                (MessageClass::ErrorResponse, all)
            }
            Reply::Parked => return None,
        };
        // No SOFTWARE on errors to clients that did not authenticate: the answers anyone can
        // ask for most (401s) stay small.
        if authenticated || class == MessageClass::SuccessResponse {
            attributes.push(self.software.clone().into());
        }
        let mut message = Message::<Attribute>::new(class, header.method, header.transaction_id);
        for attribute in attributes {
            message.add_attribute(attribute);
        }
        match wire::encode_message(message) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                warn!(%error, "could not encode a response");
                None
            }
        }
    }

    /// Sends an encoded response: an unauthenticated one over UDP within its source's budget
    /// (the source may be spoofed); `cache_at`: remember it for retransmissions.
    pub(super) fn deliver(
        &mut self,
        listener: ListenerId,
        five_tuple: FiveTuple,
        header: Header,
        bytes: Vec<u8>,
        authenticated: bool,
        cache_at: Option<Instant>,
    ) {
        if !authenticated && five_tuple.transport == Transport::Udp {
            let len = bytes.len() as u64;
            if !self
                .answers
                .charge(five_tuple.client.ip(), bytes.len(), self.arrived)
            {
                self.stats.unauthenticated_answers_limited += 1;
                self.stats.unauthenticated_answer_bytes_limited += len;
                trace!(client = %five_tuple.client, "unauthenticated answer over budget: dropped");
                return;
            }
            self.stats.unauthenticated_answers += 1;
            self.stats.unauthenticated_answer_bytes += len;
        }
        if let Some(now) = cache_at {
            self.tx_cache.insert(
                (five_tuple, header.transaction_id, header.method),
                bytes.clone(),
                now,
            );
        }
        self.commands.push_back(Command::SendToClient {
            listener,
            client: five_tuple.client,
            data: bytes,
        });
    }
}
