//! A steady mixed load against a provider (hits on warm documents, forced refreshes, fills of new
//! documents) that records every call, and the checks the fault tests run on the record: errors
//! by code, the slowest call, no wrong document ID, no version that went backwards, and how soon
//! calls settled back to success after a fault.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use documents_api::{DocumentOptions, DocumentProvider, ProviderClient};
use documents_store::DocumentStore;
use tokio::task::JoinHandle;

/// What the load asks for.
#[derive(Clone, Debug)]
pub struct Mix {
    /// Identifiers whose documents exist before the load starts (the hits).
    pub warm: Vec<String>,
    /// Every `refresh_every`-th call forces a refresh of a warm document (0: never).
    pub refresh_every: usize,
    /// Every `fill_every`-th call asks for a document not asked for before (0: never).
    pub fill_every: usize,
    /// First synthetic company number (`ASX:Snnnn`) used for new documents.
    pub fill_from: usize,
}

impl Mix {
    /// Eight hits, one forced refresh and one new document in every ten calls.
    pub fn steady(warm: Vec<String>, fill_from: usize) -> Mix {
        Mix {
            warm,
            refresh_every: 10,
            fill_every: 10,
            fill_from,
        }
    }

    /// The identifier and options of the `k`-th call.
    pub fn pick(&self, k: usize) -> (String, DocumentOptions) {
        if self.fill_every > 0 && k % self.fill_every == self.fill_every - 1 {
            let n = (self.fill_from + k / self.fill_every) % 10_000;
            return (format!("ASX:S{n:04}"), DocumentOptions::new());
        }
        let id = self.warm[k % self.warm.len()].clone();
        if self.refresh_every > 0 && k.is_multiple_of(self.refresh_every) {
            return (id, DocumentOptions::new().force_refresh(true));
        }
        (id, DocumentOptions::new())
    }
}

/// One call of the load.
#[derive(Clone, Debug)]
pub struct Call {
    pub identifier: String,
    /// When the call started, from the start of the load.
    pub started: Duration,
    pub took: Duration,
    pub answer: Result<Answer, (tonic::Code, String)>,
}

/// What a successful call answered.
#[derive(Clone, Debug)]
pub struct Answer {
    pub source_id: String,
    pub document_id: String,
    pub version: i64,
}

/// A running load; [`Load::stop`] ends it and hands over the record.
pub struct Load {
    stop: Arc<AtomicBool>,
    started: Instant,
    tasks: Vec<JoinHandle<Vec<Call>>>,
}

impl Load {
    /// Starts `workers` callers, each pausing `pause` between its calls.
    pub fn start(client: ProviderClient, mix: Mix, workers: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let mix = Arc::new(mix);
        let started = Instant::now();
        let tasks = (0..workers)
            .map(|_| {
                let (client, mix, stop, next) =
                    (client.clone(), mix.clone(), stop.clone(), next.clone());
                tokio::spawn(async move {
                    let mut calls = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let (identifier, options) = mix.pick(next.fetch_add(1, Ordering::Relaxed));
                        let at = Instant::now();
                        let answer = client
                            .get_document(&identifier, &options)
                            .await
                            .map(|r| Answer {
                                source_id: r.source_id,
                                document_id: r.document_id,
                                version: r.version,
                            })
                            .map_err(|s| (s.code(), s.message().to_string()));
                        calls.push(Call {
                            identifier,
                            started: at - started,
                            took: at.elapsed(),
                            answer,
                        });
                        tokio::time::sleep(pause).await;
                    }
                    calls
                })
            })
            .collect();
        Load {
            stop,
            started,
            tasks,
        }
    }

    /// Time since the load started, on the clock the calls are recorded with.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the callers and answers every call made, in order of start.
    pub async fn stop(self) -> Calls {
        self.stop.store(true, Ordering::Relaxed);
        let mut calls = Vec::new();
        for t in self.tasks {
            calls.extend(t.await.expect("load task"));
        }
        calls.sort_by_key(|c| c.started);
        Calls { calls }
    }
}

/// The record of a load.
pub struct Calls {
    pub calls: Vec<Call>,
}

/// How calls recovered from a fault ([`Calls::settled_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// No call failed at all: the fault did not reach the callers.
    NothingFailed,
    /// Calls failed, and every call from this long after the fault's end succeeded (measured
    /// to the start of the first call after the last failure).
    After(Duration),
    /// The last call failed.
    Never,
}

impl Settled {
    /// How long recovery took, for a fault the callers must have felt: panics (with `calls`)
    /// when nothing failed (the fault did not happen) or calls never recovered.
    pub fn felt(self, calls: &Calls) -> Duration {
        match self {
            Settled::After(d) => d,
            Settled::NothingFailed => panic!(
                "no call failed: the fault never reached the callers: {}",
                calls.describe()
            ),
            Settled::Never => panic!("calls never settled: {}", calls.describe()),
        }
    }
}

impl Calls {
    /// Calls by outcome: "OK" or the gRPC code's name.
    pub fn by_code(&self) -> BTreeMap<String, usize> {
        self.codes_between(Duration::ZERO, Duration::MAX)
    }

    /// Calls started in `[from, to)` by outcome.
    pub fn codes_between(&self, from: Duration, to: Duration) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for c in self
            .calls
            .iter()
            .filter(|c| c.started >= from && c.started < to)
        {
            let key = match &c.answer {
                Ok(_) => "OK".to_string(),
                Err((code, _)) => format!("{code:?}"),
            };
            *out.entry(key).or_default() += 1;
        }
        out
    }

    /// Errors other than `allowed` codes, with their messages (at most 10).
    pub fn unexpected(&self, allowed: &[tonic::Code]) -> Vec<String> {
        self.calls
            .iter()
            .filter_map(|c| match &c.answer {
                Err((code, msg)) if !allowed.contains(code) => Some(format!(
                    "{} at {:?} took {:?} -> {code:?}: {msg}",
                    c.identifier, c.started, c.took
                )),
                _ => None,
            })
            .take(10)
            .collect()
    }

    pub fn max_latency(&self) -> Duration {
        self.calls.iter().map(|c| c.took).max().unwrap_or_default()
    }

    /// How calls recovered from a fault that ended at `t`.
    pub fn settled_after(&self, t: Duration) -> Settled {
        let last_failure = self
            .calls
            .iter()
            .filter(|c| c.answer.is_err())
            .map(|c| c.started)
            .max();
        let Some(from) = last_failure else {
            return Settled::NothingFailed;
        };
        match self
            .calls
            .iter()
            .find(|c| c.started > from && c.answer.is_ok())
        {
            Some(c) => Settled::After(c.started.saturating_sub(t)),
            None => Settled::Never,
        }
    }

    /// Answers that contradict each other: two document IDs for one source, or a version lower
    /// than one already answered by a call that had finished more than `bound` before this one
    /// started. Calls to one replica: a zero bound (versions never go backwards within a
    /// replica); calls spread over replicas: the cross-replica staleness bound (README,
    /// "Guarantees": 1 s).
    pub fn wrong_answers(&self, bound: Duration) -> Vec<String> {
        let mut by_source: HashMap<&str, Vec<(&Call, &Answer)>> = HashMap::new();
        for c in &self.calls {
            if let Ok(a) = &c.answer {
                by_source.entry(&a.source_id).or_default().push((c, a));
            }
        }
        let mut wrong = Vec::new();
        for (source, answers) in by_source {
            let first = &answers[0].1.document_id;
            if let Some((_, a)) = answers.iter().find(|(_, a)| &a.document_id != first) {
                wrong.push(format!(
                    "{source}: two document IDs {first} and {}",
                    a.document_id
                ));
            }
            for (c, a) in &answers {
                let seen_before = answers
                    .iter()
                    .filter(|(p, _)| p.started + p.took + bound < c.started)
                    .map(|(_, p)| p.version)
                    .max()
                    .unwrap_or(0);
                if a.version < seen_before {
                    wrong.push(format!(
                        "{source}: version {} after {seen_before} was answered",
                        a.version
                    ));
                }
            }
        }
        wrong
    }

    /// Answers that disagree with the database afterwards: a document ID that is not the stored
    /// one, or a version above the stored version.
    pub async fn disagreements_with(&self, store: &dyn DocumentStore) -> Vec<String> {
        let mut newest: HashMap<&str, &Answer> = HashMap::new();
        for c in &self.calls {
            if let Ok(a) = &c.answer {
                let e = newest.entry(&a.source_id).or_insert(a);
                if a.version > e.version {
                    *e = a;
                }
            }
        }
        let mut out = Vec::new();
        for (source, a) in newest {
            let key: documents_store::SourceKey = source.parse().expect("a source key");
            match store.get_by_source(&key).await {
                Ok(Some(d)) if d.id == a.document_id && d.version >= a.version => {}
                Ok(Some(d)) => out.push(format!(
                    "{source}: answered {} v{}, stored {} v{}",
                    a.document_id, a.version, d.id, d.version
                )),
                Ok(None) => out.push(format!(
                    "{source}: answered {} but nothing stored",
                    a.document_id
                )),
                Err(e) => out.push(format!("{source}: reading it back failed: {e}")),
            }
        }
        out
    }

    /// One line for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "{} calls, {:?}, slowest {:?}",
            self.calls.len(),
            self.by_code(),
            self.max_latency()
        )
    }
}
