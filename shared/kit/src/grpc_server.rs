//! The one way both services serve gRPC: their common settings ([`server_args!`]), the layers
//! every call passes through, in order, our accept loop, reflection, and the bounded drain on
//! shutdown. A service brings its routes (its own services and health) and a listener.
//!
//! Layers, outermost first: observe (metrics, the `call failed` line, `x-request-id`) →
//! conventional status codes → calls per connection → the request-bytes budget → the deadline.

use std::{future::Future, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::{service::Routes, transport::Server};

use crate::{
    layers::{conventional_status, ConnectionLimitLayer, DeadlineLayer},
    lifecycle::serve_with_drain,
    listener::{self, ConnTable},
    metrics::SharedRegistry,
    observe::ObserveLayer,
    request_budget::RequestBudgetLayer,
};

/// Declares a service's server settings as flags with `PREFIX_*` environment variables behind
/// them, and their conversion to [`Limits`] (which names each variable in its messages).
/// `request_timeout_ms` is the service's default time cap.
#[macro_export]
macro_rules! server_args {
    ($name:ident, $prefix:literal, request_timeout_ms = $timeout:expr) => {
        /// How the gRPC server treats connections and calls.
        #[derive(Debug, Clone, clap::Args)]
        pub struct $name {
            /// Calls in flight per connection; more are refused at once with RESOURCE_EXHAUSTED.
            #[arg(long, env = concat!($prefix, "_MAX_CONCURRENT_PER_CONNECTION"), default_value_t = 256)]
            pub max_concurrent_per_connection: usize,

            /// Client connections open at once; more are refused (an HTTP/2 GOAWAY naming this
            /// setting) until some close.
            #[arg(long, visible_alias = "max-connections", env = concat!($prefix, "_MAX_CONNECTIONS"), default_value_t = 1000)]
            pub max_client_connections: usize,

            /// A connection with no call in flight for this many seconds is closed (clients
            /// reconnect when they next call).
            #[arg(long, env = concat!($prefix, "_IDLE_TIMEOUT_SECS"), default_value_t = 300)]
            pub idle_timeout_secs: u64,

            /// Largest request message accepted, in bytes (larger ones are refused with
            /// RESOURCE_EXHAUSTED).
            #[arg(long, env = concat!($prefix, "_MAX_MESSAGE_BYTES"), default_value_t = 4 * 1024 * 1024)]
            pub max_message_bytes: usize,

            /// Bytes of request messages still arriving that the server holds at once, over all
            /// calls; a call whose message would pass it is refused with RESOURCE_EXHAUSTED.
            #[arg(long, env = concat!($prefix, "_REQUEST_BUFFER_BYTES"), default_value_t = 64 * 1024 * 1024)]
            pub request_buffer_bytes: usize,

            /// Time for a call's request message to arrive whole, in milliseconds; a call still
            /// sending it then is ended with DEADLINE_EXCEEDED.
            #[arg(long, env = concat!($prefix, "_REQUEST_READ_TIMEOUT_MS"), default_value_t = 10_000)]
            pub request_read_timeout_ms: u64,

            /// Server-side deadline of a call when the client sets none, in milliseconds; also
            /// the longest deadline a client can ask for.
            #[arg(long, env = concat!($prefix, "_REQUEST_TIMEOUT_MS"), default_value_t = $timeout)]
            pub request_timeout_ms: u64,

            /// A connection this old, in milliseconds, is told to go (HTTP/2 GOAWAY): its calls
            /// finish (each within its deadline and the time cap), clients reconnect, and a
            /// balancer spreads them again; 0: never. A watch on it ends UNAVAILABLE (reason
            /// CONNECTION_AGED) just after the GOAWAY and resumes on a new connection.
            #[arg(long, env = concat!($prefix, "_MAX_CONNECTION_AGE_MS"), default_value_t = 0)]
            pub max_connection_age_ms: u64,

            /// Time given to in-flight calls to finish on SIGTERM/Ctrl-C, in milliseconds.
            #[arg(long, env = concat!($prefix, "_DRAIN_TIMEOUT_MS"), default_value_t = 10_000)]
            pub drain_timeout_ms: u64,

            /// Lame duck: on SIGTERM/Ctrl-C health turns NOT_SERVING at once, and the server
            /// keeps accepting and serving calls for this many milliseconds (while balancers
            /// and endpoints catch up) before it drains.
            #[arg(long, env = concat!($prefix, "_SHUTDOWN_GRACE_MS"), default_value_t = 0)]
            pub shutdown_grace_ms: u64,
        }

        impl $name {
            /// The settings as the server kit takes them; fails on settings that cannot work.
            pub fn limits(&self) -> anyhow::Result<$crate::grpc_server::Limits> {
                let limits = $crate::grpc_server::Limits {
                    max_concurrent_per_connection: self.max_concurrent_per_connection.max(1),
                    max_connections: self.max_client_connections.max(1),
                    idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs.max(1)),
                    max_message_bytes: self.max_message_bytes,
                    request_buffer_bytes: self.request_buffer_bytes,
                    request_read_timeout: std::time::Duration::from_millis(
                        self.request_read_timeout_ms.max(1),
                    ),
                    request_timeout: std::time::Duration::from_millis(self.request_timeout_ms),
                    drain_timeout: std::time::Duration::from_millis(self.drain_timeout_ms),
                    shutdown_grace: std::time::Duration::from_millis(self.shutdown_grace_ms),
                    connection_age: (self.max_connection_age_ms > 0).then(|| {
                        $crate::grpc_server::ConnectionAge {
                            max: std::time::Duration::from_millis(self.max_connection_age_ms),
                        }
                    }),
                    names: $crate::grpc_server::SettingNames {
                        max_concurrent_per_connection: concat!(
                            $prefix,
                            "_MAX_CONCURRENT_PER_CONNECTION"
                        ),
                        max_connections: concat!($prefix, "_MAX_CONNECTIONS"),
                        max_message_bytes: concat!($prefix, "_MAX_MESSAGE_BYTES"),
                        request_buffer_bytes: concat!($prefix, "_REQUEST_BUFFER_BYTES"),
                        request_read_timeout: concat!($prefix, "_REQUEST_READ_TIMEOUT_MS"),
                    },
                };
                limits.check()?;
                Ok(limits)
            }
        }
    };
}

/// A server's limits, from its [`server_args!`] settings.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_concurrent_per_connection: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub max_message_bytes: usize,
    pub request_buffer_bytes: usize,
    pub request_read_timeout: Duration,
    pub request_timeout: Duration,
    pub drain_timeout: Duration,
    /// How long the server goes on serving, NOT_SERVING, before it drains.
    pub shutdown_grace: Duration,
    /// Connections are told to go at this age; None: never.
    pub connection_age: Option<ConnectionAge>,
    pub names: SettingNames,
}

/// The maximum age of a connection. Past it the connection is told to go (GOAWAY) and closes
/// once its calls end; there is no separate grace: every call but a watch ends within its
/// deadline and the server's time cap, and a watch ends itself ([`ConnectionAge::call_ends_at`]).
/// (tonic's own grace, when set, replaces the GOAWAY by a forced close at age plus grace.)
#[derive(Debug, Clone, Copy)]
pub struct ConnectionAge {
    pub max: Duration,
}

impl ConnectionAge {
    /// When a call that never ends by itself (a watch) on a connection opened at `opened` ends:
    /// just after the connection was told to go, so the caller's next call takes a new one.
    pub fn call_ends_at(&self, opened: tokio::time::Instant) -> tokio::time::Instant {
        opened + self.max + Duration::from_millis(250)
    }

    /// When a watch with these request `extensions` ends for its connection's age, if the
    /// server ages connections (`age`) and knows the connection.
    pub fn watch_ends_at(
        age: Option<Self>,
        extensions: &tonic::Extensions,
    ) -> Option<tokio::time::Instant> {
        let opened = extensions.get::<crate::layers::ConnectionOpened>()?;
        Some(age?.call_ends_at(opened.0))
    }
}

/// The environment variables behind [`Limits`], named in refusals and errors.
#[derive(Debug, Clone)]
pub struct SettingNames {
    pub max_concurrent_per_connection: &'static str,
    pub max_connections: &'static str,
    pub max_message_bytes: &'static str,
    pub request_buffer_bytes: &'static str,
    pub request_read_timeout: &'static str,
}

impl Limits {
    /// Refuses settings that cannot work together.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.request_buffer_bytes < self.max_message_bytes {
            anyhow::bail!(
                "{}: {} is less than {} ({}): a message of the largest size accepted could never \
                 be received",
                self.names.request_buffer_bytes,
                self.request_buffer_bytes,
                self.names.max_message_bytes,
                self.max_message_bytes
            );
        }
        Ok(())
    }
}

/// What a service tells the kit besides its limits.
pub struct GrpcServer {
    pub limits: Limits,
    /// Serve TLS (and require client certificates if the config says so).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// The service's metrics registry: per-RPC and connection metrics go there.
    pub registry: &'static SharedRegistry,
    /// The service's own gRPC services (full names): observed by name and listed by reflection.
    pub services: &'static [&'static str],
    /// Who may call which method (health and reflection are open to all).
    pub access: crate::access::Access,
}

impl GrpcServer {
    /// Serves `routes` (plus reflection) on `listener` until `shutdown` resolves, then drains
    /// in-flight calls for at most the drain timeout.
    pub async fn serve(
        self,
        routes: Routes,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let GrpcServer {
            limits,
            tls,
            registry,
            services,
            access,
        } = self;
        let (reflection_v1, reflection_v1alpha) = reflection_services(services)?;
        // Open connections, shared by the accept loop and the per-connection call limit.
        let connections = ConnTable::default();
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).context("TLS configuration")?;
        }
        if let Some(age) = limits.connection_age {
            builder = builder.max_connection_age(age.max);
        }
        let router = builder
            .timeout(limits.request_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(documents_api::client::HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(documents_api::client::HTTP2_CONNECTION_WINDOW)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // Outermost: it sees every answer, refusals by the layers below included.
            .layer(ObserveLayer::new(registry, services))
            .layer(tower::util::MapResponseLayer::new(conventional_status))
            // Callers without the token a method needs are refused before they hold anything.
            .layer(access)
            // Overload is refused at once (RESOURCE_EXHAUSTED with RetryInfo) rather than
            // queued without bound.
            .layer(ConnectionLimitLayer::new(
                limits.max_concurrent_per_connection,
                limits.names.max_concurrent_per_connection,
                connections.clone(),
            ))
            // Memory held for request messages still arriving is bounded over all connections.
            .layer(RequestBudgetLayer::new(
                limits.request_buffer_bytes,
                limits.request_read_timeout,
                (
                    limits.names.request_buffer_bytes,
                    limits.names.request_read_timeout,
                ),
            ))
            .layer(DeadlineLayer::new(limits.request_timeout))
            .add_routes(routes)
            // Reflection is open (crate::access): it describes the schema (no data), and
            // grpcurl needs it to call health.
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        // Our accept loop: a connection limit, an idle timeout, TCP_NODELAY, and a pause when
        // out of descriptors (dead peers are found by the HTTP/2 keepalive pings).
        let incoming = listener::incoming(
            listener,
            listener::Limits {
                max_connections: limits.max_connections,
                idle_timeout: limits.idle_timeout,
                setting: limits.names.max_connections,
            },
            connections,
            registry,
        );
        serve_with_drain(
            move |stop| router.serve_with_incoming_shutdown(incoming, stop),
            shutdown,
            limits.drain_timeout,
        )
        .await
    }
}

/// Server reflection in both protocol versions: `grpc.reflection.v1` and `v1alpha` (which
/// grpcurl 1.8 speaks), listing exactly `services` (this server's own), health and reflection.
pub fn reflection_services(
    services: &[&str],
) -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(documents_api::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc's error details (BadRequest, ErrorInfo, RetryInfo), so grpcurl and
            // other reflection clients can show the details of an error.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    let v1 = builder().build_v1().context("building reflection v1")?;
    let v1alpha = builder()
        .build_v1alpha()
        .context("building reflection v1alpha")?;
    Ok((v1, v1alpha))
}
