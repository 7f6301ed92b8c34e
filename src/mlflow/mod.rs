//! Everything that talks to the MLflow tracking server.

pub mod assessments;
pub mod client;
pub mod error;
pub mod experiments;
pub mod identities;
mod pipelined;
pub mod retry;
pub mod trace_info;

pub use client::MlflowClient;
pub use error::{ErrorClass, MlflowError};
pub use identities::Identities;
