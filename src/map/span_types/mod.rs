//! Every span's MLflow span type (`mlflow.spanType`), written at ingest.
//!
//! MLflow derives a type for OTLP spans from their semantic-convention attributes only into the
//! stored content; its `spans.type` column keeps the raw attribute, empty for them, so span
//! filters and metrics miss them. The gateway writes the type MLflow 3.17.2's translators
//! (`mlflow/tracing/otel/translation/`) give, tried in MLflow's order, and `UNKNOWN` when none
//! applies, as MLflow's SDK does for an untyped span. Golden cases made by MLflow's own code
//! are in `cases.json` (`benches/probes/span_types.py`).

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

use super::attrs::as_mlflow_reads;

/// The attribute MLflow reads a span's type from.
pub const SPAN_TYPE_ATTR: &str = "mlflow.spanType";
/// MLflow's type for a span nothing names.
pub const UNKNOWN: &str = "UNKNOWN";
/// The severity MLflow's UI filters spans by (`SpanLogLevel`).
pub const LOG_LEVEL_ATTR: &str = "mlflow.spanLogLevel";
/// MLflow's levels: DEBUG, INFO, ERROR.
const DEBUG: i64 = 10;
const INFO: i64 = 20;
const ERROR: i64 = 40;
/// Types whose spans MLflow's SDK ends at INFO, the rest at DEBUG
/// (`mlflow/tracing/utils/default_log_level.py`).
const INFO_TYPES: [&str; 6] = [
    "LLM",
    "CHAT_MODEL",
    "TOOL",
    "RETRIEVER",
    "AGENT",
    "EMBEDDING",
];

const OPENINFERENCE: &str = "openinference.span.kind";
const GENAI_OPERATION: &str = "gen_ai.operation.name";
const GENAI_AGENT_NAME: &str = "gen_ai.agent.name";
const GENAI_REQUEST_MODEL: &str = "gen_ai.request.model";
const SPAN_TYPE_KEY: &str = "span.type";
const ENTITY_TYPE: &str = "entity.type";
const TRACELOOP: &str = "traceloop.span.kind";
const VERCEL: &str = "ai.operationId";
const LAMINAR: &str = "lmnr.span.type";
const LANGFUSE: &str = "langfuse.observation.type";
const LIVEKIT_PREFIX: &str = "lk.";

/// Keys with one value read: MLflow's translators read these, in this order.
const KEYS: [&str; 12] = [
    SPAN_TYPE_ATTR,
    LOG_LEVEL_ATTR,
    OPENINFERENCE,
    GENAI_OPERATION,
    GENAI_AGENT_NAME,
    GENAI_REQUEST_MODEL,
    SPAN_TYPE_KEY,
    ENTITY_TYPE,
    TRACELOOP,
    VERCEL,
    LAMINAR,
    LANGFUSE,
];

/// Whether the derivation reads an attribute with this key.
pub fn reads(key: &[u8]) -> bool {
    // Asked for every attribute of every span: most keys differ from all of these in length or
    // first byte, so those are compared first.
    key.starts_with(LIVEKIT_PREFIX.as_bytes())
        || KEYS
            .iter()
            .any(|k| k.len() == key.len() && k.as_bytes()[0] == key[0] && k.as_bytes() == key)
}

/// What becomes of a span's `mlflow.spanType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanTypeChange {
    /// The span holds the right value already.
    Keep,
    /// The span has none: add this one.
    Add(&'static str),
    /// The span holds one that must change (`UNKNOWN` where a translator names the type, or a
    /// JSON-quoted value, which MLflow would store in `spans.type` with its quotes).
    Replace(Cow<'static, str>),
}

/// One attribute's value as a translator compares it: text, or present but not text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen<'a> {
    Text(Cow<'a, str>),
    Other,
}

impl<'a> Seen<'a> {
    fn text<'b>(seen: &'b Option<Seen<'a>>) -> Option<&'b str> {
        match seen {
            Some(Seen::Text(t)) => Some(t),
            _ => None,
        }
    }
}

/// The attributes MLflow's translators read, as they read them (the last of repeated keys).
#[derive(Debug, Default)]
struct Kinds<'a> {
    /// `mlflow.spanType` as received, and as MLflow reads it.
    current: Option<(&'a str, Seen<'a>)>,
    openinference: Option<Seen<'a>>,
    operation: Option<Seen<'a>>,
    agent_name: Option<Seen<'a>>,
    request_model: bool,
    span_type: Option<Seen<'a>>,
    entity_type: Option<Seen<'a>>,
    traceloop: Option<Seen<'a>>,
    vercel: Option<Seen<'a>>,
    laminar: Option<Seen<'a>>,
    langfuse: Option<Seen<'a>>,
    /// The type the first LiveKit key names (MLflow scans keys in their order).
    livekit: Option<&'static str>,
    log_level: bool,
}

fn seen(kv: &KeyValue) -> Seen<'_> {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => match as_mlflow_reads(s) {
            Some(text) => Seen::Text(text),
            None => Seen::Other,
        },
        _ => Seen::Other,
    }
}

impl<'a> Kinds<'a> {
    fn read(attributes: &'a [KeyValue]) -> Self {
        let mut kinds = Kinds::default();
        for kv in attributes {
            let key = kv.key.as_str();
            if let Some(rest) = key.strip_prefix(LIVEKIT_PREFIX) {
                if kinds.livekit.is_none() {
                    kinds.livekit = livekit_key(rest);
                }
                continue;
            }
            let slot = match key {
                SPAN_TYPE_ATTR => {
                    let raw = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(s)) => s.as_str(),
                        _ => "",
                    };
                    kinds.current = Some((raw, seen(kv)));
                    continue;
                }
                GENAI_REQUEST_MODEL => {
                    kinds.request_model = true;
                    continue;
                }
                LOG_LEVEL_ATTR => {
                    kinds.log_level = true;
                    continue;
                }
                OPENINFERENCE => &mut kinds.openinference,
                GENAI_OPERATION => &mut kinds.operation,
                GENAI_AGENT_NAME => &mut kinds.agent_name,
                SPAN_TYPE_KEY => &mut kinds.span_type,
                ENTITY_TYPE => &mut kinds.entity_type,
                TRACELOOP => &mut kinds.traceloop,
                VERCEL => &mut kinds.vercel,
                LAMINAR => &mut kinds.laminar,
                LANGFUSE => &mut kinds.langfuse,
                _ => continue,
            };
            *slot = Some(seen(kv));
        }
        kinds
    }

    /// The type MLflow's translators give, in MLflow's order; the first that names one wins.
    fn derive(&self) -> Option<&'static str> {
        let text = Seen::text;
        text(&self.openinference)
            .and_then(openinference)
            .or_else(|| {
                (text(&self.agent_name) == Some("gemini-cli"))
                    .then(|| text(&self.operation).and_then(gemini_cli))
                    .flatten()
            })
            .or_else(|| text(&self.span_type).and_then(claude_code))
            .or_else(|| text(&self.operation).and_then(genai))
            .or_else(|| text(&self.traceloop).and_then(traceloop))
            .or_else(|| text(&self.vercel).and_then(vercel_ai))
            .or_else(|| text(&self.span_type).and_then(voltagent))
            .or_else(|| text(&self.entity_type).and_then(voltagent))
            .or_else(|| self.livekit())
            .or_else(|| text(&self.laminar).and_then(laminar))
            .or_else(|| text(&self.langfuse).and_then(langfuse))
    }

    fn livekit(&self) -> Option<&'static str> {
        if self.request_model {
            return Some("LLM");
        }
        Seen::text(&self.operation)
            .and_then(|op| genai(&op.to_lowercase()))
            .or(self.livekit)
    }
}

/// What a span's MLflow attributes become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub span_type: SpanTypeChange,
    /// `mlflow.spanLogLevel` to add, where the span has none: as MLflow's SDK ends a span,
    /// ERROR for one that recorded an exception, else by its type.
    pub log_level: Option<i64>,
}

/// Decides a span's `mlflow.spanType` and `mlflow.spanLogLevel` from its attributes (those
/// `reads` picks suffice) and whether it recorded an exception.
pub fn settle(attributes: &[KeyValue], has_exception_event: bool) -> Settled {
    let kinds = Kinds::read(attributes);
    let span_type = settle_type(&kinds);
    let log_level = (!kinds.log_level).then(|| {
        let kind = match (&span_type, &kinds.current) {
            (SpanTypeChange::Add(kind), _) => Some(*kind),
            (SpanTypeChange::Replace(kind), _) => Some(kind.as_ref()),
            (SpanTypeChange::Keep, Some((_, Seen::Text(kind)))) => Some(kind.as_ref()),
            (SpanTypeChange::Keep, _) => None,
        };
        match kind {
            _ if has_exception_event => ERROR,
            Some(kind) if INFO_TYPES.contains(&kind) => INFO,
            _ => DEBUG,
        }
    });
    Settled {
        span_type,
        log_level,
    }
}

fn settle_type(kinds: &Kinds) -> SpanTypeChange {
    match &kinds.current {
        None => SpanTypeChange::Add(kinds.derive().unwrap_or(UNKNOWN)),
        // MLflow lets a translator replace only an UNKNOWN type.
        Some((raw, Seen::Text(t))) if t == UNKNOWN => match kinds.derive() {
            Some(derived) if derived != UNKNOWN => SpanTypeChange::Replace(Cow::Borrowed(derived)),
            _ if *raw != UNKNOWN => SpanTypeChange::Replace(Cow::Borrowed(UNKNOWN)),
            _ => SpanTypeChange::Keep,
        },
        Some((raw, Seen::Text(t))) if raw != t => {
            SpanTypeChange::Replace(Cow::Owned(t.clone().into_owned()))
        }
        Some(_) => SpanTypeChange::Keep,
    }
}

fn openinference(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "TOOL" => "TOOL",
        "CHAIN" => "CHAIN",
        "LLM" => "LLM",
        "RETRIEVER" => "RETRIEVER",
        "EMBEDDING" => "EMBEDDING",
        "AGENT" => "AGENT",
        "RERANKER" => "RERANKER",
        "UNKNOWN" => UNKNOWN,
        "GUARDRAIL" => "GUARDRAIL",
        "EVALUATOR" => "EVALUATOR",
        _ => return None,
    })
}

fn gemini_cli(operation: &str) -> Option<&'static str> {
    Some(match operation {
        "llm_call" => "LLM",
        "tool_call" => "TOOL",
        "agent_call" => "AGENT",
        _ => return None,
    })
}

fn claude_code(span_type: &str) -> Option<&'static str> {
    // Some Claude Code versions write the bare name.
    let bare = span_type.strip_prefix("claude_code.").unwrap_or(span_type);
    Some(match bare {
        "interaction" => "AGENT",
        "llm_request" => "LLM",
        "tool" => "TOOL",
        _ => return None,
    })
}

fn genai(operation: &str) -> Option<&'static str> {
    Some(match operation {
        "chat" => "CHAT_MODEL",
        "create_agent" | "invoke_agent" => "AGENT",
        "embeddings" => "EMBEDDING",
        "execute_tool" => "TOOL",
        "generate_content" | "text_completion" | "response" => "LLM",
        _ => return None,
    })
}

fn traceloop(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "workflow" => "WORKFLOW",
        "task" => "TASK",
        "agent" => "AGENT",
        "tool" => "TOOL",
        "unknown" => UNKNOWN,
        _ => return None,
    })
}

fn vercel_ai(operation: &str) -> Option<&'static str> {
    Some(match operation {
        "ai.generateText"
        | "ai.generateText.doGenerate"
        | "ai.streamText"
        | "ai.streamText.doStream"
        | "ai.generateObject"
        | "ai.generateObject.doGenerate"
        | "ai.streamObject"
        | "ai.streamObject.doStream" => "LLM",
        "ai.toolCall" => "TOOL",
        "ai.embed" | "ai.embed.doEmbed" | "ai.embedMany" => "EMBEDDING",
        _ => return None,
    })
}

fn voltagent(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "agent" => "AGENT",
        "llm" => "LLM",
        "tool" => "TOOL",
        "memory" => "MEMORY",
        _ => return None,
    })
}

/// LiveKit's rule for one `lk.` key (without the prefix).
fn livekit_key(rest: &str) -> Option<&'static str> {
    Some(match rest {
        "retry_count" => "LLM",
        _ if rest.starts_with("function_tool") => "TOOL",
        "agent_name" | "instructions" | "generation_id" => "AGENT",
        _ if rest.starts_with("tts") => UNKNOWN,
        "input_text" | "user_transcript" | "transcript_confidence" | "transcription_delay" => {
            UNKNOWN
        }
        _ => return None,
    })
}

fn laminar(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "LLM" | "CACHED" => "LLM",
        "TOOL" => "TOOL",
        "DEFAULT" | "PIPELINE" => "CHAIN",
        "EXECUTOR" => "AGENT",
        "EVALUATOR" | "HUMAN_EVALUATOR" | "EVALUATION" => "EVALUATOR",
        _ => return None,
    })
}

fn langfuse(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "generation" => "LLM",
        "embedding" => "EMBEDDING",
        "tool" => "TOOL",
        "retriever" => "RETRIEVER",
        "agent" => "AGENT",
        "chain" => "CHAIN",
        "evaluator" => "EVALUATOR",
        "guardrail" => "GUARDRAIL",
        "span" => UNKNOWN,
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
