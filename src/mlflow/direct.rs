//! One kept-alive HTTP/1.1 connection to MLflow, owned and driven by the task that uses it,
//! with the TraceInfo writes pipelined on it.
//!
//! StartTraceV3 is the one call the gateway makes per trace (1000/s at 10k spans/s). Through the
//! shared client (reqwest over hyper-util's pool) every call crossed three tasks and took a
//! round trip of its own: a write, a read or two, a quick-ack option and a wake-up or two of the
//! other runtime thread, per trace (strace over scenario 1: about seven system calls per trace,
//! six times rotel's count per span). Here the TraceInfo writer owns its connection and writes a
//! run of requests at once (HTTP/1.1 pipelining, which MLflow's uvicorn and every HTTP/1.1
//! server answer in order), then reads the replies: one write and a few reads per run.
//!
//! Owning the socket also lets the writer ask for quick ACKs (`quick_ack`), which removes the
//! ~40 ms that every StartTraceV3 on a kept-alive connection otherwise waited for a delayed ACK:
//! against a real MLflow, one writer at 2 traces/s, the calls' mean went from 78 ms (shared pool)
//! to 47 ms (BENCHMARKS.md).
//!
//! Used only where it behaves exactly like the shared client: plain `http://`, no credentials in
//! the URL, and no proxy configured in the environment (reqwest honours `HTTP_PROXY`/
//! `ALL_PROXY`). TLS, proxied and URL-credential set-ups keep the shared client, one call at a
//! time.

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::client::parse_retry_after;
use super::error::MlflowError;

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

/// A connection of one's own to `Target`, opened on first use and again whenever MLflow (or
/// anything between) closed it.
pub(super) struct OwnConnection {
    target: Target,
    live: Option<Live>,
    /// Requests written before their replies are read. Drops to 1 for good once a server
    /// answered only one request on a connection that had more in flight (one that closes
    /// after every reply): pipelining there would only resend the rest again and again.
    depth: usize,
}

struct Live {
    stream: TcpStream,
    /// Bytes read but not yet taken as a reply.
    buf: BytesMut,
}

/// How a round of requests on one connection ended.
enum RoundEnd {
    /// Every request answered; the connection stays open.
    Open,
    /// The server closed the connection, or said it would (after the replies already taken).
    Closed,
    /// A reply did not come within the timeout; the connection is dropped.
    TimedOut,
    /// The connection failed, or the server sent something that is not an HTTP/1 reply.
    Failed(String),
}

impl OwnConnection {
    pub(super) fn new(target: Target, depth: usize) -> Self {
        Self {
            target,
            live: None,
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
            let (mut live, kept) = match self.take_usable() {
                Some(live) => (live, true),
                None => match self.connect().await {
                    Ok(live) => (live, false),
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
            let ended = round(&mut live, &wire, end - start, timeout, &mut replies).await;
            let answered = replies.len();
            outcomes.extend(replies.into_iter().map(Ok));
            let failure = match ended {
                RoundEnd::Open => {
                    self.live = Some(live);
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
    fn take_usable(&mut self) -> Option<Live> {
        let live = self.live.take()?;
        if !live.buf.is_empty() {
            // Bytes nobody asked for would be taken as the next request's reply.
            return None;
        }
        let mut probe = [0u8; 1];
        match live.stream.try_read(&mut probe) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(live),
            // EOF, an error, or bytes nobody asked for: the connection is not usable.
            _ => None,
        }
    }

    async fn connect(&mut self) -> Result<Live, MlflowError> {
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
        Ok(Live {
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

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Largest reply taken: StartTraceV3 echoes a TraceInfo of a few KiB, so a reply this size is
/// not MLflow's, and buffering it further would only grow memory.
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// What a connection that ended inside a reply is reported as.
const CUT_SHORT: &str = "MLflow closed the connection in the middle of a reply";
/// Reply headers parsed; MLflow's server sends about six.
const MAX_REPLY_HEADERS: usize = 64;

/// Writes `wire` (`count` requests) and reads replies into `replies` until each request has
/// one, the connection ends, or a reply is late. Writing and reading go on together, so a
/// server that answers before it has read everything cannot fill both directions and stall.
async fn round(
    live: &mut Live,
    wire: &[u8],
    count: usize,
    timeout: Duration,
    replies: &mut Vec<Reply>,
) -> RoundEnd {
    let mut written = 0;
    let mut eof = false;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        while replies.len() < count {
            match take_reply(&live.buf, eof) {
                Ok(Some((reply, used, close))) => {
                    live.buf.advance(used);
                    replies.push(reply);
                    deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + timeout);
                    if close {
                        return RoundEnd::Closed;
                    }
                }
                Ok(None) => break,
                Err(e) => return RoundEnd::Failed(e),
            }
        }
        if replies.len() == count {
            return RoundEnd::Open;
        }
        if eof {
            return RoundEnd::Closed;
        }
        let interest = if written < wire.len() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let ready = tokio::select! {
            ready = live.stream.ready(interest) => match ready {
                Ok(ready) => ready,
                Err(e) => return RoundEnd::Failed(e.to_string()),
            },
            () = &mut deadline => return RoundEnd::TimedOut,
        };
        if ready.is_writable() && written < wire.len() {
            match live.stream.try_write(&wire[written..]) {
                Ok(n) => {
                    written += n;
                    quick_ack(&live.stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return RoundEnd::Failed(e.to_string()),
            }
        }
        if ready.is_readable() {
            live.buf.reserve(READ_CHUNK);
            match live.stream.try_read_buf(&mut live.buf) {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return RoundEnd::Failed(e.to_string()),
            }
            if live.buf.len() > MAX_REPLY_BYTES {
                return RoundEnd::Failed(format!(
                    "a reply larger than {MAX_REPLY_BYTES} bytes is not MLflow's"
                ));
            }
        }
    }
}

/// Asks the kernel to acknowledge what arrives next at once. MLflow's Flask routes
/// (StartTraceV3 among them) write a reply's headers and body separately; the body then waits
/// until the headers are acknowledged, and a client in delayed-ACK mode, as a kept-alive
/// connection soon is, acknowledges them ~40 ms later (mlflow-rest.md §0.11 and §9: 56-64 ms per
/// StartTraceV3 on a reused connection against 16-17 ms on a fresh one). The kernel leaves
/// quick-ack mode when the client next writes soon after reading, so it is asked after every
/// write; the replies to a pipelined round, read without writing in between, stay quick.
fn quick_ack(stream: &TcpStream) {
    // Best effort: where the option is refused the reply is only late, not lost.
    let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
}

/// The first whole reply at the start of `buf`: the reply, the bytes it took, and whether the
/// server closes the connection after it. `None` until it has all arrived; `eof`: nothing more
/// will. Interim (1xx) replies are skipped.
fn take_reply(buf: &[u8], eof: bool) -> Result<Option<(Reply, usize, bool)>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What the test server does with the n-th request (0-based, over all connections) it reads.
    #[derive(Clone, Copy)]
    enum Answer {
        /// Reply with this status (and `Retry-After: 7` for 429), keep the connection.
        Status(u16),
        /// Reply 200, then close the connection (as an idle keep-alive timeout would, later).
        OkThenClose,
        /// Close without replying.
        Drop,
        /// Read the request and never reply (a frozen server).
        Silent,
    }

    struct Server {
        url: Url,
        connections: Arc<AtomicUsize>,
        requests: Arc<std::sync::Mutex<Vec<String>>>,
    }

    /// A raw HTTP/1 server that follows `script` request by request (the last entry repeats).
    async fn server(script: Vec<Answer>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!(
            "http://{}/base/api/3.0/mlflow/traces",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (conns, reqs) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (reqs, script) = (reqs.clone(), script.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(request) = read_request(&mut socket, &mut buf).await else {
                            return;
                        };
                        let n = {
                            let mut r = reqs.lock().unwrap();
                            r.push(request);
                            r.len() - 1
                        };
                        let answer = script[n.min(script.len() - 1)];
                        let reply = match answer {
                            Answer::Status(429) => "HTTP/1.1 429 Too Many Requests\r\n\
                                Retry-After: 7\r\ncontent-length: 14\r\n\r\n{\"detail\":\"x\"}"
                                .to_string(),
                            Answer::Status(code) => {
                                format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\n\r\n{{}}")
                            }
                            Answer::OkThenClose => {
                                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_string()
                            }
                            Answer::Drop => return,
                            Answer::Silent => {
                                tokio::time::sleep(Duration::from_secs(60)).await;
                                return;
                            }
                        };
                        if socket.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        if matches!(answer, Answer::OkThenClose) {
                            return;
                        }
                    }
                });
            }
        });
        Server {
            url,
            connections,
            requests,
        }
    }

    /// Reads one request (head and content-length body) as text; `None` at EOF.
    async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let text = String::from_utf8_lossy(&buf[..end + 4 + length]).to_string();
                    buf.drain(..end + 4 + length);
                    return Some(text);
                }
            }
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn connection(url: &Url) -> OwnConnection {
        pipelined(url, 1)
    }

    fn pipelined(url: &Url, depth: usize) -> OwnConnection {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        OwnConnection::new(
            Target::for_url(url, headers, Duration::from_secs(2), false).unwrap(),
            depth,
        )
    }

    impl OwnConnection {
        async fn post_json(&mut self, body: Bytes) -> Result<Reply, MlflowError> {
            let mut outcomes = self.post_json_each(&[body], Duration::from_secs(5)).await;
            assert_eq!(outcomes.len(), 1);
            outcomes.pop().unwrap()
        }
    }

    fn bodies(n: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(format!("{{\"n\":{i}}}")))
            .collect()
    }

    #[tokio::test]
    async fn pipelined_calls_share_a_connection_and_get_their_own_replies_in_order() {
        let script = vec![
            Answer::Status(200),
            Answer::Status(429),
            Answer::Status(500),
            Answer::Status(201),
            Answer::Status(202),
        ];
        let server = server(script).await;
        let mut conn = pipelined(&server.url, 3);
        let outcomes = conn
            .post_json_each(&bodies(5), Duration::from_secs(5))
            .await;
        let statuses: Vec<_> = outcomes.iter().map(|o| o.as_ref().unwrap().0).collect();
        assert_eq!(statuses, [200, 429, 500, 201, 202]);
        assert_eq!(
            outcomes[1].as_ref().unwrap().1,
            Some(Duration::from_secs(7))
        );
        assert_eq!(&outcomes[1].as_ref().unwrap().2[..], b"{\"detail\":\"x\"}");
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
        let requests = server.requests.lock().unwrap();
        for (i, request) in requests.iter().enumerate() {
            assert!(request.ends_with(&format!("{{\"n\":{i}}}")), "{request}");
        }
        assert_eq!(conn.depth, 3);
    }

    #[tokio::test]
    async fn a_server_that_closes_after_every_reply_gets_one_call_at_a_time() {
        let server = server(vec![Answer::OkThenClose]).await;
        let mut conn = pipelined(&server.url, 16);
        let outcomes = conn
            .post_json_each(&bodies(4), Duration::from_secs(5))
            .await;
        assert!(outcomes.iter().all(|o| o.as_ref().unwrap().0 == 200));
        assert_eq!(conn.depth, 1);
        let opened = server.connections.load(Ordering::SeqCst);
        // The first, pipelined connection, then one per call.
        assert!((4..=5).contains(&opened), "{opened}");
        let outcomes = conn
            .post_json_each(&bodies(3), Duration::from_secs(5))
            .await;
        assert!(outcomes.iter().all(|o| o.as_ref().unwrap().0 == 200));
        assert_eq!(server.connections.load(Ordering::SeqCst), opened + 3);
    }

    #[tokio::test]
    async fn replies_that_do_not_come_time_out_each_call() {
        let server = server(vec![Answer::Silent]).await;
        let mut conn = pipelined(&server.url, 4);
        let outcomes = conn
            .post_json_each(&bodies(2), Duration::from_millis(200))
            .await;
        assert_eq!(outcomes.len(), 2);
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Err(MlflowError::Timeout))),
            "{outcomes:?}"
        );
        assert!(conn.live.is_none());
    }

    #[test]
    fn replies_are_framed_by_length_chunks_or_the_end_of_the_connection() {
        // An interim reply, then a chunked body with an extension and a trailer, then more.
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: v\r\n\r\nHTTP/1.1 204";
        let ((status, _, body), used, close) = take_reply(wire, false).unwrap().unwrap();
        assert_eq!((status, &body[..], close), (200, &b"abcde"[..], false));
        assert!(wire[used..].starts_with(b"HTTP/1.1 204"));
        // Not all there yet: wait; the connection ended: an error.
        for cut in [10, 40, 60, used - 1] {
            assert!(take_reply(&wire[..cut], false).unwrap().is_none(), "{cut}");
            assert!(take_reply(&wire[..cut], true).is_err(), "{cut}");
        }
        let wire =
            b"HTTP/1.1 429 X\r\nRetry-After: 3\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        let ((status, retry_after, body), used, close) = take_reply(wire, false).unwrap().unwrap();
        assert_eq!(
            (status, retry_after, &body[..], used, close),
            (
                429,
                Some(Duration::from_secs(3)),
                &b"{}"[..],
                wire.len(),
                true
            )
        );
        // HTTP/1.0 closes unless it says keep-alive.
        let wire = b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(take_reply(wire, false).unwrap().unwrap().2);
        let wire = b"HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n";
        assert!(!take_reply(wire, false).unwrap().unwrap().2);
        // No length: the body runs to the end of the connection.
        let wire = b"HTTP/1.1 200 OK\r\n\r\n{\"a\":1}";
        assert!(take_reply(wire, false).unwrap().is_none());
        let ((_, _, body), used, close) = take_reply(wire, true).unwrap().unwrap();
        assert_eq!(
            (&body[..], used, close),
            (&b"{\"a\":1}"[..], wire.len(), true)
        );
        // Not HTTP, a bad length, a bad chunk.
        assert!(take_reply(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(take_reply(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false).is_err());
        assert!(
            take_reply(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY",
                false
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn calls_share_one_kept_connection_and_replies_come_back_whole() {
        let server = server(vec![Answer::Status(429), Answer::Status(200)]).await;
        let mut conn = connection(&server.url);
        let (status, retry_after, body) = conn.post_json(Bytes::from("{\"a\":1}")).await.unwrap();
        assert_eq!(
            (status, retry_after, &body[..]),
            (
                429,
                Some(Duration::from_secs(7)),
                &b"{\"detail\":\"x\"}"[..]
            )
        );
        for _ in 0..3 {
            let (status, _, body) = conn.post_json(Bytes::from("{}")).await.unwrap();
            assert_eq!((status, &body[..]), (200, &b"{}"[..]));
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
        let requests = server.requests.lock().unwrap();
        assert_eq!(requests.len(), 4);
        let first = requests[0].to_ascii_lowercase();
        assert!(
            first.starts_with("post /base/api/3.0/mlflow/traces http/1.1\r\n"),
            "{first}"
        );
        let addr = server.url.host_str().unwrap().to_string();
        assert!(first.contains(&format!("host: {addr}:{}", server.url.port().unwrap())));
        assert!(first.contains("content-type: application/json"));
        assert!(first.contains("authorization: bearer t"));
        assert!(first.ends_with("\r\n\r\n{\"a\":1}"), "{first}");
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_without_an_error() {
        let server = server(vec![Answer::OkThenClose]).await;
        let mut conn = connection(&server.url);
        for _ in 0..3 {
            conn.post_json(Bytes::from("{}")).await.unwrap();
            // Let the close reach the client, as an idle timeout's would.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 3);
        assert_eq!(server.requests.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_request_lost_on_a_kept_connection_is_sent_once_more_on_a_new_one() {
        // Request 0 answered; request 1 read and dropped on the kept connection (a close that
        // raced it); request 2, the same call again on a new connection, answered.
        let server = server(vec![Answer::Status(200), Answer::Drop, Answer::Status(200)]).await;
        let mut conn = connection(&server.url);
        conn.post_json(Bytes::from("{}")).await.unwrap();
        let (status, _, _) = conn.post_json(Bytes::from("{\"b\":2}")).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
        let requests = server.requests.lock().unwrap();
        assert!(requests[1].ends_with("{\"b\":2}") && requests[2].ends_with("{\"b\":2}"));
    }

    #[tokio::test]
    async fn a_request_lost_on_a_new_connection_is_an_error_not_a_loop() {
        let server = server(vec![Answer::Drop]).await;
        let mut conn = connection(&server.url);
        let err = conn.post_json(Bytes::from("{}")).await.unwrap_err();
        assert!(matches!(err, MlflowError::Connect(_)), "{err:?}");
        assert!(err.is_retryable());
        assert_eq!(server.requests.lock().unwrap().len(), 1);
        // The next call starts over on a new connection.
        conn.post_json(Bytes::from("{}")).await.unwrap_err();
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_retryable_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        drop(listener);
        let err = connection(&url)
            .post_json(Bytes::from("{}"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, MlflowError::Connect(_)) && err.is_retryable(),
            "{err:?}"
        );
    }

    #[test]
    fn only_plain_http_without_a_proxy_gets_connections_of_its_own() {
        let target = |url: &str, proxied| {
            Target::for_url(
                &Url::parse(url).unwrap(),
                HeaderMap::new(),
                Duration::from_secs(1),
                proxied,
            )
        };
        let t = target("http://mlflow:5000/api/3.0/mlflow/traces", false).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("mlflow", 5000, "/api/3.0/mlflow/traces")
        );
        assert_eq!(t.authority, "mlflow:5000");
        let t = target("http://[::1]/x", false).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert_eq!(t.authority, "[::1]");
        assert!(target("https://mlflow/x", false).is_none());
        assert!(target("http://mlflow/x", true).is_none());
        assert!(target("http://user:secret@mlflow/x", false).is_none());
    }
}
