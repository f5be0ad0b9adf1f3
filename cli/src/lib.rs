//! The `vane` command: dev mode, the control plane, a proxy node, and the admin
//! commands (`apply`, `validate`, `get`, `nodes`, `history`). Admin commands are thin:
//! they read a file, call the admin gRPC API, print the answer.
#![allow(clippy::print_stdout)]

/// `print!` that returns an error instead of panicking when stdout is gone: a reader that
/// stopped early (`vane history | head -1`) ends the command quietly (see [`main`]).
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
}

/// `println!`, as [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

mod cache_cmd;
mod client;
pub mod demo;
mod dev;
mod edit;
mod listener_cmd;
mod output;
mod quickstart;
mod serve;
mod store_cmd;
mod tls;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Vane: an edge proxy, API gateway and load balancer with a control plane.
#[derive(Debug, Parser)]
#[command(name = "vane", version, about, propagate_version = true)]
pub struct Cli {
    /// Control-plane URL for admin commands.
    #[arg(long, global = true, env = "VANE_SERVER", default_value = "http://127.0.0.1:18000")]
    server: String,
    /// Bearer token for the admin API.
    #[arg(long, global = true, env = "VANE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    tls: tls::ClientTlsArgs,
    /// Log format of long-running commands.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Output format of reading commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    #[default]
    Table,
    Yaml,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Control plane + one node (or --nodes N) + two demo backends in one process, quickstart applied.
    Dev(serve::DevArgs),
    /// Run the control plane.
    ControlPlane(serve::ControlPlaneArgs),
    /// Run a data-plane node.
    Proxy(serve::ProxyArgs),
    /// Run demo echo backends (as `vane dev` does): each answers with its name in
    /// `x-backend` and echoes the request.
    DemoBackend(serve::DemoBackendArgs),
    /// Apply a config file (YAML or JSON) as the new version.
    Apply {
        /// The config file; `-` reads standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Validate and show what would change; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Refuse unless the latest version is this one.
        #[arg(long)]
        expected_version: Option<u64>,
        /// Apply even a config with no resources (an empty or comment-only file), which
        /// removes everything: every node closes its listeners.
        #[arg(long)]
        allow_empty: bool,
    },
    /// Check a config file against the control plane's validator.
    Validate {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Show resources: listeners, routes, clusters, certificates, policies, consumers (or `all`). Private keys
    /// given inline are shown as `<redacted sha256:...>`.
    Get {
        kind: String,
        name: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
    /// Show every node the control plane knows of and what it runs.
    Nodes {
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
    /// List retained versions, newest first.
    History {
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
    /// Show what applying a config file would change, per resource. Exits 0 whether or
    /// not anything changes; non-zero, with every problem as `validate` says them, when
    /// the file is invalid (apply would refuse it).
    Diff {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
    /// Remove one resource (a new version); refused while something refers to it.
    Delete {
        /// listener, route, cluster or certificate.
        kind: String,
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Add, replace or delete one listener (HTTP, HTTPS, TCP).
    #[command(subcommand)]
    Listener(listener_cmd::ListenerCommand),
    /// Add, replace or delete one route.
    #[command(subcommand)]
    Route(edit::RouteCommand),
    /// Add, replace or delete one cluster.
    #[command(subcommand)]
    Cluster(edit::ClusterCommand),
    /// Drain one endpoint of a cluster (no new requests, those in flight finish), or undrain it.
    #[command(subcommand)]
    Endpoint(edit::EndpointCommand),
    /// Add, replace or delete one API consumer (keys, basic auth, subjects, metadata).
    #[command(subcommand)]
    Consumer(edit::ConsumerCommand),
    /// Add, replace (rotate) or delete one TLS certificate.
    #[command(subcommand, alias = "cert")]
    Certificate(edit::CertificateCommand),
    /// Publish a new version whose config equals VERSION's.
    Rollback {
        /// The version to return to.
        #[arg(value_name = "VERSION")]
        target: u64,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Live request rate, 5xx share and p99 per route, from nodes' /metrics.
    Top(top::TopArgs),
    /// Make admin and node tokens (local: prints, stores nothing).
    #[command(subcommand)]
    Token(edit::TokenCommand),
    /// Back up the control plane's store, or restore one from a backup.
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Purge cached responses on every node.
    #[command(subcommand)]
    Cache(cache_cmd::CacheCommand),
}

/// `vane-node`: `vane proxy` alone, in a binary that links nothing else (no control plane,
/// store or admin commands), so that a node maps fewer pages of code.
#[derive(Debug, Parser)]
#[command(name = "vane-node", version, about = "Vane data-plane node (the same as `vane proxy`)")]
pub struct NodeCli {
    #[command(flatten)]
    proxy: serve::ProxyArgs,
    /// Node token for the control plane.
    #[arg(long, env = "VANE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    tls: tls::ClientTlsArgs,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// The `vane-node` entry point.
pub fn node_main() -> ExitCode {
    let cli = NodeCli::parse();
    let command = Command::Proxy(cli.proxy);
    let runtime = match runtime_for(&command).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Command::Proxy(args) = command else { return ExitCode::FAILURE };
    init_logs(cli.log_format);
    match runtime.block_on(serve::proxy(args, cli.token, &cli.tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once (see `error_chain`), with no
/// control characters: errors may quote a file, a name or a server's message.
fn one_line(e: &anyhow::Error) -> String {
    let line = vane_proto::text::error_chain(e.as_ref()).replace('\n', " ");
    vane_proto::text::escape_controls(&line).into_owned()
}

/// Writes to stdout and flushes.
fn write_stdout(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args)?;
    stdout.flush()
}

/// Whether `e` is stdout's reader having gone away, which is no failure of the command.
fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Parses arguments, runs the command, prints a one-line error on failure.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match runtime_for(&cli.command).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `vane history | head -1`: the reader has what it wanted, as with other CLIs.
        Err(e) if is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The async runtime for a command. A node with one thread to run on gets a
/// current-thread runtime: measured 12% less CPU per proxied request and half the p99 of
/// a multi-thread runtime with one worker (no work-stealing bookkeeping, no wake-ups
/// across threads). Everything else runs on the multi-thread runtime.
fn runtime_for(command: &Command) -> tokio::runtime::Builder {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    match command {
        Command::Proxy(args) => match args.threads.unwrap_or(cores) {
            0 | 1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(n);
                builder
            }
        },
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
}

fn init_logs(format: LogFormat) {
    // rustls warns once per handshake about clients that send an IP address as SNI (wrk,
    // some libraries): any client could flood the log, so its warnings are off by default.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.compact().try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let admin = client::Admin::new(cli.server.clone(), cli.token.clone(), cli.tls.clone());
    match cli.command {
        Command::Dev(args) => {
            init_logs(cli.log_format);
            dev::dev(args).await
        }
        Command::ControlPlane(args) => {
            init_logs(cli.log_format);
            serve::control_plane(args).await
        }
        Command::Proxy(args) => {
            init_logs(cli.log_format);
            serve::proxy(args, cli.token, &cli.tls).await
        }
        Command::DemoBackend(args) => serve::demo_backend(args).await,
        Command::Apply { file, dry_run, expected_version, allow_empty } => {
            let expected_version = expected_version.unwrap_or(0);
            admin.apply(&file, client::ApplyFlags { dry_run, expected_version, allow_empty }).await
        }
        Command::Validate { file } => admin.validate(&file).await,
        Command::Get { kind, name, output } => admin.get(&kind, name.as_deref(), output).await,
        Command::Nodes { output } => admin.nodes(output).await,
        Command::History { output } => admin.history(output).await,
        Command::Diff { file, output } => admin.diff(&file, output).await,
        Command::Delete { kind, name, dry_run } => admin.delete(&kind, &name, dry_run).await,
        Command::Listener(command) => listener_cmd::run(&admin, command).await,
        Command::Route(command) => edit::route(&admin, command).await,
        Command::Cluster(command) => edit::cluster(&admin, command).await,
        Command::Endpoint(command) => edit::endpoint(&admin, command).await,
        Command::Certificate(command) => edit::certificate(&admin, command).await,
        Command::Consumer(command) => edit::consumer(&admin, command).await,
        Command::Rollback { target, dry_run, expected_version } => {
            admin.rollback(target, dry_run, expected_version.unwrap_or(0)).await
        }
        Command::Token(command) => edit::token(command),
        Command::Top(args) => top::top(args).await,
        Command::Store(command) => store_cmd::run(&admin, command).await,
        Command::Cache(command) => cache_cmd::run(&admin, command).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
