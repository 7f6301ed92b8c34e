//! The sampling policies, combined as "keep if any": errors, duration, attribute matches, then a
//! session-consistent probability under a rate ceiling.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::SamplingConfig;
use crate::map::rules::TraceFacts;
use crate::vocab::Generations;
use crate::vocab::glob::glob_matches;

/// Sessions whose fate under the rate ceiling is remembered (per generation): a session
/// admitted once keeps its later traces, one refused stays refused, so each is kept whole.
const SESSION_MEMORY: usize = 100_000;

/// Most debt admitted sessions' later traces may run up, in seconds of the ceiling's rate: a
/// burst of long conversations pauses new sessions for at most this long.
const MAX_DEBT_SECONDS: f64 = 60.0;

/// What the sampler does with a trace, and which policy said so (the metrics' label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep(&'static str),
    Drop(&'static str),
}

impl Verdict {
    pub fn kept(self) -> bool {
        matches!(self, Verdict::Keep(_))
    }
}

/// What is known about a trace when it is decided.
pub struct TraceSummary<'a> {
    pub trace_id: &'a [u8; 16],
    /// Some span had status ERROR (the root's state included).
    pub errored: bool,
    /// Some span had an attribute `keep_when` matches.
    pub matched: bool,
    pub duration: Duration,
    /// The TraceInfo's mapped metadata and tags (session, user, tags).
    pub facts: &'a TraceFacts,
}

/// A token bucket of traces per second (burst: one second's worth).
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
    }

    /// A token for a new session (or a trace without one), if there is one.
    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A later trace of an admitted session is kept anyway; it is charged, into debt if need
    /// be, so new sessions wait and the rate over time stays the ceiling's.
    fn charge(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - 1.0).max(-MAX_DEBT_SECONDS * self.rate);
    }
}

struct Ceiling {
    bucket: Bucket,
    sessions: Generations<u64, bool>,
}

pub struct Policy {
    keep_errors: bool,
    slower_than: Option<Duration>,
    keep_when: Vec<(String, Vec<String>)>,
    /// `probability` as a share of the hash space: kept when the hash is below it.
    threshold: u64,
    ceiling: Option<Mutex<Ceiling>>,
}

impl Policy {
    pub fn new(cfg: &SamplingConfig) -> Self {
        let threshold = if cfg.probability >= 1.0 {
            u64::MAX
        } else {
            (cfg.probability * u64::MAX as f64) as u64
        };
        let ceiling = (cfg.max_traces_per_second > 0.0).then(|| {
            Mutex::new(Ceiling {
                bucket: Bucket {
                    rate: cfg.max_traces_per_second,
                    tokens: cfg.max_traces_per_second.max(1.0),
                    last: Instant::now(),
                },
                sessions: Generations::new(SESSION_MEMORY),
            })
        });
        Self {
            keep_errors: cfg.keep_errors,
            slower_than: cfg.keep_slower_than,
            keep_when: cfg
                .keep_when
                .iter()
                .map(|m| (m.key.clone(), m.values.clone()))
                .collect(),
            threshold,
            ceiling,
        }
    }

    /// Whether `keep_when` looks at span attributes at all (ingest notes them only then).
    pub fn matches_attributes(&self) -> bool {
        !self.keep_when.is_empty()
    }

    pub fn keeps_errors(&self) -> bool {
        self.keep_errors
    }

    /// Whether an attribute `key` with text `value` is one `keep_when` asks for.
    pub fn attribute_matches(&self, key: &str, value: &str) -> bool {
        self.keep_when.iter().any(|(k, values)| {
            glob_matches(k, key) && values.iter().any(|v| glob_matches(v, value))
        })
    }

    /// Whether `key` is one `keep_when` names (so its value is worth reading).
    pub fn wants_key(&self, key: &[u8]) -> bool {
        let Ok(key) = std::str::from_utf8(key) else {
            return false;
        };
        self.keep_when.iter().any(|(k, _)| glob_matches(k, key))
    }

    pub fn decide(&self, t: &TraceSummary<'_>) -> Verdict {
        if self.keep_errors && t.errored {
            return Verdict::Keep("error");
        }
        if self.slower_than.is_some_and(|d| t.duration >= d) {
            return Verdict::Keep("duration");
        }
        if t.matched || self.facts_match(t.facts) {
            return Verdict::Keep("attribute");
        }
        let session = t.facts.session().map(|s| stable_hash(s.as_bytes()));
        let key = session.unwrap_or_else(|| stable_hash(t.trace_id));
        if key >= self.threshold {
            return Verdict::Drop("probability");
        }
        let Some(ceiling) = &self.ceiling else {
            return Verdict::Keep("probability");
        };
        let mut c = ceiling.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let admitted = match session.and_then(|s| c.sessions.get(&s).copied()) {
            Some(true) => {
                c.bucket.charge(now);
                true
            }
            Some(false) => false,
            None => {
                let admitted = c.bucket.take(now);
                if let Some(s) = session {
                    c.sessions.insert(s, admitted);
                }
                admitted
            }
        };
        if admitted {
            Verdict::Keep("probability")
        } else {
            Verdict::Drop("rate_ceiling")
        }
    }

    fn facts_match(&self, facts: &TraceFacts) -> bool {
        !self.keep_when.is_empty()
            && facts
                .metadata
                .iter()
                .chain(&facts.tags)
                .any(|(k, v)| self.attribute_matches(k, v))
    }
}

/// FNV-1a, then a 64-bit finalizer to spread it: the same on every replica, version and
/// restart, so a session's fate does not depend on which gateway saw it.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AttributeMatch;

    fn summary<'a>(id: &'a [u8; 16], facts: &'a TraceFacts) -> TraceSummary<'a> {
        TraceSummary {
            trace_id: id,
            errored: false,
            matched: false,
            duration: Duration::from_millis(10),
            facts,
        }
    }

    fn with_session(s: &str) -> TraceFacts {
        let mut f = TraceFacts::default();
        f.metadata
            .insert(crate::map::rules::SESSION_KEY.into(), s.into());
        f
    }

    #[test]
    fn keep_if_any_policy_says_so() {
        let policy = Policy::new(&SamplingConfig {
            probability: 0.0,
            keep_slower_than: Some(Duration::from_secs(2)),
            keep_when: vec![AttributeMatch {
                key: "mlflow.trace.user".into(),
                values: vec!["vip-*".into()],
            }],
            ..SamplingConfig::default()
        });
        let facts = TraceFacts::default();
        let id = [1; 16];
        assert_eq!(
            policy.decide(&summary(&id, &facts)),
            Verdict::Drop("probability")
        );
        let errored = TraceSummary {
            errored: true,
            ..summary(&id, &facts)
        };
        assert_eq!(policy.decide(&errored), Verdict::Keep("error"));
        let slow = TraceSummary {
            duration: Duration::from_secs(3),
            ..summary(&id, &facts)
        };
        assert_eq!(policy.decide(&slow), Verdict::Keep("duration"));
        let mut vip = TraceFacts::default();
        vip.metadata
            .insert("mlflow.trace.user".into(), "vip-7".into());
        assert_eq!(
            policy.decide(&summary(&id, &vip)),
            Verdict::Keep("attribute")
        );
        let mut other = TraceFacts::default();
        other
            .metadata
            .insert("mlflow.trace.user".into(), "someone".into());
        assert!(!policy.decide(&summary(&id, &other)).kept());
        let matched = TraceSummary {
            matched: true,
            ..summary(&id, &facts)
        };
        assert_eq!(policy.decide(&matched), Verdict::Keep("attribute"));
    }

    #[test]
    fn errors_are_dropped_too_when_not_asked_for() {
        let policy = Policy::new(&SamplingConfig {
            probability: 0.0,
            keep_errors: false,
            ..SamplingConfig::default()
        });
        let facts = TraceFacts::default();
        let errored = TraceSummary {
            errored: true,
            ..summary(&[1; 16], &facts)
        };
        assert!(!policy.decide(&errored).kept());
    }

    #[test]
    fn probability_keeps_sessions_whole_and_about_its_share() {
        let policy = Policy::new(&SamplingConfig {
            probability: 0.25,
            ..SamplingConfig::default()
        });
        let mut kept_sessions = 0;
        for s in 0..4000 {
            let facts = with_session(&format!("session-{s}"));
            let verdicts: Vec<bool> = (0..5u8)
                .map(|t| policy.decide(&summary(&[t; 16], &facts)).kept())
                .collect();
            assert!(
                verdicts.iter().all(|v| *v == verdicts[0]),
                "session {s} split"
            );
            kept_sessions += usize::from(verdicts[0]);
        }
        assert!(
            (850..1150).contains(&kept_sessions),
            "{kept_sessions} of 4000"
        );
        // Without a session, the trace id decides.
        let facts = TraceFacts::default();
        let kept = (0..4000u32)
            .filter(|n| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&n.to_be_bytes());
                policy.decide(&summary(&id, &facts)).kept()
            })
            .count();
        assert!((850..1150).contains(&kept), "{kept} of 4000");
    }

    #[test]
    fn the_rate_ceiling_admits_whole_sessions_up_to_its_rate() {
        let policy = Policy::new(&SamplingConfig {
            probability: 1.0,
            max_traces_per_second: 3.0,
            ..SamplingConfig::default()
        });
        let mut admitted = Vec::new();
        for s in 0..10 {
            let facts = with_session(&format!("s{s}"));
            admitted.push(policy.decide(&summary(&[0; 16], &facts)));
        }
        let kept = admitted.iter().filter(|v| v.kept()).count();
        assert_eq!(kept, 3, "{admitted:?}");
        assert!(admitted.contains(&Verdict::Drop("rate_ceiling")));
        // A later trace of each session shares its first trace's fate, tokens or not.
        for (s, first) in admitted.iter().enumerate() {
            let facts = with_session(&format!("s{s}"));
            assert_eq!(policy.decide(&summary(&[1; 16], &facts)), *first);
        }
        // Those later traces were charged: new sessions wait until the debt is repaid.
        std::thread::sleep(Duration::from_millis(400));
        let facts = with_session("newcomer");
        assert_eq!(
            policy.decide(&summary(&[2; 16], &facts)),
            Verdict::Drop("rate_ceiling")
        );
    }

    /// Changing the hash would re-sample every session on upgrade: it is pinned.
    const PINNED: u64 = 17_467_118_465_826_753_311;

    #[test]
    fn the_hash_is_stable() {
        // Fixed: replicas and restarts must agree on every session.
        assert_eq!(stable_hash(b"session-1"), stable_hash(b"session-1"));
        assert_ne!(stable_hash(b"session-1"), stable_hash(b"session-2"));
        assert_eq!(stable_hash(b"session-1"), PINNED);
    }
}
