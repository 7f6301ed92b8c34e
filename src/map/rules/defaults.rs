//! The built-in mapping table: the seed document's metadata table plus the common SDK
//! conventions (OpenTelemetry semantic conventions, Langfuse, Traceloop, captured headers).

/// The built-in table (the seed document's metadata table plus the common SDK conventions).
use super::DEFAULT_SOURCE_TYPE;

pub(super) const DEFAULT_RULES: &[(&str, &[&str], Option<&str>, bool)] = &[
    (
        "client_request_id",
        &[
            "mlflow.trace.client_request_id",
            "client_request_id",
            "request.id",
            "header:x-request-id",
        ],
        None,
        false,
    ),
    (
        "metadata:mlflow.trace.session",
        &[
            "mlflow.trace.session",
            "session.id",
            "gen_ai.conversation.id",
            "langfuse.session.id",
            "traceloop.association.properties.session_id",
            "header:x-session-id",
        ],
        None,
        true,
    ),
    (
        "metadata:mlflow.trace.user",
        &[
            "mlflow.trace.user",
            "user.id",
            "enduser.id",
            "langfuse.user.id",
            "traceloop.association.properties.user_id",
            "header:x-user-id",
        ],
        None,
        true,
    ),
    (
        "metadata:mlflow.source.type",
        &["mlflow.source.type", "deployment.environment.name"],
        Some(DEFAULT_SOURCE_TYPE),
        false,
    ),
    (
        "metadata:mlflow.source.name",
        &["service.name"],
        None,
        false,
    ),
    (
        "metadata:environment",
        &[
            "deployment.environment.name",
            "deployment.environment",
            "langfuse.environment",
        ],
        None,
        false,
    ),
    (
        "metadata:app_version",
        &["service.version", "langfuse.release"],
        None,
        false,
    ),
    (
        "metadata:deployment_id",
        &["k8s.deployment.name", "service.instance.id"],
        None,
        false,
    ),
    ("metadata:region", &["cloud.region"], None, false),
];
