//! Layer 4, beside the HTTP path: TCP listeners that forward each connection whole to a
//! cluster, optionally chosen by the SNI of its ClientHello (TLS passthrough), and TLS
//! listeners that terminate TLS first (the handshake in `server/listeners.rs`, with the
//! same material as HTTPS).
//!
//! It shares `upstream/` with the HTTP path (balancers, active and passive health,
//! circuit breakers) and imports nothing above it. Data flow for one connection:
//! `server/listeners.rs` accepts it and, when the slot's current [`L4Listener`] says the
//! listener is TCP, hands it over; `listener.rs` picks the cluster (`sni.rs` reads the
//! ClientHello for passthrough), `connect.rs` opens the upstream side, `relay.rs` copies
//! both ways to the end, and the listener's counters (`observe/streams.rs`) and access
//! log record it. `proxy_protocol.rs` reads PROXY headers from trusted peers (for every
//! listener: the HTTP server above uses it too) and writes them to clusters that ask.
//!
//! UDP listeners (`udp/`) have no connection: `server/listeners.rs` binds the socket and
//! hands it to `udp::serve`, which keeps a session per client address (an upstream
//! socket connected to the endpoint picked for it) and returns replies from the
//! listener's socket.

mod connect;
mod listener;
pub(crate) mod proxy_protocol;
mod relay;
mod sni;
pub(crate) mod udp;

pub(crate) use listener::{Accepted, L4Listener};
