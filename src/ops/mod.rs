//! Operating the gateway: health and readiness, metrics, logging, the side API listener.

pub mod api;
pub mod health;
pub mod healthcheck;
pub mod logging;
pub mod metrics;
pub mod readiness;
