//! Writing the few JSON shapes of a StartTraceV3 body straight into a buffer: strings escaped
//! exactly as serde_json escapes them, hex ids, durations and string maps.

use std::collections::BTreeMap;

/// Appends `s` as a JSON string: `"`, `\` and control characters escaped, as serde_json does
/// (short forms where JSON has them, `\u00XX` for the rest); everything else as is.
pub fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain_from = 0;
    let mut at = 0;
    while at < bytes.len() {
        // Eight bytes at a time while none needs escaping: most text needs none.
        if let Some(chunk) = bytes.get(at..at + 8)
            && let Ok(word) = <[u8; 8]>::try_from(chunk)
            && !needs_escape(u64::from_le_bytes(word))
        {
            at += 8;
            continue;
        }
        let b = bytes[at];
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..0x20 => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => {
                at += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[plain_from..at]);
        out.extend_from_slice(escaped);
        at += 1;
        plain_from = at;
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
}

/// Whether any of the eight bytes is `"`, `\` or below 0x20 (bytes of 0x80 and up are UTF-8
/// continuation or lead bytes, never escaped).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS != 0;
    // A byte below 0x20: subtracting 0x20 borrows into its high bit (bytes with the high bit
    // already set are excluded by `!word`).
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
    below_space
        || has_zero(word ^ (ONES * u64::from(b'"')))
        || has_zero(word ^ (ONES * u64::from(b'\\')))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` as lowercase hex digits (no quotes).
pub fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.extend_from_slice(&hex_pair(b));
    }
}

/// A byte's two lowercase hex digits.
pub fn hex_pair(b: u8) -> [u8; 2] {
    [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]
}

/// Appends a protobuf JSON Duration of `millis` without its quotes: `1.450s`.
pub fn duration_millis(out: &mut Vec<u8>, millis: u64) {
    let mut digits = [0u8; 20];
    let mut first = digits.len();
    let mut seconds = millis / 1000;
    loop {
        first -= 1;
        digits[first] = b'0' + (seconds % 10) as u8;
        seconds /= 10;
        if seconds == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[first..]);
    let ms = millis % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b's',
    ]);
}

/// Appends `map` as a JSON object, followed by each of `defaults` whose key the map lacks.
pub fn map_with_defaults(
    out: &mut Vec<u8>,
    map: &BTreeMap<String, String>,
    defaults: &[Option<(&str, &str)>],
) {
    out.push(b'{');
    let mut first = true;
    let extra = defaults
        .iter()
        .flatten()
        .filter(|(k, _)| !map.contains_key(*k))
        .map(|(k, v)| (*k, *v));
    for (key, value) in map
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra)
    {
        if !first {
            out.push(b',');
        }
        first = false;
        string(out, key);
        out.push(b':');
        string(out, value);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(s: &str) -> String {
        let mut out = Vec::new();
        string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain".into(),
            "exactly8".into(),
            "a \"quoted\" word and a \\ backslash, past eight bytes".into(),
            "\u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f}\u{20}\u{7f}".into(),
            "日本語のテキスト、\"引用\"と\n改行".into(),
            "emoji 🙂 at the end\"".into(),
        ];
        // Every byte value below 0x80 at every position of a 17-byte string.
        for c in 0u8..0x80 {
            for at in 0..17 {
                let mut s = vec![b'x'; 17];
                s[at] = c;
                cases.push(String::from_utf8(s).unwrap());
            }
        }
        for s in cases {
            assert_eq!(written(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn durations_and_hex() {
        let mut out = Vec::new();
        duration_millis(&mut out, 1_450);
        out.push(b' ');
        duration_millis(&mut out, 7);
        out.push(b' ');
        duration_millis(&mut out, 86_400_000_123);
        out.push(b' ');
        hex(&mut out, &[0x00, 0xab, 0x0f]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1.450s 0.007s 86400000.123s 00ab0f"
        );
    }

    #[test]
    fn maps_keep_their_order_and_add_missing_defaults_last() {
        let map: BTreeMap<String, String> = [
            ("b".to_string(), "2".to_string()),
            ("a".into(), "1\"".into()),
        ]
        .into();
        let mut out = Vec::new();
        map_with_defaults(&mut out, &map, &[Some(("a", "x")), None, Some(("z", "9"))]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":"1\"","b":"2","z":"9"}"#
        );
        let mut out = Vec::new();
        map_with_defaults(&mut out, &BTreeMap::new(), &[]);
        assert_eq!(out, b"{}");
    }
}
