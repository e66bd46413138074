//! CPU time from `/proc`: exact per-thread run time, and per-CPU tick counters.
//!
//! - `/proc/<pid>/task/<tid>/schedstat`: nanoseconds each thread ran (the scheduler's own sum,
//!   which includes interrupts and softirqs that ran while the thread was current: this kernel
//!   has no separate IRQ time accounting). Used for the relay's process and for the NAPI threads
//!   of its interfaces, where its share of the network stack and any XDP program run.
//! - `/proc/stat`: per-CPU user/system/softirq/idle ticks (USER_HZ), for how busy each core was
//!   and what softirq work ran on the relay's core outside any thread.
use std::fs;
use std::io;

/// Ticks per second of `/proc/stat` (USER_HZ).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

/// The first field of a `schedstat` file: nanoseconds on a CPU.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Nanoseconds all threads of `pid` have run so far (threads that already exited are not
/// counted). A kernel thread has one.
pub fn process_run_ns(pid: u32) -> io::Result<u64> {
    let mut total = 0u64;
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        if let Ok(text) = fs::read_to_string(&path) {
            total += parse_schedstat(&text).unwrap_or(0);
        }
    }
    Ok(total)
}

/// One CPU's line of `/proc/stat`, in ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTicks {
    /// Ticks the CPU did anything (not idle, not waiting for I/O, not stolen).
    pub fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq
    }

    pub fn since(&self, earlier: &CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user.saturating_sub(earlier.user),
            nice: self.nice.saturating_sub(earlier.nice),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            iowait: self.iowait.saturating_sub(earlier.iowait),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

/// The per-CPU lines of `/proc/stat` (`cpuN ...`), indexed by N.
pub fn parse_proc_stat(text: &str) -> Vec<(usize, CpuTicks)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let cpu = fields.next()?.strip_prefix("cpu")?.parse::<usize>().ok()?;
            let v: Vec<u64> = fields.map_while(|f| f.parse().ok()).collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            Some((
                cpu,
                CpuTicks {
                    user: at(0),
                    nice: at(1),
                    system: at(2),
                    idle: at(3),
                    iowait: at(4),
                    irq: at(5),
                    softirq: at(6),
                    steal: at(7),
                },
            ))
        })
        .collect()
}

/// Reads `/proc/stat`.
pub fn cpu_ticks() -> io::Result<Vec<(usize, CpuTicks)>> {
    Ok(parse_proc_stat(&fs::read_to_string("/proc/stat")?))
}

/// What to account to the relay, and which cores are whose.
#[derive(Debug, Clone, Default)]
pub struct CpuSpec {
    /// The relay's process and the NAPI threads of its interfaces.
    pub relay_pids: Vec<u32>,
    /// The cores the relay is pinned to.
    pub relay_cpus: Vec<usize>,
    /// The cores the load generator and the echo are pinned to.
    pub load_cpus: Vec<usize>,
    /// The load side's other processes (the echo, the NAPI threads of its interfaces); this
    /// process is always counted.
    pub load_pids: Vec<u32>,
}

/// A moment's counters.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    relay_ns: Option<u64>,
    load_ns: Option<u64>,
    ticks: Vec<(usize, CpuTicks)>,
    at: std::time::Instant,
}

/// CPU use between two snapshots, in seconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct CpuUse {
    /// Run time of the relay's threads (process + NAPI threads); `None` if one vanished.
    pub relay_threads_s: Option<f64>,
    /// Softirq and hardirq ticks on the relay's cores, whoever they interrupted (this kernel
    /// also charges them to the interrupted thread, so they overlap `relay_threads_s`).
    pub relay_cores_irq_s: f64,
    /// Everything the relay's cores did (ticks), whoever did it.
    pub relay_cores_busy_s: f64,
    /// Everything the load generator's cores did (ticks).
    pub load_cores_busy_s: f64,
    /// Number of load cores (to turn busy seconds into a utilisation).
    pub load_cores: usize,
    /// Run time of the load side's threads (this process, the echo, their NAPI threads).
    pub load_threads_s: Option<f64>,
    /// Share of the relay's cores that other processes used (busy ticks beyond the relay's
    /// threads), 0..=1 per core. Tick sampling makes it noisy by a few percent.
    pub relay_others: f64,
    /// Share of the load cores that other processes used, 0..=1 per core.
    pub load_others: f64,
}

impl CpuUse {
    /// The larger of the two interference shares.
    pub fn interference(&self) -> f64 {
        self.relay_others.max(self.load_others)
    }
}

impl CpuSpec {
    pub fn snapshot(&self) -> CpuSnapshot {
        let relay_ns = self
            .relay_pids
            .iter()
            .map(|&pid| process_run_ns(pid).ok())
            .sum::<Option<u64>>();
        let load_ns = self
            .load_pids
            .iter()
            .chain(std::iter::once(&std::process::id()))
            .map(|&pid| process_run_ns(pid).ok())
            .sum::<Option<u64>>();
        CpuSnapshot {
            relay_ns,
            load_ns,
            ticks: cpu_ticks().unwrap_or_default(),
            at: std::time::Instant::now(),
        }
    }

    pub fn between(&self, start: &CpuSnapshot, end: &CpuSnapshot) -> CpuUse {
        let hz = ticks_per_second() as f64;
        let delta = |cpus: &[usize]| -> CpuTicks {
            let mut sum = CpuTicks::default();
            for &cpu in cpus {
                let find = |s: &CpuSnapshot| {
                    s.ticks
                        .iter()
                        .find(|(n, _)| *n == cpu)
                        .map(|(_, t)| *t)
                        .unwrap_or_default()
                };
                let d = find(end).since(&find(start));
                sum.user += d.user;
                sum.nice += d.nice;
                sum.system += d.system;
                sum.irq += d.irq;
                sum.softirq += d.softirq;
            }
            sum
        };
        let relay = delta(&self.relay_cpus);
        let load = delta(&self.load_cpus);
        let seconds = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e9),
            _ => None,
        };
        let relay_threads_s = seconds(start.relay_ns, end.relay_ns);
        let load_threads_s = seconds(start.load_ns, end.load_ns);
        let window = end.at.duration_since(start.at).as_secs_f64().max(1e-9);
        // Busy ticks beyond our own threads' run time: someone else on our cores.
        let others = |busy_ticks: u64, ours: Option<f64>, cores: usize| -> f64 {
            let busy = busy_ticks as f64 / hz;
            ((busy - ours.unwrap_or(busy)) / (window * cores.max(1) as f64)).max(0.0)
        };
        CpuUse {
            relay_threads_s,
            load_threads_s,
            relay_others: others(relay.busy(), relay_threads_s, self.relay_cpus.len()),
            load_others: others(load.busy(), load_threads_s, self.load_cpus.len()),
            relay_cores_irq_s: (relay.irq + relay.softirq) as f64 / hz,
            relay_cores_busy_s: relay.busy() as f64 / hz,
            load_cores_busy_s: load.busy() as f64 / hz,
            load_cores: self.load_cpus.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_first_field() {
        assert_eq!(parse_schedstat("540557565 374033 63\n"), Some(540_557_565));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn proc_stat_lines() {
        let text = "cpu  156210 0 37781 464504 2744 0 329 223 0 0\n\
                    cpu0 71104 0 16911 242026 645 0 50 109 0 0\n\
                    cpu1 85106 1 20870 222477 2099 3 278 113 0 0\n\
                    intr 1 2 3\n";
        let cpus = parse_proc_stat(text);
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[1].0, 1);
        assert_eq!(
            cpus[1].1,
            CpuTicks {
                user: 85106,
                nice: 1,
                system: 20870,
                idle: 222_477,
                iowait: 2099,
                irq: 3,
                softirq: 278,
                steal: 113,
            }
        );
        assert_eq!(cpus[1].1.busy(), 85106 + 1 + 20870 + 3 + 278);
    }

    #[test]
    fn our_own_threads_have_run() {
        let ns = process_run_ns(std::process::id()).expect("schedstat");
        assert!(ns > 0);
    }
}
