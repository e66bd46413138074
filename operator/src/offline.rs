//! Rendering without a cluster (`xturn-operator render -f`, `auth-service -f`): every Gateway
//! of ours in the manifests, rendered as the controller would (two Gateways of a namespace
//! that would share object names: the younger one is refused, as in the cluster).
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;

use crate::{
    ice::IceSource,
    inputs::{Inputs, namespace_of},
    render::{Outcome, Settings, Workload, render_gateway, route_status},
};

/// What the manifests render to.
#[derive(Debug, Default)]
pub struct Offline {
    /// Objects to apply, in apply order (ConfigMap, RBAC, workload, Service per Gateway).
    pub objects: Vec<serde_json::Value>,
    /// The credential service's view of each rendered Gateway.
    pub ice: Vec<IceSource>,
    /// One line per Gateway and route: its conditions, for the operator's eyes.
    pub report: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("cannot serialise an object: {0}")]
    Serialise(#[from] serde_json::Error),
}

/// Renders every Gateway of ours. `public_address` stands in for a LoadBalancer address a
/// Gateway has not got (there is no cluster to assign one).
pub fn render_all(
    inputs: &Inputs,
    settings: &Settings,
    public_address: Option<&str>,
) -> Result<Offline, OfflineError> {
    let mut out = Offline::default();
    let mut ours = Vec::new();
    for gateway in &inputs.gateways {
        let id = format!("{}/{}", namespace_of(gateway.as_ref()), gateway.name_any());
        let summary = |status: &gateway_api::apis::standard::gateways::GatewayStatus| {
            summarise(status.conditions.as_deref().unwrap_or_default())
        };
        match render_gateway(inputs, settings, gateway) {
            Outcome::NotOurs => out.report.push(format!("Gateway {id}: not ours, skipped")),
            Outcome::Refused(refused) => {
                ours.push(gateway.as_ref());
                out.report
                    .push(format!("Gateway {id}: {}", summary(&refused.status)));
            }
            Outcome::Rendered(rendered) => {
                ours.push(gateway.as_ref());
                out.report
                    .push(format!("Gateway {id}: {}", summary(&rendered.status)));
                out.objects
                    .push(serde_json::to_value(&rendered.config_map)?);
                out.objects
                    .push(serde_json::to_value(&rendered.service_account)?);
                out.objects.push(serde_json::to_value(&rendered.role)?);
                out.objects
                    .push(serde_json::to_value(&rendered.role_binding)?);
                for secret in [&rendered.certificates, &rendered.credentials]
                    .into_iter()
                    .flatten()
                {
                    out.objects.push(serde_json::to_value(secret)?);
                }
                out.objects.push(match &rendered.workload {
                    Workload::Deployment(d) => serde_json::to_value(d)?,
                    Workload::DaemonSet(d) => serde_json::to_value(d)?,
                });
                out.objects.push(serde_json::to_value(&rendered.service)?);
                let mut ice = rendered.ice.clone();
                if ice.addresses.is_empty() {
                    ice.addresses.extend(public_address.map(str::to_owned));
                }
                out.ice.push(ice);
            }
        }
    }
    for (route, api) in inputs.every_route() {
        let status = route_status(inputs, settings, route, api, &ours);
        for parent in status
            .parents
            .iter()
            .filter(|p| settings.serves(&p.controller_name))
        {
            let conditions = summarise(&parent.conditions);
            out.report.push(format!(
                "UDPRoute {}/{} → Gateway {}: {conditions}",
                namespace_of(route),
                route.name_any(),
                parent.parent_ref.name
            ));
        }
    }
    Ok(out)
}

/// Conditions on one line: `Type=Status (Reason: message), ...`.
fn summarise(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .map(|c| {
            let separator = if c.message.is_empty() { "" } else { ": " };
            format!(
                "{}={} ({}{separator}{})",
                c.type_, c.status, c.reason, c.message
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The objects as one multi-document YAML stream.
pub fn to_yaml(objects: &[serde_json::Value]) -> Result<String, serde_norway::Error> {
    let mut text = String::new();
    for object in objects {
        text.push_str("---\n");
        text.push_str(&serde_norway::to_string(object)?);
    }
    Ok(text)
}
