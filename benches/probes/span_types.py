"""The MLflow span type MLflow 3.17.2's own OTLP translators give a span's attributes, for a set
of attribute sets: the golden cases `src/map/span_types/cases.json` that the gateway's
derivation (`map::span_types`) is tested against.

Usage: .venv/bin/python benches/probes/span_types.py > src/map/span_types/cases.json
(re-run when the pinned MLflow changes; no server needed).
"""

import json

from mlflow.tracing.otel.translation import sanitize_attributes, translate_span_type_from_otel
from mlflow.tracing.utils import dump_span_attribute_value

KINDS = {
    "openinference.span.kind": ["TOOL", "CHAIN", "LLM", "RETRIEVER", "EMBEDDING", "AGENT",
                                "RERANKER", "UNKNOWN", "GUARDRAIL", "EVALUATOR", "llm", "OTHER"],
    "gen_ai.operation.name": ["chat", "create_agent", "embeddings", "execute_tool",
                              "generate_content", "invoke_agent", "text_completion", "response",
                              "CHAT", "llm_call", "tool_call", "agent_call", "other"],
    "span.type": ["claude_code.interaction", "claude_code.llm_request", "claude_code.tool",
                  "interaction", "llm_request", "tool", "agent", "llm", "memory",
                  "claude_code.other", "other"],
    "traceloop.span.kind": ["workflow", "task", "agent", "tool", "unknown", "other"],
    "ai.operationId": ["ai.generateText", "ai.generateText.doGenerate", "ai.toolCall",
                       "ai.streamText", "ai.streamText.doStream", "ai.generateObject",
                       "ai.generateObject.doGenerate", "ai.streamObject",
                       "ai.streamObject.doStream", "ai.embed", "ai.embed.doEmbed",
                       "ai.embedMany", "ai.other"],
    "entity.type": ["agent", "llm", "tool", "memory", "other"],
    "lmnr.span.type": ["LLM", "TOOL", "DEFAULT", "PIPELINE", "EXECUTOR", "EVALUATOR",
                       "HUMAN_EVALUATOR", "EVALUATION", "CACHED", "OTHER"],
    "langfuse.observation.type": ["generation", "embedding", "tool", "retriever", "agent",
                                  "chain", "evaluator", "guardrail", "span", "other"],
}

cases = [{}]
for key, values in KINDS.items():
    cases += [{key: v} for v in values]
# Combinations whose order matters.
cases += [
    {"gen_ai.agent.name": "gemini-cli", "gen_ai.operation.name": "llm_call"},
    {"gen_ai.agent.name": "gemini-cli", "gen_ai.operation.name": "chat"},
    {"gen_ai.agent.name": "gemini-cli", "gen_ai.operation.name": "user_prompt"},
    {"gen_ai.agent.name": "other", "gen_ai.operation.name": "tool_call"},
    {"openinference.span.kind": "TOOL", "gen_ai.operation.name": "chat"},
    {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini"},
    {"gen_ai.operation.name": "other", "gen_ai.request.model": "gpt-4o-mini"},
    {"gen_ai.request.model": "gpt-4o-mini"},
    {"span.type": "other", "entity.type": "agent"},
    {"span.type": "tool", "entity.type": "agent"},
    {"traceloop.span.kind": "other", "langfuse.observation.type": "tool"},
    {"lk.retry_count": "1"},
    {"lk.function_tool.name": "x"},
    {"lk.agent_name": "a"},
    {"lk.instructions": "x"},
    {"lk.generation_id": "x"},
    {"lk.tts.voice": "x"},
    {"lk.input_text": "x"},
    {"lk.user_transcript": "x"},
    {"lk.room_name": "x"},
    {"http.route": "/chat", "service.name": "x"},
    # MLflow's SDK JSON-encodes every value; ingestion strips that layer.
    {"openinference.span.kind": '"LLM"'},
    {"gen_ai.operation.name": '"chat"'},
    {"gen_ai.agent.name": '"gemini-cli"', "gen_ai.operation.name": '"tool_call"'},
    {"span.type": '"claude_code.tool"'},
    {"traceloop.span.kind": '"task"'},
    # Values that are not strings never name a kind.
    {"openinference.span.kind": 3},
    {"gen_ai.operation.name": True},
    {"gen_ai.request.model": 1},
    {"traceloop.span.kind": 1.5},
    # Later translators apply when an earlier one knows the key but not its value.
    {"gen_ai.operation.name": "CHAT"},
    {"gen_ai.operation.name": "Execute_Tool"},
    {"openinference.span.kind": "OTHER", "traceloop.span.kind": "tool"},
    {"lmnr.span.type": "OTHER", "langfuse.observation.type": "span"},
    # LiveKit's key scan goes in attribute order.
    {"lk.tts.voice": "x", "lk.agent_name": "a"},
    {"lk.agent_name": "a", "lk.tts.voice": "x"},
    {"lk.function_tool.id": "x", "lk.retry_count": "1"},
]

out = []
for attrs in cases:
    # As MLflow's store sees them: `Span.from_otel_proto` dumps every value as JSON, and
    # `translate_span_when_storing` sanitizes them before translating.
    dumped = {k: dump_span_attribute_value(v) for k, v in attrs.items()}
    kind = translate_span_type_from_otel(sanitize_attributes(dumped))
    # Pairs, not an object: the order of keys matters to LiveKit's rules.
    out.append({"attributes": list(attrs.items()), "type": kind})
print(json.dumps(out, indent=1))
