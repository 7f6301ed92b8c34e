//! Readiness policy: when the gateway should tell Kubernetes to route elsewhere, beyond what
//! `Health` records (listeners, MLflow, credentials, draining).

/// A problem when a queue holding `used` of `limit` bytes could not take one more request of
/// `headroom` bytes: not ready then, so traffic moves elsewhere before clients see refusals.
pub fn room_problem(what: &str, used: u64, limit: u64, headroom: u64) -> Option<String> {
    (used.saturating_add(headroom) > limit)
        .then(|| format!("{what} nearly full ({used} of {limit} bytes)"))
}

/// What the gateway's MLflow checks found, as a readiness problem: MLflow not answering, or
/// refusing the gateway's credentials.
pub fn mlflow_problem(
    url: &str,
    health: Result<(), String>,
    credentials_refused: Option<String>,
) -> Option<String> {
    match (health, credentials_refused) {
        (Err(e), _) => Some(format!("MLflow at {url} does not answer: {e}")),
        (Ok(()), Some(e)) => Some(format!("MLflow refused the gateway's credentials: {e}")),
        (Ok(()), None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_when_one_more_large_request_would_not_fit() {
        assert_eq!(room_problem("spool disk", 10, 100, 90), None);
        assert_eq!(
            room_problem("spool disk", 11, 100, 90).as_deref(),
            Some("spool disk nearly full (11 of 100 bytes)")
        );
        assert!(room_problem("q", u64::MAX, 1, 1).is_some());
    }

    #[test]
    fn mlflow_problems_name_the_cause() {
        assert_eq!(mlflow_problem("u", Ok(()), None), None);
        assert!(
            mlflow_problem("http://m", Err("refused".into()), None)
                .unwrap()
                .contains("http://m does not answer: refused")
        );
        assert!(
            mlflow_problem("u", Ok(()), Some("401".into()))
                .unwrap()
                .contains("credentials")
        );
    }
}
