//! One kept-alive HTTP/1.1 connection to MLflow, owned and driven by the task that uses it,
//! with the TraceInfo writes pipelined on it.
//!
//! StartTraceV3 is the one call the gateway makes per trace (1000/s at 10k spans/s). Through the
//! shared client (reqwest over hyper-util's pool) every call crossed three tasks and took a
//! round trip of its own: a write, a read or two, a quick-ack option and a wake-up or two of the
//! other runtime thread, per trace (BENCHMARKS.md, "Decisions"). Here the TraceInfo writer owns
//! its connection and writes a run of requests at once (HTTP/1.1 pipelining, which MLflow's
//! uvicorn and every HTTP/1.1 server answer in order), then reads the replies: one write and a
//! few reads per run.
//!
//! Owning the socket also lets the writer ask for quick ACKs (`quick_ack`), which removes the
//! ~40 ms that every StartTraceV3 on a kept-alive connection otherwise waited for a delayed ACK.
//!
//! Used only where it behaves exactly like the shared client: plain `http://`, no credentials in
//! the URL, and no proxy configured in the environment (reqwest honours `HTTP_PROXY`/
//! `ALL_PROXY`). TLS, proxied and URL-credential set-ups keep the shared client, one call at a
//! time.

mod reply;
mod round;

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue};
use tokio::net::TcpStream;

use super::error::MlflowError;
use round::{READ_CHUNK, RoundEnd, round};

/// A reply: status, `Retry-After` in seconds if given, body.
pub(super) type Reply = (u16, Option<Duration>, Bytes);

/// Proxy variables reqwest reads from the environment; any of them set means "use reqwest".
const PROXY_VARIABLES: [&str; 4] = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];

/// Whether the environment names a proxy the shared client would send plain HTTP through.
pub(super) fn proxy_configured() -> bool {
    PROXY_VARIABLES
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

/// Where and how to POST one kind of JSON payload on a connection of one's own.
#[derive(Debug, Clone)]
pub(super) struct Target {
    host: String,
    port: u16,
    /// `Host` header value (host, and the port when the URL has one).
    authority: HeaderValue,
    /// Origin-form request target: the URL's path (with any base path the tracking URI has).
    path: String,
    /// The shared client's default headers (authorization, user agent).
    headers: HeaderMap,
    connect_timeout: Duration,
}

impl Target {
    /// `None` where the shared client must be used: not plain HTTP, `proxied` (see
    /// `proxy_configured`), or credentials in the URL.
    pub(super) fn for_url(
        url: &Url,
        headers: HeaderMap,
        connect_timeout: Duration,
        proxied: bool,
    ) -> Option<Self> {
        // Credentials in the URL become a basic-auth header in the shared client; leave those
        // set-ups to it rather than repeat that.
        let credentials = !url.username().is_empty() || url.password().is_some();
        if url.scheme() != "http" || proxied || credentials {
            return None;
        }
        let host = url
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str()?),
            None => url.host_str()?.to_string(),
        };
        Some(Self {
            host: host.to_string(),
            port,
            authority: HeaderValue::from_str(&authority).ok()?,
            path: url.path().to_string(),
            headers,
            connect_timeout,
        })
    }
}

/// A connection of one's own to `Target`, with POSTs pipelined on it,, opened on first use and again whenever MLflow (or
/// anything between) closed it.
pub(super) struct PipelinedConnection {
    target: Target,
    socket: Option<Socket>,
    /// Requests written before their replies are read. Drops to 1 for good once a server
    /// answered only one request on a connection that had more in flight (one that closes
    /// after every reply): pipelining there would only resend the rest again and again.
    depth: usize,
}

pub(super) struct Socket {
    stream: TcpStream,
    /// Bytes read but not yet taken as a reply.
    buf: BytesMut,
}

impl PipelinedConnection {
    pub(super) fn new(target: Target, depth: usize) -> Self {
        Self {
            target,
            socket: None,
            depth: depth.max(1),
        }
    }

    /// POSTs each body as JSON, in order, and returns one outcome per body: its reply, or the
    /// error that kept it from one. Up to `depth` requests are written before their replies are
    /// read (HTTP/1.1 pipelining): the server answers them in order, as it would one by one,
    /// but the gateway makes one write and a few reads for the lot instead of a round trip
    /// each. `timeout` bounds the wait for each reply, counted from the write or from the
    /// reply before it.
    ///
    /// Requests left unanswered when the server closes the connection after answering some
    /// are sent again at once on a new one; a kept connection that turns out to have been
    /// closed before it answered anything (an idle keep-alive timeout racing the call) is
    /// replaced once. Nothing answered is sent twice, and what is sent again (StartTraceV3) is
    /// idempotent anyway.
    pub(super) async fn post_json_each(
        &mut self,
        bodies: &[Bytes],
        timeout: Duration,
    ) -> Vec<Result<Reply, MlflowError>> {
        let mut outcomes = Vec::with_capacity(bodies.len());
        let mut wire = Vec::new();
        let mut replaced_stale = false;
        while outcomes.len() < bodies.len() {
            let start = outcomes.len();
            let (mut socket, kept) = match self.take_usable() {
                Some(socket) => (socket, true),
                None => match self.connect().await {
                    Ok(socket) => (socket, false),
                    Err(e) => {
                        outcomes.resize(bodies.len(), Err(e));
                        break;
                    }
                },
            };
            let end = (start + self.depth).min(bodies.len());
            wire.clear();
            for body in &bodies[start..end] {
                self.target.encode_post(&mut wire, body);
            }
            let mut replies = Vec::with_capacity(end - start);
            let ended = round(&mut socket, &wire, end - start, timeout, &mut replies).await;
            let answered = replies.len();
            outcomes.extend(replies.into_iter().map(Ok));
            let failure = match ended {
                RoundEnd::Open => {
                    self.socket = Some(socket);
                    continue;
                }
                RoundEnd::TimedOut => {
                    outcomes.resize(bodies.len(), Err(MlflowError::Timeout));
                    break;
                }
                RoundEnd::Closed => "MLflow closed the connection before replying".to_string(),
                RoundEnd::Failed(msg) => msg,
            };
            if outcomes.len() == bodies.len() {
                break;
            }
            if !kept && end - start > 1 && answered <= 1 {
                // A new connection that ended after one reply, or none, with more requests in
                // flight: a server that closes after every reply (and may reset the connection
                // over the requests it did not read, losing even that reply). One at a time
                // from now on; what is unanswered goes again at once.
                self.depth = 1;
                tracing::info!(
                    "MLflow closes its connection after every reply; StartTraceV3 calls are no \
                     longer pipelined"
                );
                continue;
            }
            if answered > 0 {
                continue;
            }
            if kept && !replaced_stale {
                replaced_stale = true;
                continue;
            }
            outcomes.resize(bodies.len(), Err(MlflowError::Connect(failure)));
        }
        outcomes
    }

    /// The kept connection, if the server has not closed it while it sat idle: a pending EOF
    /// is read before a request is written into a dead socket.
    fn take_usable(&mut self) -> Option<Socket> {
        let socket = self.socket.take()?;
        if !socket.buf.is_empty() {
            // Bytes nobody asked for would be taken as the next request's reply.
            return None;
        }
        let mut probe = [0u8; 1];
        match socket.stream.try_read(&mut probe) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(socket),
            // EOF, an error, or bytes nobody asked for: the connection is not usable.
            _ => None,
        }
    }

    async fn connect(&mut self) -> Result<Socket, MlflowError> {
        let t = &self.target;
        let stream = tokio::time::timeout(
            t.connect_timeout,
            TcpStream::connect((t.host.as_str(), t.port)),
        )
        .await
        .map_err(|_| {
            MlflowError::Connect(format!("connecting to {}:{} timed out", t.host, t.port))
        })?
        .map_err(|e| MlflowError::Connect(format!("{}:{}: {e}", t.host, t.port)))?;
        // Small request, small reply: without this the reply waits for a delayed ACK.
        stream
            .set_nodelay(true)
            .map_err(|e| MlflowError::Connect(e.to_string()))?;
        Ok(Socket {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
        })
    }
}

impl Target {
    /// Appends one `POST` of a JSON `body` to `out`, as an HTTP/1.1 request.
    fn encode_post(&self, out: &mut Vec<u8>, body: &[u8]) {
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(self.authority.as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }
}

#[cfg(test)]
mod tests;
