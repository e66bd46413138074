//! Rendering: from a Gateway and the objects around it ([`Inputs`]) to everything the operator
//! makes of it — the agent configuration and its ConfigMap, the workload, its LoadBalancer
//! Service and RBAC, the Gateway's status and its routes' statuses, and what the credential
//! service hands out. Pure: no API calls, time passed in. The controller (`reconcile`) and
//! `xturn-operator render` both call [`render_gateway`].
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use gateway_api::apis::standard::{
    gatewayclasses::GatewayClass,
    gateways::{
        Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom, GatewayStatus,
        GatewayStatusAddresses, GatewayStatusListeners, GatewayStatusListenersSupportedKinds,
    },
};
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Secret, Service, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{Resource, ResourceExt};
use serde_json::json;
use stunner_config::{
    self as agent, CONFIG_KEY, HEALTH_PORT, METRICS_PORT, StunnerConfig as AgentConfig,
};

use crate::{
    crd::{
        BackendRef, DataplaneSpec, GatewayConfig, GatewayConfigSpec, ParentReference,
        RouteParentStatus, SecretKeyReference, StringOrSecretRef, UDPRoute, UDPRouteStatus,
    },
    ice::{IceAuth, IceSource, Transport},
    inputs::{Inputs, namespace_of},
};

/// The controller name our GatewayClasses carry (`spec.controllerName`), by default.
pub const DEFAULT_CONTROLLER_NAME: &str = "xturn.io/gateway-operator";
/// STUNner's defaults.
pub const DEFAULT_REALM: &str = "stunner.l7mp.io";
pub const DEFAULT_AUTH_LIFETIME_SECS: i64 = 86_400;
pub const DEFAULT_DATAPLANE: &str = "default";
/// How long a terminating agent may drain its allocations (STUNner's default).
pub const DEFAULT_GRACE_SECS: i64 = 3600;
/// The label every rendered object carries, with the Gateway's name.
pub const GATEWAY_LABEL: &str = "xturn.io/gateway";
pub const MANAGED_BY: &str = "xturn-operator";
/// The role every agent's ServiceAccount is bound to (read the ConfigMap).
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
/// Where TLS listener certificates are mounted in the agent's container.
pub const TLS_MOUNT_ROOT: &str = "/etc/xturn/tls";
/// Where the agent keeps state across container restarts (hitless restart).
const STATE_DIR: &str = "/var/lib/xturn";

/// What rendering needs besides the objects.
#[derive(Clone, Debug)]
pub struct Settings {
    pub controller_name: String,
    /// The `xturnd` image when a Dataplane does not name one.
    pub agent_image: String,
    /// Condition timestamps and `observedGeneration` bookkeeping use this.
    pub now: Timestamp,
}

impl Settings {
    pub fn new(agent_image: impl Into<String>, now: Timestamp) -> Settings {
        Settings {
            controller_name: DEFAULT_CONTROLLER_NAME.to_owned(),
            agent_image: agent_image.into(),
            now,
        }
    }
}

/// The workload kind a Dataplane asks for.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Workload {
    Deployment(Deployment),
    DaemonSet(DaemonSet),
}

/// Everything made of one Gateway.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The name shared by the ConfigMap, workload, Service, ServiceAccount, Role and
    /// RoleBinding (the Gateway's, unless the Dataplane sets `workloadName`).
    pub name: String,
    pub namespace: String,
    pub config: AgentConfig,
    pub config_map: ConfigMap,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub workload: Workload,
    pub service: Service,
    pub status: GatewayStatus,
    pub ice: IceSource,
}

/// Why a Gateway gets no (new) relays: its status says so, the running ones stay as they were.
#[derive(Clone, Debug)]
pub struct Refused {
    pub status: GatewayStatus,
    pub reason: String,
}

/// The outcome of rendering one Gateway.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Not ours: its class is missing or names another controller.
    NotOurs,
    Refused(Refused),
    Rendered(Box<Rendered>),
}

/// Whether a GatewayClass is ours.
pub fn is_our_class(class: &GatewayClass, settings: &Settings) -> bool {
    class.spec.controller_name == settings.controller_name
}

/// The GatewayConfig a class's `parametersRef` names, or why there is none.
pub fn class_parameters<'a>(
    inputs: &'a Inputs,
    class: &GatewayClass,
) -> Result<&'a GatewayConfig, String> {
    let Some(reference) = &class.spec.parameters_ref else {
        return Err(format!(
            "GatewayClass {} has no parametersRef naming a GatewayConfig",
            class.name_any()
        ));
    };
    if reference.group != crate::crd::GROUP || reference.kind != "GatewayConfig" {
        return Err(format!(
            "GatewayClass {} parametersRef must name a {}/GatewayConfig, not {}/{}",
            class.name_any(),
            crate::crd::GROUP,
            reference.group,
            reference.kind
        ));
    }
    let namespace = reference.namespace.as_deref().unwrap_or("default");
    inputs
        .gateway_config(namespace, &reference.name)
        .ok_or_else(|| format!("GatewayConfig {namespace}/{} not found", reference.name))
}

/// Renders one Gateway.
pub fn render_gateway(inputs: &Inputs, settings: &Settings, gateway: &Gateway) -> Outcome {
    let Some(class) = inputs.gateway_class(&gateway.spec.gateway_class_name) else {
        return Outcome::NotOurs;
    };
    if !is_our_class(class, settings) {
        return Outcome::NotOurs;
    }
    let namespace = namespace_of(gateway);
    let refuse = |reason: &str, message: String| {
        Outcome::Refused(Refused {
            status: refused_status(gateway, settings, reason, &message),
            reason: message,
        })
    };
    let gwconfig = match class_parameters(inputs, class) {
        Ok(config) => config,
        Err(message) => return refuse("InvalidParameters", message),
    };
    let dataplane_name = gwconfig
        .spec
        .dataplane
        .clone()
        .unwrap_or_else(|| DEFAULT_DATAPLANE.to_owned());
    let dataplane = match inputs.dataplane(&dataplane_name) {
        Some(dataplane) => dataplane.spec.clone(),
        None if gwconfig.spec.dataplane.is_none() => DataplaneSpec::default(),
        None => {
            return refuse(
                "InvalidParameters",
                format!("Dataplane {dataplane_name} (named by the GatewayConfig) not found"),
            );
        }
    };
    let auth = match resolve_auth(inputs, gwconfig) {
        Ok(auth) => auth,
        Err(message) => return refuse("InvalidParameters", message),
    };
    let mode = match dataplane_mode(&dataplane) {
        Ok(mode) => mode,
        Err(message) => return refuse("InvalidParameters", message),
    };
    let kind = dataplane
        .dataplane_resource
        .as_deref()
        .unwrap_or("Deployment");
    if kind != "Deployment" && kind != "DaemonSet" {
        return refuse(
            "InvalidParameters",
            format!(
                "Dataplane {dataplane_name}: dataplaneResource must be Deployment or DaemonSet, not {kind:?}"
            ),
        );
    }
    let name = dataplane
        .workload_name
        .clone()
        .unwrap_or_else(|| gateway.name_any());
    if let Some(older) = older_gateway_named(inputs, settings, gateway, &name) {
        return refuse(
            "InvalidParameters",
            format!(
                "the relay objects' name {name:?} is already used by Gateway {namespace}/{older}; \
                 give this Gateway's GatewayConfig a Dataplane with another workloadName"
            ),
        );
    }

    // Listeners, their routes, and the clusters of those routes.
    let attached = attached_routes(inputs, gateway);
    let mut listener_statuses = Vec::new();
    let mut listeners = Vec::new();
    let mut tls_secrets = BTreeSet::new();
    let mut routed = BTreeSet::new();
    let mut sockets = BTreeMap::new();
    for listener in &gateway.spec.listeners {
        let routes: Vec<&UDPRoute> = attached
            .iter()
            .filter(|(route, parent)| {
                parent
                    .section_name
                    .as_deref()
                    .is_none_or(|s| s == listener.name)
                    && listener_allows(gateway, listener, route)
            })
            .map(|(route, _)| *route)
            .collect();
        // Two listeners on one port and socket type cannot both be served: the first one wins.
        let conflict = listener_socket(listener).and_then(|socket| match sockets.entry(socket) {
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert((listener.name.as_str(), listener.protocol.as_str()));
                None
            }
            std::collections::btree_map::Entry::Occupied(entry) => {
                let (first, protocol) = *entry.get();
                Some(Conflict {
                    reason: if protocol.eq_ignore_ascii_case(&listener.protocol) {
                        "HostnameConflict"
                    } else {
                        "ProtocolConflict"
                    },
                    message: format!(
                        "listener {first} already serves {} port {}",
                        socket.1, socket.0
                    ),
                })
            }
        });
        let (status, rendered) =
            render_listener(inputs, gateway, listener, &routes, conflict, settings);
        listener_statuses.push(status);
        if let Some((rendered, secret)) = rendered {
            routed.extend(routes.iter().map(|r| cluster_name(r)));
            tls_secrets.extend(secret);
            listeners.push(rendered);
        }
    }
    if listeners.is_empty() {
        // Nothing an agent could serve: say why per listener, keep what runs.
        let status = gateway_status(gateway, settings, listener_statuses, &[], false);
        return Outcome::Refused(Refused {
            status,
            reason: "no valid listener".to_owned(),
        });
    }
    let clusters = attached
        .iter()
        .filter(|(route, _)| routed.contains(&cluster_name(route)))
        .map(|(route, _)| cluster_name(route))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter_map(|cluster| {
            let route = attached.iter().find(|(r, _)| cluster_name(r) == cluster)?.0;
            Some(agent::Cluster {
                name: Some(cluster),
                kind: Some("STATIC".to_owned()),
                protocol: Some("UDP".to_owned()),
                endpoints: Some(route_endpoints(inputs, route).endpoints),
            })
        })
        .collect();

    let config = AgentConfig {
        version: Some("v1".to_owned()),
        admin: agent::Admin {
            name: Some(format!("{namespace}/{}", gateway.name_any())),
            loglevel: Some(
                gwconfig
                    .spec
                    .log_level
                    .clone()
                    .unwrap_or_else(|| "all:INFO".to_owned()),
            ),
            metrics_endpoint: Some(
                gwconfig
                    .spec
                    .metrics_endpoint
                    .clone()
                    .unwrap_or_else(|| format!("http://:{METRICS_PORT}/metrics")),
            ),
            healthcheck_endpoint: Some(
                gwconfig
                    .spec
                    .health_check_endpoint
                    .clone()
                    .unwrap_or_else(|| format!("http://:{HEALTH_PORT}")),
            ),
            user_quota: gwconfig.spec.user_quota.filter(|q| *q > 0),
            offload_engine: Some(mode.to_owned()),
            offload_interfaces: dataplane
                .xdp_interfaces
                .clone()
                .or_else(|| dataplane.offload_interfaces.clone())
                .filter(|interfaces| !interfaces.is_empty()),
            license_config: None,
        },
        auth: Some(auth.agent.clone()),
        listeners,
        clusters,
    };

    let owner = owner_reference(gateway);
    let labels = labels(gateway, &name);
    let config_json = match stunner_config::to_json(&config) {
        Ok(json) => json,
        Err(e) => return refuse("Invalid", format!("cannot serialise the agent config: {e}")),
    };
    let objects = (|| -> Result<_, serde_json::Error> {
        let config_map: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(&name, &namespace, &labels, owner.as_ref(), None),
            "data": { CONFIG_KEY: config_json },
        }))?;
        let service_account: ServiceAccount = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": metadata(&name, &namespace, &labels, owner.as_ref(), None),
        }))?;
        let role: Role = serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": metadata(&name, &namespace, &labels, owner.as_ref(), None),
            "rules": [{
                "apiGroups": [""], "resources": ["configmaps"],
                "resourceNames": [name], "verbs": ["get", "list", "watch"],
            }],
        }))?;
        let role_binding: RoleBinding = serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": metadata(&name, &namespace, &labels, owner.as_ref(), None),
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
            "subjects": [{ "kind": "ServiceAccount", "name": name, "namespace": namespace }],
        }))?;
        let workload = workload(
            &name,
            &namespace,
            &labels,
            owner.as_ref(),
            &dataplane,
            kind,
            &config,
            &tls_secrets,
            settings,
        )?;
        let service = service(
            &name,
            &namespace,
            &labels,
            owner.as_ref(),
            gateway,
            gwconfig,
            &config,
        )?;
        Ok((
            config_map,
            service_account,
            role,
            role_binding,
            workload,
            service,
        ))
    })();
    let (config_map, service_account, role, role_binding, workload, service) = match objects {
        Ok(objects) => objects,
        Err(e) => return refuse("Invalid", format!("cannot build the objects: {e}")),
    };

    let addresses = gateway_addresses(inputs, gateway, &namespace, &name, &dataplane);
    let status = gateway_status(
        gateway,
        settings,
        listener_statuses,
        &addresses,
        !config.listeners.is_empty(),
    );
    let ice = IceSource {
        namespace: namespace.clone(),
        gateway: gateway.name_any(),
        realm: auth.agent.realm.clone().unwrap_or_default(),
        auth: auth.ice,
        addresses: addresses.iter().map(|a| a.value.clone()).collect(),
        listeners: config
            .listeners
            .iter()
            .filter_map(|l| {
                let name = l.name.as_deref()?;
                Some((
                    name.rsplit('/').next().unwrap_or(name).to_owned(),
                    Transport::from_protocol(l.protocol.as_deref()?)?,
                    u16::try_from(l.port?).ok()?,
                ))
            })
            .collect(),
    };
    Outcome::Rendered(Box::new(Rendered {
        name,
        namespace,
        config,
        config_map,
        service_account,
        role,
        role_binding,
        workload,
        service,
        status,
        ice,
    }))
}

/// The name of the objects a Gateway of ours gets (its Dataplane's `workloadName`, else its own
/// name), if its parameters resolve.
fn relay_name(inputs: &Inputs, gateway: &Gateway) -> Option<String> {
    let class = inputs.gateway_class(&gateway.spec.gateway_class_name)?;
    let gwconfig = class_parameters(inputs, class).ok()?;
    let dataplane = match &gwconfig.spec.dataplane {
        Some(name) => inputs.dataplane(name)?.spec.workload_name.clone(),
        None => inputs
            .dataplane(DEFAULT_DATAPLANE)
            .and_then(|d| d.spec.workload_name.clone()),
    };
    Some(dataplane.unwrap_or_else(|| gateway.name_any()))
}

/// Another Gateway of ours in the same namespace, older than `gateway` (by creation time, then
/// name), whose objects would have the same `name`: it keeps them and `gateway` is refused.
fn older_gateway_named(
    inputs: &Inputs,
    settings: &Settings,
    gateway: &Gateway,
    name: &str,
) -> Option<String> {
    let age = |g: &Gateway| (g.metadata.creation_timestamp.clone(), g.name_any());
    let namespace = namespace_of(gateway);
    inputs
        .gateways
        .iter()
        .map(AsRef::as_ref)
        .filter(|g| namespace_of(*g) == namespace && g.name_any() != gateway.name_any())
        .filter(|g| g.metadata.deletion_timestamp.is_none())
        .filter(|g| {
            inputs
                .gateway_class(&g.spec.gateway_class_name)
                .is_some_and(|c| is_our_class(c, settings))
        })
        .filter(|g| age(g) < age(gateway))
        .find(|g| relay_name(inputs, g).as_deref() == Some(name))
        .map(|g| g.name_any())
}

/// The authentication a GatewayConfig asks for, for the agent and the credential service.
#[derive(Clone, Debug)]
pub struct ResolvedAuth {
    pub agent: agent::Auth,
    pub ice: IceAuth,
}

fn resolve_auth(inputs: &Inputs, gwconfig: &GatewayConfig) -> Result<ResolvedAuth, String> {
    let spec: &GatewayConfigSpec = &gwconfig.spec;
    let namespace = namespace_of(gwconfig);
    let realm = spec
        .realm
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| DEFAULT_REALM.to_owned());
    let lifetime = spec.auth_lifetime.unwrap_or(DEFAULT_AUTH_LIFETIME_SECS);
    if lifetime <= 0 {
        return Err(format!("authLifetime must be positive, not {lifetime}"));
    }
    // authRef: one Secret with the whole setting (STUNner's).
    let (kind, user, password, secret) = if let Some(reference) = &spec.auth_ref {
        let ns = reference
            .namespace
            .clone()
            .unwrap_or_else(|| namespace.clone());
        let found = inputs
            .secret(&ns, &reference.name)
            .ok_or_else(|| format!("authRef: Secret {ns}/{} not found", reference.name))?;
        (
            secret_value(found, "type").or(spec.auth_type.clone()),
            secret_value(found, "username"),
            secret_value(found, "password"),
            secret_value(found, "secret"),
        )
    } else {
        let value = |field: &str, v: &Option<StringOrSecretRef>| {
            v.as_ref()
                .map(|v| resolve_value(inputs, &namespace, field, v))
                .transpose()
        };
        (
            spec.auth_type.clone(),
            spec.user_name.clone(),
            value("password", &spec.password)?,
            value("sharedSecret", &spec.shared_secret)?,
        )
    };
    let kind = kind.unwrap_or_else(|| "static".to_owned());
    match kind.to_ascii_lowercase().as_str() {
        "static" | "plaintext" => {
            let user = user
                .filter(|u| !u.is_empty())
                .ok_or("authType static needs userName")?;
            let password = password
                .filter(|p| !p.is_empty())
                .ok_or("authType static needs a password")?;
            Ok(ResolvedAuth {
                agent: agent::Auth {
                    kind: Some("static".to_owned()),
                    realm: Some(realm),
                    credentials: Some(agent::Credentials {
                        username: Some(user.clone()),
                        password: Some(password.clone()),
                        secret: None,
                    }),
                },
                ice: IceAuth::Static { user, password },
            })
        }
        // longterm with a password: the password is the TURN REST API shared secret, and the
        // credential service mints `expiry:userName` credentials valid for authLifetime.
        "ephemeral" | "longterm" | "timewindowed" => {
            let secret = secret.or(password).filter(|s| !s.is_empty()).ok_or(
                "authType longterm needs sharedSecret or password (used as the shared secret)",
            )?;
            Ok(ResolvedAuth {
                agent: agent::Auth {
                    kind: Some("ephemeral".to_owned()),
                    realm: Some(realm),
                    credentials: Some(agent::Credentials {
                        username: None,
                        password: None,
                        secret: Some(secret.clone()),
                    }),
                },
                ice: IceAuth::Rest {
                    secret,
                    user_id: user.filter(|u| !u.is_empty()),
                    lifetime_secs: lifetime,
                },
            })
        }
        other => Err(format!(
            "authType {other:?} is not one of static, plaintext, longterm, ephemeral, timewindowed"
        )),
    }
}

fn resolve_value(
    inputs: &Inputs,
    namespace: &str,
    field: &str,
    value: &StringOrSecretRef,
) -> Result<String, String> {
    match value {
        StringOrSecretRef::Value(value) => Ok(value.clone()),
        StringOrSecretRef::Secret(SecretKeyReference {
            name,
            namespace: ns,
            key,
        }) => {
            let ns = ns.as_deref().unwrap_or(namespace);
            let secret = inputs
                .secret(ns, name)
                .ok_or_else(|| format!("{field}: Secret {ns}/{name} not found"))?;
            secret_value(secret, key)
                .ok_or_else(|| format!("{field}: Secret {ns}/{name} has no key {key:?}"))
        }
    }
}

/// A Secret's value for `key`, from `data` (what the API server holds) or `stringData` (what a
/// manifest may say).
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(value) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(value.clone());
    }
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn dataplane_mode(dataplane: &DataplaneSpec) -> Result<&'static str, String> {
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

/// Routes whose parentRefs name this Gateway and that the Gateway's listeners allow
/// (`allowedRoutes.namespaces`: `Same`, the default, or `All`), each with the matching
/// parentRef, in a stable order.
fn attached_routes<'a>(
    inputs: &'a Inputs,
    gateway: &Gateway,
) -> Vec<(&'a UDPRoute, ParentReference)> {
    let mut attached = Vec::new();
    for route in &inputs.routes {
        for parent in &route.spec.parent_refs {
            if refers_to(route, parent, gateway) && namespace_allowed(gateway, parent, route) {
                attached.push((route.as_ref(), parent.clone()));
            }
        }
    }
    attached.sort_by_key(|(r, _)| (namespace_of(*r), r.name_any()));
    attached
}

fn refers_to(route: &UDPRoute, parent: &ParentReference, gateway: &Gateway) -> bool {
    parent.group.as_deref().unwrap_or(GATEWAY_API_GROUP) == GATEWAY_API_GROUP
        && parent.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        && parent.name == gateway.name_any()
        && parent
            .namespace
            .clone()
            .unwrap_or_else(|| namespace_of(route))
            == namespace_of(gateway)
}

/// Whether some listener `parent` names (by `sectionName`, or all) takes routes from the
/// route's namespace.
fn namespace_allowed(gateway: &Gateway, parent: &ParentReference, route: &UDPRoute) -> bool {
    gateway
        .spec
        .listeners
        .iter()
        .filter(|l| parent.section_name.as_deref().is_none_or(|s| s == l.name))
        .any(|l| listener_allows(gateway, l, route))
}

/// Whether `listener` takes routes from the route's namespace: its own Gateway's namespace
/// always (`Same`, the default), others only with `allowedRoutes.namespaces.from: All`
/// (`Selector` is not supported and admits only the Gateway's namespace).
fn listener_allows(gateway: &Gateway, listener: &GatewayListeners, route: &UDPRoute) -> bool {
    namespace_of(route) == namespace_of(gateway)
        || listener
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from.as_ref())
            .is_some_and(|from| matches!(from, GatewayListenersAllowedRoutesNamespacesFrom::All))
}

/// `NAMESPACE/ROUTE`: the cluster a route becomes.
pub fn cluster_name(route: &UDPRoute) -> String {
    format!("{}/{}", namespace_of(route), route.name_any())
}

/// A route's peers, and what could not be resolved.
#[derive(Clone, Debug, Default)]
pub struct RouteEndpoints {
    pub endpoints: Vec<String>,
    /// (reason, message) of the first backend that could not be resolved.
    pub unresolved: Option<(&'static str, String)>,
}

/// The peers of a route: for a Service backend its ClusterIPs and its EndpointSlices' ready
/// addresses (pod IPs); for a StaticService its prefixes; each with the backend's port range.
pub fn route_endpoints(inputs: &Inputs, route: &UDPRoute) -> RouteEndpoints {
    let mut out = RouteEndpoints::default();
    let mut seen = BTreeSet::new();
    let route_ns = namespace_of(route);
    for backend in route.spec.rules.iter().flat_map(|r| &r.backend_refs) {
        let namespace = backend
            .namespace
            .clone()
            .unwrap_or_else(|| route_ns.clone());
        let group = backend.group.as_deref().unwrap_or("");
        let kind = backend.kind.as_deref().unwrap_or("Service");
        let ports = match port_suffix(backend) {
            Ok(ports) => ports,
            Err(message) => {
                out.unresolved.get_or_insert(("UnsupportedValue", message));
                continue;
            }
        };
        let mut push = |ip_or_prefix: String| {
            let text = format_endpoint(&ip_or_prefix, &ports);
            if seen.insert(text.clone()) {
                out.endpoints.push(text);
            }
        };
        match (group, kind) {
            ("", "Service") => {
                let Some(service) = inputs.service(&namespace, &backend.name) else {
                    out.unresolved.get_or_insert((
                        "BackendNotFound",
                        format!("Service {namespace}/{} not found", backend.name),
                    ));
                    continue;
                };
                let spec = service.spec.clone().unwrap_or_default();
                let cluster_ips = spec
                    .cluster_ips
                    .clone()
                    .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
                    .unwrap_or_default();
                for ip in cluster_ips {
                    if ip.parse::<IpAddr>().is_ok() {
                        push(ip);
                    }
                }
                for slice in inputs.endpoint_slices_of(&namespace, &backend.name) {
                    for endpoint in &slice.endpoints {
                        let ready = endpoint
                            .conditions
                            .as_ref()
                            .and_then(|c| c.ready)
                            .unwrap_or(true);
                        if !ready {
                            continue;
                        }
                        for address in &endpoint.addresses {
                            if address.parse::<IpAddr>().is_ok() {
                                push(address.clone());
                            }
                        }
                    }
                }
            }
            (crate::crd::GROUP, "StaticService") => {
                let Some(service) = inputs.static_service(&namespace, &backend.name) else {
                    out.unresolved.get_or_insert((
                        "BackendNotFound",
                        format!("StaticService {namespace}/{} not found", backend.name),
                    ));
                    continue;
                };
                for prefix in &service.spec.prefixes {
                    let valid =
                        prefix.parse::<IpAddr>().is_ok() || prefix.parse::<ipnet::IpNet>().is_ok();
                    if valid {
                        push(prefix.clone());
                    } else {
                        out.unresolved.get_or_insert((
                            "UnsupportedValue",
                            format!(
                                "StaticService {namespace}/{}: {prefix:?} is not an IP prefix",
                                backend.name
                            ),
                        ));
                    }
                }
            }
            _ => {
                out.unresolved.get_or_insert((
                    "InvalidKind",
                    format!(
                        "backend {}: kind {group}/{kind} is not a Service or a {}/StaticService",
                        backend.name,
                        crate::crd::GROUP
                    ),
                ));
            }
        }
    }
    out
}

fn port_suffix(backend: &BackendRef) -> Result<Option<(u16, u16)>, String> {
    let port = |p: i32| u16::try_from(p).ok().filter(|p| *p > 0);
    match (backend.port, backend.end_port) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(format!("backend {}: endPort without port", backend.name)),
        (Some(p), end) => {
            let start = port(p)
                .ok_or_else(|| format!("backend {}: port {p} is not a port", backend.name))?;
            let end = match end {
                None => start,
                Some(e) => port(e).filter(|e| *e >= start).ok_or_else(|| {
                    format!(
                        "backend {}: endPort {e} is below port {p} or not a port",
                        backend.name
                    )
                })?,
            };
            Ok(Some((start, end)))
        }
    }
}

fn format_endpoint(ip_or_prefix: &str, ports: &Option<(u16, u16)>) -> String {
    let Some((start, end)) = ports else {
        return ip_or_prefix.to_owned();
    };
    let range = if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    };
    if ip_or_prefix.contains(':') {
        format!("[{ip_or_prefix}]:{range}")
    } else {
        format!("{ip_or_prefix}:{range}")
    }
}

/// The agent protocol of a Gateway listener protocol, if we serve it.
pub fn listener_protocol(protocol: &str) -> Option<&'static str> {
    match protocol.to_ascii_uppercase().as_str() {
        "TURN-UDP" | "UDP" => Some("TURN-UDP"),
        "TURN-TCP" | "TCP" => Some("TURN-TCP"),
        "TURN-TLS" | "TLS" => Some("TURN-TLS"),
        "TURN-DTLS" | "DTLS" => Some("TURN-DTLS"),
        _ => None,
    }
}

/// The socket a valid listener needs: its port, and TCP (TURN-TCP, TURN-TLS) or UDP
/// (TURN-UDP, TURN-DTLS).
fn listener_socket(listener: &GatewayListeners) -> Option<(u16, &'static str)> {
    let protocol = listener_protocol(&listener.protocol)?;
    let port = u16::try_from(listener.port).ok().filter(|p| *p > 0)?;
    let socket = match protocol {
        "TURN-TCP" | "TURN-TLS" => "TCP",
        _ => "UDP",
    };
    Some((port, socket))
}

/// Why a listener cannot have its port: an earlier listener of the Gateway holds it.
struct Conflict {
    reason: &'static str,
    message: String,
}

/// One listener's status, and its agent listener (with the TLS Secret to mount) when valid.
fn render_listener(
    inputs: &Inputs,
    gateway: &Gateway,
    listener: &GatewayListeners,
    routes: &[&UDPRoute],
    conflict: Option<Conflict>,
    settings: &Settings,
) -> (
    GatewayStatusListeners,
    Option<(agent::Listener, Option<String>)>,
) {
    let generation = gateway.metadata.generation;
    // A listener's conditions keep the transition times of the listener's own current ones.
    let current = gateway
        .status
        .as_ref()
        .and_then(|s| s.listeners.as_ref())
        .and_then(|l| l.iter().find(|l| l.name == listener.name))
        .map(|l| l.conditions.as_slice())
        .unwrap_or_default();
    let cond = |kind: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let existing = current
            .iter()
            .find(|c| c.type_ == kind && c.status == status);
        make_condition(
            kind,
            status,
            reason,
            &message,
            generation,
            settings.now,
            existing,
        )
    };
    let supported = vec![GatewayStatusListenersSupportedKinds {
        group: Some(crate::crd::GROUP.to_owned()),
        kind: "UDPRoute".to_owned(),
    }];
    let mut status = GatewayStatusListeners {
        name: listener.name.clone(),
        attached_routes: i32::try_from(routes.len()).unwrap_or(i32::MAX),
        supported_kinds: Some(supported),
        conditions: Vec::new(),
    };
    let namespace = namespace_of(gateway);
    // The conditions of a listener that is not accepted, for `reason`, plus `more`.
    let not_accepted = |reason: &str, message: String, more: Option<Condition>| {
        let mut conditions = vec![cond("Accepted", false, reason, message)];
        conditions.extend(more);
        conditions.push(cond("ResolvedRefs", true, "ResolvedRefs", String::new()));
        conditions.push(cond(
            "Programmed",
            false,
            "Invalid",
            "listener not accepted".to_owned(),
        ));
        conditions
    };
    let Some(protocol) = listener_protocol(&listener.protocol) else {
        status.conditions = not_accepted(
            "UnsupportedProtocol",
            format!(
                "protocol {:?} is not TURN-UDP, TURN-TCP, TURN-TLS or TURN-DTLS",
                listener.protocol
            ),
            None,
        );
        status.supported_kinds = Some(Vec::new());
        return (status, None);
    };
    let Some(port) = u16::try_from(listener.port).ok().filter(|p| *p > 0) else {
        status.conditions = not_accepted(
            "UnsupportedValue",
            format!("port {} is not a port", listener.port),
            None,
        );
        return (status, None);
    };
    if let Some(conflict) = conflict {
        let conflicted = cond(
            "Conflicted",
            true,
            conflict.reason,
            conflict.message.clone(),
        );
        status.conditions = not_accepted("PortUnavailable", conflict.message, Some(conflicted));
        return (status, None);
    }
    let mut cert = None;
    let mut key = None;
    let mut secret_name = None;
    if protocol == "TURN-TLS" || protocol == "TURN-DTLS" {
        let reference = listener
            .tls
            .as_ref()
            .and_then(|t| t.certificate_refs.as_ref())
            .and_then(|refs| refs.first());
        let problem = match reference {
            None => Some(format!(
                "{protocol} needs tls.certificateRefs naming a Secret"
            )),
            Some(r)
                if r.kind.as_deref().unwrap_or("Secret") != "Secret"
                    || !r.group.as_deref().unwrap_or("").is_empty() =>
            {
                Some(format!(
                    "certificateRef {}: only core Secrets are supported",
                    r.name
                ))
            }
            Some(r) if r.namespace.as_deref().is_some_and(|ns| ns != namespace) => Some(format!(
                "certificateRef {}: a Secret in another namespace is not supported",
                r.name
            )),
            Some(r) => match inputs.secret(&namespace, &r.name) {
                None => Some(format!(
                    "certificate Secret {namespace}/{} not found",
                    r.name
                )),
                Some(s)
                    if secret_value(s, "tls.crt").is_none()
                        || secret_value(s, "tls.key").is_none() =>
                {
                    Some(format!(
                        "Secret {namespace}/{} lacks tls.crt or tls.key",
                        r.name
                    ))
                }
                Some(_) => {
                    let dir = format!("{TLS_MOUNT_ROOT}/{}", r.name);
                    cert = Some(format!("{dir}/tls.crt"));
                    key = Some(format!("{dir}/tls.key"));
                    secret_name = Some(r.name.clone());
                    None
                }
            },
        };
        if let Some(message) = problem {
            status.conditions = vec![
                cond("Accepted", true, "Accepted", String::new()),
                cond("ResolvedRefs", false, "InvalidCertificateRef", message),
                cond(
                    "Programmed",
                    false,
                    "Invalid",
                    "certificate not resolved".to_owned(),
                ),
            ];
            return (status, None);
        }
    }
    status.conditions = vec![
        cond("Accepted", true, "Accepted", String::new()),
        cond("ResolvedRefs", true, "ResolvedRefs", String::new()),
        cond("Programmed", true, "Programmed", String::new()),
    ];
    let rendered = agent::Listener {
        name: Some(format!(
            "{namespace}/{}/{}",
            gateway.name_any(),
            listener.name
        )),
        protocol: Some(protocol.to_owned()),
        address: Some("$STUNNER_ADDR".to_owned()),
        port: Some(i64::from(port)),
        cert,
        key,
        // Always written: an empty list reaches no peer at all.
        routes: Some(
            routes
                .iter()
                .map(|r| cluster_name(r))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        ),
        ..agent::Listener::default()
    };
    (status, Some((rendered, secret_name)))
}

/// A Gateway API condition; the transition time of the Gateway's current condition of the same
/// type and status is kept.
fn condition(
    gateway: &Gateway,
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    settings: &Settings,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let existing = gateway
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == kind && c.status == status));
    make_condition(
        kind,
        status,
        reason,
        message,
        generation,
        settings.now,
        existing,
    )
}

pub fn make_condition(
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
    existing: Option<&Condition>,
) -> Condition {
    Condition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: existing.map_or(Time(now), |c| c.last_transition_time.clone()),
    }
}

fn refused_status(
    gateway: &Gateway,
    settings: &Settings,
    reason: &str,
    message: &str,
) -> GatewayStatus {
    let generation = gateway.metadata.generation;
    GatewayStatus {
        addresses: gateway.status.as_ref().and_then(|s| s.addresses.clone()),
        conditions: Some(vec![
            condition(
                gateway, "Accepted", false, reason, message, generation, settings,
            ),
            condition(
                gateway,
                "Programmed",
                false,
                "Invalid",
                message,
                generation,
                settings,
            ),
        ]),
        listeners: gateway.status.as_ref().and_then(|s| s.listeners.clone()),
        ..GatewayStatus::default()
    }
}

fn gateway_status(
    gateway: &Gateway,
    settings: &Settings,
    listeners: Vec<GatewayStatusListeners>,
    addresses: &[GatewayStatusAddresses],
    any_listener: bool,
) -> GatewayStatus {
    let generation = gateway.metadata.generation;
    let cond = |kind: &str, ok: bool, reason: &str, message: &str| {
        condition(gateway, kind, ok, reason, message, generation, settings)
    };
    let all_valid = listeners.iter().all(|l| {
        l.conditions
            .iter()
            .filter(|c| ["Accepted", "ResolvedRefs", "Programmed"].contains(&c.type_.as_str()))
            .all(|c| c.status == "True")
    });
    let accepted = if all_valid {
        cond("Accepted", true, "Accepted", "")
    } else if any_listener {
        cond(
            "Accepted",
            true,
            "ListenersNotValid",
            "some listeners are not valid; see status.listeners",
        )
    } else {
        cond("Accepted", false, "ListenersNotValid", "no valid listener")
    };
    let programmed = if !any_listener {
        cond("Programmed", false, "Invalid", "no valid listener")
    } else if addresses.is_empty() {
        cond(
            "Programmed",
            false,
            "AddressNotAssigned",
            "waiting for the LoadBalancer Service's address",
        )
    } else {
        cond("Programmed", true, "Programmed", "")
    };
    GatewayStatus {
        addresses: (!addresses.is_empty()).then(|| addresses.to_vec()),
        conditions: Some(vec![accepted, programmed]),
        listeners: Some(listeners),
        ..GatewayStatus::default()
    }
}

/// The Gateway's public addresses: the LoadBalancer Service's ingress, else the requested
/// `spec.addresses`, else (host network) the nodes' external or internal IPs.
fn gateway_addresses(
    inputs: &Inputs,
    gateway: &Gateway,
    namespace: &str,
    service_name: &str,
    dataplane: &DataplaneSpec,
) -> Vec<GatewayStatusAddresses> {
    let address = |value: String| {
        let kind = if value.parse::<IpAddr>().is_ok() {
            "IPAddress"
        } else {
            "Hostname"
        };
        GatewayStatusAddresses {
            r#type: Some(kind.to_owned()),
            value,
        }
    };
    let ingress: Vec<_> = inputs
        .service(namespace, service_name)
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        .map(address)
        .collect();
    if !ingress.is_empty() {
        return ingress;
    }
    let requested: Vec<_> = gateway
        .spec
        .addresses
        .iter()
        .flatten()
        .filter_map(|a| a.value.clone())
        .map(address)
        .collect();
    if !requested.is_empty() {
        return requested;
    }
    if dataplane.host_network == Some(true) {
        let mut nodes = Vec::new();
        for wanted in ["ExternalIP", "InternalIP"] {
            for node in &inputs.nodes {
                let found = node
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.as_ref())
                    .and_then(|a| a.iter().find(|a| a.type_ == wanted));
                if let Some(found) = found {
                    nodes.push(address(found.address.clone()));
                }
            }
            if !nodes.is_empty() {
                return nodes;
            }
        }
    }
    Vec::new()
}

/// The status of a route as seen by every one of our Gateways it names; entries of other
/// controllers are kept. `gateways` are the Gateways considered ours.
pub fn route_status(
    inputs: &Inputs,
    settings: &Settings,
    route: &UDPRoute,
    gateways: &[&Gateway],
) -> UDPRouteStatus {
    let mut parents: Vec<RouteParentStatus> = route
        .status
        .as_ref()
        .map(|s| {
            s.parents
                .iter()
                .filter(|p| p.controller_name != settings.controller_name)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let resolved = route_endpoints(inputs, route);
    let generation = route.metadata.generation;
    let existing = |kind: &str, status: &str, parent: &ParentReference| {
        route
            .status
            .as_ref()
            .and_then(|s| s.parents.iter().find(|p| &p.parent_ref == parent))
            .and_then(|p| {
                p.conditions
                    .iter()
                    .find(|c| c.type_ == kind && c.status == status)
            })
            .cloned()
    };
    for parent in &route.spec.parent_refs {
        let Some(gateway) = gateways.iter().find(|g| refers_to(route, parent, g)) else {
            continue;
        };
        let cond = |kind: &str, ok: bool, reason: &str, message: &str| {
            let status = if ok { "True" } else { "False" };
            make_condition(
                kind,
                status,
                reason,
                message,
                generation,
                settings.now,
                existing(kind, status, parent).as_ref(),
            )
        };
        let listener_exists = parent
            .section_name
            .as_deref()
            .is_none_or(|section| gateway.spec.listeners.iter().any(|l| l.name == section));
        let accepted = if !listener_exists {
            cond(
                "Accepted",
                false,
                "NoMatchingParent",
                "no listener of that sectionName",
            )
        } else if !namespace_allowed(gateway, parent, route) {
            cond(
                "Accepted",
                false,
                "NotAllowedByListeners",
                "the Gateway's listeners do not allow routes from this namespace",
            )
        } else {
            cond("Accepted", true, "Accepted", "")
        };
        let refs = match &resolved.unresolved {
            None => cond("ResolvedRefs", true, "ResolvedRefs", ""),
            Some((reason, message)) => cond("ResolvedRefs", false, reason, message),
        };
        parents.push(RouteParentStatus {
            parent_ref: parent.clone(),
            controller_name: settings.controller_name.clone(),
            conditions: vec![accepted, refs],
        });
    }
    UDPRouteStatus { parents }
}

/// The Gateway as the controlling owner; `None` for a Gateway read from a file (no uid), whose
/// objects are then rendered without owner references.
fn owner_reference(gateway: &Gateway) -> Option<OwnerReference> {
    let mut owner = gateway.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

fn labels(gateway: &Gateway, name: &str) -> BTreeMap<String, String> {
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

fn selector(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| k.as_str() != "app.kubernetes.io/managed-by")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn metadata(
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
fn workload(
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
fn port_name(listener: &str, index: usize, used: &mut BTreeSet<String>) -> String {
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

fn service(
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
