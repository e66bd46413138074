//! The host's own output route for a relayed datagram: which interface a datagram from a local
//! address to a destination leaves by, as `ip route get DST from SRC` shows it (RTM_GETROUTE).
//! The TC fast path sends there, so no forwarding is needed on the host.
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Errors of a route lookup.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("no route from {src} to {dst} (error {code})")]
    NoRoute { src: IpAddr, dst: IpAddr, code: i32 },
    #[error("the kernel's answer names no output interface")]
    NoInterface,
    #[error("the kernel's answer does not parse: {0}")]
    Decode(String),
}

/// A netlink socket for route lookups in the calling thread's network namespace.
pub struct Router {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Router {
    pub fn new() -> Result<Router, RouteError> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Router {
            socket,
            sequence: 0,
            buffer: vec![0; 8192],
        })
    }

    /// The index of the interface a datagram from `src` (a local address) to `dst` leaves by.
    pub fn egress_ifindex(&mut self, src: IpAddr, dst: IpAddr) -> Result<u32, RouteError> {
        let (family, bits) = match dst {
            IpAddr::V4(_) => (AddressFamily::Inet, 32),
            IpAddr::V6(_) => (AddressFamily::Inet6, 128),
        };
        let mut message = RouteMessage::default();
        message.header = RouteHeader {
            address_family: family,
            destination_prefix_length: bits,
            source_prefix_length: if src.is_ipv4() == dst.is_ipv4() {
                bits
            } else {
                0
            },
            ..RouteHeader::default()
        };
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        if src.is_ipv4() == dst.is_ipv4() {
            message
                .attributes
                .push(RouteAttribute::Source(RouteAddress::from(src)));
        }
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::GetRoute(message)),
        );
        packet.finalize();
        let mut request = vec![0; packet.buffer_len()];
        packet.serialize(&mut request);
        self.socket.send(&request, 0)?;
        loop {
            let size = self.socket.recv(&mut &mut self.buffer[..], 0)?;
            let mut offset = 0;
            while offset < size {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buffer[offset..size])
                        .map_err(|e| RouteError::Decode(e.to_string()))?;
                let length = reply.header.length as usize;
                if reply.header.sequence_number == self.sequence {
                    match reply.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                            return route
                                .attributes
                                .iter()
                                .find_map(|a| match a {
                                    RouteAttribute::Oif(index) => Some(*index),
                                    _ => None,
                                })
                                .ok_or(RouteError::NoInterface);
                        }
                        NetlinkPayload::Error(e) => {
                            return Err(RouteError::NoRoute {
                                src,
                                dst,
                                code: e.code.map_or(0, |c| c.get()),
                            });
                        }
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_routes_leave_by_lo() {
        let mut router = Router::new().expect("netlink socket");
        let lo = nix::net::if_::if_nametoindex("lo").expect("lo");
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(router.egress_ifindex(local, local).expect("route"), lo);
    }
}
