//! Tail sampling (`[sampling]`): which traces go on to MLflow, decided per trace once its root
//! has come and `decision_wait` has passed.
//!
//! Ingest notes what each span shows (an ERROR status, a `keep_when` attribute). The batcher
//! holds each spooled record until `received + decision_wait`, then `sift`s it: roots are
//! decided (`policy`), spans of kept traces go on, the rest is written to `retention` and the
//! record leaves the spool. A trace kept after some of its spans were held, or claimed by
//! feedback within the window, is promoted: its held entries go back into the spool, marked
//! sampled, and are delivered with its TraceInfo.

pub mod policy;
pub mod retention;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use self::policy::{Policy, TraceSummary, Verdict};
use self::retention::{GoneReason, Recovered, Retention, Standing};
use crate::config::{Config, FsyncPolicy};
use crate::map::attrs::{unquoted, value_to_string};
use crate::map::trace_info::{TraceInfoJob, TraceState, mlflow_trace_id};
use crate::otlp::{self, ResourceSpansView, SpanAt};
use crate::spool::{Ack, Delivery, Spool, SpoolRecord};
use crate::vocab::{ExperimentRef, Generations, now_ms};

/// Ingest's notes on a trace: some span had status ERROR; some span matched `keep_when`.
const NOTE_ERRORED: u8 = 1;
const NOTE_MATCHED: u8 = 2;
/// OTLP's `STATUS_CODE_ERROR`.
const STATUS_ERROR: i32 = 2;
/// Traces whose notes and decisions are remembered, per generation: enough for the traces of
/// several decision waits at high rates; a child later than that is held as undecided, where
/// feedback can still find it.
const TRACE_MEMORY: usize = 200_000;

/// What feedback names.
#[derive(Debug, Clone, Copy)]
pub enum ClaimTarget<'a> {
    ClientRequestId(&'a str),
    /// MLflow's `tr-<hex>`.
    TraceId(&'a str),
}

/// What a claim by feedback found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The trace was held and is on its way to MLflow.
    Promoted,
    /// Dropped by the sampler for good: why.
    Gone(String),
    /// Held, but it could not go on now (the spool is full): try again.
    NotNow(String),
    /// Not the sampler's: never held, already kept, or another tenant's.
    Unknown,
}

pub struct Sampler {
    policy: Policy,
    wait_ms: u64,
    window: Duration,
    notes: Mutex<Generations<[u8; 16], u8>>,
    /// true: kept (by policy or feedback); false: dropped.
    decided: Mutex<Generations<[u8; 16], bool>>,
    retention: Arc<Retention>,
    spool: Spool,
    max_disk_bytes: u64,
    max_depth: usize,
    /// `spool.fsync = "always"`: held parts are synced before their record leaves the spool.
    sync_each: bool,
    /// Kept traces whose promotion could not be appended; tried again by `upkeep`.
    retry: Mutex<Vec<[u8; 16]>>,
}

/// One trace's part of a record.
struct Part {
    trace_id: [u8; 16],
    record: SpoolRecord,
}

impl Sampler {
    /// Opens the retention under `data_dir/sampling`.
    pub fn open(cfg: &Config, data_dir: &Path, spool: Spool) -> std::io::Result<(Self, Recovered)> {
        let s = &cfg.sampling;
        let (retention, recovered) = Retention::open(
            &data_dir.join("sampling"),
            s.feedback_window,
            cfg.spool.segment_bytes,
            cfg.spool.compression,
            now_ms(),
        )?;
        Ok((
            Self {
                policy: Policy::new(s),
                wait_ms: s.decision_wait.as_millis() as u64,
                window: s.feedback_window,
                notes: Mutex::new(Generations::new(TRACE_MEMORY)),
                decided: Mutex::new(Generations::new(TRACE_MEMORY)),
                retention: Arc::new(retention),
                spool,
                max_disk_bytes: cfg.spool.max_disk_bytes,
                max_depth: cfg.receiver.max_nesting_depth,
                sync_each: cfg.spool.fsync == FsyncPolicy::Always,
                retry: Mutex::new(Vec::new()),
            },
            recovered,
        ))
    }

    /// Notes, at ingest, the spans that make their trace one to keep whatever the rest say.
    pub fn note(&self, resource_spans: &[ResourceSpansView]) {
        let (errors, attributes) = (self.policy.keeps_errors(), self.policy.matches_attributes());
        if !errors && !attributes {
            return;
        }
        let mut noted: Vec<([u8; 16], u8)> = Vec::new();
        for rs in resource_spans {
            let resource_matched = attributes
                && rs.resource_attributes().iter().any(|kv| {
                    kv.value
                        .as_ref()
                        .and_then(value_to_string)
                        .is_some_and(|v| self.policy.attribute_matches(&kv.key, &v))
                });
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    let mut flags = 0;
                    if errors && span.status_code == STATUS_ERROR {
                        flags |= NOTE_ERRORED;
                    }
                    if resource_matched
                        || (attributes
                            && span
                                .attributes_where(&ss.attributes, |k| self.policy.wants_key(k))
                                .iter()
                                .any(|kv| {
                                    kv.value
                                        .as_ref()
                                        .and_then(value_to_string)
                                        .is_some_and(|v| {
                                            self.policy.attribute_matches(&kv.key, &unquoted(&v))
                                        })
                                }))
                    {
                        flags |= NOTE_MATCHED;
                    }
                    if flags != 0 {
                        noted.push((trace_id_of(span.trace_id()), flags));
                    }
                }
            }
        }
        if noted.is_empty() {
            return;
        }
        let mut notes = lock(&self.notes);
        for (id, flags) in noted {
            let had = notes.get(&id).copied().unwrap_or(0);
            notes.insert(id, had | flags);
        }
    }

    /// When the batcher may hand the record on (its decision wait over); None for a record
    /// already sampled.
    pub fn release_at_ms(&self, record: &SpoolRecord) -> Option<u64> {
        (!record.sampled).then(|| record.received_ms.saturating_add(self.wait_ms))
    }

    /// Decides the record's roots, and passes on what kept traces have in it; the rest is
    /// held. None when nothing is left to deliver (its acknowledgement is then done here).
    pub async fn sift(&self, delivery: Delivery) -> Option<Delivery> {
        if delivery.record.sampled {
            return Some(delivery);
        }
        for job in &delivery.record.roots {
            self.decide(job);
        }
        let parsed = if delivery.record.span_count > 0 {
            match otlp::parse_request(&delivery.record.body, self.max_depth) {
                Ok(p) => p.resource_spans,
                Err(e) => {
                    // It was checked at ingest; delivering it is better than losing it.
                    tracing::error!(error = %e, "spooled record unreadable for sampling; delivered");
                    return Some(delivery);
                }
            }
        } else {
            Vec::new()
        };
        let span_trace = |at: SpanAt| {
            trace_id_of(parsed[at.resource].scope_spans[at.scope].spans[at.span].trace_id())
        };
        // Each span's trace, and the traces in order of first appearance.
        let spans: Vec<[u8; 16]> = parsed
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|view| trace_id_of(view.trace_id()))
            .collect();
        let mut seen = HashSet::new();
        let traces: Vec<[u8; 16]> = spans
            .iter()
            .copied()
            .chain(delivery.record.roots.iter().map(|j| j.trace_id))
            .filter(|id| seen.insert(*id))
            .collect();
        // Kept and nothing held before: goes on as is; kept with parts held: reunited.
        let (mut direct, mut reunite, mut hold) = (HashSet::new(), Vec::new(), Vec::new());
        {
            let decided = lock(&self.decided);
            for id in traces {
                match decided.get(&id) {
                    Some(true) if !self.retention.holds(&id) => {
                        direct.insert(id);
                    }
                    Some(true) => reunite.push(id),
                    _ => hold.push(id),
                }
            }
        }
        if reunite.is_empty() && hold.is_empty() {
            return Some(delivery);
        }
        let Delivery {
            record,
            ack,
            permit,
        } = delivery;
        let part_of = |ids: &HashSet<[u8; 16]>| {
            let pick = |at: SpanAt| ids.contains(&span_trace(at));
            let span_count = spans.iter().filter(|id| ids.contains(*id)).count();
            SpoolRecord {
                experiment: record.experiment.clone(),
                tenant: record.tenant.clone(),
                span_count,
                roots: record
                    .roots
                    .iter()
                    .filter(|j| ids.contains(&j.trace_id))
                    .cloned()
                    .collect(),
                received_ms: record.received_ms,
                sampled: false,
                body: if span_count == 0 {
                    Bytes::new()
                } else {
                    Bytes::from(otlp::encode_where(&parsed, pick))
                },
            }
        };
        let one = |id: &[u8; 16]| part_of(&HashSet::from([*id]));
        let now = now_ms();
        let mut held_any = false;
        for id in &hold {
            let part = one(id);
            if let Err(e) = self.retention.hold(*id, &part, now) {
                // Not kept on disk, it is delivered rather than lost.
                tracing::error!(error = %e, "cannot write to sampling retention; trace delivered");
                direct.insert(*id);
                continue;
            }
            held_any = true;
        }
        for id in &reunite {
            let part = Part {
                trace_id: *id,
                record: one(id),
            };
            held_any |= self.promote(*id, Some(part)).await.is_err();
        }
        let removed_roots = record
            .roots
            .iter()
            .filter(|j| !direct.contains(&j.trace_id))
            .count();
        let kept = part_of(&direct);
        let mut to_finish = removed_roots;
        let pass_on = kept.span_count > 0 || !kept.roots.is_empty();
        if !pass_on {
            to_finish += 1;
        }
        self.finish(ack.clone(), to_finish, held_any);
        pass_on.then(|| Delivery {
            record: kept,
            ack,
            permit,
        })
    }

    /// Marks `parts` of `ack` done once what was held is as durable as the spool promised.
    fn finish(&self, ack: Ack, parts: usize, held: bool) {
        if parts == 0 {
            return;
        }
        if held && self.sync_each {
            let retention = self.retention.clone();
            tokio::task::spawn_blocking(move || match retention.sync() {
                Ok(()) => (0..parts).for_each(|_| ack.done()),
                // Left undone, the record stays in the spool and is sifted again after a restart.
                Err(e) => tracing::error!(error = %e, "cannot sync sampling retention"),
            });
        } else {
            (0..parts).for_each(|_| ack.done());
        }
    }

    /// A root's verdict, remembered for the trace's other spans. A trace feedback promoted
    /// stays kept.
    fn decide(&self, job: &TraceInfoJob) {
        if lock(&self.decided).get(&job.trace_id) == Some(&true) {
            return;
        }
        let notes = lock(&self.notes).get(&job.trace_id).copied().unwrap_or(0);
        let verdict = self.policy.decide(&TraceSummary {
            trace_id: &job.trace_id,
            errored: notes & NOTE_ERRORED != 0 || job.state == TraceState::Error,
            matched: notes & NOTE_MATCHED != 0,
            duration: Duration::from_nanos(job.end_unix_nano.saturating_sub(job.start_unix_nano)),
            facts: &job.facts,
        });
        match verdict {
            Verdict::Keep(policy) => {
                metrics::counter!("gateway_sampling_traces_kept_total", "policy" => policy)
                    .increment(1);
            }
            Verdict::Drop(reason) => {
                metrics::counter!("gateway_sampling_traces_dropped_total", "reason" => reason)
                    .increment(1);
                tracing::debug!(trace_id = %mlflow_trace_id(&job.trace_id), reason, "trace not kept by sampling; held for feedback");
            }
        }
        lock(&self.decided).insert(job.trace_id, verdict.kept());
    }

    /// Sends a trace's held entries (and `extra`, its part of the record being sifted) back
    /// into the spool, sampled. On failure everything stays held and the trace is retried.
    async fn promote(&self, trace_id: [u8; 16], extra: Option<Part>) -> Result<(), String> {
        lock(&self.decided).insert(trace_id, true);
        let taken = match self.retention.take(&trace_id) {
            Ok(t) => t,
            Err(e) => return Err(self.keep_for_later(trace_id, extra, e.to_string())),
        };
        let mut records: Vec<SpoolRecord> = Vec::new();
        if let Some(t) = &taken {
            records.extend(t.records.iter().cloned());
        }
        records.extend(extra.iter().map(|p| p.record.clone()));
        for record in merged(records) {
            if let Err(e) = self.spool.append_prepared(self.spool.prepare(record)).await {
                if let Some(t) = taken {
                    self.retention.restore(t);
                }
                return Err(self.keep_for_later(trace_id, extra, e.to_string()));
            }
        }
        if taken.is_some()
            && let Err(e) = self.retention.promoted(&trace_id, now_ms())
        {
            // Held again after a restart: feedback would promote it twice, which MLflow takes.
            tracing::warn!(error = %e, "cannot note a promotion in sampling retention");
        }
        Ok(())
    }

    fn keep_for_later(&self, trace_id: [u8; 16], extra: Option<Part>, error: String) -> String {
        if let Some(p) = extra
            && let Err(e) = self.retention.hold(p.trace_id, &p.record, now_ms())
        {
            tracing::error!(error = %e, "cannot write to sampling retention");
        }
        tracing::warn!(trace_id = %mlflow_trace_id(&trace_id), %error, "kept trace not promoted yet; retried");
        lock(&self.retry).push(trace_id);
        error
    }

    /// Feedback for a trace: a held one is promoted (if the caller's tenant is its own).
    pub async fn claim(&self, target: ClaimTarget<'_>, tenant: Option<&str>) -> Claim {
        let standing = match target {
            ClaimTarget::ClientRequestId(crid) => self.retention.standing_of_crid(crid),
            ClaimTarget::TraceId(id) => match parse_trace_id(id) {
                Some(id) => self.retention.standing_of_trace(&id),
                None => Standing::Unknown,
            },
        };
        match standing {
            Standing::Held {
                trace_id,
                tenant: owner,
            } if owner.as_deref() == tenant => match self.promote(trace_id, None).await {
                Ok(()) => {
                    metrics::counter!("gateway_sampling_traces_promoted_total").increment(1);
                    tracing::info!(trace_id = %mlflow_trace_id(&trace_id), "trace promoted by feedback");
                    Claim::Promoted
                }
                Err(e) => Claim::NotNow(format!("trace held by sampling, not promoted yet: {e}")),
            },
            Standing::Held { .. } | Standing::Unknown => Claim::Unknown,
            Standing::Gone(reason) => Claim::Gone(match reason {
                GoneReason::Expired => format!(
                    "the trace was not kept by sampling and its feedback window ({}s) has passed",
                    self.window.as_secs()
                ),
                GoneReason::Disk => "the trace was not kept by sampling and was discarded \
                    early to free disk for the spool (spool.max_disk_bytes)"
                    .to_string(),
            }),
        }
    }

    /// Once a second: discards what the window (or the spool's need for disk) ends, syncs,
    /// retries promotions, and refreshes the gauges.
    pub async fn upkeep(&self) {
        let budget = self
            .max_disk_bytes
            .saturating_sub(self.spool.stats().disk_bytes);
        let discarded = self.retention.expire(now_ms(), Some(budget));
        for (reason, n) in [("expired", discarded.expired), ("disk", discarded.disk)] {
            if n > 0 {
                metrics::counter!("gateway_sampling_traces_discarded_total", "reason" => reason)
                    .increment(n as u64);
            }
        }
        if discarded.disk > 0 {
            tracing::warn!(
                traces = discarded.disk,
                "traces held for feedback discarded early: the spool needs the disk (spool.max_disk_bytes)"
            );
        }
        if !self.sync_each {
            let retention = self.retention.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || retention.sync()).await {
                tracing::error!(error = %e, "cannot sync sampling retention");
            }
        }
        let retry = std::mem::take(&mut *lock(&self.retry));
        for id in retry {
            let _ = self.promote(id, None).await;
        }
        let (bytes, traces) = self.retention.size();
        metrics::gauge!("gateway_sampling_retained_bytes").set(bytes as f64);
        metrics::gauge!("gateway_sampling_retained_traces").set(traces as f64);
    }

    /// Bytes and traces held.
    pub fn retained(&self) -> (u64, usize) {
        self.retention.size()
    }
}

/// One record per experiment and tenant, bodies concatenated (requests concatenate into one).
fn merged(records: Vec<SpoolRecord>) -> Vec<SpoolRecord> {
    let mut out: HashMap<(ExperimentRef, Option<String>), SpoolRecord> = HashMap::new();
    for r in records {
        match out.entry((r.experiment.clone(), r.tenant.clone())) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let m = e.get_mut();
                m.span_count += r.span_count;
                m.roots.extend(r.roots);
                m.received_ms = m.received_ms.min(r.received_ms);
                let mut body = Vec::with_capacity(m.body.len() + r.body.len());
                body.extend_from_slice(&m.body);
                body.extend_from_slice(&r.body);
                m.body = Bytes::from(body);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(SpoolRecord { sampled: true, ..r });
            }
        }
    }
    out.into_values().collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A span's 16-byte trace id (checked at ingest; anything else groups under zeros).
fn trace_id_of(bytes: &[u8]) -> [u8; 16] {
    bytes.try_into().unwrap_or([0; 16])
}

/// `tr-<32 hex>` (or the bare hex) to the OTel trace id.
fn parse_trace_id(s: &str) -> Option<[u8; 16]> {
    let hex = s.strip_prefix("tr-").unwrap_or(s);
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
