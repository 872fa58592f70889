//! The memory a server gives to request messages still arriving. tonic buffers a request message
//! until all of it is in, so a client that declares a large message and never finishes sending it
//! pins that memory for as long as its call lasts. This layer counts those bytes across all
//! connections against one budget, and ends a call whose message would pass it (RESOURCE_EXHAUSTED
//! with a `RetryInfo`) or has not fully arrived within the read timeout (DEADLINE_EXCEEDED). The
//! bytes are given back as soon as the message is in (before the handler runs) or the call ends.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use std::future::Future as _;

use http_body::{Frame, SizeHint};
use tonic::{body::Body, codegen::http::Request, Status};

/// How long a caller refused for want of budget is told to wait.
pub const BUDGET_RETRY: Duration = Duration::from_millis(200);

/// The limits and the count of bytes held.
#[derive(Debug)]
struct Budget {
    limit: usize,
    held: AtomicUsize,
    read_timeout: Duration,
    /// The settings' names, for messages: (budget, read timeout).
    settings: (&'static str, &'static str),
}

/// Wraps each request body of a server in a [`BudgetedBody`] sharing one budget.
#[derive(Clone, Debug)]
pub struct RequestBudgetLayer(Arc<Budget>);

impl RequestBudgetLayer {
    /// At most `limit` bytes of unfinished request messages at once, each message complete within
    /// `read_timeout` of its call's start; `settings` name the two options in messages.
    pub fn new(
        limit: usize,
        read_timeout: Duration,
        settings: (&'static str, &'static str),
    ) -> Self {
        Self(Arc::new(Budget {
            limit,
            held: AtomicUsize::new(0),
            read_timeout,
            settings,
        }))
    }

    /// Bytes held now, for tests and metrics.
    pub fn held(&self) -> usize {
        self.0.held.load(Ordering::Acquire)
    }
}

impl<S> tower::Layer<S> for RequestBudgetLayer {
    type Service = RequestBudget<S>;
    fn layer(&self, inner: S) -> RequestBudget<S> {
        RequestBudget {
            inner,
            budget: self.0.clone(),
        }
    }
}

/// The service [`RequestBudgetLayer`] makes.
#[derive(Clone, Debug)]
pub struct RequestBudget<S> {
    inner: S,
    budget: Arc<Budget>,
}

impl<S> tower::Service<Request<Body>> for RequestBudget<S>
where
    S: tower::Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let budget = self.budget.clone();
        self.inner
            .call(req.map(|body| Body::new(BudgetedBody::new(body, budget))))
    }
}

/// A request body whose bytes count against the server's budget until it ends or is dropped.
struct BudgetedBody {
    inner: Body,
    budget: Arc<Budget>,
    /// Bytes of this body counted in the budget.
    held: usize,
    /// Fires when the message has taken longer than the read timeout; `None` once it is in.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl BudgetedBody {
    fn new(inner: Body, budget: Arc<Budget>) -> Self {
        let timer = Some(Box::pin(tokio::time::sleep(budget.read_timeout)));
        Self {
            inner,
            budget,
            held: 0,
            timer,
        }
    }

    /// Gives this body's bytes back, and stops its timer: the message is in, or the call is over.
    fn finish(&mut self) {
        self.budget.held.fetch_sub(self.held, Ordering::AcqRel);
        self.held = 0;
        self.timer = None;
    }

    /// Counts `n` more bytes, or refuses them when the budget has no room.
    fn take(&mut self, n: usize) -> Result<(), Status> {
        let before = self.budget.held.fetch_add(n, Ordering::AcqRel);
        if before + n > self.budget.limit {
            self.budget.held.fetch_sub(n, Ordering::AcqRel);
            self.finish();
            return Err(documents_api::provider::status_with_retry(
                tonic::Code::ResourceExhausted,
                format!(
                    "the server holds too many request bytes still arriving: at most {} across all calls ({}); retry shortly",
                    self.budget.limit, self.budget.settings.0
                ),
                Some(BUDGET_RETRY),
            ));
        }
        self.held += n;
        Ok(())
    }
}

impl Drop for BudgetedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl http_body::Body for BudgetedBody {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if this.timer.is_some() {
                        this.take(data.len())?;
                    }
                } else {
                    // Trailers: the message is whole.
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    let timeout = this.budget.read_timeout;
                    let setting = this.budget.settings.1;
                    this.finish();
                    Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                        "the request message did not arrive within {} ms ({setting})",
                        timeout.as_millis()
                    )))))
                }
                _ => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn layer(limit: usize) -> RequestBudgetLayer {
        RequestBudgetLayer::new(limit, Duration::from_secs(10), ("BUDGET", "READ_TIMEOUT"))
    }

    /// A body that sends `chunks` and then waits for ever (a client that stopped mid-message).
    fn unfinished(chunks: &[usize]) -> Body {
        let frames: Vec<Result<Frame<tonic::codegen::Bytes>, Status>> = chunks
            .iter()
            .map(|n| Ok(Frame::data(vec![0u8; *n].into())))
            .collect();
        let stream = futures::stream::iter(frames).chain(futures::stream::pending());
        Body::new(http_body_util::StreamBody::new(stream))
    }

    fn budgeted(l: &RequestBudgetLayer, body: Body) -> BudgetedBody {
        BudgetedBody::new(body, l.0.clone())
    }

    use futures::StreamExt;

    #[tokio::test]
    async fn bytes_count_until_the_body_ends_or_drops() {
        let l = layer(1000);
        let mut a = budgeted(&l, unfinished(&[300, 300]));
        a.frame().await.unwrap().unwrap();
        a.frame().await.unwrap().unwrap();
        assert_eq!(l.held(), 600);
        let mut b = budgeted(&l, unfinished(&[300, 300]));
        b.frame().await.unwrap().unwrap();
        assert_eq!(l.held(), 900);
        // The next 300 would pass the budget: refused, and b's own bytes are given back.
        let refused = b.frame().await.unwrap().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("at most 1000"), "{refused:?}");
        assert!(refused.message().contains("BUDGET"), "{refused:?}");
        assert_eq!(
            documents_api::provider::retry_info(&refused),
            Some(BUDGET_RETRY),
            "the caller is told when to retry"
        );
        assert_eq!(l.held(), 600);
        drop(a);
        assert_eq!(l.held(), 0);
    }

    #[tokio::test]
    async fn a_whole_message_gives_its_bytes_back_at_once() {
        let l = layer(1000);
        let mut whole = budgeted(
            &l,
            Body::new(http_body_util::Full::new(tonic::codegen::Bytes::from(
                vec![0u8; 800],
            ))),
        );
        whole.frame().await.unwrap().unwrap();
        assert!(whole.frame().await.is_none());
        assert_eq!(l.held(), 0);
        drop(whole);
        assert_eq!(l.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_stops_arriving_ends_at_the_read_timeout() {
        let l = layer(1000);
        let mut slow = budgeted(&l, unfinished(&[100]));
        slow.frame().await.unwrap().unwrap();
        assert_eq!(l.held(), 100);
        // Paused time: the timer fires as soon as nothing else can run.
        let ended = slow.frame().await.unwrap().unwrap_err();
        assert_eq!(ended.code(), tonic::Code::DeadlineExceeded);
        assert!(
            ended.message().contains("10000 ms (READ_TIMEOUT)"),
            "{ended:?}"
        );
        assert_eq!(l.held(), 0);
    }
}
