//! Who is on the other end of a connection: its address and, with mTLS, its certificate's
//! identities.

use std::net::SocketAddr;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The identities a verified client certificate carries: its subject's common names and its
/// DNS, email and URI subject alternative names. Tenants name theirs in
/// `client_cert_subjects`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    pub subjects: Vec<String>,
}

impl ClientIdentity {
    /// The identities of the leaf certificate (already verified by the handshake); empty if it
    /// cannot be read.
    pub fn from_leaf(cert: &CertificateDer<'_>) -> Self {
        let Ok((_, cert)) = X509Certificate::from_der(cert.as_ref()) else {
            return Self::default();
        };
        let mut subjects: Vec<String> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_string))
            .collect();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                        subjects.push((*s).to_string())
                    }
                    _ => {}
                }
            }
        }
        Self { subjects }
    }
}

/// A connection's peer, as the handlers see it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// With mTLS, the client certificate's identities.
    pub identity: Option<ClientIdentity>,
}

impl PeerInfo {
    /// The certificate's subjects, empty without one.
    pub fn cert_subjects(&self) -> &[String] {
        self.identity.as_ref().map_or(&[], |i| &i.subjects)
    }
}
