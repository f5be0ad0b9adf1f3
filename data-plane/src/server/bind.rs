//! Binding a listener's socket: a TCP listener (HTTP, HTTPS, TCP, TLS) or a UDP socket,
//! with SO_REUSEPORT when asked, and errors worded for the NACK that carries them.

use std::net::SocketAddr;

/// A socket bound for a listener, not serving yet.
#[derive(Debug)]
pub(super) enum Bound {
    Stream(std::net::TcpListener),
    Datagram(std::net::UdpSocket),
}

/// True for `ip:0`: every bind gets a new port.
pub(super) fn ephemeral(address: &str) -> bool {
    address.parse::<SocketAddr>().is_ok_and(|a| a.port() == 0)
}

/// Binds `address` for a listener (with SO_REUSEPORT when `reuse_port`): a UDP socket
/// when `datagram`, else a TCP listener, listening. The error is the NACK's message.
pub(super) fn bind_any(address: &str, reuse_port: bool, datagram: bool) -> Result<(Bound, SocketAddr), String> {
    let addr: SocketAddr = address.parse().map_err(|_| format!("'{address}' is not an ip:port address"))?;
    let kind = if datagram { socket2::Type::DGRAM } else { socket2::Type::STREAM };
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), kind, None).map_err(|e| format!("{addr}: {e}"))?;
    let describe = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::AddrInUse if reuse_port => {
            format!("{addr}: address in use by another process that did not set SO_REUSEPORT (or runs as another user)")
        }
        std::io::ErrorKind::AddrInUse => format!(
            "{addr}: address in use by another process (nodes on one host share a port with enable_reuse_port: true)"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!("{addr}: address not available on this node"),
        std::io::ErrorKind::PermissionDenied => format!("{addr}: permission denied"),
        _ => format!("{addr}: {e}"),
    };
    // On a UDP socket SO_REUSEADDR would let a second socket take the same port.
    if !datagram {
        socket.set_reuse_address(true).map_err(describe)?;
    }
    if reuse_port {
        set_reuse_port(&socket).map_err(describe)?;
    }
    socket.set_nonblocking(true).map_err(describe)?;
    socket.bind(&addr.into()).map_err(describe)?;
    if datagram {
        let socket: std::net::UdpSocket = socket.into();
        let local = socket.local_addr().map_err(describe)?;
        return Ok((Bound::Datagram(socket), local));
    }
    socket.listen(1024).map_err(describe)?;
    let listener: std::net::TcpListener = socket.into();
    let local = listener.local_addr().map_err(describe)?;
    Ok((Bound::Stream(listener), local))
}

#[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))))]
fn set_reuse_port(socket: &socket2::Socket) -> std::io::Result<()> {
    socket.set_reuse_port(true)
}

#[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin")))))]
fn set_reuse_port(_: &socket2::Socket) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "enable_reuse_port is not supported on this platform"))
}

#[cfg(test)]
mod tests {
    use super::{Bound, bind_any};
    use std::net::SocketAddr;

    fn bind(address: &str, reuse_port: bool) -> Result<(std::net::TcpListener, SocketAddr), String> {
        match bind_any(address, reuse_port, false)? {
            (Bound::Stream(listener), local) => Ok((listener, local)),
            (Bound::Datagram(_), _) => unreachable!("a stream bind"),
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn two_sockets_share_an_address_only_when_both_set_reuse_port() {
        let (first, addr) = bind("127.0.0.1:0", true).unwrap();
        let (_second, again) = bind(&addr.to_string(), true).unwrap();
        assert_eq!(again, addr);
        let refused = bind(&addr.to_string(), false).unwrap_err();
        assert_eq!(
            refused,
            format!(
                "{addr}: address in use by another process (nodes on one host share a port with enable_reuse_port: true)"
            )
        );
        drop(first);
        let (plain, addr) = bind("127.0.0.1:0", false).unwrap();
        let refused = bind(&addr.to_string(), true).unwrap_err();
        assert!(refused.contains("did not set SO_REUSEPORT"), "{refused}");
        drop(plain);
    }

    #[test]
    fn a_udp_socket_and_a_tcp_listener_share_an_address() {
        let (_stream, addr) = bind("127.0.0.1:0", false).unwrap();
        let (datagram, again) = bind_any(&addr.to_string(), false, true).unwrap();
        assert_eq!(again, addr);
        assert!(matches!(datagram, Bound::Datagram(_)));
        let refused = bind_any(&addr.to_string(), false, true).unwrap_err();
        assert!(refused.contains("address in use"), "{refused}");
    }
}
