//! Loads the XDP program, attaches it to interfaces, and reads its maps.
//!
//! This is the only module that talks to the kernel's BPF subsystem. The object is built by
//! `build.rs` and embedded in the binary.
use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use relay_common::{Counter, Reason, names};
use tracing::{info, warn};

/// The eBPF object built from `relay-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay-ebpf"));

/// Errors of the fast path's loader.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error(
        "this build has no eBPF object (built with XTURN_SKIP_EBPF); rebuild after `cargo xtask setup`"
    )]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no program {name:?}")]
    MissingProgram { name: &'static str },
    #[error("the eBPF object has no map {name:?}")]
    MissingMap { name: &'static str },
    #[error("program {name:?}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching XDP to {interface:?} failed in every mode (last: {source})")]
    Attach {
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("map {name:?}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// How a program ended up attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    /// Native (driver) XDP.
    Driver,
    /// Generic XDP, run by the kernel's network stack after the driver.
    Generic,
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachedMode::Driver => "native",
            AttachedMode::Generic => "generic",
        })
    }
}

/// The result of running the program once on a crafted frame (`BPF_PROG_TEST_RUN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// The XDP action the program returned (`XDP_PASS` = 2, ...).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// The loaded XDP program and its maps.
pub struct FastPath {
    ebpf: Ebpf,
    links: Vec<(String, &'static str, XdpLinkId)>,
}

impl FastPath {
    /// Loads the embedded object and both programs into the kernel (not yet attached).
    pub fn load() -> Result<Self, FastPathError> {
        if OBJECT.is_empty() {
            return Err(FastPathError::NoObject);
        }
        let ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| FastPathError::Load(Box::new(e)))?;
        let mut fast_path = FastPath {
            ebpf,
            links: Vec::new(),
        };
        for name in [names::XDP_PROGRAM, names::XDP_PASS_PROGRAM] {
            fast_path
                .xdp(name)?
                .load()
                .map_err(|source| FastPathError::Program { name, source })?;
        }
        Ok(fast_path)
    }

    /// Starts forwarding the program's `aya-log` records into `tracing`. Needs a tokio runtime;
    /// the task ends when the runtime does.
    pub fn spawn_logger(&mut self) {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => {
                tokio::spawn(async move {
                    // SAFETY: the logger owns its ring buffer's fd and keeps it open and
                    // unchanged for as long as it lives, which is as long as the AsyncFd.
                    let registered = unsafe {
                        tokio::io::unix::AsyncFd::register_with_interest(
                            logger,
                            tokio::io::Interest::READABLE,
                        )
                    };
                    let mut logger = match registered {
                        Ok(fd) => fd,
                        Err(e) => {
                            warn!(error = %e, "cannot poll the eBPF log buffer");
                            return;
                        }
                    };
                    loop {
                        let Ok(mut guard) = logger.readable_mut().await else {
                            return;
                        };
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(e) => warn!(error = %e, "eBPF logging unavailable"),
        }
    }

    fn xdp(&mut self, name: &'static str) -> Result<&mut Xdp, FastPathError> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(FastPathError::MissingProgram { name })?;
        program
            .try_into()
            .map_err(|source| FastPathError::Program { name, source })
    }

    /// Attaches the fast path to `interface`: native mode first, generic mode when the driver
    /// has no XDP support.
    pub fn attach(&mut self, interface: &str) -> Result<AttachedMode, FastPathError> {
        self.attach_program(names::XDP_PROGRAM, interface)
    }

    /// Attaches the trivial pass-everything program to `interface`. A veth drops frames
    /// transmitted or redirected into it unless its peer has an XDP program; this is that program.
    pub fn attach_pass(&mut self, interface: &str) -> Result<AttachedMode, FastPathError> {
        self.attach_program(names::XDP_PASS_PROGRAM, interface)
    }

    fn attach_program(
        &mut self,
        name: &'static str,
        interface: &str,
    ) -> Result<AttachedMode, FastPathError> {
        let program = self.xdp(name)?;
        let (link, mode) = match program.attach(interface, XdpMode::Driver) {
            Ok(link) => (link, AttachedMode::Driver),
            Err(native_error) => {
                warn!(interface, error = %native_error, "native XDP unavailable, trying generic");
                let link = program.attach(interface, XdpMode::Skb).map_err(|source| {
                    FastPathError::Attach {
                        interface: interface.to_owned(),
                        source,
                    }
                })?;
                (link, AttachedMode::Generic)
            }
        };
        info!(interface, program = name, %mode, "XDP attached");
        self.links.push((interface.to_owned(), name, link));
        Ok(mode)
    }

    /// Detaches every program this `FastPath` attached. Dropping it does the same.
    pub fn detach_all(&mut self) {
        for (interface, name, link) in std::mem::take(&mut self.links) {
            let detached = self.xdp(name).and_then(|p| {
                p.detach(link)
                    .map_err(|source| FastPathError::Program { name, source })
            });
            match detached {
                Ok(()) => info!(interface, program = name, "XDP detached"),
                Err(e) => warn!(interface, program = name, error = %e, "XDP detach failed"),
            }
        }
    }

    /// The `STATS` counters, summed over CPUs, in [`Reason`] order.
    pub fn stats(&self) -> Result<Vec<(Reason, Counter)>, FastPathError> {
        let name = names::STATS_MAP;
        let map = self
            .ebpf
            .map(name)
            .ok_or(FastPathError::MissingMap { name })?;
        let array: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(map).map_err(|source| FastPathError::Map { name, source })?;
        Reason::ALL
            .iter()
            .map(|&reason| {
                let per_cpu = array
                    .get(&reason.index(), 0)
                    .map_err(|source| FastPathError::Map { name, source })?;
                let total = per_cpu
                    .iter()
                    .fold(Counter::default(), |acc, c| acc.plus(*c));
                Ok((reason, total))
            })
            .collect()
    }

    /// Runs the fast path once on `frame` (an Ethernet frame) with `BPF_PROG_TEST_RUN`. Maps are
    /// read and written as in real traffic.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<TestRunOutcome, FastPathError> {
        let name = names::XDP_PROGRAM;
        // Room for a frame that grows (a ChannelData header prepended) by up to 256 bytes.
        let mut out = vec![0u8; frame.len() + 256];
        let program = self.xdp(name)?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .map_err(|source| FastPathError::Program { name, source })?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome {
            action: result.return_value,
            frame: out,
        })
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        self.detach_all();
    }
}
