//! The benchmark's ceiling contender (`xturn-ceiling`): loads the ceiling XDP program
//! (`relay-ebpf/src/bin/ceiling.rs`), gives it its one
//! configuration entry, attaches it to the relay's interfaces and reads its counters.
use std::net::{Ipv4Addr, SocketAddrV4};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use serde::Serialize;

/// The ceiling object, built by `build.rs` with the fast path (empty with `XTURN_SKIP_EBPF`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ceiling"));

use relay_common::ceiling::{CONFIG_MAP, CeilingConfig, PROGRAM, STATS_MAP};

/// Why the ceiling program could not run.
#[derive(Debug, thiserror::Error)]
#[error("eBPF: {0}")]
pub struct CeilingError(String);

/// What to rewrite to, and where to attach.
#[derive(Debug, Clone)]
pub struct CeilingSpec {
    pub listener: SocketAddrV4,
    pub client_ip: Ipv4Addr,
    pub relay_ip: Ipv4Addr,
    pub peer: SocketAddrV4,
    pub channel: u16,
    pub interfaces: Vec<String>,
}

impl CeilingSpec {
    pub fn config(&self) -> CeilingConfig {
        CeilingConfig {
            listener_ip: self.listener.ip().octets(),
            client_ip: self.client_ip.octets(),
            relay_ip: self.relay_ip.octets(),
            peer_ip: self.peer.ip().octets(),
            listener_port: self.listener.port().to_be_bytes(),
            peer_port: self.peer.port().to_be_bytes(),
            channel: self.channel.to_be_bytes(),
            _pad: [0; 2],
        }
    }
}

/// The program's per-outcome packet counts, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CeilingCounters {
    pub to_peer: u64,
    pub to_client: u64,
    pub passed: u64,
    pub dropped: u64,
}

/// The loaded, attached ceiling program.
pub struct Ceiling {
    ebpf: Ebpf,
    links: Vec<(String, XdpLinkId)>,
    stats: PerCpuArray<MapData, u64>,
    /// Kept open for as long as the program runs.
    _config: Array<MapData, CeilingConfig>,
    /// How each interface ended up attached ("native" or "generic").
    pub modes: Vec<(String, &'static str)>,
}

fn ebpf_err(what: &str, e: impl std::fmt::Display) -> CeilingError {
    CeilingError(format!("{what}: {e}"))
}

impl Ceiling {
    /// Loads the program, writes the configuration and attaches to every interface (native
    /// mode, else generic).
    pub fn start(spec: &CeilingSpec) -> Result<Ceiling, CeilingError> {
        let crate::ebpf::BenchObject {
            ebpf,
            config,
            stats,
        } = crate::ebpf::load_bench_object(OBJECT, "ceiling", CONFIG_MAP, spec.config(), STATS_MAP)
            .map_err(CeilingError)?;
        let mut ceiling = Ceiling {
            ebpf,
            links: Vec::new(),
            stats,
            _config: config,
            modes: Vec::new(),
        };
        let program = ceiling.program()?;
        program.load().map_err(|e| ebpf_err(PROGRAM, e))?;
        for interface in &spec.interfaces {
            let program = ceiling.program()?;
            let (link, mode) = match program.attach(interface, XdpMode::Driver) {
                Ok(link) => (link, "native"),
                Err(_) => (
                    program
                        .attach(interface, XdpMode::Skb)
                        .map_err(|e| ebpf_err(&format!("attaching to {interface}"), e))?,
                    "generic",
                ),
            };
            ceiling.links.push((interface.clone(), link));
            ceiling.modes.push((interface.clone(), mode));
        }
        Ok(ceiling)
    }

    fn program(&mut self) -> Result<&mut Xdp, CeilingError> {
        self.ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| ebpf_err(PROGRAM, "missing"))?
            .try_into()
            .map_err(|e| ebpf_err(PROGRAM, e))
    }

    pub fn counters(&self) -> Result<CeilingCounters, CeilingError> {
        let sum = |i: u32| -> Result<u64, CeilingError> {
            let values = self.stats.get(&i, 0).map_err(|e| ebpf_err(STATS_MAP, e))?;
            Ok(values.iter().sum())
        };
        Ok(CeilingCounters {
            to_peer: sum(0)?,
            to_client: sum(1)?,
            passed: sum(2)?,
            dropped: sum(3)?,
        })
    }

    /// Detaches from every interface (dropping does the same).
    pub fn detach(&mut self) {
        for (_, link) in std::mem::take(&mut self.links) {
            if let Ok(program) = self.program() {
                let _ = program.detach(link);
            }
        }
    }
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        self.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_in_network_order() {
        let spec = CeilingSpec {
            listener: "198.18.1.1:3478".parse().expect("listener"),
            client_ip: Ipv4Addr::new(198, 18, 1, 2),
            relay_ip: Ipv4Addr::new(198, 18, 2, 1),
            peer: "198.18.2.2:4000".parse().expect("peer"),
            channel: 0x4000,
            interfaces: Vec::new(),
        };
        let c = spec.config();
        assert_eq!(c.listener_ip, [198, 18, 1, 1]);
        assert_eq!(c.listener_port, [0x0d, 0x96]);
        assert_eq!(c.peer_port, [0x0f, 0xa0]);
        assert_eq!(c.channel, [0x40, 0x00]);
        assert_eq!(c.relay_ip, [198, 18, 2, 1]);
        assert_eq!(c.client_ip, [198, 18, 1, 2]);
    }
}
