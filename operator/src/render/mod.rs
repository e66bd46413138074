//! Rendering: from a Gateway and the objects around it ([`Inputs`]) to everything the operator
//! makes of it — the agent configuration and its ConfigMap, the workload, its LoadBalancer
//! Service and RBAC, the Gateway's status and its routes' statuses, and what the credential
//! service hands out. Pure: no API calls, time passed in. The controller (`reconcile`) and
//! `xturn-operator render` both call [`render_gateway`].
use std::collections::{BTreeMap, BTreeSet};

use gateway_api::apis::standard::{
    gatewayclasses::GatewayClass,
    gateways::{Gateway, GatewayStatus},
};
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Secret, Service, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
    jiff::Timestamp,
};
use kube::ResourceExt;
use serde_json::json;
use stunner_config::{
    self as agent, CONFIG_KEY, HEALTH_PORT, METRICS_PORT, StunnerConfig as AgentConfig,
};

use crate::{
    crd::{DataplaneSpec, GatewayConfig, UDPRoute},
    ice::{IceSource, Transport},
    inputs::{Inputs, namespace_of},
};

mod auth;
pub mod dataplane;
mod objects;
mod routes;
mod status;

pub use auth::*;
pub use dataplane::{AgentCommand, agent_command, dataplane_mode};
pub use objects::*;
pub use routes::*;
pub use status::*;

/// Our own GatewayClass controller name (`spec.controllerName`).
pub const DEFAULT_CONTROLLER_NAME: &str = "xturn.io/gateway-operator";
/// STUNner's: the GatewayClass of STUNner's Helm chart and examples names it. Served by default,
/// so that STUNner's manifests apply unchanged.
pub const STUNNER_CONTROLLER_NAME: &str = "stunner.l7mp.io/gateway-operator";
/// The controller names served unless told otherwise.
pub const DEFAULT_CONTROLLER_NAMES: [&str; 2] = [DEFAULT_CONTROLLER_NAME, STUNNER_CONTROLLER_NAME];
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
/// Where the agent's credentials Secret (`NAME-auth`) is mounted in its container.
pub const AUTH_MOUNT_ROOT: &str = "/etc/xturn/auth";
/// The namespace label of Pod Security admission's enforced level.
pub const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
/// The Gateway condition listing what was translated or left out (`Rendered::notes`).
pub const TRANSLATED_CONDITION: &str = "xturn.io/Translated";
/// Where the agent keeps state across container restarts (hitless restart).
pub(super) const STATE_DIR: &str = "/var/lib/xturn";

/// What rendering needs besides the objects.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The GatewayClass `controllerName`s served (ours and STUNner's by default).
    pub controller_names: Vec<String>,
    /// The `xturnd` image when a Dataplane does not name one.
    pub agent_image: String,
    /// Condition timestamps and `observedGeneration` bookkeeping use this.
    pub now: Timestamp,
}

impl Settings {
    /// Whether `controller_name` is one this operator serves.
    pub fn serves(&self, controller_name: &str) -> bool {
        self.controller_names.iter().any(|c| c == controller_name)
    }

    pub fn new(agent_image: impl Into<String>, now: Timestamp) -> Settings {
        Settings {
            controller_names: DEFAULT_CONTROLLER_NAMES.map(str::to_owned).to_vec(),
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
    /// The TLS listeners' certificates (`NAME-certificates`), when there are TLS listeners.
    pub certificates: Option<Secret>,
    /// The credentials the agent authenticates with (`NAME-auth`), unless it is a STUN server
    /// only; mounted at [`AUTH_MOUNT_ROOT`], so they stay out of the ConfigMap.
    pub credentials: Option<Secret>,
    pub status: GatewayStatus,
    pub ice: IceSource,
    /// What was translated or left out on the way (a STUNner Dataplane's image and flags, a
    /// listener a single-protocol LoadBalancer cannot carry, an annotation that could not be
    /// used), one sentence each; also in the Gateway's `xturn.io/Translated` condition.
    pub notes: Vec<String>,
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
    settings.serves(&class.spec.controller_name)
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

    let agent = agent_command(&dataplane, &settings.agent_image);
    let service_annotations = service_annotations(gateway, gwconfig);
    let service_options = ServiceOptions::from_annotations(&service_annotations);
    let mut notes = agent.notes.clone();
    notes.extend(service_options.notes.iter().cloned());
    // The kernel path needs privileges (capabilities, the host's bpffs) that Pod Security
    // "baseline" and "restricted" refuse: there, `auto` means userspace, and the pods start.
    let enforced = inputs
        .namespace(&namespace)
        .and_then(|n| n.labels().get(POD_SECURITY_ENFORCE).cloned());
    let mode = match enforced.as_deref() {
        Some(level @ ("baseline" | "restricted")) if mode == "Auto" => {
            notes.push(format!(
                "namespace {namespace} enforces Pod Security {level:?}: the agents run the \
                 userspace data plane, without privileges"
            ));
            "None"
        }
        _ => mode,
    };

    // Listeners, their routes, and the clusters of those routes.
    let attached = attached_routes(inputs, gateway);
    let mut listener_statuses = Vec::new();
    let mut listeners = Vec::new();
    let mut certificates = BTreeMap::new();
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
                    && listener_allows(inputs, gateway, listener, route)
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
        if let Some((mut rendered, pem)) = rendered {
            routed.extend(routes.iter().map(|r| cluster_name(r)));
            if let Some(pem) = pem {
                certificates.insert(listener.name.clone(), pem);
            }
            // STUNner's targetport annotation moves the agent's port too.
            if let Some(port) = service_options.target_ports.get(&listener.name) {
                rendered.port = Some(i64::from(*port));
            }
            listeners.push(rendered);
        }
    }
    if listeners.is_empty() {
        // Nothing an agent could serve: say why per listener, keep what runs.
        let status = gateway_status(gateway, settings, listener_statuses, &[], false, &notes);
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
    let certificates_name = format!("{name}-certificates");
    let credentials_name = format!("{name}-auth");
    let rendered = (|| -> Result<Rendered, serde_json::Error> {
        let mut exposed = BTreeSet::new();
        let service = service(
            &name,
            &namespace,
            &labels,
            owner.as_ref(),
            gateway,
            &service_annotations,
            &service_options,
            &config,
            &mut notes,
            &mut exposed,
        )?;
        let public = gateway_addresses(inputs, gateway, &namespace, &name, &dataplane);
        let status = gateway_status(
            gateway,
            settings,
            listener_statuses,
            &public.addresses,
            !config.listeners.is_empty(),
            &notes,
        );
        let ice = IceSource {
            namespace: namespace.clone(),
            gateway: gateway.name_any(),
            realm: auth.agent.realm.clone().unwrap_or_default(),
            auth: auth.ice.clone(),
            addresses: public.addresses.iter().map(|a| a.value.clone()).collect(),
            listeners: config
                .listeners
                .iter()
                .filter_map(|l| {
                    let name = l.name.as_deref()?;
                    let short = name.rsplit('/').next().unwrap_or(name).to_owned();
                    // A listener the Service does not carry is not reachable.
                    if !exposed.contains(&short) {
                        return None;
                    }
                    // Clients use the Gateway's port (or the node port), not the agent's.
                    let port = match &public.node_ports {
                        Some(ports) => *ports.get(&short)?,
                        None => gateway
                            .spec
                            .listeners
                            .iter()
                            .find(|g| g.name == short)
                            .and_then(|g| u16::try_from(g.port).ok())?,
                    };
                    Some((
                        short,
                        Transport::from_protocol(l.protocol.as_deref()?)?,
                        port,
                    ))
                })
                .collect(),
        };
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
        let certificates = if certificates.is_empty() {
            None
        } else {
            Some(opaque_secret(
                &certificates_name,
                &namespace,
                &labels,
                owner.as_ref(),
                certificates_data(&certificates),
            )?)
        };
        let credentials = if auth.secret_data.is_empty() {
            None
        } else {
            Some(opaque_secret(
                &credentials_name,
                &namespace,
                &labels,
                owner.as_ref(),
                auth.secret_data
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone().into_bytes()))
                    .collect(),
            )?)
        };
        let workload = workload(&WorkloadParts {
            name: &name,
            namespace: &namespace,
            gateway,
            labels: &labels,
            owner: owner.as_ref(),
            dataplane: &dataplane,
            kind,
            mode,
            config: &config,
            agent: &agent,
            certificates: certificates.as_ref().map(|_| certificates_name.as_str()),
            credentials: credentials.as_ref().map(|_| credentials_name.as_str()),
        })?;
        Ok(Rendered {
            name: name.clone(),
            namespace: namespace.clone(),
            config: config.clone(),
            config_map,
            service_account,
            role,
            role_binding,
            workload,
            service,
            certificates,
            credentials,
            status,
            ice,
            notes: notes.clone(),
        })
    })();
    match rendered {
        Ok(rendered) => Outcome::Rendered(Box::new(rendered)),
        Err(e) => refuse("Invalid", format!("cannot build the objects: {e}")),
    }
}

/// Every Secret (namespace, name) the Gateways of ours may read: their GatewayConfig's
/// credentials and their TLS listeners' certificates, where the reference is allowed (same
/// namespace, or a ReferenceGrant). The operator reads exactly these, one `get` each, and holds
/// no list or watch on Secrets.
pub fn referenced_secrets(inputs: &Inputs, settings: &Settings) -> BTreeSet<(String, String)> {
    let mut secrets = BTreeSet::new();
    for gateway in &inputs.gateways {
        let Some(class) = inputs.gateway_class(&gateway.spec.gateway_class_name) else {
            continue;
        };
        if !is_our_class(class, settings) {
            continue;
        }
        if let Ok(gwconfig) = class_parameters(inputs, class) {
            secrets.extend(gateway_config_secrets(inputs, gwconfig));
        }
        let namespace = namespace_of(gateway.as_ref());
        let references = gateway
            .spec
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref()?.certificate_refs.as_ref())
            .flatten();
        for reference in references {
            if let Ok(secret) = certificate_secret(inputs, &namespace, reference) {
                secrets.insert(secret);
            }
        }
    }
    secrets
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
