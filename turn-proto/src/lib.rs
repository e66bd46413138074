//! TURN as a protocol, sans-IO: bytes, addresses and `now` in; messages, commands and events
//! out. No sockets, clocks, threads or kernel maps live here, so every rule can be driven and
//! checked from a unit test, and the agent (`xturnd`), the client CLI (`xturnctl`), the load
//! generator (`xturn-bench`), the tests and the operator's credential service share one
//! implementation.
//!
//! - [`wire`]: the codec on raw bytes — demultiplexing, the STUN header, MESSAGE-INTEGRITY and
//!   FINGERPRINT (checked and appended), XOR addresses, Data indications, ChannelData;
//! - [`attributes`]: the one STUN/TURN attribute set, on `stun_codec`;
//! - [`stream`]: framing STUN and ChannelData over TCP and TLS;
//! - [`auth`]: long-term credentials, TURN REST API credentials, stateless nonces;
//! - [`policy`]: which peers a client may reach;
//! - [`server`]: the RFC 8656 server state machine, one module per procedure;
//! - [`client`]: the client state machine (requests, authentication retries, retransmission).
pub mod attributes;
pub mod auth;
pub mod client;
pub mod policy;
pub mod rfc5769;
pub mod server;
pub mod stream;
pub mod wire;
