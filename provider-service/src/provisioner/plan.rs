//! Planning a call (one identifier or a batch): parsed identifiers to keys, one lookup for all of
//! them, fresh ones answered at once (or stale-while-revalidate), the rest joined to or started
//! as fills. The plan is the results known at once and the fills still to answer; the caller
//! puts them in request order or streams them.

use super::*;

/// A planned batch: the results known at once, and the fills still to answer (each with the
/// results of every position that asked for its document).
pub(super) struct Planned {
    pub(super) immediate: Vec<DocumentResult>,
    pub(super) pending: Vec<BoxFuture<'static, Vec<DocumentResult>>>,
}

impl Planned {
    /// The results as each is ready: the immediate ones, then the fills' as they finish.
    pub(super) fn into_stream(self) -> impl futures::Stream<Item = DocumentResult> {
        let pending: FuturesUnordered<_> = self.pending.into_iter().collect();
        stream::iter(self.immediate).chain(pending.flat_map(stream::iter))
    }
}

/// The answers, once `fill` is done, of the positions `indices` that asked for `sid`.
fn when_filled(
    fill: impl std::future::Future<Output = FillResult> + Send + 'static,
    identifiers: Arc<Vec<String>>,
    indices: Vec<usize>,
    sid: String,
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
            &sid,
            req,
            &filled,
            previous.as_ref(),
            now,
        )
    }
    .boxed()
}

impl Provisioner {
    pub(super) async fn plan(self: Arc<Self>, asked: Vec<Asked>, req: Request) -> Planned {
        let arrived = Instant::now();
        let kind = req.kind.as_str();
        let mut immediate = Vec::new();
        // source_id -> (ticker, indices asking for it), in first-seen order.
        let mut keys: Vec<(String, Ticker, Vec<usize>)> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        let mut identifiers = Vec::with_capacity(asked.len());
        for (i, Asked { identifier, ticker }) in asked.into_iter().enumerate() {
            match ticker {
                Err(e) => immediate.push(DocumentResult {
                    index: i as u32,
                    ..DocumentResult::failed(
                        &identifier,
                        kind,
                        String::new(),
                        ItemError::new(Code::InvalidArgument, format!("identifier: {e}"))
                            .reason("INVALID_IDENTIFIER")
                            .field("identifier"),
                    )
                }),
                Ok(t) => {
                    let sid = t.source_id(kind);
                    if let Some(popularity) = &self.popularity {
                        popularity.asked(req.kind, &t, &sid, req.cache_hours);
                    }
                    match position.get(&sid) {
                        Some(at) => keys[*at].2.push(i),
                        None => {
                            position.insert(sid.clone(), keys.len());
                            keys.push((sid, t, vec![i]));
                        }
                    }
                }
            }
            identifiers.push(identifier);
        }
        let identifiers = Arc::new(identifiers);
        // Fresh documents this process already knows need no database round trip.
        if let (Some(cache), false) = (&self.hit_cache, req.force_refresh) {
            keys.retain(
                |(sid, _, indices)| match cache.fresh(req.kind, sid, req.cache_hours) {
                    Some(head) => {
                        METRICS.memory_hit(req.kind);
                        let filled = Ok(Filled {
                            head,
                            outcome: Outcome::Hit,
                        });
                        for i in indices {
                            immediate.push(answer(
                                &identifiers[*i],
                                *i,
                                sid,
                                req,
                                &filled,
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
        // A document this process is filling right now: join that fill; the database has
        // nothing fresher to say. (Not with stale-if-error, which needs the stored version.)
        let mut pending = Vec::new();
        if req.stale_if_error_hours.is_none() && req.stale_while_revalidate_hours.is_none() {
            keys.retain(
                |(sid, _, indices)| match self.in_flight_fill(req, sid, arrived) {
                    Some(fill) => {
                        pending.push(when_filled(
                            fill,
                            identifiers.clone(),
                            indices.clone(),
                            sid.clone(),
                            req,
                            None,
                            None,
                        ));
                        false
                    }
                    None => true,
                },
            );
        }
        if keys.is_empty() {
            return Planned { immediate, pending };
        }
        let ids: Vec<String> = keys.iter().map(|(s, ..)| s.clone()).collect();
        let stamps: HashMap<String, Stamp> = match &self.hit_cache {
            Some(cache) => ids
                .iter()
                .map(|sid| (sid.clone(), cache.stamp(req.kind, sid)))
                .collect(),
            None => HashMap::new(),
        };
        let sent = Instant::now();
        let lookup = match self.store().lookup(kind, &ids).await {
            Ok(l) => {
                if let Some(cache) = &self.hit_cache {
                    cache.observe_clock(l.now, sent.into_std());
                    for h in &l.heads {
                        if let Some(stamp) = stamps.get(&h.source_id) {
                            cache.remember(req.kind, h, *stamp);
                        }
                    }
                }
                l
            }
            Err(e) => {
                let err = e.item_error();
                for (sid, _, indices) in keys {
                    for i in indices {
                        immediate.push(DocumentResult {
                            index: i as u32,
                            ..DocumentResult::failed(
                                &identifiers[i],
                                kind,
                                sid.clone(),
                                err.clone(),
                            )
                        });
                    }
                }
                return Planned { immediate, pending };
            }
        };
        let mut heads: HashMap<String, DocumentHead> = lookup
            .heads
            .into_iter()
            .map(|h| (h.source_id.clone(), h))
            .collect();
        let now = lookup.now;
        for (sid, ticker, indices) in keys {
            let previous = heads.remove(&sid);
            match previous {
                Some(h) if is_fresh(&h, now, req) => {
                    let filled = Ok(Filled {
                        head: h,
                        outcome: Outcome::Hit,
                    });
                    immediate.extend(answer_all(
                        &identifiers,
                        indices,
                        &sid,
                        req,
                        &filled,
                        None,
                        now,
                    ));
                }
                Some(h) if may_revalidate(&h, now, req) => {
                    // Stale-while-revalidate: the stored version now, one fill behind it.
                    let seen = Seen {
                        at: now,
                        version: h.version,
                    };
                    // One background task per document: a refresh already running here is
                    // left to finish (callers keep getting the stored version meanwhile).
                    if !self.filling(req.kind, &sid) {
                        METRICS.revalidation(req.kind.as_str());
                        let fill = self.fill(req, ticker, sid.clone(), arrived, seen);
                        let trace = TraceContext::current().unwrap_or_else(TraceContext::root);
                        tokio::spawn(trace.scope_call(fill));
                    }
                    for i in indices {
                        immediate.push(DocumentResult {
                            refreshing: true,
                            ..answer(
                                &identifiers[i],
                                i,
                                &sid,
                                req,
                                &Ok(Filled {
                                    head: h.clone(),
                                    outcome: Outcome::Stale,
                                }),
                                None,
                                now,
                            )
                        });
                    }
                }
                _ => {
                    let seen = Seen {
                        at: now,
                        version: previous.as_ref().map_or(0, |h| h.version),
                    };
                    let fill = self.fill(req, ticker, sid.clone(), arrived, seen);
                    pending.push(when_filled(
                        fill,
                        identifiers.clone(),
                        indices,
                        sid,
                        req,
                        previous,
                        Some(now),
                    ));
                }
            }
        }
        Planned { immediate, pending }
    }
}
