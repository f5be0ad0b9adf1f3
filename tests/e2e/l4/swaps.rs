//! Hot swap of TCP listeners: an established connection outlives config changes, keeps
//! the cluster it started with, and a removed listener drains its connections up to its
//! `drain_timeout`.

use std::time::Duration;

use super::{Banner, LineClient, Vane, tcp_yaml};

#[tokio::test]
async fn l4_a_connection_survives_ten_unrelated_swaps_and_keeps_its_cluster() {
    let (old, new) = (Banner::start("old").await, Banner::start("new").await);
    let other = |n: usize| format!("  - name: other\n    endpoints: [{{address: '127.0.0.1:{}'}}]\n", 1000 + n);
    let mut vane = Vane::start(&tcp_yaml("", &[old.addr], &other(0))).await;
    let addr = vane.listener("tcp").await;
    let (mut client, banner) = LineClient::connect(addr).await.unwrap();
    assert_eq!(banner, "old");
    for swap in 1..=10 {
        vane.apply(&tcp_yaml("", &[old.addr], &other(swap))).await;
        assert_eq!(client.ask(&format!("swap {swap}")).await.unwrap(), format!("old: swap {swap}"));
    }
    // The listener's own cluster changes: new connections go to the new endpoint, the
    // open one stays where it started.
    vane.apply(&tcp_yaml("", &[new.addr], &other(11))).await;
    assert_eq!(LineClient::connect(addr).await.unwrap().1, "new");
    assert_eq!(client.ask("still here").await.unwrap(), "old: still here");
    assert_eq!(old.accepted(), 1, "one connection all along");
    assert_eq!(vane.listener("tcp").await, addr, "the listener kept its socket");
}

#[tokio::test]
async fn l4_a_removed_listener_stops_accepting_and_drains_its_connections() {
    let backend = Banner::start("b1").await;
    let mut vane = Vane::start(&tcp_yaml("    drain_timeout: 2s\n", &[backend.addr], "")).await;
    let addr = vane.listener("tcp").await;
    let (mut client, _) = LineClient::connect(addr).await.unwrap();
    let removed =
        format!("listeners: []\nclusters:\n  - name: backend\n    endpoints: [{{address: '{}'}}]\n", backend.addr);
    vane.apply(&removed).await;
    assert!(!vane.has_listener("tcp").await);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
    // Within its drain deadline the open connection still flows...
    assert_eq!(client.ask("draining").await.unwrap(), "b1: draining");
    // ...and is closed when it passes (2 s after the removal).
    assert!(client.closed_within(Duration::from_secs(10)).await, "closed at the drain deadline");
}
