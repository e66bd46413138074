//! The resolver of STRICT_DNS clusters' host names.
//!
//! Each host name is looked up (A and AAAA, with the system resolver: `getaddrinfo` through
//! [`tokio::net::lookup_host`]) when it first appears and again every [`INTERVAL`], as stunnerd
//! does. A lookup that fails (or answers no address) keeps the name's previous addresses, and
//! is counted ([`DnsResolver::failures`], `xturn_dns_resolution_failures_total`) and logged.
//! What the names resolve to lives in a sans-IO [`ResolvedNames`] (turn-proto's policy module);
//! whenever it changes, the new one is published on a watch channel and the agent rebuilds the
//! peer policy from it ([`crate::config::Config::peer_policy_resolved`]).
//!
//! The lookup itself is a [`Lookup`] function, so the update logic runs in tests without a
//! network.
use std::{
    collections::{BTreeSet, HashSet},
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tracing::{debug, info, warn};
use turn_proto::policy::{NameUpdate, ResolvedNames};

/// How often every name is looked up again (stunnerd's interval).
pub const INTERVAL: Duration = Duration::from_secs(5);

/// The future a [`Lookup`] returns.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Looks a host name up: its addresses, A and AAAA.
pub type Lookup = Arc<dyn Fn(String) -> LookupFuture + Send + Sync>;

/// The system resolver (`getaddrinfo`), through tokio.
pub fn system_lookup() -> Lookup {
    Arc::new(|host: String| -> LookupFuture {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            ips.sort_unstable();
            ips.dedup();
            Ok(ips)
        })
    })
}

/// The resolver's state: the names to resolve, what they resolved to, and the failures.
pub struct DnsResolver {
    lookup: Lookup,
    hosts: BTreeSet<String>,
    names: ResolvedNames,
    /// Names whose last lookup failed (logged once per run of failures).
    failing: HashSet<String>,
    failures: Arc<AtomicU64>,
}

impl DnsResolver {
    pub fn new(lookup: Lookup) -> DnsResolver {
        DnsResolver {
            lookup,
            hosts: BTreeSet::new(),
            names: ResolvedNames::default(),
            failing: HashSet::new(),
            failures: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Lookups that failed (or answered nothing) since the start, shared with the metrics.
    pub fn failures(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.failures)
    }

    /// What the names resolved to.
    pub fn names(&self) -> &ResolvedNames {
        &self.names
    }

    /// Makes `hosts` the names to resolve: names no longer wanted are forgotten, new ones are
    /// looked up at once. True if the resolved addresses changed.
    pub async fn set_hosts(&mut self, hosts: BTreeSet<String>) -> bool {
        let added: Vec<String> = hosts.difference(&self.hosts).cloned().collect();
        self.failing.retain(|h| hosts.contains(h));
        let mut changed = self.names.retain(&hosts);
        self.hosts = hosts;
        for host in added {
            changed |= self.resolve(&host).await;
        }
        changed
    }

    /// Looks every name up again. True if any name's addresses changed.
    pub async fn refresh(&mut self) -> bool {
        let mut changed = false;
        for host in self.hosts.clone() {
            changed |= self.resolve(&host).await;
        }
        changed
    }

    /// Looks `host` up and applies the outcome. True if its addresses changed.
    async fn resolve(&mut self, host: &str) -> bool {
        let outcome = (self.lookup)(host.to_owned()).await;
        let (update, error) = match outcome {
            Ok(ips) => {
                let update = self.names.update(host, Some(ips.clone()));
                (update, ips.is_empty().then(|| "no address".to_owned()))
            }
            Err(e) => (self.names.update(host, None), Some(e.to_string())),
        };
        match update {
            NameUpdate::Failed => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let kept = self.names.addresses(host).count();
                let error = error.unwrap_or_default();
                if self.failing.insert(host.to_owned()) {
                    warn!(host, %error, kept, "cannot resolve a STRICT_DNS endpoint; its previous addresses stay");
                } else {
                    debug!(host, %error, kept, "cannot resolve a STRICT_DNS endpoint");
                }
                false
            }
            NameUpdate::Changed => {
                self.failing.remove(host);
                let addresses: Vec<IpAddr> = self.names.addresses(host).collect();
                info!(host, ?addresses, "STRICT_DNS endpoint resolved");
                true
            }
            NameUpdate::Unchanged => {
                if self.failing.remove(host) {
                    info!(host, "STRICT_DNS endpoint resolves again");
                }
                false
            }
        }
    }
}

/// Runs `resolver` in the background: it resolves the names `hosts` holds (at once when they
/// change, and every `interval`), and publishes every change of the resolved addresses on the
/// returned channel (whose first value is what `resolver` has now). Ends when `hosts`' sender
/// goes.
pub fn spawn(
    mut resolver: DnsResolver,
    mut hosts: watch::Receiver<BTreeSet<String>>,
    interval: Duration,
) -> watch::Receiver<ResolvedNames> {
    let (tx, rx) = watch::channel(resolver.names().clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: the names were resolved before we started.
        tick.tick().await;
        loop {
            let changed = tokio::select! {
                _ = tick.tick() => resolver.refresh().await,
                changed = hosts.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let wanted = hosts.borrow_and_update().clone();
                    resolver.set_hosts(wanted).await
                }
            };
            if changed && tx.send(resolver.names().clone()).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::{collections::HashMap, sync::Mutex};

    /// A lookup answering from a table the test edits; a missing name fails.
    fn table_lookup(table: Arc<Mutex<HashMap<String, Vec<IpAddr>>>>) -> Lookup {
        Arc::new(move |host: String| -> LookupFuture {
            let answer = table.lock().unwrap().get(&host).cloned();
            Box::pin(async move {
                answer.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))
            })
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn hosts(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|h| (*h).to_owned()).collect()
    }

    #[tokio::test]
    async fn resolves_keeps_the_last_answer_on_failure_and_counts_it() {
        let table = Arc::new(Mutex::new(HashMap::new()));
        table
            .lock()
            .unwrap()
            .insert("media.svc".to_owned(), vec![ip("10.0.0.1"), ip("fd00::1")]);
        let mut resolver = DnsResolver::new(table_lookup(Arc::clone(&table)));
        let failures = resolver.failures();
        assert!(resolver.set_hosts(hosts(&["media.svc", "gone.svc"])).await);
        assert_eq!(
            resolver.names().addresses("media.svc").collect::<Vec<_>>(),
            [ip("10.0.0.1"), ip("fd00::1")]
        );
        assert_eq!(failures.load(Ordering::Relaxed), 1, "gone.svc failed");
        // Nothing new: no change.
        assert!(!resolver.refresh().await);
        assert_eq!(failures.load(Ordering::Relaxed), 2);
        // The name stops resolving: the addresses stay, the failure counts.
        table.lock().unwrap().remove("media.svc");
        assert!(!resolver.refresh().await);
        assert_eq!(resolver.names().addresses("media.svc").count(), 2);
        assert_eq!(failures.load(Ordering::Relaxed), 4);
        // An empty answer is a failure too.
        table
            .lock()
            .unwrap()
            .insert("media.svc".to_owned(), Vec::new());
        assert!(!resolver.refresh().await);
        assert_eq!(resolver.names().addresses("media.svc").count(), 2);
        // A new answer replaces them.
        table
            .lock()
            .unwrap()
            .insert("media.svc".to_owned(), vec![ip("10.0.0.2")]);
        assert!(resolver.refresh().await);
        assert_eq!(
            resolver.names().addresses("media.svc").collect::<Vec<_>>(),
            [ip("10.0.0.2")]
        );
        // A name no cluster has any more is forgotten.
        assert!(resolver.set_hosts(hosts(&["gone.svc"])).await);
        assert_eq!(resolver.names().addresses("media.svc").count(), 0);
    }

    #[tokio::test]
    async fn the_background_task_publishes_changes() {
        let interval = Duration::from_millis(50);
        let table = Arc::new(Mutex::new(HashMap::new()));
        table
            .lock()
            .unwrap()
            .insert("a.svc".to_owned(), vec![ip("10.0.0.1")]);
        let mut resolver = DnsResolver::new(table_lookup(Arc::clone(&table)));
        resolver.set_hosts(hosts(&["a.svc"])).await;
        let (hosts_tx, hosts_rx) = watch::channel(hosts(&["a.svc"]));
        let mut names = spawn(resolver, hosts_rx, interval);
        assert_eq!(names.borrow().addresses("a.svc").count(), 1);

        // A change of the answer shows after the next round.
        table
            .lock()
            .unwrap()
            .insert("a.svc".to_owned(), vec![ip("10.0.0.1"), ip("10.0.0.3")]);
        tokio::time::timeout(Duration::from_secs(2), names.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(names.borrow_and_update().addresses("a.svc").count(), 2);

        // A new name is resolved at once.
        table
            .lock()
            .unwrap()
            .insert("b.svc".to_owned(), vec![ip("10.0.0.9")]);
        hosts_tx.send(hosts(&["a.svc", "b.svc"])).unwrap();
        tokio::time::timeout(Duration::from_secs(2), names.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            names.borrow().addresses("b.svc").collect::<Vec<_>>(),
            [ip("10.0.0.9")]
        );
    }

    #[tokio::test]
    async fn localhost_resolves_with_the_system_resolver() {
        let mut resolver = DnsResolver::new(system_lookup());
        assert!(resolver.set_hosts(hosts(&["localhost"])).await);
        let addresses: Vec<IpAddr> = resolver.names().addresses("localhost").collect();
        assert!(
            addresses.iter().any(IpAddr::is_loopback),
            "localhost resolved to {addresses:?}"
        );
        assert_eq!(resolver.failures().load(Ordering::Relaxed), 0);
    }
}
