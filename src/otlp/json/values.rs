//! Scalar fields and attribute values: JSON's forms of them, as the proto3 JSON mapping and
//! OTLP allow, written as protobuf fields.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use prost::encoding::{WireType, encode_key, encode_varint};

use super::Transcoder;
use super::lexer::{Bad, Read};
use crate::otlp::wire::put_delimited;

/// `Span.SpanKind` names, by number.
pub const SPAN_KINDS: &[&str] = &[
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];
/// `Status.StatusCode` names, by number.
pub const STATUS_CODES: &[&str] = &["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

/// An integer written as a JSON number or string, plain or in exponent form, if it is whole.
fn parse_integer(text: &str) -> Option<i128> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.len() <= 38 && digits.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    let float: f64 = text.parse().ok()?;
    (float.is_finite() && float.fract() == 0.0 && float.abs() < 1e38).then_some(float as i128)
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn base64(text: &str) -> Option<Vec<u8>> {
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

impl<'a> Transcoder<'a> {
    /// A string value; `None` for `null`. Anything else is consumed and is a fault.
    pub(super) fn string(&mut self) -> Read<Option<String>> {
        Ok(self.text()?.map(Cow::into_owned))
    }

    fn text(&mut self) -> Read<Option<Cow<'a, str>>> {
        match self.lex.peek() {
            Some(b'"') => {
                let (text, repaired) = self.lex.string()?;
                self.repaired |= repaired;
                Ok(Some(text))
            }
            _ if self.null()? => Ok(None),
            _ => {
                self.lex.skip_value()?;
                Err(Bad::fault("expected a string"))
            }
        }
    }

    pub(super) fn string_field(&mut self, out: &mut Vec<u8>, field: u32) -> Read<()> {
        if let Some(text) = self.text()? {
            put_delimited(out, field, text.as_bytes());
        }
        Ok(())
    }

    /// A trace or span id: hex, as OTLP/JSON writes it, or base64, as proto3 JSON does.
    pub(super) fn id_field(&mut self, out: &mut Vec<u8>, field: u32) -> Read<()> {
        let Some(text) = self.text()? else {
            return Ok(());
        };
        let bytes = hex(&text)
            .or_else(|| base64(&text))
            .ok_or_else(|| Bad::fault(format!("id '{text}' is neither hex nor base64")))?;
        put_delimited(out, field, &bytes);
        Ok(())
    }

    fn bytes_field(&mut self, out: &mut Vec<u8>, field: u32) -> Read<()> {
        let Some(text) = self.text()? else {
            return Ok(());
        };
        let bytes = base64(&text).ok_or_else(|| Bad::fault("bytes value is not base64"))?;
        put_delimited(out, field, &bytes);
        Ok(())
    }

    /// An integer within `min..=max`, from a number or a string; `None` for `null`.
    fn integer(&mut self, min: i128, max: i128) -> Read<Option<i128>> {
        let value = match self.lex.peek() {
            Some(b'"') => parse_integer(&self.lex.string()?.0),
            Some(b'-' | b'0'..=b'9') => parse_integer(self.lex.number()?),
            _ if self.null()? => return Ok(None),
            _ => {
                self.lex.skip_value()?;
                return Err(Bad::fault("expected an integer"));
            }
        };
        match value {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            Some(v) => Err(Bad::fault(format!("{v} is out of range"))),
            None => Err(Bad::fault("expected a whole number")),
        }
    }

    pub(super) fn fixed64_field(&mut self, out: &mut Vec<u8>, field: u32) -> Read<()> {
        if let Some(v) = self.integer(0, u64::MAX.into())? {
            encode_key(field, WireType::SixtyFourBit, out);
            out.extend_from_slice(&(v as u64).to_le_bytes());
        }
        Ok(())
    }

    pub(super) fn fixed32_field(&mut self, out: &mut Vec<u8>, field: u32) -> Read<()> {
        if let Some(v) = self.integer(0, u32::MAX.into())? {
            encode_key(field, WireType::ThirtyTwoBit, out);
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        Ok(())
    }

    pub(super) fn uint32_field(&mut self, out: &mut Vec<u8>, field: u32) -> Read<()> {
        if let Some(v) = self.integer(0, u32::MAX.into())? {
            encode_key(field, WireType::Varint, out);
            encode_varint(v as u64, out);
        }
        Ok(())
    }

    fn int64_field(&mut self, out: &mut Vec<u8>, field: u32) -> Read<()> {
        if let Some(v) = self.integer(i64::MIN.into(), i64::MAX.into())? {
            encode_key(field, WireType::Varint, out);
            encode_varint(v as i64 as u64, out);
        }
        Ok(())
    }

    fn int32_field(&mut self, out: &mut Vec<u8>, field: u32) -> Read<()> {
        if let Some(v) = self.integer(i32::MIN.into(), i32::MAX.into())? {
            write_int32(out, field, v as i32);
        }
        Ok(())
    }

    /// An enum: its name, or its number (as a number or a string).
    pub(super) fn enum_field(&mut self, out: &mut Vec<u8>, field: u32, names: &[&str]) -> Read<()> {
        if self.lex.peek() == Some(b'"') {
            let (text, _) = self.lex.string()?;
            let number = match names.iter().position(|n| *n == text) {
                Some(i) => i as i32,
                None => parse_integer(&text)
                    .and_then(|v| i32::try_from(v).ok())
                    .ok_or_else(|| Bad::fault(format!("unknown enum value '{text}'")))?,
            };
            write_int32(out, field, number);
            return Ok(());
        }
        self.int32_field(out, field)
    }

    fn double_field(&mut self, out: &mut Vec<u8>, field: u32) -> Read<()> {
        let value = match self.lex.peek() {
            Some(b'"') => {
                let (text, _) = self.lex.string()?;
                match &*text {
                    "NaN" => f64::NAN,
                    "Infinity" => f64::INFINITY,
                    "-Infinity" => f64::NEG_INFINITY,
                    other => other
                        .parse()
                        .map_err(|_| Bad::fault(format!("'{other}' is not a number")))?,
                }
            }
            Some(b'-' | b'0'..=b'9') => self
                .lex
                .number()?
                .parse()
                .map_err(|_| Bad::fault("not a number"))?,
            _ if self.null()? => return Ok(()),
            _ => {
                self.lex.skip_value()?;
                return Err(Bad::fault("expected a number"));
            }
        };
        encode_key(field, WireType::SixtyFourBit, out);
        out.extend_from_slice(&f64::to_bits(value).to_le_bytes());
        Ok(())
    }

    fn bool_field(&mut self, out: &mut Vec<u8>, field: u32) -> Read<()> {
        match self.lex.keyword() {
            Ok(Some(b)) => {
                encode_key(field, WireType::Varint, out);
                encode_varint(u64::from(b), out);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(Some(e)) => Err(e),
            Err(None) => {
                self.lex.skip_value()?;
                Err(Bad::fault("expected true or false"))
            }
        }
    }

    /// A `KeyValue` at nesting `depth`; its value one level deeper.
    pub(super) fn key_value(&mut self, out: &mut Vec<u8>, depth: usize) -> Read<()> {
        self.object(|t, key| match key {
            "key" => t.string_field(out, 1),
            "value" => t.message(out, 2, depth + 1, Self::any_value),
            "keyStrindex" | "key_strindex" => t.int32_field(out, 3),
            _ => t.lex.skip_value(),
        })
    }

    fn any_value(&mut self, out: &mut Vec<u8>, depth: usize) -> Read<()> {
        self.object(|t, key| match key {
            "stringValue" | "string_value" => t.string_field(out, 1),
            "boolValue" | "bool_value" => t.bool_field(out, 2),
            "intValue" | "int_value" => t.int64_field(out, 3),
            "doubleValue" | "double_value" => t.double_field(out, 4),
            "arrayValue" | "array_value" => t.message(out, 5, depth + 1, Self::array_value),
            "kvlistValue" | "kvlist_value" => t.message(out, 6, depth + 1, Self::kvlist_value),
            "bytesValue" | "bytes_value" => t.bytes_field(out, 7),
            "stringValueStrindex" | "string_value_strindex" => t.int32_field(out, 8),
            _ => t.lex.skip_value(),
        })
    }

    fn array_value(&mut self, out: &mut Vec<u8>, depth: usize) -> Read<()> {
        self.object(|t, key| match key {
            "values" => t.messages(out, 1, depth + 1, Self::any_value),
            _ => t.lex.skip_value(),
        })
    }

    fn kvlist_value(&mut self, out: &mut Vec<u8>, depth: usize) -> Read<()> {
        self.object(|t, key| match key {
            "values" => t.messages(out, 1, depth + 1, Self::key_value),
            _ => t.lex.skip_value(),
        })
    }
}

/// An int32 as protobuf writes it: negative values sign-extended to ten bytes.
fn write_int32(out: &mut Vec<u8>, field: u32, value: i32) {
    encode_key(field, WireType::Varint, out);
    encode_varint(i64::from(value) as u64, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_in_every_form_json_allows() {
        assert_eq!(parse_integer("123"), Some(123));
        assert_eq!(parse_integer("-7"), Some(-7));
        assert_eq!(parse_integer("1e3"), Some(1000));
        assert_eq!(parse_integer("1.0"), Some(1));
        assert_eq!(
            parse_integer("18446744073709551615"),
            Some(u64::MAX as i128)
        );
        assert_eq!(parse_integer("1.5"), None);
        assert_eq!(parse_integer("abc"), None);
        assert_eq!(parse_integer(""), None);
    }

    #[test]
    fn ids_in_hex_or_base64() {
        assert_eq!(hex("00ff"), Some(vec![0, 255]));
        assert_eq!(hex("0f0"), None);
        assert_eq!(hex("zz"), None);
        assert_eq!(base64("AP8="), Some(vec![0, 255]));
        assert_eq!(base64("AP8"), Some(vec![0, 255]));
        assert_eq!(base64("-_8"), Some(vec![251, 255]));
    }
}
