use super::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

/// A record of resources of scopes of `count` spans each, numbered from `first`.
fn record(shape: &[&[u8]], first: &mut u8) -> Bytes {
    let resource_spans = shape
        .iter()
        .map(|scopes| ResourceSpans {
            scope_spans: scopes
                .iter()
                .map(|count| ScopeSpans {
                    spans: (0..*count)
                        .map(|_| {
                            *first += 1;
                            Span {
                                trace_id: vec![*first; 16],
                                span_id: vec![*first; 8],
                                ..Default::default()
                            }
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    Bytes::from(ExportTraceServiceRequest { resource_spans }.encode_to_vec())
}

fn ids(body: &Bytes) -> Vec<u8> {
    ExportTraceServiceRequest::decode(&body[..])
        .expect("decodes")
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.span_id[0])
        .collect()
}

#[test]
fn every_span_of_a_readable_record_is_a_part_in_order() {
    let mut n = 0;
    let bodies = [record(&[&[3, 2], &[1]], &mut n), record(&[&[2]], &mut n)];
    let parts = Parts::new(&bodies);
    assert_eq!(parts.len(), 8);
    assert_eq!(ids(&parts.encode(&(0..8))), (1..=8).collect::<Vec<u8>>());
    let (a, b) = halves(0..8);
    assert_eq!(ids(&parts.encode(&a)), [1, 2, 3, 4]);
    assert_eq!(ids(&parts.encode(&b)), [5, 6, 7, 8]);
    assert_eq!(ids(&parts.encode(&(5..7))), [6, 7], "across two records");
    let contents = parts.contents(&(5..7));
    assert_eq!(contents.spans, 2);
    assert!(contents.holds_root(0, &[6; 8]) && contents.holds_root(1, &[7; 8]));
    assert!(!contents.holds_root(1, &[8; 8]));
}

#[test]
fn a_record_the_codec_cannot_read_is_one_part() {
    let mut n = 0;
    let good = record(&[&[2]], &mut n);
    // A span with a field of the wrong wire type: prost and the codec both refuse it.
    let mut broken = Span {
        trace_id: vec![9; 16],
        span_id: vec![9; 8],
        ..Default::default()
    }
    .encode_to_vec();
    broken.extend_from_slice(&[9 << 3, 0x01]);
    let mut scope = vec![0x12, broken.len() as u8];
    scope.extend_from_slice(&broken);
    let mut rs = vec![0x12, scope.len() as u8];
    rs.extend_from_slice(&scope);
    let mut body = vec![0x0a, rs.len() as u8];
    body.extend_from_slice(&rs);
    let bad = Bytes::from(body);
    let bodies = [good.clone(), bad.clone(), record(&[&[1]], &mut n)];
    let parts = Parts::new(&bodies);
    assert_eq!(parts.len(), 4, "two spans, the unreadable record, one span");
    assert_eq!(parts.encode(&(2..3)), bad, "sent as it was spooled");
    let contents = parts.contents(&(2..3));
    assert_eq!(contents.spans, 0);
    assert!(contents.holds_root(1, &[0; 8]), "whatever root it holds");
    assert!(!contents.holds_root(0, &[1; 8]));
    let all = parts.encode(&(0..4));
    assert_eq!(all.len(), good.len() + bad.len() + bodies[2].len());
}
