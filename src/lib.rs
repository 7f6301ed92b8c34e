//! mlflow-otlp-gateway: receives OpenTelemetry spans (OTLP gRPC and HTTP) and turns them into
//! complete MLflow traces, with the TraceInfo MLflow's own SDK would write.
//!
//! Layers, bottom up (a module imports only from those below it): `vocab` (shared words),
//! `otlp` (the codec), `config`, `auth` (tenants and their credentials), `tls` (the listeners'
//! certificates), `map` (OTel onto MLflow's trace model), `ops` (health,
//! metrics, logging), `mlflow` (the client), `spool` (the durable queue), `pipeline` (screen,
//! route, map, spool, batch, deliver), `feedback`, `receive` (the OTLP listeners), and `app`
//! (the composition root).

pub mod app;
pub mod auth;
pub mod config;
pub mod feedback;
pub mod map;
pub mod mlflow;
pub mod ops;
pub mod otlp;
pub mod pipeline;
pub mod receive;
pub mod redact;
pub mod spool;
pub mod tls;
pub mod vocab;

pub use app::{Gateway, ShutdownReport, StartError};
