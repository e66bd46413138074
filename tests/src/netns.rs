//! Network namespaces and veth pairs made with iproute2, removed on drop.
use std::{
    fs::File,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{CloneFlags, setns};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS` and panics with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("cannot run `ip` (iproute2)");
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace that exists while this value does.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace named after `role`, unique per process and call, with `lo` up.
    pub fn new(role: &str) -> NetNs {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("xt-{}-{n}-{role}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// A command that runs `program ARGS` inside this namespace.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }

    /// Runs `program ARGS` inside the namespace to completion; panics on failure.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .command(program, args)
            .output()
            .expect("cannot run ip netns exec");
        assert!(
            out.status.success(),
            "`{program} {}` in {} failed: {}{}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `program ARGS` inside the namespace; the process is killed when the guard drops.
    pub fn spawn(&self, program: &str, args: &[&str]) -> ChildGuard {
        let child = self
            .command(program, args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} in {}: {e}", self.name));
        ChildGuard(Some(child))
    }

    /// Like [`NetNs::spawn`], with stdout and stderr written to `log` (read it after the process
    /// ends: a file never fills up and blocks the process the way an undrained pipe would).
    pub fn spawn_logged(&self, program: &str, args: &[&str], log: &std::path::Path) -> ChildGuard {
        let file = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = file.try_clone().expect("clone log file handle");
        let child = self
            .command(program, args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} in {}: {e}", self.name));
        ChildGuard(Some(child))
    }

    /// Runs `f` on a new thread that has entered this namespace; sockets and XDP attachments
    /// made there belong to the namespace.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        setns(file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace removes its interfaces (and so both ends of its veths).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connects `a` and `b` with a veth pair named `a_if`/`b_if`, both up, with the kernel's
/// default settings (TX checksum offload and TSO on, GRO off): what a Kubernetes pod's `eth0`
/// and its node-side peer have.
pub fn veth_default(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) {
    ip(&[
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// Connects `a` and `b` with a veth pair named `a_if`/`b_if`, both up, with offloads off so
/// datagrams are neither merged nor split.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) {
    veth_default(a, a_if, b, b_if);
    for (ns, ifname) in [(a, a_if), (b, b_if)] {
        let _ = ns
            .command(
                "ethtool",
                &["-K", ifname, "gro", "off", "gso", "off", "tso", "off"],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until drop")
    }

    /// Sends SIGTERM and waits for the process, returning its output if it was piped.
    pub fn terminate(mut self) -> std::process::Output {
        let mut child = self.0.take().expect("child present until drop");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait_with_output().expect("wait for child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
