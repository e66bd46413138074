//! Real TURN clients and peers the end-to-end tests drive, and where their output goes.
use std::path::PathBuf;

use crate::{
    netns::ChildGuard,
    topology::{PEER_V4, PEER_V6, Topology},
};

/// The UDP port of the echo peers.
pub const PEER_PORT: &str = "3480";

/// A per-process log file path for `name` in the temp directory.
pub fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xturn-{}-{name}.log", std::process::id()))
}

/// coturn's UDP echo peers (`turnutils_peer`) on both peer addresses, port [`PEER_PORT`].
pub fn start_echo_peers(topology: &Topology) -> Vec<ChildGuard> {
    [PEER_V4, PEER_V6]
        .iter()
        .map(|ip| {
            topology
                .peer
                .spawn("turnutils_peer", &["-L", ip, "-p", PEER_PORT])
        })
        .collect()
}

/// The totals `turnutils_uclient` prints at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UclientTotals {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
}

/// Runs `turnutils_uclient ARGS SERVER` in the client namespace (at most 60 s) and parses its
/// final totals; panics with its output if there are none.
pub fn uclient(topology: &Topology, args: &[&str], server: &str) -> UclientTotals {
    let mut all = vec!["60", "turnutils_uclient"];
    all.extend_from_slice(args);
    all.push(server);
    let out = topology
        .client
        .command("timeout", &all)
        .output()
        .expect("run turnutils_uclient");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // The last totals line is the whole run's (per-session lines carry "msz=").
    let last = |key: &str| {
        text.lines()
            .rev()
            .filter(|l| !l.contains("msz="))
            .find_map(|l| number_after(l, key))
            .unwrap_or_else(|| panic!("turnutils_uclient {args:?} {server} gave no {key}:\n{text}"))
    };
    UclientTotals {
        sent: last("tot_send_msgs="),
        received: last("tot_recv_msgs="),
        lost: last("Total lost packets "),
    }
}

/// The number right after `key` in `line`.
pub fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Runs `future` to completion on a fresh single-threaded runtime (on the calling thread, so
/// inside `NetNs::within` its sockets belong to that namespace).
pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}
