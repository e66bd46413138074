//! One configuration schema: every agent configuration the operator renders (the ConfigMap's
//! `stunnerd.conf`) reads back through `stunner-config` as exactly what was written, and the
//! agent's configuration resolver accepts it unchanged. Variants of the seed cover each
//! authentication type, each data-plane mode, routed and unrouted listeners and UDP/TCP
//! listeners.
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use relay_user::config::{Transport, XturndArgs, resolve_text};
use serde_json::Value;
use xturn_operator::inputs::Inputs;
use xturn_operator::offline::render_all;
use xturn_operator::render::Settings;
use xturn_tests::pod_files::PodFiles;

const POD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The seed manifests and the media-server fixture, each text passed through `edit`.
fn inputs(edit: &dyn Fn(&str, String) -> Option<String>) -> Inputs {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/examples/stunner-seed"))
        .expect("seed dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files.push(root().join("tests/fixtures/operator/media-server.yaml"));
    let mut inputs = Inputs::default();
    let mut skipped = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).expect("read");
        if let Some(text) = edit(&name, text) {
            inputs
                .add_yaml(&text, &name, &mut skipped)
                .expect("manifests parse");
        }
    }
    inputs
}

/// The `stunnerd.conf` of every ConfigMap rendered from `inputs`, with the files of its
/// relay's pod (the mounted credentials).
fn rendered_configs(inputs: &Inputs) -> Vec<(String, PodFiles)> {
    let settings = Settings::new(
        "registry.test/xturnd:1",
        "2026-12-04T00:00:00Z".parse().expect("time"),
    );
    let offline = render_all(inputs, &settings, Some("198.18.0.1")).expect("renders");
    let secrets: Vec<Value> = offline
        .objects
        .iter()
        .filter(|o| o["kind"] == "Secret")
        .cloned()
        .collect();
    offline
        .objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .map(|o| {
            let name = &o["metadata"]["name"];
            let workload = offline
                .objects
                .iter()
                .find(|w| {
                    ["Deployment", "DaemonSet"].contains(&w["kind"].as_str().unwrap_or_default())
                        && w["metadata"]["name"] == *name
                })
                .expect("the ConfigMap's workload");
            let files = PodFiles::of(&workload["spec"]["template"]["spec"], &secrets);
            let text = o["data"][stunner_config::CONFIG_KEY]
                .as_str()
                .expect("stunnerd.conf")
                .to_owned();
            (text, files)
        })
        .collect()
}

/// Reads `text` as the agent does, with `$STUNNER_ADDR` set as the pod's downward API sets it
/// and the pod's mounted `files`.
fn agent_reads(text: &str, files: &PodFiles) -> relay_user::config::Config {
    let file = stunner_config::parse(text).expect("the schema reads what the operator wrote");
    assert_eq!(
        stunner_config::to_json(&file).expect("serialises"),
        text,
        "read back and written again, the configuration is unchanged"
    );
    let env = |name: &str| (name == "STUNNER_ADDR").then(|| POD_ADDR.to_string());
    let config = resolve_text(&XturndArgs::default(), text, "rendered", &env, &|path| {
        files.read(path)
    })
    .unwrap_or_else(|e| panic!("the agent refused a rendered configuration: {e}\n{text}"));
    // Every credential comes from the mounted Secret; no password or secret is in the
    // ConfigMap (a user name is no secret, and "stunner" is in it anyway).
    assert!(!config.credential_files.is_empty() || config.stun_only);
    for path in config
        .credential_files
        .iter()
        .filter(|p| !p.ends_with("username"))
    {
        let value = files.read(path).expect("mounted");
        assert!(
            !text.contains(value.trim_end()),
            "{} is in the ConfigMap",
            path.display()
        );
    }
    config
}

#[test]
fn every_rendered_configuration_is_accepted_unchanged() {
    type Edit = Box<dyn Fn(&str, String) -> Option<String>>;
    let variants: Vec<(&str, Edit, usize)> = vec![
        ("seed", Box::new(|_, t| Some(t)), 2),
        (
            "static auth",
            Box::new(|_, t| Some(t.replace("authType: longterm", "authType: static"))),
            2,
        ),
        (
            "userspace data plane",
            Box::new(|_, t| Some(t.replace("mode: auto", "mode: userspace"))),
            2,
        ),
        (
            "XDP data plane",
            Box::new(|_, t| Some(t.replace("mode: auto", "mode: xdp"))),
            2,
        ),
        (
            "TC data plane",
            Box::new(|_, t| Some(t.replace("mode: auto", "mode: tc"))),
            2,
        ),
        (
            "no routes",
            Box::new(|name, t| (!name.contains("udproute")).then_some(t)),
            2,
        ),
    ];
    for (what, edit, listeners) in variants {
        let configs = rendered_configs(&inputs(&*edit));
        assert_eq!(configs.len(), 1, "{what}: one Gateway, one ConfigMap");
        let config = agent_reads(&configs[0].0, &configs[0].1);
        assert_eq!(config.listeners.len(), listeners, "{what}");
        assert!(
            config
                .listeners
                .iter()
                .all(|l| l.addr.ip() == IpAddr::V4(POD_ADDR)),
            "{what}: {:?}",
            config.listeners
        );
        let transports: Vec<Transport> = config.listeners.iter().map(|l| l.transport).collect();
        assert_eq!(transports, [Transport::Udp, Transport::Tcp], "{what}");
        // Every listener the operator renders names its routes (empty: no peer at all).
        assert!(config.listeners.iter().all(|l| l.routed), "{what}");
    }
}
