"""An agent turn instrumented with plain OpenTelemetry, in one of two GenAI conventions, as
instrumentation libraries write them:

- `openinference`: `openinference.span.kind`, `input.value` / `output.value`,
  `llm.input_messages.*` / `llm.output_messages.*`, `llm.token_count.*`, `llm.model_name`;
- `genai`: the OpenTelemetry GenAI semantic conventions, `gen_ai.operation.name`,
  `gen_ai.input.messages` / `gen_ai.output.messages`, `gen_ai.usage.*`, `gen_ai.tool.*`.

An agent span holds an LLM call and a tool call. Statuses are left unset, as instrumentations
leave them. Usage: genai_app.py <openinference|genai> <case-id>
"""

import json
import sys
import time

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

QUESTION = "What is the weather in Paris?"
ANSWER = "It is sunny in Paris."


def openinference(tracer, case):
    with tracer.start_as_current_span("weather agent") as agent:
        agent.set_attributes({
            "openinference.span.kind": "AGENT",
            "input.value": QUESTION,
            "client_request_id": f"{case}-req-1",
            "session.id": f"{case}-session",
        })
        with tracer.start_as_current_span("ChatCompletion") as llm:
            llm.set_attributes({
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-4o-mini",
                "llm.provider": "openai",
                "input.value": json.dumps({"messages": [{"role": "user", "content": QUESTION}]}),
                "input.mime_type": "application/json",
                "output.value": json.dumps({"choices": [{"message": {"role": "assistant", "content": ANSWER}}]}),
                "output.mime_type": "application/json",
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": QUESTION,
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.content": ANSWER,
                "llm.token_count.prompt": 20,
                "llm.token_count.completion": 9,
                "llm.token_count.total": 29,
            })
            time.sleep(0.01)
        with tracer.start_as_current_span("get_weather") as tool:
            tool.set_attributes({
                "openinference.span.kind": "TOOL",
                "tool.name": "get_weather",
                "input.value": json.dumps({"city": "Paris"}),
                "output.value": json.dumps({"forecast": "sunny"}),
            })
        agent.set_attribute("output.value", ANSWER)


def genai(tracer, case):
    with tracer.start_as_current_span("invoke_agent weather") as agent:
        agent.set_attributes({
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "weather",
            "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": QUESTION}]}]),
            "client_request_id": f"{case}-req-1",
            "gen_ai.conversation.id": f"{case}-session",
        })
        with tracer.start_as_current_span("chat gpt-4o-mini") as llm:
            llm.set_attributes({
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": QUESTION}]}]),
                "gen_ai.output.messages": json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": ANSWER}], "finish_reason": "stop"}]
                ),
                "gen_ai.usage.input_tokens": 20,
                "gen_ai.usage.output_tokens": 9,
            })
            time.sleep(0.01)
        with tracer.start_as_current_span("execute_tool get_weather") as tool:
            tool.set_attributes({
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "get_weather",
                "gen_ai.tool.call.arguments": json.dumps({"city": "Paris"}),
                "gen_ai.tool.call.result": json.dumps({"forecast": "sunny"}),
            })
        agent.set_attribute(
            "gen_ai.output.messages",
            json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": ANSWER}]}]),
        )


def main() -> None:
    convention, case = sys.argv[1], sys.argv[2]
    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracer = provider.get_tracer("conformance.genai")
    {"openinference": openinference, "genai": genai}[convention](tracer, case)
    if not provider.force_flush(30_000):
        raise SystemExit("flush failed")
    provider.shutdown()


if __name__ == "__main__":
    main()
