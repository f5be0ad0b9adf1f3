//! TLS for the end-to-end tests: a test CA issuing server and client certificates at test
//! time (rcgen), a TLS client that reports which certificate and ALPN protocol it got, and
//! a TLS echo upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::Reply;

/// A certificate authority made for one test.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A PEM certificate and its PEM key.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl Issued {
    /// DER of the leaf, to compare with what a handshake presented.
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_slice(self.cert.as_bytes()).expect("issued pem").to_vec()
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("ca cert").pem();
        TestCa { pem, issuer: Issuer::new(params, key) }
    }

    /// A server certificate for these DNS names (or IP addresses).
    pub fn server(&self, names: &[&str]) -> Issued {
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("sans");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("server"));
        self.issue(params)
    }

    /// A client certificate with this common name and URI SAN.
    pub fn client(&self, common_name: &str, uri: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri san"))];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Issued { cert: cert.pem(), key: key.serialize_pem() }
    }
}

/// A root store of every certificate in a PEM bundle.
fn root_store(pem: &str) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        store.add(c.expect("CA pem")).expect("CA certificate");
    }
    store
}

/// Trusts every server certificate: for tests that look at which one was served.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client: verifying against `roots` (PEM) or accepting anything, with an optional
/// client certificate, offering `alpn`.
#[derive(Clone, Debug)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

impl TlsClient {
    pub fn new(roots: Option<&str>, client: Option<&Issued>, alpn: &[&str]) -> TlsClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match roots {
            Some(pem) => builder.with_root_certificates(root_store(pem)),
            None => builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider))),
        };
        let mut config = match client {
            Some(c) => {
                let chain =
                    CertificateDer::pem_slice_iter(c.cert.as_bytes()).collect::<Result<Vec<_>, _>>().expect("chain");
                let key = PrivateKeyDer::from_pem_slice(c.key.as_bytes()).expect("key");
                builder.with_client_auth_cert(chain, key).expect("client cert")
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        TlsClient { config: Arc::new(config) }
    }

    /// Connects and completes a handshake sending `sni`.
    pub async fn connect(&self, addr: SocketAddr, sni: &str) -> anyhow::Result<TlsConn> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(sni.to_owned())?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .context("handshake timed out")??;
        let (_, conn) = stream.get_ref();
        let peer = conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
        let alpn = conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let io = TokioIo::new(stream);
        let sender = if alpn.as_deref() == Some("h2") {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(TlsConn { peer, alpn, resumed, sender })
    }

    /// One request on a new connection.
    pub async fn get(&self, addr: SocketAddr, sni: &str, path: &str) -> anyhow::Result<Reply> {
        self.connect(addr, sni).await?.get(sni, path, &[]).await
    }
}

#[derive(Debug)]
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// An open TLS connection to Vane.
#[derive(Debug)]
pub struct TlsConn {
    /// DER of the leaf certificate the server presented.
    pub peer: Vec<u8>,
    /// The ALPN protocol agreed, if any.
    pub alpn: Option<String>,
    /// The handshake resumed an earlier session (no certificate was sent).
    pub resumed: bool,
    sender: Sender,
}

impl TlsConn {
    /// A GET on this connection with `Host: host` and extra headers.
    pub async fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        let h2 = matches!(self.sender, Sender::H2(_));
        let mut req = if h2 {
            Request::get(format!("https://{host}{path}")).version(http::Version::HTTP_2)
        } else {
            Request::get(path).header(http::header::HOST, host)
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::default())?;
        let response = tokio::time::timeout(Duration::from_secs(10), async {
            match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
            }
        })
        .await
        .context("request timed out")??;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() })
    }
}

/// An HTTPS upstream: answers `tls-backend <name>` with the request's version, and the
/// subject of the client certificate it was shown (when it asks for one).
#[derive(Debug)]
pub struct TlsBackend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsBackend {
    /// Serves `cert`; with `client_ca`, requires client certificates signed by it.
    pub async fn start(name: &str, cert: &Issued, client_ca: Option<&str>) -> TlsBackend {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(pem) => {
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(pem)), provider)
                        .build()
                        .expect("verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = CertificateDer::pem_slice_iter(cert.cert.as_bytes()).collect::<Result<Vec<_>, _>>().expect("chain");
        let key = PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).expect("key");
        let mut config = builder.with_single_cert(chain, key).expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let name: Arc<str> = name.into();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                while connections.try_join_next().is_some() {}
                let (acceptor, name) = (acceptor.clone(), name.clone());
                connections.spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let client = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|der| vane_proto::tls::inspect(der).ok())
                        .map(|i| i.subject)
                        .unwrap_or_else(|| "-".into());
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let body = format!("tls-backend {name}\nversion {:?}\nclient {client}\n", req.version());
                        async move { Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        TlsBackend { addr, task }
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
