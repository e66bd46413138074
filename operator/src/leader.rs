//! Leader election: with several operator replicas, one reconciles. The replicas contend for a
//! `coordination.k8s.io` Lease (kube-leader-election's `LeaseLock`); the holder runs the
//! controllers, the others wait and take over within one lease lifetime of the holder going.
//! Every replica keeps its watch caches and serves the credential service meanwhile.
use std::{future::Future, time::Duration};

use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use tokio::{task::JoinHandle, time::Instant};
use tracing::{info, warn};

/// How long a lease holds without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often the holder renews and the others try.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// The Lease's name.
pub const LEASE_NAME: &str = "xturn-operator";

/// A lease to contend for.
pub trait Lease {
    /// `Ok(true)`: held by us now (acquired or renewed); `Ok(false)`: another holds it.
    fn try_acquire_or_renew(&self) -> impl Future<Output = Result<bool, String>> + Send;
    /// Gives the lease up (on shutdown), so another replica takes over at once.
    fn step_down(&self) -> impl Future<Output = ()> + Send;
}

/// The Lease `LEASE_NAME` in `namespace`, held as `identity`.
pub struct KubeLease(LeaseLock);

impl KubeLease {
    pub fn new(client: kube::Client, namespace: &str, identity: String) -> KubeLease {
        KubeLease(LeaseLock::new(
            client,
            namespace,
            LeaseLockParams {
                lease_name: LEASE_NAME.to_owned(),
                holder_id: identity,
                lease_ttl: LEASE_TTL,
            },
        ))
    }
}

impl Lease for KubeLease {
    async fn try_acquire_or_renew(&self) -> Result<bool, String> {
        match self.0.try_acquire_or_renew().await {
            Ok(LeaseLockResult::Acquired(_)) => Ok(true),
            Ok(LeaseLockResult::NotAcquired(_)) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn step_down(&self) {
        if let Err(e) = self.0.step_down().await {
            warn!(error = %e, "could not give the lease up; it expires by itself");
        }
    }
}

/// Runs `lead()` while holding `lease`: started when acquired, stopped when another replica
/// holds it or when it could not be renewed for `LEASE_TTL - RENEW_EVERY` (before it can
/// expire, so two replicas never lead at once). Returns when `lead()` ends by itself (the
/// controllers stop on SIGTERM), after giving the lease up.
pub async fn lead_while_elected<L, F, Fut>(lease: L, lead: F)
where
    L: Lease,
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut leading: Option<JoinHandle<()>> = None;
    let mut renewed = Instant::now();
    let mut tick = tokio::time::interval(RENEW_EVERY);
    loop {
        tick.tick().await;
        if leading.as_ref().is_some_and(JoinHandle::is_finished) {
            lease.step_down().await;
            return;
        }
        let held = match lease.try_acquire_or_renew().await {
            Ok(held) => {
                if held {
                    renewed = Instant::now();
                }
                held
            }
            Err(e) => {
                warn!(error = %e, "lease renewal failed");
                // Still ours until it could expire.
                leading.is_some() && renewed.elapsed() < LEASE_TTL - RENEW_EVERY
            }
        };
        match (held, leading.take()) {
            (true, None) => {
                info!("leading: reconciling");
                leading = Some(tokio::spawn(lead()));
            }
            (false, Some(task)) => {
                warn!("no longer leading: stopping the controllers");
                task.abort();
            }
            (_, task) => leading = task,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// A lease answering from a script, then "held by another".
    struct Scripted {
        answers: Mutex<Vec<Result<bool, String>>>,
        stepped_down: Arc<AtomicUsize>,
    }

    impl Lease for &Scripted {
        async fn try_acquire_or_renew(&self) -> Result<bool, String> {
            let mut answers = self.answers.lock().unwrap();
            if answers.is_empty() {
                Ok(false)
            } else {
                answers.remove(0)
            }
        }

        async fn step_down(&self) {
            self.stepped_down.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Counts starts, and runs (until aborted or `forever` is false) as the controllers would.
    fn controllers(
        started: &Arc<AtomicUsize>,
        running: &Arc<AtomicUsize>,
        forever: bool,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + use<> {
        let (started, running) = (Arc::clone(started), Arc::clone(running));
        move || {
            started.fetch_add(1, Ordering::SeqCst);
            let running = Arc::clone(&running);
            Box::pin(async move {
                struct Running(Arc<AtomicUsize>);
                impl Drop for Running {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                running.fetch_add(1, Ordering::SeqCst);
                let _guard = Running(running);
                if forever {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_secs(12)).await;
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn leads_only_while_holding_the_lease() {
        let lease = Scripted {
            // Another holds it; we get it; renewals; a failed renewal (still ours); a
            // second failure past the safe window; another holds it.
            answers: Mutex::new(vec![
                Ok(false),
                Ok(true),
                Ok(true),
                Err("timeout".into()),
                Err("timeout".into()),
                Ok(false),
            ]),
            stepped_down: Arc::default(),
        };
        let (started, running) = (Arc::default(), Arc::default());
        let elector = tokio::spawn({
            let lease: &'static Scripted = Box::leak(Box::new(lease));
            lead_while_elected(lease, controllers(&started, &running, true))
        });
        let at = |secs: u64| tokio::time::sleep(Duration::from_secs(secs) / 2);
        // t=0: not ours.
        at(1).await;
        assert_eq!(running.load(Ordering::SeqCst), 0);
        // t=5: acquired; t=10: renewed; t=15: a failure 5 s after the renewal: still leading.
        tokio::time::sleep(RENEW_EVERY * 3).await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert_eq!(running.load(Ordering::SeqCst), 1);
        // t=20: a failure 10 s after the renewal (TTL 15 - renew period 5): stop.
        tokio::time::sleep(RENEW_EVERY).await;
        tokio::task::yield_now().await;
        assert_eq!(running.load(Ordering::SeqCst), 0);
        assert_eq!(started.load(Ordering::SeqCst), 1);
        elector.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn gives_the_lease_up_when_the_controllers_stop() {
        let stepped_down = Arc::new(AtomicUsize::new(0));
        let lease: &'static Scripted = Box::leak(Box::new(Scripted {
            answers: Mutex::new(vec![Ok(true); 10]),
            stepped_down: Arc::clone(&stepped_down),
        }));
        let (started, running) = (Arc::default(), Arc::default());
        // The controllers end after 12 s (as on SIGTERM): the elector returns, lease given up.
        tokio::time::timeout(
            Duration::from_secs(60),
            lead_while_elected(lease, controllers(&started, &running, false)),
        )
        .await
        .expect("returns once the controllers end");
        assert_eq!(stepped_down.load(Ordering::SeqCst), 1);
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }
}
