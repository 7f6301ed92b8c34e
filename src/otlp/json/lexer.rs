//! JSON read token by token, never building a tree: values the transcoder does not want are
//! skipped without recursion, so nesting costs no stack and no memory.

use std::borrow::Cow;

use super::super::schema::Fault;

/// Why a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// Not JSON, or not the shape OTLP has above the spans: nothing after it can be trusted.
    Request(String),
    /// The value was consumed but cannot go into its field: what holds it is set aside.
    Fault(Fault),
}

impl Bad {
    pub fn fault(what: impl Into<String>) -> Self {
        Bad::Fault(Fault::Malformed(what.into()))
    }
}

pub type Read<T> = Result<T, Bad>;

pub struct Lexer<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.buf.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte that is not white space, not consumed.
    pub fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.buf.get(self.pos).copied()
    }

    pub fn error(&self, what: &str) -> Bad {
        Bad::Request(format!("{what} at byte {}", self.pos))
    }

    pub fn eat(&mut self, byte: u8) -> Read<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected '{}'", byte as char)))
        }
    }

    /// Whether only white space is left.
    pub fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    fn literal(&mut self, word: &[u8]) -> Read<()> {
        if self.buf[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("invalid literal"))
        }
    }

    /// `true`, `false` or `null` (as None); anything else is left unread and is `Err(None)`.
    pub fn keyword(&mut self) -> Result<Option<bool>, Option<Bad>> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|_| Some(true)).map_err(Some),
            Some(b'f') => self.literal(b"false").map(|_| Some(false)).map_err(Some),
            Some(b'n') => self.literal(b"null").map(|_| None).map_err(Some),
            _ => Err(None),
        }
    }

    /// A number's text, as written.
    pub fn number(&mut self) -> Read<&'a str> {
        self.ws();
        let start = self.pos;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.buf.get(self.pos) {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.buf[start..self.pos]).unwrap_or_default();
        if is_json_number(text) {
            Ok(text)
        } else {
            Err(self.error("invalid number"))
        }
    }

    /// A string's contents, unescaped. Text that is not UTF-8 (raw bytes, or an escaped lone
    /// surrogate) becomes U+FFFD; the flag says whether that happened. An unknown escape is a
    /// fault, reported once the whole string is consumed.
    pub fn string(&mut self) -> Read<(Cow<'a, str>, bool)> {
        self.eat(b'"')?;
        let start = self.pos;
        // The common case: no escapes, valid UTF-8, borrowed as is.
        while let Some(&b) = self.buf.get(self.pos) {
            match b {
                b'"' => {
                    let raw = &self.buf[start..self.pos];
                    self.pos += 1;
                    return Ok(match std::str::from_utf8(raw) {
                        Ok(s) => (Cow::Borrowed(s), false),
                        Err(_) => (Cow::Owned(String::from_utf8_lossy(raw).into_owned()), true),
                    });
                }
                b'\\' => break,
                _ => self.pos += 1,
            }
        }
        self.pos = start;
        self.escaped_string()
    }

    fn escaped_string(&mut self) -> Read<(Cow<'a, str>, bool)> {
        let mut bytes = Vec::new();
        let mut replaced = false;
        let mut bad_escape = None;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.error("unterminated string"));
            };
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.buf.get(self.pos) else {
                        return Err(self.error("unterminated string"));
                    };
                    self.pos += 1;
                    let plain = match e {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            let c = self.unicode_escape(&mut replaced);
                            let mut utf8 = [0u8; 4];
                            bytes.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                            continue;
                        }
                        other => {
                            bad_escape.get_or_insert(other);
                            continue;
                        }
                    };
                    bytes.push(plain);
                }
                other => bytes.push(other),
            }
        }
        if let Some(e) = bad_escape {
            return Err(Bad::fault(format!(
                "invalid escape '\\{}' in a string",
                e as char
            )));
        }
        let text = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => {
                replaced = true;
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
        };
        Ok((Cow::Owned(text), replaced))
    }

    /// The character of a `\u` escape (after the `u`), joining surrogate pairs; a lone
    /// surrogate or broken hex is U+FFFD.
    fn unicode_escape(&mut self, replaced: &mut bool) -> char {
        let Some(high) = self.hex4() else {
            *replaced = true;
            return char::REPLACEMENT_CHARACTER;
        };
        if (0xD800..0xDC00).contains(&high) && self.buf[self.pos..].starts_with(b"\\u") {
            let save = self.pos;
            self.pos += 2;
            match self.hex4() {
                Some(low) if (0xDC00..0xE000).contains(&low) => {
                    let c = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                    if let Some(c) = char::from_u32(c) {
                        return c;
                    }
                }
                _ => self.pos = save,
            }
        }
        char::from_u32(high).unwrap_or_else(|| {
            *replaced = true;
            char::REPLACEMENT_CHARACTER
        })
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.buf.get(self.pos..self.pos + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        let value = u32::from_str_radix(text, 16).ok()?;
        self.pos += 4;
        Some(value)
    }

    fn skip_string(&mut self) -> Read<()> {
        self.eat(b'"')?;
        while let Some(&b) = self.buf.get(self.pos) {
            self.pos += 1;
            match b {
                b'"' => return Ok(()),
                b'\\' => self.pos += 1,
                _ => {}
            }
        }
        Err(self.error("unterminated string"))
    }

    /// Consumes `byte` if it comes next.
    pub fn eat_if(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        if next {
            self.pos += 1;
        }
        next
    }

    /// Skips one value of any shape and depth, without recursion.
    pub fn skip_value(&mut self) -> Read<()> {
        // The closing bracket of each open container.
        let mut open: Vec<u8> = Vec::new();
        'value: loop {
            match self.peek() {
                Some(b'{') => {
                    self.pos += 1;
                    if !self.eat_if(b'}') {
                        open.push(b'}');
                        self.skip_string()?;
                        self.eat(b':')?;
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    self.pos += 1;
                    if !self.eat_if(b']') {
                        open.push(b']');
                        continue 'value;
                    }
                }
                Some(b'"') => self.skip_string()?,
                Some(b't' | b'f' | b'n') => {
                    self.keyword()
                        .map_err(|e| e.unwrap_or_else(|| self.error("expected a value")))?;
                }
                Some(b'-' | b'0'..=b'9') => {
                    self.number()?;
                }
                _ => return Err(self.error("expected a value")),
            }
            // A value is complete: close what it completes, or go on to the next member.
            loop {
                let Some(&close) = open.last() else {
                    return Ok(());
                };
                if self.eat_if(b',') {
                    if close == b'}' {
                        self.skip_string()?;
                        self.eat(b':')?;
                    }
                    continue 'value;
                }
                if !self.eat_if(close) {
                    return Err(self.error("expected ',' or a closing bracket"));
                }
                open.pop();
            }
        }
    }
}

/// JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if b.get(i) == Some(&b'0') {
        i += 1;
    } else if !digits(&mut i) {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}
