//! The TURN client's protocol logic (RFC 8656 over UDP, with RFC 8489 STUN), sans-IO: no
//! socket, no clock. `xturnctl`'s `TurnClient` and the load generator drive it.
//!
//! - [`message`]: building requests and indications, parsing responses, Data indications and
//!   ChannelData, MESSAGE-INTEGRITY checks.
//! - [`auth`]: one request's life across long-term authentication retries (401 → credentials,
//!   438 → new nonce, once each).
//! - [`retransmit`]: when to retransmit a request over UDP and when to give up.
pub mod auth;
pub mod message;
pub mod retransmit;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use crate::auth::rest_credentials;
pub use auth::{AuthState, Step, Transaction};
pub use message::{Request, StunMessage};
pub use retransmit::RetransmitPolicy;

/// The lowest channel number a client may bind (RFC 8656 section 12).
pub const CHANNEL_MIN: u16 = 0x4000;
/// The highest channel number a client may bind (RFC 8656 section 12).
pub const CHANNEL_MAX: u16 = 0x4FFF;

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error response (after any authentication retries).
    #[error("error response {code} ({reason})")]
    ErrorResponse { code: u16, reason: String },
    /// No response within the retransmission budget.
    #[error("{method} request timed out after {sends} transmission(s) in {elapsed:?}")]
    Timeout {
        method: &'static str,
        sends: u32,
        elapsed: Duration,
    },
    /// Responses arrived, but every one failed its MESSAGE-INTEGRITY check.
    #[error("{method} response(s) failed the MESSAGE-INTEGRITY check ({count} discarded)")]
    IntegrityCheckFailed { method: &'static str, count: u32 },
    /// Nothing was received within the receive timeout.
    #[error("nothing received within {0:?}")]
    RecvTimeout(Duration),
    /// A message could not be encoded (e.g. a too long USERNAME, a too large payload).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// A datagram from the server could not be parsed, or a response lacks a needed attribute.
    #[error("malformed message from the server: {0}")]
    Malformed(String),
    /// A ChannelData channel number outside 0x4000..=0x7FFF (it would not look like ChannelData).
    #[error("channel number {0:#06x} cannot be sent as ChannelData")]
    InvalidChannel(u16),
    /// Socket errors.
    #[error("socket error: {0}")]
    Io(std::io::Error),
}

// By hand rather than `#[from]`, which would also make the io::Error the `source` and print it
// twice in error chains.
impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl ClientError {
    /// The STUN error code if this is an error response.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::ErrorResponse { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The long-term credentials the client answers a 401 challenge with.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    pub username: String,
    pub password: String,
}

impl ClientCredentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        ClientCredentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// No credentials: requests go out unauthenticated and a 401 is final (for Binding).
    pub fn anonymous() -> Self {
        ClientCredentials::new("", "")
    }

    /// TURN REST API credentials (see [`rest_credentials`]).
    pub fn rest(secret: &str, user_id: &str, expires_unix: u64) -> Self {
        let (username, password) = rest_credentials(secret, user_id, expires_unix);
        ClientCredentials { username, password }
    }

    pub fn is_anonymous(&self) -> bool {
        self.username.is_empty()
    }
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// An IP address family, for REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// The REQUESTED-TRANSPORT protocol number for UDP.
pub const TRANSPORT_UDP: u8 = 17;

/// What to ask for in an Allocate request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateOptions {
    /// REQUESTED-ADDRESS-FAMILY; `None` leaves it out (the server then relays IPv4).
    pub family: Option<Family>,
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 dual allocation; only IPv6 is valid).
    pub additional_family: Option<Family>,
    /// LIFETIME; `None` leaves it to the server (600 s by default).
    pub lifetime: Option<Duration>,
    /// REQUESTED-TRANSPORT protocol number; [`TRANSPORT_UDP`] unless testing a server's 442.
    pub transport: u8,
    /// Adds DONT-FRAGMENT.
    pub dont_fragment: bool,
    /// Adds EVEN-PORT with this R bit.
    pub even_port: Option<bool>,
}

impl Default for AllocateOptions {
    fn default() -> Self {
        AllocateOptions {
            family: None,
            additional_family: None,
            lifetime: None,
            transport: TRANSPORT_UDP,
            dont_fragment: false,
            even_port: None,
        }
    }
}

impl AllocateOptions {
    /// Asks for a relayed address of `family` (IPv4 is the default, so it adds nothing).
    pub fn family(family: Family) -> Self {
        AllocateOptions {
            family: (family == Family::V6).then_some(Family::V6),
            ..AllocateOptions::default()
        }
    }
}

/// A successful allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// XOR-RELAYED-ADDRESS (the first one).
    pub relayed: SocketAddr,
    /// XOR-MAPPED-ADDRESS: the client's address as the server sees it.
    pub mapped: SocketAddr,
    /// LIFETIME granted by the server.
    pub lifetime: Duration,
    /// A second XOR-RELAYED-ADDRESS, present after a granted ADDITIONAL-ADDRESS-FAMILY.
    pub additional_relayed: Option<SocketAddr>,
}

/// How a datagram from a peer reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A ChannelData message on this channel.
    Channel(u16),
    /// A Data indication.
    DataIndication,
}

/// A datagram from a peer, relayed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub peer: SocketAddr,
    pub data: Vec<u8>,
    pub via: Via,
}
