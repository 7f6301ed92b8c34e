//! Traces whose root span has not arrived yet: what their other spans said (for the mapping
//! table's "other spans" scope), bounded in count and time.

use std::collections::{HashMap, VecDeque, hash_map::Entry};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::map::rules::CollectedAttrs;
use crate::vocab::{ExperimentRef, Generations};

/// Roots already seen are remembered (as bare trace ids) for one to two of these, so late
/// children do not open a new entry that would later be miscounted as a trace without root.
/// SDKs export a trace's spans within seconds of each other. Two generations dropped whole,
/// rather than per-entry expiry from one table of every trace, keep the memory at 16 bytes
/// per root and its upkeep off the ingest path (BENCHMARKS.md, "Decisions").
const SEEN_ROOT_GENERATION: Duration = Duration::from_secs(15);

struct Awaiting {
    attrs: CollectedAttrs,
    since: Instant,
    partial: Partial,
}

/// What a trace's other spans showed while its root was awaited: enough for a TraceInfo if the
/// root never comes. Kept for every trace with children until its root comes: the experiment and
/// tenant are shared, not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    /// Where its first spans went.
    pub experiment: Arc<ExperimentRef>,
    pub tenant: Option<Arc<str>>,
    /// The name of its earliest span (UTF-8, checked when the span was read).
    pub first_name: Bytes,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub errored: bool,
}

/// A run of one trace's non-root spans in one request (`TraceTracker::record`).
#[derive(Debug, Clone)]
pub struct Seen<'a> {
    pub experiment: &'a Arc<ExperimentRef>,
    pub tenant: Option<&'a Arc<str>>,
    pub first_name: &'a Bytes,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub errored: bool,
}

impl Partial {
    fn new(seen: &Seen<'_>) -> Self {
        Self {
            experiment: seen.experiment.clone(),
            tenant: seen.tenant.cloned(),
            // A copy: a slice would keep the whole request's buffer while the root is awaited.
            first_name: Bytes::copy_from_slice(seen.first_name),
            start_unix_nano: seen.start_unix_nano,
            end_unix_nano: seen.end_unix_nano,
            errored: seen.errored,
        }
    }

    fn add(&mut self, seen: &Seen<'_>) {
        if seen.start_unix_nano < self.start_unix_nano {
            self.start_unix_nano = seen.start_unix_nano;
            self.first_name = Bytes::copy_from_slice(seen.first_name);
        }
        self.end_unix_nano = self.end_unix_nano.max(seen.end_unix_nano);
        self.errored |= seen.errored;
    }
}

/// A trace whose root did not come in time (or was evicted to make room).
#[derive(Debug)]
pub struct Orphan {
    pub trace_id: [u8; 16],
    pub attrs: CollectedAttrs,
    pub partial: Partial,
}

/// Trace ids whose root was seen recently: a generation ends when it is full or
/// `SEEN_ROOT_GENERATION` old.
struct SeenRoots {
    ids: Generations<[u8; 16], ()>,
    started: Instant,
    generation: Duration,
}

impl SeenRoots {
    fn contains(&self, trace_id: &[u8; 16]) -> bool {
        self.ids.contains_key(trace_id)
    }

    fn insert(&mut self, trace_id: [u8; 16], now: Instant) {
        self.rotate_if_due(now);
        if !self.ids.contains_key(&trace_id) && self.ids.insert(trace_id, ()) {
            self.started = now;
        }
    }

    fn rotate_if_due(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age >= 2 * self.generation {
            // Idle for a whole memory span: both generations are stale.
            self.ids.clear();
            self.started = now;
        } else if age >= self.generation {
            self.ids.rotate();
            self.started = now;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
    }
}

struct Inner {
    awaiting: HashMap<[u8; 16], Awaiting>,
    /// Arrival order of awaiting traces for eviction and expiry; may hold ids whose root came
    /// since (skipped lazily).
    order: VecDeque<([u8; 16], Instant)>,
    seen: SeenRoots,
    /// Traces evicted for room, handed out by the next sweep (at most `max_pending`).
    evicted: Vec<Orphan>,
}

/// Bounded table of traces awaiting their root.
pub struct TraceTracker {
    inner: Mutex<Inner>,
    max_pending: usize,
    root_wait: Duration,
}

/// What happened when a batch of facts was recorded or a sweep ran.
#[derive(Debug, Default)]
pub struct Evicted {
    /// Traces forgotten because their root never came in time, or to make room.
    pub without_root: usize,
    /// Those traces (from a sweep; evictions for room are handed out by the next sweep).
    pub orphans: Vec<Orphan>,
}

impl TraceTracker {
    /// At most `max_pending` traces await their root, and at most as many seen roots are
    /// remembered (half per generation).
    pub fn new(max_pending: usize, root_wait: Duration) -> Self {
        Self::with_seen_generation(max_pending, root_wait, SEEN_ROOT_GENERATION)
    }

    fn with_seen_generation(max_pending: usize, root_wait: Duration, generation: Duration) -> Self {
        let max_pending = max_pending.max(1);
        Self {
            inner: Mutex::new(Inner {
                awaiting: HashMap::new(),
                order: VecDeque::new(),
                seen: SeenRoots {
                    ids: Generations::new(max_pending / 2),
                    started: Instant::now(),
                    generation,
                },
                evicted: Vec::new(),
            }),
            max_pending,
            root_wait,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the table consistent enough to keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets `f` add facts of non-root spans of `trace_id` (`seen` sums them up). Returns
    /// evictions made for room.
    pub fn record(
        &self,
        trace_id: [u8; 16],
        seen: Seen<'_>,
        f: impl FnOnce(&mut CollectedAttrs),
    ) -> Evicted {
        let mut guard = self.lock();
        let mut evicted = Evicted::default();
        if guard.seen.contains(&trace_id) {
            // A late child: its root has gone out with what the trace had then.
            return evicted;
        }
        if guard.awaiting.len() >= self.max_pending && !guard.awaiting.contains_key(&trace_id) {
            evicted.without_root += make_room(&mut guard, self.max_pending);
        }
        let inner = &mut *guard;
        match inner.awaiting.entry(trace_id) {
            Entry::Occupied(entry) => {
                let awaiting = entry.into_mut();
                awaiting.partial.add(&seen);
                f(&mut awaiting.attrs)
            }
            Entry::Vacant(entry) => {
                let now = Instant::now();
                let awaiting = entry.insert(Awaiting {
                    attrs: CollectedAttrs::new(),
                    since: now,
                    partial: Partial::new(&seen),
                });
                f(&mut awaiting.attrs);
                inner.order.push_back((trace_id, now));
            }
        }
        compact(inner);
        evicted
    }

    /// Takes what other spans said about `trace_id` and marks its root as seen.
    pub fn complete(&self, trace_id: [u8; 16]) -> CollectedAttrs {
        let mut inner = self.lock();
        let attrs = inner
            .awaiting
            .remove(&trace_id)
            .map(|a| a.attrs)
            .unwrap_or_default();
        inner.seen.insert(trace_id, Instant::now());
        attrs
    }

    /// Forgets expired entries. Returns how many traces gave up waiting for their root.
    pub fn sweep(&self) -> Evicted {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let mut evicted = Evicted::default();
        let now = Instant::now();
        while let Some(&(id, since)) = inner.order.front() {
            let current = inner.awaiting.get(&id).is_some_and(|a| a.since == since);
            if current && now.saturating_duration_since(since) < self.root_wait {
                break;
            }
            inner.order.pop_front();
            if current && let Some(awaiting) = inner.awaiting.remove(&id) {
                evicted.without_root += 1;
                // Remembered like a root: a straggler right after would otherwise open a new
                // wait, and a second TraceInfo from it alone would overwrite this one's times.
                inner.seen.insert(id, now);
                evicted.orphans.push(Orphan {
                    trace_id: id,
                    attrs: awaiting.attrs,
                    partial: awaiting.partial,
                });
            }
        }
        evicted.orphans.append(&mut inner.evicted);
        inner.seen.rotate_if_due(now);
        evicted
    }

    /// Traces currently awaiting their root.
    pub fn awaiting(&self) -> usize {
        self.lock().awaiting.len()
    }

    /// Roots currently remembered.
    #[cfg(test)]
    fn seen_roots(&self) -> usize {
        self.lock().seen.len()
    }
}

/// Removes the oldest awaiting traces until there is room for one more. Returns how many were
/// forgotten.
fn make_room(inner: &mut Inner, cap: usize) -> usize {
    let mut forgotten = 0;
    while inner.awaiting.len() >= cap {
        let Some((id, since)) = inner.order.pop_front() else {
            break;
        };
        if inner.awaiting.get(&id).is_some_and(|a| a.since == since)
            && let Some(awaiting) = inner.awaiting.remove(&id)
        {
            forgotten += 1;
            inner.seen.insert(id, Instant::now());
            // Kept for the next sweep to finalize; beyond `cap` they are only counted.
            if inner.evicted.len() < cap {
                inner.evicted.push(Orphan {
                    trace_id: id,
                    attrs: awaiting.attrs,
                    partial: awaiting.partial,
                });
            }
        }
    }
    forgotten
}

/// Keeps the order queue from growing far beyond the awaiting traces (most roots come in the
/// same request as their children, leaving only stale positions behind).
fn compact(inner: &mut Inner) {
    if inner.order.len() > 1024 && inner.order.len() > 2 * inner.awaiting.len() {
        let awaiting = &inner.awaiting;
        inner
            .order
            .retain(|(id, since)| awaiting.get(id).is_some_and(|a| a.since == *since));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(start: u64, end: u64) -> Seen<'static> {
        let experiment: &'static Arc<ExperimentRef> =
            Box::leak(Box::new(Arc::new(ExperimentRef::Id("1".into()))));
        Seen {
            experiment,
            tenant: None,
            first_name: Box::leak(Box::new(Bytes::from_static(b"child"))),
            start_unix_nano: start,
            end_unix_nano: end,
            errored: false,
        }
    }

    #[test]
    fn orphans_are_handed_out_with_what_their_spans_showed() {
        let t = TraceTracker::new(10, Duration::from_millis(1));
        t.record(id(1), seen(30, 40), |a| {
            a.insert("user.id".into(), "u".into());
        });
        let early = Seen {
            first_name: Box::leak(Box::new(Bytes::from_static(b"first"))),
            errored: true,
            ..seen(10, 20)
        };
        t.record(id(1), early, |_| {});
        std::thread::sleep(Duration::from_millis(5));
        let swept = t.sweep();
        assert_eq!(swept.without_root, 1);
        let [orphan] = &swept.orphans[..] else {
            panic!("{:?}", swept.orphans)
        };
        t.record(id(1), seen(50, 60), |_| {});
        assert_eq!(t.awaiting(), 0, "a straggler opens no second wait");
        assert_eq!(orphan.trace_id, id(1));
        assert_eq!(orphan.attrs.get("user.id").map(String::as_str), Some("u"));
        let p = &orphan.partial;
        assert_eq!((p.start_unix_nano, p.end_unix_nano), (10, 40));
        assert_eq!(p.first_name, "first");
        assert!(p.errored);
        assert_eq!(*p.experiment, ExperimentRef::Id("1".into()));
    }

    #[test]
    fn traces_evicted_for_room_are_handed_out_by_the_next_sweep() {
        let t = TraceTracker::new(1, Duration::from_secs(60));
        t.record(id(1), seen(1, 2), |_| {});
        assert_eq!(t.record(id(2), seen(1, 2), |_| {}).without_root, 1);
        let swept = t.sweep();
        assert_eq!(swept.without_root, 0, "counted when evicted");
        assert_eq!(swept.orphans.len(), 1);
        assert_eq!(swept.orphans[0].trace_id, id(1));
        assert!(t.sweep().orphans.is_empty());
    }

    fn id(n: u32) -> [u8; 16] {
        let mut tid = [0u8; 16];
        tid[..4].copy_from_slice(&n.to_be_bytes());
        tid
    }

    #[test]
    fn facts_are_handed_to_the_root() {
        let t = TraceTracker::new(10, Duration::from_secs(60));
        t.record(id(1), seen(10, 20), |a| {
            a.insert("user.id".into(), "u".into());
        });
        assert_eq!(t.awaiting(), 1);
        let attrs = t.complete(id(1));
        assert_eq!(attrs.get("user.id").map(String::as_str), Some("u"));
        assert_eq!(t.awaiting(), 0);
        // A late child after the root opens no new awaiting entry.
        t.record(id(1), seen(10, 20), |a| {
            a.insert("x".into(), "y".into());
        });
        assert_eq!(t.awaiting(), 0);
    }

    #[test]
    fn the_oldest_are_evicted_at_capacity_and_counted() {
        let t = TraceTracker::new(2, Duration::from_secs(60));
        assert_eq!(t.record(id(1), seen(10, 20), |_| {}).without_root, 0);
        assert_eq!(t.record(id(2), seen(10, 20), |_| {}).without_root, 0);
        assert_eq!(t.record(id(3), seen(10, 20), |_| {}).without_root, 1);
        assert_eq!(t.awaiting(), 2);
        assert!(t.complete(id(1)).is_empty(), "trace 1 was evicted");
        // A completed trace frees its place: it no longer waits.
        t.complete(id(2));
        assert_eq!(t.record(id(4), seen(10, 20), |_| {}).without_root, 0);
        assert_eq!(t.awaiting(), 2);
    }

    #[test]
    fn expired_traces_are_swept_and_counted() {
        let t = TraceTracker::new(10, Duration::from_millis(1));
        t.record(id(1), seen(10, 20), |_| {});
        t.record(id(2), seen(10, 20), |_| {});
        t.complete(id(2));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(t.sweep().without_root, 1);
        assert_eq!(t.awaiting(), 0);
    }

    #[test]
    fn seen_roots_last_one_to_two_generations() {
        let generation = Duration::from_millis(50);
        let t = TraceTracker::with_seen_generation(100, Duration::from_secs(60), generation);
        t.complete(id(1));
        std::thread::sleep(generation + Duration::from_millis(10));
        t.sweep(); // rotates: trace 1 is now in the previous generation
        t.record(id(1), seen(10, 20), |_| {});
        assert_eq!(
            t.awaiting(),
            0,
            "a late child within the memory opens nothing"
        );
        std::thread::sleep(generation + Duration::from_millis(10));
        t.sweep(); // rotates again: trace 1 is forgotten
        t.record(id(1), seen(10, 20), |_| {});
        assert_eq!(t.awaiting(), 1, "past the memory a child opens a new entry");
    }

    #[test]
    fn seen_roots_are_bounded_by_max_pending() {
        let t = TraceTracker::new(100, Duration::from_secs(60));
        for n in 0..1000 {
            t.complete(id(n));
        }
        assert!(t.seen_roots() <= 100, "{}", t.seen_roots());
        // The most recent half is always remembered.
        t.record(id(999), seen(10, 20), |_| {});
        t.record(id(950), seen(10, 20), |_| {});
        assert_eq!(t.awaiting(), 0);
    }

    #[test]
    fn order_queue_stays_bounded() {
        let t = TraceTracker::new(100_000, Duration::from_secs(60));
        for n in 0..10_000u32 {
            t.record(id(n), seen(10, 20), |_| {});
            t.complete(id(n));
        }
        let inner = t.lock();
        assert!(inner.order.len() <= 2 * inner.awaiting.len() + 1024);
    }
}
