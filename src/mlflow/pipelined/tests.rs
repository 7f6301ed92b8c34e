use super::*;
use reply::take_reply;
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

fn connection(url: &Url) -> PipelinedConnection {
    pipelined(url, 1)
}

fn pipelined(url: &Url, depth: usize) -> PipelinedConnection {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer t"));
    PipelinedConnection::new(
        Target::for_url(url, headers, Duration::from_secs(2), false).unwrap(),
        depth,
    )
}

impl PipelinedConnection {
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
    assert!(conn.socket.is_none());
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
