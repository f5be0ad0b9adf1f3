//! Admin commands: each reads its input, makes one admin API call and prints the answer.

use std::error::Error as _;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use vane_proto::admin::config_service_client::ConfigServiceClient;
use vane_proto::admin::{
    ApplyRequest, ApplyResponse, DeleteRequest, DiffRequest, GetRequest, HistoryRequest, Kind, ListNodesRequest,
    ListRequest, PutRequest, Resource, RollbackRequest, SetEndpointDrainRequest, ValidateRequest, ValidateResponse,
};
use vane_proto::config::Config;
use vane_proto::prost::Message;
use vane_proto::text::escape_controls;
use vane_proto::{Format, load};

use crate::Output;
use crate::output;

/// Largest message the CLI accepts, and sends (a config past the control plane's limit
/// is refused here, before it is sent), as the control plane.
const MAX_MESSAGE_BYTES: usize = vane_control_plane::MAX_MESSAGE_BYTES;
const MAX_REQUEST_BYTES: usize = vane_control_plane::MAX_REQUEST_BYTES;

#[derive(Debug)]
pub(crate) struct Admin {
    server: String,
    token: Option<String>,
    tls: crate::tls::ClientTlsArgs,
}

/// Turns a gRPC error into one line a user can act on. A refused config is told from
/// Vane's own detail in the status (see [`validation_detail`]), else from the message;
/// control characters are escaped either way (the text may quote a config or a name).
pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    let message = escape_controls(status.message()).into_owned();
    match status.code() {
        tonic::Code::Unavailable => anyhow!("control plane unavailable: {message}"),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            anyhow!("not allowed: {message} (check --token / VANE_TOKEN)")
        }
        tonic::Code::InvalidArgument => match validation_detail(&status) {
            Some(detail) if !detail.errors.is_empty() => {
                let mut line = format!("invalid config: {}", problems(&detail.errors));
                if detail.more_errors > 0 {
                    line.push_str(&format!(
                        " (and {} more problems; vane validate lists them all)",
                        detail.more_errors
                    ));
                }
                anyhow!("{line}")
            }
            _ => anyhow!("{message}"),
        },
        _ => anyhow!("{message}"),
    }
}

/// Type URL of the `ValidateResponse` a refused config carries in its details.
const VALIDATE_RESPONSE_TYPE_URL: &str = "type.googleapis.com/vane.admin.v1.ValidateResponse";

/// Vane's own detail of a refused config: a `ValidateResponse` packed as an `Any` in the
/// `google.rpc.Status` of `grpc-status-details-bin` (beside a standard `BadRequest`).
fn validation_detail(status: &tonic::Status) -> Option<ValidateResponse> {
    let rpc = tonic_types::pb::Status::decode(status.details()).ok()?;
    let any = rpc.details.iter().find(|a| a.type_url == VALIDATE_RESPONSE_TYPE_URL)?;
    ValidateResponse::decode(any.value.as_slice()).ok()
}

/// `route 'api': forward.clusters[0].name: unknown cluster 'nope'; ...`, escaped.
fn problems(errors: &[vane_proto::config::ValidationError]) -> String {
    let list: Vec<String> =
        errors.iter().map(|e| format!("{} '{}': {}: {}", e.kind, e.name, e.field, e.message)).collect();
    escape_controls(&list.join("; ")).into_owned()
}

/// How long the CLI waits for a connection to the control plane, and for an answer.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl Admin {
    pub(crate) fn new(server: String, token: Option<String>, tls: crate::tls::ClientTlsArgs) -> Admin {
        Admin { server, token, tls }
    }

    pub(crate) async fn client(&self) -> anyhow::Result<ConfigServiceClient<Channel>> {
        // Bounded: an address that accepts but never answers (a wrong port, a TLS
        // mismatch) fails with an error instead of leaving the command hanging.
        let mut endpoint = Channel::from_shared(self.server.clone())
            .with_context(|| format!("invalid --server url '{}'", self.server))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        if let Some(tls) = self.tls.config(&self.server)? {
            endpoint = endpoint.tls_config(tls).context("tls settings")?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            // tonic's own message ("transport error") says nothing its causes do not.
            let cause = e.source().map_or_else(|| e.to_string(), vane_proto::text::error_chain);
            anyhow!("cannot reach control plane at {}: {cause}", self.server)
        })?;
        Ok(ConfigServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_REQUEST_BYTES))
    }

    pub(crate) fn request<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            let value: MetadataValue<_> =
                format!("Bearer {token}").parse().map_err(|_| anyhow!("the token holds characters a header cannot"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }

    pub(crate) async fn apply(&self, file: &Path, flags: ApplyFlags) -> anyhow::Result<()> {
        let ApplyFlags { dry_run, expected_version, allow_empty } = flags;
        let config = read_config(file)?;
        let request = self.request(ApplyRequest { config: Some(config), dry_run, expected_version, allow_empty })?;
        let response = self.client().await?.apply(request).await.map_err(status_error)?.into_inner();
        print_change(&response, dry_run)?;
        Ok(())
    }

    pub(crate) async fn put(&self, resource: Resource, dry_run: bool) -> anyhow::Result<()> {
        let request = self.request(PutRequest { resource: Some(resource), expected_version: 0, dry_run })?;
        let response = self.client().await?.put(request).await.map_err(status_error)?.into_inner();
        print_change(&response, dry_run)?;
        Ok(())
    }

    pub(crate) async fn delete(&self, kind: &str, name: &str, dry_run: bool) -> anyhow::Result<()> {
        let kind = parse_kind(kind)?;
        if kind == Kind::Unspecified {
            bail!("give the kind to delete: listener, route, cluster or certificate");
        }
        self.delete_kind(kind, name, dry_run).await
    }

    pub(crate) async fn delete_kind(&self, kind: Kind, name: &str, dry_run: bool) -> anyhow::Result<()> {
        let request =
            self.request(DeleteRequest { kind: kind as i32, name: name.to_owned(), expected_version: 0, dry_run })?;
        let response = self.client().await?.delete(request).await.map_err(status_error)?.into_inner();
        print_change(&response, dry_run)?;
        Ok(())
    }

    pub(crate) async fn rollback(&self, version: u64, dry_run: bool, expected_version: u64) -> anyhow::Result<()> {
        let request = self.request(RollbackRequest { version, expected_version, dry_run })?;
        let response = self.client().await?.rollback(request).await.map_err(status_error)?.into_inner();
        print_change(&response, dry_run)?;
        Ok(())
    }

    pub(crate) async fn set_endpoint_drain(&self, message: SetEndpointDrainRequest) -> anyhow::Result<()> {
        let dry_run = message.dry_run;
        let request = self.request(message)?;
        let response = self.client().await?.set_endpoint_drain(request).await.map_err(status_error)?.into_inner();
        print_change(&response, dry_run)?;
        Ok(())
    }

    pub(crate) async fn diff(&self, file: &Path, out: Output) -> anyhow::Result<()> {
        let config = read_config(file)?;
        let request = self.request(DiffRequest { config: Some(config) })?;
        let response = self.client().await?.diff(request).await.map_err(status_error)?.into_inner();
        out!("{}", output::diff(&response, out))?;
        // What would change is shown either way; a file that apply would refuse fails the
        // command with what `vane validate` says of it.
        if !response.errors.is_empty() {
            bail!("invalid config: {}", problems(&response.errors))
        }
        Ok(())
    }

    pub(crate) async fn validate(&self, file: &Path) -> anyhow::Result<()> {
        let config = read_config(file)?;
        let request = self.request(ValidateRequest { config: Some(config) })?;
        let response = self.client().await?.validate(request).await.map_err(status_error)?.into_inner();
        if response.valid {
            outln!("valid")?;
            return Ok(());
        }
        bail!("invalid config: {}", problems(&response.errors))
    }

    pub(crate) async fn get(&self, kind: &str, name: Option<&str>, out: Output) -> anyhow::Result<()> {
        let kind = parse_kind(kind)?;
        let mut client = self.client().await?;
        let (version, config) = match name {
            Some(name) => {
                if kind == Kind::Unspecified {
                    bail!("give a kind (listener, route, cluster) to get one resource by name");
                }
                let request = self.request(GetRequest { kind: kind as i32, name: name.to_owned() })?;
                let r = client.get(request).await.map_err(status_error)?.into_inner();
                (r.version, r.config.unwrap_or_default())
            }
            None => {
                let request = self.request(ListRequest { kind: kind as i32, version: 0 })?;
                let r = client.list(request).await.map_err(status_error)?.into_inner();
                (r.version, r.config.unwrap_or_default())
            }
        };
        out!("{}", output::config(&config, kind, version, out))?;
        Ok(())
    }

    pub(crate) async fn nodes(&self, out: Output) -> anyhow::Result<()> {
        let request = self.request(ListNodesRequest {})?;
        let response = self.client().await?.list_nodes(request).await.map_err(status_error)?.into_inner();
        out!("{}", output::nodes(&response, out))?;
        Ok(())
    }

    pub(crate) async fn history(&self, out: Output) -> anyhow::Result<()> {
        let request = self.request(HistoryRequest { limit: 0 })?;
        let response = self.client().await?.history(request).await.map_err(status_error)?.into_inner();
        out!("{}", output::history(&response, out))?;
        Ok(())
    }
}

/// How `vane apply` applies.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ApplyFlags {
    pub(crate) dry_run: bool,
    /// 0: any.
    pub(crate) expected_version: u64,
    /// Apply a config with no resources (removes everything).
    pub(crate) allow_empty: bool,
}

fn print_change(response: &ApplyResponse, dry_run: bool) -> std::io::Result<()> {
    let summary = escape_controls(&response.summary);
    if response.unchanged {
        outln!("unchanged: version {} already holds this config", response.version)?;
    } else if dry_run {
        outln!("dry run: valid; would change: {summary}")?;
    } else {
        outln!("applied version {}: {summary}", response.version)?;
    }
    Ok(())
}

/// Reads a YAML or JSON config file (`-`: standard input, YAML).
pub(crate) fn read_config(file: &Path) -> anyhow::Result<Config> {
    let (text, format) = if file.as_os_str() == "-" {
        (std::io::read_to_string(std::io::stdin()).context("reading standard input")?, Format::Yaml)
    } else {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        (text, Format::from_path(file))
    };
    load(&text, format).with_context(|| format!("{}", file.display()))
}

fn parse_kind(kind: &str) -> anyhow::Result<Kind> {
    Ok(match kind.to_ascii_lowercase().as_str() {
        "listener" | "listeners" => Kind::Listener,
        "route" | "routes" => Kind::Route,
        "cluster" | "clusters" => Kind::Cluster,
        "certificate" | "certificates" | "cert" | "certs" => Kind::Certificate,
        "policy" | "policies" => Kind::Policy,
        "consumer" | "consumers" => Kind::Consumer,
        "cache" | "caches" => Kind::Cache,
        "compression" | "compressions" => Kind::Compression,
        "all" | "config" => Kind::Unspecified,
        other => {
            bail!(
                "unknown kind '{other}': use listeners, routes, clusters, certificates, policies, consumers, caches, compressions or all"
            )
        }
    })
}
