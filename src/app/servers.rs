//! The three listeners: OTLP/gRPC (with the feedback gRPC service), OTLP/HTTP, and the side API
//! (health, readiness, metrics, feedback). Each stops accepting when its token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::StartError;
use crate::feedback::grpc::GrpcFeedback;
use crate::feedback::service::FeedbackService;
use crate::ops::api::{self, ApiState};
use crate::receive::grpc::GrpcReceiver;
use crate::receive::http::{self, HttpReceiver};

pub(super) async fn bind(name: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { name, addr, source })
}

pub(super) fn serve_grpc(
    listener: TcpListener,
    receiver: GrpcReceiver,
    feedback: Arc<FeedbackService>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Without TCP_NODELAY, gRPC's trailers wait for the client's delayed ACK (~40 ms).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(receiver)
            .add_service(GrpcFeedback::server(feedback))
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "OTLP gRPC server failed");
        }
    })
}

pub(super) fn serve_http(
    listener: TcpListener,
    receiver: HttpReceiver,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let router = http::router(receiver);
    tokio::spawn(async move {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "OTLP HTTP server failed");
        }
    })
}

pub(super) fn serve_api(
    listener: TcpListener,
    state: ApiState,
    feedback: Arc<FeedbackService>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let router = api::router(state).merge(crate::feedback::http::router(feedback));
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "API server failed");
        }
    })
}
