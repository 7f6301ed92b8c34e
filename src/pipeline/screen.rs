//! Which spans of a request go on to routing and mapping: not those the codec set aside, nor
//! those MLflow would refuse (`map::spans::check_view`, `map::refusals`), nor earlier copies of a
//! span sent twice. Every rejection is counted by reason, and the first is explained to the
//! client in `partial_success`.

use std::collections::HashSet;
use std::sync::Arc;

use crate::map::{refusals, spans};
use crate::otlp::{ParsedRequest, ResourceSpansView};
use crate::vocab::{Transport, labels};

/// A request's spans after screening.
pub struct Screened {
    pub resource_spans: Vec<ResourceSpansView>,
    /// Spans the request held, all of them.
    pub received: usize,
    pub rejected: usize,
    /// Of `rejected`, the spans routed to an experiment their tenant may not write to.
    pub forbidden: usize,
    /// What the first rejection was, for `partial_success.error_message`.
    pub problem: Option<String>,
    /// Spans whose text was repaired (see `otlp::schema::repaired`).
    pub repaired: usize,
    /// See `ParsedRequest::unknown_field`.
    pub unknown_field: Option<String>,
    transport: Transport,
    /// Its tenant, for the `tenant` label of its metrics.
    tenant: Option<Arc<str>>,
}

impl Screened {
    /// Counts `spans` rejected for `reason`; `problem` explains it if it is the first.
    pub fn reject(&mut self, reason: &'static str, spans: usize, problem: impl FnOnce() -> String) {
        self.rejected += spans;
        let labels = labels(
            &[("transport", self.transport.as_str()), ("reason", reason)],
            self.tenant.as_ref(),
        );
        metrics::counter!("gateway_receiver_spans_rejected_total", labels).increment(spans as u64);
        if self.problem.is_none() {
            self.problem = Some(problem());
        }
    }
}

/// Screens a request read by the codec; `tenant` labels its metrics.
pub fn screen(request: ParsedRequest, transport: Transport, tenant: Option<Arc<str>>) -> Screened {
    let received = request.received_spans();
    let mut out = Screened {
        resource_spans: Vec::new(),
        received,
        rejected: 0,
        forbidden: 0,
        problem: None,
        repaired: request.repaired_spans,
        unknown_field: request.unknown_field,
        transport,
        tenant,
    };
    for r in request.rejected {
        out.reject(r.fault.reason(), r.spans, || {
            format!("{}: {}", r.subject, r.fault)
        });
    }
    let mut resource_spans = request.resource_spans;
    for rs in resource_spans.iter_mut() {
        if let Err(refusal) = refusals::check_resource(rs.resource.as_ref()) {
            let spans = rs.take_all_spans();
            out.reject(refusal.reason(), spans, || format!("resource: {refusal}"));
            continue;
        }
        for ss in rs.scope_spans.iter_mut() {
            let attributes = &ss.attributes;
            let mut rejections = Vec::new();
            ss.spans.retain(|span| {
                let verdict = spans::check_view(span)
                    .map_err(|p| (p.as_str(), p.to_string()))
                    .and_then(|()| {
                        refusals::check_span(span, attributes)
                            .map_err(|r| (r.reason(), r.to_string()))
                    });
                match verdict {
                    Ok(()) => true,
                    Err((reason, text)) => {
                        rejections.push((reason, format!("span '{}': {text}", span.name())));
                        false
                    }
                }
            });
            for (reason, problem) in rejections {
                out.reject(reason, 1, || problem);
            }
        }
    }
    let duplicates = drop_duplicates(&mut resource_spans);
    if duplicates > 0 {
        let labels = labels(&[("transport", transport.as_str())], out.tenant.as_ref());
        metrics::counter!("gateway_receiver_spans_duplicate_total", labels)
            .increment(duplicates as u64);
    }
    out.resource_spans = resource_spans;
    out
}

/// Keeps only the last copy of a span (trace and span id) sent more than once in the request,
/// as MLflow's upsert on SQLite would; PostgreSQL refuses such a request whole. Returns how
/// many copies were dropped. Ids are checked (`check_view`) before this runs.
fn drop_duplicates(resource_spans: &mut [ResourceSpansView]) -> usize {
    let total: usize = resource_spans.iter().map(|rs| rs.span_count()).sum();
    if total < 2 {
        return 0;
    }
    let earlier: HashSet<usize> = {
        let spans: Vec<_> = resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .collect();
        let mut seen = HashSet::with_capacity(spans.len());
        // Walked from the last span back: a copy already seen there is an earlier one.
        (0..spans.len())
            .rev()
            .filter(|i| !seen.insert((spans[*i].trace_id(), spans[*i].span_id())))
            .collect()
    };
    if earlier.is_empty() {
        return 0;
    }
    let mut i = 0;
    for ss in resource_spans
        .iter_mut()
        .flat_map(|rs| rs.scope_spans.iter_mut())
    {
        ss.spans.retain(|_| {
            let keep = !earlier.contains(&i);
            i += 1;
            keep
        });
    }
    earlier.len()
}

#[cfg(test)]
mod tests;
