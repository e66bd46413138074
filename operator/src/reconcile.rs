//! The controller: keeps every Gateway of our GatewayClasses rendered into the cluster.
//!
//! Per Gateway: a finalizer; server-side apply of what [`render_gateway`] produced (ConfigMap,
//! ServiceAccount, Role, RoleBinding, Deployment or DaemonSet, LoadBalancer Service, all owned
//! by the Gateway); the Gateway's status and its routes' statuses (patched only when they
//! change); and the credential service's entry. On deletion: the routes' entries for the
//! Gateway and the credential service's entry are removed, then the finalizer; the owned objects
//! go with the Gateway (Kubernetes' garbage collector, through their owner references). A
//! Gateway moved to another class is let go the same way, and its objects are deleted by us.
//!
//! Inputs are read from watch caches ([`Caches`]); any change to any of them reconciles every
//! Gateway (after a short debounce): rendering is cheap and a change to a Secret or an
//! EndpointSlice can concern any Gateway. Secrets are the exception: only those Gateways of
//! ours refer to are read, one `get` each, again every [`SECRET_REFRESH`]
//! ([`ReferencedSecrets`]).
use std::{fmt::Debug, sync::Arc, time::Duration};

use futures::StreamExt;
use gateway_api::apis::standard::{gatewayclasses::GatewayClass, gateways::Gateway};
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Namespace, Node, Secret, Service, ServiceAccount},
        discovery::v1::EndpointSlice,
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    discovery::Discovery,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        finalizer::{self, Event as FinalizerEvent, finalizer},
        reflector::{self, Store},
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tracing::{info, warn};

use crate::{
    crd::{Dataplane, GatewayConfig, StaticService, UDPRoute},
    ice::Registry,
    inputs::{Inputs, RouteApi, namespace_of, route_from_gateway_api},
    render::{self, Outcome, Rendered, Settings, Workload, is_our_class, render_gateway},
};

/// Our finalizer on Gateways.
pub const FINALIZER: &str = "xturn.io/gateway-finalizer";
/// The field manager of our server-side applies.
pub const FIELD_MANAGER: &str = "xturn-operator";
/// How often a Gateway is looked at again without any change (drift repair).
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a Gateway waiting for its LoadBalancer address is looked at again.
const ADDRESS_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("object without a name")]
    Unnamed,
}

/// What the reconciler works with. `inputs` gives the current snapshot (the watch caches in
/// the cluster, a fixed snapshot in tests); `now` gives the time.
pub struct Context {
    pub client: Client,
    pub controller_names: Vec<String>,
    pub agent_image: String,
    pub inputs: Box<dyn Fn() -> Inputs + Send + Sync>,
    pub now: Box<dyn Fn() -> Timestamp + Send + Sync>,
    pub registry: Registry,
}

impl Context {
    fn settings(&self) -> Settings {
        Settings {
            controller_names: self.controller_names.clone(),
            agent_image: self.agent_image.clone(),
            now: (self.now)(),
        }
    }
}

/// Reconciles one Gateway.
pub async fn reconcile(gateway: Arc<Gateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    let inputs = (ctx.inputs)();
    let settings = ctx.settings();
    let api: Api<Gateway> = Api::namespaced(ctx.client.clone(), &namespace_of(gateway.as_ref()));
    let ours = inputs
        .gateway_class(&gateway.spec.gateway_class_name)
        .is_some_and(|class| is_our_class(class, &settings));
    if !ours {
        if gateway.finalizers().iter().any(|f| f == FINALIZER) {
            // Moved to another class: let go of it as if it were deleted, and remove the relays
            // we ran for it (the garbage collector would only do that on deletion).
            cleanup(&gateway, &inputs, &settings, &ctx).await?;
            remove_owned_objects(&ctx.client, &gateway, &inputs).await?;
            if let Some(patch) = finalizer_removal(gateway.finalizers()) {
                let name = gateway.meta().name.clone().ok_or(Error::Unnamed)?;
                api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
                    .await?;
            }
        }
        return Ok(Action::await_change());
    }
    finalizer(&api, FINALIZER, gateway, |event| async {
        match event {
            FinalizerEvent::Apply(gateway) => apply(&gateway, &inputs, &settings, &ctx).await,
            FinalizerEvent::Cleanup(gateway) => {
                cleanup(&gateway, &inputs, &settings, &ctx).await?;
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// A JSON patch that removes our finalizer from `finalizers` and nothing else: a `test` that it
/// is still at the index we saw guards the `remove`, so if the list changed meanwhile (another
/// controller added or removed its own) the API server refuses the patch and the next
/// reconcile tries again, instead of a whole new list overwriting someone else's finalizer.
/// `None` when ours is not there.
fn finalizer_removal(finalizers: &[String]) -> Option<json_patch::Patch> {
    let index = finalizers.iter().position(|f| f == FINALIZER)?;
    let path = format!("/metadata/finalizers/{index}");
    serde_json::from_value(json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]))
    .ok()
}

async fn apply(
    gateway: &Gateway,
    inputs: &Inputs,
    settings: &Settings,
    ctx: &Context,
) -> Result<Action, Error> {
    let namespace = namespace_of(gateway);
    let name = gateway.name_any();
    let (status, action) = match render_gateway(inputs, settings, gateway) {
        Outcome::NotOurs => return Ok(Action::await_change()),
        Outcome::Refused(refused) => {
            // Whatever runs keeps running on its last good configuration.
            warn!(gateway = %format!("{namespace}/{name}"), reason = %refused.reason, "Gateway not rendered");
            (refused.status, Action::requeue(RESYNC))
        }
        Outcome::Rendered(rendered) => {
            apply_objects(&ctx.client, &rendered).await?;
            remove_other_workload(&ctx.client, gateway, inputs, &rendered).await?;
            let waiting = rendered.ice.addresses.is_empty();
            if let Ok(mut registry) = ctx.registry.write() {
                registry.insert((namespace.clone(), name.clone()), rendered.ice.clone());
            }
            let action = Action::requeue(if waiting { ADDRESS_WAIT } else { RESYNC });
            (rendered.status, action)
        }
    };
    let current = gateway.status.as_ref().map(serde_json::to_value);
    let wanted = serde_json::to_value(&status).map_err(kube::Error::SerdeError)?;
    if current.and_then(Result::ok).as_ref() != Some(&wanted) {
        // A merge patch keeps what it leaves out: clear addresses the Gateway no longer has.
        let mut patch = wanted;
        if let Some(fields) = patch.as_object_mut() {
            fields.entry("addresses").or_insert(serde_json::Value::Null);
        }
        let api: Api<Gateway> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": patch })),
        )
        .await?;
    }
    patch_route_statuses(gateway, inputs, settings, ctx, false).await?;
    Ok(action)
}

/// Server-side applies every rendered object (forcing ownership of the fields we set).
async fn apply_objects(client: &Client, rendered: &Rendered) -> Result<(), Error> {
    let ns = &rendered.namespace;
    ssa::<ConfigMap>(client, ns, &rendered.config_map).await?;
    ssa::<ServiceAccount>(client, ns, &rendered.service_account).await?;
    ssa::<Role>(client, ns, &rendered.role).await?;
    ssa::<RoleBinding>(client, ns, &rendered.role_binding).await?;
    for secret in [&rendered.certificates, &rendered.credentials]
        .into_iter()
        .flatten()
    {
        ssa::<Secret>(client, ns, secret).await?;
    }
    match &rendered.workload {
        Workload::Deployment(d) => ssa::<Deployment>(client, ns, d).await?,
        Workload::DaemonSet(d) => ssa::<DaemonSet>(client, ns, d).await?,
    }
    ssa::<Service>(client, ns, &rendered.service).await?;
    Ok(())
}

/// After a Dataplane switched between Deployment and DaemonSet: deletes the workload of the
/// other kind this Gateway still has (ours by label and owner), so one set of agents runs.
async fn remove_other_workload(
    client: &Client,
    gateway: &Gateway,
    inputs: &Inputs,
    rendered: &Rendered,
) -> Result<(), Error> {
    let ns = &rendered.namespace;
    let ours = |meta: &ObjectMeta| owned_by(meta, gateway);
    match &rendered.workload {
        Workload::Deployment(_) => {
            for old in inputs.daemon_sets.iter().filter(|d| ours(&d.metadata)) {
                info!(daemonset = %old.name_any(), "Dataplane is a Deployment now: deleting the DaemonSet");
                delete::<DaemonSet>(client, ns, &old.name_any()).await?;
            }
        }
        Workload::DaemonSet(_) => {
            for old in inputs.deployments.iter().filter(|d| ours(&d.metadata)) {
                info!(deployment = %old.name_any(), "Dataplane is a DaemonSet now: deleting the Deployment");
                delete::<Deployment>(client, ns, &old.name_any()).await?;
            }
        }
    }
    Ok(())
}

/// Whether `meta` is one of the objects we made for `gateway`: in its namespace, with our
/// Gateway label and the Gateway as owner.
fn owned_by(meta: &ObjectMeta, gateway: &Gateway) -> bool {
    meta.namespace.as_deref() == Some(namespace_of(gateway).as_str())
        && meta
            .labels
            .as_ref()
            .and_then(|l| l.get(render::GATEWAY_LABEL))
            .is_some_and(|g| *g == gateway.name_any())
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| Some(&o.uid) == gateway.metadata.uid.as_ref())
}

/// Deletes every object we made for `gateway` (a Gateway that left our classes). They are found
/// through the Gateway's workloads (Deployments and DaemonSets it owns): every object of one
/// Gateway carries its workload's name.
async fn remove_owned_objects(
    client: &Client,
    gateway: &Gateway,
    inputs: &Inputs,
) -> Result<(), Error> {
    let ns = namespace_of(gateway);
    let deployments = inputs.deployments.iter().map(|d| (&d.metadata, false));
    let daemon_sets = inputs.daemon_sets.iter().map(|d| (&d.metadata, true));
    for (meta, daemon_set) in deployments.chain(daemon_sets) {
        let Some(name) = meta.name.as_deref().filter(|_| owned_by(meta, gateway)) else {
            continue;
        };
        info!(gateway = %format!("{ns}/{}", gateway.name_any()), objects = %name, "Gateway left our classes: deleting its relays");
        delete::<Service>(client, &ns, name).await?;
        if daemon_set {
            delete::<DaemonSet>(client, &ns, name).await?;
        } else {
            delete::<Deployment>(client, &ns, name).await?;
        }
        delete::<RoleBinding>(client, &ns, name).await?;
        delete::<Role>(client, &ns, name).await?;
        delete::<ServiceAccount>(client, &ns, name).await?;
        delete::<ConfigMap>(client, &ns, name).await?;
    }
    Ok(())
}

async fn delete<K>(client: &Client, namespace: &str, name: &str) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api
        .delete(name, &kube::api::DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        // Gone already.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn ssa<K>(client: &Client, namespace: &str, object: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().ok_or(Error::Unnamed)?;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

/// Updates the status of every route that names `gateway`. `leaving`: the Gateway is going
/// away, so its entries are dropped.
async fn patch_route_statuses(
    gateway: &Gateway,
    inputs: &Inputs,
    settings: &Settings,
    ctx: &Context,
    leaving: bool,
) -> Result<(), Error> {
    let gateway_key = (namespace_of(gateway), gateway.name_any());
    let ours: Vec<&Gateway> = inputs
        .gateways
        .iter()
        .map(AsRef::as_ref)
        .filter(|g| {
            inputs
                .gateway_class(&g.spec.gateway_class_name)
                .is_some_and(|c| is_our_class(c, settings))
        })
        .filter(|g| !(leaving && (namespace_of(*g), g.name_any()) == gateway_key))
        .filter(|g| {
            g.meta().deletion_timestamp.is_none()
                || (namespace_of(*g), g.name_any()) == gateway_key && !leaving
        })
        .collect();
    for (route, kind) in inputs.every_route() {
        let names_gateway = route.spec.parent_refs.iter().any(|p| {
            p.name == gateway_key.1
                && p.namespace.clone().unwrap_or_else(|| namespace_of(route)) == gateway_key.0
        });
        if !names_gateway {
            continue;
        }
        let status = render::route_status(inputs, settings, route, kind, &ours);
        // No status yet and none to write (a leaving Gateway's only route) is no change either.
        if route.status.clone().unwrap_or_default() == status {
            continue;
        }
        let patch = Patch::Merge(json!({ "status": status }));
        let namespace = namespace_of(route);
        match kind {
            RouteApi::Stunner => {
                let api: Api<UDPRoute> = Api::namespaced(ctx.client.clone(), &namespace);
                api.patch_status(&route.name_any(), &PatchParams::default(), &patch)
                    .await?;
            }
            RouteApi::GatewayApi => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), &namespace, &gateway_api_udp_route());
                api.patch_status(&route.name_any(), &PatchParams::default(), &patch)
                    .await?;
            }
        }
    }
    Ok(())
}

async fn cleanup(
    gateway: &Gateway,
    inputs: &Inputs,
    settings: &Settings,
    ctx: &Context,
) -> Result<(), Error> {
    let key = (namespace_of(gateway), gateway.name_any());
    info!(gateway = %format!("{}/{}", key.0, key.1), "Gateway gone: its relays are removed with it");
    if let Ok(mut registry) = ctx.registry.write() {
        registry.remove(&key);
    }
    patch_route_statuses(gateway, inputs, settings, ctx, true).await
}

/// Accepts our GatewayClasses (status `Accepted`), or says why not.
pub async fn reconcile_class(class: Arc<GatewayClass>, ctx: Arc<Context>) -> Result<Action, Error> {
    let inputs = (ctx.inputs)();
    let settings = ctx.settings();
    if !is_our_class(&class, &settings) {
        return Ok(Action::await_change());
    }
    let (ok, reason, message) = match render::class_parameters(&inputs, &class) {
        Ok(_) => (true, "Accepted", String::new()),
        Err(message) => (false, "InvalidParameters", message),
    };
    let status = if ok { "True" } else { "False" };
    let existing = class
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Accepted"));
    let condition = render::make_condition(
        "Accepted",
        status,
        reason,
        &message,
        class.metadata.generation,
        settings.now,
        existing.filter(|c| c.status == status),
    );
    if existing == Some(&condition) {
        return Ok(Action::requeue(RESYNC));
    }
    let api: Api<GatewayClass> = Api::all(ctx.client.clone());
    api.patch_status(
        &class.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [condition]}})),
    )
    .await?;
    Ok(Action::requeue(RESYNC))
}

#[allow(clippy::needless_pass_by_value)] // the signature Controller::run asks for
fn error_policy<K>(object: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action
where
    K: ResourceExt,
{
    warn!(object = %object.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(15))
}

/// Gateway API's UDPRoute (experimental channel, `v1alpha2`), whose statuses we write.
fn gateway_api_udp_route() -> ApiResource {
    ApiResource {
        group: render::GATEWAY_API_GROUP.to_owned(),
        version: "v1alpha2".to_owned(),
        api_version: format!("{}/v1alpha2", render::GATEWAY_API_GROUP),
        kind: "UDPRoute".to_owned(),
        plural: "udproutes".to_owned(),
    }
}

/// The resource of `kind` in `group` the API server serves, in `version` or else its preferred
/// version, if any.
async fn discovered(
    client: &Client,
    group: &str,
    kind: &str,
    version: Option<&str>,
) -> Option<ApiResource> {
    let discovery = match Discovery::new(client.clone()).filter(&[group]).run().await {
        Ok(discovery) => discovery,
        Err(e) => {
            warn!(%group, error = %e, "API discovery failed");
            return None;
        }
    };
    let g = discovery.get(group)?;
    // The preferred version first.
    std::iter::once(g.preferred_version_or_latest())
        .chain(g.versions())
        .flat_map(|v| g.versioned_resources(v))
        .map(|(resource, _)| resource)
        .find(|r| r.kind == kind && version.is_none_or(|v| r.version == v))
}

/// The watch caches of every input kind.
pub struct Caches {
    pub gateway_classes: Store<GatewayClass>,
    pub gateways: Store<Gateway>,
    pub gateway_configs: Store<GatewayConfig>,
    pub routes: Store<UDPRoute>,
    pub static_services: Store<StaticService>,
    pub dataplanes: Store<Dataplane>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    /// Only the Secrets Gateways of ours refer to ([`ReferencedSecrets`]).
    pub secrets: ReferencedSecrets,
    pub nodes: Store<Node>,
    pub namespaces: Store<Namespace>,
    pub deployments: Store<Deployment>,
    pub daemon_sets: Store<DaemonSet>,
    /// Gateway API UDPRoutes and ReferenceGrants, when the cluster serves them.
    pub gateway_api_routes: Option<Store<DynamicObject>>,
    pub reference_grants: Option<Store<DynamicObject>>,
}

/// The objects of a dynamic cache, as `T` (those that do not read as `T` are logged and left
/// out).
fn converted<T>(
    store: Option<&Store<DynamicObject>>,
    convert: impl Fn(serde_json::Value) -> Result<T, serde_json::Error>,
) -> Vec<Arc<T>> {
    store
        .map(Store::state)
        .unwrap_or_default()
        .iter()
        .filter_map(|object| {
            let value = serde_json::to_value(object.as_ref()).ok()?;
            match convert(value) {
                Ok(converted) => Some(Arc::new(converted)),
                Err(e) => {
                    warn!(object = %object.name_any(), error = %e, "cannot read; ignored");
                    None
                }
            }
        })
        .collect()
}

impl Caches {
    pub fn snapshot(&self) -> Inputs {
        Inputs {
            gateway_classes: self.gateway_classes.state(),
            gateways: self.gateways.state(),
            gateway_configs: self.gateway_configs.state(),
            routes: self.routes.state(),
            static_services: self.static_services.state(),
            dataplanes: self.dataplanes.state(),
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
            secrets: self.secrets.all(),
            nodes: self.nodes.state(),
            namespaces: self.namespaces.state(),
            deployments: self.deployments.state(),
            daemon_sets: self.daemon_sets.state(),
            gateway_api_routes: converted(self.gateway_api_routes.as_ref(), route_from_gateway_api),
            reference_grants: converted(self.reference_grants.as_ref(), serde_json::from_value),
        }
    }
}

/// A watch cache of `K` (all namespaces) whose every change is announced on `changed`.
fn cache<K>(client: &Client, changed: Changes) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    cache_selected(client, changed, watcher::Config::default())
}

/// [`cache`] of the objects `config` selects.
fn cache_selected<K>(client: &Client, changed: Changes, config: watcher::Config) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(Api::<K>::all(client.clone()), config),
    )
    .default_backoff();
    announce_changes(stream, changed, K::kind(&()).into_owned());
    reader
}

/// Drives a reflector's `stream` in the background, announcing every change on `changed`.
fn announce_changes<K, S>(stream: S, changed: Changes, kind: String)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    changed.send_replace(());
                }
                Err(e) => warn!(%kind, error = %e, "watch failed; retrying"),
            }
        }
    });
}

/// A watch cache of the dynamic resource `resource`, like [`cache`].
fn cache_dynamic(
    client: &Client,
    changed: Changes,
    resource: &ApiResource,
) -> Store<DynamicObject> {
    let writer = reflector::store::Writer::new(resource.clone());
    let reader = writer.as_reader();
    let api = Api::<DynamicObject>::all_with(client.clone(), resource);
    let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
        .default_backoff();
    announce_changes(stream, changed, resource.kind.clone());
    reader
}

/// Announces that some watched object changed (every cache sends; the controller and the
/// credential service's refresher each wait on a receiver).
pub type Changes = tokio::sync::watch::Sender<()>;

/// Starts a watch cache of every input kind and waits until each has loaded, so that nothing is
/// judged missing while loading. Returns the caches and a receiver told of every change.
pub async fn start_caches(
    client: &Client,
    controller_names: &[String],
) -> anyhow::Result<(Arc<Caches>, tokio::sync::watch::Receiver<()>)> {
    let (changed_tx, changed_rx) = tokio::sync::watch::channel(());
    // Gateway API's UDPRoute (experimental channel) and ReferenceGrant, if installed.
    let udp_routes = discovered(
        client,
        render::GATEWAY_API_GROUP,
        "UDPRoute",
        Some("v1alpha2"),
    )
    .await;
    let grants = discovered(client, render::GATEWAY_API_GROUP, "ReferenceGrant", None).await;
    info!(
        gateway_api_udp_routes = udp_routes.is_some(),
        reference_grants = grants.is_some(),
        "optional Gateway API resources"
    );
    let caches = Arc::new(Caches {
        gateway_classes: cache(client, changed_tx.clone()),
        gateways: cache(client, changed_tx.clone()),
        gateway_configs: cache(client, changed_tx.clone()),
        routes: cache(client, changed_tx.clone()),
        static_services: cache(client, changed_tx.clone()),
        dataplanes: cache(client, changed_tx.clone()),
        services: cache(client, changed_tx.clone()),
        endpoint_slices: cache(client, changed_tx.clone()),
        secrets: ReferencedSecrets::default(),
        nodes: cache(client, changed_tx.clone()),
        namespaces: cache(client, changed_tx.clone()),
        gateway_api_routes: udp_routes
            .as_ref()
            .map(|r| cache_dynamic(client, changed_tx.clone(), r)),
        reference_grants: grants
            .as_ref()
            .map(|r| cache_dynamic(client, changed_tx.clone(), r)),
        deployments: cache_selected(
            client,
            changed_tx.clone(),
            watcher::Config::default().labels(render::GATEWAY_LABEL),
        ),
        daemon_sets: cache_selected(
            client,
            changed_tx.clone(),
            watcher::Config::default().labels(render::GATEWAY_LABEL),
        ),
    });
    macro_rules! ready {
        ($($store:ident),*) => { $( caches.$store.wait_until_ready().await?; )* };
    }
    ready!(
        gateway_classes,
        gateways,
        gateway_configs,
        routes,
        static_services,
        dataplanes,
        services,
        endpoint_slices,
        nodes,
        namespaces,
        deployments,
        daemon_sets
    );
    for store in [&caches.gateway_api_routes, &caches.reference_grants]
        .into_iter()
        .flatten()
    {
        store.wait_until_ready().await?;
    }
    // The Secrets last: which ones are read depends on the rest.
    let settings = Settings {
        controller_names: controller_names.to_vec(),
        agent_image: String::new(),
        now: Timestamp::now(),
    };
    caches
        .secrets
        .refresh(client, &caches.snapshot(), &settings, true)
        .await;
    tokio::spawn(keep_secrets_fresh(
        client.clone(),
        Arc::clone(&caches),
        changed_tx,
        settings,
    ));
    info!(secrets = caches.secrets.len(), "caches loaded");
    Ok((caches, changed_rx))
}

/// How often every referenced Secret is read again: how soon a rotated password or
/// certificate reaches the relays' Secrets (the kubelet then updates the mounted files on its
/// own sync, within about a minute, and the agents reload them within a second).
pub const SECRET_REFRESH: Duration = Duration::from_secs(10);

/// The Secrets Gateways of ours refer to ([`render::referenced_secrets`]), each read with a
/// `get`: the operator holds no list or watch on Secrets, so it never sees, nor caches, the
/// rest of the cluster's.
#[derive(Default)]
pub struct ReferencedSecrets {
    read: std::sync::RwLock<std::collections::BTreeMap<(String, String), Arc<Secret>>>,
}

impl ReferencedSecrets {
    pub fn all(&self) -> Vec<Arc<Secret>> {
        self.read
            .read()
            .map(|read| read.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.read.read().map_or(0, |read| read.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the Secrets `inputs` refer to: every one when `all`, else only those not read
    /// yet; forgets those no longer referred to. True when what was read changed. A Secret
    /// that cannot be read now (the API server away) keeps its last value.
    pub async fn refresh(
        &self,
        client: &Client,
        inputs: &Inputs,
        settings: &Settings,
        all: bool,
    ) -> bool {
        let wanted = render::referenced_secrets(inputs, settings);
        let known: std::collections::BTreeSet<(String, String)> = self
            .read
            .read()
            .map(|read| read.keys().cloned().collect())
            .unwrap_or_default();
        let to_read: Vec<&(String, String)> = wanted
            .iter()
            .filter(|key| all || !known.contains(*key))
            .collect();
        let results = futures::future::join_all(to_read.iter().map(|(namespace, name)| {
            let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
            async move { api.get_opt(name).await }
        }))
        .await;
        let Ok(mut read) = self.read.write() else {
            return false;
        };
        let mut changed = false;
        read.retain(|key, _| {
            let keep = wanted.contains(key);
            changed |= !keep;
            keep
        });
        for (key, result) in to_read.into_iter().zip(results) {
            match result {
                Ok(Some(secret)) => {
                    let version = |s: &Secret| s.metadata.resource_version.clone();
                    if read.get(key).map(|old| version(old)) != Some(version(&secret)) {
                        changed = true;
                        read.insert(key.clone(), Arc::new(secret));
                    }
                }
                Ok(None) => changed |= read.remove(key).is_some(),
                Err(e) => {
                    let (namespace, name) = key;
                    warn!(%namespace, %name, error = %e, "cannot read a referenced Secret; keeping what was read before");
                }
            }
        }
        changed
    }
}

/// Keeps [`Caches::secrets`] fresh: a newly referenced Secret is read as soon as the reference
/// appears, and every one again each [`SECRET_REFRESH`]; a change is announced on `changed`
/// like any watched object's.
async fn keep_secrets_fresh(
    client: Client,
    caches: Arc<Caches>,
    changed: Changes,
    mut settings: Settings,
) {
    let mut changes = changed.subscribe();
    let mut refresh = tokio::time::interval(SECRET_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let all = tokio::select! {
            result = changes.changed() => {
                if result.is_err() {
                    return;
                }
                false
            }
            _ = refresh.tick() => true,
        };
        settings.now = Timestamp::now();
        if caches
            .secrets
            .refresh(&client, &caches.snapshot(), &settings, all)
            .await
        {
            changed.send_replace(());
        }
    }
}

/// What the credential service hands out, from the caches: every Gateway of ours that renders.
/// Runs on every replica (the leader's reconciles write the same entries), so that any replica
/// answers; refreshed on every change, and every 10 s for addresses and time.
pub async fn refresh_registry(
    caches: Arc<Caches>,
    mut changes: tokio::sync::watch::Receiver<()>,
    controller_names: Vec<String>,
    registry: Registry,
) {
    loop {
        let inputs = caches.snapshot();
        let settings = Settings {
            controller_names: controller_names.clone(),
            agent_image: String::new(),
            now: Timestamp::now(),
        };
        let fresh: std::collections::BTreeMap<_, _> = inputs
            .gateways
            .iter()
            .filter(|g| g.metadata.deletion_timestamp.is_none())
            .filter_map(
                |gateway| match render_gateway(&inputs, &settings, gateway) {
                    Outcome::Rendered(rendered) => Some((
                        (rendered.ice.namespace.clone(), rendered.ice.gateway.clone()),
                        rendered.ice,
                    )),
                    _ => None,
                },
            )
            .collect();
        if let Ok(mut registry) = registry.write() {
            *registry = fresh;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// Runs the Gateway and GatewayClass controllers on `caches` until the process stops (or the
/// future is dropped: a replica that loses the leader election drops it).
pub async fn run_controllers(
    client: Client,
    caches: Arc<Caches>,
    changes: tokio::sync::watch::Receiver<()>,
    controller_names: Vec<String>,
    agent_image: String,
    registry: Registry,
) {
    info!("reconciling");
    let snapshot = Arc::clone(&caches);
    let ctx = Arc::new(Context {
        client: client.clone(),
        controller_names,
        agent_image,
        inputs: Box::new(move || snapshot.snapshot()),
        now: Box::new(Timestamp::now),
        registry,
    });
    let changes = futures::stream::unfold(changes, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    let config = controller::Config::default().debounce(Duration::from_millis(500));
    let gateways = Controller::new(
        Api::<Gateway>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(config.clone())
    .owns(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().labels(render::GATEWAY_LABEL),
    )
    .owns(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default().labels(render::GATEWAY_LABEL),
    )
    .owns(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default().labels(render::GATEWAY_LABEL),
    )
    .owns(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(render::GATEWAY_LABEL),
    )
    .reconcile_all_on(changes)
    .shutdown_on_signal()
    .run(reconcile, error_policy, Arc::clone(&ctx))
    .for_each(|result| async move {
        if let Err(e) = result {
            warn!(error = %e, "Gateway reconcile");
        }
    });
    let classes = Controller::new(Api::<GatewayClass>::all(client), watcher::Config::default())
        .with_config(config)
        .shutdown_on_signal()
        .run(reconcile_class, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "GatewayClass reconcile");
            }
        });
    futures::join!(gateways, classes);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn gateway_with(finalizers: &[&str]) -> serde_json::Value {
        json!({"metadata": {"name": "g", "finalizers": finalizers}})
    }

    #[test]
    fn only_our_finalizer_goes_and_only_from_the_list_we_saw() {
        let seen = ["example.com/theirs", FINALIZER, "example.com/later"];
        let owned: Vec<String> = seen.iter().map(|s| (*s).to_owned()).collect();
        let patch = finalizer_removal(&owned).unwrap();
        let mut doc = gateway_with(&seen);
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(
            doc,
            gateway_with(&["example.com/theirs", "example.com/later"])
        );
        // Another controller removed its finalizer meanwhile: ours moved, the test fails, and
        // nothing is removed.
        let mut changed = gateway_with(&[FINALIZER, "example.com/later"]);
        assert!(json_patch::patch(&mut changed, &patch).is_err());
        assert_eq!(changed, gateway_with(&[FINALIZER, "example.com/later"]));
        assert!(finalizer_removal(&["example.com/theirs".to_owned()]).is_none());
    }
}
