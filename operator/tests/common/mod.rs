//! What the operator's integration tests share: the seed manifests, the fixtures, a fixed clock.
#![allow(dead_code)] // each test crate uses a part

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::jiff::Timestamp;
use xturn_operator::{inputs::Inputs, render::Settings};

/// The clock every test renders at.
pub const NOW: &str = "2026-11-24T00:00:00Z";
/// A later time: conditions that did not change must keep `NOW` as their transition time.
pub const LATER: &str = "2026-11-24T06:00:00Z";
pub const AGENT_IMAGE: &str = "registry.test/xturnd:1";
pub const CONTROLLER: &str = "xturn.io/gateway-operator";
/// The seed's Secret value (00-gatewayclass.yaml).
pub const SEED_SECRET: &str = "change-me-to-a-long-random-secret";

pub fn now() -> Timestamp {
    NOW.parse().unwrap()
}

pub fn later() -> Timestamp {
    LATER.parse().unwrap()
}

pub fn settings() -> Settings {
    Settings {
        controller_names: xturn_operator::render::DEFAULT_CONTROLLER_NAMES
            .map(str::to_owned)
            .to_vec(),
        agent_image: AGENT_IMAGE.to_owned(),
        now: now(),
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// deploy/examples/stunner-seed/*.yaml, in name order.
pub fn seed_files() -> Vec<PathBuf> {
    let dir = root().join("deploy/examples/stunner-seed");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "seed files in {}: {files:?}", dir.display());
    files
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The seed manifests plus the named fixtures.
pub fn seed_with(fixtures: &[&str]) -> Inputs {
    let mut files = seed_files();
    files.extend(fixtures.iter().map(|f| fixture(f)));
    let (inputs, skipped) = Inputs::from_files(&files).unwrap();
    // KEDA's ScaledObject is not an input (the Namespace is: allowedRoutes selectors).
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    inputs
}

/// The seed with its backend Service and EndpointSlice.
pub fn seed() -> Inputs {
    seed_with(&["media-server.yaml"])
}

/// Adds YAML documents to a snapshot.
pub fn add(inputs: &mut Inputs, yaml: &str) {
    let mut skipped = Vec::new();
    inputs.add_yaml(yaml, "test", &mut skipped).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
}

/// The snapshot's only Gateway.
pub fn the_gateway(inputs: &Inputs) -> Gateway {
    assert_eq!(inputs.gateways.len(), 1);
    inputs.gateways[0].as_ref().clone()
}

/// Replaces the snapshot's Gateways by `gateway`.
pub fn set_gateway(inputs: &mut Inputs, gateway: Gateway) {
    inputs.gateways = vec![Arc::new(gateway)];
}

/// Conditions as `(type, status, reason)`.
pub fn briefs(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Vec<(&str, &str, &str)> {
    conditions.iter().map(brief).collect()
}

/// A condition as `(type, status, reason)`.
pub fn brief(c: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition) -> (&str, &str, &str) {
    (c.type_.as_str(), c.status.as_str(), c.reason.as_str())
}
