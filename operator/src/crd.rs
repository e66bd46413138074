//! Our custom resources, in STUNner's API group and version (`stunner.l7mp.io/v1`) so that
//! STUNner manifests apply unchanged: [`GatewayConfig`], [`UDPRoute`], [`StaticService`] and
//! [`Dataplane`]. Field names are STUNner's; fields STUNner has that xturn does not use are
//! accepted and documented as ignored. `xturn-operator crds` prints them as YAML.
use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Affinity, EnvFromSource, EnvVar, LocalObjectReference, PodSecurityContext,
        ResourceRequirements, SecurityContext, Toleration, TopologySpreadConstraint,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every resource here.
pub const GROUP: &str = "stunner.l7mp.io";

/// `GatewayConfig`: realm, authentication and logging for the Gateways of a GatewayClass that
/// names it in `parametersRef`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "stunner.l7mp.io",
    version = "v1",
    kind = "GatewayConfig",
    namespaced,
    shortname = "gwconf",
    category = "stunner",
    printcolumn = r#"{"name":"Realm","type":"string","jsonPath":".spec.realm"}"#,
    printcolumn = r#"{"name":"Dataplane","type":"string","jsonPath":".spec.dataplane"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GatewayConfigSpec {
    /// The STUN/TURN realm. Default `stunner.l7mp.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// `static` (alias `plaintext`): one user name and password. `ephemeral` (aliases
    /// `longterm`, `timewindowed`): TURN REST API credentials, `expiry:userid` with an
    /// HMAC-SHA1 password, valid for `authLifetime` seconds. Default `static`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<String>,
    /// `static`: the user name. `ephemeral`: the user id put in minted user names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// A string, or a Secret reference `{name, namespace, key}`. `static`: the password.
    /// `ephemeral`: the shared secret, when `sharedSecret` is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "string_or_secret_ref")]
    pub password: Option<StringOrSecretRef>,
    /// `ephemeral`: the TURN REST API shared secret (a string or a Secret reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "string_or_secret_ref")]
    pub shared_secret: Option<StringOrSecretRef>,
    /// A Secret holding the whole authentication setting, keys `type`, `username`,
    /// `password`, and `secret` or `sharedSecret` (STUNner's `authRef`); it overrides the
    /// fields above. In another namespace it needs a ReferenceGrant there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_ref: Option<SecretObjectReference>,
    /// Lifetime of minted credentials, in seconds. Default 86400 (one day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_lifetime: Option<i64>,
    /// The agents' log level: `all:INFO`, `all:DEBUG,turn:INFO`, or a tracing filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Annotations put on every Gateway's LoadBalancer Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_service_annotations: Option<BTreeMap<String, String>>,
    /// The Dataplane that shapes the agents' workload. Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<String>,
    /// The agents' metrics endpoint, `http://ADDRESS:PORT`. Default `http://:8080/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_endpoint: Option<String>,
    /// The agents' health-check endpoint. Default `http://:8086`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_endpoint: Option<String>,
    /// Allocations per user; unset: the agent's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_quota: Option<i64>,
    /// A STUN server only: Binding requests are answered, every TURN request is refused (403)
    /// and no credentials are needed (STUNner's `stunMode`). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stun_mode: Option<bool>,
}

/// A value given inline or kept in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum StringOrSecretRef {
    Value(String),
    Secret(SecretKeyReference),
}

/// A key of a Secret. `namespace` defaults to the namespace of the object that refers to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyReference {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub key: String,
}

/// A Secret, by name and optional namespace (Gateway API's `SecretObjectReference`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A structural schema for "a string or an object": no `type`, unknown fields preserved. The
/// operator checks the shape and reports a bad one in the Gateway's status.
fn string_or_secret_ref(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A string, or a Secret reference {name, namespace, key}.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// `UDPRoute`: which peers clients of a Gateway may reach. Each route becomes one cluster of the
/// agent's configuration; peers outside every routed cluster are refused (403).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "stunner.l7mp.io",
    version = "v1",
    kind = "UDPRoute",
    namespaced,
    status = "UDPRouteStatus",
    category = "stunner",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct UDPRouteSpec {
    /// The Gateways (and optionally their listeners, by `sectionName`) this route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub rules: Vec<UDPRouteRule>,
}

/// A Gateway a route attaches to. `namespace` defaults to the route's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A listener name: attach to that listener only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Ignored (STUNner's; listeners are chosen by `sectionName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UDPRouteRule {
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

/// A backend: a Service (the default kind, core group) or a StaticService
/// (`group: stunner.l7mp.io`, `kind: StaticService`). With `port`, only that port (or the range
/// `port`..=`endPort`) of the backend's addresses is reachable; without, every port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
    /// Ignored: TURN has no load balancing across backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// What the operator says of a route, per parent Gateway (Gateway API's RouteStatus).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UDPRouteStatus {
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentReference,
    pub controller_name: String,
    #[serde(default)]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// `StaticService`: peers outside Kubernetes, by IP prefix, usable as a UDPRoute backend.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "stunner.l7mp.io",
    version = "v1",
    kind = "StaticService",
    namespaced,
    shortname = "ssvc",
    category = "stunner"
)]
#[serde(rename_all = "camelCase")]
pub struct StaticServiceSpec {
    /// `IP` or `IP/LEN`, IPv4 or IPv6.
    #[serde(default)]
    pub prefixes: Vec<String>,
}

/// `Dataplane`: the shape of the agents' workload (cluster-scoped, like STUNner's; GatewayConfig's
/// `dataplane` names it, default `default`; without one the operator's defaults apply). Every
/// field of STUNner's v1 Dataplane is here. A Dataplane written for STUNner (its `l7mp/stunnerd`
/// image, the `stunnerd` command and its flags) runs `xturnd` instead: see
/// `render::agent_command`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "stunner.l7mp.io",
    version = "v1",
    kind = "Dataplane",
    shortname = "dps",
    category = "stunner"
)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneSpec {
    /// The `xturnd` image. Default: the operator's `--agent-image`. STUNner's images
    /// (`l7mp/stunnerd`, `docker.io/l7mp/stunnerd`, …) are replaced by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Secrets for pulling the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// The container's entrypoint. Default `["xturnd"]`; `stunnerd` (any path) means `xturnd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Extra arguments, after the ones the operator sets. stunnerd's flags are translated
    /// (`--udp-thread-num N` → `--threads N`; `-w`/`--watch`, `-c`/`--config` and `--id`,
    /// which the operator's own `--config-map` covers, are dropped); others are passed as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Extra environment variables of the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Vec<EnvFromSource>>,
    /// Deployment replicas. Unset or 1: not enforced after the Deployment is created (STUNner's
    /// rule), so an autoscaler (HPA, KEDA) owns the count; any other value is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// The pod's security context; merged over the operator's (see docs/operator.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// The agent container's security context; merged over the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_security_context: Option<SecurityContext>,
    /// No liveness and readiness probes (the agent still serves them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_health_check: Option<bool>,
    /// Publish the metrics port on the pod and add Prometheus scrape annotations. xturn always
    /// serves metrics and publishes them by default; `false` leaves out the annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_metrics_endpoint: Option<bool>,
    /// `Deployment` (default) or `DaemonSet` (one agent per node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_resource: Option<String>,
    /// Run the agents in the node's network namespace (XDP on the node's own interfaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    /// `auto` (default), `tc`, `xdp` or `userspace`: the agents' `--dataplane`. In a pod (no
    /// hostNetwork) auto chooses TC; with hostNetwork on a forwarding NIC with native XDP, XDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Extra interfaces the agents attach XDP to, besides those holding the listener addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_interfaces: Option<Vec<String>>,
    /// STUNner's name for `mode`: `None`, `XDP`, `TC`, `Auto`. `mode` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_engine: Option<String>,
    /// STUNner's name for `xdpInterfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_interfaces: Option<Vec<String>>,
    /// The name of the workload, its Service, ConfigMap and ServiceAccount. Default: the
    /// Gateway's name. (Lets a manifest written for a fixed name, such as a KEDA ScaledObject
    /// targeting `stunner`, find the Deployment.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_name: Option<String>,
    /// Seconds a terminating agent drains its allocations. Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// Labels added to the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations added to the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Every CRD, in the order `xturn-operator crds` prints them.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        GatewayConfig::crd(),
        UDPRoute::crd(),
        StaticService::crd(),
        Dataplane::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream (what `deploy/crds.yaml` holds).
pub fn yaml() -> Result<String, serde_norway::Error> {
    let mut out = String::from(
        "# Generated by `xturn-operator crds`; do not edit (a test checks it is current).\n",
    );
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_a_string_or_a_secret_reference() {
        let inline: GatewayConfigSpec = serde_json::from_str(r#"{"password":"pass-1"}"#).unwrap();
        assert_eq!(
            inline.password,
            Some(StringOrSecretRef::Value("pass-1".into()))
        );
        let secret: GatewayConfigSpec = serde_json::from_str(
            r#"{"password":{"name":"stunner-credentials","namespace":"stunner","key":"password"}}"#,
        )
        .unwrap();
        assert_eq!(
            secret.password,
            Some(StringOrSecretRef::Secret(SecretKeyReference {
                name: "stunner-credentials".into(),
                namespace: Some("stunner".into()),
                key: "password".into(),
            }))
        );
    }

    #[test]
    fn crds_are_structural_and_in_stunners_group() {
        for crd in all() {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.versions.len(), 1);
            assert_eq!(crd.spec.versions[0].name, "v1");
            let text = serde_json::to_string(&crd).unwrap();
            // No untyped nodes but the two documented string-or-object fields.
            assert!(!text.contains("\"anyOf\""), "{}", crd.spec.names.kind);
        }
        let gwconf = serde_json::to_value(GatewayConfig::crd()).unwrap();
        let password = &gwconf["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["password"];
        assert_eq!(password["x-kubernetes-preserve-unknown-fields"], true);
        assert!(password.get("type").is_none());
    }
}
