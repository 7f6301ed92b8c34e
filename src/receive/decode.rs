//! Content negotiation, bounded decompression and decoding of OTLP bodies, shared by both
//! receivers. Pure and synchronous, so large bodies can be handled on the blocking pool.
//!
//! What a body may cost is bounded twice: each body by `receiver.max_decompressed_bytes`, and
//! all bodies in flight together by one `DecodeBudget`. Output is charged before it is
//! allocated, in chunks; a body whose gzip trailer or zstd frame header declares more than the
//! limit is refused before anything is inflated.

use std::io::Read;

use bytes::Bytes;
use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};

use super::budget::{self, Charge, DecodeBudget};
use super::buffer::Buffer;
use crate::otlp::{self, ParsedRequest};

/// Output buffer for a body whose decompressed size is not declared; each next one doubles,
/// up to `MAX_CHUNK`. Small, because most requests are small.
const FIRST_CHUNK: usize = 64 * 1024;
/// Largest output buffer: bounds what a buffer past the limit can cost.
const MAX_CHUNK: usize = 4 * 1024 * 1024;
/// The largest zstd window accepted (2^24 = 16 MiB): the decoder allocates the window a frame
/// asks for, outside the budget, and zstd's own default ceiling is 128 MiB. Levels up to 19
/// write windows of 8 MiB at most; only long-distance mode (`--long`) writes larger.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

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
    /// The budget for decoded bytes in flight is spent; retrying soon succeeds.
    #[error("the gateway is decoding too many large requests at once; retry later")]
    Busy,
}

/// The bounds one body is decoded within.
#[derive(Clone)]
pub struct DecodeLimits {
    /// `receiver.max_decompressed_bytes`.
    pub max_decompressed_bytes: usize,
    /// `receiver.max_nesting_depth`.
    pub max_nesting_depth: usize,
    pub budget: DecodeBudget,
    /// `Retry-After` for a request refused while the budget is spent.
    pub retry_after: std::time::Duration,
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

/// Decompresses and decodes one body.
pub fn decode_body(
    format: Format,
    encoding: Encoding,
    wire: Bytes,
    limits: &DecodeLimits,
) -> Result<ParsedRequest, DecodeError> {
    let raw = decompress(
        encoding,
        wire,
        limits.max_decompressed_bytes,
        &limits.budget,
    )?;
    decode(format, raw, limits)
}

/// Decompresses `wire`, never producing more than `limit` bytes, all charged to `budget`.
pub fn decompress(
    encoding: Encoding,
    wire: Bytes,
    limit: usize,
    budget: &DecodeBudget,
) -> Result<Bytes, DecodeError> {
    let body = &wire[..];
    match encoding {
        Encoding::Identity => {
            if wire.len() > limit {
                return Err(too_large(limit));
            }
            let charge = budget.charge(wire.len()).ok_or(DecodeError::Busy)?;
            Ok(budget::charged(wire, charge))
        }
        Encoding::Gzip => {
            let hint = gzip_size(body);
            inflate(MultiGzDecoder::new(body), hint, limit, budget, "gzip")
        }
        // "deflate" is zlib-wrapped per RFC 9110, but some clients send raw deflate.
        Encoding::Deflate => inflate(ZlibDecoder::new(body), None, limit, budget, "deflate")
            .or_else(|e| match e {
                DecodeError::Corrupt { .. } => {
                    inflate(DeflateDecoder::new(body), None, limit, budget, "deflate")
                }
                e => Err(e),
            }),
        Encoding::Zstd => {
            let hint = zstd::zstd_safe::get_frame_content_size(body)
                .ok()
                .flatten()
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            let corrupt = |e: std::io::Error| DecodeError::Corrupt {
                encoding: "zstd",
                detail: e.to_string(),
            };
            let mut decoder = zstd::stream::read::Decoder::new(body).map_err(corrupt)?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(corrupt)?;
            inflate(decoder, hint, limit, budget, "zstd")
        }
    }
}

fn too_large(limit: usize) -> DecodeError {
    DecodeError::TooLarge {
        limit,
        stage: "after decompression",
    }
}

/// The size a gzip body declares in its trailer (ISIZE, modulo 2^32; with several members, the
/// last one's, so never more than the whole).
fn gzip_size(body: &[u8]) -> Option<usize> {
    if body.len() < 18 || body[..2] != [0x1f, 0x8b] {
        return None;
    }
    let trailer: [u8; 4] = body[body.len() - 4..].try_into().ok()?;
    usize::try_from(u32::from_le_bytes(trailer)).ok()
}

/// Reads until `buf` is full or the reader is dry; returns how much was read.
fn read_full(
    reader: &mut impl Read,
    buf: &mut [u8],
    encoding: &'static str,
) -> Result<usize, DecodeError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(DecodeError::Corrupt {
                    encoding,
                    detail: e.to_string(),
                });
            }
        }
    }
    Ok(filled)
}

/// Inflates into chunks, each charged before it is allocated: first the declared size (one
/// chunk, when it is honest), else doubling chunks. Past `limit` it stops and gives all back.
fn inflate(
    mut reader: impl Read,
    declared: Option<usize>,
    limit: usize,
    budget: &DecodeBudget,
    encoding: &'static str,
) -> Result<Bytes, DecodeError> {
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    // One byte past the declared size, so that the read which finds the end has room.
    let mut size = declared.map_or(FIRST_CHUNK, |n| n + 1).max(1);
    let mut chunks: Vec<(Buffer, Charge)> = Vec::new();
    let mut total = 0usize;
    let mut carried = None;
    loop {
        let room = size.min(limit - total);
        if room > 0 {
            let charge = budget.charge(room).ok_or(DecodeError::Busy)?;
            let mut chunk = Buffer::zeroed(room).map_err(|_| DecodeError::Busy)?;
            let mut filled = 0;
            if let Some(byte) = carried.take() {
                chunk.as_mut_slice()[0] = byte;
                filled = 1;
            }
            filled += read_full(&mut reader, &mut chunk.as_mut_slice()[filled..], encoding)?;
            total += filled;
            chunk.truncate(filled);
            chunks.push((chunk, charge));
            if filled < room {
                break;
            }
        }
        // No room left in this chunk: one more byte tells whether anything is left.
        let mut probe = [0u8; 1];
        if read_full(&mut reader, &mut probe, encoding)? == 0 {
            break;
        }
        if total == limit {
            return Err(too_large(limit));
        }
        carried = Some(probe[0]);
        size = size.saturating_mul(2).min(MAX_CHUNK);
    }
    join(chunks, total)
}

/// One contiguous body from the chunks (the codec reads a body in place). The joined body takes
/// over the chunks' charges: for the moment of the copy both exist, which the budget does not
/// count (it bounds what requests hold, and the copy is gone at once).
fn join(mut chunks: Vec<(Buffer, Charge)>, total: usize) -> Result<Bytes, DecodeError> {
    if chunks.len() == 1
        && let Some((chunk, charge)) = chunks.pop()
    {
        return Ok(budget::charged(chunk, charge));
    }
    let mut body = Buffer::zeroed(total).map_err(|_| DecodeError::Busy)?;
    let mut charge = Charge::none();
    let mut at = 0;
    for (chunk, chunk_charge) in chunks {
        body.as_mut_slice()[at..at + chunk.len()].copy_from_slice(chunk.as_ref());
        at += chunk.len();
        charge.merge(chunk_charge);
    }
    Ok(budget::charged(body, charge))
}

/// Reads a decompressed request into views (`otlp`). JSON is transcoded onto the protobuf wire
/// first (its text is dropped before the views are made), so both formats take one path.
pub fn decode(
    format: Format,
    body: Bytes,
    limits: &DecodeLimits,
) -> Result<ParsedRequest, DecodeError> {
    let malformed = |format: &'static str| {
        move |e: &dyn std::fmt::Display| DecodeError::Malformed {
            format,
            detail: e.to_string(),
        }
    };
    match format {
        Format::Protobuf => otlp::parse_request(&body, limits.max_nesting_depth)
            .map_err(|e| malformed("protobuf")(&e)),
        Format::Json => {
            // The protobuf is never larger than the JSON it came from.
            let charge = limits.budget.charge(body.len()).ok_or(DecodeError::Busy)?;
            let transcoded = otlp::json::transcode(&body, limits.max_nesting_depth)
                .map_err(|e| malformed("JSON")(&e))?;
            drop(body);
            let wire = budget::charged(transcoded.body, charge);
            let mut parsed = otlp::parse_request(&wire, limits.max_nesting_depth)
                .map_err(|e| malformed("JSON")(&e))?;
            parsed.rejected.splice(0..0, transcoded.rejected);
            parsed.repaired_spans += transcoded.repaired_spans;
            if transcoded.unknown_field.is_some() {
                parsed.unknown_field = transcoded.unknown_field;
            }
            Ok(parsed)
        }
    }
}

#[cfg(test)]
mod tests;
