//! The durable segment log: `<data_dir>/spool/<id>.seg` files of framed records.
//!
//! Appends go through one writer task that batches concurrent requests into one write and, with
//! `fsync = "always"`, one fsync (group commit) before any of them is acknowledged; an append
//! that finds the writer idle makes its own commit (`SegmentLog::write_in_place`). Records are
//! read back in order by a single reader; a segment file is removed once it is sealed and every
//! record in it has been acknowledged end to end. On open, every segment is scanned and
//! validated; damaged stretches (a torn tail after a crash, corruption) are reported, counted and
//! skipped without losing the records around them.

mod open;
mod writer;

use writer::{Writes, can_write_in_place, frame_of, sync_if_dirty, take, write_loop};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use super::frame;
use super::{RecordId, SpoolError, SpoolRecord, Stats};
use crate::config::{FsyncPolicy, SpoolCompression};

/// Concurrent appends batched into one write and one fsync.
const MAX_GROUP: usize = 256;
/// Records the reader is about to take are also kept in memory, up to this many bytes, and
/// handed over without reading them back and decoding them (the reader is normally right
/// behind the writer). Beyond it, and after a restart, records are read from disk.
const HOT_TAIL_MAX_BYTES: usize = 8 << 20;
/// With `fsync = "always"`, the active segment is zero-filled ahead of its appends, so that a
/// group commit overwrites allocated blocks: its fdatasync then writes the data, without the
/// block allocation and inode write an append makes it do: less CPU and a faster sync
/// (BENCHMARKS.md, "Decisions"). The writer fills (and syncs) the room between groups, when no
/// request waits, since the fill on a request's path doubled the ack p99 ("Tried and not
/// kept"); appends that outrun the room grow the file themselves.
/// The first step is small, so a quiet gateway whose segments are reclaimed often writes few
/// zeros; each step doubles the last, up to the largest.
const ZERO_FILL_FIRST_STEP: u64 = 64 << 10;
const ZERO_FILL_MAX_STEP: u64 = 1 << 20;
/// An append makes its own group commit (`SegmentLog::write_in_place`) only if the last one
/// ended at least this long ago. A request that comes sooner is likely one of a stream: it
/// joins the writer's next group, which commits all that came during the last fsync with one
/// more. Committing in place regardless cut the ceiling by a quarter (one fsync per request, a
/// worker waiting on each; BENCHMARKS.md, "Tried and not kept"). At 10k spans/s in 100-span
/// requests, one comes every 10 ms on average.
const IN_PLACE_AFTER_QUIET: Duration = Duration::from_millis(2);
/// Zeros are written from this buffer, a chunk per call.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

struct Segment {
    records: u64,
    acked: u64,
    sealed: bool,
    bytes: u64,
    first_ms: Option<u64>,
}

struct Active {
    id: u64,
    /// Shared so a group's fsync can run without holding the state lock.
    file: Arc<File>,
    /// Where the next record goes: the bytes in use.
    len: u64,
    /// The file's length: `len` plus zero-filled room (`ZERO_FILL_FIRST_STEP`).
    filled: u64,
    /// Zero-filling failed (a full disk): appends grow the file themselves from then on.
    fill_failed: bool,
}

impl Active {
    /// The stretch to zero-fill next, if the room left is under half a step.
    fn room_wanted(&self, segment_bytes: u64) -> Option<(u64, u64)> {
        let step = self.filled.clamp(ZERO_FILL_FIRST_STEP, ZERO_FILL_MAX_STEP);
        let target = (self.filled + step).min(segment_bytes);
        (!self.fill_failed && self.filled - self.len < step / 2 && target > self.filled)
            .then_some((self.filled, target))
    }

    /// Cuts the unused zero-filled room off, so a closed or sealed segment ends at its last
    /// record (a crash leaves the room, which the scan on open tells from damage).
    fn trim(&mut self) {
        if self.filled > self.len {
            match self.file.set_len(self.len) {
                Ok(()) => self.filled = self.len,
                Err(e) => {
                    tracing::warn!(segment = self.id, error = %e, "cannot trim spool segment")
                }
            }
        }
    }
}

/// An unread record's place in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub id: RecordId,
    /// The frame's bytes on disk.
    pub len: u32,
    /// The record's bytes once read back (decompressed).
    pub record_len: u32,
}

struct State {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    active: Option<Active>,
    unread: VecDeque<Position>,
    /// Decoded copies of unread records (`HOT_TAIL_MAX_BYTES`).
    hot: HashMap<RecordId, (SpoolRecord, usize)>,
    hot_bytes: usize,
    readers: HashMap<u64, Arc<File>>,
    disk_bytes: u64,
    unacked: u64,
    next_id: u64,
    closed: bool,
    dirty: bool,
    disk_full: bool,
    /// Group commits made by appending tasks themselves (`SegmentLog::write_in_place`).
    #[cfg(test)]
    commits_in_place: u64,
}

struct WriteRequest {
    frame: Vec<u8>,
    /// The record's size before compression.
    record_len: u32,
    /// The record itself, handed to the reader from memory if there is room.
    keep: Option<SpoolRecord>,
    received_ms: u64,
    reply: oneshot::Sender<Result<(), SpoolError>>,
}

/// How a log writes (the `[spool]` settings).
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    pub segment_bytes: u64,
    pub max_disk_bytes: u64,
    pub compression: SpoolCompression,
}

/// What opening found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    pub damaged_regions: usize,
    pub damaged_bytes: u64,
}

#[derive(Clone)]
pub struct SegmentLog {
    state: Arc<Mutex<State>>,
    writer: mpsc::Sender<WriteRequest>,
    compression: SpoolCompression,
    data: Arc<Notify>,
    /// Held by whoever writes to the active segment: a group commit (the writer's, or one made
    /// by the appending task itself, see `write_in_place`), a zero-fill, and `close` (which
    /// then trims a segment nobody is writing).
    write_token: Arc<Mutex<Writes>>,
    /// Asks the writer to zero-fill room after a group commit made in place.
    fill_wanted: Arc<Notify>,
    /// Whether an append finding the writer idle makes its own group commit (see
    /// `write_in_place`).
    write_in_place: bool,
    fsync: FsyncPolicy,
    segment_bytes: u64,
    max_disk_bytes: u64,
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn io(e: std::io::Error) -> SpoolError {
    SpoolError::Io(e.to_string())
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl State {
    fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seals the active segment; removes it at once if everything in it was delivered.
    fn seal_active(&mut self, fsync: bool) -> std::io::Result<()> {
        if let Some(mut active) = self.active.take() {
            active.trim();
            if fsync {
                active.file.sync_all()?;
            }
            if let Some(seg) = self.segments.get_mut(&active.id) {
                seg.sealed = true;
            }
            self.remove_if_done(active.id);
        }
        Ok(())
    }

    /// The open active segment's next stretch to zero-fill, if it wants one
    /// (`ZERO_FILL_FIRST_STEP`): its id, its file, and the stretch.
    fn room_wanted(&self, segment_bytes: u64) -> Option<(u64, Arc<File>, (u64, u64))> {
        let active = self.active.as_ref().filter(|_| !self.closed)?;
        let stretch = active.room_wanted(segment_bytes)?;
        Some((active.id, active.file.clone(), stretch))
    }

    fn remove_if_done(&mut self, id: u64) {
        let done = self
            .segments
            .get(&id)
            .is_some_and(|s| s.sealed && s.acked >= s.records);
        if done && let Some(seg) = self.segments.remove(&id) {
            self.readers.remove(&id);
            self.disk_bytes = self.disk_bytes.saturating_sub(seg.bytes);
            if let Err(e) = std::fs::remove_file(seg_path(&self.dir, id)) {
                tracing::error!(segment = id, error = %e, "cannot remove delivered spool segment");
            }
        }
    }

    fn open_active(&mut self) -> std::io::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(seg_path(&self.dir, id))?;
        fsync_dir(&self.dir)?;
        self.segments.insert(
            id,
            Segment {
                records: 0,
                acked: 0,
                sealed: false,
                bytes: 0,
                first_ms: None,
            },
        );
        self.active = Some(Active {
            id,
            file: Arc::new(file),
            len: 0,
            filled: 0,
            fill_failed: false,
        });
        Ok(())
    }
}

impl SegmentLog {
    /// Appends a record; with `keep_hot` it is also handed to the reader from memory if there
    /// is room (the hot tail).
    #[cfg(test)]
    pub async fn append(&self, record: SpoolRecord, keep_hot: bool) -> Result<(), SpoolError> {
        let frame = self.frame(&record);
        self.append_framed(record, frame, keep_hot).await
    }

    /// The record's frame as this log stores it (compressed or not). The caller builds it
    /// before `append_framed`, where its CPU work is accounted for (an ingest turn).
    pub fn frame(&self, record: &SpoolRecord) -> Frame {
        frame_of(record, self.compression)
    }

    /// Appends a record in the frame `frame` built for it; see `append`.
    pub async fn append_framed(
        &self,
        record: SpoolRecord,
        frame: Frame,
        keep_hot: bool,
    ) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        let request = WriteRequest {
            frame: frame.bytes,
            record_len: frame.record_len as u32,
            keep: keep_hot.then_some(record),
            received_ms: crate::vocab::now_ms(),
            reply,
        };
        if let Some(request) = self.write_in_place(request) {
            self.writer
                .send(request)
                .await
                .map_err(|_| SpoolError::Closed)?;
        }
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// The next unread record's position, taken; waits for appends; None once closed and
    /// drained. (The spool's reader peeks and takes separately, see `Spool::next`.)
    #[cfg(test)]
    pub async fn next_position(&self) -> Option<Position> {
        let next = self.peek_position().await?;
        self.consume_position(next.id);
        Some(next)
    }

    /// Marks the position `peek_position` returned as taken (the log has a single reader, so
    /// it is still the first).
    pub fn consume_position(&self, id: RecordId) {
        let mut s = State::lock(&self.state);
        if s.unread.front().is_some_and(|first| first.id == id) {
            s.unread.pop_front();
        }
    }

    /// Gives back a position taken by `consume_position` whose record was not handed out (its
    /// read was abandoned): it is the first unread again.
    pub fn restore_position(&self, position: Position) {
        State::lock(&self.state).unread.push_front(position);
    }

    /// The next unread record's position without taking it (cancel-safe: dropping the caller
    /// loses nothing); waits for appends; None once closed and drained.
    pub async fn peek_position(&self) -> Option<Position> {
        loop {
            let notified = self.data.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = State::lock(&self.state);
                if let Some(p) = s.unread.front() {
                    return Some(*p);
                }
                if s.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The record at `id` if it is still held in memory (the hot tail).
    pub fn take_hot(&self, id: RecordId) -> Option<SpoolRecord> {
        let mut s = State::lock(&self.state);
        let (record, size) = s.hot.remove(&id)?;
        s.hot_bytes -= size;
        Some(record)
    }

    /// Reads one record (decompressed) from its frame of `len` bytes at `id`.
    pub async fn read(&self, id: RecordId, len: u32) -> std::io::Result<Bytes> {
        let file = {
            let mut s = State::lock(&self.state);
            match s.readers.get(&id.segment) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(File::open(seg_path(&s.dir, id.segment))?);
                    s.readers.insert(id.segment, f.clone());
                    f
                }
            }
        };
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, id.offset)?;
            let (found, _) = frame::scan(&buf);
            match found.first() {
                Some(f) if f.offset == 0 && f.len == buf.len() => frame::into_record(buf),
                _ => Err(std::io::Error::other("record failed its checksum on read")),
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }

    pub fn ack(&self, id: RecordId) {
        let mut s = State::lock(&self.state);
        if let Some(seg) = s.segments.get_mut(&id.segment) {
            seg.acked += 1;
            s.unacked = s.unacked.saturating_sub(1);
            s.remove_if_done(id.segment);
        }
    }

    /// Stops appends (later ones get `Closed`), fsyncs, and lets the reader drain.
    pub async fn close(&self) {
        let (state, token) = (self.state.clone(), self.write_token.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let _token = take(&token);
            let mut s = State::lock(&state);
            s.closed = true;
            if let Some(a) = &mut s.active {
                a.trim();
            }
            if let Some(a) = &s.active
                && let Err(e) = a.file.sync_all()
            {
                tracing::error!(error = %e, "spool fsync on close failed");
            }
        })
        .await;
        self.data.notify_waiters();
    }

    /// Seals and removes the active segment when everything in it was delivered.
    pub async fn reclaim(&self) {
        let state = self.state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut s = State::lock(&state);
            let done = s.active.as_ref().is_some_and(|a| {
                a.len > 0
                    && s.segments
                        .get(&a.id)
                        .is_some_and(|seg| seg.acked >= seg.records)
            });
            if done && let Err(e) = s.seal_active(false) {
                tracing::error!(error = %e, "cannot seal spool segment");
            }
        })
        .await;
    }

    pub fn stats(&self) -> Stats {
        let s = State::lock(&self.state);
        Stats {
            disk_bytes: s.disk_bytes,
            records: s.unacked,
            memory_bytes: 0,
            oldest_ms: s
                .segments
                .values()
                .filter(|seg| seg.acked < seg.records)
                .filter_map(|seg| seg.first_ms)
                .min(),
            disk_full: s.disk_full,
        }
    }
}

pub use writer::Frame;

#[cfg(test)]
mod tests;
