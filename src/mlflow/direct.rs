//! One kept-alive HTTP/1 connection to MLflow, owned and driven by the task that uses it.
//!
//! StartTraceV3 is the one call the gateway makes per trace (1000/s at 10k spans/s). Through the
//! shared client (reqwest over hyper-util's pool) every call crossed three tasks: the caller
//! handed the request to the connection's task over a channel, that task woke the caller with
//! the reply, and because an HTTP/1 reply still had its body to stream, the pool spawned a third
//! task per call to put the connection back once it was idle. Each hand-off is a wake-up, often
//! of the other runtime thread. Here the TraceInfo writer owns its connection and polls it
//! itself while it waits for the reply: one task, no pool, no per-call spawn.
//!
//! Owning the socket also lets the writer ask for quick ACKs (`QuickAckStream`), which removes
//! the ~40 ms that every StartTraceV3 on a kept-alive connection otherwise waited for a delayed
//! ACK: against a real MLflow, one writer at 2 traces/s, the calls' mean went from 78 ms
//! (shared pool) to 47 ms (BENCHMARKS.md).
//!
//! Used only where it behaves exactly like the shared client: plain `http://`, no credentials in
//! the URL, and no proxy configured in the environment (reqwest honours `HTTP_PROXY`/
//! `ALL_PROXY`). TLS, proxied and URL-credential set-ups keep the shared client.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::client::retry_after;
use super::error::{MlflowError, with_causes};

/// A reply: status, `Retry-After` in seconds if given, body.
pub(super) type Reply = (u16, Option<Duration>, Bytes);

type Connection = http1::Connection<TokioIo<QuickAckStream>, Full<Bytes>>;

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
}

struct Live {
    sender: http1::SendRequest<Full<Bytes>>,
    /// The connection's state machine, polled by whoever awaits a reply on it.
    conn: Pin<Box<Connection>>,
}

impl OwnConnection {
    pub(super) fn new(target: Target) -> Self {
        Self { target, live: None }
    }

    /// POSTs `body` as JSON and returns the reply. A kept connection that turns out to have
    /// been closed by the server before it read the request (an idle keep-alive timeout racing
    /// the call) is replaced and the call made again at once: nothing was processed, and the
    /// payloads sent this way (StartTraceV3) are idempotent anyway.
    pub(super) async fn post_json(&mut self, body: Bytes) -> Result<Reply, MlflowError> {
        if let Some(live) = self.take_usable().await {
            match self.exchange(live, body.clone()).await {
                Err(e) if e.is_stale_connection() => {}
                r => return r.map_err(ExchangeError::into_mlflow),
            }
        }
        let live = self.connect().await?;
        self.exchange(live, body)
            .await
            .map_err(ExchangeError::into_mlflow)
    }

    /// The kept connection, if the server has not closed it while it sat idle: one poll lets
    /// hyper read a pending EOF before a request is written into a dead socket.
    async fn take_usable(&mut self) -> Option<Live> {
        let mut live = self.live.take()?;
        let ended = poll_once(&mut live.conn).await.is_some();
        (!ended && !live.sender.is_closed()).then_some(live)
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
        let (sender, conn) = http1::handshake(TokioIo::new(QuickAckStream(stream)))
            .await
            .map_err(|e| MlflowError::Connect(e.to_string()))?;
        Ok(Live {
            sender,
            conn: Box::pin(conn),
        })
    }

    /// Writes the request and reads the whole reply, driving the connection meanwhile. The
    /// connection is kept only if the exchange completed.
    async fn exchange(&mut self, mut live: Live, body: Bytes) -> Result<Reply, ExchangeError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.target.path.as_str())
            .header(HOST, self.target.authority.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))
            .map_err(|e| ExchangeError::Other(e.to_string()))?;
        request.headers_mut().extend(self.target.headers.clone());
        let outcome = {
            let Live { sender, conn } = &mut live;
            let reply = async {
                let reply = sender.send_request(request).await?;
                let status = reply.status().as_u16();
                let retry_after = retry_after(reply.headers());
                let body = reply.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, retry_after, body))
            };
            tokio::pin!(reply);
            tokio::select! {
                biased;
                r = &mut reply => r.map_err(ExchangeError::Hyper),
                ended = conn.as_mut() => {
                    // The connection finished first: the reply may still have been handed over
                    // (a server that closes after answering), otherwise it is lost.
                    match poll_once(&mut reply).await {
                        Some(r) => r.map_err(ExchangeError::Hyper),
                        None => Err(match ended {
                            Ok(()) => ExchangeError::Closed,
                            Err(e) => ExchangeError::Hyper(e),
                        }),
                    }
                }
            }
        };
        if outcome.is_ok() && !live.sender.is_closed() {
            self.live = Some(live);
        }
        outcome
    }
}

/// A TCP stream that, after each write, asks the kernel to acknowledge what arrives next at
/// once. MLflow's Flask routes (StartTraceV3 among them) write a reply's headers and body
/// separately; the body then waits until the headers are acknowledged, and a client in
/// delayed-ACK mode, as a kept-alive connection soon is, acknowledges them ~40 ms later
/// (mlflow-rest.md §0.11 and §9: 56-64 ms per StartTraceV3 on a reused connection against
/// 16-17 ms on a fresh one). The kernel leaves quick-ack mode again by itself, so it is asked
/// after every request written.
struct QuickAckStream(TcpStream);

impl QuickAckStream {
    fn quick_ack(&self) {
        // Best effort: where the option is refused the reply is only late, not lost.
        let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
    }
}

impl AsyncRead for QuickAckStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuickAckStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.0).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.quick_ack();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.0).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.quick_ack();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Polls a future once; `None` if it is not ready.
async fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match Pin::new(&mut *f).poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

#[derive(Debug)]
enum ExchangeError {
    Hyper(hyper::Error),
    Closed,
    Other(String),
}

impl ExchangeError {
    /// The server closed a kept-alive connection before it read the request: nothing was
    /// processed, so sending again on a new connection is safe and not a failure worth a retry
    /// delay.
    fn is_stale_connection(&self) -> bool {
        match self {
            ExchangeError::Hyper(e) => e.is_canceled() || e.is_incomplete_message(),
            ExchangeError::Closed => true,
            ExchangeError::Other(_) => false,
        }
    }

    fn into_mlflow(self) -> MlflowError {
        match self {
            ExchangeError::Hyper(e) => MlflowError::Connect(with_causes(&e)),
            ExchangeError::Closed => {
                MlflowError::Connect("MLflow closed the connection before replying".into())
            }
            ExchangeError::Other(msg) => MlflowError::Connect(msg),
        }
    }
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
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        OwnConnection::new(Target::for_url(url, headers, Duration::from_secs(2), false).unwrap())
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
