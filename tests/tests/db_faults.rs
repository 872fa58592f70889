//! Database outages, on a PostgreSQL cluster of the test's own: while it is down, calls answer
//! UNAVAILABLE (never a wrong answer, never a hang) and health turns NOT_SERVING; once it is back,
//! health turns SERVING and calls succeed again, with no restart of the service.

use std::time::{Duration, Instant};

use e2e::harness::{Exchange, PrivateCluster, Provider};
use shared::{proto::PROVIDER_SERVICE_NAME, DocumentOptions, DocumentProvider};
use tonic::Code;

async fn wait_health(addr: &str, want: bool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = shared::server::healthcheck(addr, PROVIDER_SERVICE_NAME)
            .await
            .unwrap_or(false);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health never became {}",
            if want { "SERVING" } else { "NOT_SERVING" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_unavailable_then_recovers() {
    let cluster = PrivateCluster::start();
    let ex = Exchange::start();
    let p = Provider::start(&cluster.url(), &ex.url, &[]).await;
    let client = p.client();
    let v1 = client
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();

    cluster.stop();
    wait_health(&p.addr, false, Duration::from_secs(15)).await;
    // UNAVAILABLE, not DEADLINE_EXCEEDED: the call did not hang until the client's deadline.
    for id in ["ASX:GNP", "ASX:BHP"] {
        let err = client
            .get_document(id, &DocumentOptions::new())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{id}: {err:?}");
    }

    cluster.restart();
    wait_health(&p.addr, true, Duration::from_secs(30)).await;
    let back = client
        .get_document("ASX:GNP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(
        (back.document_id.as_str(), back.version),
        (v1.document_id.as_str(), 1)
    );
    let bhp = client
        .get_document("ASX:BHP", &DocumentOptions::new())
        .await
        .unwrap();
    assert_eq!(bhp.version, 1);
    let store = shared::storage::connect(&cluster.url(), 2).await.unwrap();
    let violations = store.check_invariants().await.unwrap();
    assert!(violations.is_empty(), "{violations:?}");
}
