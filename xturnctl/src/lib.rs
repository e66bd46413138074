//! `xturnctl`, the xturn client CLI, as a library: a TURN client over tokio UDP sockets for
//! users, the load generator and the tests. The protocol itself (messages, authentication
//! retries, retransmission timing) is turn-proto's [`client`](turn_proto::client); this crate
//! adds only the I/O.
//!
//! - [`TurnClient`]: one allocation's client over a connected UDP socket;
//! - [`ping`]: the payload and statistics of `xturnctl ping`;
//! - [`logging`]: stderr logging for the command-line tools.
mod driver;
pub mod logging;
pub mod ping;

pub use driver::{ClientConfig, TurnClient};
/// The protocol types a user of [`TurnClient`] needs, re-exported from turn-proto.
pub use turn_proto::client::{
    AllocateOptions, Allocation, ClientCredentials, ClientError, Family, Received,
    RetransmitPolicy, Via, rest_credentials,
};
