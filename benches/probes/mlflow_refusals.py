"""Which single spans make a real MLflow refuse a whole /v1/traces request.

Each case posts one odd span beside an ordinary sibling (fresh trace ids each time) and prints
MLflow's status. A refused case sinks the sibling too: the gateway must catch it at ingest.

Usage: MLFLOW_URL=http://127.0.0.1:5000 .venv/bin/python benches/probes/mlflow_refusals.py
(the URL's server must be MLflow 3.17.2; the script creates its own experiment).
"""

import json
import os
import secrets
import time
import uuid

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

URL = os.environ.get("MLFLOW_URL", "http://127.0.0.1:5000").rstrip("/")


def experiment() -> str:
    r = requests.post(
        f"{URL}/api/2.0/mlflow/experiments/create",
        json={"name": f"refusals-{uuid.uuid4().hex[:8]}"},
        timeout=30,
    )
    r.raise_for_status()
    return r.json()["experiment_id"]


def span(**overrides) -> Span:
    now = time.time_ns()
    s = Span(
        trace_id=secrets.token_bytes(16),
        span_id=secrets.token_bytes(8),
        name="odd",
        start_time_unix_nano=now - 1_000_000,
        end_time_unix_nano=now,
        status=Status(code=Status.STATUS_CODE_OK),
    )
    for key, value in overrides.items():
        if isinstance(value, list):
            getattr(s, key).extend(value)
        elif isinstance(value, Status):
            s.status.CopyFrom(value)
        else:
            setattr(s, key, value)
    return s


def kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def nested_kvlist(levels: int) -> bytes:
    """An AnyValue holding `levels` kvlists one inside the other, encoded by hand (the Python
    encoder refuses nothing, but building it as objects is slow to write)."""
    value = AnyValue(string_value="leaf").SerializeToString()
    for _ in range(levels):
        inner_kv = kv("k", AnyValue()).SerializeToString()[:-2]  # key only
        kv_bytes = inner_kv + b"\x12" + _varint(len(value)) + value
        kvlist = b"\x0a" + _varint(len(kv_bytes)) + kv_bytes
        value = b"\x32" + _varint(len(kvlist)) + kvlist
    return value


def nested_array(levels: int) -> bytes:
    value = AnyValue(string_value="leaf").SerializeToString()
    for _ in range(levels):
        array = b"\x0a" + _varint(len(value)) + value
        value = b"\x2a" + _varint(len(array)) + array
    return value


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def with_raw_attribute(s: Span, key: str, any_value: bytes) -> bytes:
    """The span's encoding with one more attribute whose AnyValue is given encoded."""
    key_bytes = key.encode()
    kv_bytes = b"\x0a" + _varint(len(key_bytes)) + key_bytes + b"\x12" + _varint(len(any_value)) + any_value
    return s.SerializeToString() + b"\x4a" + _varint(len(kv_bytes)) + kv_bytes


def post(exp: str, odd: bytes, resource: bytes = b"", sibling: bytes | None = None) -> tuple[int, str]:
    """Posts the odd span (encoded) beside a sibling (by default an ordinary span) in one
    request, under `resource` (an encoded Resource) if given."""
    if sibling is None:
        sibling = span(name="sibling").SerializeToString()
    scope = b"".join(b"\x12" + _varint(len(s)) + s for s in (sibling, odd))
    rs = b"\x12" + _varint(len(scope)) + scope
    if resource:
        rs = b"\x0a" + _varint(len(resource)) + resource + rs
    body = b"\x0a" + _varint(len(rs)) + rs
    r = requests.post(
        f"{URL}/v1/traces",
        data=body,
        headers={"content-type": "application/x-protobuf", "x-mlflow-experiment-id": exp},
        timeout=60,
    )
    return r.status_code, r.text[:120].replace("\n", " ")


def cases():
    big = 2**63
    yield "baseline", span().SerializeToString()
    for levels in (30, 31, 32):
        yield f"span attribute: kvlist depth {levels}", with_raw_attribute(span(), "deep", nested_kvlist(levels))
    for levels in (45, 46, 47, 48):
        yield f"span attribute: array depth {levels}", with_raw_attribute(span(), "deep", nested_array(levels))
    # The event attribute's AnyValue sits one message deeper than a span attribute's: with
    # arrays, 47 levels make a chain of 101 messages from the request down, 48 one of 103.
    for levels, nest in ((31, nested_kvlist), (47, nested_array), (48, nested_array)):
        ev = Span.Event(name="e", time_unix_nano=time.time_ns()).SerializeToString()
        key = b"deep"
        value = nest(levels)
        kv_bytes = b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(value)) + value
        ev += b"\x1a" + _varint(len(kv_bytes)) + kv_bytes
        yield f"event attribute: {nest.__name__} {levels}", span().SerializeToString() + b"\x5a" + _varint(len(ev)) + ev
    yield "start and end time 2^63", span(start_time_unix_nano=big, end_time_unix_nano=big).SerializeToString()
    yield "end time 2^63", span(end_time_unix_nano=big).SerializeToString()
    yield "end time 2^63 - 1", span(end_time_unix_nano=big - 1).SerializeToString()
    yield "event time 2^63", span(events=[Span.Event(name="e", time_unix_nano=big)]).SerializeToString()
    yield "bytes attribute", span(attributes=[kv("b", AnyValue(bytes_value=b"\xff\x00"))]).SerializeToString()
    yield "NaN attribute", span(attributes=[kv("d", AnyValue(double_value=float("nan")))]).SerializeToString()
    yield "inf attribute", span(attributes=[kv("d", AnyValue(double_value=float("inf")))]).SerializeToString()
    yield "empty key", span(attributes=[kv("", AnyValue(string_value="x"))]).SerializeToString()
    yield "empty AnyValue", span(attributes=[kv("e", AnyValue())]).SerializeToString()
    yield "spanType 600 chars", span(attributes=[kv("mlflow.spanType", AnyValue(string_value="X" * 600))]).SerializeToString()
    yield "token usage not JSON", span(attributes=[kv("mlflow.chat.tokenUsage", AnyValue(string_value="{oops"))]).SerializeToString()
    yield "token usage strings", span(attributes=[kv("mlflow.chat.tokenUsage", AnyValue(string_value='{"input_tokens":"a","output_tokens":[]}'))]).SerializeToString()
    yield "token usage 2^63", span(attributes=[kv("mlflow.chat.tokenUsage", AnyValue(string_value=json.dumps({"input_tokens": big, "output_tokens": 1, "total_tokens": big + 1})))]).SerializeToString()
    yield "gen_ai input tokens 2^63", span(attributes=[kv("gen_ai.usage.input_tokens", AnyValue(int_value=big - 1)), kv("gen_ai.usage.output_tokens", AnyValue(int_value=big - 1))]).SerializeToString()
    yield "gen_ai input tokens string", span(attributes=[kv("gen_ai.usage.input_tokens", AnyValue(string_value="many"))]).SerializeToString()
    for label, value in (
        ("int 5", AnyValue(int_value=5)),
        ("string '5'", AnyValue(string_value="5")),
        ("empty AnyValue", AnyValue()),
        ("kvlist", AnyValue(kvlist_value=KeyValueList(values=[kv("input_cost", AnyValue(double_value=1.0))]))),
        ("JSON with null", AnyValue(string_value='{"input_cost": null}')),
        ("JSON with 1e400", AnyValue(string_value='{"input_cost": 1e400}')),
        ("JSON with a string", AnyValue(string_value='{"total_cost": "1"}')),
        ("JSON with an unknown key", AnyValue(string_value='{"other": "x"}')),
        ("JSON array", AnyValue(string_value="[1]")),
    ):
        yield f"cost {label}", span(attributes=[kv("mlflow.llm.cost", value)]).SerializeToString()
    for label, value in (
        ("JSON with null", AnyValue(string_value='{"input_tokens": null}')),
        ("JSON cache key string", AnyValue(string_value='{"cache_read_input_tokens": "x"}')),
        ("JSON 1.5", AnyValue(string_value='{"input_tokens": 1.5}')),
        ("JSON true", AnyValue(string_value='{"input_tokens": true}')),
        ("JSON array", AnyValue(string_value="[1]")),
        ("int 5", AnyValue(int_value=5)),
        ("kvlist with a string", AnyValue(kvlist_value=KeyValueList(values=[kv("input_tokens", AnyValue(string_value="a"))]))),
        ("JSON unknown key string", AnyValue(string_value='{"other": "x"}')),
    ):
        yield f"token usage {label}", span(attributes=[kv("mlflow.chat.tokenUsage", value)]).SerializeToString()
    yield "session.id kvlist", span(attributes=[kv("session.id", AnyValue(kvlist_value=KeyValueList(values=[kv("a", AnyValue(int_value=1))])))]).SerializeToString()
    yield "session.id bytes", span(attributes=[kv("session.id", AnyValue(bytes_value=b"\xff"))]).SerializeToString()
    yield "session.id empty AnyValue", span(attributes=[kv("session.id", AnyValue())]).SerializeToString()
    yield "user.id bytes", span(attributes=[kv("user.id", AnyValue(bytes_value=b"\xff"))]).SerializeToString()
    yield "spanType int", span(attributes=[kv("mlflow.spanType", AnyValue(int_value=3))]).SerializeToString()
    yield "spanType kvlist", span(attributes=[kv("mlflow.spanType", AnyValue(kvlist_value=KeyValueList()))]).SerializeToString()
    yield "traceName int", span(attributes=[kv("mlflow.traceTag.mlflow.traceName", AnyValue(int_value=3))]).SerializeToString()
    yield "spanInputs kvlist", span(attributes=[kv("mlflow.spanInputs", AnyValue(kvlist_value=KeyValueList(values=[kv("messages", AnyValue(int_value=1))])))]).SerializeToString()
    yield "spanInputs messages odd", span(attributes=[kv("mlflow.spanInputs", AnyValue(string_value='{"messages": [1, null, {"role": 5}]}'))]).SerializeToString()
    yield "model kvlist", span(attributes=[kv("mlflow.llm.model", AnyValue(kvlist_value=KeyValueList()))]).SerializeToString()
    yield "event attribute bytes", span(events=[Span.Event(name="e", time_unix_nano=1, attributes=[kv("b", AnyValue(bytes_value=b"\xff"))])]).SerializeToString()
    yield "link attribute bytes", span(links=[Span.Link(trace_id=secrets.token_bytes(16), span_id=secrets.token_bytes(8), attributes=[kv("b", AnyValue(bytes_value=b"\xff"))])]).SerializeToString()
    yield "status message 1 MB", span(status=Status(code=2, message="m" * 1_000_000)).SerializeToString()
    yield "cost not JSON", span(attributes=[kv("mlflow.llm.cost", AnyValue(string_value="{oops"))]).SerializeToString()
    yield "cost 1e400", span(attributes=[kv("mlflow.llm.cost", AnyValue(string_value='{"input_cost": 1e400, "total_cost": "x"}'))]).SerializeToString()
    yield "user.id 9000 chars", span(attributes=[kv("user.id", AnyValue(string_value="u" * 9000))]).SerializeToString()
    yield "user.id kvlist", span(attributes=[kv("user.id", AnyValue(kvlist_value=KeyValueList(values=[kv("a", AnyValue(int_value=1))])))]).SerializeToString()
    yield "session.id int", span(attributes=[kv("session.id", AnyValue(int_value=12345))]).SerializeToString()
    yield "name 100k chars", span(name="n" * 100_000).SerializeToString()
    yield "model 600 chars", span(attributes=[kv("gen_ai.request.model", AnyValue(string_value="m" * 600))]).SerializeToString()
    yield "traceTag key 300 chars", span(attributes=[kv("mlflow.traceTag." + "k" * 300, AnyValue(string_value="v"))]).SerializeToString()
    yield "traceName 300 chars", span(attributes=[kv("mlflow.traceTag.mlflow.traceName", AnyValue(string_value="n" * 300))]).SerializeToString()
    yield "spanInputs not JSON", span(attributes=[kv("mlflow.spanInputs", AnyValue(string_value="{oops"))]).SerializeToString()
    yield "link with 3-byte trace id", span(links=[Span.Link(trace_id=b"abc", span_id=b"12345678")]).SerializeToString()
    yield "link without ids", span(links=[Span.Link()]).SerializeToString()
    yield "parent id 3 bytes", span(parent_span_id=b"abc").SerializeToString()
    yield "trace id 20 bytes", span(trace_id=secrets.token_bytes(20)).SerializeToString()
    yield "span id 16 bytes", span(span_id=secrets.token_bytes(16)).SerializeToString()
    yield "status code 7", span(status=Status(code=7)).SerializeToString()
    yield "kind 99", span(kind=99).SerializeToString()


def resources():
    for label, value in (
        ("bytes", AnyValue(bytes_value=b"\xff")),
        ("kvlist", AnyValue(kvlist_value=KeyValueList(values=[kv("a", AnyValue(int_value=1))]))),
        ("nested array", AnyValue(array_value={"values": [AnyValue(array_value={"values": [AnyValue(int_value=1)]})]})),
        ("NaN", AnyValue(double_value=float("nan"))),
        ("empty AnyValue", AnyValue()),
        ("mixed array", AnyValue(array_value={"values": [AnyValue(int_value=1), AnyValue(string_value="a")]})),
        ("array of bytes", AnyValue(array_value={"values": [AnyValue(bytes_value=b"a")]})),
        ("kvlist holding bytes", AnyValue(kvlist_value=KeyValueList(values=[kv("a", AnyValue(bytes_value=b"a"))]))),
    ):
        yield f"resource attribute {label}", kv("odd", value).SerializeToString()


def report(name: str, status: int, text: str) -> None:
    verdict = "accepted" if status == 200 else "REFUSED"
    print(f"{verdict:9} {status}  {name}  {'' if status == 200 else text}")


def main() -> None:
    exp = experiment()
    print(f"MLflow at {URL}, experiment {exp}")
    for name, odd in cases():
        report(name, *post(exp, odd))
    for name, attribute in resources():
        resource = b"\x0a" + _varint(len(attribute)) + attribute
        report(name, *post(exp, span().SerializeToString(), resource))
    twice = span().SerializeToString()
    report("the same span twice in one request", *post(exp, twice, sibling=twice))


if __name__ == "__main__":
    main()
