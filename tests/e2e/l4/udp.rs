//! UDP listeners through the real binaries: `dig` through Vane to a real `dnsmasq`, two
//! clients with their own replies from an echo upstream, sessions counted and ended at
//! their idle timeout, the session table's bound, a session outliving unrelated swaps.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use vane_suite::*;

use super::Vane;

/// Config with one UDP listener `udp` to cluster `backend` over `endpoints`, `extra`
/// appended to the listener, `extra_clusters` after the cluster.
fn udp_yaml(listener_extra: &str, endpoints: &[SocketAddr], extra_clusters: &str) -> String {
    let endpoints: String = endpoints.iter().map(|e| format!("      - address: '{e}'\n")).collect();
    format!(
        "listeners:\n  - name: udp\n    address: 127.0.0.1:0\n    protocol: UDP\n    cluster: backend\n{listener_extra}\
         clusters:\n  - name: backend\n    endpoints:\n{endpoints}{extra_clusters}"
    )
}

/// A `dnsmasq` answering `example.test` with 10.1.2.3 on a free port; killed when dropped.
struct Dnsmasq {
    addr: SocketAddr,
    _child: Child,
}

impl Dnsmasq {
    async fn start() -> Dnsmasq {
        // Missing dnsmasq or dig fails the test: `.ci/run` installs them.
        // Debian puts dnsmasq in /usr/sbin, which a user's PATH may lack.
        let bin = ["dnsmasq", "/usr/sbin/dnsmasq"]
            .into_iter()
            .find(|b| std::process::Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
            .expect("dnsmasq is not installed (apt-get install -y dnsmasq dnsutils)");
        let dig_found = std::process::Command::new("dig").arg("-v").output();
        assert!(dig_found.is_ok_and(|o| o.status.success()), "dig is not installed (apt-get install -y dnsutils)");
        let port = {
            let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            free.local_addr().unwrap().port()
        };
        let child = Command::new(bin)
            .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces", "--conf-file=/dev/null"])
            .args(["--listen-address", "127.0.0.1", "--port", &port.to_string()])
            .arg("--address=/example.test/10.1.2.3")
            .arg("--pid-file=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("dnsmasq starts");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        eventually(Duration::from_secs(10), "dnsmasq answers", || async {
            (dig(addr, "example.test").await == "10.1.2.3").then_some(())
        })
        .await;
        Dnsmasq { addr, _child: child }
    }
}

/// `dig +short NAME` at `server` over UDP (one try, 2 s), its answer trimmed.
async fn dig(server: SocketAddr, name: &str) -> String {
    let output = Command::new("dig")
        .args([&format!("@{}", server.ip()), "-p", &server.port().to_string(), name, "A"])
        .args(["+short", "+notcp", "+tries=1", "+time=2"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("dig runs (apt-get install -y dnsutils)");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// An upstream answering each datagram with `<name> <sender> <datagram>`.
async fn echo(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let reply = format!("{name} {from} {}", String::from_utf8_lossy(&buf[..n]));
            let _ = socket.send_to(reply.as_bytes(), from).await;
        }
    });
    (addr, task)
}

/// Sends `text` to `to` and returns the answer (10 s at most).
async fn ask(client: &UdpSocket, to: SocketAddr, text: &str) -> String {
    client.send_to(text.as_bytes(), to).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    assert_eq!(from, to, "the answer comes from the listener's address");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// The value of `series` on `/metrics`, polled until `want` (10 s at most).
async fn metric_becomes(vane: &Vane, series: &str, want: f64) {
    eventually(Duration::from_secs(10), &format!("{series} = {want}"), || async {
        (metric(&vane.metrics().await, series) == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn l4_udp_dig_resolves_through_vane_to_a_real_dnsmasq() {
    let dns = Dnsmasq::start().await;
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("udp.log");
    let extra = format!("    idle_timeout: 1s\n    access_log: {{path: '{}', format: JSON}}\n", log.display());
    let vane = Vane::start(&udp_yaml(&extra, &[dns.addr], "")).await;
    let addr = vane.listener("udp").await;
    assert_eq!(dig(addr, "example.test").await, "10.1.2.3");
    assert_eq!(dig(addr, "www.example.test").await, "10.1.2.3");
    let metrics = vane.metrics().await;
    assert_eq!(metric(&metrics, "vane_l4_datagrams_total{listener=\"udp\",direction=\"in\"}"), 2.0, "{metrics}");
    assert_eq!(metric(&metrics, "vane_l4_datagrams_total{listener=\"udp\",direction=\"out\"}"), 2.0, "{metrics}");
    assert!(metric(&metrics, "vane_l4_bytes_total{listener=\"udp\",direction=\"out\"}") > 60.0, "{metrics}");
    assert_eq!(metric(&metrics, "vane_l4_udp_sessions_total{listener=\"udp\"}"), 2.0, "dig uses a port per run");
    // Each session ends at its idle timeout, with its access-log line.
    metric_becomes(&vane, "vane_l4_udp_sessions_active{listener=\"udp\"}", 0.0).await;
    let lines = eventually(Duration::from_secs(10), "two access-log lines", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (lines.len() == 2).then_some(lines)
    })
    .await;
    for line in &lines {
        assert_eq!((line["protocol"].as_str(), line["listener"].as_str()), (Some("UDP"), Some("udp")), "{line}");
        assert_eq!((line["cluster"].as_str(), line["end"].as_str()), (Some("backend"), Some("idle_timeout")), "{line}");
        assert_eq!(line["upstream"], dns.addr.to_string());
        assert_eq!((line["datagrams_in"].as_u64(), line["datagrams_out"].as_u64()), (Some(1), Some(1)), "{line}");
    }
}

#[tokio::test]
async fn l4_udp_two_clients_get_their_own_replies_and_sessions_end_when_idle() {
    let (upstream, _echo) = echo("e1").await;
    let vane = Vane::start(&udp_yaml("    idle_timeout: 1s\n", &[upstream], "")).await;
    let addr = vane.listener("udp").await;
    let (one, two) = (client().await, client().await);
    let mut senders = Vec::new();
    for i in 0..10 {
        // Interleaved: each answer names the session socket it came through and carries
        // the client's own datagram.
        let a = ask(&one, addr, &format!("one {i}")).await;
        let b = ask(&two, addr, &format!("two {i}")).await;
        let (a_from, b_from) = (a.split(' ').nth(1).unwrap().to_owned(), b.split(' ').nth(1).unwrap().to_owned());
        assert!(a.starts_with("e1 ") && a.ends_with(&format!(" one {i}")), "{a}");
        assert!(b.starts_with("e1 ") && b.ends_with(&format!(" two {i}")), "{b}");
        senders.push((a_from, b_from));
    }
    // One upstream socket per client for the whole session, and not the same one.
    let (a0, b0) = senders[0].clone();
    assert_ne!(a0, b0);
    assert!(senders.iter().all(|(a, b)| *a == a0 && *b == b0), "{senders:?}");
    let metrics = vane.metrics().await;
    assert_eq!(metric(&metrics, "vane_l4_udp_sessions_active{listener=\"udp\"}"), 2.0, "{metrics}");
    assert_eq!(metric(&metrics, "vane_l4_udp_sessions_total{listener=\"udp\"}"), 2.0, "{metrics}");
    assert_eq!(metric(&metrics, "vane_l4_datagrams_total{listener=\"udp\",direction=\"in\"}"), 20.0, "{metrics}");
    // Silent for the idle timeout: both sessions end; the next datagram opens a new one.
    metric_becomes(&vane, "vane_l4_udp_sessions_active{listener=\"udp\"}", 0.0).await;
    let again = ask(&one, addr, "again").await;
    assert_ne!(again.split(' ').nth(1), Some(a0.as_str()), "a new session, a new upstream socket: {again}");
    metric_becomes(&vane, "vane_l4_udp_sessions_total{listener=\"udp\"}", 3.0).await;
}

#[tokio::test]
async fn l4_udp_a_full_session_table_drops_a_third_client_and_counts_it() {
    let (upstream, _echo) = echo("e1").await;
    let vane = Vane::start(&udp_yaml("    max_udp_sessions: 2\n", &[upstream], "")).await;
    let addr = vane.listener("udp").await;
    let (one, two, three) = (client().await, client().await, client().await);
    assert!(ask(&one, addr, "1").await.ends_with(" 1"));
    assert!(ask(&two, addr, "2").await.ends_with(" 2"));
    three.send_to(b"3", addr).await.unwrap();
    let series = "vane_l4_udp_datagrams_dropped_total{listener=\"udp\",reason=\"session_table_full\"}";
    metric_becomes(&vane, series, 1.0).await;
    // The two sessions open carry on.
    assert!(ask(&one, addr, "1 still").await.ends_with(" 1 still"));
    assert!(ask(&two, addr, "2 still").await.ends_with(" 2 still"));
    let metrics = vane.metrics().await;
    assert_eq!(metric(&metrics, "vane_l4_udp_sessions_active{listener=\"udp\"}"), 2.0, "{metrics}");
    assert_eq!(metric(&metrics, series), 1.0, "{metrics}");
}

#[tokio::test]
async fn l4_udp_a_session_survives_unrelated_swaps_and_a_cluster_change_keeping_its_endpoint() {
    let ((first, _e1), (second, _e2)) = (echo("e1").await, echo("e2").await);
    let other = |n: usize| format!("  - name: other\n    endpoints: [{{address: '127.0.0.1:{}'}}]\n", 1000 + n);
    let mut vane = Vane::start(&udp_yaml("", &[first], &other(0))).await;
    let addr = vane.listener("udp").await;
    let one = client().await;
    let answer = ask(&one, addr, "start").await;
    let socket = answer.split(' ').nth(1).unwrap().to_owned();
    for swap in 1..=5 {
        vane.apply(&udp_yaml("", &[first], &other(swap))).await;
        let answer = ask(&one, addr, &format!("swap {swap}")).await;
        assert_eq!(answer, format!("e1 {socket} swap {swap}"), "the same session through swap {swap}");
    }
    // Its cluster gains an endpoint: the session keeps its own.
    vane.apply(&udp_yaml("", &[first, second], &other(6))).await;
    assert_eq!(ask(&one, addr, "grown").await, format!("e1 {socket} grown"));
    let metrics = vane.metrics().await;
    assert_eq!(metric(&metrics, "vane_l4_udp_sessions_total{listener=\"udp\"}"), 1.0, "{metrics}");
    assert_eq!(vane.listener("udp").await, addr, "the listener kept its socket");
    // Its endpoint leaves the cluster: the session ends and the client moves on.
    vane.apply(&udp_yaml("", &[second], &other(7))).await;
    assert!(ask(&one, addr, "moved").await.starts_with("e2 "));
    // A removed listener closes its socket and its sessions.
    vane.apply(&format!("listeners: []\nclusters:\n{}", other(8))).await;
    assert!(!vane.has_listener("udp").await);
    let probe = client().await;
    probe.connect(addr).await.unwrap();
    probe.send(b"anyone?").await.unwrap();
    let mut buf = [0u8; 64];
    let refused = tokio::time::timeout(Duration::from_secs(10), probe.recv(&mut buf)).await;
    assert!(
        matches!(&refused, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "the port is closed: {refused:?}"
    );
}

#[tokio::test]
async fn l4_udp_vane_listener_add_makes_a_udp_listener_that_needs_a_cluster() {
    let (upstream, _echo) = echo("e1").await;
    let node = Vane::start(&format!("clusters:\n  - name: e\n    endpoints: [{{address: '{upstream}'}}]\n")).await;
    let add = ["listener", "add", "u", "--address", "127.0.0.1:0", "--protocol", "udp"];
    let refused = vane(&node.url, &add).await;
    assert!(!refused.success);
    assert!(refused.stderr.contains("listener 'u': cluster: a UDP listener needs a cluster"), "{}", refused.stderr);
    let added = vane(&node.url, &[&add[..], &["--cluster", "e"]].concat()).await;
    assert!(added.success, "{}", added.stderr);
    node.wait_version(2).await;
    let addr = node.listener("u").await;
    assert!(ask(&client().await, addr, "via the cli").await.ends_with(" via the cli"));
    let shown = vane(&node.url, &["get", "listener", "u", "-o", "yaml"]).await;
    assert!(shown.stdout.contains("protocol: UDP") && shown.stdout.contains("cluster: e"), "{}", shown.stdout);
}
