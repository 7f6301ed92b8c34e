//! TLS on the gateway's listeners: certificates loaded from PEM files and re-read when they
//! change, optional client certificates (mTLS) whose subjects name tenants, and the listeners
//! that hand each connection's peer to the handlers.

mod identity;
mod incoming;
mod server;

pub use identity::{ClientIdentity, PeerInfo};
pub use incoming::{Conn, Incoming, TlsIncomingStream, tls_stream};
pub use server::{ListenerKind, ServerTls, TlsError};
