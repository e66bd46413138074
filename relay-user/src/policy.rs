//! Which peers a client may reach through the relay. (Interface fixed; implementation being
//! written.)
use std::net::{IpAddr, SocketAddr};

/// Why a peer address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerDenied {
    /// On the default deny list (loopback, unspecified, link-local, multicast, broadcast, the
    /// relay's own listeners), after canonicalising embedded IPv4 addresses.
    #[error("peer {peer} is forbidden: {why}")]
    DefaultDeny { peer: IpAddr, why: &'static str },
    /// Routes are configured for the listener and none of their clusters covers the peer.
    #[error("peer {peer} is not in any cluster routed from listener {listener:?}")]
    NoRoute { listener: String, peer: SocketAddr },
}

/// The peer policy of the whole relay.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {}

impl PeerPolicy {
    /// No routes: every peer is allowed except the default deny list. `own` are the relay's
    /// listener addresses (denied as peers, by address and port).
    pub fn open(own: Vec<SocketAddr>) -> Self {
        let _ = own;
        PeerPolicy {}
    }

    /// For CreatePermission (no port known): may a client on `listener` reach `peer` at all?
    pub fn permits_ip(&self, listener: &str, peer: IpAddr) -> Result<(), PeerDenied> {
        let _ = (listener, peer);
        Ok(())
    }

    /// For ChannelBind and Send: may a client on `listener` reach `peer` (address and port)?
    pub fn permits(&self, listener: &str, peer: SocketAddr) -> Result<(), PeerDenied> {
        let _ = (listener, peer);
        Ok(())
    }
}
