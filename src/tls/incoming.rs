//! Connections as the servers take them: plain TCP, or TLS whose handshakes run beside the
//! accept loop (a client that stalls its handshake holds only its own task, never the
//! listener), each with its peer for the handlers.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::identity::{ClientIdentity, PeerInfo};
use super::server::{ListenerKind, ServerTls};

/// A client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener; connections beyond wait in the kernel's
/// backlog, so a flood of stalled handshakes costs a bounded number of tasks.
const MAX_HANDSHAKES: usize = 1024;
/// Finished handshakes waiting for the server to take them.
const READY_CONNECTIONS: usize = 256;
/// After an accept error that is not the client's (out of file descriptors), wait this long.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection and its peer.
pub struct Conn {
    io: Io,
    peer: PeerInfo,
}

impl Conn {
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

/// Takes the next TCP connection, retrying past errors; TCP_NODELAY on (replies are small
/// and must not wait for a delayed ACK).
async fn accept_tcp(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                return (stream, remote);
            }
            // A connection reset before it was taken is the client's business.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Accepts TCP connections and runs their handshakes, each in a task of its own; finished
/// ones go to `ready`. Ends when `ready` is closed (the server stopped).
fn spawn_acceptor(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    kind: ListenerKind,
    ready: mpsc::Sender<Conn>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let Ok(slot) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let (stream, remote) = tokio::select! {
                taken = accept_tcp(&listener) => taken,
                _ = ready.closed() => return,
            };
            let acceptor = TlsAcceptor::from(tls.config(kind));
            let ready = ready.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(ClientIdentity::from_leaf);
                        let conn = Conn {
                            io: Io::Tls(Box::new(stream)),
                            peer: PeerInfo { remote, identity },
                        };
                        let _ = ready.send(conn).await;
                    }
                    Ok(Err(e)) => handshake_failed(remote, &e.to_string()),
                    Err(_) => handshake_failed(remote, "timed out"),
                }
            });
        }
    })
}

fn handshake_failed(remote: SocketAddr, error: &str) {
    metrics::counter!("gateway_tls_handshake_failures_total").increment(1);
    tracing::debug!(%remote, error, "TLS handshake failed");
}

/// The connections of one HTTP listener (axum's `Listener`).
pub enum Incoming {
    Plain(TcpListener),
    Tls {
        ready: mpsc::Receiver<Conn>,
        local: SocketAddr,
        acceptor: JoinHandle<()>,
    },
}

impl Incoming {
    pub fn new(listener: TcpListener, tls: Option<(Arc<ServerTls>, ListenerKind)>) -> Self {
        match tls {
            None => Incoming::Plain(listener),
            Some((tls, kind)) => {
                let local = listener
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                let (tx, ready) = mpsc::channel(READY_CONNECTIONS);
                let acceptor = spawn_acceptor(listener, tls, kind, tx);
                Incoming::Tls {
                    ready,
                    local,
                    acceptor,
                }
            }
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Incoming::Tls { acceptor, .. } = self {
            acceptor.abort();
        }
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Conn, PeerInfo) {
        match self {
            Incoming::Plain(listener) => {
                let (stream, remote) = accept_tcp(listener).await;
                let peer = PeerInfo {
                    remote,
                    identity: None,
                };
                (
                    Conn {
                        io: Io::Plain(stream),
                        peer: peer.clone(),
                    },
                    peer,
                )
            }
            Incoming::Tls { ready, .. } => match ready.recv().await {
                Some(conn) => {
                    let peer = conn.peer.clone();
                    (conn, peer)
                }
                // The acceptor only ends when this listener is dropped.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> io::Result<PeerInfo> {
        let remote = match self {
            Incoming::Plain(listener) => listener.local_addr()?,
            Incoming::Tls { local, .. } => *local,
        };
        Ok(PeerInfo {
            remote,
            identity: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>>
    for PeerInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Incoming>) -> Self {
        stream.remote_addr().clone()
    }
}

/// The TLS connections of the gRPC listener, as tonic's server takes them.
pub struct TlsIncomingStream {
    ready: mpsc::Receiver<Conn>,
    acceptor: JoinHandle<()>,
}

pub fn tls_stream(listener: TcpListener, tls: Arc<ServerTls>) -> TlsIncomingStream {
    let (tx, ready) = mpsc::channel(READY_CONNECTIONS);
    let acceptor = spawn_acceptor(listener, tls, ListenerKind::Grpc, tx);
    TlsIncomingStream { ready, acceptor }
}

impl Drop for TlsIncomingStream {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl tokio_stream::Stream for TlsIncomingStream {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready.poll_recv(cx).map(|conn| conn.map(Ok))
    }
}
