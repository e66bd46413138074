//! The controller against a mock API server (tower-test): the exact requests `reconcile` and
//! `reconcile_class` make, in order, with their bodies, and what they answer.
#![allow(clippy::unwrap_used)] // test code: a panic is a failing test
mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use gateway_api::apis::standard::{
    gatewayclasses::GatewayClass,
    gateways::{Gateway, GatewayStatus},
};
use http::{Request, Response};
use k8s_openapi::jiff::Timestamp;
use kube::{client::Body, runtime::controller::Action};
use serde_json::{Value, json};
use tokio::{task::JoinHandle, time::timeout};
use xturn_operator::{
    crd::UDPRouteStatus,
    ice::Registry,
    inputs::Inputs,
    reconcile::{self, Context, Error, FINALIZER, ReferencedSecrets},
    render::{Outcome, Rendered, render_gateway},
};

const UID: &str = "6c1f3a1e-0b7d-4c59-9d0e-2f4a8e1b7c11";
const GATEWAY_URI: &str =
    "/apis/gateway.networking.k8s.io/v1/namespaces/stunner/gateways/stunner-gateway";
const ROUTE_STATUS_URI: &str =
    "/apis/stunner.l7mp.io/v1/namespaces/stunner/udproutes/media-route/status?";
/// Server-side apply with our field manager, forcing conflicts.
const APPLY: &str = "?&force=true&fieldManager=xturn-operator";
/// The seven applies of the seed's Gateway, in order.
const APPLIES: [&str; 7] = [
    "/api/v1/namespaces/stunner/configmaps/stunner",
    "/api/v1/namespaces/stunner/serviceaccounts/stunner",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/stunner/roles/stunner",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/stunner/rolebindings/stunner",
    "/api/v1/namespaces/stunner/secrets/stunner-auth",
    "/apis/apps/v1/namespaces/stunner/deployments/stunner",
    "/api/v1/namespaces/stunner/services/stunner",
];

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request the operator made.
struct Seen {
    content_type: String,
    body: Value,
}

/// The test's side of the API: every request must be the one expected next.
struct ApiServer {
    handle: Handle,
}

impl ApiServer {
    fn new() -> (ApiServer, kube::Client) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (ApiServer { handle }, kube::Client::new(service, "default"))
    }

    /// Takes the next request, which must be `method uri`, and answers `reply` (the request's
    /// own body when `None`, as an apply would).
    async fn expect(&mut self, method: &str, uri: &str, reply: Option<Value>) -> Seen {
        self.expect_answered(method, uri, 200, reply).await
    }

    /// [`expect`](Self::expect), answered with `status`.
    async fn expect_answered(
        &mut self,
        method: &str,
        uri: &str,
        status: u16,
        reply: Option<Value>,
    ) -> Seen {
        let next = timeout(Duration::from_secs(5), self.handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("expected {method} {uri}, but no request came in 5 s"));
        let (request, send) =
            next.unwrap_or_else(|| panic!("expected {method} {uri}, but the client is gone"));
        let got = format!("{} {}", request.method(), request.uri());
        let content_type = request
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        assert_eq!(
            got,
            format!("{method} {uri}"),
            "unexpected request; its body: {body}"
        );
        let reply = reply.unwrap_or_else(|| body.clone());
        send.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        Seen { content_type, body }
    }

    /// Takes the next request, which must delete `path` in the background, and answers success.
    async fn expect_delete(&mut self, path: &str) {
        let success = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
        let seen = self
            .expect("DELETE", &format!("{path}?"), Some(success))
            .await;
        assert_eq!(seen.body["propagationPolicy"], "Background");
    }

    /// Takes the Gateway's status patch, then its route's, each answered with the object.
    async fn expect_status_patches(&mut self, gateway: &Gateway, inputs: &Inputs) {
        let gateway = serde_json::to_value(gateway).unwrap();
        let route = serde_json::to_value(inputs.routes[0].as_ref()).unwrap();
        self.expect("PATCH", &format!("{GATEWAY_URI}/status?"), Some(gateway))
            .await;
        self.expect("PATCH", ROUTE_STATUS_URI, Some(route)).await;
    }

    /// Waits for the reconcile to end; any request it makes meanwhile fails the test.
    async fn finish(
        mut self,
        mut task: JoinHandle<Result<Action, Error>>,
    ) -> Result<Action, Error> {
        let wait = async {
            tokio::select! {
                biased;
                result = &mut task => result.unwrap(),
                next = self.handle.next_request() => match next {
                    Some((request, _)) => panic!(
                        "unexpected request {} {} (no more were expected)",
                        request.method(),
                        request.uri()
                    ),
                    None => task.await.unwrap(),
                },
            }
        };
        timeout(Duration::from_secs(5), wait)
            .await
            .expect("the reconcile did not end")
    }
}

fn context(client: kube::Client, inputs: Inputs, now: Timestamp, registry: Registry) -> Context {
    Context {
        client,
        controller_names: vec![CONTROLLER.to_owned()],
        agent_image: AGENT_IMAGE.to_owned(),
        inputs: Box::new(move || inputs.clone()),
        now: Box::new(move || now),
        registry,
    }
}

/// The seed's Gateway as the API server would hand it out.
fn cluster_gateway(inputs: &Inputs, finalizers: &[&str]) -> Gateway {
    let mut gateway = the_gateway(inputs);
    gateway.metadata.uid = Some(UID.to_owned());
    gateway.metadata.generation = Some(1);
    gateway.metadata.resource_version = Some("1000".to_owned());
    gateway.metadata.finalizers =
        (!finalizers.is_empty()).then(|| finalizers.iter().map(|f| (*f).to_owned()).collect());
    gateway
}

/// The seed (with its backend) holding `gateway`.
fn inputs_with(gateway: &Gateway, fixtures: &[&str]) -> Inputs {
    let mut inputs = seed_with(fixtures);
    set_gateway(&mut inputs, gateway.clone());
    inputs
}

fn spawn_reconcile(gateway: Gateway, ctx: Context) -> JoinHandle<Result<Action, Error>> {
    tokio::spawn(reconcile::reconcile(Arc::new(gateway), Arc::new(ctx)))
}

fn rendered(inputs: &Inputs, gateway: &Gateway, now: Timestamp) -> Rendered {
    let mut settings = settings();
    settings.now = now;
    match render_gateway(inputs, &settings, gateway) {
        Outcome::Rendered(rendered) => *rendered,
        other => panic!("not rendered: {other:?}"),
    }
}

fn owner() -> Value {
    json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": "stunner-gateway",
        "uid": UID,
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

/// Expects the applies, in order: the six objects every relay has, with its Secrets (TLS
/// certificates, credentials) before the workload that mounts them; checks each body is the
/// rendered object, owned by the Gateway.
async fn expect_applies(server: &mut ApiServer, rendered: &Rendered) {
    let workload = match &rendered.workload {
        xturn_operator::render::Workload::Deployment(d) => serde_json::to_value(d).unwrap(),
        xturn_operator::render::Workload::DaemonSet(d) => serde_json::to_value(d).unwrap(),
    };
    let mut applies: Vec<(String, Value)> = APPLIES[..4]
        .iter()
        .map(|p| (*p).to_owned())
        .zip([
            serde_json::to_value(&rendered.config_map).unwrap(),
            serde_json::to_value(&rendered.service_account).unwrap(),
            serde_json::to_value(&rendered.role).unwrap(),
            serde_json::to_value(&rendered.role_binding).unwrap(),
        ])
        .collect();
    if let Some(certificates) = &rendered.certificates {
        applies.push((
            "/api/v1/namespaces/stunner/secrets/stunner-certificates".to_owned(),
            serde_json::to_value(certificates).unwrap(),
        ));
    }
    applies.push((
        APPLIES[4].to_owned(),
        serde_json::to_value(rendered.credentials.as_ref().unwrap()).unwrap(),
    ));
    applies.push((APPLIES[5].to_owned(), workload));
    applies.push((
        APPLIES[6].to_owned(),
        serde_json::to_value(&rendered.service).unwrap(),
    ));
    for (path, object) in applies {
        let seen = server
            .expect("PATCH", &format!("{path}{APPLY}"), None)
            .await;
        assert_eq!(seen.content_type, "application/apply-patch+yaml", "{path}");
        assert_eq!(seen.body["metadata"]["ownerReferences"], owner(), "{path}");
        assert_eq!(seen.body, object, "{path}");
    }
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, time: &str) -> Value {
    json!({
        "type": kind, "status": status, "reason": reason, "message": message,
        "observedGeneration": 1, "lastTransitionTime": time,
    })
}

fn listener_status(name: &str) -> Value {
    json!({
        "name": name,
        "attachedRoutes": 1,
        "supportedKinds": [
            {"group": "stunner.l7mp.io", "kind": "UDPRoute"},
            {"group": "gateway.networking.k8s.io", "kind": "UDPRoute"},
        ],
        "conditions": [
            condition("Accepted", "True", "Accepted", "", NOW),
            condition("ResolvedRefs", "True", "ResolvedRefs", "", NOW),
            condition("Programmed", "True", "Programmed", "", NOW),
        ],
    })
}

fn route_parents_accepted() -> Value {
    json!([{
        "parentRef": {"name": "stunner-gateway"},
        "controllerName": CONTROLLER,
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
             "lastTransitionTime": NOW},
            {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "message": "",
             "lastTransitionTime": NOW},
        ],
    }])
}

#[tokio::test]
async fn a_new_gateway_gets_our_finalizer_and_nothing_else() {
    let gateway = cluster_gateway(&seed(), &[]);
    let inputs = inputs_with(&gateway, &["media-server.yaml"]);
    let registry = Registry::default();
    let (mut server, client) = ApiServer::new();
    let task = spawn_reconcile(
        gateway.clone(),
        context(client, inputs, now(), registry.clone()),
    );
    let with_finalizer = cluster_gateway(&seed(), &[FINALIZER]);
    let seen = server
        .expect(
            "PATCH",
            &format!("{GATEWAY_URI}?"),
            Some(serde_json::to_value(&with_finalizer).unwrap()),
        )
        .await;
    assert_eq!(seen.content_type, "application/json-patch+json");
    assert_eq!(
        seen.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["xturn.io/gateway-finalizer"]},
        ])
    );
    assert_eq!(server.finish(task).await.unwrap(), Action::await_change());
    assert!(registry.read().unwrap().is_empty());
}

#[tokio::test]
async fn a_gateway_with_our_finalizer_is_applied_then_its_statuses_written() {
    let gateway = cluster_gateway(&seed(), &[FINALIZER]);
    let inputs = inputs_with(&gateway, &["media-server.yaml"]);
    let expected = rendered(&inputs, &gateway, now());
    let registry = Registry::default();
    let (mut server, client) = ApiServer::new();
    let task = spawn_reconcile(
        gateway.clone(),
        context(client, inputs.clone(), now(), registry.clone()),
    );
    expect_applies(&mut server, &expected).await;

    let gateway_reply = serde_json::to_value(&gateway).unwrap();
    let status = server
        .expect(
            "PATCH",
            &format!("{GATEWAY_URI}/status?"),
            Some(gateway_reply),
        )
        .await;
    assert_eq!(status.content_type, "application/merge-patch+json");
    assert_eq!(
        status.body,
        json!({"status": {
            // null: a merge patch clears addresses the Gateway had.
            "addresses": null,
            "conditions": [
                condition("Accepted", "True", "Accepted", "", NOW),
                condition(
                    "Programmed", "False", "AddressNotAssigned",
                    "waiting for the LoadBalancer Service's address", NOW,
                ),
                // STUNner's rule: one protocol per LoadBalancer unless mixed is enabled.
                condition(
                    "xturn.io/Translated", "True", "Translated",
                    "listener tcp-listener: left out of the LoadBalancer Service, which carries \
                     the first listener's protocol only (set \
                     stunner.l7mp.io/enable-mixed-protocol-lb: \"true\")",
                    NOW,
                ),
            ],
            "listeners": [listener_status("udp-listener"), listener_status("tcp-listener")],
        }})
    );

    let route_reply = serde_json::to_value(inputs.routes[0].as_ref()).unwrap();
    let route = server
        .expect("PATCH", ROUTE_STATUS_URI, Some(route_reply))
        .await;
    assert_eq!(route.content_type, "application/merge-patch+json");
    assert_eq!(
        route.body,
        json!({"status": {"parents": route_parents_accepted()}})
    );

    // Waiting for the LoadBalancer address: looked at again soon.
    assert_eq!(
        server.finish(task).await.unwrap(),
        Action::requeue(Duration::from_secs(10))
    );
    let registry = registry.read().unwrap();
    assert_eq!(registry.len(), 1);
    assert_eq!(
        registry.get(&("stunner".to_owned(), "stunner-gateway".to_owned())),
        Some(&expected.ice)
    );
}

#[tokio::test]
async fn an_unchanged_gateway_is_applied_again_without_status_patches() {
    // First pass, to learn the statuses the API server would then hold.
    let mut gateway = cluster_gateway(&seed(), &[FINALIZER]);
    let mut inputs = inputs_with(&gateway, &["media-server.yaml", "stunner-service-lb.yaml"]);
    let (mut server, client) = ApiServer::new();
    let task = spawn_reconcile(
        gateway.clone(),
        context(client, inputs.clone(), now(), Registry::default()),
    );
    for path in APPLIES {
        server
            .expect("PATCH", &format!("{path}{APPLY}"), None)
            .await;
    }
    let status = server
        .expect(
            "PATCH",
            &format!("{GATEWAY_URI}/status?"),
            Some(serde_json::to_value(&gateway).unwrap()),
        )
        .await;
    assert_eq!(
        status.body["status"]["addresses"],
        json!([{"type": "IPAddress", "value": "198.18.1.1"}])
    );
    assert_eq!(
        status.body["status"]["conditions"][1],
        condition("Programmed", "True", "Programmed", "", NOW)
    );
    let route = server
        .expect(
            "PATCH",
            ROUTE_STATUS_URI,
            Some(serde_json::to_value(inputs.routes[0].as_ref()).unwrap()),
        )
        .await;
    assert_eq!(
        server.finish(task).await.unwrap(),
        Action::requeue(Duration::from_secs(300))
    );

    // The API server now holds those statuses; six hours later nothing has changed.
    let stored: GatewayStatus = serde_json::from_value(status.body["status"].clone()).unwrap();
    gateway.status = Some(stored);
    let mut stored_route = inputs.routes[0].as_ref().clone();
    stored_route.status =
        Some(serde_json::from_value::<UDPRouteStatus>(route.body["status"].clone()).unwrap());
    inputs.routes = vec![Arc::new(stored_route)];
    set_gateway(&mut inputs, gateway.clone());
    let expected = rendered(&inputs, &gateway, later());
    let (mut server, client) = ApiServer::new();
    let task = spawn_reconcile(
        gateway.clone(),
        context(client, inputs, later(), Registry::default()),
    );
    expect_applies(&mut server, &expected).await;
    assert_eq!(
        server.finish(task).await.unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
}

/// What a Gateway leaving us (deleted, or moved to another class) starts from: the seed and
/// its backend plus `more` documents; its route accepted by it; its relays (the seed's
/// Dataplane names them "stunner") and another Gateway's Deployment (another owner); and the
/// credential service serving it.
fn leaving(gateway: &Gateway, more: &[&str]) -> (Inputs, Registry) {
    let mut inputs = inputs_with(gateway, &["media-server.yaml"]);
    for yaml in more {
        add(&mut inputs, yaml);
    }
    let mut route = inputs.routes[0].as_ref().clone();
    route.status =
        Some(serde_json::from_value(json!({"parents": route_parents_accepted()})).unwrap());
    inputs.routes = vec![Arc::new(route)];
    for (name, uid) in [("stunner", UID), ("other", "another-uid")] {
        add(&mut inputs, &owned_deployment(name, uid));
    }
    let registry = Registry::default();
    registry.write().unwrap().insert(
        gateway_key(),
        rendered(&seed(), &the_gateway(&seed()), now()).ice,
    );
    (inputs, registry)
}

fn gateway_key() -> (String, String) {
    ("stunner".to_owned(), "stunner-gateway".to_owned())
}

/// Takes the patch that removes the leaving Gateway's entry from its route's status.
async fn expect_route_left(server: &mut ApiServer, inputs: &Inputs) {
    let route = serde_json::to_value(inputs.routes[0].as_ref()).unwrap();
    let seen = server.expect("PATCH", ROUTE_STATUS_URI, Some(route)).await;
    assert_eq!(seen.body, json!({"status": {"parents": []}}));
}

#[tokio::test]
async fn a_deleted_gateway_leaves_its_routes_then_drops_the_finalizer() {
    let mut gateway = cluster_gateway(&seed(), &[FINALIZER]);
    gateway.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    // Its relays are left to the garbage collector: no deletes.
    let (inputs, registry) = leaving(&gateway, &[]);
    let (mut server, client) = ApiServer::new();
    let task = spawn_reconcile(
        gateway.clone(),
        context(client, inputs.clone(), later(), registry.clone()),
    );
    expect_route_left(&mut server, &inputs).await;
    let mut gone = gateway.clone();
    gone.metadata.finalizers = None;
    let seen = server
        .expect(
            "PATCH",
            &format!("{GATEWAY_URI}?"),
            Some(serde_json::to_value(&gone).unwrap()),
        )
        .await;
    assert_eq!(seen.content_type, "application/json-patch+json");
    assert_eq!(
        seen.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "xturn.io/gateway-finalizer"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    assert_eq!(server.finish(task).await.unwrap(), Action::await_change());
    assert!(!registry.read().unwrap().contains_key(&gateway_key()));
}

#[tokio::test]
async fn a_deleted_gateway_keeps_other_controllers_route_entries() {
    let mut gateway = cluster_gateway(&seed(), &["example.com/keep", FINALIZER]);
    gateway.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    let mut inputs = inputs_with(&gateway, &["media-server.yaml"]);
    let other = json!({
        "parentRef": {"name": "elsewhere"},
        "controllerName": "example.com/other",
        "conditions": [],
    });
    let mut parents = route_parents_accepted();
    parents.as_array_mut().unwrap().push(other.clone());
    let mut route = inputs.routes[0].as_ref().clone();
    route.status = Some(serde_json::from_value(json!({ "parents": parents })).unwrap());
    inputs.routes = vec![Arc::new(route.clone())];
    let (mut server, client) = ApiServer::new();
    let task = spawn_reconcile(
        gateway.clone(),
        context(client, inputs, now(), Registry::default()),
    );
    let seen = server
        .expect(
            "PATCH",
            ROUTE_STATUS_URI,
            Some(serde_json::to_value(&route).unwrap()),
        )
        .await;
    assert_eq!(seen.body, json!({"status": {"parents": [other]}}));
    let seen = server
        .expect(
            "PATCH",
            &format!("{GATEWAY_URI}?"),
            Some(serde_json::to_value(&gateway).unwrap()),
        )
        .await;
    // Our finalizer is the second.
    assert_eq!(
        seen.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/1", "value": "xturn.io/gateway-finalizer"},
            {"op": "remove", "path": "/metadata/finalizers/1"},
        ])
    );
    assert_eq!(server.finish(task).await.unwrap(), Action::await_change());
}

#[tokio::test]
async fn a_refused_gateway_gets_only_its_status() {
    let gateway = cluster_gateway(&seed(), &[FINALIZER]);
    let mut inputs = inputs_with(&gateway, &["media-server.yaml"]);
    inputs.secrets.clear();
    // The route already says what the operator would say of it (its backend resolves, the
    // Gateway names it): no route status patch.
    let mut route = inputs.routes[0].as_ref().clone();
    route.status =
        Some(serde_json::from_value(json!({"parents": route_parents_accepted()})).unwrap());
    inputs.routes = vec![Arc::new(route)];
    let registry = Registry::default();
    let (mut server, client) = ApiServer::new();
    let task = spawn_reconcile(
        gateway.clone(),
        context(client, inputs, now(), registry.clone()),
    );
    let message = "password: Secret stunner/stunner-credentials not found";
    let seen = server
        .expect(
            "PATCH",
            &format!("{GATEWAY_URI}/status?"),
            Some(serde_json::to_value(&gateway).unwrap()),
        )
        .await;
    assert_eq!(
        seen.body,
        json!({"status": {
            "addresses": null,
            "conditions": [
                condition("Accepted", "False", "InvalidParameters", message, NOW),
                condition("Programmed", "False", "Invalid", message, NOW),
            ],
        }})
    );
    assert_eq!(
        server.finish(task).await.unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    assert!(registry.read().unwrap().is_empty());
}

/// A Deployment labelled for the seed's Gateway and owned by the Gateway of `uid`.
fn owned_deployment(name: &str, uid: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: stunner\n  \
         labels: {{xturn.io/gateway: stunner-gateway}}\n  ownerReferences:\n  - {{apiVersion: gateway.networking.k8s.io/v1, \
         kind: Gateway, name: stunner-gateway, uid: {uid}, controller: true}}\n\
         spec: {{selector: {{matchLabels: {{a: b}}}}, template: {{metadata: {{labels: {{a: b}}}}}}}}\n"
    )
}

fn other_class() -> &'static str {
    "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: other}\n\
     spec: {controllerName: example.com/other-controller}\n"
}

#[tokio::test]
async fn a_gateway_of_another_class_is_left_alone() {
    let mut gateway = cluster_gateway(&seed(), &[]);
    gateway.spec.gateway_class_name = "other".to_owned();
    let mut inputs = inputs_with(&gateway, &["media-server.yaml"]);
    add(&mut inputs, other_class());
    let (server, client) = ApiServer::new();
    let task = spawn_reconcile(gateway, context(client, inputs, now(), Registry::default()));
    assert_eq!(server.finish(task).await.unwrap(), Action::await_change());
}

#[tokio::test]
async fn a_gateway_moved_to_another_class_is_let_go() {
    let mut gateway = cluster_gateway(&seed(), &[FINALIZER]);
    gateway.spec.gateway_class_name = "other".to_owned();
    let (inputs, registry) = leaving(&gateway, &[other_class()]);
    let (mut server, client) = ApiServer::new();
    let task = spawn_reconcile(
        gateway.clone(),
        context(client, inputs.clone(), now(), registry.clone()),
    );
    expect_route_left(&mut server, &inputs).await;
    // Its relays go; the other Gateway's stay.
    for path in [
        "/api/v1/namespaces/stunner/services/stunner",
        "/apis/apps/v1/namespaces/stunner/deployments/stunner",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/stunner/rolebindings/stunner",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/stunner/roles/stunner",
        "/api/v1/namespaces/stunner/serviceaccounts/stunner",
        "/api/v1/namespaces/stunner/configmaps/stunner",
    ] {
        server.expect_delete(path).await;
    }
    let seen = server
        .expect(
            "PATCH",
            &format!("{GATEWAY_URI}?"),
            Some(serde_json::to_value(&gateway).unwrap()),
        )
        .await;
    // Only our finalizer goes, and only if it is still where the operator saw it.
    assert_eq!(seen.content_type, "application/json-patch+json");
    assert_eq!(
        seen.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    assert_eq!(server.finish(task).await.unwrap(), Action::await_change());
    assert!(registry.read().unwrap().is_empty());
}

const CLASS_STATUS_URI: &str =
    "/apis/gateway.networking.k8s.io/v1/gatewayclasses/stunner-gatewayclass/status?";

fn our_class(inputs: &Inputs) -> GatewayClass {
    let mut class = inputs.gateway_classes[0].as_ref().clone();
    class.metadata.generation = Some(1);
    class
}

async fn reconcile_class(class: &GatewayClass, inputs: Inputs, expected: Option<Value>) -> Action {
    let (mut server, client) = ApiServer::new();
    let ctx = context(client, inputs, now(), Registry::default());
    let task = tokio::spawn(reconcile::reconcile_class(
        Arc::new(class.clone()),
        Arc::new(ctx),
    ));
    if let Some(expected) = expected {
        let seen = server
            .expect(
                "PATCH",
                CLASS_STATUS_URI,
                Some(serde_json::to_value(class).unwrap()),
            )
            .await;
        assert_eq!(seen.content_type, "application/merge-patch+json");
        assert_eq!(seen.body, expected);
    }
    server.finish(task).await.unwrap()
}

#[tokio::test]
async fn our_gateway_class_is_accepted_once() {
    let inputs = seed();
    let mut class = our_class(&inputs);
    let accepted = condition("Accepted", "True", "Accepted", "", NOW);
    let action = reconcile_class(
        &class,
        inputs.clone(),
        Some(json!({"status": {"conditions": [accepted.clone()]}})),
    )
    .await;
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    // Already accepted: no patch.
    class.status = Some(serde_json::from_value(json!({"conditions": [accepted]})).unwrap());
    let action = reconcile_class(&class, inputs, None).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn a_class_without_its_parameters_is_not_accepted() {
    let mut inputs = seed();
    inputs.gateway_configs.clear();
    let class = our_class(&inputs);
    let message = "GatewayConfig stunner/stunner-config not found";
    reconcile_class(
        &class,
        inputs,
        Some(json!({"status": {"conditions": [
            condition("Accepted", "False", "InvalidParameters", message, NOW),
        ]}})),
    )
    .await;

    let inputs = seed();
    let mut class = our_class(&inputs);
    class.spec.parameters_ref = None;
    let message = "GatewayClass stunner-gatewayclass has no parametersRef naming a GatewayConfig";
    reconcile_class(
        &class,
        inputs,
        Some(json!({"status": {"conditions": [
            condition("Accepted", "False", "InvalidParameters", message, NOW),
        ]}})),
    )
    .await;
}

#[tokio::test]
async fn another_controllers_class_is_left_alone() {
    let mut inputs = seed();
    add(&mut inputs, other_class());
    let class = inputs
        .gateway_classes
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("other"))
        .unwrap()
        .as_ref()
        .clone();
    assert_eq!(
        reconcile_class(&class, inputs, None).await,
        Action::await_change()
    );
}

/// The seven applies of the seed's Gateway with a DaemonSet Dataplane without `workloadName`:
/// every object is named after the Gateway.
const DAEMON_SET_APPLIES: [&str; 7] = [
    "/api/v1/namespaces/stunner/configmaps/stunner-gateway",
    "/api/v1/namespaces/stunner/serviceaccounts/stunner-gateway",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/stunner/roles/stunner-gateway",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/stunner/rolebindings/stunner-gateway",
    "/api/v1/namespaces/stunner/secrets/stunner-gateway-auth",
    "/apis/apps/v1/namespaces/stunner/daemonsets/stunner-gateway",
    "/api/v1/namespaces/stunner/services/stunner-gateway",
];

/// The seed and its backend with the default Dataplane replaced by a DaemonSet one.
fn daemon_set_inputs(gateway: &Gateway) -> Inputs {
    let mut inputs = inputs_with(gateway, &["media-server.yaml"]);
    inputs.dataplanes.clear();
    add(
        &mut inputs,
        "apiVersion: stunner.l7mp.io/v1\nkind: Dataplane\nmetadata: {name: default}\n\
         spec: {dataplaneResource: DaemonSet}\n",
    );
    inputs
}

#[tokio::test]
async fn a_daemonset_dataplane_is_applied_as_a_daemonset() {
    let gateway = cluster_gateway(&seed(), &[FINALIZER]);
    let inputs = daemon_set_inputs(&gateway);
    let (mut server, client) = ApiServer::new();
    let task = spawn_reconcile(
        gateway.clone(),
        context(client, inputs.clone(), now(), Registry::default()),
    );
    for path in DAEMON_SET_APPLIES {
        let seen = server
            .expect("PATCH", &format!("{path}{APPLY}"), None)
            .await;
        assert_eq!(seen.body["metadata"]["ownerReferences"], owner(), "{path}");
    }
    server.expect_status_patches(&gateway, &inputs).await;
    assert_eq!(
        server.finish(task).await.unwrap(),
        Action::requeue(Duration::from_secs(10))
    );
}

#[tokio::test]
async fn a_dataplane_switched_to_daemonset_deletes_the_old_deployment() {
    let gateway = cluster_gateway(&seed(), &[FINALIZER]);
    let mut inputs = daemon_set_inputs(&gateway);
    // The Deployment the Gateway had before the switch, and one of another Gateway's (not ours
    // to delete: another owner).
    for (name, uid) in [("stunner-gateway", UID), ("other", "another-uid")] {
        add(&mut inputs, &owned_deployment(name, uid));
    }
    let (mut server, client) = ApiServer::new();
    let task = spawn_reconcile(
        gateway.clone(),
        context(client, inputs.clone(), now(), Registry::default()),
    );
    for path in DAEMON_SET_APPLIES {
        server
            .expect("PATCH", &format!("{path}{APPLY}"), None)
            .await;
    }
    server
        .expect_delete("/apis/apps/v1/namespaces/stunner/deployments/stunner-gateway")
        .await;
    server.expect_status_patches(&gateway, &inputs).await;
    server.finish(task).await.unwrap();
}

/// A Gateway API UDPRoute (v1alpha2) attaches like STUNner's, and its status is written back
/// to Gateway API's resource.
#[tokio::test]
async fn a_gateway_api_route_gets_its_status_in_gateway_apis_resource() {
    let gateway = cluster_gateway(&seed(), &[FINALIZER]);
    let mut inputs = inputs_with(&gateway, &["media-server.yaml"]);
    inputs.gateway_api_routes = std::mem::take(&mut inputs.routes);
    let expected = rendered(&inputs, &gateway, now());
    assert_eq!(
        expected.config.clusters.len(),
        1,
        "the route's backends are used"
    );
    let (mut server, client) = ApiServer::new();
    let task = spawn_reconcile(
        gateway.clone(),
        context(client, inputs.clone(), now(), Registry::default()),
    );
    expect_applies(&mut server, &expected).await;
    server
        .expect(
            "PATCH",
            &format!("{GATEWAY_URI}/status?"),
            Some(serde_json::to_value(&gateway).unwrap()),
        )
        .await;
    let route_reply = serde_json::to_value(inputs.gateway_api_routes[0].as_ref()).unwrap();
    let route = server
        .expect(
            "PATCH",
            "/apis/gateway.networking.k8s.io/v1alpha2/namespaces/stunner/udproutes/media-route/status?",
            Some(route_reply),
        )
        .await;
    assert_eq!(
        route.body,
        json!({"status": {"parents": route_parents_accepted()}})
    );
    server.finish(task).await.unwrap();
}

/// A TLS listener's certificate is applied as the relay's own Secret before the workload that
/// mounts it, as are the credentials.
#[tokio::test]
async fn a_tls_gateway_applies_its_certificates_secret_before_the_workload() {
    let mut gateway = cluster_gateway(&seed(), &[FINALIZER]);
    gateway.spec.listeners = serde_json::from_value(json!([{
        "name": "tls-listener", "port": 443, "protocol": "TURN-TLS",
        "tls": {"certificateRefs": [{"name": "turn-cert"}]},
    }]))
    .unwrap();
    let mut inputs = inputs_with(&gateway, &["media-server.yaml"]);
    let mut skipped = Vec::new();
    inputs
        .add_yaml(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: turn-cert, namespace: stunner}\n\
             stringData: {tls.crt: CERT, tls.key: KEY}\n",
            "test",
            &mut skipped,
        )
        .unwrap();
    let expected = rendered(&inputs, &gateway, now());
    let (mut server, client) = ApiServer::new();
    let task = spawn_reconcile(
        gateway.clone(),
        context(client, inputs.clone(), now(), Registry::default()),
    );
    // The certificates, then the credentials, each before the workload that mounts them.
    assert!(expected.certificates.is_some() && expected.credentials.is_some());
    expect_applies(&mut server, &expected).await;
    task.abort();
}

/// The operator reads the Secrets Gateways refer to with one `get` each — a newly referenced
/// one at once, all of them again on each refresh — and announces a change only when one was
/// rotated, appeared or went away.
#[tokio::test]
async fn referenced_secrets_are_read_one_get_each_and_changes_are_noticed() {
    let mut inputs = seed_with(&["media-server.yaml"]);
    inputs.secrets.clear();
    let uri = "/api/v1/namespaces/stunner/secrets/stunner-credentials";
    let secret = |version: &str, password: &str| {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "stunner-credentials", "namespace": "stunner",
                            "resourceVersion": version},
               "stringData": {"password": password}})
    };
    let secrets = Arc::new(ReferencedSecrets::default());
    let (mut server, client) = ApiServer::new();
    let refresh = |all: bool| {
        let (secrets, client, inputs) = (Arc::clone(&secrets), client.clone(), inputs.clone());
        tokio::spawn(async move { secrets.refresh(&client, &inputs, &settings(), all).await })
    };
    // The first read.
    let task = refresh(false);
    server.expect("GET", uri, Some(secret("1", "one"))).await;
    assert!(task.await.unwrap());
    let password = |secrets: &ReferencedSecrets| {
        let all = secrets.all();
        assert_eq!(all.len(), 1);
        all[0].string_data.as_ref().unwrap()["password"].clone()
    };
    assert_eq!(password(&secrets), "one");
    // Another change elsewhere: nothing new is referenced, nothing is read.
    assert!(!refresh(false).await.unwrap());
    // The periodic refresh: read again, unchanged.
    let task = refresh(true);
    server.expect("GET", uri, Some(secret("1", "one"))).await;
    assert!(!task.await.unwrap());
    // Rotated.
    let task = refresh(true);
    server.expect("GET", uri, Some(secret("2", "two"))).await;
    assert!(task.await.unwrap());
    assert_eq!(password(&secrets), "two");
    // The API server away: the last value stays.
    let task = refresh(true);
    let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "reason": "InternalError", "code": 500, "message": "etcd down"});
    server.expect_answered("GET", uri, 500, Some(failure)).await;
    assert!(!task.await.unwrap());
    assert_eq!(password(&secrets), "two");
    // Deleted.
    let task = refresh(true);
    let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "reason": "NotFound", "code": 404, "message": "not found"});
    server.expect_answered("GET", uri, 404, Some(gone)).await;
    assert!(task.await.unwrap());
    assert!(secrets.is_empty());
    // No longer referenced (the Gateway is gone): forgotten without a request.
    let task = refresh(false);
    server.expect("GET", uri, Some(secret("3", "three"))).await;
    assert!(task.await.unwrap());
    let mut unreferenced = inputs.clone();
    unreferenced.gateways.clear();
    let (s, c) = (Arc::clone(&secrets), client.clone());
    let changed =
        tokio::spawn(async move { s.refresh(&c, &unreferenced, &settings(), true).await });
    assert!(changed.await.unwrap());
    assert!(secrets.is_empty());
    drop(client);
    assert!(
        server.handle.next_request().await.is_none(),
        "no other request"
    );
}
