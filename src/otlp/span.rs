//! One span read in place: checked by the schema walk, its ids, times, status and attribute
//! positions noted, and forwarded byte for byte unless the gateway changes it.

use std::ops::Range;

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;

use super::schema::{self, Fault, SPAN, SPAN_DEPTH, Utf8};
use super::wire::{FieldValue, Fields, WireError, framed_len, put_framed};

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
    /// It has an event named "exception" (OTel's recorded exception).
    pub has_exception_event: bool,
    /// Where its attributes are in its scope's `attributes`: found while the span was checked,
    /// so that picking the mapped ones does not walk the span again (BENCHMARKS.md,
    /// "Decisions"). One list per scope, not one per span: a list per span was an allocation
    /// per span.
    attributes: Range<usize>,
    /// The span re-encoded after the gateway changed it (root enrichment, fitted values).
    rewritten: Option<Bytes>,
    /// Fields appended after the span's bytes (a span type, a status): protobuf lets a later
    /// field add to a message, so most spans need no copy to gain them.
    appended: Appended,
    /// Some string in it was not UTF-8 and was replaced with U+FFFD.
    pub repaired: bool,
}

impl SpanView {
    /// Checks the span (see `schema::check`) and notes what the gateway reads, in one walk; its
    /// attributes go to the end of `attributes`. A span with strings that are not UTF-8 is
    /// repaired and read again. On a fault `attributes` is left as it was.
    pub fn parse(
        body: Bytes,
        attributes: &mut Vec<AttributeAt>,
        max_depth: usize,
    ) -> Result<Self, Fault> {
        let first = attributes.len();
        let result = match Self::walk(body.clone(), attributes, max_depth) {
            Ok((view, Utf8::Valid)) => Ok(view),
            Ok((_, Utf8::Invalid)) => {
                attributes.truncate(first);
                let fixed = Bytes::from(schema::repaired(&body, &SPAN).into_owned());
                Self::walk(fixed, attributes, max_depth).map(|(mut view, _)| {
                    view.repaired = true;
                    view
                })
            }
            Err(fault) => Err(fault),
        };
        if result.is_err() {
            attributes.truncate(first);
        }
        result
    }

    fn walk(
        body: Bytes,
        attributes: &mut Vec<AttributeAt>,
        max_depth: usize,
    ) -> Result<(Self, Utf8), Fault> {
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
            has_exception_event: false,
            attributes: 0..0,
            rewritten: None,
            appended: Appended::default(),
            repaired: false,
        };
        let mut utf8 = Utf8::Valid;
        // On repeats the last value wins, as in prost.
        for field in Fields::new(&body) {
            let field = field.map_err(|e| Fault::Malformed(format!("{}: {e}", SPAN.name)))?;
            if let (9, FieldValue::Len(r)) = (field.number, &field.value) {
                let (key, text) =
                    schema::check_key_value(&body[r.clone()], SPAN_DEPTH + 1, max_depth)?;
                utf8 = utf8.and(text);
                attributes.push(AttributeAt {
                    key_value: r.clone(),
                    key: r.start + key.start..r.start + key.end,
                });
                continue;
            }
            utf8 = utf8.and(schema::check_field(
                &body, &SPAN, &field, SPAN_DEPTH, max_depth,
            )?);
            match (field.number, field.value) {
                (1, FieldValue::Len(r)) => view.trace_id = r,
                (2, FieldValue::Len(r)) => view.span_id = r,
                (4, FieldValue::Len(r)) => view.parent_span_id = r,
                (5, FieldValue::Len(r)) => view.name = r,
                (7, FieldValue::I64(v)) => view.start_time_unix_nano = v,
                (8, FieldValue::I64(v)) => view.end_time_unix_nano = v,
                (11, FieldValue::Len(r)) => {
                    // Checked above. Event.name is field 2.
                    let event = &body[r];
                    view.has_exception_event |= Fields::new(event).flatten().any(|f| {
                        matches!(&f.value, FieldValue::Len(name)
                            if f.number == 2 && &event[name.clone()] == b"exception")
                    });
                }
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
        Ok((view, utf8))
    }

    /// The name of a span that could not be read, as far as it can be, for the client's
    /// message.
    pub fn name_of_unreadable(body: &[u8]) -> Option<String> {
        Fields::new(body)
            .map_while(Result::ok)
            .filter_map(|f| match (f.number, f.value) {
                (5, FieldValue::Len(r)) => Some(String::from_utf8_lossy(&body[r]).into_owned()),
                _ => None,
            })
            .last()
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

    /// The name's bytes, sharing the span's buffer (no copy). Checked as UTF-8 by the walk.
    pub fn name_bytes(&self) -> Bytes {
        self.body.slice(self.name.clone())
    }

    pub fn name(&self) -> &str {
        // Checked as UTF-8 by the walk (or repaired).
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

    /// Whether one of its attributes has a key that passes `wanted` (nothing is decoded).
    pub fn any_attribute_key(
        &self,
        attributes: &[AttributeAt],
        mut wanted: impl FnMut(&[u8]) -> bool,
    ) -> bool {
        self.own_attributes(attributes)
            .iter()
            .any(|at| wanted(self.key(at)))
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

    /// Sets string attributes without decoding the span. Keys the span lacks are appended (no
    /// copy of the span); where it holds a key with another value, or holds it twice, those
    /// attributes are left out of a rewritten span and the new ones appended (protobuf allows
    /// fields in any order). A span that already holds every value is forwarded as received.
    /// For roots, whose decode and re-encode was a visible share of the gateway's CPU at its
    /// ceiling. `attributes` is the list of the span's scope (`ScopeSpansView::attributes`).
    pub fn set_string_attributes(
        &mut self,
        attributes: &[AttributeAt],
        set: &[(impl AsRef<str>, &str)],
    ) {
        let mine = self.own_attributes(attributes);
        let mut missing = 0;
        for (key, value) in set {
            let mut found = mine
                .iter()
                .filter(|at| self.key(at) == key.as_ref().as_bytes());
            match (found.next(), found.next()) {
                (None, _) => missing += 1,
                (Some(at), None) if self.holds_string(at, key.as_ref(), value) => {}
                _ => return self.rewrite_with(mine, set),
            }
        }
        if missing == 0 {
            return;
        }
        for (key, value) in set {
            let key = key.as_ref();
            if !mine.iter().any(|at| self.key(at) == key.as_bytes()) {
                self.append_string_attribute(key, value);
            }
        }
    }

    /// Whether the attribute at `at` is `key` with the string `value`, encoded as the gateway
    /// would encode it (another encoding of the same value reads as different: the span is
    /// then rewritten, which is still right).
    fn holds_string(&self, at: &AttributeAt, key: &str, value: &str) -> bool {
        let Some(mut rest) = self.body.get(at.key_value.clone()) else {
            return false;
        };
        let mut expect = |field: u32, len: usize, payload: &[u8]| {
            let mut head = [0u8; 11];
            let head_len = {
                let mut cursor = &mut head[..];
                put_framed(&mut cursor, field, len);
                11 - bytes::BufMut::remaining_mut(&cursor)
            };
            let ok = rest.starts_with(&head[..head_len]) && rest[head_len..].starts_with(payload);
            rest = rest.get(head_len + payload.len()..).unwrap_or_default();
            ok
        };
        expect(1, key.len(), key.as_bytes())
            && expect(2, framed_len(value.len()), &[])
            && expect(1, value.len(), value.as_bytes())
            && rest.is_empty()
    }

    /// The span re-encoded without its attributes whose keys `set` names, with `set` after.
    fn rewrite_with(&mut self, mine: &[AttributeAt], set: &[(impl AsRef<str>, &str)]) {
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
            put_string_key_value(&mut out, key.as_ref(), value);
        }
        self.rewritten = Some(Bytes::from(out));
    }

    /// Forward `span` instead of the received bytes (appended fields still follow).
    pub fn replace(&mut self, span: &Span) {
        self.rewritten = Some(Bytes::from(span.encode_to_vec()));
    }

    /// Adds a string attribute after the span's own; for a key the span does not hold (a
    /// repeated key would leave the reader to pick one).
    pub fn append_string_attribute(&mut self, key: &str, value: &str) {
        let len = framed_len(string_key_value_len(key, value));
        self.appended
            .put(len, |out| put_string_key_value(out, key, value));
    }

    /// Adds an integer attribute after the span's own; for a key the span does not hold.
    pub fn append_int_attribute(&mut self, key: &str, value: i64) {
        use bytes::BufMut;
        // AnyValue.int_value is field 3, a varint of at most ten bytes.
        let mut any = [0u8; 11];
        let any_len = {
            let mut cursor = &mut any[..];
            cursor.put_u8(3 << 3);
            prost::encoding::encode_varint(value as u64, &mut cursor);
            11 - cursor.remaining_mut()
        };
        let any = &any[..any_len];
        let len = framed_len(framed_len(key.len()) + framed_len(any.len()));
        self.appended.put(len, |out| put_key_value(out, key, any));
    }

    /// Sets the status code (OTLP's 0-2), keeping the status message: a second `status` field
    /// is merged into the first by protobuf readers, so only the code changes.
    pub fn set_status_code(&mut self, code: StatusCode) {
        // Field 15 (Status), length 2: field 3 (code) as a one-byte varint.
        let status = [15 << 3 | 2, 2, 3 << 3, code as u8];
        self.appended
            .put(status.len(), |out| out.copy_from_slice(&status));
        self.status_code = code as i32;
    }

    /// Length of the bytes that go on to MLflow.
    pub fn forwarded_len(&self) -> usize {
        self.own_bytes().len() + self.appended.as_slice().len()
    }

    /// Writes the bytes that go on to MLflow.
    pub fn write_forwarded(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.own_bytes());
        out.extend_from_slice(self.appended.as_slice());
    }

    /// The bytes that go on to MLflow, in one piece.
    pub fn forwarded(&self) -> std::borrow::Cow<'_, [u8]> {
        if self.appended.as_slice().is_empty() {
            std::borrow::Cow::Borrowed(self.own_bytes())
        } else {
            let mut out = Vec::with_capacity(self.forwarded_len());
            self.write_forwarded(&mut out);
            std::borrow::Cow::Owned(out)
        }
    }

    fn own_bytes(&self) -> &[u8] {
        self.rewritten.as_deref().unwrap_or(&self.body)
    }
}

/// Fields appended to a span. The usual ones (a span type and a status, under 40 bytes) fit
/// inline, so adding them to every span allocates nothing.
#[derive(Debug, Clone)]
struct Appended {
    inline: [u8; APPENDED_INLINE],
    len: u8,
    spilled: Vec<u8>,
}

/// Room for `mlflow.spanType` with the longest type MLflow names, `mlflow.spanLogLevel` and a
/// status.
const APPENDED_INLINE: usize = 80;

impl Default for Appended {
    fn default() -> Self {
        Self {
            inline: [0; APPENDED_INLINE],
            len: 0,
            spilled: Vec::new(),
        }
    }
}

impl Appended {
    /// Adds `len` bytes that `write` fills, inline while they fit.
    fn put(&mut self, len: usize, write: impl FnOnce(&mut &mut [u8])) {
        let used = usize::from(self.len);
        if self.spilled.is_empty() && used + len <= APPENDED_INLINE {
            write(&mut &mut self.inline[used..used + len]);
            self.len = (used + len) as u8;
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.inline[..used]);
            }
            let start = self.spilled.len();
            self.spilled.resize(start + len, 0);
            write(&mut &mut self.spilled[start..]);
        }
    }

    fn as_slice(&self) -> &[u8] {
        if self.spilled.is_empty() {
            &self.inline[..usize::from(self.len)]
        } else {
            &self.spilled
        }
    }
}

/// Writes attribute field `KeyValue { key, value: AnyValue { string_value } }`.
fn put_string_key_value(out: &mut impl bytes::BufMut, key: &str, value: &str) {
    put_framed(out, 9, string_key_value_len(key, value));
    put_framed(out, 1, key.len());
    out.put_slice(key.as_bytes());
    put_framed(out, 2, framed_len(value.len()));
    put_framed(out, 1, value.len());
    out.put_slice(value.as_bytes());
}

/// Writes attribute field `KeyValue { key, value }` with `any`, an encoded `AnyValue`.
fn put_key_value(out: &mut impl bytes::BufMut, key: &str, any: &[u8]) {
    put_framed(out, 9, framed_len(key.len()) + framed_len(any.len()));
    put_framed(out, 1, key.len());
    out.put_slice(key.as_bytes());
    put_framed(out, 2, any.len());
    out.put_slice(any);
}

/// Length of an encoded `KeyValue { key, value: AnyValue { string_value } }`.
fn string_key_value_len(key: &str, value: &str) -> usize {
    framed_len(key.len()) + framed_len(framed_len(value.len()))
}
