//! One round on a pipelined connection: the requests written and their replies read together.

use std::io;
use std::time::Duration;

use bytes::Buf;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::reply::{MAX_REPLY_BYTES, take_reply};
use super::{Reply, Socket};

/// How a round of requests on one connection ended.
pub(super) enum RoundEnd {
    /// Every request answered; the connection stays open.
    Open,
    /// The server closed the connection, or said it would (after the replies already taken).
    Closed,
    /// A reply did not come within the timeout; the connection is dropped.
    TimedOut,
    /// The connection failed, or the server sent something that is not an HTTP/1 reply.
    Failed(String),
}

/// Bytes asked of the socket per read.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// Writes `wire` (`count` requests) and reads replies into `replies` until each request has
/// one, the connection ends, or a reply is late. Writing and reading go on together, so a
/// server that answers before it has read everything cannot fill both directions and stall.
pub(super) async fn round(
    socket: &mut Socket,
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
            match take_reply(&socket.buf, eof) {
                Ok(Some((reply, used, close))) => {
                    socket.buf.advance(used);
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
            ready = socket.stream.ready(interest) => match ready {
                Ok(ready) => ready,
                Err(e) => return RoundEnd::Failed(e.to_string()),
            },
            () = &mut deadline => return RoundEnd::TimedOut,
        };
        if ready.is_writable() && written < wire.len() {
            match socket.stream.try_write(&wire[written..]) {
                Ok(n) => {
                    written += n;
                    quick_ack(&socket.stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return RoundEnd::Failed(e.to_string()),
            }
        }
        if ready.is_readable() {
            socket.buf.reserve(READ_CHUNK);
            match socket.stream.try_read_buf(&mut socket.buf) {
                Ok(0) => eof = true,
                // Acknowledged at once: a server with Nagle's algorithm on holds the next reply
                // of the round until this one is acknowledged.
                Ok(_) if replies.len() + 1 < count => quick_ack(&socket.stream),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return RoundEnd::Failed(e.to_string()),
            }
            if socket.buf.len() > MAX_REPLY_BYTES {
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
/// connection soon is, acknowledges them ~40 ms later (Linux's delayed-ACK timer), so each
/// StartTraceV3 on a reused connection took ~40 ms longer than on a fresh one. The kernel leaves
/// quick-ack mode when the client next writes soon after reading, so it is asked after every
/// write, and after every read while replies are due: a server with Nagle's algorithm on holds
/// each next reply of a pipelined round until the one before is acknowledged.
fn quick_ack(stream: &TcpStream) {
    // Best effort: where the option is refused the reply is only late, not lost.
    let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
}
