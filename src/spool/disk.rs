//! The durable segment log: `<data_dir>/spool/<id>.seg` files of framed records.
//!
//! Appends go through one writer task that batches concurrent requests into one write and, with
//! `fsync = "always"`, one fsync (group commit) before any of them is acknowledged; an append
//! that finds the writer idle makes its own commit (`SegmentLog::write_in_place`). Records are
//! read back in order by a single reader; a segment file is removed once it is sealed and every
//! record in it has been acknowledged end to end. On open, every segment is scanned and
//! validated; damaged stretches (a torn tail after a crash, corruption) are reported, counted and
//! skipped without losing the records around them.

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
/// block allocation and inode write an append makes it do. Measured on this project's host
/// (ext4, 40 KB records): 75-81 µs of CPU and 187-202 µs per write and fdatasync into room
/// filled 4 MiB at a time, against 107-114 µs and 260-311 µs appending. The writer fills (and
/// syncs) the room between groups, when no request waits, since the fill on a request's path
/// doubled the ack p99 at 10k spans/s; appends that outrun the room grow the file themselves.
/// The first step is small, so a quiet gateway whose segments are reclaimed often writes few
/// zeros; each step doubles the last, up to the largest.
const ZERO_FILL_FIRST_STEP: u64 = 64 << 10;
const ZERO_FILL_MAX_STEP: u64 = 1 << 20;
/// An append makes its own group commit (`SegmentLog::write_in_place`) only if the last one
/// ended at least this long ago. A request that comes sooner is likely one of a stream: it
/// joins the writer's next group, which commits all that came during the last fsync with one
/// more. Committing in place regardless cut the ceiling at 100 spans per request by 28 %
/// (192k against 265k spans/s, 2600 requests/s): one fsync per request, a worker waiting on
/// each. At 10k spans/s a request comes every 10 ms on average.
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

/// What the write token holds: when the last group commit ended (`IN_PLACE_AFTER_QUIET`).
#[derive(Default)]
struct Writes {
    last_commit: Option<std::time::Instant>,
}

impl Writes {
    fn quiet(&self) -> bool {
        self.last_commit
            .is_none_or(|at| at.elapsed() >= IN_PLACE_AFTER_QUIET)
    }
}

/// Takes the write token if nobody holds it. A panic while it was held (poisoning) leaves
/// nothing half done in it.
fn try_take(token: &Mutex<Writes>) -> Option<std::sync::MutexGuard<'_, Writes>> {
    match token.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Takes the write token, waiting for it (on a blocking thread only).
fn take(token: &Mutex<Writes>) -> std::sync::MutexGuard<'_, Writes> {
    token.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether appends may make their own group commit on the runtime's worker: only where another
/// worker keeps serving the other connections while this one waits for the disk.
fn can_write_in_place() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| {
        h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            && h.metrics().num_workers() >= 2
    })
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

/// `sync_data`, timed into `gateway_spool_fsync_seconds`.
fn timed_sync(file: &File) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let synced = file.sync_data();
    metrics::histogram!("gateway_spool_fsync_seconds").record(started.elapsed().as_secs_f64());
    synced
}

/// `fsync = "interval"`: syncs the active segment if anything was written since the last sync.
/// The sync runs without the state lock, as a group commit's does: holding it stalled every
/// append, acknowledgement and read for the length of the fsync once per interval. A write
/// during the sync marks the log dirty again; a failed sync leaves it dirty, to be retried.
fn sync_if_dirty(state: &Mutex<State>) {
    let file = {
        let mut s = State::lock(state);
        let Some(file) = s
            .active
            .as_ref()
            .filter(|_| s.dirty)
            .map(|a| a.file.clone())
        else {
            return;
        };
        s.dirty = false;
        file
    };
    if let Err(e) = timed_sync(&file) {
        tracing::error!(error = %e, "spool fsync failed; retrying at the next interval");
        State::lock(state).dirty = true;
    }
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
    /// Opens (or creates) the spool under `dir`, validating what an earlier run left, and
    /// starts the writer.
    pub fn open(dir: &Path, options: LogOptions) -> std::io::Result<(Self, OpenReport)> {
        std::fs::create_dir_all(dir)?;
        let mut report = OpenReport::default();
        let LogOptions {
            fsync,
            fsync_interval,
            segment_bytes,
            max_disk_bytes,
            compression,
        } = options;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut unread = VecDeque::new();
        let mut disk_bytes = 0;
        let mut unacked = 0;
        for id in &ids {
            let path = seg_path(dir, *id);
            let buf = std::fs::read(&path)?;
            let (found, damage) = frame::scan(&buf);
            for d in &damage {
                report.damaged_regions += 1;
                report.damaged_bytes += d.len as u64;
                tracing::error!(segment = %path.display(), offset = d.offset, bytes = d.len,
                    "damaged spool data skipped (torn write or corruption); records around it are kept");
            }
            if found.is_empty() {
                std::fs::remove_file(&path)?;
                continue;
            }
            let first_ms = found.first().and_then(|f| {
                let frame = buf[f.offset..f.offset + f.len].to_vec();
                let record = frame::into_record(frame).ok()?;
                SpoolRecord::decode(record).ok().map(|r| r.received_ms)
            });
            for f in &found {
                let frame = &buf[f.offset..f.offset + f.len];
                unread.push_back(Position {
                    id: RecordId {
                        segment: *id,
                        offset: f.offset as u64,
                    },
                    len: f.len as u32,
                    // Unknown only for a damaged compressed frame, which fails when read.
                    record_len: frame::record_len(frame).unwrap_or(f.len) as u32,
                });
            }
            report.segments += 1;
            report.records += found.len() as u64;
            report.bytes += buf.len() as u64;
            disk_bytes += buf.len() as u64;
            unacked += found.len() as u64;
            segments.insert(
                *id,
                Segment {
                    records: found.len() as u64,
                    acked: 0,
                    sealed: true,
                    bytes: buf.len() as u64,
                    first_ms,
                },
            );
        }
        if report.damaged_regions > 0 {
            metrics::counter!("gateway_spool_damaged_regions_total")
                .increment(report.damaged_regions as u64);
            metrics::counter!("gateway_spool_damaged_bytes_total").increment(report.damaged_bytes);
        }
        let state = Arc::new(Mutex::new(State {
            dir: dir.to_owned(),
            segments,
            active: None,
            unread,
            hot: HashMap::new(),
            hot_bytes: 0,
            readers: HashMap::new(),
            disk_bytes,
            unacked,
            next_id: ids.last().map_or(1, |l| l + 1),
            closed: false,
            dirty: false,
            disk_full: false,
            #[cfg(test)]
            commits_in_place: 0,
        }));
        let (tx, rx) = mpsc::channel(4096);
        let data = Arc::new(Notify::new());
        let write_token = Arc::new(Mutex::new(Writes::default()));
        let fill_wanted = Arc::new(Notify::new());
        tokio::spawn(write_loop(
            rx,
            state.clone(),
            data.clone(),
            write_token.clone(),
            fill_wanted.clone(),
            fsync,
            segment_bytes,
            max_disk_bytes,
        ));
        if fsync == FsyncPolicy::Interval {
            let state = Arc::downgrade(&state);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(fsync_interval).await;
                    let Some(state) = state.upgrade() else { break };
                    let _ = tokio::task::spawn_blocking(move || sync_if_dirty(&state)).await;
                }
            });
        }
        Ok((
            Self {
                state,
                writer: tx,
                compression,
                data,
                write_token,
                fill_wanted,
                write_in_place: can_write_in_place(),
                fsync,
                segment_bytes,
                max_disk_bytes,
            },
            report,
        ))
    }

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

    /// Makes the request's group commit here, on the appending task's worker, when the writer
    /// is idle (nothing queued, nobody writing, no commit in the last `IN_PLACE_AFTER_QUIET`);
    /// hands the request back otherwise. A request that finds the writer idle would wait for
    /// nobody else, so the hand-over to the writer and back (a blocking thread woken for the
    /// write, a worker woken for the answer) only cost: at 10k spans/s, 2.5 of the 5.7
    /// wake-ups a request caused. This worker waits for the disk meanwhile, which is why it
    /// needs another worker for the other connections (`can_write_in_place`); at most one does
    /// at a time (the write token), and while it does, later requests queue for the writer and
    /// are committed together as before.
    fn write_in_place(&self, request: WriteRequest) -> Option<WriteRequest> {
        if !self.write_in_place || self.writer.capacity() < self.writer.max_capacity() {
            return Some(request);
        }
        let Some(mut token) = try_take(&self.write_token).filter(|t| t.quiet()) else {
            return Some(request);
        };
        #[cfg(test)]
        {
            State::lock(&self.state).commits_in_place += 1;
        }
        let mut group = vec![request];
        write_group(
            &mut token,
            &self.state,
            &mut group,
            self.fsync,
            self.segment_bytes,
            self.max_disk_bytes,
        );
        drop(token);
        wake_reader(&self.data);
        if self.fsync == FsyncPolicy::Always
            && State::lock(&self.state)
                .room_wanted(self.segment_bytes)
                .is_some()
        {
            self.fill_wanted.notify_one();
        }
        None
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

/// A record framed for the log.
pub struct Frame {
    bytes: Vec<u8>,
    /// The record's size before compression.
    record_len: usize,
}

/// A record's frame as `compression` has it. Built by the appending task, not the writer, so
/// concurrent requests compress in parallel rather than one after another.
fn frame_of(record: &SpoolRecord, compression: SpoolCompression) -> Frame {
    if compression == SpoolCompression::None {
        let bytes = frame::encode_with(record.encoded_len(), |out| record.encode_into(out));
        let record_len = bytes.len() - frame::HEADER_LEN;
        return Frame { bytes, record_len };
    }
    // The header is small; the body, the encoded spans, is compressed where it lies.
    let mut header = Vec::with_capacity(256 + record.roots.len() * 512);
    record.encode_header_into(&mut header);
    let record_len = header.len() + record.body.len();
    // A record that would not shrink is framed as is, from the header already encoded.
    let bytes = frame::encode_compressed([&header, &record.body]).unwrap_or_else(|| {
        frame::encode_with(record_len, |out| {
            out.extend_from_slice(&header);
            out.extend_from_slice(&record.body);
        })
    });
    Frame { bytes, record_len }
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    mut rx: mpsc::Receiver<WriteRequest>,
    state: Arc<Mutex<State>>,
    data: Arc<Notify>,
    token: Arc<Mutex<Writes>>,
    fill_wanted: Arc<Notify>,
    fsync: FsyncPolicy,
    segment_bytes: u64,
    max_disk_bytes: u64,
) {
    loop {
        let first = tokio::select! {
            biased;
            request = rx.recv() => match request {
                Some(request) => request,
                None => break,
            },
            () = fill_wanted.notified() => {
                if rx.is_empty() {
                    fill_room_off_runtime(&state, &token, segment_bytes).await;
                }
                continue;
            }
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let (state2, token2) = (state.clone(), token.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            let mut token = take(&token2);
            write_group(
                &mut token,
                &state2,
                &mut group,
                fsync,
                segment_bytes,
                max_disk_bytes,
            );
            group
        })
        .await;
        match outcome {
            Ok(group) => {
                wake_reader(&data);
                drop(group);
            }
            Err(e) => tracing::error!(error = %e, "spool writer failed"),
        }
        if fsync == FsyncPolicy::Always && rx.is_empty() {
            fill_room_off_runtime(&state, &token, segment_bytes).await;
        }
        if State::lock(&state).closed && rx.is_empty() {
            rx.close();
        }
    }
}

/// `fill_room` on a blocking thread, holding the write token, if the active segment wants room.
async fn fill_room_off_runtime(
    state: &Arc<Mutex<State>>,
    token: &Arc<Mutex<Writes>>,
    segment_bytes: u64,
) {
    if State::lock(state).room_wanted(segment_bytes).is_none() {
        return;
    }
    let (state, token) = (state.clone(), token.clone());
    let _ = tokio::task::spawn_blocking(move || {
        let _token = take(&token);
        fill_room(&state, segment_bytes)
    })
    .await;
}

/// Zero-fills the next stretch of room in the active segment and syncs it
/// (`ZERO_FILL_FIRST_STEP`). Runs between groups, without the state lock: acks, the reader and
/// metrics must not wait for it, and only the write token's holder writes to the file (`close`
/// waits for it through `SegmentLog::write_token`). Best effort: on a failure (a full disk)
/// appends grow the file themselves.
fn fill_room(state: &Mutex<State>, segment_bytes: u64) {
    let Some((id, file, (from, to))) = State::lock(state).room_wanted(segment_bytes) else {
        return;
    };
    let mut at = from;
    let mut filled = Ok(());
    while at < to && filled.is_ok() {
        let chunk = (to - at).min(ZEROS.len() as u64) as usize;
        filled = file.write_all_at(&ZEROS[..chunk], at);
        at += chunk as u64;
    }
    let filled = filled.and_then(|()| file.sync_data());
    let mut s = State::lock(state);
    let Some(active) = s.active.as_mut().filter(|a| a.id == id) else {
        return;
    };
    match filled {
        Ok(()) => active.filled = active.filled.max(to),
        Err(e) => {
            tracing::warn!(segment = id, error = %e,
                "cannot zero-fill spool room ahead of appends; appending without it");
            active.fill_failed = true;
        }
    }
}

/// Wakes the reader once a group commit has put records in `unread`.
fn wake_reader(data: &Notify) {
    data.notify_waiters();
    data.notify_one();
}

/// Writes a group of frames, fsyncs once, then answers every request. `writes` is the write
/// token's contents, so the caller holds it; the commit's end is noted there
/// (`IN_PLACE_AFTER_QUIET`).
fn write_group(
    writes: &mut Writes,
    state: &Mutex<State>,
    group: &mut Vec<WriteRequest>,
    fsync: FsyncPolicy,
    segment_bytes: u64,
    max_disk_bytes: u64,
) {
    let mut s = State::lock(state);
    let mut written: Vec<(usize, Position)> = Vec::new();
    let mut results: Vec<Option<Result<(), SpoolError>>> = (0..group.len()).map(|_| None).collect();
    for (i, req) in group.iter().enumerate() {
        if s.closed {
            results[i] = Some(Err(SpoolError::Closed));
            continue;
        }
        let len = req.frame.len() as u64;
        if s.disk_bytes + len > max_disk_bytes {
            s.disk_full = true;
            results[i] = Some(Err(SpoolError::Full(format!(
                "{} of {} bytes of disk spool used",
                s.disk_bytes, max_disk_bytes
            ))));
            continue;
        }
        let rotate = s
            .active
            .as_ref()
            .is_some_and(|a| a.len > 0 && a.len + len > segment_bytes);
        if rotate && let Err(e) = s.seal_active(fsync != FsyncPolicy::Never) {
            results[i] = Some(Err(io(e)));
            continue;
        }
        if s.active.is_none()
            && let Err(e) = s.open_active()
        {
            results[i] = Some(Err(io(e)));
            continue;
        }
        let Some(active) = s.active.as_mut() else {
            results[i] = Some(Err(SpoolError::Io("no active segment".into())));
            continue;
        };
        let offset = active.len;
        let id = active.id;
        if let Err(e) = active.file.write_all_at(&req.frame, offset) {
            results[i] = Some(Err(io(e)));
            // A partial write leaves a torn frame; later frames go after it and the scan on
            // the next open skips it. Move past whatever reached the file.
            active.len = if offset + len <= active.filled {
                offset + len
            } else {
                active
                    .file
                    .metadata()
                    .map_or(offset, |m| m.len().max(offset))
            };
            continue;
        }
        active.filled = active.filled.max(offset + len);
        active.len += len;
        s.disk_bytes += len;
        s.disk_full = false;
        s.unacked += 1;
        if let Some(seg) = s.segments.get_mut(&id) {
            seg.records += 1;
            seg.bytes += len;
            seg.first_ms.get_or_insert(req.received_ms);
        }
        written.push((
            i,
            Position {
                id: RecordId {
                    segment: id,
                    offset,
                },
                len: len as u32,
                record_len: req.record_len,
            },
        ));
    }
    let mut sync_error = None;
    if !written.is_empty() {
        let (stored, record): (u64, u64) = written.iter().fold((0, 0), |(s, r), (_, p)| {
            (s + p.len as u64, r + p.record_len as u64)
        });
        metrics::counter!("gateway_spool_written_bytes_total").increment(stored);
        metrics::counter!("gateway_spool_record_bytes_total").increment(record);
        s.dirty = true;
        let to_sync = match (&s.active, fsync) {
            (Some(a), FsyncPolicy::Always) => Some(a.file.clone()),
            _ => None,
        };
        if let Some(file) = to_sync {
            // Without the lock: acks, the reader and metrics must not wait for the disk. The
            // caller holds the write token (`writes`), and nothing reads these records before
            // they are in `unread`.
            drop(s);
            let synced = timed_sync(&file);
            s = State::lock(state);
            match synced {
                Ok(()) => s.dirty = false,
                Err(e) => sync_error = Some(e.to_string()),
            }
        }
    }
    for (i, position) in written {
        s.unread.push_back(position);
        let id = position.id;
        if sync_error.is_none()
            && let Some(record) = group[i].keep.take()
        {
            let size = record.encoded_len();
            if s.hot_bytes + size <= HOT_TAIL_MAX_BYTES {
                s.hot_bytes += size;
                s.hot.insert(id, (record, size));
            }
        }
        results[i] = Some(match &sync_error {
            // The data may still reach the disk, and will be delivered; but the client must
            // not count on it, so it is told to retry (a duplicate is harmless).
            Some(e) => Err(SpoolError::Io(format!("fsync failed: {e}"))),
            None => Ok(()),
        });
    }
    drop(s);
    writes.last_commit = Some(std::time::Instant::now());
    for (req, result) in group.drain(..).zip(results) {
        let _ = req.reply.send(result.unwrap_or(Err(SpoolError::Closed)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::{log_options, record};

    fn options(segment_bytes: u64, max_disk_bytes: u64) -> LogOptions {
        LogOptions {
            segment_bytes,
            max_disk_bytes,
            ..log_options(FsyncPolicy::Always)
        }
    }

    /// A log as the gateway opens it by default (`fsync = "always"`, zstd).
    async fn open(dir: &Path, segment_bytes: u64, max_disk: u64) -> (SegmentLog, OpenReport) {
        SegmentLog::open(dir, options(segment_bytes, max_disk)).unwrap()
    }

    async fn open_plain(dir: &Path) -> (SegmentLog, OpenReport) {
        let options = LogOptions {
            compression: SpoolCompression::None,
            ..options(1 << 20, 1 << 30)
        };
        SegmentLog::open(dir, options).unwrap()
    }

    /// The bytes a record takes in a log by default.
    fn stored_len(n: u8) -> u64 {
        frame_of(&record(n), SpoolCompression::Zstd).bytes.len() as u64
    }

    async fn read_all(log: &SegmentLog, n: usize) -> Vec<(RecordId, SpoolRecord)> {
        let mut out = vec![];
        for _ in 0..n {
            let next = log.next_position().await.unwrap();
            let bytes = log.read(next.id, next.len).await.unwrap();
            assert_eq!(
                bytes.len(),
                next.record_len as usize,
                "record_len is the record's"
            );
            out.push((next.id, SpoolRecord::decode(bytes).unwrap()));
        }
        out
    }

    /// The path of the one segment file in `dir`.
    fn only_segment(dir: &Path) -> PathBuf {
        std::fs::read_dir(dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
    }

    /// Waits (up to 5 s) until the writer has zero-filled `seg` to at least `len` bytes.
    async fn wait_for_room(seg: &Path, len: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(seg).unwrap().len() < len {
            assert!(std::time::Instant::now() < deadline, "no room filled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn segment_files(dir: &Path) -> Vec<Vec<u8>> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    #[tokio::test]
    async fn records_are_stored_compressed_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), 1 << 20, 1 << 30).await;
        log.append(record(1), false).await.unwrap();
        let plain = record(1).encode().len() as u64 + frame::HEADER_LEN as u64;
        assert!(
            log.stats().disk_bytes < plain,
            "the budget counts the compressed frame"
        );
        let files = segment_files(dir.path());
        assert_eq!(files[0][..4], frame::MAGIC_ZSTD);
        assert_eq!(read_all(&log, 1).await[0].1, record(1));

        // A record that zstd cannot shrink is stored as is.
        let mut noise = record(2);
        noise.body = frame::noise(4096).into();
        log.append(noise.clone(), false).await.unwrap();
        assert_eq!(read_all(&log, 1).await[0].1, noise);
        let files = segment_files(dir.path());
        let second = stored_len(1) as usize;
        assert_eq!(files[0][second..second + 4], frame::MAGIC);
    }

    #[tokio::test]
    async fn a_log_written_plain_reads_back_after_compression_is_turned_on_and_off() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = open_plain(dir.path()).await;
            log.append(record(1), false).await.unwrap();
            log.close().await;
        }
        {
            let (log, report) = open(dir.path(), 1 << 20, 1 << 30).await;
            assert_eq!(report.records, 1);
            log.append(record(2), false).await.unwrap();
            log.close().await;
        }
        let kinds: Vec<_> = segment_files(dir.path())
            .iter()
            .map(|f| f[..4].to_vec())
            .collect();
        assert_eq!(
            kinds,
            vec![frame::MAGIC.to_vec(), frame::MAGIC_ZSTD.to_vec()]
        );
        let (log, report) = open_plain(dir.path()).await;
        assert_eq!((report.records, report.damaged_regions), (2, 0));
        let got = read_all(&log, 2).await;
        assert_eq!(
            got.into_iter().map(|(_, r)| r).collect::<Vec<_>>(),
            vec![record(1), record(2)]
        );
    }

    #[tokio::test]
    async fn records_are_replayed_after_reopen_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = open(dir.path(), 1 << 20, 1 << 30).await;
            for n in 1..=5 {
                log.append(record(n), false).await.unwrap();
            }
            let got = read_all(&log, 2).await;
            log.ack(got[0].0);
            log.ack(got[1].0);
        }
        // The active segment was never sealed, so all five come back (at-least-once).
        let (log, report) = open(dir.path(), 1 << 20, 1 << 30).await;
        assert_eq!(report.records, 5);
        let got = read_all(&log, 5).await;
        assert_eq!(
            got.iter().map(|(_, r)| r.span_count).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        for (id, _) in &got {
            log.ack(*id);
        }
        // Sealed segments disappear as soon as they are delivered.
        assert_eq!(log.stats().records, 0);
        assert_eq!(log.stats().disk_bytes, 0);
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn appends_go_into_zero_filled_room_that_a_crash_leaves_and_a_close_trims() {
        let dir = tempfile::tempdir().unwrap();
        let seg = || only_segment(dir.path());
        {
            let (log, _) = open(dir.path(), 1 << 20, 1 << 30).await;
            for n in 1..=3 {
                log.append(record(n), false).await.unwrap();
            }
            assert_eq!(
                log.stats().disk_bytes,
                (1..=3).map(stored_len).sum::<u64>(),
                "the budget counts records"
            );
            // The writer fills room once no append waits.
            wait_for_room(&seg(), ZERO_FILL_FIRST_STEP).await;
        }
        // Dropped without a close, as a crash would leave it: the room is no damage.
        let (log, report) = open(dir.path(), 1 << 20, 1 << 30).await;
        assert_eq!((report.records, report.damaged_regions), (3, 0));
        let got = read_all(&log, 3).await;
        for (id, _) in &got {
            log.ack(*id);
        }
        log.append(record(4), false).await.unwrap();
        log.close().await;
        let (_, report) = open(dir.path(), 1 << 20, 1 << 30).await;
        assert_eq!(
            (report.records, report.bytes),
            (1, stored_len(4)),
            "closed at its last record"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_that_find_the_writer_idle_commit_in_place_and_the_rest_queue_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), 1 << 20, 1 << 30).await;
        assert!(
            log.write_in_place,
            "two workers: another one serves meanwhile"
        );
        log.append(record(1), false).await.unwrap();
        assert_eq!(
            State::lock(&log.state).commits_in_place,
            1,
            "the writer was idle"
        );

        // A commit made in place still gets room zero-filled after it, by the writer.
        let seg = only_segment(dir.path());
        wait_for_room(&seg, log.stats().disk_bytes + 1).await;

        // Many at once: whoever finds the token taken queues for the writer's group commit.
        let appends: Vec<_> = (0..200u32)
            .map(|n| {
                let log = log.clone();
                tokio::spawn(async move { log.append(record((n % 250) as u8), false).await })
            })
            .collect();
        for append in appends {
            append.await.unwrap().unwrap();
        }
        let got = read_all(&log, 201).await;
        let mut ids: Vec<_> = got.iter().map(|(id, _)| *id).collect();
        ids.dedup();
        assert_eq!(ids.len(), 201, "every record once, in file order");
        assert!(ids.windows(2).all(|w| w[0].offset < w[1].offset));

        log.close().await;
        let (_, report) = open(dir.path(), 1 << 20, 1 << 30).await;
        assert_eq!((report.records, report.damaged_regions), (201, 0));
    }

    #[tokio::test]
    async fn a_single_worker_runtime_leaves_every_commit_to_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), 1 << 20, 1 << 30).await;
        log.append(record(1), false).await.unwrap();
        assert!(!log.write_in_place);
        assert_eq!(State::lock(&log.state).commits_in_place, 0);
    }

    #[tokio::test]
    async fn interval_mode_acknowledges_before_the_sync_and_syncs_within_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions {
            fsync: FsyncPolicy::Interval,
            fsync_interval: Duration::from_millis(300),
            ..options(1 << 20, 1 << 30)
        };
        let (log, _) = SegmentLog::open(dir.path(), options).unwrap();
        log.append(record(1), false).await.unwrap();
        assert!(
            State::lock(&log.state).dirty,
            "acknowledged before any sync"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while State::lock(&log.state).dirty {
            assert!(std::time::Instant::now() < deadline, "never synced");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Nothing new: the next intervals leave it clean; a new append makes it dirty again.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!State::lock(&log.state).dirty);
        log.append(record(2), false).await.unwrap();
        assert!(State::lock(&log.state).dirty);
    }

    #[tokio::test]
    async fn segments_rotate_and_are_removed_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), 2 * stored_len(1), 1 << 30).await;
        for n in 1..=6 {
            log.append(record(n), false).await.unwrap();
        }
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files >= 3, "rotated into {files} segments");
        let got = read_all(&log, 6).await;
        for (id, _) in &got {
            log.ack(*id);
        }
        log.reclaim().await;
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn the_disk_budget_refuses_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), 1 << 20, stored_len(1) + 10).await;
        log.append(record(1), false).await.unwrap();
        assert!(matches!(
            log.append(record(2), false).await,
            Err(SpoolError::Full(_))
        ));
        assert!(log.stats().disk_full);
    }

    #[tokio::test]
    async fn a_torn_tail_is_survived_reported_and_earlier_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = open(dir.path(), 1 << 20, 1 << 30).await;
            for n in 1..=3 {
                log.append(record(n), false).await.unwrap();
            }
            log.close().await;
        }
        let seg = only_segment(dir.path());
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 7).unwrap();
        let (log, report) = open(dir.path(), 1 << 20, 1 << 30).await;
        assert_eq!(report.records, 2);
        assert_eq!(report.damaged_regions, 1);
        let got = read_all(&log, 2).await;
        assert_eq!(
            got.iter().map(|(_, r)| r.span_count).collect::<Vec<_>>(),
            vec![1, 2]
        );
        // New appends go to a new segment, after the damaged one.
        log.append(record(9), false).await.unwrap();
        assert_eq!(read_all(&log, 1).await[0].1.span_count, 9);
    }

    #[tokio::test]
    async fn closed_logs_drain_then_end() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), 1 << 20, 1 << 30).await;
        log.append(record(1), false).await.unwrap();
        log.close().await;
        assert!(matches!(
            log.append(record(2), false).await,
            Err(SpoolError::Closed)
        ));
        assert!(log.next_position().await.is_some());
        assert!(log.next_position().await.is_none());
    }
}
