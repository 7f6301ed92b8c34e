"""What MLflow's readers make of a trace whose TraceInfo landed before its spans, with and
without the `mlflow.trace.spansLocation = TRACKING_STORE` tag in the StartTraceV3 body:
`mlflow.search_traces` and GetTrace before the spans, and the stored trace after them.

Usage: MLFLOW_URL=http://127.0.0.1:5077 .venv/bin/python benches/probes/spans_location_tag.py
Without the tag the client warns "Failed to download trace data" and GetTrace answers 500; with
it search skips the trace and GetTrace answers 404 until the spans land (docs/internals.md, "Delivery").
"""
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("MLFLOW_URL", "http://127.0.0.1:5077")
import mlflow  # noqa: E402
from mlflow_calls import (  # noqa: E402
    URL, get_trace_full, make_request, make_span, new_span_id, new_trace_id, post_otlp,
    start_trace_v3, unique_experiment,
)

mlflow.set_tracking_uri(URL)
exp = unique_experiment("tagprobe")


def start(t, tag):
    tags = {"team": "a"}
    if tag:
        tags["mlflow.trace.spansLocation"] = "TRACKING_STORE"
    base = time.time_ns() - 5_000_000_000
    when = datetime.datetime.fromtimestamp(base / 1e9, datetime.timezone.utc)
    r = start_trace_v3("tr-" + t, exp, request_time=when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                       execution_duration="4s", client_request_id="r-" + t[:8], tags=tags)
    assert r.status_code == 200, r.text
    return base


def spans(t, base):
    root = new_span_id()
    sp = [make_span(t, root, name="root", start_ns=base, end_ns=base + 4_000_000_000, attrs={"session.id": "s"})]
    sp += [make_span(t, new_span_id(), parent_hex=root, name=f"c{i}", start_ns=base + 1000,
                     end_ns=base + 3_000_000_000) for i in range(3)]
    assert post_otlp(make_request(sp), exp).status_code == 200


def find(t):
    return mlflow.search_traces(locations=[exp], filter_string=f"attributes.client_request_id = 'r-{t[:8]}'",
                                return_type="list")


for tag in (False, True):
    t = new_trace_id()
    base = start(t, tag)
    print(f"--- tag={tag}: TraceInfo only", flush=True)
    print("search:", [(x.info.trace_id, len(x.data.spans)) for x in find(t)], flush=True)
    g = get_trace_full("tr-" + t, allow_partial=False)
    print("REST get:", g.status_code, g.text[:120], flush=True)
    spans(t, base)
    x = find(t)[0]
    print("after spans:", len(x.data.spans), x.info.state, x.info.execution_duration,
          x.info.tags.get("mlflow.trace.spansLocation"), x.info.tags.get("team"),
          x.info.trace_metadata.get("mlflow.trace.session"), flush=True)
