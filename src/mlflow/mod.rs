//! Everything that talks to the MLflow tracking server.

pub mod client;
mod direct;
pub mod error;
pub mod experiments;
pub mod retry;

pub use client::MlflowClient;
pub use error::{ErrorClass, MlflowError};
