//! The servers' accept loop and their connections: at most a set number of connections (more
//! are refused with an HTTP/2 GOAWAY that says why), connections with no call for the idle
//! timeout closed, and an accept loop that backs off when the process is out of descriptors
//! (EMFILE/ENFILE) instead of spinning, logging the condition once a minute at most and
//! counting it.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, Weak,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::Stream;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::SharedRegistry;

/// One connection's calls: in flight now, and when the last one ended.
#[derive(Debug)]
pub struct ConnState {
    pub in_flight: AtomicUsize,
    /// When the connection was accepted (its age counts from here).
    pub opened: Instant,
    /// Milliseconds since `BASE` when a call last started or ended.
    last_ms: AtomicU64,
}

static BASE: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    BASE.elapsed().as_millis() as u64
}

impl ConnState {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            opened: Instant::now(),
            last_ms: AtomicU64::new(now_ms()),
        }
    }

    /// Notes that a call started or ended now.
    pub fn touch(&self) {
        self.last_ms.store(now_ms(), Ordering::Release);
    }

    fn idle_for(&self) -> Option<Duration> {
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| {
            Duration::from_millis(now_ms().saturating_sub(self.last_ms.load(Ordering::Acquire)))
        })
    }
}

/// Open connections by peer address, shared by the accept loop (which adds and ends them) and
/// the per-connection call limit (which counts their calls).
#[derive(Clone, Debug, Default)]
pub struct ConnTable(Arc<Mutex<HashMap<SocketAddr, Weak<ConnState>>>>);

impl ConnTable {
    /// The state of the connection from `peer`, made if the accept loop did not (a TLS or
    /// other listener).
    pub fn state(&self, peer: SocketAddr) -> Arc<ConnState> {
        let mut map = self.0.lock().expect("connection table lock");
        if let Some(s) = map.get(&peer).and_then(Weak::upgrade) {
            return s;
        }
        if map.len() > 4096 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let s = Arc::new(ConnState::new());
        map.insert(peer, Arc::downgrade(&s));
        s
    }

    fn forget(&self, peer: SocketAddr) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(&peer);
        }
    }
}

/// What the accept loop enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; more are refused.
    pub max_connections: usize,
    /// A connection with no call in flight and none for this long is closed.
    pub idle_timeout: Duration,
    /// The setting that sets `max_connections`, named in refusals.
    pub setting: &'static str,
}

#[derive(Clone)]
struct ListenerMetrics {
    open: Gauge,
    accepted: Counter,
    refused: Counter,
    idle_closed: Counter,
    accept_errors: Family<[(&'static str, &'static str); 1], Counter>,
}

static METRICS: std::sync::OnceLock<ListenerMetrics> = std::sync::OnceLock::new();

fn metrics(registry: &SharedRegistry) -> &'static ListenerMetrics {
    METRICS.get_or_init(|| {
        let m = ListenerMetrics {
            open: Gauge::default(),
            accepted: Counter::default(),
            refused: Counter::default(),
            idle_closed: Counter::default(),
            accept_errors: Family::default(),
        };
        let mut r = registry.lock().expect("metrics registry lock");
        r.register("connections_open", "Client connections open", m.open.clone());
        r.register(
            "connections_accepted",
            "Client connections accepted (a client that reconnects, e.g. after a connection-age GOAWAY, counts again)",
            m.accepted.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused at the connection limit",
            m.refused.clone(),
        );
        r.register(
            "connections_idle_closed",
            "Connections closed after the idle timeout",
            m.idle_closed.clone(),
        );
        r.register(
            "accept_errors",
            "Accept failures by kind (descriptors: the process or system is out of file descriptors)",
            m.accept_errors.clone(),
        );
        m
    })
}

/// The connections `listener` accepts, within `limits`.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
    table: ConnTable,
    registry: &SharedRegistry,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let acceptor = Acceptor {
        listener,
        limits,
        table,
        metrics: metrics(registry).clone(),
        open: Arc::new(AtomicUsize::new(0)),
        pause: Duration::ZERO,
        warned: None,
        said_again: true,
    };
    futures::stream::unfold(acceptor, |mut a| async move {
        let conn = a.next().await;
        Some((Ok(conn), a))
    })
}

/// The accept loop's state.
struct Acceptor {
    listener: TcpListener,
    limits: Limits,
    table: ConnTable,
    metrics: ListenerMetrics,
    open: Arc<AtomicUsize>,
    /// Pause before the next accept while out of descriptors (zero otherwise).
    pause: Duration,
    /// When the last out-of-descriptors WARN was written.
    warned: Option<Instant>,
    /// Whether "accepting connections again" has been said since that WARN.
    said_again: bool,
}

impl Acceptor {
    /// The next connection within the limits (refusing, pausing and retrying as needed).
    async fn next(&mut self) -> Conn {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.pause = Duration::ZERO;
                    if !self.said_again {
                        tracing::info!("accepting connections again");
                        self.said_again = true;
                    }
                    if self.open.load(Ordering::Acquire) >= self.limits.max_connections {
                        self.metrics.refused.inc();
                        refuse(stream, &self.limits);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    return Conn::new(
                        stream,
                        peer,
                        &self.limits,
                        self.table.clone(),
                        self.open.clone(),
                        self.metrics.clone(),
                    );
                }
                Err(e) if out_of_descriptors(&e) => {
                    self.metrics
                        .accept_errors
                        .get_or_create(&[("kind", "descriptors")])
                        .inc();
                    // One WARN a minute at most, however the pressure comes and goes.
                    if self
                        .warned
                        .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
                    {
                        tracing::warn!(error = %e, open = self.open.load(Ordering::Acquire), "out of file descriptors: accepting again after a pause (raise the descriptor limit or lower the connection limit)");
                        self.warned = Some(Instant::now());
                        self.said_again = false;
                    }
                    self.pause = self.pause.max(Duration::from_millis(10));
                    tracing::debug!(pause_ms = self.pause.as_millis() as u64, "accept paused");
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    // A connection that failed before it was accepted (reset, aborted): only
                    // that one is lost.
                    self.metrics
                        .accept_errors
                        .get_or_create(&[("kind", "other")])
                        .inc();
                    tracing::debug!(error = %e, "accept failed");
                }
            }
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE (24): the process's limit; ENFILE (23): the system's.
    matches!(e.raw_os_error(), Some(23) | Some(24))
}

/// Refuses a connection over the limit the HTTP/2 way: the server's SETTINGS, then a GOAWAY
/// (ENHANCE_YOUR_CALM) whose debug data names the limit, then close.
fn refuse(stream: TcpStream, limits: &Limits) {
    let reason = format!(
        "connection limit reached: at most {} connections ({})",
        limits.max_connections, limits.setting
    );
    let mut frames = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let len = 8 + reason.len();
    frames.extend_from_slice(&[
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        0x7,
        0,
        0,
        0,
        0,
        0,
    ]);
    frames.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0xb]);
    frames.extend_from_slice(reason.as_bytes());
    // Best effort and without waiting: a client that does not read gets a plain close.
    let _ = stream.try_write(&frames);
    tracing::debug!(%reason, "connection refused");
}

/// An accepted connection: counted while open, closed by the idle timeout.
pub struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<ConnState>,
    table: ConnTable,
    open: Arc<AtomicUsize>,
    metrics: ListenerMetrics,
    idle_timeout: Duration,
    check: Pin<Box<tokio::time::Sleep>>,
    /// Counted as closed for idleness (reads fail from then on).
    closed_idle: bool,
}

impl Conn {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        limits: &Limits,
        table: ConnTable,
        open: Arc<AtomicUsize>,
        metrics: ListenerMetrics,
    ) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        metrics.open.inc();
        metrics.accepted.inc();
        Self {
            state: table.state(peer),
            stream,
            peer,
            table,
            open,
            metrics,
            idle_timeout: limits.idle_timeout,
            check: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            closed_idle: false,
        }
    }

    /// Whether the connection has been idle past the timeout (re-arming the check otherwise).
    fn idle(&mut self, cx: &mut Context<'_>) -> bool {
        while self.check.as_mut().poll(cx).is_ready() {
            match self.state.idle_for() {
                Some(idle) if idle >= self.idle_timeout => {
                    if !self.closed_idle {
                        self.closed_idle = true;
                        self.metrics.idle_closed.inc();
                    }
                    return true;
                }
                Some(idle) => {
                    let next = tokio::time::Instant::now() + (self.idle_timeout - idle);
                    self.check.as_mut().reset(next);
                }
                None => {
                    let next = tokio::time::Instant::now() + self.idle_timeout;
                    self.check.as_mut().reset(next);
                }
            }
        }
        false
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.open.dec();
        self.table.forget(self.peer);
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.stream.local_addr().ok(),
            remote_addr: Some(self.peer),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.idle(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle past the idle timeout",
            )));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
