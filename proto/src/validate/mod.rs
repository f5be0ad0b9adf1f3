//! The one validator both planes link: what the control plane accepts, a node accepts.
//!
//! Every problem is collected (not just the first), each naming the resource kind, its
//! name, the field path inside it and the reason. [`validate`] checks the names of every
//! kind first (references are checked against the valid ones), then each kind in its own
//! module; `check` holds the tools they share and `error` what they report, both leaves.

mod cache;
mod check;
mod cluster;
mod compress;
mod error;
mod listener;
mod policy;
mod route;
mod tls;

pub use check::{full_match_regex, template_params};
pub use compress::{COMPRESSION_DEFAULT_LEVELS, COMPRESSION_DEFAULT_MIN_LENGTH, COMPRESSION_ENCODINGS};
pub use error::{ConfigError, ValidationErrors};
pub use policy::hash_api_keys;

use crate::config::Config;

/// Checks a whole config: names, references, addresses, values.
pub fn validate(config: &Config) -> Result<(), ValidationErrors> {
    let mut v = check::Validator::default();
    let listeners = v.names("listener", config.listeners.iter().map(|l| l.name.as_str()));
    let clusters = v.names("cluster", config.clusters.iter().map(|c| c.name.as_str()));
    v.names("route", config.routes.iter().map(|r| r.name.as_str()));
    listener::check(config, &mut v);
    cluster::check(config, &mut v);
    cluster::check_route_uses(config, &mut v);
    route::check(config, &mut v, &clusters, &listeners);
    tls::check(config, &mut v);
    policy::check(config, &mut v);
    cache::check(config, &mut v);
    compress::check(config, &mut v);
    v.finish()
}

#[cfg(test)]
pub(crate) mod tests;
