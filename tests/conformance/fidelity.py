"""Fidelity cases of the conformance suite: a trace through the gateway against one MLflow's own
SDK writes, compared whole (TraceInfo and every span), and the ways MLflow's SDK itself reaches
the gateway (over OTLP, dual export), a trace whose root is lost, and GenAI apps instrumented with
OpenInference and with the GenAI semantic conventions.

Used by conformance.py; every case returns a one-line summary or raises.
"""

import json
import os
import subprocess
import sys
import time
import uuid

import mlflow
import requests
from mlflow import MlflowClient

from common import app_env, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
# MLflow's SDK with an OpenTelemetry SDK it can export over OTLP with (run.sh makes it).
SDK_OTLP_PY = os.environ.get("CONFORMANCE_SDK_OTLP_PY", os.path.join(HERE, ".venv-sdk-otlp", "bin", "python"))

# What legitimately differs between MLflow's SDK writing straight into MLflow and an OTel app
# through the gateway, with why; README "Fidelity" lists the same. Anything else that differs
# fails the case.
EXPECTED = {
    "trace_id": "each trace has its own id",
    "request_time": "each trace ran at its own time",
    "execution_duration_ms": "each trace ran for its own time",
    "trace_location": "the two runs use the same experiment; compared for equality anyway",
    "metadata mlflow.source.name": "the SDK names the Python script; OTel apps are named by service.name",
    "metadata mlflow.user": "the SDK records the OS user running the script; an OTel app does not send it",
    "metadata mlflow.trace.sizeBytes": "MLflow's SDK measures its spans before sending; MLflow measures no OTLP trace",
    "metadata mlflow.trace.sizeStats": "MLflow's SDK measures its spans before sending; MLflow measures no OTLP trace",
    "metadata mlflow.source.git.commit": "the SDK records the git checkout the script runs in",
    "metadata mlflow.source.git.branch": "the SDK records the git checkout the script runs in",
    "metadata mlflow.source.git.repoURL": "the SDK records the git checkout the script runs in",
    "metadata mlflow.source.git.dirty": "the SDK records the git checkout the script runs in",
    "tag mlflow.artifactLocation": "MLflow names each trace's own artifact folder",
    "tag mlflow.trace.session": "the gateway also writes session and user as tags (mapping also_tag) for the seed guide's tags.`mlflow.trace.*` filters",
    "tag mlflow.trace.user": "the gateway also writes session and user as tags (mapping also_tag) for the seed guide's tags.`mlflow.trace.*` filters",
    "span attribute mlflow.traceRequestId": "each trace has its own id",
    "span attribute mlflow.spanFunctionName": "set by MLflow's @mlflow.trace decorator only",
    "span attribute mlflow.traceTag.*": "the root carries the trace's tags as attributes, which MLflow lifts when the spans land",
    "tag <resource attribute>": "MLflow's OTLP endpoint makes an OTLP trace's resource attributes trace tags",
}


# The resource attributes the OTel apps send (app_env, and what the OTel SDK adds itself).
RESOURCE_KEYS = {
    "service.name", "service.version", "service.instance.id", "deployment.environment.name",
    "k8s.deployment.name", "cloud.region", "telemetry.sdk.language", "telemetry.sdk.name",
    "telemetry.sdk.version",
}


def trace_by_crid(client, exp_id, crid):
    found = wait_for(
        f"trace {crid}",
        lambda: client.search_traces(locations=[exp_id], filter_string=f"attributes.client_request_id = '{crid}'"),
    )
    return client.get_trace(found[0].info.trace_id)


def flatten(trace, case):
    """One trace as field -> value, `case` (the run's id) replaced so two runs compare."""
    norm = lambda v: json.loads(json.dumps(v).replace(case, "<case>")) if v is not None else None
    info = trace.info.to_dict()
    out = {}
    for key, value in info.items():
        if key in ("trace_metadata", "tags", "assessments"):
            continue
        out[key] = norm(value)
    for key, value in (info.get("trace_metadata") or {}).items():
        out[f"metadata {key}"] = norm(value)
    for key, value in (info.get("tags") or {}).items():
        out[f"tag {key}"] = norm(value)
    for span in trace.data.spans:
        name = span.name
        out[f"span {name}: type"] = span.span_type
        out[f"span {name}: status"] = span.status.status_code.value
        out[f"span {name}: parent is root"] = span.parent_id is not None and any(
            s.span_id == span.parent_id and s.parent_id is None for s in trace.data.spans
        )
        out[f"span {name}: inputs"] = norm(span.inputs)
        out[f"span {name}: outputs"] = norm(span.outputs)
        for key, value in span.attributes.items():
            if key.startswith("mlflow.") and key not in (
                "mlflow.spanType", "mlflow.spanInputs", "mlflow.spanOutputs",
            ):
                out[f"span {name}: attribute {key}"] = norm(value)
    return out


def compare(title, expected_case, expected, actual_case, actual, otel_resource=(), rows_shown="all"):
    """Prints expected vs actual field by field (`rows_shown`: "all", or only "differences");
    returns the unexplained differences. `otel_resource`: resource attribute keys the OTel side
    sent."""
    a, b = flatten(expected, expected_case), flatten(actual, actual_case)
    rows, unexplained = [], []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if va == vb:
            verdict = "same"
        else:
            reason = reason_for(key, otel_resource)
            verdict = f"differs: {reason}" if reason else "DIFFERENT"
            if not reason:
                unexplained.append((key, va, vb))
        rows.append((key, short(va), short(vb), verdict))
    widths = [min(60, max(len(r[i]) for r in rows)) for i in range(3)]
    print(f"\n{title}")
    for key, va, vb, verdict in rows:
        if rows_shown != "all" and verdict == "same":
            continue
        print("  " + " | ".join(c[:60].ljust(w) for c, w in zip((key, va, vb), widths)) + f" | {verdict}")
    return unexplained


def reason_for(key, otel_resource):
    """Why this field may differ, or None."""
    if ": attribute " in key:
        attribute = key.split(": attribute ", 1)[1]
        if attribute.startswith("mlflow.traceTag."):
            return EXPECTED["span attribute mlflow.traceTag.*"]
        return EXPECTED.get("span attribute " + attribute)
    if key.startswith("tag ") and key[4:] in otel_resource:
        return EXPECTED["tag <resource attribute>"]
    return EXPECTED.get(key)


def short(v):
    return "-" if v is None else (v if isinstance(v, str) else json.dumps(v))


def sdk_chat(mlflow_url, case, exp_id):
    """The conversation as the seed document writes it with MLflow's SDK, straight into MLflow
    (python/mlflow_sdk_app.py): the same turns, inputs, outputs, token usage and metadata as
    python/chat_app.py sends."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_url, MLFLOW_EXPERIMENT_ID=exp_id)
    subprocess.run([PY, "python/mlflow_sdk_app.py", "direct", case], cwd=HERE, env=env, check=True, timeout=180)


def run_differential(mlflow_url, http, backend):
    """The same three turns by MLflow's SDK straight into MLflow and by plain OTel through the
    gateway, compared whole: every TraceInfo field, metadata entry and tag, and every span's type,
    status, inputs, outputs and MLflow attributes."""
    mlflow.set_tracking_uri(mlflow_url)
    client = MlflowClient()
    exp_id = client.create_experiment(f"conformance-fidelity-{uuid.uuid4().hex[:8]}")
    sdk_case, otel_case = f"diffsdk-{uuid.uuid4().hex[:8]}", f"diffotel-{uuid.uuid4().hex[:8]}"
    sdk_chat(mlflow_url, sdk_case, exp_id)
    subprocess.run(
        [PY, "python/chat_app.py", "http", otel_case],
        cwd=HERE,
        env=app_env(f"conformance-{otel_case}", exp_id, {"OTEL_EXPORTER_OTLP_ENDPOINT": http}),
        check=True,
        timeout=180,
    )
    compare_turns(
        client, exp_id, sdk_case, otel_case,
        f"MLflow SDK (direct) vs OTel through the gateway, {backend}",
        lambda t: len(t.data.spans) == 2 and t.info.token_usage,
    )
    return f"whole TraceInfo and every span x 3 turns on {backend}: no unexplained difference"


def trace_when(client, exp_id, crid, what, ready):
    """The trace with this client request id, once `ready(trace)` holds."""
    return wait_for(what, lambda: (lambda t: t if ready(t) else None)(trace_by_crid(client, exp_id, crid)))


def compare_turns(client, exp_id, reference_case, case, title, ready):
    """Compares the three turns of `case` with `reference_case` (printing turn 1 whole, then only
    differences); fails on any unexplained difference. `ready`: when `case`'s trace is complete."""
    unexplained = []
    for turn in range(1, 4):
        reference = trace_by_crid(client, exp_id, f"{reference_case}-req-{turn}")
        actual = trace_when(client, exp_id, f"{case}-req-{turn}", f"{case} turn {turn} complete", ready)
        unexplained += compare(
            f"{title}, turn {turn}:", reference_case, reference, case, actual, RESOURCE_KEYS,
            rows_shown="all" if turn == 1 else "differences",
        )
    assert not unexplained, f"unexplained differences: {unexplained}"


def sdk_otlp_env(mlflow_url, exp_id, endpoint, extra=None):
    """MLflow's SDK exporting over OTLP to `endpoint` (the gateway's HTTP receiver). The tracking
    URI only spares MLflow's lightweight SDK looking for a local store; without dual export no
    trace goes there."""
    env = app_env("conformance-mlflow-sdk", exp_id, {})
    env["MLFLOW_TRACKING_URI"] = mlflow_url
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{endpoint}/v1/traces"
    env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
    env.update(extra or {})
    return env


def metric(api, name):
    text = requests.get(f"{api}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def run_sdk_over_otlp(mlflow_url, http, api):
    """MLflow's SDK exporting over OTLP to the gateway (ids on the root span, JSON-encoded by the
    SDK) against MLflow's SDK writing straight into MLflow: compared whole, as the differential."""
    mlflow.set_tracking_uri(mlflow_url)
    client = MlflowClient()
    exp_id = client.create_experiment(f"conformance-sdk-otlp-{uuid.uuid4().hex[:8]}")
    direct_case, otlp_case = f"sdkdirect-{uuid.uuid4().hex[:8]}", f"sdkotlp-{uuid.uuid4().hex[:8]}"
    sdk_chat(mlflow_url, direct_case, exp_id)
    subprocess.run(
        [SDK_OTLP_PY, "python/mlflow_sdk_app.py", "otlp", otlp_case],
        cwd=HERE, env=sdk_otlp_env(mlflow_url, exp_id, http), check=True, timeout=180,
    )
    compare_turns(
        client, exp_id, direct_case, otlp_case,
        "MLflow SDK (direct) vs MLflow SDK over OTLP through the gateway",
        lambda t: len(t.data.spans) == 2,
    )
    return "ids without quotes, spans typed; whole trace as the SDK's own (3 turns)"


def run_dual_export(mlflow_url, http, api):
    """MLFLOW_TRACE_ENABLE_OTLP_DUAL_EXPORT: MLflow's SDK writes each trace into its experiment and
    sends the spans to the gateway, whose default experiment is another. The TraceInfo stays the
    SDK's: its experiment, client request id and metadata."""
    mlflow.set_tracking_uri(mlflow_url)
    client = MlflowClient()
    sdk_exp = client.create_experiment(f"conformance-dual-sdk-{uuid.uuid4().hex[:8]}")
    gateway_exp = client.create_experiment(f"conformance-dual-gateway-{uuid.uuid4().hex[:8]}")
    case = f"dual-{uuid.uuid4().hex[:8]}"
    skipped_before = metric(api, "gateway_trace_infos_skipped_total")
    env = sdk_otlp_env(mlflow_url, gateway_exp, http, {
        "MLFLOW_TRACE_ENABLE_OTLP_DUAL_EXPORT": "true",
        "MLFLOW_EXPERIMENT_ID": sdk_exp,
    })
    subprocess.run([SDK_OTLP_PY, "python/mlflow_sdk_app.py", "dual", case], cwd=HERE, env=env, check=True, timeout=180)
    # The gateway's copy of the spans lands within its batch timeout; give it time to write
    # (or skip) its TraceInfos before the check.
    wait_for("the gateway to take the spans", lambda: metric(api, "gateway_export_spans_total") > 0)
    time.sleep(3)
    for turn in range(1, 4):
        crid = f"{case}-req-{turn}"
        trace = trace_by_crid(client, sdk_exp, crid)
        info = trace.info
        assert info.experiment_id == sdk_exp, f"moved to experiment {info.experiment_id}"
        assert info.client_request_id == crid, info.client_request_id
        assert info.trace_metadata.get("mlflow.source.type") == "conformance", info.trace_metadata
        assert info.trace_metadata.get("mlflow.trace.session") == f"{case}-session", info.trace_metadata
        assert str(getattr(info.state, "value", info.state)) == "OK", info.state
        assert len(trace.data.spans) == 2, f"{len(trace.data.spans)} spans"
    moved = client.search_traces(locations=[gateway_exp])
    assert not moved, f"{len(moved)} traces in the gateway's experiment"
    skipped = metric(api, "gateway_trace_infos_skipped_total") - skipped_before
    return f"3 TraceInfos kept as the SDK wrote them (experiment, request id, metadata); {skipped:.0f} gateway writes skipped"


def run_lost_root(mlflow_url, http, api):
    """A trace whose root never reaches the gateway is finalized after traces.root_wait (run.sh
    sets 3 s): final state from its spans (ERROR: one failed), their ids, a tag naming why."""
    mlflow.set_tracking_uri(mlflow_url)
    client = MlflowClient()
    exp_id = client.create_experiment(f"conformance-lost-root-{uuid.uuid4().hex[:8]}")
    case = f"lost-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        [PY, "python/lost_root_app.py", case], cwd=HERE, check=True, timeout=180, capture_output=True, text=True,
        env=app_env(f"conformance-{case}", exp_id, {"OTEL_EXPORTER_OTLP_ENDPOINT": http}),
    )
    trace_id = f"tr-{out.stdout.split()[-1]}"

    def finalized():
        info = client.get_trace(trace_id).info
        return info if str(getattr(info.state, "value", info.state)) != "IN_PROGRESS" else None

    info = wait_for("the trace finalized without its root", finalized)
    assert str(getattr(info.state, "value", info.state)) == "ERROR", info.state
    assert info.tags.get("gateway.root_missing") == "true", info.tags
    assert info.client_request_id == f"{case}-req-1", info.client_request_id
    assert info.trace_metadata.get("mlflow.trace.session") == f"{case}-session", info.trace_metadata
    assert info.tags.get("mlflow.traceName") == "retrieve documents", info.tags
    return "finalized ERROR after root_wait, tagged gateway.root_missing, ids kept"


GENAI_EXPECTED = {
    "openinference": {"weather agent": "AGENT", "ChatCompletion": "LLM", "get_weather": "TOOL"},
    "genai": {"invoke_agent weather": "AGENT", "chat gpt-4o-mini": "CHAT_MODEL", "execute_tool get_weather": "TOOL"},
}


def run_genai(mlflow_url, http, convention):
    """A GenAI app instrumented with plain OTel in one convention: in MLflow every span has its
    type (searchable by span.type), inputs, outputs and an OK status; the trace its token usage,
    previews and trace inputs/outputs, as an SDK trace shows them."""
    mlflow.set_tracking_uri(mlflow_url)
    client = MlflowClient()
    exp_id = client.create_experiment(f"conformance-{convention}-{uuid.uuid4().hex[:8]}")
    case = f"{convention[:4]}-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [PY, "python/genai_app.py", convention, case], cwd=HERE, check=True, timeout=180,
        env=app_env(f"conformance-{case}", exp_id, {"OTEL_EXPORTER_OTLP_ENDPOINT": http}),
    )
    trace = trace_when(
        client, exp_id, f"{case}-req-1", "the trace with its three spans and token usage",
        lambda t: len(t.data.spans) == 3 and t.info.token_usage,
    )
    for span in trace.data.spans:
        kind = GENAI_EXPECTED[convention][span.name]
        assert span.span_type == kind, f"{span.name}: {span.span_type}"
        assert span.status.status_code.value == "OK", f"{span.name}: {span.status}"
        assert span.inputs is not None and span.outputs is not None, f"{span.name}: {span.inputs!r} {span.outputs!r}"
        found = client.search_traces(locations=[exp_id], filter_string=f"span.type = '{kind}'")
        assert [t.info.trace_id for t in found] == [trace.info.trace_id], f"span.type = '{kind}'"
    usage = trace.info.token_usage
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (20, 9, 29), usage
    md = trace.info.trace_metadata
    assert "weather in Paris" in md.get("mlflow.traceInputs", ""), md
    assert "sunny" in md.get("mlflow.traceOutputs", ""), md
    assert "weather in Paris" in (trace.info.request_preview or ""), trace.info.request_preview
    assert md.get("mlflow.trace.session") == f"{case}-session", md
    types = ", ".join(sorted(set(GENAI_EXPECTED[convention].values())))
    return f"span types ({types}), inputs, outputs, token usage 20/9/29, previews"
