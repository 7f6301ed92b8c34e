//! A tenant's spans-per-second quota: a token bucket that a request may overdraw, so a request
//! larger than a second's quota still goes once the bucket is full, and the debt then holds
//! back the ones after it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Seconds of quota a quiet tenant may spend at once.
const BURST_SECONDS: f64 = 1.0;

pub struct SpanQuota {
    per_second: f64,
    bucket: Mutex<(f64, Instant)>,
}

impl SpanQuota {
    pub fn new(per_second: f64) -> Self {
        Self {
            per_second,
            bucket: Mutex::new((per_second * BURST_SECONDS, Instant::now())),
        }
    }

    fn refill(&self, bucket: &mut (f64, Instant)) {
        let now = Instant::now();
        let burst = self.per_second * BURST_SECONDS;
        bucket.0 =
            (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * self.per_second).min(burst);
        bucket.1 = now;
    }

    /// Whether anything may be sent now; else how long until it may. Checked before a
    /// request's body is read, so an over-quota flood costs no decoding.
    pub fn check(&self) -> Result<(), Duration> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut bucket);
        if bucket.0 > 0.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(-bucket.0 / self.per_second))
        }
    }

    /// Takes `spans` from the bucket, into debt if need be, when it holds any; else how long
    /// until it will.
    pub fn take(&self, spans: usize) -> Result<(), Duration> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut bucket);
        if bucket.0 > 0.0 {
            bucket.0 -= spans as f64;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(-bucket.0 / self.per_second))
        }
    }

    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_may_overdraw_once_then_waits() {
        let q = SpanQuota::new(100.0);
        assert!(q.take(500).is_ok(), "a full bucket lets a large request go");
        let wait = q.take(1).expect_err("the debt holds back the next");
        assert!(
            wait > Duration::from_secs(3) && wait <= Duration::from_secs(4),
            "{wait:?}"
        );
        assert!(q.check().is_err());
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let q = SpanQuota::new(1000.0);
        assert!(q.take(1100).is_ok());
        assert!(q.check().is_err(), "100 spans of debt take 0.1 s to repay");
        std::thread::sleep(Duration::from_millis(150));
        assert!(q.check().is_ok());
    }
}
