//! Relayed ports: which `ip:port`s the server has bound, is binding or holds in reserve, and
//! how a free one is chosen.
//!
//! The server cannot know which ports other programs use; it learns that from
//! `BindFailure::AddressInUse` and then picks another port.
use super::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use rand::Rng;
use rand::rngs::StdRng;

/// One bit per port of one IP address (8 KiB): a pick tests bits instead of hashing each
/// candidate address, and 10 000 claimed ports take 8 KiB instead of a set of addresses.
struct PortBits([u64; 1024]);

impl PortBits {
    fn get(&self, port: u16) -> bool {
        self.0[usize::from(port >> 6)] & (1 << (port & 63)) != 0
    }

    fn set(&mut self, port: u16, on: bool) {
        let word = &mut self.0[usize::from(port >> 6)];
        if on {
            *word |= 1 << (port & 63);
        } else {
            *word &= !(1 << (port & 63));
        }
    }
}

/// The relayed addresses in use by this server.
#[derive(Default)]
pub(crate) struct Ports {
    min: u16,
    max: u16,
    /// By relay IP address (a handful: one per family and relay address).
    claimed: HashMap<IpAddr, Box<PortBits>>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports")
            .field("min", &self.min)
            .field("max", &self.max)
            .field("ips", &self.claimed.len())
            .finish_non_exhaustive()
    }
}

impl Ports {
    pub(crate) fn new(min: u16, max: u16) -> Self {
        Ports {
            // Port 0 would ask the kernel for "any port": never hand it out.
            min: min.max(1),
            max,
            claimed: HashMap::default(),
        }
    }

    pub(crate) fn is_claimed(&self, addr: SocketAddr) -> bool {
        self.claimed
            .get(&addr.ip())
            .is_some_and(|bits| bits.get(addr.port()))
    }

    pub(crate) fn claim(&mut self, addr: SocketAddr) {
        self.claimed
            .entry(addr.ip())
            .or_insert_with(|| Box::new(PortBits([0; 1024])))
            .set(addr.port(), true);
    }

    pub(crate) fn release(&mut self, addr: SocketAddr) {
        if let Some(bits) = self.claimed.get_mut(&addr.ip()) {
            bits.set(addr.port(), false);
        }
    }

    /// A free port on `ip` from a random starting point, skipping claimed ports and `avoid`.
    /// `even`: the port must be even; `pair`: `port + 1` must be free as well (EVEN-PORT with
    /// the R bit).
    pub(crate) fn pick(
        &self,
        ip: IpAddr,
        even: bool,
        pair: bool,
        avoid: &HashSet<SocketAddr>,
        rng: &mut StdRng,
    ) -> Option<u16> {
        if self.min > self.max {
            return None;
        }
        let span = u32::from(self.max) - u32::from(self.min) + 1;
        let start = rng.random_range(0..span);
        let bits = self.claimed.get(&ip);
        let free = |port: u16| {
            !bits.is_some_and(|b| b.get(port))
                && (avoid.is_empty() || !avoid.contains(&SocketAddr::new(ip, port)))
        };
        (0..span)
            .filter_map(|i| u16::try_from(u32::from(self.min) + (start + i) % span).ok())
            .find(|&port| {
                if even && port % 2 != 0 {
                    return false;
                }
                if pair {
                    match port.checked_add(1) {
                        Some(next) if next <= self.max && free(next) => {}
                        _ => return false,
                    }
                }
                free(port)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn picks_within_range_and_skips_claimed() {
        let mut rng = StdRng::seed_from_u64(1);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut ports = Ports::new(50000, 50003);
        let none = HashSet::default();
        let mut seen = HashSet::default();
        for _ in 0..4 {
            let p = ports.pick(ip, false, false, &none, &mut rng).unwrap();
            assert!((50000..=50003).contains(&p));
            ports.claim(SocketAddr::new(ip, p));
            seen.insert(p);
        }
        assert_eq!(seen.len(), 4);
        assert_eq!(ports.pick(ip, false, false, &none, &mut rng), None);
        // A released port is the only free one.
        let released = SocketAddr::new(ip, 50002);
        ports.release(released);
        assert!(!ports.is_claimed(released));
        assert_eq!(ports.pick(ip, false, false, &none, &mut rng), Some(50002));
        assert!(ports.is_claimed(SocketAddr::new(ip, 50003)));
        // The top of the range and the edges of the bitmap's words.
        let mut top = Ports::new(65534, 65535);
        assert_eq!(top.pick(ip, true, true, &none, &mut rng), Some(65534));
        top.claim(SocketAddr::new(ip, 65535));
        assert!(top.is_claimed(SocketAddr::new(ip, 65535)));
        assert!(!top.is_claimed(SocketAddr::new(ip, 65534)));
        assert_eq!(top.pick(ip, true, true, &none, &mut rng), None);
        assert_eq!(top.pick(ip, false, false, &none, &mut rng), Some(65534));
        let mut edge = Ports::new(63, 64);
        edge.claim(SocketAddr::new(ip, 63));
        assert_eq!(edge.pick(ip, false, false, &none, &mut rng), Some(64));
        edge.claim(SocketAddr::new(ip, 64));
        edge.release(SocketAddr::new(ip, 63));
        assert_eq!(edge.pick(ip, false, false, &none, &mut rng), Some(63));
        // Another IP has its own ports.
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(ports.pick(other, false, false, &none, &mut rng).is_some());
    }

    #[test]
    fn even_ports_and_pairs() {
        let mut rng = StdRng::seed_from_u64(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut ports = Ports::new(50001, 50004);
        let none = HashSet::default();
        for _ in 0..10 {
            let p = ports.pick(ip, true, true, &none, &mut rng).unwrap();
            assert_eq!(p, 50002);
        }
        ports.claim(SocketAddr::new(ip, 50003));
        assert_eq!(ports.pick(ip, true, true, &none, &mut rng), None);
        assert_eq!(
            ports.pick(ip, true, false, &none, &mut rng).map(|p| p % 2),
            Some(0)
        );
        let avoid: HashSet<_> = [SocketAddr::new(ip, 50002), SocketAddr::new(ip, 50004)]
            .into_iter()
            .collect();
        assert_eq!(ports.pick(ip, true, false, &avoid, &mut rng), None);
        assert_eq!(
            Ports::new(10, 9).pick(ip, false, false, &none, &mut rng),
            None
        );
    }
}
