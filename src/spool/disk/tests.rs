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
