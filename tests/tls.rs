//! TLS on the gateway's listeners, against a real MLflow 3.17.2: OTLP over HTTP and gRPC and the
//! API over TLS, plaintext refused, mTLS (a client certificate names its tenant), certificates
//! rotated without a restart or a dropped connection, and the healthcheck over TLS.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use mlflow_otlp_gateway::Gateway;
use mlflow_otlp_gateway::config::{Addrs, Config, Secret, TenantConfig, TlsConfig};
use mlflow_otlp_gateway::ops::healthcheck::healthcheck;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::*;

const TOKEN: &str = "tls-tenant-token";

fn tls_gateway_config(cfg: &mut Config, pki: &TestPki, server: &CertFiles, mtls: bool) {
    cfg.server.tls = Some(TlsConfig {
        cert_file: server.cert.clone(),
        key_file: server.key.clone(),
        client_ca_file: mtls.then(|| pki.ca_file()),
    });
}

fn tenant(prefix: &str) -> TenantConfig {
    let mut t: TenantConfig = toml::from_str(&format!(
        "name = 'team-a'\nexperiments = ['{prefix}-*']\ndefault_experiment = '{prefix}-prod'"
    ))
    .unwrap();
    t.tokens = vec![Secret::new(TOKEN)];
    t
}

async fn experiment(mlflow: &Mlflow, prefix: &str) -> String {
    let (status, body) = mlflow
        .post(
            "/api/2.0/mlflow/experiments/create",
            &serde_json::json!({"name": format!("{prefix}-prod")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["experiment_id"].as_str().unwrap().to_string()
}

/// A rustls client trusting `ca`, presenting `identity` if given.
fn client_tls(ca: &Path, identity: Option<&CertFiles>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        Some(files) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&files.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&files.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

fn https(ca: &Path, identity: Option<&CertFiles>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(client_tls(ca, identity, &[b"h2", b"http/1.1"]))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn turn() -> (String, ExportTraceServiceRequest) {
    let root = SpanSpec::root(random_trace_id(), "turn", now_nanos() - 1_000_000_000, 30)
        .with(vec![s("client_request_id", &format!("req-{}", unique()))]);
    let child = SpanSpec::child(&root, "llm", 1, 10);
    (
        tr_id(&root.trace_id),
        request(vec![], vec![child.build(), root.build()]),
    )
}

async fn post_https(
    client: &reqwest::Client,
    addr: SocketAddr,
    req: &ExportTraceServiceRequest,
    token: Option<&str>,
) -> Result<u16, reqwest::Error> {
    let mut r = client
        .post(format!("https://localhost:{}/v1/traces", addr.port()))
        .header("content-type", "application/x-protobuf")
        .body(prost::Message::encode_to_vec(req));
    if let Some(token) = token {
        r = r.header("authorization", format!("Bearer {token}"));
    }
    r.send().await.map(|r| r.status().as_u16())
}

/// A gRPC client whose connections are this test's own TLS connections to `addr`.
async fn grpc_tls(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
) -> Result<TraceServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
    let tls = Arc::new(tls);
    let connector = tower::service_fn(move |_uri| {
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").unwrap();
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await?;
    Ok(TraceServiceClient::new(channel))
}

async fn grpc_export(
    client: &mut TraceServiceClient<tonic::transport::Channel>,
    req: ExportTraceServiceRequest,
    token: Option<&str>,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(req);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    client.export(request).await.map(drop)
}

fn addrs(gw: &Gateway) -> Addrs {
    Addrs {
        otlp_grpc: gw.otlp_grpc_addr,
        otlp_http: gw.otlp_http_addr,
        api: gw.api_addr,
        probe: gw.probe_addr,
    }
}

#[tokio::test]
async fn otlp_and_the_api_over_tls_with_a_tenant_token() {
    let mlflow = Mlflow::new(shared_mlflow());
    let prefix = format!("tls{}", unique());
    let exp = experiment(&mlflow, &prefix).await;
    let pki = TestPki::new("gateway test CA").unwrap();
    let server = pki.server("server").unwrap();
    let mut config = None;
    let gw = gateway(&mlflow.url, "0", |cfg| {
        tls_gateway_config(cfg, &pki, &server, false);
        cfg.auth.required = true;
        cfg.tenants = vec![tenant(&prefix)];
        config = Some(cfg.clone());
    })
    .await;
    let client = https(&pki.ca_file(), None);
    let (trace_http, req) = turn();
    assert_eq!(
        post_https(&client, gw.otlp_http_addr, &req, Some(TOKEN))
            .await
            .unwrap(),
        200
    );
    let (trace_grpc, req) = turn();
    let mut grpc = grpc_tls(
        gw.otlp_grpc_addr,
        client_tls(&pki.ca_file(), None, &[b"h2"]),
    )
    .await
    .expect("gRPC over TLS");
    grpc_export(&mut grpc, req, Some(TOKEN))
        .await
        .expect("export");
    for trace in [&trace_http, &trace_grpc] {
        mlflow.wait_spans(trace, 2).await;
        let info = mlflow.trace_info(trace).await.unwrap();
        assert_eq!(
            info["trace_location"]["mlflow_experiment"]["experiment_id"],
            exp.as_str()
        );
    }

    // The API speaks TLS too: health, metrics, feedback.
    let health = client
        .get(format!("https://localhost:{}/healthz", gw.api_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let feedback = client
        .post(format!(
            "https://localhost:{}/v1/feedback",
            gw.api_addr.port()
        ))
        .header("authorization", format!("Bearer {TOKEN}"))
        .json(&serde_json::json!({"trace_id": trace_http, "name": "helpful", "value": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(feedback.status(), 201);
    // The healthcheck subcommand's check, over TLS, trusting the configured certificate.
    let config = config.unwrap();
    let probed = tokio::task::spawn_blocking({
        let addrs = addrs(&gw);
        move || healthcheck(&config, &addrs)
    })
    .await
    .unwrap();
    assert!(probed.is_ok(), "{probed:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn plaintext_to_a_tls_listener_is_refused() {
    let pki = TestPki::new("gateway test CA").unwrap();
    let server = pki.server("server").unwrap();
    let gw = gateway(shared_mlflow(), "0", |cfg| {
        tls_gateway_config(cfg, &pki, &server, false)
    })
    .await;
    let (_, req) = turn();
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let http = plain
        .post(format!("http://{}/v1/traces", gw.otlp_http_addr))
        .header("content-type", "application/x-protobuf")
        .body(prost::Message::encode_to_vec(&req))
        .send()
        .await;
    assert!(http.is_err(), "plain HTTP answered: {http:?}");
    let api = plain
        .get(format!("http://{}/healthz", gw.api_addr))
        .send()
        .await;
    assert!(api.is_err(), "plain HTTP to the API answered: {api:?}");
    let grpc = match TraceServiceClient::connect(format!("http://{}", gw.otlp_grpc_addr)).await {
        Ok(mut client) => client.export(req).await.map(drop),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(grpc.is_err(), "plaintext gRPC was served");
    let metrics = https(&pki.ca_file(), None)
        .get(format!("https://localhost:{}/metrics", gw.api_addr.port()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gateway_tls_handshake_failures_total"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn mtls_needs_a_trusted_client_certificate_whose_subject_names_the_tenant() {
    let mlflow = Mlflow::new(shared_mlflow());
    let prefix = format!("mtls{}", unique());
    let exp = experiment(&mlflow, &prefix).await;
    let pki = TestPki::new("gateway test CA").unwrap();
    let server = pki.server("server").unwrap();
    let svc_a = pki.client("svc-a", "svc-a.team-a").unwrap();
    let stranger = pki.client("stranger", "nobody.example").unwrap();
    let other_pki = TestPki::new("another CA").unwrap();
    let untrusted = other_pki.client("untrusted", "svc-a.team-a").unwrap();
    let gw = gateway(&mlflow.url, "0", |cfg| {
        tls_gateway_config(cfg, &pki, &server, true);
        cfg.server.probe_addr = Some("127.0.0.1:0".into());
        cfg.auth.required = true;
        let mut t = tenant(&prefix);
        t.client_cert_subjects = vec!["svc-a.team-a".into()];
        cfg.tenants = vec![t];
    })
    .await;
    let (_, req) = turn();
    let without = post_https(
        &https(&pki.ca_file(), None),
        gw.otlp_http_addr,
        &req,
        Some(TOKEN),
    )
    .await;
    assert!(
        without.is_err(),
        "served without a client certificate: {without:?}"
    );
    let foreign = post_https(
        &https(&pki.ca_file(), Some(&untrusted)),
        gw.otlp_http_addr,
        &req,
        Some(TOKEN),
    )
    .await;
    assert!(
        foreign.is_err(),
        "served an untrusted certificate: {foreign:?}"
    );
    let grpc = match grpc_tls(
        gw.otlp_grpc_addr,
        client_tls(&pki.ca_file(), None, &[b"h2"]),
    )
    .await
    {
        Ok(mut client) => grpc_export(&mut client, req.clone(), Some(TOKEN)).await,
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(grpc.is_err(), "gRPC served without a client certificate");

    // A trusted certificate that names no tenant authenticates nobody.
    let (_, req) = turn();
    let status = post_https(
        &https(&pki.ca_file(), Some(&stranger)),
        gw.otlp_http_addr,
        &req,
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 401);

    // The tenant's certificate is its credential: no token needed, over HTTP and gRPC.
    let (trace_http, req) = turn();
    let status = post_https(
        &https(&pki.ca_file(), Some(&svc_a)),
        gw.otlp_http_addr,
        &req,
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (trace_grpc, req) = turn();
    let mut grpc = grpc_tls(
        gw.otlp_grpc_addr,
        client_tls(&pki.ca_file(), Some(&svc_a), &[b"h2"]),
    )
    .await
    .unwrap();
    grpc_export(&mut grpc, req, None)
        .await
        .expect("certificate names the tenant");
    for trace in [&trace_http, &trace_grpc] {
        mlflow.wait_spans(trace, 2).await;
        let info = mlflow.trace_info(trace).await.unwrap();
        assert_eq!(
            info["trace_location"]["mlflow_experiment"]["experiment_id"],
            exp.as_str()
        );
    }

    // Probes that cannot present a certificate use the plain probe port, which serves only
    // health and readiness.
    let probe = gw.probe_addr.expect("probe port");
    let plain = reqwest::Client::new();
    assert_eq!(
        plain
            .get(format!("http://{probe}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        plain
            .get(format!("http://{probe}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn certificates_rotate_without_a_restart_or_a_dropped_connection() {
    let pki = TestPki::new("first CA").unwrap();
    let first = pki.server("server").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = CertFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::copy(&first.cert, &files.cert).unwrap();
    std::fs::copy(&first.key, &files.key).unwrap();
    let gw = gateway(shared_mlflow(), "0", |cfg| {
        tls_gateway_config(cfg, &pki, &files, false)
    })
    .await;
    let health = |client: &reqwest::Client| {
        let url = format!("https://localhost:{}/healthz", gw.api_addr.port());
        let request = client.get(url);
        async move { request.send().await.map(|r| r.status().as_u16()) }
    };
    // HTTP/2 on one kept-alive connection, made with the first certificate.
    let old_client = https(&pki.ca_file(), None);
    assert_eq!(health(&old_client).await.unwrap(), 200);

    // cert-manager (or a Secret update) writes the new pair.
    let next_pki = TestPki::new("second CA").unwrap();
    let next = next_pki.server("server").unwrap();
    std::fs::copy(&next.cert, &files.cert).unwrap();
    std::fs::copy(&next.key, &files.key).unwrap();
    let started = Instant::now();
    loop {
        if matches!(health(&https(&next_pki.ca_file(), None)).await, Ok(200)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        health(&https(&pki.ca_file(), None)).await.is_err(),
        "new connections still get the old certificate"
    );
    // The connection made before the rotation is still served.
    assert_eq!(health(&old_client).await.unwrap(), 200);
    gw.shutdown().await;
}
