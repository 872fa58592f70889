//! Keeping tickers current without polling (`consumer-service watch`, `WatchTickers`): one
//! round per ticker to start, then a round whenever the provider says the ticker's
//! announcements document changed (WatchDocuments).
//!
//! - A ticker has one task, which runs its rounds one after another. Changes that arrive while
//!   a round runs are coalesced into one more round, which reads the newest version; rounds of
//!   different tickers run concurrently, bounded like any job. Each round takes the ticker's
//!   round lease and is fenced, as elsewhere, so a watch on several consumer replicas still
//!   downloads each PDF once.
//! - The watch resumes with the positions last seen after any end (a provider restart, a lost
//!   change feed, a drain), so a change made meanwhile still gets its round.

use std::{collections::HashMap, sync::Arc, time::Duration};

use documents_api::{
    proto::documents::v1::{DocumentEvent, EventType, WatchDocumentsRequest, WatchPosition},
    Kind, Ticker,
};
use futures::{stream::BoxStream, StreamExt};
use tokio::sync::{mpsc, watch, Semaphore};

use super::{JobRequest, Processor, TickerOutcome};

/// Wait before watching again after the watch ended (at least; the provider's RetryInfo may
/// ask for longer).
const REWATCH_AFTER: Duration = Duration::from_secs(1);

impl Processor {
    /// Rounds for `req.tickers` now and whenever their announcements documents change, as a
    /// stream of outcomes that ends only when dropped. `req` has been validated; tickers that do
    /// not parse are reported once and not watched.
    pub fn follow(&self, req: JobRequest) -> BoxStream<'static, TickerOutcome> {
        let (tx, rx) = mpsc::channel(req.tickers.len().max(1) * 2);
        let task = tokio::spawn(self.clone().keep_current(req, tx));
        let guard = AbortOnDrop(task);
        futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            rx.recv().await.map(|o| (o, (rx, guard)))
        })
        .boxed()
    }

    async fn keep_current(self, req: JobRequest, out: mpsc::Sender<TickerOutcome>) {
        let mut tickers: Vec<(String, Ticker)> = Vec::new();
        for asked in &req.tickers {
            match Ticker::parse(asked) {
                Ok(t) if tickers.iter().all(|(_, known)| *known != t) => {
                    tickers.push((asked.clone(), t))
                }
                Ok(_) => {}
                Err(_) => {
                    // Reported as the job reports it, then left out.
                    let one = JobRequest {
                        tickers: vec![asked.clone()],
                        ..req.clone()
                    };
                    for o in self.run(&one, None).await {
                        let _ = out.send(o).await;
                    }
                }
            }
        }
        let bound = Arc::new(Semaphore::new(self.settings.ticker_concurrency.max(1)));
        let mut changed: HashMap<String, watch::Sender<i64>> = HashMap::new();
        let mut rounds = Vec::new();
        for (asked, ticker) in &tickers {
            // Version 0: the first round runs at once.
            let (tx, rx) = watch::channel(0);
            changed.insert(ticker.to_string(), tx);
            let one = JobRequest {
                tickers: vec![asked.clone()],
                ..req.clone()
            };
            rounds.push(AbortOnDrop(tokio::spawn(self.clone().rounds_of(
                one,
                rx,
                bound.clone(),
                out.clone(),
            ))));
        }
        let mut since: HashMap<String, WatchPosition> = HashMap::new();
        loop {
            let request = WatchDocumentsRequest {
                identifiers: tickers.iter().map(|(_, t)| t.to_string()).collect(),
                kind: Kind::Announcement.as_str().into(),
                // The first watch tells each document's current state, so a change between the
                // first round's read and the watch still gets a round (maybe one more than
                // needed: it finds everything stored).
                send_initial: since.is_empty(),
                since: since.values().cloned().collect(),
                ..Default::default()
            };
            let end = match self.provider.watch_documents(request).await {
                Ok(mut events) => loop {
                    match events.message().await {
                        Ok(Some(e)) => Self::changed(&e, &mut since, &changed),
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    }
                },
                Err(status) => Some(status),
            };
            let wait = end
                .as_ref()
                .and_then(documents_api::provider::retry_info)
                .map_or(REWATCH_AFTER, |hint| hint.max(REWATCH_AFTER));
            match &end {
                Some(s) => {
                    tracing::warn!(code = ?s.code(), error = %s.message(), ?wait, "watch ended; watching again")
                }
                None => tracing::warn!(?wait, "watch ended; watching again"),
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Records what an event says and wakes the ticker's rounds when its document changed.
    fn changed(
        e: &DocumentEvent,
        since: &mut HashMap<String, WatchPosition>,
        changed: &HashMap<String, watch::Sender<i64>>,
    ) {
        let round = match e.r#type() {
            EventType::Current | EventType::Created | EventType::Refreshed => true,
            // A deleted or purged document gets its round when it is filled again.
            EventType::Deleted => {
                since.remove(&e.identifier);
                return;
            }
            EventType::Invalidated => false,
            EventType::Heartbeat | EventType::Unspecified => return,
        };
        since.insert(
            e.identifier.clone(),
            WatchPosition {
                identifier: e.identifier.clone(),
                document_id: e.document_id.clone(),
                version: e.version,
            },
        );
        if let (true, Some(tx)) = (round, changed.get(&e.identifier)) {
            tracing::info!(ticker = %e.identifier, version = e.version, "announcements changed: a round");
            // Always a change, even for a version already seen (another document).
            tx.send_modify(|v| *v += 1);
        }
    }

    /// A ticker's rounds: one now, then one after each change (coalesced while one runs).
    async fn rounds_of(
        self,
        req: JobRequest,
        mut changes: watch::Receiver<i64>,
        bound: Arc<Semaphore>,
        out: mpsc::Sender<TickerOutcome>,
    ) {
        loop {
            changes.borrow_and_update();
            let outcomes = {
                let _slot = bound.acquire().await;
                let req = JobRequest {
                    request_id: super::new_request_id(),
                    ..req.clone()
                };
                self.run(&req, None).await
            };
            for o in outcomes {
                if out.send(o).await.is_err() {
                    return;
                }
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Aborts its task when dropped (the follower's tasks end with its stream).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
