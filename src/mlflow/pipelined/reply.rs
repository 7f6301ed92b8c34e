//! HTTP/1.1 replies taken from the front of a read buffer: framed by length, by chunks or by
//! the end of the connection.

use bytes::Bytes;

use super::Reply;
use crate::mlflow::error::parse_retry_after;

/// Largest reply taken: StartTraceV3 echoes a TraceInfo of a few KiB, so a reply this size is
/// not MLflow's, and buffering it further would only grow memory.
pub(super) const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// What a connection that ended inside a reply is reported as.
const CUT_SHORT: &str = "MLflow closed the connection in the middle of a reply";
/// Reply headers parsed; MLflow's server sends about six.
const MAX_REPLY_HEADERS: usize = 64;

/// The first whole reply at the start of `buf`: the reply, the bytes it took, and whether the
/// server closes the connection after it. `None` until it has all arrived; `eof`: nothing more
/// will. Interim (1xx) replies are skipped.
pub(super) fn take_reply(buf: &[u8], eof: bool) -> Result<Option<(Reply, usize, bool)>, String> {
    let mut offset = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_REPLY_HEADERS];
        let mut head = httparse::Response::new(&mut headers);
        let head_len = match head.parse(&buf[offset..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if eof && offset < buf.len() => {
                return Err(CUT_SHORT.into());
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("not an HTTP/1 reply: {e}")),
        };
        let status = head.code.unwrap_or(0);
        let body_start = offset + head_len;
        if (100..200).contains(&status) && status != 101 {
            offset = body_start;
            continue;
        }
        let mut length = None;
        let mut chunked = false;
        let mut close = head.version == Some(0);
        let mut retry_after = None;
        for h in head.headers.iter() {
            let value = h.value;
            if h.name.eq_ignore_ascii_case("content-length") {
                let parsed = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok());
                length = Some(parsed.ok_or("a reply with a bad content-length")?);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = has_token(value, "chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                if has_token(value, "close") {
                    close = true;
                } else if has_token(value, "keep-alive") {
                    close = false;
                }
            } else if h.name.eq_ignore_ascii_case("retry-after") {
                retry_after = parse_retry_after(value);
            }
        }
        let rest = &buf[body_start..];
        let (body, used) = if status == 204 || status == 304 {
            (Bytes::new(), 0)
        } else if chunked {
            match dechunk(rest, eof)? {
                Some(done) => done,
                None => return Ok(None),
            }
        } else if let Some(length) = length {
            if rest.len() < length {
                if eof {
                    return Err(CUT_SHORT.into());
                }
                return Ok(None);
            }
            (Bytes::copy_from_slice(&rest[..length]), length)
        } else {
            // No framing: the body runs to the end of the connection.
            if !eof {
                return Ok(None);
            }
            close = true;
            (Bytes::copy_from_slice(rest), rest.len())
        };
        return Ok(Some((
            (status, retry_after, body),
            body_start + used,
            close,
        )));
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitively).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A chunked body at the start of `buf`: the body and the bytes it took (trailers included),
/// or `None` until it has all arrived.
fn dechunk(buf: &[u8], eof: bool) -> Result<Option<(Bytes, usize)>, String> {
    let incomplete = || {
        if eof {
            Err(CUT_SHORT.to_string())
        } else {
            Ok(None)
        }
    };
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_end) = find_crlf(&buf[pos..]) else {
            return incomplete();
        };
        let line = &buf[pos..pos + line_end];
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or("a reply with a bad chunk size")?;
        pos += line_end + 2;
        if size == 0 {
            // Trailers, each ending in CRLF, then an empty line.
            loop {
                let Some(end) = find_crlf(&buf[pos..]) else {
                    return incomplete();
                };
                pos += end + 2;
                if end == 0 {
                    return Ok(Some((Bytes::from(body), pos)));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return incomplete();
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err("a reply with a bad chunk".into());
        }
        pos += size + 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}
