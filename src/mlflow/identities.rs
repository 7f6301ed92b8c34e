//! The identities the gateway talks to MLflow under: its own, and each tenant's own where the
//! tenant has one (so MLflow's `basic-auth` app checks that tenant's permissions as well).

use std::collections::HashMap;
use std::sync::Arc;

use super::client::{ClientBuildError, MlflowClient};
use crate::config::Config;

#[derive(Clone)]
pub struct Identities {
    gateway: MlflowClient,
    tenants: Arc<HashMap<Arc<str>, MlflowClient>>,
}

impl Identities {
    pub fn new(cfg: &Config) -> Result<Self, ClientBuildError> {
        let gateway = MlflowClient::new(&cfg.mlflow)?;
        let mut tenants = HashMap::new();
        for t in &cfg.tenants {
            let client = gateway.for_tenant(&cfg.mlflow, &t.name, &t.mlflow)?;
            if client.tenant().is_some() {
                tenants.insert(Arc::from(t.name.as_str()), client);
            }
        }
        Ok(Self {
            gateway,
            tenants: Arc::new(tenants),
        })
    }

    /// Only the gateway's own identity.
    pub fn gateway_only(gateway: MlflowClient) -> Self {
        Self {
            gateway,
            tenants: Arc::default(),
        }
    }

    pub fn gateway(&self) -> &MlflowClient {
        &self.gateway
    }

    /// The client a tenant's data goes through: its own identity, else the gateway's.
    pub fn of(&self, tenant: Option<&str>) -> &MlflowClient {
        tenant
            .and_then(|t| self.tenants.get(t))
            .unwrap_or(&self.gateway)
    }

    /// Whether the tenant has an identity of its own.
    pub fn has_own(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }
}
