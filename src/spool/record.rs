//! A spooled record: what one accepted request (for one experiment) leaves in the spool, and
//! its encoding on disk.

use bytes::Bytes;

use super::header::{self, Header, HeaderError, HeaderRef};

use crate::map::trace_info::TraceInfoJob;
use crate::vocab::ExperimentRef;

/// What one accepted request (for one experiment) leaves in the spool.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolRecord {
    pub experiment: ExperimentRef,
    /// The tenant that sent it (its MLflow identity and its share of the spool); None without
    /// tenants.
    pub tenant: Option<String>,
    pub span_count: usize,
    pub roots: Vec<TraceInfoJob>,
    pub received_ms: u64,
    /// The sampler kept its traces already (promoted from retention): delivered without
    /// waiting for a decision.
    pub sampled: bool,
    /// An encoded `ExportTraceServiceRequest`; requests concatenate into one batch as is.
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record too short")]
    Short,
    #[error("record header: {0}")]
    Header(#[from] serde_json::Error),
    #[error(transparent)]
    Binary(#[from] HeaderError),
}

impl SpoolRecord {
    /// The record alone (`encode_into`).
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// `header_len (u32 LE) | header | body`, appended to `out`: the disk spool frames the
    /// record in the same buffer (`frame::encode_with`).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.encode_header_into(out);
        out.extend_from_slice(&self.body);
    }

    /// What precedes the body in `encode_into`: the disk spool compresses it and the body
    /// without joining them.
    pub fn encode_header_into(&self, out: &mut Vec<u8>) {
        // The header is written in place after room for its length.
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        header::write(
            &HeaderRef {
                experiment: &self.experiment,
                tenant: self.tenant.as_deref(),
                span_count: self.span_count,
                roots: &self.roots,
                received_ms: self.received_ms,
                sampled: self.sampled,
            },
            out,
        );
        let header_len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&header_len.to_le_bytes());
    }

    pub fn decode(bytes: Bytes) -> Result<Self, RecordError> {
        let len = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or(RecordError::Short)? as usize;
        let header_bytes = bytes.get(4..4 + len).ok_or(RecordError::Short)?;
        // Versions before the binary header wrote JSON; a spool they left is still read.
        let header: Header = if header_bytes.first() == Some(&b'{') {
            serde_json::from_slice(header_bytes)?
        } else {
            header::read(header_bytes)?
        };
        Ok(Self {
            experiment: header.experiment,
            tenant: header.tenant,
            span_count: header.span_count,
            roots: header.roots,
            received_ms: header.received_ms,
            sampled: header.sampled,
            body: bytes.slice(4 + len..),
        })
    }

    pub fn encoded_len(&self) -> usize {
        self.body.len() + 256 + self.roots.len() * 512
    }
}
