"""What the MLflow probes share: OTLP spans built from plain values, and the few MLflow REST
calls they make. The server is `MLFLOW_URL` (default http://127.0.0.1:5077); only `requests`
and `opentelemetry-proto` (both in `.venv`) are needed.
"""

import os
import secrets
import time
import uuid

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

URL = os.environ.get("MLFLOW_URL", "http://127.0.0.1:5077").rstrip("/")
_session = requests.Session()


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)


def any_value(value) -> AnyValue:
    """An OTLP AnyValue from a Python value (bool before int: bool is an int in Python)."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, (list, tuple)):
        out = AnyValue()
        out.array_value.values.extend(any_value(v) for v in value)
        return out
    if isinstance(value, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(KeyValue(key=k, value=any_value(v)) for k, v in value.items())
        return out
    return AnyValue(string_value=str(value))


def make_span(trace_hex, span_hex, parent_hex=None, name="span", start_ns=None, end_ns=None,
              attrs=None) -> Span:
    now = time.time_ns()
    span = Span(
        trace_id=bytes.fromhex(trace_hex),
        span_id=bytes.fromhex(span_hex),
        name=name,
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=now - 1_000_000_000 if start_ns is None else start_ns,
        end_time_unix_nano=now if end_ns is None else end_ns,
        status=Status(code=Status.STATUS_CODE_OK),
    )
    if parent_hex:
        span.parent_span_id = bytes.fromhex(parent_hex)
    span.attributes.extend(KeyValue(key=k, value=any_value(v)) for k, v in (attrs or {}).items())
    return span


def make_request(spans) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    scope.scope.name = "probe"
    scope.spans.extend(spans)
    return request


def post_otlp(request_or_bytes, experiment_id: str):
    body = request_or_bytes
    if not isinstance(body, (bytes, bytearray)):
        body = body.SerializeToString()
    headers = {"Content-Type": "application/x-protobuf", "x-mlflow-experiment-id": experiment_id}
    return _session.post(f"{URL}/v1/traces", data=body, headers=headers)


def unique_experiment(prefix: str) -> str:
    r = _session.post(f"{URL}/api/2.0/mlflow/experiments/create",
                      json={"name": f"{prefix}-{uuid.uuid4().hex[:8]}"})
    r.raise_for_status()
    return r.json()["experiment_id"]


def get_trace_full(trace_id: str, allow_partial: bool = True):
    """GetTrace with its spans (`/api/3.0/mlflow/traces/get`)."""
    params = {"trace_id": trace_id, "allow_partial": "true" if allow_partial else "false"}
    return _session.get(f"{URL}/api/3.0/mlflow/traces/get", params=params)


def start_trace_v3(trace_id, experiment_id, request_time, execution_duration=None,
                   client_request_id=None, tags=None):
    info = {
        "trace_id": trace_id,
        "trace_location": {"type": "MLFLOW_EXPERIMENT",
                           "mlflow_experiment": {"experiment_id": experiment_id}},
        "request_time": request_time,
        "state": "OK",
        "tags": tags or {},
    }
    if execution_duration is not None:
        info["execution_duration"] = execution_duration
    if client_request_id is not None:
        info["client_request_id"] = client_request_id
    # A fresh connection: on a kept-alive one each Flask reply waits ~40 ms for a delayed ACK.
    return requests.post(f"{URL}/api/3.0/mlflow/traces", json={"trace": {"trace_info": info}})
