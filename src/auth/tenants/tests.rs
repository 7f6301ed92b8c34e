use super::*;
use crate::config::Secret;

fn tenant(name: &str, tokens: &[&str]) -> TenantConfig {
    let mut t: TenantConfig =
        toml::from_str(&format!("name = '{name}'\nexperiments = ['{name}-*']")).expect("tenant");
    t.tokens = tokens.iter().map(|s| Secret::new(*s)).collect();
    t
}

fn config(tenants: Vec<TenantConfig>, required: bool) -> Config {
    let mut cfg = Config {
        tenants,
        ..Config::default()
    };
    cfg.auth.required = required;
    cfg
}

#[test]
fn tokens_name_their_tenant() {
    let t = Tenants::from_config(&config(
        vec![tenant("a", &["ta"]), tenant("b", &["tb"])],
        true,
    ))
    .unwrap();
    let a = t.authenticate(Some("Bearer ta"), &[]).unwrap().unwrap();
    assert_eq!(&*a.name, "a");
    let b = t.authenticate(Some("bearer tb"), &[]).unwrap().unwrap();
    assert_eq!(&*b.name, "b");
    assert_eq!(
        t.authenticate(Some("Bearer nope"), &[]).unwrap_err(),
        AuthError::Invalid
    );
    assert_eq!(t.authenticate(None, &[]).unwrap_err(), AuthError::Missing);
    assert_eq!(
        t.authenticate(Some("Basic dXNlcjpwdw=="), &[]).unwrap_err(),
        AuthError::Missing
    );
}

#[test]
fn without_auth_required_anonymous_requests_carry_no_tenant_but_bad_tokens_fail() {
    let t = Tenants::from_config(&config(vec![tenant("a", &["ta"])], false)).unwrap();
    assert!(t.authenticate(None, &[]).unwrap().is_none());
    assert_eq!(
        t.authenticate(Some("Bearer wrong"), &[]).unwrap_err(),
        AuthError::Invalid
    );
}

#[test]
fn an_open_gateway_ignores_credentials() {
    let t = Tenants::from_config(&Config::default()).unwrap();
    assert!(t.is_empty());
    assert!(
        t.authenticate(Some("Bearer anything"), &[])
            .unwrap()
            .is_none()
    );
}

#[test]
fn client_certificates_name_tenants_and_must_agree_with_tokens() {
    let mut a = tenant("a", &["ta"]);
    a.client_cert_subjects = vec!["svc-a.example".into()];
    let b = tenant("b", &["tb"]);
    let t = Tenants::from_config(&config(vec![a, b], true)).unwrap();
    let by_cert = t
        .authenticate(None, &["other".into(), "svc-a.example".into()])
        .unwrap()
        .unwrap();
    assert_eq!(&*by_cert.name, "a");
    assert!(
        t.authenticate(Some("Bearer ta"), &["svc-a.example".into()])
            .is_ok()
    );
    assert_eq!(
        t.authenticate(Some("Bearer tb"), &["svc-a.example".into()])
            .unwrap_err(),
        AuthError::Conflict
    );
}

#[test]
fn a_token_shared_by_two_tenants_is_refused_at_start() {
    let err = Tenants::from_config(&config(
        vec![tenant("a", &["same"]), tenant("b", &["same"])],
        true,
    ))
    .err()
    .expect("shared token refused");
    assert!(err.to_string().contains("share a token"), "{err}");
}

#[test]
fn tokens_files_are_reloaded_when_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tokens");
    std::fs::write(&path, "# team a\nold-token\n").unwrap();
    let mut a = tenant("a", &[]);
    a.tokens_file = Some(path.clone());
    let t = Tenants::from_config(&config(vec![a, tenant("b", &["tb"])], true)).unwrap();
    assert!(t.authenticate(Some("Bearer old-token"), &[]).is_ok());
    assert!(!t.reload(), "unchanged file");

    std::fs::write(&path, "new-token\n").unwrap();
    assert!(t.reload());
    assert!(t.authenticate(Some("Bearer new-token"), &[]).is_ok());
    assert_eq!(
        t.authenticate(Some("Bearer old-token"), &[]).unwrap_err(),
        AuthError::Invalid
    );

    // A token that another tenant holds names neither once the file takes it too.
    std::fs::write(&path, "new-token\ntb\n").unwrap();
    assert!(t.reload());
    assert_eq!(
        t.authenticate(Some("Bearer tb"), &[]).unwrap_err(),
        AuthError::Invalid
    );
    assert!(t.authenticate(Some("Bearer new-token"), &[]).is_ok());

    // A file that cannot be read keeps its last tokens.
    std::fs::remove_file(&path).unwrap();
    assert!(!t.reload());
    assert!(t.authenticate(Some("Bearer new-token"), &[]).is_ok());
}

#[test]
fn tenant_settings_are_carried() {
    let mut a = tenant("a", &["ta"]);
    a.default_experiment = Some("a-prod".into());
    a.max_spans_per_second = 10.0;
    a.max_spool_share = 0.5;
    let t = Tenants::from_config(&config(vec![a], true)).unwrap();
    let a = t.get("a").unwrap();
    assert_eq!(
        a.default_experiment,
        Some(ExperimentRef::Name("a-prod".into()))
    );
    assert!(a.quota.is_some());
    assert_eq!(a.spool_share, 0.5);
    assert!(a.feedback, "feedback is on by default");
    assert!(!a.create_experiments);
    assert!(a.scope.allows_name("a-staging"));
}
