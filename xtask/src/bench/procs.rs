//! NAPI threads, eBPF statistics and the processes of a run (started in namespaces, stopped on drop).
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{sh, topology::run_quiet};

use super::*;

// ---- NAPI threads ------------------------------------------------------------------------

/// The PIDs of the threaded-NAPI kernel threads of these interfaces (`napi/<if>-<id>`).
pub(super) fn napi_threads(interfaces: &[&str]) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if interfaces
            .iter()
            .any(|i| comm.trim().starts_with(&format!("napi/{i}-")))
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// Pins the relay's NAPI threads to the relay core and the load side's to the load cores.
pub(super) fn pin_napi_threads(cores: &Cores) -> Result<()> {
    for (ifs, cpus) in [(&RELAY_IFS, &cores.relay), (&LOAD_IFS, &cores.load)] {
        let pids = napi_threads(ifs);
        if pids.len() < ifs.len() {
            bail!("threaded NAPI threads of {ifs:?} not found (found {pids:?})");
        }
        for pid in pids {
            run_quiet(sh::cmd(
                "taskset",
                &["-pc", &Cores::list(cpus), &pid.to_string()],
            ))?;
        }
    }
    Ok(())
}

// ---- topology and processes --------------------------------------------------------------

/// `kernel.bpf_stats_enabled` on for the run (per-program run time in `bpftool prog show`),
/// restored on drop.
pub(super) struct BpfStats(Option<String>);

impl BpfStats {
    pub(super) fn enable() -> BpfStats {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let old = fs::read_to_string(path).ok().map(|s| s.trim().to_owned());
        if old.as_deref() != Some("1") && fs::write(path, "1").is_ok() {
            return BpfStats(old);
        }
        BpfStats(None)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", old);
        }
    }
}

/// A process in a namespace, pinned to some cores, its output in two files; killed on drop.
pub(super) struct Proc {
    pub(super) child: Option<Child>,
    pub(super) log: PathBuf,
}

impl Proc {
    pub(super) fn spawn(
        ns: &str,
        cpus: &str,
        program: &str,
        args: &[&str],
        log: &Path,
    ) -> Result<Proc> {
        let out = fs::File::create(log.with_extension("out"))?;
        let err = fs::File::create(log.with_extension("err"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "taskset", "-c", cpus, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {program} in {ns}"))?;
        Ok(Proc {
            child: Some(child),
            log: log.to_owned(),
        })
    }

    pub(super) fn log_path(&self, ext: &str) -> PathBuf {
        self.log.with_extension(ext)
    }

    /// The process's PID (`ip netns exec` and `taskset` exec, so it is the program's own).
    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(super) fn exited(&self) -> bool {
        // try_wait needs &mut; a zombie shows up as state Z in /proc.
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        stat.is_empty() || stat.contains(") Z ")
    }

    pub(super) fn wait_for_stderr(&self, needle: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let err = fs::read_to_string(self.log_path("err")).unwrap_or_default();
            if err.contains(needle) {
                return Ok(());
            }
            if self.exited() {
                bail!("process exited at start: {}", err.trim());
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("no {needle:?} from the process within {within:?}")
    }

    /// Waits for the process to end by itself (killing it after `within`); its output.
    pub(super) fn wait(mut self, within: Duration) -> Result<(String, String)> {
        let mut child = self.child.take().context("already stopped")?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                let (out, err) = self.output();
                if !status.success() {
                    bail!("exited with {status}: {}", err.trim());
                }
                return Ok((out, err));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("did not finish within {within:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then up to 10 s to exit (SIGKILL after); its output.
    pub(super) fn stop(mut self) -> Result<(String, String)> {
        let mut child = self.child.take().context("already stopped")?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
        Ok(self.output())
    }

    pub(super) fn output(&self) -> (String, String) {
        (
            fs::read_to_string(self.log_path("out")).unwrap_or_default(),
            fs::read_to_string(self.log_path("err")).unwrap_or_default(),
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
