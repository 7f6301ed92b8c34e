//! Exponential backoff with full jitter, honouring `Retry-After`.

use std::future::Future;
use std::time::{Duration, Instant};

use super::error::{ErrorClass, MlflowError};
use crate::config::RetryConfig;

/// Retry policy shared by every MLflow call site.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// Zero: no limit.
    pub max_elapsed: Duration,
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        Self {
            initial: c.initial_backoff,
            max: c.max_backoff,
            max_elapsed: c.max_elapsed,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (0-based): a random point in
    /// [backoff/2, backoff], backoff doubling up to `max`. Half-jitter keeps a floor so a
    /// struggling server is not hammered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.max);
        let half = exp / 2;
        half + exp.mul_f64(fastrand::f64() * 0.5)
    }

    /// Runs `op` until it succeeds, fails permanently, or the elapsed limit passes. `on_retry`
    /// sees each retryable failure (for logs, metrics and readiness).
    pub async fn run<T, F, Fut>(
        &self,
        mut op: F,
        mut on_retry: impl FnMut(&MlflowError, u32),
    ) -> Result<T, MlflowError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, MlflowError>>,
    {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.class() == ErrorClass::Permanent => return Err(e),
                Err(e) => {
                    if self.out_of_time(started) {
                        return Err(e);
                    }
                    on_retry(&e, attempt);
                    tokio::time::sleep(self.wait(attempt, &e)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Whether retries that began at `started` are past the elapsed limit.
    pub fn out_of_time(&self, started: Instant) -> bool {
        !self.max_elapsed.is_zero() && started.elapsed() >= self.max_elapsed
    }

    /// The wait before retry number `attempt` after the retryable failure `e`: the backoff, or
    /// the server's `Retry-After` if that is longer.
    pub fn wait(&self, attempt: u32, e: &MlflowError) -> Duration {
        let backoff = self.delay(attempt);
        match e.retry_after() {
            Some(ra) => backoff.max(ra.min(self.max.max(ra))),
            None => backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
            max_elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_elapsed: Duration::ZERO,
        };
        for _ in 0..100 {
            let d0 = p.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d10 = p.delay(10);
            assert!(d10 >= Duration::from_millis(500) && d10 <= Duration::from_secs(1));
        }
    }

    #[tokio::test]
    async fn retries_retryable_until_success() {
        let calls = AtomicU32::new(0);
        let r = policy()
            .run(
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                        Err(MlflowError::Timeout)
                    } else {
                        Ok(7)
                    }
                },
                |_, _| {},
            )
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = policy()
            .run(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(MlflowError::Status {
                        status: 400,
                        message: "bad".into(),
                        retry_after: None,
                    })
                },
                |_, _| {},
            )
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn max_elapsed_stops_retrying() {
        let mut p = policy();
        p.max_elapsed = Duration::from_millis(20);
        let r: Result<(), _> = p
            .run(|| async { Err(MlflowError::Timeout) }, |_, _| {})
            .await;
        assert!(matches!(r, Err(MlflowError::Timeout)));
    }
}
