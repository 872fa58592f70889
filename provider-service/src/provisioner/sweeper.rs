//! The lease sweeper: releases the leases of fillers that died holding them.

use std::{sync::Arc, time::Duration};

use documents_store::DocumentStore;

/// Releases, every lease length, the leases of fillers that went away (killed while holding
/// one) once they are a lease length past their expiry, so none is left behind. Runs until the
/// process stops (`background`).
pub fn spawn(
    store: Arc<dyn DocumentStore>,
    lease_ttl: Duration,
    background: &documents_kit::shutdown::Background,
) {
    let every = lease_ttl.max(Duration::from_secs(1));
    background.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match store.clear_abandoned_leases(lease_ttl).await {
                Ok(0) | Err(_) => {}
                Ok(n) => tracing::info!(
                    leases = n,
                    "released fill leases abandoned by fillers that went away"
                ),
            }
        }
    });
}
