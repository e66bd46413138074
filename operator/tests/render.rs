//! Rendering, without a cluster: the seed manifests (deploy/examples/stunner-seed) plus
//! fixtures, through `render_gateway` and `route_status`, with exact expected values.
#![allow(clippy::unwrap_used)] // test code: a panic is a failing test
mod common;

use common::*;
use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};
use stunner_config::StunnerConfig as AgentConfig;
use xturn_operator::{
    ice::{IceAuth, IceSource, Transport},
    inputs::{Inputs, RouteApi},
    offline,
    render::{
        Outcome, Refused, Rendered, Settings, Workload, referenced_secrets, render_gateway,
        route_status,
    },
};

fn render(inputs: &Inputs, settings: &Settings) -> Rendered {
    match render_gateway(inputs, settings, &the_gateway(inputs)) {
        Outcome::Rendered(rendered) => *rendered,
        Outcome::Refused(refused) => panic!("refused: {refused:?}"),
        Outcome::NotOurs => panic!("not ours"),
    }
}

fn refused(inputs: &Inputs) -> Refused {
    match render_gateway(inputs, &settings(), &the_gateway(inputs)) {
        Outcome::Refused(refused) => refused,
        Outcome::Rendered(rendered) => panic!("rendered: {:?}", rendered.config),
        Outcome::NotOurs => panic!("not ours"),
    }
}

/// The agent configuration as the agent reads it: the ConfigMap's `stunnerd.conf`, as JSON.
fn agent_config(rendered: &Rendered) -> Value {
    let data = rendered.config_map.data.as_ref().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["stunnerd.conf"]);
    let text = &data["stunnerd.conf"];
    let typed: AgentConfig = serde_json::from_str(text).unwrap();
    assert_eq!(typed, rendered.config);
    serde_json::from_str(text).unwrap()
}

/// The agent's credentials Secret (`NAME-auth`) as text, key by key.
fn agent_secret(rendered: &Rendered) -> std::collections::BTreeMap<String, String> {
    let secret = rendered.credentials.as_ref().expect("a credentials Secret");
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some(format!("{}-auth", rendered.name).as_str())
    );
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    secret
        .data
        .as_ref()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).unwrap()))
        .collect()
}

fn deployment(rendered: &Rendered) -> Value {
    match &rendered.workload {
        Workload::Deployment(d) => serde_json::to_value(d).unwrap(),
        Workload::DaemonSet(_) => panic!("a DaemonSet"),
    }
}

fn cluster_endpoints(rendered: &Rendered) -> Vec<Vec<String>> {
    rendered
        .config
        .clusters
        .iter()
        .map(|c| c.endpoints.clone().unwrap_or_default())
        .collect()
}

/// The route's parent conditions as `(type, status, reason, message)`.
fn route_conditions(inputs: &Inputs, settings: &Settings) -> Vec<(String, String, String, String)> {
    let gateway = the_gateway(inputs);
    let status = route_status(
        inputs,
        settings,
        &inputs.routes[0],
        RouteApi::Stunner,
        &[&gateway],
    );
    assert_eq!(status.parents.len(), 1);
    assert_eq!(status.parents[0].controller_name, CONTROLLER);
    fours(&status.parents[0].conditions)
}

/// Each listener's `attachedRoutes`.
fn attached_counts(rendered: &Rendered) -> Vec<i32> {
    let listeners = rendered.status.listeners.as_ref().unwrap();
    listeners.iter().map(|l| l.attached_routes).collect()
}

/// Conditions as `(type, status, reason, message)`.
fn fours(conditions: &[Condition]) -> Vec<(String, String, String, String)> {
    conditions
        .iter()
        .map(|c| four(&c.type_, &c.status, &c.reason, &c.message))
        .collect()
}

fn four(kind: &str, status: &str, reason: &str, message: &str) -> (String, String, String, String) {
    (kind.into(), status.into(), reason.into(), message.into())
}

/// Replaces the seed's UDPRoute by one with these backendRefs.
fn set_backends(inputs: &mut Inputs, backends: &Value) {
    inputs.routes.clear();
    let route = json!({
        "apiVersion": "stunner.l7mp.io/v1", "kind": "UDPRoute",
        "metadata": {"name": "media-route", "namespace": "stunner"},
        "spec": {"parentRefs": [{"name": "stunner-gateway"}], "rules": [{"backendRefs": backends}]},
    });
    add(inputs, &serde_json::to_string(&route).unwrap());
}

fn set_listeners(inputs: &mut Inputs, listeners: Value) {
    let mut gateway = the_gateway(inputs);
    gateway.spec.listeners = serde_json::from_value(listeners).unwrap();
    set_gateway(inputs, gateway);
}

#[test]
fn seed_renders_the_agent_config() {
    let inputs = seed();
    let rendered = render(&inputs, &settings());
    assert_eq!(rendered.name, "stunner");
    assert_eq!(rendered.namespace, "stunner");
    let config = agent_config(&rendered);
    assert_eq!(
        config["admin"],
        json!({
            "name": "stunner/stunner-gateway",
            "loglevel": "all:INFO",
            "metrics_endpoint": "http://:8080/metrics",
            "healthcheck_endpoint": "http://:8086",
            "offload_engine": "Auto",
        })
    );
    assert_eq!(
        config["auth"],
        json!({
            "type": "ephemeral",
            "realm": "stunner.<domain>",
            "credentials": {"secret_file": "/etc/xturn/auth/secret"},
        })
    );
    // The secret itself is in the agent's Secret, not in the ConfigMap.
    assert_eq!(
        agent_secret(&rendered),
        [("secret".to_owned(), SEED_SECRET.to_owned())].into()
    );
    assert!(
        !serde_json::to_string(&rendered.config_map)
            .unwrap()
            .contains(SEED_SECRET)
    );
    assert_eq!(
        config["listeners"],
        json!([
            {
                "name": "stunner/stunner-gateway/udp-listener",
                "protocol": "TURN-UDP",
                "address": "$STUNNER_ADDR",
                "port": 3478,
                "routes": ["stunner/media-route"],
            },
            {
                "name": "stunner/stunner-gateway/tcp-listener",
                "protocol": "TURN-TCP",
                "address": "$STUNNER_ADDR",
                "port": 3478,
                "routes": ["stunner/media-route"],
            },
        ])
    );
    // The ClusterIP and the ready endpoints; 10.244.3.9 is not ready.
    assert_eq!(
        config["clusters"],
        json!([{
            "name": "stunner/media-route",
            "type": "STATIC",
            "protocol": "UDP",
            "endpoints": ["10.96.0.10", "10.244.1.5", "10.244.2.7"],
        }])
    );
    assert_eq!(config.as_object().unwrap().len(), 5, "{config}");
    assert_eq!(config["version"], "v1");
}

#[test]
fn seed_renders_a_deployment_named_by_the_dataplane_without_replicas() {
    let inputs = seed();
    let rendered = render(&inputs, &settings());
    let d = deployment(&rendered);
    assert_eq!(d["metadata"]["name"], "stunner");
    assert_eq!(d["metadata"]["namespace"], "stunner");
    assert_eq!(
        d["metadata"]["labels"],
        json!({
            "app.kubernetes.io/name": "xturn",
            "app.kubernetes.io/instance": "stunner",
            "app.kubernetes.io/managed-by": "xturn-operator",
            "xturn.io/gateway": "stunner-gateway",
            // STUNner's, for its tooling.
            "stunner.l7mp.io/owned-by": "stunner",
            "stunner.l7mp.io/related-gateway-name": "stunner-gateway",
            "stunner.l7mp.io/related-gateway-namespace": "stunner",
        })
    );
    // A Gateway read from a file has no uid: no owner reference.
    assert!(d["metadata"].get("ownerReferences").is_none());
    let spec = &d["spec"];
    // KEDA owns the count.
    assert!(spec.get("replicas").is_none(), "{spec}");
    let selector = json!({
        "app.kubernetes.io/name": "xturn",
        "app.kubernetes.io/instance": "stunner",
        "xturn.io/gateway": "stunner-gateway",
    });
    assert_eq!(spec["selector"]["matchLabels"], selector);
    let mut pod_labels = selector;
    pod_labels["app"] = json!("stunner");
    pod_labels["stunner.l7mp.io/related-gateway-name"] = json!("stunner-gateway");
    pod_labels["stunner.l7mp.io/related-gateway-namespace"] = json!("stunner");
    assert_eq!(spec["template"]["metadata"]["labels"], pod_labels);
    let annotations = &spec["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["stunner.l7mp.io/related-gateway-name"],
        "stunner/stunner-gateway"
    );
    assert_eq!(annotations["prometheus.io/port"], "8080");
    assert_eq!(
        annotations["xturn.io/config-hash"].as_str().unwrap().len(),
        64
    );
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}})
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "stunner");
    assert_eq!(pod["terminationGracePeriodSeconds"], 3600);
    assert!(pod.get("hostNetwork").is_none());
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["name"], "xturnd");
    assert_eq!(c["image"], AGENT_IMAGE);
    assert_eq!(c["command"], json!(["xturnd"]));
    assert_eq!(
        c["args"],
        json!([
            "--config-map",
            "stunner/stunner",
            "--state-dir",
            "/var/lib/xturn",
            "--drain-timeout",
            "3595",
            "--bpf-pin-dir",
            "/sys/fs/bpf/xturn/$(POD_UID)",
        ])
    );
    assert_eq!(
        c["env"],
        json!([
            {"name": "STUNNER_ADDR", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "STUNNER_NAME", "value": "stunner-gateway"},
            {"name": "STUNNER_NAMESPACE", "value": "stunner"},
            {"name": "STUNNER_NODENAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        ])
    );
    // The kernel path (mode auto): only what loading and attaching the programs takes.
    assert_eq!(
        c["securityContext"],
        json!({
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "BPF", "PERFMON"]},
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
        })
    );
    assert_eq!(
        pod["securityContext"],
        json!({"runAsUser": 0, "runAsNonRoot": false})
    );
    assert_eq!(
        c["livenessProbe"],
        json!({"httpGet": {"path": "/live", "port": 8086}, "periodSeconds": 10, "failureThreshold": 3})
    );
    assert_eq!(
        c["readinessProbe"],
        json!({"httpGet": {"path": "/ready", "port": 8086}, "periodSeconds": 5, "failureThreshold": 3})
    );
    assert_eq!(
        c["ports"],
        json!([
            {"containerPort": 3478, "protocol": "UDP"},
            {"containerPort": 3478, "protocol": "TCP"},
            {"name": "metrics-port", "containerPort": 8080, "protocol": "TCP"},
            {"name": "health", "containerPort": 8086, "protocol": "TCP"},
        ])
    );
    // The Dataplane's resources.
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "500m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}})
    );
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "state", "emptyDir": {}},
            {"name": "bpffs", "hostPath": {"path": "/sys/fs/bpf", "type": "Directory"}},
            {"name": "auth", "secret": {"secretName": "stunner-auth"}},
        ])
    );
    assert_eq!(
        c["volumeMounts"],
        json!([
            {"name": "state", "mountPath": "/var/lib/xturn"},
            {"name": "bpffs", "mountPath": "/sys/fs/bpf"},
            {"name": "auth", "mountPath": "/etc/xturn/auth", "readOnly": true},
        ])
    );
}

#[test]
fn seed_renders_a_loadbalancer_service_and_rbac() {
    let inputs = seed();
    let rendered = render(&inputs, &settings());
    let service = serde_json::to_value(&rendered.service).unwrap();
    assert_eq!(service["metadata"]["name"], "stunner");
    assert_eq!(service["metadata"]["namespace"], "stunner");
    assert_eq!(
        service["metadata"]["annotations"],
        json!({"stunner.l7mp.io/related-gateway-name": "stunner/stunner-gateway"})
    );
    // STUNner's defaults: externalTrafficPolicy left to Kubernetes (Cluster), one protocol per
    // LoadBalancer (the first listener's), so the TCP listener is left out.
    assert_eq!(
        service["spec"],
        json!({
            "type": "LoadBalancer",
            "sessionAffinity": "ClientIP",
            "selector": {
                "app.kubernetes.io/name": "xturn",
                "app.kubernetes.io/instance": "stunner",
                "xturn.io/gateway": "stunner-gateway",
            },
            "ports": [
                {"name": "udp-listener", "port": 3478, "targetPort": 3478, "protocol": "UDP"},
            ],
        })
    );
    assert_eq!(rendered.notes.len(), 1, "{:?}", rendered.notes);
    assert!(rendered.notes[0].starts_with("listener tcp-listener: left out"));
    let role = serde_json::to_value(&rendered.role).unwrap();
    assert_eq!(
        role["rules"],
        json!([{
            "apiGroups": [""], "resources": ["configmaps"],
            "resourceNames": ["stunner"], "verbs": ["get", "list", "watch"],
        }])
    );
    let binding = serde_json::to_value(&rendered.role_binding).unwrap();
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "stunner"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "stunner", "namespace": "stunner"}])
    );
    for meta in [
        &rendered.config_map.metadata,
        &rendered.service_account.metadata,
        &rendered.role.metadata,
        &rendered.role_binding.metadata,
    ] {
        assert_eq!(meta.name.as_deref(), Some("stunner"));
        assert_eq!(meta.namespace.as_deref(), Some("stunner"));
        assert_eq!(
            meta.labels.as_ref().unwrap()["xturn.io/gateway"],
            "stunner-gateway"
        );
    }
}

#[test]
fn seed_renders_the_credential_service_entry_and_statuses() {
    let inputs = seed();
    let rendered = render(&inputs, &settings());
    assert_eq!(
        rendered.ice,
        IceSource {
            namespace: "stunner".into(),
            gateway: "stunner-gateway".into(),
            realm: "stunner.<domain>".into(),
            auth: IceAuth::Rest {
                secret: SEED_SECRET.into(),
                user_id: Some("stunner".into()),
                lifetime_secs: 86_400,
            },
            addresses: vec![],
            // The TCP listener is not on the (single-protocol) LoadBalancer.
            listeners: vec![("udp-listener".into(), Transport::Udp, 3478)],
        }
    );
    let status = &rendered.status;
    let conditions = status.conditions.as_ref().unwrap();
    assert_eq!(
        briefs(conditions),
        [
            ("Accepted", "True", "Accepted"),
            ("Programmed", "False", "AddressNotAssigned"),
            ("xturn.io/Translated", "True", "Translated"),
        ]
    );
    for c in conditions {
        assert_eq!(c.last_transition_time, Time(now()));
        assert_eq!(c.observed_generation, None);
    }
    assert_eq!(status.addresses, None);
    let listeners = status.listeners.as_ref().unwrap();
    assert_eq!(
        listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>(),
        ["udp-listener", "tcp-listener"]
    );
    for l in listeners {
        assert_eq!(l.attached_routes, 1);
        assert_eq!(
            briefs(&l.conditions),
            [
                ("Accepted", "True", "Accepted"),
                ("ResolvedRefs", "True", "ResolvedRefs"),
                ("Programmed", "True", "Programmed"),
            ]
        );
        let kinds = serde_json::to_value(&l.supported_kinds).unwrap();
        assert_eq!(
            kinds,
            json!([
                {"group": "stunner.l7mp.io", "kind": "UDPRoute"},
                {"group": "gateway.networking.k8s.io", "kind": "UDPRoute"},
            ])
        );
    }
    assert_eq!(
        route_conditions(&inputs, &settings()),
        [
            four("Accepted", "True", "Accepted", ""),
            four("ResolvedRefs", "True", "ResolvedRefs", ""),
        ]
    );
}

#[test]
fn seed_without_backend_fixtures_says_the_backend_is_missing() {
    let inputs = seed_with(&[]);
    let rendered = render(&inputs, &settings());
    assert_eq!(cluster_endpoints(&rendered), [Vec::<String>::new()]);
    assert_eq!(
        route_conditions(&inputs, &settings()),
        [
            four("Accepted", "True", "Accepted", ""),
            four(
                "ResolvedRefs",
                "False",
                "BackendNotFound",
                "Service apps/media-server not found"
            ),
        ]
    );
}

#[test]
fn a_loadbalancer_address_programs_the_gateway() {
    let inputs = seed_with(&["media-server.yaml", "stunner-service-lb.yaml"]);
    let rendered = render(&inputs, &settings());
    let status = serde_json::to_value(&rendered.status).unwrap();
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": "198.18.1.1"}])
    );
    assert_eq!(
        briefs(rendered.status.conditions.as_deref().unwrap()),
        [
            ("Accepted", "True", "Accepted"),
            ("Programmed", "True", "Programmed"),
            ("xturn.io/Translated", "True", "Translated"),
        ]
    );
    assert_eq!(rendered.ice.addresses, ["198.18.1.1"]);
}

#[test]
fn offline_render_of_the_seed_lists_objects_in_apply_order() {
    let inputs = seed();
    let out = offline::render_all(&inputs, &settings(), Some("203.0.113.1")).unwrap();
    let kinds: Vec<_> = out
        .objects
        .iter()
        .map(|o| {
            format!(
                "{} {}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["namespace"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap stunner/stunner",
            "ServiceAccount stunner/stunner",
            "Role stunner/stunner",
            "RoleBinding stunner/stunner",
            "Secret stunner/stunner-auth",
            "Deployment stunner/stunner",
            "Service stunner/stunner",
        ]
    );
    assert_eq!(out.ice.len(), 1);
    assert_eq!(out.ice[0].addresses, ["203.0.113.1"]);
    assert_eq!(
        out.report,
        [
            "Gateway stunner/stunner-gateway: Accepted=True (Accepted), Programmed=False \
             (AddressNotAssigned: waiting for the LoadBalancer Service's address), \
             xturn.io/Translated=True (Translated: listener tcp-listener: left out of the \
             LoadBalancer Service, which carries the first listener's protocol only (set \
             stunner.l7mp.io/enable-mixed-protocol-lb: \"true\"))",
            "UDPRoute stunner/media-route → Gateway stunner-gateway: Accepted=True (Accepted), \
             ResolvedRefs=True (ResolvedRefs)",
        ]
    );
    let yaml = offline::to_yaml(&out.objects).unwrap();
    assert_eq!(yaml.matches("---\n").count(), 7);
}

#[test]
fn no_routes_render_listeners_reaching_no_peer() {
    let mut inputs = seed();
    inputs.routes.clear();
    let rendered = render(&inputs, &settings());
    let config = agent_config(&rendered);
    for listener in config["listeners"].as_array().unwrap() {
        assert_eq!(listener["routes"], json!([]));
    }
    assert_eq!(config["clusters"], json!([]));
    for l in rendered.status.listeners.as_ref().unwrap() {
        assert_eq!(l.attached_routes, 0);
    }
}

#[test]
fn a_missing_secret_refuses_the_gateway() {
    let mut inputs = seed();
    inputs.secrets.clear();
    let refused = refused(&inputs);
    let message = "password: Secret stunner/stunner-credentials not found";
    assert_eq!(refused.reason, message);
    let conditions = refused.status.conditions.as_ref().unwrap();
    assert_eq!(
        conditions
            .iter()
            .map(|c| (
                c.type_.as_str(),
                c.status.as_str(),
                c.reason.as_str(),
                c.message.as_str()
            ))
            .collect::<Vec<_>>(),
        [
            ("Accepted", "False", "InvalidParameters", message),
            ("Programmed", "False", "Invalid", message),
        ]
    );
    assert_eq!(conditions[0].last_transition_time, Time(now()));
}

#[test]
fn a_secret_key_that_is_missing_refuses_the_gateway() {
    let mut inputs = seed();
    inputs.secrets.clear();
    add(
        &mut inputs,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: stunner-credentials, namespace: stunner}\n\
         data: {other: YQ==}\n",
    );
    assert_eq!(
        refused(&inputs).reason,
        "password: Secret stunner/stunner-credentials has no key \"password\""
    );
}

#[test]
fn a_daemonset_dataplane_renders_a_daemonset_without_replicas() {
    let mut inputs = seed();
    inputs.dataplanes.clear();
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: Dataplane\nmetadata: {name: default}\n\
         spec:\n  dataplaneResource: DaemonSet\n  replicas: 3\n  image: registry.test/custom:2\n\
         \x20 mode: xdp\n  xdpInterfaces: [eth1]\n  terminationGracePeriodSeconds: 60\n",
    );
    let rendered = render(&inputs, &settings());
    // No workloadName: the Gateway's name.
    assert_eq!(rendered.name, "stunner-gateway");
    let Workload::DaemonSet(ds) = &rendered.workload else {
        panic!("not a DaemonSet: {:?}", rendered.workload);
    };
    let ds = serde_json::to_value(ds).unwrap();
    assert_eq!(ds["kind"], "DaemonSet");
    assert_eq!(ds["metadata"]["name"], "stunner-gateway");
    assert!(!ds.to_string().contains("replicas"), "{ds}");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 60);
    assert_eq!(pod["containers"][0]["image"], "registry.test/custom:2");
    assert_eq!(
        pod["containers"][0]["args"],
        json!([
            "--config-map",
            "stunner/stunner-gateway",
            "--state-dir",
            "/var/lib/xturn",
            "--drain-timeout",
            "55",
            "--bpf-pin-dir",
            "/sys/fs/bpf/xturn/$(POD_UID)",
        ])
    );
    assert_eq!(rendered.config.admin.offload_engine.as_deref(), Some("XDP"));
    assert_eq!(
        rendered
            .config
            .admin
            .offload_interfaces
            .clone()
            .unwrap_or_default(),
        ["eth1"]
    );
    assert_eq!(
        rendered.service.metadata.name.as_deref(),
        Some("stunner-gateway")
    );
}

#[test]
fn dataplane_modes_reach_the_agents_offload_engine() {
    // STUNner's offloadEngine values and xturn's mode names, TC included; none: Auto.
    for (spec, engine) in [
        ("{}", "Auto"),
        ("{mode: tc}", "TC"),
        ("{mode: TC}", "TC"),
        ("{offloadEngine: TC}", "TC"),
        ("{offloadEngine: XDP}", "XDP"),
        ("{offloadEngine: None}", "None"),
        ("{mode: userspace, offloadEngine: TC}", "None"),
    ] {
        let mut inputs = seed();
        inputs.dataplanes.clear();
        add(
            &mut inputs,
            &format!(
                "apiVersion: stunner.l7mp.io/v1\nkind: Dataplane\nmetadata: {{name: default}}\nspec: {spec}\n"
            ),
        );
        let rendered = render(&inputs, &settings());
        assert_eq!(
            rendered.config.admin.offload_engine.as_deref(),
            Some(engine),
            "{spec}"
        );
    }
}

#[test]
fn host_network_agents_advertise_the_nodes_addresses() {
    let mut inputs = seed();
    inputs.dataplanes.clear();
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: Dataplane\nmetadata: {name: default}\n\
         spec: {dataplaneResource: DaemonSet, hostNetwork: true, workloadName: stunner}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nstatus:\n  addresses:\n\
         \x20   - {type: InternalIP, address: 10.0.0.1}\n    - {type: ExternalIP, address: 203.0.113.10}\n",
    );
    let rendered = render(&inputs, &settings());
    let Workload::DaemonSet(ds) = &rendered.workload else {
        panic!("not a DaemonSet");
    };
    let pod = serde_json::to_value(&ds.spec.as_ref().unwrap().template.spec).unwrap();
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(rendered.ice.addresses, ["203.0.113.10"]);
    let status = serde_json::to_value(&rendered.status).unwrap();
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": "203.0.113.10"}])
    );
}

#[test]
fn an_unknown_dataplane_resource_is_refused() {
    let mut inputs = seed();
    inputs.dataplanes.clear();
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: Dataplane\nmetadata: {name: default}\n\
         spec: {dataplaneResource: StatefulSet}\n",
    );
    assert_eq!(
        refused(&inputs).reason,
        "Dataplane default: dataplaneResource must be Deployment or DaemonSet, not \"StatefulSet\""
    );
}

#[test]
fn ipv6_endpoints_with_a_port_range_are_bracketed() {
    let mut inputs = seed();
    add(
        &mut inputs,
        "apiVersion: v1\nkind: Service\nmetadata: {name: media6, namespace: apps}\n\
         spec: {clusterIP: None, ipFamilies: [IPv6]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: media6-abcde, namespace: apps, labels: {kubernetes.io/service-name: media6}}\n\
         addressType: IPv6\nendpoints:\n  - addresses: [\"2001:db8::5\"]\n    conditions: {ready: true}\n",
    );
    set_backends(
        &mut inputs,
        &json!([{"name": "media6", "namespace": "apps", "port": 5000, "endPort": 5010}]),
    );
    let rendered = render(&inputs, &settings());
    assert_eq!(cluster_endpoints(&rendered), [["[2001:db8::5]:5000-5010"]]);
}

#[test]
fn a_single_port_follows_ipv4_endpoints() {
    let mut inputs = seed();
    set_backends(
        &mut inputs,
        &json!([{"name": "media-server", "namespace": "apps", "port": 5000}]),
    );
    let rendered = render(&inputs, &settings());
    assert_eq!(
        cluster_endpoints(&rendered),
        [["10.96.0.10:5000", "10.244.1.5:5000", "10.244.2.7:5000"]]
    );
}

#[test]
fn a_static_service_backend_renders_its_prefixes() {
    let mut inputs = seed();
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: StaticService\n\
         metadata: {name: media-peers, namespace: stunner}\n\
         spec:\n  prefixes: [192.0.2.0/24, \"2001:db8:1::/48\", 198.51.100.7]\n",
    );
    set_backends(
        &mut inputs,
        &json!([
            {"group": "stunner.l7mp.io", "kind": "StaticService", "name": "media-peers"},
            {"name": "media-server", "namespace": "apps"},
        ]),
    );
    let rendered = render(&inputs, &settings());
    assert_eq!(
        cluster_endpoints(&rendered),
        [[
            "192.0.2.0/24",
            "2001:db8:1::/48",
            "198.51.100.7",
            "10.96.0.10",
            "10.244.1.5",
            "10.244.2.7",
        ]]
    );
    set_backends(
        &mut inputs,
        &json!([{"group": "stunner.l7mp.io", "kind": "StaticService", "name": "media-peers", "port": 9000}]),
    );
    let rendered = render(&inputs, &settings());
    assert_eq!(
        cluster_endpoints(&rendered),
        [[
            "192.0.2.0/24:9000",
            "[2001:db8:1::/48]:9000",
            "198.51.100.7:9000"
        ]]
    );
    assert_eq!(
        route_conditions(&inputs, &settings())[1],
        four("ResolvedRefs", "True", "ResolvedRefs", "")
    );
}

#[test]
fn a_bad_static_prefix_is_left_out_and_reported() {
    let mut inputs = seed();
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: StaticService\n\
         metadata: {name: media-peers, namespace: stunner}\nspec: {prefixes: [192.0.2.1, not-an-ip]}\n",
    );
    set_backends(
        &mut inputs,
        &json!([{"group": "stunner.l7mp.io", "kind": "StaticService", "name": "media-peers"}]),
    );
    assert_eq!(
        cluster_endpoints(&render(&inputs, &settings())),
        [["192.0.2.1"]]
    );
    assert_eq!(
        route_conditions(&inputs, &settings())[1],
        four(
            "ResolvedRefs",
            "False",
            "UnsupportedValue",
            "StaticService stunner/media-peers: \"not-an-ip\" is not an IP prefix"
        )
    );
}

#[test]
fn an_unknown_backend_kind_is_an_invalid_kind() {
    let mut inputs = seed();
    set_backends(
        &mut inputs,
        &json!([
            {"group": "example.com", "kind": "Peer", "name": "elsewhere"},
            {"name": "media-server", "namespace": "apps"},
        ]),
    );
    let rendered = render(&inputs, &settings());
    // The other backend still counts.
    assert_eq!(
        cluster_endpoints(&rendered),
        [["10.96.0.10", "10.244.1.5", "10.244.2.7"]]
    );
    assert_eq!(
        route_conditions(&inputs, &settings()),
        [
            four("Accepted", "True", "Accepted", ""),
            four(
                "ResolvedRefs",
                "False",
                "InvalidKind",
                "backend elsewhere: kind example.com/Peer is not a Service or a stunner.l7mp.io/StaticService"
            ),
        ]
    );
}

#[test]
fn an_unsupported_listener_protocol_is_not_accepted() {
    let mut inputs = seed();
    set_listeners(
        &mut inputs,
        json!([
            {"name": "udp-listener", "port": 3478, "protocol": "TURN-UDP"},
            {"name": "web", "port": 80, "protocol": "HTTP"},
        ]),
    );
    let rendered = render(&inputs, &settings());
    assert_eq!(
        rendered
            .config
            .listeners
            .iter()
            .map(|l| l.name.as_deref().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["stunner/stunner-gateway/udp-listener"]
    );
    let conditions = rendered.status.conditions.as_ref().unwrap();
    assert_eq!(
        brief(&conditions[0]),
        ("Accepted", "True", "ListenersNotValid")
    );
    assert_eq!(
        conditions[0].message,
        "some listeners are not valid; see status.listeners"
    );
    let web = &rendered.status.listeners.as_ref().unwrap()[1];
    assert_eq!(web.name, "web");
    assert_eq!(
        briefs(&web.conditions),
        [
            ("Accepted", "False", "UnsupportedProtocol"),
            ("ResolvedRefs", "True", "ResolvedRefs"),
            ("Programmed", "False", "Invalid"),
        ]
    );
    assert_eq!(
        web.conditions[0].message,
        "protocol \"HTTP\" is not TURN-UDP, TURN-TCP, TURN-TLS or TURN-DTLS"
    );
    assert_eq!(web.supported_kinds, Some(vec![]));
    let ports = serde_json::to_value(&rendered.service.spec.as_ref().unwrap().ports).unwrap();
    assert_eq!(
        ports,
        json!([{"name": "udp-listener", "port": 3478, "targetPort": 3478, "protocol": "UDP"}])
    );
}

#[test]
fn only_invalid_listeners_refuse_the_gateway() {
    let mut inputs = seed();
    set_listeners(
        &mut inputs,
        json!([{"name": "web", "port": 80, "protocol": "HTTP"}]),
    );
    let refused = refused(&inputs);
    assert_eq!(refused.reason, "no valid listener");
    assert_eq!(
        briefs(refused.status.conditions.as_deref().unwrap()),
        [
            ("Accepted", "False", "ListenersNotValid"),
            ("Programmed", "False", "Invalid"),
        ]
    );
    assert_eq!(refused.status.listeners.as_ref().unwrap().len(), 1);
}

#[test]
fn a_tls_listener_without_certificate_refs_is_an_invalid_certificate_ref() {
    let mut inputs = seed();
    set_listeners(
        &mut inputs,
        json!([
            {"name": "udp-listener", "port": 3478, "protocol": "TURN-UDP"},
            {"name": "tls-listener", "port": 443, "protocol": "TURN-TLS"},
        ]),
    );
    let rendered = render(&inputs, &settings());
    assert_eq!(rendered.config.listeners.len(), 1);
    let tls = &rendered.status.listeners.as_ref().unwrap()[1];
    assert_eq!(
        briefs(&tls.conditions),
        [
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "False", "InvalidCertificateRef"),
            ("Programmed", "False", "Invalid"),
        ]
    );
    assert_eq!(
        tls.conditions[1].message,
        "TLS and DTLS listeners need tls.certificateRefs naming a Secret"
    );
    assert_eq!(
        brief(&rendered.status.conditions.as_ref().unwrap()[0]),
        ("Accepted", "True", "ListenersNotValid")
    );
}

#[test]
fn a_tls_listener_mounts_its_certificate_secret() {
    let mut inputs = seed();
    add(
        &mut inputs,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: turn-cert, namespace: stunner}\n\
         type: kubernetes.io/tls\nstringData: {tls.crt: CERT, tls.key: KEY}\n",
    );
    set_listeners(
        &mut inputs,
        json!([{"name": "tls-listener", "port": 443, "protocol": "TURN-TLS",
                "tls": {"mode": "Terminate", "certificateRefs": [{"name": "turn-cert"}]}}]),
    );
    let rendered = render(&inputs, &settings());
    let config = agent_config(&rendered);
    assert_eq!(
        config["listeners"],
        json!([{
            "name": "stunner/stunner-gateway/tls-listener",
            "protocol": "TURN-TLS",
            "address": "$STUNNER_ADDR",
            "port": 443,
            "cert": "/etc/xturn/tls/tls-listener.crt",
            "key": "/etc/xturn/tls/tls-listener.key",
            "routes": ["stunner/media-route"],
        }])
    );
    // The certificate is copied into the relay's own Secret, mounted in the agent.
    let certificates = rendered
        .certificates
        .as_ref()
        .expect("a certificates Secret");
    assert_eq!(
        certificates.metadata.name.as_deref(),
        Some("stunner-certificates")
    );
    let data = certificates.data.as_ref().unwrap();
    assert_eq!(data["tls-listener.crt"].0, b"CERT");
    assert_eq!(data["tls-listener.key"].0, b"KEY");
    let d = deployment(&rendered);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][2],
        json!({"name": "certificates", "secret": {"secretName": "stunner-certificates"}})
    );
    assert_eq!(
        pod["containers"][0]["volumeMounts"][2],
        json!({"name": "certificates", "mountPath": "/etc/xturn/tls", "readOnly": true})
    );
    assert_eq!(
        rendered.ice.listeners,
        [("tls-listener".to_owned(), Transport::Tls, 443)]
    );
    let ports = serde_json::to_value(&rendered.service.spec.as_ref().unwrap().ports).unwrap();
    assert_eq!(ports[0]["protocol"], "TCP");
}

#[test]
fn static_auth_with_an_inline_password() {
    let mut inputs = seed();
    inputs.gateway_configs.clear();
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: GatewayConfig\n\
         metadata: {name: stunner-config, namespace: stunner}\n\
         spec: {realm: turn.example.com, authType: static, userName: user-1, password: pass-1}\n",
    );
    let rendered = render(&inputs, &settings());
    assert_eq!(
        agent_config(&rendered)["auth"],
        json!({
            "type": "static",
            "realm": "turn.example.com",
            "credentials": {
                "username_file": "/etc/xturn/auth/username",
                "password_file": "/etc/xturn/auth/password",
            },
        })
    );
    assert_eq!(
        agent_secret(&rendered),
        [
            ("username".to_owned(), "user-1".to_owned()),
            ("password".to_owned(), "pass-1".to_owned())
        ]
        .into()
    );
    assert_eq!(
        rendered.ice.auth,
        IceAuth::Static {
            user: "user-1".into(),
            password: "pass-1".into()
        }
    );
    assert_eq!(rendered.ice.realm, "turn.example.com");
}

#[test]
fn plaintext_auth_from_an_auth_ref_secret_with_base64_data() {
    let mut inputs = seed();
    inputs.gateway_configs.clear();
    // data (base64): type=plaintext, username=alice, password=wonder
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: GatewayConfig\n\
         metadata: {name: stunner-config, namespace: stunner}\n\
         spec: {authRef: {name: turn-auth}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: turn-auth, namespace: stunner}\n\
         data: {type: cGxhaW50ZXh0, username: YWxpY2U=, password: d29uZGVy}\n",
    );
    let rendered = render(&inputs, &settings());
    assert_eq!(
        agent_config(&rendered)["auth"],
        json!({
            "type": "static",
            "realm": "stunner.l7mp.io",
            "credentials": {
                "username_file": "/etc/xturn/auth/username",
                "password_file": "/etc/xturn/auth/password",
            },
        })
    );
    assert_eq!(
        agent_secret(&rendered),
        [
            ("username".to_owned(), "alice".to_owned()),
            ("password".to_owned(), "wonder".to_owned())
        ]
        .into()
    );
}

#[test]
fn ephemeral_auth_prefers_the_shared_secret_over_the_password() {
    let mut inputs = seed();
    inputs.gateway_configs.clear();
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: GatewayConfig\n\
         metadata: {name: stunner-config, namespace: stunner}\n\
         spec: {authType: timewindowed, sharedSecret: s3cret, password: ignored, authLifetime: 600}\n",
    );
    let rendered = render(&inputs, &settings());
    assert_eq!(
        agent_config(&rendered)["auth"]["credentials"],
        json!({"secret_file": "/etc/xturn/auth/secret"})
    );
    assert_eq!(agent_secret(&rendered)["secret"], "s3cret");
    assert_eq!(
        rendered.ice.auth,
        IceAuth::Rest {
            secret: "s3cret".into(),
            user_id: None,
            lifetime_secs: 600
        }
    );
}

#[test]
fn bad_auth_settings_are_refused_with_a_reason() {
    let cases = [
        (
            "{authType: static, password: p}",
            "authType static needs userName",
        ),
        (
            "{authType: longterm}",
            "authType longterm needs sharedSecret or password (used as the shared secret)",
        ),
        (
            "{authType: oauth, password: p}",
            "authType \"oauth\" is not one of static, plaintext, longterm, ephemeral, timewindowed",
        ),
        (
            "{authType: longterm, password: p, authLifetime: 0}",
            "authLifetime must be positive, not 0",
        ),
    ];
    for (spec, reason) in cases {
        let mut inputs = seed();
        inputs.gateway_configs.clear();
        add(
            &mut inputs,
            &format!(
                "apiVersion: stunner.l7mp.io/v1\nkind: GatewayConfig\n\
                 metadata: {{name: stunner-config, namespace: stunner}}\nspec: {spec}\n"
            ),
        );
        let refused = refused(&inputs);
        assert_eq!(refused.reason, reason, "{spec}");
        assert_eq!(
            brief(&refused.status.conditions.as_ref().unwrap()[0]),
            ("Accepted", "False", "InvalidParameters"),
            "{spec}"
        );
    }
}

#[test]
fn a_missing_gateway_config_is_invalid_parameters() {
    let mut inputs = seed();
    inputs.gateway_configs.clear();
    let refused = refused(&inputs);
    assert_eq!(
        refused.reason,
        "GatewayConfig stunner/stunner-config not found"
    );
    assert_eq!(
        brief(&refused.status.conditions.as_ref().unwrap()[0]),
        ("Accepted", "False", "InvalidParameters")
    );
}

#[test]
fn gateways_of_other_controllers_are_not_ours() {
    let mut inputs = seed();
    add(
        &mut inputs,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: other}\n\
         spec: {controllerName: example.com/other-controller}\n",
    );
    let mut gateway = the_gateway(&inputs);
    gateway.spec.gateway_class_name = "other".into();
    assert!(matches!(
        render_gateway(&inputs, &settings(), &gateway),
        Outcome::NotOurs
    ));
    // A class that does not exist is not ours either.
    gateway.spec.gateway_class_name = "missing".into();
    assert!(matches!(
        render_gateway(&inputs, &settings(), &gateway),
        Outcome::NotOurs
    ));
    // Our class, but this operator runs under another controller name.
    let mut other = settings();
    other.controller_names = vec!["example.com/other-controller".into()];
    assert!(matches!(
        render_gateway(&inputs, &other, &the_gateway(&inputs)),
        Outcome::NotOurs
    ));
}

fn at(settings: &Settings, time: k8s_openapi::jiff::Timestamp) -> Settings {
    Settings {
        now: time,
        ..settings.clone()
    }
}

#[test]
fn unchanged_conditions_keep_their_transition_time() {
    let mut inputs = seed();
    let mut gateway: Gateway = the_gateway(&inputs);
    gateway.metadata.generation = Some(4);
    set_gateway(&mut inputs, gateway.clone());
    let first = render(&inputs, &settings());
    gateway.status = Some(first.status.clone());
    set_gateway(&mut inputs, gateway.clone());

    // Later, nothing changed: the same status, times included.
    let second = render(&inputs, &at(&settings(), later()));
    assert_eq!(second.status, first.status);
    for c in second.status.conditions.as_ref().unwrap() {
        assert_eq!(c.last_transition_time, Time(now()), "{}", c.type_);
        assert_eq!(c.observed_generation, Some(4));
    }
    for l in second.status.listeners.as_ref().unwrap() {
        for c in &l.conditions {
            assert_eq!(
                c.last_transition_time,
                Time(now()),
                "{} {}",
                l.name,
                c.type_
            );
        }
    }

    // The Service got its address: Programmed turns True at the later time, Accepted keeps its
    // time.
    add(
        &mut inputs,
        &std::fs::read_to_string(fixture("stunner-service-lb.yaml")).unwrap(),
    );
    let third = render(&inputs, &at(&settings(), later()));
    let conditions = third.status.conditions.as_ref().unwrap();
    assert_eq!(brief(&conditions[1]), ("Programmed", "True", "Programmed"));
    assert_eq!(conditions[0].last_transition_time, Time(now()));
    assert_eq!(conditions[1].last_transition_time, Time(later()));

    // The route's conditions too.
    let mut route = inputs.routes[0].as_ref().clone();
    route.status = Some(route_status(
        &inputs,
        &settings(),
        &route,
        RouteApi::Stunner,
        &[&gateway],
    ));
    let again = route_status(
        &inputs,
        &at(&settings(), later()),
        &route,
        RouteApi::Stunner,
        &[&gateway],
    );
    assert_eq!(Some(again), route.status);
}

#[test]
fn routes_from_other_namespaces_need_allowed_routes_all() {
    let mut inputs = seed();
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: UDPRoute\nmetadata: {name: foreign, namespace: apps}\n\
         spec:\n  parentRefs: [{name: stunner-gateway, namespace: stunner}]\n\
         \x20 rules: [{backendRefs: [{name: media-server}]}]\n",
    );
    let gateway = the_gateway(&inputs);
    let foreign = route_named(&inputs, "foreign");
    let status = stunner_route_status(&inputs, &foreign, &gateway);
    assert_eq!(
        briefs(&status.parents[0].conditions),
        [
            ("Accepted", "False", "NotAllowedByListeners"),
            ("ResolvedRefs", "True", "ResolvedRefs"),
        ]
    );
    let rendered_same = render(&inputs, &settings());
    assert_eq!(rendered_same.config.clusters.len(), 1);
    assert_eq!(
        rendered_same.config.listeners[0]
            .routes
            .clone()
            .unwrap_or_default(),
        ["stunner/media-route"]
    );

    set_listeners(
        &mut inputs,
        json!([{"name": "udp-listener", "port": 3478, "protocol": "TURN-UDP",
                "allowedRoutes": {"namespaces": {"from": "All"}}}]),
    );
    let rendered_all = render(&inputs, &settings());
    assert_eq!(
        rendered_all.config.listeners[0]
            .routes
            .clone()
            .unwrap_or_default(),
        ["apps/foreign", "stunner/media-route"]
    );
    assert_eq!(
        cluster_endpoints(&rendered_all),
        [
            ["10.96.0.10", "10.244.1.5", "10.244.2.7"],
            ["10.96.0.10", "10.244.1.5", "10.244.2.7"],
        ]
    );
}

#[test]
fn section_name_attaches_a_route_to_one_listener() {
    let mut inputs = seed();
    let mut route = inputs.routes[0].as_ref().clone();
    route.spec.parent_refs[0].section_name = Some("udp-listener".into());
    inputs.routes = vec![std::sync::Arc::new(route)];
    let rendered = render(&inputs, &settings());
    assert_eq!(
        rendered.config.listeners[0]
            .routes
            .clone()
            .unwrap_or_default(),
        ["stunner/media-route"]
    );
    assert_eq!(
        rendered.config.listeners[1]
            .routes
            .clone()
            .unwrap_or_default(),
        Vec::<String>::new()
    );
    let counts = attached_counts(&rendered);
    assert_eq!(counts, [1, 0]);

    let mut route = inputs.routes[0].as_ref().clone();
    route.spec.parent_refs[0].section_name = Some("nope".into());
    inputs.routes = vec![std::sync::Arc::new(route)];
    assert_eq!(
        route_conditions(&inputs, &settings())[0],
        four(
            "Accepted",
            "False",
            "NoMatchingParent",
            "no listener of that sectionName"
        )
    );
}

#[test]
fn service_annotations_come_from_the_gateway_config_and_the_gateway() {
    let mut inputs = seed();
    let mut config = inputs.gateway_configs[0].as_ref().clone();
    config.spec.load_balancer_service_annotations = Some(
        [
            ("a.example/x".to_owned(), "config".to_owned()),
            ("a.example/y".to_owned(), "config".to_owned()),
        ]
        .into(),
    );
    inputs.gateway_configs = vec![std::sync::Arc::new(config)];
    let mut gateway = the_gateway(&inputs);
    gateway.metadata.annotations = Some(
        [
            ("a.example/y".to_owned(), "gateway".to_owned()),
            (
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                "{}".to_owned(),
            ),
        ]
        .into(),
    );
    gateway.spec.addresses = Some(
        serde_json::from_value(json!([{"type": "IPAddress", "value": "198.18.9.9"}])).unwrap(),
    );
    set_gateway(&mut inputs, gateway);
    let rendered = render(&inputs, &settings());
    let service = serde_json::to_value(&rendered.service).unwrap();
    assert_eq!(
        service["metadata"]["annotations"],
        json!({
            "a.example/x": "config",
            "a.example/y": "gateway",
            "stunner.l7mp.io/related-gateway-name": "stunner/stunner-gateway",
        })
    );
    assert_eq!(service["spec"]["loadBalancerIP"], "198.18.9.9");
    // Until the Service has an ingress address, the requested one is the Gateway's.
    assert_eq!(rendered.ice.addresses, ["198.18.9.9"]);
}

#[test]
fn each_listener_takes_routes_only_from_the_namespaces_it_allows() {
    let mut inputs = seed();
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: UDPRoute\nmetadata: {name: foreign, namespace: apps}\n\
         spec:\n  parentRefs: [{name: stunner-gateway, namespace: stunner}]\n\
         \x20 rules: [{backendRefs: [{name: media-server, namespace: stunner}]}]\n",
    );
    // UDP takes routes from everywhere, TCP only from the Gateway's namespace (the default).
    set_listeners(
        &mut inputs,
        json!([{"name": "udp-listener", "port": 3478, "protocol": "TURN-UDP",
                "allowedRoutes": {"namespaces": {"from": "All"}}},
               {"name": "tcp-listener", "port": 3478, "protocol": "TURN-TCP"}]),
    );
    let rendered = render(&inputs, &settings());
    assert_eq!(
        rendered.config.listeners[0]
            .routes
            .clone()
            .unwrap_or_default(),
        ["apps/foreign", "stunner/media-route"]
    );
    assert_eq!(
        rendered.config.listeners[1]
            .routes
            .clone()
            .unwrap_or_default(),
        ["stunner/media-route"]
    );
    let counts = attached_counts(&rendered);
    assert_eq!(counts, [2, 1]);
    // The route is accepted: one listener takes it.
    let foreign = route_named(&inputs, "foreign");
    let gateway = the_gateway(&inputs);
    let status = stunner_route_status(&inputs, &foreign, &gateway);
    assert_eq!(
        brief(&status.parents[0].conditions[0]),
        ("Accepted", "True", "Accepted")
    );
}

#[test]
fn a_second_listener_on_a_taken_port_is_conflicted_and_not_served() {
    let mut inputs = seed();
    set_listeners(
        &mut inputs,
        json!([{"name": "udp", "port": 3478, "protocol": "TURN-UDP"},
               // TCP next to UDP on one port is fine: different sockets.
               {"name": "tcp", "port": 3478, "protocol": "TURN-TCP"},
               {"name": "dtls", "port": 3478, "protocol": "TURN-DTLS",
                "tls": {"certificateRefs": [{"name": "no-such-secret"}]}},
               {"name": "udp-again", "port": 3478, "protocol": "TURN-UDP"},
               {"name": "tls", "port": 3478, "protocol": "TURN-TLS",
                "tls": {"certificateRefs": [{"name": "no-such-secret"}]}}]),
    );
    let rendered = render(&inputs, &settings());
    let served: Vec<_> = rendered
        .config
        .listeners
        .iter()
        .map(|l| {
            (
                l.name.as_deref().unwrap_or_default(),
                l.protocol.as_deref().unwrap_or_default(),
                l.port.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        served,
        [
            ("stunner/stunner-gateway/udp", "TURN-UDP", 3478),
            ("stunner/stunner-gateway/tcp", "TURN-TCP", 3478),
        ]
    );
    let listeners = rendered.status.listeners.as_ref().unwrap();
    let conditions = |name: &str| {
        fours(
            &listeners
                .iter()
                .find(|l| l.name == name)
                .unwrap()
                .conditions,
        )
    };
    let taken_udp = "listener udp already serves UDP port 3478";
    assert_eq!(
        conditions("dtls"),
        [
            four("Accepted", "False", "PortUnavailable", taken_udp),
            four("Conflicted", "True", "ProtocolConflict", taken_udp),
            four("ResolvedRefs", "True", "ResolvedRefs", ""),
            four("Programmed", "False", "Invalid", "listener not accepted"),
        ]
    );
    assert_eq!(
        conditions("udp-again")[..2],
        [
            four("Accepted", "False", "PortUnavailable", taken_udp),
            four("Conflicted", "True", "HostnameConflict", taken_udp),
        ]
    );
    assert_eq!(
        conditions("tls")[1],
        four(
            "Conflicted",
            "True",
            "ProtocolConflict",
            "listener tcp already serves TCP port 3478"
        )
    );
    assert_eq!(
        brief(&rendered.status.conditions.as_ref().unwrap()[0]),
        ("Accepted", "True", "ListenersNotValid")
    );
}

#[test]
fn two_gateways_naming_the_same_relays_the_older_one_keeps_them() {
    let mut inputs = seed();
    let mut first = the_gateway(&inputs);
    first.metadata.creation_timestamp = Some(Time("2026-11-01T00:00:00Z".parse().unwrap()));
    // Same class, so same Dataplane and workloadName ("stunner"), in the same namespace.
    let mut second = first.clone();
    second.metadata.name = Some("a-second-gateway".into());
    second.metadata.creation_timestamp = Some(Time("2026-11-02T00:00:00Z".parse().unwrap()));
    inputs.gateways = vec![
        std::sync::Arc::new(second.clone()),
        std::sync::Arc::new(first.clone()),
    ];
    match render_gateway(&inputs, &settings(), &first) {
        Outcome::Rendered(rendered) => assert_eq!(rendered.name, "stunner"),
        other => panic!("the older Gateway is not rendered: {other:?}"),
    }
    let Outcome::Refused(refused) = render_gateway(&inputs, &settings(), &second) else {
        panic!("the younger Gateway is rendered");
    };
    assert_eq!(
        refused.reason,
        "the relay objects' name \"stunner\" is already used by Gateway stunner/stunner-gateway; \
         give this Gateway's GatewayConfig a Dataplane with another workloadName"
    );
    let conditions = refused.status.conditions.unwrap();
    assert_eq!(
        brief(&conditions[0]),
        ("Accepted", "False", "InvalidParameters")
    );
    // In another namespace the same name is no conflict.
    second.metadata.namespace = Some("elsewhere".into());
    inputs.gateways = vec![
        std::sync::Arc::new(second.clone()),
        std::sync::Arc::new(first),
    ];
    assert!(matches!(
        render_gateway(&inputs, &settings(), &second),
        Outcome::Rendered(_)
    ));
}

fn route_named(inputs: &Inputs, name: &str) -> xturn_operator::crd::UDPRoute {
    inputs
        .routes
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(name))
        .unwrap()
        .as_ref()
        .clone()
}

/// The status of a STUNner UDPRoute with `gateway` as the only Gateway of ours.
fn stunner_route_status(
    inputs: &Inputs,
    route: &xturn_operator::crd::UDPRoute,
    gateway: &Gateway,
) -> xturn_operator::crd::UDPRouteStatus {
    route_status(inputs, &settings(), route, RouteApi::Stunner, &[gateway])
}

/// A rotated password reaches the agents' Secret (and the credential service) without
/// changing their ConfigMap or pod template: no rollout, the agents reload the mounted file.
#[test]
fn a_rotated_secret_changes_the_agents_secret_not_its_config_or_pods() {
    let before = render(&seed(), &settings());
    let mut rotated = seed();
    rotated.secrets.clear();
    add(
        &mut rotated,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: stunner-credentials, namespace: stunner}\n\
         stringData: {password: rotated-secret}\n",
    );
    let after = render(&rotated, &settings());
    assert_eq!(agent_secret(&after)["secret"], "rotated-secret");
    assert_ne!(before.credentials, after.credentials);
    assert_eq!(before.config_map, after.config_map);
    assert_eq!(before.workload, after.workload);
    assert!(matches!(&after.ice.auth, IceAuth::Rest { secret, .. } if secret == "rotated-secret"));
}

/// A STUN server only has no credentials: no Secret, nothing mounted.
#[test]
fn stun_mode_renders_no_credentials_secret() {
    let mut inputs = seed();
    inputs.gateway_configs.clear();
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: GatewayConfig\n\
         metadata: {name: stunner-config, namespace: stunner}\n\
         spec: {stunMode: true}\n",
    );
    let rendered = render(&inputs, &settings());
    assert!(rendered.credentials.is_none());
    let pod = &deployment(&rendered)["spec"]["template"]["spec"];
    assert!(!pod["volumes"].to_string().contains("auth"), "{pod}");
}

/// The Secrets the operator reads are exactly those Gateways of ours may use: their
/// GatewayConfig's (`authRef`, `password`, `sharedSecret`) and their TLS listeners'
/// certificates, in their own namespace or granted by a ReferenceGrant; nothing else, and
/// nothing a reference without a grant names.
#[test]
fn only_the_secrets_gateways_may_use_are_read() {
    let pair = |ns: &str, name: &str| (ns.to_owned(), name.to_owned());
    let mut inputs = seed();
    assert_eq!(
        referenced_secrets(&inputs, &settings()),
        [pair("stunner", "stunner-credentials")].into()
    );
    // A TLS listener's certificate, one in another namespace (not granted), and a
    // GatewayConfig password elsewhere (not granted either).
    let mut gateway = the_gateway(&inputs);
    gateway.spec.listeners = serde_json::from_value(json!([
        {"name": "tls", "port": 443, "protocol": "TURN-TLS",
         "tls": {"certificateRefs": [{"name": "turn-cert"}, {"name": "theirs", "namespace": "other"}]}},
    ]))
    .unwrap();
    inputs.gateways = vec![std::sync::Arc::new(gateway)];
    inputs.gateway_configs.clear();
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: GatewayConfig\n\
         metadata: {name: stunner-config, namespace: stunner}\n\
         spec: {authType: longterm, sharedSecret: {name: shared, namespace: vault, key: s}}\n",
    );
    assert_eq!(
        referenced_secrets(&inputs, &settings()),
        [pair("stunner", "turn-cert")].into()
    );
    // Granted, both are read; and rendering uses the granted password.
    add(
        &mut inputs,
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
         metadata: {name: g, namespace: vault}\n\
         spec: {from: [{group: stunner.l7mp.io, kind: GatewayConfig, namespace: stunner}], \
         to: [{group: '', kind: Secret}]}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
         metadata: {name: g, namespace: other}\n\
         spec: {from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: stunner}], \
         to: [{group: '', kind: Secret, name: theirs}]}\n",
    );
    assert_eq!(
        referenced_secrets(&inputs, &settings()),
        [
            pair("other", "theirs"),
            pair("stunner", "turn-cert"),
            pair("vault", "shared")
        ]
        .into()
    );
}

/// A `password` or `sharedSecret` in another namespace needs a ReferenceGrant there, as
/// `authRef` does: a GatewayConfig cannot copy another namespace's Secret into its relays.
#[test]
fn a_password_in_another_namespace_needs_a_reference_grant() {
    let mut inputs = seed();
    inputs.gateway_configs.clear();
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: GatewayConfig\n\
         metadata: {name: stunner-config, namespace: stunner}\n\
         spec: {authType: longterm, password: {name: shared, namespace: vault, key: s}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: shared, namespace: vault}\n\
         stringData: {s: vault-secret}\n",
    );
    assert_eq!(
        refused(&inputs).reason,
        "password: Secret vault/shared is in another namespace and no ReferenceGrant there \
         allows GatewayConfigs of stunner to use it"
    );
    add(
        &mut inputs,
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
         metadata: {name: g, namespace: vault}\n\
         spec: {from: [{group: stunner.l7mp.io, kind: GatewayConfig, namespace: stunner}], \
         to: [{group: '', kind: Secret, name: shared}]}\n",
    );
    assert_eq!(
        agent_secret(&render(&inputs, &settings()))["secret"],
        "vault-secret"
    );
}
