//! The writer: concurrent appends batched into one write and, with `fsync = "always"`, one
//! fsync (group commit); an append that finds the writer idle makes its own commit; the active
//! segment zero-filled ahead of the appends while nothing waits.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use super::*;
use crate::config::{FsyncPolicy, SpoolCompression};
use crate::spool::frame;
use crate::spool::{RecordId, SpoolError, SpoolRecord};

/// What the write token holds: when the last group commit ended (`IN_PLACE_AFTER_QUIET`).
#[derive(Default)]
pub(super) struct Writes {
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
pub(super) fn try_take(token: &Mutex<Writes>) -> Option<std::sync::MutexGuard<'_, Writes>> {
    match token.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Takes the write token, waiting for it (on a blocking thread only).
pub(super) fn take(token: &Mutex<Writes>) -> std::sync::MutexGuard<'_, Writes> {
    token.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether appends may make their own group commit on the runtime's worker: only where another
/// worker keeps serving the other connections while this one waits for the disk.
pub(super) fn can_write_in_place() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| {
        h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            && h.metrics().num_workers() >= 2
    })
}

/// `sync_data`, timed into `gateway_spool_fsync_seconds`.
pub(super) fn timed_sync(file: &File) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let synced = file.sync_data();
    metrics::histogram!("gateway_spool_fsync_seconds").record(started.elapsed().as_secs_f64());
    synced
}

/// `fsync = "interval"`: syncs the active segment if anything was written since the last sync.
/// The sync runs without the state lock, as a group commit's does: holding it stalled every
/// append, acknowledgement and read for the length of the fsync once per interval. A write
/// during the sync marks the log dirty again; a failed sync leaves it dirty, to be retried.
pub(super) fn sync_if_dirty(state: &Mutex<State>) {
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

impl SegmentLog {
    /// Makes the request's group commit here, on the appending task's worker, when the writer
    /// is idle (nothing queued, nobody writing, no commit in the last `IN_PLACE_AFTER_QUIET`);
    /// hands the request back otherwise. A request that finds the writer idle would wait for
    /// nobody else, so the hand-over to the writer and back (a blocking thread woken for the
    /// write, a worker woken for the answer) only cost: nearly half the thread wake-ups a
    /// request caused (BENCHMARKS.md, "Decisions"). This worker waits for the disk meanwhile, which is why it
    /// needs another worker for the other connections (`can_write_in_place`); at most one does
    /// at a time (the write token), and while it does, later requests queue for the writer and
    /// are committed together as before.
    pub(super) fn write_in_place(&self, request: WriteRequest) -> Option<WriteRequest> {
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
}

/// A record framed for the log.
pub struct Frame {
    pub(super) bytes: Vec<u8>,
    /// The record's size before compression.
    pub(super) record_len: usize,
}

impl Frame {
    /// Its bytes on disk.
    pub fn stored_len(&self) -> usize {
        self.bytes.len()
    }
}

/// A record's frame as `compression` has it. Built by the appending task, not the writer, so
/// concurrent requests compress in parallel rather than one after another.
pub(super) fn frame_of(record: &SpoolRecord, compression: SpoolCompression) -> Frame {
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
pub(super) async fn write_loop(
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
pub(super) async fn fill_room_off_runtime(
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
pub(super) fn fill_room(state: &Mutex<State>, segment_bytes: u64) {
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
pub(super) fn wake_reader(data: &Notify) {
    data.notify_waiters();
    data.notify_one();
}

/// Writes a group of frames, fsyncs once, then answers every request. `writes` is the write
/// token's contents, so the caller holds it; the commit's end is noted there
/// (`IN_PLACE_AFTER_QUIET`).
pub(super) fn write_group(
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
