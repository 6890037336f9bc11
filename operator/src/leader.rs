//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one operator replica
//! reconciles at a time. The holder renews the lease; another replica takes it over once it
//! has not been renewed for its duration. The holder gives up leading when it has not
//! renewed within the renew deadline (two thirds of the duration), however a renewal hangs:
//! so it has stopped before any other replica can take over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};

/// A lease-based leader election.
pub struct LeaderElection {
    leases: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
}

/// What one attempt to hold the lease found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Held,
    HeldByOther(String),
}

impl LeaderElection {
    /// An election on the Lease `namespace/name`, as `identity` (usually the pod name).
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            leases: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
        }
    }

    /// How long the lease lasts without renewal (default 15 s); it is renewed every third
    /// of that.
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.lease_duration = duration;
        self
    }

    /// Makes one attempt to take or renew the lease; true when this instance holds it now.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        Ok(self.try_hold().await? == Attempt::Held)
    }

    /// Waits until this instance holds the lease.
    pub async fn acquire(&self) -> Result<(), kube::Error> {
        loop {
            match self.try_hold().await? {
                Attempt::Held => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return Ok(());
                }
                Attempt::HeldByOther(holder) => {
                    tracing::info!(lease = %self.name, %holder, "standing by");
                    tokio::time::sleep(self.lease_duration / 3).await;
                }
            }
        }
    }

    /// How long the holder may go without a successful renewal before it stops leading:
    /// two thirds of the lease duration, so that it stops before the lease expires for the
    /// others (client-go's 10 s of 15 s).
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// Renews the lease until it is lost (another instance took it, or no renewal succeeded
    /// within [`LeaderElection::renew_deadline`], a hung request included), then returns.
    pub async fn hold(&self) {
        let deadline = self.renew_deadline();
        let mut last_renewed = tokio::time::Instant::now();
        let mut wait = self.lease_duration / 3;
        loop {
            tokio::time::sleep(wait).await;
            let left = deadline.saturating_sub(last_renewed.elapsed());
            match tokio::time::timeout(left, self.try_hold()).await {
                Ok(Ok(Attempt::Held)) => {
                    last_renewed = tokio::time::Instant::now();
                    wait = self.lease_duration / 3;
                }
                Ok(Ok(Attempt::HeldByOther(holder))) => {
                    tracing::error!(%holder, "lost the lease");
                    return;
                }
                Ok(Err(error)) if last_renewed.elapsed() < deadline => {
                    tracing::warn!(%error, "renewing the lease failed; retrying");
                    wait = self.lease_duration / 15;
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "could not renew the lease within the renew deadline");
                    return;
                }
                Err(_) => {
                    tracing::error!(
                        deadline = ?deadline,
                        "renewing the lease did not finish within the renew deadline"
                    );
                    return;
                }
            }
        }
    }

    /// Takes or renews the lease if it is free, expired or already ours.
    async fn try_hold(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(0, None)),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    Ok(Attempt::HeldByOther("another instance".into()))
                }
                Err(error) => Err(error),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let holder = current.holder_identity.clone().unwrap_or_default();
        let expired = current.renew_time.as_ref().is_none_or(|renewed| {
            let lasts =
                SignedDuration::from_secs(i64::from(current.lease_duration_seconds.unwrap_or(0)));
            renewed.0 + lasts < now
        });
        if holder != self.identity && !holder.is_empty() && !expired {
            return Ok(Attempt::HeldByOther(holder));
        }
        let transitions = current.lease_transitions.unwrap_or(0);
        lease.spec = Some(if holder == self.identity {
            spec(transitions, current.acquire_time)
        } else {
            spec(transitions + 1, None)
        });
        // The resourceVersion in `lease` makes this a compare-and-swap: if another instance
        // wrote the lease in between, the API server answers 409 and we stand by.
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::HeldByOther(holder)),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An "API server" that accepts connections and never answers, as a hung one does.
    async fn hung_api_server() -> Client {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                held.push(connection);
            }
        });
        let config = kube::Config::new(url.parse().expect("a URL"));
        Client::try_from(config).expect("a client")
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_renewal_ends_leading_within_the_renew_deadline() {
        let election = LeaderElection::new(hung_api_server().await, "default", "lease", "me")
            .lease_duration(Duration::from_secs(15));
        assert_eq!(election.renew_deadline(), Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        // Tokio's paused clock moves on whenever every task waits: the hung request waits
        // forever, the renew deadline does not. kube's own read timeout is 295 s.
        election.hold().await;
        let held = started.elapsed();
        assert!(
            held <= Duration::from_secs(10),
            "stopped leading {held:?} after the last renewal; the lease expires for the others \
             after 15 s"
        );
    }
}
