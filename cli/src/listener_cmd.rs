//! `vane listener add` and `vane listener delete`: one listener at a time, through the
//! admin API's Put and Delete (the control plane validates it like any apply).

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use vane_proto::admin::{Kind, Resource, resource};
use vane_proto::config::{Listener, ListenerTls, SniRoute, listener::Protocol};

use crate::client::Admin;

#[derive(Debug, Subcommand)]
pub(crate) enum ListenerCommand {
    /// Add a listener, or replace the listener of that name.
    Add(ListenerAdd),
    /// Delete a listener (a TCP listener's open connections drain up to its drain_timeout;
    /// a UDP listener's sessions end at once).
    Delete {
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Proto {
    Http,
    Https,
    Tcp,
    Tls,
    Udp,
}

#[derive(Debug, Args)]
pub(crate) struct ListenerAdd {
    name: String,
    /// `IP:PORT` to bind (port 0: any free port).
    #[arg(long)]
    address: String,
    #[arg(long, value_enum, default_value_t = Proto::Http)]
    protocol: Proto,
    /// TCP and TLS: the cluster connections go to (the default when --sni rules match
    /// nothing); UDP: the cluster each client's session goes to.
    #[arg(long)]
    cluster: Option<String>,
    /// TCP, TLS passthrough: connections whose SNI is HOST (`db.example.com`,
    /// `*.example.com`) go to CLUSTER; repeatable.
    #[arg(long = "sni", value_name = "HOST=CLUSTER")]
    sni: Vec<String>,
    /// HTTPS: a certificate resource to serve; repeatable (the first is the default).
    #[arg(long = "certificate", value_name = "NAME")]
    certificates: Vec<String>,
    #[arg(long)]
    dry_run: bool,
}

/// `--sni` values as rules, one per cluster in the order clusters first appear.
fn sni_routes(specs: &[String]) -> anyhow::Result<Vec<SniRoute>> {
    let mut routes: Vec<SniRoute> = Vec::new();
    for spec in specs {
        let (host, cluster) = spec
            .split_once('=')
            .filter(|(h, c)| !h.is_empty() && !c.is_empty())
            .ok_or_else(|| anyhow!("--sni '{spec}': expected HOST=CLUSTER"))?;
        match routes.iter_mut().find(|r| r.cluster == cluster) {
            Some(route) => route.server_names.push(host.to_owned()),
            None => routes.push(SniRoute { server_names: vec![host.to_owned()], cluster: cluster.to_owned() }),
        }
    }
    Ok(routes)
}

pub(crate) async fn run(admin: &Admin, command: ListenerCommand) -> anyhow::Result<()> {
    match command {
        ListenerCommand::Delete { name, dry_run } => admin.delete_kind(Kind::Listener, &name, dry_run).await,
        ListenerCommand::Add(add) => {
            let listener = Listener {
                name: add.name,
                address: add.address,
                protocol: match add.protocol {
                    Proto::Http => Protocol::Http,
                    Proto::Https => Protocol::Https,
                    Proto::Tcp => Protocol::Tcp,
                    Proto::Tls => Protocol::Tls,
                    Proto::Udp => Protocol::Udp,
                } as i32,
                cluster: add.cluster.unwrap_or_default(),
                sni_routes: sni_routes(&add.sni)?,
                tls: (!add.certificates.is_empty())
                    .then(|| ListenerTls { certificates: add.certificates, ..Default::default() }),
                ..Default::default()
            };
            admin.put(Resource { resource: Some(resource::Resource::Listener(listener)) }, add.dry_run).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_flags_group_names_by_cluster_in_order() {
        let specs = ["a.example.com=a", "*.b.example.com=b", "a2.example.com=a"].map(String::from);
        let routes = sni_routes(&specs).unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!((routes[0].cluster.as_str(), routes[0].server_names.len()), ("a", 2));
        assert_eq!(routes[1].server_names, vec!["*.b.example.com".to_owned()]);
        let error = sni_routes(&["no-cluster".to_owned()]).unwrap_err().to_string();
        assert_eq!(error, "--sni 'no-cluster': expected HOST=CLUSTER");
    }
}
