//! Buffers for decoded request bodies: small ones on the heap, large ones mapped straight from
//! the OS and unmapped when dropped. The allocator keeps freed pages for reuse (per thread), so a
//! refused bomb's tens of MiB stayed resident after it was refused, and two bombs decoded on two
//! threads held two limits; a mapping goes back at once.

use memmap2::MmapMut;

/// Buffers from this size up are mapped: a mapping costs two system calls, nothing next to
/// filling a MiB.
const MAPPED_FROM: usize = 1 << 20;

/// A zero-filled buffer of fixed capacity, of which the first `len` bytes are the contents.
pub struct Buffer {
    storage: Storage,
    len: usize,
}

enum Storage {
    Heap(Vec<u8>),
    Mapped(MmapMut),
}

impl Buffer {
    /// A buffer of `capacity` zero bytes, all of them contents until `truncate`.
    pub fn zeroed(capacity: usize) -> std::io::Result<Self> {
        let storage = if capacity >= MAPPED_FROM {
            // Anonymous mappings are zero-filled by the OS, page by page as they are touched.
            Storage::Mapped(MmapMut::map_anon(capacity)?)
        } else {
            Storage::Heap(vec![0u8; capacity])
        };
        Ok(Self {
            storage,
            len: capacity,
        })
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        match &mut self.storage {
            Storage::Heap(v) => &mut v[..len],
            Storage::Mapped(m) => &mut m[..len],
        }
    }

    /// Keeps the first `len` bytes as the contents (the capacity stays).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        match &self.storage {
            Storage::Heap(v) => &v[..self.len],
            Storage::Mapped(m) => &m[..self.len],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_buffers_hold_what_is_written() {
        for capacity in [0, 10, MAPPED_FROM, MAPPED_FROM + 3] {
            let mut b = Buffer::zeroed(capacity).unwrap();
            assert!(b.as_ref().iter().all(|x| *x == 0));
            if capacity > 0 {
                b.as_mut_slice()[capacity - 1] = 7;
            }
            b.truncate(capacity);
            assert_eq!(b.len(), capacity);
            b.truncate(capacity / 2);
            assert_eq!(b.as_ref().len(), capacity / 2);
        }
    }
}
