//! End-to-end tests: real sockets, real gRPC, the real `vane` binary for user commands.
//! One test binary, one module per concern, sharing `vane_suite` (tests/support).

mod admin_api;
mod apply_and_serve;
mod cache;
mod cache_compress;
mod cache_flow;
mod cache_purge;
mod cancellation;
mod cli_errors;
mod compression;
mod control_plane;
mod dev;
mod failover;
mod fleet;
mod fleet_recipe;
mod gateway;
mod hardening;
mod https;
mod l4;
mod node_status;
mod observability;
mod operators;
mod parsing;
mod proxy_http;
mod restart;
mod slow_and_large;
mod store_integrity;
mod tls;
mod tracing;
