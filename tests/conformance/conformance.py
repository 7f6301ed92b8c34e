"""Polyglot conformance: real OpenTelemetry SDKs export a chat conversation through the gateway;
the result is checked the way MLflow users check it, with MLflow's own Python client.

Each case runs one app (Python SDK with the gRPC or HTTP exporter, a FastAPI app instrumented by
opentelemetry-instrumentation-fastapi with header capture, the JS SDK with the HTTP/protobuf,
HTTP/JSON or gRPC exporter), then posts feedback for the conversation's second request through
the gateway's feedback API, then verifies with `mlflow.search_traces` / `MlflowClient`.

The same apps also export to a second gateway set up as a shared tier (TLS on every listener,
every request a tenant's), configured only with the standard OTEL_EXPORTER_OTLP_CERTIFICATE and
OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<token>.

The fidelity cases (fidelity.py) compare a trace through the gateway with one MLflow's own SDK
writes, whole, on SQLite and (with --pg-*) PostgreSQL, and run MLflow's SDK over OTLP, dual
export, a trace whose root is lost, and OpenInference and GenAI-convention apps.

Usage: conformance.py --mlflow URL --otlp-grpc URL --otlp-http URL --api URL
                      [--tls-otlp-grpc URL --tls-otlp-http URL --tls-api URL --tls-ca FILE --tls-token T]
                      [--pg-mlflow URL --pg-otlp-http URL]
Prints a table of SDK x exporter x result and a closing "conformance: N passed, M failed" line.
"""

import argparse
import logging
import os
import subprocess
import sys
import time
import uuid

import mlflow
import requests
from mlflow import MlflowClient

import fidelity
from common import app_env, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
CAPTURE = "X-Request-ID,X-Session-ID,X-User-ID"
# Built by run.sh from tests/conformance/rust into the project's target directory.
RUST_APP = os.environ.get(
    "CONFORMANCE_RUST_APP", os.path.join(HERE, "..", "..", "target", "debug", "conformance-rust-app")
)


def cases(grpc: str, http: str):
    return [
        ("python", "grpc", [PY, "python/chat_app.py", "grpc"], {"OTEL_EXPORTER_OTLP_ENDPOINT": grpc}),
        ("python", "http/protobuf", [PY, "python/chat_app.py", "http"], {"OTEL_EXPORTER_OTLP_ENDPOINT": http}),
        (
            "python fastapi (auto)",
            "http/protobuf, captured headers",
            [PY, "python/fastapi_app.py"],
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": http,
                "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": CAPTURE,
            },
        ),
        ("node", "http/protobuf", ["node", "node/app.js", "proto"], {"OTEL_EXPORTER_OTLP_ENDPOINT": http}),
        ("node", "http/json", ["node", "node/app.js", "json"], {"OTEL_EXPORTER_OTLP_ENDPOINT": http}),
        ("node", "grpc", ["node", "node/app.js", "grpc"], {"OTEL_EXPORTER_OTLP_ENDPOINT": grpc}),
        ("rust", "grpc (tonic)", [RUST_APP, "grpc"], {"OTEL_EXPORTER_OTLP_ENDPOINT": grpc}),
        ("rust", "http/protobuf", [RUST_APP, "http"], {"OTEL_EXPORTER_OTLP_ENDPOINT": http}),
    ]


def tls_cases(grpc: str, http: str, ca: str):
    def env(endpoint):
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_CERTIFICATE": ca}

    return [
        ("python", "grpc, TLS + token", [PY, "python/chat_app.py", "grpc"], env(grpc)),
        ("python", "http/protobuf, TLS + token", [PY, "python/chat_app.py", "http"], env(http)),
        ("node", "http/protobuf, TLS + token", ["node", "node/app.js", "proto"], env(http)),
        ("node", "grpc, TLS + token", ["node", "node/app.js", "grpc"], env(grpc)),
    ]


def run_case(sdk, exporter, argv, env_extra, exp_id, api, tls=None):
    """`tls`: (CA file, token) for the shared-tier gateway."""
    case = f"{sdk.split()[0][:2]}{exporter.split('/')[0][:4]}-{uuid.uuid4().hex[:8]}"
    service = f"conformance-{case}"
    env = app_env(service, exp_id, env_extra, token=tls[1] if tls else None)
    if tls:
        # requests lets these override a session's own CA file, so Python's HTTP exporter would
        # ignore OTEL_EXPORTER_OTLP_CERTIFICATE where they are set (README, "Tenants and TLS").
        for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            env.pop(var, None)
    subprocess.run(argv + [case], cwd=HERE, env=env, check=True, timeout=180)
    verify(case, service, exp_id, api, tls)
    return "3 traces, session/user/request-id filters, metadata, feedback" + (" over TLS" if tls else "")


def run_distributed(http, exp_id, api):
    """Python (FastAPI) calls Node with W3C traceparent: one MLflow trace holds both services'
    spans, with the root's metadata."""
    case = f"dist-{uuid.uuid4().hex[:8]}"
    service = f"conformance-{case}"
    downstream = subprocess.Popen(
        ["node", "node/service.js"],
        cwd=HERE,
        env=app_env(f"{service}-downstream", exp_id, {"OTEL_EXPORTER_OTLP_ENDPOINT": http}),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = downstream.stdout.readline().split()
        assert line[:1] == ["listening"], f"downstream did not start: {line}"
        url = f"http://127.0.0.1:{line[1]}/enrich"
        env = app_env(
            service,
            exp_id,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": http, "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": CAPTURE},
        )
        subprocess.run([PY, "python/fastapi_app.py", case, url], cwd=HERE, env=env, check=True, timeout=180)
    finally:
        downstream.terminate()
        downstream.wait(30)
    traces = verify(case, service, exp_id, api)
    for t in traces:
        def joined():
            spans = mlflow.get_trace(t.info.trace_id).data.spans
            names = {s.name for s in spans}
            return spans if {"POST /enrich", "retrieve documents", "chat gpt-4o-mini"} <= names else None

        spans = wait_for("the downstream Node spans in the caller's trace", joined)
        assert len({s.trace_id for s in spans}) == 1
    return "3 traces, each with both services' spans; root metadata; feedback"


def verify(case, service, exp_id, api, tls=None):
    user, session = f"{case}-user", f"{case}-session"
    second = f"{case}-req-2"
    headers = {"X-User-ID": user}
    if tls:
        headers["Authorization"] = f"Bearer {tls[1]}"
    r = requests.post(
        f"{api}/v1/feedback",
        params={"client_request_id": second},
        headers=headers,
        json={"name": "response_is_correct", "value": True, "rationale": "conformance"},
        timeout=30,
        verify=tls[0] if tls else True,
    )
    assert r.status_code in (201, 202), f"feedback: {r.status_code} {r.text}"

    client = MlflowClient()
    by_user = wait_for(
        "3 traces by tags.`mlflow.trace.user` with their client request ids",
        lambda: (lambda t: t if len(t) == 3 and all(x.info.client_request_id for x in t) else None)(
            mlflow.search_traces(
                locations=[exp_id],
                filter_string=f"tags.`mlflow.trace.user` = '{user}'",
                return_type="list",
            )
        ),
    )
    by_session = mlflow.search_traces(
        locations=[exp_id], filter_string=f"tags.`mlflow.trace.session` = '{session}'", return_type="list"
    )
    assert len(by_session) == 3, f"session filter found {len(by_session)}"
    by_meta = mlflow.search_traces(
        locations=[exp_id], filter_string=f"metadata.`mlflow.trace.user` = '{user}'", return_type="list"
    )
    assert len(by_meta) == 3, f"metadata user filter found {len(by_meta)}"
    found = client.search_traces(locations=[exp_id], filter_string=f"attributes.client_request_id = '{second}'")
    assert len(found) == 1, f"client_request_id filter found {len(found)}"
    ids = sorted(t.info.client_request_id for t in by_user)
    assert ids == [f"{case}-req-{n}" for n in (1, 2, 3)], ids
    for t in by_user:
        info = t.info
        md = info.trace_metadata
        assert info.state.value == "OK" if hasattr(info.state, "value") else str(info.state) == "OK", info.state
        assert md.get("mlflow.trace.session") == session, md
        assert md.get("mlflow.trace.user") == user, md
        assert md.get("environment") == "conformance", md
        assert md.get("mlflow.source.type") == "conformance", md
        assert md.get("app_version") == "2.0.0", md
        assert md.get("mlflow.source.name") == service, md
        full = mlflow.get_trace(info.trace_id)
        assert len(full.data.spans) >= 2, f"{len(full.data.spans)} spans"
        assert any(s.attributes.get("gen_ai.request.model") == "gpt-4o-mini" for s in full.data.spans)

    def assessed():
        a = mlflow.get_trace(found[0].info.trace_id).info.assessments
        return [x for x in a if x.name == "response_is_correct"]

    got = wait_for("the feedback as an assessment", assessed)
    assert len(got) == 1 and got[0].value is True and got[0].source.source_id == user, got
    return by_user


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlflow", required=True)
    ap.add_argument("--otlp-grpc", required=True)
    ap.add_argument("--otlp-http", required=True)
    ap.add_argument("--api", required=True)
    ap.add_argument("--tls-otlp-grpc")
    ap.add_argument("--tls-otlp-http")
    ap.add_argument("--tls-api")
    ap.add_argument("--tls-ca")
    ap.add_argument("--tls-token")
    ap.add_argument("--pg-mlflow")
    ap.add_argument("--pg-otlp-http")
    args = ap.parse_args()
    # Keep MLflow's informational logs (its exit-time flush notice) out of the summary.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(args.mlflow)
    exp_id = MlflowClient().create_experiment(f"conformance-{uuid.uuid4().hex[:8]}")

    rows, passed, failed = [], 0, 0
    runs = [
        (sdk, exporter, lambda a=argv, e=env, s=sdk, x=exporter: run_case(s, x, a, e, exp_id, args.api))
        for sdk, exporter, argv, env in cases(args.otlp_grpc, args.otlp_http)
    ]
    if args.tls_api:
        tls = (args.tls_ca, args.tls_token)
        runs += [
            (sdk, exporter, lambda a=argv, e=env, s=sdk, x=exporter: run_case(s, x, a, e, exp_id, args.tls_api, tls))
            for sdk, exporter, argv, env in tls_cases(args.tls_otlp_grpc, args.tls_otlp_http, args.tls_ca)
        ]
    m, http, api = args.mlflow, args.otlp_http, args.api
    runs.append(("mlflow sdk vs python otel", "direct vs http/protobuf, SQLite",
                 lambda: fidelity.run_differential(m, http, "SQLite")))
    if args.pg_mlflow:
        runs.append(("mlflow sdk vs python otel", "direct vs http/protobuf, PostgreSQL",
                     lambda: fidelity.run_differential(args.pg_mlflow, args.pg_otlp_http, "PostgreSQL")))
    runs += [
        ("mlflow sdk (otel-sdk 1.42)", "over OTLP http/protobuf", lambda: fidelity.run_sdk_over_otlp(m, http, api)),
        ("mlflow sdk (otel-sdk 1.42)", "dual export", lambda: fidelity.run_dual_export(m, http, api)),
        ("python otel", "root span lost", lambda: fidelity.run_lost_root(m, http, api)),
        ("python otel, OpenInference", "http/protobuf", lambda: fidelity.run_genai(m, http, "openinference")),
        ("python otel, GenAI semconv", "http/protobuf", lambda: fidelity.run_genai(m, http, "genai")),
    ]
    # The fidelity cases set their own tracking URI; the others use this one.
    runs = [(sdk, exporter, lambda r=run: (mlflow.set_tracking_uri(m), r())[1]) for sdk, exporter, run in runs]
    runs.append((
        "python fastapi -> node",
        "http/protobuf, W3C traceparent",
        lambda: run_distributed(args.otlp_http, exp_id, args.api),
    ))
    for sdk, exporter, run in runs:
        try:
            detail = run()
            rows.append((sdk, exporter, "PASS", detail))
            passed += 1
        except Exception as e:  # report every case, then fail the run
            rows.append((sdk, exporter, "FAIL", str(e).splitlines()[0][:160] if str(e) else repr(e)))
            failed += 1

    widths = [max(len(r[i]) for r in rows + [("SDK", "exporter", "result", "checked")]) for i in range(4)]
    line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths))
    print()
    print(line(("SDK", "exporter", "result", "checked")))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print()
    print(f"conformance: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
