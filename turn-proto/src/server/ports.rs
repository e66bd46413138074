//! Relayed ports: which `ip:port`s the server has bound, is binding or holds in reserve, and
//! how a free one is chosen.
//!
//! The server cannot know which ports other programs use; it learns that from
//! `BindFailure::AddressInUse` and then picks another port.
use super::HashSet;
use std::net::{IpAddr, SocketAddr};

use rand::Rng;
use rand::rngs::StdRng;

/// The relayed addresses in use by this server.
#[derive(Debug, Default)]
pub(crate) struct Ports {
    min: u16,
    max: u16,
    claimed: HashSet<SocketAddr>,
}

impl Ports {
    pub(crate) fn new(min: u16, max: u16) -> Self {
        Ports {
            // Port 0 would ask the kernel for "any port": never hand it out.
            min: min.max(1),
            max,
            claimed: HashSet::default(),
        }
    }

    pub(crate) fn is_claimed(&self, addr: SocketAddr) -> bool {
        self.claimed.contains(&addr)
    }

    pub(crate) fn claim(&mut self, addr: SocketAddr) {
        self.claimed.insert(addr);
    }

    pub(crate) fn release(&mut self, addr: SocketAddr) {
        self.claimed.remove(&addr);
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
        let free = |port: u16| {
            let addr = SocketAddr::new(ip, port);
            !self.claimed.contains(&addr) && !avoid.contains(&addr)
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
