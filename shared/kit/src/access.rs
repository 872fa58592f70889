//! Who may call which method: bearer tokens and the scopes they grant, checked by one tower
//! layer in front of every service of a server (inside the observing layer, so refusals are
//! counted and logged). Health and reflection are open to everyone (orchestrators and grpcurl
//! need them; they carry no data). A token with every scope opens every method; a read token
//! opens only the methods its server lists as reads, and any other method is denied to it
//! (PERMISSION_DENIED with an ErrorInfo naming the missing scope). No token configured: open.

use std::{
    collections::HashSet,
    sync::Arc,
    task::{Context, Poll},
};

use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tonic::codegen::http::{Request, Response};

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The methods the server lists as reads.
    Read,
    /// Every method.
    All,
}

impl Scope {
    /// The scope's name in refusals.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::All => "admin",
        }
    }

    fn code(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::All => 2,
        }
    }
}

/// Compares a presented token with a configured one; constant time for equal lengths.
type Compare = fn(&[u8], &[u8]) -> Choice;

fn constant_time(presented: &[u8], configured: &[u8]) -> Choice {
    presented.ct_eq(configured)
}

/// A server's access rules: its tokens with their scopes, and its read methods.
#[derive(Clone)]
pub struct Access {
    tokens: Arc<[(Box<[u8]>, Scope)]>,
    /// Paths (`/package.Service/Method`) a read token opens.
    reads: Arc<HashSet<String>>,
    compare: Compare,
}

/// Paths open to every caller, token or not.
const OPEN_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The domain of the ErrorInfo a refusal carries.
const DOMAIN: &str = "documents.v1";

impl Access {
    /// `all`: the token that opens every method (unset with no read token: no authentication);
    /// `read`: a token that opens only `reads` (full method paths).
    pub fn new(all: Option<&str>, read: Option<&str>, reads: &[&str]) -> Self {
        let tokens: Vec<(Box<[u8]>, Scope)> = [(all, Scope::All), (read, Scope::Read)]
            .into_iter()
            .filter_map(|(t, scope)| t.map(|t| (Box::from(t.as_bytes()), scope)))
            .collect();
        Self {
            tokens: tokens.into(),
            reads: Arc::new(reads.iter().map(|s| s.to_string()).collect()),
            compare: constant_time,
        }
    }

    /// The scope `presented` grants, if any. Every configured token is compared, each in
    /// constant time, with no early exit: how long it takes says nothing about which token
    /// matched, or how much of one.
    fn scope_of(&self, presented: &[u8]) -> Option<Scope> {
        let mut granted = 0u8;
        for (token, scope) in self.tokens.iter() {
            let hit = (self.compare)(presented, token);
            granted = u8::conditional_select(&granted, &scope.code(), hit);
        }
        match granted {
            1 => Some(Scope::Read),
            2 => Some(Scope::All),
            _ => None,
        }
    }

    /// Whether a call to `path` with `authorization` may go on; the refusal otherwise.
    fn check(&self, path: &str, authorization: Option<&str>) -> Result<(), tonic::Status> {
        if self.tokens.is_empty() || OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Ok(());
        }
        // The scheme is case-insensitive (RFC 7235).
        let presented = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .unwrap_or_default();
        match self.scope_of(presented.as_bytes()) {
            Some(Scope::All) => Ok(()),
            Some(Scope::Read) if self.reads.contains(path) => Ok(()),
            Some(Scope::Read) => Err(missing_scope(path, Scope::All)),
            None => Err(tonic::Status::unauthenticated(
                "authorization: a valid bearer token is required (metadata \"authorization: \
                 Bearer <token>\")",
            )),
        }
    }
}

/// PERMISSION_DENIED for a caller whose token lacks `scope`, with an ErrorInfo naming it.
fn missing_scope(path: &str, scope: Scope) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let message = format!(
        "authorization: the bearer token does not grant the {:?} scope that {path} needs",
        scope.name()
    );
    let details = ErrorDetails::with_error_info(
        "SCOPE_MISSING",
        DOMAIN,
        [
            ("scope".to_string(), scope.name().to_string()),
            ("method".to_string(), path.to_string()),
        ],
    );
    tonic::Status::with_error_details(tonic::Code::PermissionDenied, message, details)
}

impl<S> tower::Layer<S> for Access {
    type Service = Guarded<S>;
    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            access: self.clone(),
        }
    }
}

/// A service behind [`Access`].
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    access: Access,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for Guarded<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if let Err(refused) = self.access.check(req.uri().path(), authorization) {
            return Box::pin(async move { Ok(refused.into_http()) });
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const READ: &str = "/documents.v1.DocumentProvider/GetDocument";
    const ADMIN: &str = "/documents.v1.DocumentProvider/InvalidateDocuments";

    fn access() -> Access {
        Access::new(Some("all-s3cret"), Some("read-s3cret"), &[READ])
    }

    #[test]
    fn each_token_opens_its_scope() {
        let a = access();
        let bearer = |t: &str| format!("Bearer {t}");
        assert!(a.check(READ, Some(&bearer("all-s3cret"))).is_ok());
        assert!(a.check(ADMIN, Some(&bearer("all-s3cret"))).is_ok());
        assert!(a.check(READ, Some(&bearer("read-s3cret"))).is_ok());
        let denied = a.check(ADMIN, Some(&bearer("read-s3cret"))).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("\"admin\""),
            "{}",
            denied.message()
        );
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            assert!(a
                .check(READ, Some(&format!("{scheme} read-s3cret")))
                .is_ok());
        }
        for bad in [
            "Bearer read-s3cre",
            "Bearer read-s3cret2",
            "read-s3cret",
            "",
        ] {
            assert_eq!(
                a.check(READ, Some(bad)).unwrap_err().code(),
                tonic::Code::Unauthenticated,
                "{bad}"
            );
        }
        assert_eq!(
            a.check(READ, None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        // Health and reflection are open; with no token configured, everything is.
        assert!(a.check("/grpc.health.v1.Health/Check", None).is_ok());
        assert!(a
            .check(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                None
            )
            .is_ok());
        assert!(Access::new(None, None, &[]).check(ADMIN, None).is_ok());
    }

    #[test]
    fn a_read_token_alone_still_guards_the_other_methods() {
        let a = Access::new(None, Some("read-s3cret"), &[READ]);
        assert!(a.check(READ, Some("Bearer read-s3cret")).is_ok());
        assert_eq!(
            a.check(ADMIN, Some("Bearer read-s3cret"))
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            a.check(READ, None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    static COMPARED: AtomicUsize = AtomicUsize::new(0);

    fn counting(presented: &[u8], configured: &[u8]) -> Choice {
        COMPARED.fetch_add(1, Ordering::SeqCst);
        constant_time(presented, configured)
    }

    /// Every configured token is compared whatever the presented one is: the first, the last,
    /// a near miss or nothing. No early exit to time.
    #[test]
    fn every_token_is_compared_every_time() {
        let mut a = access();
        a.compare = counting;
        for presented in ["all-s3cret", "read-s3cret", "read-s3cre", "", "x"] {
            COMPARED.store(0, Ordering::SeqCst);
            let _ = a.scope_of(presented.as_bytes());
            assert_eq!(COMPARED.load(Ordering::SeqCst), 2, "{presented:?}");
        }
    }
}
