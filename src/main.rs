//! CLI edge: flags and environment, configuration, logging, signals, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mlflow_otlp_gateway::Gateway;
use mlflow_otlp_gateway::config::{Config, LogFormat};

/// mimalloc (the default feature): mapping and batching allocate per trace, and glibc's malloc
/// and free were a fifth of the gateway's CPU at its ceiling (BENCHMARKS.md, "Decisions").
/// `--no-default-features` builds with the system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `arena_eager_commit` option (its index in `mi_option_t`, v2 and v3 alike; the
/// sys crate names no constant for it).
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Arenas committed as they are used, not up front: with mimalloc's Linux default (eager, since
/// Linux overcommits) the gateway's RSS at 10k spans/s doubled; committed on demand it is
/// glibc's. It must be set before the first allocation reserves the first arena, which
/// happens before `main`; so it runs as an ELF initializer.
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
#[used]
#[unsafe(link_section = ".init_array")]
static CONFIGURE_ALLOCATOR: extern "C" fn() = configure_allocator;

#[cfg(all(feature = "mimalloc", target_os = "linux"))]
extern "C" fn configure_allocator() {
    // SAFETY: sets a process-wide option; mimalloc allows this at any time, allocates nothing.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

/// OTLP collector/gateway that turns OpenTelemetry spans into MLflow traces.
///
/// Precedence: flags, then environment, then the config file, then built-in defaults.
/// MLflow's own variables are honoured: MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_ID,
/// MLFLOW_EXPERIMENT_NAME, MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME/PASSWORD.
#[derive(Debug, Parser)]
#[command(name = "mlflow-otlp-gateway", version)]
struct Args {
    /// TOML configuration file (see config/gateway.toml).
    #[arg(long, env = "GATEWAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// OTLP/gRPC listen address [default: 0.0.0.0:4317].
    #[arg(long, env = "GATEWAY_OTLP_GRPC_ADDR")]
    otlp_grpc_addr: Option<String>,
    /// OTLP/HTTP listen address [default: 0.0.0.0:4318].
    #[arg(long, env = "GATEWAY_OTLP_HTTP_ADDR")]
    otlp_http_addr: Option<String>,
    /// Side API listen address (health, metrics, feedback) [default: 0.0.0.0:8080].
    #[arg(long, env = "GATEWAY_API_ADDR")]
    api_addr: Option<String>,
    /// Directory for durable state.
    #[arg(long, env = "GATEWAY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Bearer tokens for the feedback API, one per line.
    #[arg(long, env = "GATEWAY_FEEDBACK_TOKENS_FILE")]
    feedback_tokens_file: Option<PathBuf>,
    /// Plain-HTTP probe listener (only /healthz and /readyz), for mTLS set-ups.
    #[arg(long, env = "GATEWAY_PROBE_ADDR")]
    probe_addr: Option<String>,
    /// PEM certificate chain for TLS on all listeners (with --tls-key-file).
    #[arg(long, env = "GATEWAY_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key for TLS on all listeners.
    #[arg(long, env = "GATEWAY_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to (mTLS).
    #[arg(long, env = "GATEWAY_TLS_CLIENT_CA_FILE")]
    tls_client_ca_file: Option<PathBuf>,
    /// Every OTLP and feedback request must authenticate as a tenant.
    #[arg(long, env = "GATEWAY_AUTH_REQUIRED", num_args = 0..=1, default_missing_value = "true")]
    auth_required: Option<bool>,
    /// MLflow tracking server URL (overrides MLFLOW_TRACKING_URI).
    #[arg(long, global = true)]
    mlflow_tracking_uri: Option<String>,
    /// Default experiment id (overrides MLFLOW_EXPERIMENT_ID).
    #[arg(long)]
    experiment_id: Option<String>,
    /// Default experiment name (overrides MLFLOW_EXPERIMENT_NAME).
    #[arg(long)]
    experiment_name: Option<String>,
    /// Log format.
    #[arg(long, value_enum, env = "GATEWAY_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Log level or tracing filter (RUST_LOG wins).
    #[arg(long, env = "GATEWAY_LOG_LEVEL")]
    log_level: Option<String>,
    /// Validate the configuration, report every problem, and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Send the dead letters in <data_dir>/deadletter to MLflow again (after fixing what made
    /// MLflow reject them); what still fails stays in the file. Exit code 1 if any remain.
    ReplayDeadLetters,
    /// Exit 0 when the running gateway's GET /healthz answers 200 (on the probe port if set,
    /// else on the API port, over TLS when it speaks it), else 1. For container HEALTHCHECKs
    /// in images without a shell or curl.
    Healthcheck,
}

async fn replay_dead_letters(config: Config) -> anyhow::Result<bool> {
    let dir = config
        .data_dir
        .clone()
        .context("replay-dead-letters needs --data-dir (or GATEWAY_DATA_DIR / data_dir)")?;
    let identities = mlflow_otlp_gateway::mlflow::Identities::new(&config)?;
    let report = mlflow_otlp_gateway::pipeline::replay::replay(&dir, &identities)
        .await
        .with_context(|| format!("replaying dead letters in {}", dir.display()))?;
    println!(
        "dead letters: {} delivered, {} still failing, {} unreadable",
        report.delivered, report.still_failing, report.unreadable
    );
    Ok(report.still_failing == 0 && report.unreadable == 0)
}

fn load(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply_mlflow_env(&|k| std::env::var(k).ok());
    let set = |slot: &mut String, v: &Option<String>| {
        if let Some(v) = v {
            *slot = v.clone();
        }
    };
    set(&mut config.server.otlp_grpc_addr, &args.otlp_grpc_addr);
    set(&mut config.server.otlp_http_addr, &args.otlp_http_addr);
    set(&mut config.server.api_addr, &args.api_addr);
    set(&mut config.mlflow.tracking_uri, &args.mlflow_tracking_uri);
    if let Some(id) = &args.experiment_id {
        config.mlflow.experiment_id = Some(id.clone());
    }
    if let Some(name) = &args.experiment_name {
        config.mlflow.experiment_name = Some(name.clone());
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = Some(dir.clone());
    }
    if let Some(f) = &args.feedback_tokens_file {
        config.feedback.tokens_file = Some(f.clone());
    }
    if let Some(a) = &args.probe_addr {
        config.server.probe_addr = Some(a.clone());
    }
    apply_tls_args(&mut config, args)?;
    if let Some(required) = args.auth_required {
        config.auth.required = required;
    }
    if let Some(f) = args.log_format {
        config.log.format = f;
    }
    if let Some(l) = &args.log_level {
        config.log.level = l.clone();
    }
    Ok(config)
}

/// The TLS flags over `[server.tls]`: each replaces its key; a certificate and key given only
/// as flags make the section.
fn apply_tls_args(config: &mut Config, args: &Args) -> anyhow::Result<()> {
    let tls = &mut config.server.tls;
    match (tls.as_mut(), &args.tls_cert_file, &args.tls_key_file) {
        (Some(tls), cert, key) => {
            if let Some(cert) = cert {
                tls.cert_file = cert.clone();
            }
            if let Some(key) = key {
                tls.key_file = key.clone();
            }
        }
        (None, Some(cert), Some(key)) => {
            *tls = Some(mlflow_otlp_gateway::config::TlsConfig {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file: None,
            });
        }
        (None, None, None) => {}
        (None, _, _) => anyhow::bail!(
            "TLS needs both a certificate and a key (--tls-cert-file and --tls-key-file, or \
             GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE)"
        ),
    }
    if let Some(ca) = &args.tls_client_ca_file {
        match tls.as_mut() {
            Some(tls) => tls.client_ca_file = Some(ca.clone()),
            None => anyhow::bail!("--tls-client-ca-file needs TLS (a certificate and a key)"),
        }
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            r = tokio::signal::ctrl_c() => r.map(|_| "SIGINT").context("waiting for SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}

async fn run(config: Config) -> anyhow::Result<bool> {
    let gateway = Gateway::start(config).await?;
    let signal = wait_for_signal().await?;
    tracing::info!(signal, "received shutdown signal");
    Ok(gateway.shutdown().await.drained)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        return match config.validate() {
            Ok(addrs) => {
                let access = match (&config.server.tls, config.tenants.len()) {
                    (None, 0) => "plaintext, open".to_string(),
                    (tls, tenants) => format!(
                        "{}, {tenants} tenant(s){}",
                        match tls {
                            Some(t) if t.client_ca_file.is_some() => "TLS with client certificates",
                            Some(_) => "TLS",
                            None => "plaintext",
                        },
                        if config.auth.required {
                            ", authentication required"
                        } else {
                            ""
                        }
                    ),
                };
                println!(
                    "configuration OK: OTLP gRPC {}, OTLP HTTP {}, API {}, {access}, MLflow {}, default experiment {}",
                    addrs.otlp_grpc,
                    addrs.otlp_http,
                    addrs.api,
                    config.mlflow.tracking_uri,
                    config.default_experiment()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    let addrs = match config.validate() {
        Ok(addrs) => addrs,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Cmd::Healthcheck) = args.command {
        return match mlflow_otlp_gateway::ops::healthcheck::healthcheck(&config, &addrs) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unhealthy: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    mlflow_otlp_gateway::ops::logging::init(config.log.format, &config.log.level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Cmd::ReplayDeadLetters) = args.command {
        return match runtime.block_on(replay_dead_letters(config)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run(config)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
