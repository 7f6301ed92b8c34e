//! Opening the log: every segment scanned and validated; damaged stretches (a torn tail after a
//! crash, corruption) reported, counted and skipped without losing the records around them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use super::*;
use crate::config::FsyncPolicy;
use crate::spool::frame;
use crate::spool::{RecordId, SpoolRecord};

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
}
