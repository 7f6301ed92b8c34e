//! On-disk framing of spool records: `MAGIC | len (u32 LE) | crc32 (u32 LE) | payload`.
//!
//! A reader validates every frame. A short or corrupt frame (a torn write after a crash, a
//! flipped bit) is skipped by scanning forward for the next magic whose frame checks out, so
//! one bad record never costs the records after it, and never panics.

/// "GWS1": gateway spool, format 1.
pub const MAGIC: [u8; 4] = *b"GWS1";
pub const HEADER_LEN: usize = 12;
/// Frames larger than this are corrupt by definition (records are bounded by the receiver's
/// decompressed-size limit, far below).
pub const MAX_PAYLOAD: usize = 1 << 30;

/// A frame whose payload `write` appends after room for the header, which is filled in once
/// the payload is there: the payload is written once, into the frame's own buffer, not
/// encoded into one buffer and copied into another. `capacity` is the payload's expected size.
pub fn encode_with(capacity: usize, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + capacity);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; HEADER_LEN - MAGIC.len()]);
    write(&mut out);
    let payload = &out[HEADER_LEN..];
    let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The frame of an encoded payload.
#[cfg(test)]
pub fn encode(payload: &[u8]) -> Vec<u8> {
    encode_with(payload.len(), |out| out.extend_from_slice(payload))
}

/// A valid frame found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Offset of the frame's header.
    pub offset: usize,
    /// Total frame length (header + payload).
    pub len: usize,
}

/// A stretch of bytes that held no valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub offset: usize,
    pub len: usize,
}

fn frame_at(buf: &[u8], offset: usize) -> Option<usize> {
    let header = buf.get(offset..offset + HEADER_LEN)?;
    if header[0..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[8..12].try_into().ok()?);
    if len > MAX_PAYLOAD {
        return None;
    }
    let payload = buf.get(offset + HEADER_LEN..offset + HEADER_LEN + len)?;
    (crc32fast::hash(payload) == crc).then_some(HEADER_LEN + len)
}

/// Every valid frame in `buf`, in order, and the damaged stretches between them.
pub fn scan(buf: &[u8]) -> (Vec<Found>, Vec<Damage>) {
    let mut found = Vec::new();
    let mut damage = Vec::new();
    let mut pos = 0;
    let mut bad_start: Option<usize> = None;
    while pos < buf.len() {
        match frame_at(buf, pos) {
            Some(len) => {
                if let Some(start) = bad_start.take() {
                    damage.push(Damage {
                        offset: start,
                        len: pos - start,
                    });
                }
                found.push(Found { offset: pos, len });
                pos += len;
            }
            None => {
                bad_start.get_or_insert(pos);
                // Resynchronise at the next occurrence of the magic.
                pos = match buf[pos + 1..].windows(4).position(|w| w == MAGIC) {
                    Some(i) => pos + 1 + i,
                    None => buf.len(),
                };
            }
        }
    }
    if let Some(start) = bad_start {
        // Zeros at the end are room the writer allocated ahead of its appends (see
        // `spool::disk`), not damage; a torn frame before them still is.
        let zeros = buf[start..].iter().rev().take_while(|b| **b == 0).count();
        let len = buf.len() - start - zeros;
        if len > 0 {
            damage.push(Damage { offset: start, len });
        }
    }
    (found, damage)
}

/// The payload of a frame known to be valid.
pub fn payload(frame: &[u8]) -> &[u8] {
    &frame[HEADER_LEN..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(payloads: &[&[u8]]) -> Vec<u8> {
        payloads.iter().flat_map(|p| encode(p)).collect()
    }

    #[test]
    fn clean_logs_scan_completely() {
        let buf = log(&[b"one", b"two", b""]);
        let (found, damage) = scan(&buf);
        assert_eq!(found.len(), 3);
        assert!(damage.is_empty());
        assert_eq!(
            payload(&buf[found[1].offset..found[1].offset + found[1].len]),
            b"two"
        );
    }

    #[test]
    fn a_torn_tail_is_reported_and_earlier_records_kept() {
        let mut buf = log(&[b"one", b"two", b"three-is-long"]);
        buf.truncate(buf.len() - 5);
        let (found, damage) = scan(&buf);
        assert_eq!(found.len(), 2);
        assert_eq!(damage.len(), 1);
        assert_eq!(damage[0].offset + damage[0].len, buf.len());
    }

    #[test]
    fn zeros_after_the_last_frame_are_unused_room_not_damage() {
        let mut buf = log(&[b"one", b""]);
        buf.resize(buf.len() + 4096, 0);
        let (found, damage) = scan(&buf);
        assert_eq!(found.len(), 2, "a frame that ends in zeros is still whole");
        assert!(damage.is_empty(), "{damage:?}");

        // A frame torn by a crash, in front of the zeros, is damage: its bytes, not the zeros.
        let torn = &encode(b"three-is-long")[..5]; // the magic and a length byte
        let mut buf = log(&[b"one"]);
        let start = buf.len();
        buf.extend_from_slice(torn);
        buf.resize(buf.len() + 4096, 0);
        let (found, damage) = scan(&buf);
        assert_eq!(found.len(), 1);
        assert_eq!(
            damage,
            vec![Damage {
                offset: start,
                len: 5
            }]
        );
    }

    #[test]
    fn corruption_in_the_middle_resynchronises() {
        let mut buf = log(&[b"first-record", b"second-record", b"third-record"]);
        let second = encode(b"first-record").len();
        buf[second + HEADER_LEN + 2] ^= 0xff; // flip a payload byte of the second record
        let (found, damage) = scan(&buf);
        assert_eq!(found.len(), 2, "first and third survive");
        assert_eq!(damage.len(), 1);
        assert_eq!(found[1].offset, second + encode(b"second-record").len());
    }

    #[test]
    fn garbage_never_panics() {
        for n in 0..200u32 {
            let garbage: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            let mut buf = garbage.clone();
            buf.extend_from_slice(&MAGIC);
            buf.extend_from_slice(&u32::MAX.to_le_bytes());
            let _ = scan(&buf);
        }
    }
}
