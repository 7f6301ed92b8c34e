//! Who a request is: the tenant its bearer token or client certificate names, and what that
//! tenant may do (its experiments, its quota). Tokens are kept as SHA-256 digests and compared
//! in constant time; none is ever logged.

pub mod quota;
pub mod scope;
pub mod tenants;
pub mod tokens;

pub use quota::SpanQuota;
pub use scope::ExperimentScope;
pub use tenants::{AuthError, Tenant, Tenants};
