//! Leader election on a real Lease: one holder at a time, and a standby takes over once the
//! holder stops renewing.

use std::time::Duration;

use metricsstack_operator::leader::LeaderElection;
use metricsstack_testkit::TestNamespace;

#[tokio::test]
async fn a_standby_takes_over_when_the_leader_stops_renewing() {
    let ns = TestNamespace::create().await;
    let lease = Duration::from_secs(2);
    let first =
        LeaderElection::new(ns.client.clone(), &ns.name, "operator", "first").lease_duration(lease);
    let second = LeaderElection::new(ns.client.clone(), &ns.name, "operator", "second")
        .lease_duration(lease);

    first.acquire().await.expect("the first instance leads");
    // While the first renews, the second stands by.
    let holding = tokio::spawn(async move {
        first.hold().await;
        first
    });
    let standby = tokio::time::timeout(3 * lease, second.acquire()).await;
    assert!(
        standby.is_err(),
        "the second instance must not lead while the first renews"
    );

    // The first stops renewing (as a crashed process would): the second takes over after
    // the lease runs out.
    holding.abort();
    tokio::time::timeout(4 * lease, second.acquire())
        .await
        .expect("the second instance leads once the lease expires")
        .expect("acquiring does not fail");
}

#[tokio::test]
async fn a_leader_whose_lease_was_taken_stops_holding() {
    let ns = TestNamespace::create().await;
    let lease = Duration::from_secs(2);
    let first =
        LeaderElection::new(ns.client.clone(), &ns.name, "operator", "first").lease_duration(lease);
    let second = LeaderElection::new(ns.client.clone(), &ns.name, "operator", "second")
        .lease_duration(lease);
    first.acquire().await.expect("the first instance leads");
    // The first pauses longer than its lease (a stalled process); the second takes over,
    // and the first, resuming, finds the lease gone and stops.
    tokio::time::sleep(lease + Duration::from_millis(500)).await;
    second
        .acquire()
        .await
        .expect("the second takes the expired lease");
    tokio::time::timeout(2 * lease, first.hold())
        .await
        .expect("the first stops holding once it sees the lease taken");
}
