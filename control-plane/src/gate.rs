//! The gate every gRPC call passes before a service reads its body: a tower layer around
//! the whole server.
//!
//! - **Tokens first.** The role a call needs follows from its path (writes, reads, the
//!   discovery stream); a call without an allowed token is answered at once and its body
//!   is never read. Services decode a message whole before their handler runs, so a check
//!   in the handler came after buffering: four parallel 250 MiB requests without a token
//!   took the control plane from 13 MB to 1.1 GB. The handlers still check (and learn the
//!   author's name) as before. Health and reflection stay open, as stock tools expect.
//! - **Garbage is the client's fault.** tonic answers a body that is not the protobuf it
//!   should be with INTERNAL (gRPC's own convention for a parse failure); the admin API
//!   says INVALID_ARGUMENT, since the request is what is wrong and retrying it cannot help.
//! - **Statuses fit in headers.** A status answered in headers (every unary error) whose
//!   message or details would pass what HTTP/2 peers accept (16 KiB by default) is cut
//!   down, so the client gets the code and the start of the reason instead of
//!   `h2 protocol error`. The admin API's own statuses are already bounded (see `status`);
//!   this covers the rest.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::{Code, Status};
use tracing::warn;

use crate::auth::{Role, Tokens};
use crate::status;

/// The layer; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct Gate {
    tokens: Arc<Tokens>,
}

impl Gate {
    pub(crate) fn new(tokens: Tokens) -> Gate {
        Gate { tokens: Arc::new(tokens) }
    }
}

impl<S> tower_layer::Layer<S> for Gate {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> GateService<S> {
        GateService { inner, tokens: self.tokens.clone() }
    }
}

/// The gate around one service (in practice, tonic's router).
#[derive(Clone, Debug)]
pub(crate) struct GateService<S> {
    inner: S,
    tokens: Arc<Tokens>,
}

/// The role a call needs, from its path; `None` for services open to all.
fn needs(path: &str) -> Option<Role> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    match service {
        "vane.admin.v1.ConfigService" => match method {
            // A backup holds private keys: as much as a write may set.
            "Apply" | "Put" | "Delete" | "Rollback" | "SetEndpointDrain" | "Backup" => Some(Role::Write),
            _ => Some(Role::Read),
        },
        "vane.discovery.v1.DiscoveryService" => Some(Role::Node),
        _ => None,
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for GateService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(need) = needs(request.uri().path()) {
            let token = request.headers().get(http::header::AUTHORIZATION).map(http::HeaderValue::as_bytes);
            if let Err(refused) = self.tokens.check(token, need) {
                warn!(path = request.uri().path(), code = ?refused.code(), reason = refused.message(), "call refused");
                // The body is dropped unread: the stream is reset, nothing is buffered.
                return Box::pin(std::future::ready(Ok(refused.into_http())));
            }
        }
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            if let Some(status) = Status::from_header_map(response.headers())
                && let Some(better) = rewrite(&status, response.headers())
            {
                let headers = response.headers_mut();
                for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
                    headers.remove(name);
                }
                if let Err(error) = better.add_header(headers) {
                    warn!(%error, "status headers could not be written");
                }
                response.extensions_mut().insert(better);
            }
            Ok(response)
        })
    }
}

/// Largest `grpc-message` plus `grpc-status-details-bin`, as sent, let through unchanged.
const MAX_STATUS_HEADERS: usize = 14 * 1024;

/// The status to send instead of `status`, when it must change.
fn rewrite(status: &Status, headers: &http::HeaderMap) -> Option<Status> {
    let sent = |name: &str| headers.get(name).map_or(0, |v| v.len());
    let too_big = sent("grpc-message") + sent("grpc-status-details-bin") > MAX_STATUS_HEADERS;
    // tonic-prost's text for a body that does not decode (prost::DecodeError).
    let garbage = status.code() == Code::Internal && status.message().starts_with("failed to decode Protobuf message");
    if !too_big && !garbage {
        return None;
    }
    let code = if garbage { Code::InvalidArgument } else { status.code() };
    let message = if garbage {
        format!("the request body is not a valid message: {}", status.message())
    } else {
        status.message().to_owned()
    };
    let bounded = status::bounded(code, &message);
    Some(if !garbage && status.details().len() <= status::MAX_DETAILS {
        Status::with_details(code, bounded.message(), status.details().to_vec().into())
    } else {
        bounded
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_from_the_path() {
        assert_eq!(needs("/vane.admin.v1.ConfigService/Apply"), Some(Role::Write));
        assert_eq!(needs("/vane.admin.v1.ConfigService/Rollback"), Some(Role::Write));
        assert_eq!(needs("/vane.admin.v1.ConfigService/Backup"), Some(Role::Write));
        assert_eq!(needs("/vane.admin.v1.ConfigService/SetEndpointDrain"), Some(Role::Write));
        assert_eq!(needs("/vane.admin.v1.ConfigService/List"), Some(Role::Read));
        assert_eq!(needs("/vane.discovery.v1.DiscoveryService/Stream"), Some(Role::Node));
        assert_eq!(needs("/grpc.health.v1.Health/Check"), None);
        assert_eq!(needs("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"), None);
        assert_eq!(needs("garbage"), None);
    }

    #[test]
    fn a_decode_failure_becomes_invalid_argument_and_big_statuses_shrink() {
        let headers = http::HeaderMap::new();
        let garbage = Status::internal("failed to decode Protobuf message: invalid wire type");
        let better = rewrite(&garbage, &headers).unwrap();
        assert_eq!(better.code(), Code::InvalidArgument);
        assert!(better.message().ends_with("invalid wire type"), "{}", better.message());
        assert!(rewrite(&Status::internal("store failed"), &headers).is_none());

        let huge = Status::not_found("x".repeat(100_000));
        let mut headers = http::HeaderMap::new();
        huge.add_header(&mut headers).unwrap();
        let better = rewrite(&huge, &headers).unwrap();
        assert_eq!(better.code(), Code::NotFound);
        assert!(better.message().len() <= status::MAX_MESSAGE);
    }
}
