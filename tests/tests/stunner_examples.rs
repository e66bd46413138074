//! STUNner's manifests, unchanged, give xturnd relays. `tests/fixtures/stunner-examples` holds
//! our own manifests in the shapes of STUNner's documented examples (each listener protocol,
//! static and ephemeral/longterm authentication, Service and StaticService backends,
//! cross-namespace routes, STUNner's annotations, its default Dataplane and GatewayClass). Each
//! renders with the operator's default settings to relays that run `xturnd`, with arguments
//! `xturnd` takes and a configuration the agent accepts; every rendered object and our deploy
//! manifests pass Kubernetes' own OpenAPI schemas (kubernetes-validate, strict).
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use clap::Parser as _;
use relay_user::config::{XturndArgs, resolve_text};
use serde_json::{Value, json};
use xturn_operator::{
    ice::{IceAuth, IceQuery, ice_config, turn_credentials},
    inputs::Inputs,
    offline::render_all,
    render::{Outcome, Rendered, Settings, Workload, render_gateway},
};
use xturn_tests::pod_files::PodFiles;

const AGENT_IMAGE: &str = "registry.test/xturnd:1";
const POD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/stunner-examples")
}

/// Every example but the base, by file name.
fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("00-base.yaml"))
        .collect();
    files.sort();
    files
}

fn settings() -> Settings {
    Settings::new(AGENT_IMAGE, "2026-12-04T00:00:00Z".parse().expect("time"))
}

fn inputs_of(example: &Path) -> Inputs {
    let (inputs, skipped) =
        Inputs::from_files(&[examples_dir().join("00-base.yaml"), example.to_path_buf()])
            .expect("the manifests parse");
    assert!(skipped.is_empty(), "{skipped:?}");
    inputs
}

/// Every Gateway of `inputs`, rendered; a Gateway that is not rendered fails the test.
fn rendered(inputs: &Inputs, example: &str) -> BTreeMap<String, Rendered> {
    inputs
        .gateways
        .iter()
        .map(|gateway| {
            let name = gateway.metadata.name.clone().expect("name");
            match render_gateway(inputs, &settings(), gateway) {
                Outcome::Rendered(rendered) => (name, *rendered),
                other => panic!("{example}: Gateway {name} gave no relay: {other:?}"),
            }
        })
        .collect()
}

fn pod_spec(rendered: &Rendered) -> Value {
    let workload = match &rendered.workload {
        Workload::Deployment(d) => serde_json::to_value(d),
        Workload::DaemonSet(d) => serde_json::to_value(d),
    }
    .expect("serialises");
    workload["spec"]["template"]["spec"].clone()
}

/// What `rendered`'s pod reads at `path`: a file of one of its Secret volumes.
fn mounted(rendered: &Rendered, path: &Path) -> std::io::Result<String> {
    let secrets: Vec<Value> = [&rendered.certificates, &rendered.credentials]
        .into_iter()
        .flatten()
        .map(|s| serde_json::to_value(s).expect("serialises"))
        .collect();
    PodFiles::of(&pod_spec(rendered), &secrets).read(path)
}

/// The agent as its pod would start it: the container's command line parsed by xturnd's own
/// argument parser, the ConfigMap's text read with the pod's environment.
fn agent_starts(example: &str, rendered: &Rendered) -> relay_user::config::Config {
    let pod = pod_spec(rendered);
    let container = &pod["containers"][0];
    assert_eq!(container["image"], AGENT_IMAGE, "{example}");
    assert_eq!(container["command"], json!(["xturnd"]), "{example}");
    let mut argv = vec!["xturnd".to_owned()];
    argv.extend(
        container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("string").to_owned()),
    );
    let args = XturndArgs::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{example}: xturnd refuses its arguments {argv:?}: {e}"));
    let text = rendered
        .config_map
        .data
        .as_ref()
        .and_then(|d| d.get(stunner_config::CONFIG_KEY))
        .expect("stunnerd.conf");
    let env = |name: &str| match name {
        "STUNNER_ADDR" => Some(POD_ADDR.to_string()),
        _ => None,
    };
    resolve_text(&args, text, example, &env, &|path| mounted(rendered, path))
        .unwrap_or_else(|e| panic!("{example}: the agent refuses its configuration: {e}\n{text}"))
}

fn condition<'a>(rendered: &'a Rendered, kind: &str) -> Option<&'a str> {
    rendered
        .status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind)
        .map(|c| c.message.as_str())
}

#[test]
fn every_example_renders_relays_that_run_xturnd() {
    let mut checked = 0;
    for example in examples() {
        let name = example.file_name().expect("name").to_string_lossy();
        let name = name.as_ref();
        let inputs = inputs_of(&example);
        let relays = rendered(&inputs, name);
        assert!(!relays.is_empty(), "{name}: no Gateway");
        for (gateway, relay) in &relays {
            let config = agent_starts(name, relay);
            assert!(!config.listeners.is_empty(), "{name}/{gateway}");
            // STUNner's Dataplane ran stunnerd: we say what became of it.
            let translated = condition(relay, "xturn.io/Translated").unwrap_or_default();
            assert!(
                translated.contains("image docker.io/l7mp/stunnerd:1.2.0 (STUNner's) runs as"),
                "{name}/{gateway}: {translated}"
            );
            assert!(
                translated.contains("--udp-thread-num 16: --threads 16"),
                "{name}/{gateway}: {translated}"
            );
            // STUNner's labels, for its tooling.
            let pod = pod_spec(relay);
            assert_eq!(
                pod["containers"][0]["ports"]
                    .as_array()
                    .expect("ports")
                    .iter()
                    .filter(|p| p["name"] == "metrics-port")
                    .count(),
                1,
                "{name}"
            );
            checked += 1;
        }
        check_example(name, &inputs, &relays);
    }
    assert_eq!(checked, 13, "every Gateway of the twelve examples");
}

/// What each example is about.
fn check_example(name: &str, inputs: &Inputs, relays: &BTreeMap<String, Rendered>) {
    let service = |gateway: &str| {
        serde_json::to_value(&relays[gateway].service).expect("service")["spec"].clone()
    };
    let config = |gateway: &str| agent_starts(name, &relays[gateway]);
    match name {
        "01-simple-tunnel.yaml" => {
            assert_eq!(relays.len(), 2);
            let udp = config("udp-gateway");
            assert_eq!(udp.clusters.len(), 1, "{udp:?}");
            assert_eq!(service("tcp-gateway")["ports"][0]["protocol"], "TCP");
        }
        "02-livekit.yaml" | "03-janus.yaml" | "07-elixir-webrtc.yaml" => {
            // TURN REST credentials, as STUNner's credential service hands them out.
            let relay = &relays["udp-gateway"];
            let IceAuth::Rest { secret, .. } = &relay.ice.auth else {
                panic!("{name}: {:?}", relay.ice.auth);
            };
            let mut source = relay.ice.clone();
            source.addresses = vec!["198.18.0.1".into()];
            let query = IceQuery::from_pairs([
                ("service", "turn"),
                ("namespace", "stunner"),
                ("gateway", "udp-gateway"),
                ("username", "alice"),
            ])
            .expect("query");
            let answer = turn_credentials([&source], &query, 1_000).expect("credentials");
            assert!(answer.username.ends_with(":alice"), "{answer:?}");
            assert_eq!(
                answer.password,
                turn_proto::auth::rest_password(secret, &answer.username)
            );
            let ice = ice_config([&source], &query, 1_000).expect("ice");
            assert_eq!(ice.ice_transport_policy, "all");
            assert_eq!(ice.ice_servers[0].urls, answer.uris);
            assert_eq!(config("udp-gateway").auth_secrets.len(), 1);
            if name == "03-janus.yaml" {
                assert_eq!(
                    relay.config.clusters[0].endpoints,
                    Some(vec!["198.18.50.0/24".into(), "2001:db8:50::/64".into()])
                );
            }
        }
        "04-jitsi.yaml" => {
            let ports = service("jitsi-gateway")["ports"].clone();
            assert_eq!(ports.as_array().expect("ports").len(), 2, "{ports}");
            assert_eq!(relays["jitsi-gateway"].ice.listeners.len(), 2);
        }
        "05-mediasoup.yaml" | "06-kurento.yaml" => {
            let relay = relays.values().next().expect("relay");
            let secret = relay.certificates.as_ref().expect("certificates copied");
            let data = secret.data.as_ref().expect("data");
            assert_eq!(data.len(), 2, "{:?}", data.keys());
            assert!(data.values().all(|v| v.0.starts_with(b"-----BEGIN")));
            // Without the ReferenceGrant the Secret in cert-manager is not used.
            if name == "05-mediasoup.yaml" {
                let mut ungranted = inputs.clone();
                ungranted.reference_grants.clear();
                let gateway = ungranted.gateways[0].clone();
                assert!(matches!(
                    render_gateway(&ungranted, &settings(), &gateway),
                    Outcome::Refused(_)
                ));
            }
        }
        "08-neko.yaml" => {
            let svc = service("udp-gateway");
            assert_eq!(svc["type"], "NodePort");
            assert_eq!(svc["ports"][0]["nodePort"], 30478);
            let relay = &relays["udp-gateway"];
            assert_eq!(relay.ice.addresses, ["198.18.60.5"]);
            assert_eq!(relay.ice.listeners[0].2, 30478);
        }
        "09-cloudretro.yaml" => {
            let svc = service("udp-gateway");
            assert_eq!(svc["externalTrafficPolicy"], "Local");
            assert_eq!(svc["sessionAffinity"], "None");
            // The Gateway API route, its backend's port dropped as STUNner drops it.
            let relay = &relays["udp-gateway"];
            assert_eq!(
                relay.config.clusters[0].endpoints,
                Some(vec!["10.96.80.1".into()])
            );
        }
        "10-direct-one2one-call.yaml" => {
            let relay = &relays["udp-gateway"];
            assert_eq!(
                relay.config.clusters[0].endpoints,
                Some(vec!["0.0.0.0/0:10000-20000".into()])
            );
            // Without the namespace's label, the selector does not admit the route.
            let mut unlabelled = inputs.clone();
            unlabelled
                .namespaces
                .retain(|n| n.metadata.name.as_deref() != Some("one2one"));
            let gateway = unlabelled.gateways[0].clone();
            let Outcome::Rendered(alone) = render_gateway(&unlabelled, &settings(), &gateway)
            else {
                panic!("not rendered");
            };
            assert!(alone.config.clusters.is_empty());
        }
        "11-benchmark.yaml" => {
            let svc = service("udp-gateway");
            assert_eq!(svc["ports"][0]["port"], 3478);
            assert_eq!(svc["ports"][0]["targetPort"], 3479);
            assert_eq!(
                svc["ports"][1],
                json!({"name": "gateway-health-check", "port": 8086, "targetPort": 8086, "protocol": "TCP"})
            );
            assert_eq!(
                config("udp-gateway").listeners[0].addr.port(),
                3479,
                "the agent listens on the target port"
            );
        }
        "12-stun-only.yaml" => {
            let relay = &relays["stun-gateway"];
            assert_eq!(
                relay.config.auth.as_ref().and_then(|a| a.kind.as_deref()),
                Some("none")
            );
            // Pod Security "restricted": no privilege, no host path.
            let pod = pod_spec(relay);
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            let container = &pod["containers"][0];
            assert!(
                container["securityContext"]["capabilities"]
                    .get("add")
                    .is_none()
            );
            assert!(!pod.to_string().contains("hostPath"));
            assert_eq!(relay.config.admin.offload_engine.as_deref(), Some("None"));
        }
        other => panic!("an example without checks: {other}"),
    }
}

/// What Pod Security Standards' "restricted" profile (Kubernetes 1.30+) refuses in `pod` (a
/// pod spec), one line each; empty: admitted.
fn restricted_violations(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[host] == true {
            out.push(host.to_owned());
        }
    }
    const VOLUMES: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        let kinds: Vec<&String> = volume
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
            .filter(|k| *k != "name")
            .collect();
        if !kinds.iter().all(|k| VOLUMES.contains(&k.as_str())) {
            out.push(format!("volume {volume}"));
        }
    }
    const SAFE_SYSCTLS: [&str; 5] = [
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
    ];
    let pod_security = &pod["securityContext"];
    for sysctl in pod_security["sysctls"].as_array().into_iter().flatten() {
        if !SAFE_SYSCTLS.contains(&sysctl["name"].as_str().unwrap_or_default()) {
            out.push(format!("sysctl {sysctl}"));
        }
    }
    for container in pod["containers"].as_array().into_iter().flatten() {
        let security = &container["securityContext"];
        let either = |field: &str| {
            if security[field].is_null() {
                pod_security[field].clone()
            } else {
                security[field].clone()
            }
        };
        if security["privileged"] == true {
            out.push("privileged".to_owned());
        }
        if security["allowPrivilegeEscalation"] != false {
            out.push("allowPrivilegeEscalation not false".to_owned());
        }
        if either("runAsNonRoot") != true {
            out.push("runAsNonRoot not true".to_owned());
        }
        if either("runAsUser") == 0 {
            out.push("runAsUser 0".to_owned());
        }
        let seccomp = either("seccompProfile")["type"].clone();
        if seccomp != "RuntimeDefault" && seccomp != "Localhost" {
            out.push(format!("seccompProfile {seccomp}"));
        }
        let capabilities = &security["capabilities"];
        if !capabilities["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c == "ALL"))
        {
            out.push("capabilities not dropping ALL".to_owned());
        }
        for added in capabilities["add"].as_array().into_iter().flatten() {
            if added != "NET_BIND_SERVICE" {
                out.push(format!("capability {added}"));
            }
        }
        for port in container["ports"].as_array().into_iter().flatten() {
            if !port["hostPort"].is_null() && port["hostPort"] != 0 {
                out.push(format!("hostPort {port}"));
            }
        }
    }
    out
}

/// Userspace agents run under Pod Security "restricted", in every example; the kernel path
/// needs exactly the privileges it names (capabilities, the host's bpffs, root).
#[test]
fn userspace_agents_are_restricted_and_kernel_agents_ask_only_for_the_kernel_path() {
    for example in examples() {
        let name = example
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let mut inputs = inputs_of(&example);
        for (gateway, relay) in rendered(&inputs, &name) {
            let pod = pod_spec(&relay);
            if relay.config.admin.offload_engine.as_deref() == Some("None") {
                assert_eq!(restricted_violations(&pod), Vec::<String>::new(), "{name}");
                continue;
            }
            let mut violations = restricted_violations(&pod);
            violations.sort();
            assert_eq!(
                violations,
                [
                    "capability \"BPF\"",
                    "capability \"NET_ADMIN\"",
                    "capability \"PERFMON\"",
                    "runAsNonRoot not true",
                    "runAsUser 0",
                    "seccompProfile null",
                    "volume {\"hostPath\":{\"path\":\"/sys/fs/bpf\",\"type\":\"Directory\"},\"name\":\"bpffs\"}",
                ],
                "{name}/{gateway}"
            );
        }
        // The same manifests with STUNner's userspace engine: restricted everywhere.
        let userspace = std::sync::Arc::make_mut(&mut inputs.dataplanes[0]);
        userspace.spec.offload_engine = Some("None".into());
        for (gateway, relay) in rendered(&inputs, &name) {
            let pod = pod_spec(&relay);
            assert_eq!(
                restricted_violations(&pod),
                Vec::<String>::new(),
                "{name}/{gateway}"
            );
        }
    }
}

/// `kubernetes-validate --strict` over `files`: Kubernetes' own OpenAPI schemas, unknown fields
/// refused. (Installed by `cargo xtask setup`.)
fn kubernetes_validate(files: &[PathBuf]) {
    let output = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .args(files)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kubernetes-validate (run `cargo xtask setup` if it is missing):\n{stdout}\n{stderr}"
    );
}

/// tests/scripts/validate_custom_resources.py: `files`' custom resources against
/// deploy/crds.yaml's schemas. The number checked, or the script's report.
fn validate_custom_resources(root: &Path, files: &[PathBuf]) -> Result<usize, String> {
    let output = Command::new("python3")
        .arg(root.join("tests/scripts/validate_custom_resources.py"))
        .arg(root.join("deploy/crds.yaml"))
        .args(files)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("checked ")?.split(' ').next()?.parse().ok())
        .ok_or(stdout)
}

#[test]
fn rendered_objects_and_deploy_manifests_pass_kubernetes_schemas() {
    let dir = std::env::temp_dir().join(format!("xturn-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut files = Vec::new();
    for example in examples() {
        let inputs = inputs_of(&example);
        let out = render_all(&inputs, &settings(), Some("198.18.0.1")).expect("renders");
        let yaml = xturn_operator::offline::to_yaml(&out.objects).expect("yaml");
        let file = dir.join(example.file_name().expect("name"));
        std::fs::write(&file, yaml).expect("write");
        files.push(file);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .to_path_buf();
    files.push(root.join("deploy/install.yaml"));
    files.push(root.join("deploy/crds.yaml"));
    // The seed as shipped and as rendered.
    let seed: Vec<PathBuf> = std::fs::read_dir(root.join("deploy/examples/stunner-seed"))
        .expect("seed")
        .map(|e| e.expect("entry").path())
        .collect();
    let (seed_inputs, _) = Inputs::from_files(&seed).expect("seed parses");
    let out = render_all(&seed_inputs, &settings(), None).expect("renders");
    let rendered_seed = dir.join("seed-rendered.yaml");
    std::fs::write(
        &rendered_seed,
        xturn_operator::offline::to_yaml(&out.objects).expect("yaml"),
    )
    .expect("write");
    files.push(rendered_seed);
    files.extend(seed.iter().cloned());
    kubernetes_validate(&files);
    // Our custom resources (the examples, the seed) against our CRDs' schemas, strictly.
    let mut custom = examples();
    custom.push(examples_dir().join("00-base.yaml"));
    custom.extend(seed);
    let checked = validate_custom_resources(&root, &custom).expect("custom resources valid");
    assert_eq!(
        checked, 21,
        "every GatewayConfig, UDPRoute, StaticService, Dataplane"
    );
    let typo = dir.join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: stunner.l7mp.io/v1\nkind: GatewayConfig\nmetadata: {name: x}\n\
         spec: {realms: x}\n",
    )
    .expect("write");
    let refused = validate_custom_resources(&root, &[typo]).expect_err("a misspelt field");
    assert!(refused.contains("realms"), "{refused}");
    // The validator refuses what Kubernetes would (so the pass above means something).
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 1, protocoll: UDP}]}\n",
    )
    .expect("write");
    let refused = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(&bad)
        .output()
        .expect("runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !refused.status.success(),
        "a misspelt field must fail validation"
    );
    assert!(String::from_utf8_lossy(&refused.stdout).contains("protocoll"));
}
