//! OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::errors::grpc_status;
use crate::pipeline::envelope::Transport;
use crate::pipeline::ingest::{Ingest, RequestContext};

const EXPERIMENT_METADATA: &str = "x-mlflow-experiment-id";

pub struct GrpcReceiver {
    ingest: Arc<Ingest>,
}

impl GrpcReceiver {
    /// The TraceService with gzip and zstd accepted and the message size bounded (tonic checks
    /// the decompressed size against it).
    pub fn service(ingest: Arc<Ingest>, max_message_bytes: usize) -> TraceServiceServer<Self> {
        TraceServiceServer::new(Self { ingest })
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let _slot = self
            .ingest
            .admit(Transport::Grpc)
            .map_err(|e| grpc_status(&e))?;
        let experiment_header = request
            .metadata()
            .get(EXPERIMENT_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let ctx = RequestContext {
            transport: Transport::Grpc,
            experiment_header,
        };
        let accepted = self
            .ingest
            .accept(request.into_inner(), ctx)
            .await
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: (accepted.rejected_spans > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: accepted.rejected_spans as i64,
                error_message: accepted.message.unwrap_or_default(),
            }),
        }))
    }
}
