//! The OTLP trace messages' known fields, and the walk that checks an encoded message the way
//! the decoders behind the gateway read it: prost (the gateway's own) and upb (MLflow's). Known
//! fields must have their wire type, nested messages their framing, and nothing may nest deeper
//! than MLflow's decoder reads. Unknown fields are skipped, as both decoders skip them.
//!
//! Strings that are not UTF-8 are not a fault here: the walk reports them and `repaired`
//! rewrites the message with U+FFFD in their place (see the README, "Validate").

use std::borrow::Cow;
use std::ops::Range;

use super::wire::{
    FieldValue, Fields, RawField, WIRE_I32, WIRE_I64, WIRE_LEN, WIRE_VARINT, put_delimited,
    read_delimited, read_varint,
};

/// The deepest message MLflow 3.17.2 reads: upb, its protobuf decoder, refuses a request whose
/// messages nest more than 100 levels below the request itself (kvlist attributes 31 levels
/// deep pass, 32 do not: benches/probes/mlflow_refusals.py).
pub const MLFLOW_MAX_NESTING: usize = 100;
/// The most `receiver.max_nesting_depth` may allow: reading JSON recurses a few frames per
/// level, and 300 levels stay well inside a worker thread's stack.
pub const HARD_MAX_NESTING: usize = 300;

/// Nesting level of a span (request 0, ResourceSpans 1, ScopeSpans 2).
pub const SPAN_DEPTH: usize = 3;
/// Nesting level of a resource and of a scope.
pub const RESOURCE_DEPTH: usize = 2;
pub const SCOPE_DEPTH: usize = 3;

/// What a known field of an OTLP message holds.
#[derive(Clone, Copy)]
pub enum Kind {
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
pub struct Schema {
    pub name: &'static str,
    pub fields: &'static [(u32, Kind)],
}

impl Schema {
    fn kind(&self, number: u32) -> Option<Kind> {
        self.fields
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, k)| *k)
    }
}

pub static KEY_VALUE: Schema = Schema {
    name: "KeyValue",
    fields: &[
        (1, Kind::Str),
        (2, Kind::Msg(&ANY_VALUE)),
        (3, Kind::Varint),
    ],
};
pub static ANY_VALUE: Schema = Schema {
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
pub static ARRAY_VALUE: Schema = Schema {
    name: "ArrayValue",
    fields: &[(1, Kind::Msg(&ANY_VALUE))],
};
pub static KEY_VALUE_LIST: Schema = Schema {
    name: "KeyValueList",
    fields: &[(1, Kind::Msg(&KEY_VALUE))],
};
pub static ENTITY_REF: Schema = Schema {
    name: "EntityRef",
    fields: &[
        (1, Kind::Str),
        (2, Kind::Str),
        (3, Kind::Str),
        (4, Kind::Str),
    ],
};
pub static RESOURCE: Schema = Schema {
    name: "Resource",
    fields: &[
        (1, Kind::Msg(&KEY_VALUE)),
        (2, Kind::Varint),
        (3, Kind::Msg(&ENTITY_REF)),
    ],
};
pub static SCOPE: Schema = Schema {
    name: "InstrumentationScope",
    fields: &[
        (1, Kind::Str),
        (2, Kind::Str),
        (3, Kind::Msg(&KEY_VALUE)),
        (4, Kind::Varint),
    ],
};
pub static EVENT: Schema = Schema {
    name: "Span.Event",
    fields: &[
        (1, Kind::I64),
        (2, Kind::Str),
        (3, Kind::Msg(&KEY_VALUE)),
        (4, Kind::Varint),
    ],
};
pub static LINK: Schema = Schema {
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
pub static STATUS: Schema = Schema {
    name: "Status",
    fields: &[(2, Kind::Str), (3, Kind::Varint)],
};
pub static SPAN: Schema = Schema {
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

/// Why a message that can be framed cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// Not what its schema says: a known field with another wire type, broken framing inside.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Nested deeper than MLflow's decoder reads (it would refuse the whole batch).
    #[error("nested more than {limit} messages deep, which MLflow refuses")]
    TooDeep { limit: usize },
}

impl Fault {
    /// Metric label (`gateway_receiver_spans_rejected_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Fault::Malformed(_) => "malformed",
            Fault::TooDeep { .. } => "too_deep",
        }
    }

    fn malformed(schema: &Schema, what: impl std::fmt::Display) -> Self {
        Fault::Malformed(format!("{}: {what}", schema.name))
    }
}

/// Whether every string a walk checked was UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Utf8 {
    Valid,
    /// Some string was not: `repaired` gives the message with U+FFFD in its place.
    Invalid,
}

impl Utf8 {
    pub fn and(self, other: Utf8) -> Utf8 {
        if self == Utf8::Valid { other } else { self }
    }
}

/// Checks the message `buf` (of `schema`, nested `depth` levels below the request) and every
/// message inside it.
pub fn check(buf: &[u8], schema: &Schema, depth: usize, max_depth: usize) -> Result<Utf8, Fault> {
    check_noting(buf, schema, depth, max_depth, |_| {})
}

/// `check`, showing each checked field of the message (not of nested ones) to `note`.
pub fn check_noting(
    buf: &[u8],
    schema: &Schema,
    depth: usize,
    max_depth: usize,
    mut note: impl FnMut(&RawField),
) -> Result<Utf8, Fault> {
    if depth > max_depth {
        return Err(Fault::TooDeep { limit: max_depth });
    }
    let mut utf8 = Utf8::Valid;
    for field in Fields::new(buf) {
        let field = field.map_err(|e| Fault::malformed(schema, e))?;
        utf8 = utf8.and(check_field(buf, schema, &field, depth, max_depth)?);
        note(&field);
    }
    Ok(utf8)
}

/// Checks one field of a `schema` message found at `depth` (see `check`).
pub fn check_field(
    buf: &[u8],
    schema: &Schema,
    field: &RawField,
    depth: usize,
    max_depth: usize,
) -> Result<Utf8, Fault> {
    let Some(kind) = schema.kind(field.number) else {
        return Ok(Utf8::Valid);
    };
    if field.value.wire_type() != kind.wire_type() {
        return Err(Fault::malformed(
            schema,
            format!(
                "field {} has wire type {}, expected {}",
                field.number,
                field.value.wire_type(),
                kind.wire_type()
            ),
        ));
    }
    match (&field.value, kind) {
        (FieldValue::Len(range), Kind::Str) if !is_utf8(&buf[range.clone()]) => Ok(Utf8::Invalid),
        (FieldValue::Len(range), Kind::Msg(inner)) => {
            check(&buf[range.clone()], inner, depth + 1, max_depth)
        }
        _ => Ok(Utf8::Valid),
    }
}

fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// Checks an encoded `KeyValue` found at `depth` (see `check`) and returns where its key is
/// (prost keeps the last of repeated keys; so does this).
pub fn check_key_value(
    buf: &[u8],
    depth: usize,
    max_depth: usize,
) -> Result<(Range<usize>, Utf8), Fault> {
    // The shortcut's deepest message is the value, one level down.
    if depth < max_depth
        && let Some(key) = plain_key_value(buf)
    {
        return Ok((key, Utf8::Valid));
    }
    let mut key = 0..0;
    let utf8 = check_noting(buf, &KEY_VALUE, depth, max_depth, |field| {
        if let (1, FieldValue::Len(r)) = (field.number, &field.value) {
            key = r.clone();
        }
    })?;
    Ok((key, utf8))
}

/// The key of an attribute in the shape SDKs write: the key, then (if any) a value holding one
/// string, bool, int or double, each field once and in that order. `None` for anything else,
/// valid or not, which `check_key_value` then walks by the schema: this shortcut accepts only
/// what that walk accepts, and leaves every error to it. Attributes are most of a span's
/// fields, and walking them by the schema tables was most of the check's cost; this shortcut
/// halves it (BENCHMARKS.md, "Decisions").
pub fn plain_key_value(buf: &[u8]) -> Option<Range<usize>> {
    let delimited = |buf: &[u8], pos: &mut usize| read_delimited(buf, pos).ok();
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
    if !is_utf8(&buf[key.clone()]) {
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
        STRING => delimited(rest, &mut at).is_some_and(|s| is_utf8(&rest[s])),
        BOOL | INT => read_varint(rest, &mut at).is_ok(),
        DOUBLE => {
            at = 8;
            rest.len() >= 8
        }
        _ => false,
    };
    (whole && at == rest.len()).then_some(key)
}

/// The message with every string that is not UTF-8 replaced as `String::from_utf8_lossy` does
/// (each broken sequence becomes U+FFFD), every other byte as it was. Borrowed when nothing
/// needed replacing. Only for messages `check` passed.
pub fn repaired<'a>(buf: &'a [u8], schema: &Schema) -> Cow<'a, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    for field in Fields::new(buf).flatten() {
        let replacement = match (schema.kind(field.number), &field.value) {
            (Some(Kind::Str), FieldValue::Len(r)) if !is_utf8(&buf[r.clone()]) => Some(
                String::from_utf8_lossy(&buf[r.clone()])
                    .into_owned()
                    .into_bytes(),
            ),
            (Some(Kind::Msg(inner)), FieldValue::Len(r)) => {
                match repaired(&buf[r.clone()], inner) {
                    Cow::Owned(v) => Some(v),
                    Cow::Borrowed(_) => None,
                }
            }
            _ => None,
        };
        match (replacement, &mut out) {
            (Some(payload), out) => {
                let out = out.get_or_insert_with(|| buf[..field.whole.start].to_vec());
                put_delimited(out, field.number, &payload);
            }
            (None, Some(out)) => out.extend_from_slice(&buf[field.whole]),
            (None, None) => {}
        }
    }
    out.map_or(Cow::Borrowed(buf), Cow::Owned)
}

#[cfg(test)]
mod tests;
