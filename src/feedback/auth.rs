//! Bearer-token authentication (constant-time comparison of digests, so neither content nor
//! length leaks through timing) and per-client token-bucket rate limiting.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send 'Authorization: Bearer <token>'")]
    Missing,
    #[error("invalid token")]
    Invalid,
}

pub struct Authenticator {
    digests: Vec<[u8; 32]>,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Authenticator {
    pub fn new(tokens: &[Secret]) -> Self {
        Self {
            digests: tokens.iter().map(|t| digest(t.expose())).collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Checks an `Authorization` header value. Returns the index of the matching token (a
    /// rate-limit key that is not the secret), or None when auth is off.
    pub fn check(&self, authorization: Option<&str>) -> Result<Option<usize>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let token = authorization
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let presented = digest(token);
        let mut found = None;
        // Compare against every token, so timing does not reveal which one matched.
        for (i, d) in self.digests.iter().enumerate() {
            if bool::from(d.ct_eq(&presented)) {
                found = Some(i);
            }
        }
        found.map(Some).ok_or(AuthError::Invalid)
    }
}

/// Reads tokens from a file: one per line, blank lines and `#` comments ignored.
pub fn read_tokens_file(path: &std::path::Path) -> std::io::Result<Vec<Secret>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Secret::new)
        .collect())
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by client (token index or peer address).
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets kept before idle ones are dropped.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    /// `per_second` of 0 disables limiting.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request's worth; on refusal, the seconds until one is available.
    pub fn check(&self, key: &str) -> Result<(), f64> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > MAX_BUCKETS {
            let (rate, burst) = (self.per_second, self.burst);
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.last).as_secs_f64() * self.per_second).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - b.tokens) / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked() {
        let auth = Authenticator::new(&[Secret::new("alpha"), Secret::new("beta")]);
        assert_eq!(auth.check(None), Err(AuthError::Missing));
        assert_eq!(auth.check(Some("Basic abc")), Err(AuthError::Missing));
        assert_eq!(auth.check(Some("Bearer nope")), Err(AuthError::Invalid));
        assert_eq!(auth.check(Some("Bearer beta")), Ok(Some(1)));
        assert_eq!(auth.check(Some("bearer  alpha ")), Ok(Some(0)));
        assert_eq!(Authenticator::new(&[]).check(None), Ok(None));
    }

    #[test]
    fn buckets_refuse_past_the_burst_per_client() {
        let rl = RateLimiter::new(1.0, 2);
        assert!(rl.check("a").is_ok());
        assert!(rl.check("a").is_ok());
        let wait = rl.check("a").unwrap_err();
        assert!(wait > 0.0 && wait <= 1.0);
        assert!(rl.check("b").is_ok(), "another client has its own bucket");
        assert!(RateLimiter::new(0.0, 1).check("a").is_ok());
    }

    #[test]
    fn token_files_skip_comments() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "# team tokens\nabc\n\n  def  \n").unwrap();
        let t = read_tokens_file(f.path()).unwrap();
        assert_eq!(
            t.iter().map(Secret::expose).collect::<Vec<_>>(),
            vec!["abc", "def"]
        );
    }
}
