//! On-disk framing of spool records: `magic | len (u32 LE) | crc32 (u32 LE) | payload`.
//!
//! Two kinds of frame: `MAGIC`, whose payload is the record as is, and `MAGIC_ZSTD`, whose
//! payload is one zstd frame holding it (`spool.compression = "zstd"`). A log may hold both
//! (the setting changed between runs); the checksum covers the payload as stored.
//!
//! A reader validates every frame. A short or corrupt frame (a torn write after a crash, a
//! flipped bit) is skipped by scanning forward for the next magic whose frame checks out, so
//! one bad record never costs the records after it, and never panics.

use std::cell::RefCell;

use bytes::Bytes;
use zstd::zstd_safe::{self, CCtx, CParameter, InBuffer, OutBuffer, ResetDirective};

/// "GWS1": gateway spool, format 1, the record as is.
pub const MAGIC: [u8; 4] = *b"GWS1";
/// "GWSZ": gateway spool, the record zstd-compressed.
pub const MAGIC_ZSTD: [u8; 4] = *b"GWSZ";
pub const HEADER_LEN: usize = 12;
/// One of zstd's fast levels. Spooled OTLP repeats its attribute keys, resource and scope in
/// every span, so even these find most of the gain: -3 shrinks a request nearly as much as
/// level 1 at well over 1.5 times its speed (BENCHMARKS.md, "Decisions"). This runs on every
/// acknowledged request; a little more disk is the cheaper side of that trade.
const ZSTD_LEVEL: i32 = -3;
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

fn is_magic(bytes: &[u8]) -> bool {
    bytes == MAGIC || bytes == MAGIC_ZSTD
}

fn frame_at(buf: &[u8], offset: usize) -> Option<usize> {
    let header = buf.get(offset..offset + HEADER_LEN)?;
    if !is_magic(&header[0..4]) {
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
                pos = match buf[pos + 1..].windows(4).position(is_magic) {
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

/// The payload of a frame known to be valid, as stored.
fn payload(frame: &[u8]) -> &[u8] {
    &frame[HEADER_LEN..]
}

fn is_compressed(frame: &[u8]) -> bool {
    frame[..4] == MAGIC_ZSTD
}

/// The size of the record a valid frame holds, once decompressed (what reading it back costs
/// in memory); None if a compressed frame does not say.
pub fn record_len(frame: &[u8]) -> Option<usize> {
    if !is_compressed(frame) {
        return Some(frame.len() - HEADER_LEN);
    }
    match zstd_safe::get_frame_content_size(payload(frame)) {
        Ok(Some(n)) if n <= MAX_PAYLOAD as u64 => Some(n as usize),
        _ => None,
    }
}

/// The record a valid frame holds: the payload itself, or decompressed.
pub fn into_record(frame: Vec<u8>) -> std::io::Result<Bytes> {
    if !is_compressed(&frame) {
        return Ok(Bytes::from(frame).slice(HEADER_LEN..));
    }
    let len = record_len(&frame)
        .ok_or_else(|| std::io::Error::other("compressed spool record without a valid size"))?;
    let record = zstd::bulk::decompress(payload(&frame), len)?;
    if record.len() != len {
        return Err(std::io::Error::other(
            "compressed spool record shorter than it says",
        ));
    }
    Ok(Bytes::from(record))
}

thread_local! {
    /// One compression context per thread, kept: making one allocates its tables, which would
    /// cost more than compressing a request. None where zstd could not make one.
    static COMPRESSOR: RefCell<Option<CCtx<'static>>> = RefCell::new(new_compressor());
}

fn new_compressor() -> Option<CCtx<'static>> {
    let mut cctx = CCtx::try_create()?;
    cctx.set_parameter(CParameter::CompressionLevel(ZSTD_LEVEL))
        .ok()?;
    Some(cctx)
}

/// A `MAGIC_ZSTD` frame of the record whose bytes are `parts`, in order (compressed as one,
/// without joining them first). None where compressing does not pay (the frame would not be
/// smaller than the record as is) or zstd failed: the caller then frames the record as is.
pub fn encode_compressed(parts: [&[u8]; 2]) -> Option<Vec<u8>> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    COMPRESSOR.with(|cell| {
        let mut cell = cell.try_borrow_mut().ok()?;
        let cctx = cell.as_mut()?;
        // Clears what a failed call may have left.
        cctx.reset(ResetDirective::SessionOnly).ok()?;
        // Writes the size into the zstd frame: reading back knows what to allocate.
        cctx.set_pledged_src_size(Some(total as u64)).ok()?;
        let mut out = Vec::with_capacity(HEADER_LEN + zstd_safe::compress_bound(total));
        out.extend_from_slice(&MAGIC_ZSTD);
        out.extend_from_slice(&[0; HEADER_LEN - MAGIC_ZSTD.len()]);
        let mut output = OutBuffer::around_pos(&mut out, HEADER_LEN);
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let directive = if last {
                zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end
            } else {
                zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_continue
            };
            let mut input = InBuffer::around(part);
            loop {
                let before = (input.pos(), output.pos());
                let left = cctx
                    .compress_stream2(&mut output, &mut input, directive)
                    .ok()?;
                let done = if last {
                    left == 0
                } else {
                    input.pos() == part.len()
                };
                if done {
                    break;
                }
                // The output holds zstd's bound for the whole record, so this is a stall.
                if (input.pos(), output.pos()) == before {
                    return None;
                }
            }
        }
        // The output buffer has set `out`'s length as it wrote; its borrow ends here.
        if out.len() >= HEADER_LEN + total {
            return None;
        }
        let stored = &out[HEADER_LEN..];
        let (len, crc) = (stored.len() as u32, crc32fast::hash(stored));
        out[4..8].copy_from_slice(&len.to_le_bytes());
        out[8..12].copy_from_slice(&crc.to_le_bytes());
        Some(out)
    })
}

/// Bytes zstd cannot shrink (xorshift), for tests.
#[cfg(test)]
pub fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
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
    fn compressed_frames_scan_resynchronise_and_decompress() {
        let record = b"a record that repeats, repeats, repeats, repeats, repeats itself".repeat(20);
        let (head, body) = record.split_at(10);
        let zipped = encode_compressed([head, body]).expect("compressible");
        assert_eq!(zipped[..4], MAGIC_ZSTD);
        assert!(zipped.len() < record.len() / 4);
        assert_eq!(record_len(&zipped), Some(record.len()));
        assert_eq!(&into_record(zipped.clone()).unwrap()[..], &record[..]);

        // Plain and compressed frames side by side; a flipped bit in a compressed one costs
        // that frame only.
        let mut buf = encode(b"plain-one");
        let second = buf.len();
        buf.extend_from_slice(&zipped);
        buf.extend_from_slice(&encode(b"plain-two"));
        let (found, damage) = scan(&buf);
        assert_eq!(found.len(), 3);
        assert!(damage.is_empty());
        buf[second + HEADER_LEN + 3] ^= 0x40;
        let (found, damage) = scan(&buf);
        assert_eq!(found.len(), 2, "both plain frames survive");
        assert_eq!(damage.len(), 1);
        assert_eq!(
            &into_record(buf[found[1].offset..].to_vec()).unwrap()[..],
            b"plain-two"
        );

        // Noise does not shrink: the caller stores it as is.
        let noise = noise(2048);
        assert!(encode_compressed([&noise[..1], &noise[1..]]).is_none());
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
