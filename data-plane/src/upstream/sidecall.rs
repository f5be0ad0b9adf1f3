//! The one HTTP client builder for calls a node makes on its own behalf: active health
//! checks, JWKS fetches, token introspection and external authorization.
//!
//! Why one: these were three clients built three ways (one named the crypto provider,
//! one relied on a process default, one read the system roots itself). Now every side
//! call uses the provider every Vane connection uses (`vane_proto::tls::provider`) and one
//! copy of the system roots (`crate::tls::system_roots`, read once per process); a health
//! check of a TLS cluster uses that cluster's own upstream TLS (CA, SNI, client
//! certificate), like its requests.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::tls::UpstreamTls;

/// A side-call client sending bodies of type `B`.
pub(crate) type SideClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// A client whose connections time out after `connect_timeout` and idle for at most
/// `idle`. `tls`: a cluster's upstream TLS; `None`: `https` URLs verified against the
/// system roots (reading them touches the disk once per process: call this off the
/// request path).
pub(crate) fn client<B>(tls: Option<&UpstreamTls>, connect_timeout: Duration, idle: Duration) -> SideClient<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let connector = match tls {
        Some(tls) => crate::tls::connector(http, Some(tls), false),
        None => crate::tls::public_connector(http),
    };
    Client::builder(TokioExecutor::new()).pool_idle_timeout(idle).build(connector)
}
