use super::*;

fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| {
        pairs
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn defaults_are_valid_and_use_standard_ports() {
    let addrs = Config::default().validate().expect("defaults valid");
    assert_eq!(addrs.otlp_grpc.port(), 4317);
    assert_eq!(addrs.otlp_http.port(), 4318);
    assert_eq!(addrs.api.port(), 8080);
}

/// The configuration file the project ships (README: the reference of every key).
fn shipped_config_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml")
}

#[test]
fn shipped_config_file_parses_and_matches_defaults() {
    let cfg = Config::from_file(&shipped_config_path()).expect("shipped config parses");
    cfg.validate().expect("shipped config valid");
    // Every value the file sets is the built-in default: the file is the reference, so a
    // default changed in code alone would make it lie.
    assert_eq!(format!("{cfg:#?}"), format!("{:#?}", Config::default()));
}

#[test]
fn shipped_config_file_names_every_key() {
    let text = std::fs::read_to_string(shipped_config_path()).expect("shipped config readable");
    // Sections, and keys set or shown commented out (`# key = ...`, as optional ones are).
    let named: std::collections::HashSet<&str> = text
        .lines()
        .map(|line| line.trim_start().trim_start_matches('#').trim_start())
        .filter_map(|line| {
            // `[server.tls]` names `tls`; `[[tenants]]` names `tenants`.
            let section = line
                .starts_with('[')
                .then(|| line.trim_matches(|c| c == '[' || c == ']'))
                .and_then(|s| s.rsplit('.').next());
            section.or_else(|| line.split_once(" = ").map(|(key, _)| key.trim()))
        })
        .collect();
    // The field names of every section, read from the defaults' Debug output.
    let debug = format!("{:#?}", Config::default());
    let missing: Vec<&str> = debug
        .lines()
        .filter_map(|line| line.trim_start().split_once(": ").map(|(key, _)| key))
        .filter(|key| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .filter(|key| !named.contains(key))
        .collect();
    assert!(
        missing.is_empty(),
        "keys not in config/gateway.toml: {missing:?}"
    );
}

#[test]
fn spool_compression_takes_zstd_or_none_and_names_the_choices_otherwise() {
    let cfg = Config::from_toml("[spool]\ncompression = \"none\"\n", Path::new("x.toml"));
    assert_eq!(cfg.unwrap().spool.compression, SpoolCompression::None);
    let err = Config::from_toml("[spool]\ncompression = \"lz4\"\n", Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("zstd") && err.contains("none"), "{err}");
}

#[test]
fn unknown_keys_are_rejected() {
    let err = Config::from_toml("[batch]\nmax_span = 3\n", Path::new("x.toml")).unwrap_err();
    assert!(err.to_string().contains("max_span"), "{err}");
}

#[test]
fn every_error_is_reported_at_once() {
    let toml = r#"
        [server]
        otlp_grpc_addr = "nope"
        [mlflow]
        tracking_uri = "file:///tmp/mlruns"
        experiment_id = "abc"
        username = "u"
        [receiver]
        ingest_concurrency = 0
        [batch]
        max_spans = 0
    "#;
    let cfg = Config::from_toml(toml, Path::new("x.toml")).unwrap();
    let ConfigError::Invalid(errors) = cfg.validate().unwrap_err() else {
        panic!("expected Invalid")
    };
    assert_eq!(errors.len(), 6, "{errors:#?}");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("receiver.ingest_concurrency")),
        "{errors:#?}"
    );
}

#[test]
fn ingest_concurrency_leaves_a_cpu_to_delivery() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(default_ingest_concurrency(), cpus.saturating_sub(1).max(1));
}

#[test]
fn mlflow_env_overrides_file_values() {
    let mut cfg = Config::from_toml(
        "[mlflow]\ntracking_uri = \"http://file:1\"\nexperiment_id = \"3\"\n",
        Path::new("x.toml"),
    )
    .unwrap();
    cfg.apply_mlflow_env(&env(&[
        ("MLFLOW_TRACKING_URI", "http://env:5000"),
        ("MLFLOW_EXPERIMENT_ID", "7"),
        ("MLFLOW_TRACKING_TOKEN", "s3cret"),
    ]));
    assert_eq!(cfg.mlflow.tracking_uri, "http://env:5000");
    assert_eq!(cfg.mlflow.experiment_id.as_deref(), Some("7"));
    assert!(!format!("{cfg:?}").contains("s3cret"), "secret leaked");
}

#[test]
fn default_experiment_prefers_id_then_name_then_zero() {
    use crate::vocab::ExperimentRef;
    let mut cfg = Config::default();
    assert_eq!(cfg.default_experiment(), ExperimentRef::Id("0".into()));
    cfg.mlflow.experiment_name = Some("chat".into());
    assert_eq!(cfg.default_experiment(), ExperimentRef::Name("chat".into()));
    cfg.mlflow.experiment_id = Some("4".into());
    assert_eq!(cfg.default_experiment(), ExperimentRef::Id("4".into()));
}

#[test]
fn auth_required_without_tenants_is_refused_with_the_reason() {
    let cfg = Config::from_toml("[auth]\nrequired = true\n", Path::new("x.toml")).unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(
        err.contains("auth.required") && err.contains("[[tenants]]"),
        "{err}"
    );
}

#[test]
fn tenant_problems_are_reported_together() {
    let toml = r#"
        [auth]
        required = true
        [feedback]
        tokens = ["fb"]
        [[tenants]]
        name = "a b"
        tokens = ["same"]
        experiments = ["a-*"]
        default_experiment = "b-prod"
        max_spool_share = 1.5
        [[tenants]]
        name = "b"
        tokens = ["same"]
        client_cert_subjects = ["svc-b"]
        experiments = []
        mlflow_token_env = "B_TOKEN"
        max_spans_per_second = -1
    "#;
    let mut cfg = Config::from_toml(toml, Path::new("x.toml")).unwrap();
    cfg.apply_mlflow_env(&env(&[]));
    let err = cfg.validate().unwrap_err().to_string();
    for expected in [
        "tenants[0] (a b).name",
        "a token is also tenant 'a b's",
        "default_experiment: 'b-prod' is not among its experiments",
        "max_spool_share",
        "needs server.tls.client_ca_file",
        "tenants[1] (b).experiments",
        "B_TOKEN not set",
        "max_spans_per_second",
        "feedback.tokens / feedback.tokens_file",
    ] {
        assert!(err.contains(expected), "missing '{expected}' in:\n{err}");
    }
}

#[test]
fn tenant_identities_come_from_the_environment() {
    let toml = r#"
        [[tenants]]
        name = "a"
        tokens = ["t"]
        experiments = ["a-*"]
        mlflow_username_env = "A_USER"
        mlflow_password_env = "A_PASSWORD"
    "#;
    let mut cfg = Config::from_toml(toml, Path::new("x.toml")).unwrap();
    cfg.apply_mlflow_env(&env(&[("A_USER", "alice"), ("A_PASSWORD", "pw")]));
    cfg.validate().expect("valid");
    assert!(matches!(
        &cfg.tenants[0].mlflow,
        TenantMlflowIdentity::Basic { username, .. } if username == "alice"
    ));
    assert!(
        !format!("{cfg:?}").contains("pw\""),
        "the password never shows in Debug output"
    );
}

#[test]
fn tls_files_must_hold_pem_of_the_right_kind() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not pem").unwrap();
    let toml = format!(
        "[server.tls]\ncert_file = {junk:?}\nkey_file = {junk:?}\nclient_ca_file = {missing:?}\n",
        missing = dir.path().join("missing.pem")
    );
    let cfg = Config::from_toml(&toml, Path::new("x.toml")).unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    for key in [
        "server.tls.cert_file",
        "server.tls.key_file",
        "server.tls.client_ca_file",
    ] {
        assert!(err.contains(key), "missing {key} in:\n{err}");
    }
}

#[test]
fn redaction_rules_are_checked_all_at_once() {
    let toml = r#"
[redaction]
hash_key_env = "GATEWAY_TEST_NO_SUCH_KEY_VARIABLE"
[[redaction.rules]]
patterns = ["email", "passport"]
[[redaction.rules]]
patterns = ["re:(unclosed"]
[[redaction.rules]]
keys = ["app.secret"]
patterns = ["email"]
[[redaction.rules]]
keys = ["user.*"]
action = "hash"
[[redaction.rules]]
"#;
    let cfg = Config::from_toml(toml, Path::new("x.toml")).expect("parses");
    let err = cfg.validate().unwrap_err().to_string();
    for expected in [
        "redaction.rules[0]: unknown detector 'passport'",
        "redaction.rules[1]: pattern 're:(unclosed'",
        "redaction.rules[2]: patterns and keys are separate rules",
        "redaction.rules[3]: action \"hash\" needs a key in $GATEWAY_TEST_NO_SUCH_KEY_VARIABLE",
        "redaction.rules[4]: give patterns or keys",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in {err}");
    }
    let ok = "[redaction]\ncontent = \"drop\"\n[[redaction.rules]]\npatterns = [\"email\", \"re:\\\\d{6}\"]\naction = \"mask\"\n";
    Config::from_toml(ok, Path::new("x.toml"))
        .expect("parses")
        .validate()
        .expect("valid");
    assert!(Config::from_toml("[redaction]\ncontent = \"hide\"\n", Path::new("x.toml")).is_err());
}

#[test]
fn sampling_is_checked_all_at_once() {
    let toml = r#"
[sampling]
enabled = true
decision_wait = "20m"
feedback_window = "10s"
probability = 1.5
max_traces_per_second = -1
[[sampling.keep_when]]
key = ""
values = []
"#;
    let cfg = Config::from_toml(toml, Path::new("x.toml")).expect("parses");
    let err = cfg.validate().unwrap_err().to_string();
    for expected in [
        "sampling.probability: 1.5 is not between 0 and 1",
        "sampling.max_traces_per_second: -1 is not a rate",
        "sampling.decision_wait: at most 600s",
        "sampling.keep_when[0]: an empty key",
        "sampling.keep_when[0]: give values",
        "sampling.feedback_window: must be longer than sampling.decision_wait",
        "sampling.enabled: traces not kept wait on disk for the feedback window; set data_dir",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in {err}");
    }
    let ok = "data_dir = \"/tmp/x\"\n[sampling]\nenabled = true\nkeep_slower_than = \"10s\"\n\
              [[sampling.keep_when]]\nkey = \"mlflow.trace.user\"\nvalues = [\"vip-*\"]\n";
    Config::from_toml(ok, Path::new("x.toml"))
        .expect("parses")
        .validate()
        .expect("valid");
    assert!(!Config::default().sampling.enabled, "off by default");
}
