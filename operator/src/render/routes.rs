//! Which routes attach to a Gateway's listeners, and the peers (cluster endpoints) they name.
use std::{collections::BTreeSet, net::IpAddr};

use gateway_api::apis::standard::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom,
};
use kube::ResourceExt;

use crate::{
    crd::{BackendRef, ParentReference, UDPRoute},
    inputs::{Inputs, namespace_of},
};

use super::*;

/// Routes whose parentRefs name this Gateway and that the Gateway's listeners allow
/// (`allowedRoutes.namespaces`: `Same`, the default, or `All`), each with the matching
/// parentRef, in a stable order.
pub(super) fn attached_routes<'a>(
    inputs: &'a Inputs,
    gateway: &Gateway,
) -> Vec<(&'a UDPRoute, ParentReference)> {
    let mut attached = Vec::new();
    for (route, _) in inputs.all_routes() {
        for parent in &route.spec.parent_refs {
            if refers_to(route, parent, gateway)
                && namespace_allowed(inputs, gateway, parent, route)
            {
                attached.push((route, parent.clone()));
            }
        }
    }
    attached.sort_by_key(|(r, _)| (namespace_of(*r), r.name_any()));
    attached
}

pub(super) fn refers_to(route: &UDPRoute, parent: &ParentReference, gateway: &Gateway) -> bool {
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
pub(super) fn namespace_allowed(
    inputs: &Inputs,
    gateway: &Gateway,
    parent: &ParentReference,
    route: &UDPRoute,
) -> bool {
    gateway
        .spec
        .listeners
        .iter()
        .filter(|l| parent.section_name.as_deref().is_none_or(|s| s == l.name))
        .any(|l| listener_allows(inputs, gateway, l, route))
}

/// Whether `listener` takes routes from the route's namespace (`allowedRoutes.namespaces`):
/// `Same` (the default) the Gateway's own namespace, `All` every namespace, `Selector` the
/// namespaces whose labels the selector matches (a missing selector or Namespace matches none).
pub(super) fn listener_allows(
    inputs: &Inputs,
    gateway: &Gateway,
    listener: &GatewayListeners,
    route: &UDPRoute,
) -> bool {
    let route_namespace = namespace_of(route);
    let namespaces = listener
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_ref()) {
        Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => true,
        Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => {
            let Some(selector) = namespaces.and_then(|n| n.selector.as_ref()) else {
                return false;
            };
            let Some(namespace) = inputs.namespace(&route_namespace) else {
                return false;
            };
            let labels = namespace.labels();
            let match_labels = selector
                .match_labels
                .iter()
                .flatten()
                .all(|(k, v)| labels.get(k) == Some(v));
            let match_expressions = selector.match_expressions.iter().flatten().all(|e| {
                let value = labels.get(&e.key);
                let values = e.values.as_deref().unwrap_or_default();
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            });
            match_labels && match_expressions
        }
        _ => route_namespace == namespace_of(gateway),
    }
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

pub(super) fn port_suffix(backend: &BackendRef) -> Result<Option<(u16, u16)>, String> {
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

pub(super) fn format_endpoint(ip_or_prefix: &str, ports: &Option<(u16, u16)>) -> String {
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

/// Whether an agent listener protocol runs over TCP (TURN-TCP, TURN-TLS).
pub(super) fn is_tcp(protocol: &str) -> bool {
    matches!(protocol, "TURN-TCP" | "TURN-TLS")
}

/// The socket a valid listener needs: its port, and TCP (TURN-TCP, TURN-TLS) or UDP
/// (TURN-UDP, TURN-DTLS).
pub(super) fn listener_socket(listener: &GatewayListeners) -> Option<(u16, &'static str)> {
    let protocol = listener_protocol(&listener.protocol)?;
    let port = u16::try_from(listener.port).ok().filter(|p| *p > 0)?;
    let socket = if is_tcp(protocol) { "TCP" } else { "UDP" };
    Some((port, socket))
}
