//! TLS server configuration for STARTTLS (rustls with the `ring` provider).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, Error> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Loads a PEM certificate chain and private key.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
    server_config(certs, key)
}

/// A self-signed certificate for `hostname`, made at start-up when no certificate is
/// configured, so STARTTLS (and AUTH after it) work on embedded defaults. Clients that
/// verify certificates will refuse it: configure a real one in production.
pub fn self_signed(hostname: &str) -> Result<Arc<ServerConfig>, Error> {
    let cert = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .map_err(|e| Error::Tls(e.to_string()))?;
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der())
        .map_err(|e| Error::Tls(e.to_string()))?;
    server_config(vec![cert.cert.der().clone()], key)
}
