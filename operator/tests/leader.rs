//! Leader election on a real Lease: one holder at a time, and a standby takes over once the
//! holder stops renewing.
//!
//! Nothing here depends on how quickly the machine runs: the leases are long enough that no
//! stall of a loaded machine lets one lapse by accident, each check runs right after the
//! event it is about (a renewal seen on the Lease), and every wait is for a condition, with
//! a deadline that only a condition that never holds reaches.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use metricsstack_operator::leader::LeaderElection;
use metricsstack_testkit::{TestNamespace, wait_until};

/// The lease of an instance that must keep leading for as long as it renews.
const LEASE: Duration = Duration::from_secs(15);
/// The lease of a leader that stalls, and that the test waits out.
const STALLED_LEASE: Duration = Duration::from_secs(3);
/// How long to wait for what must happen: many leases.
const DEADLINE: Duration = Duration::from_secs(180);
/// The name of the tests' Lease.
const LEASE_NAME: &str = "operator";

fn election(ns: &TestNamespace, identity: &str, lease: Duration) -> LeaderElection {
    LeaderElection::new(ns.client.clone(), &ns.name, LEASE_NAME, identity).lease_duration(lease)
}

async fn lease(leases: &Api<Lease>) -> LeaseSpec {
    leases
        .get(LEASE_NAME)
        .await
        .expect("the Lease exists")
        .spec
        .expect("the Lease has a spec")
}

/// Waits until the holder has renewed the Lease since `last`; returns the new renewal.
async fn next_renewal(leases: &Api<Lease>, last: Option<MicroTime>) -> Option<MicroTime> {
    wait_until("the leader renews its lease", DEADLINE, || async {
        lease(leases).await.renew_time != last
    })
    .await;
    lease(leases).await.renew_time
}

#[tokio::test]
async fn a_standby_does_not_lead_while_the_leader_renews_and_takes_over_once_it_stops() {
    let ns = TestNamespace::create().await;
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), &ns.name);
    let first = election(&ns, "first", LEASE);
    let second = election(&ns, "second", LEASE);

    first.acquire().await.expect("the first instance leads");
    let holding = tokio::spawn(async move { first.hold().await });
    // Right after each renewal the lease is fresh, however slowly the leader got to it: the
    // standby's attempt then finds it held.
    let mut renewed = lease(&leases).await.renew_time;
    for _ in 0..2 {
        renewed = next_renewal(&leases, renewed).await;
        let took_over = second.try_acquire().await.expect("the attempt is answered");
        assert!(
            !took_over,
            "the standby must not lead while the leader renews"
        );
    }
    let spec = lease(&leases).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("first"));
    assert_eq!(spec.lease_transitions, Some(0));

    // The first stops renewing (as a crashed process would): the second takes over once the
    // lease runs out.
    holding.abort();
    tokio::time::timeout(DEADLINE, second.acquire())
        .await
        .expect("the second instance leads once the lease expires")
        .expect("acquiring does not fail");
    let spec = lease(&leases).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("second"));
    assert_eq!(spec.lease_transitions, Some(1));
}

#[tokio::test]
async fn a_leader_whose_lease_was_taken_stops_holding() {
    let ns = TestNamespace::create().await;
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), &ns.name);
    let first = election(&ns, "first", STALLED_LEASE);
    let second = election(&ns, "second", LEASE);
    first.acquire().await.expect("the first instance leads");

    // The first stalls past its lease (it does not renew); the second takes the expired
    // lease and keeps renewing it.
    tokio::time::timeout(DEADLINE, second.acquire())
        .await
        .expect("the second takes the expired lease")
        .expect("acquiring does not fail");
    let renewing = tokio::spawn(async move { second.hold().await });

    // The first, resuming, finds the lease taken and stops.
    tokio::time::timeout(DEADLINE, first.hold())
        .await
        .expect("the first stops holding once it sees the lease taken");
    assert_eq!(
        lease(&leases).await.holder_identity.as_deref(),
        Some("second")
    );
    renewing.abort();
}
