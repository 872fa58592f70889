//! Planning a call (one identifier or a batch), step by step: the identifiers parsed into keys
//! (each document once, bad identifiers answered at once), hits answered from memory, fills
//! already running here joined, the rest looked up in one query and classified: fresh ones
//! answered, stale ones within a stale-while-revalidate window answered with a refresh behind
//! them, the others filled. The plan is the results known at once and the fills still to
//! answer; the caller puts them in request order or streams them.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};
use documents_api::{DocumentResult, ItemError, Outcome, Ticker};
use documents_kit::{status::StorageStatus as _, trace::TraceContext};
use documents_store::{DocumentHead, DocumentStore, Lookup, SourceKey, StorageError};
use futures::{
    future::BoxFuture,
    stream::{self, FuturesUnordered},
    FutureExt, StreamExt,
};
use tokio::time::Instant;
use tonic::Code;

use super::{
    answer::{answer, answer_all, is_fresh, may_revalidate},
    fill::{FillResult, Filled, Seen},
    fills::Fills,
    hit_view::{Held, HitView, Stamp},
    refresh_ahead::Popularity,
    request::{Asked, Request},
};
use crate::metrics::METRICS;

/// A planned call: the results known at once, and the fills still to answer (each with the
/// results of every position that asked for its document).
#[derive(Default)]
pub struct Planned {
    pub immediate: Vec<DocumentResult>,
    pub pending: Vec<BoxFuture<'static, Vec<DocumentResult>>>,
}

impl Planned {
    /// The results as each is ready: the immediate ones, then the fills' as they finish.
    pub fn into_stream(self) -> impl futures::Stream<Item = DocumentResult> {
        let pending: FuturesUnordered<_> = self.pending.into_iter().collect();
        stream::iter(self.immediate).chain(pending.flat_map(stream::iter))
    }
}

/// What a plan reads from and starts fills with.
pub struct Planner<'a> {
    pub fills: &'a Arc<Fills>,
    pub store: &'a Arc<dyn DocumentStore>,
    pub hit_view: Option<&'a Arc<HitView>>,
    pub popularity: Option<&'a Popularity>,
}

/// One document a call asks for: its key, its ticker and every position asking for it.
struct Wanted {
    key: SourceKey,
    ticker: Ticker,
    indices: Vec<usize>,
}

/// The identifiers as sent, shared by the answers of every fill of the call.
type Identifiers = Arc<Vec<String>>;

impl Planner<'_> {
    pub async fn plan(&self, asked: Vec<Asked>, req: Request) -> Planned {
        let arrived = Instant::now();
        let mut planned = Planned::default();
        let (identifiers, mut wanted) = self.parse(asked, req, &mut planned.immediate);
        self.answers_in_memory(
            &mut wanted,
            req,
            arrived,
            &identifiers,
            &mut planned.immediate,
        );
        self.join_running(
            &mut wanted,
            req,
            arrived,
            &identifiers,
            &mut planned.pending,
        );
        if wanted.is_empty() {
            return planned;
        }
        match self.lookup(&wanted).await {
            Ok(lookup) => self.classify(wanted, lookup, req, arrived, &identifiers, &mut planned),
            Err(e) => {
                let err = e.item_error();
                for w in wanted {
                    for i in w.indices {
                        planned.immediate.push(DocumentResult {
                            index: i as u32,
                            ..DocumentResult::failed(
                                &identifiers[i],
                                req.kind.as_str(),
                                w.key.source_id(),
                                err.clone(),
                            )
                        });
                    }
                }
            }
        }
        planned
    }

    /// The identifiers parsed: each distinct document once (in first-seen order) with every
    /// position asking for it; a bad identifier is answered at once.
    fn parse(
        &self,
        asked: Vec<Asked>,
        req: Request,
        immediate: &mut Vec<DocumentResult>,
    ) -> (Identifiers, Vec<Wanted>) {
        let mut wanted: Vec<Wanted> = Vec::new();
        let mut position: HashMap<SourceKey, usize> = HashMap::new();
        let mut identifiers = Vec::with_capacity(asked.len());
        for (i, Asked { identifier, ticker }) in asked.into_iter().enumerate() {
            match ticker {
                Err(e) => immediate.push(DocumentResult {
                    index: i as u32,
                    ..DocumentResult::failed(
                        &identifier,
                        req.kind.as_str(),
                        String::new(),
                        ItemError::new(Code::InvalidArgument, format!("identifier: {e}"))
                            .reason("INVALID_IDENTIFIER")
                            .field("identifier"),
                    )
                }),
                Ok(ticker) => {
                    let key = SourceKey::new(req.kind, ticker.clone());
                    if let Some(popularity) = self.popularity {
                        popularity.asked(&key, req.cache_hours);
                    }
                    match position.get(&key) {
                        Some(at) => wanted[*at].indices.push(i),
                        None => {
                            position.insert(key.clone(), wanted.len());
                            wanted.push(Wanted {
                                key,
                                ticker,
                                indices: vec![i],
                            });
                        }
                    }
                }
            }
            identifiers.push(identifier);
        }
        (Arc::new(identifiers), wanted)
    }

    /// Documents this process already knows need no database round trip: fresh ones (hits),
    /// and stale ones within the caller's stale-while-revalidate window (answered stale, with
    /// the refresh behind them), under the view's staleness bounds either way.
    fn answers_in_memory(
        &self,
        wanted: &mut Vec<Wanted>,
        req: Request,
        arrived: Instant,
        identifiers: &Identifiers,
        immediate: &mut Vec<DocumentResult>,
    ) {
        let (Some(view), false) = (self.hit_view, req.force_refresh) else {
            return;
        };
        let stale_hours = req.stale_while_revalidate_hours;
        wanted.retain(
            |w| match view.answerable(&w.key, req.cache_hours, stale_hours) {
                Some(Held::Stale(head, now)) => {
                    METRICS.memory_stale(req.kind);
                    let seen = Seen {
                        at: now,
                        version: head.version,
                    };
                    self.revalidate(req, &w.key, &w.ticker, arrived, seen);
                    immediate.extend(answer_stale(
                        identifiers,
                        &w.indices,
                        &w.key,
                        req,
                        head,
                        now,
                    ));
                    false
                }
                Some(Held::Fresh(head)) => {
                    METRICS.memory_hit(req.kind);
                    let hit = Ok(Filled {
                        head,
                        outcome: Outcome::Hit,
                    });
                    for i in &w.indices {
                        immediate.push(answer(
                            &identifiers[*i],
                            *i,
                            &w.key,
                            req,
                            &hit,
                            None,
                            Utc::now(),
                        ));
                    }
                    false
                }
                None => true,
            },
        );
    }

    /// A document this process is filling right now: join that fill; the database has nothing
    /// fresher to say. (Not with stale-if-error or stale-while-revalidate, which need the
    /// stored version.)
    fn join_running(
        &self,
        wanted: &mut Vec<Wanted>,
        req: Request,
        arrived: Instant,
        identifiers: &Identifiers,
        pending: &mut Vec<BoxFuture<'static, Vec<DocumentResult>>>,
    ) {
        if req.stale_if_error_hours.is_some() || req.stale_while_revalidate_hours.is_some() {
            return;
        }
        wanted.retain(|w| match self.fills.join(&w.key, &req, arrived) {
            Some(fill) => {
                pending.push(when_filled(
                    fill,
                    identifiers.clone(),
                    w.indices.clone(),
                    w.key.clone(),
                    req,
                    None,
                    None,
                ));
                false
            }
            None => true,
        });
    }

    /// One query for every document still wanted; what it reads is remembered by the view
    /// (unless the document changed meanwhile).
    async fn lookup(&self, wanted: &[Wanted]) -> Result<Lookup, StorageError> {
        let keys: Vec<SourceKey> = wanted.iter().map(|w| w.key.clone()).collect();
        let stamps: HashMap<&SourceKey, Stamp> = match self.hit_view {
            Some(view) => keys.iter().map(|k| (k, view.stamp(k))).collect(),
            None => HashMap::new(),
        };
        let sent = Instant::now();
        let lookup = self.store.lookup(&keys).await?;
        if let Some(view) = self.hit_view {
            view.observe_clock(lookup.now, sent.into_std());
            for h in &lookup.heads {
                if let Some(stamp) = stamps.get(&h.key) {
                    view.remember(h, *stamp);
                }
            }
        }
        Ok(lookup)
    }

    /// Each looked-up document answered (fresh), answered stale with a refresh behind it
    /// (stale-while-revalidate), or filled.
    fn classify(
        &self,
        wanted: Vec<Wanted>,
        lookup: Lookup,
        req: Request,
        arrived: Instant,
        identifiers: &Identifiers,
        planned: &mut Planned,
    ) {
        let mut heads: HashMap<SourceKey, DocumentHead> = lookup
            .heads
            .into_iter()
            .map(|h| (h.key.clone(), h))
            .collect();
        let now = lookup.now;
        for Wanted {
            key,
            ticker,
            indices,
        } in wanted
        {
            let previous = heads.remove(&key);
            match previous {
                Some(h) if is_fresh(&h, now, req) => {
                    let hit = Ok(Filled {
                        head: h,
                        outcome: Outcome::Hit,
                    });
                    planned.immediate.extend(answer_all(
                        identifiers,
                        indices,
                        &key,
                        req,
                        &hit,
                        None,
                        now,
                    ));
                }
                Some(h) if may_revalidate(&h, now, req) => {
                    let seen = Seen {
                        at: now,
                        version: h.version,
                    };
                    self.revalidate(req, &key, &ticker, arrived, seen);
                    planned.immediate.extend(answer_stale(
                        identifiers,
                        &indices,
                        &key,
                        req,
                        h,
                        now,
                    ));
                }
                _ => {
                    let seen = Seen {
                        at: now,
                        version: previous.as_ref().map_or(0, |h| h.version),
                    };
                    let fill = self.fills.fill(req, key.clone(), ticker, arrived, seen);
                    planned.pending.push(when_filled(
                        fill,
                        identifiers.clone(),
                        indices,
                        key,
                        req,
                        previous,
                        Some(now),
                    ));
                }
            }
        }
    }

    /// The one background refresh of a document answered stale (stale-while-revalidate): one
    /// already running here is left to finish (callers keep getting the stored version
    /// meanwhile), and across replicas the fill's lease makes it one.
    fn revalidate(
        &self,
        req: Request,
        key: &SourceKey,
        ticker: &Ticker,
        arrived: Instant,
        seen: Seen,
    ) {
        if self.fills.filling(key) {
            return;
        }
        METRICS.revalidation(req.kind.as_str());
        let fill = self
            .fills
            .fill(req, key.clone(), ticker.clone(), arrived, seen);
        let trace = TraceContext::current().unwrap_or_else(TraceContext::root);
        tokio::spawn(trace.scope_call(fill));
    }
}

/// The stale answers, marked refreshing, of the positions `indices` that asked for `key`.
fn answer_stale(
    identifiers: &Identifiers,
    indices: &[usize],
    key: &SourceKey,
    req: Request,
    head: DocumentHead,
    now: DateTime<Utc>,
) -> Vec<DocumentResult> {
    let stale = Ok(Filled {
        head,
        outcome: Outcome::Stale,
    });
    indices
        .iter()
        .map(|&i| DocumentResult {
            refreshing: true,
            ..answer(&identifiers[i], i, key, req, &stale, None, now)
        })
        .collect()
}

/// The answers, once `fill` is done, of the positions `indices` that asked for `key`.
fn when_filled(
    fill: impl std::future::Future<Output = FillResult> + Send + 'static,
    identifiers: Identifiers,
    indices: Vec<usize>,
    key: SourceKey,
    req: Request,
    previous: Option<DocumentHead>,
    now: Option<DateTime<Utc>>,
) -> BoxFuture<'static, Vec<DocumentResult>> {
    async move {
        let filled = fill.await;
        let now = now.unwrap_or_else(Utc::now);
        answer_all(
            &identifiers,
            indices,
            &key,
            req,
            &filled,
            previous.as_ref(),
            now,
        )
    }
    .boxed()
}
