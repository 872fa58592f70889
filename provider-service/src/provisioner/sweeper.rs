//! The lease sweeper: releases the leases of fillers that died holding them.

use super::*;

impl Provisioner {
    /// Releases, every lease length, the leases of fillers that went away (killed while
    /// holding one) once they are a lease length past their expiry, so none is left behind.
    /// Runs until the process stops (`background`).
    pub fn sweep_abandoned_leases(&self, background: &documents_kit::shutdown::Background) {
        let store = self.ctx.store.clone();
        let every = self.ctx.settings.lease_ttl.max(Duration::from_secs(1));
        let grace = self.ctx.settings.lease_ttl;
        background.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match store.clear_abandoned_leases(grace).await {
                    Ok(0) | Err(_) => {}
                    Ok(n) => tracing::info!(
                        leases = n,
                        "released fill leases abandoned by fillers that went away"
                    ),
                }
            }
        });
    }
}
