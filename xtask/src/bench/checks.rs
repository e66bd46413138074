//! Checks that a kernel contender's own counters account for the packets it reports.
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{sh, topology::netns_cmd};

use super::*;

/// Share of the datagrams the echo received that the kernel program must have relayed itself:
/// every ChannelData of the measured phases is on a bound channel, so a kernel contender whose
/// program counted fewer relayed part of them in userspace and its figures are not the kernel
/// path's.
const KERNEL_SHARE: f64 = 0.99;

/// What xturnd's kernel counters (logged at exit) say about the client → peer datagrams: the
/// summary, or why the contender's figures cannot count as the kernel path's.
pub(super) fn kernel_check(log: &str, to_peer: u64) -> Result<String, String> {
    let packets = |reason: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("kernel counter") && l.contains(&format!("reason=\"{reason}\"")))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("packets="))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .sum()
    };
    let kernel = packets("relayed_to_peer");
    let back = packets("relayed_to_client");
    let summary = format!(
        "the kernel program relayed {kernel} datagrams client → peer and {back} peer → client; \
         the echo received {to_peer} in the measured phases (warm-ups come on top)"
    );
    if (kernel as f64) < to_peer as f64 * KERNEL_SHARE {
        return Err(format!(
            "its kernel counters do not account for the packets it reports: {summary}"
        ));
    }
    Ok(summary)
}

pub(super) fn ceiling_check(stdout: &str, to_peer: u64) -> String {
    #[derive(Deserialize)]
    struct Out {
        counters: BTreeMap<String, u64>,
        modes: BTreeMap<String, String>,
    }
    match serde_json::from_str::<Out>(stdout) {
        Ok(out) => format!(
            "ceiling program counters {:?} (attached {:?}); the echo received {to_peer} in the \
             measured phases",
            out.counters, out.modes
        ),
        Err(e) => format!("ceiling report unreadable: {e}"),
    }
}

/// The run time per packet of the XDP program(s) attached to the relay's interfaces, from
/// `kernel.bpf_stats_enabled` (`bpftool prog show`): what the program itself costs.
pub(super) fn xdp_program_stats() -> Option<String> {
    let mut ids = Vec::new();
    for interface in RELAY_IFS {
        let out = sh::output(netns_cmd(
            NAMES.relay,
            "bpftool",
            &["-j", "net", "show", "dev", interface],
        ))?;
        let value: serde_json::Value = serde_json::from_str(&out).ok()?;
        collect_prog_ids(&value, &mut ids);
    }
    ids.sort_unstable();
    ids.dedup();
    let (mut ns, mut runs, mut names) = (0u64, 0u64, Vec::new());
    for id in ids {
        let out = sh::output(sh::cmd(
            "bpftool",
            &["-j", "prog", "show", "id", &id.to_string()],
        ))?;
        let p: serde_json::Value = serde_json::from_str(&out).ok()?;
        ns += p.get("run_time_ns").and_then(serde_json::Value::as_u64)?;
        runs += p.get("run_cnt").and_then(serde_json::Value::as_u64)?;
        if let Some(name) = p.get("name").and_then(serde_json::Value::as_str) {
            names.push(name.to_owned());
        }
    }
    (runs > 0).then(|| {
        format!(
            "the XDP program ({}) itself ran {:.0} ns per packet on average over {runs} runs \
             (kernel.bpf_stats_enabled)",
            names.join(", "),
            ns as f64 / runs as f64
        )
    })
}

pub(super) fn collect_prog_ids(value: &serde_json::Value, ids: &mut Vec<u64>) {
    match value {
        serde_json::Value::Array(items) => {
            for item in items {
                collect_prog_ids(item, ids);
            }
        }
        serde_json::Value::Object(map) => {
            if map.contains_key("devname")
                && let Some(id) = map.get("id").and_then(serde_json::Value::as_u64)
            {
                ids.push(id);
            }
            for (key, item) in map {
                if key != "id" {
                    collect_prog_ids(item, ids);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
        INFO xturnd: kernel counter reason=\"relayed_to_peer\" packets=1000 bytes=1\n\
        INFO xturnd: kernel counter reason=\"relayed_to_client\" packets=990 bytes=1\n\
        INFO xturnd: kernel counter reason=\"pass_not_udp\" packets=5 bytes=1\n";

    #[test]
    fn a_kernel_contender_whose_counters_account_for_its_packets_passes() {
        let summary = kernel_check(LOG, 995).expect("accounted for");
        assert!(
            summary.contains("1000 datagrams client → peer and 990"),
            "{summary}"
        );
    }

    #[test]
    fn a_kernel_contender_that_relayed_in_userspace_fails() {
        let why = kernel_check(LOG, 2000).expect_err("half went through userspace");
        assert!(why.contains("do not account"), "{why}");
        assert!(kernel_check("", 10).is_err(), "no counters at all");
    }
}
