//! The `documents.admin.v1.Admin` gRPC service: operators' read-only view of what the provider
//! holds and does (a document's stored state, lease, negative-cache entry and memory; the fills
//! in flight here and the leases held in the database). Behind the same token as the rest.

use std::sync::{Arc, OnceLock};

use documents_api::{
    proto::documents::admin::v1::{self as pb, admin_server::Admin},
    provider::to_timestamp,
};
use documents_kit::status::StorageStatus as _;
use tonic::{Request, Response, Status};

use crate::{provisioner::Provisioner, validate};

#[derive(Clone)]
pub struct AdminService {
    provisioner: Arc<OnceLock<Arc<Provisioner>>>,
}

impl AdminService {
    pub fn new(provisioner: Arc<OnceLock<Arc<Provisioner>>>) -> Self {
        Self { provisioner }
    }

    fn ready(&self) -> Result<&Arc<Provisioner>, Status> {
        self.provisioner.get().ok_or_else(|| {
            Status::unavailable("provider is starting: the database is not ready yet")
        })
    }
}

fn lease(token: i64, h: documents_store::Holding) -> pb::Lease {
    pb::Lease {
        holder: h.holder,
        expires_at: Some(to_timestamp(h.expires_at)),
        claimed_at: Some(to_timestamp(h.claimed_at)),
        token,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn describe_document(
        &self,
        request: Request<pb::DescribeDocumentRequest>,
    ) -> Result<Response<pb::DocumentState>, Status> {
        let r = request.into_inner();
        let p = self.ready()?;
        let kind = validate::kind(p, &r.kind)?.unwrap_or(p.settings().default_kind);
        let ticker = validate::identifier(p, "identifier", &r.identifier)?;
        let d = p.describe(kind, &ticker).await.map_err(|e| e.status())?;
        let head = d.head.as_ref();
        Ok(Response::new(pb::DocumentState {
            source_id: d.key.source_id(),
            kind: d.key.kind().as_str().to_string(),
            stored: head.is_some(),
            document_id: head.map(|h| h.id.clone()).unwrap_or_default(),
            version: head.map_or(0, |h| h.version),
            last_synced: head.map(|h| to_timestamp(h.last_synced)),
            invalidated: head.is_some_and(|h| h.invalidated),
            lease: d.lease.map(|(token, h)| lease(token, h)),
            negative_cache: d.negative.map(|(e, until)| pb::NegativeCacheEntry {
                code: e.code as i32,
                message: e.message,
                until: Some(to_timestamp(until)),
            }),
            in_memory: d.in_memory,
            filling_here: d.filling_here,
        }))
    }

    async fn list_fills(
        &self,
        _request: Request<pb::ListFillsRequest>,
    ) -> Result<Response<pb::ListFillsResponse>, Status> {
        let p = self.ready()?;
        let local = p
            .local_fills()
            .into_iter()
            .map(|f| pb::LocalFill {
                source_id: f.key.source_id(),
                kind: f.key.kind().as_str().to_string(),
                running_ms: f.running_for.as_millis() as u64,
                forced: f.forced,
                refresh_ahead: f.refresh_ahead,
            })
            .collect();
        let leases = p
            .store()
            .held_leases()
            .await
            .map_err(|e| e.status())?
            .into_iter()
            .map(|l| pb::HeldLease {
                source_id: l.key.source_id(),
                kind: l.key.kind().as_str().to_string(),
                lease: Some(lease(l.token, l.holding)),
            })
            .collect();
        Ok(Response::new(pb::ListFillsResponse { local, leases }))
    }
}
