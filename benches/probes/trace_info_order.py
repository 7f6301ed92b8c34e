"""Complete traces/s on a real MLflow for the two orders the gateway can write in: spans first,
then StartTraceV3 (`mlflow.trace_info_first = false`, the MLflow SDK's order) and StartTraceV3
first with root-derived times, then spans (the default). Same traces, same concurrency, phases
one after the other, repeats alternating; then checks that both orders stored the same fields.

Usage: MLFLOW_URL=http://127.0.0.1:5077 .venv/bin/python benches/probes/trace_info_order.py [traces] [repeats]
Results: BENCHMARKS.md, "Decisions" (TraceInfo first).
"""
import os
import json, sys, threading, time, datetime
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlflow_calls import URL, make_request, make_span, new_span_id, new_trace_id, get_trace_full, post_otlp, unique_experiment
import requests

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
REPEATS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
WRITERS = 4
exp = unique_experiment("order")

def span_attrs(i):
    return {
        "gen_ai.operation.name": "chat" if i % 3 == 0 else "execute_tool",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 40,
        "mlflow.spanInputs": json.dumps({"messages": [{"role": "user", "content": "x" * 150}]}),
        "mlflow.spanOutputs": json.dumps({"content": "y" * 150}),
        "http.route": "/v1/chat",
    }

def iso(ns):
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

def build(n):
    traces = []
    for k in range(n):
        t, root = new_trace_id(), new_span_id()
        base = time.time_ns() - 5_000_000_000
        spans = [make_span(t, root, name="root", start_ns=base, end_ns=base + 4_000_000_000,
                           attrs={"session.id": f"s-{k % 20}", "user.id": "u", **span_attrs(0)})]
        for i in range(9):
            spans.append(make_span(t, new_span_id(), parent_hex=root, name=f"child{i}",
                                   start_ns=base + i * 1000, end_ns=base + 3_000_000_000, attrs=span_attrs(i + 1)))
        info = {"trace": {"trace_info": {
            "trace_id": "tr-" + t,
            "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": exp}},
            "request_time": iso(base), "execution_duration": "4s", "state": "OK",
            "client_request_id": f"req-{t[:12]}",
            "trace_metadata": {"mlflow.trace.session": f"s-{k % 20}", "mlflow.trace.user": "u",
                               "mlflow.source.type": "PROD", "mlflow.source.name": "probe"},
            "tags": {"deployment": "probe"}}}}
        traces.append((t, spans, info))
    batches = []
    for j in range(0, n, 50):
        spans = [s for (_, sp, _) in traces[j:j + 50] for s in sp]
        batches.append(make_request(spans).SerializeToString())
    return traces, batches

def post_spans(batches):
    for b in batches:
        r = post_otlp(b, exp)
        assert r.status_code == 200, r.text[:200]

def post_infos(traces):
    idx = [0]; lock = threading.Lock()
    def worker():
        while True:
            with lock:
                i = idx[0]; idx[0] += 1
            if i >= len(traces): return
            # A fresh connection per call: on a kept-alive one each Flask reply waits ~40 ms for a
            # delayed ACK between its header and body writes.
            r = requests.post(f"{URL}/api/3.0/mlflow/traces", json=traces[i][2])
            assert r.status_code == 200, r.text[:200]
    ts = [threading.Thread(target=worker) for _ in range(WRITERS)]
    [t.start() for t in ts]; [t.join() for t in ts]

def timed(f, *a):
    t0 = time.perf_counter(); f(*a); return time.perf_counter() - t0

last = {}
for r in range(REPEATS):
    for order in ("spans_first", "info_first"):
        traces, batches = build(N)
        if order == "spans_first":
            a = timed(post_spans, batches); b = timed(post_infos, traces)
        else:
            b = timed(post_infos, traces); a = timed(post_spans, batches)
        print(f"{order:12s} repeat {r}: {N / (a + b):6.1f} complete traces/s  (spans {a:.2f} s = {10 * N / a:.0f} spans/s, StartTraceV3 {b:.2f} s = {N / b:.1f}/s)", flush=True)
        last[order] = traces

# Check what the info-first traces look like in MLflow.
for order, traces in last.items():
    bad = 0
    for k, (t, spans, info) in enumerate(traces[:10]):
        g = get_trace_full("tr-" + t, allow_partial=False).json()["trace"]
        ti = g["trace_info"]
        ok = (ti.get("state") == "OK" and ti.get("client_request_id") == info["trace"]["trace_info"]["client_request_id"]
              and ti.get("request_time") == info["trace"]["trace_info"]["request_time"]
              and ti.get("execution_duration") in ("4s", "4.000s") and len(g["spans"]) == 10
              and ti.get("trace_metadata", {}).get("mlflow.source.type") == "PROD"
              and "mlflow.trace.tokenUsage" in ti.get("trace_metadata", {})
              and ti.get("request_preview") and ti.get("trace_metadata", {}).get("mlflow.trace.session"))
        if k == 0:
            md = ti.get("trace_metadata", {})
            print(order, "sample:", ti.get("request_preview", "")[:40], md.get("mlflow.trace.tokenUsage"), md.get("mlflow.trace.session"), md.get("mlflow.trace.cost"), sorted(ti.get("tags", {}).keys()))
        if not ok:
            bad += 1
            print(order, json.dumps({k: ti.get(k) for k in ("state", "client_request_id", "request_time", "execution_duration")}), len(g["spans"]))
    print(f"{order}: {10 - bad}/10 checked traces as intended")
