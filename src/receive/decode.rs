//! Content negotiation, bounded decompression and decoding of OTLP/HTTP bodies. Pure and
//! synchronous, so large bodies can be handled on the blocking pool.

use std::io::Read;

use bytes::Bytes;
use flate2::read::{DeflateDecoder, GzDecoder, ZlibDecoder};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::map::wire::{self, ResourceSpansView};

/// Body encodings OTLP/HTTP clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Zstd,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unsupported content type '{0}'; use application/x-protobuf or application/json")]
    UnsupportedContentType(String),
    #[error("unsupported content encoding '{0}'; use gzip, deflate, zstd or none")]
    UnsupportedEncoding(String),
    #[error("body larger than {limit} bytes {stage}")]
    TooLarge { limit: usize, stage: &'static str },
    #[error("body is not valid {encoding} data: {detail}")]
    Corrupt {
        encoding: &'static str,
        detail: String,
    },
    #[error("body is not a valid OTLP {format} ExportTraceServiceRequest: {detail}")]
    Malformed {
        format: &'static str,
        detail: String,
    },
}

/// Parses `Content-Type`, ignoring parameters such as `; charset=utf-8`.
pub fn parse_content_type(value: Option<&str>) -> Result<Format, DecodeError> {
    let raw = value.unwrap_or("");
    let media = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
        "application/json" => Ok(Format::Json),
        _ => Err(DecodeError::UnsupportedContentType(raw.to_string())),
    }
}

pub fn parse_encoding(value: Option<&str>) -> Result<Encoding, DecodeError> {
    let raw = value.unwrap_or("").trim().to_ascii_lowercase();
    match raw.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "deflate" => Ok(Encoding::Deflate),
        "zstd" => Ok(Encoding::Zstd),
        _ => Err(DecodeError::UnsupportedEncoding(raw)),
    }
}

/// Reads at most `limit` bytes of decompressed output; one byte more is a zip bomb (413).
fn read_bounded(
    mut reader: impl Read,
    limit: usize,
    encoding: &'static str,
) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    (&mut reader)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Corrupt {
            encoding,
            detail: e.to_string(),
        })?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge {
            limit,
            stage: "after decompression",
        });
    }
    Ok(out)
}

/// Decompresses `body`, never producing more than `limit` bytes.
pub fn decompress(encoding: Encoding, wire: &Bytes, limit: usize) -> Result<Bytes, DecodeError> {
    let body = &wire[..];
    let raw = match encoding {
        Encoding::Identity => return Ok(wire.clone()),
        Encoding::Gzip => read_bounded(GzDecoder::new(body), limit, "gzip"),
        // "deflate" is zlib-wrapped per RFC 9110, but some clients send raw deflate.
        Encoding::Deflate => {
            read_bounded(ZlibDecoder::new(body), limit, "deflate").or_else(|e| match e {
                DecodeError::TooLarge { .. } => Err(e),
                _ => read_bounded(DeflateDecoder::new(body), limit, "deflate"),
            })
        }
        Encoding::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(body).map_err(|e| DecodeError::Corrupt {
                    encoding: "zstd",
                    detail: e.to_string(),
                })?;
            read_bounded(decoder, limit, "zstd")
        }
    }?;
    Ok(Bytes::from(raw))
}

/// Reads a request into wire views (`map::wire`). JSON is decoded and re-encoded as protobuf
/// first, so both formats take the same path from here on.
pub fn decode(format: Format, body: Bytes) -> Result<Vec<ResourceSpansView>, DecodeError> {
    let body = match format {
        Format::Protobuf => body,
        Format::Json => {
            let request: ExportTraceServiceRequest =
                serde_json::from_slice(&body).map_err(|e| DecodeError::Malformed {
                    format: "JSON",
                    detail: e.to_string(),
                })?;
            Bytes::from(request.encode_to_vec())
        }
    };
    wire::parse_request(&body).map_err(|e| DecodeError::Malformed {
        format: match format {
            Format::Protobuf => "protobuf",
            Format::Json => "JSON",
        },
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn content_types_with_parameters_are_accepted() {
        assert_eq!(
            parse_content_type(Some("application/json; charset=utf-8")),
            Ok(Format::Json)
        );
        assert_eq!(
            parse_content_type(Some("Application/X-Protobuf")),
            Ok(Format::Protobuf)
        );
        assert!(parse_content_type(Some("text/plain")).is_err());
        assert!(parse_content_type(None).is_err());
    }

    #[test]
    fn encodings() {
        assert_eq!(parse_encoding(None), Ok(Encoding::Identity));
        assert_eq!(parse_encoding(Some("GZIP")), Ok(Encoding::Gzip));
        assert_eq!(parse_encoding(Some("zstd")), Ok(Encoding::Zstd));
        assert!(parse_encoding(Some("br")).is_err());
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn every_encoding_round_trips() {
        let data = b"hello otlp".repeat(100);
        assert_eq!(
            decompress(Encoding::Gzip, &gzip(&data).into(), 1 << 20).unwrap(),
            data
        );
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&data).unwrap();
        assert_eq!(
            decompress(Encoding::Deflate, &z.finish().unwrap().into(), 1 << 20).unwrap(),
            data
        );
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        d.write_all(&data).unwrap();
        assert_eq!(
            decompress(Encoding::Deflate, &d.finish().unwrap().into(), 1 << 20).unwrap(),
            data
        );
        let zs = zstd::encode_all(&data[..], 1).unwrap();
        assert_eq!(
            decompress(Encoding::Zstd, &zs.into(), 1 << 20).unwrap(),
            data
        );
    }

    #[test]
    fn a_zip_bomb_is_too_large_not_an_oom() {
        let bomb = gzip(&vec![0u8; 50 << 20]);
        assert!(bomb.len() < 1 << 20, "a 50 MiB bomb fits in under 1 MiB");
        let err = decompress(Encoding::Gzip, &bomb.into(), 1 << 20).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }));
        let zbomb = zstd::encode_all(&vec![0u8; 50 << 20][..], 3).unwrap();
        assert!(matches!(
            decompress(Encoding::Zstd, &zbomb.into(), 1 << 20),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn corrupt_gzip_is_reported() {
        assert!(matches!(
            decompress(Encoding::Gzip, &Bytes::from_static(b"not gzip"), 1 << 20),
            Err(DecodeError::Corrupt { .. })
        ));
    }

    #[test]
    fn otlp_json_decodes_with_hex_ids_and_string_ints() {
        let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
          "scopeSpans":[{"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
          "name":"root","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
          "attributes":[{"key":"n","value":{"intValue":"7"}}]}]}]}]}"#;
        let req = decode(Format::Json, Bytes::from_static(json)).unwrap();
        let scope = &req[0].scope_spans[0];
        let span = &scope.spans[0];
        assert_eq!(span.trace_id().len(), 16);
        assert_eq!(span.span_id().len(), 8);
        assert_eq!(span.end_time_unix_nano, 1544712661000000000);
        assert_eq!(
            span.attributes_where(&scope.attributes, |_| true)[0].value,
            Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(7))
            })
        );
    }
}
