//! A server's life cycle: the shutdown signal, and serving until it comes, then draining the
//! calls in flight for a bounded time. [`crate::host`] puts the whole start-up and shutdown
//! order together.

use std::{future::Future, pin::Pin, time::Duration};

use anyhow::Context;

/// A future that resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub type ShutdownFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a server until `shutdown` resolves, then lets in-flight calls finish for at most `drain`.
/// `serve` receives the future that tells the server to stop accepting and drain.
pub async fn serve_with_drain<S, Fut>(
    serve: S,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> anyhow::Result<()>
where
    S: FnOnce(ShutdownFuture) -> Fut,
    Fut: Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(serve(Box::pin(async {
        let _ = stop_rx.await;
    })));
    tokio::select! {
        r = &mut server => return r.context("server task failed")?.context("server failed"),
        _ = shutdown => {},
    }
    tracing::info!(?drain, "shutting down: draining in-flight calls");
    let _ = stop_tx.send(());
    match tokio::time::timeout(drain, &mut server).await {
        Ok(r) => r.context("server task failed")?.context("server failed"),
        Err(_) => {
            tracing::warn!(?drain, "drain time exceeded, closing remaining calls");
            server.abort();
            Ok(())
        }
    }
}
