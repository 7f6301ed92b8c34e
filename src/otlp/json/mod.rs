//! OTLP/JSON transcoded onto the protobuf wire, so JSON requests take the protobuf path from
//! here on and both encodings accept exactly the same inputs.
//!
//! It reads what the OTLP specification and the proto3 JSON mapping allow: field names in
//! lowerCamelCase or as in the .proto (snake_case), enums as names or numbers, 64-bit integers as
//! strings or numbers, ids as hex (OTLP) or base64 (proto3), `null` for an absent field;
//! unknown fields are skipped. A span whose fields do not fit their types is set aside with a
//! fault, as the protobuf reader sets aside a span it cannot read, and its siblings go on. Only
//! text that is not JSON, or that is not shaped like OTLP above the spans, refuses the request.

mod lexer;
mod values;

use super::request::Rejected;
use super::schema::{Fault, RESOURCE_DEPTH, SCOPE_DEPTH, SPAN_DEPTH};
use super::wire::put_delimited;
use lexer::{Bad, Lexer, Read};

/// A JSON request on the protobuf wire.
#[derive(Debug, Default)]
pub struct Transcoded {
    /// The encoded `ExportTraceServiceRequest`, without the spans set aside.
    pub body: Vec<u8>,
    pub rejected: Vec<Rejected>,
    /// Spans with text that was not UTF-8 (raw, or an escaped lone surrogate), now U+FFFD.
    pub repaired_spans: usize,
    /// The first member not in the schema above the spans (see `ParsedRequest`).
    pub unknown_field: Option<String>,
}

/// Text that is not JSON, or not an OTLP request above the spans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(String);

/// Transcodes an OTLP/JSON `ExportTraceServiceRequest`; `max_depth` bounds message nesting as
/// for protobuf (`schema::check`).
pub fn transcode(json: &[u8], max_depth: usize) -> Result<Transcoded, JsonError> {
    let mut t = Transcoder {
        lex: Lexer::new(json),
        max_depth,
        pool: Vec::new(),
        repaired: false,
        out: Transcoded::default(),
    };
    match t.request() {
        Ok(body) => {
            t.out.body = body;
            Ok(t.out)
        }
        Err(Bad::Request(what)) => Err(JsonError(what)),
        Err(Bad::Fault(f)) => Err(JsonError(f.to_string())),
    }
}

struct Transcoder<'a> {
    lex: Lexer<'a>,
    max_depth: usize,
    /// Buffers for nested messages, reused (a message is written into one, then framed into
    /// its parent).
    pool: Vec<Vec<u8>>,
    /// Some text in what is being read was repaired.
    repaired: bool,
    out: Transcoded,
}

impl<'a> Transcoder<'a> {
    fn buffer(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_default()
    }

    fn give_back(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        self.pool.push(buf);
    }

    /// Reads an object, handing each member's key to `member`, which must consume its value.
    /// A member's fault does not stop the object: it is read to its end and the first fault
    /// returned.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &str) -> Read<()>) -> Read<()> {
        self.lex.eat(b'{')?;
        self.sequence(b'}', |t| {
            let (key, _) = t.lex.string()?;
            t.lex.eat(b':')?;
            member(t, &key)
        })
    }

    /// Reads an array element by element (same rules as `object`); `null` is an empty array.
    fn array(&mut self, element: impl FnMut(&mut Self) -> Read<()>) -> Read<()> {
        if self.null()? {
            return Ok(());
        }
        if self.lex.peek() != Some(b'[') {
            self.lex.skip_value()?;
            return Err(Bad::fault("expected an array"));
        }
        self.lex.eat(b'[')?;
        self.sequence(b']', element)
    }

    /// The items of an object or array after its opening bracket, up to `close`: each read by
    /// `item`, the first fault kept and returned once all are read.
    fn sequence(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Read<()>) -> Read<()> {
        if self.lex.eat_if(close) {
            return Ok(());
        }
        let mut fault = None;
        loop {
            match item(self) {
                Ok(()) => {}
                Err(Bad::Fault(f)) => {
                    fault.get_or_insert(f);
                }
                Err(e) => return Err(e),
            }
            if !self.lex.eat_if(b',') {
                self.lex.eat(close)?;
                return fault.map_or(Ok(()), |f| Err(Bad::Fault(f)));
            }
        }
    }

    /// An array of the containers above the spans, whose shape the request cannot do without.
    fn containers(
        &mut self,
        what: &str,
        mut element: impl FnMut(&mut Self) -> Read<()>,
    ) -> Read<()> {
        if self.null()? {
            return Ok(());
        }
        if self.lex.peek() != Some(b'[') {
            return Err(self.lex.error(&format!("{what} must be an array")));
        }
        self.array(|t| {
            if t.lex.peek() != Some(b'{') {
                return Err(t.lex.error(&format!("{what} must hold objects")));
            }
            element(t)
        })
    }

    /// Consumes `null` if it comes next.
    fn null(&mut self) -> Read<bool> {
        if self.lex.peek() != Some(b'n') {
            return Ok(false);
        }
        match self.lex.keyword() {
            Ok(None) => Ok(true),
            Ok(Some(_)) => Ok(false),
            Err(e) => Err(e.unwrap_or_else(|| self.lex.error("expected a value"))),
        }
    }

    /// A nested message as field `field` of `out`, read by `read` at nesting `depth`.
    fn message(
        &mut self,
        out: &mut Vec<u8>,
        field: u32,
        depth: usize,
        read: impl FnOnce(&mut Self, &mut Vec<u8>, usize) -> Read<()>,
    ) -> Read<()> {
        if self.null()? {
            return Ok(());
        }
        if depth > self.max_depth {
            self.lex.skip_value()?;
            return Err(Bad::Fault(Fault::TooDeep {
                limit: self.max_depth,
            }));
        }
        if self.lex.peek() != Some(b'{') {
            self.lex.skip_value()?;
            return Err(Bad::fault("expected an object"));
        }
        let mut inner = self.buffer();
        let result = read(self, &mut inner, depth);
        if result.is_ok() {
            put_delimited(out, field, &inner);
        }
        self.give_back(inner);
        result
    }

    /// A repeated message field: an array of objects, each read by `read`.
    fn messages(
        &mut self,
        out: &mut Vec<u8>,
        field: u32,
        depth: usize,
        read: impl Fn(&mut Self, &mut Vec<u8>, usize) -> Read<()> + Copy,
    ) -> Read<()> {
        self.array(|t| {
            if t.lex.peek() == Some(b'n') {
                t.lex.skip_value()?;
                return Err(Bad::fault("null in a list of messages"));
            }
            t.message(out, field, depth, read)
        })
    }

    fn note_unknown(&mut self, message: &str, key: &str) {
        self.out
            .unknown_field
            .get_or_insert_with(|| format!("'{key}' in {message}"));
    }

    fn request(&mut self) -> Read<Vec<u8>> {
        if self.lex.peek() != Some(b'{') {
            return Err(self.lex.error("an OTLP/JSON request must be an object"));
        }
        let mut body = Vec::new();
        let result = self.object(|t, key| match key {
            "resourceSpans" | "resource_spans" => {
                t.containers("resourceSpans", |t| t.resource_spans(&mut body))
            }
            _ => {
                t.note_unknown("ExportTraceServiceRequest", key);
                t.lex.skip_value()
            }
        });
        match result {
            Err(Bad::Fault(f)) => return Err(Bad::Request(f.to_string())),
            other => other?,
        }
        if !self.lex.at_end() {
            return Err(self.lex.error("text after the request"));
        }
        Ok(body)
    }

    fn resource_spans(&mut self, out: &mut Vec<u8>) -> Read<()> {
        let outer = std::mem::replace(&mut self.repaired, false);
        let mut body = self.buffer();
        let mut spans = 0;
        let mut repaired = 0;
        let result = self.object(|t, key| match key {
            "resource" => t.message(&mut body, 1, RESOURCE_DEPTH, Self::resource),
            "scopeSpans" | "scope_spans" => t.containers("scopeSpans", |t| {
                let (n, r) = t.scope_spans(&mut body)?;
                spans += n;
                repaired += r;
                Ok(())
            }),
            "schemaUrl" | "schema_url" => t.string_field(&mut body, 3),
            _ => {
                t.note_unknown("ResourceSpans", key);
                t.lex.skip_value()
            }
        });
        let own = std::mem::replace(&mut self.repaired, outer);
        let result = match result {
            Ok(()) => {
                put_delimited(out, 1, &body);
                self.out.repaired_spans += if own { spans } else { repaired };
                Ok(())
            }
            Err(Bad::Fault(fault)) => {
                if spans > 0 {
                    self.out.rejected.push(Rejected {
                        fault,
                        subject: "resource".into(),
                        spans,
                    });
                }
                Ok(())
            }
            Err(e) => Err(e),
        };
        self.give_back(body);
        result
    }

    /// Reads a `ScopeSpans` into `out`; returns how many of its spans were kept and how many
    /// of those were repaired.
    fn scope_spans(&mut self, out: &mut Vec<u8>) -> Read<(usize, usize)> {
        let outer = std::mem::replace(&mut self.repaired, false);
        let mut body = self.buffer();
        let mut spans = 0;
        let mut repaired = 0;
        let result = self.object(|t, key| match key {
            "scope" => t.message(&mut body, 1, SCOPE_DEPTH, Self::scope),
            "spans" => t.containers("spans", |t| {
                if let Some(was_repaired) = t.span(&mut body)? {
                    spans += 1;
                    repaired += usize::from(was_repaired);
                }
                Ok(())
            }),
            "schemaUrl" | "schema_url" => t.string_field(&mut body, 3),
            _ => {
                t.note_unknown("ScopeSpans", key);
                t.lex.skip_value()
            }
        });
        let own = std::mem::replace(&mut self.repaired, outer);
        let result = match result {
            Ok(()) if spans > 0 => {
                put_delimited(out, 2, &body);
                Ok((spans, if own { spans } else { repaired }))
            }
            Ok(()) => Ok((0, 0)),
            Err(Bad::Fault(fault)) => {
                if spans > 0 {
                    self.out.rejected.push(Rejected {
                        fault,
                        subject: "scope".into(),
                        spans,
                    });
                }
                Ok((0, 0))
            }
            Err(e) => Err(e),
        };
        self.give_back(body);
        result
    }

    /// Reads a span into `out` (as `ScopeSpans.spans`). `Some(repaired)` when it was kept,
    /// `None` when it was set aside (and recorded).
    fn span(&mut self, out: &mut Vec<u8>) -> Read<Option<bool>> {
        let outer = std::mem::replace(&mut self.repaired, false);
        let mut body = self.buffer();
        let mut name = None;
        let result = self.object(|t, key| match key {
            "traceId" | "trace_id" => t.id_field(&mut body, 1),
            "spanId" | "span_id" => t.id_field(&mut body, 2),
            "traceState" | "trace_state" => t.string_field(&mut body, 3),
            "parentSpanId" | "parent_span_id" => t.id_field(&mut body, 4),
            "flags" => t.fixed32_field(&mut body, 16),
            "name" => {
                if let Some(text) = t.string()? {
                    put_delimited(&mut body, 5, text.as_bytes());
                    name = Some(text);
                }
                Ok(())
            }
            "kind" => t.enum_field(&mut body, 6, values::SPAN_KINDS),
            "startTimeUnixNano" | "start_time_unix_nano" => t.fixed64_field(&mut body, 7),
            "endTimeUnixNano" | "end_time_unix_nano" => t.fixed64_field(&mut body, 8),
            "attributes" => t.messages(&mut body, 9, SPAN_DEPTH + 1, Self::key_value),
            "droppedAttributesCount" | "dropped_attributes_count" => t.uint32_field(&mut body, 10),
            "events" => t.messages(&mut body, 11, SPAN_DEPTH + 1, Self::event),
            "droppedEventsCount" | "dropped_events_count" => t.uint32_field(&mut body, 12),
            "links" => t.messages(&mut body, 13, SPAN_DEPTH + 1, Self::link),
            "droppedLinksCount" | "dropped_links_count" => t.uint32_field(&mut body, 14),
            "status" => t.message(&mut body, 15, SPAN_DEPTH + 1, Self::status),
            _ => t.lex.skip_value(),
        });
        let repaired = std::mem::replace(&mut self.repaired, outer);
        let result = match result {
            Ok(()) => {
                put_delimited(out, 2, &body);
                Ok(Some(repaired))
            }
            Err(Bad::Fault(fault)) => {
                self.out.rejected.push(Rejected {
                    fault,
                    subject: match name {
                        Some(name) => format!("span '{name}'"),
                        None => "span".into(),
                    },
                    spans: 1,
                });
                Ok(None)
            }
            Err(e) => Err(e),
        };
        self.give_back(body);
        result
    }

    fn resource(&mut self, out: &mut Vec<u8>, depth: usize) -> Read<()> {
        self.object(|t, key| match key {
            "attributes" => t.messages(out, 1, depth + 1, Self::key_value),
            "droppedAttributesCount" | "dropped_attributes_count" => t.uint32_field(out, 2),
            "entityRefs" | "entity_refs" => t.messages(out, 3, depth + 1, Self::entity_ref),
            _ => t.lex.skip_value(),
        })
    }

    fn entity_ref(&mut self, out: &mut Vec<u8>, _depth: usize) -> Read<()> {
        self.object(|t, key| match key {
            "schemaUrl" | "schema_url" => t.string_field(out, 1),
            "type" => t.string_field(out, 2),
            "idKeys" | "id_keys" => t.array(|t| t.string_field(out, 3)),
            "descriptionKeys" | "description_keys" => t.array(|t| t.string_field(out, 4)),
            _ => t.lex.skip_value(),
        })
    }

    fn scope(&mut self, out: &mut Vec<u8>, depth: usize) -> Read<()> {
        self.object(|t, key| match key {
            "name" => t.string_field(out, 1),
            "version" => t.string_field(out, 2),
            "attributes" => t.messages(out, 3, depth + 1, Self::key_value),
            "droppedAttributesCount" | "dropped_attributes_count" => t.uint32_field(out, 4),
            _ => t.lex.skip_value(),
        })
    }

    fn event(&mut self, out: &mut Vec<u8>, depth: usize) -> Read<()> {
        self.object(|t, key| match key {
            "timeUnixNano" | "time_unix_nano" => t.fixed64_field(out, 1),
            "name" => t.string_field(out, 2),
            "attributes" => t.messages(out, 3, depth + 1, Self::key_value),
            "droppedAttributesCount" | "dropped_attributes_count" => t.uint32_field(out, 4),
            _ => t.lex.skip_value(),
        })
    }

    fn link(&mut self, out: &mut Vec<u8>, depth: usize) -> Read<()> {
        self.object(|t, key| match key {
            "traceId" | "trace_id" => t.id_field(out, 1),
            "spanId" | "span_id" => t.id_field(out, 2),
            "traceState" | "trace_state" => t.string_field(out, 3),
            "attributes" => t.messages(out, 4, depth + 1, Self::key_value),
            "droppedAttributesCount" | "dropped_attributes_count" => t.uint32_field(out, 5),
            "flags" => t.fixed32_field(out, 6),
            _ => t.lex.skip_value(),
        })
    }

    fn status(&mut self, out: &mut Vec<u8>, _depth: usize) -> Read<()> {
        self.object(|t, key| match key {
            "message" => t.string_field(out, 2),
            "code" => t.enum_field(out, 3, values::STATUS_CODES),
            _ => t.lex.skip_value(),
        })
    }
}

#[cfg(test)]
mod tests;
