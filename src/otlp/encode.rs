//! Requests written back from views: received spans and fields as they came, changed spans
//! re-encoded, scopes and resources left without spans dropped.

use super::request::{ResourceSpansView, ScopeSpansView};
use super::span::SpanView;
use super::wire::{framed_len, put_framed};

/// Encodes `ExportTraceServiceRequest { resource_spans }` with every span.
pub fn encode_request(resource_spans: &[ResourceSpansView]) -> Vec<u8> {
    encode_where(resource_spans, |_| true)
}

/// Where a span sits in a request: resource, scope, and its place in the scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanAt {
    pub resource: usize,
    pub scope: usize,
    pub span: usize,
}

/// The spans of one scope that `keep` picks.
fn picked<'a>(
    ss: &'a ScopeSpansView,
    resource: usize,
    scope: usize,
    keep: &'a impl Fn(SpanAt) -> bool,
) -> impl Iterator<Item = &'a SpanView> {
    ss.spans.iter().enumerate().filter_map(move |(span, s)| {
        keep(SpanAt {
            resource,
            scope,
            span,
        })
        .then_some(s)
    })
}

/// Encoded length of a scope's fields and picked spans; `None` when it has no picked span.
fn scope_len(
    ss: &ScopeSpansView,
    resource: usize,
    scope: usize,
    keep: &impl Fn(SpanAt) -> bool,
) -> Option<usize> {
    let mut spans = picked(ss, resource, scope, keep).peekable();
    spans.peek()?;
    Some(ss.kept.len() + spans.map(|s| framed_len(s.forwarded_len())).sum::<usize>())
}

fn resource_len(
    rs: &ResourceSpansView,
    resource: usize,
    keep: &impl Fn(SpanAt) -> bool,
) -> Option<usize> {
    let mut scopes = rs
        .scope_spans
        .iter()
        .enumerate()
        .filter_map(|(scope, ss)| scope_len(ss, resource, scope, keep))
        .peekable();
    scopes.peek()?;
    Some(rs.kept.len() + scopes.map(framed_len).sum::<usize>())
}

/// Encodes the request with only the spans `keep` picks, in their order. Resources and scopes
/// keep all their other fields; those left without spans are dropped. `keep` is asked twice
/// per span (lengths first, then bytes) and must answer the same both times.
pub fn encode_where(
    resource_spans: &[ResourceSpansView],
    keep: impl Fn(SpanAt) -> bool,
) -> Vec<u8> {
    let total = resource_spans
        .iter()
        .enumerate()
        .filter_map(|(resource, rs)| resource_len(rs, resource, &keep))
        .map(framed_len)
        .sum();
    let mut out = Vec::with_capacity(total);
    for (resource, rs) in resource_spans.iter().enumerate() {
        let Some(len) = resource_len(rs, resource, &keep) else {
            continue;
        };
        put_framed(&mut out, 1, len);
        rs.kept.write(&mut out, true);
        for (scope, ss) in rs.scope_spans.iter().enumerate() {
            let Some(len) = scope_len(ss, resource, scope, &keep) else {
                continue;
            };
            put_framed(&mut out, 2, len);
            ss.kept.write(&mut out, true);
            for span in picked(ss, resource, scope, &keep) {
                put_framed(&mut out, 2, span.forwarded_len());
                span.write_forwarded(&mut out);
            }
            ss.kept.write(&mut out, false);
        }
        rs.kept.write(&mut out, false);
    }
    out
}
