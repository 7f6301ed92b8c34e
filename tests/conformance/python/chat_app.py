"""The conformance chat service, instrumented by hand with the OpenTelemetry Python SDK.

Plays a three-turn conversation. Each turn is a server span "POST /chat" carrying the request's
X-Request-ID / X-Session-ID / X-User-ID the way OTel HTTP instrumentations record captured
headers (`http.request.header.<name>` as a string array), with an LLM child span carrying
`gen_ai.*` attributes (operation, model, input and output messages, token usage); the root
carries the turn's question and answer as OpenInference's `input.value` / `output.value`, as
an instrumented service that shows its inputs does. Resource attributes come from OTEL_SERVICE_NAME and
OTEL_RESOURCE_ATTRIBUTES; the exporter endpoint from the standard OTEL_EXPORTER_OTLP_* variables.

Usage: chat_app.py <grpc|http> <case-id>
"""

import json
import sys
import time

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def exporter(kind: str):
    if kind == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif kind == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        raise SystemExit(f"unknown exporter {kind}")
    return OTLPSpanExporter()


def main() -> None:
    kind, case = sys.argv[1], sys.argv[2]
    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(exporter(kind)))
    tracer = provider.get_tracer("conformance.chat")
    for turn in range(1, 4):
        headers = {
            "x-request-id": f"{case}-req-{turn}",
            "x-session-id": f"{case}-session",
            "x-user-id": f"{case}-user",
        }
        attributes = {f"http.request.header.{k}": (v,) for k, v in headers.items()}
        attributes.update({"http.request.method": "POST", "url.path": "/chat"})
        # A custom trace tag, as MLflow's own attribute convention spells it.
        attributes["mlflow.traceTag.team"] = "conformance"
        question, answer = f"turn {turn}", f"Processed message: 'turn {turn}'"
        attributes["input.value"] = question
        with tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER, attributes=attributes) as root:
            with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT) as llm:
                llm.set_attribute("gen_ai.operation.name", "chat")
                llm.set_attribute("gen_ai.system", "openai")
                llm.set_attribute("gen_ai.request.model", "gpt-4o-mini")
                llm.set_attribute("gen_ai.input.messages", json.dumps([{"role": "user", "content": question}]))
                llm.set_attribute("gen_ai.output.messages", json.dumps([{"role": "assistant", "content": answer}]))
                llm.set_attribute("gen_ai.usage.input_tokens", 42 + turn)
                llm.set_attribute("gen_ai.usage.output_tokens", 7 + turn)
                time.sleep(0.01)
            root.set_attribute("output.value", answer)
            root.set_status(Status(StatusCode.OK))
    if not provider.force_flush(30_000):
        raise SystemExit("flush failed")
    provider.shutdown()


if __name__ == "__main__":
    main()
