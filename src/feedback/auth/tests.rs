use super::*;
use crate::config::{Config, TenantConfig};

fn tenants(required: bool, feedback: bool) -> Arc<Tenants> {
    let mut a: TenantConfig =
        toml::from_str("name = 'a'\nexperiments = ['a-*']\ntokens = ['ta']").unwrap();
    a.feedback = feedback;
    let mut cfg = Config {
        tenants: vec![a],
        ..Config::default()
    };
    cfg.auth.required = required;
    Arc::new(Tenants::from_config(&cfg).unwrap())
}

fn open() -> Arc<Tenants> {
    Arc::new(Tenants::from_config(&Config::default()).unwrap())
}

fn limiter() -> RateLimiter {
    RateLimiter::new(0.0, 1)
}

#[test]
fn feedback_tokens_alone_work_as_before() {
    let auth = FeedbackAuth::new(
        open(),
        &[Secret::new("alpha"), Secret::new("beta")],
        limiter(),
    );
    assert!(matches!(
        auth.check(None, &[], "1.2.3.4"),
        Err(Denial::Unauthenticated(_))
    ));
    assert!(matches!(
        auth.check(Some("Bearer nope"), &[], "1.2.3.4"),
        Err(Denial::Forbidden(_))
    ));
    let p = auth.check(Some("bearer beta"), &[], "1.2.3.4").unwrap();
    assert!(p.tenant.is_none());
    assert!(FeedbackAuth::new(open(), &[], limiter()).is_open());
    assert!(
        FeedbackAuth::new(open(), &[], limiter())
            .check(None, &[], "1.2.3.4")
            .is_ok()
    );
}

#[test]
fn tenant_tokens_name_a_scoped_caller() {
    let auth = FeedbackAuth::new(tenants(true, true), &[], limiter());
    let p = auth.check(Some("Bearer ta"), &[], "ip").unwrap();
    assert_eq!(p.tenant_name(), Some("a"));
    assert!(matches!(
        auth.check(Some("Bearer wrong"), &[], "ip"),
        Err(Denial::Unauthenticated(_))
    ));
    assert!(matches!(
        auth.check(None, &[], "ip"),
        Err(Denial::Unauthenticated(_))
    ));
}

#[test]
fn a_tenant_without_feedback_is_forbidden() {
    let auth = FeedbackAuth::new(tenants(true, false), &[], limiter());
    assert!(matches!(
        auth.check(Some("Bearer ta"), &[], "ip"),
        Err(Denial::Forbidden(_))
    ));
}

#[test]
fn beside_tenants_a_feedback_token_is_unscoped_when_auth_is_not_required() {
    let auth = FeedbackAuth::new(tenants(false, true), &[Secret::new("fb")], limiter());
    let p = auth.check(Some("Bearer fb"), &[], "ip").unwrap();
    assert!(p.tenant.is_none());
    assert_eq!(
        auth.check(Some("Bearer ta"), &[], "ip")
            .unwrap()
            .tenant_name(),
        Some("a")
    );
    assert!(matches!(
        auth.check(Some("Bearer other"), &[], "ip"),
        Err(Denial::Unauthenticated(_))
    ));
}

#[test]
fn buckets_refuse_past_the_burst_per_client() {
    let rl = RateLimiter::new(1.0, 2);
    assert!(rl.check("a").is_ok());
    assert!(rl.check("a").is_ok());
    let wait = rl.check("a").unwrap_err();
    assert!(wait > 0.0 && wait <= 1.0);
    assert!(rl.check("b").is_ok(), "another client has its own bucket");
    assert!(RateLimiter::new(0.0, 1).check("a").is_ok());
}
