//! Cache controls end to end, on both databases with real processes: stale-while-revalidate
//! answers the stored version without waiting for a slow upstream (from memory once the view
//! holds it) and exactly one fill follows;
//! an invalidation through one replica makes the next call on another refresh (by identifier,
//! tag or kind; the ID stays); the admin view shows a running fill's lease holder, the fills in
//! flight and a negative-cache entry, behind the token; refresh-ahead keeps a document asked for
//! several times a second from ever answering a miss across its window's end, where the same
//! load without it gets one.

use std::time::Duration;

use documents_api::proto::documents::{
    admin::v1::{admin_client::AdminClient, DescribeDocumentRequest, ListFillsRequest},
    v1::{
        document_provider_client::DocumentProviderClient, DocumentOptions, GetDocumentRequest,
        InvalidateDocumentsRequest, Outcome,
    },
};
use e2e::{
    harness::{
        age_document, age_document_by, delayed, forced_status, metric_value, scrape_metrics, Db,
        Exchange, Provider, LISTING_PATH, MARKIT_PATH,
    },
    on_both_databases,
};
use tonic::{transport::Channel, Code};

fn get(identifier: &str, options: DocumentOptions) -> GetDocumentRequest {
    GetDocumentRequest {
        identifier: identifier.into(),
        kind: String::new(),
        options: Some(options),
    }
}

async fn stored_version(db: &Db, source_id: &str) -> i64 {
    db.store()
        .await
        .lookup(&[e2e::harness::key(source_id)])
        .await
        .unwrap()
        .heads
        .first()
        .map_or(0, |h| h.version)
}

async fn stale_while_revalidate(db: Db) {
    let ex = Exchange::start();
    let p = Provider::start(
        db.url(),
        &ex.url,
        &[("PROVIDER_METRICS_ADDR", e2e::harness::ANY_PORT)],
    )
    .await;
    let metrics = p.proc.listening("metrics endpoint listening");
    let mut c = DocumentProviderClient::connect(p.url()).await.unwrap();
    let first = c
        .get_document(get("ASX:GNP", DocumentOptions::default()))
        .await
        .unwrap()
        .into_inner();
    age_document(&db, "ASX:GNP:announcement", 30).await;
    // The upstream now takes 3 s.
    ex.control(&delayed(LISTING_PATH, 3_000)).await;
    ex.reset().await;
    let swr = DocumentOptions {
        stale_while_revalidate_hours: Some(12),
        ..Default::default()
    };
    let answers = futures::future::join_all((0..3).map(|_| {
        let mut c = c.clone();
        async move { c.get_document(get("ASX:GNP", swr)).await }
    }))
    .await;
    // Every caller has the stored version while its refresh is still at the upstream.
    assert_eq!(
        stored_version(&db, "ASX:GNP:announcement").await,
        1,
        "no caller waited for the fill"
    );
    for a in answers {
        let a = a.unwrap().into_inner();
        assert_eq!(
            (a.outcome(), a.version, a.refreshing, a.document_id.as_str()),
            (Outcome::Stale, 1, true, first.document_id.as_str())
        );
        assert!(a.status.is_none(), "{a:?}");
    }
    // While the refresh is at the upstream, the stale version is answered from memory (the
    // view remembered what the first lookup read): no database round trip per call.
    let memory_stale = || async {
        let text = scrape_metrics(&metrics).await;
        metric_value(
            &text,
            "documents_memory_stale_answers_total{kind=\"announcement\"}",
        )
        .unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_millis(2_000);
    while memory_stale().await == 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no stale answer came from memory"
        );
        let a = c
            .get_document(get("ASX:GNP", swr))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (a.outcome(), a.version, a.refreshing),
            (Outcome::Stale, 1, true),
            "{a:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One fill follows.
    for _ in 0..200 {
        if stored_version(&db, "ASX:GNP:announcement").await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored_version(&db, "ASX:GNP:announcement").await, 2);
    assert_eq!(
        ex.count(LISTING_PATH).await,
        1,
        "exactly one fill for three callers"
    );
    let after = c
        .get_document(get("ASX:GNP", swr))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((after.outcome(), after.version), (Outcome::Hit, 2));
}

/// Stale-while-revalidate across replicas: many callers on three replicas, all with the same
/// stale document, get it at once, and the upstream gets one request (the replicas' background
/// fills meet at the document's lease).
async fn stale_while_revalidate_across_replicas(db: Db) {
    let ex = Exchange::start();
    let replicas = [
        Provider::start(db.url(), &ex.url, &[]).await,
        Provider::start(db.url(), &ex.url, &[]).await,
        Provider::start(db.url(), &ex.url, &[]).await,
    ];
    let mut clients = Vec::new();
    for p in &replicas {
        clients.push(DocumentProviderClient::connect(p.url()).await.unwrap());
    }
    let first = clients[0]
        .get_document(get("ASX:GNP", DocumentOptions::default()))
        .await
        .unwrap()
        .into_inner();
    age_document(&db, "ASX:GNP:announcement", 30).await;
    ex.control(&delayed(LISTING_PATH, 2_000)).await;
    ex.reset().await;
    let swr = DocumentOptions {
        stale_while_revalidate_hours: Some(12),
        ..Default::default()
    };
    let answers = futures::future::join_all((0..30).map(|i| {
        let mut c = clients[i % 3].clone();
        async move { c.get_document(get("ASX:GNP", swr)).await }
    }))
    .await;
    for a in answers {
        let a = a.unwrap().into_inner();
        assert_eq!(
            (a.outcome(), a.version, a.refreshing, a.document_id.as_str()),
            (Outcome::Stale, 1, true, first.document_id.as_str())
        );
    }
    for _ in 0..200 {
        if stored_version(&db, "ASX:GNP:announcement").await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored_version(&db, "ASX:GNP:announcement").await, 2);
    // Every replica's background fill has ended (none still waiting to fetch).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ex.count(LISTING_PATH).await,
        1,
        "one upstream request for thirty callers on three replicas"
    );
    assert_eq!(stored_version(&db, "ASX:GNP:announcement").await, 2);
}

async fn invalidation_reaches_every_replica(db: Db) {
    let ex = Exchange::start();
    let a = Provider::start(db.url(), &ex.url, &[]).await;
    let b = Provider::start(db.url(), &ex.url, &[]).await;
    let mut ca = DocumentProviderClient::connect(a.url()).await.unwrap();
    let mut cb = DocumentProviderClient::connect(b.url()).await.unwrap();
    let created = ca
        .get_document(get("ASX:GNP", DocumentOptions::default()))
        .await
        .unwrap()
        .into_inner();
    // Bystanders a purge must leave alone: another announcement, and another kind.
    let bhp = ca
        .get_document(get("ASX:BHP", DocumentOptions::default()))
        .await
        .unwrap()
        .into_inner();
    let prices = GetDocumentRequest {
        identifier: "ASX:CBA".into(),
        kind: "market_data".into(),
        options: Some(DocumentOptions::default()),
    };
    let cba = ca.get_document(prices.clone()).await.unwrap().into_inner();
    // The bystanders are still hits, on both replicas, at the version they had.
    let untouched = |ca: DocumentProviderClient<Channel>, cb: DocumentProviderClient<Channel>| {
        let (bhp_version, cba_version, prices) = (bhp.version, cba.version, prices.clone());
        async move {
            for mut c in [ca, cb] {
                let r = c
                    .get_document(get("ASX:BHP", DocumentOptions::default()))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!((r.outcome(), r.version), (Outcome::Hit, bhp_version));
                let r = c.get_document(prices.clone()).await.unwrap().into_inner();
                assert_eq!((r.outcome(), r.version), (Outcome::Hit, cba_version));
            }
        }
    };
    // Replica B answers it from a fresh read (and, on PostgreSQL, keeps it in memory).
    for _ in 0..2 {
        let hit = cb
            .get_document(get("ASX:GNP", DocumentOptions::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hit.outcome(), Outcome::Hit);
    }
    // An empty request is refused.
    let e = ca
        .invalidate_documents(InvalidateDocumentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Purged through A by identifier: B's next call (after the stated staleness bound, 1 s)
    // refreshes, keeping the ID.
    let n = ca
        .invalidate_documents(InvalidateDocumentsRequest {
            identifiers: vec!["asx:gnp".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .invalidated;
    assert_eq!(n, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed = cb
        .get_document(get("ASX:GNP", DocumentOptions::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            refreshed.outcome(),
            refreshed.version,
            refreshed.document_id.as_str()
        ),
        (Outcome::Refreshed, 2, created.document_id.as_str())
    );
    untouched(ca.clone(), cb.clone()).await;
    // By tag: the tag only GNP's documents carry.
    let tag = refreshed
        .tags
        .iter()
        .find(|t| t.starts_with("ticker:"))
        .cloned()
        .expect("a ticker tag");
    let n = cb
        .invalidate_documents(InvalidateDocumentsRequest {
            tags: vec![tag],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .invalidated;
    assert_eq!(n, 1, "GNP's announcements only");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = ca
        .get_document(get("ASX:GNP", DocumentOptions::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.outcome(), again.version), (Outcome::Refreshed, 3));
    untouched(ca.clone(), cb.clone()).await;
    // A whole kind: both announcements, not the market data.
    let n = ca
        .invalidate_documents(InvalidateDocumentsRequest {
            kind: "announcement".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .invalidated;
    assert_eq!(n, 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let third = cb
        .get_document(get("ASX:GNP", DocumentOptions::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((third.outcome(), third.version), (Outcome::Refreshed, 4));
    let bhp_again = cb
        .get_document(get("ASX:BHP", DocumentOptions::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (bhp_again.outcome(), bhp_again.version),
        (Outcome::Refreshed, 2)
    );
    let r = ca.get_document(prices).await.unwrap().into_inner();
    assert_eq!((r.outcome(), r.version), (Outcome::Hit, cba.version));
    e2e::harness::assert_invariants(&db).await;
}

async fn the_admin_view_shows_fills_leases_and_failures(db: Db) {
    let ex = Exchange::start();
    let p = Provider::start(db.url(), &ex.url, &[("PROVIDER_AUTH_TOKEN", "s3cret")]).await;
    let channel = Channel::from_shared(p.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        Ok(r)
    };
    let mut admin = AdminClient::with_interceptor(channel.clone(), token);
    let mut docs = DocumentProviderClient::with_interceptor(channel.clone(), token);
    // Behind the token.
    let e = AdminClient::new(channel.clone())
        .list_fills(ListFillsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // A fill held up by a slow upstream: its lease holder is shown, and the fill is listed.
    ex.control(&delayed(LISTING_PATH, 2_000)).await;
    let filling = tokio::spawn({
        let mut docs = docs.clone();
        async move {
            docs.get_document(get("ASX:GNP", DocumentOptions::default()))
                .await
        }
    });
    ex.wait_for_requests(LISTING_PATH, 1).await;
    let describe = DescribeDocumentRequest {
        identifier: "gnp".into(),
        kind: String::new(),
    };
    let state = admin
        .describe_document(describe.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.source_id, "ASX:GNP:announcement");
    assert!(!state.stored && state.filling_here, "{state:?}");
    let lease = state.lease.expect("the running fill's lease");
    assert!(
        lease.holder.starts_with("provider-") && lease.token >= 1,
        "{lease:?}"
    );
    assert!(lease.expires_at.is_some() && lease.claimed_at.is_some());
    let fills = admin
        .list_fills(ListFillsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        fills
            .local
            .iter()
            .any(|f| f.source_id == "ASX:GNP:announcement"),
        "{fills:?}"
    );
    assert!(
        fills
            .leases
            .iter()
            .any(|l| l.source_id == "ASX:GNP:announcement"
                && l.lease.as_ref().is_some_and(|x| x.holder == lease.holder)),
        "{fills:?}"
    );
    filling.await.unwrap().unwrap();
    let state = admin
        .describe_document(describe.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(
        state.stored && state.version == 1 && state.lease.is_none(),
        "{state:?}"
    );
    assert!(!state.filling_here && !state.invalidated);

    // A failure answered from the negative cache is shown with its expiry.
    let mut down = forced_status(LISTING_PATH, 503);
    down.status.insert(MARKIT_PATH.into(), 503);
    ex.control(&down).await;
    let e = docs
        .get_document(get(
            "ASX:BHP",
            DocumentOptions {
                cache_hours: Some(0),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    let state = admin
        .describe_document(DescribeDocumentRequest {
            identifier: "ASX:BHP".into(),
            kind: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let negative = state.negative_cache.expect("the negative-cache entry");
    assert_eq!(negative.code, Code::Unavailable as i32);
    assert!(negative.until.is_some());
    // An invalidated document says so.
    docs.invalidate_documents(InvalidateDocumentsRequest {
        identifiers: vec!["GNP".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let state = admin
        .describe_document(describe)
        .await
        .unwrap()
        .into_inner();
    assert!(state.invalidated, "{state:?}");
}

async fn refresh_ahead_keeps_a_popular_document_from_missing(db: Db) {
    let ex = Exchange::start();
    // The same load, without and with refresh-ahead, on a document 6 s from going stale.
    for (ticker, ahead) in [("ASX:BHP", false), ("ASX:GNP", true)] {
        let mut env = vec![("PROVIDER_METRICS_ADDR", e2e::harness::ANY_PORT)];
        if ahead {
            env.push(("PROVIDER_REFRESH_AHEAD_SECS", "30"));
        }
        let p = Provider::start(db.url(), &ex.url, &env).await;
        let metrics = p.proc.listening("metrics endpoint listening");
        let mut c = DocumentProviderClient::connect(p.url()).await.unwrap();
        c.get_document(get(ticker, DocumentOptions::default()))
            .await
            .unwrap();
        let sid = format!("{ticker}:announcement");
        age_document_by(&db, &sid, chrono::Duration::seconds(24 * 3600 - 6)).await;
        // Four calls a second for 10 s: the 24 h window ends 6 s in.
        let mut outcomes = Vec::new();
        for _ in 0..40 {
            let r = c
                .get_document(get(ticker, DocumentOptions::default()))
                .await
                .unwrap()
                .into_inner();
            outcomes.push((r.outcome(), r.version));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let misses = outcomes.iter().filter(|(o, _)| *o != Outcome::Hit).count();
        let text = scrape_metrics(&metrics).await;
        let refreshed_ahead = metric_value(
            &text,
            "documents_refresh_ahead_total{kind=\"announcement\",result=\"ok\"}",
        );
        if ahead {
            assert_eq!(misses, 0, "every call a hit: {outcomes:?}");
            assert_eq!(
                outcomes.last().unwrap().1,
                2,
                "refreshed ahead: {outcomes:?}"
            );
            assert_eq!(refreshed_ahead, Some(1.0), "{text}");
        } else {
            assert_eq!(
                misses, 1,
                "without refresh-ahead one caller waits: {outcomes:?}"
            );
            assert_eq!(refreshed_ahead, None);
        }
    }
}

/// Ban semantics across replicas: a purge through replica B while replica A's fill is at a slow
/// upstream keeps what that fill fetched purged. A fetches again, so its caller and one that
/// joined its fill after the purge get a version fetched after it; the pre-purge version is
/// answered to nobody, and the next call on either replica is a hit of the new fetch. A writer
/// that knows nothing of the rule (an older release, a script) cannot clear a mark either: after
/// its write the next call refreshes, on the replica it asks and on another.
async fn a_purge_during_a_fetch_stays_purged(db: Db) {
    let ex = Exchange::start();
    let a = Provider::start(db.url(), &ex.url, &[]).await;
    let b = Provider::start(db.url(), &ex.url, &[]).await;
    let mut ca = DocumentProviderClient::connect(a.url()).await.unwrap();
    let mut cb = DocumentProviderClient::connect(b.url()).await.unwrap();
    let sid = "ASX:GNP:announcement";
    let v1 = ca
        .get_document(get("ASX:GNP", DocumentOptions::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v1.version, 1);
    ex.control(&delayed(LISTING_PATH, 3_000)).await;
    ex.reset().await;
    let forced = DocumentOptions {
        force_refresh: true,
        ..Default::default()
    };
    let refresh = tokio::spawn({
        let mut ca = ca.clone();
        async move { ca.get_document(get("ASX:GNP", forced)).await }
    });
    ex.wait_for_requests(LISTING_PATH, 1).await;
    let purge = InvalidateDocumentsRequest {
        identifiers: vec!["ASX:GNP".into()],
        ..Default::default()
    };
    assert_eq!(
        cb.invalidate_documents(purge.clone())
            .await
            .unwrap()
            .into_inner()
            .invalidated,
        1
    );
    // Past the hit view's staleness bound (750 ms): A knows of the purge; its fetch is still
    // at the upstream, and a caller now joins that fill.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let joiner = tokio::spawn({
        let mut ca = ca.clone();
        async move {
            ca.get_document(get("ASX:GNP", DocumentOptions::default()))
                .await
        }
    });
    let refreshed = refresh.await.unwrap().unwrap().into_inner();
    let joined = joiner.await.unwrap().unwrap().into_inner();
    assert_eq!(
        ex.count(LISTING_PATH).await,
        2,
        "fetched again after the purge"
    );
    for r in [&refreshed, &joined] {
        assert_eq!((r.version, r.outcome()), (3, Outcome::Refreshed), "{r:?}");
    }
    let store = db.store().await;
    let head = |store: std::sync::Arc<dyn documents_store::DocumentStore>| async move {
        store
            .lookup(&[e2e::harness::key(sid)])
            .await
            .unwrap()
            .heads
            .remove(0)
    };
    let stored = head(store.clone()).await;
    assert_eq!((stored.version, stored.invalidated), (3, false));
    ex.control(&sample_exchange::Control::default()).await;
    for c in [&mut ca, &mut cb] {
        let next = c
            .get_document(get("ASX:GNP", DocumentOptions::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((next.outcome(), next.version), (Outcome::Hit, 3));
    }

    // A writer that knows nothing of the rule refreshes the document after a purge, as an older
    // release would (its fill's lease claim predates the purge): the mark stays.
    let unaware = if db.is_postgres() {
        "UPDATE documents SET title = 'fetched before the purge', version = version + 1,          last_synced = now(), invalidated_at = NULL WHERE source_id = 'ASX:GNP:announcement'"
    } else {
        "UPDATE documents SET title = 'fetched before the purge', version = version + 1,          invalidated_at = NULL WHERE source_id = 'ASX:GNP:announcement'"
    };
    for (mut asked, mut other) in [(ca.clone(), cb.clone()), (cb.clone(), ca.clone())] {
        asked.invalidate_documents(purge.clone()).await.unwrap();
        assert_eq!(db.execute(unaware).await.unwrap(), 1);
        let kept = head(store.clone()).await;
        assert!(kept.invalidated, "the mark stays: {kept:?}");
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let next = asked
            .get_document(get("ASX:GNP", DocumentOptions::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (next.outcome(), next.version),
            (Outcome::Refreshed, kept.version + 1)
        );
        let other_next = other
            .get_document(get("ASX:GNP", DocumentOptions::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(other_next.version, next.version, "{other_next:?}");
    }
    e2e::harness::assert_invariants(&db).await;
}

on_both_databases!(
    a_purge_during_a_fetch_stays_purged,
    refresh_ahead_keeps_a_popular_document_from_missing,
    stale_while_revalidate,
    stale_while_revalidate_across_replicas,
    invalidation_reaches_every_replica,
    the_admin_view_shows_fills_leases_and_failures
);
