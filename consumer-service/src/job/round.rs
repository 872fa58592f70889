//! One round at a time per ticker: in this process ([`LocalRounds`], a lock per canonical
//! ticker) and across consumer replicas ([`RoundLease`], a lease on the ticker's
//! `announcement_download` document in the shared database, the same leases the providers fill
//! under). The lease is renewed while the round runs; every write of the round is fenced by its
//! token, and the round stops the moment a renewal finds the lease taken over (this process was
//! paused past it), so a paused consumer never shares its round.

use std::{collections::HashMap, future::pending, sync::Arc, time::Duration};

use documents_api::{ItemError, Ticker};
use documents_kit::{status::StorageStatus as _, switches};
use documents_store::{DocumentStore, Fence, SourceKey, StorageError};
use tokio::{
    sync::{watch, Mutex, OwnedMutexGuard},
    task::JoinHandle,
    time::Instant,
};
use tonic::Code;

/// How long a round's lease lasts unless renewed (every third of it while the round runs).
const ROUND_LEASE: Duration = Duration::from_secs(6);

/// The rounds running in this process, one lock per canonical ticker.
#[derive(Clone, Default)]
pub(super) struct LocalRounds(Arc<std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>>);

impl LocalRounds {
    /// Waits until no other round of `ticker` runs in this process, up to `deadline`.
    pub(super) async fn hold(
        &self,
        ticker: &Ticker,
        deadline: Option<Instant>,
    ) -> Result<LocalRound, ItemError> {
        let key = ticker.to_string();
        let mutex = self
            .0
            .lock()
            .expect("rounds lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let lock = mutex.lock_owned();
        let lock = match deadline {
            Some(d) => tokio::time::timeout_at(d, lock).await.map_err(|_| {
                ItemError::new(
                    Code::DeadlineExceeded,
                    "deadline passed while another round of this ticker ran",
                )
            })?,
            None => lock.await,
        };
        Ok(LocalRound {
            rounds: self.clone(),
            key,
            lock: Some(lock),
        })
    }
}

/// A round's hold on its ticker in this process; the ticker's entry goes when the last holder
/// does.
pub(super) struct LocalRound {
    rounds: LocalRounds,
    key: String,
    lock: Option<OwnedMutexGuard<()>>,
}

impl Drop for LocalRound {
    fn drop(&mut self) {
        let mutex = self.lock.take().map(|g| {
            let m = OwnedMutexGuard::mutex(&g).clone();
            drop(g);
            m
        });
        let mut rounds = self.rounds.0.lock().expect("rounds lock");
        // Ours and the map's: nobody else waits for this ticker.
        if mutex.is_some_and(|m| Arc::strong_count(&m) == 2) {
            rounds.remove(&self.key);
        }
    }
}

/// A round's lease in the database; renewed while held, released when dropped.
pub(super) struct RoundLease {
    token: i64,
    lost: watch::Receiver<bool>,
    renew: JoinHandle<()>,
    release: Option<(Arc<dyn DocumentStore>, SourceKey)>,
}

/// Whether the history checker switched fencing off: the round is then never told it lost its
/// lease, and writes unfenced, as it did before fencing.
fn unfenced() -> bool {
    switches::off(switches::ROUND_FENCING)
}

impl RoundLease {
    /// Waits until no other consumer process runs a round of the ticker whose download
    /// document is `key`, up to `deadline`, and takes the lease as `holder`.
    pub(super) async fn acquire(
        store: &Arc<dyn DocumentStore>,
        key: &SourceKey,
        holder: &str,
        deadline: Option<Instant>,
    ) -> Result<RoundLease, ItemError> {
        let mut backoff = Duration::from_millis(20);
        loop {
            let claim = store
                .claim_fill(key, holder, ROUND_LEASE)
                .await
                .map_err(|e| e.item_error())?;
            if let Some(token) = claim.token {
                let (lost_tx, lost) = watch::channel(false);
                let renew = tokio::spawn(renew(store.clone(), key.clone(), token, lost_tx));
                return Ok(RoundLease {
                    token,
                    lost,
                    renew,
                    release: Some((store.clone(), key.clone())),
                });
            }
            // Another consumer runs a round of this ticker: wait for it.
            if deadline.is_some_and(|d| Instant::now() + backoff >= d) {
                return Err(ItemError::new(
                    Code::DeadlineExceeded,
                    "deadline passed while another consumer ran a round of this ticker",
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// The fence of a checkpoint (the round goes on writing).
    pub(super) fn keep(&self) -> Option<Fence> {
        (!unfenced()).then(|| Fence::keep(self.token))
    }

    /// The fence of the round's last write (which ends the lease).
    pub(super) fn last(&self) -> Option<Fence> {
        (!unfenced()).then(|| Fence::last(self.token))
    }

    /// Resolves when a renewal finds the lease taken over; never while it is held.
    pub(super) async fn lost(&self) {
        let mut lost = self.lost.clone();
        if unfenced() || lost.wait_for(|lost| *lost).await.is_err() {
            pending::<()>().await;
        }
    }

    /// The error of a write of the round: a write refused for its token means the lease is lost.
    pub(super) fn write_error(&self, e: StorageError) -> ItemError {
        match e {
            StorageError::LeaseLost(_) => self.lost_error(),
            e => e.item_error(),
        }
    }

    /// The round's error once its lease is lost: another consumer runs the round now.
    pub(super) fn lost_error(&self) -> ItemError {
        ItemError::new(
            Code::Aborted,
            format!(
                "round lease lost (token {} is no longer current): another consumer took the round over, and this one stopped without writing",
                self.token
            ),
        )
        .reason("ROUND_LEASE_LOST")
    }
}

/// Renews the lease every third of its length until it is taken over (then says so on `lost`).
async fn renew(
    store: Arc<dyn DocumentStore>,
    key: SourceKey,
    token: i64,
    lost: watch::Sender<bool>,
) {
    loop {
        tokio::time::sleep(ROUND_LEASE / 3).await;
        match store.renew_fill(&key, token, ROUND_LEASE).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(%key, token, "round lease taken over; stopping the round");
                let _ = lost.send(true);
                return;
            }
            Err(e) => tracing::warn!(%key, error = %e, "could not renew the round lease"),
        }
    }
}

impl Drop for RoundLease {
    fn drop(&mut self) {
        self.renew.abort();
        if let Some((store, key)) = self.release.take() {
            let token = self.token;
            tokio::spawn(async move {
                if let Err(e) = store.release_fill(&key, token, None).await {
                    tracing::warn!(%key, error = %e, "could not release the round lease; it expires");
                }
            });
        }
    }
}
