//! Who may use the feedback API: a tenant (its token or client certificate, with `feedback`
//! on), or, on a gateway without `auth.required`, a holder of one of `feedback.tokens` (or
//! anyone, with none configured). Then per-client rate limiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::auth::tokens::{self, TokenDigest};
use crate::auth::{AuthError, Tenant, Tenants};
use crate::config::Secret;

/// Who a feedback request is.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Its tenant: it may reach only traces in its experiments. None: unscoped.
    pub tenant: Option<Arc<Tenant>>,
    /// The rate limit's key (never the secret itself).
    key: String,
}

impl Principal {
    pub fn tenant_name(&self) -> Option<&str> {
        self.tenant.as_deref().map(|t| &*t.name)
    }
}

/// Why a feedback request is not served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Denial {
    /// 401 / UNAUTHENTICATED.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403 / PERMISSION_DENIED.
    #[error("{0}")]
    Forbidden(String),
    /// 429 / RESOURCE_EXHAUSTED, with the seconds until it may retry.
    #[error("rate limit exceeded")]
    RateLimited(f64),
}

impl Denial {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::Unauthenticated(_) => "unauthenticated",
            Denial::Forbidden(_) => "forbidden",
            Denial::RateLimited(_) => "rate_limited",
        }
    }
}

/// The feedback API's gate.
pub struct FeedbackAuth {
    tenants: Arc<Tenants>,
    /// `feedback.tokens` and `feedback.tokens_file`: unscoped tokens.
    legacy: Vec<(TokenDigest, usize)>,
    limiter: RateLimiter,
}

impl FeedbackAuth {
    pub fn new(tenants: Arc<Tenants>, legacy_tokens: &[Secret], limiter: RateLimiter) -> Self {
        Self {
            tenants,
            legacy: legacy_tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (tokens::digest(t.expose()), i))
                .collect(),
            limiter,
        }
    }

    /// Whether anything at all is asked of callers.
    pub fn is_open(&self) -> bool {
        self.tenants.is_empty() && self.legacy.is_empty()
    }

    /// Authenticates a request (its `Authorization` value, its client certificate's subjects,
    /// its address), then takes one request from its rate limit.
    pub fn check(
        &self,
        authorization: Option<&str>,
        cert_subjects: &[String],
        peer_ip: &str,
    ) -> Result<Principal, Denial> {
        let principal = self.identify(authorization, cert_subjects, peer_ip)?;
        self.limiter
            .check(&principal.key)
            .map_err(Denial::RateLimited)?;
        Ok(principal)
    }

    fn identify(
        &self,
        authorization: Option<&str>,
        cert_subjects: &[String],
        peer_ip: &str,
    ) -> Result<Principal, Denial> {
        let legacy = || {
            tokens::bearer(authorization)
                .and_then(|t| tokens::find(&self.legacy, &tokens::digest(t)))
                .map(|i| Principal {
                    tenant: None,
                    key: format!("token:{i}"),
                })
        };
        match self.tenants.authenticate(authorization, cert_subjects) {
            Ok(Some(tenant)) if !tenant.feedback => Err(Denial::Forbidden(format!(
                "tenant '{}' may not use the feedback API",
                tenant.name
            ))),
            Ok(Some(tenant)) => Ok(Principal {
                key: format!("tenant:{}", tenant.name),
                tenant: Some(tenant),
            }),
            // A feedback token is not a tenant's: an unscoped caller.
            Err(AuthError::Invalid) if !self.tenants.required() => {
                legacy().ok_or_else(|| Denial::Unauthenticated(AuthError::Invalid.to_string()))
            }
            Err(e) => Err(Denial::Unauthenticated(e.to_string())),
            Ok(None) if self.legacy.is_empty() => Ok(Principal {
                tenant: None,
                key: format!("ip:{peer_ip}"),
            }),
            Ok(None) => match tokens::bearer(authorization) {
                None => Err(Denial::Unauthenticated(
                    "missing bearer token: send 'Authorization: Bearer <token>'".into(),
                )),
                Some(_) => legacy().ok_or_else(|| Denial::Forbidden("invalid token".into())),
            },
        }
    }
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
mod tests;
