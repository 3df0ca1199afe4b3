//! TLS client configurations (rustls with the ring provider).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::RelayError;
use crate::smtp::TlsSetup;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Opportunistic TLS (Postfix's `may`): encrypt against passive listeners without
/// authenticating the hop, since an unauthenticated hop would otherwise get plain text.
/// The handshake signatures are still checked, so the session key belongs to the presented
/// certificate.
#[derive(Debug)]
struct EncryptOnly {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Builds both client configurations. `ca_file` (PEM) holds the roots that hops with
/// `tls = required` must chain to.
pub(crate) fn setup(ca_file: Option<&Path>) -> Result<TlsSetup, RelayError> {
    let tls_err = |e: rustls::Error| RelayError::Tls(e.to_string());
    let verified = match ca_file {
        None => None,
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                RelayError::Config(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    RelayError::Config(format!("bad certificate in {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(tls_err)?;
            }
            if roots.is_empty() {
                return Err(RelayError::Config(format!(
                    "no certificate in CA file {}",
                    path.display()
                )));
            }
            let config = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(tls_err)?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(Arc::new(config))
        }
    };
    let p = provider();
    let verifier = EncryptOnly {
        algorithms: p.signature_verification_algorithms,
    };
    let opportunistic = rustls::ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(TlsSetup {
        verified,
        opportunistic: Arc::new(opportunistic),
    })
}
