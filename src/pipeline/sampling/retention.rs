//! Traces the sampler has not kept (dropped, or not yet decided), on disk for the feedback
//! window: segment files under `<data_dir>/sampling`, each the entries of a stretch of time,
//! deleted whole when the window has passed. An in-memory index finds a trace's entries by its
//! id or client request id; it is rebuilt from the files after a restart.
//!
//! Entry frames are the spool's (checksummed, optionally zstd): `kind | trace id | written ms`,
//! then for a held part its `SpoolRecord`. A `PROMOTED` frame says a trace went on to MLflow.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;

use crate::config::SpoolCompression;
use crate::spool::{SpoolRecord, frame};
use crate::vocab::Generations;

const HELD: u8 = 1;
const PROMOTED: u8 = 2;
const PREFIX_LEN: usize = 1 + 16 + 8;
/// A window spans this many segments, so the disk is given back an eighth of a window at a time.
const SEGMENTS_PER_WINDOW: u32 = 8;
/// Traces discarded for good are remembered (per generation) to answer their feedback 410.
const GONE_MEMORY: usize = 250_000;

/// Why a trace is no longer held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneReason {
    /// Its feedback window passed.
    Expired,
    /// Discarded early: the spool needed the disk (`spool.max_disk_bytes`).
    Disk,
}

impl GoneReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GoneReason::Expired => "expired",
            GoneReason::Disk => "disk",
        }
    }
}

/// Where a trace stands in retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Held: feedback can still bring it.
    Held {
        trace_id: [u8; 16],
        tenant: Option<String>,
    },
    /// Discarded for good.
    Gone(GoneReason),
    Unknown,
}

/// A held trace's entries, taken out for promotion (`Retention::take`).
pub struct Taken {
    pub trace_id: [u8; 16],
    pub records: Vec<SpoolRecord>,
    held: Held,
}

#[derive(Debug, Clone)]
struct Held {
    /// (segment, offset, frame length) of each entry.
    entries: Vec<(u64, u64, u32)>,
    tenant: Option<String>,
    client_request_id: Option<String>,
    /// The segment of its first entry: the trace goes when that one does.
    first_segment: u64,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    bytes: u64,
    first_ms: u64,
    last_ms: u64,
    traces: Vec<[u8; 16]>,
}

struct Store {
    segments: VecDeque<Segment>,
    active: Option<File>,
    held: HashMap<[u8; 16], Held>,
    by_crid: HashMap<String, [u8; 16]>,
    gone: Generations<[u8; 16], GoneReason>,
    gone_crids: Generations<String, GoneReason>,
    bytes: u64,
    next_seq: u64,
    unsynced: bool,
}

pub struct Retention {
    dir: PathBuf,
    store: Mutex<Store>,
    window_ms: u64,
    segment_ms: u64,
    max_segment_bytes: u64,
    compression: SpoolCompression,
}

/// What was found on disk at start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub traces: usize,
    pub bytes: u64,
}

/// Traces discarded by `Retention::expire`, with the reason.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Discarded {
    pub expired: usize,
    pub disk: usize,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("held-{seq:020}.log"))
}

impl Retention {
    /// Opens (creating) `dir` and indexes what an earlier run left there; segments past the
    /// window are deleted.
    pub fn open(
        dir: &Path,
        window: Duration,
        max_segment_bytes: u64,
        compression: SpoolCompression,
        now_ms: u64,
    ) -> io::Result<(Self, Recovered)> {
        fs::create_dir_all(dir)?;
        let window_ms = window.as_millis().max(1) as u64;
        let mut store = Store {
            segments: VecDeque::new(),
            active: None,
            held: HashMap::new(),
            by_crid: HashMap::new(),
            gone: Generations::new(GONE_MEMORY),
            gone_crids: Generations::new(GONE_MEMORY),
            bytes: 0,
            next_seq: 0,
            unsynced: false,
        };
        let mut seqs: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("held-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        seqs.sort_unstable();
        for seq in seqs {
            let path = segment_path(dir, seq);
            let buf = fs::read(&path)?;
            store.next_seq = seq + 1;
            let mut segment = Segment {
                seq,
                path,
                bytes: buf.len() as u64,
                first_ms: u64::MAX,
                last_ms: 0,
                traces: Vec::new(),
            };
            // Damaged stretches (a torn last write) are skipped, as in the spool.
            let (found, _damage) = frame::scan(&buf);
            for f in found {
                let Ok(payload) = frame::into_record(buf[f.offset..f.offset + f.len].to_vec())
                else {
                    continue;
                };
                let Some((kind, trace_id, written_ms)) = read_prefix(&payload) else {
                    continue;
                };
                segment.first_ms = segment.first_ms.min(written_ms);
                segment.last_ms = segment.last_ms.max(written_ms);
                match kind {
                    HELD => {
                        let Ok(record) = SpoolRecord::decode(payload.slice(PREFIX_LEN..)) else {
                            continue;
                        };
                        store.index(trace_id, &record, (seq, f.offset as u64, f.len as u32));
                        segment.traces.push(trace_id);
                    }
                    PROMOTED => {
                        store.take(&trace_id);
                    }
                    _ => {}
                }
            }
            store.bytes += segment.bytes;
            store.segments.push_back(segment);
        }
        let this = Self {
            dir: dir.to_path_buf(),
            store: Mutex::new(store),
            window_ms,
            segment_ms: (window_ms / u64::from(SEGMENTS_PER_WINDOW)).max(1),
            max_segment_bytes: max_segment_bytes.max(1),
            compression,
        };
        this.expire(now_ms, None);
        let store = this.lock();
        let recovered = Recovered {
            traces: store.held.len(),
            bytes: store.bytes,
        };
        drop(store);
        Ok((this, recovered))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one trace's part of a record. Written to the OS at once; `sync` makes it
    /// durable.
    pub fn hold(&self, trace_id: [u8; 16], record: &SpoolRecord, now_ms: u64) -> io::Result<()> {
        let prefix = prefix(HELD, &trace_id, now_ms);
        let mut body = Vec::with_capacity(record.encoded_len());
        record.encode_into(&mut body);
        let frame = self.frame(&prefix, &body);
        let mut store = self.lock();
        let (seq, offset) = self.append(&mut store, &frame, now_ms)?;
        store.index(trace_id, record, (seq, offset, frame.len() as u32));
        if let Some(s) = store.segments.back_mut() {
            s.traces.push(trace_id);
        }
        Ok(())
    }

    fn frame(&self, prefix: &[u8], body: &[u8]) -> Vec<u8> {
        let compressed = match self.compression {
            SpoolCompression::Zstd => frame::encode_compressed([prefix, body]),
            SpoolCompression::None => None,
        };
        compressed.unwrap_or_else(|| {
            frame::encode_with(prefix.len() + body.len(), |out| {
                out.extend_from_slice(prefix);
                out.extend_from_slice(body);
            })
        })
    }

    /// Writes a frame to the active segment (starting a new one when the current one is full
    /// or its stretch of time is over); returns where it went.
    fn append(&self, store: &mut Store, frame: &[u8], now_ms: u64) -> io::Result<(u64, u64)> {
        let roll = match store.segments.back() {
            Some(s) if store.active.is_some() => {
                s.bytes + frame.len() as u64 > self.max_segment_bytes
                    || now_ms.saturating_sub(s.first_ms) >= self.segment_ms
            }
            _ => true,
        };
        if roll {
            if let Some(old) = store.active.take()
                && store.unsynced
            {
                old.sync_data()?;
            }
            let seq = store.next_seq;
            let path = segment_path(&self.dir, seq);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            store.next_seq += 1;
            store.active = Some(file);
            store.segments.push_back(Segment {
                seq,
                path,
                bytes: 0,
                first_ms: now_ms,
                last_ms: now_ms,
                traces: Vec::new(),
            });
        }
        let (Some(file), Some(segment)) = (store.active.as_mut(), store.segments.back_mut()) else {
            return Err(io::Error::other("no active retention segment"));
        };
        let offset = segment.bytes;
        file.write_all(frame)?;
        segment.bytes += frame.len() as u64;
        segment.last_ms = now_ms;
        store.bytes += frame.len() as u64;
        store.unsynced = true;
        Ok((segment.seq, offset))
    }

    /// Makes what was written durable.
    pub fn sync(&self) -> io::Result<()> {
        let store = self.lock();
        if !store.unsynced {
            return Ok(());
        }
        let file = store.active.as_ref().map(File::try_clone).transpose()?;
        drop(store);
        if let Some(file) = file {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Whether the trace has entries here.
    pub fn holds(&self, trace_id: &[u8; 16]) -> bool {
        self.lock().held.contains_key(trace_id)
    }

    pub fn standing_of_trace(&self, trace_id: &[u8; 16]) -> Standing {
        let store = self.lock();
        match store.held.get(trace_id) {
            Some(h) => Standing::Held {
                trace_id: *trace_id,
                tenant: h.tenant.clone(),
            },
            None => store
                .gone
                .get(trace_id)
                .map_or(Standing::Unknown, |r| Standing::Gone(*r)),
        }
    }

    pub fn standing_of_crid(&self, crid: &str) -> Standing {
        let store = self.lock();
        match store.by_crid.get(crid) {
            Some(id) => store
                .held
                .get(id)
                .map_or(Standing::Unknown, |h| Standing::Held {
                    trace_id: *id,
                    tenant: h.tenant.clone(),
                }),
            None => store
                .gone_crids
                .get(crid)
                .map_or(Standing::Unknown, |r| Standing::Gone(*r)),
        }
    }

    /// Takes a trace's entries out of the index and reads them back; None if it holds none
    /// (never, or another caller took them). `restore` puts them back if they cannot go on.
    pub fn take(&self, trace_id: &[u8; 16]) -> io::Result<Option<Taken>> {
        let Some(held) = self.lock().take(trace_id) else {
            return Ok(None);
        };
        let mut records = Vec::with_capacity(held.entries.len());
        let mut open: Option<(u64, File)> = None;
        for &(seq, offset, len) in &held.entries {
            if open.as_ref().is_none_or(|(s, _)| *s != seq) {
                open = Some((seq, File::open(segment_path(&self.dir, seq))?));
            }
            let Some((_, file)) = &open else { continue };
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, offset)?;
            let (found, _) = frame::scan(&buf);
            let Some(f) = found.first() else {
                tracing::error!(seq, offset, "damaged retention entry skipped");
                continue;
            };
            let payload = frame::into_record(buf[f.offset..f.offset + f.len].to_vec())?;
            match SpoolRecord::decode(payload.slice(PREFIX_LEN.min(payload.len())..)) {
                Ok(record) => records.push(record),
                Err(e) => {
                    tracing::error!(seq, offset, error = %e, "undecodable retention entry skipped")
                }
            }
        }
        Ok(Some(Taken {
            trace_id: *trace_id,
            records,
            held,
        }))
    }

    /// Puts taken entries back (their promotion failed).
    pub fn restore(&self, taken: Taken) {
        let mut store = self.lock();
        let crid = taken.held.client_request_id.clone();
        if let Some(crid) = crid {
            store.by_crid.insert(crid, taken.trace_id);
        }
        store.held.insert(taken.trace_id, taken.held);
    }

    /// Notes on disk that a taken trace went on, so a restart does not hold it again.
    pub fn promoted(&self, trace_id: &[u8; 16], now_ms: u64) -> io::Result<()> {
        let frame = self.frame(&prefix(PROMOTED, trace_id, now_ms), &[]);
        let mut store = self.lock();
        self.append(&mut store, &frame, now_ms).map(|_| ())
    }

    /// Deletes segments whose window has passed, then the oldest until at most `budget` bytes
    /// remain (the spool needs the disk). Their traces are discarded for good.
    pub fn expire(&self, now_ms: u64, budget: Option<u64>) -> Discarded {
        let mut discarded = Discarded::default();
        let mut store = self.lock();
        while let Some(oldest) = store.segments.front() {
            let reason = if oldest.last_ms.saturating_add(self.window_ms) <= now_ms {
                GoneReason::Expired
            } else if budget.is_some_and(|b| store.bytes > b) {
                GoneReason::Disk
            } else {
                break;
            };
            let Some(segment) = store.segments.pop_front() else {
                break;
            };
            if store.segments.is_empty() {
                store.active = None;
            }
            store.bytes = store.bytes.saturating_sub(segment.bytes);
            for id in &segment.traces {
                if store
                    .held
                    .get(id)
                    .is_some_and(|h| h.first_segment <= segment.seq)
                {
                    store.discard(id, reason);
                    match reason {
                        GoneReason::Expired => discarded.expired += 1,
                        GoneReason::Disk => discarded.disk += 1,
                    }
                }
            }
            if let Err(e) = fs::remove_file(&segment.path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %segment.path.display(), error = %e, "cannot delete retention segment");
            }
        }
        discarded
    }

    /// Bytes on disk and traces held.
    pub fn size(&self) -> (u64, usize) {
        let store = self.lock();
        (store.bytes, store.held.len())
    }
}

impl Store {
    fn index(&mut self, trace_id: [u8; 16], record: &SpoolRecord, at: (u64, u64, u32)) {
        let crid = record
            .roots
            .iter()
            .find(|j| j.trace_id == trace_id)
            .and_then(|j| j.facts.client_request_id.clone());
        let held = self.held.entry(trace_id).or_insert_with(|| Held {
            entries: Vec::new(),
            tenant: record.tenant.clone(),
            client_request_id: None,
            first_segment: at.0,
        });
        held.entries.push(at);
        if let Some(crid) = crid {
            held.client_request_id = Some(crid.clone());
            self.by_crid.insert(crid, trace_id);
        }
    }

    fn take(&mut self, trace_id: &[u8; 16]) -> Option<Held> {
        let held = self.held.remove(trace_id)?;
        if let Some(crid) = &held.client_request_id {
            self.by_crid.remove(crid);
        }
        Some(held)
    }

    fn discard(&mut self, trace_id: &[u8; 16], reason: GoneReason) {
        if let Some(held) = self.take(trace_id) {
            self.gone.insert(*trace_id, reason);
            if let Some(crid) = held.client_request_id {
                self.gone_crids.insert(crid, reason);
            }
        }
    }
}

fn prefix(kind: u8, trace_id: &[u8; 16], now_ms: u64) -> [u8; PREFIX_LEN] {
    let mut p = [0u8; PREFIX_LEN];
    p[0] = kind;
    p[1..17].copy_from_slice(trace_id);
    p[17..].copy_from_slice(&now_ms.to_le_bytes());
    p
}

fn read_prefix(payload: &Bytes) -> Option<(u8, [u8; 16], u64)> {
    let p = payload.get(..PREFIX_LEN)?;
    let trace_id = p[1..17].try_into().ok()?;
    let written = u64::from_le_bytes(p[17..].try_into().ok()?);
    Some((p[0], trace_id, written))
}
