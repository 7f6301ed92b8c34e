//! OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! Served by hand rather than by the generated `TraceServiceServer`, whose codec decodes every
//! span into owned structs: here tonic hands over the (decompressed, size-checked) message bytes
//! and `map::wire` reads them in place, as the HTTP receiver does.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::body::Body;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Service, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::errors::grpc_status;
use crate::map::wire;
use crate::pipeline::envelope::Transport;
use crate::pipeline::ingest::{Ingest, IngestError, RequestContext};

const EXPERIMENT_METADATA: &str = "x-mlflow-experiment-id";
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The TraceService: gzip and zstd accepted, the decompressed message size bounded by tonic.
#[derive(Clone)]
pub struct GrpcReceiver {
    ingest: Arc<Ingest>,
    max_message_bytes: usize,
}

impl GrpcReceiver {
    pub fn service(ingest: Arc<Ingest>, max_message_bytes: usize) -> Self {
        Self {
            ingest,
            max_message_bytes,
        }
    }

    async fn export(
        ingest: Arc<Ingest>,
        request: Request<Bytes>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let _slot = ingest.admit(Transport::Grpc).map_err(|e| grpc_status(&e))?;
        let experiment_header = request
            .metadata()
            .get(EXPERIMENT_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let ctx = RequestContext {
            transport: Transport::Grpc,
            experiment_header,
        };
        let turn = ingest.ingest_turn().await;
        let resource_spans = wire::parse_request(request.get_ref()).map_err(|e| {
            tracing::debug!(error = %e, "undecodable OTLP/gRPC request");
            grpc_status(&IngestError::InvalidArgument(format!(
                "not a valid OTLP ExportTraceServiceRequest: {e}"
            )))
        })?;
        drop(turn);
        let accepted = ingest
            .accept(resource_spans, ctx)
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

impl NamedService for GrpcReceiver {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct ExportMethod(Arc<Ingest>);

impl UnaryService<Bytes> for ExportMethod {
    type Response = ExportTraceServiceResponse;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<Self::Response>, Status>> + Send + 'static>,
    >;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        Box::pin(GrpcReceiver::export(self.0.clone(), request))
    }
}

impl Service<http::Request<Body>> for GrpcReceiver {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = ExportMethod(self.ingest.clone());
        // Replies are never compressed: an export's reply is empty or a short partial-success
        // message, and tonic would set up a gzip stream for every reply to a client that
        // accepts gzip (as OTel SDKs with compression on do).
        let mut grpc = Grpc::new(RawRequestCodec)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .max_decoding_message_size(self.max_message_bytes);
        Box::pin(async move { Ok(grpc.unary(method, req).await) })
    }
}

/// Decodes nothing: the message bytes go to `map::wire`. Responses are encoded with prost.
#[derive(Debug, Clone, Copy, Default)]
struct RawRequestCodec;

impl Codec for RawRequestCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = RawRequestCodec;
    type Decoder = RawRequestCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawRequestCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawRequestCodec
    }
}

impl Encoder for RawRequestCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

impl Decoder for RawRequestCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
