//! The operator end to end, without a cluster (none is available here): the seed's manifests
//! (deploy/examples/stunner-seed) plus a Service/EndpointSlice fixture go through
//! `xturn-operator render`; the rendered agent configuration (the ConfigMap's `stunnerd.conf`)
//! runs `xturnd` in network namespaces, exactly as the Deployment would (`$STUNNER_ADDR` set to
//! the pod address); `xturn-operator auth-service` serves the credential service for the same
//! manifests. Credentials it mints authenticate over UDP and TCP (the seed's two listeners), a
//! peer inside the UDPRoute's backend is reachable, a peer outside it gets 403. Needs root.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use xturn_tests::{
    clients::{PEER_PORT, log_path, start_echo_peers, uclient, xturnctl_ping},
    pod_files::PodFiles,
    topology::{LISTENER_V4, PEER_V4, RELAY_V4, Topology, binary},
};

/// The seed's shared secret (deploy/examples/stunner-seed/00-gatewayclass.yaml).
const SEED_SECRET: &str = "change-me-to-a-long-random-secret";

fn manifests() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let seed = root.join("deploy/examples/stunner-seed");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&seed)
        .expect("seed directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "the seed example: {files:?}");
    files.push(root.join("tests/fixtures/operator/media-server.yaml"));
    files
}

/// `xturn-operator render -f FILES`: the agent configuration in the rendered ConfigMap, and
/// the files its pod would have mounted (the credentials Secret).
fn rendered_agent_config(files: &[PathBuf]) -> (String, PodFiles) {
    let mut cmd = Command::new(binary("xturn-operator"));
    cmd.arg("render");
    for f in files {
        cmd.arg("-f").arg(f);
    }
    let out = cmd.output().expect("run xturn-operator render");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "render failed: {stderr}");
    // The report names the route as resolved: its backend Service exists now.
    assert!(
        stderr.contains("UDPRoute stunner/media-route → Gateway stunner-gateway: Accepted=True (Accepted), ResolvedRefs=True"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let config_map = stdout
        .split("\n---\n")
        .map(|doc| doc.trim_start_matches("---\n"))
        .find(|doc| doc.contains("kind: ConfigMap"))
        .unwrap_or_else(|| panic!("no ConfigMap rendered:\n{stdout}"));
    // The one data key, `stunnerd.conf: |-` followed by the indented JSON.
    let body: String = config_map
        .lines()
        .skip_while(|l| !l.contains("stunnerd.conf:"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    let parsed: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(parsed["auth"]["type"], "ephemeral");
    // The shared secret is not in the ConfigMap: the agent reads it from its mounted Secret.
    assert_eq!(
        parsed["auth"]["credentials"],
        serde_json::json!({"secret_file": "/etc/xturn/auth/secret"})
    );
    assert!(!stdout.contains(SEED_SECRET) && !config_map.contains(SEED_SECRET));
    let objects: Vec<serde_json::Value> = stdout
        .split("\n---\n")
        .map(|doc| serde_norway::from_str(doc.trim_start_matches("---\n")).expect("YAML"))
        .collect();
    let pod = &objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment")["spec"]["template"]["spec"];
    let secrets: Vec<serde_json::Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Secret")
        .cloned()
        .collect();
    let mounted = PodFiles::of(pod, &secrets);
    assert_eq!(
        mounted
            .read(std::path::Path::new("/etc/xturn/auth/secret"))
            .expect("mounted"),
        SEED_SECRET
    );
    assert_eq!(
        parsed["clusters"][0]["endpoints"],
        serde_json::json!(["10.96.0.10", "198.18.2.2"])
    );
    (body, mounted)
}

fn http_get(topology: &Topology, addr: SocketAddr, path: &str) -> (u16, String) {
    topology.client.within(|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("connect {addr}: {e}"),
            }
        };
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: auth\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
}

#[test]
fn seed_manifests_render_to_a_working_relay_with_minted_credentials() {
    let files = manifests();
    let (config, mounted) = rendered_agent_config(&files);
    let dir = std::env::temp_dir().join(format!("xturn-operator-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let config_path = dir.join("stunnerd.conf");
    // The pod's Secret volume, under the scratch directory: the configuration's paths too.
    mounted.write_under(&dir).expect("write the mounted files");
    let config = config.replace("\"/etc/xturn/", &format!("\"{}/etc/xturn/", dir.display()));
    std::fs::write(&config_path, &config).expect("write config");

    let topology = Topology::new();
    let _peers = start_echo_peers(&topology);
    // xturnd as the rendered Deployment runs it: the config from the operator, the pod address
    // in $STUNNER_ADDR. The relayed addresses are on the peer-side interface of this topology.
    let xturnd = binary("xturnd").display().to_string();
    let config_arg = config_path.display().to_string();
    let mut relay = topology.relay.spawn_logged(
        "env",
        &[
            &format!("STUNNER_ADDR={LISTENER_V4}"),
            &xturnd,
            "--config",
            &config_arg,
            "--relay-ip",
            RELAY_V4,
            "--dataplane",
            "userspace",
            "--min-port",
            "50000",
            "--max-port",
            "50999",
        ],
        &log_path("operator-e2e-xturnd"),
    );
    assert!(
        topology.wait_for_stun(Topology::listener(false), Duration::from_secs(10)),
        "xturnd did not start from the rendered config: {:?}\n{}",
        relay.child().try_wait(),
        std::fs::read_to_string(log_path("operator-e2e-xturnd")).unwrap_or_default()
    );

    // The credential service for the same manifests, at the Gateway's address.
    let auth_addr: SocketAddr = format!("{LISTENER_V4}:8088").parse().expect("address");
    let operator = binary("xturn-operator").display().to_string();
    let mut args = vec!["auth-service".to_owned()];
    for f in &files {
        args.push("-f".to_owned());
        args.push(f.display().to_string());
    }
    args.extend([
        "--listen".to_owned(),
        auth_addr.to_string(),
        "--public-address".to_owned(),
        LISTENER_V4.to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _auth = topology
        .relay
        .spawn_logged(&operator, &args, &log_path("operator-e2e-auth"));

    let (status, body) = http_get(&topology, auth_addr, "/ice?service=turn&username=e2e-user");
    assert_eq!(status, 200, "{body}");
    let ice: serde_json::Value = serde_json::from_str(&body).expect("ICE JSON");
    // STUNner's default.
    assert_eq!(ice["iceTransportPolicy"], "all");
    let server = &ice["iceServers"][0];
    let urls: Vec<&str> = server["urls"]
        .as_array()
        .expect("urls")
        .iter()
        .filter_map(|u| u.as_str())
        .collect();
    // The seed's LoadBalancer carries its first listener's protocol only (STUNner's rule, no
    // mixed-protocol annotation): the TCP listener is not handed out. The agent serves it all
    // the same, as used below over the pod's own address.
    assert_eq!(urls, [format!("turn:{LISTENER_V4}:3478?transport=udp")]);
    let username = server["username"].as_str().expect("username").to_owned();
    let credential = server["credential"]
        .as_str()
        .expect("credential")
        .to_owned();
    assert!(username.ends_with(":e2e-user"), "{username}");
    let (status, _) = http_get(&topology, auth_addr, "/ice?service=stun");
    assert_eq!(status, 400);

    // The minted credentials work over both listeners, to the peer inside the backend.
    for transport in [&[][..], &["-t"][..]] {
        let mut args: Vec<&str> = transport.to_vec();
        args.extend([
            "-u",
            &username,
            "-w",
            &credential,
            "-e",
            PEER_V4,
            "-r",
            PEER_PORT,
            "-n",
            "50",
            "-m",
            "2",
            "-l",
            "120",
            "-z",
            "5",
        ]);
        let r = uclient(&topology, &args, LISTENER_V4);
        assert_eq!((r.sent, r.received, r.lost), (100, 100, 0), "{transport:?}");
    }
    // A peer outside the UDPRoute's backend (the not-ready endpoint, and a stranger) gets 403.
    let server = format!("{LISTENER_V4}:3478");
    for outside in ["198.18.2.9:3480", "198.18.2.3:3480"] {
        let (ok, text) = xturnctl_ping(
            &topology,
            &server,
            &[
                "--user",
                &username,
                "--password",
                &credential,
                "--peer",
                outside,
                "--count",
                "3",
                "--mode",
                "channel",
            ],
        );
        assert!(!ok, "{outside} must be refused: {text}");
        assert!(text.contains("403"), "{outside} → 403: {text}");
    }
    // A credential from someone else's secret does not authenticate.
    let peer = format!("{PEER_V4}:{PEER_PORT}");
    let (_, text) = xturnctl_ping(
        &topology,
        &server,
        &[
            "--secret",
            "not-the-secret",
            "--peer",
            &peer,
            "--count",
            "3",
        ],
    );
    assert!(text.contains("401"), "wrong secret → 401: {text}");
    assert!(
        relay.child().try_wait().expect("query xturnd").is_none(),
        "xturnd exited"
    );
    std::fs::remove_dir_all(&dir).ok();
}
