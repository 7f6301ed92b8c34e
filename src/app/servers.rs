//! The listeners: OTLP/gRPC (with the feedback gRPC service), OTLP/HTTP, the side API (health,
//! readiness, metrics, feedback), and the optional plain probe port. With `[server.tls]` the
//! first three speak TLS. Each stops accepting when its token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::StartError;
use crate::feedback::grpc::GrpcFeedback;
use crate::feedback::service::FeedbackService;
use crate::ops::api::{self, ApiState};
use crate::receive::grpc::GrpcReceiver;
use crate::receive::http::{self, HttpReceiver};
use crate::tls::{Incoming, ListenerKind, PeerInfo, ServerTls, tls_stream};

pub(super) async fn bind(name: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { name, addr, source })
}

pub(super) fn serve_grpc(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    receiver: GrpcReceiver,
    feedback: Arc<FeedbackService>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let server = tonic::transport::Server::builder()
            .add_service(receiver)
            .add_service(GrpcFeedback::server(feedback));
        let served = match tls {
            Some(tls) => {
                server
                    .serve_with_incoming_shutdown(tls_stream(listener, tls), stop.cancelled_owned())
                    .await
            }
            None => {
                // Without TCP_NODELAY, gRPC's trailers wait for the client's delayed ACK.
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                server
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "OTLP gRPC server failed");
        }
    })
}

/// Serves `router` on `listener` (with TLS if given) until `stop`; handlers see each
/// connection's `PeerInfo`.
fn serve_router(
    name: &'static str,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    router: Router,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let incoming = Incoming::new(listener, tls.map(|t| (t, ListenerKind::Http)));
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<PeerInfo>();
        if let Err(e) = axum::serve(incoming, service)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, listener = name, "server failed");
        }
    })
}

pub(super) fn serve_http(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    receiver: HttpReceiver,
    stop: CancellationToken,
) -> JoinHandle<()> {
    serve_router("otlp_http", listener, tls, http::router(receiver), stop)
}

pub(super) fn serve_api(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    state: ApiState,
    feedback: Arc<FeedbackService>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let router = api::router(state).merge(crate::feedback::http::router(feedback));
    serve_router("api", listener, tls, router, stop)
}

/// The plain probe port: `/healthz` and `/readyz` only.
pub(super) fn serve_probes(
    listener: TcpListener,
    state: ApiState,
    stop: CancellationToken,
) -> JoinHandle<()> {
    serve_router("probe", listener, None, api::probe_router(state), stop)
}
