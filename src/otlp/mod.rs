//! The OTLP trace codec: requests read and rewritten on the protobuf wire, without decoding every
//! span, and OTLP/JSON transcoded onto that wire so both encodings take one path.
//!
//! The gateway forwards spans as they came: only root spans (TraceInfo facts, enrichment) and
//! spans the gateway must change are decoded and re-encoded. Every other span is checked in
//! place (ids, times, a full structural walk with UTF-8 checks, so anything prost or MLflow's
//! decoder would refuse is found here) and copied byte for byte into the spooled request. A
//! decode of the whole request allocated for every field of every span and was the largest
//! share of the gateway's CPU (BENCHMARKS.md, "Decisions").
//!
//! Layers, bottom up: `wire` (fields), `schema` (what OTLP messages hold; the check and the
//! UTF-8 repair), `span` and `request` (views), `encode`, and `json` beside them.

pub mod encode;
pub mod json;
pub mod request;
pub mod schema;
pub mod span;
pub mod wire;

pub use encode::{SpanAt, encode_request, encode_where};
pub use request::{ParsedRequest, Rejected, ResourceSpansView, ScopeSpansView, parse_request};
pub use schema::Fault;
pub use span::{AttributeAt, SpanView};
pub use wire::WireError;

#[cfg(test)]
mod edit_tests;
#[cfg(test)]
mod tests;
