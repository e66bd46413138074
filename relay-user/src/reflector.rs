//! The benchmark's reflector (`xturn-reflector`): loads the reflector TC program
//! (`relay-ebpf/src/bin/reflector.rs`), gives it its configuration entry, attaches it at TC
//! ingress of the load side's interfaces and reads its counters.
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, tc::SchedClassifierLinkId,
    },
};
use serde::Serialize;

use relay_common::reflector::{CONFIG_MAP, PROGRAM, ReflectorConfig, STATS_MAP};

/// The reflector object, built by `build.rs` with the fast path (empty with `XTURN_SKIP_EBPF`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reflector"));

/// Why the reflector could not run.
#[derive(Debug, thiserror::Error)]
#[error("eBPF: {0}")]
pub struct ReflectorError(String);

fn ebpf_err(what: &str, e: impl std::fmt::Display) -> ReflectorError {
    ReflectorError(format!("{what}: {e}"))
}

/// Which datagrams go back, and where to attach.
#[derive(Debug, Clone)]
pub struct ReflectorSpec {
    /// Only datagrams to this port (`None`: any).
    pub port: Option<u16>,
    /// Only ChannelData.
    pub channel_data: bool,
    pub interfaces: Vec<String>,
}

impl ReflectorSpec {
    pub fn config(&self) -> ReflectorConfig {
        ReflectorConfig {
            port: self.port.unwrap_or(0).to_be_bytes(),
            channel_data: u8::from(self.channel_data),
            _pad: 0,
        }
    }
}

/// The program's counts, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ReflectorCounters {
    /// Datagrams sent back (a UDP GSO buffer counts its segments).
    pub reflected: u64,
    /// Buffers left alone.
    pub passed: u64,
    /// The program's runs and their total time, when `kernel.bpf_stats_enabled` is on (else 0).
    pub runs: u64,
    pub run_time_ns: u64,
}

/// The loaded, attached reflector.
pub struct Reflector {
    ebpf: Ebpf,
    links: Vec<SchedClassifierLinkId>,
    stats: PerCpuArray<MapData, u64>,
    /// Kept open for as long as the program runs.
    _config: Array<MapData, ReflectorConfig>,
}

impl Reflector {
    /// Loads the program, writes the configuration and attaches at TC ingress of every
    /// interface.
    pub fn start(spec: &ReflectorSpec) -> Result<Reflector, ReflectorError> {
        let mut reflector = Reflector::load(spec)?;
        for interface in &spec.interfaces {
            let link = reflector
                .program()?
                .attach(interface, TcAttachType::Ingress)
                .map_err(|e| ebpf_err(&format!("attaching to {interface}"), e))?;
            reflector.links.push(link);
        }
        Ok(reflector)
    }

    /// Loads the program and writes the configuration, attached nowhere
    /// ([`Reflector::test_run`]).
    pub fn load(spec: &ReflectorSpec) -> Result<Reflector, ReflectorError> {
        let crate::ebpf::BenchObject {
            ebpf,
            config,
            stats,
        } = crate::ebpf::load_bench_object(
            OBJECT,
            "reflector",
            CONFIG_MAP,
            spec.config(),
            STATS_MAP,
        )
        .map_err(ReflectorError)?;
        let mut reflector = Reflector {
            ebpf,
            links: Vec::new(),
            stats,
            _config: config,
        };
        reflector
            .program()?
            .load()
            .map_err(|e| ebpf_err(PROGRAM, e))?;
        Ok(reflector)
    }

    /// Runs the program once on `frame` (an Ethernet frame) with `BPF_PROG_TEST_RUN`: the TC
    /// action (`TC_ACT_OK` = 0, `TC_ACT_REDIRECT` = 7) and the frame as it left it. Nothing is
    /// transmitted.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>), ReflectorError> {
        let mut out = vec![0u8; frame.len()];
        let result = self
            .program()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .map_err(|e| ebpf_err(PROGRAM, e))?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    fn program(&mut self) -> Result<&mut SchedClassifier, ReflectorError> {
        self.ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| ebpf_err(PROGRAM, "missing"))?
            .try_into()
            .map_err(|e| ebpf_err(PROGRAM, e))
    }

    pub fn counters(&self) -> Result<ReflectorCounters, ReflectorError> {
        let sum = |i: u32| -> Result<u64, ReflectorError> {
            let values = self.stats.get(&i, 0).map_err(|e| ebpf_err(STATS_MAP, e))?;
            Ok(values.iter().sum())
        };
        let program: &SchedClassifier = self
            .ebpf
            .program(PROGRAM)
            .ok_or_else(|| ebpf_err(PROGRAM, "missing"))?
            .try_into()
            .map_err(|e| ebpf_err(PROGRAM, e))?;
        let info = program.info().map_err(|e| ebpf_err(PROGRAM, e))?;
        Ok(ReflectorCounters {
            reflected: sum(0)?,
            passed: sum(1)?,
            runs: info.run_count(),
            run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
        })
    }

    /// Detaches from every interface (dropping does the same).
    pub fn detach(&mut self) {
        for link in std::mem::take(&mut self.links) {
            if let Ok(program) = self.program() {
                let _ = program.detach(link);
            }
        }
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_in_network_order() {
        let spec = ReflectorSpec {
            port: Some(4000),
            channel_data: false,
            interfaces: Vec::new(),
        };
        assert_eq!(
            spec.config(),
            ReflectorConfig {
                port: [0x0f, 0xa0],
                channel_data: 0,
                _pad: 0
            }
        );
        let any = ReflectorSpec {
            port: None,
            channel_data: true,
            interfaces: Vec::new(),
        };
        assert_eq!(any.config().port, [0, 0]);
        assert_eq!(any.config().channel_data, 1);
    }
}
