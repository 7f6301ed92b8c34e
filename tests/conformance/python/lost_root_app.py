"""A request whose root span is lost: the service's spans hang under a remote parent that never
reaches the gateway (a caller that does not export, or whose export failed). One step fails.

Usage: lost_root_app.py <case-id>
"""

import random
import sys
import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags


def main() -> None:
    case = sys.argv[1]
    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracer = provider.get_tracer("conformance.lost_root")
    lost = SpanContext(
        trace_id=random.getrandbits(128),
        span_id=random.getrandbits(64),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    parent = trace.set_span_in_context(NonRecordingSpan(lost))
    with tracer.start_as_current_span("retrieve documents", context=parent) as step:
        step.set_attribute("client_request_id", f"{case}-req-1")
        step.set_attribute("session.id", f"{case}-session")
        time.sleep(0.01)
    with tracer.start_as_current_span("call tool", context=parent) as failed:
        failed.set_status(Status(StatusCode.ERROR, "tool timed out"))
        time.sleep(0.01)
    print(format(lost.trace_id, "032x"))
    if not provider.force_flush(30_000):
        raise SystemExit("flush failed")
    provider.shutdown()


if __name__ == "__main__":
    main()
