//! OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! Served by hand rather than by tonic's generated server: the gateway reads the one message of
//! the call itself, so that its size is checked before it is read, its decompression is bounded
//! and charged to the shared budget exactly as on OTLP/HTTP, and its bytes go to the codec
//! (`otlp`) in place. tonic decompressed into a buffer that doubled past the limit and kept a
//! second copy of every message.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use super::budget::{self, Charge};
use super::decode::{self, DecodeError, DecodeLimits, Encoding, Format};
use super::errors::{grpc_status, partial_success};
use super::intake::{self, Admitted, Credentials, Refused};
use crate::pipeline::ingest::Ingest;
use crate::tls::PeerInfo;
use crate::vocab::{EXPERIMENT_HEADER, Transport};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// A gRPC message's prefix: the compressed flag and the length.
const PREFIX: usize = 5;
/// Encodings the gateway reads, for `grpc-accept-encoding`.
const ACCEPTED_ENCODINGS: &str = "gzip,zstd,deflate,identity";

/// The TraceService. Compressed messages may be `max_message_bytes` on the wire; messages
/// after decompression (or sent plain) `limits.max_decompressed_bytes`.
#[derive(Clone)]
pub struct GrpcReceiver {
    ingest: Arc<Ingest>,
    max_message_bytes: usize,
    limits: DecodeLimits,
}

impl GrpcReceiver {
    pub fn service(ingest: Arc<Ingest>, max_message_bytes: usize, limits: DecodeLimits) -> Self {
        Self {
            ingest,
            max_message_bytes,
            limits,
        }
    }

    async fn export(self, req: http::Request<Body>) -> http::Response<Body> {
        match self.handle(req).await {
            Ok(response) => unary_response(&response),
            Err(status) => {
                let mut response = status.into_http::<Body>();
                response.headers_mut().insert(
                    "grpc-accept-encoding",
                    http::HeaderValue::from_static(ACCEPTED_ENCODINGS),
                );
                response
            }
        }
    }

    async fn handle(&self, req: http::Request<Body>) -> Result<ExportTraceServiceResponse, Status> {
        let (parts, body) = req.into_parts();
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let peer = parts.extensions.get::<PeerInfo>();
        let credentials = Credentials {
            authorization: header("authorization"),
            cert_subjects: peer.map_or(&[], PeerInfo::cert_subjects),
        };
        let admitted = intake::admit(&self.ingest, Transport::Grpc, credentials)
            .map_err(|e| grpc_status(&e))?;
        let encoding = match header("grpc-encoding").unwrap_or("identity") {
            "identity" => Encoding::Identity,
            "gzip" => Encoding::Gzip,
            "zstd" => Encoding::Zstd,
            "deflate" => Encoding::Deflate,
            other => {
                return Err(Status::unimplemented(format!(
                    "grpc-encoding '{other}' is not supported; use {ACCEPTED_ENCODINGS}"
                )));
            }
        };
        let experiment_header = header(EXPERIMENT_HEADER).map(str::to_string);
        let message = self.read_message(body, encoding, &admitted).await?;
        let limits = self.limits.clone();
        let accepted = admitted
            .take_in(experiment_header, message.len(), move || match message {
                CallMessage::Plain(bytes) => decode::decode(Format::Protobuf, bytes, &limits),
                CallMessage::Compressed(bytes) => {
                    decode::decode_body(Format::Protobuf, encoding, bytes, &limits)
                }
            })
            .await
            .map_err(|refused| match refused {
                Refused::Decode(e) => decode_status(e, self.limits.retry_after),
                Refused::Ingest(e) => grpc_status(&e),
                Refused::Internal(e) => Status::internal(e),
            })?;
        Ok(ExportTraceServiceResponse {
            partial_success: partial_success(accepted),
        })
    }

    /// Reads the call's one message, refusing it by its declared length before reading it. A
    /// plain message is charged to the decode budget as it is read; a compressed one is charged
    /// as it is inflated.
    async fn read_message(
        &self,
        mut body: Body,
        encoding: Encoding,
        admitted: &Admitted,
    ) -> Result<CallMessage, Status> {
        let mut buf = BytesMut::new();
        let mut expected: Option<(usize, bool, Option<Charge>)> = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Status::cancelled(format!("request body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            if expected.is_none() && buf.len() >= PREFIX {
                expected = Some(self.check_prefix(&buf, encoding, admitted)?);
                if let Some((len, ..)) = expected {
                    buf.reserve((PREFIX + len).saturating_sub(buf.len()));
                }
            }
            if let Some((len, ..)) = expected
                && buf.len() > PREFIX + len
            {
                return Err(Status::invalid_argument(
                    "an Export call carries exactly one message",
                ));
            }
        }
        match expected {
            Some((len, compressed, charge)) if buf.len() == PREFIX + len => {
                let message = buf.freeze().slice(PREFIX..);
                Ok(match (compressed, charge) {
                    (false, Some(charge)) => CallMessage::Plain(budget::charged(message, charge)),
                    _ => CallMessage::Compressed(message),
                })
            }
            None if buf.is_empty() => Ok(CallMessage::Plain(Bytes::new())),
            _ => Err(Status::invalid_argument("the request message is truncated")),
        }
    }

    /// Checks a message's prefix: its flag against the call's encoding and its length against
    /// the limit. Returns the length, whether it is compressed, and a plain message's charge.
    fn check_prefix(
        &self,
        prefix: &[u8],
        encoding: Encoding,
        admitted: &Admitted,
    ) -> Result<(usize, bool, Option<Charge>), Status> {
        let compressed = match prefix[0] {
            0 => false,
            // The gRPC specification: a compressed flag without an encoding is INTERNAL.
            1 if encoding == Encoding::Identity => {
                return Err(Status::internal(
                    "message has its compressed flag set but the call names no grpc-encoding",
                ));
            }
            1 => true,
            flag => return Err(Status::internal(format!("invalid compressed flag {flag}"))),
        };
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        let (limit, stage) = if compressed {
            (self.max_message_bytes, "on the wire")
        } else {
            (self.limits.max_decompressed_bytes, "uncompressed")
        };
        if len > limit {
            return Err(decode_status(
                DecodeError::TooLarge { limit, stage },
                Duration::ZERO,
            ));
        }
        if compressed {
            return Ok((len, true, None));
        }
        match self.limits.budget.charge(len) {
            Some(charge) => Ok((len, false, Some(charge))),
            None => {
                admitted.count_busy();
                Err(decode_status(DecodeError::Busy, self.limits.retry_after))
            }
        }
    }
}

/// The call's message as read: plain (already charged) or still compressed.
enum CallMessage {
    Plain(Bytes),
    Compressed(Bytes),
}

impl CallMessage {
    fn len(&self) -> usize {
        match self {
            CallMessage::Plain(b) | CallMessage::Compressed(b) => b.len(),
        }
    }
}

/// The gRPC status for a body that cannot be decoded. Too large is RESOURCE_EXHAUSTED without
/// `RetryInfo`, which OTLP clients do not retry; a spent budget is UNAVAILABLE, which they do.
fn decode_status(err: DecodeError, retry_after: Duration) -> Status {
    let message = err.to_string();
    match err {
        DecodeError::TooLarge { .. } => Status::resource_exhausted(message),
        DecodeError::Busy => {
            let mut status = Status::unavailable(message);
            if let Ok(v) = retry_after.as_secs().max(1).to_string().parse() {
                status.metadata_mut().insert("retry-after", v);
            }
            status
        }
        DecodeError::UnsupportedContentType(_) | DecodeError::UnsupportedEncoding(_) => {
            Status::unimplemented(message)
        }
        DecodeError::Corrupt { .. } | DecodeError::Malformed { .. } => {
            Status::invalid_argument(message)
        }
    }
}

/// A successful unary response: one uncompressed message, then `grpc-status: 0`.
fn unary_response(message: &impl Message) -> http::Response<Body> {
    let len = message.encoded_len();
    let mut frame = BytesMut::with_capacity(PREFIX + len);
    frame.put_u8(0);
    frame.put_u32(len as u32);
    // The buffer has room for the whole message, so encoding cannot fail.
    let _ = message.encode(&mut frame);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut response = http::Response::new(Body::new(UnaryBody {
        message: Some(frame.freeze()),
        trailers: Some(trailers),
    }));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        "grpc-accept-encoding",
        http::HeaderValue::from_static(ACCEPTED_ENCODINGS),
    );
    response
}

/// A response body of one data frame and the trailers.
struct UnaryBody {
    message: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for UnaryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }
}

impl NamedService for GrpcReceiver {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl Service<http::Request<Body>> for GrpcReceiver {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let receiver = self.clone();
        Box::pin(async move { Ok(receiver.export(req).await) })
    }
}
