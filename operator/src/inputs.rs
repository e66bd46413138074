//! Everything rendering reads: the objects of the cluster (or of manifest files) that shape a
//! Gateway's relays. In the cluster they come from the controller's watch caches; offline
//! (`xturn-operator render -f`) from YAML documents.
use std::{path::Path, sync::Arc};

use gateway_api::apis::standard::{
    gatewayclasses::GatewayClass, gateways::Gateway, referencegrants::ReferenceGrant,
};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{Namespace, Node, Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::ResourceExt;
use serde::Deserialize;

use crate::crd::{Dataplane, GatewayConfig, StaticService, UDPRoute};

/// A snapshot of the objects rendering depends on.
#[derive(Clone, Default, Debug)]
pub struct Inputs {
    pub gateway_classes: Vec<Arc<GatewayClass>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub gateway_configs: Vec<Arc<GatewayConfig>>,
    /// STUNner's UDPRoutes (`stunner.l7mp.io/v1`).
    pub routes: Vec<Arc<UDPRoute>>,
    /// Gateway API's UDPRoutes (`gateway.networking.k8s.io/v1alpha2`), read as STUNner's with
    /// the backends' ports dropped (every port of a backend is reachable, as with STUNner). One
    /// with the namespace and name of a STUNner UDPRoute is masked by it.
    pub gateway_api_routes: Vec<Arc<UDPRoute>>,
    pub static_services: Vec<Arc<StaticService>>,
    pub dataplanes: Vec<Arc<Dataplane>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub secrets: Vec<Arc<Secret>>,
    pub nodes: Vec<Arc<Node>>,
    /// For `allowedRoutes.namespaces.from: Selector`.
    pub namespaces: Vec<Arc<Namespace>>,
    /// Gateway API ReferenceGrants (v1 or v1beta1): what may refer to a Secret in another
    /// namespace.
    pub reference_grants: Vec<Arc<ReferenceGrant>>,
    /// Workloads the operator made (label `xturn.io/gateway`): a Gateway whose Dataplane
    /// switched between Deployment and DaemonSet has its old one removed.
    pub deployments: Vec<Arc<Deployment>>,
    pub daemon_sets: Vec<Arc<DaemonSet>>,
}

/// The namespace of a namespaced object (`default` when a manifest leaves it out).
pub fn namespace_of<K: ResourceExt>(object: &K) -> String {
    object.namespace().unwrap_or_else(|| "default".to_owned())
}

fn find<'a, K: ResourceExt>(list: &'a [Arc<K>], namespace: &str, name: &str) -> Option<&'a K> {
    list.iter()
        .map(AsRef::as_ref)
        .find(|o| o.name_any() == name && namespace_of(*o) == namespace)
}

impl Inputs {
    pub fn gateway_class(&self, name: &str) -> Option<&GatewayClass> {
        self.gateway_classes
            .iter()
            .map(AsRef::as_ref)
            .find(|c| c.name_any() == name)
    }
    pub fn gateway_config(&self, namespace: &str, name: &str) -> Option<&GatewayConfig> {
        find(&self.gateway_configs, namespace, name)
    }
    pub fn dataplane(&self, name: &str) -> Option<&Dataplane> {
        self.dataplanes
            .iter()
            .map(AsRef::as_ref)
            .find(|d| d.name_any() == name)
    }
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        find(&self.services, namespace, name)
    }
    pub fn static_service(&self, namespace: &str, name: &str) -> Option<&StaticService> {
        find(&self.static_services, namespace, name)
    }
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        find(&self.secrets, namespace, name)
    }
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces
            .iter()
            .map(AsRef::as_ref)
            .find(|n| n.name_any() == name)
    }

    /// Every UDPRoute rendering considers: STUNner's, then Gateway API's that no STUNner route
    /// of the same namespace and name masks.
    pub fn all_routes(&self) -> impl Iterator<Item = (&UDPRoute, RouteApi)> + '_ {
        self.every_route()
            .filter(|(r, api)| *api == RouteApi::Stunner || !self.masked(r))
    }

    /// Every UDPRoute, masked ones included, with its API: whose statuses are written.
    pub fn every_route(&self) -> impl Iterator<Item = (&UDPRoute, RouteApi)> + '_ {
        let stunner = self.routes.iter().map(|r| (r.as_ref(), RouteApi::Stunner));
        let gateway_api = self
            .gateway_api_routes
            .iter()
            .map(|r| (r.as_ref(), RouteApi::GatewayApi));
        stunner.chain(gateway_api)
    }

    /// Whether a Gateway API UDPRoute is masked by a STUNner one of the same namespace and name.
    pub fn masked(&self, route: &UDPRoute) -> bool {
        find(&self.routes, &namespace_of(route), &route.name_any()).is_some()
    }

    /// Whether a ReferenceGrant in `to_namespace` lets objects of `from_kind` (group
    /// `stunner.l7mp.io` for GatewayConfig, `gateway.networking.k8s.io` for Gateway) in
    /// `from_namespace` refer to the Secret `secret` there.
    pub fn reference_granted(
        &self,
        from_namespace: &str,
        from_kind: &str,
        to_namespace: &str,
        secret: &str,
    ) -> bool {
        let from_group = if from_kind == "GatewayConfig" {
            crate::crd::GROUP
        } else {
            "gateway.networking.k8s.io"
        };
        self.reference_grants
            .iter()
            .filter(|g| namespace_of(g.as_ref()) == to_namespace)
            .any(|grant| {
                grant.spec.from.iter().any(|f| {
                    f.group == from_group && f.kind == from_kind && f.namespace == from_namespace
                }) && grant.spec.to.iter().any(|t| {
                    t.group.is_empty()
                        && t.kind == "Secret"
                        && t.name.as_deref().is_none_or(|n| n == secret)
                })
            })
    }
    /// The EndpointSlices of a Service (label `kubernetes.io/service-name`).
    pub fn endpoint_slices_of<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.endpoint_slices
            .iter()
            .map(AsRef::as_ref)
            .filter(move |s| {
                namespace_of(*s) == namespace
                    && s.labels()
                        .get("kubernetes.io/service-name")
                        .map(String::as_str)
                        == Some(service)
            })
    }

    /// Reads every YAML document of `paths` (multi-document files, `List` objects) into a
    /// snapshot. Kinds rendering does not read (a KEDA ScaledObject, say) are skipped and
    /// named in the returned list.
    pub fn from_files(paths: &[impl AsRef<Path>]) -> Result<(Inputs, Vec<String>), FilesError> {
        let mut inputs = Inputs::default();
        let mut skipped = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|source| FilesError::Read {
                path: path.display().to_string(),
                source,
            })?;
            inputs.add_yaml(&text, &path.display().to_string(), &mut skipped)?;
        }
        Ok((inputs, skipped))
    }

    /// Adds the documents of one YAML stream; `origin` names it in errors.
    pub fn add_yaml(
        &mut self,
        text: &str,
        origin: &str,
        skipped: &mut Vec<String>,
    ) -> Result<(), FilesError> {
        for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
            let value =
                serde_norway::Value::deserialize(document).map_err(|e| FilesError::Parse {
                    origin: format!("{origin}, document {}", index + 1),
                    message: e.to_string(),
                })?;
            if value.is_null() {
                continue;
            }
            self.add_value(value, &format!("{origin}, document {}", index + 1), skipped)?;
        }
        Ok(())
    }

    fn add_value(
        &mut self,
        value: serde_norway::Value,
        origin: &str,
        skipped: &mut Vec<String>,
    ) -> Result<(), FilesError> {
        let field = |name: &str| {
            value
                .get(name)
                .and_then(serde_norway::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let api_version = field("apiVersion");
        let kind = field("kind");
        fn typed<K: serde::de::DeserializeOwned>(
            value: serde_norway::Value,
            origin: &str,
        ) -> Result<Arc<K>, FilesError> {
            serde_norway::from_value(value)
                .map(Arc::new)
                .map_err(|e| FilesError::Parse {
                    origin: origin.to_owned(),
                    message: e.to_string(),
                })
        }
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        match (group, kind.as_str()) {
            ("", "List") | ("v1", "List") => {
                let items = value
                    .get("items")
                    .and_then(serde_norway::Value::as_sequence)
                    .cloned()
                    .unwrap_or_default();
                for item in items {
                    self.add_value(item, origin, skipped)?;
                }
            }
            ("gateway.networking.k8s.io", "GatewayClass") => {
                upsert(&mut self.gateway_classes, typed(value, origin)?);
            }
            ("gateway.networking.k8s.io", "Gateway") => {
                upsert(&mut self.gateways, typed(value, origin)?);
            }
            ("stunner.l7mp.io", "GatewayConfig") => {
                upsert(&mut self.gateway_configs, typed(value, origin)?);
            }
            ("stunner.l7mp.io", "UDPRoute") => upsert(&mut self.routes, typed(value, origin)?),
            ("gateway.networking.k8s.io", "UDPRoute") => {
                let json = serde_json::to_value(&value).map_err(|e| FilesError::Parse {
                    origin: origin.to_owned(),
                    message: e.to_string(),
                })?;
                let route = route_from_gateway_api(json).map_err(|e| FilesError::Parse {
                    origin: origin.to_owned(),
                    message: e.to_string(),
                })?;
                upsert(&mut self.gateway_api_routes, Arc::new(route));
            }
            ("gateway.networking.k8s.io", "ReferenceGrant") => {
                upsert(&mut self.reference_grants, typed(value, origin)?);
            }
            ("", "Namespace") => upsert(&mut self.namespaces, typed(value, origin)?),
            ("stunner.l7mp.io", "StaticService") => {
                upsert(&mut self.static_services, typed(value, origin)?);
            }
            ("stunner.l7mp.io", "Dataplane") => upsert(&mut self.dataplanes, typed(value, origin)?),
            ("", "Service") => upsert(&mut self.services, typed(value, origin)?),
            ("discovery.k8s.io", "EndpointSlice") => {
                upsert(&mut self.endpoint_slices, typed(value, origin)?);
            }
            ("", "Secret") => upsert(&mut self.secrets, typed(value, origin)?),
            ("", "Node") => upsert(&mut self.nodes, typed(value, origin)?),
            ("apps", "Deployment") => upsert(&mut self.deployments, typed(value, origin)?),
            ("apps", "DaemonSet") => upsert(&mut self.daemon_sets, typed(value, origin)?),
            _ => skipped.push(format!("{api_version} {kind} ({origin})")),
        }
        Ok(())
    }
}

/// Adds `object`, replacing one of the same namespace and name (a later document wins, as a
/// later `kubectl apply` does).
fn upsert<K: ResourceExt>(list: &mut Vec<Arc<K>>, object: Arc<K>) {
    let key = |o: &K| (o.namespace(), o.name_any());
    list.retain(|o| key(o) != key(&object));
    list.push(object);
}

/// Which API a UDPRoute came from (its status is written back there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteApi {
    /// `stunner.l7mp.io/v1`.
    Stunner,
    /// `gateway.networking.k8s.io/v1alpha2`.
    GatewayApi,
}

/// A Gateway API UDPRoute (any version's JSON) as a STUNner one: the same parents and
/// backends, without the backends' ports and weights.
pub fn route_from_gateway_api(value: serde_json::Value) -> Result<UDPRoute, serde_json::Error> {
    let mut value = value;
    if let Some(rules) = value
        .pointer_mut("/spec/rules")
        .and_then(serde_json::Value::as_array_mut)
    {
        for rule in rules {
            // Only backends carry over (a rule's name, timeouts... do not apply to TURN).
            let backends = rule.get("backendRefs").cloned().unwrap_or_default();
            let backends: Vec<serde_json::Value> = backends
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    let mut b = b.clone();
                    if let Some(fields) = b.as_object_mut() {
                        fields.remove("port");
                        fields.remove("weight");
                    }
                    b
                })
                .collect();
            *rule = serde_json::json!({ "backendRefs": backends });
        }
    }
    if let Some(spec) = value
        .get_mut("spec")
        .and_then(serde_json::Value::as_object_mut)
    {
        spec.retain(|k, _| k == "parentRefs" || k == "rules");
    }
    if let Some(fields) = value.as_object_mut() {
        fields.insert("apiVersion".into(), "stunner.l7mp.io/v1".into());
    }
    serde_json::from_value(value)
}

/// Why manifest files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
}
