//! A record's header in binary: what the spool keeps beside a request's spans (its experiment,
//! tenant, counts and each root's TraceInfo job). Written once per accepted request and read
//! once per delivery; as JSON it was a visible share of the CPU with short traces (every
//! trace's metadata and tags, trace ids as arrays of numbers).
//!
//! Layout: `FORMAT` byte, flags, then fields in a fixed order; integers as LEB128 varints,
//! strings and maps length-prefixed. Headers written as JSON by earlier versions start with
//! `{` and are still read (`record.rs`).

use std::collections::BTreeMap;

use crate::map::rules::TraceFacts;
use crate::map::trace_info::{TraceInfoJob, TraceState};
use crate::vocab::ExperimentRef;

/// First byte of a binary header (a JSON header's is `{`).
pub const FORMAT: u8 = 1;

const SAMPLED: u8 = 1;
const HAS_TENANT: u8 = 2;
const FROM_MLFLOW_SDK: u8 = 1;
const STATE_ERROR: u8 = 2;
const HAS_CLIENT_REQUEST_ID: u8 = 4;

/// The header's fields, borrowed for writing.
pub struct HeaderRef<'a> {
    pub experiment: &'a ExperimentRef,
    pub tenant: Option<&'a str>,
    pub span_count: usize,
    pub roots: &'a [TraceInfoJob],
    pub received_ms: u64,
    pub sampled: bool,
}

/// The header's fields, read back: from the binary form (`read`), or from the JSON that earlier
/// versions wrote (`record.rs`).
#[derive(Debug, PartialEq, serde::Deserialize)]
pub struct Header {
    pub experiment: ExperimentRef,
    /// Absent in JSON headers written before tenants, and in those without one.
    #[serde(default)]
    pub tenant: Option<String>,
    pub span_count: usize,
    pub roots: Vec<TraceInfoJob>,
    pub received_ms: u64,
    /// Absent in JSON headers written before sampling, and in those not yet sampled.
    #[serde(default)]
    pub sampled: bool,
}

/// Why a binary header could not be read: the record is damaged or not a header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("binary record header: {0}")]
pub struct HeaderError(&'static str);

/// Appends the header to `out`.
pub fn write(h: &HeaderRef<'_>, out: &mut Vec<u8>) {
    let flags =
        if h.sampled { SAMPLED } else { 0 } | if h.tenant.is_some() { HAS_TENANT } else { 0 };
    out.extend_from_slice(&[FORMAT, flags]);
    match h.experiment {
        ExperimentRef::Id(id) => {
            out.push(0);
            put_str(out, id);
        }
        ExperimentRef::Name(name) => {
            out.push(1);
            put_str(out, name);
        }
    }
    if let Some(tenant) = h.tenant {
        put_str(out, tenant);
    }
    put_varint(out, h.span_count as u64);
    put_varint(out, h.received_ms);
    put_varint(out, h.roots.len() as u64);
    for job in h.roots {
        write_job(job, out);
    }
}

fn write_job(job: &TraceInfoJob, out: &mut Vec<u8>) {
    out.extend_from_slice(&job.trace_id);
    out.extend_from_slice(&job.root_span_id);
    let flags = if job.from_mlflow_sdk {
        FROM_MLFLOW_SDK
    } else {
        0
    } | if job.state == TraceState::Error {
        STATE_ERROR
    } else {
        0
    } | if job.facts.client_request_id.is_some() {
        HAS_CLIENT_REQUEST_ID
    } else {
        0
    };
    out.push(flags);
    put_varint(out, job.start_unix_nano);
    put_varint(out, job.end_unix_nano);
    put_str(out, &job.root_name);
    if let Some(id) = &job.facts.client_request_id {
        put_str(out, id);
    }
    put_map(out, &job.facts.metadata);
    put_map(out, &job.facts.tags);
}

/// Reads a header written by `write` (all of `bytes`).
pub fn read(bytes: &[u8]) -> Result<Header, HeaderError> {
    let mut r = Reader(bytes);
    if r.byte()? != FORMAT {
        return Err(HeaderError("unknown format"));
    }
    let flags = r.byte()?;
    let experiment = match r.byte()? {
        0 => ExperimentRef::Id(r.string()?),
        1 => ExperimentRef::Name(r.string()?),
        _ => return Err(HeaderError("unknown experiment kind")),
    };
    let tenant = (flags & HAS_TENANT != 0).then(|| r.string()).transpose()?;
    let span_count = r.len()?;
    let received_ms = r.varint()?;
    let count = r.len()?;
    // Each job takes at least 29 bytes: a damaged count cannot reserve more than the bytes hold.
    let mut roots = Vec::with_capacity(count.min(r.0.len() / 29));
    for _ in 0..count {
        roots.push(read_job(&mut r)?);
    }
    if !r.0.is_empty() {
        return Err(HeaderError("trailing bytes"));
    }
    Ok(Header {
        experiment,
        tenant,
        span_count,
        roots,
        received_ms,
        sampled: flags & SAMPLED != 0,
    })
}

fn read_job(r: &mut Reader<'_>) -> Result<TraceInfoJob, HeaderError> {
    let trace_id = r.array::<16>()?;
    let root_span_id = r.array::<8>()?;
    let flags = r.byte()?;
    let start_unix_nano = r.varint()?;
    let end_unix_nano = r.varint()?;
    let root_name = r.string()?;
    let client_request_id = (flags & HAS_CLIENT_REQUEST_ID != 0)
        .then(|| r.string())
        .transpose()?;
    let metadata = r.map()?;
    let tags = r.map()?;
    Ok(TraceInfoJob {
        trace_id,
        root_span_id,
        root_name,
        start_unix_nano,
        end_unix_nano,
        state: if flags & STATE_ERROR != 0 {
            TraceState::Error
        } else {
            TraceState::Ok
        },
        facts: TraceFacts {
            client_request_id,
            metadata,
            tags,
        },
        from_mlflow_sdk: flags & FROM_MLFLOW_SDK != 0,
    })
}

fn put_varint(out: &mut Vec<u8>, value: u64) {
    prost::encoding::encode_varint(value, out);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_map(out: &mut Vec<u8>, map: &BTreeMap<String, String>) {
    put_varint(out, map.len() as u64);
    for (k, v) in map {
        put_str(out, k);
        put_str(out, v);
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, HeaderError> {
        let (&b, rest) = self.0.split_first().ok_or(HeaderError("short"))?;
        self.0 = rest;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], HeaderError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(HeaderError("short"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn varint(&mut self) -> Result<u64, HeaderError> {
        prost::encoding::decode_varint(&mut self.0).map_err(|_| HeaderError("bad varint"))
    }

    fn len(&mut self) -> Result<usize, HeaderError> {
        usize::try_from(self.varint()?).map_err(|_| HeaderError("length too large"))
    }

    fn string(&mut self) -> Result<String, HeaderError> {
        let len = self.len()?;
        if len > self.0.len() {
            return Err(HeaderError("short"));
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(s.to_vec()).map_err(|_| HeaderError("text not UTF-8"))
    }

    fn map(&mut self) -> Result<BTreeMap<String, String>, HeaderError> {
        let count = self.len()?;
        // Written in key order: built in bulk from the list, not insert by insert. Each entry
        // takes at least two bytes, which bounds what a damaged count reserves.
        let mut entries = Vec::with_capacity(count.min(self.0.len() / 2));
        for _ in 0..count {
            let key = self.string()?;
            entries.push((key, self.string()?));
        }
        Ok(BTreeMap::from_iter(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(i: u8) -> TraceInfoJob {
        let mut facts = TraceFacts {
            client_request_id: i.is_multiple_of(2).then(|| format!("req-{i}")),
            ..Default::default()
        };
        facts
            .metadata
            .insert("mlflow.trace.user".into(), "ü-82731".into());
        facts.metadata.insert("empty".into(), String::new());
        facts.tags.insert("team".into(), "a".repeat(300));
        TraceInfoJob {
            trace_id: [i; 16],
            root_span_id: [i.wrapping_add(1); 8],
            root_name: format!("root {i}"),
            start_unix_nano: u64::MAX - u64::from(i),
            end_unix_nano: u64::from(i),
            state: if i.is_multiple_of(3) {
                TraceState::Error
            } else {
                TraceState::Ok
            },
            facts,
            from_mlflow_sdk: i.is_multiple_of(4),
        }
    }

    fn round_trip(h: &HeaderRef<'_>) -> Header {
        let mut out = Vec::new();
        write(h, &mut out);
        read(&out).unwrap()
    }

    #[test]
    fn every_field_reads_back_as_written() {
        let roots: Vec<TraceInfoJob> = (0..6).map(job).collect();
        for (experiment, tenant, sampled) in [
            (ExperimentRef::Id("12".into()), Some("team-a"), true),
            (ExperimentRef::Name("chat/prod".into()), None, false),
        ] {
            let h = HeaderRef {
                experiment: &experiment,
                tenant,
                span_count: 100,
                roots: &roots,
                received_ms: 1_764_177_728_999,
                sampled,
            };
            assert_eq!(
                round_trip(&h),
                Header {
                    experiment: experiment.clone(),
                    tenant: tenant.map(str::to_string),
                    span_count: 100,
                    roots: roots.clone(),
                    received_ms: 1_764_177_728_999,
                    sampled,
                }
            );
        }
    }

    #[test]
    fn damaged_headers_are_errors_not_panics() {
        let roots: Vec<TraceInfoJob> = (0..3).map(job).collect();
        let experiment = ExperimentRef::Id("1".into());
        let mut out = Vec::new();
        write(
            &HeaderRef {
                experiment: &experiment,
                tenant: Some("t"),
                span_count: 3,
                roots: &roots,
                received_ms: 5,
                sampled: false,
            },
            &mut out,
        );
        for cut in 0..out.len() {
            assert!(read(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = out.clone();
        trailing.push(0);
        assert!(read(&trailing).is_err());
        let mut wrong_format = out;
        wrong_format[0] = b'{';
        assert_eq!(read(&wrong_format), Err(HeaderError("unknown format")));
        // A count far beyond the bytes does not reserve for it.
        assert!(read(&[FORMAT, 0, 0, 1, b'1', 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
