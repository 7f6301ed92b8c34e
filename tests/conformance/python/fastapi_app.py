"""The conformance chat service as a FastAPI app, auto-instrumented by
opentelemetry-instrumentation-fastapi with header capture
(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST), so the request, session and user ids
reach the gateway only as captured headers. Optionally calls a downstream service with W3C
traceparent propagation (a distributed trace).

Usage: fastapi_app.py <case-id> [downstream-url]
"""

import socket
import sys
import threading
import time

import requests
import uvicorn
from fastapi import FastAPI, Request
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

case = sys.argv[1]
downstream = sys.argv[2] if len(sys.argv) > 2 else None

provider = TracerProvider(resource=Resource.create())
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("conformance.fastapi")

app = FastAPI()


@app.post("/chat")
async def chat(request: Request):
    body = await request.json()
    with tracer.start_as_current_span("chat gpt-4o-mini") as llm:
        llm.set_attribute("gen_ai.operation.name", "chat")
        llm.set_attribute("gen_ai.system", "openai")
        llm.set_attribute("gen_ai.request.model", "gpt-4o-mini")
        llm.set_attribute("gen_ai.usage.input_tokens", 40)
        llm.set_attribute("gen_ai.usage.output_tokens", 9)
        if downstream:
            carrier = {}
            propagate.inject(carrier)
            requests.post(downstream, json=body, headers=carrier, timeout=10).raise_for_status()
    return {"response": f"Processed message: '{body.get('message', '')}'"}


FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    for turn in range(1, 4):
        r = requests.post(
            f"http://127.0.0.1:{port}/chat",
            json={"message": f"turn {turn}"},
            headers={
                "X-Request-ID": f"{case}-req-{turn}",
                "X-Session-ID": f"{case}-session",
                "X-User-ID": f"{case}-user",
            },
            timeout=30,
        )
        r.raise_for_status()
    server.should_exit = True
    thread.join(10)
    if not provider.force_flush(30_000):
        raise SystemExit("flush failed")
    provider.shutdown()


if __name__ == "__main__":
    main()
