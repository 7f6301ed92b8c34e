//! Changing a span on the wire (root enrichment, appended fields) against prost: the bytes
//! forwarded read as the span changed after decoding would.

use super::schema::MLFLOW_MAX_NESTING;
use super::tests::{find_str, kv_str, span};
use super::*;
use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use prost::Message;

fn view_of(span: &Span) -> (SpanView, Vec<AttributeAt>) {
    view_of_bytes(span.encode_to_vec())
}

fn view_of_bytes(span: Vec<u8>) -> (SpanView, Vec<AttributeAt>) {
    let mut attributes = Vec::new();
    let view = SpanView::parse(Bytes::from(span), &mut attributes, MLFLOW_MAX_NESTING).unwrap();
    (view, attributes)
}

/// Set on the wire, a root carries what setting the decoded span gives: values replaced,
/// a duplicate key left once, new keys added, every other field and attribute unchanged.
#[test]
fn string_attributes_set_on_the_wire_match_the_decoded_result() {
    let mut root = span(1, &[]);
    root.attributes = vec![
        kv_str("session.id", "old"),
        kv_str("keep", "k"),
        kv_str("user.id", "u1"),
        kv_str("user.id", "u2"),
    ];
    root.status = Some(Status {
        message: "boom".into(),
        code: 2,
    });
    let set = [
        ("session.id", "new"),
        ("user.id", "u"),
        ("mlflow.traceTag.t", "v"),
    ];
    let (mut view, attributes) = view_of(&root);
    assert_eq!(view.status_code, 2);
    view.set_string_attributes(&attributes, &set);
    let mut on_wire = Span::decode(&view.forwarded()[..]).unwrap();

    let mut expected = root.clone();
    expected.attributes = vec![kv_str("keep", "k")];
    expected
        .attributes
        .extend(set.iter().map(|(k, v)| kv_str(k, v)));
    assert_eq!(on_wire, expected);

    // Forwarded as received when every value is already there.
    let (mut again, attributes) = view_of(&on_wire);
    again.set_string_attributes(&attributes, &set);
    assert_eq!(again.forwarded(), &on_wire.encode_to_vec()[..]);
    on_wire.attributes.push(kv_str("user.id", "u"));
    let (mut duplicated, attributes) = view_of(&on_wire);
    let before = duplicated.forwarded().to_vec();
    duplicated.set_string_attributes(&attributes, &set);
    assert_ne!(
        duplicated.forwarded(),
        &before[..],
        "a duplicated key is set once"
    );
}

/// Keys a root lacks are appended after its received bytes (no rewrite), values it holds are
/// kept where they are, and the result reads as setting the decoded span does.
#[test]
fn string_attributes_a_span_lacks_are_appended_to_its_bytes() {
    let mut root = span(1, &[]);
    root.attributes = vec![kv_str("session.id", "s"), kv_str("keep", "k")];
    let received = root.encode_to_vec();
    let set = [
        ("session.id", "s"),
        ("mlflow.traceTag.t", "v"),
        ("user.id", "u"),
    ];
    let (mut view, attributes) = view_of(&root);
    view.set_string_attributes(&attributes, &set);
    let forwarded = view.forwarded().to_vec();
    assert!(
        forwarded.starts_with(&received),
        "received bytes kept as is"
    );
    let mut expected = root.clone();
    expected.attributes.push(kv_str("mlflow.traceTag.t", "v"));
    expected.attributes.push(kv_str("user.id", "u"));
    assert_eq!(Span::decode(&forwarded[..]).unwrap(), expected);

    // A value held in another encoding (an extra empty field) is set by a rewrite, once.
    let mut odd = span(1, &[]);
    odd.attributes = vec![kv_str("keep", "k")];
    let mut bytes = odd.encode_to_vec();
    // KeyValue { key: "session.id", value: { string_value: "s" }, key_strindex: 0 (explicit) }
    let key_value = [
        &[0x0a, 10][..],
        b"session.id",
        &[0x12, 3, 0x0a, 1, b's'],
        &[0x18, 0],
    ]
    .concat();
    bytes.extend_from_slice(&[9 << 3 | 2, key_value.len() as u8]);
    bytes.extend_from_slice(&key_value);
    let (mut view, attributes) = view_of_bytes(bytes);
    view.set_string_attributes(&attributes, &set[..1]);
    let forwarded = view.forwarded().to_vec();
    assert!(!forwarded.windows(key_value.len()).any(|w| w == key_value));
    let on_wire = Span::decode(&forwarded[..]).unwrap();
    assert_eq!(
        on_wire.attributes,
        vec![kv_str("keep", "k"), kv_str("session.id", "s")]
    );
}

/// Fields appended after a span's bytes read as its own: one more attribute each, and a status
/// code merged into the status it had. Past the inline room they still come out whole.
#[test]
fn appended_fields_are_read_as_the_span_s_own() {
    let mut received = span(1, &[]);
    received.status = Some(Status {
        code: 0,
        message: "kept".into(),
    });
    let mut attributes = Vec::new();
    let mut view = SpanView::parse(
        Bytes::from(received.encode_to_vec()),
        &mut attributes,
        MLFLOW_MAX_NESTING,
    )
    .unwrap();
    let long = "x".repeat(200);
    view.append_string_attribute("mlflow.spanType", "CHAT_MODEL");
    view.append_int_attribute("mlflow.spanLogLevel", 20);
    view.set_status_code(opentelemetry_proto::tonic::trace::v1::status::StatusCode::Ok);
    view.append_string_attribute("long", &long);
    let mut out = Vec::new();
    view.write_forwarded(&mut out);
    assert_eq!(out.len(), view.forwarded_len());
    let decoded = Span::decode(&out[..]).unwrap();
    assert_eq!(
        find_str(&decoded.attributes, "mlflow.spanType").as_deref(),
        Some("CHAT_MODEL")
    );
    assert_eq!(find_str(&decoded.attributes, "long"), Some(long));
    let level = decoded
        .attributes
        .iter()
        .find(|kv| kv.key == "mlflow.spanLogLevel")
        .and_then(|kv| kv.value.clone()?.value);
    assert_eq!(level, Some(Value::IntValue(20)));
    let status = decoded.status.unwrap_or_default();
    assert_eq!((status.code, status.message.as_str()), (1, "kept"));
    assert_eq!(view.status_code, 1);
}
