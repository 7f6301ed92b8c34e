//! Traces whose root span has not arrived yet: what their other spans said (for the mapping
//! table's "other spans" scope), bounded in count and time.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::map::rules::CollectedAttrs;

/// Roots already seen are remembered (without data) this long, so late children do not open a
/// new entry that would later be miscounted as a trace without root. SDKs export a trace's spans
/// within seconds of each other; at 1000 traces/s each second kept costs ~100 KiB.
const COMPLETED_MEMORY: Duration = Duration::from_secs(30);

enum State {
    Awaiting(CollectedAttrs),
    Completed,
}

struct Entry {
    state: State,
    since: Instant,
}

struct Inner {
    entries: HashMap<[u8; 16], Entry>,
    /// Insertion order for eviction and expiry; may hold ids already removed (skipped lazily).
    order: VecDeque<([u8; 16], Instant)>,
    awaiting: usize,
}

/// Bounded table of traces awaiting their root.
pub struct TraceTracker {
    inner: Mutex<Inner>,
    max_pending: usize,
    root_wait: Duration,
}

/// What happened when a batch of facts was recorded or a sweep ran.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Traces forgotten because their root never came in time, or to make room.
    pub without_root: usize,
}

impl TraceTracker {
    pub fn new(max_pending: usize, root_wait: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
                awaiting: 0,
            }),
            max_pending,
            root_wait,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the table consistent enough to keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets `f` add facts of a non-root span of `trace_id`. Returns evictions made for room.
    pub fn record(&self, trace_id: [u8; 16], f: impl FnOnce(&mut CollectedAttrs)) -> Evicted {
        let mut inner = self.lock();
        let mut evicted = Evicted::default();
        let now = Instant::now();
        if !inner.entries.contains_key(&trace_id) {
            evicted.without_root += make_room(&mut inner, self.max_pending);
            inner.entries.insert(
                trace_id,
                Entry {
                    state: State::Awaiting(CollectedAttrs::new()),
                    since: now,
                },
            );
            inner.order.push_back((trace_id, now));
            inner.awaiting += 1;
        }
        if let Some(Entry {
            state: State::Awaiting(attrs),
            ..
        }) = inner.entries.get_mut(&trace_id)
        {
            f(attrs);
        }
        compact(&mut inner);
        evicted
    }

    /// Takes what other spans said about `trace_id` and marks its root as seen.
    pub fn complete(&self, trace_id: [u8; 16]) -> (CollectedAttrs, Evicted) {
        let mut inner = self.lock();
        let now = Instant::now();
        let mut evicted = Evicted::default();
        if !inner.entries.contains_key(&trace_id) {
            evicted.without_root += make_room(&mut inner, self.max_pending);
        }
        let previous = inner.entries.insert(
            trace_id,
            Entry {
                state: State::Completed,
                since: now,
            },
        );
        let attrs = match previous {
            Some(Entry {
                state: State::Awaiting(attrs),
                ..
            }) => {
                inner.awaiting -= 1;
                attrs
            }
            _ => CollectedAttrs::new(),
        };
        inner.order.push_back((trace_id, now));
        compact(&mut inner);
        (attrs, evicted)
    }

    /// Forgets expired entries. Returns how many traces gave up waiting for their root.
    pub fn sweep(&self) -> Evicted {
        let mut inner = self.lock();
        let mut evicted = Evicted::default();
        let now = Instant::now();
        while let Some(&(id, since)) = inner.order.front() {
            let Some(entry) = inner.entries.get(&id) else {
                inner.order.pop_front();
                continue;
            };
            if entry.since != since {
                // A stale position: the entry was replaced later and sits further back.
                inner.order.pop_front();
                continue;
            }
            let limit = match entry.state {
                State::Awaiting(_) => self.root_wait,
                State::Completed => COMPLETED_MEMORY,
            };
            if now.duration_since(since) < limit {
                break;
            }
            inner.order.pop_front();
            if let Some(Entry {
                state: State::Awaiting(_),
                ..
            }) = inner.entries.remove(&id)
            {
                inner.awaiting -= 1;
                evicted.without_root += 1;
            }
        }
        evicted
    }

    /// Traces currently awaiting their root.
    pub fn awaiting(&self) -> usize {
        self.lock().awaiting
    }
}

/// Removes the oldest entries until there is room for one more (completed and awaiting entries
/// share the bound). Returns how many awaiting traces were forgotten.
fn make_room(inner: &mut Inner, cap: usize) -> usize {
    let mut forgotten = 0;
    while inner.entries.len() >= cap {
        let Some((id, since)) = inner.order.pop_front() else {
            break;
        };
        let is_current = inner.entries.get(&id).is_some_and(|e| e.since == since);
        if !is_current {
            continue;
        }
        if let Some(Entry {
            state: State::Awaiting(_),
            ..
        }) = inner.entries.remove(&id)
        {
            inner.awaiting -= 1;
            forgotten += 1;
        }
    }
    forgotten
}

/// Keeps the order queue from growing far beyond the live entries.
fn compact(inner: &mut Inner) {
    if inner.order.len() > 1024 && inner.order.len() > 2 * inner.entries.len() {
        let entries = &inner.entries;
        inner
            .order
            .retain(|(id, since)| entries.get(id).is_some_and(|e| e.since == *since));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    #[test]
    fn facts_are_handed_to_the_root() {
        let t = TraceTracker::new(10, Duration::from_secs(60));
        t.record(id(1), |a| {
            a.insert("user.id".into(), "u".into());
        });
        assert_eq!(t.awaiting(), 1);
        let (attrs, _) = t.complete(id(1));
        assert_eq!(attrs.get("user.id").map(String::as_str), Some("u"));
        assert_eq!(t.awaiting(), 0);
        // A late child after the root opens no new awaiting entry.
        t.record(id(1), |a| {
            a.insert("x".into(), "y".into());
        });
        assert_eq!(t.awaiting(), 0);
    }

    #[test]
    fn the_oldest_are_evicted_at_capacity_and_counted() {
        let t = TraceTracker::new(2, Duration::from_secs(60));
        assert_eq!(t.record(id(1), |_| {}).without_root, 0);
        assert_eq!(t.record(id(2), |_| {}).without_root, 0);
        assert_eq!(t.record(id(3), |_| {}).without_root, 1);
        assert_eq!(t.awaiting(), 2);
        assert!(t.complete(id(1)).0.is_empty(), "trace 1 was evicted");
    }

    #[test]
    fn expired_traces_are_swept_and_counted() {
        let t = TraceTracker::new(10, Duration::from_millis(1));
        t.record(id(1), |_| {});
        t.record(id(2), |_| {});
        t.complete(id(2));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(t.sweep().without_root, 1);
        assert_eq!(t.awaiting(), 0);
    }

    #[test]
    fn order_queue_stays_bounded() {
        let t = TraceTracker::new(100_000, Duration::from_secs(60));
        for n in 0..10_000u32 {
            let mut tid = [0u8; 16];
            tid[..4].copy_from_slice(&n.to_be_bytes());
            t.record(tid, |_| {});
            t.complete(tid);
        }
        let inner = t.lock();
        assert!(inner.order.len() <= 2 * inner.entries.len() + 1024);
    }
}
