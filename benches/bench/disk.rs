//! The disk's own flush latency, measured beside the gateway in the same run: what a durable
//! acknowledgement cannot beat (scenario 4's target is the gateway's ack p99 against it).

use std::io::Write;
use std::time::{Duration, Instant};

/// Bytes appended before each flush: about one group commit of scenario 4's load (a few
/// compressed 100-span requests).
const APPEND_BYTES: usize = 40 * 1024;

/// fdatasync latency percentiles in ms (p50, p99) and the count, over `duration` of appends
/// `rate_hz` times a second to a fresh file in the system's temporary directory (where the
/// benchmark's gateways keep their spools).
pub async fn fdatasync_ms(duration: Duration, rate_hz: f64) -> anyhow::Result<(f64, f64, usize)> {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::Builder::new().prefix("bench-disk-").tempdir()?;
        let mut file = std::fs::File::create(dir.path().join("probe"))?;
        let block = vec![0x5au8; APPEND_BYTES];
        let every = Duration::from_secs_f64(1.0 / rate_hz);
        let started = Instant::now();
        let mut took = Vec::new();
        while started.elapsed() < duration {
            let tick = Instant::now();
            file.write_all(&block)?;
            let sync = Instant::now();
            file.sync_data()?;
            took.push(sync.elapsed().as_secs_f64() * 1e3);
            if let Some(rest) = every.checked_sub(tick.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        took.sort_by(f64::total_cmp);
        let at = |p: f64| took[((took.len() as f64 * p) as usize).min(took.len() - 1)];
        Ok((at(0.5), at(0.99), took.len()))
    })
    .await?
}
