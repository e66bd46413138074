//! Checks that a kernel contender's own counters account for the packets it reports.
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{sh, topology::netns_cmd};

use super::*;

/// What xturnd's XDP counters say about the client → peer datagrams.
pub(super) fn kernel_check(log: &str, to_peer: u64) -> String {
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
    format!(
        "the kernel program relayed {kernel} datagrams client → peer and {back} peer → client; \
         the echo received {to_peer} in the measured phases (warm-ups come on top)"
    )
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
