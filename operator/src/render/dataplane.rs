//! A Dataplane, read for xturn: the data plane mode, and the agent's image, command and
//! arguments. A Dataplane written for STUNner (its `l7mp/stunnerd` image, the `stunnerd`
//! command and stunnerd's flags) runs `xturnd`: the image becomes the operator's agent image,
//! the command `xturnd`, and each stunnerd flag the xturnd flag that means the same, or nothing
//! where the operator already covers it. Each translation is reported (the Gateway's
//! `xturn.io/DataplaneTranslated` condition), so nothing changes silently.
use crate::crd::DataplaneSpec;

/// The agent's binary in our image.
pub const AGENT_COMMAND: &str = "xturnd";

/// What the agent container runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentCommand {
    pub image: String,
    pub command: Vec<String>,
    /// The Dataplane's arguments, translated; the operator's own come first.
    pub extra_args: Vec<String>,
    /// What was translated or dropped, one sentence each.
    pub notes: Vec<String>,
}

/// The agent's `--dataplane` as the config's `offload_engine`: `None`, `XDP`, `TC` or `Auto`.
pub fn dataplane_mode(dataplane: &DataplaneSpec) -> Result<&'static str, String> {
    if let Some(mode) = &dataplane.mode {
        return match mode.to_ascii_lowercase().as_str() {
            "xdp" => Ok("XDP"),
            "tc" => Ok("TC"),
            "userspace" => Ok("None"),
            "auto" => Ok("Auto"),
            other => Err(format!(
                "Dataplane mode must be auto, tc, xdp or userspace, not {other:?}"
            )),
        };
    }
    match dataplane.offload_engine.as_deref() {
        None => Ok("Auto"),
        Some(engine) => match engine.to_ascii_lowercase().as_str() {
            "none" | "" => Ok("None"),
            "xdp" => Ok("XDP"),
            "tc" => Ok("TC"),
            "auto" => Ok("Auto"),
            other => Err(format!(
                "Dataplane offloadEngine {other:?} is not supported (None, XDP, TC or Auto)"
            )),
        },
    }
}

/// Whether `image` is one of STUNner's dataplane images (`l7mp/stunnerd`, on any registry, any
/// tag or digest, the premium build included).
fn is_stunner_image(image: &str) -> bool {
    let without_digest = image.split('@').next().unwrap_or(image);
    // The tag follows the last ':' after the last '/' (a registry may carry a port).
    let repository = match without_digest.rsplit_once('/') {
        Some((path, last)) => format!("{path}/{}", last.split(':').next().unwrap_or(last)),
        None => without_digest
            .split(':')
            .next()
            .unwrap_or(without_digest)
            .to_owned(),
    };
    let name = repository.rsplit('/').next().unwrap_or(&repository);
    repository.contains("l7mp/") && name.starts_with("stunnerd")
}

/// Whether `command` runs stunnerd (`stunnerd`, `/usr/local/bin/stunnerd`, …).
fn is_stunnerd(command: &[String]) -> bool {
    command
        .first()
        .is_some_and(|c| c.rsplit('/').next() == Some("stunnerd"))
}

/// The image, command and extra arguments of the agent container for `dataplane`, with
/// `default_image` (the operator's `--agent-image`) where the Dataplane names none or STUNner's.
pub fn agent_command(dataplane: &DataplaneSpec, default_image: &str) -> AgentCommand {
    let mut notes = Vec::new();
    let image = match dataplane.image.as_deref().filter(|i| !i.is_empty()) {
        None => default_image.to_owned(),
        Some(image) if is_stunner_image(image) => {
            notes.push(format!("image {image} (STUNner's) runs as {default_image}"));
            default_image.to_owned()
        }
        Some(image) => image.to_owned(),
    };
    let given = dataplane.command.clone().unwrap_or_default();
    let stunnerd = is_stunnerd(&given);
    let command = if given.is_empty() || stunnerd {
        if stunnerd {
            notes.push(format!(
                "command {} (STUNner's) runs as {AGENT_COMMAND}",
                given.join(" ")
            ));
        }
        vec![AGENT_COMMAND.to_owned()]
    } else {
        given
    };
    let args = dataplane.args.clone().unwrap_or_default();
    // STUNner's arguments are translated when STUNner's program or image was asked for.
    let extra_args = if stunnerd || (dataplane.command.is_none() && image_was_stunners(dataplane)) {
        translate_stunnerd_args(&args, &mut notes)
    } else {
        args
    };
    AgentCommand {
        image,
        command,
        extra_args,
        notes,
    }
}

fn image_was_stunners(dataplane: &DataplaneSpec) -> bool {
    dataplane.image.as_deref().is_some_and(is_stunner_image)
}

/// stunnerd's flags, as xturnd's. `-w`/`--watch` (xturnd always watches its ConfigMap),
/// `-c`/`--config` and `--id` (the operator's `--config-map` says where the configuration is)
/// `-d`/`--dry-run` and `--force-ready-status` are dropped; `--udp-thread-num N` becomes
/// `--threads N` (0, "no multithreading", becomes 1); `-l`/`--log LEVEL` becomes
/// `--log-level LEVEL`, `-v`/`--verbose` `--log-level all:DEBUG`; `--log-format text|json` is
/// xturnd's own. Anything else stunnerd would not know either is
/// dropped and reported, rather than passed on to make the agent refuse to start.
pub fn translate_stunnerd_args(args: &[String], notes: &mut Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if arg.starts_with('-') => (flag, Some(value.to_owned())),
            _ => (arg, None),
        };
        // A flag's value: after '=', else the next argument.
        let mut value = || -> Option<String> {
            if inline.is_some() {
                return inline.clone();
            }
            i += 1;
            args.get(i).cloned()
        };
        match flag {
            "-w" | "--watch" => {
                // A boolean flag: `--watch=false` is the only form with a value.
                notes.push(format!(
                    "{arg}: dropped (xturnd always watches its ConfigMap)"
                ));
            }
            "-c" | "--config" | "-i" | "--id" => {
                let v = value().unwrap_or_default();
                notes.push(format!(
                    "{flag} {v}: dropped (the operator points xturnd at its ConfigMap)"
                ));
            }
            "-d" | "--dry-run" | "--force-ready-status" => {
                notes.push(format!("{arg}: dropped"));
            }
            "--log-format" => {
                let v = value().unwrap_or_default();
                if v == "text" || v == "json" {
                    out.push("--log-format".to_owned());
                    out.push(v);
                } else {
                    notes.push(format!("--log-format {v:?}: dropped (not text or json)"));
                }
            }
            "-u" | "--udp-thread-num" => {
                let v = value().unwrap_or_default();
                match v.parse::<u32>() {
                    Ok(n) => {
                        out.push("--threads".to_owned());
                        out.push(n.max(1).to_string());
                        notes.push(format!("--udp-thread-num {v}: --threads {}", n.max(1)));
                    }
                    Err(_) => notes.push(format!(
                        "--udp-thread-num {v:?}: dropped (not a number of threads)"
                    )),
                }
            }
            "-l" | "--log" => {
                let v = value().unwrap_or_default();
                out.push("--log-level".to_owned());
                out.push(v.clone());
                notes.push(format!("{flag} {v}: --log-level {v}"));
            }
            "-v" | "--verbose" => {
                out.push("--log-level".to_owned());
                out.push("all:DEBUG".to_owned());
                notes.push(format!("{arg}: --log-level all:DEBUG"));
            }
            _ => notes.push(format!("{arg}: dropped (not a stunnerd flag xturnd knows)")),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn stunners_image_and_command_run_xturnd_with_translated_flags() {
        let dataplane = DataplaneSpec {
            image: Some("docker.io/l7mp/stunnerd:0.21.0".into()),
            command: Some(strings(&["stunnerd"])),
            args: Some(strings(&[
                "-w",
                "--udp-thread-num=16",
                "-l",
                "all:INFO",
                "--log-format=text",
            ])),
            ..DataplaneSpec::default()
        };
        let agent = agent_command(&dataplane, "registry.test/xturnd:1");
        assert_eq!(agent.image, "registry.test/xturnd:1");
        assert_eq!(agent.command, ["xturnd"]);
        assert_eq!(
            agent.extra_args,
            [
                "--threads",
                "16",
                "--log-level",
                "all:INFO",
                "--log-format",
                "text"
            ]
        );
        assert_eq!(agent.notes.len(), 5, "{:?}", agent.notes);
    }

    #[test]
    fn our_own_dataplanes_are_taken_as_written() {
        let dataplane = DataplaneSpec {
            image: Some("registry.test/xturnd:2".into()),
            args: Some(strings(&["--threads", "2", "--max-allocations", "100"])),
            ..DataplaneSpec::default()
        };
        let agent = agent_command(&dataplane, "registry.test/xturnd:1");
        assert_eq!(agent.image, "registry.test/xturnd:2");
        assert_eq!(agent.command, ["xturnd"]);
        assert_eq!(
            agent.extra_args,
            ["--threads", "2", "--max-allocations", "100"]
        );
        assert!(agent.notes.is_empty());
        // No image at all: the operator's.
        let agent = agent_command(&DataplaneSpec::default(), "registry.test/xturnd:1");
        assert_eq!(agent.image, "registry.test/xturnd:1");
        assert!(agent.extra_args.is_empty());
    }

    #[test]
    fn stunner_images_are_recognised_on_any_registry_and_tag() {
        for image in [
            "l7mp/stunnerd",
            "l7mp/stunnerd:latest",
            "docker.io/l7mp/stunnerd:0.21.0",
            "ghcr.io/l7mp/stunnerd@sha256:0123",
            "registry.example:5000/l7mp/stunnerd:dev",
            "l7mp/stunnerd-premium:1.0",
        ] {
            assert!(is_stunner_image(image), "{image}");
        }
        for image in ["xturn/xturnd", "example.com/stunnerd:1", "l7mp/net-debug"] {
            assert!(!is_stunner_image(image), "{image}");
        }
    }

    #[test]
    fn stunnerd_flags_in_every_spelling() {
        let mut notes = Vec::new();
        let out = translate_stunnerd_args(
            &strings(&[
                "--watch",
                "-c",
                "/etc/stunnerd/stunnerd.conf",
                "--id=x",
                "--udp-thread-num",
                "0",
                "-v",
                "--unknown",
                "-d",
            ]),
            &mut notes,
        );
        assert_eq!(out, ["--threads", "1", "--log-level", "all:DEBUG"]);
        assert_eq!(notes.len(), 7, "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("--unknown: dropped")));
    }
}
