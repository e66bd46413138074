//! Listeners, Gateway and route statuses: conditions, addresses, the rendered agent listeners.
use std::{collections::BTreeSet, net::IpAddr};

use gateway_api::apis::standard::gateways::{
    Gateway, GatewayListeners, GatewayStatus, GatewayStatusAddresses, GatewayStatusListeners,
    GatewayStatusListenersSupportedKinds,
};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::ResourceExt;
use stunner_config::{self as agent};

use crate::{
    crd::{DataplaneSpec, ParentReference, RouteParentStatus, UDPRoute, UDPRouteStatus},
    inputs::{Inputs, namespace_of},
};

use super::*;

/// Why a listener cannot have its port: an earlier listener of the Gateway holds it.
pub(super) struct Conflict {
    pub(super) reason: &'static str,
    pub(super) message: String,
}

/// One listener's status, and its agent listener (with the TLS Secret to mount) when valid.
pub(super) fn render_listener(
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
pub(super) fn gateway_addresses(
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
