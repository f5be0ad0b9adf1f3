//! Response caches: their names, and the routes that refer to them.

use crate::config::Config;

use super::check::{Validator, display_name};

pub(crate) fn check(config: &Config, v: &mut Validator) {
    let caches = v.names("cache", config.caches.iter().map(|c| c.name.as_str()));
    for (i, r) in config.routes.iter().enumerate() {
        if !r.cache.is_empty() && !caches.contains(r.cache.as_str()) {
            v.err("route", &display_name(&r.name, i), "cache", format!("unknown cache '{}'", r.cache));
        }
    }
}
