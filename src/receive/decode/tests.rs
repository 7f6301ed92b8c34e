use super::*;
use std::io::Write;

fn limits(max: usize) -> DecodeLimits {
    DecodeLimits {
        max_decompressed_bytes: max,
        max_nesting_depth: crate::otlp::schema::MLFLOW_MAX_NESTING,
        budget: DecodeBudget::new(4 * max),
        retry_after: std::time::Duration::from_secs(1),
    }
}

#[test]
fn content_types_with_parameters_are_accepted() {
    assert_eq!(
        parse_content_type(Some("application/json; charset=utf-8")),
        Ok(Format::Json)
    );
    assert_eq!(
        parse_content_type(Some("Application/X-Protobuf")),
        Ok(Format::Protobuf)
    );
    assert!(parse_content_type(Some("text/plain")).is_err());
    assert!(parse_content_type(None).is_err());
}

#[test]
fn encodings() {
    assert_eq!(parse_encoding(None), Ok(Encoding::Identity));
    assert_eq!(parse_encoding(Some("GZIP")), Ok(Encoding::Gzip));
    assert_eq!(parse_encoding(Some("zstd")), Ok(Encoding::Zstd));
    assert!(parse_encoding(Some("br")).is_err());
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    d.write_all(data).unwrap();
    d.finish().unwrap()
}

/// A zstd frame that declares its size (as one-shot encoders write it).
fn zstd_declared(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 1).unwrap()
}

/// A zstd stream that does not declare its size (as streaming encoders write it).
fn zstd_undeclared(data: &[u8]) -> Vec<u8> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn every_encoding_round_trips_at_every_size() {
    let budget = DecodeBudget::new(64 << 20);
    for len in [
        0,
        1,
        FIRST_CHUNK - 1,
        FIRST_CHUNK,
        FIRST_CHUNK + 1,
        3 * FIRST_CHUNK + 7,
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        for (encoding, body) in [
            (Encoding::Gzip, gzip(&data)),
            (Encoding::Deflate, zlib(&data)),
            (Encoding::Deflate, raw_deflate(&data)),
            (Encoding::Zstd, zstd_declared(&data)),
            (Encoding::Zstd, zstd_undeclared(&data)),
            (Encoding::Identity, data.clone()),
        ] {
            let out = decompress(encoding, body.into(), 1 << 20, &budget).unwrap();
            assert_eq!(out, data, "{encoding:?} of {len} bytes");
            drop(out);
            assert_eq!(budget.available(), 64 << 20, "the charge comes back");
        }
    }
}

#[test]
fn the_limit_holds_exactly_for_every_encoding() {
    let budget = DecodeBudget::new(1 << 20);
    let limit = 100_000;
    for len in [limit, limit + 1] {
        let data = vec![b'x'; len];
        for (encoding, body) in [
            (Encoding::Gzip, gzip(&data)),
            (Encoding::Deflate, zlib(&data)),
            (Encoding::Zstd, zstd_undeclared(&data)),
            (Encoding::Zstd, zstd_declared(&data)),
            (Encoding::Identity, data.clone()),
        ] {
            let out = decompress(encoding, body.into(), limit, &budget);
            if len == limit {
                assert_eq!(out.unwrap().len(), limit, "{encoding:?}");
            } else {
                assert!(
                    matches!(out, Err(DecodeError::TooLarge { .. })),
                    "{encoding:?}: {out:?}"
                );
            }
            assert_eq!(budget.available(), 1 << 20);
        }
    }
}

#[test]
fn a_declared_bomb_is_refused_before_anything_is_inflated() {
    let bomb = gzip(&vec![0u8; 50 << 20]);
    assert!(bomb.len() < 1 << 20, "a 50 MiB bomb fits in under 1 MiB");
    assert_eq!(gzip_size(&bomb), Some(50 << 20));
    // A budget far smaller than the bomb's first chunk would be: nothing is charged at all.
    let budget = DecodeBudget::new(1);
    assert!(matches!(
        decompress(Encoding::Gzip, bomb.into(), 1 << 20, &budget),
        Err(DecodeError::TooLarge { .. })
    ));
    let zbomb = zstd_declared(&vec![0u8; 50 << 20]);
    assert!(matches!(
        decompress(Encoding::Zstd, zbomb.into(), 1 << 20, &budget),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn an_undeclared_bomb_costs_at_most_the_limit_and_gives_it_back() {
    let mut bomb = gzip(&vec![0u8; 50 << 20]);
    // A trailer that lies about the size: the gateway must find out by inflating.
    let n = bomb.len();
    bomb[n - 4..].copy_from_slice(&1000u32.to_le_bytes());
    let limit = 1 << 20;
    // A budget of exactly one limit: a bomb alone is too large, not "busy".
    let budget = DecodeBudget::new(limit);
    let err = decompress(Encoding::Gzip, bomb.into(), limit, &budget).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { .. }), "{err:?}");
    assert_eq!(budget.available(), limit);
    let deflate_bomb = zlib(&vec![0u8; 50 << 20]);
    assert!(matches!(
        decompress(Encoding::Deflate, deflate_bomb.into(), limit, &budget),
        Err(DecodeError::TooLarge { .. })
    ));
    assert_eq!(budget.available(), limit);
}

/// A body of unknown size in several chunks, joined: it holds one charge for its size, and
/// needs no more budget than that to be joined.
#[test]
fn a_body_of_undeclared_size_fits_a_budget_of_its_own_size() {
    let data: Vec<u8> = (0..3 * FIRST_CHUNK + 5).map(|i| (i % 7) as u8).collect();
    let budget = DecodeBudget::new(data.len());
    let out = decompress(Encoding::Deflate, zlib(&data).into(), data.len(), &budget).unwrap();
    assert_eq!(out, data);
    assert_eq!(budget.available(), 0);
    drop(out);
    assert_eq!(budget.available(), data.len());
}

#[test]
fn bodies_in_flight_share_one_budget() {
    let data = vec![7u8; 300_000];
    let budget = DecodeBudget::new(700_000);
    let first = decompress(Encoding::Gzip, gzip(&data).into(), 1 << 20, &budget).unwrap();
    let second = decompress(Encoding::Gzip, gzip(&data).into(), 1 << 20, &budget).unwrap();
    assert_eq!(
        decompress(Encoding::Gzip, gzip(&data).into(), 1 << 20, &budget),
        Err(DecodeError::Busy),
        "a third would pass the budget"
    );
    assert_eq!(
        decompress(Encoding::Identity, data.clone().into(), 1 << 20, &budget),
        Err(DecodeError::Busy),
        "identity bodies are charged too"
    );
    drop((first, second));
    assert!(decompress(Encoding::Gzip, gzip(&data).into(), 1 << 20, &budget).is_ok());
}

#[test]
fn corrupt_bodies_are_reported() {
    let budget = DecodeBudget::new(1 << 20);
    for encoding in [Encoding::Gzip, Encoding::Deflate, Encoding::Zstd] {
        assert!(
            matches!(
                decompress(
                    encoding,
                    Bytes::from_static(b"not compressed at all"),
                    1 << 20,
                    &budget
                ),
                Err(DecodeError::Corrupt { .. })
            ),
            "{encoding:?}"
        );
    }
    assert_eq!(budget.available(), 1 << 20);
}

#[test]
fn otlp_json_decodes_with_hex_ids_and_string_ints() {
    let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
      "scopeSpans":[{"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
      "name":"root","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
      "attributes":[{"key":"n","value":{"intValue":"7"}}]}]}]}]}"#;
    let req = decode(Format::Json, Bytes::from_static(json), &limits(1 << 20)).unwrap();
    let scope = &req.resource_spans[0].scope_spans[0];
    let span = &scope.spans[0];
    assert_eq!(span.trace_id().len(), 16);
    assert_eq!(span.span_id().len(), 8);
    assert_eq!(span.end_time_unix_nano, 1544712661000000000);
    assert_eq!(
        span.attributes_where(&scope.attributes, |_| true)[0].value,
        Some(opentelemetry_proto::tonic::common::v1::AnyValue {
            value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(7))
        })
    );
}
