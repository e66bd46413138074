//! Everything that runs the operator in a cluster, as `xturn-operator install` prints it and
//! `deploy/install.yaml` holds it: our CRDs; the namespace `xturn-system`; the operator (a
//! Deployment of two replicas that elect a leader on a Lease) with its RBAC; the credential
//! service (a Deployment of two replicas with read-only RBAC) and its Service, also reachable
//! at STUNner's address `stunner-auth.stunner-system:8088`. The images are the ones
//! `cargo xtask image` builds: `REGISTRY/xturn-operator:TAG` and `REGISTRY/xturnd:TAG`.
use serde_json::{Value, json};

use crate::{
    crd,
    leader::LEASE_NAME,
    render::{DEFAULT_CONTROLLER_NAMES, GATEWAY_API_GROUP},
};

/// Where the operator and the credential service run.
pub const NAMESPACE: &str = "xturn-system";
/// The operator's image name (without registry and tag); `cargo xtask image` builds it.
pub const OPERATOR_IMAGE: &str = "xturn-operator";
/// The agent's image name.
pub const AGENT_IMAGE: &str = "xturnd";
/// The registry the images are named under unless told otherwise.
pub const DEFAULT_REGISTRY: &str = "ghcr.io/xturn";
/// The credential service's port (STUNner's).
pub const AUTH_PORT: u16 = 8088;
/// The operator's health port.
pub const HEALTH_PORT: u16 = 8081;

/// What to install.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// Where the images are, e.g. `registry.example.com/xturn`.
    pub registry: String,
    /// The images' tag (default: this operator's version).
    pub tag: String,
    /// Secrets for pulling the images from a private registry (in `xturn-system`).
    pub image_pull_secrets: Vec<String>,
}

impl Default for InstallOptions {
    fn default() -> InstallOptions {
        InstallOptions {
            registry: DEFAULT_REGISTRY.to_owned(),
            tag: env!("CARGO_PKG_VERSION").to_owned(),
            image_pull_secrets: Vec::new(),
        }
    }
}

impl InstallOptions {
    pub fn image(&self, name: &str) -> String {
        let registry = self.registry.trim_end_matches('/');
        if registry.is_empty() {
            format!("{name}:{}", self.tag)
        } else {
            format!("{registry}/{name}:{}", self.tag)
        }
    }
}

fn labels(component: &str) -> Value {
    json!({"app.kubernetes.io/name": component, "app.kubernetes.io/part-of": "xturn"})
}

fn meta(name: &str, component: &str) -> Value {
    json!({"name": name, "namespace": NAMESPACE, "labels": labels(component)})
}

/// What the operator reads: its inputs, cluster-wide.
fn read_rules() -> Vec<Value> {
    vec![
        json!({"apiGroups": [GATEWAY_API_GROUP],
               "resources": ["gatewayclasses", "gateways", "udproutes", "referencegrants"],
               "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": [crd::GROUP],
               "resources": ["gatewayconfigs", "udproutes", "staticservices", "dataplanes"],
               "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": [""],
               "resources": ["services", "nodes", "namespaces"],
               "verbs": ["get", "list", "watch"]}),
        // Only the Secrets Gateways refer to, each by name: no list or watch, so the rest of
        // the cluster's Secrets are never read.
        json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}),
        json!({"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
               "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": ["apps"], "resources": ["deployments", "daemonsets"],
               "verbs": ["get", "list", "watch"]}),
    ]
}

/// The operator's ClusterRole: its inputs, the statuses and finalizer it writes, and what it
/// creates for each Gateway.
fn operator_rules() -> Vec<Value> {
    let mut rules = read_rules();
    rules.extend([
        // The finalizer on Gateways, and the statuses.
        json!({"apiGroups": [GATEWAY_API_GROUP],
               "resources": ["gateways", "gateways/status", "gatewayclasses/status", "udproutes/status"],
               "verbs": ["patch", "update"]}),
        // Owner references with blockOwnerDeletion to a Gateway: what the
        // OwnerReferencesPermissionEnforcement admission plugin asks for.
        json!({"apiGroups": [GATEWAY_API_GROUP], "resources": ["gateways/finalizers"],
               "verbs": ["update"]}),
        json!({"apiGroups": [crd::GROUP], "resources": ["udproutes/status"],
               "verbs": ["patch", "update"]}),
        // What the operator creates for each Gateway (server-side apply) and watches to repair.
        // configmaps get/list/watch is also what each agent's Role grants: RBAC lets the
        // operator grant only what it holds.
        json!({"apiGroups": [""], "resources": ["configmaps", "serviceaccounts", "services"],
               "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}),
        json!({"apiGroups": ["apps"], "resources": ["deployments", "daemonsets"],
               "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}),
        json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
               "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}),
        // Each relay's copy of its TLS listeners' certificates and of its credentials
        // (server-side apply only).
        json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch"]}),
    ]);
    rules
}

/// A Deployment of `replicas` running `xturn-operator ARGS` as `account`, unprivileged
/// (Pod Security "restricted"), probed on `port`'s `/healthz`, spread over nodes.
fn deployment(
    options: &InstallOptions,
    name: &str,
    account: &str,
    args: &[&str],
    port: (&str, u16),
    env: &[Value],
) -> Value {
    let probe = |period: u32| json!({"httpGet": {"path": "/healthz", "port": port.0}, "periodSeconds": period});
    let mut pod = json!({
        "serviceAccountName": account,
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        // Two replicas on two nodes where there are two.
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": name}},
        }],
        "containers": [{
            "name": name,
            "image": options.image(OPERATOR_IMAGE),
            "args": args,
            "env": env,
            "ports": [{"name": port.0, "containerPort": port.1, "protocol": "TCP"}],
            "livenessProbe": probe(10),
            "readinessProbe": probe(5),
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
            },
        }],
    });
    if !options.image_pull_secrets.is_empty() {
        pod["imagePullSecrets"] = options
            .image_pull_secrets
            .iter()
            .map(|s| json!({"name": s}))
            .collect();
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta(name, name),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {"metadata": {"labels": labels(name)}, "spec": pod},
        },
    })
}

/// A ServiceAccount `name`, bound to a ClusterRole `name` with `rules`.
fn account_with_cluster_role(name: &str, rules: &[Value]) -> [Value; 3] {
    [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name, name)}),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels(name)},
            "rules": rules,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": labels(name)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
        }),
    ]
}

/// Every object, in apply order (CRDs and namespaces first).
pub fn objects(options: &InstallOptions) -> Result<Vec<Value>, serde_json::Error> {
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {
            "app.kubernetes.io/part-of": "xturn",
            // Both Deployments run unprivileged.
            "pod-security.kubernetes.io/enforce": "restricted",
        }},
    })];
    for crd in crd::all() {
        out.push(serde_json::to_value(crd)?);
    }
    let operator = "xturn-operator";
    let auth = "xturn-auth";
    out.extend(account_with_cluster_role(operator, &operator_rules()));
    // Leader election: the Lease, in the operator's namespace only.
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": meta("xturn-operator-leader-election", operator),
        "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "resourceNames": [LEASE_NAME], "verbs": ["get", "update", "patch"]},
        ],
    }));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": meta("xturn-operator-leader-election", operator),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "xturn-operator-leader-election"},
        "subjects": [{"kind": "ServiceAccount", "name": operator, "namespace": NAMESPACE}],
    }));
    let downward = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let controller_names = DEFAULT_CONTROLLER_NAMES.join(",");
    out.push(deployment(
        options,
        operator,
        operator,
        &["run", "--leader-elect", "--health-listen", "0.0.0.0:8081"],
        ("health", HEALTH_PORT),
        &[
            downward("POD_NAME", "metadata.name"),
            downward("POD_NAMESPACE", "metadata.namespace"),
            // The xturnd image for Dataplanes that name none (or name STUNner's).
            json!({"name": "XTURN_AGENT_IMAGE", "value": options.image(AGENT_IMAGE)}),
            // GatewayClasses served: ours and STUNner's (so STUNner's manifests apply).
            json!({"name": "XTURN_CONTROLLER_NAME", "value": controller_names}),
            json!({"name": "XTURN_LOG", "value": "info"}),
        ],
    ));
    // The credential service: read-only, scaled on its own.
    out.extend(account_with_cluster_role(auth, &read_rules()));
    out.push(deployment(
        options,
        auth,
        auth,
        &["credential-service", "--listen", "0.0.0.0:8088"],
        ("http", AUTH_PORT),
        &[
            json!({"name": "XTURN_CONTROLLER_NAME", "value": controller_names}),
            json!({"name": "XTURN_LOG", "value": "info"}),
        ],
    ));
    out.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta(auth, auth),
        "spec": {
            "selector": {"app.kubernetes.io/name": auth},
            "ports": [{"name": "http", "port": AUTH_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }));
    // Where STUNner's clients look for the credential service: a DNS alias of the one above.
    out.push(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "stunner-system", "labels": {"app.kubernetes.io/part-of": "xturn"}},
    }));
    out.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "stunner-auth", "namespace": "stunner-system", "labels": labels(auth)},
        "spec": {
            "type": "ExternalName",
            "externalName": format!("{auth}.{NAMESPACE}.svc.cluster.local"),
            "ports": [{"name": "stunner-auth-server", "port": AUTH_PORT, "protocol": "TCP"}],
        },
    }));
    Ok(out)
}

/// [`objects`] as one multi-document YAML stream (what `deploy/install.yaml` holds).
pub fn yaml(options: &InstallOptions) -> Result<String, InstallError> {
    let mut text = String::from(
        "# Generated by `xturn-operator install`; do not edit (a test checks it is current).\n",
    );
    for object in objects(options)? {
        text.push_str("---\n");
        text.push_str(&serde_norway::to_string(&object)?);
    }
    Ok(text)
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Yaml(#[from] serde_norway::Error),
}
