//! Leader election over a `coordination.k8s.io/v1` Lease, the way client-go's leaderelection
//! (and istiod's namespace controller) does it, so that with several signer replicas one of
//! them writes the cluster objects (trust-distribution ConfigMaps) and each change is written
//! once, not once per replica.
//!
//! Every `retry` a replica reads the Lease. It leads when it holds the Lease and renews it, or
//! takes it over when it is free or expired; updates carry the `resourceVersion` read, so two
//! replicas racing for it cannot both win (the API server answers 409 to the second).
//! Expiry is judged on this replica's own clock, from when it last saw the record change, not
//! from the timestamps written by another node. A leader that cannot renew within two thirds
//! of the lease duration stops leading before anyone else can take over; on shutdown it
//! releases the Lease, so another replica takes over at its next try.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// Where the Lease lives and how long it holds.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity in `holderIdentity` (unique per process).
    pub identity: String,
    /// `leaseDurationSeconds`: how long a silent leader keeps the Lease.
    pub duration: Duration,
    /// How often the Lease is read and renewed.
    pub retry: Duration,
}

impl LeaseConfig {
    /// The trust-distribution Lease of this process.
    pub fn trust_distribution(td: &crate::config::TrustDistributionConfig) -> Self {
        Self::new(td.lease_namespace(), &td.lease_name, td.lease_duration)
    }

    /// The istiod-certificate Lease of this process, beside the Secret.
    pub fn istiod_certificate(c: &crate::config::IstiodCertificateConfig) -> Self {
        Self::new(c.namespace.clone(), &c.lease_name, c.lease_duration)
    }

    /// Lease `namespace/name` held for `duration`, by this process: `$POD_NAME` (or the host
    /// name) plus a per-process suffix, so a restarted pod is a new holder.
    pub fn new(namespace: String, name: &str, duration: Duration) -> Self {
        let host = std::env::var("POD_NAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "istio-vault-ca".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        Self {
            namespace,
            name: name.to_owned(),
            identity: format!("{host}_{}_{nanos:08x}", std::process::id()),
            duration,
            retry: duration / crate::config::LEASE_RENEWALS_PER_DURATION,
        }
    }
}

/// What a replica last saw of the Lease, and when (on its own clock).
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    duration: Duration,
    at: Instant,
}

/// Runs the election until `shutdown`; the returned receiver is true while this replica
/// leads. Errors talking to the API server are logged and retried.
pub fn elect(
    client: kube::Client,
    config: LeaseConfig,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    tokio::spawn(async move {
        let mut observed: Option<Observed> = None;
        let mut last_renew: Option<Instant> = None;
        loop {
            let leading = *tx.borrow();
            match try_acquire_or_renew(&api, &config, &mut observed).await {
                Ok(true) => {
                    last_renew = Some(Instant::now());
                    if !leading {
                        tracing::info!(lease = %config.name, identity = %config.identity, "leading: this replica writes the cluster objects");
                        tx.send_replace(true);
                    }
                }
                Ok(false) => {
                    if leading {
                        tracing::warn!(lease = %config.name, "another replica took the lease; no longer leading");
                    }
                    tx.send_if_modified(|v| std::mem::replace(v, false));
                }
                Err(e) => {
                    tracing::warn!(lease = %config.name, error = %e, "cannot read or renew the leader lease; retrying");
                    let deadline = crate::time::renewal_wait(config.duration);
                    if leading && last_renew.is_none_or(|t| t.elapsed() >= deadline) {
                        tracing::warn!(lease = %config.name, "lease not renewed in time; no longer leading");
                        tx.send_replace(false);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(config.retry) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        if *tx.borrow() {
            tx.send_replace(false);
            if let Err(e) = release(&api, &config).await {
                tracing::warn!(lease = %config.name, error = %e, "cannot release the leader lease; it expires by itself");
            }
        }
    });
    rx
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// One round: true when this replica holds the Lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let Some(lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds(config.duration)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
    let seen = Observed {
        holder: holder.clone(),
        renew: spec.renew_time.clone(),
        duration,
        at: Instant::now(),
    };
    let changed = observed.as_ref().is_none_or(|o| {
        o.holder != seen.holder || o.renew != seen.renew || o.duration != seen.duration
    });
    if changed {
        *observed = Some(seen);
    }
    let since = observed.as_ref().map_or(Instant::now(), |o| o.at);
    let mine = holder.as_deref() == Some(config.identity.as_str());
    if !mine && holder.is_some() && since.elapsed() < duration {
        return Ok(false);
    }
    let mut next = lease.clone();
    next.spec = Some(LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(seconds(config.duration)),
        acquire_time: if mine { spec.acquire_time } else { Some(now()) },
        renew_time: Some(now()),
        lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!mine)),
        ..spec
    });
    // `replace` sends the resourceVersion read above: a concurrent winner makes it a 409.
    match api
        .replace(&config.name, &PostParams::default(), &next)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up: no holder, a one-second duration.
async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    api.replace(&config.name, &PostParams::default(), &lease)
        .await
        .map(drop)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Spawns `run`: under `leading` when leader election is on ([`while_leading`]), else at once
/// with the process's `shutdown`.
pub fn spawn_led<F, Fut>(
    leading: Option<watch::Receiver<bool>>,
    shutdown: watch::Receiver<bool>,
    run: F,
) where
    F: Fn(watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match leading {
        Some(leading) => tokio::spawn(while_leading(leading, shutdown, run)),
        None => tokio::spawn(run(shutdown)),
    };
}

/// Keeps `run` going while this replica leads: started when it becomes leader, told to stop
/// (its own shutdown receiver fires) when it stops leading or at `shutdown`.
pub async fn while_leading<F, Fut>(
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
    run: F,
) where
    F: Fn(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = run(stop_rx);
        tokio::pin!(task);
        let end = tokio::select! {
            _ = &mut task => End::Finished,
            r = leading.wait_for(|l| !*l) => if r.is_err() { End::Shutdown } else { End::Lost },
            _ = shutdown.wait_for(|s| *s) => End::Shutdown,
        };
        match end {
            // It stopped by itself: start again after a pause if still leading.
            End::Finished => tokio::time::sleep(Duration::from_secs(1)).await,
            End::Lost | End::Shutdown => {
                stop_tx.send_replace(true);
                // Let it finish what it is doing (it returns on its shutdown signal).
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut task).await;
            }
        }
        if matches!(end, End::Shutdown) {
            return;
        }
    }
}

enum End {
    Finished,
    Lost,
    Shutdown,
}
