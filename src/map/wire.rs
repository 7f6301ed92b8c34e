//! OTLP trace requests read and rewritten on the protobuf wire, without decoding every span.
//!
//! The gateway forwards spans as they came: only root spans (TraceInfo facts, enrichment) and
//! spans with an over-long session id are decoded and re-encoded. Every other span is checked
//! in place (ids, times, a full structural walk with UTF-8 checks, so anything prost would
//! refuse is refused here too) and copied byte for byte into the spooled request. A decode of
//! the whole request allocated ~30 times per span and was the largest share of the gateway's
//! CPU at 10k spans/s (BENCHMARKS.md, "Changes").

use std::ops::Range;

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// Nesting prost accepts before it gives up (its recursion limit); AnyValue arrays and maps
/// nest without bound on the wire.
const MAX_DEPTH: usize = 100;

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

/// A request that is not valid OTLP protobuf; the text says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(String);

impl WireError {
    fn new(what: impl Into<String>) -> Self {
        Self(what.into())
    }
}

/// One field as it sits in a message: its number, wire type, value and its whole encoding.
#[derive(Debug, Clone)]
struct RawField {
    number: u32,
    value: FieldValue,
    /// Tag, length (if any) and value: what to copy to forward the field unchanged.
    whole: Range<usize>,
}

#[derive(Debug, Clone)]
enum FieldValue {
    Varint(u64),
    I64(u64),
    I32,
    Len(Range<usize>),
}

impl FieldValue {
    fn wire_type(&self) -> u8 {
        match self {
            FieldValue::Varint(_) => WIRE_VARINT,
            FieldValue::I64(_) => WIRE_I64,
            FieldValue::Len(_) => WIRE_LEN,
            FieldValue::I32 => WIRE_I32,
        }
    }
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = buf.get(*pos) else {
            return Err(WireError::new("truncated varint"));
        };
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::new("varint longer than 10 bytes"))
}

/// A length-delimited field's contents: its length at `*pos` (after the tag), then that many
/// bytes, which must lie within `buf`; `*pos` moves past them.
fn read_delimited(buf: &[u8], pos: &mut usize) -> Result<Range<usize>, WireError> {
    let len = read_varint(buf, pos)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| pos.checked_add(l))
        .filter(|end| *end <= buf.len())
        .ok_or_else(|| WireError::new("length-delimited field runs past its message"))?;
    let range = *pos..end;
    *pos = end;
    Ok(range)
}

/// The fields of one message, in wire order. Groups (deprecated, never in OTLP) are refused.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn read(&mut self) -> Result<RawField, WireError> {
        let start = self.pos;
        let key = read_varint(self.buf, &mut self.pos)?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|n| *n > 0 && *n < (1 << 29))
            .ok_or_else(|| WireError::new(format!("invalid field number {}", key >> 3)))?;
        let fixed = |pos: &mut usize, n: usize| -> Result<&'a [u8], WireError> {
            let bytes = self
                .buf
                .get(*pos..*pos + n)
                .ok_or_else(|| WireError::new("truncated fixed-width field"))?;
            *pos += n;
            Ok(bytes)
        };
        let value = match (key & 7) as u8 {
            WIRE_VARINT => FieldValue::Varint(read_varint(self.buf, &mut self.pos)?),
            WIRE_I64 => {
                let b = fixed(&mut self.pos, 8)?;
                FieldValue::I64(u64::from_le_bytes(b.try_into().unwrap_or_default()))
            }
            WIRE_I32 => {
                fixed(&mut self.pos, 4)?;
                FieldValue::I32
            }
            WIRE_LEN => FieldValue::Len(read_delimited(self.buf, &mut self.pos)?),
            other => return Err(WireError::new(format!("unsupported wire type {other}"))),
        };
        Ok(RawField {
            number,
            value,
            whole: start..self.pos,
        })
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<RawField, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let field = self.read();
        if field.is_err() {
            // Stop after the first error; the rest of the buffer cannot be framed.
            self.pos = self.buf.len();
        }
        Some(field)
    }
}

/// What a known field of an OTLP message holds, for the structural walk.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bytes,
    Varint,
    I64,
    I32,
    Msg(&'static Schema),
}

impl Kind {
    fn wire_type(self) -> u8 {
        match self {
            Kind::Str | Kind::Bytes | Kind::Msg(_) => WIRE_LEN,
            Kind::Varint => WIRE_VARINT,
            Kind::I64 => WIRE_I64,
            Kind::I32 => WIRE_I32,
        }
    }
}

/// A message's known fields (OTLP 1.x, as opentelemetry-proto 0.33 generates them).
struct Schema {
    name: &'static str,
    fields: &'static [(u32, Kind)],
}

static KEY_VALUE: Schema = Schema {
    name: "KeyValue",
    fields: &[
        (1, Kind::Str),
        (2, Kind::Msg(&ANY_VALUE)),
        (3, Kind::Varint),
    ],
};
static ANY_VALUE: Schema = Schema {
    name: "AnyValue",
    fields: &[
        (1, Kind::Str),
        (2, Kind::Varint),
        (3, Kind::Varint),
        (4, Kind::I64),
        (5, Kind::Msg(&ARRAY_VALUE)),
        (6, Kind::Msg(&KEY_VALUE_LIST)),
        (7, Kind::Bytes),
        (8, Kind::Varint),
    ],
};
static ARRAY_VALUE: Schema = Schema {
    name: "ArrayValue",
    fields: &[(1, Kind::Msg(&ANY_VALUE))],
};
static KEY_VALUE_LIST: Schema = Schema {
    name: "KeyValueList",
    fields: &[(1, Kind::Msg(&KEY_VALUE))],
};
static SCOPE: Schema = Schema {
    name: "InstrumentationScope",
    fields: &[
        (1, Kind::Str),
        (2, Kind::Str),
        (3, Kind::Msg(&KEY_VALUE)),
        (4, Kind::Varint),
    ],
};
static EVENT: Schema = Schema {
    name: "Span.Event",
    fields: &[
        (1, Kind::I64),
        (2, Kind::Str),
        (3, Kind::Msg(&KEY_VALUE)),
        (4, Kind::Varint),
    ],
};
static LINK: Schema = Schema {
    name: "Span.Link",
    fields: &[
        (1, Kind::Bytes),
        (2, Kind::Bytes),
        (3, Kind::Str),
        (4, Kind::Msg(&KEY_VALUE)),
        (5, Kind::Varint),
        (6, Kind::I32),
    ],
};
static STATUS: Schema = Schema {
    name: "Status",
    fields: &[(2, Kind::Str), (3, Kind::Varint)],
};
static SPAN: Schema = Schema {
    name: "Span",
    fields: &[
        (1, Kind::Bytes),
        (2, Kind::Bytes),
        (3, Kind::Str),
        (4, Kind::Bytes),
        (5, Kind::Str),
        (6, Kind::Varint),
        (7, Kind::I64),
        (8, Kind::I64),
        (9, Kind::Msg(&KEY_VALUE)),
        (10, Kind::Varint),
        (11, Kind::Msg(&EVENT)),
        (12, Kind::Varint),
        (13, Kind::Msg(&LINK)),
        (14, Kind::Varint),
        (15, Kind::Msg(&STATUS)),
        (16, Kind::I32),
    ],
};

/// Checks a message the way prost's decoder would: known fields have their wire type, strings
/// are UTF-8, nested messages are well formed; unknown fields are skipped.
fn validate(buf: &[u8], schema: &Schema, depth: usize) -> Result<(), WireError> {
    validate_noting(buf, schema, depth, |_| {})
}

/// `validate`, showing each checked field of the message (not of nested ones) to `note`.
fn validate_noting(
    buf: &[u8],
    schema: &Schema,
    depth: usize,
    mut note: impl FnMut(&RawField),
) -> Result<(), WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError::new("message nested too deeply"));
    }
    for field in Fields::new(buf) {
        let field = field.map_err(|e| WireError::new(format!("{}: {e}", schema.name)))?;
        check_field(buf, schema, &field, depth)?;
        note(&field);
    }
    Ok(())
}

/// Checks one field of a `schema` message found at `depth` (see `validate`).
fn check_field(
    buf: &[u8],
    schema: &Schema,
    field: &RawField,
    depth: usize,
) -> Result<(), WireError> {
    let Some((_, kind)) = schema.fields.iter().find(|(n, _)| *n == field.number) else {
        return Ok(());
    };
    if field.value.wire_type() != kind.wire_type() {
        return Err(WireError::new(format!(
            "{}: field {} has wire type {}, expected {}",
            schema.name,
            field.number,
            field.value.wire_type(),
            kind.wire_type()
        )));
    }
    if let FieldValue::Len(range) = &field.value {
        match kind {
            Kind::Str if std::str::from_utf8(&buf[range.clone()]).is_err() => {
                return Err(WireError::new(format!(
                    "{}: field {} is not valid UTF-8",
                    schema.name, field.number
                )));
            }
            Kind::Msg(inner) => validate(&buf[range.clone()], inner, depth + 1)?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks an encoded `KeyValue` found at `depth` (see `validate`) and returns where its key is
/// (prost keeps the last of repeated keys; so does this).
fn validate_key_value(buf: &[u8], depth: usize) -> Result<Range<usize>, WireError> {
    if let Some(key) = plain_key_value(buf) {
        return Ok(key);
    }
    let mut key = 0..0;
    validate_noting(buf, &KEY_VALUE, depth, |field| {
        if let (1, FieldValue::Len(r)) = (field.number, &field.value) {
            key = r.clone();
        }
    })?;
    Ok(key)
}

/// The key of an attribute in the shape SDKs write: the key, then (if any) a value holding one
/// string, bool, int or double, each field once and in that order. `None` for anything else,
/// valid or not, which `validate_key_value` then walks by the schema: this shortcut accepts only
/// what that walk accepts, and leaves every error to it. Attributes are most of a span's
/// fields: the walk was ~17 % of the gateway's CPU at 200k spans/s, mostly in them, and about
/// half that with this shortcut (BENCHMARKS.md, "Changes").
fn plain_key_value(buf: &[u8]) -> Option<Range<usize>> {
    let delimited = |buf: &[u8], pos: &mut usize| read_delimited(buf, pos).ok();
    fn utf8(bytes: &[u8]) -> bool {
        bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
    }
    // Tags with field numbers below 16 are one byte: (number << 3) | wire type.
    const KEY: u8 = 1 << 3 | WIRE_LEN;
    const VALUE: u8 = 2 << 3 | WIRE_LEN;
    const STRING: u8 = 1 << 3 | WIRE_LEN;
    const BOOL: u8 = 2 << 3 | WIRE_VARINT;
    const INT: u8 = 3 << 3 | WIRE_VARINT;
    const DOUBLE: u8 = 4 << 3 | WIRE_I64;

    let mut pos = 1;
    if buf.first() != Some(&KEY) {
        return None;
    }
    let key = delimited(buf, &mut pos)?;
    if !utf8(&buf[key.clone()]) {
        return None;
    }
    if pos == buf.len() {
        return Some(key);
    }
    if buf[pos] != VALUE {
        return None;
    }
    pos += 1;
    let value = delimited(buf, &mut pos)?;
    if pos != buf.len() {
        return None;
    }
    let value = &buf[value];
    let Some((&tag, rest)) = value.split_first() else {
        return Some(key);
    };
    let mut at = 0;
    let whole = match tag {
        STRING => delimited(rest, &mut at).is_some_and(|s| utf8(&rest[s])),
        BOOL | INT => read_varint(rest, &mut at).is_ok(),
        DOUBLE => {
            at = 8;
            rest.len() >= 8
        }
        _ => false,
    };
    (whole && at == rest.len()).then_some(key)
}

/// Room made per span in a scope's attribute list: GenAI spans carry 10-20, and growing the
/// list as it fills cost reallocations (2 % of the gateway's CPU when the list was per span).
const TYPICAL_ATTRIBUTES: usize = 16;

/// Where one attribute sits in its span's encoding.
#[derive(Debug, Clone)]
pub struct AttributeAt {
    /// The encoded `KeyValue`.
    key_value: Range<usize>,
    /// Its key (checked as UTF-8).
    key: Range<usize>,
}

/// One span, checked but not decoded: the facts the gateway needs, and its bytes to forward.
#[derive(Debug, Clone)]
pub struct SpanView {
    /// The encoded `Span` message (without its tag and length).
    body: Bytes,
    trace_id: Range<usize>,
    span_id: Range<usize>,
    parent_span_id: Range<usize>,
    name: Range<usize>,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// `status.code` (0, unset, when the span has no status).
    pub status_code: i32,
    /// Where its attributes are in its scope's `attributes`: found while the span was checked,
    /// so that picking the mapped ones does not walk the span again (three walks per span were
    /// ~12 % of the gateway's CPU at 10k spans/s; BENCHMARKS.md, "Changes"). One list per
    /// scope, not one per span: a list per span was an allocation per span.
    attributes: Range<usize>,
    /// The span re-encoded after the gateway changed it (root enrichment, fitted values).
    rewritten: Option<Bytes>,
}

impl SpanView {
    /// Checks the span as `validate` would and notes what the gateway reads, in one walk; its
    /// attributes go to the end of `attributes`.
    fn parse(body: Bytes, attributes: &mut Vec<AttributeAt>) -> Result<Self, WireError> {
        let first_attribute = attributes.len();
        let mut view = SpanView {
            body: Bytes::new(),
            trace_id: 0..0,
            span_id: 0..0,
            parent_span_id: 0..0,
            name: 0..0,
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
            status_code: 0,
            attributes: 0..0,
            rewritten: None,
        };
        // On repeats the last value wins, as in prost.
        for field in Fields::new(&body) {
            let field = field.map_err(|e| WireError::new(format!("{}: {e}", SPAN.name)))?;
            if let (9, FieldValue::Len(r)) = (field.number, &field.value) {
                let key = validate_key_value(&body[r.clone()], 1)?;
                attributes.push(AttributeAt {
                    key_value: r.clone(),
                    key: r.start + key.start..r.start + key.end,
                });
                continue;
            }
            check_field(&body, &SPAN, &field, 0)?;
            match (field.number, field.value) {
                (1, FieldValue::Len(r)) => view.trace_id = r,
                (2, FieldValue::Len(r)) => view.span_id = r,
                (4, FieldValue::Len(r)) => view.parent_span_id = r,
                (5, FieldValue::Len(r)) => view.name = r,
                (7, FieldValue::I64(v)) => view.start_time_unix_nano = v,
                (8, FieldValue::I64(v)) => view.end_time_unix_nano = v,
                (15, FieldValue::Len(r)) => {
                    // Checked above; prost merges a repeated status, so its last code wins.
                    for field in Fields::new(&body[r]).flatten() {
                        if let (3, FieldValue::Varint(code)) = (field.number, field.value) {
                            // An enum on the wire is an int32 written as a varint.
                            view.status_code = code as i32;
                        }
                    }
                }
                _ => {}
            }
        }
        view.body = body;
        view.attributes = first_attribute..attributes.len();
        Ok(view)
    }

    pub fn trace_id(&self) -> &[u8] {
        &self.body[self.trace_id.clone()]
    }

    pub fn span_id(&self) -> &[u8] {
        &self.body[self.span_id.clone()]
    }

    pub fn parent_span_id(&self) -> &[u8] {
        &self.body[self.parent_span_id.clone()]
    }

    pub fn name(&self) -> &str {
        // Checked as UTF-8 by `validate`.
        std::str::from_utf8(&self.body[self.name.clone()]).unwrap_or_default()
    }

    /// This span's entries in its scope's list (`ScopeSpansView::attributes`).
    fn own_attributes<'a>(&self, scope: &'a [AttributeAt]) -> &'a [AttributeAt] {
        scope.get(self.attributes.clone()).unwrap_or_default()
    }

    /// The key of one of this span's attributes, as bytes: `parse` checked it as UTF-8, and
    /// comparing bytes spares checking it again for every lookup.
    fn key(&self, at: &AttributeAt) -> &[u8] {
        &self.body[at.key.clone()]
    }

    /// Attributes whose key passes `wanted`, decoded; the others are never touched.
    /// `attributes` is the list of the span's scope (`ScopeSpansView::attributes`).
    pub fn attributes_where(
        &self,
        attributes: &[AttributeAt],
        mut wanted: impl FnMut(&[u8]) -> bool,
    ) -> Vec<KeyValue> {
        let mut out = Vec::new();
        for at in self.own_attributes(attributes) {
            let key = self.key(at);
            if wanted(key)
                && let Ok(decoded) = KeyValue::decode(&self.body[at.key_value.clone()])
            {
                out.push(decoded);
            }
        }
        out
    }

    /// The whole span, decoded (for roots and spans the gateway must change).
    pub fn decode(&self) -> Result<Span, WireError> {
        Span::decode(&self.body[..]).map_err(|e| WireError::new(format!("Span: {e}")))
    }

    /// Sets string attributes without decoding the span: its attributes with these keys are
    /// left out and the new ones appended (protobuf allows fields in any order). A span that
    /// already holds every value is forwarded as received. For roots, whose decode and
    /// re-encode was ~6 % of the gateway's CPU at its ceiling.
    /// `attributes` is the list of the span's scope (`ScopeSpansView::attributes`).
    pub fn set_string_attributes(
        &mut self,
        attributes: &[AttributeAt],
        set: &[(impl AsRef<str>, &str)],
    ) {
        let mine = self.own_attributes(attributes);
        let holds = |key: &str, value: &str| {
            let mut found = mine.iter().filter(|at| self.key(at) == key.as_bytes());
            match (found.next(), found.next()) {
                (Some(at), None) => KeyValue::decode(&self.body[at.key_value.clone()])
                    .ok()
                    .and_then(|kv| kv.value?.value)
                    .is_some_and(|v| matches!(v, Value::StringValue(s) if s == value)),
                _ => false,
            }
        };
        if set.iter().all(|(k, v)| holds(k.as_ref(), v)) {
            return;
        }
        let extra: usize = set
            .iter()
            .map(|(k, v)| framed_len(string_key_value_len(k.as_ref(), v)))
            .sum();
        let mut out = Vec::with_capacity(self.body.len() + extra);
        // `parse` noted every attribute field, in wire order.
        let mut noted = mine.iter();
        for field in Fields::new(&self.body).flatten() {
            if field.number == 9
                && noted.next().is_some_and(|at| {
                    set.iter()
                        .any(|(k, _)| k.as_ref().as_bytes() == self.key(at))
                })
            {
                continue;
            }
            out.extend_from_slice(&self.body[field.whole]);
        }
        for (key, value) in set {
            let key = key.as_ref();
            put_framed(&mut out, 9, string_key_value_len(key, value));
            put_framed(&mut out, 1, key.len());
            out.extend_from_slice(key.as_bytes());
            put_framed(&mut out, 2, framed_len(value.len()));
            put_framed(&mut out, 1, value.len());
            out.extend_from_slice(value.as_bytes());
        }
        self.rewritten = Some(Bytes::from(out));
    }

    /// Forward `span` instead of the received bytes.
    pub fn replace(&mut self, span: &Span) {
        self.rewritten = Some(Bytes::from(span.encode_to_vec()));
    }

    /// The bytes that go on to MLflow.
    fn forwarded(&self) -> &[u8] {
        self.rewritten.as_deref().unwrap_or(&self.body)
    }
}

/// Fields kept as encoded, with their numbers: written back before (number 1) or after
/// (3 and up) the repeated field in the middle, in the order prost writes them.
#[derive(Debug, Clone, Default)]
struct KeptFields(Vec<(u32, Bytes)>);

impl KeptFields {
    fn keep(&mut self, buf: &Bytes, field: &RawField) {
        self.0.push((field.number, buf.slice(field.whole.clone())));
    }

    fn len(&self) -> usize {
        self.0.iter().map(|(_, b)| b.len()).sum()
    }

    fn write(&self, out: &mut Vec<u8>, before_middle: bool) {
        for (_, bytes) in self.0.iter().filter(|(n, _)| (*n < 2) == before_middle) {
            out.extend_from_slice(bytes);
        }
    }
}

/// A `ScopeSpans`: its spans, and every other field kept as encoded.
#[derive(Debug, Clone)]
pub struct ScopeSpansView {
    kept: KeptFields,
    pub spans: Vec<SpanView>,
    /// Where the attributes of all its spans are, span after span (see `SpanView::attributes`).
    pub attributes: Vec<AttributeAt>,
}

/// A `ResourceSpans`: its resource (also decoded: small, and every span's mapping reads it),
/// its scopes, and every other field kept as encoded (unknown fields included).
#[derive(Debug, Clone)]
pub struct ResourceSpansView {
    pub resource: Option<Resource>,
    kept: KeptFields,
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
}

/// Reads an encoded `ExportTraceServiceRequest`. Slices share `body`; nothing is copied.
pub fn parse_request(body: &Bytes) -> Result<Vec<ResourceSpansView>, WireError> {
    let mut out = Vec::new();
    for field in Fields::new(body) {
        let field = field.map_err(|e| WireError::new(format!("ExportTraceServiceRequest: {e}")))?;
        match (field.number, field.value) {
            (1, FieldValue::Len(range)) => out.push(parse_resource_spans(body.slice(range))?),
            (1, _) => {
                return Err(WireError::new(
                    "ExportTraceServiceRequest: resource_spans has the wrong wire type",
                ));
            }
            _ => {}
        }
    }
    Ok(out)
}

fn parse_resource_spans(buf: Bytes) -> Result<ResourceSpansView, WireError> {
    let mut view = ResourceSpansView {
        resource: None,
        kept: KeptFields::default(),
        scope_spans: Vec::new(),
    };
    for field in Fields::new(&buf) {
        let field = field.map_err(|e| WireError::new(format!("ResourceSpans: {e}")))?;
        match (field.number, &field.value) {
            (1, FieldValue::Len(r)) => {
                // prost merges repeated occurrences of a message field; so does this.
                let resource = view.resource.get_or_insert_with(Resource::default);
                resource
                    .merge(&buf[r.clone()])
                    .map_err(|e| WireError::new(format!("Resource: {e}")))?;
                view.kept.keep(&buf, &field);
            }
            (2, FieldValue::Len(r)) => view
                .scope_spans
                .push(parse_scope_spans(buf.slice(r.clone()))?),
            (3, FieldValue::Len(r)) => {
                if std::str::from_utf8(&buf[r.clone()]).is_err() {
                    return Err(WireError::new(
                        "ResourceSpans: schema_url is not valid UTF-8",
                    ));
                }
                view.kept.keep(&buf, &field);
            }
            (1..=3, _) => {
                return Err(WireError::new(format!(
                    "ResourceSpans: field {} has the wrong wire type",
                    field.number
                )));
            }
            _ => view.kept.keep(&buf, &field),
        }
    }
    Ok(view)
}

fn parse_scope_spans(buf: Bytes) -> Result<ScopeSpansView, WireError> {
    // Sized before the walk: growing the list of ~170-byte views one doubling at a time moved
    // each span several times (~2 % of the gateway's CPU at 10k spans/s).
    let span_count = Fields::new(&buf)
        .map_while(Result::ok)
        .filter(|f| f.number == 2)
        .count();
    let mut view = ScopeSpansView {
        kept: KeptFields::default(),
        spans: Vec::with_capacity(span_count),
        attributes: Vec::with_capacity(span_count * TYPICAL_ATTRIBUTES),
    };
    for field in Fields::new(&buf) {
        let field = field.map_err(|e| WireError::new(format!("ScopeSpans: {e}")))?;
        match (field.number, &field.value) {
            (1, FieldValue::Len(r)) => {
                validate(&buf[r.clone()], &SCOPE, 0)?;
                view.kept.keep(&buf, &field);
            }
            (2, FieldValue::Len(r)) => {
                let span = SpanView::parse(buf.slice(r.clone()), &mut view.attributes)?;
                view.spans.push(span);
            }
            (3, FieldValue::Len(r)) => {
                if std::str::from_utf8(&buf[r.clone()]).is_err() {
                    return Err(WireError::new("ScopeSpans: schema_url is not valid UTF-8"));
                }
                view.kept.keep(&buf, &field);
            }
            (1..=3, _) => {
                return Err(WireError::new(format!(
                    "ScopeSpans: field {} has the wrong wire type",
                    field.number
                )));
            }
            _ => view.kept.keep(&buf, &field),
        }
    }
    Ok(view)
}

fn varint_len(v: usize) -> usize {
    prost::encoding::encoded_len_varint(v as u64)
}

/// Length of a length-delimited field with a one-byte tag (field numbers 1-15).
fn framed_len(payload: usize) -> usize {
    1 + varint_len(payload) + payload
}

/// Length of an encoded `KeyValue { key, value: AnyValue { string_value } }`.
fn string_key_value_len(key: &str, value: &str) -> usize {
    framed_len(key.len()) + framed_len(framed_len(value.len()))
}

fn put_framed(out: &mut Vec<u8>, field: u32, payload_len: usize) {
    out.put_u8(((field << 3) | u32::from(WIRE_LEN)) as u8);
    prost::encoding::encode_varint(payload_len as u64, out);
}

fn scope_len(scope: &ScopeSpansView) -> usize {
    scope.kept.len()
        + scope
            .spans
            .iter()
            .map(|s| framed_len(s.forwarded().len()))
            .sum::<usize>()
}

fn resource_len(rs: &ResourceSpansView) -> usize {
    rs.kept.len()
        + rs.scope_spans
            .iter()
            .filter(|s| !s.spans.is_empty())
            .map(|s| framed_len(scope_len(s)))
            .sum::<usize>()
}

/// Encodes `ExportTraceServiceRequest { resource_spans }`: received spans and fields as they
/// came, changed spans re-encoded, scopes left without spans dropped.
pub fn encode_request(resource_spans: &[ResourceSpansView]) -> Vec<u8> {
    let total: usize = resource_spans
        .iter()
        .map(|rs| framed_len(resource_len(rs)))
        .sum();
    let mut out = Vec::with_capacity(total);
    for rs in resource_spans {
        put_framed(&mut out, 1, resource_len(rs));
        rs.kept.write(&mut out, true);
        for scope in rs.scope_spans.iter().filter(|s| !s.spans.is_empty()) {
            put_framed(&mut out, 2, scope_len(scope));
            scope.kept.write(&mut out, true);
            for span in &scope.spans {
                let bytes = span.forwarded();
                put_framed(&mut out, 2, bytes.len());
                out.extend_from_slice(bytes);
            }
            scope.kept.write(&mut out, false);
        }
        rs.kept.write(&mut out, false);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::attrs::{find_str, kv_str};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope};
    use opentelemetry_proto::tonic::trace::v1::span::Event;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

    fn span(n: u8, parent: &[u8]) -> Span {
        Span {
            trace_id: vec![n; 16],
            span_id: vec![n; 8],
            parent_span_id: parent.to_vec(),
            name: format!("span-{n}"),
            start_time_unix_nano: 100 + n as u64,
            end_time_unix_nano: 200 + n as u64,
            attributes: vec![kv_str("a", "1"), kv_str("session.id", "s")],
            events: vec![Event {
                time_unix_nano: 5,
                name: "e".into(),
                ..Default::default()
            }],
            status: Some(Status {
                message: "m".into(),
                code: 2,
            }),
            ..Default::default()
        }
    }

    fn request() -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv_str("service.name", "svc")],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "lib".into(),
                            ..Default::default()
                        }),
                        spans: vec![span(1, &[]), span(2, &[1; 8])],
                        schema_url: "https://scope".into(),
                    }],
                    schema_url: "https://resource".into(),
                },
                ResourceSpans {
                    resource: None,
                    scope_spans: vec![
                        ScopeSpans {
                            scope: None,
                            spans: vec![span(3, &[])],
                            schema_url: String::new(),
                        },
                        ScopeSpans::default(),
                    ],
                    schema_url: String::new(),
                },
            ],
        }
    }

    #[test]
    fn unchanged_spans_round_trip_byte_for_byte() {
        let req = request();
        let body = Bytes::from(req.encode_to_vec());
        let views = parse_request(&body).unwrap();
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].span_count(), 2);
        assert_eq!(
            find_str(views[0].resource_attributes(), "service.name").as_deref(),
            Some("svc")
        );
        let s = &views[0].scope_spans[0].spans[1];
        assert_eq!(s.trace_id(), &[2; 16]);
        assert_eq!(s.span_id(), &[2; 8]);
        assert_eq!(s.parent_span_id(), &[1; 8]);
        assert_eq!(s.name(), "span-2");
        assert_eq!((s.start_time_unix_nano, s.end_time_unix_nano), (102, 202));
        // The empty scope is dropped; everything else is what was sent.
        let mut want = req.clone();
        want.resource_spans[1].scope_spans.pop();
        let out = encode_request(&views);
        assert_eq!(ExportTraceServiceRequest::decode(&out[..]).unwrap(), want);
        assert_eq!(out, want.encode_to_vec());
    }

    #[test]
    fn changed_spans_are_re_encoded_and_filtered_spans_left_out() {
        let body = Bytes::from(request().encode_to_vec());
        let mut views = parse_request(&body).unwrap();
        let root = &mut views[0].scope_spans[0].spans[0];
        let mut decoded = root.decode().unwrap();
        decoded.attributes.push(kv_str("user.id", "u"));
        root.replace(&decoded);
        views[1].scope_spans[0].spans.clear();
        let out = ExportTraceServiceRequest::decode(&encode_request(&views)[..]).unwrap();
        assert_eq!(out.resource_spans.len(), 2);
        assert!(out.resource_spans[1].scope_spans.is_empty());
        let spans = &out.resource_spans[0].scope_spans[0].spans;
        assert_eq!(
            find_str(&spans[0].attributes, "user.id").as_deref(),
            Some("u")
        );
        assert_eq!(spans[1], span(2, &[1; 8]));
    }

    #[test]
    fn only_wanted_attributes_are_decoded() {
        let body = Bytes::from(request().encode_to_vec());
        let views = parse_request(&body).unwrap();
        let scope = &views[0].scope_spans[0];
        let attrs = scope.spans[0].attributes_where(&scope.attributes, |k| k == b"session.id");
        assert_eq!(attrs, vec![kv_str("session.id", "s")]);
    }

    /// The attributes noted while a span is checked are the ones prost decodes, in order, also
    /// where a KeyValue repeats its key field (the last wins).
    #[test]
    fn attributes_noted_in_the_walk_are_the_decoded_ones() {
        let mut s = span(1, &[]);
        s.attributes.push(kv_str("x", "y"));
        // A KeyValue `{ key: "first", key: "second", value: "v" }`, spliced in by hand.
        let mut repeated = Vec::new();
        prost::encoding::string::encode(1, &"first".to_string(), &mut repeated);
        prost::encoding::string::encode(1, &"second".to_string(), &mut repeated);
        let value = AnyValue {
            value: Some(Value::StringValue("v".into())),
        };
        prost::encoding::message::encode(2, &value, &mut repeated);
        let mut body = s.encode_to_vec();
        put_framed(&mut body, 9, repeated.len());
        body.extend_from_slice(&repeated);
        let expected = Span::decode(&body[..]).unwrap().attributes;
        assert_eq!(expected.last().map(|kv| kv.key.as_str()), Some("second"));

        // After another span's attributes, as in a scope.
        let mut attributes = vec![AttributeAt {
            key_value: 0..0,
            key: 0..0,
        }];
        let view = SpanView::parse(Bytes::from(body), &mut attributes).unwrap();
        assert_eq!(view.attributes_where(&attributes, |_| true), expected);
        let picked = view.attributes_where(&attributes, |k| k == b"second" || k == b"a");
        assert_eq!(picked.len(), 2);
        assert_eq!(picked[0], kv_str("a", "1"));
        assert_eq!(picked[1].key, "second");
    }

    /// The shortcut for plain attributes takes the shapes SDKs send, and on every input gives
    /// what the schema walk gives (and prost agrees on which are valid).
    #[test]
    fn the_attribute_shortcut_agrees_with_the_schema_walk() {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let kv = |key: &str, value: Option<Value>| {
            KeyValue {
                key: key.into(),
                value: value.map(|v| AnyValue { value: Some(v) }),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let plain = [
            kv(
                "gen_ai.request.model",
                Some(Value::StringValue("gpt-4o".into())),
            ),
            kv("llm.streaming", Some(Value::BoolValue(true))),
            kv("gen_ai.usage.input_tokens", Some(Value::IntValue(-1234))),
            kv("gen_ai.request.temperature", Some(Value::DoubleValue(0.7))),
            kv("kein_wert", None),
            kv(
                "プロンプト",
                Some(Value::StringValue("こんにちは".repeat(40))),
            ),
            kv(&"k".repeat(200), Some(Value::StringValue("v".repeat(300)))),
            [0x0a, 0x01, b'e', 0x12, 0x00].to_vec(), // an empty AnyValue
        ];
        let mut walked_only = vec![
            kv(
                "list",
                Some(Value::ArrayValue(ArrayValue { values: vec![] })),
            ),
            kv("bytes", Some(Value::BytesValue(vec![0xff, 0x00]))),
            [0x12, 0x02, 0x10, 0x01, 0x0a, 0x01, b'k'].to_vec(), // value before key
            [0x0a, 0x01, b'a', 0x0a, 0x01, b'b'].to_vec(),       // a repeated key: the last wins
            [0x0a, 0x01, b'a', 0x18, 0x07].to_vec(),             // key_strindex beside the key
            [0x0a, 0x01, b'a', 0x78, 0x01].to_vec(),             // an unknown field
            Vec::new(),
        ];
        let invalid = [
            [0x0a, 0x01, 0xff].to_vec(), // key not UTF-8
            [0x0a, 0x01, b'k', 0x12, 0x03, 0x0a, 0x01, 0xff].to_vec(), // value not UTF-8
            [0x0a, 0x05, b'k'].to_vec(), // truncated key
            [0x0a, 0x01, b'k', 0x12, 0x05, 0x10].to_vec(), // truncated value
            [0x0a, 0x01, b'k', 0x12, 0x02, 0x21, 0x00].to_vec(), // truncated double
            [0x0a, 0x01, b'k', 0x12, 0x02, 0x0a, 0x05].to_vec(), // string past its value
            [0x0a, 0x01, b'k', 0x10, 0x01].to_vec(), // value as a varint
            [0x0a, 0x01, b'k', 0x12, 0x01, 0x11].to_vec(), // bool as a double
        ];
        for buf in &plain {
            let key = plain_key_value(buf).expect("a plain attribute takes the shortcut");
            let decoded = KeyValue::decode(&buf[..]).expect("prost takes it");
            assert_eq!(&buf[key.clone()], decoded.key.as_bytes());
            walked_only.push(buf.clone());
        }
        for buf in &walked_only {
            let mut walked = 0..0;
            validate_noting(buf, &KEY_VALUE, 1, |field| {
                if let (1, FieldValue::Len(r)) = (field.number, &field.value) {
                    walked = r.clone();
                }
            })
            .expect("the schema walk takes it");
            assert!(KeyValue::decode(&buf[..]).is_ok(), "{buf:?}");
            assert_eq!(validate_key_value(buf, 1).unwrap(), walked, "{buf:?}");
            if let Some(key) = plain_key_value(buf) {
                assert_eq!(key, walked, "{buf:?}");
            }
        }
        for buf in &invalid {
            assert_eq!(plain_key_value(buf), None, "{buf:?}");
            assert!(validate_key_value(buf, 1).is_err(), "{buf:?}");
            assert!(KeyValue::decode(&buf[..]).is_err(), "{buf:?}");
        }
    }

    #[test]
    fn what_prost_refuses_is_refused() {
        // Invalid UTF-8 deep inside an attribute value.
        let mut bad = span(1, &[]);
        bad.attributes.push(kv_str("x", "MARK"));
        let mut bytes = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![bad],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let at = bytes.windows(4).position(|w| w == b"MARK").unwrap();
        bytes[at] = 0xff;
        assert!(ExportTraceServiceRequest::decode(&bytes[..]).is_err());
        let err = parse_request(&Bytes::from(bytes)).unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");

        // Invalid UTF-8 in an attribute's key, and an attribute that is not a message.
        let mut bad_key = span(1, &[]);
        bad_key.attributes.push(kv_str("MARK", "x"));
        let mut bytes = bad_key.encode_to_vec();
        let at = bytes.windows(4).position(|w| w == b"MARK").unwrap();
        bytes[at] = 0xff;
        assert!(Span::decode(&bytes[..]).is_err());
        let err = SpanView::parse(Bytes::from(bytes), &mut Vec::new()).unwrap_err();
        assert!(
            err.to_string()
                .contains("KeyValue: field 1 is not valid UTF-8"),
            "{err}"
        );
        let mut bytes = span(1, &[]).encode_to_vec();
        bytes.extend_from_slice(&[9 << 3, 0x01]);
        assert!(Span::decode(&bytes[..]).is_err());
        let err = SpanView::parse(Bytes::from(bytes), &mut Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("Span: field 9 has wire type 0"),
            "{err}"
        );

        // Truncated, and a known field with the wrong wire type.
        let good = request().encode_to_vec();
        let cut = Bytes::from(good[..good.len() - 3].to_vec());
        assert!(parse_request(&cut).is_err());
        let wrong_type = Bytes::from_static(&[0x0a, 0x04, 0x12, 0x02, 0x10, 0x01]);
        assert!(ExportTraceServiceRequest::decode(&wrong_type[..]).is_err());
        assert!(parse_request(&wrong_type).is_err());
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut value = AnyValue {
            value: Some(Value::StringValue("leaf".into())),
        };
        for _ in 0..150 {
            value = AnyValue {
                value: Some(Value::ArrayValue(ArrayValue {
                    values: vec![value],
                })),
            };
        }
        let mut s = span(1, &[]);
        s.attributes = vec![KeyValue {
            key: "deep".into(),
            value: Some(value),
            ..Default::default()
        }];
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![s],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let err = parse_request(&Bytes::from(body)).unwrap_err();
        assert!(err.to_string().contains("nested"), "{err}");
    }

    #[test]
    fn unknown_fields_travel_unchanged() {
        // Field 99 (varint) inside ResourceSpans and ScopeSpans: not OTLP today, kept anyway.
        let mut rs = request().resource_spans.remove(0).encode_to_vec();
        rs.extend_from_slice(&[0x98, 0x06, 0x07]);
        let mut body = Vec::new();
        put_framed(&mut body, 1, rs.len());
        body.extend_from_slice(&rs);
        let views = parse_request(&Bytes::from(body.clone())).unwrap();
        assert_eq!(encode_request(&views), body);
    }

    fn view_of(span: &Span) -> (SpanView, Vec<AttributeAt>) {
        let mut attributes = Vec::new();
        let view = SpanView::parse(Bytes::from(span.encode_to_vec()), &mut attributes).unwrap();
        (view, attributes)
    }

    /// Set on the wire, a root carries what setting the decoded span gives: values replaced,
    /// a duplicate key left once, new keys added, every other field and attribute unchanged.
    #[test]
    fn string_attributes_set_on_the_wire_match_the_decoded_result() {
        let mut root = span(1, &[]);
        root.attributes = vec![
            kv_str("session.id", "old"),
            kv_str("keep", "k"),
            kv_str("user.id", "u1"),
            kv_str("user.id", "u2"),
        ];
        root.status = Some(Status {
            message: "boom".into(),
            code: 2,
        });
        root.events.push(Event {
            name: "e".into(),
            ..Default::default()
        });
        let set = [
            ("session.id", "new"),
            ("user.id", "u"),
            ("mlflow.traceTag.t", "v"),
        ];
        let (mut view, attributes) = view_of(&root);
        assert_eq!(view.status_code, 2);
        view.set_string_attributes(&attributes, &set);
        let mut on_wire = Span::decode(view.forwarded()).unwrap();

        let mut expected = root.clone();
        expected.attributes = vec![kv_str("keep", "k")];
        expected
            .attributes
            .extend(set.iter().map(|(k, v)| kv_str(k, v)));
        assert_eq!(on_wire, expected);

        // Forwarded as received when every value is already there.
        let (mut again, attributes) = view_of(&on_wire);
        again.set_string_attributes(&attributes, &set);
        assert!(again.rewritten.is_none());
        on_wire.attributes.push(kv_str("user.id", "u"));
        let (mut duplicated, attributes) = view_of(&on_wire);
        duplicated.set_string_attributes(&attributes, &set);
        assert!(
            duplicated.rewritten.is_some(),
            "a duplicated key is set once"
        );
    }
}
