//! The install manifests: deploy/crds.yaml and deploy/install.yaml are what the code generates,
//! they and the seed parse (the objects as typed Kubernetes objects, losslessly), the operator's
//! ClusterRole covers every request the reconciler makes, and the credential service's is
//! read-only.
#![allow(clippy::unwrap_used)] // test code: a panic is a failing test
mod common;

use std::{path::Path, process::Command};

use common::*;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use xturn_operator::{crd, install, offline};

/// Every non-empty document of a YAML file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let value = <serde_norway::Value as serde::Deserialize>::deserialize(document)
            .unwrap_or_else(|e| panic!("{} document {}: {e}", path.display(), i + 1));
        if value.is_null() {
            continue;
        }
        let value: Value = serde_json::to_value(value).unwrap();
        for field in ["apiVersion", "kind"] {
            assert!(
                value[field].as_str().is_some_and(|s| !s.is_empty()),
                "{} document {}: no {field}",
                path.display(),
                i + 1
            );
        }
        assert!(
            value["metadata"]["name"].as_str().is_some(),
            "{} document {}: no metadata.name",
            path.display(),
            i + 1
        );
        out.push(value);
    }
    out
}

/// A document as a typed object; serialising it back must give the document again, so that
/// no field was misspelt (k8s-openapi's types skip unknown fields).
fn typed<K: DeserializeOwned + Serialize>(document: &Value) -> K {
    let object: K = serde_json::from_value(document.clone())
        .unwrap_or_else(|e| panic!("{}: {e}", document["kind"]));
    assert_eq!(
        &serde_json::to_value(&object).unwrap(),
        document,
        "{} {} does not round-trip: a field is unknown or misplaced",
        document["kind"],
        document["metadata"]["name"]
    );
    object
}

/// deploy/install.yaml without the CRDs.
fn operator_documents() -> Vec<Value> {
    documents(&root().join("deploy/install.yaml"))
        .into_iter()
        .filter(|d| d["kind"] != "CustomResourceDefinition")
        .collect()
}

/// The object of `kind` named `name`, typed.
fn named<K: DeserializeOwned + Serialize>(documents: &[Value], kind: &str, name: &str) -> K {
    let found: Vec<_> = documents
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name} in deploy/install.yaml");
    typed(found[0])
}

#[test]
fn install_yaml_is_what_the_code_generates() {
    let path = root().join("deploy/install.yaml");
    let on_disk = std::fs::read_to_string(&path).unwrap();
    let generated = install::yaml(&install::InstallOptions::default()).unwrap();
    assert!(
        on_disk == generated,
        "deploy/install.yaml is stale: run `cargo run -p operator -- install > deploy/install.yaml`"
    );
    // The CRDs in it are deploy/crds.yaml's.
    let crds: Vec<Value> = documents(&path)
        .into_iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(crds, documents(&root().join("deploy/crds.yaml")));
}

/// `install --registry --tag` names exactly the images `cargo xtask image` builds there.
#[test]
fn install_names_the_images_in_the_registry_given() {
    let output = Command::new(env!("CARGO_BIN_EXE_xturn-operator"))
        .args([
            "install",
            "--registry",
            "registry.test:5000/team/",
            "--tag",
            "1.2.3",
        ])
        .args(["--image-pull-secret", "pull-secret"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let images: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    assert_eq!(
        images,
        ["registry.test:5000/team/xturn-operator:1.2.3"].into()
    );
    assert!(
        text.contains("value: registry.test:5000/team/xturnd:1.2.3"),
        "{text}"
    );
    assert_eq!(text.matches("- name: pull-secret").count(), 2, "{text}");
}

#[test]
fn crds_yaml_is_what_the_code_generates() {
    let path = root().join("deploy/crds.yaml");
    let on_disk = std::fs::read_to_string(&path).unwrap();
    let generated = crd::yaml().unwrap();
    assert!(
        on_disk == generated,
        "deploy/crds.yaml is stale: run `cargo run -p operator -- crds > deploy/crds.yaml`"
    );
    let kinds: Vec<_> = documents(&path)
        .iter()
        .map(|d| d["spec"]["names"]["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["GatewayConfig", "UDPRoute", "StaticService", "Dataplane"]
    );
}

#[test]
fn every_manifest_parses() {
    let operator = operator_documents();
    assert_eq!(
        operator
            .iter()
            .map(|d| d["kind"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "Namespace",
            // The operator, its RBAC and its Lease's.
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            // The credential service.
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Service",
            // STUNner's credential service address, an alias of ours.
            "Namespace",
            "Service",
        ]
    );
    // Every object survives the round trip through its k8s-openapi type.
    for document in &operator {
        let kind = document["kind"].as_str().unwrap();
        let name = document["metadata"]["name"].as_str().unwrap();
        match kind {
            "Namespace" => drop(named::<Namespace>(&operator, kind, name)),
            "ServiceAccount" => drop(named::<ServiceAccount>(&operator, kind, name)),
            "ClusterRole" => drop(named::<ClusterRole>(&operator, kind, name)),
            "ClusterRoleBinding" => drop(named::<ClusterRoleBinding>(&operator, kind, name)),
            "Role" => drop(named::<Role>(&operator, kind, name)),
            "RoleBinding" => drop(named::<RoleBinding>(&operator, kind, name)),
            "Deployment" => drop(named::<Deployment>(&operator, kind, name)),
            "Service" => drop(named::<Service>(&operator, kind, name)),
            other => panic!("unexpected {other}"),
        }
    }
    let seed: Vec<Value> = seed_files().iter().flat_map(|f| documents(f)).collect();
    assert_eq!(
        seed.iter()
            .map(|d| d["kind"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "Namespace",
            "GatewayClass",
            "Dataplane",
            "Secret",
            "Gateway",
            "UDPRoute",
            "GatewayConfig",
            "ScaledObject"
        ]
    );
    // The seed's inputs as typed objects (what `render -f` reads).
    let inputs = seed_with(&[]);
    assert_eq!(
        (
            inputs.gateway_classes.len(),
            inputs.gateways.len(),
            inputs.routes.len(),
            inputs.gateway_configs.len(),
            inputs.dataplanes.len(),
            inputs.secrets.len(),
        ),
        (1, 1, 1, 1, 1, 1)
    );
    // The ScaledObject scales the Deployment the Dataplane names.
    let scaled = seed.iter().find(|d| d["kind"] == "ScaledObject").unwrap();
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        inputs.dataplanes[0].spec.workload_name.as_deref().unwrap()
    );
}

#[test]
fn two_replicas_each_of_the_operator_and_the_credential_service_run_unprivileged() {
    let documents = operator_documents();
    let namespace: Namespace = named(&documents, "Namespace", "xturn-system");
    assert_eq!(
        namespace.metadata.labels.unwrap()["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    for (name, args, port) in [
        (
            "xturn-operator",
            vec!["run", "--leader-elect", "--health-listen", "0.0.0.0:8081"],
            json!({"name": "health", "containerPort": 8081, "protocol": "TCP"}),
        ),
        (
            "xturn-auth",
            vec!["credential-service", "--listen", "0.0.0.0:8088"],
            json!({"name": "http", "containerPort": 8088, "protocol": "TCP"}),
        ),
    ] {
        let account: ServiceAccount = named(&documents, "ServiceAccount", name);
        assert_eq!(account.metadata.namespace.as_deref(), Some("xturn-system"));
        let deployment: Deployment = named(&documents, "Deployment", name);
        assert_eq!(
            deployment.metadata.namespace.as_deref(),
            Some("xturn-system")
        );
        let spec = deployment.spec.unwrap();
        assert_eq!(spec.replicas, Some(2), "{name}");
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
            assert_eq!(pod_labels.get(k), Some(v));
        }
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some(name));
        let pod_security = serde_json::to_value(pod.security_context.unwrap()).unwrap();
        assert_eq!(pod_security["runAsNonRoot"], true);
        assert_eq!(pod_security["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(pod.containers.len(), 1);
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some(format!("ghcr.io/xturn/xturn-operator:{}", env!("CARGO_PKG_VERSION")).as_str())
        );
        assert_eq!(container.args.clone().unwrap(), args, "{name}");
        assert_eq!(
            serde_json::to_value(container.ports.as_ref().unwrap()).unwrap(),
            json!([port])
        );
        for probe in [&container.liveness_probe, &container.readiness_probe] {
            let probe = serde_json::to_value(probe.as_ref().unwrap()).unwrap();
            assert_eq!(
                probe["httpGet"],
                json!({"path": "/healthz", "port": port["name"]})
            );
        }
        let security = serde_json::to_value(container.security_context.as_ref().unwrap()).unwrap();
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["capabilities"], json!({"drop": ["ALL"]}));
        let binding: ClusterRoleBinding = named(&documents, "ClusterRoleBinding", name);
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(binding.role_ref.name, name);
        assert_eq!(
            serde_json::to_value(binding.subjects.unwrap()).unwrap(),
            json!([{"kind": "ServiceAccount", "name": name, "namespace": "xturn-system"}])
        );
    }
    // The operator names the agent image of the same registry and tag.
    let operator: Deployment = named(&documents, "Deployment", "xturn-operator");
    let env =
        serde_json::to_value(&operator.spec.unwrap().template.spec.unwrap().containers[0].env)
            .unwrap();
    assert!(
        env.as_array().unwrap().contains(&json!({
            "name": "XTURN_AGENT_IMAGE",
            "value": format!("ghcr.io/xturn/xturnd:{}", env!("CARGO_PKG_VERSION")),
        })),
        "{env}"
    );

    let service: Service = named(&documents, "Service", "xturn-auth");
    assert_eq!(service.metadata.namespace.as_deref(), Some("xturn-system"));
    let service = service.spec.unwrap();
    assert_eq!(
        serde_json::to_value(service.selector).unwrap(),
        json!({"app.kubernetes.io/name": "xturn-auth"})
    );
    assert_eq!(
        serde_json::to_value(service.ports.unwrap()).unwrap(),
        json!([{"name": "http", "port": 8088, "targetPort": "http", "protocol": "TCP"}])
    );
    // STUNner's clients call stunner-auth.stunner-system:8088: an alias of the service above.
    let alias: Service = named(&documents, "Service", "stunner-auth");
    assert_eq!(alias.metadata.namespace.as_deref(), Some("stunner-system"));
    let alias = alias.spec.unwrap();
    assert_eq!(alias.type_.as_deref(), Some("ExternalName"));
    assert_eq!(
        alias.external_name.as_deref(),
        Some("xturn-auth.xturn-system.svc.cluster.local")
    );

    // Leader election: the Lease only, in the operator's namespace.
    let role: Role = named(&documents, "Role", "xturn-operator-leader-election");
    assert_eq!(role.metadata.namespace.as_deref(), Some("xturn-system"));
    let rules = role.rules.unwrap();
    assert!(covers(&rules, "coordination.k8s.io", "leases", "create"));
    assert!(
        rules
            .iter()
            .all(|r| r.resources.as_deref() == Some(&["leases".to_owned()][..]))
    );
    let named_rule = rules.iter().find(|r| r.resource_names.is_some()).unwrap();
    assert_eq!(
        named_rule.resource_names.as_deref(),
        Some(&[xturn_operator::leader::LEASE_NAME.to_owned()][..])
    );
    let binding: RoleBinding = named(&documents, "RoleBinding", "xturn-operator-leader-election");
    assert_eq!(binding.role_ref.name, "xturn-operator-leader-election");
}

/// The Deployment's arguments and environment are ones `xturn-operator` takes: started with
/// them and no cluster to reach, it gets past parsing and fails on the API connection.
#[test]
fn the_operator_deployment_arguments_parse() {
    for name in ["xturn-operator", "xturn-auth"] {
        let deployment: Deployment = named(&operator_documents(), "Deployment", name);
        let container = deployment.spec.unwrap().template.spec.unwrap().containers[0].clone();
        let home =
            std::env::temp_dir().join(format!("xturn-operator-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_xturn-operator"));
        command
            .args(container.args.unwrap())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("HOME", &home)
            .env("KUBECONFIG", home.join("no-such-kubeconfig"));
        for var in container.env.unwrap() {
            // The downward API's values (POD_NAME...) exist only in a pod.
            if let Some(value) = var.value {
                command.env(var.name, value);
            }
        }
        let output = command.output().unwrap();
        let _ = std::fs::remove_dir_all(&home);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains("cannot reach the Kubernetes API"),
            "{name}: {stderr}"
        );
    }
}

/// `render -f` takes several files after one `-f`, and prints what `offline::render_all` does.
#[test]
fn render_subcommand_prints_the_rendered_objects() {
    let output = Command::new(env!("CARGO_BIN_EXE_xturn-operator"))
        .arg("render")
        .arg("-f")
        .args(seed_files())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let objects: Vec<Value> = serde_norway::Deserializer::from_str(&stdout)
        .map(|d| {
            serde_json::to_value(
                <serde_norway::Value as serde::Deserialize>::deserialize(d).unwrap(),
            )
            .unwrap()
        })
        .collect();
    let expected = offline::render_all(&seed_with(&[]), &settings(), None).unwrap();
    // The agent image differs (the CLI's default), the rest is the same.
    assert_eq!(objects.len(), expected.objects.len());
    for (got, want) in objects.iter().zip(&expected.objects) {
        assert_eq!(got["kind"], want["kind"]);
        if got["kind"] != "Deployment" {
            assert_eq!(got, want);
        }
    }
    assert!(
        stderr.contains("# skipped (not an input): keda.sh/v1alpha1 ScaledObject"),
        "{stderr}"
    );
    assert!(
        stderr.contains("# Gateway stunner/stunner-gateway: Accepted=True (Accepted)"),
        "{stderr}"
    );
}

fn covers(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|rule| {
        let has = |list: &Option<Vec<String>>, wanted: &str| {
            list.iter()
                .flatten()
                .any(|item| item == wanted || item == "*")
        };
        rule.resource_names.is_none()
            && has(&rule.api_groups, group)
            && has(&Some(rule.resources.clone().unwrap_or_default()), resource)
            && rule.verbs.iter().any(|v| v == verb || v == "*")
    })
}

/// What the reconciler does, as (API group, resource, verbs).
const USED: &[(&str, &str, &[&str])] = &[
    // Watch caches (reconcile::run): every input kind, cluster-wide.
    (
        "gateway.networking.k8s.io",
        "gatewayclasses",
        &["list", "watch"],
    ),
    ("gateway.networking.k8s.io", "gateways", &["list", "watch"]),
    ("stunner.l7mp.io", "gatewayconfigs", &["list", "watch"]),
    ("stunner.l7mp.io", "udproutes", &["list", "watch"]),
    ("stunner.l7mp.io", "staticservices", &["list", "watch"]),
    ("stunner.l7mp.io", "dataplanes", &["list", "watch"]),
    ("", "services", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    // Secrets: only those Gateways refer to, one `get` each (reconcile::ReferencedSecrets).
    ("", "secrets", &["get"]),
    ("", "nodes", &["list", "watch"]),
    // Owned objects the controller watches (Controller::owns).
    ("", "configmaps", &["list", "watch"]),
    ("apps", "deployments", &["list", "watch"]),
    ("apps", "daemonsets", &["list", "watch"]),
    // The finalizer (JSON patch; merge patch when a Gateway leaves our class) and statuses.
    ("gateway.networking.k8s.io", "gateways", &["patch"]),
    ("gateway.networking.k8s.io", "gateways/status", &["patch"]),
    (
        "gateway.networking.k8s.io",
        "gatewayclasses/status",
        &["patch"],
    ),
    ("stunner.l7mp.io", "udproutes/status", &["patch"]),
    // Server-side apply: patch, and create when the object is new; delete: a workload of the
    // kind a Dataplane switched away from.
    ("", "configmaps", &["create", "patch"]),
    ("", "serviceaccounts", &["create", "patch"]),
    ("rbac.authorization.k8s.io", "roles", &["create", "patch"]),
    (
        "rbac.authorization.k8s.io",
        "rolebindings",
        &["create", "patch"],
    ),
    ("apps", "deployments", &["create", "patch", "delete"]),
    ("apps", "daemonsets", &["create", "patch", "delete"]),
    ("", "services", &["create", "patch"]),
    ("", "secrets", &["create", "patch"]),
    // Owner references with blockOwnerDeletion (OwnerReferencesPermissionEnforcement).
    (
        "gateway.networking.k8s.io",
        "gateways/finalizers",
        &["update"],
    ),
    // Optional Gateway API kinds (watched when served), Namespaces for allowedRoutes.
    ("gateway.networking.k8s.io", "udproutes", &["list", "watch"]),
    ("gateway.networking.k8s.io", "udproutes/status", &["patch"]),
    (
        "gateway.networking.k8s.io",
        "referencegrants",
        &["list", "watch"],
    ),
    ("", "namespaces", &["list", "watch"]),
];

#[test]
fn the_cluster_role_covers_every_request_of_the_reconciler() {
    let role: ClusterRole = named(&operator_documents(), "ClusterRole", "xturn-operator");
    let rules = role.rules.unwrap();
    let missing: Vec<String> = USED
        .iter()
        .flat_map(|(group, resource, verbs)| verbs.iter().map(move |v| (*group, *resource, *v)))
        .filter(|(group, resource, verb)| !covers(&rules, group, resource, verb))
        .map(|(group, resource, verb)| format!("{verb} {group}/{resource}"))
        .collect();
    assert!(missing.is_empty(), "the ClusterRole lacks: {missing:?}");

    // Every kind the operator renders is one it may apply (the list above is complete) ...
    let out = offline::render_all(&seed(), &settings(), None).unwrap();
    for object in &out.objects {
        let api_version = object["apiVersion"].as_str().unwrap();
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let resource = format!("{}s", object["kind"].as_str().unwrap().to_ascii_lowercase());
        assert!(
            USED.iter()
                .any(|(g, r, verbs)| *g == group && *r == resource && verbs.contains(&"create")),
            "{group}/{resource} is rendered but not in USED"
        );
    }
    // ... and it holds whatever the agents' Roles grant (RBAC's escalation check).
    let agent_role = out.objects.iter().find(|o| o["kind"] == "Role").unwrap();
    let agent_rules: Vec<PolicyRule> = serde_json::from_value(agent_role["rules"].clone()).unwrap();
    for rule in &agent_rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        covers(&rules, group, resource, verb),
                        "agents are granted {verb} {group}/{resource}, the operator lacks it"
                    );
                }
            }
        }
    }
    // Nothing beyond what is listed: no wildcard; Secrets are written only by server-side
    // apply (the relays' copies of their TLS certificates), never updated or deleted.
    for rule in &rules {
        assert!(!rule.verbs.iter().any(|v| v == "*"), "{rule:?}");
        assert!(
            !rule.resources.iter().flatten().any(|r| r == "*"),
            "{rule:?}"
        );
    }
    // The rest of the cluster's Secrets are never listed, watched nor cached.
    for verb in ["update", "delete", "list", "watch"] {
        assert!(!covers(&rules, "", "secrets", verb), "{verb} secrets");
    }
    // The agents read no Secret: theirs are mounted by the kubelet.
    assert!(
        !agent_rules
            .iter()
            .any(|rule| rule.resources.iter().flatten().any(|r| r == "secrets")),
        "{agent_rules:?}"
    );
}

/// The credential service reads what rendering reads and writes nothing.
#[test]
fn the_credential_service_is_read_only() {
    let role: ClusterRole = named(&operator_documents(), "ClusterRole", "xturn-auth");
    let rules = role.rules.unwrap();
    for rule in &rules {
        for verb in &rule.verbs {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str()),
                "{rule:?}"
            );
        }
    }
    // Everything the registry is rendered from.
    for (group, resource, _) in USED.iter().filter(|(_, _, v)| v.contains(&"watch")) {
        if ["configmaps"].contains(resource) {
            continue; // the controller's own objects, not an input
        }
        assert!(
            covers(&rules, group, resource, "watch"),
            "{group}/{resource}"
        );
    }
    // Secrets as the operator reads them: by name only.
    assert!(covers(&rules, "", "secrets", "get"));
    for verb in ["list", "watch"] {
        assert!(!covers(&rules, "", "secrets", verb), "{verb} secrets");
    }
}
