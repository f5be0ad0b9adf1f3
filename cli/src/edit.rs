//! One-resource commands (`vane route ...`, `vane cluster ...`, `vane endpoint ...`,
//! `vane certificate ...`) and `vane token new`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use vane_proto::admin::{Kind, Resource, SetEndpointDrainRequest, resource};
use vane_proto::config::cluster::UpstreamProtocol;
use vane_proto::config::data_source::Specifier;
use vane_proto::config::{ApiKey, BasicCredential, Consumer, api_key};
use vane_proto::config::{
    Certificate, Cluster, DataSource, Endpoint, Forward, Route, RouteMatch, WeightedCluster, route, route_match,
};

use crate::client::Admin;

#[derive(Debug, Subcommand)]
pub(crate) enum RouteCommand {
    /// Add a route, or replace the route of that name.
    Add(Box<RouteAdd>),
    /// Delete a route.
    Delete {
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct RouteAdd {
    name: String,
    /// Match paths starting with this.
    #[arg(long, group = "path", required = true)]
    prefix: Option<String>,
    /// Match this path only.
    #[arg(long, group = "path")]
    exact: Option<String>,
    /// Match this path and paths below it (`/api`, `/api/...`, not `/apix`).
    #[arg(long, group = "path")]
    path_separated_prefix: Option<String>,
    /// Match paths the whole of which match this regular expression.
    #[arg(long, group = "path")]
    regex: Option<String>,
    /// Match a template such as `/users/{id}`.
    #[arg(long, group = "path")]
    template: Option<String>,
    /// Host to match (`shop.example.com`, `*.example.com`); repeatable.
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// HTTP method to match; repeatable.
    #[arg(long = "method")]
    methods: Vec<String>,
    /// Cluster to forward to, `NAME` or `NAME=WEIGHT`; repeat to split traffic.
    #[arg(long = "cluster", required = true)]
    clusters: Vec<String>,
    /// Upstream timeout, e.g. `5s` or `500ms`.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Attach to this listener only; repeatable (default: every HTTP listener).
    #[arg(long = "listener")]
    listeners: Vec<String>,
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Add a cluster, or replace the cluster of that name.
    Add(ClusterAdd),
    /// Delete a cluster (refused while a route uses it).
    Delete {
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EndpointCommand {
    /// Drain an endpoint: no new requests go to it, those in flight finish (a new version;
    /// every node follows).
    Drain(EndpointTarget),
    /// Put a drained endpoint back into rotation (with the cluster's slow start, if any).
    Undrain(EndpointTarget),
}

#[derive(Debug, Args)]
pub(crate) struct EndpointTarget {
    /// The cluster.
    cluster: String,
    /// The endpoint's address as the config spells it (`IP:PORT` or `HOSTNAME:PORT`).
    address: String,
    /// Refuse unless the latest version is this one.
    #[arg(long)]
    expected_version: Option<u64>,
    /// Validate and show what would change; store nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Policy {
    RoundRobin,
    Random,
    LeastRequest,
    RingHash,
    Maglev,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum UpstreamProto {
    Http1,
    Http2,
    Auto,
}

#[derive(Debug, Args)]
pub(crate) struct ClusterAdd {
    name: String,
    /// Upstream `IP:PORT` or `IP:PORT=WEIGHT`; repeatable.
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<String>,
    #[arg(long, value_enum, default_value_t = Policy::RoundRobin)]
    lb_policy: Policy,
    /// Circuit breaker: most requests in flight to the cluster (per node).
    #[arg(long)]
    max_requests: Option<u32>,
    /// Ring hash / Maglev: hash this request header (default: the client address).
    #[arg(long, group = "hash")]
    hash_header: Option<String>,
    /// Ring hash / Maglev: hash this cookie.
    #[arg(long, group = "hash")]
    hash_cookie: Option<String>,
    /// Ring hash / Maglev: hash the path.
    #[arg(long, group = "hash")]
    hash_path: bool,
    /// HTTP version towards the endpoints (http2 for gRPC; auto: as the client spoke).
    #[arg(long, value_enum, default_value_t = UpstreamProto::Http1)]
    protocol: UpstreamProto,
    /// e.g. `2s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
    /// Speak TLS to the endpoints (verified against the system roots or --tls-ca-file).
    #[arg(long)]
    tls: bool,
    /// Server name sent and verified (default: the endpoint host).
    #[arg(long, requires = "tls")]
    tls_sni: Option<String>,
    /// PEM bundle of the CAs to trust for the endpoints, read here and stored inline.
    #[arg(long, requires = "tls")]
    tls_ca_file: Option<PathBuf>,
    /// A certificate resource to present as the client certificate.
    #[arg(long, requires = "tls")]
    tls_client_certificate: Option<String>,
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConsumerCommand {
    /// Add a consumer, or replace the one of that name.
    Add(ConsumerAdd),
    /// Delete a consumer.
    Delete {
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ConsumerAdd {
    name: String,
    /// An API key (at least 8 characters); repeatable. Only its SHA-256 is stored.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Basic auth user name (with --basic-password).
    #[arg(long, requires = "basic_password")]
    basic_user: Option<String>,
    /// Basic auth password: hashed here with bcrypt; the password never leaves this machine.
    #[arg(long, requires = "basic_user", env = "VANE_BASIC_PASSWORD")]
    basic_password: Option<String>,
    /// A JWT `sub` or introspection subject that is this consumer; repeatable.
    #[arg(long = "subject")]
    subjects: Vec<String>,
    /// Metadata sent upstream as `x-consumer-KEY: VALUE`; repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertificateCommand {
    /// Add a certificate, or replace the one of that name (rotation).
    Add(CertificateAdd),
    /// Delete a certificate (refused while a listener or cluster uses it).
    Delete {
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CertificateAdd {
    name: String,
    /// PEM chain, leaf first.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key of the leaf.
    #[arg(long)]
    key: PathBuf,
    /// Store the two paths, for every node to read from its own disk, instead of
    /// the PEM content (which is then checked by the control plane at once).
    #[arg(long)]
    on_node: bool,
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Print a new random token (line 1) and its token-file entry (line 2); with
    /// `--add-to FILE`, add the entry to FILE and print only the token.
    New {
        /// Who uses it; shown as the author in `vane history`.
        name: String,
        #[arg(long, value_enum)]
        role: TokenRole,
        /// Append the entry to this token file (created, readable by its owner only, with
        /// its directory when missing) and print only the token, so that
        /// `TOKEN=$(vane token new ops --role write --add-to tokens)` keeps it. The control
        /// plane reads the file when it starts.
        #[arg(long, value_name = "FILE")]
        add_to: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum TokenRole {
    Read,
    Write,
    Node,
}

fn proto_duration(d: Duration) -> pbjson_types::Duration {
    pbjson_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// `NAME=WEIGHT` or `NAME`; the split is on the last `=` so names stay free-form.
fn weighted(spec: &str) -> anyhow::Result<(String, u32)> {
    match spec.rsplit_once('=') {
        Some((name, weight)) => {
            let weight = weight.parse().map_err(|_| anyhow!("'{spec}': the weight after '=' must be a number"))?;
            Ok((name.to_owned(), weight))
        }
        None => Ok((spec.to_owned(), 0)),
    }
}

pub(crate) async fn route(admin: &Admin, command: RouteCommand) -> anyhow::Result<()> {
    match command {
        RouteCommand::Delete { name, dry_run } => admin.delete_kind(Kind::Route, &name, dry_run).await,
        RouteCommand::Add(add) => {
            let add = *add;
            let path = if let Some(p) = add.prefix {
                route_match::Path::Prefix(p)
            } else if let Some(p) = add.exact {
                route_match::Path::Exact(p)
            } else if let Some(p) = add.path_separated_prefix {
                route_match::Path::PathSeparatedPrefix(p)
            } else if let Some(p) = add.regex {
                route_match::Path::Regex(p)
            } else if let Some(p) = add.template {
                route_match::Path::Template(p)
            } else {
                bail!("give one of --prefix, --exact, --path-separated-prefix, --regex or --template");
            };
            let clusters = add
                .clusters
                .iter()
                .map(|c| weighted(c).map(|(name, weight)| WeightedCluster { name, weight }))
                .collect::<anyhow::Result<_>>()?;
            let route = Route {
                name: add.name,
                r#match: Some(RouteMatch {
                    path: Some(path),
                    hosts: add.hosts,
                    methods: add.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                    ..Default::default()
                }),
                action: Some(route::Action::Forward(Forward {
                    clusters,
                    timeout: add.timeout.map(proto_duration),
                    ..Default::default()
                })),
                listeners: add.listeners,
                ..Default::default()
            };
            admin.put(Resource { resource: Some(resource::Resource::Route(route)) }, add.dry_run).await
        }
    }
}

pub(crate) async fn cluster(admin: &Admin, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Delete { name, dry_run } => admin.delete_kind(Kind::Cluster, &name, dry_run).await,
        ClusterCommand::Add(add) => {
            let endpoints = add
                .endpoints
                .iter()
                .map(|e| weighted(e).map(|(address, weight)| Endpoint { address, weight, ..Default::default() }))
                .collect::<anyhow::Result<_>>()?;
            let lb_policy = match add.lb_policy {
                Policy::RoundRobin => vane_proto::config::cluster::LbPolicy::RoundRobin,
                Policy::Random => vane_proto::config::cluster::LbPolicy::Random,
                Policy::LeastRequest => vane_proto::config::cluster::LbPolicy::LeastRequest,
                Policy::RingHash => vane_proto::config::cluster::LbPolicy::RingHash,
                Policy::Maglev => vane_proto::config::cluster::LbPolicy::Maglev,
            };
            use vane_proto::config::hash_policy::Key;
            let key = match (add.hash_header, add.hash_cookie, add.hash_path) {
                (Some(h), _, _) => Some(Key::Header(h)),
                (None, Some(c), _) => Some(Key::Cookie(c)),
                (None, None, true) => Some(Key::Path(true)),
                _ => None,
            };
            let cluster = Cluster {
                name: add.name,
                lb_policy: lb_policy as i32,
                endpoints,
                connect_timeout: add.connect_timeout.map(proto_duration),
                protocol: match add.protocol {
                    UpstreamProto::Http1 => UpstreamProtocol::Http1,
                    UpstreamProto::Http2 => UpstreamProtocol::Http2,
                    UpstreamProto::Auto => UpstreamProtocol::Auto,
                } as i32,
                retry_budget: None,
                hash_policy: key.map(|key| vane_proto::config::HashPolicy { key: Some(key) }),
                circuit_breaker: add
                    .max_requests
                    .map(|max_requests| vane_proto::config::CircuitBreaker { max_requests, ..Default::default() }),
                tls: if add.tls {
                    Some(vane_proto::config::UpstreamTls {
                        sni: add.tls_sni.unwrap_or_default(),
                        ca: add.tls_ca_file.as_deref().map(read_inline).transpose()?,
                        client_certificate: add.tls_client_certificate.unwrap_or_default(),
                    })
                } else {
                    None
                },
                ..Default::default()
            };
            admin.put(Resource { resource: Some(resource::Resource::Cluster(cluster)) }, add.dry_run).await
        }
    }
}

pub(crate) async fn endpoint(admin: &Admin, command: EndpointCommand) -> anyhow::Result<()> {
    let (drain, target) = match command {
        EndpointCommand::Drain(target) => (true, target),
        EndpointCommand::Undrain(target) => (false, target),
    };
    let request = SetEndpointDrainRequest {
        cluster: target.cluster,
        address: target.address,
        drain,
        expected_version: target.expected_version.unwrap_or(0),
        dry_run: target.dry_run,
    };
    admin.set_endpoint_drain(request).await
}

pub(crate) async fn consumer(admin: &Admin, command: ConsumerCommand) -> anyhow::Result<()> {
    match command {
        ConsumerCommand::Delete { name, dry_run } => admin.delete_kind(Kind::Consumer, &name, dry_run).await,
        ConsumerCommand::Add(add) => {
            let basic_auth = match (add.basic_user, add.basic_password) {
                (Some(username), Some(password)) => {
                    Some(BasicCredential { username, password_hash: bcrypt::hash(password, bcrypt::DEFAULT_COST)? })
                }
                _ => None,
            };
            let metadata = add
                .metadata
                .iter()
                .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect::<Option<_>>()
                .ok_or_else(|| anyhow!("--meta takes KEY=VALUE"))?;
            let consumer = Consumer {
                name: add.name,
                api_keys: add.api_keys.into_iter().map(|k| ApiKey { value: Some(api_key::Value::Key(k)) }).collect(),
                basic_auth,
                metadata,
                subjects: add.subjects,
            };
            admin.put(Resource { resource: Some(resource::Resource::Consumer(consumer)) }, add.dry_run).await
        }
    }
}

pub(crate) async fn certificate(admin: &Admin, command: CertificateCommand) -> anyhow::Result<()> {
    match command {
        CertificateCommand::Delete { name, dry_run } => admin.delete_kind(Kind::Certificate, &name, dry_run).await,
        CertificateCommand::Add(add) => {
            let source = |path: &Path| -> anyhow::Result<DataSource> {
                if add.on_node {
                    let absolute = std::path::absolute(path)?;
                    Ok(DataSource { specifier: Some(Specifier::Filename(absolute.display().to_string())) })
                } else {
                    read_inline(path)
                }
            };
            let certificate = Certificate {
                name: add.name.clone(),
                certificate_chain: Some(source(&add.cert)?),
                private_key: Some(source(&add.key)?),
            };
            admin.put(Resource { resource: Some(resource::Resource::Certificate(certificate)) }, add.dry_run).await
        }
    }
}

/// A file's text as an inline data source.
fn read_inline(path: &Path) -> anyhow::Result<DataSource> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(DataSource { specifier: Some(Specifier::InlineString(text)) })
}

pub(crate) fn token(command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::New { name, role, add_to } = command;
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '#') {
        bail!("a token name may not be empty or hold spaces or '#'");
    }
    let role = match role {
        TokenRole::Read => "read",
        TokenRole::Write => "write",
        TokenRole::Node => "node",
    };
    let token = vane_control_plane::generate_token();
    let entry = format!("{name} {role} {}", vane_control_plane::hash_token(&token));
    if let Some(file) = add_to {
        append_entry(&file, &entry).with_context(|| format!("cannot add the token to {}", file.display()))?;
        outln!("{token}")?;
        eprintln!("token '{name}' ({role}) added to {}; its value (stdout) is shown only now", file.display());
        return Ok(());
    }
    outln!("{token}")?;
    outln!("{entry}")?;
    eprintln!("line 1 is the token: give it to its user, it is shown only now.");
    eprintln!("line 2 goes into the --admin-token-file of the control plane.");
    Ok(())
}

/// Appends one line to a token file, creating it (mode 0600) and its directory when missing.
fn append_entry(file: &Path, entry: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(file)?;
    // A file whose last line has no newline yet would run into this entry.
    let ends_open = std::fs::read(file)?.last().is_some_and(|b| *b != b'\n');
    let line = if ends_open { format!("\n{entry}\n") } else { format!("{entry}\n") };
    f.write_all(line.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_entries_are_appended_one_per_line_to_an_owner_only_file() {
        let dir = std::env::temp_dir().join(format!("vane-token-test-{}", std::process::id()));
        let file = dir.join("etc/tokens");
        super::append_entry(&file, "ops write aa").unwrap();
        // A file edited by hand, its last line without a newline.
        std::fs::write(&file, "ops write aa\n# note").unwrap();
        super::append_entry(&file, "edge node bb").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "ops write aa\n# note\nedge node bb\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
