//! Listeners, Gateway and route statuses: conditions, addresses, the rendered agent listeners.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use gateway_api::apis::standard::gateways::{
    Gateway, GatewayListeners, GatewayListenersTlsCertificateRefs, GatewayStatus,
    GatewayStatusAddresses, GatewayStatusListeners, GatewayStatusListenersSupportedKinds,
};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::ResourceExt;
use stunner_config::{self as agent};

use crate::{
    crd::{DataplaneSpec, ParentReference, RouteParentStatus, UDPRoute, UDPRouteStatus},
    inputs::{Inputs, RouteApi, namespace_of},
};

use super::*;

/// Why a listener cannot have its port: an earlier listener of the Gateway holds it.
pub(super) struct Conflict {
    pub(super) reason: &'static str,
    pub(super) message: String,
}

/// A valid listener's agent listener, with its PEM certificate chain and key (TLS, DTLS).
pub(super) type RenderedListener = (agent::Listener, Option<(String, String)>);

/// One listener's status, and its agent listener (with its certificate) when valid.
pub(super) fn render_listener(
    inputs: &Inputs,
    gateway: &Gateway,
    listener: &GatewayListeners,
    routes: &[&UDPRoute],
    conflict: Option<Conflict>,
    settings: &Settings,
) -> (GatewayStatusListeners, Option<RenderedListener>) {
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
    let supported = [crate::crd::GROUP, GATEWAY_API_GROUP]
        .map(|group| GatewayStatusListenersSupportedKinds {
            group: Some(group.to_owned()),
            kind: "UDPRoute".to_owned(),
        })
        .to_vec();
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
    let mut pem = None;
    if protocol == "TURN-TLS" || protocol == "TURN-DTLS" {
        match listener_certificate(inputs, gateway, listener) {
            Ok(pair) => {
                cert = Some(format!("{TLS_MOUNT_ROOT}/{}.crt", listener.name));
                key = Some(format!("{TLS_MOUNT_ROOT}/{}.key", listener.name));
                pem = Some(pair);
            }
            Err(message) => {
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
    (status, Some((rendered, pem)))
}

/// The PEM certificate chain and key of a TLS/DTLS listener: from the first of its
/// `certificateRefs` that resolves (as STUNner tries them in order). A core Secret, in the
/// Gateway's namespace or, with a ReferenceGrant there, in another; the certificate under
/// `tls.crt`, `crt` or `cert`, the key under `tls.key` or `key`.
fn listener_certificate(
    inputs: &Inputs,
    gateway: &Gateway,
    listener: &GatewayListeners,
) -> Result<(String, String), String> {
    let namespace = namespace_of(gateway);
    let references = listener
        .tls
        .as_ref()
        .and_then(|t| t.certificate_refs.as_ref())
        .filter(|refs| !refs.is_empty())
        .ok_or_else(|| {
            "TLS and DTLS listeners need tls.certificateRefs naming a Secret".to_owned()
        })?;
    let mut problems = Vec::new();
    for r in references {
        let ns = match certificate_secret(inputs, &namespace, r) {
            Ok((ns, _)) => ns,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let Some(secret) = inputs.secret(&ns, &r.name) else {
            problems.push(format!("Secret {ns}/{} not found", r.name));
            continue;
        };
        let first = |keys: &[&str]| keys.iter().find_map(|k| secret_value(secret, k));
        match (
            first(&["tls.crt", "crt", "cert"]),
            first(&["tls.key", "key"]),
        ) {
            (Some(cert), Some(key)) => return Ok((cert, key)),
            _ => problems.push(format!(
                "Secret {ns}/{} lacks a certificate (tls.crt, crt, cert) or a key (tls.key, key)",
                r.name
            )),
        }
    }
    Err(format!("certificateRefs: {}", problems.join("; ")))
}

/// The Secret (namespace, name) a listener's certificateRef names, in the Gateway's
/// `namespace` unless it says otherwise — or why it may not be used: not a core Secret, or in
/// another namespace without a ReferenceGrant there.
pub(super) fn certificate_secret(
    inputs: &Inputs,
    namespace: &str,
    r: &GatewayListenersTlsCertificateRefs,
) -> Result<(String, String), String> {
    if r.kind.as_deref().unwrap_or("Secret") != "Secret"
        || !matches!(r.group.as_deref(), None | Some("" | "v1"))
    {
        return Err(format!("{}: only core Secrets are supported", r.name));
    }
    let ns = r.namespace.clone().unwrap_or_else(|| namespace.to_owned());
    if ns != namespace && !inputs.reference_granted(namespace, "Gateway", &ns, &r.name) {
        return Err(format!(
            "{ns}/{}: no ReferenceGrant in {ns} lets Gateways of {namespace} use it",
            r.name
        ));
    }
    Ok((ns, r.name.clone()))
}

/// A Gateway API condition; the transition time of the Gateway's current condition of the same
/// type and status is kept.
pub(super) fn condition(
    gateway: &Gateway,
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    settings: &Settings,
) -> Condition {
    let current = gateway
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    condition_in(current, kind, ok, reason, message, generation, settings.now)
}

/// Condition `kind` ("True" if `ok`), keeping the transition time of the condition of the same
/// type and status among `current`.
fn condition_in(
    current: &[Condition],
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let existing = current
        .iter()
        .find(|c| c.type_ == kind && c.status == status);
    make_condition(kind, status, reason, message, generation, now, existing)
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

pub(super) fn refused_status(
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

pub(super) fn gateway_status(
    gateway: &Gateway,
    settings: &Settings,
    listeners: Vec<GatewayStatusListeners>,
    addresses: &[GatewayStatusAddresses],
    any_listener: bool,
    notes: &[String],
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
    let mut conditions = vec![accepted, programmed];
    if !notes.is_empty() {
        conditions.push(cond(
            TRANSLATED_CONDITION,
            true,
            "Translated",
            &notes.join("; "),
        ));
    }
    GatewayStatus {
        addresses: (!addresses.is_empty()).then(|| addresses.to_vec()),
        conditions: Some(conditions),
        listeners: Some(listeners),
        ..GatewayStatus::default()
    }
}

/// Where clients reach a Gateway: its addresses, and the ports by listener when they are not
/// the listeners' own (a NodePort fallback).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PublicAddresses {
    pub addresses: Vec<GatewayStatusAddresses>,
    /// Listener name → the Service's node port, when the addresses are nodes' addresses.
    pub node_ports: Option<BTreeMap<String, u16>>,
}

/// The Gateway's public addresses, in STUNner's order: the requested `spec.addresses`, else the
/// LoadBalancer Service's ingress, else (a Service with node ports, or host-network agents) the
/// nodes' addresses — ExternalIP, then ExternalDNS, then (unlike STUNner, which gives up here)
/// InternalIP — with the node ports in the URLs.
pub(super) fn gateway_addresses(
    inputs: &Inputs,
    gateway: &Gateway,
    namespace: &str,
    service_name: &str,
    dataplane: &DataplaneSpec,
) -> PublicAddresses {
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
    let plain = |addresses: Vec<GatewayStatusAddresses>| PublicAddresses {
        addresses,
        node_ports: None,
    };
    let requested: Vec<_> = gateway
        .spec
        .addresses
        .iter()
        .flatten()
        .filter_map(|a| a.value.clone())
        .map(address)
        .collect();
    if !requested.is_empty() {
        return plain(requested);
    }
    let service = inputs.service(namespace, service_name);
    let ingress: Vec<_> = service
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        .map(address)
        .collect();
    if !ingress.is_empty() {
        return plain(ingress);
    }
    let node_addresses = || {
        for wanted in ["ExternalIP", "ExternalDNS", "InternalIP"] {
            let found: Vec<_> = inputs
                .nodes
                .iter()
                .filter_map(|node| {
                    node.status
                        .as_ref()
                        .and_then(|s| s.addresses.as_ref())
                        .and_then(|a| a.iter().find(|a| a.type_ == wanted))
                        .map(|a| address(a.address.clone()))
                })
                .collect();
            if !found.is_empty() {
                return found;
            }
        }
        Vec::new()
    };
    if dataplane.host_network == Some(true) {
        return plain(node_addresses());
    }
    let node_ports: BTreeMap<String, u16> = service
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let node_port = u16::try_from(p.node_port?).ok()?;
            let listener = gateway
                .spec
                .listeners
                .iter()
                .find(|l| l.port == p.port && p.name.as_deref().is_some_and(|n| n == l.name))
                .or_else(|| gateway.spec.listeners.iter().find(|l| l.port == p.port))?;
            Some((listener.name.clone(), node_port))
        })
        .collect();
    if node_ports.is_empty() {
        return PublicAddresses::default();
    }
    PublicAddresses {
        addresses: node_addresses(),
        node_ports: Some(node_ports),
    }
}

/// The status of a route as seen by every one of our Gateways it names; entries of other
/// controllers are kept. `gateways` are the Gateways considered ours.
pub fn route_status(
    inputs: &Inputs,
    settings: &Settings,
    route: &UDPRoute,
    api: RouteApi,
    gateways: &[&Gateway],
) -> UDPRouteStatus {
    let masked = api == RouteApi::GatewayApi && inputs.masked(route);
    let mut parents: Vec<RouteParentStatus> = route
        .status
        .as_ref()
        .map(|s| {
            s.parents
                .iter()
                .filter(|p| !settings.serves(&p.controller_name))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let resolved = route_endpoints(inputs, route);
    let generation = route.metadata.generation;
    let current = |parent: &ParentReference| {
        route
            .status
            .as_ref()
            .and_then(|s| s.parents.iter().find(|p| &p.parent_ref == parent))
            .map(|p| p.conditions.clone())
            .unwrap_or_default()
    };
    for parent in &route.spec.parent_refs {
        let Some(gateway) = gateways.iter().find(|g| refers_to(route, parent, g)) else {
            continue;
        };
        let current = current(parent);
        let cond = |kind: &str, ok: bool, reason: &str, message: &str| {
            condition_in(
                &current,
                kind,
                ok,
                reason,
                message,
                generation,
                settings.now,
            )
        };
        let listener_exists = parent
            .section_name
            .as_deref()
            .is_none_or(|section| gateway.spec.listeners.iter().any(|l| l.name == section));
        let accepted = if masked {
            cond(
                "Accepted",
                false,
                "Pending",
                "masked by the stunner.l7mp.io/v1 UDPRoute of the same namespace and name",
            )
        } else if !listener_exists {
            cond(
                "Accepted",
                false,
                "NoMatchingParent",
                "no listener of that sectionName",
            )
        } else if !namespace_allowed(inputs, gateway, parent, route) {
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
            // The controller name of the Gateway's class (ours or STUNner's).
            controller_name: inputs
                .gateway_class(&gateway.spec.gateway_class_name)
                .map(|c| c.spec.controller_name.clone())
                .unwrap_or_else(|| DEFAULT_CONTROLLER_NAME.to_owned()),
            conditions: vec![accepted, refs],
        });
    }
    UDPRouteStatus { parents }
}
