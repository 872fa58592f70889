//! The `documents.v1.DocumentProvider` gRPC service: translates wire messages to the
//! provisioning core, logs one line per answer, and guards calls with the bearer token.

use std::{
    sync::{Arc, OnceLock},
    time::Instant,
};

use futures::StreamExt;
use shared::{
    proto::documents::v1::{
        self as pb, document_provider_server::DocumentProvider as DocumentProviderRpc,
    },
    DocumentResult, Provisioned,
};
use tonic::{Request, Response, Status};

use crate::provisioner::Provisioner;

/// The gRPC service. Until the database is ready every call answers UNAVAILABLE.
#[derive(Clone)]
pub struct ProviderService {
    provisioner: Arc<OnceLock<Arc<Provisioner>>>,
}

impl ProviderService {
    pub fn new(provisioner: Arc<OnceLock<Arc<Provisioner>>>) -> Self {
        Self { provisioner }
    }

    fn ready(&self) -> Result<&Arc<Provisioner>, Status> {
        self.provisioner.get().ok_or_else(|| {
            Status::unavailable("provider is starting: the database is not ready yet")
        })
    }

    async fn batch(
        &self,
        rpc: &'static str,
        identifiers: Vec<String>,
        kind: &str,
        options: Option<pb::DocumentOptions>,
    ) -> Result<Vec<DocumentResult>, Status> {
        let started = Instant::now();
        let p = self.ready()?;
        let req = p.validate(kind, options.as_ref(), identifiers.len())?;
        let results = p.provide(identifiers, req).await;
        for r in &results {
            log_answer(rpc, r, started);
        }
        Ok(results)
    }
}

fn log_answer(rpc: &'static str, r: &DocumentResult, started: Instant) {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match &r.error {
        Some(e) if r.is_ok() => tracing::warn!(
            rpc,
            identifier = %r.identifier,
            kind = %r.kind,
            outcome = r.outcome.as_str(),
            document_id = %r.document_id,
            version = r.version,
            code = ?e.code,
            error = %e.message,
            latency_ms,
            "answer"
        ),
        None => tracing::info!(
            rpc,
            identifier = %r.identifier,
            kind = %r.kind,
            outcome = r.outcome.as_str(),
            document_id = %r.document_id,
            version = r.version,
            latency_ms,
            "answer"
        ),
        Some(e) => tracing::warn!(
            rpc,
            identifier = %r.identifier,
            kind = %r.kind,
            outcome = r.outcome.as_str(),
            code = ?e.code,
            error = %e.message,
            latency_ms,
            "answer"
        ),
    }
}

#[tonic::async_trait]
impl DocumentProviderRpc for ProviderService {
    type StreamDocumentsStream =
        futures::stream::BoxStream<'static, Result<pb::DocumentResult, Status>>;

    async fn stream_documents(
        &self,
        request: Request<pb::GetDocumentsRequest>,
    ) -> Result<Response<Self::StreamDocumentsStream>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let p = self.ready()?;
        let req = p.validate(&r.kind, r.options.as_ref(), r.identifiers.len())?;
        let stream = p.provide_each(r.identifiers, req).map(move |result| {
            log_answer("StreamDocuments", &result, started);
            Ok(result.into())
        });
        Ok(Response::new(stream.boxed()))
    }

    async fn get_document(
        &self,
        request: Request<pb::GetDocumentRequest>,
    ) -> Result<Response<pb::DocumentResult>, Status> {
        let r = request.into_inner();
        let mut results = self
            .batch("GetDocument", vec![r.identifier], &r.kind, r.options)
            .await?;
        let result = results
            .pop()
            .ok_or_else(|| Status::internal("no result for the identifier"))?;
        match &result.error {
            Some(e) if !result.is_ok() => Err(e.to_status()),
            _ => Ok(Response::new(result.into())),
        }
    }

    async fn get_documents(
        &self,
        request: Request<pb::GetDocumentsRequest>,
    ) -> Result<Response<pb::GetDocumentsResponse>, Status> {
        let r = request.into_inner();
        let results = self
            .batch("GetDocuments", r.identifiers, &r.kind, r.options)
            .await?;
        Ok(Response::new(pb::GetDocumentsResponse {
            results: results.into_iter().map(Into::into).collect(),
        }))
    }

    async fn ensure_documents(
        &self,
        request: Request<pb::EnsureDocumentsRequest>,
    ) -> Result<Response<pb::EnsureDocumentsResponse>, Status> {
        let r = request.into_inner();
        let results = self
            .batch("EnsureDocuments", r.identifiers, &r.kind, r.options)
            .await?;
        let p = Provisioned::from_results(results);
        Ok(Response::new(pb::EnsureDocumentsResponse {
            document_ids: p.document_ids,
            errors: p.errors.into_iter().map(|(k, v)| (k, v.into())).collect(),
        }))
    }
}

/// Requires `authorization: Bearer <token>` when a token is configured. The comparison takes
/// the same time wherever the first difference is.
#[derive(Clone)]
pub struct RequireToken(pub Option<Arc<str>>);

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Ok(req);
        };
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "authorization: a valid bearer token is required (metadata \"authorization: Bearer <token>\")",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, expected) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(0) ^ expected;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn token_is_required_when_configured() {
        let mut guard = RequireToken(Some("s3cret".into()));
        let mut ok = Request::new(());
        ok.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(guard.call(ok).is_ok());
        for bad in ["Bearer s3cre", "Bearer s3cret2", "s3cret", ""] {
            let mut r = Request::new(());
            if !bad.is_empty() {
                r.metadata_mut()
                    .insert("authorization", bad.parse().unwrap());
            }
            assert_eq!(
                guard.call(r).unwrap_err().code(),
                tonic::Code::Unauthenticated,
                "{bad}"
            );
        }
        assert!(RequireToken(None).call(Request::new(())).is_ok());
    }
}
