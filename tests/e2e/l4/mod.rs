//! Layer 4 through the real binaries: `vane control-plane` and `vane proxy` processes, the
//! config applied with `vane apply`, real clients (`redis-cli`, `dig`, rustls) and servers
//! (`redis-server`, `dnsmasq`, TLS upstreams, small TCP and UDP servers that say who
//! answered).

mod cli;
mod passthrough;
mod proxy_protocol;
mod swaps;
mod tcp;
mod terminate;
mod udp;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use vane_suite::*;

/// A control plane and a node as processes, and the version the node serves.
pub(super) struct Vane {
    dir: tempfile::TempDir,
    _cp: VaneProcess,
    _proxy: VaneProcess,
    pub(super) url: String,
    pub(super) admin: SocketAddr,
    version: u64,
}

impl Vane {
    /// Starts both processes with `yaml` applied (version 1) and served.
    pub(super) async fn start(yaml: &str) -> Vane {
        let dir = tempfile::tempdir().unwrap();
        let cp = VaneProcess::control_plane(&dir.path().join("store"), &[]).await.unwrap();
        let url = cp.control_plane_url().unwrap();
        let file = write_yaml(dir.path(), "config.yaml", yaml);
        let applied = vane(&url, &["apply", "-f", &file]).await;
        assert!(applied.success, "{}", applied.stderr);
        let proxy =
            VaneProcess::start(&["proxy", "--control-plane", &url, "--node-id", "n1", "--admin", "127.0.0.1:0"])
                .await
                .unwrap();
        let admin: SocketAddr = proxy.banner.rsplit(' ').next().unwrap().parse().unwrap();
        let vane = Vane { dir, _cp: cp, _proxy: proxy, url, admin, version: 0 };
        vane.wait_version(1).await;
        Vane { version: 1, ..vane }
    }

    /// Applies `yaml` with `vane apply` and waits until the node serves it.
    pub(super) async fn apply(&mut self, yaml: &str) {
        let file = write_yaml(self.dir.path(), "config.yaml", yaml);
        let applied = vane(&self.url, &["apply", "-f", &file]).await;
        assert!(applied.success, "{}", applied.stderr);
        self.version += 1;
        self.wait_version(self.version).await;
    }

    async fn config(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&HttpClient::default().get(self.admin, "/config").await.ok()?.body).ok()
    }

    pub(super) async fn wait_version(&self, version: u64) {
        eventually(Duration::from_secs(10), &format!("the node serves version {version}"), || async {
            (self.config().await?["version"] == version).then_some(())
        })
        .await;
    }

    /// The bound address of a listener.
    pub(super) async fn listener(&self, name: &str) -> SocketAddr {
        eventually(Duration::from_secs(10), &format!("listener {name}"), || async {
            self.config().await?["listeners"][name].as_str()?.parse().ok()
        })
        .await
    }

    /// Whether the node still has a listener of that name.
    pub(super) async fn has_listener(&self, name: &str) -> bool {
        self.config().await.is_some_and(|c| !c["listeners"][name].is_null())
    }

    pub(super) async fn metrics(&self) -> String {
        HttpClient::default().get(self.admin, "/metrics").await.unwrap().body
    }
}

/// A TCP upstream: each connection is greeted with `<name>\n`, then every line it sends
/// is answered with `<name>: <line>`; a client that shuts its write side gets
/// `<name> got <n> bytes\n` and the end. Counts the connections it accepted.
pub(super) struct Banner {
    pub(super) addr: SocketAddr,
    pub(super) accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Banner {
    pub(super) async fn start(name: &str) -> Banner {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name = name.to_owned();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                while connections.try_join_next().is_some() {}
                let name = name.clone();
                connections.spawn(async move {
                    if stream.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                        return;
                    }
                    let mut total = 0usize;
                    let mut pending = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) => {
                                let _ = stream.write_all(format!("{name} got {total} bytes\n").as_bytes()).await;
                                let _ = stream.shutdown().await;
                                return;
                            }
                            Ok(n) => {
                                total += n;
                                pending.extend_from_slice(&buf[..n]);
                                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                                    let line: Vec<u8> = pending.drain(..=end).collect();
                                    let reply = format!("{name}: {}", String::from_utf8_lossy(&line));
                                    if stream.write_all(reply.as_bytes()).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        Banner { addr, accepted, task }
    }

    pub(super) fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops accepting: its port refuses connections once this returns (the task, and
    /// the socket it owns, are gone).
    pub(super) async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Banner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A line-at-a-time client of a [`Banner`] through Vane.
pub(super) struct LineClient {
    stream: tokio::io::BufReader<TcpStream>,
}

impl LineClient {
    /// Connects and reads the greeting: the upstream's name.
    pub(super) async fn connect(addr: SocketAddr) -> anyhow::Result<(LineClient, String)> {
        let stream = TcpStream::connect(addr).await?;
        let mut client = LineClient { stream: tokio::io::BufReader::new(stream) };
        let banner = client.line().await?;
        Ok((client, banner))
    }

    pub(super) async fn line(&mut self) -> anyhow::Result<String> {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read_line(&mut line)).await??;
        anyhow::ensure!(n > 0, "connection closed");
        Ok(line.trim_end().to_owned())
    }

    /// Sends a line and reads the answer.
    pub(super) async fn ask(&mut self, line: &str) -> anyhow::Result<String> {
        self.stream.get_mut().write_all(format!("{line}\n").as_bytes()).await?;
        self.line().await
    }

    /// Shuts the write side, then reads what is left.
    pub(super) async fn finish(mut self) -> anyhow::Result<String> {
        self.stream.get_mut().shutdown().await?;
        let mut rest = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.stream.read_to_string(&mut rest)).await??;
        Ok(rest)
    }

    /// Whether the proxy closed the connection (EOF or reset) within `within`.
    pub(super) async fn closed_within(&mut self, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(within, self.stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }
}

/// Config with one TCP listener `tcp` to cluster `backend` over `endpoints`, plus `extra`
/// YAML appended under `clusters:` (other clusters).
pub(super) fn tcp_yaml(listener_extra: &str, endpoints: &[SocketAddr], extra_clusters: &str) -> String {
    let endpoints: String = endpoints.iter().map(|e| format!("      - address: '{e}'\n")).collect();
    format!(
        "listeners:\n  - name: tcp\n    address: 127.0.0.1:0\n    protocol: TCP\n    cluster: backend\n{listener_extra}\
         clusters:\n  - name: backend\n    endpoints:\n{endpoints}{extra_clusters}"
    )
}
