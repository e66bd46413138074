//! The Kubernetes objects of a relay: metadata, labels, the workload and its Service.
use std::collections::{BTreeMap, BTreeSet};

use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::{api::core::v1::Service, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{Resource, ResourceExt};
use serde_json::json;
use stunner_config::{HEALTH_PORT, METRICS_PORT, StunnerConfig as AgentConfig};

use crate::crd::{DataplaneSpec, GatewayConfig};

use super::*;

/// The Gateway as the controlling owner; `None` for a Gateway read from a file (no uid), whose
/// objects are then rendered without owner references.
pub(super) fn owner_reference(gateway: &Gateway) -> Option<OwnerReference> {
    let mut owner = gateway.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

pub(super) fn labels(gateway: &Gateway, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "xturn".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (GATEWAY_LABEL.to_owned(), gateway.name_any()),
    ])
}

pub(super) fn selector(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| k.as_str() != "app.kubernetes.io/managed-by")
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

#[allow(clippy::too_many_arguments)]
pub(super) fn workload(
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    owner: Option<&OwnerReference>,
    dataplane: &DataplaneSpec,
    kind: &str,
    config: &AgentConfig,
    tls_secrets: &BTreeSet<String>,
    settings: &Settings,
) -> Result<Workload, serde_json::Error> {
    let mut pod_labels = selector(labels);
    pod_labels.extend(dataplane.labels.clone().unwrap_or_default());
    let mut pod_annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), METRICS_PORT.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ]);
    pod_annotations.extend(dataplane.annotations.clone().unwrap_or_default());
    let host_network = dataplane.host_network.unwrap_or(false);
    let grace = dataplane
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_SECS);
    let mut ports: Vec<serde_json::Value> = config
        .listeners
        .iter()
        .map(|l| {
            let tcp = matches!(l.protocol.as_deref(), Some("TURN-TCP" | "TURN-TLS"));
            json!({"containerPort": l.port, "protocol": if tcp { "TCP" } else { "UDP" }})
        })
        .collect();
    ports.push(json!({"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}));
    ports.push(json!({"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}));
    let mut volumes = vec![
        json!({"name": "bpffs", "hostPath": {"path": "/sys/fs/bpf", "type": "Directory"}}),
        json!({"name": "state", "emptyDir": {}}),
    ];
    let mut mounts = vec![
        json!({"name": "bpffs", "mountPath": "/sys/fs/bpf"}),
        json!({"name": "state", "mountPath": STATE_DIR}),
    ];
    for secret in tls_secrets {
        let volume = format!("tls-{secret}");
        volumes.push(json!({"name": volume, "secret": {"secretName": secret}}));
        mounts.push(json!({"name": volume, "mountPath": format!("{TLS_MOUNT_ROOT}/{secret}"), "readOnly": true}));
    }
    let probe = |path: &str, period: i32| json!({"httpGet": {"path": path, "port": HEALTH_PORT}, "periodSeconds": period, "failureThreshold": 3});
    let mut container = json!({
        "name": "xturnd",
        "image": dataplane.image.clone().unwrap_or_else(|| settings.agent_image.clone()),
        "command": ["xturnd"],
        "args": [
            "--config-map", format!("{namespace}/{name}"),
            "--state-dir", STATE_DIR,
            "--bpf-pin-dir", "/sys/fs/bpf/xturn/$(POD_UID)",
            "--drain-timeout", grace.saturating_sub(5).max(0).to_string(),
        ],
        "env": [
            {"name": "STUNNER_ADDR", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        ],
        "ports": ports,
        "livenessProbe": probe("/live", 10),
        "readinessProbe": probe("/ready", 5),
        "securityContext": {
            "capabilities": {
                "drop": ["ALL"],
                "add": ["NET_ADMIN", "NET_RAW", "BPF", "PERFMON", "SYS_RESOURCE", "NET_BIND_SERVICE"],
            },
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
        },
        "volumeMounts": mounts,
    });
    if let Some(policy) = &dataplane.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    if let Some(resources) = &dataplane.resources {
        container["resources"] = serde_json::to_value(resources)?;
    }
    let mut pod_spec = json!({
        "serviceAccountName": name,
        "terminationGracePeriodSeconds": grace,
        "containers": [container],
        "volumes": volumes,
    });
    if host_network {
        pod_spec["hostNetwork"] = json!(true);
        pod_spec["dnsPolicy"] = json!("ClusterFirstWithHostNet");
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
    // Left out when unset, so an autoscaler (HPA, KEDA) owns the count.
    if let Some(replicas) = dataplane.replicas {
        spec["replicas"] = json!(replicas);
    }
    Ok(Workload::Deployment(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta,
        "spec": spec,
    }))?))
}

/// A Service port name: lowercase letters, digits and dashes, at most 15 characters, unique.
pub(super) fn port_name(listener: &str, index: usize, used: &mut BTreeSet<String>) -> String {
    let short = listener.rsplit('/').next().unwrap_or(listener);
    let mut name: String = short
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(15);
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

pub(super) fn service(
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    owner: Option<&OwnerReference>,
    gateway: &Gateway,
    gwconfig: &GatewayConfig,
    config: &AgentConfig,
) -> Result<Service, serde_json::Error> {
    let mut annotations = gwconfig
        .spec
        .load_balancer_service_annotations
        .clone()
        .unwrap_or_default();
    // Gateway annotations win over the GatewayConfig's, like STUNner's.
    annotations.extend(gateway.annotations().clone());
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    let mut used = BTreeSet::new();
    let ports: Vec<_> = config
        .listeners
        .iter()
        .enumerate()
        .map(|(index, l)| {
            let tcp = matches!(l.protocol.as_deref(), Some("TURN-TCP" | "TURN-TLS"));
            json!({
                "name": port_name(l.name.as_deref().unwrap_or_default(), index, &mut used),
                "port": l.port,
                "targetPort": l.port,
                "protocol": if tcp { "TCP" } else { "UDP" },
            })
        })
        .collect();
    let mut spec = json!({
        "type": "LoadBalancer",
        "selector": selector(labels),
        "ports": ports,
        // One client, one agent: a TURN allocation lives in one agent.
        "sessionAffinity": "ClientIP",
        "externalTrafficPolicy": "Local",
    });
    if let Some(ip) = gateway
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
        "metadata": metadata(name, namespace, labels, owner, Some(&annotations)),
        "spec": spec,
    }))
}
