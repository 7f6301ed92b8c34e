//! `mlflow-otlp-gateway healthcheck`: asks the running gateway's `/healthz` and says whether it
//! answered 200. For container HEALTHCHECKs in images without a shell or curl, so it speaks
//! TLS itself when the API does, trusting exactly the certificate the gateway serves.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use rustls_pki_types::pem::PemObject;

use crate::config::{Addrs, Config};

/// How long the gateway has to answer.
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
    #[error("{addr}/healthz: {status}")]
    Unhealthy { addr: SocketAddr, status: String },
}

/// Checks the gateway started from `config`: on the probe port when there is one, else on the
/// API port (over TLS when the API speaks it).
pub fn healthcheck(config: &Config, addrs: &Addrs) -> Result<(), HealthcheckError> {
    if let Some(probe) = addrs.probe {
        return plain(local(probe));
    }
    let api = local(addrs.api);
    let Some(tls) = &config.server.tls else {
        return plain(api);
    };
    if tls.client_ca_file.is_some() {
        return Err(HealthcheckError::Tls(
            "mTLS is on, so the API port asks for a client certificate: set server.probe_addr \
             (a plain port for probes) and the healthcheck uses it"
                .into(),
        ));
    }
    let leaf = CertificateDer::pem_file_iter(&tls.cert_file)
        .ok()
        .and_then(|mut certs| certs.next())
        .and_then(Result::ok)
        .ok_or_else(|| {
            HealthcheckError::Tls(format!("no certificate in {}", tls.cert_file.display()))
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| HealthcheckError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExactCertificate { leaf, provider }))
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name =
        ServerName::try_from("localhost").map_err(|e| HealthcheckError::Tls(e.to_string()))?;
    let connection = ClientConnection::new(Arc::new(client), name)
        .map_err(|e| HealthcheckError::Tls(e.to_string()))?;
    let stream = connect(api)?;
    ask(api, StreamOwned::new(connection, stream))
}

/// A wildcard address is asked on loopback.
fn local(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

fn connect(addr: SocketAddr) -> Result<TcpStream, HealthcheckError> {
    let io = |source| HealthcheckError::Io { addr, source };
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    Ok(stream)
}

fn plain(addr: SocketAddr) -> Result<(), HealthcheckError> {
    ask(addr, connect(addr)?)
}

fn ask(addr: SocketAddr, mut stream: impl Read + Write) -> Result<(), HealthcheckError> {
    let io = |source| HealthcheckError::Io { addr, source };
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut reply = Vec::new();
    // A TLS peer that closes without close_notify is still an answer once the status is in.
    let read = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    let status = text.lines().next().unwrap_or_default().to_string();
    if status.split_whitespace().nth(1) == Some("200") {
        return Ok(());
    }
    read.map_err(io)?;
    Err(HealthcheckError::Unhealthy { addr, status })
}

/// Trusts one certificate, byte for byte: the one the gateway is configured to serve.
#[derive(Debug)]
struct ExactCertificate {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ExactCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the API serves another certificate than server.tls.cert_file".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
