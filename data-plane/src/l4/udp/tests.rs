//! UDP sessions on loopback: real sockets, an echo upstream that says who answered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vane_proto::config;

use super::*;

/// An upstream answering each datagram with `<name>:<datagram>`.
async fn echo(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let reply = [name.as_bytes(), b":", &buf[..n]].concat();
            let _ = socket.send_to(&reply, from).await;
        }
    });
    (addr, task)
}

fn cluster(name: &str, addresses: &[SocketAddr]) -> Arc<Cluster> {
    let spec = config::Cluster {
        name: name.into(),
        endpoints: addresses
            .iter()
            .map(|a| config::Endpoint { address: a.to_string(), ..Default::default() })
            .collect(),
        ..Default::default()
    };
    crate::upstream::cluster::ClusterRegistry::new(&HashMap::new()).build(&spec, Default::default(), None)
}

fn listener(cluster: &Arc<Cluster>, idle: Duration, max_sessions: usize) -> Arc<UdpListener> {
    Arc::new(UdpListener { name: "u".into(), cluster: Some(cluster.clone()), idle, max_sessions, access_log: None })
}

/// A served listener and its handles; stops when dropped.
struct Served {
    addr: SocketAddr,
    config: watch::Sender<Arc<UdpListener>>,
    stats: Arc<ListenerStats>,
    _stop: watch::Sender<bool>,
}

async fn serve_it(first: Arc<UdpListener>) -> Served {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (config, rx) = watch::channel(first);
    let (stop, stopped) = watch::channel(false);
    let stats = Arc::new(ListenerStats::default());
    tokio::spawn(serve(socket, rx, stats.clone(), stopped));
    Served { addr, config, stats, _stop: stop }
}

/// Sends `text` from `client` and waits (10 s at most) for the answer.
async fn ask(client: &UdpSocket, to: SocketAddr, text: &str) -> String {
    client.send_to(text.as_bytes(), to).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    assert_eq!(from, to, "answers come from the listener's address");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Polls `check` every 10 ms for 10 s at most.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn each_client_gets_its_own_replies_and_keeps_its_endpoint_under_round_robin() {
    let ((a, _ta), (b, _tb)) = (echo("a").await, echo("b").await);
    let c = cluster("c", &[a, b]);
    let served = serve_it(listener(&c, Duration::from_secs(60), 100)).await;
    let (one, two) = (client().await, client().await);
    let first = ask(&one, served.addr, "hello from one").await;
    let second = ask(&two, served.addr, "hello from two").await;
    // Round robin gave them different endpoints; each keeps its own for every datagram.
    let (e1, e2) = (&first[..1], &second[..1]);
    assert_ne!(e1, e2);
    for i in 0..5 {
        assert_eq!(ask(&one, served.addr, &format!("one {i}")).await, format!("{e1}:one {i}"));
        assert_eq!(ask(&two, served.addr, &format!("two {i}")).await, format!("{e2}:two {i}"));
    }
    let big = "x".repeat(60_000);
    assert_eq!(ask(&one, served.addr, &big).await.len(), 60_002, "a 60 KB datagram whole");
    let d = &served.stats.datagrams;
    assert_eq!(d.sessions_total.load(Ordering::Relaxed), 2);
    assert_eq!(d.sessions_active.load(Ordering::Relaxed), 2);
    assert_eq!((d.datagrams_in.load(Ordering::Relaxed), d.datagrams_out.load(Ordering::Relaxed)), (13, 13));
    assert_eq!(served.stats.streams.bytes_in.load(Ordering::Relaxed), 2 * 14 + 10 * 5 + 60_000);
}

#[tokio::test]
async fn a_full_table_drops_new_clients_and_idle_sessions_end() {
    let (a, _ta) = echo("a").await;
    let c = cluster("c", &[a]);
    let served = serve_it(listener(&c, Duration::from_millis(300), 2)).await;
    let (one, two, three) = (client().await, client().await, client().await);
    assert_eq!(ask(&one, served.addr, "1").await, "a:1");
    assert_eq!(ask(&two, served.addr, "2").await, "a:2");
    three.send_to(b"3", served.addr).await.unwrap();
    let stats = served.stats.clone();
    eventually("the third client's datagram dropped", || stats.datagrams.dropped(Dropped::SessionTableFull) == 1).await;
    assert_eq!(stats.datagrams.sessions_active.load(Ordering::Relaxed), 2);
    // Both sessions go idle and end; then the third client gets a session.
    eventually("idle sessions end", || stats.datagrams.sessions_active.load(Ordering::Relaxed) == 0).await;
    assert_eq!(ask(&three, served.addr, "3 again").await, "a:3 again");
    assert_eq!(stats.datagrams.sessions_total.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_swap_keeps_sessions_whose_endpoint_stays_and_ends_the_others() {
    let ((a, _ta), (b, _tb)) = (echo("a").await, echo("b").await);
    let c = cluster("c", &[a]);
    let served = serve_it(listener(&c, Duration::from_secs(60), 100)).await;
    let one = client().await;
    assert_eq!(ask(&one, served.addr, "before").await, "a:before");
    // The same cluster, and a rebuilt one that still has `a`: the session carries on.
    served.config.send_replace(listener(&c, Duration::from_secs(30), 100));
    served.config.send_replace(listener(&cluster("c", &[a, b]), Duration::from_secs(60), 100));
    assert_eq!(ask(&one, served.addr, "after").await, "a:after");
    assert_eq!(served.stats.datagrams.sessions_total.load(Ordering::Relaxed), 1);
    // `a` left the cluster: the session ends; the next datagram opens one on `b`.
    served.config.send_replace(listener(&cluster("c", &[b]), Duration::from_secs(60), 100));
    let stats = served.stats.clone();
    eventually("the session on a ends", || stats.datagrams.sessions_active.load(Ordering::Relaxed) == 0).await;
    assert_eq!(ask(&one, served.addr, "moved").await, "b:moved");
}

#[tokio::test]
async fn a_session_moves_off_an_endpoint_that_refuses_its_datagrams() {
    let (b, _tb) = echo("b").await;
    // Nothing listens there: the kernel answers with ICMP port unreachable.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let c = cluster("c", &[dead, b]);
    let served = serve_it(listener(&c, Duration::from_secs(60), 100)).await;
    let one = client().await;
    // Round robin puts the first session on the dead endpoint; its refusals eject it
    // (3 in a row, the default passive health), and the session moves to `b`.
    let mut buf = [0u8; 64];
    let mut answer = None;
    for i in 0..20 {
        one.send_to(format!("try {i}").as_bytes(), served.addr).await.unwrap();
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(200), one.recv_from(&mut buf)).await {
            answer = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            break;
        }
    }
    assert!(answer.is_some_and(|a| a.starts_with("b:try ")), "the session moved to b");
    assert!(served.stats.datagrams.upstream_send_errors.load(Ordering::Relaxed) >= 3);
    assert!(!c.endpoint_available(0), "the dead endpoint is ejected");
    assert_eq!(served.stats.datagrams.sessions_active.load(Ordering::Relaxed), 1);
}
