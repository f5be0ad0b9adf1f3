//! TLS settings from command-line files: the control plane's server side, and the client
//! side every command that talks to the control plane uses (admin commands, `vane proxy`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !text.contains("-----BEGIN") {
        bail!("{what} {} is not PEM", path.display());
    }
    Ok(text)
}

/// Client-side TLS flags (global).
#[derive(Clone, Debug, Default, clap::Args)]
pub(crate) struct ClientTlsArgs {
    /// CA certificate (PEM) that signed the control plane's certificate; the system roots
    /// are trusted too.
    #[arg(long, global = true, env = "VANE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, global = true, env = "VANE_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Key of the client certificate (PEM).
    #[arg(long, global = true, env = "VANE_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// The TLS config for `url`: `None` for plaintext `http://` without TLS flags.
    pub(crate) fn config(&self, url: &str) -> anyhow::Result<Option<ClientTlsConfig>> {
        let wanted = url.starts_with("https://") || self.ca_cert.is_some() || self.client_cert.is_some();
        if !wanted {
            return Ok(None);
        }
        if !url.starts_with("https://") {
            bail!("TLS flags were given but the control-plane url '{url}' is not https://");
        }
        let mut config = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &self.ca_cert {
            config = config.ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?));
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            config = config.identity(Identity::from_pem(read(cert, "client certificate")?, read(key, "client key")?));
        }
        Ok(Some(config))
    }
}

/// Server-side TLS flags of `vane control-plane`.
#[derive(Clone, Debug, Default, clap::Args)]
pub(crate) struct ServerTlsArgs {
    /// Serve gRPC over TLS with this certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS) from the CLI and nodes.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: accept clients without a certificate too.
    #[arg(long, requires = "tls_client_ca")]
    tls_client_auth_optional: bool,
}

impl ServerTlsArgs {
    pub(crate) fn config(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(read(cert, "certificate")?, read(key, "key")?));
        if let Some(ca) = &self.tls_client_ca {
            config = config
                .client_ca_root(Certificate::from_pem(read(ca, "client CA certificate")?))
                .client_auth_optional(self.tls_client_auth_optional);
        }
        Ok(Some(config))
    }
}
