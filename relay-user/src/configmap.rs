//! The configuration from a Kubernetes ConfigMap (`xturnd --config-map NAMESPACE/NAME`): read
//! once at start, then watched through the API, so a change the operator publishes is applied
//! within about a second (a mounted ConfigMap file is refreshed only on the kubelet's sync
//! period, up to a minute or more). The ConfigMap's `stunnerd.conf` key (or `--config-map-key`)
//! holds the same text a `--config` file would. A deleted ConfigMap, or one without the key,
//! leaves the running configuration in force.
//!
//! The Kubernetes client is behind the default feature `config-map`; an agent built without it
//! does not link kube and refuses `--config-map` with a clear error.
use std::{fmt, str::FromStr};

#[cfg(feature = "config-map")]
use futures::StreamExt;
#[cfg(feature = "config-map")]
use k8s_openapi::api::core::v1::ConfigMap;
#[cfg(feature = "config-map")]
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;
#[cfg(feature = "config-map")]
use tracing::{debug, warn};

/// STUNner's key for the rendered dataplane configuration.
pub const DEFAULT_KEY: &str = "stunnerd.conf";

/// `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapRef {
    pub namespace: String,
    pub name: String,
}

impl FromStr for ConfigMapRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(ConfigMapRef {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
        }
    }
}

impl fmt::Display for ConfigMapRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigMapError {
    #[cfg(feature = "config-map")]
    #[error("ConfigMap {0}: {1}")]
    Api(ConfigMapRef, #[source] kube::Error),
    #[cfg(feature = "config-map")]
    #[error("--config-map: cannot reach the Kubernetes API (in-cluster or KUBECONFIG): {0}")]
    Connect(#[source] kube::Error),
    #[error("ConfigMap {0} has no key {1:?}")]
    NoKey(ConfigMapRef, String),
    #[error("--config-map {0}: this xturnd was built without the `config-map` feature")]
    NotBuiltIn(ConfigMapRef),
}

/// Connects to the Kubernetes API (in-cluster or KUBECONFIG) and reads the configuration text.
pub async fn connect_and_fetch(
    reference: &ConfigMapRef,
    key: &str,
) -> Result<String, ConfigMapError> {
    #[cfg(feature = "config-map")]
    {
        let client = Client::try_default()
            .await
            .map_err(ConfigMapError::Connect)?;
        fetch(client, reference, key).await
    }
    #[cfg(not(feature = "config-map"))]
    {
        let _ = key;
        Err(ConfigMapError::NotBuiltIn(reference.clone()))
    }
}

/// Connects to the Kubernetes API and [`watch`]es the ConfigMap, starting from `initial`.
pub async fn connect_and_watch(
    reference: ConfigMapRef,
    key: String,
    initial: String,
) -> Result<watch::Receiver<String>, ConfigMapError> {
    #[cfg(feature = "config-map")]
    {
        let client = Client::try_default()
            .await
            .map_err(ConfigMapError::Connect)?;
        Ok(watch(client, reference, key, initial))
    }
    #[cfg(not(feature = "config-map"))]
    {
        let _ = (key, initial);
        Err(ConfigMapError::NotBuiltIn(reference))
    }
}

/// The configuration text in `config_map`, `key`.
#[cfg(feature = "config-map")]
pub fn text_of(config_map: &ConfigMap, key: &str) -> Option<String> {
    config_map.data.as_ref()?.get(key).cloned()
}

/// Reads the ConfigMap's configuration text now.
#[cfg(feature = "config-map")]
pub async fn fetch(
    client: Client,
    reference: &ConfigMapRef,
    key: &str,
) -> Result<String, ConfigMapError> {
    let api: Api<ConfigMap> = Api::namespaced(client, &reference.namespace);
    let config_map = api
        .get(&reference.name)
        .await
        .map_err(|e| ConfigMapError::Api(reference.clone(), e))?;
    text_of(&config_map, key)
        .ok_or_else(|| ConfigMapError::NoKey(reference.clone(), key.to_owned()))
}

/// Watches the ConfigMap; the receiver sees each new text (starting with `initial`). The watch
/// reconnects by itself (with backoff) when the API server goes away.
#[cfg(feature = "config-map")]
pub fn watch(
    client: Client,
    reference: ConfigMapRef,
    key: String,
    initial: String,
) -> watch::Receiver<String> {
    let (tx, rx) = watch::channel(initial);
    let api: Api<ConfigMap> = Api::namespaced(client, &reference.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", reference.name));
    tokio::spawn(async move {
        let stream = watcher::watcher(api, config)
            .default_backoff()
            .touched_objects();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(config_map) if config_map.metadata.deletion_timestamp.is_some() => {
                    warn!(config_map = %reference, "ConfigMap being deleted; the running configuration stays");
                }
                Ok(config_map) => match text_of(&config_map, &key) {
                    Some(text) => {
                        let changed = tx.send_if_modified(|current| {
                            if *current == text {
                                false
                            } else {
                                *current = text;
                                true
                            }
                        });
                        debug!(config_map = %reference, changed, "ConfigMap seen");
                        if tx.is_closed() {
                            return;
                        }
                    }
                    None => {
                        warn!(config_map = %reference, key, "ConfigMap has no such key; the running configuration stays");
                    }
                },
                Err(e) => {
                    warn!(config_map = %reference, error = %e, "ConfigMap watch failed; retrying");
                }
            }
        }
    });
    rx
}

#[cfg(test)]
#[cfg(feature = "config-map")]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    fn config_map(text: &str, version: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "gw", "namespace": "stunner", "resourceVersion": version},
            "data": {"stunnerd.conf": text},
        })
    }

    fn respond(send: tower_test::mock::SendResponse<Response<Body>>, body: &serde_json::Value) {
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    #[test]
    fn parses_references() {
        assert_eq!(
            "stunner/gw".parse::<ConfigMapRef>().unwrap(),
            ConfigMapRef {
                namespace: "stunner".into(),
                name: "gw".into()
            }
        );
        for bad in ["gw", "/gw", "stunner/", "a/b/c"] {
            assert!(bad.parse::<ConfigMapRef>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn fetches_the_key_and_names_a_missing_one() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let reference: ConfigMapRef = "stunner/gw".parse().unwrap();
        let server = tokio::spawn(async move {
            for body in [
                config_map("version: v1", "1"),
                serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "gw", "namespace": "stunner"}, "data": {"other": "x"}}),
            ] {
                let (request, send) = handle.next_request().await.unwrap();
                assert_eq!(request.method(), http::Method::GET);
                assert_eq!(
                    request.uri().path(),
                    "/api/v1/namespaces/stunner/configmaps/gw"
                );
                respond(send, &body);
            }
        });
        let text = fetch(client.clone(), &reference, DEFAULT_KEY)
            .await
            .unwrap();
        assert_eq!(text, "version: v1");
        let missing = fetch(client, &reference, DEFAULT_KEY).await.unwrap_err();
        assert!(matches!(missing, ConfigMapError::NoKey(..)), "{missing}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn watch_delivers_changes_only() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let mut rx = watch(
            client,
            "stunner/gw".parse().unwrap(),
            DEFAULT_KEY.to_owned(),
            "one".to_owned(),
        );
        // The watcher lists first (by name), then watches from the list's version.
        let (request, send) = handle.next_request().await.unwrap();
        let uri = request.uri().to_string();
        assert!(
            uri.starts_with("/api/v1/namespaces/stunner/configmaps?"),
            "{uri}"
        );
        assert!(uri.contains("fieldSelector=metadata.name%3Dgw"), "{uri}");
        respond(
            send,
            &serde_json::json!({"apiVersion": "v1", "kind": "ConfigMapList",
                "metadata": {"resourceVersion": "1"}, "items": [config_map("one", "1")]}),
        );
        let (request, send) = handle.next_request().await.unwrap();
        let uri = request.uri().to_string();
        assert!(uri.contains("watch=true"), "{uri}");
        let events: Vec<u8> = [
            serde_json::json!({"type": "MODIFIED", "object": config_map("one", "2")}),
            serde_json::json!({"type": "MODIFIED", "object": config_map("two", "3")}),
        ]
        .iter()
        .flat_map(|e| {
            let mut line = serde_json::to_vec(e).unwrap();
            line.push(b'\n');
            line
        })
        .collect();
        send.send_response(Response::builder().body(Body::from(events)).unwrap());
        // Same text again is no change; "two" is.
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*rx.borrow_and_update(), "two");
    }
}
