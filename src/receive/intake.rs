//! One way in for both receivers: a request is authenticated and takes an in-flight slot before
//! its body is read (`admit`), then its turn for the CPU work, its decode (on the blocking pool
//! when large), and ingest's screening, routing, mapping and spooling (`Admitted::take_in`).

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::decode::DecodeError;
use crate::auth::Tenant;
use crate::otlp::ParsedRequest;
use crate::pipeline::ingest::{Accepted, Ingest, IngestError, RequestContext};
use crate::vocab::Transport;

/// Bodies of this size and more on the wire are decompressed and decoded on the blocking pool,
/// off the runtime's threads.
const BLOCKING_THRESHOLD: usize = 64 * 1024;

/// Why a request was not taken in.
#[derive(Debug)]
pub enum Refused {
    Decode(DecodeError),
    Ingest(IngestError),
    /// The decode task failed (a panic): the gateway's fault, not the request's.
    Internal(String),
}

/// A request holding an in-flight slot.
pub struct Admitted {
    ingest: Arc<Ingest>,
    transport: Transport,
    tenant: Option<Arc<Tenant>>,
    _slot: OwnedSemaphorePermit,
}

/// A request's credentials: its `Authorization` value and its client certificate's subjects.
#[derive(Debug, Default)]
pub struct Credentials<'a> {
    pub authorization: Option<&'a str>,
    pub cert_subjects: &'a [String],
}

/// Authenticates one request and takes an in-flight slot for it, or refuses (unknown
/// credentials, over quota, saturated, shutting down).
pub fn admit(
    ingest: &Arc<Ingest>,
    transport: Transport,
    credentials: Credentials<'_>,
) -> Result<Admitted, IngestError> {
    let tenant = ingest.authenticate(
        transport,
        credentials.authorization,
        credentials.cert_subjects,
    )?;
    let slot = ingest.admit(transport)?;
    Ok(Admitted {
        ingest: ingest.clone(),
        transport,
        tenant,
        _slot: slot,
    })
}

impl Admitted {
    /// Decodes the request with `decode` in its ingest turn and hands it to ingest.
    /// `wire_len` (the body's size as received) decides where the decode runs.
    pub async fn take_in<F>(
        self,
        experiment_header: Option<String>,
        wire_len: usize,
        decode: F,
    ) -> Result<Accepted, Refused>
    where
        F: FnOnce() -> Result<ParsedRequest, DecodeError> + Send + 'static,
    {
        let turn = self.ingest.ingest_turn().await;
        let work = move || {
            let _turn = turn;
            decode()
        };
        let decoded = if wire_len >= BLOCKING_THRESHOLD {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| Refused::Internal(format!("decode task failed: {e}")))?
        } else {
            work()
        };
        let request = decoded.map_err(|e| {
            tracing::debug!(transport = self.transport.as_str(), error = %e, "undecodable OTLP request");
            if e == DecodeError::Busy {
                self.ingest.count_busy(self.transport);
            }
            Refused::Decode(e)
        })?;
        let ctx = RequestContext {
            transport: self.transport,
            experiment_header,
            tenant: self.tenant,
        };
        self.ingest
            .accept(request, ctx)
            .await
            .map_err(Refused::Ingest)
    }

    /// Counts a request refused because the decode budget was spent before it was read.
    pub fn count_busy(&self) {
        self.ingest.count_busy(self.transport);
    }
}
