//! A whole `ExportTraceServiceRequest` read in place. Spans are judged one by one: a span that
//! cannot be forwarded is set aside as `Rejected` with its fault, and its siblings go on. Only a
//! request whose resources and scopes cannot be framed at all is refused whole (`WireError`).

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use super::schema::{self, Fault, RESOURCE, RESOURCE_DEPTH, SCOPE, SCOPE_DEPTH, Schema, Utf8};
use super::span::{AttributeAt, SpanView};
use super::wire::{FieldValue, Fields, RawField, WireError, put_delimited};

/// Room made per span in a scope's attribute list: GenAI spans carry 10-20, and growing the
/// list as it fills costs reallocations.
const TYPICAL_ATTRIBUTES: usize = 16;

/// Fields kept as encoded, with their numbers: written back before (number 1) or after
/// (3 and up) the repeated field in the middle, in the order prost writes them.
#[derive(Debug, Clone, Default)]
pub(super) struct KeptFields(Vec<(u32, Bytes)>);

impl KeptFields {
    fn keep(&mut self, buf: &Bytes, field: &RawField) {
        self.0.push((field.number, buf.slice(field.whole.clone())));
    }

    /// Keeps a field whose contents were replaced (a repaired string or message).
    fn keep_replaced(&mut self, number: u32, payload: &[u8]) {
        let mut encoded = Vec::with_capacity(payload.len() + 6);
        put_delimited(&mut encoded, number, payload);
        self.0.push((number, Bytes::from(encoded)));
    }

    pub(super) fn len(&self) -> usize {
        self.0.iter().map(|(_, b)| b.len()).sum()
    }

    pub(super) fn write(&self, out: &mut Vec<u8>, before_middle: bool) {
        for (_, bytes) in self.0.iter().filter(|(n, _)| (*n < 2) == before_middle) {
            out.extend_from_slice(bytes);
        }
    }
}

impl ScopeSpansView {
    /// Replaces span `index` with `span` (changed before mapping, which must read the new
    /// values): it is read again like a received span.
    pub fn replace_span(
        &mut self,
        index: usize,
        span: &Span,
        max_depth: usize,
    ) -> Result<(), Fault> {
        let body = Bytes::from(span.encode_to_vec());
        let view = SpanView::parse(body, &mut self.attributes, max_depth)?;
        if let Some(slot) = self.spans.get_mut(index) {
            *slot = view;
        }
        Ok(())
    }
}

/// A `ScopeSpans`: its spans, and every other field kept as encoded.
#[derive(Debug, Clone)]
pub struct ScopeSpansView {
    pub(super) kept: KeptFields,
    pub spans: Vec<SpanView>,
    /// Where the attributes of all its spans are, span after span (see `SpanView::attributes`).
    pub attributes: Vec<AttributeAt>,
}

/// A `ResourceSpans`: its resource (also decoded: small, and every span's mapping reads it),
/// its scopes, and every other field kept as encoded (unknown fields included).
#[derive(Debug, Clone)]
pub struct ResourceSpansView {
    pub resource: Option<Resource>,
    pub(super) kept: KeptFields,
    pub scope_spans: Vec<ScopeSpansView>,
}

impl ResourceSpansView {
    pub fn span_count(&self) -> usize {
        self.scope_spans.iter().map(|s| s.spans.len()).sum()
    }

    pub fn resource_attributes(&self) -> &[KeyValue] {
        self.resource
            .as_ref()
            .map(|r| &r.attributes[..])
            .unwrap_or(&[])
    }

    /// Replaces the resource (its attributes changed): the decoded copy and the bytes forwarded.
    pub fn replace_resource(&mut self, resource: Resource) {
        self.kept.0.retain(|(number, _)| *number != 1);
        self.kept.keep_replaced(1, &resource.encode_to_vec());
        // Field 1 is written before the scopes whatever its place in the list.
        self.resource = Some(resource);
    }

    /// Sets every span aside (its resource cannot go to MLflow); returns how many there were.
    pub fn take_all_spans(&mut self) -> usize {
        let n = self.span_count();
        self.scope_spans.clear();
        n
    }
}

/// Spans set aside while reading, with the fault that keeps them from MLflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub fault: Fault,
    /// What the fault was found in: `span '<name>'`, `resource`, `scope`.
    pub subject: String,
    pub spans: usize,
}

/// A request as read: the spans that can go on, and those set aside.
#[derive(Debug, Clone, Default)]
pub struct ParsedRequest {
    pub resource_spans: Vec<ResourceSpansView>,
    pub rejected: Vec<Rejected>,
    /// Spans with strings that were not UTF-8, replaced with U+FFFD (in them, their scope or
    /// their resource).
    pub repaired_spans: usize,
    /// The first field not in the schema above the spans (request, resource spans, scope spans
    /// level), which explains a request that holds no spans at all.
    pub unknown_field: Option<String>,
}

impl ParsedRequest {
    /// Every span the request held, set aside or not.
    pub fn received_spans(&self) -> usize {
        self.resource_spans
            .iter()
            .map(ResourceSpansView::span_count)
            .sum::<usize>()
            + self.rejected.iter().map(|r| r.spans).sum::<usize>()
    }

    fn note_unknown(&mut self, message: &str, field: &RawField) {
        self.unknown_field
            .get_or_insert_with(|| format!("field {} of {message}", field.number));
    }
}

/// Reads an encoded `ExportTraceServiceRequest`. Slices share `body`; nothing is copied but
/// what is repaired. `max_depth` bounds message nesting (`schema::MLFLOW_MAX_NESTING`).
pub fn parse_request(body: &Bytes, max_depth: usize) -> Result<ParsedRequest, WireError> {
    let mut out = ParsedRequest::default();
    for field in Fields::new(body) {
        let field = field.map_err(|e| e.within("ExportTraceServiceRequest"))?;
        match (field.number, &field.value) {
            (1, FieldValue::Len(range)) => {
                let rs = parse_resource_spans(body.slice(range.clone()), max_depth, &mut out)?;
                out.resource_spans.push(rs);
            }
            (1, _) => {
                return Err(WireError::new(
                    "ExportTraceServiceRequest: resource_spans has the wrong wire type",
                ));
            }
            _ => out.note_unknown("ExportTraceServiceRequest", &field),
        }
    }
    Ok(out)
}

/// A string field that must be UTF-8 (`schema_url`): kept as sent, or repaired.
fn keep_string(kept: &mut KeptFields, buf: &Bytes, field: &RawField) -> Utf8 {
    let FieldValue::Len(r) = &field.value else {
        return Utf8::Valid;
    };
    match std::str::from_utf8(&buf[r.clone()]) {
        Ok(_) => {
            kept.keep(buf, field);
            Utf8::Valid
        }
        Err(_) => {
            let fixed = String::from_utf8_lossy(&buf[r.clone()]).into_owned();
            kept.keep_replaced(field.number, fixed.as_bytes());
            Utf8::Invalid
        }
    }
}

/// A message field above the spans (resource, scope): checked, repaired if needed and kept.
/// Returns the bytes now kept for it.
fn keep_message(
    kept: &mut KeptFields,
    buf: &Bytes,
    field: &RawField,
    schema: &Schema,
    depth: usize,
    max_depth: usize,
) -> Result<(Bytes, Utf8), Fault> {
    let FieldValue::Len(r) = &field.value else {
        return Err(Fault::Malformed(format!(
            "{}: has the wrong wire type",
            schema.name
        )));
    };
    let contents = buf.slice(r.clone());
    match schema::check(&contents, schema, depth, max_depth)? {
        Utf8::Valid => {
            kept.keep(buf, field);
            Ok((contents, Utf8::Valid))
        }
        Utf8::Invalid => {
            let fixed = Bytes::from(schema::repaired(&contents, schema).into_owned());
            kept.keep_replaced(field.number, &fixed);
            Ok((fixed, Utf8::Invalid))
        }
    }
}

fn parse_resource_spans(
    buf: Bytes,
    max_depth: usize,
    out: &mut ParsedRequest,
) -> Result<ResourceSpansView, WireError> {
    let mut view = ResourceSpansView {
        resource: None,
        kept: KeptFields::default(),
        scope_spans: Vec::new(),
    };
    let mut fault = None;
    let mut utf8 = Utf8::Valid;
    let mut repaired = 0;
    for field in Fields::new(&buf) {
        let field = field.map_err(|e| e.within("ResourceSpans"))?;
        match (field.number, field.value.wire_type()) {
            (1, _) => {
                match keep_message(
                    &mut view.kept,
                    &buf,
                    &field,
                    &RESOURCE,
                    RESOURCE_DEPTH,
                    max_depth,
                ) {
                    Ok((contents, text)) => {
                        utf8 = utf8.and(text);
                        // prost merges repeated occurrences of a message field; so does this.
                        let resource = view.resource.get_or_insert_with(Resource::default);
                        if let Err(e) = resource.merge(&contents[..]) {
                            fault.get_or_insert(Fault::Malformed(format!("Resource: {e}")));
                        }
                    }
                    Err(f) => {
                        fault.get_or_insert(f);
                    }
                }
            }
            (2, 2) => {
                let FieldValue::Len(r) = &field.value else {
                    continue;
                };
                let (scope, in_scope) = parse_scope_spans(buf.slice(r.clone()), max_depth, out)?;
                repaired += in_scope;
                view.scope_spans.push(scope);
            }
            (3, 2) => utf8 = utf8.and(keep_string(&mut view.kept, &buf, &field)),
            (2..=3, _) => {
                return Err(WireError::new(format!(
                    "ResourceSpans: field {} has the wrong wire type",
                    field.number
                )));
            }
            _ => {
                out.note_unknown("ResourceSpans", &field);
                view.kept.keep(&buf, &field);
            }
        }
    }
    if let Some(fault) = fault {
        let spans = view.take_all_spans();
        if spans > 0 {
            out.rejected.push(Rejected {
                fault,
                subject: "resource".into(),
                spans,
            });
        }
    } else {
        out.repaired_spans += match utf8 {
            Utf8::Valid => repaired,
            Utf8::Invalid => view.span_count(),
        };
    }
    Ok(view)
}

/// Reads a `ScopeSpans`; also returns how many of its spans were repaired.
fn parse_scope_spans(
    buf: Bytes,
    max_depth: usize,
    out: &mut ParsedRequest,
) -> Result<(ScopeSpansView, usize), WireError> {
    // Sized before the walk: growing the list of views one doubling at a time moves each span
    // several times.
    let span_count = Fields::new(&buf)
        .map_while(Result::ok)
        .filter(|f| f.number == 2)
        .count();
    let mut view = ScopeSpansView {
        kept: KeptFields::default(),
        spans: Vec::with_capacity(span_count),
        attributes: Vec::with_capacity(span_count * TYPICAL_ATTRIBUTES),
    };
    let mut fault = None;
    let mut utf8 = Utf8::Valid;
    let mut repaired = 0;
    for field in Fields::new(&buf) {
        let field = field.map_err(|e| e.within("ScopeSpans"))?;
        match (field.number, &field.value) {
            (1, _) => {
                match keep_message(&mut view.kept, &buf, &field, &SCOPE, SCOPE_DEPTH, max_depth) {
                    Ok((_, text)) => utf8 = utf8.and(text),
                    Err(f) => {
                        fault.get_or_insert(f);
                    }
                }
            }
            (2, FieldValue::Len(r)) => {
                let body = buf.slice(r.clone());
                match SpanView::parse(body.clone(), &mut view.attributes, max_depth) {
                    Ok(span) => {
                        repaired += usize::from(span.repaired);
                        view.spans.push(span);
                    }
                    Err(fault) => out.rejected.push(Rejected {
                        fault,
                        subject: match SpanView::name_of_unreadable(&body) {
                            Some(name) => format!("span '{name}'"),
                            None => "span".into(),
                        },
                        spans: 1,
                    }),
                }
            }
            (3, FieldValue::Len(_)) => utf8 = utf8.and(keep_string(&mut view.kept, &buf, &field)),
            (2..=3, _) => {
                return Err(WireError::new(format!(
                    "ScopeSpans: field {} has the wrong wire type",
                    field.number
                )));
            }
            _ => {
                out.note_unknown("ScopeSpans", &field);
                view.kept.keep(&buf, &field);
            }
        }
    }
    if let Some(fault) = fault {
        let spans = view.spans.len();
        view.spans.clear();
        view.attributes.clear();
        if spans > 0 {
            out.rejected.push(Rejected {
                fault,
                subject: "scope".into(),
                spans,
            });
        }
        return Ok((view, 0));
    }
    let repaired = match utf8 {
        Utf8::Valid => repaired,
        Utf8::Invalid => view.spans.len(),
    };
    Ok((view, repaired))
}
