//! The Kubernetes objects of a relay: metadata, labels, the workload, its Service and the
//! Secret of its TLS certificates. Names, labels and annotations are STUNner's next to ours, so
//! that STUNner's tooling (dashboards, `kubectl -l app=stunner`, PodMonitors on `metrics-port`)
//! finds our relays.
use std::collections::{BTreeMap, BTreeSet};

use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::{
    ByteString,
    api::core::v1::{Secret, Service},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{Resource, ResourceExt};
use serde_json::json;
use stunner_config::{HEALTH_PORT, METRICS_PORT, StunnerConfig as AgentConfig};

use crate::crd::DataplaneSpec;

use super::{dataplane::AgentCommand, *};

/// STUNner's labels and annotation keys.
pub const STUNNER_OWNED_BY: &str = "stunner.l7mp.io/owned-by";
pub const STUNNER_GATEWAY_NAME: &str = "stunner.l7mp.io/related-gateway-name";
pub const STUNNER_GATEWAY_NAMESPACE: &str = "stunner.l7mp.io/related-gateway-namespace";
/// The pod template annotation that changes whenever a setting the agent takes only at start
/// changes, so that the agents roll.
pub const CONFIG_HASH_ANNOTATION: &str = "xturn.io/config-hash";
/// The metrics port's name (STUNner's).
pub const METRICS_PORT_NAME: &str = "metrics-port";
/// The uid the agent runs as in userspace mode (no privileges).
pub const AGENT_UID: i64 = 65532;

/// The Gateway as the controlling owner; `None` for a Gateway read from a file (no uid), whose
/// objects are then rendered without owner references.
pub(super) fn owner_reference(gateway: &Gateway) -> Option<OwnerReference> {
    let mut owner = gateway.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

/// The labels of every object of a relay: ours and STUNner's.
pub(super) fn labels(gateway: &Gateway, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "xturn".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (GATEWAY_LABEL.to_owned(), gateway.name_any()),
        (STUNNER_OWNED_BY.to_owned(), "stunner".to_owned()),
        (STUNNER_GATEWAY_NAME.to_owned(), gateway.name_any()),
        (STUNNER_GATEWAY_NAMESPACE.to_owned(), namespace_of(gateway)),
    ])
}

/// The labels that select a relay's pods (a Deployment's selector cannot change, so these stay
/// as they were first written: ours only).
pub(super) fn selector(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| {
            [
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                GATEWAY_LABEL,
            ]
            .contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub(super) fn metadata(
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    owner: Option<&OwnerReference>,
    annotations: Option<&BTreeMap<String, String>>,
) -> serde_json::Value {
    let mut meta = json!({
        "name": name,
        "namespace": namespace,
        "labels": labels,
    });
    if let Some(owner) = owner {
        meta["ownerReferences"] = json!([owner]);
    }
    if let Some(annotations) = annotations.filter(|a| !a.is_empty()) {
        meta["annotations"] = json!(annotations);
    }
    meta
}

/// `over` merged into `base`: objects key by key (recursively), anything else replaced.
fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(base), serde_json::Value::Object(over)) => {
            for (key, value) in over {
                merge(base.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (base, over) => *base = over,
    }
}

/// The SHA-256 of what the agent takes only at start (hex).
pub(super) fn config_hash(config: &AgentConfig) -> Result<String, serde_json::Error> {
    let text = serde_json::to_string(&config.start_settings())?;
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// What the workload is made of, besides the Dataplane.
pub(super) struct WorkloadParts<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub gateway: &'a Gateway,
    pub labels: &'a BTreeMap<String, String>,
    pub owner: Option<&'a OwnerReference>,
    pub dataplane: &'a DataplaneSpec,
    pub kind: &'a str,
    /// The agent config's `offload_engine`: `None` runs without privileges.
    pub mode: &'a str,
    pub config: &'a AgentConfig,
    pub agent: &'a AgentCommand,
    /// The Secret of the TLS listeners' certificates, if any.
    pub certificates: Option<&'a str>,
    /// The Secret of the agent's credentials, if any.
    pub credentials: Option<&'a str>,
}

pub(super) fn workload(parts: &WorkloadParts<'_>) -> Result<Workload, serde_json::Error> {
    let WorkloadParts {
        name,
        namespace,
        gateway,
        labels,
        owner,
        dataplane,
        kind,
        mode,
        config,
        agent,
        certificates,
        credentials,
    } = *parts;
    let gateway_name = gateway.name_any();
    // The Dataplane's labels and annotations first: the ones tooling relies on win.
    let mut pod_labels = dataplane.labels.clone().unwrap_or_default();
    pod_labels.extend(selector(labels));
    pod_labels.insert("app".to_owned(), "stunner".to_owned());
    pod_labels.insert(STUNNER_GATEWAY_NAME.to_owned(), gateway_name.clone());
    pod_labels.insert(STUNNER_GATEWAY_NAMESPACE.to_owned(), namespace.to_owned());
    let mut pod_annotations = dataplane.annotations.clone().unwrap_or_default();
    pod_annotations.extend([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), METRICS_PORT.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
        (
            STUNNER_GATEWAY_NAME.to_owned(),
            format!("{namespace}/{gateway_name}"),
        ),
        (CONFIG_HASH_ANNOTATION.to_owned(), config_hash(config)?),
    ]);
    let host_network = dataplane.host_network.unwrap_or(false);
    let kernel = mode != "None";
    let low_port = config
        .listeners
        .iter()
        .any(|l| l.port.is_some_and(|p| p < 1024));
    let grace = dataplane
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_SECS);
    let mut ports: Vec<serde_json::Value> = config
        .listeners
        .iter()
        .map(|l| {
            let tcp = l.protocol.as_deref().is_some_and(is_tcp);
            json!({"containerPort": l.port, "protocol": if tcp { "TCP" } else { "UDP" }})
        })
        .collect();
    ports
        .push(json!({"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"}));
    ports.push(json!({"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}));
    let mut volumes = vec![json!({"name": "state", "emptyDir": {}})];
    let mut mounts = vec![json!({"name": "state", "mountPath": STATE_DIR})];
    let mut args = vec![
        "--config-map".to_owned(),
        format!("{namespace}/{name}"),
        "--state-dir".to_owned(),
        STATE_DIR.to_owned(),
        "--drain-timeout".to_owned(),
        grace.saturating_sub(5).max(0).to_string(),
    ];
    if kernel {
        volumes.push(
            json!({"name": "bpffs", "hostPath": {"path": "/sys/fs/bpf", "type": "Directory"}}),
        );
        mounts.push(json!({"name": "bpffs", "mountPath": "/sys/fs/bpf"}));
        args.extend([
            "--bpf-pin-dir".to_owned(),
            "/sys/fs/bpf/xturn/$(POD_UID)".to_owned(),
        ]);
    }
    if let Some(secret) = certificates {
        volumes.push(json!({"name": "certificates", "secret": {"secretName": secret}}));
        mounts.push(json!({"name": "certificates", "mountPath": TLS_MOUNT_ROOT, "readOnly": true}));
    }
    // The kubelet rewrites the files when the Secret changes; the agent notices within a
    // second and takes the new credentials without a restart.
    if let Some(secret) = credentials {
        volumes.push(json!({"name": "auth", "secret": {"secretName": secret}}));
        mounts.push(json!({"name": "auth", "mountPath": AUTH_MOUNT_ROOT, "readOnly": true}));
    }
    args.extend(agent.extra_args.iter().cloned());
    let mut env = vec![
        json!({"name": "STUNNER_ADDR", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": "STUNNER_NAME", "value": gateway_name}),
        json!({"name": "STUNNER_NAMESPACE", "value": namespace}),
        json!({"name": "STUNNER_NODENAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}),
        json!({"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}),
    ];
    for extra in dataplane.env.iter().flatten() {
        env.push(serde_json::to_value(extra)?);
    }
    // Userspace mode needs no privilege at all (Pod Security "restricted"); the kernel modes
    // need only what loading and attaching the programs takes.
    let mut capabilities = Vec::new();
    if kernel {
        capabilities.extend(["NET_ADMIN", "BPF", "PERFMON"]);
    }
    // A port below 1024 without root: the pod's own unprivileged port floor is lowered (a
    // namespaced, "safe" sysctl) — not possible in the host's network namespace, where the
    // capability is needed instead.
    let unprivileged_low_ports = low_port && !kernel && !host_network;
    let as_root = kernel || (low_port && host_network);
    if low_port && as_root {
        capabilities.push("NET_BIND_SERVICE");
    }
    let mut container_security = json!({
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
    });
    if !capabilities.is_empty() {
        container_security["capabilities"]["add"] = json!(capabilities);
    }
    let mut pod_security = if as_root {
        json!({"runAsUser": 0, "runAsNonRoot": false})
    } else {
        json!({
            "runAsNonRoot": true,
            "runAsUser": AGENT_UID,
            "runAsGroup": AGENT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    };
    if unprivileged_low_ports {
        pod_security["sysctls"] =
            json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]);
    }
    if let Some(extra) = &dataplane.container_security_context {
        merge(&mut container_security, serde_json::to_value(extra)?);
    }
    if let Some(extra) = &dataplane.security_context {
        merge(&mut pod_security, serde_json::to_value(extra)?);
    }
    let probe = |path: &str, period: i32| json!({"httpGet": {"path": path, "port": HEALTH_PORT}, "periodSeconds": period, "failureThreshold": 3});
    let mut container = json!({
        "name": "xturnd",
        "image": agent.image,
        "command": agent.command,
        "args": args,
        "env": env,
        "ports": ports,
        "securityContext": container_security,
        "volumeMounts": mounts,
    });
    if !dataplane.disable_health_check.unwrap_or(false) {
        container["livenessProbe"] = probe("/live", 10);
        container["readinessProbe"] = probe("/ready", 5);
    }
    if let Some(env_from) = dataplane.env_from.as_ref().filter(|e| !e.is_empty()) {
        container["envFrom"] = serde_json::to_value(env_from)?;
    }
    if let Some(policy) = &dataplane.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    if let Some(resources) = &dataplane.resources {
        container["resources"] = serde_json::to_value(resources)?;
    }
    let mut pod_spec = json!({
        "serviceAccountName": name,
        "terminationGracePeriodSeconds": grace,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    });
    if host_network {
        pod_spec["hostNetwork"] = json!(true);
        pod_spec["dnsPolicy"] = json!("ClusterFirstWithHostNet");
    }
    if let Some(secrets) = dataplane
        .image_pull_secrets
        .as_ref()
        .filter(|s| !s.is_empty())
    {
        pod_spec["imagePullSecrets"] = serde_json::to_value(secrets)?;
    }
    if let Some(affinity) = &dataplane.affinity {
        pod_spec["affinity"] = serde_json::to_value(affinity)?;
    }
    if let Some(tolerations) = dataplane.tolerations.as_ref().filter(|t| !t.is_empty()) {
        pod_spec["tolerations"] = serde_json::to_value(tolerations)?;
    }
    if let Some(spread) = dataplane
        .topology_spread_constraints
        .as_ref()
        .filter(|t| !t.is_empty())
    {
        pod_spec["topologySpreadConstraints"] = serde_json::to_value(spread)?;
    }
    let template = json!({
        "metadata": {"labels": pod_labels, "annotations": pod_annotations},
        "spec": pod_spec,
    });
    let meta = metadata(name, namespace, labels, owner, None);
    if kind == "DaemonSet" {
        return Ok(Workload::DaemonSet(serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": meta,
            "spec": {"selector": {"matchLabels": selector(labels)}, "template": template},
        }))?));
    }
    let mut spec = json!({
        "selector": {"matchLabels": selector(labels)},
        "template": template,
        // A new agent is ready before an old one drains: no relay gap during a rollout.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
    });
    // STUNner's rule: unset or 1 is not enforced, so an autoscaler (HPA, KEDA) owns the count.
    if let Some(replicas) = dataplane.replicas.filter(|r| *r != 1) {
        spec["replicas"] = json!(replicas);
    }
    Ok(Workload::Deployment(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta,
        "spec": spec,
    }))?))
}

/// A Service port name: the listener's name when it is a DNS label (as STUNner names them),
/// else a lowercase form of it, else `listener-N`; unique.
pub(super) fn port_name(listener: &str, index: usize, used: &mut BTreeSet<String>) -> String {
    let short = listener.rsplit('/').next().unwrap_or(listener);
    let mut name: String = short
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(63);
    let name = name.trim_matches('-').to_owned();
    let valid = !name.is_empty() && name.chars().any(|c| c.is_ascii_alphabetic());
    let name = if valid && !used.contains(&name) {
        name
    } else {
        format!("listener-{index}")
    };
    used.insert(name.clone());
    name
}

/// The Service settings STUNner reads from the GatewayConfig's `loadBalancerServiceAnnotations`
/// and the Gateway's annotations (the Gateway's win).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    /// `stunner.l7mp.io/service-type`: `LoadBalancer` (default), `NodePort` or `ClusterIP`.
    pub service_type: String,
    /// `stunner.l7mp.io/enable-mixed-protocol-lb: "true"`: UDP and TCP listeners on one
    /// LoadBalancer; else only the first listener's protocol.
    pub mixed_protocols: bool,
    /// `stunner.l7mp.io/external-traffic-policy: local`.
    pub external_traffic_local: bool,
    /// `stunner.l7mp.io/disable-session-affinity: "true"`.
    pub no_session_affinity: bool,
    /// `stunner.l7mp.io/nodeport: {"LISTENER": PORT, ...}`.
    pub node_ports: BTreeMap<String, i32>,
    /// `stunner.l7mp.io/targetport: {"LISTENER": PORT, ...}`: the port the agent listens on
    /// and the Service targets.
    pub target_ports: BTreeMap<String, i32>,
    /// A cloud load balancer's health check (`service.beta.kubernetes.io/*health*port` and
    /// `*health*protocol` TCP or HTTP), exposed as the port `gateway-health-check`, unless
    /// `stunner.l7mp.io/disable-health-check-expose: "true"`.
    pub health_check_port: Option<i32>,
    /// Annotation values that could not be used, one sentence each.
    pub notes: Vec<String>,
}

impl ServiceOptions {
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> ServiceOptions {
        let mut notes = Vec::new();
        let get = |key: &str| annotations.get(&format!("stunner.l7mp.io/{key}"));
        let is_true = |key: &str| get(key).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let service_type = match get("service-type").map(String::as_str) {
            None => "LoadBalancer".to_owned(),
            Some(t @ ("LoadBalancer" | "NodePort" | "ClusterIP")) => t.to_owned(),
            Some(other) => {
                notes.push(format!(
                    "stunner.l7mp.io/service-type {other:?} is not LoadBalancer, NodePort or \
                     ClusterIP: LoadBalancer"
                ));
                "LoadBalancer".to_owned()
            }
        };
        let mut port_map = |key: &str| -> BTreeMap<String, i32> {
            let Some(text) = get(key) else {
                return BTreeMap::new();
            };
            // STUNner also takes the map without its braces.
            let parsed = serde_json::from_str::<BTreeMap<String, i32>>(text)
                .or_else(|_| serde_json::from_str(&format!("{{{text}}}")));
            match parsed {
                Ok(map) => map,
                Err(e) => {
                    notes.push(format!(
                        "stunner.l7mp.io/{key} is not a JSON map of listener names to ports ({e}): ignored"
                    ));
                    BTreeMap::new()
                }
            }
        };
        let node_ports = port_map("nodeport");
        let target_ports = port_map("targetport");
        let health = |suffix: &str| {
            annotations
                .iter()
                .filter(|(k, _)| {
                    k.strip_prefix("service.beta.kubernetes.io/")
                        .is_some_and(|rest| rest.contains("health") && rest.ends_with(suffix))
                })
                .map(|(_, v)| v.as_str())
                .next()
        };
        let health_check_port = if is_true("disable-health-check-expose") {
            None
        } else {
            match (health("port"), health("protocol")) {
                (Some(port), Some(protocol))
                    if ["tcp", "http"].contains(&protocol.to_ascii_lowercase().as_str()) =>
                {
                    port.parse().ok()
                }
                _ => None,
            }
        };
        ServiceOptions {
            mixed_protocols: is_true("enable-mixed-protocol-lb"),
            external_traffic_local: get("external-traffic-policy")
                .is_some_and(|v| v.eq_ignore_ascii_case("local")),
            no_session_affinity: is_true("disable-session-affinity"),
            service_type,
            node_ports,
            target_ports,
            health_check_port,
            notes,
        }
    }
}

/// The annotations of a Gateway's Service: the GatewayConfig's `loadBalancerServiceAnnotations`,
/// then the Gateway's own (which win), then STUNner's related-gateway annotation.
pub(super) fn service_annotations(
    gateway: &Gateway,
    gwconfig: &GatewayConfig,
) -> BTreeMap<String, String> {
    let mut annotations = gwconfig
        .spec
        .load_balancer_service_annotations
        .clone()
        .unwrap_or_default();
    annotations.extend(gateway.annotations().clone());
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    annotations.insert(
        STUNNER_GATEWAY_NAME.to_owned(),
        format!("{}/{}", namespace_of(gateway), gateway.name_any()),
    );
    annotations
}

#[allow(clippy::too_many_arguments)]
pub(super) fn service(
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    owner: Option<&OwnerReference>,
    gateway: &Gateway,
    annotations: &BTreeMap<String, String>,
    options: &ServiceOptions,
    config: &AgentConfig,
    notes: &mut Vec<String>,
    exposed: &mut BTreeSet<String>,
) -> Result<Service, serde_json::Error> {
    let mut used = BTreeSet::new();
    let load_balancer = options.service_type == "LoadBalancer";
    // One protocol per LoadBalancer (many cloud load balancers take one), unless mixed.
    let first_tcp = config
        .listeners
        .first()
        .map(|l| l.protocol.as_deref().is_some_and(is_tcp));
    let mut ports = Vec::new();
    for (index, l) in config.listeners.iter().enumerate() {
        let full = l.name.as_deref().unwrap_or_default();
        let short = full.rsplit('/').next().unwrap_or(full);
        let tcp = l.protocol.as_deref().is_some_and(is_tcp);
        if load_balancer && !options.mixed_protocols && Some(tcp) != first_tcp {
            notes.push(format!(
                "listener {short}: left out of the LoadBalancer Service, which carries the first \
                 listener's protocol only (set stunner.l7mp.io/enable-mixed-protocol-lb: \"true\")"
            ));
            continue;
        }
        // The Gateway's port; the agent's differs when a target port is set.
        let port = gateway
            .spec
            .listeners
            .iter()
            .find(|g| g.name == short)
            .map_or(l.port.unwrap_or_default(), |g| i64::from(g.port));
        let mut entry = json!({
            "name": port_name(full, index, &mut used),
            "port": port,
            "targetPort": l.port,
            "protocol": if tcp { "TCP" } else { "UDP" },
        });
        if options.service_type != "ClusterIP"
            && let Some(node_port) = options.node_ports.get(short)
        {
            entry["nodePort"] = json!(node_port);
        }
        ports.push(entry);
        exposed.insert(short.to_owned());
    }
    if load_balancer && let Some(port) = options.health_check_port {
        ports.push(json!({"name": "gateway-health-check", "port": port, "targetPort": HEALTH_PORT, "protocol": "TCP"}));
    }
    let mut spec = json!({
        "type": options.service_type,
        "selector": selector(labels),
        "ports": ports,
    });
    // One client, one agent: a TURN allocation lives in one agent.
    spec["sessionAffinity"] = json!(if options.no_session_affinity {
        "None"
    } else {
        "ClientIP"
    });
    if options.external_traffic_local && options.service_type != "ClusterIP" {
        spec["externalTrafficPolicy"] = json!("Local");
    }
    if load_balancer
        && let Some(ip) = gateway
            .spec
            .addresses
            .iter()
            .flatten()
            .filter(|a| a.r#type.as_deref().unwrap_or("IPAddress") == "IPAddress")
            .find_map(|a| a.value.clone())
    {
        spec["loadBalancerIP"] = json!(ip);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(name, namespace, labels, owner, Some(annotations)),
        "spec": spec,
    }))
}

/// The TLS listeners' certificates and keys as a Secret's data (`LISTENER.crt`,
/// `LISTENER.key`), mounted at [`TLS_MOUNT_ROOT`]. Copied from the listeners'
/// `certificateRefs`, so that Secrets of other namespaces (with a ReferenceGrant) and STUNner's
/// key names (`tls.crt`, `crt`, `cert`; `tls.key`, `key`) all work; the operator rewrites it when
/// the source changes, and the agent reloads the files.
pub(super) fn certificates_data(
    certificates: &BTreeMap<String, (String, String)>,
) -> BTreeMap<String, Vec<u8>> {
    certificates
        .iter()
        .flat_map(|(listener, (cert, key))| {
            [
                (format!("{listener}.crt"), cert.as_bytes().to_vec()),
                (format!("{listener}.key"), key.as_bytes().to_vec()),
            ]
        })
        .collect()
}

/// An Opaque Secret of the relay's, holding `data`: its certificates, or its credentials.
pub(super) fn opaque_secret(
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    owner: Option<&OwnerReference>,
    data: BTreeMap<String, Vec<u8>>,
) -> Result<Secret, serde_json::Error> {
    let mut secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": metadata(name, namespace, labels, owner, None),
        "type": "Opaque",
    }))?;
    secret.data = Some(
        data.into_iter()
            .map(|(key, value)| (key, ByteString(value)))
            .collect(),
    );
    Ok(secret)
}
