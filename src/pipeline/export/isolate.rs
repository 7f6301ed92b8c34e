//! A batch that MLflow refused as a whole, cut into the parts it can be sent in, so that the
//! export can halve it until only what MLflow refuses itself is left. Records are read with the
//! codec, which needs no decode of whole spans (MLflow's and prost's nesting limits do not stop
//! it); each of their spans is a part. A record the codec cannot read (one spooled by an
//! earlier version, say) is one part, sent and refused whole.

use std::collections::HashSet;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::otlp::{self, ResourceSpansView, SpanAt, schema::HARD_MAX_NESTING};

/// One record of the batch, as parts.
enum Record {
    /// Read: each span is a part. `first_of_scope[r][s]` is the place, among the record's
    /// spans, of the first span of scope `s` of resource `r`.
    Spans {
        views: Vec<ResourceSpansView>,
        first_of_scope: Vec<Vec<usize>>,
        first_part: usize,
        spans: usize,
    },
    /// Not read: the whole body is one part.
    Whole { body: Bytes, part: usize },
}

/// The parts of a batch, in order.
pub struct Parts {
    records: Vec<Record>,
    len: usize,
}

impl Parts {
    /// Cuts the batch's record bodies into parts.
    pub fn new(bodies: &[Bytes]) -> Self {
        let mut len = 0;
        let records = bodies
            .iter()
            .map(|body| {
                // Every span of a spooled record passed ingest, so none is set aside unless the
                // record is not what this version writes.
                match otlp::parse_request(body, HARD_MAX_NESTING) {
                    Ok(parsed) if parsed.rejected.is_empty() && parsed.repaired_spans == 0 => {
                        let mut spans = 0;
                        let first_of_scope = parsed
                            .resource_spans
                            .iter()
                            .map(|rs| {
                                rs.scope_spans
                                    .iter()
                                    .map(|ss| {
                                        let first = spans;
                                        spans += ss.spans.len();
                                        first
                                    })
                                    .collect()
                            })
                            .collect();
                        let record = Record::Spans {
                            views: parsed.resource_spans,
                            first_of_scope,
                            first_part: len,
                            spans,
                        };
                        len += spans;
                        record
                    }
                    _ => {
                        len += 1;
                        Record::Whole {
                            body: body.clone(),
                            part: len - 1,
                        }
                    }
                }
            })
            .collect();
        Self { records, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The request made of the parts in `range`: concatenated, as a batch's records are.
    pub fn encode(&self, range: &Range<usize>) -> Bytes {
        let mut out = BytesMut::new();
        for record in &self.records {
            match record {
                Record::Whole { body, part } if range.contains(part) => out.extend_from_slice(body),
                Record::Whole { .. } => {}
                Record::Spans {
                    views,
                    first_of_scope,
                    first_part,
                    spans,
                } => {
                    if range.end <= *first_part || range.start >= first_part + spans {
                        continue;
                    }
                    let keep = |at: SpanAt| {
                        range.contains(
                            &(first_part + first_of_scope[at.resource][at.scope] + at.span),
                        )
                    };
                    out.extend_from_slice(&otlp::encode_where(views, keep));
                }
            }
        }
        out.freeze()
    }

    /// What the parts in `range` hold: their span ids as far as they were read, and the
    /// records sent whole (by their place in the batch).
    pub fn contents(&self, range: &Range<usize>) -> Contents {
        let mut contents = Contents::default();
        for (index, record) in self.records.iter().enumerate() {
            match record {
                Record::Whole { part, .. } if range.contains(part) => {
                    contents.whole_records.insert(index);
                }
                Record::Whole { .. } => {}
                Record::Spans {
                    views, first_part, ..
                } => {
                    let spans = views
                        .iter()
                        .flat_map(|rs| &rs.scope_spans)
                        .flat_map(|ss| &ss.spans)
                        .enumerate()
                        .filter(|(i, _)| range.contains(&(first_part + i)));
                    for (_, span) in spans {
                        contents.spans += 1;
                        if let Ok(id) = <[u8; 8]>::try_from(span.span_id()) {
                            contents.span_ids.insert(id);
                        }
                    }
                }
            }
        }
        contents
    }
}

/// What some parts of a batch hold (see `Parts::contents`).
#[derive(Debug, Default)]
pub struct Contents {
    /// Spans in the parts that were read.
    pub spans: usize,
    pub span_ids: HashSet<[u8; 8]>,
    pub whole_records: HashSet<usize>,
}

impl Contents {
    /// Whether a root span of record `record` is among these parts.
    pub fn holds_root(&self, record: usize, root_span_id: &[u8; 8]) -> bool {
        self.whole_records.contains(&record) || self.span_ids.contains(root_span_id)
    }

    pub fn add(&mut self, other: Contents) {
        self.spans += other.spans;
        self.span_ids.extend(other.span_ids);
        self.whole_records.extend(other.whole_records);
    }
}

/// The two halves of a range of parts.
pub fn halves(range: Range<usize>) -> (Range<usize>, Range<usize>) {
    let mid = range.start + range.len() / 2;
    (range.start..mid, mid..range.end)
}

#[cfg(test)]
mod tests;
