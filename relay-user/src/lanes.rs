//! Lanes: the userspace data plane kept on one CPU per thread.
//!
//! When `--threads` equals the number of CPUs the agent may run on (a whole machine or VM, a
//! Kubernetes pod with exclusive CPUs under the static CPU manager policy, or `taskset`), and
//! `--cpu-affinity` is `auto` (the default), each of the `threads` lanes is an OS thread pinned
//! to one of those CPUs, running a single-threaded tokio runtime of its own with
//!
//! - its socket of every UDP listener's `SO_REUSEPORT` group, and
//! - its relayed-socket reader ([`crate::relayed`]).
//!
//! A classic BPF program on each group ([`attach_steering`]) hands a datagram to the socket of
//! the lane on the CPU where the kernel received it (RSS, RPS or, on a veth, the sender's CPU),
//! and an Allocate carried out on a lane gives the relayed socket to that lane's reader
//! ([`current`]). So a client's ChannelData, the peer's datagrams back when they arrive on the
//! same CPU, and the softirqs that deliver them stay on one CPU: no wake-up crosses CPUs, no
//! task is stolen by another worker. The control plane (timers, state, stream and DTLS
//! listeners, metrics) stays on the main multi-threaded runtime.
//!
//! Otherwise (fewer threads than CPUs, as in a pod with a CPU limit on a shared node, where
//! pinning would crowd two CPUs of many), every task runs on the main runtime's workers and the
//! kernel spreads a listener's clients over its sockets by hashing their addresses.
use std::{cell::Cell, io, os::fd::AsRawFd, str::FromStr};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use tokio::{sync::oneshot, task::JoinSet};
use tracing::warn;

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h: x86-64, arm64, riscv; the `libc` crate
/// exports it only for Android).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Whether the agent pins its data plane to CPUs (`--cpu-affinity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuAffinity {
    /// Lanes when `--threads` equals the number of CPUs the agent may use.
    #[default]
    Auto,
    /// Never: every task on the main runtime's work-stealing workers.
    Off,
}

impl FromStr for CpuAffinity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CpuAffinity::Auto),
            "off" => Ok(CpuAffinity::Off),
            other => Err(format!("{other:?} is neither \"auto\" nor \"off\"")),
        }
    }
}

impl std::fmt::Display for CpuAffinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuAffinity::Auto => "auto",
            CpuAffinity::Off => "off",
        })
    }
}

/// The CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(io::Error::from)?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// The CPU of each lane, or `None` when the data plane runs on the main runtime: lane `i`
/// runs on `cpus[i]`.
pub fn plan(threads: usize, affinity: CpuAffinity, allowed: &[usize]) -> Option<Vec<usize>> {
    (affinity == CpuAffinity::Auto && threads == allowed.len() && threads <= MAX_LANES)
        .then(|| allowed.to_vec())
}

/// Most lanes the steering program can name (its jumps are 8-bit; far below that in practice).
const MAX_LANES: usize = 64;

thread_local! {
    static LANE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The lane this thread is, if it is one.
pub(crate) fn current() -> Option<usize> {
    LANE.with(Cell::get)
}

/// Makes this thread lane `index`, running on `cpu` only.
pub(crate) fn enter(index: usize, cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)?;
    LANE.with(|lane| lane.set(Some(index)));
    Ok(())
}

/// The steering program for lanes on `cpus`: a datagram received on `cpus[i]` goes to socket
/// `i` of the group (sockets are numbered in the order they were bound). On any other CPU it
/// returns an index past the group, and the kernel falls back to hashing the addresses.
pub fn steering_program(cpus: &[usize]) -> Vec<libc::sock_filter> {
    let mut program = Vec::with_capacity(2 * cpus.len() + 2);
    // A = the CPU this datagram is being received on (an ancillary load).
    program.push(statement(
        (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
    ));
    for (index, &cpu) in cpus.iter().enumerate() {
        // if A == cpu: return index (the next instruction); else skip it.
        program.push(libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: cpu as u32,
        });
        program.push(statement(
            (libc::BPF_RET | libc::BPF_K) as u16,
            index as u32,
        ));
    }
    program.push(statement(
        (libc::BPF_RET | libc::BPF_K) as u16,
        cpus.len() as u32,
    ));
    program
}

fn statement(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Attaches [`steering_program`] to the `SO_REUSEPORT` group `socket` is in (one socket of the
/// group carries it for all).
pub fn attach_steering(socket: &impl AsRawFd, cpus: &[usize]) -> io::Result<()> {
    let mut program = steering_program(cpus);
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many lanes"))?,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A running lane: its thread, told to stop (and joined) when dropped.
pub(crate) struct Lane {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // It stops at its next poll: its tasks and their sockets are gone when this returns.
            let _ = thread.join();
        }
    }
}

/// Starts lane `index` on `cpu`: a thread with a runtime of its own, where `start` spawns the
/// lane's tasks. The receiver resolves when a task of the lane ends (they loop forever, so one
/// panicked or failed) or the lane could not start.
pub(crate) fn spawn(
    index: usize,
    cpu: usize,
    start: impl FnOnce(&mut JoinSet<()>) + Send + 'static,
) -> io::Result<(Lane, oneshot::Receiver<String>)> {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let (ended, ended_rx) = oneshot::channel::<String>();
    let thread = std::thread::Builder::new()
        .name(format!("xturn-lane-{index}"))
        .spawn(move || {
            if let Err(e) = enter(index, cpu) {
                // Still correct, only not pinned: the kernel's steering finds the socket anyway.
                warn!(lane = index, cpu, error = %e, "cannot pin the lane to its CPU");
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ended.send(format!("lane {index} cannot start its runtime: {e}"));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut tasks = JoinSet::new();
                start(&mut tasks);
                tokio::select! {
                    _ = &mut stopped => {}
                    outcome = tasks.join_next() => {
                        let message = match outcome {
                            Some(Err(e)) if e.is_panic() => format!("a task of lane {index} panicked: {e}"),
                            Some(Err(e)) => format!("a task of lane {index} was cancelled: {e}"),
                            Some(Ok(())) => format!("a task of lane {index} ended"),
                            None => format!("lane {index} has no task"),
                        };
                        let _ = ended.send(message);
                    }
                }
            });
        })?;
    Ok((
        Lane {
            stop: Some(stop),
            thread: Some(thread),
        },
        ended_rx,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_only_when_threads_match_the_allowed_cpus() {
        assert_eq!(
            plan(2, CpuAffinity::Auto, &[0, 1]),
            Some(vec![0, 1]),
            "a whole 2-CPU machine"
        );
        assert_eq!(
            plan(2, CpuAffinity::Auto, &[4, 7]),
            Some(vec![4, 7]),
            "exclusive CPUs"
        );
        assert_eq!(
            plan(2, CpuAffinity::Auto, &[0, 1, 2, 3]),
            None,
            "a CPU limit"
        );
        assert_eq!(
            plan(4, CpuAffinity::Auto, &[0, 1]),
            None,
            "more threads than CPUs"
        );
        assert_eq!(plan(2, CpuAffinity::Off, &[0, 1]), None);
        assert_eq!(plan(1, CpuAffinity::Auto, &[3]), Some(vec![3]));
    }

    #[test]
    fn the_program_names_each_lane_by_its_cpu() {
        let program = steering_program(&[4, 7]);
        assert_eq!(program.len(), 6);
        let ret = (libc::BPF_RET | libc::BPF_K) as u16;
        let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
        // Run it: a tiny interpreter of the four instructions it uses.
        let run = |cpu: u32| {
            let mut pc = 1;
            loop {
                let insn = &program[pc];
                if insn.code == ret {
                    return insn.k;
                }
                assert_eq!(insn.code, jeq);
                pc += 1 + usize::from(if cpu == insn.k { insn.jt } else { insn.jf });
            }
        };
        assert_eq!(run(4), 0);
        assert_eq!(run(7), 1);
        assert_eq!(
            run(0),
            2,
            "other CPUs: past the group, so the kernel hashes"
        );
    }

    /// Two sockets in one `SO_REUSEPORT` group on loopback, the test thread pinned to one CPU:
    /// loopback receives on the sending CPU, so every datagram goes to the socket the program
    /// names for that CPU, from whichever source port (hashing would split 32 sources).
    #[test]
    fn the_kernel_steers_by_the_receiving_cpu() {
        use socket2::{Domain, Protocol, Socket, Type};
        use std::net::{SocketAddr, UdpSocket};
        use std::time::Duration;

        let cpus = allowed_cpus().expect("sched_getaffinity");
        let cpu = *cpus.last().expect("at least one CPU");
        enter(0, cpu).expect("pin the test thread");
        let bind = |addr: SocketAddr| {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            socket.set_reuse_port(true).unwrap();
            socket.bind(&addr.into()).unwrap();
            socket.set_nonblocking(true).unwrap();
            UdpSocket::from(socket)
        };
        let first = bind("127.0.0.1:0".parse().unwrap());
        let addr = first.local_addr().unwrap();
        let group = [first, bind(addr)];
        // Some other CPU (it need not exist) and this one, in both orders.
        let other = cpu + 1;
        for (lanes, expected) in [([other, cpu], 1), ([cpu, other], 0)] {
            attach_steering(&group[0], &lanes).expect("attach the steering program");
            for _ in 0..32 {
                let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
                sender.send_to(b"steer me", addr).unwrap();
            }
            let mut counts = [0, 0];
            let mut buf = [0u8; 64];
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while counts.iter().sum::<usize>() < 32 && std::time::Instant::now() < deadline {
                for (count, socket) in counts.iter_mut().zip(&group) {
                    while socket.recv_from(&mut buf).is_ok() {
                        *count += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut want = [0, 0];
            want[expected] = 32;
            assert_eq!(counts, want, "lanes {lanes:?}, this thread on CPU {cpu}");
        }
    }

    #[test]
    fn affinity_parses() {
        assert_eq!("auto".parse(), Ok(CpuAffinity::Auto));
        assert_eq!("off".parse(), Ok(CpuAffinity::Off));
        assert!("on".parse::<CpuAffinity>().is_err());
    }
}
