//! The protobuf wire format at its lowest: fields read in place (number, wire type, where the
//! value and the whole field sit) and length-delimited fields written back.

use std::ops::Range;

use bytes::BufMut;

pub const WIRE_VARINT: u8 = 0;
pub const WIRE_I64: u8 = 1;
pub const WIRE_LEN: u8 = 2;
pub const WIRE_I32: u8 = 5;

/// A message whose framing is broken; the text says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(String);

impl WireError {
    pub fn new(what: impl Into<String>) -> Self {
        Self(what.into())
    }

    /// The same error, said of a field of `message`.
    pub fn within(self, message: &str) -> Self {
        Self(format!("{message}: {}", self.0))
    }
}

/// One field as it sits in a message: its number, wire type, value and its whole encoding.
#[derive(Debug, Clone)]
pub struct RawField {
    pub number: u32,
    pub value: FieldValue,
    /// Tag, length (if any) and value: what to copy to forward the field unchanged.
    pub whole: Range<usize>,
}

#[derive(Debug, Clone)]
pub enum FieldValue {
    Varint(u64),
    I64(u64),
    I32(u32),
    Len(Range<usize>),
}

impl FieldValue {
    pub fn wire_type(&self) -> u8 {
        match self {
            FieldValue::Varint(_) => WIRE_VARINT,
            FieldValue::I64(_) => WIRE_I64,
            FieldValue::Len(_) => WIRE_LEN,
            FieldValue::I32(_) => WIRE_I32,
        }
    }
}

pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
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
pub fn read_delimited(buf: &[u8], pos: &mut usize) -> Result<Range<usize>, WireError> {
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
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn read(&mut self) -> Result<RawField, WireError> {
        let start = self.pos;
        let key = read_varint(self.buf, &mut self.pos)?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|n| *n > 0 && *n < (1 << 29))
            .ok_or_else(|| WireError::new(format!("invalid field number {}", key >> 3)))?;
        let value = match (key & 7) as u8 {
            WIRE_VARINT => FieldValue::Varint(read_varint(self.buf, &mut self.pos)?),
            WIRE_I64 => FieldValue::I64(u64::from_le_bytes(self.fixed()?)),
            WIRE_I32 => FieldValue::I32(u32::from_le_bytes(self.fixed()?)),
            WIRE_LEN => FieldValue::Len(read_delimited(self.buf, &mut self.pos)?),
            other => return Err(WireError::new(format!("unsupported wire type {other}"))),
        };
        Ok(RawField {
            number,
            value,
            whole: start..self.pos,
        })
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + N)
            .and_then(|b| <[u8; N]>::try_from(b).ok())
            .ok_or_else(|| WireError::new("truncated fixed-width field"))?;
        self.pos += N;
        Ok(bytes)
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

pub fn varint_len(v: usize) -> usize {
    prost::encoding::encoded_len_varint(v as u64)
}

/// Length of a length-delimited field with a one-byte tag (field numbers 1-15).
pub fn framed_len(payload: usize) -> usize {
    1 + varint_len(payload) + payload
}

/// Writes the tag and length of a length-delimited field numbered 1-15.
pub fn put_framed(out: &mut impl BufMut, field: u32, payload_len: usize) {
    out.put_u8(((field << 3) | u32::from(WIRE_LEN)) as u8);
    prost::encoding::encode_varint(payload_len as u64, out);
}

/// Writes a whole length-delimited field of any number.
pub fn put_delimited(out: &mut Vec<u8>, field: u32, payload: &[u8]) {
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_with_their_whole_encoding() {
        // field 1 varint 150, field 2 "hi", field 3 fixed64 7, field 4 fixed32 9
        let buf = [
            0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x19, 7, 0, 0, 0, 0, 0, 0, 0, 0x25, 9, 0, 0,
            0,
        ];
        let fields: Vec<RawField> = Fields::new(&buf).map(Result::unwrap).collect();
        assert_eq!(fields.len(), 4);
        assert!(matches!(fields[0].value, FieldValue::Varint(150)));
        assert_eq!(fields[0].whole, 0..3);
        assert!(matches!(&fields[1].value, FieldValue::Len(r) if &buf[r.clone()] == b"hi"));
        assert!(matches!(fields[2].value, FieldValue::I64(7)));
        assert!(matches!(fields[3].value, FieldValue::I32(9)));
    }

    #[test]
    fn broken_framing_stops_the_walk() {
        for buf in [
            &[0x12, 0x05, b'h'][..], // runs past the message
            &[0x19, 1, 2],           // truncated fixed64
            &[0x08, 0xff, 0xff],     // truncated varint
            &[0x0b],                 // a group
            &[0x00, 0x01],           // field number 0
        ] {
            let mut fields = Fields::new(buf);
            assert!(fields.next().unwrap().is_err(), "{buf:?}");
            assert!(fields.next().is_none());
        }
    }

    #[test]
    fn delimited_fields_of_any_number_are_written() {
        let mut out = Vec::new();
        put_delimited(&mut out, 16, b"ab");
        assert_eq!(out, [0x82, 0x01, 0x02, b'a', b'b']);
        let mut short = Vec::new();
        put_framed(&mut short, 2, 2);
        assert_eq!(short, [0x12, 0x02]);
    }
}
